/* feedback.h - the "scan here" feedback of one series, computed from the RoI
 * state after every refit and at the end: what a scan controller acts on.
 *
 *  - boxes: the RoI grown by the border, as bounding boxes of its 8-connected
 *    components (largest first, at most params.max_boxes);
 *  - rescan: the points to measure again at a finer step (step / rescan_factor)
 *    covering the grown RoI, in scan coordinates;
 *  - skip: grid points not yet measured that lie in background and may be
 *    skipped (see feedback.c for the rule);
 *  - next: a ranked list of the most informative points to measure next (RoI
 *    boundary, strong |CoM|, unmeasured neighbours of the RoI), best first;
 *  - stable: the RoI mask has not changed for params.stable_refits updates.
 *
 * Coordinates: motor units (x = origin_x + col * step_x, y = origin_y + row *
 * step_y) when the series' grid gave origin and step, grid indices otherwise
 * (`motor` says which).
 *
 * Memory: allocated once per series in roid_feedback_new, bounded by the grid
 * size and params.max_rescan; nothing per update.
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

typedef struct {
        int border;             /* grow (> 0) or shrink (< 0) the RoI by this many steps (the RoI's own border) */
        double rescan_factor;   /* 1..16: rescan step = step / factor */
        unsigned next_points;   /* 0..4096 */
        unsigned stable_refits; /* 1..1000 */
        unsigned max_boxes;     /* default 64 */
        size_t max_rescan;      /* default 1 << 20 points; the list is truncated beyond (truncated = true) */
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

typedef struct {
        uint32_t ny, nx;
        uint64_t frames;    /* frames in the RoI state at this update */
        uint64_t updates;   /* updates so far (1 after the first) */
        bool final;         /* computed from the final (refined) RoI */
        bool stable;        /* mask unchanged for stable_refits updates */
        unsigned unchanged; /* consecutive updates without a change */
        bool motor;         /* coordinates in motor units (else grid indices) */
        const char *units;  /* the grid's units, "" when none */
        double step_x, step_y; /* grid step in scan coordinates (1 for grid indices) */
        const roid_fb_box *boxes;
        size_t n_boxes;
        const double *rescan; /* n_rescan x 2: x, y */
        size_t n_rescan;
        double rescan_step_x, rescan_step_y;
        bool rescan_truncated;
        const uint32_t *skip; /* n_skip grid indices, row * nx + col */
        size_t n_skip;
        const roid_fb_point *next;
        size_t n_next;
        const uint8_t *mask; /* ny x nx, the grown RoI of this update */
} roid_feedback_view;

void roid_feedback_params_default(roid_feedback_params *p);

/* -EINVAL (err names the parameter) on bad parameters, -ENOMEM. */
int roid_feedback_new(const roid_feedback_params *p, const roid_scan_grid *grid, roid_feedback **ret, roid_err *err);
void roid_feedback_free(roid_feedback *fb);

/* Recomputes everything from the RoI state: after roid_roi_refit (online:
 * the union of the online labels) or after roid_roi_finish (final = true: the
 * final mask).  -EINVAL if the RoI's grid is not the feedback's. */
int roid_feedback_update(roid_feedback *fb, const roid_roi *roi, bool final);

/* The result of the last update (all zero / empty before the first). */
void roid_feedback_get(const roid_feedback *fb, roid_feedback_view *ret);

/* A bluesky-adaptive style suggest(n): the first n points of `next` (fewer
 * if there are fewer); returns how many were written to out. */
size_t roid_feedback_suggest(const roid_feedback *fb, size_t n, roid_fb_point *out);

#endif
