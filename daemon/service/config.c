#include "service/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "service/log.h"
#include "service/text.h"

#define FILE_MAX ((long)1 << 20) /* a configuration file is a few KiB; stops /dev/zero and the like */

typedef enum {
        K_STR,      /* text: UTF-8 without control characters (it is published as msgpack str) */
        K_ENDPOINT, /* "" or transport://address */
        K_CHANNEL,  /* a name, or #N */
        K_INT,      /* whole number in [lo, hi]; stored as 4 or 8 bytes, signed when lo < 0 */
        K_SIZE,     /* as K_INT, with a K/M/G/T suffix */
        K_SEED,     /* any uint64 */
        K_DBL,      /* finite number in [lo, hi] */
        K_OPTDBL,   /* as K_DBL, or "" / nan = not set (NaN) */
        K_BOOL,
        K_AXIS,  /* x | y */
        K_QUEUE, /* wait | drop */
        K_LEVEL, /* syslog level name */
        K_SHAPE, /* NYxNX or "" */
        K_PAIR,  /* two finite numbers "a,b", in two adjacent doubles */
} kind;

enum {
        F_REQUIRED = 1 << 0, /* string must not be empty */
        F_BF = 1 << 1,       /* also sets use_bf */
        F_DF = 1 << 2,       /* also sets use_df */
        F_DEPTH = 1 << 3,    /* also sets analysis.max_depth */
        F_NONZERO = 1 << 4,  /* pair: neither may be 0 */
        F_STATE = 1 << 5,    /* also sets analysis.roi.max_state_bytes */
};

typedef struct {
        kind kind;
        size_t off, size;
        double lo, hi;
        unsigned flags;
} spec;

#define GiB (1024.0 * 1024 * 1024)

/* The single list of keys: section, key, option, metavar, default text, kind,
 * field, range, flags, help. */
