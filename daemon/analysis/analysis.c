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
        bool refused;          /* a series started without analysis state: count its frames */
        uint64_t not_analysed; /* frames of such a series */
        int channel;           /* -1 until the first frame */
        const char *center_source;
        roid_geometry geom;
        roid_scan_grid grid;
        roid_roi *roi;
        uint64_t dropped;
        uint64_t unplaced; /* frames off the grid: kept in the results, not in the maps */
        /* per-frame record, capacity cap */
        size_t n, cap;
        uint64_t *image_id;
        uint32_t *index;
        double *pos; /* x, y from the image's user data; NaN without */
        double *sum, *com, *seg_sum, *seg_com, *bf, *df;
        uint8_t *left_out; /* roid_features_left_out per frame */
        char last_output[ROID_PATH_MAX];
        uint64_t results_failed;
        uint64_t series_id;
        char series_unique_id[ROID_NAME_MAX];
        const char *source;        /* roid_analysis_set_source */
        const char *series_source; /* the source when the series started */
        roid_results_detector detector;
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
        free(a->pos);
        free(a->sum);
        free(a->com);
        free(a->seg_sum);
        free(a->seg_com);
        free(a->bf);
        free(a->df);
        free(a->left_out);
        a->left_out = NULL;
        a->image_id = NULL;
        a->index = NULL;
        a->pos = NULL;
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

/* Bytes of one frame record. */
static uint64_t record_bytes(const roid_analysis *a) {
        return sizeof(uint64_t) + 2 * sizeof(uint32_t) + 1 + (7 + 3 * (uint64_t)a->p.roi.n_segments) * sizeof(double);
}

static void on_start(void *ctx, const roid_series *s) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        reset_series(a);
        a->dropped = 0;
        a->unplaced = 0;
        a->channel = -1;
        a->refused = true; /* until the state is there */
        a->not_analysed = 0;
        a->series_id = s->series_id;
        memcpy(a->series_unique_id, s->series_unique_id, sizeof a->series_unique_id);
        roid_results_detector_from_start(&a->detector, s->format, s->implicit ? NULL : &s->start, NULL);
        a->series_source = a->source;
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
        /* One record per grid point, or per announced image for fly scans
         * that may put several images on one point. */
        uint64_t cap = (uint64_t)a->grid.ny * a->grid.nx;
        if (s->start.has_number_of_images && s->start.number_of_images > cap)
                cap = s->start.number_of_images < ROID_SCAN_MAX_POINTS ? s->start.number_of_images
                                                                       : ROID_SCAN_MAX_POINTS;
        size_t S = a->p.roi.n_segments;
        /* The records are part of the series' analysis state: one bound for
         * both, checked before either is allocated. */
        const uint64_t rec_bytes = cap * record_bytes(a);
        const uint64_t state_bytes = roid_roi_state_bytes(&a->p.roi, a->grid.ny, a->grid.nx);
        const uint64_t max = a->p.roi.max_state_bytes;
        if (max && state_bytes <= max && state_bytes + rec_bytes > max) {
                roid_log(ROID_LOG_ERR,
                         "series %" PRIu64 ": RoI state: %" PRIu64 " frame records (%.1f MiB) and the RoI state "
                         "(%.1f MiB) need more than max_analysis_bytes (%.1f MiB; set it to %lluM or more)",
                         s->series_id, cap, (double)rec_bytes / (1u << 20), (double)state_bytes / (1u << 20),
                         (double)max / (1u << 20),
                         (unsigned long long)((state_bytes + rec_bytes + (1u << 20) - 1) >> 20));
                return;
        }
        r = roid_roi_new(&a->p.roi, a->grid.ny, a->grid.nx, &a->roi, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": RoI state: %s", s->series_id, err.msg);
                return;
        }
        a->image_id = malloc(cap * sizeof(uint64_t));
        a->index = malloc(cap * 2 * sizeof(uint32_t));
        a->pos = malloc(cap * 2 * sizeof(double));
        a->sum = malloc(cap * sizeof(double));
        a->com = malloc(cap * 2 * sizeof(double));
        a->seg_sum = malloc(cap * S * sizeof(double));
        a->seg_com = malloc(cap * S * 2 * sizeof(double));
        a->bf = malloc(cap * sizeof(double));
        a->df = malloc(cap * sizeof(double));
        a->left_out = malloc(cap);
        if (!a->image_id || !a->index || !a->pos || !a->sum || !a->com || !a->seg_sum || !a->seg_com || !a->bf ||
            !a->df || !a->left_out) {
                roid_log(ROID_LOG_ERR, "series %" PRIu64 ": out of memory for %" PRIu64 " frame records", s->series_id,
                         cap);
                reset_series(a);
                return;
        }
        a->cap = cap;
        a->active = true;
        a->refused = false;
        roid_log(ROID_LOG_INFO, "series %" PRIu64 ": scan %u x %u (%s), %u segments", s->series_id, a->grid.ny,
                 a->grid.nx, roid_scan_source_name(a->grid.source), a->p.roi.n_segments);
}

