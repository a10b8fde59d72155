/* features.c - see features.h.
 *
 * The per-frame pass walks runs: stretches of one row whose pixels share a
 * segment and disk flags and are not masked.  A wedge of at most 180 degrees
 * meets a row in one interval and a disk or an annulus in at most two, so a
 * row has about S + 6 runs plus one per masked stretch.  Inside a run the
 * pixels are summed with vectors (GCC vector extensions, so any target
 * works); the x moment comes from the block-prefix identity
 *     sum_k k a_k = (n - 1) sum_k a_k - sum_k (a_0 + ... + a_{k-1})
 * which needs only additions per block, and one reduction per run.
 */
#include "features/features.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Longest run: keeps every lane sum and every reduction of the portable
 * kernels, and the exact run sums of the AVX2 one, below 2^32. */
#define RUN_MAX 256

#define CODE_SEG 0x3fu
#define CODE_BF  0x40u
#define CODE_DF  0x80u

struct roid_run {
        uint32_t x0;
        uint16_t len; /* 1..RUN_MAX */
        uint8_t code;
        uint8_t pad;
};

typedef unsigned __int128 u128;

void roid_geometry_params_default(roid_geometry_params *p) {
        memset(p, 0, sizeof *p);
        p->dtype = ROID_DT_NONE;
        p->center_x = NAN;
        p->center_y = NAN;
        p->n_segments = ROID_DEFAULT_SEGMENTS;
}

static bool dtype_ok(roid_dtype t) {
        return t == ROID_DT_U8 || t == ROID_DT_U16 || t == ROID_DT_U32;
}

/* The documented convention: exact on the axes and diagonals, atan2
 * elsewhere. */
static unsigned segment_of(double dx, double dy, unsigned n_seg) {
        if (n_seg == 1)
                return 0;
        int m = -1; /* the angle in eighths of a turn, when exact */
        if (dy == 0)
                m = dx >= 0 ? 0 : 4;
        else if (dx == 0)
                m = dy > 0 ? 2 : 6;
        else if (dx == dy)
                m = dx > 0 ? 1 : 5;
        else if (dx == -dy)
                m = dy > 0 ? 3 : 7;
        if (m >= 0)
                return (unsigned)m * n_seg / 8;
        double t = atan2(dy, dx) / (2.0 * M_PI);
        if (t < 0)
                t += 1.0;
        double s = floor(t * (double)n_seg);
        return s < (double)n_seg ? (unsigned)s : n_seg - 1;
}

static int check_radius(const char *name, double r, roid_err *err) {
        if (isnan(r) || r < 0)
                return roid_err_set(err, -EINVAL, "%s = %g: must be >= 0", name, r);
        return 0;
}

static int validate(const roid_geometry_params *p, roid_err *err) {
        if (p->rows == 0 || p->cols == 0)
                return roid_err_set(err, -EINVAL, "frame shape %" PRIu32 " x %" PRIu32 ": rows and cols must be >= 1",
                                    p->rows, p->cols);
        if ((uint64_t)p->rows * p->cols > ROID_GEOM_MAX_PIXELS)
                return roid_err_set(err, -EINVAL, "frame shape %" PRIu32 " x %" PRIu32 ": more than %llu pixels",
                                    p->rows, p->cols, (unsigned long long)ROID_GEOM_MAX_PIXELS);
        if (!dtype_ok(p->dtype))
                return roid_err_set(err, -EINVAL, "dtype %s: must be uint8, uint16 or uint32",
                                    roid_dtype_name(p->dtype));
        if (!isfinite(p->center_x) || fabs(p->center_x) > 1e7)
                return roid_err_set(err, -EINVAL, "beam center_x = %g: must be finite, |x| <= 1e7", p->center_x);
        if (!isfinite(p->center_y) || fabs(p->center_y) > 1e7)
                return roid_err_set(err, -EINVAL, "beam center_y = %g: must be finite, |y| <= 1e7", p->center_y);
        if (p->n_segments < 1 || p->n_segments > ROID_MAX_SEGMENTS)
                return roid_err_set(err, -EINVAL, "n_segments = %u: must be 1..%d", p->n_segments, ROID_MAX_SEGMENTS);
        int r;
        if ((r = check_radius("r_bf", p->r_bf, err)) < 0 || (r = check_radius("r_df_in", p->r_df_in, err)) < 0 ||
            (r = check_radius("r_df_out", p->r_df_out, err)) < 0)
                return r;
        if (p->r_df_out > 0 && p->r_df_in > p->r_df_out)
                return roid_err_set(err, -EINVAL, "r_df_in = %g: must be <= r_df_out = %g", p->r_df_in, p->r_df_out);
        return 0;
}

