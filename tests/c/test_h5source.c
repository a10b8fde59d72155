/* Fault injection for the HDF5 input (ingest/h5source.c): files built with
 * the HDF5 C API in a temporary directory, good and bad, replayed through a
 * real ingest.  Every bad file must give a negative errno with a message
 * naming what was wrong (or be handled frame by frame: counted, the next
 * good frame delivered), never crash, never hang, never allocate per
 * declared frame. */
#include <dirent.h>
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "features/features.h"
#include "ingest/codec.h"
#include "ingest/h5source.h"
#include "ingest/ingest.h"
#include "service/log.h"
#include "tap.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* libhdf5 1.10 loses object-header memory on some error paths of damaged
 * files (seen under LeakSanitizer with the random damage below, in H5Oopen
 * and H5Fopen).  Only allocations with a libhdf5 frame are exempt; roid's
 * own HDF5 handles are checked by open_ids() instead. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
        return "leak:libhdf5_serial.so\n";
}

#define BSLZ4 32008
#define LZ4   32004
#define DS    "/entry/data/data"

static char tmpdir[64];

static const char *tpath(const char *name) {
        static char b[4][256];
        static int k;
        k = (k + 1) & 3;
        snprintf(b[k], sizeof b[k], "%s/%s", tmpdir, name);
        return b[k];
}

