/* codec.c - bitshuffle-LZ4 and LZ4 decoders/encoders (see codec.h).
 *
 * Bit transpose layout (eiger-stream.md §3.1): a block of m elements of s
 * bytes is 8*s bit-rows of m/8 bytes; row 8*j+k holds bit k of byte j of every
 * element, bit q of row byte b belonging to element 8*b+q.  Gathering the
 * bytes b of the 8 rows of one byte j into a 64-bit word and transposing it as
 * an 8x8 bit matrix yields byte j of elements 8*b..8*b+7, which is what the
 * SWAR, SSE2 and AVX2 paths do; the bitwise version is the test oracle.
 */
#include "ingest/codec.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lz4.h>
#include <zstd.h>
#include <pthread.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define LZ4H5_DEFAULT_BLOCK 8192

/* One block's shuffled bytes, per thread, so decoders never allocate. */
/* One block's bytes between LZ4 and the transpose.  Per thread, allocated on
 * the first use at the largest block size seen (at most ROID_BSLZ4_MAX_BLOCK),
 * so threads that never decode pay nothing and steady state allocates
 * nothing; freed when the thread exits. */
static _Thread_local uint8_t *scratch_buf;
static _Thread_local size_t scratch_cap;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_init(void) {
        pthread_key_create(&scratch_key, free);
}

static uint8_t *scratch(size_t need) {
        if (need <= scratch_cap)
                return scratch_buf;
        pthread_once(&scratch_once, scratch_key_init);
        void *p = NULL;
        if (posix_memalign(&p, 64, need) != 0)
                return NULL;
        free(scratch_buf);
        scratch_buf = p;
        scratch_cap = need;
        pthread_setspecific(scratch_key, p);
        return scratch_buf;
}

static uint64_t get_be64(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}

static uint32_t get_be32(const uint8_t *p) {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be64(uint8_t *p, uint64_t v) {
        for (int i = 7; i >= 0; i--, v >>= 8)
                p[i] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v) {
        for (int i = 3; i >= 0; i--, v >>= 8)
                p[i] = (uint8_t)v;
}

/* ---- bit transpose: oracle ------------------------------------------------ */

static void unshuffle_bitwise(const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        size_t rowlen = n / 8;
        memset(out, 0, n * s);
        for (size_t j = 0; j < s; j++)
                for (size_t k = 0; k < 8; k++) {
                        const uint8_t *row = in + (8 * j + k) * rowlen;
                        for (size_t i = 0; i < n; i++)
                                out[i * s + j] |= (uint8_t)(((row[i / 8] >> (i % 8)) & 1u) << k);
                }
}

static void shuffle_bitwise(const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        size_t rowlen = n / 8;
        memset(out, 0, n * s);
        for (size_t j = 0; j < s; j++)
                for (size_t k = 0; k < 8; k++) {
                        uint8_t *row = out + (8 * j + k) * rowlen;
                        for (size_t i = 0; i < n; i++)
                                row[i / 8] |= (uint8_t)(((in[i * s + j] >> k) & 1u) << (i % 8));
                }
}

/* ---- bit transpose: portable 8x8 bit matrices in 64-bit words ------------- */

/* Transposes the 8x8 bit matrix whose row r is byte r: bit 8r+c <-> bit 8c+r.
 * Its own inverse, so it serves both directions. */
static inline uint64_t transpose8x8(uint64_t x) {
        uint64_t t;
        t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
        x ^= t ^ (t << 7);
        t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
        x ^= t ^ (t << 14);
        t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
        x ^= t ^ (t << 28);
        return x;
}

/* Groups g0.. (of 8 elements) of the block; the SIMD paths use it for tails. */
static void unshuffle_swar(const uint8_t *in, uint8_t *out, size_t n, size_t s, size_t g0) {
        size_t rowlen = n / 8;
        for (size_t j = 0; j < s; j++) {
                const uint8_t *rows = in + 8 * j * rowlen;
                for (size_t b = g0; b < rowlen; b++) {
                        uint64_t w = 0;
                        for (size_t k = 0; k < 8; k++)
                                w |= (uint64_t)rows[k * rowlen + b] << (8 * k);
                        w = transpose8x8(w);
                        uint8_t *o = out + 8 * b * s + j;
                        for (size_t q = 0; q < 8; q++, w >>= 8)
                                o[q * s] = (uint8_t)w;
                }
        }
}

static void shuffle_swar(const uint8_t *in, uint8_t *out, size_t n, size_t s, size_t g0) {
        size_t rowlen = n / 8;
        for (size_t j = 0; j < s; j++) {
                uint8_t *rows = out + 8 * j * rowlen;
                for (size_t b = g0; b < rowlen; b++) {
                        const uint8_t *p = in + 8 * b * s + j;
                        uint64_t w = 0;
                        for (size_t q = 0; q < 8; q++)
                                w |= (uint64_t)p[q * s] << (8 * q);
                        w = transpose8x8(w);
                        for (size_t k = 0; k < 8; k++, w >>= 8)
                                rows[k * rowlen + b] = (uint8_t)w;
                }
        }
}

/* ---- bit transpose: SSE2 / AVX2 --------------------------------------------
 * Unshuffle: per byte j, 16 (32) bytes of each of its 8 rows are byte-
 * transposed with unpacks into 64-bit words (one per group of 8 elements),
 * bit-transposed, and written as byte plane j of 128 (256) elements; the
 * planes are then interleaved into elements.
 * Shuffle: byte planes are gathered first, then _mm_movemask_epi8 collects
 * one bit of 16 (32) consecutive elements into 2 (4) bytes of a row. */

#if HAVE_X86

#define CHUNK_SSE2 128
#define CHUNK_AVX2 256

/* Interleaves s byte planes (stride pstride) of cnt elements into out. */
static void interleave_planes(const uint8_t *planes, size_t pstride, size_t s, size_t cnt, uint8_t *out) {
        if (s == 2) {
                for (size_t e = 0; e < cnt; e += 16) {
                        __m128i a = _mm_load_si128((const __m128i *)(planes + e));
                        __m128i b = _mm_load_si128((const __m128i *)(planes + pstride + e));
                        _mm_storeu_si128((__m128i *)(out + 2 * e), _mm_unpacklo_epi8(a, b));
                        _mm_storeu_si128((__m128i *)(out + 2 * e + 16), _mm_unpackhi_epi8(a, b));
                }
        } else if (s == 4) {
                for (size_t e = 0; e < cnt; e += 16) {
                        __m128i a0 = _mm_load_si128((const __m128i *)(planes + e));
                        __m128i a1 = _mm_load_si128((const __m128i *)(planes + pstride + e));
                        __m128i a2 = _mm_load_si128((const __m128i *)(planes + 2 * pstride + e));
                        __m128i a3 = _mm_load_si128((const __m128i *)(planes + 3 * pstride + e));
                        __m128i t0 = _mm_unpacklo_epi8(a0, a1), t1 = _mm_unpackhi_epi8(a0, a1);
                        __m128i t2 = _mm_unpacklo_epi8(a2, a3), t3 = _mm_unpackhi_epi8(a2, a3);
                        uint8_t *o = out + 4 * e;
                        _mm_storeu_si128((__m128i *)o, _mm_unpacklo_epi16(t0, t2));
                        _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi16(t0, t2));
                        _mm_storeu_si128((__m128i *)(o + 32), _mm_unpacklo_epi16(t1, t3));
                        _mm_storeu_si128((__m128i *)(o + 48), _mm_unpackhi_epi16(t1, t3));
                }
        } else if (s == 8) {
                for (size_t e = 0; e < cnt; e += 16) {
                        __m128i a[8];
                        for (size_t j = 0; j < 8; j++)
                                a[j] = _mm_load_si128((const __m128i *)(planes + j * pstride + e));
                        __m128i t01l = _mm_unpacklo_epi8(a[0], a[1]), t01h = _mm_unpackhi_epi8(a[0], a[1]);
                        __m128i t23l = _mm_unpacklo_epi8(a[2], a[3]), t23h = _mm_unpackhi_epi8(a[2], a[3]);
                        __m128i t45l = _mm_unpacklo_epi8(a[4], a[5]), t45h = _mm_unpackhi_epi8(a[4], a[5]);
                        __m128i t67l = _mm_unpacklo_epi8(a[6], a[7]), t67h = _mm_unpackhi_epi8(a[6], a[7]);
                        __m128i u0 = _mm_unpacklo_epi16(t01l, t23l), u1 = _mm_unpackhi_epi16(t01l, t23l);
                        __m128i u2 = _mm_unpacklo_epi16(t01h, t23h), u3 = _mm_unpackhi_epi16(t01h, t23h);
                        __m128i v0 = _mm_unpacklo_epi16(t45l, t67l), v1 = _mm_unpackhi_epi16(t45l, t67l);
                        __m128i v2 = _mm_unpacklo_epi16(t45h, t67h), v3 = _mm_unpackhi_epi16(t45h, t67h);
                        __m128i *o = (__m128i *)(out + 8 * e);
                        _mm_storeu_si128(o + 0, _mm_unpacklo_epi32(u0, v0));
                        _mm_storeu_si128(o + 1, _mm_unpackhi_epi32(u0, v0));
                        _mm_storeu_si128(o + 2, _mm_unpacklo_epi32(u1, v1));
                        _mm_storeu_si128(o + 3, _mm_unpackhi_epi32(u1, v1));
                        _mm_storeu_si128(o + 4, _mm_unpacklo_epi32(u2, v2));
                        _mm_storeu_si128(o + 5, _mm_unpackhi_epi32(u2, v2));
                        _mm_storeu_si128(o + 6, _mm_unpacklo_epi32(u3, v3));
                        _mm_storeu_si128(o + 7, _mm_unpackhi_epi32(u3, v3));
                }
        } else {
                for (size_t e = 0; e < cnt; e++)
                        for (size_t j = 0; j < s; j++)
                                out[e * s + j] = planes[j * pstride + e];
        }
}

