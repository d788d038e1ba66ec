/* prealloc.c - prefaults the active segment ahead of each stream's tail, off the
 * append path.
 *
 * The first store into a page of a mapped file costs a page fault, in which the
 * kernel allocates and zero-fills a page-cache page: ~90 ns per 100-byte append
 * on this machine's VM (docs/PERFORMANCE.md). The appender therefore reserves
 * disk blocks one chunk ahead of its tail (ensure_alloc in shard.c, under the
 * shard lock) and queues the new range here; this process-wide background
 * thread runs MADV_POPULATE_WRITE on it, so the appender later stores into pages
 * that are already in the page cache and in its page tables. Purely an
 * optimisation: if the thread falls behind, the appender's own faults do the
 * same work.
 *
 * Lifetime rule: the thread touches the appender's mapping, so a segment
 * mapping is never unmapped directly while the thread runs (the writer hands it its
 * index mappings too, to keep their munmaps off the appending thread); cm_prealloc_unmap()
 * drops the populate requests still queued for it (populating a mapping that is
 * going away is wasted work, and would keep dirtying its file after a close) and
 * queues the munmap behind the one in progress (FIFO order). It returns a ticket;
 * cm_prealloc_wait(ticket) returns once that munmap ran, so a closed stream's
 * files are not touched after cm_shard_close() returns.
 *
 * One thread per process and fork generation (I10): a forked child starts its
 * own on first use; requests inherited from the parent are dropped, except
 * unmaps, which the child performs on its own copy of the mappings.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define QUEUE 256
/* Populate in steps so an unmap never waits long. MADV_POPULATE_WRITE holds the
   process's mmap lock for reading for a whole step, and an mmap/munmap on another thread
   (a rotation maps the new segment and index on the appending thread) waits for the
   step in flight. Smaller steps cut that wait (32 KiB: a concurrent mmap's p99 about
   half of 256 KiB's) but cost the populate more CPU per page (20-55 % at 32 KiB), on
   every page of every stream, so the step stays at 256 KiB (benchmarks/populate_steps.py,
   docs/PERFORMANCE.md "Populate steps and the rotation's mmap lock"). */
#define STEP (256u * 1024u)

enum { REQ_POPULATE = 1, REQ_UNMAP = 2, REQ_CALL = 3 };
struct req { int kind; uint8_t *addr; size_t len; void (*fn)(void *); void *arg; };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t space = PTHREAD_COND_INITIALIZER;
static struct req queue[QUEUE];
static int qhead, qlen;
static uint64_t tickets_queued, tickets_done; /* tickets of REQ_UNMAP and REQ_CALL, FIFO */
static pthread_cond_t unmapped = PTHREAD_COND_INITIALIZER;
static cm_orphan *orphans;  /* requests whose shard let go before the thread freed them */
static uint64_t thread_gen; /* fork generation whose thread runs; 0 = none */
/* cm_prefault_stats(): this process's counts since its thread started (under mu) */
static cm_prefault_stats_t stats;
static uint64_t thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* Populate [addr, addr+len) on the calling thread, STEP bytes at a time; the bytes
 * done (less than len when a step failed). Only the prefault thread calls it.
 *
 * After every step the thread yields its CPU. An appender that wakes (a worker's request
 * arriving, its pacing timer) on the CPU this thread runs on otherwise waits for the
 * scheduler's next tick: the woken task does not preempt a thread inside its slice, and
 * this kernel keeps it on its CPU even with the other one idle (sched_vcpu_pack). A
 * 4 MiB spare or extension populated in one run held an appender runnable for 2-5 ms,
 * the sustained run's longest calls (docs/PERFORMANCE.md "The prefault thread yields
 * between steps"). sched_yield between steps bounds that wait to one step (~0.15 ms of
 * fresh pages); with nothing else runnable it returns at once. Not a lower priority:
 * that was measured and rejected (priority inversion on the mmap lock: PERFORMANCE.md
 * "The file pipeline"). */
size_t cm_prealloc_populate_here(uint8_t *addr, size_t len) {
    size_t done = 0;
    for (size_t off = 0; off < len; off += STEP) {
        size_t n = len - off < STEP ? len - off : STEP;
        if (CM_FAILPOINT_ERRNO("prefault.populate") ||
            madvise(addr + off, n, MADV_POPULATE_WRITE) != 0)
            break;
        done += n;
        if (off + n < len) sched_yield();
    }
    return done;
}

