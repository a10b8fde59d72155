/* h5err.c - see h5err.h. */
#include "service/h5err.h"

#include <hdf5.h>
#include <stdio.h>
#include <string.h>

__attribute__((constructor)) static void no_exit_cleanup(void) {
        H5dont_atexit();
}

typedef struct {
        char *buf;
        size_t size;
} reason_buf;

/* Walked from the API call down: the last entry with a description is the
 * innermost.  "file write failed: time = ..., filename = ..., errno = 28,
 * error message = '...'" -> "file write failed: No space left on device". */
static herr_t innermost(unsigned n, const H5E_error2_t *e, void *ctx) {
        (void)n;
        reason_buf *rb = ctx;
        if (!e->desc || !e->desc[0])
                return 0;
        const char *en = strstr(e->desc, "errno = ");
        int code;
        if (en && sscanf(en, "errno = %d", &code) == 1) {
                int head = (int)strcspn(e->desc, ":");
                if (en - e->desc < head) /* "unable to extend file properly, errno = 27, ..." */
                        head = (int)(en - e->desc);
                while (head > 0 && (e->desc[head - 1] == ',' || e->desc[head - 1] == ' '))
                        head--;
                snprintf(rb->buf, rb->size, "%.*s: %s", head, e->desc, strerror(code));
        } else {
                snprintf(rb->buf, rb->size, "%s", e->desc);
        }
        return 0;
}

const char *roid_h5_reason(char *buf, size_t size) {
        if (!size)
                return buf;
        reason_buf rb = {buf, size};
        snprintf(buf, size, "unknown HDF5 error");
        H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, innermost, &rb);
        for (char *c = buf; *c; c++)
                if ((unsigned char)*c < ' ')
                        *c = ' ';
        return buf;
}
