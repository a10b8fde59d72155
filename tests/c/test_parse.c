/* test_parse - Stream V1 / V2 message parsers (ingest/parse.h) on DECTRIS's
 * real V2 messages, on messages built here with libcbor's encoder and as
 * JSON text, and on malformed input of every kind. */
#include "tap.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cbor.h>

#include "ingest/cborwalk.h"
#include "ingest/parse.h"

#include "alloccount.h"

#if defined(__SANITIZE_ADDRESS__)
#endif

static roid_limits lim;
static roid_parser *parser;

/* ---- a CBOR writer on libcbor's encoder ---- */

typedef struct {
        uint8_t *b;
        size_t n, cap;
        unsigned keys;
        bool overflow;
} wbuf;

static wbuf *w_new(size_t cap) {
        wbuf *w = calloc(1, sizeof *w);
        w->b = malloc(cap);
        w->cap = cap;
        return w;
}

static void w_free(wbuf *w) {
        free(w->b);
        free(w);
}

static void w_adv(wbuf *w, size_t k) {
        if (k == 0)
                w->overflow = true;
        w->n += k;
}

static void w_raw(wbuf *w, const void *p, size_t l) {
        if (l > w->cap - w->n) {
                w->overflow = true;
                return;
        }
        memcpy(w->b + w->n, p, l);
        w->n += l;
}

static void w_uint(wbuf *w, uint64_t v) {
        w_adv(w, cbor_encode_uint(v, w->b + w->n, w->cap - w->n));
}
static void w_negint(wbuf *w, uint64_t v) {
        w_adv(w, cbor_encode_negint(v, w->b + w->n, w->cap - w->n));
}
static void w_tag(wbuf *w, uint64_t v) {
        w_adv(w, cbor_encode_tag(v, w->b + w->n, w->cap - w->n));
}
static void w_map(wbuf *w, size_t n) {
        w_adv(w, cbor_encode_map_start(n, w->b + w->n, w->cap - w->n));
}
static void w_imap(wbuf *w) {
        w_adv(w, cbor_encode_indef_map_start(w->b + w->n, w->cap - w->n));
}
static void w_array(wbuf *w, size_t n) {
        w_adv(w, cbor_encode_array_start(n, w->b + w->n, w->cap - w->n));
}
static void w_iarray(wbuf *w) {
        w_adv(w, cbor_encode_indef_array_start(w->b + w->n, w->cap - w->n));
}
static void w_break(wbuf *w) {
        w_adv(w, cbor_encode_break(w->b + w->n, w->cap - w->n));
}
static void w_double(wbuf *w, double v) {
        w_adv(w, cbor_encode_double(v, w->b + w->n, w->cap - w->n));
}
static void w_single(wbuf *w, float v) {
        w_adv(w, cbor_encode_single(v, w->b + w->n, w->cap - w->n));
}
static void w_half(wbuf *w, float v) {
        w_adv(w, cbor_encode_half(v, w->b + w->n, w->cap - w->n));
}
static void w_bool(wbuf *w, bool v) {
        w_adv(w, cbor_encode_bool(v, w->b + w->n, w->cap - w->n));
}
static void w_text(wbuf *w, const char *s) {
        size_t l = strlen(s);
        w_adv(w, cbor_encode_string_start(l, w->b + w->n, w->cap - w->n));
        w_raw(w, s, l);
}
static void w_bytes(wbuf *w, const void *p, size_t l) {
        w_adv(w, cbor_encode_bytestring_start(l, w->b + w->n, w->cap - w->n));
        w_raw(w, p, l);
}
/* key: text, then the caller writes the value */
static void w_key(wbuf *w, const char *k) {
        w->keys++;
        w_text(w, k);
}
static void w_rational(wbuf *w, uint64_t a, uint64_t b) {
        w_array(w, 2);
        w_uint(w, a);
        w_uint(w, b);
}
/* tag 40 [[rows, cols], tag(tatag) bytes] */
static void w_mdarray(wbuf *w, uint64_t rows, uint64_t cols, uint64_t tatag, const void *p, size_t l) {
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 2);
        w_uint(w, rows);
        w_uint(w, cols);
        w_tag(w, tatag);
        w_bytes(w, p, l);
}

/* ---- helpers ---- */

static int parse1(const uint8_t *d, size_t n, roid_msg *m, roid_err *e) {
        roid_part pt = {d, n};
        e->msg[0] = '\0';
        return roid_parse(parser, &pt, 1, m, e);
}

static const char *errname(int r) {
        switch (r) {
        case 0:
                return "0";
        case -EBADMSG:
                return "-EBADMSG";
        case -EMSGSIZE:
                return "-EMSGSIZE";
        case -ENOTSUP:
                return "-ENOTSUP";
        case -EINVAL:
                return "-EINVAL";
        default:
                return "other";
        }
}

/* Checks that parsing fails with want, says why, and leaves *ret alone. */
static void expect_fail_parts(roid_parser *ps, const char *what, const roid_part *parts, size_t n, int want,
                              const char *must_contain) {
        static roid_msg m, sentinel;
        memset(&sentinel, 0x5a, sizeof sentinel);
        memcpy(&m, &sentinel, sizeof m);
        roid_err e = {{0}};
        int r = roid_parse(ps, parts, n, &m, &e);
        tap_ok(r == want, "%s: returns %s (got %s, %d)", what, errname(want), errname(r), r);
        tap_diag("%s: %s", what, e.msg);
        tap_ok(e.msg[0] != '\0', "%s: error message given", what);
        if (must_contain)
                tap_ok(strstr(e.msg, must_contain) != NULL, "%s: message names '%s'", what, must_contain);
        tap_ok(memcmp(&m, &sentinel, sizeof m) == 0, "%s: result untouched on failure", what);
}

static void expect_fail(const char *what, const wbuf *w, int want, const char *must_contain) {
        roid_part pt = {w->b, w->n};
        tap_ok(!w->overflow, "%s: test message fits its buffer", what);
        expect_fail_parts(parser, what, &pt, 1, want, must_contain);
}

static bool inside(const void *p, size_t n, const uint8_t *buf, size_t size) {
        const uint8_t *q = p;
        return q >= buf && q + n <= buf + size;
}

static uint64_t be64(const uint8_t *b) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | b[i];
        return v;
}

/* ---- the cursor itself, on hand-written bytes (RFC 8949 appendix A) ---- */

