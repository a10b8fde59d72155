/* test_roi.c - the RoI state's online maps against an independent
 * recomputation.  Refits update the T maps only where frames arrived since
 * the previous refit (and in their 3x3 neighbourhoods) and the |CoM| maps
 * everywhere; this checks, after every refit of a scan that revisits points
 * (fly-scan binning), skips some and fills them in later, that the raw and
 * filtered maps of every modality equal what the definitions give when
 * computed here from the frames fed, in plain loops: mean T and mean CoM per
 * point, CoM standardised with the population mean and deviation over all
 * frames (eq. 2), 3x3 mean over the seen neighbours, log(1 + T), log |CoM| (floor 1e-12).  A
 * frame without counts is left out; a segment with no counts in a frame has
 * the beam centre as its CoM (features.h), and that frame gives the segment
 * no CoM: it is left out of the channel's statistics and of the point's mean;
 * a point none of whose frames gave one has a NaN |CoM|, left out of the 3x3
 * means. */
#include "tap.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "analysis/roi.h"
#include "service/limits.h"

#define NY 23
#define NX 31
#define S  4
#define NC (1 + S)

static uint64_t rng = 88172645463325252ull;

static double unif(void) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (double)(rng >> 11) / 9007199254740992.0;
}

/* Per channel c (0 = whole frame, 1 + s = segment s) and point; ncom: the
 * frames whose region had counts, which alone give a CoM. */
static double sum_t[NC][NY * NX], sum_x[NC][NY * NX], sum_y[NC][NY * NX];
static unsigned cnt[NY * NX], ncom[NC][NY * NX];
/* Every CoM-giving frame's CoM per channel, for the scan-wide statistics. */
#define MAXF 4096
static double fx[NC][MAXF], fy[NC][MAXF];
static uint32_t fpt[NC][MAXF]; /* the frame's point */
static unsigned nf, nfc[NC];
/* The next frame fed is a glitch: totals 2000 times, CoMs far off. */
static bool glitch_next;
static int last_online; /* what roid_roi_add returned for the last frame */
/* Pixels of the frames fed, with a 16-bit full scale; 0: neither (the
 * full-scale rule off). */
static uint64_t frame_pixels;

static void reset_model(void) {
        memset(sum_t, 0, sizeof sum_t), memset(sum_x, 0, sizeof sum_x), memset(sum_y, 0, sizeof sum_y);
        memset(cnt, 0, sizeof cnt), memset(ncom, 0, sizeof ncom), memset(nfc, 0, sizeof nfc);
        nf = 0;
}

/* The beam centre, where features.c puts the CoM of an empty region: far
 * from every CoM fed here (tens of deviations). */
#define BEAM_X 64.0
#define BEAM_Y 64.0
#define DARK   ((1u << S) - 1) /* every segment empty, so T = 0: a dark frame */

/* A frame at (y, x); bit s of `empty`: segment s has no counts (sum 0, CoM
 * at the beam centre), and with every bit the whole frame is dark.  The
 * random draws are the same whatever `empty` is. */
static void feed_empty(roid_roi *r, uint32_t y, uint32_t x, unsigned empty) {
        roid_features f;
        memset(&f, 0, sizeof f);
        f.n_segments = S;
        f.n_pixels = frame_pixels;
        f.full_scale = frame_pixels ? 65534 : 0;
        bool obj = (y - 11.0) * (y - 11.0) + (x - 14.0) * (x - 14.0) < 40;
        double t = obj ? 400 + 40 * unif() : 1000 + 40 * unif();
        f.total = t;
        f.com_x = 50 + (obj ? 3 : 0.3) * unif();
        f.com_y = 60 + (obj ? 3 : 0.3) * unif();
        for (unsigned s = 0; s < S; s++) {
                f.seg[s].sum = t / S * (0.8 + 0.4 * unif());
                f.seg[s].com_x = 50 + 2 * unif();
                f.seg[s].com_y = 60 + 2 * unif();
                if (empty >> s & 1) {
                        f.seg[s].sum = 0;
                        f.seg[s].com_x = BEAM_X;
                        f.seg[s].com_y = BEAM_Y;
                }
        }
        if (empty == DARK) {
                f.total = 0;
                f.com_x = BEAM_X;
                f.com_y = BEAM_Y;
        }
        if (glitch_next) {
                f.total *= 2000;
                f.com_x = f.com_y = 5;
                for (unsigned s = 0; s < S; s++) {
                        f.seg[s].sum *= 2000;
                        f.seg[s].com_x = f.seg[s].com_y = 5;
                }
                glitch_next = false;
        }
        f.bf = 0.6 * f.total;
        f.df = 0.1 * f.total;
        last_online = roid_roi_add(r, y, x, &f);
        nf++;
        /* measured nothing: left out (no counts; pixels averaging over a quarter of full scale) */
        if (f.total == 0 || (f.n_pixels && f.total > 0.25 * (double)f.n_pixels * (double)f.full_scale))
                return;
        size_t i = (size_t)y * NX + x;
        cnt[i]++;
        for (unsigned c = 0; c < NC; c++) {
                double tt = c ? f.seg[c - 1].sum : f.total;
                double xx = c ? f.seg[c - 1].com_x : f.com_x, yy = c ? f.seg[c - 1].com_y : f.com_y;
                sum_t[c][i] += tt;
                if (tt == 0)
                        continue;
                sum_x[c][i] += xx;
                sum_y[c][i] += yy;
                ncom[c][i]++;
                fpt[c][nfc[c]] = (uint32_t)i;
                fx[c][nfc[c]] = xx;
                fy[c][nfc[c]] = yy;
                nfc[c]++;
        }
}

static void feed(roid_roi *r, uint32_t y, uint32_t x) {
        feed_empty(r, y, x, 0);
}

static void stats(const double *v, unsigned n, double *ret_mean, double *ret_sd) {
        double m = 0, q = 0;
        for (unsigned k = 0; k < n; k++)
                m += v[k];
        m /= n;
        for (unsigned k = 0; k < n; k++)
                q += (v[k] - m) * (v[k] - m);
        *ret_mean = m;
        *ret_sd = sqrt(q / n);
}

/* Outliers by their definition (roi.h): mean T above 2 x q99 and above
 * q99 + 8 (q99 - q50) (spread at least 1), quantiles over the points seen,
 * from 64 on.  Exact quantiles here, a histogram's there: the scans here keep
 * every point far from the fence. */
static bool model_out[NY * NX];

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static void model_outliers(void) {
        static double v[NY * NX];
        unsigned n = 0;
        memset(model_out, 0, sizeof model_out);
        for (size_t i = 0; i < NY * NX; i++)
                if (cnt[i])
                        v[n++] = sum_t[0][i] / cnt[i];
        if (n < 64)
                return;
        qsort(v, n, sizeof *v, cmp_double);
        const double q50 = v[n / 2], q99 = v[n - n / 100 - 1];
        const double fence = fmax(2 * q99, q99 + 8 * fmax(q99 - q50, 1));
        for (size_t i = 0; i < NY * NX; i++)
                model_out[i] = cnt[i] && sum_t[0][i] / cnt[i] > fence;
}

/* Channel c's CoM statistics over the frames of points not outliers. */
static void chan_stats(unsigned c, double *mx, double *sx, double *my, double *sy) {
        static double kx[MAXF], ky[MAXF];
        unsigned n = 0;
        for (unsigned k = 0; k < nfc[c]; k++)
                if (!model_out[fpt[c][k]])
                        kx[n] = fx[c][k], ky[n++] = fy[c][k];
        stats(kx, n, mx, sx);
        stats(ky, n, my, sy);
}

/* |CoM| of channel c at point i standardised (eq. 2): the mean over the
 * frames that gave a CoM; NaN when none did. */
static double com_mag(unsigned c, size_t i, double mx, double sx, double my, double sy) {
        if (!ncom[c][i])
                return NAN;
        double a = (sum_x[c][i] / ncom[c][i] - mx) / sx, b = (sum_y[c][i] / ncom[c][i] - my) / sy;
        return sqrt(a * a + b * b);
}

/* The online label of the frame just fed at point i, from the definition:
 * per modality the point's raw value (as check_maps computes it), its log,
 * RoI when nearer the RoI-side centre; returns how many modalities differ
 * from the state's (only modalities with centres). */
