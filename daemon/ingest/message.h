/* message.h - the parsed form of one detector stream message, V1 or V2.
 *
 * Ownership: a roid_msg never owns memory.  Every pointer in it (blobs,
 * strings, user data, masks) points into the ZeroMQ message parts it was
 * parsed from, or into the parser's scratch arena; it is valid until the
 * parts are released or the parser parses the next message, whichever comes
 * first.  Code that keeps anything beyond that (the series state keeps the
 * start message) must copy it.
 *
 * Threads: plain data, no locking; one thread at a time.
 */
#ifndef ROID_INGEST_MESSAGE_H
#define ROID_INGEST_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "service/err.h"
#include <stdbool.h>

#define ROID_MAX_CHANNELS 8
#define ROID_NAME_MAX     64  /* identifiers: channel names, series_unique_id */
#define ROID_TEXT_MAX     256 /* free text (dates, detector description): longer is cut */

typedef enum {
        ROID_DT_NONE = 0,
        ROID_DT_U8,
        ROID_DT_U16,
        ROID_DT_U32,
        ROID_DT_F32, /* flatfields only */
} roid_dtype;

typedef enum {
        ROID_COMP_NONE = 0,
        ROID_COMP_BSLZ4,   /* bitshuffle-LZ4, HDF5 filter 32008 chunk (12-byte header) */
        ROID_COMP_LZ4_H5,  /* LZ4 with HDF5 filter 32004 framing (V2 "lz4") */
        ROID_COMP_LZ4_RAW, /* one raw LZ4 block, no header (V1 "lz4<") */
} roid_comp;

typedef enum {
        ROID_FMT_NONE = 0,
        ROID_FMT_V1, /* multipart JSON + binary ("legacy") */
        ROID_FMT_V2, /* single-part CBOR ("stream2") */
} roid_format;

/* An encoded array as it travels on the wire: shape, element type and the
 * (possibly compressed) bytes.  rows x cols always, whatever the wire order. */
typedef struct {
        const uint8_t *data;
        size_t size;
        roid_comp comp;
        unsigned comp_elem_size; /* bslz4: bitshuffle element size from the wire */
        roid_dtype dtype;
        uint32_t rows, cols;
} roid_blob;

typedef struct {
        uint64_t num, den;
} roid_rational;

/* Opaque user data span: raw CBOR item (V2) or JSON text (V1 appendix).
 * ROID_UD_LEFT_OUT: the message carried user data that was left out
 * (user_data_ignored says why): what it said, a scan position for one, is
 * unknown, which is not the same as absent. */
typedef enum { ROID_UD_NONE = 0, ROID_UD_CBOR, ROID_UD_JSON, ROID_UD_LEFT_OUT } roid_ud_kind;
typedef struct {
        roid_ud_kind kind;
        const uint8_t *data;
        size_t size;
} roid_user_data;

typedef struct {
        char name[ROID_NAME_MAX];
        roid_blob blob;
} roid_channel_blob;

typedef enum {
        ROID_MSG_NONE = 0,
        ROID_MSG_START,
        ROID_MSG_IMAGE,
        ROID_MSG_END,
} roid_msg_type;

#define ROID_GONIO_AXES 5 /* chi, kappa, omega, phi, two_theta */
extern const char *const roid_gonio_axis_names[ROID_GONIO_AXES];

typedef struct {
        /* has_* flags tell which optional fields the detector sent. */
        bool has_beam_center, has_pixel_size, has_image_size, has_number_of_images;
        bool has_count_time, has_frame_time, has_energy, has_wavelength;
        double beam_center_x, beam_center_y; /* pixels */
        double pixel_size_x, pixel_size_y;   /* m */
        double count_time, frame_time;       /* s */
        double incident_energy;              /* eV */
        double incident_wavelength;          /* Angstrom */
        double sensor_thickness;             /* m */
        double detector_translation[3];      /* m */
        bool has_detector_translation;
        uint64_t image_size_x, image_size_y; /* width, height */
        uint64_t number_of_images;
        uint64_t saturation_value;
        bool has_saturation_value;
        bool countrate_correction_enabled, flatfield_enabled, pixel_mask_enabled;
        bool virtual_pixel_interpolation_enabled;
        roid_dtype image_dtype; /* NONE when the detector did not say */
        char arm_date[ROID_TEXT_MAX];
        char detector_description[ROID_TEXT_MAX];
        char detector_serial_number[ROID_TEXT_MAX];
        char sensor_material[ROID_TEXT_MAX];
        struct {
                bool present;
                double start, increment;
        } goniometer[ROID_GONIO_AXES];

        unsigned n_channels;
        char channels[ROID_MAX_CHANNELS][ROID_NAME_MAX];
        double threshold_energy[ROID_MAX_CHANNELS]; /* by channel index; NaN if absent */
        /* Per channel, by index into channels[]; blob.data NULL when absent.
         * V1 has one channel named "image" and takes these from header parts. */
        roid_blob pixel_mask[ROID_MAX_CHANNELS]; /* uint32 */
        roid_blob flatfield[ROID_MAX_CHANNELS];  /* float32 */
        roid_blob countrate_table;               /* V2 uint32 / V1 float32 */
        /* V1 only: the detector configuration part (JSON text), header_detail. */
        const char *v1_config_json;
        size_t v1_config_json_len;
        char v1_header_detail[16];
} roid_start_info;

typedef struct {
        uint64_t image_id;
        bool has_times;
        roid_rational real_time, start_time, stop_time; /* V1: ns over 1e9 */
        char series_date[ROID_NAME_MAX];
        char v1_hash[40]; /* md5 hex of the dimage_d part, V1 only */
        unsigned n_channels;
        roid_channel_blob channel[ROID_MAX_CHANNELS];
} roid_image_info;

typedef struct {
        roid_msg_type type;
        roid_format format;
        uint64_t series_id;
        char series_unique_id[ROID_NAME_MAX]; /* "" when absent (V1 has none) */
        roid_user_data user_data;             /* V2 user_data / V1 appendix part */
        /* Why user data the message carried was left out ("" when none was):
         * over max_json_bytes, nested beyond max_depth, or a V1 appendix that
         * is not UTF-8.  The message itself stands; the ingest counts it
         * (user_data_ignored). */
        char user_data_ignored[ROID_ERR_MAX];
        union {
                roid_start_info start;
                roid_image_info image;
        } u;
} roid_msg;

/* One ZeroMQ message part (frame).  A V2 message has one part. */
typedef struct {
        const uint8_t *data;
        size_t size;
} roid_part;

size_t roid_dtype_size(roid_dtype t);
const char *roid_dtype_name(roid_dtype t);
/* "uint8" etc.; ROID_DT_NONE when unknown. */
roid_dtype roid_dtype_from_name(const char *s, size_t len);
const char *roid_comp_name(roid_comp c);
const char *roid_msg_type_name(roid_msg_type t);

#endif
