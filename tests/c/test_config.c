/* test_config - the configuration: defaults, every key through
 * roid_config_set with a good value and with bad ones (the error names
 * "[section] key" and what is allowed, the config is untouched), files (the
 * example config/roid.conf gives the defaults, syntax errors name the line, a
 * missing file names the path), the format/load round trip, the cross-key
 * checks, and the key table against config/roid.conf and deploy/roid.8. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "service/config.h"
#include "service/log.h"
#include "tap.h"

#define MAX_BAD 5

typedef struct {
        const char *v, *want; /* value, a substring its error must hold */
} bad;

/* Per key: a good value other than the default, its text as read back, and
 * bad values.  Written by hand from the ranges the brief gives. */
typedef struct {
        const char *section, *key, *good, *good_text;
        bad bads[MAX_BAD];
} key_case;

static char long_path[5000];

static const key_case cases[] = {
        {"detector",
         "endpoint",
         "ipc:///tmp/eiger",
         "ipc:///tmp/eiger",
         {{"", "must not be empty"}, {"localhost:31001", "transport://address"}}},
        {"detector", "channel", "threshold_1", "threshold_1", {{"", "must not be empty"}, {"#x", "#N"}}},
        {"detector",
         "receive_hwm",
         "5000",
         "5000",
         {{"0", "1..1000000"}, {"1000001", "1..1000000"}, {"lots", "1..1000000"}, {"1.5", "1..1000000"}}},
        {"output",
         "directory",
         "/var/lib/roid",
         "/var/lib/roid",
         {{long_path, "longer than the 185"}, {"a\tb", "control character"}, {"a ;b", "comment"}}},
        {"output", "publish", "tcp://0.0.0.0:5557", "tcp://0.0.0.0:5557", {{"5557", "transport://address"}}},
        {"output", "control", "tcp://0.0.0.0:5558", "tcp://0.0.0.0:5558", {{"tcp://", "transport://address"}}},
        {"output", "publish_hwm", "10", "10", {{"0", "1..100000"}, {"100001", "1..100000"}}},
        {"output",
         "map_interval",
         "0.5",
         "0.5",
         {{"0.001", "0.002..3600"},
          {"3601", "0.002..3600"},
          {"nan", "0.002..3600"},
          {"inf", "0.002..3600"},
          {"1s", "0.002..3600"}}},
        {"output",
         "status_interval",
         "2.5",
         "2.5",
         {{"0", "0.05..3600"}, {"", "0.05..3600"}, {"0x10", "hexadecimal"}, {"-0X1p-2", "hexadecimal"}}},
        {"output", "frame_every", "10", "10", {{"-1", "0..1000000000"}, {"1000000001", "0..1000000000"}}},
        {"output", "flush_interval", "0.25", "0.25", {{"-1", "0.05..3600"}}},
        {"analysis", "segments", "16", "16", {{"0", "1..40"}, {"41", "1..40"}, {"eight", "1..40"}}},
        {"analysis", "k", "6", "6", {{"1", "2..16"}, {"99", "2..16"}, {"3.0", "2..16"}, {" 3", "2..16"}}},
        {"analysis", "cadence", "0", "0", {{"-1", "0..1000000000"}, {"1e9", "0..1000000000"}}},
        {"analysis", "border", "-3", "-3", {{"65", "-64..64"}, {"-65", "-64..64"}}},
        {"analysis", "fill_holes", "yes", "true", {{"maybe", "true/false"}, {"2", "true/false"}}},
        {"analysis",
         "seed",
         "18446744073709551615",
         "18446744073709551615",
         {{"-1", "0..18446744073709551615"},
          {"18446744073709551616", "0..18446744073709551615"},
          {"x", "0..18446744073709551615"}}},
        {"analysis", "bf_radius", "12.5", "12.5", {{"-1", "0..65536"}, {"65537", "0..65536"}}},
        {"analysis", "df_inner", "20", "20", {{"-0.5", "0..65536"}}},
        {"analysis", "df_outer", "40", "40", {{"1e6", "0..65536"}}},
        {"analysis",
         "center_x",
         "1030.5",
         "1030.5",
         {{"inf", "-65536..65536"}, {"x", "-65536..65536"}, {"70000", "-65536..65536"}}},
        {"analysis", "center_y", "-12", "-12", {{"1e999", "-65536..65536"}, {"0x1p4", "hexadecimal"}}},
        {"scan",
         "shape",
         "64x128",
         "64x128",
         {{"64", "NYxNX"}, {"0x5", "16777216"}, {"8192x8192", "16777216"}, {"-3x4", "NYxNX"}}},
        {"scan", "snake", "on", "true", {{"sideways", "true/false"}}},
        {"scan", "fast_axis", "y", "y", {{"z", "x, y"}, {"X", "x, y"}}},
        {"scan", "origin", "-1.5, 2", "-1.5,2", {{"1", "A,B"}, {"1,nan", "A,B"}, {"1, 0x2", "hexadecimal"}}},
        {"scan", "step", "0.05,-0.05", "0.05,-0.05", {{"0,1", "non-zero"}, {"1;2", "A,B"}}},
        {"scan", "units", "um", "um", {{"micrometres!!!!!", "longer than 15"}}},
        {"feedback", "rescan_factor", "4", "4", {{"0.5", "1..16"}, {"17", "1..16"}}},
        {"feedback", "next_points", "0", "0", {{"4097", "0..4096"}}},
        {"feedback", "stable_refits", "10", "10", {{"0", "1..1000"}}},
        {"pipeline", "workers", "8", "8", {{"0", "1..64"}, {"65", "1..64"}}},
        {"pipeline", "queue_depth", "1024", "1024", {{"1", "2..65536"}}},
        {"pipeline", "queue_full", "drop", "drop", {{"block", "wait, drop"}}},
        {"limits",
         "max_message_bytes",
         "1G",
         "1G",
         {{"1", "4K..64G"},
          {"65G", "4K..64G"},
          {"12Q", "4K..64G"},
          {"99999999999999999999", "4K..64G"},
          {"20000000000T", "4K..64G"}}},
        {"limits", "max_parts", "64", "64", {{"3", "4..1024"}}},
        {"limits", "max_json_bytes", "1048577", "1048577", {{"2G", "1K..1G"}}},
        {"limits", "max_pixels", "16M", "16M", {{"0", "1..4G"}}},
        {"limits", "max_frame_bytes", "3000000", "3000000", {{"100", "1K..64G"}}},
        {"limits", "max_images", "5000", "5000", {{"0", "1..1000000000000"}}},
        {"limits", "max_analysis_bytes", "2G", "2G", {{"2T", "0..1T"}, {"-1", "0..1T"}}},
        {"limits", "max_depth", "8", "8", {{"0", "1..256"}, {"257", "1..256"}}},
        {"limits", "max_request_bytes", "1M", "1M", {{"63", "64..16M"}, {"17M", "64..16M"}}},
        {"service", "log_level", "debug", "debug", {{"verbose", "err, warning, notice, info, debug"}}},
        {"service", "watchdog_stall", "30", "30", {{"0.5", "1..3600"}}},
        {"service", "idle_timeout", "2.5", "2.5", {{"-1", "0..604800"}}},
        {"detector", "series_timeout", "30", "30", {{"-1", "0..604800"}}},
        {"service", "exit_after_series", "3", "3", {{"-2", "0..1000000000"}}},
};
#define N_CASES (sizeof cases / sizeof cases[0])

