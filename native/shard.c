/* shard.c - one stream's writer: open + recovery, append, rotation, sync.
 *
 * Caller contract: a cm_shard belongs to the process (and fork generation)
 * that opened it; any thread of that process may append through it. Every
 * mutation of the stream happens under the robust process-shared mutex in
 * the stream's state page (I5); open and recovery additionally hold an
 * exclusive flock on the stream directory so only one process rebuilds.
 *
 * Segment lifecycle (ARCHITECTURE.md "Segment states"):
 *
 *   (none) --rotate()/recover_locked()--> ACTIVE --rotate()--> SEALED --retention--> (deleted)
 *                                       |  ^
 *                          crash/kill -9 v  | recover_locked()
 *                                     TORN-TAIL
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"
#include "lock.h"
#include "stamps.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define CM_SHARD_MAGIC 0x6873636dull   /* "mcsh": the head of a live cm_shard (L3) */

struct cm_shard {
    uint64_t magic;             /* first: the 8 bytes Writer.ref() exposes (L3) */
    cm_life life;               /* L1-L3: calls in flight, closed, owners */
    char dir[PATH_MAX];
    int dirfd;
    int state_fd;
    cm_state *st;
    uint64_t gen;               /* fork generation at open (I10) */
    cm_options opt;
    /* process-local view of the active segment; changed under the lock */
    uint32_t seg_gen;           /* st->active_gen this view was mapped at */
    uint64_t seg_base;
    int seg_fd;
    uint8_t *seg_map;
    uint64_t seg_cap;
    cm_seg_key seg_key;         /* the active segment's frame binding (I17) */
    int idx_fd;
    uint8_t *idx_map;
    uint64_t idx_cap;
    uint32_t idx_interval;
    int sealed_unsynced;        /* a rotation left a segment not yet fsynced */
    uint64_t ahead;             /* headroom ensure_alloc() keeps: the ramp (below) */
    cm_spare *spare;            /* the next segment's files, made ahead (spare.c) */
    cm_headroom *headroom;      /* an extension of the reservation in flight (headroom.c) */
    int headroom_here;          /* HEADROOM_*: whether the next extension is the appender's */
    uint64_t spare_at;          /* the tail past which an append asks for one */
};

/* The headroom ramp's bounds (ensure_alloc): from 64 KiB up to four alloc_chunks. */
static uint64_t ahead_max(const cm_shard *s) { return 4 * (uint64_t)s->opt.alloc_chunk; }
static uint64_t ahead_min(const cm_shard *s) {
    uint64_t m = 64 * 1024, max = ahead_max(s);
    return m < max ? m : max;
}

/* I16: the kernel boot id of the last writer open. A state page written before
 * a reboot may be older than the segment bytes that reached the disk (the page
 * is not fsynced), so after a reboot recovery never trusts it and rescans. */
static char boot_id[32];
static pthread_once_t boot_once = PTHREAD_ONCE_INIT;

static void read_boot_id(void) {
    char buf[64] = {0};
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        int j = 0;
        for (ssize_t i = 0; i < n && j < (int)sizeof boot_id; i++)
            if (buf[i] != '-' && buf[i] != '\n') boot_id[j++] = buf[i];
    }
}

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

/* ---------------------------------------------------------------- mapping */

/* Returns the prefault thread's ticket for the last munmap queued (cm_prealloc_wait;
 * FIFO, so it covers both). Both munmaps go to the prefault thread: a munmap takes the
 * process's mmap lock for writing, so on the appending thread it waited for the
 * populate step in flight, in every rotation. */
static uint64_t unmap_active(cm_shard *s) {
    cm_headroom_drop(&s->headroom);   /* before the munmap is queued: it runs after it */
    /* each cleared with its munmap queued or its close, as one step for a fork (a child
       that reopens its writers would otherwise unmap or close what it made since) */
    uint64_t ticket = s->idx_map ? cm_prealloc_unmap(&s->idx_map, s->idx_cap) : 0;
    if (s->seg_map) ticket = cm_prealloc_unmap(&s->seg_map, s->seg_cap);
    cm_prealloc_close(&s->seg_fd);
    cm_prealloc_close(&s->idx_fd);
    s->seg_cap = s->idx_cap = 0;
    s->seg_base = UINT64_MAX;
    s->spare_at = UINT64_MAX;
    return ticket;
}

/* No read-around for the pages appends will store into. A fault on a page that is not
 * in the page cache reads around it (filemap_fault: read_ahead_kb, 8 MiB on this
 * machine's disk), and the holes and unwritten extents past the tail read as zeros
 * without I/O but still cost a fresh page each: the first store into a new segment
 * took 1.5-2.8 ms, whichever thread faulted first (the appender or the prefault
 * thread; docs/PERFORMANCE.md "Read-around on the append path"). MADV_RANDOM on the
 * pages past the tail makes each fault allocate only its own page (~10 us measured).
 * The written part keeps the default advice: recovery's scan of a segment read from
 * disk after a reboot wants read-around. Best effort: a failure only costs speed. */
static void advise_appends(cm_shard *s) {
    uint64_t from = round_up(s->st->tail, 4096);
    if (s->seg_map && from < s->seg_cap)
        madvise(s->seg_map + from, s->seg_cap - from, MADV_RANDOM);
}

/* Map the index of the active segment, creating it when missing or unusable.
 * *fresh is set when the table is empty and must be rebuilt by a scan. */
static int map_index(cm_shard *s, uint64_t base, int *fresh) {
    char name[64];
    cm_segment_name(name, sizeof name, base, ".idx");
    *fresh = 0;
    int fd = CM_FAILPOINT_ERRNO("open.index") ? -1 :
             cm_fs_openat(s->dirfd, name, O_RDWR, 0);   /* I30 */
    if (fd < 0 && errno != ENOENT) return cm_fs_fail(errno, s->dirfd, s->dir, name, "open");
    uint64_t need = cm_index_capacity(s->seg_cap, s->opt.index_interval);
    struct stat sb;
    int ok = fd >= 0 && fstat(fd, &sb) == 0 && (uint64_t)sb.st_size >= CM_IDX_HEADER_BYTES;
    uint8_t h[CM_IDX_HEADER_BYTES];
    if (ok && pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h &&
        get32(h) == CM_IDX_MAGIC && get16(h + CM_IDX_OFF_VERSION) == CM_IDX_VERSION &&
        get64(h + CM_IDX_OFF_BASE) == base &&
        get32(h + CM_IDX_OFF_HEADER_CRC) == cm_crc32c(0, h, CM_IDX_OFF_HEADER_CRC) &&
        get32(h + CM_IDX_OFF_INTERVAL) >= 64) {
        s->idx_interval = get32(h + CM_IDX_OFF_INTERVAL);
        need = cm_index_capacity(s->seg_cap, s->idx_interval);
        ok = (uint64_t)sb.st_size >= need;
    } else {
        ok = 0;
    }
    if (!ok) {
        /* I8: the index is derived data; recreate it and let the scan refill it */
        if (fd >= 0) close(fd);
        int rc = cm_index_create(s->dirfd, s->dir, base, s->seg_cap, s->opt.index_interval,
                                 0, &fd);
        if (rc < 0) return rc;
        s->idx_interval = s->opt.index_interval;
        need = cm_index_capacity(s->seg_cap, s->idx_interval);
        *fresh = 1;
    }
    void *m = CM_FAILPOINT_ERRNO("open.index_map") ? MAP_FAILED :
              mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        close(fd);
        return cm_fail(CM_E_IO, e, "map %s/%s", s->dir, name);
    }
    close(fd);   /* the mapping keeps the file: an idle stream pins no index fd */
    s->idx_fd = -1; s->idx_map = m; s->idx_cap = need;
    return CM_OK;
}

static int map_active(cm_shard *s, uint64_t base, int *idx_fresh) {
    unmap_active(s);
    char name[64];
    cm_segment_name(name, sizeof name, base, ".seg");
    int fd = CM_FAILPOINT_ERRNO("open.segment") ? -1 :
             cm_fs_openat(s->dirfd, name, O_RDWR, 0);   /* I30 */
    if (fd < 0)
        return cm_fs_fail(errno, s->dirfd, s->dir, name, "open");
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno; close(fd);
        return cm_fail(CM_E_IO, e, "stat %s/%s", s->dir, name);
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < CM_SEG_HEADER_BYTES) {
        close(fd);
        return cm_fail(CM_E_CORRUPT, 0, "%s/%s: %llu bytes, shorter than a segment header",
                       s->dir, name, (unsigned long long)size);
    }
    void *m = CM_FAILPOINT_ERRNO("open.segment_map") ? MAP_FAILED :
              mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno; close(fd);
        return cm_fail(CM_E_IO, e, "map %s/%s", s->dir, name);
    }
    uint64_t hbase, hcap;
    int rc = cm_segment_header_check(m, size, &hbase, &hcap);
    if (rc == CM_OK && (hbase != base || hcap != size))
        rc = cm_fail(CM_E_CORRUPT, 0, "header says base %llu capacity %llu",
                     (unsigned long long)hbase, (unsigned long long)hcap);
    if (rc < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", cm_last_error());
        munmap(m, size); close(fd);
        return cm_fail(rc, 0, "%s/%s: %s", s->dir, name, msg);
    }
    s->seg_fd = fd; s->seg_map = m; s->seg_cap = size; s->seg_base = base;
    cm_segment_key(m, size, base, &s->seg_key);
    s->seg_gen = s->st ? s->st->active_gen : 0;
    s->spare_at = size / 2;
    int fresh;
    rc = map_index(s, base, &fresh);
    if (rc < 0) { unmap_active(s); return rc; }
    if (idx_fresh) *idx_fresh = fresh;
    return CM_OK;
}

/* ------------------------------------------------------------ the index */

