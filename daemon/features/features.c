/* features.c - see features.h.
 *
 * The per-frame pass walks runs: stretches of one row whose pixels share a
 * segment and disk flags and are not masked.  A wedge of at most 180 degrees
 * meets a row in one interval and a disk or an annulus in at most two, so a
 * row has about S + 6 runs plus one per masked stretch.  The geometry finds a
 * row's segment edges with a few calls of segment_of per edge (the azimuth is
 * monotonic along a row), not one per pixel.  Inside a run the pixels are
 * summed with vectors: hand-written AVX2 kernels for uint16 and uint32, GCC
 * vector extensions for the rest (so any target works), where the x moment
 * comes from the block-prefix identity
 *     sum_k k a_k = (n - 1) sum_k a_k - sum_k (a_0 + ... + a_{k-1})
 * which needs only additions per block, and one reduction per run.  Run sums
 * go to per-code accumulators, folded into segments, disk and annulus once
 * per frame.
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

/* A block of the AVX-512 walk: up to 16 pixels of one run (bit i of mask:
 * pixel x0 + i), at o = y * cols + x0. */
struct roid_block {
        uint32_t o;
        uint16_t mask;
        uint8_t code;
        uint8_t pad;
        uint32_t x0, y;
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

/* Where segment_of is monotonic in x along a row, the first column in
 * (lo, hi] whose segment is not s, given that column lo is in s and counting
 * hi as outside; guess is where the edge is expected (any value works, a good
 * one costs about two calls). */
static uint32_t segment_end(double dy, double cx, unsigned n_seg, unsigned s, uint32_t lo, uint32_t hi, double guess) {
#define SEG_AT(x) segment_of((double)(x)-cx, dy, n_seg)
        if (hi - lo <= 1)
                return hi;
        uint32_t g = lo + 1;
        if (guess >= (double)hi - 1)
                g = hi - 1;
        else if (guess > (double)lo + 1)
                g = (uint32_t)guess;
        if (SEG_AT(g) == s) {
                lo = g;
                for (uint32_t step = 1; hi - lo > step; step *= 2) {
                        if (SEG_AT(lo + step) != s) {
                                hi = lo + step;
                                break;
                        }
                        lo += step;
                }
        } else {
                hi = g;
                for (uint32_t step = 1; hi - lo > step; step *= 2) {
                        if (SEG_AT(hi - step) == s) {
                                lo = hi - step;
                                break;
                        }
                        hi -= step;
                }
        }
        while (hi - lo > 1) {
                const uint32_t mid = lo + (hi - lo) / 2;
                if (SEG_AT(mid) == s)
                        lo = mid;
                else
                        hi = mid;
        }
        return hi;
#undef SEG_AT
}

/* Segment edges of one row: the row is in segment s[k] from column x[k] on. */
typedef struct {
        unsigned n;
        uint32_t x[ROID_MAX_SEGMENTS + 1];
        unsigned s[ROID_MAX_SEGMENTS + 1];
} row_edges;

/* Finds the edges of row dy with segment_of itself, so that they are exactly
 * its per-pixel classification.  Along a row the azimuth is monotonic in x
 * (dy > 0: decreasing, dy < 0: increasing, dy = 0: two values), so each
 * segment is one interval, and the ends of the intervals are found by a
 * search near the exact edge cx + dy cot(theta).  That holds for the computed
 * segment_of too as long as neighbouring pixels' angles differ by far more
 * than its rounding (a few 1e-16 rad): the angle step between neighbours is
 * at least |dy| / (D^2 + dy^2), D the farthest |dx| + 1.  Rows where it is
 * below 1e-12 rad (a beam centre within ~1e-6 pixel of the row, or very far)
 * return false: their pixels are classified one by one. */
static bool find_row_edges(double dy, const roid_geometry_params *p, const double *cot, row_edges *e) {
        const unsigned n_seg = p->n_segments;
        const uint32_t cols = p->cols;
        e->n = 0;
        if (n_seg == 1) {
                e->x[0] = 0, e->s[0] = 0, e->n = 1;
                return true;
        }
        const double D = fmax(fabs(p->center_x), fabs((double)cols - 1 - p->center_x)) + 1;
        if (dy != 0 && fabs(dy) / (D * D + dy * dy) < 1e-12)
                return false;
        uint32_t x = 0;
        unsigned s = segment_of(0.0 - p->center_x, dy, n_seg);
        for (;;) {
                if (e->n == ROID_MAX_SEGMENTS + 1)
                        return false; /* not monotonic after all */
                e->x[e->n] = x, e->s[e->n] = s, e->n++;
                /* the edge this row leaves s by: dy > 0 the start of s, dy < 0 its end */
                const double guess = p->center_x + dy * cot[dy > 0 ? s : s + 1];
                x = segment_end(dy, p->center_x, n_seg, s, x, cols, guess);
                if (x >= cols)
                        return true;
                s = segment_of((double)x - p->center_x, dy, n_seg);
        }
}

/* The blocks of the AVX-512 walk (see kernel_u16x4_avx512), for the frames
 * that go through it: uint16, four at a time, at most 4096 columns (their
 * column numbers times a 16-bit pixel, 16 of them, stay within 32 bits) and
 * 4096 rows (a flag per row on the stack), and short runs: at most two blocks
 * a run on average.  The walk reduces once a block, the run walk once a run;
 * with longer runs the run walk is faster (development machine, from memory:
 * 192 x 192, 2.5-3.5 blocks a run, 7 % faster; 96 x 96 at S = 8, 1.5 blocks a
 * run, 12 % slower; 96 x 96 at S = 1, 1.9, within 5 % either way). */
static int make_blocks(roid_geometry *g) {
        if (g->dtype != ROID_DT_U16 || (uint64_t)g->rows * g->cols * 2 > ROID_FEATURES_MANY_BYTES ||
            g->cols > ROID_FEATURES_BLOCK_COLS || g->rows > ROID_FEATURES_BLOCK_ROWS)
                return 0;
        size_t n = 0;
        for (size_t i = 0; i < g->n_runs; i++)
                n += (g->runs[i].len + 15u) / 16;
        if (n > 2 * g->n_runs)
                return 0;
        g->blocks = malloc((n ? n : 1) * sizeof *g->blocks);
        g->columns = malloc(((size_t)g->cols + 16) * sizeof *g->columns);
        if (!g->blocks || !g->columns)
                return -ENOMEM;
        for (uint32_t x = 0; x < g->cols + 16; x++)
                g->columns[x] = (int16_t)x; /* past cols: read by a tail block, weighing zeros */
        for (uint32_t y = 0; y < g->rows; y++)
                for (uint32_t i = g->row_first_run[y]; i < g->row_first_run[y + 1]; i++) {
                        const roid_run *run = &g->runs[i];
                        for (unsigned k = 0; k < run->len; k += 16) {
                                const unsigned len = run->len - k < 16 ? run->len - k : 16;
                                g->blocks[g->n_blocks++] = (roid_block){.o = y * g->cols + run->x0 + k,
                                                                        .mask = (uint16_t)((1u << len) - 1),
                                                                        .code = run->code,
                                                                        .x0 = run->x0 + k,
                                                                        .y = y};
                        }
                }
        return 0;
}

/* The columns [*ret_a, *ret_b) of row dy, within [0, cols), where d2 < r2
 * as the per-pixel test computes it (dx = x - cx, d2 = dx dx + dy dy):
 * rounding is monotonic, so d2 only grows with |dx| and the set is one
 * interval.  Its ends come from a square root and are then moved onto the
 * exact test, a step or two. */
static void disk_span(double dy, double cx, double r2, uint32_t cols, uint32_t *ret_a, uint32_t *ret_b) {
#define IN_DISK(x) (((double)(x)-cx) * ((double)(x)-cx) + dy * dy < r2)
        /* the column nearest the centre: if not in the disk, none is */
        const double near = cx <= 0 ? 0 : cx >= cols - 1 ? cols - 1 : floor(cx);
        uint32_t m = (uint32_t)near;
        if (!IN_DISK(m) && !(m + 1 < cols && IN_DISK(m + 1))) {
                *ret_a = *ret_b = 0;
                return;
        }
        if (!IN_DISK(m))
                m++;
        const double h = sqrt(fmax(r2 - dy * dy, 0.0)), lo = ceil(cx - h), hi = floor(cx + h) + 1;
        uint32_t a = lo <= 0 ? 0 : lo >= m ? m : (uint32_t)lo;
        uint32_t b = hi <= m + 1 ? m + 1 : hi >= cols ? cols : (uint32_t)hi;
        while (a > 0 && IN_DISK(a - 1))
                a--;
        while (!IN_DISK(a)) /* stops at m */
                a++;
        while (b < cols && IN_DISK(b))
                b++;
        while (!IN_DISK(b - 1)) /* stops at m + 1 */
                b--;
        *ret_a = a;
        *ret_b = b;
#undef IN_DISK
}

/* Builds the runs of a row from the pixels' codes, one change of code (or a
 * run of RUN_MAX) at a time. */
typedef struct {
        roid_geometry *g;
        size_t *cap;
        uint32_t y, start;
        unsigned cur;
} row_runs;

#define EXCL 0x100u /* a code of no run: masked, or past the row */

/* Column x has code `code`. */
static int row_step(row_runs *rr, uint32_t x, unsigned code) {
        if (code == rr->cur && x - rr->start != RUN_MAX)
                return 0;
        if (rr->cur != EXCL) {
                roid_geometry *g = rr->g;
                const uint32_t start = rr->start;
                const int r = push_run(g, rr->cap, start, x - start, rr->cur);
                if (r < 0)
                        return r;
                const uint64_t len = x - start;
                g->seg_pixels[rr->cur & CODE_SEG] += len;
                g->seg_sum_x[rr->cur & CODE_SEG] += len * start + len * (len - 1) / 2;
                g->seg_sum_y[rr->cur & CODE_SEG] += len * rr->y;
                g->bf_pixels += rr->cur & CODE_BF ? len : 0;
                g->df_pixels += rr->cur & CODE_DF ? len : 0;
        }
        rr->cur = code;
        rr->start = x;
        return 0;
}

/* Columns [u, v) all have code `code` but where masked. */
static int row_span(row_runs *rr, const uint32_t *mrow, uint32_t u, uint32_t v, unsigned code) {
        int r;
        for (uint32_t x = u; x < v;) {
                uint32_t e = x;
                if (mrow && mrow[x]) {
                        while (e < v && mrow[e])
                                e++;
                        rr->g->n_static_masked += e - x;
                        if ((r = row_step(rr, x, EXCL)) < 0)
                                return r;
                        x = e;
                        continue;
                }
                if (!mrow)
                        e = v;
                /* eight words at a time: most of a row is not masked */
                while (e + 8 <= v && !(mrow[e] | mrow[e + 1] | mrow[e + 2] | mrow[e + 3] | mrow[e + 4] | mrow[e + 5] |
                                       mrow[e + 6] | mrow[e + 7]))
                        e += 8;
                while (e < v && !mrow[e])
                        e++;
                if ((r = row_step(rr, x, code)) < 0)
                        return r;
                while (e - rr->start > RUN_MAX) /* where the pixel walk cut a run at RUN_MAX */
                        if ((r = row_step(rr, rr->start + RUN_MAX, code)) < 0)
                                return r;
                x = e;
        }
        return 0;
}

static int cmp_u32(const void *a, const void *b) {
        const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return (x > y) - (x < y);
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
        /* cot of each segment edge, for the first guess of where a row crosses it */
        double cot[ROID_MAX_SEGMENTS + 1];
        for (unsigned k = 0; k <= p->n_segments; k++) {
                const double th = 2.0 * M_PI * k / p->n_segments;
                cot[k] = cos(th) / sin(th);
        }
        const double bf2 = p->r_bf * p->r_bf, in2 = p->r_df_in * p->r_df_in, out2 = p->r_df_out * p->r_df_out;
        row_edges e;
        for (uint32_t y = 0; y < p->rows; y++) {
                ng.row_first_run[y] = (uint32_t)ng.n_runs;
                const uint32_t *mrow = p->mask ? p->mask + (size_t)y * p->cols : NULL;
                const double dy = (double)y - p->center_y;
                row_runs rr = {.g = &ng, .cap = &cap, .y = y, .start = 0, .cur = EXCL};
                if (!find_row_edges(dy, p, cot, &e)) {
                        /* the rare row the edges cannot be searched on: pixel by pixel */
                        for (uint32_t x = 0; x < p->cols; x++) {
                                const double dx = (double)x - p->center_x, d2 = dx * dx + dy * dy;
                                const unsigned code = segment_of(dx, dy, p->n_segments) | (d2 < bf2 ? CODE_BF : 0) |
                                                      (d2 >= in2 && d2 < out2 ? CODE_DF : 0);
                                if ((r = row_span(&rr, mrow, x, x + 1, code)) < 0)
                                        goto fail;
                        }
                } else {
                        /* Along the row the code changes only at a segment edge or a
                         * circle's: between them one span of one code. */
                        uint32_t bf[2], in[2], out[2], cut[ROID_MAX_SEGMENTS + 8];
                        disk_span(dy, p->center_x, bf2, p->cols, &bf[0], &bf[1]);
                        disk_span(dy, p->center_x, in2, p->cols, &in[0], &in[1]);
                        disk_span(dy, p->center_x, out2, p->cols, &out[0], &out[1]);
                        unsigned n = 0;
                        for (unsigned k = 0; k < e.n; k++)
                                cut[n++] = e.x[k];
                        cut[n++] = bf[0], cut[n++] = bf[1], cut[n++] = in[0], cut[n++] = in[1];
                        cut[n++] = out[0], cut[n++] = out[1], cut[n++] = p->cols;
                        qsort(cut, n, sizeof *cut, cmp_u32);
                        unsigned k = 0, seg = 0;
                        for (unsigned c = 0; c + 1 < n; c++) {
                                const uint32_t u = cut[c], v = cut[c + 1];
                                if (u == v || u >= p->cols)
                                        continue;
                                while (k < e.n && e.x[k] <= u)
                                        seg = e.s[k++];
                                const bool in_bf = u >= bf[0] && u < bf[1];
                                const bool in_df = u >= out[0] && u < out[1] && !(u >= in[0] && u < in[1]);
                                const unsigned code = seg | (in_bf ? CODE_BF : 0) | (in_df ? CODE_DF : 0);
                                if ((r = row_span(&rr, mrow, u, v, code)) < 0)
                                        goto fail;
                        }
                }
                if ((r = row_step(&rr, p->cols, EXCL)) < 0)
                        goto fail;
        }
        ng.row_first_run[p->rows] = (uint32_t)ng.n_runs;
        if ((r = make_blocks(&ng)) < 0)
                goto fail;
        *g = ng;
        return 0;
fail:
        free(ng.runs);
        free(ng.row_first_run);
        free(ng.blocks);
        free(ng.columns);
        return r;
}

void roid_geometry_free(roid_geometry *g) {
        if (!g)
                return;
        free(g->runs);
        free(g->row_first_run);
        free(g->blocks);
        free(g->columns);
        memset(g, 0, sizeof *g);
}

/* ---- the per-frame pass ---- */

/* Sums per run code (segment | BF | DF), folded into segments, disk and
 * annulus once per frame: no branch per run on the flags.  All moments are
 * below rows * cols * max * max(rows, cols); when that is below 2^64 (any
 * 4-Mpixel frame at 32 bits, a 16M at 16 bits) the "narrow" kernels keep them
 * in 64 bits, otherwise the "wide" ones in 128.  Only the entries of the
 * geometry's codes are cleared and read. */
#define N_CODES 256
typedef struct {
        uint64_t sum[N_CODES];
        uint64_t saturated;
        uint32_t offset; /* subtracted from every pixel by the kernel, to add back */
        union {
                struct {
                        uint64_t sx[N_CODES], sy[N_CODES];
                } n;
                struct {
                        u128 sx[N_CODES], sy[N_CODES];
                } w;
        };
} acc;

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* A run of code c at (x0, y): its sum s and in-run x moment sl = sum of
 * I * (x - x0), which RUN_MAX keeps below 2^48 in magnitude; negative when the
 * kernel subtracted an offset.  Sums wrap modulo 2^64 or 2^128: the totals,
 * offset added back, are in range. */
static ALWAYS_INLINE void add_run(acc *a, const bool wide, unsigned c, int64_t s, int64_t sl, uint32_t x0, uint32_t y) {
        a->sum[c] += (uint64_t)s;
        if (wide) {
                a->w.sx[c] += (u128)((__int128)x0 * s + sl);
                a->w.sy[c] += (u128)((__int128)y * s);
        } else {
                a->n.sx[c] += (uint64_t)x0 * (uint64_t)s + (uint64_t)sl;
                a->n.sy[c] += (uint64_t)y * (uint64_t)s;
        }
}

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

/* The portable kernels.  T pixel type; VT W of them; HT W/2 of them; VA W/2
 * accumulator lanes. */
#define DEFINE_KERNEL(NAME, T, VT, HT, VA, W, TAIL, WIDE)                                                              \
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
                                add_run(a, WIDE, run->code, (int64_t)s, (int64_t)(sl + st * W), run->x0, y);           \
                        }                                                                                              \
                }                                                                                                      \
                VA sats = sat0 + sat1;                                                                                 \
                HSUM(sats, a->saturated);                                                                              \
        }

