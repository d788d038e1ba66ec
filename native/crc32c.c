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
    if (n >= 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        c32 = __builtin_ia32_crc32si(c32, v);
        p += 4;
        n -= 4;
    }
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

#if defined(__x86_64__)
/* Three independent CRC-32C chains interleaved: the crc32 instruction has a
 * 3-cycle latency and 1-cycle throughput, so three records checksummed
 * together cost about what one costs alone. Used for batches (shard.c). */
__attribute__((target("sse4.2")))
static void crc_hw3(const uint8_t *p[3], const size_t n[3], uint32_t out[3]) {
    uint64_t c0 = ~out[0] & 0xffffffffu, c1 = ~out[1] & 0xffffffffu, c2 = ~out[2] & 0xffffffffu;
    size_t m = n[0] < n[1] ? n[0] : n[1];
    if (n[2] < m) m = n[2];
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        uint64_t v0, v1, v2;
        memcpy(&v0, p[0] + i, 8);
        memcpy(&v1, p[1] + i, 8);
        memcpy(&v2, p[2] + i, 8);
        c0 = __builtin_ia32_crc32di(c0, v0);
        c1 = __builtin_ia32_crc32di(c1, v1);
        c2 = __builtin_ia32_crc32di(c2, v2);
    }
    out[0] = ~crc_hw((uint32_t)c0, p[0] + i, n[0] - i);
    out[1] = ~crc_hw((uint32_t)c1, p[1] + i, n[1] - i);
    out[2] = ~crc_hw((uint32_t)c2, p[2] + i, n[2] - i);
}
#endif

/* out[k] = cm_crc32c(out[k], p[k], n[k]) for k = 0..2, computed together. */
void cm_crc32c_x3(const uint8_t *p[3], const size_t n[3], uint32_t out[3]) {
#if defined(__x86_64__)
    if (have_hw == 1) {
        crc_hw3(p, n, out);
        return;
    }
#endif
    for (int k = 0; k < 3; k++) out[k] = cm_crc32c(out[k], p[k], n[k]);
}