static int push_run(roid_geometry *g, size_t *cap, uint32_t x0, uint32_t len, unsigned code) {
        if (g->n_runs == *cap) {
                size_t ncap = *cap ? *cap * 2 : 1024;
                roid_run *n = realloc(g->runs, ncap * sizeof *n);
                if (!n)
                        return -ENOMEM;
                g->runs = n;
                *cap = ncap;
        }
        g->runs[g->n_runs++] = (roid_run){.x0 = x0, .len = (uint16_t)len, .code = (uint8_t)code};
        return 0;
}

int roid_geometry_init(roid_geometry *g, const roid_geometry_params *p, roid_err *err) {
        memset(g, 0, sizeof *g);
        int r = validate(p, err);
        if (r < 0)
                return r;
        roid_geometry ng = {
                .rows = p->rows,
                .cols = p->cols,
                .dtype = p->dtype,
                .n_segments = p->n_segments,
                .center_x = p->center_x,
                .center_y = p->center_y,
                .r_bf = p->r_bf,
                .r_df_in = p->r_df_in,
                .r_df_out = p->r_df_out,
        };
        size_t cap = 0;
        ng.row_first_run = malloc(((size_t)p->rows + 1) * sizeof *ng.row_first_run);
        if (!ng.row_first_run) {
                r = -ENOMEM;
                goto fail;
        }
        const double bf2 = p->r_bf * p->r_bf, in2 = p->r_df_in * p->r_df_in, out2 = p->r_df_out * p->r_df_out;
        const unsigned EXCL = 0x100;
        for (uint32_t y = 0; y < p->rows; y++) {
                ng.row_first_run[y] = (uint32_t)ng.n_runs;
                const uint32_t *mrow = p->mask ? p->mask + (size_t)y * p->cols : NULL;
                const double dy = (double)y - p->center_y;
                unsigned cur = EXCL;
                uint32_t start = 0;
                for (uint32_t x = 0; x <= p->cols; x++) {
                        unsigned code = EXCL;
                        if (x < p->cols && !(mrow && mrow[x])) {
                                const double dx = (double)x - p->center_x;
                                const double d2 = dx * dx + dy * dy;
                                code = segment_of(dx, dy, p->n_segments);
                                ng.seg_pixels[code]++;
                                if (d2 < bf2) {
                                        code |= CODE_BF;
                                        ng.bf_pixels++;
                                }
                                if (d2 >= in2 && d2 < out2) {
                                        code |= CODE_DF;
                                        ng.df_pixels++;
                                }
                        } else if (x < p->cols) {
                                ng.n_static_masked++;
                        }
                        if (code != cur || x - start == RUN_MAX) {
                                if (cur != EXCL && (r = push_run(&ng, &cap, start, x - start, cur)) < 0)
                                        goto fail;
                                cur = code;
                                start = x;
                        }
                }
        }
        ng.row_first_run[p->rows] = (uint32_t)ng.n_runs;
        *g = ng;
        return 0;
fail:
        free(ng.runs);
        free(ng.row_first_run);
        return r;
}

void roid_geometry_free(roid_geometry *g) {
        if (!g)
                return;
        free(g->runs);
        free(g->row_first_run);
        memset(g, 0, sizeof *g);
}

