/* bench_kernel.c - roid-bench: the C half of tools/bench.  Measures on this
 * machine, in one run, and prints one JSON object a line on stdout:
 *   {"row": "machine", ...}   CPU model, cores, last-level cache
 *   {"row": "kernel", ...}    roid_features_compute on frames in memory (a
 *                             buffer larger than the last-level cache) next to
 *                             a plain streaming read of the same memory, and
 *                             the time roid_geometry_init takes (best of 3)
 *   {"row": "decode", ...}    bitshuffle-LZ4 (roid) and plain LZ4 (liblz4
 *                             alone) decoding of Poisson diffraction frames
 * Every figure is the best of several timed repetitions (other processes
 * share the machine; the best is the least disturbed), stated in "stat".
 *
 * --dump DIR also writes the frames, masks and roid's features of each shape
 * (DIR/cases.jsonl) for the numpy baseline (tools/bench_numpy.py), which
 * checks its results against roid's before timing itself.
 *
 * Threads: one.  Not part of the daemon; allocates freely.
 */
#include <errno.h>
#include <inttypes.h>
#include <lz4.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "features/features.h"
#include "ingest/codec.h"

typedef struct {
        const char *name;
        uint32_t rows, cols;
        roid_dtype dtype;
} shape;

static const shape shapes[] = {
        {"1028x512", 512, 1028, ROID_DT_U16},
        {"1030x514", 514, 1030, ROID_DT_U32},
        {"192x192", 192, 192, ROID_DT_U16},
        {"96x96", 96, 96, ROID_DT_U16},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

typedef struct {
        double seconds;    /* per measurement, all repetitions */
        int reps;          /* repetitions; the best one counts */
        size_t buffer;     /* bytes of frames per shape for the kernel */
        unsigned distinct; /* distinct rendered frames */
        const char *dump;
        const char *only; /* one shape's name, or NULL */
} opts;

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);
        if (!p) {
                fprintf(stderr, "roid-bench: out of memory (%zu bytes)\n", n);
                exit(1);
        }
        return p;
}

/* ---- diffraction-like frames ---- */

static uint64_t rng = 0x2545f4914f6cdd1du;

static uint64_t rnd_u64(void) {
        uint64_t z = (rng += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        return z ^ (z >> 31);
}

static double rnd_unit(void) {
        return (double)(rnd_u64() >> 11) * 0x1.0p-53;
}

static double rnd_poisson(double lam) {
        if (lam < 30) {
                const double l = exp(-lam);
                double p = rnd_unit();
                int k = 0;
                while (p > l) {
                        p *= rnd_unit();
                        k++;
                }
                return k;
        }
        const double u = rnd_unit(), v = rnd_unit();
        const double k = floor(lam + sqrt(lam) * sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v) + 0.5);
        return k < 0 ? 0 : k;
}

static uint64_t dtype_max(roid_dtype t) {
        return t == ROID_DT_U8 ? UINT8_MAX : t == ROID_DT_U16 ? UINT16_MAX : UINT32_MAX;
}

static void put(void *buf, roid_dtype t, size_t i, uint64_t v) {
        if (t == ROID_DT_U8)
                ((uint8_t *)buf)[i] = (uint8_t)v;
        else if (t == ROID_DT_U16)
                ((uint16_t *)buf)[i] = (uint16_t)v;
        else
                ((uint32_t *)buf)[i] = (uint32_t)v;
}

/* The geometry every frame of a shape is analysed with. */
typedef struct {
        double cx, cy, r_bf, r_df_in, r_df_out;
} layout;

static layout layout_of(const shape *s) {
        const double m = s->rows < s->cols ? s->rows : s->cols;
        /* fractional parts chosen so that no pixel lies on an axis or a diagonal */
        return (layout){.cx = s->cols / 2.0 - 0.63,
                        .cy = s->rows / 2.0 + 0.29,
                        .r_bf = m / 12.0,
                        .r_df_in = m / 12.0,
                        .r_df_out = m * 0.45};
}

/* EIGER-like module layout: chips of 256 x 256 pixels separated by 2-pixel
 * gaps (one gap cross for frames smaller than a chip), plus 1e-4 of the
 * pixels dead or hot (at least 3).  Gap pixels are also set to the dtype's
 * maximum in the frames, as the detector does. */
