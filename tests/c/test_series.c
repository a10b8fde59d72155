/* Series lifecycle through the ingest: keyed on series identity and image_id,
 * not on arrival order.  Messages are built as parsed structs with
 * uncompressed pixels, so this test exercises series.c and ingest.c alone;
 * the deferred limits are also checked through the parser, with CBOR
 * messages written here. */
#include <cbor.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"
#include "tap.h"

#if defined(__SANITIZE_ADDRESS__)
#endif

typedef struct {
        int starts, ends, ends_terminated, frames, errors;
        uint64_t last_image;
        uint64_t sum_of_sums;
        char last_channel[ROID_NAME_MAX];
        char last_uid[ROID_NAME_MAX];
        char start_sel[ROID_NAME_MAX]; /* roid_series.channel at the last start */
        char last_error[256];
} tally;

static void t_start(void *ctx, const roid_series *s) {
        tally *t = ctx;
        t->starts++;
        snprintf(t->last_uid, sizeof t->last_uid, "%s", s->series_unique_id);
        snprintf(t->start_sel, sizeof t->start_sel, "%s", s->channel);
}
static void t_end(void *ctx, const roid_series *s, bool term) {
        tally *t = ctx;
        (void)s;
        t->ends++;
        t->ends_terminated += term;
}
static void t_frame(void *ctx, const roid_frame_event *ev) {
        tally *t = ctx;
        t->frames++;
        t->last_image = ev->image_id;
        snprintf(t->last_channel, sizeof t->last_channel, "%s", ev->channel_name);
        const uint16_t *p = ev->pixels;
        for (size_t i = 0; i < (size_t)ev->rows * ev->cols; i++)
                t->sum_of_sums += p[i];
}
static void t_err(void *ctx, const roid_series *s, uint64_t id, const char *ch, const char *msg) {
        tally *t = ctx;
        (void)s, (void)id, (void)ch;
        t->errors++;
        snprintf(t->last_error, sizeof t->last_error, "%s", msg);
}

enum { R = 4, C = 6 };
static uint16_t pixels[R * C];

static roid_msg start_msg(uint64_t sid, const char *uid, uint64_t nimages) {
        roid_msg m = {.type = ROID_MSG_START, .format = ROID_FMT_V2, .series_id = sid};
        snprintf(m.series_unique_id, sizeof m.series_unique_id, "%s", uid);
        m.u.start.has_image_size = true;
        m.u.start.image_size_x = C;
        m.u.start.image_size_y = R;
        m.u.start.image_dtype = ROID_DT_U16;
        m.u.start.has_number_of_images = nimages > 0;
        m.u.start.number_of_images = nimages;
        m.u.start.n_channels = 1;
        snprintf(m.u.start.channels[0], ROID_NAME_MAX, "threshold_1");
        return m;
}

static roid_msg image_msg(uint64_t sid, const char *uid, uint64_t id, uint32_t rows, uint32_t cols) {
        roid_msg m = {.type = ROID_MSG_IMAGE, .format = ROID_FMT_V2, .series_id = sid};
        snprintf(m.series_unique_id, sizeof m.series_unique_id, "%s", uid);
        m.u.image.image_id = id;
        m.u.image.n_channels = 1;
        snprintf(m.u.image.channel[0].name, ROID_NAME_MAX, "threshold_1");
        m.u.image.channel[0].blob = (roid_blob){.data = (const uint8_t *)pixels,
                                                .size = (size_t)rows * cols * 2,
                                                .comp = ROID_COMP_NONE,
                                                .dtype = ROID_DT_U16,
                                                .rows = rows,
                                                .cols = cols};
        return m;
}

static roid_msg end_msg(uint64_t sid, const char *uid) {
        roid_msg m = {.type = ROID_MSG_END, .format = ROID_FMT_V2, .series_id = sid};
        snprintf(m.series_unique_id, sizeof m.series_unique_id, "%s", uid);
        return m;
}

/* An ingest reporting to t with the default limits but max_images 1000,
 * decoding `channel` ("" every one); its limits in *ret_lim if not NULL. */
