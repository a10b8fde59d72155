/* test_feedback.c - the "scan here" feedback on RoI states built from
 * synthetic per-frame features: disks of low total intensity and shifted
 * centre of mass (an absorbing, scattering particle) in a background of high
 * T and CoM at the beam centre, with 1 % deterministic noise.  Boxes, rescan
 * lattice, skip rule, ranked next points, stability, final mask, suggest(n)
 * and argument checks; every expected value is computed here by brute force
 * (Chebyshev neighbourhoods by exhaustive search, components by label
 * relaxation, the fine lattice point by point), never by the code under test.
 *
 * Frames are labelled by the RoI state on arrival from the current centres
 * with their own (unfiltered) value; `observe` refits and then feeds every
 * measured point once more, so the online mask is the disks exactly (checked
 * as a precondition) and the expectations can be stated in disk geometry. */
#include "tap.h"

#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/feedback.h"

#define MAXD 16

typedef struct {
        double cy, cx, r;
} disk;

typedef struct {
        uint32_t ny, nx;
        disk d[MAXD];
        unsigned nd;
        int64_t spike; /* a lone strong-CoM point (index), -1 = none */
        bool has_weak;
        uint32_t weak; /* a lone point of moderate CoM shift (index) */
} scene;

static double noise(uint32_t y, uint32_t x, uint32_t salt) {
        uint64_t z = ((uint64_t)y << 40) ^ ((uint64_t)x << 16) ^ salt;
        z += 0x9e3779b97f4a7c15ULL;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        return (double)(z >> 11) * 0x1.0p-52 - 1; /* [-1, 1) */
}

static bool in_object(const scene *s, uint32_t y, uint32_t x) {
        for (unsigned k = 0; k < s->nd; k++) {
                double dy = y - s->d[k].cy, dx = x - s->d[k].cx;
                if (dy * dy + dx * dx <= s->d[k].r * s->d[k].r)
                        return true;
        }
        return false;
}

static void features(const scene *s, uint32_t y, uint32_t x, roid_features *f) {
        memset(f, 0, sizeof *f);
        bool in = in_object(s, y, x);
        size_t i = (size_t)y * s->nx + x;
        double shift = in ? 1 : s->spike == (int64_t)i ? 1.3 : s->has_weak && s->weak == i ? 0.65 : 0;
        f->n_segments = 1;
        f->total = (in ? 500 : 1000) * (1 + 0.01 * noise(y, x, 1));
        f->total_u64 = (uint64_t)f->total;
        f->com_x = 50 + 2 * shift + 0.02 * noise(y, x, 2);
        f->com_y = 50 + 1 * shift + 0.02 * noise(y, x, 3);
        f->n_pixels = 1 << 16;
        f->seg[0].sum = f->total;
        f->seg[0].sum_u64 = f->total_u64;
        f->seg[0].com_x = f->com_x;
        f->seg[0].com_y = f->com_y;
}

static roid_roi *new_roi(const scene *s, int border) {
        roid_roi_params p;
        roid_roi_params_default(&p);
        p.n_segments = 1;
        p.k = 2;
        p.cadence = 0;
        p.border = border;
        roid_roi *r = NULL;
        roid_err err = {{0}};
        if (roid_roi_new(&p, s->ny, s->nx, &r, &err) < 0) {
                tap_diag("roid_roi_new: %s", err.msg);
                exit(1);
        }
        return r;
}

/* Measures rows [from, to), refits, then feeds rows [0, to) again (not the
 * spike, which keeps its filtered label: background). */
static void observe(roid_roi *r, const scene *s, uint32_t from, uint32_t to) {
        roid_features f;
        for (uint32_t y = from; y < to; y++)
                for (uint32_t x = 0; x < s->nx; x++) {
                        features(s, y, x, &f);
                        roid_roi_add(r, y, x, &f);
                }
        roid_roi_refit(r);
        for (uint32_t y = 0; y < to; y++)
                for (uint32_t x = 0; x < s->nx; x++) {
                        if (s->spike == (int64_t)y * s->nx + x || (s->has_weak && s->weak == y * s->nx + x))
                                continue;
                        features(s, y, x, &f);
                        roid_roi_add(r, y, x, &f);
                }
}

/* The online mask must be the disks on the measured rows [0, to). */
static bool check_online(const roid_roi *r, const scene *s, uint32_t to, const char *what) {
        const uint8_t *m = roid_roi_online_mask(r);
        size_t bad = 0;
        for (uint32_t y = 0; y < s->ny; y++)
                for (uint32_t x = 0; x < s->nx; x++)
                        bad += m[(size_t)y * s->nx + x] != (y < to && in_object(s, y, x));
        return tap_ok(bad == 0, "%s: online RoI mask is the disks on the measured rows (%zu points differ)", what, bad);
}

static roid_scan_grid motor_grid(uint32_t ny, uint32_t nx) {
        roid_scan_grid g;
        roid_scan_grid_default(&g);
        g.ny = ny;
        g.nx = nx;
        g.origin_x = 10;
        g.origin_y = -5;
        g.step_x = 0.5;
        g.step_y = 0.25;
        snprintf(g.units, sizeof g.units, "um");
        return g;
}

static roid_feedback *new_fb(const roid_scan_grid *g, int border, double factor, unsigned next, size_t max_rescan) {
        roid_feedback_params p;
        roid_feedback_params_default(&p);
        p.border = border;
        p.rescan_factor = factor;
        p.next_points = next;
        p.max_rescan = max_rescan;
        roid_feedback *fb = NULL;
        roid_err err = {{0}};
        if (roid_feedback_new(&p, g, &fb, &err) < 0) {
                tap_diag("roid_feedback_new: %s", err.msg);
                exit(1);
        }
        return fb;
}

