/* test_features.c - roid's per-frame features against an independent numpy
 * implementation (tests/py/features_ref.py) on simulated diffraction frames,
 * the geometry and every kernel (AVX2 and portable) against a brute-force
 * per-pixel classification and exact sums, the beam-centre estimator and
 * parameter validation.  Speed is measured by
 * tools/bench, not here. */
#include "tap.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "features/features.h"

/* ---- simulation ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd_u64(void) {
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return z ^ (z >> 31);
}

static double rnd_unit(void) {
        return (double)(rnd_u64() >> 11) * 0x1.0p-53;
}

static double rnd_normal(void) {
        double u = rnd_unit(), v = rnd_unit();
        return sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v);
}

static double rnd_poisson(double lam) {
        if (lam <= 0)
                return 0;
        if (lam < 30) {
                double l = exp(-lam), p = 1;
                int k = -1;
                do {
                        k++;
                        p *= rnd_unit();
                } while (p > l);
                return k;
        }
        double k = floor(lam + sqrt(lam) * rnd_normal() + 0.5);
        return k < 0 ? 0 : k;
}

typedef struct {
        double bx, by; /* where the beam really is */
        double radius; /* bright-field disk */
        double peak;   /* counts per pixel inside the disk */
        double halo;   /* diffuse scattering amplitude */
        double streak; /* anisotropic streak amplitude */
        double streak_ang;
        double bg;
        int n_hot_max; /* pixels forced to the dtype maximum (detector flags) */
} sim;

static uint64_t dtype_maxv(roid_dtype t) {
        return t == ROID_DT_U8 ? 255 : t == ROID_DT_U16 ? 65535 : 4294967295u;
}

static void put(void *buf, roid_dtype t, size_t i, uint64_t v) {
        if (t == ROID_DT_U8)
                ((uint8_t *)buf)[i] = (uint8_t)v;
        else if (t == ROID_DT_U16)
                ((uint16_t *)buf)[i] = (uint16_t)v;
        else
                ((uint32_t *)buf)[i] = (uint32_t)v;
}

/* A bright-field disk with a soft edge, a diffuse halo and a streak, Poisson
 * noise, clipped at the dtype maximum as the detector saturates. */
static void *simulate(roid_dtype t, uint32_t rows, uint32_t cols, const sim *s) {
        size_t n = (size_t)rows * cols;
        void *buf = calloc(n, roid_dtype_size(t));
        uint64_t maxv = dtype_maxv(t);
        double ca = cos(s->streak_ang), sa = sin(s->streak_ang);
        for (uint32_t y = 0; y < rows; y++)
                for (uint32_t x = 0; x < cols; x++) {
                        double dx = x - s->bx, dy = y - s->by, r = sqrt(dx * dx + dy * dy);
                        double along = dx * ca + dy * sa, across = -dx * sa + dy * ca;
                        double lam = s->peak / (1 + exp((r - s->radius) / 0.7)) + s->halo * exp(-r / 15.0) +
                                     s->streak * exp(-across * across / 8.0) * (along > 0 ? exp(-along / 60.0) : 0) +
                                     s->bg;
                        double k = rnd_poisson(lam);
                        put(buf, t, (size_t)y * cols + x, k >= (double)maxv ? maxv : (uint64_t)k);
                }
        for (int i = 0; i < s->n_hot_max; i++)
                put(buf, t, rnd_u64() % n, maxv);
        return buf;
}

/* EIGER-like pixel mask: a 2-pixel gap column, a 2-pixel gap row (bit 0), a
 * few dead and hot pixels (bits 1, 3). */
static uint32_t *make_mask(uint32_t rows, uint32_t cols) {
        uint32_t *m = calloc((size_t)rows * cols, sizeof *m);
        uint32_t gc = cols / 3, gr = rows * 2 / 3;
        for (uint32_t y = 0; y < rows; y++)
                for (uint32_t x = 0; x < cols; x++)
                        if (x == gc || x == gc + 1 || y == gr || y == gr + 1)
                                m[(size_t)y * cols + x] |= 1;
        for (int i = 0; i < 12; i++)
                m[rnd_u64() % ((size_t)rows * cols)] |= (i & 1) ? 2 : 8;
        return m;
}

/* ---- cases against numpy ---- */

typedef struct {
        char name[32];
        roid_geometry_params p;
        roid_frame f;
        void *pixels;
        uint32_t *mask;
        roid_features got;
        int rc;
        uint64_t seg_pixels[ROID_MAX_SEGMENTS];
        uint64_t static_masked;
} tcase;

#define MAX_CASES 64
static tcase cases[MAX_CASES];
static int n_cases;
static char tmpdir[256];

static tcase *add_case(const char *name, roid_dtype t, uint32_t rows, uint32_t cols, double cx, double cy,
                       unsigned nseg, double rbf, double rin, double rout, void *pixels, uint32_t *mask) {
        tcase *c = &cases[n_cases++];
        snprintf(c->name, sizeof c->name, "%s", name);
        roid_geometry_params_default(&c->p);
        c->p.rows = rows;
        c->p.cols = cols;
        c->p.dtype = t;
        c->p.center_x = cx;
        c->p.center_y = cy;
        c->p.n_segments = nseg;
        c->p.r_bf = rbf;
        c->p.r_df_in = rin;
        c->p.r_df_out = rout;
        c->p.mask = mask;
        c->pixels = pixels;
        c->mask = mask;
        c->f = (roid_frame){.dtype = t, .rows = rows, .cols = cols, .pixels = pixels};
        roid_geometry g;
        roid_err err = {{0}};
        c->rc = roid_geometry_init(&g, &c->p, &err);
        if (c->rc < 0) {
                tap_diag("%s: geometry: %s", name, err.msg);
                return c;
        }
        c->rc = roid_features_compute(&g, &c->f, &c->got, &err);
        memcpy(c->seg_pixels, g.seg_pixels, sizeof c->seg_pixels);
        c->static_masked = g.n_static_masked;
        roid_geometry_free(&g);
        return c;
}

static int write_file(const char *path, const void *data, size_t size) {
        FILE *f = fopen(path, "wb");
        if (!f)
                return -1;
        size_t w = fwrite(data, 1, size, f);
        return fclose(f) == 0 && w == size ? 0 : -1;
}