static unsigned check_frame_labels(const roid_roi *r, size_t i) {
        unsigned bad = 0;
        for (unsigned c = 0; c < NC; c++) {
                double mx, sx, my, sy;
                chan_stats(c, &mx, &sx, &my, &sy);
                const double raw[2] = {sum_t[c][i] / cnt[i], com_mag(c, i, mx, sx, my, sy)};
                for (unsigned k = 0; k < 2; k++) {
                        const unsigned m = 2 * c + k;
                        const double *cen = roid_roi_centres(r, m); /* [RoI side, other] */
                        if (isnan(cen[0]))
                                continue;
                        const double v = k ? log(fmax(raw[k], 1e-12)) : log1p(raw[k]);
                        /* no |CoM| (NaN): the refit's label is kept, 0 at a first visit, all here */
                        const unsigned want = !isnan(raw[k]) && fabs(v - cen[0]) < fabs(v - cen[1]);
                        bad += roid_roi_labels(r, m)[i] != want;
                }
        }
        return bad;
}

/* Largest difference between the state's maps and the definitions. */
static double check_maps(const roid_roi *r, unsigned *ret_bad_nan) {
        static double raw[2 * NC][NY * NX];
        double worst = 0;
        unsigned bad = 0;
        model_outliers();
        for (unsigned c = 0; c < NC; c++) {
                double mx, sx, my, sy;
                chan_stats(c, &mx, &sx, &my, &sy);
                for (size_t i = 0; i < NY * NX; i++) {
                        if (!cnt[i])
                                continue;
                        raw[2 * c][i] = sum_t[c][i] / cnt[i];
                        raw[2 * c + 1][i] = com_mag(c, i, mx, sx, my, sy);
                }
        }
        for (unsigned m = 0; m < 2 * NC; m++) {
                const double *got_raw = roid_roi_raw_map(r, m), *got_f = roid_roi_filtered(r, m);
                for (int y = 0; y < NY; y++)
                        for (int x = 0; x < NX; x++) {
                                size_t i = (size_t)y * NX + x;
                                if (!cnt[i]) {
                                        bad += !isnan(got_raw[i]) || !isnan(got_f[i]);
                                        continue;
                                }
                                double s = 0;
                                unsigned n = 0;
                                for (int yy = y - 1; yy <= y + 1; yy++)
                                        for (int xx = x - 1; xx <= x + 1; xx++)
                                                if (yy >= 0 && xx >= 0 && yy < NY && xx < NX &&
                                                    cnt[(size_t)yy * NX + xx] && !model_out[(size_t)yy * NX + xx] &&
                                                    !isnan(raw[m][(size_t)yy * NX + xx])) {
                                                        s += raw[m][(size_t)yy * NX + xx];
                                                        n++;
                                                }
                                /* a |CoM| no frame gave: NaN, and left out of the neighbours' means */
                                if (isnan(raw[m][i]) || !n) {
                                        bad += isnan(raw[m][i]) != isnan(got_raw[i]) || (!n) != isnan(got_f[i]);
                                        if (!n || isnan(got_f[i]))
                                                continue;
                                }
                                double want_f = m % 2 ? log(fmax(s / n, 1e-12)) : log1p(s / n);
                                /* T: relative; |CoM|: in units of the deviation (the
                                 * state's running statistics round differently from
                                 * the two-pass ones here); filtered: in log units. */
                                double e1 = isnan(raw[m][i])
                                                    ? 0
                                                    : fabs(got_raw[i] - raw[m][i]) / (m % 2 ? 1 : fabs(raw[m][i]));
                                double e2 = fabs(got_f[i] - want_f);
                                worst = fmax(worst, fmax(e1, e2));
                                if ((isnan(got_raw[i]) && !isnan(raw[m][i])) || isnan(got_f[i]))
                                        worst = INFINITY;
                        }
        }
        *ret_bad_nan = bad;
        return worst;
}

/* A state of ny x nx points, nseg segments, refits every `cadence` frames
 * (0: by hand); NULL if it cannot be made. */
static roid_roi *state(uint32_t ny, uint32_t nx, unsigned nseg, unsigned cadence) {
        roid_roi_params q;
        roid_roi_params_default(&q);
        q.n_segments = nseg;
        q.cadence = cadence;
        roid_roi *r = NULL;
        roid_err err;
        return roid_roi_new(&q, ny, nx, &r, &err) == 0 ? r : NULL;
}

/* A refit, then the maps against the definitions: the worst difference so
 * far, the points whose NaN disagrees, the refits. */
static void refit_check(roid_roi *r, double *worst, unsigned *bad_nan, unsigned *refits) {
        roid_roi_refit(r);
        unsigned b;
        *worst = fmax(*worst, check_maps(r, &b));
        *bad_nan += b;
        (*refits)++;
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

/* Bytes malloc has handed out (heap and mmap'd blocks). */

/* roid_roi_state_bytes is what roid_roi_new allocates (measured by malloc's
 * own account), and max_state_bytes refuses a larger state before any of it
 * is allocated, naming the grid and the limit. */
/* Resident bytes of this process. */
static uint64_t resident_bytes(void) {
        unsigned long size = 0, res = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f) {
                if (fscanf(f, "%lu %lu", &size, &res) != 2)
                        res = 0;
                fclose(f);
        }
        return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* roid_calloc_committed: zeroed, and every page of the block resident at
 * once, the last too (the block does not start on a page boundary). */
static void test_calloc_committed(void) {
        static const size_t sizes[] = {1, 4096, 413690, 1048576, 1052671, 8u << 20};
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
                unsigned char *p = roid_calloc_committed(1, sizes[i]);
                if (!tap_ok(p != NULL, "committed %zu bytes", sizes[i]))
                        continue;
                /* residency before reading: a read maps the zero page, which counts as resident */
                const uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1), e = (uintptr_t)p + sizes[i];
                const size_t pages = (e - a + page - 1) / page;
                unsigned char vec[4096];
                size_t absent = pages <= sizeof vec ? 0 : pages;
                if (pages <= sizeof vec && mincore((void *)a, e - a, vec) == 0)
                        for (size_t k = 0; k < pages; k++)
                                absent += !(vec[k] & 1);
                size_t nonzero = 0;
                for (size_t k = 0; k < sizes[i]; k++)
                        nonzero += p[k] != 0;
                tap_ok(nonzero == 0 && absent == 0, "committed %zu bytes: zeroed, %zu of %zu pages not resident",
                       sizes[i], absent, pages);
                free(p);
        }
}

