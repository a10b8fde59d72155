/* results.h - the HDF5 results file of one series (NeXus layout, described
 * dataset by dataset in proto/results-file.md), written incrementally in
 * SWMR mode so that readers can follow it while the series runs:
 *   /entry (NXentry; parameters and configuration as attributes)
 *     features (NXcollection): sum (N), com (N, 2), segment_sum (N, S),
 *       segment_com (N, S, 2), bf (N), df (N)                  appended
 *     scan (NXcollection): image_id (N), index (N, 2), position (N, 2)
 *     roi (NXdata): mask, raw_mask, online_mask, counts (ny, nx), filtered,
 *       raw, labels, online_labels (M, ny, nx), centres (M, 2),
 *       modality_segment (M), image_ids (extendible), frames, final
 *     clusters (NXcollection): labels (N), centroids (k, d), point_labels
 *     counters (NXcollection): one attribute per counter, written at close
 *
 * SWMR (HDF5 >= 1.10): the file is created with the 1.10 format (libver
 * bounds latest), every group, dataset and attribute is created by
 * roid_results_open, which then starts SWMR writing; afterwards data are only
 * appended (chunked datasets with an unlimited first dimension) or rewritten
 * in place (the maps, early-allocated fixed-size datasets; the counter
 * attributes).  /entry/roi/image_ids, whose length is known only with the
 * final mask, is a chunked extendible dataset of extent 0 until the final map
 * sets it (see proto/results-file.md).  A process killed while writing leaves
 * a file that SWMR readers can open, consistent as of the last flush.
 *
 * Ownership: the writer owns its HDF5 handles and per-batch buffers
 * (allocated by open, sized by the segment count); the arguments are only
 * read during the call.  Threads: HDF5 (Debian's serial build) is not
 * thread-safe: every HDF5 call of the process, all results writers included,
 * must be made from one thread (see writer.h).
 */
#ifndef ROID_OUTPUTS_RESULTS_H
#define ROID_OUTPUTS_RESULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "analysis/record.h"
#include "analysis/roi.h"
#include "ingest/message.h"
#include "service/counters.h"
#include "service/err.h"

/* Per-frame columns (structure of arrays), for callers that keep them so. */
typedef struct {
        size_t n;       /* frames */
        unsigned n_seg; /* S; must be the meta's roi->n_segments */
        const uint64_t *image_id;
        const uint32_t *index; /* n x 2: row, column (ROID_NOT_PLACED: off the grid) */
        const double *pos;     /* n x 2: fly-scan x, y; NULL = NaN */
        const double *sum, *com, *seg_sum, *seg_com, *bf, *df;
        const uint8_t *left_out; /* n: roid_features_left_out; NULL = 0 */
} roid_results_features;

/* What the detector's start message said of the series, kept for the link
 * from a results file to the detector's own files (fixed size: the writer
 * copies it by value).  A field the detector did not send is "", NaN or -1. */
typedef struct {
        char stream_format[16];       /* "stream V2", "stream V1", "HDF5 file" */
        char channel[ROID_NAME_MAX];  /* the analysed channel */
        char arm_date[ROID_TEXT_MAX]; /* as sent (ISO 8601) */
        char description[ROID_TEXT_MAX], serial_number[ROID_TEXT_MAX], sensor_material[ROID_TEXT_MAX];
        int64_t number_of_images;
        double count_time, frame_time;     /* s */
        double x_pixel_size, y_pixel_size; /* m */
        double sensor_thickness;           /* m */
        double incident_energy;            /* eV */
        double incident_wavelength;        /* Angstrom */
        double threshold_energy;           /* eV, of the analysed channel */
} roid_results_detector;

/* Fills d from a start message (NULL: everything unknown); channel = the
 * analysed channel's name, NULL or "" when not known. */
void roid_results_detector_from_start(roid_results_detector *d, roid_format format, const roid_start_info *st,
                                      const char *channel);

