#include "analysis/scan.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/cborwalk.h"
#include "service/text.h"

/* What a "scan" member said, before validation; shared by the CBOR and the
 * JSON readers so that both apply the same rules. */
typedef struct {
        bool has_shape, has_snake, has_fast, has_origin, has_step, has_units;
        double shape[2], origin[2], step[2];
        bool snake;
        char fast[4];
        char units[ROID_SCAN_UNITS_MAX];
} raw_scan;

void roid_scan_grid_default(roid_scan_grid *g) {
        memset(g, 0, sizeof *g);
        g->ny = g->nx = 1;
        g->step_x = g->step_y = 1.0;
        g->fast_axis = ROID_SCAN_FAST_X;
}

int roid_scan_grid_set_shape(roid_scan_grid *g, uint64_t ny, uint64_t nx, const char *field, roid_err *err) {
        if (ny < 1 || nx < 1)
                return roid_err_set(err, -EINVAL, "%s: shape [%" PRIu64 ", %" PRIu64 "] has an empty axis", field, ny,
                                    nx);
        if (ny > ROID_SCAN_MAX_POINTS || nx > ROID_SCAN_MAX_POINTS || ny * nx > ROID_SCAN_MAX_POINTS)
                return roid_err_set(err, -EMSGSIZE, "%s: shape [%" PRIu64 ", %" PRIu64 "] exceeds %" PRIu64 " points",
                                    field, ny, nx, ROID_SCAN_MAX_POINTS);
        g->ny = (uint32_t)ny;
        g->nx = (uint32_t)nx;
        return 0;
}

const char *roid_scan_source_name(roid_scan_source s) {
        switch (s) {
        case ROID_SCAN_FROM_SERIES:
                return "series";
        case ROID_SCAN_FROM_CONFIG:
                return "config";
        case ROID_SCAN_FROM_LINE:
                return "line";
        default:
                return "none";
        }
}

/* ------------------------------------------------------------------ CBOR */

static bool key_is(const roid_cw_item *k, const char *s) {
        size_t n = strlen(s);
        return k->type == ROID_CW_TSTR && !k->indefinite && k->len == n && memcmp(k->ptr, s, n) == 0;
}

/* Steps over a map entry whose key was just read: the rest of the key (if it
 * was not a plain string) and its value. */
static int skip_entry(roid_cw_cursor *c, const roid_cw_item *key, roid_err *err) {
        int r = roid_cw_skip_rest(c, key, err);
        return r < 0 ? r : roid_cw_skip(c, err);
}

static int cbor_unexpected(roid_err *err, const char *field, const char *want, const roid_cw_item *it) {
        char d[64];
        return roid_err_set(err, -EBADMSG, "%s: expected %s, got %s", field, want, roid_cw_describe(it, d, sizeof d));
}

static int next_untagged(roid_cw_cursor *c, roid_cw_item *it, roid_err *err) {
        for (;;) {
                int r = roid_cw_next(c, it, err);
                if (r < 0 || it->type != ROID_CW_TAG)
                        return r < 0 ? r : 0;
        }
}

static int cbor_number(roid_cw_cursor *c, const char *field, double *ret, roid_err *err) {
        roid_cw_item it;
        int r = next_untagged(c, &it, err);
        if (r < 0)
                return r;
        if (it.type == ROID_CW_UINT)
                *ret = (double)it.u;
        else if (it.type == ROID_CW_NEGINT)
                *ret = -1.0 - (double)it.u;
        else if (it.type == ROID_CW_FLOAT)
                *ret = it.f;
        else
                return cbor_unexpected(err, field, "number", &it);
        return 0;
}

