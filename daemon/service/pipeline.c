#include "service/pipeline.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "ingest/codec.h"
#include "outputs/writer.h"
#include "service/latency.h"
#include "service/log.h"
#include "service/queue.h"

/* The loop hands frames to the work queue SUBMIT_BATCH at a time (and at
 * every barrier and at the end of every drain of the socket: see
 * roid_pipeline_flush), one lock and at most one wake-up per batch.  Jobs that
 * found the queue full stay pending and the loop reads no message until they
 * are in: at most a batch, one message's jobs (end + start + frame), a
 * coalesced reset and the shutdown's end. */
#define SUBMIT_BATCH      32
#define MAX_PENDING       (SUBMIT_BATCH + 8)
#define WORK_BATCH        8    /* jobs a worker takes at once (small: several workers share the queue) */
#define AN_BATCH          64   /* records the analysis thread pops at once */
#define SNAPSHOT_INTERVAL 0.25 /* s between control snapshots, at least */
/* The share of the analysis thread the two snapshots may take: each copies
 * the maps of the whole grid (0.33 KB a point at 8 segments, 200 MB for a
 * scan of 600,000 points), so large grids are snapshot less often. */
#define SNAPSHOT_BUDGET 0.05
/* A map publication (feedback, snapshot, packing, sending: all O(grid
 * points)) may take at most this share of the analysis thread; beyond it the
 * map interval stretches, so that a huge grid slows the maps, not the frames. */
#define MAP_BUDGET 0.25
/* The same for the online refits (O(points seen) each, due every n/16
 * frames): at the highest frame rates a due refit waits until the last one's
 * cost is at most this share of the time since, so the frames keep their
 * thread and the online centres are refreshed a little less often. */
#define REFIT_BUDGET 0.25
/* Both shares while frames wait for the workers or for this thread (either
 * queue at least three quarters full): the cores are short, and a map or a
 * refit later is better than a frame lost.  At 80,000 frames/s of 96 x 96 on
 * two cores shared with the sender this is the difference between keeping up
 * and not. */
#define BEHIND_BUDGET 0.1

/* Per series, shared read-only by the workers once the start job is queued;
 * the geometry is built once, by the first worker that needs it.  Created by
 * the loop thread, freed by the analysis thread after the series' end. */
typedef struct {
        uint64_t series_id;
        char unique_id[ROID_NAME_MAX];
        uint64_t number_of_images;
        roid_analysis_params ap;
        roid_feedback_params fp;
        roid_scan_grid grid;
        bool has_center;
        double cx, cy;
        uint32_t *mask; /* analysed channel's pixel mask (copy), or NULL */
        bool mask_taken;
        bool prebuild;                     /* the start job builds the geometry (prebuild_possible) */
        char channel[ROID_NAME_MAX];       /* loop thread, at the start or the first frame */
        char channel_start[ROID_NAME_MAX]; /* as known at the start; read by the analysis thread */
        roid_dtype dtype;
        uint32_t rows, cols;
        pthread_mutex_t geom_lock;
        _Atomic int geom_state;   /* 0 not yet, 1 built, -1 failed */
        _Atomic uint64_t decoded; /* frames of this series the workers decoded */
        /* Frames of this series lost on the loop thread, before a worker saw
         * them (a full queue with queue_full = drop, position user data or bytes
         * that fail, another channel): the end message counts them too. */
        _Atomic uint64_t lost;
        _Atomic bool unplaced_said; /* the first frame off the grid was logged (workers) */
        roid_geometry geom;
        const char *center_source;
        /* The configuration as text when the loop took this series' parameters
         * from it, for the results file: a reload before the analysis thread
         * reaches the series must not put another one beside them. */
        char config_text[8192];
        char source[ROID_ENDPOINT_MAX]; /* the detector endpoint the series came from */
        roid_results_detector detector;
} series_ctx;

typedef enum { JOB_FRAME, JOB_START, JOB_END, JOB_RESET } job_kind;

typedef struct {
        job_kind kind;
        bool terminated;
        series_ctx *sc;
        uint64_t image_id;
        roid_blob blob; /* data is NULL: the bytes are at blob_off in msg */
        size_t blob_off;
        zmq_msg_t msg;
        double pos_x, pos_y, t_arrival;
        bool position_unknown; /* its user data, which may have held one, was left out */
} job;

typedef enum { AN_START, AN_RECORD, AN_FAILED, AN_END, AN_RESET } an_kind;

typedef struct {
        an_kind kind;
        bool terminated;
        series_ctx *sc;
        roid_frame_record rec;
} an_item;

typedef struct {
        roid_pipeline *pl;
        pthread_t thread;
        /* Decoded frames: small ones go to the kernel ROID_FEATURES_MANY at a
         * time, larger ones one at a time through buf[0]. */
        void *buf[ROID_FEATURES_MANY];
        size_t cap[ROID_FEATURES_MANY];
        uint64_t frames;
        job jobs[WORK_BATCH];
        an_item out[WORK_BATCH];
} worker;

/* The analysis thread's view of the current series. */
typedef struct {
        series_ctx *sc;
        roid_roi *roi;
        roid_feedback *fb;
        uint64_t frames, unplaced, failed, not_analysed, frames_at_map;
        uint64_t fb_refits;            /* roid_roi_refits at the last feedback update */
        char error[ROID_ERR_MAX + 16]; /* why there is no RoI state; "" when there is */
        double t_first;                /* arrival of the series' first frame, 0 = none yet */
        double t_last;                 /* when its last frame so far was analysed */
        double t_seen;                 /* arrival of its last frame the workers handed on, analysed or not */
        double refit_ok_at;            /* no online refit before (REFIT_BUDGET) */
        bool writing;
        char path[ROID_PATH_MAX];
} series_state;

struct roid_pipeline {
        roid_counters *ctr;
        roid_config cfg; /* loop thread: for the next series */
        pthread_mutex_t cfg_lock;
        roid_config cfg_an;     /* analysis thread's intervals (under cfg_lock) */
        char config_text[8192]; /* loop thread: as text, copied into each series at its start */
        roid_zsource *src;
        roid_queue work, an;
        job pending[MAX_PENDING]; /* loop thread: not yet in the work queue */
        unsigned n_pending;
        /* The work queue refused pending jobs: read nothing until they are in.
         * Written by the loop only; read by the workers to wake it. */
        _Atomic bool blocked;
        void (*wake)(void *ctx);
        void *wake_ctx;
        series_ctx *cur; /* loop thread: the open series */
        unsigned n_workers;
        worker *workers;
        pthread_t an_thread;
        bool an_started;
        roid_publisher *pub;
        roid_writer *writer;
        _Atomic uint64_t progress;
        _Atomic uint64_t an_taken; /* items the analysis thread took and has not finished */
        bool fault_stall, fault_slow, fault_preempt, fault_stall_end;
        pthread_mutex_t stall_lock;
        pthread_cond_t stall_cond;
        _Atomic bool stopping;
        uint64_t drop_logged;

        /* analysis thread */
        an_item an_batch[AN_BATCH];
        series_state ss;
        double t_start, next_map, next_status, last_status_t, next_snapshot;
        double map_iv_eff; /* the map interval in effect: map_interval, or stretched by MAP_BUDGET */
        uint64_t last_status_frames, last_status_bytes;
        uint64_t status_epoch;                                 /* reset_epoch as of the last status */
        _Atomic uint64_t reset_epoch;                          /* control resets so far (loop thread) */
        _Atomic uint64_t ctl_requests, ctl_errors, ctl_unsent; /* the control socket's (loop thread) */
        /* The last series once it has ended, for status ("the current series,
         * else the last one"): one copy per thread that publishes status. */
        struct last_series {
                bool known;
                uint64_t series_id;
                char unique_id[ROID_NAME_MAX];
        } loop_last, an_last;
        roid_latency lat;
        uint64_t frame_seq;
        unsigned frame_every; /* copy of cfg_an's, taken under cfg_lock */

        /* snapshot for control replies (snap_lock) */
        pthread_mutex_t snap_lock;
        roid_roi *snap_roi;
        uint64_t snap_series_id;
        char snap_unique_id[ROID_NAME_MAX];
        roid_scan_grid snap_grid;
        bool snap_final;
        roid_feedback_view snap_fb; /* scalars; next points into snap_next */
        roid_fb_point *snap_next;
        size_t n_snap_next, cap_snap_next;
        double snap_p50, snap_p99, snap_fps, snap_map_iv;
        /* series_state.t_seen as of the last status (0 = none), and its series */
        double snap_t_seen;
        uint64_t snap_seen_id;
        char snap_seen_uid[ROID_NAME_MAX];
        /* the last series message, for the `series` request; its view points
         * into the copies beside it */
        bool snap_series_known;
        roid_series_view snap_series;
        char snap_series_uid[ROID_NAME_MAX], snap_series_channel[ROID_NAME_MAX];
        char snap_series_error[ROID_ERR_MAX + 16], snap_series_path[ROID_PATH_MAX];
        roid_scan_grid snap_series_grid;
};

