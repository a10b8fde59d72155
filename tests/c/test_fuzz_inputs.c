/* Mutation fuzzing of roid's outside inputs other than the detector stream
 * (test_fuzz.c does that one), deterministic so that a failure reproduces.
 * Each round mutates a valid seed: bit flips, boundary bytes, length heads,
 * truncation, chunk removal and duplication, splices, and mutations that know
 * the format (msgpack type bytes, container and string lengths, deep nesting,
 * huge counts; CBOR record and part heads; config keys, sections, values and
 * lines).  Checked:
 *
 * - control socket: requests sent through the real REP socket over tcp and
 *   drained as the daemon drains it (1..4 pending at once, some multipart).
 *   Every request gets exactly one reply: one msgpack map, "ok" a bool,
 *   "schema" 1, "cmd" nil or a command, every string UTF-8, and when ok is
 *   false a non-empty printable "error".  The request and error counters move
 *   by what was sent and refused; each handler is called exactly as the
 *   replies say, and only with what control.h promises (set: an allowed
 *   section, a key name, a value under 4096 bytes; ask: n in 1..4096).  set
 *   reaches a real configuration as the daemon's handler does
 *   (roid_config_set, then validate), which must stay within its ranges.
 * - capture files: an independent reader of the format (below) says which
 *   records a mutated file holds; roid_capture_next must return exactly those
 *   (the same bytes, in the file, within the limits), then 0, or an error
 *   naming the record's offset where the reference finds one, and after an
 *   error no record (and ret_n untouched).  Records are fed to an ingest as
 *   `roid replay` does.
 * - configuration: a file (config/roid.conf and others), then command-line
 *   overrides, then roid_config_validate, as roid builds it: either an error
 *   naming the file and line or "[section] key" with the configuration left
 *   untouched, or a configuration whose every value is within the range the
 *   key table documents and that survives roid_config_format and a reload.
 *
 * Over each part: no crash or bad memory access (the sanitizer build), a
 * bounded heap, and a good input works afterwards.  HDF5 inputs are not
 * fuzzed: libhdf5 itself does not survive corrupt files.
 *
 * ROID_FUZZ_ROUNDS overrides the rounds of each part, ROID_FUZZ_SEED the seed. */
#include <cbor.h>
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#include "ingest/capture.h"
#include "ingest/ingest.h"
#include "outputs/control.h"
#include "outputs/publish.h"
#include "service/config.h"
#include "service/log.h"
#include "service/text.h"
#include "fuzz.h"
#include "tap.h"

#define PICK(a) ((a)[fuzz_rnd_below(sizeof(a) / sizeof((a)[0]))])

static char tmpdir[64];

static bool write_file(const char *path, const void *p, size_t n) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return false;
        bool ok = write(fd, p, n) == (ssize_t)n;
        return close(fd) == 0 && ok;
}

/* A failure seen in a round: counted, the first one described. */
typedef struct {
        unsigned n, round;
        char what[320];
} failures;

static void fail(failures *f, unsigned round, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(failures *f, unsigned round, const char *fmt, ...) {
        if (f->n++ == 0) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(f->what, sizeof f->what, fmt, ap);
                va_end(ap);
                f->round = round;
        }
}

static bool none(const failures *f, const char *what) {
        if (f->n == 0)
                return tap_ok(true, "%s", what);
        return tap_ok(false, "%s (%u failures; the first in round %u: %s)", what, f->n, f->round, f->what);
}

/* Which kinds of refusal the fuzzing reached: each must be reached, or the
 * mutations have stopped exercising that check. */
typedef struct {
        const char *word;
        unsigned n;
} kind_seen;

static void seen(kind_seen *k, size_t nk, const char *msg) {
        for (size_t i = 0; i < nk; i++)
                k[i].n += strstr(msg, k[i].word) != NULL;
}

static void all_seen(const kind_seen *k, size_t nk, const char *part) {
        char missing[512] = "";
        for (size_t i = 0; i < nk; i++)
                if (!k[i].n && strlen(missing) + strlen(k[i].word) + 4 < sizeof missing)
                        strcat(strcat(strcat(missing, " \""), k[i].word), "\"");
        tap_ok(!missing[0], "%s: every kind of refusal was reached (%zu kinds)%s%s", part, nk,
               missing[0] ? "; never:" : "", missing);
}

/* ---- generic mutations ---- */

/* Replaces b[a, e) of the n bytes in b (capacity cap) with ins[0, m). */
static bool put_bytes(uint8_t *b, size_t *n, size_t cap, size_t a, size_t e, const void *ins, size_t m) {
        if (a > e || e > *n || *n - (e - a) + m > cap)
                return false;
        memmove(b + a + m, b + e, *n - e);
        memcpy(b + a, ins, m);
        *n = *n - (e - a) + m;
        return true;
}

static bool utf8_ok(const uint8_t *s, size_t n) {
        return roid_utf8_invalid_at((const char *)s, n) == n;
}

/* numbers: good ones of every range and the boundaries around them */
/* clang-format off */
static const char *const v_numbers[] = {
        "0", "1", "-1", "-0", "2", "3", "5", "16", "17", "40", "41", "64", "65", "-64", "-65", "1000", "4096", "4097",
        "65536", "65537", "1000000", "1000000000", "1000000001", "99999999999999999999", "18446744073709551615",
        "18446744073709551616", "9223372036854775807", "-9223372036854775808", "4294967296", "2147483648",
        "-2147483649", "1000000000000", "1000000000001", "nan", "NaN", "-nan", "inf", "-inf", "infinity", "1e999",
        "-1e999", "1e-999", "4.9e-324", "0x10", "0x1p-3", "1.5", "0.5", "0.25", "0.002", "0.001", "0.05", "3600",
        "3600.0000001", "604800", "604801", "1e308", " 3", "3 ", "+3"
};
/* sizes with suffixes, shapes and pairs */
static const char *const v_shaped[] = {
        "1K", "1k", "4K", "3K", "64G", "65G", "16M", "17M", "1G", "4G", "1T", "17179869184T", "16777215T", "5Q", "K",
        "1KK", "64x128", "64X128", "64,128", "0x5", "4096x4096", "4096x4097", "8192x8192", "1x16777216", "16777217x1",
        "18446744073709551616x1", "1,1", "0,1", "1,0", "-1.5, 2", "1,nan", "1,inf", "1,", ",1", "1,2,3", "1e308,1e308"
};
/* booleans, enumerations, endpoints, channels */
static const char *const v_words[] = {
        "true", "false", "yes", "off", "On", "maybe", "x", "y", "X", "wait", "drop", "debug", "err", "warning",
        "info ", "tcp://", "tcp://*:5557", "tcp://0.0.0.0:5558", "ipc:///tmp/roid-x", "://x", "#0", "#3", "#1000000",
        "#1000001", "#-1", "#", "#1x", "#a", "um", "mm", "nm"
};
/* text: quotes, comments, control characters, UTF-8 good and bad */
static const char *const v_texts[] = {
        "", "threshold_1", "a ;b", "a;b", ";a", "\"quoted\"", "\"", "\"\"", "\" padded \"", "micrometres!!!!",
        "micrometres!!!!!", "\xc2\xb5m", "\xff\xfe", "\xc3\xa9", "\xc3", "m\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80",
        "\xc0\x80", "\xef\xbb\xbf", "a\tb", "a\x01", "\x7f", "/tmp/roid out", "/data/roid", "=", "[analysis]", "k = 3"
};
/* clang-format on */

/* A value a configuration line or a set request may carry. */
static const char *some_value(void) {
        switch (fuzz_rnd_below(4)) {
        case 0:
                return PICK(v_numbers);
        case 1:
                return PICK(v_shaped);
        case 2:
                return PICK(v_words);
        default:
                return PICK(v_texts);
        }
}

static const uint8_t mp_magic[] = {0x00, 0x01, 0x0f, 0x10, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x91, 0x9f,
                                   0xa0, 0xa1, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
                                   0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd3, 0xd4,
                                   0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};
static const uint8_t cbor_magic[] = {0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x40, 0x41, 0x57, 0x58,
                                     0x59, 0x5a, 0x5b, 0x5f, 0x60, 0x7f, 0x80, 0x81, 0x84, 0x97, 0x98, 0x99, 0x9a,
                                     0x9b, 0x9c, 0x9f, 0xa0, 0xbf, 0xc0, 0xd8, 0xd9, 0xf6, 0xf7, 0xfa, 0xfb, 0xff};
static const uint8_t ini_magic[] = {'[', ']', '=', ':', ';', '#', '"',  ' ',  '\t', '\n', '\r', '\0', 'x',
                                    ',', '.', '-', '0', '9', 'K', 0x7f, 0x80, 0xc3, 0xef, 0xbb, 0xbf, 0xff};

/* ====================================================== 1. configuration */

/* Text of a configured string: terminated inside its array, no control
 * characters, UTF-8 (it is published in msgpack str values). */
static bool text_ok(const char *s, size_t cap, bool may_be_empty) {
        const size_t n = strnlen(s, cap);
        if (n == cap || (!may_be_empty && n == 0))
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return utf8_ok((const uint8_t *)s, n);
}

#define IN(x, lo, hi) ((x) >= (lo) && (x) <= (hi))

/* The ranges of the key table (config.h and `roid --help`), written out here
 * again; NULL when every value is within them, else the broken condition. */
static const char *config_insane(const roid_config *c) {
        const roid_analysis_params *a = &c->analysis;
        const double GiB = 1024.0 * 1024 * 1024;
#define NEED(cond)                                                                                                     \
        do {                                                                                                           \
                if (!(cond))                                                                                           \
                        return #cond;                                                                                  \
        } while (0)
        NEED(text_ok(c->detector, sizeof c->detector, false) && strstr(c->detector, "://"));
        NEED(text_ok(c->channel, sizeof c->channel, false));
        NEED(c->channel[0] != '#' || (isdigit((unsigned char)c->channel[1]) && atoll(c->channel + 1) <= 1000000));
        NEED(IN(c->rcvhwm, 1, 1000000));
        NEED(text_ok(a->output_dir, sizeof a->output_dir, true));
        NEED(text_ok(c->publish, sizeof c->publish, true) && (!c->publish[0] || strstr(c->publish, "://")));
        NEED(text_ok(c->control, sizeof c->control, true) && (!c->control[0] || strstr(c->control, "://")));
        NEED(!c->publish[0] || strcmp(c->publish, c->control) != 0);
        NEED(IN(c->sndhwm, 1, 100000));
        NEED(IN(c->map_interval, 0.002, 3600));
        NEED(IN(c->status_interval, 0.05, 3600));
        NEED(c->frame_every <= 1000000000u);
        NEED(IN(c->flush_interval, 0.05, 3600));
        NEED(IN(a->roi.n_segments, 1u, 40u));
        NEED(IN(a->roi.k, 2u, 16u));
        NEED(a->roi.cadence <= 1000000000u);
        NEED(IN(a->roi.border, -64, 64));
        NEED(IN(a->r_bf, 0, 65536) && a->roi.use_bf == (a->r_bf > 0));
        NEED(IN(a->r_df_in, 0, 65536) && IN(a->r_df_out, 0, 65536) && a->roi.use_df == (a->r_df_out > 0));
        NEED(a->r_df_out > 0 ? a->r_df_in < a->r_df_out : a->r_df_in == 0);
        NEED(isnan(a->center_x) == isnan(a->center_y));
        NEED(isnan(a->center_x) || (IN(a->center_x, -65536, 65536) && IN(a->center_y, -65536, 65536)));
        NEED(a->scan.source == ROID_SCAN_FROM_NONE ||
             (a->scan.source == ROID_SCAN_FROM_CONFIG && a->scan.ny >= 1 && a->scan.nx >= 1 &&
              (uint64_t)a->scan.ny * a->scan.nx <= (UINT64_C(1) << 24)));
        NEED(a->scan.fast_axis == ROID_SCAN_FAST_X || a->scan.fast_axis == ROID_SCAN_FAST_Y);
        NEED(isfinite(a->scan.origin_x) && isfinite(a->scan.origin_y));
        NEED(isfinite(a->scan.step_x) && isfinite(a->scan.step_y) && a->scan.step_x != 0 && a->scan.step_y != 0);
        NEED(text_ok(a->scan.units, sizeof a->scan.units, true));
        NEED(IN(c->rescan_factor, 1, 16));
        NEED(c->next_points <= 4096);
        NEED(IN(c->stable_refits, 1u, 1000u));
        NEED(IN(c->workers, 1u, 64u));
        NEED(IN(c->queue_depth, 2u, 65536u));
        NEED(c->queue_full == ROID_QUEUE_WAIT || c->queue_full == ROID_QUEUE_DROP);
        NEED(IN((double)c->limits.max_message_bytes, 4096, 64 * GiB));
        NEED(IN(c->limits.max_parts, 4u, 1024u));
        NEED(IN((double)c->limits.max_json_bytes, 1024, GiB));
        NEED(IN((double)c->limits.max_pixels, 1, 4 * GiB));
        NEED(IN((double)c->limits.max_frame_bytes, 1024, 64 * GiB));
        NEED(IN((double)c->limits.max_images, 1, 1e12));
        NEED(IN(c->limits.max_depth, 1u, 256u) && a->max_depth == c->limits.max_depth);
        NEED(IN(c->max_request_bytes, 64u, 16u << 20));
        NEED(c->log_level == ROID_LOG_ERR || c->log_level == ROID_LOG_WARNING || c->log_level == ROID_LOG_NOTICE ||
             c->log_level == ROID_LOG_INFO || c->log_level == ROID_LOG_DEBUG);
        NEED(IN(c->watchdog_stall, 1, 3600));
        NEED(IN(c->idle_timeout, 0, 604800));
        NEED(IN(c->exit_after_series, 0, 1000000000));
#undef NEED
        return NULL;
}

