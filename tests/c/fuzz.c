#include "fuzz.h"

#include <stdio.h>
#include <string.h>

#include <cbor.h>

static uint64_t rng = 1;

void fuzz_seed(uint64_t seed) {
        rng = seed | 1;
}

uint64_t fuzz_rnd(void) {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        return rng * 0x2545F4914F6CDD1DULL;
}

size_t fuzz_rnd_below(size_t n) {
        return n ? (size_t)(fuzz_rnd() % n) : 0;
}

size_t fuzz_mutate(uint8_t *b, size_t n, size_t cap, const uint8_t *other, size_t on, const uint8_t *magic,
                   size_t n_magic, unsigned k) {
        for (unsigned i = 0; i < k && n; i++) {
                const size_t at = fuzz_rnd_below(fuzz_rnd_below(2) && n > 256 ? 256 : n);
                switch (fuzz_rnd_below(7)) {
                case 0: /* flip bits */
                        b[at] ^= (uint8_t)(1u << fuzz_rnd_below(8));
                        break;
                case 1: /* a boundary byte */
                        b[at] = magic[fuzz_rnd_below(n_magic)];
                        break;
                case 2: /* a large length after a head byte */
                        for (size_t j = at + 1; j < n && j < at + 9; j++)
                                b[j] = fuzz_rnd_below(2) ? 0xff : (uint8_t)fuzz_rnd();
                        break;
                case 3: /* truncate */
                        n = at;
                        break;
                case 4: { /* remove a chunk */
                        const size_t len = 1 + fuzz_rnd_below(n - at < 64 ? n - at : 64);
                        memmove(b + at, b + at + len, n - at - len);
                        n -= len;
                        break;
                }
                case 5: { /* duplicate a chunk */
                        const size_t len = 1 + fuzz_rnd_below(n - at < 64 ? n - at : 64);
                        if (n + len <= cap) {
                                memmove(b + at + len, b + at, n - at);
                                n += len;
                        }
                        break;
                }
                default: /* splice: the head of this one, the tail of the other */
                        if (on) {
                                const size_t from = fuzz_rnd_below(on), len = on - from;
                                if (at + len <= cap) {
                                        memcpy(b + at, other + from, len);
                                        n = at + len;
                                }
                        }
                        break;
                }
        }
        return n;
}

/* ---- Stream V2 seeds ---- */

#define W(fn, ...) (m->n += fn(__VA_ARGS__, m->b + m->n, m->cap - m->n))

static void text(fuzz_msg *m, const char *s) {
        const size_t n = strlen(s);
        W(cbor_encode_string_start, n);
        if (n <= m->cap - m->n) {
                memcpy(m->b + m->n, s, n);
                m->n += n;
        }
}

static void head(fuzz_msg *m, const char *type, uint64_t series, size_t extra) {
        char uid[32];
        snprintf(uid, sizeof uid, "S%llu", (unsigned long long)series);
        m->n = 0;
        W(cbor_encode_tag, 55799);
        W(cbor_encode_map_start, 3 + extra);
        text(m, "type");
        text(m, type);
        text(m, "series_id");
        W(cbor_encode_uint, series);
        text(m, "series_unique_id");
        text(m, uid);
}

void fuzz_v2_start(fuzz_msg *m, uint64_t series, uint32_t rows, uint32_t cols, uint64_t images) {
        head(m, "start", series, 5);
        text(m, "image_size_x");
        W(cbor_encode_uint, cols);
        text(m, "image_size_y");
        W(cbor_encode_uint, rows);
        text(m, "image_dtype");
        text(m, "uint16");
        text(m, "number_of_images");
        W(cbor_encode_uint, images);
        text(m, "channels");
        W(cbor_encode_array_start, 1);
        text(m, "threshold_1");
}

void fuzz_v2_image(fuzz_msg *m, uint64_t series, uint64_t id, uint32_t rows, uint32_t cols, const char *algo,
                   const void *payload, size_t len) {
        head(m, "image", series, 2);
        text(m, "image_id");
        W(cbor_encode_uint, id);
        text(m, "data");
        W(cbor_encode_map_start, 1);
        text(m, "threshold_1");
        W(cbor_encode_tag, 40);
        W(cbor_encode_array_start, 2);
        W(cbor_encode_array_start, 2);
        W(cbor_encode_uint, rows);
        W(cbor_encode_uint, cols);
        W(cbor_encode_tag, 69);
        if (algo) {
                W(cbor_encode_tag, 56500);
                W(cbor_encode_array_start, 3);
                text(m, algo);
                W(cbor_encode_uint, 2);
        }
        W(cbor_encode_bytestring_start, len);
        if (len <= m->cap - m->n) {
                memcpy(m->b + m->n, payload, len);
                m->n += len;
        }
}

void fuzz_v2_end(fuzz_msg *m, uint64_t series) {
        head(m, "end", series, 0);
}
