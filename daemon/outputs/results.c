#include "outputs/results.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct roid_results {
        hid_t file, entry;
        bool failed;
};

static int fail(roid_err *err, const char *what) {
        return roid_err_set(err, -EIO, "HDF5: writing %s failed", what);
}

static int attr_str(hid_t loc, const char *name, const char *value) {
        hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR), a = -1;
        int r = -1;
        if (t >= 0 && s >= 0 && H5Tset_size(t, strlen(value) + 1) >= 0 && H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0) {
                a = H5Acreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
                if (a >= 0 && H5Awrite(a, t, value) >= 0)
                        r = 0;
        }
        if (a >= 0)
                H5Aclose(a);
        if (s >= 0)
                H5Sclose(s);
        if (t >= 0)
                H5Tclose(t);
        return r;
}

static int attr_num(hid_t loc, const char *name, hid_t type, const void *v, hsize_t n) {
        hid_t s = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL);
        hid_t a = s >= 0 ? H5Acreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT) : -1;
        int r = a >= 0 && H5Awrite(a, type, v) >= 0 ? 0 : -1;
        if (a >= 0)
                H5Aclose(a);
        if (s >= 0)
                H5Sclose(s);
        return r;
}

static int attr_f64(hid_t loc, const char *name, double v) {
        return attr_num(loc, name, H5T_NATIVE_DOUBLE, &v, 1);
}

static int attr_i64(hid_t loc, const char *name, int64_t v) {
        return attr_num(loc, name, H5T_NATIVE_INT64, &v, 1);
}

static hid_t group(hid_t loc, const char *name, const char *nx_class) {
        hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g >= 0 && attr_str(g, "NX_class", nx_class) < 0) {
                H5Gclose(g);
                return -1;
        }
        return g;
}

