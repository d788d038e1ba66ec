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
    cm_wait_many,
};

void *cm_api_table(void) { return (void *)&table; }
