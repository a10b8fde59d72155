/* test_kmeans.c - roid's online mini-batch k-means and Lloyd refinement on
 * Gaussian blobs, against scikit-learn (tests/py/kmeans_ref.py): ARI with
 * KMeans, the same Lloyd fixed point from the same start, inertia;
 * online/final agreement, reproducibility, starved-centre reassignment,
 * Welford statistics against numpy, argument validation; the decayed step,
 * predict_many and copy used by the RoI state. */
#include "tap.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/kmeans.h"

static roid_rng rng;

static double normal(void) {
        double u = roid_rng_unit(&rng), v = roid_rng_unit(&rng);
        return sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

typedef struct {
        char name[32];
        size_t n;
        unsigned d, k;
        double *x;
        int32_t *truth, *roid;
        double *init, *final;
        double agree_online; /* predict after streaming vs final labels */
        bool lloyd_only;     /* no streaming: refine from the first k points */
} kcase;

/* n points around k centres in d dimensions, shuffled: centres spread over
 * [-sep, sep]^d, per-blob scales 0.5..1.5, blob sizes uneven, centres at
 * least min_dist apart. */
static void blobs(kcase *c, size_t n, unsigned d, unsigned k, double sep, double min_dist) {
        double centres[16 * ROID_KMEANS_MAX_D], scale[16], weight[16], wsum = 0;
        for (unsigned b = 0; b < k; b++) {
                for (unsigned j = 0; j < d; j++)
                        centres[b * d + j] = (2 * roid_rng_unit(&rng) - 1) * sep;
                scale[b] = 0.5 + roid_rng_unit(&rng);
                weight[b] = 1 + roid_rng_unit(&rng);
                wsum += weight[b];
        }
        /* keep the blobs apart: min_dist between any two centres */
        for (unsigned a = 0; a < k; a++)
                for (unsigned b = 0; b < a; b++) {
                        double dd = 0;
                        for (unsigned j = 0; j < d; j++)
                                dd += pow(centres[a * d + j] - centres[b * d + j], 2);
                        if (sqrt(dd) < min_dist) {
                                for (unsigned j = 0; j < d; j++)
                                        centres[a * d + j] = (2 * roid_rng_unit(&rng) - 1) * sep;
                                a--;
                                break;
                        }
                }
        c->n = n, c->d = d, c->k = k;
        c->x = malloc(n * d * sizeof *c->x);
        c->truth = malloc(n * sizeof *c->truth);
        c->roid = malloc(n * sizeof *c->roid);
        c->init = malloc(k * d * sizeof *c->init);
        c->final = malloc(k * d * sizeof *c->final);
        for (size_t i = 0; i < n; i++) {
                double r = roid_rng_unit(&rng) * wsum;
                unsigned b = 0;
                while (b + 1 < k && r >= weight[b])
                        r -= weight[b++];
                c->truth[i] = (int32_t)b;
                for (unsigned j = 0; j < d; j++)
                        c->x[i * d + j] = centres[b * d + j] + scale[b] * normal();
        }
}

/* Streams the points in batches, predicts them all, refines. */
static int run_case(kcase *c, size_t batch, uint64_t seed, roid_kmeans *km) {
        roid_err err = {{0}};
        int r = roid_kmeans_init(km, c->k, c->d, batch, seed, &err);
        if (r < 0)
                return r;
        if (c->lloyd_only) /* a plain start: the first k points */
                roid_kmeans_set_centers(km, c->x);
        for (size_t i = 0; i < c->n && !c->lloyd_only; i += batch) {
                size_t m = c->n - i < batch ? c->n - i : batch;
                r = roid_kmeans_partial_fit(km, c->x + i * c->d, m, &err);
                if (r < 0) {
                        tap_diag("partial_fit: %s", err.msg);
                        return r;
                }
        }
        unsigned *online = malloc(c->n * sizeof *online), *lab = malloc(c->n * sizeof *lab);
        for (size_t i = 0; i < c->n; i++)
                online[i] = roid_kmeans_predict(km, c->x + i * c->d, NULL);
        memcpy(c->init, km->centers, c->k * c->d * sizeof *c->init);
        unsigned it = 0;
        double inertia = 0;
        r = roid_kmeans_refine(km, c->x, c->n, 300, lab, &it, &inertia);
        memcpy(c->final, km->centers, c->k * c->d * sizeof *c->final);
        size_t same = 0;
        for (size_t i = 0; i < c->n; i++) {
                c->roid[i] = (int32_t)lab[i];
                same += online[i] == lab[i];
        }
        c->agree_online = (double)same / c->n;
        double direct = roid_kmeans_inertia(km, c->x, c->n);
        tap_ok(r == 0 && fabs(direct - inertia) <= 1e-9 * direct,
               "%s: refine converged in %u updates, inertia %.6g (recomputed %.6g)", c->name, it, inertia, direct);
        free(online);
        free(lab);
        return r;
}

static int write_raw(const char *dir, const char *name, const char *ext, const void *p, size_t size) {
        char path[512];
        snprintf(path, sizeof path, "%.255s/%.31s.%s", dir, name, ext);
        FILE *f = fopen(path, "wb");
        if (!f)
                return -1;
        size_t w = fwrite(p, 1, size, f);
        return fclose(f) == 0 && w == size ? 0 : -1;
}

static double ref_value(const char *dir, const char *name, const char *key) {
        char path[512], line[256];
        snprintf(path, sizeof path, "%.255s/%.31s.ref", dir, name);
        FILE *f = fopen(path, "r");
        double v = NAN;
        if (!f)
                return v;
        while (fgets(line, sizeof line, f)) {
                char k[64];
                double x;
                if (sscanf(line, "%63s %lf", k, &x) == 2 && !strcmp(k, key))
                        v = x;
        }
        fclose(f);
        return v;
}

static void against_sklearn(void) {
        const char *src = getenv("ROID_SRC");
        if (!src) {
                tap_skip("ROID_SRC not set: cannot find tests/py/kmeans_ref.py");
                return;
        }
        char dir[256];
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/roid-kmeans-XXXXXX", tmp ? tmp : "/tmp");
        if (!tap_ok(mkdtemp(dir) != NULL, "temporary directory %s", dir))
                return;
        static kcase cases[6];
        struct {
                const char *name;
                size_t n, batch;
                unsigned d, k;
                double sep, min_dist;
        } spec[] = {
                {"blobs_2d_k3", 3000, 256, 2, 3, 20, 12},    {"blobs_5d_k6", 6000, 512, 5, 6, 25, 12},
                {"blobs_24d_k8", 4000, 300, 24, 8, 12, 12},  {"blobs_3d_k12", 9000, 1024, 3, 12, 40, 12},
                {"touching_2d_k4", 8000, 500, 2, 4, 6, 6.5}, {"lloyd_3d_k7", 5000, 5000, 3, 7, 8, 4},
        };
        char path[512];
        snprintf(path, sizeof path, "%s/manifest.txt", dir);
        FILE *m = fopen(path, "w");
        for (int i = 0; i < 6; i++) {
                kcase *c = &cases[i];
                snprintf(c->name, sizeof c->name, "%s", spec[i].name);
                blobs(c, spec[i].n, spec[i].d, spec[i].k, spec[i].sep, spec[i].min_dist);
                roid_kmeans km;
                c->lloyd_only = i == 5;
                if (run_case(c, spec[i].batch, 1234 + i, &km) < 0)
                        continue;
                write_raw(dir, c->name, "x", c->x, c->n * c->d * 8);
                write_raw(dir, c->name, "truth", c->truth, c->n * 4);
                write_raw(dir, c->name, "roid", c->roid, c->n * 4);
                write_raw(dir, c->name, "init", c->init, c->k * c->d * 8);
                write_raw(dir, c->name, "final", c->final, c->k * c->d * 8);
                fprintf(m, "%s %zu %u %u\n", c->name, c->n, c->d, c->k);
                if (!c->lloyd_only)
                        tap_ok(c->agree_online >= 0.95, "%s: online predict agrees with the refined labels on %.2f %%",
                               c->name, 100 * c->agree_online);
                roid_kmeans_free(&km);
        }
        fclose(m);
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/py/kmeans_ref.py %s", src, dir);
        int r = system(cmd);
        if (tap_ok(r == 0, "scikit-learn reference ran (status %d)", r)) {
                for (int i = 0; i < 6; i++) {
                        kcase *c = &cases[i];
                        double ari = ref_value(dir, c->name, "ari_sklearn"), art = ref_value(dir, c->name, "ari_truth");
                        double ir = ref_value(dir, c->name, "inertia_ratio");
                        double la = ref_value(dir, c->name, "lloyd_agree"),
                               lc = ref_value(dir, c->name, "lloyd_center");
                        if (!c->lloyd_only) {
                                tap_ok(ari >= 0.95 && art >= 0.95,
                                       "%s: ARI with sklearn KMeans %.4f, with the truth %.4f", c->name, ari, art);
                                tap_ok(ir <= 1.0 + 1e-9, "%s: inertia / sklearn's = %.9f", c->name, ir);
                        }
                        tap_ok(la == 1.0 && lc < 1e-9,
                               "%s: sklearn's Lloyd from roid's start: same labels (%.4f), centres within %.2g",
                               c->name, la, lc);
                        roid_running_stats st;
                        roid_running_stats_init(&st, c->d);
                        for (size_t p = 0; p < c->n; p++)
                                roid_running_stats_update(&st, c->x + p * c->d);
                        double sd[ROID_KMEANS_MAX_D], worst = 0;
                        roid_running_stats_std(&st, sd);
                        for (unsigned j = 0; j < c->d; j++) {
                                char key[32];
                                snprintf(key, sizeof key, "mean_%u", j);
                                double mj = ref_value(dir, c->name, key);
                                snprintf(key, sizeof key, "std_%u", j);
                                double sj = ref_value(dir, c->name, key);
                                worst = fmax(worst, fabs(st.mean[j] - mj) / fmax(fabs(sj), 1e-300));
                                worst = fmax(worst, fabs(sd[j] - sj) / sj);
                        }
                        tap_ok(worst < 1e-12, "%s: Welford mean and std match numpy (worst %.2g of std)", c->name,
                               worst);
                }
        }
        if (!getenv("ROID_KEEP_TMP")) {
                snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
                if (system(cmd) != 0)
                        tap_diag("could not remove %s", dir);
        }
        for (int i = 0; i < 6; i++) {
                free(cases[i].x), free(cases[i].truth), free(cases[i].roid);
                free(cases[i].init), free(cases[i].final);
        }
}

/* Labels agree up to a permutation: the fraction of points whose label maps
 * like the majority of their true cluster. */
static double purity(const int32_t *truth, const unsigned *lab, size_t n, unsigned k) {
        size_t tab[16][16] = {{0}}, good = 0;
        for (size_t i = 0; i < n; i++)
                tab[truth[i]][lab[i]]++;
        for (unsigned t = 0; t < k; t++) {
                size_t best = 0;
                for (unsigned l = 0; l < k; l++)
                        if (tab[t][l] > best)
                                best = tab[t][l];
                good += best;
        }
        return (double)good / n;
}

static void reproducible(void) {
        kcase c = {.name = "repro"};
        roid_rng_seed(&rng, 99);
        blobs(&c, 2000, 4, 5, 20, 12);
        roid_kmeans a, b;
        run_case(&c, 200, 7, &a);
        run_case(&c, 200, 7, &b);
        tap_ok(memcmp(a.centers, b.centers, 5 * 4 * sizeof(double)) == 0 && a.n_reassigned == b.n_reassigned,
               "same seed: bit-identical centres");
        roid_kmeans_free(&b);
        run_case(&c, 200, 8, &b);
        unsigned *lab = malloc(c.n * sizeof *lab);
        for (size_t i = 0; i < c.n; i++)
                lab[i] = roid_kmeans_predict(&b, c.x + i * c.d, NULL);
        tap_ok(purity(c.truth, lab, c.n, 5) > 0.99, "another seed: also right (purity %.4f)",
               purity(c.truth, lab, c.n, 5));
        roid_kmeans_free(&a);
        roid_kmeans_free(&b);
        free(lab);
        free(c.x), free(c.truth), free(c.roid), free(c.init), free(c.final);
}

static void starved(void) {
        kcase c = {.name = "starved"};
        roid_rng_seed(&rng, 5);
        blobs(&c, 3000, 2, 3, 15, 12);
        roid_kmeans km;
        roid_kmeans_init(&km, 3, 2, 100, 11, NULL);
        /* two centres inside the data, one far from everything */
        double start[6] = {c.x[0], c.x[1], c.x[2], c.x[3], 1000, -1000};
        roid_kmeans_set_centers(&km, start);
        int first = -1;
        for (size_t i = 0; i < c.n; i += 100) {
                int r = roid_kmeans_partial_fit(&km, c.x + i * 2, 100, NULL);
                if (r > 0 && first < 0)
                        first = (int)(i / 100);
        }
        double far = hypot(km.centers[4] - 1000, km.centers[5] + 1000);
        tap_ok(km.n_reassigned >= 1 && first >= 0 && far > 900 && km.counts[2] > 0,
               "a centre far from the data is reassigned (first at batch %d, %llu reassignments, now %.1f from its "
               "start, count %.0f)",
               first, (unsigned long long)km.n_reassigned, far, km.counts[2]);
        double lo[2] = {INFINITY, INFINITY}, hi[2] = {-INFINITY, -INFINITY};
        for (size_t i = 0; i < c.n * 2; i++) {
                lo[i % 2] = fmin(lo[i % 2], c.x[i]);
                hi[i % 2] = fmax(hi[i % 2], c.x[i]);
        }
        tap_ok(km.centers[4] >= lo[0] && km.centers[4] <= hi[0] && km.centers[5] >= lo[1] && km.centers[5] <= hi[1],
               "the reassigned centre (%.2f, %.2f) lies among the data", km.centers[4], km.centers[5]);
        /* without reassignment the far centre stays useless */
        roid_kmeans_free(&km);
        roid_kmeans_init(&km, 3, 2, 100, 11, NULL);
        km.reassignment_ratio = 0;
        roid_kmeans_set_centers(&km, start);
        for (size_t i = 0; i < c.n; i += 100)
                roid_kmeans_partial_fit(&km, c.x + i * 2, 100, NULL);
        tap_ok(km.n_reassigned == 0 && km.counts[2] == 0 && km.centers[4] == 1000,
               "with reassignment_ratio 0 the far centre starves (count %.0f)", km.counts[2]);
        roid_kmeans_free(&km);
        free(c.x), free(c.truth), free(c.roid), free(c.init), free(c.final);
}

/* Empty clusters in Lloyd are moved, not left behind. */
static void empty_cluster(void) {
        kcase c = {.name = "empty"};
        roid_rng_seed(&rng, 3);
        blobs(&c, 600, 2, 3, 15, 12);
        roid_kmeans km;
        roid_kmeans_init(&km, 3, 2, 600, 1, NULL);
        double start[6] = {c.x[0], c.x[1], c.x[0] + 1e-3, c.x[1], 500, 500};
        roid_kmeans_set_centers(&km, start);
        unsigned *lab = malloc(c.n * sizeof *lab);
        unsigned it = 0;
        roid_kmeans_refine(&km, c.x, c.n, 100, lab, &it, NULL);
        tap_ok(km.counts[0] > 0 && km.counts[1] > 0 && km.counts[2] > 0 && purity(c.truth, lab, c.n, 3) > 0.99,
               "Lloyd relocates empty clusters: counts %.0f %.0f %.0f after %u updates", km.counts[0], km.counts[1],
               km.counts[2], it);
        roid_kmeans_free(&km);
        free(lab);
        free(c.x), free(c.truth), free(c.roid), free(c.init), free(c.final);
}

static void validation(void) {
        roid_kmeans km;
        roid_err err;
        struct {
                unsigned k, d;
                size_t mb;
                const char *field;
        } bad[] = {{1, 2, 10, "k ="},
                   {2000, 2, 3000, "k ="},
                   {3, 0, 10, "d ="},
                   {3, ROID_KMEANS_MAX_D + 1, 10, "d ="},
                   {3, 2, 2, "max_batch"}};
        for (int i = 0; i < 5; i++) {
                memset(&err, 0, sizeof err);
                int r = roid_kmeans_init(&km, bad[i].k, bad[i].d, bad[i].mb, 1, &err);
                tap_ok(r == -EINVAL && strstr(err.msg, bad[i].field), "init rejects %s: \"%s\"", bad[i].field, err.msg);
        }
        roid_kmeans_init(&km, 3, 2, 8, 1, NULL);
        double x[20] = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9};
        int r = roid_kmeans_partial_fit(&km, x, 2, &err);
        tap_ok(r == -EINVAL && !km.initialized, "first batch smaller than k refused: \"%s\"", err.msg);
        r = roid_kmeans_partial_fit(&km, x, 9, &err);
        tap_ok(r == -EINVAL, "batch above max_batch refused: \"%s\"", err.msg);
        x[5] = NAN;
        r = roid_kmeans_partial_fit(&km, x, 8, &err);
        tap_ok(r == -EINVAL && strstr(err.msg, "point 2") && !km.initialized, "NaN refused: \"%s\"", err.msg);
        unsigned lab[8];
        tap_ok(roid_kmeans_refine(&km, x, 8, 10, lab, NULL, NULL) == -EINVAL, "refine before any centre refused");
        roid_kmeans_free(&km);
        roid_running_stats st;
        tap_ok(roid_running_stats_init(&st, 0) == -EINVAL &&
                       roid_running_stats_init(&st, ROID_KMEANS_MAX_D + 1) == -EINVAL,
               "running stats: d outside 1..%d refused", ROID_KMEANS_MAX_D);
        roid_running_stats_init(&st, 2);
        double p[2] = {3, -1}, q[2] = {5, -1}, z[2];
        roid_running_stats_update(&st, p);
        roid_running_stats_update(&st, q);
        roid_running_stats_standardize(&st, p, z);
        tap_ok(z[0] == -1 && z[1] == 0, "standardize: (3 - 4) / 1 = -1; a constant column gives 0");
}

