#include "outputs/writer.h"

#include <errno.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "service/log.h"

#define PATH_LEN 4096
/* Records taken off the queue and appended with one call. */
#define BATCH 256

typedef struct {
        char *dir, *path;
        char *unique_id, *source, *center_source, *fast_axis, *scan_source, *scan_units, *config_text;
        roid_roi_params roi;
        roid_results_detector detector;
        roid_results_meta meta; /* pointing into the copies above */
} open_req;

typedef enum { IT_OPEN, IT_APPEND, IT_RESET, IT_CLOSE } item_kind;

typedef struct {
        item_kind kind;
        union {
                roid_frame_record rec;
                open_req *open;
                struct {
                        roid_roi *map; /* final (or last online) snapshot, owned by the item; may be NULL */
                        bool final, have_ctr, terminated;
                        uint64_t ctr[ROID_C__MAX];
                } close;
        } u;
} item;

struct roid_writer {
        pthread_t thread;
        roid_counters *ctr;
        double interval;

        pthread_mutex_t mu; /* queue, idle requests, stats */
        pthread_cond_t not_empty, not_full, idle;
        item *q;
        size_t cap, head;
        _Atomic size_t count;
        bool stop;
        uint64_t req_seq, done_seq; /* wait_idle requests and the last one served */
        int first_err;
        roid_writer_stats stats;

        pthread_mutex_t map_mu; /* producer state, the snapshot slot, the pending files */
        /* The files of the opens queued and not yet tried by the thread (at
         * most the queue's capacity, and the one in hand): a name chosen for
         * a new series must be none of them nor exist. */
        const char **pending;
        size_t n_pending;
        bool p_open;
        uint64_t p_gen; /* series opened by the producer */
        roid_roi *snap;
        bool snap_pending, snap_final;
        uint64_t snap_gen;
        bool center_pending; /* roid_writer_set_center's, for the file of center_gen */
        double center[2];
        uint64_t center_gen;

        /* writer thread only */
        roid_results *res;
        uint64_t gen;
        bool failed, dirty;
        uint64_t unflushed; /* records appended since the last successful flush */
        struct timespec deadline;
        roid_roi *work;
        roid_frame_record *batch;
        size_t batch_cap;
        size_t due_at; /* records that make an append due: half the queue at most */
};

static void now_plus(struct timespec *ts, double s) {
        clock_gettime(CLOCK_MONOTONIC, ts);
        double t = (double)ts->tv_nsec * 1e-9 + s;
        time_t whole = (time_t)t;
        ts->tv_sec += whole;
        ts->tv_nsec = (long)((t - (double)whole) * 1e9);
        if (ts->tv_nsec >= 1000000000L) {
                ts->tv_sec++;
                ts->tv_nsec -= 1000000000L;
        }
}

static bool past(const struct timespec *ts) {
        struct timespec n;
        clock_gettime(CLOCK_MONOTONIC, &n);
        return n.tv_sec > ts->tv_sec || (n.tv_sec == ts->tv_sec && n.tv_nsec >= ts->tv_nsec);
}

static void open_req_free(open_req *o) {
        if (!o)
                return;
        free(o->dir);
        free(o->path);
        free(o->unique_id);
        free(o->source);
        free(o->center_source);
        free(o->fast_axis);
        free(o->scan_source);
        free(o->scan_units);
        free(o->config_text);
        free(o);
}

/* The thread tried to create path (or the open was never queued): from now
 * on the file system tells whether the name is taken. */
static void pending_done(roid_writer *w, const char *path) {
        pthread_mutex_lock(&w->map_mu);
        for (size_t i = 0; i < w->n_pending; i++)
                if (w->pending[i] == path) {
                        w->pending[i] = w->pending[--w->n_pending];
                        break;
                }
        pthread_mutex_unlock(&w->map_mu);
}

static void item_release(item *it) {
        if (it->kind == IT_OPEN)
                open_req_free(it->u.open);
        else if (it->kind == IT_CLOSE)
                roid_roi_free(it->u.close.map);
}

/* ------------------------------------------------------- writer thread */