static roid_ingest *mk_with(tally *t, roid_counters *ctr, const char *channel, bool implicit, roid_limits *ret_lim) {
        roid_sink sink = {
                .ctx = t, .series_start = t_start, .series_end = t_end, .frame = t_frame, .frame_error = t_err};
        roid_ingest_params p = {.channel = channel, .implicit_series = implicit};
        roid_limits_default(&p.limits);
        p.limits.max_images = 1000;
        roid_ingest *in = NULL;
        if (roid_ingest_new(&p, &sink, ctr, &in) < 0)
                abort();
        if (ret_lim)
                *ret_lim = p.limits;
        return in;
}

static roid_ingest *mk(tally *t, roid_counters *ctr, bool implicit) {
        return mk_with(t, ctr, "", implicit, NULL);
}

#define CNT(name) roid_counter_get(&ctr, ROID_C_##name)

static void test_normal_series(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_ingest *in = mk(&t, &ctr, false);
        roid_msg m = start_msg(7, "A", 5);
        roid_ingest_msg(in, &m);
        /* Out of order arrival is fine: identity is the image_id. */
        uint64_t order[] = {3, 0, 4, 1, 2};
        for (int i = 0; i < 5; i++) {
                m = image_msg(7, "A", order[i], R, C);
                roid_ingest_msg(in, &m);
        }
        m = end_msg(7, "A");
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 5, "normal series: frames delivered");
        tap_eq_u64((uint64_t)t.ends_terminated, 1, "normal series: ended by its end message");
        tap_eq_u64(t.sum_of_sums, 5 * 276, "normal series: pixels delivered intact");
        tap_eq_u64(CNT(series_started), 1, "series_started");
        tap_eq_u64(CNT(series_ended), 1, "series_ended");
        tap_eq_u64(CNT(frames_decoded), 5, "frames_decoded");
        roid_ingest_free(in);
}

static void test_bad_sequences(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_ingest *in = mk(&t, &ctr, false);
        roid_msg m = image_msg(1, "A", 0, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_before_start), 1, "image before any start: counted");
        tap_eq_u64((uint64_t)t.frames, 0, "image before any start: dropped");

        m = end_msg(1, "A");
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(ends_without_start), 1, "end without start: counted");
        tap_eq_u64((uint64_t)t.ends, 0, "end without start: ignored");

        m = start_msg(1, "A", 10);
        roid_ingest_msg(in, &m);
        m = image_msg(1, "A", 2, R, C);
        roid_ingest_msg(in, &m);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_duplicate), 1, "duplicate image_id: counted");
        tap_eq_u64((uint64_t)t.frames, 1, "duplicate image_id: ignored");
        tap_eq_u64((uint64_t)t.errors, 0, "duplicate image_id: not a frame error (its first copy counts)");

        /* Same series_id, other unique id: another series (after a detector initialize). */
        m = image_msg(1, "B", 3, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_other_series), 1, "image of another series: counted");
        tap_eq_u64((uint64_t)t.frames, 1, "image of another series: dropped");

        m = image_msg(1, "A", 4, R + 1, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_bad_shape), 1, "image of the wrong shape: counted");
        tap_eq_u64((uint64_t)t.frames, 1, "image of the wrong shape: dropped");
        tap_eq_u64((uint64_t)t.errors, 1, "image of the wrong shape: told to the sink (the series' dropped frames)");

        m = image_msg(1, "A", 5000, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_out_of_range), 1, "image_id beyond max_images: counted");
        tap_eq_u64((uint64_t)t.errors, 2, "image_id beyond max_images: told to the sink");

        /* A new start without an end closes the open series. */
        m = start_msg(2, "C", 3);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(series_unterminated), 1, "start without end: previous series counted unterminated");
        tap_eq_u64((uint64_t)t.ends, 1, "start without end: previous series reported ended");
        tap_eq_u64((uint64_t)t.ends_terminated, 0, "... as not terminated");
        m = image_msg(2, "C", 0, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 2, "the next good frame is processed");
        tap_ok(strcmp(t.last_uid, "C") == 0, "the new series is the open one");

        /* End of another series while C is open: ignored, C stays open. */
        m = end_msg(1, "A");
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(ends_without_start), 2, "end of another series: counted");
        m = image_msg(2, "C", 1, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 3, "series stays open after a stray end");

        roid_ingest_flush(in);
        tap_eq_u64((uint64_t)t.ends, 2, "flush closes the open series");
        roid_ingest_free(in);
}

