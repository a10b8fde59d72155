/* roid-sim - plays a DECTRIS detector's stream interface for tests and
 * benchmarks: binds a ZeroMQ PUSH socket and streams series in Stream V2
 * (CBOR) or V1 (multipart JSON + binary), see shared/reference/eiger-stream.md.
 *
 * Speed: frames are rendered and compressed once, into a ring of distinct
 * frames, before the first series; per image only the header is encoded.
 * Image image_id of every series shows ring frame image_id % ring_length.
 *
 * Threads: one.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <zmq.h>

#include "ingest/codec.h"
#include "service/text.h"
#include "sim_cbor.h"
#include "sim_md5.h"
#include "sim_source.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "roid-sim writes host-order pixels as little-endian typed arrays"
#endif

#define TIME_BASE      50000000u /* V2 rational time denominator (50 MHz, as real detectors) */
#define DEAD_TICKS     5u        /* readout dead time, 100 ns */
#define MAX_CHANNELS   ROID_MAX_CHANNELS
#define MAX_RING       100000
#define MAX_RING_BYTES ((uint64_t)4 << 30)
#define MAX_PIXELS     ((uint64_t)64 << 20)
#define JSON_DEPTH     32
#define LUT_LEN        1000
#define PHOTON_EV      12400.0

typedef enum { DETAIL_NONE, DETAIL_BASIC, DETAIL_ALL } detail;
static const char *const detail_names[] = {"none", "basic", "all"};

typedef enum { COMP_NONE, COMP_BSLZ4, COMP_LZ4 } comp;
static const char *const comp_names[] = {"none", "bslz4", "lz4"};

typedef struct {
        roid_format fmt;
        const char *endpoint;
        uint32_t rows, cols;
        roid_dtype dtype;
        comp comp;
        unsigned nchannels;
        uint64_t frames;
        bool frames_set;
        uint64_t series;
        double rate;
        uint64_t series_id;
        detail detail;
        const char *user_data, *image_user_data;
        sim_scan scan;
        double origin[2], step[2]; /* --scan origin= and step=: motor position of point (0, 0), per column, per row */
        char units[16];            /* --scan units=, "" when not given */
        bool motor;                /* origin, step or units given: announced, positions sent in motor units */
        const char *fly;           /* --fly KEY=VALUE,... or NULL */
        const char *positions;     /* --positions FILE or NULL */
        const char *source;
        bool mask;
        int hwm;             /* -1: ZeroMQ's default */
        double wait_connect; /* < 0: don't wait */
        int linger;
        bool quiet;
        const char *manifest;
        unsigned ring;
} opts;

/* One pre-rendered frame, all channels. */
typedef struct {
        uint64_t sum[MAX_CHANNELS], masked[MAX_CHANNELS];
        uint8_t *v2data; /* V2: the encoded "data" map */
        size_t v2data_size;
        uint8_t *blob; /* V1: the encoded pixels (one channel) */
        size_t blob_size;
        char *v1dimage; /* V1: part 2, and its MD5 for part 1 */
        size_t v1dimage_len;
        char hash[33];
} slot;

typedef struct {
        opts o;
        char names[MAX_CHANNELS][ROID_NAME_MAX];
        size_t elem;
        uint32_t *mask; /* rows*cols pixel mask (bits: 0 gap, 1 dead), or NULL */
        uint64_t mask_count;
        slot *ring;
        uint64_t ring_len;
        cJSON *user_data;    /* start user_data / V1 header appendix, or NULL */
        cJSON *image_ud;     /* per-image user data template, or NULL */
        cJSON *image_ud_pos; /* its "position" array when a scan fills it in */
        sim_visit *visits;   /* --fly: where each image was taken */
        uint8_t *outside;    /* --fly: 1 where the position sent lies off the grid */
        double *positions;   /* --positions: npositions x [x, y], motor units, sent as they are */
        uint64_t npositions;
        uint8_t *image_ud_cbor; /* fixed per-image user data, encoded once */
        size_t image_ud_cbor_len;
        char *image_ud_text; /* V1 image appendix buffer */
        size_t image_ud_text_cap;
        uint64_t frame_ticks, real_ticks;
        void *zsock;
        FILE *manifest;
        uint64_t bytes_sent, images_sent;
        uint8_t *hdr; /* per-image header scratch */
        size_t hdr_cap;
} sim;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
        (void)sig;
        stop_requested = 1;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
        va_list ap;

        fputs("roid-sim: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        exit(2);
}

static void *xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);

        if (!p)
                die("out of memory (%zu bytes)", n);
        return p;
}

static uint64_t now_ns(clockid_t clk) {
        struct timespec ts;

        clock_gettime(clk, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- options */

static void usage(FILE *f) {
        fputs("usage: roid-sim [OPTION]...\n"
              "Streams detector series like a DECTRIS EIGER: binds a ZeroMQ PUSH socket.\n"
              "\n"
              "  --format v2|v1           Stream V2 (CBOR, default) or V1 (multipart JSON)\n"
              "  --endpoint EP            bind here (default tcp://*:31001 for v2, tcp://*:9999 for v1)\n"
              "  --shape ROWSxCOLS        frame size, rows x cols (default 512x1028); V1 sends\n"
              "                           it as shape [cols, rows] ([width, height])\n"
              "  --dtype uint8|uint16|uint32   pixel type (default uint16)\n"
              "  --compression none|bslz4|lz4  (default bslz4); lz4 is HDF5-framed in v2, raw in v1\n"
              "  --channels N             v2 channels (default 1): threshold_1, threshold_2,\n"
              "                           difference for N <= 3, threshold_1..N above\n"
              "  --frames N               images per series (default 100, or the --scan points)\n"
              "  --series N               series to send (default 1)\n"
              "  --series-id N            series_id of the first series (default 1)\n"
              "  --rate HZ                images per second, 0 = as fast as possible (default 0);\n"
              "                           an image may leave up to 0.1 ms before its time\n"
              "  --header-detail none|basic|all   (default basic); v2 'all' adds flatfield,\n"
              "                           pixel_mask and countrate LUT to the start message\n"
              "  --user-data JSON         v2 start user_data (as CBOR) / v1 header appendix\n"
              "  --image-user-data JSON   per image user data / v1 image appendix; with --scan a\n"
              "                           \"position\" member is set to the image's [x, y]\n"
              "  --scan NYxNX[,snake][,origin=X0:Y0][,step=DX:DY][,units=U]\n"
              "                           the scan performed; adds {\"scan\":{\"shape\":[ny,nx],\"snake\":b,\n"
              "                           \"fast_axis\":\"x\"}} to the start user_data, with origin, step\n"
              "                           and units when given; positions sent are then motor positions\n"
              "                           x = X0 + col * DX, y = Y0 + row * DY. A --user-data object\n"
              "                           with its own \"scan\" announces that grid instead (e.g. the\n"
              "                           finer lattice of a rescan) and --scan only places the sample\n"
              "  --fly KEY=VALUE,...      fly scan over the --scan grid (needs --image-user-data with a\n"
              "                           \"position\"): repeat=N images per point (1), order=grid|shuffle\n"
              "                           (grid), jitter=F positions off the point by up to F steps in\n"
              "                           x and y, uniformly (0, F < 0.5), outside=N images sent at x =\n"
              "                           nx + 1.5 (+ jitter), off the grid (0), seed=U (1);\n"
              "                           the phantom renders each image where it was taken\n"
              "  --positions FILE         images at the motor positions of FILE, a JSON array of [x, y]\n"
              "                           in the units of --scan's origin and step, one image each, in\n"
              "                           order (needs --scan and --image-user-data with a \"position\",\n"
              "                           which carries each [x, y] as given); the phantom renders each\n"
              "                           where it was taken, relative to the --scan grid (clamped to\n"
              "                           its field); at most 100000 positions\n"
              "  --source pattern|file:PATH.h5|phantom   frame source (default pattern)\n"
              "                           phantom[:KEY=VALUE,...]: a ptychography scan of a simulated\n"
              "                           sample (square frames, N a power of two; scans of 4 x 4 to\n"
              "                           100,000 points, each rendered); keys seed, photons,\n"
              "                           particles, pupil, defocus, step, small_radius, small_phase,\n"
              "                           main, truth=PATH (ground truth JSON): tools/sim_phantom.c\n"
              "  --ring N                 distinct frames pre-rendered for sources without a\n"
              "                           period of their own (default 64)\n"
              "  --mask                   pixel mask with a gap cross and dead pixels; gap pixels\n"
              "                           read the type's maximum in every frame\n"
              "  --manifest FILE          one JSON line per image and channel: series_id, image_id,\n"
              "                           channel, sum (pixels neither masked nor at the maximum),\n"
              "                           masked (count of the others)\n"
              "  --hwm N                  ZMQ_SNDHWM (default ZeroMQ's 1000)\n"
              "  --wait-connect SECONDS   wait for a receiver before the first message; fail if none\n"
              "                           (default: no wait; sending blocks until one connects)\n"
              "  --linger MS              ZMQ_LINGER at exit (default -1: deliver everything)\n"
              "  --quiet                  no banner and no summary\n"
              "  --help\n",
              f);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max) {
        char *end;

        errno = 0;
        if (!s[0] || s[0] == '-')
                die("%s: '%s' is not a number", opt, s);
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end || v < min || v > max)
                die("%s: '%s' is not in %" PRIu64 "..%" PRIu64, opt, s, min, max);
        return v;
}

static double parse_double(const char *opt, const char *s, double min, double max) {
        char *end;

        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !(v >= min && v <= max))
                die("%s: '%s' is not in %g..%g", opt, s, min, max);
        return v;
}

