#include "service/daemon.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "ingest/ingest.h"
#include "ingest/zsource.h"
#include "outputs/control.h"
#include "outputs/publish.h"
#include "outputs/writer.h"
#include "service/log.h"
#include "service/notify.h"
#include "service/pipeline.h"

#define DRAIN_BATCH 1024 /* messages per wake-up before the loop looks at its other handles */
/* Control requests per turn of the loop, whichever limit comes first.  A
 * status reply takes ~0.1 ms to build, so a few clients polling at 1..10 Hz
 * are served in one turn; a client flooding requests (or large `map` replies)
 * then delays the detector socket, signals and the watchdog by ~2 ms a turn
 * (one request is always served whole), not for as long as it sends. */
#define CTL_BATCH     16
#define CTL_BUDGET_NS 2000000u

typedef struct {
        roid_daemon_params p;
        roid_config cfg;
        roid_config staged; /* a control `set` in progress (valid while staging) */
        bool staging;
        char staged_log[1024]; /* its keys, for the log line */
        unsigned ctl_sets;     /* `set` requests applied since the configuration was loaded */
        char config_text[8192];
        uv_loop_t loop;
        uv_poll_t pull_poll, ctl_poll, mon_poll;
        uv_idle_t ctl_idle; /* active while control requests may remain unread */
        uv_signal_t sig_term, sig_int, sig_hup;
        uv_timer_t status_timer, watchdog_timer, idle_timer, revive_timer;
        uv_async_t wake;
        bool pull_polling, have_ctl, stopping;
        void *zctx;
        roid_zsource *src;
        roid_control *ctl;
        roid_pipeline *pl;
        roid_ingest *in;
        roid_notify *nf;
        roid_counters ctr;
        roid_sink inner;
        long series_done;
        double last_msg;
        int error;
} daemon_t;

static void stop(daemon_t *d, const char *why);
static void apply_timers(daemon_t *d, bool reloaded);

/* ------------------------------------------------------------ ingest */

static void on_series_end(void *ctx, const roid_series *s, bool terminated) {
        daemon_t *d = ctx;
        d->inner.series_end(d->inner.ctx, s, terminated);
        d->series_done++;
}

static void on_series_start(void *ctx, const roid_series *s) {
        daemon_t *d = ctx;
        d->inner.series_start(d->inner.ctx, s);
}

static void on_frame(void *ctx, const roid_frame_event *ev) {
        daemon_t *d = ctx;
        d->inner.frame(d->inner.ctx, ev);
}

static void on_frame_error(void *ctx, const roid_series *s, uint64_t image_id, const char *channel, const char *msg) {
        daemon_t *d = ctx;
        d->inner.frame_error(d->inner.ctx, s, image_id, channel, msg);
}

static void drain_pull(daemon_t *d);
static void resume(daemon_t *d);

static void on_pull(uv_poll_t *h, int status, int events) {
        (void)status;
        (void)events;
        drain_pull(h->data);
}

static void on_revive(uv_timer_t *t);

/* Logs the closes not said yet; those while a series is open (a moment
 * after the close: a sender's end and its close come together) count as
 * lost.  A sender that closes after its series is no loss. */
static void say_closes(daemon_t *d, bool revive) {
        const bool open = roid_ingest_tracker(d->in)->open;
        const unsigned n = revive ? roid_zsource_revive(d->src, open) : roid_zsource_say_closes(d->src, open);
        if (open && n)
                roid_count(&d->ctr, ROID_C_connections_lost, n);
}

/* Connection events of the detector socket (zsource.h; none when it is not
 * watched): closes counted, and a second after one, a look whether libzmq is
 * connecting again. */
static void watch_events(daemon_t *d) {
        int closed = roid_zsource_events(d->src);
        if (closed > 0) {
                roid_count(&d->ctr, ROID_C_connections_closed, (uint64_t)closed);
                if (!d->stopping)
                        uv_timer_start(&d->revive_timer, on_revive, 1000, 0);
                else
                        say_closes(d, false);
        }
}

/* If libzmq gave the connection up (a part over max_message_bytes), connect
 * again. */
static void on_revive(uv_timer_t *t) {
        daemon_t *d = t->data;
        watch_events(d);     /* the events up to now, counted */
        say_closes(d, true); /* a second after the close: the messages before it are handled */
}