/* An array of exactly two numbers. */
static int cbor_pair(roid_cw_cursor *c, const char *field, double ret[2], roid_err *err) {
        roid_cw_item it;
        int r = next_untagged(c, &it, err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 2))
                return cbor_unexpected(err, field, "array of 2 numbers", &it);
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        double v[2];
        for (int i = 0; i < 2; i++) {
                r = roid_cw_iter_next(c, &iter, err);
                if (r < 0)
                        return r;
                if (r == 0)
                        return roid_err_set(err, -EBADMSG, "%s: array of %d elements, 2 expected", field, i);
                r = cbor_number(c, field, &v[i], err);
                if (r < 0)
                        return r;
        }
        r = roid_cw_iter_next(c, &iter, err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_err_set(err, -EBADMSG, "%s: array of more than 2 elements, 2 expected", field);
        ret[0] = v[0];
        ret[1] = v[1];
        return 0;
}

static int cbor_text(roid_cw_cursor *c, const char *field, char *dst, size_t size, roid_err *err) {
        roid_cw_item it;
        int r = next_untagged(c, &it, err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_TSTR || it.indefinite)
                return cbor_unexpected(err, field, "text string", &it);
        if (it.len >= size || memchr(it.ptr, '\0', it.len))
                return roid_err_set(err, -EINVAL, "%s: text of %zu bytes, at most %zu without NUL allowed", field,
                                    it.len, size - 1);
        memcpy(dst, it.ptr, it.len);
        dst[it.len] = '\0';
        return 0;
}

/* Reads the map whose header is next; unknown keys are skipped. */
static int cbor_scan_map(roid_cw_cursor *c, raw_scan *s, roid_err *err) {
        roid_cw_item it;
        int r = next_untagged(c, &it, err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_MAP)
                return cbor_unexpected(err, "user_data.scan", "map", &it);
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        while ((r = roid_cw_iter_next(c, &iter, err)) > 0) {
                roid_cw_item k;
                r = roid_cw_next(c, &k, err);
                if (r < 0)
                        return r;
                if (key_is(&k, "shape")) {
                        r = cbor_pair(c, "user_data.scan.shape", s->shape, err);
                        s->has_shape = true;
                } else if (key_is(&k, "origin")) {
                        r = cbor_pair(c, "user_data.scan.origin", s->origin, err);
                        s->has_origin = true;
                } else if (key_is(&k, "step")) {
                        r = cbor_pair(c, "user_data.scan.step", s->step, err);
                        s->has_step = true;
                } else if (key_is(&k, "snake")) {
                        roid_cw_item v = {0};
                        r = next_untagged(c, &v, err);
                        if (r == 0 && v.type != ROID_CW_BOOL)
                                r = cbor_unexpected(err, "user_data.scan.snake", "boolean", &v);
                        s->snake = v.b;
                        s->has_snake = true;
                } else if (key_is(&k, "fast_axis")) {
                        r = cbor_text(c, "user_data.scan.fast_axis", s->fast, sizeof s->fast, err);
                        s->has_fast = true;
                } else if (key_is(&k, "units")) {
                        r = cbor_text(c, "user_data.scan.units", s->units, sizeof s->units, err);
                        s->has_units = true;
                } else {
                        r = skip_entry(c, &k, err);
                }
                if (r < 0)
                        return r;
        }
        return r;
}

/* Positions the cursor on the value of top-level key `key`: 1 found, 0 when
 * the item is not a map or lacks the key. */
static int cbor_find_key(roid_cw_cursor *c, const char *key, roid_err *err) {
        roid_cw_item it;
        int r = next_untagged(c, &it, err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_MAP)
                return 0;
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        while ((r = roid_cw_iter_next(c, &iter, err)) > 0) {
                roid_cw_item k;
                r = roid_cw_next(c, &k, err);
                if (r < 0)
                        return r;
                if (key_is(&k, key))
                        return 1;
                r = skip_entry(c, &k, err);
                if (r < 0)
                        return r;
        }
        return r;
}

