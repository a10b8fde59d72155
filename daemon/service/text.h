/* text.h - checks of text that came from outside and goes out again as
 * msgpack str or into HDF5 string attributes, which readers decode as UTF-8.
 *
 * Pure functions: no state, any thread.
 */
#ifndef ROID_SERVICE_TEXT_H
#define ROID_SERVICE_TEXT_H

#include <stddef.h>

/* Offset of the first byte of s[0..n) that is not part of valid UTF-8 (RFC
 * 3629: no overlong forms, no surrogates, at most U+10FFFF), or n when all of
 * it is. */
size_t roid_utf8_invalid_at(const char *s, size_t n);

#endif
