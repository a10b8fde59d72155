#include "fuzz.h"

#include <string.h>

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