DEFINE_KERNEL(kernel_u8_n, uint8_t, u8x16, u8x8, u32x8, 16, tail8, false)
DEFINE_KERNEL(kernel_u8_w, uint8_t, u8x16, u8x8, u32x8, 16, tail8, true)
DEFINE_KERNEL(kernel_u16_n, uint16_t, u16x16, u16x8, u32x8, 16, tail16, false)
DEFINE_KERNEL(kernel_u16_w, uint16_t, u16x16, u16x8, u32x8, 16, tail16, true)
DEFINE_KERNEL(kernel_u32_n, uint32_t, u32x8, u32x4, u64x4, 8, tail32, false)
DEFINE_KERNEL(kernel_u32_w, uint32_t, u32x8, u32x4, u64x4, 8, tail32, true)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2   1
#define AVX2_INLINE __attribute__((target("avx2"))) static ALWAYS_INLINE

/* Takes back the saturated pixels (all bits set) of row y, which a vector
 * pass summed; elem: 2 or 4 bytes a pixel.  Rare: rows with a hot pixel. */
__attribute__((target("avx2"))) static void unsaturate_row(const roid_geometry *g, const void *pix, unsigned elem,
                                                           uint32_t y, acc *a, const bool wide) {
        const size_t nbytes = (size_t)g->rows * g->cols * elem;
        const char *row = (const char *)pix + (size_t)y * g->cols * elem;
        const unsigned per = 32 / elem;
        const uint32_t maxv = elem == 2 ? UINT16_MAX : UINT32_MAX;
        const __m256i top = _mm256_set1_epi8(-1);
        const roid_run *run = g->runs + g->row_first_run[y], *end = g->runs + g->row_first_run[y + 1];
        for (; run < end; run++) {
                const unsigned c = run->code;
                for (unsigned k = 0; k < run->len; k += per) {
                        const char *p = row + (size_t)(run->x0 + k) * elem;
                        const unsigned n = run->len - k < per ? run->len - k : per;
                        __m256i v;
                        if ((size_t)(p - (const char *)pix) + 32 <= nbytes) {
                                v = _mm256_loadu_si256((const __m256i *)p);
                        } else {
                                char tmp[32] = {0};
                                memcpy(tmp, p, n * elem);
                                v = _mm256_loadu_si256((const __m256i *)tmp);
                        }
                        uint32_t m = (uint32_t)_mm256_movemask_epi8(elem == 2 ? _mm256_cmpeq_epi16(v, top)
                                                                              : _mm256_cmpeq_epi32(v, top));
                        if (n < per)
                                m &= (1u << (n * elem)) - 1;
                        while (m) {
                                const unsigned i = (unsigned)__builtin_ctz(m) / elem;
                                const uint32_t x = run->x0 + k + i;
                                m &= ~(((1u << elem) - 1) << (i * elem));
                                a->saturated++;
                                a->sum[c] -= maxv;
                                if (wide) {
                                        a->w.sx[c] -= (u128)maxv * x;
                                        a->w.sy[c] -= (u128)maxv * y;
                                } else {
                                        a->n.sx[c] -= (uint64_t)maxv * x;
                                        a->n.sy[c] -= (uint64_t)maxv * y;
                                }
                        }
                }
        }
}

