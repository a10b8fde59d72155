/* Stream V2 (CBOR) parser: a zero-copy walk over the message with cborwalk.
 * Field names and encodings follow eiger-stream.md §2. */
#include "ingest/stream_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ingest/cborwalk.h"
#include "service/log.h"
#include "service/text.h"

#define TAG_DATETIME       0
#define TAG_MULTIDIM       40
#define TAG_SELF_DESCRIBED 55799
#define TAG_COMPRESSION    56500
#define FIELD_MAX          (ROID_NAME_MAX + 32)

typedef struct {
        char name[ROID_NAME_MAX];
        roid_blob blob;
} named_blob;

typedef struct {
        roid_cw_cursor c;
        const roid_limits *lim;
        roid_err *err;
        roid_msg *m;
        /* start: channel maps, resolved against "channels" once all keys are read */
        named_blob flatfield[ROID_MAX_CHANNELS], pixel_mask[ROID_MAX_CHANNELS];
        unsigned n_flatfield, n_pixel_mask;
        char thr_name[ROID_MAX_CHANNELS][ROID_NAME_MAX];
        double thr_value[ROID_MAX_CHANNELS];
        unsigned n_thr;
        unsigned seen; /* SEEN_* bits */
} s2;

enum {
        SEEN_BCX = 1u << 0,
        SEEN_BCY = 1u << 1,
        SEEN_PSX = 1u << 2,
        SEEN_PSY = 1u << 3,
        SEEN_ISX = 1u << 4,
        SEEN_ISY = 1u << 5,
        SEEN_REAL = 1u << 6,
        SEEN_START = 1u << 7,
        SEEN_STOP = 1u << 8,
        SEEN_IMAGE_ID = 1u << 9,
        SEEN_DATA = 1u << 10,
};

static bool key_is(const roid_cw_item *k, const char *s) {
        size_t n = strlen(s);
        return k->len == n && memcmp(k->ptr, s, n) == 0;
}

static int unexpected(s2 *p, const char *field, const char *want, const roid_cw_item *it) {
        char d[64];
        return roid_err_set(p->err, -EBADMSG, "%s: expected %s, got %s at offset %zu", field, want,
                            roid_cw_describe(it, d, sizeof d), (size_t)(it->start - p->c.buf));
}

/* Next item with any tags in front of it dropped, as DECTRIS's parser does
 * for scalars. */
static int next_untagged(s2 *p, roid_cw_item *it) {
        for (;;) {
                int r = roid_cw_next(&p->c, it, p->err);
                if (r < 0)
                        return r;
                if (it->type != ROID_CW_TAG)
                        return 0;
        }
}

/* The next item, tags dropped, which must be of the given type. */
static int next_of(s2 *p, const char *field, roid_cw_type type, const char *want, roid_cw_item *ret) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        if (it.type != type)
                return unexpected(p, field, want, &it);
        *ret = it;
        return 0;
}

static int get_u64(s2 *p, const char *field, uint64_t *ret) {
        roid_cw_item it;
        int r = next_of(p, field, ROID_CW_UINT, "unsigned integer", &it);
        if (r < 0)
                return r;
        *ret = it.u;
        return 0;
}

static int get_f64(s2 *p, const char *field, double *ret) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        if (it.type == ROID_CW_FLOAT)
                *ret = it.f;
        else if (it.type == ROID_CW_UINT)
                *ret = (double)it.u;
        else if (it.type == ROID_CW_NEGINT)
                *ret = -1.0 - (double)it.u;
        else
                return unexpected(p, field, "number", &it);
        return 0;
}

static int get_bool(s2 *p, const char *field, bool *ret) {
        roid_cw_item it;
        int r = next_of(p, field, ROID_CW_BOOL, "boolean", &it);
        if (r < 0)
                return r;
        *ret = it.b;
        return 0;
}

static int check_tstr(s2 *p, const char *field, const roid_cw_item *it) {
        if (it->type != ROID_CW_TSTR)
                return unexpected(p, field, "text string", it);
        if (it->indefinite)
                return roid_err_set(p->err, -ENOTSUP, "%s: indefinite-length text string not supported", field);
        if (memchr(it->ptr, '\0', it->len))
                return roid_err_set(p->err, -EBADMSG, "%s: text string contains a NUL byte", field);
        /* CBOR text is UTF-8 (RFC 8949 3.1), and roid publishes some of it again */
        const size_t bad = roid_utf8_invalid_at((const char *)it->ptr, it->len);
        if (bad < it->len)
                return roid_err_set(p->err, -EBADMSG, "%s: text string byte 0x%02x at %zu is not UTF-8", field,
                                    it->ptr[bad], bad);
        return 0;
}

/* Identifiers (channel names, series_unique_id) must fit exactly. */
static int copy_name(s2 *p, const char *field, const roid_cw_item *it, char *dst, size_t size) {
        int r = check_tstr(p, field, it);
        if (r < 0)
                return r;
        if (it->len >= size)
                return roid_err_set(p->err, -EMSGSIZE, "%s: text of %zu bytes, at most %zu allowed", field, it->len,
                                    size - 1);
        memcpy(dst, it->ptr, it->len);
        dst[it->len] = '\0';
        return 0;
}