static void test_cborwalk(void) {
        /* [_ 6(0), simple(5), simple(32), 1.0 (half), (_ h'61', h'62'), -100, "ab", null, undefined,
         *    {1: [2, 3]}, 1.5 (single), true] */
        static const uint8_t b[] = {0x9f, 0xc6, 0x00, 0xe5, 0xf8, 0x20, 0xf9, 0x3c, 0x00, 0x5f, 0x41, 0x61,
                                    0x41, 0x62, 0xff, 0x38, 0x63, 0x62, 0x61, 0x62, 0xf6, 0xf7, 0xa1, 0x01,
                                    0x82, 0x02, 0x03, 0xfa, 0x3f, 0xc0, 0x00, 0x00, 0xf5, 0xff};
        roid_cw_cursor c;
        roid_cw_item it;
        roid_err e;
        roid_cw_init(&c, b, sizeof b, 32);
        int r = roid_cw_next(&c, &it, &e);
        tap_ok(r == 0 && it.type == ROID_CW_ARRAY && it.indefinite, "cursor: indefinite array");
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        static const roid_cw_type want[] = {ROID_CW_TAG,   ROID_CW_SIMPLE, ROID_CW_SIMPLE, ROID_CW_FLOAT,
                                            ROID_CW_BSTR,  ROID_CW_NEGINT, ROID_CW_TSTR,   ROID_CW_NULL,
                                            ROID_CW_UNDEF, ROID_CW_MAP,    ROID_CW_FLOAT,  ROID_CW_BOOL};
        size_t i = 0;
        bool good = true;
        while ((r = roid_cw_iter_next(&c, &iter, &e)) > 0 && i < sizeof want / sizeof want[0]) {
                r = roid_cw_next(&c, &it, &e);
                good &= r == 0 && it.type == want[i];
                if (i == 0)
                        good &= it.u == 6; /* libcbor 0.8 alone rejects 0xc6 */
                if (i == 2)
                        good &= it.u == 32;
                if (i == 3)
                        good &= it.f == 1.0;
                if (i == 5)
                        good &= it.u == 99; /* -1 - 99 = -100 */
                if (i == 6)
                        good &= it.len == 2 && memcmp(it.ptr, "ab", 2) == 0 && it.ptr == b + 18;
                if (i == 10)
                        good &= it.f == 1.5;
                if (i == 11)
                        good &= it.b;
                if (!good)
                        tap_diag("cursor item %zu: r %d type %d u %" PRIu64, i, r, (int)it.type, it.u);
                if (r == 0 && roid_cw_skip_rest(&c, &it, &e) < 0)
                        good = false;
                i++;
        }
        tap_ok(good && r == 0 && i == 12 && roid_cw_at_end(&c), "cursor: 12 items of every kind, then break (%zu)", i);
        roid_cw_init(&c, b, sizeof b, 32);
        tap_ok(roid_cw_skip(&c, &e) == 0 && roid_cw_at_end(&c), "cursor: skip() steps over the whole array");
        roid_cw_init(&c, b, sizeof b, 1);
        r = roid_cw_skip(&c, &e);
        tap_ok(r == -EBADMSG, "cursor: depth limit 1 refuses the nested map (%s)", e.msg);
        size_t bad = 0;
        for (size_t k = 0; k < sizeof b; k++) {
                roid_cw_init(&c, b, k, 32);
                if (roid_cw_skip(&c, &e) != -EBADMSG || !strstr(e.msg, "truncated"))
                        bad++;
        }
        tap_ok(bad == 0, "cursor: every cut says 'truncated' (%zu do not)", bad);
        /* a byte string declaring 2^64 - 1 bytes: libcbor's count of what it
         * needs wraps; the message must not claim a few bytes would do */
        static const uint8_t huge[] = {0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c'};
        roid_cw_item hi;
        roid_cw_init(&c, huge, sizeof huge, 32);
        r = roid_cw_next(&c, &hi, &e);
        tap_ok(r == -EBADMSG && strstr(e.msg, "truncated") && strstr(e.msg, "declares more than the 12 bytes left"),
               "cursor: a length of 2^64 - 1 is named as such (%s)", e.msg);
}

/* ---- V2: DECTRIS's real messages ---- */

/* Byte-string lengths of the three channels, read with Python cbor2. */
static const size_t real_blob_len[3][3] = {
        {157494, 157140, 207978},
        {157494, 157143, 207969},
        {157483, 157138, 207955},
};

static void test_real_images(void) {
        static const char *const names[3] = {"threshold_1", "threshold_2", "difference"};
        static const uint8_t ud[] = {0x82, 0x01, 0x64, 0xf0, 0x9f, 0x92, 0x99}; /* [1, "💙"] */
        for (int i = 0; i < 3; i++) {
                char path[64];
                snprintf(path, sizeof path, "stream2/r500k_bslz4_16bit_00000%d.cbor", i + 1);
                size_t n;
                uint8_t *d = tap_slurp(tap_data(path), &n);
                if (!tap_ok(d != NULL, "read %s", path))
                        continue;
                roid_part pt = {d, n};
                tap_ok(roid_detect_format(&pt, 1) == ROID_FMT_V2, "%s: detected as V2", path);
                roid_msg m;
                roid_err e;
                int r = parse1(d, n, &m, &e);
                if (!tap_ok(r == 0, "%s parses (%d %s)", path, r, e.msg)) {
                        free(d);
                        continue;
                }
                tap_ok(m.type == ROID_MSG_IMAGE && m.format == ROID_FMT_V2, "%s: V2 image", path);
                tap_eq_u64(m.u.image.image_id, (uint64_t)i, "image_id");
                tap_eq_u64(m.series_id, 1, "series_id");
                tap_ok(strcmp(m.series_unique_id, "01GRXWT80JSDY2FNW8SGCCDZD9") == 0, "series_unique_id %s",
                       m.series_unique_id);
                tap_ok(strcmp(m.u.image.series_date, "2023-02-10T15:49:05.281+01:00") == 0, "series_date %s",
                       m.u.image.series_date);
                const roid_image_info *im = &m.u.image;
                tap_ok(im->has_times, "times present");
                tap_ok(im->real_time.num == 999995 && im->real_time.den == 50000000,
                       "real_time [%" PRIu64 ", %" PRIu64 "]", im->real_time.num, im->real_time.den);
                tap_ok(im->start_time.num == 1000000ull * i && im->start_time.den == 50000000,
                       "start_time [%" PRIu64 ", %" PRIu64 "]", im->start_time.num, im->start_time.den);
                tap_ok(im->stop_time.num == 1000000ull * i + 999995 && im->stop_time.den == 50000000,
                       "stop_time [%" PRIu64 ", %" PRIu64 "]", im->stop_time.num, im->stop_time.den);
                tap_ok(m.user_data.kind == ROID_UD_CBOR && m.user_data.size == sizeof ud &&
                               memcmp(m.user_data.data, ud, sizeof ud) == 0 &&
                               inside(m.user_data.data, m.user_data.size, d, n),
                       "user_data is the CBOR span of [1, \"💙\"] inside the message");
                tap_eq_u64(im->n_channels, 3, "channels");
                for (int c = 0; c < 3 && c < (int)im->n_channels; c++) {
                        const roid_blob *b = &im->channel[c].blob;
                        tap_ok(strcmp(im->channel[c].name, names[c]) == 0, "channel %d is %s", c, im->channel[c].name);
                        tap_ok(b->rows == 514 && b->cols == 1030, "%s dims %u x %u", names[c], b->rows, b->cols);
                        tap_ok(b->dtype == ROID_DT_U16 && b->comp == ROID_COMP_BSLZ4 && b->comp_elem_size == 2,
                               "%s uint16 bslz4 elem 2", names[c]);
                        tap_eq_u64(b->size, real_blob_len[i][c], "blob size = byte string length (cbor2)");
                        tap_ok(inside(b->data, b->size, d, n), "%s blob points into the message (zero copy)", names[c]);
                        tap_ok(b->size >= 12 && be64(b->data) == 514ull * 1030 * 2,
                               "%s blob starts with the bslz4 header of 514*1030*2 bytes", names[c]);
                }
                free(d);
        }

        size_t n;
        uint8_t *d = tap_slurp(tap_data("stream2/r500k_bslz4_16bit_000011.cbor"), &n);
        if (tap_ok(d != NULL, "read end message")) {
                roid_msg m;
                roid_err e;
                int r = parse1(d, n, &m, &e);
                tap_ok(r == 0 && m.type == ROID_MSG_END, "end message parses (%d %s)", r, e.msg);
                tap_eq_u64(m.series_id, 1, "end series_id");
                tap_ok(strcmp(m.series_unique_id, "01GRXWT80JSDY2FNW8SGCCDZD9") == 0, "end series_unique_id");
                free(d);
        }
}

/* Every prefix of a real image must fail cleanly.  All cut points run on the
 * shared buffer; the cut points outside the big byte strings also run on an
 * exact-size copy so that the sanitizers catch any read past the end. */
static void test_truncation(void) {
        size_t n;
        uint8_t *d = tap_slurp(tap_data("stream2/r500k_bslz4_16bit_000001.cbor"), &n);
        if (!tap_ok(d != NULL, "read image for truncation"))
                return;
        roid_msg full;
        roid_err e;
        if (!tap_ok(parse1(d, n, &full, &e) == 0, "full image parses"))
                return;
        size_t bad = 0, nomsg = 0, exact = 0, badexact = 0;
        for (size_t k = 0; k < n; k++) {
                roid_msg m;
                int r = parse1(d, k, &m, &e);
                if (r != -EBADMSG)
                        bad++;
                if (!e.msg[0])
                        nomsg++;
                bool in_blob = false;
                for (unsigned c = 0; c < full.u.image.n_channels; c++) {
                        const roid_blob *b = &full.u.image.channel[c].blob;
                        size_t off = (size_t)(b->data - d);
                        if (k > off + 16 && k + 16 < off + b->size)
                                in_blob = true;
                }
                if (!in_blob || k % 4099 == 0) {
                        uint8_t *cp = malloc(k ? k : 1);
                        memcpy(cp, d, k);
                        if (parse1(cp, k, &m, &e) != -EBADMSG)
                                badexact++;
                        free(cp);
                        exact++;
                }
        }
        tap_ok(bad == 0, "all %zu truncated prefixes return -EBADMSG (%zu did not)", n, bad);
        tap_ok(nomsg == 0, "every truncation is described (%zu without message)", nomsg);
        tap_ok(badexact == 0, "%zu exact-size truncated copies fail cleanly (%zu did not)", exact, badexact);
        parse1(d, n / 2, &full, &e);
        tap_diag("cut in half: %s", e.msg);
        free(d);
}

/* ---- V2: a start message built here ---- */

static const float ff0[6] = {1.0f, 1.5f, 0.5f, 2.0f, 1.25f, 0.75f};
static const float ff1[6] = {0.9f, 1.1f, 1.0f, 1.0f, 1.2f, 0.8f};
static const uint32_t pm0[6] = {0, 1, 0, 2, 0, 0};
static const uint32_t pm1[6] = {0, 0, 16, 0, 0, 1};
static const uint32_t lut[5] = {0, 100, 200, 300, 400};

/* Longer than an identifier (ROID_NAME_MAX): free text is kept whole. */
#define LONG_DESCRIPTION                                                                                               \
        "Dectris EIGER2 Si 16M, beamline X99 experimental hutch 2, 4M region of interest mode since the 2025 service"

/* Every field of eiger-stream.md §2.4; [*ud0, *ud1) is the user_data item. */
static void build_start(wbuf *w, size_t *ud0, size_t *ud1) {
        w_tag(w, 55799);
        w_map(w, 35);
        /* type deliberately not first */
        w_key(w, "arm_date");
        w_tag(w, 0);
        w_text(w, "2023-10-03T17:47:48.329+02:00");
        w_key(w, "beam_center_x");
        w_double(w, 512.25);
        w_key(w, "beam_center_y");
        w_single(w, 256.5f);
        w_key(w, "channels");
        w_array(w, 2);
        w_text(w, "threshold_1");
        w_text(w, "threshold_2");
        w_key(w, "count_time");
        w_double(w, 0.0099999);
        w_key(w, "countrate_correction_enabled");
        w_bool(w, true);
        w_key(w, "countrate_correction_lookup_table");
        w_tag(w, 70);
        w_bytes(w, lut, sizeof lut);
        w_key(w, "detector_description");
        w_text(w, LONG_DESCRIPTION);
        w_key(w, "detector_serial_number");
        w_text(w, "E-32-0117");
        w_key(w, "detector_translation");
        w_array(w, 3);
        w_double(w, 0.1);
        w_uint(w, 0);
        w_double(w, -0.125);
        w_key(w, "flatfield");
        w_map(w, 2);
        w_text(w, "threshold_2");
        w_mdarray(w, 2, 3, 85, ff1, sizeof ff1);
        w_text(w, "threshold_1");
        w_mdarray(w, 2, 3, 85, ff0, sizeof ff0);
        w_key(w, "flatfield_enabled");
        w_bool(w, true);
        w_key(w, "frame_time");
        w_double(w, 0.01);
        w_key(w, "goniometer");
        w_map(w, 3);
        w_text(w, "omega");
        w_map(w, 2);
        w_text(w, "increment");
        w_double(w, 0.1);
        w_text(w, "start");
        w_double(w, 10.0);
        w_text(w, "two_theta");
        w_map(w, 2);
        w_text(w, "start");
        w_half(w, 1.5f);
        w_text(w, "increment");
        w_uint(w, 0);
        w_text(w, "unknown_axis");
        w_map(w, 1);
        w_text(w, "start");
        w_double(w, 3.0);
        w_key(w, "image_dtype");
        w_text(w, "uint32");
        w_key(w, "image_size_x");
        w_uint(w, 4148);
        w_key(w, "image_size_y");
        w_uint(w, 4362);
        w_key(w, "incident_energy");
        w_double(w, 12398.4);
        w_key(w, "incident_wavelength");
        w_double(w, 1.0);
        w_key(w, "number_of_images");
        w_uint(w, 1800);
        w_key(w, "pixel_mask");
        w_map(w, 2);
        w_text(w, "threshold_1");
        w_mdarray(w, 2, 3, 70, pm0, sizeof pm0);
        w_text(w, "threshold_2");
        w_mdarray(w, 2, 3, 70, pm1, sizeof pm1);
        w_key(w, "pixel_mask_enabled");
        w_bool(w, false);
        w_key(w, "pixel_size_x");
        w_double(w, 0.000075);
        w_key(w, "pixel_size_y");
        w_double(w, 0.000075);
        w_key(w, "saturation_value");
        w_uint(w, 1234567);
        w_key(w, "sensor_material");
        w_text(w, "Si");
        w_key(w, "sensor_thickness");
        w_double(w, 0.00045);
        w_key(w, "series_id");
        w_uint(w, 7);
        w_key(w, "series_unique_id");
        w_text(w, "01HBV3JPF9T4ZDPADX6EMK6XMZ");
        w_key(w, "threshold_energy");
        w_map(w, 3);
        w_text(w, "threshold_1");
        w_double(w, 6000.0);
        w_text(w, "threshold_2");
        w_uint(w, 9000);
        w_text(w, "threshold_3");
        w_double(w, 12000.0);
        w_key(w, "user_data");
        *ud0 = w->n;
        w_map(w, 1);
        w_text(w, "scan");
        w_map(w, 1);
        w_text(w, "shape");
        w_array(w, 2);
        w_uint(w, 3);
        w_uint(w, 4);
        *ud1 = w->n;
        w_key(w, "virtual_pixel_interpolation_enabled");
        w_bool(w, true);
        /* keys nobody knows, with nested content, are skipped */
        w_key(w, "x_vendor_extension");
        w_iarray(w);
        w_map(w, 1);
        w_negint(w, 4);
        w_tag(w, 1234);
        w_array(w, 0);
        w_bytes(w, "abc", 3);
        w_break(w);
        w_key(w, "magic_number");
        w_uint(w, 42);
        w_key(w, "type");
        w_text(w, "start");
}

static void test_built_start(void) {
        wbuf *w = w_new(1 << 16);
        size_t ud0, ud1;
        build_start(w, &ud0, &ud1);
        tap_ok(!w->overflow && w->keys == 35, "start message built (%zu bytes, %u keys)", w->n, w->keys);

        roid_msg m;
        roid_err e;
        int r = parse1(w->b, w->n, &m, &e);
        if (!tap_ok(r == 0, "built start parses (%d %s)", r, e.msg)) {
                w_free(w);
                return;
        }
        const roid_start_info *s = &m.u.start;
        tap_ok(m.type == ROID_MSG_START && m.format == ROID_FMT_V2, "start, V2");
        tap_eq_u64(m.series_id, 7, "series_id");
        tap_ok(strcmp(m.series_unique_id, "01HBV3JPF9T4ZDPADX6EMK6XMZ") == 0, "series_unique_id");
        tap_ok(strcmp(s->arm_date, "2023-10-03T17:47:48.329+02:00") == 0, "arm_date %s", s->arm_date);
        tap_ok(s->has_beam_center && s->beam_center_x == 512.25 && s->beam_center_y == 256.5, "beam centre");
        tap_eq_u64(s->n_channels, 2, "n_channels");
        tap_ok(strcmp(s->channels[0], "threshold_1") == 0 && strcmp(s->channels[1], "threshold_2") == 0,
               "channel names in order");
        tap_ok(s->has_count_time && s->count_time == 0.0099999, "count_time");
        tap_ok(s->countrate_correction_enabled, "countrate_correction_enabled");
        tap_ok(s->countrate_table.dtype == ROID_DT_U32 && s->countrate_table.rows == 1 &&
                       s->countrate_table.cols == 5 && s->countrate_table.size == sizeof lut &&
                       memcmp(s->countrate_table.data, lut, sizeof lut) == 0,
               "countrate LUT: uint32, 5 entries, bytes as sent");
        tap_ok(strcmp(s->detector_description, LONG_DESCRIPTION) == 0, "detector_description, %zu bytes, kept whole",
               strlen(LONG_DESCRIPTION));
        tap_ok(strcmp(s->detector_serial_number, "E-32-0117") == 0, "detector_serial_number");
        tap_ok(s->has_detector_translation && s->detector_translation[0] == 0.1 && s->detector_translation[1] == 0 &&
                       s->detector_translation[2] == -0.125,
               "detector_translation (integer element accepted)");
        const roid_blob *f0 = &s->flatfield[0], *f1 = &s->flatfield[1];
        tap_ok(f0->dtype == ROID_DT_F32 && f0->rows == 2 && f0->cols == 3 && f0->size == sizeof ff0 &&
                       memcmp(f0->data, ff0, sizeof ff0) == 0,
               "flatfield threshold_1 by channel index (map order differs)");
        tap_ok(f1->dtype == ROID_DT_F32 && f1->size == sizeof ff1 && memcmp(f1->data, ff1, sizeof ff1) == 0,
               "flatfield threshold_2");
        tap_ok(inside(f0->data, f0->size, w->b, w->n), "flatfield points into the message");
        tap_ok(s->flatfield_enabled, "flatfield_enabled");
        tap_ok(s->has_frame_time && s->frame_time == 0.01, "frame_time");
        tap_ok(s->goniometer[2].present && s->goniometer[2].start == 10.0 && s->goniometer[2].increment == 0.1,
               "goniometer omega");
        tap_ok(s->goniometer[4].present && s->goniometer[4].start == 1.5 && s->goniometer[4].increment == 0,
               "goniometer two_theta (half float, integer)");
        tap_ok(!s->goniometer[0].present && !s->goniometer[1].present && !s->goniometer[3].present,
               "absent axes not present");
        tap_ok(s->image_dtype == ROID_DT_U32, "image_dtype uint32");
        tap_ok(s->has_image_size && s->image_size_x == 4148 && s->image_size_y == 4362, "image size");
        tap_ok(s->has_energy && s->incident_energy == 12398.4, "incident_energy");
        tap_ok(s->has_wavelength && s->incident_wavelength == 1.0, "incident_wavelength");
        tap_ok(s->has_number_of_images && s->number_of_images == 1800, "number_of_images");
        const roid_blob *p0 = &s->pixel_mask[0], *p1 = &s->pixel_mask[1];
        tap_ok(p0->dtype == ROID_DT_U32 && p0->rows == 2 && p0->cols == 3 && memcmp(p0->data, pm0, sizeof pm0) == 0,
               "pixel_mask threshold_1");
        tap_ok(p1->dtype == ROID_DT_U32 && memcmp(p1->data, pm1, sizeof pm1) == 0, "pixel_mask threshold_2");
        tap_ok(!s->pixel_mask_enabled, "pixel_mask_enabled false");
        tap_ok(s->has_pixel_size && s->pixel_size_x == 0.000075 && s->pixel_size_y == 0.000075, "pixel size");
        tap_ok(s->has_saturation_value && s->saturation_value == 1234567, "saturation_value");
        tap_ok(strcmp(s->sensor_material, "Si") == 0, "sensor_material");
        tap_ok(s->sensor_thickness == 0.00045, "sensor_thickness");
        tap_ok(s->threshold_energy[0] == 6000.0 && s->threshold_energy[1] == 9000.0,
               "threshold_energy by channel (inactive threshold_3 dropped)");
        tap_ok(isnan(s->threshold_energy[2]), "threshold_energy of absent channel is NaN");
        tap_ok(m.user_data.kind == ROID_UD_CBOR && m.user_data.data == w->b + ud0 && m.user_data.size == ud1 - ud0,
               "user_data is the raw span of {\"scan\": {\"shape\": [3, 4]}}");
        tap_ok(s->virtual_pixel_interpolation_enabled, "virtual_pixel_interpolation_enabled");

        /* user_data over max_json_bytes is left out, with the reason; the
         * start stands (its series would be lost otherwise); at the limit it is kept. */
        for (int over = 1; over >= 0; over--) {
                roid_limits l2 = lim;
                l2.max_json_bytes = ud1 - ud0 - (size_t)over;
                roid_parser *p2 = NULL;
                roid_parser_new(&l2, &p2);
                roid_part whole = {w->b, w->n};
                roid_msg m2;
                roid_err e2 = {{0}};
                r = roid_parse(p2, &whole, 1, &m2, &e2);
                char want[96];
                snprintf(want, sizeof want, "user_data: %zu bytes exceeds max_json_bytes %zu", ud1 - ud0,
                         l2.max_json_bytes);
                if (over)
                        tap_ok(r == 0 && m2.type == ROID_MSG_START && m2.u.start.n_channels == 2 &&
                                       m2.user_data.kind == ROID_UD_LEFT_OUT && !strcmp(m2.user_data_ignored, want),
                               "user_data one byte over max_json_bytes: left out, the start stands (%d %s; %s)", r,
                               e2.msg, m2.user_data_ignored);
                else
                        tap_ok(r == 0 && m2.user_data.size == ud1 - ud0 && !m2.user_data_ignored[0],
                               "user_data of exactly max_json_bytes: kept (%d %s)", r, e2.msg);
                roid_parser_free(p2);
        }

        /* The same message without tag 55799 (a bare map) is V2 too. */
        roid_part pt = {w->b + 3, w->n - 3};
        tap_ok(roid_detect_format(&pt, 1) == ROID_FMT_V2, "bare map detected as V2");
        r = parse1(w->b + 3, w->n - 3, &m, &e);
        tap_ok(r == 0 && m.type == ROID_MSG_START && m.u.start.n_channels == 2, "bare map parses (%d %s)", r, e.msg);
        w_free(w);
}

/* ---- V2: built image messages ---- */

enum { WRAP_NONE, WRAP_INDEF };

/* An image with n_ch channels of rows x cols uint16, uncompressed. */
static void w_image(wbuf *w, unsigned n_ch, uint64_t rows, uint64_t cols, bool indef) {
        static uint16_t px[64];
        for (int i = 0; i < 64; i++)
                px[i] = (uint16_t)(i * 1000);
        w_tag(w, 55799);
        if (indef)
                w_imap(w);
        else
                w_map(w, 5);
        w_key(w, "data");
        if (indef)
                w_imap(w);
        else
                w_map(w, n_ch);
        for (unsigned c = 0; c < n_ch; c++) {
                char name[16];
                snprintf(name, sizeof name, "ch%u", c);
                w_text(w, name);
                if (indef) {
                        w_tag(w, 40);
                        w_iarray(w);
                        w_iarray(w);
                        w_uint(w, rows);
                        w_uint(w, cols);
                        w_break(w);
                        w_tag(w, 69);
                        w_bytes(w, px, rows * cols * 2);
                        w_break(w);
                } else {
                        w_mdarray(w, rows, cols, 69, px, rows * cols * 2);
                }
        }
        if (indef)
                w_break(w);
        w_key(w, "image_id");
        w_tag(w, 1234); /* tags around scalars are skipped */
        w_uint(w, 17);
        w_key(w, "series_id");
        w_uint(w, 3);
        w_key(w, "real_time");
        w_rational(w, 5, 10);
        w_key(w, "type");
        w_text(w, "image");
        if (indef)
                w_break(w);
}

static void w_image_head(wbuf *w) {
        w_tag(w, 55799);
        w_map(w, 3);
        w_key(w, "type");
        w_text(w, "image");
        w_key(w, "image_id");
        w_uint(w, 0);
        w_key(w, "data");
}

static void test_built_images(void) {
        roid_msg m;
        roid_err e;
        for (int indef = 0; indef < 2; indef++) {
                wbuf *w = w_new(4096);
                w_image(w, 2, 4, 8, indef);
                int r = parse1(w->b, w->n, &m, &e);
                tap_ok(r == 0, "%s image parses (%d %s)", indef ? "indefinite-length" : "definite", r, e.msg);
                if (r == 0) {
                        const roid_image_info *im = &m.u.image;
                        tap_ok(im->n_channels == 2 && strcmp(im->channel[1].name, "ch1") == 0, "two channels");
                        tap_ok(im->channel[0].blob.rows == 4 && im->channel[0].blob.cols == 8 &&
                                       im->channel[0].blob.comp == ROID_COMP_NONE && im->channel[0].blob.size == 64,
                               "uncompressed 4 x 8 uint16");
                        uint16_t px3; /* blob data is not aligned: zero copy */
                        memcpy(&px3, im->channel[0].blob.data + 6, 2);
                        tap_ok(px3 == 3000, "pixel bytes as sent");
                        tap_eq_u64(im->image_id, 17, "tagged image_id");
                        tap_ok(!im->has_times, "has_times false with only real_time");
                }
                w_free(w);
                /* the most channels an image may have */
                w = w_new(4096);
                w_image(w, ROID_MAX_CHANNELS, 2, 2, indef);
                r = parse1(w->b, w->n, &m, &e);
                char last[16];
                snprintf(last, sizeof last, "ch%d", ROID_MAX_CHANNELS - 1);
                tap_ok(r == 0 && m.u.image.n_channels == ROID_MAX_CHANNELS &&
                               strcmp(m.u.image.channel[ROID_MAX_CHANNELS - 1].name, last) == 0,
                       "%s image with %d channels parses (%d %s)", indef ? "indefinite-length" : "definite",
                       ROID_MAX_CHANNELS, r, e.msg);
                w_free(w);
        }

        /* lz4 and bslz4 with elem sizes; uint8 and uint32 */
        static const struct {
                uint64_t tag;
                const char *alg;
                unsigned mod;
                roid_dtype t;
                roid_comp c;
        } v[] = {{64, "bslz4", 1, ROID_DT_U8, ROID_COMP_BSLZ4},
                 {70, "bslz4", 4, ROID_DT_U32, ROID_COMP_BSLZ4},
                 {69, "lz4", 0, ROID_DT_U16, ROID_COMP_LZ4_H5}};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
                wbuf *w = w_new(4096);
                uint8_t blob[40] = {0};
                blob[7] = 100;
                w_image_head(w);
                w_map(w, 1);
                w_text(w, "threshold_1");
                w_tag(w, 40);
                w_array(w, 2);
                w_array(w, 2);
                w_uint(w, 10);
                w_uint(w, 10);
                w_tag(w, v[i].tag);
                w_tag(w, 56500);
                w_array(w, 3);
                w_text(w, v[i].alg);
                w_uint(w, v[i].mod);
                w_bytes(w, blob, sizeof blob);
                int r = parse1(w->b, w->n, &m, &e);
                const roid_blob *b = &m.u.image.channel[0].blob;
                tap_ok(r == 0 && b->dtype == v[i].t && b->comp == v[i].c && b->comp_elem_size == v[i].mod &&
                               b->size == sizeof blob && inside(b->data, b->size, w->b, w->n),
                       "tag %" PRIu64 " + %s %u parses (%d %s)", v[i].tag, v[i].alg, v[i].mod, r, e.msg);
                w_free(w);
        }
}

