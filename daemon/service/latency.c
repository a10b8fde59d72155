#include "service/latency.h"

#include <math.h>
#include <string.h>

#define T_MIN  1e-6
#define GROWTH 1.01

static void hist_clear(roid_latency_hist *h) {
        memset(h->bin, 0, sizeof h->bin);
        h->n = 0;
        h->min = INFINITY;
        h->max = -INFINITY;
}

static size_t bin_of(double t) {
        if (!(t > T_MIN)) /* and a clock that went back: the first bin */
                return 0;
        const double b = log(t / T_MIN) / log(GROWTH);
        return b >= ROID_LATENCY_BINS - 1 ? ROID_LATENCY_BINS - 1 : (size_t)b;
}

static void hist_add(roid_latency_hist *h, size_t b, double t, uint64_t w) {
        h->bin[b] += w;
        h->n += w;
        if (t < h->min)
                h->min = t;
        if (t > h->max)
                h->max = t;
}

/* The q-quantile: the value of rank ceil(q (n - 1)) (0-based), as the
 * geometric centre of its bin, clamped to the exact extremes (a single
 * frame's latency comes out exact). */
static double hist_quantile(const roid_latency_hist *h, double q) {
        const uint64_t rank = (uint64_t)ceil(q * (double)(h->n - 1));
        uint64_t c = 0;
        size_t b = 0;
        for (; b < ROID_LATENCY_BINS - 1; b++) {
                c += h->bin[b];
                if (c > rank)
                        break;
        }
        const double v = T_MIN * pow(GROWTH, (double)b + 0.5);
        return v < h->min ? h->min : v > h->max ? h->max : v;
}

void roid_latency_reset(roid_latency *l, int what) {
        if (what & ROID_LATENCY_WAITING) {
                l->n_arrival = l->skip = 0;
                l->stride = 1;
        }
        if (what & ROID_LATENCY_SERIES)
                hist_clear(&l->series);
        if (what & ROID_LATENCY_STATUS) {
                hist_clear(&l->status);
                l->last_p50 = l->last_p99 = NAN;
        }
}

/* Every stride-th frame is kept: when the buffer fills, every other one is
 * let go and the stride doubles, so the frames kept stay evenly spread over
 * the interval however many come.  (Keeping the first 65,536 frames, or the
 * newest 8,192 latencies, reported the oldest or the newest frames of a map
 * only: 102 ms at 40,000 frames/s with maps a second apart, where the median
 * frame waited 420 ms; found by review.) */
void roid_latency_arrival(roid_latency *l, double t) {
        if (++l->skip < l->stride)
                return;
        l->skip = 0;
        if (l->n_arrival == ROID_LATENCY_ARRIVALS) {
                for (size_t i = 0; i < ROID_LATENCY_ARRIVALS / 2; i++)
                        l->arrival[i] = l->arrival[2 * i + 1];
                l->n_arrival = ROID_LATENCY_ARRIVALS / 2;
                l->stride *= 2;
        }
        l->arrival[l->n_arrival++] = t;
}

void roid_latency_map(roid_latency *l, double now) {
        for (size_t i = 0; i < l->n_arrival; i++) {
                const double t = now - l->arrival[i];
                const size_t b = bin_of(t);
                hist_add(&l->status, b, t, l->stride);
                hist_add(&l->series, b, t, l->stride);
        }
        roid_latency_reset(l, ROID_LATENCY_WAITING);
}

void roid_latency_status(roid_latency *l, double *ret_p50, double *ret_p99) {
        if (l->status.n) {
                l->last_p50 = hist_quantile(&l->status, 0.5) * 1e3;
                l->last_p99 = hist_quantile(&l->status, 0.99) * 1e3;
                hist_clear(&l->status);
        }
        *ret_p50 = l->last_p50;
        *ret_p99 = l->last_p99;
}

void roid_latency_series(const roid_latency *l, double *ret_p50, double *ret_p99, double *ret_max) {
        const roid_latency_hist *h = &l->series;
        *ret_p50 = h->n ? hist_quantile(h, 0.5) * 1e3 : NAN;
        *ret_p99 = h->n ? hist_quantile(h, 0.99) * 1e3 : NAN;
        *ret_max = h->n ? h->max * 1e3 : NAN;
}
