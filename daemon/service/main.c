/* main.c - the roid command: the daemon (default), record and replay. */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "analysis/analysis.h"
#include "ingest/capture.h"
#include "ingest/h5source.h"
#include "ingest/ingest.h"
#include "ingest/parse.h"
#include "ingest/zsource.h"
#include "outputs/export.h"
#include "outputs/jsonl.h"
#include "outputs/writer.h"
#include "service/config.h"
#include "service/counters.h"
#include "service/daemon.h"
#include "service/limits.h"
#include "service/log.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
        (void)sig;
        stop_requested = 1;
}

static void install_signals(void) {
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *cmd_name = "run";

static void usage(FILE *f) {
        fputs("usage: roid [run] [--config FILE] [OPTIONS]\n"
              "       roid record ENDPOINT FILE [--count N] [--series N] [--idle-timeout S]\n"
              "       roid replay [--jsonl] [--output-dir DIR] [ANALYSIS OPTIONS] [--strict] [--channel NAME]\n"
              "            INPUT...\n"
              "       roid export (--results RESULTS.h5 | --ids LIST) --output FILE.h5 [--deflate N]\n"
              "            [--channel NAME] INPUT...\n"
              "\n"
              "The daemon connects a ZeroMQ PULL socket to the detector's stream endpoint (EIGER\n"
              "Stream V2 on port 31001 or V1 on port 9999; the format is recognised per message),\n"
              "computes per-frame features, places them on the scan, clusters them online and\n"
              "publishes region-of-interest maps and \"scan here\" feedback (PUB), answers control\n"
              "requests (ROUTER: REQ or DEALER clients) and writes one HDF5 results file per\n"
              "series.\n"
              "\n"
              "  --config FILE         read the configuration (INI; see config/roid.conf); the options\n"
              "                        below override it\n"
              "  --print-config        print the effective configuration and exit\n"
              "  --count N             record: stop after N messages\n"
              "  --jsonl               replay: one JSON object per decoded frame and channel on stdout\n"
              "  --results FILE        export: the frames of the final RoI (/entry/roi/image_ids) of\n"
              "                        this results file\n"
              "  --ids LIST            export: these image ids instead (A,B-C,...)\n"
              "  --output FILE         export: the file to create (never replaced)\n"
              "  --deflate N           export: 0 = uncompressed, 1..9 = shuffle + deflate level\n"
              "                        (default 1; any HDF5 reader opens it without a plugin)\n"
              "  --strict              replay: drop images that arrive without a start message\n"
              "                        (default: open an implicit series, for bare image files)\n"
              "  --df RIN,ROUT         dark-field annulus radii in pixels (= --df-inner, --df-outer)\n"
              "  --center X,Y          beam centre in pixels (= --center-x, --center-y)\n"
              "  -v, --verbose         log debug lines;  -q, --quiet  log warnings and errors only\n"
              "  -h, --help            this text;  --version  the version\n"
              "\n"
              "Options that set a configuration key ([section] key, default):\n",
              f);
        size_t n;
        const roid_config_key *k = roid_config_keys(&n);
        for (size_t i = 0; i < n; i++) {
                if (!k[i].option)
                        continue;
                char left[64];
                snprintf(left, sizeof left, "--%s%s%s", k[i].option, k[i].arg ? " " : "", k[i].arg ? k[i].arg : "");
                if (strlen(left) >= 22) /* too long for the column: the help goes on its own line */
                        fprintf(f, "  %s\n  %-22s%s\n", left, "", k[i].help);
                else
                        fprintf(f, "  %-22s%s\n", left, k[i].help);
                fprintf(f, "  %-22s([%s] %s, default %s)\n", "", k[i].section, k[i].key,
                        k[i].def && k[i].def[0] ? k[i].def : "none");
        }
        fputs("\nReplay inputs: captures (CBOR sequences of arrays of byte strings, as written by\n"
              "`roid record` and MAX IV's dranspose), single-message .cbor files, EIGER HDF5 data\n"
              "or master files.  See roid(8).\n",
              f);
}

typedef struct {
        const char *section, *key, *value;
} override;

#define MAX_OVERRIDES 128

typedef struct {
        const char *config_path;
        override ov[MAX_OVERRIDES];
        size_t n_ov;
        int log_level; /* -v / -q; 0 = from the configuration */
        bool print_config;
        long count;
        bool jsonl, strict;
        const char *results, *ids, *output; /* export */
        int deflate;
        roid_config cfg;
} options;

enum {
        OPT_VERSION = 256,
        OPT_CONFIG,
        OPT_PRINT,
        OPT_COUNT,
        OPT_JSONL,
        OPT_STRICT,
        OPT_DF,
        OPT_CENTER,
        OPT_RESULTS,
        OPT_IDS,
        OPT_OUTPUT,
        OPT_DEFLATE,
        OPT_KEY = 1000, /* + index into the key table */
};

static int add_override(options *o, const char *section, const char *key, const char *value) {
        if (o->n_ov == MAX_OVERRIDES) {
                roid_log(ROID_LOG_ERR, "more than %d configuration options on the command line", MAX_OVERRIDES);
                return -E2BIG;
        }
        o->ov[o->n_ov++] = (override){section, key, value};
        return 0;
}

/* "A,B" -> two overrides (the strings live in a static pool: argv-lifetime). */
static int pair_override(options *o, const char *opt, const char *s, const char *section, const char *ka,
                         const char *kb) {
        static char pool[8][128];
        static int used;
        const char *comma = strchr(s, ',');
        if (!comma || used + 2 > 8 || (size_t)(comma - s) >= sizeof pool[0] || strlen(comma + 1) >= sizeof pool[0]) {
                roid_log(ROID_LOG_ERR, "--%s: '%s' is not two numbers A,B", opt, s);
                return -EINVAL;
        }
        char *a = pool[used++], *b = pool[used++];
        snprintf(a, sizeof pool[0], "%.*s", (int)(comma - s), s);
        snprintf(b, sizeof pool[0], "%s", comma + 1);
        if (add_override(o, section, ka, a) < 0 || add_override(o, section, kb, b) < 0)
                return -E2BIG;
        return 0;
}

static int parse_options(int argc, char **argv, options *o) {
        static const struct option fixed[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, OPT_VERSION},
                {"verbose", no_argument, NULL, 'v'},
                {"quiet", no_argument, NULL, 'q'},
                {"config", required_argument, NULL, OPT_CONFIG},
                {"print-config", no_argument, NULL, OPT_PRINT},
                {"count", required_argument, NULL, OPT_COUNT},
                {"jsonl", no_argument, NULL, OPT_JSONL},
                {"strict", no_argument, NULL, OPT_STRICT},
                {"df", required_argument, NULL, OPT_DF},
                {"center", required_argument, NULL, OPT_CENTER},
                {"results", required_argument, NULL, OPT_RESULTS},
                {"ids", required_argument, NULL, OPT_IDS},
                {"output", required_argument, NULL, OPT_OUTPUT},
                {"deflate", required_argument, NULL, OPT_DEFLATE},
        };
        size_t nf = sizeof fixed / sizeof fixed[0], nk;
        const roid_config_key *keys = roid_config_keys(&nk);
        struct option *longopts = calloc(nf + nk + 1, sizeof *longopts);
        if (!longopts)
                return -ENOMEM;
        memcpy(longopts, fixed, sizeof fixed);
        size_t n = nf;
        for (size_t i = 0; i < nk; i++)
                if (keys[i].option)
                        longopts[n++] = (struct option){keys[i].option, keys[i].arg ? required_argument : no_argument,
                                                        NULL, OPT_KEY + (int)i};
        int c, r = 0;
        char *end;
        while (r == 0 && (c = getopt_long(argc, argv, "hvq", longopts, NULL)) != -1) {
                switch (c) {
                case 'h':
                        usage(stdout);
                        exit(0);
                case OPT_VERSION:
                        puts("roid " ROID_VERSION);
                        exit(0);
                case 'v':
                        o->log_level = ROID_LOG_DEBUG;
                        break;
                case 'q':
                        o->log_level = ROID_LOG_WARNING;
                        break;
                case OPT_CONFIG:
                        o->config_path = optarg;
                        break;
                case OPT_PRINT:
                        o->print_config = true;
                        break;
                case OPT_COUNT:
                        errno = 0;
                        o->count = strtol(optarg, &end, 10);
                        if (errno || *end || o->count < 1) {
                                roid_log(ROID_LOG_ERR, "--count: '%s' is not a whole number >= 1", optarg);
                                r = -EINVAL;
                        }
                        break;
                case OPT_JSONL:
                        o->jsonl = true;
                        break;
                case OPT_STRICT:
                        o->strict = true;
                        break;
                case OPT_DF:
                        r = pair_override(o, "df", optarg, "analysis", "df_inner", "df_outer");
                        break;
                case OPT_CENTER:
                        r = pair_override(o, "center", optarg, "analysis", "center_x", "center_y");
                        break;
                case OPT_RESULTS:
                        o->results = optarg;
                        break;
                case OPT_IDS:
                        o->ids = optarg;
                        break;
                case OPT_OUTPUT:
                        o->output = optarg;
                        break;
                case OPT_DEFLATE: {
                        errno = 0;
                        const long v = strtol(optarg, &end, 10);
                        if (errno || *end || v < 0 || v > 9) {
                                roid_log(ROID_LOG_ERR, "--deflate: '%s' is not 0 (none) .. 9", optarg);
                                r = -EINVAL;
                        }
                        o->deflate = (int)v;
                        break;
                }
                default:
                        if (c >= OPT_KEY && (size_t)(c - OPT_KEY) < nk) {
                                const roid_config_key *k = &keys[c - OPT_KEY];
                                r = add_override(o, k->section, k->key, k->arg ? optarg : "true");
                                break;
                        }
                        usage(stderr);
                        r = -EINVAL;
                }
        }
        free(longopts);
        return r;
}

