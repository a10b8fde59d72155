/* test_writer - the SWMR results file written by the writer thread, read the
 * way a live client reads it: h5py in SWMR mode (tests/py/swmr_read.py, run
 * with /usr/bin/python3), while the series runs, after a flush, after the
 * close and after the writing process died without closing.  Records come
 * from roid_features_compute on small synthetic diffraction patterns (a disk
 * attenuated and shifted over an object region of the scan), the RoI state
 * from roid_roi_add.  Also: the flush timer, back-pressure of a tiny queue,
 * an unwritable directory and a file-size limit hit mid-series (both logged
 * once, counted, the next series written normally), and a file-size limit
 * at every point of a results file's life (test_size_sweep). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "features/features.h"
#include "outputs/writer.h"
#include "tap.h"

extern char **environ;

#define NY 8
#define NX 10
#define NP (NY * NX)
#define FR 24 /* frame rows = cols */
#define S  4

static char tmp[256];
static char script[4096];
static roid_geometry geom;
static roid_roi_params rp;

/* ------------------------------------------------------------- records */

static uint64_t lcg(uint64_t *s) {
        *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
        return *s >> 33;
}

/* Image i lies on grid point i % NP (raster order); inside the object
 * (rows 2..5, cols 3..7) the disk is dimmer and shifted by 2 pixels. */
static void make_record(uint64_t i, roid_frame_record *rec) {
        static uint16_t px[FR * FR];
        uint32_t p = (uint32_t)(i % NP), row = p / NX, col = p % NX;
        bool obj = row >= 2 && row <= 5 && col >= 3 && col <= 7;
        double amp = obj ? 300 : 900, dx = obj ? 2 : 0, dy = obj ? -1 : 0;
        uint64_t seed = 1000 + i;
        for (int r = 0; r < FR; r++)
                for (int c = 0; c < FR; c++) {
                        double x = c - 12 - dx, y = r - 12 - dy;
                        px[r * FR + c] = (uint16_t)(amp * exp(-(x * x + y * y) / 18.0) + (double)(lcg(&seed) % 7));
                }
        roid_frame f = {.dtype = ROID_DT_U16, .rows = FR, .cols = FR, .pixels = px};
        memset(rec, 0, sizeof *rec);
        rec->image_id = i;
        rec->row = row;
        rec->col = col;
        rec->pos_x = rec->pos_y = NAN;
        roid_err err;
        if (roid_features_compute(&geom, &f, &rec->f, &err) < 0)
                tap_diag("features: %s", err.msg);
}

static void setup_geometry(void) {
        roid_geometry_params gp;
        roid_geometry_params_default(&gp);
        gp.rows = gp.cols = FR;
        gp.dtype = ROID_DT_U16;
        gp.center_x = gp.center_y = 12;
        gp.n_segments = S;
        gp.r_bf = 4;
        gp.r_df_in = 4;
        gp.r_df_out = 11;
        roid_err err;
        if (roid_geometry_init(&geom, &gp, &err) < 0)
                tap_diag("geometry: %s", err.msg);
        roid_roi_params_default(&rp);
        rp.n_segments = S;
        rp.k = 3;
        rp.cadence = 16;
}

static roid_results_meta meta_for(const char *id, const char *config) {
        roid_results_meta m = {.series_unique_id = id,
                               .series_id = 7,
                               .center_x = 12,
                               .center_y = 12,
                               .center_source = "config",
                               .r_bf = 4,
                               .r_df_in = 4,
                               .r_df_out = 11,
                               .roi = &rp,
                               .ny = NY,
                               .nx = NX,
                               .snake = 0,
                               .fast_axis = "x",
                               .scan_source = "config",
                               .config_text = config};
        return m;
}

/* ------------------------------------------------------- the reader side */

typedef struct {
        bool opened;
        long rows, scan_rows[8], final, frames, mask_sum, n_image_ids, image_ids_ok, labels_ok, labels_rows;
        long image_id_seq, complete, terminated, images_received, cen_k, cen_d, cen_finite;
        double sum[2048];
        long n_sum;
        char nx_class[256], config[256], open_error[512];
} summary;

static void summarise(const char *path, bool plain, summary *s) {
        char cmd[8192];
        memset(s, 0, sizeof *s);
        s->rows = -1;
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' summary '%s'%s", script, path, plain ? " --plain" : "");
        FILE *p = popen(cmd, "r");
        if (!p)
                return;
        static char line[1 << 16];
        while (fgets(line, sizeof line, p)) {
                line[strcspn(line, "\n")] = '\0';
                char *sp = strchr(line, ' ');
                const char *v = sp ? sp + 1 : "";
                if (sp)
                        *sp = '\0';
                if (!strcmp(line, "open"))
                        s->opened = true;
                else if (!strcmp(line, "open_error"))
                        snprintf(s->open_error, sizeof s->open_error, "%s", v);
                else if (!strcmp(line, "rows"))
                        s->rows = atol(v);
                else if (!strcmp(line, "scan_rows"))
                        sscanf(v, "%ld %ld %ld %ld %ld %ld %ld %ld", &s->scan_rows[0], &s->scan_rows[1],
                               &s->scan_rows[2], &s->scan_rows[3], &s->scan_rows[4], &s->scan_rows[5], &s->scan_rows[6],
                               &s->scan_rows[7]);
                else if (!strcmp(line, "sum")) {
                        char *q = (char *)v, *end;
                        while (s->n_sum < 2048) {
                                double d = strtod(q, &end);
                                if (end == q)
                                        break;
                                s->sum[s->n_sum++] = d;
                                q = end;
                        }
                } else if (!strcmp(line, "final"))
                        s->final = atol(v);
                else if (!strcmp(line, "frames"))
                        s->frames = atol(v);
                else if (!strcmp(line, "mask_sum"))
                        s->mask_sum = atol(v);
                else if (!strcmp(line, "n_image_ids"))
                        s->n_image_ids = atol(v);
                else if (!strcmp(line, "image_ids_ok"))
                        s->image_ids_ok = atol(v);
                else if (!strcmp(line, "labels_ok"))
                        s->labels_ok = atol(v);
                else if (!strcmp(line, "labels_rows"))
                        s->labels_rows = atol(v);
                else if (!strcmp(line, "image_id_seq"))
                        s->image_id_seq = atol(v);
                else if (!strcmp(line, "complete"))
                        s->complete = atol(v);
                else if (!strcmp(line, "centroids"))
                        sscanf(v, "%ld %ld %ld", &s->cen_k, &s->cen_d, &s->cen_finite);
                else if (!strcmp(line, "counter") && !strncmp(v, "terminated ", 11))
                        s->terminated = atol(v + 11);
                else if (!strcmp(line, "counter") && !strncmp(v, "images_received ", 16))
                        s->images_received = atol(v + 16);
                else if (!strcmp(line, "nx_class"))
                        snprintf(s->nx_class, sizeof s->nx_class, "%s", v);
                else if (!strcmp(line, "config"))
                        snprintf(s->config, sizeof s->config, "%s", v);
        }
        int st = pclose(p);
        if (st != 0)
                tap_diag("swmr_read.py summary %s: exit status %d", path, st);
}

