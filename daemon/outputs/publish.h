/* publish.h - roid's live outputs: a ZeroMQ PUB socket that sends msgpack
 * maps on five topics (proto/live.md is the wire specification).
 *
 * Wire: every message has two frames, the topic name ("status", "series",
 * "map", "scan_here", "frame"; none is a prefix of another, so a SUB prefix
 * subscription selects exactly one topic) and one msgpack map.  Every map
 * starts with "schema", "topic", "seq", "time", "series_id",
 * "series_unique_id".  Arrays travel as typed arrays: a map {"dtype":
 * "uint8"|"uint32"|"uint64"|"float64", "shape": [...], "data": bin}, the data
 * little-endian in C order.
 *
 * Never blocks: messages are sent with ZMQ_DONTWAIT; a subscriber whose
 * queue (ZMQ_SNDHWM here plus its ZMQ_RCVHWM) is full misses the message
 * (libzmq drops it for that subscriber alone), the others receive it.  Not
 * ZMQ_XPUB_NODROP: it counted every drop, but one subscriber that stopped
 * reading made every send fail, for every subscriber.  Every subscriber sees
 * a drop as a gap in "seq" (per topic, incremented for every message
 * attempted: seq = sent + dropped, dropped being what roid did not send).
 * The daemon's loop never waits for a client.
 *
 * Memory: one msgpack_sbuffer per topic, cleared and reused; once each has
 * grown to its largest message nothing is allocated per message by the
 * encoder.  A message under 64 KiB is copied by libzmq; a larger one goes
 * without a copy (Ownership below).
 *
 * Packers: roid_pack_* write key/value pairs (no map header) and return how
 * many pairs they wrote, so a control reply can append them after its own
 * keys (control.h).  They pack into any msgpack_packer.
 *
 * Ownership: the publisher owns its socket and its packing buffers; views
 * are borrowed for the duration of a call.  A message of 64 KiB or more goes
 * to libzmq without a copy: its buffer is libzmq's until libzmq's free
 * callback gives it back (an atomic flag, set on libzmq's I/O thread).  Each
 * topic has a pool of such buffers, grown on demand up to publish_hwm + 2
 * within the series' memory bound (roid_publisher_set_pool); with all of a
 * pool in flight a large message is dropped and counted, but a final map or
 * scan_here, which is copied (publish.c says why).  Threads: one thread owns a
 * publisher (the daemon's analysis thread); the zmq context may be shared,
 * and must outlive the publisher (a buffer still queued in libzmq is freed
 * when libzmq drops it).
 */
#ifndef ROID_OUTPUTS_PUBLISH_H
#define ROID_OUTPUTS_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "analysis/feedback.h"
#include "analysis/record.h"
#include "analysis/roi.h"
#include "analysis/scan.h"
#include "ingest/message.h"
#include "service/counters.h"
#include "service/err.h"

#define ROID_SCHEMA_VERSION 1

typedef enum {
        ROID_TOPIC_STATUS,
        ROID_TOPIC_SERIES,
        ROID_TOPIC_MAP,
        ROID_TOPIC_SCAN_HERE,
        ROID_TOPIC_FRAME,
        ROID_TOPIC__MAX
} roid_topic;

typedef struct roid_publisher roid_publisher;

/* Which series a message is about.  known = false: none (both keys nil). */
typedef struct {
        bool known;
        uint64_t series_id;
        const char *unique_id; /* NULL or "": nil (Stream V1 has none) */
} roid_series_ref;

typedef struct {
        uint64_t depth, capacity;
} roid_queue_fill;

typedef struct {
        roid_series_ref series;    /* the current series, else the last one */
        const char *state;         /* "idle" | "acquiring" */
        const roid_counters *ctr;  /* NULL: "counters" is nil */
        double uptime_s;           /* since the daemon started */
        double frames_per_s;       /* over the last status interval */
        double bytes_per_s;        /* received, over the last status interval */
        roid_queue_fill work;      /* decoded frames waiting for a feature worker */
        roid_queue_fill analysis;  /* records waiting for the RoI analysis */
        roid_queue_fill writer;    /* records waiting for the results writer */
        double latency_p50_ms;     /* arrival of a frame -> its label in a published map, over the frames */
        double latency_p99_ms;     /* published since the last status; NaN = unknown */
        double map_interval_s;     /* interval between maps in effect (map_interval, or longer); NaN = unknown */
        double frame_age_s;        /* since the arrival of the open series' last frame; NaN = none */
        const roid_publisher *pub; /* NULL: "published" is nil */
        uint64_t control_requests; /* control socket counts (0 without one) */
        uint64_t control_errors;
        uint64_t control_unsent;
} roid_status_view;

typedef struct {
        const char *event; /* "start" | "end" */
        roid_series_ref series;
        /* detector */
        uint32_t rows, cols;
        roid_dtype dtype;
        const char *channel; /* analysed channel name; NULL = nil */
        bool has_number_of_images;
        uint64_t number_of_images;
        const roid_scan_grid *grid; /* NULL: "grid" is nil */
        unsigned n_segments, k;
        const char *analysis_error; /* why the series has no RoI state; NULL: it has one (nil) */
        /* "end" only (nil in "start") */
        uint64_t frames_analysed, frames_dropped, roi_points;
        bool terminated;          /* ended by an end message (false: a new start, shutdown) */
        const char *results_path; /* NULL or "": nil (no results file) */
        /* arrival of a frame -> its label in a published map, over the series' frames; NaN = nil */
        double latency_p50_ms, latency_p99_ms, latency_max_ms;
} roid_series_view;

