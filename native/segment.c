/* segment.c - segment files: header, record frames, scanning, creation.
 *
 * A segment is <20-digit base entry>.seg: a 64-byte header then records
 * framed len(4) crc(4) ts_ns(8) seqflags(4) payload, back to back, then
 * zeros up to the file's fixed size (docs/FORMAT.md, "Segment file").
 * Version 2 binds every frame to its position (I17): the crc is seeded with
 * the header's stream_id and the entry number, so a frame is valid only as
 * the entry it was written as, in the stream it was written to.
 * The functions here are stateless; shard.c owns the writer protocol.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/random.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

int64_t cm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

void cm_segment_name(char *buf, size_t n, uint64_t base, const char *suffix) {
    snprintf(buf, n, "%020llu%s", (unsigned long long)base, suffix);
}

void cm_segment_header_init(uint8_t *h, uint64_t base, uint64_t capacity,
                            uint32_t stream_crc, uint64_t stream_id) {
    /* magic(4) version(2) header_bytes(2) base(8) capacity(8) created(8)
       stream_crc(4) stream_id(8) reserved(16) header_crc(4) */
    memset(h, 0, CM_SEG_HEADER_BYTES);
    put32(h + CM_SEG_OFF_MAGIC, CM_SEG_MAGIC);
    put16(h + CM_SEG_OFF_VERSION, CM_SEG_VERSION);
    put16(h + CM_SEG_OFF_HEADER_BYTES, CM_SEG_HEADER_BYTES);
    put64(h + CM_SEG_OFF_BASE, base);
    put64(h + CM_SEG_OFF_CAPACITY, capacity);
    put64(h + CM_SEG_OFF_CREATED, (uint64_t)cm_now_ns());
    put32(h + CM_SEG_OFF_STREAM_CRC, stream_crc);
    put64(h + CM_SEG_OFF_STREAM_ID, stream_id);
    put32(h + CM_SEG_OFF_HEADER_CRC, cm_crc32c(0, h, CM_SEG_OFF_HEADER_CRC));
}

int cm_segment_header_check(const uint8_t *map, uint64_t size, uint64_t *base,
                            uint64_t *capacity) {
    if (size < CM_SEG_HEADER_BYTES)
        return cm_fail(CM_E_FORMAT, 0, "segment shorter than its %d-byte header",
                       CM_SEG_HEADER_BYTES);
    if (get32(map + CM_SEG_OFF_MAGIC) != CM_SEG_MAGIC)
        return cm_fail(CM_E_FORMAT, 0, "segment magic 0x%08x, expected 0x%08x",
                       get32(map), CM_SEG_MAGIC);
    uint16_t v = get16(map + CM_SEG_OFF_VERSION);
    if (v != CM_SEG_VERSION && v != CM_SEG_VERSION_V1)
        return cm_fail(CM_E_FORMAT, 0, "segment version %u, this build reads %u and %u",
                       v, CM_SEG_VERSION_V1, CM_SEG_VERSION);
    if (get32(map + CM_SEG_OFF_HEADER_CRC) != cm_crc32c(0, map, CM_SEG_OFF_HEADER_CRC))
        return cm_fail(CM_E_CORRUPT, 0, "segment header checksum mismatch");
    if (v == CM_SEG_VERSION && get64(map + CM_SEG_OFF_STREAM_ID) == 0)
        return cm_fail(CM_E_CORRUPT, 0, "version 2 segment header without a stream id");
    if (base) *base = get64(map + CM_SEG_OFF_BASE);
    if (capacity) *capacity = get64(map + CM_SEG_OFF_CAPACITY);
    return CM_OK;
}

/* The binding of the frames of a segment mapped at `map` whose file name says
 * `base` (I17). The version and stream_id are read from the header as they
 * are: a damaged header makes its frames fail V4 (entries reported lost),
 * never validate as other entries. A version-1 header (or a map too short to
 * hold one) leaves the frames unbound. */
void cm_segment_key(const uint8_t *map, uint64_t size, uint64_t base, cm_seg_key *key) {
    key->base = base;
    key->version = CM_SEG_VERSION_V1;
    key->stream_id = 0;
    key->id_crc = 0;
    if (map == NULL || size < CM_SEG_HEADER_BYTES)
        return;
    uint16_t v = get16(map + CM_SEG_OFF_VERSION);
    if (v == CM_SEG_VERSION_V1)
        return;
    key->version = v;   /* 2, or an unknown version: checked by the v2 rule, so its
                           frames never pass as unbound v1 frames */
    key->stream_id = get64(map + CM_SEG_OFF_STREAM_ID);
    key->id_crc = cm_crc32c(0, map + CM_SEG_OFF_STREAM_ID, 8);
}

