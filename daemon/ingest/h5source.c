#include "ingest/h5source.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/log.h"

#define H5F_BSLZ4 32008
#define H5F_LZ4   32004

bool roid_h5_is_hdf5(const char *path) {
        static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
        unsigned char b[8];
        FILE *f = fopen(path, "rb");
        if (!f)
                return false;
        bool ok = fread(b, 1, 8, f) == 8 && memcmp(b, sig, 8) == 0;
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

static long long read_int_attr(hid_t obj, const char *name, long long dflt) {
        long long v = dflt;
        if (H5Aexists(obj, name) <= 0)
                return dflt;
        hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
        if (a < 0)
                return dflt;
        if (H5Aread(a, H5T_NATIVE_LLONG, &v) < 0)
                v = dflt;
        H5Aclose(a);
        return v;
}

typedef struct {
        roid_comp comp;
        unsigned elem;
        bool chunked_per_frame;
} h5_layout;

static int dataset_layout(hid_t ds, uint32_t rows, uint32_t cols, size_t elem, h5_layout *ret, roid_err *err) {
        h5_layout l = {.comp = ROID_COMP_NONE, .elem = (unsigned)elem};
        hid_t pl = H5Dget_create_plist(ds);
        if (pl < 0)
                return roid_err_set(err, -EIO, "cannot read the dataset's creation properties");
        int r = 0;
        if (H5Pget_layout(pl) == H5D_CHUNKED) {
                hsize_t cd[3];
                if (H5Pget_chunk(pl, 3, cd) == 3 && cd[0] == 1 && cd[1] == rows && cd[2] == cols)
                        l.chunked_per_frame = true;
        }
        int nf = H5Pget_nfilters(pl);
        for (int i = 0; i < nf && r == 0; i++) {
                unsigned flags, cdv[8];
                size_t ncd = 8;
                char name[64];
                H5Z_filter_t id = H5Pget_filter2(pl, (unsigned)i, &flags, &ncd, cdv, sizeof name, name, NULL);
                if (id == H5F_BSLZ4 && nf == 1) {
                        if (ncd >= 5 && cdv[4] != 2)
                                r = roid_err_set(err, -ENOTSUP, "bitshuffle filter with compression %u (only LZ4 = 2)",
                                                 cdv[4]);
                        l.comp = ROID_COMP_BSLZ4;
                } else if (id == H5F_LZ4 && nf == 1) {
                        l.comp = ROID_COMP_LZ4_H5;
                } else {
                        r = roid_err_set(err, -ENOTSUP, "HDF5 filter %d (%s) is not one roid decodes", (int)id, name);
                }
        }
        H5Pclose(pl);
        if (r < 0)
                return r;
        if (l.comp != ROID_COMP_NONE && !l.chunked_per_frame)
                return roid_err_set(err, -ENOTSUP, "compressed data not chunked one frame per chunk");
        *ret = l;
        return 0;
}

static void send_end(roid_ingest *in, const char *uid) {
        roid_msg end = {.type = ROID_MSG_END};
        snprintf(end.series_unique_id, sizeof end.series_unique_id, "%s", uid);
        roid_ingest_msg(in, &end);
}

/* One dataset (N, rows, cols): the whole series of a data file, or one part
 * of a master file's series (start sent with the first, end by the caller). */
static int replay_dataset(hid_t ds, const char *uid, bool send_start, bool whole, roid_ingest *in, roid_err *err) {
        const roid_limits *lim = &roid_ingest_tracker(in)->lim;
        hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
        uint8_t *chunk = NULL, *raw = NULL;
        int r = 0;
        hsize_t dims[3];
        if (space < 0 || type < 0 || H5Sget_simple_extent_ndims(space) != 3 ||
            H5Sget_simple_extent_dims(space, dims, NULL) != 3) {
                r = roid_err_set(err, -EBADMSG, "/entry/data/data is not a 3-D dataset (frames, rows, cols)");
                goto out;
        }
        roid_dtype dt = h5_dtype(type);
        if (dt == ROID_DT_NONE) {
                r = roid_err_set(err, -ENOTSUP, "pixel type is not uint8, uint16 or uint32");
                goto out;
        }
        if (dims[1] > UINT32_MAX || dims[2] > UINT32_MAX || dims[1] * dims[2] > lim->max_pixels) {
                r = roid_err_set(err, -EMSGSIZE, "frames of %llu x %llu exceed max_pixels %llu",
                                 (unsigned long long)dims[1], (unsigned long long)dims[2],
                                 (unsigned long long)lim->max_pixels);
                goto out;
        }
        uint32_t rows = (uint32_t)dims[1], cols = (uint32_t)dims[2];
        size_t esz = roid_dtype_size(dt), frame_bytes = (size_t)rows * cols * esz;
        h5_layout lay = {0};
        r = dataset_layout(ds, rows, cols, esz, &lay, err);
        if (r < 0)
                goto out;
        long long first = read_int_attr(ds, "image_nr_low", 1) - 1;
        if (first < 0)
                first = 0;

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
        if (send_start) {
                r = roid_ingest_msg(in, &m);
                if (r < 0)
                        goto out;
        }

        raw = malloc(frame_bytes);
        if (!raw) {
                r = -ENOMEM;
                goto out;
        }
        size_t chunk_cap = 0;
        for (hsize_t i = 0; i < dims[0]; i++) {
                roid_msg im = {.type = ROID_MSG_IMAGE, .series_id = 0};
                memcpy(im.series_unique_id, m.series_unique_id, sizeof im.series_unique_id);
                im.u.image.image_id = (uint64_t)first + i;
                im.u.image.n_channels = 1;
                roid_channel_blob *cb = &im.u.image.channel[0];
                snprintf(cb->name, sizeof cb->name, "data");
                cb->blob = (roid_blob){.dtype = dt, .rows = rows, .cols = cols, .comp = ROID_COMP_NONE};
                hsize_t off[3] = {i, 0, 0};
                if (lay.comp != ROID_COMP_NONE) {
                        hsize_t csize = 0;
                        uint32_t fmask = 0;
                        if (H5Dget_chunk_storage_size(ds, off, &csize) < 0 || csize > lim->max_message_bytes) {
                                /* Unreadable chunk: an empty blob fails to decode and is reported per frame. */
                                csize = 0;
                        }
                        if (csize > chunk_cap) {
                                uint8_t *n = realloc(chunk, (size_t)csize);
                                if (!n) {
                                        r = -ENOMEM;
                                        goto out;
                                }
                                chunk = n;
                                chunk_cap = (size_t)csize;
                        }
                        if (csize && H5Dread_chunk(ds, H5P_DEFAULT, off, &fmask, chunk) < 0)
                                csize = 0;
                        cb->blob.data = chunk;
                        cb->blob.size = (size_t)csize;
                        cb->blob.comp = fmask ? ROID_COMP_NONE : lay.comp; /* mask bit set: filter skipped */
                        cb->blob.comp_elem_size = lay.elem;
                } else {
                        hsize_t cnt[3] = {1, rows, cols};
                        hid_t ms = H5Screate_simple(3, cnt, NULL);
                        H5Sselect_hyperslab(space, H5S_SELECT_SET, off, NULL, cnt, NULL);
                        herr_t e = H5Dread(ds, type, ms, space, H5P_DEFAULT, raw);
                        H5Sclose(ms);
                        cb->blob.data = raw;
                        cb->blob.size = e < 0 ? 0 : frame_bytes;
                }
                roid_ingest_msg(in, &im);
        }
        if (whole)
                send_end(in, uid);
out:
        free(chunk);
        free(raw);
        if (type >= 0)
                H5Tclose(type);
        if (space >= 0)
                H5Sclose(space);
        return r;
}

int roid_h5_replay(const char *path, roid_ingest *in, roid_err *err) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we report errors ourselves */
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
                return roid_err_set(err, -EIO, "%s: cannot open as HDF5", path);
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        int r = 0, n = 0;
        if (H5Lexists(f, "/entry/data/data", H5P_DEFAULT) > 0) {
                hid_t ds = H5Dopen2(f, "/entry/data/data", H5P_DEFAULT);
                r = ds < 0 ? roid_err_set(err, -EIO, "cannot open /entry/data/data")
                           : replay_dataset(ds, base, true, true, in, err);
                if (ds >= 0)
                        H5Dclose(ds);
                n = 1;
        } else {
                /* A master file: /entry/data/data_000001, ... (external links). */
                for (int i = 1; i < 100000 && r == 0; i++) {
                        char name[64];
                        snprintf(name, sizeof name, "/entry/data/data_%06d", i);
                        if (H5Lexists(f, "/entry/data", H5P_DEFAULT) <= 0 || H5Lexists(f, name, H5P_DEFAULT) <= 0)
                                break;
                        hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
                        if (ds < 0) {
                                r = roid_err_set(err, -EIO, "cannot open %s (is the linked data file there?)", name);
                                break;
                        }
                        r = replay_dataset(ds, base, i == 1, false, in, err);
                        H5Dclose(ds);
                        n++;
                }
                if (n)
                        send_end(in, base);
        }
        H5Fclose(f);
        if (r == 0 && n == 0)
                r = roid_err_set(err, -ENOENT, "%s: no /entry/data/data or /entry/data/data_000001", path);
        else if (r < 0)
                roid_err_prefix(err, "%s", path);
        return r;
}