static int write_cases(void) {
        char path[512];
        snprintf(path, sizeof path, "%s/manifest.txt", tmpdir);
        FILE *m = fopen(path, "w");
        if (!m)
                return -1;
        for (int i = 0; i < n_cases; i++) {
                tcase *c = &cases[i];
                size_t n = (size_t)c->p.rows * c->p.cols;
                fprintf(m, "%s %s %u %u %.17g %.17g %u %.17g %.17g %.17g %d\n", c->name, roid_dtype_name(c->p.dtype),
                        c->p.rows, c->p.cols, c->p.center_x, c->p.center_y, c->p.n_segments, c->p.r_bf, c->p.r_df_in,
                        c->p.r_df_out, c->mask != NULL);
                snprintf(path, sizeof path, "%.255s/%.31s.frame", tmpdir, c->name);
                if (write_file(path, c->pixels, n * roid_dtype_size(c->p.dtype)) < 0)
                        return -1;
                if (c->mask) {
                        snprintf(path, sizeof path, "%.255s/%.31s.mask", tmpdir, c->name);
                        if (write_file(path, c->mask, n * 4) < 0)
                                return -1;
                }
        }
        return fclose(m);
}

typedef struct {
        int n_checked, n_bad;
        const char *name;
} cmp;

static void cmp_u64(cmp *k, const char *what, uint64_t got, const char *ref) {
        uint64_t want = strtoull(ref, NULL, 10);
        k->n_checked++;
        if (got != want) {
                if (k->n_bad++ < 5)
                        tap_diag("%s: %s got %" PRIu64 " want %" PRIu64, k->name, what, got, want);
        }
}

static void cmp_dbl(cmp *k, const char *what, double got, const char *ref) {
        double want = strtod(ref, NULL);
        k->n_checked++;
        if (!(fabs(got - want) <= 1e-9 * fabs(want) || got == want)) {
                if (k->n_bad++ < 5)
                        tap_diag("%s: %s got %.17g want %.17g", k->name, what, got, want);
        }
}

static void check_case(tcase *c) {
        char path[512], line[256];
        snprintf(path, sizeof path, "%.255s/%.31s.ref", tmpdir, c->name);
        FILE *f = fopen(path, "r");
        if (!tap_ok(f != NULL && c->rc == 0, "%s: roid rc %d, numpy reference present", c->name, c->rc)) {
                if (f)
                        fclose(f);
                return;
        }
        cmp k = {0, 0, c->name};
        const roid_features *g = &c->got;
        while (fgets(line, sizeof line, f)) {
                char key[64], val[128];
                unsigned s;
                char what[16];
                if (sscanf(line, "%63s %127s", key, val) != 2)
                        continue;
                if (!strcmp(key, "total")) {
                        cmp_u64(&k, key, g->total_u64, val);
                        cmp_dbl(&k, "total(double)", g->total, val);
                } else if (!strcmp(key, "com_x")) {
                        cmp_dbl(&k, key, g->com_x, val);
                } else if (!strcmp(key, "com_y")) {
                        cmp_dbl(&k, key, g->com_y, val);
                } else if (!strcmp(key, "bf")) {
                        cmp_u64(&k, key, g->bf_u64, val);
                        cmp_dbl(&k, "bf(double)", g->bf, val);
                } else if (!strcmp(key, "df")) {
                        cmp_u64(&k, key, g->df_u64, val);
                        cmp_dbl(&k, "df(double)", g->df, val);
                } else if (!strcmp(key, "masked")) {
                        cmp_u64(&k, key, g->masked, val);
                } else if (!strcmp(key, "saturated")) {
                        cmp_u64(&k, key, g->saturated, val);
                } else if (!strcmp(key, "n_pixels")) {
                        cmp_u64(&k, key, g->n_pixels, val);
                } else if (!strcmp(key, "static_masked")) {
                        cmp_u64(&k, key, c->static_masked, val);
                } else if (sscanf(key, "seg%u_%15s", &s, what) == 2 && s < g->n_segments) {
                        if (!strcmp(what, "sum"))
                                cmp_u64(&k, key, g->seg[s].sum_u64, val);
                        else if (!strcmp(what, "com_x"))
                                cmp_dbl(&k, key, g->seg[s].com_x, val);
                        else if (!strcmp(what, "com_y"))
                                cmp_dbl(&k, key, g->seg[s].com_y, val);
                        else if (!strcmp(what, "pixels"))
                                cmp_u64(&k, key, c->seg_pixels[s], val);
                } else {
                        k.n_bad++;
                        tap_diag("%s: unexpected reference line %s", c->name, line);
                }
        }
        fclose(f);
        int want_n = 12 + 4 * (int)c->p.n_segments;
        tap_ok(k.n_bad == 0 && k.n_checked == want_n, "%s (%s %ux%u S=%u): %d features match numpy at 1e-9 (%d bad)",
               c->name, roid_dtype_name(c->p.dtype), c->p.rows, c->p.cols, c->p.n_segments, k.n_checked, k.n_bad);
}

