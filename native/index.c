/* index.c - the sparse index file <20-digit base>.idx of one segment.
 *
 * One 16-byte entry rel(4) offset(4) ts_ns(8) every index_interval bytes of
 * records; offset 0 ends the table. The index is derived data: it is not
 * checksummed per entry, readers check every entry against the segment, and
 * a missing or damaged index is rebuilt from the segment (I8).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

void cm_index_header_init(uint8_t *h, uint64_t base, uint32_t interval) {
    /* magic(4) version(2) header_bytes(2) base(8) interval(4) reserved(8) crc(4) */
    memset(h, 0, CM_IDX_HEADER_BYTES);
    put32(h + CM_IDX_OFF_MAGIC, CM_IDX_MAGIC);
    put16(h + CM_IDX_OFF_VERSION, CM_IDX_VERSION);
    put16(h + CM_IDX_OFF_HEADER_BYTES, CM_IDX_HEADER_BYTES);
    put64(h + CM_IDX_OFF_BASE, base);
    put32(h + CM_IDX_OFF_INTERVAL, interval);
    put32(h + CM_IDX_OFF_HEADER_CRC, cm_crc32c(0, h, CM_IDX_OFF_HEADER_CRC));
}

uint64_t cm_index_capacity(uint64_t seg_capacity, uint32_t interval) {
    return CM_IDX_HEADER_BYTES + (seg_capacity / interval + 2) * CM_IDX_ENTRY_BYTES;
}

int cm_index_create(int dirfd, const char *dir, uint64_t base, uint64_t seg_capacity,
                    uint32_t interval, int durable, int *fd_out) {
    char name[64], tmp[80];
    cm_segment_name(name, sizeof name, base, ".idx");
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    uint64_t cap = cm_index_capacity(seg_capacity, interval);
    int fd = CM_FAILPOINT_ERRNO("index.create") ? -1 :
             cm_fs_openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);  /* I30, I31 */
    if (fd < 0)
        return cm_fs_fail(errno, dirfd, dir, tmp, "create");
    int e = CM_FAILPOINT("index.fallocate");
    if (!e) e = posix_fallocate(fd, 0, (off_t)cap);
    if (e != 0) {
        close(fd);
        unlinkat(dirfd, tmp, 0);
        return cm_fail(CM_E_IO, e,
                       "preallocate %s/%s", dir, tmp);
    }
    uint8_t h[CM_IDX_HEADER_BYTES];
    cm_index_header_init(h, base, interval);
    if (CM_FAILPOINT_ERRNO("index.write") || pwrite(fd, h, sizeof h, 0) != (ssize_t)sizeof h ||
        (durable && (CM_FAILPOINT_ERRNO("index.fsync") || fdatasync(fd) != 0)) ||
        CM_FAILPOINT_ERRNO("index.rename") || renameat(dirfd, tmp, dirfd, name) != 0) {
        int err = errno;
        close(fd);
        unlinkat(dirfd, tmp, 0);
        return cm_fail(CM_E_IO, err, "write %s/%s", dir, name);
    }
    *fd_out = fd;
    return CM_OK;
}

/* ----------------------------------------------------------- lookups
 *
 * Kafka's OffsetIndex: look entries up in the mapping, never re-read or parse
 * the file. The table is a prefix of entries followed by zeros (preallocated,
 * FORMAT.md 3.2: offset 0 ends it; the writer stores `offset` last), so its
 * length and the floor of a key are both found by binary search. A damaged
 * table can mislead the search, never the reader: the caller checks the record
 * an entry names before it walks from there (I8). */

static inline const uint8_t *idx_entry(const uint8_t *idx, uint64_t i) {
    return idx + CM_IDX_HEADER_BYTES + i * CM_IDX_ENTRY_BYTES;
}

