#include "ingest/ingest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/codec.h"
#include "ingest/parse.h"
#include "service/log.h"

struct roid_ingest {
        roid_ingest_params p; /* limits and channel: the tracker's, per series */
        roid_sink sink;
        roid_counters *ctr;
        roid_parser *parser;
        roid_tracker tr;
        roid_msg msg;
        /* Decode buffers, one per channel; grown only when a series has a
         * larger frame than any before. */
        void *buf[ROID_MAX_CHANNELS];
        size_t buf_cap[ROID_MAX_CHANNELS];
};

int roid_ingest_new(const roid_ingest_params *p, const roid_sink *sink, roid_counters *ctr, roid_ingest **ret) {
        roid_ingest *in = calloc(1, sizeof *in);
        if (!in)
                return -ENOMEM;
        in->p = *p;
        in->p.channel = NULL;
        in->sink = *sink;
        in->ctr = ctr;
        int r = roid_parser_new(&p->limits, &in->parser);
        if (r < 0) {
                free(in);
                return r;
        }
        roid_tracker_init(&in->tr, &p->limits, ctr, p->implicit_series);
        roid_tracker_set_next(&in->tr, &p->limits, p->channel);
        *ret = in;
        return 0;
}

void roid_ingest_free(roid_ingest *in) {
        if (!in)
                return;
        roid_tracker_done(&in->tr);
        roid_parser_free(in->parser);
        for (int i = 0; i < ROID_MAX_CHANNELS; i++)
                free(in->buf[i]);
        free(in);
}

const roid_tracker *roid_ingest_tracker(const roid_ingest *in) {
        return &in->tr;
}

void roid_ingest_set_config(roid_ingest *in, const roid_limits *lim, const char *channel) {
        roid_tracker_set_next(&in->tr, lim, channel);
}

static void end_series(roid_ingest *in, bool terminated) {
        if (!in->tr.open)
                return;
        if (!terminated) {
                roid_count(in->ctr, ROID_C_series_unterminated, 1);
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "series %llu%s%s closed without an end message after %llu images",
                                 (unsigned long long)in->tr.cur.series_id, in->tr.cur.series_unique_id[0] ? " " : "",
                                 in->tr.cur.series_unique_id, (unsigned long long)in->tr.cur.images_accepted);
        }
        if (in->sink.series_end)
                in->sink.series_end(in->sink.ctx, &in->tr.cur, terminated);
        roid_tracker_release(&in->tr);
}

static void frame_failed(roid_ingest *in, uint64_t image_id, const char *chan, const char *why) {
        roid_count(in->ctr, ROID_C_frames_failed, 1);
        ROID_LOG_LIMITED(ROID_LOG_ERR, "series %llu image %llu channel %s: %s [frames_failed]",
                         (unsigned long long)in->tr.cur.series_id, (unsigned long long)image_id, chan, why);
        if (in->sink.frame_error)
                in->sink.frame_error(in->sink.ctx, &in->tr.cur, image_id, chan, why);
}

static void decode_image(roid_ingest *in, const roid_msg *m) {
        const roid_image_info *im = &m->u.image;
        const roid_series *s = &in->tr.cur;
        bool any = false;
        for (unsigned c = 0; c < im->n_channels; c++) {
                if (!roid_series_channel_selected(s, s->channel, im->channel[c].name, c))
                        continue;
                any = true;
                const roid_blob *b = &im->channel[c].blob;
                uint64_t bytes = (uint64_t)b->rows * b->cols * roid_dtype_size(b->dtype);
                if (bytes > in->tr.lim.max_frame_bytes) { /* the parser checks too: defence in depth */
                        char why[96];
                        snprintf(why, sizeof why, "frame of %llu bytes exceeds max_frame_bytes %llu",
                                 (unsigned long long)bytes, (unsigned long long)in->tr.lim.max_frame_bytes);
                        frame_failed(in, im->image_id, im->channel[c].name, why);
                        continue;
                }
                if (bytes > in->buf_cap[c] && !in->p.defer_decode) {
                        void *n = realloc(in->buf[c], (size_t)bytes);
                        if (!n) {
                                frame_failed(in, im->image_id, im->channel[c].name, "out of memory");
                                continue;
                        }
                        in->buf[c] = n;
                        in->buf_cap[c] = (size_t)bytes;
                }
                roid_err err = {""};
                int r = in->p.defer_decode ? 0 : roid_blob_decode(b, in->buf[c], (size_t)bytes, &err);
                if (r < 0) {
                        frame_failed(in, im->image_id, im->channel[c].name, err.msg);
                        continue;
                }
                if (!in->p.defer_decode)
                        roid_count(in->ctr, ROID_C_frames_decoded, 1);
                int sc = roid_series_channel_index(s, im->channel[c].name);
                roid_frame_event ev = {
                        .series = s,
                        .image = im,
                        .user_data = &m->user_data,
                        .image_id = im->image_id,
                        .channel = c,
                        .channel_name = im->channel[c].name,
                        .dtype = b->dtype,
                        .rows = b->rows,
                        .cols = b->cols,
                        .pixels = in->p.defer_decode ? NULL : in->buf[c],
                        .blob = b,
                        .pixel_mask = sc >= 0 ? s->pixel_mask[sc] : NULL,
                };
                if (in->sink.frame)
                        in->sink.frame(in->sink.ctx, &ev);
        }
        if (!any && im->n_channels)
                frame_failed(in, im->image_id, s->channel, "the image has no such channel");
}

