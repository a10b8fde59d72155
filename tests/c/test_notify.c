/* test_notify: the sd_notify messages and the watchdog stall policy, read
 * from a datagram socket the test owns (as systemd's would be). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "service/notify.h"
#include "tap.h"

static char dir[32], path[64];
static int sock = -1;

static void open_socket(void) {
        snprintf(dir, sizeof dir, "/tmp/roid-notify-XXXXXX");
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                exit(1);
        }
        snprintf(path, sizeof path, "%s/notify", dir);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (sock < 0 || bind(sock, (struct sockaddr *)&sa, sizeof sa) < 0) {
                perror("notify socket");
                exit(1);
        }
}

static void close_socket(void) {
        close(sock);
        unlink(path);
        rmdir(dir);
}

/* One datagram if one is waiting (never blocks: sd_notify has sent it
 * before returning), as a NUL-terminated string; -1 if none. */
static ssize_t recv_msg(char *buf, size_t size) {
        ssize_t r = recv(sock, buf, size - 1, MSG_DONTWAIT);
        if (r < 0)
                return -1;
        buf[r] = '\0';
        return r;
}

static int drain(void) {
        char buf[4096];
        int n = 0;
        while (recv_msg(buf, sizeof buf) >= 0)
                n++;
        return n;
}

/* The value of the line "key=value" in a message, or NULL. */
static const char *field(const char *msg, const char *key, char *val, size_t size) {
        size_t kl = strlen(key);
        for (const char *p = msg; p && *p;) {
                const char *e = strchr(p, '\n');
                size_t ll = e ? (size_t)(e - p) : strlen(p);
                if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
                        size_t vl = ll - kl - 1 < size - 1 ? ll - kl - 1 : size - 1;
                        memcpy(val, p + kl + 1, vl);
                        val[vl] = '\0';
                        return val;
                }
                p = e ? e + 1 : NULL;
        }
        return NULL;
}

/* The message on one line, for TAP descriptions. */
static const char *oneline(const char *msg) {
        static char b[4][160];
        static int k;
        char *o = b[k++ & 3];
        size_t j = 0;
        for (size_t i = 0; msg[i] && j + 3 < sizeof b[0]; i++) {
                if (msg[i] == '\n') {
                        o[j++] = '\\';
                        o[j++] = 'n';
                } else {
                        o[j++] = msg[i];
                }
        }
        o[j] = '\0';
        return o;
}

static int count_lines(const char *msg) {
        int n = 1;
        for (const char *p = msg; *p; p++)
                n += *p == '\n';
        return n;
}

static uint64_t mono_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void set_watchdog(const char *usec, long pid) {
        char b[32];
        if (usec)
                setenv("WATCHDOG_USEC", usec, 1);
        else
                unsetenv("WATCHDOG_USEC");
        snprintf(b, sizeof b, "%ld", pid);
        if (pid)
                setenv("WATCHDOG_PID", b, 1);
        else
                unsetenv("WATCHDOG_PID");
}

static void test_without_socket(void) {
        unsetenv("NOTIFY_SOCKET");
        set_watchdog("500000", (long)getpid());
        roid_notify *n = NULL;
        tap_ok(roid_notify_new(&n) == 0 && n, "no NOTIFY_SOCKET: new succeeds");
        tap_eq_u64(roid_notify_watchdog_usec(n), 0, "no NOTIFY_SOCKET: no watchdog even with WATCHDOG_USEC");
        int r = roid_notify_ready(n, "ready") | roid_notify_status(n, "s") | roid_notify_reloading(n) |
                roid_notify_stopping(n) | roid_notify_watchdog_tick(n, 1, 0, 1.0, 10.0);
        tap_ok(r == 0, "no NOTIFY_SOCKET: every call returns 0");
        tap_ok(drain() == 0, "no NOTIFY_SOCKET: nothing was sent");
        roid_notify_free(n);
        roid_notify_free(NULL);
        tap_ok(roid_notify_ready(NULL, "x") == 0 && roid_notify_watchdog_usec(NULL) == 0, "NULL object: no-op");
}

