/* publish.c - the PUB socket and the msgpack encoding of the live topics
 * (proto/live.md). */
#include "outputs/publish.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "service/log.h"

/* Large messages (maps of big scans) go to libzmq without a copy: the packed
 * buffer itself becomes the message and the publisher packs on into an idle
 * one.  Each buffer of a pool circulates between the two; libzmq's free
 * callback, on whichever thread drops the message, marks it idle again (or
 * frees it, when the publisher is gone).  A subscriber that stops reading
 * holds the buffers queued for it (libzmq shares one message among all
 * subscribers), up to publish_hwm of them: so a topic's pool grows, on
 * demand, to publish_hwm + 2 buffers when the series' memory bound leaves
 * room for them (roid_publisher_set_pool), and a stalled dashboard then
 * costs the others nothing.  With every buffer of the pool in flight a large
 * message is dropped and counted, not copied (memory stays within the
 * bound), but for a final map or scan_here, which is copied: a controller
 * must get the series' last word.  One pool per topic, so that a dashboard
 * that stops reading maps holds up maps only, not the scan_here a scan
 * controller waits for. */
#define ZC_MIN  65536                 /* smaller messages are cheaper to copy */
#define ZC_POOL ROID_PUBLISH_POOL_MIN /* buffers a pool starts with, and always may have */
enum { ZC_IDLE, ZC_IN_FLIGHT, ZC_ORPHANED };
typedef struct {
        _Atomic int state;
        char *data;
        size_t cap;
} zc_buf;

struct roid_publisher {
        void *sock;
        zc_buf **pool[ROID_TOPIC__MAX]; /* n_pool[t] buffers, room for cap_pool[t] */
        unsigned n_pool[ROID_TOPIC__MAX], cap_pool[ROID_TOPIC__MAX];
        unsigned pool_max; /* roid_publisher_set_pool, ZC_POOL .. sndhwm + 2 */
        int sndhwm;
        /* One buffer per topic, so that a large buffer circulates only with
         * its own topic's pool (maps would otherwise settle in the pool of the
         * small scan_here that follows them); sb is the current message's. */
        msgpack_sbuffer sbs[ROID_TOPIC__MAX];
        msgpack_sbuffer *sb;
        msgpack_packer pk;
        bool failed; /* a write into sb failed (out of memory) during this message */
        uint64_t seq[ROID_TOPIC__MAX];
        uint64_t sent[ROID_TOPIC__MAX];
        uint64_t dropped[ROID_TOPIC__MAX];
        char endpoint[256];
};

static const char *const topic_names[ROID_TOPIC__MAX] = {
        [ROID_TOPIC_STATUS] = "status",       [ROID_TOPIC_SERIES] = "series", [ROID_TOPIC_MAP] = "map",
        [ROID_TOPIC_SCAN_HERE] = "scan_here", [ROID_TOPIC_FRAME] = "frame",
};

const char *roid_topic_name(roid_topic t) {
        return (unsigned)t < ROID_TOPIC__MAX ? topic_names[t] : "?";
}

/* ------------------------------------------------------------- small packers */

static void key(msgpack_packer *pk, const char *k) {
        msgpack_pack_str_with_body(pk, k, strlen(k));
}

static void str(msgpack_packer *pk, const char *s) {
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* A key of the map being counted: *n counts the pairs a packer writes. */
static void kv(msgpack_packer *pk, int *n, const char *k) {
        key(pk, k);
        (*n)++;
}

static void str_or_nil(msgpack_packer *pk, const char *s) {
        if (s && *s)
                msgpack_pack_str_with_body(pk, s, strlen(s));
        else
                msgpack_pack_nil(pk);
}

static void str_or_empty(msgpack_packer *pk, const char *s) {
        msgpack_pack_str_with_body(pk, s ? s : "", s ? strlen(s) : 0);
}

static void f64_or_nil(msgpack_packer *pk, double v) {
        if (isfinite(v))
                msgpack_pack_double(pk, v);
        else
                msgpack_pack_nil(pk);
}

static void pair2(msgpack_packer *pk, double a, double b) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_double(pk, a);
        msgpack_pack_double(pk, b);
}

