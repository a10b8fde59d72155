/* test_oom.c - allocation failures injected into roid's constructors and
 * per-series paths.  A countdown fails the Nth allocation (N = 1, 2, ...)
 * made by the call under test (alone, then with every later one), until the
 * call succeeds with nothing failed; for each N the call must return a
 * negative errno (-ENOMEM, or another one its header allows or its err
 * message explains), leave its ret_* out-parameters untouched (zeroed where
 * the header says so), and free what it allocated: the heap in use is the
 * same before and after (outside ASan; under ASan LeakSanitizer checks at
 * exit).  Also: the RoI's per-frame,
 * refit and finish paths, and the feedback's update, allocate nothing.
 *
 * What can fail: the test is linked with -Wl,--wrap= for malloc, calloc,
 * realloc, strdup, strndup, posix_memalign (tests/meson.build), and for
 * pthread_create (EAGAIN, the writer's thread) and msgpack_zone_init (the
 * control socket's zone), which allocate for roid on its thread.  Only calls
 * made from this executable and libroid go through the wrappers: what
 * glibc's stdio, libinih, libzmq, HDF5 allocate inside themselves is out of
 * reach, and libzmq aborts on its own allocation failures anyway, so the
 * zmq calls are not failed here.  The countdown counts on the calling thread
 * only (a thread-local flag): the writer's thread and libzmq's I/O threads
 * allocate as they like.  The heap comparison, though, adds up every thread:
 * it holds because those threads are idle while a call is measured (every
 * allocation of the publisher and control constructors comes before their
 * zmq_socket, and each zmq target gets a fresh context). */
#include "tap.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#include "analysis/feedback.h"
#include "analysis/kmeans.h"
#include "analysis/roi.h"
#include "features/features.h"
#include "ingest/capture.h"
#include "ingest/parse.h"
#include "ingest/series.h"
#include "outputs/control.h"
#include "outputs/publish.h"
#include "outputs/writer.h"
#include "service/config.h"
#include "service/counters.h"
#include "service/limits.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

/* ------------------------------------------------------ failing allocator */

void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
bool __real_msgpack_zone_init(msgpack_zone *z, size_t chunk);

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t a, size_t b);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
int __wrap_posix_memalign(void **p, size_t align, size_t n);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
bool __wrap_msgpack_zone_init(msgpack_zone *z, size_t chunk);

/* Per thread: only the thread that armed the countdown sees it.  volatile:
 * the compiler knows malloc touches no variable of ours and would drop the
 * stores of arm() and disarm() around a malloc of this file. */
static __thread volatile bool armed;
static __thread volatile unsigned long seen;    /* allocations since arm() */
static __thread volatile unsigned long fail_at; /* the one to fail; 0: count only */
static __thread volatile bool fail_on;          /* and every one after it */
static __thread const char *volatile failed_fn; /* the first function failed, NULL: none */

static void arm(unsigned long n, bool from_n) {
        seen = 0;
        fail_at = n;
        fail_on = from_n;
        failed_fn = NULL;
        armed = true;
}

static unsigned long disarm(void) {
        armed = false;
        return seen;
}

static bool inject(const char *fn) {
        if (!armed)
                return false;
        ++seen;
        if (!fail_at || seen < fail_at || (seen > fail_at && !fail_on))
                return false;
        if (!failed_fn)
                failed_fn = fn;
        return true;
}

void *__wrap_malloc(size_t n) {
        if (inject("malloc")) {
                errno = ENOMEM;
                return NULL;
        }
        return __real_malloc(n);
}

void *__wrap_calloc(size_t a, size_t b) {
        if (inject("calloc")) {
                errno = ENOMEM;
                return NULL;
        }
        return __real_calloc(a, b);
}

void *__wrap_realloc(void *p, size_t n) {
        if (inject("realloc")) {
                errno = ENOMEM;
                return NULL;
        }
        return __real_realloc(p, n);
}

/* glibc's strdup calls its own malloc, which --wrap=malloc does not reach. */
char *__wrap_strdup(const char *s) {
        if (inject("strdup")) {
                errno = ENOMEM;
                return NULL;
        }
        return __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n) {
        if (inject("strndup")) {
                errno = ENOMEM;
                return NULL;
        }
        return __real_strndup(s, n);
}

int __wrap_posix_memalign(void **p, size_t align, size_t n) {
        if (inject("posix_memalign"))
                return ENOMEM;
        return __real_posix_memalign(p, align, n);
}

/* A thread's stack and descriptor are allocations too: EAGAIN is
 * pthread_create's "insufficient resources". */
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg) {
        if (inject("pthread_create"))
                return EAGAIN;
        return __real_pthread_create(t, a, fn, arg);
}

bool __wrap_msgpack_zone_init(msgpack_zone *z, size_t chunk) {
        if (inject("msgpack_zone_init"))
                return false;
        return __real_msgpack_zone_init(z, chunk);
}

/* ------------------------------------------------------------- countdown */

