/* export.c - see export.h. */
#include "outputs/export.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service/h5err.h"
#include "service/log.h"

/* Rows of a results file's /entry/scan read to find the selected frames'
 * grid points: as many as the selection allows, times four (frames left out,
 * outside the RoI). */
#define MAX_SCAN_ROWS ((size_t)ROID_EXPORT_MAX_IDS * 4)

typedef struct {
        uint64_t id;
        uint32_t index[2];
        double position[2];
        bool done;
} sel;

enum { D_DATA, D_ID, D_INDEX, D_POS, D__N };

struct roid_export {
        roid_export_params p;
        sel *sel; /* sorted by id, unique */
        size_t n_sel;
        char want_uid[ROID_NAME_MAX]; /* the results file's series; "" with --ids */
        bool from_results;

        /* series */
        unsigned n_series;
        bool active, tentative, matched;
        char active_uid[ROID_NAME_MAX], other_uid[ROID_NAME_MAX];

        /* output, created at the first selected frame */
        hid_t file, d[D__N];
        bool created; /* the file at p.output is this run's */
        roid_dtype dtype;
        uint32_t rows, cols;
        size_t n_written;
        uint64_t n_refused; /* selected frames of another shape or dtype */
        bool failed;
        char why[ROID_ERR_MAX];
};

static int cmp_sel(const void *a, const void *b) {
        const uint64_t x = ((const sel *)a)->id, y = ((const sel *)b)->id;
        return x < y ? -1 : x > y;
}

static sel *find(roid_export *e, uint64_t id) {
        const sel key = {.id = id};
        return bsearch(&key, e->sel, e->n_sel, sizeof *e->sel, cmp_sel);
}

/* Sorts and drops repeats. */
static void sort_unique(roid_export *e) {
        qsort(e->sel, e->n_sel, sizeof *e->sel, cmp_sel);
        size_t n = 0;
        for (size_t i = 0; i < e->n_sel; i++)
                if (n == 0 || e->sel[n - 1].id != e->sel[i].id)
                        e->sel[n++] = e->sel[i];
        e->n_sel = n;
}

static void no_place(sel *s) {
        s->index[0] = s->index[1] = UINT32_MAX;
        s->position[0] = s->position[1] = NAN;
}

static int add_id(roid_export *e, size_t *cap, uint64_t id, roid_err *err) {
        if (e->n_sel == ROID_EXPORT_MAX_IDS)
                return roid_err_set(err, -EINVAL, "--ids: more than %u image ids", ROID_EXPORT_MAX_IDS);
        if (e->n_sel == *cap) {
                size_t nc = *cap ? *cap * 2 : 256;
                sel *n = realloc(e->sel, nc * sizeof *n);
                if (!n)
                        return -ENOMEM;
                e->sel = n;
                *cap = nc;
        }
        sel *s = &e->sel[e->n_sel++];
        *s = (sel){.id = id};
        no_place(s);
        return 0;
}

static int parse_u64(const char *s, char **end, uint64_t *ret) {
        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, end, 10);
        if (errno)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* "A,B-C,...": ids and inclusive ranges. */
static int parse_ids(roid_export *e, const char *text, roid_err *err) {
        size_t cap = 0;
        const char *s = text;
        if (!*s)
                return roid_err_set(err, -EINVAL, "--ids: empty list");
        for (;;) {
                char *end;
                uint64_t a, b;
                if (parse_u64(s, &end, &a) < 0)
                        return roid_err_set(err, -EINVAL, "--ids '%s': '%.20s' is not an image id (0, 1, ...)", text,
                                            s);
                b = a;
                if (*end == '-' && parse_u64(end + 1, &end, &b) < 0)
                        return roid_err_set(err, -EINVAL, "--ids '%s': a range needs two image ids, A-B", text);
                if (b < a)
                        return roid_err_set(err, -EINVAL, "--ids '%s': range %" PRIu64 "-%" PRIu64 " goes down", text,
                                            a, b);
                if (b - a >= ROID_EXPORT_MAX_IDS)
                        return roid_err_set(err, -EINVAL, "--ids: more than %u image ids", ROID_EXPORT_MAX_IDS);
                for (uint64_t id = a;; id++) {
                        int r = add_id(e, &cap, id, err);
                        if (r < 0)
                                return r;
                        if (id == b)
                                break;
                }
                if (*end == 0)
                        break;
                if (*end != ',')
                        return roid_err_set(err, -EINVAL, "--ids '%s': unexpected '%c' (a list is A,B-C,...)", text,
                                            *end);
                s = end + 1;
        }
        sort_unique(e);
        return 0;
}

