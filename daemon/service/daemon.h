/* daemon.h - roid's main loop (libuv): the detector socket, the control
 * socket, signals, timers and systemd notification, around the pipeline.
 *
 * The loop thread owns the PULL and control (ROUTER) sockets and runs ingest (receive,
 * parse, series lifecycle); the PUB socket is bound here before READY=1 and
 * then belongs to the analysis thread (pipeline.h).  A wake-up on a socket's
 * ZMQ_FD is edge-like: the loop receives until EAGAIN every time, and again
 * whenever back-pressure lifts.
 *
 * Signals: SIGTERM and SIGINT stop reading, close the open series as
 * unterminated, let the pipeline finish what it holds and close the results
 * file, then return.  SIGHUP re-reads the configuration (params.reload) for
 * the next series; a bad file keeps the running configuration and logs why.
 *
 * Threads: roid_daemon_run runs the loop on the calling thread and returns
 * when stopped.
 */
#ifndef ROID_SERVICE_DAEMON_H
#define ROID_SERVICE_DAEMON_H

#include "service/config.h"
#include "service/err.h"

typedef struct {
        roid_config cfg;
        /* Rebuilds the configuration (file + command-line overrides) on
         * SIGHUP; NULL = SIGHUP only logs that there is no file. */
        int (*reload)(void *ctx, roid_config *ret, roid_err *err);
        void *reload_ctx;
} roid_daemon_params;

/* 0 after a clean stop (signal, exit_after_series, idle_timeout); a negative
 * errno when a socket could not be set up (logged). */
int roid_daemon_run(const roid_daemon_params *p);

#endif