static int get_name(s2 *p, const char *field, char *dst, size_t size) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        return r < 0 ? r : copy_name(p, field, &it, dst, size);
}

/* Descriptive texts are cut at a UTF-8 character boundary rather than
 * rejected: they do not identify anything. */
static int get_text(s2 *p, const char *field, char *dst, size_t size) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        r = check_tstr(p, field, &it);
        if (r < 0)
                return r;
        size_t n = it.len;
        if (n >= size) {
                n = size - 1;
                while (n > 0 && (it.ptr[n] & 0xc0) == 0x80)
                        n--;
        }
        memcpy(dst, it.ptr, n);
        dst[n] = '\0';
        return 0;
}

static int get_rational(s2 *p, const char *field, roid_rational *ret) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 2))
                return unexpected(p, field, "rational [numerator, denominator]", &it);
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        uint64_t v[2];
        for (int i = 0; i < 2; i++) {
                r = roid_cw_iter_next(&p->c, &iter, p->err);
                if (r < 0)
                        return r;
                if (r == 0)
                        return roid_err_set(p->err, -EBADMSG, "%s: rational with %d elements, 2 expected", field, i);
                r = get_u64(p, field, &v[i]);
                if (r < 0)
                        return r;
        }
        r = roid_cw_iter_next(&p->c, &iter, p->err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_err_set(p->err, -EBADMSG, "%s: rational with more than 2 elements", field);
        if (v[1] == 0)
                return roid_err_set(p->err, -EBADMSG, "%s: rational [%" PRIu64 ", 0] has denominator 0", field, v[0]);
        ret->num = v[0];
        ret->den = v[1];
        return 0;
}

/* DateTime: tag 0 + text; a bare text string is accepted too. */
static int get_date(s2 *p, const char *field, char *dst, size_t size) {
        return get_text(p, field, dst, size);
}

/* user_data is opaque to roid: it is delimited with the cursor's hard depth
 * cap (the walk stays bounded), so that nesting beyond max_depth costs only
 * the user data, not the message. */
static int skip_user_data(s2 *p) {
        const unsigned depth = p->c.max_depth;
        p->c.max_depth = ROID_CW_DEPTH_CAP;
        int r = roid_cw_skip(&p->c, p->err);
        p->c.max_depth = depth;
        if (r < 0)
                roid_err_prefix(p->err, "user_data");
        return r;
}

/* The image's scan position, when it has one, is in its user data. */
#define UD_LOST_POSITION "; a scan position it carried is lost (the image is then not placed)"

static int get_span(s2 *p, roid_user_data *ret) {
        const uint8_t *start = p->c.pos;
        int r = skip_user_data(p);
        if (r < 0)
                return r;
        const size_t size = (size_t)(p->c.pos - start);
        const char *lost = p->m->type == ROID_MSG_IMAGE ? UD_LOST_POSITION : "";
        if (size > p->lim->max_json_bytes) { /* left out, the message stands (V1's appendix alike) */
                snprintf(p->m->user_data_ignored, sizeof p->m->user_data_ignored,
                         "user_data: %zu bytes exceeds max_json_bytes %zu%s", size, p->lim->max_json_bytes, lost);
                ret->kind = ROID_UD_LEFT_OUT;
                return 0;
        }
        roid_cw_cursor c;
        roid_err e = {""};
        roid_cw_init(&c, start, size, p->lim->max_depth);
        if (roid_cw_skip(&c, &e) < 0) { /* delimited above: only the depth can fail */
                snprintf(p->m->user_data_ignored, sizeof p->m->user_data_ignored,
                         "user_data: nested deeper than max_depth %u%s", p->lim->max_depth, lost);
                ret->kind = ROID_UD_LEFT_OUT;
                return 0;
        }
        ret->kind = ROID_UD_CBOR;
        ret->data = start;
        ret->size = size;
        return 0;
}

static uint64_t load_be64(const uint8_t *b) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | b[i];
        return v;
}

static int typed_array_dtype(s2 *p, const char *field, const roid_cw_item *it, roid_dtype *ret) {
        if (it->type != ROID_CW_TAG)
                return unexpected(p, field, "typed-array tag (64, 69, 70 or 85)", it);
        switch (it->u) {
        case 64:
                *ret = ROID_DT_U8;
                return 0;
        case 69:
                *ret = ROID_DT_U16;
                return 0;
        case 70:
                *ret = ROID_DT_U32;
                return 0;
        case 85:
                *ret = ROID_DT_F32;
                return 0;
        }
        if ((it->u >= 65 && it->u <= 87) || it->u == 1040)
                return roid_err_set(p->err, -ENOTSUP, "%s: typed-array tag %" PRIu64 " not supported (64, 69, 70, 85)",
                                    field, it->u);
        return unexpected(p, field, "typed-array tag (64, 69, 70 or 85)", it);
}

/* The content of a typed-array tag: a byte string, or tag 56500
 * [algorithm, modifier, bytes]. */
