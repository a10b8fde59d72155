/* test_scan - image_id -> scan grid point: step scans (fast axis, snake)
 * against an independent enumeration of the acquisition order, fly-scan
 * binning, the "scan" user data convention in CBOR and JSON, bad inputs; the
 * non-allocating JSON scanner that reads an image's "position". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/scan.h"
#include "tap.h"

#include "alloccount.h"

/* ------------------------------------------------------ tiny CBOR writer */

typedef struct {
        uint8_t b[512];
        size_t n;
} cb;

static void cb_head(cb *c, unsigned major, uint64_t v) {
        if (v < 24) {
                c->b[c->n++] = (uint8_t)(major << 5 | v);
        } else if (v < 256) {
                c->b[c->n++] = (uint8_t)(major << 5 | 24);
                c->b[c->n++] = (uint8_t)v;
        } else {
                c->b[c->n++] = (uint8_t)(major << 5 | 26);
                for (int i = 3; i >= 0; i--)
                        c->b[c->n++] = (uint8_t)(v >> (8 * i));
        }
}

static void cb_text(cb *c, const char *s) {
        cb_head(c, 3, strlen(s));
        memcpy(c->b + c->n, s, strlen(s));
        c->n += strlen(s);
}

static void cb_f64(cb *c, double d) {
        uint64_t u;
        memcpy(&u, &d, 8);
        c->b[c->n++] = 0xfb;
        for (int i = 7; i >= 0; i--)
                c->b[c->n++] = (uint8_t)(u >> (8 * i));
}

static void cb_bool(cb *c, bool v) {
        c->b[c->n++] = v ? 0xf5 : 0xf4;
}

static roid_user_data ud_cbor(const cb *c) {
        return (roid_user_data){.kind = ROID_UD_CBOR, .data = c->b, .size = c->n};
}

static roid_user_data ud_json(const char *s) {
        return (roid_user_data){.kind = ROID_UD_JSON, .data = (const uint8_t *)s, .size = strlen(s)};
}

/* --------------------------------------------------------------- step scans */

/* The acquisition order written out as the loops a scan controller runs. */
static void check_order(uint32_t ny, uint32_t nx, bool snake, roid_scan_fast fast) {
        roid_scan_grid g;
        roid_scan_grid_default(&g);
        roid_scan_grid_set_shape(&g, ny, nx, "t", NULL);
        g.snake = snake;
        g.fast_axis = fast;
        uint64_t k = 0, bad = 0;
        uint8_t *hit = calloc((size_t)ny * nx, 1);
        uint32_t nslow = fast == ROID_SCAN_FAST_X ? ny : nx, nfast = fast == ROID_SCAN_FAST_X ? nx : ny;
        for (uint32_t s = 0; s < nslow; s++) {
                for (uint32_t f = 0; f < nfast; f++, k++) {
                        uint32_t ff = snake && s % 2 == 1 ? nfast - 1 - f : f;
                        uint32_t want_r = fast == ROID_SCAN_FAST_X ? s : ff;
                        uint32_t want_c = fast == ROID_SCAN_FAST_X ? ff : s;
                        uint32_t r, c;
                        if (roid_scan_index(&g, k, &r, &c) < 0 || r != want_r || c != want_c)
                                bad++;
                        else
                                hit[(size_t)r * nx + c]++;
                }
        }
        uint64_t once = 0;
        for (size_t i = 0; i < (size_t)ny * nx; i++)
                once += hit[i] == 1;
        uint32_t r, c;
        tap_ok(bad == 0 && once == (uint64_t)ny * nx && roid_scan_index(&g, k, &r, &c) == -ERANGE,
               "%ux%u snake=%d fast=%s: every point once in acquisition order, image %llu out of range", ny, nx, snake,
               fast == ROID_SCAN_FAST_X ? "x" : "y", (unsigned long long)k);
        free(hit);
}

