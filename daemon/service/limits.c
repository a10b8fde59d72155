#include "service/limits.h"

#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void roid_limits_default(roid_limits *l) {
        *l = (roid_limits){
                .max_message_bytes = (size_t)512 << 20,
                .max_parts = 32,
                .max_json_bytes = (size_t)4 << 20,
                .max_pixels = (uint64_t)64 << 20,
                .max_frame_bytes = (uint64_t)256 << 20,
                .max_images = 100000000,
                .max_depth = 32,
        };
}

/* One memory.max: a byte count, or "max".  UINT64_MAX for none, unreadable
 * or not understood: a wrong bound is worse than the physical one. */
static uint64_t read_memory_max(const char *path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return UINT64_MAX;
        char buf[32];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
                return UINT64_MAX;
        buf[n] = '\0';
        if (buf[0] < '0' || buf[0] > '9')
                return UINT64_MAX; /* "max", empty, or garbage */
        char *end;
        unsigned long long v = strtoull(buf, &end, 10);
        if (strcmp(end, "\n") != 0 && *end)
                return UINT64_MAX;
        return v;
}

uint64_t roid_limits_cgroup_memory_internal(const char *proc_cgroup, const char *mount) {
        FILE *f = fopen(proc_cgroup, "re");
        if (!f)
                return UINT64_MAX;
        /* "0::/path" is the v2 line; a hybrid host lists its v1 hierarchies too. */
        char line[PATH_MAX + 8], rel[PATH_MAX] = "";
        bool found = false;
        for (int i = 0; i < 64 && fgets(line, sizeof line, f); i++) {
                size_t n = strlen(line);
                if (n > 0 && line[n - 1] == '\n')
                        line[--n] = '\0';
                else if (!feof(f))
                        break; /* longer than PATH_MAX: not a path the kernel writes */
                if (strncmp(line, "0::/", 4) == 0) {
                        size_t l = n - 3; /* without "0::" */
                        if (l < sizeof rel) {
                                memcpy(rel, line + 3, l + 1);
                                found = true;
                        }
                        break;
                }
        }
        fclose(f);
        /* A cgroup outside this namespace shows as "/.."; its limits are not ours to read. */
        if (!found || strstr(rel, "/..") != NULL)
                return UINT64_MAX;
        uint64_t best = UINT64_MAX;
        char path[PATH_MAX + 64];
        size_t len = strlen(rel);
        /* The leaf, then each parent up to the root of the mount (a namespace's root may have a limit). */
        for (;;) {
                while (len > 1 && rel[len - 1] == '/')
                        len--;
                int w = snprintf(path, sizeof path, "%s%.*s/memory.max", mount, (int)(len > 1 ? len : 0), rel);
                if (w > 0 && (size_t)w < sizeof path) {
                        uint64_t v = read_memory_max(path);
                        if (v < best)
                                best = v;
                }
                if (len <= 1)
                        break;
                while (len > 1 && rel[len - 1] != '/')
                        len--;
        }
        return best;
}

void *roid_calloc_committed(size_t n, size_t size) {
        char *p = calloc(n, size);
        if (!p)
                return NULL;
        const size_t bytes = n * size;
        /* calloc leaves fresh pages untouched.  The kernel maps the whole
         * pages inside in one call (Linux 5.14 on), a quarter of the time of a
         * fault per page (0.35 against 0.55 ms a MiB here, in a virtual
         * machine); the rest, or all where that fails, by a write to each page
         * (4 KiB is the smallest).  volatile, or the stores of zeros into
         * zeroed memory would be dropped. */
        volatile char *v = p;
        size_t from = 0, to = 0;
#ifdef MADV_POPULATE_WRITE
        const long page = sysconf(_SC_PAGESIZE);
        if (page > 0 && bytes >= ((size_t)1 << 20)) {
                const uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
                const uintptr_t b = ((uintptr_t)p + bytes) & ~((uintptr_t)page - 1);
                if (b > a && madvise((void *)a, b - a, MADV_POPULATE_WRITE) == 0)
                        from = a - (uintptr_t)p, to = b - (uintptr_t)p;
        }
#endif
        for (size_t i = 0; i < from; i += 4096)
                v[i] = 0;
        for (size_t i = to; i < bytes; i += 4096)
                v[i] = 0;
        if (bytes > 0) /* p is not page-aligned: the last page may start after the last write */
                v[bytes - 1] = 0;
        return p;
}

uint64_t roid_limits_analysis_bytes(const roid_limits *l) {
        if (l->max_analysis_bytes)
                return l->max_analysis_bytes;
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        uint64_t mem = pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : UINT64_MAX;
        /* Under a memory limit (systemd's MemoryMax=) more would be killed, not refused. */
        uint64_t cg = roid_limits_cgroup_memory_internal("/proc/self/cgroup", "/sys/fs/cgroup");
        if (cg < mem)
                mem = cg;
        /* Unknown (never on Linux): no bound rather than a wrong one; 0 would mean none too. */
        if (mem == UINT64_MAX)
                return 0;
        return mem / 2 > 0 ? mem / 2 : 1;
}