static int typed_array_content(s2 *p, const char *field, uint64_t tag, roid_blob *b) {
        roid_cw_item it;
        int r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        char want[64];
        snprintf(want, sizeof want, "byte string or tag 56500 inside typed-array tag %" PRIu64, tag);
        if (it.type == ROID_CW_BSTR) {
                if (it.indefinite)
                        return roid_err_set(p->err, -ENOTSUP, "%s: indefinite-length byte string not supported", field);
                b->data = it.ptr;
                b->size = it.len;
                b->comp = ROID_COMP_NONE;
                return 0;
        }
        if (it.type != ROID_CW_TAG || it.u != TAG_COMPRESSION)
                return unexpected(p, field, want, &it);

        r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 3))
                return unexpected(p, field, "array [algorithm, modifier, bytes] inside tag 56500", &it);
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        roid_cw_item alg = {0}, mod = {0}, data = {0};
        roid_cw_item *el[3] = {&alg, &mod, &data};
        for (int i = 0; i < 3; i++) {
                r = roid_cw_iter_next(&p->c, &iter, p->err);
                if (r < 0)
                        return r;
                if (r == 0)
                        return roid_err_set(p->err, -EBADMSG, "%s: tag 56500 array has %d elements, 3 expected", field,
                                            i);
                r = roid_cw_next(&p->c, el[i], p->err);
                if (r < 0)
                        return r;
        }
        r = roid_cw_iter_next(&p->c, &iter, p->err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_err_set(p->err, -EBADMSG, "%s: tag 56500 array has more than 3 elements", field);
        if (alg.type != ROID_CW_TSTR)
                return unexpected(p, field, "algorithm name (text) first in tag 56500", &alg);
        r = check_tstr(p, field, &alg);
        if (r < 0)
                return r;
        if (mod.type != ROID_CW_UINT)
                return unexpected(p, field, "unsigned integer modifier second in tag 56500", &mod);
        if (data.type != ROID_CW_BSTR)
                return unexpected(p, field, "byte string third in tag 56500", &data);
        if (data.indefinite)
                return roid_err_set(p->err, -ENOTSUP, "%s: indefinite-length byte string not supported", field);
        if (key_is(&alg, "bslz4")) {
                if (mod.u == 0 || mod.u > 8)
                        return roid_err_set(p->err, -EBADMSG, "%s: bslz4 element size %" PRIu64 ", expected 1..8",
                                            field, mod.u);
                b->comp = ROID_COMP_BSLZ4;
                b->comp_elem_size = (unsigned)mod.u;
        } else if (key_is(&alg, "lz4")) {
                b->comp = ROID_COMP_LZ4_H5;
        } else {
                return roid_err_set(p->err, -ENOTSUP, "%s: compression '%.*s' not supported (bslz4, lz4)", field,
                                    (int)(alg.len > 32 ? 32 : alg.len), (const char *)alg.ptr);
        }
        b->data = data.ptr;
        b->size = data.len;
        return 0;
}

/* Checks rows x cols against the limits; *ret_bytes is the decoded size. */
static int check_shape(s2 *p, const char *field, uint64_t rows, uint64_t cols, roid_dtype t, uint64_t *ret_bytes) {
        uint64_t px, bytes;
        if (rows == 0 || cols == 0)
                return roid_err_set(p->err, -EBADMSG, "%s: empty shape %" PRIu64 " x %" PRIu64, field, rows, cols);
        if (__builtin_mul_overflow(rows, cols, &px) || px > p->lim->max_pixels || rows > UINT32_MAX ||
            cols > UINT32_MAX)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "%s: shape %" PRIu64 " x %" PRIu64 " exceeds max_pixels %" PRIu64, field, rows,
                                    cols, p->lim->max_pixels);
        if (__builtin_mul_overflow(px, (uint64_t)roid_dtype_size(t), &bytes) || bytes > p->lim->max_frame_bytes)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "%s: shape %" PRIu64 " x %" PRIu64 " of %s exceeds max_frame_bytes %" PRIu64, field,
                                    rows, cols, roid_dtype_name(t), p->lim->max_frame_bytes);
        *ret_bytes = bytes;
        return 0;
}

static int check_size(s2 *p, const char *field, const roid_blob *b, uint64_t bytes) {
        if (b->comp == ROID_COMP_NONE && b->size != bytes)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "%s: byte string of %zu bytes, shape %" PRIu32 " x %" PRIu32
                                    " of %s needs %" PRIu64,
                                    field, b->size, b->rows, b->cols, roid_dtype_name(b->dtype), bytes);
        return 0;
}

/* A bare typed array (countrate LUT): one row. */
static int get_typed_array(s2 *p, const char *field, roid_blob *ret) {
        roid_cw_item it;
        int r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        roid_blob b = {0};
        r = typed_array_dtype(p, field, &it, &b.dtype);
        if (r < 0)
                return r;
        r = typed_array_content(p, field, it.u, &b);
        if (r < 0)
                return r;
        size_t es = roid_dtype_size(b.dtype);
        uint64_t bytes = b.size;
        if (b.comp != ROID_COMP_NONE) {
                /* Both framings start with the decoded size (big-endian). */
                if (b.size < 12)
                        return roid_err_set(p->err, -EBADMSG, "%s: compressed array of %zu bytes, header needs 12",
                                            field, b.size);
                bytes = load_be64(b.data);
        }
        if (bytes % es)
                return roid_err_set(p->err, -EBADMSG, "%s: %" PRIu64 " bytes is not a whole number of %s", field, bytes,
                                    roid_dtype_name(b.dtype));
        uint64_t n = bytes / es, dec;
        r = check_shape(p, field, 1, n, b.dtype, &dec);
        if (r < 0)
                return r;
        b.rows = 1;
        b.cols = (uint32_t)n;
        *ret = b;
        return 0;
}