/* Even and odd bytes of the 32 bytes a:b. */
static inline void split_bytes(__m128i a, __m128i b, __m128i *even, __m128i *odd) {
        const __m128i lo = _mm_set1_epi16(0xff);
        *even = _mm_packus_epi16(_mm_and_si128(a, lo), _mm_and_si128(b, lo));
        *odd = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
}

/* Gathers byte planes of cnt elements from in (the inverse of the above). */
static void gather_planes(const uint8_t *in, size_t s, size_t cnt, uint8_t *planes, size_t pstride) {
        if (s == 2) {
                for (size_t e = 0; e < cnt; e += 16) {
                        __m128i p0, p1;
                        split_bytes(_mm_loadu_si128((const __m128i *)(in + 2 * e)),
                                    _mm_loadu_si128((const __m128i *)(in + 2 * e + 16)), &p0, &p1);
                        _mm_store_si128((__m128i *)(planes + e), p0);
                        _mm_store_si128((__m128i *)(planes + pstride + e), p1);
                }
        } else if (s == 4) {
                for (size_t e = 0; e < cnt; e += 16) {
                        const __m128i *v = (const __m128i *)(in + 4 * e);
                        __m128i e01, o01, e23, o23, p0, p1, p2, p3;
                        split_bytes(_mm_loadu_si128(v), _mm_loadu_si128(v + 1), &e01, &o01);
                        split_bytes(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3), &e23, &o23);
                        split_bytes(e01, e23, &p0, &p2);
                        split_bytes(o01, o23, &p1, &p3);
                        _mm_store_si128((__m128i *)(planes + e), p0);
                        _mm_store_si128((__m128i *)(planes + pstride + e), p1);
                        _mm_store_si128((__m128i *)(planes + 2 * pstride + e), p2);
                        _mm_store_si128((__m128i *)(planes + 3 * pstride + e), p3);
                }
        } else if (s == 8) {
                for (size_t e = 0; e < cnt; e += 16) {
                        const __m128i *v = (const __m128i *)(in + 8 * e);
                        __m128i x[8], y[8], z[8];
                        /* Each level halves the element size: bytes j and j+s/2 part ways. */
                        for (size_t i = 0; i < 4; i++)
                                split_bytes(_mm_loadu_si128(v + 2 * i), _mm_loadu_si128(v + 2 * i + 1), &x[i],
                                            &x[4 + i]);
                        for (size_t h = 0; h < 2; h++)
                                for (size_t i = 0; i < 2; i++)
                                        split_bytes(x[4 * h + 2 * i], x[4 * h + 2 * i + 1], &y[4 * h + i],
                                                    &y[4 * h + 2 + i]);
                        for (size_t q = 0; q < 4; q++)
                                split_bytes(y[2 * q], y[2 * q + 1], &z[q], &z[4 + q]);
                        /* z[] = bytes 0, 2, 1, 3, 4, 6, 5, 7 of the elements. */
                        static const unsigned char plane_of[8] = {0, 2, 1, 3, 4, 6, 5, 7};
                        for (size_t i = 0; i < 8; i++)
                                _mm_store_si128((__m128i *)(planes + plane_of[i] * pstride + e), z[i]);
                }
        } else {
                for (size_t e = 0; e < cnt; e++)
                        for (size_t j = 0; j < s; j++)
                                planes[j * pstride + e] = in[e * s + j];
        }
}