enum { CONF_CAP = 1 << 17, FMT_CAP = 1 << 16 };

static const char *const sections[] = {"detector",   "output",  "analysis", "scan",      "feedback", "pipeline",
                                       "limits",     "service", "Analysis", "analysis ", "",         "limit",
                                       "scan.shape", "output]", "[output",  " detector"};

/* Start and end (without the newline) of the line holding b[at]. */
static void line_at(const uint8_t *b, size_t n, size_t at, size_t *ret_start, size_t *ret_end) {
        size_t s = at, e = at;
        while (s > 0 && b[s - 1] != '\n')
                s--;
        while (e < n && b[e] != '\n')
                e++;
        *ret_start = s;
        *ret_end = e;
}

/* A line "key = value" (not a comment or section): its start, '=', end. */
static bool key_line(const uint8_t *b, size_t n, size_t *ret_s, size_t *ret_eq, size_t *ret_e) {
        for (int tries = 0; tries < 16 && n; tries++) {
                size_t s, e;
                line_at(b, n, fuzz_rnd_below(n), &s, &e);
                const uint8_t *eq = memchr(b + s, '=', e - s);
                if (eq && b[s] != '#' && b[s] != ';' && b[s] != '[') {
                        *ret_s = s;
                        *ret_eq = (size_t)(eq - b);
                        *ret_e = e;
                        return true;
                }
        }
        return false;
}

/* A key name: one of the table (of any section), or a near miss. */
static void some_key(char *buf, size_t cap) {
        size_t nk;
        const roid_config_key *k = roid_config_keys(&nk);
        snprintf(buf, cap, "%s", k[fuzz_rnd_below(nk)].key);
        switch (fuzz_rnd_below(6)) {
        case 0: /* a letter off */
                if (buf[0]) {
                        const size_t at = fuzz_rnd_below(strlen(buf));
                        buf[at] = (char)('a' + fuzz_rnd_below(26));
                }
                break;
        case 1:
                snprintf(buf + strlen(buf), cap - strlen(buf), "%s", fuzz_rnd_below(2) ? "_" : "x");
                break;
        case 2:
                snprintf(buf, cap, "%s", fuzz_rnd_below(2) ? "" : "nosuch");
                break;
        default:
                break;
        }
}

/* A few token-level mutations of a configuration text, or byte-level ones. */
static size_t mutate_config(uint8_t *b, size_t n, const uint8_t *other, size_t on) {
        size_t s, eq, e;
        char t[1200];
        switch (fuzz_rnd_below(11)) {
        case 0:
        case 1: /* another value */
                if (key_line(b, n, &s, &eq, &e)) {
                        const char *v = some_value();
                        switch (fuzz_rnd_below(5)) {
                        case 0:
                                snprintf(t, sizeof t, " \"%s\"", v);
                                break;
                        case 1:
                                snprintf(t, sizeof t, "%s ; comment", v);
                                break;
                        default:
                                snprintf(t, sizeof t, " %s", v);
                                break;
                        }
                        put_bytes(b, &n, CONF_CAP, eq + 1, e, t, strlen(t));
                }
                break;
        case 2: /* another key */
                if (key_line(b, n, &s, &eq, &e)) {
                        some_key(t, 64);
                        strcat(t, " ");
                        put_bytes(b, &n, CONF_CAP, s, eq, t, strlen(t));
                }
                break;
        case 3: { /* a section line */
                line_at(b, n, fuzz_rnd_below(n), &s, &e);
                const char *sec = PICK(sections);
                switch (fuzz_rnd_below(4)) {
                case 0:
                        snprintf(t, sizeof t, "[%s", sec);
                        break;
                case 1:
                        snprintf(t, sizeof t, "[%s] ; comment", sec);
                        break;
                case 2:
                        snprintf(t, sizeof t, "[%s]]", sec);
                        break;
                default:
                        snprintf(t, sizeof t, "[%s]", sec);
                        break;
                }
                put_bytes(b, &n, CONF_CAP, s, e, t, strlen(t));
                break;
        }
        case 4: { /* a line twice (a duplicated key, or a key in two sections) */
                line_at(b, n, fuzz_rnd_below(n), &s, &e);
                size_t len = e - s < sizeof t - 1 ? e - s : sizeof t - 1, s2, e2;
                memcpy(t, b + s, len);
                t[len++] = '\n';
                line_at(b, n, fuzz_rnd_below(n), &s2, &e2);
                put_bytes(b, &n, CONF_CAP, s2, s2, t, len);
                break;
        }
        case 5: /* a line less */
                line_at(b, n, fuzz_rnd_below(n), &s, &e);
                put_bytes(b, &n, CONF_CAP, s, e < n ? e + 1 : e, "", 0);
                break;
        case 6: { /* a line more, anywhere (also before the first section) */
                size_t nk, at = fuzz_rnd_below(4) ? fuzz_rnd_below(n) : 0;
                const roid_config_key *k = roid_config_keys(&nk);
                line_at(b, n, at, &s, &e);
                const char *indent = fuzz_rnd_below(8) ? "" : "  ", *key = k[fuzz_rnd_below(nk)].key, *v = some_value();
                snprintf(t, sizeof t, "%s%s = %s\n", indent, key, v);
                put_bytes(b, &n, CONF_CAP, s, s, t, strlen(t));
                break;
        }
        case 7: /* a long line, around ROID_CONFIG_LINE_MAX */
                if (key_line(b, n, &s, &eq, &e)) {
                        static const size_t lens[] = {196, 197, 198, 199, 200, 201, 255, 1000};
                        size_t want = PICK(lens), have = eq + 1 - s;
                        size_t pad = want > have + 1 ? want - have - 1 : 1;
                        t[0] = ' ';
                        memset(t + 1, fuzz_rnd_below(2) ? '9' : 'a', pad);
                        put_bytes(b, &n, CONF_CAP, eq + 1, e, t, pad + 1);
                }
                break;
        case 8: /* blanks, line ends, separators, comments */
                line_at(b, n, fuzz_rnd_below(n), &s, &e);
                switch (fuzz_rnd_below(6)) {
                case 0:
                        put_bytes(b, &n, CONF_CAP, e, e, "\r", 1);
                        break;
                case 1:
                        put_bytes(b, &n, CONF_CAP, s, s, " \t ", 1 + fuzz_rnd_below(3));
                        break;
                case 2:
                        put_bytes(b, &n, CONF_CAP, 0, 0, "\xef\xbb\xbf", 3);
                        break;
                case 3: {
                        uint8_t *q = memchr(b + s, '=', e - s);
                        if (q)
                                *q = ':';
                        break;
                }
                case 4:
                        put_bytes(b, &n, CONF_CAP, e, e, fuzz_rnd_below(2) ? " ; x" : " # x", 4);
                        break;
                default:
                        put_bytes(b, &n, CONF_CAP, e, e, "   ", 3);
                        break;
                }
                break;
        default:
                n = fuzz_mutate(b, n, CONF_CAP, other, on, ini_magic, sizeof ini_magic,
                                1 + (unsigned)fuzz_rnd_below(4));
                break;
        }
        if (fuzz_rnd_below(4) == 0)
                n = fuzz_mutate(b, n, CONF_CAP, other, on, ini_magic, sizeof ini_magic, 1);
        return n;
}

/* A load error names the file, and for -EINVAL the line and what is wrong
 * there ("[section] key", a syntax error, ...). */
static bool load_error_named(const char *msg, int r, const char *path, size_t lines) {
        const size_t pl = strlen(path);
        if (strncmp(msg, path, pl) != 0 || msg[pl] != ':')
                return false;
        if (r != -EINVAL)
                return msg[pl + 1] != 0;
        const char *p = msg + pl + 1;
        char *end;
        const long line = strtol(p, &end, 10);
        if (end == p || *end != ':' || line < 1 || (size_t)line > lines)
                return false;
        p = end + 1;
        while (*p == ' ')
                p++;
        return *p == '[' || !strncmp(p, "syntax error", 12) || !strncmp(p, "NUL byte", 8) ||
               !strncmp(p, "line longer", 11) || strstr(p, "key outside a section");
}

static size_t longest_line(const char *s) {
        size_t best = 0;
        while (*s) {
                const size_t n = strcspn(s, "\n");
                if (n > best)
                        best = n;
                s += n + (s[n] == '\n');
        }
        return best;
}

/* roid_config_format, then a load of that text onto the defaults, gives the
 * same text again: -1 when a line is too long for a file (not tried), 0 when
 * it does, 1 when not (why says where). */
static int round_trip(const roid_config *cfg, const char *path, char *why, size_t cap) {
        static char fmt[FMT_CAP], fmt2[FMT_CAP];
        const int fl = roid_config_format(cfg, fmt, FMT_CAP);
        if (fl < 0 || fl >= FMT_CAP || longest_line(fmt) > ROID_CONFIG_LINE_MAX)
                return -1;
        roid_config back;
        roid_err err = {""};
        roid_config_default(&back);
        write_file(path, fmt, (size_t)fl);
        int e = roid_config_load(&back, path, &err);
        if (e == 0)
                e = roid_config_validate(&back, &err);
        if (e < 0) {
                snprintf(why, cap, "the formatted configuration does not load: %s", err.msg);
                return 1;
        }
        if (roid_config_format(&back, fmt2, FMT_CAP) != fl || memcmp(fmt, fmt2, (size_t)fl) != 0) {
                size_t i = 0;
                while (fmt[i] == fmt2[i])
                        i++;
                while (i > 0 && fmt[i - 1] != '\n')
                        i--;
                snprintf(why, cap, "format, load, format: \"%.*s\" came back as \"%.*s\"", (int)strcspn(fmt + i, "\n"),
                         fmt + i, (int)strcspn(fmt2 + i, "\n"), fmt2 + i);
                return 1;
        }
        return 0;
}

static char *slurp_text(const char *path, size_t *ret_n) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return NULL;
        char *b = malloc(CONF_CAP);
        size_t n = fread(b, 1, CONF_CAP - 1, f);
        fclose(f);
        b[n] = 0;
        *ret_n = n;
        return b;
}

/* Every key at a value other than its default, as a file writes them. */
static const char all_keys_conf[] = "; every key\n"
                                    "[detector]\n"
                                    "endpoint = ipc:///tmp/eiger\n"
                                    "channel = threshold_1\n"
                                    "receive_hwm = 5000\n"
                                    "[output]\n"
                                    "directory = \" /data/roid \"\n"
                                    "publish = tcp://0.0.0.0:5557\n"
                                    "control = tcp://0.0.0.0:5558\n"
                                    "publish_hwm = 10\n"
                                    "map_interval = 0.5\n"
                                    "status_interval = 2.5\n"
                                    "frame_every = 10\n"
                                    "flush_interval = 0.25\n"
                                    "[analysis]\n"
                                    "segments = 16\n"
                                    "k = 6\n"
                                    "cadence = 0\n"
                                    "border = -3\n"
                                    "fill_holes = yes\n"
                                    "seed = 18446744073709551615\n"
                                    "bf_radius = 12.5\n"
                                    "df_inner = 20\n"
                                    "df_outer = 40\n"
                                    "center_x = 1030.5\n"
                                    "center_y = -12\n"
                                    "[scan]\n"
                                    "shape = 64x128\n"
                                    "snake = on\n"
                                    "fast_axis = y\n"
                                    "origin = -1.5, 2\n"
                                    "step = 0.05,-0.05\n"
                                    "units = um\n"
                                    "[feedback]\n"
                                    "rescan_factor = 4\n"
                                    "next_points = 0\n"
                                    "stable_refits = 10\n"
                                    "[pipeline]\n"
                                    "workers = 8\n"
                                    "queue_depth = 1024\n"
                                    "queue_full = drop\n"
                                    "[limits]\n"
                                    "max_message_bytes = 1G\n"
                                    "max_parts = 64\n"
                                    "max_json_bytes = 1048577\n"
                                    "max_pixels = 16M\n"
                                    "max_frame_bytes = 3000000\n"
                                    "max_images = 5000\n"
                                    "max_depth = 8\n"
                                    "max_request_bytes = 1M\n"
                                    "[service]\n"
                                    "log_level = debug\n"
                                    "watchdog_stall = 30\n"
                                    "idle_timeout = 2.5\n"
                                    "exit_after_series = 3\n";

