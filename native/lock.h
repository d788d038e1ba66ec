/* lock.h - the one policy for every cross-process lock (I25, docs/ARCHITECTURE.md §2).
 *
 * Who may call: any thread. cometmp has three robust, process-shared pthread
 * mutexes living in shared mappings: the state page's writer lock (shard.c, I5),
 * the offsets file's lock (offsets.c, I12) and the worker registry's membership
 * lock (registry.c, I20). They are initialised, taken and rebuilt only here:
 *
 *   - every wait is bounded (timed lock in slices of CM_LOCK_SLICE_MS);
 *   - after each slice the owner named by the lock word is checked: a thread
 *     that does not exist, or whose process does not map this very file
 *     (dev:ino) writable, cannot hold the lock (a copy of a live directory, a
 *     restored image, a word from another boot), and neither can any owner of a
 *     word the caller knows to be from another boot (`foreign`);
 *   - such a lock, a mutex whose bytes no longer have the shape pthread_mutex_init
 *     gave it (random bytes make glibc abort or wait forever), or one left
 *     ENOTRECOVERABLE, is rebuilt under the site's exclusive flock when nobody
 *     live can hold it, and the caller repairs as after EOWNERDEAD
 *     (CM_LOCK_REPAIR);
 *   - a live owner that keeps the lock past the bound gives CM_E_IO/ETIMEDOUT
 *     naming the file and the owner's pid and tid; a damaged mutex a live owner
 *     holds gives CM_E_CORRUPT naming the file.
 *
 * glibc's mutex internals are read (__lock, __kind) only in lock.c.
 */
#ifndef CM_LOCK_H
#define CM_LOCK_H
#include <stdint.h>
#include <pthread.h>

#define CM_LOCK_REPAIR 1          /* acquired; the previous holder died or the lock was rebuilt */
#define CM_LOCK_SLICE_MS 50       /* a waiter checks the owner's liveness this often */
#define CM_LOCK_DEFAULT_MS 30000  /* the bound of the state page and offsets locks */

typedef struct cm_lock_site {
    const char *path;        /* the file named in messages (a shm name for the registry) */
    const char *guard;       /* flock(LOCK_EX) on this path serialises rebuilds; NULL: none */
    int guard_held;          /* the caller already holds that flock (writer open) */
    int recursive;           /* the offsets lock is PTHREAD_MUTEX_RECURSIVE */
    int foreign;             /* the word was last written in another boot (checked under the guard) */
} cm_lock_site;

/* a robust, process-shared mutex (recursive or not): CM_OK or CM_E_IO */
int  cm_lock_init(pthread_mutex_t *m, int recursive);
/* one attempt, the fast path: CM_OK, CM_LOCK_REPAIR or CM_E_BUSY (held, or
   damaged: cm_lock_acquire decides) */
int  cm_lock_try(pthread_mutex_t *m, int recursive);
/* the bounded wait above: CM_OK, CM_LOCK_REPAIR or < 0 (nothing held) */
int  cm_lock_acquire(pthread_mutex_t *m, const cm_lock_site *site, int32_t timeout_ms);
/* after CM_LOCK_REPAIR, once the caller's repair succeeded */
void cm_lock_consistent(pthread_mutex_t *m);
/* every lock taken above is released here (recursive ones are counted per thread:
   a copied word naming this very thread is stale unless the thread holds the lock) */
void cm_lock_release(pthread_mutex_t *m);
/* CM_LOCK_DEFAULT_MS, or $COMETMP_LOCK_TIMEOUT_MS (read once) */
int32_t cm_lock_timeout_ms(void);

#endif
