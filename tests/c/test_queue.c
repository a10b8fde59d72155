/* The bounded queue between the daemon's threads: order, bounds, blocking,
 * close, timeouts, and the barrier rule that keeps series start/end in order
 * around frames handled by several workers at once. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

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

static void *consumer(void *p) {
        pool *pl = p;
        item it;
        while (roid_queue_take(pl->q, &it) == 0) {
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
                roid_queue_done(pl->q);
        }
        return NULL;
}

static void test_barriers(void) {
        roid_queue q;
        roid_queue_init(&q, sizeof(item), 16, is_barrier);
        pool *pl = calloc(1, sizeof *pl);
        pl->q = &q;
        pthread_mutex_init(&pl->lock, NULL);
        pthread_t t[N_WORKERS];
        for (int i = 0; i < N_WORKERS; i++)
                pthread_create(&t[i], NULL, consumer, pl);
        /* Frames numbered 0..N-1; a barrier after every 100th, carrying the count before it. */
        int n_barriers = 0;
        for (int i = 0; i < N_ITEMS; i++) {
                roid_queue_push(&q, &(item){0, i}, true);
                if (i % 100 == 99) {
                        roid_queue_push(&q, &(item){1, i + 1}, true);
                        n_barriers++;
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
        tap_ok(ok, "each barrier completes after exactly the frames queued before it (%d barriers, %d workers)",
               n_barriers, N_WORKERS);
        tap_eq_u64(atomic_load(&pl->violations), 0, "no frame runs while a barrier is handled");
        pthread_mutex_destroy(&pl->lock);
        free(pl);
        roid_queue_destroy(&q);
}

int main(void) {
        test_fifo_and_bounds();
        test_blocking_push();
        test_barriers();
        return tap_done();
}
