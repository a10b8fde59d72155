#include "service/counters.h"

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