/* A reader that stays open and refreshes on request, as a live client. */
typedef struct {
        pid_t pid;
        FILE *in, *out;
} follower;

static bool follow_start(follower *f, const char *path) {
        int to[2], from[2];
        if (pipe(to) < 0 || pipe(from) < 0)
                return false;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, to[0], 0);
        posix_spawn_file_actions_adddup2(&fa, from[1], 1);
        posix_spawn_file_actions_addclose(&fa, to[1]);
        posix_spawn_file_actions_addclose(&fa, from[0]);
        char *argv[] = {"python3", script, "follow", (char *)path, NULL};
        int r = posix_spawn(&f->pid, "/usr/bin/python3", &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(to[0]);
        close(from[1]);
        if (r) {
                close(to[1]);
                close(from[0]);
                return false;
        }
        f->in = fdopen(to[1], "w");
        f->out = fdopen(from[0], "r");
        return f->in && f->out;
}

static bool follow_poll(follower *f, long *rows, long *frames, long *final) {
        char line[256];
        fputs("refresh\n", f->in);
        fflush(f->in);
        if (!fgets(line, sizeof line, f->out))
                return false;
        if (sscanf(line, "rows %ld frames %ld final %ld", rows, frames, final) == 3)
                return true;
        tap_diag("follower said: %s", line);
        return false;
}

static void follow_stop(follower *f) {
        fclose(f->in);
        fclose(f->out);
        int st;
        waitpid(f->pid, &st, 0);
}

/* Lines of a file that contain needle. */
static int count_in_file(const char *path, const char *needle) {
        size_t n;
        uint8_t *b = tap_slurp(path, &n);
        int c = 0;
        if (!b)
                return -1;
        char *s = realloc(b, n + 1);
        if (!s) {
                free(b);
                return -1;
        }
        s[n] = '\0';
        for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n"))
                c += strstr(line, needle) != NULL;
        free(s);
        return c;
}

/* stderr into a file while fn-like code runs, for counting log lines. */
static int saved_stderr = -1;
static void capture_stderr(const char *path) {
        fflush(stderr);
        saved_stderr = dup(2);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        close(fd);
}
static void restore_stderr(void) {
        fflush(stderr);
        dup2(saved_stderr, 2);
        close(saved_stderr);
}

static void series_path(char *buf, size_t size, const char *dir, const char *id) {
        snprintf(buf, size, "%s/roid_%s.h5", dir, id);
}

/* A test's own directory under tmp, and the path of series id's file in it. */
static void test_dir(const char *name, const char *id, char *dir, size_t dsize, char *path, size_t psize) {
        snprintf(dir, dsize, "%s/%s", tmp, name);
        mkdir(dir, 0755);
        series_path(path, psize, dir, id);
}

/* Writes to regular files fail with EIO from the (fail_after + 1)-th on, as
 * on a network file system that refuses late (EIO, EDQUOT), which in-place
 * rewrites meet too and a file-size limit never makes them (HDF5 writes with
 * pwrite; this definition is the one libhdf5 binds to).  -1: off. */
static _Atomic int fail_after = -1;
static _Atomic bool failing;

/* The symbol libhdf5 calls: "pwrite" (this file's pwrite is pwrite64, for
 * _FILE_OFFSET_BITS=64). */
ssize_t faulty_pwrite(int fd, const void *buf, size_t n, off_t off) __asm__("pwrite");
ssize_t faulty_pwrite(int fd, const void *buf, size_t n, off_t off) {
        static ssize_t (*real)(int, const void *, size_t, off_t);
        if (!real)
                real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
        struct stat st;
        const bool file = fail_after >= 0 || failing ? fstat(fd, &st) == 0 && S_ISREG(st.st_mode) : false;
        if (file && fail_after >= 0 && fail_after-- == 0)
                failing = true;
        if (file && failing) {
                errno = EIO;
                return -1;
        }
        return real(fd, buf, n, off);
}

/* ---------------------------------------------------------------- tests */

/* A child writes and flushes N records, then dies without closing: the file
 * must read (SWMR) with exactly those N rows. */
static void test_crash(void) {
        enum { N = 37 };
        char dir[512], path[1024];
        test_dir("crash", "crash", dir, sizeof dir, path, sizeof path);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                roid_writer *w;
                roid_results_meta m = meta_for("crash", NULL);
                int bad = roid_writer_new(16, 3600, NULL, &w) < 0 || roid_writer_open(w, dir, &m, NULL, 0) < 0;
                for (uint64_t i = 0; !bad && i < N; i++) {
                        roid_frame_record rec;
                        make_record(i, &rec);
                        bad |= roid_writer_append(w, &rec) < 0;
                }
                bad |= roid_writer_wait_idle(w) < 0;
                _exit(bad ? 1 : 0); /* no close, no free: as if killed */
        }
        int st = -1;
        waitpid(pid, &st, 0);
        tap_ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "crash: the child wrote and flushed %d records", N);
        summary s;
        summarise(path, false, &s);
        tap_ok(s.opened, "crash: the unclosed file opens in SWMR read mode %s", s.open_error);
        tap_eq_i64(s.rows, N, "crash: rows of /entry/features/sum = the flushed records");
        bool same = s.n_sum == N;
        for (uint64_t i = 0; same && i < N; i++) {
                roid_frame_record rec;
                make_record(i, &rec);
                same = s.sum[i] == rec.f.total;
        }
        tap_ok(same, "crash: every flushed total reads back exactly");
        tap_eq_i64(s.scan_rows[0], N, "crash: /entry/scan/image_id has the same rows");
        tap_eq_i64(s.complete, 0, "crash: counters/complete stays 0 (never closed)");
        summarise(path, true, &s);
        tap_ok(!s.opened && strstr(s.open_error, "already open for write"),
               "crash: a non-SWMR open is refused as documented (%s)", s.open_error);
}

/* ------------------------------------------------- failures at every size */

enum { SW_PASSES = 3, SW_RECS = 3 * NP };
enum { SW_WRITTEN, SW_CREATE, SW_LAYOUT, SW_LATER, SW__KINDS, SW_BAD = 10 };
static roid_frame_record sw_recs[SW_RECS];

