/* sim_phantom.c - the ptychography phantom source of roid-sim: the far-field
 * diffraction patterns of a focused probe raster-scanned over a synthetic
 * object, with Poisson noise.  It gives the RoI features something physical to
 * find: the total intensity T drops where the object absorbs, the centre of
 * mass (CoM) shifts where it has phase gradients.
 *
 * Ownership: the state belongs to the source from init to free.  Threads: one;
 * fill calls are sequential (FFTW plans are made and destroyed on that thread).
 *
 * Model (projection approximation, object pixel = probe pixel):
 * - Object O(r) = exp(-mu(r) + i phi(r)), O = 1 on empty background.  One main
 *   particle, a union of 4 overlapping ellipses about the middle of the scanned
 *   field, mu0 in 0.4..0.7 and phi0 in 0.8..1.2 rad, both textured by +-35 % with
 *   a random field (a sum of plane waves of wavelength 0.4..1.5 probe
 *   diameters).  `particles` weak phase discs (mu = 0, phi 0.2..0.5 rad,
 *   diameter 0.3..0.5 probe diameters) around it, at least a probe radius
 *   clear of the main particle and a probe diameter plus a step clear of each
 *   other, so their scan-point masks are separate (discs that do not fit in
 *   4000 tries are dropped; the truth lists those placed).  Edges are softened
 *   over ~2 pixels.
 * - Probe P: inverse FFT of a circular pupil of radius `pupil` detector pixels
 *   with a defocus phase `defocus` * (k/pupil)^2, shifted so its peak sits at
 *   window pixel (N/2, N/2): an Airy-like spot.  Its radius R90 (containing
 *   90 % of |P|^2, measured on the grid) is "probe_radius_px"; the probe
 *   diameter is 2 * R90.
 * - Scan: ny x nx points (--scan; without it 48 x 48 without snake, but then
 *   roid-sim sends --frames images and no scan metadata, so pass --scan).  Step
 *   `step` object pixels, default 0.35 probe diameters (65 % overlap).  Frame
 *   frame_index is scan point k = frame_index % (ny*nx) in acquisition order:
 *   row = k / nx, col = k % nx, reversed (nx-1-col) on odd rows with snake.
 *   Window (row, col) starts at object pixel (row*step, col*step), so the probe
 *   centre is at object (x, y) = (col*step + N/2, row*step + N/2).
 * - Frame: |FFT(P * O_window)|^2, fftshifted so the direct beam is at pixel
 *   (x, y) = (cols/2, rows/2) = (N/2, N/2), the beam centre; scaled so an empty
 *   frame holds `photons` photons on average; Poisson noise (seeded splitmix64;
 *   Knuth below mean 10, Hoermann's PTRS above); clipped to the dtype maximum
 *   minus 1 (uint8 saturates at the default flux: lower `photons`).
 * - Channels: threshold_1 counts the photons; each higher threshold keeps each
 *   photon of the one below with probability 0.95 (charge sharing);
 *   "difference" (channel 3 of at most 3) is threshold_1 - threshold_2.
 * Frames must be square, N a power of two in 16..4096 (--shape 128x128).
 *
 * ARG (--source phantom:ARG): comma-separated key=value, all optional:
 *   seed=U64 (1)  photons=X (1e6)  particles=0..32 (5)  pupil=PX (max(6, N/16),
 *   at most N/4)  defocus=RAD (0.5)  step=PX  truth=PATH (no commas in PATH)
 *   small_radius=LO:HI (0.15:0.25; a single X is X:X) radii of the small
 *   particles in probe diameters  small_phase=LO:HI (0.2:0.5) their phase, rad
 *   main=0|1 (1) whether the main particle is there (0: small particles only;
 *   its geometry is still drawn, so the small ones land where they would)
 *
 * Fly scans (sim_scan.visits, roid-sim --fly or --positions): frame k is
 * rendered at grid point visits[k] moved by its jitter (rounded to object
 * pixels, clamped to the scanned field); the period is the number of visits.
 *
 * Ground truth (truth=PATH): a JSON object with ny, nx, snake, rows, cols,
 * beam_center [x, y], probe_radius_px (R90), step_px, pupil_radius_px,
 * photons, the particles' geometry in object pixels, and three ny x nx 0/1
 * masks indexed [row][col]: a scan point is in main_mask (small_mask) when some
 * object pixel within R90 of its probe centre is inside the main particle (a
 * small particle), i.e. at least half-way across the softened edge;
 * object_mask = main_mask | small_mask.  frame_order[frame_index] = [row, col]
 * (for a fly scan, the grid point of each visit).
 */
#include "sim_source.h"