static uint32_t *make_mask(const shape *s) {
        const size_t n = (size_t)s->rows * s->cols;
        uint32_t *m = calloc(n, sizeof *m);
        if (!m)
                exit(1);
        for (uint32_t y = 0; y < s->rows; y++)
                for (uint32_t x = 0; x < s->cols; x++) {
                        bool gap;
                        if (s->rows < 256 || s->cols < 256)
                                gap = x == s->cols / 2 || x == s->cols / 2 - 1 || y == s->rows / 2 ||
                                      y == s->rows / 2 - 1;
                        else
                                gap = x % 258 >= 256 || y % 258 >= 256;
                        if (gap)
                                m[(size_t)y * s->cols + x] = 1;
                }
        size_t bad = n / 10000 < 3 ? 3 : n / 10000;
        for (size_t i = 0; i < bad; i++)
                m[rnd_u64() % n] |= i & 1 ? 2 : 8;
        return m;
}

/* A bright-field disk that moves a little from frame to frame, a diffuse
 * halo, six Bragg spots, a low background; Poisson counts. */
static void render(const shape *s, const layout *L, const uint32_t *mask, void *out) {
        const uint64_t maxv = dtype_max(s->dtype);
        const double bx = L->cx + (rnd_unit() - 0.5) * 2, by = L->cy + (rnd_unit() - 0.5) * 2;
        const double peak = 60, halo = 8, bragg = 400, sig2 = 2 * 1.5 * 1.5, ring = L->r_bf * 2.6;
        for (uint32_t y = 0; y < s->rows; y++)
                for (uint32_t x = 0; x < s->cols; x++) {
                        const size_t i = (size_t)y * s->cols + x;
                        if (mask[i] & 1) {
                                put(out, s->dtype, i, maxv);
                                continue;
                        }
                        const double dx = x - bx, dy = y - by, r = sqrt(dx * dx + dy * dy);
                        double lam = peak / (1 + exp((r - L->r_bf) / 0.8)) + halo * L->r_bf / (r + L->r_bf) + 0.2;
                        for (int k = 0; k < 6; k++) {
                                const double a = k * M_PI / 3 + 0.2, ex = dx - ring * cos(a), ey = dy - ring * sin(a);
                                const double e2 = ex * ex + ey * ey;
                                if (e2 < 40)
                                        lam += bragg * exp(-e2 / sig2);
                        }
                        const double k = rnd_poisson(lam);
                        put(out, s->dtype, i, k >= (double)maxv ? maxv : (uint64_t)k);
                }
        for (int k = 0; k < 3; k++) /* hot pixels flagged by the detector */
                put(out, s->dtype, rnd_u64() % ((size_t)s->rows * s->cols), maxv);
}

/* ---- the streaming read: the memory-bandwidth limit of one core ---- */

typedef uint64_t u64x4 __attribute__((vector_size(32)));

/* Sums 64-bit words, two 32-byte vectors per step, with the same AVX2 clone
 * the kernel gets, so that both read memory as fast as this core can. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(ROID_NO_CLONES)
__attribute__((target_clones("avx2", "default")))
#endif
static uint64_t
stream_read(const void *buf, size_t bytes) {
        u64x4 a = {0}, b = {0};
        const char *p = buf;
        size_t i = 0;
        for (; i + 64 <= bytes; i += 64) {
                u64x4 x, y;
                memcpy(&x, p + i, 32);
                memcpy(&y, p + i + 32, 32);
                a += x;
                b += y;
        }
        uint64_t tail = 0;
        for (; i < bytes; i++)
                tail += (uint8_t)p[i];
        a += b;
        return a[0] + a[1] + a[2] + a[3] + tail;
}

static volatile uint64_t sink;

/* ---- kernel measurement ---- */

typedef struct {
        const shape *s;
        const roid_geometry *g; /* NULL: the streaming read */
        const char *frames;
        size_t frame_bytes, nf;
        size_t batch; /* frames between clock reads, a multiple of `many` */
        size_t many;  /* frames a kernel call takes, as the workers give them */
} job;

#define MANY_MAX 4

