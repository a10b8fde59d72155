#include "service/limits.h"

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