static void test_orders(void) {
        check_order(3, 4, false, ROID_SCAN_FAST_X);
        check_order(3, 4, true, ROID_SCAN_FAST_X);
        check_order(5, 3, false, ROID_SCAN_FAST_Y);
        check_order(5, 3, true, ROID_SCAN_FAST_Y);
        check_order(1, 7, true, ROID_SCAN_FAST_X);
        /* spot values worked out by hand */
        roid_scan_grid g;
        roid_scan_grid_default(&g);
        roid_scan_grid_set_shape(&g, 3, 4, "t", NULL);
        g.snake = true;
        uint32_t r, c;
        roid_scan_index(&g, 5, &r, &c);
        tap_ok(r == 1 && c == 2, "3x4 snake x: image 5 at (1, 2), got (%u, %u)", r, c);
        g.fast_axis = ROID_SCAN_FAST_Y;
        roid_scan_index(&g, 5, &r, &c);
        tap_ok(r == 0 && c == 1, "3x4 snake y: image 5 at (0, 1), got (%u, %u)", r, c);
}

/* ------------------------------------------------------------ user data */

static void build_scan_cbor(cb *c, bool with_other) {
        c->n = 0;
        cb_head(c, 5, with_other ? 2 : 1);
        if (with_other) {
                cb_text(c, "sample");
                cb_head(c, 5, 1); /* nested map, skipped */
                cb_text(c, "name");
                cb_head(c, 4, 2);
                cb_text(c, "a");
                cb_head(c, 0, 7);
        }
        cb_text(c, "scan");
        cb_head(c, 5, 6);
        cb_text(c, "shape");
        cb_head(c, 4, 2);
        cb_head(c, 0, 40);
        cb_head(c, 0, 300);
        cb_text(c, "snake");
        cb_bool(c, true);
        cb_text(c, "fast_axis");
        cb_text(c, "y");
        cb_text(c, "origin");
        cb_head(c, 4, 2);
        cb_f64(c, -1.5);
        cb_head(c, 1, 9); /* -10 */
        cb_text(c, "step");
        cb_head(c, 4, 2);
        cb_f64(c, 0.05);
        cb_f64(c, 0.1);
        cb_text(c, "units");
        cb_text(c, "um");
}

static bool grid_is_example(const roid_scan_grid *g) {
        return g->ny == 40 && g->nx == 300 && g->snake && g->fast_axis == ROID_SCAN_FAST_Y && g->origin_x == -1.5 &&
               g->origin_y == -10 && g->step_x == 0.05 && g->step_y == 0.1 && strcmp(g->units, "um") == 0 &&
               g->source == ROID_SCAN_FROM_SERIES;
}

static void test_user_data(void) {
        cb c;
        roid_scan_grid g;
        roid_err err = {{0}};

        build_scan_cbor(&c, true);
        roid_user_data u = ud_cbor(&c);
        int r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == 1 && grid_is_example(&g), "CBOR scan map with a skipped nested key: r=%d %s", r, err.msg);

        u = ud_json("{\"sample\":{\"name\":[\"a\",7]},\"scan\":{\"shape\":[40,300],\"snake\":true,\"fast_axis\":\"y\","
                    "\"origin\":[-1.5,-10],\"step\":[0.05,0.1],\"units\":\"um\"}}");
        memset(&g, 0, sizeof g);
        r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == 1 && grid_is_example(&g), "JSON (V1 appendix) scan map: r=%d %s", r, err.msg);

        u = ud_json("{\"scan\":{\"shape\":[2,3]}}");
        r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == 1 && g.ny == 2 && g.nx == 3 && !g.snake && g.fast_axis == ROID_SCAN_FAST_X && g.step_x == 1 &&
                       g.origin_x == 0,
               "only shape: defaults for the rest");

        /* absent / not ours */
        roid_scan_grid keep;
        roid_scan_grid_default(&keep);
        keep.ny = 77;
        g = keep;
        u = ud_json("{\"other\":1}");
        r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 77, "JSON without scan: 0, grid untouched");
        u = ud_json("not json at all");
        tap_ok(roid_scan_from_user_data(&u, 32, &g, &err) == 0, "free-form V1 appendix: 0");
        c.n = 0;
        cb_head(&c, 4, 1);
        cb_head(&c, 0, 1);
        u = ud_cbor(&c);
        tap_ok(roid_scan_from_user_data(&u, 32, &g, &err) == 0 && g.ny == 77, "CBOR array: 0");
        tap_ok(roid_scan_from_user_data(NULL, 32, &g, &err) == 0, "no user data: 0");
}

