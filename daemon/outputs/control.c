/* control.c - the control socket (proto/live.md, "Control"). */
#include "outputs/control.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "outputs/publish.h"
#include "service/log.h"

#define VALUE_MAX 4096 /* text of one set value (a path at most) */
#define NAME_MAX_ 64   /* section or key name */

/* Bytes of large replies libzmq holds for clients (freed on its I/O thread);
 * shared with those replies, so it outlives the control object if need be. */
typedef struct {
        _Atomic size_t bytes;
        _Atomic unsigned refs;
} queued_bytes;

struct roid_control {
        void *sock;
        queued_bytes *queued;
        size_t max_queued;
        const char *cmd; /* the command of the request being handled, or NULL */
        roid_control_handler h;
        size_t max_request;
        msgpack_sbuffer sb;
        msgpack_packer pk;
        bool failed; /* a write into sb failed during this reply */
        msgpack_zone zone;
        uint64_t requests, errors, unsent;
        char endpoint[256];
        char text[VALUE_MAX]; /* one set value as text */
};

typedef struct {
        const char *section, *key;
} set_key;

/* Bare keys `set` accepts, from config.h.  Keys of [scan] and any other key
 * of these sections are given as "section.key". */
static const set_key bare_keys[] = {
        {"analysis", "segments"},    {"analysis", "k"},
        {"analysis", "cadence"},     {"analysis", "border"},
        {"analysis", "fill_holes"},  {"analysis", "seed"},
        {"analysis", "bf_radius"},   {"analysis", "df_inner"},
        {"analysis", "df_outer"},    {"analysis", "center_x"},
        {"analysis", "center_y"},    {"feedback", "rescan_factor"},
        {"feedback", "next_points"}, {"feedback", "stable_refits"},
        {"output", "map_interval"},  {"output", "status_interval"},
        {"output", "frame_every"},   {"output", "directory"},
};

static const char *const set_sections[] = {"analysis", "scan", "feedback", "output"};

/* Sockets and their queue: changing them means rebinding under the client's
 * feet; the writer's flush interval is fixed when its thread starts. */
static const set_key restart_keys[] = {
        {"output", "publish"},
        {"output", "control"},
        {"output", "publish_hwm"},
        {"output", "flush_interval"},
};

/* ------------------------------------------------------------- reply buffer */

static int write_cb(void *data, const char *buf, size_t len) {
        roid_control *c = data;

        if (c->failed)
                return -1;
        if (len == 0)
                return 0;
        if (msgpack_sbuffer_write(&c->sb, buf, len) < 0) {
                c->failed = true;
                return -1;
        }
        return 0;
}

static void key(msgpack_packer *pk, const char *k) {
        msgpack_pack_str_with_body(pk, k, strlen(k));
}

