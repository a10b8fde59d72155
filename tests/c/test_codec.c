/* test_codec.c - bitshuffle-LZ4 / LZ4 codecs against DECTRIS and bitshuffle
 * test vectors, real detector data, round trips and corrupt input. */
#include "ingest/codec.h"
#include "tap.h"

#include <hdf5.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GUARD      64
#define GUARD_BYTE 0xA5

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static void fill_random(uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)(rnd() >> 32);
}

/* Detector-like pixels: few counts, a ring, gap/masked pixels at the maximum. */
static void fill_structured(uint8_t *p, size_t n, size_t s, size_t width) {
        uint64_t maxv = s >= 8 ? UINT64_MAX : (1ull << (8 * s)) - 1;
        for (size_t i = 0; i < n; i++) {
                size_t x = i % width, y = i / width;
                uint64_t v = rnd() % 4 == 0 ? rnd() % 3 : 0;
                long dx = (long)x - (long)width / 2, dy = (long)y - 40;
                long r2 = dx * dx + dy * dy;
                if (r2 > 900 && r2 < 1100)
                        v += 50 + rnd() % 200;
                if (x % 97 == 95 || x % 97 == 96)
                        v = maxv;
                v &= maxv;
                for (size_t j = 0; j < s; j++)
                        p[i * s + j] = (uint8_t)(v >> (8 * (j % 8)));
        }
}

static size_t unhex(const char *h, uint8_t *out) {
        size_t n = 0;
        for (; h[0] && h[1]; h += 2) {
                while (*h == ' ')
                        h++;
                unsigned v;
                sscanf(h, "%2x", &v);
                out[n++] = (uint8_t)v;
        }
        return n;
}

