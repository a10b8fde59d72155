#include "service/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "service/log.h"

/* A status is one line for `systemctl status`; bounded so every datagram is small. */
#define STATUS_MAX 1024

struct roid_notify {
        bool enabled;           /* NOTIFY_SOCKET was set */
        uint64_t watchdog_usec; /* 0: off */
        /* watchdog stall policy */
        bool ticked;
        bool stalled; /* pings withheld; logged once */
        uint64_t last_progress;
        double healthy_since; /* last tick with progress or nothing pending */
};

int roid_notify_new(roid_notify **ret) {
        roid_notify *n = calloc(1, sizeof *n);
        if (!n)
                return -ENOMEM;
        const char *sock = getenv("NOTIFY_SOCKET");
        n->enabled = sock && *sock;
        if (n->enabled) {
                uint64_t usec = 0;
                int r = sd_watchdog_enabled(0, &usec);
                if (r < 0)
                        /* systemd never sets a bad value; someone else did, and there is nobody to ping */
                        roid_log(ROID_LOG_WARNING, "watchdog: ignoring WATCHDOG_USEC/WATCHDOG_PID: %s", strerror(-r));
                else if (r > 0)
                        n->watchdog_usec = usec;
        }
        *ret = n;
        return 0;
}

void roid_notify_free(roid_notify *n) {
        free(n);
}

static int send_internal(const char *state) {
        int r = sd_notify(0, state);
        if (r < 0) {
                roid_log(ROID_LOG_DEBUG, "sd_notify: %s", strerror(-r));
                return r;
        }
        return 0;
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

int roid_notify_ready(roid_notify *n, const char *status) {
        if (!n || !n->enabled)
                return 0;
        char buf[STATUS_MAX + 32];
        size_t len = (size_t)snprintf(buf, sizeof buf, "READY=1%s", status ? "\n" : "");
        if (status)
                append_status(buf, sizeof buf, &len, status);
        return send_internal(buf);
}

int roid_notify_status(roid_notify *n, const char *status) {
        if (!n || !n->enabled)
                return 0;
        char buf[STATUS_MAX + 32];
        size_t len = 0;
        buf[0] = '\0';
        append_status(buf, sizeof buf, &len, status ? status : "");
        return send_internal(buf);
}

int roid_notify_reloading(roid_notify *n) {
        if (!n || !n->enabled)
                return 0;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        char buf[64];
        snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
                 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
        return send_internal(buf);
}

int roid_notify_stopping(roid_notify *n) {
        if (!n || !n->enabled)
                return 0;
        return send_internal("STOPPING=1");
}

uint64_t roid_notify_watchdog_usec(const roid_notify *n) {
        return n ? n->watchdog_usec : 0;
}

int roid_notify_watchdog_tick(roid_notify *n, uint64_t progress, uint64_t pending, double now, double stall_s) {
        if (!n || !n->enabled || n->watchdog_usec == 0)
                return 0;
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
                return 0;
        }
        if (n->stalled)
                roid_log(ROID_LOG_NOTICE, "watchdog: progress or an empty queue again; pinging resumes");
        n->stalled = false;
        int r = send_internal("WATCHDOG=1");
        return r < 0 ? r : 1;
}