/* After an error: logged and counted once; the rest of the series is
 * discarded.  The failed file is closed only at the series end: the close of
 * a failed file (results.c) needs the process's file-size limit, not the
 * disk, so that is also the least surprising moment. */
static void series_error(roid_writer *w, int r, const char *msg) {
        roid_log(ROID_LOG_ERR, "results: %s; the rest of this series is not written", msg);
        w->failed = true;
        w->dirty = false;
        /* The file keeps what the last successful flush wrote: the records
         * appended since are lost with the rest (a soak test found them
         * counted as written). */
        const uint64_t lost = w->unflushed;
        w->unflushed = 0;
        roid_count(w->ctr, ROID_C_results_frames_discarded, lost);
        pthread_mutex_lock(&w->mu);
        w->stats.frames_written -= lost;
        w->stats.frames_discarded += lost;
        w->stats.series_failed++;
        roid_count(w->ctr, ROID_C_results_failed, 1);
        if (!w->first_err)
                w->first_err = r < 0 ? r : -EIO;
        pthread_mutex_unlock(&w->mu);
}

static void discard(roid_writer *w, uint64_t n) {
        pthread_mutex_lock(&w->mu);
        w->stats.frames_discarded += n;
        pthread_mutex_unlock(&w->mu);
        roid_count(w->ctr, ROID_C_results_frames_discarded, n);
}

static bool writable(const roid_writer *w) {
        return w->res && !w->failed;
}

/* A beam centre estimated after the open, into the current file. */
static void apply_center(roid_writer *w) {
        roid_err err = {""};
        pthread_mutex_lock(&w->map_mu);
        bool have = w->center_pending && w->center_gen == w->gen;
        double c[2] = {w->center[0], w->center[1]};
        if (have)
                w->center_pending = false;
        pthread_mutex_unlock(&w->map_mu);
        if (!have || !writable(w))
                return;
        int r = roid_results_set_center(w->res, c[0], c[1], &err);
        if (r < 0)
                series_error(w, r, err.msg);
        w->dirty = true;
}

/* The newest online snapshot of the current series, then the flush. */
static void flush_now(roid_writer *w) {
        roid_err err = {""};
        apply_center(w);
        pthread_mutex_lock(&w->map_mu);
        bool have = w->snap_pending && !w->snap_final && w->snap_gen == w->gen;
        if (have) {
                roid_roi *t = w->work;
                w->work = w->snap;
                w->snap = t;
                w->snap_pending = false;
        }
        pthread_mutex_unlock(&w->map_mu);
        if (!writable(w))
                return;
        int r = 0;
        if (have) {
                r = roid_results_write_map(w->res, w->work, false, &err);
                w->dirty = true;
        }
        if (r >= 0 && w->dirty)
                r = roid_results_flush(w->res, &err);
        if (r < 0)
                series_error(w, r, err.msg);
        else if (w->dirty)
                w->unflushed = 0;
        w->dirty = false;
}

static void close_file(roid_writer *w, const roid_counters *ctr, bool terminated) {
        roid_err err = {""};
        if (!w->res)
                return;
        apply_center(w);
        /* Flushed first so that a failure is reported with its reason. */
        if (!w->failed) {
                int r = roid_results_flush(w->res, &err);
                if (r < 0)
                        series_error(w, r, err.msg);
        }
        w->unflushed = 0;
        bool was_failed = w->failed;
        int r = roid_results_close(w->res, ctr, terminated, &err);
        w->res = NULL;
        w->failed = false;
        w->dirty = false;
        /* The series' last snapshot: the next series' maps count against its
         * own max_analysis_bytes, not this one's too. */
        pthread_mutex_lock(&w->map_mu);
        roid_roi_free(w->work);
        w->work = NULL;
        pthread_mutex_unlock(&w->map_mu);
        if (was_failed)
                return;
        pthread_mutex_lock(&w->mu);
        if (r < 0) {
                w->stats.series_failed++;
                if (!w->first_err)
                        w->first_err = r;
        } else {
                w->stats.series_written++;
        }
        pthread_mutex_unlock(&w->mu);
        if (r < 0) { /* the counters and complete = 1 did not reach the file: it failed */
                roid_count(w->ctr, ROID_C_results_failed, 1);
                roid_log(ROID_LOG_ERR, "results: closing the file failed: %s", err.msg);
        }
}

