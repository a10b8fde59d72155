/* Stream V1 (multipart JSON + binary) parser, eiger-stream.md §1.  cJSON
 * allocates from a bump arena (reset per JSON part) so that steady state
 * allocates nothing; nothing from a JSON tree outlives the next part. */
#include "ingest/stream_internal.h"
#include "service/text.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* A cJSON node is 64 bytes and the smallest JSON value ("0,") two bytes of
 * text, so a part of n bytes never needs more than 32 n + a little. */
#define ARENA_FACTOR 40
#define ARENA_SLACK  4096
#define ARENA_MIN    (64 * 1024)
#define ARENA_ALIGN  16
/* Kept between messages up to this size (headers of a few KiB); a larger
 * part's arena (up to ARENA_FACTOR x max_json_bytes) is released after its
 * message, so it is a transient cost, not a pinned one. */
#define ARENA_KEEP (1024 * 1024)

/* The arena of the parse running on this thread; NULL outside roid_parse(),
 * when the hooks fall back to malloc/free for other cJSON users. */
static __thread stream1_arena *active;
static __thread bool exhausted;

static void *hook_malloc(size_t n) {
        stream1_arena *a = active;
        if (!a)
                return malloc(n);
        if (n > a->cap - a->used || ((n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1)) > a->cap - a->used) {
                exhausted = true;
                return NULL;
        }
        void *p = a->buf + a->used;
        a->used += (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        return p;
}

static bool in_arena(const stream1_arena *a, const void *p) {
        uintptr_t u = (uintptr_t)p, b = (uintptr_t)a->buf;
        return a->buf && u >= b && u < b + a->cap;
}

static void hook_free(void *p) {
        stream1_arena *a = active;
        if (a && in_arena(a, p))
                return;
        free(p);
}

static void install_hooks(void) {
        cJSON_Hooks h = {.malloc_fn = hook_malloc, .free_fn = hook_free};
        cJSON_InitHooks(&h);
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

void stream1_arena_free_internal(stream1_arena *a) {
        free(a->buf);
        *a = (stream1_arena){0};
}

static int arena_reserve(stream1_arena *a, size_t cap) {
        if (a->cap >= cap)
                return 0;
        uint8_t *b = malloc(cap);
        if (!b)
                return -ENOMEM;
        free(a->buf);
        a->buf = b;
        a->cap = cap;
        a->used = 0;
        return 0;
}

typedef struct {
        stream1_arena *a;
        const roid_limits *lim;
        roid_err *err;
        const roid_part *parts;
        size_t n;
        roid_msg *m;
        cJSON *tree; /* the live tree, freed only if it did not come from the arena */
} v1;

/* Our hooks put every tree in the arena; should anyone reinstall cJSON's
 * default hooks, trees come from malloc and must be deleted. */
static void drop_tree(v1 *p) {
        if (p->tree && !in_arena(p->a, p->tree))
                cJSON_Delete(p->tree);
        p->tree = NULL;
}

/* Deeper nesting than max_depth is refused before cJSON sees the text. */
static int check_depth(v1 *p, size_t idx, const char *label, const uint8_t *s, size_t n) {
        unsigned depth = 0;
        bool str = false, esc = false;
        for (size_t i = 0; i < n; i++) {
                uint8_t ch = s[i];
                if (str) {
                        if (esc)
                                esc = false;
                        else if (ch == '\\')
                                esc = true;
                        else if (ch == '"')
                                str = false;
                } else if (ch == '"') {
                        str = true;
                } else if (ch == '{' || ch == '[') {
                        if (++depth > p->lim->max_depth)
                                return roid_err_set(p->err, -EBADMSG,
                                                    "part %zu%s: JSON nested deeper than max_depth %u", idx + 1, label,
                                                    p->lim->max_depth);
                } else if ((ch == '}' || ch == ']') && depth > 0) {
                        depth--;
                }
        }
        return 0;
}

/* The checks every JSON-text part passes before anyone parses it: size
 * against max_json_bytes, UTF-8, nesting against max_depth.  label follows
 * "part N" in the messages. */
static int check_json_text(v1 *p, size_t idx, const char *label) {
        const roid_part *pt = &p->parts[idx];
        if (pt->size > p->lim->max_json_bytes)
                return roid_err_set(p->err, -EMSGSIZE, "part %zu%s: JSON of %zu bytes exceeds max_json_bytes %zu",
                                    idx + 1, label, pt->size, p->lim->max_json_bytes);
        /* JSON text is UTF-8 (RFC 8259 8.1), and roid publishes some of its
         * strings again; cJSON does not check. */
        const size_t bad = roid_utf8_invalid_at((const char *)pt->data, pt->size);
        if (bad < pt->size)
                return roid_err_set(p->err, -EBADMSG, "part %zu%s: byte 0x%02x at %zu is not UTF-8", idx + 1, label,
                                    pt->data[bad], bad);
        return check_depth(p, idx, label, pt->data, pt->size);
}

/* An appendix (free text a beamline attaches, read as JSON by the scan
 * reader and copied with the series) that fails the JSON parts' checks is
 * left out, and the message stands: losing a series' header, or an image, to
 * its attachment would cost more than the attachment. */
static void take_appendix(v1 *p, size_t idx, const char *label) {
        roid_err e = {""}, *saved = p->err;
        p->err = &e;
        int r = check_json_text(p, idx, label);
        p->err = saved;
        if (r < 0) {
                snprintf(p->m->user_data_ignored, sizeof p->m->user_data_ignored, "%s", e.msg);
                p->m->user_data = (roid_user_data){ROID_UD_LEFT_OUT, NULL, 0};
        } else
                p->m->user_data = (roid_user_data){ROID_UD_JSON, p->parts[idx].data, p->parts[idx].size};
}

/* Parses part idx as a JSON object.  The tree lives until the next call. */
static int parse_json(v1 *p, size_t idx, cJSON **ret) {
        const roid_part *pt = &p->parts[idx];
        int r = check_json_text(p, idx, "");
        if (r < 0)
                return r;
        drop_tree(p);
        if (arena_reserve(p->a, ARENA_MIN) < 0)
                return roid_err_set(p->err, -ENOMEM, "part %zu: no memory for the JSON arena", idx + 1);
        cJSON *root = NULL;
        const char *end = NULL;
        for (int attempt = 0; attempt < 2 && !root; attempt++) {
                p->a->used = 0;
                exhausted = false;
                root = cJSON_ParseWithLengthOpts((const char *)pt->data, pt->size, &end, false);
                if (root || !exhausted)
                        break;
                /* Grow once to the worst case for this part. */
                if (arena_reserve(p->a, pt->size * ARENA_FACTOR + ARENA_SLACK) < 0)
                        return roid_err_set(p->err, -ENOMEM, "part %zu: no memory for the JSON arena", idx + 1);
        }
        p->tree = root;
        if (!root) {
                if (exhausted)
                        return roid_err_set(p->err, -EMSGSIZE, "part %zu: JSON too large for the parser arena",
                                            idx + 1);
                size_t off = end && (const uint8_t *)end >= pt->data ? (size_t)((const uint8_t *)end - pt->data) : 0;
                return roid_err_set(p->err, -EBADMSG, "part %zu: invalid JSON near byte %zu of %zu", idx + 1, off,
                                    pt->size);
        }
        /* Trailing garbage after the value is malformed too. */
        size_t off = (size_t)((const uint8_t *)end - pt->data);
        while (off < pt->size && (pt->data[off] == ' ' || pt->data[off] == '\n' || pt->data[off] == '\r' ||
                                  pt->data[off] == '\t' || pt->data[off] == '\0'))
                off++;
        if (off < pt->size)
                return roid_err_set(p->err, -EBADMSG, "part %zu: trailing bytes after JSON at byte %zu", idx + 1, off);
        if (!cJSON_IsObject(root))
                return roid_err_set(p->err, -EBADMSG, "part %zu: JSON is not an object", idx + 1);
        *ret = root;
        return 0;
}

/* Largest integer a double holds exactly. */
#define JSON_INT_MAX 9007199254740992.0

static int get_u64(v1 *p, const cJSON *o, const char *what, const char *key, bool required, uint64_t *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!v) {
                if (required)
                        return roid_err_set(p->err, -EBADMSG, "%s: no '%s'", what, key);
                return 0;
        }
        double d = v->valuedouble;
        if (!cJSON_IsNumber(v) || !(d >= 0) || d > JSON_INT_MAX || d != floor(d))
                return roid_err_set(p->err, -EBADMSG, "%s: '%s' is not a non-negative integer", what, key);
        *ret = (uint64_t)d;
        return 1;
}

static int get_f64(v1 *p, const cJSON *o, const char *what, const char *key, double *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!v)
                return 0;
        if (!cJSON_IsNumber(v))
                return roid_err_set(p->err, -EBADMSG, "%s: '%s' is not a number", what, key);
        *ret = v->valuedouble;
        return 1;
}