static uint32_t be32(const uint8_t *p) {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Out of line: GCC 12's bounds analysis misfires on inlined stores into
 * malloc'd buffers under -fsanitize=address. */
__attribute__((noinline)) static void put_be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* dst with guard regions on both sides. */
typedef struct {
        uint8_t *mem;
        uint8_t *p;
        size_t n;
} guarded;

static guarded guard_new(size_t n) {
        guarded g = {.n = n};
        g.mem = malloc(n + 2 * GUARD);
        memset(g.mem, GUARD_BYTE, n + 2 * GUARD);
        g.p = g.mem + GUARD;
        return g;
}

static bool guard_intact(const guarded *g) {
        for (size_t i = 0; i < GUARD; i++)
                if (g->mem[i] != GUARD_BYTE || g->mem[GUARD + g->n + i] != GUARD_BYTE)
                        return false;
        return true;
}

/* ---- 1. DECTRIS test vectors (eiger-stream.md §3.1) ------------------------ */

static const char plaintext[] = "My hair is shingled, and the longest strands are about nine inches long.";

static void test_dectris_vectors(void) {
        static const char *bs1 = "0000000000000048 00000040 00000040 "
                                 "f21b33ab224827a91a5540ca40c0a54a8c6201c0cfea4b86b8262b7149e4000288b3420a0002ec48"
                                 "3000feff0100f0017bfbe7eeefefbef70000000000000000 00000009 8053f2f9b802ff7b00";
        static const char *bs2 = "0000000000000048 00000040 00000042 "
                                 "f031158013f488888382818b2924d1a9005008008a04feffffffddabbbf600000000f525e503b080"
                                 "3c5a80fb935e47c210da31102e04fffffffff7fdffdf00000000 6573206c6f6e672e";
        uint8_t in[256], out[72];
        roid_err err = {""};
        size_t n;

        n = unhex(bs1, in);
        memset(out, 0, sizeof out);
        int r = roid_bslz4_decode(in, n, out, 72, 1, &err);
        tap_ok(r == 0 && memcmp(out, plaintext, 72) == 0, "DECTRIS bslz4 elem 1 vector decodes (r=%d %s)", r, err.msg);

        n = unhex(bs2, in);
        memset(out, 0, sizeof out);
        r = roid_bslz4_decode(in, n, out, 72, 2, &err);
        tap_ok(r == 0 && memcmp(out, plaintext, 72) == 0, "DECTRIS bslz4 elem 2 vector decodes (r=%d %s)", r, err.msg);

        /* lz4 HDF5 framing, both blocks stored raw (csize == block size). */
        n = unhex("0000000000000048 00000040 00000040", in);
        memcpy(in + n, plaintext, 64);
        n += 64;
        n += unhex("00000008", in + n);
        memcpy(in + n, plaintext + 64, 8);
        n += 8;
        memset(out, 0, sizeof out);
        r = roid_lz4h5_decode(in, n, out, 72, &err);
        tap_ok(r == 0 && memcmp(out, plaintext, 72) == 0, "DECTRIS lz4 raw-block vector decodes (r=%d %s)", r, err.msg);

        /* Edge cases listed from compression_test.cc. */
        n = unhex("0000000000000001 00002000 89", in);
        r = roid_bslz4_decode(in, n, out, 1, 1, &err);
        tap_ok(r == 0 && out[0] == 0x89, "bslz4 orig 1: only the raw leftover byte (r=%d)", r);
        n = unhex("0000000000000003 00000002 00000002 4142 00000001 43", in);
        r = roid_lz4h5_decode(in, n, out, 3, &err);
        tap_ok(r == 0 && memcmp(out, "ABC", 3) == 0, "lz4 orig 3 block 2, raw blocks (r=%d %s)", r, err.msg);
        n = unhex("0000000000000000 00002000", in);
        tap_ok(roid_bslz4_decode(in, n, out, 0, 2, &err) == 0 && roid_lz4h5_decode(in, n, out, 0, &err) == 0,
               "empty data (orig 0) decodes");
}

/* ---- 2. bitshuffle's regression file, and EIGER HDF5 files ----------------- */

typedef struct {
        char names[64][64];
        int n;
} name_list;

static herr_t collect_name(hid_t g, const char *name, const H5L_info_t *info, void *op) {
        (void)g;
        (void)info;
        name_list *l = op;
        if (l->n < 64)
                snprintf(l->names[l->n++], sizeof l->names[0], "%s", name);
        return 0;
}

/* Reads the only (or idx-th) raw chunk of a dataset: malloc'd, *size set. */
static uint8_t *read_raw_chunk(hid_t d, hsize_t idx, hsize_t *offset, size_t *ret_size) {
        unsigned mask;
        haddr_t addr;
        hsize_t size;
        hid_t sp = H5Dget_space(d);
        herr_t e = H5Dget_chunk_info(d, sp, idx, offset, &mask, &addr, &size);
        H5Sclose(sp);
        if (e < 0)
                return NULL;
        uint8_t *buf = malloc(size ? size : 1);
        uint32_t filters = 0;
        if (H5Dread_chunk(d, H5P_DEFAULT, offset, &filters, buf) < 0) {
                free(buf);
                return NULL;
        }
        *ret_size = size;
        return buf;
}

typedef int (*bs_decoder)(const uint8_t *, size_t, void *, size_t, size_t, roid_err *);

/* One group of the regression file: compressed datasets with HDF5
 * compression code `comp` (2 = LZ4, 3 = zstd) next to their originals. */
static void test_regression_group(hid_t f, const char *group, unsigned comp, bs_decoder decode, const char *what) {
        name_list names = {.n = 0};
        H5Literate_by_name(f, group, H5_INDEX_NAME, H5_ITER_INC, NULL, collect_name, &names, H5P_DEFAULT);
        tap_ok(names.n > 0, "regression file has %d %s datasets", names.n, what);
        int checked = 0;
        for (int i = 0; i < names.n; i++) {
                char cpath[128], opath[128];
                snprintf(cpath, sizeof cpath, "%s/%s", group, names.names[i]);
                snprintf(opath, sizeof opath, "original/%s", names.names[i]);
                hid_t dc = H5Dopen2(f, cpath, H5P_DEFAULT), dor = H5Dopen2(f, opath, H5P_DEFAULT);
                hid_t pl = H5Dget_create_plist(dc);
                unsigned flags, cd[8] = {0};
                size_t ncd = 8;
                char fname[128];
                H5Z_filter_t fid = H5Pget_filter2(pl, 0, &flags, &ncd, cd, sizeof fname, fname, NULL);
                hid_t t = H5Dget_type(dor);
                size_t es = H5Tget_size(t);
                hid_t sp = H5Dget_space(dor);
                hssize_t npts = H5Sget_simple_extent_npoints(sp);
                hsize_t chunk[1] = {0};
                H5Pget_chunk(pl, 1, chunk);
                size_t nbytes = (size_t)npts * es;
                uint8_t *orig = malloc(nbytes);
                H5Dread(dor, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, orig);
                hsize_t nchunks = 0;
                hid_t csp = H5Dget_space(dc);
                H5Dget_num_chunks(dc, csp, &nchunks);
                H5Sclose(csp);
                bool ok = fid == 32008 && ncd >= 5 && cd[2] == es && cd[4] == comp && nchunks > 0;
                char why[ROID_ERR_MAX + 64] = "";
                if (!ok)
                        snprintf(why, sizeof why, "filter %d, %zu cd_values, elem %u, comp %u, %llu chunks", (int)fid,
                                 ncd, cd[2], cd[4], (unsigned long long)nchunks);
                /* HDF5 filters whole chunks, edge chunks included. */
                size_t cbytes = (size_t)chunk[0] * es;
                guarded g = guard_new(cbytes);
                for (hsize_t c = 0; ok && c < nchunks; c++) {
                        hsize_t off[1];
                        size_t rsize;
                        uint8_t *raw = read_raw_chunk(dc, c, off, &rsize);
                        roid_err err = {""};
                        int r = raw ? decode(raw, rsize, g.p, cbytes, es, &err) : -EIO;
                        size_t first = (size_t)off[0] * es;
                        size_t cmp = first + cbytes <= nbytes ? cbytes : nbytes - first;
                        if (r < 0 || memcmp(g.p, orig + first, cmp) != 0 || !guard_intact(&g)) {
                                snprintf(why, sizeof why, "chunk %llu: r=%d %s", (unsigned long long)c, r, err.msg);
                                ok = false;
                        } else if (c == 0 && be32(raw + 8) != cd[3] * es) {
                                snprintf(why, sizeof why, "header block size differs from cd_values[3] x elem");
                                ok = false;
                        }
                        free(raw);
                }
                checked += ok;
                tap_ok(ok, "regression %s/%s: elem %zu, %lld elements, block %u elements, decoded byte for byte %s",
                       group, names.names[i], es, (long long)npts, cd[3], why);
                free(g.mem);
                free(orig);
                H5Sclose(sp);
                H5Tclose(t);
                H5Pclose(pl);
                H5Dclose(dc);
                H5Dclose(dor);
        }
        tap_diag("regression file: %d of %d %s datasets decoded", checked, names.n, what);
}

static void test_regression_file(void) {
        const char *path = tap_data("bitshuffle/regression_0.4.0.h5");
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (!tap_ok(f >= 0, "open %s", path))
                return;
        test_regression_group(f, "compressed", 2, roid_bslz4_decode, "bitshuffle-LZ4");
        test_regression_group(f, "compressed_zstd", 3, roid_bszstd_decode, "bitshuffle-zstd");
        H5Fclose(f);
}

/* EIGER data files written by detectors: one frame per chunk, filter 32008 or
 * 32004; reference values from testdata/README.md. */
static void test_eiger_h5(const char *rel, bool bslz4, uint64_t want_max, uint64_t want_valid) {
        const char *path = tap_data(rel);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (!tap_ok(f >= 0, "open %s", path))
                return;
        hid_t d = H5Dopen2(f, "/entry/data/data", H5P_DEFAULT);
        hid_t sp = H5Dget_space(d);
        hsize_t dims[3] = {0};
        H5Sget_simple_extent_dims(sp, dims, NULL);
        hsize_t nchunks = 0;
        H5Dget_num_chunks(d, sp, &nchunks);
        tap_ok(dims[0] > 0 && nchunks == dims[0], "%s: %llu frames in %llu chunks", rel, (unsigned long long)dims[0],
               (unsigned long long)nchunks);
        size_t bytes = (size_t)(dims[1] * dims[2] * 2);
        guarded g = guard_new(bytes);
        for (hsize_t c = 0; c < nchunks; c++) {
                hsize_t off[3];
                size_t rsize = 0;
                uint8_t *raw = read_raw_chunk(d, c, off, &rsize);
                roid_err err = {""};
                int r = !raw    ? -EIO
                        : bslz4 ? roid_bslz4_decode(raw, rsize, g.p, bytes, 2, &err)
                                : roid_lz4h5_decode(raw, rsize, g.p, bytes, &err);
                uint64_t nmax = 0, valid = 0;
                const uint16_t *px = (const uint16_t *)g.p;
                for (size_t i = 0; r == 0 && i < bytes / 2; i++) {
                        if (px[i] == 65535)
                                nmax++;
                        else
                                valid += px[i];
                }
                tap_ok(r == 0 && nmax == want_max && valid == want_valid && guard_intact(&g),
                       "%s frame %llu (%llu x %llu, %zu bytes compressed): %llu at 65535, valid sum %llu %s", rel,
                       (unsigned long long)off[0], (unsigned long long)dims[1], (unsigned long long)dims[2], rsize,
                       (unsigned long long)nmax, (unsigned long long)valid, err.msg);
                free(raw);
        }
        free(g.mem);
        H5Sclose(sp);
        H5Dclose(d);
        H5Fclose(f);
}

/* ---- 3. real EIGER2 16M frame (Stream V1 bs16-lz4<) ------------------------ */

static void test_16m_frame(void) {
        const char *path = tap_data("stream1/eiger2-16m-frame.bs16-lz4");
        size_t n = 0;
        uint8_t *src = tap_slurp(path, &n);
        if (!tap_ok(src != NULL, "read %s", path))
                return;
        size_t bytes = (size_t)4148 * 4362 * 2;
        uint16_t *px = malloc(bytes);
        roid_err err = {""};
        double t0 = now();
        int r = roid_bslz4_decode(src, n, px, bytes, 2, &err);
        double t1 = now();
        tap_ok(r == 0, "16M frame decodes (%s)", err.msg);
        uint64_t sum = 0, nmax = 0, valid = 0;
        for (size_t i = 0; i < bytes / 2; i++) {
                sum += px[i];
                if (px[i] == 65535)
                        nmax++;
                else
                        valid += px[i];
        }
        tap_eq_u64(sum, 82120214466ull, "16M frame: sum of all pixels");
        tap_eq_u64(nmax, 1253074, "16M frame: pixels at 65535");
        tap_eq_u64(valid, 9876, "16M frame: valid sum");
        double t2 = now();
        roid_bslz4_decode(src, n, px, bytes, 2, &err);
        double t3 = now();
        tap_diag("16M frame: %zu -> %zu bytes decoded in %.1f ms (%.2f GB/s), again into the same buffer in %.1f ms "
                 "(%.2f GB/s)",
                 n, bytes, 1e3 * (t1 - t0), (double)bytes / (t1 - t0) / 1e9, 1e3 * (t3 - t2),
                 (double)bytes / (t3 - t2) / 1e9);

        /* Through the dispatcher with the V1 shape (rows x cols = 4362 x 4148). */
        roid_blob b = {.data = src,
                       .size = n,
                       .comp = ROID_COMP_BSLZ4,
                       .comp_elem_size = 2,
                       .dtype = ROID_DT_U16,
                       .rows = 4362,
                       .cols = 4148};
        memset(px, 0, bytes);
        r = roid_blob_decode(&b, px, bytes, &err);
        uint64_t sum2 = 0;
        for (size_t i = 0; i < bytes / 2; i++)
                sum2 += px[i];
        tap_ok(r == 0 && sum2 == 82120214466ull, "16M frame via roid_blob_decode (r=%d)", r);
        b.dtype = ROID_DT_U32;
        b.rows = 2181; /* same byte count, element size 4 */
        r = roid_blob_decode(&b, px, bytes, &err);
        tap_ok(r == -EBADMSG && err.msg[0], "blob: bslz4 element size 2 for uint32 data is -EBADMSG: %s", err.msg);
        b = (roid_blob){.data = src,
                        .size = n,
                        .comp = ROID_COMP_BSLZ4,
                        .comp_elem_size = 2,
                        .dtype = ROID_DT_U16,
                        .rows = 2181,
                        .cols = 4148};
        r = roid_blob_decode(&b, px, (size_t)2181 * 4148 * 2, &err);
        tap_ok(r == -EMSGSIZE && strstr(err.msg, "2181 x 4148 x 2") && strstr(err.msg, "36187152"),
               "blob: header size vs frame shape is -EMSGSIZE: %s", err.msg);
        r = roid_blob_decode(&b, px, bytes, &err);
        tap_ok(r == -EINVAL && err.msg[0], "blob: dst_size not rows*cols*size is -EINVAL: %s", err.msg);
        free(px);
        free(src);
}

/* ---- 4. round trips and transpose implementations -------------------------- */

static const roid_bt_impl fast_impls[] = {ROID_BT_SWAR, ROID_BT_SSE2, ROID_BT_AVX2, ROID_BT_GFNI, ROID_BT_AUTO};

static void test_transpose_impls(void) {
        /* around the vector widths, and chunks of one width then another (384, 392, 640) */
        static const size_t counts[] = {8, 16, 64, 120, 128, 136, 248, 256, 264, 384, 392, 640, 1024, 1032, 4096};
        size_t maxb = 4096 * ROID_BSLZ4_MAX_ELEM;
        uint8_t *inbuf = malloc(maxb), *ref = malloc(maxb), *got = malloc(maxb + GUARD), *back = malloc(maxb);
        uint8_t *in = inbuf;
        for (size_t ii = 0; ii < sizeof fast_impls / sizeof fast_impls[0]; ii++) {
                roid_bt_impl impl = fast_impls[ii];
                if (roid_bitunshuffle_block_with(impl, in, got, 8, 1) == -ENOTSUP) {
                        char why[96];
                        snprintf(why, sizeof why, "%s transpose: not available on this CPU", roid_bt_impl_name(impl));
                        tap_skip(why);
                        continue;
                }
                unsigned bad_un = 0, bad_sh = 0, bad_inv = 0, cases = 0;
                for (size_t s = 1; s <= ROID_BSLZ4_MAX_ELEM; s++)
                        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
                                size_t n = counts[c], nb = n * s;
                                /* the input ends where its buffer does: a read past it shows under ASan */
                                uint8_t *src = inbuf + maxb - nb;
                                fill_random(src, nb);
                                cases++;
                                memset(got + nb, GUARD_BYTE, GUARD);
                                roid_bitunshuffle_block_with(ROID_BT_BITWISE, src, ref, n, s);
                                roid_bitunshuffle_block_with(impl, src, got, n, s);
                                bool guard = true;
                                for (size_t i = 0; i < GUARD; i++)
                                        guard &= got[nb + i] == GUARD_BYTE;
                                bad_un += memcmp(ref, got, nb) != 0 || !guard;
                                roid_bitshuffle_block_with(ROID_BT_BITWISE, src, ref, n, s);
                                roid_bitshuffle_block_with(impl, src, got, n, s);
                                bad_sh += memcmp(ref, got, nb) != 0;
                                roid_bitunshuffle_block_with(impl, got, back, n, s);
                                bad_inv += memcmp(src, back, nb) != 0;
                        }
                tap_ok(bad_un == 0, "%s unshuffle == bitwise on %u random blocks (elem 1..%d): %u differ",
                       roid_bt_impl_name(impl), cases, ROID_BSLZ4_MAX_ELEM, bad_un);
                tap_ok(bad_sh == 0, "%s shuffle == bitwise on %u random blocks: %u differ", roid_bt_impl_name(impl),
                       cases, bad_sh);
                tap_ok(bad_inv == 0, "%s unshuffle(shuffle(x)) == x: %u differ", roid_bt_impl_name(impl), bad_inv);
        }
        /* The oracle itself against the layout rule of eiger-stream.md §3.1 on
         * one hand-made block: element 8*b+q with only bit k of byte j set must
         * land in bit q of byte b of row 8*j+k. */
        unsigned bad = 0;
        for (size_t j = 0; j < 2; j++)
                for (size_t k = 0; k < 8; k++)
                        for (size_t e = 0; e < 16; e++) {
                                uint8_t el[32] = {0}, sh[32];
                                el[e * 2 + j] = (uint8_t)(1u << k);
                                roid_bitshuffle_block_with(ROID_BT_BITWISE, el, sh, 16, 2);
                                for (size_t x = 0; x < 32; x++)
                                        bad += sh[x] != (x == (8 * j + k) * 2 + e / 8 ? (uint8_t)(1u << (e % 8)) : 0);
                        }
        tap_ok(bad == 0, "bitwise shuffle follows the bit-row layout rule (%u wrong bytes)", bad);
        tap_ok(roid_bitunshuffle_block_with(ROID_BT_SWAR, in, got, 12, 2) == -EINVAL &&
                       roid_bitunshuffle_block_with(ROID_BT_SWAR, in, got, 16, 17) == -EINVAL,
               "transpose rejects n %% 8 != 0 and elem 17");
        free(inbuf);
        free(ref);
        free(got);
        free(back);
}

