/* record.h - what the pipeline keeps of one analysed frame: its place on the
 * scan and its features.  Produced by a feature worker, consumed by the
 * analysis (RoI state), the results writer and the `frame` topic.
 *
 * Ownership: plain fixed-size data, copied through the bounded queues.
 * Threads: any; nothing is shared.
 */
#ifndef ROID_ANALYSIS_RECORD_H
#define ROID_ANALYSIS_RECORD_H

#include <stdint.h>

#include "features/features.h"

#define ROID_NOT_PLACED UINT32_MAX

typedef struct {
        uint64_t image_id;
        uint32_t row, col;   /* grid point; ROID_NOT_PLACED when the image lies off the grid */
        double pos_x, pos_y; /* fly-scan position from the image's user data; NaN for step scans */
        double t_arrival;    /* CLOCK_MONOTONIC seconds when its message was received (latency) */
        roid_features f;
} roid_frame_record;

#endif