static int get_bool(v1 *p, const cJSON *o, const char *what, const char *key, bool *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!v)
                return 0;
        if (!cJSON_IsBool(v))
                return roid_err_set(p->err, -EBADMSG, "%s: '%s' is not a boolean", what, key);
        *ret = cJSON_IsTrue(v);
        return 1;
}

static const char *get_str(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Copies a descriptive text, cut at a UTF-8 character boundary. */
static void copy_text(char *dst, size_t size, const char *s) {
        size_t n = strlen(s);
        if (n >= size) {
                n = size - 1;
                while (n > 0 && ((uint8_t)s[n] & 0xc0) == 0x80)
                        n--;
        }
        memcpy(dst, s, n);
        dst[n] = '\0';
}

static bool has_prefix(const char *s, const char *pre) {
        return strncmp(s, pre, strlen(pre)) == 0;
}

static int check_htype(v1 *p, const cJSON *o, size_t idx, const char *prefix, const char *what) {
        const char *h = get_str(o, "htype");
        if (!h)
                return roid_err_set(p->err, -EBADMSG, "part %zu: no 'htype', %s expected", idx + 1, what);
        if (!has_prefix(h, prefix))
                return roid_err_set(p->err, -EBADMSG, "part %zu: htype '%.40s', %s expected", idx + 1, h, what);
        return 0;
}

/* shape [x, y] = [width, height] -> rows = y, cols = x, checked against the
 * limits; *ret_bytes is the size the pixels take. */
static int get_shape(v1 *p, const cJSON *o, const char *what, roid_dtype t, roid_blob *b, uint64_t *ret_bytes) {
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(o, "shape");
        if (!cJSON_IsArray(sh))
                return roid_err_set(p->err, -EBADMSG, "%s: no 'shape' array", what);
        int n = cJSON_GetArraySize(sh);
        if (n == 3)
                return roid_err_set(p->err, -ENOTSUP, "%s: shape with 3 dimensions not supported", what);
        if (n != 2)
                return roid_err_set(p->err, -EBADMSG, "%s: shape with %d elements, [x, y] expected", what, n);
        uint64_t d[2];
        for (int i = 0; i < 2; i++) {
                const cJSON *v = cJSON_GetArrayItem(sh, i);
                double x = v->valuedouble;
                if (!cJSON_IsNumber(v) || !(x >= 1) || x > JSON_INT_MAX || x != floor(x))
                        return roid_err_set(p->err, -EBADMSG, "%s: shape element %d is not a positive integer", what,
                                            i);
                d[i] = (uint64_t)x;
        }
        uint64_t px, bytes;
        if (__builtin_mul_overflow(d[0], d[1], &px) || px > p->lim->max_pixels || d[0] > UINT32_MAX ||
            d[1] > UINT32_MAX)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "%s: shape [%" PRIu64 ", %" PRIu64 "] exceeds max_pixels %" PRIu64, what, d[0],
                                    d[1], p->lim->max_pixels);
        if (__builtin_mul_overflow(px, (uint64_t)roid_dtype_size(t), &bytes) || bytes > p->lim->max_frame_bytes)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "%s: shape [%" PRIu64 ", %" PRIu64 "] of %s exceeds max_frame_bytes %" PRIu64, what,
                                    d[0], d[1], roid_dtype_name(t), p->lim->max_frame_bytes);
        b->cols = (uint32_t)d[0];
        b->rows = (uint32_t)d[1];
        b->dtype = t;
        *ret_bytes = bytes;
        return 0;
}

