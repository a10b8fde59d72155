/* test_notify: the sd_notify messages and the watchdog stall policy, read
 * from a datagram socket the test owns (as systemd's would be); what happens
 * when that socket is full (a busy PID 1) and the NOTIFY_SOCKET forms. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* A notifier for NOTIFY_SOCKET=sock with the watchdog environment given
 * (usec NULL: none); NULL if new failed. */
static roid_notify *notify_at(const char *sock, const char *usec, long pid) {
        setenv("NOTIFY_SOCKET", sock, 1);
        set_watchdog(usec, pid);
        roid_notify *n = NULL;
        return roid_notify_new(&n) == 0 ? n : NULL;
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
        roid_notify *n = notify_at(path, "500000", (long)getpid());
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
        roid_notify *n = notify_at(path, "500000", (long)getpid());
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

/* ------------------------------------------------------------ a full socket */

static void on_alarm(int sig) {
        (void)sig;
        static const char msg[] = "Bail out! a roid_notify call blocked for 10 s\n";
        if (write(1, msg, sizeof msg - 1) < 0)
                _exit(2);
        _exit(1);
}

/* Fills the test's socket from a sender of the test's own until the kernel
 * refuses more (what a PID 1 that does not read leaves); the count sent. */
static int fill_socket(void) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
        int k = 0;
        while (k < 100000 && sendto(fd, "FILL", 4, 0, (struct sockaddr *)&sa, sizeof sa) == 4)
                k++;
        if (errno != EAGAIN)
                tap_diag("fill: %s", strerror(errno));
        close(fd);
        return k;
}

/* A datagram as the protocol wants it: no NUL inside, no empty or trailing
 * line, each line KEY=VALUE with a key roid sends and a value that fits it. */
static bool wellformed(const char *m, ssize_t len) {
        if (len <= 0 || (size_t)len != strlen(m) || m[len - 1] == '\n')
                return false;
        for (const char *p = m; p;) {
                const char *e = strchr(p, '\n');
                size_t ll = e ? (size_t)(e - p) : strlen(p);
                const char *eq = memchr(p, '=', ll);
                if (!eq)
                        return false;
                size_t kl = (size_t)(eq - p), vl = ll - kl - 1;
                const char *val = eq + 1;
                bool one = vl == 1 && val[0] == '1';
                if (kl == 6 && !strncmp(p, "STATUS", kl))
                        ;
                else if ((kl == 5 && !strncmp(p, "READY", kl)) || (kl == 9 && !strncmp(p, "RELOADING", kl)) ||
                         (kl == 8 && !strncmp(p, "STOPPING", kl)) || (kl == 8 && !strncmp(p, "WATCHDOG", kl))) {
                        if (!one)
                                return false;
                } else if (kl == 14 && !strncmp(p, "MONOTONIC_USEC", kl)) {
                        if (vl == 0 || strspn(val, "0123456789") != vl)
                                return false;
                } else {
                        return false;
                }
                p = e ? e + 1 : NULL;
        }
        return true;
}

/* Reads every waiting datagram into msgs (up to max); the count. */
static int recv_all(char (*msgs)[2048], int max, bool *all_wellformed) {
        char m[4096];
        int k = 0;
        ssize_t len;
        *all_wellformed = true;
        while ((len = recv_msg(m, sizeof m)) >= 0) {
                if (k < max) {
                        size_t l = (size_t)len < sizeof msgs[k] - 1 ? (size_t)len : sizeof msgs[k] - 1;
                        memcpy(msgs[k], m, l);
                        msgs[k][l] = '\0';
                }
                *all_wellformed &= wellformed(m, len);
                k++;
        }
        return k;
}

static uint64_t usec_of(const char *m) {
        char v[32];
        return field(m, "MONOTONIC_USEC", v, sizeof v) ? strtoull(v, NULL, 10) : 0;
}

