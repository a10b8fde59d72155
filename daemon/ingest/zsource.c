#include "ingest/zsource.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct roid_zsource {
        void *sock;
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
                return -ENOMEM;
        z->lim = *lim;
        z->msg = calloc(lim->max_parts ? lim->max_parts : 1, sizeof *z->msg);
        z->parts = calloc(lim->max_parts ? lim->max_parts : 1, sizeof *z->parts);
        int r = -ENOMEM;
        if (!z->msg || !z->parts)
                goto fail;
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