static void test_state_bytes(void) {
        static const struct {
                uint32_t ny, nx;
                unsigned s;
                bool bf;
        } cases[] = {{40, 50, 1, false}, {200, 300, 8, true}, {64, 1000, 40, true}};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
                roid_roi_params p;
                roid_roi_params_default(&p);
                p.n_segments = cases[i].s;
                p.use_bf = p.use_df = cases[i].bf;
                const uint64_t want = roid_roi_state_bytes(&p, cases[i].ny, cases[i].nx);
                roid_roi *r = NULL;
                roid_err err = {{0}};
                size_t h0 = tap_heap_in_use();
                const uint64_t rss0 = resident_bytes();
                int e = roid_roi_new(&p, cases[i].ny, cases[i].nx, &r, &err);
                size_t used = tap_heap_in_use() - h0;
                const uint64_t rss = resident_bytes() - rss0;
                if (!tap_ok(e == 0, "%u x %u, S %u: created (%s)", cases[i].ny, cases[i].nx, cases[i].s, err.msg))
                        continue;
                /* committed at creation (limits.h), not page by page during the
                 * scan (lazily, 41-44 % were); a small state may reuse pages the
                 * heap already had, a large one some */
                if (want >= (16u << 20))
                        tap_ok(rss >= want - want / 4,
                               "%u x %u, S %u: the state is resident once created (%llu of %llu bytes)", cases[i].ny,
                               cases[i].nx, cases[i].s, (unsigned long long)rss, (unsigned long long)want);
                if (!UNDER_ASAN)
                        /* beyond the arrays, whatever the grid: the struct, the k-means states */
                        tap_ok(used >= want && used <= want + 256 * 1024,
                               "%u x %u, S %u: state_bytes %llu is what new allocates (%zu)", cases[i].ny, cases[i].nx,
                               cases[i].s, (unsigned long long)want, used);
                roid_roi_free(r);

                roid_roi *untouched = (roid_roi *)&err;
                r = untouched;
                p.max_state_bytes = want - 1;
                h0 = tap_heap_in_use();
                e = roid_roi_new(&p, cases[i].ny, cases[i].nx, &r, &err);
                tap_ok(e == -EMSGSIZE && r == untouched && strstr(err.msg, "max_analysis_bytes") &&
                               (UNDER_ASAN || tap_heap_in_use() == h0),
                       "%u x %u, S %u: one byte over max_state_bytes is refused, nothing allocated (%s)", cases[i].ny,
                       cases[i].nx, cases[i].s, err.msg);
                p.max_state_bytes = want;
                e = roid_roi_new(&p, cases[i].ny, cases[i].nx, &r, &err);
                tap_ok(e == 0, "%u x %u, S %u: exactly max_state_bytes is accepted", cases[i].ny, cases[i].nx,
                       cases[i].s);
                if (e == 0)
                        roid_roi_free(r);
        }
        /* other_state_bytes (the daemon's feedback state) counts with the
         * RoI's: a state that fits alone is refused with it, naming both. */
        {
                roid_roi_params q;
                roid_roi_params_default(&q);
                const uint64_t roi = roid_roi_state_bytes(&q, 100, 100);
                q.max_state_bytes = roi + 1000;
                q.other_state_bytes = 1000;
                roid_roi *r = NULL;
                roid_err err = {{0}};
                int e = roid_roi_new(&q, 100, 100, &r, &err);
                tap_ok(e == 0, "RoI state + other state exactly at max_state_bytes: accepted (%s)", err.msg);
                roid_roi_free(r);
                r = NULL;
                q.other_state_bytes = 1001;
                e = roid_roi_new(&q, 100, 100, &r, &err);
                tap_ok(e == -EMSGSIZE && !r && strstr(err.msg, " of feedback and published messages"),
                       "one byte of other state over: refused, naming the feedback state (%s)", err.msg);
                /* the value the message suggests is enough, a MiB less is not */
                q.other_state_bytes = 200u << 20;
                q.max_state_bytes = 100u << 20;
                e = roid_roi_new(&q, 100, 100, &r, &err);
                const char *set = e == -EMSGSIZE ? strstr(err.msg, "set it to ") : NULL;
                const unsigned long long mib = set ? strtoull(set + strlen("set it to "), NULL, 10) : 0;
                q.max_state_bytes = (uint64_t)(mib - 1) << 20;
                const int below = roid_roi_new(&q, 100, 100, &r, &err);
                q.max_state_bytes = (uint64_t)mib << 20;
                e = roid_roi_new(&q, 100, 100, &r, &err);
                tap_ok(set && below == -EMSGSIZE && e == 0 && mib == (roi + (200u << 20) + (1u << 20) - 1) >> 20,
                       "the message's max_analysis_bytes (%lluM) is accepted, a MiB less is not (%s)", mib, err.msg);
                roid_roi_free(r);
                r = NULL;
                q.other_state_bytes = UINT64_MAX;
                e = roid_roi_new(&q, 100, 100, &r, &err);
                tap_ok(e == -EMSGSIZE && !r, "other state near 2^64 does not wrap the sum (%s)", err.msg);
        }
        /* map_copies counts a snapshot by its maps, which is what clone_maps
         * allocates; copy_maps keeps it fresh without allocating, a full
         * copy into it is refused. */
        {
                roid_roi_params q;
                roid_roi_params_default(&q);
                q.n_segments = S;
                const uint32_t ny = 300, nx = 300;
                const uint64_t state = roid_roi_state_bytes(&q, ny, nx);
                q.map_copies = 2;
                const uint64_t maps = (roid_roi_state_bytes(&q, ny, nx) - state) / 2;
                roid_roi *src = NULL, *snap = NULL;
                roid_err err = {{0}};
                if (tap_ok(roid_roi_new(&q, ny, nx, &src, &err) == 0, "300 x 300 state (%s)", err.msg)) {
                        roid_features f;
                        memset(&f, 0, sizeof f);
                        f.n_segments = S;
                        for (uint32_t y = 0; y < ny; y += 7) { /* not feed(): that keeps the main test's sums */
                                f.total = 1000 + y;
                                f.com_x = 50 + 0.01 * y;
                                f.com_y = 60;
                                roid_roi_add(src, y, (y * 13) % nx, &f);
                        }
                        roid_roi_refit(src);
                        size_t h0 = tap_heap_in_use();
                        int e = roid_roi_clone_maps(src, &snap);
                        const size_t used = tap_heap_in_use() - h0;
                        if (tap_ok(e == 0, "clone_maps")) {
                                if (!UNDER_ASAN)
                                        tap_ok(maps < state / 2 && used >= maps && used <= maps + 256 * 1024,
                                               "a snapshot allocates its maps' %.1f MiB (%.1f MiB; the state is "
                                               "%.1f MiB)",
                                               maps / 1048576.0, used / 1048576.0, state / 1048576.0);
                                h0 = tap_heap_in_use();
                                e = roid_roi_copy_maps(snap, src);
                                tap_ok(e == 0 && (UNDER_ASAN || tap_heap_in_use() == h0) &&
                                               memcmp(roid_roi_online_mask(snap), roid_roi_online_mask(src),
                                                      (size_t)ny * nx) == 0 &&
                                               memcmp(roid_roi_counts(snap), roid_roi_counts(src),
                                                      (size_t)ny * nx * sizeof(uint32_t)) == 0,
                                       "copy_maps refreshes it without allocating: counts and online mask equal");
                                tap_ok(roid_roi_copy(snap, src) == -EINVAL && roid_roi_copy(src, snap) == -EINVAL &&
                                               roid_roi_add(snap, 0, 0, &f) == -EINVAL,
                                       "a snapshot takes no full copy, gives none, and takes no frame");
                        }
                        roid_roi_free(snap);
                        roid_roi_free(src);
                }
        }
        roid_roi_params p;
        roid_roi_params_default(&p);
        p.n_segments = 40;
        p.max_state_bytes = (uint64_t)16 << 30;
        roid_roi *r = NULL;
        roid_err err = {{0}};
        tap_ok(roid_roi_new(&p, 4096, 4096, &r, &err) == -EMSGSIZE && strstr(err.msg, "4096 x 4096"),
               "a 4096 x 4096 scan at 40 segments (about 50 GiB) over a 16 GiB bound: %s", err.msg);
}

/* A scan without contrast (every frame alike) has no region of interest:
 * means an ulp apart between points of different frame counts must not
 * start two centres, nor a tie of coinciding centres label every point.
 * 49 frames a point on 7 x 1 gave 7 of 7 before; also with refits at every
 * frame and at 8 segments. */
static void test_no_contrast(void) {
        static const struct {
                unsigned reps, cadence, nseg;
        } cases[] = {{49, 1, 1}, {49, 64, 1}, {49, 1, 8}, {3, 1, 8}, {1, 0, 8}};
        for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
                roid_roi_params q;
                roid_roi_params_default(&q);
                q.n_segments = cases[k].nseg;
                q.cadence = cases[k].cadence;
                roid_roi *r = NULL;
                roid_err err = {{0}};
                if (roid_roi_new(&q, 7, 1, &r, &err) < 0)
                        continue;
                roid_features f;
                memset(&f, 0, sizeof f);
                f.n_segments = q.n_segments;
                f.total = 93623; /* whose mean over 49 frames rounds an ulp off */
                f.com_x = 5.3;
                f.com_y = 4.1;
                for (unsigned s = 0; s < q.n_segments; s++) {
                        f.seg[s].sum = f.total / q.n_segments;
                        f.seg[s].com_x = 5.3;
                        f.seg[s].com_y = 4.1;
                }
                size_t online = 0;
                for (unsigned rep = 0; rep < cases[k].reps; rep++)
                        for (uint32_t i = 0; i < 7; i++)
                                online += roid_roi_add(r, i, 0, &f) > 0;
                roid_roi_finish(r);
                const uint8_t *m = roid_roi_mask(r);
                size_t in = 0;
                for (size_t i = 0; i < 7; i++)
                        in += m[i];
                tap_ok(in == 0 && online == 0,
                       "identical frames, %u a point, cadence %u, S %u: RoI %zu of 7 points, %zu frames labelled RoI "
                       "online",
                       cases[k].reps, cases[k].cadence, cases[k].nseg, in, online);
                roid_roi_free(r);
        }
}

static double gauss(void) {
        return sqrt(-2 * log(1 - unif())) * cos(2 * M_PI * unif());
}