static void test_backlog(void) {
        static char msgs[64][2048];
        bool wf;
        drain();
        roid_notify *n = notify_at(path, "500000", (long)getpid());
        tap_ok(n != NULL, "backlog: new");
        int sent = 0, waiting = 0, other = 0, calls = 0;
        uint64_t worst = 0, rl[2][2] = {{0}};
        char s[64];
#define CALL(expr)                                                                                                     \
        do {                                                                                                           \
                uint64_t a_ = mono_usec();                                                                             \
                int r_ = (expr);                                                                                       \
                uint64_t d_ = mono_usec() - a_;                                                                        \
                worst = d_ > worst ? d_ : worst;                                                                       \
                calls++;                                                                                               \
                if (r_ == 0 || r_ == 1)                                                                                \
                        sent++;                                                                                        \
                else if (r_ == -EAGAIN)                                                                                \
                        waiting++;                                                                                     \
                else                                                                                                   \
                        other++;                                                                                       \
        } while (0)
        alarm(10);
        uint64_t t0 = mono_usec();
        CALL(roid_notify_ready(n, "starting"));
        for (int i = 0; i < 1000; i++) {
                snprintf(s, sizeof s, "series 1: %d/1000 frames", i);
                CALL(roid_notify_status(n, s));
                /* progress moves at every tick: each one wants a ping */
                CALL(roid_notify_watchdog_tick(n, (uint64_t)i, 1, 100.0 + 0.25 * i, 10.0));
                if (i == 300 || i == 600) {
                        rl[i / 600][0] = mono_usec();
                        CALL(roid_notify_reloading(n));
                        rl[i / 600][1] = mono_usec();
                }
                if (i == 301 || i == 601)
                        CALL(roid_notify_ready(n, "reloaded"));
        }
        uint64_t took = mono_usec() - t0;
        alarm(0);
#undef CALL
        tap_ok(took < 2000000,
               "backlog: %d calls on a socket nobody reads took %.3f s (< 2 s), the slowest %" PRIu64 " us", calls,
               took / 1e6, worst);
        unsigned pend = roid_notify_pending(n);
        int got = recv_all(msgs, 64, &wf);
        tap_ok(got > 0 && got == sent && other == 0 && waiting == calls - sent,
               "backlog: the %d calls that returned 0/1 are the %d datagrams that fit; the other %d returned -EAGAIN "
               "(%d other errors)",
               sent, got, waiting, other);
        tap_ok(wf && strcmp(msgs[0], "READY=1\nSTATUS=starting") == 0,
               "backlog: those arrived well-formed, READY=1 with its status first (%s)", oneline(msgs[0]));
        tap_eq_u64(pend, 6, "backlog: 6 waiting (RELOADING, READY, RELOADING, READY, one ping, one status)");

        int r = roid_notify_status(n, "series 1: done");
        got = recv_all(msgs, 64, &wf);
        tap_ok(r == 0 && roid_notify_pending(n) == 0, "backlog: after the drain, status sends everything (%d, %u left)",
               r, roid_notify_pending(n));
        tap_ok(got == 6 && wf, "backlog: 6 well-formed datagrams, not ~1000 stale ones (%d)", got);
        if (got == 6) {
                uint64_t u0 = usec_of(msgs[0]), u1 = usec_of(msgs[2]);
                tap_ok(strncmp(msgs[0], "RELOADING=1\n", 12) == 0 && u0 >= rl[0][0] && u0 <= rl[0][1],
                       "backlog: 1st RELOADING=1 with the MONOTONIC_USEC of the first reload (%s)", oneline(msgs[0]));
                tap_ok(strcmp(msgs[1], "READY=1") == 0, "backlog: then its READY=1 (%s)", oneline(msgs[1]));
                tap_ok(strncmp(msgs[2], "RELOADING=1\n", 12) == 0 && u1 >= rl[1][0] && u1 <= rl[1][1],
                       "backlog: 2nd RELOADING=1 with the second reload's time (%s)", oneline(msgs[2]));
                tap_ok(strcmp(msgs[3], "READY=1") == 0, "backlog: then its READY=1 (%s)", oneline(msgs[3]));
                tap_ok(strcmp(msgs[4], "WATCHDOG=1") == 0, "backlog: one WATCHDOG=1 for ~990 ticks (%s)",
                       oneline(msgs[4]));
                tap_ok(strcmp(msgs[5], "STATUS=series 1: done") == 0, "backlog: only the newest status, last (%s)",
                       oneline(msgs[5]));
        }
        tap_ok(roid_notify_status(n, "again") == 0 && recv_msg(msgs[0], sizeof msgs[0]) > 0 &&
                       strcmp(msgs[0], "STATUS=again") == 0 && drain() == 0,
               "backlog: afterwards one call is one datagram again");
        roid_notify_free(n);
}