static const char *const header_part_names[] = {
        "dheader-1.0 header",    "detector configuration", "dflatfield-1.0 header",       "flatfield blob",
        "dpixelmask-1.0 header", "pixel mask blob",        "dcountrate_table-1.0 header", "countrate table blob",
};

static int header_config(v1 *p) {
        roid_start_info *s = &p->m->u.start;
        const roid_part *pt = &p->parts[1];
        cJSON *c;
        int r = parse_json(p, 1, &c);
        if (r < 0)
                return r;
        s->v1_config_json = (const char *)pt->data;
        s->v1_config_json_len = pt->size;
        const char *w = "dheader part 2 (configuration)";

        double bx = 0, by = 0, px = 0, py = 0;
        int hx, hy;
        if ((hx = get_f64(p, c, w, "beam_center_x", &bx)) < 0 || (hy = get_f64(p, c, w, "beam_center_y", &by)) < 0)
                return -EBADMSG;
        s->beam_center_x = bx;
        s->beam_center_y = by;
        s->has_beam_center = hx && hy;
        if ((hx = get_f64(p, c, w, "x_pixel_size", &px)) < 0 || (hy = get_f64(p, c, w, "y_pixel_size", &py)) < 0)
                return -EBADMSG;
        s->pixel_size_x = px;
        s->pixel_size_y = py;
        s->has_pixel_size = hx && hy;
        uint64_t ix = 0, iy = 0;
        if ((hx = get_u64(p, c, w, "x_pixels_in_detector", false, &ix)) < 0 ||
            (hy = get_u64(p, c, w, "y_pixels_in_detector", false, &iy)) < 0)
                return -EBADMSG;
        s->image_size_x = ix;
        s->image_size_y = iy;
        s->has_image_size = hx && hy;

        /* LiberTEM's rule: one image per trigger in the *e modes. */
        uint64_t nimages = 1, ntrigger = 1;
        int hn, ht;
        if ((hn = get_u64(p, c, w, "nimages", false, &nimages)) < 0 ||
            (ht = get_u64(p, c, w, "ntrigger", false, &ntrigger)) < 0)
                return -EBADMSG;
        const char *tm = get_str(c, "trigger_mode");
        if (tm && (strcmp(tm, "exte") == 0 || strcmp(tm, "inte") == 0)) {
                s->number_of_images = ntrigger;
                s->has_number_of_images = ht;
        } else if (hn || ht) {
                if (__builtin_mul_overflow(nimages, ntrigger, &s->number_of_images))
                        return roid_err_set(p->err, -EBADMSG,
                                            "%s: nimages %" PRIu64 " x ntrigger %" PRIu64 " overflows", w, nimages,
                                            ntrigger);
                s->has_number_of_images = true;
        }

        if ((r = get_f64(p, c, w, "count_time", &s->count_time)) < 0)
                return r;
        s->has_count_time = r;
        if ((r = get_f64(p, c, w, "frame_time", &s->frame_time)) < 0)
                return r;
        s->has_frame_time = r;
        if ((r = get_f64(p, c, w, "photon_energy", &s->incident_energy)) < 0)
                return r;
        s->has_energy = r;
        if ((r = get_f64(p, c, w, "wavelength", &s->incident_wavelength)) < 0)
                return r;
        s->has_wavelength = r;
        if ((r = get_f64(p, c, w, "sensor_thickness", &s->sensor_thickness)) < 0)
                return r;
        double thr = NAN;
        if ((r = get_f64(p, c, w, "threshold_energy", &thr)) < 0)
                return r;
        if (r)
                s->threshold_energy[0] = thr;

        uint64_t bits;
        if ((r = get_u64(p, c, w, "bit_depth_image", false, &bits)) < 0)
                return r;
        if (r) {
                if (bits == 8)
                        s->image_dtype = ROID_DT_U8;
                else if (bits == 16)
                        s->image_dtype = ROID_DT_U16;
                else if (bits == 32)
                        s->image_dtype = ROID_DT_U32;
                else
                        return roid_err_set(p->err, -ENOTSUP, "%s: bit_depth_image %" PRIu64 " not supported", w, bits);
        }
        const char *str;
        if ((str = get_str(c, "description")))
                copy_text(s->detector_description, sizeof s->detector_description, str);
        if ((str = get_str(c, "detector_number")))
                copy_text(s->detector_serial_number, sizeof s->detector_serial_number, str);
        if ((str = get_str(c, "sensor_material")))
                copy_text(s->sensor_material, sizeof s->sensor_material, str);
        if ((str = get_str(c, "data_collection_date")))
                copy_text(s->arm_date, sizeof s->arm_date, str);

        if (get_bool(p, c, w, "countrate_correction_applied", &s->countrate_correction_enabled) < 0 ||
            get_bool(p, c, w, "flatfield_correction_applied", &s->flatfield_enabled) < 0 ||
            get_bool(p, c, w, "pixel_mask_applied", &s->pixel_mask_enabled) < 0 ||
            get_bool(p, c, w, "virtual_pixel_correction_applied", &s->virtual_pixel_interpolation_enabled) < 0)
                return -EBADMSG;

        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(c, "detector_translation");
        if (cJSON_IsArray(tr) && cJSON_GetArraySize(tr) == 3) {
                for (int i = 0; i < 3; i++) {
                        const cJSON *v = cJSON_GetArrayItem(tr, i);
                        if (!cJSON_IsNumber(v))
                                return roid_err_set(p->err, -EBADMSG, "%s: detector_translation[%d] not a number", w,
                                                    i);
                        s->detector_translation[i] = v->valuedouble;
                }
                s->has_detector_translation = true;
        }
        for (int i = 0; i < ROID_GONIO_AXES; i++) {
                char k1[32], k2[32];
                snprintf(k1, sizeof k1, "%s_start", roid_gonio_axis_names[i]);
                snprintf(k2, sizeof k2, "%s_increment", roid_gonio_axis_names[i]);
                int a = get_f64(p, c, w, k1, &s->goniometer[i].start);
                int b = get_f64(p, c, w, k2, &s->goniometer[i].increment);
                if (a < 0 || b < 0)
                        return -EBADMSG;
                s->goniometer[i].present = a || b;
        }
        return 0;
}

