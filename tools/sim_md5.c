#include "sim_md5.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint32_t K[64];
static const uint8_t S[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

static uint32_t rotl(uint32_t x, unsigned c) {
        return (x << c) | (x >> (32 - c));
}

static void block(uint32_t h[4], const uint8_t *p) {
        uint32_t m[16], a = h[0], b = h[1], c = h[2], d = h[3];

        for (int i = 0; i < 16; i++)
                m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                       (uint32_t)p[4 * i + 3] << 24;
        for (int i = 0; i < 64; i++) {
                uint32_t f;
                int g;
                switch (i / 16) {
                case 0:
                        f = (b & c) | (~b & d);
                        g = i;
                        break;
                case 1:
                        f = (d & b) | (~d & c);
                        g = (5 * i + 1) % 16;
                        break;
                case 2:
                        f = b ^ c ^ d;
                        g = (3 * i + 5) % 16;
                        break;
                default:
                        f = c ^ (b | ~d);
                        g = (7 * i) % 16;
                        break;
                }
                f += a + K[i] + m[g];
                a = d;
                d = c;
                c = b;
                b += rotl(f, S[i / 16][i % 4]);
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
}

void sim_md5_hex(const void *data, size_t len, char hex[33]) {
        uint32_t h[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
        const uint8_t *p = data;
        uint8_t tail[128] = {0};
        size_t full = len / 64 * 64, rest = len - full, tlen;
        uint64_t bits = (uint64_t)len * 8;

        /* K[i] = floor(|sin(i + 1)| * 2^32), exact in double precision. */
        if (!K[0])
                for (int i = 0; i < 64; i++)
                        K[i] = (uint32_t)(fabs(sin((double)i + 1.0)) * 4294967296.0);
        for (size_t i = 0; i < full; i += 64)
                block(h, p + i);
        memcpy(tail, p + full, rest);
        tail[rest] = 0x80;
        tlen = rest < 56 ? 64 : 128;
        for (int i = 0; i < 8; i++)
                tail[tlen - 8 + i] = (uint8_t)(bits >> (8 * i));
        block(h, tail);
        if (tlen == 128)
                block(h, tail + 64);
        for (int i = 0; i < 16; i++) {
                uint8_t byte = (uint8_t)(h[i / 4] >> (8 * (i % 4)));
                hex[2 * i] = "0123456789abcdef"[byte >> 4];
                hex[2 * i + 1] = "0123456789abcdef"[byte & 15];
        }
        hex[32] = '\0';
}
