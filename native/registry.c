/* registry.c - the worker registry's shared-memory header and membership lock.
 *
 * One registry per data directory, in POSIX shared memory ("/cometmp-<hash of
 * st_dev:st_ino>", created by cometmp/supervisor.py through posix_ipc). It is
 * transient and rebuildable, so it is native-endian and not checksummed; the
 * fingerprint makes builds with another layout or pthread ABI refuse to share
 * it (FORMAT.md "Registry"). Python (cometmp/registry.py) reads and writes the
 * slots with the offsets exported by cm_registry_constants(); this file owns
 * the layout, the initialisation and the lock, because a robust mutex cannot
 * be driven from Python.
 *
 * Layout (native endian):
 *   header  magic(4) version(2) header_bytes(2) fingerprint(8) size(4)
 *           max_entries(4) created_ns(8) unlinked(4) process_count(4)
 *           epoch(8) owner_uid(4) owner_gid(4) = 56, pad to 64
 *   lock    robust process-shared pthread mutex, its own 64-byte line (I20)
 *   masters 8 x { pid(4) pad(4) start_ticks(8) } = 128
 *   entries max_entries x 64 bytes, see cm_reg_entry
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
#include <sys/vfs.h>
#include "cometmp.h"
#include "internal.h"

#define CM_REG_MAGIC        0x47524D43u /* "CMRG" as LE bytes */
#define CM_REG_VERSION      1
#define CM_REG_MASTERS      8
#define CM_REG_MAX_ENTRIES  256

typedef struct cm_reg_entry {   /* one worker slot (or waiting entry), 64 bytes */
    int32_t  pid;               /* 0   0 = nobody */
    uint32_t state;             /* 4   CM_SLOT_* */
    uint64_t start_ticks;       /* 8   /proc/<pid>/stat field 22: pid reuse guard (I21) */
    uint64_t epoch;             /* 16  registry epoch when this holder took it */
    int64_t  heartbeat_ns;      /* 24  CLOCK_MONOTONIC, written by the holder */
    int64_t  vacated_ns;        /* 32  CLOCK_MONOTONIC when it became VACANT */
    int64_t  key;               /* 40  server's own worker id (uWSGI worker_id), -1 none */
    int32_t  last_pid;          /* 48  previous holder, for status */
    uint32_t flags;             /* 52 */
    uint8_t  pad[8];            /* 56 */
} cm_reg_entry;

typedef struct cm_reg_master {
    int32_t  pid;
    uint32_t pad;
    uint64_t start_ticks;
} cm_reg_master;

typedef struct cm_registry {
    uint32_t magic;             /* 0 */
    uint16_t version;           /* 4 */
    uint16_t header_bytes;      /* 6 */
    uint64_t fingerprint;       /* 8 */
    uint32_t size;              /* 16 */
    uint32_t max_entries;       /* 20 */
    int64_t  created_ns;        /* 24 */
    uint32_t unlinked;          /* 32 set under the lock before shm_unlink */
    uint32_t process_count;     /* 36 configured worker count (processCount) */
    uint64_t epoch;             /* 40 bumped on every ownership change; watched by appenders */
    uint32_t owner_uid;         /* 48 */
    uint32_t owner_gid;         /* 52 */
    uint8_t  pad0[8];           /* 56 */
    union { pthread_mutex_t mutex; uint8_t pad[64]; } lock;  /* 64 */
    cm_reg_master masters[CM_REG_MASTERS];                   /* 128 */
    cm_reg_entry entries[CM_REG_MAX_ENTRIES];                /* 256 */
} cm_registry;