static double now_real(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void roid_pack_typed(msgpack_packer *pk, const char *dtype, size_t elem, const void *data, unsigned ndim,
                     const uint64_t *shape) {
        uint64_t n = 1;

        msgpack_pack_map(pk, 3);
        key(pk, "dtype");
        str(pk, dtype);
        key(pk, "shape");
        msgpack_pack_array(pk, ndim);
        for (unsigned i = 0; i < ndim; i++) {
                msgpack_pack_uint64(pk, shape[i]);
                n *= shape[i];
        }
        key(pk, "data");
        if (!data)
                n = 0;
        msgpack_pack_bin(pk, n * elem);
        if (n == 0)
                return;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        msgpack_pack_bin_body(pk, data, n * elem);
#else
        /* Big-endian host: swap through a small buffer. */
        {
                uint8_t buf[4096];
                const uint8_t *src = data;
                size_t total = n * elem, done = 0;
                while (done < total) {
                        size_t len = total - done < sizeof(buf) ? total - done : sizeof(buf);
                        for (size_t i = 0; i < len; i += elem)
                                for (size_t b = 0; b < elem; b++)
                                        buf[i + b] = src[done + i + elem - 1 - b];
                        msgpack_pack_bin_body(pk, buf, len);
                        done += len;
                }
        }
#endif
}

static void typed_2d(msgpack_packer *pk, const char *dtype, size_t elem, const void *data, uint64_t ny, uint64_t nx) {
        uint64_t shape[2] = {ny, nx};
        roid_pack_typed(pk, dtype, elem, data, 2, shape);
}

static void typed_1d(msgpack_packer *pk, const char *dtype, size_t elem, const void *data, uint64_t n) {
        roid_pack_typed(pk, dtype, elem, data, 1, &n);
}

static void pack_points(msgpack_packer *pk, const roid_fb_point *pts, size_t n) {
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
                msgpack_pack_map(pk, 5);
                key(pk, "row");
                msgpack_pack_uint32(pk, pts[i].row);
                key(pk, "col");
                msgpack_pack_uint32(pk, pts[i].col);
                key(pk, "x");
                msgpack_pack_double(pk, pts[i].x);
                key(pk, "y");
                msgpack_pack_double(pk, pts[i].y);
                key(pk, "score");
                msgpack_pack_double(pk, pts[i].score);
        }
}

/* ------------------------------------------------------------ body packers */

int roid_pack_series_ref(msgpack_packer *pk, const roid_series_ref *s) {
        int n = 0;

        kv(pk, &n, "series_id");
        if (s && s->known)
                msgpack_pack_uint64(pk, s->series_id);
        else
                msgpack_pack_nil(pk);
        kv(pk, &n, "series_unique_id");
        str_or_nil(pk, s && s->known ? s->unique_id : NULL);
        return n;
}

static void queue_fill(msgpack_packer *pk, const char *name, const roid_queue_fill *q) {
        key(pk, name);
        msgpack_pack_map(pk, 2);
        key(pk, "depth");
        msgpack_pack_uint64(pk, q->depth);
        key(pk, "capacity");
        msgpack_pack_uint64(pk, q->capacity);
}

int roid_pack_status(msgpack_packer *pk, const roid_status_view *v) {
        int n = roid_pack_series_ref(pk, &v->series);

        kv(pk, &n, "state");
        str_or_empty(pk, v->state);
        kv(pk, &n, "version");
        str(pk, ROID_VERSION);
        kv(pk, &n, "uptime_s");
        msgpack_pack_double(pk, v->uptime_s);
        kv(pk, &n, "frames_per_s");
        f64_or_nil(pk, v->frames_per_s);
        kv(pk, &n, "bytes_per_s");
        f64_or_nil(pk, v->bytes_per_s);
        kv(pk, &n, "queues");
        msgpack_pack_map(pk, 3);
        queue_fill(pk, "work", &v->work);
        queue_fill(pk, "analysis", &v->analysis);
        queue_fill(pk, "writer", &v->writer);
        kv(pk, &n, "latency_p50_ms");
        f64_or_nil(pk, v->latency_p50_ms);
        kv(pk, &n, "latency_p99_ms");
        f64_or_nil(pk, v->latency_p99_ms);
        kv(pk, &n, "map_interval_s");
        f64_or_nil(pk, v->map_interval_s);
        kv(pk, &n, "frame_age_s");
        f64_or_nil(pk, v->frame_age_s);
        kv(pk, &n, "counters");
        if (v->ctr) {
                msgpack_pack_map(pk, ROID_C__MAX);
                for (unsigned i = 0; i < ROID_C__MAX; i++) {
                        key(pk, roid_counter_name((roid_counter)i));
                        msgpack_pack_uint64(pk, roid_counter_get(v->ctr, (roid_counter)i));
                }
        } else {
                msgpack_pack_nil(pk);
        }
        kv(pk, &n, "published");
        if (v->pub) {
                msgpack_pack_map(pk, ROID_TOPIC__MAX);
                for (unsigned t = 0; t < ROID_TOPIC__MAX; t++) {
                        key(pk, topic_names[t]); /* a key of "published" */
                        msgpack_pack_map(pk, 2);
                        key(pk, "sent");
                        msgpack_pack_uint64(pk, v->pub->sent[t]);
                        key(pk, "dropped");
                        msgpack_pack_uint64(pk, v->pub->dropped[t]);
                }
        } else {
                msgpack_pack_nil(pk);
        }
        kv(pk, &n, "control");
        msgpack_pack_map(pk, 3);
        key(pk, "requests");
        msgpack_pack_uint64(pk, v->control_requests);
        key(pk, "errors");
        msgpack_pack_uint64(pk, v->control_errors);
        key(pk, "unsent");
        msgpack_pack_uint64(pk, v->control_unsent);
        return n;
}