typedef struct {
        char section[32], key[32], value[64];
} override;

static void fuzz_config(unsigned rounds) {
        char path[128], path2[128];
        snprintf(path, sizeof path, "%s/roid.conf", tmpdir);
        snprintf(path2, sizeof path2, "%s/roid-formatted.conf", tmpdir);

        /* the seeds: the example, every key set, the defaults as formatted */
        enum { NSEED = 3 };
        uint8_t *seed[NSEED];
        size_t seed_n[NSEED];
        const char *src = getenv("ROID_SRC");
        char ex[512];
        snprintf(ex, sizeof ex, "%s/config/roid.conf", src ? src : "..");
        seed[0] = (uint8_t *)slurp_text(ex, &seed_n[0]);
        if (!tap_ok(seed[0] != NULL, "config: the example %s is a seed", ex))
                return;
        seed[1] = malloc(CONF_CAP);
        seed_n[1] = sizeof all_keys_conf - 1;
        memcpy(seed[1], all_keys_conf, seed_n[1]);
        roid_config def;
        roid_config_default(&def);
        seed[2] = malloc(CONF_CAP);
        seed_n[2] = (size_t)roid_config_format(&def, (char *)seed[2], CONF_CAP);

        /* The seeds themselves load, and give what they say. */
        roid_err err = {""};
        for (int i = 0; i < NSEED; i++) {
                roid_config c = def;
                write_file(path, seed[i], seed_n[i]);
                const int r = roid_config_load(&c, path, &err);
                tap_ok(r == 0 && roid_config_validate(&c, &err) == 0 && !config_insane(&c),
                       "config: seed %d loads (%s)", i, r ? err.msg : "ok");
                if (i == 1)
                        tap_ok(c.analysis.roi.k == 6 && c.limits.max_depth == 8 && c.analysis.max_depth == 8 &&
                                       !strcmp(c.analysis.output_dir, " /data/roid ") && c.workers == 8,
                               "config: the every-key seed gives its values");
        }

        failures insane = {0}, unnamed = {0}, touched = {0}, trip = {0};
        kind_seen kinds[] = {{"syntax error", 0},       {"line longer", 0},        {"NUL byte", 0},
                             {"unknown section", 0},    {"unknown key", 0},        {"out of range", 0},
                             {"not a whole number", 0}, {"not a number", 0},       {"not a finite", 0},
                             {"not UTF-8", 0},          {"outside a section", 0},  {"control character", 0},
                             {"blank before ';'", 0},   {"not a boolean", 0},      {"is not one of", 0},
                             {"not rows x columns", 0}, {"two finite numbers", 0}, {"must not be empty", 0},
                             {"ZeroMQ endpoint", 0},    {"longer than", 0},        {"df_inner", 0}};
        unsigned accepted = 0, refused = 0, tripped = 0;
        uint8_t *b = malloc(CONF_CAP);
        size_t heap0 = 0, heap_max = 0;
        for (unsigned r = 0; r <= rounds; r++) {
                const size_t h = tap_heap_in_use(); /* after the previous round */
                if (r == rounds / 10 || r == 0)
                        heap_max = heap0 = h;
                else if (h > heap_max)
                        heap_max = h;
                if (r == rounds)
                        break;
                const int si = (int)fuzz_rnd_below(NSEED), oi = (int)fuzz_rnd_below(NSEED);
                memcpy(b, seed[si], seed_n[si]);
                /* a quarter of the files as they are, with more options on top */
                const bool as_is = fuzz_rnd_below(4) == 0;
                size_t n = as_is ? seed_n[si] : mutate_config(b, seed_n[si], seed[oi], seed_n[oi]);
                if (!write_file(path, b, n)) {
                        fail(&unnamed, r, "cannot write %s", path);
                        continue;
                }
                size_t lines = 1;
                for (size_t i = 0; i < n; i++)
                        lines += b[i] == '\n';

                /* as roid builds its configuration: defaults, the file, the command line, validate */
                roid_config cfg, before; /* copied whole: memcmp compares the padding too */
                memcpy(&cfg, &def, sizeof cfg);
                memcpy(&before, &def, sizeof before);
                memset(&err, 0, sizeof err);
                int e = roid_config_load(&cfg, path, &err);
                if (e < 0) {
                        if (memcmp(&cfg, &before, sizeof cfg) != 0)
                                fail(&touched, r, "load failed (%s) and changed the configuration", err.msg);
                        if (!load_error_named(err.msg, e, path, lines))
                                fail(&unnamed, r, "load error %d does not name the file and line: \"%s\"", e, err.msg);
                }
                /* A refused option leaves the configuration as it was (checked),
                 * so the next ones go on top of it as if it had not been given. */
                const unsigned n_ov = (unsigned)fuzz_rnd_below(as_is ? 12 : 4);
                for (unsigned i = 0; e == 0 && i < n_ov; i++) {
                        override ov;
                        size_t nk;
                        const roid_config_key *k = roid_config_keys(&nk);
                        const roid_config_key *pk = &k[fuzz_rnd_below(nk)];
                        snprintf(ov.section, sizeof ov.section, "%s", fuzz_rnd_below(8) ? pk->section : PICK(sections));
                        if (fuzz_rnd_below(8))
                                snprintf(ov.key, sizeof ov.key, "%s", pk->key);
                        else
                                some_key(ov.key, sizeof ov.key);
                        snprintf(ov.value, sizeof ov.value, "%s", some_value());
                        memcpy(&before, &cfg, sizeof before);
                        const int es = roid_config_set(&cfg, ov.section, ov.key, ov.value, &err);
                        if (es < 0) {
                                if (memcmp(&cfg, &before, sizeof cfg) != 0)
                                        fail(&touched, r, "set [%s] %s = '%s' failed and changed the configuration",
                                             ov.section, ov.key, ov.value);
                                if (err.msg[0] != '[')
                                        fail(&unnamed, r, "set [%s] %s = '%s': error does not name the key: \"%s\"",
                                             ov.section, ov.key, ov.value, err.msg);
                                seen(kinds, sizeof kinds / sizeof kinds[0], err.msg);
                        }
                }
                if (e == 0 && (e = roid_config_validate(&cfg, &err)) < 0 && err.msg[0] != '[')
                        fail(&unnamed, r, "validate error does not name the key: \"%s\"", err.msg);
                if (e < 0) {
                        seen(kinds, sizeof kinds / sizeof kinds[0], err.msg);
                        refused++;
                        continue;
                }
                accepted++;
                const char *why = config_insane(&cfg);
                if (why)
                        fail(&insane, r, "accepted with %s false", why);
                /* roid_config_format and a reload give it back */
                char why_trip[320];
                const int t = round_trip(&cfg, path2, why_trip, sizeof why_trip);
                tripped += t >= 0;
                if (t > 0)
                        fail(&trip, r, "%s", why_trip);
        }
        none(&insane, "config: every accepted configuration is within the documented ranges");
        none(&unnamed, "config: every refusal names the file and line, or [section] key");
        none(&touched, "config: a refused file or option leaves the configuration untouched");
        none(&trip, "config: every accepted configuration survives format and reload");
        all_seen(kinds, sizeof kinds / sizeof kinds[0], "config");
        tap_ok(accepted > rounds / 20 && refused > rounds / 20, "config: %u accepted, %u refused, %u round trips",
               accepted, refused, tripped);
        tap_ok(heap_max <= heap0 + (256u << 10), "config: the heap stays bounded (grew by %zu bytes at most)",
               heap_max - heap0);

        /* Over 1 MiB: refused, naming the file. */
        memset(b, '#', CONF_CAP);
        for (size_t i = 79; i < CONF_CAP; i += 80)
                b[i] = '\n';
        FILE *f = fopen(path, "wb");
        for (int i = 0; f && i < 9; i++)
                fwrite(b, 1, CONF_CAP, f);
        if (f)
                fclose(f);
        roid_config c;
        memcpy(&c, &def, sizeof c);
        const int e = roid_config_load(&c, path, &err);
        tap_ok(e == -EFBIG && strstr(err.msg, path) && !memcmp(&c, &def, sizeof c),
               "config: a file over 1 MiB is refused (%s)", err.msg);

        /* and a good file still loads exactly */
        write_file(path, seed[1], seed_n[1]);
        tap_ok(roid_config_load(&c, path, &err) == 0 && c.analysis.roi.k == 6 && c.rescan_factor == 4 &&
                       c.analysis.scan.ny == 64 && c.analysis.scan.nx == 128,
               "config: after the fuzzing a good file loads exactly");
        tap_diag("config: %u rounds, %u accepted, %u refused", rounds, accepted, refused);
        unlink(path);
        unlink(path2);
        free(b);
        for (int i = 0; i < NSEED; i++)
                free(seed[i]);
}

/* ====================================================== 2. capture files */

enum { CAP_CAP = 1 << 15, REF_MAX = CAP_CAP + 1 };

/* The reference reader: the format of capture.h read here again, without
 * libcbor.  A file whose first byte is not an array head is one record of
 * one part; otherwise records are arrays (definite or not) of definite byte
 * strings.  A well-formed record of more than max_parts parts or max_bytes
 * bytes is skipped (the reader says so and goes on with the next). */
typedef struct {
        size_t head, off, len; /* head: where the part's CBOR head starts */
} ref_part;
typedef struct {
        size_t start, end, first, n;
        bool skip; /* over a limit: the reader returns -EMSGSIZE for it */
} ref_rec;
typedef struct {
        ref_rec *rec;
        ref_part *part;
        size_t n_rec, n_part;
        bool single, error;
} ref_capture;

/* A CBOR head at b[pos]: major type, argument, head length, indefinite;
 * false when cut or reserved. */
static bool cbor_head(const uint8_t *b, size_t n, size_t pos, unsigned *mt, uint64_t *arg, size_t *hl, bool *indef) {
        if (pos >= n)
                return false;
        const unsigned ai = b[pos] & 31;
        *mt = b[pos] >> 5;
        *indef = false;
        *arg = ai;
        *hl = 1;
        if (ai == 31) {
                *indef = true;
                return true;
        }
        if (ai >= 28)
                return false;
        if (ai >= 24) {
                const size_t k = (size_t)1 << (ai - 24);
                if (n - pos - 1 < k)
                        return false;
                *arg = 0;
                for (size_t i = 0; i < k; i++)
                        *arg = *arg << 8 | b[pos + 1 + i];
                *hl = 1 + k;
        }
        return true;
}

static void ref_read(const uint8_t *b, size_t n, size_t max_parts, size_t max_bytes, ref_capture *out) {
        out->n_rec = out->n_part = 0;
        out->error = false;
        out->single = n && (b[0] >> 5) != 4;
        if (out->single) {
                if (n > max_bytes) {
                        out->rec[out->n_rec++] = (ref_rec){0, n, 0, 0, true};
                        return;
                }
                out->rec[out->n_rec++] = (ref_rec){0, n, 0, 1, false};
                out->part[out->n_part++] = (ref_part){0, 0, n};
                return;
        }
        size_t pos = 0;
        while (pos < n) {
                ref_rec rec = {.start = pos, .first = out->n_part};
                unsigned mt;
                uint64_t count, len;
                size_t hl, total = 0;
                bool indef, pindef, over = false;
                if (!cbor_head(b, n, pos, &mt, &count, &hl, &indef) || mt != 4)
                        goto bad;
                pos += hl;
                for (uint64_t i = 0;; i++) {
                        if (indef) {
                                if (pos >= n)
                                        goto bad;
                                if (b[pos] == 0xff) {
                                        pos++;
                                        break;
                                }
                        } else if (i == count) {
                                break;
                        }
                        if (!cbor_head(b, n, pos, &mt, &len, &hl, &pindef) || mt != 2 || pindef || len > n - pos - hl)
                                goto bad;
                        over |= rec.n >= max_parts || len > max_bytes - total;
                        if (!over) {
                                total += len;
                                out->part[out->n_part++] = (ref_part){pos, pos + hl, len};
                        }
                        rec.n++;
                        pos += hl + len;
                }
                rec.end = pos;
                if (over) {
                        rec.skip = true;
                        out->n_part = rec.first;
                }
                out->rec[out->n_rec++] = rec;
        }
        return;
bad:
        out->error = true;
}

/* ---- generated messages (Stream V2 CBOR and Stream V1 parts) ---- */

enum { ROWS = 8, COLS = 8 };
static uint16_t pixels[ROWS * COLS];

/* The one series of the seed captures: series 5, 100 images announced. */
static void v2_start(fuzz_msg *m) {
        fuzz_v2_start(m, 5, ROWS, COLS, 100);
}

