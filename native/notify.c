/* notify.c - readers sleeping until a writer in any process publishes.
 *
 * Who may call: any process that maps a stream's state page read-write (a
 * Consumer); the waiter updates `waiters` in the shared page. The writer side
 * is publish() in shard.c: it bumps `notify_seq` after moving `committed`
 * and issues FUTEX_WAKE only while `waiters` is non-zero, so appends with no
 * sleeping reader cost no syscall.
 *
 * I11 (no lost wake-up): a waiter increments `waiters` *before* its final
 * check of `notify_seq`, and FUTEX_WAIT itself re-checks the word in the
 * kernel; the writer bumps `notify_seq` *before* it reads `waiters`. Both
 * sides use full barriers (the lock-prefixed RMWs on x86; seq_cst here), so
 * either the writer sees the waiter or the waiter sees the new sequence.
 *
 * Waiting on several streams at once uses futex_waitv (Linux 5.16); on older
 * kernels cm_wait_many waits on the first stream in short slices and
 * re-checks the others, so a wake-up is late by at most one slice.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include "cometmp.h"
#include "internal.h"
#include "stamps.h"

#ifdef CM_WAKE_STAMPS
int64_t cm_wake_stamps[CM_ST_N];
#endif

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif
#define FALLBACK_SLICE_NS 2000000ll  /* 2 ms, old kernels only */

struct waitv { uint64_t val; uint64_t uaddr; uint32_t flags; uint32_t reserved; };

static int waitv_missing;            /* ENOSYS seen once: stop trying */

static inline cm_state *as_state(void *p) { return (cm_state *)p; }

static int changed(cm_state *st, uint32_t seen) {
    return __atomic_load_n(&st->notify_seq, __ATOMIC_SEQ_CST) != seen;
}

static struct timespec deadline_after(int64_t ns) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t t = (int64_t)now.tv_sec * 1000000000ll + now.tv_nsec + ns;
    struct timespec d = { (time_t)(t / 1000000000ll), (long)(t % 1000000000ll) };
    return d;
}

/* Sleep until st->notify_seq != seen, or timeout_ns passes (< 0: no limit).
 * Returns 1 when the sequence moved (or a signal interrupted the sleep: the
 * caller re-checks), 0 on timeout, a negative CM_E_* on error. */
int cm_wait(void *state, uint32_t seen, int64_t timeout_ns) {
    cm_state *st = as_state(state);
    if (!st) return cm_fail(CM_E_ARG, 0, "cm_wait: no state page");
    __atomic_add_fetch(&st->waiters, 1, __ATOMIC_SEQ_CST);   /* I11 */
    int rc = 1;
    if (!changed(st, seen)) {
        struct timespec rel, *tp = NULL;
        if (timeout_ns >= 0) {
            rel.tv_sec = (time_t)(timeout_ns / 1000000000ll);
            rel.tv_nsec = (long)(timeout_ns % 1000000000ll);
            tp = &rel;
        }
        /* shared (not FUTEX_PRIVATE): the word lives in a file mapping */
        long r = syscall(SYS_futex, &st->notify_seq, FUTEX_WAIT, seen, tp, NULL, 0);
        CM_STAMP(CM_ST_FUTEX_RET);
        if (r != 0) {
            if (errno == ETIMEDOUT) rc = changed(st, seen);
            else if (errno != EAGAIN && errno != EINTR)
                rc = cm_fail(CM_E_IO, errno, "futex wait");
        }
    }
    __atomic_sub_fetch(&st->waiters, 1, __ATOMIC_SEQ_CST);
    return rc;
}

/* cm_wait over n state pages: returns 1 as soon as any of them moves past
 * its seen[i], 0 on timeout, negative on error. */
int cm_wait_many(void *const *states, const uint32_t *seen, uint32_t n, int64_t timeout_ns) {
    if (n == 0) return cm_fail(CM_E_ARG, 0, "cm_wait_many: no state pages");
    if (n == 1) return cm_wait(states[0], seen[0], timeout_ns);
    if (n > CM_WAITV_MAX) n = CM_WAITV_MAX;   /* callers split larger sets; see consumer.py */
    for (uint32_t i = 0; i < n; i++)
        __atomic_add_fetch(&as_state(states[i])->waiters, 1, __ATOMIC_SEQ_CST);   /* I11 */
    int rc = 0;
    for (uint32_t i = 0; i < n; i++)
        if (changed(as_state(states[i]), seen[i])) { rc = 1; break; }
    if (rc == 0 && !__atomic_load_n(&waitv_missing, __ATOMIC_RELAXED)) {
        struct waitv w[CM_WAITV_MAX];
        for (uint32_t i = 0; i < n; i++) {
            w[i].val = seen[i];
            w[i].uaddr = (uint64_t)(uintptr_t)&as_state(states[i])->notify_seq;
            w[i].flags = FUTEX_32;
            w[i].reserved = 0;
        }
        struct timespec d, *dp = NULL;
        if (timeout_ns >= 0) { d = deadline_after(timeout_ns); dp = &d; }
        long r = syscall(SYS_futex_waitv, w, n, 0, dp, CLOCK_MONOTONIC);
        CM_STAMP(CM_ST_FUTEX_RET);
        if (r >= 0 || errno == EAGAIN || errno == EINTR) rc = 1;
        else if (errno == ETIMEDOUT) rc = 0;
        else if (errno == ENOSYS) __atomic_store_n(&waitv_missing, 1, __ATOMIC_RELAXED);
        else rc = cm_fail(CM_E_IO, errno, "futex_waitv");
        if (!__atomic_load_n(&waitv_missing, __ATOMIC_RELAXED)) goto done;
    }
    if (rc == 0 && __atomic_load_n(&waitv_missing, __ATOMIC_RELAXED)) {
        /* old kernel: sleep on the first page in slices, polling the rest */
        int64_t left = timeout_ns;
        for (;;) {
            int64_t slice = left < 0 || left > FALLBACK_SLICE_NS ? FALLBACK_SLICE_NS : left;
            struct timespec rel = { 0, (long)slice };
            cm_state *st0 = as_state(states[0]);
            if (!changed(st0, seen[0]))
                syscall(SYS_futex, &st0->notify_seq, FUTEX_WAIT, seen[0], &rel, NULL, 0);
            for (uint32_t i = 0; i < n && !rc; i++)
                if (changed(as_state(states[i]), seen[i])) rc = 1;
            if (rc) break;
            if (left >= 0) {
                left -= slice;
                if (left <= 0) break;
            }
        }
    }
done:
    for (uint32_t i = 0; i < n; i++)
        __atomic_sub_fetch(&as_state(states[i])->waiters, 1, __ATOMIC_SEQ_CST);
    return rc;
}

/* Wake the threads of this process asleep on `state` (a consumer closing while
 * another thread waits in cm_wait/cm_wait_many, ARCHITECTURE.md §11 L4). Other
 * processes' waiters wake too; they re-check their sequence and sleep again. */
int cm_wake(void *state) {
    cm_state *st = as_state(state);
    if (!st) return cm_fail(CM_E_ARG, 0, "cm_wake: no state page");
    syscall(SYS_futex, &st->notify_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return CM_OK;
}