static void expect_bad(const char *json, int want, const char *needle) {
        roid_user_data u = ud_json(json);
        roid_scan_grid g;
        roid_err err = {{0}};
        roid_scan_grid_default(&g);
        g.ny = 99;
        int r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == want && strstr(err.msg, needle) && g.ny == 99, "%s -> %d naming '%s' (got %d: %s)", json, want,
               needle, r, err.msg);
}

static void test_bad(void) {
        expect_bad("{\"scan\":{\"shape\":\"40x300\"}}", -EBADMSG, "shape");
        expect_bad("{\"scan\":{\"shape\":[40]}}", -EBADMSG, "shape");
        expect_bad("{\"scan\":{\"shape\":[0,5]}}", -EINVAL, "shape[0]");
        expect_bad("{\"scan\":{\"shape\":[4.5,5]}}", -EINVAL, "shape[0]");
        expect_bad("{\"scan\":{\"shape\":[5,-1]}}", -EINVAL, "shape[1]");
        expect_bad("{\"scan\":{\"shape\":[65536,65536]}}", -EMSGSIZE, "shape");
        expect_bad("{\"scan\":{\"shape\":[1e300,2]}}", -EMSGSIZE, "shape[0]");
        expect_bad("{\"scan\":{\"snake\":true}}", -EINVAL, "shape");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"snake\":1}}", -EBADMSG, "snake");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"fast_axis\":\"z\"}}", -EINVAL, "fast_axis");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"fast_axis\":3}}", -EBADMSG, "fast_axis");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"step\":[0,1]}}", -EINVAL, "step");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"origin\":[1,\"a\"]}}", -EBADMSG, "origin");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"units\":\"a-very-long-unit-name\"}}", -EINVAL, "units");
        expect_bad("{\"scan\":[4,4]}", -EBADMSG, "scan");
        /* text members are decoded; NUL, lone surrogates, broken syntax inside
         * "scan" are errors naming it (not a silent "no scan") */
        expect_bad("{\"scan\":{\"shape\":[4,4],\"units\":\"a\\u0000b\"}}", -EINVAL, "units");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"units\":\"\\ud800m\"}}", -EBADMSG, "units");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"units\":\"\\udc00m\"}}", -EBADMSG, "units");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"fast_axis\":\"\\u0078y\"}}", -EINVAL, "fast_axis");
        expect_bad("{\"scan\":{\"shape\":[4,4] \"snake\":true}}", -EBADMSG, "user_data.scan");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"x\":[1,}}", -EBADMSG, "user_data.scan");
        expect_bad("{\"scan\":{\"shape\":[4,4],", -EBADMSG, "user_data.scan");
        expect_bad("{\"scan\":{\"shape\":[4,4],\"snake\":tru}}", -EBADMSG, "snake");

        /* CBOR: wrong type, truncated map, huge shape */
        cb c;
        roid_scan_grid g;
        roid_err err = {{0}};

        /* CBOR text that is not UTF-8: units go out again as msgpack str in
         * every series, map and scan_here message (clients decoding them
         * failed on every message) */
        c.n = 0;
        cb_head(&c, 5, 1);
        cb_text(&c, "scan");
        cb_head(&c, 5, 2);
        cb_text(&c, "shape");
        cb_head(&c, 4, 2);
        cb_head(&c, 0, 4);
        cb_head(&c, 0, 4);
        cb_text(&c, "units");
        cb_text(&c, "\xff\xfe");
        roid_scan_grid_default(&g);
        g.ny = 99;
        roid_user_data bu = ud_cbor(&c);
        int br = roid_scan_from_user_data(&bu, 32, &g, &err);
        tap_ok(br == -EBADMSG && strstr(err.msg, "units") && strstr(err.msg, "UTF-8") && g.ny == 99,
               "CBOR units 0xff 0xfe: -EBADMSG naming units and UTF-8 (%d: %s)", br, err.msg);
        c.n = 0;
        cb_head(&c, 5, 1);
        cb_text(&c, "scan");
        cb_head(&c, 5, 1);
        cb_text(&c, "shape");
        cb_text(&c, "big");
        roid_user_data u = ud_cbor(&c);
        int r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == -EBADMSG && strstr(err.msg, "shape"), "CBOR shape as text: %d %s", r, err.msg);
        build_scan_cbor(&c, false);
        int accepted = 0;
        for (size_t cut = 1; cut < c.n; cut++) {
                roid_user_data t = {.kind = ROID_UD_CBOR, .data = c.b, .size = cut};
                accepted += roid_scan_from_user_data(&t, 32, &g, &err) >= 0;
        }
        tap_ok(accepted == 0, "CBOR cut at each of %zu bytes: always an error (%d accepted)", c.n, accepted);
        c.n = 0;
        cb_head(&c, 5, 1);
        cb_text(&c, "scan");
        cb_head(&c, 5, 1);
        cb_text(&c, "shape");
        cb_head(&c, 4, 2);
        cb_head(&c, 0, 5000);
        cb_head(&c, 0, 5000);
        u = ud_cbor(&c);
        r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == -EMSGSIZE && strstr(err.msg, "shape"), "CBOR 5000x5000 grid over the limit: %d %s", r, err.msg);
}

