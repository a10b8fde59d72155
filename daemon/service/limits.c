#include "service/limits.h"

#include <unistd.h>

void roid_limits_default(roid_limits *l) {
        *l = (roid_limits){
                .max_message_bytes = (size_t)512 << 20,
                .max_parts = 32,
                .max_json_bytes = (size_t)4 << 20,
                .max_pixels = (uint64_t)64 << 20,
                .max_frame_bytes = (uint64_t)256 << 20,
                .max_images = 100000000,
                .max_depth = 32,
        };
}

uint64_t roid_limits_analysis_bytes(const roid_limits *l) {
        if (l->max_analysis_bytes)
                return l->max_analysis_bytes;
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        /* Unknown (never on Linux): no bound rather than a wrong one. */
        return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size / 2 : 0;
}