/* An end message whose series_unique_id is uid. */
static wbuf *end_with_uid(const char *uid) {
        wbuf *w = w_new(4096);
        w_map(w, 2);
        w_key(w, "type");
        w_text(w, "end");
        w_key(w, "series_unique_id");
        w_text(w, uid);
        return w;
}

static void test_v2_malformed(void) {
        uint16_t px[8] = {0};
        wbuf *w;

        w = w_new(4096);
        w_tag(w, 55799);
        w_array(w, 1);
        w_uint(w, 1);
        expect_fail("top-level array", w, -EBADMSG, "map");
        w_free(w);

        w = w_new(4096);
        w_tag(w, 55799);
        w_map(w, 1);
        w_key(w, "series_id");
        w_uint(w, 1);
        expect_fail("no type", w, -EBADMSG, "type");
        w_free(w);

        w = w_new(4096);
        w_map(w, 1);
        w_key(w, "type");
        w_text(w, "calibration");
        expect_fail("unknown type", w, -ENOTSUP, "calibration");
        w_free(w);

        w = w_new(4096);
        w_map(w, 1);
        w_key(w, "type");
        w_text(w, "end");
        w_uint(w, 0);
        expect_fail("trailing bytes", w, -EBADMSG, "trailing");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 69);
        w_mdarray(w, 2, 2, 69, px, 8);
        expect_fail("tag 69 around tag 40", w, -EBADMSG, "tag 40");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 2);
        w_uint(w, 2);
        w_uint(w, 2);
        w_tag(w, 69);
        w_tag(w, 40);
        w_bytes(w, px, 8);
        expect_fail("tag 40 inside typed array", w, -EBADMSG, "inside typed-array tag 69");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 2);
        w_uint(w, 2);
        w_uint(w, 2);
        w_tag(w, 69);
        w_tag(w, 56500);
        w_bytes(w, px, 8);
        expect_fail("tag 56500 around a byte string", w, -EBADMSG, "inside tag 56500");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 1);
        w_uint(w, 4);
        w_tag(w, 69);
        w_bytes(w, px, 8);
        expect_fail("dims of one element", w, -EBADMSG, "dims");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 2);
        w_negint(w, 1);
        w_uint(w, 2);
        w_tag(w, 69);
        w_bytes(w, px, 8);
        expect_fail("negative dim", w, -EBADMSG, "dims [rows, cols]");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 69);
        w_bytes(w, px, 8);
        expect_fail("data entry without tag 40", w, -EBADMSG, "tag 40");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_mdarray(w, 2, 2, 69, px, 6);
        expect_fail("declared size mismatch", w, -EMSGSIZE, "needs 8");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_mdarray(w, 100000, 100000, 69, px, 8);
        expect_fail("shape 100000 x 100000", w, -EMSGSIZE, "100000 x 100000");
        {
                roid_msg m;
                roid_err e;
                parse1(w->b, w->n, &m, &e);
                tap_ok(strstr(e.msg, "max_pixels 67108864") != NULL, "shape error names the limit max_pixels 67108864");
        }
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_mdarray(w, UINT64_MAX, UINT64_MAX, 69, px, 8);
        expect_fail("shape 2^64-1 squared (overflow)", w, -EMSGSIZE, "max_pixels");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 9);
        for (int c = 0; c < 9; c++) {
                char name[8];
                snprintf(name, sizeof name, "c%d", c);
                w_text(w, name);
                w_mdarray(w, 2, 2, 69, px, 8);
        }
        expect_fail("9 channels", w, -EMSGSIZE, "data: 9 channels, at most 8");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_imap(w);
        for (int c = 0; c < 9; c++) {
                char name[8];
                snprintf(name, sizeof name, "c%d", c);
                w_text(w, name);
                w_mdarray(w, 2, 2, 69, px, 8);
        }
        w_break(w);
        expect_fail("9 channels, indefinite map", w, -EMSGSIZE, "data: more than 8 channels");
        w_free(w);

        /* the start message's channel list, with and without a count */
        for (int indef = 0; indef < 2; indef++) {
                w = w_new(4096);
                w_map(w, 2);
                w_key(w, "type");
                w_text(w, "start");
                w_key(w, "channels");
                if (indef)
                        w_iarray(w);
                else
                        w_array(w, 9);
                for (int c = 0; c < 9; c++) {
                        char name[8];
                        snprintf(name, sizeof name, "c%d", c);
                        w_text(w, name);
                }
                if (indef)
                        w_break(w);
                expect_fail(indef ? "start: 9 channels, indefinite array" : "start: 9 channels", w, -EMSGSIZE,
                            indef ? "channels: more than 8 channels" : "channels: 9 channels, at most 8");
                w_free(w);
        }

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_tag(w, 40);
        w_array(w, 2);
        w_array(w, 2);
        w_uint(w, 2);
        w_uint(w, 2);
        w_tag(w, 69);
        w_tag(w, 56500);
        w_array(w, 3);
        w_text(w, "bszstd_rle");
        w_uint(w, 2);
        w_bytes(w, px, 16);
        expect_fail("unknown compression", w, -ENOTSUP, "bszstd_rle");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_mdarray(w, 2, 2, 71, px, 16);
        expect_fail("typed-array tag 71 (uint64)", w, -ENOTSUP, "71");
        w_free(w);

        w = w_new(4096);
        w_image_head(w);
        w_map(w, 1);
        w_text(w, "c");
        w_mdarray(w, 2, 2, 9999, px, 8);
        expect_fail("tag 9999 as typed array", w, -EBADMSG, "9999");
        w_free(w);

        w = w_new(4096);
        w_tag(w, 55799);
        w_map(w, 3);
        w_key(w, "type");
        w_text(w, "image");
        w_key(w, "image_id");
        w_uint(w, 0);
        w_key(w, "real_time");
        w_rational(w, 1, 0);
        expect_fail("rational with denominator 0", w, -EBADMSG, "denominator");
        w_free(w);

        w = w_new(4096);
        w_tag(w, 55799);
        w_map(w, 2);
        w_key(w, "type");
        w_text(w, "image");
        w_key(w, "image_id");
        w_text(w, "zero");
        expect_fail("image_id as text", w, -EBADMSG, "image_id");
        w_free(w);

        w = w_new(4096);
        w_tag(w, 55799);
        w_map(w, 2);
        w_key(w, "type");
        w_text(w, "image");
        w_key(w, "image_id");
        w_uint(w, 1);
        expect_fail("image without data", w, -EBADMSG, "data");
        w_free(w);

        /* a bad array names its channel, the longest name included */
        static const char *const chans[] = {"threshold_1",
                                            "a_channel_name_of_63_bytes_as_long_as_roid_keeps_them_012345678"};
        for (unsigned k = 0; k < 2; k++) {
                w = w_new(4096);
                w_image_head(w);
                w_map(w, 1);
                w_text(w, chans[k]);
                w_uint(w, 7);
                char want[128];
                snprintf(want, sizeof want, "data/%s", chans[k]);
                expect_fail("data channel not an array", w, -EBADMSG, want);
                w_free(w);
        }

        w = end_with_uid("0123456789012345678901234567890123456789012345678901234567890123456789");
        expect_fail("series_unique_id of 70 bytes", w, -EMSGSIZE, "series_unique_id");
        w_free(w);

        /* CBOR text must be UTF-8: a lone continuation byte, a cut sequence,
         * an overlong '/', a surrogate (roid publishes the id again as a
         * msgpack str, which clients decode as UTF-8) */
        static const char *const not_utf8[] = {"run-\x80", "run-\xc3", "run-\xc0\xaf", "run-\xed\xa0\x80"};
        for (unsigned k = 0; k < 4; k++) {
                w = end_with_uid(not_utf8[k]);
                expect_fail("series_unique_id not UTF-8", w, -EBADMSG, "not UTF-8");
                w_free(w);
        }
        w = end_with_uid("run-\xc3\xa9\xe2\x82\xac\xf0\x9f\x94\xac");
        roid_err e = {""};
        static roid_msg um;
        tap_ok(parse1(w->b, w->n, &um, &e) >= 0 &&
                       !strcmp(um.series_unique_id, "run-\xc3\xa9\xe2\x82\xac\xf0\x9f\x94\xac"),
               "a series_unique_id in UTF-8 of 2, 3 and 4 bytes is accepted (%s)", e.msg);
        w_free(w);

        /* 10000 nested arrays in user_data, and under an unknown key */
        for (int k = 0; k < 2; k++) {
                w = w_new(1 << 16);
                w_tag(w, 55799);
                w_map(w, 2);
                w_key(w, "type");
                w_text(w, "end");
                w_key(w, k ? "something_else" : "user_data");
                for (int i = 0; i < 10000; i++)
                        w_array(w, 1);
                w_uint(w, 0);
                expect_fail(k ? "depth bomb under unknown key" : "depth bomb in user_data", w, -EBADMSG, "nesting");
                w_free(w);
        }
        w = w_new(1 << 16);
        w_tag(w, 55799);
        w_map(w, 2);
        w_key(w, "type");
        w_text(w, "end");
        w_key(w, "user_data");
        for (int i = 0; i < 10000; i++)
                w_iarray(w);
        expect_fail("indefinite depth bomb, truncated", w, -EBADMSG, "nesting");
        w_free(w);

        w = w_new(64);
        w_map(w, 1);
        w_key(w, "type");
        w->b[w->n++] = 0x1c; /* reserved additional information */
        expect_fail("reserved initial byte", w, -EBADMSG, "0x1c");
        w_free(w);

        w = w_new(64);
        w_map(w, 2);
        w_key(w, "type");
        w_text(w, "end");
        w_key(w, "x");
        w_break(w);
        expect_fail("stray break", w, -EBADMSG, "break");
        w_free(w);

        w = w_new(64);
        w_tag(w, 55799);
        w_map(w, UINT32_MAX);
        w_key(w, "type");
        w_text(w, "end");
        expect_fail("map(2^32-1) in a tiny message", w, -EBADMSG, "truncated");
        w_free(w);
}