static double now_real(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* map16 header with the count patched by reply_end (see publish.c). */
static int reply_begin(roid_control *c, bool ok, const char *cmd) {
        static const char hdr[3] = {(char)0xde, 0, 0};

        msgpack_sbuffer_clear(&c->sb);
        c->failed = false;
        write_cb(c, hdr, sizeof(hdr));
        key(&c->pk, "ok");
        ok ? msgpack_pack_true(&c->pk) : msgpack_pack_false(&c->pk);
        key(&c->pk, "cmd");
        if (cmd)
                key(&c->pk, cmd);
        else
                msgpack_pack_nil(&c->pk);
        key(&c->pk, "schema");
        msgpack_pack_int(&c->pk, ROID_SCHEMA_VERSION);
        key(&c->pk, "time");
        msgpack_pack_double(&c->pk, now_real());
        return 4;
}

/* Client text may end up in an error message: keep it printable ASCII so the
 * reply's str is valid UTF-8 whatever the client sent. */
static void sanitize(char *s) {
        for (; *s; s++)
                if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
                        *s = '?';
}

static void error_pairs(roid_control *c, const char *msg) {
        char buf[ROID_ERR_MAX];

        snprintf(buf, sizeof(buf), "%s", msg);
        sanitize(buf);
        key(&c->pk, "error");
        key(&c->pk, buf);
}

static void reply_error(roid_control *c, const char *cmd, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reply_error(roid_control *c, const char *cmd, const char *fmt, ...) {
        char buf[ROID_ERR_MAX];
        va_list ap;
        int n = reply_begin(c, false, cmd);

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        error_pairs(c, buf);
        c->sb.data[1] = 0;
        c->sb.data[2] = (char)(n + 1);
}

static void reply_end(roid_control *c, int pairs) {
        c->sb.data[1] = (char)(pairs >> 8);
        c->sb.data[2] = (char)(pairs & 0xff);
}

/* --------------------------------------------------- bounded request walk */

typedef struct {
        const uint8_t *p;
        size_t len, pos;
        char why[ROID_ERR_MAX];
} walker;

static bool need(walker *w, size_t n) {
        if (w->len - w->pos < n) {
                snprintf(w->why, sizeof(w->why), "request: not msgpack (truncated at byte %zu of %zu)", w->pos, w->len);
                return false;
        }
        return true;
}

static uint64_t be(const uint8_t *p, unsigned n) {
        uint64_t v = 0;
        for (unsigned i = 0; i < n; i++)
                v = v << 8 | p[i];
        return v;
}

/* Formats 0xc4..0xdf: bytes of the big-endian length that follows the type
 * byte, fixed bytes after it (plus the length for bin/str/ext), and objects
 * per entry for containers (1 array, 2 map); 0xc1 is never used. */
static const struct {
        uint8_t lenbytes, fixed, per;
} formats[0xe0 - 0xc4] = {
        [0xc4 - 0xc4] = {1, 0, 0},  [0xc5 - 0xc4] = {2, 0, 0}, [0xc6 - 0xc4] = {4, 0, 0}, /* bin */
        [0xc7 - 0xc4] = {1, 1, 0},  [0xc8 - 0xc4] = {2, 1, 0}, [0xc9 - 0xc4] = {4, 1, 0}, /* ext */
        [0xca - 0xc4] = {0, 4, 0},  [0xcb - 0xc4] = {0, 8, 0},                            /* float */
        [0xcc - 0xc4] = {0, 1, 0},  [0xcd - 0xc4] = {0, 2, 0}, [0xce - 0xc4] = {0, 4, 0}, /* uint */
        [0xcf - 0xc4] = {0, 8, 0},  [0xd0 - 0xc4] = {0, 1, 0}, [0xd1 - 0xc4] = {0, 2, 0}, /* int */
        [0xd2 - 0xc4] = {0, 4, 0},  [0xd3 - 0xc4] = {0, 8, 0}, [0xd4 - 0xc4] = {0, 2, 0}, /* fixext */
        [0xd5 - 0xc4] = {0, 3, 0},  [0xd6 - 0xc4] = {0, 5, 0}, [0xd7 - 0xc4] = {0, 9, 0},
        [0xd8 - 0xc4] = {0, 17, 0}, [0xd9 - 0xc4] = {1, 0, 0}, [0xda - 0xc4] = {2, 0, 0}, /* str */
        [0xdb - 0xc4] = {4, 0, 0},  [0xdc - 0xc4] = {2, 0, 1}, [0xdd - 0xc4] = {4, 0, 1}, /* array */
        [0xde - 0xc4] = {2, 0, 2},  [0xdf - 0xc4] = {4, 0, 2},                            /* map */
};

/* Checks one msgpack object starting at w->pos and steps over it: lengths
 * within the buffer, containers within the entry and depth bounds. */
static bool walk(walker *w, unsigned depth) {
        uint64_t n = 0, skip = 0;
        unsigned per = 0;
        uint8_t b;

        if (!need(w, 1))
                return false;
        b = w->p[w->pos++];
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
                return true;
        if (b <= 0x8f) {
                n = b & 0x0f;
                per = 2;
        } else if (b <= 0x9f) {
                n = b & 0x0f;
                per = 1;
        } else if (b <= 0xbf) {
                skip = b & 0x1f;
        } else if (b >= 0xc4) {
                unsigned lb = formats[b - 0xc4].lenbytes;
                per = formats[b - 0xc4].per;
                skip = formats[b - 0xc4].fixed;
                if (lb) {
                        if (!need(w, lb))
                                return false;
                        n = be(w->p + w->pos, lb);
                        w->pos += lb;
                        if (!per) {
                                skip += n;
                                n = 0;
                        }
                }
        } else {
                snprintf(w->why, sizeof(w->why), "request: not msgpack (byte 0x%02x at %zu)", b, w->pos - 1);
                return false;
        }
        if (!per) {
                if (!need(w, skip))
                        return false;
                w->pos += skip;
                return true;
        }
        if (depth >= ROID_CONTROL_MAX_DEPTH) {
                snprintf(w->why, sizeof(w->why), "request: nested deeper than %d levels", ROID_CONTROL_MAX_DEPTH);
                return false;
        }
        if (n > ROID_CONTROL_MAX_ENTRIES) {
                snprintf(w->why, sizeof(w->why), "request: %s of %" PRIu64 " entries (at most %d)",
                         per == 2 ? "a map" : "an array", n, ROID_CONTROL_MAX_ENTRIES);
                return false;
        }
        for (uint64_t i = 0; i < n * per; i++)
                if (!walk(w, depth + 1))
                        return false;
        return true;
}

/* ----------------------------------------------------------- request logic */

static bool str_is(const msgpack_object *o, const char *s) {
        size_t n = strlen(s);
        return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

static const char *type_name(const msgpack_object *o) {
        switch (o->type) {
        case MSGPACK_OBJECT_NIL:
                return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
                return "a bool";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                return "an integer";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                return "a float";
        case MSGPACK_OBJECT_STR:
                return "a string";
        case MSGPACK_OBJECT_ARRAY:
                return "an array";
        case MSGPACK_OBJECT_MAP:
                return "a map";
        case MSGPACK_OBJECT_BIN:
                return "bin";
        default:
                return "ext";
        }
}

/* Copies a client string for a message: at most 48 bytes, printable. */
static const char *clip(char *buf, size_t cap, const char *s, size_t n) {
        size_t m = n < cap - 1 ? n : cap - 1;
        memcpy(buf, s, m);
        buf[m] = 0;
        sanitize(buf);
        return buf;
}

typedef struct {
        char section[NAME_MAX_], key[NAME_MAX_];
} resolved;

static bool is_name(const char *s, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
                      s[i] == '_'))
                        return false;
        return true;
}

/* "section.key" or a bare key -> section and key; false with why. */
static bool resolve(const msgpack_object *k, resolved *ret, char *why, size_t cap) {
        char shown[49];
        const char *s, *dot;
        size_t n;

        if (k->type != MSGPACK_OBJECT_STR) {
                snprintf(why, cap, "values: a key is %s, not a string", type_name(k));
                return false;
        }
        s = k->via.str.ptr;
        n = k->via.str.size;
        clip(shown, sizeof(shown), s, n);
        dot = memchr(s, '.', n);
        if (!dot) {
                if (!is_name(s, n) || n >= NAME_MAX_) {
                        snprintf(why, cap, "values.%s: not a key name", shown);
                        return false;
                }
                for (size_t i = 0; i < sizeof(bare_keys) / sizeof(bare_keys[0]); i++) {
                        if (strlen(bare_keys[i].key) == n && memcmp(bare_keys[i].key, s, n) == 0) {
                                snprintf(ret->section, sizeof(ret->section), "%s", bare_keys[i].section);
                                snprintf(ret->key, sizeof(ret->key), "%s", bare_keys[i].key);
                                return true;
                        }
                }
                snprintf(why, cap,
                         "values.%s: unknown key (bare keys are those of [analysis], [feedback], [output]; "
                         "write section.key for others)",
                         shown);
                return false;
        }
        size_t ns = (size_t)(dot - s), nk = n - ns - 1;
        if (!is_name(s, ns) || !is_name(dot + 1, nk) || ns >= NAME_MAX_ || nk >= NAME_MAX_) {
                snprintf(why, cap, "values.%s: not a section.key name", shown);
                return false;
        }
        memcpy(ret->section, s, ns);
        ret->section[ns] = 0;
        memcpy(ret->key, dot + 1, nk);
        ret->key[nk] = 0;
        bool section_ok = false;
        for (size_t i = 0; i < sizeof(set_sections) / sizeof(set_sections[0]); i++)
                section_ok |= strcmp(set_sections[i], ret->section) == 0;
        if (!section_ok) {
                snprintf(why, cap,
                         "values.%s: section [%s] cannot be set at run time (only analysis, scan, feedback, "
                         "output)",
                         shown, ret->section);
                return false;
        }
        for (size_t i = 0; i < sizeof(restart_keys) / sizeof(restart_keys[0]); i++) {
                if (strcmp(restart_keys[i].section, ret->section) == 0 && strcmp(restart_keys[i].key, ret->key) == 0) {
                        snprintf(why, cap, "values.%s: cannot be changed while running (restart roid)", shown);
                        return false;
                }
        }
        return true;
}

static bool number_text(const msgpack_object *o, char *buf, size_t cap) {
        switch (o->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                snprintf(buf, cap, "%" PRIu64, o->via.u64);
                return true;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                snprintf(buf, cap, "%" PRId64, o->via.i64);
                return true;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                snprintf(buf, cap, "%.17g", o->via.f64);
                return true;
        default:
                return false;
        }
}

/* A set value as config-file text; false with why. */
static bool value_text(const msgpack_object *v, const char *name, char *buf, size_t cap, char *why, size_t wcap) {
        char a[40], b[40];

        if (number_text(v, buf, cap))
                return true;
        switch (v->type) {
        case MSGPACK_OBJECT_BOOLEAN:
                snprintf(buf, cap, "%s", v->via.boolean ? "true" : "false");
                return true;
        case MSGPACK_OBJECT_STR:
                if (v->via.str.size >= cap || memchr(v->via.str.ptr, 0, v->via.str.size)) {
                        snprintf(why, wcap, "values.%s: a string of %u bytes (at most %zu, no NUL)", name,
                                 v->via.str.size, cap - 1);
                        return false;
                }
                memcpy(buf, v->via.str.ptr, v->via.str.size);
                buf[v->via.str.size] = 0;
                return true;
        case MSGPACK_OBJECT_ARRAY:
                if (v->via.array.size == 2 && number_text(&v->via.array.ptr[0], a, sizeof(a)) &&
                    number_text(&v->via.array.ptr[1], b, sizeof(b))) {
                        snprintf(buf, cap, "%s,%s", a, b);
                        return true;
                }
                snprintf(why, wcap, "values.%s: an array must be 2 numbers", name);
                return false;
        default:
                snprintf(why, wcap, "values.%s: %s is not a value (int, float, bool, string or [number, number])", name,
                         type_name(v));
                return false;
        }
}

static const msgpack_object *get(const msgpack_object *map, const char *k) {
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (str_is(&map->via.map.ptr[i].key, k))
                        return &map->via.map.ptr[i].val;
        return NULL;
}

/* A string key that map holds twice, or NULL.  A map has at most
 * ROID_CONTROL_MAX_ENTRIES entries (the bounded walk): pairs are compared. */
static const msgpack_object *twice(const msgpack_object *map) {
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *k = &map->via.map.ptr[i].key;
                if (k->type != MSGPACK_OBJECT_STR)
                        continue;
                for (uint32_t j = i + 1; j < map->via.map.size; j++) {
                        const msgpack_object *o = &map->via.map.ptr[j].key;
                        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size == k->via.str.size &&
                            memcmp(o->via.str.ptr, k->via.str.ptr, k->via.str.size) == 0)
                                return k;
                }
        }
        return NULL;
}