static inline void index_note(cm_shard *s, uint64_t off, uint32_t seq, int64_t ts) {
    cm_state *st = s->st;
    if (st->idx_count != 0 && off - st->idx_last_off < s->idx_interval)
        return;
    uint64_t pos = CM_IDX_HEADER_BYTES + (uint64_t)st->idx_count * CM_IDX_ENTRY_BYTES;
    if (pos + CM_IDX_ENTRY_BYTES > s->idx_cap)
        return;
    uint8_t *e = s->idx_map + pos; /* rel(4) offset(4) ts_ns(8) */
    put32(e + CM_IDXE_OFF_REL, seq);
    put64(e + CM_IDXE_OFF_TS, (uint64_t)ts);
    put32(e + CM_IDXE_OFF_OFFSET, (uint32_t)off);
    st->idx_count++;
    st->idx_last_off = off;
}

static void index_clear_from(cm_shard *s, uint32_t from) {
    uint64_t pos = CM_IDX_HEADER_BYTES + (uint64_t)from * CM_IDX_ENTRY_BYTES;
    if (pos < s->idx_cap) memset(s->idx_map + pos, 0, s->idx_cap - pos);
}

/* ------------------------------------------------------------- recovery */

/* List segment bases in the directory: the largest and smallest, and the
 * largest below the largest (*prev_base; UINT64_MAX with one segment). */
static int list_segments(cm_shard *s, uint64_t *min_base, uint64_t *max_base,
                         uint64_t *prev_base, int *count, int remove_tmp) {
    *count = 0; *min_base = UINT64_MAX; *max_base = 0;
    int fd = dup(s->dirfd);
    if (fd < 0) return cm_fail(CM_E_IO, errno, "dup %s", s->dir);
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return cm_fail(CM_E_IO, errno, "list %s", s->dir); }
    rewinddir(d);
    *count = 0; *min_base = *prev_base = UINT64_MAX; *max_base = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        size_t len = strlen(n);
        if (remove_tmp && len > 4 && strcmp(n + len - 4, ".tmp") == 0 &&
            strcmp(n, "state.tmp") != 0) {   /* state.tmp: the page open_state() is building */
            unlinkat(s->dirfd, n, 0); /* I7: a temp file never became part of the log */
            continue;
        }
        if (len != 24 || strcmp(n + 20, ".seg") != 0) continue;
        int digits = 1;
        for (int i = 0; i < 20; i++) if (n[i] < '0' || n[i] > '9') digits = 0;
        if (!digits) continue;
        uint64_t b = strtoull(n, NULL, 10);
        if (b < *min_base) *min_base = b;
        if (*count == 0 || b > *max_base) {
            if (*count) *prev_base = *max_base;
            *max_base = b;
        } else if (*prev_base == UINT64_MAX || b > *prev_base) {
            *prev_base = b;
        }
        (*count)++;
    }
    closedir(d);
    return CM_OK;
}

/* Walk the active segment from (off, seq) with the one walker (walker.c,
 * FORMAT.md 2.4) up to `limit` bytes: stop/published as in cm_walk. Damage
 * followed by valid frames is corruption: counted, skipped. An end of data (or
 * damage no valid frame follows) at or above `published` ends the walk: *tail is
 * its offset; below `published` the walk reports the published entries as lost
 * and *tail is left at the damage (the caller keeps the published tail).
 * Rebuilds index entries for what it walks when asked. *damaged = findings. */
static void walk(cm_shard *s, uint64_t off, uint32_t seq, uint64_t limit, uint32_t stop,
                 uint32_t published, int note, uint64_t *tail, uint32_t *next_seq,
                 int64_t *last_ts, uint64_t *corrupt, uint32_t *damaged) {
    cm_walk w;
    cm_record r;
    cm_damage d;
    int rc;
    cm_walk_init(&w, s->seg_map, limit, s->seg_base, off, seq, stop, published);
    uint64_t end = off;
    while ((rc = cm_walk_next(&w, &r, &d)) != CM_WALK_DONE) {
        if (rc == CM_WALK_RECORD) {
            if (note) index_note(s, r.offset, r.seq, r.ts_ns);
            *last_ts = r.ts_ns;
            end = w.off;
            continue;
        }
        if (d.end == CM_DAMAGE_TORN) {
            end = d.offset;
            break;
        }
        (*damaged)++;
        *corrupt += d.lost;
        end = w.off;
    }
    *tail = end;
    *next_seq = w.seq;
}

/* Zero everything after the tail that holds data; returns bytes dropped
 * (from the tail to the last non-zero byte). Holes are skipped. */
static uint64_t zero_after(cm_shard *s, uint64_t from, uint64_t limit) {
    uint64_t last = from;
    uint64_t off = from;
    while (off < limit) {
        off_t d = lseek(s->seg_fd, (off_t)off, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= limit) break;
        off_t h = lseek(s->seg_fd, d, SEEK_HOLE);
        uint64_t end = (h < 0 || (uint64_t)h > limit) ? limit : (uint64_t)h;
        uint64_t start = (uint64_t)d < from ? from : (uint64_t)d;
        uint64_t dropped = cm_zero_range(s->seg_map, start, end);
        if (dropped) last = start + dropped;
        off = end;
    }
    return last - from;
}

/* The stream id of a stream's segments (FORMAT.md §2.1), read from the newest
 * segment other than `skip` whose header is valid and version 2; 0 when none. */
static uint64_t stream_id_of_others(cm_shard *s, uint64_t skip) {
    int fd = dup(s->dirfd);
    if (fd < 0) return 0;
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return 0; }
    rewinddir(d);        /* the dup shares the directory offset list_segments() left */
    struct dirent *de;
    uint64_t best_base = 0, id = 0;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        size_t l = strlen(n);
        if (l != 24 || strcmp(n + 20, ".seg") != 0) continue;
        uint64_t b = strtoull(n, NULL, 10);
        if (b == skip || (id && b < best_base)) continue;
        uint8_t h[CM_SEG_HEADER_BYTES];
        int fd = openat(s->dirfd, n, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t got = pread(fd, h, sizeof h, 0);
        close(fd);
        if (got == (ssize_t)sizeof h && cm_segment_header_check(h, sizeof h, NULL, NULL) == CM_OK &&
            get16(h + CM_SEG_OFF_VERSION) == CM_SEG_VERSION) {
            id = get64(h + CM_SEG_OFF_STREAM_ID);
            best_base = b;
        }
    }
    closedir(d);
    return id;
}

/* Which stream id the records behind a damaged header (`first`: the file's
 * first `n` bytes) are bound to, so the rewritten header keeps them readable
 * (I17). Candidates, each accepted only if the first record validates under
 * it (`first` is a private mapping: the trials write only to it): unbound (a v1 segment: returns 1), the damaged header's own stream_id
 * field (the damage was elsewhere), that field with one bit flipped (the
 * damage was there), the id of the stream's other segments, and the id solved
 * from the records' own crcs (cm_frame_solve_stream_id: the only segment's
 * header zeroed, given enough records to be sure). Returns 0 when none fits
 * and the segment has records; a new id when it has none. */
static uint64_t recover_stream_id(cm_shard *s, uint64_t base, uint8_t *first, uint64_t n) {
    if (n < CM_SEG_HEADER_BYTES) return cm_new_stream_id();
    uint64_t own = get64(first + CM_SEG_OFF_STREAM_ID);
    uint64_t cand[2 + 64 + 2];
    int k = 0;
    cand[k++] = 1;                                   /* v1: unbound */
    cand[k++] = own;
    for (int b = 0; b < 64; b++) cand[k++] = own ^ (1ull << b);
    cand[k++] = stream_id_of_others(s, base);
    cand[k++] = cm_frame_solve_stream_id(first, n, base);   /* the id the crcs were sealed under */
    int empty = cm_frame_check(first, n, base, CM_SEG_HEADER_BYTES, 0, NULL) == CM_REC_END;
    uint64_t found = 0;
    for (int i = 0; i < k && !found && !empty; i++) {
        if (cand[i] == 0) continue;
        put16(first + CM_SEG_OFF_VERSION, cand[i] == 1 ? CM_SEG_VERSION_V1 : CM_SEG_VERSION);
        put64(first + CM_SEG_OFF_STREAM_ID, cand[i] == 1 ? 0 : cand[i]);
        if (cm_frame_check(first, n, base, CM_SEG_HEADER_BYTES, 0, NULL) == CM_REC_VALID)
            found = cand[i];
    }
    if (empty) {
        uint64_t other = stream_id_of_others(s, base);
        return other ? other : cm_new_stream_id();
    }
    return found;
}

/* A segment file shorter than the capacity its header declares lost its end
 * (a copy cut off, a filesystem that dropped the tail): the missing bytes are
 * a torn tail. Give the file back its fixed size (I9) so it can be mapped;
 * the walk then treats the new zeros as the end of data. A file whose header
 * is unreadable is left alone and map_active() reports it. Caller holds the
 * lock. */
