#include "sim_cbor.h"

#include <cbor.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

void sim_cw_init(sim_cw *w, uint8_t *buf, size_t cap) {
        *w = (sim_cw){.buf = buf, .cap = cap};
}

/* libcbor's encoders return 0 when the item does not fit. */
static void advance(sim_cw *w, size_t n) {
        if (n == 0)
                w->overflow = true;
        w->len += n;
}

#define ROOM(w) ((w)->buf + (w)->len), ((w)->cap - (w)->len)

void sim_cw_uint(sim_cw *w, uint64_t v) {
        if (!w->overflow)
                advance(w, cbor_encode_uint(v, ROOM(w)));
}

void sim_cw_int(sim_cw *w, int64_t v) {
        if (v >= 0)
                sim_cw_uint(w, (uint64_t)v);
        else if (!w->overflow)
                advance(w, cbor_encode_negint((uint64_t)(-(v + 1)), ROOM(w)));
}

void sim_cw_double(sim_cw *w, double v) {
        if (!w->overflow)
                advance(w, cbor_encode_double(v, ROOM(w)));
}

void sim_cw_bool(sim_cw *w, bool v) {
        if (!w->overflow)
                advance(w, cbor_encode_bool(v, ROOM(w)));
}

void sim_cw_null(sim_cw *w) {
        if (!w->overflow)
                advance(w, cbor_encode_null(ROOM(w)));
}

void sim_cw_map(sim_cw *w, size_t n) {
        if (!w->overflow)
                advance(w, cbor_encode_map_start(n, ROOM(w)));
}

void sim_cw_array(sim_cw *w, size_t n) {
        if (!w->overflow)
                advance(w, cbor_encode_array_start(n, ROOM(w)));
}

void sim_cw_tag(sim_cw *w, uint64_t tag) {
        if (!w->overflow)
                advance(w, cbor_encode_tag(tag, ROOM(w)));
}

void sim_cw_raw(sim_cw *w, const void *p, size_t n) {
        if (w->overflow)
                return;
        if (n > w->cap - w->len) {
                w->overflow = true;
                return;
        }
        memcpy(w->buf + w->len, p, n);
        w->len += n;
}

static void textn(sim_cw *w, const char *s, size_t n) {
        if (!w->overflow)
                advance(w, cbor_encode_string_start(n, ROOM(w)));
        sim_cw_raw(w, s, n);
}

void sim_cw_text(sim_cw *w, const char *s) {
        textn(w, s, strlen(s));
}

void sim_cw_bytes(sim_cw *w, const void *p, size_t n) {
        if (!w->overflow)
                advance(w, cbor_encode_bytestring_start(n, ROOM(w)));
        sim_cw_raw(w, p, n);
}

void sim_format_date(char *out, size_t size, uint64_t unix_ns) {
        time_t t = (time_t)(unix_ns / 1000000000u);
        unsigned ms = (unsigned)(unix_ns / 1000000u % 1000u);
        struct tm tm;
        char base[32], zone[8];

        localtime_r(&t, &tm);
        strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
        strftime(zone, sizeof zone, "%z", &tm); /* +hhmm; RFC 3339 wants +hh:mm */
        if (strlen(zone) == 5)
                snprintf(out, size, "%s.%03u%.3s:%.2s", base, ms, zone, zone + 3);
        else
                snprintf(out, size, "%s.%03uZ", base, ms);
}

void sim_cw_date(sim_cw *w, uint64_t unix_ns) {
        char s[48];

        sim_format_date(s, sizeof s, unix_ns);
        sim_cw_tag(w, 0);
        sim_cw_text(w, s);
}

int sim_cbor_from_json(sim_cw *w, const cJSON *j, unsigned max_depth) {
        const cJSON *c;
        size_t n = 0;
        int r;

        if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
                if (max_depth == 0)
                        return -ELOOP;
                cJSON_ArrayForEach(c, j) n++;
                if (cJSON_IsObject(j))
                        sim_cw_map(w, n);
                else
                        sim_cw_array(w, n);
                cJSON_ArrayForEach(c, j) {
                        if (cJSON_IsObject(j))
                                sim_cw_text(w, c->string ? c->string : "");
                        r = sim_cbor_from_json(w, c, max_depth - 1);
                        if (r < 0)
                                return r;
                }
        } else if (cJSON_IsString(j)) {
                sim_cw_text(w, j->valuestring);
        } else if (cJSON_IsNumber(j)) {
                double d = j->valuedouble;
                /* 2^63 bounds keep the conversion defined. */
                if (d == floor(d) && fabs(d) < 9223372036854775808.0)
                        sim_cw_int(w, (int64_t)d);
                else
                        sim_cw_double(w, d);
        } else if (cJSON_IsBool(j)) {
                sim_cw_bool(w, cJSON_IsTrue(j));
        } else {
                sim_cw_null(w);
        }
        return w->overflow ? -ENOBUFS : 0;
}
