#include "outputs/results.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "analysis/scan.h"
#include "service/h5err.h"

/* Longest results file path (analysis.h ROID_PATH_MAX is the same). */
#define RES_PATH_MAX 4096

#define RESULTS_VERSION 5
/* Frames converted (append) or read back (final labels) per HDF5 call. */
#define BATCH   512
#define MAX_MOD (2 * (1 + ROID_MAX_SEGMENTS))
#define WHY_MAX 160

typedef enum { T_F64, T_U8, T_U32, T_U64, T_I64 } dtype;

static hid_t mem_type(dtype t) {
        switch (t) {
        case T_F64:
                return H5T_NATIVE_DOUBLE;
        case T_U8:
                return H5T_NATIVE_UINT8;
        case T_U32:
                return H5T_NATIVE_UINT32;
        case T_U64:
                return H5T_NATIVE_UINT64;
        default:
                return H5T_NATIVE_INT64;
        }
}

static hid_t file_type(dtype t) {
        switch (t) {
        case T_F64:
                return H5T_IEEE_F64LE;
        case T_U8:
                return H5T_STD_U8LE;
        case T_U32:
                return H5T_STD_U32LE;
        case T_U64:
                return H5T_STD_U64LE;
        default:
                return H5T_STD_I64LE;
        }
}

enum { G_FEATURES, G_SCAN, G_ROI, G_CLUSTERS, G_COUNTERS, G__N };

/* Per-frame datasets: N rows of `inner` shape. */
enum { IN_1, IN_2, IN_S, IN_S2 };
enum { F_SUM, F_COM, F_SEG_SUM, F_SEG_COM, F_BF, F_DF, F_IMAGE_ID, F_INDEX, F_POS, F_LEFT_OUT, F__N };
static const struct {
        int group;
        const char *name;
        dtype t;
        int inner;
        const char *units;
} frame_ds[F__N] = {
        [F_SUM] = {G_FEATURES, "sum", T_F64, IN_1, "counts"},
        [F_COM] = {G_FEATURES, "com", T_F64, IN_2, "pixel"},
        [F_SEG_SUM] = {G_FEATURES, "segment_sum", T_F64, IN_S, "counts"},
        [F_SEG_COM] = {G_FEATURES, "segment_com", T_F64, IN_S2, "pixel"},
        [F_BF] = {G_FEATURES, "bf", T_F64, IN_1, "counts"},
        [F_DF] = {G_FEATURES, "df", T_F64, IN_1, "counts"},
        [F_IMAGE_ID] = {G_SCAN, "image_id", T_U64, IN_1, NULL},
        [F_INDEX] = {G_SCAN, "index", T_U32, IN_2, NULL},
        [F_POS] = {G_SCAN, "position", T_F64, IN_2, NULL},
        [F_LEFT_OUT] = {G_SCAN, "left_out", T_U8, IN_1, NULL},
};

enum {
        M_MASK,
        M_RAW_MASK,
        M_ONLINE_MASK,
        M_COUNTS,
        M_OUTLIERS,
        M_FENCE,
        M_FILTERED,
        M_RAW,
        M_LABELS,
        M_ONLINE_LABELS,
        M_CENTRES,
        M_SEGMENT,
        M_IMAGE_IDS,
        M_FRAMES,
        M_FIRST_ROW,
        M_FINAL,
        M_CLABELS,
        M_CENTROIDS,
        M_POINT_LABELS,
        M__N
};

struct roid_results {
        hid_t file, entry, g[G__N], fd[F__N], md[M__N];
        unsigned S, nmod, d, k;
        uint32_t ny, nx;
        uint64_t n;
        uint64_t first_row; /* the maps' first row of /entry/scan: rows before a control reset are not theirs */
        bool failed, detached;
        char why[WHY_MAX]; /* HDF5's innermost reason for the first failure not yet reported */
        char path[RES_PATH_MAX];
        /* one batch of columns (append) or of read-back rows (final labels) */
        uint64_t *b_image_id;
        uint32_t *b_index;
        double *b_pos, *b_sum, *b_com, *b_seg_sum, *b_seg_com, *b_bf, *b_df;
        uint8_t *b_lab, *b_left;
};

/* Keeps the innermost message of HDF5's error stack of a failed call: the
 * stack is cleared by the next API call. */
static bool ok(roid_results *w, int64_t r) {
        if (r >= 0)
                return true;
        if (!w->why[0])
                roid_h5_reason(w->why, sizeof w->why);
        return false;
}

static int fail(roid_results *w, roid_err *err, const char *what) {
        int r = roid_err_set(err, -EIO, "HDF5: %s: writing %s failed: %s", w->path, what,
                             w->why[0] ? w->why : "no reason given");
        w->why[0] = '\0';
        w->failed = true;
        return r;
}

/* ---------------------------------------------------------- attributes */

/* Text is stored as variable-length UTF-8 strings (everything roid writes is
 * UTF-8, checked where it came in), which h5py reads as str, not bytes. */
static hid_t utf8_type(roid_results *w) {
        hid_t t = H5Tcopy(H5T_C_S1);
        if (ok(w, t) && ok(w, H5Tset_size(t, H5T_VARIABLE)) && ok(w, H5Tset_cset(t, H5T_CSET_UTF8)))
                return t;
        if (t >= 0)
                H5Tclose(t);
        return H5I_INVALID_HID;
}

static bool attr_str(roid_results *w, hid_t loc, const char *name, const char *value) {
        hid_t t = utf8_type(w), s = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
        bool good = t >= 0 && ok(w, s) && ok(w, a = H5Acreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT)) &&
                    ok(w, H5Awrite(a, t, &value));
        if (a >= 0)
                H5Aclose(a);
        if (s >= 0)
                H5Sclose(s);
        if (t >= 0)
                H5Tclose(t);
        return good;
}

static bool attr_num(roid_results *w, hid_t loc, const char *name, dtype type, const void *v, hsize_t n) {
        hid_t s = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL), a = H5I_INVALID_HID;
        bool good = ok(w, s) && ok(w, a = H5Acreate2(loc, name, file_type(type), s, H5P_DEFAULT, H5P_DEFAULT)) &&
                    ok(w, H5Awrite(a, mem_type(type), v));
        if (a >= 0)
                H5Aclose(a);
        if (s >= 0)
                H5Sclose(s);
        return good;
}