/* ------------------------------------------------------------ fly scans */

static void test_fly(void) {
        roid_scan_grid g;
        roid_err err = {{0}};
        roid_scan_grid_default(&g);
        roid_scan_grid_set_shape(&g, 10, 20, "t", NULL);
        g.origin_x = 100;
        g.origin_y = -5;
        g.step_x = 0.5;
        g.step_y = 0.25;
        uint32_t r = 0, c = 0;
        /* x = 100 + 0.5 * 7.3 -> col 7; y = -5 + 0.25 * 3.6 -> row 4 */
        roid_user_data u = ud_json("{\"position\":[103.65,-4.1]}");
        int k = roid_scan_locate(&g, 0, &u, 32, &r, &c, &err);
        tap_ok(k == 0 && r == 4 && c == 7, "JSON fly position binned to (4, 7), got %d (%u, %u)", k, r, c);
        cb b;
        b.n = 0;
        cb_head(&b, 5, 1);
        cb_text(&b, "position");
        cb_head(&b, 4, 2);
        cb_f64(&b, 100 + 0.5 * 19.4);
        cb_f64(&b, -5 + 0.25 * 0.2);
        u = ud_cbor(&b);
        k = roid_scan_locate(&g, 150, &u, 32, &r, &c, &err);
        tap_ok(k == 0 && r == 0 && c == 19, "CBOR position wins over the image index: (0, 19), got (%u, %u)", r, c);
        u = ud_json("{\"position\":[111,0]}"); /* col 22 */
        k = roid_scan_locate(&g, 0, &u, 32, &r, &c, &err);
        tap_ok(k == -ERANGE && strstr(err.msg, "outside"), "position beyond the grid: -ERANGE (%s)", err.msg);
        u = ud_json("{\"position\":[1]}");
        k = roid_scan_locate(&g, 0, &u, 32, &r, &c, &err);
        tap_ok(k == -EBADMSG && strstr(err.msg, "position"), "malformed position: %d (%s)", k, err.msg);
        u = ud_json("{\"frame\":3}");
        k = roid_scan_locate(&g, 45, &u, 32, &r, &c, &err);
        tap_ok(k == 0 && r == 2 && c == 5, "no position: step index 45 -> (2, 5), got (%u, %u)", r, c);
        k = roid_scan_locate(&g, 200, NULL, 32, &r, &c, &err);
        tap_ok(k == -ERANGE && strstr(err.msg, "image_id 200"), "image beyond the grid: %s", err.msg);
}

/* ------------------------------------------- JSON position scanner */

/* Reads "position" from an exact-size heap copy of text (no NUL after it, so
 * the sanitizer build catches any read past the end). */
static int json_pos(const char *text, size_t len, unsigned max_depth, double *x, double *y, roid_err *err) {
        char *copy = malloc(len ? len : 1);
        if (!copy)
                abort();
        memcpy(copy, text, len);
        roid_user_data u = {.kind = ROID_UD_JSON, .data = (const uint8_t *)copy, .size = len};
        memset(err, 0, sizeof *err);
        int r = roid_scan_position_from_user_data(&u, max_depth, x, y, err);
        free(copy);
        return r;
}