/* The 16-bit kernel by hand for AVX2, the common case (EIGER 16-bit
 * streams).  Per block of 16 pixels it does 6 vector operations: flip the
 * sign bit (v' = v - 32768 as int16, so that vpmaddwd's signed products are
 * usable), track the row's maximum, and two vpmaddwd, by ones (the sum) and
 * by the offset within the run (the x moment).  A run's sum of v' (at most
 * 32768 * 256 = 2^23 in magnitude) and x moment (at most 32768 * 256 * 255 / 2
 * < 2^31) fit signed 32-bit lanes, so no lane can overflow; they are summed
 * as they are and the 32768 per pixel is added back once per frame from the
 * geometry's pixel counts and sums of x and y.  Saturated pixels are summed
 * like the others and taken back by a scalar pass over the rare rows whose
 * maximum is 65535. */
static const int16_t run_offsets[RUN_MAX] __attribute__((aligned(32))) = {
#define O4(i)  i, i + 1, i + 2, i + 3
#define O16(i) O4(i), O4(i + 4), O4(i + 8), O4(i + 12)
#define O64(i) O16(i), O16(i + 16), O16(i + 32), O16(i + 48)
        O64(0), O64(64), O64(128), O64(192)
#undef O64
#undef O16
#undef O4
};

/* Rows y0..y1-1; check: whether a tail block may reach past the frame. */
AVX2_INLINE void rows_u16_avx2(const roid_geometry *g, const uint16_t *pix, acc *a, const bool wide, uint32_t y0,
                               uint32_t y1, const bool check) {
        const size_t npix = (size_t)g->rows * g->cols;
        const __m256i zero = _mm256_setzero_si256(), flip = _mm256_set1_epi16(INT16_MIN);
        const __m256i ones = _mm256_set1_epi16(1), top = _mm256_set1_epi16(INT16_MAX);
        for (uint32_t y = y0; y < y1; y++) {
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
                                if (!check || (size_t)(p - pix) + 16 <= npix) {
                                        v = _mm256_loadu_si256((const __m256i *)p);
                                } else {
                                        uint16_t tmp[16] = {0};
                                        memcpy(tmp, p, len * sizeof *p);
                                        v = _mm256_loadu_si256((const __m256i *)tmp);
                                }
                                v = _mm256_xor_si256(v, flip);
                                v = _mm256_and_si256(v, _mm256_loadu_si256((const __m256i *)(tail16 + 16 - len)));
                                BLOCK16(v, w);
                        }
#undef BLOCK16
                        /* lanes 0-1 of r: the run's sum and x moment of v' */
                        const __m256i h = _mm256_hadd_epi32(S, X);
                        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                        r = _mm_hadd_epi32(r, r);
                        const int64_t sx = _mm_cvtsi128_si64(r);
                        add_run(a, wide, run->code, (int32_t)sx, sx >> 32, run->x0, y);
                }
                if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(hi, top)))
                        unsaturate_row(g, pix, 2, y, a, wide);
        }
}

