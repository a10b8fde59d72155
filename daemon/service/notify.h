/* notify.h - the service manager protocol (sd_notify(3)): readiness, status,
 * reload, stop and the watchdog with a stall policy.
 *
 * Ownership: roid_notify_new allocates, roid_notify_free releases; the object
 * owns one file descriptor (a non-blocking datagram socket) from new to free.
 * Threads: the event loop thread only; nothing here is locked.
 *
 * Without NOTIFY_SOCKET (not started by systemd with Type=notify) every call
 * is a cheap no-op returning 0 and the watchdog is off.  Text given as a
 * status is sent on one line: newlines become spaces, so a status can never
 * carry another assignment such as READY=1.
 *
 * No call ever blocks: a service manager that does not read its socket (PID 1
 * busy) fills it after net.unix.max_dgram_qlen (often 10) datagrams, and what
 * does not fit waits here, bounded, to be sent before anything else at the
 * next roid_notify_* call: READY=1, RELOADING=1 and STOPPING=1 in order (the
 * oldest dropped, and logged, beyond 8), one WATCHDOG=1, and only the newest
 * STATUS=.  Such a call returns -EAGAIN.  A NOTIFY_SOCKET that is not an
 * absolute path or an @abstract name fitting sun_path (e.g. "vsock:") is left
 * to libsystemd's sd_notify(), which may block; a warning says so.
 */
#ifndef ROID_SERVICE_NOTIFY_H
#define ROID_SERVICE_NOTIFY_H

#include <stdint.h>

typedef struct roid_notify roid_notify;

/* Reads NOTIFY_SOCKET and the watchdog (WATCHDOG_USEC, and WATCHDOG_PID if
 * set must be our pid).  -ENOMEM, or socket(2)'s errno (e.g. -EMFILE);
 * *ret untouched on failure. */
int roid_notify_new(roid_notify **ret);
/* Tries once more, without blocking, to send what waits (a STOPPING=1). */
void roid_notify_free(roid_notify *n);

/* Each sending call returns 0 when everything is sent, -EAGAIN when its
 * message (or an older one) waits for room, or another negative errno (e.g.
 * -ECONNREFUSED: nobody listens; that message is dropped). */

/* READY=1 and STATUS=status (status may be NULL), one datagram; when it must
 * wait, READY=1 keeps its place in the order and the status is the newest. */
int roid_notify_ready(roid_notify *n, const char *status);
/* STATUS=status; not rate-limited (the caller's status timer is).  Also
 * the retry of whatever waits. */
int roid_notify_status(roid_notify *n, const char *status);
/* RELOADING=1 with MONOTONIC_USEC= (systemd >= 253 matches it to the
 * reload request; older versions ignore it).  Send READY=1 when done. */
int roid_notify_reloading(roid_notify *n);
/* STOPPING=1. */
int roid_notify_stopping(roid_notify *n);

/* Sends what waits, as any call does first.  0, -EAGAIN or a negative errno. */
int roid_notify_flush(roid_notify *n);
/* How many datagrams wait for room (0 when nothing does). */
unsigned roid_notify_pending(const roid_notify *n);

/* The watchdog interval in microseconds; 0 = no watchdog (then the caller
 * arms no timer). */
uint64_t roid_notify_watchdog_usec(const roid_notify *n);

/* Call every watchdog_usec / 2.  progress: a count that grows with every
 * frame/message handled; pending: work queued and not yet done; now:
 * CLOCK_MONOTONIC seconds.  Sends WATCHDOG=1 when progress moved since the
 * last call or nothing is pending; with work pending and no progress, keeps
 * pinging until the stall has lasted stall_s seconds (counted from the last
 * progress or the last idle tick), then stops so that systemd restarts the
 * daemon.  Returns 1 if a ping was sent, 0 if not, -EAGAIN if it waits for
 * room (a withheld ping also cancels a waiting one), or a negative errno. */
int roid_notify_watchdog_tick(roid_notify *n, uint64_t progress, uint64_t pending, double now, double stall_s);

#endif
