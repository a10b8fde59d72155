#include "analysis/roi.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/scan.h"

#define MAX_CH    (ROID_MAX_SEGMENTS + 1)
#define MAX_MOD   (2 * MAX_CH)
#define MAX_DIM   (MAX_MOD + 2)
#define LOG_FLOOR 1e-12 /* log of an exactly empty value stays finite */
#define BATCH     1024  /* points per mini-batch step of the general clustering */

typedef struct {
        double n, mean, m2;
} welford;

struct roid_roi {
        roid_roi_params p;
        uint32_t ny, nx;
        size_t np;
        unsigned nch, nmod, ndim;
        uint64_t frames, since_refit;
        bool finished;
        uint64_t rng;

        uint32_t *cnt;                 /* frames per point */
        uint32_t *seen_list, n_seen;   /* points with a frame, in arrival order */
        double *acc_t, *acc_x, *acc_y; /* per channel and point: sums over its frames */
        double *acc_bf, *acc_df;
        welford st[MAX_CH][2]; /* CoM x, y per channel over all frames */

        double *raw, *filt; /* nmod * np */
        uint8_t *lab, *lab_online;
        uint8_t *online, *raw_mask, *mask, *tmp;
        uint32_t *queue;
        double cen[MAX_MOD][2], ccount[MAX_MOD][2], cen_out[MAX_MOD][2];
        bool have_cen[MAX_MOD];

        double *feat, *dist; /* ndim * np standardised vectors; np scratch */
        uint8_t *glab;
        double gcen[ROID_ROI_MAX_K * MAX_DIM], gcount[ROID_ROI_MAX_K];
        bool have_gcen;
};

void roid_roi_params_default(roid_roi_params *p) {
        memset(p, 0, sizeof *p);
        p->n_segments = ROID_DEFAULT_SEGMENTS;
        p->k = 4;
        p->cadence = 64;
        p->seed = 1;
        p->max_iter = 300;
}

