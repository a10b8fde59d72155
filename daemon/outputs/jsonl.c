#include "outputs/jsonl.h"

#include <stdlib.h>
#include <string.h>

struct roid_jsonl {
        FILE *out;
};

int roid_jsonl_new(FILE *out, roid_jsonl **ret) {
        roid_jsonl *j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->out = out;
        *ret = j;
        return 0;
}

void roid_jsonl_free(roid_jsonl *j) {
        free(j);
}

/* Writes s as a JSON string (quotes included). */
static void put_str(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

static void put_series(FILE *f, const roid_series *s) {
        fprintf(f, "\"series_id\":%llu,\"series_unique_id\":", (unsigned long long)s->series_id);
        put_str(f, s->series_unique_id);
}

/* Sum of the pixels that count and the number that do not: excluded by the
 * series' pixel mask or at the type's maximum (EIGER's gap/masked value). */
#define SUM_LOOP(T, MAX)                                                                                               \
        do {                                                                                                           \
                const T *p = ev->pixels;                                                                               \
                for (size_t i = 0; i < n; i++) {                                                                       \
                        if (p[i] == (MAX) || (mask && mask[i])) {                                                      \
                                masked++;                                                                              \
                                continue;                                                                              \
                        }                                                                                              \
                        sum += p[i];                                                                                   \
                }                                                                                                      \
        } while (0)

static void on_frame(void *ctx, const roid_frame_event *ev) {
        roid_jsonl *j = ctx;
        size_t n = (size_t)ev->rows * ev->cols;
        const uint32_t *mask = ev->pixel_mask;
        unsigned long long sum = 0, masked = 0;
        switch (ev->dtype) {
        case ROID_DT_U8:
                SUM_LOOP(uint8_t, UINT8_MAX);
                break;
        case ROID_DT_U16:
                SUM_LOOP(uint16_t, UINT16_MAX);
                break;
        case ROID_DT_U32:
                SUM_LOOP(uint32_t, UINT32_MAX);
                break;
        default:
                break;
        }
        FILE *f = j->out;
        fputc('{', f);
        put_series(f, ev->series);
        fprintf(f, ",\"image_id\":%llu,\"channel\":", (unsigned long long)ev->image_id);
        put_str(f, ev->channel_name);
        fprintf(f, ",\"height\":%u,\"width\":%u,\"dtype\":\"%s\",\"sum\":%llu,\"masked\":%llu}\n", ev->rows, ev->cols,
                roid_dtype_name(ev->dtype), sum, masked);
}

static void on_frame_error(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg) {
        roid_jsonl *j = ctx;
        FILE *f = j->out;
        fputc('{', f);
        put_series(f, s);
        fprintf(f, ",\"image_id\":%llu,\"channel\":", (unsigned long long)image_id);
        put_str(f, channel);
        fputs(",\"error\":", f);
        put_str(f, msg);
        fputs("}\n", f);
}

static void on_message_error(void *ctx, uint64_t index, const char *msg) {
        roid_jsonl *j = ctx;
        fprintf(j->out, "{\"message\":%llu,\"image_id\":null,\"error\":", (unsigned long long)index);
        put_str(j->out, msg);
        fputs("}\n", j->out);
}

static void on_start(void *ctx, const roid_series *s) {
        roid_jsonl *j = ctx;
        fputs("{\"event\":\"start\",", j->out);
        put_series(j->out, s);
        fprintf(j->out, ",\"height\":%u,\"width\":%u,\"dtype\":\"%s\",\"channels\":[", s->rows, s->cols,
                roid_dtype_name(s->dtype));
        for (unsigned c = 0; c < s->start.n_channels; c++) {
                if (c)
                        fputc(',', j->out);
                put_str(j->out, s->start.channels[c]);
        }
        fprintf(j->out, "],\"implicit\":%s}\n", s->implicit ? "true" : "false");
}

static void on_end(void *ctx, const roid_series *s, bool terminated) {
        roid_jsonl *j = ctx;
        fputs("{\"event\":\"end\",", j->out);
        put_series(j->out, s);
        fprintf(j->out, ",\"images\":%llu,\"terminated\":%s}\n", (unsigned long long)s->images_accepted,
                terminated ? "true" : "false");
}

void roid_jsonl_sink(roid_jsonl *j, roid_sink *ret) {
        *ret = (roid_sink){
                .ctx = j,
                .series_start = on_start,
                .frame = on_frame,
                .frame_error = on_frame_error,
                .series_end = on_end,
                .message_error = on_message_error,
        };
}
