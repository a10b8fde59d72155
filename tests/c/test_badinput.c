/* Bad input, table-driven, through the whole ingest path (parse, lifecycle,
 * decode): every case must give a log line naming the problem, one counter,
 * no crash, bounded memory, and the next good frame must be processed. */
#include <cbor.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/cborwalk.h"
#include "ingest/codec.h"
#include "ingest/ingest.h"
#include "service/log.h"
#include "tap.h"

enum { ROWS = 32, COLS = 48, NPIX = ROWS * COLS };

/* ---- a small CBOR writer over libcbor's encoder ---- */
typedef struct {
        uint8_t b[1 << 16];
        size_t n;
} wbuf;

static void w_raw(wbuf *w, const void *p, size_t n) {
        memcpy(w->b + w->n, p, n);
        w->n += n;
}
#define W(fn, ...) (w->n += fn(__VA_ARGS__, w->b + w->n, sizeof w->b - w->n))
static void w_uint(wbuf *w, uint64_t v) {
        W(cbor_encode_uint, v);
}
static void w_tag(wbuf *w, uint64_t t) {
        W(cbor_encode_tag, t);
}
static void w_map(wbuf *w, size_t n) {
        W(cbor_encode_map_start, n);
}
static void w_arr(wbuf *w, size_t n) {
        W(cbor_encode_array_start, n);
}
static void w_str(wbuf *w, const char *s) {
        W(cbor_encode_string_start, strlen(s));
        w_raw(w, s, strlen(s));
}
static void w_bytes(wbuf *w, const void *p, size_t n) {
        W(cbor_encode_bytestring_start, n);
        w_raw(w, p, n);
}

/* How an image message deviates from a good one. */
typedef struct {
        uint64_t series_id;
        const char *uid;
        uint64_t image_id;
        uint64_t rows, cols;    /* dims written in tag 40 */
        uint64_t typed_tag;     /* 69 for uint16 */
        bool tag40_missing;     /* typed array directly, no tag 40 */
        bool swap_tags;         /* tag 69 around tag 40 (nested wrong) */
        const char *algo;       /* NULL = uncompressed */
        const uint8_t *payload; /* bytes inside the typed array */
        size_t payload_len;
} img_spec;

static uint16_t pixels[NPIX];
static uint8_t bslz4_good[1 << 16];
static size_t bslz4_good_len;

static void build_image(wbuf *w, const img_spec *s) {
        w->n = 0;
        w_tag(w, 55799);
        w_map(w, 6);
        w_str(w, "type");
        w_str(w, "image");
        w_str(w, "series_id");
        w_uint(w, s->series_id);
        w_str(w, "series_unique_id");
        w_str(w, s->uid);
        w_str(w, "image_id");
        w_uint(w, s->image_id);
        w_str(w, "real_time");
        w_arr(w, 2);
        w_uint(w, 1000);
        w_uint(w, 50000000);
        w_str(w, "data");
        w_map(w, 1);
        w_str(w, "threshold_1");
        if (s->swap_tags)
                w_tag(w, s->typed_tag);
        if (!s->tag40_missing) {
                w_tag(w, 40);
                w_arr(w, 2);
                w_arr(w, 2);
                w_uint(w, s->rows);
                w_uint(w, s->cols);
        }
        if (!s->swap_tags)
                w_tag(w, s->typed_tag);
        if (s->algo) {
                w_tag(w, 56500);
                w_arr(w, 3);
                w_str(w, s->algo);
                w_uint(w, 2);
        }
        w_bytes(w, s->payload, s->payload_len);
}

static img_spec good_spec(uint64_t id) {
        return (img_spec){.series_id = 5,
                          .uid = "S5",
                          .image_id = id,
                          .rows = ROWS,
                          .cols = COLS,
                          .typed_tag = 69,
                          .algo = "bslz4",
                          .payload = bslz4_good,
                          .payload_len = bslz4_good_len};
}