/* ---- V1 ---- */

typedef struct {
        roid_part p[40];
        uint8_t *own[40];
        size_t n;
} parts;

/* Each part in its own exact-size allocation, so overreads are caught. */
static void add(parts *ps, const void *d, size_t len) {
        uint8_t *b = malloc(len ? len : 1);
        memcpy(b, d, len);
        ps->own[ps->n] = b;
        ps->p[ps->n] = (roid_part){b, len};
        ps->n++;
}

static void add_s(parts *ps, const char *s) {
        add(ps, s, strlen(s));
}

static void parts_free(parts *ps) {
        for (size_t i = 0; i < ps->n; i++)
                free(ps->own[i]);
        ps->n = 0;
}

static const char v1_config[] =
        "{\"auto_summation\":true,\"beam_center_x\":1563.25,\"beam_center_y\":1632.5,\"bit_depth_image\":32,"
        "\"bit_depth_readout\":16,\"chi_increment\":0.0,\"chi_start\":0.0,\"compression\":\"bslz4\","
        "\"count_time\":0.0099999,\"countrate_correction_applied\":true,\"countrate_correction_count_cutoff\":"
        "126634,\"data_collection_date\":\"2022-11-17T15:20:05.412+01:00\",\"description\":\"Dectris EIGER2 CdTe "
        "9M\",\"detector_distance\":0.12,\"detector_number\":\"E-18-0129\",\"detector_readout_time\":1e-07,"
        "\"detector_translation\":[0.0,0.0,-0.12],\"eiger_fw_version\":\"release-2022.1.1\",\"element\":\"\","
        "\"flatfield_correction_applied\":true,\"frame_count_time\":0.004,\"frame_period\":0.004,\"frame_time\":0.01,"
        "\"kappa_increment\":0.0,\"kappa_start\":0.0,\"nimages\":10,\"ntrigger\":3,\"number_of_excluded_pixels\":0,"
        "\"omega_increment\":0.1,\"omega_start\":-5.0,\"phi_increment\":0.0,\"phi_start\":0.0,\"photon_energy\":"
        "12398.4,\"pixel_mask_applied\":true,\"roi_mode\":\"disabled\",\"sensor_material\":\"CdTe\","
        "\"sensor_thickness\":0.00075,\"software_version\":\"1.8.0\",\"threshold_energy\":6199.2,\"trigger_mode\":"
        "\"%s\",\"two_theta_increment\":0.0,\"two_theta_start\":0.0,\"virtual_pixel_correction_applied\":true,"
        "\"wavelength\":1.0,\"x_pixel_size\":7.5e-05,\"x_pixels_in_detector\":3108,\"y_pixel_size\":7.5e-05,"
        "\"y_pixels_in_detector\":3262}";

