#include "ingest/h5source.h"

#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service/h5err.h"
#include "service/log.h"
#include "service/text.h"

#define H5F_BSLZ4 32008
#define H5F_LZ4   32004
#define DATA_PATH "/entry/data/data"

/* The signature is at 0, or after a user block of 512, 1024, 2048, ...
 * bytes (the HDF5 format): as many looks as the file has doublings. */
bool roid_h5_is_hdf5(const char *path) {
        static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
        unsigned char b[8];
        FILE *f = fopen(path, "rb");
        if (!f)
                return false;
        bool ok = false;
        for (long off = 0; !ok; off = off ? off * 2 : 512) {
                if (fseek(f, off, SEEK_SET) != 0 || fread(b, 1, 8, f) != 8)
                        break; /* past the end */
                ok = memcmp(b, sig, 8) == 0;
                if (off > LONG_MAX / 2)
                        break;
        }
        fclose(f);
        return ok;
}

static roid_dtype h5_dtype(hid_t type) {
        if (H5Tget_class(type) != H5T_INTEGER || H5Tget_sign(type) != H5T_SGN_NONE)
                return ROID_DT_NONE;
        switch (H5Tget_size(type)) {
        case 1:
                return ROID_DT_U8;
        case 2:
                return ROID_DT_U16;
        case 4:
                return ROID_DT_U32;
        default:
                return ROID_DT_NONE;
        }
}

/* "int64", "float32", "string", ... for messages about a rejected type. */
static const char *type_str(hid_t type, char *buf, size_t size) {
        static const char *const cls[] = {"integer",  "float",     "time", "string", "bitfield", "opaque",
                                          "compound", "reference", "enum", "vlen",   "array"};
        H5T_class_t c = H5Tget_class(type);
        size_t bits = H5Tget_size(type) * 8;
        if (c == H5T_INTEGER)
                snprintf(buf, size, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
        else if (c == H5T_FLOAT)
                snprintf(buf, size, "float%zu", bits);
        else if (c >= 0 && (size_t)c < sizeof cls / sizeof cls[0])
                snprintf(buf, size, "%s", cls[c]);
        else
                snprintf(buf, size, "of class %d", (int)c);
        return buf;
}

static hid_t native_type(roid_dtype dt) {
        return dt == ROID_DT_U8 ? H5T_NATIVE_UINT8 : dt == ROID_DT_U16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
}

static long long read_int_attr(hid_t obj, const char *name, long long dflt) {
        long long v = dflt;
        if (H5Aexists(obj, name) <= 0)
                return dflt;
        hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
        if (a < 0)
                return dflt;
        /* H5Aread writes every element: only a single integer fits in v. */
        hid_t sp = H5Aget_space(a), t = H5Aget_type(a);
        if (sp < 0 || t < 0 || H5Sget_simple_extent_npoints(sp) != 1 || H5Tget_class(t) != H5T_INTEGER ||
            H5Aread(a, H5T_NATIVE_LLONG, &v) < 0)
                v = dflt;
        if (t >= 0)
                H5Tclose(t);
        if (sp >= 0)
                H5Sclose(sp);
        H5Aclose(a);
        return v;
}

/* Opens the dataset that name leads to.  A link that does not resolve, or
 * leads to something else, is described with its target. */
static int open_dataset(hid_t f, const char *name, hid_t *ret, roid_err *err) {
        char target[200] = "", why[128];
        H5L_info_t li;
        if (H5Lget_info(f, name, &li, H5P_DEFAULT) >= 0 && li.type != H5L_TYPE_HARD) {
                char val[512];
                const char *file, *obj;
                unsigned fl;
                if (li.u.val_size > sizeof val || H5Lget_val(f, name, val, sizeof val, H5P_DEFAULT) < 0)
                        snprintf(target, sizeof target, " (a link)");
                else if (li.type == H5L_TYPE_EXTERNAL && H5Lunpack_elink_val(val, li.u.val_size, &fl, &file, &obj) >= 0)
                        snprintf(target, sizeof target, " -> %s:%s", file, obj);
                else if (li.type == H5L_TYPE_SOFT)
                        snprintf(target, sizeof target, " -> %.*s", (int)strnlen(val, li.u.val_size), val);
        }
        hid_t o = H5Oopen(f, name, H5P_DEFAULT);
        if (o < 0)
                return roid_err_set(err, -EIO, "%s%s cannot be opened: %s", name, target,
                                    roid_h5_reason(why, sizeof why));
        if (H5Iget_type(o) != H5I_DATASET) {
                H5Oclose(o);
                return roid_err_set(err, -EBADMSG, "%s%s is not a dataset", name, target);
        }
        *ret = o;
        return 0;
}

typedef struct {
        roid_comp comp;
        unsigned elem;
        H5D_layout_t layout;
        hsize_t chunk[3]; /* chunk dimensions, when chunked */
        bool chunked_per_frame;
} h5_layout;

static int dataset_layout(hid_t ds, const char *name, hid_t type, uint32_t rows, uint32_t cols, size_t elem,
                          h5_layout *ret, roid_err *err) {
        h5_layout l = {.comp = ROID_COMP_NONE, .elem = (unsigned)elem};
        hid_t pl = H5Dget_create_plist(ds);
        if (pl < 0)
                return roid_err_set(err, -EIO, "%s: cannot read the dataset's creation properties", name);
        int r = 0;
        hsize_t cd[3] = {0};
        l.layout = H5Pget_layout(pl);
        if (l.layout == H5D_CHUNKED && H5Pget_chunk(pl, 3, cd) == 3) {
                memcpy(l.chunk, cd, sizeof l.chunk);
                l.chunked_per_frame = cd[0] == 1 && cd[1] == rows && cd[2] == cols;
        }
        int nf = H5Pget_nfilters(pl);
        if (nf > 1) {
                r = roid_err_set(err, -ENOTSUP, "%s: a pipeline of %d filters (roid decodes one: 32008 or 32004)", name,
                                 nf);
        } else if (nf == 1) {
                unsigned flags, cdv[8] = {0};
                size_t ncd = 8;
                char fname[64] = "";
                H5Z_filter_t id = H5Pget_filter2(pl, 0, &flags, &ncd, cdv, sizeof fname, fname, NULL);
                if (id == H5F_BSLZ4) {
                        /* The plugin compresses only with cd_values[4] = 2 and shuffles
                         * elements of cd_values[2] bytes. */
                        if (ncd < 5)
                                r = roid_err_set(err, -ENOTSUP, "%s: bitshuffle filter without LZ4 compression", name);
                        else if (cdv[4] != 2)
                                r = roid_err_set(err, -ENOTSUP,
                                                 "%s: bitshuffle filter with compression %u (only LZ4 = 2)", name,
                                                 cdv[4]);
                        else if (cdv[2] != elem)
                                r = roid_err_set(err, -EBADMSG,
                                                 "%s: bitshuffle filter element size %u, the pixels have %zu bytes",
                                                 name, cdv[2], elem);
                        l.comp = ROID_COMP_BSLZ4;
                } else if (id == H5F_LZ4) {
                        l.comp = ROID_COMP_LZ4_H5;
                } else {
                        r = roid_err_set(err, -ENOTSUP, "%s: HDF5 filter %d (%s) is not one roid decodes", name,
                                         (int)id, fname[0] ? fname : "unnamed");
                }
        }
        H5Pclose(pl);
        if (r < 0)
                return r;
        if (l.comp != ROID_COMP_NONE && !l.chunked_per_frame)
                return roid_err_set(
                        err, -ENOTSUP, "%s: chunks of %llu x %llu x %llu, not one frame (1 x %u x %u) per chunk", name,
                        (unsigned long long)cd[0], (unsigned long long)cd[1], (unsigned long long)cd[2], rows, cols);
        /* Raw chunks are decoded as they are stored; roid's codecs give little-endian pixels. */
        if (l.comp != ROID_COMP_NONE && elem > 1 && H5Tget_order(type) == H5T_ORDER_BE)
                return roid_err_set(err, -ENOTSUP, "%s: big-endian pixels in compressed chunks", name);
        *ret = l;
        return 0;
}

/* Frames are read one by one up to the declared count: make sure that count
 * is backed by storage, so a lying or unfinished file cannot keep us reading
 * fill values.  *ret_written is the number of chunks written (chunk per frame).
 * A virtual dataset has no storage of its own: vds_open() checks its sources. */
static int check_storage(hid_t ds, hid_t space, const char *name, const h5_layout *lay, uint64_t nframes,
                         size_t frame_bytes, hsize_t filesize, hsize_t *ret_written, roid_err *err) {
        char why[128];
        if (lay->chunked_per_frame) {
                hsize_t n = 0;
                if (H5Dget_num_chunks(ds, space, &n) < 0)
                        return roid_err_set(err, -EIO, "%s: cannot read the chunk index: %s", name,
                                            roid_h5_reason(why, sizeof why));
                *ret_written = n;
        } else if (lay->layout == H5D_CONTIGUOUS) {
                haddr_t off = H5Dget_offset(ds);
                uint64_t bytes;
                if (nframes == 0)
                        return 0;
                if (off == HADDR_UNDEF)
                        return roid_err_set(err, -EBADMSG, "%s: pixel data not written (no storage allocated)", name);
                if (__builtin_mul_overflow(nframes, (uint64_t)frame_bytes, &bytes) || off > filesize ||
                    bytes > filesize - off)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: %llu frames at offset %llu do not fit in the file of %llu bytes "
                                            "(truncated?)",
                                            name, (unsigned long long)nframes, (unsigned long long)off,
                                            (unsigned long long)filesize);
        } else if (lay->layout == H5D_CHUNKED && nframes) {
                /* Every chunk of the grid written; edge chunks of a grid that does
                 * not divide the dataset count once, as HDF5 stores them whole. */
                hsize_t d[3], n = 0, want = 1;
                if (H5Sget_simple_extent_dims(space, d, NULL) != 3 || H5Dget_num_chunks(ds, space, &n) < 0)
                        return roid_err_set(err, -EIO, "%s: cannot read the chunk index: %s", name,
                                            roid_h5_reason(why, sizeof why));
                for (int k = 0; k < 3; k++)
                        want *= (d[k] + lay->chunk[k] - 1) / lay->chunk[k];
                if (n < want)
                        return roid_err_set(err, -EBADMSG,
                                            "%s: %llu of its %llu chunks of %llu x %llu x %llu written (unfinished?)",
                                            name, (unsigned long long)n, (unsigned long long)want,
                                            (unsigned long long)lay->chunk[0], (unsigned long long)lay->chunk[1],
                                            (unsigned long long)lay->chunk[2]);
        }
        return 0;
}