static void test_round_trips(void) {
        static const size_t counts[] = {0, 1, 7, 8, 9, 127, 4095, 4100, 4103, 12345, 529420};
        static const size_t blocks[] = {0, 64, 256, 8192, 16384, 1 << 20};
        unsigned cases = 0, bad_bs = 0, bad_h5 = 0, bad_raw = 0, raw_blocks_seen = 0;
        char first_bad[256] = "";
        for (size_t s = 1; s <= 4; s *= 2)
                for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
                        for (int kind = 0; kind < 2; kind++) {
                                size_t n = counts[c], nb = n * s;
                                uint8_t *in = malloc(nb + 1);
                                if (kind)
                                        fill_structured(in, n, s, 1030);
                                else
                                        fill_random(in, nb);
                                guarded g = guard_new(nb);
                                for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
                                        size_t blk = blocks[bi] * (blocks[bi] <= 64 ? s : 1);
                                        size_t cap = roid_bslz4_bound(nb, s, blk);
                                        uint8_t *enc = malloc(cap);
                                        size_t esz = 0;
                                        roid_err err = {""};
                                        int r = roid_bslz4_encode(in, nb, s, blk, enc, cap, &esz);
                                        memset(g.p, 0, nb);
                                        if (r == 0)
                                                r = roid_bslz4_decode(enc, esz, g.p, nb, s, &err);
                                        cases++;
                                        if (r != 0 || memcmp(in, g.p, nb) || !guard_intact(&g)) {
                                                if (!bad_bs++)
                                                        snprintf(first_bad, sizeof first_bad,
                                                                 "bslz4 elem %zu n %zu block %zu: r=%d %.160s", s, n,
                                                                 blk, r, err.msg);
                                        }
                                        free(enc);

                                        /* lz4h5 blocks need not be multiples of anything. */
                                        size_t hblk = blk ? blk + (bi % 2) * 3 : 0;
                                        cap = roid_lz4h5_bound(nb, hblk);
                                        enc = malloc(cap);
                                        r = roid_lz4h5_encode(in, nb, hblk, enc, cap, &esz);
                                        memset(g.p, 0, nb);
                                        if (r == 0) {
                                                uint32_t b = be32(enc + 8);
                                                if (nb >= b && be32(enc + 12) == b)
                                                        raw_blocks_seen++;
                                                r = roid_lz4h5_decode(enc, esz, g.p, nb, &err);
                                        }
                                        if (r != 0 || memcmp(in, g.p, nb) || !guard_intact(&g)) {
                                                if (!bad_h5++)
                                                        snprintf(first_bad, sizeof first_bad,
                                                                 "lz4h5 n %zu block %zu: r=%d %.160s", nb, hblk, r,
                                                                 err.msg);
                                        }
                                        free(enc);
                                }
                                size_t cap = roid_lz4raw_bound(nb);
                                uint8_t *enc = malloc(cap);
                                size_t esz = 0;
                                roid_err err = {""};
                                int r = roid_lz4raw_encode(in, nb, enc, cap, &esz);
                                memset(g.p, 0, nb);
                                if (r == 0)
                                        r = roid_lz4raw_decode(enc, esz, g.p, nb, &err);
                                if (r != 0 || memcmp(in, g.p, nb) || !guard_intact(&g)) {
                                        if (!bad_raw++)
                                                snprintf(first_bad, sizeof first_bad, "lz4raw n %zu: r=%d %.160s", nb,
                                                         r, err.msg);
                                }
                                free(enc);
                                free(g.mem);
                                free(in);
                        }
        tap_ok(bad_bs == 0, "bslz4 round trips (uint8/16/32, random and structured, %u cases): %u fail %s", cases,
               bad_bs, first_bad);
        tap_ok(bad_h5 == 0, "lz4h5 round trips: %u fail %s", bad_h5, first_bad);
        tap_ok(raw_blocks_seen > 0, "lz4h5 encoder stored incompressible first blocks raw (%u times)", raw_blocks_seen);
        tap_ok(bad_raw == 0, "lz4raw round trips: %u fail %s", bad_raw, first_bad);

        /* Encoder argument checks and a too-small output. */
        uint8_t small[16], big[64] = {0};
        size_t esz;
        tap_ok(roid_bslz4_encode(big, 64, 2, 100, small, sizeof small, &esz) == -EINVAL &&
                       roid_bslz4_encode(big, 63, 2, 0, small, sizeof small, &esz) == -EINVAL &&
                       roid_bslz4_encode(big, 64, 0, 0, small, sizeof small, &esz) == -EINVAL,
               "bslz4 encoder rejects a bad block size, odd byte count and elem 0");
        tap_ok(roid_bslz4_encode(big, 64, 1, 64, small, sizeof small, &esz) == -ENOBUFS &&
                       roid_lz4h5_encode(big, 64, 64, small, sizeof small, &esz) == -ENOBUFS &&
                       roid_lz4raw_encode(big, 64, small, 1, &esz) == -ENOBUFS,
               "encoders return -ENOBUFS when dst is too small");
        tap_eq_u64(roid_bslz4_default_block(1), 8192, "default block, elem 1");
        tap_eq_u64(roid_bslz4_default_block(2), 8192, "default block, elem 2");
        tap_eq_u64(roid_bslz4_default_block(4), 8192, "default block, elem 4");
        tap_eq_u64(roid_bslz4_default_block(128), 128 * 128, "default block, elem 128 (min 128 elements)");
}