/* Every key of the request must be one the command knows. */
static bool known_keys(roid_control *c, const msgpack_object *req, const char *cmd, const char *extra) {
        char shown[49];

        for (uint32_t i = 0; i < req->via.map.size; i++) {
                const msgpack_object *k = &req->via.map.ptr[i].key;
                if (str_is(k, "cmd") || str_is(k, "schema") || (extra && str_is(k, extra)))
                        continue;
                if (k->type == MSGPACK_OBJECT_STR)
                        reply_error(c, cmd, "%s: unknown key \"%s\"", cmd,
                                    clip(shown, sizeof(shown), k->via.str.ptr, k->via.str.size));
                else
                        reply_error(c, cmd, "%s: a key is %s, not a string", cmd, type_name(k));
                return false;
        }
        return true;
}

static const char *handler_error(const char *cmd, int r) {
        if (r == -ENODATA)
                return strcmp(cmd, "series") ? "no data yet (no series has started, or the current one has no map yet: "
                                               "the series request says whether it has an analysis_error)"
                                             : "no series has started yet";
        return strerror(-r);
}

/* status, map, series, ask: the handler packs the reply's remaining pairs. */
static bool pack_handler(roid_control *c, const char *cmd, int (*fn)(void *, msgpack_packer *), unsigned n,
                         int (*ask)(void *, unsigned, msgpack_packer *)) {
        int pairs = reply_begin(c, true, cmd);
        int r = fn ? fn(c->h.ctx, &c->pk) : ask(c->h.ctx, n, &c->pk);

        if (r < 0) {
                reply_error(c, cmd, "%s: %s", cmd, handler_error(cmd, r));
                return false;
        }
        if (c->failed || pairs + r > 0xffff) {
                reply_error(c, cmd, "%s: reply could not be built (out of memory)", cmd);
                return false;
        }
        reply_end(c, pairs + r);
        return true;
}

