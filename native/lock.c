/* lock.c - the one policy for every cross-process lock (I25); the contract is in lock.h.
 *
 * Who may call: any thread of any process mapping the lock's file.
 *
 * Why a bounded wait plus an owner check, and not pthread_mutex_lock: a robust
 * mutex is handed over with EOWNERDEAD only when its owner dies while the kernel
 * knows it holds *this* futex word. A lock word copied with its file (cp -a of a
 * live directory, a snapshot, a restored image), written in another boot, or
 * damaged names an owner the kernel never heard of, and pthread_mutex_lock waits
 * for it forever; damaged bytes in the type field send glibc into its PI or PP
 * code, which aborts or blocks for good. So:
 *
 *   1. the mutex's type field (__kind) must be what pthread_mutex_init gave it
 *      before any pthread call touches it (shape_ok);
 *   2. the wait is a timed lock in slices; after each the owner in the word is
 *      checked (owner_live): it holds the lock only if that thread exists and its
 *      process maps this very file (dev:ino, from our own /proc/self/maps entry of
 *      the mutex) writable. A reader maps it read-only and never locks;
 *   3. a lock nobody live can hold -- or a damaged or unrecoverable one -- is
 *      rebuilt (rebuild) while holding the site's exclusive flock, which serialises
 *      rebuilders: under it the word is re-read and the owner re-checked, then the
 *      word is taken by CAS from the stale value to our tid (so nobody acquires or
 *      rebuilds meanwhile), the other bytes are rewritten from a freshly
 *      initialised template and the word is released marked owner-died, waiters
 *      woken;
 *   4. so whoever takes it next gets EOWNERDEAD and repairs (CM_LOCK_REPAIR): the
 *      lost owner may have died (or been copied) inside its critical section.
 *
 * Assumption (as I21's): every process sharing a data directory sees the others'
 * thread ids, i.e. they run in one pid namespace.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <linux/futex.h>
#include "cometmp.h"
#include "internal.h"
#include "lock.h"

#define TID_MASK 0x3fffffffu      /* FUTEX_TID_MASK: the owner's tid in the word */
#define OWNER_DIED 0x40000000u    /* FUTEX_OWNER_DIED: the next locker gets EOWNERDEAD */

/* the bytes pthread_mutex_init leaves, per kind (0 plain, 1 recursive) */
static pthread_mutex_t templ[2];
static pthread_once_t templ_once = PTHREAD_ONCE_INIT;
static int templ_ok;

static int make(pthread_mutex_t *m, int recursive) {
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0) return -1;
    int bad = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) != 0 ||
              pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) != 0 ||
              (recursive && pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE) != 0) ||
              pthread_mutex_init(m, &a) != 0;
    pthread_mutexattr_destroy(&a);
    return bad ? -1 : 0;
}

static void templ_init(void) { templ_ok = make(&templ[0], 0) == 0 && make(&templ[1], 1) == 0; }

/* Recursive locks (the offsets file's): which ones this thread holds, so that
 * a word naming our own tid that we do not hold (a copy made while this very
 * thread held the original) is seen as stale instead of as a recursion. */
#define HELD_MAX 8
static __thread struct { pthread_mutex_t *m; uint32_t depth; } held[HELD_MAX];
static __thread int nheld;        /* entries in use: the plain locks' release skips the table */
static __thread int tid_cache;

static int my_tid(void) {
    if (!tid_cache) tid_cache = (int)syscall(SYS_gettid);
    return tid_cache;
}

static int held_depth(pthread_mutex_t *m) {
    for (int i = 0; i < HELD_MAX; i++)
        if (held[i].m == m) return (int)held[i].depth;
    return 0;
}

static int held_push(pthread_mutex_t *m) {
    for (int i = 0; i < HELD_MAX; i++)
        if (held[i].m == m) { held[i].depth++; return 0; }
    for (int i = 0; i < HELD_MAX; i++)
        if (!held[i].m) { held[i].m = m; held[i].depth = 1; nheld++; return 0; }
    return -1;
}

static void held_pop(pthread_mutex_t *m) {
    for (int i = 0; i < HELD_MAX; i++)
        if (held[i].m == m && --held[i].depth == 0) { held[i].m = NULL; nheld--; }
}

int cm_lock_init(pthread_mutex_t *m, int recursive) {
    if (make(m, recursive) != 0)
        return cm_fail(CM_E_IO, 0, "cannot initialise a robust process-shared mutex");
    return CM_OK;
}

static uint32_t *word(pthread_mutex_t *m) {
#ifdef __GLIBC__
    return (uint32_t *)&m->__data.__lock;
#else
    return (uint32_t *)(void *)m;
#endif
}

