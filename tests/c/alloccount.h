/* alloccount.h - a counting allocator for the tests that show a code path
 * allocates nothing: linking alloccount.c puts malloc, calloc and realloc
 * (and free, for symmetry) of the test process in front of glibc's.  ASan
 * brings its own allocator, so under it nothing is counted.
 * Threads: the count is a plain counter, for single-threaded tests. */
#ifndef ROID_TESTS_ALLOCCOUNT_H
#define ROID_TESTS_ALLOCCOUNT_H

#include <stdbool.h>

#if defined(__SANITIZE_ADDRESS__)
#define COUNT_ALLOCS 0
#else
#define COUNT_ALLOCS 1
#endif

/* Calls of malloc, calloc and realloc so far (0 when COUNT_ALLOCS is 0). */
unsigned long alloc_count(void);
/* Whether one malloc shows in the count: check it before trusting a 0. */
bool alloc_count_sees_malloc(void);

#endif