/* roid_running_stats_add_group: a group of k equal samples is k updates;
 * taking them back, as a group or one by one, leaves the statistics of the
 * others, to rounding; taking back more than there are is refused. */
static void group_stats(void) {
        roid_running_stats base, grp, one;
        roid_running_stats_init(&base, 2);
        roid_running_stats_init(&one, 2);
        double x[2];
        for (int i = 0; i < 500; i++) {
                x[0] = 50 + roid_rng_unit(&rng), x[1] = 60 + 2 * roid_rng_unit(&rng);
                roid_running_stats_update(&base, x);
        }
        memcpy(&grp, &base, sizeof grp);
        memcpy(&one, &base, sizeof one);
        const double v[2] = {5, 900}; /* a glitch's CoM, hundreds of deviations off */
        roid_running_stats_add_group(&grp, 7, v);
        for (int i = 0; i < 7; i++)
                roid_running_stats_update(&one, v);
        double s0[2], s1[2], s2[2];
        roid_running_stats_std(&grp, s1);
        roid_running_stats_std(&one, s2);
        double e = 0;
        for (int j = 0; j < 2; j++)
                e = fmax(e, fmax(fabs(grp.mean[j] - one.mean[j]), fabs(s1[j] - s2[j])) / s2[j]);
        tap_ok(grp.n == one.n && e < 1e-12, "a group of 7 samples is 7 updates (relative difference %.2g)", e);
        roid_running_stats_add_group(&grp, -7, v);
        for (int i = 0; i < 7; i++)
                roid_running_stats_add_group(&one, -1, v);
        roid_running_stats_std(&base, s0);
        roid_running_stats_std(&grp, s1);
        roid_running_stats_std(&one, s2);
        e = 0;
        for (int j = 0; j < 2; j++)
                e = fmax(e, fmax(fmax(fabs(grp.mean[j] - base.mean[j]), fabs(one.mean[j] - base.mean[j])),
                                 fmax(fabs(s1[j] - s0[j]), fabs(s2[j] - s0[j]))) /
                                    s0[j]);
        tap_ok(grp.n == 500 && one.n == 500 && e < 1e-9,
               "taken back as a group or one by one, the 500 others remain (relative difference %.2g of their sd)", e);
        roid_running_stats_add_group(&grp, -501, v);
        tap_ok(grp.n == 500, "taking back more samples than there are is refused");
}