static void on_mon(uv_poll_t *h, int status, int events) {
        (void)status;
        (void)events;
        watch_events(h->data);
}

static void pull_start(daemon_t *d, bool on) {
        if (on == d->pull_polling)
                return;
        d->pull_polling = on;
        if (on)
                uv_poll_start(&d->pull_poll, UV_READABLE, on_pull);
        else
                uv_poll_stop(&d->pull_poll);
}

/* Receives until EAGAIN, or until the pipeline pushes back.  The frames
 * received go to the workers in batches; whatever is left of a batch goes
 * when the socket is drained (or the drain yields). */
static void drain_pull(daemon_t *d) {
        roid_err err = {""};
        for (unsigned n = 0; !d->stopping; n++) {
                if (n == DRAIN_BATCH) { /* let signals, control and timers in; continue at once */
                        if (!roid_pipeline_flush(d->pl))
                                pull_start(d, false); /* the workers' wake-up resumes */
                        else
                                uv_async_send(&d->wake);
                        return;
                }
                if (roid_pipeline_blocked(d->pl)) {
                        pull_start(d, false); /* level-triggered ZMQ_FD would spin; the wake-up resumes */
                        return;
                }
                const roid_part *parts;
                size_t n;
                int r = roid_zsource_recv(d->src, &parts, &n, &err);
                if (r == -EINTR)
                        continue;
                if (r == -EAGAIN) {
                        if (!roid_pipeline_flush(d->pl))
                                pull_start(d, false);
                        return;
                }
                d->last_msg = uv_now(&d->loop) / 1e3;
                if (r == -EMSGSIZE) {
                        roid_ingest_rejected(d->in, r, err.msg);
                        continue;
                }
                if (r < 0) {
                        ROID_LOG_LIMITED(ROID_LOG_ERR, "detector socket: %s", zmq_strerror(-r));
                        d->error = r;
                        stop(d, "detector socket failed");
                        return;
                }
                roid_ingest_parts(d->in, parts, n);
                if (d->cfg.exit_after_series > 0 && d->series_done >= d->cfg.exit_after_series) {
                        stop(d, "the requested number of series has ended");
                        return;
                }
        }
}

static void wake_cb(void *ctx) {
        uv_async_send(ctx);
}

/* Reads again when nothing waits for queue space: after a worker freed a
 * slot, after a control request queued work, or when a drain yielded. */
static void resume(daemon_t *d) {
        if (d->stopping || (roid_pipeline_blocked(d->pl) && !roid_pipeline_flush(d->pl)))
                return;
        pull_start(d, true);
        drain_pull(d); /* messages queued while we were not reading raise no new edge */
}

static void on_wake(uv_async_t *h) {
        resume(h->data);
}

/* ------------------------------------------------------------ control */

static int ctl_status(void *ctx, msgpack_packer *pk) {
        daemon_t *d = ctx;
        /* this request counted, as the status topic will show it */
        roid_pipeline_set_control_counts(d->pl, roid_control_requests(d->ctl), roid_control_errors(d->ctl),
                                         roid_control_unsent(d->ctl));
        return roid_pipeline_pack_status(d->pl, pk);
}

static int ctl_map(void *ctx, msgpack_packer *pk) {
        return roid_pipeline_pack_map(((daemon_t *)ctx)->pl, pk);
}

static int ctl_series(void *ctx, msgpack_packer *pk) {
        return roid_pipeline_pack_series(((daemon_t *)ctx)->pl, pk);
}

static int ctl_ask(void *ctx, unsigned n, msgpack_packer *pk) {
        return roid_pipeline_pack_ask(((daemon_t *)ctx)->pl, n, pk);
}

/* When a key changed by `set` takes effect (proto/live.md, "set"). */
static const char *takes_effect(const char *section, const char *key) {
        if (strcmp(section, "output") != 0 || !strcmp(key, "directory"))
                return "from the next series";
        return "at once";
}

/* A request's keys are staged one by one and applied together by ctl_commit,
 * so that keys checked as a pair (center_x and center_y, df_inner below
 * df_outer) can be set in one request, in any order. */
