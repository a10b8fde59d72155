/* roi.h - the per-series region-of-interest state of the ptychography RoI
 * method (Lin et al.): per scan point total intensity T and centre of mass,
 * whole pattern and per azimuthal segment; the CoM standardised over the scan
 * (eq. 2) and its magnitude; 3x3 mean-filtered log maps (log(1 + T), which
 * is log T but at a few counts, and log |CoM|); a two-cluster k-means
 * per modality; RoI = low-T cluster united with high-|CoM| cluster, united
 * over the segments; border grow/shrink and optional hole fill.  A modality
 * labels nothing unless its cut stands out from noise (significant() in
 * roi.c): two-cluster k-means cuts any map in two, and on background alone (a
 * scan's first lines, a segment that sees no object) the union of such cuts
 * would mark every point.  A segment's total labels only while its low side
 * holds at most half of the points: a phase object deflects the beam and
 * raises T_s in some segments, where "low T_s" would be the background
 * (may_label() in roi.c).
 *
 * Modalities, m = 0 .. roid_roi_n_modalities()-1: 0 = T, 1 = |CoM| of the
 * whole pattern; with S > 1 segments also 2 + 2s = T_s and 3 + 2s = |CoM_s|.
 *
 * Online: every frame is labelled on arrival from the current centres (its
 * own unfiltered value; no centres yet -> not RoI).  Every `cadence` frames
 * (every n/16 once n, the points seen, exceeds 16 x cadence: a refit costs
 * O(n), so a long series stays O(n) overall) the filtered maps are recomputed over the points seen so far (3x3 mean
 * over the neighbours seen), each modality's centres take one mini-batch step (Sculley's per-centre counts, halved
 * before every step so the centres can follow the standardisation as it settles) on the whole map as the batch, and the
 * whole map is relabelled.  roid_roi_finish() refines the centres by full-batch Lloyd from the online ones, and from
 * the map's best split (a 1024-bin histogram) when that ends with less within-cluster error, and builds the final mask.
 *
 * General clustering: k clusters over the standardised per-point vectors
 * [filtered log(1 + T), log |CoM|, the same per segment, log(1 + BF), log(1 + DF)]
 * (BF/DF only when the geometry has them): k-means++ seeding, a mini-batch
 * step per cadence, Lloyd at the end.
 *
 * Several frames on one point (fly scans binned to the grid) are averaged.
 *
 * Empty regions.  A frame without counts (T = 0: beam off, shutter closed)
 * measured nothing: roid_roi_add leaves it out (roid_roi_dark_frames counts
 * it), so a point with only such frames stays unmeasured, NaN in every map,
 * where the feedback may ask for it again.  A segment without counts in a
 * lit frame reports the beam centre as its CoM (features.h): no measurement
 * either, and 16-25 deviations from the segment's usual CoM (on the phantom),
 * an outlier in its |CoM| map.  Such a frame gives that segment no CoM: it is
 * left out of the segment's scan-wide statistics and of the point's mean (a
 * count per channel and point of the frames that gave one).  A point none of
 * whose frames gave one has no |CoM| there: NaN in that modality's raw map,
 * left out of its neighbours' 3x3 means; its filtered value is the mean of
 * its neighbours' (NaN, left out of the modality's clustering and labelled 0,
 * when none has one); online it keeps the label of the last refit; at the mean
 * in the general clustering.  T_s counts every lit frame.
 *
 * Glitches and outliers.  A frame whose pixels average more than a quarter
 * of the dtype's full scale, or whose pixels are mostly at the dtype's
 * maximum, is no diffraction pattern (a counting detector's frame near full
 * scale; features.h roid_features_left_out):
 * roid_roi_add leaves it out as it does a frame without counts, whatever the
 * scan's statistics, so a burst of them or one at the first frame costs
 * only their points, which stay unmeasured (the feedback may ask for them
 * again).  A point whose mean T is far above the scan's brightest percent
 * (3 times it, and 8 times its distance from the median, or more) is an
 * outlier: with the direct beam on the detector (ptychography, 4D-STEM) a
 * sample brings no more photons than the beam itself, and a lesser glitch (a
 * hot module) does.  Judged at every refit over the points seen (from 64 on;
 * one point below 200 points, up to 1 % above), it keeps its raw values, is
 * left out of the 3 x 3 means of every modality and takes its neighbours'
 * instead, so it is labelled as they are; its frames leave the scan-wide CoM
 * statistics (as a group at their mean: exact for a point of one frame);
 * online, its labels stay what the last refit gave; the centres start
 * afresh when the outliers change.  It stays an outlier if measured again in
 * the same series (its mean keeps the glitch).  The rule assumes the direct
 * beam reaches the detector: behind a beamstop or in reflection (SAXS, Laue)
 * a scatterer raises T and would be judged one.  Five frames near full scale
 * in 16,384 had made the T map's cut {them, their neighbours} against the
 * rest, all RoI (roi.c bright_fence).
 *
 * The clustering is kmeans.h's: per modality a two-centre roid_kmeans on the
 * line (roid_kmeans_step with decay 0.5, roid_kmeans_refine at the end), the
 * general map a roid_kmeans over D dimensions (partial_fit on at most 1024
 * sampled points per refit); the CoM statistics are roid_running_stats.
 *
 * Memory: allocated once in roid_roi_new, 8 * (3C + 2M + D + 5) + 4C + 2M + 27
 * bytes per point (C = 1 + S for S > 1, else 1; M = 2C; D = M, + 1 each for
 * BF and DF), = 80C + 8(D - M) + 67: 787 bytes at 8 segments, 3347 at 40; plus
 * a fixed 8 KB a dimension of D; nothing is allocated per frame or per refit.
 *
 * Ownership: the caller owns the roid_roi; accessor pointers stay valid until
 * roid_roi_free.  Threads: one thread at a time.
 */