int roid_analysis_build_geometry(const roid_analysis_params *p, roid_dtype dtype, uint32_t rows, uint32_t cols,
                                 bool has_center, double cx, double cy, const roid_frame *first, const uint32_t *mask,
                                 roid_geometry *ret, const char **ret_source, roid_err *err) {
        roid_geometry_params gp;
        roid_geometry_params_default(&gp);
        gp.rows = rows;
        gp.cols = cols;
        gp.dtype = dtype;
        gp.n_segments = p->roi.n_segments;
        gp.r_bf = p->r_bf;
        gp.r_df_in = p->r_df_in;
        gp.r_df_out = p->r_df_out;
        gp.mask = mask;
        const char *source;
        if (has_center) {
                gp.center_x = cx;
                gp.center_y = cy;
                source = "start";
        } else if (isfinite(p->center_x) && isfinite(p->center_y)) {
                gp.center_x = p->center_x;
                gp.center_y = p->center_y;
                source = "config";
        } else {
                int r = roid_estimate_beam_center(first, mask, &gp.center_x, &gp.center_y, err);
                if (r < 0)
                        return r;
                source = "estimated";
        }
        int r = roid_geometry_init(ret, &gp, err);
        if (r < 0)
                return r;
        *ret_source = source;
        return 0;
}

int roid_analysis_record(const roid_geometry *g, const roid_scan_grid *grid, uint64_t image_id, double pos_x,
                         double pos_y, const roid_frame *f, roid_frame_record *ret, roid_err *err) {
        roid_features ft;
        int r = roid_features_compute(g, f, &ft, err);
        if (r < 0)
                return r;
        return roid_analysis_place(grid, image_id, pos_x, pos_y, &ft, ret, err);
}

int roid_analysis_place(const roid_scan_grid *grid, uint64_t image_id, double pos_x, double pos_y,
                        const roid_features *ft, roid_frame_record *ret, roid_err *err) {
        uint32_t row = ROID_NOT_PLACED, col = ROID_NOT_PLACED;
        int placed;
        if (isfinite(pos_x) || isfinite(pos_y))
                placed = roid_scan_bin(grid, pos_x, pos_y, &row, &col, err) >= 0;
        else if (roid_scan_index(grid, image_id, &row, &col) >= 0)
                placed = 1;
        else
                placed = roid_err_set(err, 0, "image_id %" PRIu64 " is beyond the %u x %u scan grid", image_id,
                                      grid->ny, grid->nx);
        if (!placed)
                row = col = ROID_NOT_PLACED;
        ret->image_id = image_id;
        ret->row = row;
        ret->col = col;
        ret->pos_x = pos_x;
        ret->pos_y = pos_y;
        ret->t_arrival = 0;
        ret->f = *ft;
        return placed;
}

/* Doubles the frame records, within max_analysis_bytes (the RoI state
 * included) and ROID_SCAN_MAX_POINTS records a grid point of the largest
 * grid.  A series without number_of_images (a capture edited, V1 with
 * header_detail none, a fly scan of several frames a point) got one record a
 * grid point, and the rest of its frames were left out of the results file
 * while the file said final and complete (found by review: 42 RoI image ids
 * of 68).  -EMSGSIZE at the bound, -ENOMEM; the records kept are intact. */
static int grow_records(roid_analysis *a) {
        const size_t S = a->p.roi.n_segments;
        uint64_t limit = (uint64_t)16 * ROID_SCAN_MAX_POINTS;
        const uint64_t max = a->p.roi.max_state_bytes;
        if (max) {
                const uint64_t state = roid_roi_state_bytes(&a->p.roi, a->grid.ny, a->grid.nx);
                const uint64_t room = max > state ? (max - state) / record_bytes(a) : 0;
                limit = room < limit ? room : limit;
        }
        if (a->cap >= limit)
                return -EMSGSIZE;
        uint64_t ncap = a->cap < 512 ? 1024 : (uint64_t)a->cap * 2;
        ncap = ncap < limit ? ncap : limit;
        /* each array on its own: one that grew and a later one that did not
         * leave a larger buffer than cap, which is harmless */
#define GROW(field, per)                                                                                               \
        do {                                                                                                           \
                void *n_ = realloc(a->field, (size_t)ncap * (per) * sizeof *a->field);                                 \
                if (!n_)                                                                                               \
                        return -ENOMEM;                                                                                \
                a->field = n_;                                                                                         \
        } while (0)
        GROW(image_id, 1);
        GROW(index, 2);
        GROW(pos, 2);
        GROW(sum, 1);
        GROW(com, 2);
        GROW(seg_sum, S);
        GROW(seg_com, 2 * S);
        GROW(bf, 1);
        GROW(df, 1);
        GROW(left_out, 1);
#undef GROW
        a->cap = (size_t)ncap;
        return 0;
}