/* "AxB" into two numbers in 1..max; the rest after B goes to *ret_rest. */
static void parse_pair(const char *opt, const char *s, uint32_t max, uint32_t *ret_a, uint32_t *ret_b,
                       const char **ret_rest) {
        char *end, *end2;
        unsigned long a, b;

        errno = 0;
        a = strtoul(s, &end, 10);
        if (errno || end == s || (*end != 'x' && *end != 'X'))
                die("%s: '%s' is not AxB", opt, s);
        b = strtoul(end + 1, &end2, 10);
        if (errno || end2 == end + 1 || a < 1 || b < 1 || a > max || b > max)
                die("%s: '%s': both sizes must be in 1..%u", opt, s, max);
        if (!ret_rest && *end2)
                die("%s: trailing '%s'", opt, end2);
        if (ret_rest)
                *ret_rest = end2;
        *ret_a = (uint32_t)a;
        *ret_b = (uint32_t)b;
}

static int pick(const char *opt, const char *s, const char *const *names, int n) {
        for (int i = 0; i < n; i++)
                if (strcmp(s, names[i]) == 0)
                        return i;
        die("%s: unknown value '%s'", opt, s);
}

/* "X:Y" into two finite numbers. */
static void parse_xy(const char *opt, const char *s, double ret[2]) {
        char *end, *end2;

        errno = 0;
        double x = strtod(s, &end);
        if (errno || end == s || *end != ':')
                die("%s: '%s' is not X:Y", opt, s);
        double y = strtod(end + 1, &end2);
        if (errno || end2 == end + 1 || *end2 || !isfinite(x) || !isfinite(y))
                die("%s: '%s' is not X:Y (two finite numbers)", opt, s);
        ret[0] = x;
        ret[1] = y;
}

/* What follows NYxNX in --scan: ",snake", ",origin=X0:Y0", ",step=DX:DY", ",units=U". */
static void parse_scan_keys(const char *rest, opts *o) {
        char buf[256];

        if (strlen(rest) >= sizeof buf)
                die("--scan: too long");
        strcpy(buf, rest);
        if (buf[0] && buf[0] != ',')
                die("--scan: expected NYxNX[,snake][,origin=X0:Y0][,step=DX:DY][,units=U], got '%s'", rest);
        for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');
                if (strcmp(kv, "snake") == 0) {
                        o->scan.snake = true;
                        continue;
                }
                if (!eq)
                        die("--scan: '%s' is not snake or KEY=VALUE (origin, step, units)", kv);
                *eq = '\0';
                const char *v = eq + 1;
                if (strcmp(kv, "origin") == 0) {
                        parse_xy("--scan origin", v, o->origin);
                } else if (strcmp(kv, "step") == 0) {
                        parse_xy("--scan step", v, o->step);
                        if (o->step[0] == 0 || o->step[1] == 0)
                                die("--scan step: '%s' has a zero step", v);
                } else if (strcmp(kv, "units") == 0) {
                        if (strlen(v) >= sizeof o->units)
                                die("--scan units: '%s' is longer than %zu bytes", v, sizeof o->units - 1);
                        if (roid_utf8_invalid_at(v, strlen(v)) < strlen(v))
                                die("--scan units: not UTF-8");
                        strcpy(o->units, v);
                } else {
                        die("--scan: unknown key '%s' (snake, origin, step, units)", kv);
                }
                o->motor = true;
        }
}

static void parse_args(int argc, char **argv, opts *o) {
        enum {
                O_FORMAT = 256,
                O_ENDPOINT,
                O_SHAPE,
                O_DTYPE,
                O_COMP,
                O_CHANNELS,
                O_FRAMES,
                O_SERIES,
                O_RATE,
                O_SERIES_ID,
                O_DETAIL,
                O_UD,
                O_IUD,
                O_SCAN,
                O_FLY,
                O_POSITIONS,
                O_SOURCE,
                O_MASK,
                O_HWM,
                O_WAIT,
                O_LINGER,
                O_QUIET,
                O_MANIFEST,
                O_RING,
                O_HELP
        };
        static const struct option longopts[] = {
                {"format", required_argument, NULL, O_FORMAT},
                {"endpoint", required_argument, NULL, O_ENDPOINT},
                {"shape", required_argument, NULL, O_SHAPE},
                {"dtype", required_argument, NULL, O_DTYPE},
                {"compression", required_argument, NULL, O_COMP},
                {"channels", required_argument, NULL, O_CHANNELS},
                {"frames", required_argument, NULL, O_FRAMES},
                {"series", required_argument, NULL, O_SERIES},
                {"rate", required_argument, NULL, O_RATE},
                {"series-id", required_argument, NULL, O_SERIES_ID},
                {"header-detail", required_argument, NULL, O_DETAIL},
                {"user-data", required_argument, NULL, O_UD},
                {"image-user-data", required_argument, NULL, O_IUD},
                {"scan", required_argument, NULL, O_SCAN},
                {"fly", required_argument, NULL, O_FLY},
                {"positions", required_argument, NULL, O_POSITIONS},
                {"source", required_argument, NULL, O_SOURCE},
                {"mask", no_argument, NULL, O_MASK},
                {"hwm", required_argument, NULL, O_HWM},
                {"wait-connect", required_argument, NULL, O_WAIT},
                {"linger", required_argument, NULL, O_LINGER},
                {"quiet", no_argument, NULL, O_QUIET},
                {"manifest", required_argument, NULL, O_MANIFEST},
                {"ring", required_argument, NULL, O_RING},
                {"help", no_argument, NULL, O_HELP},
                {NULL, 0, NULL, 0},
        };
        static const char *const fmt_names[] = {"v2", "v1"};
        static const char *const dtype_names[] = {"uint8", "uint16", "uint32"};
        static const roid_dtype dtypes[] = {ROID_DT_U8, ROID_DT_U16, ROID_DT_U32};
        const char *rest;
        int c;

        *o = (opts){.fmt = ROID_FMT_V2,
                    .rows = 512,
                    .cols = 1028,
                    .dtype = ROID_DT_U16,
                    .comp = COMP_BSLZ4,
                    .nchannels = 1,
                    .frames = 100,
                    .series = 1,
                    .series_id = 1,
                    .detail = DETAIL_BASIC,
                    .source = "pattern",
                    .hwm = -1,
                    .wait_connect = -1,
                    .linger = -1,
                    .ring = 64,
                    .step = {1, 1}};
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case O_FORMAT:
                        o->fmt = pick("--format", optarg, fmt_names, 2) == 0 ? ROID_FMT_V2 : ROID_FMT_V1;
                        break;
                case O_ENDPOINT:
                        o->endpoint = optarg;
                        break;
                case O_SHAPE:
                        parse_pair("--shape", optarg, 65536, &o->rows, &o->cols, NULL);
                        if ((uint64_t)o->rows * o->cols > MAX_PIXELS)
                                die("--shape: more than %" PRIu64 " pixels", MAX_PIXELS);
                        break;
                case O_DTYPE:
                        o->dtype = dtypes[pick("--dtype", optarg, dtype_names, 3)];
                        break;
                case O_COMP:
                        o->comp = (comp)pick("--compression", optarg, comp_names, 3);
                        break;
                case O_CHANNELS:
                        o->nchannels = (unsigned)parse_u64("--channels", optarg, 1, MAX_CHANNELS);
                        break;
                case O_FRAMES:
                        o->frames = parse_u64("--frames", optarg, 0, 1000000000000ull);
                        o->frames_set = true;
                        break;
                case O_SERIES:
                        o->series = parse_u64("--series", optarg, 1, 1000000000ull);
                        break;
                case O_RATE:
                        o->rate = parse_double("--rate", optarg, 0, 1e9);
                        break;
                case O_SERIES_ID:
                        o->series_id = parse_u64("--series-id", optarg, 0, UINT64_MAX / 2);
                        break;
                case O_DETAIL:
                        o->detail = (detail)pick("--header-detail", optarg, detail_names, 3);
                        break;
                case O_UD:
                        o->user_data = optarg;
                        break;
                case O_IUD:
                        o->image_user_data = optarg;
                        break;
                case O_SCAN:
                        parse_pair("--scan", optarg, 1000000, &o->scan.ny, &o->scan.nx, &rest);
                        /* a later --scan replaces an earlier one whole */
                        o->scan.snake = false;
                        o->motor = false;
                        o->origin[0] = o->origin[1] = 0;
                        o->step[0] = o->step[1] = 1;
                        o->units[0] = '\0';
                        parse_scan_keys(rest, o);
                        o->scan.active = true;
                        break;
                case O_FLY:
                        o->fly = optarg;
                        break;
                case O_POSITIONS:
                        o->positions = optarg;
                        break;
                case O_SOURCE:
                        o->source = optarg;
                        break;
                case O_MASK:
                        o->mask = true;
                        break;
                case O_HWM:
                        o->hwm = (int)parse_u64("--hwm", optarg, 0, INT32_MAX);
                        break;
                case O_WAIT:
                        o->wait_connect = parse_double("--wait-connect", optarg, 0, 1e6);
                        break;
                case O_LINGER:
                        o->linger = optarg[0] == '-' && strcmp(optarg, "-1") == 0
                                            ? -1
                                            : (int)parse_u64("--linger", optarg, 0, INT32_MAX);
                        break;
                case O_QUIET:
                        o->quiet = true;
                        break;
                case O_MANIFEST:
                        o->manifest = optarg;
                        break;
                case O_RING:
                        o->ring = (unsigned)parse_u64("--ring", optarg, 1, MAX_RING);
                        break;
                case O_HELP:
                        usage(stdout);
                        exit(0);
                default:
                        usage(stderr);
                        exit(2);
                }
        }
        if (optind < argc)
                die("unexpected argument '%s' (see --help)", argv[optind]);
        if (o->fmt == ROID_FMT_V1 && o->nchannels != 1)
                die("--channels: Stream V1 carries one threshold only");
        if (o->fly && !o->scan.active)
                die("--fly needs --scan");
        if (o->positions && !o->scan.active)
                die("--positions needs --scan (the grid the positions are taken on)");
        if (o->positions && o->fly)
                die("--positions and --fly exclude each other");
        if (o->scan.active && o->motor)
                for (int a = 0; a < 2; a++) {
                        const double last = o->origin[a] + (double)((a ? o->scan.ny : o->scan.nx) - 1) * o->step[a];
                        if (!isfinite(last) || fabs(last) > 1e300)
                                die("--scan: the last point's %c = %g + %u * %g is out of range", a ? 'y' : 'x',
                                    o->origin[a], (a ? o->scan.ny : o->scan.nx) - 1, o->step[a]);
                }
        if (o->scan.active && !o->frames_set)
                o->frames = (uint64_t)o->scan.ny * o->scan.nx;
        if (!o->endpoint)
                o->endpoint = o->fmt == ROID_FMT_V2 ? "tcp://*:31001" : "tcp://*:9999";
}

