/* The bounded queue between the daemon's threads: order, bounds, blocking,
 * close, timeouts, and the barrier rule that keeps series start/end in order
 * around frames handled by several workers at once; the same for the batched
 * calls (*_many) the pipeline uses. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include "service/pipeline.h"
#include "service/queue.h"
#include "tap.h"

typedef struct {
        int kind; /* 0 frame, 1 barrier */
        int seq;
} item;

static bool is_barrier(const void *p) {
        return ((const item *)p)->kind == 1;
}

static void test_fifo_and_bounds(void) {
        roid_queue q;
        tap_ok(roid_queue_init(&q, sizeof(item), 0, NULL) == -EINVAL, "capacity 0 is refused");
        roid_queue_init(&q, sizeof(item), 4, NULL);
        int pushed = 0;
        for (int i = 0; i < 10; i++)
                if (roid_queue_push(&q, &(item){0, i}, false) == 0)
                        pushed++;
        tap_eq_u64(pushed, 4, "a queue of 4 takes 4 items without waiting");
        tap_ok(roid_queue_push(&q, &(item){0, 99}, false) == -EAGAIN, "a full queue says -EAGAIN");
        tap_eq_u64(roid_queue_depth(&q), 4, "depth");
        bool order = true;
        for (int i = 0; i < 4; i++) {
                item it;
                order &= roid_queue_pop(&q, &it, -1) == 0 && it.seq == i;
        }
        tap_ok(order, "items come out in the order they went in");
        item it;
        tap_ok(roid_queue_pop(&q, &it, 0.05) == -ETIMEDOUT, "a timed pop on an empty queue times out");
        roid_queue_push(&q, &(item){0, 7}, false);
        roid_queue_close(&q);
        tap_ok(roid_queue_push(&q, &(item){0, 8}, true) == -ECANCELED, "no push after close");
        tap_ok(roid_queue_pop(&q, &it, -1) == 0 && it.seq == 7, "what was queued before close still comes out");
        tap_ok(roid_queue_pop(&q, &it, -1) == -ECANCELED, "then the closed queue reports -ECANCELED");
        roid_queue_destroy(&q);
}

/* ---- a producer waiting on a full queue is released by a consumer ---- */

typedef struct {
        roid_queue *q;
        int n;
        atomic_int done;
} producer_arg;

static void *producer(void *p) {
        producer_arg *a = p;
        for (int i = 0; i < a->n; i++)
                roid_queue_push(a->q, &(item){0, i}, true);
        atomic_store(&a->done, 1);
        return NULL;
}

static void test_blocking_push(void) {
        roid_queue q;
        roid_queue_init(&q, sizeof(item), 2, NULL);
        producer_arg a = {.q = &q, .n = 1000};
        pthread_t t;
        pthread_create(&t, NULL, producer, &a);
        int expect = 0;
        bool order = true;
        size_t max_depth = 0;
        for (int i = 0; i < 1000; i++) {
                item it;
                size_t d = roid_queue_depth(&q);
                if (d > max_depth)
                        max_depth = d;
                order &= roid_queue_pop(&q, &it, -1) == 0 && it.seq == expect++;
        }
        pthread_join(t, NULL);
        tap_ok(order && atomic_load(&a.done), "1000 items through a queue of 2 with a waiting producer, in order");
        tap_ok(max_depth <= 2 && q.high_water <= 2, "the queue never held more than its capacity (%zu)", q.high_water);
        roid_queue_destroy(&q);
}

/* ---- barriers with several consumers ---- */

#define N_WORKERS 4
#define N_ITEMS   4000

typedef struct {
        roid_queue *q;
        pthread_mutex_t lock;
        int log[N_ITEMS + 64]; /* seq of each item in completion order; barriers negative */
        int n_log;
        atomic_int running_frames;
        atomic_int violations;
} pool;

static void handle(pool *pl, item it) {
        if (it.kind == 1) {
                /* Nothing else may run while a barrier is handled. */
                if (atomic_load(&pl->running_frames) != 0)
                        atomic_fetch_add(&pl->violations, 1);
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
                if (atomic_load(&pl->running_frames) != 0)
                        atomic_fetch_add(&pl->violations, 1);
        } else {
                atomic_fetch_add(&pl->running_frames, 1);
                if ((it.seq * 7919) % 13 == 0) { /* uneven work, so completions reorder */
                        struct timespec ts = {0, 50000};
                        nanosleep(&ts, NULL);
                }
                atomic_fetch_sub(&pl->running_frames, 1);
        }
        pthread_mutex_lock(&pl->lock);
        pl->log[pl->n_log++] = it.kind == 1 ? -it.seq - 1 : it.seq;
        pthread_mutex_unlock(&pl->lock);
}

static void *consumer(void *p) {
        pool *pl = p;
        item it;
        while (roid_queue_take(pl->q, &it) == 0) {
                handle(pl, it);
                roid_queue_done(pl->q);
        }
        return NULL;
}

/* As the pipeline's workers: a run of up to 5 items, finished together. */
static void *consumer_many(void *p) {
        pool *pl = p;
        item its[5];
        int n;
        while ((n = roid_queue_take_many(pl->q, its, 5)) > 0) {
                bool barrier = false;
                for (int i = 0; i < n; i++)
                        barrier |= its[i].kind == 1;
                if (barrier && n != 1)
                        atomic_fetch_add(&pl->violations, 1); /* a barrier comes alone */
                for (int i = 0; i < n; i++)
                        handle(pl, its[i]);
                roid_queue_done_many(pl->q, (size_t)n);
        }
        return NULL;
}