/* More READY/RELOADING/STOPPING than the queue holds: the oldest go. */
static void test_overflow(void) {
        static char msgs[32][2048];
        bool wf;
        uint64_t tb[10], ta[10];
        drain();
        roid_notify *n = notify_at(path, NULL, 0);
        int filled = fill_socket();
        bool all_wait = true;
        for (int k = 0; k < 10; k++) {
                tb[k] = mono_usec();
                all_wait &= roid_notify_reloading(n) == -EAGAIN;
                ta[k] = mono_usec();
                nanosleep(&(struct timespec){0, 20000}, NULL); /* distinct MONOTONIC_USEC */
        }
        tap_ok(filled > 0 && all_wait, "overflow: 10 RELOADING=1 on a full socket (%d datagrams) all wait", filled);
        tap_eq_u64(roid_notify_pending(n), 8, "overflow: the queue holds 8");
        tap_ok(roid_notify_status(n, "after the overflow") == -EAGAIN && roid_notify_pending(n) == 9,
               "overflow: a status waits too, behind them");
        tap_ok(drain() == filled, "overflow: nothing of roid's reached the socket while full");
        int r = roid_notify_flush(n);
        int got = recv_all(msgs, 32, &wf);
        tap_ok(r == 0 && roid_notify_pending(n) == 0 && got == 9 && wf,
               "overflow: flush sends 9 well-formed datagrams (%d, returned %d)", got, r);
        bool order = got == 9;
        for (int k = 0; order && k < 8; k++) {
                uint64_t u = usec_of(msgs[k]);
                order = strncmp(msgs[k], "RELOADING=1\n", 12) == 0 && u >= tb[k + 2] && u <= ta[k + 2];
        }
        tap_ok(order, "overflow: the 3rd..10th RELOADING=1 in order (the two oldest dropped)");
        tap_ok(got == 9 && strcmp(msgs[8], "STATUS=after the overflow") == 0, "overflow: then the status (%s)",
               got == 9 ? oneline(msgs[8]) : "-");
        roid_notify_free(n);
}

static void test_free_and_ping(void) {
        char m[256];
        drain();
        roid_notify *n = notify_at(path, NULL, 0);
        int filled = fill_socket();
        tap_ok(roid_notify_stopping(n) == -EAGAIN && roid_notify_pending(n) == 1, "STOPPING=1 on a full socket waits");
        tap_ok(drain() == filled, "... and is not in the socket yet");
        roid_notify_free(n);
        tap_ok(recv_msg(m, sizeof m) > 0 && strcmp(m, "STOPPING=1") == 0 && drain() == 0,
               "free sends the waiting STOPPING=1 (%s)", m);

        set_watchdog("500000", 0);
        roid_notify_new(&n);
        filled = fill_socket();
        tap_ok(roid_notify_watchdog_tick(n, 1, 0, 1.0, 0.5) == -EAGAIN && roid_notify_pending(n) == 1,
               "a ping on a full socket waits");
        tap_ok(roid_notify_watchdog_tick(n, 1, 0, 1.25, 0.5) == -EAGAIN && roid_notify_pending(n) == 1,
               "the next tick's ping is the same one");
        tap_ok(roid_notify_watchdog_tick(n, 1, 5, 2.0, 0.5) == 0 && roid_notify_pending(n) == 0,
               "a stalled tick withholds the ping and cancels the waiting one");
        drain();
        tap_ok(roid_notify_flush(n) == 0 && drain() == 0, "so no stale WATCHDOG=1 is sent once there is room");
        roid_notify_free(n);
        (void)filled;
}