/* Parts 3..8 of header_detail all: a JSON header and a raw blob each. */
static int header_array(v1 *p, size_t idx, const char *prefix, roid_dtype t, roid_blob *ret) {
        cJSON *o;
        int r = parse_json(p, idx, &o);
        if (r < 0)
                return r;
        r = check_htype(p, o, idx, prefix, header_part_names[idx]);
        if (r < 0)
                return r;
        char what[64];
        snprintf(what, sizeof what, "dheader part %zu (%s)", idx + 1, header_part_names[idx]);
        const char *type = get_str(o, "type");
        if (!type || roid_dtype_from_name(type, strlen(type)) != t)
                return roid_err_set(p->err, -EBADMSG, "%s: type '%.20s', %s expected", what, type ? type : "(none)",
                                    roid_dtype_name(t));
        roid_blob b = {0};
        uint64_t bytes;
        r = get_shape(p, o, what, t, &b, &bytes);
        if (r < 0)
                return r;
        const roid_part *blob = &p->parts[idx + 1];
        if (blob->size != bytes)
                return roid_err_set(
                        p->err, -EMSGSIZE,
                        "dheader part %zu (%s): %zu bytes, shape %" PRIu32 " x %" PRIu32 " of %s needs %" PRIu64,
                        idx + 2, header_part_names[idx + 1], blob->size, b.cols, b.rows, roid_dtype_name(t), bytes);
        b.data = blob->data;
        b.size = blob->size;
        b.comp = ROID_COMP_NONE;
        *ret = b;
        return 0;
}