static void pack_applied(roid_control *c, const msgpack_object *values, uint32_t n) {
        char why[ROID_ERR_MAX], name[2 * NAME_MAX_ + 1];
        resolved rk;

        key(&c->pk, "applied");
        msgpack_pack_array(&c->pk, n);
        for (uint32_t i = 0; i < n; i++) {
                resolve(&values->via.map.ptr[i].key, &rk, why, sizeof(why));
                snprintf(name, sizeof(name), "%s.%s", rk.section, rk.key);
                key(&c->pk, name);
        }
}

static bool do_set(roid_control *c, const msgpack_object *req) {
        char *text = c->text;
        char why[ROID_ERR_MAX], name[2 * NAME_MAX_ + 1];
        const msgpack_object *values = get(req, "values");
        resolved rk;
        uint32_t i;
        int pairs;

        if (!known_keys(c, req, "set", "values"))
                return false;
        if (!values) {
                reply_error(c, "set", "set: missing \"values\" (a map of key: value)");
                return false;
        }
        if (values->type != MSGPACK_OBJECT_MAP || values->via.map.size == 0) {
                reply_error(c, "set", "values: %s, not a non-empty map of key: value",
                            values->type == MSGPACK_OBJECT_MAP ? "empty" : type_name(values));
                return false;
        }
        const msgpack_object *dup = twice(values);
        if (dup) {
                char shown[49];
                reply_error(c, "set", "values: key \"%s\" given twice",
                            clip(shown, sizeof(shown), dup->via.str.ptr, dup->via.str.size));
                return false;
        }
        if (!c->h.set) {
                reply_error(c, "set", "set: not available");
                return false;
        }
        for (i = 0; i < values->via.map.size; i++) {
                const msgpack_object_kv *kv = &values->via.map.ptr[i];
                if (!resolve(&kv->key, &rk, why, sizeof(why))) {
                        reply_error(c, "set", "%s", why);
                        return false;
                }
                snprintf(name, sizeof(name), "%s.%s", rk.section, rk.key);
                if (!value_text(&kv->val, name, text, VALUE_MAX, why, sizeof(why))) {
                        reply_error(c, "set", "%s", why);
                        return false;
                }
        }
        for (i = 0; i < values->via.map.size; i++) {
                const msgpack_object_kv *kv = &values->via.map.ptr[i];
                roid_err err = {{0}};
                int r;

                resolve(&kv->key, &rk, why, sizeof(why));
                snprintf(name, sizeof(name), "%s.%s", rk.section, rk.key);
                value_text(&kv->val, name, text, VALUE_MAX, why, sizeof(why));
                r = c->h.set(c->h.ctx, rk.section, rk.key, text, &err);
                if (r < 0) {
                        char msg[ROID_ERR_MAX];
                        /* precisions: a debug build (-O0) checks that nothing can be cut */
                        snprintf(msg, sizeof(msg), "values.%.80s: %.160s", name, err.msg[0] ? err.msg : strerror(-r));
                        if (c->h.commit) {
                                roid_err ignored = {{0}};
                                c->h.commit(c->h.ctx, false, &ignored);
                        }
                        pairs = reply_begin(c, false, "set");
                        error_pairs(c, msg);
                        pack_applied(c, values, c->h.commit ? 0 : i);
                        reply_end(c, pairs + 2);
                        return false;
                }
        }
        if (c->h.commit) {
                roid_err err = {{0}};
                int r = c->h.commit(c->h.ctx, true, &err);
                if (r < 0) {
                        char msg[ROID_ERR_MAX];
                        snprintf(msg, sizeof(msg), "values: %.240s", err.msg[0] ? err.msg : strerror(-r));
                        pairs = reply_begin(c, false, "set");
                        error_pairs(c, msg);
                        pack_applied(c, values, 0);
                        reply_end(c, pairs + 2);
                        return false;
                }
        }
        pairs = reply_begin(c, true, "set");
        pack_applied(c, values, i);
        reply_end(c, pairs + 1);
        return true;
}

