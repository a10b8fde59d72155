#include "analysis/roi.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/kmeans.h"
#include "analysis/scan.h"
#include "service/limits.h"

#define MAX_CH    (ROID_MAX_SEGMENTS + 1)
#define MAX_MOD   (2 * MAX_CH)
#define LOG_FLOOR 1e-12 /* log of an exactly empty value stays finite */
#define BATCH     1024  /* points per mini-batch step of the general clustering */

struct roid_roi {
        roid_roi_params p;
        uint32_t ny, nx;
        size_t np;
        unsigned nch, nmod, ndim;
        uint64_t frames, since_refit, refits;
        uint64_t dark;     /* frames without counts, left out (roid_roi_add) */
        uint64_t glitches; /* frames near full scale, left out (roid_roi_add) */
        bool reseed;       /* the outliers changed: the next steps start afresh (judge_outliers) */
        double fence;      /* mean T above which a point is an outlier (bright_fence); INFINITY: none yet */
        uint32_t n_outliers;
        bool hold_refits; /* the caller refits (roid_roi_hold_refits) */
        bool finished;
        bool maps_only; /* a roid_roi_copy_maps snapshot: for the accessors only */
        roid_rng rng;   /* batch sampling of the general clustering */

        uint32_t *cnt;                 /* frames per point */
        uint32_t *seen_list, n_seen;   /* points with a frame, in arrival order */
        uint32_t *dirty, n_dirty;      /* points with a frame since the last refit */
        uint8_t *mark;                 /* 1: in dirty; 2: compute_maps' neighbourhood set */
        double *acc_t, *acc_x, *acc_y; /* per channel and point: sums over its frames (x, y: those in ncom) */
        /* Per channel and point: the frames whose region (the frame, a
         * segment) had counts.  An empty region's CoM is the beam centre
         * (features.h), no measurement: far from a segment's usual CoM, it
         * stood out in every |CoM| map, so such a frame gives its channel no
         * CoM (neither to the point's mean nor to st[]); T counts it. */
        uint32_t *ncom;
        double *acc_bf, *acc_df;
        double *lbd;                   /* 2 per point: log1p of the mean BF and DF (general clustering) */
        roid_running_stats st[MAX_CH]; /* CoM (x, y) per channel over the frames in ncom */

        double *raw, *filt; /* nmod * np */
        uint8_t *lab, *lab_online;
        uint8_t *online, *raw_mask, *mask, *tmp;
        uint8_t *outlier; /* 1: left out of the filtered maps as implausibly bright (bright_fence) */
        uint32_t *queue;
        roid_kmeans km[MAX_MOD];    /* two centres per modality, d = 1 */
        bool sig[MAX_MOD];          /* its cut stands out from noise (significant()) */
        double cen_out[MAX_MOD][2]; /* [RoI side, other] as of the last relabel */
        /* A frame's label per modality from its raw value v (floored as by
         * mlog): lab_cut[m][0] below thr[m], [1] at it, [2] above. */
        double thr[MAX_MOD];
        uint8_t lab_cut[MAX_MOD][3];

        double *feat;   /* n_seen x ndim standardised vectors, in seen_list order */
        double *gather; /* np: one modality's filtered values, in seen_list order */
        double *batch;  /* BATCH x ndim: a sampled mini-batch of feat */
        unsigned *klab; /* np: labels in seen_list order */
        uint8_t *glab;
        roid_kmeans gk; /* general clustering, k x ndim */
};

/* Every array with its size in bytes, so that new, copy and clone cannot miss
 * one and roid_roi_state_bytes is what new allocates (the k-means states are
 * apart): the per-series state and scratch, then what the accessors read (the
 * maps).  r: anything with the fields of roi_dims. */
#define ROI_STATE(X, r)                                                                                                \
        X(seen_list, (uint64_t)(r)->np * sizeof(uint32_t))                                                             \
        X(queue, (uint64_t)(r)->np * sizeof(uint32_t))                                                                 \
        X(dirty, (uint64_t)(r)->np * sizeof(uint32_t))                                                                 \
        X(mark, (uint64_t)(r)->np)                                                                                     \
        X(acc_t, (uint64_t)(r)->nch *(r)->np * sizeof(double))                                                         \
        X(acc_x, (uint64_t)(r)->nch *(r)->np * sizeof(double))                                                         \
        X(acc_y, (uint64_t)(r)->nch *(r)->np * sizeof(double))                                                         \
        X(ncom, (uint64_t)(r)->nch *(r)->np * sizeof(uint32_t))                                                        \
        X(acc_bf, (uint64_t)(r)->np * sizeof(double))                                                                  \
        X(acc_df, (uint64_t)(r)->np * sizeof(double))                                                                  \
        X(lbd, (uint64_t)2 * (r)->np * sizeof(double))                                                                 \
        X(feat, (uint64_t)(r)->ndim *(r)->np * sizeof(double))                                                         \
        X(gather, (uint64_t)(r)->np * sizeof(double))                                                                  \
        X(batch, (uint64_t)BATCH *(r)->ndim * sizeof(double))                                                          \
        X(klab, (uint64_t)(r)->np * sizeof(unsigned))                                                                  \
        X(tmp, (uint64_t)(r)->np)
#define ROI_MAPS(X, r)                                                                                                 \
        X(cnt, (uint64_t)(r)->np * sizeof(uint32_t))                                                                   \
        X(raw, (uint64_t)(r)->nmod *(r)->np * sizeof(double))                                                          \
        X(filt, (uint64_t)(r)->nmod *(r)->np * sizeof(double))                                                         \
        X(lab, (uint64_t)(r)->nmod *(r)->np)                                                                           \
        X(lab_online, (uint64_t)(r)->nmod *(r)->np)                                                                    \
        X(online, (uint64_t)(r)->np)                                                                                   \
        X(raw_mask, (uint64_t)(r)->np)                                                                                 \
        X(outlier, (uint64_t)(r)->np)                                                                                  \
        X(mask, (uint64_t)(r)->np)                                                                                     \
        X(glab, (uint64_t)(r)->np)

typedef struct {
        size_t np;
        unsigned nch, nmod, ndim;
} roi_dims;

static roi_dims dims_of(const roid_roi_params *p, uint32_t ny, uint32_t nx) {
        roi_dims d = {.np = (size_t)ny * nx, .nch = p->n_segments > 1 ? 1 + p->n_segments : 1};
        d.nmod = 2 * d.nch;
        d.ndim = d.nmod + (p->use_bf ? 1 : 0) + (p->use_df ? 1 : 0);
        return d;
}

/* The state's bytes with `copies` snapshots of its maps. */
static uint64_t bytes_of(const roi_dims *d, unsigned copies) {
        uint64_t state = 0, maps = 0;
#define ROI_SIZE(name, bytes) state += (uint64_t)(bytes);
        ROI_STATE(ROI_SIZE, d)
#undef ROI_SIZE
#define ROI_SIZE(name, bytes) maps += (uint64_t)(bytes);
        ROI_MAPS(ROI_SIZE, d)
#undef ROI_SIZE
        return state + (1 + (uint64_t)copies) * maps;
}