/* ---------------------------------------------- JSON without allocation
 *
 * JSON user data (V1 appendix) is never parsed into a tree: the per-image
 * "position" is read on the hot path, and the series' "scan" may sit next to
 * megabytes of beamline metadata that a tree would turn into gigabytes.  A
 * bounded scanner walks the top-level object in O(size) time and constant
 * memory, steps over the members before the key (checking their syntax, RFC
 * 8259, with at most max_depth nested containers, the top object included, as
 * the CBOR cursor counts them) and reads the first member with that key in
 * place.  Text that is not a JSON object is not ours: 0, as for a map without
 * the key; what follows the member is not looked at. */

#define JSON_NUM_MAX 64 /* characters of one number literal */

typedef struct {
        const char *p, *end;
} jcur;

static void jws(jcur *c) {
        while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
                c->p++;
}

/* Consumes ch after white space. */
static bool jeat(jcur *c, char ch) {
        jws(c);
        if (c->p >= c->end || *c->p != ch)
                return false;
        c->p++;
        return true;
}

static int hexval(char ch) {
        return ch >= '0' && ch <= '9'   ? ch - '0'
               : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
               : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                        : -1;
}

static bool jhex4(jcur *c, unsigned *ret) {
        unsigned v = 0;
        for (int i = 0; i < 4; i++) {
                int h = c->p < c->end ? hexval(*c->p++) : -1;
                if (h < 0)
                        return false;
                v = v * 16 + (unsigned)h;
        }
        *ret = v;
        return true;
}

/* After a backslash: the escape's code unit (a \uXXXX as it stands, no
 * surrogate pairing). */
static bool jescape(jcur *c, unsigned *ret) {
        if (c->p >= c->end)
                return false;
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == 'u')
                return jhex4(c, ret);
        static const char esc[] = "\"\\/bfnrt", val[] = "\"\\/\b\f\n\r\t";
        const char *e = ch ? strchr(esc, ch) : NULL;
        if (!e)
                return false;
        *ret = (unsigned char)val[e - esc];
        return true;
}

/* Steps over a string whose opening quote is at c->p.  When want is not
 * NULL, *ret_eq tells whether its decoded text equals want (ASCII). */
static bool jstring(jcur *c, const char *want, bool *ret_eq) {
        size_t k = 0;
        bool eq = want != NULL;
        c->p++;
        while (c->p < c->end) {
                unsigned char ch = (unsigned char)*c->p++;
                unsigned v = ch;
                if (ch == '"') {
                        if (ret_eq)
                                *ret_eq = eq && want[k] == '\0';
                        return true;
                }
                if (ch < 0x20)
                        return false;
                if (ch == '\\' && !jescape(c, &v))
                        return false;
                if (eq) {
                        eq = want[k] != '\0' && v == (unsigned char)want[k];
                        k++;
                }
        }
        return false;
}

static bool jdigits(jcur *c) {
        const char *s = c->p;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
                c->p++;
        return c->p > s;
}

/* Steps over a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool jnumber(jcur *c) {
        if (c->p < c->end && *c->p == '-')
                c->p++;
        if (c->p < c->end && *c->p == '0')
                c->p++;
        else if (!jdigits(c))
                return false;
        if (c->p < c->end && *c->p == '.') {
                c->p++;
                if (!jdigits(c))
                        return false;
        }
        if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
                c->p++;
                if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
                        c->p++;
                if (!jdigits(c))
                        return false;
        }
        return true;
}

static bool jliteral(jcur *c, const char *lit) {
        size_t n = strlen(lit);
        if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
                return false;
        c->p += n;
        return true;
}

/* A member's key and colon. */
static bool jkey(jcur *c, const char *want, bool *ret_eq) {
        jws(c);
        return c->p < c->end && *c->p == '"' && jstring(c, want, ret_eq) && jeat(c, ':');
}

/* Steps over one value at nesting `depth` (containers already open) without
 * recursion: open holds the kind of each container opened here.  1 done,
 * 0 malformed, -ELOOP deeper than max_depth. */