static void keep_record(roid_analysis *a, const roid_frame_record *rec) {
        const roid_features *ft = &rec->f;
        if (rec->row != ROID_NOT_PLACED)
                roid_roi_add(a->roi, rec->row, rec->col, ft);
        if (a->n >= a->cap) {
                const int r = grow_records(a);
                if (r < 0) {
                        if (a->dropped++ == 0)
                                roid_log(ROID_LOG_WARNING,
                                         "series %" PRIu64 ": frame records beyond %zu (%s): the results file "
                                         "leaves the rest out",
                                         a->series_id, a->cap, r == -EMSGSIZE ? "max_analysis_bytes" : "out of memory");
                        return;
                }
        }
        size_t i = a->n++, S = a->p.roi.n_segments;
        a->image_id[i] = rec->image_id;
        a->index[2 * i] = rec->row;
        a->index[2 * i + 1] = rec->col;
        a->pos[2 * i] = rec->pos_x;
        a->pos[2 * i + 1] = rec->pos_y;
        a->sum[i] = ft->total;
        a->com[2 * i] = ft->com_x;
        a->com[2 * i + 1] = ft->com_y;
        for (size_t s = 0; s < S; s++) {
                a->seg_sum[i * S + s] = ft->seg[s].sum;
                a->seg_com[(i * S + s) * 2] = ft->seg[s].com_x;
                a->seg_com[(i * S + s) * 2 + 1] = ft->seg[s].com_y;
        }
        a->bf[i] = ft->bf;
        a->df[i] = ft->df;
        a->left_out[i] = (uint8_t)roid_features_left_out(ft);
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        if (a->channel < 0) {
                a->channel = (int)ev->channel;
                roid_results_detector_from_start(&a->detector, ev->series->format,
                                                 ev->series->implicit ? NULL : &ev->series->start, ev->channel_name);
        }
        if ((int)ev->channel != a->channel)
                return;
        if (!a->active) {
                a->not_analysed += a->refused;
                return;
        }
        roid_frame f = {.dtype = ev->dtype, .rows = ev->rows, .cols = ev->cols, .pixels = ev->pixels};
        if (!a->have_geom) {
                const roid_series *s = ev->series;
                int r = roid_analysis_build_geometry(&a->p, ev->dtype, ev->rows, ev->cols, s->start.has_beam_center,
                                                     s->start.beam_center_x, s->start.beam_center_y, &f, ev->pixel_mask,
                                                     &a->geom, &a->center_source, &err);
                if (r < 0) {
                        ROID_LOG_LIMITED(ROID_LOG_ERR, "image %" PRIu64 ": no detector geometry: %s", ev->image_id,
                                         err.msg);
                        a->dropped++;
                        return;
                }
                a->have_geom = true;
        }
        double px = NAN, py = NAN;
        roid_err pos_err = {{0}};
        const bool bad_pos = roid_scan_position_from_user_data(ev->user_data, a->p.max_depth, &px, &py, &pos_err) < 0;
        if (bad_pos)
                px = py = NAN;
        roid_frame_record rec;
        int r = roid_analysis_record(&a->geom, &a->grid, ev->image_id, px, py, &f, &rec, &err);
        if (r >= 0 && bad_pos) { /* not placed by its image_id: in a fly scan that would be wrong */
                if (a->unplaced++ == 0)
                        ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                         "image %" PRIu64 ": bad position in user data: %s; kept in the results with "
                                         "index %" PRIu32 ", out of the maps (further ones are counted only)",
                                         ev->image_id, pos_err.msg, ROID_NOT_PLACED);
                rec.row = rec.col = ROID_NOT_PLACED;
                keep_record(a, &rec);
                return;
        }
        if (r < 0) {
                if (a->dropped++ == 0)
                        ROID_LOG_LIMITED(ROID_LOG_WARNING, "image %" PRIu64 ": %s (further ones are counted only)",
                                         ev->image_id, err.msg);
                return;
        }
        /* Off the grid: out of the maps, but its features and position go to
         * the results file, as the daemon keeps them. */
        if (r == 0 && a->unplaced++ == 0)
                ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                 "image %" PRIu64 ": %s; kept in the results with index %" PRIu32
                                 ", out of the maps (further ones are counted only)",
                                 ev->image_id, err.msg, ROID_NOT_PLACED);
        keep_record(a, &rec);
}