static uint64_t rng_next(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) {
        return (double)(rng_next(s) >> 11) * 0x1.0p-53;
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
        r->rng = p->seed;
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
        r->dist = calloc(np, sizeof(double));
        r->lab = malloc(nm);
        r->lab_online = malloc(nm);
        r->online = calloc(np, 1);
        r->raw_mask = calloc(np, 1);
        r->mask = calloc(np, 1);
        r->tmp = calloc(np, 1);
        r->glab = malloc(np);
        if (!r->cnt || !r->seen_list || !r->queue || !r->acc_t || !r->acc_x || !r->acc_y || !r->acc_bf || !r->acc_df ||
            !r->raw || !r->filt || !r->feat || !r->dist || !r->lab || !r->lab_online || !r->online || !r->raw_mask ||
            !r->mask || !r->tmp || !r->glab) {
                roid_roi_free(r);
                return -ENOMEM;
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
        free(r->dist);
        free(r->lab);
        free(r->lab_online);
        free(r->online);
        free(r->raw_mask);
        free(r->mask);
        free(r->tmp);
        free(r->glab);
        free(r);
}

/* Every per-point array with its size in bytes, so copy and clone cannot miss one. */
#define ROI_ARRAYS(X, r)                                                                                               \
        X(cnt, (r)->np * sizeof(uint32_t))                                                                             \
        X(seen_list, (r)->np * sizeof(uint32_t))                                                                       \
        X(queue, (r)->np * sizeof(uint32_t))                                                                           \
        X(acc_t, (r)->nch * (r)->np * sizeof(double))                                                                  \
        X(acc_x, (r)->nch * (r)->np * sizeof(double))                                                                  \
        X(acc_y, (r)->nch * (r)->np * sizeof(double))                                                                  \
        X(acc_bf, (r)->np * sizeof(double))                                                                            \
        X(acc_df, (r)->np * sizeof(double))                                                                            \
        X(raw, (r)->nmod * (r)->np * sizeof(double))                                                                   \
        X(filt, (r)->nmod * (r)->np * sizeof(double))                                                                  \
        X(feat, (r)->ndim * (r)->np * sizeof(double))                                                                  \
        X(dist, (r)->np * sizeof(double))                                                                              \
        X(lab, (r)->nmod * (r)->np)                                                                                    \
        X(lab_online, (r)->nmod * (r)->np)                                                                             \
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

static double sdev(const welford *w) {
        return w->n > 1 ? sqrt(w->m2 / w->n) : 0;
}

/* Unfiltered value of modality m at seen point i: mean T, or the magnitude of
 * the point's mean CoM standardised with the scan-wide statistics (eq. 2). */
static double raw_value(const roid_roi *r, unsigned m, size_t i) {
        unsigned c = m / 2;
        size_t k = (size_t)c * r->np + i;
        double n = r->cnt[i];
        if (is_total(m))
                return r->acc_t[k] / n;
        const welford *wx = &r->st[c][0], *wy = &r->st[c][1];
        double sx = sdev(wx), sy = sdev(wy);
        double zx = sx > 0 ? (r->acc_x[k] / n - wx->mean) / sx : 0;
        double zy = sy > 0 ? (r->acc_y[k] / n - wy->mean) / sy : 0;
        return sqrt(zx * zx + zy * zy);
}

static double flog(double v) {
        return log(v > LOG_FLOOR ? v : LOG_FLOOR);
}

/* Index 0/1 of the RoI-side centre: low T, high |CoM|. */
static unsigned roi_side(const roid_roi *r, unsigned m) {
        bool first_lower = r->cen[m][0] <= r->cen[m][1];
        return is_total(m) == first_lower ? 0 : 1;
}

static uint8_t label_of(const roid_roi *r, unsigned m, double v) {
        if (!r->have_cen[m])
                return 0;
        unsigned near = fabs(v - r->cen[m][0]) <= fabs(v - r->cen[m][1]) ? 0 : 1;
        return near == roi_side(r, m);
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

/* One mini-batch step on the whole current map of modality m. */
static void km1_partial(roid_roi *r, unsigned m) {
        const double *v = r->filt + m * r->np;
        if (!r->have_cen[m]) {
                double lo = INFINITY, hi = -INFINITY;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        double x = v[r->seen_list[s]];
                        lo = x < lo ? x : lo;
                        hi = x > hi ? x : hi;
                }
                if (!(hi > lo))
                        return;
                r->cen[m][0] = lo;
                r->cen[m][1] = hi;
                r->ccount[m][0] = r->ccount[m][1] = 0;
                r->have_cen[m] = true;
        }
        double sum[2] = {0, 0}, n[2] = {0, 0};
        for (uint32_t s = 0; s < r->n_seen; s++) {
                double x = v[r->seen_list[s]];
                unsigned j = fabs(x - r->cen[m][0]) <= fabs(x - r->cen[m][1]) ? 0 : 1;
                sum[j] += x;
                n[j]++;
        }
        for (unsigned j = 0; j < 2; j++) {
                r->ccount[m][j] = r->ccount[m][j] / 2 + n[j];
                if (n[j] > 0)
                        r->cen[m][j] += n[j] / r->ccount[m][j] * (sum[j] / n[j] - r->cen[m][j]);
        }
}

/* Full-batch Lloyd from the current centres. */
static void km1_lloyd(roid_roi *r, unsigned m) {
        const double *v = r->filt + m * r->np;
        if (!r->have_cen[m])
                return;
        for (unsigned it = 0; it < r->p.max_iter; it++) {
                double sum[2] = {0, 0}, n[2] = {0, 0};
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        double x = v[r->seen_list[s]];
                        unsigned j = fabs(x - r->cen[m][0]) <= fabs(x - r->cen[m][1]) ? 0 : 1;
                        sum[j] += x;
                        n[j]++;
                }
                bool moved = false;
                for (unsigned j = 0; j < 2; j++) {
                        double c = n[j] > 0 ? sum[j] / n[j] : r->cen[m][j];
                        moved |= c != r->cen[m][j];
                        r->cen[m][j] = c;
                }
                if (!moved)
                        break;
        }
}

static void relabel(roid_roi *r) {
        size_t np = r->np;
        for (unsigned m = 0; m < r->nmod; m++) {
                unsigned s = roi_side(r, m);
                r->cen_out[m][0] = r->have_cen[m] ? r->cen[m][s] : NAN;
                r->cen_out[m][1] = r->have_cen[m] ? r->cen[m][1 - s] : NAN;
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

static void build_features(roid_roi *r) {
        unsigned d = r->ndim;
        for (unsigned k = 0; k < d; k++) {
                double sum = 0, sum2 = 0;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        size_t i = r->seen_list[s];
                        double x;
                        if (k < r->nmod)
                                x = r->filt[k * r->np + i];
                        else if (k == r->nmod && r->p.use_bf)
                                x = log1p(r->acc_bf[i] / r->cnt[i]);
                        else
                                x = log1p(r->acc_df[i] / r->cnt[i]);
                        r->feat[i * d + k] = x;
                        sum += x;
                        sum2 += x * x;
                }
                double n = r->n_seen, mean = sum / n, var = sum2 / n - mean * mean;
                double sd = var > 0 ? sqrt(var) : 1;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        size_t i = r->seen_list[s];
                        r->feat[i * d + k] = (r->feat[i * d + k] - mean) / sd;
                }
        }
}