/* Defaults, then the file, then the command line; validated.  Used at start
 * and on SIGHUP. */
static int build_config(const options *o, roid_config *ret, roid_err *err) {
        roid_config c;
        roid_config_default(&c);
        int r;
        if (o->config_path && (r = roid_config_load(&c, o->config_path, err)) < 0)
                return r;
        for (size_t i = 0; i < o->n_ov; i++) {
                r = roid_config_set(&c, o->ov[i].section, o->ov[i].key, o->ov[i].value, err);
                if (r < 0) {
                        roid_err_prefix(err, "command line");
                        return r;
                }
        }
        if ((r = roid_config_validate(&c, err)) < 0) {
                /* keys checked together: their file (and options), no one line */
                if (o->config_path)
                        roid_err_prefix(err, "%s%s", o->config_path, o->n_ov ? " with the command line" : "");
                else if (o->n_ov)
                        roid_err_prefix(err, "command line");
                return r;
        }
        if (o->log_level)
                c.log_level = o->log_level;
        *ret = c;
        return 0;
}

static int reload_config(void *ctx, roid_config *ret, roid_err *err) {
        return build_config(ctx, ret, err);
}

/* ---- replay's series report ---- */

typedef struct {
        roid_counters *ctr;
        uint64_t decoded_at_start, failed_at_start;
        double t_start;
} report;

