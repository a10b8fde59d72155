/* control.h - roid's control socket: a bound ZeroMQ ROUTER socket answering
 * msgpack requests "status", "map", "series", "set", "ask" and "reset" like a REP
 * (proto/live.md is the wire specification).  ROUTER rather than REP because
 * REP drops a reply the client does not take without a word; with
 * ZMQ_ROUTER_MANDATORY each such reply is counted (roid_control_unsent).
 *
 * Every request gets exactly one reply (a REQ client waits for it):
 * a request that is too large, multipart, not msgpack, not a map, nested
 * deeper than ROID_CONTROL_MAX_DEPTH, with a container of more than
 * ROID_CONTROL_MAX_ENTRIES entries, without a known "cmd", or with a key or
 * value of the wrong type gets {"ok": false, "error": "..."} naming the field,
 * and is counted.  The request is checked by a bounded walk over its bytes
 * before msgpack_unpack builds objects, so the unpacker's zone never holds
 * more than a few dozen bytes per request byte.  Requests up to
 * 2 * max_request_bytes are read and refused with an error reply; larger
 * frames are refused by libzmq (ZMQ_MAXMSGSIZE), which closes that client's
 * connection without a reply (the client sees a timeout).  libzmq checks that
 * frame by frame and delivers a multipart message whole: a request of many
 * frames is held before it can be refused (bind where trusted clients alone
 * reach the socket; proto/live.md).
 *
 * Replies: a map {"ok", "cmd", "schema", "time", ...}.  The handlers of
 * status, map and ask pack the rest of the reply's key/value pairs into the
 * packer they are given (no map header) and return how many pairs they packed
 * (>= 0), or a negative errno for an error reply (-ENODATA: "no series yet").
 * The roid_pack_* functions of publish.h have exactly that contract, so a
 * status handler is "return roid_pack_status(pk, &view);".  A handler left
 * NULL makes its command answer "not available".
 *
 * set {"values": {key: value, ...}}: a key is "section.key" (sections
 * analysis, scan, feedback, output; output.publish, output.control,
 * output.publish_hwm and output.flush_interval need a restart and are
 * refused) or a bare key of
 * [analysis] (segments k cadence border fill_holes seed bf_radius df_inner
 * df_outer center_x center_y), [feedback] (rescan_factor next_points
 * stable_refits) or [output] (map_interval status_interval frame_every
 * directory).  Values may be int, float, bool, str, or an
 * array of 2 numbers; they reach the handler as config-file text ("3",
 * "0.5", "true", "48,64").  The whole request is checked before the first
 * handler call; then set is called key by key in request order (it stages
 * the key) and commit once: with apply = true after every key was staged
 * (it checks the keys together and applies them all, or refuses), with
 * apply = false after set refused a key (nothing is applied).  A request is
 * applied whole or not at all.  Without commit, each set applies at once
 * and the first failure stops the request.
 *
 * Ownership: the control object owns its socket, receive and reply buffers.
 * Threads: one thread (the loop thread) owns it; the handlers run on that
 * thread, inside roid_control_serve / roid_control_drain.
 */
#ifndef ROID_OUTPUTS_CONTROL_H
#define ROID_OUTPUTS_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "service/err.h"

#define ROID_CONTROL_MAX_DEPTH   8   /* nesting of a request */
#define ROID_CONTROL_MAX_ENTRIES 256 /* entries of one array or map in a request */
#define ROID_CONTROL_MAX_ASK     4096
#define ROID_CONTROL_MIN_REQUEST 64
#define ROID_CONTROL_MAX_REQUEST (16u << 20)
/* Frames before a request that are echoed with its reply: the routing id,
 * the identities brokers add, the empty delimiter.  A request with more is
 * answered as one without a delimiter (see roid_control_serve). */