static void test_implicit(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_ingest *in = mk(&t, &ctr, true);
        roid_msg m = image_msg(1, "A", 0, R, C);
        roid_ingest_msg(in, &m);
        m = image_msg(1, "A", 1, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.starts, 1, "implicit: an image opens a series");
        tap_eq_u64((uint64_t)t.frames, 2, "implicit: frames delivered");
        m = image_msg(2, "B", 0, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.starts, 2, "implicit: an image of another series opens the next");
        tap_eq_u64((uint64_t)t.ends, 1, "implicit: ... and closes the previous");
        m = end_msg(2, "B");
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.ends_terminated, 1, "implicit: an end closes it");
        roid_ingest_free(in);
}

static void test_channel_selection(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_ingest *in = mk_with(&t, &ctr, "#1", false, NULL);
        roid_msg m = start_msg(1, "A", 2);
        m.u.start.n_channels = 2;
        snprintf(m.u.start.channels[1], ROID_NAME_MAX, "threshold_2");
        roid_ingest_msg(in, &m);
        m = image_msg(1, "A", 0, R, C);
        m.u.image.n_channels = 2;
        m.u.image.channel[1] = m.u.image.channel[0];
        snprintf(m.u.image.channel[1].name, ROID_NAME_MAX, "threshold_2");
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 1, "channel #1: only one channel decoded");
        tap_ok(!strcmp(t.last_channel, "threshold_2"), "channel #1: the start's second channel (%s)", t.last_channel);
        tap_eq_u64(CNT(frames_decoded), 1, "channel #1: frames_decoded");
        m.u.image.image_id = 1;
        m.u.image.n_channels = 1;
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(frames_failed), 1, "an image without the selected channel is a counted failure");
        tap_eq_u64((uint64_t)t.errors, 1, "... reported to the sink");
        roid_ingest_free(in);
}

/* The rule the ingest decodes by and the pipeline builds the geometry by:
 * "#N" counts in the start's channel list when it has one, whatever the
 * order of an image's channels; otherwise in each image's. */
static void test_selection_rule(void) {
        roid_series s = {0};
        s.start.n_channels = 2;
        snprintf(s.start.channels[0], ROID_NAME_MAX, "threshold_1");
        snprintf(s.start.channels[1], ROID_NAME_MAX, "threshold_2");
        const char *n1 = roid_series_selected_channel(&s, "#1");
        tap_ok(n1 && !strcmp(n1, "threshold_2"), "#1 with a start list names its second channel");
        tap_ok(roid_series_channel_selected(&s, "#1", "threshold_2", 0),
               "#1: an image listing threshold_2 first still gives threshold_2");
        tap_ok(!roid_series_channel_selected(&s, "#1", "threshold_1", 1), "#1: and not the image's second channel");
        tap_ok(!roid_series_selected_channel(&s, "#2"), "#2 beyond the start's list: only the images tell");
        tap_ok(roid_series_channel_selected(&s, "#2", "x", 2) && !roid_series_channel_selected(&s, "#2", "x", 1),
               "#2 beyond the list: the image's third channel");
        const char *nm = roid_series_selected_channel(&s, "threshold_1");
        tap_ok(nm && !strcmp(nm, "threshold_1"), "a name selects itself");
        tap_ok(!roid_series_channel_selected(&s, "threshold_9", "threshold_1", 0), "a name selects nothing else");
        tap_ok(!roid_series_selected_channel(&s, "") && roid_series_channel_selected(&s, "", "any", 3),
               "an empty selection: every channel, none named at the start");
        s.start.n_channels = 0;
        tap_ok(!roid_series_selected_channel(&s, "#0") && roid_series_channel_selected(&s, "#0", "a", 0) &&
                       !roid_series_channel_selected(&s, "#0", "b", 1),
               "#0 without a start list (V1): the image's first channel");
}

/* ---- configuration for the next series (SIGHUP) ---- */

static uint16_t pixels2[R * C]; /* the second channel's frames: 10 everywhere */