static void build_start_n(wbuf *w, size_t extra_keys) {
        w->n = 0;
        w_tag(w, 55799);
        w_map(w, 8 + extra_keys);
        w_str(w, "type");
        w_str(w, "start");
        w_str(w, "series_id");
        w_uint(w, 5);
        w_str(w, "series_unique_id");
        w_str(w, "S5");
        w_str(w, "image_size_x");
        w_uint(w, COLS);
        w_str(w, "image_size_y");
        w_uint(w, ROWS);
        w_str(w, "image_dtype");
        w_str(w, "uint16");
        w_str(w, "number_of_images");
        w_uint(w, 100000);
        w_str(w, "channels");
        w_arr(w, 1);
        w_str(w, "threshold_1");
}

static void build_start(wbuf *w) {
        build_start_n(w, 0);
}

/* The good start with one more key: a channel map (flatfield, pixel_mask)
 * of a rows x cols array of typed-array tag `tag` (4-byte elements). */
static void build_start_map(wbuf *w, const char *key, uint64_t tag, uint64_t rows, uint64_t cols) {
        static const uint32_t zeros[NPIX];
        build_start_n(w, 1);
        w_str(w, key);
        w_map(w, 1);
        w_str(w, "threshold_1");
        w_tag(w, 40);
        w_arr(w, 2);
        w_arr(w, 2);
        w_uint(w, rows);
        w_uint(w, cols);
        w_tag(w, tag);
        w_bytes(w, zeros, (size_t)rows * cols * 4);
}

/* An image of series 5 whose data map has n_ch (0 or 1) good channels, and
 * user_data nested ud_depth arrays deep when ud_depth > 0. */
static void build_image_ud(wbuf *w, uint64_t id, unsigned n_ch, unsigned ud_depth) {
        w->n = 0;
        w_tag(w, 55799);
        w_map(w, ud_depth ? 6 : 5);
        w_str(w, "type");
        w_str(w, "image");
        w_str(w, "series_id");
        w_uint(w, 5);
        w_str(w, "series_unique_id");
        w_str(w, "S5");
        w_str(w, "image_id");
        w_uint(w, id);
        w_str(w, "data");
        w_map(w, n_ch);
        if (n_ch) {
                w_str(w, "threshold_1");
                w_tag(w, 40);
                w_arr(w, 2);
                w_arr(w, 2);
                w_uint(w, ROWS);
                w_uint(w, COLS);
                w_tag(w, 69);
                w_bytes(w, pixels, sizeof pixels);
        }
        if (ud_depth) {
                w_str(w, "user_data");
                for (unsigned i = 0; i < ud_depth; i++)
                        w_arr(w, 1);
                w_uint(w, 1);
        }
}

/* ---- the pipeline under test ---- */
static roid_counters ctr;
static uint64_t good_sum, frames_seen, last_sum, series_starts;
static size_t last_ud_size;

static void on_series_start(void *ctx, const roid_series *s) {
        (void)ctx;
        series_starts++;
        last_ud_size = s->user_data.size;
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        (void)ctx;
        const uint16_t *p = ev->pixels;
        uint64_t s = 0;
        for (size_t i = 0; i < (size_t)ev->rows * ev->cols; i++)
                s += p[i];
        last_sum = s;
        frames_seen++;
}

/* stderr goes to a file so the log lines can be checked. */
static FILE *logf_;
static long log_pos;

static void log_capture_start(void) {
        logf_ = tmpfile();
        fflush(stderr);
        dup2(fileno(logf_), STDERR_FILENO);
}

static const char *log_since_last(void) {
        static char buf[8192];
        fflush(stderr);
        long end = lseek(STDERR_FILENO, 0, SEEK_CUR);
        size_t n = (size_t)(end - log_pos);
        if (n >= sizeof buf)
                n = sizeof buf - 1;
        pread(STDERR_FILENO, buf, n, log_pos);
        buf[n] = 0;
        log_pos = end;
        return buf;
}

/* Counts the lines logged since the last call; summary lines of suppressed
 * ones are counted in count_summaries and their counts added to *suppressed. */
static uint64_t count_summaries;

