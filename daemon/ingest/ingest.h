/* ingest.h - from raw message parts to decoded frames: parse, series
 * lifecycle, decode, and hand every event to a sink.
 *
 * Every failure is logged once with what was wrong, counted in the
 * roid_counters given at creation, and never stops the next message from
 * being processed.
 *
 * Ownership: the ingest owns its parser, tracker and decode buffers (one per
 * channel, sized once per series shape: no allocation per frame in steady
 * state).  Pointers in events are valid only during the callback.
 *
 * Threads: one thread at a time.  The sink callbacks run on that thread.
 */
#ifndef ROID_INGEST_INGEST_H
#define ROID_INGEST_INGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "ingest/message.h"
#include "ingest/series.h"
#include "service/counters.h"
#include "service/limits.h"

typedef struct {
        const roid_series *series;
        const roid_image_info *image;    /* times, all channel blobs */
        const roid_user_data *user_data; /* the image's user data */
        uint64_t image_id;
        unsigned channel; /* index into the image's channels */
        const char *channel_name;
        roid_dtype dtype;
        uint32_t rows, cols;
        const void *pixels;         /* decoded, rows x cols, row-major; NULL with defer_decode */
        const roid_blob *blob;      /* the encoded frame as received */
        const uint32_t *pixel_mask; /* the series' mask for this channel, or NULL */
} roid_frame_event;

typedef struct {
        void *ctx;
        void (*series_start)(void *ctx, const roid_series *s);
        void (*frame)(void *ctx, const roid_frame_event *ev);
        /* A frame that could not be decoded (msg says why). */
        void (*frame_error)(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg);
        /* terminated: an end message closed it; false when a new start, the end
         * of the input or shutdown closed it. */
        void (*series_end)(void *ctx, const roid_series *s, bool terminated);
        /* A message rejected before any frame of it was known (index counts
         * messages from 1). */
        void (*message_error)(void *ctx, uint64_t index, const char *msg);
} roid_sink;

typedef struct {
        roid_limits limits; /* of the first series (roid_ingest_set_config for later ones) */
        /* Which channel to decode: NULL or "" = every channel; otherwise a
         * name, or "#N" for the N-th channel of the series (default "#0" in
         * the daemon).  Copied. */
        const char *channel;
        bool implicit_series; /* images without a start open a series (replay) */
        /* Hand the selected channels' blobs to sink.frame undecoded (pixels
         * NULL): the daemon's feature workers decode them in parallel.  Only
         * sizes are checked here; frames_decoded / frames_failed are then the
         * decoder's to count. */
        bool defer_decode;
} roid_ingest_params;

typedef struct roid_ingest roid_ingest;

int roid_ingest_new(const roid_ingest_params *p, const roid_sink *sink, roid_counters *ctr, roid_ingest **ret);
void roid_ingest_free(roid_ingest *in);

/* One whole (multipart) message.  Returns 0, or a negative errno that has
 * already been logged and counted (for callers that want to react). */
int roid_ingest_parts(roid_ingest *in, const roid_part *parts, size_t n_parts);
/* A message its source had to discard before it could be parsed (too many
 * parts, too large: r = -EMSGSIZE; a capture record roid_capture_next()
 * skipped): counted (messages_received and, as for roid_ingest_parts(),
 * messages_bad_size for -EMSGSIZE), logged with why, reported to
 * sink.message_error.  Returns r. */
int roid_ingest_rejected(roid_ingest *in, int r, const char *why);
/* An already parsed message (HDF5 files, tests). */
int roid_ingest_msg(roid_ingest *in, const roid_msg *m);
/* End of input: closes an open series (series_end with terminated=false). */
void roid_ingest_flush(roid_ingest *in);

/* Limits and channel selection (as in roid_ingest_params) for the series
 * that start from now on (SIGHUP): the series in progress is parsed, tracked
 * and decoded with the ones it started with to its end, and its frames carry
 * its channel; the next start message is parsed with the new limits.  The
 * selection a series is decoded with is roid_series.channel. */
void roid_ingest_set_config(roid_ingest *in, const roid_limits *lim, const char *channel);

const roid_tracker *roid_ingest_tracker(const roid_ingest *in);

#endif
