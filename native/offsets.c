/* offsets.c - the consumer-offsets file: groups, (group, stream) slots, acks.
 *
 * Layout in native/format.h and docs/FORMAT.md §7; protocol in docs/ARCHITECTURE.md §9. Who may call: any
 * process and thread; the file is shared by every process of a data
 * directory. Claims, pattern updates, offset resets and deletions hold the
 * header's robust process-shared (recursive) mutex (I12); acks do not take
 * it and only ever move a slot's `next` forward (I13).
 *
 * Record lifecycle (groups and slots alike):
 *
 *   FREE --claim (fields first, state last)--> LIVE --delete--> DELETING --> FREE
 *     ^                                                     |
 *     +---------- repair() after the holder died ------------+
 *
 * A claimer killed before its release store of `state` leaves a FREE record;
 * a deleter killed mid-way leaves DELETING, which repair() finishes.
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
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"
#include "lock.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

struct cm_offsets {
    cm_life life;               /* L1-L3 (ARCHITECTURE.md §11) */
    uint8_t *map;
    cm_ofs_header *h;
    int writable;
    dev_t dev;                  /* the mapped file, to reopen it for reserve() */
    ino_t ino;
    char path[4096];
};

static inline cm_ofs_group *group_at(cm_offsets *o, uint32_t i) {
    return (cm_ofs_group *)(o->map + CM_OFS_GROUPS_OFF + (uint64_t)i * CM_OFS_GROUP_BYTES);
}

static inline cm_ofs_slot *slot_at(cm_offsets *o, uint32_t i) {
    return (cm_ofs_slot *)(o->map + CM_OFS_SLOTS_OFF + (uint64_t)i * CM_OFS_SLOT_BYTES);
}

