#include "ingest/series.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/codec.h"
#include "service/log.h"

void roid_tracker_init(roid_tracker *t, const roid_limits *lim, roid_counters *ctr, bool implicit_series) {
        *t = (roid_tracker){.lim = *lim, .ctr = ctr, .implicit_series = implicit_series};
}

static void series_free(roid_series *s) {
        for (int i = 0; i < ROID_MAX_CHANNELS; i++) {
                free(s->pixel_mask[i]);
                free(s->flatfield[i]);
        }
        for (uint32_t i = 0; i < s->n_seen; i++)
                free(s->seen[i].bits);
        free(s->seen);
        free(s->config_json);
        free(s->ud_copy);
        memset(s, 0, sizeof *s);
}

void roid_tracker_done(roid_tracker *t) {
        if (t->open)
                series_free(&t->cur);
        t->open = false;
}

static void adopt_next(roid_tracker *t) {
        if (!t->next_set)
                return;
        t->lim = t->next_lim;
        memcpy(t->channel, t->next_channel, sizeof t->channel);
        t->next_set = false;
}

void roid_tracker_set_next(roid_tracker *t, const roid_limits *lim, const char *channel) {
        t->next_lim = *lim;
        snprintf(t->next_channel, sizeof t->next_channel, "%s", channel ? channel : "");
        t->next_set = true;
        if (!t->open)
                adopt_next(t);
}

void roid_tracker_close_open(roid_tracker *t) {
        if (!t->open)
                return;
        series_free(&t->cur);
        t->open = false;
        adopt_next(t); /* the next series opens with what was set meanwhile */
}

void roid_tracker_release(roid_tracker *t) {
        roid_tracker_close_open(t);
}

int roid_series_channel_index(const roid_series *s, const char *name) {
        for (unsigned i = 0; i < s->start.n_channels; i++)
                if (strcmp(s->start.channels[i], name) == 0)
                        return (int)i;
        return -1;
}

/* "#N" -> N; config.c has checked the form. */
static unsigned long channel_number(const char *sel) {
        return strtoul(sel + 1, NULL, 10);
}

const char *roid_series_selected_channel(const roid_series *s, const char *sel) {
        if (!sel || !sel[0])
                return NULL;
        if (sel[0] != '#')
                return sel;
        const unsigned long n = channel_number(sel);
        return s->start.n_channels > n ? s->start.channels[n] : NULL;
}

bool roid_series_channel_selected(const roid_series *s, const char *sel, const char *name, unsigned index) {
        if (!sel || !sel[0])
                return true;
        const char *named = roid_series_selected_channel(s, sel);
        return named ? strcmp(name, named) == 0 : index == channel_number(sel);
}

/* Same series?  The unique id decides when both messages carry one (series_id
 * restarts after a detector initialize); V1 only has series_id. */
static bool same_series(const roid_series *s, const roid_msg *m) {
        if (s->series_unique_id[0] && m->series_unique_id[0])
                return strcmp(s->series_unique_id, m->series_unique_id) == 0;
        return s->series_id == m->series_id;
}

bool roid_tracker_would_close(const roid_tracker *t, const roid_msg *m) {
        if (!t->open)
                return false;
        if (m->type == ROID_MSG_START)
                return true;
        /* An implicit series gives way to the next one (replay of several files). */
        return m->type == ROID_MSG_IMAGE && t->cur.implicit && t->implicit_series && !same_series(&t->cur, m);
}

static int copy_blob_decoded(const roid_blob *b, uint32_t rows, uint32_t cols, roid_dtype want, void **ret,
                             const roid_limits *lim, roid_err *err) {
        if (!b->data)
                return 0;
        if (b->dtype != want)
                return roid_err_set(err, -EBADMSG, "%s array is %s", roid_dtype_name(want), roid_dtype_name(b->dtype));
        if ((rows && b->rows != rows) || (cols && b->cols != cols))
                return roid_err_set(err, -EBADMSG, "array is %u x %u, images are %u x %u", b->rows, b->cols, rows,
                                    cols);
        uint64_t n = (uint64_t)b->rows * b->cols;
        if (n > lim->max_pixels)
                return roid_err_set(err, -EMSGSIZE, "array of %u x %u exceeds max_pixels %llu", b->rows, b->cols,
                                    (unsigned long long)lim->max_pixels);
        size_t bytes = (size_t)n * roid_dtype_size(want);
        void *p = malloc(bytes ? bytes : 1);
        if (!p)
                return -ENOMEM;
        int r = roid_blob_decode(b, p, bytes, err);
        if (r < 0) {
                free(p);
                return r;
        }
        *ret = p;
        return 0;
}