static void expect_pos(const char *text, double wx, double wy) {
        double x = NAN, y = NAN;
        roid_err err;
        int r = json_pos(text, strlen(text), 32, &x, &y, &err);
        tap_ok(r == 1 && x == wx && y == wy, "%s -> [%g, %g] (got %d [%g, %g] %s)", text, wx, wy, r, x, y, err.msg);
}

static void expect_none(const char *text) {
        double x = 77, y = 77;
        roid_err err;
        int r = json_pos(text, strlen(text), 32, &x, &y, &err);
        tap_ok(r == 0 && x == 77 && y == 77, "%s -> no position (got %d %s)", text, r, err.msg);
}

static void expect_pos_bad(const char *text, size_t len, unsigned max_depth, int want, const char *needle) {
        double x = 77, y = 77;
        roid_err err;
        int r = json_pos(text, len, max_depth, &x, &y, &err);
        tap_ok(r == want && strstr(err.msg, needle) && strstr(err.msg, "position") && x == 77 && y == 77,
               "%.*s%s -> %d naming '%s' and the key (got %d: %s)", (int)(len > 60 ? 60 : len), text,
               len > 60 ? "..." : "", want, needle, r, err.msg);
}

/* {"a":[[...[1]...]],"position":[1,2]} with `levels` containers in all on the
 * way to the innermost 1 (the top object counted). */
static char *deep(unsigned levels) {
        char *s = malloc(2 * levels + 64);
        size_t n = 0;
        if (!s)
                abort();
        n += (size_t)sprintf(s + n, "{\"a\":");
        for (unsigned i = 1; i < levels; i++)
                s[n++] = '[';
        s[n++] = '1';
        for (unsigned i = 1; i < levels; i++)
                s[n++] = ']';
        sprintf(s + n, ",\"position\":[1,2]}");
        return s;
}