/* MultiDimArray: tag 40 [[rows, cols], typed array]. */
static int get_mdarray(s2 *p, const char *field, roid_blob *ret) {
        roid_cw_item it;
        int r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_TAG || it.u != TAG_MULTIDIM)
                return unexpected(p, field, "tag 40 (multi-dimensional array)", &it);
        r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 2))
                return unexpected(p, field, "array [dims, typed array] inside tag 40", &it);
        roid_cw_iter outer;
        roid_cw_iter_init(&outer, &it);
        r = roid_cw_iter_next(&p->c, &outer, p->err);
        if (r < 0)
                return r;
        if (r == 0)
                return roid_err_set(p->err, -EBADMSG, "%s: empty array inside tag 40, [dims, typed array] expected",
                                    field);

        /* dims */
        r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 2))
                return unexpected(p, field, "dims [rows, cols] of two unsigned integers in tag 40", &it);
        roid_cw_iter di;
        roid_cw_iter_init(&di, &it);
        uint64_t dim[2];
        for (int i = 0; i < 2; i++) {
                r = roid_cw_iter_next(&p->c, &di, p->err);
                if (r < 0)
                        return r;
                if (r == 0)
                        return roid_err_set(p->err, -EBADMSG,
                                            "%s: dims with %d elements, [rows, cols] of two unsigned integers expected "
                                            "in tag 40",
                                            field, i);
                r = roid_cw_next(&p->c, &it, p->err);
                if (r < 0)
                        return r;
                if (it.type != ROID_CW_UINT)
                        return unexpected(p, field, "dims [rows, cols] of two unsigned integers in tag 40", &it);
                dim[i] = it.u;
        }
        r = roid_cw_iter_next(&p->c, &di, p->err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_err_set(p->err, -EBADMSG,
                                    "%s: dims with more than 2 elements, [rows, cols] expected in tag 40", field);

        /* typed array */
        r = roid_cw_iter_next(&p->c, &outer, p->err);
        if (r < 0)
                return r;
        if (r == 0)
                return roid_err_set(p->err, -EBADMSG, "%s: tag 40 array has no typed array after dims", field);
        r = roid_cw_next(&p->c, &it, p->err);
        if (r < 0)
                return r;
        roid_blob b = {0};
        r = typed_array_dtype(p, field, &it, &b.dtype);
        if (r < 0)
                return r;
        uint64_t bytes;
        r = check_shape(p, field, dim[0], dim[1], b.dtype, &bytes);
        if (r < 0)
                return r;
        r = typed_array_content(p, field, it.u, &b);
        if (r < 0)
                return r;
        b.rows = (uint32_t)dim[0];
        b.cols = (uint32_t)dim[1];
        r = check_size(p, field, &b, bytes);
        if (r < 0)
                return r;
        r = roid_cw_iter_next(&p->c, &outer, p->err);
        if (r < 0)
                return r;
        if (r > 0)
                return roid_err_set(p->err, -EBADMSG, "%s: tag 40 array has more than 2 elements", field);
        *ret = b;
        return 0;
}

/* Opens a map value; *ret_iter iterates its pairs.  At most max_entries
 * pairs are allowed when max_entries > 0. */
static int open_container(s2 *p, const char *field, roid_cw_type type, const char *want, roid_cw_iter *ret_iter,
                          roid_cw_item *ret_item) {
        roid_cw_item it;
        int r = next_of(p, field, type, want, &it);
        if (r < 0)
                return r;
        roid_cw_iter_init(ret_iter, &it);
        *ret_item = it;
        return 0;
}

static int open_map(s2 *p, const char *field, roid_cw_iter *ret_iter) {
        roid_cw_item it;
        return open_container(p, field, ROID_CW_MAP, "map", ret_iter, &it);
}

/* The channel list of a start message and the data map of an image hold at
 * most ROID_MAX_CHANNELS entries: a definite count is checked when the
 * container opens, and channel_room() checks every entry of either kind. */
static int open_channels(s2 *p, const char *field, roid_cw_type type, const char *want, roid_cw_iter *ret_iter) {
        roid_cw_item it;
        roid_cw_iter iter;
        int r = open_container(p, field, type, want, &iter, &it);
        if (r < 0)
                return r;
        if (!it.indefinite && it.u > ROID_MAX_CHANNELS)
                return roid_err_set(p->err, -EMSGSIZE, "%s: %" PRIu64 " channels, at most %d", field, it.u,
                                    ROID_MAX_CHANNELS);
        *ret_iter = iter;
        return 0;
}

static int channel_room(s2 *p, const char *field, unsigned n) {
        if (n < ROID_MAX_CHANNELS)
                return 0;
        return roid_err_set(p->err, -EMSGSIZE, "%s: more than %d channels", field, ROID_MAX_CHANNELS);
}