/* 1: the type field is the one pthread_mutex_init wrote (I25) */
static int shape_ok(pthread_mutex_t *m, int recursive, int *kind) {
    pthread_once(&templ_once, templ_init);
#ifdef __GLIBC__
    *kind = __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED);
    return templ_ok && *kind == templ[recursive ? 1 : 0].__data.__kind;
#else
    *kind = 0;
    return 1;
#endif
}

static int64_t mono_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

/* Does the process of `tid` map the file dev:ino writable? 1 yes (or cannot
 * tell: no permission to read its maps), 0 no (or no such thread). With
 * tid 0 (maps_of_self) the file mapped at `addr` in this process is found. */
static int scan_maps(int tid, const void *addr, dev_t *dev, uint64_t *ino) {
    char p[64];
    if (tid) snprintf(p, sizeof p, "/proc/%d/maps", tid);
    else snprintf(p, sizeof p, "/proc/self/maps");
    FILE *f = fopen(p, "re");
    if (!f) return tid && errno != ENOENT && errno != ESRCH;
    char *line = NULL;
    size_t cap = 0;
    int found = 0;
    while (!found && getline(&line, &cap, f) > 0) {
        unsigned long lo, hi, off;
        unsigned maj, min;
        unsigned long long in;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %lx %x:%x %llu", &lo, &hi, perms, &off, &maj, &min, &in) != 7)
            continue;
        if (!tid) {
            if ((uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
                *dev = makedev(maj, min); *ino = in; found = 1;
            }
        } else if (perms[1] == 'w' && perms[3] == 's' && makedev(maj, min) == *dev && in == *ino) {
            found = 1;
        }
    }
    free(line);
    fclose(f);
    return found;
}

static int tgid_of(int tid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/status", tid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *t = strstr(buf, "\nTgid:");
    return t ? atoi(t + 6) : 0;
}

/* Can the thread named by the word hold this lock? (step 2) */
static int owner_live(pthread_mutex_t *m, const cm_lock_site *site, uint32_t seen) {
    int tid = (int)(seen & TID_MASK);
    if (tid == 0 || site->foreign) return 0;
    if (tid == my_tid())   /* ours only if this thread really took it (a plain lock: never twice) */
        return site->recursive && held_depth(m) > 0;
    dev_t dev;
    uint64_t ino;
    if (!scan_maps(0, m, &dev, &ino)) return 1;   /* cannot tell: assume it may */
    return scan_maps(tid, NULL, &dev, &ino);
}

/* the exclusive flock that serialises rebuilders, across processes and threads */
static pthread_mutex_t rebuild_mu = PTHREAD_MUTEX_INITIALIZER;

/* a child forked while another thread rebuilt must not inherit rebuild_mu held,
   nor the forking thread's tid and held locks */
static void rebuild_mu_reset(void) {
    pthread_mutex_init(&rebuild_mu, NULL);
    tid_cache = 0;                    /* the forking thread has a new tid here */
    memset(held, 0, sizeof held);     /* and holds none of its parent's locks */
    nheld = 0;
}

__attribute__((constructor))
static void lock_init_atfork(void) { pthread_atfork(NULL, NULL, rebuild_mu_reset); }

static int guard_take(const cm_lock_site *site) {
    if (pthread_mutex_trylock(&rebuild_mu) != 0) return -1;
    if (site->guard_held || !site->guard) return -2;
    int fd = open(site->guard, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&rebuild_mu);
    return -1;
}

static void guard_drop(int fd) {
    if (fd >= 0) close(fd);   /* releases the flock */
    pthread_mutex_unlock(&rebuild_mu);
}

/* Step 3. Caller holds the guard. 1 when rebuilt, 0 when the word moved. */
static int rebuild(pthread_mutex_t *m, int recursive, uint32_t seen) {
    uint32_t *w = word(m);
    uint32_t me = (uint32_t)my_tid();
    if (!__atomic_compare_exchange_n(w, &seen, me, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return 0;
    /* I25: the word names us now, so nobody acquires or rebuilds it meanwhile;
       rewrite every other byte as pthread_mutex_init would, then free the word
       marked owner-died: whoever takes it next -- this thread or a waiter that
       wins the race -- gets EOWNERDEAD and repairs what the lost holder left */
    memcpy((char *)m + sizeof *w, (const char *)&templ[recursive ? 1 : 0] + sizeof *w,
           sizeof *m - sizeof *w);
    __atomic_store_n(w, OWNER_DIED, __ATOMIC_RELEASE);
    syscall(SYS_futex, w, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    return 1;
}

/* glibc's recursive trylock takes a word naming our own tid as a recursion:
   allow that only when this thread holds the lock */
static int false_recursion(pthread_mutex_t *m) {
    uint32_t w = __atomic_load_n(word(m), __ATOMIC_RELAXED);
    return (int)(w & TID_MASK) == my_tid() && held_depth(m) == 0;
}

static int took(pthread_mutex_t *m, int recursive, int rc) {
    if (recursive && held_push(m) != 0) {
        pthread_mutex_unlock(m);
        return cm_fail(CM_E_IO, EDEADLK, "more than %d recursive locks held by one thread",
                       HELD_MAX);
    }
    return rc;
}

int cm_lock_try(pthread_mutex_t *m, int recursive) {
    int kind;
    if (!shape_ok(m, recursive, &kind)) return CM_E_BUSY;   /* cm_lock_acquire decides */
    if (recursive && false_recursion(m)) return CM_E_BUSY;
    int rc = pthread_mutex_trylock(m);
    if (rc == 0) return took(m, recursive, CM_OK);
    if (rc == EOWNERDEAD) return took(m, recursive, CM_LOCK_REPAIR);
    return CM_E_BUSY;
}

int cm_lock_acquire(pthread_mutex_t *m, const cm_lock_site *site, int32_t timeout_ms) {
    int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        int kind;
        int shape = shape_ok(m, site->recursive, &kind);
        int rc = EBUSY;
        if (shape && !(site->recursive && false_recursion(m))) {
            rc = pthread_mutex_trylock(m);
            if (rc == EBUSY) {
                int64_t left = deadline - mono_ms();
                int64_t slice = left < CM_LOCK_SLICE_MS ? (left > 1 ? left : 1) : CM_LOCK_SLICE_MS;
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += slice / 1000;
                ts.tv_nsec += (long)(slice % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
                rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
            }
            if (rc == 0) return took(m, site->recursive, CM_OK);
            if (rc == EOWNERDEAD) return took(m, site->recursive, CM_LOCK_REPAIR);
        }
        uint32_t seen = __atomic_load_n(word(m), __ATOMIC_ACQUIRE);
        int unusable = !shape || rc == ENOTRECOVERABLE;
        if (!unusable && seen == 0) continue;          /* released meanwhile: try again */
        int live = owner_live(m, site, seen);
        if (!live) {
            int g = guard_take(site);
            if (g != -1) {
                /* re-read and re-check under the guard: no other rebuild can
                   have freed the word for a new owner in between */
                int done = 0;
                uint32_t now = __atomic_load_n(word(m), __ATOMIC_ACQUIRE);
                if (now == seen && !owner_live(m, site, now))
                    done = rebuild(m, site->recursive, now);
                guard_drop(g);
                if (done) continue;   /* the next attempt gets EOWNERDEAD (or a waiter does) */
            }
        }
        if (mono_ms() >= deadline) {
            int tid = (int)(seen & TID_MASK);
            if (!live)
                return cm_fail(CM_E_IO, ETIMEDOUT, "lock of %s cannot be held by anyone (word "
                               "%#x) but was not rebuilt within %d ms: %s stayed locked",
                               site->path, seen, (int)timeout_ms,
                               site->guard ? site->guard : "the rebuild");
            if (unusable)
                return cm_fail(CM_E_CORRUPT, 0, "lock of %s is damaged (type %#x, word %#x) and "
                               "names the live pid %d (tid %d): not rebuilt", site->path, kind,
                               seen, tgid_of(tid), tid);
            return cm_fail(CM_E_IO, ETIMEDOUT, "lock of %s held by pid %d (tid %d) for more than "
                           "%d ms", site->path, tgid_of(tid), tid, (int)timeout_ms);
        }
        if (!shape || rc != ETIMEDOUT) sleep_ms(CM_LOCK_SLICE_MS / 5);   /* no timed wait ran */
    }
}

void cm_lock_consistent(pthread_mutex_t *m) { pthread_mutex_consistent(m); }

void cm_lock_release(pthread_mutex_t *m) {
    if (nheld) held_pop(m);
    pthread_mutex_unlock(m);
}

static int32_t timeout_ms = CM_LOCK_DEFAULT_MS;
static pthread_once_t timeout_once = PTHREAD_ONCE_INIT;

static void timeout_init(void) {
    const char *e = getenv("COMETMP_LOCK_TIMEOUT_MS");
    if (e && atoi(e) > 0) timeout_ms = atoi(e);
}

int32_t cm_lock_timeout_ms(void) {
    pthread_once(&timeout_once, timeout_init);
    return timeout_ms;
}
