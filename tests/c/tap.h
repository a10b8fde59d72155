/* tap.h - a minimal TAP producer for roid's C tests (meson protocol 'tap').
 * Each check prints "ok N - ..." or "not ok N - ..."; tap_done() prints the
 * plan and returns the exit status (non-zero if anything failed). */
#ifndef ROID_TESTS_TAP_H
#define ROID_TESTS_TAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool tap_ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool tap_eq_u64(uint64_t got, uint64_t want, const char *what);
bool tap_eq_i64(int64_t got, int64_t want, const char *what);
bool tap_near(double got, double want, double rel, const char *what);
void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void tap_skip(const char *why);
int tap_done(void);

/* Test data directory (ROID_TESTDATA, default ../shared/testdata) joined with
 * rel; returns a static buffer. */
const char *tap_data(const char *rel);
/* Reads a whole file into a malloc'd buffer; NULL on error. */
uint8_t *tap_slurp(const char *path, size_t *ret_size);
/* Bytes of the heap in use now (glibc's mallinfo2, or ASan's allocator's
 * count under ASan), for the tests that bound what a path may keep. */
size_t tap_heap_in_use(void);

#endif