/* A tail block (16 pixels from inside a row) stays in the frame for all rows
 * but the last 16 / cols + 1. */
AVX2_INLINE void kernel_u16_avx2(const roid_geometry *g, const uint16_t *pix, acc *a, const bool wide) {
        const uint32_t n_check = 16 / g->cols + 1, y_check = g->rows > n_check ? g->rows - n_check : 0;
        a->offset = 32768;
        rows_u16_avx2(g, pix, a, wide, 0, y_check, false);
        rows_u16_avx2(g, pix, a, wide, y_check, g->rows, true);
}

/* The 32-bit kernel by hand for AVX2 (EIGER 32-bit streams).  Per block of 8
 * pixels: the row's maximum, the even and odd pixels' sums in 64-bit lanes,
 * and the x moment by _mm256_mul_epu32 (32 x 32 -> 64 bits, even lanes) of
 * the pixels by their offsets within the run, all exact.  The tail is read
 * with a masked load, which never touches memory past the run.  Saturated
 * pixels as in the 16-bit kernel. */
#define E4(i)     i, i, i + 2, i + 2
#define D4(i)     i + 1, i + 1, i + 3, i + 3
#define X16(F, i) F(i), F(i + 4), F(i + 8), F(i + 12)
#define X64(F, i) X16(F, i), X16(F, i + 16), X16(F, i + 32), X16(F, i + 48)
/* offs_even / offs_odd: lane 2i of block k holds 8k + 2i / 8k + 2i + 1 */
static const uint32_t offs_even[RUN_MAX]
        __attribute__((aligned(32))) = {X64(E4, 0), X64(E4, 64), X64(E4, 128), X64(E4, 192)};
static const uint32_t offs_odd[RUN_MAX]
        __attribute__((aligned(32))) = {X64(D4, 0), X64(D4, 64), X64(D4, 128), X64(D4, 192)};
#undef X64
#undef X16
#undef D4
#undef E4

AVX2_INLINE void kernel_u32_avx2(const roid_geometry *g, const uint32_t *pix, acc *a, const bool wide) {
        const __m256i zero = _mm256_setzero_si256(), lo32 = _mm256_set1_epi64x(UINT32_MAX);
        const __m256i top = _mm256_set1_epi32(-1);
        for (uint32_t y = 0; y < g->rows; y++) {
                const uint32_t *row = pix + (size_t)y * g->cols;
                const roid_run *run = g->runs + g->row_first_run[y];
                const roid_run *end = g->runs + g->row_first_run[y + 1];
                __m256i hi = zero;
                for (; run < end; run++) {
                        const uint32_t *p = row + run->x0;
                        const __m256i *we = (const __m256i *)offs_even, *wo = (const __m256i *)offs_odd;
                        unsigned len = run->len;
                        __m256i Se = zero, So = zero, X = zero, v;
#define BLOCK8(v)                                                                                                      \
        do {                                                                                                           \
                const __m256i o_ = _mm256_srli_epi64(v, 32);                                                           \
                hi = _mm256_max_epu32(hi, v);                                                                          \
                Se = _mm256_add_epi64(Se, _mm256_and_si256(v, lo32));                                                  \
                So = _mm256_add_epi64(So, o_);                                                                         \
                X = _mm256_add_epi64(X, _mm256_add_epi64(_mm256_mul_epu32(v, _mm256_load_si256(we)),                   \
                                                         _mm256_mul_epu32(o_, _mm256_load_si256(wo))));                \
        } while (0)
                        for (; len >= 8; len -= 8, p += 8, we++, wo++) {
                                v = _mm256_loadu_si256((const __m256i *)p);
                                BLOCK8(v);
                        }
                        if (len) {
                                v = _mm256_maskload_epi32((const int *)p,
                                                          _mm256_loadu_si256((const __m256i *)(tail32 + 8 - len)));
                                BLOCK8(v);
                        }
#undef BLOCK8
                        /* r: the run's sum, its x moment */
                        const __m256i S = _mm256_add_epi64(Se, So);
                        const __m256i h = _mm256_add_epi64(_mm256_unpacklo_epi64(S, X), _mm256_unpackhi_epi64(S, X));
                        const __m128i r = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                        add_run(a, wide, run->code, _mm_cvtsi128_si64(r), _mm_extract_epi64(r, 1), run->x0, y);
                }
                if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(hi, top)))
                        unsaturate_row(g, pix, 4, y, a, wide);
        }
}

