/* h5err.h - what HDF5 says went wrong, for every module that reads or writes
 * HDF5 files (ingest/h5source.c, outputs/results.c, outputs/export.c).
 *
 * Linking this module also turns HDF5's own cleanup at exit off (a
 * constructor, before the library starts): a file whose H5Fclose failed (its
 * last writes refused: a full disk, a late EIO) stays half freed in HDF5
 * 1.10, and that exit-time close crashed the process (found by review).  roid
 * closes every file it opens itself.
 *
 * Threads: HDF5's error stack is per thread; call right after the failed
 * call, in its thread, before any other HDF5 call clears the stack.
 */
#ifndef ROID_SERVICE_H5ERR_H
#define ROID_SERVICE_H5ERR_H

#include <stddef.h>

/* The innermost entry of HDF5's error stack, one line, its "errno = N"
 * said in words ("file write failed: No space left on device"): what broke,
 * not where.  "unknown HDF5 error" when the stack is empty.  Returns buf. */
const char *roid_h5_reason(char *buf, size_t size);

#endif
