#include "analysis/roi.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/kmeans.h"
#include "analysis/scan.h"

#define MAX_CH    (ROID_MAX_SEGMENTS + 1)
#define MAX_MOD   (2 * MAX_CH)
#define LOG_FLOOR 1e-12 /* log of an exactly empty value stays finite */
#define BATCH     1024  /* points per mini-batch step of the general clustering */

struct roid_roi {
        roid_roi_params p;
        uint32_t ny, nx;
        size_t np;
        unsigned nch, nmod, ndim;
        uint64_t frames, since_refit;
        bool finished;
        roid_rng rng; /* batch sampling of the general clustering */

        uint32_t *cnt;                 /* frames per point */
        uint32_t *seen_list, n_seen;   /* points with a frame, in arrival order */
        double *acc_t, *acc_x, *acc_y; /* per channel and point: sums over its frames */
        double *acc_bf, *acc_df;
        roid_running_stats st[MAX_CH]; /* CoM (x, y) per channel over all frames */

        double *raw, *filt; /* nmod * np */
        uint8_t *lab, *lab_online;
        uint8_t *online, *raw_mask, *mask, *tmp;
        uint32_t *queue;
        roid_kmeans km[MAX_MOD];    /* two centres per modality, d = 1 */
        double cen_out[MAX_MOD][2]; /* [RoI side, other] as of the last relabel */

        double *feat;   /* n_seen x ndim standardised vectors, in seen_list order */
        double *gather; /* np: one modality's filtered values, in seen_list order */
        double *batch;  /* BATCH x ndim: a sampled mini-batch of feat */
        unsigned *klab; /* np: labels in seen_list order */
        uint8_t *glab;
        roid_kmeans gk; /* general clustering, k x ndim */
};

void roid_roi_params_default(roid_roi_params *p) {
        memset(p, 0, sizeof *p);
        p->n_segments = ROID_DEFAULT_SEGMENTS;
        p->k = 4;
        p->cadence = 64;
        p->seed = 1;
        p->max_iter = 300;
}

