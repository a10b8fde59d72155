/* test_latency.c - the latency percentiles of the status and series
 * messages (service/latency.h) on arrival schedules whose true percentiles
 * are known, and against sorting on random latencies. */
#include <math.h>
#include <stdlib.h>

#include "service/latency.h"
#include "tap.h"

static roid_latency L;

/* n frames evenly spread over [t0, t1), then a map at t1. */
static void interval(double t0, double t1, size_t n) {
        for (size_t i = 0; i < n; i++)
                roid_latency_arrival(&L, t0 + (t1 - t0) * (double)i / (double)n);
        roid_latency_map(&L, t1);
}

/* within the bins' half width (0.5 %) and rounding */
static int near(double got, double want) {
        return fabs(got - want) <= 0.0051 * want + 1e-9;
}

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

/* Log-normal latencies around 3 ms, each frame in its own map, against
 * the exact order statistics of the same values. */
static void against_sorting(void) {
        enum { N = 20000 };
        static double v[N];
        uint64_t s = 42;
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        for (int i = 0; i < N; i++) {
                double u[2];
                for (int j = 0; j < 2; j++) {
                        s = s * 6364136223846793005ull + 1442695040888963407ull;
                        u[j] = ((double)(s >> 11) + 0.5) / 9007199254740992.0;
                }
                v[i] = 3e-3 * exp(0.6 * sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]));
                roid_latency_arrival(&L, 100.0 + i);
                roid_latency_map(&L, 100.0 + i + v[i]);
        }
        double p50, p99, max, s50, s99;
        roid_latency_series(&L, &p50, &p99, &max);
        roid_latency_status(&L, &s50, &s99);
        qsort(v, N, sizeof *v, cmp_double);
        const double w50 = v[(N - 1) / 2] * 1e3, w99 = v[(size_t)ceil(0.99 * (N - 1))] * 1e3;
        tap_ok(near(p50, w50) && near(p99, w99) && fabs(max - v[N - 1] * 1e3) < 1e-6,
               "20,000 log-normal latencies: p50 %.4f (sorted %.4f), p99 %.4f (%.4f), max %.4f (%.4f) ms", p50, w50,
               p99, w99, max, v[N - 1] * 1e3);
        tap_ok(s50 == p50 && s99 == p99, "the status interval since the reset saw the same frames");
}

int main(void) {
        double p50, p99, max;
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(isnan(p50) && isnan(p99), "no map yet: status NaN");
        roid_latency_series(&L, &p50, &p99, &max);
        tap_ok(isnan(p50) && isnan(p99) && isnan(max), "no map yet: series NaN");

        /* 0.1, 0.2, 0.3 s, a map at 1 s: latencies 0.9, 0.8, 0.7 s */
        roid_latency_arrival(&L, 0.1);
        roid_latency_arrival(&L, 0.2);
        roid_latency_arrival(&L, 0.3);
        roid_latency_map(&L, 1.0);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 800) && near(p99, 900), "three frames: p50 800 ms, p99 900 ms (%g, %g)", p50, p99);

        /* 40,000 frames/s, a map a second: each frame waits for the next map,
         * 0 to 1 s evenly, so the median is 500 ms and the 99th percentile
         * 990 ms.  The newest 8,192 frames alone gave 102 and 203 ms (a
         * review's figures, of an earlier design). */
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        for (int s = 0; s < 5; s++)
                interval(s, s + 1, 40000);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 500) && near(p99, 990), "40,000 frames/s, maps 1 s apart: p50 500 ms, p99 990 ms (%.1f, %.1f)",
               p50, p99);

        /* More frames in one interval than the arrivals kept (65,536): still the
         * whole interval, not its first part. */
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        for (int s = 0; s < 4; s++)
                interval(s, s + 1, 300000);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 500) && near(p99, 990),
               "300,000 frames a map (over the %d kept): p50 500 ms, p99 990 ms (%.1f, %.1f)", ROID_LATENCY_ARRIVALS,
               p50, p99);
        roid_latency_series(&L, &p50, &p99, &max);
        tap_ok(L.series.n == 1200000 && near(p50, 500) && near(max, 1000),
               "and the series counts each of the 1,200,000 frames once (%llu), max 1000 ms (%.3f)",
               (unsigned long long)L.series.n, max);

        /* The status covers the frames since the last status; the series all of
         * them: 40,000 frames waiting 0-1 s, then 32,000 waiting 0-0.2 s give a
         * status of 100 / 198 ms, and a series median of 180 ms (200,000 x =
         * 36,000) and 99th percentile of 982 ms (40,000 (1 - x) = 720). */
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        interval(0, 1, 40000);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 500), "first status interval: p50 500 ms (%.1f)", p50);
        for (int s = 0; s < 4; s++)
                interval(1 + 0.2 * s, 1.2 + 0.2 * s, 8000);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 100) && near(p99, 198), "second: the 1 s map is out: p50 100 ms, p99 198 ms (%.1f, %.1f)", p50,
               p99);
        roid_latency_series(&L, &p50, &p99, &max);
        tap_ok(near(p50, 180) && near(p99, 982) && fabs(max - 1000) < 1e-9,
               "the series: p50 180 ms, p99 982 ms, max 1000 ms (%.1f, %.1f, %.3f)", p50, p99, max);

        /* No new frames (an idle detector): the status figures stand. */
        for (int m = 0; m < 8; m++)
                roid_latency_map(&L, 6.0 + m);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 100) && near(p99, 198), "maps without new frames leave the status as it was (%.1f, %.1f)", p50,
               p99);

        /* A control reset forgets the frames waiting and the series' figures,
         * not the status'; a new series clears them all. */
        roid_latency_arrival(&L, 13.5);
        roid_latency_reset(&L, ROID_LATENCY_WAITING | ROID_LATENCY_SERIES);
        roid_latency_map(&L, 20.0);
        roid_latency_series(&L, &p50, &p99, &max);
        tap_ok(isnan(p50) && isnan(max), "control reset: the frame waiting is not counted, the series starts again");
        roid_latency_status(&L, &p50, &p99);
        tap_ok(near(p50, 100), "control reset: the status figures stand (%.1f)", p50);
        interval(20.0, 20.01, 10);
        roid_latency_series(&L, &p50, &p99, &max);
        /* latencies 1..10 ms: the median is the value of rank ceil(0.5 x 9) = 5 */
        tap_ok(near(p50, 6) && fabs(max - 10) < 1e-6, "and counts the frames after it (p50 %.3f, max %.3f)", p50, max);
        roid_latency_reset(&L, ROID_LATENCY_ALL);
        roid_latency_status(&L, &p50, &p99);
        tap_ok(isnan(p50), "a new series starts empty");

        against_sorting();
        return tap_done();
}