/* ---- the per-frame pass ---- */

typedef struct {
        uint64_t sum[ROID_MAX_SEGMENTS];
        u128 sx[ROID_MAX_SEGMENTS], sy[ROID_MAX_SEGMENTS];
        uint64_t bf, df, saturated;
} acc;

/* 32-byte vectors at most: GCC keeps them in registers with AVX2 and splits
 * them in two without; wider ones end up on the stack. */
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint64_t u64x4 __attribute__((vector_size(32)));

/* Windows into these give "len ones then zeros" masks for a run's tail. */
static const uint8_t tail8[32] = {255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255};
static const uint16_t tail16[32] = {65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535,
                                    65535, 65535, 65535, 65535, 65535, 65535, 65535, 65535};
static const uint32_t tail32[16] = {~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u};

#define HSUM(v, ret)                                                                                                   \
        do {                                                                                                           \
                uint64_t s_ = 0;                                                                                       \
                for (unsigned i_ = 0; i_ < sizeof(v) / sizeof((v)[0]); i_++)                                           \
                        s_ += (v)[i_];                                                                                 \
                (ret) = s_;                                                                                            \
        } while (0)

/* x86-64 without -march gets an AVX2 clone chosen at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ROID_NO_CLONES)
#define KERNEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL_CLONES
#endif

/* One block of W pixels: drop saturated ones, count them, and feed the two
 * halves to the prefix accumulators P (sums) and Q (sums of earlier P). */
#define BLOCK(v, T, VT, HT, VA)                                                                                        \
        do {                                                                                                           \
                VT sat_ = (VT)((v) == (T) ~(T)0);                                                                      \
                (v) &= ~sat_;                                                                                          \
                cnt -= sat_;                                                                                           \
                HT lo_, hi_;                                                                                           \
                memcpy(&lo_, &(v), sizeof lo_);                                                                        \
                memcpy(&hi_, (const char *)&(v) + sizeof lo_, sizeof hi_);                                             \
                Q0 += P0;                                                                                              \
                Q1 += P1;                                                                                              \
                P0 += __builtin_convertvector(lo_, VA);                                                                \
                P1 += __builtin_convertvector(hi_, VA);                                                                \
        } while (0)