static int open_from_start(roid_tracker *t, const roid_msg *m, roid_err *err) {
        roid_series *s = &t->cur;
        const roid_start_info *st = &m->u.start;
        int r;

        memset(s, 0, sizeof *s);
        s->format = m->format;
        s->series_id = m->series_id;
        memcpy(s->series_unique_id, m->series_unique_id, sizeof s->series_unique_id);
        memcpy(s->channel, t->channel, sizeof s->channel);
        s->start = *st;
        if (st->has_image_size) {
                if (st->image_size_x > UINT32_MAX || st->image_size_y > UINT32_MAX ||
                    st->image_size_x * st->image_size_y > t->lim.max_pixels) {
                        r = roid_err_set(err, -EMSGSIZE, "start: image size %llu x %llu exceeds max_pixels %llu",
                                         (unsigned long long)st->image_size_y, (unsigned long long)st->image_size_x,
                                         (unsigned long long)t->lim.max_pixels);
                        goto fail;
                }
                s->rows = (uint32_t)st->image_size_y;
                s->cols = (uint32_t)st->image_size_x;
        }
        s->dtype = st->image_dtype;
        for (unsigned c = 0; c < st->n_channels && c < ROID_MAX_CHANNELS; c++) {
                r = copy_blob_decoded(&st->pixel_mask[c], s->rows, s->cols, ROID_DT_U32, (void **)&s->pixel_mask[c],
                                      &t->lim, err);
                if (r < 0) {
                        roid_err_prefix(err, "start: pixel_mask of channel %s", st->channels[c]);
                        goto fail;
                }
                /* roid does not use flatfields: a bad one is left out, the series stands. */
                roid_err ferr = {""};
                r = copy_blob_decoded(&st->flatfield[c], s->rows, s->cols, ROID_DT_F32, (void **)&s->flatfield[c],
                                      &t->lim, &ferr);
                if (r == -ENOMEM) {
                        r = roid_err_set(err, r, "start: no memory for the flatfield of channel %s", st->channels[c]);
                        goto fail;
                }
                if (r < 0)
                        ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                         "series %llu: start: flatfield of channel %s left out (roid does not use it): "
                                         "%s",
                                         (unsigned long long)m->series_id, st->channels[c], ferr.msg);
                if (s->pixel_mask[c] && !s->rows) {
                        s->rows = st->pixel_mask[c].rows;
                        s->cols = st->pixel_mask[c].cols;
                }
        }
        /* The wire blobs die with the message; only the decoded copies remain. */
        memset(s->start.pixel_mask, 0, sizeof s->start.pixel_mask);
        memset(s->start.flatfield, 0, sizeof s->start.flatfield);
        memset(&s->start.countrate_table, 0, sizeof s->start.countrate_table);
        if (m->user_data.kind != ROID_UD_NONE && m->user_data.size) {
                s->ud_copy = malloc(m->user_data.size + 1);
                if (!s->ud_copy) {
                        r = -ENOMEM;
                        goto fail;
                }
                memcpy(s->ud_copy, m->user_data.data, m->user_data.size);
                s->ud_copy[m->user_data.size] = 0;
                s->user_data = (roid_user_data){m->user_data.kind, s->ud_copy, m->user_data.size};
        }
        if (st->v1_config_json) {
                s->config_json = strndup(st->v1_config_json, st->v1_config_json_len);
                if (!s->config_json) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        s->start.v1_config_json = s->config_json;
        t->open = true;
        return ROID_TR_STARTED;
fail:
        series_free(s);
        return r;
}

static int open_implicit(roid_tracker *t, const roid_msg *m) {
        roid_series *s = &t->cur;
        memset(s, 0, sizeof *s);
        s->format = m->format;
        s->series_id = m->series_id;
        memcpy(s->series_unique_id, m->series_unique_id, sizeof s->series_unique_id);
        memcpy(s->channel, t->channel, sizeof s->channel);
        s->implicit = true;
        const roid_image_info *im = &m->u.image;
        s->start.n_channels = im->n_channels;
        for (unsigned c = 0; c < im->n_channels; c++)
                memcpy(s->start.channels[c], im->channel[c].name, ROID_NAME_MAX);
        t->open = true;
        roid_log(ROID_LOG_NOTICE, "series %llu: image %llu arrived without a start message: opened an implicit series",
                 (unsigned long long)m->series_id, (unsigned long long)im->image_id);
        return 0;
}

/* Pages of the seen bitmap a series may hold. */
static uint32_t seen_max_pages(const roid_limits *lim) {
        const uint64_t dense = lim->max_images / ROID_SEEN_PAGE_IDS + (lim->max_images % ROID_SEEN_PAGE_IDS != 0);
        return dense < ROID_SEEN_MAX_PAGES ? (uint32_t)dense : ROID_SEEN_MAX_PAGES;
}

