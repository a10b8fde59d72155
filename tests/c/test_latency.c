/* test_latency.c - the status message's latency percentiles (service/latency.h)
 * on arrival schedules whose true percentiles are known. */
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

int main(void) {
        double p50, p99;
        roid_latency_reset(&L, 1);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(isnan(p50) && isnan(p99), "no map yet: NaN");

        /* 0.1, 0.2, 0.3 s, a map at 1 s: latencies 0.9, 0.8, 0.7 s */
        roid_latency_arrival(&L, 0.1);
        roid_latency_arrival(&L, 0.2);
        roid_latency_arrival(&L, 0.3);
        roid_latency_map(&L, 1.0);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 800) < 1e-9 && fabs(p99 - 900) < 1e-9, "three frames: p50 800 ms, p99 900 ms (%g, %g)", p50,
               p99);

        /* 40,000 frames/s, a map a second: each frame waits for the next map,
         * 0 to 1 s evenly, so the median is 500 ms and the 99th percentile
         * 990 ms.  The newest 8,192 frames alone gave 102 and 203 ms (the
         * review's figures). */
        roid_latency_reset(&L, 1);
        for (int s = 0; s < 5; s++)
                interval(s, s + 1, 40000);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 500) < 2 && fabs(p99 - 990) < 2,
               "40,000 frames/s, maps 1 s apart: p50 500 ms, p99 990 ms (%.1f, %.1f)", p50, p99);

        /* More frames in one interval than the arrivals kept (65,536): still the
         * whole interval, not its first part. */
        roid_latency_reset(&L, 1);
        for (int s = 0; s < 4; s++)
                interval(s, s + 1, 300000);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 500) < 2 && fabs(p99 - 990) < 2,
               "300,000 frames a map (over the %d kept): p50 500 ms, p99 990 ms (%.1f, %.1f)", ROID_LATENCY_ARRIVALS,
               p50, p99);

        /* The last four maps count, each with an equal share: maps
         * of 1 s then four of 0.2 s at the same rate give 100 ms. */
        roid_latency_reset(&L, 1);
        interval(0, 1, 40000);
        for (int s = 0; s < 4; s++)
                interval(1 + 0.2 * s, 1.2 + 0.2 * s, 8000);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 100) < 1 && fabs(p99 - 198) < 1,
               "after four maps of 0.2 s the 1 s one is out: p50 100 ms, p99 198 ms (%.1f, %.1f)", p50, p99);

        /* A reset of the frames waiting (a control reset) keeps the maps'; a new series clears them. */
        roid_latency_arrival(&L, 1.9);
        roid_latency_reset(&L, 0);
        roid_latency_map(&L, 5.0);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 100) < 1, "frames reset before the map are not counted (%.1f)", p50);
        for (int m = 0; m < 8; m++)
                roid_latency_map(&L, 6.0 + m);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(fabs(p50 - 100) < 1, "maps without new frames (an idle detector) leave the figures as they were (%.1f)",
               p50);
        roid_latency_reset(&L, 1);
        roid_latency_percentiles(&L, &p50, &p99);
        tap_ok(isnan(p50), "a new series starts empty");
        return tap_done();
}