/* ---- 5. corrupt input ------------------------------------------------------ */

typedef int (*decode_fn)(const uint8_t *src, size_t n, void *dst, size_t dst_size, size_t s, roid_err *err);

static int dec_bslz4(const uint8_t *src, size_t n, void *dst, size_t dst_size, size_t s, roid_err *err) {
        return roid_bslz4_decode(src, n, dst, dst_size, s, err);
}

static int dec_lz4h5(const uint8_t *src, size_t n, void *dst, size_t dst_size, size_t s, roid_err *err) {
        (void)s;
        return roid_lz4h5_decode(src, n, dst, dst_size, err);
}

static int dec_lz4raw(const uint8_t *src, size_t n, void *dst, size_t dst_size, size_t s, roid_err *err) {
        (void)s;
        return roid_lz4raw_decode(src, n, dst, dst_size, err);
}

/* Decodes a copy of src (so a read past n hits ASan) into a guarded dst. */
static int try_decode(decode_fn fn, const uint8_t *src, size_t n, size_t dst_size, size_t s, roid_err *err,
                      bool *guard_ok) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, src, n);
        guarded g = guard_new(dst_size);
        err->msg[0] = '\0';
        int r = fn(copy, n, g.p, dst_size, s, err);
        *guard_ok = guard_intact(&g);
        free(g.mem);
        free(copy);
        return r;
}

