/* fuzz.h - what the mutation fuzz tests share: a seeded generator
 * (xorshift64*), so that a failure reproduces from its seed, the generic
 * byte mutations, and the Stream V2 messages they start from.  One process,
 * one thread. */
#ifndef ROID_TESTS_FUZZ_H
#define ROID_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Starts the generator at seed (made odd). */
void fuzz_seed(uint64_t seed);
uint64_t fuzz_rnd(void);
/* Uniform below n; 0 for n = 0 (without drawing). */
size_t fuzz_rnd_below(size_t n);

/* k mutations of the n bytes in b (capacity cap): bit flips, a boundary byte
 * from magic, a large length after a head byte, truncation, removal or
 * duplication of a chunk, a splice with the tail of other (on bytes; none
 * when on is 0).  Half of them fall in the first 256 bytes, where the
 * structure is.  Returns the new length. */
size_t fuzz_mutate(uint8_t *b, size_t n, size_t cap, const uint8_t *other, size_t on, const uint8_t *magic,
                   size_t n_magic, unsigned k);

/* A message being written: n of the cap bytes at b. */
typedef struct {
        uint8_t *b;
        size_t n, cap;
} fuzz_msg;

/* Stream V2 messages of series `series` (series_unique_id "S<series>") with
 * one channel, threshold_1, of rows x cols uint16 frames, each written over
 * m: the start, announcing `images` images; image `id`, whose typed array
 * is payload, compressed with algo ("bslz4" or "lz4", element size 2) or raw
 * (NULL); the end. */
void fuzz_v2_start(fuzz_msg *m, uint64_t series, uint32_t rows, uint32_t cols, uint64_t images);
void fuzz_v2_image(fuzz_msg *m, uint64_t series, uint64_t id, uint32_t rows, uint32_t cols, const char *algo,
                   const void *payload, size_t len);
void fuzz_v2_end(fuzz_msg *m, uint64_t series);

#endif