#include <complex.h> /* before fftw3.h: fftw_complex becomes double complex */
#include <fftw3.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEF_SCAN      48
#define MIN_SCAN      4
#define MAX_POINTS    100000
#define MIN_N         16
#define MAX_N         4096
#define MAX_OBJ_PX    ((uint64_t)1 << 23)
#define MAX_PARTICLES 32
#define MAX_PATH      4096
#define MAIN_PARTS    4
#define TEX_WAVES     24
#define EDGE_PX       1.0  /* half-width of the softened edges */
#define KEEP          0.95 /* photons of one threshold seen by the next */
#define R_FRACTION    0.9  /* intensity inside the probe radius */

typedef struct {
        double x, y, a, b, angle;
} ellipse;

typedef struct {
        double x, y, r, phi;
} disc;

typedef struct {
        uint32_t n; /* frame size N */
        roid_dtype dtype;
        unsigned nchannels, nlevels;
        uint32_t ny, nx;
        bool snake;
        uint64_t seed;
        double photons, pupil, defocus, r90, scale;
        uint32_t step, oh, ow; /* scan step and object grid, in object pixels */
        fftw_complex *obj;     /* oh*ow transmission */
        fftw_complex *probe;   /* n*n, peak at (n/2, n/2) */
        fftw_complex *buf;     /* n*n exit wave, transformed in place */
        fftw_plan plan;
        uint32_t *lev[ROID_MAX_CHANNELS]; /* counts of each threshold for frame `cached` */
        uint64_t cached;
        bool have_cached;
        /* geometry, kept for the truth file */
        ellipse main[MAIN_PARTS];
        double mu0, phi0;
        disc small[MAX_PARTICLES];
        unsigned nsmall, nsmall_wanted;
        double small_r[2], small_phi[2]; /* ranges: radius in probe diameters, phase in rad */
        bool with_main;
        const sim_visit *visits; /* fly scan: frame k is visits[k % nvisits]; NULL: grid order */
        uint64_t nvisits;
} phantom;

typedef struct {
        uint64_t seed;
        double photons, defocus;
        double pupil;  /* <= 0: default */
        uint32_t step; /* 0: default */
        unsigned particles;
        double small_r[2], small_phi[2];
        bool with_main;
        char truth[MAX_PATH];
} popts;

/* ------------------------------------------------------------ random numbers */

typedef struct {
        uint64_t s;
} rng;