/* Three pairs, counted in *n. */
static void pack_grid_coords(msgpack_packer *pk, int *n, const roid_scan_grid *g) {
        kv(pk, n, "origin");
        pair2(pk, g ? g->origin_x : 0, g ? g->origin_y : 0);
        kv(pk, n, "step");
        pair2(pk, g ? g->step_x : 1, g ? g->step_y : 1);
        kv(pk, n, "units");
        str_or_empty(pk, g ? g->units : "");
}

int roid_pack_map(msgpack_packer *pk, const roid_map_view *v) {
        const roid_roi *r = v->roi;
        uint32_t ny = roid_roi_ny(r), nx = roid_roi_nx(r);
        const uint8_t *mask = v->final ? roid_roi_mask(r) : NULL;
        bool final = mask != NULL;
        unsigned k = 0, d = 0;
        int n = roid_pack_series_ref(pk, &v->series);

        if (!mask)
                mask = roid_roi_online_mask(r);
        roid_roi_cluster_centroids(r, &k, &d);
        kv(pk, &n, "ny");
        msgpack_pack_uint32(pk, ny);
        kv(pk, &n, "nx");
        msgpack_pack_uint32(pk, nx);
        kv(pk, &n, "frames");
        msgpack_pack_uint64(pk, roid_roi_frames(r));
        kv(pk, &n, "outlier_points");
        msgpack_pack_uint32(pk, roid_roi_outlier_points(r));
        kv(pk, &n, "final");
        final ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "k");
        msgpack_pack_unsigned_int(pk, k);
        kv(pk, &n, "roi");
        typed_2d(pk, "uint8", 1, mask, ny, nx);
        kv(pk, &n, "clusters");
        typed_2d(pk, "uint8", 1, roid_roi_cluster_labels(r), ny, nx);
        kv(pk, &n, "counts");
        typed_2d(pk, "uint32", 4, roid_roi_counts(r), ny, nx);
        kv(pk, &n, "total");
        typed_2d(pk, "float64", 8, roid_roi_raw_map(r, 0), ny, nx);
        kv(pk, &n, "com");
        typed_2d(pk, "float64", 8, roid_roi_raw_map(r, 1), ny, nx);
        pack_grid_coords(pk, &n, v->grid);
        return n;
}

