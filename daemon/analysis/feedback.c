#include "analysis/feedback.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "service/limits.h"

/* Bits of the per-point work flags. */
enum {
        F_SRC = 1,    /* source RoI */
        F_GROWN = 2,  /* grown mask */
        F_MEAS = 4,   /* has a frame */
        F_MROI = 8,   /* measured and in the source or grown mask */
        F_NEAR = 16,  /* within the guard of the RoI */
        F_HASM = 32,  /* a measured point within 2 steps */
        F_NEARM = 64, /* a measured RoI point within 2 steps */
};

#define EXPLORE 2 /* steps: how far a skip may reach past the measured points */

/* A bounded heap entry: the root is the worst kept candidate. */
typedef struct {
        double key;
        uint32_t idx;  /* tie-break: smaller first */
        uint32_t slot; /* boxes: where the box is stored */
} hent;

struct roid_feedback {
        roid_feedback_params p;
        roid_scan_grid g;
        size_t np;
        uint32_t *bx, *by; /* grid column c covers fine columns [bx[c], bx[c + 1]) */
        uint8_t *mask, *prev, *flags, *tmp, *tmp2;
        uint32_t *queue, *skip;
        hent *heap;
        roid_fb_box *store, *boxes;
        roid_fb_point *next;
        double *rescan;
        size_t rescan_cap;
        roid_feedback_view v;
};

void roid_feedback_params_default(roid_feedback_params *p) {
        memset(p, 0, sizeof *p);
        p->border = 0;
        p->rescan_factor = 2;
        p->next_points = 32;
        p->stable_refits = 3;
        p->max_boxes = 64;
        p->max_rescan = (size_t)1 << 20;
}

static int check_params(const roid_feedback_params *p, roid_err *err) {
        if (p->border < -ROID_ROI_MAX_BORDER || p->border > ROID_ROI_MAX_BORDER)
                return roid_err_set(err, -EINVAL, "border: %d, must be -%d..%d", p->border, ROID_ROI_MAX_BORDER,
                                    ROID_ROI_MAX_BORDER);
        if (!(p->rescan_factor >= 1 && p->rescan_factor <= ROID_FB_MAX_FACTOR))
                return roid_err_set(err, -EINVAL, "rescan_factor: %g, must be 1..%d", p->rescan_factor,
                                    ROID_FB_MAX_FACTOR);
        if (p->next_points > ROID_FB_MAX_NEXT)
                return roid_err_set(err, -EINVAL, "next_points: %u, must be 0..%d", p->next_points, ROID_FB_MAX_NEXT);
        if (p->stable_refits < 1 || p->stable_refits > ROID_FB_MAX_REFITS)
                return roid_err_set(err, -EINVAL, "stable_refits: %u, must be 1..%d", p->stable_refits,
                                    ROID_FB_MAX_REFITS);
        if (p->max_boxes < 1 || p->max_boxes > ROID_FB_MAX_BOXES)
                return roid_err_set(err, -EINVAL, "max_boxes: %u, must be 1..%d", p->max_boxes, ROID_FB_MAX_BOXES);
        if (p->max_rescan > ROID_FB_MAX_RESCAN)
                return roid_err_set(err, -EINVAL, "max_rescan: %zu, must be 0..%zu", p->max_rescan, ROID_FB_MAX_RESCAN);
        return 0;
}

static int check_grid(const roid_scan_grid *g, roid_err *err) {
        if (g->ny < 1 || g->nx < 1 || (uint64_t)g->ny * g->nx > ROID_SCAN_MAX_POINTS)
                return roid_err_set(err, -EINVAL, "scan grid %u x %u: must be 1..%llu points", g->ny, g->nx,
                                    (unsigned long long)ROID_SCAN_MAX_POINTS);
        if (!isfinite(g->origin_x) || !isfinite(g->origin_y))
                return roid_err_set(err, -EINVAL, "scan origin (%g, %g): must be finite", g->origin_x, g->origin_y);
        if (!isfinite(g->step_x) || !isfinite(g->step_y) || g->step_x == 0 || g->step_y == 0)
                return roid_err_set(err, -EINVAL, "scan step (%g, %g): must be finite and non-zero", g->step_x,
                                    g->step_y);
        if (!memchr(g->units, 0, sizeof g->units))
                return roid_err_set(err, -EINVAL, "scan units: not terminated within %d bytes", ROID_SCAN_UNITS_MAX);
        return 0;
}