static void test_json_position(void) {
        /* members before it are stepped over, whatever they hold */
        expect_pos("{\"a\":{\"b\":[1,{\"c\":null,\"d\":[]},{}],\"e\":\"x\"},\"t\":true,\"f\":false,"
                   "\"n\":-0.5e+3,\"position\":[3.5,-2]}",
                   3.5, -2);
        {
                const char *ws = " \r\n{ \"position\" :\t[ 1e2 , -0.25E-1\n] } ";
                double x = 0, y = 0;
                roid_err err;
                int r = json_pos(ws, strlen(ws), 32, &x, &y, &err);
                tap_ok(r == 1 && x == 100 && y == -0.025, "white space (space, CR, LF, tab) anywhere: [%g, %g]", x, y);
        }
        /* "position" inside strings and nested maps is not the member */
        expect_pos("{\"note\":\"\\\"position\\\":[9,9]\",\"position\":[1,2]}", 1, 2);
        expect_pos("{\"meta\":{\"position\":[9,9]},\"q\":\"\\u0022position\\\\\",\"position\":[4,5]}", 4, 5);
        expect_none("{\"meta\":{\"position\":[9,9]}}");
        expect_none("{\"positions\":[1,2],\"positio\":[1,2],\"Position\":[1,2]}");
        /* an escaped key is the same key; the first of two wins */
        expect_pos("{\"posit\\u0069on\":[6,7]}", 6, 7);
        expect_pos("{\"position\":[1,2],\"position\":[3,4]}", 1, 2);
        /* what follows the member is not read */
        expect_pos("{\"position\":[8,9], this is not JSON", 8, 9);
        /* not JSON, or not an object: not ours */
        expect_none("not json at all");
        expect_none("[\"position\",[1,2]]");
        expect_none("{}");
        expect_none("{\"a\":tru,\"position\":[1,2]}");
        expect_none("{\"a\":\"\\x\",\"position\":[1,2]}");
        expect_none("{\"a\":\"\\u12g4\",\"position\":[1,2]}");
        expect_none("{\"a\":\"tab\there\",\"position\":[1,2]}");
        expect_none("{\"a\":01,\"position\":[1,2]}");
        expect_none("{\"a\":[1,],\"position\":[1,2]}");
        expect_none("{\"a\":{\"b\"},\"position\":[1,2]}");
        expect_none("{\"a\":[1}],\"position\":[1,2]}");
        expect_none("{\"a\":1 \"position\":[1,2]}");
        expect_none("{\"a\":\"unterminated");
        /* a position of the wrong shape is an error naming the key */
        expect_pos_bad("{\"position\":[1]}", 16, 32, -EBADMSG, "1 element");
        expect_pos_bad("{\"position\":[]}", 15, 32, -EBADMSG, "0 elements");
        expect_pos_bad("{\"position\":[1,2,3]}", 20, 32, -EBADMSG, "more than 2");
        expect_pos_bad("{\"position\":[\"1\",2]}", 20, 32, -EBADMSG, "[0]: expected a number");
        expect_pos_bad("{\"position\":[1,null]}", 21, 32, -EBADMSG, "[1]: expected a number");
        expect_pos_bad("{\"position\":[true,1]}", 21, 32, -EBADMSG, "[0]: expected a number");
        expect_pos_bad("{\"position\":[+1,1]}", 19, 32, -EBADMSG, "[0]: expected a number");
        expect_pos_bad("{\"position\":{\"x\":1,\"y\":2}}", 27, 32, -EBADMSG, "array of 2 numbers");
        expect_pos_bad("{\"position\":\"1,2\"}", 17, 32, -EBADMSG, "array of 2 numbers");
        expect_pos_bad("{\"position\":[[1],[2]]}", 22, 32, -EBADMSG, "[0]: expected a number");
        /* cut short: the size, not a NUL, ends the text */
        expect_pos_bad("{\"position\":[1,2]}", 15, 32, -EBADMSG, "[1]: expected a number");
        expect_pos_bad("{\"position\":[1,2]}", 16, 32, -EBADMSG, "more than 2");
        /* huge numbers */
        expect_pos_bad("{\"position\":[1e400,0]}", 22, 32, -EINVAL, "beyond the range");
        expect_pos_bad("{\"position\":[0,-1e400]}", 23, 32, -EINVAL, "[1]");
        expect_pos("{\"position\":[1e-400,123456789012345678901234567890]}", 0, 123456789012345678901234567890.0);
        char big[200];
        int n = sprintf(big, "{\"position\":[1");
        for (int i = 0; i < 80; i++)
                big[n++] = '0';
        n += sprintf(big + n, ",2]}");
        expect_pos_bad(big, (size_t)n, 32, -EBADMSG, "81 characters");
        /* nesting: 32 containers are fine, 33 are not, whatever follows */
        char *d = deep(32);
        expect_pos(d, 1, 2);
        free(d);
        d = deep(33);
        expect_pos_bad(d, strlen(d), 32, -EBADMSG, "deeper than 32");
        double x, y;
        roid_err err;
        int r = json_pos(d, strlen(d), 40, &x, &y, &err);
        tap_ok(r == 1 && x == 1 && y == 2, "the same with max_depth 40: found (%d)", r);
        free(d);
        d = deep(5000);
        expect_pos_bad(d, strlen(d), 0, -EBADMSG, "deeper than 256");
        free(d);
        /* fly positions in a V1 appendix go through it to the grid */
        roid_scan_grid g;
        roid_scan_grid_default(&g);
        roid_scan_grid_set_shape(&g, 4, 5, "t", NULL);
        uint32_t row = 9, col = 9;
        roid_user_data u = ud_json("{\"frame\":{\"note\":\"position\"},\"position\":[3.4,1.6]}");
        r = roid_scan_locate(&g, 0, &u, 32, &row, &col, &err);
        tap_ok(r == 0 && row == 2 && col == 3, "V1 appendix position [3.4, 1.6] binned to (2, 3), got (%u, %u)", row,
               col);
}