/* ------------------------------------------------------------ preparation */

static const char *dtype_name(roid_dtype dt) {
        return dt == ROID_DT_U8 ? "uint8" : dt == ROID_DT_U16 ? "uint16" : "uint32";
}

static unsigned typed_array_tag(roid_dtype dt) {
        return dt == ROID_DT_U8 ? 64 : dt == ROID_DT_U16 ? 69 : 70;
}

static void channel_names(sim *s) {
        static const char *const three[] = {"threshold_1", "threshold_2", "difference"};

        for (unsigned c = 0; c < s->o.nchannels; c++) {
                if (s->o.nchannels <= 3)
                        snprintf(s->names[c], sizeof s->names[c], "%s", three[c]);
                else
                        snprintf(s->names[c], sizeof s->names[c], "threshold_%u", c + 1);
        }
}

static uint32_t mix32(uint32_t h) {
        h ^= h >> 16;
        h *= 0x7feb352dU;
        h ^= h >> 15;
        h *= 0x846ca68bU;
        h ^= h >> 16;
        return h;
}

/* A gap cross (bit 0) through the middle like the gaps between modules, and
 * five dead pixels (bit 1) elsewhere. */
static void make_mask(sim *s) {
        uint32_t rows = s->o.rows, cols = s->o.cols;
        size_t n = (size_t)rows * cols;
        uint32_t gw = cols / 64 ? cols / 64 : 1, gh = rows / 64 ? rows / 64 : 1;
        uint32_t c0 = cols / 2 - gw / 2, r0 = rows / 2 - gh / 2;

        s->mask = calloc(n, sizeof *s->mask);
        if (!s->mask)
                die("out of memory for the pixel mask");
        for (uint32_t y = 0; y < rows; y++)
                for (uint32_t x = 0; x < cols; x++)
                        if ((x >= c0 && x < c0 + gw) || (y >= r0 && y < r0 + gh))
                                s->mask[(size_t)y * cols + x] |= 1;
        for (uint32_t i = 0, placed = 0; placed < 5 && i < 1000; i++) {
                size_t p = mix32(i * 2654435761u + 17) % n;
                if (s->mask[p] == 0) {
                        s->mask[p] = 2;
                        placed++;
                }
        }
        for (size_t i = 0; i < n; i++)
                s->mask_count += s->mask[i] != 0;
}

static uint32_t pixel_at(const void *px, roid_dtype dt, size_t i) {
        switch (dt) {
        case ROID_DT_U8:
                return ((const uint8_t *)px)[i];
        case ROID_DT_U16:
                return ((const uint16_t *)px)[i];
        default:
                return ((const uint32_t *)px)[i];
        }
}

/* Gap pixels read the maximum, as with pixel_mask_applied; then the sums. */
static void mask_and_sum(sim *s, void *px, uint64_t *ret_sum, uint64_t *ret_masked) {
        size_t n = (size_t)s->o.rows * s->o.cols;
        uint32_t max = sim_dtype_max(s->o.dtype);
        uint64_t sum = 0, masked = 0;

        for (size_t i = 0; i < n; i++) {
                if (s->mask && (s->mask[i] & 1))
                        sim_set_pixel(px, s->o.dtype, i, max);
                uint32_t v = pixel_at(px, s->o.dtype, i);
                if (v == max || (s->mask && s->mask[i])) {
                        masked++;
                        continue;
                }
                sum += v;
        }
        *ret_sum = sum;
        *ret_masked = masked;
}

static size_t comp_bound(const sim *s, size_t raw) {
        switch (s->o.comp) {
        case COMP_BSLZ4:
                return roid_bslz4_bound(raw, s->elem, 0);
        case COMP_LZ4:
                return s->o.fmt == ROID_FMT_V2 ? roid_lz4h5_bound(raw, 8192) : roid_lz4raw_bound(raw);
        default:
                return raw;
        }
}

static size_t compress(const sim *s, const void *raw, size_t raw_size, uint8_t *dst, size_t cap) {
        size_t n = 0;
        int r = 0;

        switch (s->o.comp) {
        case COMP_BSLZ4:
                r = roid_bslz4_encode(raw, raw_size, s->elem, 0, dst, cap, &n);
                break;
        case COMP_LZ4:
                if (s->o.fmt == ROID_FMT_V2)
                        r = roid_lz4h5_encode(raw, raw_size, 8192, dst, cap, &n); /* DECTRIS uses 8 KiB blocks */
                else
                        r = roid_lz4raw_encode(raw, raw_size, dst, cap, &n);
                break;
        default:
                memcpy(dst, raw, raw_size);
                n = raw_size;
                break;
        }
        if (r < 0)
                die("compression (%s) failed: %s", comp_names[s->o.comp], strerror(-r));
        return n;
}

/* tag 40 [[rows, cols], tagT(payload)], payload optionally in tag 56500. */
static void cw_image(sim_cw *w, const sim *s, unsigned tag, const uint8_t *p, size_t n, comp cp) {
        sim_cw_tag(w, 40);
        sim_cw_array(w, 2);
        sim_cw_array(w, 2);
        sim_cw_uint(w, s->o.rows);
        sim_cw_uint(w, s->o.cols);
        sim_cw_tag(w, tag);
        if (cp != COMP_NONE) {
                sim_cw_tag(w, 56500);
                sim_cw_array(w, 3);
                sim_cw_text(w, cp == COMP_BSLZ4 ? "bslz4" : "lz4");
                sim_cw_uint(w, cp == COMP_BSLZ4 ? s->elem : 0);
        }
        sim_cw_bytes(w, p, n);
}

static char *v1_dimage_json(const sim *s, size_t blob_size, size_t *ret_len) {
        char enc[16], *buf = xmalloc(256);

        if (s->o.comp == COMP_BSLZ4)
                snprintf(enc, sizeof enc, "bs%zu-lz4<", s->elem * 8);
        else
                snprintf(enc, sizeof enc, "%s", s->o.comp == COMP_LZ4 ? "lz4<" : "<");
        /* Keys in alphabetical order, as the real detector sends them. */
        int n = snprintf(buf, 256,
                         "{\"encoding\":\"%s\",\"htype\":\"dimage_d-1.0\",\"shape\":[%" PRIu32 ",%" PRIu32
                         "],\"size\":%zu,\"type\":\"%s\"}",
                         enc, s->o.cols, s->o.rows, blob_size, dtype_name(s->o.dtype));
        *ret_len = (size_t)n;
        return buf;
}