static int jskip(jcur *c, unsigned depth, unsigned max_depth) {
        char open[ROID_CW_DEPTH_CAP];
        unsigned top = 0;
        for (;;) {
                jws(c);
                if (c->p >= c->end)
                        return 0;
                char ch = *c->p;
                bool done = true;
                if (ch == '{' || ch == '[') {
                        if (depth + top >= max_depth)
                                return -ELOOP;
                        open[top++] = ch;
                        c->p++;
                        if (jeat(c, ch == '{' ? '}' : ']'))
                                top--;
                        else if (ch == '{' && !jkey(c, NULL, NULL))
                                return 0;
                        else
                                done = false;
                } else if (ch == '"') {
                        if (!jstring(c, NULL, NULL))
                                return 0;
                } else if (ch == 't' || ch == 'f' || ch == 'n') {
                        if (!jliteral(c, ch == 't' ? "true" : ch == 'f' ? "false" : "null"))
                                return 0;
                } else if (!jnumber(c)) {
                        return 0;
                }
                /* after a value: close what ends here, or go on after a comma */
                while (done) {
                        if (top == 0)
                                return 1;
                        if (jeat(c, open[top - 1] == '{' ? '}' : ']')) {
                                top--;
                        } else if (jeat(c, ',')) {
                                if (open[top - 1] == '{' && !jkey(c, NULL, NULL))
                                        return 0;
                                done = false;
                        } else {
                                return 0;
                        }
                }
        }
}

/* Positions c on the value of the first top-level member `key`: 1 found,
 * 0 when the text is not a JSON object or has no such member. */
static int json_find_member(jcur *c, const char *key, unsigned max_depth, roid_err *err) {
        if (max_depth == 0 || max_depth > ROID_CW_DEPTH_CAP)
                max_depth = ROID_CW_DEPTH_CAP;
        if (!jeat(c, '{') || jeat(c, '}'))
                return 0;
        for (;;) {
                bool eq = false;
                if (!jkey(c, key, &eq))
                        return 0;
                if (eq)
                        return 1;
                int r = jskip(c, 1, max_depth);
                if (r == -ELOOP)
                        return roid_err_set(err, -EBADMSG,
                                            "user_data: JSON nested deeper than %u containers (max_depth) before "
                                            "\"%s\"",
                                            max_depth, key);
                if (r == 0 || !jeat(c, ','))
                        return 0;
        }
}

/* A number of the pair `field` at c. */
static int jpair_number(jcur *c, const char *field, int i, double *ret, roid_err *err) {
        jws(c);
        const char *s = c->p;
        if (!jnumber(c))
                return roid_err_set(err, -EBADMSG, "%s[%d]: expected a number", field, i);
        size_t n = (size_t)(c->p - s);
        char buf[JSON_NUM_MAX];
        if (n >= sizeof buf)
                return roid_err_set(err, -EBADMSG, "%s[%d]: number of %zu characters, at most %zu", field, i, n,
                                    sizeof buf - 1);
        memcpy(buf, s, n);
        buf[n] = '\0';
        errno = 0;
        double v = strtod(buf, NULL);
        if (errno == ERANGE && isinf(v))
                return roid_err_set(err, -EINVAL, "%s[%d]: %s is beyond the range of a double", field, i, buf);
        *ret = v;
        return 0;
}

/* An array of exactly two numbers at c. */
static int jpair(jcur *c, const char *field, double ret[2], roid_err *err) {
        double v[2];
        if (!jeat(c, '['))
                return roid_err_set(err, -EBADMSG, "%s: expected array of 2 numbers", field);
        if (jeat(c, ']'))
                return roid_err_set(err, -EBADMSG, "%s: array of 0 elements, 2 expected", field);
        for (int i = 0; i < 2; i++) {
                int r = jpair_number(c, field, i, &v[i], err);
                if (r < 0)
                        return r;
                if (i == 0 && !jeat(c, ','))
                        return roid_err_set(err, -EBADMSG, "%s: array of 1 element, 2 expected", field);
        }
        if (!jeat(c, ']'))
                return roid_err_set(err, -EBADMSG, "%s: array of more than 2 elements, 2 expected", field);
        ret[0] = v[0];
        ret[1] = v[1];
        return 0;
}