/* The munmap in progress: the part still mapped. A sealed segment's mapping is unmapped
 * UNMAP_STEP at a time, yielding between steps like a populate: one munmap of a
 * populated 64 MiB mapping is ~2.6 ms of CPU in one call here
 * (benchmarks/release_costs.py), which an appender woken on this CPU would wait out.
 * Only the thread writes `unmapping`: under mu when it takes the request from the queue,
 * under unmap_mu for each step (a munmap and the update). It never holds both, and an
 * appender never takes unmap_mu, so nobody queueing a request waits for a munmap
 * (a step is ~0.1 ms, plus the wait for the mmap lock). A fork holds both (unmap_mu
 * first), so its child sees what is still mapped and unmaps exactly that
 * (after_fork_child); the steps already done are below `addr`, so an mmap of another
 * thread into their hole is never in that range. */
#define UNMAP_STEP (1u << 20)
static pthread_mutex_t unmap_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { uint8_t *addr; size_t len; } unmapping;

/* A step that cannot split the mapping (ENOMEM at vm.max_map_count: a partial munmap
 * splits the VMA) unmaps all that is left in one call, which needs no split; so does a
 * failure injected at the point `prefault.unmap`, evaluated between steps without a
 * lock (a PAUSE there lets a fork in). Neither lock is held on entry or return. */
static void unmap_in_steps(void) {
    int whole = 0;
    for (;;) {
        pthread_mutex_lock(&unmap_mu);
        size_t n = unmapping.len < UNMAP_STEP ? unmapping.len : UNMAP_STEP;
        if (whole || n == unmapping.len || munmap(unmapping.addr, n) != 0) {
            munmap(unmapping.addr, unmapping.len);
            n = unmapping.len;
        }
        unmapping.addr += n;
        unmapping.len -= n;
        int left = unmapping.len != 0;
        pthread_mutex_unlock(&unmap_mu);
        if (!left) return;
        whole = CM_FAILPOINT("prefault.unmap") != 0;
        sched_yield();
    }
}

static void *warm_main(void *arg) {
    uint64_t gen = (uint64_t)(uintptr_t)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (qlen == 0 && thread_gen == gen)
            pthread_cond_wait(&work, &mu);
        if (thread_gen != gen) { pthread_mutex_unlock(&mu); return NULL; }
        struct req r = queue[qhead];
        qhead = (qhead + 1) % QUEUE;
        qlen--;
        pthread_cond_signal(&space);
        if (r.kind == REQ_UNMAP) {     /* out of the queue and into `unmapping` at once */
            unmapping.addr = r.addr;
            unmapping.len = r.len;
        }
        pthread_mutex_unlock(&mu);
        if (r.kind == REQ_UNMAP) {
            unmap_in_steps();
            pthread_mutex_lock(&mu);
            tickets_done++;
            pthread_cond_broadcast(&unmapped);
            pthread_mutex_unlock(&mu);
        } else if (r.kind == REQ_CALL) {
            r.fn(r.arg);
            pthread_mutex_lock(&mu);
            tickets_done++;
            pthread_cond_broadcast(&unmapped);
            pthread_mutex_unlock(&mu);
        } else {
            /* Every request is populated: a policy that left pages to the appender
               when no core was idle (reading /proc/loadavg) measured worse at two
               processes (demand faults cost the appender more CPU than this bulk
               populate saves; docs/PERFORMANCE.md "Prefault policy") and was removed. */
            /* the appender faults what a failed step left itself */
            cm_prealloc_count_populate(cm_prealloc_populate_here(r.addr, r.len), r.len);
        }
    }
}

/* The thread's counts (cm_prefault_stats): a populate of `len` bytes of which `done`
 * were populated, and an extension of a stream's headroom (headroom.c). */
void cm_prealloc_count_populate(size_t done, size_t len) {
    pthread_mutex_lock(&mu);
    if (thread_gen == cm_fork_generation()) {
        stats.requests++;
        stats.bytes_populated += done;
        stats.failures += (uint64_t)(done < len);
        stats.thread_cpu_ns = thread_cpu_ns();
    }
    pthread_mutex_unlock(&mu);
}

