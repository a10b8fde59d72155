/* counters.h - named event counters for everything roid receives, drops or
 * rejects.  Every error path counts in exactly one of these; "nothing a user
 * gave roid is lost silently".
 *
 * Ownership: the daemon owns one roid_counters for its lifetime and lends a
 * pointer to every module that counts; they never free it.
 * Threads: counters are relaxed atomics; any thread may add, any may read.
 */
#ifndef ROID_SERVICE_COUNTERS_H
#define ROID_SERVICE_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

#define ROID_COUNTERS(X)                                                                                               \
        X(messages_received, "ZeroMQ messages (or capture records) received")                                          \
        X(bytes_received, "bytes of all parts received")                                                               \
        X(messages_malformed, "messages that could not be parsed (bad CBOR/JSON/tags)")                                \
        X(messages_bad_size, "messages whose sizes disagree with their shape or exceed a limit")                       \
        X(messages_unknown, "messages of an unknown type or htype")                                                    \
        X(connections_closed, "detector connections closed (by the detector, or on a part over max_message_bytes)")    \
        X(connections_lost, "of those, closed while a series was open: frames on their way may be lost")               \
        X(series_started, "start / dheader messages accepted")                                                         \
        X(series_ended, "end / dseries_end messages accepted")                                                         \
        X(series_unterminated, "series closed without an end: a new start, series_timeout, shutdown")                  \
        X(ends_without_start, "end messages with no open series")                                                      \
        X(images_received, "image messages parsed")                                                                    \
        X(images_before_start, "images with no open series (dropped)")                                                 \
        X(images_other_series, "images of a series other than the open one (dropped)")                                 \
        X(user_data_ignored, "user data left out of a message (over max_json_bytes or max_depth; V1: not UTF-8)")      \
        X(images_duplicate, "images whose image_id was already seen (ignored)")                                        \
        X(images_unchecked, "images accepted without duplicate detection (its bitmap full or out of memory)")          \
        X(images_out_of_range, "images whose image_id is beyond number_of_images")                                     \
        X(images_bad_shape, "images whose shape or dtype disagree with the series")                                    \
        X(frames_decoded, "channel frames decoded (one whose geometry then fails counts in frames_failed too)")        \
        X(frames_failed, "channel frames that failed: decoding, or the series geometry (blank frame, no centre)")      \
        X(frames_dropped, "frames dropped by a full queue (queue_full = drop)")                                        \
        X(frames_analysed, "frames whose features reached the RoI state")                                              \
        X(frames_unplaced, "frames that lie off the scan grid (features kept out of the maps)")                        \
        X(frames_not_analysed,                                                                                         \
          "frames of a series without RoI state or scan grid (over max_analysis_bytes, no memory)")                    \
        X(results_failed, "results files that failed (unwritable directory, disk full): logged with the reason")       \
        X(results_frames_discarded,                                                                                    \
          "frames of a failed results file that could not be written (since its last good flush)")

typedef enum {
#define ROID_COUNTER_ENUM(name, doc) ROID_C_##name,
        ROID_COUNTERS(ROID_COUNTER_ENUM)
#undef ROID_COUNTER_ENUM
                ROID_C__MAX
} roid_counter;

typedef struct {
        _Atomic uint64_t v[ROID_C__MAX];
} roid_counters;

static inline void roid_count(roid_counters *c, roid_counter i, uint64_t n) {
        if (c)
                atomic_fetch_add_explicit(&c->v[i], n, memory_order_relaxed);
}
static inline uint64_t roid_counter_get(const roid_counters *c, roid_counter i) {
        return atomic_load_explicit(&c->v[i], memory_order_relaxed);
}
void roid_counters_reset(roid_counters *c);
const char *roid_counter_name(roid_counter i);
const char *roid_counter_doc(roid_counter i);
/* One NOTICE line with every non-zero counter. */
void roid_counters_log(const roid_counters *c);

#endif
