/* crc32c.c - CRC-32C (Castagnoli), hardware when the CPU has SSE4.2.
 *
 * Used for every record frame and file header (docs/FORMAT.md). The value is
 * the standard CRC-32C: init ~0, reflected, final xor ~0; cm_crc32c(0, ...)
 * starts a new checksum and passing a previous result extends it.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "cometmp.h"

static uint32_t table[8][256];
static int have_hw = -1;

static void init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^
              table[5][(v >> 16) & 0xff] ^ table[4][(v >> 24) & 0xff] ^
              table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
              table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

__attribute__((constructor))
static void crc32c_init(void) {
    init_table();
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    have_hw = 0;
#endif
}

uint32_t cm_crc32c(uint32_t crc, const void *buf, size_t len) {
    crc = ~crc;
#if defined(__x86_64__)
    if (have_hw == 1)
        return ~crc_hw(crc, (const uint8_t *)buf, len);
#endif
    return ~crc_sw(crc, (const uint8_t *)buf, len);
}