/* The crc of what precedes a frame's bytes [8, 20+len) in its checksum, the
 * one place the binding is computed (I17), for writing and for checking:
 * v1: crc32c(len(4)); v2: crc32c(stream_id(8) entry(8) len(4)), extended from
 * the per-segment crc32c(stream_id), so a v2 record costs one crc call over 12
 * bytes where v1 costs one over 4. `frame` is the frame; seq its sequence. */
uint32_t cm_frame_head_crc(const cm_seg_key *key, uint32_t seq, const uint8_t *frame) {
    if (key->version == CM_SEG_VERSION_V1)
        return cm_crc32c(0, frame + CM_REC_OFF_LEN, 4);
    uint8_t b[12];                       /* entry(8) len(4) */
    put64(b, key->base + seq);
    memcpy(b + 8, frame + CM_REC_OFF_LEN, 4);
    return cm_crc32c(key->id_crc, b, sizeof b);
}

/* Writing a frame: fill it without the crc, then seal up to three frames at
 * once (crc chains interleaved, see cm_crc32c_x3), each extending its head crc
 * (cm_frame_head_crc). */
void cm_record_fill(uint8_t *p, const void *data, uint32_t len, int64_t ts, uint32_t seqflags) {
    put32(p + CM_REC_OFF_LEN, len);
    put64(p + CM_REC_OFF_TS, (uint64_t)ts);
    put32(p + CM_REC_OFF_SEQFLAGS, seqflags);
    if (len) memcpy(p + CM_REC_HEADER_BYTES, data, len);
}

void cm_record_seal(uint8_t *const frames[], const uint32_t lens[], const uint32_t heads[], int k) {
    /* v1: crc(len ‖ ts ‖ seqflags ‖ payload); v2: crc(key ‖ len ‖ ts ‖ seqflags ‖ payload) */
    if (k == 1) {
        uint8_t *f = frames[0];
        uint32_t c = heads[0];
        put32(f + CM_REC_OFF_CRC,
              cm_crc32c(c, f + CM_REC_OFF_TS, CM_REC_HEADER_BYTES - CM_REC_OFF_TS + lens[0]));
        return;
    }
    const uint8_t *p[3];
    size_t n[3];
    uint32_t c[3];
    for (int i = 0; i < 3; i++) {
        int j = i < k ? i : 0;   /* pad a group of two with a repeat of the first */
        c[i] = i < k ? heads[j] : c[0];
        p[i] = frames[j] + CM_REC_OFF_TS;
        n[i] = CM_REC_HEADER_BYTES - CM_REC_OFF_TS + lens[j];
    }
    cm_crc32c_x3(p, n, c);
    for (int i = 0; i < k; i++) put32(frames[i] + CM_REC_OFF_CRC, c[i]);
}

static int all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Validity rules of a frame at `off` (FORMAT.md "Record validity"):
 *  V1 the 20 header bytes lie inside the file;  all-zero header = end of data
 *  V2 the payload lies inside the file
 *  V3 only known flag bits are set
 *  V4 the crc matches; in v2 the crc is seeded with the segment's key and the
 *     entry base + seq of the frame's own sequence (I17)
 *  V5 the relative sequence equals the expected one (when given)
 * Returns CM_REC_VALID, CM_REC_END, or -CM_DAMAGE_* naming the rule that failed;
 * it formats no message (the walker calls it for every frame and candidate). */
int cm_frame_check_key(const uint8_t *map, uint64_t size, const cm_seg_key *key, uint64_t off,
                       uint32_t expect_seq, cm_record *out) {
    if (off + CM_REC_HEADER_BYTES > size)
        return CM_REC_END;
    const uint8_t *p = map + off;
    if (all_zero(p, CM_REC_HEADER_BYTES))
        return CM_REC_END;
    uint32_t len = get32(p + CM_REC_OFF_LEN);
    uint32_t sf = get32(p + CM_REC_OFF_SEQFLAGS);
    if ((uint64_t)len > size - off - CM_REC_HEADER_BYTES)
        return -CM_DAMAGE_LENGTH;
    if ((sf & CM_REC_FLAGS_MASK) & ~CM_REC_FLAG_ZSTD)
        return -CM_DAMAGE_FLAGS;
    /* I17: the crc is checked against the entry the frame claims to be */
    uint32_t c = cm_frame_head_crc(key, sf & CM_REC_SEQ_MASK, p);
    c = cm_crc32c(c, p + CM_REC_OFF_TS, CM_REC_HEADER_BYTES - CM_REC_OFF_TS + len);
    if (c != get32(p + CM_REC_OFF_CRC))
        return -CM_DAMAGE_CRC;
    if (expect_seq != 0xFFFFFFFFu && (sf & CM_REC_SEQ_MASK) != expect_seq)
        return -CM_DAMAGE_SEQ;
    if (out) {
        out->len = len;
        out->flags = sf & CM_REC_FLAGS_MASK;
        out->seq = sf & CM_REC_SEQ_MASK;
        out->ts_ns = (int64_t)get64(p + CM_REC_OFF_TS);
        out->offset = off;
        out->frame_bytes = CM_REC_HEADER_BYTES + len;
        out->entry = 0; /* callers add the segment base */
    }
    return CM_REC_VALID;
}

