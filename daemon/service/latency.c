#include "service/latency.h"

#include <math.h>
#include <string.h>

void roid_latency_reset(roid_latency *l, int all) {
        l->n_arrival = l->skip = 0;
        l->stride = 1;
        if (all)
                for (size_t m = 0; m < ROID_LATENCY_MAPS; m++)
                        l->n_map[m] = 0;
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

/* An even sample of at most ROID_LATENCY_PER_MAP, from the map's first
 * frame to its last, in the slot of the oldest map: a ring of samples would
 * let the newest ones (the shortest waits) push out part of a map. */
void roid_latency_map(roid_latency *l, double now) {
        const size_t n = l->n_arrival, step = (n + ROID_LATENCY_PER_MAP - 1) / ROID_LATENCY_PER_MAP;
        double *v = l->map[l->cur];
        size_t k = 0;
        for (size_t i = step / 2; i < n; i += step)
                v[k++] = now - l->arrival[i];
        roid_latency_reset(l, 0);
        if (!k) /* no new frame (an idle detector): the last figures stand */
                return;
        l->n_map[l->cur] = k;
        l->cur = (l->cur + 1) % ROID_LATENCY_MAPS;
}

double roid_select_internal(double *v, size_t n, size_t k) {
        ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1;
        const ptrdiff_t kk = (ptrdiff_t)k;
        while (lo < hi) {
                /* Hoare's partition around the median of three (Wirth's Find):
                 * the pivot is in the range, so the scans stop inside it */
                const double a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
                const double pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
                ptrdiff_t i = lo, j = hi;
                while (i <= j) {
                        while (v[i] < pivot)
                                i++;
                        while (v[j] > pivot)
                                j--;
                        if (i <= j) {
                                const double t = v[i];
                                v[i++] = v[j];
                                v[j--] = t;
                        }
                }
                if (kk <= j)
                        hi = j;
                else if (kk >= i)
                        lo = i;
                else
                        break; /* v[j+1..i-1] all equal the pivot */
        }
        return v[kk];
}

void roid_latency_percentiles(roid_latency *l, double *ret_p50, double *ret_p99) {
        size_t n = 0;
        for (size_t m = 0; m < ROID_LATENCY_MAPS; m++) {
                memcpy(l->tmp + n, l->map[m], l->n_map[m] * sizeof(double));
                n += l->n_map[m];
        }
        if (!n) {
                *ret_p50 = *ret_p99 = NAN;
                return;
        }
        *ret_p50 = roid_select_internal(l->tmp, n, (n - 1) / 2) * 1e3;
        *ret_p99 = roid_select_internal(l->tmp, n, (size_t)ceil(0.99 * (double)(n - 1))) * 1e3;
}