#define SSE2_INLINE __attribute__((always_inline)) static inline

SSE2_INLINE __m128i transpose8x8_sse2(__m128i x, __m128i m1, __m128i m2, __m128i m3) {
        __m128i t;
        t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 7)), m1);
        x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 7)));
        t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 14)), m2);
        x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 14)));
        t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 28)), m3);
        x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 28)));
        return x;
}

/* 8 rows (stride rowlen) x 16 bytes at rows -> byte plane of 128 elements. */
SSE2_INLINE void rows_to_plane_sse2(const uint8_t *rows, size_t rowlen, uint8_t *plane) {
        const __m128i m1 = _mm_set1_epi64x(0x00AA00AA00AA00AAll);
        const __m128i m2 = _mm_set1_epi64x(0x0000CCCC0000CCCCll);
        const __m128i m3 = _mm_set1_epi64x(0x00000000F0F0F0F0ll);
        __m128i r0 = _mm_loadu_si128((const __m128i *)rows);
        __m128i r1 = _mm_loadu_si128((const __m128i *)(rows + rowlen));
        __m128i r2 = _mm_loadu_si128((const __m128i *)(rows + 2 * rowlen));
        __m128i r3 = _mm_loadu_si128((const __m128i *)(rows + 3 * rowlen));
        __m128i r4 = _mm_loadu_si128((const __m128i *)(rows + 4 * rowlen));
        __m128i r5 = _mm_loadu_si128((const __m128i *)(rows + 5 * rowlen));
        __m128i r6 = _mm_loadu_si128((const __m128i *)(rows + 6 * rowlen));
        __m128i r7 = _mm_loadu_si128((const __m128i *)(rows + 7 * rowlen));
        __m128i a0 = _mm_unpacklo_epi8(r0, r1), a1 = _mm_unpackhi_epi8(r0, r1);
        __m128i a2 = _mm_unpacklo_epi8(r2, r3), a3 = _mm_unpackhi_epi8(r2, r3);
        __m128i a4 = _mm_unpacklo_epi8(r4, r5), a5 = _mm_unpackhi_epi8(r4, r5);
        __m128i a6 = _mm_unpacklo_epi8(r6, r7), a7 = _mm_unpackhi_epi8(r6, r7);
        __m128i b0 = _mm_unpacklo_epi16(a0, a2), b1 = _mm_unpackhi_epi16(a0, a2);
        __m128i b2 = _mm_unpacklo_epi16(a1, a3), b3 = _mm_unpackhi_epi16(a1, a3);
        __m128i b4 = _mm_unpacklo_epi16(a4, a6), b5 = _mm_unpackhi_epi16(a4, a6);
        __m128i b6 = _mm_unpacklo_epi16(a5, a7), b7 = _mm_unpackhi_epi16(a5, a7);
        __m128i *o = (__m128i *)plane;
        _mm_storeu_si128(o + 0, transpose8x8_sse2(_mm_unpacklo_epi32(b0, b4), m1, m2, m3));
        _mm_storeu_si128(o + 1, transpose8x8_sse2(_mm_unpackhi_epi32(b0, b4), m1, m2, m3));
        _mm_storeu_si128(o + 2, transpose8x8_sse2(_mm_unpacklo_epi32(b1, b5), m1, m2, m3));
        _mm_storeu_si128(o + 3, transpose8x8_sse2(_mm_unpackhi_epi32(b1, b5), m1, m2, m3));
        _mm_storeu_si128(o + 4, transpose8x8_sse2(_mm_unpacklo_epi32(b2, b6), m1, m2, m3));
        _mm_storeu_si128(o + 5, transpose8x8_sse2(_mm_unpackhi_epi32(b2, b6), m1, m2, m3));
        _mm_storeu_si128(o + 6, transpose8x8_sse2(_mm_unpacklo_epi32(b3, b7), m1, m2, m3));
        _mm_storeu_si128(o + 7, transpose8x8_sse2(_mm_unpackhi_epi32(b3, b7), m1, m2, m3));
}

/* Elements e0.. of the block (e0 a multiple of 8). */
static void unshuffle_sse2(const uint8_t *in, uint8_t *out, size_t n, size_t s, size_t e) {
        size_t rowlen = n / 8;
        _Alignas(16) uint8_t planes[ROID_BSLZ4_MAX_ELEM][CHUNK_SSE2];
        for (; e + CHUNK_SSE2 <= n; e += CHUNK_SSE2) {
                if (s == 1) {
                        rows_to_plane_sse2(in + e / 8, rowlen, out + e);
                        continue;
                }
                for (size_t j = 0; j < s; j++)
                        rows_to_plane_sse2(in + 8 * j * rowlen + e / 8, rowlen, planes[j]);
                interleave_planes(planes[0], CHUNK_SSE2, s, CHUNK_SSE2, out + e * s);
        }
        if (e < n)
                unshuffle_swar(in, out, n, s, e / 8);
}

static void shuffle_sse2(const uint8_t *in, uint8_t *out, size_t n, size_t s, size_t e) {
        size_t rowlen = n / 8;
        _Alignas(16) uint8_t planes[ROID_BSLZ4_MAX_ELEM][CHUNK_SSE2];
        for (; e + CHUNK_SSE2 <= n; e += CHUNK_SSE2) {
                const uint8_t *pl = in + e;
                size_t pstride = 0;
                if (s > 1) {
                        gather_planes(in + e * s, s, CHUNK_SSE2, planes[0], CHUNK_SSE2);
                        pl = planes[0];
                        pstride = CHUNK_SSE2;
                }
                for (size_t j = 0; j < s; j++) {
                        uint8_t *rows = out + 8 * j * rowlen + e / 8;
                        for (size_t x = 0; x < CHUNK_SSE2; x += 16) {
                                __m128i v = _mm_loadu_si128((const __m128i *)(pl + j * pstride + x));
                                for (int k = 7; k >= 0; k--) {
                                        uint16_t m = (uint16_t)_mm_movemask_epi8(v);
                                        memcpy(rows + (size_t)k * rowlen + x / 8, &m, 2);
                                        v = _mm_add_epi8(v, v);
                                }
                        }
                }
        }
        if (e < n)
                shuffle_swar(in, out, n, s, e / 8);
}

#define AVX2_INLINE __attribute__((target("avx2"), always_inline)) static inline

AVX2_INLINE __m256i transpose8x8_avx2(__m256i x, __m256i m1, __m256i m2, __m256i m3) {
        __m256i t;
        t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 7)), m1);
        x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 7)));
        t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 14)), m2);
        x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 14)));
        t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 28)), m3);
        x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 28)));
        return x;
}