static int restore_segment_size(cm_shard *s, uint64_t base, uint64_t *repaired) {
    char name[64];
    cm_segment_name(name, sizeof name, base, ".seg");
    int fd = cm_fs_openat(s->dirfd, name, O_RDWR, 0);   /* I30: never resize a link's target */
    if (fd < 0 && errno == ELOOP) return cm_fs_fail(errno, s->dirfd, s->dir, name, "open");
    if (fd < 0) return CM_OK;   /* map_active() reports it */
    struct stat sb;
    uint8_t h[CM_SEG_HEADER_BYTES];
    uint64_t hbase, hcap;
    int rc = CM_OK;
    if (fstat(fd, &sb) != 0) { close(fd); return CM_OK; }
    uint64_t size = (uint64_t)sb.st_size;
    int ok = size >= CM_SEG_HEADER_BYTES && pread(fd, h, sizeof h, 0) == (ssize_t)sizeof h &&
             cm_segment_header_check(h, sizeof h, &hbase, &hcap) == CM_OK &&
             hbase == base && hcap >= size && hcap <= CM_SEG_MAX_BYTES;
    if (ok && hcap > size && (CM_FAILPOINT_ERRNO("recover.restore_size") ||
                              ftruncate(fd, (off_t)hcap) != 0))
        rc = cm_fail(CM_E_IO, errno, "restore %s/%s to %llu bytes", s->dir, name,
                     (unsigned long long)hcap);
    if (!ok) {
        /* The active segment's header is damaged. Everything in it is derivable
           (base from the file name, I1; capacity from the size; the stream's
           crc; the stream id, see recover_stream_id), so rewrite it and keep
           the records behind it. */
        uint64_t cap = size < 4096 ? (s->opt.segment_bytes > 4096 ? s->opt.segment_bytes : 4096)
                                   : (size + 4095) / 4096 * 4096;
        if (cap > CM_SEG_MAX_BYTES) cap = CM_SEG_MAX_BYTES;
        uint8_t *first = size >= CM_SEG_HEADER_BYTES
            ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0) : MAP_FAILED;
        uint64_t id = first == MAP_FAILED ? cm_new_stream_id()
                                          : recover_stream_id(s, base, first, size);
        if (first != MAP_FAILED) munmap(first, size);
        if (id == 0) {
            rc = cm_fail(CM_E_CORRUPT, 0, "%s/%s: the segment header is damaged and the "
                         "stream id its records are bound to cannot be recovered", s->dir, name);
            close(fd);
            return rc;
        }
        cm_segment_header_init(h, base, cap, s->opt.stream_crc, id == 1 ? 0 : id);
        if (id == 1) put16(h + CM_SEG_OFF_VERSION, CM_SEG_VERSION_V1);   /* keep it v1 */
        put32(h + CM_SEG_OFF_HEADER_CRC, cm_crc32c(0, h, CM_SEG_OFF_HEADER_CRC));
        if (CM_FAILPOINT_ERRNO("recover.header_repair") ||
            (cap != size && ftruncate(fd, (off_t)cap) != 0) ||
            pwrite(fd, h, sizeof h, 0) != (ssize_t)sizeof h)
            rc = cm_fail(CM_E_IO, errno, "repair header of %s/%s", s->dir, name);
        else
            (*repaired)++;
    }
    close(fd);
    return rc;
}

static int remove_new_segment(cm_shard *s, uint64_t base, int durable);

/* Entries a segment file holds by walking it read-only with the one walker:
 * *end = base + (sequence of its last valid record + 1), or base when it has
 * none. Returns CM_OK, or < 0 when it cannot be mapped or its header is bad. */
static int segment_end(cm_shard *s, uint64_t base, uint64_t *end, int64_t *last_ts) {
    char name[64];
    cm_segment_name(name, sizeof name, base, ".seg");
    int fd = cm_fs_openat(s->dirfd, name, O_RDONLY, 0);   /* I30 */
    if (fd < 0) return cm_fs_fail(errno, s->dirfd, s->dir, name, "open");
    struct stat sb;
    int rc = CM_E_CORRUPT;
    void *m = MAP_FAILED;
    uint64_t size = 0, hbase, hcap;
    if (fstat(fd, &sb) == 0 && (size = (uint64_t)sb.st_size) >= CM_SEG_HEADER_BYTES)
        m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return cm_fail(CM_E_IO, errno, "map %s/%s", s->dir, name);
    if (cm_segment_header_check(m, size, &hbase, &hcap) == CM_OK && hbase == base) {
        cm_walk w;
        cm_record last;
        uint64_t records = 0, lost = 0;
        cm_walk_init(&w, m, size, base, CM_SEG_HEADER_BYTES, 0, CM_SEQ_ANY, 0);
        cm_walk_count(&w, &last, &records, &lost);
        *end = records ? base + last.seq + 1 : base;
        if (last_ts) *last_ts = records ? last.ts_ns : 0;
        rc = CM_OK;
    }
    munmap(m, size);
    return rc;
}

/* I1: a newest segment that holds no record while the segment before it holds
 * entries at or past its base is what a failed rotation left (ARCHITECTURE.md
 * §4.1: an older build appended on into the older segment after it): adopting
 * it would move `committed` back below acknowledged entries and hand their
 * numbers out again. Remove it (delete: unlink, fsync the directory when
 * durable) and recover from the older segment. Only checked when the state
 * page does not already name the newest segment as active (a rotation that
 * completed set active_base), so an ordinary open walks nothing extra.
 * Returns 1 when it removed one, 0 when none, < 0 on error. Caller holds the lock. */
static int drop_rotation_leftover(cm_shard *s, uint64_t max_base, uint64_t prev_base) {
    uint64_t newest_end, prev_end;
    if (segment_end(s, max_base, &newest_end, NULL) < 0 || newest_end != max_base)
        return 0;                       /* not empty (or unreadable: recovery reports it) */
    if (segment_end(s, prev_base, &prev_end, NULL) < 0 || prev_end <= max_base)
        return 0;                       /* a rotation that completed: the older one ends at its base */
    int e = remove_new_segment(s, max_base, s->opt.durability != CM_DURABILITY_NONE);
    if (e)
        return cm_fail(CM_E_IO, e, "remove %s/%020llu.seg, an empty segment a failed rotation "
                       "left below the end of %020llu.seg (entry %llu)", s->dir,
                       (unsigned long long)max_base, (unsigned long long)prev_base,
                       (unsigned long long)prev_end);
    return 1;
}

/* Validate and repair the active segment's tail. Caller holds the lock
 * (and, at open, the directory flock). state_fresh: the state page was
 * just (re)initialised and carries nothing to trust. */
