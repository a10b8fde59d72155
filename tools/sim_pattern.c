/* sim_pattern.c - the default frame source: a Gaussian spot circling on a
 * Poisson-like background.  Cheap (a hash per pixel, a separable Gaussian in a
 * window) and deterministic in (frame_index, channel), so a receiver can check
 * sums against the simulator's manifest.
 *
 * Channels: threshold K has background bits of its own and the spot at 1/K of
 * the threshold_1 amplitude; "difference" (channel 3 of at most 3) is
 * threshold_1 - threshold_2 clipped at 0, as release-2023.1 firmware does.
 */
#include "sim_source.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ORBIT_FRAMES 64 /* the spot returns to its start every 64 frames */

typedef struct {
        uint32_t rows, cols;
        roid_dtype dtype;
        unsigned nchannels;
        uint32_t *lev, *lev2; /* rows*cols levels before clamping */
        float *gx;            /* the spot's profile along x */
} pattern;

static uint32_t mix32(uint32_t h) {
        h ^= h >> 16;
        h *= 0x7feb352dU;
        h ^= h >> 15;
        h *= 0x846ca68bU;
        h ^= h >> 16;
        return h;
}

static int pattern_init(sim_source_params *params, void **ret_state, uint64_t *ret_period, roid_err *err) {
        size_t n = (size_t)params->rows * params->cols;
        pattern *p = calloc(1, sizeof *p);

        if (!p)
                return roid_err_set(err, -ENOMEM, "source pattern: out of memory");
        p->rows = params->rows;
        p->cols = params->cols;
        p->dtype = params->dtype;
        p->nchannels = params->nchannels;
        p->lev = malloc(n * sizeof *p->lev);
        p->lev2 = malloc(n * sizeof *p->lev2);
        p->gx = malloc(params->cols * sizeof *p->gx);
        if (!p->lev || !p->lev2 || !p->gx) {
                free(p->lev);
                free(p->lev2);
                free(p->gx);
                free(p);
                return roid_err_set(err, -ENOMEM, "source pattern: out of memory for %zu pixels", n);
        }
        *ret_state = p;
        *ret_period = 0;
        return 0;
}

static double amplitude(roid_dtype dt) {
        switch (dt) {
        case ROID_DT_U8:
                return 100.0;
        case ROID_DT_U16:
                return 2000.0;
        default:
                return 50000.0;
        }
}

/* Background plus spot of threshold k (0-based) into out. */
static void render_level(pattern *p, uint64_t frame, unsigned k, uint32_t *out) {
        double a = 2.0 * M_PI * (double)(frame % ORBIT_FRAMES) / ORBIT_FRAMES;
        double cy = p->rows / 2.0 + p->rows / 4.0 * sin(a);
        double cx = p->cols / 2.0 + p->cols / 4.0 * cos(a);
        double sigma = fmax(1.5, fmin(p->rows, p->cols) / 16.0);
        double amp = amplitude(p->dtype) * (0.75 + 0.25 * cos(3.0 * a)) / (k + 1);
        uint32_t seed = mix32((uint32_t)frame * 0x9e3779b9U ^ (uint32_t)(frame >> 32) ^ (k + 1) * 0x85ebca6bU);
        size_t n = (size_t)p->rows * p->cols;

        for (size_t i = 0; i < n; i++)
                out[i] = (uint32_t)__builtin_popcount(mix32((uint32_t)i ^ seed) & 0xf);

        long r = (long)ceil(4.0 * sigma);
        long y0 = (long)cy - r, y1 = (long)cy + r, x0 = (long)cx - r, x1 = (long)cx + r;
        if (y0 < 0)
                y0 = 0;
        if (x0 < 0)
                x0 = 0;
        if (y1 >= (long)p->rows)
                y1 = (long)p->rows - 1;
        if (x1 >= (long)p->cols)
                x1 = (long)p->cols - 1;
        for (long x = x0; x <= x1; x++)
                p->gx[x] = (float)exp(-(x - cx) * (x - cx) / (2.0 * sigma * sigma));
        for (long y = y0; y <= y1; y++) {
                float gy = (float)(amp * exp(-(y - cy) * (y - cy) / (2.0 * sigma * sigma)));
                uint32_t *row = out + (size_t)y * p->cols;
                for (long x = x0; x <= x1; x++)
                        row[x] += (uint32_t)(gy * p->gx[x]);
        }
}

static int pattern_fill(void *state, uint64_t frame_index, unsigned channel, void *pixels, roid_err *err) {
        pattern *p = state;
        size_t n = (size_t)p->rows * p->cols;
        uint32_t sat = sim_dtype_max(p->dtype) - 1;

        if (channel >= p->nchannels)
                return roid_err_set(err, -EINVAL, "source pattern: channel %u of %u", channel, p->nchannels);
        if (p->nchannels <= 3 && channel == 2) {
                render_level(p, frame_index, 0, p->lev);
                render_level(p, frame_index, 1, p->lev2);
                for (size_t i = 0; i < n; i++)
                        p->lev[i] = p->lev[i] > p->lev2[i] ? p->lev[i] - p->lev2[i] : 0;
        } else {
                render_level(p, frame_index, channel, p->lev);
        }
        for (size_t i = 0; i < n; i++) {
                uint32_t v = p->lev[i] < sat ? p->lev[i] : sat;
                sim_set_pixel(pixels, p->dtype, i, v);
        }
        return 0;
}

static void pattern_free(void *state) {
        pattern *p = state;

        if (!p)
                return;
        free(p->lev);
        free(p->lev2);
        free(p->gx);
        free(p);
}

const sim_source_ops sim_source_pattern = {
        .name = "pattern",
        .init = pattern_init,
        .fill = pattern_fill,
        .free = pattern_free,
};