typedef struct {
        roid_series_ref series;
        const roid_roi *roi;        /* required */
        const roid_scan_grid *grid; /* origin/step/units; NULL: grid indices */
        bool final;                 /* roid_roi_finish was called: send the final mask */
} roid_map_view;

typedef struct {
        roid_series_ref series;
        const roid_frame_record *rec; /* required */
        int label;                    /* online RoI label 0/1; < 0 = unknown (nil) */
} roid_frame_view;

/* What the publisher always may hold for a series on this grid: each of the
 * map and scan_here topics keeps its packing buffer and a pool of four
 * buffers in flight, each as large as that topic's largest message.  Counted
 * in the series' analysis state (max_analysis_bytes). */
uint64_t roid_publish_series_bytes(const roid_feedback_params *fp, const roid_scan_grid *grid);
#define ROID_PUBLISH_POOL_MIN 4
/* One more buffer of each of the two topics on this grid. */
uint64_t roid_publish_buffer_bytes(const roid_feedback_params *fp, const roid_scan_grid *grid);
/* Lets each topic's pool grow to `buffers` (at least the four it starts
 * with, at most publish_hwm + 2: the publish_hwm messages one subscriber that
 * stops reading can hold queued, one in libzmq's hands on its way out, and
 * one to pack into), so that it does not make the others lose large
 * messages.  The pipeline sets it at each series start from the room
 * max_analysis_bytes leaves; buffer_bytes is the largest message the series
 * can make (roid_publish_buffer_bytes), and idle buffers much larger than
 * it are given back.  Buffers are allocated only when needed; those beyond a
 * lowered bound are freed now when idle, else as they come back. */
void roid_publisher_set_pool(roid_publisher *p, uint64_t buffers, uint64_t buffer_bytes);
/* Buffers topic t's pool has now (for tests). */
unsigned roid_publisher_pool_buffers(const roid_publisher *p, roid_topic t);

/* Binds a PUB socket (ZMQ_SNDHWM = sndhwm, ZMQ_LINGER 0).
 * -EINVAL (err names the value) or the zmq errno (err names the endpoint). */
int roid_publisher_new(void *zctx, const char *endpoint, int sndhwm, roid_publisher **ret, roid_err *err);
/* Closes the socket with ZMQ_LINGER ROID_PUBLISH_LINGER_MS: the messages
 * still queued (the last series' final map, scan_here and end, sent just
 * before roid stops) go out to the subscribers that read them, and
 * zmq_ctx_term waits for that at most this long for one that does not. */
#define ROID_PUBLISH_LINGER_MS 1000
void roid_publisher_free(roid_publisher *p);
/* The endpoint actually bound (a wildcard port resolved), for logs and tests. */
const char *roid_publisher_endpoint(const roid_publisher *p);
uint64_t roid_publisher_sent(const roid_publisher *p, roid_topic t);
uint64_t roid_publisher_dropped(const roid_publisher *p, roid_topic t);
const char *roid_topic_name(roid_topic t);

/* Each returns 0 when sent, -EAGAIN when a large message was dropped because
 * its topic's buffers are all still queued for a subscriber, another
 * negative errno (-ENOMEM, zmq errors, -EINVAL on a NULL
 * required pointer) when it could not be sent; every failure counts as
 * dropped and advances seq. */
int roid_publish_status(roid_publisher *p, const roid_status_view *v);
int roid_publish_series(roid_publisher *p, const roid_series_view *v);
int roid_publish_map(roid_publisher *p, const roid_map_view *v);
/* fb: NULL when there is no feedback state (no series yet): then ny = nx = 0,
 * every list empty and "mask" nil. */
int roid_publish_scan_here(roid_publisher *p, const roid_series_ref *s, const roid_feedback_view *fb);
int roid_publish_frame(roid_publisher *p, const roid_frame_view *v);

/* Packers (pairs only, return the number of pairs).  status, series and map
 * include "series_id" and "series_unique_id"; feedback does not. */
int roid_pack_series_ref(msgpack_packer *pk, const roid_series_ref *s);
int roid_pack_series(msgpack_packer *pk, const roid_series_view *v);
int roid_pack_status(msgpack_packer *pk, const roid_status_view *v);
int roid_pack_map(msgpack_packer *pk, const roid_map_view *v);
int roid_pack_feedback(msgpack_packer *pk, const roid_feedback_view *fb);
/* The "ask" reply body: series ids, the feedback's state and "points", the
 * first min(count, fb->n_next) of fb->next.  fb NULL: no feedback yet. */
int roid_pack_suggest(msgpack_packer *pk, const roid_series_ref *s, const roid_feedback_view *fb, size_t count);

/* A typed array value {"dtype", "shape", "data"} (one value, not a pair).
 * dtype "uint8", "uint32" or "float64" with elem 1, 4, 8 bytes; ndim 1 or 2. */
void roid_pack_typed(msgpack_packer *pk, const char *dtype, size_t elem, const void *data, unsigned ndim,
                     const uint64_t *shape);

#endif
