/* feedback.h - the "scan here" feedback of one series, computed from the RoI
 * state after every refit and at the end: what a scan controller acts on.
 *
 * Masks.  The source mask is the classified RoI without border: online, the
 * union of the online labels (roid_roi_online_mask); final, roid_roi_raw_mask.
 * The grown mask is what is reported: online, the source mask grown (border >
 * 0) or shrunk (border < 0) by |params.border| steps with roid_roi_morph;
 * final, roid_roi_mask as is (the RoI's own border and hole fill), so
 * params.border should be the RoI's border.
 *
 *  - boxes: the 8-connected components of the grown mask, as inclusive
 *    bounding boxes, largest (most points) first, ties by the component's
 *    first point in row-major order; at most params.max_boxes.
 *  - rescan: the fine lattice at step / f (f = params.rescan_factor) that
 *    covers the grown mask.  On each axis, fine point k (k = 0, 1, ...) sits
 *    at grid index u = (k + 1/2) / f - 1/2 and belongs to the grid point whose
 *    cell [c - 1/2, c + 1/2) contains u, i.e. c = floor((k + 1/2) / f).  The
 *    cells tile the scan, so every fine point belongs to exactly one grid
 *    point: a grid point gets exactly f x f points for integer f (centred in
 *    its cell), floor(f) or ceil(f) per axis otherwise, and the list has no
 *    duplicates.  Row-major over the fine lattice (fine row, then fine
 *    column), as scan coordinates x, y; truncated after params.max_rescan
 *    points (rescan_truncated).
 *  - skip: grid points without a frame that a raster may skip now; see the
 *    rule and why it is safe below.  Row-major grid indices.
 *  - next: the most informative points to measure next, best first, at most
 *    params.next_points; ties by grid index.  Scores (z = the point's
 *    standardised |CoM|, roid_roi_raw_map modality 1 as of the last refit,
 *    0 when NaN):
 *      A. unmeasured points with n >= 1 source-RoI 8-neighbours (the RoI may
 *         extend there): 2 + n / 8, in (2, 3];
 *      B. measured source-RoI points with a non-RoI 8-neighbour in the grid
 *         (the boundary, where the object's edge and phase gradient are):
 *         1 + z / (1 + z), in [1, 2);
 *      C. measured points outside the source RoI with z >= ROID_FB_STRONG_COM
 *         (strong scattering the 3x3-filtered clustering left out, e.g. a
 *         particle smaller than the beam): z / (1 + z), in [0.75, 1).
 *  - stable: the grown mask is byte-identical to the previous update's for
 *    `unchanged` consecutive updates (0 at the first), stable = unchanged >=
 *    params.stable_refits.  A final update is not stable by definition; it
 *    reports the same comparison, with final = true.  Nothing is stable
 *    (unchanged stays 0) before some modality labels (roid_roi_centres not
 *    NaN): until then the mask is empty for want of knowledge.  After that an
 *    empty mask can be stable (nothing found, and still nothing): n_boxes
 *    says so.
 *
 * Skip rule.  A point p is skipped when all of:
 *   1. p has no frame yet;
 *   2. p is farther than G = max(border, 1) + 1 steps (Chebyshev) from every
 *      source-RoI point and farther than 1 step from every grown-mask point;
 *   3. at least one measured point lies within 2 steps of p;
 *   4. none of the measured points within 2 steps is in the source or grown
 *      mask;
 *   5. some modality of the RoI labels (roid_roi_centres not NaN): before a
 *      cut stands out from noise the mask is empty for want of knowledge,
 *      and nothing is skipped.
 * The terms overlap on purpose: source points always have a frame, so 4
 * alone keeps 2 steps around the source RoI; online with border > 0,
 * "farther than 1 from the grown mask" is "farther than border + 1 from the
 * source"; the G term still holds when the final mask was bordered
 * differently or hole-filled.
 * Why it is safe: 2 keeps the RoI, its border and one more guard ring, so a
 * point the reconstruction needs (RoI, border, the ring where the RoI can grow
 * by one step at the next update) is never skipped; 3 keeps unexplored
 * territory, so a skip reaches at most 2 steps past the measured points and
 * the scan goes on exploring beyond them; nothing is skipped before a first
 * frame.  The rule is re-evaluated at every update: an object that starts
 * just past the scan front (behind at most 2 steps of skipped points) shows
 * up at the next measured line, and from then on its guard ring is not
 * skipped, so a controller that honours skip for the current update only can
 * go back to it.
 *
 * Coordinates: motor units (x = origin_x + col * step_x, y = origin_y + row *
 * step_y) when the grid has units or an origin / step other than 0 / 1
 * (`motor`), grid indices otherwise (the same formula with origin 0, step 1).
 * Boxes give (x0, y0) at (row0, col0) and (x1, y1) at (row1, col1): with a
 * negative step x0 > x1.
 *
 * Memory: allocated once per series in roid_feedback_new, bounded by the grid
 * size (ny * nx <= ROID_SCAN_MAX_POINTS; 13 bytes per point),
 * params.max_rescan (16 bytes a point, no more than the fine lattice has),
 * max_boxes and next_points (roid_feedback_state_bytes: the total); nothing
 * per update.
 *
 * Ownership: the caller owns the roid_feedback; the view's arrays belong to it
 * and stay valid until the next update or free.  Threads: one thread at a time.
 */