/* Frames per second over one repetition of `budget` seconds, walking the
 * buffer frame after frame. */
static double run_once(const job *j, double budget) {
        size_t it = 0, k = 0;
        const double t0 = now();
        double t;
        do {
                for (size_t b = 0; b < j->batch; b += j->many, it += j->many) {
                        if (!j->g) {
                                sink += stream_read(j->frames + k * j->frame_bytes, j->frame_bytes);
                                if (++k == j->nf)
                                        k = 0;
                                continue;
                        }
                        roid_frame f[MANY_MAX];
                        roid_features ft[MANY_MAX];
                        for (size_t i = 0; i < j->many; i++) {
                                f[i] = (roid_frame){.dtype = j->s->dtype,
                                                    .rows = j->s->rows,
                                                    .cols = j->s->cols,
                                                    .pixels = j->frames + k * j->frame_bytes};
                                if (++k == j->nf)
                                        k = 0;
                        }
                        if (j->many == 1)
                                roid_features_compute(j->g, f, ft, NULL);
                        else
                                roid_features_compute_many(j->g, j->many, f, ft, NULL);
                        sink += ft[0].total_u64;
                }
        } while ((t = now() - t0) < budget);
        return (double)it / t;
}

static void json_features(FILE *f, const roid_features *ft) {
        fprintf(f,
                "{\"total\": %" PRIu64 ", \"com_x\": %.17g, \"com_y\": %.17g, \"bf\": %" PRIu64 ", \"df\": %" PRIu64
                ", \"masked\": %" PRIu64 ", \"seg_sum\": [",
                ft->total_u64, ft->com_x, ft->com_y, ft->bf_u64, ft->df_u64, ft->masked);
        for (unsigned s = 0; s < ft->n_segments; s++)
                fprintf(f, "%s%" PRIu64, s ? ", " : "", ft->seg[s].sum_u64);
        fputs("], \"seg_com_x\": [", f);
        for (unsigned s = 0; s < ft->n_segments; s++)
                fprintf(f, "%s%.17g", s ? ", " : "", ft->seg[s].com_x);
        fputs("], \"seg_com_y\": [", f);
        for (unsigned s = 0; s < ft->n_segments; s++)
                fprintf(f, "%s%.17g", s ? ", " : "", ft->seg[s].com_y);
        fputs("]}", f);
}

static void write_file(const char *dir, const char *name, const char *ext, const void *p, size_t n) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
                fprintf(stderr, "roid-bench: cannot write %s: %s\n", path, strerror(errno));
                exit(1);
        }
}

static const unsigned seg_counts[2] = {1, 8};