static double now_s(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- simulated detector frames: sparse photon counts, gap pixels at the
 * type's maximum (as EIGER marks them) ---- */

static uint64_t splitmix(uint64_t x) {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static uint32_t dt_max(roid_dtype dt) {
        return dt == ROID_DT_U8 ? 0xffu : dt == ROID_DT_U16 ? 0xffffu : 0xffffffffu;
}

/* Pixel i of the frame with this image_id: depends on nothing else, so a
 * frame can be checked wherever it came from (data file, master file). */
static uint32_t px(roid_dtype dt, uint32_t cols, uint64_t image_id, size_t i) {
        if ((i / cols) % 16 == 15 || i % cols == cols / 2)
                return dt_max(dt); /* module gaps */
        uint64_t h = splitmix(image_id * 0x100000001b3ull ^ i);
        /* Poisson-like counts of mean ~0.5 with a rare bright spot. */
        uint32_t v = 0;
        while ((h & 3) == 0 && v < 20) {
                v++;
                h >>= 2;
        }
        if ((h >> 40) % 97 == 0)
                v += (uint32_t)((h >> 48) % 200);
        return v >= dt_max(dt) ? dt_max(dt) - 1 : v;
}

static void fill_frame(void *buf, roid_dtype dt, uint32_t rows, uint32_t cols, uint64_t image_id) {
        for (size_t i = 0; i < (size_t)rows * cols; i++) {
                uint32_t v = px(dt, cols, image_id, i);
                if (dt == ROID_DT_U8)
                        ((uint8_t *)buf)[i] = (uint8_t)v;
                else if (dt == ROID_DT_U16)
                        ((uint16_t *)buf)[i] = (uint16_t)v;
                else
                        ((uint32_t *)buf)[i] = v;
        }
}

/* ---- what the ingest delivered ---- */

enum { MAX_IDS = 64 };

typedef struct {
        int starts, ends, ends_terminated, frames, frames_ok, errors;
        uint64_t ids[MAX_IDS];
        uint64_t err_ids[MAX_IDS];
        int n_err_ids;
        char last_err[512];
        /* Frames that came with the series' pixel mask, and those of them whose
         * features (computed with that mask) match a sum over the unmasked
         * pixels of the mask that was written (want_mask). */
        int frames_masked, features_ok;
} tally;

static tally T;
static roid_counters ctr;
static roid_start_info S; /* the start of the last series opened */
static uint32_t *S_mask;  /* a copy of its decoded pixel mask, NULL if none */
static uint32_t S_rows, S_cols;
static const uint32_t *want_mask; /* the mask the test wrote, as the frames are */

static void on_start(void *ctx, const roid_series *s) {
        (void)ctx;
        T.starts++;
        S = s->start;
        S_rows = s->rows;
        S_cols = s->cols;
        free(S_mask);
        S_mask = NULL;
        size_t n = (size_t)s->rows * s->cols;
        if (s->pixel_mask[0] && (S_mask = malloc(n * sizeof *S_mask)))
                memcpy(S_mask, s->pixel_mask[0], n * sizeof *S_mask);
}

static void on_end(void *ctx, const roid_series *s, bool terminated) {
        (void)ctx, (void)s;
        T.ends++;
        T.ends_terminated += terminated;
}

static uint32_t px(roid_dtype dt, uint32_t cols, uint64_t image_id, size_t i);
static uint32_t dt_max(roid_dtype dt);

/* roid's features of the frame with the mask it came with, against the sum
 * over the pixels that are neither masked in want_mask nor at the maximum. */
static bool features_match_mask(const roid_frame_event *ev) {
        if (!want_mask || !ev->pixels)
                return false;
        uint64_t sum = 0, masked = 0, n = (uint64_t)ev->rows * ev->cols;
        for (size_t i = 0; i < n; i++) {
                uint32_t v = px(ev->dtype, ev->cols, ev->image_id, i);
                if (want_mask[i] || v == dt_max(ev->dtype))
                        masked++;
                else
                        sum += v;
        }
        roid_geometry_params gp;
        roid_geometry_params_default(&gp);
        gp.rows = ev->rows;
        gp.cols = ev->cols;
        gp.dtype = ev->dtype;
        gp.center_x = ev->cols / 2.0;
        gp.center_y = ev->rows / 2.0;
        gp.mask = ev->pixel_mask;
        roid_geometry g;
        roid_features fe;
        roid_err e = {""};
        roid_frame fr = {ev->dtype, ev->rows, ev->cols, ev->pixels};
        if (roid_geometry_init(&g, &gp, &e) < 0)
                return false;
        int r = roid_features_compute(&g, &fr, &fe, &e);
        roid_geometry_free(&g);
        return r == 0 && fe.total_u64 == sum && fe.masked == masked && fe.n_pixels == n - masked;
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        (void)ctx;
        if (T.frames < MAX_IDS)
                T.ids[T.frames] = ev->image_id;
        T.frames++;
        if (ev->pixel_mask) {
                T.frames_masked++;
                T.features_ok += features_match_mask(ev);
        }
        bool ok = true;
        for (size_t i = 0; i < (size_t)ev->rows * ev->cols && ok; i++) {
                uint32_t got = ev->dtype == ROID_DT_U8    ? ((const uint8_t *)ev->pixels)[i]
                               : ev->dtype == ROID_DT_U16 ? ((const uint16_t *)ev->pixels)[i]
                                                          : ((const uint32_t *)ev->pixels)[i];
                ok = got == px(ev->dtype, ev->cols, ev->image_id, i);
        }
        T.frames_ok += ok;
}

static void on_frame_error(void *ctx, const roid_series *s, uint64_t id, const char *ch, const char *msg) {
        (void)ctx, (void)s, (void)ch;
        if (T.n_err_ids < MAX_IDS)
                T.err_ids[T.n_err_ids++] = id;
        T.errors++;
        snprintf(T.last_err, sizeof T.last_err, "%s", msg);
}

/* stderr goes to a file so roid's log lines can be checked. */
static long log_pos;

static const char *log_since_last(void) {
        static char buf[16384];
        fflush(stderr);
        long end = lseek(STDERR_FILENO, 0, SEEK_END);
        size_t n = (size_t)(end - log_pos);
        if (n >= sizeof buf) { /* keep the head: the first lines say the most */
                n = sizeof buf - 1;
        }
        ssize_t got = pread(STDERR_FILENO, buf, n, log_pos);
        buf[got > 0 ? got : 0] = 0;
        log_pos = end;
        return buf;
}

typedef struct {
        int r;
        roid_err err;
        double secs;
} result;

#define CNT(name) roid_counter_get(&ctr, ROID_C_##name)

/* Open HDF5 files and objects (datasets, groups, attributes, named types) of
 * every file: a replay must leave as many as it found.  (Dataspace and type
 * ids cannot be counted through the public API.) */
static long long open_ids(void) {
        return (long long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
}
static int id_leaks;

/* Replays one file through a fresh ingest (as `roid replay` does). */
static result replay_lim(const char *path, const roid_limits *lim) {
        memset(&T, 0, sizeof T);
        memset(&S, 0, sizeof S);
        free(S_mask);
        S_mask = NULL;
        roid_counters_reset(&ctr);
        log_since_last();
        roid_sink sink = {
                .series_start = on_start, .series_end = on_end, .frame = on_frame, .frame_error = on_frame_error};
        roid_ingest_params ip = {.channel = "", .implicit_series = true};
        if (lim)
                ip.limits = *lim;
        else
                roid_limits_default(&ip.limits);
        roid_ingest *in = NULL;
        result res = {0};
        if (roid_ingest_new(&ip, &sink, &ctr, &in) < 0) {
                res.r = -12345;
                return res;
        }
        long long ids0 = open_ids();
        double t0 = now_s();
        res.r = roid_h5_replay(path, in, &res.err);
        res.secs = now_s() - t0;
        if (open_ids() != ids0) {
                id_leaks++;
                tap_diag("%s: %lld HDF5 files or objects left open", path, open_ids() - ids0);
        }
        roid_ingest_flush(in);
        roid_ingest_free(in);
        return res;
}

static result replay(const char *path) {
        return replay_lim(path, NULL);
}

/* r < 0 and the message holds every word given (NULL-terminated). */
static void expect_error(const char *what, result res, ...) {
        bool words = res.err.msg[0] != 0;
        char missing[128] = "";
        va_list ap;
        va_start(ap, res);
        for (const char *w; (w = va_arg(ap, const char *));)
                if (!strstr(res.err.msg, w)) {
                        words = false;
                        snprintf(missing, sizeof missing, "%s", w);
                }
        va_end(ap);
        tap_ok(res.r < 0 && words && res.secs < 10, "%s: r=%d (%.2f s), message \"%s\"%s%s", what, res.r, res.secs,
               res.err.msg, missing[0] ? " lacks " : "", missing);
        tap_ok(T.frames == 0 && T.errors == 0 && T.starts == T.ends, "%s: no frame delivered, series (%d) closed", what,
               T.starts);
}

/* ---- building files ---- */

enum { L_FRAME, L_CONTIG, L_TWO_FRAMES, L_HALF_FRAME };

typedef struct {
        roid_dtype dt;
        hid_t ftype; /* file type; 0 = the native one for dt */
        uint32_t rows, cols;
        uint64_t n;      /* declared frames */
        int64_t nr_low;  /* image_nr_low attribute; 0 = none (ids from 0) */
        unsigned filter; /* 0 = none */
        int ncd;         /* -1 = default cd_values for the filter */
        unsigned cd[8];
        int layout;
        const uint64_t *write; /* frames to write; NULL = all */
        size_t n_write;
        bool latest, unlimited;
        /* Damages chunk k (frame index) before it is written. */
        void (*mangle)(uint64_t k, uint8_t *chunk, size_t *size);
        uint64_t raw_frame; /* frame+1 written raw with the filter-skipped mask bit */
} h5spec;

static hid_t native(roid_dtype dt) {
        return dt == ROID_DT_U8 ? H5T_NATIVE_UINT8 : dt == ROID_DT_U16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
}

static hid_t new_file(const char *name, bool latest) {
        hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
        if (latest)
                H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
        hid_t f = H5Fcreate(tpath(name), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
        H5Pclose(fapl);
        return f;
}

static hid_t lcpl_mkdirs(void) {
        hid_t l = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(l, 1);
        return l;
}

static void set_attr_i64(hid_t obj, const char *name, int64_t v) {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a);
        H5Sclose(sp);
}

/* A dataset at path with no pixel data written. */
static hid_t bare_dataset(hid_t f, const char *path, hid_t type, int rank, const hsize_t *dims, const hsize_t *chunk,
                          unsigned filter, int ncd, const unsigned *cd, bool unlimited) {
        hsize_t maxd[4];
        for (int i = 0; i < rank; i++)
                maxd[i] = i == 0 && unlimited ? H5S_UNLIMITED : dims[i];
        hid_t sp = H5Screate_simple(rank, dims, maxd);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        if (chunk)
                H5Pset_chunk(dcpl, rank, chunk);
        if (filter)
                H5Pset_filter(dcpl, (H5Z_filter_t)filter, H5Z_FLAG_OPTIONAL, (size_t)ncd, cd);
        hid_t lcpl = lcpl_mkdirs();
        hid_t ds = H5Dcreate2(f, path, type, sp, lcpl, dcpl, H5P_DEFAULT);
        H5Pclose(lcpl);
        H5Pclose(dcpl);
        H5Sclose(sp);
        return ds;
}

static int write_h5_at(const char *name, const char *dspath, const h5spec *s) {
        hid_t f = new_file(name, s->latest);
        if (f < 0)
                return -1;
        size_t esz = roid_dtype_size(s->dt), fb = (size_t)s->rows * s->cols * esz;
        hsize_t dims[3] = {s->n, s->rows, s->cols};
        hsize_t chunk[3] = {1, s->rows, s->cols};
        if (s->layout == L_TWO_FRAMES)
                chunk[0] = 2;
        if (s->layout == L_HALF_FRAME)
                chunk[1] = (s->rows + 1) / 2;
        unsigned cd[8] = {0, 2, (unsigned)esz, 0, 2};
        int ncd = s->filter == BSLZ4 ? 5 : 0;
        if (s->ncd >= 0) {
                ncd = s->ncd;
                memcpy(cd, s->cd, sizeof cd);
        }
        hid_t ds = bare_dataset(f, dspath, s->ftype ? s->ftype : native(s->dt), 3, dims,
                                s->layout == L_CONTIG ? NULL : chunk, s->filter, ncd, cd, s->unlimited);
        if (ds < 0) {
                H5Fclose(f);
                return -1;
        }
        if (s->nr_low)
                set_attr_i64(ds, "image_nr_low", s->nr_low);
        uint64_t first = s->nr_low ? (uint64_t)s->nr_low - 1 : 0;
        uint8_t *frame = malloc(fb), *enc = malloc(roid_bslz4_bound(fb, esz, 0) + roid_lz4h5_bound(fb, 0) + 64);
        int rc = 0;
        size_t nw = s->write ? s->n_write : (size_t)s->n;
        for (size_t w = 0; w < nw && rc == 0; w++) {
                uint64_t k = s->write ? s->write[w] : w;
                fill_frame(frame, s->dt, s->rows, s->cols, first + k);
                hsize_t off[3] = {k, 0, 0};
                if (s->filter && s->layout == L_FRAME) {
                        size_t n = 0;
                        uint32_t mask = 0;
                        if (s->raw_frame == k + 1) {
                                memcpy(enc, frame, fb);
                                n = fb;
                                mask = 1; /* the first filter was skipped for this chunk */
                        } else if (s->filter == BSLZ4) {
                                rc = roid_bslz4_encode(frame, fb, esz, 0, enc, roid_bslz4_bound(fb, esz, 0), &n);
                        } else if (s->filter == LZ4) {
                                rc = roid_lz4h5_encode(frame, fb, 0, enc, roid_lz4h5_bound(fb, 0), &n);
                        } else {
                                memcpy(enc, frame, fb);
                                n = fb;
                        }
                        if (s->mangle)
                                s->mangle(k, enc, &n);
                        if (rc == 0 && H5Dwrite_chunk(ds, H5P_DEFAULT, mask, off, n, enc) < 0)
                                rc = -1;
                } else if (!s->filter) {
                        hsize_t cnt[3] = {1, s->rows, s->cols};
                        hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(3, cnt, NULL);
                        H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
                        if (H5Dwrite(ds, native(s->dt), ms, fs, H5P_DEFAULT, frame) < 0)
                                rc = -1;
                        H5Sclose(ms);
                        H5Sclose(fs);
                }
        }
        free(frame);
        free(enc);
        H5Dclose(ds);
        H5Fclose(f);
        return rc;
}

static int write_h5(const char *name, const h5spec *s) {
        return write_h5_at(name, DS, s);
}

static h5spec spec(roid_dtype dt, uint32_t rows, uint32_t cols, uint64_t n, unsigned filter) {
        return (h5spec){.dt = dt, .rows = rows, .cols = cols, .n = n, .nr_low = 1, .filter = filter, .ncd = -1};
}

/* A file holding only a bare dataset (or nothing) at DS. */
static void bare_file(const char *name, hid_t type, int rank, const hsize_t *dims, const hsize_t *chunk,
                      unsigned filter, int ncd, const unsigned *cd) {
        hid_t f = new_file(name, false);
        hid_t ds = bare_dataset(f, DS, type, rank, dims, chunk, filter, ncd, cd, false);
        if (ds >= 0)
                H5Dclose(ds);
        else
                tap_diag("could not create the dataset of %s", name);
        H5Fclose(f);
}

static bool all_ids(uint64_t from, int n) {
        if (T.frames != n)
                return false;
        for (int i = 0; i < n && i < MAX_IDS; i++)
                if (T.ids[i] != from + (uint64_t)i)
                        return false;
        return true;
}

/* ---- good files ---- */

static void test_good(const char *what, h5spec s, uint64_t first_id) {
        char name[64];
        snprintf(name, sizeof name, "good-%s.h5", what);
        if (write_h5(name, &s) < 0) {
                tap_ok(false, "%s: file written", what);
                return;
        }
        result res = replay(tpath(name));
        tap_ok(res.r == 0, "%s: replay returns 0 (%d %s)", what, res.r, res.err.msg);
        tap_ok(all_ids(first_id, (int)s.n) && T.frames_ok == (int)s.n,
               "%s: all %llu frames delivered in order, pixel for pixel (%d delivered, %d right)", what,
               (unsigned long long)s.n, T.frames, T.frames_ok);
        tap_ok(T.starts == 1 && T.ends_terminated == 1 && T.errors == 0 && CNT(frames_failed) == 0 &&
                       CNT(frames_decoded) == s.n,
               "%s: one series, ended, no failures (decoded %llu)", what, (unsigned long long)CNT(frames_decoded));
}

/* The file read back through libhdf5 with the reference filter plugin (when
 * installed; Debian ships LZ4's): the file we wrote is what an EIGER writes. */
static void cross_check_with_plugin(const char *name, const h5spec *s) {
        if (H5Zfilter_avail((H5Z_filter_t)s->filter) <= 0) {
                tap_skip(s->filter == BSLZ4 ? "no bitshuffle HDF5 plugin installed" : "no LZ4 HDF5 plugin installed");
                return;
        }
        size_t fb = (size_t)s->rows * s->cols * roid_dtype_size(s->dt);
        uint8_t *all = malloc(fb * s->n), *want = malloc(fb);
        hid_t f = H5Fopen(tpath(name), H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, DS, H5P_DEFAULT);
        herr_t e = H5Dread(ds, native(s->dt), H5S_ALL, H5S_ALL, H5P_DEFAULT, all);
        bool same = e >= 0;
        for (uint64_t k = 0; k < s->n && same; k++) {
                fill_frame(want, s->dt, s->rows, s->cols, (uint64_t)s->nr_low - 1 + k);
                same = memcmp(all + k * fb, want, fb) == 0;
        }
        H5Dclose(ds);
        H5Fclose(f);
        free(all);
        free(want);
        tap_ok(same, "%s reads back through the filter %u plugin as written", name, s->filter);
}

static void test_good_files(void) {
        /* 37 x 53 pixels: not a multiple of 8 elements, so the bitshuffle remainder is exercised. */
        h5spec s = spec(ROID_DT_U16, 37, 53, 5, 0);
        test_good("uncompressed uint16, one frame per chunk", s, 0);

        s = spec(ROID_DT_U16, 37, 53, 5, BSLZ4);
        test_good("bslz4 uint16", s, 0);
        cross_check_with_plugin("good-bslz4 uint16.h5", &s);

        s = spec(ROID_DT_U32, 40, 24, 3, BSLZ4);
        s.nr_low = 11;
        test_good("bslz4 uint32, image_nr_low 11", s, 10);

        /* image_nr_low far beyond max_images (a damaged or fuzzed file): refused
         * before any frame is read, naming the ids and the limit */
        s = spec(ROID_DT_U16, 24, 40, 3, BSLZ4);
        s.nr_low = INT64_C(1) << 62;
        write_h5("far-ids.h5", &s);
        expect_error("image_nr_low 2^62", replay(tpath("far-ids.h5")), "image ids 4611686018427387903",
                     "beyond max_images", NULL);
        tap_ok(T.frames == 0, "... no frame read (%d)", T.frames);

        s = spec(ROID_DT_U16, 64, 72, 3, BSLZ4);
        s.latest = s.unlimited = true; /* the chunk index EIGER's own writer uses */
        test_good("bslz4 uint16, latest format, unlimited frames", s, 0);

        s = spec(ROID_DT_U8, 30, 30, 4, LZ4);
        test_good("lz4 uint8", s, 0);
        cross_check_with_plugin("good-lz4 uint8.h5", &s);

        s = spec(ROID_DT_U32, 20, 30, 3, 0);
        s.layout = L_CONTIG;
        test_good("uncompressed uint32, contiguous", s, 0);

        s = spec(ROID_DT_U16, 20, 30, 4, 0);
        s.layout = L_TWO_FRAMES;
        test_good("uncompressed uint16, two frames per chunk", s, 0);

        /* Chunk grids that do not divide the dataset: HDF5 stores the edge chunks whole. */
        s = spec(ROID_DT_U16, 20, 30, 5, 0);
        s.layout = L_TWO_FRAMES;
        test_good("uncompressed uint16, 5 frames in chunks of two", s, 0);
        s = spec(ROID_DT_U16, 21, 30, 3, 0);
        s.layout = L_HALF_FRAME;
        test_good("uncompressed uint16, 21 rows in chunks of 11", s, 0);

        /* Big-endian pixels: HDF5 converts them; the values must be the same. */
        s = spec(ROID_DT_U16, 20, 30, 3, 0);
        s.ftype = H5T_STD_U16BE;
        test_good("uncompressed big-endian uint16", s, 0);

        s = spec(ROID_DT_U16, 20, 30, 0, BSLZ4);
        s.unlimited = true;
        write_h5("zero.h5", &s);
        result res = replay(tpath("zero.h5"));
        tap_ok(res.r == 0 && T.starts == 1 && T.ends_terminated == 1 && T.frames == 0 && CNT(frames_failed) == 0,
               "0 frames: an empty series, started and ended (r=%d %s)", res.r, res.err.msg);

        /* A chunk stored with the filter skipped (mask bit set) is raw pixels. */
        s = spec(ROID_DT_U16, 20, 30, 3, BSLZ4);
        s.raw_frame = 2;
        test_good("bslz4 with one chunk stored unfiltered", s, 0);
}

/* ---- structural faults ---- */

/* A uint16 dataset chunked as c3 and deflated, after bitshuffle-LZ4 with cd
 * values bs when given; no data written. */
static void deflate_file(const char *name, const hsize_t *d3, const hsize_t *c3, const unsigned *bs) {
        hid_t f = new_file(name, false);
        hid_t sp = H5Screate_simple(3, d3, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), lc = lcpl_mkdirs();
        H5Pset_chunk(dcpl, 3, c3);
        if (bs)
                H5Pset_filter(dcpl, BSLZ4, H5Z_FLAG_OPTIONAL, 5, bs);
        H5Pset_deflate(dcpl, 4);
        H5Dclose(H5Dcreate2(f, DS, H5T_NATIVE_UINT16, sp, lc, dcpl, H5P_DEFAULT));
        H5Pclose(lc);
        H5Pclose(dcpl);
        H5Sclose(sp);
        H5Fclose(f);
}
static void test_structure(void) {
        hsize_t d3[3] = {2, 8, 8}, c3[3] = {1, 8, 8};
        unsigned bscd[5] = {0, 2, 2, 0, 2};

        hid_t f = new_file("nodata.h5", false);
        hid_t l = lcpl_mkdirs();
        H5Gclose(H5Gcreate2(f, "/entry/data", l, H5P_DEFAULT, H5P_DEFAULT));
        H5Pclose(l);
        hid_t ds = bare_dataset(f, "/entry/data/other", H5T_NATIVE_UINT16, 3, d3, c3, 0, 0, NULL, false);
        H5Dclose(ds);
        H5Fclose(f);
        expect_error("missing /entry/data/data", replay(tpath("nodata.h5")), DS, NULL);

        f = new_file("noentry.h5", false);
        H5Fclose(f);
        expect_error("empty HDF5 file", replay(tpath("noentry.h5")), DS, NULL);

        f = new_file("group.h5", false);
        l = lcpl_mkdirs();
        H5Gclose(H5Gcreate2(f, DS, l, H5P_DEFAULT, H5P_DEFAULT));
        H5Pclose(l);
        H5Fclose(f);
        expect_error("/entry/data/data is a group", replay(tpath("group.h5")), DS, "not a dataset", NULL);

        hsize_t d2[2] = {8, 8};
        bare_file("2d.h5", H5T_NATIVE_UINT16, 2, d2, NULL, 0, 0, NULL);
        expect_error("2-D dataset", replay(tpath("2d.h5")), DS, "2-D", NULL);

        hsize_t d4[4] = {2, 2, 8, 8}, c4[4] = {1, 1, 8, 8};
        bare_file("4d.h5", H5T_NATIVE_UINT16, 4, d4, c4, BSLZ4, 5, bscd);
        expect_error("4-D dataset", replay(tpath("4d.h5")), DS, "4-D", NULL);

        bare_file("f32.h5", H5T_IEEE_F32LE, 3, d3, c3, 0, 0, NULL);
        expect_error("float32 pixels", replay(tpath("f32.h5")), DS, "float32", NULL);
        bare_file("i64.h5", H5T_STD_I64LE, 3, d3, c3, 0, 0, NULL);
        expect_error("int64 pixels", replay(tpath("i64.h5")), DS, "int64", NULL);
        bare_file("u64.h5", H5T_STD_U64LE, 3, d3, c3, 0, 0, NULL);
        expect_error("uint64 pixels", replay(tpath("u64.h5")), DS, "uint64", NULL);
        bare_file("i16.h5", H5T_STD_I16LE, 3, d3, c3, 0, 0, NULL);
        expect_error("int16 pixels", replay(tpath("i16.h5")), DS, "int16", NULL);

        /* Limits: declared shapes only, no pixel data. */
        roid_limits lim;
        roid_limits_default(&lim);
        hsize_t dbig[3] = {3, 10000, 10000}, cbig[3] = {1, 10000, 10000};
        bare_file("bigpx.h5", H5T_NATIVE_UINT16, 3, dbig, cbig, BSLZ4, 5, bscd);
        size_t heap0 = tap_heap_in_use();
        expect_error("10000 x 10000 frames", replay(tpath("bigpx.h5")), "10000 x 10000", "max_pixels", NULL);
        hsize_t dhuge[3] = {1, 1ull << 33, 4}, chuge[3] = {1, 1, 1};
        bare_file("hugepx.h5", H5T_NATIVE_UINT16, 3, dhuge, chuge, 0, 0, NULL);
        expect_error("2^33 x 4 frames", replay(tpath("hugepx.h5")), "max_pixels", NULL);
        roid_limits small = lim;
        small.max_pixels = 1 << 24;
        small.max_frame_bytes = 1 << 20;
        hsize_t dfb[3] = {2, 1024, 1024}, cfb[3] = {1, 1024, 1024};
        unsigned bscd4[5] = {0, 2, 4, 0, 2};
        bare_file("bigbytes.h5", H5T_NATIVE_UINT32, 3, dfb, cfb, BSLZ4, 5, bscd4);
        expect_error("1024 x 1024 uint32 frames over max_frame_bytes 1 MiB", replay_lim(tpath("bigbytes.h5"), &small),
                     "max_frame_bytes", NULL);
        if (!UNDER_ASAN)
                tap_ok(tap_heap_in_use() < heap0 + (8u << 20),
                       "no frame buffer allocated for rejected shapes (heap +%zd)",
                       (ssize_t)(tap_heap_in_use() - heap0));

        hsize_t d0[3] = {3, 0, 40};
        bare_file("zerorows.h5", H5T_NATIVE_UINT16, 3, d0, NULL, 0, 0, NULL);
        expect_error("frames of 0 rows", replay(tpath("zerorows.h5")), DS, "0 x 40", NULL);

        /* Chunking that is not one frame per chunk, with a filter: raw chunks are not frames. */
        h5spec s = spec(ROID_DT_U16, 16, 20, 4, BSLZ4);
        s.layout = L_TWO_FRAMES;
        s.write = (uint64_t[]){0};
        s.n_write = 0;
        write_h5("chunk2.h5", &s);
        expect_error("bslz4, 2 frames per chunk", replay(tpath("chunk2.h5")), "chunk", "2 x 16 x 20", NULL);
        s.layout = L_HALF_FRAME;
        write_h5("chunkhalf.h5", &s);
        expect_error("bslz4, half a frame per chunk", replay(tpath("chunkhalf.h5")), "chunk", "1 x 8 x 20", NULL);

        /* Filters roid does not decode. */
        bare_file("filter.h5", H5T_NATIVE_UINT16, 3, d3, c3, 31999, 0, NULL);
        expect_error("unknown filter 31999", replay(tpath("filter.h5")), "filter 31999", NULL);
        deflate_file("gzip.h5", d3, c3, NULL);
        expect_error("gzip (filter 1)", replay(tpath("gzip.h5")), "filter 1", NULL);
        deflate_file("twofilters.h5", d3, c3, bscd);
        expect_error("bslz4 followed by gzip", replay(tpath("twofilters.h5")), "2 filters", NULL);
        unsigned zcd[5] = {0, 2, 2, 0, 3};
        bare_file("bszstd.h5", H5T_NATIVE_UINT16, 3, d3, c3, BSLZ4, 5, zcd);
        expect_error("bitshuffle with compression 3", replay(tpath("bszstd.h5")), "compression 3", NULL);
        unsigned nocd[3] = {0, 2, 2};
        bare_file("bsonly.h5", H5T_NATIVE_UINT16, 3, d3, c3, BSLZ4, 3, nocd);
        expect_error("bitshuffle without compression", replay(tpath("bsonly.h5")), "bitshuffle", "LZ4", NULL);
        unsigned e4cd[5] = {0, 2, 4, 0, 2};
        bare_file("bselem.h5", H5T_NATIVE_UINT16, 3, d3, c3, BSLZ4, 5, e4cd);
        expect_error("bitshuffle element size 4 on uint16", replay(tpath("bselem.h5")), "element size 4", NULL);

        /* Compressed big-endian chunks would decode to byte-swapped pixels. */
        s = spec(ROID_DT_U16, 16, 20, 2, BSLZ4);
        s.ftype = H5T_STD_U16BE;
        s.ncd = 5;
        memcpy(s.cd, bscd, sizeof bscd);
        s.n_write = 0;
        s.write = (uint64_t[]){0};
        write_h5("bebslz4.h5", &s);
        expect_error("big-endian bslz4", replay(tpath("bebslz4.h5")), "big-endian", NULL);

        /* A non-scalar image_nr_low must not be read into one integer. */
        s = spec(ROID_DT_U16, 16, 20, 3, BSLZ4);
        s.nr_low = 0;
        write_h5("arrattr.h5", &s);
        f = H5Fopen(tpath("arrattr.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
        ds = H5Dopen2(f, DS, H5P_DEFAULT);
        int64_t many[64];
        for (int i = 0; i < 64; i++)
                many[i] = 1000 + i;
        hsize_t n64 = 64;
        hid_t sp = H5Screate_simple(1, &n64, NULL);
        hid_t a = H5Acreate2(ds, "image_nr_low", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT64, many);
        H5Aclose(a);
        H5Sclose(sp);
        H5Dclose(ds);
        H5Fclose(f);
        result res = replay(tpath("arrattr.h5"));
        tap_ok(res.r == 0 && all_ids(0, 3) && T.frames_ok == 3,
               "image_nr_low of 64 values: ignored, frames numbered from 0 (r=%d, %d frames)", res.r, T.frames);
}

/* ---- master files ---- */

/* A master file: links made by add, then what meta writes (NULL: nothing). */
static void master_meta_with(const char *name, void (*add)(hid_t data_group), void (*meta)(hid_t file)) {
        hid_t f = new_file(name, false);
        hid_t l = lcpl_mkdirs();
        hid_t g = H5Gcreate2(f, "/entry/data", l, H5P_DEFAULT, H5P_DEFAULT);
        H5Pclose(l);
        add(g);
        H5Gclose(g);
        if (meta)
                meta(f);
        H5Fclose(f);
}

static void master_with(const char *name, void (*add)(hid_t data_group)) {
        master_meta_with(name, add, NULL);
}

/* data_000001, data_000002, ... of a master: external links to files[i]'s DS. */
static void link_data_files(hid_t g, const char *const *files, int n) {
        for (int i = 0; i < n; i++) {
                char name[32];
                snprintf(name, sizeof name, "data_%06d", i + 1);
                H5Lcreate_external(files[i], DS, g, name, H5P_DEFAULT, H5P_DEFAULT);
        }
}

static void links_two(hid_t g) {
        link_data_files(g, (const char *const[]){"m-data1.h5", "m-data2.h5"}, 2);
}
/* Frames written for image ids from image_nr_low - 1, the attribute then taken out. */
static void drop_nr_low(const char *name) {
        hid_t f = H5Fopen(tpath(name), H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t ds = H5Dopen2(f, DS, H5P_DEFAULT);
        H5Adelete(ds, "image_nr_low");
        H5Dclose(ds);
        H5Fclose(f);
}

static void links_three_nolow(hid_t g) {
        link_data_files(g, (const char *const[]){"m-nolow1.h5", "m-nolow2.h5", "m-nolow3.h5"}, 3);
}
static void links_second_missing(hid_t g) {
        link_data_files(g, (const char *const[]){"m-data1.h5", "m-gone.h5"}, 2);
}
static void links_middle_missing(hid_t g) {
        link_data_files(g, (const char *const[]){"m-data1.h5", "m-gone.h5", "m-data3.h5"}, 3);
}
static void links_first_missing(hid_t g) {
        link_data_files(g, (const char *const[]){"m-gone.h5", "m-data2.h5"}, 2);
}
static void links_missing(hid_t g) {
        link_data_files(g, (const char *const[]){"absent-data.h5"}, 1);
}
static void links_self(hid_t g) {
        H5Lcreate_external("m-self.h5", "/entry/data/data_000001", g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}
static void links_soft_loop(hid_t g) {
        H5Lcreate_soft("/entry/data/data_000001", g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}
static void links_group(hid_t g) {
        H5Lcreate_soft("/entry", g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}
static void links_ext_group(hid_t g) {
        H5Lcreate_external("m-data1.h5", "/entry", g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}
static void links_not_hdf5(hid_t g) {
        H5Lcreate_external("m-text.h5", DS, g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}
static void links_wrong_path(hid_t g) {
        H5Lcreate_external("m-data1.h5", "/entry/data/nothing", g, "data_000001", H5P_DEFAULT, H5P_DEFAULT);
}

static void test_master(void) {
        h5spec s = spec(ROID_DT_U16, 24, 40, 3, BSLZ4);
        write_h5("m-data1.h5", &s);
        s.nr_low = 4;
        write_h5("m-data2.h5", &s);
        master_with("m-good_master.h5", links_two);
        result res = replay(tpath("m-good_master.h5"));
        tap_ok(res.r == 0 && all_ids(0, 6) && T.frames_ok == 6 && T.starts == 1 && T.ends_terminated == 1,
               "master with two data files: 6 frames, one series (r=%d %s, %d frames)", res.r, res.err.msg, T.frames);
        /* No /entry/instrument: the start says what the frames say, nothing more (as before). */
        tap_ok(S.has_image_size && S.image_size_x == 40 && S.image_size_y == 24 && S.image_dtype == ROID_DT_U16 &&
                       S.has_number_of_images && S.number_of_images == 6 && !S.has_beam_center && !S.has_pixel_size &&
                       !S.has_count_time && !S.has_frame_time && !S.has_energy && !S.has_wavelength &&
                       !S.detector_description[0] && !S.arm_date[0] && !S_mask && T.frames_masked == 0,
               "... a master without metadata: a start with the frames' shape and type, the images its data files "
               "hold (6), no mask");

        /* A writer that leaves image_nr_low out: each data file goes on from the previous one's end. */
        s.nr_low = 0;
        write_h5("m-nolow1.h5", &s);
        s.nr_low = 4;
        write_h5("m-nolow2.h5", &s);
        drop_nr_low("m-nolow2.h5");
        s.nr_low = 7;
        s.n = 4;
        write_h5("m-nolow3.h5", &s);
        drop_nr_low("m-nolow3.h5");
        master_with("m-nolow_master.h5", links_three_nolow);
        res = replay(tpath("m-nolow_master.h5"));
        tap_ok(res.r == 0 && all_ids(0, 10) && T.frames_ok == 10 && T.starts == 1 && CNT(images_duplicate) == 0 &&
                       S.has_number_of_images && S.number_of_images == 10,
               "master whose data files have no image_nr_low: ids 0..9 in link order, no duplicates, 10 images "
               "expected (r=%d %s, %d frames, %llu duplicates, expected %llu)",
               res.r, res.err.msg, T.frames, (unsigned long long)CNT(images_duplicate),
               (unsigned long long)S.number_of_images);

        master_with("m-second_missing.h5", links_second_missing);
        res = replay(tpath("m-second_missing.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "data_000002") && strstr(res.err.msg, "m-gone.h5"),
               "master whose second data file is missing: error naming the link and the file (%s)", res.err.msg);
        tap_ok(all_ids(0, 3) && T.frames_ok == 3 && T.starts == 1 && T.ends == 1,
               "... the first data file's 3 frames were delivered and the series closed (%d frames)", T.frames);

        /* A missing data file between two good ones: the last one's frames are
         * replayed, then the error (they were dropped unread, uncounted). */
        s.nr_low = 7;
        s.n = 3;
        write_h5("m-data3.h5", &s);
        master_with("m-middle_missing.h5", links_middle_missing);
        res = replay(tpath("m-middle_missing.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "data_000002") && strstr(res.err.msg, "m-gone.h5") &&
                       T.frames_ok == 6 && T.starts == 1 && T.ends == 1 && T.ids[0] == 0 && T.ids[2] == 2 &&
                       T.ids[3] == 6 && T.ids[5] == 8,
               "master whose middle data file is missing: the other two files' 6 frames (ids 0-2, 6-8), one "
               "series, then the error (r=%d %s, %d frames)",
               res.r, res.err.msg, T.frames);
        master_with("m-first_missing.h5", links_first_missing);
        res = replay(tpath("m-first_missing.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "data_000001") && T.frames_ok == 3 && T.starts == 1 && T.ends == 1,
               "master whose first data file is missing: the second one starts the series, its 3 frames replayed, "
               "then the error (r=%d %s, %d frames)",
               res.r, res.err.msg, T.frames);

        master_with("m-missing.h5", links_missing);
        expect_error("master linking to a missing file", replay(tpath("m-missing.h5")), "data_000001", "absent-data.h5",
                     NULL);
        master_with("m-self.h5", links_self);
        expect_error("master linking to itself", replay(tpath("m-self.h5")), "data_000001", "m-self.h5", NULL);
        master_with("m-softloop.h5", links_soft_loop);
        expect_error("master with a soft link to itself", replay(tpath("m-softloop.h5")), "data_000001", NULL);
        master_with("m-group.h5", links_group);
        expect_error("master linking to a group", replay(tpath("m-group.h5")), "data_000001", "not a dataset", NULL);
        master_with("m-extgroup.h5", links_ext_group);
        expect_error("master linking to a group of a data file", replay(tpath("m-extgroup.h5")), "data_000001",
                     "not a dataset", NULL);
        FILE *t = fopen(tpath("m-text.h5"), "w");
        fputs("this is not an HDF5 file\n", t);
        fclose(t);
        master_with("m-nothdf5.h5", links_not_hdf5);
        expect_error("master linking to a file that is not HDF5", replay(tpath("m-nothdf5.h5")), "data_000001",
                     "m-text.h5", NULL);
        master_with("m-wrongpath.h5", links_wrong_path);
        expect_error("master linking to a missing path in a data file", replay(tpath("m-wrongpath.h5")), "data_000001",
                     "/entry/data/nothing", NULL);
}

/* ---- a master file's series metadata (/entry/instrument) ---- */

#define DET   "/entry/instrument/detector"
#define DSPEC DET "/detectorSpecific"
#define WAVE  "/entry/instrument/beam/incident_wavelength"
enum { MR = 24, MC = 40 }; /* the frames of m-data1.h5, m-data2.h5 */

static void put_units(hid_t obj, const char *units, bool vlen) {
        hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
        H5Tset_size(t, vlen ? H5T_VARIABLE : strlen(units) + 1);
        hid_t a = H5Acreate2(obj, "units", t, sp, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, t, vlen ? (const void *)&units : (const void *)units);
        H5Aclose(a);
        H5Sclose(sp);
        H5Tclose(t);
}

/* A dataset of rank (0: scalar) at path, intermediate groups made. */
static void put(hid_t f, const char *path, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims, const void *v,
                const char *units, bool vlen_units) {
        hid_t sp = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR), l = lcpl_mkdirs();
        hid_t ds = H5Dcreate2(f, path, ftype, sp, l, H5P_DEFAULT, H5P_DEFAULT);
        if (ds < 0 || H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0)
                tap_diag("could not write %s", path);
        if (units)
                put_units(ds, units, vlen_units);
        H5Dclose(ds);
        H5Pclose(l);
        H5Sclose(sp);
}
static void put_f64(hid_t f, const char *path, double v, const char *units) {
        put(f, path, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, NULL, &v, units, false);
}
static void put_f32(hid_t f, const char *path, float v, const char *units) {
        put(f, path, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 0, NULL, &v, units, false);
}
static void put_u32(hid_t f, const char *path, uint32_t v, const char *units) {
        put(f, path, H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, NULL, &v, units, false);
}
/* fixed: the stored size of a null-padded string (as the DECTRIS filewriter
 * writes them); 0: variable length (as h5py writes them). */
static void put_str(hid_t f, const char *path, const char *v, size_t fixed) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, fixed ? fixed : H5T_VARIABLE);
        H5Tset_strpad(t, H5T_STR_NULLPAD);
        char *buf = calloc(1, fixed + 1);
        if (fixed)
                memcpy(buf, v, strlen(v) < fixed ? strlen(v) : fixed);
        put(f, path, t, t, 0, NULL, fixed ? (const void *)buf : (const void *)&v, NULL, false);
        free(buf);
        H5Tclose(t);
}
static void put_mask(hid_t f, hid_t ftype, uint32_t rows, uint32_t cols, const uint32_t *m) {
        hsize_t d[2] = {rows, cols};
        put(f, DSPEC "/pixel_mask", ftype, H5T_NATIVE_UINT32, 2, d, m, NULL, false);
}

/* The detector's mask as EIGER's bits say it: a dead block where photons
 * land (bit 0), a hot column (bit 4), scattered noisy pixels (bit 1). */
static uint32_t mask_want[MR * MC];
static void make_mask(void) {
        for (uint32_t r = 0; r < MR; r++)
                for (uint32_t c = 0; c < MC; c++) {
                        uint32_t v = 0;
                        if (r >= 3 && r < 11 && c >= 5 && c < 17)
                                v |= 1;
                        if (c == 33)
                                v |= 16;
                        if ((r * MC + c) % 97 == 5)
                                v |= 2;
                        mask_want[r * MC + c] = v;
                }
}

static const char DATE[] = "2021-04-22T02:07:39.837+02:00";

/* Values chosen here, written with the types and units of a DECTRIS master
 * file (float32 and float64 scalars, fixed and variable length strings). */
static void meta_good(hid_t f) {
        put_f32(f, DET "/beam_center_x", 12.25f, "pixels");
        put_f64(f, DET "/beam_center_y", 7.125, "pixels");
        put_f64(f, DET "/count_time", 0.000995, "s");
        put_f32(f, DET "/frame_time", 0.001f, "s");
        put_f64(f, DET "/x_pixel_size", 75e-6, "m");
        put_f64(f, DET "/y_pixel_size", 0.172, "mm"); /* converted to m */
        put_str(f, DET "/description", "Dectris EIGER2 CdTe 1M", 24);
        put_str(f, DET "/detector_number", "E-08-0123", 0);
        put_str(f, DET "/sensor_material", "CdTe", 8);
        put_f64(f, DET "/sensor_thickness", 0.00075, "m");
        put_f64(f, DET "/threshold_energy", 6250.5, "eV");
        put_u32(f, DET "/saturation_value", 975376, NULL);
        put_u32(f, DSPEC "/photon_energy", 12500, "eV");
        put(f, WAVE, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, NULL, &(double){0.9918}, "angstrom", true);
        put_str(f, DSPEC "/data_collection_date", DATE, 30);
        put_u32(f, DSPEC "/nimages", 4, NULL);
        put_u32(f, DSPEC "/ntrigger", 2, NULL);
        put_str(f, DSPEC "/trigger_mode", "exts", 4);
        put_mask(f, H5T_STD_U32LE, MR, MC, mask_want);
}

/* Each field wrong in its own way; the wavelength and the date are right. */
static void meta_bad(hid_t f) {
        hsize_t d2[2] = {2, 2};
        double bc[4] = {12, 13, 14, 15};
        put(f, DET "/beam_center_x", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, d2, bc, "pixels", false);
        put_f64(f, DET "/beam_center_y", 7.125, "pixels");
        put_str(f, DET "/count_time", "0.001", 8);
        put_f64(f, DET "/frame_time", NAN, "s");
        put_f64(f, DET "/x_pixel_size", 75e-6, "furlong");
        put_f64(f, DET "/y_pixel_size", 75e-6, "m");
        char longd[301];
        memset(longd, 'X', 300);
        longd[300] = 0;
        put_str(f, DET "/description", longd, 320);
        put_str(f, DET "/detector_number", "\xff\xfe-12", 8);
        put_u32(f, DET "/sensor_material", 14, NULL);
        put_f64(f, DET "/sensor_thickness", -0.00045, "m");
        put_f64(f, DET "/threshold_energy", INFINITY, "eV");
        hid_t l = lcpl_mkdirs();
        H5Gclose(H5Gcreate2(f, DSPEC "/photon_energy", l, H5P_DEFAULT, H5P_DEFAULT));
        H5Pclose(l);
        put(f, WAVE, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, NULL, &(double){0.9918}, "angstrom", true);
        put_str(f, DSPEC "/data_collection_date", DATE, 30);
        put_f64(f, DSPEC "/nimages", 6.0, NULL);
        static uint32_t wide[MR * (MC + 1)];
        put_mask(f, H5T_STD_U32LE, MR, MC + 1, wide);
}

/* More: a mask of the frames' shape but of floats, a variable-length
 * description too long, a serial number in a string type of 10000 bytes. */
static void meta_bad2(hid_t f) {
        put_mask(f, H5T_IEEE_F32LE, MR, MC, mask_want);
        char longd[401];
        memset(longd, 'Y', 400);
        longd[400] = 0;
        put_str(f, DET "/description", longd, 0);
        put_str(f, DET "/detector_number", "E-08-0123", 10000);
        put_f32(f, DET "/beam_center_x", 12.25f, "pixels");
        put_f32(f, DET "/beam_center_y", 7.5f, "mm"); /* not pixels */
}

static struct {
        const char *mode;           /* NULL: no trigger_mode */
        uint64_t nimages, ntrigger; /* 0: not written */
        uint64_t want;              /* 0: unknown */
} count_case;

static void meta_counts(hid_t f) {
        if (count_case.nimages)
                put(f, DSPEC "/nimages", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, NULL, &count_case.nimages, NULL, false);
        if (count_case.ntrigger)
                put(f, DSPEC "/ntrigger", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, NULL, &count_case.ntrigger, NULL, false);
        if (count_case.mode)
                put_str(f, DSPEC "/trigger_mode", count_case.mode, 4);
}

static bool near(double got, double want) {
        return fabs(got - want) <= 1e-12 * fabs(want);
}

static bool six_frames_right(result res) {
        return res.r == 0 && all_ids(0, 6) && T.frames_ok == 6 && T.starts == 1 && T.ends_terminated == 1 &&
               CNT(frames_failed) == 0;
}

static void test_master_metadata(void) {
        make_mask();
        master_meta_with("mm-good_master.h5", links_two, meta_good);
        want_mask = mask_want;
        result res = replay(tpath("mm-good_master.h5"));
        const char *log = log_since_last();
        tap_ok(six_frames_right(res), "master with metadata: 6 frames, one series (r=%d %s, %d frames)", res.r,
               res.err.msg, T.frames);
        tap_ok(S.has_beam_center && S.beam_center_x == 12.25 && S.beam_center_y == 7.125,
               "... beam centre 12.25 (float32), 7.125 pixels (%d %g %g)", S.has_beam_center, S.beam_center_x,
               S.beam_center_y);
        tap_ok(S.has_count_time && S.count_time == 0.000995 && S.has_frame_time && S.frame_time == (double)0.001f,
               "... count_time 0.000995 s, frame_time 0.001 s as float32 (%g %g)", S.count_time, S.frame_time);
        tap_ok(S.has_pixel_size && S.pixel_size_x == 75e-6 && near(S.pixel_size_y, 172e-6),
               "... pixel size 75e-6 m and 0.172 mm = 172e-6 m (%g %g)", S.pixel_size_x, S.pixel_size_y);
        tap_ok(strcmp(S.detector_description, "Dectris EIGER2 CdTe 1M") == 0 &&
                       strcmp(S.detector_serial_number, "E-08-0123") == 0 && strcmp(S.sensor_material, "CdTe") == 0 &&
                       strcmp(S.arm_date, DATE) == 0,
               "... description, serial number (variable length), sensor material, arm_date from "
               "data_collection_date (\"%s\" \"%s\" \"%s\" \"%s\")",
               S.detector_description, S.detector_serial_number, S.sensor_material, S.arm_date);
        tap_ok(S.sensor_thickness == 0.00075 && S.threshold_energy[0] == 6250.5 && S.has_energy &&
                       S.incident_energy == 12500 && S.has_wavelength && S.incident_wavelength == 0.9918 &&
                       S.has_saturation_value && S.saturation_value == 975376,
               "... sensor thickness, threshold, photon energy, wavelength (variable length units), saturation "
               "(%g %g %g %g %llu)",
               S.sensor_thickness, S.threshold_energy[0], S.incident_energy, S.incident_wavelength,
               (unsigned long long)S.saturation_value);
        tap_ok(S.has_number_of_images && S.number_of_images == 8 && CNT(images_out_of_range) == 0,
               "... number_of_images = nimages 4 x ntrigger 2 in exts mode (%d %llu)", S.has_number_of_images,
               (unsigned long long)S.number_of_images);
        tap_ok(S_mask && S_rows == MR && S_cols == MC && memcmp(S_mask, mask_want, sizeof mask_want) == 0,
               "... the series' pixel mask is the one written, %u x %u", S_rows, S_cols);
        tap_ok(T.frames_masked == 6 && T.features_ok == 6,
               "... every frame comes with it, and its features leave the masked pixels out (%d masked, %d right)",
               T.frames_masked, T.features_ok);
        tap_ok(!strstr(log, "left unknown"), "... no warning about the metadata");
        want_mask = NULL;

        master_meta_with("mm-bad_master.h5", links_two, meta_bad);
        res = replay(tpath("mm-bad_master.h5"));
        log = log_since_last();
        tap_ok(six_frames_right(res) && T.frames_masked == 0,
               "master with malformed metadata: still 6 frames, right, one series, no mask (r=%d %s, %d frames)", res.r,
               res.err.msg, T.frames);
        tap_ok(!S.has_beam_center && !S.has_count_time && !S.has_frame_time && !S.has_pixel_size &&
                       !S.detector_description[0] && !S.detector_serial_number[0] && !S.sensor_material[0] &&
                       S.sensor_thickness == 0 && isnan(S.threshold_energy[0]) && !S.has_energy && !S_mask,
               "... every malformed field is left unknown");
        tap_ok(S.has_number_of_images && S.number_of_images == 6 && strstr(log, "6 images, as its data files hold"),
               "... number_of_images from the data files instead of the malformed nimages (%d %llu)",
               S.has_number_of_images, (unsigned long long)S.number_of_images);
        tap_ok(S.has_wavelength && S.incident_wavelength == 0.9918 && strcmp(S.arm_date, DATE) == 0,
               "... the well-formed wavelength and date are kept (%g \"%s\")", S.incident_wavelength, S.arm_date);
        static const char *const named[] = {"beam_center_x is 2-D (2 x 2)",
                                            "count_time is string, a number expected",
                                            "frame_time is nan",
                                            "x_pixel_size is in units \"furlong\"",
                                            "description is a string of 300 bytes, at most 255",
                                            "detector_number has byte 0xff at 0, not UTF-8",
                                            "sensor_material is uint32, a string expected",
                                            "sensor_thickness is -0.00045, a positive",
                                            "threshold_energy is inf",
                                            "photon_energy is not a dataset",
                                            "nimages is float64, an integer expected",
                                            "pixel_mask is 24 x 41, the frames are 24 x 40"};
        const char *missing = NULL;
        for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
                if (!strstr(log, named[i]))
                        missing = named[i];
        tap_ok(!missing, "... a warning names each field and what is wrong with it%s%s", missing ? "; missing: " : "",
               missing ? missing : "");
        if (missing)
                tap_diag("log: %s", log);

        master_meta_with("mm-bad2_master.h5", links_two, meta_bad2);
        res = replay(tpath("mm-bad2_master.h5"));
        log = log_since_last();
        tap_ok(six_frames_right(res) && T.frames_masked == 0 && !S_mask && !S.detector_description[0] &&
                       !S.detector_serial_number[0] && !S.has_beam_center,
               "master with a float mask, a 400-byte variable length description, a string type of 10000 bytes, a "
               "beam centre in mm: 6 frames, those left unknown (r=%d, %d frames)",
               res.r, T.frames);
        tap_ok(strstr(log, "pixel_mask is float32, uint32 expected") &&
                       strstr(log, "description is a string of 400 bytes") &&
                       strstr(log, "detector_number is a string of 10000 bytes") &&
                       strstr(log, "beam_center_y is in units \"mm\", not pixels") &&
                       strstr(log, "beam_center_x is there without its other coordinate"),
               "... each named in a warning");

        /* number_of_images by trigger mode: one image per trigger in exte/inte; when the master does
         * not say, the 6 images its data files hold. */
        static const struct {
                const char *mode;
                uint64_t nimages, ntrigger, want;
        } cases[] = {
                {"exts", 4, 2, 8}, {"ints", 8, 0, 8}, {"inte", 5, 8, 8},
                {"exte", 1, 8, 8}, {NULL, 8, 0, 8},   {"", 2, 4, 8},
                {"exte", 3, 0, 6}, {NULL, 0, 8, 6},   {"ints", 1ull << 40, 1ull << 30, 6},
                {"ints", 0, 0, 6},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                count_case.mode = cases[i].mode;
                count_case.nimages = cases[i].nimages;
                count_case.ntrigger = cases[i].ntrigger;
                master_meta_with("mm-count_master.h5", links_two, meta_counts);
                res = replay(tpath("mm-count_master.h5"));
                bool ok = six_frames_right(res) && S.has_number_of_images && S.number_of_images == cases[i].want;
                tap_ok(ok,
                       "trigger_mode \"%s\", nimages %llu, ntrigger %llu (0: absent): number_of_images %llu (got "
                       "%s%llu)",
                       cases[i].mode ? cases[i].mode : "absent", (unsigned long long)cases[i].nimages,
                       (unsigned long long)cases[i].ntrigger, (unsigned long long)cases[i].want,
                       S.has_number_of_images ? "" : "unknown ", (unsigned long long)S.number_of_images);
        }
        log_since_last();

        /* A lone data file has no metadata to read: as before. */
        h5spec s = spec(ROID_DT_U16, MR, MC, 3, BSLZ4);
        write_h5("mm-lone.h5", &s);
        res = replay(tpath("mm-lone.h5"));
        tap_ok(res.r == 0 && T.frames_ok == 3 && S.has_number_of_images && S.number_of_images == 3 &&
                       !S.has_beam_center && !S.detector_description[0] && !S_mask && isnan(S.threshold_energy[0]),
               "a lone data file: its 3 frames, number_of_images 3, nothing else known");
}

/* ---- declared frames that were never written ---- */

static void test_unwritten(void) {
        unsigned bscd[5] = {0, 2, 2, 0, 2};
        uint64_t written[] = {0, 1, 2};

        /* 10^9 frames declared: beyond max_images, so no image id of it could be tracked. */
        h5spec s = spec(ROID_DT_U16, 16, 16, 1000000000ull, BSLZ4);
        s.write = written;
        s.n_write = 3;
        s.ncd = 5;
        memcpy(s.cd, bscd, sizeof bscd);
        size_t heap0 = tap_heap_in_use();
        write_h5("huge-n.h5", &s);
        expect_error("10^9 frames declared, 3 written", replay(tpath("huge-n.h5")), "1000000000", "max_images", NULL);
        s.latest = s.unlimited = true;
        write_h5("huge-n-latest.h5", &s);
        expect_error("10^9 frames declared (latest format), 3 written", replay(tpath("huge-n-latest.h5")), "1000000000",
                     "max_images", NULL);

        /* 10^7 frames declared (within max_images), frames 0, 1, 2 and 5 written: the
         * written ones are delivered, the others counted as failed without a
         * pass over every declared frame. */
        uint64_t sparse[] = {0, 1, 2, 5};
        for (int latest = 0; latest < 2; latest++) {
                s = spec(ROID_DT_U16, 16, 16, 10000000ull, BSLZ4);
                s.write = sparse;
                s.n_write = 4;
                s.latest = s.unlimited = latest;
                write_h5("sparse.h5", &s);
                heap0 = tap_heap_in_use();
                result res = replay(tpath("sparse.h5"));
                const char *log = log_since_last();
                tap_ok(res.r == 0 && res.secs < 10, "%s10^7 frames declared, 4 written: r=%d in %.2f s",
                       latest ? "latest format: " : "", res.r, res.secs);
                tap_ok(T.frames == 4 && T.frames_ok == 4 && T.ids[3] == 5, "... the 4 written frames are delivered");
                tap_ok(CNT(frames_failed) == 10000000ull - 4 && T.errors == 2 && T.err_ids[0] == 3 && T.err_ids[1] == 4,
                       "... frames 3 and 4 reported as failed, the unwritten tail counted (%llu failed)",
                       (unsigned long long)CNT(frames_failed));
                tap_ok(strstr(log, "not written") && strstr(log, "6..9999999"),
                       "... the log says which frames were not written");
                if (!UNDER_ASAN)
                        tap_ok(tap_heap_in_use() < heap0 + (16u << 20), "... heap bounded (+%zd bytes)",
                               (ssize_t)(tap_heap_in_use() - heap0));
        }

        /* Uncompressed: unwritten chunks must not be delivered as frames of fill values. */
        s = spec(ROID_DT_U16, 16, 16, 4, 0);
        s.write = (uint64_t[]){0, 2};
        s.n_write = 2;
        write_h5("sparse-raw.h5", &s);
        result res = replay(tpath("sparse-raw.h5"));
        tap_ok(res.r == 0 && T.frames == 2 && T.frames_ok == 2 && T.ids[0] == 0 && T.ids[1] == 2 &&
                       CNT(frames_failed) == 2,
               "uncompressed, frames 1 and 3 not written: 2 frames delivered, 2 failed (%d, %llu)", T.frames,
               (unsigned long long)CNT(frames_failed));

        /* Chunks of two frames, the second chunk never written: its frames would be fill values. */
        s = spec(ROID_DT_U16, 16, 16, 4, 0);
        s.layout = L_TWO_FRAMES;
        s.write = (uint64_t[]){0, 1};
        s.n_write = 2;
        write_h5("sparse-2frames.h5", &s);
        expect_error("uncompressed, 2 frames per chunk, second chunk not written", replay(tpath("sparse-2frames.h5")),
                     DS, "1 of its 2 chunks of 2 x 16 x 16 written", NULL);

        /* Contiguous data never written: nothing to read. */
        hsize_t d[3] = {1000, 16, 16};
        bare_file("contig-empty.h5", H5T_NATIVE_UINT16, 3, d, NULL, 0, 0, NULL);
        expect_error("contiguous dataset never written", replay(tpath("contig-empty.h5")), DS, "not written", NULL);
}

/* ---- corrupt chunk data among good chunks ---- */

static void mangle_lz4(uint64_t k, uint8_t *c, size_t *n) {
        if (k == 2)
                for (size_t i = 16; i < 48 && i < *n; i++)
                        c[i] = 0xff; /* inside the first LZ4 block */
}
static void mangle_header(uint64_t k, uint8_t *c, size_t *n) {
        (void)n;
        if (k == 1)
                c[7] ^= 0x40; /* the decoded size in the header lies */
}
static void mangle_cut(uint64_t k, uint8_t *c, size_t *n) {
        (void)c;
        if (k == 3)
                *n /= 2; /* a chunk cut short */
}
static void mangle_tiny(uint64_t k, uint8_t *c, size_t *n) {
        (void)c;
        if (k == 0)
                *n = 3; /* shorter than the header */
}

static void test_corrupt_chunks(void) {
        struct {
                const char *what;
                void (*m)(uint64_t, uint8_t *, size_t *);
                uint64_t bad;
        } cases[] = {{"LZ4 block overwritten", mangle_lz4, 2},
                     {"header that lies about the size", mangle_header, 1},
                     {"chunk cut in half", mangle_cut, 3},
                     {"3-byte chunk", mangle_tiny, 0}};
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
                h5spec s = spec(ROID_DT_U16, 40, 48, 5, BSLZ4);
                s.mangle = cases[c].m;
                write_h5("corrupt.h5", &s);
                result res = replay(tpath("corrupt.h5"));
                const char *log = log_since_last();
                tap_ok(res.r == 0, "bslz4 %s in frame %llu: the file replays (r=%d %s)", cases[c].what,
                       (unsigned long long)cases[c].bad, res.r, res.err.msg);
                tap_ok(T.errors == 1 && T.err_ids[0] == cases[c].bad && CNT(frames_failed) == 1 &&
                               strstr(T.last_err, "bslz4"),
                       "... that frame is reported as failed, counted once, the message names bslz4 (%s)", T.last_err);
                tap_ok(T.frames == 4 && T.frames_ok == 4 && CNT(frames_decoded) == 4 && T.ids[3] == 4,
                       "... the 4 other frames are delivered with the right pixels (%d, %d right)", T.frames,
                       T.frames_ok);
                tap_ok(strstr(log, "frames_failed") != NULL, "... and logged");
        }
        h5spec s = spec(ROID_DT_U8, 20, 20, 4, LZ4);
        s.mangle = mangle_lz4;
        write_h5("corrupt-lz4.h5", &s);
        replay(tpath("corrupt-lz4.h5"));
        tap_ok(T.errors == 1 && T.err_ids[0] == 2 && T.frames == 3 && T.frames_ok == 3,
               "lz4 chunk overwritten: frame 2 failed, 3 good frames delivered (%s)", T.last_err);
}

/* ---- byte-level damage to whole files ---- */

static uint8_t *slurp(const char *path, size_t *n) {
        return tap_slurp(path, n);
}

static void spit(const char *path, const uint8_t *b, size_t n) {
        FILE *f = fopen(path, "wb");
        fwrite(b, 1, n, f);
        fclose(f);
}

static bool sane(result res) {
        return res.r == 0 || (res.r < 0 && res.err.msg[0] != 0);
}

static void test_bytes(void) {
        h5spec s = spec(ROID_DT_U16, 24, 32, 4, BSLZ4);
        write_h5("victim.h5", &s);
        size_t n;
        uint8_t *good = slurp(tpath("victim.h5"), &n);
        if (!good) {
                tap_ok(false, "victim file read");
                return;
        }
        tap_diag("victim file: %zu bytes", n);

        size_t cuts[] = {0, 1, 7, 8, 40, 96, 200, 512, 800, 1024, 1400, 2048, n / 3, n / 2, n - 2000, n - 600, n - 1};
        int bad = 0, errs = 0;
        double worst = 0;
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
                if (cuts[i] >= n)
                        continue;
                spit(tpath("cut.h5"), good, cuts[i]);
                result res = replay(tpath("cut.h5"));
                if (!sane(res)) {
                        bad++;
                        tap_diag("cut at %zu: r=%d msg \"%s\"", cuts[i], res.r, res.err.msg);
                }
                if (res.r < 0)
                        errs++;
                if (res.secs > worst)
                        worst = res.secs;
                if (T.starts != T.ends)
                        bad++;
        }
        tap_ok(bad == 0 && worst < 10,
               "file cut at %zu offsets: each returns 0 or an error with a message (%d errors, slowest %.2f s)",
               sizeof cuts / sizeof cuts[0], errs, worst);
        /* The same cuts with the superblock's end-of-file address patched to the
         * new size (a writer that died before truncating its last write): HDF5
         * opens these and meets the missing bytes while reading. */
        uint64_t eof_at_40;
        memcpy(&eof_at_40, good + 40, 8); /* version 0 superblock, little-endian host */
        if (good[8] == 0 && eof_at_40 == n) {
                uint8_t *c = malloc(n);
                int opened = 0, failed_frames = 0;
                bad = 0;
                worst = 0;
                for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
                        if (cuts[i] < 48 || cuts[i] >= n)
                                continue;
                        memcpy(c, good, cuts[i]);
                        uint64_t e = cuts[i];
                        memcpy(c + 40, &e, 8);
                        spit(tpath("cut.h5"), c, cuts[i]);
                        result res = replay(tpath("cut.h5"));
                        bad += !sane(res) || T.starts != T.ends || T.frames != T.frames_ok;
                        opened += res.r == 0;
                        failed_frames += (int)CNT(frames_failed);
                        if (res.secs > worst)
                                worst = res.secs;
                        if (res.r < 0)
                                tap_diag("cut at %zu, end of file patched: %s", cuts[i], res.err.msg);
                        else
                                tap_diag("cut at %zu, end of file patched: %d frames, %llu failed", cuts[i], T.frames,
                                         (unsigned long long)CNT(frames_failed));
                }
                tap_ok(bad == 0 && worst < 10,
                       "cuts with the end-of-file address patched: 0 or an error with a message, delivered frames "
                       "right (%d replayed, %d frames failed, slowest %.2f s)",
                       opened, failed_frames, worst);
                free(c);
        } else {
                tap_skip("the victim file's superblock is not version 0");
        }

        spit(tpath("cut.h5"), good, n / 2);
        result res = replay(tpath("cut.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "truncated"), "a file cut in half: the message says truncated (%s)",
               res.err.msg);

        /* Seeded random damage: 1-8 bytes set to random values. */
        uint64_t rng = 0x5eed0123456789abull;
        uint8_t *m = malloc(n);
        int n_ok = 0, n_err = 0, n_insane = 0, frames_wrong = 0;
        worst = 0;
        enum { MUTATIONS = 400 };
        for (int it = 0; it < MUTATIONS; it++) {
                memcpy(m, good, n);
                rng = splitmix(rng);
                int k = 1 + (int)(rng % 8);
                for (int j = 0; j < k; j++) {
                        rng = splitmix(rng);
                        size_t at = (size_t)(rng % n);
                        /* half the flips inside the first 2 KiB: superblock and object headers */
                        if (j & 1)
                                at %= n < 2048 ? n : 2048;
                        m[at] ^= (uint8_t)(1 + (rng >> 32) % 255);
                }
                spit(tpath("flip.h5"), m, n);
                res = replay(tpath("flip.h5"));
                if (!sane(res) || T.starts != T.ends) {
                        n_insane++;
                        tap_diag("mutation %d: r=%d msg \"%s\"", it, res.r, res.err.msg);
                }
                res.r < 0 ? n_err++ : n_ok++;
                /* Frames that arrive are right: damage shows as failed frames or errors. */
                frames_wrong += T.frames - T.frames_ok;
                if (res.secs > worst)
                        worst = res.secs;
        }
        tap_ok(n_insane == 0 && worst < 10,
               "%d random damages: each returns 0 or an error with a message, no crash (%d replayed, %d errors, "
               "slowest %.2f s)",
               MUTATIONS, n_ok, n_err, worst);
        tap_diag("frames delivered with other pixels than written (damage in pixel data HDF5 cannot see): %d",
                 frames_wrong);

        /* And the next good file is processed. */
        res = replay(tpath("victim.h5"));
        tap_ok(res.r == 0 && all_ids(0, 4) && T.frames_ok == 4, "the undamaged file still replays after all that");
        free(m);
        free(good);
}

/* ---- virtual datasets (VDS) ---- */

typedef struct {
        const char *file, *dset; /* as stored in the mapping */
        uint64_t vfirst, n;      /* frames vfirst.. of the VDS */
        uint64_t sfirst, sn;     /* from frames sfirst.. of a source of sn frames */
        bool unlimited;          /* an unlimited virtual selection */
} vmap;

/* A uint16 VDS of n frames at DS (rows x cols, fill value 0), mapped as given. */
static int write_vds(const char *name, uint32_t rows, uint32_t cols, uint64_t n, const vmap *m, size_t nm,
                     void (*extra)(hid_t f)) {
        hid_t f = new_file(name, false);
        if (f < 0)
                return -1;
        if (extra)
                extra(f);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        uint16_t fill = 0;
        H5Pset_fill_value(dcpl, H5T_NATIVE_UINT16, &fill);
        hsize_t vd[3] = {n, rows, cols}, vmax[3] = {n, rows, cols};
        for (size_t i = 0; i < nm; i++)
                if (m[i].unlimited)
                        vmax[0] = H5S_UNLIMITED;
        int rc = 0;
        for (size_t i = 0; i < nm && rc == 0; i++) {
                hsize_t sd[3] = {m[i].sn, rows, cols}, smax[3] = {m[i].unlimited ? H5S_UNLIMITED : m[i].sn, rows, cols};
                hsize_t voff[3] = {m[i].vfirst, 0, 0}, soff[3] = {m[i].sfirst, 0, 0}, cnt[3] = {m[i].n, rows, cols};
                hid_t vs = H5Screate_simple(3, vd, vmax), ss = H5Screate_simple(3, sd, smax);
                if (m[i].unlimited) {
                        hsize_t one[3] = {1, 1, 1}, ublk[3] = {H5S_UNLIMITED, rows, cols};
                        H5Sselect_hyperslab(vs, H5S_SELECT_SET, voff, NULL, one, ublk);
                        H5Sselect_hyperslab(ss, H5S_SELECT_SET, soff, NULL, one, ublk);
                } else {
                        H5Sselect_hyperslab(vs, H5S_SELECT_SET, voff, NULL, cnt, NULL);
                        H5Sselect_hyperslab(ss, H5S_SELECT_SET, soff, NULL, cnt, NULL);
                }
                if (H5Pset_virtual(dcpl, vs, m[i].file, m[i].dset, ss) < 0)
                        rc = -1;
                H5Sclose(vs);
                H5Sclose(ss);
        }
        hid_t sp = H5Screate_simple(3, vd, vmax), lc = lcpl_mkdirs();
        hid_t ds = rc == 0 ? H5Dcreate2(f, DS, H5T_NATIVE_UINT16, sp, lc, dcpl, H5P_DEFAULT) : -1;
        if (ds < 0)
                rc = -1;
        else
                H5Dclose(ds);
        H5Pclose(lc);
        H5Sclose(sp);
        H5Pclose(dcpl);
        H5Fclose(f);
        return rc;
}

/* The frames of image ids 0..5 in the same file, at /entry/raw/data (ids 0..2) and
 * /entry/raw/more (ids 3..5). */
static void raw_in_same_file(hid_t f) {
        enum { R = 16, C = 20 };
        static uint16_t buf[3][R][C];
        const char *paths[2] = {"/entry/raw/data", "/entry/raw/more"};
        hsize_t d[3] = {3, R, C};
        for (int p = 0; p < 2; p++) {
                for (int k = 0; k < 3; k++)
                        fill_frame(buf[k], ROID_DT_U16, R, C, (uint64_t)(3 * p + k));
                hid_t ds = bare_dataset(f, paths[p], H5T_NATIVE_UINT16, 3, d, NULL, 0, 0, NULL, false);
                H5Dwrite(ds, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
                H5Dclose(ds);
        }
}

static void test_vds(void) {
        enum { R = 16, C = 20 };
        /* Sources: vds-a.h5 holds the frames of image ids 0..2, vds-b.h5 those of 3..5
         * (image_nr_low 1 and 4), so a frame read through the VDS can be checked. */
        h5spec s = spec(ROID_DT_U16, R, C, 3, 0);
        s.layout = L_CONTIG;
        write_h5("vds-a.h5", &s);
        s.nr_low = 4;
        write_h5("vds-b.h5", &s);

        /* Names relative to the VDS file's directory (the test runs elsewhere), one stored
         * as an absolute path that no longer exists: HDF5 then looks for its last component. */
        vmap full[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}, {"/no/such/dir/vds-b.h5", DS, 3, 3, 0, 3, false}};
        write_vds("vds-full.h5", R, C, 6, full, 2, NULL);
        result res = replay(tpath("vds-full.h5"));
        tap_ok(res.r == 0 && all_ids(0, 6) && T.frames_ok == 6 && CNT(frames_failed) == 0 && T.starts == 1 &&
                       T.ends_terminated == 1,
               "VDS of two source files, all present: 6 frames, pixel for pixel (r=%d %s, %d frames, %d right)", res.r,
               res.err.msg, T.frames, T.frames_ok);

        /* The second source file is missing: its frames must not come out as fill values. */
        vmap part[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}, {"vds-gone.h5", DS, 3, 3, 0, 3, false}};
        write_vds("vds-part.h5", R, C, 6, part, 2, NULL);
        res = replay(tpath("vds-part.h5"));
        const char *log = log_since_last();
        tap_ok(res.r < 0 && strstr(res.err.msg, "vds-part.h5") && strstr(res.err.msg, "vds-gone.h5") &&
                       strstr(res.err.msg, DS) && strstr(res.err.msg, "virtual"),
               "VDS with one source file missing: error naming the VDS, the source file and dataset (%s)", res.err.msg);
        tap_ok(all_ids(0, 3) && T.frames_ok == 3 && T.starts == 1 && T.ends == 1,
               "... the 3 frames of the present source delivered, right, the series closed (%d frames, %d right)",
               T.frames, T.frames_ok);
        tap_ok(CNT(frames_failed) == 3 && T.errors == 3 && T.err_ids[0] == 3 && T.err_ids[2] == 5 &&
                       CNT(frames_decoded) == 3,
               "... frames 3..5 reported as failed and counted (failed %llu, decoded %llu)",
               (unsigned long long)CNT(frames_failed), (unsigned long long)CNT(frames_decoded));
        tap_ok(strstr(log, "vds-gone.h5") && strstr(log, "3..5"), "... the log names the source and its images 3..5");

        /* Every source missing (the reviewer's case): no frame of fill values at all. */
        vmap none[] = {{"vds-gone.h5", DS, 0, 3, 0, 3, false}};
        write_vds("vds-none.h5", R, C, 3, none, 1, NULL);
        res = replay(tpath("vds-none.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "vds-gone.h5") && T.frames == 0 && CNT(frames_failed) == 3 &&
                       T.starts == T.ends,
               "VDS whose only source is missing: error, 0 frames, 3 failed (%d frames, %s)", T.frames, res.err.msg);

        /* The source file is there, the dataset in it is not. */
        vmap nods[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}, {"vds-b.h5", "/entry/data/nothing", 3, 3, 0, 3, false}};
        write_vds("vds-nods.h5", R, C, 6, nods, 2, NULL);
        res = replay(tpath("vds-nods.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, "vds-b.h5") && strstr(res.err.msg, "/entry/data/nothing") &&
                       all_ids(0, 3) && T.frames_ok == 3 && CNT(frames_failed) == 3,
               "VDS whose second source dataset is missing: error naming it, 3 good frames (%s)", res.err.msg);

        /* A source compressed with bitshuffle-LZ4: HDF5 decodes a VDS's sources
         * itself, and has no plugin for it here (Debian ships none): the
         * error says which filter, not "frame unreadable". */
        h5spec z = spec(ROID_DT_U16, R, C, 3, BSLZ4);
        write_h5("vds-bslz4.h5", &z);
        vmap packed[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}, {"vds-bslz4.h5", DS, 3, 3, 0, 3, false}};
        write_vds("vds-packed.h5", R, C, 6, packed, 2, NULL);
        res = replay(tpath("vds-packed.h5"));
        if (H5Zfilter_avail(BSLZ4) > 0)
                tap_skip("a bitshuffle HDF5 plugin is installed: the VDS reads its source");
        else
                tap_ok(res.r < 0 && strstr(res.err.msg, "vds-bslz4.h5") && strstr(res.err.msg, "filter 32008") &&
                               strstr(res.err.msg, "plugin") && T.frames_ok == 3,
                       "VDS over a bitshuffle-LZ4 source without its HDF5 plugin: the filter named, the other "
                       "source's 3 frames right (%s)",
                       res.err.msg);

        /* "." is the VDS's own file. */
        vmap self[] = {{".", "/entry/raw/data", 0, 3, 0, 3, false}, {".", "/entry/raw/more", 3, 3, 0, 3, false}};
        write_vds("vds-self.h5", R, C, 6, self, 2, raw_in_same_file);
        res = replay(tpath("vds-self.h5"));
        tap_ok(res.r == 0 && all_ids(0, 6) && T.frames_ok == 6 && CNT(frames_failed) == 0,
               "VDS mapping \".\" (its own file): 6 frames, pixel for pixel (r=%d %s, %d right)", res.r, res.err.msg,
               T.frames_ok);
        vmap selfgone[] = {{".", "/entry/raw/data", 0, 3, 0, 3, false}, {".", "/entry/raw/gone", 3, 3, 0, 3, false}};
        write_vds("vds-selfgone.h5", R, C, 6, selfgone, 2, raw_in_same_file);
        res = replay(tpath("vds-selfgone.h5"));
        tap_ok(res.r < 0 && strstr(res.err.msg, ".:/entry/raw/gone") && all_ids(0, 3) && T.frames_ok == 3 &&
                       CNT(frames_failed) == 3,
               "VDS mapping \".\" to a missing dataset: error naming it, the 3 other frames right (%s)", res.err.msg);

        /* Frame 6 is mapped to nothing: it would be all fill values. */
        vmap gap[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}, {"vds-b.h5", DS, 3, 3, 0, 3, false}};
        write_vds("vds-gap.h5", R, C, 7, gap, 2, NULL);
        res = replay(tpath("vds-gap.h5"));
        tap_ok(res.r == 0 && all_ids(0, 6) && T.frames_ok == 6 && CNT(frames_failed) == 1 && T.err_ids[0] == 6,
               "VDS with an unmapped 7th frame: 6 frames delivered, frame 6 failed (r=%d, %d frames, %llu failed)",
               res.r, T.frames, (unsigned long long)CNT(frames_failed));

        /* HDF5_VDS_PREFIX: the VDS in a subdirectory, its source in the directory above.
         * roid must find the source exactly when HDF5 itself reads the real pixels. */
        char sub[128];
        snprintf(sub, sizeof sub, "%s/sub", tmpdir);
        mkdir(sub, 0700);
        vmap pre[] = {{"vds-a.h5", DS, 0, 3, 0, 3, false}};
        write_vds("sub/vds-prefix.h5", R, C, 3, pre, 1, NULL);
        for (int env = 0; env < 2; env++) {
                if (env)
                        setenv("HDF5_VDS_PREFIX", tmpdir, 1);
                uint16_t got[R * C], want[R * C];
                hid_t f = H5Fopen(tpath("sub/vds-prefix.h5"), H5F_ACC_RDONLY, H5P_DEFAULT);
                hid_t ds = H5Dopen2(f, DS, H5P_DEFAULT), fs = H5Dget_space(ds);
                hsize_t off[3] = {0, 0, 0}, cnt[3] = {1, R, C};
                hid_t ms = H5Screate_simple(3, cnt, NULL);
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
                H5Dread(ds, H5T_NATIVE_UINT16, ms, fs, H5P_DEFAULT, got);
                H5Sclose(ms);
                H5Sclose(fs);
                H5Dclose(ds);
                H5Fclose(f);
                fill_frame(want, ROID_DT_U16, R, C, 0);
                bool hdf5_found = memcmp(got, want, sizeof got) == 0;
                res = replay(tpath("sub/vds-prefix.h5"));
                bool roid_found = res.r == 0 && all_ids(0, 3) && T.frames_ok == 3;
                bool roid_missing = res.r < 0 && strstr(res.err.msg, "vds-a.h5") && T.frames == 0;
                tap_ok(hdf5_found == (bool)env && (env ? roid_found : roid_missing),
                       "VDS in a subdirectory, source above it, HDF5_VDS_PREFIX %s: HDF5 reads %s, roid %s (%s)",
                       env ? "set to it" : "unset", hdf5_found ? "the pixels" : "fill values",
                       roid_found ? "delivers the 3 frames" : "fails them", res.err.msg);
                unsetenv("HDF5_VDS_PREFIX");
        }
        unlink(tpath("sub/vds-prefix.h5"));
        rmdir(sub);

        /* Unlimited mappings are refused, not replayed in part. */
        vmap unl[] = {{"vds-a.h5", DS, 0, 3, 0, 3, true}};
        write_vds("vds-unlim.h5", R, C, 3, unl, 1, NULL);
        expect_error("VDS with an unlimited mapping", replay(tpath("vds-unlim.h5")), "vds-a.h5", "unlimited", NULL);
}

static void rm_tmpdir(void) {
        DIR *d = opendir(tmpdir);
        if (!d)
                return;
        struct dirent *e;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.')
                        unlink(tpath(e->d_name));
        closedir(d);
        rmdir(tmpdir);
}

/* What roid replay takes for HDF5: the signature at 0, or after a user block
 * (512, 1024, ... bytes), which HDF5 reads as usual; it read such a file as
 * a bare message ("neither CBOR nor JSON"; found by review). */
static void test_signature(void) {
        hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
        H5Pset_userblock(fcpl, 1024);
        hid_t f = H5Fcreate(tpath("userblock.h5"), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
        H5Pclose(fcpl);
        H5Fclose(f);
        FILE *t = fopen(tpath("text.h5"), "w");
        fputs("not HDF5: the signature is nowhere in here, however long the file\n", t);
        for (int i = 0; i < 200; i++)
                fputs("0123456789abcdef0123456789abcdef\n", t);
        fclose(t);
        tap_ok(roid_h5_is_hdf5(tpath("userblock.h5")) && !roid_h5_is_hdf5(tpath("text.h5")) &&
                       !roid_h5_is_hdf5(tpath("no-such-file.h5")),
               "HDF5 told by its signature, after a user block of 1024 bytes too; a text file and a missing one not");
}

int main(void) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/roid-h5-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                tap_ok(false, "mkdtemp");
                return tap_done();
        }
        /* Log lines go to a file so they can be checked; TAP stays on stdout. */
        FILE *logf = tmpfile();
        fflush(stderr);
        dup2(fileno(logf), STDERR_FILENO);
        roid_log_set_prefix(0);
        roid_log_set_ratelimit(ROID_LOG_RATELIMIT_INTERVAL_MS, 0);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

        test_signature();
        test_good_files();
        test_structure();
        test_master();
        test_master_metadata();

        test_unwritten();
        test_corrupt_chunks();
        test_bytes();
        test_vds();
        tap_ok(id_leaks == 0, "no replay left an HDF5 file or object open (%d did)", id_leaks);

        free(S_mask);
        rm_tmpdir();
        return tap_done();
}
