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
#include "outputs/jsonl.h"
#include "service/counters.h"
#include "service/limits.h"
#include "service/log.h"

#define DEFAULT_DETECTOR "tcp://127.0.0.1:31001"

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

static void usage(FILE *f) {
        fputs("usage: roid [--detector ENDPOINT] [--output-dir DIR] [ANALYSIS OPTIONS] [--channel NAME]\n"
              "            [--series N] [--idle-timeout S] [-v|-q]\n"
              "       roid record ENDPOINT FILE [--count N] [--series N] [--idle-timeout S]\n"
              "       roid replay [--jsonl] [--output-dir DIR] [ANALYSIS OPTIONS] [--strict] [--channel NAME]\n"
              "            INPUT...\n"
              "\n"
              "The daemon connects a ZeroMQ PULL socket to the detector's stream endpoint (EIGER\n"
              "Stream V2 on port 31001 or V1 on port 9999; the format is recognised per message),\n"
              "decodes every frame and reports each series.\n"
              "\n"
              "  --detector ENDPOINT   detector PUSH endpoint to connect (default " DEFAULT_DETECTOR ")\n"
              "  --channel NAME        channel to analyse: a name, or #N for the N-th (default #0);\n"
              "                        replay decodes every channel unless given\n"
              "  --series N            exit after N series have ended (default: run until a signal)\n"
              "  --idle-timeout S      exit after S seconds without a message (default: never)\n"
              "  --count N             record: stop after N messages\n"
              "  --output-dir DIR      run the RoI analysis and write one HDF5 results file per\n"
              "                        series into DIR (roid_<series_unique_id>.h5)\n"
              "Analysis options (with --output-dir):\n"
              "  --segments S          azimuthal segments, 1..40 (default 8)\n"
              "  --k K                 clusters of the general clustering map (default 4)\n"
              "  --cadence N           relabel the whole map every N frames (default 64)\n"
              "  --border N            grow (N > 0) or shrink (N < 0) the RoI by N scan steps\n"
              "  --fill-holes          fill holes enclosed by the RoI\n"
              "  --bf R                bright-field disk radius in pixels (adds BF to the features)\n"
              "  --df RIN,ROUT         dark-field annulus radii in pixels (adds DF)\n"
              "  --center X,Y          beam centre in pixels when the start message has none\n"
              "                        (otherwise estimated from the first frame)\n"
              "  --jsonl               replay: one JSON object per decoded frame and channel on stdout\n"
              "  --strict              replay: drop images that arrive without a start message\n"
              "                        (default: open an implicit series, for bare image files)\n"
              "  -v, --verbose         log debug lines;  -q, --quiet  log warnings and errors only\n"
              "  -h, --help            this text;  --version  the version\n"
              "\n"
              "Replay inputs: captures (CBOR sequences of arrays of byte strings, as written by\n"
              "`roid record` and MAX IV's dranspose), single-message .cbor files, EIGER HDF5 data\n"
              "or master files.\n",
              f);
}

typedef struct {
        const char *detector;
        const char *channel;
        bool analyse;
        roid_analysis_params ap;
        long series;
        double idle_timeout;
        long count;
        bool jsonl, strict;
} options;

enum {
        OPT_VERSION = 256,
        OPT_DETECTOR,
        OPT_CHANNEL,
        OPT_SERIES,
        OPT_IDLE,
        OPT_COUNT,
        OPT_JSONL,
        OPT_STRICT,
        OPT_OUTDIR,
        OPT_SEGMENTS,
        OPT_K,
        OPT_CADENCE,
        OPT_BORDER,
        OPT_FILL,
        OPT_BF,
        OPT_DF,
        OPT_CENTER,
};