static void do_open(roid_writer *w, open_req *o) {
        roid_err err = {""};
        char path[PATH_LEN];
        close_file(w, NULL, false); /* the previous series never closed */
        w->gen++;
        w->failed = false;
        int r = roid_results_open(o->dir, &o->meta, &w->res, path, sizeof path, &err);
        if (r < 0) {
                w->res = NULL;
                series_error(w, r, err.msg);
                return;
        }
        pthread_mutex_lock(&w->mu);
        w->stats.series_opened++;
        pthread_mutex_unlock(&w->mu);
        w->dirty = true;
        now_plus(&w->deadline, w->interval);
}

static void do_append(roid_writer *w, size_t n) {
        roid_err err = {""};
        if (!writable(w)) {
                discard(w, n);
                return;
        }
        int r = roid_results_append(w->res, w->batch, n, &err);
        if (r < 0) {
                discard(w, n);
                series_error(w, r, err.msg);
                return;
        }
        w->dirty = true;
        w->unflushed += n;
        pthread_mutex_lock(&w->mu);
        w->stats.frames_written += n;
        w->stats.appends++;
        pthread_mutex_unlock(&w->mu);
}

static void do_close(roid_writer *w, item *it) {
        roid_err err = {""};
        if (writable(w) && it->u.close.map) {
                int r = roid_results_write_map(w->res, it->u.close.map, it->u.close.final, &err);
                if (r < 0)
                        series_error(w, r, err.msg);
        }
        roid_counters c;
        for (int i = 0; i < ROID_C__MAX; i++)
                atomic_init(&c.v[i], it->u.close.ctr[i]);
        close_file(w, it->u.close.have_ctr ? &c : NULL, it->u.close.terminated);
}

/* Whether the records at the head of the queue go out now.  Each append
 * costs HDF5 a few allocations and a hyperslab write per dataset, so records
 * wait for a batch (w->due_at), unless something follows them (an open, a map, a
 * close), the flush is due (an SWMR reader sees nothing newer before it
 * anyway), wait_idle or stop asks, or there is no file to append to.  With a
 * detector paced slower than the writer, every frame used to be an append of
 * its own: about 17 allocations a frame (found by an audit). */
static bool append_due(const roid_writer *w) {
        if (w->q[w->head].kind != IT_APPEND || w->stop || w->done_seq != w->req_seq || !writable(w) ||
            past(&w->deadline))
                return true;
        size_t run = 0;
        while (run < w->count && run < w->due_at && w->q[(w->head + run) % w->cap].kind == IT_APPEND)
                run++;
        return run == w->due_at || run < w->count;
}

static void *thread_main(void *arg) {
        roid_writer *w = arg;
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        pthread_mutex_lock(&w->mu);
        for (;;) {
                if (w->count > 0 && !append_due(w)) {
                        pthread_cond_timedwait(&w->not_empty, &w->mu, &w->deadline);
                        continue;
                }
                if (w->count > 0) {
                        /* A run of records goes out in one append; other
                         * items one by one, in order. */
                        if (w->q[w->head].kind == IT_APPEND) {
                                size_t n = 0;
                                while (n < w->batch_cap && w->count > 0 && w->q[w->head].kind == IT_APPEND) {
                                        w->batch[n++] = w->q[w->head].u.rec;
                                        w->head = (w->head + 1) % w->cap;
                                        w->count--;
                                }
                                pthread_cond_broadcast(&w->not_full);
                                pthread_mutex_unlock(&w->mu);
                                do_append(w, n);
                        } else {
                                item one = w->q[w->head];
                                w->head = (w->head + 1) % w->cap;
                                w->count--;
                                pthread_cond_broadcast(&w->not_full);
                                pthread_mutex_unlock(&w->mu);
                                if (one.kind == IT_OPEN) {
                                        do_open(w, one.u.open);
                                        pending_done(w, one.u.open->path);
                                } else if (one.kind == IT_RESET) {
                                        if (w->res) /* also a failed file: its close may still write a map */
                                                roid_results_mark_reset(w->res);
                                } else {
                                        do_close(w, &one);
                                }
                                item_release(&one);
                        }
                        if (writable(w) && past(&w->deadline)) {
                                flush_now(w);
                                now_plus(&w->deadline, w->interval);
                        }
                        pthread_mutex_lock(&w->mu);
                        continue;
                }
                /* Queue empty: serve wait_idle, the flush timer, stop. */
                if (w->done_seq != w->req_seq) {
                        uint64_t seq = w->req_seq;
                        pthread_mutex_unlock(&w->mu);
                        flush_now(w);
                        pthread_mutex_lock(&w->mu);
                        w->done_seq = seq;
                        pthread_cond_broadcast(&w->idle);
                        continue;
                }
                if (w->stop)
                        break;
                if (writable(w)) {
                        if (past(&w->deadline)) {
                                pthread_mutex_unlock(&w->mu);
                                flush_now(w);
                                now_plus(&w->deadline, w->interval);
                                pthread_mutex_lock(&w->mu);
                                continue;
                        }
                        pthread_cond_timedwait(&w->not_empty, &w->mu, &w->deadline);
                } else {
                        pthread_cond_wait(&w->not_empty, &w->mu);
                }
        }
        pthread_mutex_unlock(&w->mu);
        close_file(w, NULL, false);
        return NULL;
}

