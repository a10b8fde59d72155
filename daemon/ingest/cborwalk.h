/* cborwalk.h - a zero-copy cursor over one CBOR buffer, one item header at a
 * time, built on libcbor's stateless cbor_stream_decode().
 *
 * Nothing is allocated and nothing is copied: string items point into the
 * buffer.  The cursor never reads past the buffer; a cut item is reported as
 * -EBADMSG "truncated".  roid_cw_skip() steps over one whole item (with all
 * nested items), bounded by the cursor's depth limit.
 *
 * Ownership: the cursor borrows the buffer, which must outlive it and every
 * item read from it.  Threads: a cursor is used by one thread at a time.
 */
#ifndef ROID_INGEST_CBORWALK_H
#define ROID_INGEST_CBORWALK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "service/err.h"

/* Depth limit the cursor enforces whatever the caller asks for, so that the
 * skip stack can live on the C stack. */
#define ROID_CW_DEPTH_CAP 256

typedef enum {
        ROID_CW_UINT = 1,
        ROID_CW_NEGINT, /* value is -1 - u */
        ROID_CW_BSTR,
        ROID_CW_TSTR,
        ROID_CW_ARRAY,
        ROID_CW_MAP,
        ROID_CW_TAG,
        ROID_CW_FLOAT, /* half, single or double, widened to double */
        ROID_CW_BOOL,
        ROID_CW_NULL,
        ROID_CW_UNDEF,
        ROID_CW_SIMPLE, /* other simple values (u holds the number) */
        ROID_CW_BREAK,  /* end of an indefinite-length item */
} roid_cw_type;

typedef struct {
        roid_cw_type type;
        bool indefinite;      /* strings, arrays, maps */
        uint64_t u;           /* integer value, tag number, array/map length */
        double f;             /* floats */
        bool b;               /* booleans */
        const uint8_t *ptr;   /* definite strings: the bytes, inside the buffer */
        size_t len;           /* definite strings: their length */
        const uint8_t *start; /* first byte of the item's header */
} roid_cw_item;

typedef struct {
        const uint8_t *buf, *pos, *end;
        unsigned max_depth;
} roid_cw_cursor;

/* Iterates the elements of an array or map whose header was just read. */
typedef struct {
        bool indefinite;
        bool map;
        uint64_t left; /* definite: elements (map: pairs) still to come */
} roid_cw_iter;

void roid_cw_init(roid_cw_cursor *c, const uint8_t *buf, size_t size, unsigned max_depth);

/* Reads the next item header.  For a definite string the whole string is
 * consumed and ret->ptr/len point at its bytes; for arrays, maps, tags and
 * indefinite strings only the header is consumed. */
int roid_cw_next(roid_cw_cursor *c, roid_cw_item *ret, roid_err *err);

/* Skips one whole item (header and everything nested in it). */
int roid_cw_skip(roid_cw_cursor *c, roid_err *err);

/* Skips what follows a header just read by roid_cw_next() (array or map
 * elements, a tag's content, indefinite string chunks); no-op for others. */
int roid_cw_skip_rest(roid_cw_cursor *c, const roid_cw_item *it, roid_err *err);

/* Starts iterating an array or map item (header just read). */
void roid_cw_iter_init(roid_cw_iter *ret, const roid_cw_item *it);

/* Returns 1 if another element (map: key/value pair) follows, 0 at the end
 * (the break of an indefinite item is consumed), or a negative errno. */
int roid_cw_iter_next(roid_cw_cursor *c, roid_cw_iter *it, roid_err *err);

static inline size_t roid_cw_offset(const roid_cw_cursor *c) {
        return (size_t)(c->pos - c->buf);
}

static inline bool roid_cw_at_end(const roid_cw_cursor *c) {
        return c->pos >= c->end;
}

/* A short description of an item for error texts ("tag 40", "array(3)"),
 * written into buf. */
const char *roid_cw_describe(const roid_cw_item *it, char *buf, size_t size);

#endif