/* The byte transpose of 32 bytes of 8 rows (256 elements) into 64-bit words,
 * one per group of 8 elements, byte k of a word from row r[k]; the unpacks
 * work per 128-bit lane, so w[i] holds groups 2i, 2i + 1 | 16 + 2i, 17 + 2i. */
AVX2_INLINE void rows_to_words_avx2(const uint8_t *const r[8], __m256i w[8]) {
        __m256i r0 = _mm256_loadu_si256((const __m256i *)r[0]);
        __m256i r1 = _mm256_loadu_si256((const __m256i *)r[1]);
        __m256i r2 = _mm256_loadu_si256((const __m256i *)r[2]);
        __m256i r3 = _mm256_loadu_si256((const __m256i *)r[3]);
        __m256i r4 = _mm256_loadu_si256((const __m256i *)r[4]);
        __m256i r5 = _mm256_loadu_si256((const __m256i *)r[5]);
        __m256i r6 = _mm256_loadu_si256((const __m256i *)r[6]);
        __m256i r7 = _mm256_loadu_si256((const __m256i *)r[7]);
        __m256i a0 = _mm256_unpacklo_epi8(r0, r1), a1 = _mm256_unpackhi_epi8(r0, r1);
        __m256i a2 = _mm256_unpacklo_epi8(r2, r3), a3 = _mm256_unpackhi_epi8(r2, r3);
        __m256i a4 = _mm256_unpacklo_epi8(r4, r5), a5 = _mm256_unpackhi_epi8(r4, r5);
        __m256i a6 = _mm256_unpacklo_epi8(r6, r7), a7 = _mm256_unpackhi_epi8(r6, r7);
        __m256i b0 = _mm256_unpacklo_epi16(a0, a2), b1 = _mm256_unpackhi_epi16(a0, a2);
        __m256i b2 = _mm256_unpacklo_epi16(a1, a3), b3 = _mm256_unpackhi_epi16(a1, a3);
        __m256i b4 = _mm256_unpacklo_epi16(a4, a6), b5 = _mm256_unpackhi_epi16(a4, a6);
        __m256i b6 = _mm256_unpacklo_epi16(a5, a7), b7 = _mm256_unpackhi_epi16(a5, a7);
        w[0] = _mm256_unpacklo_epi32(b0, b4), w[1] = _mm256_unpackhi_epi32(b0, b4);
        w[2] = _mm256_unpacklo_epi32(b1, b5), w[3] = _mm256_unpackhi_epi32(b1, b5);
        w[4] = _mm256_unpacklo_epi32(b2, b6), w[5] = _mm256_unpackhi_epi32(b2, b6);
        w[6] = _mm256_unpacklo_epi32(b3, b7), w[7] = _mm256_unpackhi_epi32(b3, b7);
}

/* Bit-transposed words w[2i], w[2i + 1] (groups 2i, 2i + 1 | 16 + 2i, 17 + 2i)
 * to 32 plane bytes at plane + 32i and plane + 128 + 32i. */
AVX2_INLINE void store_words_avx2(uint8_t *plane, const __m256i w[8]) {
        for (int i = 0; i < 4; i++) {
                _mm256_storeu_si256((__m256i *)(plane + 32 * i),
                                    _mm256_permute2x128_si256(w[2 * i], w[2 * i + 1], 0x20));
                _mm256_storeu_si256((__m256i *)(plane + 128 + 32 * i),
                                    _mm256_permute2x128_si256(w[2 * i], w[2 * i + 1], 0x31));
        }
}

/* As rows_to_plane_sse2 for 32 bytes per row (256 elements). */
AVX2_INLINE void rows_to_plane_avx2(const uint8_t *rows, size_t rowlen, uint8_t *plane) {
        const __m256i m1 = _mm256_set1_epi64x(0x00AA00AA00AA00AAll);
        const __m256i m2 = _mm256_set1_epi64x(0x0000CCCC0000CCCCll);
        const __m256i m3 = _mm256_set1_epi64x(0x00000000F0F0F0F0ll);
        const uint8_t *const r[8] = {rows,
                                     rows + rowlen,
                                     rows + 2 * rowlen,
                                     rows + 3 * rowlen,
                                     rows + 4 * rowlen,
                                     rows + 5 * rowlen,
                                     rows + 6 * rowlen,
                                     rows + 7 * rowlen};
        __m256i w[8];
        rows_to_words_avx2(r, w);
        for (int i = 0; i < 8; i++)
                w[i] = transpose8x8_avx2(w[i], m1, m2, m3);
        store_words_avx2(plane, w);
}

/* The same with GFNI: gf2p8affineqb(x, A) gives bit i of byte b as the parity
 * of A's byte 7 - i and x's byte b, so with x the identity bytes (1 << b) and
 * A a word whose byte k is row 7 - k, byte b of the result is bit b of the 8
 * rows: the bit transpose in one instruction instead of eighteen.  The rows
 * go to the unpacks in reverse order for that. */
#define GFNI_INLINE __attribute__((target("avx2,gfni"), always_inline)) static inline
GFNI_INLINE void rows_to_plane_gfni(const uint8_t *rows, size_t rowlen, uint8_t *plane) {
        const __m256i id = _mm256_set1_epi64x(0x8040201008040201ll);
        const uint8_t *const r[8] = {rows + 7 * rowlen, rows + 6 * rowlen, rows + 5 * rowlen, rows + 4 * rowlen,
                                     rows + 3 * rowlen, rows + 2 * rowlen, rows + rowlen,     rows};
        __m256i w[8];
        rows_to_words_avx2(r, w);
        for (int i = 0; i < 8; i++)
                w[i] = _mm256_gf2p8affine_epi64_epi8(id, w[i], 0);
        store_words_avx2(plane, w);
}

