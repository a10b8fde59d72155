/* test_control.c - the REP control socket over tcp with a fake handler:
 * every command answered with the fields the handler packed (status through
 * roid_pack_status, ask through roid_pack_suggest), set converting each
 * value to config text and resolving bare keys to their section; then bad
 * requests, each answered with ok = false and an error naming the field and
 * counted, each followed by a good request that must still work: not
 * msgpack, truncated, not a map, no cmd, cmd not a string, unknown cmd,
 * unknown keys, n of the wrong type or out of range, oversized (answered)
 * and grossly oversized (refused by libzmq: no reply, the server goes on),
 * multipart, too deep, too wide, a container header claiming 4 Gi entries,
 * trailing bytes, invalid UTF-8 echoed safely, set with keys unknown to
 * control or to the handler (its message carried, what was applied listed),
 * restart-only keys and sections.  Last, roid_control_serve's batches:
 * requests queued by a DEALER over inproc (all there before the first call)
 * are served 16 at a time then to EAGAIN, a slow handler ends a batch at its
 * time budget, and every request still gets exactly one reply, in order. */
#include "tap.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>
#include <zmq.h>

#include "outputs/control.h"
#include "outputs/publish.h"

#define MAX_REQ 256

/* ----------------------------------------------- malloc that fails on call */

/* Linked with -Wl,--wrap=malloc (tests/meson.build): the test's and
 * libroid's malloc calls come here (libzmq's do not).  While fail_from is
 * set, a request of that many bytes or more fails. */
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
static size_t fail_from;

void *__wrap_malloc(size_t n) {
        if (fail_from && n >= fail_from)
                return NULL;
        return __real_malloc(n);
}

/* ------------------------------------------------------------ fake daemon */

typedef struct {
        char section[32], key[32], value[64];
} set_call;

typedef struct {
        roid_counters ctr;
        unsigned status_calls, map_calls, ask_calls, reset_calls;
        unsigned last_n;
        long status_sleep_ns;             /* a slow status handler, for the time budget */
        size_t status_pad;                /* bytes of padding in a status reply */
        size_t map_pad;                   /* and in a map reply */
        unsigned commits, aborts, staged; /* commit calls; keys staged since the last one */
        bool refuse_commit;
        bool have_map;
        set_call sets[32];
        unsigned n_sets;
        roid_fb_point next[5];
        roid_feedback_view fb;
} fake;

static int h_status(void *ctx, msgpack_packer *pk) {
        fake *f = ctx;
        roid_status_view v = {.series = {.known = true, .series_id = 7, .unique_id = "u-7"},
                              .state = "acquiring",
                              .ctr = &f->ctr,
                              .uptime_s = 3,
                              .latency_p50_ms = NAN,
                              .latency_p99_ms = NAN};
        f->status_calls++;
        if (f->status_sleep_ns > 0) {
                struct timespec ts = {0, f->status_sleep_ns};
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
        }
        int n = roid_pack_status(pk, &v);
        if (n >= 0 && f->status_pad) {
                static char pad[1 << 20];
                msgpack_pack_str_with_body(pk, "pad", 3);
                msgpack_pack_bin_with_body(pk, pad, f->status_pad < sizeof pad ? f->status_pad : sizeof pad);
                n++;
        }
        return n;
}

static int h_map(void *ctx, msgpack_packer *pk) {
        fake *f = ctx;
        f->map_calls++;
        if (!f->have_map)
                return -ENODATA;
        msgpack_pack_str_with_body(pk, "ny", 2);
        msgpack_pack_uint32(pk, 3);
        msgpack_pack_str_with_body(pk, "nx", 2);
        msgpack_pack_uint32(pk, 4);
        if (f->map_pad) {
                static char pad[1 << 20];
                msgpack_pack_str_with_body(pk, "pad", 3);
                msgpack_pack_bin_with_body(pk, pad, f->map_pad < sizeof pad ? f->map_pad : sizeof pad);
                return 3;
        }
        return 2;
}

static int h_set(void *ctx, const char *section, const char *key, const char *value, roid_err *err) {
        fake *f = ctx;
        if (!strcmp(key, "nosuch"))
                return roid_err_set(err, -EINVAL, "[%s] %s: unknown key", section, key);
        if (!strcmp(key, "k") && strcmp(value, "2") && strcmp(value, "3") && strcmp(value, "4"))
                return roid_err_set(err, -EINVAL, "[%s] k: %s is not in 2..16", section, value);
        if (f->n_sets < 32) {
                set_call *c = &f->sets[f->n_sets++];
                snprintf(c->section, sizeof(c->section), "%s", section);
                snprintf(c->key, sizeof(c->key), "%s", key);
                snprintf(c->value, sizeof(c->value), "%s", value);
        }
        return 0;
}

/* With commit: h_set stages, h_commit applies (or refuses) them together. */
static int h_set_staged(void *ctx, const char *section, const char *key, const char *value, roid_err *err) {
        fake *f = ctx;
        int r = h_set(ctx, section, key, value, err);
        if (r == 0)
                f->staged++;
        return r;
}

static int h_commit(void *ctx, bool apply, roid_err *err) {
        fake *f = ctx;
        if (!apply) {
                f->aborts++;
                f->staged = 0;
                return 0;
        }
        if (f->refuse_commit) {
                f->aborts++;
                f->staged = 0;
                return roid_err_set(err, -EINVAL, "[analysis] center_x, center_y: give both or neither");
        }
        f->commits++;
        f->staged = 0;
        return 0;
}

static int h_ask(void *ctx, unsigned n, msgpack_packer *pk) {
        fake *f = ctx;
        roid_series_ref ref = {.known = true, .series_id = 7, .unique_id = "u-7"};
        f->ask_calls++;
        f->last_n = n;
        return roid_pack_suggest(pk, &ref, &f->fb, n);
}

static int h_reset(void *ctx, roid_err *err) {
        fake *f = ctx;
        (void)err;
        f->reset_calls++;
        roid_counters_reset(&f->ctr);
        return 0;
}

/* ----------------------------------------------------------------- client */

typedef struct {
        msgpack_zone zone;
        msgpack_object obj;
        char *buf;
        bool decoded;
} reply;

static void reply_free(reply *r) {
        if (r->buf) {
                msgpack_zone_destroy(&r->zone);
                free(r->buf);
        }
        memset(r, 0, sizeof(*r));
}

