/* test_publish.c - the live PUB topics: a SUB receives every topic over tcp
 * and decodes it with msgpack-c; the common keys (schema, topic, seq, time,
 * series ids), every field against the view it was built from, the typed
 * arrays byte for byte against the RoI accessors of a real RoI state (a
 * scattering disk in a background, fed through roid_roi_add), per-topic seq;
 * then drops: a SUB with RCVHWM 1 that never reads makes map publishes fail
 * with -EAGAIN, counted per topic, while every call returns, and the
 * subscriber sees the drops as a seq gap. */
#include "tap.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <msgpack.h>
#include <zmq.h>

#include "outputs/publish.h"

#define NY 12
#define NX 16

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

/* ------------------------------------------------------------ decoding */

typedef struct {
        char topic[32];
        msgpack_zone zone;
        msgpack_object obj;
        char *buf; /* the map's bytes (objects point into it) */
        size_t size;
        bool ok;
} rx_msg;

static void rx_free(rx_msg *m) {
        if (m->buf) {
                msgpack_zone_destroy(&m->zone);
                free(m->buf);
        }
        memset(m, 0, sizeof(*m));
}

/* Receives one two-frame message within timeout_ms; decodes the map. */
static bool rx(void *sub, int timeout_ms, rx_msg *m) {
        zmq_pollitem_t it = {.socket = sub, .events = ZMQ_POLLIN};
        zmq_msg_t f;
        int more;
        size_t off = 0, ml = sizeof(more);

        memset(m, 0, sizeof(*m));
        if (zmq_poll(&it, 1, timeout_ms) <= 0)
                return false;
        int n = zmq_recv(sub, m->topic, sizeof(m->topic) - 1, 0);
        if (n < 0)
                return false;
        m->topic[n < (int)sizeof(m->topic) - 1 ? n : (int)sizeof(m->topic) - 1] = 0;
        zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &ml);
        if (!more)
                return false;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sub, 0) < 0)
                return false;
        m->size = zmq_msg_size(&f);
        m->buf = malloc(m->size ? m->size : 1);
        memcpy(m->buf, zmq_msg_data(&f), m->size);
        more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        msgpack_zone_init(&m->zone, 4096);
        m->ok = !more && msgpack_unpack(m->buf, m->size, &off, &m->zone, &m->obj) == MSGPACK_UNPACK_SUCCESS &&
                off == m->size && m->obj.type == MSGPACK_OBJECT_MAP;
        return true;
}

static const msgpack_object *get(const msgpack_object *map, const char *k) {
        if (!map || map->type != MSGPACK_OBJECT_MAP)
                return NULL;
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *key = &map->via.map.ptr[i].key;
                if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
                    !memcmp(key->via.str.ptr, k, key->via.str.size))
                        return &map->via.map.ptr[i].val;
        }
        return NULL;
}

static bool is_nil(const msgpack_object *o) {
        return o && o->type == MSGPACK_OBJECT_NIL;
}

static uint64_t u64(const msgpack_object *o) {
        return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : UINT64_MAX;
}

static double f64(const msgpack_object *o) {
        if (!o)
                return NAN;
        if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32)
                return o->via.f64;
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                return (double)o->via.u64;
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return (double)o->via.i64;
        return NAN;
}

static bool str_eq(const msgpack_object *o, const char *s) {
        return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
               !memcmp(o->via.str.ptr, s, o->via.str.size);
}

static int boolean(const msgpack_object *o) {
        return o && o->type == MSGPACK_OBJECT_BOOLEAN ? o->via.boolean : -1;
}

/* A typed array must be {"dtype": dtype, "shape": shape, "data": bin} with
 * exactly the bytes of want (this host is little-endian: checked in main). */
static bool typed_eq(const msgpack_object *o, const char *dtype, unsigned ndim, const uint64_t *shape, const void *want,
                     size_t elem, const char *what) {
        const msgpack_object *dt = get(o, "dtype"), *sh = get(o, "shape"), *data = get(o, "data");
        uint64_t n = 1;
        bool ok = o && o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 3 && str_eq(dt, dtype) && sh &&
                  sh->type == MSGPACK_OBJECT_ARRAY && sh->via.array.size == ndim && data &&
                  data->type == MSGPACK_OBJECT_BIN;
        for (unsigned i = 0; ok && i < ndim; i++) {
                ok = u64(&sh->via.array.ptr[i]) == shape[i];
                n *= shape[i];
        }
        ok = ok && data->via.bin.size == n * elem && (n == 0 || !memcmp(data->via.bin.ptr, want, n * elem));
        return tap_ok(ok, "%s: typed %s array, shape and bytes exact", what, dtype);
}

/* Common keys of every topic. */
static void check_common(const rx_msg *m, const char *topic, uint64_t seq, double t0, double t1, bool series,
                         const char *what) {
        const msgpack_object *o = &m->obj;
        tap_ok(m->ok, "%s: one msgpack map in the second frame, nothing after it", what);
        tap_ok(!strcmp(m->topic, topic), "%s: topic frame \"%s\" (want \"%s\")", what, m->topic, topic);
        tap_eq_u64(u64(get(o, "schema")), ROID_SCHEMA_VERSION, "schema");
        tap_ok(str_eq(get(o, "topic"), topic), "%s: \"topic\" key", what);
        tap_eq_u64(u64(get(o, "seq")), seq, "seq");
        double t = f64(get(o, "time"));
        tap_ok(t >= t0 - 1e-3 && t <= t1 + 1e-3, "%s: time %.6f within the publish call [%.6f, %.6f]", what, t, t0, t1);
        if (series) {
                tap_eq_u64(u64(get(o, "series_id")), 42, "series_id");
                tap_ok(str_eq(get(o, "series_unique_id"), "run-0042"), "%s: series_unique_id", what);
        } else {
                tap_ok(is_nil(get(o, "series_id")) && is_nil(get(o, "series_unique_id")),
                       "%s: series ids nil without a series", what);
        }
}