/* Two-cluster k-means cuts any map in two.  While a scan has measured only
 * background (its first lines), or in a modality that sees no object, that
 * cut halves the noise, and the union over modalities used to mark every
 * point seen: 37 % of a phantom scan went by with every point RoI (found by
 * review).  Here a 40 x 40 raster, 4 segments, Poisson-like noise, and an
 * object (a disk of radius 6 around row 28, column 20: 30 % less T, a CoM
 * spread ten times the background's) that only the whole-pattern modalities
 * see: no RoI before the object's rows, the object after. */
static void test_significance(void) {
        enum { ny = 40, nx = 40, ns = 4 };
        roid_roi_params q;
        roid_roi_params_default(&q);
        q.n_segments = ns;
        q.cadence = 16;
        roid_roi *r = NULL;
        roid_err err = {{0}};
        if (!tap_ok(roid_roi_new(&q, ny, nx, &r, &err) == 0, "40 x 40 state (%s)", err.msg))
                return;
        size_t worst_early = 0, seen_early = 0;
        for (uint32_t y = 0; y < ny; y++)
                for (uint32_t x = 0; x < nx; x++) {
                        const bool obj = (y - 28.0) * (y - 28.0) + (x - 20.0) * (x - 20.0) < 36;
                        roid_features f;
                        memset(&f, 0, sizeof f);
                        f.n_segments = ns;
                        f.total = (obj ? 700 : 1000) + 30 * gauss();
                        f.com_x = 50 + (obj ? 1 : 0.1) * gauss();
                        f.com_y = 60 + (obj ? 1 : 0.1) * gauss();
                        for (unsigned s = 0; s < ns; s++) {
                                f.seg[s].sum = f.total / ns + 15 * gauss();
                                f.seg[s].com_x = 50 + 10 * cos(s * M_PI / 2) + 0.2 * gauss();
                                f.seg[s].com_y = 60 + 10 * sin(s * M_PI / 2) + 0.2 * gauss();
                        }
                        roid_roi_add(r, y, x, &f);
                        /* the object's first row is 23: up to row 21 background only */
                        if (y <= 21 && roid_roi_refits(r) > 0) {
                                const uint8_t *on = roid_roi_online_mask(r);
                                size_t in = 0;
                                for (size_t i = 0; i <= (size_t)y * nx + x; i++)
                                        in += on[i];
                                worst_early = in > worst_early ? in : worst_early;
                                seen_early = (size_t)y * nx + x + 1;
                        }
                }
        tap_ok(seen_early > 800 && worst_early == 0,
               "background only (first %zu points, refits every 16 frames): at most %zu points RoI online", seen_early,
               worst_early);
        roid_roi_finish(r);
        const uint8_t *m = roid_roi_mask(r);
        size_t obj_in = 0, obj_n = 0, far_in = 0, far_n = 0;
        for (uint32_t y = 0; y < ny; y++)
                for (uint32_t x = 0; x < nx; x++) {
                        const double d2 = (y - 28.0) * (y - 28.0) + (x - 20.0) * (x - 20.0);
                        if (d2 < 36)
                                obj_n++, obj_in += m[y * nx + x];
                        else if (d2 > 9 * 9)
                                far_n++, far_in += m[y * nx + x];
                }
        tap_ok(obj_in * 10 >= obj_n * 9 && far_in * 100 <= far_n,
               "finished: %zu of %zu object points RoI, %zu of %zu points 3 steps clear of it", obj_in, obj_n, far_in,
               far_n);
        /* the segments' CoMs saw no object: their modalities label nothing, and say so */
        unsigned silent = 0;
        for (unsigned k = 3; k < roid_roi_n_modalities(r); k += 2) {
                const double *c = roid_roi_centres(r, k);
                const uint8_t *lab = roid_roi_labels(r, k);
                size_t n = 0;
                for (size_t i = 0; i < (size_t)ny * nx; i++)
                        n += lab[i] == 1;
                silent += n == 0 && isnan(c[0]) && isnan(c[1]);
        }
        tap_ok(silent == ns, "%u of %u segment |CoM| modalities (no object there) label nothing, centres NaN", silent,
               ns);
        const double *c0 = roid_roi_centres(r, 0), *c1 = roid_roi_centres(r, 1);
        tap_ok(c0[0] < c0[1] && c1[0] > c1[1], "T and |CoM| split: RoI-side centres %.3g (T), %.3g (|CoM|)", c0[0],
               c1[0]);
        roid_roi_free(r);
}

/* roid_roi_finish takes seconds on a large grid (15 s at 1024 x 1024 and 8
 * segments), longer than the daemon's watchdog_stall: it calls the progress
 * hook after every step and every Lloyd iteration, which the daemon counts
 * as progress (found by review: pings stopped in the middle of a finish with
 * frames queued). */
/* Small phase particles deflect the beam: the bright-field disk shifts, so
 * some segments gain intensity where others lose it, and no T changes for
 * the whole pattern.  Here frames are rendered (48 x 48 uint16, a disk of
 * radius 9 at 150 counts a pixel on 0.3 outside, Poisson noise) on a 40 x 40
 * raster with three phase particles whose deflection, up to 1.5 pixels,
 * fades over about two scan steps, and reduced by roid_features_compute.  A
 * segment whose T rises over a particle splits into the few bright points
 * and the background, and "low T_s is RoI" marked the whole background: 1,600
 * of 1,600 points at 8 segments (found by review).  The RoI must stay near
 * the particles, online and final, and find them. */
#define PH_N   40
#define PH_DET 48
static double ph_poisson(double lam) {
        if (lam > 30) {
                double v = floor(lam + sqrt(lam) * gauss() + 0.5);
                return v > 0 ? v : 0;
        }
        double l = exp(-lam), p = 1;
        unsigned k = 0;
        do {
                k++;
                p *= unif();
        } while (p > l);
        return k - 1;
}

/* Features of every point of the phase-particle scan at 1 and 8 segments. */
static roid_features ph_feat[2][PH_N * PH_N];
static bool ph_truth[PH_N * PH_N], ph_strong[PH_N * PH_N];

static bool ph_render(void) {
        static const double part[3][2] = {{8, 30}, {31, 29}, {33, 9}}; /* row, column */
        static uint16_t pix[PH_DET * PH_DET];
        const unsigned segs[2] = {1, 8};
        roid_geometry geo[2];
        roid_err err = {{0}};
        for (int k = 0; k < 2; k++) {
                roid_geometry_params gp;
                roid_geometry_params_default(&gp);
                gp.rows = gp.cols = PH_DET;
                gp.dtype = ROID_DT_U16;
                gp.center_x = gp.center_y = PH_DET / 2;
                gp.n_segments = segs[k];
                if (roid_geometry_init(&geo[k], &gp, &err) < 0)
                        return false;
        }
        bool ok = true;
        for (uint32_t y = 0; y < PH_N; y++)
                for (uint32_t x = 0; x < PH_N; x++) {
                        double dx = 0, dy = 0;
                        for (int q = 0; q < 3; q++) {
                                const double ey = ((double)y - part[q][0]) / 1.2, ex = ((double)x - part[q][1]) / 1.2;
                                const double g = 1.5 * exp(-0.5 * (ex * ex + ey * ey));
                                dx += g * ex, dy += g * ey;
                        }
                        const double d = hypot(dx, dy);
                        const size_t i = (size_t)y * PH_N + x;
                        ph_truth[i] = d >= 0.25;
                        ph_strong[i] = d >= 0.75;
                        for (uint32_t r = 0; r < PH_DET; r++)
                                for (uint32_t c = 0; c < PH_DET; c++) {
                                        /* the disk's share of the pixel, from 4 x 4 samples */
                                        unsigned in = 0;
                                        for (int sy = 0; sy < 4; sy++)
                                                for (int sx = 0; sx < 4; sx++) {
                                                        const double u = (double)c + (sx - 1.5) / 4 - PH_DET / 2 - dx;
                                                        const double v = (double)r + (sy - 1.5) / 4 - PH_DET / 2 - dy;
                                                        in += u * u + v * v < 81;
                                                }
                                        pix[r * PH_DET + c] = (uint16_t)ph_poisson(0.3 + 150.0 * in / 16);
                                }
                        const roid_frame f = {.dtype = ROID_DT_U16, .rows = PH_DET, .cols = PH_DET, .pixels = pix};
                        for (int k = 0; k < 2; k++)
                                ok = roid_features_compute(&geo[k], &f, &ph_feat[k][i], &err) == 0 && ok;
                }
        for (int k = 0; k < 2; k++)
                roid_geometry_free(&geo[k]);
        return ok;
}