#define KEYS(X)                                                                                                        \
        X("detector", "endpoint", "detector", "ENDPOINT", "tcp://127.0.0.1:31001", K_ENDPOINT, detector, 0, 0,         \
          F_REQUIRED, "ZeroMQ endpoint of the detector's stream (its PUSH socket) to connect to")                      \
        X("detector", "channel", "channel", "NAME", "#0", K_CHANNEL, channel, 0, 0, 0,                                 \
          "channel to analyse: its name, or #N for the N-th channel of the series")                                    \
        X("detector", "receive_hwm", NULL, "N", "1000", K_INT, rcvhwm, 1, 1000000, 0,                                  \
          "messages ZeroMQ queues from the detector before it pushes back, 1..1000000")                                \
        X("detector", "series_timeout", "series-timeout", "S", "0", K_DBL, series_timeout, 0, 604800, 0,               \
          "close an open series after this many seconds without a message; 0: never; 0..604800")                       \
        X("output", "directory", "output-dir", "DIR", "", K_STR, analysis.output_dir, 0, 0, 0,                         \
          "directory of the HDF5 results file of each series; empty: no results files")                                \
        X("output", "publish", "publish", "ENDPOINT", "", K_ENDPOINT, publish, 0, 0, 0,                                \
          "ZeroMQ PUB endpoint to bind for live maps, status and scan_here; empty: off")                               \
        X("output", "control", "control", "ENDPOINT", "", K_ENDPOINT, control, 0, 0, 0,                                \
          "ZeroMQ endpoint to bind for control requests (ROUTER: REQ or DEALER clients); empty: off")                  \
        X("output", "publish_hwm", NULL, "N", "100", K_INT, sndhwm, 1, 100000, 0,                                      \
          "messages queued per subscriber before ZeroMQ drops, 1..100000")                                             \
        X("output", "map_interval", "map-interval", "S", "1", K_DBL, map_interval, 0.002, 3600, 0,                     \
          "seconds between published maps and scan_here updates (longer for a scan whose map costs more than a "       \
          "quarter of the analysis time), 0.002..3600")                                                                \
        X("output", "status_interval", "status-interval", "S", "1", K_DBL, status_interval, 0.05, 3600, 0,             \
          "seconds between published status messages, 0.05..3600")                                                     \
        X("output", "frame_every", "frame-every", "N", "0", K_INT, frame_every, 0, 1000000000, 0,                      \
          "publish every N-th frame on the frame topic; 0: never; 0..1000000000")                                      \
        X("output", "flush_interval", NULL, "S", "1", K_DBL, flush_interval, 0.05, 3600, 0,                            \
          "seconds between SWMR flushes of the results file, 0.05..3600")                                              \
        X("analysis", "segments", "segments", "N", "8", K_INT, analysis.roi.n_segments, 1, ROID_MAX_SEGMENTS, 0,       \
          "azimuthal detector segments per frame, 1..40")                                                              \
        X("analysis", "k", "k", "N", "4", K_INT, analysis.roi.k, 2, ROID_ROI_MAX_K, 0,                                 \
          "clusters of the general clustering map, 2..16")                                                             \
        X("analysis", "cadence", "cadence", "N", "64", K_INT, analysis.roi.cadence, 0, 1000000000, 0,                  \
          "frames between online refits of the map; 0: only at the end of the series; 0..1000000000")                  \
        X("analysis", "border", "border", "N", "0", K_INT, analysis.roi.border, -ROID_ROI_MAX_BORDER,                  \
          ROID_ROI_MAX_BORDER, 0, "grow (> 0) or shrink (< 0) the final RoI by N scan steps, -64..64")                 \
        X("analysis", "fill_holes", "fill-holes", NULL, "false", K_BOOL, analysis.roi.fill_holes, 0, 0, 0,             \
          "fill holes enclosed by the final RoI (boolean)")                                                            \
        X("analysis", "seed", NULL, "N", "1", K_SEED, analysis.roi.seed, 0, 0, 0,                                      \
          "seed of the k-means++ seeding, 0..18446744073709551615")                                                    \
        X("analysis", "bf_radius", "bf", "R", "0", K_DBL, analysis.r_bf, 0, 65536, F_BF,                               \
          "bright-field disk radius in pixels, adds BF to the clustering; 0: none; 0..65536")                          \
        X("analysis", "df_inner", "df-inner", "R", "0", K_DBL, analysis.r_df_in, 0, 65536, 0,                          \
          "inner radius of the dark-field annulus in pixels, 0..65536, below df_outer")                                \
        X("analysis", "df_outer", "df-outer", "R", "0", K_DBL, analysis.r_df_out, 0, 65536, F_DF,                      \
          "outer radius of the dark-field annulus in pixels, adds DF to the clustering; 0: none; 0..65536")            \
        X("analysis", "center_x", "center-x", "X", "", K_OPTDBL, analysis.center_x, -65536, 65536, 0,                  \
          "beam centre column in pixels when the start message has none; empty: estimate; -65536..65536")              \
        X("analysis", "center_y", "center-y", "Y", "", K_OPTDBL, analysis.center_y, -65536, 65536, 0,                  \
          "beam centre row in pixels, given together with center_x; empty: estimate; -65536..65536")                   \
        X("scan", "shape", "scan", "NYxNX", "", K_SHAPE, analysis.scan, 0, 0, 0,                                       \
          "scan grid rows x columns when the series has no scan user data; empty: none; up to 16777216 points")        \
        X("scan", "snake", NULL, NULL, "false", K_BOOL, analysis.scan.snake, 0, 0, 0,                                  \
          "every other line of the slow axis runs backwards (boolean)")                                                \
        X("scan", "fast_axis", NULL, "x|y", "x", K_AXIS, analysis.scan.fast_axis, 0, 0, 0,                             \
          "axis that advances from one image to the next: x (along a row) or y")                                       \
        X("scan", "origin", NULL, "X,Y", "0,0", K_PAIR, analysis.scan.origin_x, 0, 0, 0,                               \
          "position of grid point (0, 0), in units, for fly-scan positions")                                           \
        X("scan", "step", NULL, "DX,DY", "1,1", K_PAIR, analysis.scan.step_x, 0, 0, F_NONZERO,                         \
          "distance between columns and between rows, in units, non-zero")                                             \
        X("scan", "units", NULL, "TEXT", "", K_STR, analysis.scan.units, 0, 0, 0,                                      \
          "unit of origin and step (e.g. um), shorter than 16 bytes")                                                  \
        X("feedback", "rescan_factor", NULL, "F", "2", K_DBL, rescan_factor, 1, 16, 0,                                 \
          "rescan the RoI at step / F, 1..16")                                                                         \
        X("feedback", "next_points", NULL, "N", "32", K_INT, next_points, 0, 4096, 0,                                  \
          "ranked points to measure next in scan_here, 0..4096")                                                       \
        X("feedback", "stable_refits", NULL, "N", "3", K_INT, stable_refits, 1, 1000, 0,                               \
          "refits without a change of the RoI before it is called stable, 1..1000")                                    \
        X("pipeline", "workers", "workers", "N", "1", K_INT, workers, 1, 64, 0, "feature threads, 1..64")              \
        X("pipeline", "queue_depth", "queue-depth", "N", "256", K_INT, queue_depth, 2, 65536, 0,                       \
          "frames each pipeline queue holds, 2..65536")                                                                \
        X("pipeline", "queue_full", "queue-full", "wait|drop", "wait", K_QUEUE, queue_full, 0, 0, 0,                   \
          "when a queue is full: wait (push back on the detector) or drop the frame")                                  \
        X("limits", "max_message_bytes", NULL, "BYTES", "512M", K_SIZE, limits.max_message_bytes, 4096, 64 * GiB, 0,   \
          "largest message, all parts together, 4K..64G")                                                              \
        X("limits", "max_parts", NULL, "N", "32", K_INT, limits.max_parts, 4, 1024, 0,                                 \
          "most parts of one multipart message, 4..1024")                                                              \
        X("limits", "max_json_bytes", NULL, "BYTES", "4M", K_SIZE, limits.max_json_bytes, 1024, GiB, 0,                \
          "largest JSON part (V1) and user data of a message, 1K..1G")                                                 \
        X("limits", "max_pixels", NULL, "N", "64M", K_SIZE, limits.max_pixels, 1, 4 * GiB, 0,                          \
          "most pixels of one frame (rows x columns), 1..4G")                                                          \
        X("limits", "max_frame_bytes", NULL, "BYTES", "256M", K_SIZE, limits.max_frame_bytes, 1024, 64 * GiB, 0,       \
          "largest decoded frame of one channel, 1K..64G")                                                             \
        X("limits", "max_images", NULL, "N", "100000000", K_INT, limits.max_images, 1, 1e12, 0,                        \
          "largest image count or image_id of a series, 1..1000000000000")                                             \
        X("limits", "max_analysis_bytes", NULL, "BYTES", "0", K_SIZE, limits.max_analysis_bytes, 0, 1024 * GiB,        \
          F_STATE,                                                                                                     \
          "largest RoI state of one series (1.78 KB a scan point at 8 segments); 0: half the memory or of the "        \
          "cgroup memory limit, if lower; 0..1T")                                                                      \
        X("limits", "max_depth", NULL, "N", "32", K_INT, limits.max_depth, 1, 256, F_DEPTH,                            \
          "deepest CBOR / JSON nesting accepted, 1..256")                                                              \
        X("limits", "max_request_bytes", NULL, "BYTES", "64K", K_SIZE, max_request_bytes, 64, 16 * 1024 * 1024, 0,     \
          "largest control request, 64..16M")                                                                          \
        X("service", "log_level", "log-level", "LEVEL", "info", K_LEVEL, log_level, 0, 0, 0,                           \
          "least important messages logged: err, warning, notice, info or debug")                                      \
        X("service", "watchdog_stall", NULL, "S", "10", K_DBL, watchdog_stall, 1, 3600, 0,                             \
          "seconds queued work may make no progress before systemd's watchdog is no longer fed, 1..3600")              \
        X("service", "idle_timeout", "idle-timeout", "S", "0", K_DBL, idle_timeout, 0, 604800, 0,                      \
          "exit after this many seconds without a message; 0: never; 0..604800")                                       \
        X("service", "exit_after_series", "series", "N", "0", K_INT, exit_after_series, 0, 1000000000, 0,              \
          "exit after N series have ended; 0: never; 0..1000000000")