/* roid_kmeans_step against the update written out here: counts scaled by the
 * decay, then c <- (c n + sum) / (n + m) over the points nearest to c. */
static void decayed_step(void) {
        kcase c = {.name = "step"};
        roid_rng_seed(&rng, 17);
        blobs(&c, 5000, 3, 4, 10, 6);
        roid_kmeans km;
        tap_ok(roid_kmeans_init(&km, 4, 3, 4, 1, NULL) == 0, "init with a batch of 4, stepping over 5000 points");
        tap_ok(roid_kmeans_step(&km, c.x, c.n, 0.5) == -EINVAL, "step before any centre refused");
        double cen[12], cnt[4] = {0};
        memcpy(cen, c.x, sizeof cen); /* the first four points */
        roid_kmeans_set_centers(&km, cen);
        double worst = 0;
        for (int round = 0; round < 3; round++) {
                double decay = round == 1 ? 1.0 : 0.5, sum[12] = {0}, m[4] = {0};
                size_t n = round == 2 ? 700 : c.n;
                for (size_t i = 0; i < n; i++) {
                        unsigned best = 0;
                        double bd = INFINITY;
                        for (unsigned j = 0; j < 4; j++) {
                                double dd = 0;
                                for (unsigned q = 0; q < 3; q++)
                                        dd += pow(c.x[i * 3 + q] - cen[j * 3 + q], 2);
                                if (dd < bd)
                                        bd = dd, best = j;
                        }
                        m[best]++;
                        for (unsigned q = 0; q < 3; q++)
                                sum[best * 3 + q] += c.x[i * 3 + q];
                }
                for (unsigned j = 0; j < 4; j++) {
                        cnt[j] *= decay;
                        if (m[j] > 0)
                                for (unsigned q = 0; q < 3; q++)
                                        cen[j * 3 + q] = (cen[j * 3 + q] * cnt[j] + sum[j * 3 + q]) / (cnt[j] + m[j]);
                        cnt[j] += m[j];
                }
                roid_kmeans_step(&km, c.x, n, decay);
                for (unsigned j = 0; j < 4; j++) {
                        worst = fmax(worst, fabs(km.counts[j] - cnt[j]));
                        for (unsigned q = 0; q < 3; q++)
                                worst = fmax(worst, fabs(km.centers[j * 3 + q] - cen[j * 3 + q]) /
                                                            fmax(1, fabs(cen[j * 3 + q])));
                }
        }
        tap_ok(worst < 1e-12 && km.n_reassigned == 0,
               "three steps (decay 0.5, 1, 0.5; 5000, 5000, 700 points) match the written-out update (worst %.2g)",
               worst);
        unsigned *many = malloc(c.n * sizeof *many);
        roid_kmeans_predict_many(&km, c.x, c.n, many);
        size_t same = 0;
        for (size_t i = 0; i < c.n; i++)
                same += many[i] == roid_kmeans_predict(&km, c.x + i * 3, NULL);
        tap_ok(same == c.n, "predict_many equals predict on all %zu points", same);
        roid_kmeans cp, other;
        roid_kmeans_init(&cp, 4, 3, 4, 99, NULL);
        roid_kmeans_init(&other, 4, 3, 5, 99, NULL);
        tap_ok(roid_kmeans_copy(&other, &km) == -EINVAL, "copy into another shape refused");
        tap_ok(roid_kmeans_copy(&cp, &km) == 0 && cp.centers != km.centers &&
                       memcmp(cp.centers, km.centers, sizeof cen) == 0 && memcmp(cp.counts, km.counts, sizeof cnt) == 0,
               "copy: same centres and counts in its own arrays");
        /* the copy goes on like the original: same random state too */
        roid_kmeans_partial_fit(&km, c.x, 4, NULL);
        roid_kmeans_partial_fit(&cp, c.x, 4, NULL);
        tap_ok(memcmp(cp.centers, km.centers, sizeof cen) == 0 && cp.n_seen == km.n_seen,
               "copy and original stay identical after another step");
        roid_kmeans_free(&cp);
        roid_kmeans_free(&other);
        roid_kmeans_free(&km);
        free(many);
        free(c.x), free(c.truth), free(c.roid), free(c.init), free(c.final);
}

int main(void) {
        roid_rng_seed(&rng, 2024);
        validation();
        against_sklearn();
        reproducible();
        starved();
        empty_cluster();
        decayed_step();
        group_stats();
        return tap_done();
}