/* First fine index of grid cell c (c = n: one past the last). */
static uint32_t fine_start(uint32_t c, double f) {
        double b = ceil((double)c * f - 0.5);
        return b > 0 ? (uint32_t)b : 0;
}

/* The element count of each array, from the grid and the parameters. */
typedef struct {
        uint64_t np, nx1, ny1, nheap, boxes, next, rescan_cap, rescan;
} fb_dims;

static fb_dims dims_of(const roid_feedback_params *p, const roid_scan_grid *grid) {
        const double f = p->rescan_factor;
        /* The rescan list can never exceed the fine lattice of the whole grid. */
        const uint64_t lattice = (uint64_t)fine_start(grid->nx, f) * fine_start(grid->ny, f);
        const uint64_t cap = lattice < p->max_rescan ? lattice : p->max_rescan;
        return (fb_dims){.np = (uint64_t)grid->ny * grid->nx,
                         .nx1 = (uint64_t)grid->nx + 1,
                         .ny1 = (uint64_t)grid->ny + 1,
                         .nheap = p->max_boxes > p->next_points ? p->max_boxes : p->next_points,
                         .boxes = p->max_boxes,
                         .next = p->next_points ? p->next_points : 1,
                         .rescan_cap = cap,
                         .rescan = 2 * (cap ? cap : 1)};
}

/* Every array with its element count, so that new and free cannot miss one
 * and roid_feedback_state_bytes is what new allocates. */
#define FB_ARRAYS(X, d)                                                                                                \
        X(bx, (d).nx1)                                                                                                 \
        X(by, (d).ny1)                                                                                                 \
        X(mask, (d).np)                                                                                                \
        X(prev, (d).np)                                                                                                \
        X(flags, (d).np)                                                                                               \
        X(tmp, (d).np)                                                                                                 \
        X(tmp2, (d).np)                                                                                                \
        X(queue, (d).np)                                                                                               \
        X(skip, (d).np)                                                                                                \
        X(heap, (d).nheap)                                                                                             \
        X(store, (d).boxes)                                                                                            \
        X(boxes, (d).boxes)                                                                                            \
        X(next, (d).next)                                                                                              \
        X(rescan, (d).rescan)

uint64_t roid_feedback_state_bytes(const roid_feedback_params *p, const roid_scan_grid *grid) {
        const fb_dims d = dims_of(p, grid);
        uint64_t bytes = sizeof(roid_feedback);
#define SIZE_OF(name, n) bytes += (n) * sizeof *((roid_feedback *)0)->name;
        FB_ARRAYS(SIZE_OF, d)
#undef SIZE_OF
        return bytes;
}

void roid_feedback_view_max(const roid_feedback_params *p, const roid_scan_grid *grid, uint64_t *ret_points,
                            uint64_t *ret_rescan, uint64_t *ret_next, uint64_t *ret_boxes) {
        const fb_dims d = dims_of(p, grid);
        *ret_points = d.np;
        *ret_rescan = d.rescan_cap;
        *ret_next = p->next_points;
        *ret_boxes = d.boxes;
}

void roid_feedback_free(roid_feedback *fb) {
        if (!fb)
                return;
#define FREE_OF(name, n) free(fb->name);
        FB_ARRAYS(FREE_OF, )
#undef FREE_OF
        free(fb);
}

