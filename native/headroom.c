/* headroom.c - a stream's headroom extended on the prefault thread, off the append path.
 *
 * An appender keeps disk blocks reserved ahead of its tail (ensure_alloc in shard.c, I9)
 * and extends the reservation when half of it is used. That extension is an fallocate
 * of up to four preallocate_bytes chunks, and on ext4 it can sleep: mballoc reads a block
 * bitmap from disk (ext4_wait_block_bitmap under ext4_mb_new_blocks), or waits for the
 * inode's lock behind writeback. A sustained run caught an appender there, in a call of
 * several ms (docs/PERFORMANCE.md "The headroom on the prefault thread"). So the appender
 * now hands the extension to its process's prefault thread (prealloc.c) while the bytes
 * it needs are still inside the reservation, and goes on appending into those.
 *
 * What the thread does for one request: fallocate(2) [from, to) of the segment through
 * its own descriptor (a dup: the shard closes its own at a rotation), then, when the
 * stream prefaults, MADV_POPULATE_WRITE of the same range. The appender reads the result
 * at a later ensure_alloc and only then raises the state page's alloc_end (I9: alloc_end
 * only ever covers blocks an fallocate returned for). If the tail reaches alloc_end first,
 * the appender allocates the bytes it needs now itself (fallocate of the same blocks
 * twice is harmless; the kernel serialises the two on the inode). fallocate(2) and not
 * posix_fallocate: glibc's emulation, on a filesystem without fallocate, writes zeros
 * into blocks it reads as zero, which could overwrite a record the appender stores
 * meanwhile; fallocate(2) fails there instead (EOPNOTSUPP) and the shard stops asking.
 *
 * A failure on the thread (a full disk, EIO) is headroom lost, never an error: the next
 * extension is the appender's own, which reports what it must (DiskFull when the bytes
 * needed now cannot be had) and gives back the spare's blocks on ENOSPC first.
 *
 * Lifetime: the rule of prealloc.c for requests, as a spare's. The shard owns its request
 * (s->headroom, under the stream lock); the thread moves `state` from PENDING to DONE, or
 * frees a request the shard abandoned (cm_headroom_drop at a rotation or close: PENDING ->
 * ABANDONED, listed as an orphan). The unmap of the segment's mapping is queued behind the
 * request (FIFO), so the populate never touches a mapping that is gone. A forked child
 * never runs its copies: it frees the orphans' at the fork, and its shard's drop frees an
 * owned one without waiting.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

static void destroy(cm_headroom *h) {
    if (h->fd >= 0) close(h->fd);   /* only a forked child's copy still holds one */
    free(h);
}

static void destroy_orphan(cm_orphan *o) { destroy((cm_headroom *)o); }

/* The thread found it abandoned: the shard let go of it (cm_headroom_drop). */
static void bury(cm_headroom *h) {
    cm_prealloc_lock();
    cm_prealloc_orphan_free(&h->orphan);
    cm_prealloc_unlock();
}

/* Runs on the prefault thread. */
static void extend(void *arg) {
    cm_headroom *h = arg;
    if (__atomic_load_n(&h->state, __ATOMIC_ACQUIRE) == CM_HEADROOM_ABANDONED) {
        bury(h);
        return;
    }
    int e = CM_FAILPOINT("headroom.alloc");
    if (!e && fallocate(h->fd, 0, (off_t)h->from, (off_t)(h->to - h->from)) != 0) e = errno;
    cm_prealloc_close(&h->fd);
    cm_prealloc_count_extension(e != 0);
    uint8_t *map = h->map;      /* h is the shard's once DONE: keep what the populate needs */
    size_t len = (size_t)(h->to - h->from);
    int populate = h->populate;
    h->error = e;
    int expect = CM_HEADROOM_PENDING;
    if (!__atomic_compare_exchange_n(&h->state, &expect, CM_HEADROOM_DONE, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        bury(h);                /* the shard let go while it ran: its mapping is going */
        return;
    }
    /* the mapping's munmap is queued behind this call, so it is still mapped here */
    if (!e && populate)
        cm_prealloc_count_populate(cm_prealloc_populate_here(map, len), len);
}

/* Ask the thread to extend [from, to) of the segment; *slot is the shard's pointer to the
 * request, set with the request queued (under the thread's lock, so a fork sees both or
 * neither). Returns 0 when nothing was queued (no thread, a full queue, no descriptor):
 * the caller allocates itself. */
int cm_headroom_request(cm_headroom **slot, int seg_fd, uint8_t *seg_map, uint64_t from,
                        uint64_t to, int populate) {
    cm_headroom *h = calloc(1, sizeof *h);
    if (!h) return 0;
    h->orphan.destroy = destroy_orphan;
    h->state = CM_HEADROOM_PENDING;
    h->from = from;
    h->to = to;
    h->map = seg_map + from;
    h->populate = populate;
    h->gen = cm_fork_generation();
    cm_prealloc_lock();
    h->fd = fcntl(seg_fd, F_DUPFD_CLOEXEC, 0);
    int queued = h->fd >= 0 && cm_prealloc_call_locked(extend, h) != 0;
    if (queued) *slot = h;
    cm_prealloc_unlock();
    if (!queued) {
        if (h->fd >= 0) close(h->fd);
        free(h);
    }
    return queued;
}

int cm_headroom_state(const cm_headroom *h) {
    return __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
}

/* The shard lets go of *slot (a rotation, a close, or the result taken). */
void cm_headroom_drop(cm_headroom **slot) {
    cm_headroom *h = *slot;
    if (!h) return;
    if (h->gen != cm_fork_generation()) {   /* a forked child's copy: never run here */
        *slot = NULL;
        destroy(h);
        return;
    }
    cm_prealloc_lock();
    *slot = NULL;
    int expect = CM_HEADROOM_PENDING;
    if (__atomic_compare_exchange_n(&h->state, &expect, CM_HEADROOM_ABANDONED, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        cm_prealloc_orphan_add(&h->orphan);   /* the thread frees it */
    else
        destroy(h);                           /* done: the thread no longer reads it */
    cm_prealloc_unlock();
}