/* ---- reading the results file ---- */

/* A dataset of rank `rank` whose first dimension is at most `max` rows (and
 * whose other dimension, if any, is `inner`): its row count. */
static int dataset_rows(hid_t f, const char *path, int rank, hsize_t inner, size_t max, hid_t *ret_d, size_t *ret_n,
                        roid_err *err) {
        hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
        if (d < 0)
                return roid_err_set(err, -EINVAL, "no dataset %s (not a roid results file?)", path);
        hid_t s = H5Dget_space(d);
        hsize_t dims[2] = {0, 0};
        const int rk = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
        if (rk == rank)
                H5Sget_simple_extent_dims(s, dims, NULL);
        H5Sclose(s);
        if (rk != rank || (rank == 2 && dims[1] != inner)) {
                H5Dclose(d);
                return roid_err_set(err, -EINVAL, "%s: not of rank %d%s", path, rank, rank == 2 ? " x 2" : "");
        }
        if (dims[0] > max) {
                H5Dclose(d);
                return roid_err_set(err, -EINVAL, "%s: %llu rows, more than the %zu roid export reads", path,
                                    (unsigned long long)dims[0], max);
        }
        *ret_d = d;
        *ret_n = (size_t)dims[0];
        return 0;
}

static int read_all(hid_t f, const char *path, hid_t type, int rank, size_t max, void **ret, size_t *ret_n,
                    roid_err *err) {
        hid_t d = H5I_INVALID_HID;
        size_t n = 0;
        int r = dataset_rows(f, path, rank, 2, max, &d, &n, err);
        if (r < 0)
                return r;
        void *buf = malloc((n ? n : 1) * H5Tget_size(type) * (size_t)rank);
        if (!buf) {
                H5Dclose(d);
                return -ENOMEM;
        }
        if (n && H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
                free(buf);
                H5Dclose(d);
                return roid_err_set(err, -EIO, "%s: cannot be read", path);
        }
        H5Dclose(d);
        *ret = buf;
        *ret_n = n;
        return 0;
}

static void read_uid(hid_t f, char *out, size_t cap) {
        out[0] = 0;
        hid_t g = H5Gopen2(f, "/entry", H5P_DEFAULT);
        hid_t a = g >= 0 ? H5Aopen(g, "series_unique_id", H5P_DEFAULT) : H5I_INVALID_HID;
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        char *s = NULL;
        if (a >= 0 && H5Aread(a, t, &s) >= 0 && s) {
                snprintf(out, cap, "%s", s);
                H5free_memory(s);
        }
        H5Tclose(t);
        if (a >= 0)
                H5Aclose(a);
        if (g >= 0)
                H5Gclose(g);
}