static void build_ring(sim *s, const sim_source_ops *src, void *src_state) {
        size_t raw_size = (size_t)s->o.rows * s->o.cols * s->elem;
        size_t cap = comp_bound(s, raw_size);
        uint8_t *raw = xmalloc(raw_size);
        uint8_t *enc[MAX_CHANNELS];
        size_t enc_size[MAX_CHANNELS];
        uint64_t total = 0;
        roid_err err = {{0}};

        for (unsigned c = 0; c < s->o.nchannels; c++)
                enc[c] = xmalloc(cap);
        s->ring = calloc(s->ring_len, sizeof *s->ring);
        if (!s->ring)
                die("out of memory for a ring of %" PRIu64 " frames", s->ring_len);
        for (uint64_t i = 0; i < s->ring_len; i++) {
                slot *sl = &s->ring[i];
                for (unsigned c = 0; c < s->o.nchannels; c++) {
                        int r = src->fill(src_state, i, c, raw, &err);
                        if (r < 0)
                                die("source %s, frame %" PRIu64 ": %s", src->name, i, err.msg);
                        mask_and_sum(s, raw, &sl->sum[c], &sl->masked[c]);
                        enc_size[c] = compress(s, raw, raw_size, enc[c], cap);
                        total += enc_size[c];
                }
                if (total > MAX_RING_BYTES)
                        die("the ring needs more than %" PRIu64 " bytes; use a smaller --ring", MAX_RING_BYTES);
                if (s->o.fmt == ROID_FMT_V2) {
                        size_t need = 16;
                        for (unsigned c = 0; c < s->o.nchannels; c++)
                                need += enc_size[c] + 96;
                        sl->v2data = xmalloc(need);
                        sim_cw w;
                        sim_cw_init(&w, sl->v2data, need);
                        sim_cw_map(&w, s->o.nchannels);
                        for (unsigned c = 0; c < s->o.nchannels; c++) {
                                sim_cw_text(&w, s->names[c]);
                                cw_image(&w, s, typed_array_tag(s->o.dtype), enc[c], enc_size[c], s->o.comp);
                        }
                        if (w.overflow)
                                die("internal: data map of frame %" PRIu64 " overflows %zu bytes", i, need);
                        sl->v2data_size = w.len;
                } else {
                        sl->blob = xmalloc(enc_size[0]);
                        memcpy(sl->blob, enc[0], enc_size[0]);
                        sl->blob_size = enc_size[0];
                        sl->v1dimage = v1_dimage_json(s, sl->blob_size, &sl->v1dimage_len);
                        sim_md5_hex(sl->v1dimage, sl->v1dimage_len, sl->hash);
                }
        }
        for (unsigned c = 0; c < s->o.nchannels; c++)
                free(enc[c]);
        free(raw);
}

/* ---------------------------------------------------------------- fly scans */