static inline uint32_t load_state(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_state(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

uint64_t cm_offsets_fingerprint(void) {
    uint64_t f = CM_OFS_VERSION;
    f = f * 1000003u + offsetof(cm_ofs_header, lock);
    f = f * 1000003u + sizeof(pthread_mutex_t);
    f = f * 1000003u + CM_OFS_GROUP_BYTES;
    f = f * 1000003u + CM_OFS_GROUP_CAP;
    f = f * 1000003u + CM_OFS_SLOT_BYTES;
    f = f * 1000003u + CM_OFS_SLOT_CAP;
    f = f * 1000003u + offsetof(cm_ofs_slot, next);
    f = f * 1000003u + sizeof(void *);
    return f;
}

/* ------------------------------------------------------------ creation */

static int init_file(int fd) {
    if (CM_FAILPOINT_ERRNO("offsets.truncate") || ftruncate(fd, (off_t)CM_OFS_FILE_BYTES) != 0)
        return -errno;
    cm_ofs_header *h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    int bad = cm_lock_init(&h->lock.mutex, 1) != CM_OK;   /* I12, I25: recursive */
    if (bad) { free(h); return -EINVAL; }
    /* magic(4) version(2) header_bytes(2) fingerprint(8) file_bytes(8) caps(8) hwm(8) ... */
    h->magic = CM_OFS_MAGIC;
    h->version = CM_OFS_VERSION;
    h->header_bytes = CM_OFS_HEADER_BYTES;
    h->fingerprint = cm_offsets_fingerprint();
    h->file_bytes = CM_OFS_FILE_BYTES;
    h->group_cap = CM_OFS_GROUP_CAP;
    h->slot_cap = CM_OFS_SLOT_CAP;
    h->next_group_id = 1;
    h->created_ns = cm_now_ns();
    ssize_t w = CM_FAILPOINT_ERRNO("offsets.write") ? -1 : pwrite(fd, h, sizeof *h, 0);
    int e = errno;
    free(h);
    if (w != (ssize_t)sizeof *h) return -(w < 0 ? e : EIO);
    return 0;
}

/* The temp name is per process (<name>.<pid>.tmp, which the Python side's
 * remove_dead_temp_files judges by its pid), so one thread of the process at a
 * time builds it: two threads sharing it truncated and renamed each other's
 * file (in 295 of 300 trials of six concurrent first opens some failed with
 * ENOENT from the rename, and a late header write could land on the live file). Reset in a forked child,
 * which holds no thread's lock. */
static pthread_mutex_t create_mu = PTHREAD_MUTEX_INITIALIZER;
static void create_mu_child(void) { pthread_mutex_init(&create_mu, NULL); }
__attribute__((constructor))
static void offsets_init(void) { pthread_atfork(NULL, NULL, create_mu_child); }

static int create_file_locked(int dirfd, const char *dir, const char *name);

/* I7: build the file under a private temp name, then link it into place
 * without replacing: when two processes race, the first rename wins and the
 * loser opens the winner's file. */
static int create_file(int dirfd, const char *dir, const char *name) {
    pthread_mutex_lock(&create_mu);
    int rc = create_file_locked(dirfd, dir, name);
    pthread_mutex_unlock(&create_mu);
    return rc;
}

static int create_file_locked(int dirfd, const char *dir, const char *name) {
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", name, (int)getpid());
    int fd = CM_FAILPOINT_ERRNO("offsets.create") ? -1 :
             cm_fs_openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC, 0600);   /* I30, I31 */
    if (fd < 0) return cm_fs_fail(errno, dirfd, dir, tmp, "create");
    int e = init_file(fd);
    if (e == 0 && (CM_FAILPOINT_ERRNO("offsets.fsync") || fdatasync(fd) != 0)) e = -errno;
    close(fd);
    if (e != 0) {
        unlinkat(dirfd, tmp, 0);
        return cm_fail(CM_E_IO, -e, "initialise %s/%s", dir, tmp);
    }
    if (CM_FAILPOINT_ERRNO("offsets.rename") ||
        syscall(SYS_renameat2, dirfd, tmp, dirfd, name, RENAME_NOREPLACE) != 0) {
        e = errno;
        unlinkat(dirfd, tmp, 0);
        if (e != EEXIST) return cm_fail(CM_E_IO, e, "rename %s/%s", dir, tmp);
    }
    return CM_OK;
}

int cm_offsets_open(const char *path, int create, cm_offsets **out) {
    *out = NULL;
    if (strlen(path) >= 4000) return cm_fail(CM_E_ARG, 0, "path too long: %s", path);
    int writable = create != 0;
    /* I30: <root>/consumers/offsets; neither consumers/ nor the file is a link */
    char dir[4000];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || !slash[1]) return cm_fail(CM_E_ARG, 0, "not a file path: %s", path);
    *slash = 0;
    const char *name = slash + 1;
    int dirfd = cm_fs_open_dir(dir, 1, 0);
    if (dirfd < 0) return dirfd;
    int fd = CM_FAILPOINT_ERRNO("offsets.open") ? -1 :
             cm_fs_openat(dirfd, name, writable ? O_RDWR : O_RDONLY, 0);
    if (fd < 0 && errno == ENOENT && create) {
        int rc = create_file(dirfd, dir, name);
        if (rc < 0) { close(dirfd); return rc; }
        fd = cm_fs_openat(dirfd, name, O_RDWR, 0);
    }
    if (fd < 0) {
        int rc = cm_fs_fail(errno, dirfd, dir, name, "open");
        close(dirfd);
        return rc;
    }
    close(dirfd);
    struct stat sb;
    cm_ofs_header probe;
    if (fstat(fd, &sb) != 0 || pread(fd, &probe, sizeof probe, 0) != (ssize_t)sizeof probe) {
        int e = errno;
        close(fd);
        return cm_fail(CM_E_FORMAT, e, "%s: shorter than its %d-byte header", path,
                       CM_OFS_HEADER_BYTES);
    }
    if (probe.magic != CM_OFS_MAGIC || probe.version != CM_OFS_VERSION ||
        probe.fingerprint != cm_offsets_fingerprint() ||
        (uint64_t)sb.st_size != CM_OFS_FILE_BYTES || probe.file_bytes != CM_OFS_FILE_BYTES) {
        close(fd);
        return cm_fail(CM_E_FORMAT, 0,
                       "%s: magic 0x%08x version %u fingerprint %llx size %llu; this build "
                       "expects 0x%08x version %u fingerprint %llx size %llu", path, probe.magic,
                       probe.version, (unsigned long long)probe.fingerprint,
                       (unsigned long long)sb.st_size, CM_OFS_MAGIC, CM_OFS_VERSION,
                       (unsigned long long)cm_offsets_fingerprint(),
                       (unsigned long long)CM_OFS_FILE_BYTES);
    }
    /* I9: the header page was written at creation; records are reserved at claim */
    void *m = CM_FAILPOINT_ERRNO("offsets.map") ? MAP_FAILED :
              mmap(NULL, CM_OFS_FILE_BYTES, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                   MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);   /* the mapping keeps the file; no fd survives into forks */
    if (m == MAP_FAILED) return cm_fail(CM_E_IO, e, "map %s", path);
    cm_offsets *o = calloc(1, sizeof *o);
    if (!o) { munmap(m, CM_OFS_FILE_BYTES); return cm_fail(CM_E_IO, ENOMEM, "offsets"); }
    cm_life_init(&o->life);
    o->map = m;
    o->h = m;
    o->writable = writable;
    o->dev = sb.st_dev;
    o->ino = sb.st_ino;
    snprintf(o->path, sizeof o->path, "%s", path);
    *out = o;
    return CM_OK;
}

