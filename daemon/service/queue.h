/* queue.h - a bounded FIFO of fixed-size items between threads (mutex and
 * condition variables), with optional barrier items for the work queue.
 *
 * Items are copied in and out; the ring is allocated once at init, so
 * nothing is allocated per item.  A queue never grows: a full queue makes a
 * producer wait (roid_queue_push with wait) or refuses the item (-EAGAIN);
 * what the producer does then is its documented policy.
 *
 * Barriers keep order across parallel consumers: roid_queue_take does not hand
 * out a barrier item while other taken items are still in flight, and hands
 * out nothing while a barrier is in flight.  So everything before a barrier is
 * finished (roid_queue_done) before the barrier is taken, and nothing after it
 * starts before the barrier is done.
 *
 * Batches: the *_many calls move several items under one lock and wake
 * waiters at most once, so a stream of small items costs one lock and at most
 * one wake-up per batch instead of per item.  Waiters are woken only on the
 * transitions they wait for (empty -> not empty, full -> not full, an item or
 * barrier done), which are the only ones that can let them proceed.
 *
 * Ownership: the caller owns the roid_queue struct; init/destroy manage the
 * ring.  Threads: any number of producers and consumers.
 */
#ifndef ROID_SERVICE_QUEUE_H
#define ROID_SERVICE_QUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t not_empty, not_full, idle;
        unsigned char *ring;
        size_t item_size, capacity, head, count;
        size_t inflight;       /* taken, not yet done */
        bool barrier_inflight; /* a taken barrier is not done */
        bool closed;
        bool (*is_barrier)(const void *item);
        size_t high_water; /* largest count seen */
} roid_queue;

/* is_barrier may be NULL (no barriers).  -EINVAL for a zero size or capacity,
 * -ENOMEM. */
int roid_queue_init(roid_queue *q, size_t item_size, size_t capacity, bool (*is_barrier)(const void *item));
void roid_queue_destroy(roid_queue *q);

/* 0; -EAGAIN when full and !wait; -ECANCELED once closed. */
int roid_queue_push(roid_queue *q, const void *item, bool wait);

/* Pushes items[0..n) in order: all of them (waiting for space as needed) when
 * wait, else as many as fit.  The number pushed; -EAGAIN when !wait and none
 * fit (n > 0); -ECANCELED once closed (items before the close stay pushed). */
int roid_queue_push_many(roid_queue *q, const void *items, size_t n, bool wait);

/* Plain consumer: waits for an item.  0, or -ECANCELED when closed and
 * empty.  timeout_s < 0 waits forever, else -ETIMEDOUT after that long. */
int roid_queue_pop(roid_queue *q, void *ret_item, double timeout_s);
/* The same for up to max items (ret_items holds max): the number popped (>= 1),
 * or -ETIMEDOUT / -ECANCELED as pop. */
int roid_queue_pop_many(roid_queue *q, void *ret_items, size_t max, double timeout_s);

/* Work-queue consumer: like pop, honouring barriers; every taken item must
 * be finished with roid_queue_done. */
int roid_queue_take(roid_queue *q, void *ret_item);
void roid_queue_done(roid_queue *q);
/* Takes up to max items at once (>= 1), or -ECANCELED: a run of items up to
 * the next barrier, or a barrier alone; finish them all with one
 * roid_queue_done_many(q, count). */
int roid_queue_take_many(roid_queue *q, void *ret_items, size_t max);
void roid_queue_done_many(roid_queue *q, size_t n);

/* Waits until the queue is empty and nothing is in flight. */
void roid_queue_wait_idle(roid_queue *q);

/* Wakes every waiter; pushes fail from now on, pops drain what is left. */
void roid_queue_close(roid_queue *q);

size_t roid_queue_depth(roid_queue *q);
size_t roid_queue_in_flight(roid_queue *q);

#endif
