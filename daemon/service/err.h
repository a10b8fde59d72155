/* err.h - error descriptions that travel with a negative errno.
 *
 * Functions that can fail on outside input return a negative errno and, when
 * given a non-NULL roid_err, write one line saying what was wrong (which
 * field, which value, which limit).  The caller adds context and logs it.
 *
 * Ownership: a roid_err is a fixed buffer the caller owns (no allocation).
 * Threads: one roid_err per thread; the functions are reentrant.
 */
#ifndef ROID_SERVICE_ERR_H
#define ROID_SERVICE_ERR_H

#include <errno.h>

#define ROID_ERR_MAX 256

typedef struct {
        char msg[ROID_ERR_MAX];
} roid_err;

/* Sets err->msg (if err is non-NULL) and returns r, so callers can write
 * "return roid_err_set(err, -EBADMSG, "...", ...);". */
int roid_err_set(roid_err *err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to err->msg. */
void roid_err_prefix(roid_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