static roid_control *ctl;
static void *zctx, *req;
static unsigned n_requests, n_bad;

static void *new_req(void) {
        void *s = zmq_socket(zctx, ZMQ_REQ);
        int zero = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
        if (zmq_connect(s, roid_control_endpoint(ctl)) < 0) {
                tap_diag("connect: %s", zmq_strerror(errno));
                exit(1);
        }
        return s;
}

/* Sends one request (parts frames of the same bytes when parts > 1) and
 * serves the control socket until the reply arrives or wait_ms pass. */
static bool rpc_raw(const void *data, size_t len, unsigned parts, int wait_ms, reply *r) {
        memset(r, 0, sizeof(*r));
        for (unsigned i = 0; i < parts; i++)
                if (zmq_send(req, data, len, i + 1 < parts ? ZMQ_SNDMORE : 0) < 0)
                        return false;
        for (int t = 0; t < wait_ms; t += 5) {
                zmq_pollitem_t it = {.socket = req, .events = ZMQ_POLLIN};
                int handled = roid_control_drain(ctl);
                if (handled < 0)
                        tap_diag("drain: %d", handled);
                if (zmq_poll(&it, 1, 5) > 0) {
                        zmq_msg_t m;
                        size_t off = 0;
                        zmq_msg_init(&m);
                        zmq_msg_recv(&m, req, 0);
                        r->buf = malloc(zmq_msg_size(&m) + 1);
                        memcpy(r->buf, zmq_msg_data(&m), zmq_msg_size(&m));
                        msgpack_zone_init(&r->zone, 2048);
                        r->decoded = !zmq_msg_more(&m) &&
                                     msgpack_unpack(r->buf, zmq_msg_size(&m), &off, &r->zone, &r->obj) ==
                                             MSGPACK_UNPACK_SUCCESS &&
                                     off == zmq_msg_size(&m) && r->obj.type == MSGPACK_OBJECT_MAP;
                        zmq_msg_close(&m);
                        return true;
                }
        }
        return false;
}

static const msgpack_object *get(const msgpack_object *map, const char *k) {
        if (!map || map->type != MSGPACK_OBJECT_MAP)
                return NULL;
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *key = &map->via.map.ptr[i].key;
                if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
                    !memcmp(key->via.str.ptr, k, key->via.str.size))
                        return &map->via.map.ptr[i].val;
        }
        return NULL;
}

static bool str_eq(const msgpack_object *o, const char *s) {
        return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
               !memcmp(o->via.str.ptr, s, o->via.str.size);
}

static uint64_t u64(const msgpack_object *o) {
        return o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? o->via.u64 : UINT64_MAX;
}

static bool is_ok(const reply *r) {
        const msgpack_object *ok = get(&r->obj, "ok");
        return ok && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean;
}

/* The error text (printable ASCII, "" when absent) into buf. */
static const char *error_text(const reply *r, char *buf, size_t cap) {
        const msgpack_object *e = get(&r->obj, "error");
        size_t n = 0;
        if (e && e->type == MSGPACK_OBJECT_STR) {
                n = e->via.str.size < cap - 1 ? e->via.str.size : cap - 1;
                memcpy(buf, e->via.str.ptr, n);
        }
        buf[n] = 0;
        return buf;
}

/* Request builder over msgpack-c's packer. */
typedef struct {
        msgpack_sbuffer sb;
        msgpack_packer pk;
} builder;