static bool attr_f64(roid_results *w, hid_t loc, const char *name, double v) {
        return attr_num(w, loc, name, T_F64, &v, 1);
}

static bool attr_i64(roid_results *w, hid_t loc, const char *name, int64_t v) {
        return attr_num(w, loc, name, T_I64, &v, 1);
}

/* Rewrites an attribute created before SWMR started (fixed size: allowed). */
static bool attr_rewrite(roid_results *w, hid_t loc, const char *name, dtype type, const void *v) {
        hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
        bool good = ok(w, a) && ok(w, H5Awrite(a, mem_type(type), v));
        if (a >= 0)
                H5Aclose(a);
        return good;
}

/* ------------------------------------------------------------- objects */

static hid_t group(roid_results *w, hid_t loc, const char *name, const char *nx_class) {
        hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (!ok(w, g))
                return H5I_INVALID_HID;
        if (!attr_str(w, g, "NX_class", nx_class)) {
                H5Gclose(g);
                return H5I_INVALID_HID;
        }
        return g;
}

/* A dataset.  chunk != NULL: chunked, extendible along maxdims; else
 * fixed-size, allocated (and filled) now so that rewriting it in place under
 * SWMR never allocates. */
static hid_t dataset(roid_results *w, hid_t loc, const char *name, dtype t, int rank, const hsize_t *dims,
                     const hsize_t *maxdims, const hsize_t *chunk, const void *fill, const char *units) {
        hid_t s = rank ? H5Screate_simple(rank, dims, maxdims) : H5Screate(H5S_SCALAR);
        hid_t p = H5Pcreate(H5P_DATASET_CREATE), d = H5I_INVALID_HID;
        bool good = ok(w, s) && ok(w, p);
        if (good && chunk)
                good = ok(w, H5Pset_chunk(p, rank, chunk));
        else if (good)
                good = ok(w, H5Pset_alloc_time(p, H5D_ALLOC_TIME_EARLY));
        if (good && fill)
                good = ok(w, H5Pset_fill_value(p, mem_type(t), fill));
        if (good)
                good = ok(w, d = H5Dcreate2(loc, name, file_type(t), s, H5P_DEFAULT, p, H5P_DEFAULT));
        if (good && units)
                good = attr_str(w, d, "units", units);
        if (!good && d >= 0) {
                H5Dclose(d);
                d = H5I_INVALID_HID;
        }
        if (p >= 0)
                H5Pclose(p);
        if (s >= 0)
                H5Sclose(s);
        return d;
}

static int frame_dims(const roid_results *w, int i, hsize_t n, hsize_t *dims) {
        dims[0] = n;
        switch (frame_ds[i].inner) {
        case IN_2:
                dims[1] = 2;
                return 2;
        case IN_S:
                dims[1] = w->S;
                return 2;
        case IN_S2:
                dims[1] = w->S;
                dims[2] = 2;
                return 3;
        default:
                return 1;
        }
}

/* Chunks of about 64 KiB: big enough for few index entries, small enough for
 * HDF5's default 1 MiB chunk cache, so appends do not rewrite whole chunks. */
static hsize_t chunk_rows(hsize_t row_bytes) {
        hsize_t r = 65536 / row_bytes;
        return r < 16 ? 16 : r;
}

static bool create_frame_datasets(roid_results *w, const char *pos_units) {
        for (int i = 0; i < F__N; i++) {
                hsize_t dims[3], maxdims[3], chunk[3];
                int rank = frame_dims(w, i, 0, dims);
                hsize_t row = 8;
                for (int j = 1; j < rank; j++)
                        row *= dims[j];
                if (frame_ds[i].t == T_U32)
                        row /= 2;
                memcpy(maxdims, dims, sizeof dims);
                memcpy(chunk, dims, sizeof dims);
                maxdims[0] = H5S_UNLIMITED;
                chunk[0] = chunk_rows(row);
                /* Rows the writer never wrote (a write failure) read as no frame:
                 * image_id and index at their maximum (off the grid), position NaN,
                 * not as image 0 at grid point (0, 0). */
                const double nan = NAN;
                const uint64_t no_id = UINT64_MAX;
                const uint32_t no_index = UINT32_MAX;
                const void *fill = i == F_POS        ? (const void *)&nan
                                   : i == F_IMAGE_ID ? (const void *)&no_id
                                   : i == F_INDEX    ? (const void *)&no_index
                                                     : NULL;
                const char *units = i == F_POS && pos_units && *pos_units ? pos_units : frame_ds[i].units;
                w->fd[i] = dataset(w, w->g[frame_ds[i].group], frame_ds[i].name, frame_ds[i].t, rank, dims, maxdims,
                                   chunk, fill, units);
                if (w->fd[i] < 0)
                        return false;
        }
        return true;
}