static roid_msg start2(uint64_t sid, const char *uid) {
        roid_msg m = start_msg(sid, uid, 0);
        m.u.start.n_channels = 2;
        snprintf(m.u.start.channels[1], ROID_NAME_MAX, "threshold_2");
        return m;
}

static roid_msg image2(uint64_t sid, const char *uid, uint64_t id) {
        roid_msg m = image_msg(sid, uid, id, R, C);
        m.u.image.n_channels = 2;
        m.u.image.channel[1] = m.u.image.channel[0];
        m.u.image.channel[1].blob.data = (const uint8_t *)pixels2;
        snprintf(m.u.image.channel[1].name, ROID_NAME_MAX, "threshold_2");
        return m;
}

/* A channel set while a series runs applies from the next series start: the
 * series in progress goes on with the channel it started with. */
static void test_next_channel(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_limits lim;
        roid_ingest *in = mk_with(&t, &ctr, "#0", false, &lim);
        roid_msg m = start2(1, "A");
        roid_ingest_msg(in, &m);
        tap_ok(!strcmp(t.start_sel, "#0"), "series A starts with #0 (%s)", t.start_sel);
        m = image2(1, "A", 0);
        roid_ingest_msg(in, &m);
        roid_ingest_set_config(in, &lim, "#0");
        roid_ingest_set_config(in, &lim, "#1"); /* the last call wins */
        for (uint64_t id = 1; id < 4; id++) {
                m = image2(1, "A", id);
                roid_ingest_msg(in, &m);
        }
        tap_eq_u64((uint64_t)t.frames, 4, "series A after the change: one frame per image");
        tap_ok(!strcmp(t.last_channel, "threshold_1"), "series A keeps decoding threshold_1 (%s)", t.last_channel);
        tap_eq_u64(t.sum_of_sums, 4 * 276, "series A: threshold_1's pixels");
        tap_ok(!strcmp(roid_ingest_tracker(in)->cur.channel, "#0"), "the open series still says #0");
        m = end_msg(1, "A");
        roid_ingest_msg(in, &m);
        tap_ok(!strcmp(roid_ingest_tracker(in)->channel, "#1"), "once A ended, the next series' selection is #1");
        t.sum_of_sums = 0;
        m = start2(2, "B");
        roid_ingest_msg(in, &m);
        tap_ok(!strcmp(t.start_sel, "#1"), "series B starts with #1 (%s)", t.start_sel);
        for (uint64_t id = 0; id < 3; id++) {
                m = image2(2, "B", id);
                roid_ingest_msg(in, &m);
        }
        tap_eq_u64((uint64_t)t.frames, 7, "series B: one frame per image");
        tap_ok(!strcmp(t.last_channel, "threshold_2"), "series B decodes threshold_2 (%s)", t.last_channel);
        tap_eq_u64(t.sum_of_sums, 3 * 10 * R * C, "series B: threshold_2's pixels");

        /* A start without an end closes the open series: the change applies
         * to the series that start opens. */
        roid_ingest_set_config(in, &lim, "threshold_1");
        m = start2(3, "C");
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)(t.ends - t.ends_terminated), 1, "B closed unterminated by C's start");
        tap_ok(!strcmp(t.start_sel, "threshold_1"), "series C starts with threshold_1 (%s)", t.start_sel);
        m = image2(3, "C", 0);
        roid_ingest_msg(in, &m);
        tap_ok(!strcmp(t.last_channel, "threshold_1"), "series C decodes threshold_1 (%s)", t.last_channel);
        tap_eq_u64(CNT(frames_failed), 0, "no frame failed");
        roid_ingest_free(in);
}