static void v2_image(fuzz_msg *m, uint64_t id) {
        fuzz_v2_image(m, 5, id, ROWS, COLS, NULL, pixels, sizeof pixels);
}

static void v2_end(fuzz_msg *m) {
        fuzz_v2_end(m, 5);
}

static roid_part text_part(const char *s) {
        return (roid_part){(const uint8_t *)s, strlen(s)};
}

static const char v1_header[] = "{\"header_detail\":\"none\",\"htype\":\"dheader-1.0\",\"series\":6}";
static const char v1_end[] = "{\"htype\":\"dseries_end-1.0\",\"series\":6}";
static const char v1_config[] = "{\"htype\":\"dconfig-1.0\",\"real_time\":1,\"start_time\":0,\"stop_time\":1}";
static const char v1_data_head[] =
        "{\"encoding\":\"<\",\"htype\":\"dimage_d-1.0\",\"shape\":[8,8],\"size\":128,\"type\":\"uint16\"}";

static void write_v1_image(roid_capture_writer *w, unsigned frame) {
        char head[128];
        snprintf(head, sizeof head, "{\"frame\":%u,\"hash\":\"\",\"htype\":\"dimage-1.0\",\"series\":6}", frame);
        roid_part p[4] = {text_part(head),
                          text_part(v1_data_head),
                          {(const uint8_t *)pixels, sizeof pixels},
                          text_part(v1_config)};
        roid_capture_write(w, p, 4);
}

typedef struct {
        uint8_t *b;
        size_t n;
        ref_capture ref; /* of the seed with roomy limits: its records */
} cap_seed;

/* A capture written by roid_capture_write (kind 0: V2, 1: V1, 2: mixed, with
 * records the writer does not make appended), or a bare message (3, 4). */
static bool make_capture_seed(int kind, const char *path, cap_seed *s) {
        uint8_t mb[4096];
        fuzz_msg m = {mb, 0, sizeof mb};
        roid_capture_writer *w;
        if (kind <= 2) {
                unlink(path); /* the writer never replaces a file */
                if (roid_capture_writer_open(path, &w) < 0)
                        return false;
                if (kind == 0 || kind == 2) {
                        v2_start(&m);
                        roid_capture_write(w, &(roid_part){m.b, m.n}, 1);
                }
                if (kind == 1 || kind == 2) {
                        roid_part hp = text_part(v1_header);
                        roid_capture_write(w, &hp, 1);
                        write_v1_image(w, 1);
                }
                if (kind == 0 || kind == 2) {
                        for (uint64_t id = 1; id <= 2; id++) {
                                v2_image(&m, id);
                                roid_capture_write(w, &(roid_part){m.b, m.n}, 1);
                        }
                        v2_end(&m);
                        roid_capture_write(w, &(roid_part){m.b, m.n}, 1);
                }
                if (kind == 1) {
                        write_v1_image(w, 2);
                        roid_part ep = text_part(v1_end);
                        roid_capture_write(w, &ep, 1);
                }
                if (kind == 2) {
                        roid_part three[3] = {text_part("a"), {(const uint8_t *)"", 0}, text_part(v1_end)};
                        roid_capture_write(w, three, 3);
                }
                if (roid_capture_writer_close(w) < 0)
                        return false;
                size_t n;
                uint8_t *b = tap_slurp(path, &n);
                if (!b || n + 32 > CAP_CAP) {
                        free(b);
                        return false;
                }
                s->b = malloc(CAP_CAP);
                memcpy(s->b, b, n);
                free(b);
                if (kind == 2) { /* an indefinite-length record, an empty one, non-minimal heads */
                        static const uint8_t extra[] = {0x9f, 0x41, 'x',  0x58, 0x02, 'y',  'z', 0xff,
                                                        0x80, 0x98, 0x01, 0x59, 0x00, 0x01, 'q'};
                        memcpy(s->b + n, extra, sizeof extra);
                        n += sizeof extra;
                }
                s->n = n;
                return true;
        }
        s->b = malloc(CAP_CAP);
        if (kind == 3) {
                v2_start(&m);
                memcpy(s->b, m.b, m.n);
                s->n = m.n;
                return true;
        }
        size_t n;
        uint8_t *b = tap_slurp(tap_data("stream2/r500k_bslz4_16bit_000011.cbor"), &n);
        if (!b || n > CAP_CAP) {
                free(b);
                return false;
        }
        memcpy(s->b, b, n);
        s->n = n;
        free(b);
        return true;
}

/* A CBOR head of major type mt for arg, in width 0 (shortest), 1, 2, 4 or 8 bytes. */
static size_t put_head(uint8_t *o, unsigned mt, uint64_t arg, unsigned width) {
        if (width == 0)
                width = arg < 24 ? 0 : arg <= 0xff ? 1 : arg <= 0xffff ? 2 : arg <= 0xffffffffu ? 4 : 8;
        if (width == 0) {
                o[0] = (uint8_t)(mt << 5 | arg);
                return 1;
        }
        const unsigned ai = width == 1 ? 24 : width == 2 ? 25 : width == 4 ? 26 : 27;
        o[0] = (uint8_t)(mt << 5 | ai);
        for (unsigned i = 0; i < width; i++)
                o[1 + i] = (uint8_t)(arg >> (8 * (width - 1 - i)));
        return 1 + width;
}

static uint64_t other_count(uint64_t v) {
        static const uint64_t far[] = {0, 23, 24, 255, 256, 65535, 65536, 0xffffffffu, UINT64_MAX};
        switch (fuzz_rnd_below(4)) {
        case 0:
                return v + 1;
        case 1:
                return v ? v - 1 : 1;
        case 2:
                return PICK(far);
        default:
                const unsigned shift = (unsigned)fuzz_rnd_below(64);
                return fuzz_rnd() >> shift;
        }
}

static size_t mutate_capture(uint8_t *b, const cap_seed *s, const cap_seed *o) {
        size_t n = s->n;
        const ref_capture *rf = &s->ref;
        uint8_t h[16];
        memcpy(b, s->b, n);
        switch (fuzz_rnd_below(8)) {
        case 0: /* cut at a record boundary, or a few bytes after it */
                if (rf->n_rec) {
                        n = rf->rec[fuzz_rnd_below(rf->n_rec)].start;
                        n += fuzz_rnd_below(3);
                        if (n > s->n)
                                n = s->n;
                }
                break;
        case 1: /* records of this one, then records of the other */
                if (rf->n_rec && o->ref.n_rec && !o->ref.single) {
                        const size_t cut = rf->single ? s->n : rf->rec[fuzz_rnd_below(rf->n_rec)].end;
                        const size_t from = o->ref.rec[fuzz_rnd_below(o->ref.n_rec)].start;
                        if (cut + o->n - from <= CAP_CAP) {
                                memcpy(b + cut, o->b + from, o->n - from);
                                n = cut + o->n - from;
                        }
                }
                break;
        case 2: /* a record's array head: another count, another width, indefinite */
                if (rf->n_rec && !rf->single) {
                        const ref_rec *rec = &rf->rec[fuzz_rnd_below(rf->n_rec)];
                        unsigned mt = 0;
                        uint64_t count = 0;
                        size_t hl = 0;
                        bool indef = false;
                        cbor_head(s->b, s->n, rec->start, &mt, &count, &hl, &indef);
                        size_t m;
                        if (fuzz_rnd_below(3) == 0) {
                                h[0] = 0x9f;
                                m = 1;
                                if (fuzz_rnd_below(2))
                                        put_bytes(b, &n, CAP_CAP, rec->end, rec->end, "\xff", 1);
                        } else {
                                const uint64_t c = fuzz_rnd_below(2) ? count : other_count(count);
                                m = put_head(h, 4, c, (unsigned)PICK(((const unsigned[]){0, 1, 2, 4, 8})));
                        }
                        put_bytes(b, &n, CAP_CAP, rec->start, rec->start + hl, h, m);
                }
                break;
        case 3: /* a part's head: another width (still valid), another length */
                if (rf->n_part && !rf->single) {
                        const ref_part *p = &rf->part[fuzz_rnd_below(rf->n_part)];
                        const uint64_t len = fuzz_rnd_below(2) ? p->len : other_count(p->len);
                        const unsigned mt = fuzz_rnd_below(8) ? 2 : (unsigned)fuzz_rnd_below(8);
                        const size_t m = put_head(h, mt, len, (unsigned)PICK(((const unsigned[]){0, 1, 2, 4, 8})));
                        put_bytes(b, &n, CAP_CAP, p->head, p->off, h, m);
                }
                break;
        default:
                n = fuzz_mutate(b, n, CAP_CAP, o->b, o->n, cbor_magic, sizeof cbor_magic,
                                1 + (unsigned)fuzz_rnd_below(4));
                break;
        }
        return n;
}

static roid_counters cap_ctr;