int roid_roi_new(const roid_roi_params *p, uint32_t ny, uint32_t nx, roid_roi **ret, roid_err *err) {
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
        roid_roi *r = calloc(1, sizeof *r);
        if (!r)
                return -ENOMEM;
        r->p = *p;
        r->ny = ny;
        r->nx = nx;
        r->np = (size_t)ny * nx;
        r->nch = p->n_segments > 1 ? 1 + p->n_segments : 1;
        r->nmod = 2 * r->nch;
        r->ndim = r->nmod + (p->use_bf ? 1 : 0) + (p->use_df ? 1 : 0);
        roid_rng_seed(&r->rng, p->seed);
        size_t np = r->np, nc = r->nch * np, nm = r->nmod * np;
        r->cnt = calloc(np, sizeof *r->cnt);
        r->seen_list = calloc(np, sizeof *r->seen_list);
        r->queue = calloc(np, sizeof *r->queue);
        r->acc_t = calloc(nc, sizeof(double));
        r->acc_x = calloc(nc, sizeof(double));
        r->acc_y = calloc(nc, sizeof(double));
        r->acc_bf = calloc(np, sizeof(double));
        r->acc_df = calloc(np, sizeof(double));
        r->raw = malloc(nm * sizeof(double));
        r->filt = malloc(nm * sizeof(double));
        r->feat = calloc(r->ndim * np, sizeof(double));
        r->gather = calloc(np, sizeof(double));
        r->batch = calloc((size_t)BATCH * r->ndim, sizeof(double));
        r->klab = calloc(np, sizeof(unsigned));
        r->lab = malloc(nm);
        r->lab_online = malloc(nm);
        r->online = calloc(np, 1);
        r->raw_mask = calloc(np, 1);
        r->mask = calloc(np, 1);
        r->tmp = calloc(np, 1);
        r->glab = malloc(np);
        if (!r->cnt || !r->seen_list || !r->queue || !r->acc_t || !r->acc_x || !r->acc_y || !r->acc_bf || !r->acc_df ||
            !r->raw || !r->filt || !r->feat || !r->gather || !r->batch || !r->klab || !r->lab || !r->lab_online ||
            !r->online || !r->raw_mask || !r->mask || !r->tmp || !r->glab) {
                roid_roi_free(r);
                return -ENOMEM;
        }
        int e = roid_kmeans_init(&r->gk, p->k, r->ndim, BATCH, p->seed, err);
        for (unsigned m = 0; m < r->nmod && e == 0; m++) {
                e = roid_kmeans_init(&r->km[m], 2, 1, 2, p->seed, err);
                /* two centres on one line: no starved centre to re-seed */
                r->km[m].reassignment_ratio = 0;
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

void roid_roi_free(roid_roi *r) {
        if (!r)
                return;
        free(r->cnt);
        free(r->seen_list);
        free(r->queue);
        free(r->acc_t);
        free(r->acc_x);
        free(r->acc_y);
        free(r->acc_bf);
        free(r->acc_df);
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
        free(r->mask);
        free(r->tmp);
        free(r->glab);
        roid_kmeans_free(&r->gk);
        for (unsigned m = 0; m < MAX_MOD; m++)
                roid_kmeans_free(&r->km[m]);
        free(r);
}

/* Every array with its size in bytes, so copy and clone cannot miss one (the
 * k-means states are copied by roid_kmeans_copy). */
#define ROI_ARRAYS(X, r)                                                                                               \
        X(cnt, (r)->np * sizeof(uint32_t))                                                                             \
        X(seen_list, (r)->np * sizeof(uint32_t))                                                                       \
        X(queue, (r)->np * sizeof(uint32_t))                                                                           \
        X(acc_t, (r)->nch *(r)->np * sizeof(double))                                                                   \
        X(acc_x, (r)->nch *(r)->np * sizeof(double))                                                                   \
        X(acc_y, (r)->nch *(r)->np * sizeof(double))                                                                   \
        X(acc_bf, (r)->np * sizeof(double))                                                                            \
        X(acc_df, (r)->np * sizeof(double))                                                                            \
        X(raw, (r)->nmod *(r)->np * sizeof(double))                                                                    \
        X(filt, (r)->nmod *(r)->np * sizeof(double))                                                                   \
        X(feat, (r)->ndim *(r)->np * sizeof(double))                                                                   \
        X(gather, (r)->np * sizeof(double))                                                                            \
        X(batch, (size_t)BATCH *(r)->ndim * sizeof(double))                                                            \
        X(klab, (r)->np * sizeof(unsigned))                                                                            \
        X(lab, (r)->nmod *(r)->np)                                                                                     \
        X(lab_online, (r)->nmod *(r)->np)                                                                              \
        X(online, (r)->np)                                                                                             \
        X(raw_mask, (r)->np)                                                                                           \
        X(mask, (r)->np)                                                                                               \
        X(tmp, (r)->np)                                                                                                \
        X(glab, (r)->np)

int roid_roi_copy(roid_roi *dst, const roid_roi *src) {
        if (dst->ny != src->ny || dst->nx != src->nx || dst->nch != src->nch || dst->ndim != src->ndim)
                return -EINVAL;
        roid_roi keep = *dst;
        *dst = *src;
#define ROI_COPY(name, bytes)                                                                                          \
        dst->name = keep.name;                                                                                         \
        memcpy(dst->name, src->name, bytes);
        ROI_ARRAYS(ROI_COPY, src)
#undef ROI_COPY
        dst->gk = keep.gk;
        roid_kmeans_copy(&dst->gk, &src->gk);
        for (unsigned m = 0; m < src->nmod; m++) {
                dst->km[m] = keep.km[m];
                roid_kmeans_copy(&dst->km[m], &src->km[m]);
        }
        return 0;
}

int roid_roi_clone(const roid_roi *src, roid_roi **ret) {
        roid_roi *r;
        roid_err err;
        int e = roid_roi_new(&src->p, src->ny, src->nx, &r, &err);
        if (e < 0)
                return e;
        roid_roi_copy(r, src);
        *ret = r;
        return 0;
}

/* ------------------------------------------------------------ modalities */

static bool is_total(unsigned m) {
        return m % 2 == 0;
}

/* Unfiltered value of modality m at seen point i: mean T, or the magnitude of
 * the point's mean CoM standardised with the scan-wide statistics (eq. 2). */
static double raw_value(const roid_roi *r, unsigned m, size_t i) {
        unsigned c = m / 2;
        size_t k = (size_t)c * r->np + i;
        double n = r->cnt[i];
        if (is_total(m))
                return r->acc_t[k] / n;
        double z[2] = {r->acc_x[k] / n, r->acc_y[k] / n};
        roid_running_stats_standardize(&r->st[c], z, z);
        return sqrt(z[0] * z[0] + z[1] * z[1]);
}

static double flog(double v) {
        return log(v > LOG_FLOOR ? v : LOG_FLOOR);
}

/* Index 0/1 of the RoI-side centre: low T, high |CoM|. */
static unsigned roi_side(const roid_roi *r, unsigned m) {
        const double *c = r->km[m].centers;
        return is_total(m) == (c[0] <= c[1]) ? 0 : 1;
}

static uint8_t label_of(const roid_roi *r, unsigned m, double v) {
        if (!r->km[m].initialized)
                return 0;
        return roid_kmeans_predict(&r->km[m], &v, NULL) == roi_side(r, m);
}

/* Raw maps, then the 3x3 mean over the seen neighbours, then the log. */
static void compute_maps(roid_roi *r) {
        size_t np = r->np;
        for (unsigned m = 0; m < r->nmod; m++) {
                double *raw = r->raw + m * np, *filt = r->filt + m * np;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        size_t i = r->seen_list[s];
                        raw[i] = raw_value(r, m, i);
                }
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        size_t i = r->seen_list[s];
                        uint32_t y = (uint32_t)(i / r->nx), x = (uint32_t)(i % r->nx);
                        double sum = 0;
                        unsigned n = 0;
                        for (int dy = -1; dy <= 1; dy++) {
                                for (int dx = -1; dx <= 1; dx++) {
                                        int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                                        if (yy < 0 || xx < 0 || yy >= r->ny || xx >= r->nx)
                                                continue;
                                        size_t j = (size_t)yy * r->nx + (size_t)xx;
                                        if (!r->cnt[j])
                                                continue;
                                        sum += raw[j];
                                        n++;
                                }
                        }
                        filt[i] = flog(sum / n);
                }
        }
}