static int parse_header(v1 *p, const cJSON *root) {
        roid_start_info *s = &p->m->u.start;
        p->m->type = ROID_MSG_START;
        for (int i = 0; i < ROID_MAX_CHANNELS; i++)
                s->threshold_energy[i] = NAN;
        s->n_channels = 1;
        strcpy(s->channels[0], "image");

        const char *d = get_str(root, "header_detail");
        size_t want;
        if (!d)
                return roid_err_set(p->err, -EBADMSG, "dheader: no 'header_detail'");
        if (strcmp(d, "none") == 0)
                want = 1;
        else if (strcmp(d, "basic") == 0)
                want = 2;
        else if (strcmp(d, "all") == 0)
                want = 8;
        else
                return roid_err_set(p->err, -EBADMSG, "dheader: header_detail '%.20s' (none, basic, all)", d);
        strcpy(s->v1_header_detail, d);
        if (p->n < want)
                return roid_err_set(p->err, -EBADMSG,
                                    "dheader: %zu parts, header_detail %s needs %zu: part %zu (%s) missing", p->n,
                                    s->v1_header_detail, want, p->n + 1, header_part_names[p->n]);
        if (p->n > want + 1)
                return roid_err_set(p->err, -EBADMSG, "dheader: %zu parts, at most %zu expected for header_detail %s",
                                    p->n, want + 1, s->v1_header_detail);
        /* root is dead from here on: the next parse_json() resets the arena. */
        int r;
        if (want >= 2 && (r = header_config(p)) < 0)
                return r;
        if (want == 8) {
                if ((r = header_array(p, 2, "dflatfield-", ROID_DT_F32, &s->flatfield[0])) < 0 ||
                    (r = header_array(p, 4, "dpixelmask-", ROID_DT_U32, &s->pixel_mask[0])) < 0 ||
                    (r = header_array(p, 6, "dcountrate_table-", ROID_DT_F32, &s->countrate_table)) < 0)
                        return r;
        }
        if (p->n == want + 1)
                take_appendix(p, want, " (header appendix)");
        return 0;
}

