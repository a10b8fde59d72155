#include "analysis/analysis.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "features/features.h"
#include "outputs/results.h"
#include "service/log.h"

struct roid_analysis {
        roid_analysis_params p;
        /* per series */
        bool active, have_geom;
        int channel; /* -1 until the first frame */
        const char *center_source;
        roid_geometry geom;
        roid_scan_grid grid;
        roid_roi *roi;
        uint64_t dropped;
        /* per-frame record, capacity cap */
        size_t n, cap;
        uint64_t *image_id;
        uint32_t *index;
        double *sum, *com, *seg_sum, *seg_com, *bf, *df;
        char last_output[ROID_PATH_MAX];
        uint64_t series_id;
        char series_unique_id[ROID_NAME_MAX];
};

void roid_analysis_params_default(roid_analysis_params *p) {
        memset(p, 0, sizeof *p);
        roid_roi_params_default(&p->roi);
        p->center_x = p->center_y = NAN;
        roid_scan_grid_default(&p->scan);
        p->scan.source = ROID_SCAN_FROM_NONE;
        p->max_depth = 32;
}

int roid_analysis_new(const roid_analysis_params *p, roid_analysis **ret, roid_err *err) {
        if (p->roi.n_segments < 1 || p->roi.n_segments > ROID_MAX_SEGMENTS)
                return roid_err_set(err, -EINVAL, "segments: %u, must be 1..%u", p->roi.n_segments, ROID_MAX_SEGMENTS);
        roid_analysis *a = calloc(1, sizeof *a);
        if (!a)
                return -ENOMEM;
        a->p = *p;
        *ret = a;
        return 0;
}

static void free_record(roid_analysis *a) {
        free(a->image_id);
        free(a->index);
        free(a->sum);
        free(a->com);
        free(a->seg_sum);
        free(a->seg_com);
        free(a->bf);
        free(a->df);
        a->image_id = NULL;
        a->index = NULL;
        a->sum = a->com = a->seg_sum = a->seg_com = a->bf = a->df = NULL;
        a->n = a->cap = 0;
}

static void reset_series(roid_analysis *a) {
        if (a->have_geom)
                roid_geometry_free(&a->geom);
        a->have_geom = false;
        roid_roi_free(a->roi);
        a->roi = NULL;
        free_record(a);
        a->active = false;
}

void roid_analysis_free(roid_analysis *a) {
        if (!a)
                return;
        reset_series(a);
        free(a);
}

static void on_start(void *ctx, const roid_series *s) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        reset_series(a);
        a->dropped = 0;
        a->channel = -1;
        a->series_id = s->series_id;
        memcpy(a->series_unique_id, s->series_unique_id, sizeof a->series_unique_id);
        const roid_scan_grid *cfg = a->p.scan.source != ROID_SCAN_FROM_NONE ? &a->p.scan : NULL;
        int r = roid_scan_resolve(&s->user_data, cfg, s->start.has_number_of_images, s->start.number_of_images,
                                  a->p.max_depth, &a->grid, &err);
        if (r < 0) {
                roid_log(ROID_LOG_WARNING, "series %" PRIu64 ": bad scan description in user_data: %s; ignoring it",
                         s->series_id, err.msg);
                r = roid_scan_resolve(NULL, cfg, s->start.has_number_of_images, s->start.number_of_images,
                                      a->p.max_depth, &a->grid, &err);
        }
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": no scan grid: %s", s->series_id, err.msg);
                return;
        }
        r = roid_roi_new(&a->p.roi, a->grid.ny, a->grid.nx, &a->roi, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": RoI state: %s", s->series_id, err.msg);
                return;
        }
        /* One record per grid point, or per announced image for fly scans
         * that may put several images on one point. */
        uint64_t cap = (uint64_t)a->grid.ny * a->grid.nx;
        if (s->start.has_number_of_images && s->start.number_of_images > cap)
                cap = s->start.number_of_images < ROID_SCAN_MAX_POINTS ? s->start.number_of_images
                                                                       : ROID_SCAN_MAX_POINTS;
        size_t S = a->p.roi.n_segments;
        a->image_id = malloc(cap * sizeof(uint64_t));
        a->index = malloc(cap * 2 * sizeof(uint32_t));
        a->sum = malloc(cap * sizeof(double));
        a->com = malloc(cap * 2 * sizeof(double));
        a->seg_sum = malloc(cap * S * sizeof(double));
        a->seg_com = malloc(cap * S * 2 * sizeof(double));
        a->bf = malloc(cap * sizeof(double));
        a->df = malloc(cap * sizeof(double));
        if (!a->image_id || !a->index || !a->sum || !a->com || !a->seg_sum || !a->seg_com || !a->bf || !a->df) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": out of memory for %" PRIu64 " frame records", s->series_id,
                         cap);
                reset_series(a);
                return;
        }
        a->cap = cap;
        a->active = true;
        roid_log(ROID_LOG_INFO, "series %" PRIu64 ": scan %u x %u (%s), %u segments", s->series_id, a->grid.ny,
                 a->grid.nx, roid_scan_source_name(a->grid.source), a->p.roi.n_segments);
}