__attribute__((target("avx2"))) static void kernel_u16_avx2_n(const roid_geometry *g, const uint16_t *pix, acc *a) {
        kernel_u16_avx2(g, pix, a, false);
}
__attribute__((target("avx2"))) static void kernel_u16_avx2_w(const roid_geometry *g, const uint16_t *pix, acc *a) {
        kernel_u16_avx2(g, pix, a, true);
}
__attribute__((target("avx2"))) static void kernel_u32_avx2_n(const roid_geometry *g, const uint32_t *pix, acc *a) {
        kernel_u32_avx2(g, pix, a, false);
}
__attribute__((target("avx2"))) static void kernel_u32_avx2_w(const roid_geometry *g, const uint32_t *pix, acc *a) {
        kernel_u32_avx2(g, pix, a, true);
}

/* Bytes ahead of the row at hand that the four-frame walk prefetches: four
 * interleaved streams of small frames from memory read slower than one (a few
 * per cent back at 96 x 96 on the development machine). */
#define PF_AHEAD 1024

typedef union {
        __m256i v;
        uint64_t u[4];
} lanes4;

typedef struct {
        lanes4 sum, sx, sy;
} acc4;

/* The codes' four-frame sums, cleared; added to a[0..3] (lane k to a[k]),
 * whose kernel offset is then `offset`. */
AVX2_INLINE void acc4_clear(const roid_geometry *g, acc4 *e4) {
        for (unsigned fl = 0; fl < 4; fl++)
                for (unsigned c = fl << 6; c < (fl << 6) + g->n_segments; c++)
                        e4[c].sum.v = e4[c].sx.v = e4[c].sy.v = _mm256_setzero_si256();
}

AVX2_INLINE void acc4_fold(const roid_geometry *g, const acc4 *e4, uint32_t offset, acc *a) {
        for (unsigned k = 0; k < 4; k++) {
                a[k].offset = offset;
                for (unsigned fl = 0; fl < 4; fl++)
                        for (unsigned c = fl << 6; c < (fl << 6) + g->n_segments; c++) {
                                a[k].sum[c] += e4[c].sum.u[k];
                                a[k].n.sx[c] += e4[c].sx.u[k];
                                a[k].n.sy[c] += e4[c].sy.u[k];
                        }
        }
}

/* Four 16-bit frames of one geometry at once, for small frames, where a run
 * is about one block of 16 pixels and the per-run work (walking the runs,
 * reducing the lanes, adding to the code's sums) costs more than the pixels.
 * Per block and frame the same vector operations as rows_u16_avx2; per run
 * the four frames' sums and x moments are reduced together (six hadd for
 * eight vectors) and added to the code's 64-bit sums with one vector
 * operation per quantity, lane k for frame k.  Each frame keeps its own
 * maximum (the same four vector operations as one shared maximum), so a hot
 * pixel in one frame sends only that frame's row to unsaturate_row: the
 * development machine's 96 x 96 frames, with three hot pixels each, went 10 %
 * faster than with a shared one. */
AVX2_INLINE void rows_u16x4_avx2(const roid_geometry *g, const uint16_t *const *pix, acc4 *e4, acc *a, uint32_t y0,
                                 uint32_t y1, const bool check) {
        const size_t npix = (size_t)g->rows * g->cols;
        const __m256i zero = _mm256_setzero_si256(), flip = _mm256_set1_epi16(INT16_MIN);
        const __m256i ones = _mm256_set1_epi16(1), top = _mm256_set1_epi16(INT16_MAX);
        const uint16_t *const p0 = pix[0], *const p1 = pix[1], *const p2 = pix[2], *const p3 = pix[3];
        for (uint32_t y = y0; y < y1; y++) {
                const size_t row = (size_t)y * g->cols;
                const roid_run *run = g->runs + g->row_first_run[y];
                const roid_run *end = g->runs + g->row_first_run[y + 1];
                const __m256i yv = _mm256_set1_epi64x(y);
                __m256i hi0 = flip, hi1 = flip, hi2 = flip, hi3 = flip;
                if (row + PF_AHEAD / 2 + g->cols <= npix)
                        for (uint32_t x = 0; x < g->cols; x += 32)
                                for (unsigned k = 0; k < 4; k++)
                                        _mm_prefetch((const char *)(pix[k] + row + PF_AHEAD / 2 + x), _MM_HINT_T0);
                for (; run < end; run++) {
                        size_t o = row + run->x0;
                        const __m256i *w = (const __m256i *)run_offsets;
                        unsigned len = run->len;
                        __m256i S0 = zero, S1 = zero, S2 = zero, S3 = zero, X0 = zero, X1 = zero, X2 = zero, X3 = zero;
#define LOAD4(p) _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)((p) + o)), flip)
#define BLOCK4(v, S, X, hi)                                                                                            \
        do {                                                                                                           \
                hi = _mm256_max_epi16(hi, v);                                                                          \
                S = _mm256_add_epi32(S, _mm256_madd_epi16(v, ones));                                                   \
                X = _mm256_add_epi32(X, _mm256_madd_epi16(v, wv));                                                     \
        } while (0)
                        for (; len >= 16; len -= 16, o += 16, w++) {
                                const __m256i wv = _mm256_load_si256(w);
                                __m256i v = LOAD4(p0);
                                BLOCK4(v, S0, X0, hi0);
                                v = LOAD4(p1);
                                BLOCK4(v, S1, X1, hi1);
                                v = LOAD4(p2);
                                BLOCK4(v, S2, X2, hi2);
                                v = LOAD4(p3);
                                BLOCK4(v, S3, X3, hi3);
                        }
                        if (len) {
                                const __m256i wv = _mm256_load_si256(w);
                                const __m256i m = _mm256_loadu_si256((const __m256i *)(tail16 + 16 - len));
                                __m256i v[4];
                                if (!check || o + 16 <= npix) {
                                        v[0] = LOAD4(p0), v[1] = LOAD4(p1), v[2] = LOAD4(p2), v[3] = LOAD4(p3);
                                } else {
                                        for (unsigned k = 0; k < 4; k++) {
                                                uint16_t tmp[16] = {0};
                                                memcpy(tmp, pix[k] + o, len * sizeof *tmp);
                                                v[k] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)tmp), flip);
                                        }
                                }
                                v[0] = _mm256_and_si256(v[0], m);
                                BLOCK4(v[0], S0, X0, hi0);
                                v[1] = _mm256_and_si256(v[1], m);
                                BLOCK4(v[1], S1, X1, hi1);
                                v[2] = _mm256_and_si256(v[2], m);
                                BLOCK4(v[2], S2, X2, hi2);
                                v[3] = _mm256_and_si256(v[3], m);
                                BLOCK4(v[3], S3, X3, hi3);
                        }