/* T pixel type; VT W of them; HT W/2 of them; VA W/2 accumulator lanes. */
#define DEFINE_KERNEL(NAME, T, VT, HT, VA, W, TAIL)                                                                    \
        KERNEL_CLONES static void NAME(const roid_geometry *g, const T *pix, acc *a) {                                 \
                const size_t npix = (size_t)g->rows * g->cols;                                                         \
                VA lane0 = {0}, lane1 = {0}, sat0 = {0}, sat1 = {0};                                                   \
                for (int i = 0; i < W / 2; i++) {                                                                      \
                        lane0[i] = (__typeof__(lane0[0]))i;                                                            \
                        lane1[i] = (__typeof__(lane1[0]))(i + W / 2);                                                  \
                }                                                                                                      \
                for (uint32_t y = 0; y < g->rows; y++) {                                                               \
                        const T *row = pix + (size_t)y * g->cols;                                                      \
                        const roid_run *run = g->runs + g->row_first_run[y];                                           \
                        const roid_run *end = g->runs + g->row_first_run[y + 1];                                       \
                        for (; run < end; run++) {                                                                     \
                                const T *p = row + run->x0;                                                            \
                                unsigned len = run->len, nb = 0;                                                       \
                                VA P0 = {0}, P1 = {0}, Q0 = {0}, Q1 = {0};                                             \
                                VT cnt = {0}, v;                                                                       \
                                for (; len >= W; len -= W, p += W, nb++) {                                             \
                                        memcpy(&v, p, sizeof v);                                                       \
                                        BLOCK(v, T, VT, HT, VA);                                                       \
                                }                                                                                      \
                                if (len) {                                                                             \
                                        if ((size_t)(p - pix) + W <= npix) {                                           \
                                                memcpy(&v, p, sizeof v);                                               \
                                        } else {                                                                       \
                                                T tmp[W] = {0};                                                        \
                                                memcpy(tmp, p, len * sizeof(T));                                       \
                                                memcpy(&v, tmp, sizeof v);                                             \
                                        }                                                                              \
                                        VT m;                                                                          \
                                        memcpy(&m, TAIL + W - len, sizeof m);                                          \
                                        v &= m;                                                                        \
                                        BLOCK(v, T, VT, HT, VA);                                                       \
                                        nb++;                                                                          \
                                }                                                                                      \
                                {                                                                                      \
                                        HT lo_, hi_;                                                                   \
                                        memcpy(&lo_, &cnt, sizeof lo_);                                                \
                                        memcpy(&hi_, (const char *)&cnt + sizeof lo_, sizeof hi_);                     \
                                        sat0 += __builtin_convertvector(lo_, VA);                                      \
                                        sat1 += __builtin_convertvector(hi_, VA);                                      \
                                }                                                                                      \
                                VA PS = P0 + P1, QS = Q0 + Q1, PL = P0 * lane0 + P1 * lane1;                           \
                                uint64_t s, sq, sl;                                                                    \
                                HSUM(PS, s);                                                                           \
                                HSUM(QS, sq);                                                                          \
                                HSUM(PL, sl);                                                                          \
                                const uint64_t st = (uint64_t)(nb - 1) * s - sq; /* sum over blocks k of k a_k */      \
                                const unsigned c = run->code, seg = c & CODE_SEG;                                      \
                                a->sum[seg] += s;                                                                      \
                                a->sx[seg] += (u128)run->x0 * s + sl + (u128)st * W;                                   \
                                a->sy[seg] += (u128)s * y;                                                             \
                                if (c & CODE_BF)                                                                       \
                                        a->bf += s;                                                                    \
                                if (c & CODE_DF)                                                                       \
                                        a->df += s;                                                                    \
                        }                                                                                              \
                }                                                                                                      \
                VA sats = sat0 + sat1;                                                                                 \
                HSUM(sats, a->saturated);                                                                              \
        }

DEFINE_KERNEL(kernel_u8, uint8_t, u8x16, u8x8, u32x8, 16, tail8)
DEFINE_KERNEL(kernel_u16, uint16_t, u16x16, u16x8, u32x8, 16, tail16)
DEFINE_KERNEL(kernel_u32, uint32_t, u32x8, u32x4, u64x4, 8, tail32)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_U16 1

/* The 16-bit kernel by hand for AVX2, the common case (EIGER 16-bit
 * streams).  Per block of 16 pixels it does 6 vector operations: flip the
 * sign bit (v' = v - 32768 as int16, so that vpmaddwd's signed products are
 * usable), track the row's maximum, and two vpmaddwd, by ones (the sum) and
 * by the offset within the run (the x moment); the 32768 per pixel this adds
 * is a constant taken back once per run.  RUN_MAX = 256 keeps the true sum
 * (< 2^24) and x moment (< 65535 * 256 * 255 / 2 < 2^32) of a run below 2^32,
 * so 32-bit lanes summed modulo 2^32 give them exactly.  Saturated pixels are
 * summed like the others and taken back by a scalar pass over the rare rows
 * whose maximum is 65535. */
static const int16_t run_offsets[RUN_MAX] __attribute__((aligned(32))) = {
#define O4(i)  i, i + 1, i + 2, i + 3
#define O16(i) O4(i), O4(i + 4), O4(i + 8), O4(i + 12)
#define O64(i) O16(i), O16(i + 16), O16(i + 32), O16(i + 48)
        O64(0), O64(64), O64(128), O64(192)
#undef O64
#undef O16
#undef O4
};