static int read_results(roid_export *e, roid_err *err) {
        const char *path = e->p.results;
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, H5P_DEFAULT);
        if (f < 0)
                f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
                return roid_err_set(err, -ENOENT, "%s: cannot be opened as HDF5", path);
        uint64_t *ids = NULL, *row_id = NULL;
        uint32_t *index = NULL;
        double *pos = NULL;
        size_t n_ids, n_rows, n2;
        int r;
        uint8_t final = 0;
        hid_t d = H5Dopen2(f, "/entry/roi/final", H5P_DEFAULT);
        if (d < 0 || H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, &final) < 0)
                final = 0xff;
        if (d >= 0)
                H5Dclose(d);
        if (final != 1) {
                r = roid_err_set(err, -EINVAL,
                                 final == 0xff ? "no /entry/roi/final (not a roid results file?)"
                                               : "the series has no final map yet (/entry/roi/final = 0: still "
                                                 "running, or cut off); its image_ids are empty until then");
                goto out;
        }
        read_uid(f, e->want_uid, sizeof e->want_uid);
        if ((r = read_all(f, "/entry/roi/image_ids", H5T_NATIVE_UINT64, 1, ROID_EXPORT_MAX_IDS, (void **)&ids, &n_ids,
                          err)) < 0 ||
            (r = read_all(f, "/entry/scan/image_id", H5T_NATIVE_UINT64, 1, MAX_SCAN_ROWS, (void **)&row_id, &n_rows,
                          err)) < 0 ||
            (r = read_all(f, "/entry/scan/index", H5T_NATIVE_UINT32, 2, MAX_SCAN_ROWS, (void **)&index, &n2, err)) < 0)
                goto out;
        if (n2 != n_rows) {
                r = roid_err_set(err, -EINVAL, "/entry/scan/index has %zu rows, image_id %zu", n2, n_rows);
                goto out;
        }
        if ((r = read_all(f, "/entry/scan/position", H5T_NATIVE_DOUBLE, 2, MAX_SCAN_ROWS, (void **)&pos, &n2, err)) < 0)
                goto out;
        if (n2 != n_rows) {
                r = roid_err_set(err, -EINVAL, "/entry/scan/position has %zu rows, image_id %zu", n2, n_rows);
                goto out;
        }
        size_t cap = 0;
        for (size_t i = 0; i < n_ids; i++)
                if ((r = add_id(e, &cap, ids[i], err)) < 0)
                        goto out;
        sort_unique(e);
        for (size_t i = 0; i < n_rows; i++) {
                sel *s = find(e, row_id[i]);
                if (s && s->index[0] == UINT32_MAX) {
                        memcpy(s->index, index + 2 * i, sizeof s->index);
                        memcpy(s->position, pos + 2 * i, sizeof s->position);
                }
        }
        r = 0;
out:
        free(ids);
        free(row_id);
        free(index);
        free(pos);
        H5Fclose(f);
        if (r < 0)
                roid_err_prefix(err, "%s", path);
        return r;
}

int roid_export_new(const roid_export_params *p, roid_export **ret, roid_err *err) {
        if (p->deflate < 0 || p->deflate > 9)
                return roid_err_set(err, -EINVAL, "--deflate %d: must be 0 (none) .. 9", p->deflate);
        if (!p->output || !p->output[0])
                return roid_err_set(err, -EINVAL, "no output file (--output FILE)");
        if (!p->results == !p->ids)
                return roid_err_set(err, -EINVAL, "give either --results FILE or --ids LIST");
        if (access(p->output, F_OK) == 0) /* said before the inputs are read; H5F_ACC_EXCL makes sure */
                return roid_err_set(err, -EEXIST, "%s exists: roid export never replaces a file", p->output);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors are reported by name here */
        roid_export *e = calloc(1, sizeof *e);
        if (!e)
                return -ENOMEM;
        e->p = *p;
        e->file = H5I_INVALID_HID;
        for (int i = 0; i < D__N; i++)
                e->d[i] = H5I_INVALID_HID;
        e->from_results = p->results != NULL;
        int r = e->from_results ? read_results(e, err) : parse_ids(e, p->ids, err);
        if (r < 0) {
                roid_export_free(e);
                return r;
        }
        *ret = e;
        return 0;
}

static void fail(roid_export *e, const char *what) {
        if (!e->failed)
                snprintf(e->why, sizeof e->why, "%s: %s", e->p.output, what);
        e->failed = true;
}

/* After a failed HDF5 call: with HDF5's reason ("file write failed: No space
 * left on device"). */
static void fail_h5(roid_export *e, const char *what) {
        char why[160];
        if (!e->failed)
                snprintf(e->why, sizeof e->why, "%s: %s: %s", e->p.output, what, roid_h5_reason(why, sizeof why));
        e->failed = true;
}

