/* Format detection, limits on the whole message, dispatch to the V1 / V2
 * parsers.  The message is built in the parser's scratch copy and handed out
 * only on success, so *ret is untouched on failure. */
#include "ingest/parse.h"

#include <stdlib.h>
#include <string.h>

#include "ingest/stream_internal.h"

struct roid_parser {
        roid_limits lim;
        stream1_arena arena;
        roid_msg scratch;
};

int roid_parser_new(const roid_limits *lim, roid_parser **ret) {
        roid_parser *p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->lim = *lim;
        *ret = p;
        return 0;
}

void roid_parser_free(roid_parser *p) {
        if (!p)
                return;
        stream1_arena_free_internal(&p->arena);
        free(p);
}

void roid_parser_set_limits(roid_parser *p, const roid_limits *lim) {
        p->lim = *lim;
}

static bool is_cbor_start(const roid_part *pt) {
        const uint8_t *d = pt->data;
        if (pt->size >= 3 && d[0] == 0xd9 && d[1] == 0xd9 && d[2] == 0xf7)
                return true;
        return pt->size >= 1 && ((d[0] >= 0xa0 && d[0] <= 0xbb) || d[0] == 0xbf);
}

static bool is_json_start(const roid_part *pt) {
        for (size_t i = 0; i < pt->size; i++) {
                uint8_t c = pt->data[i];
                if (c == '{')
                        return true;
                if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
                        return false;
        }
        return false;
}

roid_format roid_detect_format(const roid_part *parts, size_t n_parts) {
        if (n_parts == 0 || !parts[0].data)
                return ROID_FMT_NONE;
        if (n_parts == 1 && is_cbor_start(&parts[0]))
                return ROID_FMT_V2;
        if (is_json_start(&parts[0]))
                return ROID_FMT_V1;
        return ROID_FMT_NONE;
}

int roid_parse(roid_parser *p, const roid_part *parts, size_t n_parts, roid_msg *ret, roid_err *err) {
        if (n_parts == 0)
                return roid_err_set(err, -EBADMSG, "empty message (no parts)");
        if (n_parts > p->lim.max_parts)
                return roid_err_set(err, -EMSGSIZE, "%zu parts exceed max_parts %zu", n_parts, p->lim.max_parts);
        size_t total = 0;
        for (size_t i = 0; i < n_parts; i++) {
                if (!parts[i].data && parts[i].size)
                        return roid_err_set(err, -EINVAL, "part %zu: NULL data", i + 1);
                if (__builtin_add_overflow(total, parts[i].size, &total) || total > p->lim.max_message_bytes)
                        return roid_err_set(err, -EMSGSIZE, "message exceeds max_message_bytes %zu at part %zu",
                                            p->lim.max_message_bytes, i + 1);
        }

        roid_msg *m = &p->scratch;
        memset(m, 0, sizeof *m);
        roid_format f = roid_detect_format(parts, n_parts);
        int r;
        switch (f) {
        case ROID_FMT_V2:
                m->format = ROID_FMT_V2;
                r = stream2_parse_internal(parts[0].data, parts[0].size, &p->lim, m, err);
                break;
        case ROID_FMT_V1:
                m->format = ROID_FMT_V1;
                r = stream1_parse_internal(&p->arena, parts, n_parts, &p->lim, m, err);
                break;
        default:
                return roid_err_set(err, -EBADMSG, "neither CBOR nor JSON: %zu parts, first byte 0x%02x", n_parts,
                                    parts[0].size ? parts[0].data[0] : 0);
        }
        if (r < 0)
                return r;
        *ret = *m;
        return 0;
}