static void test_nobody_listens(void) {
        char gone[96];
        snprintf(gone, sizeof gone, "%s/gone", dir);
        roid_notify *n = notify_at(gone, "500000", 0);
        int a = roid_notify_ready(n, "x"), b = roid_notify_status(n, "y"), c = roid_notify_reloading(n),
            d = roid_notify_watchdog_tick(n, 1, 0, 1.0, 10.0);
        tap_ok(a == -ENOENT && b == -ENOENT && c == -ENOENT && d == -ENOENT && roid_notify_pending(n) == 0,
               "no such socket: -ENOENT (%d %d %d %d), nothing kept", a, b, c, d);
        roid_notify_free(n);

        /* bound once, then closed: the file stays, nobody reads it */
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", gone);
        bind(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        roid_notify_new(&n);
        a = roid_notify_stopping(n);
        b = roid_notify_watchdog_tick(n, 1, 0, 1.0, 10.0);
        tap_ok(a == -ECONNREFUSED && b == -ECONNREFUSED && roid_notify_pending(n) == 0,
               "a closed socket: -ECONNREFUSED (%d %d), nothing kept", a, b);
        roid_notify_free(n);
        unlink(gone);
}

/* ------------------------------------------------------------ address forms */

static int bind_abstract(const char *name) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t l = strlen(name);
        memcpy(sa.sun_path + 1, name, l);
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + l)) < 0) {
                tap_diag("bind @%s: %s", name, strerror(errno));
                close(fd);
                return -1;
        }
        return fd;
}

static ssize_t recv_from(int fd, char *buf, size_t size) {
        ssize_t r = recv(fd, buf, size - 1, MSG_DONTWAIT);
        if (r >= 0)
                buf[r] = '\0';
        return r;
}

static void test_abstract(void) {
        char name[128], env[130], m[256];
        set_watchdog(NULL, 0);
        /* a short name, and the longest that fits: 107 bytes after the leading NUL */
        for (int pass = 0; pass < 2; pass++) {
                int l = snprintf(name, sizeof name, "roid-notify-test-%ld-", (long)getpid());
                if (pass)
                        for (; l < 107; l++)
                                name[l] = (char)('a' + l % 26);
                name[l] = '\0';
                int fd = bind_abstract(name);
                snprintf(env, sizeof env, "@%s", name);
                setenv("NOTIFY_SOCKET", env, 1);
                roid_notify *n = NULL;
                roid_notify_new(&n);
                int r = roid_notify_ready(n, "abstract");
                ssize_t got = fd >= 0 ? recv_from(fd, m, sizeof m) : -1;
                tap_ok(r == 0 && got > 0 && strcmp(m, "READY=1\nSTATUS=abstract") == 0,
                       "@abstract name of %d bytes: the datagram arrives (%s)", l, got > 0 ? oneline(m) : "nothing");
                roid_notify_free(n);
                close(fd);
        }
        /* one byte more does not fit sun_path: left to sd_notify, nothing overflows */
        memset(env, 'b', 109);
        env[0] = '@';
        env[109] = '\0';
        setenv("NOTIFY_SOCKET", env, 1);
        roid_notify *n = NULL;
        tap_ok(roid_notify_new(&n) == 0, "@abstract name of 108 bytes: new succeeds (falls back to sd_notify)");
        int r = roid_notify_status(n, "x");
        tap_ok(r < 0 && r != -EAGAIN && roid_notify_pending(n) == 0, "... which refuses it (%d), nothing kept", r);
        roid_notify_free(n);
}