static const char *size_text(uint64_t bytes, char *buf, size_t size) {
        if (bytes >= (UINT64_C(1) << 30))
                snprintf(buf, size, "%.2f GiB", (double)bytes / (UINT64_C(1) << 30));
        else
                snprintf(buf, size, "%.1f MiB", (double)bytes / (UINT64_C(1) << 20));
        return buf;
}

uint64_t roid_roi_state_bytes(const roid_roi_params *p, uint32_t ny, uint32_t nx) {
        const roi_dims d = dims_of(p, ny, nx);
        return bytes_of(&d, p->map_copies);
}

void roid_roi_params_default(roid_roi_params *p) {
        memset(p, 0, sizeof *p);
        p->n_segments = ROID_DEFAULT_SEGMENTS;
        p->k = 4;
        p->cadence = 64;
        p->seed = 1;
        p->max_iter = 300;
}

/* maps_only: the arrays of ROI_MAPS only, for a snapshot (roid_roi_clone_maps). */
static int create(const roid_roi_params *p, uint32_t ny, uint32_t nx, bool maps_only, roid_roi **ret, roid_err *err) {
        if (p->n_segments < 1 || p->n_segments > ROID_MAX_SEGMENTS)
                return roid_err_set(err, -EINVAL, "segments: %u, must be 1..%u", p->n_segments, ROID_MAX_SEGMENTS);
        if (p->k < 2 || p->k > ROID_ROI_MAX_K)
                return roid_err_set(err, -EINVAL, "k: %u, must be 2..%u", p->k, ROID_ROI_MAX_K);
        if (p->border < -ROID_ROI_MAX_BORDER || p->border > ROID_ROI_MAX_BORDER)
                return roid_err_set(err, -EINVAL, "border: %d, must be -%d..%d", p->border, ROID_ROI_MAX_BORDER,
                                    ROID_ROI_MAX_BORDER);
        if (ny < 1 || nx < 1 || (uint64_t)ny * nx > ROID_SCAN_MAX_POINTS)
                return roid_err_set(err, -EINVAL, "scan grid %u x %u: must be 1..%llu points", ny, nx,
                                    (unsigned long long)ROID_SCAN_MAX_POINTS);
        const roi_dims d = dims_of(p, ny, nx);
        const uint64_t bytes = bytes_of(&d, p->map_copies);
        if (bytes > SIZE_MAX) /* a 32-bit build: every array is below the total */
                return roid_err_set(err, -ENOMEM, "scan %u x %u at %u segments: %llu bytes of RoI state", ny, nx,
                                    p->n_segments, (unsigned long long)bytes);
        const uint64_t other = maps_only ? 0 : p->other_state_bytes;
        if (p->max_state_bytes && (bytes > p->max_state_bytes || other > p->max_state_bytes - bytes)) {
                char need[32], max[32], oth[32];
                /* the value to configure, in the config's own unit, rounded up */
                uint64_t total;
                const unsigned long long mib =
                        __builtin_add_overflow(bytes, other, &total) || total > UINT64_MAX - ((1u << 20) - 1)
                                ? UINT64_MAX >> 20
                                : (total + (1u << 20) - 1) >> 20;
                return roid_err_set(err, -EMSGSIZE,
                                    "scan %u x %u at %u segment%s needs %s of RoI state%s (%.0f bytes a point)%s%s%s, "
                                    "more than max_analysis_bytes %s (set it to %lluM or more)",
                                    ny, nx, p->n_segments, p->n_segments == 1 ? "" : "s",
                                    size_text(bytes, need, sizeof need),
                                    p->map_copies ? " with snapshots of its maps" : "", (double)bytes / (double)d.np,
                                    other ? " and " : "", other ? size_text(other, oth, sizeof oth) : "",
                                    other ? " of feedback and published messages" : "",
                                    size_text(p->max_state_bytes, max, sizeof max), mib);
        }
        roid_roi *r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->p = *p;
        r->ny = ny;
        r->nx = nx;
        r->np = d.np;
        r->nch = d.nch;
        r->nmod = d.nmod;
        r->ndim = d.ndim;
        roid_rng_seed(&r->rng, p->seed);
        r->fence = INFINITY;
        size_t np = r->np, nm = r->nmod * np;
        bool ok = true;
#define ROI_ALLOC(name, bytes) ok = (r->name = roid_calloc_committed(1, (size_t)(bytes))) != NULL && ok;
        if (!maps_only) {
                ROI_STATE(ROI_ALLOC, r)
        }
        ROI_MAPS(ROI_ALLOC, r)
#undef ROI_ALLOC
        r->maps_only = maps_only;
        if (!ok) {
                roid_roi_free(r);
                return -ENOMEM;
        }
        int e = roid_kmeans_init(&r->gk, p->k, r->ndim, BATCH, p->seed, err);
        r->gk.progress = p->progress;
        r->gk.progress_ctx = p->progress_ctx;
        for (unsigned m = 0; m < r->nmod && e == 0; m++) {
                e = roid_kmeans_init(&r->km[m], 2, 1, 2, p->seed, err);
                /* two centres on one line: no starved centre to re-seed */
                r->km[m].reassignment_ratio = 0;
                r->km[m].progress = p->progress;
                r->km[m].progress_ctx = p->progress_ctx;
        }
        for (unsigned c = 0; c < r->nch && e == 0; c++)
                e = roid_running_stats_init(&r->st[c], 2);
        if (e < 0) {
                roid_roi_free(r);
                return e;
        }
        for (size_t i = 0; i < nm; i++)
                r->raw[i] = r->filt[i] = NAN;
        for (unsigned m = 0; m < MAX_MOD; m++)
                r->cen_out[m][0] = r->cen_out[m][1] = NAN;
        memset(r->lab, ROID_ROI_UNSEEN, nm);
        memset(r->lab_online, ROID_ROI_UNSEEN, nm);
        memset(r->glab, ROID_ROI_UNSEEN, np);
        *ret = r;
        return 0;
}

int roid_roi_new(const roid_roi_params *p, uint32_t ny, uint32_t nx, roid_roi **ret, roid_err *err) {
        return create(p, ny, nx, false, ret, err);
}

void roid_roi_free(roid_roi *r) {
        if (!r)
                return;
        free(r->cnt);
        free(r->seen_list);
        free(r->queue);
        free(r->dirty);
        free(r->mark);
        free(r->acc_t);
        free(r->acc_x);
        free(r->acc_y);
        free(r->ncom);
        free(r->acc_bf);
        free(r->acc_df);
        free(r->lbd);
        free(r->raw);
        free(r->filt);
        free(r->feat);
        free(r->gather);
        free(r->batch);
        free(r->klab);
        free(r->lab);
        free(r->lab_online);
        free(r->online);
        free(r->raw_mask);
        free(r->outlier);
        free(r->mask);
        free(r->tmp);
        free(r->glab);
        roid_kmeans_free(&r->gk);
        for (unsigned m = 0; m < MAX_MOD; m++)
                roid_kmeans_free(&r->km[m]);
        free(r);
}