/* L2: later calls fail with CM_E_CLOSED once the calls in flight are done. The
 * mapping stays until the last reference (L3): a thread of this process may
 * still hold the robust mutex (OffsetStore.locked()), and unlocking it must
 * reach the mapped word, never an unmapped one. */
void cm_offsets_close(cm_offsets *o) {
    if (o) cm_life_close(&o->life);
}

void cm_offsets_unref(cm_offsets *o) {
    if (!o || !cm_life_unref(&o->life)) return;
    cm_life_close(&o->life);
    if (o->map) munmap(o->map, CM_OFS_FILE_BYTES);
    free(o);
}

void *cm_offsets_base(cm_offsets *o) { return o ? o->map : NULL; }

/* I9: the file is sparse, so a record's pages get their disk blocks only when
 * first stored to, and a store into a hole on a full disk is SIGBUS. Reserve
 * them (posix_fallocate) before a claim writes a record: a full disk is then
 * DiskFull naming the file. The mapping keeps no fd (none survives into forks),
 * so the file is reopened; claims are rare. Caller holds the offsets lock. */
static int reserve(cm_offsets *o, uint64_t off, uint64_t len) {
    uint64_t from = off & ~4095ull, to = (off + len + 4095) & ~4095ull;
    int e = CM_FAILPOINT("offsets.reserve");
    int fd = -1;
    if (e == 0) {
        fd = open(o->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);   /* I30; and the inode is checked */
        struct stat sb;
        if (fd < 0) e = errno;
        else if (fstat(fd, &sb) != 0) e = errno;
        else if (sb.st_dev != o->dev || sb.st_ino != o->ino) e = ESTALE;
        else e = posix_fallocate(fd, (off_t)from, (off_t)(to - from));
    }
    if (fd >= 0) close(fd);
    if (e == 0) return CM_OK;
    return cm_fail(CM_E_IO, e,
                   "reserve bytes %llu..%llu of %s", (unsigned long long)from,
                   (unsigned long long)to, o->path);
}

/* ------------------------------------------------------------- locking */

static void free_group_slots(cm_offsets *o, uint64_t id) {
    uint32_t hwm = o->h->slot_hwm;
    for (uint32_t i = 0; i < hwm && i < CM_OFS_SLOT_CAP; i++) {
        cm_ofs_slot *s = slot_at(o, i);
        if (load_state(&s->state) != CM_OFS_FREE && s->group_id == id)
            store_state(&s->state, CM_OFS_FREE);
    }
}

/* The previous holder died inside a critical section: finish what it left
 * half done. Claims need nothing (their records are still FREE); deletions
 * are completed; slots whose group is gone are freed. */