/* Whether tap_heap_in_use() sees a free: not under ASan, and not with glibc's
 * thread cache on (a freed small chunk stays "in use" for mallinfo2), which
 * main() turns off by running the test again; probed, in case that failed. */
static bool heap_exact;

static void probe_heap(void) {
        if (UNDER_ASAN)
                return;
        const size_t h0 = tap_heap_in_use();
        void *p = __real_malloc(48);
        const bool grew = tap_heap_in_use() > h0;
        free(p);
        heap_exact = grew && tap_heap_in_use() == h0;
        if (!heap_exact)
                tap_diag("the heap in use does not drop when a block is freed: heap comparisons skipped");
}

typedef struct {
        const char *name;
        int alt_errno; /* another errno the header allows for a failed allocation (0: none) */
        void *ctx;
        void (*prepare)(void *ctx); /* out-parameters to sentinels */
        int (*call)(void *ctx, roid_err *err);
        bool (*untouched)(void *ctx); /* after a failure */
        void (*undo)(void *ctx);      /* after a success: free what the call made */
} target;

#define MAX_N    20000
#define MAX_DIAG 4

typedef struct {
        unsigned long total; /* allocations of the call that succeeded */
        bool done;           /* it succeeded with nothing failed */
        int final_rc;
        unsigned long bad_rc, ignored, touched, leaked, leaked_at[32];
} pass_result;

/* One countdown: N = 1, 2, ... until the call makes fewer than N
 * allocations.  from_n: the Nth and every later allocation fail (the
 * cleanup that follows a failure cannot allocate either), else only the Nth. */
static void one_pass(const target *t, bool from_n, pass_result *res) {
        const char *mode = from_n ? "from N on" : "only N";
        unsigned long n;
        memset(res, 0, sizeof *res);
        for (n = 1; n <= MAX_N; n++) {
                roid_err err = {{0}};
                t->prepare(t->ctx);
                const size_t h0 = tap_heap_in_use();
                arm(n, from_n);
                const int r = t->call(t->ctx, &err);
                const unsigned long allocs = disarm();
                const char *fn = failed_fn;
                if (!fn) {
                        res->final_rc = r;
                        if (r == 0)
                                t->undo(t->ctx);
                        res->done = true;
                        break;
                }
                if (r >= 0) {
                        if (res->ignored++ < MAX_DIAG)
                                tap_diag("%s: N = %lu (%s, %s) failed, yet the call returned %d", t->name, n, fn, mode,
                                         r);
                        t->undo(t->ctx);
                        continue;
                }
                if (r != -ENOMEM && !(t->alt_errno && r == -t->alt_errno) && !err.msg[0] && res->bad_rc++ < MAX_DIAG)
                        tap_diag("%s: N = %lu (%s, %s) failed: returned %d (%s) without a word in err", t->name, n, fn,
                                 mode, r, strerror(-r));
                if (!t->untouched(t->ctx) && res->touched++ < MAX_DIAG)
                        tap_diag("%s: N = %lu (%s, %s) failed: an out-parameter was written", t->name, n, fn, mode);
                const size_t h1 = tap_heap_in_use();
                if (!heap_exact || h1 == h0)
                        continue;
                if (res->leaked < 32)
                        res->leaked_at[res->leaked] = n;
                if (res->leaked++ < MAX_DIAG)
                        tap_diag("%s: N = %lu (%s, %s) failed: heap in use %zu -> %zu (%+lld bytes), %lu allocations "
                                 "made",
                                 t->name, n, fn, mode, h0, h1, (long long)h1 - (long long)h0, allocs);
        }
        res->total = res->done ? n - 1 : 0;
        if (res->leaked) {
                char list[256];
                size_t len = 0;
                for (unsigned long i = 0; i < res->leaked && i < 32 && len < sizeof list - 24; i++)
                        len += (size_t)snprintf(list + len, sizeof list - len, " %lu", res->leaked_at[i]);
                tap_diag("%s: heap in use changed when failing %s at N =%s", t->name, mode, list);
        }
}

/* Both countdowns over one call; returns the allocations of the successful
 * call (0 if none succeeded). */
static unsigned long countdown(const target *t) {
        pass_result a, b;
        one_pass(t, false, &a);
        one_pass(t, true, &b);
        tap_ok(a.done && b.done && a.final_rc == 0 && b.final_rc == 0 && a.total == b.total,
               "%s: succeeds when nothing fails, after %lu allocations (rc %d)", t->name, a.total, a.final_rc);
        tap_ok(a.bad_rc + b.bad_rc + a.ignored + b.ignored == 0,
               "%s: each of the %lu allocations failed in turn (alone, then with all later ones) gives -ENOMEM%s%s or "
               "an explained errno (%lu wrong, %lu ignored)",
               t->name, a.total, t->alt_errno ? " or -" : "", t->alt_errno ? strerrorname_np(t->alt_errno) : "",
               a.bad_rc + b.bad_rc, a.ignored + b.ignored);
        tap_ok(a.touched + b.touched == 0, "%s: out-parameters untouched by each failure (%lu written)", t->name,
               a.touched + b.touched);
        if (!heap_exact) {
                char why[160];
                snprintf(why, sizeof why, "%s: heap in use not compared (%s)", t->name,
                         UNDER_ASAN ? "ASan: LeakSanitizer checks at exit" : "glibc's thread cache is on");
                tap_skip(why);
        } else {
                tap_ok(a.leaked + b.leaked == 0, "%s: heap in use unchanged by each failure (%lu leaked)", t->name,
                       a.leaked + b.leaked);
        }
        return a.total;
}

