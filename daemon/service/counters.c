#include "service/counters.h"

#include <inttypes.h>
#include <stdio.h>

#include "service/log.h"

static const char *const names[] = {
#define N(name, doc) #name,
        ROID_COUNTERS(N)
#undef N
};
static const char *const docs[] = {
#define D(name, doc) doc,
        ROID_COUNTERS(D)
#undef D
};

void roid_counters_reset(roid_counters *c) {
        for (int i = 0; i < ROID_C__MAX; i++)
                atomic_store_explicit(&c->v[i], 0, memory_order_relaxed);
}

const char *roid_counter_name(roid_counter i) {
        return (unsigned)i < ROID_C__MAX ? names[i] : "?";
}

const char *roid_counter_doc(roid_counter i) {
        return (unsigned)i < ROID_C__MAX ? docs[i] : "?";
}

void roid_counters_log(const roid_counters *c) {
        char line[2048];
        size_t n = 0;
        roid_log_flush_suppressed(); /* the lines behind the counts come first */
        for (int i = 0; i < ROID_C__MAX; i++) {
                uint64_t v = roid_counter_get(c, (roid_counter)i);
                if (v && n < sizeof line - 64)
                        n += (size_t)snprintf(line + n, sizeof line - n, " %s=%" PRIu64, names[i], v);
        }
        line[n] = 0;
        roid_log(ROID_LOG_NOTICE, "counters:%s", n ? line : " none");
}