static int copy_internal(roid_roi *dst, const roid_roi *src, bool maps_only) {
        if (dst->ny != src->ny || dst->nx != src->nx || dst->nch != src->nch || dst->ndim != src->ndim ||
            dst->p.k != src->p.k || (!maps_only && (!dst->seen_list || !src->seen_list)))
                return -EINVAL;
        roid_roi keep = *dst;
        *dst = *src;
#define ROI_KEEP(name, bytes) dst->name = keep.name;
#define ROI_COPY(name, bytes)                                                                                          \
        dst->name = keep.name;                                                                                         \
        memcpy(dst->name, src->name, bytes);
        if (maps_only) {
                ROI_STATE(ROI_KEEP, src)
        } else {
                ROI_STATE(ROI_COPY, src)
        }
        ROI_MAPS(ROI_COPY, src)
#undef ROI_COPY
#undef ROI_KEEP
        dst->gk = keep.gk;
        roid_kmeans_copy(&dst->gk, &src->gk);
        for (unsigned m = 0; m < src->nmod; m++) {
                dst->km[m] = keep.km[m];
                roid_kmeans_copy(&dst->km[m], &src->km[m]);
        }
        dst->maps_only = maps_only;
        return 0;
}

int roid_roi_copy(roid_roi *dst, const roid_roi *src) {
        return copy_internal(dst, src, false);
}

int roid_roi_copy_maps(roid_roi *dst, const roid_roi *src) {
        return copy_internal(dst, src, true);
}

int roid_roi_clone_maps(const roid_roi *src, roid_roi **ret) {
        roid_roi *r;
        roid_err err;
        int e = create(&src->p, src->ny, src->nx, true, &r, &err);
        if (e < 0)
                return e;
        copy_internal(r, src, true);
        *ret = r;
        return 0;
}

/* ------------------------------------------------------------ modalities */

static bool is_total(unsigned m) {
        return m % 2 == 0;
}

/* A channel's scan-wide CoM statistics, taken once per refit or frame
 * instead of once per point (each take costs two square roots). */
typedef struct {
        double mean[2], isd[2]; /* isd = 1 / std, 0 where std is 0 */
} zstat;

static void zstats(const roid_roi *r, zstat *ret) {
        for (unsigned c = 0; c < r->nch; c++) {
                double sd[2];
                roid_running_stats_std(&r->st[c], sd);
                for (int a = 0; a < 2; a++) {
                        ret[c].mean[a] = r->st[c].mean[a];
                        ret[c].isd[a] = sd[a] > 0 ? 1 / sd[a] : 0;
                }
        }
}

/* Unfiltered values at seen point i, out[m * stride] for modality m: mean
 * T (even m), and the magnitude of the point's mean CoM standardised with the
 * scan-wide statistics, eq. 2 (odd m); both means over the frames that give
 * one (T: all; CoM: ncom).  A point none of whose frames gave a channel a CoM
 * has NaN there (Empty regions in roi.h). */
static void raw_totals(const roid_roi *r, size_t i, double *out, size_t stride) {
        double inv = 1.0 / r->cnt[i];
        for (unsigned c = 0; c < r->nch; c++)
                out[2 * c * stride] = r->acc_t[(size_t)c * r->np + i] * inv;
}

static void raw_coms(const roid_roi *r, const zstat *z, size_t i, double *out, size_t stride) {
        for (unsigned c = 0; c < r->nch; c++) {
                size_t k = (size_t)c * r->np + i;
                if (!r->ncom[k]) {
                        out[(2 * c + 1) * stride] = NAN;
                        continue;
                }
                double inv = 1.0 / r->ncom[k];
                double a = (r->acc_x[k] * inv - z[c].mean[0]) * z[c].isd[0];
                double b = (r->acc_y[k] * inv - z[c].mean[1]) * z[c].isd[1];
                out[(2 * c + 1) * stride] = sqrt(a * a + b * b);
        }
}

static double flog(double v) {
        return log(v > LOG_FLOOR ? v : LOG_FLOOR);
}

/* The log scale modality m is clustered on: log(1 + T) for a total, which
 * is log T at the counts of a diffraction frame but keeps a point of few
 * counts near its neighbours (a 3x3 mean of 0 counts, at low dose, sat at
 * log 1e-12 = -27.6, an outlier that two-cluster k-means isolated and the
 * noise test passed: short-lived RoI points in 5-13 % of background scans at
 * 20 counts a frame, found by review); log |CoM| for a centre of mass. */
static double mlog(unsigned m, double v) {
        return is_total(m) ? log1p(v > 0 ? v : 0) : flog(v);
}

/* Index 0/1 of the RoI-side centre: low T, high |CoM|. */
static unsigned roi_side(const roid_roi *r, unsigned m) {
        const double *c = r->km[m].centers;
        return is_total(m) == (c[0] <= c[1]) ? 0 : 1;
}

/* Whether two centres stand apart, beyond rounding: a scan with no contrast
 * (every frame alike) has means an ulp apart where points hold different
 * numbers of frames, and centres that start or end there must label nothing,
 * where a tie would have labelled every point RoI (found by review). */
static bool apart(double c0, double c1) {
        return fabs(c1 - c0) > 1e-9 * fmax(1.0, fmax(fabs(c0), fabs(c1)));
}

/* Whether modality m labels: two centres that stand apart and that
 * significant() accepted. */
static bool split(const roid_roi *r, unsigned m) {
        const roid_kmeans *km = &r->km[m];
        return km->initialized && r->sig[m] && apart(km->centers[0], km->centers[1]);
}

/* Whether the two clusters of x[0..n) around centres c are structure rather
 * than noise.  Two-cluster k-means always cuts a map in two; on a map of
 * background alone (the first lines of a scan, a segment that sees no
 * object) the cut halves the noise, and the union over the modalities would
 * mark every point.  A cut passes either test:
 *  - D, the classification log-likelihood of two normals (one per side)
 *    against one,
 *        D = n/2 ln v - n0/2 ln v0 - n1/2 ln v1 + n0 ln(n0/n) + n1 ln(n1/n),
 *    above SIG_PRICE ln n: a small object that stands out (a disk of 1 % of a
 *    48 x 48 map at 10 % less T under Poisson noise of 1000 counts gives
 *    0.19 n).  Noise gives about -0.19 n; but the 3x3 filter makes
 *    neighbours alike and the scan front's points have fewer of them, so on
 *    partial rasters of 8..192 points of T or |CoM| noise D reached 7.8 ln n.
 *  - R2 = 1 - (within-cluster variance) / v, the share of the variance the
 *    cut explains, above 2/pi + SIG_R2 / sqrt(n): a large object of weak
 *    contrast, which k-means segments well but D, paying n H(n0/n) for the
 *    labels, rejects (half the map at 0.95 sigma a frame: R2 0.70-0.72 at
 *    48 x 48).  The best cut of normal noise explains 2/pi = 0.637; partial
 *    rasters of T or |CoM| noise stayed below 0.637 + 1.65 / sqrt(n) (200
 *    trials each, 64..40000 points).  A slow drift (a ramp, R2 0.72-0.75)
 *    passes, as it does in the method without the test: beam decay of 1 %
 *    over a background scan at 1e4-1e5 counts a frame marks half of it,
 *    which the likelihood test alone rejected (found by review).
 * Fewer than SIG_MIN points never pass: two lines of a narrow scan are too
 * few to tell (with 8 segments, 18 modalities, some cut passed in 15-47 % of
 * background scans 8-16 points wide, found by review). */