/* ret_* sentinels: an address that is no allocation. */
static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

static void prepare_ptr(void *ctx) {
        *(void **)ctx = SENTINEL;
}

static bool untouched_ptr(void *ctx) {
        return *(void **)ctx == SENTINEL;
}

static bool all_bytes(const void *p, size_t n, unsigned char v) {
        const unsigned char *b = p;
        for (size_t i = 0; i < n; i++)
                if (b[i] != v)
                        return false;
        return true;
}

/* -------------------------------------------------------------- geometry */

#define FR 256 /* frame rows = cols: enough runs for the run array to grow twice */

typedef struct {
        roid_geometry g;
        roid_geometry_params p;
} geom_ctx;

static void geom_prepare(void *ctx) {
        geom_ctx *c = ctx;
        memset(&c->g, 0xa5, sizeof c->g);
}

static int geom_call(void *ctx, roid_err *err) {
        geom_ctx *c = ctx;
        return roid_geometry_init(&c->g, &c->p, err);
}

/* The header: "On failure g is left zeroed and needs no free." */
static bool geom_untouched(void *ctx) {
        geom_ctx *c = ctx;
        return all_bytes(&c->g, sizeof c->g, 0);
}

static void geom_undo(void *ctx) {
        geom_ctx *c = ctx;
        roid_geometry_free(&c->g);
}

static uint32_t gmask[FR * FR];

static void geometry_params(roid_geometry_params *p, uint32_t rows, double r_bf, double r_df_out) {
        roid_geometry_params_default(p);
        p->rows = p->cols = rows;
        p->dtype = ROID_DT_U16;
        p->center_x = p->center_y = (rows - 1) / 2.0;
        p->n_segments = 8;
        p->r_bf = r_bf;
        p->r_df_in = r_bf;
        p->r_df_out = r_df_out;
}

static void test_geometry(void) {
        geom_ctx c;
        geometry_params(&c.p, FR, 12, 40);
        /* a gap column and a few dead pixels: more runs, as on a real module */
        for (uint32_t r = 0; r < FR; r++)
                gmask[r * FR + FR / 3] = 1;
        for (uint32_t i = 0; i < FR * FR; i += 997)
                gmask[i] = 2;
        c.p.mask = gmask;
        target t = {"roid_geometry_init", 0, &c, geom_prepare, geom_call, geom_untouched, geom_undo};
        unsigned long n = countdown(&t);
        tap_ok(n >= 3, "roid_geometry_init: the run array grew by realloc (%lu allocations, >= 3 wanted)", n);
}

/* ---------------------------------------------------------------- kmeans */

typedef struct {
        roid_kmeans km;
} km_ctx;

static void km_prepare(void *ctx) {
        km_ctx *c = ctx;
        memset(&c->km, 0xa5, sizeof c->km);
}

static int km_call(void *ctx, roid_err *err) {
        km_ctx *c = ctx;
        return roid_kmeans_init(&c->km, 4, 3, 64, 7, err);
}

/* The header: "On failure km is zeroed and needs no free." */
static bool km_untouched(void *ctx) {
        km_ctx *c = ctx;
        return all_bytes(&c->km, sizeof c->km, 0);
}

static void km_undo(void *ctx) {
        km_ctx *c = ctx;
        roid_kmeans_free(&c->km);
}

static void test_kmeans(void) {
        km_ctx c;
        target t = {"roid_kmeans_init", 0, &c, km_prepare, km_call, km_untouched, km_undo};
        countdown(&t);
}

/* ------------------------------------------------------------------- RoI */

#define NY 6
#define NX 5
#define NP (NY * NX)

typedef struct {
        roid_roi *ret;
        roid_roi_params p;
} roi_ctx;

static int roi_call(void *ctx, roid_err *err) {
        roi_ctx *c = ctx;
        return roid_roi_new(&c->p, NY, NX, &c->ret, err);
}

static void roi_undo(void *ctx) {
        roi_ctx *c = ctx;
        roid_roi_free(c->ret);
}

typedef struct {
        roid_roi *ret;
        const roid_roi *src;
} clone_ctx;

static int clone_call(void *ctx, roid_err *err) {
        (void)err;
        clone_ctx *c = ctx;
        return roid_roi_clone_maps(c->src, &c->ret);
}

