#include "service/text.h"

#include <stdint.h>

size_t roid_utf8_invalid_at(const char *s, size_t n) {
        size_t i = 0;
        while (i < n) {
                const unsigned char c = (unsigned char)s[i];
                size_t k;
                uint32_t cp, min;
                if (c < 0x80) {
                        i++;
                        continue;
                }
                if ((c & 0xe0) == 0xc0)
                        k = 1, cp = c & 0x1fu, min = 0x80;
                else if ((c & 0xf0) == 0xe0)
                        k = 2, cp = c & 0x0fu, min = 0x800;
                else if ((c & 0xf8) == 0xf0)
                        k = 3, cp = c & 0x07u, min = 0x10000;
                else
                        return i;
                if (n - i - 1 < k)
                        return i;
                for (size_t j = 1; j <= k; j++) {
                        if (((unsigned char)s[i + j] & 0xc0) != 0x80)
                                return i;
                        cp = cp << 6 | ((unsigned char)s[i + j] & 0x3fu);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return i;
                i += k + 1;
        }
        return n;
}