static void fuzz_capture(unsigned rounds) {
        char path[128];
        snprintf(path, sizeof path, "%s/capture.cbors", tmpdir);
        enum { NSEED = 5 };
        cap_seed seed[NSEED];
        ref_capture ref = {.rec = malloc(REF_MAX * sizeof(ref_rec)), .part = malloc(REF_MAX * sizeof(ref_part))};
        int n_seed = 0;
        for (int k = 0; k < NSEED; k++) {
                if (!make_capture_seed(k, path, &seed[n_seed]))
                        continue;
                cap_seed *s = &seed[n_seed++];
                s->ref = (ref_capture){.rec = malloc(64 * sizeof(ref_rec)), .part = malloc(256 * sizeof(ref_part))};
                ref_read(s->b, s->n, 64, SIZE_MAX, &s->ref);
        }
        tap_ok(n_seed == NSEED, "capture: %d seeds (V2, V1, mixed, bare V2, the real end message)", n_seed);
        tap_ok(seed[0].ref.n_rec == 4 && seed[1].ref.n_rec == 4 && seed[2].ref.n_rec == 10 && seed[3].ref.single &&
                       !seed[0].ref.error && !seed[2].ref.error,
               "capture: the reference reader reads the seeds (%zu, %zu, %zu records)", seed[0].ref.n_rec,
               seed[1].ref.n_rec, seed[2].ref.n_rec);

        /* the replay path: every record into an ingest */
        roid_sink sink = {0};
        roid_ingest_params ip = {.channel = "", .implicit_series = true};
        roid_limits_default(&ip.limits);
        ip.limits.max_pixels = 1u << 12;
        ip.limits.max_frame_bytes = 1u << 14;
        ip.limits.max_images = 1u << 12;
        roid_ingest *in;
        if (!tap_ok(roid_ingest_new(&ip, &sink, &cap_ctr, &in) == 0, "capture: ingest created"))
                return;

        failures mismatch = {0}, unnamed = {0}, after = {0}, limits = {0};
        kind_seen kinds[] = {
                {"truncated", 0},      {"expected an array", 0},         {"expected a definite byte string", 0},
                {"more than", 0},      {"exceeds max_message_bytes", 0}, {"malformed CBOR", 0},
                {"message file of", 0}};
        unsigned records = 0, errors = 0, clean = 0, skipped = 0;
        uint64_t fed = 0;
        uint8_t *b = malloc(CAP_CAP);
        size_t heap0 = 0, heap_max = 0;
        for (unsigned r = 0; r < rounds; r++) {
                if (r == rounds / 10 || r == 0)
                        heap_max = heap0 = tap_heap_in_use();
                const cap_seed *s = &seed[fuzz_rnd_below((size_t)n_seed)], *o = &seed[fuzz_rnd_below((size_t)n_seed)];
                const size_t n = fuzz_rnd_below(16) ? mutate_capture(b, s, o) : (memcpy(b, s->b, s->n), s->n);
                roid_limits lim;
                roid_limits_default(&lim);
                static const size_t bytes[] = {64, 200, 512, 4096, 1 << 20}, lim_parts[] = {1, 3, 4, 32};
                static const size_t call_parts[] = {1, 2, 4, 8, 64};
                lim.max_message_bytes = PICK(bytes);
                lim.max_parts = PICK(lim_parts);
                const size_t max_parts = PICK(call_parts);
                const size_t eff = max_parts < lim.max_parts ? max_parts : lim.max_parts;
                ref_read(b, n, eff, lim.max_message_bytes, &ref);
                if (!write_file(path, b, n)) {
                        fail(&mismatch, r, "cannot write %s", path);
                        continue;
                }
                roid_capture_reader *rd;
                roid_err err = {""};
                if (roid_capture_reader_open(path, &lim, &rd, &err) < 0) {
                        fail(&mismatch, r, "open: %s", err.msg);
                        continue;
                }
                uintptr_t base = 0;
                bool have_base = false;
                for (size_t k = 0;; k++) {
                        roid_part parts[64];
                        size_t np = 12345;
                        memset(&err, 0, sizeof err);
                        const int e = roid_capture_next(rd, parts, max_parts, &np, &err);
                        if (k < ref.n_rec && ref.rec[k].skip) {
                                const ref_rec *rec = &ref.rec[k];
                                skipped++;
                                seen(kinds, sizeof kinds / sizeof kinds[0], err.msg);
                                if (e != -EMSGSIZE || np != 12345 ||
                                    !strstr(err.msg, ref.single ? "max_message_bytes" : "capture record at byte") ||
                                    !strstr(err.msg, ref.single ? "max_message_bytes" : "skipped"))
                                        fail(&mismatch, r,
                                             "record %zu at byte %zu, over a limit: returned %d (%s), ret_n %zu; "
                                             "want -EMSGSIZE naming it, ret_n untouched",
                                             k, rec->start, e, err.msg, np);
                                else if (!ref.single && roid_capture_offset(rd) != rec->end)
                                        fail(&mismatch, r, "skipped record %zu: offset %zu after it, the reference %zu",
                                             k, roid_capture_offset(rd), rec->end);
                                continue;
                        }
                        if (k < ref.n_rec) {
                                const ref_rec *rec = &ref.rec[k];
                                if (e != 1 || np != rec->n) {
                                        fail(&mismatch, r,
                                             "record %zu at byte %zu: returned %d with %zu parts (%s), "
                                             "the reference reads %zu parts",
                                             k, rec->start, e, e == 1 ? np : 0, err.msg, rec->n);
                                        break;
                                }
                                size_t total = 0;
                                for (size_t j = 0; j < np; j++) {
                                        const ref_part *p = &ref.part[rec->first + j];
                                        if (!have_base) {
                                                base = (uintptr_t)parts[j].data - p->off;
                                                have_base = true;
                                        }
                                        if (parts[j].size != p->len || (uintptr_t)parts[j].data != base + p->off ||
                                            memcmp(parts[j].data, b + p->off, p->len) != 0)
                                                fail(&mismatch, r,
                                                     "record %zu part %zu: %zu bytes at %+td, the reference reads "
                                                     "%zu at %zu",
                                                     k, j, parts[j].size, (ptrdiff_t)((uintptr_t)parts[j].data - base),
                                                     p->len, p->off);
                                        total += parts[j].size;
                                }
                                if (np > eff || total > lim.max_message_bytes)
                                        fail(&limits, r, "record %zu: %zu parts, %zu bytes (limits %zu, %zu)", k, np,
                                             total, eff, lim.max_message_bytes);
                                if (!ref.single && roid_capture_offset(rd) != rec->end)
                                        fail(&mismatch, r, "record %zu: offset %zu after it, the reference %zu", k,
                                             roid_capture_offset(rd), rec->end);
                                roid_ingest_parts(in, parts, np);
                                fed++;
                                records++;
                                continue;
                        }
                        if (ref.error) {
                                errors++;
                                char want[64];
                                if (ref.single)
                                        snprintf(want, sizeof want, "max_message_bytes");
                                else
                                        snprintf(want, sizeof want, "capture record at byte %zu",
                                                 k ? ref.rec[k - 1].end : 0);
                                seen(kinds, sizeof kinds / sizeof kinds[0], err.msg);
                                if (e >= 0)
                                        fail(&mismatch, r, "record %zu: returned %d, the reference finds an error", k,
                                             e);
                                else if (!strstr(err.msg, want))
                                        fail(&unnamed, r, "record %zu: error \"%s\" does not say \"%s\"", k, err.msg,
                                             want);
                                if (e < 0 && np != 12345)
                                        fail(&after, r, "record %zu: an error changed ret_n", k);
                                /* a caller that goes on gets no record */
                                for (int again = 0; e < 0 && again < 3; again++) {
                                        roid_err err2 = {""};
                                        const int e2 = roid_capture_next(rd, parts, max_parts, &np, &err2);
                                        if (e2 >= 0 || !err2.msg[0]) {
                                                fail(&after, r, "after the error at record %zu, next returned %d (%s)",
                                                     k, e2, err2.msg);
                                                break;
                                        }
                                }
                        } else {
                                clean++;
                                if (e != 0)
                                        fail(&mismatch, r, "after %zu records: returned %d (%s), the reference ends", k,
                                             e, err.msg);
                                else if (roid_capture_next(rd, parts, max_parts, &np, &err) != 0)
                                        fail(&after, r, "after the clean end, next did not return 0 again");
                        }
                        break;
                }
                roid_capture_reader_close(rd);
                const size_t h = tap_heap_in_use();
                if (h > heap_max)
                        heap_max = h;
        }
        none(&mismatch, "capture: every mutated file reads exactly as the reference reads it");
        none(&limits, "capture: every record within max_parts and max_message_bytes");
        none(&unnamed, "capture: every error names the record's byte offset (or the size limit)");
        none(&after, "capture: after an error no record, ret_n untouched; after the end 0 again");
        all_seen(kinds, sizeof kinds / sizeof kinds[0], "capture");
        tap_ok(roid_counter_get(&cap_ctr, ROID_C_messages_received) == fed,
               "capture: every record reached the ingest as in roid replay (%" PRIu64 ")", fed);
        tap_ok(records > rounds && errors > rounds / 10 && clean > rounds / 10 && skipped > rounds / 100,
               "capture: %u records returned, %u skipped over a limit, %u files ended in an error, %u cleanly", records,
               skipped, errors, clean);
        const size_t bound = 2 * ip.limits.max_frame_bytes + (512u << 10);
        tap_ok(heap_max <= heap0 + bound, "capture: the heap stays bounded (grew by %zu bytes at most, bound %zu)",
               heap_max - heap0, bound);

        /* a good capture afterwards reads exactly */
        roid_limits lim;
        roid_limits_default(&lim);
        write_file(path, seed[1].b, seed[1].n);
        roid_capture_reader *rd;
        roid_err err = {""};
        size_t recs = 0, parts_seen = 0, np;
        roid_part parts[8];
        bool same = roid_capture_reader_open(path, &lim, &rd, &err) == 0;
        int e = 0;
        while (same && (e = roid_capture_next(rd, parts, 8, &np, &err)) > 0) {
                if (recs == 1)
                        same = np == 4 && parts[2].size == sizeof pixels &&
                               !memcmp(parts[2].data, pixels, sizeof pixels);
                recs++;
                parts_seen += np;
        }
        if (same)
                roid_capture_reader_close(rd);
        tap_ok(same && e == 0 && recs == 4 && parts_seen == 10,
               "capture: after the fuzzing a good V1 capture reads exactly (%zu records, %zu parts)", recs, parts_seen);
        tap_diag("capture: %u rounds, %u records, %u errors, %u clean ends; ingest: %" PRIu64 " frames decoded", rounds,
                 records, errors, clean, roid_counter_get(&cap_ctr, ROID_C_frames_decoded));
        roid_ingest_free(in);
        unlink(path);
        free(b);
        free(ref.rec);
        free(ref.part);
        for (int i = 0; i < n_seed; i++) {
                free(seed[i].b);
                free(seed[i].ref.rec);
                free(seed[i].ref.part);
        }
}

/* ====================================================== 3. control socket */

enum { MAX_REQ = 8192, REQ_CAP = 2 * MAX_REQ, BATCH_MAX = 4, REPLY_CAP = 1 << 16 };

static const char *const cmds[] = {"status", "map", "set", "ask", "reset"};
enum { C_STATUS, C_MAP, C_SET, C_ASK, C_RESET };

/* ---- the handlers: a daemon with a real configuration ---- */

typedef struct {
        roid_config live;
        char config_text[16384];
        roid_counters ctr;
        uint64_t calls[5];
        failures bad; /* a handler called with what control.h does not promise */
        unsigned round;
        char path[128]; /* for the round trip of the configuration */
        roid_fb_point next[5];
} fake;

static int h_status(void *ctx, msgpack_packer *pk) {
        fake *f = ctx;
        roid_status_view v = {.series = {.known = true, .series_id = 7, .unique_id = "u-7"},
                              .state = "acquiring",
                              .ctr = &f->ctr,
                              .uptime_s = 3,
                              .latency_p50_ms = NAN,
                              .latency_p99_ms = NAN,
                              .map_interval_s = f->live.map_interval};
        f->calls[C_STATUS]++;
        return roid_pack_status(pk, &v);
}

static int h_map(void *ctx, msgpack_packer *pk) {
        fake *f = ctx;
        if (f->calls[C_MAP]++ % 2)
                return -ENODATA;
        msgpack_pack_str_with_body(pk, "units", 5);
        msgpack_pack_str_with_body(pk, f->live.analysis.scan.units, strlen(f->live.analysis.scan.units));
        return 1;
}

static bool name_ok(const char *s) {
        const size_t n = strlen(s);
        if (n == 0 || n >= 64)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)s[i]) && s[i] != '_')
                        return false;
        return true;
}

/* As the daemon's handler: the key on a copy of the configuration, validated. */
static int h_set(void *ctx, const char *section, const char *key, const char *value, roid_err *err) {
        fake *f = ctx;
        f->calls[C_SET]++;
        if (strcmp(section, "analysis") && strcmp(section, "scan") && strcmp(section, "feedback") &&
            strcmp(section, "output"))
                fail(&f->bad, f->round, "set called with section \"%.40s\"", section);
        if (!name_ok(key))
                fail(&f->bad, f->round, "set called with key \"%.40s\"", key);
        if (!strcmp(section, "output") &&
            (!strcmp(key, "publish") || !strcmp(key, "control") || !strcmp(key, "publish_hwm")))
                fail(&f->bad, f->round, "set called with the restart-only key %s", key);
        if (strlen(value) >= 4096)
                fail(&f->bad, f->round, "set called with a value of %zu bytes", strlen(value));
        roid_config c = f->live;
        int r = roid_config_set(&c, section, key, value, err);
        if (r >= 0)
                r = roid_config_validate(&c, err);
        if (r < 0)
                return r;
        const char *why = config_insane(&c);
        if (why)
                fail(&f->bad, f->round, "set [%s] %s = '%.40s' accepted, %s false", section, key, value, why);
        char why_trip[320];
        if (round_trip(&c, f->path, why_trip, sizeof why_trip) > 0)
                fail(&f->bad, f->round, "set [%s] %s = '%.40s' accepted, then %s", section, key, value, why_trip);
        f->live = c;
        roid_config_format(&f->live, f->config_text, sizeof f->config_text);
        return 0;
}

static int h_ask(void *ctx, unsigned n, msgpack_packer *pk) {
        fake *f = ctx;
        f->calls[C_ASK]++;
        if (n < 1 || n > ROID_CONTROL_MAX_ASK)
                fail(&f->bad, f->round, "ask called with n = %u", n);
        roid_series_ref ref = {.known = true, .series_id = 7, .unique_id = "u-7"};
        /* the units of the configured grid, as the daemon's feedback has them */
        roid_feedback_view fb = {.frames = 9,
                                 .updates = 2,
                                 .motor = true,
                                 .units = f->live.analysis.scan.units,
                                 .next = f->next,
                                 .n_next = 5};
        return roid_pack_suggest(pk, &ref, &fb, n);
}

static int h_reset(void *ctx, roid_err *err) {
        fake *f = ctx;
        const uint64_t k = f->calls[C_RESET]++;
        if (k % 4 == 1)
                return roid_err_set(err, -EBUSY, "refused by the test");
        if (k % 4 == 3)
                return -EBUSY;
        roid_counters_reset(&f->ctr);
        return 0;
}

/* ---- msgpack: a walk of valid requests for the mutations that know the format ---- */

enum { MP_SCALAR, MP_STR, MP_BIN, MP_EXT, MP_ARRAY, MP_MAP };

typedef struct {
        size_t start, hl, end;
        uint64_t len; /* entries (map: pairs), or body bytes */
        uint8_t kind;
        bool is_key;
} mp_obj;