static void clone_undo(void *ctx) {
        clone_ctx *c = ctx;
        roid_roi_free(c->ret);
}

static uint64_t lcg(uint64_t *s) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        return *s >> 33;
}

/* Features of a diffraction pattern per scan point, from roid_features_compute
 * on a Gaussian disk: inside the object (rows 2..4, cols 1..3) dimmer and
 * shifted, elsewhere bright and centred, with Poisson-like noise. */
static roid_features feats[NP];

static bool make_features(const roid_geometry *g) {
        static uint16_t px[48 * 48];
        const uint32_t fr = g->rows;
        for (uint32_t i = 0; i < NP; i++) {
                const uint32_t row = i / NX, col = i % NX;
                const bool obj = row >= 2 && row <= 4 && col >= 1 && col <= 3;
                const double amp = obj ? 300 : 900, dx = obj ? 2 : 0, dy = obj ? -1 : 0;
                uint64_t seed = 1000 + i;
                for (uint32_t r = 0; r < fr; r++)
                        for (uint32_t x = 0; x < fr; x++) {
                                const double u = x - g->center_x - dx, v = r - g->center_y - dy;
                                px[r * fr + x] =
                                        (uint16_t)(amp * exp(-(u * u + v * v) / 18.0) + (double)(lcg(&seed) % 7));
                        }
                roid_frame f = {.dtype = ROID_DT_U16, .rows = fr, .cols = fr, .pixels = px};
                roid_err err;
                if (roid_features_compute(g, &f, &feats[i], &err) < 0) {
                        tap_diag("features: %s", err.msg);
                        return false;
                }
        }
        return true;
}

static void test_roi(void) {
        roid_geometry g;
        roid_geometry_params gp;
        geometry_params(&gp, 24, 4, 11);
        roid_err err;
        if (!tap_ok(roid_geometry_init(&g, &gp, &err) == 0 && make_features(&g), "features of %d frames", NP)) {
                roid_geometry_free(&g);
                return;
        }
        roid_geometry_free(&g);

        roi_ctx c;
        roid_roi_params_default(&c.p);
        c.p.cadence = 8;
        target t = {"roid_roi_new (S = 8)", 0, &c, prepare_ptr, roi_call, untouched_ptr, roi_undo};
        countdown(&t);

        c.p.use_bf = c.p.use_df = true;
        c.p.k = 3;
        c.p.border = 1;
        c.p.fill_holes = true;
        t.name = "roid_roi_new (S = 8, BF, DF)";
        countdown(&t);

        /* The state the rest runs on: frames, refits and finish must not
         * allocate. */
        roid_roi *roi = NULL;
        if (!tap_ok(roid_roi_new(&c.p, NY, NX, &roi, &err) == 0, "RoI state for the allocation-free paths"))
                return;
        roid_feedback_params fp;
        roid_feedback_params_default(&fp);
        roid_scan_grid grid;
        roid_scan_grid_default(&grid);
        grid.ny = NY;
        grid.nx = NX;
        roid_feedback *fb = NULL;
        tap_ok(roid_feedback_new(&fp, &grid, &fb, &err) == 0, "feedback state for the allocation-free paths");

        arm(0, false);
        void *volatile probe = malloc(16);
        free(probe);
        const bool counts = disarm() == 1;
        tap_ok(counts, "the countdown counts a malloc of this thread");

        int bad = 0;
        arm(0, false);
        for (int pass = 0; pass < 3; pass++)
                for (uint32_t i = 0; i < NP; i++)
                        bad += roid_roi_add(roi, i / NX, i % NX, &feats[i]) < 0;
        const unsigned long a_add = disarm();
        arm(0, false);
        roid_roi_refit(roi);
        bad += fb && roid_feedback_update(fb, roi, false) < 0;
        const unsigned long a_refit = disarm();
        arm(0, false);
        roid_roi_finish(roi);
        bad += fb && roid_feedback_update(fb, roi, true) < 0;
        const unsigned long a_finish = disarm();
        tap_ok(bad == 0 && roid_roi_frames(roi) == 3 * NP && roid_roi_refits(roi) >= 2 && roid_roi_mask(roi),
               "RoI: %d frames added, %llu refits, finished (%d calls failed)", 3 * NP,
               (unsigned long long)roid_roi_refits(roi), bad);
        tap_eq_u64(a_add, 0, "allocations by roid_roi_add (with its cadence refits)");
        tap_eq_u64(a_refit, 0, "allocations by roid_roi_refit and roid_feedback_update");
        tap_eq_u64(a_finish, 0, "allocations by roid_roi_finish and the final roid_feedback_update");

        clone_ctx cc = {.src = roi};
        target ct = {"roid_roi_clone_maps", 0, &cc, prepare_ptr, clone_call, untouched_ptr, clone_undo};
        countdown(&ct);

        roid_feedback_free(fb);
        roid_roi_free(roi);
}

/* -------------------------------------------------------------- feedback */