/* ---------------------------------------------------------- RoI content */

/* A scattering disk (low T, shifted CoM) in a background; deterministic
 * 1 % ripple so that the maps are not constant. */
static void features(uint32_t y, uint32_t x, unsigned S, roid_features *f) {
        double dy = y - 5.5, dx = x - 7.0;
        bool in = dy * dy + dx * dx <= 9.0;
        double ripple = 0.01 * (double)((y * 7 + x * 13) % 11) / 11.0;

        memset(f, 0, sizeof(*f));
        f->n_segments = S;
        f->total = (in ? 400 : 1000) * (1 + ripple);
        f->total_u64 = (uint64_t)f->total;
        f->total = (double)f->total_u64;
        f->com_x = 64 + (in ? 3 : 0) + ripple;
        f->com_y = 64 + (in ? 1.5 : 0) - ripple;
        f->n_pixels = 128 * 128;
        f->bf_u64 = f->total_u64 / 2;
        f->df_u64 = f->total_u64 / 5;
        f->bf = (double)f->bf_u64;
        f->df = (double)f->df_u64;
        for (unsigned s = 0; s < S; s++) {
                f->seg[s].sum_u64 = f->total_u64 / S + s;
                f->seg[s].sum = (double)f->seg[s].sum_u64;
                f->seg[s].com_x = f->com_x + 0.25 * s;
                f->seg[s].com_y = f->com_y - 0.125 * s;
        }
}

static roid_roi *make_roi(void) {
        roid_roi_params p;
        roid_roi *r = NULL;
        roid_err err = {{0}};
        roid_features f;

        roid_roi_params_default(&p);
        p.n_segments = 4;
        p.k = 3;
        p.cadence = 32;
        if (roid_roi_new(&p, NY, NX, &r, &err) < 0) {
                tap_diag("roid_roi_new: %s", err.msg);
                exit(1);
        }
        /* Rows 0..9 of 12: the last rows stay unseen (NaN in the raw maps,
         * 255 in the labels). */
        for (uint32_t y = 0; y < 10; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        features(y, x, 4, &f);
                        roid_roi_add(r, y, x, &f);
                }
        roid_roi_refit(r);
        /* Once more so the online labels follow the refitted centres. */
        for (uint32_t y = 0; y < 10; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        features(y, x, 4, &f);
                        roid_roi_add(r, y, x, &f);
                }
        return r;
}

static size_t ones(const uint8_t *m, size_t n) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
                k += m[i] == 1;
        return k;
}

static void check_map(const rx_msg *m, const roid_roi *r, const roid_scan_grid *g, bool final, const char *what) {
        const msgpack_object *o = &m->obj;
        uint64_t shape[2] = {NY, NX};
        unsigned k = 0, d = 0;
        const uint8_t *mask = final ? roid_roi_mask(r) : roid_roi_online_mask(r);

        roid_roi_cluster_centroids(r, &k, &d);
        tap_eq_u64(u64(get(o, "ny")), NY, "map ny");
        tap_eq_u64(u64(get(o, "nx")), NX, "map nx");
        tap_eq_u64(u64(get(o, "frames")), roid_roi_frames(r), "map frames");
        tap_eq_i64(boolean(get(o, "final")), final, "map final");
        tap_eq_u64(u64(get(o, "k")), k, "map k");
        tap_ok(mask && ones(mask, NY * NX) > 0 && ones(mask, NY * NX) < NY * NX,
               "%s: the RoI is a proper part of the grid (%zu points)", what, mask ? ones(mask, NY * NX) : 0);
        typed_eq(get(o, "roi"), "uint8", 2, shape, mask, 1, final ? "final roi" : "online roi");
        typed_eq(get(o, "clusters"), "uint8", 2, shape, roid_roi_cluster_labels(r), 1, "clusters");
        typed_eq(get(o, "counts"), "uint32", 2, shape, roid_roi_counts(r), 4, "counts");
        typed_eq(get(o, "total"), "float64", 2, shape, roid_roi_raw_map(r, 0), 8, "total (T)");
        typed_eq(get(o, "com"), "float64", 2, shape, roid_roi_raw_map(r, 1), 8, "com (|CoM|)");
        const msgpack_object *org = get(o, "origin"), *st = get(o, "step");
        tap_ok(org && org->type == MSGPACK_OBJECT_ARRAY && org->via.array.size == 2 &&
                       f64(&org->via.array.ptr[0]) == g->origin_x && f64(&org->via.array.ptr[1]) == g->origin_y,
               "%s: origin", what);
        tap_ok(st && st->type == MSGPACK_OBJECT_ARRAY && st->via.array.size == 2 &&
                       f64(&st->via.array.ptr[0]) == g->step_x && f64(&st->via.array.ptr[1]) == g->step_y,
               "%s: step", what);
        tap_ok(str_eq(get(o, "units"), "um"), "%s: units", what);
}

/* --------------------------------------------------------------- tests */

static void *sub_socket(void *ctx, const char *endpoint, const char *prefix, int rcvhwm) {
        void *s = zmq_socket(ctx, ZMQ_SUB);
        int zero = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
        if (rcvhwm > 0)
                zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof(rcvhwm));
        zmq_setsockopt(s, ZMQ_SUBSCRIBE, prefix, strlen(prefix));
        if (zmq_connect(s, endpoint) < 0) {
                tap_diag("connect %s: %s", endpoint, zmq_strerror(errno));
                exit(1);
        }
        return s;
}

/* Slow joiner: publish statuses until the subscriber receives one; returns
 * the next status seq. */
static uint64_t join(roid_publisher *p, void *sub) {
        roid_status_view v = {.state = "idle", .latency_p50_ms = NAN, .latency_p99_ms = NAN};
        rx_msg m;
        for (int i = 0; i < 500; i++) {
                roid_publish_status(p, &v);
                if (rx(sub, 10, &m)) {
                        uint64_t seq = u64(get(&m.obj, "seq"));
                        rx_free(&m);
                        /* Drain any status still in flight. */
                        while (rx(sub, 20, &m)) {
                                seq = u64(get(&m.obj, "seq"));
                                rx_free(&m);
                        }
                        return seq + 1;
                }
        }
        tap_ok(false, "subscriber joined");
        exit(1);
}