static void b_init(builder *b) {
        msgpack_sbuffer_init(&b->sb);
        msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void b_str(builder *b, const char *s) {
        msgpack_pack_str_with_body(&b->pk, s, strlen(s));
}

/* {"cmd": "set", "values": {...n pairs to follow}} */
static void set_begin(builder *b, uint32_t n) {
        msgpack_pack_map(&b->pk, 2);
        b_str(b, "cmd");
        b_str(b, "set");
        b_str(b, "values");
        msgpack_pack_map(&b->pk, n);
}

static const char status_req[] = "\x81\xa3"
                                 "cmd\xa6"
                                 "status";

/* A good status request and its checks: the server must still work. */
static void still_works(const char *after) {
        reply r;
        n_requests++;
        bool got = rpc_raw(status_req, sizeof(status_req) - 1, 1, 3000, &r);
        tap_ok(got && r.decoded && is_ok(&r) && str_eq(get(&r.obj, "cmd"), "status"), "status works after %s", after);
        reply_free(&r);
}

/* A bad request: answered, ok false, the error containing `want`, counted. */
static void bad(const void *data, size_t len, unsigned parts, const char *want, const char *what) {
        reply r;
        char err[300];
        n_requests++;
        n_bad++;
        bool got = rpc_raw(data, len, parts, 3000, &r);
        const msgpack_object *ok = get(&r.obj, "ok");
        tap_ok(got && r.decoded && ok && ok->type == MSGPACK_OBJECT_BOOLEAN && !ok->via.boolean &&
                       u64(get(&r.obj, "schema")) == ROID_SCHEMA_VERSION &&
                       strstr(error_text(&r, err, sizeof(err)), want),
               "%s: error reply \"%s\" (want \"%s\")", what, got ? error_text(&r, err, sizeof(err)) : "(none)", want);
        reply_free(&r);
        tap_eq_u64(roid_control_errors(ctl), n_bad, "errors counted");
        still_works(what);
}

#define BAD(lit, want, what) bad(lit, sizeof(lit) - 1, 1, want, what)

static void bad_b(builder *b, const char *want, const char *what) {
        bad(b->sb.data, b->sb.size, 1, want, what);
        msgpack_sbuffer_destroy(&b->sb);
}

/* ------------------------------------------------------------------ tests */

/* Queues n status requests (the DEALER's empty delimiter, then the request). */
static void queue_status(void *dealer, unsigned n) {
        static const char status_req[] = "\x81\xa3"
                                         "cmd\xa6"
                                         "status";
        for (unsigned i = 0; i < n; i++) {
                zmq_send(dealer, "", 0, ZMQ_SNDMORE);
                zmq_send(dealer, status_req, sizeof(status_req) - 1, 0);
        }
}

/* Reads the DEALER's replies without waiting: how many are one ok status
 * reply each (an empty delimiter, then one frame). */
static unsigned status_replies(void *dealer, unsigned *ret_other) {
        unsigned good = 0, other = 0;
        for (;;) {
                zmq_msg_t m[2];
                int more = 1;
                unsigned frames = 0;
                size_t sizes[2] = {0, 0};
                reply r = {0};
                while (more) {
                        zmq_msg_t x;
                        zmq_msg_init(&x);
                        if (zmq_msg_recv(&x, dealer, ZMQ_DONTWAIT) < 0) {
                                zmq_msg_close(&x);
                                if (frames)
                                        other++;
                                *ret_other = other;
                                return good;
                        }
                        more = zmq_msg_more(&x);
                        if (frames < 2) {
                                zmq_msg_init(&m[frames]);
                                zmq_msg_move(&m[frames], &x);
                                sizes[frames] = zmq_msg_size(&m[frames]);
                        }
                        zmq_msg_close(&x);
                        frames++;
                }
                if (frames == 2 && sizes[0] == 0) {
                        size_t off = 0;
                        r.buf = malloc(sizes[1]);
                        memcpy(r.buf, zmq_msg_data(&m[1]), sizes[1]);
                        msgpack_zone_init(&r.zone, 2048);
                        r.decoded = msgpack_unpack(r.buf, sizes[1], &off, &r.zone, &r.obj) == MSGPACK_UNPACK_SUCCESS &&
                                    r.obj.type == MSGPACK_OBJECT_MAP;
                }
                if (r.decoded && is_ok(&r) && str_eq(get(&r.obj, "cmd"), "status"))
                        good++;
                else
                        other++;
                reply_free(&r);
                for (unsigned i = 0; i < frames && i < 2; i++)
                        zmq_msg_close(&m[i]);
        }
}

static void test_batch(fake *f, const roid_control_handler *h) {
        roid_control *c;
        roid_err err = {{0}};
        bool more = false;
        unsigned other = 0, total = 0, calls = 0, max_batch = 0;
        int zero = 0;

        if (!tap_ok(roid_control_new(zctx, "inproc://test-control-batch", MAX_REQ, h, &c, &err) == 0,
                    "batch: control bound on inproc (%s)", err.msg))
                return;
        void *dealer = zmq_socket(zctx, ZMQ_DEALER);
        zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_connect(dealer, "inproc://test-control-batch");

        queue_status(dealer, 40);
        tap_eq_i64(roid_control_serve(c, 16, 0, &more), 16, "batch: 40 queued, the first call serves 16");
        tap_ok(more, "... and says more may remain");
        tap_eq_i64(roid_control_serve(c, 16, 0, &more), 16, "batch: the second call serves 16");
        tap_ok(more, "... more may remain");
        more = true;
        tap_eq_i64(roid_control_serve(c, 16, 0, &more), 8, "batch: the third call serves the last 8");
        tap_ok(!more, "... and saw EAGAIN (more = false)");
        more = true;
        tap_eq_i64(roid_control_serve(c, 16, 0, &more), 0, "batch: nothing pending: 0");
        tap_ok(!more, "... more = false");
        tap_eq_u64(status_replies(dealer, &other), 40, "batch: 40 ok status replies");
        tap_eq_u64(other, 0, "... and nothing else");

        queue_status(dealer, 3);
        tap_eq_i64(roid_control_serve(c, 0, 0, &more), 1, "batch: max_requests 0 still serves one");
        tap_ok(more, "... more may remain");
        tap_eq_i64(roid_control_drain(c), 2, "batch: drain serves the other 2");

        /* 1.5 ms a request against a 2 ms budget: the second request ends a
         * batch (the first alone may, on a slow machine). */
        f->status_sleep_ns = 1500000;
        queue_status(dealer, 7);
        for (int r; (r = roid_control_serve(c, 16, 2000000, &more)) > 0 && calls < 20;) {
                calls++;
                total += (unsigned)r;
                if ((unsigned)r > max_batch)
                        max_batch = (unsigned)r;
                if (!more)
                        break;
        }
        f->status_sleep_ns = 0;
        tap_eq_u64(total, 7, "budget: the 7 slow requests all served");
        tap_ok(max_batch >= 1 && max_batch <= 2 && calls >= 4,
               "budget: at most 2 per 2 ms batch (largest %u, %u calls)", max_batch, calls);
        tap_ok(!more, "budget: the last call saw EAGAIN");
        tap_eq_u64(status_replies(dealer, &other), 10, "budget: 10 more ok status replies");
        tap_eq_u64(other, 0, "... and nothing else");
        tap_eq_u64(roid_control_requests(c), 50, "batch: 50 requests counted");
        tap_eq_u64(roid_control_errors(c), 0, "batch: no errors");
        tap_eq_u64(roid_control_unsent(c), 0, "batch: every reply sent");

        zmq_close(dealer);
        roid_control_free(c);
}

/* Serves until n more requests were received (or 5 s passed). */
static void serve_until(roid_control *c, uint64_t n) {
        for (int i = 0; i < 1000 && roid_control_requests(c) < n; i++) {
                roid_control_drain(c);
                struct timespec ts = {0, 5000000};
                nanosleep(&ts, NULL);
        }
}

/* A client that never reads its replies: libzmq's REP dropped what did not
 * fit its queue without a word.  Every reply is now either delivered or
 * counted as unsent.  And a client gone before its reply: counted. */
static void test_unread(fake *f, const roid_control_handler *h) {
        roid_control *c;
        roid_err err = {{0}};
        unsigned other = 0;
        int zero = 0, small = 4096, one = 1;
        const unsigned N = 64;

        if (!tap_ok(roid_control_new(zctx, "tcp://127.0.0.1:*", MAX_REQ, h, &c, &err) == 0,
                    "unread: control bound on tcp (%s)", err.msg))
                return;
        void *dealer = zmq_socket(zctx, ZMQ_DEALER);
        zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_setsockopt(dealer, ZMQ_RCVHWM, &one, sizeof(one));
        zmq_setsockopt(dealer, ZMQ_RCVBUF, &small, sizeof(small));
        zmq_connect(dealer, roid_control_endpoint(c));
        f->status_pad = 256 << 10; /* 64 x 256 KiB: far beyond the socket buffers and 8 queued replies */
        queue_status(dealer, N);
        serve_until(c, N);
        f->status_pad = 0;
        uint64_t unsent = roid_control_unsent(c);
        tap_eq_u64(roid_control_requests(c), N, "unread: 64 requests received");
        tap_ok(unsent > 0 && unsent < N, "unread: %llu replies that did not fit the client's queue counted as unsent",
               (unsigned long long)unsent);
        /* Now read: every reply that was not counted arrives. */
        unsigned got = 0;
        for (int i = 0; i < 400 && got + unsent < N; i++) {
                got += status_replies(dealer, &other);
                struct timespec ts = {0, 5000000};
                nanosleep(&ts, NULL);
        }
        tap_ok(got + unsent == N, "unread: replies received (%u) + unsent (%llu) = requests", got,
               (unsigned long long)unsent);
        tap_eq_u64(other, 0, "unread: nothing else received");
        zmq_close(dealer);

        /* A DEALER sending a bare request (no empty delimiter) gets a bare
         * reply; one behind a broker (two more envelope frames) gets its
         * envelope back. */
        void *bare = zmq_socket(zctx, ZMQ_DEALER);
        zmq_setsockopt(bare, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_connect(bare, roid_control_endpoint(c));
        for (int env = 0; env < 2; env++) {
                if (env) {
                        zmq_send(bare, "hop", 3, ZMQ_SNDMORE);
                        zmq_send(bare, "", 0, ZMQ_SNDMORE);
                }
                zmq_send(bare, status_req, sizeof(status_req) - 1, 0);
                serve_until(c, N + 1 + (unsigned)env);
                zmq_pollitem_t pi = {.socket = bare, .events = ZMQ_POLLIN};
                char frames[4][8] = {{0}};
                size_t sizes[4] = {0}, nf = 0;
                reply r = {0};
                for (int more = zmq_poll(&pi, 1, 5000) == 1; more && nf < 4; nf++) {
                        zmq_msg_t m;
                        zmq_msg_init(&m);
                        zmq_msg_recv(&m, bare, 0);
                        sizes[nf] = zmq_msg_size(&m);
                        memcpy(frames[nf], zmq_msg_data(&m), sizes[nf] < 8 ? sizes[nf] : 8);
                        more = zmq_msg_more(&m);
                        if (!more) {
                                size_t off = 0;
                                r.buf = malloc(sizes[nf]);
                                memcpy(r.buf, zmq_msg_data(&m), sizes[nf]);
                                msgpack_zone_init(&r.zone, 2048);
                                r.decoded = msgpack_unpack(r.buf, sizes[nf], &off, &r.zone, &r.obj) ==
                                            MSGPACK_UNPACK_SUCCESS;
                        }
                        zmq_msg_close(&m);
                }
                if (env == 0)
                        tap_ok(nf == 1 && r.decoded && is_ok(&r), "bare DEALER request: one-frame ok reply");
                else
                        tap_ok(nf == 3 && sizes[0] == 3 && !memcmp(frames[0], "hop", 3) && sizes[1] == 0 && r.decoded &&
                                       is_ok(&r),
                               "request behind a broker: envelope echoed, ok reply (%zu frames)", nf);
                reply_free(&r);
        }
        zmq_close(bare);

        /* A REQ that sends and is closed before roid answers.  The monitor
         * says when libzmq has seen the connection close. */
        void *mon = zmq_socket(zctx, ZMQ_PAIR);
        zmq_socket_monitor(roid_control_socket(c), "inproc://test-control-mon", ZMQ_EVENT_DISCONNECTED);
        zmq_connect(mon, "inproc://test-control-mon");
        void *gone = zmq_socket(zctx, ZMQ_REQ);
        zmq_setsockopt(gone, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_connect(gone, roid_control_endpoint(c));
        zmq_send(gone, status_req, sizeof(status_req) - 1, 0);
        zmq_pollitem_t it = {.socket = roid_control_socket(c), .events = ZMQ_POLLIN};
        tap_ok(zmq_poll(&it, 1, 5000) == 1, "gone: the request arrived");
        zmq_close(gone);
        zmq_pollitem_t mi = {.socket = mon, .events = ZMQ_POLLIN};
        tap_ok(zmq_poll(&mi, 1, 5000) == 1, "gone: libzmq saw the connection close");
        /* The I/O thread tells the socket (ends the pipe) just after the event. */
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        tap_eq_i64(roid_control_drain(c), 1, "gone: its request served");
        tap_eq_u64(roid_control_unsent(c), unsent + 1, "gone: the reply to a closed client counted as unsent");
        zmq_socket_monitor(roid_control_socket(c), NULL, 0);
        zmq_close(mon);
        roid_control_free(c);
}

/* Many clients asking for large maps and reading nothing: the bytes libzmq
 * holds for them stay bounded, the excess is refused as busy, and every
 * byte is given back once the clients read. */
static void test_queued(fake *f, const roid_control_handler *h) {
        roid_control *c;
        roid_err err = {{0}};
        int zero = 0, small = 4096;
        enum { CLIENTS = 6, EACH = 6 };
        static const char map_req[] = "\x81\xa3"
                                      "cmd\xa3"
                                      "map";
        void *cl[CLIENTS];

        if (!tap_ok(roid_control_new(zctx, "tcp://127.0.0.1:*", MAX_REQ, h, &c, &err) == 0,
                    "queued: control bound (%s)", err.msg))
                return;
        roid_control_set_max_queued(c, 2 << 20);
        f->have_map = true;
        f->map_pad = 1 << 20; /* 36 MiB in all: more than the sockets' kernel buffers take */
        for (int i = 0; i < CLIENTS; i++) {
                cl[i] = zmq_socket(zctx, ZMQ_DEALER);
                zmq_setsockopt(cl[i], ZMQ_LINGER, &zero, sizeof(zero));
                zmq_setsockopt(cl[i], ZMQ_RCVBUF, &small, sizeof(small));
                zmq_connect(cl[i], roid_control_endpoint(c));
                for (int k = 0; k < EACH; k++) {
                        zmq_send(cl[i], "", 0, ZMQ_SNDMORE);
                        zmq_send(cl[i], map_req, sizeof(map_req) - 1, 0);
                }
        }
        const uint64_t err0 = roid_control_errors(c);
        size_t most = 0;
        for (int i = 0; i < 1000 && roid_control_requests(c) < CLIENTS * EACH; i++) {
                roid_control_drain(c);
                if (roid_control_queued_bytes(c) > most)
                        most = roid_control_queued_bytes(c);
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
        }
        f->map_pad = 0;
        const uint64_t busy = roid_control_errors(c) - err0;
        tap_eq_u64(roid_control_requests(c), CLIENTS * EACH, "queued: 36 map requests of 1 MiB replies");
        tap_ok(most <= (3u << 20) + 4096 && busy > 0,
               "queued: at most %zu bytes held for clients that do not read (bound 2 MiB + one reply); %llu busy "
               "replies",
               most, (unsigned long long)busy);
        /* the clients read: libzmq frees every reply */
        size_t left = SIZE_MAX;
        for (int i = 0; i < 1000 && left; i++) {
                for (int k = 0; k < CLIENTS; k++) {
                        zmq_msg_t m;
                        zmq_msg_init(&m);
                        while (zmq_msg_recv(&m, cl[k], ZMQ_DONTWAIT) >= 0)
                                ;
                        zmq_msg_close(&m);
                }
                left = roid_control_queued_bytes(c);
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
        }
        tap_eq_u64(left, 0, "queued: every reply's bytes given back once the clients read");
        for (int i = 0; i < CLIENTS; i++)
                zmq_close(cl[i]);
        f->have_map = false;
        roid_control_free(c);
}

/* A large reply whose buffer cannot be had: that client gets no reply
 * (counted), and the next client's reply is whole, not appended to a message
 * left half sent. */
static void test_reply_oom(fake *f, const roid_control_handler *h) {
        roid_control *c;
        roid_err err = {{0}};
        int zero = 0;
        static const char map_req[] = "\x81\xa3"
                                      "cmd\xa3"
                                      "map";
        if (!tap_ok(roid_control_new(zctx, "inproc://test-control-oom", MAX_REQ, h, &c, &err) == 0,
                    "oom: control bound (%s)", err.msg))
                return;
        void *a = zmq_socket(zctx, ZMQ_REQ), *b = zmq_socket(zctx, ZMQ_REQ);
        zmq_setsockopt(a, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_setsockopt(b, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_connect(a, "inproc://test-control-oom");
        zmq_connect(b, "inproc://test-control-oom");
        f->have_map = true;
        f->map_pad = 256 << 10;
        zmq_send(a, map_req, sizeof(map_req) - 1, 0);
        fail_from = 128 << 10; /* the reply's own buffer; the packing buffer grew before */
        serve_until(c, 1);
        fail_from = 0;
        f->map_pad = 0;
        zmq_send(b, status_req, sizeof(status_req) - 1, 0);
        serve_until(c, 2);
        zmq_pollitem_t it[2] = {{.socket = a, .events = ZMQ_POLLIN}, {.socket = b, .events = ZMQ_POLLIN}};
        zmq_poll(it, 2, 2000);
        bool a_got = it[0].revents & ZMQ_POLLIN, b_ok = false;
        if (it[1].revents & ZMQ_POLLIN) {
                zmq_msg_t m;
                zmq_msg_init(&m);
                reply r = {0};
                if (zmq_msg_recv(&m, b, 0) >= 0 && !zmq_msg_more(&m)) {
                        size_t off = 0;
                        msgpack_zone_init(&r.zone, 2048);
                        r.buf = malloc(zmq_msg_size(&m));
                        memcpy(r.buf, zmq_msg_data(&m), zmq_msg_size(&m));
                        b_ok = msgpack_unpack(r.buf, zmq_msg_size(&m), &off, &r.zone, &r.obj) ==
                                       MSGPACK_UNPACK_SUCCESS &&
                               is_ok(&r) && str_eq(get(&r.obj, "cmd"), "status");
                        reply_free(&r);
                }
                zmq_msg_close(&m);
        }
        tap_ok(!a_got && roid_control_unsent(c) == 1, "oom: no buffer for a large reply: none sent, counted unsent");
        tap_ok(b_ok, "oom: the next client's reply is whole and its own");
        f->have_map = false;
        zmq_close(a);
        zmq_close(b);
        roid_control_free(c);
}

/* set with a commit handler: a request is applied whole or not at all. */
static void test_commit(fake *f, const roid_control_handler *h) {
        roid_control_handler hc = *h;
        roid_control *saved = ctl;
        void *saved_req = req;
        roid_err err = {{0}};
        char text[300];
        reply r;

        hc.set = h_set_staged;
        hc.commit = h_commit;
        if (!tap_ok(roid_control_new(zctx, "tcp://127.0.0.1:*", MAX_REQ, &hc, &ctl, &err) == 0,
                    "commit: control bound (%s)", err.msg)) {
                ctl = saved;
                return;
        }
        req = new_req();
        for (int round = 0; round < 3; round++) {
                builder b;
                b_init(&b);
                set_begin(&b, 3);
                b_str(&b, "center_y");
                msgpack_pack_double(&b.pk, 16.5);
                b_str(&b, "k");
                msgpack_pack_int(&b.pk, round == 1 ? 99 : 3); /* round 1: the handler refuses k */
                b_str(&b, "center_x");
                msgpack_pack_int(&b.pk, 16);
                f->refuse_commit = round == 2;
                unsigned commits = f->commits, aborts = f->aborts;
                bool got = rpc_raw(b.sb.data, b.sb.size, 1, 3000, &r) && r.decoded;
                const msgpack_object *ap = got ? get(&r.obj, "applied") : NULL;
                bool ap_ok = ap && ap->type == MSGPACK_OBJECT_ARRAY;
                if (round == 0)
                        tap_ok(got && is_ok(&r) && ap_ok && ap->via.array.size == 3 && f->commits == commits + 1 &&
                                       f->aborts == aborts,
                               "commit: three keys staged, committed once, all listed as applied");
                else if (round == 1)
                        tap_ok(got && !is_ok(&r) && ap_ok && ap->via.array.size == 0 && f->aborts == aborts + 1 &&
                                       f->commits == commits &&
                                       strstr(error_text(&r, text, sizeof text), "values.analysis.k: "),
                               "commit: a refused key aborts the request, nothing applied (%s)", text);
                else
                        tap_ok(got && !is_ok(&r) && ap_ok && ap->via.array.size == 0 && f->commits == commits &&
                                       strstr(error_text(&r, text, sizeof text), "values: [analysis] center_x"),
                               "commit: a refused commit applies nothing and says why (%s)", text);
                reply_free(&r);
                msgpack_sbuffer_destroy(&b.sb);
        }
        f->refuse_commit = false;
        zmq_close(req);
        roid_control_free(ctl);
        req = saved_req;
        ctl = saved;
}

static void test_good(fake *f) {
        reply r;
        builder b;
        char err[300];

        /* status: the handler packs roid_pack_status's pairs */
        roid_count(&f->ctr, ROID_C_images_received, 1234);
        still_works("start");
        n_requests++;
        b_init(&b);
        msgpack_pack_map(&b.pk, 2);
        b_str(&b, "cmd");
        b_str(&b, "status");
        b_str(&b, "schema");
        msgpack_pack_int(&b.pk, 1);
        if (tap_ok(rpc_raw(b.sb.data, b.sb.size, 1, 3000, &r) && r.decoded, "status reply decoded")) {
                const msgpack_object *o = &r.obj, *t = get(o, "time");
                tap_ok(is_ok(&r) && str_eq(get(o, "cmd"), "status") && u64(get(o, "schema")) == ROID_SCHEMA_VERSION,
                       "status: ok, cmd, schema");
                tap_ok(t && t->type == MSGPACK_OBJECT_FLOAT64 && t->via.f64 > 1.6e9, "status: time");
                tap_ok(u64(get(get(o, "counters"), "images_received")) == 1234 && u64(get(o, "series_id")) == 7 &&
                               str_eq(get(o, "series_unique_id"), "u-7") && str_eq(get(o, "state"), "acquiring"),
                       "status: the handler's fields (counters, series ids, state)");
                tap_ok(!get(o, "error"), "status: no error key");
        }
        reply_free(&r);
        msgpack_sbuffer_destroy(&b.sb);

        /* map: no data yet, then a map */
        static const char map_req[] = "\x81\xa3"
                                      "cmd\xa3"
                                      "map";
        n_requests++;
        n_bad++;
        tap_ok(rpc_raw(map_req, sizeof(map_req) - 1, 1, 3000, &r) && r.decoded && !is_ok(&r) &&
                       str_eq(get(&r.obj, "cmd"), "map") && strstr(error_text(&r, err, sizeof(err)), "no data yet"),
               "map before any series: %s", err);
        reply_free(&r);
        f->have_map = true;
        n_requests++;
        tap_ok(rpc_raw(map_req, sizeof(map_req) - 1, 1, 3000, &r) && r.decoded && is_ok(&r) &&
                       u64(get(&r.obj, "ny")) == 3 && u64(get(&r.obj, "nx")) == 4 && r.obj.via.map.size == 6,
               "map: ok, cmd, schema, time + the handler's 2 pairs");
        reply_free(&r);

        /* set: every value type, bare and dotted keys */
        n_requests++;
        b_init(&b);
        set_begin(&b, 8);
        b_str(&b, "k");
        msgpack_pack_int(&b.pk, 3);
        b_str(&b, "analysis.cadence");
        msgpack_pack_int(&b.pk, 16);
        b_str(&b, "fill_holes");
        msgpack_pack_true(&b.pk);
        b_str(&b, "rescan_factor");
        msgpack_pack_double(&b.pk, 2.5);
        b_str(&b, "directory");
        b_str(&b, "/tmp/roid out");
        b_str(&b, "scan.origin");
        msgpack_pack_array(&b.pk, 2);
        msgpack_pack_double(&b.pk, -1.5);
        msgpack_pack_int(&b.pk, 2);
        b_str(&b, "border");
        msgpack_pack_int(&b.pk, -2);
        b_str(&b, "map_interval");
        msgpack_pack_float(&b.pk, 0.25f);
        static const char *const want[8][3] = {
                {"analysis", "k", "3"},
                {"analysis", "cadence", "16"},
                {"analysis", "fill_holes", "true"},
                {"feedback", "rescan_factor", "2.5"},
                {"output", "directory", "/tmp/roid out"},
                {"scan", "origin", "-1.5,2"},
                {"analysis", "border", "-2"},
                {"output", "map_interval", "0.25"},
        };
        if (tap_ok(rpc_raw(b.sb.data, b.sb.size, 1, 3000, &r) && r.decoded && is_ok(&r), "set: ok")) {
                const msgpack_object *ap = get(&r.obj, "applied");
                bool ok = f->n_sets == 8 && ap && ap->type == MSGPACK_OBJECT_ARRAY && ap->via.array.size == 8;
                for (unsigned i = 0; ok && i < 8; i++) {
                        char full[64];
                        snprintf(full, sizeof(full), "%s.%s", want[i][0], want[i][1]);
                        ok = !strcmp(f->sets[i].section, want[i][0]) && !strcmp(f->sets[i].key, want[i][1]) &&
                             !strcmp(f->sets[i].value, want[i][2]) && str_eq(&ap->via.array.ptr[i], full);
                        if (!ok)
                                tap_diag("set %u: [%s] %s = \"%s\"", i, f->sets[i].section, f->sets[i].key,
                                         f->sets[i].value);
                }
                tap_ok(ok, "set: each key resolved to its section, each value as config text, in order; applied "
                           "lists them");
        }
        reply_free(&r);
        msgpack_sbuffer_destroy(&b.sb);

        /* ask: roid_pack_suggest's first n points */
        for (unsigned n = 3; n <= 4096; n += 4093) {
                n_requests++;
                b_init(&b);
                msgpack_pack_map(&b.pk, 2);
                b_str(&b, "cmd");
                b_str(&b, "ask");
                b_str(&b, "n");
                msgpack_pack_unsigned_int(&b.pk, n);
                if (tap_ok(rpc_raw(b.sb.data, b.sb.size, 1, 3000, &r) && r.decoded && is_ok(&r), "ask n=%u: ok", n)) {
                        const msgpack_object *pts = get(&r.obj, "points");
                        unsigned want_n = n < 5 ? n : 5;
                        bool ok = f->last_n == n && pts && pts->type == MSGPACK_OBJECT_ARRAY &&
                                  pts->via.array.size == want_n && get(&r.obj, "stable")->via.boolean &&
                                  str_eq(get(&r.obj, "units"), "um");
                        for (unsigned i = 0; ok && i < want_n; i++) {
                                const msgpack_object *p = &pts->via.array.ptr[i];
                                ok = u64(get(p, "row")) == f->next[i].row && u64(get(p, "col")) == f->next[i].col &&
                                     get(p, "x")->via.f64 == f->next[i].x &&
                                     get(p, "score")->via.f64 == f->next[i].score;
                        }
                        tap_ok(ok, "ask n=%u: the handler got n, the reply has the first %u points in order", n,
                               want_n);
                }
                reply_free(&r);
                msgpack_sbuffer_destroy(&b.sb);
        }

        /* reset */
        static const char reset_req[] = "\x81\xa3"
                                        "cmd\xa5"
                                        "reset";
        n_requests++;
        tap_ok(rpc_raw(reset_req, sizeof(reset_req) - 1, 1, 3000, &r) && r.decoded && is_ok(&r) &&
                       str_eq(get(&r.obj, "cmd"), "reset") && f->reset_calls == 1 &&
                       roid_counter_get(&f->ctr, ROID_C_images_received) == 0,
               "reset: ok, the handler ran once");
        reply_free(&r);
        tap_eq_u64(roid_control_errors(ctl), n_bad, "errors so far");
}

static void test_bad(fake *f) {
        builder b;

        BAD("\xc1", "not msgpack", "byte 0xc1 (never used)");
        BAD("\x82\xa3"
            "cm",
            "truncated", "truncated map");
        BAD("", "empty", "empty request");
        BAD("\x92\x01\x02", "not a map", "an array");
        BAD("\xa6status", "not a map", "a bare string");
        BAD("\x81\xa1x\x01", "no \"cmd\"", "map without cmd");
        BAD("\x81\xa3"
            "cmd\x05",
            "cmd: an integer, not a string", "cmd an integer");
        BAD("\x81\xa3"
            "cmd\xa6launch",
            "\"launch\" is not one of", "unknown cmd");
        BAD("\x81\xa3"
            "cmd\xa2\xff\xfe",
            "\"??\" is not one of", "cmd of invalid UTF-8 (echoed as ?)");
        BAD("\x82\xa3"
            "cmd\xa6status\xa7verbose\xc3",
            "status: unknown key \"verbose\"", "status with an unknown key");
        BAD("\x81\xa3"
            "cmd\xa6status\x00",
            "1 bytes after the first msgpack object", "trailing byte");
        BAD("\x82\xa3"
            "cmd\xa6status\xa3"
            "cmd\xa3map",
            "request: key \"cmd\" given twice", "cmd twice (which one counts is no reader's guess)");

        /* ask: n missing, of the wrong type, out of range */
        BAD("\x81\xa3"
            "cmd\xa3"
            "ask",
            "missing \"n\"", "ask without n");
        BAD("\x82\xa3"
            "cmd\xa3"
            "ask\xa1n\xa5three",
            "n: a string, not an integer", "ask n a string");
        BAD("\x82\xa3"
            "cmd\xa3"
            "ask\xa1n\xcb\x40\x04\x00\x00\x00\x00\x00\x00",
            "n: a float, not an integer", "ask n = 2.5");
        BAD("\x82\xa3"
            "cmd\xa3"
            "ask\xa1n\x00",
            "n: 0 is out of range 1..4096", "ask n = 0");
        BAD("\x82\xa3"
            "cmd\xa3"
            "ask\xa1n\xcd\x10\x01",
            "n: 4097 is out of range 1..4096", "ask n = 4097");
        BAD("\x82\xa3"
            "cmd\xa3"
            "ask\xa1n\xff",
            "n: -1 is out of range", "ask n = -1");
        tap_eq_u64(f->ask_calls, 2, "the ask handler saw only the good requests");

        /* size: answered up to twice the limit, refused by libzmq beyond */
        char big[3 * MAX_REQ];
        b_init(&b);
        msgpack_pack_map(&b.pk, 2);
        b_str(&b, "cmd");
        b_str(&b, "status");
        b_str(&b, "pad");
        memset(big, 'x', sizeof(big));
        msgpack_pack_str_with_body(&b.pk, big, MAX_REQ);
        bad(b.sb.data, b.sb.size, 1, "exceeds max_request_bytes 256", "a request over max_request_bytes");
        msgpack_sbuffer_destroy(&b.sb);
        {
                reply r;
                unsigned before = (unsigned)roid_control_requests(ctl);
                tap_ok(!rpc_raw(big, sizeof(big), 1, 300, &r), "a request of 3 x max_request_bytes gets no reply");
                reply_free(&r);
                tap_eq_u64(roid_control_requests(ctl), before, "... it never reached the control object");
                zmq_close(req);
                req = new_req(); /* that REQ waits forever: a client would time out */
                still_works("a grossly oversized request");
        }

        /* two frames */
        static const char status_req[] = "\x81\xa3"
                                         "cmd\xa6"
                                         "status";
        bad(status_req, sizeof(status_req) - 1, 2, "2 frames; a request is one frame", "multipart request");
        bad(status_req, sizeof(status_req) - 1, 3, "3 frames", "three-part request");

        /* depth, width, a lying container header */
        char deep[16];
        deep[0] = '\x82';
        memcpy(deep + 1,
               "\xa3"
               "cmd\xa6status\xa1p",
               13);
        char deeper[32];
        memcpy(deeper, deep, 14);
        for (int i = 0; i < 10; i++)
                deeper[14 + i] = '\x91';
        deeper[24] = 0;
        bad(deeper, 25, 1, "nested deeper than 8", "10 nested arrays");
        BAD("\x82\xa3"
            "cmd\xa6status\xa1p\xdc\x01\x2c",
            "array of 300 entries (at most 256)", "an array header claiming 300 entries");
        BAD("\x82\xa3"
            "cmd\xa6status\xa1p\xdd\xff\xff\xff\xff",
            "array of 4294967295 entries (at most 256)", "an array header claiming 4 Gi entries");
        BAD("\x82\xa3"
            "cmd\xa6status\xa1p\xdf\x00\x01\x00\x00",
            "map of 65536 entries", "a map header claiming 65536 entries");
        BAD("\x82\xa3"
            "cmd\xa6status\xa1p\x9f\x01",
            "truncated", "a fixarray of 15 with one element");
        BAD("\x82\xa3"
            "cmd\xa6status\xa1p\xdb\x7f\xff\xff\xff",
            "truncated", "a str32 header claiming 2 GiB");
}

static void test_set_errors(fake *f) {
        char err[300];
        reply r;
        builder b;
        unsigned sets_before = f->n_sets;

        /* a key unknown to the handler: its message is carried */
        b_init(&b);
        set_begin(&b, 1);
        b_str(&b, "analysis.nosuch");
        msgpack_pack_int(&b.pk, 1);
        bad_b(&b, "values.analysis.nosuch: [analysis] nosuch: unknown key", "set analysis.nosuch");

        /* a key given twice: refused, nothing applied */
        b_init(&b);
        set_begin(&b, 2);
        b_str(&b, "analysis.k");
        msgpack_pack_int(&b.pk, 3);
        b_str(&b, "analysis.k");
        msgpack_pack_int(&b.pk, 5);
        bad_b(&b, "values: key \"analysis.k\" given twice", "set with a key twice");
        tap_ok(f->n_sets == sets_before, "... nothing applied (%u sets)", f->n_sets - sets_before);

        /* the handler refuses the second value: the first was applied */
        b_init(&b);
        set_begin(&b, 3);
        b_str(&b, "cadence");
        msgpack_pack_int(&b.pk, 8);
        b_str(&b, "k");
        msgpack_pack_int(&b.pk, 99);
        b_str(&b, "seed");
        msgpack_pack_int(&b.pk, 5);
        n_requests++;
        n_bad++;
        if (tap_ok(rpc_raw(b.sb.data, b.sb.size, 1, 3000, &r) && r.decoded && !is_ok(&r), "set k=99 refused")) {
                const msgpack_object *ap = get(&r.obj, "applied");
                tap_ok(strstr(error_text(&r, err, sizeof(err)),
                              "values.analysis.k: [analysis] k: 99 is not in 2..16") != NULL,
                       "set k=99: the handler's message: %s", err);
                tap_ok(ap && ap->type == MSGPACK_OBJECT_ARRAY && ap->via.array.size == 1 &&
                               str_eq(&ap->via.array.ptr[0], "analysis.cadence") && f->n_sets == sets_before + 1,
                       "set k=99: applied lists what went before, nothing after was tried");
        }
        reply_free(&r);
        msgpack_sbuffer_destroy(&b.sb);
        still_works("a set refused by the handler");
        sets_before = f->n_sets;

        /* refused by control: the handler is not called for any key */
        static const struct {
                const char *key, *want;
        } keys[] = {
                {"bogus", "values.bogus: unknown key"},
                {"output.publish", "values.output.publish: cannot be changed while running"},
                {"output.publish_hwm", "cannot be changed while running"},
                {"detector.endpoint", "section [detector] cannot be set at run time"},
                {"limits.max_parts", "section [limits] cannot be set"},
                {"analysis.", "not a section.key name"},
                {"a b", "not a key name"},
        };
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                b_init(&b);
                set_begin(&b, 2);
                b_str(&b, "k"); /* valid, but nothing is applied when any key is bad */
                msgpack_pack_int(&b.pk, 3);
                b_str(&b, keys[i].key);
                msgpack_pack_int(&b.pk, 1);
                bad_b(&b, keys[i].want, keys[i].key);
        }
        /* values of the wrong kind */
        static const char *const kinds[] = {"nil", "map", "bin", "array of 3"};
        for (int i = 0; i < 4; i++) {
                b_init(&b);
                set_begin(&b, 1);
                b_str(&b, "k");
                if (i == 0)
                        msgpack_pack_nil(&b.pk);
                else if (i == 1)
                        msgpack_pack_map(&b.pk, 0);
                else if (i == 2)
                        msgpack_pack_bin_with_body(&b.pk, "ab", 2);
                else {
                        msgpack_pack_array(&b.pk, 3);
                        for (int j = 0; j < 3; j++)
                                msgpack_pack_int(&b.pk, j);
                }
                bad_b(&b, i == 3 ? "values.analysis.k: an array must be 2 numbers" : "values.analysis.k: ", kinds[i]);
        }
        BAD("\x82\xa3"
            "cmd\xa3set\xa6values\x80",
            "values: empty", "set with no values");
        BAD("\x81\xa3"
            "cmd\xa3set",
            "missing \"values\"", "set without values");
        BAD("\x82\xa3"
            "cmd\xa3set\xa6values\x05",
            "values: an integer, not a non-empty map", "set values an integer");
        tap_eq_u64(f->n_sets, sets_before, "no handler call for a request refused by control");
}

int main(void) {
        fake f;
        roid_err err = {{0}};
        roid_control_handler h;

        memset(&f, 0, sizeof(f));
        for (unsigned i = 0; i < 5; i++)
                f.next[i] = (roid_fb_point){.row = i, .col = 2 * i, .x = 0.5 * i, .y = -0.25 * i, .score = 10.0 - i};
        f.fb = (roid_feedback_view){
                .frames = 9, .updates = 2, .stable = true, .motor = true, .units = "um", .next = f.next, .n_next = 5};
        h = (roid_control_handler){
                .ctx = &f, .status = h_status, .map = h_map, .set = h_set, .ask = h_ask, .reset = h_reset};
        zctx = zmq_ctx_new();

        roid_control *dummy = (roid_control *)&dummy;
        tap_eq_i64(roid_control_new(zctx, "tcp://127.0.0.1:*", 10, &h, &dummy, &err), -EINVAL,
                   "max_request_bytes 10 refused");
        tap_ok(strstr(err.msg, "max_request_bytes") && dummy == (roid_control *)&dummy, "... named, ret untouched: %s",
               err.msg);
        if (!tap_ok(roid_control_new(zctx, "tcp://127.0.0.1:*", MAX_REQ, &h, &ctl, &err) == 0, "control bound (%s)",
                    err.msg))
                return tap_done();
        tap_diag("control on %s", roid_control_endpoint(ctl));
        req = new_req();
        tap_eq_i64(roid_control_drain(ctl), 0, "drain with nothing pending returns 0");

        test_good(&f);
        test_bad(&f);
        test_set_errors(&f);
        test_batch(&f, &h);
        test_unread(&f, &h);
        test_commit(&f, &h);
        test_queued(&f, &h);
        test_reply_oom(&f, &h);
        tap_eq_u64(roid_control_requests(ctl), n_requests, "every request counted");
        tap_eq_u64(roid_control_errors(ctl), n_bad, "every bad request counted as an error");

        zmq_close(req);
        roid_control_free(ctl);
        zmq_ctx_term(zctx);
        return tap_done();
}