static int ctl_set(void *ctx, const char *section, const char *key, const char *value, roid_err *err) {
        daemon_t *d = ctx;
        if (!d->staging) {
                d->staged = d->cfg;
                d->staging = true;
                d->staged_log[0] = 0;
        }
        int r = roid_config_set(&d->staged, section, key, value, err);
        if (r < 0)
                return r;
        size_t n = strlen(d->staged_log);
        snprintf(d->staged_log + n, sizeof d->staged_log - n, "%s[%s] %s = %s (%s)", n ? "; " : "", section, key, value,
                 takes_effect(section, key));
        return 0;
}

static int ctl_commit(void *ctx, bool apply, roid_err *err) {
        daemon_t *d = ctx;
        if (!d->staging)
                return 0;
        d->staging = false;
        if (!apply)
                return 0;
        int r = roid_config_validate(&d->staged, err);
        if (r >= 0 && d->staged.analysis.output_dir[0] &&
            strcmp(d->staged.analysis.output_dir, d->cfg.analysis.output_dir) != 0)
                r = roid_writer_check_dir(d->staged.analysis.output_dir, err);
        if (r < 0)
                return r;
        const bool same = memcmp(&d->cfg, &d->staged, sizeof d->cfg) == 0;
        d->cfg = d->staged;
        roid_config_format(&d->cfg, d->config_text, sizeof d->config_text);
        roid_pipeline_set_config(d->pl, &d->cfg, d->config_text);
        apply_timers(d, false); /* status_interval */
        /* A client that sets values every step of a scan must not flood the
         * journal (found by a soak test: 656 lines in 5 s): a set that changes
         * nothing is a debug line, the others are rate-limited, with a count
         * of those left out. */
        if (same)
                roid_log(ROID_LOG_DEBUG, "control: set %s: nothing changed", d->staged_log);
        else
                ROID_LOG_LIMITED(ROID_LOG_NOTICE, "control: set %s", d->staged_log);
        d->ctl_sets++;
        return 0;
}

static int ctl_reset(void *ctx, roid_err *err) {
        (void)err;
        daemon_t *d = ctx;
        roid_pipeline_reset(d->pl); /* the counters too */
        resume(d);
        roid_log(ROID_LOG_NOTICE, "control: reset (counters, and the RoI state of the series in progress)");
        return 0;
}

static void on_ctl_idle(uv_idle_t *h);

/* One batch of requests.  ZMQ_FD signals again only after a receive saw
 * EAGAIN: a batch that stopped short leaves the idle on, which serves the next
 * batch on the next turn (after the detector socket, signals and timers had
 * theirs) until EAGAIN. */
static void ctl_serve(daemon_t *d) {
        bool more = false;
        if (d->stopping)
                return;
        if (roid_control_serve(d->ctl, CTL_BATCH, CTL_BUDGET_NS, &more) < 0)
                more = false; /* logged; a failed socket (ETERM) would spin the idle */
        roid_pipeline_set_control_counts(d->pl, roid_control_requests(d->ctl), roid_control_errors(d->ctl),
                                         roid_control_unsent(d->ctl));
        if (d->stopping) /* a handler (reset) may have stopped the loop: the idle is closing */
                return;
        if (more)
                uv_idle_start(&d->ctl_idle, on_ctl_idle);
        else
                uv_idle_stop(&d->ctl_idle);
}

static void on_ctl_idle(uv_idle_t *h) {
        ctl_serve(h->data);
}

/* The fd and the status timer: nothing to do while the idle already has the
 * next batch in hand (one batch a turn). */
static void ctl_kick(daemon_t *d) {
        if (d->have_ctl && !uv_is_active((uv_handle_t *)&d->ctl_idle))
                ctl_serve(d);
}

static void on_ctl(uv_poll_t *h, int status, int events) {
        (void)status;
        (void)events;
        ctl_kick(h->data);
}

/* ------------------------------------------------------------ timers, signals */

static void on_status_timer(uv_timer_t *h) {
        daemon_t *d = h->data;
        char line[512];
        roid_pipeline_status_line(d->pl, line, sizeof line);
        roid_notify_status(d->nf, line);
        roid_log_flush_suppressed();
        /* A safety net, one bounded batch: each batch ends at EAGAIN or leaves
         * the idle on, so no request should wait for it. */
        ctl_kick(d);
        if (d->pull_polling)
                drain_pull(d);
}