#define FIELD_SIZE(field)                                            sizeof(((roid_config *)0)->field)
#define PUBLIC(sec, key, opt, arg, def, kd, field, lo, hi, fl, help) {sec, key, opt, arg, def, help},
#define SPEC(sec, key, opt, arg, def, kd, field, lo, hi, fl, help)                                                     \
        {kd, offsetof(roid_config, field), FIELD_SIZE(field), lo, hi, fl},

static const roid_config_key keys[] = {KEYS(PUBLIC)};
static const spec specs[] = {KEYS(SPEC)};
#define N_KEYS (sizeof keys / sizeof keys[0])
_Static_assert(sizeof keys / sizeof keys[0] == sizeof specs / sizeof specs[0], "one spec per key");
_Static_assert(sizeof(roid_scan_fast) == sizeof(int) && sizeof(roid_queue_policy) == sizeof(int),
               "enums are stored as int");

static const char *const axis_names[] = {"x", "y", NULL};
static const char *const queue_names[] = {"wait", "drop", NULL};
static const char *const level_names[] = {"err", "warning", "notice", "info", "debug", NULL};
static const int level_values[] = {ROID_LOG_ERR, ROID_LOG_WARNING, ROID_LOG_NOTICE, ROID_LOG_INFO, ROID_LOG_DEBUG};

static const char *const *enum_names(kind k) {
        return k == K_AXIS ? axis_names : k == K_QUEUE ? queue_names : level_names;
}

static int enum_value(kind k, size_t i) {
        return k == K_LEVEL ? level_values[i] : (int)i;
}

const roid_config_key *roid_config_keys(size_t *ret_n) {
        *ret_n = N_KEYS;
        return keys;
}

static long find_index(const char *section, const char *key) {
        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
                        return (long)i;
        return -1;
}

const roid_config_key *roid_config_find(const char *section, const char *key) {
        long i = find_index(section, key);
        return i < 0 ? NULL : &keys[i];
}

void roid_config_default(roid_config *cfg) {
        memset(cfg, 0, sizeof *cfg);
        snprintf(cfg->detector, sizeof cfg->detector, "tcp://127.0.0.1:31001");
        snprintf(cfg->channel, sizeof cfg->channel, "#0");
        cfg->rcvhwm = 1000;
        cfg->sndhwm = 100;
        cfg->map_interval = 1.0;
        cfg->status_interval = 1.0;
        cfg->frame_every = 0;
        cfg->flush_interval = 1.0;
        roid_analysis_params_default(&cfg->analysis);
        cfg->rescan_factor = 2.0;
        cfg->next_points = 32;
        cfg->stable_refits = 3;
        cfg->workers = 1;
        cfg->queue_depth = 256;
        cfg->queue_full = ROID_QUEUE_WAIT;
        roid_limits_default(&cfg->limits);
        cfg->analysis.max_depth = cfg->limits.max_depth;
        cfg->analysis.roi.max_state_bytes = roid_limits_analysis_bytes(&cfg->limits);
        cfg->max_request_bytes = 65536;
        cfg->log_level = ROID_LOG_INFO;
        cfg->watchdog_stall = 10.0;
        cfg->idle_timeout = 0.0;
        cfg->exit_after_series = 0;
}

/* ------------------------------------------------------------ text forms */

/* Shortest decimal that reads back as the same double, without an exponent
 * where plain digits are as clear (10, not 1e+01). */
static void format_double(double v, char *buf, size_t size) {
        int p = 1;
        if (isfinite(v) && fabs(v) >= 1 && fabs(v) < 1e16)
                p = (int)floor(log10(fabs(v))) + 1;
        for (; p <= 17; p++) {
                snprintf(buf, size, "%.*g", p, v);
                if (strtod(buf, NULL) == v)
                        return;
        }
}

/* Exact multiples of 1024^n get a suffix: 512M rather than 536870912. */
static void format_size(uint64_t v, char *buf, size_t size) {
        static const char suffix[] = "KMGT";
        int s = -1;
        while (s < 3 && v != 0 && v % 1024 == 0) {
                v /= 1024;
                s++;
        }
        if (s < 0)
                snprintf(buf, size, "%llu", (unsigned long long)v);
        else
                snprintf(buf, size, "%llu%c", (unsigned long long)v, suffix[s]);
}