static int recover_files_locked(cm_shard *s, int state_fresh, int at_open,
                                cm_open_report *rep) {
    cm_state *st = s->st;
    uint64_t min_base, max_base, prev_base;
    int count;
    if (state_fresh) {
        int e = CM_FAILPOINT("recover.fresh_state");   /* I28: the page is not visible yet */
        if (e) return cm_fail(CM_E_IO, e, "recover %s (failpoint)", s->dir);
    }
    int rc = list_segments(s, &min_base, &max_base, &prev_base, &count, at_open);
    if (rc < 0) return rc;
    pthread_once(&boot_once, read_boot_id);
    if (count > 1 && (state_fresh || st->active_base != max_base ||
                      memcmp(st->boot_id, boot_id, sizeof boot_id) != 0)) {
        rc = drop_rotation_leftover(s, max_base, prev_base);
        if (rc < 0) return rc;
        if (rc > 0) {
            rc = list_segments(s, &min_base, &max_base, &prev_base, &count, 0);
            if (rc < 0) return rc;
        }
    }
    st->rotate_pending = 0;   /* the files decide from here on */
    if (count == 0) {
        /* I1: entry numbers are never reused, so a stream whose segments are
           all gone restarts at the committed count, not at 0 */
        uint64_t base = state_fresh ? 0 : st->committed;
        uint64_t cap = s->opt.segment_bytes;
        int fd;
        /* a stream with no segment left gets a new identity (FORMAT.md §2.1) */
        uint64_t first = ahead_min(s) < cap ? ahead_min(s) : cap;  /* the ramp's start */
        rc = cm_segment_create(s->dirfd, s->dir, base, cap, first,
                               s->opt.stream_crc, cm_new_stream_id(),
                               s->opt.durability != CM_DURABILITY_NONE, &fd);
        if (rc < 0) return rc;
        close(fd);
        st->active_gen++;
        rc = map_active(s, base, NULL);
        if (rc < 0) return rc;
        /* the ramp's first headroom faulted in by the prefault thread, as a rotation's
           is: the appender's first store into each of these pages was a fault of
           ~50 us on ext4 here (docs/PERFORMANCE.md "The woken read, and the writer's first
           pages") */
        if (s->opt.prefault) {
            cm_prealloc_populate(s->seg_map, first);
            cm_prealloc_populate(s->idx_map, s->idx_cap < 4096 ? s->idx_cap : 4096);
        }
        st->active_base = base;
        st->committed = base;
        st->first_entry = base;
        st->tail = st->reserve_end = CM_SEG_HEADER_BYTES;
        st->alloc_end = first;
        st->idx_count = 0;
        st->idx_last_off = 0;
        pthread_once(&boot_once, read_boot_id);
        memcpy(st->boot_id, boot_id, sizeof boot_id);
        return CM_OK;
    }
    int idx_fresh;
    uint64_t header_repairs = 0;
    rc = restore_segment_size(s, max_base, &header_repairs);
    if (rc < 0) return rc;
    if (state_fresh || st->active_base != max_base)
        st->active_gen++;   /* other processes' views of the active segment are stale */
    rc = map_active(s, max_base, &idx_fresh);
    if (rc < 0) return rc;
    uint64_t B = max_base;
    uint64_t tail = 0, corrupt = 0, dropped = 0;
    uint32_t nseq = 0;
    int64_t last_ts = 0;
    pthread_once(&boot_once, read_boot_id);
    int same_boot = memcmp(st->boot_id, boot_id, sizeof boot_id) == 0;
    int trusted = !state_fresh && !idx_fresh && !header_repairs && st->active_base == B &&
                  same_boot &&
                  st->tail >= CM_SEG_HEADER_BYTES && st->tail <= s->seg_cap &&
                  st->committed >= B && st->committed - B < (1u << 28) &&
                  st->reserve_end >= st->tail && st->reserve_end <= s->seg_cap;
    if (trusted) {
        /* I2: records below the published tail are complete; re-check the
           stretch after the last index entry and require an exact match */
        uint32_t want = (uint32_t)(st->committed - B);
        uint64_t start = CM_SEG_HEADER_BYTES;
        uint32_t sseq = 0, keep = 0;   /* index entries to keep: those up to `start` */
        /* I26, I27: idx_count is derived; never walk past the table the file can hold */
        uint64_t slots = s->idx_cap > CM_IDX_HEADER_BYTES
                             ? (s->idx_cap - CM_IDX_HEADER_BYTES) / CM_IDX_ENTRY_BYTES : 0;
        uint32_t from = st->idx_count < slots ? st->idx_count : (uint32_t)slots;
        for (uint32_t i = from; i-- > 0;) {
            const uint8_t *e = s->idx_map + CM_IDX_HEADER_BYTES + (uint64_t)i * CM_IDX_ENTRY_BYTES;
            uint64_t o = get32(e + CM_IDXE_OFF_OFFSET);
            uint32_t q = get32(e + CM_IDXE_OFF_REL);
            if (o < st->tail && q < want &&
                cm_record_at(s->seg_map, st->tail, B, o, q, NULL) == CM_REC_VALID) {
                start = o; sseq = q; keep = i + 1; break;
            }
        }
        uint64_t c0 = 0;
        uint32_t d0 = 0;
        walk(s, start, sseq, st->tail, want, want, 0, &tail, &nseq, &last_ts, &c0, &d0);
        if (tail != st->tail || nseq != want || d0) {
            trusted = 0;
        } else {
            /* entries past the kept one may describe the dead writer's unpublished
               records (index_note runs before the frame is written): drop them */
            st->idx_count = keep;
            if (st->idx_count == 0) st->idx_last_off = 0;
            /* re-note the entries between the kept index point and the tail */
            uint64_t t2; uint32_t q2, d2 = 0; int64_t ts2; uint64_t c2 = 0;
            if (st->idx_count) {
                const uint8_t *e = s->idx_map + CM_IDX_HEADER_BYTES +
                                   (uint64_t)(st->idx_count - 1) * CM_IDX_ENTRY_BYTES;
                st->idx_last_off = get32(e + CM_IDXE_OFF_OFFSET);
            }
            index_clear_from(s, st->idx_count);
            walk(s, start, sseq, st->tail, want, want, 1, &t2, &q2, &ts2, &c2, &d2);
            /* I4: bytes of an unpublished write lie in [tail, reserve_end), but
               zero everything past the tail, not only that stretch or only when
               the tail is not already zero: frames left after a run of zeros
               (an older torn write) would otherwise survive, and a later
               resynchronising walk could adopt them as entries. The reserved
               stretch is zeroed through the mapping whatever SEEK_DATA says. */
            uint64_t lim = st->reserve_end > tail ? st->reserve_end : tail;
            uint64_t reserved = cm_zero_range(s->seg_map, tail, lim);
            dropped = zero_after(s, tail, s->seg_cap);
            if (dropped < reserved) dropped = reserved;
        }
    }
    if (!trusted) {
        if (rep) rep->scanned_full = 1;
        st->idx_count = 0;
        st->idx_last_off = 0;
        index_clear_from(s, 0);
        /* I1/I2: this boot's state page (same boot_id, same active segment) tells
           how many entries were published. Below that count an end of data is
           damage (zeroed or cut bytes), not the end: the walk resynchronises past
           it (FORMAT.md 2.4), and published entries no valid frame holds any more
           are lost but keep their numbers and the published tail - they were
           acknowledged, so their entry numbers are never handed out again. The
           damage stays reported by readers and verify. */
        uint32_t published = 0;
        int pub_known = !state_fresh && !header_repairs && st->active_base == B && same_boot &&
                        st->committed > B && st->committed - B < (1u << 28) &&
                        st->tail > CM_SEG_HEADER_BYTES && st->tail <= s->seg_cap;
        if (pub_known) published = (uint32_t)(st->committed - B);
        if (pub_known) {
            /* I27: committed and tail are derived, published together; a damaged
               copy of one of them must not outvote the segment. Walk the data alone
               first: when it ends cleanly where one of the two says (the walk's end
               offset is the published tail, or its count the published one), the
               other field is the damaged one and the data wins. Only when both
               disagree with the data (a zeroed or cut stretch below what was
               published) are the published count and tail kept (I1). */
            uint64_t t0, c0 = 0; uint32_t q0, d0 = 0; int64_t ts0;
            walk(s, CM_SEG_HEADER_BYTES, 0, s->seg_cap, CM_SEQ_ANY, 0, 0, &t0, &q0, &ts0,
                 &c0, &d0);
            if (t0 == st->tail || q0 == published) {
                pub_known = 0;
                published = 0;
            }
        }
        uint32_t damaged = 0;
        walk(s, CM_SEG_HEADER_BYTES, 0, s->seg_cap, CM_SEQ_ANY, published, 1, &tail, &nseq,
             &last_ts, &corrupt, &damaged);
        if (pub_known && nseq == published && st->tail > tail)
            tail = st->tail;   /* the walk ended in damage right below the published tail */
        dropped = zero_after(s, tail, s->seg_cap);
    }
    /* I6: the newest timestamp is the files' own: the active segment's last record,
       or, when it holds none (a rotation just happened), the last record of the
       segment before it. Never the page's copy: a damaged last_ts far ahead would
       clamp every later append to it (the page is derived data, I27). */
    if (nseq == 0 && count > 1 && prev_base != UINT64_MAX) {
        uint64_t pend;
        int64_t pts = 0;
        if (segment_end(s, prev_base, &pend, &pts) == CM_OK && pend > prev_base) last_ts = pts;
    }
    /* I27/I9: what is reserved on disk is not taken from the page: reserve again
       from the tail (posix_fallocate of allocated blocks is cheap) */
    st->alloc_end = round_up(tail, 4096);
    /* I27: the oldest retained entry is the oldest segment file, never the page's
       copy: a damaged first_entry must not hide an entry a file still holds */
    st->first_entry = min_base < B ? min_base : B;
    st->active_base = B;
    st->tail = tail;
    st->reserve_end = tail;
    st->last_ts = last_ts;
    memcpy(st->boot_id, boot_id, sizeof boot_id);
    __atomic_store_n(&st->committed, B + nseq, __ATOMIC_RELEASE);
    if (st->alloc_end > s->seg_cap) st->alloc_end = s->seg_cap;
    if (dropped || corrupt || !trusted) st->counters[CM_CTR_RECOVERIES]++;
    st->counters[CM_CTR_BYTES_DROPPED] += dropped;
    corrupt += header_repairs;
    st->counters[CM_CTR_CORRUPT_RECORDS] += corrupt;
    if (rep) {
        rep->bytes_dropped += dropped;
        rep->corrupt_records += corrupt;
    }
    if (dropped && s->opt.durability != CM_DURABILITY_NONE &&
        (CM_FAILPOINT_ERRNO("recover.fsync") || fdatasync(s->seg_fd) != 0))
        return cm_fail(CM_E_IO, errno, "fsync %s/%020llu.seg after zeroing its torn tail",
                       s->dir, (unsigned long long)B);
    return CM_OK;
}

/* Recovery (recover_files_locked), then the append advice for the active segment. */
static int recover_locked(cm_shard *s, int state_fresh, int at_open, cm_open_report *rep) {
    int rc = recover_files_locked(s, state_fresh, at_open, rep);
    if (rc == CM_OK) advise_appends(s);
    return rc;
}

/* ---------------------------------------------------------------- locking */

/* Take the stream lock (I5) through the one lock policy (I25, native/lock.c).
 * at_open: the caller holds the directory's exclusive flock, under which a
 * lock word written in another boot (the page's boot_id, I16) is known stale.
 * CM_OK, CM_LOCK_REPAIR (held; the previous holder died or the lock was
 * rebuilt: the caller repairs, then cm_lock_consistent), CM_E_BUSY (nonblock)
 * or < 0. */