/* number of entries: the first slot whose offset is 0 */
static uint64_t idx_count(const uint8_t *idx, uint64_t idx_bytes) {
    if (!idx || idx_bytes < CM_IDX_HEADER_BYTES) return 0;
    uint64_t lo = 0, hi = (idx_bytes - CM_IDX_HEADER_BYTES) / CM_IDX_ENTRY_BYTES;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (__atomic_load_n((const uint32_t *)(idx_entry(idx, mid) + CM_IDXE_OFF_OFFSET),
                            __ATOMIC_ACQUIRE) != 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int idx_hit(const uint8_t *idx, uint64_t i, uint32_t *rel, uint64_t *off, int64_t *ts) {
    const uint8_t *e = idx_entry(idx, i);
    if (rel) *rel = get32(e + CM_IDXE_OFF_REL);
    if (off) *off = get32(e + CM_IDXE_OFF_OFFSET);
    if (ts) *ts = (int64_t)get64(e + CM_IDXE_OFF_TS);
    return CM_OK;
}

int cm_index_floor(const uint8_t *idx, uint64_t idx_bytes, uint32_t rel,
                   uint32_t *entry_rel, uint64_t *entry_off, int64_t *entry_ts) {
    uint64_t lo = 0, hi = idx_count(idx, idx_bytes);   /* last entry with rel <= key */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (get32(idx_entry(idx, mid) + CM_IDXE_OFF_REL) <= rel)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return CM_E_NOTFOUND;
    return idx_hit(idx, lo - 1, entry_rel, entry_off, entry_ts);
}

int cm_index_floor_time(const uint8_t *idx, uint64_t idx_bytes, int64_t ts_ns,
                        uint32_t *entry_rel, uint64_t *entry_off, int64_t *entry_ts) {
    uint64_t lo = 0, hi = idx_count(idx, idx_bytes);   /* last entry with ts < key (I6) */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if ((int64_t)get64(idx_entry(idx, mid) + CM_IDXE_OFF_TS) < ts_ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return CM_E_NOTFOUND;
    return idx_hit(idx, lo - 1, entry_rel, entry_off, entry_ts);
}

/* Rebuild (I8): an entry for the first record and then for the first record at
 * least `interval` bytes after the previous entry's, as index_note() in shard.c. */
int cm_index_build(const uint8_t *seg, uint64_t seg_size, uint64_t base, uint32_t interval,
                   uint8_t *idx, uint64_t idx_bytes, uint32_t *count) {
    *count = 0;
    if (idx_bytes < CM_IDX_HEADER_BYTES || interval < 64)
        return cm_fail(CM_E_ARG, 0, "index of %llu bytes, interval %u",
                       (unsigned long long)idx_bytes, interval);
    uint64_t cap = (idx_bytes - CM_IDX_HEADER_BYTES) / CM_IDX_ENTRY_BYTES;
    memset(idx + CM_IDX_HEADER_BYTES, 0, cap * CM_IDX_ENTRY_BYTES);
    cm_walk w;
    cm_record r;
    cm_damage d;
    cm_walk_init(&w, seg, seg_size, base, CM_SEG_HEADER_BYTES, 0, CM_SEQ_ANY, 0);
    uint64_t last = 0, n = 0;
    int rc;
    while ((rc = cm_walk_next(&w, &r, &d)) != CM_WALK_DONE) {
        if (rc != CM_WALK_RECORD) continue;
        if (n && r.offset - last < interval) continue;
        if (n == cap) break;
        uint8_t *e = idx + CM_IDX_HEADER_BYTES + n * CM_IDX_ENTRY_BYTES; /* rel(4) offset(4) ts_ns(8) */
        put32(e + CM_IDXE_OFF_REL, r.seq);
        put32(e + CM_IDXE_OFF_OFFSET, (uint32_t)r.offset);
        put64(e + CM_IDXE_OFF_TS, (uint64_t)r.ts_ns);
        last = r.offset;
        n++;
    }
    *count = (uint32_t)n;
    return CM_OK;
}
