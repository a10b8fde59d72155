#include "service/log.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = ROID_LOG_INFO;
static _Atomic int log_prefix = -1; /* -1: decide from JOURNAL_STREAM */

void roid_log_set_level(int level) {
        log_level = level;
}

int roid_log_get_level(void) {
        return log_level;
}

void roid_log_set_prefix(int on) {
        log_prefix = on ? 1 : 0;
}

/* systemd sets JOURNAL_STREAM=dev:ino for the stream our stderr is on. */
static int stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return 0;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void roid_logv(int level, const char *fmt, va_list ap) {
        static const char *const names[8] = {"emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"};
        if (level > log_level)
                return;
        if (log_prefix < 0)
                log_prefix = stderr_is_journal();
        char line[1024];
        int n;
        if (log_prefix)
                n = snprintf(line, sizeof line, "<%d>roid: ", level);
        else
                n = snprintf(line, sizeof line, "roid: %s: ", names[level & 7]);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
        size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        if (len > sizeof line - 2)
                len = sizeof line - 2;
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len); /* one write: lines never interleave */
        (void)w;
}

void roid_log(int level, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        roid_logv(level, fmt, ap);
        va_end(ap);
}

/* ---- rate-limited lines ----
 *
 * A site's window (start and lines shown) is one 64-bit word changed by CAS,
 * so the decision is exact without a lock; a suppressed call costs a clock
 * read, a load and a fetch_add.  Suppressed counts are taken with an exchange,
 * so each is reported exactly once whoever (the site, the flush) reports it. */

#define SHOWN_BITS 20
#define SHOWN_MASK ((UINT64_C(1) << SHOWN_BITS) - 1)

static _Atomic unsigned rl_interval_ms = ROID_LOG_RATELIMIT_INTERVAL_MS;
static _Atomic unsigned rl_burst = ROID_LOG_RATELIMIT_BURST;
static roid_log_limiter *_Atomic limiters[ROID_LOG_MAX_LIMITERS];
static _Atomic unsigned n_limiters; /* may pass the table size: those beyond are not in it */

void roid_log_set_ratelimit(unsigned interval_ms, unsigned burst) {
        rl_interval_ms = interval_ms;
        rl_burst = burst > ROID_LOG_RATELIMIT_BURST_MAX ? ROID_LOG_RATELIMIT_BURST_MAX : burst;
}

/* Milliseconds of the monotonic clock: 44 bits of them last 500 years. */
static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void report(roid_log_limiter *l, int level, uint64_t n, uint64_t now) {
        const char *base = strrchr(l->file, '/');
        uint64_t since = atomic_load_explicit(&l->since_ms, memory_order_relaxed);
        double t = since && since <= now ? (double)(now - since) / 1e3 : 0;
        roid_log(level, "%" PRIu64 " similar line%s suppressed in the last %.1f s (%s:%d): %s", n, n == 1 ? "" : "s", t,
                 base ? base + 1 : l->file, l->line, l->fmt);
}

static void report_pending(roid_log_limiter *l, int level, uint64_t now) {
        if (atomic_load_explicit(&l->suppressed, memory_order_relaxed) == 0)
                return;
        uint64_t n = atomic_exchange(&l->suppressed, 0);
        if (n)
                report(l, level, n, now);
}

void roid_log_flush_suppressed(void) {
        unsigned n = atomic_load(&n_limiters);
        if (n > ROID_LOG_MAX_LIMITERS)
                n = ROID_LOG_MAX_LIMITERS;
        uint64_t now = now_ms();
        for (unsigned i = 0; i < n; i++) {
                roid_log_limiter *l = atomic_load_explicit(&limiters[i], memory_order_acquire);
                if (l) /* NULL: its registration is under way */
                        report_pending(l, l->level, now);
        }
}

static void flush_at_exit(void) {
        roid_log_flush_suppressed();
}

static void register_limiter(roid_log_limiter *l) {
        int expect = 0;
        if (!atomic_compare_exchange_strong(&l->state, &expect, 1))
                return; /* registered, or another thread is at it */
        unsigned i = atomic_fetch_add(&n_limiters, 1);
        if (i == 0)
                atexit(flush_at_exit);
        if (i < ROID_LOG_MAX_LIMITERS)
                atomic_store_explicit(&limiters[i], l, memory_order_release);
        else if (i == ROID_LOG_MAX_LIMITERS)
                roid_log(ROID_LOG_WARNING,
                         "log: more than %d rate-limited call sites (%s:%d is one too many): the suppressed lines "
                         "of those are reported only before their next line",
                         ROID_LOG_MAX_LIMITERS, l->file, l->line);
        atomic_store(&l->state, 2);
}

void roid_log_limited(roid_log_limiter *l, int level, const char *fmt, ...) {
        if (level > log_level)
                return;
        if (atomic_load_explicit(&l->state, memory_order_relaxed) != 2)
                register_limiter(l);
        unsigned burst = atomic_load_explicit(&rl_burst, memory_order_relaxed);
        uint64_t now = now_ms();
        if (burst) {
                uint64_t interval = atomic_load_explicit(&rl_interval_ms, memory_order_relaxed);
                uint64_t w = atomic_load_explicit(&l->window, memory_order_relaxed), nw;
                do {
                        /* Signed: a thread that read the clock earlier may see a newer window. */
                        int64_t age = (int64_t)(now - (w >> SHOWN_BITS));
                        if (w == 0 || age >= (int64_t)interval)
                                nw = now << SHOWN_BITS | 1;
                        else if ((w & SHOWN_MASK) < burst)
                                nw = w + 1;
                        else {
                                if (atomic_fetch_add(&l->suppressed, 1) == 0)
                                        atomic_store_explicit(&l->since_ms, now, memory_order_relaxed);
                                return;
                        }
                } while (!atomic_compare_exchange_weak_explicit(&l->window, &w, nw, memory_order_relaxed,
                                                                memory_order_relaxed));
        }
        report_pending(l, level, now);
        va_list ap;
        va_start(ap, fmt);
        roid_logv(level, fmt, ap);
        va_end(ap);
}