static int take_lock(cm_shard *s, int nonblock, int at_open) {
    pthread_mutex_t *m = &s->st->lock.mutex;
    int rc = cm_lock_try(m, 0);
    if (rc != CM_E_BUSY) return rc;
    if (nonblock) return CM_E_BUSY;
    char path[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/state", s->dir);
    pthread_once(&boot_once, read_boot_id);
    cm_lock_site site = {
        .path = path, .guard = s->dir, .guard_held = at_open, .recursive = 0,
        /* I16/I25: no lock was taken in this boot before a writer open wrote boot_id */
        .foreign = at_open && memcmp(s->st->boot_id, boot_id, sizeof boot_id) != 0,
    };
    rc = cm_lock_acquire(m, &site, cm_lock_timeout_ms());
    if (rc >= 0) s->st->counters[CM_CTR_CONTENDED]++;   /* under the lock */
    return rc;
}

static int lock_shard(cm_shard *s, int nonblock) {
    int rc = take_lock(s, nonblock, 0);
    if (rc == CM_LOCK_REPAIR) {
        /* I5: the previous holder died inside the critical section (or its lock
           was rebuilt, I25): repair its torn tail before anyone appends, then
           mark the lock usable */
        int r = recover_locked(s, 0, 0, NULL);
        s->st->counters[CM_CTR_LOCK_RECOVERIES]++;
        cm_lock_consistent(&s->st->lock.mutex);
        if (r < 0) {
            cm_lock_release(&s->st->lock.mutex);
            return r;
        }
        rc = CM_OK;
    }
    return rc;
}

static void unlock_shard(cm_shard *s) { cm_lock_release(&s->st->lock.mutex); }

/* ------------------------------------------------------------------ open */

static int open_state(cm_shard *s, int *fresh) {
    *fresh = 0;
    int fd = CM_FAILPOINT_ERRNO("open.state") ? -1 :
             cm_fs_openat(s->dirfd, "state", O_RDWR, 0);   /* I30 */
    /* Only a missing or unusable page is rebuilt. One that cannot be opened or
       read (EIO, EMFILE, ...) may be live in another process: a fresh page
       renamed over it would give this process a second writer lock (I5). */
    if (fd < 0 && errno != ENOENT) return cm_fs_fail(errno, s->dirfd, s->dir, "state", "open");
    struct stat sb;
    int valid = 0;
    cm_state probe;
    ssize_t got = 0;
    if (fd >= 0 && (fstat(fd, &sb) != 0 || (sb.st_size == CM_STATE_BYTES &&
                    (got = CM_FAILPOINT_ERRNO("open.state_read") ? -1 :
                           pread(fd, &probe, sizeof probe, 0)) < 0))) {
        int e = errno;
        close(fd);
        return cm_fail(CM_E_IO, e, "read %s/state", s->dir);
    }
    if (fd >= 0 && sb.st_size == CM_STATE_BYTES && got == (ssize_t)sizeof probe &&
        probe.magic == CM_STATE_MAGIC) {
        if (probe.version != CM_STATE_VERSION || probe.fingerprint != cm_state_fingerprint()) {
            /* another build's layout: rebuild only if no process holds it */
            if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
                close(fd);
                return cm_fail(CM_E_FORMAT, 0,
                               "%s/state has version %u fingerprint %llx and is in use; this build "
                               "uses version %u fingerprint %llx", s->dir, probe.version,
                               (unsigned long long)probe.fingerprint, CM_STATE_VERSION,
                               (unsigned long long)cm_state_fingerprint());
            }
            flock(fd, LOCK_UN);
        } else {
            valid = 1;
        }
    }
    if (!valid) {
        if (fd >= 0) close(fd);
        /* build a fresh page in a temp file and rename it into place (I7) */
        int tfd = CM_FAILPOINT_ERRNO("open.state_create") ? -1 :
                  cm_fs_openat(s->dirfd, "state.tmp", O_RDWR | O_CREAT | O_TRUNC, 0600); /* I30, I31 */
        if (tfd < 0) return cm_fs_fail(errno, s->dirfd, s->dir, "state.tmp", "create");
        cm_state *fresh_st = calloc(1, sizeof *fresh_st);
        int rc = fresh_st ? cm_state_init(fresh_st) : cm_fail(CM_E_IO, ENOMEM, "state");
        if (rc == CM_OK && (CM_FAILPOINT_ERRNO("open.state_write") ||
                            pwrite(tfd, fresh_st, sizeof *fresh_st, 0) != (ssize_t)sizeof *fresh_st))
            rc = cm_fail(CM_E_IO, errno, "write %s/state.tmp", s->dir);
        free(fresh_st);
        if (rc < 0) { close(tfd); unlinkat(s->dirfd, "state.tmp", 0); return rc; }
        /* I28: not renamed into place yet: cm_shard_open() publishes the page only
           after recovery filled it in (publish_state), so no reader ever maps a
           fresh page whose committed count is still 0 */
        fd = tfd;
        *fresh = 1;
    } else {
        unlinkat(s->dirfd, "state.tmp", 0);   /* I7: a page an interrupted open left */
    }
    void *m = CM_FAILPOINT_ERRNO("open.state_map") ? MAP_FAILED :
              mmap(NULL, CM_STATE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno; close(fd);
        return cm_fail(CM_E_IO, e, "map %s/state", s->dir);
    }
    /* a shared flock marks the page as in use by this build (see above) */
    flock(fd, LOCK_SH);
    s->state_fd = fd;
    s->st = m;
    return CM_OK;
}

/* I28: rename a fresh page, complete now that recovery filled it in, into place.
 * Until here readers find the old (invalid) page or none and count the segments
 * themselves. Caller holds the directory flock. */
static int publish_state(cm_shard *s) {
    int e = CM_FAILPOINT("open.state_rename");
    if (e == 0 && renameat(s->dirfd, "state.tmp", s->dirfd, "state") != 0) e = errno;
    if (e != 0) {
        unlinkat(s->dirfd, "state.tmp", 0);
        return cm_fail(CM_E_IO, e,
                       "rename %s/state.tmp", s->dir);
    }
    return CM_OK;
}

/* I27a: a read lock on the whole state page (an open-file-description lock, held
 * until the page's fd closes) says "a writer recovered this page from the
 * segment files and keeps it current". Taken only after recovery published the
 * page, so a reader that sees it (F_OFD_GETLK, which takes nothing: readers never
 * contend with each other or with the writer) may trust committed/tail; a reader
 * that does not checks them against the files (Reader.committed, cometmp/shard.py).
 * A failure to take it only costs readers that check. Caller holds the directory
 * flock. */
/* I27a: a read lock on the whole state page, held until its fd closes, tells readers
 * that this page is current. Best effort by design: if it cannot be taken (failpoint
 * open.announce), readers count the segment files instead, which I27a makes exact
 * (never a record this writer has not published) — only slower. */
static void announce_writer(cm_shard *s) {
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (CM_FAILPOINT("open.announce")) return;
    (void)fcntl(s->state_fd, F_OFD_SETLK, &fl);
}

int cm_shard_open(const char *dir, const cm_options *opt, cm_shard **out, cm_open_report *rep) {
    *out = NULL;
    if (rep) memset(rep, 0, sizeof *rep);
    if (!opt || opt->segment_bytes < 4096 || opt->segment_bytes > CM_SEG_MAX_BYTES ||
        opt->index_interval < 64 || opt->alloc_chunk < 4096 ||
        opt->max_entry_bytes > CM_ENTRY_MAX_BYTES)
        return cm_fail(CM_E_ARG, 0, "invalid options for %s", dir);
    if (strlen(dir) >= PATH_MAX - 64)
        return cm_fail(CM_E_ARG, 0, "path too long: %s", dir);
    cm_shard *s = calloc(1, sizeof *s);
    if (!s) return cm_fail(CM_E_IO, ENOMEM, "allocate shard");
    s->magic = CM_SHARD_MAGIC;
    cm_life_init(&s->life);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    s->opt = *opt;
    s->opt.segment_bytes = round_up(opt->segment_bytes, 4096);
    s->seg_fd = s->idx_fd = s->state_fd = -1;
    s->seg_base = UINT64_MAX;
    s->gen = cm_fork_generation();
    int rc;
    /* I30, I31: <root>/streams/<stream>; neither of the last two is a link */
    s->dirfd = CM_FAILPOINT_ERRNO("open.dir") ? cm_fail(CM_E_IO, errno, "open %s", dir)
                                              : cm_fs_open_dir(dir, 2, opt->create);
    if (s->dirfd < 0) {
        rc = s->dirfd;
        s->dirfd = -1;
        goto fail;
    }
    if (CM_FAILPOINT_ERRNO("open.flock") || flock(s->dirfd, LOCK_EX) != 0) {
        rc = cm_fail(CM_E_IO, errno, "flock %s", dir);
        goto fail;
    }
    int fresh;
    rc = open_state(s, &fresh);
    if (rc == CM_OK) {
        if (rep) rep->state_rebuilt = fresh;
        rc = take_lock(s, 0, 1);
        if (rc >= 0) {
            /* the open's recovery is also the repair a lost holder needs (I5) */
            int r = recover_locked(s, fresh, 1, rep);
            if (rc == CM_LOCK_REPAIR) {
                s->st->counters[CM_CTR_LOCK_RECOVERIES]++;
                cm_lock_consistent(&s->st->lock.mutex);
            }
            unlock_shard(s);
            rc = r;
        }
        if (rc == CM_OK && fresh) rc = publish_state(s);
        if (rc == CM_OK) announce_writer(s);
    }
    flock(s->dirfd, LOCK_UN);
    if (rc < 0) goto fail;
    *out = s;
    return CM_OK;
fail:
    cm_shard_unref(s);
    return rc;
}

/* Release fds and mappings. Runs once, when no call is in flight (L2). */
static void release(cm_shard *s) {
    uint64_t spare_ticket = cm_spare_drop(&s->spare);
    uint64_t ticket = unmap_active(s);
    if (spare_ticket > ticket) ticket = spare_ticket;
    if (s->st) munmap(s->st, CM_STATE_BYTES);
    s->st = NULL;
    if (s->state_fd >= 0) close(s->state_fd);   /* releases our LOCK_SH */
    if (s->dirfd > 0) close(s->dirfd);
    s->state_fd = s->dirfd = -1;
    cm_prealloc_wait(ticket);   /* no prefault or spare touches this stream's files after close */
}

/* L2: later calls fail with CM_E_CLOSED; waits for the calls in flight (the
 * caller releases the GIL: cffi does), then releases fds and mappings. The
 * struct stays until its last reference goes (cm_shard_unref, L3). */
void cm_shard_close(cm_shard *s) {
    if (s && cm_life_close(&s->life)) release(s);
}

/* L3: the Appender's reference, taken from the head the Writer exposes */
cm_shard *cm_shard_ref_raw(void *p) {
    cm_shard *s = p;
    if (!s || s->magic != CM_SHARD_MAGIC) return NULL;
    cm_life_ref(&s->life);
    return s;
}

void cm_shard_unref(cm_shard *s) {
    if (!s || !cm_life_unref(&s->life)) return;
    cm_shard_close(s);          /* no owner left, so no call can be in flight */
    s->magic = 0;
    free(s);
}

/* ---------------------------------------------------------------- append */

/* Whether the next extension of a stream's reservation is the appender's own: after one
 * failed on the prefault thread (a full disk: the appender's own then gives back the spare's
 * blocks, or reports DiskFull when the bytes are needed now), and for good on a filesystem
 * without fallocate(2) (headroom.c). */
enum { HEADROOM_THREAD = 0, HEADROOM_HERE_ONCE = 1, HEADROOM_HERE = 2 };