static void rep_start(void *ctx, const roid_series *s) {
        report *r = ctx;
        (void)s;
        r->decoded_at_start = roid_counter_get(r->ctr, ROID_C_frames_decoded);
        r->failed_at_start = roid_counter_get(r->ctr, ROID_C_frames_failed);
        r->t_start = now_s();
}

static void rep_end(void *ctx, const roid_series *s, bool terminated) {
        report *r = ctx;
        uint64_t dec = roid_counter_get(r->ctr, ROID_C_frames_decoded) - r->decoded_at_start;
        uint64_t bad = roid_counter_get(r->ctr, ROID_C_frames_failed) - r->failed_at_start;
        double dt = now_s() - r->t_start;
        char expected[32] = "an unknown number";
        if (s->start.has_number_of_images)
                snprintf(expected, sizeof expected, "%llu", (unsigned long long)s->start.number_of_images);
        roid_log(ROID_LOG_NOTICE,
                 "series %llu%s%s %s: %llu images accepted of %s expected, %llu frames decoded, %llu failed, "
                 "%.1f frames/s",
                 (unsigned long long)s->series_id, s->series_unique_id[0] ? " " : "", s->series_unique_id,
                 terminated ? "ended" : "closed without end", (unsigned long long)s->images_accepted, expected,
                 (unsigned long long)dec, (unsigned long long)bad, dt > 0 ? (double)dec / dt : 0.0);
}

