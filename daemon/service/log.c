#include "service/log.h"

#include <inttypes.h>
#include <sched.h>
#include <stdbool.h>
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
 * read, a load and a fetch_add.  The suppressed count shares a word with the
 * number of summaries made; the reporter takes the count and starts the next
 * summary with one CAS, so each count is reported exactly once whoever (the
 * site, the flush) reports it, and each fetch_add learns which summary it
 * counts for.
 *
 * The sample: the call whose fetch_add found a count of 0 is the first of its
 * summary; it formats its text into l->sample under l->sample_lock, tagged
 * with that summary.  The reporter, under the same lock, takes the count and
 * the sample if its tag is this summary's.  A first call whose reporter came
 * before it finds its sample outdated (the summary named the format instead):
 * it never shows up in a later summary, and never replaces a newer sample.
 * Only these two rare parties take the lock, never while holding it or
 * logging, so the same thread cannot deadlock on it.  The count can hold
 * 2^44 calls between two summaries (2 days at 10^8 calls/s; a summary comes
 * at least every interval while the site is called), the summary number
 * wraps at 2^20: a first call that long overtaken is not a concern. */

#define SHOWN_BITS   20
#define SHOWN_MASK   ((UINT64_C(1) << SHOWN_BITS) - 1)
#define COUNT_BITS   44
#define COUNT_MASK   ((UINT64_C(1) << COUNT_BITS) - 1)
#define SUMMARY_MASK ((UINT64_C(1) << (64 - COUNT_BITS)) - 1)

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

static void sample_lock(roid_log_limiter *l) {
        for (unsigned spins = 0;; spins++) {
                if (atomic_load_explicit(&l->sample_lock, memory_order_relaxed) == 0 &&
                    atomic_exchange_explicit(&l->sample_lock, 1, memory_order_acquire) == 0)
                        return;
                if (spins >= 100) /* the holder was preempted: it copies or formats 256 bytes at most */
                        sched_yield();
        }
}

static void sample_unlock(roid_log_limiter *l) {
        atomic_store_explicit(&l->sample_lock, 0, memory_order_release);
}

/* Formats into s (ROID_LOG_SAMPLE_SIZE bytes) as one line of valid length;
 * false if vsnprintf failed. */
static bool format_sample(char *s, const char *fmt, va_list ap) {
        int m = vsnprintf(s, ROID_LOG_SAMPLE_SIZE, fmt, ap);
        if (m < 0)
                return false;
        size_t len = (size_t)m;
        if (len >= ROID_LOG_SAMPLE_SIZE) {
                /* s holds SIZE - 1 bytes of the text: cut before a character
                 * that does not fit with the "...", at its lead byte. */
                len = ROID_LOG_SAMPLE_SIZE - 4;
                for (int k = 0; k < 3 && len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80; k++)
                        len--;
                memcpy(s + len, "...", 4);
                len += 3;
        }
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) /* keeps the summary one line */
                        s[i] = ' ';
        return true;
}

/* The first suppressed call of a summary (numbered mod 2^20). */
static void keep_sample(roid_log_limiter *l, uint64_t summary, const char *fmt, va_list ap) {
        sample_lock(l);
        /* An older first call never replaces a newer one's sample. */
        if (l->sample_for == 0 || ((summary - (l->sample_for - 1)) & SUMMARY_MASK) <= SUMMARY_MASK / 2)
                l->sample_for = format_sample(l->sample, fmt, ap) ? summary + 1 : 0;
        sample_unlock(l);
}

static void report(roid_log_limiter *l, int level, uint64_t n, uint64_t now, const char *sample) {
        const char *base = strrchr(l->file, '/');
        uint64_t since = atomic_load_explicit(&l->since_ms, memory_order_relaxed);
        double t = since && since <= now ? (double)(now - since) / 1e3 : 0;
        roid_log(level, "%" PRIu64 " similar line%s suppressed in the last %.1f s (%s:%d); %s: %s", n,
                 n == 1 ? "" : "s", t, base ? base + 1 : l->file, l->line, sample ? "the first" : "format",
                 sample ? sample : l->fmt);
}

static void report_pending(roid_log_limiter *l, int level, uint64_t now) {
        uint64_t w = atomic_load_explicit(&l->suppressed, memory_order_relaxed), n;
        if ((w & COUNT_MASK) == 0)
                return;
        char sample[ROID_LOG_SAMPLE_SIZE];
        bool have = false;
        sample_lock(l);
        do {
                n = w & COUNT_MASK;
        } while (n && !atomic_compare_exchange_weak(&l->suppressed, &w,
                                                    ((w >> COUNT_BITS) + 1) << COUNT_BITS)); /* the next summary */
        if (n && l->sample_for == (w >> COUNT_BITS) + 1) {
                memcpy(sample, l->sample, sizeof sample);
                have = true;
        }
        sample_unlock(l);
        if (n) /* logged outside the lock */
                report(l, level, n, now, have ? sample : NULL);
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
                                uint64_t s = atomic_fetch_add(&l->suppressed, 1);
                                if ((s & COUNT_MASK) == 0) {
                                        atomic_store_explicit(&l->since_ms, now, memory_order_relaxed);
                                        va_list ap;
                                        va_start(ap, fmt);
                                        keep_sample(l, s >> COUNT_BITS, fmt, ap);
                                        va_end(ap);
                                }
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