/* Next key of a map as a definite text string; 0 at the end. */
static int next_key(s2 *p, const char *field, roid_cw_iter *iter, roid_cw_item *key) {
        int r = roid_cw_iter_next(&p->c, iter, p->err);
        if (r <= 0)
                return r;
        r = next_untagged(p, key);
        if (r < 0)
                return r;
        if (key->type == ROID_CW_TSTR && !key->indefinite && !memchr(key->ptr, '\0', key->len))
                return 1; /* the common case, without naming the field */
        char f[FIELD_MAX];
        snprintf(f, sizeof f, "%.*s key", (int)(sizeof f - 5), field);
        r = check_tstr(p, f, key);
        return r < 0 ? r : 1;
}

/* "field/name" for error messages; once a frame per channel, so no printf. */
static void join_field(char *dst, size_t size, const char *field, const char *name) {
        size_t n = strnlen(field, size - 2);
        memcpy(dst, field, n);
        dst[n++] = '/';
        const size_t m = strnlen(name, size - 1 - n);
        memcpy(dst + n, name, m);
        dst[n + m] = '\0';
}

/* Channel-keyed maps of the start message (flatfield, pixel_mask). */
static int get_channel_blobs(s2 *p, const char *field, named_blob *ret_blobs, unsigned *ret_n) {
        roid_cw_iter iter;
        int r = open_map(p, field, &iter);
        if (r < 0)
                return r;
        unsigned n = 0;
        roid_cw_item key;
        while ((r = next_key(p, field, &iter, &key)) > 0) {
                if (n == ROID_MAX_CHANNELS)
                        return roid_err_set(p->err, -EMSGSIZE, "%s: more than %d channels", field, ROID_MAX_CHANNELS);
                char f[FIELD_MAX];
                snprintf(f, sizeof f, "%.*s key", (int)(sizeof f - 5), field);
                r = copy_name(p, f, &key, ret_blobs[n].name, sizeof ret_blobs[n].name);
                if (r < 0)
                        return r;
                join_field(f, sizeof f, field, ret_blobs[n].name);
                r = get_mdarray(p, f, &ret_blobs[n].blob);
                if (r < 0)
                        return r;
                n++;
        }
        if (r < 0)
                return r;
        *ret_n = n;
        return 0;
}

static int get_thresholds(s2 *p) {
        roid_cw_iter iter;
        int r = open_map(p, "threshold_energy", &iter);
        if (r < 0)
                return r;
        unsigned n = 0;
        roid_cw_item key;
        while ((r = next_key(p, "threshold_energy", &iter, &key)) > 0) {
                if (n == ROID_MAX_CHANNELS)
                        return roid_err_set(p->err, -EMSGSIZE, "threshold_energy: more than %d channels",
                                            ROID_MAX_CHANNELS);
                r = copy_name(p, "threshold_energy key", &key, p->thr_name[n], sizeof p->thr_name[n]);
                if (r < 0)
                        return r;
                char f[FIELD_MAX];
                snprintf(f, sizeof f, "threshold_energy/%s", p->thr_name[n]);
                r = get_f64(p, f, &p->thr_value[n]);
                if (r < 0)
                        return r;
                n++;
        }
        if (r < 0)
                return r;
        p->n_thr = n;
        return 0;
}

static int get_channels(s2 *p) {
        roid_start_info *s = &p->m->u.start;
        roid_cw_iter iter;
        int r = open_channels(p, "channels", ROID_CW_ARRAY, "array of text strings", &iter);
        if (r < 0)
                return r;
        unsigned n = 0;
        while ((r = roid_cw_iter_next(&p->c, &iter, p->err)) > 0) {
                if ((r = channel_room(p, "channels", n)) < 0)
                        return r;
                r = get_name(p, "channels", s->channels[n], sizeof s->channels[n]);
                if (r < 0)
                        return r;
                for (unsigned i = 0; i < n; i++)
                        if (strcmp(s->channels[i], s->channels[n]) == 0)
                                return roid_err_set(p->err, -EBADMSG, "channels: '%s' listed twice", s->channels[n]);
                n++;
        }
        if (r < 0)
                return r;
        s->n_channels = n;
        return 0;
}

