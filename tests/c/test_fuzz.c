/* Mutation fuzzing of the ingest path (parse, series lifecycle, decode),
 * deterministic so that a failure reproduces.  Stream V2: the seeds are real
 * detector messages (testdata stream2) and small generated ones (start,
 * images in every compression, end); each round mutates one of them (bit
 * flips, boundary bytes, CBOR length heads, truncation, chunk removal and
 * duplication, splices of two messages) and feeds it whole.  Stream V1
 * (multipart JSON + binary; generated header, images raw, lz4 and
 * bitshuffle-lz4, end): one part mutated alike, or a part dropped or
 * repeated.  Checked for
 * every message: it is accounted for (a sink callback or a counter moved:
 * nothing is lost silently); over the run: no crash or bad memory access (the
 * sanitizer build), a bounded heap, and afterwards a good series is still
 * decoded exactly.
 *
 * ROID_FUZZ_ROUNDS overrides the number of rounds, ROID_FUZZ_SEED the seed. */
#include <cbor.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/codec.h"
#include "ingest/ingest.h"
#include "fuzz.h"
#include "tap.h"

enum { ROWS = 24, COLS = 40, NPIX = ROWS * COLS, MSG_MAX = 1 << 21 };

/* ---- generated messages ---- */

typedef fuzz_msg msg;

/* Stream V1: multipart JSON + binary (the header with header_detail none,
 * images in four parts, the end). */
enum { V1_PARTS_MAX = 4, V1_CAP = 1 << 16 };
typedef struct {
        int np;
        msg p[V1_PARTS_MAX];
} v1msg;

static void v1_part(v1msg *v, const void *p, size_t n) {
        memcpy(v->p[v->np].b, p, n);
        v->p[v->np++].n = n;
}

static void v1_text(v1msg *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void v1_text(v1msg *v, const char *fmt, ...) {
        char t[256];
        va_list ap;
        va_start(ap, fmt);
        const int n = vsnprintf(t, sizeof t, fmt, ap);
        va_end(ap);
        v1_part(v, t, (size_t)n);
}

static void build_v1_header(v1msg *v, uint64_t series) {
        v->np = 0;
        v1_text(v, "{\"header_detail\":\"none\",\"htype\":\"dheader-1.0\",\"series\":%" PRIu64 "}", series);
}

static void build_v1_image(v1msg *v, uint64_t series, uint64_t frame, const char *enc, const void *data, size_t n) {
        char t[256];
        v->np = 0;
        v1_text(v, "{\"frame\":%" PRIu64 ",\"hash\":\"\",\"htype\":\"dimage-1.0\",\"series\":%" PRIu64 "}", frame,
                series);
        snprintf(t, sizeof t,
                 "{\"encoding\":\"%s\",\"htype\":\"dimage_d-1.0\",\"shape\":[%d,%d],\"size\":%zu,\"type\":\"uint16\"}",
                 enc, COLS, ROWS, n);
        v1_part(v, t, strlen(t));
        v1_part(v, data, n);
        static const char config[] = "{\"htype\":\"dconfig-1.0\",\"real_time\":1,\"start_time\":0,\"stop_time\":1}";
        v1_part(v, config, sizeof config - 1);
}

static void build_v1_end(v1msg *v, uint64_t series) {
        v->np = 0;
        v1_text(v, "{\"htype\":\"dseries_end-1.0\",\"series\":%" PRIu64 "}", series);
}

static int feed_v1(roid_ingest *in, const v1msg *v) {
        roid_part parts[V1_PARTS_MAX];
        for (int i = 0; i < v->np; i++)
                parts[i] = (roid_part){v->p[i].b, v->p[i].n};
        return roid_ingest_parts(in, parts, (size_t)v->np);
}

/* ---- the ingest under test ---- */

static roid_counters ctr;
static uint64_t events, frames_seen, last_sum;

static void on_start(void *ctx, const roid_series *s) {
        (void)ctx, (void)s;
        events++;
}
static void on_frame(void *ctx, const roid_frame_event *ev) {
        (void)ctx;
        const uint8_t *p = ev->pixels; /* touch every decoded byte: the sanitizer checks the bounds */
        const size_t n = (size_t)ev->rows * ev->cols * roid_dtype_size(ev->dtype);
        uint64_t s = 0;
        if (ev->dtype == ROID_DT_U16)
                for (size_t i = 0; i < n / 2; i++)
                        s += ((const uint16_t *)p)[i];
        else
                for (size_t i = 0; i < n; i++)
                        s += p[i];
        last_sum = s;
        frames_seen++;
        events++;
}
static void on_frame_error(void *ctx, const roid_series *s, uint64_t id, const char *ch, const char *msg) {
        (void)ctx, (void)s, (void)id, (void)ch, (void)msg;
        events++;
}
static void on_end(void *ctx, const roid_series *s, bool terminated) {
        (void)ctx, (void)s, (void)terminated;
        events++;
}
static void on_message_error(void *ctx, uint64_t index, const char *msg) {
        (void)ctx, (void)index, (void)msg;
        events++;
}

/* Everything that says what became of a message: the sink's callbacks and
 * every counter but the two that count all messages alike. */
static uint64_t accounted(void) {
        uint64_t s = events;
        for (int c = 0; c < ROID_C__MAX; c++)
                if (c != ROID_C_messages_received && c != ROID_C_bytes_received)
                        s += roid_counter_get(&ctr, (roid_counter)c);
        return s;
}

/* ---- mutations ---- */

static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x17, 0x18, 0x19, 0x1a, 0x1b,
                                      0x1f, 0x40, 0x5b, 0x60, 0x7b, 0x80, 0x9b, 0xa0, 0xbb, 0xc0,
                                      0xd8, 0xd9, 0xda, 0xdb, 0xf4, 0xf5, 0xf6, 0xf7, 0xfa, 0xfb};