/* Expects failure with the given errno (0: any negative) and a message. */
static bool expect_fail(decode_fn fn, const uint8_t *src, size_t n, size_t dst_size, size_t s, int want,
                        const char *what) {
        roid_err err;
        bool guard;
        int r = try_decode(fn, src, n, dst_size, s, &err, &guard);
        return tap_ok(r < 0 && (!want || r == want) && err.msg[0] && guard, "%s: r=%d, guard %s: %s", what, r,
                      guard ? "intact" : "OVERWRITTEN", err.msg);
}

static void test_truncations(const char *name, decode_fn fn, const uint8_t *enc, size_t esz, size_t nb, size_t s) {
        unsigned cuts = 0, bad = 0;
        char first[ROID_ERR_MAX + 64] = "";
        for (size_t cut = 0; cut < esz; cut += cut < 200 || esz - cut < 200 ? 1 : 13) {
                roid_err err;
                bool guard;
                int r = try_decode(fn, enc, cut, nb, s, &err, &guard);
                cuts++;
                if (r >= 0 || !err.msg[0] || !guard) {
                        if (!bad++)
                                snprintf(first, sizeof first, "cut %zu: r=%d %s", cut, r, err.msg);
                }
        }
        roid_err err;
        bool guard;
        int r = try_decode(fn, enc, 37, nb, s, &err, &guard);
        tap_ok(bad == 0, "%s truncated at %u cut points: all fail with a message, guard intact %s (e.g. \"%s\")", name,
               cuts, first, r < 0 ? err.msg : "");
}