static uint64_t fly_next(uint64_t *st) {
        uint64_t z = (*st += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static double fly_unit(uint64_t *st) {
        return (double)(fly_next(st) >> 11) * 0x1.0p-53;
}

/* The visits of --fly: every grid point `repeat` times in acquisition order,
 * shuffled if asked, each off its point by the jitter; `outside` of them
 * (drawn at random) flagged to be sent off the grid. */
static void make_visits(sim *s) {
        double jitter = 0;
        uint64_t repeat = 1, outside = 0, seed = 1;
        bool shuffle = false;
        char buf[256];
        if (strlen(s->o.fly) >= sizeof buf)
                die("--fly: too long");
        strcpy(buf, s->o.fly);
        for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(kv, '=');
                if (!eq)
                        die("--fly: '%s' is not KEY=VALUE", kv);
                *eq = '\0';
                const char *v = eq + 1;
                if (strcmp(kv, "jitter") == 0)
                        jitter = parse_double("--fly jitter", v, 0, 0.49);
                else if (strcmp(kv, "repeat") == 0)
                        repeat = parse_u64("--fly repeat", v, 1, 1000);
                else if (strcmp(kv, "outside") == 0)
                        outside = parse_u64("--fly outside", v, 0, UINT64_MAX);
                else if (strcmp(kv, "seed") == 0)
                        seed = parse_u64("--fly seed", v, 0, UINT64_MAX);
                else if (strcmp(kv, "order") == 0)
                        shuffle = pick("--fly order", v, (const char *const[]){"grid", "shuffle"}, 2) == 1;
                else
                        die("--fly: unknown key '%s' (jitter, repeat, order, outside, seed)", kv);
        }
        const sim_scan *sc = &s->o.scan;
        uint64_t npts = (uint64_t)sc->ny * sc->nx, n = npts * repeat;
        if (n > MAX_RING)
                die("--fly: %" PRIu64 " images (%" PRIu64 " points x %" PRIu64 "), at most %u", n, npts, repeat,
                    MAX_RING);
        if (outside > n)
                die("--fly: outside=%" PRIu64 " of %" PRIu64 " images", outside, n);
        s->visits = xmalloc(n * sizeof *s->visits);
        s->outside = calloc(n, 1);
        if (!s->outside)
                die("out of memory");
        uint64_t st = seed ^ 0xf1e5ca4ULL;
        for (uint64_t i = 0; i < n; i++) {
                uint64_t k = i / repeat, row = k / sc->nx, col = k % sc->nx;
                if (sc->snake && (row & 1))
                        col = sc->nx - 1 - col;
                s->visits[i] = (sim_visit){(uint32_t)row, (uint32_t)col, 0, 0};
        }
        for (uint64_t i = n - 1; shuffle && i > 0; i--) { /* Fisher-Yates */
                uint64_t j = fly_next(&st) % (i + 1);
                sim_visit t = s->visits[i];
                s->visits[i] = s->visits[j];
                s->visits[j] = t;
        }
        for (uint64_t i = 0; i < n; i++) {
                s->visits[i].dx = (2 * fly_unit(&st) - 1) * jitter;
                s->visits[i].dy = (2 * fly_unit(&st) - 1) * jitter;
        }
        for (uint64_t m = 0; m < outside;) {
                uint64_t i = fly_next(&st) % n;
                if (!s->outside[i]) {
                        s->outside[i] = 1;
                        m++;
                }
        }
        s->o.scan.visits = s->visits;
        s->o.scan.nvisits = n;
        if (!s->o.frames_set)
                s->o.frames = n;
}

/* 100000 pairs of full-precision numbers take about 4.1 MB; cJSON takes
 * about 40 times a file's size of memory for the densest JSON. */
#define MAX_POSITIONS_BYTES ((long)6 << 20)

/* The visits of --positions: each [x, y] of FILE (motor units of the --scan
 * grid) belongs to its nearest grid point, clamped to the grid, and lies off
 * it by the rest, in steps (the phantom clamps that to its field). */
static void load_positions(sim *s) {
        const char *path = s->o.positions;
        /* non-blocking: a FIFO must be refused, not waited on */
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
                die("--positions %s: %s", path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                die("--positions %s: not a regular file", path);
        FILE *f = fdopen(fd, "rb");
        if (!f)
                die("--positions %s: %s", path, strerror(errno));
        if (st.st_size > MAX_POSITIONS_BYTES)
                die("--positions %s: %lld bytes, at most %ld", path, (long long)st.st_size, MAX_POSITIONS_BYTES);
        long size = (long)st.st_size;
        char *text = xmalloc((size_t)size + 1);
        if (fread(text, 1, (size_t)size, f) != (size_t)size)
                die("--positions %s: read error", path);
        fclose(f);
        text[size] = '\0';
        cJSON *arr = strlen(text) == (size_t)size ? cJSON_ParseWithOpts(text, NULL, 1) : NULL;
        free(text);
        if (!cJSON_IsArray(arr))
                die("--positions %s: not a JSON array of [x, y] positions", path);
        int n = cJSON_GetArraySize(arr);
        if (n < 1 || n > MAX_RING)
                die("--positions %s: %d positions, expected 1..%u", path, n, MAX_RING);
        const sim_scan *sc = &s->o.scan;
        s->positions = xmalloc((size_t)n * 2 * sizeof *s->positions);
        s->visits = xmalloc((size_t)n * sizeof *s->visits);
        int i = 0;
        for (const cJSON *p = arr->child; p; p = p->next, i++) {
                const cJSON *x = cJSON_GetArrayItem(p, 0), *y = cJSON_GetArrayItem(p, 1);
                if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2 || !cJSON_IsNumber(x) || !cJSON_IsNumber(y) ||
                    !isfinite(x->valuedouble) || !isfinite(y->valuedouble))
                        die("--positions %s: element %d is not [x, y] (two finite numbers)", path, i);
                double u = (x->valuedouble - s->o.origin[0]) / s->o.step[0];
                double v = (y->valuedouble - s->o.origin[1]) / s->o.step[1];
                if (!isfinite(u) || !isfinite(v))
                        die("--positions %s: element %d [%g, %g] is not on the scale of the grid", path, i,
                            x->valuedouble, y->valuedouble);
                double col = fmin(fmax(round(u), 0), sc->nx - 1), row = fmin(fmax(round(v), 0), sc->ny - 1);
                s->visits[i] = (sim_visit){(uint32_t)row, (uint32_t)col, u - col, v - row};
                s->positions[2 * i] = x->valuedouble;
                s->positions[2 * i + 1] = y->valuedouble;
        }
        cJSON_Delete(arr);
        s->npositions = (uint64_t)n;
        s->o.scan.visits = s->visits;
        s->o.scan.nvisits = (uint64_t)n;
        if (!s->o.frames_set)
                s->o.frames = (uint64_t)n;
}

static cJSON *parse_json_opt(const char *opt, const char *text) {
        cJSON *j = cJSON_Parse(text);

        if (!j)
                die("%s: not valid JSON: '%s'", opt, text);
        return j;
}

static void prepare_user_data(sim *s) {
        if (s->o.user_data)
                s->user_data = parse_json_opt("--user-data", s->o.user_data);
        if (s->o.scan.active) {
                if (!s->user_data)
                        s->user_data = cJSON_CreateObject();
                if (!cJSON_IsObject(s->user_data))
                        die("--user-data must be a JSON object to be combined with --scan");
        }
        /* A "scan" of --user-data is announced as it is: a grid other than the one performed. */
        if (s->o.scan.active && !cJSON_GetObjectItemCaseSensitive(s->user_data, "scan")) {
                cJSON *scan = cJSON_CreateObject();
                cJSON *shape = cJSON_CreateArray();
                cJSON_AddItemToArray(shape, cJSON_CreateNumber(s->o.scan.ny));
                cJSON_AddItemToArray(shape, cJSON_CreateNumber(s->o.scan.nx));
                cJSON_AddItemToObject(scan, "shape", shape);
                cJSON_AddBoolToObject(scan, "snake", s->o.scan.snake);
                cJSON_AddStringToObject(scan, "fast_axis", "x");
                if (s->o.motor) {
                        cJSON_AddItemToObject(scan, "origin", cJSON_CreateDoubleArray(s->o.origin, 2));
                        cJSON_AddItemToObject(scan, "step", cJSON_CreateDoubleArray(s->o.step, 2));
                        cJSON_AddStringToObject(scan, "units", s->o.units);
                }
                cJSON_AddItemToObject(s->user_data, "scan", scan);
        }
        if (!s->o.image_user_data) {
                if (s->positions)
                        die("--positions needs --image-user-data with a \"position\" member");
                return;
        }
        s->image_ud = parse_json_opt("--image-user-data", s->o.image_user_data);
        if (s->o.scan.active && cJSON_IsObject(s->image_ud) &&
            cJSON_GetObjectItemCaseSensitive(s->image_ud, "position")) {
                cJSON *pos = cJSON_CreateArray();
                cJSON_AddItemToArray(pos, cJSON_CreateNumber(0));
                cJSON_AddItemToArray(pos, cJSON_CreateNumber(0));
                cJSON_ReplaceItemInObjectCaseSensitive(s->image_ud, "position", pos);
                s->image_ud_pos = pos;
        }
        if (s->visits && !s->image_ud_pos)
                die("%s: --image-user-data needs a \"position\" member for the positions",
                    s->positions ? "--positions" : "--fly");
        /* Sizes: CBOR of a JSON text is at most 9 bytes per character (a
         * 1-character number as float64); printed positions add digits. */
        size_t tlen = strlen(s->o.image_user_data);
        size_t cap = 9 * tlen + 64;
        s->image_ud_cbor = xmalloc(cap);
        sim_cw w;
        sim_cw_init(&w, s->image_ud_cbor, cap);
        if (sim_cbor_from_json(&w, s->image_ud, JSON_DEPTH) < 0)
                die("--image-user-data: nested too deep or too large");
        s->image_ud_cbor_len = w.len;
        s->image_ud_text_cap = 2 * tlen + 256;
        s->image_ud_text = xmalloc(s->image_ud_text_cap);
        if (!cJSON_PrintPreallocated(s->image_ud, s->image_ud_text, (int)s->image_ud_text_cap, 0))
                die("--image-user-data: cannot print");
}

/* The scan position [x, y] of image i: row-major, x fast, snake reverses odd rows. */
static void scan_position(const sim_scan *sc, uint64_t i, uint64_t *ret_x, uint64_t *ret_y) {
        uint64_t k = i % ((uint64_t)sc->ny * sc->nx);
        uint64_t y = k / sc->nx, x = k % sc->nx;

        if (sc->snake && (y & 1))
                x = sc->nx - 1 - x;
        *ret_x = x;
        *ret_y = y;
}

/* Refreshes the image user data for image i if it carries a position. */
static void update_image_ud(sim *s, uint64_t i) {
        double px, py;

        if (!s->image_ud_pos)
                return;
        if (s->positions) {
                uint64_t k = i % s->npositions;
                px = s->positions[2 * k];
                py = s->positions[2 * k + 1];
        } else {
                double u, v; /* in grid steps */
                if (s->visits) {
                        uint64_t k = i % s->o.scan.nvisits;
                        const sim_visit *vi = &s->visits[k];
                        u = s->outside[k] ? s->o.scan.nx + 0.5 + vi->dx + 1 : vi->col + vi->dx;
                        v = vi->row + vi->dy;
                } else {
                        uint64_t x, y;
                        scan_position(&s->o.scan, i, &x, &y);
                        u = (double)x;
                        v = (double)y;
                }
                px = s->o.origin[0] + u * s->o.step[0];
                py = s->o.origin[1] + v * s->o.step[1];
        }
        cJSON_SetNumberValue(cJSON_GetArrayItem(s->image_ud_pos, 0), px);
        cJSON_SetNumberValue(cJSON_GetArrayItem(s->image_ud_pos, 1), py);
        if (s->o.fmt == ROID_FMT_V2) {
                sim_cw w;
                sim_cw_init(&w, s->image_ud_cbor, 9 * strlen(s->o.image_user_data) + 64);
                if (sim_cbor_from_json(&w, s->image_ud, JSON_DEPTH) < 0)
                        die("internal: image user data grew past its buffer");
                s->image_ud_cbor_len = w.len;
        } else if (!cJSON_PrintPreallocated(s->image_ud, s->image_ud_text, (int)s->image_ud_text_cap, 0)) {
                die("internal: image appendix grew past its buffer");
        }
}

/* A ULID-like series_unique_id: 48-bit ms time and 80 random bits, Crockford base32. */
static void make_unique_id(char out[27], uint64_t unix_ns) {
        static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        uint8_t v[16] = {0};
        uint64_t ms = unix_ns / 1000000u;

        for (int i = 0; i < 6; i++)
                v[i] = (uint8_t)(ms >> (40 - 8 * i));
        if (getrandom(v + 6, 10, 0) != 10)
                for (int i = 6; i < 16; i++)
                        v[i] = (uint8_t)mix32((uint32_t)(unix_ns >> (i * 3)) + (uint32_t)i);
        /* 128 bits as 26 base-32 digits, most significant first (2 leading pad bits). */
        for (int d = 0; d < 26; d++) {
                int bit = d * 5 - 2, val = 0;
                for (int b = 0; b < 5; b++, bit++) {
                        val <<= 1;
                        if (bit >= 0)
                                val |= (v[bit / 8] >> (7 - bit % 8)) & 1;
                }
                out[d] = b32[val];
        }
        out[26] = '\0';
}

/* ---------------------------------------------------------------- sending */

static void zsend(sim *s, const void *p, size_t n, int flags, bool constant) {
        for (;;) {
                int r = constant ? zmq_send_const(s->zsock, p, n, flags) : zmq_send(s->zsock, p, n, flags);
                if (r >= 0)
                        break;
                if (zmq_errno() != EINTR)
                        die("zmq_send: %s", zmq_strerror(zmq_errno()));
                if (stop_requested)
                        die("interrupted while blocked in zmq_send");
        }
        s->bytes_sent += n;
}

static void zsend_msg(sim *s, zmq_msg_t *m) {
        size_t n = zmq_msg_size(m);

        while (zmq_msg_send(m, s->zsock, 0) < 0) {
                if (zmq_errno() != EINTR)
                        die("zmq_msg_send: %s", zmq_strerror(zmq_errno()));
                if (stop_requested)
                        die("interrupted while blocked in zmq_msg_send");
        }
        s->bytes_sent += n;
}

static double frame_time(const sim *s) {
        return (double)s->frame_ticks / TIME_BASE;
}

static double count_time(const sim *s) {
        return (double)s->real_ticks / TIME_BASE;
}

static void cw_key_uint(sim_cw *w, const char *k, uint64_t v) {
        sim_cw_text(w, k);
        sim_cw_uint(w, v);
}

static void cw_key_text(sim_cw *w, const char *k, const char *v) {
        sim_cw_text(w, k);
        sim_cw_text(w, v);
}

static float flat_value(size_t i) {
        return 1.0f + 0.02f * (float)((int)(mix32((uint32_t)i ^ 0xf1a7u) % 11u) - 5) / 5.0f;
}

static float lut_value(unsigned i) {
        return (float)i * (1.0f + (float)i / 4000.0f);
}

static double threshold_ev(unsigned c) {
        return PHOTON_EV / 2.0 * (1.0 + 0.25 * c);
}

static bool is_threshold(const sim *s, unsigned c) {
        return strcmp(s->names[c], "difference") != 0;
}

/* Top-level start-message key; counted because the map header comes first. */
static void top(sim_cw *w, size_t *nkeys, const char *k) {
        sim_cw_text(w, k);
        (*nkeys)++;
}

static void send_start_v2(sim *s, uint64_t series_id, const char *uid, uint64_t arm_ns) {
        enum { HEAD = 16 }; /* room for tag 55799 and the map header, written last */
        size_t npx = (size_t)s->o.rows * s->o.cols;
        bool all = s->o.detail == DETAIL_ALL, send_mask = all || s->o.mask;
        size_t cap = HEAD + 65536 + (all ? s->o.nchannels * (npx * 4 + 64) + LUT_LEN * 4 : 0) +
                     (send_mask ? s->o.nchannels * (npx * 4 + 64) : 0);
        uint8_t *ud = NULL, *buf;
        size_t ud_len = 0, nk = 0;
        sim_cw w;

        if (s->user_data) {
                size_t ucap = 9 * strlen(s->o.user_data ? s->o.user_data : "") + 4096;
                ud = xmalloc(ucap);
                sim_cw_init(&w, ud, ucap);
                if (sim_cbor_from_json(&w, s->user_data, JSON_DEPTH) < 0)
                        die("--user-data: nested too deep or too large");
                ud_len = w.len;
                cap += ud_len;
        }
        buf = xmalloc(cap);
        sim_cw_init(&w, buf + HEAD, cap - HEAD);
        top(&w, &nk, "type");
        sim_cw_text(&w, "start");
        top(&w, &nk, "arm_date");
        sim_cw_date(&w, arm_ns);
        top(&w, &nk, "beam_center_x");
        sim_cw_double(&w, s->o.cols / 2.0);
        top(&w, &nk, "beam_center_y");
        sim_cw_double(&w, s->o.rows / 2.0);
        top(&w, &nk, "channels");
        sim_cw_array(&w, s->o.nchannels);
        for (unsigned c = 0; c < s->o.nchannels; c++)
                sim_cw_text(&w, s->names[c]);
        top(&w, &nk, "count_time");
        sim_cw_double(&w, count_time(s));
        top(&w, &nk, "countrate_correction_enabled");
        sim_cw_bool(&w, false);
        if (all) {
                uint32_t lut[LUT_LEN];
                for (unsigned i = 0; i < LUT_LEN; i++)
                        lut[i] = (uint32_t)lut_value(i);
                top(&w, &nk, "countrate_correction_lookup_table");
                sim_cw_tag(&w, 70);
                sim_cw_bytes(&w, lut, sizeof lut);
        }
        top(&w, &nk, "detector_description");
        sim_cw_text(&w, "Dectris EIGER2 Si (roid-sim)");
        top(&w, &nk, "detector_serial_number");
        sim_cw_text(&w, "E-00-0000-SIM");
        top(&w, &nk, "detector_translation");
        sim_cw_array(&w, 3);
        sim_cw_double(&w, 0.0);
        sim_cw_double(&w, 0.0);
        sim_cw_double(&w, 0.1);
        if (all) {
                float *ff = xmalloc(npx * sizeof *ff);
                for (size_t i = 0; i < npx; i++)
                        ff[i] = flat_value(i);
                top(&w, &nk, "flatfield");
                sim_cw_map(&w, s->o.nchannels);
                for (unsigned c = 0; c < s->o.nchannels; c++) {
                        sim_cw_text(&w, s->names[c]);
                        cw_image(&w, s, 85, (const uint8_t *)ff, npx * sizeof *ff, COMP_NONE);
                }
                free(ff);
        }
        top(&w, &nk, "flatfield_enabled");
        sim_cw_bool(&w, false);
        top(&w, &nk, "frame_time");
        sim_cw_double(&w, frame_time(s));
        top(&w, &nk, "goniometer");
        sim_cw_map(&w, 1);
        sim_cw_text(&w, "omega");
        sim_cw_map(&w, 2);
        sim_cw_text(&w, "increment");
        sim_cw_double(&w, 0.1);
        sim_cw_text(&w, "start");
        sim_cw_double(&w, 0.0);
        top(&w, &nk, "image_dtype");
        sim_cw_text(&w, dtype_name(s->o.dtype));
        top(&w, &nk, "image_size_x");
        sim_cw_uint(&w, s->o.cols);
        top(&w, &nk, "image_size_y");
        sim_cw_uint(&w, s->o.rows);
        top(&w, &nk, "incident_energy");
        sim_cw_double(&w, PHOTON_EV);
        top(&w, &nk, "incident_wavelength");
        sim_cw_double(&w, 12398.42 / PHOTON_EV);
        top(&w, &nk, "number_of_images");
        sim_cw_uint(&w, s->o.frames);
        if (send_mask) {
                uint32_t *zero = s->mask ? NULL : calloc(npx, sizeof *zero);
                if (!s->mask && !zero)
                        die("out of memory for the pixel mask");
                top(&w, &nk, "pixel_mask");
                sim_cw_map(&w, s->o.nchannels);
                for (unsigned c = 0; c < s->o.nchannels; c++) {
                        sim_cw_text(&w, s->names[c]);
                        cw_image(&w, s, 70, (const uint8_t *)(s->mask ? s->mask : zero), npx * 4, COMP_NONE);
                }
                free(zero);
        }
        top(&w, &nk, "pixel_mask_enabled");
        sim_cw_bool(&w, s->mask);
        top(&w, &nk, "pixel_size_x");
        sim_cw_double(&w, 75e-6);
        top(&w, &nk, "pixel_size_y");
        sim_cw_double(&w, 75e-6);
        top(&w, &nk, "saturation_value");
        sim_cw_uint(&w, sim_dtype_max(s->o.dtype) - 1);
        top(&w, &nk, "sensor_material");
        sim_cw_text(&w, "Si");
        top(&w, &nk, "sensor_thickness");
        sim_cw_double(&w, 450e-6);
        top(&w, &nk, "series_id");
        sim_cw_uint(&w, series_id);
        top(&w, &nk, "series_unique_id");
        sim_cw_text(&w, uid);
        top(&w, &nk, "threshold_energy");
        unsigned nthr = 0;
        for (unsigned c = 0; c < s->o.nchannels; c++)
                nthr += is_threshold(s, c);
        sim_cw_map(&w, nthr);
        for (unsigned c = 0; c < s->o.nchannels; c++) {
                if (is_threshold(s, c)) {
                        sim_cw_text(&w, s->names[c]);
                        sim_cw_double(&w, threshold_ev(c));
                }
        }
        if (ud) {
                top(&w, &nk, "user_data");
                sim_cw_raw(&w, ud, ud_len);
        }
        top(&w, &nk, "virtual_pixel_interpolation_enabled");
        sim_cw_bool(&w, false);
        if (w.overflow)
                die("internal: start message overflows %zu bytes", cap);

        uint8_t head[HEAD];
        sim_cw hw;
        sim_cw_init(&hw, head, sizeof head);
        sim_cw_tag(&hw, 55799);
        sim_cw_map(&hw, nk);
        memcpy(buf + HEAD - hw.len, head, hw.len);
        zsend(s, buf + HEAD - hw.len, hw.len + w.len, 0, false);
        free(buf);
        free(ud);
}

static void cw_rational(sim_cw *w, const char *k, uint64_t num) {
        sim_cw_text(w, k);
        sim_cw_array(w, 2);
        sim_cw_uint(w, num);
        sim_cw_uint(w, TIME_BASE);
}

static void send_image_v2(sim *s, uint64_t series_id, const char *uid, const uint8_t *date_cbor, size_t date_len,
                          uint64_t image_id, const slot *sl) {
        sim_cw w;

        sim_cw_init(&w, s->hdr, s->hdr_cap);
        sim_cw_tag(&w, 55799);
        sim_cw_map(&w, s->image_ud ? 10 : 9);
        cw_key_text(&w, "type", "image");
        cw_key_uint(&w, "series_id", series_id);
        cw_key_text(&w, "series_unique_id", uid);
        cw_key_uint(&w, "image_id", image_id);
        cw_rational(&w, "real_time", s->real_ticks);
        sim_cw_text(&w, "series_date");
        sim_cw_raw(&w, date_cbor, date_len);
        cw_rational(&w, "start_time", image_id * s->frame_ticks);
        cw_rational(&w, "stop_time", image_id * s->frame_ticks + s->real_ticks);
        if (s->image_ud) {
                update_image_ud(s, image_id);
                sim_cw_text(&w, "user_data");
                sim_cw_raw(&w, s->image_ud_cbor, s->image_ud_cbor_len);
        }
        sim_cw_text(&w, "data");
        if (w.overflow)
                die("internal: image header overflows %zu bytes", s->hdr_cap);

        /* One part, as the spec wants: header and the pre-encoded data map. */
        zmq_msg_t m;
        if (zmq_msg_init_size(&m, w.len + sl->v2data_size) < 0)
                die("out of memory for an image message");
        memcpy(zmq_msg_data(&m), s->hdr, w.len);
        memcpy((uint8_t *)zmq_msg_data(&m) + w.len, sl->v2data, sl->v2data_size);
        zsend_msg(s, &m);
}

static void send_end_v2(sim *s, uint64_t series_id, const char *uid) {
        uint8_t buf[256];
        sim_cw w;

        sim_cw_init(&w, buf, sizeof buf);
        sim_cw_tag(&w, 55799);
        sim_cw_map(&w, 3);
        cw_key_text(&w, "type", "end");
        cw_key_uint(&w, "series_id", series_id);
        cw_key_text(&w, "series_unique_id", uid);
        zsend(s, buf, w.len, 0, false);
}

/* Growing text buffer for the V1 header parts. */
typedef struct {
        char *p;
        size_t len, cap;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
        va_list ap;

        for (;;) {
                va_start(ap, fmt);
                int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
                va_end(ap);
                if (n < 0)
                        die("internal: vsnprintf");
                if ((size_t)n < b->cap - b->len) {
                        b->len += (size_t)n;
                        return;
                }
                b->cap = 2 * b->cap + (size_t)n;
                b->p = realloc(b->p, b->cap);
                if (!b->p)
                        die("out of memory");
        }
}

static void send_header_v1(sim *s, uint64_t series_id, uint64_t arm_ns) {
        strbuf b = {xmalloc(4096), 0, 4096};
        size_t npx = (size_t)s->o.rows * s->o.cols;
        char *appendix = s->user_data ? cJSON_PrintUnformatted(s->user_data) : NULL;
        int more = s->o.detail != DETAIL_NONE || appendix ? ZMQ_SNDMORE : 0;
        char date[48];

        if (s->user_data && !appendix)
                die("out of memory printing --user-data");
        sb_printf(&b, "{\"header_detail\":\"%s\",\"htype\":\"dheader-1.0\",\"series\":%" PRIu64 "}",
                  detail_names[s->o.detail], series_id);
        zsend(s, b.p, b.len, more, false);
        if (s->o.detail != DETAIL_NONE) {
                b.len = 0;
                sim_format_date(date, sizeof date, arm_ns);
                /* Alphabetical keys, like the detector. */
                sb_printf(&b,
                          "{\"auto_summation\":true,\"beam_center_x\":%.9g,\"beam_center_y\":%.9g,"
                          "\"bit_depth_image\":%zu,\"bit_depth_readout\":16,\"compression\":\"%s\","
                          "\"count_time\":%.9g,\"countrate_correction_applied\":false,"
                          "\"data_collection_date\":\"%s\",\"description\":\"Dectris EIGER2 Si (roid-sim)\","
                          "\"detector_distance\":0.1,\"detector_number\":\"E-00-0000-SIM\","
                          "\"detector_readout_time\":%.9g,\"flatfield_correction_applied\":false,"
                          "\"frame_time\":%.9g,\"nimages\":%" PRIu64 ",\"ntrigger\":1,"
                          "\"number_of_excluded_pixels\":%" PRIu64 ",\"omega_increment\":0.1,\"omega_start\":0.0,"
                          "\"photon_energy\":%.9g,\"pixel_mask_applied\":%s,\"sensor_material\":\"Si\","
                          "\"sensor_thickness\":0.00045,\"software_version\":\"roid-sim\","
                          "\"threshold_energy\":%.9g,\"trigger_mode\":\"ints\",\"wavelength\":%.9g,"
                          "\"x_pixel_size\":7.5e-05,\"x_pixels_in_detector\":%" PRIu32 ",\"y_pixel_size\":7.5e-05,"
                          "\"y_pixels_in_detector\":%" PRIu32 "}",
                          s->o.cols / 2.0, s->o.rows / 2.0, s->elem * 8, comp_names[s->o.comp], count_time(s), date,
                          (double)DEAD_TICKS / TIME_BASE, frame_time(s), s->o.frames, s->mask_count, PHOTON_EV,
                          s->mask ? "true" : "false", threshold_ev(0), 12398.42 / PHOTON_EV, s->o.cols, s->o.rows);
                more = s->o.detail == DETAIL_ALL || appendix ? ZMQ_SNDMORE : 0;
                zsend(s, b.p, b.len, more, false);
        }
        if (s->o.detail == DETAIL_ALL) {
                float *ff = xmalloc(npx * sizeof *ff);
                uint32_t *pm = s->mask ? s->mask : calloc(npx, sizeof *pm);
                float lut[2 * LUT_LEN];
                if (!pm)
                        die("out of memory for the pixel mask");
                for (size_t i = 0; i < npx; i++)
                        ff[i] = flat_value(i);
                for (unsigned i = 0; i < LUT_LEN; i++) {
                        lut[2 * i] = (float)i;
                        lut[2 * i + 1] = lut_value(i);
                }
                b.len = 0;
                sb_printf(&b, "{\"htype\":\"dflatfield-1.0\",\"shape\":[%" PRIu32 ",%" PRIu32 "],\"type\":\"float32\"}",
                          s->o.cols, s->o.rows);
                zsend(s, b.p, b.len, ZMQ_SNDMORE, false);
                zsend(s, ff, npx * sizeof *ff, ZMQ_SNDMORE, false);
                b.len = 0;
                sb_printf(&b, "{\"htype\":\"dpixelmask-1.0\",\"shape\":[%" PRIu32 ",%" PRIu32 "],\"type\":\"uint32\"}",
                          s->o.cols, s->o.rows);
                zsend(s, b.p, b.len, ZMQ_SNDMORE, false);
                zsend(s, pm, npx * sizeof *pm, ZMQ_SNDMORE, false);
                b.len = 0;
                sb_printf(&b, "{\"htype\":\"dcountrate_table-1.0\",\"shape\":[2,%u],\"type\":\"float32\"}", LUT_LEN);
                zsend(s, b.p, b.len, ZMQ_SNDMORE, false);
                zsend(s, lut, sizeof lut, appendix ? ZMQ_SNDMORE : 0, false);
                free(ff);
                if (pm != s->mask)
                        free(pm);
        }
        if (appendix)
                zsend(s, appendix, strlen(appendix), 0, false);
        cJSON_free(appendix);
        free(b.p);
}

static void send_image_v1(sim *s, uint64_t series_id, uint64_t image_id, const slot *sl) {
        char p1[192], p4[160];
        uint64_t frame_ns = s->frame_ticks * (1000000000u / TIME_BASE);
        uint64_t real_ns = s->real_ticks * (1000000000u / TIME_BASE);
        int n1 = snprintf(p1, sizeof p1,
                          "{\"frame\":%" PRIu64 ",\"hash\":\"%s\",\"htype\":\"dimage-1.0\",\"series\":%" PRIu64 "}",
                          image_id, sl->hash, series_id);
        int n4 = snprintf(p4, sizeof p4,
                          "{\"htype\":\"dconfig-1.0\",\"real_time\":%" PRIu64 ",\"start_time\":%" PRIu64
                          ",\"stop_time\":%" PRIu64 "}",
                          real_ns, image_id * frame_ns, image_id * frame_ns + real_ns);

        zsend(s, p1, (size_t)n1, ZMQ_SNDMORE, false);
        zsend(s, sl->v1dimage, sl->v1dimage_len, ZMQ_SNDMORE, true);
        zsend(s, sl->blob, sl->blob_size, ZMQ_SNDMORE, true); /* the ring outlives the socket */
        zsend(s, p4, (size_t)n4, s->image_ud ? ZMQ_SNDMORE : 0, false);
        if (s->image_ud) {
                update_image_ud(s, image_id);
                zsend(s, s->image_ud_text, strlen(s->image_ud_text), 0, false);
        }
}

static void send_end_v1(sim *s, uint64_t series_id) {
        char buf[96];
        int n = snprintf(buf, sizeof buf, "{\"htype\":\"dseries_end-1.0\",\"series\":%" PRIu64 "}", series_id);

        zsend(s, buf, (size_t)n, 0, false);
}

static void write_manifest(sim *s, uint64_t series_id, uint64_t image_id, const slot *sl) {
        for (unsigned c = 0; c < s->o.nchannels; c++)
                fprintf(s->manifest,
                        "{\"series_id\":%" PRIu64 ",\"image_id\":%" PRIu64 ",\"channel\":\"%s\",\"sum\":%" PRIu64
                        ",\"masked\":%" PRIu64 "}\n",
                        series_id, image_id, s->names[c], sl->sum[c], sl->masked[c]);
}

/* Pacing sleeps only when the next image is due more than this far ahead:
 * at high rates images leave in small bursts (at most PACE_SLACK_NS early, the
 * average rate exact), one wake-up per burst instead of one per image, which
 * keeps the simulator's share of the cores it shares with the receiver small. */
#define PACE_SLACK_NS 100000u

static void wait_until(uint64_t deadline_ns) {
        /* A past deadline still costs clock_nanosleep a trip through the
         * scheduler; behind schedule we must send at full speed. */
        if (now_ns(CLOCK_MONOTONIC) + PACE_SLACK_NS >= deadline_ns)
                return;
        struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000u),
                              .tv_nsec = (long)(deadline_ns % 1000000000u)};

        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop_requested)
                ;
}

