/* handle.c - lifetime of the core's native objects (ARCHITECTURE.md §11, L1-L4).
 *
 * Who may call: the modules that own a handle (shard.c, offsets.c). Any thread.
 *
 * A cm_life sits in every object a binding can close while another thread is
 * inside a call on it. `word` is 2 * (calls in flight) | closed:
 *
 *   cm_enter()  word += 2; if the closed bit is set: undo, CM_E_CLOSED      (L1)
 *   cm_leave()  word -= 2; the last call out of a closed handle wakes closer
 *   cm_life_close()  set closed; wait (futex) until word == 1, i.e. no call
 *                    is in flight; the caller then releases fds and mappings (L2)
 *   refs        the struct's memory: one per owner (the Python object that
 *               opened it, each Appender slot); freed at the last unref (L3)
 *
 * Enter is one lock-prefixed add on a line the call touches anyway; both sides
 * use sequentially consistent RMWs, so either the entering call sees `closed`
 * or the closer sees the call (Dekker). The wake after the last leave is a
 * syscall on the word's address only, never a load from the object, so a
 * closer that frees the object right after is safe.
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

void cm_life_init(cm_life *l) {
    l->word = 0;
    l->refs = 1;
    l->gen = cm_fork_generation();
}

void cm_life_wake(cm_life *l) {
    syscall(SYS_futex, &l->word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

int cm_life_close(cm_life *l) {
    uint32_t v = __atomic_fetch_or(&l->word, 1u, __ATOMIC_SEQ_CST);
    if (v & 1u) return 0;                       /* closed before: nothing to release */
    /* I10: in a forked child the calls counted in flight were the parent's
       threads, which do not exist here; there is nothing to wait for */
    if (l->gen != cm_fork_generation()) return 1;
    struct timespec slice = { 0, 10 * 1000 * 1000 };  /* re-check: a missed wake costs 10 ms */
    while ((v = __atomic_load_n(&l->word, __ATOMIC_SEQ_CST)) != 1u)
        syscall(SYS_futex, &l->word, FUTEX_WAIT_PRIVATE, v, &slice, NULL, 0);
    return 1;
}

void cm_life_ref(cm_life *l) { __atomic_add_fetch(&l->refs, 1u, __ATOMIC_RELAXED); }

int cm_life_unref(cm_life *l) { return __atomic_sub_fetch(&l->refs, 1u, __ATOMIC_ACQ_REL) == 0; }

int cm_closed_error(const char *what) { return cm_fail(CM_E_CLOSED, 0, "%s is closed", what); }