static int parse_encoding(v1 *p, const char *what, const char *e, roid_blob *b) {
        static const struct {
                const char *name;
                roid_comp comp;
                unsigned elem;
        } tab[] = {
                {"<", ROID_COMP_NONE, 0},          {"lz4<", ROID_COMP_LZ4_RAW, 0},    {"bs8-lz4<", ROID_COMP_BSLZ4, 1},
                {"bs16-lz4<", ROID_COMP_BSLZ4, 2}, {"bs32-lz4<", ROID_COMP_BSLZ4, 4},
        };
        for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
                if (strcmp(e, tab[i].name) == 0) {
                        b->comp = tab[i].comp;
                        b->comp_elem_size = tab[i].elem;
                        return 0;
                }
        }
        size_t n = strlen(e);
        if (n > 0 && e[n - 1] == '>')
                return roid_err_set(p->err, -ENOTSUP, "%s: big-endian encoding '%.20s' not supported", what, e);
        return roid_err_set(p->err, -ENOTSUP, "%s: encoding '%.20s' not supported (<, lz4<, bs8/16/32-lz4<)", what, e);
}

static const char *const image_part_names[] = {"dimage-1.0 header", "dimage_d-1.0 header", "data blob",
                                               "dconfig-1.0 times"};

static int parse_image(v1 *p, const cJSON *root) {
        roid_image_info *im = &p->m->u.image;
        p->m->type = ROID_MSG_IMAGE;
        int r = get_u64(p, root, "dimage part 1", "frame", true, &im->image_id);
        if (r < 0)
                return r;
        const char *h = get_str(root, "hash");
        if (h)
                copy_text(im->v1_hash, sizeof im->v1_hash, h);
        if (p->n < 4)
                return roid_err_set(p->err, -EBADMSG, "dimage: %zu parts, 4 needed: part %zu (%s) missing", p->n,
                                    p->n + 1, image_part_names[p->n]);
        if (p->n > 5)
                return roid_err_set(p->err, -EBADMSG, "dimage: %zu parts, at most 5 expected", p->n);

        cJSON *o;
        if ((r = parse_json(p, 1, &o)) < 0)
                return r;
        if ((r = check_htype(p, o, 1, "dimage_d-", "dimage_d-1.0")) < 0)
                return r;
        const char *w = "dimage part 2 (dimage_d-1.0)";
        roid_channel_blob *ch = &im->channel[0];
        strcpy(ch->name, "image");
        const char *type = get_str(o, "type");
        roid_dtype t = type ? roid_dtype_from_name(type, strlen(type)) : ROID_DT_NONE;
        if (!type)
                return roid_err_set(p->err, -EBADMSG, "%s: no 'type'", w);
        if (t != ROID_DT_U8 && t != ROID_DT_U16 && t != ROID_DT_U32)
                return roid_err_set(p->err, -ENOTSUP, "%s: type '%.20s' not supported (uint8, uint16, uint32)", w,
                                    type);
        uint64_t bytes, size;
        if ((r = get_shape(p, o, w, t, &ch->blob, &bytes)) < 0)
                return r;
        const char *enc = get_str(o, "encoding");
        if (!enc)
                return roid_err_set(p->err, -EBADMSG, "%s: no 'encoding'", w);
        if ((r = parse_encoding(p, w, enc, &ch->blob)) < 0)
                return r;
        if ((r = get_u64(p, o, w, "size", true, &size)) < 0)
                return r;
        const roid_part *data = &p->parts[2];
        if (size != data->size)
                return roid_err_set(p->err, -EMSGSIZE, "%s: size %" PRIu64 " but part 3 has %zu bytes", w, size,
                                    data->size);
        if (ch->blob.comp == ROID_COMP_NONE && data->size != bytes)
                return roid_err_set(p->err, -EMSGSIZE,
                                    "dimage part 3: %zu bytes, shape [%" PRIu32 ", %" PRIu32 "] of %s needs %" PRIu64,
                                    data->size, ch->blob.cols, ch->blob.rows, roid_dtype_name(t), bytes);
        ch->blob.data = data->data;
        ch->blob.size = data->size;
        im->n_channels = 1;

        if ((r = parse_json(p, 3, &o)) < 0)
                return r;
        if ((r = check_htype(p, o, 3, "dconfig-", "dconfig-1.0")) < 0)
                return r;
        w = "dimage part 4 (dconfig-1.0)";
        uint64_t t0 = 0, t1 = 0, rt = 0;
        int a, b, c;
        if ((a = get_u64(p, o, w, "start_time", false, &t0)) < 0 ||
            (b = get_u64(p, o, w, "stop_time", false, &t1)) < 0 || (c = get_u64(p, o, w, "real_time", false, &rt)) < 0)
                return -EBADMSG;
        im->start_time = (roid_rational){t0, 1000000000};
        im->stop_time = (roid_rational){t1, 1000000000};
        im->real_time = (roid_rational){rt, 1000000000};
        im->has_times = a && b && c;
        if (p->n == 5)
                take_appendix(p, 4, " (image appendix)");
        return 0;
}