int cm_frame_check(const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                   uint32_t expect_seq, cm_record *out) {
    cm_seg_key key;
    cm_segment_key(map, size, base, &key);
    return cm_frame_check_key(map, size, &key, off, expect_seq, out);
}

/* A stream id the version-2 frames of a segment whose header is lost validate under
 * (I17), solved from their crcs; 0 when it cannot be told. Used only to repair a
 * damaged header (recover_stream_id in shard.c).
 *
 * A v2 frame's crc is cm_crc32c(id_crc, R), R = entry(8) ‖ len(4) ‖ ts(8) ‖
 * seqflags(4) ‖ payload, where id_crc = cm_crc32c(0, stream_id): the frames depend on
 * the id only through those 32 bits, so the original 64 cannot be recovered, but any
 * id with the same id_crc is, for every frame, the same key. crc32c is affine over
 * GF(2) in its chaining value: cm_crc32c(x, R) = cm_crc32c(0, R) ^ T(x), T linear
 * (and invertible). So one frame gives id_crc (32 equations, 32 unknowns), accepted
 * only if SOLVE_CHECK further frames then validate under it (a 2^-32 chance each
 * that damaged or foreign bytes pass); then an id is chosen whose crc is id_crc
 * (cm_crc32c over 8 bytes is affine in their 64 bits, rank 32: 32 free bits, taken
 * from a fresh random id). Frames above SOLVE_MAX_PAYLOAD are skipped (building T
 * costs 32 crcs over the frame's length). */
#define SOLVE_CHECK 2
#define SOLVE_MAX_PAYLOAD (256u * 1024)
static uint32_t crc_zeros(uint32_t c, uint64_t n) {
    static const uint8_t zeros[4096];
    for (; n >= sizeof zeros; n -= sizeof zeros) c = cm_crc32c(c, zeros, sizeof zeros);
    return cm_crc32c(c, zeros, (size_t)n);
}
/* Solve sum_b x_b·col[b] = y over GF(2) for nvar unknowns (bit b of the result),
 * 32 equations (bit j of col[b] and y). Free unknowns take their bit of `fill`.
 * Returns 0 and sets *x, or -1 when inconsistent. */