/* The phase-particle scan in raster order into a new state; the largest
 * online RoI along the way into *ret_online_max. */
static roid_roi *ph_scan(int k, unsigned cadence, unsigned *ret_online_max) {
        roid_roi_params p;
        roid_roi_params_default(&p);
        p.n_segments = k ? 8 : 1;
        p.cadence = cadence;
        roid_roi *r;
        roid_err err;
        if (roid_roi_new(&p, PH_N, PH_N, &r, &err) < 0)
                return NULL;
        unsigned online_max = 0;
        for (size_t i = 0; i < PH_N * PH_N; i++) {
                roid_roi_add(r, (uint32_t)(i / PH_N), (uint32_t)(i % PH_N), &ph_feat[k][i]);
                const uint8_t *on = roid_roi_online_mask(r);
                unsigned n_on = 0;
                for (size_t j = 0; j <= i; j++)
                        n_on += on[j] != 0;
                online_max = n_on > online_max ? n_on : online_max;
        }
        roid_roi_finish(r);
        *ret_online_max = online_max;
        return r;
}

static void test_phase_particles(void) {
        if (!tap_ok(ph_render(), "phase particles: every frame rendered and reduced"))
                return;
        unsigned truth = 0, strong = 0;
        for (size_t i = 0; i < PH_N * PH_N; i++)
                truth += ph_truth[i], strong += ph_strong[i];
        for (int k = 0; k < 2; k++) {
                unsigned online_max;
                roid_roi *r = ph_scan(k, 64, &online_max);
                if (!tap_ok(r != NULL, "phase particles, S = %u: a state", k ? 8 : 1))
                        continue;
                const uint8_t *m = roid_roi_mask(r);
                unsigned n = 0, found = 0;
                for (size_t i = 0; i < PH_N * PH_N; i++) {
                        n += m[i] != 0;
                        found += ph_strong[i] && m[i];
                }
                tap_ok(n <= 4 * truth && online_max <= 4 * truth,
                       "phase particles, S = %u: the RoI stays near the %u deflecting points: %u final, at most %u "
                       "online",
                       k ? 8 : 1, truth, n, online_max);
                tap_ok(2 * found >= strong,
                       "phase particles, S = %u: the RoI holds %u of the %u most deflecting points", k ? 8 : 1, found,
                       strong);
                roid_roi_free(r);
        }
}

/* The final clustering of each modality is the map's, not the online
 * history's: Lloyd from the online centres can end in a poor local optimum,
 * and the final labels then depended on the cadence of the online refits
 * (found by review).  The same frames at four cadences give the same final
 * labels in every modality. */
static void test_final_independent_of_cadence(void) {
        static const unsigned cad[] = {0, 16, 64, 200};
        roid_roi *r[4];
        unsigned online_max;
        bool ok = true;
        for (int c = 0; c < 4; c++)
                ok = (r[c] = ph_scan(1, cad[c], &online_max)) != NULL && ok;
        if (!tap_ok(ok, "cadences: states"))
                return;
        const unsigned nm = roid_roi_n_modalities(r[0]);
        for (int c = 1; c < 4; c++) {
                unsigned differ = 0, worst_m = 0, worst = 0;
                for (unsigned m = 0; m < nm; m++) {
                        const uint8_t *a = roid_roi_labels(r[0], m), *b = roid_roi_labels(r[c], m);
                        unsigned d = 0;
                        for (size_t i = 0; i < PH_N * PH_N; i++)
                                d += a[i] != b[i];
                        differ += d != 0;
                        if (d > worst)
                                worst = d, worst_m = m;
                }
                tap_ok(differ == 0,
                       "8 segments, cadence %u against 0: final labels alike in every modality (%u of %u differ; at "
                       "most %u points, modality %u)",
                       cad[c], differ, nm, worst, worst_m);
        }
        for (int c = 0; c < 4; c++)
                roid_roi_free(r[c]);
}

static unsigned beats;
static void count_beat(void *ctx) {
        (void)ctx;
        beats++;
}

static void test_finish_heartbeat(void) {
        roid_roi_params q;
        roid_roi_params_default(&q);
        q.n_segments = S;
        q.cadence = 0;
        q.progress = count_beat;
        roid_roi *r = NULL;
        roid_err err;
        if (!tap_ok(roid_roi_new(&q, NY, NX, &r, &err) == 0, "state with a progress hook"))
                return;
        reset_model();
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++)
                        feed(r, y, x);
        tap_ok(beats == 0, "no heartbeat while frames are added (%u)", beats);
        roid_roi_finish(r);
        const unsigned nmod = roid_roi_n_modalities(r);
        tap_ok(beats > 2 * nmod, "finish: %u heartbeats (%u modalities, each after its Lloyd iterations too)", beats,
               nmod);
        roid_roi_free(r);
}

/* A large object of weak contrast, which two-cluster k-means segments well:
 * half a 48 x 48 map at 3 % less T, 0.95 deviations of Poisson noise a
 * frame.  The likelihood test alone rejected its cut in every one of 20
 * scans (it pays n H(1/2) for the labels; found by review); the share of the
 * variance the cut explains takes it.  Three scans. */
static void test_weak_object(void) {
        enum { n = 48 };
        unsigned labelled = 0;
        double worst = 1;
        for (unsigned sd = 0; sd < 3; sd++) {
                roid_roi_params q;
                roid_roi_params_default(&q);
                q.n_segments = 1;
                roid_roi *r = NULL;
                roid_err err;
                if (roid_roi_new(&q, n, n, &r, &err) < 0)
                        continue;
                rng = 0x9E3779B97F4A7C15ull + 7919ull * sd;
                for (uint32_t y = 0; y < n; y++)
                        for (uint32_t x = 0; x < n; x++) {
                                const bool obj = (y - 24.0) * (y - 24.0) + (x - 24.0) * (x - 24.0) < 19.2 * 19.2;
                                roid_features f;
                                memset(&f, 0, sizeof f);
                                f.n_segments = 1;
                                const double mu = obj ? 970 : 1000;
                                f.total = mu + sqrt(mu) * gauss();
                                f.com_x = 50 + 0.1 * gauss();
                                f.com_y = 60 + 0.1 * gauss();
                                roid_roi_add(r, y, x, &f);
                        }
                roid_roi_finish(r);
                const uint8_t *l = roid_roi_labels(r, 0);
                size_t in = 0, un = 0;
                for (uint32_t y = 0; y < n; y++)
                        for (uint32_t x = 0; x < n; x++) {
                                const bool obj = (y - 24.0) * (y - 24.0) + (x - 24.0) * (x - 24.0) < 19.2 * 19.2;
                                in += l[y * n + x] == 1 && obj;
                                un += l[y * n + x] == 1 || obj;
                        }
                labelled += !isnan(roid_roi_centres(r, 0)[0]);
                worst = fmin(worst, un ? (double)in / (double)un : 0);
                roid_roi_free(r);
        }
        tap_ok(labelled == 3 && worst > 0.6,
               "weak large object (half the map, 0.95 sigma): T labels in %u of 3 scans, "
               "IoU >= %.2f",
               labelled, worst);
}

/* Dark frames (shutter closed, beam off: T = 0, every segment empty, every
 * CoM at the beam centre, tens of deviations from the scan's) at five
 * background points far from the object.  Their CoMs used to enter the
 * scan-wide statistics and the points' means: each dark point stood out in
 * every |CoM| modality, the 3 x 3 filter spread it over its neighbours, and
 * the RoI gained them (found by review); then, given |CoM| 0, a block of
 * dark lines sat at log(1e-12) and every lit point went to the RoI side of
 * every |CoM| modality (second review).  Dark frames now measure nothing:
 * the scan's final mask is the same as without them, and its maps are the
 * definitions' with the dark points unmeasured. */
static const uint32_t dark_pts[][2] = {{1, 2}, {3, 27}, {20, 3}, {19, 26}, {0, 15}};

/* dark: the five points; dark_rows: rows [row0, row0 + dark_rows) too. */
/* A state for a scan of feed()'s frames, refits every 16, the draws from
 * `seed`, the model cleared; NULL if it cannot be made. */
static roid_roi *scan_start(uint64_t seed) {
        roid_roi *r = state(NY, NX, S, 16);
        rng = seed;
        reset_model();
        return r;
}