/* Rows of /entry/features/sum as an SWMR reader sees them; -1: unreadable. */
static long swmr_rows(const char *path) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY | H5F_ACC_SWMR_READ, H5P_DEFAULT);
        if (f < 0)
                return -1;
        long rows = -1;
        hid_t d = H5Dopen2(f, "/entry/features/sum", H5P_DEFAULT);
        hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
        hsize_t n = 0;
        if (sp >= 0 && H5Sget_simple_extent_dims(sp, &n, NULL) == 1)
                rows = (long)n;
        if (sp >= 0)
                H5Sclose(sp);
        if (d >= 0)
                H5Dclose(d);
        H5Fclose(f);
        return rows;
}

/* The child of test_size_sweep: writes a results file of SW_PASSES x
 * (records, online map, flush), the final map and the close, under a file-size
 * limit of `limit` bytes; its exit status is the outcome (SW_*), SW_BAD + n
 * for a broken expectation.  It must exit normally: HDF5 closes what is left
 * open at exit, and crashed doing so. */
static void sweep_child(const char *path, rlim_t limit) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim;
        getrlimit(RLIMIT_FSIZE, &lim);
        lim.rlim_cur = limit < lim.rlim_max ? limit : lim.rlim_max;
        if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
                exit(SW_BAD);
        roid_results_meta m = meta_for("sweep", "[roi]\nk = 3\n");
        m.path = path;
        roid_results *w = NULL;
        char got[4096];
        roid_err err = {0};
        int r = roid_results_open(NULL, &m, &w, got, sizeof got, &err);
        struct stat sb;
        if (r < 0) {
                bool create = strstr(err.msg, "cannot create") != NULL, layout = strstr(err.msg, "the layout") != NULL;
                if (r != -EIO || !strstr(err.msg, "File too large") || (!create && !layout))
                        exit(SW_BAD + 1);
                if (stat(path, &sb) == 0) /* a create failure removes its file */
                        exit(SW_BAD + 2);
                if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0)
                        exit(SW_BAD + 3);
                exit(create ? SW_CREATE : SW_LAYOUT);
        }
        roid_roi *roi = NULL;
        if (roid_roi_new(&rp, NY, NX, &roi, &err) < 0)
                exit(SW_BAD + 4);
        bool failed = false;
        for (int pass = 0; pass < SW_PASSES; pass++) {
                for (int i = 0; i < SW_RECS; i++)
                        roid_roi_add(roi, sw_recs[i].row, sw_recs[i].col, &sw_recs[i].f);
                failed |= roid_results_append(w, sw_recs, SW_RECS, &err) < 0;
                failed |= roid_results_write_map(w, roi, false, &err) < 0;
                failed |= roid_results_flush(w, &err) < 0;
        }
        roid_roi_finish(roi);
        failed |= roid_results_write_map(w, roi, true, &err) < 0;
        r = roid_results_close(w, NULL, true, NULL);
        roid_roi_free(roi);
        if (failed ? r != -EIO : r != 0 && r != -EIO) /* the close itself may fail */
                exit(SW_BAD + 5);
        if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0)
                exit(SW_BAD + 6);
        long rows = swmr_rows(path); /* a later failure leaves the file readable */
        if (rows < 0 || rows > SW_PASSES * SW_RECS || (r == 0 && rows != SW_PASSES * SW_RECS))
                exit(SW_BAD + 7);
        exit(r == 0 ? SW_WRITTEN : SW_LATER);
}

/* A results file written under every file-size limit from 0 to its full size
 * (as a disk that fills up at that point): in steps of 16 bytes up to where
 * its layout is complete (H5Fcreate's superblock, then the first flush,
 * H5Fstart_swmr_write's, which writes the whole layout), then of 1021 bytes
 * (each chunk's data and index); a few children at a time.  Each outcome is
 * a failure logged in err, a file removed (create) or readable (later), and a
 * normal exit: HDF5 1.10 used to be left with a file it could not close,
 * which crashed the process at exit. */
static void test_size_sweep(void) {
        char dir[512], path[1024];
        test_dir("sweep", "sweep", dir, sizeof dir, path, sizeof path);
        for (int i = 0; i < SW_RECS; i++)
                make_record((uint64_t)i, &sw_recs[i]);
        /* the sizes of the bare layout and of the whole file, without a limit */
        off_t size[2] = {0, 0};
        for (int full = 0; full < 2; full++) {
                snprintf(path, sizeof path, "%s/size%d.h5", dir, full);
                fflush(stdout);
                pid_t pid = fork();
                if (pid == 0) {
                        if (full)
                                sweep_child(path, RLIM_INFINITY);
                        roid_results_meta m = meta_for("sweep", "[roi]\nk = 3\n");
                        m.path = path;
                        roid_results *w = NULL;
                        char got[4096];
                        roid_err err;
                        int r = roid_results_open(NULL, &m, &w, got, sizeof got, &err);
                        exit(r < 0 || roid_results_close(w, NULL, true, NULL) < 0 ? 1 : 0);
                }
                int st = -1;
                struct stat sb;
                waitpid(pid, &st, 0);
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && stat(path, &sb) == 0)
                        size[full] = sb.st_size;
        }
        tap_ok(size[0] > 0 && size[1] > size[0], "size sweep: layout %lld bytes, whole file %lld bytes",
               (long long)size[0], (long long)size[1]);
        if (size[0] <= 0 || size[1] <= size[0])
                return;
        enum { PAR = 8 };
        struct {
                pid_t pid;
                off_t limit;
        } run[PAR] = {{0}};
        int kinds[SW__KINDS] = {0}, crashed = 0, bad = 0, n = 0;
        char first_bad[256] = "";
        off_t layout_end = size[0] + 4096; /* the layout's first flush extends the file past its final size */
        /* past the layout, a prime step: every alignment to HDF5's blocks comes by (the
         * suite's time under ASan on two cores: 256 took three minutes) */
        for (off_t limit = 0;; limit += limit < 1024 ? 16 : limit < layout_end ? 64 : 1021) {
                bool last = limit > size[1] + 1024; /* one limit at or past the full size */
                /* wait for a free slot (or, at the end, for all) */
                for (;;) {
                        int busy = 0, slot = -1;
                        for (int i = 0; i < PAR; i++)
                                if (run[i].pid)
                                        busy++;
                                else if (slot < 0)
                                        slot = i;
                        if ((!last && slot >= 0) || (last && !busy)) {
                                if (!last) {
                                        char p[1024];
                                        snprintf(p, sizeof p, "%s/limit%lld.h5", dir, (long long)limit);
                                        fflush(stdout);
                                        pid_t pid = fork();
                                        if (pid == 0)
                                                sweep_child(p, (rlim_t)limit);
                                        run[slot].pid = pid;
                                        run[slot].limit = limit;
                                        n++;
                                }
                                break;
                        }
                        int st = -1;
                        pid_t pid = wait(&st);
                        if (pid < 0 && errno != EINTR) { /* no child left: cannot happen */
                                bad++;
                                memset(run, 0, sizeof run);
                        }
                        for (int i = 0; pid > 0 && i < PAR; i++) {
                                if (run[i].pid != pid)
                                        continue;
                                int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
                                if (code >= 0 && code < SW__KINDS) {
                                        kinds[code]++;
                                } else {
                                        crashed += code < 0;
                                        bad += code >= 0;
                                        if (!first_bad[0])
                                                snprintf(first_bad, sizeof first_bad, "limit %lld: %s %d",
                                                         (long long)run[i].limit, code < 0 ? "signal" : "exit status",
                                                         code < 0 ? WTERMSIG(st) : code);
                                }
                                char p[1024];
                                snprintf(p, sizeof p, "%s/limit%lld.h5", dir, (long long)run[i].limit);
                                unlink(p);
                                run[i].pid = 0;
                        }
                }
                if (last)
                        break;
        }
        tap_ok(crashed == 0 && bad == 0,
               "size sweep: %d limits, every child exited normally (%d crashed, %d broke an "
               "expectation%s%s)",
               n, crashed, bad, first_bad[0] ? ": first " : "", first_bad);
        tap_ok(kinds[SW_CREATE] > 0 && kinds[SW_LAYOUT] > 0 && kinds[SW_LATER] > 0 && kinds[SW_WRITTEN] > 0,
               "size sweep: failures creating (%d), writing the layout (%d), later (%d); written whole (%d)",
               kinds[SW_CREATE], kinds[SW_LAYOUT], kinds[SW_LATER], kinds[SW_WRITTEN]);
}