static char *format(const roid_config *c) {
        int n = roid_config_format(c, NULL, 0);
        char *s = malloc((size_t)n + 1);
        roid_config_format(c, s, (size_t)n + 1);
        return s;
}

/* Lines of a and b that differ (both have the same keys in the same order). */
static int lines_differ(const char *a, const char *b) {
        int d = 0;
        while (*a || *b) {
                size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
                if (la != lb || memcmp(a, b, la) != 0)
                        d++;
                a += la + (a[la] == '\n');
                b += lb + (b[lb] == '\n');
        }
        return d;
}

static const char *tmp_write(const char *text) {
        static char path[64];
        snprintf(path, sizeof path, "/tmp/roid-test-config-XXXXXX");
        int fd = mkstemp(path);
        if (fd < 0)
                return NULL;
        size_t n = strlen(text);
        if (write(fd, text, n) != (ssize_t)n) {
                close(fd);
                return NULL;
        }
        close(fd);
        return path;
}

static bool has(const char *hay, const char *needle) {
        return hay && strstr(hay, needle) != NULL;
}

static void test_defaults(void) {
        roid_config c;
        roid_config_default(&c);
        tap_ok(strcmp(c.detector, "tcp://127.0.0.1:31001") == 0, "default detector endpoint");
        tap_ok(strcmp(c.channel, "#0") == 0, "default channel #0");
        tap_ok(c.rcvhwm == 1000 && c.sndhwm == 100, "default high-water marks 1000 / 100");
        tap_ok(c.publish[0] == 0 && c.control[0] == 0 && c.analysis.output_dir[0] == 0, "outputs off by default");
        tap_ok(c.map_interval == 1.0 && c.status_interval == 1.0 && c.flush_interval == 1.0 && c.frame_every == 0,
               "default intervals 1 s, no frame topic");
        tap_ok(c.analysis.roi.n_segments == 8 && c.analysis.roi.k == 4 && c.analysis.roi.cadence == 64 &&
                       c.analysis.roi.border == 0 && !c.analysis.roi.fill_holes && c.analysis.roi.seed == 1,
               "default analysis: 8 segments, k 4, cadence 64, border 0, no fill, seed 1");
        tap_ok(c.analysis.r_bf == 0 && c.analysis.r_df_out == 0 && !c.analysis.roi.use_bf && !c.analysis.roi.use_df,
               "no BF / DF by default");
        tap_ok(isnan(c.analysis.center_x) && isnan(c.analysis.center_y), "no configured centre");
        tap_ok(c.analysis.scan.source == ROID_SCAN_FROM_NONE && c.analysis.scan.step_x == 1 &&
                       c.analysis.scan.step_y == 1 && c.analysis.scan.fast_axis == ROID_SCAN_FAST_X,
               "no configured grid; step 1,1, fast axis x");
        tap_ok(c.rescan_factor == 2 && c.next_points == 32 && c.stable_refits == 3, "default feedback 2 / 32 / 3");
        tap_ok(c.workers == 1 && c.queue_depth == 256 && c.queue_full == ROID_QUEUE_WAIT,
               "default pipeline 1 worker, 256 deep, wait");
        tap_ok(c.limits.max_message_bytes == (size_t)512 << 20 && c.limits.max_parts == 32 &&
                       c.limits.max_json_bytes == (size_t)4 << 20 && c.limits.max_pixels == (uint64_t)64 << 20 &&
                       c.limits.max_frame_bytes == (uint64_t)256 << 20 && c.limits.max_images == 100000000 &&
                       c.limits.max_depth == 32 && c.analysis.max_depth == 32 && c.max_request_bytes == 65536,
               "default limits");
        tap_ok(c.log_level == ROID_LOG_INFO && c.watchdog_stall == 10 && c.idle_timeout == 0 &&
                       c.exit_after_series == 0,
               "default service: info, 10 s watchdog, no idle timeout, run forever");
        roid_err err = {""};
        tap_ok(roid_config_validate(&c, &err) == 0, "defaults validate (%s)", err.msg);

        size_t n;
        const roid_config_key *k = roid_config_keys(&n);
        int bad_def = 0;
        char text[5000];
        for (size_t i = 0; i < n; i++) {
                roid_config_get(&c, k[i].section, k[i].key, text, sizeof text);
                if (strcmp(text, k[i].def) != 0) {
                        tap_diag("[%s] %s: table default '%s', effective '%s'", k[i].section, k[i].key, k[i].def, text);
                        bad_def++;
                }
                if (!k[i].help || !*k[i].help)
                        bad_def++;
        }
        tap_ok(bad_def == 0, "every table default is the effective default, every key has help");
        tap_ok(roid_config_get(&c, "analysis", "nope", text, sizeof text) == -ENOENT, "get of an unknown key");
}

