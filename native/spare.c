/* spare.c - the next segment and its index, made ahead of need, off the append path
 * (etcd's wal file pipeline).
 *
 * A rotation that creates its files itself (shard.c rotate_locked, the synchronous
 * path) opens, sizes, preallocates and maps two files on the appending thread: 180-420 us
 * at the median under sustained load here, and when one of those calls sleeps on the
 * filesystem the caller then waits for a core behind the other runnable threads -
 * 3-4 ms, the longest calls of a sustained run (docs/PERFORMANCE.md "The file pipeline").
 * So when a stream's active segment is half full, the appending process queues a spare
 * on its prefault thread (prealloc.c): two unnamed files (O_TMPFILE, fs.c) sized,
 * preallocated and mapped, the segment's first blocks faulted in. The rotation then only
 * stores the two headers into those mappings and names the files (linkat: never replaces
 * a file); the rest of the transaction is unchanged (ARCHITECTURE.md §4.1).
 *
 * A spare has no name until a rotation gives it one, so a crash at any point leaves
 * nothing to clean up: the kernel frees an unnamed file with its last fd. It is
 * headroom only: a spare that failed (full disk, no O_TMPFILE, no /proc) or is not
 * ready yet leaves the rotation to the synchronous path, which reports any error.
 *
 * Lifetime (prealloc.c's rule for requests): the shard owns its spare (s->spare, changed
 * under the stream lock); the thread builds it and then moves `state` from PENDING to
 * READY or FAILED. The shard lets go with cm_spare_drop(): PENDING -> ABANDONED, listed as
 * an orphan, and the thread, finding that, frees it; a spare that already finished is
 * freed by the shard. Whoever moves the state last frees, so the two never both do. A
 * forked child never builds one (its requests are dropped, prealloc.c); it frees its
 * copies of the orphans at the fork, and dropping a spare inherited from the parent frees
 * the child's copy of it (its own fds and mappings, whatever state the fork caught it in)
 * without waiting.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

/* set by the thread when this system cannot name an unnamed file (no O_TMPFILE on the
   filesystem, no /proc): this process stops asking for spares */
static int unsupported;

static void destroy(cm_spare *sp) {
    if (sp->map && sp->map != MAP_FAILED) munmap(sp->map, sp->cap);
    if (sp->imap && sp->imap != MAP_FAILED) munmap(sp->imap, sp->icap);
    if (sp->fd >= 0) close(sp->fd);
    if (sp->ifd >= 0) close(sp->ifd);
    if (sp->dirfd >= 0) close(sp->dirfd);
    free(sp);
}

static int build(cm_spare *sp) {
    if (CM_FAILPOINT_ERRNO("spare.create")) return -1;
    sp->fd = cm_fs_tmpfile(sp->dirfd);
    if (sp->fd < 0) {
        if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)
            __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return -1;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", sp->fd);
    if (access(path, F_OK) != 0) {      /* cm_fs_link_tmpfile could not name it */
        __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return -1;
    }
    /* the segment: its full size (a hole) and its first blocks (I9) */
    if (ftruncate(sp->fd, (off_t)sp->cap) != 0 ||
        posix_fallocate(sp->fd, 0, (off_t)sp->pre) != 0)
        return -1;
    sp->ifd = cm_fs_tmpfile(sp->dirfd);
    if (sp->ifd < 0 || posix_fallocate(sp->ifd, 0, (off_t)sp->icap) != 0)
        return -1;
    sp->map = mmap(NULL, sp->cap, PROT_READ | PROT_WRITE, MAP_SHARED, sp->fd, 0);
    if (sp->map == MAP_FAILED) return -1;
    sp->imap = mmap(NULL, sp->icap, PROT_READ | PROT_WRITE, MAP_SHARED, sp->ifd, 0);
    if (sp->imap == MAP_FAILED) return -1;
    madvise(sp->map, sp->cap, MADV_RANDOM);   /* no read-around (shard.c advise_appends) */
    if (sp->populate) {
        /* both headers' pages and the segment's allocated blocks: the rotation and the
           appends after it store into pages already there. Best effort. */
        cm_prealloc_populate_here(sp->map, sp->pre);
        cm_prealloc_populate_here(sp->imap, sp->icap < 4096 ? sp->icap : 4096);
        /* a durable rotation fdatasyncs both files: the zero pages populating dirtied
           go to disk here, so that sync writes only the header pages */
        if (sp->durable && (fdatasync(sp->fd) != 0 || fdatasync(sp->ifd) != 0))
            return -1;
    }
    return 0;
}