static void bench_shape(const opts *o, const shape *s, FILE *cases) {
        const size_t npix = (size_t)s->rows * s->cols, frame_bytes = npix * roid_dtype_size(s->dtype);
        const layout L = layout_of(s);
        uint32_t *mask = make_mask(s);
        const unsigned nd = o->distinct;
        char *distinct = xmalloc(nd * frame_bytes);
        for (unsigned i = 0; i < nd; i++)
                render(s, &L, mask, distinct + i * frame_bytes);

        /* The geometry is built on the first frame of every series: its time is a latency. */
        roid_geometry g[2];
        double init_s[2] = {INFINITY, INFINITY};
        for (int k = 0; k < 2; k++) {
                roid_geometry_params p;
                roid_geometry_params_default(&p);
                p.rows = s->rows, p.cols = s->cols, p.dtype = s->dtype, p.center_x = L.cx, p.center_y = L.cy;
                p.n_segments = seg_counts[k], p.r_bf = L.r_bf, p.r_df_in = L.r_df_in, p.r_df_out = L.r_df_out;
                p.mask = mask;
                for (int rep = 0; rep < 3; rep++) {
                        roid_err err = {{0}};
                        if (rep)
                                roid_geometry_free(&g[k]);
                        const double t0 = now();
                        if (roid_geometry_init(&g[k], &p, &err) < 0) {
                                fprintf(stderr, "roid-bench: geometry %s: %s\n", s->name, err.msg);
                                exit(1);
                        }
                        init_s[k] = fmin(init_s[k], now() - t0);
                }
        }

        if (cases) {
                write_file(o->dump, s->name, "frames", distinct, nd * frame_bytes);
                write_file(o->dump, s->name, "mask", mask, npix * sizeof *mask);
                fprintf(cases,
                        "{\"name\": \"%s\", \"dtype\": \"%s\", \"rows\": %" PRIu32 ", \"cols\": %" PRIu32
                        ", \"frames\": %u, \"center_x\": %.17g, \"center_y\": %.17g, \"r_bf\": %.17g, \"r_df_in\": "
                        "%.17g, \"r_df_out\": %.17g, \"features\": {",
                        s->name, roid_dtype_name(s->dtype), s->rows, s->cols, nd, L.cx, L.cy, L.r_bf, L.r_df_in,
                        L.r_df_out);
                for (int k = 0; k < 2; k++) {
                        const roid_frame f = {.dtype = s->dtype, .rows = s->rows, .cols = s->cols, .pixels = distinct};
                        roid_features ft;
                        roid_features_compute(&g[k], &f, &ft, NULL);
                        fprintf(cases, "%s\"%u\": ", k ? ", " : "", seg_counts[k]);
                        json_features(cases, &ft);
                }
                fputs("}}\n", cases);
        }

        /* The kernel and the read walk the same buffer, larger than the cache. */
        const size_t nf = o->buffer / frame_bytes > nd ? o->buffer / frame_bytes : nd;
        char *frames = xmalloc(nf * frame_bytes);
        for (size_t i = 0; i < nf; i++)
                memcpy(frames + i * frame_bytes, distinct + (i % nd) * frame_bytes, frame_bytes);
        const size_t batch = ((256u << 10) / frame_bytes / MANY_MAX + 1) * MANY_MAX;
        job j = {.s = s, .frames = frames, .frame_bytes = frame_bytes, .nf = nf, .batch = batch, .many = 1};
        double best_read = 0, best[2] = {0, 0}, best1[2] = {0, 0};
        const double budget = o->seconds / o->reps;
        for (int rep = 0; rep < o->reps; rep++) { /* interleaved, so that a disturbance hits all alike */
                j.g = NULL;
                best_read = fmax(best_read, run_once(&j, budget));
                for (int k = 0; k < 2; k++) {
                        j.g = &g[k];
                        j.many = 1;
                        best1[k] = fmax(best1[k], run_once(&j, budget));
                        j.many = MANY_MAX;
                        best[k] = fmax(best[k], run_once(&j, budget));
                        j.many = 1;
                }
        }
        const double read_gbs = best_read * frame_bytes / 1e9;
        for (int k = 0; k < 2; k++) {
                const double gbs = best[k] * frame_bytes / 1e9;
                printf("{\"row\": \"kernel\", \"shape\": \"%s\", \"dtype\": \"%s\", \"segments\": %u, \"mask\": true, "
                       "\"bf_df\": true, \"frames_per_s\": %.1f, \"gb_per_s\": %.3f, \"read_gb_per_s\": %.3f, "
                       "\"frames_per_call\": %d, \"single_frames_per_s\": %.1f, "
                       "\"ratio_to_read\": %.4f, \"runs\": %zu, \"masked_pixels\": %" PRIu64 ", \"buffer_mib\": "
                       "%.1f, \"geometry_init_ms\": %.3f, \"stat\": \"best of %d\"}\n",
                       s->name, roid_dtype_name(s->dtype), seg_counts[k], best[k], gbs, read_gbs, MANY_MAX, best1[k],
                       gbs / read_gbs, g[k].n_runs, g[k].n_static_masked, nf * frame_bytes / 1048576.0, init_s[k] * 1e3,
                       o->reps);
        }
        fflush(stdout);
        free(frames);

        /* Decoding: roid's bslz4 and liblz4 alone, each frame compressed once. */
        const size_t elem = roid_dtype_size(s->dtype);
        uint8_t **bs = xmalloc(nd * sizeof *bs), **lz = xmalloc(nd * sizeof *lz);
        size_t *bs_len = xmalloc(nd * sizeof *bs_len), *lz_len = xmalloc(nd * sizeof *lz_len);
        size_t bs_total = 0, lz_total = 0;
        for (unsigned i = 0; i < nd; i++) {
                const char *src = distinct + i * frame_bytes;
                const size_t cap = roid_bslz4_bound(frame_bytes, elem, 0);
                bs[i] = xmalloc(cap);
                if (roid_bslz4_encode(src, frame_bytes, elem, 0, bs[i], cap, &bs_len[i]) < 0) {
                        fprintf(stderr, "roid-bench: bslz4 encode failed\n");
                        exit(1);
                }
                const int lcap = LZ4_compressBound((int)frame_bytes);
                lz[i] = xmalloc((size_t)lcap);
                const int n = LZ4_compress_default(src, (char *)lz[i], (int)frame_bytes, lcap);
                if (n <= 0) {
                        fprintf(stderr, "roid-bench: LZ4 compress failed\n");
                        exit(1);
                }
                lz_len[i] = (size_t)n;
                bs_total += bs_len[i];
                lz_total += lz_len[i];
        }
        char *dst = xmalloc(frame_bytes);
        for (int codec = 0; codec < 2; codec++) {
                double bestd = 0;
                for (int rep = 0; rep < o->reps; rep++) {
                        size_t it = 0;
                        const double t0 = now();
                        double t;
                        do {
                                const unsigned i = (unsigned)(it % nd);
                                int r;
                                if (codec == 0)
                                        r = roid_bslz4_decode(bs[i], bs_len[i], dst, frame_bytes, elem, NULL);
                                else
                                        r = LZ4_decompress_safe((const char *)lz[i], dst, (int)lz_len[i],
                                                                (int)frame_bytes) == (int)frame_bytes
                                                    ? 0
                                                    : -EBADMSG;
                                if (r < 0 || (it < nd && memcmp(dst, distinct + i * frame_bytes, frame_bytes))) {
                                        fprintf(stderr, "roid-bench: %s decode of %s gave wrong bytes\n",
                                                codec ? "lz4" : "bslz4", s->name);
                                        exit(1);
                                }
                                it++;
                        } while ((t = now() - t0) < budget);
                        bestd = fmax(bestd, (double)it / t);
                }
                printf("{\"row\": \"decode\", \"shape\": \"%s\", \"dtype\": \"%s\", \"codec\": \"%s\", "
                       "\"frames_per_s\": %.1f, \"gb_per_s\": %.3f, \"compression\": %.3f, \"stat\": \"best of %d\"}\n",
                       s->name, roid_dtype_name(s->dtype), codec ? "lz4" : "bslz4", bestd, bestd * frame_bytes / 1e9,
                       (double)nd * frame_bytes / (double)(codec ? lz_total : bs_total), o->reps);
                fflush(stdout);
        }
        for (unsigned i = 0; i < nd; i++) {
                free(bs[i]);
                free(lz[i]);
        }
        free(bs);
        free(lz);
        free(bs_len);
        free(lz_len);
        free(dst);
        roid_geometry_free(&g[0]);
        roid_geometry_free(&g[1]);
        free(distinct);
        free(mask);
}