/* Allocate [from, to) now, on the appending thread, for an append up to `end`. */
static int allocate_here(cm_shard *s, uint64_t from, uint64_t to, uint64_t end) {
    cm_state *st = s->st;
    int e = CM_FAILPOINT("append.alloc");
    if (!e) e = posix_fallocate(s->seg_fd, (off_t)from, (off_t)(to - from));
    if ((e == ENOSPC || e == EDQUOT) && s->spare && end > st->alloc_end) {
        /* a full disk: the spare's blocks are this stream's to give back (a spare is
           headroom), then try once more */
        cm_prealloc_wait(cm_spare_drop(&s->spare));
        e = CM_FAILPOINT("append.alloc");
        if (!e) e = posix_fallocate(s->seg_fd, (off_t)from, (off_t)(to - from));
    }
    if (e != 0) {
        if (end <= st->alloc_end) return 1;   /* headroom only: retry at the next append */
        st->counters[CM_CTR_DISK_FULL]++;
        return cm_fail(CM_E_IO, e,
                       "allocate %llu bytes in %s/%020llu.seg", (unsigned long long)(to - from),
                       s->dir, (unsigned long long)s->seg_base);
    }
    if (end > st->alloc_end) /* needed right now: fault it in here */
        madvise(s->seg_map + from, round_up(end, 4096) - from, MADV_POPULATE_WRITE);
    return 0;
}

/* Take the result of the extension in flight, if it finished: alloc_end covers what the
 * thread's fallocate returned for (I9), and only when it joins what was reserved before.
 * Returns 1 while it is still running. */
static int reap_headroom(cm_shard *s) {
    cm_headroom *h = s->headroom;
    if (cm_headroom_state(h) == CM_HEADROOM_PENDING) return 1;
    cm_state *st = s->st;
    if (h->error)
        s->headroom_here = h->error == EOPNOTSUPP ? HEADROOM_HERE : HEADROOM_HERE_ONCE;
    else if (h->from <= st->alloc_end && h->to > st->alloc_end)
        st->alloc_end = h->to;
    cm_headroom_drop(&s->headroom);
    return 0;
}

/* Make sure [alloc_end, end) is allocated on disk before we store into the
 * mapping: a store into a hole on a full disk would be SIGBUS (I9). Past the
 * write position we keep between half and all of `ahead` allocated and let the
 * prefault thread (prealloc.c) map it in before we get there.
 *
 * The headroom ramps like readahead's window: a handle starts at ahead_min()
 * and doubles `ahead` at every extension up to four alloc_chunks, each extension
 * allocating the new `ahead` past the write position. So a stream
 * that takes a few entries reserves and prefaults 64 KiB, not four chunks (a
 * family of 16 shards with one entry each used to cost 66 MiB of disk and 48 MiB
 * of zero pages written back; docs/PERFORMANCE.md "Many small streams"), while a
 * busy one reaches full headroom within its first few MiB. A rotation keeps the
 * handle's `ahead`: a stream that filled a segment is busy.
 *
 * Once the ramp is at full headroom, an extension made while the bytes needed now are
 * still reserved runs on the prefault thread (headroom.c): its fallocate can sleep on the
 * filesystem for ms. Until it is done the appender stores into what was reserved before;
 * if it reaches the end of that first, it makes the extension itself. Only a failure to
 * allocate the bytes needed now is an error. */
static int ensure_alloc(cm_shard *s, uint64_t end) {
    cm_state *st = s->st;
    uint64_t ahead = s->ahead ? s->ahead : ahead_min(s);
#define HEADROOM_OK (end <= st->alloc_end && (st->alloc_end >= s->seg_cap || \
                                              end + ahead / 2 <= st->alloc_end))
    if (HEADROOM_OK) return CM_OK;
    if (s->headroom && reap_headroom(s)) {
        if (end <= st->alloc_end) return CM_OK;   /* reserved: the extension is on its way */
        /* the tail caught up with the thread: a whole extension here, as if there were
           no thread (one fallocate, not one per append until the thread is done; it
           waits on the inode for the thread's if that one is running, and the thread's
           is then a no-op that reap_headroom ignores) */
        uint64_t from = st->alloc_end & ~4095ull, to = round_up(end, 4096) + ahead;
        if (to > s->seg_cap) to = s->seg_cap;
        int rc = allocate_here(s, from, to, end);
        if (rc < 0) return rc;
        st->alloc_end = to;
        return CM_OK;
    }
    if (HEADROOM_OK) return CM_OK;
#undef HEADROOM_OK
    /* the ramp's next step, allocated now: the next extension comes after half of it is
       used. (Extending by the old step and doubling after it put the tail past the new
       half-mark at once, so a ramping stream made one fallocate per page written.) */
    uint64_t next = 2 * ahead < ahead_max(s) ? 2 * ahead : ahead_max(s);
    uint64_t from = st->alloc_end & ~4095ull;
    uint64_t to = round_up(end, 4096) + next;
    if (to > s->seg_cap) to = s->seg_cap;
    /* only at full headroom: then the thread has half of it (two chunks, ~2 MiB) to be
       done in, while a ramping stream's half step (32 KiB up) is gone in fewer us than
       the thread takes to wake */
    if (end <= st->alloc_end && ahead == ahead_max(s) && s->headroom_here == HEADROOM_THREAD &&
        cm_headroom_request(&s->headroom, s->seg_fd, s->seg_map, from, to, s->opt.prefault)) {
        s->ahead = next;
        return CM_OK;
    }
    int rc = allocate_here(s, from, to, end);
    if (rc < 0) return rc;
    if (rc > 0) return CM_OK;     /* headroom only, not had: the next append tries again */
    if (s->headroom_here == HEADROOM_HERE_ONCE) s->headroom_here = HEADROOM_THREAD;
    uint64_t warm = st->alloc_end > from ? st->alloc_end & ~4095ull : from;
    if (s->opt.prefault)
        cm_prealloc_populate(s->seg_map + warm, to - warm);
    st->alloc_end = to;
    s->ahead = next;
    return CM_OK;
}


/* Remove what a failed rotation made visible at `base` (delete: unlink, then
 * fsync the directory when durable), so that no file claims entry numbers the
 * older segment will still hand out (I1). Returns 0 or the errno. An index
 * without its segment is inert (nothing lists it), so only the segment counts. */
static int remove_new_segment(cm_shard *s, uint64_t base, int durable) {
    char seg[64], idx[64];
    cm_segment_name(seg, sizeof seg, base, ".seg");
    cm_segment_name(idx, sizeof idx, base, ".idx");
    int e = CM_FAILPOINT("rotate.remove");
    if (!e && unlinkat(s->dirfd, seg, 0) != 0 && errno != ENOENT) e = errno;
    if (!e) unlinkat(s->dirfd, idx, 0);
    if (!e && durable && fsync(s->dirfd) != 0) e = errno;
    return e;
}

/* Seal the active segment and start a new one at the committed entry: a
 * transaction (ARCHITECTURE.md §4.1). Everything the new segment needs (its
 * index, its size and first blocks, both mappings) exists before the segment
 * is renamed in; a failure after the rename removes it again, and if even that
 * fails, st->rotate_pending makes every append retry the rotation first, so no
 * entry is ever appended to the older segment under a number the newer file
 * claims (I1). On failure nothing of the stream's state changed.
 * `frame` is the size of the record that did not fit. Caller holds the lock. */
/* The stream id the next segment carries: the active segment's (every v2
 * segment of a stream carries the same id, FORMAT.md §2.1); after an upgrade,
 * when the active segment is v1, the newest v2 segment's, else a new one. */
static uint64_t stream_id_for_next(cm_shard *s) {
    if (s->seg_map && s->seg_key.version == CM_SEG_VERSION && s->seg_key.stream_id)
        return s->seg_key.stream_id;
    uint64_t id = stream_id_of_others(s, UINT64_MAX);
    return id ? id : cm_new_stream_id();
}

/* The spare (spare.c) this rotation can take, or NULL. One still being built
 * stays for a later rotation; one that failed is dropped (the next half-full segment
 * asks again). The failpoint stands for a spare lost in any way: the rotation then
 * creates its files itself. Caller holds the lock. */
static cm_spare *take_spare(cm_shard *s, uint64_t cap) {
    cm_spare *sp = s->spare;
    /* a retry renames over what is left, and an empty active segment (one with another
       writer's segment size that an entry did not fit) is replaced by the rename at its
       base: linkat never replaces a file, so both take the synchronous path */
    if (!sp || s->st->rotate_pending || s->st->committed == s->st->active_base) return NULL;
    int state = cm_spare_state(sp);
    if (state == CM_SPARE_PENDING) return NULL;
    if (state == CM_SPARE_READY && sp->cap != cap) return NULL;   /* an oversized entry's */
    if (state != CM_SPARE_READY || CM_FAILPOINT("rotate.spare") ||
        sp->icap != cm_index_capacity(cap, s->opt.index_interval)) {
        cm_spare_drop(&s->spare);
        return NULL;
    }
    s->spare = NULL;
    return sp;
}

/* Name the spare's index: an index is inert without its segment, so one a crashed
 * rotation left under the name is replaced (as the synchronous path's rename does). */
static int link_index(cm_shard *s, int ifd, const char *idx) {
    if (cm_fs_link_tmpfile(ifd, s->dirfd, idx) == 0) return 0;
    if (errno != EEXIST) return errno;
    unlinkat(s->dirfd, idx, 0);
    return cm_fs_link_tmpfile(ifd, s->dirfd, idx) == 0 ? 0 : errno;
}

