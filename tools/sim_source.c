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

size_t sim_dtype_size(roid_dtype dt) {
        switch (dt) {
        case ROID_DT_U8:
                return 1;
        case ROID_DT_U16:
                return 2;
        case ROID_DT_U32:
        case ROID_DT_F32:
                return 4;
        default:
                return 0;
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