#undef BLOCK4
#undef LOAD4
                        /* per 128-bit half, [s0 s1 s2 s3] and [x0 x1 x2 x3]; then the halves added */
                        const __m256i E = _mm256_hadd_epi32(_mm256_hadd_epi32(S0, S1), _mm256_hadd_epi32(S2, S3));
                        const __m256i F = _mm256_hadd_epi32(_mm256_hadd_epi32(X0, X1), _mm256_hadd_epi32(X2, X3));
                        const __m256i G = _mm256_add_epi32(_mm256_permute2x128_si256(E, F, 0x20),
                                                           _mm256_permute2x128_si256(E, F, 0x31));
                        const __m256i s = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(G));
                        const __m256i l = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(G, 1));
                        acc4 *e = &e4[run->code];
                        e->sum.v = _mm256_add_epi64(e->sum.v, s);
                        e->sx.v = _mm256_add_epi64(
                                e->sx.v, _mm256_add_epi64(_mm256_mul_epi32(s, _mm256_set1_epi64x(run->x0)), l));
                        e->sy.v = _mm256_add_epi64(e->sy.v, _mm256_mul_epi32(s, yv));
                }
                const __m256i his[4] = {hi0, hi1, hi2, hi3};
                for (unsigned k = 0; k < 4; k++)
                        if (_mm256_movemask_epi8(_mm256_cmpeq_epi16(his[k], top)))
                                unsaturate_row(g, pix[k], 2, y, &a[k], false);
        }
}

/* a: four cleared accumulators, narrow moments. */
__attribute__((target("avx2"))) static void kernel_u16x4_avx2(const roid_geometry *g, const uint16_t *const *pix,
                                                              acc *a) {
        acc4 e4[N_CODES];
        acc4_clear(g, e4);
        const uint32_t n_check = 16 / g->cols + 1, y_check = g->rows > n_check ? g->rows - n_check : 0;
        rows_u16x4_avx2(g, pix, e4, a, 0, y_check, false);
        rows_u16x4_avx2(g, pix, e4, a, y_check, g->rows, true);
        acc4_fold(g, e4, 32768, a);
}

/* ---- small uint16 frames with AVX-512 (BW, VL) ---- */

#define AVX512_TARGET "avx2,avx512f,avx512vl,avx512bw"

/* Row y of a frame that the block walk summed with a pixel of 32768 or more,
 * taken as a signed 16-bit value (v - 65536): adds the 65536 back, or takes
 * the pixel out (+1) if it is saturated (65535). */
__attribute__((target(AVX512_TARGET))) static void fix_row_high(const roid_geometry *g, const uint16_t *pix, uint32_t y,
                                                                acc *a) {
        const uint16_t *row = pix + (size_t)y * g->cols;
        const roid_run *run = g->runs + g->row_first_run[y], *end = g->runs + g->row_first_run[y + 1];
        for (; run < end; run++) {
                const unsigned c = run->code;
                for (unsigned k = 0; k < run->len; k += 32) {
                        const unsigned n = run->len - k < 32 ? run->len - k : 32;
                        const __mmask32 km = n == 32 ? ~0u : (1u << n) - 1;
                        uint32_t m = _mm512_movepi16_mask(_mm512_maskz_loadu_epi16(km, row + run->x0 + k));
                        while (m) {
                                const uint32_t x = run->x0 + k + (unsigned)__builtin_ctz(m);
                                m &= m - 1;
                                uint64_t d = 65536;
                                if (row[x] == UINT16_MAX) {
                                        a->saturated++;
                                        d = 1;
                                }
                                a->sum[c] += d;
                                a->n.sx[c] += d * x;
                                a->n.sy[c] += d * y;
                        }
                }
        }
}

/* Four 16-bit frames walked over the geometry's blocks (at most 16 pixels of
 * one run each) rather than its runs: the loop has no branch that depends on
 * the run lengths, whose mispredictions cost the run walk more than its
 * arithmetic at 96 x 96 (branch-free, 1.26 times the frames/s from the cache
 * on the development machine).  Per block and frame: a masked load (which
 * reads nothing outside the run, so no frame-end check), the pixels taken as
 * signed 16 bits (no sign flip; a pixel of 32768 or more, which the row's OR
 * of the four frames' sign bits shows, is put right by fix_row_high: rows
 * with a hot pixel are rare), two vpmaddwd, by ones and by the
 * column numbers (16 pixels times 4095 columns stay within 32 bits); then the
 * four frames' sums and x moments are reduced together and added to the
 * code's 64-bit sums, as in rows_u16x4_avx2.  One prefetch a block, of the
 * four frames in turn, 1 KiB ahead. */
/* A block's x moment in 32-bit lanes: 16 pixels of magnitude at most 32768 (signed) times a column. */
_Static_assert((uint64_t)16 * 32768 * (ROID_FEATURES_BLOCK_COLS - 1) <= INT32_MAX,
               "ROID_FEATURES_BLOCK_COLS too large for the block walk's 32-bit x moments");
