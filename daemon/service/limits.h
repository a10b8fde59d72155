/* limits.h - the bound on every resource a detector, a capture file or a
 * client can make roid allocate.  Checked before anything is allocated.
 *
 * Ownership: roid_limits is plain data, copied by whoever needs it;
 * roid_calloc_committed's memory belongs to the caller (free()).
 * Threads: reentrant; the limits are read-only once configured.
 */
#ifndef ROID_SERVICE_LIMITS_H
#define ROID_SERVICE_LIMITS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
        size_t max_message_bytes; /* all parts of one message together */
        size_t max_parts;         /* parts of one multipart message */
        /* One JSON part (V1), the user data of a message.  Parsing a V1 JSON
         * part takes up to ~40x its size of parser memory while its message
         * is parsed (160 MiB at the default 4 MiB); a parser arena grown past
         * 1 MiB is released after that message. */
        size_t max_json_bytes;
        uint64_t max_pixels;         /* pixels of one frame (rows x cols) */
        uint64_t max_frame_bytes;    /* decoded bytes of one frame and channel */
        uint64_t max_images;         /* image_id bound for per-series tracking */
        uint64_t max_analysis_bytes; /* RoI state of one series; 0: half the memory or cgroup limit */
        unsigned max_depth;          /* CBOR / JSON nesting */
} roid_limits;

/* Defaults fit an EIGER2 16M at 32 bit with room to spare:
 * 512 MiB message, 32 parts, 4 MiB JSON, 64 Mi pixels, 256 MiB frame,
 * 100,000,000 images, RoI state up to half the memory (or of the cgroup's
 * limit), depth 32. */
void roid_limits_default(roid_limits *l);

/* max_analysis_bytes in effect: 0 stands for half the smaller of the
 * physical memory and the memory limit of roid's cgroup (v2 memory.max of it
 * or a parent: systemd's MemoryMax=), where more would be killed, not
 * refused. */
uint64_t roid_limits_analysis_bytes(const roid_limits *l);

/* calloc(n, size), but with every page written now: the state of a series is
 * committed when the series starts (about 0.35 ms a MiB here), where it is bounded
 * and accounted, rather than page by page during the scan.  There a page
 * first read (a map published, a neighbour looked at) maps the shared zero
 * page, and the first write to it then costs a copy-on-write fault and a TLB
 * shootdown interrupt to every CPU the process ran on: twice the cost, at
 * frame rate, and far more in a virtual machine.  NULL on overflow or when
 * out of memory, like calloc. */
void *roid_calloc_committed(size_t n, size_t size);

/* limits.c, for tests: the smallest cgroup v2 memory.max of the cgroup named
 * by the "0::/path" line of proc_cgroup (/proc/self/cgroup) and of its
 * parents, under mount (/sys/fs/cgroup); UINT64_MAX when there is none or
 * any of it cannot be read.  roid_limits_analysis_bytes takes half of the
 * smaller of this and the physical memory for max_analysis_bytes = 0. */
uint64_t roid_limits_cgroup_memory_internal(const char *proc_cgroup, const char *mount);

#endif