static bool do_ask(roid_control *c, const msgpack_object *req) {
        const msgpack_object *n = get(req, "n");

        if (!known_keys(c, req, "ask", "n"))
                return false;
        if (!n) {
                reply_error(c, "ask", "ask: missing \"n\" (an integer 1..%d)", ROID_CONTROL_MAX_ASK);
                return false;
        }
        if (n->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
            (n->type == MSGPACK_OBJECT_POSITIVE_INTEGER && (n->via.u64 < 1 || n->via.u64 > ROID_CONTROL_MAX_ASK))) {
                char v[32];
                number_text(n, v, sizeof(v));
                reply_error(c, "ask", "n: %s is out of range 1..%d", v, ROID_CONTROL_MAX_ASK);
                return false;
        }
        if (n->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                reply_error(c, "ask", "n: %s, not an integer 1..%d", type_name(n), ROID_CONTROL_MAX_ASK);
                return false;
        }
        if (!c->h.ask) {
                reply_error(c, "ask", "ask: not available");
                return false;
        }
        return pack_handler(c, "ask", NULL, (unsigned)n->via.u64, c->h.ask);
}

static bool do_reset(roid_control *c, const msgpack_object *req) {
        roid_err err = {{0}};
        int r;

        if (!known_keys(c, req, "reset", NULL))
                return false;
        if (!c->h.reset) {
                reply_error(c, "reset", "reset: not available");
                return false;
        }
        r = c->h.reset(c->h.ctx, &err);
        if (r < 0) {
                reply_error(c, "reset", "reset: %s", err.msg[0] ? err.msg : strerror(-r));
                return false;
        }
        reply_end(c, reply_begin(c, true, "reset"));
        return true;
}

/* One request of len bytes in parts frames; builds the reply in c->sb.
 * Returns true for an ok reply. */
