/* kmeans.h - online mini-batch k-means (Sculley 2010, as scikit-learn's
 * MiniBatchKMeans.partial_fit), a full-batch Lloyd refinement for the end of a
 * series, and running per-column mean / standard deviation (Welford) for the
 * standardisation of features over a scan (Lin et al., eq. 2).
 *
 * Ownership: a roid_kmeans owns its arrays (init allocates all of them,
 * free releases).  Points are row-major n x d doubles owned by the caller.
 * roid_running_stats is plain fixed-size data.
 *
 * Threads: none.  One thread at a time per object; predict and inertia only
 * read and may run concurrently with each other.
 *
 * Algorithm, per partial_fit batch (scikit-learn 1.2 semantics):
 *   - first batch: greedy k-means++ seeding on the batch (2 + ln k candidates
 *     per centre, the one lowering the potential most wins);
 *   - each point is assigned to its nearest centre; each centre moves to the
 *     running mean of all points it was ever given: c <- (c n + sum) / (n + m),
 *     the per-point learning rate 1/count;
 *   - reassignment of starved centres: when a centre has count 0, or at least
 *     10 k points went by since the last check, centres whose count is below
 *     reassignment_ratio (default 0.01) times the largest count are re-seeded
 *     on distinct points of the batch drawn uniformly (at most half the
 *     batch), and their count is set to the smallest count of the others.
 * Random numbers come from xoshiro256** seeded by splitmix64: identical
 * results for an identical seed on any platform with IEEE doubles.
 */
#ifndef ROID_ANALYSIS_KMEANS_H
#define ROID_ANALYSIS_KMEANS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "service/err.h"

#define ROID_KMEANS_MAX_K     1024
#define ROID_KMEANS_MAX_D     96 /* the RoI's general map: 2 x (1 + 40 segments) + BF + DF */
#define ROID_KMEANS_MAX_BATCH (1u << 24)

typedef struct {
        uint64_t s[4];
} roid_rng;

void roid_rng_seed(roid_rng *r, uint64_t seed);
uint64_t roid_rng_next(roid_rng *r);
double roid_rng_unit(roid_rng *r);                /* [0, 1), 53 bits */
uint64_t roid_rng_below(roid_rng *r, uint64_t n); /* uniform in [0, n), n >= 1 */

typedef struct {
        unsigned k, d;
        size_t max_batch;
        double reassignment_ratio; /* 0.01; 0 disables reassignment */
        bool initialized;          /* centres exist (seeded or set) */
        double *centers;           /* k x d */
        double *counts;            /* k: points each centre has absorbed */
        uint64_t n_seen, n_batches;
        uint64_t n_reassigned; /* centres re-seeded so far */
        uint64_t since_reassign;
        roid_rng rng;
        /* Called once per roid_kmeans_refine iteration, a heartbeat for a
         * watchdog (a refinement of a million points can take seconds); NULL:
         * none.  Set by the owner after init. */
        void (*progress)(void *ctx);
        void *progress_ctx;
        /* scratch, preallocated */
        unsigned *labels; /* max_batch */
        double *dist;     /* max_batch: squared distance to the nearest centre */
        double *sums;     /* k x d */
        double *wsum;     /* k */
        size_t *pick;     /* k: points picked for reassignment or relocation */
        uint8_t *flag;    /* k */
} roid_kmeans;

/* k in 2..ROID_KMEANS_MAX_K, d in 1..ROID_KMEANS_MAX_D, max_batch in
 * k..ROID_KMEANS_MAX_BATCH.  -EINVAL (err names the parameter), -ENOMEM.
 * On failure km is zeroed and needs no free. */
int roid_kmeans_init(roid_kmeans *km, unsigned k, unsigned d, size_t max_batch, uint64_t seed, roid_err *err);
void roid_kmeans_free(roid_kmeans *km);