typedef struct {
        roid_feedback *ret;
        roid_feedback_params p;
        roid_scan_grid grid;
} fb_ctx;

static int fb_call(void *ctx, roid_err *err) {
        fb_ctx *c = ctx;
        return roid_feedback_new(&c->p, &c->grid, &c->ret, err);
}

static void fb_undo(void *ctx) {
        fb_ctx *c = ctx;
        roid_feedback_free(c->ret);
}

static void test_feedback(void) {
        fb_ctx c;
        roid_feedback_params_default(&c.p);
        roid_scan_grid_default(&c.grid);
        c.grid.ny = NY;
        c.grid.nx = NX;
        c.grid.step_x = c.grid.step_y = 0.5;
        snprintf(c.grid.units, sizeof c.grid.units, "um");
        target t = {"roid_feedback_new", 0, &c, prepare_ptr, fb_call, untouched_ptr, fb_undo};
        countdown(&t);
}

/* ---------------------------------------------------------------- ingest */

typedef struct {
        roid_parser *ret;
        roid_limits lim;
} parser_ctx;

static int parser_call(void *ctx, roid_err *err) {
        (void)err;
        parser_ctx *c = ctx;
        return roid_parser_new(&c->lim, &c->ret);
}

static void parser_undo(void *ctx) {
        parser_ctx *c = ctx;
        roid_parser_free(c->ret);
}

typedef struct {
        roid_capture_writer *ret;
        const char *path;
} capw_ctx;

static int capw_call(void *ctx, roid_err *err) {
        (void)err;
        capw_ctx *c = ctx;
        return roid_capture_writer_open(c->path, &c->ret);
}

static void capw_undo(void *ctx) {
        capw_ctx *c = ctx;
        roid_capture_writer_close(c->ret);
        unlink(c->path); /* the writer never replaces a file */
}

typedef struct {
        roid_capture_reader *ret;
        const char *path;
        roid_limits lim;
} capr_ctx;

static int capr_call(void *ctx, roid_err *err) {
        capr_ctx *c = ctx;
        return roid_capture_reader_open(c->path, &c->lim, &c->ret, err);
}

static void capr_undo(void *ctx) {
        capr_ctx *c = ctx;
        roid_part parts[4];
        size_t n = 0;
        roid_err err;
        int r = roid_capture_next(c->ret, parts, 4, &n, &err);
        tap_ok(r == 1 && n == 2 && parts[0].size == 5 && memcmp(parts[1].data, "\x01\x02\x03", 3) == 0,
               "capture: the reader that opened reads the record back");
        roid_capture_reader_close(c->ret);
}

static char tmpdir[256];

static void test_ingest(void) {
        parser_ctx pc;
        roid_limits_default(&pc.lim);
        target t = {"roid_parser_new", 0, &pc, prepare_ptr, parser_call, untouched_ptr, parser_undo};
        countdown(&t);

        char path[512];
        snprintf(path, sizeof path, "%s/capture.cbor", tmpdir);
        capw_ctx wc = {.path = path};
        t = (target){"roid_capture_writer_open", 0, &wc, prepare_ptr, capw_call, untouched_ptr, capw_undo};
        countdown(&t);

        roid_capture_writer *w;
        const roid_part parts[2] = {{(const uint8_t *)"hello", 5}, {(const uint8_t *)"\x01\x02\x03", 3}};
        int r = roid_capture_writer_open(path, &w);
        if (r == 0) {
                r = roid_capture_write(w, parts, 2);
                int r2 = roid_capture_writer_close(w);
                r = r < 0 ? r : r2;
        }
        if (!tap_ok(r == 0, "capture file of one record written (%d)", r))
                return;
        capr_ctx rc = {.path = path};
        roid_limits_default(&rc.lim);
        t = (target){"roid_capture_reader_open", 0, &rc, prepare_ptr, capr_call, untouched_ptr, capr_undo};
        countdown(&t);
        unlink(path);
}

/* A Stream V1 start (dheader basic + the detector configuration + a user
 * appendix large enough that the parser's JSON arena grows), parsed, then fed
 * to a series tracker, which copies the user data and the configuration. */
#define V1_APPENDIX 200000
static char v1_appendix[V1_APPENDIX + 64];
static const char v1_head[] = "{\"header_detail\":\"basic\",\"htype\":\"dheader-1.0\",\"series\":6}";
static const char v1_cfg[] = "{\"beam_center_x\":10.5,\"beam_center_y\":12.0,\"bit_depth_image\":16,"
                             "\"compression\":\"bslz4\",\"nimages\":4,\"ntrigger\":1,\"x_pixels_in_detector\":32,"
                             "\"y_pixels_in_detector\":24,\"x_pixel_size\":7.5e-05,\"y_pixel_size\":7.5e-05}";

typedef struct {
        roid_parser *parser;
        roid_limits lim;
        roid_part parts[3];
        roid_msg msg, before;
} v1_ctx;

static void v1_prepare(void *ctx) {
        v1_ctx *c = ctx;
        memset(&c->msg, 0xa5, sizeof c->msg);
        c->before = c->msg;
}

