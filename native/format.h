/* format.h - byte layouts of every cometmp file and shared mapping.
 *
 * docs/FORMAT.md is normative; this header mirrors it and cometmp/format.py
 * mirrors this header (tests/unit/test_format_constants.py compares them).
 * Durable files (segments, indexes) are little-endian. The per-stream state
 * file is a native-endian shared mapping that can be rebuilt from segments.
 * Offsets are chained from the previous field and pinned by _Static_assert.
 */
#include <stdint.h>
#include <stddef.h>
#include <pthread.h>

/* ---- segment file: <20-digit base entry>.seg -------------------------- */
/* header: magic(4) version(2) header_bytes(2) base(8) capacity(8)
 *         created_ns(8) stream_crc(4) reserved(24) header_crc(4) = 64 */
#define CM_SEG_MAGIC            0x47534D43u /* "CMSG" as LE bytes */
#define CM_SEG_VERSION          1
#define CM_SEG_OFF_MAGIC        0
#define CM_SEG_OFF_VERSION      (CM_SEG_OFF_MAGIC + 4)
#define CM_SEG_OFF_HEADER_BYTES (CM_SEG_OFF_VERSION + 2)
#define CM_SEG_OFF_BASE         (CM_SEG_OFF_HEADER_BYTES + 2)
#define CM_SEG_OFF_CAPACITY     (CM_SEG_OFF_BASE + 8)
#define CM_SEG_OFF_CREATED      (CM_SEG_OFF_CAPACITY + 8)
#define CM_SEG_OFF_STREAM_CRC   (CM_SEG_OFF_CREATED + 8)
#define CM_SEG_OFF_RESERVED     (CM_SEG_OFF_STREAM_CRC + 4)
#define CM_SEG_OFF_HEADER_CRC   (CM_SEG_OFF_RESERVED + 24)
#define CM_SEG_HEADER_BYTES     (CM_SEG_OFF_HEADER_CRC + 4)
_Static_assert(CM_SEG_OFF_BASE == 8, "segment base at 8");
_Static_assert(CM_SEG_HEADER_BYTES == 64, "segment header is one cache line");

/* ---- record frame, inside a segment ----------------------------------- */
/* len(4) crc(4) ts_ns(8) seqflags(4) payload(len); no padding.
 * crc = crc32c over bytes [0,4) then [8, 20+len): everything but itself.
 * seqflags: low 28 bits = entry - segment base; high 4 bits = flags.     */
#define CM_REC_OFF_LEN          0
#define CM_REC_OFF_CRC          (CM_REC_OFF_LEN + 4)
#define CM_REC_OFF_TS           (CM_REC_OFF_CRC + 4)
#define CM_REC_OFF_SEQFLAGS     (CM_REC_OFF_TS + 8)
#define CM_REC_HEADER_BYTES     (CM_REC_OFF_SEQFLAGS + 4)
_Static_assert(CM_REC_HEADER_BYTES == 20, "record overhead is 20 bytes");
#define CM_REC_SEQ_MASK         0x0FFFFFFFu
#define CM_REC_FLAGS_MASK       0xF0000000u
#define CM_REC_FLAG_ZSTD        0x10000000u /* payload is one zstd frame */
/* Why 28 bits of sequence: a segment holds at most CM_SEG_MAX_BYTES /
 * CM_REC_HEADER_BYTES records, which must stay below 2^28.             */
#define CM_SEG_MAX_BYTES        (1ull << 32)
_Static_assert(CM_SEG_MAX_BYTES / CM_REC_HEADER_BYTES < (1ull << 28),
               "relative sequence fits in 28 bits");
#define CM_ENTRY_MAX_BYTES      (1u << 30) /* hard ceiling of max_entry_bytes */

/* ---- sparse index file: <20-digit base entry>.idx --------------------- */
/* header: magic(4) version(2) header_bytes(2) base(8) interval(4)
 *         reserved(8) header_crc(4) = 32
 * entry:  rel(4) offset(4) ts_ns(8) = 16; offset 0 ends the table.       */