static void wait_for_peer(sim *s) {
        zmq_pollitem_t it = {.socket = s->zsock, .events = ZMQ_POLLOUT};
        uint64_t end = now_ns(CLOCK_MONOTONIC) + (uint64_t)(s->o.wait_connect * 1e9);

        for (;;) {
                uint64_t now = now_ns(CLOCK_MONOTONIC);
                long ms = now >= end ? 0 : (long)((end - now + 999999) / 1000000);
                int r = zmq_poll(&it, 1, ms);
                if (r > 0)
                        return;
                if (r < 0 && zmq_errno() != EINTR)
                        die("zmq_poll: %s", zmq_strerror(zmq_errno()));
                if (stop_requested)
                        exit(1);
                if (r == 0 && now_ns(CLOCK_MONOTONIC) >= end)
                        die("no receiver connected to %s within %g s", s->o.endpoint, s->o.wait_connect);
        }
}

int main(int argc, char **argv) {
        sim s = {0};
        roid_err err = {{0}};
        const char *arg;

        parse_args(argc, argv, &s.o);

        if (s.o.fly)
                make_visits(&s);
        if (s.o.positions)
                load_positions(&s);
        const sim_source_ops *src = sim_source_find(s.o.source, &arg);
        if (!src)
                die("--source: unknown source '%s' (pattern, file:PATH.h5, phantom)", s.o.source);
        sim_source_params sp = {.rows = s.o.rows,
                                .cols = s.o.cols,
                                .dtype = s.o.dtype,
                                .nchannels = s.o.nchannels,
                                .nframes = s.o.frames,
                                .arg = arg,
                                .scan = &s.o.scan};
        void *src_state = NULL;
        uint64_t period = 0;
        uint64_t t_prep = now_ns(CLOCK_MONOTONIC);
        if (src->init(&sp, &src_state, &period, &err) < 0)
                die("source %s: %s", src->name, err.msg);
        if (sp.rows < 1 || sp.cols < 1 || (uint64_t)sp.rows * sp.cols > MAX_PIXELS || roid_dtype_size(sp.dtype) == 0 ||
            sp.dtype == ROID_DT_F32)
                die("source %s: unusable geometry %" PRIu32 "x%" PRIu32, src->name, sp.rows, sp.cols);
        s.o.rows = sp.rows;
        s.o.cols = sp.cols;
        s.o.dtype = sp.dtype;
        s.elem = roid_dtype_size(s.o.dtype);
        channel_names(&s);
        if (s.o.mask)
                make_mask(&s);
        prepare_user_data(&s);

        uint64_t want = period ? period : s.o.ring;
        s.ring_len = want < s.o.frames ? want : s.o.frames;
        if (s.ring_len == 0)
                s.ring_len = 1;
        if (s.ring_len > MAX_RING)
                die("source %s wants %" PRIu64 " distinct frames, more than %u", src->name, s.ring_len, MAX_RING);
        build_ring(&s, src, src_state);
        src->free(src_state);
        t_prep = now_ns(CLOCK_MONOTONIC) - t_prep;

        /* Timing fields: nominal 1 ms frames when unpaced. */
        double ft = s.o.rate > 0 ? 1.0 / s.o.rate : 1e-3;
        s.frame_ticks = (uint64_t)llround(ft * TIME_BASE);
        if (s.frame_ticks < 1)
                s.frame_ticks = 1;
        s.real_ticks = s.frame_ticks > DEAD_TICKS ? s.frame_ticks - DEAD_TICKS : s.frame_ticks;
        s.hdr_cap = 1024 + s.image_ud_cbor_len + (s.o.image_user_data ? 9 * strlen(s.o.image_user_data) + 64 : 0);
        s.hdr = xmalloc(s.hdr_cap);

        if (s.o.manifest) {
                s.manifest = fopen(s.o.manifest, "w");
                if (!s.manifest)
                        die("--manifest %s: %s", s.o.manifest, strerror(errno));
                setvbuf(s.manifest, NULL, _IOFBF, 1 << 20);
        }

        struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        void *ctx = zmq_ctx_new();
        if (!ctx)
                die("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        s.zsock = zmq_socket(ctx, ZMQ_PUSH);
        if (!s.zsock)
                die("zmq_socket: %s", zmq_strerror(zmq_errno()));
        if (s.o.hwm >= 0 && zmq_setsockopt(s.zsock, ZMQ_SNDHWM, &s.o.hwm, sizeof s.o.hwm) < 0)
                die("ZMQ_SNDHWM: %s", zmq_strerror(zmq_errno()));
        if (zmq_setsockopt(s.zsock, ZMQ_LINGER, &s.o.linger, sizeof s.o.linger) < 0)
                die("ZMQ_LINGER: %s", zmq_strerror(zmq_errno()));
        if (zmq_bind(s.zsock, s.o.endpoint) < 0)
                die("cannot bind %s: %s", s.o.endpoint, zmq_strerror(zmq_errno()));
        if (!s.o.quiet)
                fprintf(stderr,
                        "roid-sim: %s on %s, %" PRIu32 "x%" PRIu32 " %s %s, %u channel(s), %" PRIu64
                        " image(s) x %" PRIu64 " series, source %s, ring of %" PRIu64 " prepared in %.2f s\n",
                        s.o.fmt == ROID_FMT_V2 ? "v2" : "v1", s.o.endpoint, s.o.rows, s.o.cols, dtype_name(s.o.dtype),
                        comp_names[s.o.comp], s.o.nchannels, s.o.frames, s.o.series, src->name, s.ring_len,
                        t_prep / 1e9);
        if (s.o.fmt == ROID_FMT_V1 && s.o.mask && s.o.detail != DETAIL_ALL && !s.o.quiet)
                fprintf(stderr, "roid-sim: warning: V1 sends the pixel mask only with --header-detail all\n");
        if (s.o.wait_connect >= 0)
                wait_for_peer(&s);

        uint64_t period_ns = s.o.rate > 0 ? (uint64_t)llround(1e9 / s.o.rate) : 0;
        uint64_t t0 = 0, t_end = 0, paced = 0, max_late = 0; /* behind schedule at most, ns */
        uint64_t series_done = 0;
        for (uint64_t k = 0; k < s.o.series && !stop_requested; k++) {
                uint64_t sid = s.o.series_id + k;
                uint64_t arm_ns = now_ns(CLOCK_REALTIME);
                char uid[27];
                uint8_t date_cbor[64];
                sim_cw dw;

                make_unique_id(uid, arm_ns);
                sim_cw_init(&dw, date_cbor, sizeof date_cbor);
                sim_cw_date(&dw, arm_ns);
                if (s.o.fmt == ROID_FMT_V2)
                        send_start_v2(&s, sid, uid, arm_ns);
                else
                        send_header_v1(&s, sid, arm_ns);
                if (k == 0)
                        t0 = now_ns(CLOCK_MONOTONIC); /* the start message waits for a receiver */
                for (uint64_t i = 0; i < s.o.frames && !stop_requested; i++) {
                        const slot *sl = &s.ring[i % s.ring_len];
                        if (period_ns) {
                                const uint64_t due = t0 + paced++ * period_ns;
                                wait_until(due);
                                const uint64_t t = now_ns(CLOCK_MONOTONIC);
                                if (t > due && t - due > max_late)
                                        max_late = t - due;
                        }
                        if (s.o.fmt == ROID_FMT_V2)
                                send_image_v2(&s, sid, uid, date_cbor, dw.len, i, sl);
                        else
                                send_image_v1(&s, sid, i, sl);
                        s.images_sent++;
                        if (s.manifest)
                                write_manifest(&s, sid, i, sl);
                }
                if (s.o.fmt == ROID_FMT_V2)
                        send_end_v2(&s, sid, uid);
                else
                        send_end_v1(&s, sid);
                series_done++;
        }
        t_end = now_ns(CLOCK_MONOTONIC);

        if (s.manifest && fclose(s.manifest) != 0)
                die("--manifest %s: %s", s.o.manifest, strerror(errno));
        zmq_close(s.zsock);
        zmq_ctx_term(ctx); /* waits up to --linger for queued messages */
        uint64_t t_done = now_ns(CLOCK_MONOTONIC);

        if (!s.o.quiet) {
                double dt = (t_end - t0) / 1e9;
                fprintf(stderr,
                        "roid-sim: %s%" PRIu64 " series, %" PRIu64 " images (%" PRIu64 " frames), %" PRIu64
                        " bytes in %.3f s: %.0f images/s, %.1f MB/s; delivered after %.3f s\n",
                        stop_requested ? "interrupted after " : "", series_done, s.images_sent,
                        s.images_sent * s.o.nchannels, s.bytes_sent, dt, dt > 0 ? s.images_sent / dt : 0.0,
                        dt > 0 ? s.bytes_sent / dt / 1e6 : 0.0, (t_done - t0) / 1e9);
                /* Behind schedule, the images that are due leave at once: a burst
                 * the receiver sees as a queue. */
                if (period_ns)
                        fprintf(stderr, "roid-sim: at most %.3f ms behind the --rate schedule\n", max_late / 1e6);
        }

        for (uint64_t i = 0; i < s.ring_len; i++) {
                free(s.ring[i].v2data);
                free(s.ring[i].blob);
                free(s.ring[i].v1dimage);
        }
        free(s.ring);
        free(s.mask);
        free(s.hdr);
        free(s.image_ud_cbor);
        free(s.image_ud_text);
        free(s.visits);
        free(s.outside);
        free(s.positions);
        cJSON_Delete(s.user_data);
        cJSON_Delete(s.image_ud);
        return stop_requested ? 1 : 0;
}