/* Mutates src into dst (capacity MSG_MAX); other: a second message to splice. */
static size_t mutate(uint8_t *dst, const msg *src, const msg *other) {
        memcpy(dst, src->b, src->n);
        return fuzz_mutate(dst, src->n, MSG_MAX, other->b, other->n, interesting, sizeof interesting,
                           1 + (unsigned)fuzz_rnd_below(4));
}

int main(void) {
        const char *e = getenv("ROID_FUZZ_SEED");
        fuzz_seed(e ? strtoull(e, NULL, 0) : 0x9e3779b97f4a7c15ULL);
        e = getenv("ROID_FUZZ_ROUNDS");
        const unsigned rounds = e ? (unsigned)strtoul(e, NULL, 0) : 50000;

        /* the frame, in every compression */
        static uint16_t pixels[NPIX];
        uint64_t good_sum = 0;
        for (int i = 0; i < NPIX; i++) {
                pixels[i] = (uint16_t)((i * 7919u) % 300 + (i % COLS == 20 ? 60000 : 0));
                good_sum += pixels[i];
        }
        static uint8_t bs[1 << 16], lz[1 << 16];
        size_t bs_n, lz_n;
        if (roid_bslz4_encode(pixels, sizeof pixels, 2, 0, bs, sizeof bs, &bs_n) < 0 ||
            roid_lz4h5_encode(pixels, sizeof pixels, 0, lz, sizeof lz, &lz_n) < 0) {
                tap_ok(false, "the encoders work");
                return tap_done();
        }

        /* the seeds: generated, then the real messages of testdata/stream2 */
        enum { NSEED = 10 };
        msg seed[NSEED];
        for (int i = 0; i < NSEED; i++)
                seed[i] = (msg){.b = malloc(MSG_MAX), .cap = MSG_MAX};
        fuzz_v2_start(&seed[0], 7, ROWS, COLS, 1000000);
        fuzz_v2_image(&seed[1], 7, 1, ROWS, COLS, "bslz4", bs, bs_n);
        fuzz_v2_image(&seed[2], 7, 2, ROWS, COLS, "lz4", lz, lz_n);
        fuzz_v2_image(&seed[3], 7, 3, ROWS, COLS, NULL, (const uint8_t *)pixels, sizeof pixels);
        fuzz_v2_end(&seed[4], 7);
        fuzz_v2_start(&seed[5], 8, ROWS, COLS, 1000000);
        int n_seed = 6;
        const char *real[] = {"stream2/r500k_bslz4_16bit_000001.cbor", "stream2/r500k_bslz4_16bit_000002.cbor",
                              "stream2/r500k_bslz4_16bit_000003.cbor", "stream2/r500k_bslz4_16bit_000011.cbor"};
        int n_real = 0;
        for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
                size_t n;
                uint8_t *b = tap_slurp(tap_data(real[i]), &n);
                if (b && n <= MSG_MAX) {
                        memcpy(seed[n_seed].b, b, n);
                        seed[n_seed++].n = n;
                        n_real++;
                }
                free(b);
        }
        tap_ok(n_real == 4, "the 4 real stream2 messages are seeds (%d read)", n_real);

        /* V1 seeds: header, the image raw, lz4 and bitshuffle-lz4, end */
        static uint8_t lzr[1 << 16];
        size_t lzr_n;
        if (roid_lz4raw_encode(pixels, sizeof pixels, lzr, sizeof lzr, &lzr_n) < 0) {
                tap_ok(false, "the lz4 block encoder works");
                return tap_done();
        }
        enum { NV1 = 5 };
        v1msg v1[NV1];
        for (int i = 0; i < NV1; i++)
                for (int k = 0; k < V1_PARTS_MAX; k++)
                        v1[i].p[k] = (msg){.b = malloc(V1_CAP), .cap = V1_CAP};
        build_v1_header(&v1[0], 9);
        build_v1_image(&v1[1], 9, 1, "<", pixels, sizeof pixels);
        build_v1_image(&v1[2], 9, 2, "lz4<", lzr, lzr_n);
        build_v1_image(&v1[3], 9, 3, "bs16-lz4<", bs, bs_n);
        build_v1_end(&v1[4], 9);

        freopen("/dev/null", "w", stderr); /* a log line per bad message: thousands */
        roid_sink sink = {.series_start = on_start,
                          .frame = on_frame,
                          .frame_error = on_frame_error,
                          .series_end = on_end,
                          .message_error = on_message_error};
        roid_ingest_params ip = {.channel = "", .implicit_series = true};
        roid_limits_default(&ip.limits);
        /* Limits that the real 1028 x 512 frames pass: what a message may make
         * the ingest allocate (decode buffers, the per-series image tracking) is
         * bounded by them, and so is the heap check below. */
        ip.limits.max_pixels = 1u << 20;
        ip.limits.max_frame_bytes = 4u << 20;
        ip.limits.max_images = 1u << 20;
        roid_ingest *in;
        if (roid_ingest_new(&ip, &sink, &ctr, &in) < 0) {
                tap_ok(false, "ingest created");
                return tap_done();
        }

        /* Warm up with every seed once (buffers sized for both shapes), then
         * the heap may not grow beyond a few frames' worth. */
        for (int i = 0; i < n_seed; i++)
                roid_ingest_parts(in, &(roid_part){seed[i].b, seed[i].n}, 1);
        for (int i = 0; i < NV1; i++)
                feed_v1(in, &v1[i]);
        const size_t heap0 = tap_heap_in_use();
        size_t heap_max = heap0;

        uint8_t *buf = malloc(MSG_MAX);
        unsigned silent = 0, first_silent = 0;
        uint64_t next_good = 100;
        for (unsigned r = 0; r < rounds; r++) {
                /* the small seeds far more often: they are cheap and reach the same code */
                const uint64_t before = accounted();
                if (fuzz_rnd_below(4)) { /* V2 */
                        const int si =
                                fuzz_rnd_below(8) ? (int)fuzz_rnd_below(6) : 6 + (int)fuzz_rnd_below((size_t)n_real);
                        const size_t n = mutate(buf, &seed[si], &seed[fuzz_rnd_below((size_t)n_seed)]);
                        roid_ingest_parts(in, &(roid_part){buf, n}, 1);
                } else { /* V1: one part mutated, or a part dropped or repeated */
                        const v1msg *v = &v1[fuzz_rnd_below(NV1)];
                        roid_part parts[V1_PARTS_MAX + 1];
                        const int target = (int)fuzz_rnd_below((size_t)v->np);
                        for (int i = 0; i < v->np; i++)
                                parts[i] = (roid_part){v->p[i].b, v->p[i].n};
                        int np = v->np;
                        switch (fuzz_rnd_below(8)) {
                        case 0: /* drop */
                                memmove(parts + target, parts + target + 1, (size_t)(np - target - 1) * sizeof *parts);
                                np--;
                                break;
                        case 1: /* repeat */
                                parts[np++] = parts[target];
                                break;
                        default: {
                                const v1msg *o = &v1[fuzz_rnd_below(NV1)];
                                parts[target] = (roid_part){
                                        buf, mutate(buf, &v->p[target], &o->p[fuzz_rnd_below((size_t)o->np)])};
                                break;
                        }
                        }
                        roid_ingest_parts(in, parts, (size_t)np);
                }
                if (accounted() == before && !silent++)
                        first_silent = r;
                if (r % 64 == 0) { /* keep a series open now and then, so that images get decoded */
                        if (r % 128 == 0)
                                roid_ingest_parts(in, &(roid_part){seed[0].b, seed[0].n}, 1);
                        else
                                feed_v1(in, &v1[0]);
                        fuzz_v2_image(&seed[1], 7, next_good++, ROWS, COLS, "bslz4", bs, bs_n);
                }
                const size_t h = tap_heap_in_use();
                if (h > heap_max)
                        heap_max = h;
        }
        tap_ok(silent == 0, "every one of %u mutated messages is accounted for (%u silent, first in round %u)", rounds,
               silent, first_silent);
        const size_t bound = 2 * ip.limits.max_frame_bytes + ip.limits.max_images / 8 + (2u << 20);
        tap_ok(heap_max <= heap0 + bound, "the heap stays bounded by the limits (grew by %zu bytes at most, bound %zu)",
               heap_max - heap0, bound);

        /* A good series afterwards is decoded exactly, in every compression. */
        roid_ingest_parts(in, &(roid_part){seed[4].b, seed[4].n}, 1);
        msg m = {.b = buf, .cap = MSG_MAX};
        fuzz_v2_start(&m, 8, ROWS, COLS, 1000000);
        roid_ingest_parts(in, &(roid_part){m.b, m.n}, 1);
        const char *algos[] = {"bslz4", "lz4", NULL};
        const uint8_t *payloads[] = {bs, lz, (const uint8_t *)pixels};
        const size_t lens[] = {bs_n, lz_n, sizeof pixels};
        for (int i = 0; i < 3; i++) {
                const uint64_t f0 = frames_seen;
                fuzz_v2_image(&m, 8, 900000 + (uint64_t)i, ROWS, COLS, algos[i], payloads[i], lens[i]);
                roid_ingest_parts(in, &(roid_part){m.b, m.n}, 1);
                tap_ok(frames_seen == f0 + 1 && last_sum == good_sum,
                       "after the fuzzing a good %s frame decodes exactly", algos[i] ? algos[i] : "raw");
        }
        /* and in Stream V1 */
        feed_v1(in, &v1[0]);
        const char *encs[] = {"<", "lz4<", "bs16-lz4<"};
        const void *datas[] = {pixels, lzr, bs};
        const size_t dlens[] = {sizeof pixels, lzr_n, bs_n};
        for (int i = 0; i < 3; i++) {
                const uint64_t f0 = frames_seen;
                build_v1_image(&v1[1], 9, 900000 + (uint64_t)i, encs[i], datas[i], dlens[i]);
                feed_v1(in, &v1[1]);
                tap_ok(frames_seen == f0 + 1 && last_sum == good_sum,
                       "after the fuzzing a good V1 %s frame decodes exactly", encs[i]);
        }
        tap_diag("%u rounds: %" PRIu64 " frames decoded, %" PRIu64 " failed, %" PRIu64 " malformed, %" PRIu64
                 " bad size, %" PRIu64 " unknown",
                 rounds, roid_counter_get(&ctr, ROID_C_frames_decoded), roid_counter_get(&ctr, ROID_C_frames_failed),
                 roid_counter_get(&ctr, ROID_C_messages_malformed), roid_counter_get(&ctr, ROID_C_messages_bad_size),
                 roid_counter_get(&ctr, ROID_C_messages_unknown));
        roid_ingest_free(in);
        free(buf);
        for (int i = 0; i < NSEED; i++)
                free(seed[i].b);
        for (int i = 0; i < NV1; i++)
                for (int k = 0; k < V1_PARTS_MAX; k++)
                        free(v1[i].p[k].b);
        return tap_done();
}