/* A frame without counts (beam off) at a point of the RoI, beside its lit
 * frame (a fly scan's revisit): the RoI state leaves it out, and so does
 * roi/image_ids, the frames a reconstruction code reads (it listed it). */
static void test_dark_frame_ids(void) {
        char dir[512], path[1024];
        test_dir("dark", "dark", dir, sizeof dir, path, sizeof path);
        roid_writer *w;
        roid_results_meta m = meta_for("dark", NULL);
        roid_roi *roi;
        roid_err err;
        if (!tap_ok(roid_writer_new(64, 3600, NULL, &w) == 0 && roid_writer_open(w, dir, &m, NULL, 0) == 0 &&
                            roid_roi_new(&rp, NY, NX, &roi, &err) == 0,
                    "dark: writer and RoI state"))
                return;
        roid_frame_record rec;
        for (uint64_t i = 0; i < NP; i++) {
                make_record(i, &rec);
                roid_roi_add(roi, rec.row, rec.col, &rec.f);
                roid_writer_append(w, &rec);
        }
        const uint32_t p = 3 * NX + 4; /* in the object */
        memset(&rec, 0, sizeof rec);
        rec.image_id = NP;
        rec.row = p / NX;
        rec.col = p % NX;
        rec.pos_x = rec.pos_y = NAN;
        rec.f.n_segments = rp.n_segments;
        rec.f.com_x = rec.f.com_y = 12; /* the beam centre, as features.c gives an empty frame */
        for (unsigned s = 0; s < rp.n_segments; s++)
                rec.f.seg[s].com_x = rec.f.seg[s].com_y = 12;
        roid_roi_add(roi, rec.row, rec.col, &rec.f);
        roid_writer_append(w, &rec);
        roid_roi_finish(roi);
        roid_writer_map(w, roi, true);
        roid_counters ctr;
        roid_counters_reset(&ctr);
        roid_writer_close(w, &ctr, true);
        tap_eq_i64(roid_writer_wait_idle(w), 0, "dark: written and closed");
        long in = 0;
        for (int q = 0; q < NP; q++)
                in += roid_roi_mask(roi)[q];
        summary s;
        summarise(path, true, &s);
        tap_ok(roid_roi_mask(roi)[p] && roid_roi_dark_frames(roi) == 1 && s.rows == NP + 1 && s.n_image_ids == in &&
                       s.image_ids_ok == 1,
               "dark: %ld rows; the point is RoI; image_ids lists its lit frame only (%ld ids, %ld RoI points)", s.rows,
               s.n_image_ids, in);
        roid_roi_free(roi);
        roid_writer_free(w);
}

/* Polls the writer's stats until done(st), for 10 s at most. */
static void poll_stats(roid_writer *w, roid_writer_stats *st, bool (*done)(const roid_writer_stats *)) {
        for (int t = 0; t < 1000; t++) {
                roid_writer_get_stats(w, st);
                if (done(st))
                        return;
                nanosleep(&(struct timespec){0, 10000000}, NULL);
        }
}

static bool ten_written(const roid_writer_stats *st) {
        return st->frames_written == 10;
}

static bool three_discarded(const roid_writer_stats *st) {
        return st->frames_discarded == 3;
}

/* Records paced slower than the writer go out in batches: each append is
 * a few HDF5 allocations and a write per dataset, and one per frame was
 * about 17 allocations a frame.  They wait for a full batch, anything queued
 * after them, wait_idle, or the flush, which an SWMR reader waits for anyway. */
/* Writes failing from each point of a series' close on (the flush, the
 * counters, complete, HDF5's own close): the file is counted failed with
 * HDF5's reason, or written; HDF5 is left with nothing open but a file whose
 * own H5Fclose failed (half freed by HDF5 1.10), and the process exits
 * cleanly (a close whose counter rewrites failed left the file half open,
 * and HDF5 crashed at exit; found by review).  Run in a child process of its
 * own (test_close_errors), which exits through exit(): that half-freed file
 * is HDF5's memory, not a leak of roid's for LeakSanitizer to report.
 * Returns the exit status: 0 when every case held. */