static bool handle(roid_control *c, const uint8_t *data, size_t len, size_t total, unsigned parts) {
        static const char *const cmds[] = {"status", "map", "series", "set", "ask", "reset"};
        walker w = {.p = data, .len = len};
        msgpack_object req;
        const msgpack_object *cmd;
        const char *name = NULL;
        size_t off = 0;
        char shown[49];
        bool ok;

        if (total > c->max_request) {
                reply_error(c, NULL, "request: %zu bytes exceeds max_request_bytes %zu", total, c->max_request);
                return false;
        }
        if (parts != 1) {
                reply_error(c, NULL, "request: %u frames; a request is one frame", parts);
                return false;
        }
        if (len == 0) {
                reply_error(c, NULL, "request: empty; expected a msgpack map with \"cmd\"");
                return false;
        }
        if (!walk(&w, 0)) {
                reply_error(c, NULL, "%s", w.why);
                return false;
        }
        if (w.pos != len) {
                reply_error(c, NULL, "request: %zu bytes after the first msgpack object; a request is one map",
                            len - w.pos);
                return false;
        }
        if (msgpack_unpack((const char *)data, len, &off, &c->zone, &req) != MSGPACK_UNPACK_SUCCESS) {
                reply_error(c, NULL, "request: not msgpack");
                return false;
        }
        if (req.type != MSGPACK_OBJECT_MAP) {
                reply_error(c, NULL, "request: %s, not a map with \"cmd\"", type_name(&req));
                return false;
        }
        const msgpack_object *dup = twice(&req);
        if (dup) { /* which one a reader takes is its own choice: refused */
                char shown[49];
                reply_error(c, NULL, "request: key \"%s\" given twice",
                            clip(shown, sizeof(shown), dup->via.str.ptr, dup->via.str.size));
                return false;
        }
        cmd = get(&req, "cmd");
        if (!cmd) {
                reply_error(c, NULL, "request: no \"cmd\" key (status, map, series, set, ask or reset)");
                return false;
        }
        if (cmd->type != MSGPACK_OBJECT_STR) {
                reply_error(c, NULL, "cmd: %s, not a string (status, map, series, set, ask or reset)", type_name(cmd));
                return false;
        }
        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
                if (str_is(cmd, cmds[i]))
                        name = c->cmd = cmds[i];
        if (!name) {
                reply_error(c, NULL, "cmd: \"%s\" is not one of status, map, series, set, ask, reset",
                            clip(shown, sizeof(shown), cmd->via.str.ptr, cmd->via.str.size));
                return false;
        }
        const msgpack_object *schema = get(&req, "schema");
        if (schema && schema->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                reply_error(c, name, "schema: %s, not a positive integer", type_name(schema));
                return false;
        }
        if (!strcmp(name, "status") || !strcmp(name, "map") || !strcmp(name, "series")) {
                int (*fn)(void *, msgpack_packer *) = !strcmp(name, "status") ? c->h.status
                                                      : !strcmp(name, "map")  ? c->h.map
                                                                              : c->h.series;
                if (!known_keys(c, &req, name, NULL))
                        return false;
                if (!fn) {
                        reply_error(c, name, "%s: not available", name);
                        return false;
                }
                ok = pack_handler(c, name, fn, 0, NULL);
        } else if (!strcmp(name, "set")) {
                ok = do_set(c, &req);
        } else if (!strcmp(name, "ask")) {
                ok = do_ask(c, &req);
        } else {
                ok = do_reset(c, &req);
        }
        return ok;
}

static const char oom_reply[] = "\x82\xa2ok\xc2\xa5"
                                "error\xad"
                                "out of memory";

