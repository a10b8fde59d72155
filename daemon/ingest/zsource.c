#include "ingest/zsource.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "service/log.h"

struct roid_zsource {
        void *sock;
        void *mon;              /* PAIR reading the socket's connection events, or NULL */
        bool given_up;          /* a connection closed and libzmq is not connecting again */
        bool retry_said;        /* "not reachable" was logged since the last connection */
        unsigned closes_unsaid; /* closes read from the monitor, for roid_zsource_say_closes */
        char close_peer[256];
        char endpoint[256];
        roid_limits lim;
        size_t n;
        zmq_msg_t *msg;   /* lim.max_parts of them */
        roid_part *parts; /* views of msg */
};

static void release(roid_zsource *z) {
        for (size_t i = 0; i < z->n; i++)
                zmq_msg_close(&z->msg[i]);
        z->n = 0;
}

int roid_zsource_new(void *ctx, const char *endpoint, const roid_limits *lim, int rcvhwm, roid_zsource **ret,
                     roid_err *err) {
        roid_zsource *z = calloc(1, sizeof *z);
        if (!z)
                return roid_err_set(err, -ENOMEM, "detector socket: out of memory");
        z->lim = *lim;
        z->msg = calloc(lim->max_parts ? lim->max_parts : 1, sizeof *z->msg);
        z->parts = calloc(lim->max_parts ? lim->max_parts : 1, sizeof *z->parts);
        int r = -ENOMEM;
        if (!z->msg || !z->parts) {
                roid_err_set(err, r, "detector socket: no memory for %zu message parts (max_parts)", lim->max_parts);
                goto fail;
        }
        z->sock = zmq_socket(ctx, ZMQ_PULL);
        if (!z->sock) {
                r = roid_err_set(err, -errno, "zmq_socket: %s", zmq_strerror(errno));
                goto fail;
        }
        int64_t maxsz = (int64_t)lim->max_message_bytes;
        int zero = 0;
        zmq_setsockopt(z->sock, ZMQ_MAXMSGSIZE, &maxsz, sizeof maxsz);
        zmq_setsockopt(z->sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
        zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero);
        if (zmq_connect(z->sock, endpoint) < 0) {
                r = roid_err_set(err, -errno, "cannot connect to detector endpoint '%s': %s", endpoint,
                                 zmq_strerror(errno));
                goto fail;
        }
        snprintf(z->endpoint, sizeof z->endpoint, "%s", endpoint);
        *ret = z;
        return 0;
fail:
        if (z->sock)
                zmq_close(z->sock);
        free(z->msg);
        free(z->parts);
        free(z);
        return r;
}

void roid_zsource_free(roid_zsource *z) {
        if (!z)
                return;
        release(z);
        roid_zsource_unwatch(z);
        zmq_close(z->sock);
        free(z->msg);
        free(z->parts);
        free(z);
}

void *roid_zsource_socket(roid_zsource *z) {
        return z->sock;
}

int roid_zsource_recv(roid_zsource *z, const roid_part **ret_parts, size_t *ret_n, roid_err *err) {
        release(z);
        int more = 1, flags = ZMQ_DONTWAIT;
        size_t extra = 0;
        while (more) {
                zmq_msg_t scratch, *m = z->n < z->lim.max_parts ? &z->msg[z->n] : &scratch;
                zmq_msg_init(m);
                if (zmq_msg_recv(m, z->sock, flags) < 0) {
                        int e = errno;
                        zmq_msg_close(m);
                        /* Parts of one message arrive atomically: EAGAIN only before the first. */
                        release(z);
                        return -e;
                }
                flags = 0;
                more = zmq_msg_more(m);
                if (m == &scratch) {
                        zmq_msg_close(m);
                        extra++;
                } else {
                        z->parts[z->n] = (roid_part){zmq_msg_data(m), zmq_msg_size(m)};
                        z->n++;
                }
        }
        if (extra) {
                size_t n = z->n;
                release(z);
                return roid_err_set(err, -EMSGSIZE, "message of %zu parts exceeds max_parts %zu: discarded", n + extra,
                                    z->lim.max_parts);
        }
        *ret_parts = z->parts;
        *ret_n = z->n;
        return 1;
}

const void *roid_zsource_take(roid_zsource *z, const void *data, zmq_msg_t *dst) {
        const uint8_t *d = data;
        for (size_t i = 0; i < z->n; i++) {
                const uint8_t *base = z->parts[i].data;
                if (d < base || d > base + z->parts[i].size)
                        continue;
                size_t off = (size_t)(d - base);
                zmq_msg_init(dst);
                zmq_msg_move(dst, &z->msg[i]);
                z->parts[i] = (roid_part){NULL, 0};
                return (const uint8_t *)zmq_msg_data(dst) + off;
        }
        return NULL;
}

int roid_zsource_watch(roid_zsource *z, void *ctx, roid_err *err) {
        char addr[64];
        int zero = 0;
        if (z->mon)
                return 0;
        snprintf(addr, sizeof addr, "inproc://roid-zsource-%p", (void *)z);
        if (zmq_socket_monitor(z->sock, addr,
                               ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED |
                                       ZMQ_EVENT_CONNECT_DELAYED) < 0)
                return roid_err_set(err, -errno, "detector socket monitor: %s", zmq_strerror(errno));
        void *m = zmq_socket(ctx, ZMQ_PAIR);
        if (!m || zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof zero) < 0 || zmq_connect(m, addr) < 0) {
                int r = roid_err_set(err, -errno, "detector socket monitor: %s", zmq_strerror(errno));
                if (m)
                        zmq_close(m);
                zmq_socket_monitor(z->sock, NULL, 0);
                return r;
        }
        z->mon = m;
        return 0;
}

