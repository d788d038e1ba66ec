/* state.c - the per-stream shared state page ("state", native endian).
 *
 * It holds the robust process-shared writer lock (I5), the published tail
 * (I2/I3) and the counters. It is rebuildable from the segments, so it is
 * not checksummed; the fingerprint makes builds with another layout or
 * another pthread ABI refuse to share it (FORMAT.md "State file").
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <pthread.h>
#include "cometmp.h"
#include "internal.h"
#include "lock.h"

uint64_t cm_state_fingerprint(void) {
    /* layout fingerprint: version, the offsets readers rely on, mutex ABI */
    uint64_t f = CM_STATE_VERSION;
    f = f * 1000003u + offsetof(cm_state, boot_id);
    f = f * 1000003u + offsetof(cm_state, lock);
    f = f * 1000003u + sizeof(pthread_mutex_t);
    f = f * 1000003u + offsetof(cm_state, committed);
    f = f * 1000003u + offsetof(cm_state, notify_seq);
    f = f * 1000003u + offsetof(cm_state, counters);
    f = f * 1000003u + CM_STATE_COUNTERS;
    f = f * 1000003u + sizeof(void *);
    return f;
}

int cm_state_init(cm_state *st) {
    memset(st, 0, sizeof *st);
    int rc = cm_lock_init(&st->lock.mutex, 0);   /* I5, I25 */
    if (rc < 0) return rc;
    st->magic = CM_STATE_MAGIC;
    st->version = CM_STATE_VERSION;
    st->fingerprint = cm_state_fingerprint();
    st->size = CM_STATE_BYTES;
    st->created_ns = cm_now_ns();
    return CM_OK;
}