/* Limits set while a series runs apply from the next series start. */
static void test_next_limits(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_limits lim;
        roid_ingest *in = mk_with(&t, &ctr, "#0", false, &lim);
        roid_limits small = lim;
        small.max_images = 3;
        small.max_frame_bytes = 2 * R * C - 2; /* one byte pair less than a frame */
        roid_msg m = start2(1, "A");
        roid_ingest_msg(in, &m);
        roid_ingest_set_config(in, &small, "#0");
        tap_eq_u64(roid_ingest_tracker(in)->lim.max_images, 1000, "the open series keeps max_images 1000");
        m = image2(1, "A", 5);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 1, "series A: image_id 5 (above the new max_images 3) decoded");
        tap_eq_u64(CNT(images_out_of_range), 0, "... and not counted out of range");
        tap_eq_u64(CNT(frames_failed), 0, "series A: a frame above the new max_frame_bytes still decodes");
        m = end_msg(1, "A");
        roid_ingest_msg(in, &m);
        m = start2(2, "B");
        roid_ingest_msg(in, &m);
        m = image2(2, "B", 5);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_out_of_range), 1, "series B: image_id 5 beyond max_images 3 is counted");
        tap_eq_u64((uint64_t)t.frames, 1, "... and dropped");
        m = image2(2, "B", 1);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(frames_failed), 1, "series B: a frame above max_frame_bytes fails");
        tap_ok(strstr(t.last_error, "max_frame_bytes 46") != NULL, "... naming the limit: %s", t.last_error);
        /* With no series open, a change applies at once. */
        m = end_msg(2, "B");
        roid_ingest_msg(in, &m);
        roid_ingest_set_config(in, &lim, "#0");
        tap_eq_u64(roid_ingest_tracker(in)->lim.max_images, 1000, "no series open: the change applies at once");
        roid_ingest_free(in);
}

/* ---- the same through the parser: Stream V2 messages as CBOR ---- */

typedef struct {
        uint8_t b[4096];
        size_t n;
} wbuf;

#define W(fn, ...) (w->n += fn(__VA_ARGS__, w->b + w->n, sizeof w->b - w->n))
static void w_str(wbuf *w, const char *s) {
        W(cbor_encode_string_start, strlen(s));
        memcpy(w->b + w->n, s, strlen(s));
        w->n += strlen(s);
}

static void w_head(wbuf *w, size_t n_keys, const char *type, uint64_t sid, const char *uid) {
        w->n = 0;
        W(cbor_encode_tag, 55799);
        W(cbor_encode_map_start, n_keys + 3);
        w_str(w, "type");
        w_str(w, type);
        w_str(w, "series_id");
        W(cbor_encode_uint, sid);
        w_str(w, "series_unique_id");
        w_str(w, uid);
}

/* A start whose vendor key nests `depth` maps deep (not user_data: that is
 * left out when too deep, the start stands). */
static void w_start(wbuf *w, uint64_t sid, const char *uid, unsigned depth) {
        w_head(w, 5, "start", sid, uid);
        w_str(w, "image_size_x");
        W(cbor_encode_uint, C);
        w_str(w, "image_size_y");
        W(cbor_encode_uint, R);
        w_str(w, "image_dtype");
        w_str(w, "uint16");
        w_str(w, "channels");
        W(cbor_encode_array_start, 1);
        w_str(w, "threshold_1");
        w_str(w, "x_vendor");
        for (unsigned i = 0; i < depth; i++) {
                W(cbor_encode_map_start, 1);
                w_str(w, "a");
        }
        W(cbor_encode_uint, 1);
}

static void w_image(wbuf *w, uint64_t sid, const char *uid, uint64_t id) {
        w_head(w, 2, "image", sid, uid);
        w_str(w, "image_id");
        W(cbor_encode_uint, id);
        w_str(w, "data");
        W(cbor_encode_map_start, 1);
        w_str(w, "threshold_1");
        W(cbor_encode_tag, 40);
        W(cbor_encode_array_start, 2);
        W(cbor_encode_array_start, 2);
        W(cbor_encode_uint, R);
        W(cbor_encode_uint, C);
        W(cbor_encode_tag, 69); /* uint16, little endian */
        W(cbor_encode_bytestring_start, sizeof pixels);
        memcpy(w->b + w->n, pixels, sizeof pixels);
        w->n += sizeof pixels;
}

static int feed(roid_ingest *in, const wbuf *w) {
        roid_part part = {w->b, w->n};
        return roid_ingest_parts(in, &part, 1);
}

/* The parser follows the series too: the open series' messages are parsed
 * with its limits, the next start with the new ones, also when the old ones
 * would refuse it. */
