#include "ingest/cborwalk.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <cbor.h>

/* libcbor calls back with the decoded header; these store it in the item. */
static void set_uint(void *ctx, uint64_t v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_UINT;
        it->u = v;
}

static void cb_uint8(void *ctx, uint8_t v) {
        set_uint(ctx, v);
}

static void cb_uint16(void *ctx, uint16_t v) {
        set_uint(ctx, v);
}

static void cb_uint32(void *ctx, uint32_t v) {
        set_uint(ctx, v);
}

static void cb_uint64(void *ctx, uint64_t v) {
        set_uint(ctx, v);
}

static void set_negint(void *ctx, uint64_t v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_NEGINT;
        it->u = v;
}

static void cb_negint8(void *ctx, uint8_t v) {
        set_negint(ctx, v);
}

static void cb_negint16(void *ctx, uint16_t v) {
        set_negint(ctx, v);
}

static void cb_negint32(void *ctx, uint32_t v) {
        set_negint(ctx, v);
}

static void cb_negint64(void *ctx, uint64_t v) {
        set_negint(ctx, v);
}

static void cb_bstr(void *ctx, cbor_data data, size_t len) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_BSTR;
        it->ptr = data;
        it->len = len;
}

static void cb_bstr_indef(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_BSTR;
        it->indefinite = true;
}

static void cb_tstr(void *ctx, cbor_data data, size_t len) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_TSTR;
        it->ptr = data;
        it->len = len;
}

static void cb_tstr_indef(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_TSTR;
        it->indefinite = true;
}

static void cb_array(void *ctx, size_t n) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_ARRAY;
        it->u = n;
}

static void cb_array_indef(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_ARRAY;
        it->indefinite = true;
}

static void cb_map(void *ctx, size_t n) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_MAP;
        it->u = n;
}

static void cb_map_indef(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_MAP;
        it->indefinite = true;
}

static void cb_tag(void *ctx, uint64_t v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_TAG;
        it->u = v;
}

static void cb_float(void *ctx, float v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_FLOAT;
        it->f = v;
}

static void cb_double(void *ctx, double v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_FLOAT;
        it->f = v;
}

static void cb_undef(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_UNDEF;
}

static void cb_null(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_NULL;
}

static void cb_bool(void *ctx, bool v) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_BOOL;
        it->b = v;
}

static void cb_break(void *ctx) {
        roid_cw_item *it = ctx;
        it->type = ROID_CW_BREAK;
}

/* libcbor 0.8 names the definite/indefinite string callbacks the other way
 * round in its header comments; the decoder calls byte_string with data. */
static const struct cbor_callbacks callbacks = {
        .uint8 = cb_uint8,
        .uint16 = cb_uint16,
        .uint32 = cb_uint32,
        .uint64 = cb_uint64,
        .negint64 = cb_negint64,
        .negint32 = cb_negint32,
        .negint16 = cb_negint16,
        .negint8 = cb_negint8,
        .byte_string_start = cb_bstr_indef,
        .byte_string = cb_bstr,
        .string = cb_tstr,
        .string_start = cb_tstr_indef,
        .indef_array_start = cb_array_indef,
        .array_start = cb_array,
        .indef_map_start = cb_map_indef,
        .map_start = cb_map,
        .tag = cb_tag,
        .float2 = cb_float,
        .float4 = cb_float,
        .float8 = cb_double,
        .undefined = cb_undef,
        .null = cb_null,
        .boolean = cb_bool,
        .indef_break = cb_break,
};

void roid_cw_init(roid_cw_cursor *c, const uint8_t *buf, size_t size, unsigned max_depth) {
        c->buf = buf;
        c->pos = buf;
        c->end = buf + size;
        c->max_depth = (max_depth == 0 || max_depth > ROID_CW_DEPTH_CAP) ? ROID_CW_DEPTH_CAP : max_depth;
}