#define SIG_PRICE 8.0
#define SIG_R2    2.5
#define SIG_MIN   64
static bool significant(const double *c, const double *x, uint32_t n, double *ret_k) {
        if (n < SIG_MIN)
                return false;
        /* Selects, not k[j] += 1: an indexed sum waits for the previous one
         * through memory.  Each side's sums add the same terms in the same
         * order as before (x + 0.0 is x), so the decisions are unchanged. */
        double s0 = 0, s1 = 0, q0 = 0, q1 = 0, qa = 0;
        uint32_t n1 = 0;
        for (uint32_t i = 0; i < n; i++) {
                const double v = x[i];
                const bool j = roid_kmeans_nearest2(c, v);
                n1 += j;
                s0 += j ? 0.0 : v;
                s1 += j ? v : 0.0;
        }
        const double k[2] = {(double)(n - n1), (double)n1};
        if (k[0] < 2 || k[1] < 2)
                return false;
        const double mean0 = s0 / k[0], mean1 = s1 / k[1], all = (s0 + s1) / n;
        for (uint32_t i = 0; i < n; i++) {
                const double v = x[i];
                const bool j = roid_kmeans_nearest2(c, v);
                const double d = v - (j ? mean1 : mean0), e = v - all;
                q0 += j ? 0.0 : d * d;
                q1 += j ? d * d : 0.0;
                qa += e * e;
        }
        if (!(qa > 0))
                return false;
        ret_k[0] = k[0], ret_k[1] = k[1];
        if (1 - (q0 + q1) / qa > 2 / M_PI + SIG_R2 / sqrt((double)n))
                return true;
        /* A flat side (all its values equal) is floored at 1e-12 of the map's
         * variance, so two distinct values pass, as they should. */
        const double v = qa / n, vmin = v * 1e-12, v0 = fmax(q0 / k[0], vmin), v1 = fmax(q1 / k[1], vmin);
        const double d =
                0.5 * (n * log(v) - k[0] * log(v0) - k[1] * log(v1)) + k[0] * log(k[0] / n) + k[1] * log(k[1] / n);
        return d > SIG_PRICE * log((double)n);
}

/* 1 when v falls on the RoI side (index `side`) of modality m's centres. */
/* The 3x3 mean over the seen neighbours of point i, then the log, for the
 * modalities m0, m0 + step, ... */
static void filter_point(roid_roi *r, size_t i, unsigned m0, unsigned step) {
        size_t np = r->np, nb[9];
        uint32_t y = (uint32_t)(i / r->nx), x = (uint32_t)(i % r->nx);
        unsigned n = 0;
        for (int dy = -1; dy <= 1; dy++) {
                int64_t yy = (int64_t)y + dy;
                if (yy < 0 || yy >= r->ny)
                        continue;
                for (int dx = -1; dx <= 1; dx++) {
                        int64_t xx = (int64_t)x + dx;
                        if (xx < 0 || xx >= r->nx)
                                continue;
                        size_t j = (size_t)yy * r->nx + (size_t)xx;
                        if (r->cnt[j] && !r->outlier[j])
                                nb[n++] = j;
                }
        }
        for (unsigned m = m0; m < r->nmod; m += step) {
                const double *raw = r->raw + m * np;
                double sum = 0;
                unsigned k = 0;
                for (unsigned q = 0; q < n; q++)
                        if (!isnan(raw[nb[q]])) /* a |CoM| no frame gave (Empty regions in roi.h) */
                                sum += raw[nb[q]], k++;
                r->filt[m * np + i] = k ? mlog(m, sum / k) : NAN;
        }
}

/* Outliers (roi.h).  With the direct beam on the detector a sample brings
 * no more photons than the beam itself, so a point far brighter than the
 * scan's brightest percent is no measurement of it: a glitch below the
 * full-scale rule (a hot module).  Five frames near full scale in a 128 x 128
 * scan put their 3 x 3 neighbourhoods (+6.4 in log T) on one side of the T
 * map's two-cluster cut and the other 99.7 % of the points, object and
 * background alike, on the RoI side (IoU 0.20 with the object instead of
 * 0.94; found by review; such frames are now left out on arrival).  A point
 * is an outlier when its mean T exceeds both GATE_FACTOR x q99 and q99 +
 * GATE_SPREAD x (q99 - q50) (q: quantiles of the mean T over the points
 * seen, a spread of at least one count): 21 sigma of Gaussian noise above
 * the median.  An object that scatters out of the detector, or absorbs,
 * lowers T, and one over most of the scan leaves the background in the top
 * percent.  Beam fluctuations stay below (a top-up injection: 1 %; a refill
 * in decay mode: 2 to 2.2 times, which flagged the scan's last points at a
 * factor 2, found by review; SASE pulses).  Below 200 points one point may be
 * judged so (q99 the second largest: the first maximum was the glitch
 * itself, and an early one stayed unjudged while the first refits put a
 * centre at it), above that 1 % of them. */
#define GATE_MIN    64
#define GATE_FACTOR 3.0
#define GATE_SPREAD 8.0
#define GATE_BINS   4096

/* The fence, from a histogram of log1p(mean T) over the points seen (a
 * quantile to 1/GATE_BINS of the range, rounded outwards: O(n), bounded,
 * whatever the values); INFINITY when too few points or all alike. */