/* ------------------------------------------------------------ producer */

static int push(roid_writer *w, const item *it, const roid_frame_record *rec) {
        pthread_mutex_lock(&w->mu);
        while (w->count == w->cap && !w->stop)
                pthread_cond_wait(&w->not_full, &w->mu);
        if (w->stop) {
                pthread_mutex_unlock(&w->mu);
                return -ESHUTDOWN;
        }
        item *slot = &w->q[(w->head + w->count) % w->cap];
        if (rec) {
                slot->kind = IT_APPEND;
                slot->u.rec = *rec;
        } else {
                *slot = *it;
        }
        w->count++;
        /* A record waits for its batch or the flush (append_due): the thread
         * is woken when one is due, and for the first record, so that a
         * thread without a file (no timed wait) discards it now. */
        if (!rec || w->count == 1 || w->count >= w->due_at)
                pthread_cond_signal(&w->not_empty);
        pthread_mutex_unlock(&w->mu);
        return 0;
}

static int dup_str(char **dst, const char *src, size_t max) {
        if (!src) {
                *dst = NULL;
                return 0;
        }
        size_t n = strnlen(src, max + 1);
        if (n > max)
                return -EMSGSIZE;
        *dst = strndup(src, n);
        return *dst ? 0 : -ENOMEM;
}

int roid_writer_open(roid_writer *w, const char *dir, const roid_results_meta *meta, char *ret_path, size_t path_size) {
        if (!meta->roi)
                return -EINVAL;
        char path[PATH_LEN];
        pthread_mutex_lock(&w->map_mu);
        int r = w->n_pending > w->cap
                        ? -ENOBUFS /* cannot be: each is a queued open */
                        : roid_results_unique_path(dir, meta, w->pending, w->n_pending, path, sizeof path);
        pthread_mutex_unlock(&w->map_mu);
        if (r < 0)
                return r;
        if (ret_path && strlen(path) >= path_size)
                return -ENAMETOOLONG;
        open_req *o = calloc(1, sizeof *o);
        if (!o)
                return -ENOMEM;
        r = dup_str(&o->dir, dir, PATH_LEN);
        if (r >= 0)
                r = (o->path = strdup(path)) ? 0 : -ENOMEM;
        if (r >= 0)
                r = dup_str(&o->unique_id, meta->series_unique_id, ROID_NAME_MAX);
        if (r >= 0)
                r = dup_str(&o->source, meta->source, PATH_LEN);
        if (r >= 0)
                r = dup_str(&o->center_source, meta->center_source, ROID_NAME_MAX);
        if (r >= 0)
                r = dup_str(&o->fast_axis, meta->fast_axis, ROID_NAME_MAX);
        if (r >= 0)
                r = dup_str(&o->scan_source, meta->scan_source, ROID_NAME_MAX);
        if (r >= 0)
                r = dup_str(&o->scan_units, meta->scan_units, ROID_NAME_MAX);
        if (r >= 0)
                r = dup_str(&o->config_text, meta->config_text, ROID_WRITER_MAX_CONFIG);
        if (r < 0) {
                open_req_free(o);
                return r;
        }
        o->roi = *meta->roi;
        o->meta = *meta;
        o->meta.series_unique_id = o->unique_id;
        o->meta.source = o->source;
        if (meta->detector) {
                o->detector = *meta->detector;
                o->meta.detector = &o->detector;
        }
        o->meta.center_source = o->center_source;
        o->meta.fast_axis = o->fast_axis;
        o->meta.scan_source = o->scan_source;
        o->meta.scan_units = o->scan_units;
        o->meta.config_text = o->config_text;
        o->meta.path = o->path;
        o->meta.roi = &o->roi;
        item it = {.kind = IT_OPEN, .u.open = o};
        /* The generation changes before the item is queued, so a snapshot
         * taken after this call can never be written into the previous file. */
        pthread_mutex_lock(&w->map_mu);
        w->p_open = true;
        w->p_gen++;
        w->snap_pending = false;
        w->pending[w->n_pending++] = o->path; /* before the thread can see the open */
        pthread_mutex_unlock(&w->map_mu);
        r = push(w, &it, NULL);
        if (r < 0) {
                pending_done(w, o->path);
                open_req_free(o);
                return r;
        }
        if (ret_path)
                memcpy(ret_path, path, strlen(path) + 1);
        return r;
}