static void add_header(parts *ps, const char *detail, const char *trigger_mode, bool appendix) {
        char h[128], cfg[sizeof v1_config + 16];
        snprintf(h, sizeof h, "{\"header_detail\":\"%s\",\"htype\":\"dheader-1.0\",\"series\":6}", detail);
        add_s(ps, h);
        if (strcmp(detail, "none") != 0) {
                snprintf(cfg, sizeof cfg, v1_config, trigger_mode);
                add_s(ps, cfg);
        }
        if (strcmp(detail, "all") == 0) {
                static const float ff[6] = {0.97f, 1.0f, 1.14f, 1.02f, 0.99f, 1.01f};
                static const uint32_t pm[6] = {0, 1, 0, 0, 4, 0};
                static const float ct[10] = {0, 0, 8327.12f, 8319.44f, 16654.24f, 16623.55f, 1, 2, 3, 4};
                add_s(ps, "{\"htype\":\"dflatfield-1.0\",\"shape\":[3,2],\"type\":\"float32\"}");
                add(ps, ff, sizeof ff);
                add_s(ps, "{\"htype\":\"dpixelmask-1.0\",\"shape\":[3,2],\"type\":\"uint32\"}");
                add(ps, pm, sizeof pm);
                add_s(ps, "{\"htype\":\"dcountrate_table-1.0\",\"shape\":[2,5],\"type\":\"float32\"}");
                add(ps, ct, sizeof ct);
        }
        if (appendix)
                add_s(ps, "{\"mxcube\":{\"sample\":\"lysozyme\"}}");
}