static bool create_map_datasets(roid_results *w) {
        hid_t roi = w->g[G_ROI], cl = w->g[G_CLUSTERS];
        hsize_t dm[2] = {w->ny, w->nx}, dmm[3] = {w->nmod, w->ny, w->nx}, dc[2] = {w->nmod, 2}, dn = w->nmod;
        hsize_t dk[2] = {w->k, w->d}, zero = 0, unl = H5S_UNLIMITED, ch_ids = 4096, ch_lab = 16384;
        double nan = NAN, inf = INFINITY;
        uint8_t u0 = 0, unseen = ROID_ROI_UNSEEN;
        uint32_t c0 = 0;
        uint64_t z64 = 0;
        bool good = attr_str(w, roi, "signal", "mask");
        good = good && (w->md[M_MASK] = dataset(w, roi, "mask", T_U8, 2, dm, NULL, NULL, &u0, NULL)) >= 0;
        good = good && (w->md[M_RAW_MASK] = dataset(w, roi, "raw_mask", T_U8, 2, dm, NULL, NULL, &u0, NULL)) >= 0;
        good = good && (w->md[M_ONLINE_MASK] = dataset(w, roi, "online_mask", T_U8, 2, dm, NULL, NULL, &u0, NULL)) >= 0;
        good = good && (w->md[M_COUNTS] = dataset(w, roi, "counts", T_U32, 2, dm, NULL, NULL, &c0, NULL)) >= 0;
        good = good && (w->md[M_OUTLIERS] = dataset(w, roi, "outliers", T_U8, 2, dm, NULL, NULL, &u0, NULL)) >= 0;
        good = good &&
               (w->md[M_FENCE] = dataset(w, roi, "outlier_fence", T_F64, 0, NULL, NULL, NULL, &inf, "counts")) >= 0;
        good = good && (w->md[M_FILTERED] = dataset(w, roi, "filtered", T_F64, 3, dmm, NULL, NULL, &nan, NULL)) >= 0;
        good = good && (w->md[M_RAW] = dataset(w, roi, "raw", T_F64, 3, dmm, NULL, NULL, &nan, NULL)) >= 0;
        good = good && (w->md[M_LABELS] = dataset(w, roi, "labels", T_U8, 3, dmm, NULL, NULL, &unseen, NULL)) >= 0;
        good = good && (w->md[M_ONLINE_LABELS] =
                                dataset(w, roi, "online_labels", T_U8, 3, dmm, NULL, NULL, &unseen, NULL)) >= 0;
        good = good && (w->md[M_CENTRES] = dataset(w, roi, "centres", T_F64, 2, dc, NULL, NULL, &nan, NULL)) >= 0;
        good = good &&
               (w->md[M_SEGMENT] = dataset(w, roi, "modality_segment", T_I64, 1, &dn, NULL, NULL, NULL, NULL)) >= 0;
        good = good &&
               (w->md[M_IMAGE_IDS] = dataset(w, roi, "image_ids", T_U64, 1, &zero, &unl, &ch_ids, NULL, NULL)) >= 0;
        good = good && (w->md[M_FRAMES] = dataset(w, roi, "frames", T_U64, 0, NULL, NULL, NULL, &z64, NULL)) >= 0;
        good = good && (w->md[M_FIRST_ROW] = dataset(w, roi, "first_row", T_U64, 0, NULL, NULL, NULL, &z64, NULL)) >= 0;
        good = good && (w->md[M_FINAL] = dataset(w, roi, "final", T_U8, 0, NULL, NULL, NULL, &u0, NULL)) >= 0;
        good = good && (w->md[M_CLABELS] = dataset(w, cl, "labels", T_U8, 1, &zero, &unl, &ch_lab, &unseen, NULL)) >= 0;
        good = good && (w->md[M_CENTROIDS] = dataset(w, cl, "centroids", T_F64, 2, dk, NULL, NULL, &nan, NULL)) >= 0;
        good = good &&
               (w->md[M_POINT_LABELS] = dataset(w, cl, "point_labels", T_U8, 2, dm, NULL, NULL, &unseen, NULL)) >= 0;
        if (!good)
                return false;
        /* The modality -> segment table is known now and never changes. */
        int64_t seg[MAX_MOD];
        for (unsigned m = 0; m < w->nmod; m++)
                seg[m] = m < 2 ? -1 : (int64_t)(m - 2) / 2;
        return ok(w, H5Dwrite(w->md[M_SEGMENT], H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, seg));
}

void roid_results_detector_from_start(roid_results_detector *d, roid_format format, const roid_start_info *st,
                                      const char *channel) {
        memset(d, 0, sizeof *d);
        snprintf(d->stream_format, sizeof d->stream_format, "%s",
                 format == ROID_FMT_V2   ? "stream V2"
                 : format == ROID_FMT_V1 ? "stream V1"
                                         : "HDF5 file");
        snprintf(d->channel, sizeof d->channel, "%s", channel ? channel : "");
        d->number_of_images = -1;
        d->count_time = d->frame_time = d->x_pixel_size = d->y_pixel_size = NAN;
        d->sensor_thickness = d->incident_energy = d->incident_wavelength = d->threshold_energy = NAN;
        if (!st)
                return;
        memcpy(d->arm_date, st->arm_date, sizeof d->arm_date);
        memcpy(d->description, st->detector_description, sizeof d->description);
        memcpy(d->serial_number, st->detector_serial_number, sizeof d->serial_number);
        memcpy(d->sensor_material, st->sensor_material, sizeof d->sensor_material);
        if (st->has_number_of_images && st->number_of_images <= INT64_MAX)
                d->number_of_images = (int64_t)st->number_of_images;
        if (st->has_count_time)
                d->count_time = st->count_time;
        if (st->has_frame_time)
                d->frame_time = st->frame_time;
        if (st->has_pixel_size) {
                d->x_pixel_size = st->pixel_size_x;
                d->y_pixel_size = st->pixel_size_y;
        }
        if (st->sensor_thickness > 0) /* no flag: 0 when not sent */
                d->sensor_thickness = st->sensor_thickness;
        if (st->has_energy)
                d->incident_energy = st->incident_energy;
        if (st->has_wavelength)
                d->incident_wavelength = st->incident_wavelength;
        for (unsigned i = 0; channel && i < st->n_channels && i < ROID_MAX_CHANNELS; i++)
                if (strcmp(st->channels[i], channel) == 0)
                        d->threshold_energy = st->threshold_energy[i];
}

/* A scalar dataset, written now (never again: allowed before SWMR). */
static bool scalar_f64(roid_results *w, hid_t loc, const char *name, double v, const char *units) {
        if (isnan(v))
                return true; /* not sent: left out, as the detector did */
        hid_t d = dataset(w, loc, name, T_F64, 0, NULL, NULL, NULL, NULL, units);
        bool good = d >= 0 && ok(w, H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v));
        if (d >= 0)
                H5Dclose(d);
        return good;
}

static bool scalar_str(roid_results *w, hid_t loc, const char *name, const char *v) {
        if (!v[0])
                return true;
        hid_t t = utf8_type(w), s = H5Screate(H5S_SCALAR), d = H5I_INVALID_HID;
        bool good = t >= 0 && ok(w, s) &&
                    ok(w, d = H5Dcreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)) &&
                    ok(w, H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v));
        if (d >= 0)
                H5Dclose(d);
        if (s >= 0)
                H5Sclose(s);
        if (t >= 0)
                H5Tclose(t);
        return good;
}

/* /entry/instrument/detector and /entry/instrument/beam, named as in an
 * EIGER master file, holding what the start message said. */