static void repair(cm_offsets *o) {
    cm_ofs_header *h = o->h;
    if (h->group_hwm > CM_OFS_GROUP_CAP) h->group_hwm = CM_OFS_GROUP_CAP;
    if (h->slot_hwm > CM_OFS_SLOT_CAP) h->slot_hwm = CM_OFS_SLOT_CAP;
    for (uint32_t i = 0; i < h->group_hwm; i++) {
        cm_ofs_group *g = group_at(o, i);
        if (g->state == CM_OFS_DELETING) {
            free_group_slots(o, g->id);
            store_state(&g->state, CM_OFS_FREE);
        }
    }
    for (uint32_t i = 0; i < h->slot_hwm; i++) {
        cm_ofs_slot *s = slot_at(o, i);
        if (s->state != CM_OFS_LIVE) continue;
        cm_ofs_group *g = s->group < h->group_hwm ? group_at(o, s->group) : NULL;
        if (!g || g->state != CM_OFS_LIVE || g->id != s->group_id)
            store_state(&s->state, CM_OFS_FREE);
    }
    h->lock_recoveries++;
}

/* Take the file's mutex through the one lock policy (I25, native/lock.c). */
static int lock_entered(cm_offsets *o) {
    if (!o || !o->map) return cm_fail(CM_E_CLOSED, 0, "offsets file closed");
    if (!o->writable) return cm_fail(CM_E_READONLY, 0, "%s opened read-only", o->path);
    pthread_mutex_t *m = &o->h->lock.mutex;
    int rc = cm_lock_try(m, 1);
    if (rc == CM_E_BUSY) {
        /* the rebuild guard is an exclusive flock on the file itself: no
           process keeps one on it, so only rebuilders contend for it */
        cm_lock_site site = { .path = o->path, .guard = o->path, .recursive = 1 };
        rc = cm_lock_acquire(m, &site, cm_lock_timeout_ms());
    }
    if (rc == CM_LOCK_REPAIR) {
        repair(o);   /* I12 */
        cm_lock_consistent(m);
        rc = CM_OK;
    }
    return rc;
}

int cm_offsets_unlock(cm_offsets *o) {
    if (!o || !o->map) return cm_fail(CM_E_CLOSED, 0, "offsets file closed");
    cm_lock_release(&o->h->lock.mutex);
    return CM_OK;
}

/* -------------------------------------------------------------- groups */

static int group_live(cm_offsets *o, uint32_t gi, uint64_t id) {
    if (gi >= CM_OFS_GROUP_CAP) return 0;
    cm_ofs_group *g = group_at(o, gi);
    return load_state(&g->state) == CM_OFS_LIVE && g->id == id;
}

/* Find group `name`; claim a record for it when missing and `create`.
 * Returns CM_OK (filling index and id) or CM_E_NOTFOUND. */
static int group_entered(cm_offsets *o, const char *name, uint32_t len, int create, int64_t now_ns,
                     uint32_t *index, uint64_t *id) {
    if (len == 0 || len > CM_OFS_NAME_MAX)
        return cm_fail(CM_E_ARG, 0, "group name is %u bytes; allowed 1..%d", len, CM_OFS_NAME_MAX);
    if (create && !o->writable) create = 0;
    int locked = 0;
    if (create) {
        int rc = lock_entered(o);
        if (rc < 0) return rc;
        locked = 1;
    }
    cm_ofs_header *h = o->h;
    uint32_t hwm = __atomic_load_n(&h->group_hwm, __ATOMIC_ACQUIRE);
    uint32_t free_at = UINT32_MAX;
    int rc = CM_E_NOTFOUND;
    for (uint32_t i = 0; i < hwm && i < CM_OFS_GROUP_CAP; i++) {
        cm_ofs_group *g = group_at(o, i);
        uint32_t st = load_state(&g->state);
        if (st == CM_OFS_LIVE && g->name_len == len && memcmp(g->name, name, len) == 0) {
            *index = i; *id = g->id;
            rc = CM_OK;
            goto out;
        }
        if (st == CM_OFS_FREE && free_at == UINT32_MAX) free_at = i;
    }
    if (!create) {
        rc = cm_fail(CM_E_NOTFOUND, 0, "no consumer group %.*s", (int)(len > 80 ? 80 : len), name);
        goto out;
    }
    /* prefer fresh records: a FREE one is reused only when the table is full,
       so a process still caching a deleted group's index rarely meets a new owner */
    uint32_t gi = hwm < CM_OFS_GROUP_CAP ? hwm : free_at;
    if (gi == UINT32_MAX) {
        rc = cm_fail(CM_E_NOSPACE, 0, "%s: all %d consumer-group records are in use",
                     o->path, CM_OFS_GROUP_CAP);
        goto out;
    }
    rc = reserve(o, CM_OFS_GROUPS_OFF + (uint64_t)gi * CM_OFS_GROUP_BYTES, CM_OFS_GROUP_BYTES);
    if (rc < 0) goto out;   /* I9: nothing stored, nothing claimed */
    cm_ofs_group *g = group_at(o, gi);
    /* state(4) name_len(4) id(8) created_ns(8) active_ns(8) patterns_len(4) ... name patterns */
    memset((uint8_t *)g + 4, 0, CM_OFS_GROUP_BYTES - 4);
    g->name_len = len;
    memcpy(g->name, name, len);
    g->id = h->next_group_id++;
    g->created_ns = now_ns;
    g->active_ns = now_ns;
    if (gi == hwm) __atomic_store_n(&h->group_hwm, hwm + 1, __ATOMIC_RELEASE);
    store_state(&g->state, CM_OFS_LIVE);  /* I12: state last */
    *index = gi; *id = g->id;
    rc = CM_OK;
out:
    if (locked) cm_offsets_unlock(o);
    return rc;
}

