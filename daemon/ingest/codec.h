/* codec.h - decoders (and, for the simulator and tests, encoders) for the
 * compressed array layouts of the EIGER streams:
 *   bslz4   bitshuffle + LZ4 with the 12-byte HDF5 filter 32008 header
 *   lz4h5   LZ4 blocks with the HDF5 filter 32004 framing (V2 "lz4")
 *   lz4raw  one raw LZ4 block, no header (V1 "lz4<")
 * LZ4 itself is liblz4; the bit transpose is our own.
 *
 * Every size in the input is checked against the caller's expected size
 * before a byte is written; decoders never write past dst_size and never
 * allocate.  Failures return a negative errno and describe the problem in err:
 *   -EBADMSG  the compressed data is inconsistent (truncated, lying header,
 *             corrupt LZ4 block, trailing bytes)
 *   -EMSGSIZE the declared size is not the expected size
 *   -EINVAL   bad arguments (element size 0, ...)
 *
 * Threads: all functions are reentrant.
 */
#ifndef ROID_INGEST_CODEC_H
#define ROID_INGEST_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "ingest/message.h"
#include "service/err.h"

/* Decodes src into dst, which must be exactly dst_size bytes long (the frame
 * size the shape and type imply).  elem_size is the bitshuffle element size. */
int roid_bslz4_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, size_t elem_size, roid_err *err);
/* Bitshuffle with zstd blocks (HDF5 filter 32008 with compression 3; the
 * "bszstd" of Jungfraujoch): the bslz4 framing with ZSTD frames as blocks. */
int roid_bszstd_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, size_t elem_size,
                       roid_err *err);
int roid_lz4h5_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, roid_err *err);
int roid_lz4raw_decode(const uint8_t *src, size_t src_size, void *dst, size_t dst_size, roid_err *err);

/* Decodes a blob of any compression into dst (dst_size = rows*cols*dtype size). */
int roid_blob_decode(const roid_blob *b, void *dst, size_t dst_size, roid_err *err);

/* Bit transpose of one block of n elements (n a multiple of 8) of elem_size
 * bytes: the inverse of bitshuffle's per-block transform.  in and out must
 * not overlap. */
void roid_bitunshuffle_block(const uint8_t *in, uint8_t *out, size_t n, size_t elem_size);
void roid_bitshuffle_block(const uint8_t *in, uint8_t *out, size_t n, size_t elem_size);

/* Largest bslz4 block accepted, in bytes: one block is staged in a per-thread
 * buffer of this size (-EMSGSIZE above it). */
#define ROID_BSLZ4_MAX_BLOCK ((size_t)1 << 20)
/* Element sizes 1..16 are supported; 1, 2, 4 and 8 have SIMD paths. */
#define ROID_BSLZ4_MAX_ELEM 16

/* The bit transpose implementations, for tests and benchmarks.  BITWISE is
 * the one-bit-at-a-time oracle, SWAR the portable 8x8 bit-matrix version,
 * GFNI the AVX2 one whose unshuffle transposes bits with gf2p8affineqb, AUTO
 * the fastest this CPU has (what roid_bit*shuffle_block use). */
typedef enum {
        ROID_BT_BITWISE,
        ROID_BT_SWAR,
        ROID_BT_SSE2,
        ROID_BT_AVX2,
        ROID_BT_GFNI,
        ROID_BT_AUTO,
} roid_bt_impl;
const char *roid_bt_impl_name(roid_bt_impl impl);
/* What ROID_BT_AUTO is on this CPU. */
roid_bt_impl roid_bt_impl_auto(void);
/* As roid_bit*shuffle_block with the given implementation; -ENOTSUP when this
 * build or CPU lacks it, -EINVAL for n not a multiple of 8 or a bad elem_size. */
int roid_bitunshuffle_block_with(roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t elem_size);
int roid_bitshuffle_block_with(roid_bt_impl impl, const uint8_t *in, uint8_t *out, size_t n, size_t elem_size);

/* bitshuffle's default block size in bytes for elem_size (8192 for 1, 2, 4). */
size_t roid_bslz4_default_block(size_t elem_size);

/* Encoders.  *_bound gives a dst capacity that always suffices (0 for invalid
 * arguments).  block_bytes 0 means the default (bitshuffle's for bslz4, 8192
 * for lz4h5).  On success *ret_size is the encoded length; -EINVAL for bad
 * arguments, -ENOBUFS when dst_cap is too small. */
size_t roid_bslz4_bound(size_t src_size, size_t elem_size, size_t block_bytes);
int roid_bslz4_encode(const void *src, size_t src_size, size_t elem_size, size_t block_bytes, uint8_t *dst,
                      size_t dst_cap, size_t *ret_size);
size_t roid_lz4h5_bound(size_t src_size, size_t block_bytes);
int roid_lz4h5_encode(const void *src, size_t src_size, size_t block_bytes, uint8_t *dst, size_t dst_cap,
                      size_t *ret_size);
size_t roid_lz4raw_bound(size_t src_size);
int roid_lz4raw_encode(const void *src, size_t src_size, uint8_t *dst, size_t dst_cap, size_t *ret_size);

#endif