static bool instrument(roid_results *w, const roid_results_detector *d) {
        hid_t ins = group(w, w->entry, "instrument", "NXinstrument");
        hid_t det = ins >= 0 ? group(w, ins, "detector", "NXdetector") : H5I_INVALID_HID;
        hid_t beam = det >= 0 ? group(w, ins, "beam", "NXbeam") : H5I_INVALID_HID;
        bool good = beam >= 0 && scalar_str(w, det, "description", d->description) &&
                    scalar_str(w, det, "detector_number", d->serial_number) &&
                    scalar_str(w, det, "sensor_material", d->sensor_material) &&
                    scalar_f64(w, det, "sensor_thickness", d->sensor_thickness, "m") &&
                    scalar_f64(w, det, "count_time", d->count_time, "s") &&
                    scalar_f64(w, det, "frame_time", d->frame_time, "s") &&
                    scalar_f64(w, det, "x_pixel_size", d->x_pixel_size, "m") &&
                    scalar_f64(w, det, "y_pixel_size", d->y_pixel_size, "m") &&
                    scalar_f64(w, det, "threshold_energy", d->threshold_energy, "eV") &&
                    scalar_f64(w, beam, "incident_energy", d->incident_energy, "eV") &&
                    scalar_f64(w, beam, "incident_wavelength", d->incident_wavelength, "angstrom");
        if (beam >= 0)
                H5Gclose(beam);
        if (det >= 0)
                H5Gclose(det);
        if (ins >= 0)
                H5Gclose(ins);
        return good;
}

static bool entry_attrs(roid_results *w, const roid_results_meta *meta) {
        hid_t e = w->entry;
        const roid_roi_params *p = meta->roi;
        double bc[2] = {meta->center_x, meta->center_y};
        int64_t shape[2] = {meta->ny, meta->nx};
        bool good = attr_str(w, e, "series_unique_id", meta->series_unique_id ? meta->series_unique_id : "") &&
                    attr_i64(w, e, "series_id", (int64_t)meta->series_id) &&
                    attr_str(w, e, "program_name", "roid " ROID_VERSION) &&
                    attr_i64(w, e, "results_version", RESULTS_VERSION) && attr_num(w, e, "beam_center", T_F64, bc, 2) &&
                    attr_str(w, e, "beam_center_source", meta->center_source ? meta->center_source : "") &&
                    attr_f64(w, e, "bf_radius", meta->r_bf) && attr_f64(w, e, "df_radius_inner", meta->r_df_in) &&
                    attr_f64(w, e, "df_radius_outer", meta->r_df_out) &&
                    attr_num(w, e, "scan_shape", T_I64, shape, 2) && attr_i64(w, e, "scan_snake", meta->snake) &&
                    attr_str(w, e, "scan_fast_axis", meta->fast_axis ? meta->fast_axis : "x") &&
                    attr_str(w, e, "scan_source", meta->scan_source ? meta->scan_source : "") &&
                    attr_num(w, e, "scan_origin", T_F64, meta->scan_origin, 2) &&
                    attr_num(w, e, "scan_step", T_F64, meta->scan_step, 2) &&
                    attr_str(w, e, "scan_units", meta->scan_units ? meta->scan_units : "") &&
                    attr_i64(w, e, "segments", p->n_segments) && attr_i64(w, e, "k", p->k) &&
                    attr_i64(w, e, "cadence", p->cadence) && attr_i64(w, e, "border", p->border) &&
                    attr_i64(w, e, "fill_holes", p->fill_holes) && attr_i64(w, e, "use_bf", p->use_bf) &&
                    attr_i64(w, e, "use_df", p->use_df) && attr_i64(w, e, "seed", (int64_t)p->seed) &&
                    attr_i64(w, e, "max_iter", p->max_iter);
        if (good && meta->config_text)
                good = attr_str(w, e, "configuration", meta->config_text);
        roid_results_detector unknown;
        const roid_results_detector *d = meta->detector;
        if (!d) {
                roid_results_detector_from_start(&unknown, ROID_FMT_NONE, NULL, NULL);
                unknown.stream_format[0] = '\0';
                d = &unknown;
        }
        return good && attr_str(w, e, "source", meta->source ? meta->source : "") &&
               attr_str(w, e, "stream_format", d->stream_format) && attr_str(w, e, "channel", d->channel) &&
               attr_str(w, e, "arm_date", d->arm_date) && attr_i64(w, e, "number_of_images", d->number_of_images) &&
               instrument(w, d);
}

static bool counter_attrs(roid_results *w) {
        uint64_t zero = 0;
        uint8_t no = 0;
        for (int i = 0; i < ROID_C__MAX; i++)
                if (!attr_num(w, w->g[G_COUNTERS], roid_counter_name(i), T_U64, &zero, 1))
                        return false;
        return attr_num(w, w->g[G_COUNTERS], "terminated", T_U8, &no, 1) &&
               attr_num(w, w->g[G_COUNTERS], "complete", T_U8, &no, 1);
}

/* After a write error (disk full) HDF5 1.10 cannot close the file: H5Fclose
 * retries the failed writes, fails, and leaves a half-freed file that crashes
 * the library when it is closed again at exit.  So the file's descriptor is
 * pointed at /dev/null, where the remaining writes succeed and vanish (an
 * anonymous memory file would do too, but for the file-size limit, which
 * applies to it as well: found by review), and the file on disk is extended
 * (sparse) to the end of file HDF5 recorded, so that readers do not refuse it
 * as truncated.  What the last successful flush wrote stays readable. */
static void detach(roid_results *w) {
        if (w->file < 0)
                return;
        hid_t fapl = H5Fget_access_plist(w->file);
        bool sec2 = fapl >= 0 && H5Pget_driver(fapl) == H5FD_SEC2;
        if (fapl >= 0)
                H5Pclose(fapl);
        void *h = NULL;
        haddr_t eoa = 0;
        if (!sec2 || H5Fget_vfd_handle(w->file, H5P_DEFAULT, &h) < 0 || !h)
                return;
        if (H5Fget_eoa(w->file, &eoa) >= 0) {
                int fd = open(w->path, O_WRONLY | O_CLOEXEC);
                struct stat st;
                if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size < eoa) {
                        int best_effort = ftruncate(fd, (off_t)eoa);
                        (void)best_effort;
                }
                if (fd >= 0)
                        close(fd);
        }
        int m = open("/dev/null", O_RDWR | O_CLOEXEC); /* reads: zeros, as past the end of a file */
        if (m >= 0) {
                w->detached = dup2(m, *(int *)h) >= 0;
                close(m);
        }
}

