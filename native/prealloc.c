/* prealloc.c - warms the page cache ahead of each stream's tail, off the append path.
 *
 * Appending into a fresh page of a mapped file makes the kernel allocate and
 * zero a page-cache page inside the page fault: ~90 ns per 100-byte append on
 * this machine's VM (docs/PERFORMANCE.md). The appender instead reserves disk
 * blocks one chunk ahead (ensure_alloc in shard.c, under the shard lock) and
 * hands the new range to this process-wide background thread, which reads it
 * once so the zeroed pages already sit in the page cache when the appender
 * reaches them. Purely an optimisation: if the thread falls behind, the
 * appender's own page faults do the same work.
 *
 * One thread per process and fork generation (I10): a forked child starts
 * its own on first use; the child's inherited queue is discarded.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include "cometmp.h"
#include "internal.h"

#define QUEUE 64
#define READ_BYTES (256u * 1024u)

struct warm_req { int fd; uint64_t from, to; };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct warm_req queue[QUEUE];
static int qhead, qlen;
static uint64_t thread_gen; /* fork generation whose thread is running; 0 = none */

static void *warm_main(void *arg) {
    uint64_t gen = (uint64_t)(uintptr_t)arg;
    char *buf = malloc(READ_BYTES);
    if (!buf) return NULL;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (qlen == 0 && thread_gen == gen)
            pthread_cond_wait(&cv, &mu);
        if (thread_gen != gen) { pthread_mutex_unlock(&mu); break; }
        struct warm_req r = queue[qhead];
        qhead = (qhead + 1) % QUEUE;
        qlen--;
        pthread_mutex_unlock(&mu);
        for (uint64_t off = r.from; off < r.to; off += READ_BYTES) {
            uint64_t n = r.to - off < READ_BYTES ? r.to - off : READ_BYTES;
            if (pread(r.fd, buf, n, (off_t)off) <= 0) break;
        }
        close(r.fd);
    }
    free(buf);
    return NULL;
}

static void prealloc_after_fork_child(void) {
    /* the parent's thread does not exist here; its lock may have been held */
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&cv, NULL);
    for (int i = 0; i < qlen; i++) close(queue[(qhead + i) % QUEUE].fd);
    qhead = qlen = 0;
    thread_gen = 0;
}

__attribute__((constructor))
static void prealloc_init(void) { pthread_atfork(NULL, NULL, prealloc_after_fork_child); }

/* Ask the warm thread to fault [from, to) of fd's file into the page cache.
 * Best effort: any failure just leaves the work to the appender's faults. */
void cm_prealloc_warm(int fd, uint64_t from, uint64_t to) {
    if (to <= from) return;
    pthread_mutex_lock(&mu);
    uint64_t gen = cm_fork_generation();
    if (thread_gen != gen) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&a, 64 * 1024);
        if (pthread_create(&t, &a, warm_main, (void *)(uintptr_t)gen) == 0)
            thread_gen = gen;
        pthread_attr_destroy(&a);
        if (thread_gen != gen) { pthread_mutex_unlock(&mu); return; }
    }
    if (qlen < QUEUE) {
        int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (d >= 0) {
            queue[(qhead + qlen) % QUEUE] = (struct warm_req){d, from, to};
            qlen++;
            pthread_cond_signal(&cv);
        }
    }
    pthread_mutex_unlock(&mu);
}