static double now_mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* This thread's CPU time: what the budgets of maps, refits and snapshots
 * count.  Wall time counted the moments the thread was preempted: one map
 * preempted for 6.5 ms (0.3 ms of work) at 2,000 frames/s stretched the map
 * interval to 27 ms, and the next map's frames waited up to 28 ms. */
static double cpu_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool job_is_barrier(const void *item) {
        return ((const job *)item)->kind != JOB_FRAME;
}

/* ------------------------------------------------------------ series ctx */

static void series_ctx_free(series_ctx *sc) {
        if (!sc)
                return;
        if (atomic_load(&sc->geom_state) == 1)
                roid_geometry_free(&sc->geom);
        pthread_mutex_destroy(&sc->geom_lock);
        free(sc->mask);
        free(sc);
}

/* Builds the geometry once per series, on the first frame a worker decodes.
 * A frame the beam centre cannot be estimated from (-ENODATA: nothing above
 * 0, a closed shutter) fails alone and the next frame tries again; any other
 * error holds for the whole series. */
static int series_geometry(series_ctx *sc, const roid_frame *f, roid_err *err) {
        int st = atomic_load_explicit(&sc->geom_state, memory_order_acquire);
        if (st)
                return st > 0 ? 0 : roid_err_set(err, -EINVAL, "no detector geometry for this series");
        pthread_mutex_lock(&sc->geom_lock);
        int r = 0;
        st = atomic_load(&sc->geom_state);
        if (!st) {
                r = roid_analysis_build_geometry(&sc->ap, f->dtype, f->rows, f->cols, sc->has_center, sc->cx, sc->cy, f,
                                                 sc->mask, &sc->geom, &sc->center_source, err);
                if (r == -ENODATA)
                        ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                         "series %" PRIu64 ": %s; the next frame tries again [frames_failed]",
                                         sc->series_id, err->msg);
                else if (r < 0)
                        roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no detector geometry: %s", sc->series_id, err->msg);
                else
                        roid_log(ROID_LOG_INFO, "series %" PRIu64 ": beam centre (%.2f, %.2f) px from %s",
                                 sc->series_id, sc->geom.center_x, sc->geom.center_y, sc->center_source);
                if (r != -ENODATA) {
                        atomic_store_explicit(&sc->geom_state, r < 0 ? -1 : 1, memory_order_release);
                        /* read only to build the geometry: series queued behind a slow
                         * analysis would each hold 4 bytes a pixel */
                        free(sc->mask);
                        sc->mask = NULL;
                }
        } else if (st < 0) {
                r = roid_err_set(err, -EINVAL, "no detector geometry for this series");
        }
        pthread_mutex_unlock(&sc->geom_lock);
        return r;
}

/* ------------------------------------------------------------ workers */

static void an_push(roid_pipeline *pl, const an_item *it) {
        roid_queue_push(&pl->an, it, true);
}

/* Analysis thread, inside a long step (roid_roi_finish): the watchdog's
 * progress, which otherwise moves once per batch of items. */
static void an_heartbeat(void *ctx) {
        roid_pipeline *pl = ctx;
        atomic_fetch_add_explicit(&pl->progress, 1, memory_order_relaxed);
}

static void fault_stall(roid_pipeline *pl) {
        pthread_mutex_lock(&pl->stall_lock);
        while (!atomic_load(&pl->stopping))
                pthread_cond_wait(&pl->stall_cond, &pl->stall_lock);
        pthread_mutex_unlock(&pl->stall_lock);
}

/* Ends job j's frame as a failure, with err's reason. */
static void frame_failed(worker *w, job *j, an_item *it, const roid_err *err) {
        roid_pipeline *pl = w->pl;
        *it = (an_item){.kind = AN_FAILED, .sc = j->sc};
        it->rec.image_id = j->image_id;
        it->rec.t_arrival = j->t_arrival;
        zmq_msg_close(&j->msg);
        roid_count(pl->ctr, ROID_C_frames_failed, 1);
        ROID_LOG_LIMITED(ROID_LOG_ERR, "series %" PRIu64 " image %" PRIu64 " channel %s: %s [frames_failed]",
                         j->sc->series_id, j->image_id, j->sc->channel, err->msg);
}

/* Ends job j's frame with its record; placed as roid_analysis_place says. */
static void frame_done(worker *w, job *j, an_item *it, int placed, const roid_err *err) {
        (void)w;
        if (j->position_unknown) { /* not placed by its image_id: in a fly scan that would be wrong */
                it->rec.row = it->rec.col = ROID_NOT_PLACED;
                placed = -1; /* said at ingest */
        }
        /* Once a series: the workers race, the counter comes later.  Read
         * first, so that a grid overflowing frame after frame does not bounce
         * the flag's cache line between the workers. */
        if (placed == 0 && !atomic_load_explicit(&j->sc->unplaced_said, memory_order_relaxed) &&
            !atomic_exchange_explicit(&j->sc->unplaced_said, true, memory_order_relaxed))
                ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                 "series %" PRIu64 " image %" PRIu64 ": %s (further ones are counted only)",
                                 j->sc->series_id, j->image_id, err->msg);
        it->kind = AN_RECORD;
        it->sc = j->sc;
        it->rec.t_arrival = j->t_arrival;
        zmq_msg_close(&j->msg);
}

static size_t frame_bytes(roid_dtype dtype, uint32_t rows, uint32_t cols) {
        return (size_t)rows * cols * roid_dtype_size(dtype);
}

/* Whether frames of this size go through the kernel several at a time
 * (roid_features_compute_many), each decoded into its own buffer slot. */
static bool batched(size_t bytes) {
        return bytes <= ROID_FEATURES_MANY_BYTES;
}

/* Buffer `slot` holds `bytes` from now on: once per larger shape, not per
 * frame.  A new one is written through, so that its pages are mapped now. */
static int frame_buffer(worker *w, unsigned slot, size_t bytes) {
        if (bytes <= w->cap[slot])
                return 0;
        void *n = realloc(w->buf[slot], bytes);
        if (!n)
                return -ENOMEM;
        memset(n, 0, bytes);
        w->buf[slot] = n;
        w->cap[slot] = bytes;
        return 0;
}

/* Decodes job j's frame into buffer `slot` and makes sure its series has a
 * geometry; 0 and *ret_f, or the frame is failed (negative). */
static int decode_frame(worker *w, job *j, an_item *it, unsigned slot, roid_frame *ret_f) {
        roid_pipeline *pl = w->pl;
        series_ctx *sc = j->sc;
        roid_err err = {""};
        roid_blob b = j->blob;
        b.data = (const uint8_t *)zmq_msg_data(&j->msg) + j->blob_off;
        const size_t bytes = frame_bytes(b.dtype, b.rows, b.cols);
        int r;
        if ((r = frame_buffer(w, slot, bytes)) < 0) {
                roid_err_set(&err, r, "out of memory for a %zu-byte frame", bytes);
                goto failed;
        }
        if ((r = roid_blob_decode(&b, w->buf[slot], bytes, &err)) < 0)
                goto failed;
        roid_count(pl->ctr, ROID_C_frames_decoded, 1);
        atomic_fetch_add_explicit(&sc->decoded, 1, memory_order_relaxed);
        const roid_frame f = {.dtype = b.dtype, .rows = b.rows, .cols = b.cols, .pixels = w->buf[slot]};
        if ((r = series_geometry(sc, &f, &err)) < 0)
                goto failed;
        *ret_f = f;
        return 0;
failed:
        frame_failed(w, j, it, &err);
        return r;
}

/* Frames decoded and waiting to go through the kernel together: all of one
 * series, of its geometry's shape. */
typedef struct {
        unsigned n;
        job *j[ROID_FEATURES_MANY];
        an_item *it[ROID_FEATURES_MANY];
        roid_frame f[ROID_FEATURES_MANY];
} batch;

static void batch_flush(worker *w, batch *bt) {
        if (!bt->n)
                return;
        const series_ctx *sc = bt->j[0]->sc;
        roid_features ft[ROID_FEATURES_MANY];
        roid_err err = {""};
        const int r = roid_features_compute_many(&sc->geom, bt->n, bt->f, ft, &err);
        for (unsigned i = 0; i < bt->n; i++) {
                job *j = bt->j[i];
                an_item *it = bt->it[i];
                if (r < 0) { /* not expected: batch_add checked the shapes */
                        frame_failed(w, j, it, &err);
                        continue;
                }
                const int placed =
                        roid_analysis_place(&sc->grid, j->image_id, j->pos_x, j->pos_y, &ft[i], &it->rec, &err);
                frame_done(w, j, it, placed, &err);
        }
        bt->n = 0;
}

static bool same_shape(const roid_geometry *g, const roid_frame *f) {
        return f->dtype == g->dtype && f->rows == g->rows && f->cols == g->cols;
}

/* Decodes and analyses job j's frame into *it (AN_RECORD or AN_FAILED), now
 * or, when small, with the next frames of its series at the latest at the
 * next batch_flush.  True for a large frame: *it is final, and no earlier
 * frame waits in the batch. */
