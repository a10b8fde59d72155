/* sim_cbor.h - append-only CBOR writer over libcbor's encoding functions,
 * writing into a caller's fixed buffer, plus a JSON (cJSON) to CBOR converter.
 *
 * Overflow is sticky: once an item does not fit, cw->overflow is set, nothing
 * more is written and the caller checks once at the end.
 * Ownership: the buffer is the caller's.  Threads: one writer per thread.
 */
#ifndef ROID_TOOLS_SIM_CBOR_H
#define ROID_TOOLS_SIM_CBOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct {
        uint8_t *buf;
        size_t cap, len;
        bool overflow;
} sim_cw;

void sim_cw_init(sim_cw *w, uint8_t *buf, size_t cap);
void sim_cw_uint(sim_cw *w, uint64_t v);
void sim_cw_int(sim_cw *w, int64_t v);
void sim_cw_double(sim_cw *w, double v);
void sim_cw_bool(sim_cw *w, bool v);
void sim_cw_null(sim_cw *w);
void sim_cw_map(sim_cw *w, size_t n);
void sim_cw_array(sim_cw *w, size_t n);
void sim_cw_tag(sim_cw *w, uint64_t tag);
void sim_cw_text(sim_cw *w, const char *s);
void sim_cw_bytes(sim_cw *w, const void *p, size_t n);
/* Copies already encoded CBOR. */
void sim_cw_raw(sim_cw *w, const void *p, size_t n);
/* Tag 0 date-time text of a CLOCK_REALTIME time in ns, local time with offset. */
void sim_cw_date(sim_cw *w, uint64_t unix_ns);
/* RFC 3339 text of unix_ns, e.g. 2023-02-10T15:49:05.281+01:00 (at most 40 bytes). */
void sim_format_date(char *out, size_t size, uint64_t unix_ns);

/* Appends the CBOR form of a JSON value: integral numbers that fit become
 * integers, other numbers float64, objects maps with text keys.  Returns 0,
 * -ENOBUFS if the buffer is too small or -ELOOP past max_depth nesting. */
int sim_cbor_from_json(sim_cw *w, const cJSON *j, unsigned max_depth);

#endif