__attribute__((target(AVX512_TARGET))) static void kernel_u16x4_avx512(const roid_geometry *g,
                                                                       const uint16_t *const *pix, acc *a) {
        acc4 e4[N_CODES];
        acc4_clear(g, e4);
        const __m256i ones = _mm256_set1_epi16(1);
        const uint16_t *const p0 = pix[0], *const p1 = pix[1], *const p2 = pix[2], *const p3 = pix[3];
        const size_t npix = (size_t)g->rows * g->cols;
        uint16_t high[ROID_FEATURES_BLOCK_ROWS]; /* per row: the 4 frames' sign bits, ORed */
        memset(high, 0, g->rows * sizeof *high);
        const roid_block *b = g->blocks, *end = g->blocks + g->n_blocks;
        for (unsigned k = 0; b < end; b++, k = (k + 1) & 3) {
                const size_t o = b->o;
                const __mmask16 km = b->mask;
                if (o + PF_AHEAD / 2 < npix)
                        _mm_prefetch((const char *)(pix[k] + o + PF_AHEAD / 2), _MM_HINT_T0);
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(g->columns + b->x0));
                const __m256i v0 = _mm256_maskz_loadu_epi16(km, p0 + o), v1 = _mm256_maskz_loadu_epi16(km, p1 + o);
                const __m256i v2 = _mm256_maskz_loadu_epi16(km, p2 + o), v3 = _mm256_maskz_loadu_epi16(km, p3 + o);
                high[b->y] |= _mm256_movepi16_mask(_mm256_or_si256(_mm256_or_si256(v0, v1), _mm256_or_si256(v2, v3)));
                const __m256i S0 = _mm256_madd_epi16(v0, ones), S1 = _mm256_madd_epi16(v1, ones);
                const __m256i S2 = _mm256_madd_epi16(v2, ones), S3 = _mm256_madd_epi16(v3, ones);
                const __m256i X0 = _mm256_madd_epi16(v0, wv), X1 = _mm256_madd_epi16(v1, wv);
                const __m256i X2 = _mm256_madd_epi16(v2, wv), X3 = _mm256_madd_epi16(v3, wv);
                const __m256i E = _mm256_hadd_epi32(_mm256_hadd_epi32(S0, S1), _mm256_hadd_epi32(S2, S3));
                const __m256i F = _mm256_hadd_epi32(_mm256_hadd_epi32(X0, X1), _mm256_hadd_epi32(X2, X3));
                const __m256i G =
                        _mm256_add_epi32(_mm256_permute2x128_si256(E, F, 0x20), _mm256_permute2x128_si256(E, F, 0x31));
                const __m256i s = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(G));
                const __m256i l = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(G, 1));
                acc4 *e = &e4[b->code];
                e->sum.v = _mm256_add_epi64(e->sum.v, s);
                e->sx.v = _mm256_add_epi64(e->sx.v, l);
                e->sy.v = _mm256_add_epi64(e->sy.v, _mm256_mul_epi32(s, _mm256_set1_epi32((int)b->y)));
        }
        acc4_fold(g, e4, 0, a);
        for (uint32_t y = 0; y < g->rows; y++)
                if (high[y])
                        for (unsigned k = 0; k < 4; k++)
                                fix_row_high(g, pix[k], y, &a[k]);
}
#endif

static roid_simd_level use_simd = ROID_SIMD_BEST;

void roid_features_use_simd(roid_simd_level level) {
        use_simd = level;
}

static bool have_avx2(void) {
#ifdef HAVE_AVX2
        return use_simd >= ROID_SIMD_AVX2 && __builtin_cpu_supports("avx2");
#else
        return false;
#endif
}

static bool have_avx512(void) {
#ifdef HAVE_AVX2
        return use_simd >= ROID_SIMD_BEST && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#else
        return false;
#endif
}

const char *roid_features_simd(void) {
        if (!have_avx2())
                return "portable";
        return have_avx512() ? "avx2, avx512bw block walk" : "avx2";
}

static int check_frame(const roid_geometry *g, const roid_frame *f, roid_err *err) {
        if (f->dtype != g->dtype || f->rows != g->rows || f->cols != g->cols || !f->pixels)
                return roid_err_set(
                        err, -EINVAL, "frame %s %" PRIu32 " x %" PRIu32 ": geometry expects %s %" PRIu32 " x %" PRIu32,
                        roid_dtype_name(f->dtype), f->rows, f->cols, roid_dtype_name(g->dtype), g->rows, g->cols);
        return 0;
}

/* Whether the moments need 128 bits (see acc). */
static bool needs_wide(const roid_geometry *g) {
        const uint64_t maxv = g->dtype == ROID_DT_U8 ? UINT8_MAX : g->dtype == ROID_DT_U16 ? UINT16_MAX : UINT32_MAX;
        return (u128)g->rows * g->cols * maxv * (g->rows > g->cols ? g->rows : g->cols) >> 64 != 0;
}

static void acc_clear(const roid_geometry *g, acc *a, const bool wide) {
        a->saturated = 0;
        a->offset = 0;
        for (unsigned fl = 0; fl < 4; fl++)
                for (unsigned c = fl << 6; c < (fl << 6) + g->n_segments; c++) {
                        a->sum[c] = 0;
                        if (wide)
                                a->w.sx[c] = a->w.sy[c] = 0;
                        else
                                a->n.sx[c] = a->n.sy[c] = 0;
                }
}

static void run_kernel(const roid_geometry *g, const void *pix, acc *a, const bool wide) {
        switch (g->dtype) {
        case ROID_DT_U8:
                (wide ? kernel_u8_w : kernel_u8_n)(g, pix, a);
                break;
        case ROID_DT_U16:
#ifdef HAVE_AVX2
                if (have_avx2()) {
                        (wide ? kernel_u16_avx2_w : kernel_u16_avx2_n)(g, pix, a);
                        break;
                }
#endif
                (wide ? kernel_u16_w : kernel_u16_n)(g, pix, a);
                break;
        default:
#ifdef HAVE_AVX2
                if (have_avx2()) {
                        (wide ? kernel_u32_avx2_w : kernel_u32_avx2_n)(g, pix, a);
                        break;
                }
#endif
                (wide ? kernel_u32_w : kernel_u32_n)(g, pix, a);
                break;
        }
}

/* Folds the per-code sums into segments, disk and annulus. */
static void fold(const roid_geometry *g, const acc *a, const bool wide, roid_features *o) {
        const unsigned nseg = g->n_segments;
        memset(o, 0, sizeof *o);
        o->n_segments = nseg;
        /* sums modulo 2^64 (2^128) of I - offset, plus the offset times the pixels */
        const uint64_t off = a->offset;
        uint64_t t = 0, bf = off * g->bf_pixels, df = off * g->df_pixels;
        u128 sx_w = 0, sy_w = 0;
        uint64_t sx_n = 0, sy_n = 0;
        for (unsigned s = 0; s < nseg; s++) {
                uint64_t sum = off * g->seg_pixels[s];
                for (unsigned fl = 0; fl < 4; fl++) {
                        const unsigned c = s | fl << 6;
                        sum += a->sum[c];
                        bf += fl & 1 ? a->sum[c] : 0;
                        df += fl & 2 ? a->sum[c] : 0;
                }
                double cx = g->center_x, cy = g->center_y;
                if (wide) {
                        u128 x = (u128)off * g->seg_sum_x[s], y = (u128)off * g->seg_sum_y[s];
                        for (unsigned fl = 0; fl < 4; fl++)
                                x += a->w.sx[s | fl << 6], y += a->w.sy[s | fl << 6];
                        sx_w += x, sy_w += y;
                        if (sum)
                                cx = (double)x / (double)sum, cy = (double)y / (double)sum;
                } else {
                        uint64_t x = off * g->seg_sum_x[s], y = off * g->seg_sum_y[s];
                        for (unsigned fl = 0; fl < 4; fl++)
                                x += a->n.sx[s | fl << 6], y += a->n.sy[s | fl << 6];
                        sx_n += x, sy_n += y;
                        if (sum)
                                cx = (double)x / (double)sum, cy = (double)y / (double)sum;
                }
                t += sum;
                o->seg[s].sum_u64 = sum;
                o->seg[s].sum = (double)sum;
                o->seg[s].com_x = cx;
                o->seg[s].com_y = cy;
        }
        o->total_u64 = t;
        o->total = (double)t;
        o->com_x = !t ? g->center_x : wide ? (double)sx_w / (double)t : (double)sx_n / (double)t;
        o->com_y = !t ? g->center_y : wide ? (double)sy_w / (double)t : (double)sy_n / (double)t;
        o->bf_u64 = bf;
        o->df_u64 = df;
        o->bf = (double)bf;
        o->df = (double)df;
        o->saturated = a->saturated;
        o->masked = g->n_static_masked + a->saturated;
        o->n_pixels = (uint64_t)g->rows * g->cols - o->masked;
        o->full_scale = g->dtype == ROID_DT_U8    ? UINT8_MAX - 1
                        : g->dtype == ROID_DT_U16 ? UINT16_MAX - 1
                                                  : UINT32_MAX - 1;
}

