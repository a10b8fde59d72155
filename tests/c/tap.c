#include "tap.h"

#if defined(__SANITIZE_ADDRESS__)
size_t __sanitizer_get_current_allocated_bytes(void); /* the ASan allocator's heap in use */
#endif

#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_run, n_failed;

static bool vok(bool cond, const char *fmt, va_list ap) {
        n_run++;
        if (!cond)
                n_failed++;
        printf("%sok %d - ", cond ? "" : "not ", n_run);
        vprintf(fmt, ap);
        putchar('\n');
        fflush(stdout);
        return cond;
}

bool tap_ok(bool cond, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        bool r = vok(cond, fmt, ap);
        va_end(ap);
        return r;
}

bool tap_eq_u64(uint64_t got, uint64_t want, const char *what) {
        return tap_ok(got == want, "%s: got %llu, want %llu", what, (unsigned long long)got, (unsigned long long)want);
}

bool tap_eq_i64(int64_t got, int64_t want, const char *what) {
        return tap_ok(got == want, "%s: got %lld, want %lld", what, (long long)got, (long long)want);
}

bool tap_near(double got, double want, double rel, const char *what) {
        double tol = rel * fmax(fabs(want), 1e-300);
        bool c = fabs(got - want) <= tol || got == want;
        return tap_ok(c, "%s: got %.17g, want %.17g (rel %g)", what, got, want, rel);
}

void tap_diag(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fputs("# ", stdout);
        vprintf(fmt, ap);
        putchar('\n');
        va_end(ap);
        fflush(stdout);
}

void tap_skip(const char *why) {
        n_run++;
        printf("ok %d # SKIP %s\n", n_run, why);
}

int tap_done(void) {
        printf("1..%d\n", n_run);
        if (n_run == 0) {
                printf("# no checks ran\n");
                return 1;
        }
        return n_failed ? 1 : 0;
}

const char *tap_data(const char *rel) {
        static char buf[4096];
        const char *d = getenv("ROID_TESTDATA");
        if (!d)
                d = "../shared/testdata";
        snprintf(buf, sizeof buf, "%s/%s", d, rel);
        return buf;
}

uint8_t *tap_slurp(const char *path, size_t *ret_size) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return NULL;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
        if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
                free(b);
                b = NULL;
        }
        fclose(f);
        if (b)
                *ret_size = (size_t)n;
        return b;
}

size_t tap_heap_in_use(void) {
#if defined(__SANITIZE_ADDRESS__)
        return __sanitizer_get_current_allocated_bytes();
#else
        struct mallinfo2 mi = mallinfo2();
        return mi.uordblks + mi.hblkhd;
#endif
}
