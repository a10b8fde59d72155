/* stream_internal.h - the two message parsers behind parse.h; internal to
 * daemon/ingest (parse.c dispatches, tests go through roid_parse()).
 *
 * Both fill a caller-provided roid_msg that the caller zeroed; on failure it
 * may be half-filled and must be discarded (parse.c copies it out only on
 * success).  Ownership: the caller owns the message and the V1 arena; the
 * message owns no memory (message.h).
 * Threads: one thread at a time per arena / message.
 */
#ifndef ROID_INGEST_STREAM_INTERNAL_H
#define ROID_INGEST_STREAM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/err.h"
#include "service/limits.h"

/* Stream V2: one CBOR buffer. */
int stream2_parse_internal(const uint8_t *buf, size_t size, const roid_limits *lim, roid_msg *m, roid_err *err);

/* Bump allocator that cJSON allocates from while a V1 message is parsed.
 * Reset before every JSON part; grown (bounded by the part size, itself
 * bounded by max_json_bytes) only when a part needs more than before, and
 * released after a message that grew it beyond 1 MiB. */
typedef struct {
        uint8_t *buf;
        size_t cap, used;
} stream1_arena;

void stream1_arena_free_internal(stream1_arena *a);

/* Stream V1: a multipart message.  An appendix part (user data) is not
 * parsed, but is held to the JSON parts' max_json_bytes, UTF-8 and max_depth
 * like them; one that fails is left out (m->user_data_ignored says why). */
int stream1_parse_internal(stream1_arena *a, const roid_part *parts, size_t n_parts, const roid_limits *lim,
                           roid_msg *m, roid_err *err);

#endif