/* Paths: the longest that fits (107 bytes and its NUL), and one that does not
 * (bound through a relative name, as sun_path cannot hold it). */
static void test_long_path(void) {
        char p[512], sub[256], m[256];
        set_watchdog(NULL, 0);
        int l = snprintf(p, sizeof p, "%s/", dir);
        while (l < 107)
                p[l++] = 'p';
        p[l] = '\0';
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, p, (size_t)l + 1);
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        bool bound = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        setenv("NOTIFY_SOCKET", p, 1);
        roid_notify *n = NULL;
        roid_notify_new(&n);
        int r = roid_notify_ready(n, NULL);
        tap_ok(bound && r == 0 && recv_from(fd, m, sizeof m) > 0 && strcmp(m, "READY=1") == 0,
               "a path of 107 bytes: the datagram arrives");
        roid_notify_free(n);
        close(fd);
        unlink(p);

        /* dir/ssss...(150)/ssss...(150): over 300 bytes */
        l = snprintf(sub, sizeof sub, "%s/", dir);
        memset(sub + l, 's', 150);
        sub[l + 150] = '\0';
        mkdir(sub, 0700);
        int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        char leaf[151];
        memset(leaf, 't', 150);
        leaf[150] = '\0';
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un rel = {.sun_family = AF_UNIX};
        memcpy(rel.sun_path, leaf, 100); /* a relative name of 100 bytes fits */
        leaf[100] = '\0';
        bound = chdir(sub) == 0 && bind(fd, (struct sockaddr *)&rel, sizeof rel) == 0;
        if (fchdir(cwd) < 0)
                bound = false;
        close(cwd);
        snprintf(p, sizeof p, "%s/%s", sub, leaf);
        setenv("NOTIFY_SOCKET", p, 1);
        n = NULL;
        tap_ok(bound && roid_notify_new(&n) == 0 && n, "a path of %zu bytes: new succeeds (falls back to sd_notify)",
               strlen(p));
        r = roid_notify_status(n, "long");
        ssize_t got = recv_from(fd, m, sizeof m);
        /* libsystemd 252 refuses such a path (-EINVAL); newer ones may reach it */
        tap_ok(((r == 0 && got > 0 && strcmp(m, "STATUS=long") == 0) || (r < 0 && r != -EAGAIN && got < 0)) &&
                       roid_notify_pending(n) == 0,
               "... either delivered or refused, never queued or overflowing (returned %d, %s)", r,
               got > 0 ? oneline(m) : "nothing arrived");
        roid_notify_free(n);
        close(fd);
        cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (chdir(sub) == 0)
                unlink(leaf);
        if (fchdir(cwd) < 0)
                tap_diag("fchdir: %s", strerror(errno));
        close(cwd);
        rmdir(sub);

        /* not absolute (sd_notify(3) wants '/' or '@'; "vsock:" takes this branch too) */
        setenv("NOTIFY_SOCKET", "notify", 1);
        n = NULL;
        tap_ok(roid_notify_new(&n) == 0 && n, "a relative NOTIFY_SOCKET: new succeeds (falls back to sd_notify)");
        r = roid_notify_status(n, "x");
        tap_ok(r < 0 && r != -EAGAIN && roid_notify_pending(n) == 0, "... which refuses it (%d), nothing kept", r);
        roid_notify_free(n);
        unsetenv("NOTIFY_SOCKET");
}

int main(void) {
        signal(SIGALRM, on_alarm);
        open_socket();
        test_without_socket();
        test_messages();
        test_watchdog_env();
        test_watchdog_policy();
        test_backlog();
        test_overflow();
        test_free_and_ping();
        test_nobody_listens();
        test_abstract();
        test_long_path();
        close_socket();
        return tap_done();
}