int roid_pack_feedback(msgpack_packer *pk, const roid_feedback_view *fb) {
        static const roid_feedback_view none = {.units = "", .step_x = 1, .step_y = 1};
        int n = 0;

        if (!fb)
                fb = &none;
        kv(pk, &n, "ny");
        msgpack_pack_uint32(pk, fb->ny);
        kv(pk, &n, "nx");
        msgpack_pack_uint32(pk, fb->nx);
        kv(pk, &n, "frames");
        msgpack_pack_uint64(pk, fb->frames);
        kv(pk, &n, "updates");
        msgpack_pack_uint64(pk, fb->updates);
        kv(pk, &n, "final");
        fb->final ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "stable");
        fb->stable ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "unchanged");
        msgpack_pack_unsigned_int(pk, fb->unchanged);
        kv(pk, &n, "motor");
        fb->motor ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "units");
        str_or_empty(pk, fb->units);
        kv(pk, &n, "step");
        pair2(pk, fb->step_x, fb->step_y);
        kv(pk, &n, "boxes");
        msgpack_pack_array(pk, fb->boxes ? fb->n_boxes : 0);
        for (size_t i = 0; fb->boxes && i < fb->n_boxes; i++) {
                const roid_fb_box *b = &fb->boxes[i];
                msgpack_pack_map(pk, 9);
                key(pk, "row0");
                msgpack_pack_uint32(pk, b->row0);
                key(pk, "col0");
                msgpack_pack_uint32(pk, b->col0);
                key(pk, "row1");
                msgpack_pack_uint32(pk, b->row1);
                key(pk, "col1");
                msgpack_pack_uint32(pk, b->col1);
                key(pk, "points");
                msgpack_pack_uint32(pk, b->points);
                key(pk, "x0");
                msgpack_pack_double(pk, b->x0);
                key(pk, "y0");
                msgpack_pack_double(pk, b->y0);
                key(pk, "x1");
                msgpack_pack_double(pk, b->x1);
                key(pk, "y1");
                msgpack_pack_double(pk, b->y1);
        }
        kv(pk, &n, "rescan");
        typed_2d(pk, "float64", 8, fb->rescan, fb->rescan ? fb->n_rescan : 0, 2);
        kv(pk, &n, "rescan_step");
        pair2(pk, fb->rescan_step_x, fb->rescan_step_y);
        kv(pk, &n, "rescan_truncated");
        fb->rescan_truncated ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "skip");
        typed_1d(pk, "uint32", 4, fb->skip, fb->skip ? fb->n_skip : 0);
        kv(pk, &n, "next");
        pack_points(pk, fb->next, fb->next ? fb->n_next : 0);
        kv(pk, &n, "mask");
        if (fb->mask)
                typed_2d(pk, "uint8", 1, fb->mask, fb->ny, fb->nx);
        else
                msgpack_pack_nil(pk);
        return n;
}

int roid_pack_suggest(msgpack_packer *pk, const roid_series_ref *s, const roid_feedback_view *fb, size_t count) {
        static const roid_feedback_view none = {.units = ""};
        int n = roid_pack_series_ref(pk, s);

        if (!fb)
                fb = &none;
        if (!fb->next || count > fb->n_next)
                count = fb->next ? fb->n_next : 0;
        kv(pk, &n, "frames");
        msgpack_pack_uint64(pk, fb->frames);
        kv(pk, &n, "updates");
        msgpack_pack_uint64(pk, fb->updates);
        kv(pk, &n, "final");
        fb->final ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "stable");
        fb->stable ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "motor");
        fb->motor ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        kv(pk, &n, "units");
        str_or_empty(pk, fb->units);
        kv(pk, &n, "points");
        pack_points(pk, fb->next, count);
        return n;
}

static int pack_series(msgpack_packer *pk, const roid_series_view *v) {
        int n = 0;
        bool end = v->event && strcmp(v->event, "end") == 0;
        const roid_scan_grid *g = v->grid;

        kv(pk, &n, "event");
        str_or_empty(pk, v->event);
        kv(pk, &n, "detector");
        msgpack_pack_map(pk, 4);
        key(pk, "rows");
        msgpack_pack_uint32(pk, v->rows);
        key(pk, "cols");
        msgpack_pack_uint32(pk, v->cols);
        key(pk, "dtype");
        str(pk, roid_dtype_name(v->dtype));
        key(pk, "channel");
        str_or_nil(pk, v->channel);
        kv(pk, &n, "number_of_images");
        if (v->has_number_of_images)
                msgpack_pack_uint64(pk, v->number_of_images);
        else
                msgpack_pack_nil(pk);
        kv(pk, &n, "grid");
        if (g) {
                msgpack_pack_map(pk, 8);
                key(pk, "ny");
                msgpack_pack_uint32(pk, g->ny);
                key(pk, "nx");
                msgpack_pack_uint32(pk, g->nx);
                key(pk, "snake");
                g->snake ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
                key(pk, "fast_axis");
                str(pk, g->fast_axis == ROID_SCAN_FAST_Y ? "y" : "x");
                int inner = 0;
                pack_grid_coords(pk, &inner, g);
                key(pk, "source");
                str(pk, roid_scan_source_name(g->source));
        } else {
                msgpack_pack_nil(pk);
        }
        kv(pk, &n, "n_segments");
        msgpack_pack_unsigned_int(pk, v->n_segments);
        kv(pk, &n, "k");
        msgpack_pack_unsigned_int(pk, v->k);
        kv(pk, &n, "analysis_error");
        str_or_nil(pk, v->analysis_error);
        kv(pk, &n, "frames_analysed");
        end ? msgpack_pack_uint64(pk, v->frames_analysed) : msgpack_pack_nil(pk);
        kv(pk, &n, "frames_dropped");
        end ? msgpack_pack_uint64(pk, v->frames_dropped) : msgpack_pack_nil(pk);
        kv(pk, &n, "roi_points");
        end ? msgpack_pack_uint64(pk, v->roi_points) : msgpack_pack_nil(pk);
        kv(pk, &n, "terminated");
        if (end)
                v->terminated ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        else
                msgpack_pack_nil(pk);
        kv(pk, &n, "results_file");
        str_or_nil(pk, end ? v->results_path : NULL);
        kv(pk, &n, "latency_p50_ms");
        f64_or_nil(pk, end ? v->latency_p50_ms : NAN);
        kv(pk, &n, "latency_p99_ms");
        f64_or_nil(pk, end ? v->latency_p99_ms : NAN);
        kv(pk, &n, "latency_max_ms");
        f64_or_nil(pk, end ? v->latency_max_ms : NAN);
        return n;
}