static void numpy_cases(void) {
        const char *src = getenv("ROID_SRC");
        if (!src) {
                tap_skip("ROID_SRC not set: cannot find tests/py/features_ref.py");
                return;
        }
        const char *tmp = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/roid-features-XXXXXX", tmp ? tmp : "/tmp");
        if (!tap_ok(mkdtemp(tmpdir) != NULL, "temporary directory %s", tmpdir))
                return;

        sim s = {.bx = 49.3,
                 .by = 45.8,
                 .radius = 11,
                 .peak = 3000,
                 .halo = 400,
                 .streak = 150,
                 .streak_ang = 0.7,
                 .bg = 2,
                 .n_hot_max = 5};
        /* 96 x 96 uint16, beam off the geometry's centre, mask, all S */
        void *f96 = simulate(ROID_DT_U16, 96, 96, &s);
        uint32_t *m96 = make_mask(96, 96);
        const unsigned segs[] = {1, 4, 8, 16, 24, 40};
        for (unsigned i = 0; i < 6; i++) {
                char name[32];
                snprintf(name, sizeof name, "u16_96_S%u", segs[i]);
                add_case(name, ROID_DT_U16, 96, 96, 47.37, 46.81, segs[i], 11, 11, 40, f96, m96);
        }
        /* odd shape, all three dtypes; uint8 saturates in the disk */
        sim so = s;
        so.bx = 70.2, so.by = 60.9, so.radius = 14, so.peak = 400, so.halo = 60, so.streak = 40, so.bg = 1;
        void *f8 = simulate(ROID_DT_U8, 127, 131, &so);
        uint32_t *m127 = make_mask(127, 131);
        for (unsigned i = 0; i < 6; i++) {
                char name[32];
                snprintf(name, sizeof name, "u8_127_S%u", segs[i]);
                add_case(name, ROID_DT_U8, 127, 131, 69.61, 61.27, segs[i], 14, 16, INFINITY, f8, m127);
        }
        sim s32 = so;
        s32.peak = 3.5e9, s32.halo = 2e8, s32.streak = 5e7, s32.bg = 1e5, s32.n_hot_max = 7;
        void *f32 = simulate(ROID_DT_U32, 127, 131, &s32);
        for (unsigned i = 0; i < 6; i++) {
                char name[32];
                snprintf(name, sizeof name, "u32_127_S%u", segs[i]);
                add_case(name, ROID_DT_U32, 127, 131, 69.61, 61.27, segs[i], 13.5, 13.5, 60, f32, i & 1 ? m127 : NULL);
        }
        void *f16o = simulate(ROID_DT_U16, 127, 131, &so);
        add_case("u16_127_S8", ROID_DT_U16, 127, 131, 69.61, 61.27, 8, 14, 14, 50, f16o, m127);
        /* EIGER 500K-like */
        sim se = {.bx = 515.4,
                  .by = 260.7,
                  .radius = 25,
                  .peak = 20000,
                  .halo = 2000,
                  .streak = 300,
                  .streak_ang = 2.2,
                  .bg = 3,
                  .n_hot_max = 20};
        void *fe16 = simulate(ROID_DT_U16, 512, 1028, &se);
        uint32_t *me = make_mask(512, 1028);
        add_case("u16_512x1028_S8", ROID_DT_U16, 512, 1028, 514.03, 257.71, 8, 25, 25, 200, fe16, me);
        add_case("u16_512x1028_S40", ROID_DT_U16, 512, 1028, 514.03, 257.71, 40, 25, 25, 200, fe16, me);
        se.peak = 2e9, se.halo = 2e8, se.streak = 3e7, se.bg = 50;
        void *fe32 = simulate(ROID_DT_U32, 512, 1028, &se);
        add_case("u32_512x1028_S24", ROID_DT_U32, 512, 1028, 514.03, 257.71, 24, 25, 30, 300, fe32, me);
        se.peak = 200, se.halo = 30, se.streak = 10, se.bg = 0.5;
        void *fe8 = simulate(ROID_DT_U8, 512, 1028, &se);
        add_case("u8_512x1028_S16", ROID_DT_U8, 512, 1028, 514.03, 257.71, 16, 25, 25, 0, fe8, me);
        /* integer beam centre: pixels on the axes and diagonals */
        sim si = s;
        si.bx = 64, si.by = 64;
        void *fi = simulate(ROID_DT_U16, 128, 128, &si);
        for (unsigned i = 1; i < 6; i++) {
                char name[32];
                snprintf(name, sizeof name, "u16_int_S%u", segs[i]);
                add_case(name, ROID_DT_U16, 128, 128, 64, 64, segs[i], 10, 10, 30, fi, NULL);
        }
        add_case("u16_halfint_S8", ROID_DT_U16, 128, 128, 63.5, 64.5, 8, 10, 10, 30, fi, NULL);
        /* beam centre outside the frame */
        add_case("u16_outside_S8", ROID_DT_U16, 96, 96, -20.5, 130.25, 8, 50, 50, 120, f96, m96);
        /* empty frame, all-saturated frame */
        void *zero = calloc(96 * 96, 2);
        add_case("u16_empty_S8", ROID_DT_U16, 96, 96, 47.37, 46.81, 8, 11, 11, 40, zero, m96);
        uint16_t *full = malloc(96 * 96 * 2);
        for (int i = 0; i < 96 * 96; i++)
                full[i] = 65535;
        add_case("u16_saturated_S8", ROID_DT_U16, 96, 96, 47.37, 46.81, 8, 11, 11, 40, full, m96);
        /* every pixel masked */
        uint32_t *all = malloc(96 * 96 * 4);
        for (int i = 0; i < 96 * 96; i++)
                all[i] = 1;
        add_case("u16_allmasked_S4", ROID_DT_U16, 96, 96, 47.37, 46.81, 4, 11, 11, 40, f96, all);
        /* one row, one column */
        add_case("u16_row_S8", ROID_DT_U16, 1, 96 * 96, 4000.5, 0.25, 8, 500, 500, 3000, f96, NULL);
        add_case("u16_col_S8", ROID_DT_U16, 96 * 96, 1, 0.3, 4000.5, 8, 500, 500, 3000, f96, NULL);

        /* the conventions seen directly, without numpy */
        tcase *e = &cases[n_cases - 5];
        tap_ok(e->got.total_u64 == 0 && e->got.com_x == 47.37 && e->got.com_y == 46.81 &&
                       e->got.seg[3].com_x == 47.37 && e->got.seg[3].com_y == 46.81,
               "empty frame: T = 0, CoM and segment CoM at the beam centre");
        tcase *sat = &cases[n_cases - 4];
        tap_ok(sat->got.total_u64 == 0 && sat->got.masked == 96 * 96 && sat->got.n_pixels == 0 &&
                       sat->got.saturated == 96 * 96 - sat->static_masked,
               "all-saturated frame: every pixel excluded (%" PRIu64 " saturated, %" PRIu64 " masked)",
               sat->got.saturated, sat->got.masked);

        int r = write_cases();
        if (!tap_ok(r == 0, "wrote %d cases to %s", n_cases, tmpdir))
                return;
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/py/features_ref.py %s", src, tmpdir);
        r = system(cmd);
        if (tap_ok(r == 0, "numpy reference ran (status %d)", r))
                for (int i = 0; i < n_cases; i++)
                        check_case(&cases[i]);
        if (!getenv("ROID_KEEP_TMP")) {
                snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
                if (system(cmd) != 0)
                        tap_diag("could not remove %s", tmpdir);
        }
        free(f96), free(m96), free(f8), free(m127), free(f32), free(f16o), free(fe16), free(me), free(fe32);
        free(fe8), free(fi), free(zero), free(full), free(all);
}