static uint64_t mono_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int recv_part(void *sock, zmq_msg_t *m) {
        int r;
        do {
                r = zmq_msg_recv(m, sock, ZMQ_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
}

static void queued_unref(queued_bytes *q) {
        if (atomic_fetch_sub_explicit(&q->refs, 1, memory_order_acq_rel) == 1)
                free(q);
}

/* libzmq is done with a large reply (any thread). */
static void reply_free(void *data, void *hint) {
        queued_bytes *q = hint;
        size_t *blk = (size_t *)data - 1;
        atomic_fetch_sub_explicit(&q->bytes, *blk, memory_order_relaxed);
        free(blk);
        queued_unref(q);
}

/* The reply's body as a message: a large one in a buffer of its own whose
 * bytes count until libzmq frees it; a small one copied. */
static int make_body(roid_control *c, const void *out, size_t len, zmq_msg_t *ret) {
        if (len < ROID_CONTROL_COUNTED_REPLY) {
                if (zmq_msg_init_size(ret, len) < 0)
                        return -ENOMEM;
                if (len)
                        memcpy(zmq_msg_data(ret), out, len);
                return 0;
        }
        size_t *blk = malloc(sizeof(size_t) + len);
        if (!blk)
                return -ENOMEM;
        *blk = len;
        memcpy(blk + 1, out, len);
        atomic_fetch_add_explicit(&c->queued->refs, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->queued->bytes, len, memory_order_relaxed);
        if (zmq_msg_init_data(ret, blk + 1, len, reply_free, c->queued) < 0) {
                reply_free(blk + 1, c->queued);
                return -ENOMEM;
        }
        return 0;
}

static int send_part(void *sock, zmq_msg_t *m, int flags) {
        int r;
        do {
                r = zmq_msg_send(m, sock, flags | ZMQ_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
}

/* Sends the envelope (the frames are sent, not copied) and the reply.  The
 * body is made first: once the first frame is out, the message must be
 * finished, or the next reply would join it.  ZMQ_ROUTER_MANDATORY makes
 * the first frame fail when the client's queue is full (EAGAIN) or the
 * client is gone (EHOSTUNREACH); once it is accepted the rest fits. */
static int send_reply(roid_control *c, zmq_msg_t *env, unsigned n_env, const void *out, size_t out_len) {
        zmq_msg_t body;
        int r = make_body(c, out, out_len, &body);
        if (r < 0)
                return r;
        if (n_env) {
                r = send_part(c->sock, &env[0], ZMQ_SNDMORE);
                if (r == -EAGAIN) {
                        /* libzmq learns that a client read its replies from
                         * commands it processes at most every millisecond or so
                         * while sending: under load the queue of a REQ with
                         * nothing unread could look full (1 reply in 5,000
                         * lost, found by a soak test).  ZMQ_EVENTS processes
                         * them now; a queue still full is full. */
                        int ev;
                        size_t len = sizeof ev;
                        zmq_getsockopt(c->sock, ZMQ_EVENTS, &ev, &len);
                        r = send_part(c->sock, &env[0], ZMQ_SNDMORE);
                }
        }
        for (unsigned i = 1; r == 0 && i < n_env; i++)
                r = send_part(c->sock, &env[i], ZMQ_SNDMORE);
        if (r == 0)
                r = send_part(c->sock, &body, 0);
        if (r < 0)
                zmq_msg_close(&body); /* not sent: freed (reply_free for a large one) */
        return r;
}

/* Receives one request without blocking and replies to it: 1 when one was
 * handled, 0 on EAGAIN, or a negative errno when the socket failed.
 * A message is [routing id, envelope..., empty delimiter, request]: what a
 * REQ (or a REQ behind brokers) sends.  Without an empty frame before its
 * last one (a DEALER sending bare requests) the request is the frame after
 * the routing id.  The reply goes back with the same envelope. */
static int serve_one(roid_control *c) {
        zmq_msg_t f[ROID_CONTROL_MAX_ENVELOPE + 1];
        unsigned kept = 0, n = 0, delim = 0, body, parts;
        size_t total = 0, size[ROID_CONTROL_MAX_ENVELOPE + 1];
        const void *out;
        size_t out_len;
        bool ok, more;
        int r;

        zmq_msg_init(&f[0]);
        r = recv_part(c->sock, &f[0]);
        if (r < 0) {
                zmq_msg_close(&f[0]);
                if (r == -EAGAIN)
                        return 0;
                ROID_LOG_LIMITED(ROID_LOG_ERR, "control: receive: %s", zmq_strerror(-r));
                return r;
        }
        kept = n = 1;
        size[0] = zmq_msg_size(&f[0]);
        /* The frames of a message arrive together: read them all, keeping the
         * first ones (the envelope and the request) and the size of every one. */
        more = zmq_msg_more(&f[0]);
        while (more) {
                zmq_msg_t x;
                zmq_msg_t *m = kept < ROID_CONTROL_MAX_ENVELOPE + 1 ? &f[kept] : &x;
                zmq_msg_init(m);
                r = recv_part(c->sock, m);
                more = r == 0 && zmq_msg_more(m);
                if (r < 0) {
                        zmq_msg_close(m);
                        break;
                }
                if (m == &x) {
                        total += zmq_msg_size(&x);
                        zmq_msg_close(&x);
                } else {
                        size[kept] = zmq_msg_size(m);
                        if (!delim && size[kept] == 0 && more && kept < ROID_CONTROL_MAX_ENVELOPE)
                                delim = kept;
                        kept++;
                }
                n++;
        }
        body = delim ? delim + 1 : 1;
        for (unsigned i = body; i < kept; i++)
                total += size[i];
        parts = n > body ? n - body : 0;
        c->requests++;
        c->cmd = NULL;
        if (parts == 0)
                ok = handle(c, NULL, 0, 0, 0);
        else
                ok = handle(c, zmq_msg_data(&f[body]), size[body], total, parts);
        out = c->sb.data;
        out_len = c->sb.size;
        if (c->failed) {
                /* Even the reply could not be built: a fixed one still tells
                 * the client, whose REQ would otherwise wait for ever. */
                out = oom_reply;
                out_len = sizeof(oom_reply) - 1;
                ok = false;
        }
        /* A large map or ask reply while others wait in libzmq for clients
         * that do not read them: refused, so that clients cannot make roid
         * hold more than max_queued (one reply always may wait). */
        const size_t q = atomic_load_explicit(&c->queued->bytes, memory_order_relaxed);
        if (ok && out_len >= ROID_CONTROL_COUNTED_REPLY && q > 0 &&
            (q >= c->max_queued || out_len > c->max_queued - q) && c->cmd &&
            (!strcmp(c->cmd, "map") || !strcmp(c->cmd, "ask"))) {
                reply_error(c, c->cmd,
                            "%s: busy: %.1f MiB of replies wait for clients that have not read them (at most %.1f "
                            "MiB); try again",
                            c->cmd, q / 1048576.0, c->max_queued / 1048576.0);
                out = c->sb.data;
                out_len = c->sb.size;
                ok = false;
        }
        if (!ok)
                c->errors++;
        msgpack_zone_clear(&c->zone);
        r = send_reply(c, f, delim ? delim + 1 : 1, out, out_len);
        if (r < 0) {
                c->unsent++;
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "control: reply not sent: %s",
                                 r == -EAGAIN ? "the client does not take it (its queue is full, or it has gone)"
                                 : r == -EHOSTUNREACH ? "the client has gone"
                                                      : zmq_strerror(-r));
        }
        for (unsigned i = 0; i < kept; i++)
                zmq_msg_close(&f[i]);
        /* The reply went out as a copy: a large one's buffer (a map of a large
         * grid, 22 bytes a point) is let go instead of kept for the daemon's life. */
        if (c->sb.alloc > ROID_CONTROL_COUNTED_REPLY) {
                msgpack_sbuffer_destroy(&c->sb);
                msgpack_sbuffer_init(&c->sb);
        }
        return 1;
}

int roid_control_serve(roid_control *c, unsigned max_requests, uint64_t budget_ns, bool *ret_more) {
        const uint64_t t0 = budget_ns ? mono_ns() : 0;
        int handled = 0;

        for (;;) {
                /* Checked before a receive: the one that would see EAGAIN is
                 * not spent, so a caller told "more" may find nothing. */
                if (handled > 0 && ((unsigned)handled >= max_requests || handled == INT_MAX ||
                                    (budget_ns && mono_ns() - t0 >= budget_ns))) {
                        *ret_more = true;
                        return handled;
                }
                int r = serve_one(c);
                if (r < 0)
                        return r;
                if (r == 0) {
                        *ret_more = false;
                        return handled;
                }
                handled++;
        }
}

int roid_control_drain(roid_control *c) {
        bool more;

        return roid_control_serve(c, UINT_MAX, 0, &more);
}

void *roid_control_socket(roid_control *c) {
        return c->sock;
}

uint64_t roid_control_requests(const roid_control *c) {
        return c->requests;
}

uint64_t roid_control_errors(const roid_control *c) {
        return c->errors;
}

uint64_t roid_control_unsent(const roid_control *c) {
        return c->unsent;
}

int roid_control_new(void *zctx, const char *endpoint, size_t max_request_bytes, const roid_control_handler *h,
                     roid_control **ret, roid_err *err) {
        roid_control *c;
        int64_t maxmsg;
        int zero = 0, one = 1, hwm = ROID_CONTROL_SNDHWM, r;

        if (!zctx || !endpoint || !*endpoint || !h)
                return roid_err_set(err, -EINVAL, "control endpoint: empty");
        if (max_request_bytes < ROID_CONTROL_MIN_REQUEST || max_request_bytes > ROID_CONTROL_MAX_REQUEST)
                return roid_err_set(err, -EINVAL, "[limits] max_request_bytes: %zu is not in %u..%u", max_request_bytes,
                                    ROID_CONTROL_MIN_REQUEST, ROID_CONTROL_MAX_REQUEST);
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->queued = calloc(1, sizeof(*c->queued));
        if (!c->queued) {
                free(c);
                return -ENOMEM;
        }
        c->queued->refs = 1;
        c->max_queued = ROID_CONTROL_MAX_QUEUED;
        c->h = *h;
        c->max_request = max_request_bytes;
        msgpack_sbuffer_init(&c->sb);
        msgpack_packer_init(&c->pk, c, write_cb);
        if (!msgpack_zone_init(&c->zone, 4096)) {
                msgpack_sbuffer_destroy(&c->sb);
                free(c->queued);
                free(c);
                return -ENOMEM;
        }
        c->sock = zmq_socket(zctx, ZMQ_ROUTER);
        if (!c->sock) {
                r = -errno;
                roid_err_set(err, r, "control: zmq_socket: %s", zmq_strerror(-r));
                goto fail;
        }
        maxmsg = (int64_t)max_request_bytes * 2;
        if (zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) < 0 ||
            zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero)) < 0 ||
            zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) < 0 ||
            zmq_setsockopt(c->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one)) < 0) {
                r = -errno;
                roid_err_set(err, r, "control: setsockopt: %s", zmq_strerror(-r));
                goto fail;
        }
        if (zmq_bind(c->sock, endpoint) < 0) {
                r = -errno;
                roid_err_set(err, r, "control endpoint %s: bind: %s", endpoint, zmq_strerror(-r));
                goto fail;
        }
        size_t len = sizeof(c->endpoint);
        if (zmq_getsockopt(c->sock, ZMQ_LAST_ENDPOINT, c->endpoint, &len) < 0)
                snprintf(c->endpoint, sizeof(c->endpoint), "%s", endpoint);
        *ret = c;
        return 0;
fail:
        roid_control_free(c);
        return r;
}

const char *roid_control_endpoint(const roid_control *c) {
        return c->endpoint;
}

void roid_control_free(roid_control *c) {
        if (!c)
                return;
        if (c->sock)
                zmq_close(c->sock);
        if (c->queued)
                queued_unref(c->queued); /* replies still in libzmq hold it */
        msgpack_zone_destroy(&c->zone);
        msgpack_sbuffer_destroy(&c->sb);
        free(c);
}

size_t roid_control_queued_bytes(const roid_control *c) {
        return atomic_load_explicit(&c->queued->bytes, memory_order_relaxed);
}

void roid_control_set_max_queued(roid_control *c, size_t bytes) {
        c->max_queued = bytes;
}