static int pack_frame(msgpack_packer *pk, const roid_frame_view *v) {
        int n = 0;
        const roid_frame_record *rec = v->rec;
        const roid_features *f = &rec->f;
        bool placed = rec->row != ROID_NOT_PLACED && rec->col != ROID_NOT_PLACED;
        unsigned s_n = f->n_segments <= ROID_MAX_SEGMENTS ? f->n_segments : ROID_MAX_SEGMENTS;
        uint64_t sum[ROID_MAX_SEGMENTS];
        double cx[ROID_MAX_SEGMENTS], cy[ROID_MAX_SEGMENTS];

        for (unsigned s = 0; s < s_n; s++) {
                sum[s] = f->seg[s].sum_u64;
                cx[s] = f->seg[s].com_x;
                cy[s] = f->seg[s].com_y;
        }
        kv(pk, &n, "image_id");
        msgpack_pack_uint64(pk, rec->image_id);
        kv(pk, &n, "row");
        placed ? msgpack_pack_uint32(pk, rec->row) : msgpack_pack_nil(pk);
        kv(pk, &n, "col");
        placed ? msgpack_pack_uint32(pk, rec->col) : msgpack_pack_nil(pk);
        kv(pk, &n, "pos_x");
        f64_or_nil(pk, rec->pos_x);
        kv(pk, &n, "pos_y");
        f64_or_nil(pk, rec->pos_y);
        kv(pk, &n, "label");
        v->label >= 0 ? msgpack_pack_int(pk, v->label) : msgpack_pack_nil(pk);
        kv(pk, &n, "total");
        msgpack_pack_uint64(pk, f->total_u64);
        kv(pk, &n, "com_x");
        msgpack_pack_double(pk, f->com_x);
        kv(pk, &n, "com_y");
        msgpack_pack_double(pk, f->com_y);
        kv(pk, &n, "bf");
        msgpack_pack_uint64(pk, f->bf_u64);
        kv(pk, &n, "df");
        msgpack_pack_uint64(pk, f->df_u64);
        kv(pk, &n, "masked");
        msgpack_pack_uint64(pk, f->masked);
        kv(pk, &n, "saturated");
        msgpack_pack_uint64(pk, f->saturated);
        kv(pk, &n, "n_pixels");
        msgpack_pack_uint64(pk, f->n_pixels);
        kv(pk, &n, "segments");
        msgpack_pack_map(pk, 3);
        key(pk, "sum");
        typed_1d(pk, "uint64", 8, sum, s_n);
        key(pk, "com_x");
        typed_1d(pk, "float64", 8, cx, s_n);
        key(pk, "com_y");
        typed_1d(pk, "float64", 8, cy, s_n);
        kv(pk, &n, "age_ms");
        f64_or_nil(pk, rec->t_arrival > 0 ? (now_mono() - rec->t_arrival) * 1e3 : NAN);
        return n;
}

/* ---------------------------------------------------------------- sending */

static int write_cb(void *data, const char *buf, size_t len) {
        roid_publisher *p = data;

        if (p->failed)
                return -1;
        if (len == 0)
                return 0;
        if (msgpack_sbuffer_write(p->sb, buf, len) < 0) {
                p->failed = true;
                return -1;
        }
        return 0;
}

/* Map header written as map16 with a placeholder count, patched by finish():
 * the count is known only after the body packers have run.  map16 is a valid
 * (if not minimal) encoding for any count. */