/* Takes back the saturated pixels of row y, which the vector pass summed. */
static void unsaturate_row_u16(const roid_geometry *g, const uint16_t *row, uint32_t y, acc *a) {
        const roid_run *run = g->runs + g->row_first_run[y], *end = g->runs + g->row_first_run[y + 1];
        for (; run < end; run++) {
                const unsigned seg = run->code & CODE_SEG;
                for (uint32_t x = run->x0; x < run->x0 + run->len; x++) {
                        if (row[x] != UINT16_MAX)
                                continue;
                        a->saturated++;
                        a->sum[seg] -= UINT16_MAX;
                        a->sx[seg] -= (u128)UINT16_MAX * x;
                        a->sy[seg] -= (u128)UINT16_MAX * y;
                        if (run->code & CODE_BF)
                                a->bf -= UINT16_MAX;
                        if (run->code & CODE_DF)
                                a->df -= UINT16_MAX;
                }
        }
}

__attribute__((target("avx2"))) static void kernel_u16_avx2(const roid_geometry *g, const uint16_t *pix, acc *a) {
        const size_t npix = (size_t)g->rows * g->cols;
        const __m256i zero = _mm256_setzero_si256(), flip = _mm256_set1_epi16(INT16_MIN);
        const __m256i ones = _mm256_set1_epi16(1), top = _mm256_set1_epi16(INT16_MAX);
        for (uint32_t y = 0; y < g->rows; y++) {
                const uint16_t *row = pix + (size_t)y * g->cols;
                const roid_run *run = g->runs + g->row_first_run[y];
                const roid_run *end = g->runs + g->row_first_run[y + 1];
                __m256i hi = flip;
                for (; run < end; run++) {
                        const uint16_t *p = row + run->x0;
                        const __m256i *w = (const __m256i *)run_offsets;
                        unsigned len = run->len;
                        __m256i S = zero, X = zero, v;
#define BLOCK16(v, w)                                                                                                  \
        do {                                                                                                           \
                hi = _mm256_max_epi16(hi, v);                                                                          \
                S = _mm256_add_epi32(S, _mm256_madd_epi16(v, ones));                                                   \
                X = _mm256_add_epi32(X, _mm256_madd_epi16(v, _mm256_load_si256(w)));                                   \
        } while (0)
                        for (; len >= 16; len -= 16, p += 16, w++) {
                                v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), flip);
                                BLOCK16(v, w);
                        }
                        if (len) {
                                if ((size_t)(p - pix) + 16 <= npix) {
                                        v = _mm256_loadu_si256((const __m256i *)p);
                                } else {
                                        uint16_t tmp[16] = {0};
                                        memcpy(tmp, p, len * sizeof *p);
                                        v = _mm256_loadu_si256((const __m256i *)tmp);
                                }
                                v = _mm256_and_si256(v, _mm256_loadu_si256((const __m256i *)(tail16 + 16 - len)));
                                v = _mm256_xor_si256(v, flip);
                                BLOCK16(v, w);
                        }
#undef BLOCK16
                        /* lanes 0-3 of r: S low half, S high half, X low, X high (mod 2^32) */
                        const __m256i h = _mm256_hadd_epi32(S, X);
                        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                        r = _mm_hadd_epi32(r, r);
                        const uint32_t n = (run->len + 15u) & ~15u; /* pixels summed, with the tail's zeros */
                        const uint64_t s = (uint32_t)((uint32_t)_mm_cvtsi128_si32(r) + 32768u * n);
                        const uint64_t sl = (uint32_t)((uint32_t)_mm_extract_epi32(r, 1) + 32768u * (n * (n - 1) / 2));
                        const unsigned c = run->code, seg = c & CODE_SEG;
                        a->sum[seg] += s;
                        a->sx[seg] += (uint64_t)run->x0 * s + sl;
                        a->sy[seg] += (uint64_t)y * s;
                        if (c & CODE_BF)
                                a->bf += s;
                        if (c & CODE_DF)
                                a->df += s;
                }
                if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(hi, top)))
                        unsaturate_row_u16(g, row, y, a);
        }
}
#endif