static void close_output(roid_export *e) {
        for (int i = 0; i < D__N; i++)
                if (e->d[i] >= 0) {
                        H5Dclose(e->d[i]);
                        e->d[i] = H5I_INVALID_HID;
                }
        if (e->file >= 0) {
                if (H5Fclose(e->file) < 0) /* HDF5 keeps it half freed (h5err.h) */
                        fail_h5(e, "cannot be closed");
                e->file = H5I_INVALID_HID;
        }
}

void roid_export_free(roid_export *e) {
        if (!e)
                return;
        close_output(e);
        free(e->sel);
        free(e);
}

/* ---- writing ---- */

static hid_t pixel_type(roid_dtype t) {
        return t == ROID_DT_U8 ? H5T_STD_U8LE : t == ROID_DT_U16 ? H5T_STD_U16LE : H5T_STD_U32LE;
}

static hid_t pixel_mem_type(roid_dtype t) {
        return t == ROID_DT_U8 ? H5T_NATIVE_UINT8 : t == ROID_DT_U16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
}

static bool attr_str(hid_t loc, const char *name, const char *v) {
        hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
        bool ok = t >= 0 && s >= 0 && H5Tset_size(t, H5T_VARIABLE) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0 &&
                  (a = H5Acreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT)) >= 0 && H5Awrite(a, t, &v) >= 0;
        if (a >= 0)
                H5Aclose(a);
        if (s >= 0)
                H5Sclose(s);
        if (t >= 0)
                H5Tclose(t);
        return ok;
}

/* A dataset of 0 rows growing along the first dimension. */
static hid_t growing(hid_t g, const char *name, hid_t type, int rank, const hsize_t *inner, int deflate) {
        hsize_t dims[3] = {0}, max[3] = {H5S_UNLIMITED}, chunk[3] = {1};
        for (int i = 1; i < rank; i++)
                dims[i] = max[i] = chunk[i] = inner[i - 1];
        if (rank < 3) /* small rows: about 64 KiB a chunk */
                chunk[0] = 4096;
        hid_t s = H5Screate_simple(rank, dims, max), p = H5Pcreate(H5P_DATASET_CREATE), d = H5I_INVALID_HID;
        if (s >= 0 && p >= 0 && H5Pset_chunk(p, rank, chunk) >= 0 &&
            (deflate == 0 || (H5Pset_shuffle(p) >= 0 && H5Pset_deflate(p, (unsigned)deflate) >= 0)))
                d = H5Dcreate2(g, name, type, s, H5P_DEFAULT, p, H5P_DEFAULT);
        if (p >= 0)
                H5Pclose(p);
        if (s >= 0)
                H5Sclose(s);
        return d;
}

