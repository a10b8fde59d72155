#include "service/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