/* Progress is work the analysis thread finished, not messages received: with
 * queue_full = drop the loop goes on receiving (and dropping) while the
 * workers or the analysis are stuck (found by review). */
static void on_watchdog(uv_timer_t *h) {
        daemon_t *d = h->data;
        const uint64_t progress = roid_pipeline_progress(d->pl);
        roid_notify_watchdog_tick(d->nf, progress, roid_pipeline_pending(d->pl), uv_now(&d->loop) / 1e3,
                                  d->cfg.watchdog_stall);
}

static void on_idle_timer(uv_timer_t *h) {
        daemon_t *d = h->data;
        /* Not idle while work waits: roid may have stopped reading the detector
         * (queues full), which may well still be sending (found by review). */
        if (!d->pull_polling || roid_pipeline_pending(d->pl) > 0)
                d->last_msg = uv_now(&d->loop) / 1e3;
        const double quiet = uv_now(&d->loop) / 1e3 - d->last_msg;
        /* A detector that died mid-series sends no end: the series is closed
         * as without one, so that its final map, scan_here and file come.
         * Only once images came: a series armed for triggers may wait for
         * its first as long as the experiment needs (found by review). */
        const roid_tracker *tr = roid_ingest_tracker(d->in);
        if (d->cfg.series_timeout > 0 && quiet > d->cfg.series_timeout && tr->open && tr->cur.images_accepted) {
                roid_log(ROID_LOG_WARNING,
                         "series %" PRIu64 ": no message for %.1f s (series_timeout): closed without "
                         "its end message",
                         tr->cur.series_id, d->cfg.series_timeout);
                roid_ingest_flush(d->in);
        }
        if (d->cfg.idle_timeout > 0 && quiet > d->cfg.idle_timeout) {
                roid_log(ROID_LOG_NOTICE, "no message for %.1f s", d->cfg.idle_timeout);
                stop(d, "idle timeout");
        }
}

static uint64_t status_ms(const daemon_t *d) {
        return (uint64_t)(d->cfg.status_interval * 1e3);
}

/* The loop's timers follow d->cfg: the status interval, and the idle and
 * series timeouts (counted from now when a reload turns them on). */
static void apply_timers(daemon_t *d, bool reloaded) {
        if (d->stopping)
                return;
        if (uv_timer_get_repeat(&d->status_timer) != status_ms(d))
                uv_timer_start(&d->status_timer, on_status_timer, status_ms(d), status_ms(d));
        bool idle_on = uv_is_active((uv_handle_t *)&d->idle_timer);
        const bool want = d->cfg.idle_timeout > 0 || d->cfg.series_timeout > 0;
        if (want && !idle_on) {
                if (reloaded)
                        d->last_msg = uv_now(&d->loop) / 1e3;
                uv_timer_start(&d->idle_timer, on_idle_timer, 200, 200);
        } else if (!want && idle_on) {
                uv_timer_stop(&d->idle_timer);
        }
}

/* Keys a reload cannot change: their sockets, threads, queues or buffers are
 * made once at the start (libzmq applies ZMQ_MAXMSGSIZE only to new
 * connections, the detector socket's part arrays are sized by max_parts, the
 * PUB socket belongs to the analysis thread, the writer takes its flush
 * interval when it starts).  Each keeps the value it runs with (the one at the
 * start; a control `set` of one is refused), and is named in a warning when
 * the file changes it. */