static int parse(v1 *p) {
        cJSON *root;
        int r = parse_json(p, 0, &root);
        if (r < 0)
                return r;
        const char *h = get_str(root, "htype");
        if (!h)
                return roid_err_set(p->err, -EBADMSG, "part 1: no 'htype' string");
        r = get_u64(p, root, "part 1", "series", true, &p->m->series_id);
        if (r < 0)
                return r;
        if (has_prefix(h, "dheader-"))
                return parse_header(p, root);
        if (has_prefix(h, "dimage-"))
                return parse_image(p, root);
        if (has_prefix(h, "dseries_end-")) {
                p->m->type = ROID_MSG_END;
                if (p->n != 1)
                        return roid_err_set(p->err, -EBADMSG, "dseries_end: %zu parts, 1 expected", p->n);
                return 0;
        }
        return roid_err_set(p->err, -ENOTSUP, "part 1: htype '%.40s' not supported (dheader, dimage, dseries_end)", h);
}

int stream1_parse_internal(stream1_arena *a, const roid_part *parts, size_t n_parts, const roid_limits *lim,
                           roid_msg *m, roid_err *err) {
        pthread_once(&hooks_once, install_hooks);
        v1 p = {.a = a, .lim = lim, .err = err, .parts = parts, .n = n_parts, .m = m};
        active = a;
        int r = parse(&p);
        drop_tree(&p);
        active = NULL;
        if (a->cap > ARENA_KEEP) /* nothing points into it any more (user data and blobs point into parts) */
                stream1_arena_free_internal(a);
        return r;
}