#ifndef ROID_ANALYSIS_FEEDBACK_H
#define ROID_ANALYSIS_FEEDBACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "analysis/roi.h"
#include "analysis/scan.h"
#include "service/err.h"

#define ROID_FB_MAX_FACTOR 16
#define ROID_FB_MAX_NEXT   4096
#define ROID_FB_MAX_REFITS 1000
#define ROID_FB_MAX_BOXES  4096
#define ROID_FB_MAX_RESCAN ((size_t)1 << 24) /* 256 MiB of x, y */
#define ROID_FB_STRONG_COM 3.0               /* standardised |CoM| of a "strong" point (class C of next) */

typedef struct {
        int border;             /* -ROID_ROI_MAX_BORDER..ROID_ROI_MAX_BORDER: grow (> 0) or shrink (< 0) the online
                                   RoI by this many steps (the RoI's own border) */
        double rescan_factor;   /* 1..16: rescan step = step / factor */
        unsigned next_points;   /* 0..4096 */
        unsigned stable_refits; /* 1..1000 */
        unsigned max_boxes;     /* 1..4096, default 64 */
        size_t max_rescan;      /* 0..ROID_FB_MAX_RESCAN, default 1 << 20 points; the list is truncated beyond
                                   (truncated = true) */
} roid_feedback_params;

typedef struct {
        uint32_t row0, col0, row1, col1; /* inclusive grid indices */
        uint32_t points;                 /* RoI points in the component */
        double x0, y0, x1, y1;           /* the same box in scan coordinates (point centres) */
} roid_fb_box;

typedef struct {
        uint32_t row, col;
        double x, y;  /* scan coordinates */
        double score; /* larger = more informative */
} roid_fb_point;

/* Before the first update: ny, nx, motor, units, step and rescan step are
 * set, mask is all zero, everything else zero / empty. */
typedef struct {
        uint32_t ny, nx;
        uint64_t frames;       /* frames in the RoI state at this update */
        uint64_t updates;      /* updates so far (1 after the first) */
        bool final;            /* computed from the final (refined) RoI */
        bool stable;           /* mask unchanged for stable_refits updates */
        unsigned unchanged;    /* consecutive updates without a change */
        bool motor;            /* coordinates in motor units (else grid indices) */
        const char *units;     /* the grid's units, "" when none */
        double step_x, step_y; /* grid step in scan coordinates (1 for grid indices) */
        const roid_fb_box *boxes;
        size_t n_boxes;
        const double *rescan; /* n_rescan x 2: x, y */
        size_t n_rescan;
        double rescan_step_x, rescan_step_y; /* step / factor (signed like the step) */
        bool rescan_truncated;
        const uint32_t *skip; /* n_skip grid indices, row * nx + col */
        size_t n_skip;
        const roid_fb_point *next;
        size_t n_next;
        const uint8_t *mask; /* ny x nx, 0/1, the grown RoI of this update */
} roid_feedback_view;

typedef struct roid_feedback roid_feedback;

/* border 0, rescan_factor 2, next_points 32, stable_refits 3, max_boxes 64,
 * max_rescan 1 << 20. */
void roid_feedback_params_default(roid_feedback_params *p);

/* -EINVAL (err names the parameter or the grid field) on bad parameters or
 * grid (shape 1..ROID_SCAN_MAX_POINTS, finite origin, finite non-zero step),
 * -ENOMEM. */
int roid_feedback_new(const roid_feedback_params *p, const roid_scan_grid *grid, roid_feedback **ret, roid_err *err);
/* What roid_feedback_new allocates for this grid and these parameters, in
 * bytes: the caller counts it against [limits] max_analysis_bytes with the
 * RoI state (roid_roi_params.other_state_bytes). */
uint64_t roid_feedback_state_bytes(const roid_feedback_params *p, const roid_scan_grid *grid);
/* Elements the arrays of a view can hold at most: mask and skip (one a grid
 * point), rescan points, next points, boxes (for the size of a message). */
void roid_feedback_view_max(const roid_feedback_params *p, const roid_scan_grid *grid, uint64_t *ret_points,
                            uint64_t *ret_rescan, uint64_t *ret_next, uint64_t *ret_boxes);
void roid_feedback_free(roid_feedback *fb);

/* Recomputes everything from the RoI state: after roid_roi_refit (online:
 * the union of the online labels) or after roid_roi_finish (final = true: the
 * final mask).  -EINVAL, state untouched, if the RoI's grid is not the
 * feedback's or final is asked of an RoI state not finished. */
int roid_feedback_update(roid_feedback *fb, const roid_roi *roi, bool final);

/* The result of the last update. */
void roid_feedback_get(const roid_feedback *fb, roid_feedback_view *ret);

/* A bluesky-adaptive style suggest(n): the first n points of `next` (fewer
 * if there are fewer); returns how many were written to out. */
size_t roid_feedback_suggest(const roid_feedback *fb, size_t n, roid_fb_point *out);

#endif