/* A whole number in [lo, hi] for option `name`. */
static int int_arg(const char *name, const char *s, long lo, long hi, long *ret) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || end == s || v < lo || v > hi) {
                roid_log(ROID_LOG_ERR, "--%s: '%s' is not a whole number in %ld..%ld", name, s, lo, hi);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* Two non-negative numbers "A,B" for option `name`. */
static int pair_arg(const char *name, const char *s, double *a, double *b) {
        char *end;
        *a = strtod(s, &end);
        if (*end == ',') {
                *b = strtod(end + 1, &end);
                if (!*end && *a >= 0 && *b >= 0)
                        return 0;
        }
        roid_log(ROID_LOG_ERR, "--%s: '%s' is not two non-negative numbers A,B", name, s);
        return -EINVAL;
}

static int parse_options(int argc, char **argv, options *o) {
        static const struct option longopts[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, OPT_VERSION},
                {"verbose", no_argument, NULL, 'v'},
                {"quiet", no_argument, NULL, 'q'},
                {"detector", required_argument, NULL, OPT_DETECTOR},
                {"channel", required_argument, NULL, OPT_CHANNEL},
                {"series", required_argument, NULL, OPT_SERIES},
                {"idle-timeout", required_argument, NULL, OPT_IDLE},
                {"count", required_argument, NULL, OPT_COUNT},
                {"jsonl", no_argument, NULL, OPT_JSONL},
                {"strict", no_argument, NULL, OPT_STRICT},
                {"output-dir", required_argument, NULL, OPT_OUTDIR},
                {"segments", required_argument, NULL, OPT_SEGMENTS},
                {"k", required_argument, NULL, OPT_K},
                {"cadence", required_argument, NULL, OPT_CADENCE},
                {"border", required_argument, NULL, OPT_BORDER},
                {"fill-holes", no_argument, NULL, OPT_FILL},
                {"bf", required_argument, NULL, OPT_BF},
                {"df", required_argument, NULL, OPT_DF},
                {"center", required_argument, NULL, OPT_CENTER},
                {NULL, 0, NULL, 0},
        };
        int c;
        char *end;
        long v;
        roid_analysis_params *ap = &o->ap;
        while ((c = getopt_long(argc, argv, "hvq", longopts, NULL)) != -1) {
                switch (c) {
                case 'h':
                        usage(stdout);
                        exit(0);
                case OPT_VERSION:
                        puts("roid " ROID_VERSION);
                        exit(0);
                case 'v':
                        roid_log_set_level(ROID_LOG_DEBUG);
                        break;
                case 'q':
                        roid_log_set_level(ROID_LOG_WARNING);
                        break;
                case OPT_DETECTOR:
                        o->detector = optarg;
                        break;
                case OPT_CHANNEL:
                        o->channel = optarg;
                        break;
                case OPT_SERIES:
                case OPT_COUNT:
                        if (int_arg(c == OPT_SERIES ? "series" : "count", optarg, 1, LONG_MAX, &v) < 0)
                                return -EINVAL;
                        *(c == OPT_SERIES ? &o->series : &o->count) = v;
                        break;
                case OPT_IDLE:
                        o->idle_timeout = strtod(optarg, &end);
                        if (*end || !(o->idle_timeout > 0)) {
                                roid_log(ROID_LOG_ERR, "--idle-timeout: '%s' is not a positive number of seconds",
                                         optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_JSONL:
                        o->jsonl = true;
                        break;
                case OPT_STRICT:
                        o->strict = true;
                        break;
                case OPT_OUTDIR:
                        if (strlen(optarg) >= sizeof ap->output_dir) {
                                roid_log(ROID_LOG_ERR, "--output-dir: path longer than %zu bytes",
                                         sizeof ap->output_dir - 1);
                                return -EINVAL;
                        }
                        snprintf(ap->output_dir, sizeof ap->output_dir, "%s", optarg);
                        o->analyse = true;
                        break;
                case OPT_SEGMENTS:
                        if (int_arg("segments", optarg, 1, ROID_MAX_SEGMENTS, &v) < 0)
                                return -EINVAL;
                        ap->roi.n_segments = (unsigned)v;
                        break;
                case OPT_K:
                        if (int_arg("k", optarg, 2, 64, &v) < 0)
                                return -EINVAL;
                        ap->roi.k = (unsigned)v;
                        break;
                case OPT_CADENCE:
                        if (int_arg("cadence", optarg, 1, 1000000000, &v) < 0)
                                return -EINVAL;
                        ap->roi.cadence = (unsigned)v;
                        break;
                case OPT_BORDER:
                        if (int_arg("border", optarg, -1000, 1000, &v) < 0)
                                return -EINVAL;
                        ap->roi.border = (int)v;
                        break;
                case OPT_FILL:
                        ap->roi.fill_holes = true;
                        break;
                case OPT_BF:
                        ap->r_bf = strtod(optarg, &end);
                        if (*end || !(ap->r_bf > 0)) {
                                roid_log(ROID_LOG_ERR, "--bf: '%s' is not a positive radius in pixels", optarg);
                                return -EINVAL;
                        }
                        ap->roi.use_bf = true;
                        break;
                case OPT_DF:
                        if (pair_arg("df", optarg, &ap->r_df_in, &ap->r_df_out) < 0 || ap->r_df_out <= ap->r_df_in) {
                                roid_log(ROID_LOG_ERR, "--df: needs RIN,ROUT with RIN < ROUT");
                                return -EINVAL;
                        }
                        ap->roi.use_df = true;
                        break;
                case OPT_CENTER:
                        if (pair_arg("center", optarg, &ap->center_x, &ap->center_y) < 0)
                                return -EINVAL;
                        break;
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
        return 0;
}

/* ---- the daemon's series report (until the analysis stage takes over) ---- */

typedef struct {
        roid_counters *ctr;
        long series_ended;
        uint64_t frames, failed;
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
        roid_log(ROID_LOG_NOTICE,
                 "series %llu%s%s %s: %llu images accepted of %llu expected, %llu frames decoded, %llu failed, "
                 "%.1f frames/s",
                 (unsigned long long)s->series_id, s->series_unique_id[0] ? " " : "", s->series_unique_id,
                 terminated ? "ended" : "closed without end", (unsigned long long)s->images_accepted,
                 (unsigned long long)s->start.number_of_images, (unsigned long long)dec, (unsigned long long)bad,
                 dt > 0 ? (double)dec / dt : 0.0);
        r->series_ended++;
}

static void log_counters(const roid_counters *c) {
        char line[2048];
        size_t n = 0;
        for (int i = 0; i < ROID_C__MAX; i++) {
                uint64_t v = roid_counter_get(c, (roid_counter)i);
                if (v && n < sizeof line - 64)
                        n += (size_t)snprintf(line + n, sizeof line - n, " %s=%llu", roid_counter_name((roid_counter)i),
                                              (unsigned long long)v);
        }
        line[n] = 0;
        roid_log(ROID_LOG_NOTICE, "counters:%s", n ? line : " none");
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

/* Adds the RoI analysis to the tee when --output-dir was given. */
static int add_analysis(const options *o, tee *t, roid_analysis **ret) {
        *ret = NULL;
        if (!o->analyse)
                return 0;
        roid_err err = {""};
        int r = roid_analysis_new(&o->ap, ret, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "analysis: %s", err.msg);
                return r;
        }
        roid_analysis_sink(*ret, &t->s[t->n++]);
        return 0;
}

/* Receives until EAGAIN, feeding each message to fn. */
typedef int (*msg_fn)(void *ctx, const roid_part *parts, size_t n);

static int pump(void *zctx, const char *endpoint, const roid_limits *lim, const options *o, msg_fn fn, void *ctx,
                const long *done_counter, long done_at) {
        roid_err err = {""};
        roid_zsource *z = NULL;
        int r = roid_zsource_new(zctx, endpoint, lim, 100000, &z, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "%s", err.msg);
                return r;
        }
        roid_log(ROID_LOG_INFO, "connected to %s", endpoint);
        double last = now_s();
        while (!stop_requested && !(done_at > 0 && *done_counter >= done_at)) {
                zmq_pollitem_t it = {.socket = roid_zsource_socket(z), .events = ZMQ_POLLIN};
                if (zmq_poll(&it, 1, 200) < 0 && errno != EINTR) {
                        r = -errno;
                        break;
                }
                /* Drain: with edge-triggered wake-ups a missed message would stall. */
                for (;;) {
                        const roid_part *parts;
                        size_t n;
                        r = roid_zsource_recv(z, &parts, &n, &err);
                        if (r == -EAGAIN || r == -EINTR)
                                break;
                        last = now_s();
                        if (r == -EMSGSIZE) {
                                roid_log(ROID_LOG_ERR, "%s [messages_bad_size]", err.msg);
                                continue;
                        }
                        if (r < 0)
                                goto out;
                        fn(ctx, parts, n);
                        if (done_at > 0 && *done_counter >= done_at)
                                break;
                }
                if (o->idle_timeout > 0 && now_s() - last > o->idle_timeout) {
                        roid_log(ROID_LOG_NOTICE, "no message for %.1f s: stopping", o->idle_timeout);
                        break;
                }
        }
        r = 0;
out:
        roid_zsource_free(z);
        return r;
}

static int ingest_fn(void *ctx, const roid_part *parts, size_t n) {
        return roid_ingest_parts(ctx, parts, n);
}

static int cmd_run(const options *o, const roid_limits *lim) {
        roid_counters ctr = {0};
        report rep = {.ctr = &ctr};
        tee t = {.n = 1, .s = {{.ctx = &rep, .series_start = rep_start, .series_end = rep_end}}};
        roid_analysis *an;
        int r = add_analysis(o, &t, &an);
        if (r < 0)
                return r;
        roid_sink sink = tee_sink(&t);
        roid_ingest_params ip = {.limits = *lim, .channel = o->channel ? o->channel : "#0"};
        roid_ingest *in;
        r = roid_ingest_new(&ip, &sink, &ctr, &in);
        if (r < 0) {
                roid_analysis_free(an);
                return r;
        }
        void *zctx = zmq_ctx_new();
        r = pump(zctx, o->detector ? o->detector : DEFAULT_DETECTOR, lim, o, ingest_fn, in, &rep.series_ended,
                 o->series);
        roid_ingest_flush(in);
        log_counters(&ctr);
        roid_ingest_free(in);
        roid_analysis_free(an);
        zmq_ctx_term(zctx);
        return r;
}

typedef struct {
        roid_capture_writer *w;
        roid_parser *parser;
        long messages, series_ended;
        int error;
} recorder;

static int record_fn(void *ctx, const roid_part *parts, size_t n) {
        recorder *rc = ctx;
        int r = roid_capture_write(rc->w, parts, n);
        if (r < 0 && !rc->error) {
                rc->error = r;
                roid_log(ROID_LOG_ERR, "writing the capture failed: %s", strerror(-r));
                stop_requested = 1;
        }
        rc->messages++;
        roid_msg m;
        if (roid_parse(rc->parser, parts, n, &m, NULL) >= 0 && m.type == ROID_MSG_END)
                rc->series_ended++;
        return r;
}

static int cmd_record(const options *o, const roid_limits *lim, const char *endpoint, const char *path) {
        recorder rc = {0};
        int r = roid_capture_writer_open(path, &rc.w);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "%s: cannot create: %s", path, strerror(-r));
                return r;
        }
        r = roid_parser_new(lim, &rc.parser);
        if (r < 0)
                goto out;
        void *zctx = zmq_ctx_new();
        if (o->count > 0)
                r = pump(zctx, endpoint, lim, o, record_fn, &rc, &rc.messages, o->count);
        else
                r = pump(zctx, endpoint, lim, o, record_fn, &rc, &rc.series_ended, o->series);
        zmq_ctx_term(zctx);
out:
        roid_parser_free(rc.parser);
        int rw = roid_capture_writer_close(rc.w);
        if (r == 0)
                r = rc.error ? rc.error : rw;
        roid_log(ROID_LOG_NOTICE, "recorded %ld messages (%ld series ended) to %s", rc.messages, rc.series_ended, path);
        return r;
}

static int replay_capture(const char *path, const roid_limits *lim, roid_ingest *in) {
        roid_err err = {""};
        roid_capture_reader *rd;
        int r = roid_capture_reader_open(path, lim, &rd, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "%s", err.msg);
                return r;
        }
        roid_part parts[64];
        size_t n;
        while (!stop_requested && (r = roid_capture_next(rd, parts, 64, &n, &err)) > 0)
                roid_ingest_parts(in, parts, n);
        if (r < 0)
                roid_log(ROID_LOG_ERR, "%s: %s: the rest of the file is not read", path, err.msg);
        roid_capture_reader_close(rd);
        return r < 0 ? r : 0;
}