/* A failed flush leaves the metadata cache with the entries it could not
 * write and its skip list still enabled, so HDF5 1.10 fails every later flush
 * ("slist already enabled?"), that of H5Fclose too, whose failure frees the
 * file only half and leaves its id for H5_term_library to crash on at exit
 * (found with a write failing in the first flush, H5Fstart_swmr_write's).
 * Once detached, a flush writes every dirty entry and takes the skip list
 * down but still fails (that check, and the truncate to the end of file it
 * recorded, which /dev/null refuses); the next one finds nothing to do. */
static bool settle(roid_results *w) {
        for (int i = 0; i < 4; i++)
                if (H5Fflush(w->file, H5F_SCOPE_LOCAL) >= 0)
                        return true;
        return false;
}

static void close_handles(roid_results *w, int *r) {
        for (int i = 0; i < F__N; i++)
                if (w->fd[i] >= 0 && H5Dclose(w->fd[i]) < 0)
                        *r = -EIO;
        for (int i = 0; i < M__N; i++)
                if (w->md[i] >= 0 && H5Dclose(w->md[i]) < 0)
                        *r = -EIO;
        for (int i = 0; i < G__N; i++)
                if (w->g[i] >= 0 && H5Gclose(w->g[i]) < 0)
                        *r = -EIO;
        if (w->entry >= 0 && H5Gclose(w->entry) < 0)
                *r = -EIO;
        if (w->file >= 0 && w->detached && !settle(w))
                *r = -EIO; /* H5Fclose will fail as well: nothing better to do */
        if (w->file >= 0 && H5Fclose(w->file) < 0)
                *r = -EIO; /* its own last writes failed: HDF5 keeps it half freed (h5err.h) */
}

static void free_writer(roid_results *w) {
        free(w->b_image_id);
        free(w->b_index);
        free(w->b_pos);
        free(w->b_sum);
        free(w->b_com);
        free(w->b_seg_sum);
        free(w->b_seg_com);
        free(w->b_bf);
        free(w->b_df);
        free(w->b_lab);
        free(w->b_left);
        free(w);
}

static roid_results *alloc_writer(unsigned S) {
        roid_results *w = calloc(1, sizeof *w);
        if (!w)
                return NULL;
        w->file = w->entry = H5I_INVALID_HID;
        for (int i = 0; i < G__N; i++)
                w->g[i] = H5I_INVALID_HID;
        for (int i = 0; i < F__N; i++)
                w->fd[i] = H5I_INVALID_HID;
        for (int i = 0; i < M__N; i++)
                w->md[i] = H5I_INVALID_HID;
        w->b_image_id = malloc(BATCH * sizeof(uint64_t));
        w->b_index = malloc(BATCH * 2 * sizeof(uint32_t));
        w->b_pos = malloc(BATCH * 2 * sizeof(double));
        w->b_sum = malloc(BATCH * sizeof(double));
        w->b_com = malloc(BATCH * 2 * sizeof(double));
        w->b_seg_sum = malloc(BATCH * S * sizeof(double));
        w->b_seg_com = malloc(BATCH * S * 2 * sizeof(double));
        w->b_bf = malloc(BATCH * sizeof(double));
        w->b_df = malloc(BATCH * sizeof(double));
        w->b_lab = malloc(BATCH);
        w->b_left = malloc(BATCH);
        if (!w->b_image_id || !w->b_index || !w->b_pos || !w->b_sum || !w->b_com || !w->b_seg_sum || !w->b_seg_com ||
            !w->b_bf || !w->b_df || !w->b_lab || !w->b_left) {
                free_writer(w);
                return NULL;
        }
        return w;
}

/* DIR/roid_<id>.h5 for version 1, DIR/roid_<id>_<version>.h5 after. */
static int versioned_path(const char *dir, const roid_results_meta *meta, unsigned version, char *buf, size_t size) {
        char id[ROID_NAME_MAX + 24];
        if (meta->series_unique_id && meta->series_unique_id[0]) {
                size_t i = 0;
                for (; meta->series_unique_id[i] && i < ROID_NAME_MAX; i++) {
                        char c = meta->series_unique_id[i];
                        bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                    c == '-' || c == '_' || c == '.';
                        id[i] = safe ? c : '_';
                }
                id[i] = '\0';
                /* `roid replay` names a series after its file: roid_scan.h5, not roid_scan.h5.h5 */
                if (i > 3 && strcasecmp(id + i - 3, ".h5") == 0)
                        id[i - 3] = '\0';
        } else {
                snprintf(id, sizeof id, "%llu", (unsigned long long)meta->series_id);
        }
        char ver[16] = "";
        if (version > 1)
                snprintf(ver, sizeof ver, "_%u", version);
        int n = snprintf(NULL, 0, "%s/roid_%s%s.h5", dir, id, ver);
        if (n < 0 || (size_t)n >= size)
                return -ENAMETOOLONG;
        snprintf(buf, size, "%s/roid_%s%s.h5", dir, id, ver);
        return 0;
}

int roid_results_unique_path(const char *dir, const roid_results_meta *meta, const char *const *taken, size_t n_taken,
                             char *buf, size_t size) {
        char cand[RES_PATH_MAX];
        for (unsigned v = 1; v <= ROID_RESULTS_MAX_VERSIONS; v++) {
                int r = versioned_path(dir, meta, v, cand, sizeof cand);
                if (r < 0 || strlen(cand) >= size)
                        return -ENAMETOOLONG;
                bool used = false;
                for (size_t i = 0; i < n_taken && !used; i++)
                        used = taken[i] && strcmp(taken[i], cand) == 0;
                struct stat st;
                /* an unreadable or missing directory is left for the create to report */
                if (used || lstat(cand, &st) == 0)
                        continue;
                memcpy(buf, cand, strlen(cand) + 1);
                return 0;
        }
        return -EEXIST;
}

