#include "service/queue.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int roid_queue_init(roid_queue *q, size_t item_size, size_t capacity, bool (*is_barrier)(const void *item)) {
        if (!item_size || !capacity)
                return -EINVAL;
        memset(q, 0, sizeof *q);
        q->ring = malloc(item_size * capacity);
        if (!q->ring)
                return -ENOMEM;
        q->item_size = item_size;
        q->capacity = capacity;
        q->is_barrier = is_barrier;
        pthread_mutex_init(&q->lock, NULL);
        /* Timed pops measure against the monotonic clock: wall-clock steps must not stall them. */
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&q->not_empty, &ca);
        pthread_condattr_destroy(&ca);
        pthread_cond_init(&q->not_full, NULL);
        pthread_cond_init(&q->idle, NULL);
        return 0;
}

void roid_queue_destroy(roid_queue *q) {
        if (!q->ring)
                return;
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->not_empty);
        pthread_cond_destroy(&q->not_full);
        pthread_cond_destroy(&q->idle);
        free(q->ring);
        q->ring = NULL;
}

static void *slot(roid_queue *q, size_t i) {
        return q->ring + ((q->head + i) % q->capacity) * q->item_size;
}

/* Waiters are woken only on the transitions that can let them go on: a
 * consumer waits only while the queue is empty or its head is held by a
 * barrier, a producer only while it is full. */
static void push_one(roid_queue *q, const void *item) {
        if (!q->count)
                pthread_cond_broadcast(&q->not_empty);
        memcpy(slot(q, q->count), item, q->item_size);
        q->count++;
        if (q->count > q->high_water)
                q->high_water = q->count;
}

int roid_queue_push_many(roid_queue *q, const void *items, size_t n, bool wait) {
        const unsigned char *it = items;
        size_t i = 0;
        int r = 0;
        pthread_mutex_lock(&q->lock);
        while (i < n) {
                while (!q->closed && q->count == q->capacity && wait)
                        pthread_cond_wait(&q->not_full, &q->lock);
                if (q->closed) {
                        r = -ECANCELED;
                        break;
                }
                if (q->count == q->capacity)
                        break;
                /* Broadcast: with barriers, the waiter that can proceed may not be the one a signal wakes. */
                while (i < n && q->count < q->capacity)
                        push_one(q, it + i++ * q->item_size);
        }
        pthread_mutex_unlock(&q->lock);
        if (r < 0)
                return r;
        return i || !n ? (int)i : -EAGAIN;
}

int roid_queue_push(roid_queue *q, const void *item, bool wait) {
        int r = roid_queue_push_many(q, item, 1, wait);
        return r < 0 ? r : 0;
}

static void pop_head(roid_queue *q, void *ret_item) {
        if (q->count == q->capacity)
                pthread_cond_broadcast(&q->not_full);
        memcpy(ret_item, slot(q, 0), q->item_size);
        q->head = (q->head + 1) % q->capacity;
        q->count--;
}

int roid_queue_pop_many(roid_queue *q, void *ret_items, size_t max, double timeout_s) {
        struct timespec deadline;
        if (!max)
                return -EINVAL;
        if (timeout_s >= 0) {
                clock_gettime(CLOCK_MONOTONIC, &deadline);
                double s = floor(timeout_s);
                deadline.tv_sec += (time_t)s;
                deadline.tv_nsec += (long)((timeout_s - s) * 1e9);
                if (deadline.tv_nsec >= 1000000000L) {
                        deadline.tv_sec++;
                        deadline.tv_nsec -= 1000000000L;
                }
        }
        int r = 0;
        pthread_mutex_lock(&q->lock);
        while (!q->count && !q->closed && r == 0) {
                if (timeout_s < 0)
                        pthread_cond_wait(&q->not_empty, &q->lock);
                else if (pthread_cond_timedwait(&q->not_empty, &q->lock, &deadline) == ETIMEDOUT)
                        r = -ETIMEDOUT;
        }
        if (q->count) {
                size_t n = 0;
                unsigned char *out = ret_items;
                while (n < max && q->count)
                        pop_head(q, out + n++ * q->item_size);
                r = (int)n;
        } else if (r == 0) {
                r = -ECANCELED;
        }
        pthread_mutex_unlock(&q->lock);
        return r;
}

int roid_queue_pop(roid_queue *q, void *ret_item, double timeout_s) {
        int r = roid_queue_pop_many(q, ret_item, 1, timeout_s);
        return r < 0 ? r : 0;
}

static bool head_blocked(roid_queue *q) {
        if (q->barrier_inflight)
                return true;
        return q->is_barrier && q->is_barrier(slot(q, 0)) && q->inflight > 0;
}

int roid_queue_take_many(roid_queue *q, void *ret_items, size_t max) {
        if (!max)
                return -EINVAL;
        pthread_mutex_lock(&q->lock);
        while ((!q->count && !q->closed) || (q->count && head_blocked(q)))
                pthread_cond_wait(&q->not_empty, &q->lock);
        int r = -ECANCELED;
        if (q->count) {
                unsigned char *out = ret_items;
                size_t n = 0;
                if (q->is_barrier && q->is_barrier(slot(q, 0))) {
                        pop_head(q, out);
                        q->barrier_inflight = true;
                        n = 1;
                } else {
                        while (n < max && q->count && !(q->is_barrier && q->is_barrier(slot(q, 0))))
                                pop_head(q, out + n++ * q->item_size);
                }
                q->inflight += n;
                r = (int)n;
        }
        pthread_mutex_unlock(&q->lock);
        return r;
}

int roid_queue_take(roid_queue *q, void *ret_item) {
        int r = roid_queue_take_many(q, ret_item, 1);
        return r < 0 ? r : 0;
}

void roid_queue_done_many(roid_queue *q, size_t n) {
        pthread_mutex_lock(&q->lock);
        q->inflight -= n < q->inflight ? n : q->inflight;
        if (!q->inflight)
                q->barrier_inflight = false;
        /* A consumer waiting on a blocked barrier, or on one in flight, may go on now. */
        if (q->count)
                pthread_cond_broadcast(&q->not_empty);
        if (!q->inflight && !q->count)
                pthread_cond_broadcast(&q->idle);
        pthread_mutex_unlock(&q->lock);
}

void roid_queue_done(roid_queue *q) {
        roid_queue_done_many(q, 1);
}

void roid_queue_wait_idle(roid_queue *q) {
        pthread_mutex_lock(&q->lock);
        while ((q->count || q->inflight) && !q->closed)
                pthread_cond_wait(&q->idle, &q->lock);
        pthread_mutex_unlock(&q->lock);
}

void roid_queue_close(roid_queue *q) {
        pthread_mutex_lock(&q->lock);
        q->closed = true;
        pthread_cond_broadcast(&q->not_empty);
        pthread_cond_broadcast(&q->not_full);
        pthread_cond_broadcast(&q->idle);
        pthread_mutex_unlock(&q->lock);
}

size_t roid_queue_depth(roid_queue *q) {
        pthread_mutex_lock(&q->lock);
        size_t n = q->count;
        pthread_mutex_unlock(&q->lock);
        return n;
}

size_t roid_queue_in_flight(roid_queue *q) {
        pthread_mutex_lock(&q->lock);
        size_t n = q->inflight;
        pthread_mutex_unlock(&q->lock);
        return n;
}