/* ---- the kernel against a plain scalar loop on many random runs ---- */

/* Runs starting and ending anywhere, at every dtype, near the end of the
 * buffer (the tail path that must not read past the frame), values near the
 * maximum. */
static void random_shapes(roid_simd_level simd) {
        int bad = 0, n = 0;
        roid_features_use_simd(simd);
        for (int trial = 0; trial < 300; trial++) {
                roid_dtype t = (roid_dtype)(ROID_DT_U8 + trial % 3);
                uint32_t rows = 1 + rnd_u64() % 9, cols = 1 + rnd_u64() % 2100;
                size_t np = (size_t)rows * cols;
                uint64_t maxv = dtype_maxv(t);
                void *pix = malloc(np * roid_dtype_size(t));
                uint32_t *mask = malloc(np * 4);
                for (size_t i = 0; i < np; i++) {
                        uint64_t v = rnd_u64();
                        int k = (int)(v % 8);
                        put(pix, t, i, k == 0 ? maxv : k == 1 ? maxv - 1 : k == 2 ? 0 : (v >> 8) % (maxv + 1));
                        mask[i] = (rnd_u64() % 13 == 0);
                }
                roid_geometry_params p;
                roid_geometry_params_default(&p);
                p.rows = rows, p.cols = cols, p.dtype = t;
                p.center_x = rnd_unit() * cols, p.center_y = rnd_unit() * rows;
                p.n_segments = 1 + rnd_u64() % 40;
                p.r_bf = rnd_unit() * cols / 2, p.r_df_in = p.r_bf, p.r_df_out = p.r_bf * 2;
                p.mask = trial % 2 ? mask : NULL;
                roid_geometry g;
                roid_features ft;
                roid_frame fr = {.dtype = t, .rows = rows, .cols = cols, .pixels = pix};
                if (roid_geometry_init(&g, &p, NULL) < 0 || roid_features_compute(&g, &fr, &ft, NULL) < 0) {
                        bad++;
                        continue;
                }
                /* the other kernel must agree to the bit */
                roid_features other;
                roid_features_use_simd(simd == ROID_SIMD_NONE ? ROID_SIMD_BEST : ROID_SIMD_NONE);
                roid_features_compute(&g, &fr, &other, NULL);
                roid_features_use_simd(simd);
                if (memcmp(&other, &ft, sizeof ft) != 0 && bad++ < 5)
                        tap_diag("random %s %ux%u: SIMD and portable kernels differ", roid_dtype_name(t), rows, cols);
                /* scalar reference: totals and moments, long double is exact here */
                unsigned __int128 T = 0, SX = 0, SY = 0;
                uint64_t masked = 0;
                for (uint32_t y = 0; y < rows; y++)
                        for (uint32_t x = 0; x < cols; x++) {
                                size_t i = (size_t)y * cols + x;
                                uint64_t v = t == ROID_DT_U8    ? ((uint8_t *)pix)[i]
                                             : t == ROID_DT_U16 ? ((uint16_t *)pix)[i]
                                                                : ((uint32_t *)pix)[i];
                                if ((p.mask && mask[i]) || v == maxv) {
                                        masked++;
                                        continue;
                                }
                                T += v, SX += (unsigned __int128)v * x, SY += (unsigned __int128)v * y;
                        }
                n++;
                double cx = T ? (double)SX / (double)(uint64_t)T : p.center_x;
                double cy = T ? (double)SY / (double)(uint64_t)T : p.center_y;
                uint64_t segsum = 0;
                for (unsigned s = 0; s < ft.n_segments; s++)
                        segsum += ft.seg[s].sum_u64;
                if (ft.total_u64 != (uint64_t)T || ft.masked != masked || segsum != (uint64_t)T ||
                    fabs(ft.com_x - cx) > 1e-12 * fabs(cx) || fabs(ft.com_y - cy) > 1e-12 * fabs(cy)) {
                        if (bad++ < 5)
                                tap_diag("random %s %ux%u S=%u: T %" PRIu64 "/%" PRIu64 " masked %" PRIu64 "/%" PRIu64
                                         " com %.17g,%.17g / %.17g,%.17g",
                                         roid_dtype_name(t), rows, cols, p.n_segments, ft.total_u64, (uint64_t)T,
                                         ft.masked, masked, ft.com_x, ft.com_y, cx, cy);
                }
                roid_geometry_free(&g);
                free(pix);
                free(mask);
        }
        roid_features_use_simd(ROID_SIMD_BEST);
        tap_ok(bad == 0 && n == 300,
               "%s kernels, 300 random shapes and runs: T, masked, CoM equal a scalar loop (%d bad)",
               simd == ROID_SIMD_BEST   ? "SIMD"
               : simd == ROID_SIMD_AVX2 ? "AVX2 (no AVX-512)"
                                        : "portable",
               bad);
}

/* ---- geometry and features against a brute-force per-pixel classification ---- */

/* The convention of features.h, pixel by pixel: exact eighths of a turn on
 * the axes and diagonals, atan2 elsewhere. */
static unsigned ref_segment(double dx, double dy, unsigned S) {
        if (S == 1)
                return 0;
        int eighth = -1;
        if (dy == 0)
                eighth = dx >= 0 ? 0 : 4;
        else if (dx == 0)
                eighth = dy > 0 ? 2 : 6;
        else if (dx == dy)
                eighth = dx > 0 ? 1 : 5;
        else if (dx == -dy)
                eighth = dy > 0 ? 3 : 7;
        if (eighth >= 0)
                return (unsigned)eighth * S / 8;
        double t = atan2(dy, dx) / (2.0 * M_PI);
        if (t < 0)
                t += 1.0;
        const double s = floor(t * S);
        return s >= S ? S - 1 : (unsigned)s;
}

typedef unsigned __int128 u128;

