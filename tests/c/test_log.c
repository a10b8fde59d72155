/* test_log.c - rate-limited log lines (service/log.h): stderr goes to a file
 * and the lines written are counted and parsed.  Checks that a flooded call
 * site writes a bounded number of lines, that lines shown + suppressed counts
 * reported == calls exactly (also with a concurrent flush), that sites are
 * limited independently, that the flush reports and resets pending counts,
 * that lines are allowed again after the interval, that burst 0 is unlimited,
 * and that the pending counts are reported at exit. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "service/log.h"
#include "tap.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0)
                ;
}

/* ---- the log file ---- */

static off_t log_pos;
static char *text;
static size_t text_len;

/* The lines written since the last call, in text (NUL-terminated). */
static void take_log(void) {
        off_t end = lseek(STDERR_FILENO, 0, SEEK_END);
        size_t n = (size_t)(end - log_pos);
        free(text);
        text = malloc(n + 1);
        size_t got = 0;
        while (got < n) {
                ssize_t r = pread(STDERR_FILENO, text + got, n - got, log_pos + (off_t)got);
                if (r <= 0)
                        break;
                got += (size_t)r;
        }
        text[got] = 0;
        text_len = got;
        log_pos = end;
}

typedef struct {
        uint64_t shown;      /* lines starting with prefix */
        uint64_t suppressed; /* sum of the summary lines naming fmt */
        uint64_t summaries;
        uint64_t other;                        /* lines that are neither */
        uint64_t broken;                       /* lines not of the form "roid: LEVEL: ..." */
        long first_summary, first_shown_after; /* offsets, -1 if none */
} tally;

/* Counts in text the lines "roid: <level>: <prefix>..." and the summaries
 * whose text ends in ": <fmt>". */
static tally count(const char *level, const char *prefix, const char *fmt) {
        tally t = {.first_summary = -1, .first_shown_after = -1};
        char head[256], tail[512];
        snprintf(head, sizeof head, "roid: %s: %s", level, prefix);
        snprintf(tail, sizeof tail, "): %s", fmt);
        for (char *p = text; *p;) {
                char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t)(nl - p) : strlen(p);
                char line[2048];
                if (len >= sizeof line)
                        len = sizeof line - 1;
                memcpy(line, p, len);
                line[len] = 0;
                char lv[16];
                uint64_t n;
                size_t tl = strlen(tail);
                if (sscanf(line, "roid: %15[a-z]: ", lv) != 1) {
                        t.broken++;
                } else if (strncmp(line, head, strlen(head)) == 0) {
                        t.shown++;
                        if (t.first_summary >= 0 && t.first_shown_after < 0)
                                t.first_shown_after = p - text;
                } else if (strcmp(lv, level) == 0 &&
                           sscanf(line + 8 + strlen(level), "%" SCNu64 " similar line", &n) == 1 && len >= tl &&
                           strcmp(line + len - tl, tail) == 0) {
                        t.suppressed += n;
                        t.summaries++;
                        if (t.first_summary < 0)
                                t.first_summary = p - text;
                } else {
                        t.other++;
                }
                if (!nl)
                        break;
                p = nl + 1;
        }
        return t;
}

/* ---- call sites ---- */

#define FLOOD_FMT "flood thread %d call %d"
static void site_flood(int th, int i) {
        ROID_LOG_LIMITED(ROID_LOG_WARNING, FLOOD_FMT, th, i);
}

#define OTHER_FMT "other site call %d"
static void site_other(int i) {
        ROID_LOG_LIMITED(ROID_LOG_WARNING, OTHER_FMT, i);
}

#define AGAIN_FMT "again call %d"
static void site_again(int i) {
        ROID_LOG_LIMITED(ROID_LOG_ERR, AGAIN_FMT, i);
}

#define FREE_FMT "unlimited call %d"
static void site_free(int i) {
        ROID_LOG_LIMITED(ROID_LOG_ERR, FREE_FMT, i);
}

#define DEBUG_FMT "debug call %d"
static void site_debug(int i) {
        ROID_LOG_LIMITED(ROID_LOG_DEBUG, DEBUG_FMT, i);
}

#define EXIT_FMT "exit call %d"
static void site_exit(int i) {
        ROID_LOG_LIMITED(ROID_LOG_ERR, EXIT_FMT, i);
}

enum { THREADS = 4, PER_THREAD = 25000, BURST = 10, INTERVAL_MS = 10000 };

static atomic_int flooding;
static uint64_t flushes;

static void *flood_main(void *arg) {
        int th = (int)(intptr_t)arg;
        for (int i = 0; i < PER_THREAD; i++)
                site_flood(th, i);
        return NULL;
}

/* Flushes as often as it can while the floods run: each count must still be
 * reported exactly once. */
static void *flusher_main(void *arg) {
        (void)arg;
        while (atomic_load(&flooding)) {
                roid_log_flush_suppressed();
                flushes++;
                sched_yield();
        }
        return NULL;
}