static void format_range(const spec *s, char *buf, size_t size) {
        char a[32], b[32];
        if (s->kind == K_SIZE) {
                format_size((uint64_t)s->lo, a, sizeof a);
                format_size((uint64_t)s->hi, b, sizeof b);
        } else if (s->kind == K_INT) {
                snprintf(a, sizeof a, "%lld", (long long)s->lo);
                snprintf(b, sizeof b, "%lld", (long long)s->hi);
        } else {
                format_double(s->lo, a, sizeof a);
                format_double(s->hi, b, sizeof b);
        }
        snprintf(buf, size, "%s..%s", a, b);
}

static int64_t load_int(const spec *s, const void *p) {
        if (s->size == 4) {
                int32_t i;
                uint32_t u;
                memcpy(&i, p, 4);
                memcpy(&u, p, 4);
                return s->lo < 0 ? i : (int64_t)u;
        }
        int64_t i;
        memcpy(&i, p, 8);
        return i; /* every 8-byte field's range fits int64 */
}

static void store_int(const spec *s, void *p, int64_t v) {
        if (s->size == 4) {
                int32_t i = (int32_t)v;
                memcpy(p, &i, 4);
        } else {
                memcpy(p, &v, 8);
        }
}

/* Strings need quotes only where a file would otherwise lose something (a
 * leading ';' after "key = " starts a comment). */
static bool needs_quotes(const char *v, size_t n) {
        return n > 0 && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1]) || v[0] == ';' ||
                         (n >= 2 && v[0] == '"' && v[n - 1] == '"'));
}

/* The value of key i as text; snprintf semantics. */
static int value_text(const roid_config *cfg, size_t i, char *buf, size_t size) {
        const spec *s = &specs[i];
        const char *p = (const char *)cfg + s->off;
        char tmp[64], tmp2[32];
        double d[2];
        switch (s->kind) {
        case K_STR:
        case K_ENDPOINT:
        case K_CHANNEL: {
                size_t n = strnlen(p, s->size);
                if (needs_quotes(p, n))
                        return snprintf(buf, size, "\"%.*s\"", (int)n, p);
                return snprintf(buf, size, "%.*s", (int)n, p);
        }
        case K_INT:
                return snprintf(buf, size, "%lld", (long long)load_int(s, p));
        case K_SIZE:
                format_size((uint64_t)load_int(s, p), tmp, sizeof tmp);
                return snprintf(buf, size, "%s", tmp);
        case K_SEED: {
                uint64_t u;
                memcpy(&u, p, sizeof u);
                return snprintf(buf, size, "%llu", (unsigned long long)u);
        }
        case K_DBL:
        case K_OPTDBL:
                memcpy(&d[0], p, sizeof d[0]);
                if (s->kind == K_OPTDBL && isnan(d[0]))
                        return snprintf(buf, size, "%s", "");
                format_double(d[0], tmp, sizeof tmp);
                return snprintf(buf, size, "%s", tmp);
        case K_BOOL: {
                bool b;
                memcpy(&b, p, sizeof b);
                return snprintf(buf, size, "%s", b ? "true" : "false");
        }
        case K_AXIS:
        case K_QUEUE:
        case K_LEVEL: {
                int v;
                memcpy(&v, p, sizeof v);
                const char *const *names = enum_names(s->kind);
                for (size_t j = 0; names[j]; j++)
                        if (enum_value(s->kind, j) == v)
                                return snprintf(buf, size, "%s", names[j]);
                return snprintf(buf, size, "%d", v); /* not a name: validate reports it */
        }
        case K_SHAPE: {
                const roid_scan_grid *g = (const roid_scan_grid *)p;
                if (g->source != ROID_SCAN_FROM_CONFIG)
                        return snprintf(buf, size, "%s", "");
                return snprintf(buf, size, "%llux%llu", (unsigned long long)g->ny, (unsigned long long)g->nx);
        }
        case K_PAIR:
                memcpy(d, p, sizeof d);
                format_double(d[0], tmp, sizeof tmp);
                format_double(d[1], tmp2, sizeof tmp2);
                return snprintf(buf, size, "%s,%s", tmp, tmp2);
        }
        return snprintf(buf, size, "%s", "");
}

int roid_config_get(const roid_config *cfg, const char *section, const char *key, char *buf, size_t size) {
        long i = find_index(section, key);
        if (i < 0)
                return -ENOENT;
        return value_text(cfg, (size_t)i, buf, size);
}

/* ------------------------------------------------------------- parsing */

/* The value as shown in a message: long values are cut. */
static const char *shown(const char *v, char *buf, size_t size) {
        size_t n = strlen(v);
        if (n + 1 <= size && n <= 48)
                return v;
        snprintf(buf, size, "%.40s...", v);
        return buf;
}

static bool parse_whole(const char *v, int64_t *ret) {
        if (!*v || isspace((unsigned char)*v))
                return false;
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || *end)
                return false;
        *ret = x;
        return true;
}

/* A whole number with an optional K/M/G/T suffix; -ERANGE on overflow. */
static int parse_size(const char *v, uint64_t *ret) {
        if (!isdigit((unsigned char)*v))
                return -EINVAL;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno)
                return -ERANGE;
        int shift = 0;
        if (*end) {
                const char *s = strchr("KMGT", toupper((unsigned char)*end));
                if (!s || end[1])
                        return -EINVAL;
                shift = 10 * (int)(s - "KMGT" + 1);
        }
        if (shift && x > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = (uint64_t)x << shift;
        return 0;
}

