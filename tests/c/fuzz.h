/* fuzz.h - what the mutation fuzz tests share: a seeded generator
 * (xorshift64*), so that a failure reproduces from its seed, and the generic
 * byte mutations.  One process, one thread. */
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

#endif