static void test_barriers(bool many) {
        roid_queue q;
        roid_queue_init(&q, sizeof(item), 16, is_barrier);
        pool *pl = calloc(1, sizeof *pl);
        pl->q = &q;
        pthread_mutex_init(&pl->lock, NULL);
        pthread_t t[N_WORKERS];
        for (int i = 0; i < N_WORKERS; i++)
                pthread_create(&t[i], NULL, many ? consumer_many : consumer, pl);
        /* Frames numbered 0..N-1; a barrier after every 100th, carrying the count before it.
         * Batched: pushed in runs of 7 (a run may hold a barrier). */
        int n_barriers = 0;
        item run[8];
        int n_run = 0;
        for (int i = 0; i < N_ITEMS; i++) {
                run[n_run++] = (item){0, i};
                if (i % 100 == 99) {
                        run[n_run++] = (item){1, i + 1};
                        n_barriers++;
                }
                if (!many || n_run >= 7 || i == N_ITEMS - 1) {
                        for (int k = 0; !many && k < n_run; k++)
                                roid_queue_push(&q, &run[k], true);
                        if (many && roid_queue_push_many(&q, run, (size_t)n_run, true) != n_run)
                                atomic_fetch_add(&pl->violations, 1);
                        n_run = 0;
                }
        }
        roid_queue_wait_idle(&q);
        tap_eq_u64(roid_queue_in_flight(&q), 0, "wait_idle returns with nothing in flight");
        roid_queue_close(&q);
        for (int i = 0; i < N_WORKERS; i++)
                pthread_join(t[i], NULL);
        tap_eq_u64(pl->n_log, N_ITEMS + n_barriers, "every item handled once");
        /* For each barrier b (count c): every frame < c completed before it, none >= c. */
        bool ok = true;
        int seen_frames = 0;
        for (int i = 0; i < pl->n_log; i++) {
                int v = pl->log[i];
                if (v >= 0) {
                        seen_frames++;
                } else {
                        int c = -v - 1;
                        if (seen_frames != c) {
                                tap_diag("barrier after %d frames completed after %d frames", c, seen_frames);
                                ok = false;
                        }
                }
        }
        tap_ok(ok, "%seach barrier completes after exactly the frames queued before it (%d barriers, %d workers)",
               many ? "batched: " : "", n_barriers, N_WORKERS);
        tap_eq_u64(atomic_load(&pl->violations), 0,
                   many ? "batched: no frame runs while a barrier is handled, a barrier is taken alone"
                        : "no frame runs while a barrier is handled");
        pthread_mutex_destroy(&pl->lock);
        free(pl);
        roid_queue_destroy(&q);
}

/* ---- batched calls: bounds, order, runs that stop at a barrier ---- */

static void test_many(void) {
        roid_queue q;
        item in[10], out[10];
        for (int i = 0; i < 10; i++)
                in[i] = (item){0, i};
        roid_queue_init(&q, sizeof(item), 4, is_barrier);
        tap_eq_i64(roid_queue_push_many(&q, in, 10, false), 4, "push_many without waiting pushes what fits (4 of 10)");
        tap_eq_i64(roid_queue_push_many(&q, in + 4, 6, false), -EAGAIN, "push_many on a full queue says -EAGAIN");
        tap_eq_i64(roid_queue_pop_many(&q, out, 3, -1), 3, "pop_many takes at most max");
        tap_eq_i64(roid_queue_pop_many(&q, out + 3, 10, -1), 1, "pop_many takes what is there");
        bool order = true;
        for (int i = 0; i < 4; i++)
                order &= out[i].seq == i;
        tap_ok(order, "pop_many keeps the order");
        tap_eq_i64(roid_queue_pop_many(&q, out, 10, 0.02), -ETIMEDOUT, "a timed pop_many on an empty queue times out");
        /* frame 0, frame 1, barrier 2, frame 3 */
        item mixed[4] = {{0, 0}, {0, 1}, {1, 2}, {0, 3}};
        tap_eq_i64(roid_queue_push_many(&q, mixed, 4, false), 4, "four items in");
        tap_eq_i64(roid_queue_take_many(&q, out, 10), 2, "take_many stops before a barrier");
        tap_ok(out[0].seq == 0 && out[1].seq == 1, "and hands out the run in order");
        tap_eq_u64(roid_queue_in_flight(&q), 2, "both in flight");
        roid_queue_done_many(&q, 2);
        tap_eq_i64(roid_queue_take_many(&q, out, 10), 1, "the barrier comes alone once the run is done");
        tap_ok(out[0].kind == 1 && out[0].seq == 2, "it is the barrier");
        roid_queue_done_many(&q, 1);
        tap_eq_i64(roid_queue_take_many(&q, out, 10), 1, "then the frame after it");
        roid_queue_done_many(&q, 1);
        roid_queue_close(&q);
        tap_eq_i64(roid_queue_push_many(&q, in, 2, true), -ECANCELED, "no push_many after close");
        tap_eq_i64(roid_queue_take_many(&q, out, 10), -ECANCELED, "take_many on a closed empty queue: -ECANCELED");
        roid_queue_destroy(&q);
}

int main(void) {
        test_fifo_and_bounds();
        test_blocking_push();
        test_many();
        test_barriers(false);
        test_barriers(true);
        return tap_done();
}