/* A dataset of `rank` dims; a zero-sized one is written empty. */
static int dset(hid_t loc, const char *name, hid_t mem_type, hid_t file_type, int rank, const hsize_t *dims,
                const void *data) {
        hid_t s = H5Screate_simple(rank, dims, NULL);
        if (s < 0)
                return -1;
        hid_t d = H5Dcreate2(loc, name, file_type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t total = 1;
        for (int i = 0; i < rank; i++)
                total *= dims[i];
        int r = d >= 0 && (total == 0 || H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0) ? 0 : -1;
        if (d >= 0)
                H5Dclose(d);
        H5Sclose(s);
        return r;
}

#define F64 H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE
#define U8  H5T_NATIVE_UINT8, H5T_STD_U8LE
#define U32 H5T_NATIVE_UINT32, H5T_STD_U32LE
#define U64 H5T_NATIVE_UINT64, H5T_STD_U64LE

static int roi_attrs(hid_t g, const roid_roi_params *p) {
        int bad = 0;
        bad |= attr_i64(g, "segments", p->n_segments);
        bad |= attr_i64(g, "k", p->k);
        bad |= attr_i64(g, "cadence", p->cadence);
        bad |= attr_i64(g, "border", p->border);
        bad |= attr_i64(g, "fill_holes", p->fill_holes);
        bad |= attr_i64(g, "seed", (int64_t)p->seed);
        bad |= attr_i64(g, "max_iter", p->max_iter);
        return bad;
}

int roid_results_open(const char *dir, const roid_results_meta *meta, roid_results **ret, char *ret_path,
                      size_t path_size, roid_err *err) {
        char id[ROID_NAME_MAX + 24];
        if (meta->series_unique_id && meta->series_unique_id[0]) {
                size_t i = 0;
                for (; meta->series_unique_id[i] && i < ROID_NAME_MAX; i++) {
                        char c = meta->series_unique_id[i];
                        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                  c == '-' || c == '_' || c == '.';
                        id[i] = ok ? c : '_';
                }
                id[i] = '\0';
        } else {
                snprintf(id, sizeof id, "%llu", (unsigned long long)meta->series_id);
        }
        char path[4096];
        int n = snprintf(path, sizeof path, "%s/roid_%s.h5", dir, id);
        if (n < 0 || (size_t)n >= sizeof path || (size_t)n >= path_size)
                return roid_err_set(err, -ENAMETOOLONG, "output_dir: path of %d bytes too long", n);
        roid_results *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        if (w->file < 0) {
                free(w);
                return roid_err_set(err, -EIO, "HDF5: cannot create %s", path);
        }
        w->entry = group(w->file, "entry", "NXentry");
        int bad = w->entry < 0;
        if (!bad) {
                bad |= attr_str(w->entry, "series_unique_id", meta->series_unique_id ? meta->series_unique_id : "");
                bad |= attr_i64(w->entry, "series_id", (int64_t)meta->series_id);
                bad |= attr_str(w->entry, "program_name", "roid " ROID_VERSION);
                double bc[2] = {meta->center_x, meta->center_y};
                bad |= attr_num(w->entry, "beam_center", H5T_NATIVE_DOUBLE, bc, 2);
                bad |= attr_str(w->entry, "beam_center_source", meta->center_source ? meta->center_source : "");
                bad |= attr_f64(w->entry, "bf_radius", meta->r_bf);
                bad |= attr_f64(w->entry, "df_radius_inner", meta->r_df_in);
                bad |= attr_f64(w->entry, "df_radius_outer", meta->r_df_out);
                int64_t shape[2] = {meta->ny, meta->nx};
                bad |= attr_num(w->entry, "scan_shape", H5T_NATIVE_INT64, shape, 2);
                bad |= attr_i64(w->entry, "scan_snake", meta->snake);
                bad |= attr_str(w->entry, "scan_fast_axis", meta->fast_axis ? meta->fast_axis : "x");
                bad |= attr_str(w->entry, "scan_source", meta->scan_source ? meta->scan_source : "");
                if (meta->roi)
                        bad |= roi_attrs(w->entry, meta->roi);
        }
        if (bad) {
                roid_results_close(w);
                return fail(err, "/entry");
        }
        memcpy(ret_path, path, (size_t)n + 1);
        *ret = w;
        return 0;
}

int roid_results_write_features(roid_results *w, const roid_results_features *f, roid_err *err) {
        hid_t g = group(w->entry, "features", "NXcollection");
        if (g < 0)
                return fail(err, "/entry/features");
        hsize_t n = f->n, s = f->n_seg;
        hsize_t d1[1] = {n}, d2[2] = {n, 2}, ds[2] = {n, s}, dsc[3] = {n, s, 2};
        int bad = 0;
        bad |= dset(g, "sum", F64, 1, d1, f->sum);
        bad |= dset(g, "com", F64, 2, d2, f->com);
        bad |= dset(g, "segment_sum", F64, 2, ds, f->seg_sum);
        bad |= dset(g, "segment_com", F64, 3, dsc, f->seg_com);
        bad |= dset(g, "bf", F64, 1, d1, f->bf);
        bad |= dset(g, "df", F64, 1, d1, f->df);
        H5Gclose(g);
        if (bad)
                return fail(err, "/entry/features");
        g = group(w->entry, "scan", "NXcollection");
        if (g < 0)
                return fail(err, "/entry/scan");
        bad |= dset(g, "image_id", U64, 1, d1, f->image_id);
        bad |= dset(g, "index", U32, 2, d2, f->index);
        H5Gclose(g);
        return bad ? fail(err, "/entry/scan") : 0;
}

int roid_results_write_roi(roid_results *w, const roid_roi *roi, const roid_results_features *f, roid_err *err) {
        uint32_t ny = roid_roi_ny(roi), nx = roid_roi_nx(roi);
        size_t np = (size_t)ny * nx;
        unsigned nm = roid_roi_n_modalities(roi);
        const uint8_t *mask = roid_roi_mask(roi);
        if (!mask)
                return roid_err_set(err, -EINVAL, "results: the RoI is not finished");
        hid_t g = group(w->entry, "roi", "NXdata");
        if (g < 0)
                return fail(err, "/entry/roi");
        int bad = attr_str(g, "signal", "mask");
        hsize_t dm[2] = {ny, nx}, dmm[3] = {nm, ny, nx}, dc[2] = {nm, 2};
        bad |= dset(g, "mask", U8, 2, dm, mask);
        bad |= dset(g, "raw_mask", U8, 2, dm, roid_roi_raw_mask(roi));
        bad |= dset(g, "online_mask", U8, 2, dm, roid_roi_online_mask(roi));
        bad |= dset(g, "counts", U32, 2, dm, roid_roi_counts(roi));

        /* Per-modality stacks, copied into one block each. */
        double *fl = malloc(nm * np * sizeof(double) + 1), *cen = malloc(nm * 2 * sizeof(double) + 1);
        double *rawm = malloc(nm * np * sizeof(double) + 1);
        uint8_t *lab = malloc(nm * np + 1), *onl = malloc(nm * np + 1);
        uint8_t *flab = malloc(f->n + 1);
        uint64_t *ids = malloc(f->n * sizeof(uint64_t) + 1);
        if (!fl || !cen || !rawm || !lab || !onl || !flab || !ids) {
                bad = 1;
                goto out;
        }
        int64_t seg[2 * (ROID_MAX_SEGMENTS + 1)];
        for (unsigned m = 0; m < nm; m++) {
                memcpy(fl + m * np, roid_roi_filtered(roi, m), np * sizeof(double));
                memcpy(rawm + m * np, roid_roi_raw_map(roi, m), np * sizeof(double));
                memcpy(lab + m * np, roid_roi_labels(roi, m), np);
                memcpy(onl + m * np, roid_roi_online_labels(roi, m), np);
                memcpy(cen + 2 * m, roid_roi_centres(roi, m), 2 * sizeof(double));
                int s;
                roid_roi_modality_name(roi, m, &s);
                seg[m] = s;
        }
        bad |= dset(g, "filtered", F64, 3, dmm, fl);
        bad |= dset(g, "raw", F64, 3, dmm, rawm);
        bad |= dset(g, "labels", U8, 3, dmm, lab);
        bad |= dset(g, "online_labels", U8, 3, dmm, onl);
        bad |= dset(g, "centres", F64, 2, dc, cen);
        hsize_t dn = nm;
        bad |= dset(g, "modality_segment", H5T_NATIVE_INT64, H5T_STD_I64LE, 1, &dn, seg);
        /* Frames whose grid point is in the final RoI; per-frame cluster labels. */
        const uint8_t *gl = roid_roi_cluster_labels(roi);
        size_t nin = 0;
        for (size_t i = 0; i < f->n; i++) {
                size_t p = (size_t)f->index[2 * i] * nx + f->index[2 * i + 1];
                if (mask[p])
                        ids[nin++] = f->image_id[i];
                flab[i] = gl[p];
        }
        hsize_t dids = nin;
        bad |= dset(g, "image_ids", U64, 1, &dids, ids);
        H5Gclose(g);
        g = group(w->entry, "clusters", "NXcollection");
        if (g < 0) {
                bad = 1;
                goto out;
        }
        unsigned k, d;
        const double *c = roid_roi_cluster_centroids(roi, &k, &d);
        hsize_t dl = f->n, dcc[2] = {k, d};
        bad |= dset(g, "labels", U8, 1, &dl, flab);
        bad |= dset(g, "centroids", F64, 2, dcc, c);
        bad |= dset(g, "point_labels", U8, 2, dm, gl);
        H5Gclose(g);
out:
        free(fl);
        free(cen);
        free(rawm);
        free(lab);
        free(onl);
        free(flab);
        free(ids);
        return bad ? fail(err, "/entry/roi") : 0;
}

int roid_results_close(roid_results *w) {
        int r = 0;
        if (!w)
                return 0;
        if (w->entry >= 0 && w->entry != 0 && H5Gclose(w->entry) < 0)
                r = -EIO;
        if (w->file >= 0 && H5Fclose(w->file) < 0)
                r = -EIO;
        free(w);
        return r;
}