/* Sets the centres (k x d) and zeroes the counts, instead of seeding. */
void roid_kmeans_set_centers(roid_kmeans *km, const double *centers);

/* One mini-batch step over n points (n <= max_batch; the first batch needs
 * n >= k to seed).  Non-finite coordinates are refused.  No allocation.
 * Returns the number of centres reassigned (>= 0) or -EINVAL. */
int roid_kmeans_partial_fit(roid_kmeans *km, const double *x, size_t n, roid_err *err);

/* One mini-batch update without seeding, reassignment or per-point storage,
 * for a caller that refits on its whole, changing data set: the counts are
 * first multiplied by `decay` (1: partial_fit's running mean; 0.5: the
 * centres forget half of what they absorbed, so they follow data that drifts),
 * then every point moves its nearest centre as in partial_fit.  Any n (not
 * bounded by max_batch); the points must be finite.  -EINVAL if the centres
 * do not exist. */
int roid_kmeans_step(roid_kmeans *km, const double *x, size_t n, double decay);

/* Nearest centre of one point; its squared distance in *ret_dist2 if not
 * NULL.  The centres must exist. */
unsigned roid_kmeans_predict(const roid_kmeans *km, const double *x, double *ret_dist2);

/* Nearest centre of each of n points into labels[0..n-1]. */
void roid_kmeans_predict_many(const roid_kmeans *km, const double *x, size_t n, unsigned *labels);

/* Copies the clustering state (centres, counts, progress, random state) of
 * src into dst without allocating; scratch is not copied.  -EINVAL unless
 * both have the same k, d and max_batch. */
int roid_kmeans_copy(roid_kmeans *dst, const roid_kmeans *src);

/* Lloyd iterations over n points started from the current centres, until no
 * label changes or max_iter updates; an empty cluster is moved to the point
 * farthest from its centre.  labels (n entries, caller's) receives the final
 * assignment; counts become the cluster sizes.  ret_iter (updates done) and
 * ret_inertia may be NULL.  -EINVAL if the centres do not exist or n = 0.
 * No allocation. */
int roid_kmeans_refine(roid_kmeans *km, const double *x, size_t n, unsigned max_iter, unsigned *labels,
                       unsigned *ret_iter, double *ret_inertia);

/* Sum over the points of the squared distance to the nearest centre. */
double roid_kmeans_inertia(const roid_kmeans *km, const double *x, size_t n);

/* The nearest of two centres c[0], c[1] on a line (0 or 1; a tie is 0), as
 * roid_kmeans_predict decides it for k = 2, d = 1, inline for loops that ask
 * it once per point. */
static inline unsigned roid_kmeans_nearest2(const double *c, double v) {
        return (v - c[1]) * (v - c[1]) < (v - c[0]) * (v - c[0]);
}

/* Running mean and variance per dimension (Welford), for the scan-wide
 * standardisation of eq. 2. */
typedef struct {
        unsigned d;
        uint64_t n;
        double mean[ROID_KMEANS_MAX_D];
        double m2[ROID_KMEANS_MAX_D];
} roid_running_stats;

/* -EINVAL unless 1 <= d <= ROID_KMEANS_MAX_D. */
int roid_running_stats_init(roid_running_stats *s, unsigned d);
void roid_running_stats_update(roid_running_stats *s, const double *x);
/* k samples of mean x in one step (Chan et al.'s merge of a group whose own
 * variance is not known, taken as 0), or, k < 0, -k such samples taken back
 * (at most n; the variance floored at 0): exact for k = +-1. */
void roid_running_stats_add_group(roid_running_stats *s, int64_t k, const double *x);
/* Population standard deviation (ddof 0, as numpy's std); 0 when n < 2. */
void roid_running_stats_std(const roid_running_stats *s, double *ret_std);
/* out = (x - mean) / std per dimension; 0 where std is 0.  out may be x. */
void roid_running_stats_standardize(const roid_running_stats *s, const double *x, double *out);

#endif