typedef struct {
        uint64_t seg_pixels[ROID_MAX_SEGMENTS], bf_pixels, df_pixels, static_masked;
        uint64_t sum[ROID_MAX_SEGMENTS], bf, df, saturated;
        u128 sx[ROID_MAX_SEGMENTS], sy[ROID_MAX_SEGMENTS];
} brute;

static uint64_t pixel(const void *pix, roid_dtype t, size_t i) {
        return t == ROID_DT_U8    ? ((const uint8_t *)pix)[i]
               : t == ROID_DT_U16 ? ((const uint16_t *)pix)[i]
                                  : ((const uint32_t *)pix)[i];
}

/* Classification and sums, one pixel at a time, in exact integers. */
static void brute_force(const roid_geometry_params *p, const void *pix, brute *b) {
        memset(b, 0, sizeof *b);
        const uint64_t maxv = dtype_maxv(p->dtype);
        for (uint32_t y = 0; y < p->rows; y++)
                for (uint32_t x = 0; x < p->cols; x++) {
                        const size_t i = (size_t)y * p->cols + x;
                        if (p->mask && p->mask[i]) {
                                b->static_masked++;
                                continue;
                        }
                        const double dx = (double)x - p->center_x, dy = (double)y - p->center_y;
                        const double d2 = dx * dx + dy * dy;
                        const unsigned s = ref_segment(dx, dy, p->n_segments);
                        const bool bf = d2 < p->r_bf * p->r_bf;
                        const bool df = d2 >= p->r_df_in * p->r_df_in && d2 < p->r_df_out * p->r_df_out;
                        b->seg_pixels[s]++;
                        b->bf_pixels += bf;
                        b->df_pixels += df;
                        if (!pix)
                                continue;
                        const uint64_t v = pixel(pix, p->dtype, i);
                        if (v == maxv) {
                                b->saturated++;
                                continue;
                        }
                        b->sum[s] += v;
                        b->sx[s] += (u128)v * x;
                        b->sy[s] += (u128)v * y;
                        b->bf += bf ? v : 0;
                        b->df += df ? v : 0;
                }
}

static double com_of(u128 m, uint64_t sum, double centre) {
        return sum ? (double)m / (double)sum : centre;
}

/* Everything the features report, to the bit: the sums are exact integers
 * and each centre of mass is one rounded division. */
static int features_equal(const roid_features *ft, const roid_geometry_params *p, const brute *b) {
        uint64_t t = 0;
        u128 sx = 0, sy = 0;
        int bad = 0;
        for (unsigned s = 0; s < p->n_segments; s++) {
                t += b->sum[s], sx += b->sx[s], sy += b->sy[s];
                bad += ft->seg[s].sum_u64 != b->sum[s] || ft->seg[s].sum != (double)b->sum[s] ||
                       ft->seg[s].com_x != com_of(b->sx[s], b->sum[s], p->center_x) ||
                       ft->seg[s].com_y != com_of(b->sy[s], b->sum[s], p->center_y);
        }
        bad += ft->n_segments != p->n_segments || ft->total_u64 != t || ft->total != (double)t ||
               ft->com_x != com_of(sx, t, p->center_x) || ft->com_y != com_of(sy, t, p->center_y) ||
               ft->bf_u64 != b->bf || ft->df_u64 != b->df || ft->bf != (double)b->bf || ft->df != (double)b->df ||
               ft->saturated != b->saturated || ft->masked != b->static_masked + b->saturated ||
               ft->n_pixels != (uint64_t)p->rows * p->cols - ft->masked;
        return bad;
}

/* Several frames at once give, to the byte, what each gives alone: six
 * different frames (pix and index-scrambled copies of it, so that their
 * saturated pixels lie in different rows), a group of four and two alone,
 * each in a buffer of exactly its size, so that a lane taken from the wrong
 * frame or a read past a frame shows (the latter under ASan). */
static int check_many(const roid_geometry *g, const roid_geometry_params *p, const void *pix) {
        enum { NF = 6 };
        const size_t n = (size_t)p->rows * p->cols, es = roid_dtype_size(p->dtype);
        void *buf[NF];
        roid_frame f[NF];
        roid_features one[NF], many[NF];
        int bad = 0;
        for (size_t k = 0; k < NF; k++) {
                buf[k] = malloc(n * es);
                for (size_t i = 0; i < n; i++)
                        memcpy((char *)buf[k] + i * es, (const char *)pix + ((i * (2 * k + 1) + 31 * k) % n) * es, es);
                f[k] = (roid_frame){.dtype = p->dtype, .rows = p->rows, .cols = p->cols, .pixels = buf[k]};
                bad |= roid_features_compute(g, &f[k], &one[k], NULL) < 0;
        }
        bad |= roid_features_compute_many(g, NF, f, many, NULL) < 0;
        for (size_t k = 0; k < NF; k++)
                bad |= memcmp(&one[k], &many[k], sizeof one[k]) != 0;
        for (size_t k = 0; k < NF; k++)
                free(buf[k]);
        return bad;
}

/* Geometries check_many ran with blocks for the AVX-512 walk (short runs),
 * and without (uint16 frames of longer runs, which take the run walk). */
static int n_block_walk, n_run_walk;

/* Builds the geometry of p, compares its classification with the brute
 * force and, given a frame, the features of both kernels and of frames
 * taken several at once; 0 when equal. */