void cm_prealloc_count_extension(int failed) {
    pthread_mutex_lock(&mu);
    if (thread_gen == cm_fork_generation()) {
        stats.extensions++;
        stats.extension_failures += (uint64_t)(failed != 0);
        stats.thread_cpu_ns = thread_cpu_ns();
    }
    pthread_mutex_unlock(&mu);
}

/* Close *fd and set it to -1 as one step for a fork: the fork handlers hold mu, so a
 * forked child's copy of a request (spare.c, headroom.c) never names a descriptor the
 * parent had closed (the child would close whatever it opened under that number). */
void cm_prealloc_close(int *fd) {
    pthread_mutex_lock(&mu);
    if (*fd >= 0) close(*fd);
    *fd = -1;
    pthread_mutex_unlock(&mu);
}

/* mu and unmap_mu are held across fork(), so a child sees the queue, the requests'
 * descriptors and the munmap in progress as they were between two of the thread's
 * steps, never half-changed */
static void before_fork(void) {
    pthread_mutex_lock(&unmap_mu);    /* the order: unmap_mu, then mu (the thread never holds both) */
    pthread_mutex_lock(&mu);
}
static void after_fork_parent(void) {
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&unmap_mu);
}

static void after_fork_child(void) {
    if (unmapping.len) munmap(unmapping.addr, unmapping.len);   /* the parent's, half done */
    unmapping.len = 0;
    for (int i = 0; i < qlen; i++) {
        struct req *r = &queue[(qhead + i) % QUEUE];
        if (r->kind == REQ_UNMAP) munmap(r->addr, r->len);
    }
    /* the child's copies of abandoned requests: no shard points at one (their slots were
       cleared under mu) and this child's thread never runs them, so they are the child's
       to close; an owned one is freed by its shard's drop (its fork generation differs) */
    while (orphans) {
        cm_orphan *o = orphans;
        orphans = o->next;
        o->destroy(o);
    }
    pthread_mutex_init(&mu, NULL);
    pthread_mutex_init(&unmap_mu, NULL);
    pthread_cond_init(&work, NULL);
    pthread_cond_init(&space, NULL);
    pthread_cond_init(&unmapped, NULL);
    qhead = qlen = 0;
    tickets_queued = tickets_done = 0;
    thread_gen = 0;
    memset(&stats, 0, sizeof stats);
}