static void test_table_covered(void) {
        size_t n;
        const roid_config_key *k = roid_config_keys(&n);
        int missing = 0;
        for (size_t i = 0; i < n; i++) {
                bool found = false;
                for (size_t j = 0; j < N_CASES; j++)
                        found |= strcmp(cases[j].section, k[i].section) == 0 && strcmp(cases[j].key, k[i].key) == 0;
                if (!found) {
                        tap_diag("no test case for [%s] %s", k[i].section, k[i].key);
                        missing++;
                }
        }
        for (size_t j = 0; j < N_CASES; j++)
                if (!roid_config_find(cases[j].section, cases[j].key)) {
                        tap_diag("test case for a key not in the table: [%s] %s", cases[j].section, cases[j].key);
                        missing++;
                }
        tap_ok(missing == 0 && n == N_CASES, "every key of the table has a test case (%zu keys)", n);

        /* Options: unique, and not one of main's own. */
        static const char *const fixed[] = {"help", "version", "verbose", "quiet", "config", "print-config"};
        int clash = 0;
        for (size_t i = 0; i < n; i++) {
                if (!k[i].option)
                        continue;
                for (size_t j = i + 1; j < n; j++)
                        clash += k[j].option && strcmp(k[i].option, k[j].option) == 0;
                for (size_t j = 0; j < sizeof fixed / sizeof fixed[0]; j++)
                        clash += strcmp(k[i].option, fixed[j]) == 0;
        }
        tap_ok(clash == 0, "options are unique and do not clash with main's");
        const roid_config_key *f = roid_config_find("analysis", "fill_holes");
        tap_ok(f && f->option && strcmp(f->option, "fill-holes") == 0 && f->arg == NULL,
               "fill_holes is the flag --fill-holes");
        const roid_config_key *e = roid_config_find("detector", "endpoint");
        tap_ok(e && strcmp(e->option, "detector") == 0 && e->arg, "endpoint is --detector ENDPOINT");
}

static void test_keys(void) {
        memset(long_path, 'a', sizeof long_path - 1);
        long_path[0] = '/';
        roid_config def;
        roid_config_default(&def);
        char *def_text = format(&def);
        for (size_t i = 0; i < N_CASES; i++) {
                const key_case *t = &cases[i];
                char name[64];
                snprintf(name, sizeof name, "[%s] %s", t->section, t->key);
                roid_config c = def;
                roid_err err = {""};
                int r = roid_config_set(&c, t->section, t->key, t->good, &err);
                char text[5000] = "";
                roid_config_get(&c, t->section, t->key, text, sizeof text);
                char *after = format(&c);
                tap_ok(r == 0 && strcmp(text, t->good_text) == 0 && lines_differ(def_text, after) == 1,
                       "%s = '%s' reads back '%s' and changes one line (r %d, %s)", name, t->good, text, r, err.msg);
                free(after);
                for (int b = 0; b < MAX_BAD && t->bads[b].v; b++) {
                        roid_config before = c;
                        err.msg[0] = 0;
                        r = roid_config_set(&c, t->section, t->key, t->bads[b].v, &err);
                        bool same = memcmp(&before, &c, sizeof c) == 0;
                        tap_ok(r == -EINVAL && has(err.msg, name) && has(err.msg, t->bads[b].want) && same,
                               "%s = '%.20s' refused, cfg untouched: %s", name, t->bads[b].v, err.msg);
                }
        }
        free(def_text);

        /* The fields behind the text. */
        roid_config c = def;
        roid_err err;
        roid_config_set(&c, "analysis", "k", "6", &err);
        roid_config_set(&c, "analysis", "bf_radius", "12.5", &err);
        roid_config_set(&c, "analysis", "df_inner", "20", &err);
        roid_config_set(&c, "analysis", "df_outer", "40", &err);
        roid_config_set(&c, "scan", "shape", "64x128", &err);
        roid_config_set(&c, "limits", "max_depth", "8", &err);
        roid_config_set(&c, "limits", "max_message_bytes", "1G", &err);
        roid_config_set(&c, "pipeline", "queue_full", "drop", &err);
        roid_config_set(&c, "service", "log_level", "debug", &err);
        roid_config_set(&c, "analysis", "seed", "18446744073709551615", &err);
        roid_config_set(&c, "scan", "step", "0.05,-0.05", &err);
        roid_config_set(&c, "analysis", "center_x", "1030.5", &err);
        tap_ok(c.analysis.roi.k == 6, "k sets analysis.roi.k");
        tap_ok(c.analysis.r_bf == 12.5 && c.analysis.roi.use_bf, "bf_radius sets r_bf and use_bf");
        tap_ok(c.analysis.r_df_in == 20 && c.analysis.r_df_out == 40 && c.analysis.roi.use_df, "df_outer sets use_df");
        tap_ok(c.analysis.scan.ny == 64 && c.analysis.scan.nx == 128 && c.analysis.scan.source == ROID_SCAN_FROM_CONFIG,
               "shape 64x128: 64 rows, 128 columns, from config");
        tap_ok(c.limits.max_depth == 8 && c.analysis.max_depth == 8, "max_depth sets both depths");
        {
                const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
                tap_ok(def.limits.max_analysis_bytes == 0 &&
                               def.analysis.roi.max_state_bytes == roid_limits_analysis_bytes(&def.limits) &&
                               def.analysis.roi.max_state_bytes <= (uint64_t)pages * (uint64_t)page / 2,
                       "max_analysis_bytes 0 (the default) bounds the RoI state by at most half the memory (%.1f GiB)",
                       (double)def.analysis.roi.max_state_bytes / (1u << 30));
                roid_config_set(&c, "limits", "max_analysis_bytes", "3G", &err);
                tap_ok(c.limits.max_analysis_bytes == (uint64_t)3 << 30 &&
                               c.analysis.roi.max_state_bytes == (uint64_t)3 << 30,
                       "max_analysis_bytes 3G bounds the RoI state by 3 GiB");
        }
        tap_ok(c.limits.max_message_bytes == (size_t)1 << 30, "1G is 2^30 bytes");
        tap_ok(c.queue_full == ROID_QUEUE_DROP && c.log_level == ROID_LOG_DEBUG, "enums stored");
        tap_ok(c.analysis.roi.seed == UINT64_MAX, "seed takes the whole uint64 range");
        tap_ok(c.analysis.scan.step_x == 0.05 && c.analysis.scan.step_y == -0.05, "step pair stored");
        tap_ok(c.analysis.center_x == 1030.5, "center_x stored");
        roid_config_set(&c, "scan", "shape", "3,4", &err);
        tap_ok(c.analysis.scan.ny == 3 && c.analysis.scan.nx == 4, "shape also as ny,nx");
        roid_config_set(&c, "scan", "shape", "", &err);
        tap_ok(c.analysis.scan.source == ROID_SCAN_FROM_NONE, "empty shape: no configured grid");
        roid_config_set(&c, "analysis", "bf_radius", "0", &err);
        roid_config_set(&c, "analysis", "center_x", "", &err);
        tap_ok(!c.analysis.roi.use_bf && isnan(c.analysis.center_x), "bf_radius 0 clears use_bf; empty centre NaN");
        roid_config_set(&c, "output", "publish", "\"\"", &err);
        roid_config_set(&c, "output", "directory", "\"/data/run 1\"", &err);
        tap_ok(c.publish[0] == 0 && strcmp(c.analysis.output_dir, "/data/run 1") == 0, "quotes are removed once");

        /* Unknown names. */
        roid_config before = c;
        err.msg[0] = 0;
        int r = roid_config_set(&c, "analysis", "kk", "3", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[analysis] kk") && has(err.msg, "did you mean k?"),
               "unknown key, closest suggested: %s", err.msg);
        r = roid_config_set(&c, "analysys", "k", "3", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[analysys]") && has(err.msg, "unknown section") &&
                       has(err.msg, "[analysis]"),
               "unknown section, closest suggested: %s", err.msg);
        r = roid_config_set(&c, "analysis", "directory", "/tmp", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[analysis] directory") && has(err.msg, "[output]"),
               "a key of another section says which: %s", err.msg);
        r = roid_config_set(&c, "service", "zzzzzzzz", "1", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[service] zzzzzzzz: unknown key") && !has(err.msg, "did you mean"),
               "nothing close, nothing suggested: %s", err.msg);
        tap_ok(memcmp(&before, &c, sizeof c) == 0, "unknown names leave cfg untouched");
}

