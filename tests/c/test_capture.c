/* Captures: a CBOR sequence of arrays of byte strings.  Round trip through
 * the writer and reader, bare single-message files, malformed files that
 * must stop the reader with a message, never crash it, and records over a
 * limit that are skipped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/capture.h"
#include "ingest/ingest.h"
#include "tap.h"

static char path[256];

static void write_file(const void *p, size_t n) {
        FILE *f = fopen(path, "wb");
        fwrite(p, 1, n, f);
        fclose(f);
}

static int read_all(size_t *ret_records, size_t *ret_parts, roid_err *err) {
        roid_limits lim;
        roid_limits_default(&lim);
        lim.max_parts = 4;
        roid_capture_reader *r;
        int e = roid_capture_reader_open(path, &lim, &r, err);
        if (e < 0)
                return e;
        roid_part parts[8];
        size_t n, recs = 0, total = 0;
        while ((e = roid_capture_next(r, parts, 8, &n, err)) > 0) {
                recs++;
                total += n;
        }
        roid_capture_reader_close(r);
        *ret_records = recs;
        *ret_parts = total;
        return e;
}

static void test_round_trip(void) {
        roid_capture_writer *w;
        tap_ok(roid_capture_writer_open(path, &w) == 0, "writer opens");
        static uint8_t big[70000];
        for (size_t i = 0; i < sizeof big; i++)
                big[i] = (uint8_t)(i * 7);
        roid_part m1[] = {{(const uint8_t *)"{\"htype\":\"x\"}", 13}};
        roid_part m2[] = {{(const uint8_t *)"a", 1}, {big, sizeof big}, {(const uint8_t *)"", 0}};
        roid_capture_write(w, m1, 1);
        roid_capture_write(w, m2, 3);
        tap_ok(roid_capture_writer_close(w) == 0, "writer closes cleanly");

        roid_limits lim;
        roid_limits_default(&lim);
        roid_capture_reader *r;
        roid_err err = {""};
        tap_ok(roid_capture_reader_open(path, &lim, &r, &err) == 0, "reader opens");
        roid_part p[8];
        size_t n;
        tap_ok(roid_capture_next(r, p, 8, &n, &err) == 1 && n == 1 && p[0].size == 13 &&
                       memcmp(p[0].data, "{\"htype\":\"x\"}", 13) == 0,
               "first record: one part, same bytes");
        tap_ok(roid_capture_next(r, p, 8, &n, &err) == 1 && n == 3 && p[1].size == sizeof big &&
                       memcmp(p[1].data, big, sizeof big) == 0 && p[2].size == 0,
               "second record: three parts (one of 70000 bytes, one empty), same bytes");
        tap_ok(roid_capture_next(r, p, 8, &n, &err) == 0, "clean end of file");
        roid_capture_reader_close(r);
}

static void test_single_message(void) {
        static const uint8_t v2[] = {0xd9, 0xd9, 0xf7, 0xa1, 0x64, 't', 'y', 'p', 'e', 0x63, 'e', 'n', 'd'};
        write_file(v2, sizeof v2);
        size_t recs = 0, parts = 0;
        roid_err err = {""};
        tap_ok(read_all(&recs, &parts, &err) == 0 && recs == 1 && parts == 1,
               "a bare V2 message file is one record of one part");
}

static void test_malformed(void) {
        static const struct {
                const char *name;
                const uint8_t bytes[16];
                size_t n;
                const char *word;
        } cases[] = {
                {"truncated array", {0x82, 0x41, 'a'}, 3, "truncated"},
                {"truncated byte string", {0x81, 0x45, 'a', 'b'}, 4, "truncated"},
                {"text string instead of bytes", {0x81, 0x61, 'a'}, 3, "byte string"},
                {"integer instead of array, after a good record", {0x81, 0x41, 'a', 0x05}, 4, "array"},
                {"too many parts", {0x85, 0x40, 0x40, 0x40, 0x40, 0x40}, 6, "parts"},
                {"absurd declared length",
                 {0x81, 0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
                 10,
                 "truncated"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                write_file(cases[i].bytes, cases[i].n);
                size_t recs = 0, parts = 0;
                roid_err err = {""};
                int r = read_all(&recs, &parts, &err);
                tap_ok(r < 0 && strstr(err.msg, cases[i].word) != NULL, "%s: rejected naming '%s' (%s)", cases[i].name,
                       cases[i].word, err.msg);
        }
}

/* A well-formed record over max_parts or max_message_bytes is skipped with
 * an error naming its byte offset and the limit, and the next record is read;
 * the ingest counts it as the live path counts such a message. */