__attribute__((constructor))
static void prealloc_init(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

/* Caller holds mu. Starts this generation's thread; 0 if it cannot run. */
static int ensure_thread(void) {
    uint64_t gen = cm_fork_generation();
    if (thread_gen == gen) return 1;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    if (pthread_create(&t, &a, warm_main, (void *)(uintptr_t)gen) == 0) {
        thread_gen = gen;
        memset(&stats, 0, sizeof stats);
    }
    pthread_attr_destroy(&a);
    return thread_gen == gen;
}

/* Queue a prefault of [addr, addr+len) of a writable shared mapping. Best effort. */
void cm_prealloc_populate(uint8_t *addr, size_t len) {
    if (!len) return;
    pthread_mutex_lock(&mu);
    if (ensure_thread() && qlen < QUEUE) {
        queue[(qhead + qlen) % QUEUE] = (struct req){REQ_POPULATE, addr, len, NULL, NULL};
        qlen++;
        pthread_cond_signal(&work);
    }
    pthread_mutex_unlock(&mu);
}

/* Run fn(arg) on the thread, after the requests queued before it. Returns a ticket
 * for cm_prealloc_wait() (returns once fn has returned), or 0 if nothing was queued
 * (no thread, or the queue is full): the caller does without. */
uint64_t cm_prealloc_call(void (*fn)(void *), void *arg) {
    pthread_mutex_lock(&mu);
    uint64_t ticket = cm_prealloc_call_locked(fn, arg);
    pthread_mutex_unlock(&mu);
    return ticket;
}

/* The same, for a caller that holds the lock (cm_prealloc_lock): a request and the shard's
 * pointer to it then appear together for a fork (spare.c, headroom.c). */
uint64_t cm_prealloc_call_locked(void (*fn)(void *), void *arg) {
    if (!ensure_thread() || qlen >= QUEUE) return 0;
    queue[(qhead + qlen) % QUEUE] = (struct req){REQ_CALL, NULL, 0, fn, arg};
    qlen++;
    pthread_cond_signal(&work);
    return ++tickets_queued;
}

/* The lock of the queue, held across fork(): what a request's owner changes under it (the
 * shard's pointer, the request's descriptors, the orphan list) a child sees whole. */
void cm_prealloc_lock(void) { pthread_mutex_lock(&mu); }
void cm_prealloc_unlock(void) { pthread_mutex_unlock(&mu); }

/* Lifetime rule for requests a shard lets go of (spare.c, headroom.c): under the lock the
 * owner clears its pointer and, if the thread has not finished the request, marks it
 * abandoned and lists it here; the thread, finding it abandoned, frees it and takes it off
 * under the lock. So at a fork every request is either a shard's or listed, never both. */
void cm_prealloc_orphan_add(cm_orphan *o) {
    o->next = orphans;
    orphans = o;
}

void cm_prealloc_orphan_free(cm_orphan *o) {
    for (cm_orphan **p = &orphans; *p; p = &(*p)->next)
        if (*p == o) {
            *p = o->next;
            break;
        }
    o->destroy(o);
}

/* Caller holds mu. Removes the queued populate requests inside [addr, addr+len). */
static void drop_populates(const uint8_t *addr, size_t len) {
    int kept = 0;
    for (int i = 0; i < qlen; i++) {
        struct req r = queue[(qhead + i) % QUEUE];
        if (r.kind == REQ_POPULATE && r.addr >= addr && r.addr < addr + len) continue;
        queue[(qhead + kept) % QUEUE] = r;
        kept++;
    }
    if (kept != qlen) pthread_cond_broadcast(&space);
    qlen = kept;
}

/* Unmap the segment mapping at *addr once no prefault of it runs (see the lifetime rule),
 * and clear *addr in the same step under the lock, so a fork sees either the mapping
 * still the shard's or its munmap queued (a child would otherwise unmap it twice, the
 * second time over whatever the child mapped there since). Returns a ticket for
 * cm_prealloc_wait(); 0 when the munmap already happened. */
uint64_t cm_prealloc_unmap(uint8_t **addr, size_t len) {
    pthread_mutex_lock(&mu);
    uint8_t *a = *addr;
    if (thread_gen != cm_fork_generation()) {   /* no thread: nothing can touch it */
        munmap(a, len);
        *addr = NULL;
        pthread_mutex_unlock(&mu);
        return 0;
    }
    drop_populates(a, len);
    while (qlen == QUEUE)
        pthread_cond_wait(&space, &mu);
    queue[(qhead + qlen) % QUEUE] = (struct req){REQ_UNMAP, a, len, NULL, NULL};
    qlen++;
    *addr = NULL;
    uint64_t ticket = ++tickets_queued;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&mu);
    return ticket;
}

/* Wait until the munmap or call of `ticket` ran (behind the request in progress and the
 * requests queued before it; on a busy CPU each of their steps may first give the CPU
 * away once, since the thread yields after every step). */
void cm_prealloc_wait(uint64_t ticket) {
    if (!ticket) return;
    pthread_mutex_lock(&mu);
    while (tickets_done < ticket && thread_gen == cm_fork_generation())
        pthread_cond_wait(&unmapped, &mu);
    pthread_mutex_unlock(&mu);
}

static void nothing(void *arg) { (void)arg; }

/* Wait until every request queued before this call ran (benchmarks and tests: a state
 * to measure that no background step is still changing). */
void cm_prefault_drain(void) {
    pthread_mutex_lock(&mu);
    if (thread_gen != cm_fork_generation()) {   /* no thread: nothing is queued */
        pthread_mutex_unlock(&mu);
        return;
    }
    while (qlen == QUEUE)                       /* a full queue: wait for room */
        pthread_cond_wait(&space, &mu);
    uint64_t ticket = cm_prealloc_call_locked(nothing, NULL);
    pthread_mutex_unlock(&mu);
    cm_prealloc_wait(ticket);
}

/* This process's prefault counts (zero before its thread started). */
void cm_prefault_stats(cm_prefault_stats_t *out) {
    pthread_mutex_lock(&mu);
    *out = thread_gen == cm_fork_generation() ? stats : (cm_prefault_stats_t){0};
    pthread_mutex_unlock(&mu);
}