static int v1_call(void *ctx, roid_err *err) {
        v1_ctx *c = ctx;
        return roid_parse(c->parser, c->parts, 3, &c->msg, err);
}

static bool v1_untouched(void *ctx) {
        v1_ctx *c = ctx;
        return memcmp(&c->msg, &c->before, sizeof c->msg) == 0;
}

static void v1_undo(void *ctx) {
        v1_ctx *c = ctx;
        tap_ok(c->msg.type == ROID_MSG_START && c->msg.user_data.size > V1_APPENDIX,
               "V1 start: the parse that succeeded gives the start with its %zu bytes of user data",
               c->msg.user_data.size);
        /* a fresh parser for the next countdown: its arena must grow again */
        roid_parser_free(c->parser);
        c->parser = NULL;
        roid_parser_new(&c->lim, &c->parser);
}

typedef struct {
        roid_tracker tr;
        roid_counters ctr;
        roid_limits lim;
        const roid_msg *msg;
} track_ctx;

static void track_prepare(void *ctx) {
        track_ctx *c = ctx;
        roid_tracker_init(&c->tr, &c->lim, &c->ctr, false);
}

static int track_call(void *ctx, roid_err *err) {
        track_ctx *c = ctx;
        const int r = roid_tracker_feed(&c->tr, c->msg, err);
        return r == ROID_TR_STARTED ? 0 : r < 0 ? r : -EPROTO;
}

static bool track_untouched(void *ctx) {
        track_ctx *c = ctx;
        const bool closed = !c->tr.open;
        roid_tracker_done(&c->tr);
        return closed;
}

static void track_undo(void *ctx) {
        track_ctx *c = ctx;
        tap_ok(c->tr.open && c->tr.cur.user_data.size > V1_APPENDIX,
               "V1 start: the tracker that opened the series holds a copy of its user data");
        roid_tracker_done(&c->tr);
}

static void test_v1_start(void) {
        static v1_ctx pc;
        int len = snprintf(v1_appendix, sizeof v1_appendix, "{\"note\":\"");
        memset(v1_appendix + len, 'x', V1_APPENDIX);
        snprintf(v1_appendix + len + V1_APPENDIX, sizeof v1_appendix - (size_t)len - V1_APPENDIX, "\"}");
        roid_limits_default(&pc.lim);
        pc.parts[0] = (roid_part){(const uint8_t *)v1_head, strlen(v1_head)};
        pc.parts[1] = (roid_part){(const uint8_t *)v1_cfg, strlen(v1_cfg)};
        pc.parts[2] = (roid_part){(const uint8_t *)v1_appendix, strlen(v1_appendix)};
        if (!tap_ok(roid_parser_new(&pc.lim, &pc.parser) == 0, "V1 start: a parser"))
                return;
        target t = {"roid_parse (V1 start, arena grows)", 0, &pc, v1_prepare, v1_call, v1_untouched, v1_undo};
        countdown(&t);

        roid_err err;
        roid_msg msg;
        if (!tap_ok(roid_parse(pc.parser, pc.parts, 3, &msg, &err) == 0, "V1 start parsed for the tracker (%s)",
                    err.msg))
                goto out;
        static track_ctx tc;
        roid_limits_default(&tc.lim);
        roid_counters_reset(&tc.ctr);
        tc.msg = &msg;
        t = (target){"roid_tracker_feed (V1 start)", 0, &tc, track_prepare, track_call, track_untouched, track_undo};
        countdown(&t);
out:
        roid_parser_free(pc.parser);
}

/* ---------------------------------------------------------------- config */

typedef struct {
        roid_config cfg, before;
        const char *path;
} cfg_ctx;

static void cfg_prepare(void *ctx) {
        cfg_ctx *c = ctx;
        roid_config_default(&c->cfg);
        c->before = c->cfg;
}

static int cfg_call(void *ctx, roid_err *err) {
        cfg_ctx *c = ctx;
        return roid_config_load(&c->cfg, c->path, err);
}

static bool cfg_untouched(void *ctx) {
        cfg_ctx *c = ctx;
        return memcmp(&c->cfg, &c->before, sizeof c->cfg) == 0;
}

static void cfg_undo(void *ctx) {
        cfg_ctx *c = ctx;
        tap_ok(c->cfg.analysis.roi.k == 3 && c->cfg.analysis.roi.n_segments == 16,
               "config: the file's k = 3, segments = 16 were loaded");
}

static void test_config(void) {
        char path[512];
        snprintf(path, sizeof path, "%s/roid.conf", tmpdir);
        FILE *f = fopen(path, "w");
        if (!tap_ok(f != NULL, "config file %s", path))
                return;
        fputs("# a small configuration\n[analysis]\nk = 3\nsegments = 16\n[output]\nmap_interval = 2\n", f);
        fclose(f);
        cfg_ctx c = {.path = path};
        target t = {"roid_config_load", 0, &c, cfg_prepare, cfg_call, cfg_untouched, cfg_undo};
        const unsigned long n = countdown(&t);
        tap_diag("roid_config_load: %lu allocations of its own (libinih's and stdio's are not seen)", n);
        unlink(path);
}

