/* series.h - series lifecycle: which series is open, which images belong to
 * it, what the start message said.
 *
 * The tracker is keyed on series identity (series_unique_id when both sides
 * have one, series_id otherwise) and image_id, never on arrival order:
 *   - an image with no open series is counted (images_before_start) and
 *     dropped, unless the tracker was made with implicit_series (replay of
 *     bare image files), where it opens an implicit series from the image;
 *   - a start while a series is open closes that series first
 *     (series_unterminated);
 *   - an image of another series is counted (images_other_series) and
 *     dropped; an image whose image_id was seen already is counted
 *     (images_duplicate) and ignored;
 *   - an end with no open series, or of another series, is counted
 *     (ends_without_start) and ignored.
 *
 * Duplicate detection keeps a paged bitmap of the accepted image_ids: a page
 * covers ROID_SEEN_PAGE_IDS consecutive ids (4 KiB) and is allocated when the
 * first id in it is accepted, so its memory follows the ids received, not the
 * largest one.  A series holds at most min(ceil(max_images /
 * ROID_SEEN_PAGE_IDS), ROID_SEEN_MAX_PAGES) pages (32 MiB, plus 16 bytes of
 * directory per page); an image whose page would exceed that, or whose page
 * cannot be allocated (ENOMEM), is accepted without the check and counted
 * (images_unchecked), with one warning per series.
 *
 * Limits and channel selection belong to a series: roid_tracker_set_next()
 * changes them for the series that open from then on, so a series is tracked
 * and decoded with the ones it opened with from its start to its end.
 *
 * Ownership: the tracker owns the open roid_series, including copies of
 * everything of the start message it keeps (decoded pixel masks and
 * flatfields, user data, V1 configuration text).  Pointers handed out stay
 * valid until the next roid_tracker_* call that closes the series.
 *
 * Threads: one thread at a time (the ingest thread).
 */
#ifndef ROID_INGEST_SERIES_H
#define ROID_INGEST_SERIES_H

#include <stdbool.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/counters.h"
#include "service/err.h"
#include "service/limits.h"

#define ROID_SEEN_PAGE_IDS  (4096u * 8)
#define ROID_SEEN_MAX_PAGES 8192u

typedef struct {
        uint64_t page; /* image_id / ROID_SEEN_PAGE_IDS */
        uint8_t *bits;
} roid_seen_page;

typedef struct roid_series {
        roid_format format;
        uint64_t series_id;
        char series_unique_id[ROID_NAME_MAX];
        bool implicit; /* opened by an image or a file, not by a start message */
        /* The channel selection this series is decoded with (the tracker's when
         * it opened; "" = every channel): sel for the functions below. */
        char channel[ROID_NAME_MAX];

        /* The start message as received; its blobs are replaced by the owned
         * copies below (pixel_mask/flatfield blobs are not valid here). */
        roid_start_info start;
        roid_user_data user_data; /* owned copy */

        /* Frame geometry: from the start message where it says, otherwise
         * from the first image.  0 / ROID_DT_NONE until known. */
        uint32_t rows, cols;
        roid_dtype dtype;

        /* Decoded per-channel pixel masks (rows*cols uint32, any bit set =
         * excluded) and flatfields; NULL when the start message had none. */
        uint32_t *pixel_mask[ROID_MAX_CHANNELS];
        float *flatfield[ROID_MAX_CHANNELS];

        uint64_t images_accepted;
        uint64_t max_image_id; /* largest accepted, valid if images_accepted */

        /* private */
        roid_seen_page *seen;                 /* pages of the accepted image_ids, sorted by page */
        uint32_t n_seen, seen_cap, seen_last; /* seen_last: the page hit last */
        bool seen_unchecked;                  /* warned that duplicate detection degraded */
        char *config_json;                    /* V1 detector configuration text */
        uint8_t *ud_copy;
} roid_series;

typedef struct roid_tracker {
        roid_limits lim; /* of the open series, or of the next one when none is open */
        roid_counters *ctr;
        bool implicit_series;
        bool open;
        roid_series cur;
        char channel[ROID_NAME_MAX]; /* selection the next series opens with */
        /* Set while a series is open: what roid_tracker_set_next() asked for,
         * adopted when that series closes. */
        bool next_set;
        roid_limits next_lim;
        char next_channel[ROID_NAME_MAX];
} roid_tracker;

/* What a message did to the lifecycle. */
typedef enum {
        ROID_TR_IGNORED = 0, /* counted and dropped; err says why */
        ROID_TR_STARTED,     /* a series opened (tracker->cur) */
        ROID_TR_IMAGE,       /* an image of the open series, accepted */
        ROID_TR_ENDED,       /* the open series ended; tracker->cur still valid
                                until roid_tracker_release() */
        ROID_TR_REFUSED,     /* an image of the open series, counted and refused (its
                                shape, or beyond max_images); err says why.  It
                                arrived, so the series' sinks hear of it: a
                                duplicate is IGNORED instead, its first copy counts */
} roid_tr_result;

/* The channel selection starts as "" (every channel). */
void roid_tracker_init(roid_tracker *t, const roid_limits *lim, roid_counters *ctr, bool implicit_series);
void roid_tracker_done(roid_tracker *t);

/* Limits and channel selection (NULL or "" = every channel; a name or "#N",
 * checked by config.c) for the series that open from now on: at once when no
 * series is open, otherwise as soon as the open one closes (never mid-series).
 * A second call before that replaces the first. */
void roid_tracker_set_next(roid_tracker *t, const roid_limits *lim, const char *channel);

/* A start arrives while a series is open: call roid_tracker_close_open()
 * first (the caller tells its sinks the series ended unterminated), then
 * roid_tracker_feed().  Returns a roid_tr_result, or a negative errno when
 * the message was malformed for the lifecycle (e.g. a start whose pixel mask
 * does not decode), with err set; the message is then dropped and counted. */
bool roid_tracker_would_close(const roid_tracker *t, const roid_msg *m);
void roid_tracker_close_open(roid_tracker *t);
int roid_tracker_feed(roid_tracker *t, const roid_msg *m, roid_err *err);
/* After ROID_TR_ENDED, once the sinks have seen the series. */
void roid_tracker_release(roid_tracker *t);

/* Index of channel `name` in the open series' start channels, -1 if absent. */
int roid_series_channel_index(const roid_series *s, const char *name);

/* Channel selection, one rule for the ingest (which channel it decodes) and
 * the pipeline (which channel's geometry it can build at the start).  sel is
 * a channel name, or "#N": the N-th channel of the start's channel list when
 * it has more than N, otherwise the N-th channel of each image (V1 and a V2
 * start without a list).
 *
 * roid_series_selected_channel: the name sel settles from the start alone,
 * or NULL when only the images tell ("#N" without such a list, or sel NULL
 * or "").  The pointer is sel or into s, valid while the series is open. */
const char *roid_series_selected_channel(const roid_series *s, const char *sel);
/* Whether channel `index` of an image, named `name`, is selected; NULL or ""
 * selects every channel. */
bool roid_series_channel_selected(const roid_series *s, const char *sel, const char *name, unsigned index);

#endif
