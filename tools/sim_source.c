#include "sim_source.h"

#include <string.h>

static const sim_source_ops *const sources[] = {
        &sim_source_pattern,
        &sim_source_file,
        &sim_source_phantom,
};

const sim_source_ops *sim_source_find(const char *spec, const char **ret_arg) {
        const char *colon = strchr(spec, ':');
        size_t n = colon ? (size_t)(colon - spec) : strlen(spec);

        for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
                if (strlen(sources[i]->name) == n && memcmp(sources[i]->name, spec, n) == 0) {
                        *ret_arg = colon ? colon + 1 : NULL;
                        return sources[i];
                }
        }
        return NULL;
}

void sim_set_pixel(void *pixels, roid_dtype dt, size_t i, uint32_t v) {
        switch (dt) {
        case ROID_DT_U8:
                ((uint8_t *)pixels)[i] = (uint8_t)v;
                break;
        case ROID_DT_U16:
                ((uint16_t *)pixels)[i] = (uint16_t)v;
                break;
        default:
                ((uint32_t *)pixels)[i] = v;
                break;
        }
}

uint32_t sim_dtype_max(roid_dtype dt) {
        switch (dt) {
        case ROID_DT_U8:
                return UINT8_MAX;
        case ROID_DT_U16:
                return UINT16_MAX;
        default:
                return UINT32_MAX;
        }
}