static void on_frame_error(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg) {
        (void)s;
        (void)image_id;
        (void)channel;
        (void)msg;
        roid_analysis *a = ctx;
        a->dropped++;
}

static int write_results(roid_analysis *a, bool terminated, roid_err *err) {
        roid_results_meta meta = {
                .series_unique_id = a->series_unique_id,
                .series_id = a->series_id,
                .source = a->series_source,
                .detector = &a->detector,
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
                .scan_origin = {a->grid.origin_x, a->grid.origin_y},
                .scan_step = {a->grid.step_x, a->grid.step_y},
                .scan_units = a->grid.units,
        };
        roid_results_features f = {.n = a->n,
                                   .n_seg = a->p.roi.n_segments,
                                   .image_id = a->image_id,
                                   .index = a->index,
                                   .pos = a->pos,
                                   .sum = a->sum,
                                   .com = a->com,
                                   .seg_sum = a->seg_sum,
                                   .seg_com = a->seg_com,
                                   .bf = a->bf,
                                   .df = a->df,
                                   .left_out = a->left_out};
        roid_results *w;
        char path[ROID_PATH_MAX];
        int r = roid_results_open(a->p.output_dir, &meta, &w, path, sizeof path, err);
        if (r < 0)
                return r;
        r = roid_results_write_features(w, &f, err);
        if (r >= 0)
                r = roid_results_write_map(w, a->roi, true, err);
        roid_err cerr = {""};
        int rc = roid_results_close(w, NULL, terminated, &cerr);
        if (r >= 0 && rc < 0)
                r = roid_err_set(err, rc, "closing %s failed: %s", path, cerr.msg);
        if (r >= 0)
                memcpy(a->last_output, path, sizeof path);
        return r;
}

static void on_end(void *ctx, const roid_series *s, bool terminated) {
        roid_analysis *a = ctx;
        roid_err err = {{0}};
        if (!a->active) {
                if (a->refused)
                        roid_log(ROID_LOG_WARNING,
                                 "series %" PRIu64 " %s: %" PRIu64 " frames not analysed (no RoI state)", s->series_id,
                                 terminated ? "ended" : "closed", a->not_analysed);
                a->refused = false;
                return;
        }
        roid_roi_finish(a->roi);
        size_t in = 0, np = (size_t)a->grid.ny * a->grid.nx;
        const uint8_t *m = roid_roi_mask(a->roi);
        for (size_t i = 0; i < np; i++)
                in += m[i];
        roid_log(ROID_LOG_INFO,
                 "series %" PRIu64 " %s: %" PRIu64 " frames, RoI %zu of %zu points, %" PRIu64
                 " frames dropped, %" PRIu64 " off the grid, %" PRIu64 " without counts (left out of the maps)",
                 s->series_id, terminated ? "ended" : "closed", roid_roi_frames(a->roi), in, np, a->dropped,
                 a->unplaced, roid_roi_dark_frames(a->roi));
        roid_analysis_log_left_out(a->roi, s->series_id);
        if (a->p.output_dir[0]) {
                int r = write_results(a, terminated, &err);
                if (r < 0) {
                        roid_log(ROID_LOG_ERR, "series %" PRIu64 ": results not written: %s", s->series_id, err.msg);
                        a->results_failed++;
                }
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

void roid_analysis_set_source(roid_analysis *a, const char *source) {
        a->source = source;
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

uint64_t roid_analysis_frames_unplaced(const roid_analysis *a) {
        return a->unplaced;
}

uint64_t roid_analysis_results_failed(const roid_analysis *a) {
        return a->results_failed;
}

void roid_analysis_log_left_out(const roid_roi *roi, uint64_t series_id) {
        const uint64_t g = roid_roi_glitch_frames(roi);
        const uint32_t n = roid_roi_outlier_points(roi);
        if (g)
                roid_log(ROID_LOG_WARNING,
                         "series %" PRIu64 ": %" PRIu64 " frame%s whose pixels average more than a quarter of full "
                         "scale or are mostly at the maximum: no diffraction pattern (a detector glitch?); left out of "
                         "the RoI maps and of image_ids, as frames without counts are (results: /entry/scan/left_out = "
                         "2)",
                         series_id, g, g == 1 ? "" : "s");
        if (n)
                roid_log(ROID_LOG_WARNING,
                         "series %" PRIu64 ": %" PRIu32 " point%s with a mean total above %.6g counts, three times "
                         "the brightest percent of the scan or more: no measurement of the sample (a detector glitch, "
                         "a jump of the beam?); left out of the RoI maps, labelled as %s neighbours, %s frames left "
                         "out of image_ids (results: /entry/roi/outliers)",
                         series_id, n, n == 1 ? "" : "s", roid_roi_outlier_fence(roi), n == 1 ? "its" : "their",
                         n == 1 ? "its" : "their");
}
