/* analysis.h - the RoI analysis as a sink of the ingest pipeline: per series,
 * the detector geometry, the scan grid and the RoI state; per frame the
 * features, fed to the RoI state and kept as a per-frame record; at the end
 * of the series the final RoI and the results file.
 *
 * Beam centre: the start message's, else the configured one, else estimated
 * from the first frame (roid_estimate_beam_center).  Scan grid: see scan.h
 * (series user data, else configured, else a 1 x N line).  Only one channel
 * is analysed: the first channel index the series delivers.
 *
 * Ownership: the analysis owns its per-series state; it keeps it after the
 * series ends (for roid_analysis_roi) until the next series starts or free.
 * Threads: the ingest thread only.
 */
#ifndef ROID_ANALYSIS_ANALYSIS_H
#define ROID_ANALYSIS_ANALYSIS_H

#include <stdint.h>

#include "analysis/record.h"
#include "analysis/roi.h"
#include "analysis/scan.h"
#include "ingest/ingest.h"

#define ROID_PATH_MAX 4096

typedef struct {
        roid_roi_params roi;            /* segments 8, k 4, cadence 64, border 0, no hole fill, seed 1 */
        double center_x, center_y;      /* configured beam centre; NaN = none */
        double r_bf;                    /* bright-field radius, pixels; 0 = none */
        double r_df_in, r_df_out;       /* dark-field annulus; r_df_out 0 = none */
        roid_scan_grid scan;            /* configured grid; source ROID_SCAN_FROM_NONE = none */
        char output_dir[ROID_PATH_MAX]; /* "" = no results file */
        unsigned max_depth;             /* CBOR / JSON nesting of user data */
} roid_analysis_params;

typedef struct roid_analysis roid_analysis;

void roid_analysis_params_default(roid_analysis_params *p);
int roid_analysis_new(const roid_analysis_params *p, roid_analysis **ret, roid_err *err);
void roid_analysis_free(roid_analysis *a);
void roid_analysis_sink(roid_analysis *a, roid_sink *ret);

/* Where the next series come from (an input file), for their results
 * files; the string must outlive them.  NULL = "". */
void roid_analysis_set_source(roid_analysis *a, const char *source);

/* The last series' RoI state (NULL if none). */
const roid_roi *roid_analysis_roi(const roid_analysis *a);
/* Path of the last results file written, "" if none. */
const char *roid_analysis_last_output(const roid_analysis *a);
/* Frames of the last series that could not be used (bad frame, no
 * geometry, no room for their records): not in the results file. */
uint64_t roid_analysis_frames_dropped(const roid_analysis *a);
/* Frames of the last series off the grid or with a bad position: in the
 * results file (index ROID_NOT_PLACED), out of the maps, as the daemon does. */
uint64_t roid_analysis_frames_unplaced(const roid_analysis *a);
/* Results files that could not be written since roid_analysis_new (each
 * logged with the reason): `roid replay` then exits 1, as the daemon. */
uint64_t roid_analysis_results_failed(const roid_analysis *a);
/* Warnings naming what the finished series left out as glitches (roi.h):
 * frames near full scale, outlier points; nothing when none.  The daemon's
 * and replay's end of a series say the same. */
void roid_analysis_log_left_out(const roid_roi *roi, uint64_t series_id);

/* The pieces shared with the daemon's pipeline (service/pipeline.c), so the
 * replay and the live daemon compute exactly the same thing. */

/* The series' detector geometry: the beam centre from the start message
 * (has_center), else the configured one, else estimated from `first`.
 * *ret_source is "start", "config" or "estimated". */
int roid_analysis_build_geometry(const roid_analysis_params *p, roid_dtype dtype, uint32_t rows, uint32_t cols,
                                 bool has_center, double cx, double cy, const roid_frame *first, const uint32_t *mask,
                                 roid_geometry *ret, const char **ret_source, roid_err *err);

/* One frame's record: its features and its grid point (from (pos_x, pos_y)
 * when finite, a fly-scan position, else from image_id).  Returns 1 when
 * placed, 0 when the frame lies off the grid (row = col = ROID_NOT_PLACED,
 * err says why), a negative errno when the features failed (ret untouched). */
int roid_analysis_record(const roid_geometry *g, const roid_scan_grid *grid, uint64_t image_id, double pos_x,
                         double pos_y, const roid_frame *f, roid_frame_record *ret, roid_err *err);

/* The same with the features already computed (roid_features_compute_many):
 * 1 placed, 0 off the grid. */
int roid_analysis_place(const roid_scan_grid *grid, uint64_t image_id, double pos_x, double pos_y,
                        const roid_features *ft, roid_frame_record *ret, roid_err *err);

#endif
