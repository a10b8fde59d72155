/* sim_md5.h - MD5 (RFC 1321) for the Stream V1 "hash" field, which is the
 * MD5 of the image message's second part.  Not for security.
 * Threads: reentrant after the first call (the constant table is built once,
 * on the simulator's only thread).
 */
#ifndef ROID_TOOLS_SIM_MD5_H
#define ROID_TOOLS_SIM_MD5_H

#include <stddef.h>

/* Writes 32 lowercase hex digits and a NUL into hex. */
void sim_md5_hex(const void *data, size_t len, char hex[33]);

#endif