static int solve_gf2(const uint32_t *col, int nvar, uint32_t y, uint64_t fill, uint64_t *x) {
    uint64_t row[32];
    uint32_t rhs = 0;
    int pivot[32], rank = 0;
    for (int j = 0; j < 32; j++) {
        uint64_t r = 0;
        for (int b = 0; b < nvar; b++) r |= (uint64_t)((col[b] >> j) & 1) << b;
        uint32_t v = (y >> j) & 1;
        for (int i = 0; i < rank; i++)
            if ((r >> pivot[i]) & 1) { r ^= row[i]; v ^= (rhs >> i) & 1; }
        if (!r) { if (v) return -1; continue; }
        int b = __builtin_ctzll(r);
        for (int i = 0; i < rank; i++)            /* fully reduced: one pivot per row */
            if ((row[i] >> b) & 1) { row[i] ^= r; rhs ^= v << i; }
        row[rank] = r;
        rhs |= v << rank;
        pivot[rank++] = b;
    }
    uint64_t pivots = 0;
    for (int i = 0; i < rank; i++) pivots |= 1ull << pivot[i];
    uint64_t mask = nvar == 64 ? ~0ull : (1ull << nvar) - 1;
    uint64_t out = fill & ~pivots & mask;         /* free unknowns */
    for (int i = 0; i < rank; i++) {              /* pivot = rhs ^ its row's free terms */
        uint64_t others = row[i] & ~(1ull << pivot[i]);
        uint32_t v = ((rhs >> i) & 1) ^ (__builtin_popcountll(others & out) & 1);
        out |= (uint64_t)v << pivot[i];
    }
    *x = out;
    return 0;
}
uint64_t cm_frame_solve_stream_id(const uint8_t *map, uint64_t size, uint64_t base) {
    int solved = 0, checked = 0;
    uint32_t id_crc = 0;
    for (uint64_t off = CM_SEG_HEADER_BYTES; off + CM_REC_HEADER_BYTES <= size;) {
        const uint8_t *p = map + off;
        if (all_zero(p, CM_REC_HEADER_BYTES)) break;
        uint32_t len = get32(p + CM_REC_OFF_LEN);
        if ((uint64_t)len > size - off - CM_REC_HEADER_BYTES) break;
        off += CM_REC_HEADER_BYTES + (uint64_t)len;
        if (len > SOLVE_MAX_PAYLOAD) continue;
        uint8_t head[12];                              /* entry(8) len(4) */
        put64(head, base + (get32(p + CM_REC_OFF_SEQFLAGS) & CM_REC_SEQ_MASK));
        memcpy(head + 8, p + CM_REC_OFF_LEN, 4);
        uint64_t rest = CM_REC_HEADER_BYTES - CM_REC_OFF_TS + (uint64_t)len;
        uint32_t stored = get32(p + CM_REC_OFF_CRC);
        if (solved) {                                  /* check a frame the solve did not use */
            if (cm_crc32c(cm_crc32c(id_crc, head, 12), p + CM_REC_OFF_TS, (size_t)rest) != stored)
                return 0;
            if (++checked < SOLVE_CHECK) continue;
            uint32_t col[64], z8 = crc_zeros(0, 8);
            for (int b = 0; b < 64; b++) {
                uint8_t e[8];
                put64(e, 1ull << b);
                col[b] = cm_crc32c(0, e, 8) ^ z8;
            }
            for (int tries = 0; tries < 4; tries++) {  /* an id that is neither 0 nor 1 */
                uint64_t id;
                if (solve_gf2(col, 64, id_crc ^ z8, cm_new_stream_id(), &id) < 0) return 0;
                if (id > 1) return id;
            }
            return 0;
        }
        uint32_t zero_key = cm_crc32c(cm_crc32c(0, head, 12), p + CM_REC_OFF_TS, (size_t)rest);
        uint64_t n = 12 + rest, x;
        uint32_t zn = crc_zeros(0, n), col[32];
        for (int j = 0; j < 32; j++) col[j] = crc_zeros(1u << j, n) ^ zn;   /* T(e_j) */
        if (solve_gf2(col, 32, stored ^ zero_key, 0, &x) < 0) return 0;
        id_crc = (uint32_t)x;
        solved = 1;
    }
    return 0;                                          /* too few frames to be sure */
}

/* cm_frame_check() with a message for cm_last_error() when the frame is invalid. */
int cm_record_at(const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                 uint32_t expect_seq, cm_record *out) {
    int rc = cm_frame_check(map, size, base, off, expect_seq, out);
    if (rc >= 0)
        return rc;
    const uint8_t *p = map + off;
    return cm_fail(CM_E_CORRUPT, 0, "record at offset %llu: %s", (unsigned long long)off,
                   cm_damage_reason(-rc, get32(p + CM_REC_OFF_LEN),
                                    get32(p + CM_REC_OFF_SEQFLAGS), expect_seq));
}

/* Text of a damage cause, for messages only (never parsed: findings carry the code). */
const char *cm_damage_reason(int32_t cause, uint32_t len, uint32_t seqflags, uint32_t expect_seq) {
    static __thread char buf[96];
    switch (cause) {
    case CM_DAMAGE_LENGTH:
        snprintf(buf, sizeof buf, "length %u runs past the segment end", len);
        return buf;
    case CM_DAMAGE_FLAGS:
        snprintf(buf, sizeof buf, "unknown flags 0x%08x", seqflags & CM_REC_FLAGS_MASK);
        return buf;
    case CM_DAMAGE_CRC:
        return "crc mismatch (damaged, or not written as this entry of this stream)";
    case CM_DAMAGE_SEQ:
        snprintf(buf, sizeof buf, "sequence %u, expected %u", seqflags & CM_REC_SEQ_MASK, expect_seq);
        return buf;
    case CM_DAMAGE_END:
        return "end of data before the published count (zeroed or missing bytes)";
    }
    return "invalid frame";
}

/* Zero [from, to) touching only non-zero 4 KiB blocks; returns the number of
 * bytes from `from` up to the last non-zero byte (what a torn tail held). */