static double bright_fence(const roid_roi *r) {
        const double *t = r->raw; /* modality 0: mean T */
        const uint32_t n = r->n_seen;
        if (n < GATE_MIN)
                return INFINITY;
        double lo = INFINITY, hi = -INFINITY;
        for (uint32_t s = 0; s < n; s++) {
                const double v = log1p(t[r->seen_list[s]]);
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
        }
        if (!(hi > lo))
                return INFINITY;
        uint32_t h[GATE_BINS] = {0};
        const double scale = GATE_BINS / (hi - lo);
        for (uint32_t s = 0; s < n; s++) {
                const double b = (log1p(t[r->seen_list[s]]) - lo) * scale;
                h[b < GATE_BINS - 1 ? (unsigned)b : GATE_BINS - 1]++;
        }
        /* q50 from its bin's lower edge, q99 from its upper: a wider spread and a higher fence */
        const uint64_t k50 = (uint64_t)n / 2, k99 = (uint64_t)n - (n < 200 ? 1 : (uint64_t)n / 100);
        uint64_t c = 0;
        unsigned b50 = GATE_BINS, b99 = GATE_BINS - 1;
        for (unsigned b = 0; b < GATE_BINS; b++) {
                c += h[b];
                if (b50 == GATE_BINS && c > k50)
                        b50 = b;
                if (c >= k99) {
                        b99 = b;
                        break;
                }
        }
        const double q50 = expm1(lo + b50 / scale), q99 = expm1(lo + (b99 + 1) / scale);
        const double spread = fmax(q99 - q50, 1.0);
        return fmax(GATE_FACTOR * q99, q99 + GATE_SPREAD * spread);
}

/* Judges every point seen against a new fence.  An outlier's frames are
 * left out of the scan-wide CoM statistics: a glitch's CoM, tens of
 * deviations off, would inflate them for every point.  A point that changes
 * gives its frames back or takes them in, as a group at their mean (exact
 * for a point of one frame); in the incremental pass it joins the dirty list,
 * so that its neighbourhood's T is filtered again (the |CoM| maps are
 * filtered everywhere). */
static void judge_outliers(roid_roi *r, bool full) {
        r->fence = bright_fence(r);
        uint32_t n = 0;
        for (uint32_t s = 0; s < r->n_seen; s++) {
                const uint32_t i = r->seen_list[s];
                const uint8_t o = r->raw[i] > r->fence;
                n += o;
                if (o == r->outlier[i])
                        continue;
                r->outlier[i] = o;
                r->reseed = true;
                for (unsigned c = 0; c < r->nch; c++) {
                        const size_t k = (size_t)c * r->np + i;
                        if (!r->ncom[k])
                                continue;
                        const double inv = 1.0 / r->ncom[k], mean[2] = {r->acc_x[k] * inv, r->acc_y[k] * inv};
                        roid_running_stats_add_group(&r->st[c], o ? -(int64_t)r->ncom[k] : (int64_t)r->ncom[k], mean);
                }
                if (!full && !(r->mark[i] & 1)) {
                        r->mark[i] |= 1;
                        r->dirty[r->n_dirty++] = i;
                }
        }
        r->n_outliers = n;
}

/* Raw maps, then the filtered log maps.  The |CoM| maps change everywhere
 * whenever the scan-wide statistics move, so they are recomputed over all
 * the points seen; a T map changes only at the points that took a frame
 * since the last refit (the dirty list) and, filtered, in their 3x3
 * neighbourhoods, so unless `full` only those are recomputed. */
static void compute_maps(roid_roi *r, bool full) {
        size_t np = r->np;
        zstat z[MAX_CH];
        if (full)
                for (uint32_t s = 0; s < r->n_seen; s++)
                        raw_totals(r, r->seen_list[s], r->raw + r->seen_list[s], np);
        else
                for (uint32_t d = 0; d < r->n_dirty; d++)
                        raw_totals(r, r->dirty[d], r->raw + r->dirty[d], np);
        judge_outliers(r, full); /* before the statistics: it changes them */
        zstats(r, z);
        for (uint32_t s = 0; s < r->n_seen; s++)
                raw_coms(r, z, r->seen_list[s], r->raw + r->seen_list[s], np);
        if (full) {
                for (uint32_t s = 0; s < r->n_seen; s++)
                        filter_point(r, r->seen_list[s], 0, 1);
        } else {
                for (uint32_t s = 0; s < r->n_seen; s++)
                        filter_point(r, r->seen_list[s], 1, 2);
                /* The dirty points' seen neighbourhoods, each point once. */
                uint32_t nu = 0;
                for (uint32_t d = 0; d < r->n_dirty; d++) {
                        uint32_t i = r->dirty[d], y = i / r->nx, x = i % r->nx;
                        for (uint32_t yy = y ? y - 1 : 0; yy <= y + 1 && yy < r->ny; yy++)
                                for (uint32_t xx = x ? x - 1 : 0; xx <= x + 1 && xx < r->nx; xx++) {
                                        size_t j = (size_t)yy * r->nx + xx;
                                        if (r->cnt[j] && !(r->mark[j] & 2)) {
                                                r->mark[j] |= 2;
                                                r->queue[nu++] = (uint32_t)j;
                                        }
                                }
                }
                for (uint32_t u = 0; u < nu; u++) {
                        filter_point(r, r->queue[u], 0, 2);
                        r->mark[r->queue[u]] &= (uint8_t)~2;
                }
        }
        for (uint32_t d = 0; d < r->n_dirty; d++)
                r->mark[r->dirty[d]] = 0;
        r->n_dirty = 0;
}

/* The filtered values of modality m in seen_list order, into r->gather,
 * leaving out the points without one (NaN: Empty regions in roi.h); their
 * number in *ret_n. */
static const double *gather_modality(roid_roi *r, unsigned m, uint32_t *ret_n) {
        const double *v = r->filt + m * r->np;
        uint32_t n = 0;
        for (uint32_t s = 0; s < r->n_seen; s++)
                if (!isnan(v[r->seen_list[s]]))
                        r->gather[n++] = v[r->seen_list[s]];
        *ret_n = n;
        return r->gather;
}

/* Whether modality m may label, given its map x[0..n) and its centres: its
 * cut is significant(), and for a segment's total T_s the RoI (low) side
 * holds at most half of the points.  A segment's total measures more than
 * absorption: a phase gradient deflects the beam, moving intensity from one
 * segment to the opposite one, so over a phase object T_s rises in some
 * segments.  Their two clusters are then the bright object points and the
 * background, and "low T_s is RoI" marked the background: every point of a
 * scan of small phase particles at 8 segments (1,600 of 1,600, 91 at one
 * segment; found by review).  Absorption lowers every T_s and the whole
 * pattern's T alike, so an absorbing object over more than half of the scan
 * is still labelled by the whole pattern's T, which this rule leaves alone. */
static bool may_label(const roid_roi *r, unsigned m, const double *x, uint32_t n) {
        double k[2];
        if (!significant(r->km[m].centers, x, n, k))
                return false;
        return m < 2 || !is_total(m) || 2 * k[roi_side(r, m)] <= n;
}

/* One mini-batch step on the whole current map of modality m, the counts
 * halved first so the centres follow the standardisation as it settles;
 * the first one starts from the map's extremes, and so does the first after
 * the outliers changed: an early glitch's neighbourhood made an extreme, and
 * the centre it left behind, with no point near it once the glitch was
 * judged, kept the cut failing significant() for the rest of the scan (the
 * online mask empty; found by review). */