/* ---------------------------------------------------------------- writer */

typedef struct {
        roid_writer *ret;
} wnew_ctx;

static int wnew_call(void *ctx, roid_err *err) {
        (void)err;
        wnew_ctx *c = ctx;
        return roid_writer_new(16, 1, NULL, &c->ret);
}

static void wnew_undo(void *ctx) {
        wnew_ctx *c = ctx;
        roid_writer_free(c->ret);
}

typedef struct {
        roid_writer *w;
        const char *dir;
        roid_results_meta meta;
        char path[512];
        uint64_t opened; /* series the writer has opened */
} wopen_ctx;

static void wopen_prepare(void *ctx) {
        wopen_ctx *c = ctx;
        memset(c->path, 'Z', sizeof c->path);
}

static int wopen_call(void *ctx, roid_err *err) {
        (void)err;
        wopen_ctx *c = ctx;
        return roid_writer_open(c->w, c->dir, &c->meta, c->path, sizeof c->path);
}

static bool wopen_untouched(void *ctx) {
        wopen_ctx *c = ctx;
        return all_bytes(c->path, sizeof c->path, 'Z');
}

/* Closes the series the open started; the writer's thread is idle after. */
static void wopen_undo(void *ctx) {
        wopen_ctx *c = ctx;
        int r = roid_writer_close(c->w, NULL, true);
        int r2 = roid_writer_wait_idle(c->w);
        roid_writer_stats st;
        roid_writer_get_stats(c->w, &st);
        c->opened++;
        tap_ok(r == 0 && r2 == 0 && st.series_opened == c->opened && access(c->path, F_OK) == 0,
               "writer: the open that succeeded made %s (close %d, wait_idle %d, opened %llu)", c->path, r, r2,
               (unsigned long long)st.series_opened);
}

typedef struct {
        wopen_ctx *o;
        const roid_roi *roi;
} wmap_ctx;

static void wmap_prepare(void *ctx) {
        (void)ctx;
}

static int wmap_call(void *ctx, roid_err *err) {
        (void)err;
        wmap_ctx *c = ctx;
        return roid_writer_map(c->o->w, c->roi, false);
}

static bool wmap_untouched(void *ctx) {
        (void)ctx;
        return true; /* no out-parameter */
}

/* The snapshot is the writer's until the close, which writes it: a new
 * series, so that the next countdown starts without one. */
static bool series_open(wopen_ctx *c) {
        return roid_writer_open(c->w, c->dir, &c->meta, c->path, sizeof c->path) == 0 &&
               roid_writer_wait_idle(c->w) == 0;
}

static void wmap_undo(void *ctx) {
        wmap_ctx *c = ctx;
        wopen_undo(c->o);
        tap_ok(series_open(c->o), "writer: next series open");
}

