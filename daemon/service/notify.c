#include "service/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "service/log.h"

/* A status is one line for `systemctl status`; bounded so every datagram is small. */
#define STATUS_MAX 1024
/* READY/RELOADING/STOPPING waiting for a full socket: rare, so a few suffice. */
#define QUEUE_MAX 8
/* The longest queued message: "RELOADING=1\nMONOTONIC_USEC=" and 20 digits. */
#define QMSG_MAX 64

struct roid_notify {
        bool enabled; /* NOTIFY_SOCKET was set */
        int fd;       /* -1: a form we do not parse, sd_notify() does the sending */
        struct sockaddr_un addr;
        socklen_t addrlen;
        uint64_t watchdog_usec; /* 0: off */
        /* What a full socket has not taken yet, sent before anything new (oldest first):
         * the state changes in order, then one ping, then the newest status. */
        char queue[QUEUE_MAX][QMSG_MAX];
        unsigned head, count;
        bool ping_pending;
        bool status_pending;
        char status[STATUS_MAX + 16]; /* "STATUS=..." */
        bool backlogged;              /* last call ended with something pending; for the log */
        /* watchdog stall policy */
        bool ticked;
        bool stalled; /* pings withheld; logged once */
        uint64_t last_progress;
        double healthy_since; /* last tick with progress or nothing pending */
};

/* NOTIFY_SOCKET as sd_notify(3) documents it: an absolute path, or '@' for
 * the abstract namespace.  -EINVAL for any other form, -ENAMETOOLONG if it
 * does not fit sun_path. */
static int parse_address(const char *s, struct sockaddr_un *sa, socklen_t *ret_len) {
        size_t len = strlen(s);
        if ((s[0] != '/' && s[0] != '@') || len < 2)
                return -EINVAL;
        /* a path needs room for its NUL; an abstract name is exactly its bytes, the '@' becoming the leading NUL */
        if (len > sizeof sa->sun_path - (s[0] == '/'))
                return -ENAMETOOLONG;
        memset(sa, 0, sizeof *sa);
        sa->sun_family = AF_UNIX;
        memcpy(sa->sun_path, s, len);
        if (s[0] == '@')
                sa->sun_path[0] = '\0';
        *ret_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (s[0] == '/'));
        return 0;
}

int roid_notify_new(roid_notify **ret) {
        roid_notify *n = calloc(1, sizeof *n);
        if (!n)
                return -ENOMEM;
        n->fd = -1;
        const char *sock = getenv("NOTIFY_SOCKET");
        n->enabled = sock && *sock;
        if (n->enabled) {
                int r = parse_address(sock, &n->addr, &n->addrlen);
                if (r < 0) {
                        /* e.g. systemd >= 254's "vsock:": libsystemd knows it, but only sends blocking */
                        roid_log(ROID_LOG_WARNING,
                                 "NOTIFY_SOCKET=%.128s%s: %s; using sd_notify(3), which may block the event loop "
                                 "while the service manager does not read",
                                 sock, strlen(sock) > 128 ? "..." : "",
                                 r == -ENAMETOOLONG ? "too long for a unix socket address"
                                                    : "not an absolute path or an @abstract name");
                } else {
                        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                        if (n->fd < 0) {
                                r = -errno;
                                roid_log(ROID_LOG_ERR, "notify socket: %s", strerror(-r));
                                free(n);
                                return r;
                        }
                }
                uint64_t usec = 0;
                r = sd_watchdog_enabled(0, &usec);
                if (r < 0)
                        /* systemd never sets a bad value; someone else did, and there is nobody to ping */
                        roid_log(ROID_LOG_WARNING, "watchdog: ignoring WATCHDOG_USEC/WATCHDOG_PID: %s", strerror(-r));
                else if (r > 0)
                        n->watchdog_usec = usec;
        }
        *ret = n;
        return 0;
}

/* One datagram.  0, -EAGAIN (the socket is full: keep it), or another
 * negative errno (nobody listens: drop it). */