static void km1_partial(roid_roi *r, unsigned m) {
        uint32_t n;
        const double *x = gather_modality(r, m, &n);
        r->sig[m] = false;
        if (n == 0)
                return;
        if (!r->km[m].initialized || r->reseed) {
                double c[2] = {INFINITY, -INFINITY};
                for (uint32_t s = 0; s < n; s++) {
                        c[0] = x[s] < c[0] ? x[s] : c[0];
                        c[1] = x[s] > c[1] ? x[s] : c[1];
                }
                if (!(c[1] > c[0]) || !apart(c[0], c[1]))
                        return;
                roid_kmeans_set_centers(&r->km[m], c);
        }
        roid_kmeans_step(&r->km[m], x, n, 0.5);
        r->sig[m] = may_label(r, m, x, n);
}

/* The two-cluster split of x[0..n) of least within-cluster sum of squares,
 * to a bin of a SPLIT_BINS histogram over the range of x: the means of its
 * two sides into c.  false when all values are equal or fall in one bin. */
#define SPLIT_BINS 1024
static bool best_split(const double *x, uint32_t n, double *c) {
        double lo = INFINITY, hi = -INFINITY;
        for (uint32_t i = 0; i < n; i++) {
                lo = x[i] < lo ? x[i] : lo;
                hi = x[i] > hi ? x[i] : hi;
        }
        if (!(hi > lo))
                return false;
        double cnt[SPLIT_BINS] = {0}, sum[SPLIT_BINS] = {0}, sq[SPLIT_BINS] = {0};
        const double scale = SPLIT_BINS / (hi - lo);
        for (uint32_t i = 0; i < n; i++) {
                const double t = (x[i] - lo) * scale;
                const unsigned b = t < SPLIT_BINS - 1 ? (unsigned)t : SPLIT_BINS - 1;
                cnt[b] += 1, sum[b] += x[i], sq[b] += x[i] * x[i];
        }
        double tc = 0, ts = 0, tq = 0;
        for (unsigned b = 0; b < SPLIT_BINS; b++)
                tc += cnt[b], ts += sum[b], tq += sq[b];
        double lc = 0, ls = 0, lq = 0, best = INFINITY;
        for (unsigned b = 0; b + 1 < SPLIT_BINS; b++) {
                lc += cnt[b], ls += sum[b], lq += sq[b];
                const double rc = tc - lc;
                if (lc == 0 || rc == 0)
                        continue;
                const double rs = ts - ls, e = (lq - ls * ls / lc) + ((tq - lq) - rs * rs / rc);
                if (e < best) {
                        best = e;
                        c[0] = ls / lc;
                        c[1] = rs / rc;
                }
        }
        return best < INFINITY;
}

/* Full-batch Lloyd from the current centres and, when that ends worse, from
 * the best split of the map.  Lloyd finds a local optimum near where it
 * starts, and the online centres can start it in a poor one: three segment
 * totals of a phantom ended with a within-cluster error well above the best
 * split's and, their cut then failing significant(), labelled nothing, where
 * refits at another cadence labelled 180 points each (found by review). */
static void km1_lloyd(roid_roi *r, unsigned m) {
        if (!r->km[m].initialized)
                return;
        uint32_t n;
        const double *x = gather_modality(r, m, &n);
        r->sig[m] = false;
        if (n == 0)
                return;
        roid_kmeans *km = &r->km[m];
        double e_online, e_split, c[2];
        roid_kmeans_refine(km, x, n, r->p.max_iter, r->klab, NULL, &e_online);
        const double kept[4] = {km->centers[0], km->centers[1], km->counts[0], km->counts[1]};
        if (best_split(x, n, c)) {
                roid_kmeans_set_centers(km, c);
                roid_kmeans_refine(km, x, n, r->p.max_iter, r->klab, NULL, &e_split);
                if (!(e_split < e_online * (1 - 1e-12))) {
                        km->centers[0] = kept[0], km->centers[1] = kept[1];
                        km->counts[0] = kept[2], km->counts[1] = kept[3];
                }
        }
        r->sig[m] = may_label(r, m, x, n);
}

/* The labels roid_roi_add gives, as cuts on the raw value: the nearest of
 * two centres on the log scale flips at their midpoint, so a frame needs one
 * comparison with exp(midpoint) (expm1 for a total) per modality instead of
 * a log (equal to relabel()'s label of mlog(v) but where the two roundings differ,
 * within an ulp of the cut).  Taken whenever the centres change. */
static void set_cuts(roid_roi *r) {
        for (unsigned m = 0; m < r->nmod; m++) {
                const roid_kmeans *km = &r->km[m];
                const unsigned side = roi_side(r, m);
                const double c0 = km->centers[0], c1 = km->centers[1];
                /* nearest centre index below, at and above the cut */
                unsigned n[3] = {0, 0, 0};
                if (c1 > c0)
                        n[2] = 1;
                else if (c1 < c0)
                        n[0] = 1;
                r->thr[m] = is_total(m) ? expm1(0.5 * (c0 + c1)) : exp(0.5 * (c0 + c1));
                for (int k = 0; k < 3; k++)
                        r->lab_cut[m][k] = split(r, m) && n[k] == side;
        }
}

static void relabel(roid_roi *r) {
        size_t np = r->np;
        for (unsigned m = 0; m < r->nmod; m++) {
                unsigned s = roi_side(r, m);
                const bool have = split(r, m);
                r->cen_out[m][0] = have ? r->km[m].centers[s] : NAN;
                r->cen_out[m][1] = have ? r->km[m].centers[1 - s] : NAN;
        }
        for (uint32_t s = 0; s < r->n_seen; s++)
                r->online[r->seen_list[s]] = 0;
        for (unsigned m = 0; m < r->nmod; m++) {
                const double *v = r->filt + m * np;
                uint8_t *lab = r->lab + m * np, *online = r->online;
                const uint32_t *seen = r->seen_list, n_seen = r->n_seen;
                /* in locals: the byte stores below may alias any of r's fields */
                const unsigned side = roi_side(r, m);
                const bool labels = split(r, m);
                const double c[2] = {r->km[m].centers[0], r->km[m].centers[1]};
                for (uint32_t s = 0; s < n_seen; s++) {
                        const size_t i = seen[s];
                        lab[i] = labels && !isnan(v[i]) && roid_kmeans_nearest2(c, v[i]) == side;
                        online[i] |= lab[i];
                }
        }
        set_cuts(r);
}

/* ------------------------------------------------------ general clustering */

/* The per-point vectors in seen_list order, standardised per dimension over
 * the points seen. */