static void test_v1_headers(void) {
        static const char *const details[] = {"none", "basic", "all"};
        for (int d = 0; d < 3; d++) {
                for (int app = 0; app < 2; app++) {
                        parts ps = {0};
                        add_header(&ps, details[d], "exts", app);
                        roid_msg m;
                        roid_err e = {{0}};
                        tap_ok(roid_detect_format(ps.p, ps.n) == ROID_FMT_V1, "dheader %s detected as V1", details[d]);
                        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                        if (!tap_ok(r == 0, "dheader %s%s (%zu parts) parses (%d %s)", details[d],
                                    app ? " + appendix" : "", ps.n, r, e.msg)) {
                                parts_free(&ps);
                                continue;
                        }
                        const roid_start_info *s = &m.u.start;
                        tap_ok(m.type == ROID_MSG_START && m.format == ROID_FMT_V1 && m.series_id == 6 &&
                                       m.series_unique_id[0] == '\0',
                               "V1 start, series 6, no unique id");
                        tap_ok(strcmp(s->v1_header_detail, details[d]) == 0, "header_detail %s", s->v1_header_detail);
                        tap_ok(s->n_channels == 1 && strcmp(s->channels[0], "image") == 0, "one channel 'image'");
                        if (app)
                                tap_ok(m.user_data.kind == ROID_UD_JSON && m.user_data.data == ps.p[ps.n - 1].data &&
                                               m.user_data.size == ps.p[ps.n - 1].size,
                                       "appendix is the user data (raw)");
                        else
                                tap_ok(m.user_data.kind == ROID_UD_NONE, "no appendix, no user data");
                        if (d == 0) {
                                tap_ok(!s->has_beam_center && !s->has_image_size && s->v1_config_json == NULL,
                                       "none: no configuration");
                        } else {
                                tap_ok(s->v1_config_json == (const char *)ps.p[1].data &&
                                               s->v1_config_json_len == ps.p[1].size,
                                       "config JSON kept raw");
                                tap_ok(s->has_beam_center && s->beam_center_x == 1563.25 && s->beam_center_y == 1632.5,
                                       "beam centre");
                                tap_ok(s->has_pixel_size && s->pixel_size_x == 7.5e-05 && s->pixel_size_y == 7.5e-05,
                                       "pixel size");
                                tap_ok(s->has_image_size && s->image_size_x == 3108 && s->image_size_y == 3262,
                                       "image size 3108 x 3262");
                                tap_ok(s->has_number_of_images && s->number_of_images == 30,
                                       "exts: nimages 10 x ntrigger 3 = %" PRIu64, s->number_of_images);
                                tap_ok(s->count_time == 0.0099999 && s->frame_time == 0.01, "count/frame time");
                                tap_ok(s->has_energy && s->incident_energy == 12398.4 && s->incident_wavelength == 1.0,
                                       "energy, wavelength");
                                tap_ok(s->image_dtype == ROID_DT_U32, "bit_depth_image 32 -> uint32");
                                tap_ok(strcmp(s->detector_description, "Dectris EIGER2 CdTe 9M") == 0 &&
                                               strcmp(s->detector_serial_number, "E-18-0129") == 0 &&
                                               strcmp(s->sensor_material, "CdTe") == 0 &&
                                               s->sensor_thickness == 0.00075,
                                       "description, detector_number, sensor");
                                tap_ok(s->threshold_energy[0] == 6199.2 && isnan(s->threshold_energy[1]),
                                       "threshold_energy");
                                tap_ok(s->goniometer[2].present && s->goniometer[2].start == -5.0 &&
                                               s->goniometer[2].increment == 0.1,
                                       "omega start/increment");
                        }
                        if (d == 2) {
                                const roid_blob *f = &s->flatfield[0], *p = &s->pixel_mask[0], *c = &s->countrate_table;
                                tap_ok(f->dtype == ROID_DT_F32 && f->rows == 2 && f->cols == 3 &&
                                               f->data == ps.p[3].data && f->size == 24,
                                       "flatfield blob 3 x 2 float32 (rows = y)");
                                tap_ok(p->dtype == ROID_DT_U32 && p->rows == 2 && p->cols == 3 &&
                                               p->data == ps.p[5].data && p->size == 24,
                                       "pixel mask blob uint32");
                                tap_ok(c->dtype == ROID_DT_F32 && c->rows == 5 && c->cols == 2 &&
                                               c->data == ps.p[7].data && c->size == 40,
                                       "countrate table [2, 5] float32");
                        } else {
                                tap_ok(s->flatfield[0].data == NULL && s->pixel_mask[0].data == NULL,
                                       "no flatfield or mask below 'all'");
                        }
                        parts_free(&ps);
                }
        }
        parts ps = {0};
        add_header(&ps, "basic", "exte", false);
        roid_msg m;
        roid_err e;
        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
        tap_ok(r == 0 && m.u.start.number_of_images == 3, "exte: number_of_images = ntrigger (%" PRIu64 ")",
               m.u.start.number_of_images);
        parts_free(&ps);
}

static void add_dimage(parts *ps, const char *type, unsigned x, unsigned y, const char *enc, const void *data,
                       size_t size, long declared, bool appendix) {
        char j[256];
        add_s(ps, "{\"frame\":4,\"hash\":\"59bb3a04cd9d59d54e283c465036085c\",\"htype\":\"dimage-1.0\",\"series\":6}");
        snprintf(j, sizeof j,
                 "{\"encoding\":\"%s\",\"htype\":\"dimage_d-1.0\",\"shape\":[%u,%u],\"size\":%ld,"
                 "\"type\":\"%s\"}",
                 enc, x, y, declared < 0 ? (long)size : declared, type);
        add_s(ps, j);
        add(ps, data, size);
        add_s(ps, "{\"htype\":\"dconfig-1.0\",\"real_time\":9999900,\"start_time\":103597359252740,"
                  "\"stop_time\":103597369252640}");
        if (appendix)
                add_s(ps, "{}");
}

static void test_v1_images(void) {
        static const struct {
                const char *enc, *type;
                roid_dtype t;
                roid_comp c;
                unsigned elem;
        } v[] = {
                {"<", "uint16", ROID_DT_U16, ROID_COMP_NONE, 0},
                {"lz4<", "uint16", ROID_DT_U16, ROID_COMP_LZ4_RAW, 0},
                {"bs8-lz4<", "uint8", ROID_DT_U8, ROID_COMP_BSLZ4, 1},
                {"bs16-lz4<", "uint16", ROID_DT_U16, ROID_COMP_BSLZ4, 2},
                {"bs32-lz4<", "uint32", ROID_DT_U32, ROID_COMP_BSLZ4, 4},
        };
        uint8_t raw[2 * 6 * 4] = {1, 2, 3};
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
                parts ps = {0};
                size_t size = v[i].c == ROID_COMP_NONE ? 6 * 4 * 2 : 17;
                add_dimage(&ps, v[i].type, 6, 4, v[i].enc, raw, size, -1, i == 0);
                roid_msg m;
                roid_err e = {{0}};
                int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                const roid_image_info *im = &m.u.image;
                const roid_blob *b = &im->channel[0].blob;
                if (tap_ok(r == 0, "dimage %s parses (%d %s)", v[i].enc, r, e.msg)) {
                        tap_ok(m.type == ROID_MSG_IMAGE && m.format == ROID_FMT_V1 && m.series_id == 6 &&
                                       im->image_id == 4,
                               "series 6 frame 4");
                        tap_ok(im->n_channels == 1 && strcmp(im->channel[0].name, "image") == 0, "channel 'image'");
                        tap_ok(b->rows == 4 && b->cols == 6, "shape [6, 4] -> 4 rows x 6 cols");
                        tap_ok(b->dtype == v[i].t && b->comp == v[i].c && b->comp_elem_size == v[i].elem,
                               "%s: dtype %s, comp %s, elem %u", v[i].enc, roid_dtype_name(b->dtype),
                               roid_comp_name(b->comp), b->comp_elem_size);
                        tap_ok(b->data == ps.p[2].data && b->size == size, "blob is part 3");
                        tap_ok(strcmp(im->v1_hash, "59bb3a04cd9d59d54e283c465036085c") == 0, "hash");
                        tap_ok(im->has_times && im->real_time.num == 9999900 && im->real_time.den == 1000000000 &&
                                       im->start_time.num == 103597359252740 && im->stop_time.num == 103597369252640,
                               "dconfig times in ns over 1e9");
                        if (i == 0)
                                tap_ok(m.user_data.kind == ROID_UD_JSON && m.user_data.size == 2,
                                       "image appendix as user data");
                }
                parts_free(&ps);
        }

        size_t n;
        uint8_t *d = tap_slurp(tap_data("stream1/eiger2-16m-frame.bs16-lz4"), &n);
        if (tap_ok(d != NULL, "read EIGER2 16M frame")) {
                parts ps = {0};
                add_dimage(&ps, "uint16", 4148, 4362, "bs16-lz4<", d, n, -1, false);
                roid_msg m;
                roid_err e = {{0}};
                int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                const roid_blob *b = &m.u.image.channel[0].blob;
                tap_ok(r == 0, "16M dimage parses (%d %s)", r, e.msg);
                tap_ok(b->rows == 4362 && b->cols == 4148 && b->dtype == ROID_DT_U16 && b->comp == ROID_COMP_BSLZ4 &&
                               b->comp_elem_size == 2,
                       "16M: 4362 rows x 4148 cols, uint16, bslz4 elem 2");
                tap_ok(b->data == ps.p[2].data && b->size == n, "16M blob is the part");
                tap_ok(be64(b->data) == (uint64_t)b->rows * b->cols * 2, "bslz4 header size matches rows x cols x 2");
                parts_free(&ps);
                free(d);
        }

        parts ps = {0};
        add_s(&ps, "  {\"series\":6,\"htype\":\"dseries_end-1.0\"}");
        roid_msg m;
        roid_err e = {{0}};
        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
        tap_ok(r == 0 && m.type == ROID_MSG_END && m.format == ROID_FMT_V1 && m.series_id == 6,
               "dseries_end parses (%d %s)", r, e.msg);
        parts_free(&ps);
}