static int get_goniometer(s2 *p) {
        roid_start_info *s = &p->m->u.start;
        roid_cw_iter iter;
        int r = open_map(p, "goniometer", &iter);
        if (r < 0)
                return r;
        roid_cw_item key;
        while ((r = next_key(p, "goniometer", &iter, &key)) > 0) {
                int axis = -1;
                for (int i = 0; i < ROID_GONIO_AXES; i++)
                        if (key_is(&key, roid_gonio_axis_names[i]))
                                axis = i;
                if (axis < 0) {
                        r = roid_cw_skip(&p->c, p->err);
                        if (r < 0)
                                return r;
                        continue;
                }
                char f[FIELD_MAX];
                snprintf(f, sizeof f, "goniometer/%s", roid_gonio_axis_names[axis]);
                roid_cw_iter ai;
                r = open_map(p, f, &ai);
                if (r < 0)
                        return r;
                roid_cw_item k2;
                while ((r = next_key(p, f, &ai, &k2)) > 0) {
                        char f2[FIELD_MAX + 16];
                        if (key_is(&k2, "start")) {
                                snprintf(f2, sizeof f2, "%s/start", f);
                                r = get_f64(p, f2, &s->goniometer[axis].start);
                        } else if (key_is(&k2, "increment")) {
                                snprintf(f2, sizeof f2, "%s/increment", f);
                                r = get_f64(p, f2, &s->goniometer[axis].increment);
                        } else {
                                r = roid_cw_skip(&p->c, p->err);
                        }
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
                s->goniometer[axis].present = true;
        }
        return r;
}

static int get_translation(s2 *p) {
        roid_start_info *s = &p->m->u.start;
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        if (it.type != ROID_CW_ARRAY || (!it.indefinite && it.u != 3))
                return unexpected(p, "detector_translation", "array of 3 numbers", &it);
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        unsigned n = 0;
        while ((r = roid_cw_iter_next(&p->c, &iter, p->err)) > 0) {
                if (n == 3)
                        return roid_err_set(p->err, -EBADMSG, "detector_translation: more than 3 elements");
                r = get_f64(p, "detector_translation", &s->detector_translation[n++]);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        if (n != 3)
                return roid_err_set(p->err, -EBADMSG, "detector_translation: %u elements, 3 expected", n);
        s->has_detector_translation = true;
        return 0;
}

static int get_image_dtype(s2 *p) {
        roid_cw_item it;
        int r = next_untagged(p, &it);
        if (r < 0)
                return r;
        r = check_tstr(p, "image_dtype", &it);
        if (r < 0)
                return r;
        roid_dtype t = roid_dtype_from_name((const char *)it.ptr, it.len);
        if (t != ROID_DT_U8 && t != ROID_DT_U16 && t != ROID_DT_U32)
                return roid_err_set(p->err, -ENOTSUP, "image_dtype: '%.*s' not supported (uint8, uint16, uint32)",
                                    (int)(it.len > 32 ? 32 : it.len), (const char *)it.ptr);
        p->m->u.start.image_dtype = t;
        return 0;
}

static int start_value(s2 *p, const roid_cw_item *k) {
        roid_start_info *s = &p->m->u.start;
        static const struct {
                const char *key;
                size_t off;
                unsigned seen;
        } floats[] = {
                {"beam_center_x", offsetof(roid_start_info, beam_center_x), SEEN_BCX},
                {"beam_center_y", offsetof(roid_start_info, beam_center_y), SEEN_BCY},
                {"pixel_size_x", offsetof(roid_start_info, pixel_size_x), SEEN_PSX},
                {"pixel_size_y", offsetof(roid_start_info, pixel_size_y), SEEN_PSY},
                {"count_time", offsetof(roid_start_info, count_time), 0},
                {"frame_time", offsetof(roid_start_info, frame_time), 0},
                {"incident_energy", offsetof(roid_start_info, incident_energy), 0},
                {"incident_wavelength", offsetof(roid_start_info, incident_wavelength), 0},
                {"sensor_thickness", offsetof(roid_start_info, sensor_thickness), 0},
        };
        for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
                if (!key_is(k, floats[i].key))
                        continue;
                int r = get_f64(p, floats[i].key, (double *)((char *)s + floats[i].off));
                if (r < 0)
                        return r;
                p->seen |= floats[i].seen;
                if (key_is(k, "count_time"))
                        s->has_count_time = true;
                else if (key_is(k, "frame_time"))
                        s->has_frame_time = true;
                else if (key_is(k, "incident_energy"))
                        s->has_energy = true;
                else if (key_is(k, "incident_wavelength"))
                        s->has_wavelength = true;
                return 0;
        }
        static const struct {
                const char *key;
                size_t off;
        } bools[] = {
                {"countrate_correction_enabled", offsetof(roid_start_info, countrate_correction_enabled)},
                {"flatfield_enabled", offsetof(roid_start_info, flatfield_enabled)},
                {"pixel_mask_enabled", offsetof(roid_start_info, pixel_mask_enabled)},
                {"virtual_pixel_interpolation_enabled", offsetof(roid_start_info, virtual_pixel_interpolation_enabled)},
        };
        for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++)
                if (key_is(k, bools[i].key))
                        return get_bool(p, bools[i].key, (bool *)((char *)s + bools[i].off));
        static const struct {
                const char *key;
                size_t off;
        } texts[] = {
                {"detector_description", offsetof(roid_start_info, detector_description)},
                {"detector_serial_number", offsetof(roid_start_info, detector_serial_number)},
                {"sensor_material", offsetof(roid_start_info, sensor_material)},
        };
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
                if (key_is(k, texts[i].key))
                        return get_text(p, texts[i].key, (char *)s + texts[i].off, ROID_TEXT_MAX);

        int r;
        if (key_is(k, "arm_date"))
                return get_date(p, "arm_date", s->arm_date, sizeof s->arm_date);
        if (key_is(k, "channels"))
                return get_channels(p);
        if (key_is(k, "countrate_correction_lookup_table"))
                return get_typed_array(p, "countrate_correction_lookup_table", &s->countrate_table);
        if (key_is(k, "detector_translation"))
                return get_translation(p);
        if (key_is(k, "flatfield"))
                return get_channel_blobs(p, "flatfield", p->flatfield, &p->n_flatfield);
        if (key_is(k, "pixel_mask"))
                return get_channel_blobs(p, "pixel_mask", p->pixel_mask, &p->n_pixel_mask);
        if (key_is(k, "goniometer"))
                return get_goniometer(p);
        if (key_is(k, "image_dtype"))
                return get_image_dtype(p);
        if (key_is(k, "image_size_x")) {
                p->seen |= SEEN_ISX;
                return get_u64(p, "image_size_x", &s->image_size_x);
        }
        if (key_is(k, "image_size_y")) {
                p->seen |= SEEN_ISY;
                return get_u64(p, "image_size_y", &s->image_size_y);
        }
        if (key_is(k, "number_of_images")) {
                r = get_u64(p, "number_of_images", &s->number_of_images);
                s->has_number_of_images = r == 0;
                return r;
        }
        if (key_is(k, "saturation_value")) {
                r = get_u64(p, "saturation_value", &s->saturation_value);
                s->has_saturation_value = r == 0;
                return r;
        }
        if (key_is(k, "threshold_energy"))
                return get_thresholds(p);
        return roid_cw_skip(&p->c, p->err);
}