uint64_t cm_zero_range(uint8_t *map, uint64_t from, uint64_t to) {
    uint64_t last = from;
    uint64_t off = from;
    while (off < to) {
        uint64_t blk_end = (off | 4095) + 1;
        if (blk_end > to) blk_end = to;
        if (!all_zero(map + off, blk_end - off)) {
            for (uint64_t i = blk_end; i > off; i--)
                if (map[i - 1]) { last = i; break; }
            memset(map + off, 0, blk_end - off);
        }
        off = blk_end;
    }
    return last - from;
}

static int write_full(int fd, const void *buf, size_t n, off_t off) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += w; n -= (size_t)w; off += w;
    }
    return 0;
}

/* Prepare <base>.seg.tmp: size, preallocate, header, (fdatasync). Nothing is
 * visible in the log yet (I7); the caller renames it in (cm_segment_create,
 * or rotate() once everything else the segment needs exists) or unlinks it.
 * Returns the open fd of the temp file. */
int cm_segment_create_tmp(int dirfd, const char *dir, uint64_t base, uint64_t capacity,
                          uint64_t prealloc, uint32_t stream_crc, uint64_t stream_id,
                          int durable, int *fd_out) {
    char name[64], tmp[80];
    cm_segment_name(name, sizeof name, base, ".seg");
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    int fd = CM_FAILPOINT_ERRNO("segment.create") ? -1 :
             cm_fs_openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);  /* I30, I31 */
    if (fd < 0)
        return cm_fs_fail(errno, dirfd, dir, tmp, "create");
    int rc;
    if (CM_FAILPOINT_ERRNO("segment.truncate") || ftruncate(fd, (off_t)capacity) != 0) {
        rc = cm_fail(CM_E_IO, errno,
                     "size %s/%s to %llu bytes", dir, tmp, (unsigned long long)capacity);
        goto fail;
    }
    if (prealloc > capacity) prealloc = capacity;
    int e = CM_FAILPOINT("segment.fallocate");
    if (!e) e = posix_fallocate(fd, 0, (off_t)prealloc);
    if (e != 0) {
        rc = cm_fail(CM_E_IO, e,
                     "preallocate %llu bytes for %s/%s", (unsigned long long)prealloc, dir, tmp);
        goto fail;
    }
    uint8_t h[CM_SEG_HEADER_BYTES];
    cm_segment_header_init(h, base, capacity, stream_crc, stream_id);
    if ((e = -CM_FAILPOINT("segment.write")) != 0 || (e = write_full(fd, h, sizeof h, 0)) != 0) {
        rc = cm_fail(CM_E_IO, -e, "write header of %s/%s", dir, tmp);
        goto fail;
    }
    if (durable && (CM_FAILPOINT_ERRNO("segment.fsync") || fdatasync(fd) != 0)) {
        rc = cm_fail(CM_E_IO, errno, "fsync %s/%s", dir, tmp);
        goto fail;
    }
    *fd_out = fd;
    return CM_OK;
fail:
    close(fd);
    unlinkat(dirfd, tmp, 0);
    return rc;
}

/* Create <base>.seg crash-safely: temp file (cm_segment_create_tmp), rename
 * (I7), fsync of the directory if durable. Returns the open fd of the final file. */
int cm_segment_create(int dirfd, const char *dir, uint64_t base, uint64_t capacity,
                      uint64_t prealloc, uint32_t stream_crc, uint64_t stream_id,
                      int durable, int *fd_out) {
    char name[64], tmp[80];
    cm_segment_name(name, sizeof name, base, ".seg");
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    int fd;
    int rc = cm_segment_create_tmp(dirfd, dir, base, capacity, prealloc, stream_crc, stream_id,
                                   durable, &fd);
    if (rc < 0) return rc;
    if (CM_FAILPOINT_ERRNO("segment.rename") || renameat(dirfd, tmp, dirfd, name) != 0) {
        rc = cm_fail(CM_E_IO, errno, "rename %s/%s", dir, tmp);
        close(fd);
        unlinkat(dirfd, tmp, 0);
        return rc;
    }
    if (durable && (CM_FAILPOINT_ERRNO("segment.dir_fsync") || fsync(dirfd) != 0)) {
        /* visible but maybe not durable: report it; the next open adopts the file */
        rc = cm_fail(CM_E_IO, errno, "fsync %s after creating %s", dir, name);
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return CM_OK;
}

/* A new stream identity (FORMAT.md §2.1): 64 random bits, never 0 (0 is v1's
 * reserved value). A stream gets one when its first v2 segment is created;
 * every later segment copies it from the active one (rotate_locked). */
uint64_t cm_new_stream_id(void) {
    uint64_t id = 0;
    while (id == 0) {
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) {
            /* no entropy source: the clock and pid still differ between streams */
            id = (uint64_t)cm_now_ns() * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
        }
    }
    return id;
}
