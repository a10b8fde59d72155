/* test_log.c - rate-limited log lines (service/log.h): stderr goes to a file
 * and the lines written are counted and parsed.  Checks that a flooded call
 * site writes a bounded number of lines, that lines shown + suppressed counts
 * reported == calls exactly (also with a concurrent flush), that sites are
 * limited independently, that the flush reports and resets pending counts,
 * that lines are allowed again after the interval, that burst 0 is unlimited,
 * and that the pending counts are reported at exit.  Each summary carries the
 * text of the first line it counts: exactly that call's arguments, cut on a
 * UTF-8 boundary when long, and never torn under the threaded flood. */
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
        uint64_t suppressed; /* sum of the summary lines of this site */
        uint64_t summaries;
        uint64_t samples;                      /* summaries with the first line's text */
        uint64_t formats;                      /* summaries with the format instead (a race) */
        uint64_t torn;                         /* samples the checker rejected */
        uint64_t other;                        /* lines that are neither */
        uint64_t broken;                       /* lines not of the form "roid: LEVEL: ..." */
        long first_summary, first_shown_after; /* offsets, -1 if none */
        char sample[512];                      /* of the first summary with one */
} tally;

#define FIRST_SEP  "); the first: "
#define FORMAT_SEP "); format: "

/* Counts in text the lines "roid: <level>: <prefix>..." and the summaries
 * "... (test_log.c:L); the first: <prefix>..." or "...); format: <fmt>".
 * check, if not NULL, must accept each sample as a whole line of the site. */
static tally count(const char *level, const char *prefix, const char *fmt, bool (*check)(const char *sample)) {
        tally t = {.first_summary = -1, .first_shown_after = -1};
        char head[256];
        snprintf(head, sizeof head, "roid: %s: %s", level, prefix);
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
                const char *first = strstr(line, FIRST_SEP), *format = strstr(line, FORMAT_SEP);
                const char *sample = first ? first + strlen(FIRST_SEP) : NULL;
                bool mine = (sample && strncmp(sample, prefix, strlen(prefix)) == 0) ||
                            (!first && format && strcmp(format + strlen(FORMAT_SEP), fmt) == 0);
                if (sscanf(line, "roid: %15[a-z]: ", lv) != 1) {
                        t.broken++;
                } else if (strncmp(line, head, strlen(head)) == 0) {
                        t.shown++;
                        if (t.first_summary >= 0 && t.first_shown_after < 0)
                                t.first_shown_after = p - text;
                } else if (strcmp(lv, level) == 0 &&
                           sscanf(line + 8 + strlen(level), "%" SCNu64 " similar line", &n) == 1 && mine) {
                        t.suppressed += n;
                        t.summaries++;
                        if (t.first_summary < 0)
                                t.first_summary = p - text;
                        if (sample) {
                                if (!t.samples++)
                                        snprintf(t.sample, sizeof t.sample, "%s", sample);
                                if (check && !check(sample))
                                        t.torn++;
                        } else {
                                t.formats++;
                        }
                } else {
                        t.other++;
                }
                if (!nl)
                        break;
                p = nl + 1;
        }
        return t;
}

/* The number of summary lines in text and, in ret_sample, the text after
 * "the first: " of the last one. */
static int last_sample(char *ret_sample, size_t size) {
        int n = 0;
        for (char *p = text; (p = strstr(p, " similar line")) != NULL; p++) {
                char *s = strstr(p, FIRST_SEP), *nl = strchr(p, '\n');
                n++;
                if (s && (!nl || s < nl)) {
                        s += strlen(FIRST_SEP);
                        snprintf(ret_sample, size, "%.*s", (int)(nl ? nl - s : (long)strlen(s)), s);
                } else {
                        snprintf(ret_sample, size, "(none)");
                }
        }
        return n;
}

/* A UTF-8 validator independent of log.c: the length of the character at s,
 * 0 if it is not a complete, shortest-form one within n bytes. */
static size_t utf8_char(const unsigned char *s, size_t n) {
        size_t len = s[0] < 0x80                    ? 1
                     : s[0] >= 0xC2 && s[0] <= 0xDF ? 2
                     : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
                     : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4
                                                    : 0;
        if (len == 0 || len > n)
                return 0;
        for (size_t i = 1; i < len; i++)
                if ((s[i] & 0xC0) != 0x80)
                        return 0;
        return len;
}