static int check_brute(const roid_geometry_params *p, const void *pix, const char *what) {
        roid_geometry g;
        roid_err err = {{0}};
        if (roid_geometry_init(&g, p, &err) < 0) {
                tap_diag("%s: geometry: %s", what, err.msg);
                return 1;
        }
        brute b;
        brute_force(p, pix, &b);
        int bad = memcmp(g.seg_pixels, b.seg_pixels, sizeof b.seg_pixels) != 0 || g.bf_pixels != b.bf_pixels ||
                  g.df_pixels != b.df_pixels || g.n_static_masked != b.static_masked;
        if (bad)
                tap_diag("%s %ux%u centre (%.17g, %.17g) S=%u: classification differs", what, p->rows, p->cols,
                         p->center_x, p->center_y, p->n_segments);
        for (int simd = ROID_SIMD_BEST; pix && simd >= ROID_SIMD_NONE; simd--) {
                roid_features ft;
                roid_frame f = {.dtype = p->dtype, .rows = p->rows, .cols = p->cols, .pixels = pix};
                roid_features_use_simd((roid_simd_level)simd);
                const int r = roid_features_compute(&g, &f, &ft, NULL);
                roid_features_use_simd(ROID_SIMD_BEST);
                if (r < 0 || features_equal(&ft, p, &b)) {
                        bad++;
                        tap_diag("%s %s %ux%u centre (%.17g, %.17g) S=%u: %s features differ", what,
                                 roid_dtype_name(p->dtype), p->rows, p->cols, p->center_x, p->center_y, p->n_segments,
                                 simd == ROID_SIMD_BEST   ? "SIMD"
                                 : simd == ROID_SIMD_AVX2 ? "AVX2"
                                                          : "portable");
                }
        }
        if (pix && p->dtype == ROID_DT_U16)
                (g.blocks ? &n_block_walk : &n_run_walk)[0]++;
        /* at once: the block walk where it runs, and the AVX2 walk over the same runs */
        for (int simd = ROID_SIMD_BEST; pix && simd >= ROID_SIMD_AVX2; simd--) {
                roid_features_use_simd((roid_simd_level)simd);
                const int r = check_many(&g, p, pix);
                roid_features_use_simd(ROID_SIMD_BEST);
                if (r) {
                        bad++;
                        tap_diag("%s %s %ux%u centre (%.17g, %.17g) S=%u: features of frames at once differ (%s)", what,
                                 roid_dtype_name(p->dtype), p->rows, p->cols, p->center_x, p->center_y, p->n_segments,
                                 simd == ROID_SIMD_BEST ? "SIMD" : "AVX2");
                }
        }
        roid_geometry_free(&g);
        return bad;
}

/* Random values, ~1/16 of them at the maximum or next to it. */
static void *random_frame(roid_dtype t, size_t n) {
        void *pix = malloc(n * roid_dtype_size(t));
        const uint64_t maxv = dtype_maxv(t);
        for (size_t i = 0; i < n; i++) {
                const uint64_t v = rnd_u64();
                const unsigned k = v % 32;
                put(pix, t, i, k == 0 ? maxv : k == 1 ? maxv - 1 : k < 4 ? 0 : (v >> 8) % maxv);
        }
        return pix;
}

/* Many beam centres (integer, half-integer, random, outside the frame, just
 * off a row) and S = 1..40, classification and features. */
static void geometry_brute(void) {
        static const unsigned segs[] = {1, 2, 3, 4, 5, 8, 16, 24, 40};
        const uint32_t rows = 45, cols = 67;
        const double centres[][2] = {
                {33, 22},
                {0, 0},
                {66, 44},
                {33.5, 22.5},
                {33, 22.5},
                {33.5, 22},
                {-10.3, 20.7},
                {80.2, -5.5},
                {-1000.25, 3000.5},
                {1e6 + 0.3, -2e5},
                {30.3, 22 + 1e-9},
                {-1e6, 10},
                {0, 0},
                {0, 0},
                {0, 0},
        };
        const size_t nc = sizeof centres / sizeof centres[0];
        uint32_t *mask = make_mask(rows, cols);
        int bad = 0, n = 0;
        for (size_t c = 0; c < nc; c++) {
                const roid_dtype t = (roid_dtype)(ROID_DT_U8 + c % 3);
                void *pix = random_frame(t, (size_t)rows * cols);
                for (size_t k = 0; k < sizeof segs / sizeof segs[0]; k++) {
                        roid_geometry_params p;
                        roid_geometry_params_default(&p);
                        p.rows = rows, p.cols = cols, p.dtype = t, p.n_segments = segs[k];
                        p.center_x = centres[c][0], p.center_y = centres[c][1];
                        if (c >= nc - 3) /* random, inside */
                                p.center_x = rnd_unit() * cols, p.center_y = rnd_unit() * rows;
                        p.r_bf = 4 + (double)(c % 5) * 3.1, p.r_df_in = p.r_bf + (k % 2);
                        p.r_df_out = k % 3 == 0 ? INFINITY : k % 3 == 1 ? 0 : p.r_bf * 2.5;
                        p.mask = c % 2 ? mask : NULL;
                        bad += check_brute(&p, pix, "brute") != 0;
                        n++;
                }
                free(pix);
        }
        free(mask);
        tap_ok(bad == 0,
               "%d geometries (%zu centres x 9 S) equal a brute-force per-pixel classification, features of the "
               "portable, AVX2 and best kernels and of frames at once (block and AVX2 walks) to the bit (%d bad)",
               n, nc, bad);
        /* both walks of four uint16 frames were among them (the block walk runs where AVX-512 BW is) */
        tap_ok(n_block_walk >= 10 && n_run_walk >= 5, "uint16 geometries of short runs (%d, block walk) and long (%d)",
               n_block_walk, n_run_walk);

        /* larger frames, integer, half-integer and random centres */
        bad = 0, n = 0;
        for (int c = 0; c < 4; c++) {
                const uint32_t r2 = 300 + c, c2 = 517 - 3 * c;
                const roid_dtype t = c == 1 ? ROID_DT_U32 : ROID_DT_U16;
                void *pix = random_frame(t, (size_t)r2 * c2);
                uint32_t *m = make_mask(r2, c2);
                for (unsigned k = 0; k < 3; k++) {
                        roid_geometry_params p;
                        roid_geometry_params_default(&p);
                        p.rows = r2, p.cols = c2, p.dtype = t, p.n_segments = (unsigned[]){8, 24, 40}[k];
                        p.center_x = c == 0 ? 250 : c == 1 ? 250.5 : rnd_unit() * c2;
                        p.center_y = c == 0 ? 150 : c == 1 ? 149.5 : rnd_unit() * r2;
                        p.r_bf = 30, p.r_df_in = 30, p.r_df_out = 140;
                        p.mask = m;
                        bad += check_brute(&p, pix, "brute large") != 0;
                        n++;
                }
                free(pix);
                free(m);
        }
        tap_ok(bad == 0, "%d larger geometries (300x517) equal the brute force (%d bad)", n, bad);
}