/* An item of the open series (a record when rec): -EINVAL with none open. */
static int push_open(roid_writer *w, const item *it, const roid_frame_record *rec) {
        pthread_mutex_lock(&w->map_mu);
        bool open = w->p_open;
        pthread_mutex_unlock(&w->map_mu);
        if (!open)
                return -EINVAL;
        return push(w, it, rec);
}

int roid_writer_append(roid_writer *w, const roid_frame_record *rec) {
        return push_open(w, NULL, rec);
}

int roid_writer_map(roid_writer *w, const roid_roi *roi, bool final) {
        if (final && !roid_roi_mask(roi))
                return -EINVAL;
        int r = 0;
        pthread_mutex_lock(&w->map_mu);
        if (!w->p_open) {
                r = -EINVAL;
        } else if (!w->snap || roid_roi_copy_maps(w->snap, roi) < 0) {
                roid_roi_free(w->snap);
                w->snap = NULL;
                r = roid_roi_clone_maps(roi, &w->snap);
        }
        if (r >= 0) {
                w->snap_pending = true;
                w->snap_final = final;
                w->snap_gen = w->p_gen;
        }
        pthread_mutex_unlock(&w->map_mu);
        return r;
}

int roid_writer_set_center(roid_writer *w, double center_x, double center_y) {
        int r = 0;
        pthread_mutex_lock(&w->map_mu);
        if (!w->p_open) {
                r = -EINVAL;
        } else {
                w->center_pending = true;
                w->center[0] = center_x;
                w->center[1] = center_y;
                w->center_gen = w->p_gen;
        }
        pthread_mutex_unlock(&w->map_mu);
        return r;
}

int roid_writer_reset(roid_writer *w) {
        return push_open(w, &(item){.kind = IT_RESET}, NULL);
}

int roid_writer_close(roid_writer *w, const roid_counters *ctr, bool terminated) {
        item it = {.kind = IT_CLOSE};
        it.u.close.terminated = terminated;
        pthread_mutex_lock(&w->map_mu);
        if (!w->p_open) {
                pthread_mutex_unlock(&w->map_mu);
                return -EINVAL;
        }
        if (w->snap_pending && w->snap_gen == w->p_gen) {
                it.u.close.map = w->snap;
                it.u.close.final = w->snap_final;
                w->snap = NULL;
                w->snap_pending = false;
        }
        w->p_open = false;
        pthread_mutex_unlock(&w->map_mu);
        if (ctr) {
                it.u.close.have_ctr = true;
                for (int i = 0; i < ROID_C__MAX; i++)
                        it.u.close.ctr[i] = roid_counter_get(ctr, i);
        }
        int r = push(w, &it, NULL);
        if (r < 0)
                roid_roi_free(it.u.close.map);
        return r;
}