static bool work_frame(worker *w, job *j, an_item *it, batch *bt) {
        *it = (an_item){.kind = AN_FAILED, .sc = j->sc};
        if (bt->n && bt->j[0]->sc != j->sc)
                batch_flush(w, bt);
        const bool small = batched(frame_bytes(j->blob.dtype, j->blob.rows, j->blob.cols));
        if (!small)
                batch_flush(w, bt);
        roid_frame f;
        if (decode_frame(w, j, it, small ? bt->n : 0, &f) < 0)
                return !small;
        series_ctx *sc = j->sc;
        if (!small || !same_shape(&sc->geom, &f)) { /* one at a time; a wrong shape fails alone */
                roid_err err = {""};
                const int r =
                        roid_analysis_record(&sc->geom, &sc->grid, j->image_id, j->pos_x, j->pos_y, &f, &it->rec, &err);
                if (r < 0)
                        frame_failed(w, j, it, &err);
                else
                        frame_done(w, j, it, r, &err);
                return !small;
        }
        bt->j[bt->n] = j;
        bt->it[bt->n] = it;
        bt->f[bt->n] = f;
        if (++bt->n == ROID_FEATURES_MANY)
                batch_flush(w, bt);
        return false;
}

/* Takes a run of frames (or one barrier) at once and hands their records to
 * the analysis queue in one push, before finishing them: a barrier's item
 * still follows every record of the frames before it. */
static void *worker_main(void *arg) {
        worker *w = arg;
        roid_pipeline *pl = w->pl;
        int n;
        while ((n = roid_queue_take_many(&pl->work, w->jobs, WORK_BATCH)) > 0) {
                /* Slots just freed: tell a loop that waits for them now, not after the frames. */
                if (atomic_load(&pl->blocked) && pl->wake)
                        pl->wake(pl->wake_ctx);
                bool frames = false;
                batch bt = {0};
                size_t pushed = 0;
                for (int i = 0; i < n; i++) {
                        job *j = &w->jobs[i];
                        an_item *it = &w->out[i];
                        if (j->kind != JOB_FRAME)
                                batch_flush(w, &bt);
                        switch (j->kind) {
                        case JOB_FRAME:
                                const bool large = work_frame(w, j, it, &bt);
                                w->frames++;
                                frames = true;
                                /* A large frame (0.2 ms and more) goes on at once: the
                                 * first of a batch of eight waited for the other seven. */
                                if (large) {
                                        roid_queue_push_many(&pl->an, w->out + pushed, (size_t)i + 1 - pushed, true);
                                        pushed = (size_t)i + 1;
                                }
                                break;
                        case JOB_START:
                                *it = (an_item){.kind = AN_START, .sc = j->sc};
                                if (j->sc->prebuild) {
                                        /* The analysis thread sets up the series' RoI state (a few ms)
                                         * while this builds the geometry (as long): the first frames
                                         * wait for one, not both.  A barrier is taken alone: nothing
                                         * of this batch is before it. */
                                        roid_queue_push_many(&pl->an, w->out, (size_t)i + 1, true);
                                        pushed = (size_t)i + 1;
                                        const roid_frame shape = {
                                                .dtype = j->sc->dtype, .rows = j->sc->rows, .cols = j->sc->cols};
                                        roid_err err = {""};
                                        (void)series_geometry(j->sc, &shape, &err); /* logs its failure */
                                        /* and the buffers its frames will be decoded into */
                                        const size_t bytes = frame_bytes(shape.dtype, shape.rows, shape.cols);
                                        const unsigned slots = batched(bytes) ? ROID_FEATURES_MANY : 1;
                                        for (unsigned k = 0; k < slots; k++)
                                                (void)frame_buffer(w, k, bytes); /* a frame says it again */
                                }
                                break;
                        case JOB_END:
                                *it = (an_item){.kind = AN_END, .sc = j->sc, .terminated = j->terminated};
                                break;
                        case JOB_RESET:
                                *it = (an_item){.kind = AN_RESET};
                                break;
                        }
                }
                batch_flush(w, &bt);
                if ((size_t)n > pushed)
                        roid_queue_push_many(&pl->an, w->out + pushed, (size_t)n - pushed, true);
                roid_queue_done_many(&pl->work, (size_t)n);
                if (atomic_load(&pl->blocked) && pl->wake) /* a barrier may have held the queue */
                        pl->wake(pl->wake_ctx);
                if (pl->fault_stall && frames)
                        fault_stall(pl);
                if (pl->fault_slow && frames) {
                        const uint64_t ns = (uint64_t)n * 5000000u;
                        nanosleep(&(struct timespec){(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)}, NULL);
                }
        }
        return NULL;
}

/* ------------------------------------------------------------ analysis thread */

static void remember(struct last_series *l, uint64_t series_id, const char *unique_id) {
        l->known = true;
        l->series_id = series_id;
        snprintf(l->unique_id, sizeof l->unique_id, "%s", unique_id);
}

static roid_series_ref series_ref(const series_ctx *sc) {
        if (!sc)
                return (roid_series_ref){0};
        return (roid_series_ref){.known = true, .series_id = sc->series_id, .unique_id = sc->unique_id};
}

static void take_snapshot(roid_pipeline *pl, bool final) {
        series_state *ss = &pl->ss;
        roid_feedback_view v;
        roid_feedback_get(ss->fb, &v);
        pthread_mutex_lock(&pl->snap_lock);
        if (pl->snap_roi && roid_roi_copy_maps(pl->snap_roi, ss->roi) < 0) {
                roid_roi_free(pl->snap_roi);
                pl->snap_roi = NULL;
        }
        if (!pl->snap_roi && roid_roi_clone_maps(ss->roi, &pl->snap_roi) < 0)
                pl->snap_roi = NULL;
        pl->snap_series_id = ss->sc->series_id;
        memcpy(pl->snap_unique_id, ss->sc->unique_id, sizeof pl->snap_unique_id);
        pl->snap_grid = ss->sc->grid;
        pl->snap_final = final;
        size_t n = v.n_next < pl->cap_snap_next ? v.n_next : pl->cap_snap_next;
        if (n)
                memcpy(pl->snap_next, v.next, n * sizeof *v.next);
        pl->n_snap_next = n;
        /* Only what `ask` needs; the arrays of the view belong to the analysis thread. */
        pl->snap_fb = (roid_feedback_view){.ny = v.ny,
                                           .nx = v.nx,
                                           .frames = v.frames,
                                           .updates = v.updates,
                                           .final = v.final,
                                           .stable = v.stable,
                                           .unchanged = v.unchanged,
                                           .motor = v.motor,
                                           .units = pl->snap_grid.units,
                                           .step_x = v.step_x,
                                           .step_y = v.step_y,
                                           .next = pl->snap_next,
                                           .n_next = n};
        pthread_mutex_unlock(&pl->snap_lock);
}

/* Returns the CPU seconds the snapshots took: they have their own budget. */
static double publish_map(roid_pipeline *pl, bool final) {
        series_state *ss = &pl->ss;
        if (!ss->roi)
                return 0;
        double snap_cost = 0;
        const double now = now_mono();
        /* No refit here: refits follow the cadence; the online labels of the
         * frames since the last one are already in the map.  The feedback
         * follows the refits (its `stable` counts refits without a change,
         * proto/live.md); it was recomputed at every map, so that with maps
         * 5 ms apart three unchanged maps, 15 ms of background, made the RoI
         * "stable", and the update took a quarter of this thread at 96 x 96. */
        if (final || roid_roi_refits(ss->roi) != ss->fb_refits) {
                roid_feedback_update(ss->fb, ss->roi, final);
                ss->fb_refits = roid_roi_refits(ss->roi);
        }
        if (pl->fault_preempt) /* as if the thread lost its core meanwhile */
                nanosleep(&(struct timespec){0, 15000000}, NULL);
        /* The control snapshot and the writer's copy take the maps of the whole
         * grid: a few times a second is plenty for requests and for a file
         * flushed every flush_interval, and keeps fast map cadences cheap. */
        if (final || now >= pl->next_snapshot) {
                const double t0 = cpu_now();
                take_snapshot(pl, final);
                if (ss->writing)
                        roid_writer_map(pl->writer, ss->roi, final);
                snap_cost = cpu_now() - t0;
                pl->next_snapshot = now + fmax(SNAPSHOT_INTERVAL, snap_cost / SNAPSHOT_BUDGET);
        }
        ss->frames_at_map = ss->frames;
        if (pl->pub) {
                roid_series_ref ref = series_ref(ss->sc);
                roid_map_view mv = {.series = ref, .roi = ss->roi, .grid = &ss->sc->grid, .final = final};
                roid_publish_map(pl->pub, &mv);
                roid_feedback_view fv;
                roid_feedback_get(ss->fb, &fv);
                roid_publish_scan_here(pl->pub, &ref, &fv);
        }
        /* the labels are out once the map is: after the feedback, the snapshot and the sending */
        roid_latency_map(&pl->lat, now_mono());
        return snap_cost;
}