int roid_results_open(const char *dir, const roid_results_meta *meta, roid_results **ret, char *ret_path,
                      size_t path_size, roid_err *err) {
        const roid_roi_params *p = meta->roi;
        if (!p)
                return roid_err_set(err, -EINVAL, "results: no RoI parameters");
        if (p->n_segments < 1 || p->n_segments > ROID_MAX_SEGMENTS)
                return roid_err_set(err, -EINVAL, "results: segments %u, must be 1..%u", p->n_segments,
                                    ROID_MAX_SEGMENTS);
        if (p->k < 2 || p->k > ROID_ROI_MAX_K)
                return roid_err_set(err, -EINVAL, "results: k %u, must be 2..%u", p->k, ROID_ROI_MAX_K);
        if (meta->ny < 1 || meta->nx < 1 || (uint64_t)meta->ny * meta->nx > ROID_SCAN_MAX_POINTS)
                return roid_err_set(err, -EINVAL, "results: scan grid %u x %u, must be 1..%llu points", meta->ny,
                                    meta->nx, (unsigned long long)ROID_SCAN_MAX_POINTS);
        roid_results *w = alloc_writer(p->n_segments);
        if (!w)
                return -ENOMEM;
        int r = 0;
        if (meta->path && strlen(meta->path) < sizeof w->path)
                memcpy(w->path, meta->path, strlen(meta->path) + 1);
        else
                r = meta->path ? -ENAMETOOLONG : roid_results_unique_path(dir, meta, NULL, 0, w->path, sizeof w->path);
        if (r < 0 || strlen(w->path) >= path_size) {
                free_writer(w);
                char base[RES_PATH_MAX] = "";
                versioned_path(dir, meta, 1, base, sizeof base);
                return r == -EEXIST ? roid_err_set(err, r, "output_dir: %s and its %d numbered versions exist already",
                                                   base, ROID_RESULTS_MAX_VERSIONS - 1)
                                    : roid_err_set(err, -ENAMETOOLONG,
                                                   "output_dir: the path of the results file in %s is too long", dir);
        }
        w->S = p->n_segments;
        w->nmod = 2 * (p->n_segments > 1 ? 1 + p->n_segments : 1);
        w->d = w->nmod + (p->use_bf ? 1 : 0) + (p->use_df ? 1 : 0);
        w->k = p->k;
        w->ny = meta->ny;
        w->nx = meta->nx;

        /* Created here, not by H5Fcreate(H5F_ACC_EXCL), so that the file a
         * failed H5Fcreate leaves (its superblock could not be written) is
         * known to be this call's own and is removed. */
        int fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0) {
                r = roid_err_set(err, -EIO, "HDF5: cannot create %s: %s", w->path, strerror(errno));
                free_writer(w);
                return r;
        }
        close(fd);
        /* Errors are reported through err, not printed by HDF5. */
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
        bool good = ok(w, fapl) && ok(w, H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST)) &&
                    ok(w, w->file = H5Fcreate(w->path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
        if (fapl >= 0)
                H5Pclose(fapl);
        if (!good) {
                r = roid_err_set(err, -EIO, "HDF5: cannot create %s: %s", w->path,
                                 w->why[0] ? w->why : "no reason given");
                unlink(w->path);
                free_writer(w);
                return r;
        }
        static const char *const gname[G__N] = {"features", "scan", "roi", "clusters", "counters"};
        static const char *const gclass[G__N] = {"NXcollection", "NXcollection", "NXdata", "NXcollection",
                                                 "NXcollection"};
        good = ok(w, w->entry = group(w, w->file, "entry", "NXentry")) && entry_attrs(w, meta);
        for (int i = 0; good && i < G__N; i++)
                good = ok(w, w->g[i] = group(w, w->entry, gname[i], gclass[i]));
        good = good && create_frame_datasets(w, meta->scan_units) && create_map_datasets(w) && counter_attrs(w);
        /* From here on: no new objects or attributes (SWMR). */
        good = good && ok(w, H5Fstart_swmr_write(w->file));
        if (!good) {
                int r = fail(w, err, "the layout");
                int ignored = 0;
                detach(w);
                close_handles(w, &ignored);
                unlink(w->path);
                free_writer(w);
                return r;
        }
        memcpy(ret_path, w->path, strlen(w->path) + 1);
        *ret = w;
        return 0;
}

/* ------------------------------------------------------------- frames */

/* Rows [start, start + count) of a per-frame dataset (rank 1, or 2 with
 * `cols` columns): written from or read into buf. */
static bool rows_io(roid_results *w, hid_t d, dtype t, bool write, hsize_t start, hsize_t count, hsize_t cols,
                    void *buf) {
        hsize_t st[2] = {start, 0}, cn[2] = {count, cols};
        int rank = cols ? 2 : 1;
        hid_t fs = H5Dget_space(d), ms = H5Screate_simple(rank, cn, NULL);
        bool good = ok(w, fs) && ok(w, ms) && ok(w, H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, cn, NULL)) &&
                    ok(w, write ? H5Dwrite(d, mem_type(t), ms, fs, H5P_DEFAULT, buf)
                                : H5Dread(d, mem_type(t), ms, fs, H5P_DEFAULT, buf));
        if (ms >= 0)
                H5Sclose(ms);
        if (fs >= 0)
                H5Sclose(fs);
        return good;
}

int roid_results_write_features(roid_results *w, const roid_results_features *f, roid_err *err) {
        if (w->failed)
                return roid_err_set(err, -EIO, "HDF5: %s: an earlier write failed", w->path);
        if (f->n_seg != w->S)
                return roid_err_set(err, -EINVAL, "results: %u segments, the file has %u", f->n_seg, w->S);
        if (f->n == 0)
                return 0;
        const void *src[F__N] = {
                [F_SUM] = f->sum,           [F_COM] = f->com,     [F_SEG_SUM] = f->seg_sum,
                [F_SEG_COM] = f->seg_com,   [F_BF] = f->bf,       [F_DF] = f->df,
                [F_IMAGE_ID] = f->image_id, [F_INDEX] = f->index, [F_POS] = f->pos,
                [F_LEFT_OUT] = f->left_out,
        };
        for (int i = 0; i < F__N; i++) {
                hsize_t dims[3], start[3] = {w->n, 0, 0}, count[3];
                int rank = frame_dims(w, i, w->n + f->n, dims);
                memcpy(count, dims, sizeof dims);
                count[0] = f->n;
                if (!ok(w, H5Dset_extent(w->fd[i], dims)))
                        return fail(w, err, frame_ds[i].name);
                if (!src[i]) /* left at the fill value */
                        continue;
                hid_t fs = H5Dget_space(w->fd[i]), ms = H5Screate_simple(rank, count, NULL);
                bool good = ok(w, fs) && ok(w, ms) &&
                            ok(w, H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL)) &&
                            ok(w, H5Dwrite(w->fd[i], mem_type(frame_ds[i].t), ms, fs, H5P_DEFAULT, src[i]));
                if (ms >= 0)
                        H5Sclose(ms);
                if (fs >= 0)
                        H5Sclose(fs);
                if (!good)
                        return fail(w, err, frame_ds[i].name);
        }
        w->n += f->n;
        return 0;
}

