/* export.h - the frames a reconstruction needs, decoded, in one HDF5 file.
 *
 * `roid export` reads the image ids of the final RoI (a results file's
 * /entry/roi/image_ids) or a list given by hand, replays the inputs (EIGER
 * master or data files, captures) through the ingest, and writes the selected
 * frames' pixels to a new file that any HDF5 reader opens without a filter
 * plugin (no compression, or HDF5's own shuffle + deflate):
 *
 *   /entry/data/data        (L, rows, cols) the frames, dtype as sent
 *   /entry/data/image_id    (L) uint64, in the order the inputs held them
 *   /entry/data/index       (L, 2) uint32 grid point (row, col) from the results
 *   /entry/data/position    (L, 2) float64 fly-scan position from the results
 *   /entry/data/pixel_mask  (rows, cols) uint32, when the series had one
 *
 * Layout and selection rules: proto/export-file.md.
 *
 * Ownership: roid_export owns its selection, the output file and its HDF5
 * handles; roid_export_free closes them.  Pointers the sink gets are copied
 * out during the callback.
 *
 * Threads: one thread (HDF5 is not thread-safe in Debian's serial build).
 */
#ifndef ROID_OUTPUTS_EXPORT_H
#define ROID_OUTPUTS_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/ingest.h"
#include "service/err.h"

/* At most this many image ids are selected (a results file's image_ids, or
 * --ids): 2^26, far above any scan's RoI. */
#define ROID_EXPORT_MAX_IDS (1u << 26)

typedef struct roid_export roid_export;

typedef struct {
        const char *output;  /* the file to create; an existing one is never replaced */
        const char *results; /* a results file whose final image_ids select, or NULL */
        const char *ids;     /* "A,B-C,..." when results is NULL */
        int deflate;         /* 0 = no compression, 1..9 = shuffle + deflate level */
} roid_export_params;

/* Reads the selection (the results file's final image_ids and their rows of
 * /entry/scan, or the list).  -EINVAL with err naming what is wrong: no final
 * map, malformed ids, more than ROID_EXPORT_MAX_IDS; -ENOENT, -EIO. */
int roid_export_new(const roid_export_params *p, roid_export **ret, roid_err *err);
void roid_export_free(roid_export *e);

/* The ingest's sink; the output file is created at the first selected frame. */
void roid_export_sink(roid_export *e, roid_sink *ret);

/* Closes the output and reports: 0 when every selected frame was written;
 * -ENOENT (err: how many are missing, the first of them) when some were not
 * in the inputs or did not decode; -EIO when the file could not be written
 * (err with HDF5's reason; a partial file this run created is removed);
 * -EINVAL when the inputs hold several series and none is the results
 * file's.  n_written: frames in the file. */
int roid_export_finish(roid_export *e, size_t *n_written, roid_err *err);

#endif