static void test_topics(void *ctx) {
        roid_publisher *p = NULL;
        roid_err err = {{0}};
        roid_series_ref ref = {.known = true, .series_id = 42, .unique_id = "run-0042"};
        roid_scan_grid g;
        rx_msg m;
        double t0, t1;

        int r = roid_publisher_new(ctx, "tcp://127.0.0.1:*", 100, &p, &err);
        if (!tap_ok(r == 0, "publisher bound on %s (%s)", p ? roid_publisher_endpoint(p) : "-", err.msg))
                exit(1);
        void *sub = sub_socket(ctx, roid_publisher_endpoint(p), "", 0);
        uint64_t status_seq = join(p, sub);
        uint64_t status_sent = roid_publisher_sent(p, ROID_TOPIC_STATUS);
        tap_eq_u64(status_sent, status_seq, "status: sent = seq so far (nothing dropped)");

        roid_scan_grid_default(&g);
        g.ny = NY;
        g.nx = NX;
        g.snake = true;
        g.origin_x = -1.25;
        g.origin_y = 3.5;
        g.step_x = 0.05;
        g.step_y = -0.1;
        snprintf(g.units, sizeof(g.units), "um");
        g.source = ROID_SCAN_FROM_SERIES;

        /* series start */
        roid_series_view sv = {.event = "start",
                               .series = ref,
                               .rows = 514,
                               .cols = 1030,
                               .dtype = ROID_DT_U16,
                               .channel = "threshold_1",
                               .has_number_of_images = true,
                               .number_of_images = NY * NX,
                               .grid = &g,
                               .n_segments = 4,
                               .k = 3};
        t0 = now_real();
        tap_eq_i64(roid_publish_series(p, &sv), 0, "publish series start");
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "series start received")) {
                const msgpack_object *o = &m.obj, *det = get(o, "detector"), *gr = get(o, "grid");
                check_common(&m, "series", 0, t0, t1, true, "series start");
                tap_ok(str_eq(get(o, "event"), "start"), "series: event start");
                tap_ok(u64(get(det, "rows")) == 514 && u64(get(det, "cols")) == 1030 &&
                               str_eq(get(det, "dtype"), "uint16") && str_eq(get(det, "channel"), "threshold_1"),
                       "series: detector rows, cols, dtype, channel");
                tap_eq_u64(u64(get(o, "number_of_images")), NY * NX, "series: number_of_images");
                const msgpack_object *org = get(gr, "origin"), *st = get(gr, "step");
                tap_ok(u64(get(gr, "ny")) == NY && u64(get(gr, "nx")) == NX && boolean(get(gr, "snake")) == 1 &&
                               str_eq(get(gr, "fast_axis"), "x") && org && org->via.array.size == 2 &&
                               f64(&org->via.array.ptr[0]) == -1.25 && f64(&org->via.array.ptr[1]) == 3.5 && st &&
                               st->via.array.size == 2 && f64(&st->via.array.ptr[0]) == 0.05 &&
                               f64(&st->via.array.ptr[1]) == -0.1 && str_eq(get(gr, "units"), "um") &&
                               str_eq(get(gr, "source"), roid_scan_source_name(ROID_SCAN_FROM_SERIES)),
                       "series: grid ny, nx, snake, fast_axis, origin, step, units, source");
                tap_ok(u64(get(o, "n_segments")) == 4 && u64(get(o, "k")) == 3, "series: n_segments, k");
                tap_ok(get(o, "analysis_error") && is_nil(get(o, "analysis_error")),
                       "series start: analysis_error nil (an RoI state)");
                tap_ok(is_nil(get(o, "frames_analysed")) && is_nil(get(o, "terminated")) &&
                               is_nil(get(o, "results_file")),
                       "series start: end-only keys nil");
        }
        rx_free(&m);

        /* maps: three online ones, per-topic seq 0, 1, 2 */
        roid_roi *roi = make_roi();
        roid_map_view mv = {.series = ref, .roi = roi, .grid = &g, .final = false};
        for (uint64_t i = 0; i < 3; i++) {
                t0 = now_real();
                tap_eq_i64(roid_publish_map(p, &mv), 0, "publish map");
                t1 = now_real();
                if (tap_ok(rx(sub, 2000, &m), "map %llu received", (unsigned long long)i)) {
                        check_common(&m, "map", i, t0, t1, true, "map");
                        if (i == 0)
                                check_map(&m, roi, &g, false, "online map");
                }
                rx_free(&m);
        }

        /* scan_here: a hand-made feedback view over the online mask */
        roid_fb_box boxes[2] = {{2, 4, 8, 10, 29, -1.05, 3.3, -0.75, 2.7}, {0, 0, 0, 1, 2, -1.25, 3.5, -1.2, 3.5}};
        double rescan[6] = {-1.05, 3.3, -1.025, 3.3, -1.0, 3.25};
        uint32_t skip[4] = {160, 161, 175, 191};
        roid_fb_point next[3] = {{5, 7, -0.9, 3.0, 9.5}, {4, 4, -1.05, 3.1, 7.25}, {9, 15, -0.5, 2.6, 1.0}};
        roid_feedback_view fb = {.ny = NY,
                                 .nx = NX,
                                 .frames = roid_roi_frames(roi),
                                 .updates = 3,
                                 .final = false,
                                 .stable = true,
                                 .unchanged = 2,
                                 .motor = true,
                                 .units = "um",
                                 .step_x = 0.05,
                                 .step_y = -0.1,
                                 .boxes = boxes,
                                 .n_boxes = 2,
                                 .rescan = rescan,
                                 .n_rescan = 3,
                                 .rescan_step_x = 0.025,
                                 .rescan_step_y = -0.05,
                                 .rescan_truncated = true,
                                 .skip = skip,
                                 .n_skip = 4,
                                 .next = next,
                                 .n_next = 3,
                                 .mask = roid_roi_online_mask(roi)};
        t0 = now_real();
        tap_eq_i64(roid_publish_scan_here(p, &ref, &fb), 0, "publish scan_here");
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "scan_here received")) {
                const msgpack_object *o = &m.obj, *bx = get(o, "boxes"), *nx = get(o, "next");
                uint64_t rs[2] = {3, 2}, ss[1] = {4}, ms[2] = {NY, NX};
                check_common(&m, "scan_here", 0, t0, t1, true, "scan_here");
                tap_ok(u64(get(o, "ny")) == NY && u64(get(o, "nx")) == NX && u64(get(o, "frames")) == fb.frames &&
                               u64(get(o, "updates")) == 3 && boolean(get(o, "final")) == 0 &&
                               boolean(get(o, "stable")) == 1 && u64(get(o, "unchanged")) == 2 &&
                               boolean(get(o, "motor")) == 1 && str_eq(get(o, "units"), "um") &&
                               boolean(get(o, "rescan_truncated")) == 1,
                       "scan_here: scalar fields");
                tap_ok(bx && bx->type == MSGPACK_OBJECT_ARRAY && bx->via.array.size == 2 &&
                               u64(get(&bx->via.array.ptr[0], "row0")) == 2 &&
                               u64(get(&bx->via.array.ptr[0], "col1")) == 10 &&
                               u64(get(&bx->via.array.ptr[0], "points")) == 29 &&
                               f64(get(&bx->via.array.ptr[0], "x0")) == -1.05 &&
                               f64(get(&bx->via.array.ptr[1], "y1")) == 3.5,
                       "scan_here: boxes");
                typed_eq(get(o, "rescan"), "float64", 2, rs, rescan, 8, "scan_here rescan");
                typed_eq(get(o, "skip"), "uint32", 1, ss, skip, 4, "scan_here skip");
                typed_eq(get(o, "mask"), "uint8", 2, ms, fb.mask, 1, "scan_here mask");
                bool ok = nx && nx->type == MSGPACK_OBJECT_ARRAY && nx->via.array.size == 3;
                for (unsigned i = 0; ok && i < 3; i++) {
                        const msgpack_object *pt = &nx->via.array.ptr[i];
                        ok = u64(get(pt, "row")) == next[i].row && u64(get(pt, "col")) == next[i].col &&
                             f64(get(pt, "x")) == next[i].x && f64(get(pt, "y")) == next[i].y &&
                             f64(get(pt, "score")) == next[i].score;
                }
                tap_ok(ok, "scan_here: next points in order, every field");
        }
        rx_free(&m);

        /* scan_here before any feedback: empty body, not an error */
        tap_eq_i64(roid_publish_scan_here(p, &ref, NULL), 0, "publish scan_here without feedback");
        if (tap_ok(rx(sub, 2000, &m), "empty scan_here received")) {
                uint64_t zs[2] = {0, 2};
                tap_eq_u64(u64(get(&m.obj, "seq")), 1, "scan_here seq 1");
                typed_eq(get(&m.obj, "rescan"), "float64", 2, zs, NULL, 8, "empty rescan");
                tap_ok(is_nil(get(&m.obj, "mask")) && get(&m.obj, "next")->via.array.size == 0,
                       "empty scan_here: mask nil, next []");
        }
        rx_free(&m);

        /* frame */
        roid_frame_record rec = {.image_id = 17, .row = 5, .col = 7, .pos_x = NAN, .pos_y = NAN};
        features(5, 7, 4, &rec.f);
        rec.f.masked = 12;
        rec.f.saturated = 2;
        rec.t_arrival = now_mono() - 0.005;
        roid_frame_view fv = {.series = ref, .rec = &rec, .label = 1};
        t0 = now_real();
        tap_eq_i64(roid_publish_frame(p, &fv), 0, "publish frame");
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "frame received")) {
                const msgpack_object *o = &m.obj, *seg = get(o, "segments");
                uint64_t s4[1] = {4}, sums[4];
                double cx[4], cy[4];
                for (int s = 0; s < 4; s++) {
                        sums[s] = rec.f.seg[s].sum_u64;
                        cx[s] = rec.f.seg[s].com_x;
                        cy[s] = rec.f.seg[s].com_y;
                }
                check_common(&m, "frame", 0, t0, t1, true, "frame");
                tap_ok(u64(get(o, "image_id")) == 17 && u64(get(o, "row")) == 5 && u64(get(o, "col")) == 7 &&
                               is_nil(get(o, "pos_x")) && is_nil(get(o, "pos_y")) && u64(get(o, "label")) == 1,
                       "frame: image_id, row, col, no position, label");
                tap_ok(u64(get(o, "total")) == rec.f.total_u64 && f64(get(o, "com_x")) == rec.f.com_x &&
                               f64(get(o, "com_y")) == rec.f.com_y && u64(get(o, "bf")) == rec.f.bf_u64 &&
                               u64(get(o, "df")) == rec.f.df_u64 && u64(get(o, "masked")) == 12 &&
                               u64(get(o, "saturated")) == 2 && u64(get(o, "n_pixels")) == rec.f.n_pixels,
                       "frame: features");
                typed_eq(get(seg, "sum"), "uint64", 1, s4, sums, 8, "frame segments.sum");
                typed_eq(get(seg, "com_x"), "float64", 1, s4, cx, 8, "frame segments.com_x");
                typed_eq(get(seg, "com_y"), "float64", 1, s4, cy, 8, "frame segments.com_y");
                double age = f64(get(o, "age_ms"));
                tap_ok(age >= 5 && age < 5000, "frame: age_ms %.3f >= 5", age);
        }
        rx_free(&m);

        /* status, with counters and the publisher's own counts */
        roid_counters ctr;
        memset(&ctr, 0, sizeof(ctr));
        for (unsigned i = 0; i < ROID_C__MAX; i++)
                roid_count(&ctr, (roid_counter)i, 1000 + i);
        roid_status_view st = {.series = ref,
                               .state = "acquiring",
                               .ctr = &ctr,
                               .uptime_s = 12.5,
                               .frames_per_s = 2000,
                               .bytes_per_s = 1.5e9,
                               .work = {3, 256},
                               .analysis = {1, 256},
                               .writer = {0, 1024},
                               .latency_p50_ms = 4.25,
                               .latency_p99_ms = NAN,
                               .pub = p,
                               .control_requests = 7,
                               .control_errors = 2,
                               .control_unsent = 5};
        t0 = now_real();
        tap_eq_i64(roid_publish_status(p, &st), 0, "publish status");
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "status received")) {
                const msgpack_object *o = &m.obj, *q = get(o, "queues"), *c = get(o, "counters");
                const msgpack_object *pub = get(o, "published"), *ctl = get(o, "control");
                check_common(&m, "status", status_seq, t0, t1, true, "status");
                tap_ok(str_eq(get(o, "state"), "acquiring") && f64(get(o, "uptime_s")) == 12.5 &&
                               f64(get(o, "frames_per_s")) == 2000 && f64(get(o, "bytes_per_s")) == 1.5e9,
                       "status: state, uptime, rates");
                tap_ok(u64(get(get(q, "work"), "depth")) == 3 && u64(get(get(q, "work"), "capacity")) == 256 &&
                               u64(get(get(q, "analysis"), "depth")) == 1 &&
                               u64(get(get(q, "writer"), "capacity")) == 1024,
                       "status: queues");
                tap_ok(f64(get(o, "latency_p50_ms")) == 4.25 && is_nil(get(o, "latency_p99_ms")),
                       "status: latency p50, unknown p99 is nil");
                bool ok = c && c->type == MSGPACK_OBJECT_MAP && c->via.map.size == ROID_C__MAX;
                for (unsigned i = 0; ok && i < ROID_C__MAX; i++)
                        ok = u64(get(c, roid_counter_name((roid_counter)i))) == 1000 + i;
                tap_ok(ok, "status: every counter by name");
                tap_ok(u64(get(get(pub, "map"), "sent")) == 3 && u64(get(get(pub, "map"), "dropped")) == 0 &&
                               u64(get(get(pub, "status"), "sent")) == status_sent,
                       "status: published counts per topic");
                tap_ok(u64(get(ctl, "requests")) == 7 && u64(get(ctl, "errors")) == 2 && u64(get(ctl, "unsent")) == 5,
                       "status: control counts");
                tap_ok(str_eq(get(o, "version"), ROID_VERSION), "status: version");
        }
        rx_free(&m);

        /* a status without a series */
        roid_status_view idle = {.state = "idle", .latency_p50_ms = NAN, .latency_p99_ms = NAN};
        t0 = now_real();
        roid_publish_status(p, &idle);
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "idle status received")) {
                check_common(&m, "status", status_seq + 1, t0, t1, false, "idle status");
                tap_ok(is_nil(get(&m.obj, "counters")) && is_nil(get(&m.obj, "published")),
                       "idle status: counters, published nil without them");
        }
        rx_free(&m);

        /* end: final map and series end */
        roid_roi_finish(roi);
        mv.final = true;
        t0 = now_real();
        roid_publish_map(p, &mv);
        t1 = now_real();
        if (tap_ok(rx(sub, 2000, &m), "final map received")) {
                check_common(&m, "map", 3, t0, t1, true, "final map");
                check_map(&m, roi, &g, true, "final map");
        }
        rx_free(&m);
        sv.event = "end";
        sv.frames_analysed = 320;
        sv.frames_dropped = 3;
        sv.roi_points = ones(roid_roi_mask(roi), NY * NX);
        sv.terminated = true;
        sv.results_path = "/data/roid/run-0042.h5";
        sv.analysis_error = "no RoI state: scan 4096 x 4096 needs more than max_analysis_bytes";
        roid_publish_series(p, &sv);
        if (tap_ok(rx(sub, 2000, &m), "series end received")) {
                const msgpack_object *o = &m.obj;
                tap_eq_u64(u64(get(o, "seq")), 1, "series seq 1");
                tap_ok(str_eq(get(o, "event"), "end") && u64(get(o, "frames_analysed")) == 320 &&
                               u64(get(o, "frames_dropped")) == 3 && u64(get(o, "roi_points")) == sv.roi_points &&
                               boolean(get(o, "terminated")) == 1 &&
                               str_eq(get(o, "results_file"), "/data/roid/run-0042.h5"),
                       "series end: counts, terminated, results file");
                tap_ok(str_eq(get(o, "analysis_error"), sv.analysis_error), "series end: analysis_error as given");
        }
        rx_free(&m);
        tap_ok(!rx(sub, 100, &m), "nothing else was published");
        rx_free(&m);

        for (unsigned t = 0; t < ROID_TOPIC__MAX; t++)
                tap_eq_u64(roid_publisher_dropped(p, (roid_topic)t), 0, roid_topic_name((roid_topic)t));
        tap_eq_i64(roid_publish_map(p, &(roid_map_view){.series = ref}), -EINVAL, "map without an RoI state");
        tap_eq_u64(roid_publisher_dropped(p, ROID_TOPIC_MAP), 1, "... counted as dropped");

        zmq_close(sub);
        roid_roi_free(roi);
        roid_publisher_free(p);
}

