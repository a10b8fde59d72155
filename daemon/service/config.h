/* config.h - roid's configuration: one INI file (parsed with libinih), then
 * command-line options on top, then validation.  config/roid.conf is the
 * example that explains every key; roid(8) lists them.  The key table
 * (roid_config_keys) is the single list of sections, keys, options, defaults
 * and one-line help that --help, the example and the man page follow.
 *
 * Every key has a section, a default, a unit and a range.  A wrong section,
 * key, value or range is an error naming "[section] key", the value given and
 * what is allowed; roid_config_load leaves *cfg untouched on any error, so a
 * SIGHUP with a bad file keeps the running configuration.
 *
 * Values: numbers are whole or decimal as the key says, parsed strictly (the
 * whole text, decimal only: no hexadecimal, NaN or infinity); byte sizes and pixel counts take a K, M, G
 * or T suffix (powers of 1024); booleans are true/false, yes/no, on/off, 1/0;
 * a string may be wrapped in double quotes (removed once) and must be UTF-8
 * (it is published again as msgpack text).  In a file, lines
 * starting with # or ; are comments, " ;" starts a comment after a value,
 * leading blanks are ignored (no continuation lines), a key given twice takes
 * the last value, key and value are separated by '=' (libinih's ':' is
 * refused), and a line holds at most ROID_CONFIG_LINE_MAX characters.  A
 * string value from any source must fit in such a line as "key = value" (with
 * the quotes it needs), so the formatted configuration always loads.
 *
 * Ownership: plain data, no pointers (strings are arrays); copy freely.  The
 * key table is static and constant.
 * Threads: any; nothing is shared.
 */
#ifndef ROID_SERVICE_CONFIG_H
#define ROID_SERVICE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "analysis/analysis.h"
#include "service/err.h"
#include "service/limits.h"

#define ROID_ENDPOINT_MAX 256
/* Longest line libinih reads whole (its 200-byte buffer less '\r', '\n' and
 * the terminator); a longer line is an error, never silently cut. */
#define ROID_CONFIG_LINE_MAX 197

typedef enum { ROID_QUEUE_WAIT = 0, ROID_QUEUE_DROP } roid_queue_policy;

typedef struct {
        /* [detector] */
        char detector[ROID_ENDPOINT_MAX]; /* endpoint = tcp://127.0.0.1:31001 */
        char channel[ROID_NAME_MAX];      /* channel = #0 (a name, or #N) */
        int rcvhwm;                       /* receive_hwm = 1000 messages, 1..1000000 */
        double series_timeout;            /* series_timeout = 0 s (never): close an open series this long silent */

        /* [output] */
        char publish[ROID_ENDPOINT_MAX]; /* publish = "" (off); e.g. tcp://0.0.0.0:5557 */
        char control[ROID_ENDPOINT_MAX]; /* control = "" (off); e.g. tcp://0.0.0.0:5558 */
        int sndhwm;                      /* publish_hwm = 100 messages per subscriber, 1..100000 */
        double map_interval;             /* map_interval = 1.0 s, 0.002..3600: `map` and `scan_here` cadence */
        double status_interval;          /* status_interval = 1.0 s, 0.05..3600 */
        unsigned frame_every;            /* frame_every = 0 (no `frame` topic); N = every N-th frame */
        /* output_dir: in analysis.output_dir (directory = "" = no results file) */
        double flush_interval; /* flush_interval = 1.0 s, 0.05..3600: SWMR flush of the results file */

        /* [analysis]: segments, k, cadence, border, fill_holes, seed, bf_radius,
         * df_inner, df_outer, center_x, center_y; [scan]: shape (NYxNX or
         * "ny,nx"), snake, fast_axis (x|y), origin (x,y), step (dx,dy), units;
         * [output] directory.  Stored in the analysis parameters. */
        roid_analysis_params analysis;

        /* [feedback] */
        double rescan_factor;   /* rescan_factor = 2, 1..16: rescan points at step / factor */
        unsigned next_points;   /* next_points = 32, 0..4096: ranked points in scan_here */
        unsigned stable_refits; /* stable_refits = 3, 1..1000: unchanged refits before "stable" */

        /* [pipeline] */
        unsigned workers;             /* workers = 1, 1..64 feature threads */
        unsigned queue_depth;         /* queue_depth = 256 frames, 2..65536 per queue */
        roid_queue_policy queue_full; /* queue_full = wait | drop */

        /* [limits]: max_message_bytes, max_parts, max_json_bytes, max_pixels,
         * max_frame_bytes, max_images, max_depth (see limits.h);
         * max_request_bytes = 65536, 64..16 MiB (control requests). */
        roid_limits limits; /* max_depth also sets analysis.max_depth */
        size_t max_request_bytes;

        /* [service] */
        int log_level;          /* log_level = info: err|warning|notice|info|debug (ROID_LOG_*) */
        double watchdog_stall;  /* watchdog_stall = 10 s, 1..3600: queued work with no progress this long stops
                                   WATCHDOG=1 pings */
        double idle_timeout;    /* idle_timeout = 0 s (never): exit after this long without a message */
        long exit_after_series; /* exit_after_series = 0 (never) */
} roid_config;