/* A number written in hexadecimal (strtod reads "0x1p4"): the docs promise decimal. */
static bool hexadecimal(const char *v) {
        for (const char *t = v; *t; t++) {
                const char *d = t + (*t == '+' || *t == '-');
                if ((t == v || t[-1] == ',' || isspace((unsigned char)t[-1])) && d[0] == '0' &&
                    (d[1] == 'x' || d[1] == 'X'))
                        return true;
        }
        return false;
}

static bool parse_double(const char *v, double *ret) {
        if (!*v || isspace((unsigned char)*v) || hexadecimal(v))
                return false;
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (*end || (errno == ERANGE && isinf(x)))
                return false;
        *ret = x;
        return true;
}

static bool parse_bool(const char *v, bool *ret) {
        static const char *const t[] = {"true", "yes", "on", "1"}, *const f[] = {"false", "no", "off", "0"};
        for (size_t i = 0; i < 4; i++) {
                if (strcasecmp(v, t[i]) == 0) {
                        *ret = true;
                        return true;
                }
                if (strcasecmp(v, f[i]) == 0) {
                        *ret = false;
                        return true;
                }
        }
        return false;
}

/* "a,b" with finite numbers; blanks around the comma are fine. */
static bool parse_pair(const char *v, double *a, double *b) {
        const char *comma = strchr(v, ',');
        if (!comma)
                return false;
        char first[64];
        size_t n = (size_t)(comma - v);
        while (n > 0 && isspace((unsigned char)v[n - 1]))
                n--;
        if (n >= sizeof first)
                return false;
        memcpy(first, v, n);
        first[n] = '\0';
        const char *second = comma + 1;
        while (isspace((unsigned char)*second))
                second++;
        return parse_double(first, a) && parse_double(second, b) && isfinite(*a) && isfinite(*b);
}

static int check_string(const char *name, const char *key, const spec *s, const char *v, size_t n, roid_err *err) {
        char sh[64];
        /* roid_config_format writes it as one "key = value" line, which must load again. */
        const size_t quotes = needs_quotes(v, n) ? 2 : 0, field = s->size - 1,
                     line = ROID_CONFIG_LINE_MAX - strlen(key) - 3 - quotes;
        if (n > line && line < field)
                return roid_err_set(err, -EINVAL,
                                    "%s: '%s' is %zu bytes, longer than the %zu that fit in a configuration line "
                                    "('%s = ...'%s, at most %d characters)",
                                    name, shown(v, sh, sizeof sh), n, line, key, quotes ? " with quotes" : "",
                                    ROID_CONFIG_LINE_MAX);
        if (n > field)
                return roid_err_set(err, -EINVAL, "%s: '%s' is %zu bytes, longer than %zu bytes", name,
                                    shown(v, sh, sizeof sh), n, field);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)v[i];
                if (c < 0x20 || c == 0x7f)
                        return roid_err_set(err, -EINVAL, "%s: control character 0x%02x in '%s'", name, c,
                                            shown(v, sh, sizeof sh));
                /* A file would read it as a comment. */
                if (c == ';' && i > 0 && isspace((unsigned char)v[i - 1]))
                        return roid_err_set(err, -EINVAL, "%s: '%s' has a blank before ';' (starts a comment)", name,
                                            shown(v, sh, sizeof sh));
        }
        /* Published in msgpack str values, which clients decode as UTF-8. */
        size_t bad = roid_utf8_invalid_at(v, n);
        if (bad < n)
                return roid_err_set(err, -EINVAL, "%s: byte 0x%02x at %zu is not UTF-8 (text must be UTF-8)", name,
                                    (unsigned char)v[bad], bad);
        if ((s->flags & F_REQUIRED) && n == 0)
                return roid_err_set(err, -EINVAL, "%s: must not be empty", name);
        if (s->kind == K_ENDPOINT && n > 0) {
                const char *sep = strstr(v, "://");
                if (!sep || sep == v || !sep[3])
                        return roid_err_set(err, -EINVAL,
                                            "%s: '%s' is not a ZeroMQ endpoint (transport://address, e.g. "
                                            "tcp://host:port, ipc:///path)",
                                            name, shown(v, sh, sizeof sh));
        }
        if (s->kind == K_CHANNEL) {
                if (n == 0)
                        return roid_err_set(err, -EINVAL, "%s: must not be empty (a channel name, or #N)", name);
                int64_t idx;
                if (v[0] == '#' && (!isdigit((unsigned char)v[1]) || !parse_whole(v + 1, &idx) || idx > 1000000))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not #N with N in 0..1000000", name,
                                            shown(v, sh, sizeof sh));
        }
        return 0;
}

/* Sets key i of *cfg from v; on failure *cfg may be partly written, callers
 * work on a copy. */