static bool mp_head(const uint8_t *p, size_t n, size_t pos, int *kind, size_t *hl, uint64_t *len) {
        static const uint8_t fixed[] = {[0xca - 0xca] = 5, [0xcb - 0xca] = 9, [0xcc - 0xca] = 2, [0xcd - 0xca] = 3,
                                        [0xce - 0xca] = 5, [0xcf - 0xca] = 9, [0xd0 - 0xca] = 2, [0xd1 - 0xca] = 3,
                                        [0xd2 - 0xca] = 5, [0xd3 - 0xca] = 9};
        if (pos >= n)
                return false;
        const uint8_t b = p[pos];
        size_t lb = 0;
        *len = 0;
        *hl = 1;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
                *kind = MP_SCALAR;
        } else if (b <= 0x8f) {
                *kind = MP_MAP;
                *len = b & 15;
        } else if (b <= 0x9f) {
                *kind = MP_ARRAY;
                *len = b & 15;
        } else if (b <= 0xbf) {
                *kind = MP_STR;
                *len = b & 31;
        } else if (b >= 0xc4 && b <= 0xc6) {
                *kind = MP_BIN;
                lb = (size_t)1 << (b - 0xc4);
        } else if (b >= 0xc7 && b <= 0xc9) {
                *kind = MP_EXT;
                lb = (size_t)1 << (b - 0xc7);
        } else if (b >= 0xca && b <= 0xd3) {
                *kind = MP_SCALAR;
                *hl = fixed[b - 0xca];
        } else if (b >= 0xd4 && b <= 0xd8) {
                *kind = MP_EXT;
                *len = 1 + ((uint64_t)1 << (b - 0xd4));
        } else if (b >= 0xd9 && b <= 0xdb) {
                *kind = MP_STR;
                lb = (size_t)1 << (b - 0xd9);
        } else if (b == 0xdc || b == 0xdd) {
                *kind = MP_ARRAY;
                lb = b == 0xdc ? 2 : 4;
        } else if (b == 0xde || b == 0xdf) {
                *kind = MP_MAP;
                lb = b == 0xde ? 2 : 4;
        } else {
                return false; /* 0xc1 */
        }
        if (lb) {
                if (n - pos - 1 < lb)
                        return false;
                for (size_t i = 0; i < lb; i++)
                        *len = *len << 8 | p[pos + 1 + i];
                *hl = 1 + lb;
                if (*kind == MP_EXT)
                        *len += 1; /* the type byte */
        }
        return n - pos >= *hl;
}

static bool mp_scan(const uint8_t *p, size_t n, size_t *pos, unsigned depth, bool is_key, mp_obj *o, size_t *no,
                    size_t max) {
        int kind;
        size_t hl;
        uint64_t len;
        if (depth > 64 || *no >= max || !mp_head(p, n, *pos, &kind, &hl, &len))
                return false;
        const size_t me = (*no)++;
        o[me] = (mp_obj){.start = *pos, .hl = hl, .len = len, .kind = (uint8_t)kind, .is_key = is_key};
        *pos += hl;
        if (kind == MP_ARRAY || kind == MP_MAP) {
                for (uint64_t i = 0; i < len * (kind == MP_MAP ? 2 : 1); i++)
                        if (!mp_scan(p, n, pos, depth + 1, kind == MP_MAP && i % 2 == 0, o, no, max))
                                return false;
        } else if (kind != MP_SCALAR) {
                if (n - *pos < len)
                        return false;
                *pos += len;
        }
        o[me].end = *pos;
        return true;
}

/* Index of the object after o[i] and everything in it. */
static size_t mp_next(const mp_obj *o, size_t no, size_t i) {
        size_t j = i + 1;
        while (j < no && o[j].start < o[i].end)
                j++;
        return j;
}

/* A head of kind (array, map, str, bin) for len, shortest or wider. */
static size_t mp_put_head(uint8_t *h, int kind, uint64_t len, bool wide) {
        static const uint8_t fix[] = {[MP_STR] = 0xa0, [MP_ARRAY] = 0x90, [MP_MAP] = 0x80};
        static const uint8_t b16[] = {[MP_STR] = 0xda, [MP_BIN] = 0xc5, [MP_ARRAY] = 0xdc, [MP_MAP] = 0xde};
        const uint64_t fixmax = kind == MP_STR ? 31 : 15;
        if (!wide && kind != MP_BIN && len <= fixmax) {
                h[0] = (uint8_t)(fix[kind] | len);
                return 1;
        }
        if (len <= 0xffff && (kind != MP_STR && kind != MP_BIN ? true : fuzz_rnd_below(2))) {
                h[0] = b16[kind];
                h[1] = (uint8_t)(len >> 8);
                h[2] = (uint8_t)len;
                return 3;
        }
        if ((kind == MP_STR || kind == MP_BIN) && len <= 0xff && !wide) {
                h[0] = kind == MP_STR ? 0xd9 : 0xc4;
                h[1] = (uint8_t)len;
                return 2;
        }
        h[0] = (uint8_t)(b16[kind] + 1);
        for (int i = 0; i < 4; i++)
                h[1 + i] = (uint8_t)(len >> (24 - 8 * i));
        return 5;
}

/* ---- generated values and requests ---- */

static msgpack_sbuffer gsb;
static msgpack_packer gpk;

static void pack_str(msgpack_packer *pk, const char *s) {
        msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* clang-format off */
static const char *const req_keys[] = {
        "cmd", "schema", "values", "n", "status", "map", "set", "ask", "reset", "k", "seed", "units", "directory",
        "center_x", "analysis.k", "scan.shape", "scan.units", "scan.origin", "output.publish", "output.control",
        "output.publish_hwm", "output.directory", "detector.endpoint", "limits.max_parts", "service.log_level",
        "pipeline.workers", "analysis.", ".k", "analysis.k.x", "ANALYSIS.k", "a b", "", "\xff\xfe", "analysis.nosuch",
        "k\x00x", "feedback.next_points",
        "a_very_long_key_name_that_goes_on_and_on_and_on_past_the_sixty_four_byte_limit_of_names"
};
/* clang-format on */

/* A key of the configuration as set writes it: "section.key" or bare. */
static void config_key_name(char *buf, size_t cap) {
        size_t nk;
        const roid_config_key *k = roid_config_keys(&nk);
        const roid_config_key *c = &k[fuzz_rnd_below(nk)];
        if (fuzz_rnd_below(2))
                snprintf(buf, cap, "%s.%s", c->section, c->key);
        else
                snprintf(buf, cap, "%s", c->key);
}

static void gen_value(msgpack_packer *pk, unsigned depth) {
        static const int64_t ints[] = {0,         1,         -1,       2,          3,         4,
                                       5,         16,        17,       40,         64,        65,
                                       -64,       -65,       255,      256,        1000,      4096,
                                       4097,      65536,     1000000,  1000000001, INT32_MAX, (int64_t)INT32_MAX + 1,
                                       INT32_MIN, INT64_MAX, INT64_MIN};
        static const double dbls[] = {0.0,   -0.0,  0.5,    2.5,    1.0,   16.0,  16.5,     3600, 3600.5,   0.001,
                                      0.002, 1e308, -1e308, 5e-324, 65536, 65537, -65536.5, NAN,  INFINITY, -INFINITY};
        char t[128];
        switch (fuzz_rnd_below(depth > 2 ? 10 : 12)) {
        case 0:
                msgpack_pack_nil(pk);
                break;
        case 1:
                fuzz_rnd_below(2) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
                break;
        case 2:
                msgpack_pack_int64(pk, PICK(ints));
                break;
        case 3:
                msgpack_pack_uint64(pk, UINT64_MAX - fuzz_rnd_below(3));
                break;
        case 4:
                msgpack_pack_double(pk, PICK(dbls));
                break;
        case 5:
                msgpack_pack_float(pk, (float)PICK(dbls));
                break;
        case 6:
        case 7:
                pack_str(pk, some_value());
                break;
        case 8: { /* random bytes, or long text around the 4096-byte value limit */
                static char big[5000];
                static const size_t lens[] = {300, 4094, 4095, 4096, 4097, 4999};
                if (fuzz_rnd_below(2)) {
                        const size_t n = fuzz_rnd_below(40);
                        for (size_t i = 0; i < n; i++)
                                t[i] = (char)fuzz_rnd();
                        msgpack_pack_str_with_body(pk, t, n);
                } else {
                        const size_t n = PICK(lens);
                        memset(big, fuzz_rnd_below(2) ? '/' : 'a', n);
                        msgpack_pack_str_with_body(pk, big, n);
                }
                break;
        }
        case 9:
                if (fuzz_rnd_below(2))
                        msgpack_pack_bin_with_body(pk, "\x01\x02\x03", fuzz_rnd_below(4));
                else {
                        const size_t n = 1 + fuzz_rnd_below(2);
                        msgpack_pack_ext_with_body(pk, "\x05\x06", n, (int8_t)fuzz_rnd());
                }
                break;
        case 10: { /* arrays: of 2 numbers mostly */
                const size_t n = fuzz_rnd_below(3) ? 2 : fuzz_rnd_below(4);
                msgpack_pack_array(pk, n);
                for (size_t i = 0; i < n; i++) {
                        if (fuzz_rnd_below(4))
                                fuzz_rnd_below(2) ? msgpack_pack_int64(pk, PICK(ints))
                                                  : msgpack_pack_double(pk, PICK(dbls));
                        else
                                gen_value(pk, depth + 1);
                }
                break;
        }
        default: {
                const size_t n = fuzz_rnd_below(3);
                msgpack_pack_map(pk, n);
                for (size_t i = 0; i < n; i++) {
                        pack_str(pk, PICK(req_keys));
                        gen_value(pk, depth + 1);
                }
                break;
        }
        }
}

/* A well-formed set request of 1..5 keys of the configuration (or not). */
static void gen_set(msgpack_packer *pk) {
        const size_t n = 1 + fuzz_rnd_below(5);
        const bool schema = fuzz_rnd_below(8) == 0;
        char name[96];
        msgpack_pack_map(pk, 2 + schema);
        pack_str(pk, "cmd");
        pack_str(pk, "set");
        if (schema) {
                pack_str(pk, "schema");
                msgpack_pack_int(pk, 1);
        }
        pack_str(pk, "values");
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < n; i++) {
                static const char *const text_keys[] = {"directory", "output.directory", "scan.units", "scan.shape"};
                static const char *const texts[] = {"um", "\xc2\xb5m", "\xff\xfe", "m\xc3", "\xed\xa0\x80", "\xc0\x80",
                                                    ";a", "a ;b",      "\"q\"",    " x",    "a\tb",         "#a"};
                const bool text = i == 0 && fuzz_rnd_below(4) == 0; /* the text keys first: they take any string */
                if (text)
                        snprintf(name, sizeof name, "%s", PICK(text_keys));
                else if (fuzz_rnd_below(8))
                        config_key_name(name, sizeof name);
                else
                        snprintf(name, sizeof name, "%s", PICK(req_keys));
                pack_str(pk, name);
                if (text)
                        pack_str(pk, PICK(texts));
                else if (fuzz_rnd_below(2))
                        pack_str(pk, some_value());
                else
                        gen_value(pk, 1);
        }
}

/* One structural mutation of a valid request (o: its objects). */
static size_t mutate_msgpack(uint8_t *b, size_t n, const mp_obj *o, size_t no) {
        uint8_t h[16];
        size_t i = fuzz_rnd_below(no), m;
        switch (fuzz_rnd_below(9)) {
        case 0: /* another value (or key) in place of one */
                msgpack_sbuffer_clear(&gsb);
                gen_value(&gpk, 0);
                put_bytes(b, &n, REQ_CAP, o[i].start, o[i].end, gsb.data, gsb.size);
                break;
        case 1: /* a container's count */
                for (int t = 0; t < 16 && o[i].kind != MP_ARRAY && o[i].kind != MP_MAP; t++)
                        i = fuzz_rnd_below(no);
                if (o[i].kind == MP_ARRAY || o[i].kind == MP_MAP) {
                        const uint64_t len = other_count(o[i].len) & 0xffffffffu;
                        m = mp_put_head(h, o[i].kind, len, fuzz_rnd_below(4) == 0);
                        put_bytes(b, &n, REQ_CAP, o[i].start, o[i].start + o[i].hl, h, m);
                }
                break;
        case 2: /* a string's or bin's length */
                for (int t = 0; t < 16 && o[i].kind != MP_STR && o[i].kind != MP_BIN; t++)
                        i = fuzz_rnd_below(no);
                if (o[i].kind == MP_STR || o[i].kind == MP_BIN) {
                        const uint64_t len = other_count(o[i].len) & 0xffffffffu;
                        m = mp_put_head(h, o[i].kind, len, fuzz_rnd_below(4) == 0);
                        put_bytes(b, &n, REQ_CAP, o[i].start, o[i].start + o[i].hl, h, m);
                }
                break;
        case 3: { /* nesting: the object wrapped in arrays or maps */
                const size_t k = 1 + fuzz_rnd_below(16);
                const bool map = fuzz_rnd_below(2);
                m = 0;
                uint8_t wrap[48];
                for (size_t j = 0; j < k; j++) {
                        if (map) {
                                memcpy(wrap + m, "\x81\xa1x", 3);
                                m += 3;
                        } else {
                                wrap[m++] = 0x91;
                        }
                }
                put_bytes(b, &n, REQ_CAP, o[i].start, o[i].start, wrap, m);
                break;
        }
        case 4: { /* a huge count or length in place of an object */
                static const struct {
                        uint8_t b[8];
                        size_t n;
                } huge[] = {
                        {{0xdd, 0xff, 0xff, 0xff, 0xff}, 5},
                        {{0xdf, 0xff, 0xff, 0xff, 0xff}, 5},
                        {{0xdc, 0xff, 0xff}, 3},
                        {{0xde, 0x01, 0x00}, 3},
                        {{0xdb, 0x7f, 0xff, 0xff, 0xff}, 5},
                        {{0xc6, 0xff, 0xff, 0xff, 0xff}, 5},
                        {{0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, 6},
                        {{0x9f}, 1},
                        {{0x8f}, 1},
                        {{0xbf}, 1},
                };
                const size_t hi = fuzz_rnd_below(sizeof huge / sizeof huge[0]);
                put_bytes(b, &n, REQ_CAP, o[i].start, fuzz_rnd_below(2) ? o[i].end : o[i].start + o[i].hl, huge[hi].b,
                          huge[hi].n);
                break;
        }
        case 5:
        case 6: { /* a map pair twice (a duplicated key), or one less */
                for (int t = 0; t < 16 && !(o[i].kind == MP_MAP && o[i].len > 0); t++)
                        i = fuzz_rnd_below(no);
                if (o[i].kind != MP_MAP || o[i].len == 0)
                        break;
                size_t key = i + 1;
                for (size_t p = fuzz_rnd_below(o[i].len); p > 0; p--)
                        key = mp_next(o, no, mp_next(o, no, key));
                const size_t val = mp_next(o, no, key);
                const size_t a = o[key].start, e = o[val].end;
                if (fuzz_rnd_below(2)) {
                        uint8_t pair[REQ_CAP];
                        memcpy(pair, b + a, e - a);
                        if (!put_bytes(b, &n, REQ_CAP, e, e, pair, e - a))
                                break;
                        m = mp_put_head(h, MP_MAP, o[i].len + 1, false);
                } else {
                        put_bytes(b, &n, REQ_CAP, a, e, "", 0);
                        m = mp_put_head(h, MP_MAP, o[i].len - 1, false);
                }
                put_bytes(b, &n, REQ_CAP, o[i].start, o[i].start + o[i].hl, h, m);
                break;
        }
        case 7: /* another type byte */
                b[o[i].start] = mp_magic[fuzz_rnd_below(sizeof mp_magic)];
                break;
        default: { /* another key */
                for (int t = 0; t < 16 && !o[i].is_key; t++)
                        i = fuzz_rnd_below(no);
                char name[128];
                if (fuzz_rnd_below(2))
                        config_key_name(name, sizeof name);
                else
                        snprintf(name, sizeof name, "%s", PICK(req_keys));
                msgpack_sbuffer_clear(&gsb);
                pack_str(&gpk, name);
                put_bytes(b, &n, REQ_CAP, o[i].start, o[i].end, gsb.data, gsb.size);
                break;
        }
        }
        return n;
}

/* ---- the client ---- */

typedef struct {
        bool ok;
        int cmd;     /* -1: nil */
        int applied; /* entries of "applied", -1 without */
        char error[ROID_ERR_MAX + 8];
} reply_info;

static const msgpack_object *get(const msgpack_object *map, const char *k) {
        for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object *key = &map->via.map.ptr[i].key;
                if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
                    !memcmp(key->via.str.ptr, k, key->via.str.size))
                        return &map->via.map.ptr[i].val;
        }
        return NULL;
}