static roid_roi *dark_scan(bool dark, uint32_t row0, uint32_t dark_rows) {
        roid_roi *r = scan_start(0x9E3779B97F4A7C15ull);
        if (!r)
                return NULL;
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        unsigned e = 0;
                        for (size_t k = 0; dark && k < sizeof dark_pts / sizeof *dark_pts; k++)
                                e = dark_pts[k][0] == y && dark_pts[k][1] == x ? DARK : e;
                        if (y >= row0 && y < row0 + dark_rows)
                                e = DARK;
                        feed_empty(r, y, x, e);
                }
        roid_roi_finish(r);
        return r;
}

static void test_dark_frames(void) {
        roid_roi *clean = dark_scan(false, 0, 0);
        roid_roi *dark = dark_scan(true, 0, 0); /* last: the model's sums are the dark scan's */
        if (!tap_ok(clean && dark, "two 23 x 31 scans"))
                goto out;
        unsigned b;
        const double worst = check_maps(dark, &b);
        tap_ok(worst < 1e-9 && b == 0,
               "dark frames: the maps are the definitions' with their CoMs left out (worst difference %.3g)", worst);
        const uint8_t *mc = roid_roi_mask(clean), *md = roid_roi_mask(dark);
        size_t nc = 0, nd = 0, obj = 0, nobj = 0, near = 0, moved = 0, edge = 0;
        for (size_t i = 0; i < NY * NX; i++) {
                const int y = (int)(i / NX), x = (int)(i % NX);
                const bool o = (y - 11) * (y - 11) + (x - 14) * (x - 14) < 40;
                nc += mc[i], nd += md[i], nobj += o, obj += mc[i] && o;
                if (mc[i] == md[i])
                        continue;
                bool by_dark = false;
                for (size_t k = 0; k < sizeof dark_pts / sizeof *dark_pts; k++)
                        by_dark |= abs(y - (int)dark_pts[k][0]) <= 1 && abs(x - (int)dark_pts[k][1]) <= 1;
                /* Elsewhere a point may flip only by sitting at a cut: the
                 * dark points' own values (T 0, |CoM| 0) move the centres by
                 * a hair.  Every modality whose label differs must hold it
                 * within 0.02 (log units) of the midpoint of its centres. */
                bool at_cut = true;
                for (unsigned m = 0; m < 2 * NC; m++) {
                        if (roid_roi_labels(clean, m)[i] == roid_roi_labels(dark, m)[i])
                                continue;
                        const double *cc = roid_roi_centres(clean, m), *cd = roid_roi_centres(dark, m);
                        const double dc = fabs(roid_roi_filtered(clean, m)[i] - 0.5 * (cc[0] + cc[1]));
                        const double dd = fabs(roid_roi_filtered(dark, m)[i] - 0.5 * (cd[0] + cd[1]));
                        at_cut &= fmin(dc, dd) < 0.02; /* false when either side labels nothing (NaN) */
                }
                near += by_dark;
                moved += !by_dark && !at_cut;
                edge += !by_dark && at_cut;
        }
        tap_ok(obj == nobj && nc < 2 * nobj, "clean scan: RoI %zu points, all %zu object points among them", nc, nobj);
        tap_ok(near == 0 && moved == 0 && edge <= 2,
               "%zu dark frames add no RoI point: %zu points with them, %zu without; %zu differ in their 3 x 3 "
               "neighbourhoods, %zu elsewhere, %zu more at a cut",
               sizeof dark_pts / sizeof *dark_pts, nd, nc, near, moved, edge);
        /* Blocks of dark lines, mid-scan and where the shutter opens late. */
        for (uint32_t row0 = 0; row0 <= 5; row0 += 5) {
                roid_roi *rows = dark_scan(false, row0, 2);
                if (!rows)
                        continue;
                const uint8_t *mr = roid_roi_mask(rows);
                const uint32_t *cr = roid_roi_counts(rows);
                size_t n = 0, o = 0, lit = 0, extra = 0;
                for (size_t k = 0; k < NY * NX; k++) {
                        const int y = (int)(k / NX), x = (int)(k % NX);
                        const bool in_obj = (y - 11) * (y - 11) + (x - 14) * (x - 14) < 40;
                        n += mr[k];
                        lit += in_obj && cr[k];
                        o += mr[k] && in_obj;
                        extra += mr[k] && !mc[k];
                }
                tap_ok(o == lit && extra <= 2 && roid_roi_dark_frames(rows) == 2 * NX,
                       "dark rows %u-%u: RoI %zu points (clean %zu), all %zu measured object points, %zu not in the "
                       "clean RoI",
                       row0, row0 + 1, n, nc, lit, extra);
                roid_roi_free(rows);
        }
out:
        roid_roi_free(clean);
        roid_roi_free(dark);
}

/* A point inside the object whose segment 0 never has counts: its |CoM_0|
 * is NaN, its filtered value its neighbours' mean, so a refit labels it with
 * the object; a new frame there (a fly scan's revisit) keeps that label
 * online instead of dropping it to 0 until the next refit (found by review). */
static void test_nan_point_label(void) {
        enum { n = 24, ns = 2 };
        roid_roi *r = state(n, n, ns, 64);
        if (!tap_ok(r != NULL, "24 x 24 state, 2 segments"))
                return;
        const uint32_t py = 12, px = 12;
        rng = 99;
        for (int pass = 0; pass < 2; pass++)
                for (uint32_t y = 0; y < n; y++)
                        for (uint32_t x = 0; x < n; x++) {
                                if (pass && (y != py || x != px))
                                        continue;
                                const bool obj = (y - 12.0) * (y - 12.0) + (x - 12.0) * (x - 12.0) < 30;
                                roid_features f;
                                memset(&f, 0, sizeof f);
                                f.n_segments = ns;
                                f.total = 1000 + 10 * unif();
                                f.com_x = 100 + unif();
                                f.com_y = 100 + unif();
                                for (unsigned s = 0; s < ns; s++) {
                                        f.seg[s].sum = f.total / ns;
                                        f.seg[s].com_x = 100 + unif() + (obj && s == 0 ? 8 : 0);
                                        f.seg[s].com_y = 100 + unif();
                                }
                                if (y == py && x == px) {
                                        f.seg[0].sum = 0;
                                        f.seg[0].com_x = f.seg[0].com_y = 64;
                                        f.seg[1].sum = f.total;
                                }
                                if (pass) /* the revisit: after the last refit */
                                        roid_roi_refit(r);
                                const uint8_t before = roid_roi_labels(r, 3)[py * n + px];
                                const int l = roid_roi_add(r, y, x, &f);
                                if (pass)
                                        tap_ok(before == 1 && roid_roi_labels(r, 3)[py * n + px] == 1 && l == 1 &&
                                                       isnan(roid_roi_raw_map(r, 3)[py * n + px]),
                                               "a point without |CoM_0|, labelled RoI by the refit (%u), keeps it when "
                                               "a frame arrives (%u, returned %d)",
                                               before, roid_roi_labels(r, 3)[py * n + px], l);
                        }
        roid_roi_free(r);
}

/* Regions empty in some frames only: segment 1 empty at every fifth point
 * and in the second frame of revisited points (so empty in one frame of two,
 * or in both), segment 3 at every seventh; point (7, 5) has only dark frames,
 * point (15, 20) one dark frame and one lit.  After every refit the maps are
 * the definitions': a channel's |CoM| is the mean over the frames whose region
 * had counts, standardised over those frames only, NaN at a point where none
 * had (left out of the neighbours' means); T counts every lit frame; dark
 * frames are left out. */
