/* features.h - the per-frame physics features of a diffraction pattern: total
 * intensity, centre of mass (Lin et al., eq. 1), the same per azimuthal
 * segment (Lin et al., journal version), bright-field disk and dark-field
 * annulus sums.
 *
 * Ownership: a roid_geometry owns its arrays (roid_geometry_init allocates,
 * roid_geometry_free releases).  It keeps no pointer to the parameters or to
 * the mask it was built from.  roid_features is plain fixed-size data.
 *
 * Threads: a geometry is read-only after init; any number of threads may call
 * roid_features_compute with the same geometry at once.  Nothing allocates
 * or locks per frame.
 *
 * Coordinates.  Pixel (row r, column c) has its centre at x = c, y = r, in
 * pixels; (0, 0) is the centre of the first pixel in memory.  The beam centre
 * (center_x, center_y) is in the same frame: x is a column, y a row.  All
 * centres of mass are absolute (x, y) in this frame, not offsets.
 *
 * Segments.  With dx = c - center_x, dy = r - center_y, the azimuth phi is the
 * angle from the +x axis towards the +y axis, in [0, 2 pi): phi = atan2(dy, dx),
 * plus 2 pi if negative.  That is counter-clockwise in the (x, y) frame, hence
 * clockwise on a screen that draws row 0 at the top.  Segment
 *     s = floor(phi * S / (2 pi)),   0 <= s < S,
 * so segment 0 starts at phi = 0 (+x) and each segment includes its starting
 * edge.  The pixel at the beam centre itself has phi = 0.  Pixels exactly on
 * an axis or a diagonal (dx = 0, dy = 0 or |dx| = |dy|) get their exact angle,
 * a multiple of pi/4, so an integer beam centre gives exact, symmetric
 * segments; no other pixel of a rational beam centre can lie exactly on a
 * segment edge, and elsewhere phi is computed in double precision.
 *
 * Disks.  d2 = dx*dx + dy*dy (double).  Bright field: d2 < r_bf^2 (r_bf = 0:
 * none).  Dark field: r_df_in^2 <= d2 < r_df_out^2 (r_df_out may be INFINITY).
 * With r_df_in = r_bf the two regions tile the plane without overlap.
 *
 * Exclusions.  A pixel is excluded when its pixel_mask word is non-zero (any
 * bit: gap, dead, cold, hot, noisy...) or when its value is the dtype's
 * maximum (255, 65535, 4294967295: saturated or flagged by the detector).
 * Excluded pixels count in `masked` and nowhere else.
 *
 * Exactness.  Sums of I are exact 64-bit integers, sums of I*x and I*y exact
 * 128-bit integers, for any frame of at most ROID_GEOM_MAX_PIXELS pixels at
 * any dtype, so no realistic frame can overflow; only the final divisions are
 * rounded (relative error ~1e-16).
 *
 * Empty regions.  A region (the frame, a segment) whose sum is 0 reports the
 * beam centre as its centre of mass: a zero shift, which keeps scan-wide
 * statistics of the CoM sane.  Its sum of 0 tells the caller it was empty.
 */
#ifndef ROID_FEATURES_FEATURES_H
#define ROID_FEATURES_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/err.h"

#define ROID_MAX_SEGMENTS     40
#define ROID_DEFAULT_SEGMENTS 8
/* 2^28 pixels: 16 times an EIGER2 16M; keeps every accumulator exact. */
#define ROID_GEOM_MAX_PIXELS (UINT64_C(1) << 28)

/* One decoded frame, rows x cols, row-major, native endianness.  dtype is
 * ROID_DT_U8, ROID_DT_U16 or ROID_DT_U32. */
typedef struct {
        roid_dtype dtype;
        uint32_t rows, cols;
        const void *pixels;
} roid_frame;

typedef struct {
        uint32_t rows, cols;
        roid_dtype dtype;
        double center_x, center_y; /* beam centre, pixels; NaN = not known */
        unsigned n_segments;       /* 1..ROID_MAX_SEGMENTS (the paper: 1, 4, 8, 16, 24, 40) */
        double r_bf;               /* bright-field disk radius, pixels; 0 = none */
        double r_df_in, r_df_out;  /* dark-field annulus, pixels; r_df_out 0 = none */
        /* rows x cols words, any bit set = pixel excluded; NULL = none.  Read
         * during init only. */
        const uint32_t *mask;
} roid_geometry_params;

/* A run is a stretch of one row whose pixels share one code; the per-frame
 * pass walks runs, never per-pixel codes.  Private to features.c. */
typedef struct roid_run roid_run;
typedef struct roid_block roid_block;

typedef struct {
        uint32_t rows, cols;
        roid_dtype dtype;
        unsigned n_segments;
        double center_x, center_y;
        double r_bf, r_df_in, r_df_out;
        uint64_t n_static_masked;               /* pixels excluded by the mask */
        uint64_t seg_pixels[ROID_MAX_SEGMENTS]; /* unmasked pixels per segment */
        /* Sums of x and of y over the unmasked pixels of each segment (the
         * 16-bit kernel sums I - 32768 and adds these back). */
        uint64_t seg_sum_x[ROID_MAX_SEGMENTS], seg_sum_y[ROID_MAX_SEGMENTS];
        uint64_t bf_pixels, df_pixels; /* unmasked pixels in the disk, the annulus */
        size_t n_runs;
        roid_run *runs;
        /* The runs cut into blocks of at most 16 pixels, for the AVX-512 walk
         * of small uint16 frames (NULL otherwise), and the column numbers it
         * weighs pixels by. */
        size_t n_blocks;
        roid_block *blocks;
        int16_t *columns;
        uint32_t *row_first_run; /* rows + 1 entries */
} roid_geometry;