static int set_value(roid_config *cfg, size_t i, const char *v, roid_err *err) {
        const spec *s = &specs[i];
        char *p = (char *)cfg + s->off;
        char name[64], range[80], sh[64];
        snprintf(name, sizeof name, "[%s] %s", keys[i].section, keys[i].key);
        format_range(s, range, sizeof range);
        const char *vs = shown(v, sh, sizeof sh);

        switch (s->kind) {
        case K_STR:
        case K_ENDPOINT:
        case K_CHANNEL: {
                size_t n = strlen(v);
                if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
                        v++;
                        n -= 2;
                }
                int r = check_string(name, keys[i].key, s, v, n, err);
                if (r < 0)
                        return r;
                memset(p, 0, s->size);
                memcpy(p, v, n);
                return 0;
        }
        case K_INT: {
                int64_t x;
                if (!parse_whole(v, &x))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a whole number (%s)", name, vs, range);
                if ((double)x < s->lo || (double)x > s->hi)
                        return roid_err_set(err, -EINVAL, "%s: '%s' is out of range %s", name, vs, range);
                store_int(s, p, x);
                if (s->flags & F_DEPTH)
                        cfg->analysis.max_depth = (unsigned)x;
                return 0;
        }
        case K_SIZE: {
                uint64_t x;
                int r = parse_size(v, &x);
                if (r == -EINVAL)
                        return roid_err_set(err, -EINVAL,
                                            "%s: '%s' is not a whole number with an optional K, M, G or T (%s)", name,
                                            vs, range);
                if (r < 0 || (double)x < s->lo || (double)x > s->hi)
                        return roid_err_set(err, -EINVAL, "%s: '%s' is out of range %s", name, vs, range);
                store_int(s, p, (int64_t)x);
                if (s->flags & F_STATE)
                        cfg->analysis.roi.max_state_bytes = roid_limits_analysis_bytes(&cfg->limits);
                return 0;
        }
        case K_SEED: {
                if (!isdigit((unsigned char)*v))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a whole number (0..%llu)", name, vs,
                                            (unsigned long long)UINT64_MAX);
                char *end;
                errno = 0;
                unsigned long long x = strtoull(v, &end, 10);
                if (*end)
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a whole number (0..%llu)", name, vs,
                                            (unsigned long long)UINT64_MAX);
                if (errno)
                        return roid_err_set(err, -EINVAL, "%s: '%s' is out of range 0..%llu", name, vs,
                                            (unsigned long long)UINT64_MAX);
                uint64_t u = x;
                memcpy(p, &u, sizeof u);
                return 0;
        }
        case K_DBL:
        case K_OPTDBL: {
                double x;
                if (s->kind == K_OPTDBL && (!*v || strcasecmp(v, "nan") == 0)) {
                        x = NAN;
                        memcpy(p, &x, sizeof x);
                        return 0;
                }
                if (hexadecimal(v))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is hexadecimal; write a decimal number (%s)", name,
                                            vs, range);
                if (!parse_double(v, &x))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a number (%s%s)", name, vs, range,
                                            s->kind == K_OPTDBL ? ", or empty for not set" : "");
                if (!isfinite(x))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a finite number (%s)", name, vs, range);
                if (x < s->lo || x > s->hi)
                        return roid_err_set(err, -EINVAL, "%s: '%s' is out of range %s", name, vs, range);
                memcpy(p, &x, sizeof x);
                if (s->flags & F_BF)
                        cfg->analysis.roi.use_bf = x > 0;
                if (s->flags & F_DF)
                        cfg->analysis.roi.use_df = x > 0;
                return 0;
        }
        case K_BOOL: {
                bool b;
                if (!parse_bool(v, &b))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not a boolean (true/false, yes/no, on/off, 1/0)",
                                            name, vs);
                memcpy(p, &b, sizeof b);
                return 0;
        }
        case K_AXIS:
        case K_QUEUE:
        case K_LEVEL: {
                const char *const *names = enum_names(s->kind);
                for (size_t j = 0; names[j]; j++) {
                        if (strcmp(v, names[j]) == 0) {
                                int x = enum_value(s->kind, j);
                                memcpy(p, &x, sizeof x);
                                return 0;
                        }
                }
                char list[80] = "";
                for (size_t j = 0, n = 0; names[j] && n < sizeof list; j++)
                        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", j ? ", " : "", names[j]);
                return roid_err_set(err, -EINVAL, "%s: '%s' is not one of %s", name, vs, list);
        }
        case K_SHAPE: {
                roid_scan_grid *g = (roid_scan_grid *)p;
                if (!*v) {
                        g->ny = g->nx = 1;
                        g->source = ROID_SCAN_FROM_NONE;
                        return 0;
                }
                /* NYxNX, or ny,nx as the scan user data writes it */
                const char *sep = v + strspn(v, "0123456789");
                char first[32];
                size_t n = (size_t)(sep - v);
                int64_t ny, nx;
                if (n == 0 || n >= sizeof first || (*sep != 'x' && *sep != 'X' && *sep != ',') ||
                    !isdigit((unsigned char)sep[1]))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not rows x columns NYxNX (e.g. 64x128)", name,
                                            vs);
                memcpy(first, v, n);
                first[n] = '\0';
                if (!parse_whole(first, &ny) || !parse_whole(sep + 1, &nx))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not rows x columns NYxNX (e.g. 64x128)", name,
                                            vs);
                roid_err e2;
                if (roid_scan_grid_set_shape(g, (uint64_t)ny, (uint64_t)nx, name, &e2) < 0)
                        return roid_err_set(err, -EINVAL, "%s (1..%llu points)", e2.msg,
                                            (unsigned long long)ROID_SCAN_MAX_POINTS);
                g->source = ROID_SCAN_FROM_CONFIG;
                return 0;
        }
        case K_PAIR: {
                double d[2];
                if (hexadecimal(v))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is hexadecimal; write two decimal numbers A,B",
                                            name, vs);
                if (!parse_pair(v, &d[0], &d[1]))
                        return roid_err_set(err, -EINVAL, "%s: '%s' is not two finite numbers A,B%s", name, vs,
                                            (s->flags & F_NONZERO) ? ", both non-zero" : "");
                if ((s->flags & F_NONZERO) && (d[0] == 0 || d[1] == 0))
                        return roid_err_set(err, -EINVAL, "%s: '%s' has a zero; both must be non-zero", name, vs);
                memcpy(p, d, sizeof d);
                return 0;
        }
        }
        return roid_err_set(err, -EINVAL, "%s: unhandled key", name);
}