AVX2_INLINE void interleave2_avx2(const uint8_t *p0, const uint8_t *p1, size_t cnt, uint8_t *out) {
        for (size_t e = 0; e < cnt; e += 32) {
                __m256i a = _mm256_load_si256((const __m256i *)(p0 + e));
                __m256i b = _mm256_load_si256((const __m256i *)(p1 + e));
                __m256i lo = _mm256_unpacklo_epi8(a, b), hi = _mm256_unpackhi_epi8(a, b);
                _mm256_storeu_si256((__m256i *)(out + 2 * e), _mm256_permute2x128_si256(lo, hi, 0x20));
                _mm256_storeu_si256((__m256i *)(out + 2 * e + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
        }
}

/* ROWS_TO_PLANE: rows_to_plane_avx2 or rows_to_plane_gfni. */
#define UNSHUFFLE_BODY(ROWS_TO_PLANE)                                                                                  \
        do {                                                                                                           \
                size_t rowlen = n / 8, e = 0;                                                                          \
                _Alignas(32) uint8_t planes[ROID_BSLZ4_MAX_ELEM][CHUNK_AVX2];                                          \
                for (; e + CHUNK_AVX2 <= n; e += CHUNK_AVX2) {                                                         \
                        if (s == 1) {                                                                                  \
                                ROWS_TO_PLANE(in + e / 8, rowlen, out + e);                                            \
                                continue;                                                                              \
                        }                                                                                              \
                        for (size_t j = 0; j < s; j++)                                                                 \
                                ROWS_TO_PLANE(in + 8 * j * rowlen + e / 8, rowlen, planes[j]);                         \
                        if (s == 2)                                                                                    \
                                interleave2_avx2(planes[0], planes[1], CHUNK_AVX2, out + e * s);                       \
                        else                                                                                           \
                                interleave_planes(planes[0], CHUNK_AVX2, s, CHUNK_AVX2, out + e * s);                  \
                }                                                                                                      \
                if (e < n)                                                                                             \
                        unshuffle_sse2(in, out, n, s, e);                                                              \
        } while (0)

__attribute__((target("avx2"))) static void unshuffle_avx2(const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        UNSHUFFLE_BODY(rows_to_plane_avx2);
}

__attribute__((target("avx2,gfni"))) static void unshuffle_gfni(const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        UNSHUFFLE_BODY(rows_to_plane_gfni);
}

__attribute__((target("avx2"))) static void shuffle_avx2(const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        size_t rowlen = n / 8, e = 0;
        _Alignas(32) uint8_t planes[ROID_BSLZ4_MAX_ELEM][CHUNK_AVX2];
        for (; e + CHUNK_AVX2 <= n; e += CHUNK_AVX2) {
                const uint8_t *pl = in + e;
                size_t pstride = 0;
                if (s > 1) {
                        gather_planes(in + e * s, s, CHUNK_AVX2, planes[0], CHUNK_AVX2);
                        pl = planes[0];
                        pstride = CHUNK_AVX2;
                }
                for (size_t j = 0; j < s; j++) {
                        uint8_t *rows = out + 8 * j * rowlen + e / 8;
                        for (size_t x = 0; x < CHUNK_AVX2; x += 32) {
                                __m256i v = _mm256_loadu_si256((const __m256i *)(pl + j * pstride + x));
                                for (int k = 7; k >= 0; k--) {
                                        uint32_t m = (uint32_t)_mm256_movemask_epi8(v);
                                        memcpy(rows + (size_t)k * rowlen + x / 8, &m, 4);
                                        v = _mm256_add_epi8(v, v);
                                }
                        }
                }
        }
        if (e < n)
                shuffle_sse2(in, out, n, s, e);
}

static bool have_avx2(void) {
        return __builtin_cpu_supports("avx2");
}

static bool have_gfni(void) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("gfni");
}

#endif /* HAVE_X86 */

const char *roid_bt_impl_name(roid_bt_impl impl) {
        switch (impl) {
        case ROID_BT_BITWISE:
                return "bitwise";
        case ROID_BT_SWAR:
                return "swar";
        case ROID_BT_SSE2:
                return "sse2";
        case ROID_BT_AVX2:
                return "avx2";
        case ROID_BT_GFNI:
                return "gfni";
        case ROID_BT_AUTO:
                return "auto";
        }
        return "?";
}

static roid_bt_impl resolve_impl(roid_bt_impl impl) {
#if HAVE_X86
        if (impl == ROID_BT_AUTO)
                return have_gfni() ? ROID_BT_GFNI : have_avx2() ? ROID_BT_AVX2 : ROID_BT_SSE2;
        if ((impl == ROID_BT_AVX2 && !have_avx2()) || (impl == ROID_BT_GFNI && !have_gfni()))
                return (roid_bt_impl)-1;
#else
        if (impl == ROID_BT_AUTO)
                return ROID_BT_SWAR;
        if (impl == ROID_BT_SSE2 || impl == ROID_BT_AVX2 || impl == ROID_BT_GFNI)
                return (roid_bt_impl)-1;
#endif
        return impl;
}

roid_bt_impl roid_bt_impl_auto(void) {
        return resolve_impl(ROID_BT_AUTO);
}

static void transpose_block(bool unshuffle, roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        switch (impl) {
        case ROID_BT_BITWISE:
                (unshuffle ? unshuffle_bitwise : shuffle_bitwise)(in, out, n, s);
                return;
#if HAVE_X86
        case ROID_BT_SSE2:
                (unshuffle ? unshuffle_sse2 : shuffle_sse2)(in, out, n, s, 0);
                return;
        case ROID_BT_AVX2:
                (unshuffle ? unshuffle_avx2 : shuffle_avx2)(in, out, n, s);
                return;
        case ROID_BT_GFNI: /* the shuffle (simulator, tests) has no bit transpose of words to speed up */
                (unshuffle ? unshuffle_gfni : shuffle_avx2)(in, out, n, s);
                return;
#endif
        default:
                (unshuffle ? unshuffle_swar : shuffle_swar)(in, out, n, s, 0);
                return;
        }
}

static int transpose_with(bool unshuffle, roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t s) {
        if (n % 8 || s == 0 || s > ROID_BSLZ4_MAX_ELEM)
                return -EINVAL;
        roid_bt_impl r = resolve_impl(impl);
        if ((int)r < 0 || r > ROID_BT_GFNI)
                return -ENOTSUP;
        transpose_block(unshuffle, r, in, out, n, s);
        return 0;
}

int roid_bitunshuffle_block_with(roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t elem_size) {
        return transpose_with(true, impl, in, out, n, elem_size);
}

int roid_bitshuffle_block_with(roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t elem_size) {
        return transpose_with(false, impl, in, out, n, elem_size);
}

void roid_bitunshuffle_block(const uint8_t *in, uint8_t *out, size_t n, size_t elem_size) {
        if (n % 8 == 0 && elem_size >= 1 && elem_size <= ROID_BSLZ4_MAX_ELEM)
                transpose_block(true, resolve_impl(ROID_BT_AUTO), in, out, n, elem_size);
}

void roid_bitshuffle_block(const uint8_t *in, uint8_t *out, size_t n, size_t elem_size) {
        if (n % 8 == 0 && elem_size >= 1 && elem_size <= ROID_BSLZ4_MAX_ELEM)
                transpose_block(false, resolve_impl(ROID_BT_AUTO), in, out, n, elem_size);
}

size_t roid_bslz4_default_block(size_t elem_size) {
        if (elem_size == 0)
                return 0;
        size_t b = 8192 / elem_size;
        b = b / 8 * 8;
        if (b < 128)
                b = 128;
        return b * elem_size;
}

/* ---- bslz4 ---------------------------------------------------------------- */

/* The block partition of bshuf_blocked_wrap_fun: full blocks of B elements,
 * one last block of L = (n % B) rounded down to 8, r = n % 8 raw leftovers. */
typedef struct {
        size_t n, blk, nfull, last, nblocks, left;
} bs_layout;

static bs_layout bs_partition(size_t n, size_t blk) {
        bs_layout l = {.n = n, .blk = blk};
        l.nfull = n / blk;
        l.last = (n % blk) - (n % blk) % 8;
        l.nblocks = l.nfull + (l.last > 0);
        l.left = n % 8;
        return l;
}

/* shape: "514 x 1030 x 4" when the caller knows it, for the messages. */
/* Bitshuffle with LZ4 blocks (bslz4, HDF5 compression 2) or zstd blocks
 * (bszstd, compression 3): the same framing, another block codec. */
static size_t block_bound(bool zstd, size_t bytes) {
        return zstd ? ZSTD_compressBound(bytes) : (size_t)LZ4_compressBound((int)bytes);
}

/* The frame a decode is for, named in size errors: formatted only then (a
 * snprintf per frame is measurable at 100,000 frames/s). */
typedef struct {
        uint32_t rows, cols;
        size_t elem;
} frame_shape;

static const char *shape_str(const frame_shape *f, char *buf, size_t size) {
        snprintf(buf, size, "%u x %u x %zu", f->rows, f->cols, f->elem);
        return buf;
}

static int bs_decode_internal(const uint8_t *src, size_t src_size, uint8_t *dst, size_t dst_size, size_t s, bool zstd,
                              const frame_shape *shape, roid_err *err) {
        const char *name = zstd ? "bszstd" : "bslz4";
        if (s == 0 || s > ROID_BSLZ4_MAX_ELEM)
                return roid_err_set(err, -EINVAL, "%s: element size %zu is not in 1..%d", name, s, ROID_BSLZ4_MAX_ELEM);
        if (!src && src_size)
                return roid_err_set(err, -EINVAL, "%s: no input", name);
        if (src_size < 12)
                return roid_err_set(err, -EBADMSG, "%s: input is %zu bytes, shorter than the 12-byte header", name,
                                    src_size);
        uint64_t orig = get_be64(src);
        uint32_t bsize = get_be32(src + 8);
        if (orig != dst_size) {
                char sb[64];
                if (shape)
                        return roid_err_set(err, -EMSGSIZE, "%s: header says %llu bytes, frame needs %zu (%s)", name,
                                            (unsigned long long)orig, dst_size, shape_str(shape, sb, sizeof sb));
                return roid_err_set(err, -EMSGSIZE, "%s: header says %llu bytes, expected %zu", name,
                                    (unsigned long long)orig, dst_size);
        }
        if (orig % s)
                return roid_err_set(err, -EBADMSG, "%s: size %llu is not a multiple of the element size %zu", name,
                                    (unsigned long long)orig, s);
        if (orig == 0) {
                if (src_size != 12)
                        return roid_err_set(err, -EBADMSG, "%s: %zu trailing bytes after the header of empty data",
                                            name, src_size - 12);
                return 0;
        }
        if (bsize == 0 || bsize % (8 * s))
                return roid_err_set(err, -EBADMSG,
                                    "%s: block size %u is not a non-zero multiple of %zu (8 x element size)", name,
                                    bsize, 8 * s);
        if (bsize > ROID_BSLZ4_MAX_BLOCK)
                return roid_err_set(err, -EMSGSIZE, "%s: block size %u exceeds the limit %zu", name, bsize,
                                    ROID_BSLZ4_MAX_BLOCK);

        bs_layout l = bs_partition(dst_size / s, bsize / s);
        /* Walk the framing first: truncation and trailing bytes are found
         * before anything is written. */
        size_t pos = 12;
        for (size_t k = 0; k < l.nblocks; k++) {
                size_t bytes = (k < l.nfull ? l.blk : l.last) * s;
                if (src_size - pos < 4)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: input ends at byte %zu, inside the size of block %zu of %zu", name,
                                            src_size, k, l.nblocks);
                uint32_t csize = get_be32(src + pos);
                pos += 4;
                if (csize == 0 || csize > block_bound(zstd, bytes))
                        return roid_err_set(err, -EBADMSG,
                                            "%s: block %zu of %zu: compressed size %u is outside 1..%zu for %zu bytes",
                                            name, k, l.nblocks, csize, block_bound(zstd, bytes), bytes);
                if (csize > src_size - pos)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: block %zu of %zu: compressed size %u exceeds the %zu bytes left", name,
                                            k, l.nblocks, csize, src_size - pos);
                pos += csize;
        }
        size_t left = l.left * s;
        if (src_size - pos != left)
                return roid_err_set(err, -EBADMSG, "%s: %zu bytes follow the %zu blocks, expected %zu leftover bytes",
                                    name, src_size - pos, l.nblocks, left);

        uint8_t *block_scratch = scratch(l.blk * s);
        if (!block_scratch)
                return roid_err_set(err, -ENOMEM, "%s: no memory for a block of %zu bytes", name, l.blk * s);
        pos = 12;
        for (size_t k = 0; k < l.nblocks; k++) {
                size_t m = k < l.nfull ? l.blk : l.last;
                uint32_t csize = get_be32(src + pos);
                long long d;
                if (zstd) {
                        size_t z = ZSTD_decompress(block_scratch, m * s, src + pos + 4, csize);
                        d = ZSTD_isError(z) ? -1 : (long long)z;
                } else {
                        d = LZ4_decompress_safe((const char *)src + pos + 4, (char *)block_scratch, (int)csize,
                                                (int)(m * s));
                }
                if (d < 0)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: block %zu of %zu: corrupt %s data or more than %zu bytes (%lld)", name,
                                            k, l.nblocks, zstd ? "zstd" : "LZ4", m * s, d);
                if ((size_t)d != m * s)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: block %zu of %zu: %s data decodes to %lld bytes, expected %zu", name,
                                            k, l.nblocks, zstd ? "zstd" : "LZ4", d, m * s);
                roid_bitunshuffle_block(block_scratch, dst + k * l.blk * s, m, s);
                pos += 4 + csize;
        }
        memcpy(dst + (l.n - l.left) * s, src + pos, left);
        return 0;
}