int roid_feedback_new(const roid_feedback_params *p, const roid_scan_grid *grid, roid_feedback **ret, roid_err *err) {
        int r = check_params(p, err);
        if (r < 0)
                return r;
        r = check_grid(grid, err);
        if (r < 0)
                return r;
        roid_feedback *fb = calloc(1, sizeof *fb);
        if (!fb)
                return -ENOMEM;
        fb->p = *p;
        fb->g = *grid;
        fb->np = (size_t)grid->ny * grid->nx;
        const double f = p->rescan_factor;
        const fb_dims d = dims_of(p, grid);
        fb->rescan_cap = (size_t)d.rescan_cap;
        /* zeroed: the masks start empty; committed: see limits.h */
#define ALLOC_OF(name, n)                                                                                              \
        if (!(fb->name = roid_calloc_committed((size_t)(n), sizeof *fb->name))) {                                      \
                roid_feedback_free(fb);                                                                                \
                return -ENOMEM;                                                                                        \
        }
        FB_ARRAYS(ALLOC_OF, d)
#undef ALLOC_OF
        for (uint32_t c = 0; c <= grid->nx; c++)
                fb->bx[c] = fine_start(c, f);
        for (uint32_t c = 0; c <= grid->ny; c++)
                fb->by[c] = fine_start(c, f);

        roid_feedback_view *v = &fb->v;
        v->ny = grid->ny;
        v->nx = grid->nx;
        v->motor =
                fb->g.units[0] || grid->origin_x != 0 || grid->origin_y != 0 || grid->step_x != 1 || grid->step_y != 1;
        v->units = fb->g.units;
        v->step_x = grid->step_x;
        v->step_y = grid->step_y;
        v->rescan_step_x = grid->step_x / f;
        v->rescan_step_y = grid->step_y / f;
        v->boxes = fb->boxes;
        v->rescan = fb->rescan;
        v->skip = fb->skip;
        v->next = fb->next;
        v->mask = fb->mask;
        *ret = fb;
        return 0;
}

/* ------------------------------------------------------------ bounded heap */

static bool worse(const hent *a, const hent *b) {
        return a->key < b->key || (a->key == b->key && a->idx > b->idx);
}

static void sift_down(hent *h, size_t n, size_t i) {
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, w = i;
                if (l < n && worse(&h[l], &h[w]))
                        w = l;
                if (r < n && worse(&h[r], &h[w]))
                        w = r;
                if (w == i)
                        return;
                hent t = h[i];
                h[i] = h[w];
                h[w] = t;
                i = w;
        }
}

/* Offers a candidate to a heap of at most cap entries.  Returns the slot the
 * candidate took (its own new slot, or the evicted root's), or -1 if refused. */
static long heap_offer(hent *h, size_t *n, size_t cap, double key, uint32_t idx) {
        hent c = {key, idx, 0};
        if (*n < cap) {
                size_t i = (*n)++;
                c.slot = (uint32_t)i;
                while (i > 0 && worse(&c, &h[(i - 1) / 2])) {
                        h[i] = h[(i - 1) / 2];
                        i = (i - 1) / 2;
                }
                h[i] = c;
                return c.slot;
        }
        if (cap == 0 || !worse(&h[0], &c))
                return -1;
        c.slot = h[0].slot;
        h[0] = c;
        sift_down(h, *n, 0);
        return c.slot;
}

/* In place, best first (heapsort; qsort may allocate). */
static void heap_sort(hent *h, size_t n) {
        for (size_t end = n; end > 1; end--) {
                hent t = h[0];
                h[0] = h[end - 1];
                h[end - 1] = t;
                sift_down(h, end - 1, 0);
        }
}

/* ------------------------------------------------------------ geometry */

static double coord_x(const roid_feedback *fb, double col) {
        return fb->g.origin_x + col * fb->g.step_x;
}

static double coord_y(const roid_feedback *fb, double row) {
        return fb->g.origin_y + row * fb->g.step_y;
}

/* out = the 3x3 dilation of in (every bit at once: a byte is 8 images);
 * tmp: np bytes.  Branch-free byte loops: a few cycles per point. */