/* Runs of every length 1..RUN_MAX (masked pixels between them), the last one
 * ending at the very end of an exactly sized buffer, values anywhere up to
 * the maximum: every kernel, 64- and 128-bit moments. */
static void run_lengths(void) {
        struct {
                roid_dtype t;
                uint32_t rows, cols;
                unsigned smax;
                unsigned high; /* stretches at the maximum - 1 (the largest exact sums): 1 half, 2 most */
        } cfg[] = {
                {ROID_DT_U8, 2, 33153, 40, 0},
                {ROID_DT_U16, 2, 33153, 40, 1},
                {ROID_DT_U32, 2, 33153, 40, 0},
                {ROID_DT_U32, 5, 33153, 40, 1},
                {ROID_DT_U32, 1, 257, 40, 2},
                /* rows * cols * max * cols >= 2^64: 128-bit moments; the first really exceeds 2^64 */
                {ROID_DT_U32, 1, 100003, 40, 2},
                {ROID_DT_U16, 1, (1u << 24) + (1u << 20), 1, 1},
        };
        int bad = 0;
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
                const size_t n = (size_t)cfg[c].rows * cfg[c].cols;
                uint32_t *mask = calloc(n, sizeof *mask);
                for (uint32_t y = 0; y < cfg[c].rows; y++) {
                        uint32_t x = (y * 7) % 13, L = 1 + y * 37 % 256;
                        for (; x < cfg[c].cols; x += L + 1, L = L % 256 + 1)
                                mask[(size_t)y * cfg[c].cols + x] = 1u << (L % 32);
                        mask[(size_t)y * cfg[c].cols + cfg[c].cols - 1] = 0;
                }
                void *pix = random_frame(cfg[c].t, n);
                for (size_t i = 0; i < n; i++)
                        if ((cfg[c].high == 1 && i < n / 2) || (cfg[c].high == 2 && i % 97))
                                put(pix, cfg[c].t, i, dtype_maxv(cfg[c].t) - 1);
                for (unsigned S = 1; S <= cfg[c].smax; S += 39) {
                        roid_geometry_params p;
                        roid_geometry_params_default(&p);
                        p.rows = cfg[c].rows, p.cols = cfg[c].cols, p.dtype = cfg[c].t, p.n_segments = S;
                        p.center_x = cfg[c].cols * 0.37, p.center_y = 0.5;
                        p.r_bf = 3000, p.r_df_in = 3000, p.r_df_out = INFINITY;
                        p.mask = mask;
                        bad += check_brute(&p, pix, "run lengths") != 0;
                }
                free(pix);
                free(mask);
        }
        tap_ok(bad == 0,
               "runs of every length 1..256, the last at the end of the buffer, u8/u16/u32, 64- and 128-bit "
               "moments: both kernels equal the brute force (%d bad)",
               bad);
}

/* ---- validation ---- */

static void validation(void) {
        roid_geometry_params p;
        roid_geometry g;
        roid_err err;
        static const char *const field[] = {"n_segments", "n_segments", "dtype",    "center_x", "center_y",
                                            "r_bf",       "r_df_in",    "r_df_out", "rows",     "pixels"};
        for (int i = 0; i < 10; i++) {
                roid_geometry_params_default(&p);
                p.rows = 10, p.cols = 10, p.dtype = ROID_DT_U16, p.center_x = 5, p.center_y = 5;
                p.r_bf = 2, p.r_df_in = 2, p.r_df_out = 4;
                switch (i) {
                case 0:
                        p.n_segments = 41;
                        break;
                case 1:
                        p.n_segments = 0;
                        break;
                case 2:
                        p.dtype = ROID_DT_F32;
                        break;
                case 3:
                        p.center_x = NAN;
                        break;
                case 4:
                        p.center_y = INFINITY;
                        break;
                case 5:
                        p.r_bf = -1;
                        break;
                case 6:
                        p.r_df_in = 50;
                        break;
                case 7:
                        p.r_df_out = NAN;
                        break;
                case 8:
                        p.rows = 0;
                        break;
                default:
                        p.cols = 1u << 30;
                        break;
                }
                memset(&err, 0, sizeof err);
                int r = roid_geometry_init(&g, &p, &err);
                tap_ok(r == -EINVAL && strstr(err.msg, field[i]) != NULL, "bad %s rejected: %d \"%s\"", field[i], r,
                       err.msg);
        }
        roid_geometry_params_default(&p);
        p.rows = 10, p.cols = 10, p.dtype = ROID_DT_U16, p.center_x = 5, p.center_y = 5;
        tap_ok(roid_geometry_init(&g, &p, &err) == 0, "defaults + shape, dtype, centre accepted");
        uint8_t px[100] = {0};
        roid_frame f = {.dtype = ROID_DT_U8, .rows = 10, .cols = 10, .pixels = px};
        roid_features ft;
        memset(&ft, 0xab, sizeof ft);
        int r = roid_features_compute(&g, &f, &ft, &err);
        tap_ok(r == -EINVAL && ft.total_u64 == 0xababababababababu,
               "frame of the wrong dtype rejected, result untouched");
        /* several at once: one wrong frame among good ones */
        uint16_t px16[100] = {0};
        roid_frame fs[5];
        roid_features fts[5];
        for (int i = 0; i < 5; i++)
                fs[i] = (roid_frame){.dtype = ROID_DT_U16, .rows = 10, .cols = 10, .pixels = px16};
        fs[3].cols = 9;
        memset(fts, 0xab, sizeof fts);
        memset(&err, 0, sizeof err);
        r = roid_features_compute_many(&g, 5, fs, fts, &err);
        bool untouched = true;
        for (int i = 0; i < 5; i++)
                untouched &= fts[i].total_u64 == 0xababababababababu;
        tap_ok(r == -EINVAL && untouched && strstr(err.msg, "frame 4 of 5") && strstr(err.msg, "10 x 9"),
               "frames at once: a frame of the wrong shape rejected by its place, no result written: \"%s\"", err.msg);
        roid_geometry_free(&g);
}

/* ---- beam centre ---- */