/* The size of the file holding ds (a master's data file for a linked one). */
static int dataset_file_size(hid_t ds, hsize_t *ret) {
        hid_t f = H5Iget_file_id(ds);
        if (f < 0)
                return -EIO;
        herr_t e = H5Fget_filesize(f, ret);
        const hid_t why = e < 0 ? H5Eget_current_stack() : H5I_INVALID_HID;
        H5Fclose(f);
        if (why >= 0) /* the reason outlives the close, for the caller's roid_h5_reason */
                H5Eset_current_stack(why);
        return e < 0 ? -EIO : 0;
}

/* ---- virtual datasets (VDS) ----
 * HDF5 reads the parts of a VDS whose source file or dataset cannot be opened
 * as fill values, without an error.  So each mapping's source is opened here
 * first, found the way HDF5 finds it, and a frame is read only when every
 * pixel of it comes from a mapping whose source opened. */

#define VDS_MAX_MAPPINGS 4096 /* far more than a detector's data files per series */
#define VDS_NAME_MAX     4096 /* source file and dataset names, as PATH_MAX */

typedef struct {
        hid_t vspace;   /* the mapping's selection in the VDS */
        hsize_t lo, hi; /* the frames it touches; lo > hi: none */
        char *file, *dset;
        char why[96]; /* "": the source opened */
} vds_map;

typedef struct {
        vds_map *m;
        size_t n, n_bad;
        size_t *active, n_active; /* mappings touching the current run of frames */
        hsize_t next_change;      /* first frame after that run */
        bool started;
        char msg[256]; /* why the last frame asked about is not read */
} vds_maps;

static void vds_free(vds_maps *v) {
        for (size_t i = 0; i < v->n; i++) {
                if (v->m[i].vspace >= 0)
                        H5Sclose(v->m[i].vspace);
                free(v->m[i].file);
                free(v->m[i].dset);
        }
        free(v->m);
        free(v->active);
        memset(v, 0, sizeof *v);
}

/* prefix + '/' + name into buf, as HDF5 joins them; false if it does not fit. */
static bool join_path(char *buf, size_t size, const char *prefix, size_t plen, const char *name) {
        bool slash = plen > 0 && prefix[plen - 1] != '/';
        int n = snprintf(buf, size, "%.*s%s%s", (int)plen, prefix, slash ? "/" : "", name);
        return n >= 0 && (size_t)n < size;
}

static hid_t try_open(const char *path) {
        return H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
}

/* Opens a mapping's source file as HDF 1.10 does (H5Pset_virtual in
 * H5Ppublic.h): an absolute name as it is, else its last component; then
 * under each prefix of HDF5_VDS_PREFIX (':'-separated), under the prefix of
 * the dataset's access list (HDF5_VDS_PREFIX when set, "${ORIGIN}" standing
 * for the VDS file's directory), in the VDS file's directory, relative to the
 * working directory, and in the directory of the VDS file's real path. */
static hid_t open_source_file(hid_t vfile, hid_t dapl, const char *name) {
        static char cand[2 * VDS_NAME_MAX + 64], vpath[VDS_NAME_MAX], extdir[2 * VDS_NAME_MAX], pfx[VDS_NAME_MAX];
        hid_t f;
        const char *tmp = name;
        if (name[0] == '/') {
                if ((f = try_open(name)) >= 0)
                        return f;
                tmp = strrchr(name, '/') + 1;
        }
        /* The VDS file's directory, absolute (HDF5's "extpath"). */
        extdir[0] = '\0';
        ssize_t vl = H5Fget_name(vfile, vpath, sizeof vpath);
        if (vl > 0 && (size_t)vl < sizeof vpath) {
                const char *slash = strrchr(vpath, '/');
                size_t dl = slash ? (size_t)(slash - vpath) + 1 : 0;
                char cwd[VDS_NAME_MAX];
                if (vpath[0] == '/')
                        snprintf(extdir, sizeof extdir, "%.*s", (int)dl, vpath);
                else if (getcwd(cwd, sizeof cwd))
                        snprintf(extdir, sizeof extdir, "%s/%.*s", cwd, (int)dl, vpath);
        }
        const char *env = getenv("HDF5_VDS_PREFIX");
        if (env && *env) {
                for (const char *p = env; *p;) {
                        const char *e = strchr(p, ':');
                        size_t len = e ? (size_t)(e - p) : strlen(p);
                        if (len && join_path(cand, sizeof cand, p, len, tmp) && (f = try_open(cand)) >= 0)
                                return f;
                        p += len + (e != NULL);
                }
        }
        const char *prop = env && *env ? env : NULL;
        if (!prop) {
                ssize_t pl = H5Pget_virtual_prefix(dapl, NULL, 0);
                if (pl > 0 && (size_t)pl < sizeof pfx && H5Pget_virtual_prefix(dapl, pfx, sizeof pfx) == pl)
                        prop = pfx;
        }
        if (prop && *prop && strcmp(prop, ".") != 0) {
                static const char origin[] = "${ORIGIN}";
                char full[2 * VDS_NAME_MAX];
                bool fits = true;
                if (strncmp(prop, origin, sizeof origin - 1) == 0) {
                        int n = snprintf(full, sizeof full, "%s%s", extdir, prop + sizeof origin - 1);
                        fits = n >= 0 && (size_t)n < sizeof full;
                } else {
                        fits = strlen(prop) < sizeof full;
                        if (fits)
                                strcpy(full, prop);
                }
                if (fits && join_path(cand, sizeof cand, full, strlen(full), tmp) && (f = try_open(cand)) >= 0)
                        return f;
        }
        if (extdir[0] && join_path(cand, sizeof cand, extdir, strlen(extdir), tmp) && (f = try_open(cand)) >= 0)
                return f;
        if ((f = try_open(tmp)) >= 0)
                return f;
        char *real = vl > 0 ? realpath(vpath, NULL) : NULL;
        f = -1;
        if (real) {
                char *slash = strrchr(real, '/');
                if (slash && join_path(cand, sizeof cand, real, (size_t)(slash - real) + 1, tmp))
                        f = try_open(cand);
                free(real);
        }
        return f;
}

/* Is the source dataset's storage there for everything the mapping selects?
 * why is left empty when it is. */