/* The seq numbers of one topic as a subscriber receives them. */
typedef struct {
        uint64_t last, n, gaps;
        bool increasing;
} seq_track;

static void track(seq_track *t, const rx_msg *m) {
        if (strcmp(m->topic, "map") != 0)
                return;
        const uint64_t s = u64(get(&m->obj, "seq"));
        t->increasing &= s > t->last;
        t->gaps += s > t->last ? s - t->last - 1 : 0;
        t->last = s;
        t->n++;
}

/* A subscriber of everything that never reads: the others still get every
 * message (with ZMQ_XPUB_NODROP one stuck subscriber made every send fail,
 * and a hung dashboard silenced the scan controller's scan_here); the stuck
 * one, once it reads, sees the gap in seq. */
static void test_drops(void *ctx) {
        roid_publisher *p = NULL;
        roid_err err = {{0}};
        roid_series_ref ref = {.known = true, .series_id = 42, .unique_id = "run-0042"};
        roid_status_view st = {.state = "idle", .latency_p50_ms = NAN, .latency_p99_ms = NAN};
        enum { N = 300 };
        rx_msg m;

        if (!tap_ok(roid_publisher_new(ctx, "inproc://live-drops", 100, &p, &err) == 0, "inproc publisher (%s)",
                    err.msg))
                exit(1);
        void *stuck = sub_socket(ctx, "inproc://live-drops", "", 1);
        void *reader = sub_socket(ctx, "inproc://live-drops", "map", 1);
        roid_roi *roi = make_roi();
        roid_map_view mv = {.series = ref, .roi = roi};
        uint64_t seq0 = 0;
        bool joined = false, joined_reader = false;
        for (int i = 0; i < 500 && !(joined && joined_reader); i++) {
                roid_publish_map(p, &mv);
                if (rx(stuck, 10, &m)) {
                        joined = true;
                        seq0 = u64(get(&m.obj, "seq"));
                }
                rx_free(&m);
                if (rx(reader, 10, &m))
                        joined_reader = true;
                rx_free(&m);
        }
        if (!tap_ok(joined && joined_reader, "both subscribers joined"))
                exit(1);
        while (rx(stuck, 20, &m)) {
                if (!strcmp(m.topic, "map"))
                        seq0 = u64(get(&m.obj, "seq"));
                rx_free(&m);
        }
        while (rx(reader, 20, &m))
                rx_free(&m);
        uint64_t attempted0 = roid_publisher_sent(p, ROID_TOPIC_MAP) + roid_publisher_dropped(p, ROID_TOPIC_MAP);
        tap_eq_u64(attempted0, seq0 + 1, "map: sent + dropped = seq of the next message");

        /* The stuck one does not read; the reader reads as they come.  Each
         * time the stuck queue fills up again, libzmq 4.3.4 loses one
         * message for the other subscribers too (4 in 300 here): they see
         * it as a gap in seq, like any drop. */
        unsigned n_ok = 0, st_ok = 0;
        seq_track tr = {.last = seq0, .increasing = true};
        for (unsigned i = 0; i < N; i++) {
                n_ok += roid_publish_map(p, &mv) == 0;
                st_ok += roid_publish_status(p, &st) == 0;
                if (rx(reader, i + 1 < N ? 20 : 2000, &m))
                        track(&tr, &m);
                rx_free(&m);
        }
        while (rx(reader, 50, &m)) { /* any the loop did not wait for */
                track(&tr, &m);
                rx_free(&m);
        }
        const uint64_t read = tr.n, gaps = tr.gaps;
        const bool increasing = tr.increasing;
        tap_eq_u64(n_ok, N, "every map publish returns 0 with a subscriber that does not read");
        tap_eq_u64(st_ok, N, "every status too");
        tap_ok(read >= N - N / 25 && increasing && read + gaps == N,
               "the reading subscriber got %llu of %u maps, in order, each one missing seen as a gap",
               (unsigned long long)read, N);
        tap_eq_u64(roid_publisher_dropped(p, ROID_TOPIC_MAP), 0, "nothing dropped by roid");

        /* The stuck one reads now: what its queue held, then a gap. */
        uint64_t got = 0, last = seq0;
        while (rx(stuck, 50, &m)) {
                if (!strcmp(m.topic, "map")) {
                        last = u64(get(&m.obj, "seq"));
                        got++;
                }
                rx_free(&m);
        }
        tap_ok(got < N, "the stuck subscriber's queue held %llu maps (its high-water marks)", (unsigned long long)got);
        tap_eq_i64(roid_publish_map(p, &mv), 0, "a map after it read");
        bool seen = false;
        while (!seen && rx(stuck, 2000, &m)) {
                if (!strcmp(m.topic, "map")) {
                        uint64_t s = u64(get(&m.obj, "seq"));
                        tap_eq_u64(s, seq0 + 1 + N, "its seq counts every map published");
                        tap_ok(s - last - 1 >= N - got, "the stuck subscriber sees a gap of %llu in seq",
                               (unsigned long long)(s - last - 1));
                        seen = true;
                }
                rx_free(&m);
        }
        tap_ok(seen, "map after the gap received");

        zmq_close(stuck);
        zmq_close(reader);
        roid_roi_free(roi);
        roid_publisher_free(p);
}