/* open: the series in progress, if any; else the last one is shown, idle. */
static void status_view(roid_pipeline *pl, roid_status_view *v, double now, double fps, double bps, double p50,
                        double p99, double map_iv, roid_series_ref open, const struct last_series *last) {
        roid_series_ref ref = open;
        if (!open.known && last->known)
                ref = (roid_series_ref){.known = true, .series_id = last->series_id, .unique_id = last->unique_id};
        *v = (roid_status_view){
                .series = ref,
                .state = open.known ? "acquiring" : "idle",
                .ctr = pl->ctr,
                .uptime_s = now - pl->t_start,
                .frames_per_s = fps,
                .bytes_per_s = bps,
                .work = {roid_queue_depth(&pl->work), pl->work.capacity},
                .analysis = {roid_queue_depth(&pl->an), pl->an.capacity},
                .writer = {pl->writer ? roid_writer_queue_depth(pl->writer) : 0,
                           pl->writer ? roid_writer_queue_capacity(pl->writer) : 0},
                .latency_p50_ms = p50,
                .latency_p99_ms = p99,
                .map_interval_s = map_iv,
                .frame_age_s = NAN,
                .pub = pl->pub,
                .control_requests = atomic_load_explicit(&pl->ctl_requests, memory_order_relaxed),
                .control_errors = atomic_load_explicit(&pl->ctl_errors, memory_order_relaxed),
                .control_unsent = atomic_load_explicit(&pl->ctl_unsent, memory_order_relaxed),
        };
}

static void publish_status(roid_pipeline *pl, double now) {
        double dt = now - pl->last_status_t;
        /* A control reset zeroes the counters: over that interval the rates
         * count from it instead of wrapping to 1.8e19 (found by review). */
        const uint64_t epoch = atomic_load_explicit(&pl->reset_epoch, memory_order_acquire);
        if (epoch != pl->status_epoch)
                pl->last_status_frames = pl->last_status_bytes = 0;
        pl->status_epoch = epoch;
        uint64_t fr = roid_counter_get(pl->ctr, ROID_C_frames_analysed);
        uint64_t by = roid_counter_get(pl->ctr, ROID_C_bytes_received);
        /* and the few us between the reset and its epoch */
        double fps = dt > 0 ? (double)(fr >= pl->last_status_frames ? fr - pl->last_status_frames : fr) / dt : 0;
        double bps = dt > 0 ? (double)(by >= pl->last_status_bytes ? by - pl->last_status_bytes : by) / dt : 0;
        pl->last_status_t = now;
        pl->last_status_frames = fr;
        pl->last_status_bytes = by;
        double p50, p99;
        roid_latency_status(&pl->lat, &p50, &p99);
        pthread_mutex_lock(&pl->snap_lock);
        pl->snap_p50 = p50;
        pl->snap_p99 = p99;
        pl->snap_fps = fps;
        pl->snap_map_iv = pl->map_iv_eff;
        pl->snap_t_seen = pl->ss.sc ? pl->ss.t_seen : 0;
        if (pl->ss.sc) {
                pl->snap_seen_id = pl->ss.sc->series_id;
                memcpy(pl->snap_seen_uid, pl->ss.sc->unique_id, sizeof pl->snap_seen_uid);
        }
        pthread_mutex_unlock(&pl->snap_lock);
        if (!pl->pub)
                return;
        roid_status_view v;
        status_view(pl, &v, now, fps, bps, p50, p99, pl->map_iv_eff, series_ref(pl->ss.sc), &pl->an_last);
        v.frame_age_s = pl->ss.sc && pl->ss.t_seen ? now - pl->ss.t_seen : NAN;
        roid_publish_status(pl->pub, &v);
}

static void publish_series(roid_pipeline *pl, bool end, bool terminated) {
        series_state *ss = &pl->ss;
        series_ctx *sc = ss->sc;
        if (!sc)
                return;
        size_t roi_points = 0;
        if (end && ss->roi) {
                const uint8_t *m = roid_roi_mask(ss->roi);
                size_t np = (size_t)roid_roi_ny(ss->roi) * roid_roi_nx(ss->roi);
                for (size_t i = 0; m && i < np; i++)
                        roi_points += m[i];
        }
        roid_series_view v = {
                .event = end ? "end" : "start",
                .series = series_ref(sc),
                .rows = sc->rows,
                .cols = sc->cols,
                .dtype = sc->dtype,
                .channel =
                        end ? (sc->channel[0] ? sc->channel : NULL) : (sc->channel_start[0] ? sc->channel_start : NULL),
                .has_number_of_images = sc->number_of_images > 0,
                .number_of_images = sc->number_of_images,
                .grid = &sc->grid,
                .n_segments = sc->ap.roi.n_segments,
                .k = sc->ap.roi.k,
                .frames_analysed = ss->frames,
                .analysis_error = ss->roi ? NULL : ss->error,
                .frames_dropped = ss->unplaced + ss->failed + ss->not_analysed +
                                  atomic_load_explicit(&sc->lost, memory_order_relaxed),
                .roi_points = roi_points,
                .terminated = terminated,
                .results_path = ss->writing ? ss->path : NULL,
        };
        roid_latency_series(&pl->lat, &v.latency_p50_ms, &v.latency_p99_ms, &v.latency_max_ms);
        pthread_mutex_lock(&pl->snap_lock);
        roid_series_view *c = &pl->snap_series;
        *c = v;
        memcpy(pl->snap_series_uid, sc->unique_id, sizeof pl->snap_series_uid);
        c->series.unique_id = pl->snap_series_uid;
        snprintf(pl->snap_series_channel, sizeof pl->snap_series_channel, "%s", v.channel ? v.channel : "");
        c->channel = v.channel ? pl->snap_series_channel : NULL;
        snprintf(pl->snap_series_error, sizeof pl->snap_series_error, "%s", v.analysis_error ? v.analysis_error : "");
        c->analysis_error = v.analysis_error ? pl->snap_series_error : NULL;
        snprintf(pl->snap_series_path, sizeof pl->snap_series_path, "%s", v.results_path ? v.results_path : "");
        c->results_path = v.results_path ? pl->snap_series_path : NULL;
        pl->snap_series_grid = sc->grid;
        c->grid = &pl->snap_series_grid;
        pl->snap_series_known = true;
        pthread_mutex_unlock(&pl->snap_lock);
        if (pl->pub)
                roid_publish_series(pl->pub, &v);
}

static void an_series_free(roid_pipeline *pl) {
        series_state *ss = &pl->ss;
        if (ss->sc)
                remember(&pl->an_last, ss->sc->series_id, ss->sc->unique_id);
        roid_roi_free(ss->roi);
        roid_feedback_free(ss->fb);
        series_ctx_free(ss->sc);
        memset(ss, 0, sizeof *ss);
}

static int an_series_state(roid_pipeline *pl, series_ctx *sc) {
        series_state *ss = &pl->ss;
        roid_err err = {""};
        roid_roi_free(ss->roi);
        roid_feedback_free(ss->fb);
        ss->roi = NULL;
        ss->fb = NULL;
        /* A copy: the workers read sc->ap meanwhile (sc is theirs read-only). */
        roid_roi_params rp = sc->ap.roi;
        rp.other_state_bytes = roid_feedback_state_bytes(&sc->fp, &sc->grid) +
                               (pl->pub ? roid_publish_series_bytes(&sc->fp, &sc->grid) : 0);
        int r = roid_roi_new(&rp, sc->grid.ny, sc->grid.nx, &ss->roi, &err);
        if (pl->pub) {
                /* What max_analysis_bytes leaves beyond the state feeds the
                 * publisher's pools, so that a stalled subscriber of a large map
                 * does not starve the others (publish.h); a series without maps
                 * gives back what the last one's pools held. */
                const uint64_t max = rp.max_state_bytes, per = roid_publish_buffer_bytes(&sc->fp, &sc->grid);
                const uint64_t used = roid_roi_state_bytes(&rp, sc->grid.ny, sc->grid.nx) + rp.other_state_bytes;
                if (r < 0)
                        roid_publisher_set_pool(pl->pub, 0, 0);
                else
                        roid_publisher_set_pool(pl->pub,
                                                !max         ? UINT64_MAX
                                                : max > used ? ROID_PUBLISH_POOL_MIN + (max - used) / per
                                                             : ROID_PUBLISH_POOL_MIN,
                                                per);
        }
        if (r >= 0) {
                roid_roi_hold_refits(ss->roi, true);
                ss->refit_ok_at = 0;
                ss->fb_refits = 0;
                r = roid_feedback_new(&sc->fp, &sc->grid, &ss->fb, &err);
        }
        if (r < 0) {
                if (!err.msg[0])
                        snprintf(err.msg, sizeof err.msg, "%s", strerror(-r));
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no RoI state, its frames are not analysed: %s",
                         sc->series_id, err.msg);
                snprintf(ss->error, sizeof ss->error, "no RoI state: %s", err.msg);
                roid_roi_free(ss->roi);
                ss->roi = NULL;
        } else {
                ss->error[0] = '\0';
        }
        return r;
}