static int build_geometry(roid_analysis *a, const roid_series *s, const roid_frame_event *ev, roid_err *err) {
        roid_geometry_params gp;
        roid_geometry_params_default(&gp);
        gp.rows = ev->rows;
        gp.cols = ev->cols;
        gp.dtype = ev->dtype;
        gp.n_segments = a->p.roi.n_segments;
        gp.r_bf = a->p.r_bf;
        gp.r_df_in = a->p.r_df_in;
        gp.r_df_out = a->p.r_df_out;
        gp.mask = ev->pixel_mask;
        if (s->start.has_beam_center) {
                gp.center_x = s->start.beam_center_x;
                gp.center_y = s->start.beam_center_y;
                a->center_source = "start";
        } else if (isfinite(a->p.center_x) && isfinite(a->p.center_y)) {
                gp.center_x = a->p.center_x;
                gp.center_y = a->p.center_y;
                a->center_source = "config";
        } else {
                roid_frame f = {.dtype = ev->dtype, .rows = ev->rows, .cols = ev->cols, .pixels = ev->pixels};
                int r = roid_estimate_beam_center(&f, ev->pixel_mask, &gp.center_x, &gp.center_y, err);
                if (r < 0)
                        return r;
                a->center_source = "estimated";
        }
        int r = roid_geometry_init(&a->geom, &gp, err);
        if (r < 0)
                return r;
        a->have_geom = true;
        return 0;
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        if (!a->active)
                return;
        if (a->channel < 0)
                a->channel = (int)ev->channel;
        if ((int)ev->channel != a->channel)
                return;
        if (!a->have_geom) {
                int r = build_geometry(a, ev->series, ev, &err);
                if (r < 0) {
                        roid_log(ROID_LOG_ERR, "image %" PRIu64 ": no detector geometry: %s", ev->image_id, err.msg);
                        a->dropped++;
                        return;
                }
        }
        uint32_t row, col;
        int r = roid_scan_locate(&a->grid, ev->image_id, ev->user_data, a->p.max_depth, &row, &col, &err);
        if (r < 0) {
                if (a->dropped++ == 0)
                        roid_log(ROID_LOG_WARNING,
                                 "image %" PRIu64 ": not placed on the scan: %s (further ones are "
                                 "counted only)",
                                 ev->image_id, err.msg);
                return;
        }
        roid_frame f = {.dtype = ev->dtype, .rows = ev->rows, .cols = ev->cols, .pixels = ev->pixels};
        roid_features ft;
        r = roid_features_compute(&a->geom, &f, &ft, &err);
        if (r < 0) {
                if (a->dropped++ == 0)
                        roid_log(ROID_LOG_WARNING, "image %" PRIu64 ": %s", ev->image_id, err.msg);
                return;
        }
        roid_roi_add(a->roi, row, col, &ft);
        if (a->n >= a->cap) {
                a->dropped++;
                return;
        }
        size_t i = a->n++, S = a->p.roi.n_segments;
        a->image_id[i] = ev->image_id;
        a->index[2 * i] = row;
        a->index[2 * i + 1] = col;
        a->sum[i] = ft.total;
        a->com[2 * i] = ft.com_x;
        a->com[2 * i + 1] = ft.com_y;
        for (size_t s = 0; s < S; s++) {
                a->seg_sum[i * S + s] = ft.seg[s].sum;
                a->seg_com[(i * S + s) * 2] = ft.seg[s].com_x;
                a->seg_com[(i * S + s) * 2 + 1] = ft.seg[s].com_y;
        }
        a->bf[i] = ft.bf;
        a->df[i] = ft.df;
}