static void check_source(hid_t src, hid_t srcspace, char *why, size_t size) {
        hid_t sp = H5Dget_space(src), pl = H5Dget_create_plist(src);
        hsize_t d[H5S_MAX_RANK], lo[H5S_MAX_RANK], hi[H5S_MAX_RANK], cd[H5S_MAX_RANK];
        int rank = sp >= 0 ? H5Sget_simple_extent_dims(sp, d, NULL) : -1;
        if (rank < 0 || pl < 0) {
                snprintf(why, size, "cannot be read (shape or properties)");
                goto out;
        }
        /* An "all" selection is stored without the source's extent (HDF5 takes
         * it from the source when opened); a hyperslab must lie inside it. */
        if (H5Sget_select_type(srcspace) == H5S_SEL_HYPERSLABS && H5Sget_select_npoints(srcspace) > 0) {
                int srank = H5Sget_simple_extent_ndims(srcspace);
                if (srank != rank) {
                        snprintf(why, size, "is %d-D, the mapping selects in %d-D", rank, srank);
                        goto out;
                }
                if (H5Sget_select_bounds(srcspace, lo, hi) < 0) {
                        snprintf(why, size, "mapping selection unreadable");
                        goto out;
                }
                for (int k = 0; k < rank; k++)
                        if (hi[k] >= d[k]) {
                                snprintf(why, size, "has %llu elements in dimension %d, the mapping reads up to %llu",
                                         (unsigned long long)d[k], k, (unsigned long long)hi[k]);
                                goto out;
                        }
        }
        H5D_layout_t layout = H5Pget_layout(pl);
        if (layout == H5D_CONTIGUOUS) {
                hsize_t fsize = 0, bytes = H5Dget_storage_size(src);
                haddr_t off = H5Dget_offset(src);
                hssize_t npts = H5Sget_simple_extent_npoints(sp);
                if (npts > 0 && off == HADDR_UNDEF)
                        snprintf(why, size, "is not written (no storage allocated)");
                else if (npts > 0 && dataset_file_size(src, &fsize) == 0 && (off > fsize || bytes > fsize - off))
                        snprintf(why, size, "does not fit in its file of %llu bytes (truncated?)",
                                 (unsigned long long)fsize);
        } else if (layout == H5D_CHUNKED) {
                /* HDF5 decodes a virtual dataset's sources itself: a filter without its
                 * plugin (Debian has none for bitshuffle) fails every frame */
                for (int k = 0, nf = H5Pget_nfilters(pl); k < nf; k++) {
                        unsigned flags = 0, fc = 0;
                        size_t ne = 0;
                        char fname[32] = "";
                        const H5Z_filter_t id =
                                H5Pget_filter2(pl, (unsigned)k, &flags, &ne, NULL, sizeof fname, fname, &fc);
                        if (id >= 0 && H5Zfilter_avail(id) <= 0) {
                                snprintf(why, size, "needs HDF5 filter %d%s%.20s%s (no plugin)", (int)id,
                                         fname[0] ? " (" : "", fname, fname[0] ? ")" : "");
                                goto out;
                        }
                }
                hsize_t n = 0, want = 1;
                if (H5Pget_chunk(pl, rank, cd) != rank || H5Dget_num_chunks(src, sp, &n) < 0) {
                        snprintf(why, size, "chunk index unreadable");
                        goto out;
                }
                for (int k = 0; k < rank; k++)
                        want *= cd[k] ? (d[k] + cd[k] - 1) / cd[k] : 0;
                if (n < want)
                        snprintf(why, size, "has %llu of its %llu chunks written (unfinished?)", (unsigned long long)n,
                                 (unsigned long long)want);
        } else if (layout == H5D_VIRTUAL) {
                snprintf(why, size, "is itself virtual (nested mappings are not followed)");
        }
out:
        if (pl >= 0)
                H5Pclose(pl);
        if (sp >= 0)
                H5Sclose(sp);
}

/* Opens the source of mapping m and fills m->why when it cannot be read. */
static void probe_source(hid_t ds, vds_map *m, hid_t srcspace) {
        hid_t vfile = H5Iget_file_id(ds), dapl = H5Dget_access_plist(ds), sf = -1, src = -1;
        if (vfile < 0 || dapl < 0) {
                snprintf(m->why, sizeof m->why, "cannot be looked up");
                goto out;
        }
        if (strcmp(m->file, ".") == 0) {
                sf = vfile;
                vfile = -1;
        } else if ((sf = open_source_file(vfile, dapl, m->file)) < 0) {
                snprintf(m->why, sizeof m->why, "source file not found or not HDF5");
                goto out;
        }
        hid_t o = H5Oopen(sf, m->dset, H5P_DEFAULT);
        if (o < 0) {
                snprintf(m->why, sizeof m->why, "no such dataset in the source file");
                goto out;
        }
        bool is_ds = H5Iget_type(o) == H5I_DATASET;
        H5Oclose(o);
        if (!is_ds || (src = H5Dopen2(sf, m->dset, H5P_DEFAULT)) < 0) {
                snprintf(m->why, sizeof m->why, "source is not a readable dataset");
                goto out;
        }
        char why[96] = "";
        check_source(src, srcspace, why, sizeof why);
        if (why[0])
                snprintf(m->why, sizeof m->why, "source dataset %.80s", why);
out:
        if (src >= 0)
                H5Dclose(src);
        if (sf >= 0)
                H5Fclose(sf);
        if (vfile >= 0)
                H5Fclose(vfile);
        if (dapl >= 0)
                H5Pclose(dapl);
}

static bool unlimited_sel(hid_t sp) {
        hsize_t start[H5S_MAX_RANK], stride[H5S_MAX_RANK], count[H5S_MAX_RANK], block[H5S_MAX_RANK];
        int rank = H5Sget_simple_extent_ndims(sp);
        if (rank <= 0 || rank > H5S_MAX_RANK || H5Sget_select_type(sp) != H5S_SEL_HYPERSLABS ||
            H5Sis_regular_hyperslab(sp) <= 0 || H5Sget_regular_hyperslab(sp, start, stride, count, block) < 0)
                return false;
        for (int k = 0; k < rank; k++)
                if (count[k] == H5S_UNLIMITED || block[k] == H5S_UNLIMITED)
                        return true;
        return false;
}

#define VDS_SHOWN 255

static void shorten(char **s) {
        if (*s && strlen(*s) > VDS_SHOWN) {
                (*s)[VDS_SHOWN] = '\0';
                char *n = realloc(*s, VDS_SHOWN + 1);
                if (n)
                        *s = n;
        }
}

/* One name of mapping i (file or dataset), bounded. */
static int mapping_name(hid_t dcpl, size_t i, bool file, const char *name, char **ret, roid_err *err) {
        ssize_t len = file ? H5Pget_virtual_filename(dcpl, i, NULL, 0) : H5Pget_virtual_dsetname(dcpl, i, NULL, 0);
        if (len < 0)
                return roid_err_set(err, -EIO, "%s: mapping %zu: source %s name unreadable", name, i,
                                    file ? "file" : "dataset");
        if (len == 0 || len >= VDS_NAME_MAX)
                return roid_err_set(err, -EBADMSG, "%s: mapping %zu: source %s name of %zd bytes (1 to %d)", name, i,
                                    file ? "file" : "dataset", len, VDS_NAME_MAX - 1);
        char *s = malloc((size_t)len + 1);
        if (!s)
                return roid_err_set(err, -ENOMEM, "%s: no memory for a mapping's name", name);
        ssize_t got = file ? H5Pget_virtual_filename(dcpl, i, s, (size_t)len + 1)
                           : H5Pget_virtual_dsetname(dcpl, i, s, (size_t)len + 1);
        if (got != len) {
                free(s);
                return roid_err_set(err, -EIO, "%s: mapping %zu: source %s name unreadable", name, i,
                                    file ? "file" : "dataset");
        }
        s[len] = '\0';
        *ret = s;
        return 0;
}

/* Reads the mappings of the VDS ds and opens every source.  Unlimited and
 * printf-style mappings (whose sources are found only while reading) are
 * refused.  Mappings whose source cannot be read are logged here; the frames
 * they touch are failed by vds_frame(). */