/* Remember that group reads streams matching `pattern` (so it protects them
 * from retention even before it has a slot there). Idempotent. */
static int add_pattern_entered(cm_offsets *o, uint32_t gi, uint64_t id, const char *pat, uint32_t len) {
    int rc = lock_entered(o);
    if (rc < 0) return rc;
    if (!group_live(o, gi, id)) {
        cm_offsets_unlock(o);
        return cm_fail(CM_E_NOTFOUND, 0, "consumer group %llu was deleted", (unsigned long long)id);
    }
    cm_ofs_group *g = group_at(o, gi);
    uint32_t have = g->patterns_len;
    if (have > CM_OFS_PATTERNS_MAX) {   /* I26: a count read from the file */
        cm_offsets_unlock(o);
        return cm_fail(CM_E_CORRUPT, 0, "%s: group record %u at offset %llu: patterns_len %u "
                       "exceeds %d", o->path, gi,
                       (unsigned long long)(CM_OFS_GROUPS_OFF + (uint64_t)gi * CM_OFS_GROUP_BYTES +
                                            CM_OFS_G_PATTERNS_LEN), have, CM_OFS_PATTERNS_MAX);
    }
    int found = 0;
    for (uint32_t i = 0; i < have && !found;) {
        uint32_t j = i;
        while (j < have && g->patterns[j] != '\n') j++;
        if (j - i == len && memcmp(g->patterns + i, pat, len) == 0) found = 1;
        i = j + 1;
    }
    if (!found) {
        if (have + len + 1 > CM_OFS_PATTERNS_MAX) {
            /* too many patterns to list: protect every stream instead */
            memcpy(g->patterns, "*", 1);
            __atomic_store_n(&g->patterns_len, 1, __ATOMIC_RELEASE);
        } else {
            if (have) g->patterns[have++] = '\n';
            memcpy(g->patterns + have, pat, len);
            __atomic_store_n(&g->patterns_len, have + len, __ATOMIC_RELEASE);
        }
    }
    cm_offsets_unlock(o);
    return CM_OK;
}

static int touch_entered(cm_offsets *o, uint32_t gi, uint64_t id, int64_t now_ns) {
    if (!o->writable) return CM_OK;
    if (!group_live(o, gi, id))
        return cm_fail(CM_E_NOTFOUND, 0, "consumer group %llu was deleted", (unsigned long long)id);
    __atomic_store_n(&group_at(o, gi)->active_ns, now_ns, __ATOMIC_RELAXED);
    return CM_OK;
}