static int begin(roid_publisher *p, roid_topic t) {
        static const char hdr[3] = {(char)0xde, 0, 0};

        p->sb = &p->sbs[t];
        msgpack_sbuffer_clear(p->sb);
        p->failed = false;
        write_cb(p, hdr, sizeof(hdr));
        key(&p->pk, "schema");
        msgpack_pack_int(&p->pk, ROID_SCHEMA_VERSION);
        key(&p->pk, "topic");
        str(&p->pk, topic_names[t]);
        key(&p->pk, "seq");
        msgpack_pack_uint64(&p->pk, p->seq[t]++);
        key(&p->pk, "time");
        msgpack_pack_double(&p->pk, now_real());
        return 4;
}

static void zc_free(void *data, void *hint) {
        zc_buf *b = hint;
        (void)data;
        if (atomic_exchange_explicit(&b->state, ZC_IDLE, memory_order_acq_rel) == ZC_ORPHANED) {
                free(b->data);
                free(b);
        }
}

/* Frees topic t's idle buffers beyond the pool's bound (lowered for a
 * smaller grid's series) and the memory of idle ones larger than keep;
 * returns an idle buffer left, or NULL.  Only this thread takes buffers: one
 * found idle stays idle until it is taken. */
static zc_buf *trim_pool(roid_publisher *p, roid_topic t, size_t keep) {
        zc_buf **pool = p->pool[t], *found = NULL;
        for (unsigned k = 0; k < p->n_pool[t];) {
                zc_buf *b = pool[k];
                if (atomic_load_explicit(&b->state, memory_order_acquire) != ZC_IDLE) {
                        k++;
                        continue;
                }
                if (p->n_pool[t] > p->pool_max) {
                        free(b->data);
                        free(b);
                        pool[k] = pool[--p->n_pool[t]];
                        continue;
                }
                if (b->cap > keep) {
                        free(b->data);
                        b->data = NULL;
                        b->cap = 0;
                }
                if (!found)
                        found = b;
                k++;
        }
        return found;
}

/* An idle buffer of topic t's pool, or NULL; a pool with none idle grows by
 * one while its bound allows. */
static zc_buf *idle_buffer(roid_publisher *p, roid_topic t) {
        zc_buf *found = trim_pool(p, t, SIZE_MAX);
        if (found || p->n_pool[t] >= p->pool_max)
                return found;
        if (p->n_pool[t] == p->cap_pool[t]) {
                unsigned cap = p->cap_pool[t] * 2 < p->pool_max ? p->cap_pool[t] * 2 : p->pool_max;
                zc_buf **grown = realloc(p->pool[t], cap * sizeof *grown);
                if (!grown)
                        return NULL;
                p->pool[t] = grown;
                p->cap_pool[t] = cap;
        }
        zc_buf *b = calloc(1, sizeof *b); /* ZC_IDLE, no data: the packer grows it */
        if (b)
                p->pool[t][p->n_pool[t]++] = b;
        return b;
}

void roid_publisher_set_pool(roid_publisher *p, uint64_t buffers, uint64_t buffer_bytes) {
        const uint64_t most = (uint64_t)p->sndhwm + 2;
        p->pool_max = (unsigned)(buffers < ZC_POOL ? ZC_POOL : buffers > most ? most : buffers);
        /* What a larger grid before left behind goes now, not when a large
         * message next looks for a buffer (a small grid may never send one):
         * idle buffers beyond the bound, and the memory of idle ones (and of
         * the packing buffers) far larger than this grid's messages.  Those
         * in flight go as they come back. */
        const size_t keep = buffer_bytes > SIZE_MAX / 4 ? SIZE_MAX : (size_t)buffer_bytes * 2 + ZC_MIN;
        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++) {
                trim_pool(p, t, keep);
                if (p->sbs[t].alloc > keep) {
                        msgpack_sbuffer_destroy(&p->sbs[t]);
                        msgpack_sbuffer_init(&p->sbs[t]);
                }
        }
}

unsigned roid_publisher_pool_buffers(const roid_publisher *p, roid_topic t) {
        return (unsigned)t < ROID_TOPIC__MAX ? p->n_pool[t] : 0;
}

/* Sends the body in sb: a large one by handing its buffer to libzmq, with b
 * (idle) to pack on into; zmq_send's result. */