static int cmd_replay(const options *o, const roid_limits *lim, int n_inputs, char **inputs) {
        roid_counters ctr = {0};
        roid_jsonl *j = NULL;
        report rep = {.ctr = &ctr};
        tee t = {0};
        roid_analysis *an = NULL;
        int r;
        if (o->jsonl) {
                r = roid_jsonl_new(stdout, &j);
                if (r < 0)
                        return r;
                roid_jsonl_sink(j, &t.s[t.n++]);
        } else {
                t.s[t.n++] = (roid_sink){.ctx = &rep, .series_start = rep_start, .series_end = rep_end};
        }
        r = add_analysis(o, &t, &an);
        if (r < 0)
                goto out;
        roid_sink sink = tee_sink(&t);
        roid_ingest_params ip = {
                .limits = *lim, .channel = o->channel ? o->channel : "", .implicit_series = !o->strict};
        roid_ingest *in;
        r = roid_ingest_new(&ip, &sink, &ctr, &in);
        if (r < 0)
                goto out;
        int failed = 0;
        for (int i = 0; i < n_inputs && !stop_requested; i++) {
                roid_err err = {""};
                if (roid_h5_is_hdf5(inputs[i])) {
                        r = roid_h5_replay(inputs[i], in, &err);
                        if (r < 0)
                                roid_log(ROID_LOG_ERR, "%s", err.msg);
                } else {
                        r = replay_capture(inputs[i], lim, in);
                }
                if (r < 0)
                        failed++;
        }
        roid_ingest_flush(in);
        fflush(stdout);
        log_counters(&ctr);
        roid_ingest_free(in);
        r = failed ? -EIO : 0;
out:
        roid_analysis_free(an);
        roid_jsonl_free(j);
        return r;
}