static double dist2(const double *a, const double *b, unsigned d) {
        double s = 0;
        for (unsigned k = 0; k < d; k++)
                s += (a[k] - b[k]) * (a[k] - b[k]);
        return s;
}

static unsigned nearest(const roid_roi *r, const double *x) {
        unsigned best = 0, d = r->ndim;
        double bd = INFINITY;
        for (unsigned j = 0; j < r->p.k; j++) {
                double e = dist2(x, r->gcen + j * d, d);
                if (e < bd) {
                        bd = e;
                        best = j;
                }
        }
        return best;
}

/* k-means++ over the seen points. */
static void gk_seed(roid_roi *r) {
        unsigned d = r->ndim;
        uint32_t first = r->seen_list[rng_next(&r->rng) % r->n_seen];
        memcpy(r->gcen, r->feat + (size_t)first * d, d * sizeof(double));
        for (uint32_t s = 0; s < r->n_seen; s++)
                r->dist[s] = dist2(r->feat + (size_t)r->seen_list[s] * d, r->gcen, d);
        for (unsigned j = 1; j < r->p.k; j++) {
                double tot = 0;
                for (uint32_t s = 0; s < r->n_seen; s++)
                        tot += r->dist[s];
                double u = rng_unit(&r->rng) * tot;
                uint32_t pick = r->n_seen - 1;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        u -= r->dist[s];
                        if (u < 0) {
                                pick = s;
                                break;
                        }
                }
                const double *c = r->feat + (size_t)r->seen_list[pick] * d;
                memcpy(r->gcen + j * d, c, d * sizeof(double));
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        double e = dist2(r->feat + (size_t)r->seen_list[s] * d, c, d);
                        r->dist[s] = e < r->dist[s] ? e : r->dist[s];
                }
        }
        memset(r->gcount, 0, sizeof r->gcount);
        r->have_gcen = true;
}

static void gk_partial(roid_roi *r) {
        if (r->n_seen < r->p.k)
                return;
        build_features(r);
        if (!r->have_gcen)
                gk_seed(r);
        unsigned d = r->ndim, nb = r->n_seen < BATCH ? r->n_seen : BATCH;
        for (unsigned b = 0; b < nb; b++) {
                uint32_t i = nb == r->n_seen ? r->seen_list[b] : r->seen_list[rng_next(&r->rng) % r->n_seen];
                const double *x = r->feat + (size_t)i * d;
                unsigned j = nearest(r, x);
                double *c = r->gcen + j * d, eta = 1.0 / ++r->gcount[j];
                for (unsigned k = 0; k < d; k++)
                        c[k] += eta * (x[k] - c[k]);
        }
        for (uint32_t s = 0; s < r->n_seen; s++) {
                uint32_t i = r->seen_list[s];
                r->glab[i] = (uint8_t)nearest(r, r->feat + (size_t)i * d);
        }
}

static void gk_lloyd(roid_roi *r) {
        if (!r->have_gcen)
                return;
        unsigned d = r->ndim, k = r->p.k;
        double sum[ROID_ROI_MAX_K * MAX_DIM], n[ROID_ROI_MAX_K];
        for (unsigned it = 0; it < r->p.max_iter; it++) {
                memset(sum, 0, sizeof sum);
                memset(n, 0, sizeof n);
                bool changed = false;
                for (uint32_t s = 0; s < r->n_seen; s++) {
                        uint32_t i = r->seen_list[s];
                        const double *x = r->feat + (size_t)i * d;
                        unsigned j = nearest(r, x);
                        changed |= r->glab[i] != j;
                        r->glab[i] = (uint8_t)j;
                        n[j]++;
                        for (unsigned q = 0; q < d; q++)
                                sum[j * d + q] += x[q];
                }
                for (unsigned j = 0; j < k; j++)
                        if (n[j] > 0)
                                for (unsigned q = 0; q < d; q++)
                                        r->gcen[j * d + q] = sum[j * d + q] / n[j];
                if (!changed && it > 0)
                        break;
        }
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
                double v[2] = {x, y};
                for (unsigned a = 0; a < 2; a++) {
                        welford *w = &r->st[c][a];
                        w->n++;
                        double dlt = v[a] - w->mean;
                        w->mean += dlt / w->n;
                        w->m2 += dlt * (v[a] - w->mean);
                }
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
        if (r->p.cadence && ++r->since_refit >= r->p.cadence)
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
        gk_partial(r);
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
                        if (!r->have_cen[m])
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
                if (r->n_seen >= r->p.k) {
                        build_features(r);
                        if (!r->have_gcen)
                                gk_seed(r);
                        gk_lloyd(r);
                }
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
        *ret_k = r->have_gcen ? r->p.k : 0;
        *ret_d = r->ndim;
        return r->gcen;
}