static int send_body(roid_publisher *p, zc_buf *b) {
        if (!b) {
                int r;
                do {
                        r = zmq_send(p->sock, p->sb->data, p->sb->size, ZMQ_DONTWAIT);
                } while (r < 0 && errno == EINTR);
                return r;
        }
        char *data = p->sb->data;
        const size_t size = p->sb->size, cap = p->sb->alloc;
        p->sb->data = b->data;
        p->sb->alloc = b->cap;
        p->sb->size = 0;
        b->data = data;
        b->cap = cap;
        atomic_store_explicit(&b->state, ZC_IN_FLIGHT, memory_order_release);
        zmq_msg_t msg;
        if (zmq_msg_init_data(&msg, data, size, zc_free, b) < 0) {
                atomic_store_explicit(&b->state, ZC_IDLE, memory_order_release);
                return -1;
        }
        int r;
        do {
                r = zmq_msg_send(&msg, p->sock, ZMQ_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
                const int e = errno;
                zmq_msg_close(&msg); /* calls zc_free */
                errno = e;
        }
        return r;
}

/* Sends the packed message of topic t: 0 or a negative errno.  must: a
 * large message goes even with its pool all in flight, copied. */
static int send_message(roid_publisher *p, roid_topic t, int pairs, bool must) {
        const char *name = topic_names[t];
        int r;

        if (p->failed || pairs < 0 || pairs > 0xffff)
                return -ENOMEM;
        p->sb->data[1] = (char)(pairs >> 8);
        p->sb->data[2] = (char)(pairs & 0xff);
        zc_buf *b = NULL;
        if (p->sb->size >= ZC_MIN && !(b = idle_buffer(p, t)) && !must)
                return -EAGAIN;
        do {
                r = zmq_send(p->sock, name, strlen(name), ZMQ_SNDMORE | ZMQ_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        if (r < 0)
                return -errno;
        /* libzmq admits a message on its first frame: the HWM counts whole
         * messages, so the second frame of an admitted message is not refused. */
        if (send_body(p, b) < 0) {
                r = -errno;
                /* Only out of memory: the topic frame is out, and the next message
                 * would join it; an empty body ends it (a gap in seq all the same). */
                zmq_send(p->sock, "", 0, ZMQ_DONTWAIT);
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "publish %s: second frame not sent: %s", name, zmq_strerror(-r));
                return r;
        }
        return 0;
}

static int finish_must(roid_publisher *p, roid_topic t, int pairs, bool must) {
        const int r = send_message(p, t, pairs, must);
        if (r < 0)
                p->dropped[t]++;
        else
                p->sent[t]++;
        return r;
}

static int finish(roid_publisher *p, roid_topic t, int pairs) {
        return finish_must(p, t, pairs, false);
}

int roid_publish_status(roid_publisher *p, const roid_status_view *v) {
        int n = begin(p, ROID_TOPIC_STATUS);
        return finish(p, ROID_TOPIC_STATUS, n + roid_pack_status(&p->pk, v));
}

int roid_pack_series(msgpack_packer *pk, const roid_series_view *v) {
        const int n = roid_pack_series_ref(pk, &v->series);
        return n + pack_series(pk, v);
}

int roid_publish_series(roid_publisher *p, const roid_series_view *v) {
        int n = begin(p, ROID_TOPIC_SERIES);
        return finish(p, ROID_TOPIC_SERIES, n + roid_pack_series(&p->pk, v));
}

int roid_publish_map(roid_publisher *p, const roid_map_view *v) {
        int n = begin(p, ROID_TOPIC_MAP);
        if (!v->roi) {
                finish(p, ROID_TOPIC_MAP, -1);
                return -EINVAL;
        }
        return finish_must(p, ROID_TOPIC_MAP, n + roid_pack_map(&p->pk, v), v->final);
}

int roid_publish_scan_here(roid_publisher *p, const roid_series_ref *s, const roid_feedback_view *fb) {
        int n = begin(p, ROID_TOPIC_SCAN_HERE);
        n += roid_pack_series_ref(&p->pk, s);
        return finish_must(p, ROID_TOPIC_SCAN_HERE, n + roid_pack_feedback(&p->pk, fb), fb && fb->final);
}

int roid_publish_frame(roid_publisher *p, const roid_frame_view *v) {
        int n = begin(p, ROID_TOPIC_FRAME);
        if (!v->rec) {
                finish(p, ROID_TOPIC_FRAME, -1);
                return -EINVAL;
        }
        n += roid_pack_series_ref(&p->pk, &v->series);
        return finish(p, ROID_TOPIC_FRAME, n + pack_frame(&p->pk, v));
}

uint64_t roid_publisher_sent(const roid_publisher *p, roid_topic t) {
        return (unsigned)t < ROID_TOPIC__MAX ? p->sent[t] : 0;
}

uint64_t roid_publisher_dropped(const roid_publisher *p, roid_topic t) {
        return (unsigned)t < ROID_TOPIC__MAX ? p->dropped[t] : 0;
}

int roid_publisher_new(void *zctx, const char *endpoint, int sndhwm, roid_publisher **ret, roid_err *err) {
        roid_publisher *p;
        int zero = 0, r;

        if (!zctx || !endpoint || !*endpoint)
                return roid_err_set(err, -EINVAL, "publish endpoint: empty");
        if (sndhwm < 1)
                return roid_err_set(err, -EINVAL, "publish_hwm: %d is not >= 1", sndhwm);
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++)
                msgpack_sbuffer_init(&p->sbs[t]);
        p->sb = &p->sbs[0];
        msgpack_packer_init(&p->pk, p, write_cb);
        p->sndhwm = sndhwm;
        p->pool_max = ZC_POOL;
        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++) {
                p->pool[t] = calloc(ZC_POOL, sizeof *p->pool[t]);
                if (!p->pool[t]) {
                        r = -ENOMEM;
                        goto fail;
                }
                p->cap_pool[t] = ZC_POOL;
                for (unsigned k = 0; k < ZC_POOL; k++) {
                        p->pool[t][k] = calloc(1, sizeof *p->pool[t][k]);
                        if (!p->pool[t][k]) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        p->n_pool[t]++;
                }
        }
        p->sock = zmq_socket(zctx, ZMQ_PUB);
        if (!p->sock) {
                r = -errno;
                roid_err_set(err, r, "publish: zmq_socket: %s", zmq_strerror(-r));
                goto fail;
        }
        /* No ZMQ_XPUB_NODROP: with it, one subscriber that stops reading
         * makes every send fail, and a hung dashboard would silence the scan
         * controller's scan_here (found in a soak test).  libzmq drops for
         * that subscriber alone; it sees the gap in seq. */
        if (zmq_setsockopt(p->sock, ZMQ_SNDHWM, &sndhwm, sizeof(sndhwm)) < 0 ||
            zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof(zero)) < 0) {
                r = -errno;
                roid_err_set(err, r, "publish: setsockopt: %s", zmq_strerror(-r));
                goto fail;
        }
        if (zmq_bind(p->sock, endpoint) < 0) {
                r = -errno;
                roid_err_set(err, r, "publish endpoint %s: bind: %s", endpoint, zmq_strerror(-r));
                goto fail;
        }
        size_t len = sizeof(p->endpoint);
        if (zmq_getsockopt(p->sock, ZMQ_LAST_ENDPOINT, p->endpoint, &len) < 0)
                snprintf(p->endpoint, sizeof(p->endpoint), "%s", endpoint);
        *ret = p;
        return 0;
