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

int roid_queue_push(roid_queue *q, const void *item, bool wait) {
        pthread_mutex_lock(&q->lock);
        while (!q->closed && q->count == q->capacity && wait)
                pthread_cond_wait(&q->not_full, &q->lock);
        int r = 0;
        if (q->closed)
                r = -ECANCELED;
        else if (q->count == q->capacity)
                r = -EAGAIN;
        else {
                memcpy(slot(q, q->count), item, q->item_size);
                q->count++;
                if (q->count > q->high_water)
                        q->high_water = q->count;
                /* Broadcast: with barriers, the waiter that can proceed may not be the one a signal wakes. */
                pthread_cond_broadcast(&q->not_empty);
        }
        pthread_mutex_unlock(&q->lock);
        return r;
}

static void pop_head(roid_queue *q, void *ret_item) {
        memcpy(ret_item, slot(q, 0), q->item_size);
        q->head = (q->head + 1) % q->capacity;
        q->count--;
        pthread_cond_broadcast(&q->not_full);
}

int roid_queue_pop(roid_queue *q, void *ret_item, double timeout_s) {
        struct timespec deadline;
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
                pop_head(q, ret_item);
                r = 0;
        } else if (r == 0) {
                r = -ECANCELED;
        }
        pthread_mutex_unlock(&q->lock);
        return r;
}

static bool head_blocked(roid_queue *q) {
        if (q->barrier_inflight)
                return true;
        return q->is_barrier && q->is_barrier(slot(q, 0)) && q->inflight > 0;
}

int roid_queue_take(roid_queue *q, void *ret_item) {
        pthread_mutex_lock(&q->lock);
        while ((!q->count && !q->closed) || (q->count && head_blocked(q)))
                pthread_cond_wait(&q->not_empty, &q->lock);
        int r = -ECANCELED;
        if (q->count) {
                pop_head(q, ret_item);
                q->inflight++;
                if (q->is_barrier && q->is_barrier(ret_item))
                        q->barrier_inflight = true;
                r = 0;
        }
        pthread_mutex_unlock(&q->lock);
        return r;
}

void roid_queue_done(roid_queue *q) {
        pthread_mutex_lock(&q->lock);
        if (q->inflight)
                q->inflight--;
        if (!q->inflight)
                q->barrier_inflight = false;
        /* A consumer waiting on a blocked barrier, or on one in flight, may go on now. */
        pthread_cond_broadcast(&q->not_empty);
        if (!q->inflight && !q->count)
                pthread_cond_broadcast(&q->idle);
        pthread_mutex_unlock(&q->lock);
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