static bool all_utf8(const msgpack_object *o) {
        switch (o->type) {
        case MSGPACK_OBJECT_STR:
                return utf8_ok((const uint8_t *)o->via.str.ptr, o->via.str.size);
        case MSGPACK_OBJECT_ARRAY:
                for (uint32_t i = 0; i < o->via.array.size; i++)
                        if (!all_utf8(&o->via.array.ptr[i]))
                                return false;
                return true;
        case MSGPACK_OBJECT_MAP:
                for (uint32_t i = 0; i < o->via.map.size; i++)
                        if (!all_utf8(&o->via.map.ptr[i].key) || !all_utf8(&o->via.map.ptr[i].val))
                                return false;
                return true;
        default:
                return true;
        }
}

/* NULL when the reply is what proto/live.md promises, else what is wrong. */
static const char *check_reply(const uint8_t *p, size_t n, msgpack_zone *z, reply_info *ri) {
        msgpack_object o;
        size_t off = 0;
        *ri = (reply_info){.cmd = -1, .applied = -1};
        msgpack_zone_clear(z);
        if (msgpack_unpack((const char *)p, n, &off, z, &o) != MSGPACK_UNPACK_SUCCESS || off != n)
                return "not one msgpack object";
        if (o.type != MSGPACK_OBJECT_MAP)
                return "not a map";
        if (!all_utf8(&o))
                return "a string that is not UTF-8";
        const msgpack_object *ok = get(&o, "ok"), *cmd = get(&o, "cmd"), *schema = get(&o, "schema"),
                             *t = get(&o, "time"), *error = get(&o, "error"), *applied = get(&o, "applied");
        if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN)
                return "no bool \"ok\"";
        ri->ok = ok->via.boolean;
        if (!schema || schema->type != MSGPACK_OBJECT_POSITIVE_INTEGER || schema->via.u64 != ROID_SCHEMA_VERSION)
                return "no \"schema\" 1";
        if (!t || t->type != MSGPACK_OBJECT_FLOAT64)
                return "no float \"time\"";
        if (!cmd)
                return "no \"cmd\"";
        if (cmd->type == MSGPACK_OBJECT_STR) {
                for (int i = 0; i < 5; i++)
                        if (cmd->via.str.size == strlen(cmds[i]) &&
                            !memcmp(cmd->via.str.ptr, cmds[i], cmd->via.str.size))
                                ri->cmd = i;
                if (ri->cmd < 0)
                        return "\"cmd\" not a command";
        } else if (cmd->type != MSGPACK_OBJECT_NIL) {
                return "\"cmd\" neither nil nor a string";
        }
        if (ri->ok && (error || ri->cmd < 0))
                return "ok with an error or without a command";
        if (!ri->ok) {
                if (!error || error->type != MSGPACK_OBJECT_STR || error->via.str.size == 0 ||
                    error->via.str.size >= sizeof ri->error)
                        return "refused without a non-empty \"error\"";
                memcpy(ri->error, error->via.str.ptr, error->via.str.size);
                ri->error[error->via.str.size] = 0;
                for (const char *c = ri->error; *c; c++)
                        if (*c < 0x20 || *c > 0x7e)
                                return "an error text that is not printable ASCII";
        }
        if (applied) {
                if (applied->type != MSGPACK_OBJECT_ARRAY || ri->cmd != C_SET)
                        return "\"applied\" not an array of a set reply";
                for (uint32_t i = 0; i < applied->via.array.size; i++)
                        if (applied->via.array.ptr[i].type != MSGPACK_OBJECT_STR ||
                            !memchr(applied->via.array.ptr[i].via.str.ptr, '.', applied->via.array.ptr[i].via.str.size))
                                return "\"applied\" holds something other than section.key";
                ri->applied = (int)applied->via.array.size;
        } else if (ri->cmd == C_SET && ri->ok) {
                return "a set reply without \"applied\"";
        }
        return NULL;
}

static roid_control *ctl;
static void *zctx, *dealer;

static void *new_dealer(void) {
        void *s = zmq_socket(zctx, ZMQ_DEALER);
        int zero = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
        zmq_connect(s, roid_control_endpoint(ctl));
        return s;
}