static int delete_group_entered(cm_offsets *o, uint32_t gi, uint64_t id) {
    int rc = lock_entered(o);
    if (rc < 0) return rc;
    if (!group_live(o, gi, id)) {
        cm_offsets_unlock(o);
        return cm_fail(CM_E_NOTFOUND, 0, "consumer group %llu does not exist", (unsigned long long)id);
    }
    cm_ofs_group *g = group_at(o, gi);
    store_state(&g->state, CM_OFS_DELETING);
    free_group_slots(o, id);
    store_state(&g->state, CM_OFS_FREE);
    cm_offsets_unlock(o);
    return CM_OK;
}

/* --------------------------------------------------------------- slots */

static int slot_entered(cm_offsets *o, uint32_t gi, uint64_t id, const char *stream, uint32_t len,
                    int create, uint32_t *index) {
    if (len == 0 || len > CM_OFS_STREAM_MAX)
        return cm_fail(CM_E_ARG, 0, "stream name is %u bytes; allowed 1..%d", len, CM_OFS_STREAM_MAX);
    if (create && !o->writable) create = 0;
    int locked = 0;
    if (create) {
        int rc = lock_entered(o);
        if (rc < 0) return rc;
        locked = 1;
    }
    int rc;
    if (!group_live(o, gi, id)) {
        rc = cm_fail(CM_E_NOTFOUND, 0, "consumer group %llu was deleted", (unsigned long long)id);
        goto out;
    }
    cm_ofs_header *h = o->h;
    uint32_t hwm = __atomic_load_n(&h->slot_hwm, __ATOMIC_ACQUIRE);
    uint32_t free_at = UINT32_MAX;
    for (uint32_t i = 0; i < hwm && i < CM_OFS_SLOT_CAP; i++) {
        cm_ofs_slot *s = slot_at(o, i);
        uint32_t st = load_state(&s->state);
        if (st == CM_OFS_LIVE && s->group_id == id && s->stream_len == len &&
            memcmp(s->stream, stream, len) == 0) {
            *index = i;
            rc = CM_OK;
            goto out;
        }
        if (st == CM_OFS_FREE && free_at == UINT32_MAX) free_at = i;
    }
    if (!create) {
        rc = CM_E_NOTFOUND;   /* not an error worth a message: no slot yet */
        goto out;
    }
    uint32_t si = hwm < CM_OFS_SLOT_CAP ? hwm : free_at;
    if (si == UINT32_MAX) {
        rc = cm_fail(CM_E_NOSPACE, 0, "%s: all %d offset slots are in use", o->path, CM_OFS_SLOT_CAP);
        goto out;
    }
    rc = reserve(o, CM_OFS_SLOTS_OFF + (uint64_t)si * CM_OFS_SLOT_BYTES, CM_OFS_SLOT_BYTES);
    if (rc < 0) goto out;   /* I9: nothing stored, nothing claimed */
    cm_ofs_slot *s = slot_at(o, si);
    /* state(4) group(4) group_id(8) next(8) resets(8) acked_ns(8) dropped(8) stream_len(4) ... */
    memset((uint8_t *)s + 4, 0, CM_OFS_SLOT_BYTES - 4);
    s->group = gi;
    s->group_id = id;
    s->next = CM_OFS_UNSET;
    s->stream_len = len;
    memcpy(s->stream, stream, len);
    if (si == hwm) __atomic_store_n(&h->slot_hwm, hwm + 1, __ATOMIC_RELEASE);
    store_state(&s->state, CM_OFS_LIVE);  /* I12: state last */
    *index = si;
    rc = CM_OK;
out:
    if (locked) cm_offsets_unlock(o);
    return rc;
}

static int slot_live(cm_offsets *o, uint32_t si, uint64_t id) {
    if (si >= CM_OFS_SLOT_CAP) return 0;
    cm_ofs_slot *s = slot_at(o, si);
    return load_state(&s->state) == CM_OFS_LIVE && s->group_id == id;
}

/* I13: cumulative ack; `next` only moves forward (CAS max; UNSET is below
 * everything). Returns 1 when it advanced, 0 when it already was >= next. */