/* One key of the table.  `option` is the long command-line option that sets
 * it (NULL: none); `arg` its metavar (NULL: a boolean flag, which sets the key
 * to "true"); `def` the default as text, exactly as roid_config_format writes
 * it ("" = empty / not set); `help` one line: meaning, unit, range. */
typedef struct {
        const char *section, *key;
        const char *option, *arg;
        const char *def;
        const char *help;
} roid_config_key;

/* The table, in file order (sections: detector, output, analysis, scan,
 * feedback, pipeline, limits, service). */
const roid_config_key *roid_config_keys(size_t *ret_n);
/* The entry of "[section] key", or NULL. */
const roid_config_key *roid_config_find(const char *section, const char *key);

/* All defaults (the values in the comments above). */
void roid_config_default(roid_config *cfg);

/* Reads an INI file on top of *cfg: only the keys the file names change.
 * -ENOENT / -EACCES (err names the path), -EINVAL (err names the file and
 * line, "[section] key", the value and the allowed range or values; for a
 * syntax error the line), -EIO, -EFBIG (over 1 MiB).  *cfg is untouched on
 * failure.  Checks only single keys: call roid_config_validate after the
 * command-line options. */
int roid_config_load(roid_config *cfg, const char *path, roid_err *err);

/* Sets one key from its text, as a file line or a command-line option would
 * ("analysis", "k", "3").  Same errors as roid_config_load; cfg untouched on
 * failure.  bf_radius also sets analysis.roi.use_bf (radius > 0), df_outer
 * analysis.roi.use_df; [scan] shape sets analysis.scan.source to
 * ROID_SCAN_FROM_CONFIG ("" = no configured grid, ROID_SCAN_FROM_NONE);
 * [limits] max_depth also sets analysis.max_depth. */
int roid_config_set(roid_config *cfg, const char *section, const char *key, const char *value, roid_err *err);

/* The value of one key as text, as roid_config_format writes it.  Returns the
 * length it needed (snprintf semantics), -ENOENT for an unknown key. */
int roid_config_get(const roid_config *cfg, const char *section, const char *key, char *buf, size_t size);

/* Checks every key's range again (for a config built in code) and what single
 * keys cannot: df_inner < df_outer when df_outer is set, df_inner only with
 * df_outer, a centre given as both coordinates or neither, publish and control
 * on different endpoints.  -EINVAL with err naming the keys. */
int roid_config_validate(const roid_config *cfg, roid_err *err);

/* Writes the effective configuration as INI text (every key, for the results
 * file and `roid --print-config`); roid_config_load of it onto any
 * configuration gives back an equal one: every line fits in
 * ROID_CONFIG_LINE_MAX, as roid_config_set and roid_config_validate refuse a
 * string whose "key = value" line would not.  Returns the length it needed
 * (snprintf semantics); buf may be NULL when size is 0. */
int roid_config_format(const roid_config *cfg, char *buf, size_t size);

#endif