static void an_start(roid_pipeline *pl, series_ctx *sc) {
        series_state *ss = &pl->ss;
        if (ss->sc) /* cannot happen: every start follows its predecessor's end */
                an_series_free(pl);
        ss->sc = sc;
        /* The last series' snapshot goes: this series' maps count against its
         * own max_analysis_bytes, not that one's too (control requests see no
         * map until this series' first). */
        pthread_mutex_lock(&pl->snap_lock);
        roid_roi_free(pl->snap_roi);
        pl->snap_roi = NULL;
        pthread_mutex_unlock(&pl->snap_lock);
        pl->next_snapshot = 0;
        roid_latency_reset(&pl->lat, ROID_LATENCY_ALL);
        an_series_state(pl, sc);
        if (pl->writer && sc->ap.output_dir[0] && ss->roi) {
                roid_results_meta meta = {
                        .series_unique_id = sc->unique_id,
                        .series_id = sc->series_id,
                        .source = sc->source,
                        .detector = &sc->detector,
                        .center_x = sc->has_center ? sc->cx : sc->ap.center_x,
                        .center_y = sc->has_center ? sc->cy : sc->ap.center_y,
                        .center_source = sc->has_center              ? "start"
                                         : isfinite(sc->ap.center_x) ? "config"
                                                                     : "estimated",
                        .r_bf = sc->ap.r_bf,
                        .r_df_in = sc->ap.r_df_in,
                        .r_df_out = sc->ap.r_df_out,
                        .roi = &sc->ap.roi,
                        .ny = sc->grid.ny,
                        .nx = sc->grid.nx,
                        .snake = sc->grid.snake,
                        .fast_axis = sc->grid.fast_axis == ROID_SCAN_FAST_X ? "x" : "y",
                        .scan_source = roid_scan_source_name(sc->grid.source),
                        .scan_origin = {sc->grid.origin_x, sc->grid.origin_y},
                        .scan_step = {sc->grid.step_x, sc->grid.step_y},
                        .scan_units = sc->grid.units,
                        .config_text = sc->config_text,
                };
                /* The path is known now, though the writer thread creates the file later and
                 * may not be done with it when the series message goes out. */
                const int r = roid_writer_open(pl->writer, sc->ap.output_dir, &meta, ss->path, sizeof ss->path);
                ss->writing = r >= 0;
                if (r < 0)
                        roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no results file in %s: %s", sc->series_id,
                                 sc->ap.output_dir, strerror(-r));
        }
        roid_log(ROID_LOG_INFO, "series %" PRIu64 ": scan %u x %u (%s), %u segments, k %u", sc->series_id, sc->grid.ny,
                 sc->grid.nx, roid_scan_source_name(sc->grid.source), sc->ap.roi.n_segments, sc->ap.roi.k);
        publish_series(pl, false, false);
}

/* The share of the analysis thread a map or a refit may take: `normal`, or
 * BEHIND_BUDGET while the frames queue up. */
static double budget(roid_pipeline *pl, double normal) {
        const bool behind = roid_queue_depth(&pl->work) * 4 >= pl->work.capacity * 3 ||
                            roid_queue_depth(&pl->an) * 4 >= pl->an.capacity * 3;
        return behind ? BEHIND_BUDGET : normal;
}

/* Every frame_every-th frame with features, placed on the grid or not. */
static void maybe_publish_frame(roid_pipeline *pl, const roid_frame_record *rec, int label) {
        unsigned every = pl->frame_every;
        if (pl->pub && every && pl->frame_seq++ % every == 0) {
                roid_frame_view fv = {.series = series_ref(pl->ss.sc), .rec = rec, .label = label};
                roid_publish_frame(pl->pub, &fv);
        }
}

static void an_record(roid_pipeline *pl, an_item *it) {
        series_state *ss = &pl->ss;
        if (!ss->sc || it->sc != ss->sc)
                return;
        ss->t_seen = it->rec.t_arrival;
        if (it->kind == AN_FAILED) {
                ss->failed++;
                return;
        }
        roid_frame_record *rec = &it->rec;
        if (rec->row == ROID_NOT_PLACED) {
                ss->unplaced++;
                roid_count(pl->ctr, ROID_C_frames_unplaced, 1);
                maybe_publish_frame(pl, rec, -1);
        } else if (ss->roi) {
                int label = roid_roi_add(ss->roi, rec->row, rec->col, &rec->f);
                const double now = now_mono();
                if (roid_roi_refit_due(ss->roi) && now >= ss->refit_ok_at) {
                        const double c0 = cpu_now();
                        roid_roi_refit(ss->roi);
                        ss->refit_ok_at = now + (cpu_now() - c0) / budget(pl, REFIT_BUDGET);
                }
                ss->frames++;
                roid_count(pl->ctr, ROID_C_frames_analysed, 1);
                if (!ss->t_first) {
                        ss->t_first = rec->t_arrival;
                        /* The worker that built the geometry estimated the centre
                         * before this record was queued; the file, opened before,
                         * has NaN until told. */
                        series_ctx *sc = ss->sc;
                        if (ss->writing && atomic_load_explicit(&sc->geom_state, memory_order_acquire) > 0 &&
                            sc->center_source && strcmp(sc->center_source, "estimated") == 0)
                                roid_writer_set_center(pl->writer, sc->geom.center_x, sc->geom.center_y);
                }
                ss->t_last = now;
                roid_latency_arrival(&pl->lat, rec->t_arrival);
                maybe_publish_frame(pl, rec, label);
        } else {
                ss->not_analysed++;
                roid_count(pl->ctr, ROID_C_frames_not_analysed, 1);
        }
        if (ss->writing)
                roid_writer_append(pl->writer, rec);
}

static void an_end(roid_pipeline *pl, series_ctx *sc, bool terminated) {
        series_state *ss = &pl->ss;
        if (pl->fault_stall_end)
                fault_stall(pl);
        if (ss->sc != sc) {
                series_ctx_free(sc);
                return;
        }
        if (ss->roi) {
                /* The online labels of the frames since the last map go out now,
                 * not after the end's refinement (5 ms at 55 x 55, seconds on
                 * large scans).  Without a snapshot: the final map takes one. */
                if (ss->frames != ss->frames_at_map) {
                        pl->next_snapshot = INFINITY;
                        publish_map(pl, false);
                }
                roid_roi_finish(ss->roi); /* beats the watchdog's heart as it goes */
                an_heartbeat(pl);
                publish_map(pl, true); /* the final feedback, the snapshot, the file's copy */
                an_heartbeat(pl);
        }
        if (ss->writing) {
                roid_writer_close(pl->writer, pl->ctr, terminated);
        }
        size_t in = 0, np = (size_t)sc->grid.ny * sc->grid.nx;
        const uint8_t *m = ss->roi ? roid_roi_mask(ss->roi) : NULL;
        for (size_t i = 0; m && i < np; i++)
                in += m[i];
        /* The rate of the acquisition: first arrival to last analysis, not
         * counting the end's refinement. */
        double dt = ss->t_first ? ss->t_last - ss->t_first : 0;
        double p50, p99, pmax;
        roid_latency_series(&pl->lat, &p50, &p99, &pmax);
        char lat[96] = "";
        if (!isnan(p50))
                snprintf(lat, sizeof lat, "; latency to a published map p50 %.2f, p99 %.2f, max %.2f ms", p50, p99,
                         pmax);
        roid_log(ROID_LOG_NOTICE,
                 "series %" PRIu64 "%s%s %s: %" PRIu64 " frames analysed, %" PRIu64 " frames decoded, %" PRIu64
                 " failed, %" PRIu64 " lost before decoding, %.1f frames/s; RoI %zu of %zu points; %" PRIu64
                 " off the grid; %" PRIu64 " without counts, left out of the maps%s%s%s",
                 sc->series_id, sc->unique_id[0] ? " " : "", sc->unique_id, terminated ? "ended" : "closed without end",
                 ss->frames, atomic_load(&sc->decoded), ss->failed, atomic_load(&sc->lost),
                 dt > 0 ? (double)ss->frames / dt : 0.0, in, np, ss->unplaced,
                 ss->roi ? roid_roi_dark_frames(ss->roi) : 0, lat, ss->roi ? "" : "; not analysed, ",
                 ss->roi ? "" : ss->error);
        if (ss->roi)
                roid_analysis_log_left_out(ss->roi, sc->series_id);
        publish_series(pl, true, terminated);
        an_series_free(pl);
}