static char *slurp_text(const char *path) {
        size_t n;
        uint8_t *b = tap_slurp(path, &n);
        if (!b)
                return NULL;
        char *s = realloc(b, n + 1);
        s[n] = 0;
        return s;
}

static const char *src_path(const char *rel) {
        static char buf[4096];
        const char *src = getenv("ROID_SRC");
        snprintf(buf, sizeof buf, "%s/%s", src ? src : ".", rel);
        return buf;
}

static void test_example_file(void) {
        roid_config def, c;
        roid_config_default(&def);
        /* Start from every key changed: the example must set every one back. */
        roid_config_default(&c);
        roid_err err = {""};
        for (size_t i = 0; i < N_CASES; i++)
                roid_config_set(&c, cases[i].section, cases[i].key, cases[i].good, &err);
        const char *path = src_path("config/roid.conf");
        int r = roid_config_load(&c, path, &err);
        tap_ok(r == 0, "load %s (%s)", path, err.msg);
        char *a = format(&def), *b = format(&c);
        tap_ok(strcmp(a, b) == 0, "config/roid.conf sets every key to its default");
        if (strcmp(a, b) != 0)
                tap_diag("defaults:\n%s\nloaded:\n%s", a, b);
        free(a);
        free(b);
        tap_ok(c.analysis.roi.use_bf == def.analysis.roi.use_bf && c.analysis.roi.use_df == def.analysis.roi.use_df &&
                       c.analysis.max_depth == def.analysis.max_depth && c.analysis.scan.source == ROID_SCAN_FROM_NONE,
               "and the derived fields too");
}

static void test_files(void) {
        roid_config def, c;
        roid_config_default(&def);
        roid_err err = {""};
        char want[128];

        const char *p = tmp_write("[analysis]\nk = 3\nthis is not ini\nsegments = 4\n");
        c = def;
        err.msg[0] = 0;
        int r = roid_config_load(&c, p, &err);
        snprintf(want, sizeof want, "%s:3:", p);
        tap_ok(r == -EINVAL && has(err.msg, want) && memcmp(&c, &def, sizeof c) == 0,
               "syntax error names line 3, cfg untouched: %s", err.msg);
        unlink(p);

        p = tmp_write("# roid\n[analysis]\n\nk = 3\n; comment\nk = 99\n");
        err.msg[0] = 0;
        r = roid_config_load(&c, p, &err);
        snprintf(want, sizeof want, "%s:6: [analysis] k: '99' is out of range 2..16", p);
        tap_ok(r == -EINVAL && has(err.msg, want) && memcmp(&c, &def, sizeof c) == 0,
               "bad value names file, line, key, range; earlier keys not applied: %s", err.msg);
        unlink(p);

        p = tmp_write("[analysis\nk = 3\n");
        r = roid_config_load(&c, p, &err);
        snprintf(want, sizeof want, "%s:1:", p);
        tap_ok(r == -EINVAL && has(err.msg, want), "unclosed section header: %s", err.msg);
        unlink(p);

        p = tmp_write("k = 3\n");
        r = roid_config_load(&c, p, &err);
        tap_ok(r == -EINVAL && has(err.msg, ":1:") && has(err.msg, "outside a section"), "key before a section: %s",
               err.msg);
        unlink(p);

        p = tmp_write("[pipeline]\nworkrs = 2\n");
        r = roid_config_load(&c, p, &err);
        tap_ok(r == -EINVAL && has(err.msg, ":2: [pipeline] workrs") && has(err.msg, "did you mean workers?"),
               "unknown key in a file: %s", err.msg);
        unlink(p);

        char big[600];
        snprintf(big, sizeof big, "[output]\nmap_interval = 2\ndirectory = /%0400d\n", 0);
        p = tmp_write(big);
        r = roid_config_load(&c, p, &err);
        tap_ok(r == -EINVAL && has(err.msg, ":3:") && has(err.msg, "longer than") && memcmp(&c, &def, sizeof c) == 0,
               "an over-long line is refused, not cut: %s", err.msg);
        unlink(p);

        /* Indented keys, inline comments, duplicates, quotes, CRLF. */
        p = tmp_write("[analysis]\n   k = 5 ; five\n\tsegments = 4\nsegments = 16\r\n[output]\ndirectory = \"\"\n"
                      "publish = tcp://0.0.0.0:5557\n");
        c = def;
        snprintf(c.analysis.output_dir, sizeof c.analysis.output_dir, "/somewhere");
        err.msg[0] = 0;
        r = roid_config_load(&c, p, &err);
        tap_ok(r == 0 && c.analysis.roi.k == 5 && c.analysis.roi.n_segments == 16 && c.analysis.output_dir[0] == 0 &&
                       strcmp(c.publish, "tcp://0.0.0.0:5557") == 0 && c.analysis.roi.cadence == 64,
               "indented keys, inline comment, last duplicate wins, quoted empty, CRLF; others kept (%s)", err.msg);
        unlink(p);

        c = def;
        r = roid_config_load(&c, "/nonexistent/roid.conf", &err);
        tap_ok(r == -ENOENT && has(err.msg, "/nonexistent/roid.conf") && memcmp(&c, &def, sizeof c) == 0,
               "missing file: -ENOENT naming the path: %s", err.msg);
        r = roid_config_load(&c, "/tmp", &err);
        tap_ok(r < 0 && has(err.msg, "/tmp"), "a directory is refused: %s", err.msg);
}