static uint64_t log_lines_since_last(uint64_t *suppressed) {
        fflush(stderr);
        long end = lseek(STDERR_FILENO, 0, SEEK_END);
        uint64_t lines = 0;
        count_summaries = 0;
        char buf[4096];
        size_t have = 0;
        for (long pos = log_pos; pos < end || have;) {
                ssize_t r = pos < end ? pread(STDERR_FILENO, buf + have, sizeof buf - 1 - have, pos) : 0;
                if (r < 0)
                        break;
                pos += r;
                have += (size_t)r;
                buf[have] = 0;
                char *nl = strchr(buf, '\n');
                if (!nl && r == 0)
                        break; /* an unterminated last line: not ours */
                while (nl) {
                        uint64_t n;
                        char lv[16];
                        lines++;
                        if (suppressed && sscanf(buf, "roid: %15[a-z]: %" SCNu64 " similar line", lv, &n) == 2) {
                                *suppressed += n;
                                count_summaries++;
                        }
                        size_t used = (size_t)(nl + 1 - buf);
                        memmove(buf, nl + 1, have - used + 1);
                        have -= used;
                        nl = strchr(buf, '\n');
                }
                if (have == sizeof buf - 1)
                        have = 0; /* a line longer than the log writes */
        }
        log_pos = end;
        return lines;
}

typedef struct {
        const char *name;
        roid_counter counter;
        const char *log_words; /* must appear in the log line */
        size_t n_parts;
        roid_part parts[12];
} bad_case;

static uint64_t next_id = 1;

static bool feed_good(roid_ingest *in) {
        wbuf *w = malloc(sizeof *w);
        img_spec s = good_spec(next_id++);
        build_image(w, &s);
        roid_part p = {w->b, w->n};
        uint64_t before = frames_seen;
        roid_ingest_parts(in, &p, 1);
        free(w);
        return frames_seen == before + 1 && last_sum == good_sum;
}