static void build_features(roid_roi *r) {
        unsigned d = r->ndim;
        double mean[ROID_KMEANS_MAX_D] = {0}, var[ROID_KMEANS_MAX_D] = {0}, cnt[ROID_KMEANS_MAX_D] = {0};
        for (uint32_t s = 0; s < r->n_seen; s++) {
                size_t i = r->seen_list[s];
                double *x = r->feat + (size_t)s * d;
                unsigned k = 0;
                for (; k < r->nmod; k++)
                        x[k] = r->filt[k * r->np + i];
                /* an outlier's BF and DF are no measurement either: at the mean */
                if (r->p.use_bf)
                        x[k++] = r->outlier[i] ? NAN : r->lbd[2 * i];
                if (r->p.use_df)
                        x[k++] = r->outlier[i] ? NAN : r->lbd[2 * i + 1];
                for (k = 0; k < d; k++)
                        if (!isnan(x[k])) /* a |CoM| no frame gave: at the mean below */
                                mean[k] += x[k], cnt[k]++;
        }
        /* Two passes (mean, then deviations): no division per point. */
        for (unsigned k = 0; k < d; k++)
                mean[k] = cnt[k] ? mean[k] / cnt[k] : 0;
        for (uint32_t s = 0; s < r->n_seen; s++) {
                const double *x = r->feat + (size_t)s * d;
                for (unsigned k = 0; k < d; k++)
                        if (!isnan(x[k]))
                                var[k] += (x[k] - mean[k]) * (x[k] - mean[k]);
        }
        double isd[ROID_KMEANS_MAX_D];
        for (unsigned k = 0; k < d; k++) {
                double sd = cnt[k] ? sqrt(var[k] / cnt[k]) : 0;
                isd[k] = sd > 0 ? 1 / sd : 0;
        }
        for (uint32_t s = 0; s < r->n_seen; s++) {
                double *x = r->feat + (size_t)s * d;
                for (unsigned k = 0; k < d; k++)
                        x[k] = isnan(x[k]) ? 0 : (x[k] - mean[k]) * isd[k];
        }
}

static void gk_store_labels(roid_roi *r) {
        for (uint32_t s = 0; s < r->n_seen; s++)
                r->glab[r->seen_list[s]] = (uint8_t)r->klab[s];
}

/* One mini-batch step on all seen points, or on BATCH of them drawn with
 * replacement; k-means++ on the first batch. */
static void gk_partial(roid_roi *r) {
        unsigned d = r->ndim;
        const double *x = r->feat;
        size_t nb = r->n_seen;
        if (nb > BATCH) {
                nb = BATCH;
                for (size_t b = 0; b < nb; b++)
                        memcpy(r->batch + b * d, r->feat + roid_rng_below(&r->rng, r->n_seen) * d, d * sizeof(double));
                x = r->batch;
        }
        roid_kmeans_partial_fit(&r->gk, x, nb, NULL);
}

static void gk_refit(roid_roi *r) {
        if (r->n_seen < r->p.k)
                return;
        build_features(r);
        gk_partial(r);
        roid_kmeans_predict_many(&r->gk, r->feat, r->n_seen, r->klab);
        gk_store_labels(r);
}

static void gk_finish(roid_roi *r) {
        if (r->n_seen < r->p.k)
                return;
        build_features(r);
        if (!r->gk.initialized)
                gk_partial(r);
        roid_kmeans_refine(&r->gk, r->feat, r->n_seen, r->p.max_iter, r->klab, NULL, NULL);
        gk_store_labels(r);
}

/* ------------------------------------------------------------ public */

int roid_roi_add(roid_roi *r, uint32_t row, uint32_t col, const roid_features *f) {
        if (row >= r->ny || col >= r->nx || f->n_segments != r->p.n_segments || r->finished || r->maps_only)
                return -EINVAL;
        /* A frame without counts (beam off, shutter closed) or near full scale
         * (a glitch) measured nothing: it stays out of the maps, and its point
         * unmeasured (Empty regions, Outliers). */
        switch (roid_features_left_out(f)) {
        case ROID_FRAME_DARK:
                r->dark++;
                return 0;
        case ROID_FRAME_GLITCH:
                r->glitches++;
                return 0;
        }
        size_t i = (size_t)row * r->nx + col;
        if (r->cnt[i] == 0)
                r->seen_list[r->n_seen++] = (uint32_t)i;
        if (!(r->mark[i] & 1)) {
                r->mark[i] |= 1;
                r->dirty[r->n_dirty++] = (uint32_t)i;
        }
        r->cnt[i]++;
        for (unsigned c = 0; c < r->nch; c++) {
                double t = c == 0 ? f->total : f->seg[c - 1].sum;
                double x = c == 0 ? f->com_x : f->seg[c - 1].com_x;
                double y = c == 0 ? f->com_y : f->seg[c - 1].com_y;
                size_t k = (size_t)c * r->np + i;
                r->acc_t[k] += t;
                if (t == 0) /* empty: its CoM is the beam centre (or NaN), no measurement */
                        continue;
                r->acc_x[k] += x;
                r->acc_y[k] += y;
                r->ncom[k]++;
                if (!r->outlier[i]) /* an outlier's frames stay out of the statistics (judge_outliers) */
                        roid_running_stats_update(&r->st[c], (const double[2]){x, y});
        }
        r->acc_bf[i] += f->bf;
        r->acc_df[i] += f->df;
        if (r->p.use_bf)
                r->lbd[2 * i] = log1p(r->acc_bf[i] / r->cnt[i]);
        if (r->p.use_df)
                r->lbd[2 * i + 1] = log1p(r->acc_df[i] / r->cnt[i]);
        r->frames++;
        uint8_t any = 0;
        zstat z[MAX_CH];
        double raw[MAX_MOD];
        zstats(r, z);
        raw_totals(r, i, raw, 1);
        raw_coms(r, z, i, raw, 1);
        const bool outlier = raw[0] > r->fence;
        for (unsigned m = 0; m < r->nmod; m++) {
                const double v = raw[m] > LOG_FLOOR ? raw[m] : is_total(m) ? 0 : LOG_FLOOR;
                /* a |CoM| no frame gave, an outlier: the point keeps what the last refit gave it */
                const uint8_t old = r->lab[m * r->np + i];
                uint8_t l = outlier || isnan(raw[m]) ? old == 1
                                                     : r->lab_cut[m][v < r->thr[m]   ? 0
                                                                     : v > r->thr[m] ? 2
                                                                                     : 1];
                r->lab[m * r->np + i] = l;
                any |= l;
        }
        r->online[i] = any;
        r->since_refit++;
        if (!r->hold_refits && roid_roi_refit_due(r))
                roid_roi_refit(r);
        return r->online[i];
}

/* A refit costs O(points seen): past 16 x cadence points it is due every
 * n/16 frames instead, so a long series costs O(n) in all, not O(n^2). */
bool roid_roi_refit_due(const roid_roi *r) {
        const uint64_t every = r->n_seen / 16 > r->p.cadence ? r->n_seen / 16 : r->p.cadence;
        return r->p.cadence && !r->finished && !r->maps_only && r->since_refit >= every;
}

void roid_roi_hold_refits(roid_roi *r, bool hold) {
        r->hold_refits = hold;
}

uint64_t roid_roi_refits(const roid_roi *r) {
        return r->refits;
}

void roid_roi_refit(roid_roi *r) {
        r->since_refit = 0;
        if (r->n_seen == 0 || r->maps_only)
                return;
        r->refits++;
        compute_maps(r, false);
        for (unsigned m = 0; m < r->nmod; m++)
                km1_partial(r, m);
        r->reseed = false;
        relabel(r);
        gk_refit(r);
}