static void test_corruption(void) {
        size_t s = 2, n = 37003, nb = n * s; /* 9 full blocks, a last block of 136, 3 leftover */
        uint8_t *in = malloc(nb);
        fill_structured(in, n, s, 1030);
        size_t cap = roid_bslz4_bound(nb, s, 0);
        uint8_t *enc = malloc(cap + 256), *bad = malloc(cap + 256);
        size_t esz;
        roid_bslz4_encode(in, nb, s, 0, enc, cap, &esz);
        roid_err err;
        bool guard;
        tap_ok(try_decode(dec_bslz4, enc, esz, nb, s, &err, &guard) == 0 && guard, "corruption base stream decodes");

        test_truncations("bslz4", dec_bslz4, enc, esz, nb, s);

        memcpy(bad, enc, esz);
        bad[7] += 2;
        expect_fail(dec_bslz4, bad, esz, nb, s, -EMSGSIZE, "bslz4 header orig size 2 larger");
        bad[7] -= 4;
        expect_fail(dec_bslz4, bad, esz, nb, s, -EMSGSIZE, "bslz4 header orig size 2 smaller");
        expect_fail(dec_bslz4, enc, esz, nb + 2, s, -EMSGSIZE, "bslz4 caller expects 2 bytes more");
        memcpy(bad, enc, esz);
        put_be32(bad + 8, 0);
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 block size 0");
        memcpy(bad, enc, esz);
        bad[11] = 2; /* 8194: not a multiple of 16 */
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 block size 8194");
        bad[10] = 0x10, bad[11] = 0; /* 4096: valid, but not what the blocks were made with */
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 block size 4096 instead of 8192");
        memcpy(bad, enc, esz);
        bad[9] = 0x20; /* 0x00202000 = 2 MiB + 8 KiB */
        expect_fail(dec_bslz4, bad, esz, nb, s, -EMSGSIZE, "bslz4 block size over the limit");
        expect_fail(dec_bslz4, enc, esz, nb, 0, -EINVAL, "bslz4 element size 0");
        expect_fail(dec_bslz4, enc, esz, nb, 17, -EINVAL, "bslz4 element size 17");
        expect_fail(dec_bslz4, enc, esz, nb, 4, 0, "bslz4 element size 4 for 2-byte data");

        /* Block offsets, for targeted damage. */
        size_t off[16], nblk = 0;
        for (size_t p = 12; nblk < 10; nblk++) {
                off[nblk] = p;
                p += 4 + be32(enc + p);
        }
        memcpy(bad, enc, esz);
        bad[off[0]] = 0x7f;
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 csize 0x7f...");
        memcpy(bad, enc, esz);
        put_be32(bad + off[9], be32(enc + off[9]) + 7); /* 3 leftover x 2 bytes + 1 */
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 last csize larger than the input left");
        memcpy(bad, enc, esz);
        put_be32(bad + off[4], 0);
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 csize 0");

        /* Block 3 replaced by a valid LZ4 block of only 100 bytes. */
        uint8_t small[256];
        int sc = LZ4_compress_default((const char *)in, (char *)small + 4, 100, 250);
        small[0] = 0, small[1] = 0, small[2] = 0, small[3] = (uint8_t)sc;
        size_t pre = off[3], post = off[4];
        memcpy(bad, enc, pre);
        memcpy(bad + pre, small, 4 + (size_t)sc);
        memcpy(bad + pre + 4 + sc, enc + post, esz - post);
        size_t bsz = pre + 4 + (size_t)sc + esz - post;
        int r = try_decode(dec_bslz4, bad, bsz, nb, s, &err, &guard);
        tap_ok(r == -EBADMSG && guard && strstr(err.msg, "block 3 of 10: LZ4 data decodes to 100 bytes, expected 8192"),
               "bslz4 block 3 replaced by a 100-byte LZ4 block: r=%d: %s", r, err.msg);

        /* Block 5's payload overwritten with 0xff: literal lengths run off the end. */
        memcpy(bad, enc, esz);
        memset(bad + off[5] + 4, 0xff, be32(enc + off[5]));
        expect_fail(dec_bslz4, bad, esz, nb, s, -EBADMSG, "bslz4 block 5 payload all 0xff");

        /* Bytes flipped inside blocks: LZ4 has no checksum, so some damage
         * decodes to wrong pixels; what matters is no crash and no overrun. */
        unsigned flips = 0, failed = 0, nomsg = 0, overrun = 0;
        for (size_t k = 0; k < 10; k++) {
                size_t cs = be32(enc + off[k]);
                for (size_t x = 0; x < cs; x += 1 + cs / 40) {
                        memcpy(bad, enc, esz);
                        bad[off[k] + 4 + x] ^= (uint8_t)(1u << (x % 8)) | 0x80;
                        int r = try_decode(dec_bslz4, bad, esz, nb, s, &err, &guard);
                        flips++;
                        failed += r < 0;
                        nomsg += r < 0 && !err.msg[0];
                        overrun += !guard;
                }
        }
        tap_ok(nomsg == 0 && overrun == 0 && failed > 0,
               "bslz4 %u single-byte flips in LZ4 data: %u rejected, all with a message, no overrun", flips, failed);

        memcpy(bad, enc, esz);
        bad[esz] = 0;
        expect_fail(dec_bslz4, bad, esz + 1, nb, s, -EBADMSG, "bslz4 1 trailing byte");
        memset(bad + esz, 0x55, 100);
        expect_fail(dec_bslz4, bad, esz + 100, nb, s, -EBADMSG, "bslz4 100 trailing bytes");
        expect_fail(dec_bslz4, enc, esz - 6, nb, s, -EBADMSG, "bslz4 leftover bytes missing");

        /* lz4h5: the same frame with 8 KiB blocks. */
        size_t hcap = roid_lz4h5_bound(nb, 0);
        uint8_t *h5 = malloc(hcap + 256);
        size_t hsz;
        roid_lz4h5_encode(in, nb, 0, h5, hcap, &hsz);
        tap_ok(try_decode(dec_lz4h5, h5, hsz, nb, 1, &err, &guard) == 0 && guard, "lz4h5 base stream decodes");
        test_truncations("lz4h5", dec_lz4h5, h5, hsz, nb, 1);
        memcpy(bad, h5, hsz);
        bad[7] ^= 1;
        expect_fail(dec_lz4h5, bad, hsz, nb, 1, -EMSGSIZE, "lz4h5 lying orig size");
        memcpy(bad, h5, hsz);
        put_be32(bad + 8, 0);
        expect_fail(dec_lz4h5, bad, hsz, nb, 1, -EBADMSG, "lz4h5 block size 0");
        memcpy(bad, h5, hsz);
        bad[12] = 0x01; /* csize > block size */
        expect_fail(dec_lz4h5, bad, hsz, nb, 1, -EBADMSG, "lz4h5 csize larger than the block");
        memcpy(bad, h5, hsz);
        memset(bad + 16, 0xff, be32(h5 + 12));
        expect_fail(dec_lz4h5, bad, hsz, nb, 1, -EBADMSG, "lz4h5 block 0 payload all 0xff");
        memcpy(bad, h5, hsz);
        bad[hsz] = 7;
        expect_fail(dec_lz4h5, bad, hsz + 1, nb, 1, -EBADMSG, "lz4h5 trailing byte");

        /* lz4raw: the whole frame as one block. */
        size_t rcap = roid_lz4raw_bound(nb);
        uint8_t *raw = malloc(rcap + 16);
        size_t rsz;
        roid_lz4raw_encode(in, nb, raw, rcap, &rsz);
        test_truncations("lz4raw", dec_lz4raw, raw, rsz, nb, 1);
        expect_fail(dec_lz4raw, raw, rsz, nb + 1, 1, -EBADMSG, "lz4raw frame 1 byte larger than the data");
        expect_fail(dec_lz4raw, raw, rsz, nb - 1, 1, -EBADMSG, "lz4raw frame 1 byte smaller than the data");
        expect_fail(dec_lz4raw, raw, rsz, 2 * nb, 1, -EBADMSG, "lz4raw frame twice the data");
        raw[rsz] = 0;
        expect_fail(dec_lz4raw, raw, rsz + 1, nb, 1, -EBADMSG, "lz4raw trailing byte");
        free(raw);
        free(h5);
        free(enc);
        free(bad);
        free(in);
}