static void destroy_orphan(cm_orphan *o) { destroy((cm_spare *)o); }

/* Free the blocks of a spare this process is done with before it is destroyed under the
 * thread's lock: the last close of an unnamed file that still holds its blocks evicts the
 * inode and frees them through the journal (ms on ext4), and every populate request of
 * every stream waits for that lock. Never on a forked child's copy: its files are the
 * parent's. */
static void release_blocks(cm_spare *sp) {
    if (sp->fd >= 0) (void)ftruncate(sp->fd, 0);
    if (sp->ifd >= 0) (void)ftruncate(sp->ifd, 0);
}

/* Runs on the prefault thread. */
static void make(void *arg) {
    cm_spare *sp = arg;
    int to = __atomic_load_n(&sp->state, __ATOMIC_ACQUIRE) == CM_SPARE_ABANDONED ? -1 :
             build(sp) == 0 ? CM_SPARE_READY : CM_SPARE_FAILED;
    cm_prealloc_close(&sp->dirfd);   /* only O_TMPFILE needed it: a ready spare holds two fds */
    int expect = CM_SPARE_PENDING;
    if (to < 0 || !__atomic_compare_exchange_n(&sp->state, &expect, to, 0,
                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        release_blocks(sp);          /* the shard let go while it was being built */
        cm_prealloc_lock();
        cm_prealloc_orphan_free(&sp->orphan);
        cm_prealloc_unlock();
    }
}

/* Ask the thread for a spare; *slot (the shard's pointer) is set with the request queued,
 * under the thread's lock, so a fork sees both or neither. Leaves *slot NULL when this
 * process cannot make one (the rotation then creates its files itself). */
void cm_spare_request(cm_spare **slot, int dirfd, uint64_t cap, uint64_t icap, uint64_t pre,
                      int populate, int durable) {
    if (__atomic_load_n(&unsupported, __ATOMIC_RELAXED)) return;
    cm_spare *sp = calloc(1, sizeof *sp);
    if (!sp) return;
    sp->orphan.destroy = destroy_orphan;
    sp->state = CM_SPARE_PENDING;
    sp->fd = sp->ifd = -1;
    sp->cap = cap; sp->icap = icap; sp->pre = pre < cap ? pre : cap;
    sp->populate = populate;
    sp->durable = durable;
    sp->gen = cm_fork_generation();
    cm_prealloc_lock();
    sp->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);   /* the shard may close its own first */
    int queued = sp->dirfd >= 0 && (sp->ticket = cm_prealloc_call_locked(make, sp)) != 0;
    if (queued) *slot = sp;
    cm_prealloc_unlock();
    if (!queued) {
        if (sp->dirfd >= 0) close(sp->dirfd);
        free(sp);
    }
}

int cm_spare_state(const cm_spare *sp) {
    return __atomic_load_n(&sp->state, __ATOMIC_ACQUIRE);
}

/* The owner lets go of *slot. Returns the ticket to wait for (cm_prealloc_wait) before
 * the spare's files are surely closed, 0 when they already are. */
uint64_t cm_spare_drop(cm_spare **slot) {
    cm_spare *sp = *slot;
    if (!sp) return 0;
    if (sp->gen != cm_fork_generation()) {
        *slot = NULL;
        /* a forked child's copy: the parent's thread builds (and frees) the parent's,
           never this one, and the child's own thread has other tickets; what the copy
           holds (fds, mappings inherited mid-build or built) is the child's to close */
        destroy(sp);
        return 0;
    }
    uint64_t ticket = sp->ticket;   /* read first: once abandoned, sp is the thread's */
    if (cm_spare_state(sp) != CM_SPARE_PENDING)
        release_blocks(sp);          /* built or failed: the thread is done with it */
    int expect = CM_SPARE_PENDING;
    cm_prealloc_lock();
    *slot = NULL;
    int orphaned = __atomic_compare_exchange_n(&sp->state, &expect, CM_SPARE_ABANDONED, 0,
                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    if (orphaned)
        cm_prealloc_orphan_add(&sp->orphan);   /* the thread frees it */
    else
        destroy(sp);
    cm_prealloc_unlock();
    return orphaned ? ticket : 0;
}

void cm_spare_taken(cm_spare *sp) {
    /* the rotation took the files and mappings; free the rest */
    sp->fd = sp->ifd = -1;
    sp->map = sp->imap = NULL;
    destroy(sp);
}
