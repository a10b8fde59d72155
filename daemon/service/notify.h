/* notify.h - the service manager protocol (sd_notify(3)): readiness, status,
 * reload, stop and the watchdog with a stall policy.
 *
 * Ownership: roid_notify_new allocates, roid_notify_free releases; the object
 * holds no file descriptor (libsystemd opens one per message).
 * Threads: the event loop thread only; nothing here is locked.
 *
 * Without NOTIFY_SOCKET (not started by systemd with Type=notify) every call
 * is a cheap no-op returning 0 and the watchdog is off.  Text given as a
 * status is sent on one line: newlines become spaces, so a status can never
 * carry another assignment such as READY=1.
 *
 * Each message is one blocking sd_notify() datagram: the service manager
 * reads them at once, but a NOTIFY_SOCKET nobody reads blocks the caller
 * after net.unix.max_dgram_qlen (often 10) messages.
 */
#ifndef ROID_SERVICE_NOTIFY_H
#define ROID_SERVICE_NOTIFY_H

#include <stdint.h>

typedef struct roid_notify roid_notify;

/* Reads NOTIFY_SOCKET and the watchdog (WATCHDOG_USEC, and WATCHDOG_PID if
 * set must be our pid).  -ENOMEM; *ret untouched on failure. */
int roid_notify_new(roid_notify **ret);
void roid_notify_free(roid_notify *n);

/* READY=1 and STATUS=status (status may be NULL).  0 or a negative errno. */
int roid_notify_ready(roid_notify *n, const char *status);
/* STATUS=status; not rate-limited (the caller's status timer is). */
int roid_notify_status(roid_notify *n, const char *status);
/* RELOADING=1 with MONOTONIC_USEC= (systemd >= 253 matches it to the
 * reload request; older versions ignore it).  Send READY=1 when done. */
int roid_notify_reloading(roid_notify *n);
/* STOPPING=1. */
int roid_notify_stopping(roid_notify *n);

/* The watchdog interval in microseconds; 0 = no watchdog (then the caller
 * arms no timer). */
uint64_t roid_notify_watchdog_usec(const roid_notify *n);

/* Call every watchdog_usec / 2.  progress: a count that grows with every
 * frame/message handled; pending: work queued and not yet done; now:
 * CLOCK_MONOTONIC seconds.  Sends WATCHDOG=1 when progress moved since the
 * last call or nothing is pending; with work pending and no progress, keeps
 * pinging until the stall has lasted stall_s seconds (counted from the last
 * progress or the last idle tick), then stops so that systemd restarts the
 * daemon.  Returns 1 if a ping was sent, 0 if not, or a negative errno. */
int roid_notify_watchdog_tick(roid_notify *n, uint64_t progress, uint64_t pending, double now, double stall_s);

#endif