/* ---- 6. throughput, for information ---------------------------------------- */

static void bench(void) {
        size_t rows = 512, cols = 1028, n = rows * cols, nb = n * 2;
        uint8_t *frame = malloc(nb), *sh = malloc(nb), *out = malloc(nb);
        fill_structured(frame, n, 2, cols);
        size_t blk = 4096;
        size_t nfull = n / blk, last = (n % blk) & ~(size_t)7;
        for (size_t k = 0; k <= nfull; k++) {
                size_t m = k < nfull ? blk : last;
                if (m)
                        roid_bitshuffle_block(frame + k * blk * 2, sh + k * blk * 2, m, 2);
        }
        roid_bt_impl impls[] = {ROID_BT_BITWISE, ROID_BT_SWAR, ROID_BT_SSE2, ROID_BT_AVX2, ROID_BT_GFNI};
        for (size_t ii = 0; ii < sizeof impls / sizeof impls[0]; ii++) {
                if (roid_bitunshuffle_block_with(impls[ii], sh, out, 8, 2) == -ENOTSUP)
                        continue;
                double t0 = now(), t1;
                unsigned reps = 0;
                do {
                        for (size_t k = 0; k <= nfull; k++) {
                                size_t m = k < nfull ? blk : last;
                                if (m)
                                        roid_bitunshuffle_block_with(impls[ii], sh + k * blk * 2, out + k * blk * 2, m,
                                                                     2);
                        }
                        reps++;
                        t1 = now();
                } while (t1 - t0 < 0.3);
                tap_diag("bit unshuffle %-7s 1028x512 uint16: %.2f GB/s (%u frames)", roid_bt_impl_name(impls[ii]),
                         (double)reps * (double)(nfull * blk + last) * 2 / (t1 - t0) / 1e9, reps);
        }
        size_t cap = roid_bslz4_bound(nb, 2, 0), esz;
        uint8_t *enc = malloc(cap);
        roid_bslz4_encode(frame, nb, 2, 0, enc, cap, &esz);
        roid_err err;
        double t0 = now(), t1;
        unsigned reps = 0;
        do {
                roid_bslz4_decode(enc, esz, out, nb, 2, &err);
                reps++;
                t1 = now();
        } while (t1 - t0 < 0.3);
        tap_diag("bslz4 decode (LZ4 + transpose) 1028x512 uint16, %zu -> %zu bytes: %.2f GB/s", esz, nb,
                 (double)reps * (double)nb / (t1 - t0) / 1e9);
        t0 = now();
        reps = 0;
        do {
                roid_bslz4_encode(frame, nb, 2, 0, enc, cap, &esz);
                reps++;
                t1 = now();
        } while (t1 - t0 < 0.3);
        tap_diag("bslz4 encode 1028x512 uint16: %.2f GB/s", (double)reps * (double)nb / (t1 - t0) / 1e9);
        free(enc);
        free(frame);
        free(sh);
        free(out);
}

int main(void) {
        test_dectris_vectors();
        test_regression_file();
        test_eiger_h5("eiger-h5/eiger1_testmode10_2datafiles_4images_bslz4_data_000001.h5", true, 38164, 10401533);
        test_eiger_h5("eiger-h5/eiger1_testmode10_2datafiles_4images_lz4_data_000001.h5", false, 38164, 10401533);
        test_eiger_h5("eiger-h5/eiger2_simread7_2datafiles_4images_bslz4_data_000001.h5", true, 0, 3648540);
        test_eiger_h5("eiger-h5/eiger2_simread7_2datafiles_4images_lz4_data_000001.h5", false, 0, 3648540);
        test_16m_frame();
        test_transpose_impls();
        test_round_trips();
        test_corruption();
        bench();
        return tap_done();
}