static void test_next_limits_parsed(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_limits lim;
        roid_ingest *in = mk_with(&t, &ctr, "#0", false, &lim);
        roid_ingest_free(in);
        lim.max_depth = 8;
        roid_sink sink = {
                .ctx = &t, .series_start = t_start, .series_end = t_end, .frame = t_frame, .frame_error = t_err};
        roid_ingest_params p = {.channel = "#0", .limits = lim};
        if (roid_ingest_new(&p, &sink, &ctr, &in) < 0)
                abort();
        wbuf *w = malloc(sizeof *w);
        w_start(w, 1, "A", 2);
        tap_eq_i64(feed(in, w), 0, "start A parsed with max_depth 8");
        w_image(w, 1, "A", 0);
        feed(in, w);
        w_start(w, 9, "Z", 12);
        tap_ok(feed(in, w) < 0, "a start nested 12 deep is refused with max_depth 8");
        tap_eq_u64((uint64_t)t.starts, 1, "... and opens nothing");

        roid_limits next = lim;
        next.max_depth = 32;
        next.max_frame_bytes = 2 * R * C - 2;
        roid_ingest_set_config(in, &next, "#0");
        w_image(w, 1, "A", 1);
        tap_eq_i64(feed(in, w), 0, "series A: a frame above the new max_frame_bytes is parsed");
        tap_eq_u64((uint64_t)t.frames, 2, "... and decoded");
        w_start(w, 2, "B", 12);
        tap_eq_i64(feed(in, w), 0, "start B nested 12 deep, no end of A: parsed with the new max_depth 32");
        tap_eq_u64((uint64_t)t.starts, 2, "... opens series B");
        tap_eq_u64((uint64_t)(t.ends - t.ends_terminated), 1, "... and closes A unterminated");
        uint64_t bad = CNT(messages_bad_size);
        w_image(w, 2, "B", 0);
        tap_ok(feed(in, w) == -EMSGSIZE, "series B: a frame above max_frame_bytes is refused by the parser");
        tap_eq_u64(CNT(messages_bad_size) - bad, 1, "... counted in messages_bad_size");
        tap_eq_u64((uint64_t)t.frames, 2, "... and not decoded");
        free(w);
        roid_ingest_free(in);
}

/* A channel that is not decoded need not fit the series: a bad one is
 * ignored, the selected channel's frame goes on.  A bad selected channel
 * still drops the image. */
static void test_bad_unselected_channel(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_ingest *in = mk_with(&t, &ctr, "threshold_1", false, NULL);
        roid_msg m = start2(1, "A");
        roid_ingest_msg(in, &m);
        m = image2(1, "A", 0);
        m.u.image.channel[1].blob.rows = R / 2; /* threshold_2 is half the height */
        m.u.image.channel[1].blob.size /= 2;
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 1, "bad unselected threshold_2: threshold_1's frame is decoded");
        tap_ok(!strcmp(t.last_channel, "threshold_1") && t.sum_of_sums == 276,
               "... with threshold_1's pixels (channel %s, sum %" PRIu64 ")", t.last_channel, t.sum_of_sums);
        tap_eq_u64(CNT(images_bad_shape), 0, "... and the image is not counted as badly shaped");
        m = image2(1, "A", 1);
        m.u.image.channel[1].blob.dtype = ROID_DT_U8; /* and of another dtype */
        m.u.image.channel[1].blob.size /= 2;
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 2, "an unselected channel of another dtype: the frame is decoded too");
        m = image2(1, "A", 2);
        m.u.image.channel[0].blob.rows = R / 2; /* the selected one is bad */
        m.u.image.channel[0].blob.size /= 2;
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 2, "a bad selected channel: no frame");
        tap_eq_u64(CNT(images_bad_shape), 1, "... counted in images_bad_shape");
        m = image2(1, "A", 2);
        roid_ingest_msg(in, &m);
        tap_eq_u64((uint64_t)t.frames, 3, "... and its image_id is still free for the good image");
        roid_ingest_free(in);

        /* Every channel decoded: each must fit. */
        tally t2 = {0};
        roid_counters ctr2 = {0};
        in = mk_with(&t2, &ctr2, "", false, NULL);
        m = start2(1, "A");
        roid_ingest_msg(in, &m);
        m = image2(1, "A", 0);
        m.u.image.channel[1].blob.rows = R / 2;
        m.u.image.channel[1].blob.size /= 2;
        roid_ingest_msg(in, &m);
        tap_ok(t2.frames == 0 && roid_counter_get(&ctr2, ROID_C_images_bad_shape) == 1,
               "every channel selected: a bad threshold_2 drops the image, counted");
        roid_ingest_free(in);
}