static void test_resolve(void) {
        roid_scan_grid g, cfg;
        roid_err err = {{0}};
        int r = roid_scan_resolve(NULL, NULL, true, 2500, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 1 && g.nx == 2500 && g.source == ROID_SCAN_FROM_LINE,
               "nothing given: a 1 x number_of_images line");
        r = roid_scan_resolve(NULL, NULL, false, 0, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 1 && g.nx == 1, "no number_of_images: 1 x 1");
        r = roid_scan_resolve(NULL, NULL, true, UINT64_C(1) << 30, 32, &g, &err);
        uint32_t row, col;
        tap_ok(r == 0 && g.ny == 1 && g.nx == ROID_SCAN_MAX_LINE && g.source == ROID_SCAN_FROM_LINE &&
                       roid_scan_index(&g, ROID_SCAN_MAX_LINE - 1, &row, &col) == 0 &&
                       roid_scan_index(&g, ROID_SCAN_MAX_LINE, &row, &col) == -ERANGE,
               "number_of_images 2^30: the line of ROID_SCAN_MAX_LINE, later images off it (%d %s)", r, err.msg);
        r = roid_scan_resolve(NULL, NULL, true, ROID_SCAN_MAX_LINE, 32, &g, &err);
        tap_ok(r == 0 && g.nx == ROID_SCAN_MAX_LINE, "number_of_images = ROID_SCAN_MAX_LINE: that line");
        roid_scan_grid_default(&cfg);
        roid_scan_grid_set_shape(&cfg, 50, 50, "t", NULL);
        cfg.source = ROID_SCAN_FROM_CONFIG;
        roid_user_data u = ud_json("{\"foo\":1}");
        r = roid_scan_resolve(&u, &cfg, true, 2500, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 50 && g.source == ROID_SCAN_FROM_CONFIG, "configured grid when the series has none");
        u = ud_json("{\"scan\":{\"shape\":[7,9]}}");
        r = roid_scan_resolve(&u, &cfg, true, 2500, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 7 && g.nx == 9 && g.source == ROID_SCAN_FROM_SERIES, "the series' grid wins");
        u = ud_json("{\"scan\":{\"shape\":[7]}}");
        r = roid_scan_resolve(&u, &cfg, true, 2500, 32, &g, &err);
        tap_ok(r == -EBADMSG, "a malformed series grid is an error, not silently replaced");
}

/* head, then about `bytes` of "0,0,...,0", then tail: an array of the kind
 * of metadata a beamline may attach to a series (head opens it, tail closes
 * it). */
static char *padded(const char *head, size_t bytes, const char *tail) {
        char *s = malloc(strlen(head) + bytes + strlen(tail) + 2);
        if (!s)
                abort();
        size_t n = (size_t)sprintf(s, "%s0", head);
        while (n < bytes) {
                s[n++] = ',';
                s[n++] = '0';
        }
        strcpy(s + n, tail);
        return s;
}

/* The series' "scan" is found next to megabytes of other user data without
 * a tree: no allocation, and nesting is bounded by max_depth. */