static uint64_t rng_next(rng *r) {
        uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so logs and Knuth's product stay finite. */
static double rng_unit(rng *r) {
        return (double)((rng_next(r) >> 11) + 1) * 0x1.0p-53;
}

static double rng_range(rng *r, double lo, double hi) {
        return lo + (hi - lo) * rng_unit(r);
}

static uint64_t poisson(rng *r, double lam) {
        if (!(lam > 0))
                return 0;
        if (lam < 10) { /* Knuth: multiply uniforms until below e^-lam */
                double lim = exp(-lam), prod = rng_unit(r);
                uint64_t k = 0;
                while (prod > lim) {
                        k++;
                        prod *= rng_unit(r);
                }
                return k;
        }
        /* PTRS, W. Hoermann, Insurance: Math. Econ. 12 (1993) 39-45. */
        double slam = sqrt(lam), loglam = log(lam);
        double b = 0.931 + 2.53 * slam, a = -0.059 + 0.02483 * b;
        double inv_alpha = 1.1239 + 1.1328 / (b - 3.4), vr = 0.9277 - 3.6224 / (b - 2);
        for (;;) {
                double u = rng_unit(r) - 0.5, v = rng_unit(r);
                double us = 0.5 - fabs(u);
                double k = floor((2 * a / us + b) * u + lam + 0.43);
                if (us >= 0.07 && v <= vr)
                        return (uint64_t)k;
                if (k < 0 || (us < 0.013 && v > us))
                        continue;
                if (log(v) + log(inv_alpha) - log(a / (us * us) + b) <= -lam + k * loglam - lgamma(k + 1))
                        return (uint64_t)k;
        }
}

/* ------------------------------------------------------------------ options */

static int parse_num(const char *key, const char *val, double min, double max, double *ret, roid_err *err) {
        char *end;
        double v;

        errno = 0;
        v = strtod(val, &end);
        if (errno || end == val || *end || !(v >= min && v <= max))
                return roid_err_set(err, -EINVAL, "%s='%s' is not a number in %g..%g", key, val, min, max);
        *ret = v;
        return 0;
}

/* "LO:HI" or "X" (LO = HI = X) within min..max. */
static int parse_range(const char *key, const char *val, double min, double max, double ret[2], roid_err *err) {
        char lo[64];
        const char *colon = strchr(val, ':');
        size_t n = colon ? (size_t)(colon - val) : strlen(val);
        if (n >= sizeof lo)
                return roid_err_set(err, -EINVAL, "%s='%s' is not LO:HI", key, val);
        memcpy(lo, val, n);
        lo[n] = '\0';
        double v[2] = {0, 0};
        int r = parse_num(key, lo, min, max, &v[0], err);
        if (r == 0)
                r = parse_num(key, colon ? colon + 1 : lo, min, max, &v[1], err);
        if (r == 0 && v[1] < v[0])
                r = roid_err_set(err, -EINVAL, "%s='%s': LO above HI", key, val);
        if (r == 0) {
                ret[0] = v[0];
                ret[1] = v[1];
        }
        return r;
}

static int parse_opts(const char *arg, popts *o, roid_err *err) {
        *o = (popts){.seed = 1,
                     .photons = 1e6,
                     .defocus = 0.5,
                     .particles = 5,
                     .small_r = {0.15, 0.25},
                     .small_phi = {0.2, 0.5},
                     .with_main = true};
        if (!arg || !*arg)
                return 0;
        const char *p = arg;
        for (;;) {
                const char *end = strchr(p, ',');
                size_t len = end ? (size_t)(end - p) : strlen(p);
                const char *eq = memchr(p, '=', len);
                char key[32], val[MAX_PATH];
                double v = 0;
                int r = 0;

                if (!eq || eq == p || (size_t)(eq - p) >= sizeof key || len - (size_t)(eq - p) - 1 >= sizeof val)
                        return roid_err_set(err, -EINVAL, "'%.*s' in '%s' is not key=value", (int)(len > 64 ? 64 : len),
                                            p, arg);
                memcpy(key, p, (size_t)(eq - p));
                key[eq - p] = '\0';
                memcpy(val, eq + 1, len - (size_t)(eq - p) - 1);
                val[len - (size_t)(eq - p) - 1] = '\0';
                if (strcmp(key, "seed") == 0) {
                        char *e;
                        errno = 0;
                        unsigned long long s = strtoull(val, &e, 10);
                        if (errno || e == val || *e || val[0] == '-')
                                return roid_err_set(err, -EINVAL, "seed='%s' is not an unsigned integer", val);
                        o->seed = s;
                } else if (strcmp(key, "photons") == 0) {
                        r = parse_num(key, val, 1, 1e12, &o->photons, err);
                } else if (strcmp(key, "particles") == 0) {
                        r = parse_num(key, val, 0, MAX_PARTICLES, &v, err);
                        if (r == 0 && v != floor(v))
                                r = roid_err_set(err, -EINVAL, "particles='%s' is not an integer", val);
                        if (r == 0)
                                o->particles = (unsigned)v;
                } else if (strcmp(key, "pupil") == 0) {
                        r = parse_num(key, val, 2, MAX_N / 4, &o->pupil, err);
                } else if (strcmp(key, "defocus") == 0) {
                        r = parse_num(key, val, -20, 20, &o->defocus, err);
                } else if (strcmp(key, "step") == 0) {
                        r = parse_num(key, val, 1, MAX_N, &v, err);
                        if (r == 0 && v != floor(v))
                                r = roid_err_set(err, -EINVAL, "step='%s' is not an integer", val);
                        if (r == 0)
                                o->step = (uint32_t)v;
                } else if (strcmp(key, "small_radius") == 0) {
                        r = parse_range(key, val, 0.02, 1, o->small_r, err);
                } else if (strcmp(key, "small_phase") == 0) {
                        r = parse_range(key, val, 0, 2 * M_PI, o->small_phi, err);
                } else if (strcmp(key, "main") == 0) {
                        if (strcmp(val, "0") != 0 && strcmp(val, "1") != 0)
                                return roid_err_set(err, -EINVAL, "main='%s' is not 0 or 1", val);
                        o->with_main = val[0] == '1';
                } else if (strcmp(key, "truth") == 0) {
                        if (!val[0])
                                return roid_err_set(err, -EINVAL, "truth= needs a path");
                        memcpy(o->truth, val, strlen(val) + 1);
                } else {
                        return roid_err_set(err, -EINVAL,
                                            "unknown key '%s' (known: seed, photons, particles, "
                                            "small_radius, small_phase, main, pupil, defocus, step, truth)",
                                            key);
                }
                if (r < 0)
                        return r;
                if (!end)
                        return 0;
                p = end + 1;
        }
}

/* -------------------------------------------------------------------- probe */

/* The probe, and R90 from a radial histogram of |P|^2 about the peak. */
static int make_probe(phantom *p, roid_err *err) {
        uint32_t n = p->n, half = n / 2;
        double a2 = p->pupil * p->pupil, total = 0;
        fftw_plan back = fftw_plan_dft_2d((int)n, (int)n, p->buf, p->buf, FFTW_BACKWARD, FFTW_ESTIMATE);

        if (!back)
                return roid_err_set(err, -ENOMEM, "FFTW cannot plan %ux%u", n, n);
        for (uint32_t y = 0; y < n; y++) {
                double ky = y < half ? (double)y : (double)y - n;
                for (uint32_t x = 0; x < n; x++) {
                        double kx = x < half ? (double)x : (double)x - n, k2 = kx * kx + ky * ky;
                        p->buf[(size_t)y * n + x] = k2 <= a2 ? cexp(I * p->defocus * k2 / a2) : 0;
                }
        }
        fftw_execute(back);
        fftw_destroy_plan(back);
        for (uint32_t y = 0; y < n; y++)
                for (uint32_t x = 0; x < n; x++) {
                        fftw_complex v = p->buf[(size_t)((y + half) % n) * n + (x + half) % n];
                        p->probe[(size_t)y * n + x] = v;
                        total += creal(v) * creal(v) + cimag(v) * cimag(v);
                }
        if (!(total > 0))
                return roid_err_set(err, -EINVAL, "empty probe (pupil %g px)", p->pupil);

        enum { PER_PX = 4 };
        size_t nbins = (size_t)n * PER_PX + 1; /* the corner is 0.71 n away */
        double *hist = calloc(nbins, sizeof *hist);
        if (!hist)
                return roid_err_set(err, -ENOMEM, "out of memory");
        for (uint32_t y = 0; y < n; y++)
                for (uint32_t x = 0; x < n; x++) {
                        double dy = (double)y - half, dx = (double)x - half;
                        fftw_complex v = p->probe[(size_t)y * n + x];
                        hist[(size_t)(sqrt(dx * dx + dy * dy) * PER_PX)] += creal(v) * creal(v) + cimag(v) * cimag(v);
                }
        double cum = 0;
        p->r90 = (double)n / 2;
        for (size_t i = 0; i < nbins; i++) {
                cum += hist[i];
                if (cum >= R_FRACTION * total) {
                        p->r90 = (double)(i + 1) / PER_PX;
                        break;
                }
        }
        free(hist);
        /* FFTW's forward transform is unnormalised: sum |F|^2 = n^2 sum |P|^2. */
        p->scale = p->photons / ((double)n * n * total);
        return 0;
}

/* ------------------------------------------------------------------- object */

/* Membership 0..1 of a point at signed distance d (pixels, < 0 inside). */
static float soft(double d) {
        double m = 0.5 - d / (2 * EDGE_PX);
        return (float)(m < 0 ? 0 : m > 1 ? 1 : m);
}

typedef struct {
        double kx, ky, ph;
} wave;

static double texture(const wave *w, double x, double y) {
        double s = 0;

        for (int i = 0; i < TEX_WAVES; i++)
                s += cos(w[i].kx * x + w[i].ky * y + w[i].ph);
        return s * sqrt(2.0 / TEX_WAVES); /* unit variance */
}

static void make_waves(rng *r, wave *w, double diameter) {
        for (int i = 0; i < TEX_WAVES; i++) {
                double k = 2 * M_PI / (diameter * rng_range(r, 0.4, 1.5)), dir = rng_range(r, 0, 2 * M_PI);
                w[i] = (wave){k * cos(dir), k * sin(dir), rng_range(r, 0, 2 * M_PI)};
        }
}

/* Clamped pixel range [lo, hi) of centre c +- half within 0..len. */
static void span(double c, double half, uint32_t len, uint32_t *ret_lo, uint32_t *ret_hi) {
        double lo = floor(c - half), hi = ceil(c + half) + 1;

        *ret_lo = lo < 0 ? 0 : lo > len ? len : (uint32_t)lo;
        *ret_hi = hi < 0 ? 0 : hi > len ? len : (uint32_t)hi;
}

static void draw_main(phantom *p, rng *r, float *mm) {
        double lx = (double)(p->nx - 1) * p->step, ly = (double)(p->ny - 1) * p->step;
        double l = lx < ly ? lx : ly, half = p->n / 2.0;
        double cx = half + lx / 2 + rng_range(r, -0.05, 0.05) * lx, cy = half + ly / 2 + rng_range(r, -0.05, 0.05) * ly;

        for (int e = 0; e < MAIN_PARTS; e++) {
                double off = e ? rng_range(r, 0.06, 0.12) * l : 0, dir = rng_range(r, 0, 2 * M_PI);
                double lo = e ? 0.07 : 0.13, hi = e ? 0.12 : 0.18;
                p->main[e] = (ellipse){cx + off * cos(dir), cy + off * sin(dir), rng_range(r, lo, hi) * l,
                                       rng_range(r, lo, hi) * l, rng_range(r, 0, M_PI)};
        }
        for (int e = 0; e < MAIN_PARTS; e++) {
                const ellipse *el = &p->main[e];
                double ext = (el->a > el->b ? el->a : el->b) + 2 * EDGE_PX + 1, c = cos(el->angle), s = sin(el->angle);
                double reff = sqrt(el->a * el->b);
                uint32_t y0, y1, x0, x1;
                span(el->y, ext, p->oh, &y0, &y1);
                span(el->x, ext, p->ow, &x0, &x1);
                for (uint32_t y = y0; y < y1; y++)
                        for (uint32_t x = x0; x < x1; x++) {
                                double dx = x - el->x, dy = y - el->y;
                                double u = (dx * c + dy * s) / el->a, v = (-dx * s + dy * c) / el->b;
                                float m = p->with_main ? soft((sqrt(u * u + v * v) - 1) * reff) : 0;
                                float *dst = &mm[(size_t)y * p->ow + x];
                                if (m > *dst)
                                        *dst = m;
                        }
        }
        p->mu0 = rng_range(r, 0.4, 0.7);
        p->phi0 = rng_range(r, 0.8, 1.2);
        wave wmu[TEX_WAVES], wphi[TEX_WAVES];
        make_waves(r, wmu, 2 * p->r90);
        make_waves(r, wphi, 2 * p->r90);
        for (uint32_t y = 0; y < p->oh; y++)
                for (uint32_t x = 0; x < p->ow; x++) {
                        size_t i = (size_t)y * p->ow + x;
                        if (mm[i] <= 0)
                                continue;
                        double mu = p->mu0 * (1 + 0.35 * texture(wmu, x, y));
                        double phi = p->phi0 * (1 + 0.35 * texture(wphi, x, y));
                        p->obj[i] *= cexp(mm[i] * (-(mu > 0 ? mu : 0) + I * phi));
                }
}

/* True if no main-particle pixel lies within dist of (x, y). */
static bool clear_of_main(const phantom *p, const float *mm, double x, double y, double dist) {
        uint32_t y0, y1, x0, x1;

        span(y, dist, p->oh, &y0, &y1);
        span(x, dist, p->ow, &x0, &x1);
        for (uint32_t yy = y0; yy < y1; yy++)
                for (uint32_t xx = x0; xx < x1; xx++)
                        if (mm[(size_t)yy * p->ow + xx] > 0 && hypot(xx - x, yy - y) <= dist)
                                return false;
        return true;
}

static void draw_small(phantom *p, rng *r, const float *mm, float *sm) {
        double lx = (double)(p->nx - 1) * p->step, ly = (double)(p->ny - 1) * p->step, half = p->n / 2.0;
        double diameter = 2 * p->r90;

        p->nsmall = 0;
        for (unsigned tries = 0; p->nsmall < p->nsmall_wanted && tries < 4000; tries++) {
                double rad = rng_range(r, p->small_r[0], p->small_r[1]) * diameter, margin = rad + p->step;
                if (2 * margin >= lx || 2 * margin >= ly)
                        break;
                disc d = {half + rng_range(r, margin, lx - margin), half + rng_range(r, margin, ly - margin), rad,
                          rng_range(r, p->small_phi[0], p->small_phi[1])};
                bool ok = clear_of_main(p, mm, d.x, d.y, rad + p->r90 + 2 * EDGE_PX + 1);
                for (unsigned j = 0; ok && j < p->nsmall; j++)
                        ok = hypot(d.x - p->small[j].x, d.y - p->small[j].y) >
                             rad + p->small[j].r + 2 * p->r90 + p->step + 1;
                if (ok)
                        p->small[p->nsmall++] = d;
        }
        for (unsigned j = 0; j < p->nsmall; j++) {
                const disc *d = &p->small[j];
                uint32_t y0, y1, x0, x1;
                span(d->y, d->r + 2 * EDGE_PX + 1, p->oh, &y0, &y1);
                span(d->x, d->r + 2 * EDGE_PX + 1, p->ow, &x0, &x1);
                for (uint32_t y = y0; y < y1; y++)
                        for (uint32_t x = x0; x < x1; x++) {
                                size_t i = (size_t)y * p->ow + x;
                                float m = soft(hypot(x - d->x, y - d->y) - d->r);
                                if (m <= 0)
                                        continue;
                                p->obj[i] *= cexp(I * m * d->phi);
                                if (m > sm[i])
                                        sm[i] = m;
                        }
        }
}

/* --------------------------------------------------------------------- scan */

static void scan_point(const phantom *p, uint64_t frame, uint32_t *ret_row, uint32_t *ret_col) {
        if (p->visits) {
                const sim_visit *v = &p->visits[frame % p->nvisits];
                *ret_row = v->row;
                *ret_col = v->col;
                return;
        }
        uint64_t k = frame % ((uint64_t)p->ny * p->nx);
        uint32_t row = (uint32_t)(k / p->nx), col = (uint32_t)(k % p->nx);

        if (p->snake && (row & 1))
                col = p->nx - 1 - col;
        *ret_row = row;
        *ret_col = col;
}

/* True if a pixel with membership >= 0.5 lies within R90 of scan point (row, col). */
static bool touches(const phantom *p, const float *m, uint32_t row, uint32_t col) {
        double cx = (double)col * p->step + p->n / 2, cy = (double)row * p->step + p->n / 2;
        uint32_t y0, y1, x0, x1;

        span(cy, p->r90, p->oh, &y0, &y1);
        span(cx, p->r90, p->ow, &x0, &x1);
        for (uint32_t y = y0; y < y1; y++)
                for (uint32_t x = x0; x < x1; x++)
                        if (m[(size_t)y * p->ow + x] >= 0.5f && hypot(x - cx, y - cy) <= p->r90)
                                return true;
        return false;
}

static void write_mask(FILE *f, const char *name, const phantom *p, const uint8_t *mask) {
        fprintf(f, ",\n\"%s\":[", name);
        for (uint32_t row = 0; row < p->ny; row++) {
                fputs(row ? ",\n[" : "\n[", f);
                for (uint32_t col = 0; col < p->nx; col++)
                        fprintf(f, col ? ",%u" : "%u", mask[(size_t)row * p->nx + col]);
                fputc(']', f);
        }
        fputc(']', f);
}

static int write_truth(const phantom *p, const char *path, const float *mm, const float *sm, roid_err *err) {
        size_t npts = (size_t)p->ny * p->nx;
        uint8_t *mmask = malloc(npts), *smask = malloc(npts), *omask = malloc(npts);
        FILE *f = NULL;
        int r = 0;

        if (!mmask || !smask || !omask) {
                r = roid_err_set(err, -ENOMEM, "out of memory for the truth masks");
                goto out;
        }
        for (uint32_t row = 0; row < p->ny; row++)
                for (uint32_t col = 0; col < p->nx; col++) {
                        size_t i = (size_t)row * p->nx + col;
                        mmask[i] = touches(p, mm, row, col);
                        smask[i] = touches(p, sm, row, col);
                        omask[i] = mmask[i] | smask[i];
                }
        f = fopen(path, "w");
        if (!f) {
                r = roid_err_set(err, -errno, "truth=%s: %s", path, strerror(errno));
                goto out;
        }
        fprintf(f,
                "{\"ny\":%" PRIu32 ",\"nx\":%" PRIu32 ",\"snake\":%s,\"rows\":%" PRIu32 ",\"cols\":%" PRIu32
                ",\n\"beam_center\":[%g,%g],\"probe_radius_px\":%.6g,\"probe_energy_fraction\":%g,"
                "\"step_px\":%" PRIu32 ",\"pupil_radius_px\":%.6g,\"defocus_rad\":%.6g,\"photons\":%.9g,"
                "\"seed\":%" PRIu64 ",\"object_shape\":[%" PRIu32 ",%" PRIu32 "],"
                "\n\"probe_center\":\"scan point (row, col) has its probe centre at object pixel (x, y) = "
                "(col*step_px + cols/2, row*step_px + rows/2)\",",
                p->ny, p->nx, p->snake ? "true" : "false", p->n, p->n, p->n / 2.0, p->n / 2.0, p->r90, R_FRACTION,
                p->step, p->pupil, p->defocus, p->photons, p->seed, p->oh, p->ow);
        fprintf(f, "\n\"main\":{\"mu0\":%.6g,\"phi0\":%.6g,\"texture\":0.35,\"ellipses\":[", p->mu0, p->phi0);
        for (int e = 0; e < MAIN_PARTS; e++)
                fprintf(f, "%s{\"x\":%.6g,\"y\":%.6g,\"a\":%.6g,\"b\":%.6g,\"angle\":%.6g}", e ? "," : "", p->main[e].x,
                        p->main[e].y, p->main[e].a, p->main[e].b, p->main[e].angle);
        fprintf(f, "]},\n\"particles_requested\":%u,\"particles\":[", p->nsmall_wanted);
        for (unsigned j = 0; j < p->nsmall; j++)
                fprintf(f, "%s{\"x\":%.6g,\"y\":%.6g,\"radius\":%.6g,\"phi\":%.6g}", j ? "," : "", p->small[j].x,
                        p->small[j].y, p->small[j].r, p->small[j].phi);
        fputc(']', f);
        write_mask(f, "object_mask", p, omask);
        write_mask(f, "main_mask", p, mmask);
        write_mask(f, "small_mask", p, smask);
        fputs(",\n\"frame_order\":[", f);
        for (size_t k = 0; k < (p->visits ? p->nvisits : npts); k++) {
                uint32_t row, col;
                scan_point(p, k, &row, &col);
                fprintf(f, "%s[%" PRIu32 ",%" PRIu32 "]", k ? (k % 16 ? "," : ",\n") : "", row, col);
        }
        fputs("]}\n", f);
        if (ferror(f)) {
                r = roid_err_set(err, -EIO, "truth=%s: write error", path);
                fclose(f);
                goto out;
        }
        if (fclose(f) != 0)
                r = roid_err_set(err, -errno, "truth=%s: %s", path, strerror(errno));
out:
        free(mmask);
        free(smask);
        free(omask);
        return r;
}

/* --------------------------------------------------------------- interface */

static void phantom_free(void *state) {
        phantom *p = state;

        if (!p)
                return;
        if (p->plan)
                fftw_destroy_plan(p->plan);
        fftw_free(p->obj);
        fftw_free(p->probe);
        fftw_free(p->buf);
        for (unsigned k = 0; k < ROID_MAX_CHANNELS; k++)
                free(p->lev[k]);
        free(p);
        fftw_cleanup(); /* roid-sim has no other FFTW user */
}

static bool is_pow2(uint32_t v) {
        return v && !(v & (v - 1));
}

static int phantom_init(sim_source_params *params, void **ret_state, uint64_t *ret_period, roid_err *err) {
        popts o;
        phantom *p = NULL;
        float *mm = NULL, *sm = NULL;
        rng r;
        int ret = parse_opts(params->arg, &o, err);

        if (ret < 0)
                return ret;
        if (params->rows != params->cols || !is_pow2(params->rows) || params->rows < MIN_N || params->rows > MAX_N)
                return roid_err_set(err, -EINVAL,
                                    "frame shape %" PRIu32 "x%" PRIu32
                                    " (rows x cols) is not square NxN with N a power of two in %u..%u "
                                    "(use e.g. --shape 128x128)",
                                    params->rows, params->cols, MIN_N, MAX_N);
        if (params->nchannels < 1 || params->nchannels > ROID_MAX_CHANNELS)
                return roid_err_set(err, -EINVAL, "%u channels, expected 1..%u", params->nchannels, ROID_MAX_CHANNELS);
        if (roid_dtype_size(params->dtype) == 0 || params->dtype == ROID_DT_F32)
                return roid_err_set(err, -EINVAL, "unsupported pixel type");
        p = calloc(1, sizeof *p);
        if (!p)
                return roid_err_set(err, -ENOMEM, "out of memory");
        p->n = params->rows;
        p->dtype = params->dtype;
        p->nchannels = params->nchannels;
        p->nlevels = p->nchannels <= 3 ? (p->nchannels >= 2 ? 2 : 1) : p->nchannels;
        p->seed = o.seed;
        p->photons = o.photons;
        p->defocus = o.defocus;
        p->nsmall_wanted = o.particles;
        memcpy(p->small_r, o.small_r, sizeof p->small_r);
        memcpy(p->small_phi, o.small_phi, sizeof p->small_phi);
        p->with_main = o.with_main;
        p->pupil = o.pupil > 0 ? o.pupil : fmin(p->n / 4.0, fmax(6.0, p->n / 16.0));
        if (p->pupil > p->n / 4.0) {
                ret = roid_err_set(err, -EINVAL, "pupil=%g is more than N/4 = %u pixels", p->pupil, p->n / 4);
                goto fail;
        }
        if (params->scan && params->scan->active) {
                p->ny = params->scan->ny;
                p->nx = params->scan->nx;
                p->snake = params->scan->snake;
                p->visits = params->scan->visits;
                p->nvisits = params->scan->nvisits;
        } else {
                p->ny = p->nx = DEF_SCAN;
        }
        if (p->ny < MIN_SCAN || p->nx < MIN_SCAN || (uint64_t)p->ny * p->nx > MAX_POINTS) {
                ret = roid_err_set(err, -EINVAL,
                                   "scan %" PRIu32 "x%" PRIu32 " needs at least %ux%u and at most %u "
                                   "points",
                                   p->ny, p->nx, MIN_SCAN, MIN_SCAN, MAX_POINTS);
                goto fail;
        }

        size_t npx = (size_t)p->n * p->n;
        p->probe = fftw_alloc_complex(npx);
        p->buf = fftw_alloc_complex(npx);
        for (unsigned k = 0; k < p->nlevels; k++)
                if (!(p->lev[k] = malloc(npx * sizeof *p->lev[k])))
                        break;
        if (!p->probe || !p->buf || !p->lev[p->nlevels - 1]) {
                ret = roid_err_set(err, -ENOMEM, "out of memory for %ux%u frames", p->n, p->n);
                goto fail;
        }
        if ((ret = make_probe(p, err)) < 0)
                goto fail;
        p->step = o.step ? o.step : (uint32_t)fmax(1, lround(0.35 * 2 * p->r90));
        uint64_t oh = (uint64_t)(p->ny - 1) * p->step + p->n, ow = (uint64_t)(p->nx - 1) * p->step + p->n;
        if (oh * ow > MAX_OBJ_PX) {
                ret = roid_err_set(err, -EINVAL,
                                   "object of %" PRIu64 "x%" PRIu64 " pixels (scan %" PRIu32 "x%" PRIu32
                                   ", step %" PRIu32 ") is more than %" PRIu64 " pixels",
                                   oh, ow, p->ny, p->nx, p->step, MAX_OBJ_PX);
                goto fail;
        }
        p->oh = (uint32_t)oh;
        p->ow = (uint32_t)ow;
        p->obj = fftw_alloc_complex(oh * ow);
        mm = calloc(oh * ow, sizeof *mm);
        sm = calloc(oh * ow, sizeof *sm);
        if (!p->obj || !mm || !sm) {
                ret = roid_err_set(err, -ENOMEM, "out of memory for a %" PRIu64 "x%" PRIu64 " object", oh, ow);
                goto fail;
        }
        for (size_t i = 0; i < oh * ow; i++)
                p->obj[i] = 1;
        r.s = p->seed ^ 0x5eed0b1ec7ULL;
        draw_main(p, &r, mm);
        draw_small(p, &r, mm, sm);
        if (o.truth[0] && (ret = write_truth(p, o.truth, mm, sm, err)) < 0)
                goto fail;
        p->plan = fftw_plan_dft_2d((int)p->n, (int)p->n, p->buf, p->buf, FFTW_FORWARD, FFTW_ESTIMATE);
        if (!p->plan) {
                ret = roid_err_set(err, -ENOMEM, "FFTW cannot plan %ux%u", p->n, p->n);
                goto fail;
        }
        free(mm);
        free(sm);
        *ret_state = p;
        *ret_period = p->visits ? p->nvisits : (uint64_t)p->ny * p->nx;
        return 0;
fail:
        free(mm);
        free(sm);
        phantom_free(p);
        return ret;
}

/* Object pixel o moved by d steps of `step` pixels, within 0..max. */
static size_t offset_px(size_t o, double d, uint32_t step, size_t max) {
        double v = (double)o + round(d * step);
        return v < 0 ? 0 : v > (double)max ? max : (size_t)v;
}

/* Photon counts of every threshold for one frame into p->lev. */
static void render(phantom *p, uint64_t frame) {
        uint32_t n = p->n, half = n / 2, row, col;
        size_t npx = (size_t)n * n;
        rng r = {p->seed * 0x9e3779b97f4a7c15ULL ^ (frame + 1) * 0xd1b54a32d192ed03ULL};

        scan_point(p, frame, &row, &col);
        size_t oy = (size_t)row * p->step, ox = (size_t)col * p->step;
        if (p->visits) { /* a fly scan's jitter, clamped to the object */
                const sim_visit *v = &p->visits[frame % p->nvisits];
                oy = offset_px(oy, v->dy, p->step, (size_t)(p->ny - 1) * p->step);
                ox = offset_px(ox, v->dx, p->step, (size_t)(p->nx - 1) * p->step);
        }
        const fftw_complex *win = p->obj + oy * p->ow + ox;
        for (uint32_t y = 0; y < n; y++)
                for (uint32_t x = 0; x < n; x++)
                        p->buf[(size_t)y * n + x] = p->probe[(size_t)y * n + x] * win[(size_t)y * p->ow + x];
        fftw_execute(p->plan);
        for (uint32_t y = 0; y < n; y++)
                for (uint32_t x = 0; x < n; x++) {
                        fftw_complex f = p->buf[(size_t)y * n + x];
                        uint64_t c = poisson(&r, p->scale * (creal(f) * creal(f) + cimag(f) * cimag(f)));
                        p->lev[0][(size_t)((y + half) % n) * n + (x + half) % n] =
                                c < UINT32_MAX ? (uint32_t)c : UINT32_MAX;
                }
        /* Each higher threshold loses ~5 % of the photons of the one below;
         * the loss is binomial with a small p, so Poisson is close enough. */
        for (unsigned k = 1; k < p->nlevels; k++)
                for (size_t i = 0; i < npx; i++) {
                        uint64_t lost = poisson(&r, p->lev[k - 1][i] * (1 - KEEP));
                        p->lev[k][i] = lost < p->lev[k - 1][i] ? p->lev[k - 1][i] - (uint32_t)lost : 0;
                }
        p->cached = frame;
        p->have_cached = true;
}

static int phantom_fill(void *state, uint64_t frame_index, unsigned channel, void *pixels, roid_err *err) {
        phantom *p = state;
        size_t npx = (size_t)p->n * p->n;
        uint32_t sat = sim_dtype_max(p->dtype) - 1;
        bool diff = p->nchannels <= 3 && channel == 2;

        if (channel >= p->nchannels)
                return roid_err_set(err, -EINVAL, "channel %u of %u", channel, p->nchannels);
        if (!p->have_cached || p->cached != frame_index)
                render(p, frame_index);
        const uint32_t *a = p->lev[diff ? 0 : channel], *b = diff ? p->lev[1] : NULL;
        for (size_t i = 0; i < npx; i++) {
                uint32_t v = b ? (a[i] > b[i] ? a[i] - b[i] : 0) : a[i];
                if (v > sat)
                        v = sat;
                sim_set_pixel(pixels, p->dtype, i, v);
        }
        return 0;
}

const sim_source_ops sim_source_phantom = {
        .name = "phantom",
        .init = phantom_init,
        .fill = phantom_fill,
        .free = phantom_free,
};