_Static_assert(sizeof(cm_reg_entry) == 64, "a slot is one cache line");
_Static_assert(offsetof(cm_registry, epoch) == 40, "epoch at 40");
_Static_assert(offsetof(cm_registry, lock) == 64, "lock at 64");
_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex fits its line");
_Static_assert(offsetof(cm_registry, masters) == 128, "masters at 128");
_Static_assert(offsetof(cm_registry, entries) == 256, "entries at 256");
_Static_assert(sizeof(cm_registry) == 256 + 64 * CM_REG_MAX_ENTRIES, "registry size");

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
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0 ||
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) != 0 ||
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) != 0 ||
        pthread_mutex_init(&r->lock.mutex, &a) != 0)
        return cm_fail(CM_E_IO, 0, "cannot initialise the registry's robust mutex");
    pthread_mutexattr_destroy(&a);
    r->version = CM_REG_VERSION;
    r->header_bytes = offsetof(cm_registry, entries);
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
    return CM_OK;
}

/* Take the membership lock, waiting at most timeout_ms. Returns CM_OK, or 1
 * when the previous holder died inside the critical section (the lock is then
 * held and already marked consistent: the caller must repair the table, I20),
 * or CM_E_IO with ETIMEDOUT. */
int cm_registry_lock(void *base, int32_t timeout_ms) {
    cm_registry *r = base;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    int rc = pthread_mutex_timedlock(&r->lock.mutex, &ts);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&r->lock.mutex);
        return 1;
    }
    if (rc != 0)
        return cm_fail(CM_E_IO, rc, "registry membership lock");
    return CM_OK;
}

void cm_registry_unlock(void *base) {
    cm_registry *r = base;
    pthread_mutex_unlock(&r->lock.mutex);
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

#define C(name) { #name, (uint64_t)(name) }
#define O(name, type, field) { name, offsetof(type, field) }
static const cm_constant reg_constants[] = {
    C(CM_REG_MAGIC), C(CM_REG_VERSION), C(CM_REG_MASTERS), C(CM_REG_MAX_ENTRIES),
    { "CM_REG_BYTES", sizeof(cm_registry) },
    { "CM_REG_ENTRY_BYTES", sizeof(cm_reg_entry) },
    { "CM_REG_MASTER_BYTES", sizeof(cm_reg_master) },
    O("CM_REG_OFF_MAGIC", cm_registry, magic),
    O("CM_REG_OFF_VERSION", cm_registry, version),
    O("CM_REG_OFF_FINGERPRINT", cm_registry, fingerprint),
    O("CM_REG_OFF_CREATED", cm_registry, created_ns),
    O("CM_REG_OFF_UNLINKED", cm_registry, unlinked),
    O("CM_REG_OFF_PROCESS_COUNT", cm_registry, process_count),
    O("CM_REG_OFF_EPOCH", cm_registry, epoch),
    O("CM_REG_OFF_OWNER_UID", cm_registry, owner_uid),
    O("CM_REG_OFF_OWNER_GID", cm_registry, owner_gid),
    O("CM_REG_OFF_LOCK", cm_registry, lock),
    O("CM_REG_OFF_MASTERS", cm_registry, masters),
    O("CM_REG_OFF_ENTRIES", cm_registry, entries),
    O("CM_REGE_OFF_PID", cm_reg_entry, pid),
    O("CM_REGE_OFF_STATE", cm_reg_entry, state),
    O("CM_REGE_OFF_START", cm_reg_entry, start_ticks),
    O("CM_REGE_OFF_EPOCH", cm_reg_entry, epoch),
    O("CM_REGE_OFF_HEARTBEAT", cm_reg_entry, heartbeat_ns),
    O("CM_REGE_OFF_VACATED", cm_reg_entry, vacated_ns),
    O("CM_REGE_OFF_KEY", cm_reg_entry, key),
    O("CM_REGE_OFF_LAST_PID", cm_reg_entry, last_pid),
    O("CM_REGE_OFF_FLAGS", cm_reg_entry, flags),
};

const cm_constant *cm_registry_constants(uint32_t *count) {
    *count = sizeof reg_constants / sizeof reg_constants[0];
    return reg_constants;
}