/* Duplicate detection costs memory by the image_ids received, not by the
 * largest one: with max_images 10^12 an id near it is tracked in one page. */
static void test_sparse_ids(void) {
        tally t = {0};
        roid_counters ctr = {0};
        roid_limits lim;
        roid_ingest *in = mk_with(&t, &ctr, "", false, &lim);
        roid_ingest_free(in);
        lim.max_images = 1000000000000ull;
        roid_sink sink = {
                .ctx = &t, .series_start = t_start, .series_end = t_end, .frame = t_frame, .frame_error = t_err};
        roid_ingest_params p = {.channel = "", .limits = lim};
        if (roid_ingest_new(&p, &sink, &ctr, &in) < 0)
                abort();
        const size_t heap0 = tap_heap_in_use();
        roid_msg m = start_msg(1, "A", 0);
        roid_ingest_msg(in, &m);
        const uint64_t ids[] = {999999999999ull, 0, 500000000000ull, 999999999999ull, 0};
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
                m = image_msg(1, "A", ids[i], R, C);
                roid_ingest_msg(in, &m);
        }
        const size_t grew = tap_heap_in_use() - heap0;
        tap_eq_u64((uint64_t)t.frames, 3, "ids 999999999999, 0, 5e11 with max_images 1e12: all three decoded");
        tap_eq_u64(CNT(images_duplicate), 2, "... their repeats are duplicates");
        tap_ok(CNT(images_out_of_range) == 0 && CNT(images_unchecked) == 0, "... none out of range, none unchecked");
        tap_ok(grew < (1u << 20), "... and the duplicate detection took %zu bytes (< 1 MiB)", grew);
        m = end_msg(1, "A");
        roid_ingest_msg(in, &m);

        /* One id in each of more pages than the cap allows: the frames go on,
         * counted unchecked; the memory stops at the cap. */
        m = start_msg(2, "B", 0);
        roid_ingest_msg(in, &m);
        const size_t heap1 = tap_heap_in_use();
        const uint64_t stride = (uint64_t)ROID_SEEN_PAGE_IDS * 1000;
        for (uint64_t k = 0; k <= ROID_SEEN_MAX_PAGES; k++) {
                m = image_msg(2, "B", k * stride, R, C);
                roid_ingest_msg(in, &m);
        }
        const size_t cap_bytes = (size_t)ROID_SEEN_MAX_PAGES * (ROID_SEEN_PAGE_IDS / 8 + 64);
        tap_eq_u64((uint64_t)t.frames, 3 + ROID_SEEN_MAX_PAGES + 1,
                   "sparse ids in ROID_SEEN_MAX_PAGES + 1 pages: "
                   "every frame decoded");
        tap_eq_u64(CNT(images_unchecked), 1, "... the one past the page cap counted in images_unchecked");
        tap_ok(tap_heap_in_use() - heap1 <= cap_bytes, "... memory within the cap (%zu bytes, cap %zu)",
               tap_heap_in_use() - heap1, cap_bytes);
        m = image_msg(2, "B", stride, R, C);
        roid_ingest_msg(in, &m);
        tap_eq_u64(CNT(images_duplicate), 3, "... a repeat within the tracked pages is still a duplicate");
        roid_ingest_free(in);
}

int main(void) {
        for (int i = 0; i < R * C; i++) {
                pixels[i] = (uint16_t)i;
                pixels2[i] = 10;
        }
        test_normal_series();
        test_bad_sequences();
        test_implicit();
        test_channel_selection();
        test_selection_rule();
        test_next_channel();
        test_next_limits();
        test_next_limits_parsed();
        test_bad_unselected_channel();
        test_sparse_ids();
        return tap_done();
}