static int close_errors(void) {
        char dir[512], path[1024], id[32];
        int bad = 0, failed = 0, written = 0;
        for (int k = 0; k < 48; k++) {
                snprintf(id, sizeof id, "close-%d", k);
                test_dir(id, id, dir, sizeof dir, path, sizeof path);
                roid_counters ctr = {0};
                roid_writer *w;
                roid_roi *roi;
                roid_err err;
                if (roid_writer_new(64, 3600, &ctr, &w) < 0 || roid_roi_new(&rp, NY, NX, &roi, &err) < 0) {
                        bad++;
                        continue;
                }
                roid_results_meta m = meta_for(id, NULL);
                roid_writer_open(w, dir, &m, NULL, 0);
                roid_frame_record rec;
                for (uint64_t i = 0; i < NP; i++) {
                        make_record(i, &rec);
                        roid_roi_add(roi, rec.row, rec.col, &rec.f);
                        roid_writer_append(w, &rec);
                }
                roid_roi_finish(roi);
                roid_writer_map(w, roi, true);
                roid_writer_wait_idle(w);
                fail_after = k;
                roid_writer_close(w, &ctr, true);
                roid_writer_wait_idle(w);
                fail_after = -1;
                failing = false;
                roid_writer_stats st;
                roid_writer_get_stats(w, &st);
                const uint64_t nf = roid_counter_get(&ctr, ROID_C_results_failed);
                failed += st.series_failed == 1;
                written += st.series_written == 1;
                /* a file whose H5Fclose failed stays in HDF5, half freed: nothing else may */
                const ssize_t files = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE);
                const ssize_t others = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_DATASET | H5F_OBJ_GROUP |
                                                                             H5F_OBJ_DATATYPE | H5F_OBJ_ATTR);
                if (st.series_failed + st.series_written != 1 || nf != st.series_failed || others != 0 ||
                    files > failed) {
                        if (bad++ < 3)
                                tap_diag("writes failing after %d: %llu failed, %llu written, results_failed %llu, "
                                         "%zd files and %zd other HDF5 objects open",
                                         k, (unsigned long long)st.series_failed, (unsigned long long)st.series_written,
                                         (unsigned long long)nf, files, others);
                }
                roid_writer_free(w);
                roid_roi_free(roi);
        }
        tap_diag("writes failing from 48 points of the close on: each file counted failed (%d) or written (%d), "
                 "no HDF5 object left open but a file whose own close failed (%d bad)",
                 failed, written, bad);
        return bad == 0 && failed > 0 && written > 0 ? 0 : 1;
}

static void test_close_errors(void) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/close-errors", tmp);
        mkdir(dir, 0755);
        size_t n = 0;
        while (environ[n])
                n++;
        char **env = calloc(n + 2, sizeof *env);
        if (!env)
                return;
        memcpy(env, environ, n * sizeof *env);
        env[n] = "LSAN_OPTIONS=detect_leaks=0";
        char *argv[] = {"test_writer", "--close-errors", dir, NULL};
        pid_t pid;
        int st = -1;
        fflush(stdout);
        const int r = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, env);
        free(env);
        if (r == 0)
                waitpid(pid, &st, 0);
        tap_ok(r == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "writes failing at each point of a close: every file counted failed or written, no HDF5 object "
               "left open but a half-closed file, a clean exit (status 0x%x)",
               st);
}