typedef struct {
        const char *series_unique_id;
        uint64_t series_id;
        /* Where the frames came from: the detector endpoint (daemon) or the
         * input file (replay); NULL = "". */
        const char *source;
        const roid_results_detector *detector; /* NULL: nothing known */
        double center_x, center_y;
        const char *center_source; /* "start", "config", "estimated" */
        double r_bf, r_df_in, r_df_out;
        const roid_roi_params *roi; /* required: S, k and use_bf/use_df fix the dataset shapes */
        uint32_t ny, nx;
        int snake;
        const char *fast_axis, *scan_source;
        /* the grid in motor units: x = origin[0] + col * step[0], y likewise;
         * units NULL = "" (grid indices when origin 0 and step 1) */
        double scan_origin[2], scan_step[2];
        const char *scan_units;
        const char *config_text; /* effective configuration (INI text) or NULL */
        /* The file to create (from roid_results_unique_path); NULL: open picks
         * one the same way. */
        const char *path;
} roid_results_meta;

typedef struct roid_results roid_results;

/* Creates meta->path, or the file roid_results_unique_path picks, with
 * every group and dataset, and starts SWMR writing; never replaces a file
 * (one that appeared meanwhile is -EIO).  The path is in *ret_path
 * (ROID_PATH_MAX bytes are enough).  -EINVAL (no roi parameters, bad grid),
 * -ENAMETOOLONG, -EEXIST (no free name), -ENOMEM, -EIO with err naming the
 * path and HDF5's innermost reason (e.g. errno text); a file that could not be
 * completed (disk full, file-size limit) is removed. */
int roid_results_open(const char *dir, const roid_results_meta *meta, roid_results **ret, char *ret_path,
                      size_t path_size, roid_err *err);

#define ROID_RESULTS_MAX_VERSIONS 1000
/* The results file of a series: DIR/roid_<id>.h5, id = series_unique_id
 * made safe for file names, else series_id; when that exists or is one of
 * taken[0..n_taken) (files handed to another thread not created yet), the
 * first free of DIR/roid_<id>_2.h5 ... _1000.h5: series ids restart after a
 * detector initialize, replays repeat, and a results file is never replaced.
 * Touches only lstat.  -ENAMETOOLONG (buf untouched) when a name does not fit
 * size bytes, -EEXIST when all are taken. */
int roid_results_unique_path(const char *dir, const roid_results_meta *meta, const char *const *taken, size_t n_taken,
                             char *buf, size_t size);

/* Appends n frames to the datasets of /entry/features and /entry/scan.  Readers see them
 * after the next flush.  After any write error the writer refuses further
 * writes (-EIO) and can only be closed. */
int roid_results_append(roid_results *w, const roid_frame_record *recs, size_t n, roid_err *err);
/* The same from columns. */
int roid_results_write_features(roid_results *w, const roid_results_features *f, roid_err *err);

/* Rewrites /entry/roi and /entry/clusters from an RoI state of the file's grid
 * and parameters.  final = false: the online state (mask and raw_mask hold the
 * online mask); final = true: after roid_roi_finish, also image_ids (frames
 * appended so far whose grid point is in the final mask) and the per-frame
 * cluster labels; may be repeated.  -EINVAL on a state of another shape or an
 * unfinished one with final. */
int roid_results_write_map(roid_results *w, const roid_roi *roi, bool final, roid_err *err);

/* A control reset: the maps written from now on are of the frames appended
 * after this call, so image_ids and the per-frame cluster labels leave out
 * the rows before it (/entry/roi/first_row says where they start). */
void roid_results_mark_reset(roid_results *w);

/* Rewrites /entry@beam_center, for a centre estimated from the first frame
 * after the file was opened (its source attribute says "estimated" from the
 * start).  -EIO. */
int roid_results_set_center(roid_results *w, double center_x, double center_y, roid_err *err);

/* Makes everything written so far visible to SWMR readers (and durable
 * against a crash of this process).  -EIO. */
int roid_results_flush(roid_results *w, roid_err *err);

/* Frames appended so far. */
uint64_t roid_results_frames(const roid_results *w);

/* Stores the counters (NULL: left at 0), terminated (1: the series ended with
 * the detector's end message; 0: roid closed it without one, so frames may be
 * missing) and complete = 1 as attributes of /entry/counters (unless a write
 * failed) and closes.  Returns the first error of the close (-EIO, err says
 * which write failed and why; err may be NULL).
 * After a failed write the file keeps what the last successful flush wrote,
 * readable by SWMR readers as a file whose writer died; HDF5 is left with
 * nothing open either way. */
int roid_results_close(roid_results *w, const roid_counters *ctr, bool terminated, roid_err *err);

#endif