static void test_empty_regions(void) {
        roid_roi *r = state(NY, NX, S, 0);
        if (!tap_ok(r != NULL, "state for empty regions"))
                return;
        reset_model();
        double worst = 0;
        unsigned bad_nan = 0, refits = 0;
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        const size_t i = (size_t)y * NX + x;
                        const bool dark = (y == 7 && x == 5) || (y == 15 && x == 20);
                        feed_empty(r, y, x, dark ? DARK : (i % 5 == 0 ? 1u << 1 : 0) | (i % 7 == 0 ? 1u << 3 : 0));
                        if (y == 7 && x == 5)
                                feed_empty(r, y, x, DARK);
                        else if (x % 6 == 2 || (y == 15 && x == 20))
                                feed_empty(r, y, x, 1u << 1);
                        if (nf % 17 == 0)
                                refit_check(r, &worst, &bad_nan, &refits);
                }
        roid_roi_finish(r);
        unsigned b;
        worst = fmax(worst, check_maps(r, &b));
        bad_nan += b;
        size_t part = 0, none = 0;
        for (size_t i = 0; i < NY * NX; i++) {
                part += ncom[2][i] > 0 && ncom[2][i] < cnt[i];
                none += ncom[2][i] == 0;
        }
        tap_ok(refits > 30 && part > 20 && none > 20 && worst < 1e-9 && bad_nan == 0,
               "segment 1 empty in some frames of %zu points, in all of %zu: maps match the definitions after %u "
               "refits and finish (worst difference %.3g)",
               part, none, refits, worst);
        const size_t i = 7 * NX + 5;
        unsigned nan = 0, unseen = 0;
        for (unsigned m = 0; m < 2 * NC; m++) {
                nan += isnan(roid_roi_raw_map(r, m)[i]) && isnan(roid_roi_filtered(r, m)[i]);
                unseen += roid_roi_labels(r, m)[i] == ROID_ROI_UNSEEN;
        }
        tap_ok(roid_roi_counts(r)[i] == 0 && nan == 2 * NC && unseen == 2 * NC && roid_roi_dark_frames(r) == 3 &&
                       roid_roi_counts(r)[15 * NX + 20] == 1,
               "a point of dark frames only: unmeasured (%u frames, NaN in %u of %d modalities, unseen in %u); "
               "%" PRIu64 " dark frames left out",
               roid_roi_counts(r)[i], nan, 2 * NC, unseen, roid_roi_dark_frames(r));
        roid_roi_free(r);
}

/* Glitches: frames of 2000 times the counts with their CoMs tens of
 * deviations off (a detector frame near full scale), at four points, two in
 * the object and two in the background, 0.56 % of the scan.  Without the
 * outlier rule the T map's cut was {glitches and their neighbours} against
 * the rest, all RoI, and their CoMs inflated the statistics of every |CoM|.
 * With it the four points are outliers, the maps are the definitions' (the
 * outliers left out of the 3 x 3 means and of the statistics), and the mask
 * is the clean scan's. */
static const uint32_t glitch_pts[][2] = {{11, 14}, {9, 12}, {2, 25}, {20, 5}};

/* A scan with glitches at the n points pts (none: NULL), online mask of the
 * last frame into online_out (NY * NX bytes) when not NULL. */
static roid_roi *glitch_scan_at(const uint32_t (*pts)[2], size_t n, uint8_t *online_out) {
        roid_roi *r = scan_start(0x2545F4914F6CDD1Dull);
        if (!r)
                return NULL;
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        for (size_t k = 0; k < n; k++)
                                glitch_next |= pts[k][0] == y && pts[k][1] == x;
                        const bool g = glitch_next;
                        feed(r, y, x);
                        /* The last glitch, fed after the fence is known: online
                         * its point keeps the refit's label (none: 0), where its
                         * far CoM gave it the RoI side of every |CoM|. */
                        if (g && y == 20 && pts == glitch_pts)
                                tap_ok(last_online == 0, "a glitch fed at frame %u is labelled 0 online (%d)", nf,
                                       last_online);
                }
        if (online_out)
                memcpy(online_out, roid_roi_online_mask(r), NY * NX);
        roid_roi_finish(r);
        return r;
}

static roid_roi *glitch_scan(bool glitches) {
        return glitch_scan_at(glitches ? glitch_pts : NULL, glitches ? sizeof glitch_pts / sizeof *glitch_pts : 0,
                              NULL);
}

/* The outliers of a scan of T(y, x, draw) with CoMs of noise; -1 if no state. */
static long scan_outliers(double (*t)(uint32_t y, uint32_t x)) {
        roid_roi *r = state(NY, NX, 1, 16);
        if (!r)
                return -1;
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        roid_features f;
                        memset(&f, 0, sizeof f);
                        f.n_segments = 1;
                        f.total = t(y, x);
                        f.com_x = 50 + unif();
                        f.com_y = 60 + unif();
                        f.seg[0].sum = f.total;
                        f.seg[0].com_x = f.com_x, f.seg[0].com_y = f.com_y;
                        roid_roi_add(r, y, x, &f);
                }
        roid_roi_finish(r);
        long n = roid_roi_outlier_points(r);
        roid_roi_free(r);
        return n;
}

static double poisson(double lam) {
        double l = exp(-lam), p = 1;
        unsigned k = 0;
        do
                k++, p *= unif();
        while (p > l);
        return k - 1;
}

/* An absorber over all but the first and last rows and columns (87 % of the
 * points), the background 3 times brighter. */
static double t_majority(uint32_t y, uint32_t x) {
        const bool bg = y == 0 || x == 0 || y == NY - 1 || x == NX - 1;
        return (bg ? 3000 : 1000) * (1 + 0.01 * (unif() - 0.5));
}
/* 3 counts a frame: T 0 frames are left out as dark. */
static double t_low_dose(uint32_t y, uint32_t x) {
        (void)y, (void)x;
        return poisson(3);
}
/* A free-electron laser's pulses: gamma-distributed energy, 20 % rms. */
static double t_sase(uint32_t y, uint32_t x) {
        (void)y, (void)x;
        double g = 0;
        for (int k = 0; k < 25; k++)
                g -= log(1 - unif());
        return 1e5 * g / 25;
}
/* A refill two rows before the end: 1.3 times the beam. */
static double t_refill(uint32_t y, uint32_t x) {
        (void)x;
        return (y >= NY - 2 ? 1.3e4 : 1e4) * (1 + 0.01 * (unif() - 0.5));
}

static void test_outliers(void) {
        const uint64_t keep = rng; /* the other tests' draws stay what they were */
        roid_roi *clean = glitch_scan(false);
        roid_roi *dirty = glitch_scan(true); /* last: the model's sums are the glitchy scan's */
        roid_roi *snap = NULL;
        if (!tap_ok(clean && dirty && roid_roi_clone_maps(dirty, &snap) == 0, "two 23 x 31 scans and a snapshot"))
                goto out;
        const size_t ng = sizeof glitch_pts / sizeof *glitch_pts;
        const uint8_t *o = roid_roi_outliers(dirty);
        size_t want = 0, other = 0;
        for (size_t i = 0; i < NY * NX; i++) {
                bool g = false;
                for (size_t k = 0; k < ng; k++)
                        g |= i == (size_t)glitch_pts[k][0] * NX + glitch_pts[k][1];
                want += g && o[i] == 1;
                other += !g && o[i] != 0;
        }
        tap_ok(roid_roi_outlier_points(dirty) == ng && want == ng && other == 0 &&
                       roid_roi_outlier_points(clean) == 0 && isfinite(roid_roi_outlier_fence(clean)),
               "the %zu glitches are the outliers (%u; %zu of them, %zu others), the clean scan has none (%u)", ng,
               roid_roi_outlier_points(dirty), want, other, roid_roi_outlier_points(clean));
        tap_ok(roid_roi_outlier_points(snap) == ng && memcmp(roid_roi_outliers(snap), o, NY * NX) == 0,
               "a snapshot of the maps has them too");
        unsigned b;
        const double worst = check_maps(dirty, &b);
        tap_ok(worst < 1e-9 && b == 0,
               "the maps are the definitions' with the outliers left out of the means and statistics (worst %.3g)",
               worst);
        const uint8_t *mc = roid_roi_mask(clean), *md = roid_roi_mask(dirty);
        size_t diff = 0, nc = 0, obj = 0, nobj = 0;
        for (size_t i = 0; i < NY * NX; i++) {
                const int y = (int)(i / NX), x = (int)(i % NX);
                const bool in = (y - 11) * (y - 11) + (x - 14) * (x - 14) < 40;
                diff += mc[i] != md[i], nc += mc[i], nobj += in, obj += in && md[i];
        }
        tap_ok(diff == 0 && obj == nobj && nc < 2 * nobj,
               "the mask with glitches is the clean one: %zu points differ; RoI %zu points, all %zu object points",
               diff, nc, nobj);
        /* Scans that must have none. */
        const struct {
                const char *what;
                double (*t)(uint32_t, uint32_t);
        } legit[] = {{"an absorber over 87 % of the scan, the background 3 times brighter", t_majority},
                     {"3 counts a frame (Poisson)", t_low_dose},
                     {"SASE pulses, 20 % rms", t_sase},
                     {"a refill raising the beam 30 % two rows before the end", t_refill}};
        for (size_t k = 0; k < sizeof legit / sizeof *legit; k++) {
                const long n = scan_outliers(legit[k].t);
                tap_ok(n == 0, "no outliers in %s (%ld)", legit[k].what, n);
        }
out:
        roid_roi_free(snap);
        roid_roi_free(clean);
        roid_roi_free(dirty);
        rng = keep;
}