static void test_round_trip(void) {
        roid_config c, d;
        roid_config_default(&c);
        roid_err err = {""};
        int fails = 0;
        for (size_t i = 0; i < N_CASES; i++)
                fails += roid_config_set(&c, cases[i].section, cases[i].key, cases[i].good, &err) < 0;
        /* Values that need care in a file. */
        fails += roid_config_set(&c, "output", "directory", "\" /data/with spaces \"", &err) < 0;
        fails += roid_config_set(&c, "scan", "units", "\"\"q\"\"", &err) < 0;
        fails += roid_config_set(&c, "output", "map_interval", "0.1", &err) < 0;
        fails += roid_config_set(&c, "scan", "origin", "0.30000000000000004,1e-300", &err) < 0;
        tap_ok(fails == 0, "every key set to a non-default value (%s)", err.msg);
        tap_ok(roid_config_validate(&c, &err) == 0, "the non-default config validates (%s)", err.msg);
        tap_ok(strcmp(c.analysis.output_dir, " /data/with spaces ") == 0 && strcmp(c.analysis.scan.units, "\"q\"") == 0,
               "quoted strings keep inner blanks and quotes");

        char *text = format(&c);
        const char *p = tmp_write(text);
        roid_config_default(&d);
        int r = roid_config_load(&d, p, &err);
        unlink(p);
        char *again = format(&d);
        tap_ok(r == 0 && strcmp(text, again) == 0, "format -> load -> format is the same text (%s)", err.msg);
        tap_ok(strcmp(d.analysis.output_dir, c.analysis.output_dir) == 0 &&
                       strcmp(d.analysis.scan.units, c.analysis.scan.units) == 0 &&
                       d.analysis.scan.origin_x == c.analysis.scan.origin_x &&
                       d.analysis.scan.origin_y == c.analysis.scan.origin_y && d.map_interval == c.map_interval &&
                       d.analysis.roi.seed == c.analysis.roi.seed && d.analysis.roi.k == c.analysis.roi.k &&
                       d.analysis.center_x == c.analysis.center_x && d.analysis.center_y == c.analysis.center_y &&
                       d.analysis.roi.use_bf && d.analysis.roi.use_df && d.analysis.max_depth == 8 &&
                       d.limits.max_message_bytes == c.limits.max_message_bytes &&
                       d.limits.max_json_bytes == c.limits.max_json_bytes && d.queue_full == c.queue_full &&
                       d.analysis.scan.ny == 64 && d.analysis.scan.nx == 128 &&
                       d.analysis.scan.source == ROID_SCAN_FROM_CONFIG && d.exit_after_series == 3 &&
                       d.analysis.roi.border == -3,
               "the loaded fields equal the set ones, doubles exactly");
        int n = roid_config_format(&c, NULL, 0);
        char small[16];
        int n2 = roid_config_format(&c, small, sizeof small);
        tap_ok(n == (int)strlen(text) && n2 == n && strlen(small) == sizeof small - 1 &&
                       memcmp(small, text, sizeof small - 1) == 0,
               "format has snprintf semantics (%d bytes)", n);
        free(text);
        free(again);
}

static void test_validate(void) {
        roid_config def, c;
        roid_config_default(&def);
        roid_err err = {""};

        c = def;
        roid_config_set(&c, "analysis", "df_inner", "40", &err);
        roid_config_set(&c, "analysis", "df_outer", "20", &err);
        int r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "df_inner") && has(err.msg, "df_outer"), "df_inner >= df_outer: %s",
               err.msg);
        roid_config_set(&c, "analysis", "df_outer", "40", &err);
        tap_ok(roid_config_validate(&c, &err) == -EINVAL, "df_inner == df_outer refused");
        roid_config_set(&c, "analysis", "df_outer", "40.5", &err);
        err.msg[0] = 0;
        tap_ok(roid_config_validate(&c, &err) == 0, "df_inner < df_outer accepted (%s)", err.msg);
        roid_config_set(&c, "analysis", "df_outer", "0", &err);
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "df_inner") && has(err.msg, "df_outer"), "df_inner without df_outer: %s",
               err.msg);

        c = def;
        roid_config_set(&c, "analysis", "center_x", "512", &err);
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "center_x") && has(err.msg, "center_y"), "only center_x: %s", err.msg);
        c = def;
        roid_config_set(&c, "analysis", "center_y", "512", &err);
        tap_ok(roid_config_validate(&c, &err) == -EINVAL, "only center_y refused");
        roid_config_set(&c, "analysis", "center_x", "-3.5", &err);
        err.msg[0] = 0;
        tap_ok(roid_config_validate(&c, &err) == 0, "both coordinates accepted");

        c = def;
        roid_config_set(&c, "output", "publish", "tcp://0.0.0.0:5557", &err);
        roid_config_set(&c, "output", "control", "tcp://0.0.0.0:5557", &err);
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "publish") && has(err.msg, "control"), "publish == control: %s", err.msg);

        /* Set in code, out of range. */
        c = def;
        c.analysis.roi.k = 99;
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[analysis] k") && has(err.msg, "2..16"), "k = 99 set in code: %s",
               err.msg);
        c = def;
        c.map_interval = NAN;
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[output] map_interval"), "NaN interval set in code: %s", err.msg);
        c = def;
        c.log_level = 42;
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[service] log_level"), "log level 42 set in code: %s", err.msg);
        c = def;
        c.detector[0] = 0;
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[detector] endpoint"), "empty detector endpoint: %s", err.msg);
}