static void test_v1_malformed(void) {
        uint8_t raw[64] = {0};
        parts ps = {0};

        add_s(&ps, "{\"htype\":\"dimage-1.0\",\"series\":6,\"frame\":");
        expect_fail_parts(parser, "truncated JSON", ps.p, ps.n, -EBADMSG, "JSON");
        parts_free(&ps);

        add_s(&ps, "{\"htype\":\"dimage-1.0\" garbage}");
        expect_fail_parts(parser, "garbage JSON", ps.p, ps.n, -EBADMSG, "JSON");
        parts_free(&ps);

        add_s(&ps, "{\"htype\":\"dseries_end-1.0\",\"series\":1} trailing");
        expect_fail_parts(parser, "JSON with trailing text", ps.p, ps.n, -EBADMSG, "trailing");
        parts_free(&ps);

        add_s(&ps, "{\"htype\":\"dcalib-1.0\",\"series\":1}");
        expect_fail_parts(parser, "unknown htype", ps.p, ps.n, -ENOTSUP, "dcalib-1.0");
        parts_free(&ps);

        add_s(&ps, "{\"series\":1}");
        expect_fail_parts(parser, "no htype", ps.p, ps.n, -EBADMSG, "htype");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "<", raw, 32, -1, false);
        expect_fail_parts(parser, "dimage with 3 parts", ps.p, 3, -EBADMSG, "dconfig");
        expect_fail_parts(parser, "dimage with 2 parts", ps.p, 2, -EBADMSG, "data blob");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "<", raw, 32, -1, true);
        add_s(&ps, "{}");
        expect_fail_parts(parser, "dimage with 6 parts", ps.p, ps.n, -EBADMSG, "at most 5");
        parts_free(&ps);

        add_header(&ps, "all", "exts", true);
        add_s(&ps, "{}");
        add_s(&ps, "{}");
        expect_fail_parts(parser, "dheader all with 11 parts", ps.p, ps.n, -EBADMSG,
                          "dheader: 11 parts, at most 9 expected for header_detail all");
        parts_free(&ps);

        add_header(&ps, "all", "exts", false);
        expect_fail_parts(parser, "dheader all with 5 parts", ps.p, 5, -EBADMSG, "pixel mask blob");
        ps.p[5].size -= 4;
        expect_fail_parts(parser, "pixel mask blob 4 bytes short", ps.p, ps.n, -EMSGSIZE, "needs 24");
        parts_free(&ps);

        add_header(&ps, "basic", "exts", false);
        add_s(&ps, "{}");
        add_s(&ps, "{}");
        expect_fail_parts(parser, "dheader basic with 4 parts", ps.p, ps.n, -EBADMSG, "at most 3");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "<", raw, 32, 33, false);
        expect_fail_parts(parser, "declared size != part 3", ps.p, ps.n, -EMSGSIZE, "size 33");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "<", raw, 30, -1, false);
        expect_fail_parts(parser, "uncompressed size != shape", ps.p, ps.n, -EMSGSIZE, "needs 32");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "bs16-lz4>", raw, 30, -1, false);
        expect_fail_parts(parser, "big-endian encoding", ps.p, ps.n, -ENOTSUP, "big-endian");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 4, 4, "zstd<", raw, 30, -1, false);
        expect_fail_parts(parser, "unknown encoding", ps.p, ps.n, -ENOTSUP, "zstd<");
        parts_free(&ps);

        add_dimage(&ps, "int64", 4, 4, "<", raw, 30, -1, false);
        expect_fail_parts(parser, "type int64", ps.p, ps.n, -ENOTSUP, "int64");
        parts_free(&ps);

        add_dimage(&ps, "uint16", 100000, 100000, "bs16-lz4<", raw, 30, -1, false);
        expect_fail_parts(parser, "V1 shape [100000, 100000]", ps.p, ps.n, -EMSGSIZE, "max_pixels");
        parts_free(&ps);

        /* JSON nested 10000 deep, and a part over max_json_bytes */
        char *bomb = malloc(20100);
        size_t k = 0;
        k += (size_t)sprintf(bomb, "{\"htype\":\"dseries_end-1.0\",\"series\":1,\"x\":");
        for (int i = 0; i < 10000; i++)
                bomb[k++] = '[';
        for (int i = 0; i < 10000; i++)
                bomb[k++] = ']';
        bomb[k++] = '}';
        add(&ps, bomb, k);
        expect_fail_parts(parser, "JSON depth bomb", ps.p, ps.n, -EBADMSG, "deeper");
        parts_free(&ps);
        free(bomb);

        roid_limits small = lim;
        small.max_json_bytes = 64;
        roid_parser *sp;
        if (tap_ok(roid_parser_new(&small, &sp) == 0, "parser with max_json_bytes 64")) {
                add_s(&ps,
                      "{\"htype\":\"dseries_end-1.0\",\"series\":1,\"padding\":\"..............................\"}");
                expect_fail_parts(sp, "JSON part over max_json_bytes", ps.p, ps.n, -EMSGSIZE, "max_json_bytes");
                parts_free(&ps);
                roid_parser_free(sp);
        }

        /* JSON text must be UTF-8 (RFC 8259 8.1; its strings may go out again
         * as msgpack str or HDF5 text): a lone continuation byte, a cut
         * sequence, an overlong form, a surrogate, beyond U+10FFFF */
        static const char *const not_utf8[] = {"\x80", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"};
        for (size_t i = 0; i < sizeof not_utf8 / sizeof *not_utf8; i++) {
                char j[96], want[64];
                int at = snprintf(j, sizeof j, "{\"htype\":\"dseries_end-1.0\",\"series\":1,\"note\":\"end ");
                snprintf(j + at, sizeof j - (size_t)at, "%s\"}", not_utf8[i]);
                add_s(&ps, j);
                snprintf(want, sizeof want, "part 1: byte 0x%02x at %d is not UTF-8", (uint8_t)not_utf8[i][0], at);
                expect_fail_parts(parser, "JSON string not UTF-8", ps.p, ps.n, -EBADMSG, want);
                parts_free(&ps);
        }
        add_header(&ps, "basic", "exts", false);
        char *d9 = strstr((char *)ps.own[1], "CdTe 9M");
        d9[5] = (char)0xff;
        expect_fail_parts(parser, "detector description not UTF-8", ps.p, ps.n, -EBADMSG, "part 2: byte 0xff");
        memcpy(d9 + 5, "\xc3\xa9", 2);
        {
                roid_msg m;
                roid_err e = {{0}};
                int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                tap_ok(r == 0 && strcmp(m.u.start.detector_description, "Dectris EIGER2 CdTe \xc3\xa9") == 0,
                       "a description in 2-byte UTF-8 is accepted and kept (%d %s)", r, e.msg);
        }
        parts_free(&ps);

        add_s(&ps, "\x01\x02garbage");
        tap_ok(roid_detect_format(ps.p, ps.n) == ROID_FMT_NONE, "binary garbage: no format");
        expect_fail_parts(parser, "binary garbage", ps.p, ps.n, -EBADMSG, "neither CBOR nor JSON");
        parts_free(&ps);

        for (int i = 0; i < 2; i++)
                add_s(&ps, "\xd9\xd9\xf7\xa0");
        tap_ok(roid_detect_format(ps.p, ps.n) == ROID_FMT_NONE, "two CBOR parts: no format");
        expect_fail_parts(parser, "two CBOR parts", ps.p, ps.n, -EBADMSG, "neither");
        parts_free(&ps);

        for (int i = 0; i < 33; i++)
                add_s(&ps, "{}");
        expect_fail_parts(parser, "33 parts", ps.p, ps.n, -EMSGSIZE, "max_parts");
        parts_free(&ps);

        small = lim;
        small.max_message_bytes = 1000;
        if (tap_ok(roid_parser_new(&small, &sp) == 0, "parser with max_message_bytes 1000")) {
                add_dimage(&ps, "uint8", 40, 40, "<", bomb = calloc(1, 1600), 1600, -1, false);
                expect_fail_parts(sp, "message over max_message_bytes", ps.p, ps.n, -EMSGSIZE, "max_message_bytes");
                free(bomb);
                parts_free(&ps);
                roid_parser_free(sp);
        }
}

/* {"pad":"xx...x"} of exactly size bytes (size >= 10). */
static char *pad_json(size_t size) {
        char *s = malloc(size + 1);
        memcpy(s, "{\"pad\":\"", 8);
        memset(s + 8, 'x', size - 10);
        memcpy(s + size - 2, "\"}", 3);
        return s;
}

/* Parses ps: the message must stand as `type` with its user data left out
 * and the reason naming `words`. */
static void expect_ud_left_out(const char *what, const parts *ps, roid_msg_type type, const char *words) {
        roid_msg m;
        roid_err e = {{0}};
        int r = roid_parse(parser, ps->p, ps->n, &m, &e);
        tap_ok(r == 0 && m.type == type && m.user_data.kind == ROID_UD_LEFT_OUT && m.user_data.size == 0 &&
                       strstr(m.user_data_ignored, words),
               "%s: the message stands, its user data left out (%d %s; %s)", what, r, e.msg, m.user_data_ignored);
}

/* The appendix (user data a beamline attaches) is held to the limits of the
 * JSON parts: max_json_bytes, UTF-8, max_depth.  One that fails is left out
 * with the reason, and its message (a series' header, an image) stands. */