static void *analysis_main(void *arg) {
        roid_pipeline *pl = arg;
        for (;;) {
                double now = now_mono();
                pthread_mutex_lock(&pl->cfg_lock);
                double map_iv = pl->cfg_an.map_interval, st_iv = pl->cfg_an.status_interval;
                pl->frame_every = pl->cfg_an.frame_every;
                pthread_mutex_unlock(&pl->cfg_lock);
                if (now >= pl->next_status) {
                        publish_status(pl, now);
                        pl->next_status = now + st_iv;
                }
                if (now >= pl->next_map) {
                        double iv = map_iv;
                        if (pl->ss.roi && pl->ss.frames != pl->ss.frames_at_map) {
                                /* Not the snapshots: the first one of a series allocates the
                                 * copy of its maps (11 ms at 173 x 173), which stretched the
                                 * next interval to 115 ms at 20,000 frames/s. */
                                const double c0 = cpu_now(), snap = publish_map(pl, false);
                                const double cost = cpu_now() - c0 - snap, share = budget(pl, MAP_BUDGET);
                                if (cost / share > iv)
                                        iv = cost / share;
                                pl->map_iv_eff = iv;
                        }
                        pl->next_map = now + iv;
                }
                double next = pl->next_map < pl->next_status ? pl->next_map : pl->next_status;
                int r = roid_queue_pop_many(&pl->an, pl->an_batch, AN_BATCH, next > now ? next - now : 0);
                if (r == -ETIMEDOUT)
                        continue;
                if (r < 0)
                        break;
                /* Pending for the watchdog until done: an end that blocks (a writer stuck on
                 * its disk) must not look idle once the queues are empty. */
                atomic_store_explicit(&pl->an_taken, (uint64_t)r, memory_order_relaxed);
                for (int i = 0; i < r; i++) {
                        an_item *it = &pl->an_batch[i];
                        switch (it->kind) {
                        case AN_START:
                                an_start(pl, it->sc);
                                break;
                        case AN_RECORD:
                        case AN_FAILED:
                                an_record(pl, it);
                                break;
                        case AN_END:
                                an_end(pl, it->sc, it->terminated);
                                break;
                        case AN_RESET:
                                if (pl->ss.sc) {
                                        roid_log(ROID_LOG_NOTICE, "series %" PRIu64 ": RoI state reset",
                                                 pl->ss.sc->series_id);
                                        an_series_state(pl, pl->ss.sc);
                                        if (pl->ss.writing) /* its maps' image_ids: the frames since */
                                                roid_writer_reset(pl->writer);
                                        /* the end message and log then speak of the frames since */
                                        pl->ss.frames = pl->ss.frames_at_map = 0;
                                        pl->ss.unplaced = pl->ss.failed = pl->ss.not_analysed = 0;
                                        pl->ss.t_first = 0;
                                        roid_latency_reset(&pl->lat, ROID_LATENCY_WAITING | ROID_LATENCY_SERIES);
                                }
                                break;
                        }
                }
                atomic_fetch_add_explicit(&pl->progress, (uint64_t)r, memory_order_relaxed);
                atomic_store_explicit(&pl->an_taken, 0, memory_order_relaxed);
        }
        if (pl->ss.sc) /* only if the loop could not queue the end: close what there is */
                an_end(pl, pl->ss.sc, false);
        publish_status(pl, now_mono());
        return NULL;
}

/* ------------------------------------------------------------ loop side */

static void drop_frame(roid_pipeline *pl, job *j) {
        zmq_msg_close(&j->msg);
        atomic_fetch_add_explicit(&j->sc->lost, 1, memory_order_relaxed);
        roid_count(pl->ctr, ROID_C_frames_dropped, 1);
        uint64_t n = roid_counter_get(pl->ctr, ROID_C_frames_dropped);
        if ((n & (n - 1)) == 0) /* 1, 2, 4, ...: a flood does not flood the log */
                roid_log(ROID_LOG_WARNING,
                         "work queue full (%zu frames): image %" PRIu64 " dropped, %" PRIu64 " so far [frames_dropped]",
                         pl->work.capacity, j->image_id, n);
}

static void push_pending(roid_pipeline *pl) {
        int r = pl->n_pending ? roid_queue_push_many(&pl->work, pl->pending, pl->n_pending, false) : 0;
        unsigned i = r > 0 ? (unsigned)r : 0;
        memmove(pl->pending, pl->pending + i, (pl->n_pending - i) * sizeof(job));
        pl->n_pending -= i;
}

/* Pushes the pending jobs in order, without waiting; true when none is left.
 * Queue-full policy `drop`: the frames that do not fit are dropped, series
 * start, end and reset stay pending. */
static bool flush_pending(roid_pipeline *pl) {
        push_pending(pl);
        if (pl->n_pending && pl->cfg.queue_full == ROID_QUEUE_DROP) {
                unsigned k = 0;
                for (unsigned i = 0; i < pl->n_pending; i++) {
                        if (pl->pending[i].kind == JOB_FRAME)
                                drop_frame(pl, &pl->pending[i]);
                        else
                                pl->pending[k++] = pl->pending[i];
                }
                pl->n_pending = k;
        }
        if (pl->n_pending) {
                /* Say so before looking again: a worker that frees a slot from
                 * now on wakes the loop, one that freed it before is seen here. */
                atomic_store(&pl->blocked, true);
                push_pending(pl);
        }
        atomic_store(&pl->blocked, pl->n_pending > 0);
        return pl->n_pending == 0;
}

static void submit(roid_pipeline *pl, job *j) {
        const bool full = atomic_load(&pl->blocked);
        if (j->kind == JOB_RESET && full) /* resets while blocked collapse into one */
                for (unsigned i = 0; i < pl->n_pending; i++)
                        if (pl->pending[i].kind == JOB_RESET)
                                return;
        if (pl->n_pending == MAX_PENDING) { /* cannot happen (see MAX_PENDING); never wait on the loop */
                roid_log(ROID_LOG_ERR, "internal: more than %d jobs wait for the work queue", MAX_PENDING);
                if (j->kind == JOB_FRAME)
                        zmq_msg_close(&j->msg);
                return;
        }
        pl->pending[pl->n_pending++] = *j;
        /* Series start, end and reset go at once; frames in batches. */
        if (j->kind != JOB_FRAME || pl->n_pending >= SUBMIT_BATCH || full)
                flush_pending(pl);
}

bool roid_pipeline_blocked(roid_pipeline *pl) {
        return atomic_load(&pl->blocked);
}

bool roid_pipeline_flush(roid_pipeline *pl) {
        return flush_pending(pl);
}

/* When the start gives the frames' shape and type, names the analysed
 * channel (and so its pixel mask) and the beam centre is known (from the start
 * or the configuration), the start job builds the detector geometry: the
 * first frame, which would otherwise wait for it (1.5 ms at 1028 x 512, tens
 * of ms on a 16M), usually arrives after it is done.  Frames of the start's
 * shape are the only ones the tracker lets through. */
static void prebuild_possible(series_ctx *sc, const roid_series *s) {
        const int ci = sc->channel_start[0] ? roid_series_channel_index(s, sc->channel_start) : -1;
        if (ci < 0 || !sc->rows || !sc->cols || sc->dtype == ROID_DT_NONE ||
            !(sc->has_center || (isfinite(sc->ap.center_x) && isfinite(sc->ap.center_y))))
                return;
        if (s->pixel_mask[ci]) {
                const size_t n = (size_t)sc->rows * sc->cols;
                if (!(sc->mask = malloc(n * sizeof(uint32_t))))
                        return; /* the first frame tries again */
                memcpy(sc->mask, s->pixel_mask[ci], n * sizeof(uint32_t));
        }
        snprintf(sc->channel, sizeof sc->channel, "%s", sc->channel_start);
        sc->mask_taken = true;
        sc->prebuild = true;
}

static void sink_start(void *ctx, const roid_series *s) {
        roid_pipeline *pl = ctx;
        roid_err err = {""};
        series_ctx *sc = calloc(1, sizeof *sc);
        if (!sc) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": out of memory: not analysed", s->series_id);
                return;
        }
        pthread_mutex_init(&sc->geom_lock, NULL);
        sc->series_id = s->series_id;
        memcpy(sc->unique_id, s->series_unique_id, sizeof sc->unique_id);
        sc->number_of_images = s->start.has_number_of_images ? s->start.number_of_images : 0;
        sc->ap = pl->cfg.analysis;
        memcpy(sc->config_text, pl->config_text, sizeof sc->config_text); /* this thread writes it */
        sc->ap.roi.map_copies = 3;          /* the control snapshot, and the writer's two it swaps with its thread */
        sc->ap.roi.progress = an_heartbeat; /* a final refinement takes seconds on a large grid */
        sc->ap.roi.progress_ctx = pl;
        roid_feedback_params_default(&sc->fp);
        sc->fp.border = sc->ap.roi.border;
        sc->fp.rescan_factor = pl->cfg.rescan_factor;
        sc->fp.next_points = pl->cfg.next_points;
        sc->fp.stable_refits = pl->cfg.stable_refits;
        sc->has_center = s->start.has_beam_center;
        sc->cx = s->start.beam_center_x;
        sc->cy = s->start.beam_center_y;
        /* The selection the ingest decodes this series with (roid_series_channel_selected). */
        const char *named = roid_series_selected_channel(s, s->channel[0] ? s->channel : "#0");
        if (named)
                snprintf(sc->channel_start, sizeof sc->channel_start, "%s", named);
        memcpy(sc->source, pl->cfg.detector, sizeof sc->source);
        roid_results_detector_from_start(&sc->detector, s->format, s->implicit ? NULL : &s->start, sc->channel_start);
        sc->dtype = s->dtype;
        sc->rows = s->rows;
        sc->cols = s->cols;
        const roid_scan_grid *cfg = sc->ap.scan.source != ROID_SCAN_FROM_NONE ? &sc->ap.scan : NULL;
        int r = roid_scan_resolve(&s->user_data, cfg, s->start.has_number_of_images, s->start.number_of_images,
                                  sc->ap.max_depth, &sc->grid, &err);
        if (r < 0) {
                roid_log(ROID_LOG_WARNING, "series %" PRIu64 ": bad scan description in user_data: %s; ignoring it",
                         s->series_id, err.msg);
                r = roid_scan_resolve(NULL, cfg, s->start.has_number_of_images, s->start.number_of_images,
                                      sc->ap.max_depth, &sc->grid, &err);
        }
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no scan grid: %s; not analysed", s->series_id, err.msg);
                series_ctx_free(sc);
                return;
        }
        prebuild_possible(sc, s);
        pl->cur = sc;
        submit(pl, &(job){.kind = JOB_START, .sc = sc});
}