int roid_writer_wait_idle(roid_writer *w) {
        pthread_mutex_lock(&w->mu);
        uint64_t seq = ++w->req_seq;
        pthread_cond_signal(&w->not_empty);
        while (w->done_seq < seq)
                pthread_cond_wait(&w->idle, &w->mu);
        int r = w->first_err;
        w->first_err = 0;
        pthread_mutex_unlock(&w->mu);
        return r;
}

size_t roid_writer_queue_depth(const roid_writer *w) {
        return atomic_load_explicit(&w->count, memory_order_relaxed);
}

size_t roid_writer_queue_capacity(const roid_writer *w) {
        return w->cap;
}

void roid_writer_get_stats(roid_writer *w, roid_writer_stats *ret) {
        pthread_mutex_lock(&w->mu);
        *ret = w->stats;
        pthread_mutex_unlock(&w->mu);
}

/* ---------------------------------------------------------- lifecycle */

int roid_writer_new(unsigned queue_depth, double flush_interval_s, roid_counters *ctr, roid_writer **ret) {
        if (queue_depth < 1 || queue_depth > ROID_WRITER_MAX_QUEUE || !(flush_interval_s > 0) ||
            flush_interval_s > 3600)
                return -EINVAL;
        roid_writer *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->ctr = ctr;
        w->interval = flush_interval_s;
        w->cap = queue_depth;
        w->batch_cap = queue_depth < BATCH ? queue_depth : BATCH;
        /* the other half is room for the producer while a batch is written */
        w->due_at = queue_depth / 2 < w->batch_cap ? (queue_depth > 1 ? queue_depth / 2 : 1) : w->batch_cap;
        w->q = calloc(w->cap, sizeof *w->q);
        w->batch = calloc(w->batch_cap, sizeof *w->batch);
        w->pending = calloc(w->cap + 1, sizeof *w->pending);
        if (!w->q || !w->batch || !w->pending) {
                free(w->q);
                free(w->batch);
                free(w->pending);
                free(w);
                return -ENOMEM;
        }
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_mutex_init(&w->mu, NULL);
        pthread_mutex_init(&w->map_mu, NULL);
        pthread_cond_init(&w->not_empty, &ca);
        pthread_cond_init(&w->not_full, NULL);
        pthread_cond_init(&w->idle, NULL);
        pthread_condattr_destroy(&ca);
        int r = pthread_create(&w->thread, NULL, thread_main, w);
        if (r) {
                pthread_cond_destroy(&w->not_empty);
                pthread_cond_destroy(&w->not_full);
                pthread_cond_destroy(&w->idle);
                pthread_mutex_destroy(&w->mu);
                pthread_mutex_destroy(&w->map_mu);
                free(w->q);
                free(w->batch);
                free(w->pending);
                free(w);
                return -r;
        }
        pthread_setname_np(w->thread, "roid-writer");
        *ret = w;
        return 0;
}

void roid_writer_free(roid_writer *w) {
        if (!w)
                return;
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_broadcast(&w->not_empty);
        pthread_cond_broadcast(&w->not_full);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        roid_roi_free(w->snap);
        roid_roi_free(w->work);
        pthread_cond_destroy(&w->not_empty);
        pthread_cond_destroy(&w->not_full);
        pthread_cond_destroy(&w->idle);
        pthread_mutex_destroy(&w->mu);
        pthread_mutex_destroy(&w->map_mu);
        free(w->q);
        free(w->batch);
        free(w->pending);
        free(w);
}

int roid_writer_check_dir(const char *dir, roid_err *err) {
        struct stat st;
        if (stat(dir, &st) < 0) {
                int r = -errno;
                return roid_err_set(err, r, "[output] directory %s: %s", dir, strerror(-r));
        }
        if (!S_ISDIR(st.st_mode))
                return roid_err_set(err, -ENOTDIR, "[output] directory %s: not a directory", dir);
        if (access(dir, W_OK | X_OK) < 0) {
                int r = -errno;
                return roid_err_set(err, r, "[output] directory %s: results files cannot be created there: %s", dir,
                                    strerror(-r));
        }
        return 0;
}