void *roid_zsource_monitor(roid_zsource *z) {
        return z->mon;
}

/* One event: [u16 event, u32 value] in host order, then the peer's address. */
static int read_event(void *mon, uint16_t *ret_event, char *addr, size_t size) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, mon, ZMQ_DONTWAIT) < 0) {
                int e = errno;
                zmq_msg_close(&m);
                return -e;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&m) >= 6)
                memcpy(&ev, zmq_msg_data(&m), sizeof ev);
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        addr[0] = '\0';
        while (more) { /* the address, and nothing else in today's libzmq */
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, mon, 0) < 0) {
                        zmq_msg_close(&m);
                        break;
                }
                if (!addr[0]) {
                        size_t n = zmq_msg_size(&m) < size - 1 ? zmq_msg_size(&m) : size - 1;
                        memcpy(addr, zmq_msg_data(&m), n);
                        addr[n] = '\0';
                }
                more = zmq_msg_more(&m);
                zmq_msg_close(&m);
        }
        *ret_event = ev;
        return 0;
}

int roid_zsource_events(roid_zsource *z) {
        unsigned lost = 0;
        char addr[256];
        uint16_t ev = 0;
        if (!z->mon)
                return 0;
        while (read_event(z->mon, &ev, addr, sizeof addr) == 0) {
                const char *peer = addr[0] ? addr : z->endpoint;
                if (ev == ZMQ_EVENT_CONNECTED) {
                        z->given_up = false;
                        z->retry_said = false;
                        roid_log(ROID_LOG_INFO, "detector %s: connected", peer);
                } else if (ev == ZMQ_EVENT_CONNECT_RETRIED || ev == ZMQ_EVENT_CONNECT_DELAYED) {
                        z->given_up = false; /* libzmq is connecting again */
                        /* Said once until a connection comes: the endpoint is connected
                         * in the background, and a detector not there (yet) is
                         * otherwise silent (found by a documentation review). */
                        if (ev == ZMQ_EVENT_CONNECT_RETRIED && !z->retry_said) {
                                z->retry_said = true;
                                roid_log(ROID_LOG_NOTICE,
                                         "detector %s: not reachable yet (refused, no route or no such host); "
                                         "ZeroMQ keeps trying",
                                         z->endpoint);
                        }
                } else if (ev == ZMQ_EVENT_DISCONNECTED) {
                        lost++;
                        z->given_up = true; /* until libzmq says it is connecting again */
                        z->closes_unsaid++;
                        z->retry_said = true; /* the close is said, with "reconnecting" */
                        snprintf(z->close_peer, sizeof z->close_peer, "%s", peer);
                }
        }
        return (int)lost;
}

unsigned roid_zsource_say_closes(roid_zsource *z, bool mid_series) {
        if (!z->closes_unsaid)
                return 0;
        const unsigned n = z->closes_unsaid;
        z->closes_unsaid = 0;
        /* A sender that exits after its series closes as a matter of course:
         * a notice; a series still open then may be missing frames. */
        if (mid_series)
                ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                 "detector %s: %u connection%s closed during a series, by the detector or by libzmq on "
                                 "a message part over [limits] max_message_bytes %zu (messages on their way over it "
                                 "are lost); reconnecting [connections_lost]",
                                 z->close_peer, n, n == 1 ? "" : "s", z->lim.max_message_bytes);
        else
                ROID_LOG_LIMITED(ROID_LOG_NOTICE,
                                 "detector %s: %u connection%s closed between series (by the detector, or by libzmq "
                                 "on a message part over [limits] max_message_bytes %zu); reconnecting "
                                 "[connections_closed]",
                                 z->close_peer, n, n == 1 ? "" : "s", z->lim.max_message_bytes);
        return n;
}

unsigned roid_zsource_revive(roid_zsource *z, bool mid_series) {
        const unsigned n = roid_zsource_say_closes(z, mid_series);
        if (!z->given_up)
                return n;
        /* The endpoint's session is gone; disconnect only forgets it. */
        zmq_disconnect(z->sock, z->endpoint);
        if (zmq_connect(z->sock, z->endpoint) < 0) {
                roid_log(ROID_LOG_ERR, "cannot connect to detector endpoint '%s' again: %s", z->endpoint,
                         zmq_strerror(errno));
                return n;
        }
        z->given_up = false;
        roid_log(ROID_LOG_WARNING,
                 "detector %s: libzmq gave the connection up (a message part over max_message_bytes "
                 "%zu): connecting again",
                 z->endpoint, z->lim.max_message_bytes);
        return n;
}

void roid_zsource_unwatch(roid_zsource *z) {
        if (!z->mon)
                return;
        zmq_socket_monitor(z->sock, NULL, 0);
        zmq_close(z->mon);
        z->mon = NULL;
        z->given_up = false;
}
