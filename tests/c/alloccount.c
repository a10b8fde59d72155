#include "alloccount.h"

#include <stddef.h>

static unsigned long n_allocs;

unsigned long alloc_count(void) {
        return n_allocs;
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