static int send_internal(roid_notify *n, const char *msg) {
        if (n->fd < 0) {
                int r = sd_notify(0, msg);
                if (r < 0)
                        roid_log(ROID_LOG_DEBUG, "sd_notify: %s", strerror(-r));
                return r < 0 ? r : 0;
        }
        for (;;) {
                if (sendto(n->fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
                           n->addrlen) >= 0)
                        return 0;
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return -EAGAIN;
                int r = -errno;
                roid_log(ROID_LOG_DEBUG, "notify: %s", strerror(-r));
                return r;
        }
}

static unsigned pending_internal(const roid_notify *n) {
        return n->count + n->ping_pending + n->status_pending;
}

static void enqueue(roid_notify *n, const char *msg) {
        if (n->count == QUEUE_MAX) {
                const char *old = n->queue[n->head];
                roid_log(ROID_LOG_WARNING,
                         "notify: %d messages wait for the service manager; dropping the oldest, %.*s", QUEUE_MAX,
                         (int)strcspn(old, "\n"), old);
                n->head = (n->head + 1) % QUEUE_MAX;
                n->count--;
        }
        snprintf(n->queue[(n->head + n->count) % QUEUE_MAX], QMSG_MAX, "%s", msg);
        n->count++;
}

/* Sends what waits, oldest first, and stops at a full socket.  -EAGAIN if
 * something still waits, else the first other error (that message was
 * dropped), else 0. */
static int flush_internal(roid_notify *n) {
        int err = 0, r;
        if (n->fd < 0)
                return 0;
        while (n->count > 0) {
                if ((r = send_internal(n, n->queue[n->head])) == -EAGAIN)
                        return r;
                n->head = (n->head + 1) % QUEUE_MAX;
                n->count--;
                err = err ? err : r;
        }
        if (n->ping_pending) {
                if ((r = send_internal(n, "WATCHDOG=1")) == -EAGAIN)
                        return r;
                n->ping_pending = false;
                err = err ? err : r;
        }
        if (n->status_pending) {
                if ((r = send_internal(n, n->status)) == -EAGAIN)
                        return r;
                n->status_pending = false;
                err = err ? err : r;
        }
        return err;
}

/* Logs when a backlog starts and ends (rate-limited: PID 1 may be busy on and off); returns r. */
static int note_backlog(roid_notify *n, int r) {
        bool now = pending_internal(n) > 0;
        if (now && !n->backlogged)
                ROID_LOG_LIMITED(ROID_LOG_NOTICE, "the service manager is not reading NOTIFY_SOCKET: notifications "
                                                  "wait in roid and are sent at the next status or watchdog tick");
        else if (!now && n->backlogged)
                ROID_LOG_LIMITED(ROID_LOG_NOTICE, "nothing waits for NOTIFY_SOCKET any more");
        n->backlogged = now;
        return r;
}

/* Sends msg after what waits, or queues it if the socket is full. */
static int send_in_order(roid_notify *n, const char *msg) {
        int r = flush_internal(n);
        if (r != -EAGAIN)
                r = send_internal(n, msg);
        if (r == -EAGAIN && n->fd >= 0)
                enqueue(n, msg);
        return note_backlog(n, r);
}

void roid_notify_free(roid_notify *n) {
        if (!n)
                return;
        if (n->fd >= 0) {
                /* a last chance for a STOPPING=1 that found the socket full */
                flush_internal(n);
                if (pending_internal(n) > 0)
                        roid_log(ROID_LOG_NOTICE, "notify: %u message(s) never reached the service manager",
                                 pending_internal(n));
                close(n->fd);
        }
        free(n);
}

/* Appends "STATUS=text" on one line, cut at STATUS_MAX bytes on a UTF-8
 * character boundary. */
static void append_status(char *buf, size_t size, size_t *len, const char *status) {
        int w = snprintf(buf + *len, size - *len, "STATUS=");
        if (w < 0 || (size_t)w >= size - *len)
                return;
        char *p = buf + *len + (size_t)w;
        size_t room = size - *len - (size_t)w - 1;
        if (room > STATUS_MAX)
                room = STATUS_MAX;
        size_t m = strnlen(status, room);
        if (m == room)
                while (m > 0 && ((unsigned char)status[m] & 0xc0) == 0x80)
                        m--;
        for (size_t i = 0; i < m; i++)
                p[i] = status[i] == '\n' || status[i] == '\r' ? ' ' : status[i];
        p[m] = '\0';
        *len += (size_t)w + m;
}

