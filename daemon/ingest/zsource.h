/* zsource.h - the detector socket: a ZeroMQ PULL socket connected to the
 * detector's PUSH endpoint, receiving whole multipart messages.
 *
 * Bounds: one part may not exceed limits.max_message_bytes (ZMQ_MAXMSGSIZE:
 * libzmq drops the connection of a peer that sends more), and a message may
 * not have more than limits.max_parts parts: the excess parts are received
 * and discarded, and the message is reported as too large.
 *
 * A connection closed under a message part over the limit loses the messages
 * still on their way over it, like any closed connection: with
 * roid_zsource_watch the owner hears of every close (roid_zsource_events).
 *
 * Ownership: the zsource owns the socket and the zmq_msg_t of the last
 * message received; the parts handed out stay valid until the next
 * roid_zsource_recv().  Threads: the socket belongs to the thread that
 * created the zsource; use it from that thread only.
 */
#ifndef ROID_INGEST_ZSOURCE_H
#define ROID_INGEST_ZSOURCE_H

#include <stdbool.h>
#include <stddef.h>

#include <zmq.h>

#include "ingest/message.h"
#include "service/err.h"
#include "service/limits.h"

typedef struct roid_zsource roid_zsource;

/* ctx: a zmq context; endpoint: e.g. tcp://detector:31001 (connected). */
int roid_zsource_new(void *ctx, const char *endpoint, const roid_limits *lim, int rcvhwm, roid_zsource **ret,
                     roid_err *err);
void roid_zsource_free(roid_zsource *z);
/* For polling: the socket (zmq_poll) and its ZMQ_FD (edge-triggered: after a
 * wake-up, receive until -EAGAIN). */
void *roid_zsource_socket(roid_zsource *z);
/* Receives one whole message without blocking: 1 and the parts, -EAGAIN when
 * nothing is queued, -EMSGSIZE when it had too many parts (discarded; err
 * says so), another negative errno on socket errors (-EINTR, -ETERM). */
int roid_zsource_recv(roid_zsource *z, const roid_part **ret_parts, size_t *ret_n, roid_err *err);

/* Moves the part of the last message that holds `data` into *dst (an
 * uninitialised zmq_msg_t the caller then owns and closes), so a frame can
 * outlive the next receive without a copy.  Returns `data` rebased into
 * *dst (small parts live inside the zmq_msg_t and move with it), or NULL if
 * no part holds it. */
const void *roid_zsource_take(roid_zsource *z, const void *data, zmq_msg_t *dst);

/* Watches the socket's connections (zmq_socket_monitor into a PAIR socket
 * the zsource owns, same thread rule).  Its events must then be read, or
 * libzmq's I/O thread may wait on them: poll roid_zsource_monitor's ZMQ_FD
 * (edge-triggered) and call roid_zsource_events until it returns.  Each
 * connect is logged, and the first failed attempt after a start; each close
 * is counted by the return value (the number of connections closed since
 * the last call) and logged by roid_zsource_say_closes. */
int roid_zsource_watch(roid_zsource *z, void *ctx, roid_err *err);
void *roid_zsource_monitor(roid_zsource *z); /* NULL until watched */
void roid_zsource_unwatch(roid_zsource *z);  /* stops watching (free does too) */
int roid_zsource_events(roid_zsource *z);
/* Logs the closes roid_zsource_events read since the last call (none: no
 * line), rate-limited: a warning when mid_series (a series is still open a
 * moment after, so frames may be missing), else a notice.  The owner calls
 * it a moment after a close, once the messages that came before it are
 * handled (a sender's end message and its close arrive together).
 * Returns the number of closes said. */
unsigned roid_zsource_say_closes(roid_zsource *z, bool mid_series);
/* roid_zsource_say_closes, then a new connection if libzmq gave the endpoint
 * up.  libzmq connects again after a connection closes, except after a
 * protocol error, which a part over max_message_bytes is: then roid would
 * hear nothing more.  The owner calls it a moment (a second) after a close,
 * having read the events; a failed connect is logged.  Returns the number of
 * closes said. */
unsigned roid_zsource_revive(roid_zsource *z, bool mid_series);

#endif