/* Frames whose pixels average more than a quarter of full scale are left
 * out on arrival, whatever the scan's statistics: one at the third frame
 * (before any fence: the point rule needs 64 points) and a burst over 2 % of
 * the scan, which the point rule (at most 1 % outliers) would not judge.
 * Their points stay unmeasured, the maps are the definitions' without them,
 * and the masks, final and online, are the clean scan's but there. */
static void test_glitch_frames(void) {
        static uint32_t pts[15][2] = {{0, 2}};
        for (uint32_t k = 1; k < 15; k++)
                pts[k][0] = 12, pts[k][1] = k - 1;
        const uint64_t keep = rng;
        static uint8_t on_clean[NY * NX], on_dirty[NY * NX];
        frame_pixels = 40; /* T 400-1040: 10-26 counts a pixel; a glitch 2000 times that */
        roid_roi *clean = glitch_scan_at(NULL, 0, on_clean);
        roid_roi *dirty = glitch_scan_at((const uint32_t(*)[2])pts, 15, on_dirty);
        frame_pixels = 0;
        if (!tap_ok(clean && dirty, "two scans with full-scale glitches or none"))
                goto out;
        const uint32_t *cnt_d = roid_roi_counts(dirty);
        const uint8_t *mc = roid_roi_mask(clean), *md = roid_roi_mask(dirty);
        size_t unmeasured = 0, elsewhere = 0, online_elsewhere = 0, online_n = 0, off_edge = 0;
        for (size_t i = 0; i < NY * NX; i++) {
                bool g = false;
                for (size_t k = 0; k < 15; k++)
                        g |= i == (size_t)pts[k][0] * NX + pts[k][1];
                unmeasured += g && cnt_d[i] == 0;
                /* a glitch's neighbours lose it from their 3 x 3 mean */
                bool near = false;
                for (size_t k = 0; k < 15; k++)
                        near |= abs((int)(i / NX) - (int)pts[k][0]) <= 1 && abs((int)(i % NX) - (int)pts[k][1]) <= 1;
                elsewhere += !near && mc[i] != md[i];
                /* 15 points fewer move the cuts a little: only at the object's edge may a point flip */
                const int dy = (int)(i / NX) - 11, dx = (int)(i % NX) - 14;
                off_edge += !near && mc[i] != md[i] && abs(dy * dy + dx * dx - 40) > 15;
                online_elsewhere += !near && on_clean[i] != on_dirty[i];
                online_n += on_dirty[i];
        }
        tap_ok(roid_roi_glitch_frames(dirty) == 15 && roid_roi_glitch_frames(clean) == 0 && unmeasured == 15 &&
                       roid_roi_outlier_points(dirty) == 0,
               "15 glitch frames left out (%llu), their points unmeasured (%zu), no outliers (%u)",
               (unsigned long long)roid_roi_glitch_frames(dirty), unmeasured, roid_roi_outlier_points(dirty));
        unsigned b;
        const double worst = check_maps(dirty, &b);
        tap_ok(worst < 1e-9 && b == 0, "the maps are the definitions' without the glitch frames (worst %.3g)", worst);
        tap_ok(elsewhere <= 4 && off_edge == 0 && online_elsewhere <= 4 && online_n > 100,
               "final and online masks are the clean scan's away from the glitches but at the object's edge (%zu, "
               "%zu differ, %zu off the edge; online %zu points)",
               elsewhere, online_elsewhere, off_edge, online_n);
out:
        roid_roi_free(clean);
        roid_roi_free(dirty);
        rng = keep;
}

int main(void) {
        test_calloc_committed();
        test_glitch_frames();
        test_outliers();
        test_phase_particles();
        test_final_independent_of_cadence();
        test_finish_heartbeat();
        test_nan_point_label();
        test_weak_object();
        test_dark_frames();
        test_empty_regions();
        test_state_bytes();
        test_no_contrast();
        test_significance();
        roid_roi_params p;
        roid_roi_params_default(&p);
        p.n_segments = S;
        p.cadence = 0; /* refits by hand, to check after each */
        roid_roi *r;
        roid_err err;
        if (!tap_ok(roid_roi_new(&p, NY, NX, &r, &err) == 0, "roid_roi_new"))
                return tap_done();
        reset_model();

        /* Pass 1: raster over the even rows, refitting every 23 frames
         * (mid-row, so a refit's dirty set and its neighbours straddle rows). */
        unsigned refits = 0, bad_nan = 0;
        double worst = 0;
        for (uint32_t y = 0; y < NY; y += 2)
                for (uint32_t x = 0; x < NX; x++) {
                        feed(r, y, x);
                        if (nf % 23 == 0)
                                refit_check(r, &worst, &bad_nan, &refits);
                }
        /* Pass 2: the odd rows (neighbours of every earlier point change), a
         * few revisited points of both passes (fly-scan binning), refits. */
        for (uint32_t y = 1; y < NY; y += 2)
                for (uint32_t x = 0; x < NX; x++) {
                        feed(r, y, x);
                        if (x % 7 == 3)
                                feed(r, y - 1, (x * 5) % NX);
                        if (nf % 29 == 0)
                                refit_check(r, &worst, &bad_nan, &refits);
                }
        refit_check(r, &worst, &bad_nan, &refits);
        tap_ok(refits > 20, "%u refits checked over %u frames", refits, nf);
        tap_ok(worst < 1e-9,
               "raw and filtered maps of all %d modalities match the definitions after every refit "
               "(worst difference %.3g)",
               2 * NC, worst);
        tap_eq_u64(bad_nan, 0, "points without a frame stay NaN");
        /* A revisit changes only its own T; the filtered map of a point two
         * steps away must not move. */
        const double *ft = roid_roi_filtered(r, 0);
        double before = ft[5 * NX + 5];
        feed(r, 5, 8);
        roid_roi_refit(r);
        tap_ok(ft[5 * NX + 5] == before, "a point two steps from a revisit keeps its filtered T");
        unsigned b;
        tap_ok(check_maps(r, &b) < 1e-9 && b == 0, "and every map still matches after it");

        /* The final maps (a full recomputation) agree with the online ones. */
        static double online[2 * NC][NY * NX];
        for (unsigned m = 0; m < 2 * NC; m++)
                memcpy(online[m], roid_roi_filtered(r, m), sizeof online[m]);
        roid_roi_finish(r);
        double d = 0;
        for (unsigned m = 0; m < 2 * NC; m++)
                for (size_t i = 0; i < NY * NX; i++)
                        if (cnt[i])
                                d = fmax(d, fabs(roid_roi_filtered(r, m)[i] - online[m][i]));
        tap_ok(d < 1e-12, "finish's full recomputation equals the last incremental refit (max diff %.3g)", d);
        roid_roi_free(r);

        /* Online labels and held refits, on a fresh state with a cadence. */
        reset_model();
        p.cadence = 16;
        if (!tap_ok(roid_roi_new(&p, NY, NX, &r, &err) == 0, "roid_roi_new with cadence 16"))
                return tap_done();
        unsigned bad_lab = 0, checked = 0;
        for (uint32_t y = 0; y < NY; y++)
                for (uint32_t x = 0; x < NX; x++) {
                        const uint64_t before = roid_roi_refits(r);
                        feed(r, y, x);
                        /* (a refit relabels the point from the filtered maps) */
                        if (before > 0 && roid_roi_refits(r) == before) {
                                bad_lab += check_frame_labels(r, (size_t)y * NX + x);
                                checked++;
                        }
                }
        tap_ok(checked > 500 && bad_lab == 0,
               "every frame's online labels (%u frames after the first refit, %d modalities) are the nearest "
               "centre of its log value (%u differ)",
               checked, 2 * NC, bad_lab);
        roid_roi_free(r);

        reset_model();
        roid_roi_new(&p, NY, NX, &r, &err);
        roid_roi_hold_refits(r, true);
        for (uint32_t x = 0; x < 40; x++)
                feed(r, x / NX, x % NX);
        tap_ok(roid_roi_refits(r) == 0 && roid_roi_refit_due(r),
               "held: 40 frames at cadence 16 make a refit due but none is done");
        roid_roi_hold_refits(r, false);
        feed(r, 1, 20);
        tap_ok(roid_roi_refits(r) == 1 && !roid_roi_refit_due(r), "released: the next frame refits, once");
        roid_roi_free(r);
        return tap_done();
}
