#include "alloccount.h"

#include <stddef.h>
#include <stdlib.h>

static unsigned long n_allocs;

unsigned long alloc_count(void) {
        return n_allocs;
}

bool alloc_count_sees_malloc(void) {
        const unsigned long before = n_allocs;
        void *volatile probe = malloc(16);
        free(probe);
        return n_allocs == before + 1;
}

#if COUNT_ALLOCS
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

void *malloc(size_t n) {
        n_allocs++;
        return __libc_malloc(n);
}

void *calloc(size_t a, size_t b) {
        n_allocs++;
        return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n) {
        n_allocs++;
        return __libc_realloc(p, n);
}

void free(void *p) {
        __libc_free(p);
}
#endif
