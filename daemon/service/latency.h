/* latency.h - the time from a frame's arrival to its label being in a
 * published map: percentiles over each status interval (the status message)
 * and over the whole series (its end message and log line).
 *
 * Fixed size (about 560 KB, no allocation): every map interval keeps the
 * arrival times of at most ROID_LATENCY_ARRIVALS of its frames, evenly spread
 * however many come (each then stands for `stride` frames); when the map goes
 * out their latencies go into two histograms of logarithmic bins, 1 % wide,
 * from 1 us to 10^5 s, one cleared at every status, one at every series start.
 * A percentile is the centre of its bin, within 0.5 % of the exact one.
 *
 * Ownership: the caller owns the struct (embedded), and resets it with
 * ROID_LATENCY_ALL before use: a zeroed one is not ready.  Threads: not
 * thread-safe; the pipeline's analysis thread only.
 */
#ifndef ROID_SERVICE_LATENCY_H
#define ROID_SERVICE_LATENCY_H

#include <stddef.h>
#include <stdint.h>

#define ROID_LATENCY_ARRIVALS 65536
#define ROID_LATENCY_BINS     2550 /* ln(1e11) / ln(1.01) = 2545: 1 us .. 1e5 s */

typedef struct {
        uint64_t bin[ROID_LATENCY_BINS];
        uint64_t n;      /* frames in the bins */
        double min, max; /* exact, s */
} roid_latency_hist;

typedef struct {
        double arrival[ROID_LATENCY_ARRIVALS];
        size_t n_arrival, stride, skip;
        roid_latency_hist status, series;
        double last_p50, last_p99; /* the status figures stand while no map brings frames */
} roid_latency;

/* What roid_latency_reset forgets: the frames waiting for a map, the
 * series' figures (a control reset of its state), the status figures (a new
 * series has none until its first map). */
enum { ROID_LATENCY_WAITING = 1, ROID_LATENCY_SERIES = 2, ROID_LATENCY_STATUS = 4, ROID_LATENCY_ALL = 7 };
void roid_latency_reset(roid_latency *l, int what);
/* A frame that arrived at t (seconds, any clock) awaits the next map. */
void roid_latency_arrival(roid_latency *l, double t);
/* A map published at now holds the frames since the last one. */
void roid_latency_map(roid_latency *l, double now);
/* Median and 99th percentile in ms of the frames published since the last
 * call, which starts a new interval; without any, the last call's figures
 * (NaN when there was none since ROID_LATENCY_STATUS was reset). */
void roid_latency_status(roid_latency *l, double *ret_p50, double *ret_p99);
/* Median, 99th percentile and maximum in ms over the series' frames
 * published so far; NaN without any. */
void roid_latency_series(const roid_latency *l, double *ret_p50, double *ret_p99, double *ret_max);

#endif