/* ---- the machine ---- */

static void cpu_model(char *out, size_t n) {
        snprintf(out, n, "unknown");
        FILE *f = fopen("/proc/cpuinfo", "r");
        if (!f)
                return;
        char line[512];
        while (fgets(line, sizeof line, f)) {
                if (strncmp(line, "model name", 10) != 0)
                        continue;
                const char *c = strchr(line, ':');
                if (!c)
                        break;
                c++;
                while (*c == ' ' || *c == '\t')
                        c++;
                snprintf(out, n, "%s", c);
                out[strcspn(out, "\n")] = 0;
                for (char *q = out; *q; q++) /* keep the JSON line plain */
                        if (*q == '"' || *q == '\\')
                                *q = ' ';
                break;
        }
        fclose(f);
}

/* sysfs first: in a virtual machine sysconf may report the host's total. */
static size_t llc_bytes(void) {
        for (int idx = 3; idx >= 2; idx--) {
                char path[128], buf[64];
                snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
                FILE *f = fopen(path, "r");
                if (!f)
                        continue;
                const bool ok = fgets(buf, sizeof buf, f) != NULL;
                fclose(f);
                char *end;
                const unsigned long long v = ok ? strtoull(buf, &end, 10) : 0;
                if (v > 0)
                        return (size_t)v << (*end == 'K' ? 10 : *end == 'M' ? 20 : 0);
        }
        long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (v <= 0)
                v = sysconf(_SC_LEVEL2_CACHE_SIZE);
        return v > 0 ? (size_t)v : (size_t)32 << 20;
}