/* Edit distance for "did you mean"; names are short. */
static size_t distance(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        if (la > 63 || lb > 63)
                return 64;
        size_t row[64];
        for (size_t j = 0; j <= lb; j++)
                row[j] = j;
        for (size_t i = 1; i <= la; i++) {
                size_t diag = row[0];
                row[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t up = row[j];
                        size_t best = diag + (a[i - 1] != b[j - 1]);
                        if (up + 1 < best)
                                best = up + 1;
                        if (row[j - 1] + 1 < best)
                                best = row[j - 1] + 1;
                        row[j] = best;
                        diag = up;
                }
        }
        return row[lb];
}

static bool close_enough(const char *given, const char *known, size_t d) {
        size_t n = strlen(known);
        return d <= (n < 6 ? 1 : n / 3 + 1) && d < strlen(given) + n;
}

static int unknown(const char *section, const char *key, roid_err *err) {
        bool section_known = false;
        const char *best_section = NULL;
        size_t best_d = SIZE_MAX;
        for (size_t i = 0; i < N_KEYS; i++) {
                if (strcmp(keys[i].section, section) == 0) {
                        section_known = true;
                        break;
                }
                size_t d = distance(section, keys[i].section);
                if (d < best_d) {
                        best_d = d;
                        best_section = keys[i].section;
                }
        }
        if (!section_known) {
                if (best_section && close_enough(section, best_section, best_d))
                        return roid_err_set(err, -EINVAL, "[%.64s]: unknown section (did you mean [%s]?)", section,
                                            best_section);
                return roid_err_set(err, -EINVAL,
                                    "[%.64s]: unknown section (known: detector, output, analysis, scan, feedback, "
                                    "pipeline, limits, service)",
                                    section);
        }
        /* The same key in another section beats a near miss in this one. */
        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].key, key) == 0)
                        return roid_err_set(err, -EINVAL, "[%s] %.64s: unknown key (it belongs in [%s])", section, key,
                                            keys[i].section);
        const char *best = NULL;
        best_d = SIZE_MAX;
        for (size_t i = 0; i < N_KEYS; i++) {
                if (strcmp(keys[i].section, section) != 0)
                        continue;
                size_t d = distance(key, keys[i].key);
                if (d < best_d) {
                        best_d = d;
                        best = keys[i].key;
                }
        }
        if (best && close_enough(key, best, best_d))
                return roid_err_set(err, -EINVAL, "[%s] %.64s: unknown key (did you mean %s?)", section, key, best);
        return roid_err_set(err, -EINVAL, "[%s] %.64s: unknown key", section, key);
}

int roid_config_set(roid_config *cfg, const char *section, const char *key, const char *value, roid_err *err) {
        long i = find_index(section, key);
        if (i < 0)
                return unknown(section, key, err);
        if (!value)
                return roid_err_set(err, -EINVAL, "[%s] %s: no value", section, key);
        roid_config tmp = *cfg;
        int r = set_value(&tmp, (size_t)i, value, err);
        if (r < 0)
                return r;
        *cfg = tmp;
        return 0;
}

/* ----------------------------------------------------------------- files */

typedef struct {
        FILE *f;
        const char *path;
        roid_config *cfg;
        roid_err *err;
        int line;
        long bytes;
        int rc;      /* first error, 0 if none */
        int rc_line; /* its line */
} load_ctx;

static int load_fail(load_ctx *c, int r, const char *what) {
        c->rc = roid_err_set(c->err, r, "%s:%d: %s", c->path, c->line, what);
        c->rc_line = c->line;
        return 0;
}

/* libinih also splits "key : value"; the docs know only '='.  True when the
 * first separator of a key line, before any " ;" comment, is ':' (so
 * "publish = tcp://0.0.0.0:5557" and "k = 3 ; a: b" are fine). */
static bool colon_separated(const char *line, bool first) {
        if (first && strncmp(line, "\xef\xbb\xbf", 3) == 0) /* libinih skips a BOM */
                line += 3;
        while (isspace((unsigned char)*line))
                line++;
        if (!*line || strchr(";#[", *line))
                return false;
        for (const char *p = line; *p; p++) {
                if (*p == '=')
                        return false;
                if (*p == ':')
                        return true;
                if (*p == ';' && p > line && isspace((unsigned char)p[-1]))
                        return false;
        }
        return false;
}

/* libinih's reader: one physical line per call (so its line numbers are
 * ours), leading blanks dropped (so an indented key is not a continuation of
 * the previous value), over-long lines, NUL bytes and ':' separators refused
 * rather than cut or guessed.  A '\r' before '\n' is not counted, so a CRLF
 * file holds lines as long as any other. */
static char *read_line(char *str, int num, void *stream) {
        load_ctx *c = stream;
        if (c->rc < 0)
                return NULL;
        size_t n = 0, cap = num > 3 ? (size_t)num - 3 : 0;
        bool any = false;
        int ch;
        while ((ch = getc(c->f)) != EOF) {
                if (!any)
                        c->line++;
                any = true;
                if (++c->bytes > FILE_MAX) {
                        c->rc = roid_err_set(c->err, -EFBIG, "%s: larger than %ld bytes", c->path, FILE_MAX);
                        return NULL;
                }
                if (ch == '\n')
                        break;
                if (ch == '\r') {
                        int next = getc(c->f);
                        if (next == '\n' || next == EOF) {
                                c->bytes += next == '\n';
                                break;
                        }
                        ungetc(next, c->f);
                }
                if (ch == '\0') {
                        load_fail(c, -EINVAL, "NUL byte");
                        return NULL;
                }
                if (n == 0 && (ch == ' ' || ch == '\t'))
                        continue;
                if (n >= cap) {
                        char what[64];
                        snprintf(what, sizeof what, "line longer than %zu characters", cap);
                        load_fail(c, -EINVAL, what);
                        return NULL;
                }
                str[n++] = (char)ch;
        }
        if (ferror(c->f)) {
                c->rc = roid_err_set(c->err, -EIO, "%s: read error", c->path);
                return NULL;
        }
        if (!any)
                return NULL;
        str[n] = '\0';
        if (colon_separated(str, c->line == 1)) {
                char what[160];
                snprintf(what, sizeof what, "syntax error: '%.60s' separates key and value with ':'; write key = value",
                         str);
                load_fail(c, -EINVAL, what);
                return NULL;
        }
        return str;
}