/* The filtered values of modality m in seen_list order, into r->gather. */
static const double *gather_modality(roid_roi *r, unsigned m) {
        const double *v = r->filt + m * r->np;
        for (uint32_t s = 0; s < r->n_seen; s++)
                r->gather[s] = v[r->seen_list[s]];
        return r->gather;
}

/* One mini-batch step on the whole current map of modality m, the counts
 * halved first so the centres follow the standardisation as it settles;
 * the first one starts from the map's extremes. */
static void km1_partial(roid_roi *r, unsigned m) {
        const double *x = gather_modality(r, m);
        if (!r->km[m].initialized) {
                double c[2] = {INFINITY, -INFINITY};
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        c[0] = x[s] < c[0] ? x[s] : c[0];
                        c[1] = x[s] > c[1] ? x[s] : c[1];
                }
                if (!(c[1] > c[0]))
                        return;
                roid_kmeans_set_centers(&r->km[m], c);
        }
        roid_kmeans_step(&r->km[m], x, r->n_seen, 0.5);
}

/* Full-batch Lloyd from the current centres. */
static void km1_lloyd(roid_roi *r, unsigned m) {
        if (r->km[m].initialized)
                roid_kmeans_refine(&r->km[m], gather_modality(r, m), r->n_seen, r->p.max_iter, r->klab, NULL, NULL);
}

static void relabel(roid_roi *r) {
        size_t np = r->np;
        for (unsigned m = 0; m < r->nmod; m++) {
                unsigned s = roi_side(r, m);
                bool have = r->km[m].initialized;
                r->cen_out[m][0] = have ? r->km[m].centers[s] : NAN;
                r->cen_out[m][1] = have ? r->km[m].centers[1 - s] : NAN;
        }
        for (uint32_t s = 0; s < r->n_seen; s++)
                r->online[r->seen_list[s]] = 0;
        for (unsigned m = 0; m < r->nmod; m++) {
                const double *v = r->filt + m * np;
                uint8_t *lab = r->lab + m * np;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        size_t i = r->seen_list[s];
                        lab[i] = label_of(r, m, v[i]);
                        r->online[i] |= lab[i];
                }
        }
}

