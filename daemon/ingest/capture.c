#include "ingest/capture.h"

#include <cbor.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/cborwalk.h"

struct roid_capture_writer {
        FILE *f;
        int error;
};

struct roid_capture_reader {
        const uint8_t *map;
        size_t size;
        roid_limits lim;
        roid_cw_cursor cur;
        bool single; /* the file is one bare message */
        bool single_done;
        int failed; /* a malformed record stops the reader for good: the cursor is inside it */
        size_t failed_at;
};

int roid_capture_writer_open(const char *path, roid_capture_writer **ret) {
        roid_capture_writer *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        /* Never over a file that is there (a capture of an earlier run); a
         * FIFO or a device (/dev/stdout, a pipe to gzip) is written to. */
        w->f = fopen(path, "wbx");
        if (!w->f && errno == EEXIST) {
                struct stat st;
                if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
                        w->f = fopen(path, "wb");
                else
                        errno = EEXIST;
        }
        if (!w->f) {
                int r = -errno;
                free(w);
                return r;
        }
        *ret = w;
        return 0;
}

static void put(roid_capture_writer *w, const void *p, size_t n) {
        if (!w->error && n && fwrite(p, 1, n, w->f) != n)
                w->error = -errno ? -errno : -EIO;
}

int roid_capture_write(roid_capture_writer *w, const roid_part *parts, size_t n_parts) {
        unsigned char head[16];
        put(w, head, cbor_encode_array_start(n_parts, head, sizeof head));
        for (size_t i = 0; i < n_parts; i++) {
                put(w, head, cbor_encode_bytestring_start(parts[i].size, head, sizeof head));
                put(w, parts[i].data, parts[i].size);
        }
        return w->error;
}

int roid_capture_writer_close(roid_capture_writer *w) {
        if (!w)
                return 0;
        int r = w->error;
        if (fclose(w->f) != 0 && r == 0)
                r = -errno;
        free(w);
        return r;
}

int roid_capture_reader_open(const char *path, const roid_limits *lim, roid_capture_reader **ret, roid_err *err) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return roid_err_set(err, -errno, "%s: cannot open: %m", path);
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return roid_err_set(err, -EINVAL, "%s: not a regular file", path);
        }
        roid_capture_reader *r = calloc(1, sizeof *r);
        if (!r) {
                close(fd);
                return roid_err_set(err, -ENOMEM, "%s: out of memory", path);
        }
        r->size = (size_t)st.st_size;
        r->lim = *lim;
        if (r->size) {
                void *m = mmap(NULL, r->size, PROT_READ, MAP_PRIVATE, fd, 0);
                if (m == MAP_FAILED) {
                        int e = -errno;
                        close(fd);
                        free(r);
                        return roid_err_set(err, e, "%s: cannot map: %m", path);
                }
                r->map = m;
        }
        close(fd);
        roid_cw_init(&r->cur, r->map, r->size, lim->max_depth);
        /* A capture's items are arrays; anything else is one bare message. */
        r->single = r->size && (r->map[0] >> 5) != 4;
        *ret = r;
        return 0;
}

size_t roid_capture_offset(const roid_capture_reader *r) {
        return roid_cw_offset(&r->cur);
}

int roid_capture_next(roid_capture_reader *r, roid_part *parts, size_t max_parts, size_t *ret_n, roid_err *err) {
        if (r->single) {
                if (r->single_done)
                        return 0;
                r->single_done = true; /* skipped if too large: the file holds nothing else */
                if (r->size > r->lim.max_message_bytes)
                        return roid_err_set(err, -EMSGSIZE, "message file of %zu bytes exceeds max_message_bytes %zu",
                                            r->size, r->lim.max_message_bytes);
                parts[0] = (roid_part){r->map, r->size};
                *ret_n = 1;
                return 1;
        }
        if (r->failed)
                return roid_err_set(err, r->failed, "capture record at byte %zu is malformed; nothing after it is read",
                                    r->failed_at);
        if (roid_cw_at_end(&r->cur))
                return 0;
        size_t at = roid_cw_offset(&r->cur);
        roid_cw_item it;
        int e = roid_cw_next(&r->cur, &it, err);
        if (e < 0)
                goto bad;
        if (it.type != ROID_CW_ARRAY) {
                char d[48];
                e = roid_err_set(err, -EBADMSG, "expected an array of byte strings, found %s",
                                 roid_cw_describe(&it, d, sizeof d));
                goto bad;
        }
        roid_cw_iter iter;
        roid_cw_iter_init(&iter, &it);
        /* A record over a limit is still walked to its end (nothing is stored
         * past the limit): it is skipped, the next one can be read. */
        const size_t room = max_parts < r->lim.max_parts ? max_parts : r->lim.max_parts;
        size_t n = 0, total = 0;
        bool over_bytes = false;
        while ((e = roid_cw_iter_next(&r->cur, &iter, err)) > 0) {
                roid_cw_item p;
                e = roid_cw_next(&r->cur, &p, err);
                if (e < 0)
                        goto bad;
                if (p.type != ROID_CW_BSTR || p.indefinite) {
                        char d[48];
                        e = roid_err_set(err, -EBADMSG, "part %zu is %s, expected a definite byte string", n,
                                         roid_cw_describe(&p, d, sizeof d));
                        goto bad;
                }
                over_bytes |= p.len > r->lim.max_message_bytes - total;
                if (!over_bytes)
                        total += p.len;
                if (n < room && !over_bytes)
                        parts[n] = (roid_part){p.ptr, p.len};
                n++;
        }
        if (e < 0)
                goto bad;
        if (n > room)
                return roid_err_set(err, -EMSGSIZE, "capture record at byte %zu: %zu parts exceed %s %zu: skipped", at,
                                    n, room < r->lim.max_parts ? "the caller's max_parts" : "max_parts", room);
        if (over_bytes)
                return roid_err_set(err, -EMSGSIZE, "capture record at byte %zu exceeds max_message_bytes %zu: skipped",
                                    at, r->lim.max_message_bytes);
        *ret_n = n;
        return 1;
bad:
        r->failed = e;
        r->failed_at = at;
        roid_err_prefix(err, "capture record at byte %zu", at);
        return e;
}

void roid_capture_reader_close(roid_capture_reader *r) {
        if (!r)
                return;
        if (r->map)
                munmap((void *)r->map, r->size);
        free(r);
}