/* Start fields the analysis does not need (at most copied to the results
 * file): a flaw in one costs that field, not the series. */
static const char *const unused_fields[] = {
        "arm_date",
        "count_time",
        "countrate_correction_enabled",
        "countrate_correction_lookup_table",
        "detector_description",
        "detector_serial_number",
        "detector_translation",
        "flatfield",
        "flatfield_enabled",
        "frame_time",
        "goniometer",
        "incident_energy",
        "incident_wavelength",
        "pixel_mask_enabled",
        "pixel_size_x",
        "pixel_size_y",
        "saturation_value",
        "sensor_material",
        "sensor_thickness",
        "threshold_energy",
        "virtual_pixel_interpolation_enabled",
};

static int start_field(s2 *p, const roid_cw_item *k) {
        bool unused = false;
        for (size_t i = 0; i < sizeof unused_fields / sizeof unused_fields[0] && !unused; i++)
                unused = key_is(k, unused_fields[i]);
        if (!unused)
                return start_value(p, k);
        const uint8_t *at = p->c.pos;
        roid_err e = {""}, *saved = p->err;
        p->err = &e;
        int r = start_value(p, k);
        p->err = saved;
        if (r >= 0)
                return r;
        /* Pass 1 delimited the value; whatever start_value() half-filled is
         * flagged absent or never resolved. */
        p->c.pos = at;
        r = roid_cw_skip(&p->c, p->err);
        if (r < 0)
                return r;
        ROID_LOG_LIMITED(ROID_LOG_WARNING, "start message: field %.*s left out (not needed for the analysis): %s",
                         (int)k->len, (const char *)k->ptr, e.msg);
        return 0;
}

static int find_channel(const roid_start_info *s, const char *name) {
        for (unsigned i = 0; i < s->n_channels; i++)
                if (strcmp(s->channels[i], name) == 0)
                        return (int)i;
        return -1;
}

/* Channel maps may come before "channels"; entries for channels that are
 * not active are dropped (a real start listed threshold_2's energy while
 * only threshold_1 was active). */
static void start_finish(s2 *p) {
        roid_start_info *s = &p->m->u.start;
        for (unsigned i = 0; i < p->n_thr; i++) {
                int c = find_channel(s, p->thr_name[i]);
                if (c >= 0)
                        s->threshold_energy[c] = p->thr_value[i];
        }
        for (unsigned i = 0; i < p->n_flatfield; i++) {
                int c = find_channel(s, p->flatfield[i].name);
                if (c >= 0)
                        s->flatfield[c] = p->flatfield[i].blob;
        }
        for (unsigned i = 0; i < p->n_pixel_mask; i++) {
                int c = find_channel(s, p->pixel_mask[i].name);
                if (c >= 0)
                        s->pixel_mask[c] = p->pixel_mask[i].blob;
        }
        s->has_beam_center = (p->seen & (SEEN_BCX | SEEN_BCY)) == (SEEN_BCX | SEEN_BCY);
        s->has_pixel_size = (p->seen & (SEEN_PSX | SEEN_PSY)) == (SEEN_PSX | SEEN_PSY);
        s->has_image_size = (p->seen & (SEEN_ISX | SEEN_ISY)) == (SEEN_ISX | SEEN_ISY);
}

static int get_data(s2 *p) {
        roid_image_info *im = &p->m->u.image;
        roid_cw_iter iter;
        int r = open_channels(p, "data", ROID_CW_MAP, "map of channel name to tag 40 array", &iter);
        if (r < 0)
                return r;
        unsigned n = 0;
        roid_cw_item key;
        while ((r = next_key(p, "data", &iter, &key)) > 0) {
                if ((r = channel_room(p, "data", n)) < 0)
                        return r;
                roid_channel_blob *ch = &im->channel[n];
                r = copy_name(p, "data key", &key, ch->name, sizeof ch->name);
                if (r < 0)
                        return r;
                for (unsigned i = 0; i < n; i++)
                        if (strcmp(im->channel[i].name, ch->name) == 0)
                                return roid_err_set(p->err, -EBADMSG, "data: channel '%s' appears twice", ch->name);
                char f[FIELD_MAX];
                join_field(f, sizeof f, "data", ch->name);
                r = get_mdarray(p, f, &ch->blob);
                if (r < 0)
                        return r;
                n++;
        }
        if (r < 0)
                return r;
        if (n == 0) /* an image without a frame must not use up its image_id */
                return roid_err_set(p->err, -EBADMSG, "data: empty map, at least one channel expected");
        im->n_channels = n;
        return 0;
}

