/* api.c - the function table the CPython fast path (appender.c) calls.
 *
 * The core lives once, in the cffi extension; cometmp/_ffi.py hands the
 * address of this table to cometmp._appender, so both extensions share one
 * copy of the code and of its globals (the fork generation, errors).
 */
#include <stdint.h>
#include <stddef.h>
#include "cometmp.h"
#include "internal.h"

static const cm_api table = {
    CM_API_VERSION,
    cm_append_ex,
    cm_last_error,
    cm_last_errno,
    cm_record_at,
    cm_shard_ref_raw,
    cm_shard_unref,
    cm_walk_init,
    cm_walk_next,
};

void *cm_api_table(void) { return (void *)&table; }

#define C(name) { #name, (uint64_t)(name) }
static const cm_constant constants[] = {
    C(CM_SEG_MAGIC), C(CM_SEG_VERSION), C(CM_SEG_OFF_MAGIC), C(CM_SEG_OFF_VERSION),
    C(CM_SEG_OFF_HEADER_BYTES), C(CM_SEG_OFF_BASE), C(CM_SEG_OFF_CAPACITY),
    C(CM_SEG_OFF_CREATED), C(CM_SEG_OFF_STREAM_CRC), C(CM_SEG_OFF_RESERVED),
    C(CM_SEG_OFF_HEADER_CRC), C(CM_SEG_HEADER_BYTES),
    C(CM_REC_OFF_LEN), C(CM_REC_OFF_CRC), C(CM_REC_OFF_TS), C(CM_REC_OFF_SEQFLAGS),
    C(CM_REC_HEADER_BYTES), C(CM_REC_SEQ_MASK), C(CM_REC_FLAGS_MASK), C(CM_REC_FLAG_ZSTD),
    C(CM_SEG_MAX_BYTES), C(CM_ENTRY_MAX_BYTES),
    C(CM_IDX_MAGIC), C(CM_IDX_VERSION), C(CM_IDX_OFF_MAGIC), C(CM_IDX_OFF_VERSION),
    C(CM_IDX_OFF_HEADER_BYTES), C(CM_IDX_OFF_BASE), C(CM_IDX_OFF_INTERVAL),
    C(CM_IDX_OFF_RESERVED), C(CM_IDX_OFF_HEADER_CRC), C(CM_IDX_HEADER_BYTES),
    C(CM_IDXE_OFF_REL), C(CM_IDXE_OFF_OFFSET), C(CM_IDXE_OFF_TS), C(CM_IDX_ENTRY_BYTES),
    C(CM_STATE_MAGIC), C(CM_STATE_VERSION), C(CM_STATE_BYTES), C(CM_STATE_COUNTERS),
    { "CM_STATE_OFF_BOOT_ID", offsetof(cm_state, boot_id) },
    { "CM_STATE_OFF_LOCK", offsetof(cm_state, lock) },
    { "CM_STATE_OFF_COMMITTED", offsetof(cm_state, committed) },
    { "CM_STATE_OFF_ACTIVE_BASE", offsetof(cm_state, active_base) },
    { "CM_STATE_OFF_TAIL", offsetof(cm_state, tail) },
    { "CM_STATE_OFF_RESERVE_END", offsetof(cm_state, reserve_end) },
    { "CM_STATE_OFF_LAST_TS", offsetof(cm_state, last_ts) },
    { "CM_STATE_OFF_ALLOC_END", offsetof(cm_state, alloc_end) },
    { "CM_STATE_OFF_WAITERS", offsetof(cm_state, waiters) },
    { "CM_STATE_OFF_FIRST_ENTRY", offsetof(cm_state, first_entry) },
    { "CM_STATE_OFF_NOTIFY_SEQ", offsetof(cm_state, notify_seq) },
    { "CM_STATE_OFF_ACTIVE_GEN", offsetof(cm_state, active_gen) },
    { "CM_STATE_OFF_COUNTERS", offsetof(cm_state, counters) },
    { "CM_STATE_OFF_VERSION", offsetof(cm_state, version) },
    { "CM_STATE_OFF_FINGERPRINT", offsetof(cm_state, fingerprint) },
    C(CM_CTR_APPENDS), C(CM_CTR_BYTES), C(CM_CTR_ROTATIONS), C(CM_CTR_RECOVERIES),
    C(CM_CTR_BYTES_DROPPED), C(CM_CTR_CORRUPT_RECORDS), C(CM_CTR_FSYNCS),
    C(CM_CTR_RETENTION_SEGMENTS), C(CM_CTR_RETENTION_BYTES), C(CM_CTR_COMPRESSED),
    C(CM_CTR_LOCK_RECOVERIES), C(CM_CTR_CONTENDED), C(CM_CTR_CLOCK_CLAMPS), C(CM_CTR_DISK_FULL),
};

const cm_constant *cm_format_constants(uint32_t *count) {
    *count = sizeof constants / sizeof constants[0];
    return constants;
}
