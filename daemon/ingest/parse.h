/* parse.h - recognise and parse one detector stream message, V1 or V2.
 *
 * V2: one part, a CBOR map (with or without the self-described tag 55799),
 * parsed by a streaming walk over libcbor's decoder: nothing is copied, blobs
 * point into the part.  V1: multipart, first part JSON with "htype", parsed
 * with cJSON into the parser's arena (reset per message, so steady state
 * allocates nothing).
 *
 * Lifecycle: roid_parser_new() / roid_parser_free().  A parser is used by one
 * thread at a time; the roid_msg it fills is valid until the next
 * roid_parse() on the same parser or until the parts are released.
 *
 * Errors: -EBADMSG malformed (truncated, bad JSON, missing field, wrong
 * tag), -EMSGSIZE over a limit or size mismatch, -ENOTSUP unknown message
 * type / htype / compression / dtype; err says which field and why.
 */
#ifndef ROID_INGEST_PARSE_H
#define ROID_INGEST_PARSE_H

#include "ingest/message.h"
#include "service/err.h"
#include "service/limits.h"

typedef struct roid_parser roid_parser;

int roid_parser_new(const roid_limits *lim, roid_parser **ret);
void roid_parser_free(roid_parser *p);
/* The limits of the following roid_parse() calls (the ingest keeps them to
 * those of the series the message belongs to). */
void roid_parser_set_limits(roid_parser *p, const roid_limits *lim);

/* Which format the message is in, from its first bytes; ROID_FMT_NONE if
 * neither. */
roid_format roid_detect_format(const roid_part *parts, size_t n_parts);

int roid_parse(roid_parser *p, const roid_part *parts, size_t n_parts, roid_msg *ret, roid_err *err);

#endif