static int on_key(void *user, const char *section, const char *name, const char *value) {
        load_ctx *c = user;
        if (c->rc < 0)
                return 0;
        if (!*section) {
                char what[128];
                snprintf(what, sizeof what, "%.64s: key outside a section (a [section] line comes first)", name);
                return load_fail(c, -EINVAL, what);
        }
        long i = find_index(section, name);
        int r = i < 0 ? unknown(section, name, c->err) : set_value(c->cfg, (size_t)i, value, c->err);
        if (r < 0) {
                roid_err_prefix(c->err, "%s:%d", c->path, c->line);
                c->rc = r;
                c->rc_line = c->line;
                return 0;
        }
        return 1;
}

int roid_config_load(roid_config *cfg, const char *path, roid_err *err) {
        FILE *f = fopen(path, "re");
        if (!f) {
                int r = -errno;
                char why[128];
                return roid_err_set(err, r, "%s: %s", path, strerror_r(-r, why, sizeof why));
        }
        struct stat st;
        if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
                fclose(f);
                return roid_err_set(err, -EINVAL, "%s: not a regular file", path);
        }
        roid_config tmp = *cfg;
        load_ctx c = {.f = f, .path = path, .cfg = &tmp, .err = err};
        int r = ini_parse_stream(read_line, &c, on_key, &c);
        fclose(f);
        /* libinih goes on after a syntax error; the first error by line wins. */
        if (r > 0 && (c.rc == 0 || (c.rc_line > 0 && r < c.rc_line)))
                return roid_err_set(err, -EINVAL, "%s:%d: syntax error (expected [section] or key = value)", path, r);
        if (c.rc < 0)
                return c.rc;
        if (r == -2)
                return roid_err_set(err, -ENOMEM, "%s: out of memory", path);
        if (r != 0)
                return roid_err_set(err, -EINVAL, "%s:%d: syntax error", path, r);
        *cfg = tmp;
        return 0;
}

/* ---------------------------------------------------- validate, format */

int roid_config_validate(const roid_config *cfg, roid_err *err) {
        /* Every key reads back from its own text: catches values set in code. */
        roid_config scratch = *cfg;
        char text[ROID_PATH_MAX + 8];
        for (size_t i = 0; i < N_KEYS; i++) {
                value_text(cfg, i, text, sizeof text);
                int r = set_value(&scratch, i, text, err);
                if (r < 0)
                        return r;
        }
        const roid_analysis_params *a = &cfg->analysis;
        if (a->r_df_out > 0 && a->r_df_in >= a->r_df_out)
                return roid_err_set(err, -EINVAL, "[analysis] df_inner: %g is not below df_outer %g", a->r_df_in,
                                    a->r_df_out);
        if (a->r_df_in > 0 && !(a->r_df_out > 0))
                return roid_err_set(err, -EINVAL, "[analysis] df_inner: %g given without df_outer", a->r_df_in);
        if (isnan(a->center_x) != isnan(a->center_y))
                return roid_err_set(err, -EINVAL,
                                    "[analysis] center_x, center_y: give both or neither (center_x %s, center_y %s)",
                                    isnan(a->center_x) ? "not set" : "set", isnan(a->center_y) ? "not set" : "set");
        if (a->scan.source == ROID_SCAN_FROM_CONFIG &&
            (uint64_t)a->scan.ny * a->scan.nx > ROID_SCAN_MAX_POINTS) /* set_value checked; code may not have */
                return roid_err_set(err, -EINVAL, "[scan] shape: more than %llu points",
                                    (unsigned long long)ROID_SCAN_MAX_POINTS);
        if (cfg->publish[0] && strcmp(cfg->publish, cfg->control) == 0)
                return roid_err_set(err, -EINVAL, "[output] publish, control: both bind %s", cfg->publish);
        return 0;
}

int roid_config_format(const roid_config *cfg, char *buf, size_t size) {
        size_t n = 0;
        const char *section = NULL;
        char text[ROID_PATH_MAX + 8];
#define OUT(...)                                                                                                       \
        do {                                                                                                           \
                int m_ = snprintf(n < size ? buf + n : NULL, n < size ? size - n : 0, __VA_ARGS__);                    \
                if (m_ > 0)                                                                                            \
                        n += (size_t)m_;                                                                               \
        } while (0)
        for (size_t i = 0; i < N_KEYS; i++) {
                if (!section || strcmp(section, keys[i].section) != 0) {
                        section = keys[i].section;
                        OUT("%s[%s]\n", i ? "\n" : "", section);
                }
                value_text(cfg, i, text, sizeof text);
                OUT("%s =%s%s\n", keys[i].key, text[0] ? " " : "", text);
        }
#undef OUT
        return n > INT_MAX ? INT_MAX : (int)n;
}