int roid_bslz4_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, size_t elem_size,
                      roid_err *err) {
        return bs_decode_internal(src, src_size, dst, dst_size, elem_size, false, NULL, err);
}

int roid_bszstd_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, size_t elem_size,
                       roid_err *err) {
        return bs_decode_internal(src, src_size, dst, dst_size, elem_size, true, NULL, err);
}

size_t roid_bslz4_bound(size_t src_size, size_t elem_size, size_t block_bytes) {
        if (!block_bytes)
                block_bytes = roid_bslz4_default_block(elem_size);
        if (elem_size == 0 || elem_size > ROID_BSLZ4_MAX_ELEM || src_size % elem_size || block_bytes == 0 ||
            block_bytes % (8 * elem_size) || block_bytes > ROID_BSLZ4_MAX_BLOCK)
                return 0;
        if (src_size > SIZE_MAX / 4)
                return 0;
        bs_layout l = bs_partition(src_size / elem_size, block_bytes / elem_size);
        size_t per = 4 + (size_t)LZ4_compressBound((int)block_bytes);
        if (l.nblocks > (SIZE_MAX - 12 - src_size) / per)
                return 0;
        return 12 + l.nblocks * per + l.left * elem_size;
}

int roid_bslz4_encode(const void *src, size_t src_size, size_t elem_size, size_t block_bytes, uint8_t *dst,
                      size_t dst_cap, size_t *ret_size) {
        if (!block_bytes)
                block_bytes = roid_bslz4_default_block(elem_size);
        if (elem_size == 0 || elem_size > ROID_BSLZ4_MAX_ELEM || src_size % elem_size || block_bytes == 0 ||
            block_bytes % (8 * elem_size) || block_bytes > ROID_BSLZ4_MAX_BLOCK || (!src && src_size))
                return -EINVAL;
        const uint8_t *in = src;
        size_t s = elem_size;
        bs_layout l = bs_partition(src_size / s, block_bytes / s);
        if (dst_cap < 12)
                return -ENOBUFS;
        uint8_t *block_scratch = scratch(block_bytes);
        if (!block_scratch)
                return -ENOMEM;
        put_be64(dst, src_size);
        put_be32(dst + 8, (uint32_t)block_bytes);
        size_t pos = 12;
        for (size_t k = 0; k < l.nblocks; k++) {
                size_t m = k < l.nfull ? l.blk : l.last;
                if (dst_cap - pos < 5)
                        return -ENOBUFS;
                size_t cap = dst_cap - pos - 4;
                roid_bitshuffle_block(in + k * l.blk * s, block_scratch, m, s);
                int c = LZ4_compress_default((const char *)block_scratch, (char *)dst + pos + 4, (int)(m * s),
                                             cap > INT_MAX ? INT_MAX : (int)cap);
                if (c <= 0)
                        return -ENOBUFS;
                put_be32(dst + pos, (uint32_t)c);
                pos += 4 + (size_t)c;
        }
        size_t left = l.left * s;
        if (dst_cap - pos < left)
                return -ENOBUFS;
        memcpy(dst + pos, in + (l.n - l.left) * s, left);
        *ret_size = pos + left;
        return 0;
}