/* ------------------------------------------------------------ brute force */

static int64_t cheb(size_t a, size_t b, uint32_t nx) {
        int64_t dy = llabs((int64_t)(a / nx) - (int64_t)(b / nx)), dx = llabs((int64_t)(a % nx) - (int64_t)(b % nx));
        return dy > dx ? dy : dx;
}

/* Grow (n > 0): any in-grid point within n; shrink: all in-grid points within |n|. */
static void morph_bf(const uint8_t *in, uint8_t *out, uint32_t ny, uint32_t nx, int n) {
        size_t np = (size_t)ny * nx;
        for (size_t p = 0; p < np; p++) {
                bool any = false, all = true;
                for (size_t q = 0; q < np; q++) {
                        if (cheb(p, q, nx) > abs(n))
                                continue;
                        any |= in[q] != 0;
                        all &= in[q] != 0;
                }
                out[p] = n >= 0 ? any : all;
        }
}

typedef struct {
        uint32_t row0, col0, row1, col1, points, first;
} bfbox;

/* 8-connected components by relaxing labels to the smallest index until
 * nothing changes; boxes largest first, ties by first index. */
static size_t boxes_bf(const uint8_t *m, uint32_t ny, uint32_t nx, bfbox *out, size_t max) {
        size_t np = (size_t)ny * nx, n = 0;
        uint32_t *lab = malloc(np * sizeof *lab);
        for (size_t i = 0; i < np; i++)
                lab[i] = (uint32_t)i;
        for (bool changed = true; changed;) {
                changed = false;
                for (size_t i = 0; i < np; i++) {
                        if (!m[i])
                                continue;
                        for (size_t j = 0; j < np; j++) {
                                if (j != i && m[j] && cheb(i, j, nx) == 1 && lab[j] < lab[i]) {
                                        lab[i] = lab[j];
                                        changed = true;
                                }
                        }
                }
        }
        bfbox *all = calloc(np, sizeof *all);
        for (size_t i = 0; i < np; i++) {
                if (!m[i] || lab[i] != i)
                        continue;
                bfbox b = {UINT32_MAX, UINT32_MAX, 0, 0, 0, (uint32_t)i};
                for (size_t j = 0; j < np; j++) {
                        if (!m[j] || lab[j] != i)
                                continue;
                        uint32_t y = (uint32_t)(j / nx), x = (uint32_t)(j % nx);
                        b.row0 = y < b.row0 ? y : b.row0;
                        b.col0 = x < b.col0 ? x : b.col0;
                        b.row1 = y > b.row1 ? y : b.row1;
                        b.col1 = x > b.col1 ? x : b.col1;
                        b.points++;
                }
                all[n++] = b;
        }
        /* selection of the largest, ties by first */
        size_t k = 0;
        for (; k < n && k < max; k++) {
                size_t best = k;
                for (size_t j = k + 1; j < n; j++)
                        if (all[j].points > all[best].points ||
                            (all[j].points == all[best].points && all[j].first < all[best].first))
                                best = j;
                bfbox t = all[k];
                all[k] = all[best];
                all[best] = t;
                out[k] = all[k];
        }
        free(all);
        free(lab);
        return k;
}

static size_t count(const uint8_t *m, size_t np) {
        size_t n = 0;
        for (size_t i = 0; i < np; i++)
                n += m[i] != 0;
        return n;
}

static bool check_boxes(const roid_feedback_view *v, const roid_scan_grid *g, const uint8_t *grown, size_t max,
                        const char *what) {
        bfbox want[64];
        size_t n = boxes_bf(grown, g->ny, g->nx, want, max < 64 ? max : 64);
        bool ok = tap_eq_u64(v->n_boxes, n, what);
        for (size_t k = 0; ok && k < n; k++) {
                const roid_fb_box *b = &v->boxes[k];
                ok &= b->row0 == want[k].row0 && b->col0 == want[k].col0 && b->row1 == want[k].row1 &&
                      b->col1 == want[k].col1 && b->points == want[k].points;
                ok &= fabs(b->x0 - (g->origin_x + want[k].col0 * g->step_x)) < 1e-12 &&
                      fabs(b->x1 - (g->origin_x + want[k].col1 * g->step_x)) < 1e-12 &&
                      fabs(b->y0 - (g->origin_y + want[k].row0 * g->step_y)) < 1e-12 &&
                      fabs(b->y1 - (g->origin_y + want[k].row1 * g->step_y)) < 1e-12;
                if (!ok)
                        tap_diag("box %zu: got rows %u..%u cols %u..%u (%u points), want rows %u..%u cols %u..%u (%u)",
                                 k, b->row0, b->row1, b->col0, b->col1, b->points, want[k].row0, want[k].row1,
                                 want[k].col0, want[k].col1, want[k].points);
        }
        return tap_ok(ok, "%s: boxes equal the brute-force components (grid and scan coordinates)", what);
}

/* The skip rule, point by point over the whole grid. */
static void skip_bf(const uint8_t *src, const uint8_t *grown, const uint32_t *cnt, uint32_t ny, uint32_t nx, int border,
                    uint8_t *out) {
        size_t np = (size_t)ny * nx;
        int64_t guard = (border > 1 ? border : 1) + 1;
        for (size_t p = 0; p < np; p++) {
                out[p] = 0;
                if (cnt[p])
                        continue;
                bool near = false, hasm = false, mroi = false;
                for (size_t q = 0; q < np; q++) {
                        int64_t d = cheb(p, q, nx);
                        near |= (src[q] && d <= guard) || (grown[q] && d <= 1);
                        if (cnt[q] && d <= 2) {
                                hasm = true;
                                mroi |= src[q] || grown[q];
                        }
                }
                out[p] = !near && hasm && !mroi;
        }
}