static void test_v1_appendix(void) {
        static const char *const details[] = {"none", "basic", "all"};
        const size_t max = lim.max_json_bytes;
        char *over = pad_json(max + 1), *at = pad_json(max), want[128];
        parts ps = {0};
        for (int d = 0; d < 3; d++) {
                char what[64];
                snprintf(what, sizeof what, "dheader %s + appendix of max_json_bytes + 1", details[d]);
                add_header(&ps, details[d], "exts", false);
                size_t idx = ps.n;
                add(&ps, over, max + 1);
                snprintf(want, sizeof want, "part %zu (header appendix): JSON of %zu bytes exceeds max_json_bytes %zu",
                         idx + 1, max + 1, max);
                expect_ud_left_out(what, &ps, ROID_MSG_START, want);
                parts_free(&ps);

                /* at the limit: the user data */
                add_header(&ps, details[d], "exts", false);
                add(&ps, at, max);
                roid_msg m;
                roid_err e = {{0}};
                int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                tap_ok(r == 0 && m.type == ROID_MSG_START && m.user_data.kind == ROID_UD_JSON &&
                               m.user_data.size == max && m.user_data.data == ps.p[ps.n - 1].data &&
                               !m.user_data_ignored[0],
                       "dheader %s + appendix of exactly max_json_bytes (%zu): accepted as user data (%d %s)",
                       details[d], max, r, e.msg);
                parts_free(&ps);
        }

        /* nesting: max_depth containers pass, one more is left out */
        for (unsigned levels = lim.max_depth; levels <= lim.max_depth + 1; levels++) {
                char *j = malloc(2 * levels + 32);
                size_t n = 0;
                for (unsigned i = 0; i < levels; i++)
                        j[n++] = '[';
                for (unsigned i = 0; i < levels; i++)
                        j[n++] = ']';
                add_header(&ps, "basic", "exts", false);
                add(&ps, j, n);
                if (levels == lim.max_depth) {
                        roid_msg m;
                        roid_err e = {{0}};
                        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                        tap_ok(r == 0 && m.user_data.size == n, "appendix nested %u deep: accepted (%d %s)", levels, r,
                               e.msg);
                } else {
                        snprintf(want, sizeof want, "part 3 (header appendix): JSON nested deeper than max_depth %u",
                                 lim.max_depth);
                        expect_ud_left_out("appendix nested max_depth + 1 deep", &ps, ROID_MSG_START, want);
                }
                parts_free(&ps);
                free(j);
        }
        add_header(&ps, "none", "exts", false);
        add_s(&ps, "{\"sample\":\"lyso\xffzyme\"}");
        expect_ud_left_out("appendix not UTF-8", &ps, ROID_MSG_START, "part 2 (header appendix): byte 0xff");
        parts_free(&ps);

        /* the image appendix likewise */
        static const uint8_t px[24];
        add_dimage(&ps, "uint8", 6, 4, "<", px, sizeof px, -1, false);
        add(&ps, over, max + 1);
        expect_ud_left_out("dimage + appendix of max_json_bytes + 1", &ps, ROID_MSG_IMAGE, "part 5 (image appendix)");
        parts_free(&ps);
        add_dimage(&ps, "uint8", 6, 4, "<", px, sizeof px, -1, false);
        add(&ps, at, max);
        roid_msg m;
        roid_err e = {{0}};
        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
        tap_ok(r == 0 && m.type == ROID_MSG_IMAGE && m.user_data.size == max,
               "dimage + appendix of exactly max_json_bytes: accepted (%d %s)", r, e.msg);
        parts_free(&ps);
        free(over);
        free(at);
}

/* Random byte changes must give a clean result: success or one of the
 * documented errors with a message, never a crash (run under ASan too). */
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t xorshift(void) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static unsigned mutate_run(roid_parser *ps, roid_part *parts, size_t n_parts, size_t target, size_t region,
                           int rounds) {
        unsigned bad = 0;
        uint8_t *d = (uint8_t *)parts[target].data;
        for (int i = 0; i < rounds; i++) {
                size_t pos[3];
                uint8_t old[3];
                int k = 1 + (int)(xorshift() % 3);
                for (int j = 0; j < k; j++) {
                        pos[j] = xorshift() % region;
                        old[j] = d[pos[j]];
                        d[pos[j]] = (uint8_t)xorshift();
                }
                roid_msg m;
                roid_err e = {{0}};
                int r = roid_parse(ps, parts, n_parts, &m, &e);
                if (!(r == 0 || ((r == -EBADMSG || r == -EMSGSIZE || r == -ENOTSUP) && e.msg[0])))
                        bad++;
                for (int j = k - 1; j >= 0; j--)
                        d[pos[j]] = old[j];
        }
        return bad;
}

static void test_mutations(void) {
        wbuf *w = w_new(1 << 16);
        size_t ud0, ud1;
        build_start(w, &ud0, &ud1);
        roid_part pt = {w->b, w->n};
        unsigned bad = mutate_run(parser, &pt, 1, 0, w->n, 20000);
        tap_ok(bad == 0, "20000 mutated start messages: clean results (%u not)", bad);
        w_free(w);

        size_t n;
        uint8_t *d = tap_slurp(tap_data("stream2/r500k_bslz4_16bit_000003.cbor"), &n);
        if (tap_ok(d != NULL, "read image for mutations")) {
                pt = (roid_part){d, n};
                /* the header and the first channel's tag 40 / 56500 framing */
                bad = mutate_run(parser, &pt, 1, 0, 300, 20000);
                tap_ok(bad == 0, "20000 mutated real image headers: clean results (%u not)", bad);
                free(d);
        }

        parts ps = {0};
        add_header(&ps, "all", "exts", true);
        bad = 0;
        for (size_t i = 0; i < ps.n; i++)
                bad += mutate_run(parser, ps.p, ps.n, i, ps.p[i].size, 2000);
        tap_ok(bad == 0, "mutated dheader-all parts: clean results (%u not)", bad);
        /* every cut of every part */
        bad = 0;
        for (size_t i = 0; i < ps.n; i++) {
                size_t full = ps.p[i].size;
                for (size_t k = 0; k < full; k++) {
                        uint8_t *cp = malloc(k ? k : 1);
                        memcpy(cp, ps.p[i].data, k);
                        roid_part save = ps.p[i];
                        ps.p[i] = (roid_part){cp, k};
                        roid_msg m;
                        roid_err e = {{0}};
                        int r = roid_parse(parser, ps.p, ps.n, &m, &e);
                        /* a cut appendix is still an appendix */
                        if (!(r == 0 ? i == ps.n - 1 : e.msg[0] != '\0'))
                                bad++;
                        ps.p[i] = save;
                        free(cp);
                }
        }
        tap_ok(bad == 0, "every cut of every dheader part fails cleanly (%u not)", bad);
        parts_free(&ps);
}

/* Steady state: the parser allocates nothing per message, and V2 blobs
 * point into the input. */
static void test_no_alloc(void) {
        size_t n;
        uint8_t *d = tap_slurp(tap_data("stream2/r500k_bslz4_16bit_000002.cbor"), &n);
        if (!tap_ok(d != NULL, "read image for the allocation check"))
                return;
        parts v1 = {0};
        add_dimage(&v1, "uint16", 6, 4, "bs16-lz4<", d, 100, -1, true);
        parts hdr = {0};
        add_header(&hdr, "all", "ints", true);
        roid_msg m;
        roid_err e;
        roid_part pt = {d, n};
        int bad = 0;
        /* warm-up grows the V1 arena */
        bad += roid_parse(parser, &pt, 1, &m, &e) != 0;
        bad += roid_parse(parser, v1.p, v1.n, &m, &e) != 0;
        bad += roid_parse(parser, hdr.p, hdr.n, &m, &e) != 0;
#if COUNT_ALLOCS
        tap_ok(alloc_count_sees_malloc(), "the allocation counter sees a malloc");
        const unsigned long before = alloc_count();
#endif
        for (int i = 0; i < 200; i++) {
                bad += roid_parse(parser, &pt, 1, &m, &e) != 0;
                bad += !inside(m.u.image.channel[2].blob.data, m.u.image.channel[2].blob.size, d, n);
                bad += roid_parse(parser, v1.p, v1.n, &m, &e) != 0;
                bad += roid_parse(parser, hdr.p, hdr.n, &m, &e) != 0;
        }
#if COUNT_ALLOCS
        unsigned long used = alloc_count() - before;
        tap_ok(used == 0, "600 V1/V2 messages after warm-up: %lu heap allocations", used);
#else
        tap_skip("allocation count needs the libc allocator (ASan build)");
#endif
        tap_ok(bad == 0, "repeated parses succeed and V2 blobs stay in the input (%d failures)", bad);
        parts_free(&v1);
        parts_free(&hdr);
        free(d);
}

/* A V1 JSON part of max_json_bytes costs its ~40x of cJSON arena only while
 * its message is parsed; small headers after it allocate nothing again. */
static void test_arena_bounded(void) {
        roid_parser *ps;
        if (roid_parser_new(&lim, &ps) < 0)
                return;
        const size_t cap = lim.max_json_bytes;
        char *cfg = malloc(cap);
        size_t k = (size_t)sprintf(cfg, "{\"a\":[0");
        while (k + 4 < cap) {
                memcpy(cfg + k, ",0", 2);
                k += 2;
        }
        memcpy(cfg + k, "]}", 2);
        k += 2;
        static const char h[] = "{\"htype\":\"dheader-1.0\",\"series\":1,\"header_detail\":\"basic\"}";
        static const char small[] = "{\"nimages\":3}";
        roid_part pt[2] = {{(const uint8_t *)h, sizeof h - 1}, {(const uint8_t *)cfg, k}};
        roid_msg m;
        roid_err e = {""};
        const size_t heap0 = tap_heap_in_use();
        int r = roid_parse(ps, pt, 2, &m, &e);
        const size_t grew = tap_heap_in_use() - heap0;
        tap_ok(r == 0 && grew < (2u << 20),
               "a %zu-byte V1 configuration part parses (%d %s) and leaves %zu bytes behind (< 2 MiB)", k, r, e.msg,
               grew);
        pt[1] = (roid_part){(const uint8_t *)small, sizeof small - 1};
        int bad = roid_parse(ps, pt, 2, &m, &e) != 0; /* warm-up */
#if COUNT_ALLOCS
        const unsigned long before = alloc_count();
#endif
        for (int i = 0; i < 100; i++)
                bad += roid_parse(ps, pt, 2, &m, &e) != 0;
#if COUNT_ALLOCS
        tap_ok(bad == 0 && alloc_count() == before, "100 small headers after it: %lu heap allocations, %d failures",
               alloc_count() - before, bad);
#else
        tap_ok(bad == 0, "100 small headers after it parse (%d failures)", bad);
#endif
        free(cfg);
        roid_parser_free(ps);
}

int main(void) {
        roid_limits_default(&lim);
        if (roid_parser_new(&lim, &parser) < 0) {
                tap_ok(false, "parser created");
                return tap_done();
        }
        test_cborwalk();
        test_real_images();
        test_truncation();
        test_built_start();
        test_built_images();
        test_v2_malformed();
        test_v1_headers();
        test_v1_images();
        test_v1_malformed();
        test_v1_appendix();
        test_mutations();
        test_no_alloc();
        test_arena_bounded();
        roid_parser_free(parser);
        return tap_done();
}