static void sink_end(void *ctx, const roid_series *s, bool terminated) {
        roid_pipeline *pl = ctx;
        (void)s;
        if (!pl->cur)
                return;
        remember(&pl->loop_last, pl->cur->series_id, pl->cur->unique_id);
        submit(pl, &(job){.kind = JOB_END, .sc = pl->cur, .terminated = terminated});
        pl->cur = NULL;
}

static void sink_frame(void *ctx, const roid_frame_event *ev) {
        roid_pipeline *pl = ctx;
        series_ctx *sc = pl->cur;
        roid_err err = {""};
        if (!sc) { /* its start was refused (logged with the reason): no scan grid, no memory */
                roid_count(pl->ctr, ROID_C_frames_not_analysed, 1);
                ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                 "series %" PRIu64 " image %" PRIu64 ": not analysed, the series has no analysis "
                                 "context (see its start) [frames_not_analysed]",
                                 ev->series->series_id, ev->image_id);
                return;
        }
        if (!sc->mask_taken) { /* the analysed channel is known with its first frame */
                sc->mask_taken = true;
                snprintf(sc->channel, sizeof sc->channel, "%s", ev->channel_name);
                size_t n = (size_t)ev->rows * ev->cols;
                if (ev->pixel_mask && (sc->mask = malloc(n * sizeof(uint32_t))))
                        memcpy(sc->mask, ev->pixel_mask, n * sizeof(uint32_t));
                else if (ev->pixel_mask)
                        roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no memory for the pixel mask: not applied",
                                 sc->series_id);
        } else if (strcmp(sc->channel, ev->channel_name) != 0) {
                /* One channel is analysed; the ingest decodes only that one, so this
                 * means a mismatch of the two (a bug), not a choice. */
                roid_count(pl->ctr, ROID_C_frames_not_analysed, 1);
                atomic_fetch_add_explicit(&sc->lost, 1, memory_order_relaxed);
                ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                 "series %" PRIu64 " image %" PRIu64 ": channel %s is not the analysed %s "
                                 "[frames_not_analysed]",
                                 sc->series_id, ev->image_id, ev->channel_name, sc->channel);
                return;
        }
        job j = {.kind = JOB_FRAME, .sc = sc, .image_id = ev->image_id, .blob = *ev->blob, .t_arrival = now_mono()};
        j.pos_x = j.pos_y = NAN;
        const char *why = NULL;
        const int pr = roid_scan_position_from_user_data(ev->user_data, sc->ap.max_depth, &j.pos_x, &j.pos_y, &err);
        if (pr == -ENODATA)
                j.position_unknown = true;
        else if (pr < 0)
                why = err.msg;
        const uint8_t *data = pl->src && !why ? roid_zsource_take(pl->src, ev->blob->data, &j.msg) : NULL;
        if (!data) {
                roid_count(pl->ctr, ROID_C_frames_failed, 1);
                atomic_fetch_add_explicit(&sc->lost, 1, memory_order_relaxed);
                ROID_LOG_LIMITED(ROID_LOG_ERR, "series %" PRIu64 " image %" PRIu64 ": %s [frames_failed]",
                                 sc->series_id, ev->image_id, why ? why : "frame bytes not in a received part");
                return;
        }
        j.blob_off = (size_t)(data - (const uint8_t *)zmq_msg_data(&j.msg));
        j.blob.data = NULL;
        submit(pl, &j);
}

/* A frame of the series the ingest refused (its shape, no such channel, over
 * max_frame_bytes), counted and logged there: the series' end message counts
 * it among its dropped frames, so that clients do not take it for one that
 * never arrived. */
static void sink_frame_error(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg) {
        roid_pipeline *pl = ctx;
        (void)s, (void)image_id, (void)channel, (void)msg;
        if (pl->cur)
                atomic_fetch_add_explicit(&pl->cur->lost, 1, memory_order_relaxed);
}

void roid_pipeline_sink(roid_pipeline *pl, roid_sink *ret) {
        memset(ret, 0, sizeof *ret);
        ret->ctx = pl;
        ret->series_start = sink_start;
        ret->frame = sink_frame;
        ret->frame_error = sink_frame_error;
        ret->series_end = sink_end;
}

void roid_pipeline_set_source(roid_pipeline *pl, roid_zsource *z) {
        pl->src = z;
}

void roid_pipeline_set_wakeup(roid_pipeline *pl, void (*wake)(void *ctx), void *ctx) {
        pl->wake = wake;
        pl->wake_ctx = ctx;
}

void roid_pipeline_set_config(roid_pipeline *pl, const roid_config *cfg, const char *config_text) {
        pl->cfg = *cfg;
        if (config_text)
                snprintf(pl->config_text, sizeof pl->config_text, "%s", config_text);
        pthread_mutex_lock(&pl->cfg_lock);
        pl->cfg_an = *cfg;
        pthread_mutex_unlock(&pl->cfg_lock);
}

void roid_pipeline_reset(roid_pipeline *pl) {
        roid_counters_reset(pl->ctr);
        /* After the counters: a status that sees the new epoch sees them reset. */
        atomic_fetch_add_explicit(&pl->reset_epoch, 1, memory_order_release);
        if (pl->cur) /* this thread counts its losses: from now on, like the counters */
                atomic_store_explicit(&pl->cur->lost, 0, memory_order_relaxed);
        submit(pl, &(job){.kind = JOB_RESET});
}

uint64_t roid_pipeline_progress(roid_pipeline *pl) {
        return atomic_load_explicit(&pl->progress, memory_order_relaxed);
}

uint64_t roid_pipeline_pending(roid_pipeline *pl) {
        return pl->n_pending + roid_queue_depth(&pl->work) + roid_queue_in_flight(&pl->work) +
               roid_queue_depth(&pl->an) + atomic_load_explicit(&pl->an_taken, memory_order_relaxed);
}

/* ------------------------------------------------------------ control */

int roid_pipeline_pack_map(roid_pipeline *pl, msgpack_packer *pk) {
        pthread_mutex_lock(&pl->snap_lock);
        int r = -ENODATA;
        if (pl->snap_roi) {
                roid_map_view mv = {
                        .series = {.known = true, .series_id = pl->snap_series_id, .unique_id = pl->snap_unique_id},
                        .roi = pl->snap_roi,
                        .grid = &pl->snap_grid,
                        .final = pl->snap_final,
                };
                r = roid_pack_map(pk, &mv);
        }
        pthread_mutex_unlock(&pl->snap_lock);
        return r;
}

int roid_pipeline_pack_series(roid_pipeline *pl, msgpack_packer *pk) {
        pthread_mutex_lock(&pl->snap_lock);
        const int r = pl->snap_series_known ? roid_pack_series(pk, &pl->snap_series) : -ENODATA;
        pthread_mutex_unlock(&pl->snap_lock);
        return r;
}

/* The series the loop thread has open (it runs the control handlers). */
static roid_series_ref open_series(roid_pipeline *pl, char uid[ROID_NAME_MAX]) {
        if (!pl->cur)
                return (roid_series_ref){0};
        memcpy(uid, pl->cur->unique_id, ROID_NAME_MAX);
        return (roid_series_ref){.known = true, .series_id = pl->cur->series_id, .unique_id = uid};
}

int roid_pipeline_pack_ask(roid_pipeline *pl, unsigned n, msgpack_packer *pk) {
        char uid[ROID_NAME_MAX] = "";
        roid_series_ref open = open_series(pl, uid);
        pthread_mutex_lock(&pl->snap_lock);
        /* The latest feedback, unless a newer series has none yet: then no
         * suggestion (updates 0, no points), as proto/live.md says. */
        bool latest =
                pl->snap_roi &&
                (!open.known || (open.series_id == pl->snap_series_id && !strcmp(open.unique_id, pl->snap_unique_id)));
        int r;
        if (latest) {
                roid_series_ref ref = {.known = true, .series_id = pl->snap_series_id, .unique_id = pl->snap_unique_id};
                r = roid_pack_suggest(pk, &ref, &pl->snap_fb, n);
        } else {
                r = roid_pack_suggest(pk, &open, NULL, n);
        }
        pthread_mutex_unlock(&pl->snap_lock);
        return r;
}