/* Drops troff's escapes before '-' so "\-\-output\-dir" reads --output-dir. */
static void unescape_dashes(char *s) {
        char *w = s;
        for (char *r = s; *r; r++) {
                if (r[0] == '\\' && r[1] == '-')
                        continue;
                *w++ = *r;
        }
        *w = 0;
}

/* The text between ".SH NAME" and the next ".SH", or NULL. */
static char *man_section(const char *man, const char *name) {
        char head[64];
        snprintf(head, sizeof head, "\n.SH %s", name);
        const char *a = strstr(man, head);
        if (!a)
                return NULL;
        a += strlen(head);
        const char *b = strstr(a, "\n.SH ");
        size_t n = b ? (size_t)(b - a) : strlen(a);
        char *s = malloc(n + 1);
        memcpy(s, a, n);
        s[n] = 0;
        return s;
}

static void test_docs(void) {
        size_t n;
        const roid_config_key *k = roid_config_keys(&n);

        /* config/roid.conf: each key once in its section with its default,
         * after comment lines. */
        char *conf = slurp_text(src_path("config/roid.conf"));
        tap_ok(conf != NULL, "config/roid.conf readable");
        int conf_missing = 0;
        for (size_t i = 0; conf && i < n; i++) {
                char section[64] = "", prev[512] = "";
                int found = 0;
                bool commented = false, right_value = false;
                for (const char *l = conf; *l;) {
                        size_t len = strcspn(l, "\n");
                        char line[512];
                        snprintf(line, sizeof line, "%.*s", (int)(len < 511 ? len : 511), l);
                        if (line[0] == '[')
                                snprintf(section, sizeof section, "%.*s", (int)strcspn(line + 1, "]"), line + 1);
                        size_t kl = strlen(k[i].key);
                        if (strcmp(section, k[i].section) == 0 && strncmp(line, k[i].key, kl) == 0 &&
                            (line[kl] == ' ' || line[kl] == '=')) {
                                found++;
                                commented = prev[0] == '#';
                                const char *v = line + kl + strspn(line + kl, " =");
                                right_value = strcmp(v, k[i].def) == 0;
                        }
                        snprintf(prev, sizeof prev, "%s", line);
                        l += len + (l[len] == '\n');
                }
                if (found != 1 || !commented || !right_value) {
                        tap_diag("config/roid.conf: [%s] %s found %d times, commented %d, default %d", k[i].section,
                                 k[i].key, found, commented, right_value);
                        conf_missing++;
                }
        }
        tap_ok(conf && conf_missing == 0, "config/roid.conf has every key once, commented, with its default");
        free(conf);

        char *man = slurp_text(src_path("deploy/roid.8"));
        tap_ok(man != NULL, "deploy/roid.8 readable");
        if (!man)
                return;
        unescape_dashes(man);
        static const char *const sections[] = {"NAME",    "SYNOPSIS", "DESCRIPTION", "OPTIONS", "CONFIGURATION",
                                               "SIGNALS", "FILES",    "EXIT STATUS", "SEE ALSO"};
        int sec_missing = 0;
        for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
                char *s = man_section(man, sections[i]);
                if (!s) {
                        tap_diag("deploy/roid.8: no .SH %s", sections[i]);
                        sec_missing++;
                }
                free(s);
        }
        tap_ok(sec_missing == 0, "roid.8 has every section");
        char *opts = man_section(man, "OPTIONS"), *conf_sec = man_section(man, "CONFIGURATION");
        int man_missing = 0;
        for (size_t i = 0; i < n; i++) {
                char want[96];
                if (k[i].option) {
                        snprintf(want, sizeof want, "--%s", k[i].option);
                        if (!has(opts, want)) {
                                tap_diag("roid.8 OPTIONS lacks %s", want);
                                man_missing++;
                        }
                }
                /* Keys are set in bold at the start of a line: ".B key" or ".TP\n.B key". */
                snprintf(want, sizeof want, ".B %s\n", k[i].key);
                char want2[96];
                snprintf(want2, sizeof want2, ".BR %s ", k[i].key);
                if (!has(conf_sec, want) && !has(conf_sec, want2)) {
                        tap_diag("roid.8 CONFIGURATION lacks [%s] %s", k[i].section, k[i].key);
                        man_missing++;
                }
        }
        static const char *const fixed[] = {"--help", "--version", "--config", "--print-config", "-v", "-q"};
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
                if (!has(opts, fixed[i])) {
                        tap_diag("roid.8 OPTIONS lacks %s", fixed[i]);
                        man_missing++;
                }
        tap_ok(man_missing == 0, "roid.8 lists every option and every key");
        free(opts);
        free(conf_sec);
        free(man);
}

/* Files of valid lines, near misses and random bytes: each loads or is
 * refused with a message, and a refused one changes nothing. */
static void test_garbage(void) {
        static const char *const pieces[] = {"[analysis]\n",
                                             "[scan]\n",
                                             "k = 5\n",
                                             "k = 500\n",
                                             "shape = 3x4\n",
                                             "[limits\n",
                                             "= 3\n",
                                             "max_depth = 4\n",
                                             "  \t\n",
                                             "; x\n",
                                             "fast_axis = y ; c\n",
                                             "[output]\n",
                                             "directory = \"\"\n",
                                             "\r\n"};
        uint64_t s = 12345;
        int loaded = 0, refused = 0, bad = 0;
        roid_config def;
        roid_config_default(&def);
        for (int it = 0; it < 300; it++) {
                char text[1024];
                size_t n = 0;
                int parts = 1 + (int)(s % 8);
                for (int j = 0; j < parts; j++) {
                        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                        if ((s >> 60) < 1) { /* a few random bytes, NUL included */
                                for (int b = 0; b < 12 && n < sizeof text - 2; b++) {
                                        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
                                        text[n++] = (char)(s >> 56);
                                }
                        } else {
                                const char *p = pieces[(s >> 33) % (sizeof pieces / sizeof pieces[0])];
                                size_t l = strlen(p);
                                if (n + l < sizeof text - 1) {
                                        memcpy(text + n, p, l);
                                        n += l;
                                }
                        }
                }
                char path[] = "/tmp/roid-test-config-XXXXXX";
                int fd = mkstemp(path);
                if (fd < 0 || write(fd, text, n) != (ssize_t)n)
                        bad++;
                close(fd);
                roid_config c = def;
                roid_err err = {""};
                int r = roid_config_load(&c, path, &err);
                unlink(path);
                if (r == 0) {
                        loaded++;
                } else {
                        refused++;
                        if (memcmp(&c, &def, sizeof c) != 0 || !err.msg[0] || !has(err.msg, path))
                                bad++;
                }
        }
        tap_ok(bad == 0 && loaded > 0 && refused > 0,
               "300 mixed files: %d loaded, %d refused with a message naming the file, nothing changed on refusal",
               loaded, refused);
}