static int vds_open(hid_t ds, const char *name, const char *uid, long long first, vds_maps *ret, roid_err *err) {
        vds_maps v = {0};
        size_t n = 0;
        int r = 0;
        hid_t dcpl = H5Dget_create_plist(ds);
        if (dcpl < 0 || H5Pget_virtual_count(dcpl, &n) < 0) {
                r = roid_err_set(err, -EIO, "%s: cannot read the virtual dataset's mappings", name);
                goto out;
        }
        if (n > VDS_MAX_MAPPINGS) {
                r = roid_err_set(err, -EMSGSIZE, "%s: virtual dataset of %zu mappings (at most %d)", name, n,
                                 VDS_MAX_MAPPINGS);
                goto out;
        }
        v.m = calloc(n ? n : 1, sizeof *v.m);
        v.active = calloc(n ? n : 1, sizeof *v.active);
        if (!v.m || !v.active) {
                r = roid_err_set(err, -ENOMEM, "%s: no memory for %zu mappings", name, n);
                goto out;
        }
        for (; v.n < n; v.n++) {
                size_t i = v.n;
                vds_map *m = &v.m[i];
                m->vspace = -1;
                m->lo = 1;
                m->hi = 0;
                if ((r = mapping_name(dcpl, i, true, name, &m->file, err)) < 0 ||
                    (r = mapping_name(dcpl, i, false, name, &m->dset, err)) < 0) {
                        v.n++; /* so vds_free() sees the name read */
                        goto out;
                }
                hid_t src = H5Pget_virtual_srcspace(dcpl, i);
                m->vspace = H5Pget_virtual_vspace(dcpl, i);
                if (src < 0 || m->vspace < 0) {
                        if (src >= 0)
                                H5Sclose(src);
                        v.n++;
                        r = roid_err_set(err, -EIO, "%s: mapping %zu (%.60s:%.60s): selection unreadable", name, i,
                                         m->file, m->dset);
                        goto out;
                }
                H5S_sel_type vt = H5Sget_select_type(m->vspace);
                hsize_t lo[3], hi[3];
                if (unlimited_sel(m->vspace) || unlimited_sel(src) || strchr(m->file, '%') || strchr(m->dset, '%')) {
                        r = roid_err_set(err, -ENOTSUP,
                                         "%s: mapping %zu (%.60s:%.60s) is unlimited or printf-style; roid replays "
                                         "fixed mappings only",
                                         name, i, m->file, m->dset);
                } else if (vt != H5S_SEL_NONE && vt != H5S_SEL_ALL && vt != H5S_SEL_HYPERSLABS) {
                        r = roid_err_set(err, -ENOTSUP, "%s: mapping %zu (%.60s:%.60s): point selection", name, i,
                                         m->file, m->dset);
                } else if (H5Sget_simple_extent_ndims(m->vspace) != 3) {
                        r = roid_err_set(err, -EBADMSG, "%s: mapping %zu (%.60s:%.60s) is not 3-D", name, i, m->file,
                                         m->dset);
                } else if (H5Sget_select_npoints(m->vspace) > 0) {
                        if (H5Sget_select_bounds(m->vspace, lo, hi) < 0)
                                r = roid_err_set(err, -EIO, "%s: mapping %zu (%.60s:%.60s): selection unreadable", name,
                                                 i, m->file, m->dset);
                        m->lo = lo[0];
                        m->hi = hi[0];
                        if (r == 0)
                                probe_source(ds, m, src);
                }
                /* Kept for messages only: bounded to VDS_SHOWN bytes each. */
                shorten(&m->file);
                shorten(&m->dset);
                H5Sclose(src);
                if (r < 0) {
                        v.n++;
                        goto out;
                }
                if (m->why[0]) {
                        v.n_bad++;
                        ROID_LOG_LIMITED(
                                ROID_LOG_ERR,
                                "%s: virtual dataset %s: images %llu..%llu map to %s:%s: %s; they are not replayed "
                                "[frames_failed]",
                                uid, name, (unsigned long long)(first + m->lo), (unsigned long long)(first + m->hi),
                                m->file, m->dset, m->why);
                }
        }
out:
        if (dcpl >= 0)
                H5Pclose(dcpl);
        if (r < 0)
                vds_free(&v);
        else
                *ret = v;
        return r;
}

/* NULL when frame i of the VDS is read from sources that opened, every pixel
 * of it; else why not.  Frames are asked about in increasing order: the
 * mappings touching them change only at a mapping's first or last frame. */
static const char *vds_frame(vds_maps *v, hsize_t i, uint32_t rows, uint32_t cols) {
        if (!v->started || i >= v->next_change) {
                v->started = true;
                v->n_active = 0;
                v->next_change = HSIZE_UNDEF;
                for (size_t k = 0; k < v->n; k++) {
                        const vds_map *m = &v->m[k];
                        if (m->lo > m->hi)
                                continue;
                        if (m->lo <= i && i <= m->hi)
                                v->active[v->n_active++] = k;
                        hsize_t c = m->lo > i ? m->lo : m->hi >= i ? m->hi + 1 : HSIZE_UNDEF;
                        if (c < v->next_change)
                                v->next_change = c;
                }
        }
        hsize_t start[3] = {i, 0, 0}, end[3] = {i, rows - 1, cols - 1}, cnt[3] = {1, rows, cols};
        hssize_t want = (hssize_t)rows * cols, got = 0;
        hid_t acc = -1;
        const char *bad = NULL;
        for (size_t a = 0; a < v->n_active && !bad; a++) {
                const vds_map *m = &v->m[v->active[a]];
                if (m->why[0]) {
                        if (H5Sselect_intersect_block(m->vspace, start, end) != 0) {
                                snprintf(v->msg, sizeof v->msg, "its source %.100s:%.100s cannot be read", m->file,
                                         m->dset);
                                bad = v->msg;
                        }
                        continue;
                }
                hid_t part = H5Scopy(m->vspace);
                hssize_t np = -1;
                if (part >= 0 && H5Sselect_hyperslab(part, H5S_SELECT_AND, start, NULL, cnt, NULL) >= 0)
                        np = H5Sget_select_npoints(part);
                if (np < 0) {
                        bad = "mapping selection unreadable";
                } else if (np > 0 && acc < 0) {
                        acc = part;
                        part = -1;
                } else if (np > 0 && H5Smodify_select(acc, H5S_SELECT_OR, part) < 0) {
                        bad = "mapping selections cannot be combined";
                }
                if (part >= 0)
                        H5Sclose(part);
        }
        if (acc >= 0) {
                got = H5Sget_select_npoints(acc);
                H5Sclose(acc);
        }
        if (!bad && got != want) {
                snprintf(v->msg, sizeof v->msg, "%lld of its %lld pixels are mapped to a source", (long long)got,
                         (long long)want);
                bad = v->msg;
        }
        return bad;
}

/* ---- a master file's series metadata ----
 * The DECTRIS filewriter keeps what the stream's start message says in the
 * master file: /entry/instrument/detector (NXdetector), its detectorSpecific
 * group and /entry/instrument/beam (NXbeam).  All of it is optional and comes
 * from outside: a field of the wrong type, shape or units, not finite, out of
 * range or too long is left unknown with a warning naming it; the frames are
 * replayed whatever the metadata says. */

#define DET_PATH      "/entry/instrument/detector"
#define DSPEC_PATH    DET_PATH "/detectorSpecific"
#define META_TEXT_MAX 4096 /* stored bytes of a string that is read at all */

typedef enum { Q_NONE, Q_PIXELS, Q_LENGTH, Q_TIME, Q_ENERGY, Q_WAVELENGTH } quantity;

static const char *const quantity_name[] = {"", "pixels", "a length", "a time", "an energy", "a wavelength"};

/* The units attribute's spellings seen in NeXus files, and the factor to the
 * unit roid_start_info uses (pixels, m, s, eV, Angstrom). */
static const struct {
        quantity q;
        const char *name;
        double scale;
} unit_table[] = {
        {Q_PIXELS, "pixel", 1},
        {Q_PIXELS, "pixels", 1},
        {Q_LENGTH, "m", 1},
        {Q_LENGTH, "mm", 1e-3},
        {Q_LENGTH, "um", 1e-6},
        {Q_LENGTH, "micron", 1e-6},
        {Q_LENGTH, "microns", 1e-6},
        {Q_TIME, "s", 1},
        {Q_TIME, "ms", 1e-3},
        {Q_TIME, "us", 1e-6},
        {Q_ENERGY, "eV", 1},
        {Q_ENERGY, "keV", 1e3},
        {Q_WAVELENGTH, "angstrom", 1},
        {Q_WAVELENGTH, "Angstrom", 1},
        {Q_WAVELENGTH, "A", 1},
        {Q_WAVELENGTH, "nm", 10},
        {Q_WAVELENGTH, "m", 1e10},
};

/* A dataset or an attribute: the reads below serve both. */
typedef struct {
        hid_t id;
        bool attr;
} h5obj;