static void keep_restart_keys(const daemon_t *d, roid_config *c) {
        const roid_config *o = &d->p.cfg;
        char names[512] = "";
        size_t len = 0;
#define KEEP(changed, name, assign)                                                                                    \
        do {                                                                                                           \
                if (changed)                                                                                           \
                        len += (size_t)snprintf(names + len, len < sizeof names ? sizeof names - len : 0, "%s%s",      \
                                                len ? ", " : "", name);                                                \
                assign;                                                                                                \
        } while (0)
        KEEP(strcmp(c->detector, o->detector), "[detector] endpoint",
             memcpy(c->detector, o->detector, sizeof c->detector));
        KEEP(strcmp(c->publish, o->publish), "[output] publish", memcpy(c->publish, o->publish, sizeof c->publish));
        KEEP(strcmp(c->control, o->control), "[output] control", memcpy(c->control, o->control, sizeof c->control));
        KEEP(c->sndhwm != o->sndhwm, "[output] publish_hwm", c->sndhwm = o->sndhwm);
        KEEP(c->flush_interval != o->flush_interval, "[output] flush_interval", c->flush_interval = o->flush_interval);
        KEEP(c->workers != o->workers, "[pipeline] workers", c->workers = o->workers);
        KEEP(c->queue_depth != o->queue_depth, "[pipeline] queue_depth", c->queue_depth = o->queue_depth);
        KEEP(c->limits.max_message_bytes != o->limits.max_message_bytes, "[limits] max_message_bytes",
             c->limits.max_message_bytes = o->limits.max_message_bytes);
        KEEP(c->limits.max_parts != o->limits.max_parts, "[limits] max_parts",
             c->limits.max_parts = o->limits.max_parts);
        KEEP(c->max_request_bytes != o->max_request_bytes, "[limits] max_request_bytes",
             c->max_request_bytes = o->max_request_bytes);
#undef KEEP
        if (len)
                roid_log(ROID_LOG_WARNING, "SIGHUP: %s not changed: changing %s needs a restart", names,
                         strchr(names, ',') ? "them" : "it");
}

static void reload(daemon_t *d) {
        roid_err err = {""};
        roid_config c;
        roid_notify_reloading(d->nf);
        if (!d->p.reload) {
                roid_log(ROID_LOG_WARNING, "SIGHUP: no configuration file was given (--config): nothing to reload");
        } else if (d->p.reload(d->p.reload_ctx, &c, &err) < 0 ||
                   (c.analysis.output_dir[0] && roid_writer_check_dir(c.analysis.output_dir, &err) < 0)) {
                roid_log(ROID_LOG_ERR, "SIGHUP: configuration not reloaded, the running one stays: %s", err.msg);
        } else {
                keep_restart_keys(d, &c);
                if (c.rcvhwm != d->cfg.rcvhwm) { /* libzmq applies a high-water mark to existing pipes too */
                        if (zmq_setsockopt(roid_zsource_socket(d->src), ZMQ_RCVHWM, &c.rcvhwm, sizeof c.rcvhwm) < 0) {
                                roid_log(ROID_LOG_ERR, "SIGHUP: [detector] receive_hwm: %s; %d stays",
                                         zmq_strerror(errno), d->cfg.rcvhwm);
                                c.rcvhwm = d->cfg.rcvhwm;
                        }
                }
                d->cfg = c;
                roid_log_set_level(c.log_level);
                roid_config_format(&d->cfg, d->config_text, sizeof d->config_text);
                /* The ingest and the pipeline switch channel at the same series start. */
                roid_pipeline_set_config(d->pl, &d->cfg, d->config_text);
                roid_ingest_set_config(d->in, &d->cfg.limits, d->cfg.channel[0] ? d->cfg.channel : "#0");
                apply_timers(d, true);
                roid_log(ROID_LOG_NOTICE, "SIGHUP: configuration reloaded; it applies from the next series");
                if (d->ctl_sets)
                        roid_log(ROID_LOG_WARNING,
                                 "SIGHUP: the file's values replace what %u control set request%s changed since the "
                                 "last load",
                                 d->ctl_sets, d->ctl_sets == 1 ? "" : "s");
                d->ctl_sets = 0;
        }
        char line[512];
        roid_pipeline_status_line(d->pl, line, sizeof line);
        roid_notify_ready(d->nf, line);
}

static void on_signal(uv_signal_t *h, int sig) {
        daemon_t *d = h->data;
        const char *name = sig == SIGHUP ? "SIGHUP" : sig == SIGTERM ? "SIGTERM" : "SIGINT";
        if (d->stopping) {
                roid_log(ROID_LOG_NOTICE, "%s received while stopping: ignored (queued work is being finished)", name);
                return;
        }
        if (sig == SIGHUP) {
                reload(d);
                return;
        }
        roid_log(ROID_LOG_NOTICE, "%s received: stopping", name);
        stop(d, NULL);
}

/* While stopping, every handle but the wake-up (which workers may still
 * signal until they are joined) and the signal handles closes.  The signal
 * handles stay until the queued work is finished: closing them puts back the
 * default actions, and a SIGHUP (systemctl reload) or a second SIGTERM in that
 * time killed roid with its results file half written (found by review).
 * Those kept are unreferenced so that the loop can end. */