static bool create_output(roid_export *e, const roid_frame_event *ev) {
        /* H5F_ACC_EXCL: an existing file is never replaced */
        e->file = H5Fcreate(e->p.output, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
        if (e->file < 0) {
                fail_h5(e, "cannot be created");
                return false;
        }
        e->created = true;
        hid_t en = H5Gcreate2(e->file, "entry", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        hid_t g = en >= 0 ? H5Gcreate2(en, "data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : H5I_INVALID_HID;
        const hsize_t shape[2] = {ev->rows, ev->cols}, two[1] = {2};
        const int dfl = ev->rows * (uint64_t)ev->cols > 1 ? e->p.deflate : 0;
        bool ok = g >= 0 && attr_str(en, "NX_class", "NXentry") && attr_str(g, "NX_class", "NXdata") &&
                  attr_str(g, "signal", "data") && attr_str(en, "program_name", "roid " ROID_VERSION) &&
                  attr_str(en, "series_unique_id", ev->series->series_unique_id) &&
                  attr_str(en, "results_file", e->p.results ? e->p.results : "") &&
                  attr_str(en, "channel", ev->channel_name ? ev->channel_name : "");
        if (ok) {
                e->d[D_DATA] = growing(g, "data", pixel_type(ev->dtype), 3, shape, dfl);
                e->d[D_ID] = growing(g, "image_id", H5T_STD_U64LE, 1, NULL, 0);
                e->d[D_INDEX] = growing(g, "index", H5T_STD_U32LE, 2, two, 0);
                e->d[D_POS] = growing(g, "position", H5T_IEEE_F64LE, 2, two, 0);
                for (int i = 0; i < D__N; i++)
                        ok &= e->d[i] >= 0;
        }
        if (ok && ev->pixel_mask) {
                hid_t s = H5Screate_simple(2, shape, NULL), d = H5I_INVALID_HID;
                ok = s >= 0 &&
                     (d = H5Dcreate2(g, "pixel_mask", H5T_STD_U32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
                     H5Dwrite(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ev->pixel_mask) >= 0;
                if (d >= 0)
                        H5Dclose(d);
                if (s >= 0)
                        H5Sclose(s);
        }
        if (g >= 0)
                H5Gclose(g);
        if (en >= 0)
                H5Gclose(en);
        if (!ok) {
                fail_h5(e, "cannot write its layout");
                return false;
        }
        e->dtype = ev->dtype;
        e->rows = ev->rows;
        e->cols = ev->cols;
        return true;
}

/* Row n of dataset d (rank 1..3, the first dimension grown to n + 1). */
/* Row n of dataset d; on failure the export fails with HDF5's reason, taken
 * before the closes below clear its error stack. */
static bool put_row(roid_export *e, hid_t d, hid_t mem_type, size_t n, const void *v) {
        hsize_t dims[3] = {0}, start[3] = {0}, count[3] = {1, 1, 1};
        hid_t fs = H5Dget_space(d), ms = H5I_INVALID_HID;
        const int rank = fs >= 0 ? H5Sget_simple_extent_dims(fs, dims, NULL) : -1;
        bool ok = rank >= 1 && rank <= 3;
        if (ok) {
                dims[0] = n + 1;
                start[0] = n;
                for (int i = 1; i < rank; i++)
                        count[i] = dims[i];
                ok = H5Dset_extent(d, dims) >= 0;
        }
        if (ok) { /* the extended space */
                H5Sclose(fs);
                fs = H5Dget_space(d);
                ms = H5Screate_simple(rank, count, NULL);
                ok = fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
                     H5Dwrite(d, mem_type, ms, fs, H5P_DEFAULT, v) >= 0;
        }
        if (!ok)
                fail_h5(e, "cannot be written");
        if (ms >= 0)
                H5Sclose(ms);
        if (fs >= 0)
                H5Sclose(fs);
        return ok;
}

/* Back to no frames: a later series is the results file's (see on_start),
 * or none is (roid_export_finish).  The file is this run's own (created
 * exclusively), and its shape, pixel mask and series attribute are another
 * series': it is removed, and the next frame selected creates it again. */
static void reset_output(roid_export *e) {
        close_output(e);
        if (e->created && !e->failed && unlink(e->p.output) < 0 && errno != ENOENT)
                fail(e, "cannot be removed to start over with the results file's series");
        e->created = false;
        for (size_t i = 0; i < e->n_sel; i++)
                e->sel[i].done = false;
        e->n_written = 0;
        e->n_refused = 0;
}

static void on_start(void *ctx, const roid_series *s) {
        roid_export *e = ctx;
        e->n_series++;
        e->active = false;
        if (e->from_results && strcmp(s->series_unique_id, e->want_uid) == 0) {
                if (e->matched)
                        return; /* the first of that id holds the frames */
                if (e->tentative && e->file >= 0) {
                        roid_log(ROID_LOG_NOTICE,
                                 "export: series '%s' is the results file's: the frames taken from '%s' are dropped",
                                 s->series_unique_id, e->active_uid);
                        reset_output(e);
                }
                e->matched = e->active = true;
                e->tentative = false;
        } else if (e->n_series == 1) { /* --ids, or until the results file's series turns up */
                e->active = true;
                e->tentative = e->from_results;
        } else if (!e->other_uid[0]) {
                snprintf(e->other_uid, sizeof e->other_uid, "%s", s->series_unique_id);
        }
        if (e->active)
                snprintf(e->active_uid, sizeof e->active_uid, "%s", s->series_unique_id);
}

static void on_end(void *ctx, const roid_series *s, bool terminated) {
        (void)s;
        (void)terminated;
        ((roid_export *)ctx)->active = false;
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        roid_export *e = ctx;
        if (!e->active || e->failed || !ev->pixels)
                return;
        sel *s = find(e, ev->image_id);
        if (!s || s->done)
                return;
        if (e->file < 0 && !create_output(e, ev))
                return;
        if (ev->dtype != e->dtype || ev->rows != e->rows || ev->cols != e->cols) {
                e->n_refused++;
                roid_log(ROID_LOG_ERR,
                         "export: image %" PRIu64 " is %s %" PRIu32 " x %" PRIu32 ", the file's frames %s %" PRIu32
                         " x %" PRIu32 ": left out",
                         ev->image_id, roid_dtype_name(ev->dtype), ev->rows, ev->cols, roid_dtype_name(e->dtype),
                         e->rows, e->cols);
                return;
        }
        const size_t n = e->n_written;
        if (!put_row(e, e->d[D_DATA], pixel_mem_type(ev->dtype), n, ev->pixels) ||
            !put_row(e, e->d[D_ID], H5T_NATIVE_UINT64, n, &ev->image_id) ||
            !put_row(e, e->d[D_INDEX], H5T_NATIVE_UINT32, n, s->index) ||
            !put_row(e, e->d[D_POS], H5T_NATIVE_DOUBLE, n, s->position))
                return;
        s->done = true;
        e->n_written++;
}

void roid_export_sink(roid_export *e, roid_sink *ret) {
        *ret = (roid_sink){.ctx = e, .series_start = on_start, .frame = on_frame, .series_end = on_end};
}

int roid_export_finish(roid_export *e, size_t *n_written, roid_err *err) {
        close_output(e);
        if (!e->failed && e->from_results && !e->matched && e->n_series > 1)
                reset_output(e);       /* the frames of a series the results file is not of */
        if (e->failed && e->created) { /* a partial file would pass for the frames asked for */
                const bool gone = unlink(e->p.output) == 0 || errno == ENOENT;
                e->created = false;
                e->n_written = 0;
                *n_written = 0;
                return roid_err_set(err, -EIO, "%s; %s", e->why,
                                    gone ? "the partial file is removed" : "the partial file could not be removed");
        }
        *n_written = e->n_written;
        if (e->failed)
                return roid_err_set(err, -EIO, "%s", e->why);
        if (e->from_results && !e->matched && e->n_series > 1)
                return roid_err_set(err, -EINVAL,
                                    "the results file is of series '%s'; the inputs hold %u series, none of it "
                                    "(give the inputs of that series alone)",
                                    e->want_uid, e->n_series);
        if (e->tentative)
                roid_log(ROID_LOG_NOTICE,
                         "export: the results file's series is '%s', the input's '%s': taken as the same", e->want_uid,
                         e->active_uid);
        if (!e->from_results && e->n_series > 1)
                roid_log(ROID_LOG_NOTICE, "export: --ids picks from the first series ('%s'); %u more series ignored",
                         e->active_uid, e->n_series - 1);
        size_t missing = e->n_sel - e->n_written;
        if (missing) {
                uint64_t first = 0;
                for (size_t i = 0; i < e->n_sel; i++)
                        if (!e->sel[i].done) {
                                first = e->sel[i].id;
                                break;
                        }
                return roid_err_set(err, -ENOENT,
                                    "%zu of %zu selected frames are not in %s (the first: image %" PRIu64
                                    "): not in the inputs, failed to decode%s",
                                    missing, e->n_sel, e->n_written ? e->p.output : "the output", first,
                                    e->n_refused ? ", or of another shape" : "");
        }
        return 0;
}