int roid_cw_next(roid_cw_cursor *c, roid_cw_item *ret, roid_err *err) {
        size_t off = roid_cw_offset(c);
        size_t avail = (size_t)(c->end - c->pos);
        if (avail == 0)
                return roid_err_set(err, -EBADMSG, "CBOR truncated at offset %zu: item expected, buffer ends", off);

        roid_cw_item it = {.start = c->pos};
        uint8_t b = c->pos[0];
        size_t used;
        /* libcbor 0.8 rejects these valid encodings (tags 6..20 in the initial
         * byte, simple values): decode them here. */
        if (b >= 0xc6 && b <= 0xd4) {
                it.type = ROID_CW_TAG;
                it.u = b - 0xc0u;
                used = 1;
        } else if (b >= 0xe0 && b <= 0xf3) {
                it.type = ROID_CW_SIMPLE;
                it.u = b - 0xe0u;
                used = 1;
        } else if (b == 0xf8) {
                if (avail < 2)
                        return roid_err_set(err, -EBADMSG, "CBOR truncated at offset %zu: simple value needs 2 bytes",
                                            off);
                if (c->pos[1] < 32)
                        return roid_err_set(err, -EBADMSG, "malformed CBOR at offset %zu: simple value %u in two bytes",
                                            off, c->pos[1]);
                it.type = ROID_CW_SIMPLE;
                it.u = c->pos[1];
                used = 2;
        } else {
                struct cbor_decoder_result r = cbor_stream_decode(c->pos, avail, &callbacks, &it);
                /* libcbor's required wraps for a declared length near 2^64 */
                if (r.status == CBOR_DECODER_NEDATA && r.required > avail)
                        return roid_err_set(err, -EBADMSG,
                                            "CBOR truncated at offset %zu: item (initial byte 0x%02x) needs %zu bytes, "
                                            "%zu left",
                                            off, b, r.required, avail);
                if (r.status == CBOR_DECODER_NEDATA)
                        return roid_err_set(err, -EBADMSG,
                                            "CBOR truncated at offset %zu: item (initial byte 0x%02x) declares more "
                                            "than the %zu bytes left",
                                            off, b, avail);
                if (r.status != CBOR_DECODER_FINISHED || it.type == 0 || r.read == 0 || r.read > avail)
                        return roid_err_set(err, -EBADMSG, "malformed CBOR at offset %zu: initial byte 0x%02x", off, b);
                used = r.read;
        }
        c->pos += used;
        *ret = it;
        return 0;
}

enum { LV_DEF, LV_INDEF, LV_INDEF_BSTR, LV_INDEF_TSTR };

typedef struct {
        uint64_t left;  /* LV_DEF: items still to come */
        uint64_t count; /* indefinite: items seen (maps must end on a pair) */
        uint8_t kind;
        bool map;
} level;

/* Walks to the end of the item whose header is *first, already read. */
static int skip_from(roid_cw_cursor *c, const roid_cw_item *first, roid_err *err) {
        level stack[ROID_CW_DEPTH_CAP];
        unsigned depth = 0;
        roid_cw_item cur = *first;
        bool after_tag = false;

        for (;;) {
                roid_cw_item *it = &cur;
                bool done = false; /* one complete item at the current level */
                level *top = depth ? &stack[depth - 1] : NULL;

                if (it->type == ROID_CW_BREAK) {
                        if (!top || top->kind == LV_DEF || after_tag)
                                return roid_err_set(err, -EBADMSG, "malformed CBOR at offset %zu: unexpected break",
                                                    (size_t)(it->start - c->buf));
                        if (top->map && top->count % 2)
                                return roid_err_set(err, -EBADMSG,
                                                    "malformed CBOR at offset %zu: map ends after a key without value",
                                                    (size_t)(it->start - c->buf));
                        depth--;
                        done = true;
                } else if (top && (top->kind == LV_INDEF_BSTR || top->kind == LV_INDEF_TSTR)) {
                        roid_cw_type want = top->kind == LV_INDEF_BSTR ? ROID_CW_BSTR : ROID_CW_TSTR;
                        if (it->type != want || it->indefinite)
                                return roid_err_set(
                                        err, -EBADMSG,
                                        "malformed CBOR at offset %zu: bad chunk in indefinite-length string",
                                        (size_t)(it->start - c->buf));
                        done = true;
                } else if (it->type == ROID_CW_TAG) {
                        after_tag = true;
                } else if (it->type == ROID_CW_ARRAY || it->type == ROID_CW_MAP ||
                           ((it->type == ROID_CW_BSTR || it->type == ROID_CW_TSTR) && it->indefinite)) {
                        bool map = it->type == ROID_CW_MAP;
                        uint64_t n = it->u;
                        if (!it->indefinite) {
                                if (map && n > UINT64_MAX / 2)
                                        return roid_err_set(err, -EBADMSG,
                                                            "malformed CBOR at offset %zu: map of %" PRIu64 " pairs",
                                                            (size_t)(it->start - c->buf), n);
                                if (map)
                                        n *= 2;
                                /* Every item takes at least one byte. */
                                if (n > (uint64_t)(c->end - c->pos))
                                        return roid_err_set(err, -EBADMSG,
                                                            "CBOR truncated at offset %zu: %s of %" PRIu64
                                                            " items, %zu bytes left",
                                                            (size_t)(it->start - c->buf), map ? "map" : "array", it->u,
                                                            (size_t)(c->end - c->pos));
                        }
                        if (!it->indefinite && n == 0) {
                                done = true;
                        } else {
                                if (depth >= c->max_depth)
                                        return roid_err_set(err, -EBADMSG, "CBOR nesting deeper than %u at offset %zu",
                                                            c->max_depth, (size_t)(it->start - c->buf));
                                level *l = &stack[depth++];
                                l->left = n;
                                l->count = 0;
                                l->map = map;
                                l->kind = !it->indefinite            ? LV_DEF
                                          : it->type == ROID_CW_BSTR ? LV_INDEF_BSTR
                                          : it->type == ROID_CW_TSTR ? LV_INDEF_TSTR
                                                                     : LV_INDEF;
                        }
                        after_tag = false;
                } else {
                        done = true;
                }

                if (done) {
                        after_tag = false;
                        /* Completing an item may complete its enclosing items. */
                        while (depth > 0) {
                                level *l = &stack[depth - 1];
                                if (l->kind != LV_DEF) {
                                        l->count++;
                                        break;
                                }
                                if (--l->left > 0)
                                        break;
                                depth--;
                        }
                        if (depth == 0)
                                return 0;
                }
                int r = roid_cw_next(c, &cur, err);
                if (r < 0)
                        return r;
        }
}