#ifndef ROID_ANALYSIS_ROI_H
#define ROID_ANALYSIS_ROI_H

#include <stdbool.h>
#include <stdint.h>

#include "features/features.h"
#include "service/err.h"

#define ROID_ROI_MAX_K      16
#define ROID_ROI_MAX_BORDER 64
#define ROID_ROI_UNSEEN     255 /* label of a point without a frame */

typedef struct {
        unsigned n_segments; /* 1..ROID_MAX_SEGMENTS */
        unsigned k;          /* general clustering, 2..ROID_ROI_MAX_K */
        unsigned cadence;    /* frames between online refits; 0 = only at the end */
        int border;          /* grow (> 0) or shrink (< 0) by this many scan steps */
        bool fill_holes;
        bool use_bf, use_df; /* include BF / DF in the general clustering */
        uint64_t seed;
        unsigned max_iter;        /* Lloyd iterations at the end */
        uint64_t max_state_bytes; /* roid_roi_new refuses a larger state; 0: no bound */
        unsigned map_copies;      /* snapshots of the maps the caller keeps, counted in the state */
        /* The series' other state (its feedback, the messages published of it), counted with the RoI's
         * against max_state_bytes. */
        uint64_t other_state_bytes;
        /* Called now and then during roid_roi_finish (after each step, and
         * each Lloyd iteration), which takes seconds on a large grid: the
         * daemon's watchdog counts it as progress.  NULL: none. */
        void (*progress)(void *ctx);
        void *progress_ctx;
} roid_roi_params;

typedef struct roid_roi roid_roi;

/* segments 8, k 4, cadence 64, border 0, no hole fill, seed 1, 300 iterations. */
void roid_roi_params_default(roid_roi_params *p);

/* -EINVAL (err names the parameter) on bad parameters or grid, -EMSGSIZE
 * when the state would take more than p->max_state_bytes, -ENOMEM. */
int roid_roi_new(const roid_roi_params *p, uint32_t ny, uint32_t nx, roid_roi **ret, roid_err *err);
void roid_roi_free(roid_roi *r);
/* What roid_roi_new allocates for a grid, but for a few KB of clustering
 * state (787 bytes a point at 8 segments, 3347 at 40), and the maps of
 * p->map_copies snapshots (333 bytes a point at 8 segments, 1485 at 40 each:
 * a clone kept fresh by roid_roi_copy_maps touches no more). */
uint64_t roid_roi_state_bytes(const roid_roi_params *p, uint32_t ny, uint32_t nx);
/* A snapshot for another thread: clone_maps allocates a copy of what the
 * accessors below return (counts, maps, labels, masks, centres, centroids;
 * about 43 % of the state), copy_maps refreshes it without allocating
 * (-EINVAL unless of the same grid and parameters).  A snapshot can be read
 * but not fed, refitted or finished (roid_roi_add -EINVAL, refit and finish
 * do nothing).  roid_roi_copy copies a whole state into another whole state
 * (-EINVAL into a snapshot). */
int roid_roi_clone_maps(const roid_roi *src, roid_roi **ret);
int roid_roi_copy(roid_roi *dst, const roid_roi *src);
int roid_roi_copy_maps(roid_roi *dst, const roid_roi *src);

