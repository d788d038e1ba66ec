/* registry.c - the worker registry's shared-memory header and membership lock.
 *
 * One registry per data directory, in POSIX shared memory ("/cometmp-<hash of
 * st_dev:st_ino>", created by cometmp/supervisor.py through posix_ipc). It is
 * transient and rebuildable, so it is native-endian and not checksummed; the
 * fingerprint makes builds with another layout or pthread ABI refuse to share
 * it (FORMAT.md §8). Python (cometmp/registry/table.py) reads and writes the
 * slots with its mirror of the CM_REG_* offsets of native/format.h (compared
 * with cm_format_constants() by tests/unit/test_format_constants.py); this
 * file owns the initialisation, the check and the lock, because a robust
 * mutex cannot be driven from Python. Layout: native/format.h.
 *
 * Why a robust mutex and not a posix_ipc semaphore: a semaphore held by a
 * process that is SIGKILLed stays decremented forever (measured-here.md §2),
 * so every waiter would need a timeout and a guess about whether the holder
 * is dead -- and a wrong guess lets two processes in at once. The kernel
 * hands a robust mutex to the next locker with EOWNERDEAD exactly when the
 * holder died, and never while it lives.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/vfs.h>
#include "cometmp.h"
#include "internal.h"
#include "lock.h"

/* The layout (cm_registry, cm_reg_entry, cm_reg_master, CM_REG_*) is in
 * native/format.h with the other layouts. */

uint64_t cm_registry_fingerprint(void) {
    uint64_t f = CM_REG_VERSION;
    f = f * 1000003u + sizeof(pthread_mutex_t);
    f = f * 1000003u + offsetof(cm_registry, epoch);
    f = f * 1000003u + offsetof(cm_registry, masters);
    f = f * 1000003u + offsetof(cm_registry, entries);
    f = f * 1000003u + sizeof(cm_reg_entry);
    f = f * 1000003u + offsetof(cm_reg_entry, key);
    f = f * 1000003u + CM_REG_MAX_ENTRIES;
    f = f * 1000003u + sizeof(void *);
    return f;
}

uint64_t cm_registry_bytes(void) { return sizeof(cm_registry); }

/* Initialise a zero-filled mapping. The creator publishes magic last, so an
 * attacher that sees the magic sees an initialised lock. */
int cm_registry_init(void *base, uint64_t size, uint32_t process_count) {
    cm_registry *r = base;
    if (size < sizeof *r)
        return cm_fail(CM_E_ARG, 0, "registry mapping is %llu bytes, needs %zu",
                       (unsigned long long)size, sizeof *r);
    int rc = cm_lock_init(&r->lock.mutex, 0);   /* I20, I25 */
    if (rc < 0) return rc;
    r->version = CM_REG_VERSION;
    r->header_bytes = CM_REG_HEADER_BYTES;
    r->fingerprint = cm_registry_fingerprint();
    r->size = (uint32_t)sizeof *r;
    r->max_entries = CM_REG_MAX_ENTRIES;
    r->created_ns = cm_now_ns();
    r->process_count = process_count;
    r->epoch = 1;
    for (int i = 0; i < CM_REG_MAX_ENTRIES; i++) r->entries[i].key = -1;
    __atomic_store_n(&r->magic, CM_REG_MAGIC, __ATOMIC_RELEASE);
    return CM_OK;
}

/* CM_OK if the mapping is a registry this build can share; CM_E_FORMAT naming
 * both versions otherwise; CM_E_NOTFOUND if the creator has not published it. */
int cm_registry_check(const void *base, uint64_t size) {
    const cm_registry *r = base;
    if (size < 64 || __atomic_load_n(&r->magic, __ATOMIC_ACQUIRE) == 0)
        return cm_fail(CM_E_NOTFOUND, 0, "registry not initialised yet");
    if (r->magic != CM_REG_MAGIC)
        return cm_fail(CM_E_FORMAT, 0, "registry magic %08x is not %08x", r->magic, CM_REG_MAGIC);
    if (r->version != CM_REG_VERSION || r->fingerprint != cm_registry_fingerprint() ||
        size < sizeof(cm_registry))
        return cm_fail(CM_E_FORMAT, 0,
                       "registry has version %u fingerprint %llx; this build uses version %u "
                       "fingerprint %llx", r->version, (unsigned long long)r->fingerprint,
                       CM_REG_VERSION, (unsigned long long)cm_registry_fingerprint());
    /* I26: the counts Python and C index the table with */
    if (r->size != sizeof(cm_registry) || r->max_entries != CM_REG_MAX_ENTRIES ||
        r->header_bytes != CM_REG_HEADER_BYTES)
        return cm_fail(CM_E_FORMAT, 0, "registry header says size %u max_entries %u header_bytes "
                       "%u (offsets %d, %d, %d); this build uses %zu, %d, %d", r->size,
                       r->max_entries, r->header_bytes, CM_REG_OFF_SIZE, CM_REG_OFF_MAX_ENTRIES,
                       CM_REG_OFF_HEADER_BYTES, sizeof(cm_registry), CM_REG_MAX_ENTRIES,
                       CM_REG_HEADER_BYTES);
    if (r->process_count < 1 || r->process_count > CM_REG_MAX_ENTRIES)
        return cm_fail(CM_E_FORMAT, 0, "registry process_count %u at offset %d is outside 1..%d",
                       r->process_count, CM_REG_OFF_PROCESS_COUNT, CM_REG_MAX_ENTRIES);
    return CM_OK;
}

/* Take the membership lock of the object `name` (for messages and the rebuild
 * guard), waiting at most timeout_ms, through the one lock policy (I25,
 * native/lock.c). Returns CM_OK, or 1 when the previous holder died inside
 * the critical section or the lock was rebuilt (the lock is then held and
 * already marked consistent: the caller must repair the table, I20), or < 0:
 * CM_E_IO with ETIMEDOUT naming the live holder, CM_E_CORRUPT for a damaged
 * lock a live process still names. */
int cm_registry_lock(void *base, const char *name, int32_t timeout_ms) {
    cm_registry *r = base;
    pthread_mutex_t *m = &r->lock.mutex;
    int rc = cm_lock_try(m, 0);
    if (rc == CM_E_BUSY) {
        char path[300];
        snprintf(path, sizeof path, "/dev/shm%s", name && name[0] == '/' ? name : "/");
        cm_lock_site site = { .path = path, .guard = name ? path : NULL };
        rc = cm_lock_acquire(m, &site, timeout_ms);
    }
    if (rc == CM_LOCK_REPAIR) {
        cm_lock_consistent(m);
        return 1;
    }
    return rc;
}

void cm_registry_unlock(void *base) {
    cm_registry *r = base;
    cm_lock_release(&r->lock.mutex);
}

/* Bump the ownership epoch (caller holds the lock). Release order: slot
 * stores made before it are visible to whoever sees the new epoch (I22). */
uint64_t cm_registry_bump_epoch(void *base) {
    cm_registry *r = base;
    return __atomic_add_fetch(&r->epoch, 1, __ATOMIC_RELEASE);
}

/* statfs(2) f_type of path, or a negative CM_E_* (for the NFS/FUSE refusal). */
int64_t cm_fs_type(const char *path) {
    struct statfs sb;
    if (statfs(path, &sb) != 0)
        return cm_fail(errno == ENOENT ? CM_E_NOTFOUND : CM_E_IO, errno, "statfs %s", path);
    return (int64_t)(uint64_t)(uint32_t)sb.f_type;
}