/* ---- lz4 with HDF5 filter 32004 framing ----------------------------------- */

int roid_lz4h5_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, roid_err *err) {
        if (!src && src_size)
                return roid_err_set(err, -EINVAL, "lz4h5: no input");
        if (src_size < 12)
                return roid_err_set(err, -EBADMSG, "lz4h5: input is %zu bytes, shorter than the 12-byte header",
                                    src_size);
        uint64_t orig = get_be64(src);
        uint32_t bsize = get_be32(src + 8);
        if (orig != dst_size)
                return roid_err_set(err, -EMSGSIZE, "lz4h5: header says %llu bytes, expected %zu",
                                    (unsigned long long)orig, dst_size);
        if (orig == 0) {
                if (src_size != 12)
                        return roid_err_set(err, -EBADMSG, "lz4h5: %zu trailing bytes after the header of empty data",
                                            src_size - 12);
                return 0;
        }
        if (bsize == 0 || bsize > INT32_MAX)
                return roid_err_set(err, -EBADMSG, "lz4h5: block size %u is outside 1..%d", bsize, INT32_MAX);
        size_t nblocks = dst_size / bsize + (dst_size % bsize != 0);
        size_t pos = 12;
        for (size_t k = 0; k < nblocks; k++) {
                size_t bytes = k + 1 < nblocks || dst_size % bsize == 0 ? bsize : dst_size % bsize;
                if (src_size - pos < 4)
                        return roid_err_set(err, -EBADMSG,
                                            "lz4h5: input ends at byte %zu, inside the size of block %zu of %zu",
                                            src_size, k, nblocks);
                uint32_t csize = get_be32(src + pos);
                pos += 4;
                /* The filter stores a block raw when LZ4 does not shrink it. */
                if (csize == 0 || csize > bytes)
                        return roid_err_set(err, -EBADMSG,
                                            "lz4h5: block %zu of %zu: compressed size %u is outside 1..%zu", k, nblocks,
                                            csize, bytes);
                if (csize > src_size - pos)
                        return roid_err_set(err, -EBADMSG,
                                            "lz4h5: block %zu of %zu: compressed size %u exceeds the %zu bytes left", k,
                                            nblocks, csize, src_size - pos);
                pos += csize;
        }
        if (pos != src_size)
                return roid_err_set(err, -EBADMSG, "lz4h5: %zu trailing bytes after the %zu blocks", src_size - pos,
                                    nblocks);

        uint8_t *out = dst;
        pos = 12;
        for (size_t k = 0; k < nblocks; k++) {
                size_t bytes = k + 1 < nblocks || dst_size % bsize == 0 ? bsize : dst_size % bsize;
                uint32_t csize = get_be32(src + pos);
                const uint8_t *p = src + pos + 4;
                if (csize == bytes) {
                        memcpy(out, p, bytes);
                } else {
                        int d = LZ4_decompress_safe((const char *)p, (char *)out, (int)csize, (int)bytes);
                        if (d < 0)
                                return roid_err_set(
                                        err, -EBADMSG,
                                        "lz4h5: block %zu of %zu: corrupt LZ4 data or more than %zu bytes (liblz4 %d)",
                                        k, nblocks, bytes, d);
                        if ((size_t)d != bytes)
                                return roid_err_set(
                                        err, -EBADMSG,
                                        "lz4h5: block %zu of %zu: LZ4 data decodes to %d bytes, expected %zu", k,
                                        nblocks, d, bytes);
                }
                out += bytes;
                pos += 4 + csize;
        }
        return 0;
}