#define CM_IDX_MAGIC            0x58494D43u /* "CMIX" */
#define CM_IDX_VERSION          1
#define CM_IDX_OFF_MAGIC        0
#define CM_IDX_OFF_VERSION      (CM_IDX_OFF_MAGIC + 4)
#define CM_IDX_OFF_HEADER_BYTES (CM_IDX_OFF_VERSION + 2)
#define CM_IDX_OFF_BASE         (CM_IDX_OFF_HEADER_BYTES + 2)
#define CM_IDX_OFF_INTERVAL     (CM_IDX_OFF_BASE + 8)
#define CM_IDX_OFF_RESERVED     (CM_IDX_OFF_INTERVAL + 4)
#define CM_IDX_OFF_HEADER_CRC   (CM_IDX_OFF_RESERVED + 8)
#define CM_IDX_HEADER_BYTES     (CM_IDX_OFF_HEADER_CRC + 4)
_Static_assert(CM_IDX_HEADER_BYTES == 32, "index header is 32 bytes");
#define CM_IDXE_OFF_REL         0
#define CM_IDXE_OFF_OFFSET      (CM_IDXE_OFF_REL + 4)
#define CM_IDXE_OFF_TS          (CM_IDXE_OFF_OFFSET + 4)
#define CM_IDX_ENTRY_BYTES      (CM_IDXE_OFF_TS + 8)
_Static_assert(CM_IDX_ENTRY_BYTES == 16, "index entry is 16 bytes");

/* ---- per-stream shared state: "state" (native endian, 4096 bytes) ------ */
/* Rebuildable from the segments (see ARCHITECTURE.md, recovery).          */
#define CM_STATE_MAGIC          0x54534D43u /* "CMST" */
#define CM_STATE_VERSION        1
#define CM_STATE_BYTES          4096
#define CM_STATE_COUNTERS       32

typedef struct cm_state {
    /* identity line */
    uint32_t magic;             /* 0   CM_STATE_MAGIC */
    uint16_t version;           /* 4   CM_STATE_VERSION */
    uint16_t reserved0;         /* 6 */
    uint64_t fingerprint;       /* 8   cm_state_fingerprint(): layout + ABI */
    uint32_t size;              /* 16  CM_STATE_BYTES */
    uint32_t reserved1;         /* 20 */
    int64_t  created_ns;        /* 24 */
    char     boot_id[32];       /* 32  kernel boot id (hex) of the last writer open, I16 */
    /* writer lock line: robust, process-shared (I5) */
    union { pthread_mutex_t mutex; uint8_t pad[64]; } lock; /* 64 */
    /* tail line: published by the writer holding the lock (I2, I3) */
    uint64_t committed;         /* 128 next entry number; readers acquire-load it */
    uint64_t active_base;       /* 136 base entry of the active segment */
    uint64_t tail;              /* 144 end offset of the last published record */
    uint64_t reserve_end;       /* 152 end of an in-progress write (I4) */
    int64_t  last_ts;           /* 160 timestamp of the last record (I6) */
    uint64_t alloc_end;         /* 168 bytes of the active segment allocated */
    uint64_t idx_last_off;      /* 176 offset of the last index entry written */
    uint32_t idx_count;         /* 184 index entries in the active .idx */
    uint32_t waiters;           /* 188 readers sleeping on the futex (issue 4) */
    uint64_t first_entry;       /* 192 oldest retained entry */
    uint32_t notify_seq;        /* 200 futex word, bumped on every publish */
    uint32_t active_gen;        /* 204 bumped by every rotation: writers in other processes remap */
    uint32_t rotate_pending;    /* 208 a failed rotation left a newer segment: appends retry it (I1) */
    uint8_t  pad1[44];          /* 212 */
    /* counters, 32 x u64, updated under the lock (see CM_CTR_*) */
    uint64_t counters[CM_STATE_COUNTERS]; /* 256 */
    uint8_t  reserved[CM_STATE_BYTES - 512];  /* 512 */
} cm_state;

_Static_assert(offsetof(cm_state, boot_id) == 32, "boot_id at 32");
_Static_assert(offsetof(cm_state, lock) == 64, "lock at 64");
_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex fits its line");
_Static_assert(offsetof(cm_state, committed) == 128, "committed at 128");
_Static_assert(offsetof(cm_state, tail) == 144, "tail at 144");
_Static_assert(offsetof(cm_state, notify_seq) == 200, "notify_seq at 200");
_Static_assert(offsetof(cm_state, counters) == 256, "counters at 256");
_Static_assert(sizeof(cm_state) == CM_STATE_BYTES, "state is one page");

/* counter slots (index into cm_state.counters) */
#define CM_CTR_APPENDS          0
#define CM_CTR_BYTES            1
#define CM_CTR_ROTATIONS        2
#define CM_CTR_RECOVERIES       3
#define CM_CTR_BYTES_DROPPED    4
#define CM_CTR_CORRUPT_RECORDS  5
#define CM_CTR_FSYNCS           6
#define CM_CTR_RETENTION_SEGMENTS 7
#define CM_CTR_RETENTION_BYTES  8
#define CM_CTR_COMPRESSED       9
#define CM_CTR_LOCK_RECOVERIES  10
#define CM_CTR_CONTENDED        11
#define CM_CTR_CLOCK_CLAMPS     12
#define CM_CTR_DISK_FULL        13
