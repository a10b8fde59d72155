/* latency.h - the status message's latency percentiles: the time from a
 * frame's arrival to its label being in a published map, over an even sample
 * of the frames of the last few maps.
 *
 * Fixed size (about 650 KB, no allocation): every map interval keeps the
 * arrival times of at most ROID_LATENCY_ARRIVALS of its frames, evenly spread
 * however many come, and each map keeps an even sample of at most
 * ROID_LATENCY_PER_MAP of their latencies, for the last ROID_LATENCY_MAPS
 * maps.
 *
 * Ownership: the caller owns the struct (embedded, zeroed or reset before
 * use).  Threads: not thread-safe; the pipeline's analysis thread only.
 */
#ifndef ROID_SERVICE_LATENCY_H
#define ROID_SERVICE_LATENCY_H

#include <stddef.h>

#define ROID_LATENCY_ARRIVALS 65536
#define ROID_LATENCY_MAPS     4
#define ROID_LATENCY_PER_MAP  2048

typedef struct {
        double arrival[ROID_LATENCY_ARRIVALS];
        size_t n_arrival, stride, skip;
        double map[ROID_LATENCY_MAPS][ROID_LATENCY_PER_MAP];
        size_t n_map[ROID_LATENCY_MAPS], cur;                 /* map[cur] is the next to fill */
        double tmp[ROID_LATENCY_MAPS * ROID_LATENCY_PER_MAP]; /* reordered by the percentiles */
} roid_latency;

/* Forgets the frames waiting for a map; all = also the maps' (a new series). */
void roid_latency_reset(roid_latency *l, int all);
/* A frame that arrived at t (seconds, any clock) awaits the next map. */
void roid_latency_arrival(roid_latency *l, double t);
/* A map published at now holds the frames since the last one. */
void roid_latency_map(roid_latency *l, double now);
/* Median and 99th percentile in ms over the last maps' samples; NaN without. */
void roid_latency_percentiles(roid_latency *l, double *ret_p50, double *ret_p99);

/* For tests: the k-th smallest (0-based) of v[0..n), k < n, by selection (v
 * is reordered), without the scratch buffer qsort would malloc each time. */
double roid_select_internal(double *v, size_t n, size_t k);

#endif