/* Every string value, whatever sets it, fits in one "key = value" line of
 * ROID_CONFIG_LINE_MAX characters, so --print-config's output loads. */
static void test_line_fit(void) {
        roid_config def, c;
        roid_config_default(&def);
        roid_err err = {""};
        char v[300];
        /* "directory = " is 12 characters: 185 bytes of value fill the line. */
        memset(v, 0, sizeof v);
        v[0] = '/';
        memset(v + 1, 'd', 184);
        c = def;
        int r = roid_config_set(&c, "output", "directory", v, &err);
        tap_ok(r == 0 && strlen(c.analysis.output_dir) == 185, "a 185-byte directory fills a line and is taken (%s)",
               err.msg);
        char *text = format(&c);
        const char *p = tmp_write(text);
        roid_config d = def;
        r = roid_config_load(&d, p, &err);
        unlink(p);
        tap_ok(r == 0 && strcmp(d.analysis.output_dir, v) == 0, "and its formatted configuration loads (%s)", err.msg);
        free(text);

        v[185] = 'd';
        c = def;
        err.msg[0] = 0;
        r = roid_config_set(&c, "output", "directory", v, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[output] directory") && has(err.msg, "186 bytes") && has(err.msg, "185") &&
                       has(err.msg, "197") && memcmp(&c, &def, sizeof c) == 0,
               "a 186-byte directory (command line, control set) is refused naming key, length, limit: %s", err.msg);

        /* Quotes a value needs count: a leading blank leaves 183 bytes. */
        memset(v, 0, sizeof v);
        v[0] = '"';
        v[1] = ' ';
        memset(v + 2, 'q', 182);
        v[184] = '"';
        c = def;
        err.msg[0] = 0;
        r = roid_config_set(&c, "output", "directory", v, &err);
        text = format(&c);
        p = tmp_write(text);
        d = def;
        int r2 = roid_config_load(&d, p, &err);
        unlink(p);
        tap_ok(r == 0 && r2 == 0 && strlen(d.analysis.output_dir) == 183 && d.analysis.output_dir[0] == ' ',
               "a 183-byte directory that needs quotes is taken and loads again (%d, %d, %s)", r, r2, err.msg);
        free(text);
        memmove(v + 3, v + 2, 183);
        v[2] = 'q';
        c = def;
        r = roid_config_set(&c, "output", "directory", v, &err);
        tap_ok(r == -EINVAL && has(err.msg, "184 bytes") && has(err.msg, "183") && has(err.msg, "quotes"),
               "a 184-byte one is refused, quotes counted: %s", err.msg);

        /* Endpoints' fields hold 255 bytes; the line holds 186 after "endpoint = ". */
        memset(v, 0, sizeof v);
        memcpy(v, "ipc:///", 7);
        memset(v + 7, 'e', 180);
        c = def;
        r = roid_config_set(&c, "detector", "endpoint", v, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[detector] endpoint") && has(err.msg, "187 bytes") && has(err.msg, "186"),
               "a 187-byte endpoint is refused: %s", err.msg);
        v[186] = 0;
        c = def;
        err.msg[0] = 0;
        r = roid_config_set(&c, "detector", "endpoint", v, &err);
        tap_ok(r == 0, "a 186-byte endpoint is taken (%s)", err.msg);

        /* A file line with less spacing than the formatted one: refused by key too. */
        char line[300];
        snprintf(line, sizeof line, "[output]\ndirectory=/%0185d\n", 0);
        p = tmp_write(line);
        c = def;
        r = roid_config_load(&c, p, &err);
        unlink(p);
        tap_ok(r == -EINVAL && has(err.msg, ":2: [output] directory") && has(err.msg, "186 bytes") &&
                       memcmp(&c, &def, sizeof c) == 0,
               "a file's 196-character 'directory=' line whose value would not fit 'directory = ' is refused: %s",
               err.msg);

        /* A configuration built in code: validate says so. */
        c = def;
        memset(c.analysis.output_dir, 'x', 190);
        r = roid_config_validate(&c, &err);
        tap_ok(r == -EINVAL && has(err.msg, "[output] directory") && has(err.msg, "190 bytes"),
               "validate refuses a directory set in code that would not fit: %s", err.msg);

        /* CRLF: the '\r' does not count, a 197-character line still loads. */
        snprintf(line, sizeof line, "[output]\r\ndirectory = /%0184d\r\n", 0);
        p = tmp_write(line);
        c = def;
        err.msg[0] = 0;
        r = roid_config_load(&c, p, &err);
        unlink(p);
        tap_ok(r == 0 && strlen(c.analysis.output_dir) == 185, "a 197-character line ending in CRLF loads (%s)",
               err.msg);
}