/* The newest status replaces one still waiting. */
static void set_status(roid_notify *n, const char *status) {
        size_t len = 0;
        n->status[0] = '\0';
        append_status(n->status, sizeof n->status, &len, status ? status : "");
        n->status_pending = true;
}

int roid_notify_ready(roid_notify *n, const char *status) {
        if (!n || !n->enabled)
                return 0;
        int r = flush_internal(n);
        if (r != -EAGAIN) {
                char buf[STATUS_MAX + 32];
                size_t len = (size_t)snprintf(buf, sizeof buf, "READY=1%s", status ? "\n" : "");
                if (status)
                        append_status(buf, sizeof buf, &len, status);
                r = send_internal(n, buf);
        }
        if (r == -EAGAIN && n->fd >= 0) {
                /* two datagrams later: READY=1 in its place in the queue, the status as the newest one */
                enqueue(n, "READY=1");
                if (status)
                        set_status(n, status);
        }
        return note_backlog(n, r);
}

int roid_notify_status(roid_notify *n, const char *status) {
        if (!n || !n->enabled)
                return 0;
        if (n->fd < 0) {
                char buf[STATUS_MAX + 32];
                size_t len = 0;
                buf[0] = '\0';
                append_status(buf, sizeof buf, &len, status ? status : "");
                return send_internal(n, buf);
        }
        set_status(n, status);
        return note_backlog(n, flush_internal(n));
}

int roid_notify_reloading(roid_notify *n) {
        if (!n || !n->enabled)
                return 0;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        char buf[QMSG_MAX];
        snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
                 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
        return send_in_order(n, buf);
}

int roid_notify_stopping(roid_notify *n) {
        if (!n || !n->enabled)
                return 0;
        return send_in_order(n, "STOPPING=1");
}

int roid_notify_flush(roid_notify *n) {
        if (!n || !n->enabled)
                return 0;
        return note_backlog(n, flush_internal(n));
}

unsigned roid_notify_pending(const roid_notify *n) {
        return n ? pending_internal(n) : 0;
}

uint64_t roid_notify_watchdog_usec(const roid_notify *n) {
        return n ? n->watchdog_usec : 0;
}

int roid_notify_watchdog_tick(roid_notify *n, uint64_t progress, uint64_t pending, double now, double stall_s) {
        if (!n || !n->enabled)
                return 0;
        if (n->watchdog_usec == 0) {
                roid_notify_flush(n);
                return 0;
        }
        bool moved = !n->ticked || progress != n->last_progress;
        n->ticked = true;
        n->last_progress = progress;
        /* A stall is counted only while work waits: an idle daemon is healthy. */
        if (moved || pending == 0)
                n->healthy_since = now;
        double stall = now - n->healthy_since;
        if (stall > stall_s) {
                if (!n->stalled)
                        roid_log(ROID_LOG_ERR,
                                 "watchdog: no progress for %.1f s with %" PRIu64
                                 " items queued; withholding WATCHDOG=1 so the service manager restarts roid",
                                 stall, pending);
                n->stalled = true;
                /* a ping still waiting from a healthy tick would now claim health falsely */
                n->ping_pending = false;
                roid_notify_flush(n);
                return 0;
        }
        if (n->stalled)
                roid_log(ROID_LOG_NOTICE, "watchdog: progress or an empty queue again; pinging resumes");
        n->stalled = false;
        if (n->fd < 0) {
                int r = send_internal(n, "WATCHDOG=1");
                return r < 0 ? r : 1;
        }
        /* the ping waiting from an earlier tick, if any, is this one */
        n->ping_pending = true;
        int r = flush_internal(n);
        note_backlog(n, r);
        if (n->ping_pending)
                return -EAGAIN;
        return r < 0 && r != -EAGAIN ? r : 1;
}