static void dilate1(const roid_feedback *fb, const uint8_t *in, uint8_t *out, uint8_t *tmp) {
        uint32_t ny = fb->g.ny, nx = fb->g.nx;
        for (uint32_t y = 0; y < ny; y++) {
                const uint8_t *a = in + (size_t)y * nx;
                uint8_t *h = tmp + (size_t)y * nx;
                if (nx == 1) {
                        h[0] = a[0];
                        continue;
                }
                h[0] = a[0] | a[1];
                for (uint32_t x = 1; x + 1 < nx; x++)
                        h[x] = a[x - 1] | a[x] | a[x + 1];
                h[nx - 1] = a[nx - 2] | a[nx - 1];
        }
        for (uint32_t y = 0; y < ny; y++) {
                const uint8_t *u = tmp + (size_t)(y ? y - 1 : y) * nx, *c = tmp + (size_t)y * nx;
                const uint8_t *d = tmp + (size_t)(y + 1 < ny ? y + 1 : y) * nx;
                uint8_t *o = out + (size_t)y * nx;
                for (uint32_t x = 0; x < nx; x++)
                        o[x] = u[x] | c[x] | d[x];
        }
}

/* Number of in-grid 8-neighbours of i with (flags & bits). */
static unsigned count_nb(const roid_feedback *fb, size_t i, uint8_t bits) {
        uint32_t ny = fb->g.ny, nx = fb->g.nx, y = (uint32_t)(i / nx), x = (uint32_t)(i % nx);
        unsigned n = 0;
        for (int dy = -1; dy <= 1; dy++) {
                for (int dx = -1; dx <= 1; dx++) {
                        int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                        if ((dy == 0 && dx == 0) || yy < 0 || xx < 0 || yy >= ny || xx >= nx)
                                continue;
                        n += (fb->flags[(size_t)yy * nx + (size_t)xx] & bits) != 0;
                }
        }
        return n;
}

/* ------------------------------------------------------------ the parts */

static void compute_boxes(roid_feedback *fb) {
        uint32_t ny = fb->g.ny, nx = fb->g.nx;
        uint8_t *seen = fb->tmp;
        size_t nh = 0;
        memset(seen, 0, fb->np);
        for (size_t s = 0; s < fb->np; s++) {
                if (!fb->mask[s] || seen[s])
                        continue;
                roid_fb_box b = {.row0 = (uint32_t)(s / nx), .col0 = (uint32_t)(s % nx)};
                b.row1 = b.row0;
                b.col1 = b.col0;
                size_t head = 0, tail = 0;
                seen[s] = 1;
                fb->queue[tail++] = (uint32_t)s;
                while (head < tail) {
                        uint32_t i = fb->queue[head++], y = i / nx, x = i % nx;
                        b.row0 = y < b.row0 ? y : b.row0;
                        b.row1 = y > b.row1 ? y : b.row1;
                        b.col0 = x < b.col0 ? x : b.col0;
                        b.col1 = x > b.col1 ? x : b.col1;
                        for (int dy = -1; dy <= 1; dy++) {
                                for (int dx = -1; dx <= 1; dx++) {
                                        int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                                        if (yy < 0 || xx < 0 || yy >= ny || xx >= nx)
                                                continue;
                                        size_t j = (size_t)yy * nx + (size_t)xx;
                                        if (!fb->mask[j] || seen[j])
                                                continue;
                                        seen[j] = 1;
                                        fb->queue[tail++] = (uint32_t)j;
                                }
                        }
                }
                b.points = (uint32_t)tail;
                long slot = heap_offer(fb->heap, &nh, fb->p.max_boxes, (double)b.points, (uint32_t)s);
                if (slot >= 0)
                        fb->store[slot] = b;
        }
        heap_sort(fb->heap, nh);
        for (size_t k = 0; k < nh; k++) {
                roid_fb_box b = fb->store[fb->heap[k].slot];
                b.x0 = coord_x(fb, b.col0);
                b.y0 = coord_y(fb, b.row0);
                b.x1 = coord_x(fb, b.col1);
                b.y1 = coord_y(fb, b.row1);
                fb->boxes[k] = b;
        }
        fb->v.n_boxes = nh;
}