void roid_pipeline_set_control_counts(roid_pipeline *pl, uint64_t requests, uint64_t errors, uint64_t unsent) {
        atomic_store_explicit(&pl->ctl_requests, requests, memory_order_relaxed);
        atomic_store_explicit(&pl->ctl_errors, errors, memory_order_relaxed);
        atomic_store_explicit(&pl->ctl_unsent, unsent, memory_order_relaxed);
}

int roid_pipeline_pack_status(roid_pipeline *pl, msgpack_packer *pk) {
        char uid[ROID_NAME_MAX] = "";
        roid_series_ref ref = open_series(pl, uid);
        pthread_mutex_lock(&pl->snap_lock);
        double fps = pl->snap_fps, p50 = pl->snap_p50, p99 = pl->snap_p99, map_iv = pl->snap_map_iv;
        const double now = now_mono();
        /* only the series the loop has open: just after a start the analysis
         * thread may still show the last one's */
        const double t_seen =
                ref.known && ref.series_id == pl->snap_seen_id && !strcmp(ref.unique_id, pl->snap_seen_uid)
                        ? pl->snap_t_seen
                        : 0;
        pthread_mutex_unlock(&pl->snap_lock);
        roid_status_view v;
        status_view(pl, &v, now, fps, NAN, p50, p99, map_iv, ref, &pl->loop_last);
        v.frame_age_s = t_seen ? now - t_seen : NAN;
        v.pub = NULL; /* the publisher belongs to the analysis thread */
        return roid_pack_status(pk, &v);
}

void roid_pipeline_status_line(roid_pipeline *pl, char *buf, size_t size) {
        const roid_counters *c = pl->ctr;
        snprintf(buf, size,
                 "%s; %" PRIu64 " messages, %" PRIu64 " frames analysed, %" PRIu64 " failed, %" PRIu64
                 " dropped, %" PRIu64 " series; queue %zu/%zu",
                 pl->cur ? "acquiring" : "idle", roid_counter_get(c, ROID_C_messages_received),
                 roid_counter_get(c, ROID_C_frames_analysed), roid_counter_get(c, ROID_C_frames_failed),
                 roid_counter_get(c, ROID_C_frames_dropped), roid_counter_get(c, ROID_C_series_started),
                 roid_queue_depth(&pl->work), pl->work.capacity);
}

/* ------------------------------------------------------------ lifecycle */

static void pipeline_free(roid_pipeline *pl, bool free_pub);

int roid_pipeline_new(const roid_config *cfg, roid_counters *ctr, roid_publisher *pub, roid_pipeline **ret,
                      roid_err *err) {
        roid_pipeline *pl = calloc(1, sizeof *pl);
        if (!pl)
                return roid_err_set(err, -ENOMEM, "no memory for the pipeline");
        pl->ctr = ctr;
        pl->cfg = *cfg;
        pl->cfg_an = *cfg;
        roid_latency_reset(&pl->lat, ROID_LATENCY_ALL);
        pl->pub = pub;
        pthread_mutex_init(&pl->cfg_lock, NULL);
        pthread_mutex_init(&pl->snap_lock, NULL);
        pthread_mutex_init(&pl->stall_lock, NULL);
        pthread_cond_init(&pl->stall_cond, NULL);
        const char *fault = getenv("ROID_FAULT");
        pl->fault_stall = fault && strcmp(fault, "stall-workers") == 0;
        pl->fault_slow = fault && strcmp(fault, "slow-workers") == 0;
        pl->fault_preempt = fault && strcmp(fault, "preempt-analysis") == 0;
        pl->fault_stall_end = fault && strcmp(fault, "stall-end") == 0;
        if (pl->fault_stall_end)
                roid_log(ROID_LOG_WARNING,
                         "fault injection: the analysis thread stalls in each series end (ROID_FAULT)");
        if (pl->fault_stall)
                roid_log(ROID_LOG_WARNING, "fault injection: workers stall after their first frame (ROID_FAULT)");
        if (pl->fault_slow)
                roid_log(ROID_LOG_WARNING, "fault injection: workers take 5 ms more per frame (ROID_FAULT)");
        if (pl->fault_preempt)
                roid_log(ROID_LOG_WARNING,
                         "fault injection: the analysis thread sleeps 15 ms in every map it publishes (ROID_FAULT)");
        pl->t_start = pl->last_status_t = now_mono();
        pl->map_iv_eff = pl->snap_map_iv = NAN;
        /* The most any series may ask for: next_points changes with set and SIGHUP (128 KB). */
        pl->cap_snap_next = ROID_FB_MAX_NEXT;
        int r;
        pl->snap_next = calloc(pl->cap_snap_next, sizeof *pl->snap_next);
        if (!pl->snap_next) {
                r = roid_err_set(err, -ENOMEM, "no memory for the control snapshot");
                goto fail;
        }
        unsigned depth = cfg->queue_depth ? cfg->queue_depth : 256;
        if ((r = roid_queue_init(&pl->work, sizeof(job), depth, job_is_barrier)) < 0 ||
            (r = roid_queue_init(&pl->an, sizeof(an_item), depth, NULL)) < 0) {
                roid_err_set(err, r, "queues of %u items: %s", depth, strerror(-r));
                goto fail;
        }
        r = roid_writer_new(depth, cfg->flush_interval, ctr, &pl->writer);
        if (r < 0) {
                roid_err_set(err, r, "results writer: %s", strerror(-r));
                goto fail;
        }
        if (pthread_create(&pl->an_thread, NULL, analysis_main, pl) != 0) {
                r = roid_err_set(err, -EAGAIN, "cannot start the analysis thread");
                goto fail;
        }
        pthread_setname_np(pl->an_thread, "roid-analysis"); /* for top -H, perf and gdb */
        pl->an_started = true;
        pl->n_workers = cfg->workers ? cfg->workers : 1;
        pl->workers = calloc(pl->n_workers, sizeof *pl->workers);
        if (!pl->workers) {
                r = roid_err_set(err, -ENOMEM, "no memory for %u workers", pl->n_workers);
                goto fail;
        }
        for (unsigned i = 0; i < pl->n_workers; i++) {
                pl->workers[i].pl = pl;
                if (pthread_create(&pl->workers[i].thread, NULL, worker_main, &pl->workers[i]) != 0) {
                        pl->n_workers = i;
                        r = roid_err_set(err, -EAGAIN, "cannot start feature worker %u", i);
                        goto fail;
                }
                char name[16];
                snprintf(name, sizeof name, "roid-worker%u", i % 100);
                pthread_setname_np(pl->workers[i].thread, name);
        }
        *ret = pl;
        return 0;
fail:
        pipeline_free(pl, false); /* the caller keeps pub on failure */
        return r;
}

/* The analysis thread may be publishing: pub is let go only after it is joined. */
static void pipeline_free(roid_pipeline *pl, bool free_pub) {
        /* Release stalled workers (fault injection) first, then queue the jobs
         * still waiting for space, waiting now: a stop flushes what was received. */
        atomic_store(&pl->stopping, true);
        pthread_mutex_lock(&pl->stall_lock);
        pthread_cond_broadcast(&pl->stall_cond);
        pthread_mutex_unlock(&pl->stall_lock);
        for (unsigned i = 0; i < pl->n_pending && pl->work.ring; i++)
                roid_queue_push(&pl->work, &pl->pending[i], true);
        pl->n_pending = 0;
        if (pl->work.ring)
                roid_queue_close(&pl->work);
        for (unsigned i = 0; i < pl->n_workers; i++) {
                pthread_join(pl->workers[i].thread, NULL);
                for (unsigned k = 0; k < ROID_FEATURES_MANY; k++)
                        free(pl->workers[i].buf[k]);
        }
        /* Frames a stalled worker never took: release their parts. */
        job j;
        while (pl->work.ring && roid_queue_pop(&pl->work, &j, 0) == 0)
                if (j.kind == JOB_FRAME)
                        zmq_msg_close(&j.msg);
                else if (j.kind == JOB_END)
                        an_push(pl, &(an_item){.kind = AN_END, .sc = j.sc, .terminated = j.terminated});
        if (pl->an.ring)
                roid_queue_close(&pl->an);
        if (pl->an_started)
                pthread_join(pl->an_thread, NULL);
        if (pl->writer) {
                roid_writer_wait_idle(pl->writer);
                roid_writer_free(pl->writer);
        }
        roid_queue_destroy(&pl->work);
        roid_queue_destroy(&pl->an);
        if (free_pub)
                roid_publisher_free(pl->pub);
        roid_roi_free(pl->snap_roi);
        free(pl->snap_next);
        free(pl->workers);
        pthread_mutex_destroy(&pl->cfg_lock);
        pthread_mutex_destroy(&pl->snap_lock);
        pthread_mutex_destroy(&pl->stall_lock);
        pthread_cond_destroy(&pl->stall_cond);
        free(pl);
}

void roid_pipeline_free(roid_pipeline *pl) {
        if (pl)
                pipeline_free(pl, true);
}