/* Appends code point v to dst as UTF-8 (n bytes so far, written while they
 * fit below size - 1). */
static void put_utf8(char *dst, size_t size, size_t *n, unsigned v) {
        uint8_t u[4];
        size_t k;
        if (v < 0x80) {
                u[0] = (uint8_t)v;
                k = 1;
        } else if (v < 0x800) {
                u[0] = (uint8_t)(0xc0 | v >> 6);
                u[1] = (uint8_t)(0x80 | (v & 0x3f));
                k = 2;
        } else if (v < 0x10000) {
                u[0] = (uint8_t)(0xe0 | v >> 12);
                u[1] = (uint8_t)(0x80 | (v >> 6 & 0x3f));
                u[2] = (uint8_t)(0x80 | (v & 0x3f));
                k = 3;
        } else {
                u[0] = (uint8_t)(0xf0 | v >> 18);
                u[1] = (uint8_t)(0x80 | (v >> 12 & 0x3f));
                u[2] = (uint8_t)(0x80 | (v >> 6 & 0x3f));
                u[3] = (uint8_t)(0x80 | (v & 0x3f));
                k = 4;
        }
        for (size_t i = 0; i < k; i++, (*n)++)
                if (*n + 1 < size)
                        dst[*n] = (char)u[i];
}

/* Decodes the string whose opening quote is at c->p into dst (cut to size -
 * 1 bytes, NUL-terminated); *ret_len is its whole decoded length, *ret_nul
 * whether it holds a U+0000.  false when malformed (lone surrogates too). */
static bool jstring_copy(jcur *c, char *dst, size_t size, size_t *ret_len, bool *ret_nul) {
        size_t n = 0;
        bool nul = false;
        c->p++;
        while (c->p < c->end) {
                unsigned char ch = (unsigned char)*c->p++;
                unsigned v = ch;
                if (ch == '"') {
                        dst[n < size ? n : size - 1] = '\0';
                        *ret_len = n;
                        *ret_nul = nul;
                        return true;
                }
                if (ch < 0x20)
                        return false;
                if (ch != '\\') {
                        if (n + 1 < size)
                                dst[n] = (char)ch;
                        n++;
                        continue;
                }
                const bool u = c->p < c->end && *c->p == 'u';
                if (!jescape(c, &v) || (u && v >= 0xdc00 && v < 0xe000))
                        return false;
                if (u && v >= 0xd800 && v < 0xdc00) { /* a high surrogate: its low one must follow */
                        unsigned lo;
                        if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u')
                                return false;
                        c->p += 2;
                        if (!jhex4(c, &lo) || lo < 0xdc00 || lo >= 0xe000)
                                return false;
                        v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
                }
                nul |= v == 0;
                put_utf8(dst, size, &n, v);
        }
        return false;
}

/* A text member of the scan map at c. */
static int jtext(jcur *c, const char *field, char *dst, size_t size, roid_err *err) {
        char buf[ROID_SCAN_UNITS_MAX];
        size_t n;
        bool nul;
        jws(c);
        if (c->p >= c->end || *c->p != '"' || size > sizeof buf)
                return roid_err_set(err, -EBADMSG, "%s: expected text string", field);
        if (!jstring_copy(c, buf, size, &n, &nul))
                return roid_err_set(err, -EBADMSG, "%s: malformed JSON string", field);
        if (n >= size || nul)
                return roid_err_set(err, -EINVAL, "%s: text of %zu bytes, at most %zu without NUL allowed", field, n,
                                    size - 1);
        memcpy(dst, buf, n + 1);
        return 0;
}

static int jmalformed(const jcur *c, const char *start, const char *field, roid_err *err) {
        return roid_err_set(err, -EBADMSG, "%s: malformed JSON at byte %zu", field, (size_t)(c->p - start));
}

