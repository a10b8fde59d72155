/* Captures: a CBOR sequence of arrays of byte strings.  Round trip through
 * the writer and reader, bare single-message files, and malformed files that
 * must stop the reader with a message, never crash it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/capture.h"
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

int main(void) {
        snprintf(path, sizeof path, "/tmp/roid-test-capture-%d.cbors", (int)getpid());
        test_round_trip();
        test_single_message();
        test_malformed();
        unlink(path);
        return tap_done();
}