int roid_ingest_msg(roid_ingest *in, const roid_msg *m) {
        roid_err err = {""};
        if (m->user_data_ignored[0]) {
                roid_count(in->ctr, ROID_C_user_data_ignored, 1);
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "%s message of series %llu: its user data is left out: %s [%s]",
                                 roid_msg_type_name(m->type), (unsigned long long)m->series_id, m->user_data_ignored,
                                 roid_counter_name(ROID_C_user_data_ignored));
        }
        if (roid_tracker_would_close(&in->tr, m))
                end_series(in, false);
        if (m->type == ROID_MSG_IMAGE)
                roid_count(in->ctr, ROID_C_images_received, 1);
        int r = roid_tracker_feed(&in->tr, m, &err);
        switch (r) {
        case ROID_TR_STARTED:
                roid_log(ROID_LOG_INFO, "series %llu%s%s started: %u x %u %s, %u channel(s), %llu images expected",
                         (unsigned long long)in->tr.cur.series_id, in->tr.cur.series_unique_id[0] ? " " : "",
                         in->tr.cur.series_unique_id, in->tr.cur.rows, in->tr.cur.cols,
                         roid_dtype_name(in->tr.cur.dtype), in->tr.cur.start.n_channels,
                         (unsigned long long)in->tr.cur.start.number_of_images);
                if (in->sink.series_start)
                        in->sink.series_start(in->sink.ctx, &in->tr.cur);
                return 0;
        case ROID_TR_IMAGE:
                /* An implicit series is announced with its first image. */
                if (in->tr.cur.implicit && in->tr.cur.images_accepted == 1 && in->sink.series_start)
                        in->sink.series_start(in->sink.ctx, &in->tr.cur);
                decode_image(in, m);
                return 0;
        case ROID_TR_ENDED:
                end_series(in, true);
                return 0;
        case ROID_TR_IGNORED:
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "%s", err.msg);
                return 0;
        case ROID_TR_REFUSED:
                ROID_LOG_LIMITED(ROID_LOG_WARNING, "%s", err.msg);
                if (in->sink.frame_error)
                        in->sink.frame_error(in->sink.ctx, &in->tr.cur, m->u.image.image_id, in->tr.cur.channel,
                                             err.msg);
                return 0;
        default:
                ROID_LOG_LIMITED(ROID_LOG_ERR, "%s message of series %llu rejected: %s", roid_msg_type_name(m->type),
                                 (unsigned long long)m->series_id, err.msg);
                if (in->sink.message_error)
                        in->sink.message_error(in->sink.ctx, roid_counter_get(in->ctr, ROID_C_messages_received),
                                               err.msg);
                return r;
        }
}

/* A message is parsed with the limits of the series it belongs to.  While
 * new ones wait behind the open series (roid_ingest_set_config), a start
 * opens the next series: it is parsed with the new limits, also when the open
 * series' refuse it (a larger max_depth, say). */
static int parse(roid_ingest *in, const roid_part *parts, size_t n_parts, roid_err *err) {
        roid_parser_set_limits(in->parser, &in->tr.lim);
        int r = roid_parse(in->parser, parts, n_parts, &in->msg, err);
        if (!in->tr.next_set || (r >= 0 && in->msg.type != ROID_MSG_START))
                return r;
        roid_err err_next = {""};
        roid_parser_set_limits(in->parser, &in->tr.next_lim);
        int rn = roid_parse(in->parser, parts, n_parts, &in->msg, &err_next);
        roid_parser_set_limits(in->parser, &in->tr.lim);
        if (rn >= 0 && in->msg.type == ROID_MSG_START)
                return rn;
        if (r >= 0) { /* a start the new limits refuse */
                *err = err_next;
                return rn;
        }
        return r;
}

static roid_counter rejected_counter(int r) {
        return r == -EMSGSIZE  ? ROID_C_messages_bad_size
               : r == -ENOTSUP ? ROID_C_messages_unknown
                               : ROID_C_messages_malformed;
}

/* A message refused before it became a roid_msg: counted, logged, told to
 * the sink.  what: "" or " (n part(s), m bytes)". */
static int reject(roid_ingest *in, int r, const char *what, const char *why) {
        const roid_counter c = rejected_counter(r);
        const uint64_t id = roid_counter_get(in->ctr, ROID_C_messages_received);
        roid_count(in->ctr, c, 1);
        ROID_LOG_LIMITED(ROID_LOG_ERR, "message %llu%s rejected: %s [%s]", (unsigned long long)id, what, why,
                         roid_counter_name(c));
        if (in->sink.message_error)
                in->sink.message_error(in->sink.ctx, id, why);
        return r;
}

int roid_ingest_rejected(roid_ingest *in, int r, const char *why) {
        roid_count(in->ctr, ROID_C_messages_received, 1);
        return reject(in, r, "", why);
}

int roid_ingest_parts(roid_ingest *in, const roid_part *parts, size_t n_parts) {
        uint64_t bytes = 0;
        for (size_t i = 0; i < n_parts; i++)
                bytes += parts[i].size;
        roid_count(in->ctr, ROID_C_messages_received, 1);
        roid_count(in->ctr, ROID_C_bytes_received, bytes);
        roid_err err = {""};
        int r = parse(in, parts, n_parts, &err);
        if (r < 0) {
                char what[64];
                snprintf(what, sizeof what, " (%zu part(s), %llu bytes)", n_parts, (unsigned long long)bytes);
                return reject(in, r, what, err.msg);
        }
        return roid_ingest_msg(in, &in->msg);
}

void roid_ingest_flush(roid_ingest *in) {
        end_series(in, false);
}