static void compute_rescan(roid_feedback *fb) {
        uint32_t ny = fb->g.ny, nx = fb->g.nx;
        double f = fb->p.rescan_factor;
        size_t n = 0, cap = fb->rescan_cap;
        bool truncated = false;
        for (uint32_t y = 0; y < ny && !truncated; y++) {
                const uint8_t *row = fb->mask + (size_t)y * nx;
                if (!memchr(row, 1, nx))
                        continue;
                for (uint32_t ky = fb->by[y]; ky < fb->by[y + 1] && !truncated; ky++) {
                        double yv = coord_y(fb, (ky + 0.5) / f - 0.5);
                        for (uint32_t x = 0; x < nx && !truncated; x++) {
                                if (!row[x])
                                        continue;
                                for (uint32_t kx = fb->bx[x]; kx < fb->bx[x + 1]; kx++) {
                                        if (n == cap) {
                                                truncated = true;
                                                break;
                                        }
                                        fb->rescan[2 * n] = coord_x(fb, (kx + 0.5) / f - 0.5);
                                        fb->rescan[2 * n + 1] = yv;
                                        n++;
                                }
                        }
                }
        }
        fb->v.n_rescan = n;
        fb->v.rescan_truncated = truncated;
}

/* The guards of the skip rule, all as 3x3 dilation steps of one byte image
 * whose bits are the inputs: each bit is dilated for as many steps as its
 * radius (the grown mask 1, the measured points EXPLORE, the source RoI G),
 * then read out and dropped.  O(points x max radius). */
static void compute_skip(roid_feedback *fb, bool any_measured) {
        size_t n = 0, np = fb->np;
        if (any_measured) {
                const int guard = (fb->p.border > 1 ? fb->p.border : 1) + 1;
                const int steps = guard > EXPLORE ? guard : EXPLORE;
                uint8_t *d = fb->tmp2;
                for (size_t i = 0; i < np; i++)
                        d[i] = fb->flags[i] & (F_SRC | F_GROWN | F_MEAS | F_MROI);
                for (int step = 1; step <= steps; step++) {
                        dilate1(fb, d, d, fb->tmp);
                        uint8_t done = (step == 1 ? F_GROWN : 0) | (step == EXPLORE ? F_MEAS | F_MROI : 0) |
                                       (step == guard ? F_SRC : 0);
                        if (!done)
                                continue;
                        for (size_t i = 0; i < np; i++) {
                                uint8_t v = d[i] & done;
                                fb->flags[i] |= (v & (F_SRC | F_GROWN) ? F_NEAR : 0) | (v & F_MEAS ? F_HASM : 0) |
                                                (v & F_MROI ? F_NEARM : 0);
                                d[i] &= (uint8_t)~done;
                        }
                }
                for (size_t i = 0; i < np; i++) {
                        uint8_t fl = fb->flags[i];
                        if (!(fl & (F_MEAS | F_NEAR | F_NEARM)) && (fl & F_HASM))
                                fb->skip[n++] = (uint32_t)i;
                }
        }
        fb->v.n_skip = n;
}

static void compute_next(roid_feedback *fb, const double *com) {
        size_t nh = 0, cap = fb->p.next_points;
        if (cap == 0) {
                fb->v.n_next = 0;
                return;
        }
        for (size_t i = 0; i < fb->np; i++) {
                uint8_t fl = fb->flags[i];
                double score = -1;
                if (!(fl & (F_MEAS | F_NEAR)))
                        continue; /* unmeasured and not next to the RoI: no candidate (F_NEAR from compute_skip) */
                if (!(fl & F_MEAS)) {
                        unsigned k = count_nb(fb, i, F_SRC);
                        if (k > 0)
                                score = 2 + k / 8.0;
                } else {
                        double z = isfinite(com[i]) && com[i] > 0 ? com[i] : 0;
                        if (fl & F_SRC) {
                                /* A point at the grid edge is not boundary for the edge's sake. */
                                uint32_t y = (uint32_t)(i / fb->g.nx), x = (uint32_t)(i % fb->g.nx);
                                unsigned in_grid = (y > 0) + (y + 1 < fb->g.ny) + 1;
                                in_grid *= (x > 0) + (x + 1 < fb->g.nx) + 1;
                                if (count_nb(fb, i, F_SRC) < in_grid - 1)
                                        score = 1 + z / (1 + z);
                        } else if (z >= ROID_FB_STRONG_COM) {
                                score = z / (1 + z);
                        }
                }
                if (score >= 0)
                        heap_offer(fb->heap, &nh, cap, score, (uint32_t)i);
        }
        heap_sort(fb->heap, nh);
        for (size_t k = 0; k < nh; k++) {
                uint32_t i = fb->heap[k].idx;
                roid_fb_point *pt = &fb->next[k];
                pt->row = i / fb->g.nx;
                pt->col = i % fb->g.nx;
                pt->x = coord_x(fb, pt->col);
                pt->y = coord_y(fb, pt->row);
                pt->score = fb->heap[k].key;
        }
        fb->v.n_next = nh;
}