static int rotate_locked(cm_shard *s, uint64_t frame) {
    cm_state *st = s->st;
    uint64_t base = st->committed;
    uint64_t cap = s->opt.segment_bytes;
    if (CM_SEG_HEADER_BYTES + frame > cap)   /* an oversized entry gets its own segment */
        cap = round_up(CM_SEG_HEADER_BYTES + frame, 4096);
    int durable = s->opt.durability != CM_DURABILITY_NONE;
    uint64_t ahead = s->ahead ? s->ahead : ahead_min(s), chunk = s->opt.alloc_chunk;
    uint64_t pre = round_up(CM_SEG_HEADER_BYTES + frame, 4096) + (ahead < chunk ? ahead : chunk);
    if (pre > cap) pre = cap;
    char seg[64], tmp[80], idx[64];
    cm_segment_name(seg, sizeof seg, base, ".seg");
    cm_segment_name(idx, sizeof idx, base, ".idx");
    snprintf(tmp, sizeof tmp, "%s.tmp", seg);
    int e, rc;
    if (durable && s->seg_fd >= 0) {
        if ((e = CM_FAILPOINT("rotate.seal_fsync")) == 0 && fdatasync(s->seg_fd) != 0) e = errno;
        if (e) return cm_fail(CM_E_IO, e, "fsync %s/%020llu.seg", s->dir,
                              (unsigned long long)s->seg_base);
    }
    int fd = -1, ifd = -1;
    uint64_t icap = cm_index_capacity(cap, s->opt.index_interval);
    uint8_t *map = MAP_FAILED, *imap = MAP_FAILED;
    int populated = 0, idx_named = 0;
    cm_spare *sp = take_spare(s, cap);
    int spare = sp != NULL;
    if (spare) {
        /* 1-3 from the spare: both files exist, sized, their first blocks allocated
           and mapped; the headers go into the mappings, then the index is named */
        fd = sp->fd; ifd = sp->ifd; map = sp->map; imap = sp->imap;
        pre = sp->pre;   /* what it allocated (I9): ensure_alloc reserves the frame's rest */
        populated = sp->populate;
        cm_spare_taken(sp);
        cm_index_header_init(imap, base, s->opt.index_interval);
        cm_segment_header_init(map, base, cap, s->opt.stream_crc, stream_id_for_next(s));
        if ((e = CM_FAILPOINT("rotate.index_create")) == 0)
            e = durable && fdatasync(ifd) != 0 ? errno : link_index(s, ifd, idx);
        if (e) {
            rc = cm_fail(CM_E_IO, e, "create %s/%s", s->dir, idx);
            goto drop_tmp;
        }
        idx_named = 1;
        if ((e = CM_FAILPOINT("rotate.segment_create")) == 0 && durable && fdatasync(fd) != 0)
            e = errno;
        if (e) {
            rc = cm_fail(CM_E_IO, e, "fsync the new %s/%s", s->dir, seg);
            goto drop_tmp;
        }
    } else {
        /* 1. the index (renamed in; inert until its segment exists) */
        if ((e = CM_FAILPOINT("rotate.index_create")) != 0)
            return cm_fail(CM_E_IO, e, "create %s/%s (failpoint)", s->dir, idx);
        rc = cm_index_create(s->dirfd, s->dir, base, cap, s->opt.index_interval, durable, &ifd);
        if (rc < 0) return rc;
        idx_named = 1;
        /* 2. the segment as a temp file: size, first blocks, header, [fdatasync] (I7, I9) */
        if ((e = CM_FAILPOINT("rotate.segment_create")) != 0)
            rc = cm_fail(CM_E_IO, e, "create %s/%s (failpoint)", s->dir, tmp);
        else
            rc = cm_segment_create_tmp(s->dirfd, s->dir, base, cap, pre, s->opt.stream_crc,
                                       stream_id_for_next(s), durable, &fd);
        if (rc < 0) goto drop_index;
        /* 3. both mappings, still invisible */
        if ((e = CM_FAILPOINT("rotate.map")) == 0) {
            map = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED)
                imap = mmap(NULL, icap, PROT_READ | PROT_WRITE, MAP_SHARED, ifd, 0);
            if (imap == MAP_FAILED) e = errno;
        }
        if (e) {
            rc = cm_fail(CM_E_IO, e, "map %s/%s", s->dir, tmp);
            goto drop_tmp;
        }
    }
    /* 4. visible: rename in (a spare: link, which never replaces a file), then
       [fsync the directory] */
    if ((e = CM_FAILPOINT("rotate.rename")) == 0 &&
        (spare ? cm_fs_link_tmpfile(fd, s->dirfd, seg) : renameat(s->dirfd, tmp, s->dirfd, seg)) != 0)
        e = errno;
    if (e) {
        rc = cm_fail(CM_E_IO, e, "%s %s/%s", spare ? "link" : "rename", s->dir, spare ? seg : tmp);
        goto drop_tmp;
    }
    if (durable) {
        if ((e = CM_FAILPOINT("rotate.fsync")) == 0 && fsync(s->dirfd) != 0) e = errno;
        if (e) {
            rc = cm_fail(CM_E_IO, e, "fsync %s after creating %s", s->dir, seg);
            goto drop_visible;
        }
    }
    if ((e = CM_FAILPOINT("rotate.after_segment_create")) != 0) {
        rc = cm_fail(CM_E_IO, e, "after creating %s/%s (failpoint)", s->dir, seg);
        goto drop_visible;
    }
    /* 5. commit: the handle and the state follow the files. A crash before this
       point is repaired by recover_locked(): it adopts the new (empty) segment,
       whose base is exactly where the older one ends. The new segment's first pages
       are queued for the prefault thread before the old mapping's munmap: that munmap
       holds this process's mmap lock for writing, and appends faulting on new pages
       the thread had not reached waited for it right after every rotation. A spare's
       were faulted in when it was built. */
    if (s->opt.prefault && !populated)
        cm_prealloc_populate(map, pre);
    unmap_active(s);
    s->seg_fd = fd; s->seg_map = map; s->seg_cap = cap; s->seg_base = base;
    cm_segment_key(map, cap, base, &s->seg_key);
    close(ifd);  /* the mapping keeps the file (see map_index) */
    s->idx_fd = -1; s->idx_map = imap; s->idx_cap = icap;
    s->idx_interval = s->opt.index_interval;
    s->spare_at = cap / 2;
    if (!durable) s->sealed_unsynced = 1;
    st->active_gen++;
    s->seg_gen = st->active_gen;
    st->idx_count = 0;
    st->idx_last_off = 0;
    st->tail = st->reserve_end = CM_SEG_HEADER_BYTES;
    st->alloc_end = pre;
    st->active_base = base;
    if (!spare)   /* a spare was advised when it was built: madvise takes the mmap lock */
        advise_appends(s);
    st->rotate_pending = 0;
    st->counters[CM_CTR_ROTATIONS]++;
    if (spare) st->counters[CM_CTR_SPARE_ROTATIONS]++;
    return CM_OK;

drop_visible:
    munmap(map, cap);
    munmap(imap, icap);
    close(fd);
    close(ifd);
    /* I1: the older segment keeps appending at `base`, so the new file must go */
    if ((e = remove_new_segment(s, base, durable)) != 0) {
        st->rotate_pending = 1;   /* every append retries the rotation first */
        char msg[400];
        int err = cm_last_errno();
        snprintf(msg, sizeof msg, "%s", cm_last_error());
        cm_fail(rc, err, "%s; removing %s/%s failed too (%s), so appends retry the rotation; "
                "the first error was", msg, s->dir, seg, strerror(e));
    } else {
        st->rotate_pending = 0;
    }
    return rc;
drop_tmp:
    if (map != MAP_FAILED) munmap(map, cap);
    if (imap != MAP_FAILED) munmap(imap, icap);
    close(fd);
    if (!spare) unlinkat(s->dirfd, tmp, 0);   /* a spare's file has no name to remove */
drop_index:
    close(ifd);
    if (st->rotate_pending) {
        /* a retry that failed before its rename: the earlier attempt's segment is
           still there; removing it lets appends continue in the older segment */
        if (remove_new_segment(s, base, durable) == 0) st->rotate_pending = 0;
    } else if (idx_named) {   /* only the index this rotation named */
        unlinkat(s->dirfd, idx, 0);
    }
    return rc;
}

static int rotate(cm_shard *s, uint64_t frame) {
    int rc = rotate_locked(s, frame);
    if (rc == CM_E_NOSPACE) s->st->counters[CM_CTR_DISK_FULL]++;
    return rc;
}