#define ROID_CONTROL_MAX_ENVELOPE 8
/* Replies queued per client connection (ZMQ_SNDHWM; libzmq's default is
 * 1000, i.e. 1000 map replies held for a client that does not read).  A REQ
 * client has one request outstanding; 8 leaves room for a DEALER pipelining a
 * few and for libzmq's late accounting of what the connection has taken.  A
 * reply beyond it is not sent (roid never blocks) and is counted as unsent;
 * the client sees a timeout, as for a lost connection. */
#define ROID_CONTROL_SNDHWM 8
/* SNDHWM bounds replies per connection, not the connections: large replies
 * (map, ask: from ROID_CONTROL_COUNTED_REPLY bytes) are counted until libzmq
 * frees them, and one that would take the total over ROID_CONTROL_MAX_QUEUED
 * is replaced by a "busy" error (one large reply may always wait). */
#define ROID_CONTROL_COUNTED_REPLY (64u << 10)
#define ROID_CONTROL_MAX_QUEUED    ((size_t)256 << 20)

typedef struct {
        void *ctx;
        int (*status)(void *ctx, msgpack_packer *pk);
        int (*map)(void *ctx, msgpack_packer *pk);
        int (*series)(void *ctx, msgpack_packer *pk); /* the last series message; -ENODATA before any */
        /* value as text, as in a config file line; 0 or a negative errno
         * with err saying why (the reply carries err's text). */
        int (*set)(void *ctx, const char *section, const char *key, const char *value, roid_err *err);
        /* Optional: 0 or a negative errno with err saying why (see above). */
        int (*commit)(void *ctx, bool apply, roid_err *err);
        int (*ask)(void *ctx, unsigned n, msgpack_packer *pk); /* n in 1..ROID_CONTROL_MAX_ASK */
        int (*reset)(void *ctx, roid_err *err);
} roid_control_handler;

typedef struct roid_control roid_control;

/* Binds the ROUTER socket.  max_request_bytes in ROID_CONTROL_MIN_REQUEST ..
 * ROID_CONTROL_MAX_REQUEST (-EINVAL otherwise); the handler is copied. */
int roid_control_new(void *zctx, const char *endpoint, size_t max_request_bytes, const roid_control_handler *h,
                     roid_control **ret, roid_err *err);
void roid_control_free(roid_control *c);
/* The endpoint actually bound (a wildcard port resolved). */
const char *roid_control_endpoint(const roid_control *c);
/* For ZMQ_FD / ZMQ_EVENTS polling by the loop. */
void *roid_control_socket(roid_control *c);

/* Receives pending requests without blocking and replies to each, stopping
 * at EAGAIN (*ret_more = false) or, when a request is still handled whole,
 * once max_requests were handled or budget_ns (0: none) of monotonic time
 * have passed (*ret_more = true).  At least one is handled when any is
 * pending.  Returns the number handled, or a negative errno when the socket
 * itself failed (ETERM; *ret_more untouched).
 * ZMQ_FD is edge-triggered: it signals again only after a receive has seen
 * EAGAIN, so after *ret_more = true the caller must call again soon (on the
 * next loop iteration) without waiting for the fd. */
int roid_control_serve(roid_control *c, unsigned max_requests, uint64_t budget_ns, bool *ret_more);
/* roid_control_serve without bounds: until EAGAIN, however long clients keep
 * sending (for tests and loops that serve nothing else). */
int roid_control_drain(roid_control *c);

uint64_t roid_control_requests(const roid_control *c); /* all requests received */
uint64_t roid_control_errors(const roid_control *c);   /* requests answered with ok = false */
/* Replies not sent: the client's queue was full (ROID_CONTROL_SNDHWM), the
 * client had gone, or zmq_send failed. */
uint64_t roid_control_unsent(const roid_control *c);
/* Bytes of large replies libzmq still holds (any thread). */
size_t roid_control_queued_bytes(const roid_control *c);
/* The bound on them (ROID_CONTROL_MAX_QUEUED; tests make it smaller). */
void roid_control_set_max_queued(roid_control *c, size_t bytes);

#endif