/* Maps of a large grid are handed to libzmq without a copy, from a pool of
 * four buffers that circulate between the publisher and libzmq.  A buffer
 * must never be packed into while libzmq still holds it: a subscriber that
 * reads only after many maps were published must receive each as it was (its
 * counts array, which changes between publications).  With every buffer
 * still queued, a map is dropped and counted, not copied, so a slow
 * subscriber holds at most the pool (over tcp the socket buffers take some
 * too; over inproc nothing does: exactly four go).  Then a publisher freed
 * with maps still queued (the sanitizer build checks the buffers' release). */
static void test_large_maps(void *ctx) {
        enum { LY = 120, LX = 160, NP = LY * LX, NMAP = 12 };
        roid_publisher *p = NULL;
        roid_err err = {{0}};
        roid_roi_params rp;
        roid_roi *r = NULL;
        roid_features f;
        roid_series_ref ref = {.known = true, .series_id = 7, .unique_id = "large"};
        static uint32_t want[NMAP][NP];
        rx_msg m;

        roid_roi_params_default(&rp);
        rp.n_segments = 4;
        if (roid_roi_new(&rp, LY, LX, &r, &err) < 0 ||
            !tap_ok(roid_publisher_new(ctx, "tcp://127.0.0.1:*", 1000, &p, &err) == 0, "tcp publisher (%s)", err.msg))
                exit(1);
        void *sub = sub_socket(ctx, roid_publisher_endpoint(p), "", 1000);
        join(p, sub);
        for (uint32_t i = 0; i < NP / 2; i++) {
                features(i / LX, i % LX, 4, &f);
                roid_roi_add(r, i / LX, i % LX, &f);
        }
        roid_map_view mv = {.series = ref, .roi = r};
        unsigned sent = 0, order[NMAP];
        size_t size = 0;
        for (unsigned k = 0; k < NMAP; k++) {
                /* a few more frames, so that each map differs */
                for (uint32_t i = 0; i < 37; i++) {
                        uint32_t j = (k * 997 + i * 131) % NP;
                        features(j / LX, j % LX, 4, &f);
                        roid_roi_add(r, j / LX, j % LX, &f);
                }
                memcpy(want[k], roid_roi_counts(r), sizeof want[k]);
                int e = roid_publish_map(p, &mv);
                if (e == 0)
                        order[sent++] = k;
                else
                        tap_ok(e == -EAGAIN, "map %u: 0 or -EAGAIN (%d)", k, e);
        }
        tap_ok(sent >= 4 && sent + roid_publisher_dropped(p, ROID_TOPIC_MAP) == NMAP,
               "12 maps of a 120x160 grid published without reading: %u sent (the pool and what tcp took), the "
               "rest dropped and counted",
               sent);
        unsigned got = 0, exact = 0;
        while (got < sent && rx(sub, 2000, &m)) {
                if (!strcmp(m.topic, "map")) {
                        const uint32_t *w = want[order[got]];
                        const msgpack_object *c = get(&m.obj, "counts"), *d = c ? get(c, "data") : NULL;
                        exact += m.ok && d && d->type == MSGPACK_OBJECT_BIN && d->via.bin.size == sizeof want[0] &&
                                 !memcmp(d->via.bin.ptr, w, sizeof want[0]);
                        size = m.size;
                        got++;
                }
                rx_free(&m);
        }
        tap_ok(size >= 65536, "a map is %zu bytes: large enough to go without a copy", size);
        tap_eq_u64(got, sent, "every map sent received");
        tap_eq_u64(exact, sent, "each with the counts of its own publication");
        tap_ok(roid_publish_map(p, &mv) == 0, "once read, the buffers are back: the next map goes");
        rx_free(&m);
        rx(sub, 2000, &m);
        rx_free(&m);

        /* Over inproc a map subscriber that does not read holds exactly the
         * map pool, and no more: a scan_here subscriber that reads gets every
         * large scan_here (its own pool). */
        roid_publisher *q = NULL;
        if (!tap_ok(roid_publisher_new(ctx, "inproc://large-maps", 1000, &q, &err) == 0, "inproc publisher (%s)",
                    err.msg))
                exit(1);
        static uint8_t big_mask[LY * LX * 4];
        for (size_t i = 0; i < sizeof big_mask; i++)
                big_mask[i] = (uint8_t)(i % 7 == 0);
        roid_feedback_view big = {
                .ny = 2 * LY, .nx = 2 * LX, .units = "um", .step_x = 1, .step_y = 1, .mask = big_mask};
        void *lazy = sub_socket(ctx, "inproc://large-maps", "map", 1000);
        void *ctl = sub_socket(ctx, "inproc://large-maps", "scan_here", 1000);
        bool joined_map = false, joined_ctl = false;
        for (int i = 0; i < 500 && !(joined_map && joined_ctl); i++) {
                roid_publish_map(q, &mv);
                roid_publish_scan_here(q, &ref, &big);
                joined_map = joined_map || rx(lazy, 10, &m);
                rx_free(&m);
                joined_ctl = joined_ctl || rx(ctl, 10, &m);
                rx_free(&m);
        }
        if (!tap_ok(joined_map && joined_ctl, "map and scan_here subscribers joined"))
                exit(1);
        while (rx(lazy, 20, &m) || rx(ctl, 20, &m))
                rx_free(&m);
        rx_free(&m);
        const uint64_t dropped0 = roid_publisher_dropped(q, ROID_TOPIC_MAP);
        unsigned went = 0, refused = 0, fb_went = 0, fb_got = 0;
        size_t fb_size = 0;
        for (unsigned k = 0; k < NMAP; k++) {
                int e = roid_publish_map(q, &mv);
                went += e == 0;
                refused += e == -EAGAIN;
        }
        for (unsigned k = 0; k < NMAP; k++) {
                fb_went += roid_publish_scan_here(q, &ref, &big) == 0;
                if (rx(ctl, 2000, &m) && !strcmp(m.topic, "scan_here")) {
                        fb_got++;
                        fb_size = m.size;
                }
                rx_free(&m);
        }
        tap_ok(went == 4 && refused == NMAP - 4 && roid_publisher_dropped(q, ROID_TOPIC_MAP) - dropped0 == NMAP - 4,
               "inproc, not reading: 4 maps go (the pool), %u are dropped and counted (%u went)", refused, went);
        tap_ok(fb_size >= 65536 && fb_went == NMAP && fb_got == NMAP,
               "meanwhile every scan_here of %zu bytes goes to its reader (%u sent, %u received)", fb_size, fb_went,
               fb_got);
        zmq_close(lazy);
        zmq_close(ctl);
        roid_publisher_free(q);
        for (unsigned k = 0; k < 6; k++)
                roid_publish_map(p, &mv);
        roid_publisher_free(p);
        zmq_close(sub);
        roid_roi_free(r);
}