typedef struct {
        uint64_t total_u64; /* T: sum of the values of the pixels used */
        double total;
        double com_x, com_y; /* sum(I x) / T, sum(I y) / T; the beam centre when T = 0 */
        uint64_t bf_u64, df_u64;
        double bf, df;
        uint64_t masked;     /* excluded pixels: n_static_masked + saturated */
        uint64_t saturated;  /* pixels at the dtype's maximum outside the mask */
        uint64_t n_pixels;   /* pixels used: rows * cols - masked */
        uint64_t full_scale; /* the dtype's largest value that counts (254, 65534, 4294967294) */
        unsigned n_segments;
        struct {
                uint64_t sum_u64;
                double sum;
                double com_x, com_y; /* the beam centre when sum = 0 */
        } seg[ROID_MAX_SEGMENTS];
} roid_features;

/* Why a frame measures nothing of the sample, which the RoI analysis leaves
 * out (roi.h): ROID_FRAME_GLITCH, its pixels average more than a quarter of
 * full_scale, or more than half of the pixels outside the mask are at the
 * dtype's maximum (saturated), which no diffraction pattern does (a counting
 * detector's frame near full scale: a glitch; the direct beam alone
 * saturates long before); ROID_FRAME_DARK, no counts (beam off, shutter
 * closed); else ROID_FRAME_USED.  full_scale 0 (features made by hand):
 * never a glitch. */
enum { ROID_FRAME_USED = 0, ROID_FRAME_DARK = 1, ROID_FRAME_GLITCH = 2 };
unsigned roid_features_left_out(const roid_features *f);

/* Fills p with the defaults: 8 segments, no disks, no mask, centre NaN
 * (unknown), rows, cols and dtype 0 (must be set). */
void roid_geometry_params_default(roid_geometry_params *p);

/* Builds the per-pixel classification once per series.  -EINVAL (with err
 * naming the parameter, its value and the limit) on bad parameters, -ENOMEM.
 * On failure g is left zeroed and needs no free. */
int roid_geometry_init(roid_geometry *g, const roid_geometry_params *p, roid_err *err);
void roid_geometry_free(roid_geometry *g);

/* One fused pass over the frame.  -EINVAL if the frame's shape or dtype is not
 * the geometry's (ret untouched).  Reentrant, no allocation. */
int roid_features_compute(const roid_geometry *g, const roid_frame *f, roid_features *ret, roid_err *err);

/* The same for n frames of one geometry: ret[i] is, to the bit, what
 * roid_features_compute gives for f[i].  Frames of uint16 pixels of at most
 * ROID_FEATURES_MANY_BYTES go ROID_FEATURES_MANY at a time (with AVX2)
 * through one walk over the runs, which shares the per-run work: about 1.4
 * times the frames/s at 192 x 192, where a run is a few blocks of 16 pixels.
 * With AVX-512 (BW, VL), at most ROID_FEATURES_BLOCK_COLS columns and
 * ROID_FEATURES_BLOCK_ROWS rows, and runs of at most two blocks of 16 pixels
 * on average, the walk goes over blocks instead, without a branch per run:
 * 1.1-1.2 times again at 96 x 96 and 8 segments.
 * Larger frames lose by it (four streams from memory instead of one) and go
 * one after the other, as do other dtypes.  -EINVAL, naming the frame, if any
 * frame is not the geometry's: then no ret is written.  Reentrant, no
 * allocation. */
#define ROID_FEATURES_MANY       4
#define ROID_FEATURES_MANY_BYTES (512u << 10)
#define ROID_FEATURES_BLOCK_COLS 4096
#define ROID_FEATURES_BLOCK_ROWS 4096
int roid_features_compute_many(const roid_geometry *g, size_t n, const roid_frame *f, roid_features *ret,
                               roid_err *err);

/* The kernels this CPU runs (for reports): "portable", "avx2", or "avx2,
 * avx512bw block walk" (compute_many's small uint16 frames); a static string. */
const char *roid_features_simd(void);

/* Tests and benchmarks: which kernels may run, so that each is tested on a
 * CPU that would pick a faster one; not thread-safe. */
typedef enum {
        ROID_SIMD_NONE, /* the portable kernels */
        ROID_SIMD_AVX2, /* the hand-written AVX2 ones, not the AVX-512 block walk */
        ROID_SIMD_BEST, /* whatever this CPU has (the default) */
} roid_simd_level;
void roid_features_use_simd(roid_simd_level level);

/* Estimates the beam centre from a frame with a direct beam (or a sum of a few
 * frames, passed as ROID_DT_U32), for when neither the start message nor the
 * configuration gives it.  Over the pixels outside the mask (saturated pixels
 * count at the dtype's maximum: they are the brightest):
 *   1. t_hi = the level reached by the brightest 0.1 % of the pixels (at
 *      least 16), from a 4096-bin histogram of [0, max];
 *   2. start at the median column and median row of the pixels >= t_hi: a few
 *      hot pixels far from the beam do not move it;
 *   3. five times: the centroid, weighted by I - t_hi/2 + 1, of the pixels
 *      >= t_hi/2 (the beam's half-maximum region) within a radius
 *      1.5 sqrt(N / pi) + 4 of the estimate (N = the number of such pixels),
 *      taking only pixels whose mirror image through the estimate is not
 *      masked, so that a module gap across the beam does not pull it.
 * Meant for a frame dominated by one direct beam or bright-field disk; bright
 * Bragg spots or streaks near the beam bias it.  -ENODATA when no unmasked
 * pixel is above 0, -EINVAL on a bad frame, -ENOMEM.  mask may be NULL.
 * Allocates rows + cols counters. */
int roid_estimate_beam_center(const roid_frame *f, const uint32_t *mask, double *ret_x, double *ret_y, roid_err *err);

#endif