/* Reads the object at c (the value of the top-level "scan", so nested at
 * depth 2); unknown members are stepped over within max_depth.  Duplicate
 * members: the last wins. */
static int json_scan_map(jcur *c, const char *start, raw_scan *s, unsigned max_depth, roid_err *err) {
        if (!jeat(c, '{'))
                return roid_err_set(err, -EBADMSG, "user_data.scan: expected map");
        if (max_depth < 2)
                return roid_err_set(err, -EBADMSG, "user_data.scan: JSON nested deeper than %u containers (max_depth)",
                                    max_depth);
        if (jeat(c, '}'))
                return 0;
        for (;;) {
                char k[16];
                size_t n;
                bool nul;
                jws(c);
                if (c->p >= c->end || *c->p != '"' || !jstring_copy(c, k, sizeof k, &n, &nul) || !jeat(c, ':'))
                        return jmalformed(c, start, "user_data.scan", err);
                if (n >= sizeof k || nul)
                        k[0] = '\0'; /* not one of ours */
                int r;
                if (strcmp(k, "shape") == 0) {
                        r = jpair(c, "user_data.scan.shape", s->shape, err);
                        s->has_shape = true;
                } else if (strcmp(k, "origin") == 0) {
                        r = jpair(c, "user_data.scan.origin", s->origin, err);
                        s->has_origin = true;
                } else if (strcmp(k, "step") == 0) {
                        r = jpair(c, "user_data.scan.step", s->step, err);
                        s->has_step = true;
                } else if (strcmp(k, "snake") == 0) {
                        jws(c);
                        r = 0;
                        if (jliteral(c, "true"))
                                s->snake = true;
                        else if (jliteral(c, "false"))
                                s->snake = false;
                        else
                                r = roid_err_set(err, -EBADMSG, "user_data.scan.snake: expected boolean");
                        s->has_snake = true;
                } else if (strcmp(k, "fast_axis") == 0) {
                        r = jtext(c, "user_data.scan.fast_axis", s->fast, sizeof s->fast, err);
                        s->has_fast = true;
                } else if (strcmp(k, "units") == 0) {
                        r = jtext(c, "user_data.scan.units", s->units, sizeof s->units, err);
                        s->has_units = true;
                } else {
                        r = jskip(c, 2, max_depth);
                        if (r == -ELOOP)
                                return roid_err_set(err, -EBADMSG,
                                                    "user_data.scan: JSON nested deeper than %u containers "
                                                    "(max_depth)",
                                                    max_depth);
                        r = r == 0 ? jmalformed(c, start, "user_data.scan", err) : 0;
                }
                if (r < 0)
                        return r;
                if (jeat(c, '}'))
                        return 0;
                if (!jeat(c, ','))
                        return jmalformed(c, start, "user_data.scan", err);
        }
}

/* ------------------------------------------------------------ validation */

static int to_count(double v, const char *field, uint64_t *ret, roid_err *err) {
        if (!(v >= 1) || v != floor(v) || v > (double)ROID_SCAN_MAX_POINTS * 2)
                return roid_err_set(err, v > 0 && v == floor(v) ? -EMSGSIZE : -EINVAL,
                                    "%s: %g is not an integer in 1..%" PRIu64, field, v, ROID_SCAN_MAX_POINTS);
        *ret = (uint64_t)v;
        return 0;
}