/* A dashboard subscribed to everything that stops reading (a laptop gone to
 * sleep) holds every large message queued for it.  With the fixed pool of
 * four the scan controller then lost every large scan_here after the fourth,
 * the final one included, for good (found by a dashboard author's review).
 * Now a final scan_here always goes (copied), and a pool allowed to grow
 * (roid_publisher_set_pool, as the pipeline does from the series' memory
 * bound) costs the reading subscriber nothing. */
static void test_stalled_subscriber(void *ctx) {
        enum { GY = 240, GX = 320, N1 = 12, N2 = 40, HWM = 50 };
        roid_publisher *p = NULL;
        roid_err err = {{0}};
        rx_msg m;
        roid_series_ref ref = {.known = true, .series_id = 9, .unique_id = "stall"};
        static uint8_t mask[GY * GX];
        for (size_t i = 0; i < sizeof mask; i++)
                mask[i] = (uint8_t)(i % 5 == 0);
        roid_feedback_view fb = {.ny = GY, .nx = GX, .units = "um", .step_x = 1, .step_y = 1, .mask = mask};
        if (!tap_ok(roid_publisher_new(ctx, "inproc://stall", HWM, &p, &err) == 0, "inproc publisher (%s)", err.msg))
                exit(1);
        void *asleep = sub_socket(ctx, "inproc://stall", "", 1);
        void *ctl = sub_socket(ctx, "inproc://stall", "scan_here", 1000);
        bool joined_ctl = false, joined_asleep = false;
        for (int i = 0; i < 500 && !(joined_ctl && joined_asleep); i++) {
                roid_publish_scan_here(p, &ref, &fb);
                joined_ctl = joined_ctl || rx(ctl, 10, &m);
                rx_free(&m);
                joined_asleep = joined_asleep || rx(asleep, 10, &m);
                rx_free(&m);
        }
        if (!tap_ok(joined_ctl && joined_asleep, "both subscribers joined"))
                exit(1);
        while (rx(ctl, 20, &m) || rx(asleep, 20, &m))
                rx_free(&m);
        rx_free(&m);

        unsigned got = 0, finals = 0;
        size_t size = 0;
        const uint64_t d0 = roid_publisher_dropped(p, ROID_TOPIC_SCAN_HERE);
        for (unsigned k = 0; k <= N1; k++) {
                fb.final = k == N1;
                roid_publish_scan_here(p, &ref, &fb);
                while (rx(ctl, 50, &m)) {
                        got++;
                        finals += boolean(get(&m.obj, "final")) == 1;
                        size = m.size;
                        rx_free(&m);
                }
                rx_free(&m);
        }
        const uint64_t dropped = roid_publisher_dropped(p, ROID_TOPIC_SCAN_HERE) - d0;
        tap_ok(size >= 65536 && got == 5 && dropped == N1 - 4,
               "pool of four, one subscriber asleep: %u of %u scan_here of %zu bytes reach the controller, %llu "
               "dropped",
               got, N1 + 1, size, (unsigned long long)dropped);
        tap_eq_u64(finals, 1, "the final scan_here reaches the controller all the same (copied)");

        fb.final = false;
        roid_publisher_set_pool(p, 1000000, 0); /* bounded by publish_hwm + 2 */
        got = 0;
        const uint64_t d1 = roid_publisher_dropped(p, ROID_TOPIC_SCAN_HERE);
        for (unsigned k = 0; k < N2; k++) {
                roid_publish_scan_here(p, &ref, &fb);
                while (rx(ctl, 50, &m)) {
                        got++;
                        rx_free(&m);
                }
                rx_free(&m);
        }
        const unsigned grown = roid_publisher_pool_buffers(p, ROID_TOPIC_SCAN_HERE);
        tap_ok(got == N2 && roid_publisher_dropped(p, ROID_TOPIC_SCAN_HERE) == d1 && grown > N2 && grown <= HWM + 2,
               "pool allowed to grow: every one of %u more reaches the controller (%u) while the other sleeps (%u "
               "buffers, at most publish_hwm + 2)",
               N2, got, grown);
        /* Back to four while the sleeper still holds its buffers: they go as
         * they come back.  Once it has gone, the next series start (set_pool)
         * gives every extra one back at once, without a large message to send
         * (the sanitizer build checks that none leaks). */
        roid_publisher_set_pool(p, 0, 0);
        const unsigned held = roid_publisher_pool_buffers(p, ROID_TOPIC_SCAN_HERE);
        zmq_close(asleep);
        unsigned left = held;
        const roid_status_view idle = {.state = "idle", .latency_p50_ms = NAN, .latency_p99_ms = NAN};
        for (int i = 0; i < 200 && left > 4; i++) {
                /* libzmq drops the sleeper's queue once the PUB socket has seen
                 * it go: any send lets it process that */
                usleep(10000);
                roid_publish_status(p, &idle);
                roid_publisher_set_pool(p, 0, 0);
                left = roid_publisher_pool_buffers(p, ROID_TOPIC_SCAN_HERE);
        }
        tap_ok(held > 4 && left == 4,
               "bound lowered: %u buffers kept while the sleeper holds them, %u once it has gone", held, left);
        zmq_close(ctl);
        roid_publisher_free(p);
}

static void test_bad_args(void *ctx) {
        roid_publisher *p = (roid_publisher *)&p;
        roid_err err = {{0}};
        tap_eq_i64(roid_publisher_new(ctx, "tcp://127.0.0.1:*", 0, &p, &err), -EINVAL, "sndhwm 0 refused");
        tap_ok(strstr(err.msg, "publish_hwm") != NULL, "error names publish_hwm: %s", err.msg);
        tap_ok(roid_publisher_new(ctx, "nonsense://x", 10, &p, &err) < 0 && strstr(err.msg, "nonsense://x"),
               "bad endpoint refused, named: %s", err.msg);
        tap_ok(p == (roid_publisher *)&p, "ret untouched on failure");
}

int main(void) {
        uint16_t probe = 1;
        void *ctx = zmq_ctx_new();

        if (*(uint8_t *)&probe != 1) {
                tap_skip("typed arrays are compared with host memory: little-endian hosts only");
                return tap_done();
        }
        test_topics(ctx);
        test_drops(ctx);
        test_large_maps(ctx);
        test_stalled_subscriber(ctx);
        test_bad_args(ctx);
        zmq_ctx_term(ctx);
        return tap_done();
}