static inline void publish(cm_shard *s, uint64_t tail, uint64_t committed) {
    cm_state *st = s->st;
    CM_STAMP(CM_ST_PUBLISH_IN);
    /* I3: the tail moves only after every byte below it is written */
    st->tail = tail;
    __atomic_store_n(&st->committed, committed, __ATOMIC_RELEASE);
    st->reserve_end = tail;
    /* I11: bump, then look for sleepers; both sequentially consistent so a
       waiter's increment of `waiters` cannot be missed (free on x86) */
    __atomic_add_fetch(&st->notify_seq, 1, __ATOMIC_SEQ_CST);
    CM_STAMP(CM_ST_PUBLISHED);
    if (__atomic_load_n(&st->waiters, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &st->notify_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    CM_STAMP(CM_ST_WOKE_SENT);
}

static int sync_locked(cm_shard *s) {
    if (s->seg_fd >= 0 && (CM_FAILPOINT_ERRNO("append.fsync") || fdatasync(s->seg_fd) != 0))
        return cm_fail(CM_E_IO, errno, "fsync %s/%020llu.seg", s->dir, (unsigned long long)s->seg_base);
    /* the state page is not synced: after a crash of the machine recovery
       ignores it and rescans the segment (I16) */
    if (s->sealed_unsynced) {
        if (CM_FAILPOINT_ERRNO("append.syncfs") || syncfs(s->dirfd) != 0)
            return cm_fail(CM_E_IO, errno, "syncfs %s", s->dir);
        s->sealed_unsynced = 0;
    }
    s->st->counters[CM_CTR_FSYNCS]++;
    return CM_OK;
}

/* Half-way through a segment, ask the prefault thread for the next one's files
 * (spare.c), once per segment: a spare not taken yet (another process rotated)
 * still serves. Caller holds the lock. */
static void request_spare(cm_shard *s) {
    s->spare_at = UINT64_MAX;
    if (s->spare) return;
    /* the whole headroom this stream keeps (ensure_alloc): the appends after the
       rotation then need no fallocate until they are `ahead / 2` into the segment */
    uint64_t cap = s->opt.segment_bytes;
    uint64_t pre = round_up(CM_SEG_HEADER_BYTES, 4096) + (s->ahead ? s->ahead : ahead_min(s));
    cm_spare_request(&s->spare, s->dirfd, cap, cm_index_capacity(cap, s->opt.index_interval),
                     pre, s->opt.prefault, s->opt.durability != CM_DURABILITY_NONE);
}

static int append_entered(cm_shard *s, const cm_iov *iov, uint32_t n, uint64_t *first_entry,
                          uint32_t *written, int nonblock) {
    if (s->gen != cm_fork_generation())
        return cm_fail(CM_E_FORKED, 0, "%s was opened in the parent process", s->dir);
    for (uint32_t i = 0; i < n; i++)
        if (iov[i].len > s->opt.max_entry_bytes)
            return cm_fail(CM_E_TOOBIG, 0, "payload #%u of the call is %u bytes; max_entry_bytes "
                           "is %u; nothing was written", i, iov[i].len, s->opt.max_entry_bytes);
    uint64_t bytes = 0, compressed = 0;
    uint32_t done = 0;
    int rc = lock_shard(s, nonblock);
    if (rc < 0) return rc;
    cm_state *st = s->st;
    if (s->seg_base != st->active_base || s->seg_gen != st->active_gen) {
        /* another process rotated (or replaced an empty active segment) */
        rc = map_active(s, st->active_base, NULL);
        if (rc < 0) goto out;
        advise_appends(s);
    }
    if (st->rotate_pending && n > 0) {
        /* I1: a failed rotation left a newer segment at `committed`; the older
           segment must not take an entry under a number that file claims, so
           finish (or undo) that rotation before anything is appended */
        rc = rotate(s, CM_REC_HEADER_BYTES + (uint64_t)iov[0].len);
        if (rc < 0) goto out;
    }
    int64_t ts = cm_now_ns();
    if (ts < st->last_ts) {     /* I6: timestamps never decrease within a stream */
        ts = st->last_ts;
        st->counters[CM_CTR_CLOCK_CLAMPS]++;
    }
    uint64_t entry = st->committed;
    uint64_t off = st->tail;
    *first_entry = entry;
    while (done < n) {
        uint64_t end = off;
        uint32_t k = done;
        while (k < n && end + CM_REC_HEADER_BYTES + iov[k].len <= s->seg_cap) {
            end += CM_REC_HEADER_BYTES + iov[k].len;
            k++;
        }
        if (k == done) {
            rc = rotate(s, CM_REC_HEADER_BYTES + (uint64_t)iov[done].len);
            if (rc < 0) goto out;
            off = st->tail;
            continue;
        }
        rc = ensure_alloc(s, end);
        if (rc < 0) goto out;
        st->reserve_end = end;  /* I4: declare the bytes we are about to write */
        uint8_t *dst = s->seg_map + off;
        uint64_t chunk_payload = 0, chunk_compressed = 0;
        uint8_t *group[3];
        uint32_t glen[3], ghead[3];
        int ng = 0;
        for (uint32_t j = done; j < k; j++) {
            uint32_t seq = (uint32_t)(entry - s->seg_base);
            index_note(s, off, seq, ts);
            /* len(4) crc(4) ts_ns(8) seqflags(4) payload; crcs sealed three at a time */
            cm_record_fill(dst, iov[j].data, iov[j].len, ts, seq | (iov[j].flags & CM_REC_FLAGS_MASK));
            group[ng] = dst;
            ghead[ng] = cm_frame_head_crc(&s->seg_key, seq, dst);   /* I17: bound to entry `entry` */
            glen[ng++] = iov[j].len;
            if (ng == 3 || j + 1 == k) {
                cm_record_seal(group, glen, ghead, ng);
                ng = 0;
            }
            dst += CM_REC_HEADER_BYTES + iov[j].len;
            off += CM_REC_HEADER_BYTES + iov[j].len;
            chunk_payload += iov[j].len;
            if (iov[j].flags & CM_REC_FLAG_ZSTD) chunk_compressed++;
            entry++;
        }
        (void)CM_FAILPOINT("append.publish");  /* KILL/STOP only: records complete, unpublished */
        publish(s, off, entry);
        bytes += chunk_payload;
        compressed += chunk_compressed;
        done = k;
    }
    st->last_ts = ts;
    if (s->opt.durability == CM_DURABILITY_ALWAYS)
        rc = sync_locked(s);
    if (__builtin_expect(st->tail >= s->spare_at, 0))
        request_spare(s);
out:
    st->counters[CM_CTR_APPENDS] += done;
    st->counters[CM_CTR_BYTES] += bytes;
    st->counters[CM_CTR_COMPRESSED] += compressed;
    *written = done;
    unlock_shard(s);
    return rc;
}

/* L1: every entry point enters the handle first; CM_E_CLOSED after close */
int cm_append_ex(cm_shard *s, const cm_iov *iov, uint32_t n, uint64_t *first_entry,
                 uint32_t *written, int nonblock) {
    CM_STAMP(CM_ST_APPEND_IN);
    *written = 0;
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    rc = append_entered(s, iov, n, first_entry, written, nonblock);
    cm_leave(&s->life);
    return rc;
}

int cm_append(cm_shard *s, const cm_iov *iov, uint32_t n, uint64_t *first_entry, uint32_t *written) {
    return cm_append_ex(s, iov, n, first_entry, written, 0);
}

static int sync_entered(cm_shard *s) {
    if (!s || !s->st) return cm_fail(CM_E_CLOSED, 0, "sync of a closed stream");
    if (s->gen != cm_fork_generation())
        return cm_fail(CM_E_FORKED, 0, "%s was opened in the parent process", s->dir);
    int rc = lock_shard(s, 0);
    if (rc < 0) return rc;
    if (s->seg_base != s->st->active_base || s->seg_gen != s->st->active_gen) {
        rc = map_active(s, s->st->active_base, NULL);
        if (rc == CM_OK) advise_appends(s);
    }
    if (rc == CM_OK) rc = sync_locked(s);
    unlock_shard(s);
    return rc;
}

static int shard_snapshot_entered(cm_shard *s, cm_snapshot *out) {
    if (!s || !s->st) return cm_fail(CM_E_CLOSED, 0, "snapshot of a closed stream");
    cm_state *st = s->st;
    out->committed = __atomic_load_n(&st->committed, __ATOMIC_ACQUIRE);
    out->active_base = st->active_base;
    out->tail = st->tail;
    out->alloc_end = st->alloc_end;
    out->first_entry = st->first_entry;
    out->last_ts = st->last_ts;
    memcpy(out->counters, st->counters, sizeof out->counters);
    return CM_OK;
}

static int shard_set_first_entry_entered(cm_shard *s, uint64_t first_entry) {
    if (!s || !s->st) return cm_fail(CM_E_CLOSED, 0, "closed stream");
    int rc = lock_shard(s, 0);
    if (rc < 0) return rc;
    if (first_entry > s->st->first_entry && first_entry <= s->st->active_base)
        s->st->first_entry = first_entry;
    unlock_shard(s);
    return CM_OK;
}

static int shard_add_counter_entered(cm_shard *s, uint32_t slot, uint64_t delta) {
    if (!s || !s->st) return cm_fail(CM_E_CLOSED, 0, "closed stream");
    if (slot >= CM_STATE_COUNTERS) return cm_fail(CM_E_ARG, 0, "counter %u", slot);
    __atomic_add_fetch(&s->st->counters[slot], delta, __ATOMIC_RELAXED);
    return CM_OK;
}


int cm_sync(cm_shard *s) {
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    rc = sync_entered(s);
    cm_leave(&s->life);
    return rc;
}

int cm_shard_snapshot(cm_shard *s, cm_snapshot *out) {
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    rc = shard_snapshot_entered(s, out);
    cm_leave(&s->life);
    return rc;
}

/* What `probe` says of this process's work for the stream on the prefault thread, under
 * the lock (a rotation or an append frees what it takes). */
static int background_state(cm_shard *s, int (*probe)(const cm_shard *)) {
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    if (s->gen != cm_fork_generation()) {
        rc = cm_fail(CM_E_FORKED, 0, "%s was opened in the parent process", s->dir);
    } else if ((rc = lock_shard(s, 0)) >= 0) {
        rc = probe(s);
        unlock_shard(s);
    }
    cm_leave(&s->life);
    return rc;
}

static int spare_probe(const cm_shard *s) {
    int st = s->spare ? cm_spare_state(s->spare) : -1;
    return st == CM_SPARE_PENDING ? CM_SHARD_SPARE_BUILDING :
           st == CM_SPARE_READY ? CM_SHARD_SPARE_READY :
           st == CM_SPARE_FAILED ? CM_SHARD_SPARE_FAILED : CM_SHARD_SPARE_NONE;
}

static int headroom_probe(const cm_shard *s) {
    return !s->headroom ? CM_SHARD_HEADROOM_NONE :
           cm_headroom_state(s->headroom) == CM_HEADROOM_PENDING ? CM_SHARD_HEADROOM_EXTENDING :
           CM_SHARD_HEADROOM_DONE;
}

/* This process's spare for the stream (spare.c): CM_SHARD_SPARE_NONE (none asked for, or
 * taken), _BUILDING, _READY or _FAILED. */
int cm_shard_spare(cm_shard *s) { return background_state(s, spare_probe); }

/* This process's extension of the stream's reservation (headroom.c):
 * CM_SHARD_HEADROOM_NONE, _EXTENDING (its fallocate has not returned) or _DONE (not taken
 * yet: the next append that needs it takes it). */
int cm_shard_headroom(cm_shard *s) { return background_state(s, headroom_probe); }

int cm_shard_set_first_entry(cm_shard *s, uint64_t first_entry) {
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    rc = shard_set_first_entry_entered(s, first_entry);
    cm_leave(&s->life);
    return rc;
}

int cm_shard_add_counter(cm_shard *s, uint32_t slot, uint64_t delta) {
    if (!s) return cm_closed_error("stream");
    int rc = cm_enter(&s->life, "stream");
    if (rc < 0) return rc;
    rc = shard_add_counter_entered(s, slot, delta);
    cm_leave(&s->life);
    return rc;
}