typedef struct {
        uint8_t *b;
        size_t n;
        unsigned frames; /* 1: one frame; 2, 3: split or repeated */
} request;

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sends the batch (a DEALER: the empty delimiter, then the request's frames)
 * and serves the control socket as the daemon's loop does until every reply
 * is in or 3 s pass.  Returns the replies received. */
static unsigned exchange(const request *rq, unsigned nq, uint8_t **rep, size_t *rep_n, bool *extra_frames) {
        for (unsigned i = 0; i < nq; i++) {
                zmq_send(dealer, "", 0, ZMQ_SNDMORE);
                const size_t cut = rq[i].n ? fuzz_rnd_below(rq[i].n) : 0;
                for (unsigned f = 0; f < rq[i].frames; f++) {
                        const int more = f + 1 < rq[i].frames ? ZMQ_SNDMORE : 0;
                        if (rq[i].frames == 2) /* split */
                                zmq_send(dealer, f ? rq[i].b + cut : rq[i].b, f ? rq[i].n - cut : cut, more);
                        else
                                zmq_send(dealer, rq[i].b, rq[i].n, more);
                }
        }
        unsigned got = 0;
        const double deadline = now_s() + 3;
        *extra_frames = false;
        while (got < nq && now_s() < deadline) {
                zmq_pollitem_t it[2] = {{roid_control_socket(ctl), 0, ZMQ_POLLIN, 0}, {dealer, 0, ZMQ_POLLIN, 0}};
                if (zmq_poll(it, 2, 100) <= 0)
                        continue;
                if (it[0].revents & ZMQ_POLLIN)
                        roid_control_drain(ctl);
                if (it[1].revents & ZMQ_POLLIN) {
                        zmq_msg_t m;
                        unsigned frames = 0;
                        int more = 1;
                        rep_n[got] = 0;
                        while (more) {
                                zmq_msg_init(&m);
                                if (zmq_msg_recv(&m, dealer, 0) < 0) {
                                        zmq_msg_close(&m);
                                        break;
                                }
                                if (frames == 1 && zmq_msg_size(&m) <= REPLY_CAP) {
                                        memcpy(rep[got], zmq_msg_data(&m), zmq_msg_size(&m));
                                        rep_n[got] = zmq_msg_size(&m);
                                }
                                more = zmq_msg_more(&m);
                                frames++;
                                zmq_msg_close(&m);
                        }
                        if (frames != 2)
                                *extra_frames = true;
                        got++;
                }
        }
        return got;
}

/* Seed i of the control requests: every command, set with every kind of value. */
static void control_seed(int i, msgpack_packer *pk) {
        switch (i) {
        case 0:
        case 1:
        case 2:
                msgpack_pack_map(pk, 1 + (i == 1));
                pack_str(pk, "cmd");
                pack_str(pk, i == 2 ? "map" : "status");
                if (i == 1) {
                        pack_str(pk, "schema");
                        msgpack_pack_int(pk, 1);
                }
                break;
        case 3:
                msgpack_pack_map(pk, 2);
                pack_str(pk, "cmd");
                pack_str(pk, "set");
                pack_str(pk, "values");
                msgpack_pack_map(pk, 8);
                pack_str(pk, "k");
                msgpack_pack_int(pk, 3);
                pack_str(pk, "analysis.cadence");
                msgpack_pack_int(pk, 16);
                pack_str(pk, "fill_holes");
                msgpack_pack_true(pk);
                pack_str(pk, "rescan_factor");
                msgpack_pack_double(pk, 2.5);
                pack_str(pk, "directory");
                pack_str(pk, "/tmp/roid out");
                pack_str(pk, "scan.origin");
                msgpack_pack_array(pk, 2);
                msgpack_pack_double(pk, -1.5);
                msgpack_pack_int(pk, 2);
                pack_str(pk, "border");
                msgpack_pack_int(pk, -2);
                pack_str(pk, "map_interval");
                msgpack_pack_float(pk, 0.25f);
                break;
        case 4:
                msgpack_pack_map(pk, 3);
                pack_str(pk, "cmd");
                pack_str(pk, "set");
                pack_str(pk, "schema");
                msgpack_pack_int(pk, 1);
                pack_str(pk, "values");
                msgpack_pack_map(pk, 7);
                pack_str(pk, "scan.shape");
                pack_str(pk, "64x128");
                pack_str(pk, "scan.step");
                msgpack_pack_array(pk, 2);
                msgpack_pack_double(pk, 0.5);
                msgpack_pack_double(pk, -0.5);
                pack_str(pk, "scan.units");
                pack_str(pk, "um");
                pack_str(pk, "next_points");
                msgpack_pack_uint64(pk, 64);
                pack_str(pk, "center_x");
                msgpack_pack_double(pk, 512.5);
                pack_str(pk, "center_y");
                msgpack_pack_int(pk, 511);
                pack_str(pk, "scan.snake");
                msgpack_pack_false(pk);
                break;
        case 5:
                msgpack_pack_map(pk, 2);
                pack_str(pk, "cmd");
                pack_str(pk, "set");
                pack_str(pk, "values");
                msgpack_pack_map(pk, 5);
                pack_str(pk, "seed");
                msgpack_pack_uint64(pk, UINT64_MAX);
                pack_str(pk, "stable_refits");
                msgpack_pack_int(pk, 3);
                pack_str(pk, "output.status_interval");
                msgpack_pack_double(pk, 0.5);
                pack_str(pk, "frame_every");
                msgpack_pack_int(pk, 0);
                pack_str(pk, "scan.fast_axis");
                pack_str(pk, "y");
                break;
        case 6:
        case 7:
                msgpack_pack_map(pk, 2 + (i == 7));
                pack_str(pk, "cmd");
                pack_str(pk, "ask");
                pack_str(pk, "n");
                msgpack_pack_unsigned_int(pk, i == 6 ? 8 : 4096);
                if (i == 7) {
                        pack_str(pk, "schema");
                        msgpack_pack_int(pk, 1);
                }
                break;
        default:
                msgpack_pack_map(pk, 1);
                pack_str(pk, "cmd");
                pack_str(pk, "reset");
                break;
        }
}

static void fuzz_control(unsigned rounds) {
        fake f;
        memset(&f, 0, sizeof f);
        roid_config_default(&f.live);
        snprintf(f.path, sizeof f.path, "%s/set.conf", tmpdir);
        for (unsigned i = 0; i < 5; i++)
                f.next[i] = (roid_fb_point){.row = i, .col = 2 * i, .x = 0.5 * i, .y = -0.25 * i, .score = 10.0 - i};
        roid_control_handler h = {
                .ctx = &f, .status = h_status, .map = h_map, .set = h_set, .ask = h_ask, .reset = h_reset};
        roid_err err = {""};
        zctx = zmq_ctx_new();
        if (!tap_ok(roid_control_new(zctx, "tcp://127.0.0.1:*", MAX_REQ, &h, &ctl, &err) == 0, "control: bound (%s)",
                    err.msg))
                return;
        dealer = new_dealer();
        msgpack_sbuffer_init(&gsb);
        msgpack_packer_init(&gpk, &gsb, msgpack_sbuffer_write);

        /* the seeds: every command, set with every kind of value */
        enum { NSEED = 9 };
        msgpack_sbuffer sd[NSEED];
        for (int i = 0; i < NSEED; i++) {
                msgpack_sbuffer_init(&sd[i]);
                msgpack_packer pk;
                msgpack_packer_init(&pk, &sd[i], msgpack_sbuffer_write);
                control_seed(i, &pk);
        }

        static mp_obj objs[REQ_CAP];
        request rq[BATCH_MAX];
        uint8_t *rep[BATCH_MAX];
        size_t rep_n[BATCH_MAX];
        for (int i = 0; i < BATCH_MAX; i++) {
                rq[i].b = malloc(REQ_CAP);
                rep[i] = malloc(REPLY_CAP);
        }
        msgpack_zone z;
        msgpack_zone_init(&z, 4096);
        failures lost = {0}, malformed = {0}, counted = {0}, calls = {0};
        kind_seen kinds[] = {{"exceeds max_request_bytes", 0},
                             {"a request is one frame", 0},
                             {"request: empty", 0},
                             {"not msgpack", 0},
                             {"nested deeper than", 0},
                             {"entries (at most", 0},
                             {"after the first msgpack object", 0},
                             {"not a map", 0},
                             {"no \"cmd\"", 0},
                             {"not one of status", 0},
                             {"unknown key", 0},
                             {"ask: missing", 0},
                             {"is out of range 1..4096", 0},
                             {"not an integer", 0},
                             {"not a non-empty map", 0},
                             {"not a key name", 0},
                             {"not a section.key name", 0},
                             {"cannot be set at run time", 0},
                             {"restart roid", 0},
                             {"a string of", 0},
                             {"an array must be 2 numbers", 0},
                             {"is not a value", 0},
                             {"no data yet", 0},
                             {"refused by the test", 0},
                             {"schema: ", 0},
                             {"is out of range", 0},
                             {"not UTF-8", 0},
                             {"not a boolean", 0},
                             {"df_inner", 0},
                             {"missing \"values\"", 0}};
        uint64_t sent = 0, refused = 0, n_ok = 0, by_cmd[5] = {0};
        uint64_t want[5] = {0};
        size_t heap0 = 0, heap_max = 0;
        for (unsigned r = 0; r < rounds; r++) {
                if (r == rounds / 10 || r == 0)
                        heap_max = heap0 = tap_heap_in_use();
                f.round = r;
                const unsigned nq = 1 + (unsigned)(fuzz_rnd_below(3) ? 0 : fuzz_rnd_below(BATCH_MAX));
                for (unsigned q = 0; q < nq; q++) {
                        request *x = &rq[q];
                        size_t sn;
                        const bool generated = fuzz_rnd_below(4) == 0;
                        if (generated) {
                                msgpack_sbuffer_clear(&gsb);
                                gen_set(&gpk);
                                memcpy(x->b, gsb.data, gsb.size < REQ_CAP ? gsb.size : REQ_CAP);
                                sn = gsb.size < REQ_CAP ? gsb.size : REQ_CAP;
                        } else {
                                const msgpack_sbuffer *s = &sd[fuzz_rnd_below(NSEED)];
                                memcpy(x->b, s->data, s->size);
                                sn = s->size;
                        }
                        x->n = sn;
                        /* generated set requests are well-formed: half of them reach the handler as they are */
                        const size_t kind = fuzz_rnd_below(10) + (generated && fuzz_rnd_below(2) ? 8 : 0);
                        if (kind < 5) { /* one mutation that knows msgpack, sometimes bytes after it */
                                size_t no = 0, pos = 0;
                                if (mp_scan(x->b, x->n, &pos, 0, false, objs, &no, REQ_CAP) && no)
                                        x->n = mutate_msgpack(x->b, x->n, objs, no);
                                if (fuzz_rnd_below(2))
                                        x->n = fuzz_mutate(x->b, x->n, REQ_CAP, (const uint8_t *)sd[3].data, sd[3].size,
                                                           mp_magic, sizeof mp_magic, 1);
                        } else if (kind < 8) {
                                const msgpack_sbuffer *o = &sd[fuzz_rnd_below(NSEED)];
                                x->n = fuzz_mutate(x->b, x->n, REQ_CAP, (const uint8_t *)o->data, o->size, mp_magic,
                                                   sizeof mp_magic, 1 + (unsigned)fuzz_rnd_below(4));
                        }
                        x->frames = fuzz_rnd_below(16) ? 1 : 2 + (unsigned)fuzz_rnd_below(2);
                }

                const uint64_t req0 = roid_control_requests(ctl), err0 = roid_control_errors(ctl);
                bool extra;
                const unsigned got = exchange(rq, nq, rep, rep_n, &extra);
                sent += nq;
                if (got != nq || extra) {
                        fail(&lost, r, "%u requests, %u replies%s", nq, got, extra ? ", not one frame each" : "");
                        zmq_close(dealer); /* start over in step */
                        dealer = new_dealer();
                }
                unsigned bad_replies = 0;
                for (unsigned q = 0; q < got; q++) {
                        reply_info ri;
                        const char *why = check_reply(rep[q], rep_n[q], &z, &ri);
                        if (why) {
                                fail(&malformed, r, "reply %u of %zu bytes: %s", q, rep_n[q], why);
                                continue;
                        }
                        if (!ri.ok) {
                                bad_replies++;
                                seen(kinds, sizeof kinds / sizeof kinds[0], ri.error);
                        } else {
                                n_ok++;
                        }
                        if (ri.cmd >= 0)
                                by_cmd[ri.cmd]++;
                        /* what the handlers were called for, from the replies */
                        switch (ri.cmd) {
                        case C_STATUS:
                        case C_ASK:
                                want[ri.cmd] += ri.ok;
                                break;
                        case C_MAP:
                                want[C_MAP] += ri.ok || strstr(ri.error, "no data yet");
                                break;
                        case C_SET:
                                want[C_SET] +=
                                        (uint64_t)(ri.applied > 0 ? ri.applied : 0) + (!ri.ok && ri.applied >= 0);
                                break;
                        case C_RESET:
                                want[C_RESET] += ri.ok || strstr(ri.error, "refused by the test") ||
                                                 strstr(ri.error, strerror(EBUSY));
                                break;
                        default:
                                break;
                        }
                }
                refused += bad_replies;
                if (roid_control_requests(ctl) - req0 != nq || roid_control_errors(ctl) - err0 != bad_replies)
                        fail(&counted, r, "%u requests (%u refused): the counters moved by %" PRIu64 " and %" PRIu64,
                             nq, bad_replies, roid_control_requests(ctl) - req0, roid_control_errors(ctl) - err0);
                for (int c = 0; c < 5; c++)
                        if (f.calls[c] != want[c]) {
                                fail(&calls, r, "%s handler called %" PRIu64 " times, the replies say %" PRIu64,
                                     cmds[c], f.calls[c], want[c]);
                                want[c] = f.calls[c];
                        }
                const size_t hh = tap_heap_in_use();
                if (hh > heap_max)
                        heap_max = hh;
        }
        none(&lost, "control: every request got exactly one reply");
        none(&malformed, "control: every reply is one msgpack map as proto/live.md has it (ok, cmd, schema, time, "
                         "UTF-8, a printable error when refused)");
        none(&counted, "control: the request and error counters moved by exactly what was sent and refused");
        none(&calls, "control: each handler was called exactly as the replies say");
        none(&f.bad, "control: the handlers were called only with what control.h promises");
        all_seen(kinds, sizeof kinds / sizeof kinds[0], "control");
        tap_ok(n_ok > sent / 10 && refused > sent / 10 && by_cmd[C_SET] > 0 && by_cmd[C_ASK] > 0 && by_cmd[C_RESET] > 0,
               "control: %" PRIu64 " requests, %" PRIu64 " ok, %" PRIu64 " refused (status %" PRIu64 ", map %" PRIu64
               ", set %" PRIu64 ", ask %" PRIu64 ", reset %" PRIu64 ")",
               sent, n_ok, refused, by_cmd[0], by_cmd[1], by_cmd[2], by_cmd[3], by_cmd[4]);
        const size_t bound = 64 * (size_t)MAX_REQ + (1u << 20);
        tap_ok(heap_max <= heap0 + bound, "control: the heap stays bounded (grew by %zu bytes at most, bound %zu)",
               heap_max - heap0, bound);

        /* Good requests afterwards: set k, ask, status. */
        for (int i = 0; i < BATCH_MAX; i++)
                rq[i].frames = 1;
        msgpack_sbuffer_clear(&gsb);
        msgpack_pack_map(&gpk, 2);
        pack_str(&gpk, "cmd");
        pack_str(&gpk, "set");
        pack_str(&gpk, "values");
        msgpack_pack_map(&gpk, 1);
        pack_str(&gpk, "analysis.k");
        msgpack_pack_int(&gpk, 5);
        memcpy(rq[0].b, gsb.data, gsb.size);
        rq[0].n = gsb.size;
        memcpy(rq[1].b, sd[6].data, sd[6].size);
        rq[1].n = sd[6].size;
        memcpy(rq[2].b, sd[0].data, sd[0].size);
        rq[2].n = sd[0].size;
        bool extra;
        const unsigned got = exchange(rq, 3, rep, rep_n, &extra);
        reply_info ri[3];
        bool good = got == 3 && !extra;
        for (unsigned q = 0; good && q < 3; q++)
                good = !check_reply(rep[q], rep_n[q], &z, &ri[q]) && ri[q].ok &&
                       ri[q].cmd == (int)(q == 0   ? C_SET
                                          : q == 1 ? C_ASK
                                                   : C_STATUS);
        tap_ok(good && f.live.analysis.roi.k == 5, "control: after the fuzzing set, ask and status work (k = %u)",
               f.live.analysis.roi.k);
        tap_diag("control: %u rounds, %" PRIu64 " requests, %" PRIu64 " refused; the configuration now: k %u, units "
                 "'%s'",
                 rounds, sent, refused, f.live.analysis.roi.k, f.live.analysis.scan.units);

        msgpack_zone_destroy(&z);
        for (int i = 0; i < BATCH_MAX; i++) {
                free(rq[i].b);
                free(rep[i]);
        }
        for (int i = 0; i < NSEED; i++)
                msgpack_sbuffer_destroy(&sd[i]);
        msgpack_sbuffer_destroy(&gsb);
        zmq_close(dealer);
        roid_control_free(ctl);
        zmq_ctx_term(zctx);
        unlink(f.path);
}

int main(void) {
        const char *e = getenv("ROID_FUZZ_SEED");
        const uint64_t seed = e ? strtoull(e, NULL, 0) | 1 : 0x9e3779b97f4a7c15ULL;
        e = getenv("ROID_FUZZ_ROUNDS");
        const unsigned rounds = e ? (unsigned)strtoul(e, NULL, 0) : 0;

        snprintf(tmpdir, sizeof tmpdir, "/tmp/roid-fuzz-inputs-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                tap_ok(false, "a temporary directory");
                return tap_done();
        }
        for (int i = 0; i < ROWS * COLS; i++)
                pixels[i] = (uint16_t)((i * 7919u) % 300);
        freopen("/dev/null", "w", stderr); /* a log line per bad message or request: thousands */

        /* each part from the same seed, so that one reproduces alone */
        double t0 = now_s();
        fuzz_seed(seed);
        fuzz_config(rounds ? rounds : 10000);
        double t1 = now_s();
        fuzz_seed(seed);
        fuzz_capture(rounds ? rounds : 20000);
        double t2 = now_s();
        fuzz_seed(seed);
        fuzz_control(rounds ? rounds : 12000);
        double t3 = now_s();
        tap_diag("seconds: config %.1f, capture %.1f, control %.1f", t1 - t0, t2 - t1, t3 - t2);
        rmdir(tmpdir);
        return tap_done();
}
