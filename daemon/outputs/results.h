/* results.h - the HDF5 results file of one series (NeXus layout):
 *   /entry (NXentry)
 *     features (NXcollection): sum (N), com (N, 2; x, y in detector pixels),
 *       segment_sum (N, S), segment_com (N, S, 2), bf (N), df (N)
 *     scan (NXcollection): image_id (N), index (N, 2; row, column)
 *     roi (NXdata): mask (ny, nx; uint8, 1 = RoI), image_ids (frames in the
 *       RoI), online_mask, raw_mask (before border/holes), filtered (M, ny,
 *       nx), labels (M, ny, nx), online_labels (M, ny, nx), centres (M, 2)
 *     clusters (NXcollection): labels (N), centroids (k, d)
 * with the parameters as attributes of /entry/roi.  N = frames kept.
 *
 * The writer is split into open / write features / write roi / close so that
 * a later incremental (SWMR) writer can append features per frame and rewrite
 * the RoI group at each refit.
 *
 * Ownership: the writer owns its HDF5 handles; the views borrow the caller's
 * arrays for the duration of the call.  Threads: one thread at a time; the
 * HDF5 library is not thread-safe, so all results writers share one thread.
 */
#ifndef ROID_OUTPUTS_RESULTS_H
#define ROID_OUTPUTS_RESULTS_H

#include <stddef.h>
#include <stdint.h>

#include "analysis/roi.h"
#include "service/err.h"

typedef struct {
        size_t n;       /* frames */
        unsigned n_seg; /* S */
        const uint64_t *image_id;
        const uint32_t *index; /* n x 2: row, column */
        const double *sum, *com, *seg_sum, *seg_com, *bf, *df;
} roid_results_features;

typedef struct {
        const char *series_unique_id;
        uint64_t series_id;
        double center_x, center_y;
        const char *center_source; /* "start", "config", "estimated" */
        double r_bf, r_df_in, r_df_out;
        const roid_roi_params *roi;
        uint32_t ny, nx;
        int snake;
        const char *fast_axis, *scan_source;
} roid_results_meta;

typedef struct roid_results roid_results;

/* Creates (truncates) DIR/roid_<id>.h5, id = series_unique_id made safe for
 * file names, else series_id.  The path is in *ret_path (size ROID_PATH_MAX
 * is enough).  -EIO with err on failure. */
int roid_results_open(const char *dir, const roid_results_meta *meta, roid_results **ret, char *ret_path,
                      size_t path_size, roid_err *err);
int roid_results_write_features(roid_results *w, const roid_results_features *f, roid_err *err);
/* RoI group and clusters; needs the features written (per-frame labels and
 * RoI image ids come from the frames' grid points). */
int roid_results_write_roi(roid_results *w, const roid_roi *roi, const roid_results_features *f, roid_err *err);
/* Closes; returns the first error of the close. */
int roid_results_close(roid_results *w);

#endif