/* ---- several sinks behind one (jsonl and analysis in one replay) ---- */

typedef struct {
        roid_sink s[3];
        int n;
} tee;

#define TEE_EACH(call)                                                                                                 \
        for (int i = 0; i < t->n; i++)                                                                                 \
                if (t->s[i].call)

static void tee_start(void *ctx, const roid_series *s) {
        tee *t = ctx;
        TEE_EACH(series_start) t->s[i].series_start(t->s[i].ctx, s);
}
static void tee_frame(void *ctx, const roid_frame_event *ev) {
        tee *t = ctx;
        TEE_EACH(frame) t->s[i].frame(t->s[i].ctx, ev);
}
static void tee_frame_error(void *ctx, const roid_series *s, uint64_t id, const char *ch, const char *msg) {
        tee *t = ctx;
        TEE_EACH(frame_error) t->s[i].frame_error(t->s[i].ctx, s, id, ch, msg);
}
static void tee_end(void *ctx, const roid_series *s, bool terminated) {
        tee *t = ctx;
        TEE_EACH(series_end) t->s[i].series_end(t->s[i].ctx, s, terminated);
}
static void tee_message_error(void *ctx, uint64_t index, const char *msg) {
        tee *t = ctx;
        TEE_EACH(message_error) t->s[i].message_error(t->s[i].ctx, index, msg);
}

static roid_sink tee_sink(tee *t) {
        return (roid_sink){.ctx = t,
                           .series_start = tee_start,
                           .frame = tee_frame,
                           .frame_error = tee_frame_error,
                           .series_end = tee_end,
                           .message_error = tee_message_error};
}

/* ---- record ---- */

typedef struct {
        roid_capture_writer *w;
        roid_parser *parser;
        long messages, series_ended;
        int error;
} recorder;