unsigned roid_features_left_out(const roid_features *f) {
        /* Saturated pixels are not in total: a frame all at the maximum sums to 0. */
        if (f->full_scale && f->saturated > f->n_pixels)
                return ROID_FRAME_GLITCH;
        if (f->total == 0)
                return ROID_FRAME_DARK;
        if (f->full_scale && f->n_pixels && f->total > 0.25 * (double)f->n_pixels * (double)f->full_scale)
                return ROID_FRAME_GLITCH;
        return ROID_FRAME_USED;
}

int roid_features_compute(const roid_geometry *g, const roid_frame *f, roid_features *ret, roid_err *err) {
        int r = check_frame(g, f, err);
        if (r < 0)
                return r;
        const bool wide = needs_wide(g);
        acc a;
        acc_clear(g, &a, wide);
        run_kernel(g, f->pixels, &a, wide);
        fold(g, &a, wide, ret);
        return 0;
}

int roid_features_compute_many(const roid_geometry *g, size_t n, const roid_frame *f, roid_features *ret,
                               roid_err *err) {
        for (size_t i = 0; i < n; i++) {
                int r = check_frame(g, &f[i], err);
                if (r < 0) {
                        roid_err_prefix(err, "frame %zu of %zu", i + 1, n);
                        return r;
                }
        }
        const bool wide = needs_wide(g);
        size_t i = 0;
#if defined(HAVE_AVX2) && ROID_FEATURES_MANY == 4
        const bool avx512 = have_avx512();
        if (g->dtype == ROID_DT_U16 && !wide && (uint64_t)g->rows * g->cols * 2 <= ROID_FEATURES_MANY_BYTES &&
            have_avx2())
                for (; i + ROID_FEATURES_MANY <= n; i += ROID_FEATURES_MANY) {
                        acc a[4];
                        const uint16_t *pix[4];
                        for (unsigned k = 0; k < 4; k++) {
                                acc_clear(g, &a[k], false);
                                pix[k] = f[i + k].pixels;
                        }
                        if (g->blocks && avx512)
                                kernel_u16x4_avx512(g, pix, a);
                        else
                                kernel_u16x4_avx2(g, pix, a);
                        for (unsigned k = 0; k < 4; k++)
                                fold(g, &a[k], false, &ret[i + k]);
                }
#endif
        for (; i < n; i++) {
                acc a;
                acc_clear(g, &a, wide);
                run_kernel(g, f[i].pixels, &a, wide);
                fold(g, &a, wide, &ret[i]);
        }
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

/* The frame at (x, y), bilinear between its four pixels; false when one of
 * those it needs is masked or outside. */
static bool mirror_value(const roid_frame *f, const uint32_t *mask, double x, double y, double *ret) {
        const double x0 = floor(x), y0 = floor(y), fx = x - x0, fy = y - y0;
        double v = 0;
        for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) {
                        const double w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy);
                        if (w == 0)
                                continue;
                        const double px = x0 + dx, py = y0 + dy;
                        if (px < 0 || py < 0 || px >= f->cols || py >= f->rows)
                                return false;
                        const size_t i = (size_t)py * f->cols + (size_t)px;
                        if (mask[i])
                                return false;
                        v += w * (double)pixel_at(f, i);
                }
        *ret = v;
        return true;
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
        /* Until it settles (a hundredth of a pixel), at most ITERS times: once a
         * series.  Where it does not (a beam on a gap crossing can cycle by a
         * quarter of a pixel, found by review), the mean of the last TAIL. */
        enum { ITERS = 30, TAIL = 8 };
        double tail_x = 0, tail_y = 0;
        unsigned n_tail = 0;
        bool settled = false;
        for (int it = 0; it < ITERS; it++) {
                const long y0 = lround(fmax(0, ceil(ey - rad))), y1 = lround(fmin(f->rows - 1.0, floor(ey + rad)));
                const long x0 = lround(fmax(0, ceil(ex - rad))), x1 = lround(fmin(f->cols - 1.0, floor(ex + rad)));
                double sw = 0, swx = 0, swy = 0;
                for (long y = y0; y <= y1; y++)
                        for (long x = x0; x <= x1; x++) {
                                if ((x - ex) * (x - ex) + (y - ey) * (y - ey) > rad * rad)
                                        continue;
                                const size_t i = (size_t)y * f->cols + (size_t)x;
                                /* A masked pixel (a module gap across the beam) takes the value of
                                 * its mirror image through the estimate, interpolated, if that is
                                 * usable: the beam is symmetric about its centre, so the centre is
                                 * then a fixed point.  (Leaving out the pixels whose mirror is
                                 * masked made the gap's own centre one too: 0.9 px off for a beam
                                 * of radius 4 with a 2-pixel gap through it, found by review.) */
                                double v;
                                const double mx = 2 * ex - (double)x, my = 2 * ey - (double)y;
                                if (mask && mask[i]) {
                                        if (!mirror_value(f, mask, mx, my, &v))
                                                continue;
                                } else if (mx < -0.5 || my < -0.5 || mx > f->cols - 0.5 || my > f->rows - 0.5) {
                                        continue; /* its mirror is off the frame: the beam's other half is not seen */
                                } else {
                                        v = (double)pixel_at(f, i);
                                }
                                if (v < (double)t_half)
                                        continue;
                                double w = v - (double)t_half + 1;
                                sw += w;
                                swx += w * (double)x;
                                swy += w * (double)y;
                        }
                if (sw == 0)
                        break;
                const double step = fabs(swx / sw - ex) + fabs(swy / sw - ey);
                ex = swx / sw;
                ey = swy / sw;
                if (step < 0.01) {
                        settled = true;
                        break;
                }
                if (it >= ITERS - TAIL)
                        tail_x += ex, tail_y += ey, n_tail++;
        }
        if (!settled && n_tail) {
                ex = tail_x / n_tail;
                ey = tail_y / n_tail;
        }
        *ret_x = ex;
        *ret_y = ey;
        return 0;
}
