/* h5source.h - EIGER HDF5 data files as an input: the frames of
 * /entry/data/data (N x rows x cols, one frame per chunk) are read as raw
 * chunks and decoded by roid's own codecs (HDF5 filter 32008 = bitshuffle-LZ4,
 * 32004 = LZ4, or no filter), so no HDF5 filter plugin is needed.
 *
 * A file becomes one series: a synthetic start (shape, dtype, image count,
 * the file name as series_unique_id), one image per frame with image_id
 * image_nr_low - 1 + index (EIGER numbers images from 1 in its files), and
 * an end.  A master file's external links data_000001, ... are followed,
 * and its start also carries the series metadata of /entry/instrument
 * (beam centre, times, pixel size, detector description and serial, sensor,
 * threshold, photon energy, wavelength, arm date, nimages x ntrigger as the
 * trigger mode counts them, and the detector's pixel mask when it has the
 * frames' shape).  Each such field is optional: a malformed one is left
 * unknown with a warning naming it, and never stops the frames.  Unknown
 * thresholds are NaN, as in message.h.
 *
 * A virtual dataset (VDS) is read through HDF5 from its source datasets,
 * found as HDF5 finds them (HDF5_VDS_PREFIX, the VDS file's directory, "."
 * for the VDS's own file).  A frame is delivered only when every pixel of it
 * is mapped to a source that opens and is written; the frames of a mapping
 * whose source cannot be read are failed and counted, the rest of the series
 * is replayed, and the call then returns -ENOENT naming that source.
 * Unlimited and printf-style mappings are refused (-ENOTSUP).
 *
 * Threads: HDF5 is not thread-safe in Debian's serial build; call from one
 * thread.
 */
#ifndef ROID_INGEST_H5SOURCE_H
#define ROID_INGEST_H5SOURCE_H

#include <stdbool.h>

#include "ingest/ingest.h"
#include "service/err.h"

/* Is this file HDF5 (by its signature)? */
bool roid_h5_is_hdf5(const char *path);

/* Streams the file through the ingest.  Per-frame problems (a chunk that
 * does not decode) are handled like any bad frame; a file that cannot be
 * read at all returns a negative errno with err set. */
int roid_h5_replay(const char *path, roid_ingest *in, roid_err *err);

#endif