static int validate(const raw_scan *s, roid_scan_grid *ret, roid_err *err) {
        roid_scan_grid g;
        roid_scan_grid_default(&g);
        if (!s->has_shape)
                return roid_err_set(err, -EINVAL, "user_data.scan.shape: missing (required)");
        uint64_t ny = 0, nx = 0; /* set on success; GCC -O3 cannot tell */
        int r = to_count(s->shape[0], "user_data.scan.shape[0] (ny)", &ny, err);
        if (r < 0)
                return r;
        r = to_count(s->shape[1], "user_data.scan.shape[1] (nx)", &nx, err);
        if (r < 0)
                return r;
        r = roid_scan_grid_set_shape(&g, ny, nx, "user_data.scan.shape", err);
        if (r < 0)
                return r;
        g.snake = s->has_snake && s->snake;
        if (s->has_fast) {
                if (strcmp(s->fast, "x") == 0)
                        g.fast_axis = ROID_SCAN_FAST_X;
                else if (strcmp(s->fast, "y") == 0)
                        g.fast_axis = ROID_SCAN_FAST_Y;
                else
                        return roid_err_set(err, -EINVAL, "user_data.scan.fast_axis: \"%s\", expected \"x\" or \"y\"",
                                            s->fast);
        }
        if (s->has_origin) {
                if (!isfinite(s->origin[0]) || !isfinite(s->origin[1]))
                        return roid_err_set(err, -EINVAL, "user_data.scan.origin: not finite");
                g.origin_x = s->origin[0];
                g.origin_y = s->origin[1];
        }
        if (s->has_step) {
                if (!isfinite(s->step[0]) || !isfinite(s->step[1]) || s->step[0] == 0 || s->step[1] == 0)
                        return roid_err_set(err, -EINVAL, "user_data.scan.step: [%g, %g], must be finite, non-zero",
                                            s->step[0], s->step[1]);
                g.step_x = s->step[0];
                g.step_y = s->step[1];
        }
        if (s->has_units) {
                /* it goes out again in every series, map and scan_here message,
                 * as msgpack str, which clients decode as UTF-8 */
                const size_t n = strlen(s->units), bad = roid_utf8_invalid_at(s->units, n);
                if (bad < n)
                        return roid_err_set(err, -EBADMSG, "user_data.scan.units: byte 0x%02x at %zu is not UTF-8",
                                            (unsigned char)s->units[bad], bad);
                memcpy(g.units, s->units, sizeof g.units);
        }
        g.source = ROID_SCAN_FROM_SERIES;
        *ret = g;
        return 0;
}

int roid_scan_from_user_data(const roid_user_data *ud, unsigned max_depth, roid_scan_grid *ret, roid_err *err) {
        raw_scan s;
        memset(&s, 0, sizeof s);
        if (!ud || !ud->data || ud->size == 0)
                return 0;
        if (ud->kind == ROID_UD_CBOR) {
                roid_cw_cursor c;
                roid_cw_init(&c, ud->data, ud->size, max_depth);
                int r = cbor_find_key(&c, "scan", err);
                if (r <= 0)
                        return r;
                r = cbor_scan_map(&c, &s, err);
                if (r < 0)
                        return r;
        } else if (ud->kind == ROID_UD_JSON) {
                const char *start = (const char *)ud->data;
                jcur c = {start, start + ud->size};
                if (max_depth == 0 || max_depth > ROID_CW_DEPTH_CAP)
                        max_depth = ROID_CW_DEPTH_CAP;
                int r = json_find_member(&c, "scan", max_depth, err);
                if (r <= 0)
                        return r;
                r = json_scan_map(&c, start, &s, max_depth, err);
                if (r < 0)
                        return r;
        } else {
                return 0;
        }
        int r = validate(&s, ret, err);
        return r < 0 ? r : 1;
}

int roid_scan_position_from_user_data(const roid_user_data *ud, unsigned max_depth, double *ret_x, double *ret_y,
                                      roid_err *err) {
        double v[2] = {0, 0};
        if (ud && ud->kind == ROID_UD_LEFT_OUT)
                return roid_err_set(err, -ENODATA, "user data left out (see above): a position it carried is unknown");
        if (!ud || !ud->data || ud->size == 0)
                return 0;
        if (ud->kind == ROID_UD_CBOR) {
                roid_cw_cursor c;
                roid_cw_init(&c, ud->data, ud->size, max_depth);
                int r = cbor_find_key(&c, "position", err);
                if (r <= 0)
                        return r;
                r = cbor_pair(&c, "user_data.position", v, err);
                if (r < 0)
                        return r;
        } else if (ud->kind == ROID_UD_JSON) {
                jcur c = {(const char *)ud->data, (const char *)ud->data + ud->size};
                int r = json_find_member(&c, "position", max_depth, err);
                if (r <= 0)
                        return r;
                r = jpair(&c, "user_data.position", v, err);
                if (r < 0)
                        return r;
        } else {
                return 0;
        }
        *ret_x = v[0];
        *ret_y = v[1];
        return 1;
}

