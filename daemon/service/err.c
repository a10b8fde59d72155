#include "service/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int roid_err_set(roid_err *err, int r, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof err->msg, fmt, ap);
                va_end(ap);
        }
        return r;
}

void roid_err_prefix(roid_err *err, const char *fmt, ...) {
        if (!err)
                return;
        char pre[ROID_ERR_MAX], old[ROID_ERR_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        memcpy(old, err->msg, sizeof old);
        /* Truncation is fine: the head of the message says the most. */
        size_t n = strnlen(pre, sizeof pre - 3);
        memcpy(err->msg, pre, n);
        memcpy(err->msg + n, ": ", 2);
        n += 2;
        size_t m = strnlen(old, sizeof err->msg - n - 1);
        memcpy(err->msg + n, old, m);
        err->msg[n + m] = '\0';
}