static int cmd_record(const options *o, const char *endpoint, const char *path) {
        const roid_config *cfg = &o->cfg;
        recorder rc = {0};
        roid_err err = {""};
        roid_zsource *z = NULL;
        void *zctx = NULL;
        int r;
        if ((r = roid_parser_new(&cfg->limits, &rc.parser)) < 0)
                goto out;
        zctx = zmq_ctx_new();
        if ((r = roid_zsource_new(zctx, endpoint, &cfg->limits, 100000, &z, &err)) < 0) {
                roid_log(ROID_LOG_ERR, "%s", err.msg);
                goto out;
        }
        /* After the endpoint: a mistyped one leaves no empty capture behind. */
        if ((r = roid_capture_writer_open(path, &rc.w)) < 0) {
                roid_log(ROID_LOG_ERR, "%s: %s", path,
                         r == -EEXIST ? "exists: roid record never replaces a file" : strerror(-r));
                goto out;
        }
        roid_log(ROID_LOG_INFO, "connected to %s", endpoint);
        /* As the daemon does: closes logged, and after a part over
         * max_message_bytes, which makes libzmq give the endpoint up, a new
         * connection (the recording heard nothing more, without a word). */
        const bool watched = roid_zsource_watch(z, zctx, &err) >= 0;
        if (!watched)
                roid_log(ROID_LOG_WARNING, "detector connections not watched: %s", err.msg);
        double last = now_s(), t_closed = 0;
        bool in_series = false;
        long want_series = cfg->exit_after_series;
        while (!stop_requested && !(o->count > 0 && rc.messages >= o->count) &&
               !(want_series > 0 && rc.series_ended >= want_series)) {
                zmq_pollitem_t it[2] = {{.socket = roid_zsource_socket(z), .events = ZMQ_POLLIN},
                                        {.socket = watched ? roid_zsource_monitor(z) : NULL, .events = ZMQ_POLLIN}};
                if (zmq_poll(it, watched ? 2 : 1, 200) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
                if (watched && roid_zsource_events(z) > 0)
                        t_closed = now_s();
                if (t_closed > 0 && now_s() - t_closed >= 1) { /* the messages before the close are in */
                        t_closed = 0;
                        roid_zsource_revive(z, in_series);
                }
                for (;;) { /* drain: a wake-up may stand for many messages */
                        const roid_part *parts;
                        size_t n;
                        r = roid_zsource_recv(z, &parts, &n, &err);
                        if (r == -EAGAIN || r == -EINTR)
                                break;
                        last = now_s();
                        if (r == -EMSGSIZE) {
                                ROID_LOG_LIMITED(ROID_LOG_ERR, "%s: not recorded", err.msg);
                                continue;
                        }
                        if (r < 0)
                                goto out;
                        if ((r = roid_capture_write(rc.w, parts, n)) < 0) {
                                roid_log(ROID_LOG_ERR, "writing the capture failed: %s", strerror(-r));
                                rc.error = r;
                                goto out;
                        }
                        rc.messages++;
                        roid_msg m;
                        if (roid_parse(rc.parser, parts, n, &m, NULL) >= 0) {
                                rc.series_ended += m.type == ROID_MSG_END;
                                in_series = m.type == ROID_MSG_START || (in_series && m.type != ROID_MSG_END);
                        }
                        if ((o->count > 0 && rc.messages >= o->count) ||
                            (want_series > 0 && rc.series_ended >= want_series))
                                break;
                }
                if (cfg->idle_timeout > 0 && now_s() - last > cfg->idle_timeout) {
                        roid_log(ROID_LOG_NOTICE, "no message for %.1f s: stopping", cfg->idle_timeout);
                        break;
                }
        }
        r = 0;
out:
        roid_zsource_free(z);
        if (zctx)
                zmq_ctx_term(zctx);
        roid_parser_free(rc.parser);
        int rw = roid_capture_writer_close(rc.w);
        if (r == 0)
                r = rc.error ? rc.error : rw;
        if (rc.error || rw < 0)
                /* stdio had some of them buffered when the write failed (disk full,
                 * file-size limit): the file ends at its last complete message */
                roid_log(ROID_LOG_ERR,
                         "recording to %s failed: of %ld messages received (%ld series ended), those after the "
                         "last complete one in the file are lost (roid replay counts them)",
                         path, rc.messages, rc.series_ended);
        else if (rc.w)
                roid_log(ROID_LOG_NOTICE, "recorded %ld messages (%ld series ended) to %s", rc.messages,
                         rc.series_ended, path);
        return r;
}

/* ---- replay ---- */

static int replay_capture(const char *path, const roid_limits *lim, roid_ingest *in) {
        roid_err err = {""};
        roid_capture_reader *rd;
        int r = roid_capture_reader_open(path, lim, &rd, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "%s", err.msg);
                return r;
        }
        roid_part *parts = calloc(lim->max_parts, sizeof *parts);
        size_t n;
        if (!parts) {
                roid_capture_reader_close(rd);
                return -ENOMEM;
        }
        while (!stop_requested && (r = roid_capture_next(rd, parts, lim->max_parts, &n, &err)) != 0) {
                if (r == -EMSGSIZE) { /* skipped whole: the next record follows */
                        roid_ingest_rejected(in, r, err.msg);
                        continue;
                }
                if (r < 0)
                        break;
                roid_ingest_parts(in, parts, n);
        }
        if (r < 0)
                roid_log(ROID_LOG_ERR, "%s: %s: the rest of the file is not read", path, err.msg);
        free(parts);
        roid_capture_reader_close(rd);
        return r < 0 ? r : 0;
}

