#include "outputs/jsonl.h"

#include <stdlib.h>
#include <string.h>

#include "features/features.h"

struct roid_jsonl {
        FILE *out;
        roid_geometry geom[ROID_MAX_CHANNELS];
        bool have[ROID_MAX_CHANNELS];
};

static void drop_geometries(roid_jsonl *j);

int roid_jsonl_new(FILE *out, roid_jsonl **ret) {
        roid_jsonl *j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->out = out;
        *ret = j;
        return 0;
}

void roid_jsonl_free(roid_jsonl *j) {
        if (!j)
                return;
        drop_geometries(j);
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

/* The series' geometry per channel, built at the channel's first frame (the
 * mask can differ per channel), dropped at the end of the series. */
static roid_geometry *geometry_for(roid_jsonl *j, const roid_frame_event *ev, roid_err *err) {
        if (ev->channel >= ROID_MAX_CHANNELS)
                return NULL;
        roid_geometry *g = &j->geom[ev->channel];
        if (j->have[ev->channel] && g->rows == ev->rows && g->cols == ev->cols && g->dtype == ev->dtype)
                return g;
        if (j->have[ev->channel])
                roid_geometry_free(g);
        j->have[ev->channel] = false;
        roid_geometry_params p;
        roid_geometry_params_default(&p);
        p.rows = ev->rows;
        p.cols = ev->cols;
        p.dtype = ev->dtype;
        p.n_segments = 1;
        const roid_start_info *st = &ev->series->start;
        /* Only empty frames depend on the centre (their CoM is the centre). */
        p.center_x = st->has_beam_center ? st->beam_center_x : (ev->cols - 1) / 2.0;
        p.center_y = st->has_beam_center ? st->beam_center_y : (ev->rows - 1) / 2.0;
        p.mask = ev->pixel_mask;
        if (roid_geometry_init(g, &p, err) < 0)
                return NULL;
        j->have[ev->channel] = true;
        return g;
}

static void drop_geometries(roid_jsonl *j) {
        for (int c = 0; c < ROID_MAX_CHANNELS; c++)
                if (j->have[c])
                        roid_geometry_free(&j->geom[c]);
        memset(j->have, 0, sizeof j->have);
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        roid_jsonl *j = ctx;
        roid_err err = {""};
        roid_features ft;
        roid_geometry *g = geometry_for(j, ev, &err);
        roid_frame fr = {.dtype = ev->dtype, .rows = ev->rows, .cols = ev->cols, .pixels = ev->pixels};
        FILE *f = j->out;
        fputc('{', f);
        put_series(f, ev->series);
        fprintf(f, ",\"image_id\":%llu,\"channel\":", (unsigned long long)ev->image_id);
        put_str(f, ev->channel_name);
        fprintf(f, ",\"height\":%u,\"width\":%u,\"dtype\":\"%s\"", ev->rows, ev->cols, roid_dtype_name(ev->dtype));
        if (!g || roid_features_compute(g, &fr, &ft, &err) < 0) {
                fputs(",\"error\":", f);
                put_str(f, err.msg);
                fputs("}\n", f);
                return;
        }
        fprintf(f, ",\"sum\":%llu,\"masked\":%llu,\"com_x\":%.17g,\"com_y\":%.17g}\n", (unsigned long long)ft.total_u64,
                (unsigned long long)ft.masked, ft.com_x, ft.com_y);
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
        drop_geometries(j);
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