int main(void) {
        for (int i = 0; i < NPIX; i++)
                pixels[i] = (uint16_t)((i * 37) % 1000);
        for (int i = 0; i < NPIX; i++)
                good_sum += pixels[i];
        size_t enc;
        if (roid_bslz4_encode(pixels, sizeof pixels, 2, 0, bslz4_good, sizeof bslz4_good, &enc) < 0) {
                tap_ok(false, "bslz4 encoder works");
                return tap_done();
        }
        bslz4_good_len = enc;

        log_capture_start();
        roid_log_set_prefix(0);
        /* Every case must show its line: unlimited until the flood below. */
        roid_log_set_ratelimit(ROID_LOG_RATELIMIT_INTERVAL_MS, 0);
        roid_sink sink = {.frame = on_frame, .series_start = on_series_start};
        roid_ingest_params ip = {.channel = ""};
        roid_limits_default(&ip.limits);
        ip.limits.max_pixels = 1 << 24;
        roid_ingest *in;
        roid_ingest_new(&ip, &sink, &ctr, &in);

        wbuf *start = malloc(sizeof *start);
        build_start(start);
        roid_part sp = {start->b, start->n};
        roid_ingest_parts(in, &sp, 1);
        tap_ok(feed_good(in), "a good frame before the bad ones is processed");

        /* The bad messages, each in its own buffer. */
        enum { NB = 16 };
        wbuf *wb[NB];
        for (int i = 0; i < NB; i++)
                wb[i] = calloc(1, sizeof(wbuf));
        img_spec s;
        int k = 0;

        s = good_spec(1000 + (uint64_t)k);
        build_image(wb[k], &s);
        wb[k]->n = wb[k]->n / 2; /* truncated CBOR */
        bad_case c_trunc = {"truncated CBOR", ROID_C_messages_malformed, "truncated", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.typed_tag = 99; /* not a typed-array tag */
        build_image(wb[k], &s);
        bad_case c_tag = {"wrong typed-array tag", ROID_C_messages_malformed, "tag 99", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.swap_tags = true; /* tag 69 wrapping tag 40 */
        build_image(wb[k], &s);
        bad_case c_nested = {"nested-wrong tags", ROID_C_messages_malformed, "tag", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.algo = NULL; /* uncompressed, but the bytes are the compressed ones */
        build_image(wb[k], &s);
        bad_case c_size = {
                "declared size does not match the data", ROID_C_messages_bad_size, "", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.rows = 100000;
        s.cols = 100000;
        build_image(wb[k], &s);
        bad_case c_huge = {"shape of 100000 x 100000", ROID_C_messages_bad_size, "100000", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        static uint8_t corrupt[1 << 16];
        memcpy(corrupt, bslz4_good, bslz4_good_len);
        for (size_t i = 16; i < 40; i++)
                corrupt[i] = 0xff; /* inside the first LZ4 block */
        s = good_spec(1000 + (uint64_t)k);
        s.payload = corrupt;
        build_image(wb[k], &s);
        bad_case c_lz4 = {"corrupt LZ4 block", ROID_C_frames_failed, "bslz4", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        static uint8_t liar[1 << 16];
        memcpy(liar, bslz4_good, bslz4_good_len);
        liar[7] ^= 0x40; /* header: orig size lies */
        s = good_spec(1000 + (uint64_t)k);
        s.payload = liar;
        build_image(wb[k], &s);
        bad_case c_liar = {"bslz4 header that lies", ROID_C_frames_failed, "bslz4", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        static uint8_t blocklie[1 << 16];
        memcpy(blocklie, bslz4_good, bslz4_good_len);
        blocklie[10] = 0x7f; /* block size not a multiple of 8 x elem */
        blocklie[11] = 0x01;
        s = good_spec(1000 + (uint64_t)k);
        s.payload = blocklie;
        build_image(wb[k], &s);
        bad_case c_block = {"bslz4 block size that lies", ROID_C_frames_failed, "block", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.algo = "zstd-magic";
        build_image(wb[k], &s);
        bad_case c_algo = {"unknown compression", ROID_C_messages_unknown, "zstd-magic", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        s = good_spec(1000 + (uint64_t)k);
        s.series_id = 6;
        s.uid = "S6";
        build_image(wb[k], &s);
        bad_case c_other = {
                "image of another series", ROID_C_images_other_series, "series 6", 1, {{wb[k]->b, wb[k]->n}}};
        k++;

        static const char garbage[] = "{\"htype\": \"dimage-1.0\", \"series\": 5, \"frame\": ";
        bad_case c_json = {"garbage JSON",
                           ROID_C_messages_malformed,
                           "JSON",
                           4,
                           {{(const uint8_t *)garbage, sizeof garbage - 1},
                            {(const uint8_t *)"{}", 2},
                            {(const uint8_t *)"xx", 2},
                            {(const uint8_t *)"{}", 2}}};

        static const char unk[] = "{\"htype\": \"dfancy-9.9\", \"series\": 5}";
        bad_case c_htype = {
                "unknown htype", ROID_C_messages_unknown, "dfancy", 1, {{(const uint8_t *)unk, sizeof unk - 1}}};

        static const char v1img[] = "{\"htype\":\"dimage-1.0\",\"series\":5,\"frame\":3,\"hash\":\"\"}";
        static const char v1d[] =
                "{\"htype\":\"dimage_d-1.0\",\"shape\":[48,32],\"type\":\"uint16\",\"encoding\":\"<\",\"size\":3072}";
        static const char v1c[] = "{\"htype\":\"dconfig-1.0\",\"start_time\":0,\"stop_time\":1,\"real_time\":1}";
        bad_case c_missing = {"missing multipart part",
                              ROID_C_messages_malformed,
                              "part",
                              2,
                              {{(const uint8_t *)v1img, sizeof v1img - 1}, {(const uint8_t *)v1d, sizeof v1d - 1}}};
        bad_case c_extra = {"extra multipart parts",
                            ROID_C_messages_malformed,
                            "part",
                            7,
                            {{(const uint8_t *)v1img, sizeof v1img - 1},
                             {(const uint8_t *)v1d, sizeof v1d - 1},
                             {(const uint8_t *)pixels, 3072},
                             {(const uint8_t *)v1c, sizeof v1c - 1},
                             {(const uint8_t *)"{}", 2},
                             {(const uint8_t *)"{}", 2},
                             {(const uint8_t *)"{}", 2}}};

        static const uint8_t not_cbor_not_json[] = {0x00, 0x01, 0x02, 0x03};
        bad_case c_neither = {"neither CBOR nor JSON", ROID_C_messages_malformed, "", 1, {{not_cbor_not_json, 4}}};

        bad_case *cases[] = {&c_trunc, &c_tag,   &c_nested, &c_size,  &c_huge,    &c_lz4,   &c_liar,   &c_block,
                             &c_algo,  &c_other, &c_json,   &c_htype, &c_missing, &c_extra, &c_neither};
        size_t n_cases = sizeof cases / sizeof cases[0];

        log_since_last();
        for (size_t i = 0; i < n_cases; i++) {
                bad_case *c = cases[i];
                uint64_t before = roid_counter_get(&ctr, c->counter);
                uint64_t frames_before = frames_seen;
                roid_ingest_parts(in, c->parts, c->n_parts);
                const char *log = log_since_last();
                tap_eq_u64(roid_counter_get(&ctr, c->counter) - before, 1, c->name);
                tap_ok(frames_seen == frames_before, "%s: no frame delivered", c->name);
                tap_ok(log[0] != 0 && strstr(log, c->log_words) != NULL, "%s: logged, naming '%s'", c->name,
                       c->log_words);
                tap_diag("%s -> %.*s", c->name, (int)strcspn(log, "\n"), log);
                tap_ok(feed_good(in), "%s: the next good frame is processed", c->name);
        }

        /* The lines one round of the bad cases gives, unlimited. */
        for (size_t i = 0; i < n_cases; i++)
                roid_ingest_parts(in, cases[i]->parts, cases[i]->n_parts);
        uint64_t round_lines = log_lines_since_last(NULL);

        /* Memory stays bounded: repeat every bad case many times.  The log
         * does too: a site shows at most its burst per interval (one window
         * here), and every other line is counted in a summary line. */
        enum { REPS = 300, SITES_MAX = 10 };
        roid_log_set_ratelimit(60000, ROID_LOG_RATELIMIT_BURST);
        size_t heap0 = tap_heap_in_use();
        for (int rep = 0; rep < REPS; rep++)
                for (size_t i = 0; i < n_cases; i++)
                        roid_ingest_parts(in, cases[i]->parts, cases[i]->n_parts);
        roid_log_flush_suppressed();
        uint64_t suppressed = 0;
        uint64_t shown = log_lines_since_last(&suppressed);
        tap_ok(shown <= SITES_MAX * (ROID_LOG_RATELIMIT_BURST + 1),
               "log bounded: %" PRIu64 " lines (with the summaries) for %d bad messages", shown, REPS * (int)n_cases);
        tap_eq_u64(shown + suppressed - count_summaries, REPS * round_lines,
                   "log: lines shown + suppressed == the lines of the rounds unlimited");
        roid_log_set_ratelimit(ROID_LOG_RATELIMIT_INTERVAL_MS, 0);
        size_t heap1 = tap_heap_in_use();
        tap_ok(heap1 <= heap0 + (1 << 20), "memory bounded over %zu bad messages (heap %zu -> %zu bytes)",
               300 * n_cases, heap0, heap1);
        tap_ok(feed_good(in), "after all of it, a good frame is processed");

        /* V1: a header whose appendix is over max_json_bytes, or nested beyond
         * max_depth, starts its series without that user data, counted and
         * logged with the reason; the next good series goes on. */
        static const char v1h[] = "{\"htype\":\"dheader-1.0\",\"series\":7,\"header_detail\":\"basic\"}";
        static const char v1cfg[] = "{\"nimages\":3,\"ntrigger\":1,\"bit_depth_image\":16,"
                                    "\"x_pixels_in_detector\":48,\"y_pixels_in_detector\":32}";
        const size_t max = ip.limits.max_json_bytes;
        char *app = malloc(max + 2);
        memcpy(app, "{\"pad\":[0", 9);
        for (size_t i = 9; i + 1 < max + 1; i += 2)
                memcpy(app + i, ",0", 2);
        memcpy(app + (max + 1) - 2, "]}", 2); /* max + 1 bytes: {"pad":[0,0,...,0]} */
        char deep_app[2 * 33 + 1];
        memset(deep_app, '[', 33);
        memset(deep_app + 33, ']', 33);
        struct {
                const char *name;
                roid_counter counter;
                const char *log_words;
                const void *app;
                size_t app_len;
        } v1bad[] = {
                {"V1 appendix of max_json_bytes + 1", ROID_C_user_data_ignored, "exceeds max_json_bytes", app, max + 1},
                {"V1 appendix nested 33 deep", ROID_C_user_data_ignored, "deeper than max_depth 32", deep_app, 66},
        };
        for (size_t i = 0; i < 2; i++) {
                roid_part hp[3] = {{(const uint8_t *)v1h, sizeof v1h - 1},
                                   {(const uint8_t *)v1cfg, sizeof v1cfg - 1},
                                   {v1bad[i].app, v1bad[i].app_len}};
                uint64_t before = roid_counter_get(&ctr, v1bad[i].counter);
                uint64_t starts = series_starts;
                roid_ingest_parts(in, hp, 3);
                const char *log = log_since_last();
                tap_eq_u64(roid_counter_get(&ctr, v1bad[i].counter) - before, 1, v1bad[i].name);
                tap_ok(series_starts == starts + 1 && last_ud_size == 0,
                       "%s: the series starts, without the appendix as user data", v1bad[i].name);
                tap_ok(strstr(log, v1bad[i].log_words) && strstr(log, "header appendix"),
                       "%s: logged, naming the appendix and '%s'", v1bad[i].name, v1bad[i].log_words);
                tap_diag("%s -> %.*s", v1bad[i].name, (int)strcspn(log, "\n"), log);
        }
        /* the good series: its appendix exactly max_json_bytes, then 3 images */
        memcpy(app + max - 3, " ]}", 3); /* over the ",0]" there: still {"pad":[0,...,0]} */
        roid_part hp[3] = {{(const uint8_t *)v1h, sizeof v1h - 1},
                           {(const uint8_t *)v1cfg, sizeof v1cfg - 1},
                           {(const uint8_t *)app, max}};
        uint64_t starts = series_starts, frames0 = frames_seen, good_frames = 0;
        roid_ingest_parts(in, hp, 3);
        tap_ok(series_starts == starts + 1 && last_ud_size == max,
               "the next good V1 header starts series 7 with its %zu-byte appendix", max);
        for (int f = 0; f < 3; f++) {
                char im[96];
                snprintf(im, sizeof im, "{\"htype\":\"dimage-1.0\",\"series\":7,\"frame\":%d,\"hash\":\"\"}", f);
                roid_part ip1[4] = {{(const uint8_t *)im, strlen(im)},
                                    {(const uint8_t *)v1d, sizeof v1d - 1},
                                    {(const uint8_t *)pixels, sizeof pixels},
                                    {(const uint8_t *)v1c, sizeof v1c - 1}};
                roid_ingest_parts(in, ip1, 4);
                good_frames += frames_seen == frames0 + (uint64_t)f + 1 && last_sum == good_sum;
        }
        tap_eq_u64(good_frames, 3, "its 3 V1 images are processed with the right pixels");
        free(app);

        /* V2: an image without a channel is malformed and does not use up
         * its image_id. */
        wbuf *x = calloc(1, sizeof *x);
        roid_part xp;
        uint64_t mal = roid_counter_get(&ctr, ROID_C_messages_malformed), fr0 = frames_seen;
        uint64_t dups = roid_counter_get(&ctr, ROID_C_images_duplicate);
        roid_ingest_parts(in, &sp, 1); /* a fresh series 5 */
        log_since_last();
        build_image_ud(x, 0, 0, 0);
        xp = (roid_part){x->b, x->n};
        roid_ingest_parts(in, &xp, 1);
        const char *log = log_since_last();
        tap_eq_u64(roid_counter_get(&ctr, ROID_C_messages_malformed) - mal, 1,
                   "V2 image 0 with an empty data map: counted in messages_malformed");
        tap_ok(strstr(log, "data: empty map") != NULL, "... logged naming data: %.*s", (int)strcspn(log, "\n"), log);
        build_image_ud(x, 0, 1, 0);
        xp = (roid_part){x->b, x->n};
        roid_ingest_parts(in, &xp, 1);
        tap_ok(frames_seen == fr0 + 1 && last_sum == good_sum &&
                       roid_counter_get(&ctr, ROID_C_images_duplicate) == dups,
               "... and the good image 0 after it is processed, not a duplicate");

        /* V2 user_data nested beyond max_depth is left out, the image stands;
         * beyond the walker's own cap the message is refused, naming it. */
        uint64_t ign = roid_counter_get(&ctr, ROID_C_user_data_ignored);
        mal = roid_counter_get(&ctr, ROID_C_messages_malformed);
        build_image_ud(x, 1, 1, 40);
        xp = (roid_part){x->b, x->n};
        roid_ingest_parts(in, &xp, 1);
        log = log_since_last();
        tap_ok(frames_seen == fr0 + 2 && last_sum == good_sum, "V2 image with user_data nested 40 deep: processed");
        tap_ok(roid_counter_get(&ctr, ROID_C_user_data_ignored) - ign == 1 &&
                       roid_counter_get(&ctr, ROID_C_messages_malformed) == mal,
               "... its user_data counted in user_data_ignored, the message not malformed");
        tap_ok(strstr(log, "user_data") && strstr(log, "max_depth 32") && strstr(log, "position it carried is lost"),
               "... logged naming user_data, the limit and the scan position: %.*s", (int)strcspn(log, "\n"), log);
        build_image_ud(x, 2, 1, ROID_CW_DEPTH_CAP + 10);
        xp = (roid_part){x->b, x->n};
        roid_ingest_parts(in, &xp, 1);
        log = log_since_last();
        tap_ok(roid_counter_get(&ctr, ROID_C_messages_malformed) - mal == 1 && frames_seen == fr0 + 2 &&
                       strstr(log, "user_data"),
               "V2 user_data nested %d deep: refused, naming user_data: %.*s", ROID_CW_DEPTH_CAP + 10,
               (int)strcspn(log, "\n"), log);
        build_image_ud(x, 2, 1, 0);
        xp = (roid_part){x->b, x->n};
        roid_ingest_parts(in, &xp, 1);
        tap_ok(frames_seen == fr0 + 3, "... and the good image 2 after it is processed");

        /* V2 start: a flaw in a field roid does not use (flatfield) costs that
         * field, not the series; one in a field it uses (pixel_mask) still
         * refuses the start. */
        struct {
                const char *name, *key;
                uint64_t tag, rows, cols;
                bool starts;
        } st[] = {
                {"flatfield of typed-array tag 70 (uint32)", "flatfield", 70, ROWS, COLS, true},
                {"flatfield of unsupported typed-array tag 72", "flatfield", 72, ROWS, COLS, true},
                {"flatfield of another shape", "flatfield", 85, COLS, ROWS, true},
                {"pixel_mask of another shape", "pixel_mask", 70, COLS, ROWS, false},
                {"pixel_mask of typed-array tag 85 (float32)", "pixel_mask", 85, ROWS, COLS, false},
        };
        for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
                build_start_map(x, st[i].key, st[i].tag, st[i].rows, st[i].cols);
                uint64_t starts = series_starts;
                xp = (roid_part){x->b, x->n};
                roid_ingest_parts(in, &xp, 1);
                log = log_since_last();
                tap_ok((series_starts == starts + 1) == st[i].starts && strstr(log, st[i].key),
                       "V2 start with a %s: %s, logged naming %s: %.*s", st[i].name,
                       st[i].starts ? "the series starts" : "refused", st[i].key, (int)strcspn(log, "\n"), log);
                if (!st[i].starts)
                        roid_ingest_parts(in, &sp, 1);
                tap_ok(feed_good(in), "... and the next good frame is processed");
        }
        free(x);

        roid_ingest_free(in);
        free(start);
        for (int i = 0; i < NB; i++)
                free(wb[i]);
        return tap_done();
}