/* One input file of any kind replay reads; failures are logged. */
static int replay_input(const char *path, const roid_limits *lim, roid_ingest *in) {
        if (!roid_h5_is_hdf5(path))
                return replay_capture(path, lim, in);
        roid_err err = {""};
        int r = roid_h5_replay(path, in, &err);
        if (r < 0)
                roid_log(ROID_LOG_ERR, "%s", err.msg);
        return r;
}

static int cmd_replay(const options *o, int n_inputs, char **inputs) {
        const roid_config *cfg = &o->cfg;
        roid_counters ctr = {0};
        roid_jsonl *j = NULL;
        report rep = {.ctr = &ctr};
        tee t = {0};
        roid_analysis *an = NULL;
        roid_ingest *in = NULL;
        roid_err err = {""};
        /* The input files as absolute paths, for the results files' source:
         * a reader elsewhere can then find the data files a master links.
         * Kept to the end: a series may end in a later input than its start. */
        char **abs = calloc((size_t)n_inputs + 1, sizeof *abs);
        int r;
        if (!abs)
                return -ENOMEM;
        if (o->jsonl) {
                if ((r = roid_jsonl_new(stdout, &j)) < 0)
                        return r;
                roid_jsonl_sink(j, &t.s[t.n++]);
        } else {
                t.s[t.n++] = (roid_sink){.ctx = &rep, .series_start = rep_start, .series_end = rep_end};
        }
        if (cfg->analysis.output_dir[0]) { /* the RoI analysis runs when there is a results file to write */
                if ((r = roid_analysis_new(&cfg->analysis, &an, &err)) < 0) {
                        roid_log(ROID_LOG_ERR, "analysis: %s", err.msg);
                        goto out;
                }
                roid_analysis_sink(an, &t.s[t.n++]);
        }
        roid_sink sink = tee_sink(&t);
        /* Replay decodes every channel unless one is named on the command line,
         * or the analysis runs: it then analyses the channel the daemon would
         * ([detector] channel, else the first). */
        bool chan_given = false;
        for (size_t i = 0; i < o->n_ov; i++)
                chan_given |= strcmp(o->ov[i].key, "channel") == 0;
        const char *chan = chan_given ? cfg->channel : "";
        if (!chan_given && an)
                chan = cfg->channel[0] ? cfg->channel : "#0";
        roid_ingest_params ip = {.limits = cfg->limits, .channel = chan, .implicit_series = !o->strict};
        if ((r = roid_ingest_new(&ip, &sink, &ctr, &in)) < 0)
                goto out;
        int failed = 0;
        for (int i = 0; i < n_inputs && !stop_requested; i++) {
                if (an) {
                        abs[i] = realpath(inputs[i], NULL);
                        roid_analysis_set_source(an, abs[i] ? abs[i] : inputs[i]);
                }
                failed += replay_input(inputs[i], &cfg->limits, in) < 0;
        }
        roid_ingest_flush(in);
        fflush(stdout);
        /* as the daemon: a results file lost (disk full) is exit status 1 */
        uint64_t lost = an ? roid_analysis_results_failed(an) : 0;
        roid_count(&ctr, ROID_C_results_failed, lost);
        roid_counters_log(&ctr);
        if (!failed && lost)
                roid_log(ROID_LOG_ERR, "exit status 1: %llu results file%s failed (logged above)",
                         (unsigned long long)lost, lost == 1 ? "" : "s");
        r = failed || lost ? -EIO : 0;
out:
        roid_ingest_free(in);
        roid_analysis_free(an);
        roid_jsonl_free(j);
        for (int i = 0; i < n_inputs; i++)
                free(abs[i]);
        free(abs);
        return r;
}