static hid_t obj_space(h5obj o) {
        return o.attr ? H5Aget_space(o.id) : H5Dget_space(o.id);
}
static hid_t obj_type(h5obj o) {
        return o.attr ? H5Aget_type(o.id) : H5Dget_type(o.id);
}
static herr_t obj_read(h5obj o, hid_t mt, void *buf) {
        return o.attr ? H5Aread(o.id, mt, buf) : H5Dread(o.id, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
}

/* One value: a scalar, or an array of exactly one element (as some writers
 * store a number).  Otherwise why says what the shape is. */
static bool one_element(hid_t sp, char *why, size_t wn) {
        hsize_t d[H5S_MAX_RANK];
        H5S_class_t c = H5Sget_simple_extent_type(sp);
        int rank = H5Sget_simple_extent_ndims(sp);
        if (c == H5S_NULL) {
                snprintf(why, wn, "is empty (null dataspace), one value expected");
                return false;
        }
        if (c < 0 || rank < 0 || rank > H5S_MAX_RANK || H5Sget_simple_extent_dims(sp, d, NULL) != rank) {
                snprintf(why, wn, "has a shape that cannot be read");
                return false;
        }
        if (rank == 0 || (rank == 1 && d[0] == 1))
                return true;
        int n = snprintf(why, wn, "is %d-D (", rank);
        for (int i = 0; i < rank && i < 3 && n > 0 && (size_t)n < wn; i++)
                n += snprintf(why + n, wn - (size_t)n, "%s%llu", i ? " x " : "", (unsigned long long)d[i]);
        if (n > 0 && (size_t)n < wn)
                snprintf(why + n, wn - (size_t)n, "%s), one value expected", rank > 3 ? " x ..." : "");
        return false;
}

/* A string of at most size - 1 bytes of UTF-8, fixed or variable length, into
 * out.  A longer one is refused, not cut: a cut serial number or date would be
 * a wrong one. */
static bool read_text(h5obj o, char *out, size_t size, char *why, size_t wn) {
        char buf[META_TEXT_MAX + 1], ts[32];
        bool ok = false;
        size_t len = 0;
        hid_t sp = obj_space(o), ft = obj_type(o), mt = -1;
        htri_t vl;
        if (sp < 0 || ft < 0) {
                snprintf(why, wn, "has a type or shape that cannot be read");
                goto out;
        }
        if (H5Tget_class(ft) != H5T_STRING) {
                snprintf(why, wn, "is %s, a string expected", type_str(ft, ts, sizeof ts));
                goto out;
        }
        if (!one_element(sp, why, wn))
                goto out;
        if ((vl = H5Tis_variable_str(ft)) < 0 || (mt = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0) {
                snprintf(why, wn, "has a string type that cannot be read");
                goto out;
        }
        if (vl) {
                char *p = NULL;
                /* HDF5 allocates the string as stored (H5Dvlen_get_buf_size, which
                 * would tell its size first, crashes on a scalar in 1.10), so a
                 * master file can make replay hold a string as large as itself
                 * for this call; only META_TEXT_MAX bytes of it are looked at. */
                if (H5Tset_size(mt, H5T_VARIABLE) < 0 || obj_read(o, mt, &p) < 0) {
                        snprintf(why, wn, "cannot be read");
                        goto out;
                }
                len = p ? strnlen(p, META_TEXT_MAX + 1) : 0;
                if (len <= META_TEXT_MAX)
                        memcpy(buf, p, len);
                H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, &p);
        } else {
                size_t sz = H5Tget_size(ft);
                if (sz == 0 || sz > META_TEXT_MAX) {
                        snprintf(why, wn, "is a string of %zu bytes, at most %zu allowed", sz, size - 1);
                        goto out;
                }
                if (H5Tset_size(mt, sz) < 0 || H5Tset_strpad(mt, H5T_STR_NULLPAD) < 0 || obj_read(o, mt, buf) < 0) {
                        snprintf(why, wn, "cannot be read");
                        goto out;
                }
                len = strnlen(buf, sz);
        }
        size_t bad;
        if (len > META_TEXT_MAX)
                snprintf(why, wn, "is a string of more than %d bytes, at most %zu allowed", META_TEXT_MAX, size - 1);
        else if (len >= size)
                snprintf(why, wn, "is a string of %zu bytes, at most %zu allowed", len, size - 1);
        else if ((bad = roid_utf8_invalid_at(buf, len)) < len)
                snprintf(why, wn, "has byte 0x%02x at %zu, not UTF-8", (unsigned char)buf[bad], bad);
        else
                ok = true;
        if (ok) {
                memcpy(out, buf, len);
                out[len] = '\0';
        }
out:
        if (mt >= 0)
                H5Tclose(mt);
        if (ft >= 0)
                H5Tclose(ft);
        if (sp >= 0)
                H5Sclose(sp);
        return ok;
}

/* The factor from the dataset's units attribute to roid's unit for q; 1 when
 * it has none (the DECTRIS filewriter's units are roid's). */
static bool units_scale(hid_t ds, quantity q, double *ret, char *why, size_t wn) {
        *ret = 1;
        htri_t e = H5Aexists(ds, "units");
        if (e == 0)
                return true;
        char u[ROID_NAME_MAX], uwhy[128];
        hid_t a = e > 0 ? H5Aopen(ds, "units", H5P_DEFAULT) : -1;
        bool ok = a >= 0 && read_text((h5obj){a, true}, u, sizeof u, uwhy, sizeof uwhy);
        if (a >= 0)
                H5Aclose(a);
        if (!ok) {
                snprintf(why, wn, "has a units attribute that %s", a >= 0 ? uwhy : "cannot be read");
                return false;
        }
        for (size_t i = 0; i < sizeof unit_table / sizeof unit_table[0]; i++)
                if (unit_table[i].q == q && strcmp(unit_table[i].name, u) == 0) {
                        *ret = unit_table[i].scale;
                        return true;
                }
        snprintf(why, wn, "is in units \"%s\", not %s roid knows", u, quantity_name[q]);
        return false;
}

/* The type of a dataset holding one value of class want (H5T_FLOAT: any
 * number; H5T_INTEGER: an integer of at most 8 bytes), for the caller to
 * close; H5I_INVALID_HID with why saying what it holds instead. */
static hid_t one_value(h5obj o, H5T_class_t want, char *why, size_t wn) {
        char ts[32];
        hid_t sp = obj_space(o), ft = obj_type(o);
        H5T_class_t c = ft >= 0 ? H5Tget_class(ft) : H5T_NO_CLASS;
        bool good = false;
        if (sp < 0 || ft < 0)
                snprintf(why, wn, "has a type or shape that cannot be read");
        else if (want == H5T_FLOAT ? c != H5T_INTEGER && c != H5T_FLOAT : c != want || H5Tget_size(ft) > 8)
                snprintf(why, wn, "is %s, %s expected", type_str(ft, ts, sizeof ts),
                         want == H5T_FLOAT ? "a number" : "an integer");
        else
                good = one_element(sp, why, wn);
        if (sp >= 0)
                H5Sclose(sp);
        if (!good && ft >= 0) {
                H5Tclose(ft);
                ft = H5I_INVALID_HID;
        }
        return good ? ft : H5I_INVALID_HID;
}

static bool read_number(hid_t ds, quantity q, bool positive, double *ret, char *why, size_t wn) {
        h5obj o = {ds, false};
        double v = 0, scale = 1;
        hid_t ft = one_value(o, H5T_FLOAT, why, wn);
        if (ft < 0)
                return false;
        H5Tclose(ft);
        bool ok = false;
        if (obj_read(o, H5T_NATIVE_DOUBLE, &v) < 0)
                snprintf(why, wn, "cannot be read");
        else if (q != Q_NONE && !units_scale(ds, q, &scale, why, wn))
                ;
        else if (!isfinite(v * scale))
                snprintf(why, wn, "is %g, not a finite number", v);
        else if (positive && !(v > 0))
                snprintf(why, wn, "is %g, a positive number expected", v);
        else
                ok = true;
        if (ok)
                *ret = v * scale;
        return ok;
}

/* A count: a positive integer of an integer type. */
static bool read_count(hid_t ds, uint64_t *ret, char *why, size_t wn) {
        h5obj o = {ds, false};
        hid_t ft = one_value(o, H5T_INTEGER, why, wn);
        if (ft < 0)
                return false;
        const bool sgn = H5Tget_sign(ft) != H5T_SGN_NONE;
        H5Tclose(ft);
        long long s = 0;
        unsigned long long u = 0;
        if (obj_read(o, sgn ? H5T_NATIVE_LLONG : H5T_NATIVE_ULLONG, sgn ? (void *)&s : (void *)&u) < 0) {
                snprintf(why, wn, "cannot be read");
                return false;
        }
        if (sgn ? s <= 0 : u == 0) {
                snprintf(why, wn, "is %lld, a positive integer expected", sgn ? s : (long long)u);
                return false;
        }
        *ret = sgn ? (uint64_t)s : u;
        return true;
}

static int link_exists(hid_t f, const char *path, roid_err *err);

static void meta_warn(const char *uid, const char *path, const char *why) {
        roid_log(ROID_LOG_WARNING, "%s: %s %s: left unknown (the frames are replayed)", uid, path, why);
}

/* The dataset at path: 1 opened, 0 absent, -1 there but unusable (warned). */
static int meta_open(hid_t f, const char *uid, const char *path, hid_t *ret) {
        roid_err e = {""};
        int r = link_exists(f, path, &e);
        if (r < 0) {
                meta_warn(uid, path, e.msg);
                return -1;
        }
        if (r == 0)
                return 0;
        hid_t o = H5Oopen(f, path, H5P_DEFAULT);
        if (o < 0 || H5Iget_type(o) != H5I_DATASET) {
                meta_warn(uid, path, o < 0 ? "cannot be opened" : "is not a dataset");
                if (o >= 0)
                        H5Oclose(o);
                return -1;
        }
        *ret = o;
        return 1;
}

static bool meta_number(hid_t f, const char *uid, const char *path, quantity q, bool positive, double *ret) {
        char why[160];
        hid_t ds;
        if (meta_open(f, uid, path, &ds) <= 0)
                return false;
        bool ok = read_number(ds, q, positive, ret, why, sizeof why);
        H5Dclose(ds);
        if (!ok)
                meta_warn(uid, path, why);
        return ok;
}

static bool meta_count(hid_t f, const char *uid, const char *path, uint64_t *ret) {
        char why[160];
        hid_t ds;
        if (meta_open(f, uid, path, &ds) <= 0)
                return false;
        bool ok = read_count(ds, ret, why, sizeof why);
        H5Dclose(ds);
        if (!ok)
                meta_warn(uid, path, why);
        return ok;
}

static bool meta_text(hid_t f, const char *uid, const char *path, char *out, size_t size) {
        char why[160];
        hid_t ds;
        if (meta_open(f, uid, path, &ds) <= 0)
                return false;
        bool ok = read_text((h5obj){ds, false}, out, size, why, sizeof why);
        H5Dclose(ds);
        if (!ok)
                meta_warn(uid, path, why);
        return ok;
}

/* Both of a pair (beam centre, pixel size) or neither. */
static bool meta_pair(hid_t f, const char *uid, const char *px, const char *py, quantity q, bool positive, double *x,
                      double *y) {
        bool hx = meta_number(f, uid, px, q, positive, x), hy = meta_number(f, uid, py, q, positive, y);
        if (hx != hy)
                meta_warn(uid, hx ? px : py, "is there without its other coordinate");
        return hx && hy;
}

/* The images the series was armed for.  As the V1 header (stream1.c, after
 * LiberTEM): one image per trigger in the exte/inte modes, nimages per
 * trigger otherwise; ntrigger is 1 when absent. */
static void meta_number_of_images(hid_t f, const char *uid, const roid_limits *lim, roid_start_info *st) {
        uint64_t nimages = 0, ntrigger = 1, n;
        char mode[ROID_NAME_MAX] = "";
        bool hn = meta_count(f, uid, DSPEC_PATH "/nimages", &nimages);
        bool ht = meta_count(f, uid, DSPEC_PATH "/ntrigger", &ntrigger);
        meta_text(f, uid, DSPEC_PATH "/trigger_mode", mode, sizeof mode);
        bool per_trigger = strcmp(mode, "exte") == 0 || strcmp(mode, "inte") == 0;
        if (per_trigger ? !ht : !hn)
                return;
        if (per_trigger)
                n = ntrigger;
        else if (__builtin_mul_overflow(nimages, ntrigger, &n))
                n = UINT64_MAX;
        if (n > lim->max_images) {
                char why[160];
                snprintf(why, sizeof why, "and ntrigger (trigger mode \"%s\") make more images than max_images %llu",
                         mode, (unsigned long long)lim->max_images);
                meta_warn(uid, DSPEC_PATH "/nimages", why);
                return;
        }
        st->has_number_of_images = true;
        st->number_of_images = n;
}

static void master_metadata(hid_t f, const char *uid, const roid_limits *lim, roid_start_info *st) {
        double v;
        st->has_beam_center = meta_pair(f, uid, DET_PATH "/beam_center_x", DET_PATH "/beam_center_y", Q_PIXELS, false,
                                        &st->beam_center_x, &st->beam_center_y);
        st->has_pixel_size = meta_pair(f, uid, DET_PATH "/x_pixel_size", DET_PATH "/y_pixel_size", Q_LENGTH, true,
                                       &st->pixel_size_x, &st->pixel_size_y);
        st->has_count_time = meta_number(f, uid, DET_PATH "/count_time", Q_TIME, true, &st->count_time);
        st->has_frame_time = meta_number(f, uid, DET_PATH "/frame_time", Q_TIME, true, &st->frame_time);
        if (meta_number(f, uid, DET_PATH "/sensor_thickness", Q_LENGTH, true, &v))
                st->sensor_thickness = v;
        if (meta_number(f, uid, DET_PATH "/threshold_energy", Q_ENERGY, true, &v))
                st->threshold_energy[0] = v;
        st->has_energy = meta_number(f, uid, DSPEC_PATH "/photon_energy", Q_ENERGY, true, &st->incident_energy);
        st->has_wavelength = meta_number(f, uid, "/entry/instrument/beam/incident_wavelength", Q_WAVELENGTH, true,
                                         &st->incident_wavelength);
        st->has_saturation_value = meta_count(f, uid, DET_PATH "/saturation_value", &st->saturation_value);
        meta_text(f, uid, DET_PATH "/description", st->detector_description, sizeof st->detector_description);
        meta_text(f, uid, DET_PATH "/detector_number", st->detector_serial_number, sizeof st->detector_serial_number);
        meta_text(f, uid, DET_PATH "/sensor_material", st->sensor_material, sizeof st->sensor_material);
        meta_text(f, uid, DSPEC_PATH "/data_collection_date", st->arm_date, sizeof st->arm_date);
        meta_number_of_images(f, uid, lim, st);
}

/* The pixel mask of the detector (any bit set: excluded), as uint32 rows x
 * cols; NULL when absent or unusable (warned).  Only a mask of the frames'
 * shape is of use: the series would refuse another. */
static uint32_t *master_mask(hid_t f, const char *uid, uint32_t rows, uint32_t cols) {
        static const char path[] = DSPEC_PATH "/pixel_mask";
        char why[160] = "", ts[32], reason[128];
        hsize_t d[2];
        hid_t ds;
        if (meta_open(f, uid, path, &ds) <= 0)
                return NULL;
        uint32_t *m = NULL;
        hid_t sp = H5Dget_space(ds), ft = H5Dget_type(ds);
        int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
        if (sp < 0 || ft < 0)
                snprintf(why, sizeof why, "has a type or shape that cannot be read");
        else if (H5Tget_class(ft) != H5T_INTEGER || H5Tget_sign(ft) != H5T_SGN_NONE || H5Tget_size(ft) > 4)
                snprintf(why, sizeof why, "is %s, uint32 expected", type_str(ft, ts, sizeof ts));
        else if (rank != 2 || H5Sget_simple_extent_dims(sp, d, NULL) != 2)
                snprintf(why, sizeof why, "is %d-D, 2-D expected", rank);
        else if (d[0] != rows || d[1] != cols)
                snprintf(why, sizeof why, "is %llu x %llu, the frames are %u x %u", (unsigned long long)d[0],
                         (unsigned long long)d[1], rows, cols);
        else if (!(m = malloc((size_t)rows * cols * sizeof *m)))
                snprintf(why, sizeof why, "needs more memory than there is (%zu bytes)",
                         (size_t)rows * cols * sizeof *m);
        else if (H5Dread(ds, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, m) < 0)
                snprintf(why, sizeof why, "cannot be read: %s", roid_h5_reason(reason, sizeof reason));
        if (why[0]) {
                free(m);
                m = NULL;
                meta_warn(uid, path, why);
        }
        if (ft >= 0)
                H5Tclose(ft);
        if (sp >= 0)
                H5Sclose(sp);
        H5Dclose(ds);
        return m;
}

static void send_end(roid_ingest *in, const char *uid) {
        roid_msg end = {.type = ROID_MSG_END};
        snprintf(end.series_unique_id, sizeof end.series_unique_id, "%s", uid);
        roid_ingest_msg(in, &end);
}

/* The image id of a dataset's first frame: its image_nr_low - 1 (the
 * filewriter counts from 1), else next: where the previous data file of the
 * master ended (a writer that leaves the attribute out would otherwise start
 * every data file at image 0, and all but the first would be duplicates). */
static uint64_t first_image_id(hid_t ds, uint64_t next) {
        const long long low = read_int_attr(ds, "image_nr_low", LLONG_MIN);
        return low == LLONG_MIN ? next : low < 1 ? 0 : (uint64_t)low - 1;
}

/* One dataset (N, rows, cols): the whole series of a data file, or one part
 * of a master file's series (start sent with the first, end by the caller).
 * *next_id: in, the first image id when the dataset does not say; out, the
 * id after its last frame.  n_images: the master's data files' images, for
 * the start when the master has no nimages (0: unknown). */
static int replay_dataset(hid_t ds, const char *name, const char *uid, bool send_start, bool whole, hid_t master,
                          uint64_t *next_id, uint64_t n_images, roid_ingest *in, roid_err *err) {
        const roid_tracker *tr = roid_ingest_tracker(in);
        const roid_limits *lim = &tr->lim;
        hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
        uint8_t *chunk = NULL, *raw = NULL;
        uint32_t *mask = NULL;
        int r = 0;
        hsize_t dims[3], filesize = 0, vds_failed = 0;
        vds_maps vds = {0};
        char why[128], ts[32];
        if (space < 0 || type < 0 || dataset_file_size(ds, &filesize) < 0) {
                r = roid_err_set(err, -EIO, "%s: cannot read its shape and type: %s", name,
                                 roid_h5_reason(why, sizeof why));
                goto out;
        }
        int ndims = H5Sget_simple_extent_ndims(space);
        if (ndims != 3 || H5Sget_simple_extent_dims(space, dims, NULL) != 3) {
                r = roid_err_set(err, -EBADMSG, "%s is %d-D, not 3-D (frames, rows, cols)", name, ndims);
                goto out;
        }
        roid_dtype dt = h5_dtype(type);
        if (dt == ROID_DT_NONE) {
                r = roid_err_set(err, -ENOTSUP, "%s: pixel type %s is not uint8, uint16 or uint32", name,
                                 type_str(type, ts, sizeof ts));
                goto out;
        }
        if (dims[1] == 0 || dims[2] == 0) {
                r = roid_err_set(err, -EBADMSG, "%s: frames of %llu x %llu have no pixels", name,
                                 (unsigned long long)dims[1], (unsigned long long)dims[2]);
                goto out;
        }
        if (dims[1] > UINT32_MAX || dims[2] > UINT32_MAX || dims[1] * dims[2] > lim->max_pixels) {
                r = roid_err_set(err, -EMSGSIZE, "%s: frames of %llu x %llu exceed max_pixels %llu", name,
                                 (unsigned long long)dims[1], (unsigned long long)dims[2],
                                 (unsigned long long)lim->max_pixels);
                goto out;
        }
        uint32_t rows = (uint32_t)dims[1], cols = (uint32_t)dims[2];
        size_t esz = roid_dtype_size(dt), frame_bytes = (size_t)rows * cols * esz;
        if (frame_bytes > lim->max_frame_bytes) {
                r = roid_err_set(err, -EMSGSIZE, "%s: frames of %u x %u %s exceed max_frame_bytes %llu", name, rows,
                                 cols, roid_dtype_name(dt), (unsigned long long)lim->max_frame_bytes);
                goto out;
        }
        /* Image ids beyond max_images cannot be tracked: reject before reading N frames. */
        if (dims[0] > lim->max_images) {
                r = roid_err_set(err, -EMSGSIZE, "%s declares %llu frames, more than max_images %llu", name,
                                 (unsigned long long)dims[0], (unsigned long long)lim->max_images);
                goto out;
        }
        h5_layout lay = {0};
        r = dataset_layout(ds, name, type, rows, cols, esz, &lay, err);
        if (r < 0)
                goto out;
        hsize_t written = dims[0];
        r = check_storage(ds, space, name, &lay, dims[0], frame_bytes, filesize, &written, err);
        if (r < 0)
                goto out;
        const uint64_t first = first_image_id(ds, *next_id);
        /* Every frame beyond max_images: reading them all to drop each as out of
         * range (an image_nr_low of 2^62 in a fuzzed file) would say nothing new. */
        if (first >= lim->max_images) {
                r = roid_err_set(err, -EMSGSIZE, "%s: image ids %llu..%llu (image_nr_low) beyond max_images %llu", name,
                                 (unsigned long long)first, (unsigned long long)(first + dims[0] - 1),
                                 (unsigned long long)lim->max_images);
                goto out;
        }
        *next_id = first + dims[0];
        bool is_vds = lay.layout == H5D_VIRTUAL;
        if (is_vds && (r = vds_open(ds, name, uid, first, &vds, err)) < 0)
                goto out;

        roid_msg m = {.type = ROID_MSG_START, .format = ROID_FMT_NONE, .series_id = 0};
        snprintf(m.series_unique_id, sizeof m.series_unique_id, "%s", uid);
        roid_start_info *st = &m.u.start;
        st->has_image_size = true;
        st->image_size_x = cols;
        st->image_size_y = rows;
        st->image_dtype = dt;
        st->has_number_of_images = whole;
        st->number_of_images = (uint64_t)first + dims[0];
        st->n_channels = 1;
        snprintf(st->channels[0], ROID_NAME_MAX, "data");
        for (int c = 0; c < ROID_MAX_CHANNELS; c++)
                st->threshold_energy[c] = NAN; /* not known, as message.h says */
        if (send_start && master >= 0) {
                st->has_number_of_images = false;
                master_metadata(master, uid, lim, st);
                if (!st->has_number_of_images && n_images) {
                        roid_log(ROID_LOG_NOTICE,
                                 "%s: the master does not say how many images the series has (" DSPEC_PATH
                                 "/nimages): %" PRIu64 " images, as its data files hold",
                                 uid, n_images);
                        st->has_number_of_images = true;
                        st->number_of_images = n_images;
                }
                /* The series copies the mask when it opens, inside roid_ingest_msg. */
                if ((mask = master_mask(master, uid, rows, cols)))
                        st->pixel_mask[0] = (roid_blob){.data = (const uint8_t *)mask,
                                                        .size = (size_t)rows * cols * sizeof *mask,
                                                        .comp = ROID_COMP_NONE,
                                                        .dtype = ROID_DT_U32,
                                                        .rows = rows,
                                                        .cols = cols};
        }
        if (send_start) {
                r = roid_ingest_msg(in, &m);
                free(mask);
                mask = NULL;
                st->pixel_mask[0] = (roid_blob){0};
                if (r < 0) {
                        roid_err_set(err, r, "%s: the series start was rejected (see the log)", name);
                        goto out;
                }
        }

        if (lay.comp == ROID_COMP_NONE) {
                raw = malloc(frame_bytes);
                if (!raw) {
                        r = roid_err_set(err, -ENOMEM, "%s: no memory for a frame of %zu bytes", name, frame_bytes);
                        goto out;
                }
        }
        size_t chunk_cap = 0;
        hsize_t seen = 0;
        for (hsize_t i = 0; i < dims[0]; i++) {
                if (lay.chunked_per_frame && seen == written) {
                        /* Every written chunk was read: the rest were never written (an
                         * unfinished file).  Counted at once, not frame by frame. */
                        roid_count(tr->ctr, ROID_C_frames_failed, dims[0] - i);
                        roid_log(ROID_LOG_WARNING,
                                 "%s: images %llu..%llu of %s are not written (%llu frames) "
                                 "[frames_failed]",
                                 uid, (unsigned long long)(first + i), (unsigned long long)(first + dims[0] - 1), name,
                                 (unsigned long long)(dims[0] - i));
                        break;
                }
                roid_msg im = {.type = ROID_MSG_IMAGE, .series_id = 0};
                memcpy(im.series_unique_id, m.series_unique_id, sizeof im.series_unique_id);
                im.u.image.image_id = (uint64_t)first + i;
                im.u.image.n_channels = 1;
                roid_channel_blob *cb = &im.u.image.channel[0];
                snprintf(cb->name, sizeof cb->name, "data");
                cb->blob = (roid_blob){.dtype = dt, .rows = rows, .cols = cols, .comp = ROID_COMP_NONE};
                hsize_t off[3] = {i, 0, 0}, csize = 0;
                /* A frame that cannot be read goes on as an empty blob: the ingest
                 * reports and counts it like any frame that does not decode. */
                const char *bad = NULL;
                if (lay.chunked_per_frame) {
                        herr_t e = H5Dget_chunk_storage_size(ds, off, &csize);
                        seen += e >= 0 && csize > 0;
                        if (e < 0)
                                bad = "chunk index unreadable";
                        else if (csize == 0)
                                bad = "chunk not written";
                        else if (csize > filesize)
                                bad = "chunk larger than the file";
                        else if (csize > lim->max_message_bytes)
                                bad = "chunk larger than max_message_bytes";
                } else if (is_vds) {
                        bad = vds_frame(&vds, i, rows, cols);
                        vds_failed += bad != NULL;
                }
                if (bad) {
                        csize = 0;
                } else if (lay.comp != ROID_COMP_NONE) {
                        uint32_t fmask = 0;
                        if (csize > chunk_cap) {
                                uint8_t *n = realloc(chunk, (size_t)csize);
                                if (!n) {
                                        r = roid_err_set(err, -ENOMEM, "%s: no memory for a chunk of %llu bytes", name,
                                                         (unsigned long long)csize);
                                        goto out;
                                }
                                chunk = n;
                                chunk_cap = (size_t)csize;
                        }
                        if (H5Dread_chunk(ds, H5P_DEFAULT, off, &fmask, chunk) < 0) {
                                bad = "chunk unreadable";
                                csize = 0;
                        }
                        cb->blob.data = chunk;
                        cb->blob.comp = fmask ? ROID_COMP_NONE : lay.comp; /* mask bit set: filter skipped */
                        cb->blob.comp_elem_size = lay.elem;
                } else {
                        hsize_t cnt[3] = {1, rows, cols};
                        hid_t ms = H5Screate_simple(3, cnt, NULL);
                        /* The native type: HDF5 converts big-endian files. */
                        if (ms < 0 || H5Sselect_hyperslab(space, H5S_SELECT_SET, off, NULL, cnt, NULL) < 0 ||
                            H5Dread(ds, native_type(dt), ms, space, H5P_DEFAULT, raw) < 0)
                                bad = "frame unreadable";
                        if (ms >= 0)
                                H5Sclose(ms);
                        cb->blob.data = raw;
                        csize = bad ? 0 : frame_bytes;
                }
                if (bad)
                        ROID_LOG_LIMITED(ROID_LOG_ERR, "%s: image %llu of %s: %s", uid,
                                         (unsigned long long)im.u.image.image_id, name, bad);
                cb->blob.size = (size_t)csize;
                roid_ingest_msg(in, &im);
        }
        if (whole)
                send_end(in, uid);
        for (size_t k = 0; k < vds.n && vds.n_bad; k++) {
                const vds_map *vm = &vds.m[k];
                if (vm->why[0]) {
                        /* Like a master's missing data file: an error once the rest is replayed. */
                        r = roid_err_set(err, -ENOENT,
                                         "%s: virtual dataset: source %.70s:%.60s: %.60s; %llu frames not replayed "
                                         "(%zu of %zu sources unreadable)",
                                         name, vm->file, vm->dset, vm->why, (unsigned long long)vds_failed, vds.n_bad,
                                         vds.n);
                        break;
                }
        }
out:
        vds_free(&vds);
        free(mask);
        free(chunk);
        free(raw);
        if (type >= 0)
                H5Tclose(type);
        if (space >= 0)
                H5Sclose(space);
        return r;
}

/* Does the link at path exist?  Each component is looked up in turn, so a
 * missing group (0) is told apart from metadata that cannot be read (a
 * negative errno, err set). */
static int link_exists(hid_t f, const char *path, roid_err *err) {
        char buf[128], why[128];
        if (strlen(path) >= sizeof buf)
                return roid_err_set(err, -ENAMETOOLONG, "%.60s...: path longer than %zu bytes", path, sizeof buf - 1);
        snprintf(buf, sizeof buf, "%s", path);
        for (char *p = buf + 1;; p++) {
                if (*p && *p != '/')
                        continue;
                char c = *p;
                *p = '\0';
                htri_t e = H5Lexists(f, buf, H5P_DEFAULT);
                if (e < 0)
                        return roid_err_set(err, -EIO, "cannot look up %s: %s", buf, roid_h5_reason(why, sizeof why));
                if (e == 0 || !c)
                        return e > 0;
                *p = c;
        }
}

#define MASTER_DATA_MAX 100000
typedef char data_name[32];

/* Whether the series of uid is the one open (this replay sent its start). */
static bool series_open(roid_ingest *in, const char *uid) {
        const roid_tracker *tr = roid_ingest_tracker(in);
        return tr->open && strcmp(tr->cur.series_unique_id, uid) == 0;
}

/* A master's i-th data file (i >= 1), /entry/data/data_%06d: 1 with the
 * dataset open in *ret, 0 when there is no such link, a negative errno. */
static int open_data_file(hid_t f, int i, data_name name, hid_t *ret, roid_err *err) {
        snprintf(name, sizeof(data_name), "/entry/data/data_%06d", i);
        int r = link_exists(f, name, err);
        if (r <= 0)
                return r;
        r = open_dataset(f, name, ret, err);
        return r < 0 ? r : 1;
}

/* The images a master's data files hold, ids counted as replay_dataset
 * counts them; 0 when a file cannot be opened or read (the replay then
 * reports it). */
static uint64_t master_data_images(hid_t f) {
        uint64_t next = 0, end = 0;
        for (int i = 1; i < MASTER_DATA_MAX; i++) {
                data_name name;
                roid_err err = {{0}};
                hid_t ds;
                const int r = open_data_file(f, i, name, &ds, &err);
                if (r == 0)
                        break;
                if (r < 0)
                        return 0;
                hsize_t dims[3];
                hid_t sp = H5Dget_space(ds);
                const bool ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 3 &&
                                H5Sget_simple_extent_dims(sp, dims, NULL) == 3;
                if (ok) {
                        next = first_image_id(ds, next) + dims[0];
                        end = next > end ? next : end;
                }
                if (sp >= 0)
                        H5Sclose(sp);
                H5Dclose(ds);
                if (!ok)
                        return 0;
        }
        return end;
}

int roid_h5_replay(const char *path, roid_ingest *in, roid_err *err) {
        char why[128];
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we report errors ourselves */
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
                return roid_err_set(err, -EIO, "%s: cannot open as HDF5: %s", path, roid_h5_reason(why, sizeof why));
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        int n = 0;
        hid_t ds;
        int r = link_exists(f, DATA_PATH, err);
        if (r > 0) {
                r = open_dataset(f, DATA_PATH, &ds, err);
                if (r == 0) {
                        uint64_t next = 0;
                        r = replay_dataset(ds, DATA_PATH, base, true, true, -1, &next, 0, in, err);
                        H5Dclose(ds);
                }
                n = 1;
        } else if (r == 0) {
                /* A master file: /entry/data/data_000001, ... (external links). */
                /* A data file that cannot be read is an error once the others are
                 * replayed: the frames of the files after it are not lost with it. */
                const uint64_t n_images = master_data_images(f);
                uint64_t next = 0;
                unsigned n_bad = 0;
                int r_bad = 0;
                for (int i = 1; i < MASTER_DATA_MAX; i++) {
                        data_name name;
                        roid_err e1 = {""};
                        r = open_data_file(f, i, name, &ds, &e1);
                        if (r == 0)
                                break;
                        if (r > 0) {
                                r = replay_dataset(ds, name, base, !series_open(in, base), false, f, &next, n_images,
                                                   in, &e1);
                                H5Dclose(ds);
                                n++;
                        }
                        if (r < 0 && !n_bad++) {
                                r_bad = r;
                                if (err)
                                        *err = e1;
                        }
                }
                r = r_bad;
                if (n_bad > 1)
                        roid_err_prefix(err, "%u data files not replayed, the first", n_bad);
                /* Only a series we started: the first part may have been rejected before its start. */
                if (n && series_open(in, base))
                        send_end(in, base);
        }
        H5Fclose(f);
        if (r == 0 && n == 0)
                r = roid_err_set(err, -ENOENT, "%s: no %s or /entry/data/data_000001", path, DATA_PATH);
        else if (r < 0)
                roid_err_prefix(err, "%s", path);
        return r;
}