static void close_walk(uv_handle_t *h, void *arg) {
        const daemon_t *d = arg;
        if (uv_is_closing(h))
                return;
        if (d && (h == (const uv_handle_t *)&d->wake || h->type == UV_SIGNAL)) {
                uv_unref(h);
                return;
        }
        uv_close(h, NULL);
}

static void stop(daemon_t *d, const char *why) {
        if (d->stopping)
                return;
        d->stopping = true;
        if (why)
                roid_log(ROID_LOG_NOTICE, "stopping: %s", why);
        roid_notify_stopping(d->nf);
        uv_walk(&d->loop, close_walk, d);
}

/* ------------------------------------------------------------ setup */

static int poll_socket(daemon_t *d, uv_poll_t *h, void *sock, uv_poll_cb cb) {
        int fd;
        size_t len = sizeof fd;
        if (zmq_getsockopt(sock, ZMQ_FD, &fd, &len) < 0)
                return -errno;
        int r = uv_poll_init(&d->loop, h, fd);
        if (r < 0)
                return r;
        h->data = d;
        return uv_poll_start(h, UV_READABLE, cb);
}

int roid_daemon_run(const roid_daemon_params *p) {
        daemon_t *d = calloc(1, sizeof *d);
        if (!d)
                return -ENOMEM;
        d->p = *p;
        d->cfg = p->cfg;
        roid_config_format(&d->cfg, d->config_text, sizeof d->config_text);
        roid_err err = {""};
        roid_publisher *pub = NULL;
        int r = uv_loop_init(&d->loop);
        if (r < 0) {
                free(d);
                return r;
        }
        d->zctx = zmq_ctx_new();
        if ((r = roid_notify_new(&d->nf)) < 0)
                goto out;
        if (d->cfg.publish[0] && (r = roid_publisher_new(d->zctx, d->cfg.publish, d->cfg.sndhwm, &pub, &err)) < 0) {
                roid_log(ROID_LOG_ERR, "[output] publish: %s", err.msg);
                goto out;
        }
        r = roid_pipeline_new(&d->cfg, &d->ctr, pub, &d->pl, &err);
        if (r < 0) {
                roid_publisher_free(pub);
                roid_log(ROID_LOG_ERR, "pipeline: %s", err.msg);
                goto out;
        }
        roid_pipeline_set_config(d->pl, &d->cfg, d->config_text);
        roid_pipeline_sink(d->pl, &d->inner);
        roid_sink sink = {.ctx = d,
                          .series_start = on_series_start,
                          .frame = on_frame,
                          .frame_error = on_frame_error,
                          .series_end = on_series_end};
        roid_ingest_params ip = {
                .limits = d->cfg.limits, .channel = d->cfg.channel[0] ? d->cfg.channel : "#0", .defer_decode = true};
        if ((r = roid_ingest_new(&ip, &sink, &d->ctr, &d->in)) < 0)
                goto out;
        if (d->cfg.control[0]) {
                roid_control_handler h = {.ctx = d,
                                          .commit = ctl_commit,
                                          .status = ctl_status,
                                          .map = ctl_map,
                                          .series = ctl_series,
                                          .set = ctl_set,
                                          .ask = ctl_ask,
                                          .reset = ctl_reset};
                r = roid_control_new(d->zctx, d->cfg.control, d->cfg.max_request_bytes, &h, &d->ctl, &err);
                if (r < 0) {
                        roid_log(ROID_LOG_ERR, "[output] control: %s", err.msg);
                        goto out;
                }
                if ((r = poll_socket(d, &d->ctl_poll, roid_control_socket(d->ctl), on_ctl)) < 0)
                        goto out;
                uv_idle_init(&d->loop, &d->ctl_idle);
                d->ctl_idle.data = d;
                d->have_ctl = true;
        }
        r = roid_zsource_new(d->zctx, d->cfg.detector, &d->cfg.limits, d->cfg.rcvhwm, &d->src, &err);
        if (r < 0) {
                roid_log(ROID_LOG_ERR, "[detector] endpoint: %s", err.msg);
                goto out;
        }
        roid_pipeline_set_source(d->pl, d->src);
        if ((r = poll_socket(d, &d->pull_poll, roid_zsource_socket(d->src), on_pull)) < 0)
                goto out;
        d->pull_polling = true;
        uv_timer_init(&d->loop, &d->revive_timer);
        d->revive_timer.data = d;
        uv_unref((uv_handle_t *)&d->revive_timer);
        const char *fault = getenv("ROID_FAULT");
        if ((fault && !strcmp(fault, "no-watch") && roid_err_set(&err, -EMFILE, "fault injection (ROID_FAULT)")) ||
            roid_zsource_watch(d->src, d->zctx, &err) < 0 ||
            poll_socket(d, &d->mon_poll, roid_zsource_monitor(d->src), on_mon) < 0) {
                roid_log(ROID_LOG_WARNING, "detector connections not watched: %s",
                         err.msg[0] ? err.msg : "poll failed");
                roid_zsource_unwatch(d->src); /* events nobody reads would pile up */
        } else {
                uv_unref((uv_handle_t *)&d->mon_poll); /* it never keeps the loop alive */
        }
        uv_async_init(&d->loop, &d->wake, on_wake);
        d->wake.data = d;
        uv_unref((uv_handle_t *)&d->wake);
        roid_pipeline_set_wakeup(d->pl, wake_cb, &d->wake);
        uv_signal_t *sigs[] = {&d->sig_term, &d->sig_int, &d->sig_hup};
        int signums[] = {SIGTERM, SIGINT, SIGHUP};
        for (int i = 0; i < 3; i++) {
                uv_signal_init(&d->loop, sigs[i]);
                sigs[i]->data = d;
                uv_signal_start(sigs[i], on_signal, signums[i]);
        }
        uv_timer_init(&d->loop, &d->status_timer);
        d->status_timer.data = d;
        uv_timer_start(&d->status_timer, on_status_timer, status_ms(d), status_ms(d));
        uint64_t wd = roid_notify_watchdog_usec(d->nf);
        if (wd) {
                uv_timer_init(&d->loop, &d->watchdog_timer);
                d->watchdog_timer.data = d;
                uv_timer_start(&d->watchdog_timer, on_watchdog, 0, wd / 2000 ? wd / 2000 : 1);
        }
        d->last_msg = uv_now(&d->loop) / 1e3;
        uv_timer_init(&d->loop, &d->idle_timer); /* a reload may start it */
        d->idle_timer.data = d;
        apply_timers(d, false);
        roid_log(ROID_LOG_INFO, "detector %s%s%s%s%s, %u worker(s)", d->cfg.detector,
                 d->cfg.publish[0] ? ", publishing on " : "", d->cfg.publish, d->cfg.control[0] ? ", control on " : "",
                 d->cfg.control, d->cfg.workers);
        char line[512];
        roid_pipeline_status_line(d->pl, line, sizeof line);
        roid_notify_ready(d->nf, line);
        drain_pull(d); /* anything that arrived before the loop started */
        watch_events(d);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        r = d->error;
        if (d->src) { /* closes not read or not said yet (their second had not passed) */
                watch_events(d);
                say_closes(d, false);
        }
out:
        if (d->in)
                roid_ingest_flush(d->in); /* closes an open series: its end reaches the pipeline */
        roid_pipeline_free(d->pl);        /* finishes queued work, writes the results file */
        if (d->in)
                roid_counters_log(&d->ctr);
        const uint64_t lost_files = roid_counter_get(&d->ctr, ROID_C_results_failed);
        if (r == 0 && lost_files) {
                roid_log(ROID_LOG_ERR, "exit status 1: %" PRIu64 " results file%s failed (logged above)", lost_files,
                         lost_files == 1 ? "" : "s");
                r = -EIO;
        }
        roid_ingest_free(d->in);
        roid_control_free(d->ctl);
        roid_zsource_free(d->src);
        d->stopping = true;
        /* Signals that came meanwhile: logged as ignored (a loop with no
         * referenced handle would not look at them). */
        if (d->sig_term.loop) { /* not on a failed start */
                uv_ref((uv_handle_t *)&d->sig_term);
                uv_run(&d->loop, UV_RUN_NOWAIT);
        }
        uv_walk(&d->loop, close_walk, NULL); /* the workers are joined: the wake-up and signals go too */
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
        roid_notify_free(d->nf);
        if (d->zctx)
                zmq_ctx_term(d->zctx);
        free(d);
        return r;
}