static void test_json_scan_bounded(void) {
        roid_scan_grid g;
        roid_err err = {{0}};
        char *t = padded("{\"pad\":[", 8u << 20,
                         "],\"scan\":{\"shape\":[7,9],\"units\":\"\\u00b5m\",\"fast_axis\":\"\\u0079\"}}");
        roid_user_data u = ud_json(t);
#if COUNT_ALLOCS
        tap_ok(alloc_count_sees_malloc(), "the allocation counter sees a malloc");
        const unsigned long before = alloc_count();
#endif
        int r = roid_scan_resolve(&u, NULL, true, 2500, 32, &g, &err);
#if COUNT_ALLOCS
        tap_ok(alloc_count() == before, "8 MiB user data: %lu heap allocations", alloc_count() - before);
#else
        tap_skip("allocation count needs the libc allocator (ASan build)");
#endif
        tap_ok(r == 0 && g.ny == 7 && g.nx == 9 && g.source == ROID_SCAN_FROM_SERIES &&
                       g.fast_axis == ROID_SCAN_FAST_Y && strcmp(g.units, "\xc2\xb5m") == 0,
               "8 MiB array before \"scan\": grid 7 x 9 from the series, units µm, fast y (%d %s)", r, err.msg);
        free(t);

        /* the huge array inside the scan map, under a key that is not ours */
        t = padded("{\"scan\":{\"shape\":[3,5],\"p\":[", 8u << 20, "]}}");
        u = ud_json(t);
        r = roid_scan_resolve(&u, NULL, true, 2500, 32, &g, &err);
        tap_ok(r == 0 && g.ny == 3 && g.nx == 5 && g.source == ROID_SCAN_FROM_SERIES,
               "8 MiB array inside \"scan\": grid 3 x 5 (%d %s)", r, err.msg);
        free(t);

        /* nesting: 32 containers before "scan" pass, 33 fail naming max_depth */
        roid_scan_grid keep;
        for (unsigned levels = 32; levels <= 33; levels++) {
                char *d = deep(levels); /* {"a":[[...1...]],"position":[1,2]} */
                size_t n = strlen(d);
                char *e = malloc(n + 32);
                memcpy(e, d, n - 1);
                strcpy(e + n - 1, ",\"scan\":{\"shape\":[2,2]}}");
                u = ud_json(e);
                roid_scan_grid_default(&g);
                g.ny = 99;
                keep = g;
                err.msg[0] = '\0';
                r = roid_scan_resolve(&u, NULL, true, 2500, 32, &g, &err);
                if (levels == 32)
                        tap_ok(r == 0 && g.ny == 2 && g.source == ROID_SCAN_FROM_SERIES,
                               "32 levels before scan: found");
                else
                        tap_ok(r == -EBADMSG && strstr(err.msg, "max_depth") && strstr(err.msg, "32") &&
                                       memcmp(&g, &keep, sizeof g) == 0,
                               "33 levels before scan: %d, untouched, %s", r, err.msg);
                free(e);
                free(d);
        }
        /* nesting inside the scan map (its own level is 2) */
        char in[256];
        size_t n = (size_t)sprintf(in, "{\"scan\":{\"shape\":[2,2],\"x\":");
        for (int i = 0; i < 31; i++)
                in[n++] = '[';
        for (int i = 0; i < 31; i++)
                in[n++] = ']';
        strcpy(in + n, "}}");
        u = ud_json(in);
        r = roid_scan_from_user_data(&u, 32, &g, &err);
        tap_ok(r == -EBADMSG && strstr(err.msg, "user_data.scan") && strstr(err.msg, "max_depth"),
               "33 levels inside scan: %d %s", r, err.msg);
        r = roid_scan_from_user_data(&u, 33, &g, &err);
        tap_ok(r == 1 && g.ny == 2, "the same with max_depth 33: found (%d)", r);
        /* a depth bomb with max_depth 0 (the cap, 256) */
        char *d = deep(100000);
        u = ud_json(d);
        r = roid_scan_resolve(&u, NULL, true, 2500, 0, &g, &err);
        tap_ok(r == -EBADMSG && strstr(err.msg, "256"), "100000 levels, max_depth 0: %d %s", r, err.msg);
        free(d);
        /* cut anywhere, the text gives a grid or an error, never anything else */
        const char *full = "{\"a\":[1,{\"b\":\"\\u00b5\"}],\"scan\":{\"shape\":[2,3],\"units\":\"\\ud83d\\udc99\","
                           "\"snake\":true}}";
        int odd = 0;
        for (size_t cut = 0; cut <= strlen(full); cut++) {
                char *c = malloc(cut + 1);
                memcpy(c, full, cut);
                roid_user_data v = {ROID_UD_JSON, (const uint8_t *)c, cut};
                roid_scan_grid_default(&g);
                err.msg[0] = '\0';
                r = roid_scan_from_user_data(&v, 32, &g, &err);
                bool whole = cut >= strlen(full) - 1; /* the top object's '}' is not read */
                if (whole ? !(r == 1 && g.ny == 2 && g.nx == 3 && g.snake && strcmp(g.units, "\xf0\x9f\x92\x99") == 0)
                          : !(r == 0 || (r < 0 && err.msg[0])))
                        odd++;
                free(c);
        }
        tap_ok(odd == 0,
               "every cut of a JSON scan description: 0 or an error until the scan map is whole, then the grid (%d "
               "odd)",
               odd);
}

int main(void) {
        test_orders();
        test_user_data();
        test_bad();
        test_fly();
        test_json_position();
        test_resolve();
        test_json_scan_bounded();
        return tap_done();
}