/* ------------------------------------------------------ general clustering */

/* The per-point vectors in seen_list order, standardised per dimension over
 * the points seen. */
static void build_features(roid_roi *r) {
        unsigned d = r->ndim;
        roid_running_stats st;
        roid_running_stats_init(&st, d);
        for (uint32_t s = 0; s < r->n_seen; s++) {
                size_t i = r->seen_list[s];
                double *x = r->feat + (size_t)s * d;
                unsigned k = 0;
                for (; k < r->nmod; k++)
                        x[k] = r->filt[k * r->np + i];
                if (r->p.use_bf)
                        x[k++] = log1p(r->acc_bf[i] / r->cnt[i]);
                if (r->p.use_df)
                        x[k++] = log1p(r->acc_df[i] / r->cnt[i]);
                roid_running_stats_update(&st, x);
        }
        for (uint32_t s = 0; s < r->n_seen; s++)
                roid_running_stats_standardize(&st, r->feat + (size_t)s * d, r->feat + (size_t)s * d);
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
        if (row >= r->ny || col >= r->nx || f->n_segments != r->p.n_segments || r->finished)
                return -EINVAL;
        size_t i = (size_t)row * r->nx + col;
        if (r->cnt[i] == 0)
                r->seen_list[r->n_seen++] = (uint32_t)i;
        r->cnt[i]++;
        for (unsigned c = 0; c < r->nch; c++) {
                double t = c == 0 ? f->total : f->seg[c - 1].sum;
                double x = c == 0 ? f->com_x : f->seg[c - 1].com_x;
                double y = c == 0 ? f->com_y : f->seg[c - 1].com_y;
                size_t k = (size_t)c * r->np + i;
                r->acc_t[k] += t;
                r->acc_x[k] += x;
                r->acc_y[k] += y;
                roid_running_stats_update(&r->st[c], (const double[2]){x, y});
        }
        r->acc_bf[i] += f->bf;
        r->acc_df[i] += f->df;
        r->frames++;
        uint8_t any = 0;
        for (unsigned m = 0; m < r->nmod; m++) {
                uint8_t l = label_of(r, m, flog(raw_value(r, m, i)));
                r->lab[m * r->np + i] = l;
                any |= l;
        }
        r->online[i] = any;
        /* A refit costs O(points seen): past 16 x cadence points it runs every
         * n/16 frames instead, so a long series costs O(n) in all, not O(n^2). */
        uint64_t every = r->n_seen / 16 > r->p.cadence ? r->n_seen / 16 : r->p.cadence;
        if (r->p.cadence && ++r->since_refit >= every)
                roid_roi_refit(r);
        return r->online[i];
}

void roid_roi_refit(roid_roi *r) {
        r->since_refit = 0;
        if (r->n_seen == 0)
                return;
        compute_maps(r);
        for (unsigned m = 0; m < r->nmod; m++)
                km1_partial(r, m);
        relabel(r);
        gk_refit(r);
}

void roid_roi_morph(uint8_t *mask, uint32_t ny, uint32_t nx, int n, bool fill, uint8_t *tmp, uint32_t *queue) {
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

void roid_roi_finish(roid_roi *r) {
        if (r->finished)
                return;
        memcpy(r->lab_online, r->lab, r->nmod * r->np);
        if (r->n_seen > 0) {
                compute_maps(r);
                for (unsigned m = 0; m < r->nmod; m++) {
                        if (!r->km[m].initialized)
                                km1_partial(r, m);
                        km1_lloyd(r, m);
                }
                /* relabel() rewrites online[]; the online union at the last
                 * frame is kept in raw_mask meanwhile. */
                memcpy(r->raw_mask, r->online, r->np);
                relabel(r);
                memcpy(r->mask, r->online, r->np);
                memcpy(r->online, r->raw_mask, r->np);
                memcpy(r->raw_mask, r->mask, r->np);
                gk_finish(r);
        }
        roid_roi_morph(r->mask, r->ny, r->nx, r->p.border, r->p.fill_holes, r->tmp, r->queue);
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