/* One frame at grid point (row, col).  f->n_segments must be the S of the
 * parameters.  Returns its online RoI label (0/1; 0 for a frame without
 * counts, left out), or -EINVAL on a bad point. */
int roid_roi_add(roid_roi *r, uint32_t row, uint32_t col, const roid_features *f);
/* Online refit now (also done every `cadence` frames by roid_roi_add). */
void roid_roi_refit(roid_roi *r);
/* Whether the cadence calls for a refit.  A caller that budgets the refits'
 * time holds them: roid_roi_add then never refits, and the caller calls
 * roid_roi_refit when one is due and it can afford it. */
bool roid_roi_refit_due(const roid_roi *r);
void roid_roi_hold_refits(roid_roi *r, bool hold);
/* Online refits done so far. */
uint64_t roid_roi_refits(const roid_roi *r);
/* Full-batch refinement and final mask.  Idempotent. */
void roid_roi_finish(roid_roi *r);

uint32_t roid_roi_ny(const roid_roi *r);
uint32_t roid_roi_nx(const roid_roi *r);
uint64_t roid_roi_frames(const roid_roi *r);
/* Frames without counts roid_roi_add left out (Empty regions above). */
uint64_t roid_roi_dark_frames(const roid_roi *r);
/* Frames near full scale roid_roi_add left out (Outliers above). */
uint64_t roid_roi_glitch_frames(const roid_roi *r);
/* Outliers (above) as of the last refit: their number, a map of them (1 =
 * outlier, ny * nx) and the mean T above which a point is one (INFINITY
 * while none can be judged). */
uint32_t roid_roi_outlier_points(const roid_roi *r);
const uint8_t *roid_roi_outliers(const roid_roi *r);
double roid_roi_outlier_fence(const roid_roi *r);
unsigned roid_roi_n_modalities(const roid_roi *r);
/* "total", "com", "segment_total", "segment_com"; *ret_segment -1 or s. */
const char *roid_roi_modality_name(const roid_roi *r, unsigned m, int *ret_segment);
/* Frames per point (ny * nx). */
const uint32_t *roid_roi_counts(const roid_roi *r);
/* Unfiltered map of modality m as of the last refit: mean T, or |CoM|
 * standardised with the scan-wide statistics (NaN = unseen; |CoM| 0 where no
 * frame of the point had counts in the region, see Empty regions above). */
const double *roid_roi_raw_map(const roid_roi *r, unsigned m);
/* Filtered log map of modality m as of the last refit (NaN = unseen). */
const double *roid_roi_filtered(const roid_roi *r, unsigned m);
/* Labels of modality m: 1 = RoI side (low T / high |CoM|), 0 = other,
 * ROID_ROI_UNSEEN.  Online labels until finish, the refined ones after. */
const uint8_t *roid_roi_labels(const roid_roi *r, unsigned m);
/* Online labels of modality m as they were at the last frame (kept by finish). */
const uint8_t *roid_roi_online_labels(const roid_roi *r, unsigned m);
/* Union of the online labels (0/1, unseen 0) at the last frame. */
const uint8_t *roid_roi_online_mask(const roid_roi *r);
/* Two centres of modality m: [RoI side, other]; NaN while it labels nothing
 * (no two clusters yet, or a cut that does not stand out from noise). */
const double *roid_roi_centres(const roid_roi *r, unsigned m);
/* Final mask after finish (border and holes applied); NULL before.  The
 * unbordered union is roid_roi_raw_mask. */
const uint8_t *roid_roi_mask(const roid_roi *r);
const uint8_t *roid_roi_raw_mask(const roid_roi *r);
/* General clustering: labels per point (ROID_ROI_UNSEEN = unseen), centroids
 * k x d in standardised units. */
const uint8_t *roid_roi_cluster_labels(const roid_roi *r);
const double *roid_roi_cluster_centroids(const roid_roi *r, unsigned *ret_k, unsigned *ret_d);

/* Border and hole fill on a mask (exposed for tests): grows (n > 0) or
 * shrinks (n < 0) by |n| steps with a 3x3 structuring element (points outside
 * the grid are ignored, not background); fill makes background that is not
 * 4-connected to the grid edge RoI.  tmp: ny * nx bytes, queue: ny * nx words. */
void roid_roi_morph(uint8_t *mask, uint32_t ny, uint32_t nx, int n, bool fill, uint8_t *tmp, uint32_t *queue);

#endif