/* ------------------------------------------------------------ public */

int roid_feedback_update(roid_feedback *fb, const roid_roi *roi, bool final) {
        if (!fb || !roi || roid_roi_ny(roi) != fb->g.ny || roid_roi_nx(roi) != fb->g.nx)
                return -EINVAL;
        const uint8_t *src = final ? roid_roi_raw_mask(roi) : roid_roi_online_mask(roi);
        const uint8_t *grown = final ? roid_roi_mask(roi) : NULL;
        if (!src || (final && !grown))
                return -EINVAL;
        const uint32_t *cnt = roid_roi_counts(roi);
        size_t np = fb->np;

        /* The previous mask stays in prev for the comparison. */
        uint8_t *t = fb->prev;
        fb->prev = fb->mask;
        fb->mask = t;
        if (final) {
                for (size_t i = 0; i < np; i++)
                        fb->mask[i] = grown[i] != 0;
        } else {
                for (size_t i = 0; i < np; i++)
                        fb->mask[i] = src[i] != 0;
                roid_roi_morph(fb->mask, fb->g.ny, fb->g.nx, fb->p.border, false, fb->tmp, fb->queue);
        }

        bool any_measured = false;
        for (size_t i = 0; i < np; i++) {
                uint8_t fl = 0;
                if (src[i])
                        fl |= F_SRC;
                if (fb->mask[i])
                        fl |= F_GROWN;
                if (cnt[i]) {
                        fl |= F_MEAS;
                        any_measured = true;
                        if (fl & (F_SRC | F_GROWN))
                                fl |= F_MROI;
                }
                fb->flags[i] = fl;
        }

        /* Until some modality labels (a cut stands out from noise) the mask is
         * empty because nothing is known, not because the points around are
         * background: nothing is skipped (the next lines of a raster were
         * offered whatever they held: object points next to measured object
         * points at frame 88, found by a closed-loop test), and the mask is
         * not stable (a controller stopping on it ended a raster after 39 of
         * 576 points, found by review). */
        bool classified = false;
        for (unsigned m = 0; m < roid_roi_n_modalities(roi) && !classified; m++)
                classified = !isnan(roid_roi_centres(roi, m)[0]);

        roid_feedback_view *v = &fb->v;
        if (classified && v->updates > 0 && memcmp(fb->mask, fb->prev, np) == 0)
                v->unchanged++;
        else
                v->unchanged = 0;
        v->updates++;
        v->stable = v->unchanged >= fb->p.stable_refits;
        v->final = final;
        v->frames = roid_roi_frames(roi);
        v->mask = fb->mask;

        compute_boxes(fb);
        compute_rescan(fb);
        compute_skip(fb, any_measured && classified);
        compute_next(fb, roid_roi_raw_map(roi, 1));
        return 0;
}

void roid_feedback_get(const roid_feedback *fb, roid_feedback_view *ret) {
        *ret = fb->v;
}

size_t roid_feedback_suggest(const roid_feedback *fb, size_t n, roid_fb_point *out) {
        size_t k = n < fb->v.n_next ? n : fb->v.n_next;
        if (k)
                memcpy(out, fb->next, k * sizeof *out);
        return k;
}