static int use_simd = 1;

void roid_features_use_simd(int on) {
        use_simd = on;
}

static double ratio(u128 num, uint64_t den) {
        return (double)num / (double)den;
}

int roid_features_compute(const roid_geometry *g, const roid_frame *f, roid_features *ret, roid_err *err) {
        if (f->dtype != g->dtype || f->rows != g->rows || f->cols != g->cols || !f->pixels)
                return roid_err_set(
                        err, -EINVAL, "frame %s %" PRIu32 " x %" PRIu32 ": geometry expects %s %" PRIu32 " x %" PRIu32,
                        roid_dtype_name(f->dtype), f->rows, f->cols, roid_dtype_name(g->dtype), g->rows, g->cols);
        acc a;
        memset(&a, 0, sizeof a);
        switch (g->dtype) {
        case ROID_DT_U8:
                kernel_u8(g, f->pixels, &a);
                break;
        case ROID_DT_U16:
#ifdef HAVE_AVX2_U16
                if (use_simd && __builtin_cpu_supports("avx2")) {
                        kernel_u16_avx2(g, f->pixels, &a);
                        break;
                }
#endif
                kernel_u16(g, f->pixels, &a);
                break;
        default:
                kernel_u32(g, f->pixels, &a);
                break;
        }
        roid_features *o = ret;
        memset(o, 0, sizeof *o);
        u128 sx = 0, sy = 0;
        uint64_t t = 0;
        o->n_segments = g->n_segments;
        for (unsigned s = 0; s < g->n_segments; s++) {
                t += a.sum[s];
                sx += a.sx[s];
                sy += a.sy[s];
                o->seg[s].sum_u64 = a.sum[s];
                o->seg[s].sum = (double)a.sum[s];
                o->seg[s].com_x = a.sum[s] ? ratio(a.sx[s], a.sum[s]) : g->center_x;
                o->seg[s].com_y = a.sum[s] ? ratio(a.sy[s], a.sum[s]) : g->center_y;
        }
        o->total_u64 = t;
        o->total = (double)t;
        o->com_x = t ? ratio(sx, t) : g->center_x;
        o->com_y = t ? ratio(sy, t) : g->center_y;
        o->bf_u64 = a.bf;
        o->df_u64 = a.df;
        o->bf = (double)a.bf;
        o->df = (double)a.df;
        o->saturated = a.saturated;
        o->masked = g->n_static_masked + a.saturated;
        o->n_pixels = (uint64_t)g->rows * g->cols - o->masked;
        return 0;
}

/* ---- beam centre ---- */

#define HIST_BINS 4096

static inline uint64_t pixel_at(const roid_frame *f, size_t i) {
        switch (f->dtype) {
        case ROID_DT_U8:
                return ((const uint8_t *)f->pixels)[i];
        case ROID_DT_U16:
                return ((const uint16_t *)f->pixels)[i];
        default:
                return ((const uint32_t *)f->pixels)[i];
        }
}

/* Index of the median of a histogram of n entries. */
static uint32_t hist_median(const uint64_t *h, uint32_t len, uint64_t n) {
        uint64_t c = 0;
        for (uint32_t i = 0; i < len; i++) {
                c += h[i];
                if (2 * c >= n)
                        return i;
        }
        return len - 1;
}

