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
    int fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return cm_fail(CM_E_IO, errno, "create %s/%s", dir, tmp);
    int e = posix_fallocate(fd, 0, (off_t)cap);
    if (e != 0) {
        close(fd);
        unlinkat(dirfd, tmp, 0);
        return cm_fail(e == ENOSPC || e == EDQUOT ? CM_E_NOSPACE : CM_E_IO, e,
                       "preallocate %s/%s", dir, tmp);
    }
    uint8_t h[CM_IDX_HEADER_BYTES];
    cm_index_header_init(h, base, interval);
    if (pwrite(fd, h, sizeof h, 0) != (ssize_t)sizeof h ||
        (durable && fdatasync(fd) != 0) ||
        renameat(dirfd, tmp, dirfd, name) != 0) {
        int err = errno;
        close(fd);
        unlinkat(dirfd, tmp, 0);
        return cm_fail(err == ENOSPC ? CM_E_NOSPACE : CM_E_IO, err, "write %s/%s", dir, name);
    }
    *fd_out = fd;
    return CM_OK;
}