static void on_frame_error(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg) {
        (void)s;
        (void)image_id;
        (void)channel;
        (void)msg;
        roid_analysis *a = ctx;
        a->dropped++;
}

static int write_results(roid_analysis *a, roid_err *err) {
        roid_results_meta meta = {
                .series_unique_id = a->series_unique_id,
                .series_id = a->series_id,
                .center_x = a->have_geom ? a->geom.center_x : NAN,
                .center_y = a->have_geom ? a->geom.center_y : NAN,
                .center_source = a->have_geom ? a->center_source : "none",
                .r_bf = a->p.r_bf,
                .r_df_in = a->p.r_df_in,
                .r_df_out = a->p.r_df_out,
                .roi = &a->p.roi,
                .ny = a->grid.ny,
                .nx = a->grid.nx,
                .snake = a->grid.snake,
                .fast_axis = a->grid.fast_axis == ROID_SCAN_FAST_X ? "x" : "y",
                .scan_source = roid_scan_source_name(a->grid.source),
        };
        roid_results_features f = {.n = a->n,
                                   .n_seg = a->p.roi.n_segments,
                                   .image_id = a->image_id,
                                   .index = a->index,
                                   .sum = a->sum,
                                   .com = a->com,
                                   .seg_sum = a->seg_sum,
                                   .seg_com = a->seg_com,
                                   .bf = a->bf,
                                   .df = a->df};
        roid_results *w;
        char path[ROID_PATH_MAX];
        int r = roid_results_open(a->p.output_dir, &meta, &w, path, sizeof path, err);
        if (r < 0)
                return r;
        r = roid_results_write_features(w, &f, err);
        if (r >= 0)
                r = roid_results_write_roi(w, a->roi, &f, err);
        int rc = roid_results_close(w);
        if (r >= 0 && rc < 0)
                r = roid_err_set(err, rc, "closing %s failed", path);
        if (r >= 0)
                memcpy(a->last_output, path, sizeof path);
        return r;
}

static void on_end(void *ctx, const roid_series *s, bool terminated) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        if (!a->active)
                return;
        roid_roi_finish(a->roi);
        size_t in = 0, np = (size_t)a->grid.ny * a->grid.nx;
        const uint8_t *m = roid_roi_mask(a->roi);
        for (size_t i = 0; i < np; i++)
                in += m[i];
        roid_log(ROID_LOG_INFO,
                 "series %" PRIu64 " %s: %" PRIu64 " frames, RoI %zu of %zu points, %" PRIu64 " frames dropped",
                 s->series_id, terminated ? "ended" : "closed", roid_roi_frames(a->roi), in, np, a->dropped);
        if (a->p.output_dir[0]) {
                int r = write_results(a, &err);
                if (r < 0)
                        roid_log(ROID_LOG_ERR, "series %" PRIu64 ": results not written: %s", s->series_id, err.msg);
        }
        a->active = false;
}

void roid_analysis_sink(roid_analysis *a, roid_sink *ret) {
        memset(ret, 0, sizeof *ret);
        ret->ctx = a;
        ret->series_start = on_start;
        ret->frame = on_frame;
        ret->frame_error = on_frame_error;
        ret->series_end = on_end;
}

const roid_roi *roid_analysis_roi(const roid_analysis *a) {
        return a->roi;
}

const char *roid_analysis_last_output(const roid_analysis *a) {
        return a->last_output;
}

uint64_t roid_analysis_frames_dropped(const roid_analysis *a) {
        return a->dropped;
}