int roid_estimate_beam_center(const roid_frame *f, const uint32_t *mask, double *ret_x, double *ret_y, roid_err *err) {
        if (!dtype_ok(f->dtype) || !f->pixels || f->rows == 0 || f->cols == 0 ||
            (uint64_t)f->rows * f->cols > ROID_GEOM_MAX_PIXELS)
                return roid_err_set(err, -EINVAL, "frame %s %" PRIu32 " x %" PRIu32 ": not a frame roid can use",
                                    roid_dtype_name(f->dtype), f->rows, f->cols);
        const size_t n = (size_t)f->rows * f->cols;
        uint64_t vmax = 0, usable = 0;
        for (size_t i = 0; i < n; i++) {
                if (mask && mask[i])
                        continue;
                uint64_t v = pixel_at(f, i);
                usable++;
                if (v > vmax)
                        vmax = v;
        }
        if (vmax == 0)
                return roid_err_set(err, -ENODATA, "beam centre: no unmasked pixel above 0 in %" PRIu32 " x %" PRIu32,
                                    f->rows, f->cols);

        /* 1. the level of the brightest pixels, from a histogram */
        uint64_t hist[HIST_BINS] = {0};
        for (size_t i = 0; i < n; i++)
                if (!(mask && mask[i]))
                        hist[pixel_at(f, i) * HIST_BINS / (vmax + 1)]++;
        uint64_t want = usable / 1000 > 16 ? usable / 1000 : 16, c = 0;
        uint32_t b = HIST_BINS - 1;
        for (;; b--) {
                c += hist[b];
                if (c >= want || b == 0)
                        break;
        }
        uint64_t t_hi = ((uint64_t)b * (vmax + 1) + HIST_BINS - 1) / HIST_BINS; /* smallest value in bin b */
        if (t_hi < 1)
                t_hi = 1;
        const uint64_t t_half = (t_hi + 1) / 2;

        /* 2. the median position of the brightest pixels */
        uint64_t *hx = calloc((size_t)f->cols + f->rows, sizeof *hx);
        if (!hx)
                return -ENOMEM;
        uint64_t *hy = hx + f->cols, n_hi = 0, n_half = 0;
        for (uint32_t y = 0; y < f->rows; y++)
                for (uint32_t x = 0; x < f->cols; x++) {
                        size_t i = (size_t)y * f->cols + x;
                        if (mask && mask[i])
                                continue;
                        uint64_t v = pixel_at(f, i);
                        n_half += v >= t_half;
                        if (v < t_hi)
                                continue;
                        hx[x]++;
                        hy[y]++;
                        n_hi++;
                }
        double ex = hist_median(hx, f->cols, n_hi), ey = hist_median(hy, f->rows, n_hi);
        free(hx);

        /* 3. centroid of the half-maximum region near it */
        const double rad = 1.5 * sqrt((double)n_half / M_PI) + 4.0;
        for (int it = 0; it < 5; it++) {
                const long y0 = lround(fmax(0, ceil(ey - rad))), y1 = lround(fmin(f->rows - 1.0, floor(ey + rad)));
                const long x0 = lround(fmax(0, ceil(ex - rad))), x1 = lround(fmin(f->cols - 1.0, floor(ex + rad)));
                double sw = 0, swx = 0, swy = 0;
                for (long y = y0; y <= y1; y++)
                        for (long x = x0; x <= x1; x++) {
                                if ((x - ex) * (x - ex) + (y - ey) * (y - ey) > rad * rad)
                                        continue;
                                size_t i = (size_t)y * f->cols + (size_t)x;
                                uint64_t v = pixel_at(f, i);
                                if ((mask && mask[i]) || v < t_half)
                                        continue;
                                /* Only pixels whose mirror image through the estimate is usable: a
                                 * module gap across the beam must not pull the centroid. */
                                const long mx = lround(2 * ex - (double)x), my = lround(2 * ey - (double)y);
                                if (mx < 0 || my < 0 || mx >= (long)f->cols || my >= (long)f->rows ||
                                    (mask && mask[(size_t)my * f->cols + (size_t)mx]))
                                        continue;
                                double w = (double)(v - t_half + 1);
                                sw += w;
                                swx += w * (double)x;
                                swy += w * (double)y;
                        }
                if (sw == 0)
                        break;
                ex = swx / sw;
                ey = swy / sw;
        }
        *ret_x = ex;
        *ret_y = ey;
        return 0;
}