fail:
        roid_publisher_free(p);
        return r;
}

const char *roid_publisher_endpoint(const roid_publisher *p) {
        return p->endpoint;
}

void roid_publisher_free(roid_publisher *p) {
        if (!p)
                return;
        if (p->sock) {
                /* Linger 0 dropped the end of a series whose end stopped roid
                 * (--series 1): a controller got neither the final scan_here
                 * nor the series end (1 run in 8 of a test here). */
                const int linger = ROID_PUBLISH_LINGER_MS;
                zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
                zmq_close(p->sock);
        }
        /* A buffer still in flight is freed by its callback, when libzmq drops
         * the message (at the latest when the context terminates). */
        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++) {
                for (unsigned k = 0; k < p->n_pool[t]; k++) {
                        zc_buf *b = p->pool[t][k];
                        if (atomic_exchange_explicit(&b->state, ZC_ORPHANED, memory_order_acq_rel) != ZC_IN_FLIGHT) {
                                free(b->data);
                                free(b);
                        }
                }
                free(p->pool[t]);
        }
        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++)
                msgpack_sbuffer_destroy(&p->sbs[t]);
        free(p);
}

uint64_t roid_publish_buffer_bytes(const roid_feedback_params *fp, const roid_scan_grid *grid) {
        uint64_t points, rescan, next, boxes;
        roid_feedback_view_max(fp, grid, &points, &rescan, &next, &boxes);
        /* map: roi, clusters (1 byte a point), counts (4), total, com (8 + 8);
         * scan_here: mask (1), skip (4), rescan (2 x 8 a point), next points
         * and boxes as maps of a few numbers; 4 KiB for the keys around. */
        const uint64_t map = 22 * points + 4096;
        const uint64_t scan_here = 5 * points + 16 * rescan + 96 * next + 160 * boxes + 4096;
        return map + scan_here;
}

uint64_t roid_publish_series_bytes(const roid_feedback_params *fp, const roid_scan_grid *grid) {
        return (uint64_t)(1 + ZC_POOL) * roid_publish_buffer_bytes(fp, grid);
}