static int image_field(s2 *p, const roid_cw_item *k) {
        roid_image_info *im = &p->m->u.image;
        if (key_is(k, "image_id")) {
                p->seen |= SEEN_IMAGE_ID;
                return get_u64(p, "image_id", &im->image_id);
        }
        if (key_is(k, "data")) {
                p->seen |= SEEN_DATA;
                return get_data(p);
        }
        if (key_is(k, "real_time")) {
                p->seen |= SEEN_REAL;
                return get_rational(p, "real_time", &im->real_time);
        }
        if (key_is(k, "start_time")) {
                p->seen |= SEEN_START;
                return get_rational(p, "start_time", &im->start_time);
        }
        if (key_is(k, "stop_time")) {
                p->seen |= SEEN_STOP;
                return get_rational(p, "stop_time", &im->stop_time);
        }
        if (key_is(k, "series_date"))
                return get_date(p, "series_date", im->series_date, sizeof im->series_date);
        return roid_cw_skip(&p->c, p->err);
}

int stream2_parse_internal(const uint8_t *buf, size_t size, const roid_limits *lim, roid_msg *m, roid_err *err) {
        s2 p = {.lim = lim, .err = err, .m = m};
        roid_cw_init(&p.c, buf, size, lim->max_depth);

        roid_cw_item it;
        int r = roid_cw_next(&p.c, &it, err);
        if (r < 0)
                return r;
        if (it.type == ROID_CW_TAG && it.u == TAG_SELF_DESCRIBED) {
                r = roid_cw_next(&p.c, &it, err);
                if (r < 0)
                        return r;
        }
        if (it.type != ROID_CW_MAP)
                return unexpected(&p, "top level", "map", &it);
        const roid_cw_item top = it;
        const uint8_t *body = p.c.pos;

        /* Pass 1: find "type" (not necessarily the first key) and check that
         * the whole message is well-formed. */
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &top);
        roid_cw_item key, type = {0};
        while ((r = next_key(&p, "top level", &iter, &key)) > 0) {
                if (key_is(&key, "type")) {
                        r = next_untagged(&p, &type);
                        if (r < 0)
                                return r;
                        r = check_tstr(&p, "type", &type);
                } else if (key_is(&key, "user_data")) {
                        r = skip_user_data(&p);
                } else {
                        r = roid_cw_skip(&p.c, err);
                }
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        if (!roid_cw_at_end(&p.c))
                return roid_err_set(err, -EBADMSG, "%zu trailing bytes after the top-level map",
                                    (size_t)(p.c.end - p.c.pos));
        if (type.type == 0)
                return roid_err_set(err, -EBADMSG, "no 'type' key in the top-level map");
        if (key_is(&type, "start")) {
                m->type = ROID_MSG_START;
                for (int i = 0; i < ROID_MAX_CHANNELS; i++)
                        m->u.start.threshold_energy[i] = NAN;
        } else if (key_is(&type, "image")) {
                m->type = ROID_MSG_IMAGE;
        } else if (key_is(&type, "end")) {
                m->type = ROID_MSG_END;
        } else {
                return roid_err_set(err, -ENOTSUP, "type '%.*s' not supported (start, image, end)",
                                    (int)(type.len > 32 ? 32 : type.len), (const char *)type.ptr);
        }

        /* Pass 2: the fields. */
        p.c.pos = body;
        roid_cw_iter_init(&iter, &top);
        while ((r = next_key(&p, "top level", &iter, &key)) > 0) {
                if (key_is(&key, "series_id"))
                        r = get_u64(&p, "series_id", &m->series_id);
                else if (key_is(&key, "series_unique_id"))
                        r = get_name(&p, "series_unique_id", m->series_unique_id, sizeof m->series_unique_id);
                else if (key_is(&key, "user_data") && m->type != ROID_MSG_END)
                        r = get_span(&p, &m->user_data);
                else if (key_is(&key, "user_data"))
                        r = skip_user_data(&p);
                else if (m->type == ROID_MSG_START)
                        r = start_field(&p, &key);
                else if (m->type == ROID_MSG_IMAGE)
                        r = image_field(&p, &key);
                else
                        r = roid_cw_skip(&p.c, err);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        if (m->type == ROID_MSG_START) {
                start_finish(&p);
        } else if (m->type == ROID_MSG_IMAGE) {
                if (!(p.seen & SEEN_IMAGE_ID))
                        return roid_err_set(err, -EBADMSG, "image: no 'image_id'");
                if (!(p.seen & SEEN_DATA))
                        return roid_err_set(err, -EBADMSG, "image: no 'data'");
                unsigned t = SEEN_REAL | SEEN_START | SEEN_STOP;
                m->u.image.has_times = (p.seen & t) == t;
        }
        return 0;
}
