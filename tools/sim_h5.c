/* sim_h5.c - frame source "file:PATH.h5": the frames of an EIGER HDF5 data
 * file (/entry/data/data, N x rows x cols, unsigned 8/16/32-bit).
 *
 * DECTRIS files compress chunks with HDF5 filters 32008 (bitshuffle-LZ4) and
 * 32004 (LZ4), which libhdf5 cannot apply without plugins, so chunks of one
 * frame each are read raw with H5Dread_chunk and decoded with our codec.
 * Unfiltered datasets are read with H5Dread.  All frames are decoded at init;
 * the file must therefore be small (bounded below).
 */
#include "sim_source.h"

#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/codec.h"

#define H5_FILTER_BSLZ4 32008
#define H5_FILTER_LZ4   32004
#define FILE_MAX_FRAMES 100000
#define FILE_MAX_BYTES  ((uint64_t)1 << 31) /* all decoded frames together */
#define FILE_MAX_PIXELS ((uint64_t)64 << 20)
#define DATASET         "/entry/data/data"

typedef struct {
        uint64_t nframes;
        size_t frame_bytes;
        uint8_t *frames;
} h5file;

static int read_frames_raw(hid_t dset, hid_t space, hid_t memtype, h5file *f, const hsize_t *dims, roid_err *err) {
        hsize_t count[3] = {1, dims[1], dims[2]};
        hsize_t mdims[2] = {dims[1], dims[2]};
        hid_t mspace = H5Screate_simple(2, mdims, NULL);
        int r = 0;

        if (mspace < 0)
                return roid_err_set(err, -EIO, "H5Screate_simple failed");
        for (uint64_t i = 0; i < f->nframes; i++) {
                hsize_t start[3] = {i, 0, 0};
                if (H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                    H5Dread(dset, memtype, mspace, space, H5P_DEFAULT, f->frames + i * f->frame_bytes) < 0) {
                        r = roid_err_set(err, -EIO, "H5Dread of frame %llu failed", (unsigned long long)i);
                        break;
                }
        }
        H5Sclose(mspace);
        return r;
}

static int read_frames_chunked(hid_t dset, hid_t dcpl, h5file *f, size_t elem, roid_err *err) {
        hsize_t chunk[3];
        unsigned flags, cd[8];
        size_t ncd = 8;
        unsigned filter_cfg;
        char fname[64];

        if (H5Pget_layout(dcpl) != H5D_CHUNKED || H5Pget_chunk(dcpl, 3, chunk) != 3)
                return roid_err_set(err, -ENOTSUP, "filtered dataset %s is not chunked in 3-D", DATASET);
        if (H5Pget_nfilters(dcpl) != 1)
                return roid_err_set(err, -ENOTSUP, "dataset %s has %d filters, expected 1", DATASET,
                                    H5Pget_nfilters(dcpl));
        H5Z_filter_t filt = H5Pget_filter2(dcpl, 0, &flags, &ncd, cd, sizeof fname, fname, &filter_cfg);
        if (filt != H5_FILTER_BSLZ4 && filt != H5_FILTER_LZ4)
                return roid_err_set(err, -ENOTSUP, "dataset %s: filter %d is neither 32008 nor 32004", DATASET,
                                    (int)filt);
        if (filt == H5_FILTER_BSLZ4 && ncd >= 3 && cd[2] != elem)
                return roid_err_set(err, -EBADMSG, "filter 32008 element size %u, dataset type has %zu", cd[2], elem);
        size_t max_chunk = roid_bslz4_bound(f->frame_bytes, elem, 0);
        size_t lz4_bound = roid_lz4h5_bound(f->frame_bytes, 0);
        if (lz4_bound > max_chunk)
                max_chunk = lz4_bound;
        uint8_t *buf = malloc(max_chunk ? max_chunk : 1);
        if (!buf)
                return roid_err_set(err, -ENOMEM, "out of memory for a %zu-byte chunk", max_chunk);

        int r = 0;
        for (uint64_t i = 0; i < f->nframes && r >= 0; i++) {
                hsize_t off[3] = {i, 0, 0};
                hsize_t csize = 0;
                uint32_t mask = 0;
                uint8_t *dst = f->frames + i * f->frame_bytes;

                if (H5Dget_chunk_storage_size(dset, off, &csize) < 0) {
                        r = roid_err_set(err, -EIO, "frame %llu: no chunk", (unsigned long long)i);
                        break;
                }
                if (csize > max_chunk) {
                        r = roid_err_set(err, -EMSGSIZE, "frame %llu: chunk of %llu bytes exceeds bound %zu",
                                         (unsigned long long)i, (unsigned long long)csize, max_chunk);
                        break;
                }
                if (H5Dread_chunk(dset, H5P_DEFAULT, off, &mask, buf) < 0) {
                        r = roid_err_set(err, -EIO, "frame %llu: H5Dread_chunk failed", (unsigned long long)i);
                        break;
                }
                if (mask & 1) { /* the filter was skipped for this chunk: stored plain */
                        if (csize != f->frame_bytes) {
                                r = roid_err_set(err, -EBADMSG, "frame %llu: unfiltered chunk %llu bytes, expected %zu",
                                                 (unsigned long long)i, (unsigned long long)csize, f->frame_bytes);
                                break;
                        }
                        memcpy(dst, buf, f->frame_bytes);
                } else if (filt == H5_FILTER_BSLZ4) {
                        r = roid_bslz4_decode(buf, csize, dst, f->frame_bytes, elem, err);
                } else {
                        r = roid_lz4h5_decode(buf, csize, dst, f->frame_bytes, err);
                }
                if (r < 0)
                        roid_err_prefix(err, "frame %llu", (unsigned long long)i);
        }
        free(buf);
        return r < 0 ? r : 0;
}