static void usage(FILE *f) {
        fputs("usage: roid-bench [--smoke] [--seconds S] [--reps N] [--buffer-mib N] [--distinct N] [--dump DIR]\n"
              "Measures roid's feature kernel and decoders on this machine; one JSON object a line.\n"
              "  --seconds S      time per measurement, all repetitions (default 1.4)\n"
              "  --reps N         repetitions, the best counts (default 7)\n"
              "  --buffer-mib N   frames in memory per shape (default: 4 x the last-level cache, 64..512)\n"
              "  --distinct N     distinct rendered frames per shape (default 16)\n"
              "  --only SHAPE     one shape: 1028x512, 1030x514, 192x192 or 96x96\n"
              "  --dump DIR       write frames, masks and roid's features for tools/bench_numpy.py\n"
              "  --smoke          tiny and fast: checks that everything runs, figures mean nothing\n",
              f);
}

int main(int argc, char **argv) {
        const size_t llc = llc_bytes();
        opts o = {.seconds = 1.4,
                  .reps = 7,
                  .buffer = llc * 4 > ((size_t)64 << 20) ? llc * 4 : (size_t)64 << 20,
                  .distinct = 16};
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!strcmp(a, "--smoke")) {
                        o.seconds = 0.03, o.reps = 3, o.buffer = (size_t)4 << 20, o.distinct = 2;
                } else if (!strcmp(a, "--help")) {
                        usage(stdout);
                        return 0;
                } else if (v && !strcmp(a, "--seconds")) {
                        o.seconds = atof(v), i++;
                } else if (v && !strcmp(a, "--reps")) {
                        o.reps = atoi(v), i++;
                } else if (v && !strcmp(a, "--buffer-mib")) {
                        o.buffer = (size_t)atol(v) << 20, i++;
                } else if (v && !strcmp(a, "--distinct")) {
                        o.distinct = (unsigned)atoi(v), i++;
                } else if (v && !strcmp(a, "--only")) {
                        o.only = v, i++;
                } else if (v && !strcmp(a, "--dump")) {
                        o.dump = v, i++;
                } else {
                        usage(stderr);
                        return 2;
                }
        }
        if (!(o.seconds > 0 && o.seconds < 3600) || o.reps < 1 || o.reps > 1000 || o.distinct < 1 ||
            o.distinct > 4096 || o.buffer < 1 || o.buffer > ((size_t)16 << 30)) {
                fprintf(stderr, "roid-bench: an option is out of range\n");
                return 2;
        }
        char cpu[256];
        cpu_model(cpu, sizeof cpu);
        const char *simd = roid_features_simd();
        printf("{\"row\": \"machine\", \"cpu\": \"%s\", \"cores\": %ld, \"llc_mib\": %.1f, \"simd\": \"%s\", "
               "\"bit_unshuffle\": \"%s\", \"liblz4\": \"%s\"}\n",
               cpu, sysconf(_SC_NPROCESSORS_ONLN), llc / 1048576.0, simd, roid_bt_impl_name(roid_bt_impl_auto()),
               LZ4_versionString());
        fflush(stdout);
        FILE *cases = NULL;
        if (o.dump) {
                char path[4096];
                snprintf(path, sizeof path, "%s/cases.jsonl", o.dump);
                cases = fopen(path, "w");
                if (!cases) {
                        fprintf(stderr, "roid-bench: cannot write %s: %s\n", path, strerror(errno));
                        return 1;
                }
        }
        for (size_t i = 0; i < N_SHAPES; i++)
                if (!o.only || !strcmp(o.only, shapes[i].name))
                        bench_shape(&o, &shapes[i], cases);
        if (cases && fclose(cases) != 0) {
                fprintf(stderr, "roid-bench: cannot write cases.jsonl\n");
                return 1;
        }
        return 0;
}
