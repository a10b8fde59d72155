/* kmeans.c - see kmeans.h. */
#include "analysis/kmeans.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- random numbers: splitmix64 to seed xoshiro256** ---- */

static uint64_t splitmix64(uint64_t *x) {
        uint64_t z = (*x += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return z ^ (z >> 31);
}

void roid_rng_seed(roid_rng *r, uint64_t seed) {
        for (int i = 0; i < 4; i++)
                r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
        return (x << k) | (x >> (64 - k));
}

uint64_t roid_rng_next(roid_rng *r) {
        uint64_t *s = r->s;
        const uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return out;
}

double roid_rng_unit(roid_rng *r) {
        return (double)(roid_rng_next(r) >> 11) * 0x1.0p-53;
}

/* By the multiply-shift method. */
uint64_t roid_rng_below(roid_rng *r, uint64_t n) {
        return (uint64_t)(((unsigned __int128)roid_rng_next(r) * n) >> 64);
}

/* ---- helpers ---- */

static inline double dist2(const double *a, const double *b, unsigned d) {
        double s = 0;
        for (unsigned j = 0; j < d; j++) {
                double t = a[j] - b[j];
                s += t * t;
        }
        return s;
}

static inline unsigned nearest(const double *centers, unsigned k, unsigned d, const double *x, double *ret_d2) {
        unsigned best = 0;
        double bd = dist2(x, centers, d);
        for (unsigned c = 1; c < k; c++) {
                double t = dist2(x, centers + (size_t)c * d, d);
                if (t < bd) {
                        bd = t;
                        best = c;
                }
        }
        *ret_d2 = bd;
        return best;
}

int roid_kmeans_init(roid_kmeans *km, unsigned k, unsigned d, size_t max_batch, uint64_t seed, roid_err *err) {
        memset(km, 0, sizeof *km);
        if (k < 2 || k > ROID_KMEANS_MAX_K)
                return roid_err_set(err, -EINVAL, "k = %u: must be 2..%d", k, ROID_KMEANS_MAX_K);
        if (d < 1 || d > ROID_KMEANS_MAX_D)
                return roid_err_set(err, -EINVAL, "d = %u: must be 1..%d", d, ROID_KMEANS_MAX_D);
        if (max_batch < k || max_batch > ROID_KMEANS_MAX_BATCH)
                return roid_err_set(err, -EINVAL, "max_batch = %zu: must be k..%u", max_batch, ROID_KMEANS_MAX_BATCH);
        roid_kmeans n = {.k = k, .d = d, .max_batch = max_batch, .reassignment_ratio = 0.01};
        roid_rng_seed(&n.rng, seed);
        n.centers = calloc((size_t)k * d, sizeof *n.centers);
        n.counts = calloc(k, sizeof *n.counts);
        n.labels = calloc(max_batch, sizeof *n.labels);
        n.dist = calloc(max_batch, sizeof *n.dist);
        n.sums = calloc((size_t)k * d, sizeof *n.sums);
        n.wsum = calloc(k, sizeof *n.wsum);
        n.pick = calloc(k, sizeof *n.pick);
        n.flag = calloc(k, sizeof *n.flag);
        if (!n.centers || !n.counts || !n.labels || !n.dist || !n.sums || !n.wsum || !n.pick || !n.flag) {
                roid_kmeans_free(&n);
                return -ENOMEM;
        }
        *km = n;
        return 0;
}

void roid_kmeans_free(roid_kmeans *km) {
        if (!km)
                return;
        free(km->centers);
        free(km->counts);
        free(km->labels);
        free(km->dist);
        free(km->sums);
        free(km->wsum);
        free(km->pick);
        free(km->flag);
        memset(km, 0, sizeof *km);
}

void roid_kmeans_set_centers(roid_kmeans *km, const double *centers) {
        memcpy(km->centers, centers, (size_t)km->k * km->d * sizeof *centers);
        memset(km->counts, 0, km->k * sizeof *km->counts);
        km->initialized = true;
}

/* Index of the point where the running sum of w first exceeds r. */
static size_t sample_weighted(const double *w, size_t n, double r) {
        double c = 0;
        for (size_t i = 0; i < n; i++) {
                c += w[i];
                if (c > r)
                        return i;
        }
        return n - 1;
}

/* Greedy k-means++ (Arthur & Vassilvitskii 2007 with local trials). */
static void seed_plusplus(roid_kmeans *km, const double *x, size_t n) {
        const unsigned k = km->k, d = km->d;
        const unsigned trials = 2 + (unsigned)log((double)k);
        size_t first = roid_rng_below(&km->rng, n);
        memcpy(km->centers, x + first * d, d * sizeof *x);
        double pot = 0;
        for (size_t i = 0; i < n; i++) {
                km->dist[i] = dist2(x + i * d, km->centers, d);
                pot += km->dist[i];
        }
        for (unsigned c = 1; c < k; c++) {
                double best_pot = INFINITY;
                size_t best = 0;
                for (unsigned t = 0; t < trials; t++) {
                        size_t cand = sample_weighted(km->dist, n, roid_rng_unit(&km->rng) * pot);
                        double cp = 0;
                        for (size_t i = 0; i < n; i++) {
                                double dd = dist2(x + i * d, x + cand * d, d);
                                cp += dd < km->dist[i] ? dd : km->dist[i];
                        }
                        if (cp < best_pot) {
                                best_pot = cp;
                                best = cand;
                        }
                }
                memcpy(km->centers + (size_t)c * d, x + best * d, d * sizeof *x);
                pot = 0;
                for (size_t i = 0; i < n; i++) {
                        double dd = dist2(x + i * d, x + best * d, d);
                        if (dd < km->dist[i])
                                km->dist[i] = dd;
                        pot += km->dist[i];
                }
        }
        memset(km->counts, 0, k * sizeof *km->counts);
        km->initialized = true;
}

/* Re-seeds the centres whose count is below ratio x the largest on distinct
 * points of the batch; scikit-learn's _mini_batch_step. */
static int reassign(roid_kmeans *km, const double *x, size_t n) {
        const unsigned k = km->k, d = km->d;
        double maxc = 0;
        for (unsigned c = 0; c < k; c++)
                if (km->counts[c] > maxc)
                        maxc = km->counts[c];
        const double lim = km->reassignment_ratio * maxc;
        unsigned m = 0;
        for (unsigned c = 0; c < k; c++)
                if (km->counts[c] < lim)
                        m++;
        if (m == 0)
                return 0;
        /* at most half the batch; keep the largest of the starved ones */
        uint8_t *re = km->flag;
        for (unsigned c = 0; c < k; c++)
                re[c] = km->counts[c] < lim;
        const size_t cap = n / 2;
        while (m > cap) {
                unsigned big = k;
                for (unsigned c = 0; c < k; c++)
                        if (re[c] && (big == k || km->counts[c] >= km->counts[big]))
                                big = c;
                re[big] = 0;
                m--;
        }
        if (m == 0)
                return 0;
        /* m distinct points, uniformly: Floyd's sampling */
        for (size_t j = n - m, got = 0; j < n; j++) {
                size_t t = roid_rng_below(&km->rng, j + 1);
                for (size_t q = 0; q < got; q++)
                        if (km->pick[q] == t) {
                                t = j;
                                break;
                        }
                km->pick[got++] = t;
        }
        double minkeep = INFINITY;
        for (unsigned c = 0; c < k; c++)
                if (!re[c] && km->counts[c] < minkeep)
                        minkeep = km->counts[c];
        for (unsigned c = 0, q = 0; c < k; c++) {
                if (!re[c])
                        continue;
                memcpy(km->centers + (size_t)c * d, x + km->pick[q++] * d, d * sizeof *x);
                km->counts[c] = minkeep;
        }
        km->n_reassigned += m;
        return (int)m;
}

/* Assigns each point to its nearest centre and moves every centre to the
 * running mean of all it absorbed, c <- (c n + sum) / (n + m); labels and
 * dist receive the assignment unless NULL. */
static void update(roid_kmeans *km, const double *x, size_t n, unsigned *labels, double *dist) {
        const unsigned k = km->k, d = km->d;
        memset(km->sums, 0, (size_t)k * d * sizeof *km->sums);
        memset(km->wsum, 0, k * sizeof *km->wsum);
        size_t i0 = 0;
        if (k == 2 && d == 1 && !labels) {
                /* The RoI's per-modality case, once per point and modality at every
                 * refit: the same arithmetic as below, without the loops. */
                double s0 = 0, s1 = 0, n1 = 0;
                for (size_t i = 0; i < n; i++) {
                        const double v = x[i];
                        if (roid_kmeans_nearest2(km->centers, v)) {
                                s1 += v;
                                n1 += 1;
                        } else {
                                s0 += v;
                        }
                }
                km->sums[0] = s0;
                km->sums[1] = s1;
                km->wsum[0] = (double)n - n1;
                km->wsum[1] = n1;
                i0 = n;
        }
        for (size_t i = i0; i < n; i++) {
                double dd;
                unsigned l = nearest(km->centers, k, d, x + i * d, &dd);
                if (labels) {
                        labels[i] = l;
                        dist[i] = dd;
                }
                km->wsum[l] += 1;
                for (unsigned j = 0; j < d; j++)
                        km->sums[(size_t)l * d + j] += x[i * d + j];
        }
        for (unsigned c = 0; c < k; c++) {
                if (km->wsum[c] == 0)
                        continue;
                double *cc = km->centers + (size_t)c * d, nc = km->counts[c] + km->wsum[c];
                for (unsigned j = 0; j < d; j++)
                        cc[j] = (cc[j] * km->counts[c] + km->sums[(size_t)c * d + j]) / nc;
                km->counts[c] = nc;
        }
        km->n_seen += n;
        km->n_batches++;
}

int roid_kmeans_partial_fit(roid_kmeans *km, const double *x, size_t n, roid_err *err) {
        const unsigned k = km->k, d = km->d;
        if (n > km->max_batch)
                return roid_err_set(err, -EINVAL, "batch of %zu points: max_batch is %zu", n, km->max_batch);
        for (size_t i = 0; i < n * d; i++)
                if (!isfinite(x[i]))
                        return roid_err_set(err, -EINVAL, "point %zu, dimension %zu: %g is not finite", i / d, i % d,
                                            x[i]);
        if (!km->initialized) {
                if (n < k)
                        return roid_err_set(err, -EINVAL, "first batch of %zu points: k = %u needs at least k", n, k);
                seed_plusplus(km, x, n);
        }
        if (n == 0)
                return 0;
        /* scikit-learn's _random_reassign: before the step */
        bool check = false;
        km->since_reassign += n;
        for (unsigned c = 0; c < k && !check; c++)
                check = km->counts[c] == 0;
        if (check || km->since_reassign >= 10 * (uint64_t)k) {
                km->since_reassign = 0;
                check = true;
        }
        update(km, x, n, km->labels, km->dist);
        if (check && km->reassignment_ratio > 0)
                return reassign(km, x, n);
        return 0;
}

int roid_kmeans_step(roid_kmeans *km, const double *x, size_t n, double decay) {
        if (!km->initialized)
                return -EINVAL;
        for (unsigned c = 0; c < km->k; c++)
                km->counts[c] *= decay;
        update(km, x, n, NULL, NULL);
        return 0;
}

unsigned roid_kmeans_predict(const roid_kmeans *km, const double *x, double *ret_dist2) {
        double dd;
        unsigned l = nearest(km->centers, km->k, km->d, x, &dd);
        if (ret_dist2)
                *ret_dist2 = dd;
        return l;
}

void roid_kmeans_predict_many(const roid_kmeans *km, const double *x, size_t n, unsigned *labels) {
        double dd;
        for (size_t i = 0; i < n; i++)
                labels[i] = nearest(km->centers, km->k, km->d, x + i * km->d, &dd);
}

int roid_kmeans_copy(roid_kmeans *dst, const roid_kmeans *src) {
        if (dst->k != src->k || dst->d != src->d || dst->max_batch != src->max_batch)
                return -EINVAL;
        roid_kmeans keep = *dst;
        *dst = *src;
        dst->centers = keep.centers;
        dst->counts = keep.counts;
        dst->labels = keep.labels;
        dst->dist = keep.dist;
        dst->sums = keep.sums;
        dst->wsum = keep.wsum;
        dst->pick = keep.pick;
        dst->flag = keep.flag;
        memcpy(dst->centers, src->centers, (size_t)src->k * src->d * sizeof *src->centers);
        memcpy(dst->counts, src->counts, src->k * sizeof *src->counts);
        return 0;
}

double roid_kmeans_inertia(const roid_kmeans *km, const double *x, size_t n) {
        double s = 0, dd;
        for (size_t i = 0; i < n; i++) {
                nearest(km->centers, km->k, km->d, x + i * km->d, &dd);
                s += dd;
        }
        return s;
}

/* Moves empty cluster c onto the point farthest from its centre, taken from
 * a cluster with more than one point and not moved already. */
static void relocate(roid_kmeans *km, const double *x, size_t n, unsigned *labels, unsigned c, unsigned n_taken) {
        const unsigned d = km->d;
        double far = -1;
        size_t fi = n;
        for (size_t i = 0; i < n; i++) {
                if (km->wsum[labels[i]] <= 1)
                        continue;
                bool taken = false;
                for (unsigned q = 0; q < n_taken && !taken; q++)
                        taken = km->pick[q] == i;
                if (taken)
                        continue;
                double dd = dist2(x + i * d, km->centers + (size_t)labels[i] * d, d);
                if (dd > far) {
                        far = dd;
                        fi = i;
                }
        }
        if (fi == n)
                return;
        unsigned old = labels[fi];
        for (unsigned j = 0; j < d; j++) {
                km->sums[(size_t)old * d + j] -= x[fi * d + j];
                km->sums[(size_t)c * d + j] = x[fi * d + j];
        }
        km->wsum[old] -= 1;
        km->wsum[c] = 1;
        labels[fi] = c;
        km->pick[n_taken] = fi;
}

int roid_kmeans_refine(roid_kmeans *km, const double *x, size_t n, unsigned max_iter, unsigned *labels,
                       unsigned *ret_iter, double *ret_inertia) {
        const unsigned k = km->k, d = km->d;
        if (!km->initialized || n == 0 || !labels)
                return -EINVAL;
        unsigned it = 0;
        double inertia;
        for (bool first = true;; first = false) {
                size_t changed = 0;
                inertia = 0;
                for (size_t i = 0; i < n; i++) {
                        double dd;
                        unsigned l = nearest(km->centers, k, d, x + i * d, &dd);
                        changed += first || l != labels[i];
                        labels[i] = l;
                        inertia += dd;
                }
                if (!changed || it == max_iter)
                        break;
                memset(km->sums, 0, (size_t)k * d * sizeof *km->sums);
                memset(km->wsum, 0, k * sizeof *km->wsum);
                for (size_t i = 0; i < n; i++) {
                        km->wsum[labels[i]] += 1;
                        for (unsigned j = 0; j < d; j++)
                                km->sums[(size_t)labels[i] * d + j] += x[i * d + j];
                }
                unsigned n_taken = 0;
                for (unsigned c = 0; c < k; c++)
                        if (km->wsum[c] == 0)
                                relocate(km, x, n, labels, c, n_taken++);
                for (unsigned c = 0; c < k; c++)
                        if (km->wsum[c] > 0)
                                for (unsigned j = 0; j < d; j++)
                                        km->centers[(size_t)c * d + j] = km->sums[(size_t)c * d + j] / km->wsum[c];
                it++;
                if (km->progress)
                        km->progress(km->progress_ctx);
        }
        memset(km->counts, 0, k * sizeof *km->counts);
        for (size_t i = 0; i < n; i++)
                km->counts[labels[i]] += 1;
        if (ret_iter)
                *ret_iter = it;
        if (ret_inertia)
                *ret_inertia = inertia;
        return 0;
}

/* ---- running statistics ---- */

int roid_running_stats_init(roid_running_stats *s, unsigned d) {
        if (d < 1 || d > ROID_KMEANS_MAX_D)
                return -EINVAL;
        memset(s, 0, sizeof *s);
        s->d = d;
        return 0;
}

void roid_running_stats_update(roid_running_stats *s, const double *x) {
        s->n++;
        for (unsigned j = 0; j < s->d; j++) {
                double delta = x[j] - s->mean[j];
                s->mean[j] += delta / (double)s->n;
                s->m2[j] += delta * (x[j] - s->mean[j]);
        }
}

void roid_running_stats_add_group(roid_running_stats *s, int64_t k, const double *x) {
        if (k == 0 || (k < 0 && (uint64_t)-k > s->n))
                return;
        const uint64_t n0 = s->n, n1 = k > 0 ? n0 + (uint64_t)k : n0 - (uint64_t)-k;
        const double kd = (double)k;
        for (unsigned j = 0; j < s->d; j++) {
                if (n1 == 0) {
                        s->mean[j] = s->m2[j] = 0;
                        continue;
                }
                /* adding: delta from the old mean; taking back: from the new one */
                const double mean1 = ((double)n0 * s->mean[j] + kd * x[j]) / (double)n1;
                const double delta = x[j] - (k > 0 ? s->mean[j] : mean1);
                const double m2 = s->m2[j] + (k > 0 ? 1 : -1) * delta * delta * (double)(k > 0 ? n0 : n1) * fabs(kd) /
                                                     (double)(k > 0 ? n1 : n0);
                s->mean[j] = mean1;
                s->m2[j] = m2 > 0 ? m2 : 0;
        }
        s->n = n1;
}

void roid_running_stats_std(const roid_running_stats *s, double *ret_std) {
        for (unsigned j = 0; j < s->d; j++)
                ret_std[j] = s->n < 2 ? 0 : sqrt(s->m2[j] / (double)s->n);
}

void roid_running_stats_standardize(const roid_running_stats *s, const double *x, double *out) {
        double sd[ROID_KMEANS_MAX_D];
        roid_running_stats_std(s, sd);
        for (unsigned j = 0; j < s->d; j++)
                out[j] = sd[j] > 0 ? (x[j] - s->mean[j]) / sd[j] : 0;
}