static void remove_dir(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *e;
        char path[1024];
        while (d && (e = readdir(d)))
                if (e->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
                        unlink(path);
        if (d)
                closedir(d);
        rmdir(dir);
}

static void test_writer(void) {
        wnew_ctx nc;
        target t = {"roid_writer_new", EAGAIN, &nc, prepare_ptr, wnew_call, untouched_ptr, wnew_undo};
        countdown(&t);

        char dir[512];
        snprintf(dir, sizeof dir, "%s/results", tmpdir);
        if (!tap_ok(mkdir(dir, 0700) == 0, "results directory %s", dir))
                return;
        roid_roi_params rp;
        roid_roi_params_default(&rp);
        wopen_ctx c = {.dir = dir,
                       .meta = {.series_unique_id = "oom",
                                .series_id = 1,
                                .center_x = 12,
                                .center_y = 12,
                                .center_source = "config",
                                .roi = &rp,
                                .ny = NY,
                                .nx = NX,
                                .fast_axis = "x",
                                .scan_source = "config",
                                .config_text = "[analysis]\nk = 4\n"}};
        /* No timed flush, and the thread started and idle: nothing but the
         * call under test allocates while the heap is measured. */
        if (!tap_ok(roid_writer_new(16, 3600, NULL, &c.w) == 0 && roid_writer_wait_idle(c.w) == 0,
                    "writer for the opens"))
                return;
        t = (target){"roid_writer_open", 0, &c, wopen_prepare, wopen_call, wopen_untouched, wopen_undo};
        countdown(&t);

        /* The first map snapshot of a series: the writer's clone of the RoI
         * state is made there, and only there. */
        roid_roi *roi = NULL;
        roid_err err;
        int bad = !series_open(&c);
        bad |= roid_roi_new(&rp, NY, NX, &roi, &err) < 0;
        for (uint32_t i = 0; !bad && i < NP; i++)
                bad |= roid_roi_add(roi, i / NX, i % NX, &feats[i]) < 0;
        if (tap_ok(!bad, "series open, its RoI state fed %d frames", NP)) {
                wmap_ctx mc = {.o = &c, .roi = roi};
                t = (target){"roid_writer_map", 0, &mc, wmap_prepare, wmap_call, wmap_untouched, wmap_undo};
                countdown(&t);
                int r = roid_writer_map(c.w, roi, false);
                roid_roi_refit(roi);
                arm(0, false);
                r = r < 0 ? r : roid_writer_map(c.w, roi, false);
                const unsigned long n = disarm();
                tap_ok(r == 0 && n == 0,
                       "roid_writer_map: a later snapshot in the series allocates nothing (rc %d, %lu allocations)", r,
                       n);
                wopen_undo(&c);
                roid_writer_stats st;
                roid_writer_get_stats(c.w, &st);
                tap_ok(st.series_written == st.series_opened && st.series_failed == 0,
                       "writer: all %llu series written, none failed", (unsigned long long)st.series_written);
        }
        roid_roi_free(roi);
        roid_writer_free(c.w);
        remove_dir(dir);
}

/* ------------------------------------------------------ publish, control */

typedef struct {
        void *ret; /* first: prepare_ptr and untouched_ptr */
        void *zctx;
        roid_control_handler h;
} z_ctx;

/* A fresh context after each success: no libzmq thread runs (nor frees)
 * while the next failures are measured, which all come before the first
 * zmq_socket. */
static void fresh_context(z_ctx *c) {
        zmq_ctx_term(c->zctx);
        c->zctx = zmq_ctx_new();
}

static int pub_call(void *ctx, roid_err *err) {
        z_ctx *c = ctx;
        return roid_publisher_new(c->zctx, "tcp://127.0.0.1:*", 100, (roid_publisher **)&c->ret, err);
}

static void pub_undo(void *ctx) {
        z_ctx *c = ctx;
        tap_ok(strncmp(roid_publisher_endpoint(c->ret), "tcp://127.0.0.1:", 16) == 0, "publisher bound %s",
               roid_publisher_endpoint(c->ret));
        roid_publisher_free(c->ret);
        fresh_context(c);
}

static int h_status(void *ctx, msgpack_packer *pk) {
        (void)ctx;
        (void)pk;
        return 0;
}

static int ctl_call(void *ctx, roid_err *err) {
        z_ctx *c = ctx;
        return roid_control_new(c->zctx, "tcp://127.0.0.1:*", 4096, &c->h, (roid_control **)&c->ret, err);
}

static void ctl_undo(void *ctx) {
        z_ctx *c = ctx;
        tap_ok(strncmp(roid_control_endpoint(c->ret), "tcp://127.0.0.1:", 16) == 0, "control bound %s",
               roid_control_endpoint(c->ret));
        roid_control_free(c->ret);
        fresh_context(c);
}

static void test_zmq(void) {
        z_ctx c = {.h = {.status = h_status}};
        c.zctx = zmq_ctx_new();
        target t = {"roid_publisher_new", 0, &c, prepare_ptr, pub_call, untouched_ptr, pub_undo};
        countdown(&t);
        zmq_ctx_term(c.zctx);

        c.zctx = zmq_ctx_new();
        t = (target){"roid_control_new", 0, &c, prepare_ptr, ctl_call, untouched_ptr, ctl_undo};
        countdown(&t);
        zmq_ctx_term(c.zctx);
}

/* glibc's per-thread cache keeps freed chunks counted as in use by
 * mallinfo2 (tap_heap_in_use): the test runs itself again without it, so a
 * freed chunk shows as freed. */
static void without_tcache(char **argv) {
        if (UNDER_ASAN || getenv("ROID_OOM_NO_TCACHE"))
                return;
        const char *old = getenv("GLIBC_TUNABLES");
        char tun[1024];
        snprintf(tun, sizeof tun, "%s%sglibc.malloc.tcache_count=0", old ? old : "", old ? ":" : "");
        setenv("GLIBC_TUNABLES", tun, 1);
        setenv("ROID_OOM_NO_TCACHE", "1", 1);
        execv("/proc/self/exe", argv);
        tap_diag("execv /proc/self/exe: %s; the heap comparisons may see freed chunks in use", strerror(errno));
}

int main(int argc, char **argv) {
        (void)argc;
        without_tcache(argv);
        probe_heap();
        const char *tmp = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/roid-oom-XXXXXX", tmp ? tmp : "/tmp");
        if (!tap_ok(mkdtemp(tmpdir) != NULL, "temporary directory %s", tmpdir))
                return tap_done();
        test_geometry();
        test_kmeans();
        test_roi();
        test_feedback();
        test_ingest();
        test_v1_start();
        test_config();
        test_writer();
        test_zmq();
        rmdir(tmpdir);
        const int rc = tap_done();
        fflush(stdout); /* LeakSanitizer ends the process at exit without flushing */
        return rc;
}