static void beam_center(void) {
        struct {
                roid_dtype t;
                uint32_t rows, cols;
                sim s;
                int hot; /* unmasked hot pixels far from the beam */
        } tc[] = {
                {ROID_DT_U16, 96, 96, {.bx = 40.3, .by = 55.6, .radius = 9, .peak = 3000, .halo = 200, .bg = 2}, 0},
                {ROID_DT_U16,
                 512,
                 1028,
                 {.bx = 600.7, .by = 211.2, .radius = 20, .peak = 8000, .halo = 800, .bg = 1},
                 3},
                {ROID_DT_U8, 127, 131, {.bx = 70.2, .by = 60.9, .radius = 14, .peak = 400, .halo = 60, .bg = 1}, 2},
                {ROID_DT_U32, 127, 131, {.bx = 52.8, .by = 80.1, .radius = 4, .peak = 1e8, .halo = 1e6, .bg = 10}, 2},
                /* small beams across the gap cross (columns 32-33, rows 64-65): the
                 * gap's own centre was a fixed point, 0.8 px off (found by review) */
                {ROID_DT_U16, 96, 96, {.bx = 33, .by = 65, .radius = 4, .peak = 3000, .halo = 200, .bg = 2}, 0},
                {ROID_DT_U16, 96, 96, {.bx = 32.4, .by = 64.7, .radius = 5, .peak = 3000, .halo = 200, .bg = 2}, 0},
                /* near the edge: pixels whose mirror is off the frame are left out */
                {ROID_DT_U16, 96, 96, {.bx = 3.3, .by = 40.2, .radius = 6, .peak = 3000, .halo = 200, .bg = 2}, 0},
        };
        for (size_t i = 0; i < sizeof tc / sizeof tc[0]; i++) {
                void *px = simulate(tc[i].t, tc[i].rows, tc[i].cols, &tc[i].s);
                uint32_t *mask = make_mask(tc[i].rows, tc[i].cols);
                uint64_t hotv = tc[i].t == ROID_DT_U8 ? 250 : (uint64_t)(tc[i].s.peak * 10);
                if (hotv >= dtype_maxv(tc[i].t))
                        hotv = dtype_maxv(tc[i].t) - 1;
                for (int h = 0; h < tc[i].hot; h++)
                        put(px, tc[i].t, (size_t)(3 + h) * tc[i].cols + 5 + 7 * h, hotv);
                roid_frame f = {.dtype = tc[i].t, .rows = tc[i].rows, .cols = tc[i].cols, .pixels = px};
                double x = NAN, y = NAN;
                roid_err err = {{0}};
                int r = roid_estimate_beam_center(&f, mask, &x, &y, &err);
                tap_ok(r == 0 && fabs(x - tc[i].s.bx) < 0.3 && fabs(y - tc[i].s.by) < 0.3,
                       "beam centre %s %ux%u, %d hot pixels: (%.3f, %.3f), true (%.1f, %.1f)", roid_dtype_name(tc[i].t),
                       tc[i].rows, tc[i].cols, tc[i].hot, x, y, tc[i].s.bx, tc[i].s.by);
                free(px);
                free(mask);
        }
        uint16_t zero[64] = {0};
        roid_frame f = {.dtype = ROID_DT_U16, .rows = 8, .cols = 8, .pixels = zero};
        double x = -1, y = -1;
        int r = roid_estimate_beam_center(&f, NULL, &x, &y, NULL);
        tap_ok(r == -ENODATA && x == -1 && y == -1, "beam centre of an empty frame: -ENODATA, outputs untouched");
}

/* roid_features_left_out on frames through the kernel: which frames measured
 * nothing of the sample. */
static void left_out_rule(void) {
        enum { R = 64, C = 64, N = R * C };
        roid_geometry_params p;
        roid_geometry_params_default(&p);
        p.rows = R, p.cols = C, p.dtype = ROID_DT_U16, p.center_x = 31.3, p.center_y = 32.6;
        roid_geometry g;
        if (roid_geometry_init(&g, &p, NULL) < 0) {
                tap_ok(0, "left_out: geometry");
                return;
        }
        static uint16_t px[N];
        static const struct {
                const char *what;
                unsigned saturated_per_mille; /* pixels at 65535, in stripes */
                double lam;                   /* Poisson mean of the others */
                unsigned want;
        } tc[] = {
                {"every pixel at 65535 (the flag value): a glitch, though its total is 0", 1000, 0, ROID_FRAME_GLITCH},
                {"60 % of the pixels at 65535, counts elsewhere", 600, 20, ROID_FRAME_GLITCH},
                {"every pixel at 65534: a glitch by its mean", 0, -1, ROID_FRAME_GLITCH},
                {"no counts, 3 hot pixels at 65535: dark", 1, 0, ROID_FRAME_DARK},
                {"37 % at 65535 (gaps flagged, as EIGER's difference channel), counts elsewhere: used", 370, 20,
                 ROID_FRAME_USED},
                {"a diffraction pattern", 0, 20, ROID_FRAME_USED},
        };
        for (size_t k = 0; k < sizeof tc / sizeof tc[0]; k++) {
                for (size_t i = 0; i < N; i++) {
                        const bool sat = tc[k].saturated_per_mille == 1 ? i % 1000 == 7 && i < 3000
                                                                        : i % 1000 < tc[k].saturated_per_mille;
                        px[i] = sat ? 65535 : tc[k].lam < 0 ? 65534 : (uint16_t)rnd_poisson(tc[k].lam);
                }
                roid_frame f = {.dtype = ROID_DT_U16, .rows = R, .cols = C, .pixels = px};
                roid_features ft;
                const int r = roid_features_compute(&g, &f, &ft, NULL);
                const unsigned got = r < 0 ? 99 : roid_features_left_out(&ft);
                tap_ok(got == tc[k].want, "left_out: %s (%u, want %u; %llu saturated, total %g)", tc[k].what, got,
                       tc[k].want, (unsigned long long)ft.saturated, ft.total);
        }
        roid_geometry_free(&g);
}

int main(void) {
        validation();
        random_shapes(ROID_SIMD_BEST);
        random_shapes(ROID_SIMD_AVX2);
        random_shapes(ROID_SIMD_NONE);
        geometry_brute();
        run_lengths();
        numpy_cases();
        beam_center();
        left_out_rule();
        return tap_done();
}
