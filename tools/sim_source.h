/* sim_source.h - frame sources of the detector simulator (roid-sim).
 *
 * A frame source produces the raw pixels of frame `frame_index` and channel
 * `channel`.  The simulator calls init once at start-up, then fill for every
 * distinct frame it pre-renders into its ring (frame_index 0 .. period-1, or
 * 0 .. ring-1 when the source has no period), each channel in turn, then free.
 * Image image_id of every series is frame (image_id % ring_length), so fill
 * is never called while streaming and may be slow.
 *
 * Ownership: the state returned by init belongs to the source until free.
 * Threads: one thread; fill calls are sequential.
 *
 * Adding a source: write tools/sim_NAME.c defining a `const sim_source_ops`,
 * declare it below, add it to sim_sources[] in sim_source.c and the file to
 * tools/meson.build.  `--source NAME[:ARG]` selects it; ARG reaches init as
 * params->arg.
 */
#ifndef ROID_TOOLS_SIM_SOURCE_H
#define ROID_TOOLS_SIM_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/err.h"

/* One image of a fly scan: the grid point it belongs to and how far from it
 * the sample really was, in steps (x along columns, y along rows). */
typedef struct {
        uint32_t row, col;
        double dx, dy;
} sim_visit;

/* A raster scan: ny rows of nx points, x fast, optionally snake (odd rows
 * reversed).  A fly scan (--fly) adds visits: image k shows the sample at
 * visits[k % nvisits], in any order, several images per point, off the grid
 * by the jitter (--positions: by up to half a step, more at the grid's edge);
 * NULL for a step scan in grid order. */
typedef struct {
        bool active;
        uint32_t ny, nx;
        bool snake;
        const sim_visit *visits;
        uint64_t nvisits;
} sim_scan;

typedef struct {
        /* In: the shape and type the user asked for.  A source with its own
         * geometry (a file) replaces them; the simulator uses what init leaves. */
        uint32_t rows, cols;
        roid_dtype dtype; /* ROID_DT_U8, U16 or U32 */
        unsigned nchannels;
        uint64_t nframes;     /* images per series */
        const char *arg;      /* text after "NAME:" in --source, or NULL */
        const sim_scan *scan; /* scan geometry (scan->active false without --scan) */
} sim_source_params;

typedef struct {
        const char *name;
        /* Validates params, may adjust rows/cols/dtype, allocates its state.
         * *ret_period: number of distinct frames the source has (a file: its
         * frame count; a phantom: its scan points), or 0 if any frame_index is
         * as good as any other (the simulator then uses its --ring length).
         * Returns 0 or a negative errno with err set. */
        int (*init)(sim_source_params *params, void **ret_state, uint64_t *ret_period, roid_err *err);
        /* Writes rows*cols pixels of the init dtype (host = little-endian order)
         * into pixels.  Values must stay below the dtype maximum unless the
         * pixel is meant to be flagged (gap / bad), as on a real detector. */
        int (*fill)(void *state, uint64_t frame_index, unsigned channel, void *pixels, roid_err *err);
        void (*free)(void *state);
} sim_source_ops;

extern const sim_source_ops sim_source_pattern; /* sim_pattern.c */
extern const sim_source_ops sim_source_file;    /* sim_h5.c: "file:PATH.h5" */
extern const sim_source_ops sim_source_phantom; /* sim_phantom.c */

/* Finds the source for a --source argument ("NAME" or "NAME:ARG"); sets
 * *ret_arg to ARG or NULL.  Returns NULL if no source has that name. */
const sim_source_ops *sim_source_find(const char *spec, const char **ret_arg);

/* Stores v (already below the dtype maximum) as pixel i of a frame of dt. */
void sim_set_pixel(void *pixels, roid_dtype dt, size_t i, uint32_t v);
uint32_t sim_dtype_max(roid_dtype dt);

#endif