static int h5_init(sim_source_params *params, void **ret_state, uint64_t *ret_period, roid_err *err) {
        hid_t file = -1, dset = -1, space = -1, type = -1, dcpl = -1;
        hsize_t dims[3];
        h5file *f = NULL;
        int r;

        if (!params->arg || !params->arg[0])
                return roid_err_set(err, -EINVAL, "source file needs a path: --source file:PATH.h5");
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        file = H5Fopen(params->arg, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (file < 0) {
                r = roid_err_set(err, -ENOENT, "cannot open HDF5 file %s", params->arg);
                goto out;
        }
        dset = H5Dopen2(file, DATASET, H5P_DEFAULT);
        if (dset < 0) {
                r = roid_err_set(err, -ENOENT, "%s: no dataset %s", params->arg, DATASET);
                goto out;
        }
        space = H5Dget_space(dset);
        type = H5Dget_type(dset);
        dcpl = H5Dget_create_plist(dset);
        if (space < 0 || type < 0 || dcpl < 0) {
                r = roid_err_set(err, -EIO, "%s: cannot query %s", params->arg, DATASET);
                goto out;
        }
        if (H5Sget_simple_extent_ndims(space) != 3 || H5Sget_simple_extent_dims(space, dims, NULL) != 3) {
                r = roid_err_set(err, -ENOTSUP, "%s: %s is not 3-D (frames x rows x cols)", params->arg, DATASET);
                goto out;
        }
        size_t elem = H5Tget_size(type);
        roid_dtype dt = elem == 1 ? ROID_DT_U8 : elem == 2 ? ROID_DT_U16 : elem == 4 ? ROID_DT_U32 : ROID_DT_NONE;
        if (H5Tget_class(type) != H5T_INTEGER || H5Tget_sign(type) != H5T_SGN_NONE || dt == ROID_DT_NONE) {
                r = roid_err_set(err, -ENOTSUP, "%s: %s is not unsigned 8, 16 or 32-bit", params->arg, DATASET);
                goto out;
        }
        if (dims[0] < 1 || dims[0] > FILE_MAX_FRAMES || dims[1] < 1 || dims[2] < 1 || dims[1] > UINT32_MAX ||
            dims[2] > UINT32_MAX || (uint64_t)dims[1] * dims[2] > FILE_MAX_PIXELS ||
            dims[0] * dims[1] * dims[2] * elem > FILE_MAX_BYTES) {
                r = roid_err_set(err, -EMSGSIZE,
                                 "%s: %s shape %llux%llux%llu outside limits (%u frames, %llu pixels, %llu bytes)",
                                 params->arg, DATASET, (unsigned long long)dims[0], (unsigned long long)dims[1],
                                 (unsigned long long)dims[2], FILE_MAX_FRAMES, (unsigned long long)FILE_MAX_PIXELS,
                                 (unsigned long long)FILE_MAX_BYTES);
                goto out;
        }
        f = calloc(1, sizeof *f);
        if (!f) {
                r = roid_err_set(err, -ENOMEM, "out of memory");
                goto out;
        }
        f->nframes = dims[0];
        f->frame_bytes = (size_t)(dims[1] * dims[2] * elem);
        f->frames = malloc(f->nframes * f->frame_bytes);
        if (!f->frames) {
                r = roid_err_set(err, -ENOMEM, "out of memory for %llu frames", (unsigned long long)f->nframes);
                goto out;
        }
        hid_t memtype = dt == ROID_DT_U8 ? H5T_NATIVE_UINT8 : dt == ROID_DT_U16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32;
        if (H5Pget_nfilters(dcpl) == 0)
                r = read_frames_raw(dset, space, memtype, f, dims, err);
        else
                r = read_frames_chunked(dset, dcpl, f, elem, err);
        if (r < 0) {
                roid_err_prefix(err, "%s", params->arg);
                goto out;
        }
        params->rows = (uint32_t)dims[1];
        params->cols = (uint32_t)dims[2];
        params->dtype = dt;
        *ret_state = f;
        *ret_period = f->nframes;
        f = NULL;
        r = 0;
out:
        if (f) {
                free(f->frames);
                free(f);
        }
        if (dcpl >= 0)
                H5Pclose(dcpl);
        if (type >= 0)
                H5Tclose(type);
        if (space >= 0)
                H5Sclose(space);
        if (dset >= 0)
                H5Dclose(dset);
        if (file >= 0)
                H5Fclose(file);
        return r;
}

static int h5_fill(void *state, uint64_t frame_index, unsigned channel, void *pixels, roid_err *err) {
        h5file *f = state;

        (void)channel; /* one channel in a file; every channel gets it */
        (void)err;
        memcpy(pixels, f->frames + (frame_index % f->nframes) * f->frame_bytes, f->frame_bytes);
        return 0;
}

static void h5_free(void *state) {
        h5file *f = state;

        if (!f)
                return;
        free(f->frames);
        free(f);
}

const sim_source_ops sim_source_file = {
        .name = "file",
        .init = h5_init,
        .fill = h5_fill,
        .free = h5_free,
};
