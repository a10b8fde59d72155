/* scan.h - where on the scan grid an image was taken: image_id -> (row, col).
 *
 * A grid is ny rows by nx columns.  Step scans: image k (k = image_id) is the
 * k-th point in acquisition order; with fast_axis x, row = k / nx and col =
 * k % nx, with fast_axis y, col = k / ny and row = k % ny; snake reverses every
 * odd line of the slow axis.  Fly scans: an image whose user data holds
 * {"position": [x, y]} is binned to the nearest grid point, col =
 * round((x - x0) / dx), row = round((y - y0) / dy) (origin [x0, y0], step
 * [dx, dy]; defaults [0, 0] and [1, 1]).
 *
 * Where the grid comes from (roid_scan_resolve): the start message's user data
 * when it is a map with key "scan" (proto/scan-user-data.md), else the
 * configuration, else a 1 x N line of number_of_images (N = 1 if the start
 * message does not give it, at most ROID_SCAN_MAX_LINE), so that a series
 * without scan metadata still gets per-frame features and a one-row map.
 *
 * Ownership: plain data, no pointers.  Threads: any; nothing is shared.
 */
#ifndef ROID_ANALYSIS_SCAN_H
#define ROID_ANALYSIS_SCAN_H

#include <stdbool.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/err.h"

/* 16 Mi points: 16 x the largest ptychography scans in use, and 128 MiB for a
 * double map; bounds every per-series allocation made from the grid. */
#define ROID_SCAN_MAX_POINTS (UINT64_C(1) << 24)
/* The fallback line's longest: a series without scan metadata is a movie or
 * a scan nobody described, where a map of its first 2^20 images (RoI state
 * about 1.8 GB at 8 segments) is all the line can show; the rest lie off it. */
#define ROID_SCAN_MAX_LINE  (UINT64_C(1) << 20)
#define ROID_SCAN_UNITS_MAX 16

typedef enum { ROID_SCAN_FAST_X = 0, ROID_SCAN_FAST_Y } roid_scan_fast;

typedef enum {
        ROID_SCAN_FROM_NONE = 0,
        ROID_SCAN_FROM_SERIES, /* start message user data */
        ROID_SCAN_FROM_CONFIG,
        ROID_SCAN_FROM_LINE, /* fallback: 1 x number_of_images */
} roid_scan_source;

typedef struct {
        uint32_t ny, nx;
        bool snake;
        roid_scan_fast fast_axis;
        double origin_x, origin_y; /* grid point (0, 0), in `units` */
        double step_x, step_y;     /* between columns, between rows; non-zero */
        char units[ROID_SCAN_UNITS_MAX];
        roid_scan_source source;
} roid_scan_grid;

/* A 1 x 1 grid, fast axis x, no snake, origin 0, step 1, no units. */
void roid_scan_grid_default(roid_scan_grid *g);

/* Sets the shape after checking 1 <= ny, nx and ny * nx <= ROID_SCAN_MAX_POINTS
 * (-EINVAL / -EMSGSIZE naming `field`).  g untouched on failure. */
int roid_scan_grid_set_shape(roid_scan_grid *g, uint64_t ny, uint64_t nx, const char *field, roid_err *err);

/* Reads the "scan" member of a user data map (CBOR or JSON).  Returns 1 and
 * fills *ret when present, 0 when the user data is absent, not a map, or has
 * no "scan" key (*ret untouched), or a negative errno with err naming the
 * key: -EBADMSG for a wrong type or malformed encoding, -EINVAL for a bad
 * value, -EMSGSIZE for a grid above ROID_SCAN_MAX_POINTS.  Never allocates:
 * O(size) time, whatever else the user data holds.  JSON goes through the
 * bounded scanner described below for "position" (what precedes the first
 * top-level "scan" must be well-formed JSON, else 0; its members are checked
 * too, what follows it is not read).  Nesting beyond max_depth (0: 256)
 * before or inside "scan" is -EBADMSG. */
int roid_scan_from_user_data(const roid_user_data *ud, unsigned max_depth, roid_scan_grid *ret, roid_err *err);

/* Reads {"position": [x, y]} from an image's user data: 1 and *ret_x, *ret_y,
 * 0 when absent, negative errno on a malformed value (err names the key).
 * Called per frame, so it never allocates: CBOR through the cursor, JSON (V1
 * image appendix) through a bounded scanner that checks the syntax of the
 * members before the first top-level "position" and reads that one in place;
 * text that is not a JSON object gives 0.  Nesting beyond max_depth
 * containers (0: 256) is -EBADMSG in both.  -ENODATA: the message's user
 * data was left out (ROID_UD_LEFT_OUT), so its position is unknown. */
int roid_scan_position_from_user_data(const roid_user_data *ud, unsigned max_depth, double *ret_x, double *ret_y,
                                      roid_err *err);

/* The series' grid: its user data, else *config (may be NULL), else the 1 x N
 * line (N = number_of_images, at most ROID_SCAN_MAX_LINE: the images past
 * it lie off the grid).  Returns 0, or a negative errno when the series' scan description is
 * malformed (then the caller decides; the analysis falls back to the config or
 * the line and logs err). */
int roid_scan_resolve(const roid_user_data *series_ud, const roid_scan_grid *config, bool has_number_of_images,
                      uint64_t number_of_images, unsigned max_depth, roid_scan_grid *ret, roid_err *err);

/* Step-scan position of image k.  -ERANGE when k >= ny * nx. */
int roid_scan_index(const roid_scan_grid *g, uint64_t k, uint32_t *ret_row, uint32_t *ret_col);

/* Nearest grid point of a fly-scan position.  -ERANGE (err says which) when it
 * lies half a step or more outside the grid or is not finite. */
int roid_scan_bin(const roid_scan_grid *g, double x, double y, uint32_t *ret_row, uint32_t *ret_col, roid_err *err);

/* Where image k goes: its "position" if its user data has one, else its
 * step-scan index. */
int roid_scan_locate(const roid_scan_grid *g, uint64_t k, const roid_user_data *image_ud, unsigned max_depth,
                     uint32_t *ret_row, uint32_t *ret_col, roid_err *err);

const char *roid_scan_source_name(roid_scan_source s);

#endif