int roid_results_append(roid_results *w, const roid_frame_record *recs, size_t n, roid_err *err) {
        unsigned S = w->S;
        for (size_t off = 0; off < n; off += BATCH) {
                size_t m = n - off < BATCH ? n - off : BATCH;
                for (size_t i = 0; i < m; i++) {
                        const roid_frame_record *r = &recs[off + i];
                        if (r->f.n_segments != S)
                                return roid_err_set(err, -EINVAL, "results: image %llu has %u segments, the file %u",
                                                    (unsigned long long)r->image_id, r->f.n_segments, S);
                        w->b_image_id[i] = r->image_id;
                        w->b_index[2 * i] = r->row;
                        w->b_index[2 * i + 1] = r->col;
                        w->b_pos[2 * i] = r->pos_x;
                        w->b_pos[2 * i + 1] = r->pos_y;
                        w->b_sum[i] = r->f.total;
                        w->b_com[2 * i] = r->f.com_x;
                        w->b_com[2 * i + 1] = r->f.com_y;
                        for (unsigned s = 0; s < S; s++) {
                                w->b_seg_sum[i * S + s] = r->f.seg[s].sum;
                                w->b_seg_com[(i * S + s) * 2] = r->f.seg[s].com_x;
                                w->b_seg_com[(i * S + s) * 2 + 1] = r->f.seg[s].com_y;
                        }
                        w->b_bf[i] = r->f.bf;
                        w->b_df[i] = r->f.df;
                        w->b_left[i] = (uint8_t)roid_features_left_out(&r->f);
                }
                roid_results_features f = {.n = m,
                                           .n_seg = S,
                                           .image_id = w->b_image_id,
                                           .index = w->b_index,
                                           .pos = w->b_pos,
                                           .sum = w->b_sum,
                                           .com = w->b_com,
                                           .seg_sum = w->b_seg_sum,
                                           .seg_com = w->b_seg_com,
                                           .bf = w->b_bf,
                                           .df = w->b_df,
                                           .left_out = w->b_left};
                int r = roid_results_write_features(w, &f, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

uint64_t roid_results_frames(const roid_results *w) {
        return w->n;
}

/* ---------------------------------------------------------------- maps */

static bool write_all(roid_results *w, int i, dtype t, const void *data) {
        return ok(w, H5Dwrite(w->md[i], mem_type(t), H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
}

/* Modality m's (ny, nx) plane of an (M, ny, nx) dataset. */
static bool write_plane(roid_results *w, int i, dtype t, unsigned m, const void *data) {
        hsize_t st[3] = {m, 0, 0}, cn[3] = {1, w->ny, w->nx};
        hid_t fs = H5Dget_space(w->md[i]), ms = H5Screate_simple(2, cn + 1, NULL);
        bool good = ok(w, fs) && ok(w, ms) && ok(w, H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, cn, NULL)) &&
                    ok(w, H5Dwrite(w->md[i], mem_type(t), ms, fs, H5P_DEFAULT, data));
        if (ms >= 0)
                H5Sclose(ms);
        if (fs >= 0)
                H5Sclose(fs);
        return good;
}

/* Per-frame cluster labels and the image ids in the mask, from the grid
 * points of the frames appended so far, read back block by block so that
 * nothing per frame is kept in memory.  A frame without counts measured
 * nothing (the RoI state left it out) and is not listed. */
/* image_ids: the frames at points of the mask that the maps took (not
 * left_out: without counts, near full scale, nor before a control reset), but
 * an outlier's (roi.h): a reconstruction reading them would take in a glitch. */
static bool write_frame_labels(roid_results *w, const uint8_t *mask, const uint8_t *outlier, const uint8_t *glab) {
        hsize_t n = w->n, zero = 0, nin = 0;
        if (!ok(w, H5Dset_extent(w->md[M_CLABELS], &n)) || !ok(w, H5Dset_extent(w->md[M_IMAGE_IDS], &zero)))
                return false;
        for (hsize_t s = 0; s < n; s += BATCH) {
                hsize_t m = n - s < BATCH ? n - s : BATCH, nid = 0;
                if (!rows_io(w, w->fd[F_INDEX], T_U32, false, s, m, 2, w->b_index) ||
                    !rows_io(w, w->fd[F_IMAGE_ID], T_U64, false, s, m, 0, w->b_image_id) ||
                    !rows_io(w, w->fd[F_SUM], T_F64, false, s, m, 0, w->b_sum) ||
                    !rows_io(w, w->fd[F_LEFT_OUT], T_U8, false, s, m, 0, w->b_left))
                        return false;
                for (hsize_t i = 0; i < m; i++) {
                        uint32_t row = w->b_index[2 * i], col = w->b_index[2 * i + 1];
                        w->b_lab[i] = ROID_ROI_UNSEEN;
                        if (row >= w->ny || col >= w->nx || s + i < w->first_row)
                                continue;
                        size_t p = (size_t)row * w->nx + col;
                        w->b_lab[i] = glab[p];
                        if (mask[p] && !outlier[p] && w->b_sum[i] > 0 &&
                            !w->b_left[i]) /* compacted in place: nid <= i */
                                w->b_image_id[nid++] = w->b_image_id[i];
                }
                if (!rows_io(w, w->md[M_CLABELS], T_U8, true, s, m, 0, w->b_lab))
                        return false;
                if (nid) {
                        hsize_t e = nin + nid;
                        if (!ok(w, H5Dset_extent(w->md[M_IMAGE_IDS], &e)) ||
                            !rows_io(w, w->md[M_IMAGE_IDS], T_U64, true, nin, nid, 0, w->b_image_id))
                                return false;
                        nin = e;
                }
        }
        return true;
}

int roid_results_write_map(roid_results *w, const roid_roi *roi, bool final, roid_err *err) {
        if (w->failed)
                return roid_err_set(err, -EIO, "HDF5: %s: an earlier write failed", w->path);
        unsigned k, d;
        const double *cen = roid_roi_cluster_centroids(roi, &k, &d);
        if (roid_roi_ny(roi) != w->ny || roid_roi_nx(roi) != w->nx || roid_roi_n_modalities(roi) != w->nmod ||
            d != w->d || (k != 0 && k != w->k))
                return roid_err_set(err, -EINVAL,
                                    "results: RoI state %u x %u, %u modalities, %u x %u centroids; the file has "
                                    "%u x %u, %u, %u x %u",
                                    roid_roi_ny(roi), roid_roi_nx(roi), roid_roi_n_modalities(roi), k, d, w->ny, w->nx,
                                    w->nmod, w->k, w->d);
        const uint8_t *mask = final ? roid_roi_mask(roi) : roid_roi_online_mask(roi);
        const uint8_t *raw_mask = final ? roid_roi_raw_mask(roi) : mask;
        if (!mask)
                return roid_err_set(err, -EINVAL, "results: the final map of an unfinished RoI state");
        const uint8_t *glab = roid_roi_cluster_labels(roi);
        double centres[MAX_MOD][2], fence = roid_roi_outlier_fence(roi);
        bool good = write_all(w, M_MASK, T_U8, mask) && write_all(w, M_RAW_MASK, T_U8, raw_mask) &&
                    write_all(w, M_ONLINE_MASK, T_U8, roid_roi_online_mask(roi)) &&
                    write_all(w, M_COUNTS, T_U32, roid_roi_counts(roi)) && write_all(w, M_POINT_LABELS, T_U8, glab) &&
                    write_all(w, M_OUTLIERS, T_U8, roid_roi_outliers(roi)) && write_all(w, M_FENCE, T_F64, &fence);
        for (unsigned m = 0; good && m < w->nmod; m++) {
                memcpy(centres[m], roid_roi_centres(roi, m), sizeof centres[m]);
                good = write_plane(w, M_FILTERED, T_F64, m, roid_roi_filtered(roi, m)) &&
                       write_plane(w, M_RAW, T_F64, m, roid_roi_raw_map(roi, m)) &&
                       write_plane(w, M_LABELS, T_U8, m, roid_roi_labels(roi, m)) &&
                       write_plane(w, M_ONLINE_LABELS, T_U8, m, roid_roi_online_labels(roi, m));
        }
        good = good && write_all(w, M_CENTRES, T_F64, centres);
        if (good && k)
                good = write_all(w, M_CENTROIDS, T_F64, cen);
        if (good && final)
                good = write_frame_labels(w, mask, roid_roi_outliers(roi), glab);
        /* Last, so a reader that sees final = 1 finds the final map complete.
         * A flush first: the value of final can reach the file before the next
         * flush writes the sizes of the datasets just extended, and a reader
         * polling for final = 1 read image_ids of extent 0 (8 of 8 runs, found
         * by review). */
        uint64_t frames = roid_roi_frames(roi);
        uint8_t fin = final;
        if (good && final)
                good = ok(w, H5Fflush(w->file, H5F_SCOPE_LOCAL));
        good = good && write_all(w, M_FRAMES, T_U64, &frames) && write_all(w, M_FIRST_ROW, T_U64, &w->first_row) &&
               write_all(w, M_FINAL, T_U8, &fin);
        return good ? 0 : fail(w, err, "/entry/roi");
}

void roid_results_mark_reset(roid_results *w) {
        w->first_row = w->n;
}

int roid_results_set_center(roid_results *w, double center_x, double center_y, roid_err *err) {
        if (w->failed)
                return roid_err_set(err, -EIO, "HDF5: %s: an earlier write failed", w->path);
        double bc[2] = {center_x, center_y};
        return attr_rewrite(w, w->entry, "beam_center", T_F64, bc) ? 0 : fail(w, err, "(beam_center)");
}

int roid_results_flush(roid_results *w, roid_err *err) {
        if (w->failed)
                return roid_err_set(err, -EIO, "HDF5: %s: an earlier write failed", w->path);
        return ok(w, H5Fflush(w->file, H5F_SCOPE_LOCAL)) ? 0 : fail(w, err, "(flush)");
}

int roid_results_close(roid_results *w, const roid_counters *ctr, bool terminated, roid_err *err) {
        if (!w)
                return 0;
        int r = 0;
        if (w->failed) {
                r = roid_err_set(err, -EIO, "HDF5: %s: an earlier write failed", w->path);
        } else if (!ok(w, H5Fflush(w->file, H5F_SCOPE_LOCAL))) {
                r = fail(w, err, "(flush)");
        } else {
                bool good = true;
                for (int i = 0; good && ctr && i < ROID_C__MAX; i++) {
                        uint64_t v = roid_counter_get(ctr, i);
                        good = attr_rewrite(w, w->g[G_COUNTERS], roid_counter_name(i), T_U64, &v);
                }
                uint8_t yes = 1, term = terminated;
                good = good && attr_rewrite(w, w->g[G_COUNTERS], "terminated", T_U8, &term) &&
                       attr_rewrite(w, w->g[G_COUNTERS], "complete", T_U8, &yes);
                /* Flushed here, not by H5Fclose: a close whose writes fail leaves HDF5
                 * with the file half open, and the library crashed at exit (found by
                 * review, writes failing during the close). */
                if (!good || !ok(w, H5Fflush(w->file, H5F_SCOPE_LOCAL)))
                        r = fail(w, err, "/entry/counters");
        }
        if (w->failed)
                detach(w);
        close_handles(w, &r);
        if (r < 0 && err && !err->msg[0])
                roid_err_set(err, r, "HDF5: %s: closing failed", w->path);
        free_writer(w);
        return r;
}