static bool utf8_valid(const char *s, size_t n) {
        for (size_t i = 0; i < n;) {
                size_t c = utf8_char((const unsigned char *)s + i, n - i);
                if (c == 0)
                        return false;
                i += c;
        }
        return true;
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

#define SAMPLE_FMT "sample call %d says %s"
static void site_sample(int i, const char *word) {
        ROID_LOG_LIMITED(ROID_LOG_WARNING, SAMPLE_FMT, i, word);
}

#define LONG_FMT "long %s"
static void site_long(const char *s) {
        ROID_LOG_LIMITED(ROID_LOG_WARNING, LONG_FMT, s);
}

enum { THREADS = 4, PER_THREAD = 25000, BURST = 10, INTERVAL_MS = 10000 };

/* Samples of the flood site: whole "flood thread T call I" lines of a call
 * that was made (T < THREADS, or 9 in part 2), each shown once. */
static unsigned char flood_seen[10][PER_THREAD];
static uint64_t flood_repeats;

static bool flood_whole(const char *sample) {
        int th, i, end = -1;
        char again[128];
        if (sscanf(sample, "flood thread %d call %d%n", &th, &i, &end) != 2 || sample[end] != 0 || th < 0 || th > 9 ||
            (th >= THREADS && th != 9) || i < 0 || i >= PER_THREAD)
                return false;
        snprintf(again, sizeof again, FLOOD_FMT, th, i);
        if (flood_seen[th][i]++)
                flood_repeats++;
        return strcmp(again, sample) == 0;
}

static bool again_whole(const char *sample) {
        int i, end = -1;
        return sscanf(sample, "again call %d%n", &i, &end) == 1 && sample[end] == 0 && i >= 0 && i < 20;
}

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
        tally a = count("warning", "flood thread ", FLOOD_FMT, flood_whole);
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
        tap_diag("flood: %" PRIu64 " summaries with the first line, %" PRIu64 " with the format (overtaken)", a.samples,
                 a.formats);
        tap_ok(a.samples >= 1 && a.samples + a.formats == a.summaries,
               "flooded site: summaries carry a first line (%" PRIu64 " of %" PRIu64 ") or else the format", a.samples,
               a.summaries);
        tap_eq_u64(a.torn, 0, "flooded site: every sample is a whole line of a call made, none torn");
        tap_eq_u64(flood_repeats, 0, "flooded site: no call is the sample of two summaries");

        /* 2. Another site is limited on its own while the first one is full. */
        for (int i = 0; i < BURST + 7; i++) {
                site_other(i);
                site_flood(9, i);
        }
        take_log();
        tally b = count("warning", "other site ", OTHER_FMT, NULL);
        tally a2 = count("warning", "flood thread ", FLOOD_FMT, flood_whole);
        tap_eq_u64(b.shown, BURST, "second site: its own burst of lines while the first site is suppressed");
        tap_eq_u64(b.suppressed, 0, "second site: no summary before the flush");
        tap_eq_u64(a2.shown + a2.suppressed, 0, "first site: still suppressed, not yet reported");

        /* 3. The flush reports the pending counts, once. */
        roid_log_flush_suppressed();
        take_log();
        b = count("warning", "other site ", OTHER_FMT, NULL);
        a2 = count("warning", "flood thread ", FLOOD_FMT, flood_whole);
        tap_eq_u64(b.suppressed, 7, "flush: the second site's 7 suppressed lines are reported");
        tap_eq_u64(b.summaries, 1, "flush: in one line");
        tap_eq_u64(a2.suppressed, BURST + 7, "flush: the first site's as well");
        tap_ok(b.samples == 1 && strcmp(b.sample, "other site call 10") == 0,
               "flush: the second site's summary shows its first suppressed call: '%s'", b.sample);
        tap_ok(a2.samples == 1 && strcmp(a2.sample, "flood thread 9 call 0") == 0,
               "flush: the first site's shows its first call since the last summary: '%s'", a2.sample);
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
        tally c = count("error", "again call ", AGAIN_FMT, again_whole);
        uint64_t w2 = (uint64_t)((t3 - t2) * 1e3 / SHORT_MS) + 1;
        tap_ok(c.shown >= SHORT_BURST + 1 && c.shown <= SHORT_BURST * w2 + 1,
               "short interval: %" PRIu64 " lines shown of %d calls in %.1f ms (at most %d per %d ms, +1 after)",
               c.shown, RAPID + 1, (t3 - t2) * 1e3, SHORT_BURST, SHORT_MS);
        tap_eq_u64(c.shown + c.suppressed, RAPID + 1, "short interval: shown + suppressed == calls");
        tap_ok(c.torn == 0 && c.formats == 0, "short interval: each summary shows a whole line of the site (%s)",
               c.sample);
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
        tally d = count("error", "unlimited call ", FREE_FMT, NULL);
        tap_eq_u64(d.shown, 1000, "burst 0: every line shown");
        tap_eq_u64(d.summaries, 0, "burst 0: no summary");

        /* 6. A level that is not logged is neither shown nor counted. */
        roid_log_set_ratelimit(INTERVAL_MS, 1);
        for (int i = 0; i < 100; i++)
                site_debug(i);
        roid_log_flush_suppressed();
        take_log();
        tap_eq_u64(text_len, 0, "a debug site below the log level writes nothing, counts nothing");

        /* 7. The summary shows the first suppressed call's own text. */
        static const char *const words[] = {"alpha", "beta",  "gamma",  "delta", "epsilon", "zeta", "eta",    "theta",
                                            "iota",  "kappa", "lambda", "mu",    "nu",      "xi",   "omicron"};
        enum { WORDS = sizeof words / sizeof words[0] };
        char want[300], got[ROID_LOG_SAMPLE_SIZE + 64];
        roid_log_set_ratelimit(INTERVAL_MS, 2);
        for (int i = 0; i < 10; i++)
                site_sample(i, words[i]);
        roid_log_flush_suppressed();
        take_log();
        int sums = last_sample(got, sizeof got);
        snprintf(want, sizeof want, "sample call %d says %s", 2, words[2]);
        tap_ok(sums == 1 && strcmp(got, want) == 0, "sample: the summary of calls 2..9 shows call 2: '%s'", got);
        tap_ok(strstr(text, "8 similar lines suppressed") && !strchr(strstr(text, "8 similar lines"), '%'),
               "sample: with its count, and no printf format: %.*s",
               (int)strcspn(strstr(text, "8 similar") ?: "", "\n"), strstr(text, "8 similar") ?: "");
        for (int i = 10; i < WORDS; i++) /* the window is still full: all suppressed */
                site_sample(i, words[i]);
        roid_log_flush_suppressed();
        take_log();
        sums = last_sample(got, sizeof got);
        snprintf(want, sizeof want, "sample call %d says %s", 10, words[10]);
        tap_ok(sums == 1 && strcmp(got, want) == 0 && strstr(text, "5 similar lines"),
               "sample: the next summary (calls 10..14) shows call 10, not an older or later one: '%s'", got);
        site_sample(99, "two\nlines\tand\rmore");
        roid_log_flush_suppressed();
        take_log();
        sums = last_sample(got, sizeof got);
        tap_ok(sums == 1 && strcmp(got, "sample call 99 says two lines and more") == 0 &&
                       strchr(text, '\n') == text + text_len - 1,
               "sample: control characters become spaces, the summary stays one line: '%s'", got);

        /* 8. A long sample is cut on a UTF-8 character boundary, with "...". */
        static const char chars[] = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"; /* e-acute, euro, a 4-byte emoji: 9 bytes */
        roid_log_set_ratelimit(INTERVAL_MS, 1);
        site_long("shown"); /* the burst */
        take_log();
        int cuts_ok = 0, backed = 0;
        for (int pad = 0; pad < 9; pad++) {
                char arg[600], full[700];
                size_t n = 0;
                for (int k = 0; k < pad; k++)
                        arg[n++] = 'a';
                while (n + sizeof chars < sizeof arg) {
                        memcpy(arg + n, chars, sizeof chars - 1);
                        n += sizeof chars - 1;
                }
                arg[n] = 0;
                snprintf(full, sizeof full, LONG_FMT, arg);
                site_long(arg);
                roid_log_flush_suppressed();
                take_log();
                if (last_sample(got, sizeof got) != 1)
                        continue;
                size_t len = strlen(got), body = len >= 3 ? len - 3 : 0;
                size_t room = ROID_LOG_SAMPLE_SIZE - 1 - 3; /* the text before "..." */
                size_t next = utf8_char((const unsigned char *)full + body, strlen(full) - body);
                bool ok = len <= ROID_LOG_SAMPLE_SIZE - 1 && strcmp(got + body, "...") == 0 &&
                          memcmp(got, full, body) == 0 && utf8_valid(got, len) && next > 0 && body <= room &&
                          body + next > room;
                if (!ok)
                        tap_diag("pad %d: cut at %zu bytes, next character %zu bytes: '%s'", pad, body, next, got);
                cuts_ok += ok;
                backed += ok && body < room;
        }
        tap_eq_u64((uint64_t)cuts_ok, 9,
                   "long sample: 9 of 9 cut at the last whole UTF-8 character that fits, as a prefix, with '...'");
        tap_ok(backed >= 6, "long sample: %d of those cut back from the middle of a character", backed);

        /* 9. At exit the pending counts are reported. */
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
        tally e = count("error", "exit call ", EXIT_FMT, NULL);
        tap_ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exited");
        tap_eq_u64(e.shown, 1, "exit: one line shown (burst 1)");
        tap_eq_u64(e.suppressed, 4, "exit: the 4 others reported at exit");

        free(text);
        return tap_done();
}