static int cmd_export(const options *o, int n_inputs, char **inputs) {
        const roid_config *cfg = &o->cfg;
        roid_counters ctr = {0};
        roid_export *ex = NULL;
        roid_ingest *in = NULL;
        roid_err err = {""};
        const roid_export_params ep = {
                .output = o->output, .results = o->results, .ids = o->ids, .deflate = o->deflate};
        int r = roid_export_new(&ep, &ex, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "export: %s", err.msg);
                return r;
        }
        roid_sink sink;
        roid_export_sink(ex, &sink);
        /* the channel the daemon analyses: [detector] channel, else the first */
        roid_ingest_params ip = {
                .limits = cfg->limits, .channel = cfg->channel[0] ? cfg->channel : "#0", .implicit_series = true};
        if ((r = roid_ingest_new(&ip, &sink, &ctr, &in)) < 0)
                goto out;
        int failed = 0;
        for (int i = 0; i < n_inputs && !stop_requested; i++)
                failed += replay_input(inputs[i], &cfg->limits, in) < 0;
        roid_ingest_flush(in);
        size_t n = 0;
        r = roid_export_finish(ex, &n, &err);
        if (r < 0)
                roid_log(ROID_LOG_ERR, "export: %s", err.msg);
        if (n)
                roid_log(ROID_LOG_NOTICE, "export: %zu frame%s written to %s", n, n == 1 ? "" : "s", o->output);
        else if (r < 0) /* the line above says why */
                roid_log(ROID_LOG_NOTICE, "export: no file written");
        else
                roid_log(ROID_LOG_NOTICE, "export: no frame selected (the final RoI is empty), no file written");
        if (failed && r == 0)
                r = -EIO;
out:
        roid_ingest_free(in);
        roid_export_free(ex);
        return r;
}

int main(int argc, char **argv) {
        static options o;
        o.deflate = 1;
        /* A file at the size limit (RLIMIT_FSIZE, systemd LimitFSIZE=) must
         * fail its write with EFBIG, which the results writer and the
         * recorder report and count like a full disk, not kill the process. */
        signal(SIGXFSZ, SIG_IGN);
        if (argc > 1 && (strcmp(argv[1], "record") == 0 || strcmp(argv[1], "replay") == 0 ||
                         strcmp(argv[1], "export") == 0 || strcmp(argv[1], "run") == 0)) {
                cmd_name = argv[1];
                argv++;
                argc--;
        }
        if (parse_options(argc, argv, &o) < 0)
                return 2;
        roid_err err = {""};
        if (build_config(&o, &o.cfg, &err) < 0) {
                roid_log(ROID_LOG_ERR, "configuration: %s", err.msg);
                return 2;
        }
        roid_log_set_level(o.cfg.log_level);
        if (o.print_config) {
                char text[16384];
                roid_config_format(&o.cfg, text, sizeof text);
                fputs(text, stdout);
                return 0;
        }
        int r;
        /* record and export write no results file */
        if (strcmp(cmd_name, "record") != 0 && strcmp(cmd_name, "export") != 0 && o.cfg.analysis.output_dir[0] &&
            roid_writer_check_dir(o.cfg.analysis.output_dir, &err) < 0) {
                roid_log(ROID_LOG_ERR, "configuration: %s", err.msg);
                return 2;
        }
        if (strcmp(cmd_name, "record") == 0) {
                if (argc - optind != 2) {
                        roid_log(ROID_LOG_ERR, "record needs ENDPOINT and FILE");
                        return 2;
                }
                install_signals();
                r = cmd_record(&o, argv[optind], argv[optind + 1]);
        } else if (strcmp(cmd_name, "export") == 0) {
                if (argc - optind < 1) {
                        roid_log(ROID_LOG_ERR,
                                 "export needs at least one INPUT (the series' master, data or capture files)");
                        return 2;
                }
                install_signals();
                r = cmd_export(&o, argc - optind, argv + optind);
        } else if (strcmp(cmd_name, "replay") == 0) {
                if (argc - optind < 1) {
                        roid_log(ROID_LOG_ERR, "replay needs at least one INPUT");
                        return 2;
                }
                install_signals();
                r = cmd_replay(&o, argc - optind, argv + optind);
        } else {
                if (argc - optind != 0) {
                        roid_log(ROID_LOG_ERR, "unexpected argument '%s'", argv[optind]);
                        return 2;
                }
                roid_daemon_params dp = {
                        .cfg = o.cfg, .reload = o.config_path ? reload_config : NULL, .reload_ctx = &o};
                r = roid_daemon_run(&dp); /* libuv handles the signals */
        }
        return r < 0 ? 1 : 0;
}
