/* log.h - logging with syslog priorities.
 *
 * Lines go to stderr as "<N>roid: text" (sd-daemon(3) prefixes) when
 * stderr is the journal, and as "roid: level: text" otherwise.  Safe to call
 * from any thread: each line is written with one write(2).
 *
 * Lines caused by outside input (a rejected message, a failing frame) use
 * ROID_LOG_LIMITED: each such call site shows at most `burst` lines per
 * `interval` (default 10 per 5 s, monotonic clock); calls beyond that only
 * increment the site's counter (no formatting, no write, no lock), except
 * the first suppressed one of each summary, which formats its text into the
 * site's sample.  Nothing is lost silently: the count is reported as one line
 *   "N similar lines suppressed in the last T s (file.c:LINE); the first: <text>"
 * at the same level, before the site's next shown line, or by
 * roid_log_flush_suppressed() (the daemon's status timer, and at exit).
 * <text> is the first suppressed line of those N, cut to at most
 * ROID_LOG_SAMPLE_SIZE - 1 bytes on a UTF-8 character boundary ("..." at the
 * end when cut), control characters (newlines) replaced by spaces.  When the
 * summary overtook that line's formatting (another thread), it reads
 * "...; format: <printf format of the site>" instead.
 * Startup, series-level and reload lines use plain roid_log: unlimited.
 */
#ifndef ROID_SERVICE_LOG_H
#define ROID_SERVICE_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

enum {
        ROID_LOG_ERR = 3,
        ROID_LOG_WARNING = 4,
        ROID_LOG_NOTICE = 5,
        ROID_LOG_INFO = 6,
        ROID_LOG_DEBUG = 7,
};

/* Lines above this priority (numerically greater) are dropped. Default INFO. */
void roid_log_set_level(int level);
int roid_log_get_level(void);
/* Force the "<N>" prefix form (true) or the plain form (false).  By default
 * the prefix form is used when JOURNAL_STREAM names our stderr. */
void roid_log_set_prefix(int on);

void roid_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void roid_logv(int level, const char *fmt, va_list ap);

/* ---- rate-limited lines ---- */

#define ROID_LOG_RATELIMIT_INTERVAL_MS 5000u
#define ROID_LOG_RATELIMIT_BURST       10u
#define ROID_LOG_RATELIMIT_BURST_MAX   ((1u << 20) - 1) /* larger bursts are clamped */
#define ROID_LOG_MAX_LIMITERS          256              /* call sites registered for the flush */
#define ROID_LOG_SAMPLE_SIZE           256              /* bytes of a summary's first line, with its NUL */

/* One per call site, static, zero-initialised but for the constant fields.
 * Private: use ROID_LOG_LIMITED. */
typedef struct roid_log_limiter {
        _Atomic uint64_t window;           /* start of the window in ms << 20 | lines shown in it; 0: none yet */
        _Atomic uint64_t suppressed;       /* summaries made << 44 | calls suppressed since the last one */
        _Atomic uint64_t since_ms;         /* when the first of them was suppressed */
        _Atomic int state;                 /* 0 new, 1 registering, 2 registered (or the table was full) */
        _Atomic int sample_lock;           /* spin lock: the first suppressed call of a summary, and the reporter */
        uint64_t sample_for;               /* under sample_lock: 1 + the summary sample belongs to; 0: none */
        char sample[ROID_LOG_SAMPLE_SIZE]; /* under sample_lock */
        int level;
        const char *fmt, *file;
        int line;
} roid_log_limiter;

/* Sets the policy of all call sites: at most burst lines per interval_ms
 * each; burst 0 means unlimited.  For tests; the defaults are above. */
void roid_log_set_ratelimit(unsigned interval_ms, unsigned burst);

/* Reports, one line each, the suppressed counts of the call sites that have
 * any.  Any thread; also runs at exit (atexit) once a limited site was used. */
void roid_log_flush_suppressed(void);

void roid_log_limited(roid_log_limiter *l, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* level and fmt must be constants (they are kept for the summary lines). */
#define ROID_LOG_LIMITED(lvl, format, ...)                                                                             \
        do {                                                                                                           \
                static roid_log_limiter roid_log_limiter_ = {                                                          \
                        .level = (lvl), .fmt = (format), .file = __FILE__, .line = __LINE__};                          \
                roid_log_limited(&roid_log_limiter_, (lvl), format, ##__VA_ARGS__);                                    \
        } while (0)

#endif