/* "key : value" (libinih's other separator) and hexadecimal numbers are refused. */
static void test_syntax_strict(void) {
        roid_config def, c;
        roid_config_default(&def);
        roid_err err = {""};
        char want[128];

        const char *p = tmp_write("[analysis]\nk = 3\nsegments : 4\n");
        c = def;
        int r = roid_config_load(&c, p, &err);
        snprintf(want, sizeof want, "%s:3:", p);
        tap_ok(r == -EINVAL && has(err.msg, want) && has(err.msg, "write key = value") && has(err.msg, "segments") &&
                       memcmp(&c, &def, sizeof c) == 0,
               "'segments : 4' is refused naming file:line: %s", err.msg);
        unlink(p);

        p = tmp_write("[output]\npublish : tcp://0.0.0.0:5557\n");
        c = def;
        r = roid_config_load(&c, p, &err);
        tap_ok(r == -EINVAL && has(err.msg, ":2:") && has(err.msg, "key = value"), "'publish : tcp://...' too: %s",
               err.msg);
        unlink(p);

        /* ':' in values and comments is fine. */
        p = tmp_write(
                "\xef\xbb\xbf; roid: a comment\n[output]\n# another: one\npublish = tcp://0.0.0.0:5557 ; note: x\n"
                "control = ipc:///tmp/a:b\n[scan]\n  units = m:s\n");
        c = def;
        err.msg[0] = 0;
        r = roid_config_load(&c, p, &err);
        tap_ok(r == 0 && strcmp(c.publish, "tcp://0.0.0.0:5557") == 0 && strcmp(c.control, "ipc:///tmp/a:b") == 0 &&
                       strcmp(c.analysis.scan.units, "m:s") == 0,
               "':' inside values and comments (BOM first) loads (%s)", err.msg);
        unlink(p);

        p = tmp_write("[output]\nmap_interval = 0x10\n");
        c = def;
        r = roid_config_load(&c, p, &err);
        tap_ok(r == -EINVAL && has(err.msg, ":2: [output] map_interval") && has(err.msg, "'0x10'") &&
                       has(err.msg, "hexadecimal") && c.map_interval == def.map_interval,
               "map_interval = 0x10 is refused, not read as 16: %s", err.msg);
        unlink(p);
        c = def;
        r = roid_config_set(&c, "scan", "step", "0x1,1", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[scan] step") && has(err.msg, "hexadecimal"), "step 0x1,1 refused: %s",
               err.msg);
        r = roid_config_set(&c, "analysis", "center_x", "-0x10", &err);
        tap_ok(r == -EINVAL && has(err.msg, "[analysis] center_x") && has(err.msg, "hexadecimal"),
               "center_x -0x10 refused: %s", err.msg);
        err.msg[0] = 0;
        r = roid_config_set(&c, "output", "map_interval", "1e1", &err);
        tap_ok(r == 0 && c.map_interval == 10, "a decimal exponent is still a decimal number (%s)", err.msg);
}

static void put_file(const char *dir, const char *rel, const char *text) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, rel);
        /* parents first */
        for (char *s = path + strlen(dir) + 1; (s = strchr(s, '/')); s++) {
                *s = 0;
                mkdir(path, 0700);
                *s = '/';
        }
        FILE *f = fopen(path, "w");
        if (f) {
                fputs(text, f);
                fclose(f);
        }
}

/* The cgroup v2 memory limit, on fake /proc/self/cgroup and cgroup trees. */
static void test_cgroup(void) {
        char root[] = "/tmp/roid-test-cgroup-XXXXXX";
        if (!mkdtemp(root)) {
                tap_ok(false, "mkdtemp");
                return;
        }
        char cg[600], mnt[600];
        snprintf(cg, sizeof cg, "%s/cgroup", root);
        const struct {
                const char *name, *proc;
                const char *files[4][2]; /* path under the mount, content */
                uint64_t want;
        } cases[] = {
                {"limit on the leaf",
                 "12:memory:/x\n0::/system.slice/roid.service\n",
                 {{"system.slice/roid.service/memory.max", "17179869184\n"}, {"system.slice/memory.max", "max\n"}},
                 (uint64_t)16 << 30},
                {"limit only on a parent",
                 "0::/a/b/c\n",
                 {{"a/b/c/memory.max", "max\n"}, {"a/b/memory.max", "max\n"}, {"a/memory.max", "1073741824\n"}},
                 (uint64_t)1 << 30},
                {"the smaller of leaf and parent",
                 "0::/a/b\n",
                 {{"a/b/memory.max", "3221225472\n"}, {"a/memory.max", "2147483648\n"}},
                 (uint64_t)2 << 30},
                {"max everywhere",
                 "0::/a/b\n",
                 {{"a/b/memory.max", "max\n"}, {"a/memory.max", "max\n"}, {"memory.max", "max\n"}},
                 UINT64_MAX},
                {"leaf file missing, parent limited",
                 "0::/a/b\n",
                 {{"a/memory.max", "5368709120\n"}},
                 (uint64_t)5 << 30},
                {"no memory.max anywhere", "0::/a/b\n", {{"a/b/cgroup.procs", "1\n"}}, UINT64_MAX},
                {"garbage is no limit", "0::/a\n", {{"a/memory.max", "12abc\n"}}, UINT64_MAX},
                {"a namespace's root", "0::/\n", {{"memory.max", "536870912\n"}}, (uint64_t)512 << 20},
                {"cgroup v1 only", "4:memory:/a\n1:cpu:/\n", {{"a/memory.max", "1024\n"}}, UINT64_MAX},
                {"outside the namespace", "0::/../x\n", {{"memory.max", "1024\n"}}, UINT64_MAX},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                snprintf(mnt, sizeof mnt, "%s/fs%zu", root, i);
                mkdir(mnt, 0700);
                for (int j = 0; j < 4 && cases[i].files[j][0]; j++)
                        put_file(mnt, cases[i].files[j][0], cases[i].files[j][1]);
                put_file(root, "cgroup", cases[i].proc);
                uint64_t got = roid_limits_cgroup_memory_internal(cg, mnt);
                tap_ok(got == cases[i].want, "cgroup: %s: %llu (want %llu)", cases[i].name, (unsigned long long)got,
                       (unsigned long long)cases[i].want);
        }
        snprintf(mnt, sizeof mnt, "%s/fs0", root);
        snprintf(cg, sizeof cg, "%s/missing", root);
        tap_ok(roid_limits_cgroup_memory_internal(cg, mnt) == UINT64_MAX, "cgroup: no /proc/self/cgroup, no limit");
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
        if (system(cmd) != 0)
                tap_diag("could not remove %s", root);

        /* The real default. */
        roid_limits l;
        roid_limits_default(&l);
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        const uint64_t half = (uint64_t)pages * (uint64_t)page / 2, got = roid_limits_analysis_bytes(&l);
        tap_ok(l.max_analysis_bytes == 0 && got > 0 && got <= half,
               "max_analysis_bytes 0 here: %.2f GiB, at most half the physical memory %.2f GiB",
               (double)got / (1u << 30), (double)half / (1u << 30));
}

int main(void) {
        test_defaults();
        test_table_covered();
        test_keys();
        test_example_file();
        test_files();
        test_round_trip();
        test_validate();
        test_docs();
        test_garbage();
        test_line_fit();
        test_syntax_strict();
        test_cgroup();
        return tap_done();
}