int roid_cw_skip(roid_cw_cursor *c, roid_err *err) {
        roid_cw_item it;
        int r = roid_cw_next(c, &it, err);
        if (r < 0)
                return r;
        if (it.type == ROID_CW_BREAK)
                return roid_err_set(err, -EBADMSG, "malformed CBOR at offset %zu: unexpected break",
                                    (size_t)(it.start - c->buf));
        return skip_from(c, &it, err);
}

int roid_cw_skip_rest(roid_cw_cursor *c, const roid_cw_item *it, roid_err *err) {
        if (it->type == ROID_CW_TAG || it->type == ROID_CW_ARRAY || it->type == ROID_CW_MAP || it->indefinite)
                return skip_from(c, it, err);
        return 0;
}

void roid_cw_iter_init(roid_cw_iter *ret, const roid_cw_item *it) {
        *ret = (roid_cw_iter){.indefinite = it->indefinite, .map = it->type == ROID_CW_MAP, .left = it->u};
}

int roid_cw_iter_next(roid_cw_cursor *c, roid_cw_iter *it, roid_err *err) {
        if (it->indefinite) {
                if (c->pos >= c->end)
                        return roid_err_set(err, -EBADMSG,
                                            "CBOR truncated at offset %zu: indefinite-length %s without break",
                                            roid_cw_offset(c), it->map ? "map" : "array");
                if (*c->pos == 0xff) {
                        c->pos++;
                        return 0;
                }
                return 1;
        }
        if (it->left == 0)
                return 0;
        it->left--;
        return 1;
}

const char *roid_cw_describe(const roid_cw_item *it, char *buf, size_t size) {
        switch (it->type) {
        case ROID_CW_UINT:
                snprintf(buf, size, "unsigned integer %" PRIu64, it->u);
                break;
        case ROID_CW_NEGINT:
                snprintf(buf, size, "negative integer");
                break;
        case ROID_CW_BSTR:
                if (it->indefinite)
                        snprintf(buf, size, "indefinite-length byte string");
                else
                        snprintf(buf, size, "byte string of %zu bytes", it->len);
                break;
        case ROID_CW_TSTR:
                snprintf(buf, size, "text string");
                break;
        case ROID_CW_ARRAY:
                if (it->indefinite)
                        snprintf(buf, size, "indefinite-length array");
                else
                        snprintf(buf, size, "array(%" PRIu64 ")", it->u);
                break;
        case ROID_CW_MAP:
                if (it->indefinite)
                        snprintf(buf, size, "indefinite-length map");
                else
                        snprintf(buf, size, "map(%" PRIu64 ")", it->u);
                break;
        case ROID_CW_TAG:
                snprintf(buf, size, "tag %" PRIu64, it->u);
                break;
        case ROID_CW_FLOAT:
                snprintf(buf, size, "float");
                break;
        case ROID_CW_BOOL:
                snprintf(buf, size, "boolean");
                break;
        case ROID_CW_NULL:
                snprintf(buf, size, "null");
                break;
        case ROID_CW_UNDEF:
                snprintf(buf, size, "undefined");
                break;
        case ROID_CW_SIMPLE:
                snprintf(buf, size, "simple value %" PRIu64, it->u);
                break;
        case ROID_CW_BREAK:
                snprintf(buf, size, "break");
                break;
        default:
                snprintf(buf, size, "?");
                break;
        }
        return buf;
}
