#include "ingest/message.h"

#include <string.h>

const char *const roid_gonio_axis_names[ROID_GONIO_AXES] = {"chi", "kappa", "omega", "phi", "two_theta"};

size_t roid_dtype_size(roid_dtype t) {
        switch (t) {
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

const char *roid_dtype_name(roid_dtype t) {
        switch (t) {
        case ROID_DT_U8:
                return "uint8";
        case ROID_DT_U16:
                return "uint16";
        case ROID_DT_U32:
                return "uint32";
        case ROID_DT_F32:
                return "float32";
        default:
                return "none";
        }
}

roid_dtype roid_dtype_from_name(const char *s, size_t len) {
        static const struct {
                const char *n;
                roid_dtype t;
        } tab[] = {{"uint8", ROID_DT_U8}, {"uint16", ROID_DT_U16}, {"uint32", ROID_DT_U32}, {"float32", ROID_DT_F32}};
        for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
                if (strlen(tab[i].n) == len && memcmp(tab[i].n, s, len) == 0)
                        return tab[i].t;
        return ROID_DT_NONE;
}

const char *roid_comp_name(roid_comp c) {
        switch (c) {
        case ROID_COMP_NONE:
                return "none";
        case ROID_COMP_BSLZ4:
                return "bslz4";
        case ROID_COMP_LZ4_H5:
                return "lz4";
        case ROID_COMP_LZ4_RAW:
                return "lz4<";
        }
        return "?";
}

const char *roid_msg_type_name(roid_msg_type t) {
        switch (t) {
        case ROID_MSG_START:
                return "start";
        case ROID_MSG_IMAGE:
                return "image";
        case ROID_MSG_END:
                return "end";
        default:
                return "none";
        }
}