static bool check_skip(const roid_feedback_view *v, const roid_roi *r, int border, uint8_t *want, const char *what) {
        size_t np = (size_t)v->ny * v->nx, n = 0;
        const uint8_t *src = v->final ? roid_roi_raw_mask(r) : roid_roi_online_mask(r);
        skip_bf(src, v->mask, roid_roi_counts(r), v->ny, v->nx, border, want);
        bool classified = false; /* rule 5: some modality labels */
        for (unsigned m = 0; m < roid_roi_n_modalities(r); m++)
                classified |= !isnan(roid_roi_centres(r, m)[0]);
        if (!classified)
                memset(want, 0, np);
        bool ok = true;
        for (size_t i = 0; i < np; i++) {
                if (!want[i])
                        continue;
                ok &= n < v->n_skip && v->skip[n] == i;
                n++;
        }
        ok &= n == v->n_skip;
        return tap_ok(ok, "%s: skip list (%zu) equals the brute-force rule (%zu), row-major", what, v->n_skip, n);
}

typedef struct {
        double score;
        uint32_t idx;
} cand;

static int cand_cmp(const void *a, const void *b) {
        const cand *x = a, *y = b;
        if (x->score != y->score)
                return x->score > y->score ? -1 : 1;
        return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* All candidates with the documented scores, best first; returns how many. */
static size_t next_bf(const roid_roi *r, cand *out) {
        uint32_t ny = roid_roi_ny(r), nx = roid_roi_nx(r);
        const uint8_t *src = roid_roi_online_mask(r);
        const uint32_t *cnt = roid_roi_counts(r);
        const double *com = roid_roi_raw_map(r, 1);
        size_t n = 0;
        for (uint32_t y = 0; y < ny; y++) {
                for (uint32_t x = 0; x < nx; x++) {
                        size_t i = (size_t)y * nx + x;
                        unsigned roi_nb = 0, other_nb = 0;
                        for (int dy = -1; dy <= 1; dy++)
                                for (int dx = -1; dx <= 1; dx++) {
                                        int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                                        if ((!dy && !dx) || yy < 0 || xx < 0 || yy >= ny || xx >= nx)
                                                continue;
                                        if (src[yy * nx + xx])
                                                roi_nb++;
                                        else
                                                other_nb++;
                                }
                        double z = isnan(com[i]) ? 0 : com[i], s = -1;
                        if (!cnt[i] && roi_nb)
                                s = 2 + roi_nb / 8.0;
                        else if (cnt[i] && src[i] && other_nb)
                                s = 1 + z / (1 + z);
                        else if (cnt[i] && !src[i] && z >= 3)
                                s = z / (1 + z);
                        if (s >= 0)
                                out[n++] = (cand){s, (uint32_t)i};
                }
        }
        qsort(out, n, sizeof *out, cand_cmp);
        return n;
}

/* ------------------------------------------------------------ tests */

static void expect_einval(const roid_feedback_params *p, const roid_scan_grid *g, const char *word) {
        roid_feedback *fb = (roid_feedback *)&fb; /* must stay untouched */
        roid_feedback *before = fb;
        roid_err err = {{0}};
        int r = roid_feedback_new(p, g, &fb, &err);
        tap_ok(r == -EINVAL && fb == before && strstr(err.msg, word), "bad %s: -EINVAL, error names it (\"%s\")", word,
               err.msg);
}

static void test_params(void) {
        roid_scan_grid g = motor_grid(10, 12);
        roid_feedback_params d, p;
        roid_feedback_params_default(&d);
        p = d, p.rescan_factor = 0.5;
        expect_einval(&p, &g, "rescan_factor");
        p = d, p.rescan_factor = NAN;
        expect_einval(&p, &g, "rescan_factor");
        p = d, p.rescan_factor = 16.5;
        expect_einval(&p, &g, "rescan_factor");
        p = d, p.next_points = ROID_FB_MAX_NEXT + 1;
        expect_einval(&p, &g, "next_points");
        p = d, p.stable_refits = 0;
        expect_einval(&p, &g, "stable_refits");
        p = d, p.border = -ROID_ROI_MAX_BORDER - 1;
        expect_einval(&p, &g, "border");
        p = d, p.max_boxes = 0;
        expect_einval(&p, &g, "max_boxes");
        p = d, p.max_rescan = ROID_FB_MAX_RESCAN + 1;
        expect_einval(&p, &g, "max_rescan");
        roid_scan_grid b = g;
        b.step_x = 0;
        expect_einval(&d, &b, "step");
        b = g, b.origin_y = INFINITY;
        expect_einval(&d, &b, "origin");
        b = g, b.ny = 0;
        expect_einval(&d, &b, "grid");
        b = g, b.ny = 1 << 13, b.nx = (1 << 11) + 1;
        expect_einval(&d, &b, "grid");

        roid_feedback *fb = new_fb(&g, 0, 2, 8, 100);
        roid_feedback_view v;
        roid_feedback_get(fb, &v);
        tap_ok(v.ny == 10 && v.nx == 12 && v.updates == 0 && v.n_boxes == 0 && v.n_rescan == 0 && v.n_skip == 0 &&
                       v.n_next == 0 && !v.stable && !v.final && v.mask && count(v.mask, 120) == 0,
               "before the first update: shape set, everything empty, mask all zero");
        tap_ok(v.motor && strcmp(v.units, "um") == 0 && v.step_x == 0.5 && v.step_y == 0.25 &&
                       v.rescan_step_x == 0.25 && v.rescan_step_y == 0.125,
               "motor grid: units, step, rescan step = step / factor");
        roid_feedback_free(fb);
        roid_scan_grid_default(&g);
        g.ny = 3, g.nx = 4;
        fb = new_fb(&g, 0, 2, 8, 100);
        roid_feedback_get(fb, &v);
        tap_ok(!v.motor && v.units[0] == 0 && v.step_x == 1 && v.step_y == 1, "default grid: grid indices");
        roid_feedback_free(fb);
}

/* One disk, full raster; border 0, grown by 2, shrunk by 2. */
static void test_boxes_one(void) {
        scene s = {.ny = 36, .nx = 40, .nd = 1, .d = {{17, 21, 6}}, .spike = -1};
        roid_roi *r = new_roi(&s, 0);
        observe(r, &s, 0, s.ny);
        check_online(r, &s, s.ny, "one disk");
        roid_scan_grid g = motor_grid(s.ny, s.nx);
        size_t np = (size_t)s.ny * s.nx;
        uint8_t *want = malloc(np);
        int borders[] = {0, 2, -2};
        for (int b = 0; b < 3; b++) {
                char what[64];
                snprintf(what, sizeof what, "one disk, border %d", borders[b]);
                roid_feedback *fb = new_fb(&g, borders[b], 2, 16, (size_t)1 << 20);
                tap_eq_i64(roid_feedback_update(fb, r, false), 0, "update");
                roid_feedback_view v;
                roid_feedback_get(fb, &v);
                morph_bf(roid_roi_online_mask(r), want, s.ny, s.nx, borders[b]);
                tap_ok(memcmp(v.mask, want, np) == 0, "%s: mask is the brute-force grown / shrunk disk", what);
                check_boxes(&v, &g, want, 64, what);
                if (borders[b] >= 0 && v.n_boxes == 1) {
                        /* the disk's own bounding box: radius 6 reaches exactly 6 rows and columns out */
                        uint32_t e = 6 + (uint32_t)borders[b];
                        const roid_fb_box *x = &v.boxes[0];
                        tap_ok(x->row0 == 17 - e && x->row1 == 17 + e && x->col0 == 21 - e && x->col1 == 21 + e &&
                                       fabs(x->x0 - (10 + 0.5 * (21 - e))) < 1e-12 &&
                                       fabs(x->y1 - (-5 + 0.25 * (17 + e))) < 1e-12,
                               "%s: box = disk bounding box +- %u, in grid and motor coordinates", what, e);
                } else if (v.n_boxes == 1) {
                        const roid_fb_box *x = &v.boxes[0];
                        tap_ok(x->row0 > 17 - 6 && x->row1 < 17 + 6 && x->col0 > 21 - 6 && x->col1 < 21 + 6,
                               "%s: box lies strictly inside the disk's bounding box", what);
                }
                roid_feedback_free(fb);
        }
        free(want);
        roid_roi_free(r);
}

/* Separated disks: largest first (the small one comes first in scan order),
 * ties by scan order, at most max_boxes. */
static void test_boxes_many(void) {
        scene s = {.ny = 40, .nx = 44, .nd = 2, .d = {{7, 30, 3}, {26, 14, 6}}, .spike = -1};
        roid_roi *r = new_roi(&s, 0);
        observe(r, &s, 0, s.ny);
        check_online(r, &s, s.ny, "two disks");
        roid_scan_grid g = motor_grid(s.ny, s.nx);
        size_t np = (size_t)s.ny * s.nx;
        uint8_t *want = malloc(np);
        roid_feedback *fb = new_fb(&g, 1, 2, 16, (size_t)1 << 20);
        roid_feedback_update(fb, r, false);
        roid_feedback_view v;
        roid_feedback_get(fb, &v);
        morph_bf(roid_roi_online_mask(r), want, s.ny, s.nx, 1);
        check_boxes(&v, &g, want, 64, "two disks, border 1");
        tap_ok(v.n_boxes == 2 && v.boxes[0].row0 == 26 - 7 && v.boxes[1].row0 == 7 - 4 &&
                       v.boxes[0].points > v.boxes[1].points,
               "two disks: two boxes, the large disk (lower in the scan) first");
        roid_feedback_free(fb);
        roid_roi_free(r);

        /* Nine disks of three sizes, at most 4 boxes. */
        scene m = {.ny = 30, .nx = 30, .nd = 9, .spike = -1};
        double radius[9] = {1, 2.3, 1.5, 2.3, 1, 1.5, 2.3, 1.5, 1};
        for (unsigned k = 0; k < 9; k++)
                m.d[k] = (disk){4 + 10.0 * (k / 3), 4 + 10.0 * (k % 3), radius[k]};
        r = new_roi(&m, 0);
        observe(r, &m, 0, m.ny);
        check_online(r, &m, m.ny, "nine disks");
        g = motor_grid(m.ny, m.nx);
        roid_feedback_params p;
        roid_feedback_params_default(&p);
        p.max_boxes = 4;
        roid_err err;
        tap_eq_i64(roid_feedback_new(&p, &g, &fb, &err), 0, "new with max_boxes 4");
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        check_boxes(&v, &g, roid_roi_online_mask(r), 4, "nine disks, max_boxes 4");
        tap_ok(v.n_boxes == 4 && v.boxes[0].points == 21 && v.boxes[2].points == 21 && v.boxes[3].points == 9 &&
                       v.boxes[3].row0 == 3 && v.boxes[3].col0 == 23,
               "nine disks: the three 21-point disks, then the first 9-point one in scan order");
        roid_feedback_free(fb);
        roid_roi_free(r);
        free(want);
}

/* The fine lattice point by point: fine point (ky, kx) at grid position
 * ((k + 1/2) / f - 1/2), kept when its cell's grid point is in the mask. */
static size_t rescan_bf(const uint8_t *mask, const roid_scan_grid *g, double f, double *out) {
        size_t n = 0;
        for (uint32_t ky = 0;; ky++) {
                double u = (ky + 0.5) / f - 0.5;
                int64_t row = (int64_t)floor(u + 0.5);
                if (row >= g->ny)
                        break;
                for (uint32_t kx = 0;; kx++) {
                        double w = (kx + 0.5) / f - 0.5;
                        int64_t col = (int64_t)floor(w + 0.5);
                        if (col >= g->nx)
                                break;
                        if (!mask[row * g->nx + col])
                                continue;
                        out[2 * n] = g->origin_x + w * g->step_x;
                        out[2 * n + 1] = g->origin_y + u * g->step_y;
                        n++;
                }
        }
        return n;
}

static void test_rescan(void) {
        scene s = {.ny = 24, .nx = 28, .nd = 2, .d = {{8, 8, 4}, {15, 20, 3.5}}, .spike = -1};
        roid_roi *r = new_roi(&s, 0);
        observe(r, &s, 0, s.ny);
        check_online(r, &s, s.ny, "rescan scene");
        roid_scan_grid g = motor_grid(s.ny, s.nx);
        g.step_y = -0.25; /* a descending axis */
        size_t np = (size_t)s.ny * s.nx;
        double *want = malloc(np * 256 * 2 * sizeof *want);
        double factors[] = {1, 2, 3, 2.5, 2.25};
        for (int t = 0; t < 5; t++) {
                double f = factors[t];
                char what[64];
                snprintf(what, sizeof what, "rescan factor %g", f);
                roid_feedback *fb = new_fb(&g, 1, f, 0, (size_t)1 << 20);
                roid_feedback_update(fb, r, false);
                roid_feedback_view v;
                roid_feedback_get(fb, &v);
                size_t pts = count(v.mask, np);
                size_t n = rescan_bf(v.mask, &g, f, want);
                if (f == floor(f))
                        tap_eq_u64(v.n_rescan, pts * (size_t)(f * f), what);
                bool same = v.n_rescan == n && !v.rescan_truncated;
                for (size_t i = 0; same && i < n; i++)
                        same = fabs(v.rescan[2 * i] - want[2 * i]) < 1e-9 &&
                               fabs(v.rescan[2 * i + 1] - want[2 * i + 1]) < 1e-9;
                tap_ok(same, "%s: %zu points equal the brute-force lattice (%zu), row-major, not truncated", what,
                       v.n_rescan, n);
                /* every point inside a grown cell, on the step / f lattice, no duplicates, ordered */
                bool inside = true, lattice = true, order = true;
                int64_t prev_ky = -1, prev_kx = -1;
                size_t per_cell_min = SIZE_MAX, per_cell_max = 0;
                uint32_t *per = calloc(np, sizeof *per);
                for (size_t i = 0; i < v.n_rescan; i++) {
                        double u = (v.rescan[2 * i] - g.origin_x) / g.step_x;
                        double w = (v.rescan[2 * i + 1] - g.origin_y) / g.step_y;
                        int64_t col = (int64_t)floor(u + 0.5), row = (int64_t)floor(w + 0.5);
                        inside &= row >= 0 && col >= 0 && row < s.ny && col < s.nx && v.mask[row * s.nx + col];
                        double kx = (u + 0.5) * f - 0.5, ky = (w + 0.5) * f - 0.5;
                        lattice &= fabs(kx - round(kx)) < 1e-6 && fabs(ky - round(ky)) < 1e-6;
                        int64_t ikx = llround(kx), iky = llround(ky);
                        order &= iky > prev_ky || (iky == prev_ky && ikx > prev_kx);
                        prev_ky = iky, prev_kx = ikx;
                        if (inside)
                                per[row * s.nx + col]++;
                }
                for (size_t i = 0; i < np; i++) {
                        if (!v.mask[i])
                                continue;
                        per_cell_min = per[i] < per_cell_min ? per[i] : per_cell_min;
                        per_cell_max = per[i] > per_cell_max ? per[i] : per_cell_max;
                }
                free(per);
                size_t lo = (size_t)floor(f) * (size_t)floor(f), hi = (size_t)ceil(f) * (size_t)ceil(f);
                tap_ok(inside && lattice && order && per_cell_min >= lo && per_cell_max <= hi,
                       "%s: all points in grown cells, on the step/f lattice, strictly row-major (no duplicates), "
                       "%zu..%zu per cell",
                       what, per_cell_min, per_cell_max);
                tap_ok(fabs(v.rescan_step_x - 0.5 / f) < 1e-15 && fabs(v.rescan_step_y + 0.25 / f) < 1e-15,
                       "%s: rescan step = step / factor", what);
                roid_feedback_free(fb);
        }
        /* truncation: the first max_rescan points of the full list */
        roid_feedback *fb = new_fb(&g, 1, 2, 0, 50);
        roid_feedback_update(fb, r, false);
        roid_feedback_view v;
        roid_feedback_get(fb, &v);
        size_t n = rescan_bf(v.mask, &g, 2, want);
        bool prefix = v.n_rescan == 50 && v.rescan_truncated && n > 50;
        for (size_t i = 0; prefix && i < 50; i++)
                prefix = fabs(v.rescan[2 * i] - want[2 * i]) < 1e-9 &&
                         fabs(v.rescan[2 * i + 1] - want[2 * i + 1]) < 1e-9;
        tap_ok(prefix, "max_rescan 50: 50 points, truncated, the head of the full %zu-point list", n);
        roid_feedback_free(fb);
        fb = new_fb(&g, 1, 2, 0, n);
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        tap_ok(v.n_rescan == n && !v.rescan_truncated, "max_rescan = exactly the list: complete, not truncated");
        roid_feedback_free(fb);
        free(want);
        roid_roi_free(r);
}

static bool near_source(const roid_roi *r, size_t p, int64_t guard, bool final) {
        const uint8_t *src = final ? roid_roi_raw_mask(r) : roid_roi_online_mask(r);
        uint32_t nx = roid_roi_nx(r);
        size_t np = (size_t)roid_roi_ny(r) * nx;
        for (size_t q = 0; q < np; q++)
                if (src[q] && cheb(p, q, nx) <= guard)
                        return true;
        return false;
}

/* Partial raster: disk A in the first half, disk B below the scan front;
 * then the front reaches B.  Also the ranked next points on these states. */
static void test_skip_next(void) {
        /* A in the first half, B below it, C cut by the top and right edges */
        scene s = {.ny = 40,
                   .nx = 36,
                   .nd = 3,
                   .d = {{8, 10, 4}, {29, 24, 5}, {2, 34, 3}},
                   .spike = 14 * 36 + 28,
                   .has_weak = true,
                   .weak = 16 * 36 + 4};
        size_t np = (size_t)s.ny * s.nx;
        roid_scan_grid g = motor_grid(s.ny, s.nx);
        roid_roi *r = new_roi(&s, 1);
        roid_feedback *fb = new_fb(&g, 1, 2, ROID_FB_MAX_NEXT, (size_t)1 << 20);
        roid_feedback_view v;
        uint8_t *want = malloc(np);
        cand *cands = malloc(np * sizeof *cands);

        tap_eq_i64(roid_feedback_update(fb, r, false), 0, "update with no frame");
        roid_feedback_get(fb, &v);
        tap_ok(v.n_skip == 0 && v.n_boxes == 0 && v.n_next == 0 && v.n_rescan == 0 && v.frames == 0,
               "no frame yet: nothing skipped, no box, no next point");
        tap_ok(v.updates == 1 && v.unchanged == 0 && !v.stable, "first update: nothing to compare, unchanged 0");

        /* One row (in a state of its own): too few points for any cut to
         * stand out, so the empty mask says nothing about the rows ahead (the
         * old rule skipped two). */
        {
                roid_roi *r1 = new_roi(&s, 1);
                roid_feedback *fb1 = new_fb(&g, 1, 2, ROID_FB_MAX_NEXT, (size_t)1 << 20);
                observe(r1, &s, 0, 1);
                roid_feedback_update(fb1, r1, false);
                roid_feedback_get(fb1, &v);
                check_skip(&v, r1, 1, want, "first row");
                tap_ok(v.n_skip == 0 && v.frames > 0,
                       "first row (%llu frames): nothing labels yet, nothing skipped (%zu)",
                       (unsigned long long)v.frames, v.n_skip);
                for (int k = 0; k < 4; k++) /* more updates than stable_refits, the mask empty and unchanged */
                        roid_feedback_update(fb1, r1, false);
                roid_feedback_get(fb1, &v);
                tap_ok(!v.stable && v.unchanged == 0 && v.updates == 5,
                       "first row, 5 updates: an empty mask before anything labels is not stable (unchanged %u)",
                       v.unchanged);
                roid_feedback_free(fb1);
                roid_roi_free(r1);
        }

        observe(r, &s, 0, 20);
        check_online(r, &s, 20, "first half");
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        check_skip(&v, r, 1, want, "first half");
        bool front = v.n_skip == 2 * (size_t)s.nx;
        for (size_t k = 0; front && k < v.n_skip; k++)
                front = v.skip[k] / s.nx == 20 + k / s.nx;
        tap_ok(front, "first half: exactly the two rows past the front are skipped (%zu points)", v.n_skip);

        /* next: unmeasured neighbours of the RoI first: none yet (A is inside the measured half) */
        size_t nc = next_bf(r, cands);
        bool same = v.n_next == (nc < ROID_FB_MAX_NEXT ? nc : ROID_FB_MAX_NEXT);
        for (size_t k = 0; same && k < v.n_next; k++)
                same = v.next[k].row * s.nx + v.next[k].col == cands[k].idx &&
                       fabs(v.next[k].score - cands[k].score) < 1e-12 &&
                       fabs(v.next[k].x - (10 + 0.5 * v.next[k].col)) < 1e-12 &&
                       fabs(v.next[k].y - (-5 + 0.25 * v.next[k].row)) < 1e-12;
        tap_ok(same, "first half: next (%zu) equals the brute-force ranking (%zu candidates)", v.n_next, nc);
        const double *com = roid_roi_raw_map(r, 1);
        bool spike_last =
                v.n_next > 0 && v.next[v.n_next - 1].row * s.nx + v.next[v.n_next - 1].col == (uint32_t)s.spike;
        tap_ok(spike_last && com[s.spike] >= ROID_FB_STRONG_COM && !roid_roi_online_mask(r)[s.spike],
               "first half: the lone strong-CoM point (z = %.2f, outside the RoI) is ranked, after the boundary",
               com[s.spike]);
        bool weak_out = true;
        for (size_t k = 0; k < v.n_next; k++)
                weak_out &= v.next[k].row * s.nx + v.next[k].col != s.weak;
        tap_ok(weak_out && com[s.weak] > 2 && com[s.weak] < ROID_FB_STRONG_COM && !roid_roi_online_mask(r)[s.weak],
               "first half: a lone moderate-CoM point (z = %.2f < %g) is not ranked", com[s.weak], ROID_FB_STRONG_COM);

        /* the front reaches disk B (its top two rows measured) */
        observe(r, &s, 20, 26);
        check_online(r, &s, 26, "front at disk B");
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        check_skip(&v, r, 1, want, "front at disk B");
        bool guard_kept = true;
        size_t in_front = 0;
        for (size_t k = 0; k < v.n_skip; k++) {
                guard_kept &= !near_source(r, v.skip[k], 2, false);
                in_front += v.skip[k] / s.nx == 26 || v.skip[k] / s.nx == 27;
        }
        tap_ok(guard_kept && in_front == v.n_skip && v.n_skip > 0,
               "front at disk B: %zu skipped, all in the two rows past the front, none within 2 steps of the RoI",
               v.n_skip);
        bool around_b = true;
        for (uint32_t y = 26; y < 28; y++)
                for (uint32_t x = 24 - 5; x <= 24 + 5; x++)
                        for (size_t k = 0; k < v.n_skip; k++)
                                around_b &= v.skip[k] != y * s.nx + x;
        tap_ok(around_b,
               "front at disk B: rows 26-27 within 2 steps of B's visible part (cols 19..29) are not skipped");

        nc = next_bf(r, cands);
        same = v.n_next == (nc < ROID_FB_MAX_NEXT ? nc : ROID_FB_MAX_NEXT);
        for (size_t k = 0; same && k < v.n_next; k++)
                same = v.next[k].row * s.nx + v.next[k].col == cands[k].idx &&
                       fabs(v.next[k].score - cands[k].score) < 1e-12;
        tap_ok(same, "front at disk B: next (%zu) equals the brute-force ranking", v.n_next);
        const uint32_t *cnt = roid_roi_counts(r);
        size_t n_unmeasured_first = 0;
        while (n_unmeasured_first < v.n_next &&
               !cnt[v.next[n_unmeasured_first].row * s.nx + v.next[n_unmeasured_first].col])
                n_unmeasured_first++;
        bool rest_measured = true;
        for (size_t k = n_unmeasured_first; k < v.n_next; k++)
                rest_measured &= cnt[v.next[k].row * s.nx + v.next[k].col] > 0;
        /* B's measured row 25 spans cols 21..27, so row 26 cols 20..28 touch it */
        tap_ok(n_unmeasured_first == 9 && rest_measured && v.next[0].row == 26 && v.next[0].score > 2,
               "front at disk B: the 9 unmeasured neighbours of B come first (%zu), then measured points",
               n_unmeasured_first);

        roid_fb_point out[16];
        size_t ns[] = {0, 3, 16};
        for (int t = 0; t < 3; t++) {
                size_t k = roid_feedback_suggest(fb, ns[t], out);
                bool eq = k == (ns[t] < v.n_next ? ns[t] : v.n_next);
                for (size_t j = 0; eq && j < k; j++)
                        eq = out[j].row == v.next[j].row && out[j].col == v.next[j].col &&
                             out[j].score == v.next[j].score && out[j].x == v.next[j].x;
                tap_ok(eq, "suggest(%zu): %zu points, the head of next", ns[t], k);
        }
        roid_feedback_free(fb);
        fb = new_fb(&g, 1, 2, 5, (size_t)1 << 20);
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        size_t k = roid_feedback_suggest(fb, 16, out);
        bool eq = v.n_next == 5 && k == 5;
        for (size_t j = 0; eq && j < k; j++)
                eq = out[j].row * s.nx + out[j].col == cands[j].idx;
        tap_ok(eq, "next_points 5: suggest(16) gives the 5 best of the brute-force ranking");
        roid_feedback_free(fb);

        /* The scan stops here: the final RoI (border 1) with a wider feedback
         * border of 3 keeps a guard of 4 steps around the unbordered RoI. */
        roid_roi_finish(r);
        fb = new_fb(&g, 3, 2, 8, (size_t)1 << 20);
        tap_eq_i64(roid_feedback_update(fb, r, true), 0, "final update of the partial scan");
        roid_feedback_get(fb, &v);
        check_skip(&v, r, 3, want, "partial scan, final, border 3");
        guard_kept = true;
        bool beyond = false;
        for (size_t k = 0; k < v.n_skip; k++) {
                guard_kept &= !near_source(r, v.skip[k], 4, true);
                beyond |= near_source(r, v.skip[k], 5, true);
        }
        tap_ok(v.final && memcmp(v.mask, roid_roi_mask(r), np) == 0, "partial scan, final: the final mask is used");
        tap_ok(guard_kept && beyond,
               "partial scan, final, border 3: %zu skipped, none within 4 steps of the RoI, some at 5", v.n_skip);
        roid_feedback_free(fb);

        free(cands);
        free(want);
        roid_roi_free(r);
}

/* Stability over repeated updates; final update; grid mismatch. */
static void test_stable_final(void) {
        scene s = {.ny = 30, .nx = 32, .nd = 1, .d = {{14, 15, 5}}, .spike = -1};
        size_t np = (size_t)s.ny * s.nx;
        roid_scan_grid g = motor_grid(s.ny, s.nx);
        roid_roi *r = new_roi(&s, 2);
        observe(r, &s, 0, s.ny);
        check_online(r, &s, s.ny, "stable scene");
        roid_feedback_params p;
        roid_feedback_params_default(&p);
        p.border = 2;
        p.stable_refits = 3;
        roid_feedback *fb;
        roid_err err;
        roid_feedback_new(&p, &g, &fb, &err);
        roid_feedback_view v;
        bool seq = true;
        for (unsigned u = 0; u < 5; u++) {
                roid_feedback_update(fb, r, false);
                roid_feedback_get(fb, &v);
                seq &= v.updates == u + 1 && v.unchanged == u && v.stable == (u >= 3) && !v.final;
                if (!seq)
                        tap_diag("update %u: updates %llu unchanged %u stable %d", u, (unsigned long long)v.updates,
                                 v.unchanged, v.stable);
        }
        tap_ok(seq, "identical updates: unchanged 0,1,2,3,4, stable from the 4th (3 unchanged refits)");

        /* a new scattering point far from the disk changes the mask */
        roid_features f;
        scene other = s;
        other.d[0] = (disk){3, 28, 1};
        features(&other, 3, 28, &f);
        int lab = roid_roi_add(r, 3, 28, &f);
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        tap_ok(lab == 1 && v.unchanged == 0 && !v.stable && v.n_boxes == 2,
               "a new RoI point: the mask changes, unchanged 0, not stable, a second box");
        roid_feedback_update(fb, r, false);
        roid_feedback_get(fb, &v);
        tap_ok(v.unchanged == 1 && !v.stable, "then unchanged 1");

        /* final */
        uint64_t before = v.updates;
        tap_eq_i64(roid_feedback_update(fb, r, true), -EINVAL, "final update before roid_roi_finish");
        roid_feedback_get(fb, &v);
        tap_ok(v.updates == before && !v.final, "failed update leaves the state untouched");
        roid_roi_finish(r);
        tap_eq_i64(roid_feedback_update(fb, r, true), 0, "final update");
        roid_feedback_get(fb, &v);
        const uint8_t *fm = roid_roi_mask(r);
        tap_ok(v.final && memcmp(v.mask, fm, np) == 0 && v.frames == roid_roi_frames(r),
               "final: the mask is roid_roi_mask (%zu points), final = true", count(fm, np));
        check_boxes(&v, &g, fm, 64, "final");
        uint8_t *want = malloc(np);
        skip_bf(roid_roi_raw_mask(r), fm, roid_roi_counts(r), s.ny, s.nx, 2, want);
        tap_ok(v.n_skip == 0 && count(want, np) == 0, "final, full raster: nothing skipped (%zu)", v.n_skip);
        free(want);

        /* grid mismatch */
        roid_scan_grid t = motor_grid(s.nx, s.ny);
        roid_feedback *fb2 = new_fb(&t, 0, 2, 8, 100);
        tap_eq_i64(roid_feedback_update(fb2, r, false), -EINVAL, "RoI state of another grid shape");
        roid_feedback_get(fb2, &v);
        tap_ok(v.updates == 0, "mismatched update leaves the feedback untouched");
        roid_feedback_free(fb2);
        roid_feedback_free(fb);
        roid_roi_free(r);
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

/* roid_feedback_state_bytes is what roid_feedback_new allocates, by malloc's
 * own account (the daemon counts it against max_analysis_bytes): grids
 * whose rescan lattice is below and above max_rescan, factors 1, 1.5 and 4. */
static void test_state_bytes(void) {
        static const struct {
                uint32_t ny, nx;
                double f;
                size_t max_rescan;
        } cases[] = {{40, 50, 1, 1u << 20}, {300, 200, 1.5, 1u << 20}, {1000, 1000, 4, 1u << 20}, {64, 64, 2, 100}};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
                roid_feedback_params p;
                roid_feedback_params_default(&p);
                p.rescan_factor = cases[i].f;
                p.max_rescan = cases[i].max_rescan;
                const roid_scan_grid g = {.ny = cases[i].ny, .nx = cases[i].nx, .step_x = 1, .step_y = 1};
                const uint64_t want = roid_feedback_state_bytes(&p, &g);
                /* independently: 13 bytes a point, the rescan lattice (2 doubles a fine point, capped) */
                const uint64_t fine =
                        (uint64_t)ceil(cases[i].ny * cases[i].f - 0.5) * ceil(cases[i].nx * cases[i].f - 0.5);
                const uint64_t lattice = fine < p.max_rescan ? fine : p.max_rescan;
                const uint64_t floor_bytes = (uint64_t)cases[i].ny * cases[i].nx * 13 + lattice * 16;
                tap_ok(want >= floor_bytes && want <= floor_bytes + 64 * 1024,
                       "%u x %u, f %g: state_bytes %llu is 13 B a point + 16 B a rescan point (%llu) + small lists",
                       g.ny, g.nx, p.rescan_factor, (unsigned long long)want, (unsigned long long)floor_bytes);
                const struct mallinfo2 m0 = mallinfo2();
                roid_feedback *fb = NULL;
                roid_err err = {{0}};
                int e = roid_feedback_new(&p, &g, &fb, &err);
                const struct mallinfo2 m1 = mallinfo2();
                const size_t used = (m1.uordblks + m1.hblkhd) - (m0.uordblks + m0.hblkhd);
                if (!tap_ok(e == 0, "%u x %u: created (%s)", g.ny, g.nx, err.msg))
                        continue;
                if (!UNDER_ASAN) /* malloc rounds large blocks up to pages */
                        tap_ok(used >= want && used <= want + 64 * 1024,
                               "%u x %u, f %g: state_bytes %llu is what new allocates (%zu)", g.ny, g.nx,
                               p.rescan_factor, (unsigned long long)want, used);
                roid_feedback_free(fb);
        }
}

int main(void) {
        test_state_bytes();
        test_params();
        test_boxes_one();
        test_boxes_many();
        test_rescan();
        test_skip_next();
        test_stable_final();
        return tap_done();
}
