/* log.h - logging with syslog priorities.
 *
 * Lines go to stderr as "<N>roid: text" (sd-daemon(3) prefixes) when
 * stderr is the journal, and as "roid: level: text" otherwise.  Safe to call
 * from any thread: each line is written with one write(2).
 */
#ifndef ROID_SERVICE_LOG_H
#define ROID_SERVICE_LOG_H

#include <stdarg.h>

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

#endif