int roid_scan_resolve(const roid_user_data *series_ud, const roid_scan_grid *config, bool has_number_of_images,
                      uint64_t number_of_images, unsigned max_depth, roid_scan_grid *ret, roid_err *err) {
        roid_scan_grid g;
        int r = roid_scan_from_user_data(series_ud, max_depth, &g, err);
        if (r < 0)
                return r;
        if (r == 0) {
                if (config && config->source != ROID_SCAN_FROM_NONE) {
                        g = *config;
                        g.source = ROID_SCAN_FROM_CONFIG;
                } else {
                        roid_scan_grid_default(&g);
                        uint64_t n = has_number_of_images && number_of_images > 0 ? number_of_images : 1;
                        /* A longer series still gets its line: the images past it lie
                         * off the grid (counted), and the series is analysed, or refused
                         * by max_analysis_bytes with the reason, rather than dropped. */
                        if (n > ROID_SCAN_MAX_LINE)
                                n = ROID_SCAN_MAX_LINE;
                        r = roid_scan_grid_set_shape(&g, 1, n, "number_of_images", err);
                        if (r < 0)
                                return r;
                        g.source = ROID_SCAN_FROM_LINE;
                }
        }
        *ret = g;
        return 0;
}

int roid_scan_index(const roid_scan_grid *g, uint64_t k, uint32_t *ret_row, uint32_t *ret_col) {
        if (k >= (uint64_t)g->ny * g->nx)
                return -ERANGE;
        uint64_t slow, fast, nfast = g->fast_axis == ROID_SCAN_FAST_X ? g->nx : g->ny;
        slow = k / nfast;
        fast = k % nfast;
        if (g->snake && (slow & 1))
                fast = nfast - 1 - fast;
        if (g->fast_axis == ROID_SCAN_FAST_X) {
                *ret_row = (uint32_t)slow;
                *ret_col = (uint32_t)fast;
        } else {
                *ret_row = (uint32_t)fast;
                *ret_col = (uint32_t)slow;
        }
        return 0;
}

int roid_scan_bin(const roid_scan_grid *g, double x, double y, uint32_t *ret_row, uint32_t *ret_col, roid_err *err) {
        double c = round((x - g->origin_x) / g->step_x), r = round((y - g->origin_y) / g->step_y);
        if (!isfinite(c) || !isfinite(r))
                return roid_err_set(err, -ERANGE, "position [%g, %g]: not finite", x, y);
        if (c < 0 || c >= g->nx || r < 0 || r >= g->ny)
                return roid_err_set(err, -ERANGE, "position [%g, %g]: grid point (row %.0f, col %.0f) outside %u x %u",
                                    x, y, r, c, g->ny, g->nx);
        *ret_row = (uint32_t)r;
        *ret_col = (uint32_t)c;
        return 0;
}

int roid_scan_locate(const roid_scan_grid *g, uint64_t k, const roid_user_data *image_ud, unsigned max_depth,
                     uint32_t *ret_row, uint32_t *ret_col, roid_err *err) {
        double x, y;
        int r = roid_scan_position_from_user_data(image_ud, max_depth, &x, &y, err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_scan_bin(g, x, y, ret_row, ret_col, err);
        r = roid_scan_index(g, k, ret_row, ret_col);
        if (r < 0)
                return roid_err_set(err, r, "image_id %" PRIu64 ": beyond the %u x %u scan grid", k, g->ny, g->nx);
        return 0;
}