/* roid_roi_morph, with a heartbeat from r (may be NULL) after every step: a
 * border of 64 steps over 16M points takes seconds. */
static void morph(uint8_t *mask, uint32_t ny, uint32_t nx, int n, bool fill, uint8_t *tmp, uint32_t *queue,
                  const roid_roi *r);
static void heartbeat(const roid_roi *r);

void roid_roi_morph(uint8_t *mask, uint32_t ny, uint32_t nx, int n, bool fill, uint8_t *tmp, uint32_t *queue) {
        morph(mask, ny, nx, n, fill, tmp, queue, NULL);
}

static void morph(uint8_t *mask, uint32_t ny, uint32_t nx, int n, bool fill, uint8_t *tmp, uint32_t *queue,
                  const roid_roi *r) {
        size_t np = (size_t)ny * nx;
        bool grow = n > 0;
        for (int step = 0; step < abs(n); step++) {
                for (uint32_t y = 0; y < ny; y++) {
                        for (uint32_t x = 0; x < nx; x++) {
                                uint8_t v = grow ? 0 : 1;
                                for (int dy = -1; dy <= 1; dy++) {
                                        for (int dx = -1; dx <= 1; dx++) {
                                                int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                                                if (yy < 0 || xx < 0 || yy >= ny || xx >= nx)
                                                        continue;
                                                uint8_t m = mask[(size_t)yy * nx + (size_t)xx];
                                                v = grow ? (v | m) : (v & m);
                                        }
                                }
                                tmp[(size_t)y * nx + x] = v;
                        }
                }
                memcpy(mask, tmp, np);
                if (r)
                        heartbeat(r);
        }
        if (!fill)
                return;
        /* Breadth-first search of the background from the grid edge. */
        memset(tmp, 0, np);
        size_t head = 0, tail = 0;
        for (size_t i = 0; i < np; i++) {
                uint32_t y = (uint32_t)(i / nx), x = (uint32_t)(i % nx);
                bool edge = y == 0 || x == 0 || y == ny - 1 || x == nx - 1;
                if (edge && !mask[i]) {
                        tmp[i] = 1;
                        queue[tail++] = (uint32_t)i;
                }
        }
        while (head < tail) {
                uint32_t i = queue[head++], y = i / nx, x = i % nx;
                int64_t nb[4] = {x > 0 ? (int64_t)i - 1 : -1, x + 1 < nx ? (int64_t)i + 1 : -1,
                                 y > 0 ? (int64_t)i - nx : -1, y + 1 < ny ? (int64_t)i + nx : -1};
                for (int q = 0; q < 4; q++) {
                        if (nb[q] < 0 || mask[nb[q]] || tmp[nb[q]])
                                continue;
                        tmp[nb[q]] = 1;
                        queue[tail++] = (uint32_t)nb[q];
                }
        }
        for (size_t i = 0; i < np; i++)
                if (!mask[i] && !tmp[i])
                        mask[i] = 1;
}

static void heartbeat(const roid_roi *r) {
        if (r->p.progress)
                r->p.progress(r->p.progress_ctx);
}

void roid_roi_finish(roid_roi *r) {
        if (r->finished || r->maps_only)
                return;
        memcpy(r->lab_online, r->lab, r->nmod * r->np);
        if (r->n_seen > 0) {
                compute_maps(r, true);
                heartbeat(r);
                for (unsigned m = 0; m < r->nmod; m++) {
                        if (!r->km[m].initialized || r->reseed)
                                km1_partial(r, m);
                        km1_lloyd(r, m);
                        heartbeat(r);
                }
                r->reseed = false;
                /* relabel() rewrites online[]; the online union at the last
                 * frame is kept in raw_mask meanwhile. */
                memcpy(r->raw_mask, r->online, r->np);
                relabel(r);
                memcpy(r->mask, r->online, r->np);
                memcpy(r->online, r->raw_mask, r->np);
                memcpy(r->raw_mask, r->mask, r->np);
                gk_finish(r);
                heartbeat(r);
        }
        morph(r->mask, r->ny, r->nx, r->p.border, r->p.fill_holes, r->tmp, r->queue, r);
        r->finished = true;
}

uint32_t roid_roi_ny(const roid_roi *r) {
        return r->ny;
}

uint32_t roid_roi_nx(const roid_roi *r) {
        return r->nx;
}

uint64_t roid_roi_frames(const roid_roi *r) {
        return r->frames;
}

uint64_t roid_roi_dark_frames(const roid_roi *r) {
        return r->dark;
}

uint64_t roid_roi_glitch_frames(const roid_roi *r) {
        return r->glitches;
}

uint32_t roid_roi_outlier_points(const roid_roi *r) {
        return r->n_outliers;
}

const uint8_t *roid_roi_outliers(const roid_roi *r) {
        return r->outlier;
}

double roid_roi_outlier_fence(const roid_roi *r) {
        return r->fence;
}

unsigned roid_roi_n_modalities(const roid_roi *r) {
        return r->nmod;
}

const char *roid_roi_modality_name(const roid_roi *r, unsigned m, int *ret_segment) {
        (void)r;
        *ret_segment = m < 2 ? -1 : (int)(m - 2) / 2;
        if (m < 2)
                return is_total(m) ? "total" : "com";
        return is_total(m) ? "segment_total" : "segment_com";
}

const uint32_t *roid_roi_counts(const roid_roi *r) {
        return r->cnt;
}

const double *roid_roi_raw_map(const roid_roi *r, unsigned m) {
        return r->raw + (size_t)m * r->np;
}

const double *roid_roi_filtered(const roid_roi *r, unsigned m) {
        return r->filt + (size_t)m * r->np;
}

const uint8_t *roid_roi_labels(const roid_roi *r, unsigned m) {
        return r->lab + (size_t)m * r->np;
}

const uint8_t *roid_roi_online_labels(const roid_roi *r, unsigned m) {
        return (r->finished ? r->lab_online : r->lab) + (size_t)m * r->np;
}

const uint8_t *roid_roi_online_mask(const roid_roi *r) {
        return r->online;
}

const double *roid_roi_centres(const roid_roi *r, unsigned m) {
        return r->cen_out[m];
}

const uint8_t *roid_roi_mask(const roid_roi *r) {
        return r->finished ? r->mask : NULL;
}

const uint8_t *roid_roi_raw_mask(const roid_roi *r) {
        return r->finished ? r->raw_mask : NULL;
}

const uint8_t *roid_roi_cluster_labels(const roid_roi *r) {
        return r->glab;
}

const double *roid_roi_cluster_centroids(const roid_roi *r, unsigned *ret_k, unsigned *ret_d) {
        *ret_k = r->gk.initialized ? r->p.k : 0;
        *ret_d = r->ndim;
        return r->gk.centers;
}