static void test_skip_over_limit(void) {
        roid_capture_writer *w = NULL;
        /* the round trip's capture is there: never replaced, left as it was */
        struct stat before, after;
        const bool had = stat(path, &before) == 0;
        tap_ok(had && roid_capture_writer_open(path, &w) == -EEXIST && !w && stat(path, &after) == 0 &&
                       after.st_size == before.st_size && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
               "an existing capture file is not replaced (-EEXIST, untouched)");
        unlink(path);
        roid_capture_writer_open(path, &w);
        static uint8_t big[200];
        roid_part many[6], one = {(const uint8_t *)"b", 1}, fat = {big, sizeof big}, last = {(const uint8_t *)"d", 1};
        for (int i = 0; i < 6; i++)
                many[i] = (roid_part){(const uint8_t *)"{}", 2};
        roid_capture_write(w, many, 6);
        roid_capture_write(w, &one, 1);
        roid_capture_write(w, &fat, 1);
        roid_capture_write(w, &last, 1);
        roid_capture_writer_close(w);

        roid_limits lim;
        roid_limits_default(&lim);
        lim.max_parts = 4;
        lim.max_message_bytes = 100;
        roid_capture_reader *r;
        roid_err err = {""};
        roid_capture_reader_open(path, &lim, &r, &err);
        roid_counters ctr = {0};
        roid_ingest_params ip = {.channel = "", .limits = lim};
        roid_sink sink = {0};
        roid_ingest *in;
        roid_ingest_new(&ip, &sink, &ctr, &in);
        roid_part p[8];
        size_t n = 99;
        int e = roid_capture_next(r, p, 8, &n, &err);
        tap_ok(e == -EMSGSIZE && n == 99 && strstr(err.msg, "record at byte 0") && strstr(err.msg, "max_parts 4"),
               "6 parts over max_parts 4: skipped, naming the offset and the limit (%s)", err.msg);
        roid_ingest_rejected(in, e, err.msg);
        tap_ok(roid_counter_get(&ctr, ROID_C_messages_bad_size) == 1 &&
                       roid_counter_get(&ctr, ROID_C_messages_received) == 1,
               "... counted in messages_received and messages_bad_size");
        e = roid_capture_next(r, p, 8, &n, &err);
        tap_ok(e == 1 && n == 1 && p[0].size == 1 && p[0].data[0] == 'b', "the next record is read");
        const size_t at = roid_capture_offset(r);
        char want[48];
        snprintf(want, sizeof want, "record at byte %zu", at);
        e = roid_capture_next(r, p, 8, &n, &err);
        tap_ok(e == -EMSGSIZE && strstr(err.msg, want) && strstr(err.msg, "max_message_bytes 100"),
               "200 bytes over max_message_bytes 100: skipped, naming the offset and the limit (%s)", err.msg);
        e = roid_capture_next(r, p, 8, &n, &err);
        tap_ok(e == 1 && n == 1 && p[0].data[0] == 'd', "the record after it is read");
        tap_ok(roid_capture_next(r, p, 8, &n, &err) == 0, "clean end of file");
        roid_capture_reader_close(r);
        roid_ingest_free(in);

        /* A record over the limit and then cut: the cut one stops the reader. */
        static const uint8_t cut[] = {0x85, 0x40, 0x40, 0x40, 0x40, 0x40, 0x81, 0x45, 'a'};
        write_file(cut, sizeof cut);
        roid_capture_reader_open(path, &lim, &r, &err);
        e = roid_capture_next(r, p, 8, &n, &err);
        int e2 = roid_capture_next(r, p, 8, &n, &err);
        int e3 = roid_capture_next(r, p, 8, &n, &err);
        tap_ok(e == -EMSGSIZE && e2 == -EBADMSG && e3 == -EBADMSG && strstr(err.msg, "byte 6"),
               "a truncated record after a skipped one stops the reader for good (%s)", err.msg);
        roid_capture_reader_close(r);
}

int main(void) {
        snprintf(path, sizeof path, "/tmp/roid-test-capture-%d.cbors", (int)getpid());
        test_round_trip();
        test_single_message();
        test_malformed();
        test_skip_over_limit();
        unlink(path);
        return tap_done();
}