static void test_messages(void) {
        char m[4096], v[2048];
        setenv("NOTIFY_SOCKET", path, 1);
        set_watchdog(NULL, 0);
        roid_notify *n = NULL;
        tap_ok(roid_notify_new(&n) == 0, "new with NOTIFY_SOCKET");
        tap_eq_u64(roid_notify_watchdog_usec(n), 0, "no WATCHDOG_USEC: no watchdog");
        tap_ok(roid_notify_watchdog_tick(n, 1, 0, 1.0, 10.0) == 0 && drain() == 0, "no watchdog: a tick sends nothing");

        bool ok;
        tap_ok(roid_notify_ready(n, "waiting for a series") == 0, "ready returns 0");
        tap_ok(recv_msg(m, sizeof m) > 0, "ready: a datagram arrived");
        tap_ok(field(m, "READY", v, sizeof v) && strcmp(v, "1") == 0, "ready: READY=1 (%s)", oneline(m));
        tap_ok(field(m, "STATUS", v, sizeof v) && strcmp(v, "waiting for a series") == 0, "ready: STATUS= the text");
        tap_ok(drain() == 0, "ready: one datagram");

        tap_ok(roid_notify_status(n, "series 7: 120/576 frames, 0 dropped") == 0, "status returns 0");
        ok = recv_msg(m, sizeof m) > 0;
        tap_ok(ok && strcmp(m, "STATUS=series 7: 120/576 frames, 0 dropped") == 0, "status: exactly STATUS=text (%s)",
               oneline(m));
        ok = roid_notify_status(n, "series 7: 240/576 frames, 0 dropped") == 0 && recv_msg(m, sizeof m) > 0;
        tap_ok(ok && strcmp(m, "STATUS=series 7: 240/576 frames, 0 dropped") == 0,
               "status: the next update arrives too (no rate limit)");

        ok = roid_notify_status(n, "a\nREADY=1\nSTOPPING=1") == 0 && recv_msg(m, sizeof m) > 0;
        tap_ok(ok && count_lines(m) == 1 && !field(m, "READY", v, sizeof v) && !field(m, "STOPPING", v, sizeof v),
               "a newline in a status cannot inject READY=1/STOPPING=1 (%s)", oneline(m));

        char big[3000];
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        big[1022] = (char)0xc3; /* a two-byte UTF-8 character across the cut */
        big[1023] = (char)0xa9;
        tap_ok(roid_notify_status(n, big) == 0 && recv_msg(m, sizeof m) > 0, "long status sent");
        size_t sl = strlen(m) - strlen("STATUS=");
        tap_ok(sl > 0 && sl <= 1024 && ((unsigned char)m[strlen(m) - 1] & 0xc0) != 0xc0,
               "long status cut at <= 1024 bytes, not inside a UTF-8 character (%zu bytes)", sl);

        uint64_t t0 = mono_usec();
        tap_ok(roid_notify_reloading(n) == 0, "reloading returns 0");
        uint64_t t1 = mono_usec();
        tap_ok(recv_msg(m, sizeof m) > 0 && field(m, "RELOADING", v, sizeof v) && strcmp(v, "1") == 0,
               "reloading: RELOADING=1");
        uint64_t mu = field(m, "MONOTONIC_USEC", v, sizeof v) ? strtoull(v, NULL, 10) : 0;
        tap_ok(mu >= t0 && mu <= t1, "reloading: MONOTONIC_USEC=%" PRIu64 " within [%" PRIu64 ", %" PRIu64 "]", mu, t0,
               t1);
        ok = roid_notify_ready(n, NULL) == 0 && recv_msg(m, sizeof m) > 0;
        tap_ok(ok && strcmp(m, "READY=1") == 0, "ready without status after the reload: READY=1 only (%s)", oneline(m));

        tap_ok(roid_notify_stopping(n) == 0 && recv_msg(m, sizeof m) > 0 && strcmp(m, "STOPPING=1") == 0,
               "stopping: STOPPING=1");
        tap_ok(drain() == 0, "nothing else was sent");
        roid_notify_free(n);
}