/* Marks image_id seen: 0, -EEXIST if it was, -EMSGSIZE beyond max_images,
 * -ENOSPC when its page would exceed seen_max_pages(), -ENOMEM.  Ids mostly
 * come in order, so the last page hit answers without a search; a page is
 * allocated once per ROID_SEEN_PAGE_IDS ids at most. */
static int mark_seen(roid_tracker *t, uint64_t id) {
        roid_series *s = &t->cur;
        if (id >= t->lim.max_images)
                return -EMSGSIZE;
        const uint64_t page = id / ROID_SEEN_PAGE_IDS;
        uint32_t at;
        if (s->n_seen && s->seen[s->seen_last].page == page) {
                at = s->seen_last;
        } else {
                uint32_t lo = 0, hi = s->n_seen;
                while (lo < hi) {
                        const uint32_t mid = lo + (hi - lo) / 2;
                        if (s->seen[mid].page < page)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                at = lo;
                if (at == s->n_seen || s->seen[at].page != page) {
                        if (s->n_seen >= seen_max_pages(&t->lim))
                                return -ENOSPC;
                        if (s->n_seen == s->seen_cap) {
                                uint32_t cap = s->seen_cap ? s->seen_cap * 2 : 16;
                                if (cap > seen_max_pages(&t->lim))
                                        cap = seen_max_pages(&t->lim);
                                roid_seen_page *n = realloc(s->seen, (size_t)cap * sizeof *n);
                                if (!n)
                                        return -ENOMEM;
                                s->seen = n;
                                s->seen_cap = cap;
                        }
                        uint8_t *bits = calloc(1, ROID_SEEN_PAGE_IDS / 8);
                        if (!bits)
                                return -ENOMEM;
                        memmove(&s->seen[at + 1], &s->seen[at], (size_t)(s->n_seen - at) * sizeof *s->seen);
                        s->seen[at] = (roid_seen_page){page, bits};
                        s->n_seen++;
                }
                s->seen_last = at;
        }
        const uint64_t bit = id % ROID_SEEN_PAGE_IDS;
        uint8_t *byte = &s->seen[at].bits[bit >> 3];
        const uint8_t mask = (uint8_t)(1u << (bit & 7));
        if (*byte & mask)
                return -EEXIST;
        *byte |= mask;
        return 0;
}

static int check_shape(roid_tracker *t, const roid_msg *m, roid_err *err) {
        roid_series *s = &t->cur;
        const roid_image_info *im = &m->u.image;
        for (unsigned c = 0; c < im->n_channels; c++) {
                const roid_blob *b = &im->channel[c].blob;
                /* Only the channels that are decoded have to fit the series. */
                if (!roid_series_channel_selected(s, s->channel, im->channel[c].name, c)) {
                        if ((s->rows && (b->rows != s->rows || b->cols != s->cols)) ||
                            (s->dtype != ROID_DT_NONE && b->dtype != s->dtype))
                                ROID_LOG_LIMITED(
                                        ROID_LOG_WARNING,
                                        "series %llu image %llu: channel %s (not selected, ignored) is %u x %u "
                                        "%s, the series is %u x %u %s",
                                        (unsigned long long)s->series_id, (unsigned long long)im->image_id,
                                        im->channel[c].name, b->rows, b->cols, roid_dtype_name(b->dtype), s->rows,
                                        s->cols, roid_dtype_name(s->dtype));
                        continue;
                }
                if (!s->rows) {
                        s->rows = b->rows;
                        s->cols = b->cols;
                }
                if (s->dtype == ROID_DT_NONE)
                        s->dtype = b->dtype;
                if (b->rows != s->rows || b->cols != s->cols)
                        return roid_err_set(err, -EBADMSG, "channel %s is %u x %u, the series is %u x %u",
                                            im->channel[c].name, b->rows, b->cols, s->rows, s->cols);
                if (b->dtype != s->dtype)
                        return roid_err_set(err, -EBADMSG, "channel %s is %s, the series is %s", im->channel[c].name,
                                            roid_dtype_name(b->dtype), roid_dtype_name(s->dtype));
        }
        return 0;
}

int roid_tracker_feed(roid_tracker *t, const roid_msg *m, roid_err *err) {
        int r;
        switch (m->type) {
        case ROID_MSG_START:
                if (t->open) { /* the caller should have closed it; never leak it */
                        roid_count(t->ctr, ROID_C_series_unterminated, 1);
                        roid_tracker_close_open(t);
                }
                r = open_from_start(t, m, err);
                if (r < 0) {
                        roid_count(t->ctr, r == -EMSGSIZE ? ROID_C_messages_bad_size : ROID_C_messages_malformed, 1);
                        return r;
                }
                roid_count(t->ctr, ROID_C_series_started, 1);
                return ROID_TR_STARTED;

        case ROID_MSG_IMAGE: {
                uint64_t id = m->u.image.image_id;
                if (t->open && t->cur.implicit && t->implicit_series && !same_series(&t->cur, m))
                        roid_tracker_close_open(t);
                if (!t->open) {
                        if (!t->implicit_series) {
                                roid_count(t->ctr, ROID_C_images_before_start, 1);
                                return roid_err_set(err, ROID_TR_IGNORED,
                                                    "image %llu of series %llu arrived with no open series: dropped",
                                                    (unsigned long long)id, (unsigned long long)m->series_id);
                        }
                        open_implicit(t, m);
                }
                if (!same_series(&t->cur, m)) {
                        roid_count(t->ctr, ROID_C_images_other_series, 1);
                        return roid_err_set(err, ROID_TR_IGNORED,
                                            "image %llu of series %llu%s%s while series %llu%s%s is open: dropped",
                                            (unsigned long long)id, (unsigned long long)m->series_id,
                                            m->series_unique_id[0] ? " " : "", m->series_unique_id,
                                            (unsigned long long)t->cur.series_id, t->cur.series_unique_id[0] ? " " : "",
                                            t->cur.series_unique_id);
                }
                if (check_shape(t, m, err) < 0) {
                        roid_count(t->ctr, ROID_C_images_bad_shape, 1);
                        roid_err_prefix(err, "image %llu", (unsigned long long)id);
                        return ROID_TR_REFUSED;
                }
                r = mark_seen(t, id);
                if (r == -EEXIST) {
                        roid_count(t->ctr, ROID_C_images_duplicate, 1);
                        return roid_err_set(err, ROID_TR_IGNORED, "image %llu of series %llu is a duplicate: ignored",
                                            (unsigned long long)id, (unsigned long long)m->series_id);
                }
                if (r == -EMSGSIZE) {
                        roid_count(t->ctr, ROID_C_images_out_of_range, 1);
                        return roid_err_set(err, ROID_TR_REFUSED, "image_id %llu is beyond max_images %llu: dropped",
                                            (unsigned long long)id, (unsigned long long)t->lim.max_images);
                }
                if (r < 0) { /* the frame is still good: only the duplicate check is lost */
                        roid_count(t->ctr, ROID_C_images_unchecked, 1);
                        if (!t->cur.seen_unchecked) {
                                char why[192];
                                if (r == -ENOMEM)
                                        snprintf(why, sizeof why,
                                                 "no memory (ENOMEM) for its page of the duplicate "
                                                 "detection bitmap");
                                else
                                        snprintf(why, sizeof why,
                                                 "the duplicate detection bitmap is full: %u pages of %u ids (the cap "
                                                 "for max_images %llu, at most %u pages)",
                                                 seen_max_pages(&t->lim), ROID_SEEN_PAGE_IDS,
                                                 (unsigned long long)t->lim.max_images, ROID_SEEN_MAX_PAGES);
                                roid_log(ROID_LOG_WARNING,
                                         "series %llu image_id %llu: %s; it and later such images of this series are "
                                         "accepted without duplicate detection [%s]",
                                         (unsigned long long)t->cur.series_id, (unsigned long long)id, why,
                                         roid_counter_name(ROID_C_images_unchecked));
                        }
                        t->cur.seen_unchecked = true;
                }
                if (t->cur.start.has_number_of_images && id >= t->cur.start.number_of_images) {
                        /* Kept: the data is real even if the count in the start was not. */
                        roid_count(t->ctr, ROID_C_images_out_of_range, 1);
                        ROID_LOG_LIMITED(ROID_LOG_WARNING,
                                         "image_id %llu is beyond number_of_images %llu of series %llu",
                                         (unsigned long long)id, (unsigned long long)t->cur.start.number_of_images,
                                         (unsigned long long)t->cur.series_id);
                }
                if (!t->cur.images_accepted || id > t->cur.max_image_id)
                        t->cur.max_image_id = id;
                t->cur.images_accepted++;
                return ROID_TR_IMAGE;
        }

        case ROID_MSG_END:
                if (!t->open || !same_series(&t->cur, m)) {
                        roid_count(t->ctr, ROID_C_ends_without_start, 1);
                        return roid_err_set(err, ROID_TR_IGNORED, "end of series %llu with %s: ignored",
                                            (unsigned long long)m->series_id,
                                            t->open ? "another series open" : "no open series");
                }
                roid_count(t->ctr, ROID_C_series_ended, 1);
                return ROID_TR_ENDED;

        default:
                roid_count(t->ctr, ROID_C_messages_unknown, 1);
                return roid_err_set(err, ROID_TR_IGNORED, "message of unknown type: ignored");
        }
}