int main(int argc, char **argv) {
        options o = {0};
        roid_analysis_params_default(&o.ap);
        roid_limits lim;
        roid_limits_default(&lim);
        const char *cmd = "run";
        if (argc > 1 &&
            (strcmp(argv[1], "record") == 0 || strcmp(argv[1], "replay") == 0 || strcmp(argv[1], "run") == 0)) {
                cmd = argv[1];
                argv++;
                argc--;
        }
        if (parse_options(argc, argv, &o) < 0)
                return 2;
        install_signals();
        int r;
        if (strcmp(cmd, "record") == 0) {
                if (argc - optind != 2) {
                        roid_log(ROID_LOG_ERR, "record needs ENDPOINT and FILE");
                        return 2;
                }
                r = cmd_record(&o, &lim, argv[optind], argv[optind + 1]);
        } else if (strcmp(cmd, "replay") == 0) {
                if (argc - optind < 1) {
                        roid_log(ROID_LOG_ERR, "replay needs at least one INPUT");
                        return 2;
                }
                r = cmd_replay(&o, &lim, argc - optind, argv + optind);
        } else {
                if (argc - optind != 0) {
                        roid_log(ROID_LOG_ERR, "unexpected argument '%s'", argv[optind]);
                        return 2;
                }
                r = cmd_run(&o, &lim);
        }
        return r < 0 ? 1 : 0;
}