static void test_batched(void) {
        char dir[512], path[1024];
        test_dir("batched", "batched-1", dir, sizeof dir, path, sizeof path);
        roid_writer *w;
        if (!tap_ok(roid_writer_new(256, 5, NULL, &w) == 0, "batched: writer started, 256 deep (batches of 128)"))
                return;
        roid_results_meta m = meta_for("batched-1", NULL);
        tap_ok(roid_writer_open(w, dir, &m, NULL, 0) == 0 && roid_writer_wait_idle(w) == 0, "batched: file created");
        roid_frame_record rec;
        roid_writer_stats st;
        for (uint64_t i = 0; i < 40; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
                nanosleep(&(struct timespec){0, 2000000}, NULL);
        }
        roid_writer_get_stats(w, &st);
        tap_ok(st.appends == 0 && st.frames_written == 0,
               "batched: 40 records 2 ms apart wait for their batch or the flush in 5 s (%llu appends)",
               (unsigned long long)st.appends);
        roid_writer_wait_idle(w);
        roid_writer_get_stats(w, &st);
        tap_ok(st.appends == 1 && st.frames_written == 40, "batched: wait_idle writes them in one append (%llu, %llu)",
               (unsigned long long)st.appends, (unsigned long long)st.frames_written);
        roid_writer_free(w);

        /* The flush does not wait for a batch: records show up within it. */
        test_dir("batched2", "batched-2", dir, sizeof dir, path, sizeof path);
        if (!tap_ok(roid_writer_new(64, 0.2, NULL, &w) == 0, "batched: writer flushing every 0.2 s"))
                return;
        m = meta_for("batched-2", NULL);
        roid_writer_open(w, dir, &m, NULL, 0);
        for (uint64_t i = 0; i < 10; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        poll_stats(w, &st, ten_written);
        /* one append, or two if this thread paused for a flush interval while pushing */
        tap_ok(st.frames_written == 10 && st.appends >= 1 && st.appends <= 2,
               "batched: 10 records appended by the flush timer alone, in %llu append(s)",
               (unsigned long long)st.appends);
        roid_writer_free(w);
}

static void test_live(void) {
        char dir[512], path[1024], got[4096];
        test_dir("live", "live-1", dir, sizeof dir, path, sizeof path);
        roid_writer *w;
        tap_ok(roid_writer_new(64, 3600, NULL, &w) == 0, "live: writer started");
        tap_eq_u64(roid_writer_queue_capacity(w), 64, "live: capacity");
        roid_results_meta m = meta_for("live-1", "[analysis]\nk = 3\n");
        char uid[] = "live-1";
        m.series_unique_id = uid;
        tap_ok(roid_writer_open(w, dir, &m, got, sizeof got) == 0, "live: open queued");
        uid[0] = 'X'; /* the writer copied it */
        tap_eq_i64(roid_writer_wait_idle(w), 0, "live: file created");
        struct stat st_live;
        tap_ok(!strcmp(got, path) && stat(path, &st_live) == 0, "live: open's path %s, created", got);
        roid_roi *roi;
        roid_err err;
        roid_roi_new(&rp, NY, NX, &roi, &err);

        follower fo;
        long rows = -1, frames = -1, final = -1;
        bool polled;
        bool started = follow_start(&fo, path);
        polled = started && follow_poll(&fo, &rows, &frames, &final);
        tap_ok(polled && rows == 0 && frames == 0 && final == 0,
               "live: a SWMR reader opens the new file: %ld rows, frames %ld, final %ld", rows, frames, final);

        roid_frame_record rec;
        for (uint64_t i = 0; i < 30; i++) {
                make_record(i, &rec);
                roid_roi_add(roi, rec.row, rec.col, &rec.f);
                roid_writer_append(w, &rec);
        }
        roid_writer_map(w, roi, false);
        for (uint64_t i = 30; i < 40; i++) { /* a newer snapshot supersedes the one of 30 frames */
                make_record(i, &rec);
                roid_roi_add(roi, rec.row, rec.col, &rec.f);
                roid_writer_append(w, &rec);
        }
        roid_writer_map(w, roi, false);
        tap_eq_i64(roid_writer_wait_idle(w), 0, "live: 40 records flushed");
        polled = started && follow_poll(&fo, &rows, &frames, &final);
        tap_ok(polled && rows == 40 && frames == 40 && final == 0,
               "live: after refresh the reader sees %ld rows, map of %ld frames, final %ld", rows, frames, final);
        for (uint64_t i = 40; i < NP; i++) {
                make_record(i, &rec);
                roid_roi_add(roi, rec.row, rec.col, &rec.f);
                roid_writer_append(w, &rec);
        }
        tap_eq_i64(roid_writer_wait_idle(w), 0, "live: 80 records flushed");
        polled = started && follow_poll(&fo, &rows, &frames, &final);
        tap_ok(polled && rows == NP && frames == 40, "live: the reader sees %ld rows (map still of %ld frames)", rows,
               frames);

        roid_roi_finish(roi);
        tap_eq_i64(roid_writer_map(w, roi, true), 0, "live: final map passed");
        roid_counters ctr;
        roid_counters_reset(&ctr);
        roid_count(&ctr, ROID_C_images_received, NP);
        tap_eq_i64(roid_writer_close(w, &ctr, true), 0, "live: close queued");
        roid_count(&ctr, ROID_C_images_received, 5); /* after the close: not in the file */
        tap_eq_i64(roid_writer_wait_idle(w), 0, "live: closed without error");
        polled = started && follow_poll(&fo, &rows, &frames, &final);
        tap_ok(polled && rows == NP && frames == NP && final == 1,
               "live: the open reader sees the final map: %ld rows, %ld frames, final %ld", rows, frames, final);
        if (started)
                follow_stop(&fo);

        const uint8_t *mask = roid_roi_mask(roi);
        long in = 0;
        for (int p = 0; p < NP; p++)
                in += mask[p];
        summary s;
        summarise(path, true, &s);
        tap_ok(s.opened, "live: after the close a plain (non-SWMR) open works %s", s.open_error);
        tap_eq_i64(s.rows, NP, "live: all rows");
        for (int i = 0; i < 7; i++)
                if (s.scan_rows[i + 1] != NP)
                        tap_diag("per-frame dataset %d has %ld rows", i + 1, s.scan_rows[i + 1]);
        tap_ok(s.scan_rows[0] == NP && s.scan_rows[1] == NP && s.scan_rows[2] == NP && s.scan_rows[3] == NP &&
                       s.scan_rows[4] == NP && s.scan_rows[5] == NP && s.scan_rows[6] == NP && s.scan_rows[7] == NP,
               "live: every per-frame dataset has %d rows", NP);
        bool same = s.n_sum == NP;
        for (uint64_t i = 0; same && i < NP; i++) {
                make_record(i, &rec);
                same = s.sum[i] == rec.f.total;
        }
        tap_ok(same, "live: totals read back exactly");
        tap_eq_i64(s.image_id_seq, 1, "live: image ids in order");
        tap_eq_i64(s.final, 1, "live: /entry/roi/final = 1");
        tap_eq_i64(s.frames, NP, "live: /entry/roi/frames");
        tap_eq_i64(s.mask_sum, in, "live: the mask is the final RoI");
        tap_ok(in > 0 && in < NP, "live: the RoI is a proper part of the scan (%ld of %d)", in, NP);
        tap_eq_i64(s.n_image_ids, in, "live: image_ids has one frame per RoI point");
        tap_eq_i64(s.image_ids_ok, 1, "live: image_ids = frames whose grid point is in the mask (numpy)");
        tap_eq_i64(s.labels_ok, 1, "live: per-frame cluster labels = point labels at the frames' points (numpy)");
        tap_eq_i64(s.labels_rows, NP, "live: one cluster label per frame");
        tap_ok(s.cen_k == 3 && s.cen_d == 2 * (1 + S) + rp.use_bf + rp.use_df && s.cen_finite == 1,
               "live: centroids %ld x %ld, finite %ld", s.cen_k, s.cen_d, s.cen_finite);
        tap_eq_i64(s.images_received, NP, "live: counters stored at the close (snapshot)");
        tap_eq_i64(s.complete, 1, "live: counters/complete = 1");
        tap_eq_i64(s.terminated, 1, "live: counters/terminated = 1 (closed as ended by the detector)");
        tap_ok(!strcmp(s.nx_class, "NXentry NXcollection NXcollection NXdata NXcollection NXcollection"),
               "live: NX_class attributes (%s)", s.nx_class);
        tap_ok(!strcmp(s.config, "[analysis]\\nk = 3\\n"), "live: configuration attribute (%s)", s.config);
        roid_writer_stats st;
        roid_writer_get_stats(w, &st);
        tap_ok(st.series_opened == 1 && st.series_written == 1 && st.series_failed == 0 && st.frames_written == NP &&
                       st.frames_discarded == 0,
               "live: stats opened %llu written %llu failed %llu frames %llu discarded %llu",
               (unsigned long long)st.series_opened, (unsigned long long)st.series_written,
               (unsigned long long)st.series_failed, (unsigned long long)st.frames_written,
               (unsigned long long)st.frames_discarded);
        tap_ok(roid_writer_append(w, &rec) == -EINVAL, "live: append after close is refused");
        roid_writer_free(w);
        roid_roi_free(roi);
}

/* The flush timer alone makes the rows visible. */
static void test_timer(void) {
        char dir[512], path[1024];
        test_dir("timer", "timer", dir, sizeof dir, path, sizeof path);
        roid_writer *w;
        roid_writer_new(8, 0.2, NULL, &w);
        roid_results_meta m = meta_for("timer", NULL);
        roid_writer_open(w, dir, &m, NULL, 0);
        roid_frame_record rec;
        for (uint64_t i = 0; i < 10; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        struct timespec ts = {0, 800 * 1000 * 1000};
        nanosleep(&ts, NULL);
        summary s;
        summarise(path, false, &s);
        tap_eq_i64(s.rows, 10, "timer: rows visible after flush_interval without any explicit flush");
        roid_writer_close(w, NULL, false); /* no end message came */
        roid_writer_free(w);               /* finishes the queued close */
        summarise(path, true, &s);
        tap_ok(s.rows == 10 && s.complete == 1 && s.terminated == 0,
               "timer: free finished the close (%ld rows, complete %ld), of a series closed without its end "
               "(terminated %ld)",
               s.rows, s.complete, s.terminated);
}

static void test_backpressure(void) {
        enum { N = 1000 };
        char dir[512], path[1024];
        test_dir("bp", "bp", dir, sizeof dir, path, sizeof path);
        roid_writer *w;
        roid_writer_new(2, 3600, NULL, &w);
        roid_results_meta m = meta_for("bp", NULL);
        roid_writer_open(w, dir, &m, NULL, 0);
        static roid_frame_record recs[NP];
        for (uint64_t i = 0; i < NP; i++)
                make_record(i, &recs[i]);
        size_t max_seen = 0;
        int bad = 0;
        for (uint64_t i = 0; i < N; i++) {
                roid_frame_record rec = recs[i % NP];
                rec.image_id = i;
                bad |= roid_writer_append(w, &rec) < 0;
                size_t d = roid_writer_queue_depth(w);
                if (d > max_seen)
                        max_seen = d;
        }
        roid_writer_close(w, NULL, true);
        tap_eq_i64(roid_writer_wait_idle(w), 0, "backpressure: no error");
        tap_ok(!bad && max_seen == 2, "backpressure: the queue of 2 filled (max depth %zu) and appends waited",
               max_seen);
        summary s;
        summarise(path, true, &s);
        tap_eq_i64(s.rows, N, "backpressure: every record arrived");
        tap_eq_i64(s.image_id_seq, 1, "backpressure: in order");
        roid_writer_free(w);
}

static void test_errors(void) {
        char bad_dir[512], log[512], good_dir[512], path[1024];
        snprintf(bad_dir, sizeof bad_dir, "%s/afile/sub", tmp);
        snprintf(path, sizeof path, "%s/afile", tmp);
        FILE *f = fopen(path, "w"); /* a regular file where a directory should be: unwritable even for root */
        if (f)
                fclose(f);
        snprintf(log, sizeof log, "%s/stderr.log", tmp);
        snprintf(good_dir, sizeof good_dir, "%s/good", tmp);
        mkdir(good_dir, 0755);
        roid_writer *w;
        roid_writer_new(4, 3600, NULL, &w);
        roid_frame_record rec;
        roid_roi *roi;
        roid_err err;
        roid_roi_new(&rp, NY, NX, &roi, &err);
        for (uint64_t i = 0; i < NP; i++) {
                make_record(i, &rec);
                roid_roi_add(roi, rec.row, rec.col, &rec.f);
        }
        roid_roi_finish(roi);

        /* 1. unwritable directory */
        capture_stderr(log);
        roid_results_meta m = meta_for("bad", NULL);
        roid_writer_open(w, bad_dir, &m, NULL, 0);
        for (uint64_t i = 0; i < 10; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        roid_writer_map(w, roi, true);
        roid_writer_close(w, NULL, true);
        int r = roid_writer_wait_idle(w);
        restore_stderr();
        tap_ok(r < 0, "unwritable dir: wait_idle reports the error (%d)", r);
        tap_eq_i64(count_in_file(log, "roid_bad.h5"), 1, "unwritable dir: logged once, naming the path");
        tap_ok(count_in_file(log, "Not a directory") >= 1, "unwritable dir: the log gives the reason");
        roid_writer_stats st;
        roid_writer_get_stats(w, &st);
        tap_ok(st.series_failed == 1 && st.frames_discarded == 10 && st.series_opened == 0,
               "unwritable dir: counted (failed %llu, discarded %llu)", (unsigned long long)st.series_failed,
               (unsigned long long)st.frames_discarded);

        /* 1b. records of a failed series are discarded as they come, not when
         * a batch or the close comes (the thread has no flush to wait for) */
        {
                roid_writer *w2;
                roid_writer_new(64, 0.1, NULL, &w2);
                capture_stderr(log);
                m = meta_for("bad2", NULL);
                roid_writer_open(w2, bad_dir, &m, NULL, 0);
                roid_writer_wait_idle(w2);
                restore_stderr();
                for (uint64_t i = 0; i < 3; i++) {
                        make_record(i, &rec);
                        roid_writer_append(w2, &rec);
                }
                poll_stats(w2, &st, three_discarded);
                tap_ok(st.frames_discarded == 3 && roid_writer_queue_depth(w2) == 0,
                       "unwritable dir: 3 records appended later are discarded without a close (%llu, depth %zu)",
                       (unsigned long long)st.frames_discarded, roid_writer_queue_depth(w2));
                roid_writer_free(w2);
        }

        /* 2. the next series, good directory */
        m = meta_for("after-bad", NULL);
        roid_writer_open(w, good_dir, &m, NULL, 0);
        for (uint64_t i = 0; i < 5; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        roid_writer_close(w, NULL, true);
        tap_eq_i64(roid_writer_wait_idle(w), 0, "after the error: the next series is written");
        summary s;
        series_path(path, sizeof path, good_dir, "after-bad");
        summarise(path, true, &s);
        tap_eq_i64(s.rows, 5, "after the error: its file has its 5 rows");

        /* 3. the file-size limit hit mid-series, as a full disk */
        signal(SIGXFSZ, SIG_IGN);
        m = meta_for("full", NULL);
        series_path(path, sizeof path, good_dir, "full");
        roid_writer_open(w, good_dir, &m, NULL, 0);
        roid_writer_wait_idle(w);
        struct stat sb;
        stat(path, &sb);
        struct rlimit old, lim;
        getrlimit(RLIMIT_FSIZE, &old);
        lim = old;
        lim.rlim_cur = (rlim_t)sb.st_size + 32768;
        setrlimit(RLIMIT_FSIZE, &lim);
        roid_writer_stats before;
        roid_writer_get_stats(w, &before);
        capture_stderr(log);
        for (uint64_t i = 0; i < 2000; i++) {
                make_record(i % NP, &rec);
                rec.image_id = i;
                roid_writer_append(w, &rec);
        }
        r = roid_writer_wait_idle(w); /* its flush hits the limit */
        setrlimit(RLIMIT_FSIZE, &old);
        roid_writer_map(w, roi, true);
        roid_writer_close(w, NULL, true);
        int r2 = roid_writer_wait_idle(w);
        restore_stderr();
        roid_writer_get_stats(w, &st);
        tap_ok(r < 0 && r2 == 0, "size limit: wait_idle reports the error once (%d, then %d)", r, r2);
        tap_eq_i64(count_in_file(log, "roid_full.h5"), 1, "size limit: logged once, naming the path");
        tap_ok(count_in_file(log, "File too large") == 1, "size limit: the log gives the reason");
        tap_ok(st.series_failed == 2 && st.series_written == 1 &&
                       st.frames_written + st.frames_discarded == 10 + 5 + 2000,
               "size limit: counted (failed %llu, written %llu, discarded %llu)", (unsigned long long)st.series_failed,
               (unsigned long long)st.series_written, (unsigned long long)st.frames_discarded);
        /* None of them got past a successful flush: all are lost, none
         * counted as written (a soak test found the rows of the failed
         * flush among the written). */
        tap_ok(st.frames_written == before.frames_written && st.frames_discarded - before.frames_discarded == 2000,
               "size limit: the 2000 records of the failed flush count as discarded (%llu), none as written (%llu)",
               (unsigned long long)(st.frames_discarded - before.frames_discarded),
               (unsigned long long)(st.frames_written - before.frames_written));
        summarise(path, false, &s);
        tap_ok(s.opened && s.rows >= 0 && s.rows <= 2000 && s.complete == 0,
               "size limit: the failed file still opens for SWMR readers (%ld rows, %s)", s.rows, s.open_error);

        /* 4. and again a good series */
        m = meta_for("after-full", NULL);
        roid_writer_open(w, good_dir, &m, NULL, 0);
        for (uint64_t i = 0; i < 5; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        roid_writer_map(w, roi, true);
        roid_writer_close(w, NULL, true);
        tap_eq_i64(roid_writer_wait_idle(w), 0, "after the size limit: the next series is written");
        series_path(path, sizeof path, good_dir, "after-full");
        summarise(path, true, &s);
        tap_ok(s.rows == 5 && s.final == 1 && s.labels_rows == 5 && s.labels_ok == 1,
               "after the size limit: 5 rows, final map, labels (%ld, %ld, %ld, %ld)", s.rows, s.final, s.labels_rows,
               s.labels_ok);
        roid_writer_free(w);
        roid_roi_free(roi);
}

static void test_bad_args(void) {
        roid_writer *w = NULL;
        tap_ok(roid_writer_new(0, 1, NULL, &w) == -EINVAL && roid_writer_new(4, 0, NULL, &w) == -EINVAL &&
                       roid_writer_new(ROID_WRITER_MAX_QUEUE + 1, 1, NULL, &w) == -EINVAL && !w,
               "bad queue depth or flush interval refused");
        roid_writer_new(4, 1, NULL, &w);
        roid_frame_record rec;
        make_record(0, &rec);
        roid_roi *roi;
        roid_err err;
        roid_roi_new(&rp, NY, NX, &roi, &err);
        tap_ok(roid_writer_append(w, &rec) == -EINVAL && roid_writer_close(w, NULL, true) == -EINVAL &&
                       roid_writer_map(w, roi, false) == -EINVAL,
               "append / map / close without an open series refused");
        roid_results_meta m = meta_for("x", NULL);
        m.roi = NULL;
        tap_eq_i64(roid_writer_open(w, tmp, &m, NULL, 0), -EINVAL, "open without RoI parameters refused");
        m = meta_for("x", NULL);
        roid_writer_open(w, tmp, &m, NULL, 0);
        tap_eq_i64(roid_writer_map(w, roi, true), -EINVAL, "final map of an unfinished state refused");
        roid_writer_free(w); /* closes the open series */
        roid_roi_free(roi);
}

/* A results file is never replaced: the same series id twice (V1 ids
 * restart after a detector initialize), the second opened while the first
 * open is still queued, and a file of that name made by someone else. */
static void test_no_overwrite(void) {
        char dir[300], p1[4096], p2[4096], p3[4096], want[4096];
        snprintf(dir, sizeof dir, "%s/versions", tmp);
        mkdir(dir, 0755);
        roid_writer *w = NULL;
        roid_writer_new(64, 3600, NULL, &w);
        roid_frame_record rec;
        roid_results_meta m = meta_for("dup", NULL);
        int r1 = roid_writer_open(w, dir, &m, p1, sizeof p1);
        for (uint64_t i = 0; i < 7; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        roid_writer_close(w, NULL, true);
        int r2 = roid_writer_open(w, dir, &m, p2, sizeof p2); /* the first open may not have run yet */
        for (uint64_t i = 0; i < 3; i++) {
                make_record(i, &rec);
                roid_writer_append(w, &rec);
        }
        roid_writer_close(w, NULL, true);
        roid_writer_wait_idle(w);
        series_path(want, sizeof want, dir, "dup");
        tap_ok(r1 == 0 && !strcmp(p1, want), "first series: %s", p1);
        series_path(want, sizeof want, dir, "dup_2");
        tap_ok(r2 == 0 && !strcmp(p2, want), "same id again: %s", p2);
        summary s1, s2;
        summarise(p1, true, &s1);
        summarise(p2, true, &s2);
        tap_ok(s1.rows == 7 && s2.rows == 3, "both kept: %ld and %ld rows", s1.rows, s2.rows);

        /* someone else's file of the name: left alone */
        series_path(want, sizeof want, dir, "other");
        FILE *f = fopen(want, "w");
        fputs("not ours\n", f);
        fclose(f);
        m = meta_for("other", NULL);
        int r3 = roid_writer_open(w, dir, &m, p3, sizeof p3);
        roid_writer_close(w, NULL, true);
        roid_writer_wait_idle(w);
        tap_ok(r3 == 0 && strstr(p3, "roid_other_2.h5") && count_in_file(want, "not ours") == 1,
               "an existing file is not replaced (%s written instead)", p3);
        char small[8];
        tap_eq_i64(roid_writer_open(w, dir, &m, small, sizeof small), -ENAMETOOLONG,
                   "a path buffer too small is refused before anything is queued");
        roid_writer_free(w);

        /* 20 series of one id queued faster than the thread creates them:
         * 20 names, 20 files, none failed */
        enum { BURST = 20 };
        roid_writer_new(4 * BURST, 3600, NULL, &w);
        static char paths[BURST][4096];
        m = meta_for("burst", NULL);
        int distinct = 0, opened = 0;
        for (int i = 0; i < BURST; i++) {
                opened += roid_writer_open(w, dir, &m, paths[i], sizeof paths[i]) == 0;
                roid_writer_close(w, NULL, true);
        }
        int r_idle = roid_writer_wait_idle(w);
        roid_writer_stats st;
        roid_writer_get_stats(w, &st);
        for (int i = 0; i < BURST; i++) {
                bool dup = false;
                for (int j = 0; j < i; j++)
                        dup |= !strcmp(paths[i], paths[j]);
                struct stat sb;
                distinct += !dup && stat(paths[i], &sb) == 0;
        }
        tap_ok(opened == BURST && distinct == BURST && r_idle == 0 && st.series_failed == 0,
               "%d opens of one id queued at once: %d distinct files written, %llu failed (last %s)", BURST, distinct,
               (unsigned long long)st.series_failed, paths[BURST - 1]);
        roid_writer_free(w);
}

int main(int argc, char **argv) {
        if (argc == 3 && strcmp(argv[1], "--close-errors") == 0) { /* test_close_errors' child */
                snprintf(tmp, sizeof tmp, "%s", argv[2]);
                setup_geometry();
                return close_errors();
        }
        const char *src = getenv("ROID_SRC");
        snprintf(script, sizeof script, "%s/tests/py/swmr_read.py", src ? src : ".");
        snprintf(tmp, sizeof tmp, "/tmp/roid-writer-XXXXXX");
        if (!mkdtemp(tmp)) {
                tap_ok(false, "mkdtemp");
                return tap_done();
        }
        setup_geometry();
        test_crash(); /* first: fork before this process has threads */
        test_size_sweep();
        test_dark_frame_ids();
        test_live();
        test_batched();
        test_timer();
        test_backpressure();
        test_errors();
        test_bad_args();
        test_no_overwrite();
        test_close_errors();
        roid_geometry_free(&geom);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
                tap_diag("could not remove %s", tmp);
        return tap_done();
}