static void test_watchdog_env(void) {
        roid_notify *n = NULL;
        setenv("NOTIFY_SOCKET", path, 1);
        set_watchdog("500000", (long)getpid());
        roid_notify_new(&n);
        tap_eq_u64(roid_notify_watchdog_usec(n), 500000, "WATCHDOG_USEC with our WATCHDOG_PID");
        roid_notify_free(n);
        set_watchdog("250000", 0);
        roid_notify_new(&n);
        tap_eq_u64(roid_notify_watchdog_usec(n), 250000, "WATCHDOG_USEC without WATCHDOG_PID");
        roid_notify_free(n);
        set_watchdog("500000", (long)getpid() + 1);
        roid_notify_new(&n);
        tap_eq_u64(roid_notify_watchdog_usec(n), 0, "WATCHDOG_PID of another process: not ours");
        tap_ok(roid_notify_watchdog_tick(n, 1, 0, 1.0, 10.0) == 0 && drain() == 0, "... and no ping");
        roid_notify_free(n);
        set_watchdog("soon", 0);
        roid_notify_new(&n);
        tap_eq_u64(roid_notify_watchdog_usec(n), 0, "unparsable WATCHDOG_USEC: no watchdog");
        roid_notify_free(n);
}

/* One tick; checks both the return value and what arrived on the socket. */
static void tick(roid_notify *n, uint64_t progress, uint64_t pending, double now, int want, const char *what) {
        char m[256];
        int r = roid_notify_watchdog_tick(n, progress, pending, now, 2.0);
        ssize_t got = recv_msg(m, sizeof m);
        bool pinged = got > 0 && strcmp(m, "WATCHDOG=1") == 0;
        int extra = drain();
        tap_ok(r == want && pinged == (want == 1) && extra == 0,
               "t=%.2f progress=%" PRIu64 " pending=%" PRIu64 ": %s (returned %d, %s)", now, progress, pending, what, r,
               got < 0 ? "nothing arrived" : m);
}

static void test_watchdog_policy(void) {
        roid_notify *n = NULL;
        setenv("NOTIFY_SOCKET", path, 1);
        set_watchdog("500000", (long)getpid());
        roid_notify_new(&n);
        /* ticks every 0.25 s (watchdog_usec / 2), stall_s = 2 */
        tick(n, 0, 0, 100.00, 1, "idle at start: ping");
        tick(n, 0, 0, 100.25, 1, "still idle: ping");
        tick(n, 10, 4, 100.50, 1, "progress with work queued: ping");
        tick(n, 25, 9, 100.75, 1, "progress: ping");
        tick(n, 25, 9, 101.00, 1, "stalled 0.25 s < 2 s: ping");
        tick(n, 25, 9, 102.00, 1, "stalled 1.25 s: ping");
        tick(n, 25, 9, 102.50, 1, "stalled 1.75 s: ping");
        tick(n, 25, 9, 103.00, 0, "stalled 2.25 s > 2 s: NO ping");
        tick(n, 25, 9, 103.25, 0, "stalled 2.5 s: still no ping");
        tick(n, 25, 12, 104.00, 0, "more queued, no progress: no ping");
        tick(n, 26, 11, 104.25, 1, "progress again: pings resume");
        tick(n, 26, 11, 104.50, 1, "stall timer restarted at the progress: ping");
        tick(n, 26, 0, 105.00, 1, "nothing pending (idle, no progress): ping");
        tick(n, 26, 0, 115.00, 1, "idle for 10 s: still ping (idle is healthy)");
        tick(n, 26, 5, 115.25, 1, "work queued after a long idle: the stall counts from the last idle tick");
        tick(n, 26, 5, 116.75, 1, "stalled 1.75 s since the last idle tick: ping");
        tick(n, 26, 5, 117.25, 0, "stalled 2.25 s since the last idle tick: NO ping");
        tick(n, 26, 0, 117.75, 1, "queue emptied (e.g. the series was dropped): ping");
        tick(n, 20, 3, 118.00, 1, "counter went back (reset): counts as movement");
        roid_notify_free(n);
}

int main(void) {
        open_socket();
        test_without_socket();
        test_messages();
        test_watchdog_env();
        test_watchdog_policy();
        close_socket();
        return tap_done();
}