int main(void) {
        FILE *f = tmpfile();
        if (!f) {
                tap_ok(false, "a temporary file for stderr");
                return tap_done();
        }
        fflush(stderr);
        dup2(fileno(f), STDERR_FILENO);
        roid_log_set_prefix(0);
        roid_log_set_level(ROID_LOG_INFO);
        roid_log_set_ratelimit(INTERVAL_MS, BURST);

        /* 1. One site flooded from 4 threads, with a 5th flushing meanwhile. */
        pthread_t th[THREADS], fl;
        atomic_store(&flooding, 1);
        double t0 = now_s();
        pthread_create(&fl, NULL, flusher_main, NULL);
        for (int i = 0; i < THREADS; i++)
                pthread_create(&th[i], NULL, flood_main, (void *)(intptr_t)i);
        for (int i = 0; i < THREADS; i++)
                pthread_join(th[i], NULL);
        double t1 = now_s();
        atomic_store(&flooding, 0);
        pthread_join(fl, NULL);
        roid_log_flush_suppressed();
        take_log();
        tally a = count("warning", "flood thread ", FLOOD_FMT);
        const uint64_t calls = (uint64_t)THREADS * PER_THREAD;
        /* Windows begin at a shown line, no earlier than t0: at most
         * elapsed / interval + 1 of them. */
        uint64_t windows = (uint64_t)((t1 - t0) * 1e3 / INTERVAL_MS) + 1;
        tap_diag("flood: %" PRIu64 " calls in %.3f s (%.0f ns each): %" PRIu64 " shown, %" PRIu64
                 " suppressed in %" PRIu64 " summary lines, %zu bytes of log",
                 calls, t1 - t0, (t1 - t0) * 1e9 / (double)calls * THREADS, a.shown, a.suppressed, a.summaries,
                 text_len);
        tap_ok(a.shown >= BURST && a.shown <= BURST * windows,
               "flooded site: %" PRIu64 " lines shown, between the burst %d and %d per window x %" PRIu64 " window(s)",
               a.shown, BURST, BURST, windows);
        tap_eq_u64(a.shown + a.suppressed, calls, "flooded site: shown + reported suppressed == calls, exactly");
        tap_ok(a.summaries >= 1 && a.summaries <= flushes + 1 + a.shown,
               "flooded site: %" PRIu64 " summary lines, at most one per flush (%" PRIu64 ") or shown line",
               a.summaries, flushes);
        tap_eq_u64(a.broken + a.other, 0, "every line whole and from this site");

        /* 2. Another site is limited on its own while the first one is full. */
        for (int i = 0; i < BURST + 7; i++) {
                site_other(i);
                site_flood(9, i);
        }
        take_log();
        tally b = count("warning", "other site ", OTHER_FMT);
        tally a2 = count("warning", "flood thread ", FLOOD_FMT);
        tap_eq_u64(b.shown, BURST, "second site: its own burst of lines while the first site is suppressed");
        tap_eq_u64(b.suppressed, 0, "second site: no summary before the flush");
        tap_eq_u64(a2.shown + a2.suppressed, 0, "first site: still suppressed, not yet reported");

        /* 3. The flush reports the pending counts, once. */
        roid_log_flush_suppressed();
        take_log();
        b = count("warning", "other site ", OTHER_FMT);
        a2 = count("warning", "flood thread ", FLOOD_FMT);
        tap_eq_u64(b.suppressed, 7, "flush: the second site's 7 suppressed lines are reported");
        tap_eq_u64(b.summaries, 1, "flush: in one line");
        tap_eq_u64(a2.suppressed, BURST + 7, "flush: the first site's as well");
        tap_ok(strstr(text, "test_log.c:") != NULL, "the summary names the call site: %.*s", (int)strcspn(text, "\n"),
               text);
        roid_log_flush_suppressed();
        take_log();
        tap_eq_u64(text_len, 0, "a second flush has nothing to report");

        /* 4. After the interval, lines are allowed again, preceded by the count. */
        enum { SHORT_MS = 50, SHORT_BURST = 3, RAPID = 20 };
        roid_log_set_ratelimit(SHORT_MS, SHORT_BURST);
        double t2 = now_s();
        for (int i = 0; i < RAPID; i++)
                site_again(i);
        double t3 = now_s();
        sleep_ms(4 * SHORT_MS);
        site_again(RAPID);
        take_log();
        tally c = count("error", "again call ", AGAIN_FMT);
        uint64_t w2 = (uint64_t)((t3 - t2) * 1e3 / SHORT_MS) + 1;
        tap_ok(c.shown >= SHORT_BURST + 1 && c.shown <= SHORT_BURST * w2 + 1,
               "short interval: %" PRIu64 " lines shown of %d calls in %.1f ms (at most %d per %d ms, +1 after)",
               c.shown, RAPID + 1, (t3 - t2) * 1e3, SHORT_BURST, SHORT_MS);
        tap_eq_u64(c.shown + c.suppressed, RAPID + 1, "short interval: shown + suppressed == calls");
        tap_ok(strstr(text, "again call 20\n") != NULL, "a call after the interval is shown");
        if (c.suppressed)
                tap_ok(c.first_summary >= 0 && c.first_shown_after >= 0, "and the suppressed count comes before it");
        else
                tap_skip("nothing was suppressed (the machine was slower than 50 ms per 20 calls)");

        /* 5. Burst 0: unlimited. */
        roid_log_set_ratelimit(SHORT_MS, 0);
        for (int i = 0; i < 1000; i++)
                site_free(i);
        roid_log_flush_suppressed();
        take_log();
        tally d = count("error", "unlimited call ", FREE_FMT);
        tap_eq_u64(d.shown, 1000, "burst 0: every line shown");
        tap_eq_u64(d.summaries, 0, "burst 0: no summary");

        /* 6. A level that is not logged is neither shown nor counted. */
        roid_log_set_ratelimit(INTERVAL_MS, 1);
        for (int i = 0; i < 100; i++)
                site_debug(i);
        roid_log_flush_suppressed();
        take_log();
        tap_eq_u64(text_len, 0, "a debug site below the log level writes nothing, counts nothing");

        /* 7. At exit the pending counts are reported. */
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                for (int i = 0; i < 5; i++)
                        site_exit(i);
                exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        take_log();
        tally e = count("error", "exit call ", EXIT_FMT);
        tap_ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exited");
        tap_eq_u64(e.shown, 1, "exit: one line shown (burst 1)");
        tap_eq_u64(e.suppressed, 4, "exit: the 4 others reported at exit");

        free(text);
        return tap_done();
}