static int ack_entered(cm_offsets *o, uint32_t si, uint64_t id, uint64_t next, int64_t now_ns) {
    if (!o->writable) return cm_fail(CM_E_READONLY, 0, "%s opened read-only", o->path);
    if (!slot_live(o, si, id))
        return cm_fail(CM_E_NOTFOUND, 0, "offset slot %u no longer belongs to group %llu",
                       si, (unsigned long long)id);
    cm_ofs_slot *s = slot_at(o, si);
    uint64_t cur = __atomic_load_n(&s->next, __ATOMIC_ACQUIRE);
    for (;;) {
        if (cur != CM_OFS_UNSET && cur >= next) return 0;
        if (__atomic_compare_exchange_n(&s->next, &cur, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
    __atomic_store_n(&s->acked_ns, now_ns, __ATOMIC_RELAXED);
    return 1;
}

/* Move a slot's offset anywhere (reset_offset); bumps `resets` so consumers
 * in other processes drop their in-memory positions. Takes the lock. */
static int set_entered(cm_offsets *o, uint32_t si, uint64_t id, uint64_t next, int64_t now_ns) {
    int rc = lock_entered(o);
    if (rc < 0) return rc;
    if (!slot_live(o, si, id)) {
        cm_offsets_unlock(o);
        return cm_fail(CM_E_NOTFOUND, 0, "offset slot %u no longer belongs to group %llu",
                       si, (unsigned long long)id);
    }
    cm_ofs_slot *s = slot_at(o, si);
    __atomic_store_n(&s->next, next, __ATOMIC_RELEASE);
    __atomic_add_fetch(&s->resets, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&s->acked_ns, now_ns, __ATOMIC_RELAXED);
    cm_offsets_unlock(o);
    return CM_OK;
}

static int add_dropped_entered(cm_offsets *o, uint32_t si, uint64_t id, uint64_t n) {
    if (!o->writable) return cm_fail(CM_E_READONLY, 0, "%s opened read-only", o->path);
    if (!slot_live(o, si, id)) return CM_E_NOTFOUND;
    __atomic_add_fetch(&slot_at(o, si)->dropped, n, __ATOMIC_RELAXED);
    return CM_OK;
}

/* ---------------------------------------------- entry points (L1) */

int cm_offsets_lock(cm_offsets *o) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = lock_entered(o);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_group(cm_offsets *o, const char *name, uint32_t len, int create, int64_t now_ns,
                     uint32_t *index, uint64_t *id) {
    if (!o) return cm_closed_error("offsets file");
    if (cm_group_name_check(name, len) != CM_OK)   /* names.c: the one rule */
        return cm_fail(CM_E_ARG, 0, "%s: invalid consumer group name (FORMAT.md 7)", o->path);
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = group_entered(o, name, len, create, now_ns, index, id);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_add_pattern(cm_offsets *o, uint32_t gi, uint64_t id, const char *pat, uint32_t len) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = add_pattern_entered(o, gi, id, pat, len);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_touch(cm_offsets *o, uint32_t gi, uint64_t id, int64_t now_ns) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = touch_entered(o, gi, id, now_ns);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_delete_group(cm_offsets *o, uint32_t gi, uint64_t id) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = delete_group_entered(o, gi, id);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_slot(cm_offsets *o, uint32_t gi, uint64_t id, const char *stream, uint32_t len,
                    int create, uint32_t *index) {
    if (!o) return cm_closed_error("offsets file");
    if (cm_stream_name_check(stream, len) != CM_OK)   /* names.c: the one rule */
        return cm_fail(CM_E_ARG, 0, "%s: invalid stream name (FORMAT.md 1)", o->path);
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = slot_entered(o, gi, id, stream, len, create, index);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_ack(cm_offsets *o, uint32_t si, uint64_t id, uint64_t next, int64_t now_ns) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = ack_entered(o, si, id, next, now_ns);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_set(cm_offsets *o, uint32_t si, uint64_t id, uint64_t next, int64_t now_ns) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = set_entered(o, si, id, next, now_ns);
    cm_leave(&o->life);
    return rc;
}

int cm_offsets_add_dropped(cm_offsets *o, uint32_t si, uint64_t id, uint64_t n) {
    if (!o) return cm_closed_error("offsets file");
    int rc = cm_enter(&o->life, "offsets file");
    if (rc < 0) return rc;
    rc = add_dropped_entered(o, si, id, n);
    cm_leave(&o->life);
    return rc;
}