size_t roid_lz4h5_bound(size_t src_size, size_t block_bytes) {
        if (!block_bytes)
                block_bytes = LZ4H5_DEFAULT_BLOCK;
        if (block_bytes > LZ4_MAX_INPUT_SIZE || src_size > SIZE_MAX / 4)
                return 0;
        size_t nblocks = src_size / block_bytes + (src_size % block_bytes != 0);
        /* Raw storage caps every block at its own size. */
        if (nblocks > (SIZE_MAX - 12 - src_size) / 4)
                return 0;
        return 12 + 4 * nblocks + src_size;
}

int roid_lz4h5_encode(const void *src, size_t src_size, size_t block_bytes, uint8_t *dst, size_t dst_cap,
                      size_t *ret_size) {
        if (!block_bytes)
                block_bytes = LZ4H5_DEFAULT_BLOCK;
        if (block_bytes > LZ4_MAX_INPUT_SIZE || (!src && src_size))
                return -EINVAL;
        if (dst_cap < 12)
                return -ENOBUFS;
        const uint8_t *in = src;
        put_be64(dst, src_size);
        put_be32(dst + 8, (uint32_t)block_bytes);
        size_t pos = 12;
        for (size_t off = 0; off < src_size; off += block_bytes) {
                size_t bytes = src_size - off < block_bytes ? src_size - off : block_bytes;
                if (dst_cap - pos < 4)
                        return -ENOBUFS;
                size_t cap = dst_cap - pos - 4;
                /* Output capped below the block size: LZ4 fails exactly when
                 * the block must be stored raw (csize == size means raw). */
                if (cap > bytes - 1)
                        cap = bytes - 1;
                int c = cap ? LZ4_compress_default((const char *)in + off, (char *)dst + pos + 4, (int)bytes, (int)cap)
                            : 0;
                if (c <= 0) {
                        if (dst_cap - pos - 4 < bytes)
                                return -ENOBUFS;
                        memcpy(dst + pos + 4, in + off, bytes);
                        c = (int)bytes;
                }
                put_be32(dst + pos, (uint32_t)c);
                pos += 4 + (size_t)c;
        }
        *ret_size = pos;
        return 0;
}

/* ---- raw LZ4 block (V1 "lz4<") -------------------------------------------- */

int roid_lz4raw_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, roid_err *err) {
        if (!src && src_size)
                return roid_err_set(err, -EINVAL, "lz4raw: no input");
        if (dst_size > LZ4_MAX_INPUT_SIZE)
                return roid_err_set(err, -EMSGSIZE, "lz4raw: frame of %zu bytes exceeds LZ4's limit %d", dst_size,
                                    LZ4_MAX_INPUT_SIZE);
        if (src_size == 0 || src_size > (size_t)LZ4_compressBound((int)dst_size))
                return roid_err_set(err, -EBADMSG,
                                    "lz4raw: %zu compressed bytes are outside 1..%d for a %zu-byte frame", src_size,
                                    LZ4_compressBound((int)dst_size), dst_size);
        int d = LZ4_decompress_safe((const char *)src, dst, (int)src_size, (int)dst_size);
        if (d < 0)
                return roid_err_set(err, -EBADMSG, "lz4raw: corrupt LZ4 data or more than %zu bytes (liblz4 %d)",
                                    dst_size, d);
        if ((size_t)d != dst_size)
                return roid_err_set(err, -EBADMSG, "lz4raw: LZ4 data decodes to %d bytes, expected %zu", d, dst_size);
        return 0;
}

size_t roid_lz4raw_bound(size_t src_size) {
        if (src_size > LZ4_MAX_INPUT_SIZE)
                return 0;
        return (size_t)LZ4_compressBound((int)src_size);
}

int roid_lz4raw_encode(const void *src, size_t src_size, uint8_t *dst, size_t dst_cap, size_t *ret_size) {
        if (src_size > LZ4_MAX_INPUT_SIZE || (!src && src_size))
                return -EINVAL;
        int c = LZ4_compress_default(src, (char *)dst, (int)src_size, dst_cap > INT_MAX ? INT_MAX : (int)dst_cap);
        if (c <= 0)
                return -ENOBUFS;
        *ret_size = (size_t)c;
        return 0;
}

/* ---- dispatch ------------------------------------------------------------- */

int roid_blob_decode(const roid_blob *b, void *dst, size_t dst_size, roid_err *err) {
        size_t ds = roid_dtype_size(b->dtype);
        if (ds == 0)
                return roid_err_set(err, -EINVAL, "%s array has no element type", roid_comp_name(b->comp));
        size_t want;
        if (__builtin_mul_overflow((size_t)b->rows, (size_t)b->cols, &want) || __builtin_mul_overflow(want, ds, &want))
                return roid_err_set(err, -EMSGSIZE, "array of %u x %u x %zu bytes overflows", b->rows, b->cols, ds);
        if (dst_size != want)
                return roid_err_set(err, -EINVAL, "output of %zu bytes for a %u x %u %s array of %zu bytes", dst_size,
                                    b->rows, b->cols, roid_dtype_name(b->dtype), want);
        if (!b->data && b->size)
                return roid_err_set(err, -EINVAL, "%s array has no data", roid_comp_name(b->comp));
        const frame_shape shape = {b->rows, b->cols, ds};
        char sb[64];
        int r;
        switch (b->comp) {
        case ROID_COMP_NONE:
                if (b->size != dst_size)
                        return roid_err_set(err, -EMSGSIZE, "uncompressed array is %zu bytes, frame needs %zu (%s)",
                                            b->size, dst_size, shape_str(&shape, sb, sizeof sb));
                if (dst_size)
                        memcpy(dst, b->data, dst_size);
                return 0;
        case ROID_COMP_BSLZ4:
                if (b->comp_elem_size != ds)
                        return roid_err_set(err, -EBADMSG, "bslz4: element size %u does not match %s (%zu bytes)",
                                            b->comp_elem_size, roid_dtype_name(b->dtype), ds);
                return bs_decode_internal(b->data, b->size, dst, dst_size, ds, false, &shape, err);
        case ROID_COMP_LZ4_H5:
                r = roid_lz4h5_decode(b->data, b->size, dst, dst_size, err);
                break;
        case ROID_COMP_LZ4_RAW:
                r = roid_lz4raw_decode(b->data, b->size, dst, dst_size, err);
                break;
        default:
                return roid_err_set(err, -EINVAL, "unknown compression %d", (int)b->comp);
        }
        if (r == -EMSGSIZE && err)
                roid_err_prefix(err, "%s", shape_str(&shape, sb, sizeof sb));
        return r;
}
