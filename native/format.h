/* format.h - byte layouts of every cometmp file and shared mapping: the one
 * layout header.
 *
 * docs/FORMAT.md is normative; this header mirrors it, section by section:
 *   segment <base>.seg (§2)      record frame (§2.2)     index <base>.idx (§3)
 *   state page (§4)              consumer offsets file (§7)
 *   worker registry, POSIX shm (§8)
 * (The JSON files, cometmp.json and families/<prefix>.json (§1), have no
 * binary layout; cometmp/paths.py and cometmp/client.py own them.)
 *
 * Python mirrors: cometmp/format.py (segment, record, index, state page),
 * cometmp/offsets.py (offsets file), cometmp/registry/table.py (registry).
 * native/format.c exports every constant below in one table,
 * cm_format_constants(), and tests/unit/test_format_constants.py compares
 * each Python constant with it. Golden files of every file kind are under
 * tests/data/format_vN/.
 *
 * Durable files (segments, indexes) are little-endian. The state page, the
 * offsets file and the registry are native-endian shared mappings (they hold
 * a pthread mutex); each carries a layout fingerprint (state.c, offsets.c,
 * registry.c) so builds with another layout or pthread ABI refuse to share
 * them. Offsets are chained from the previous field and pinned by
 * _Static_assert.
 *
 * Not read by cffi: native/cometmp.h is the cdef; this header is C only.
 */
#ifndef CM_FORMAT_H
#define CM_FORMAT_H
#include <stdint.h>
#include <stddef.h>
#include <pthread.h>

/* ---- segment file: <20-digit base entry>.seg -------------------------- */
/* header: magic(4) version(2) header_bytes(2) base(8) capacity(8)
 *         created_ns(8) stream_crc(4) stream_id(8) reserved(16) header_crc(4) = 64
 * Version 2 (this build writes it) names the stream by a random 64-bit
 * stream_id that every frame's crc is bound to (FORMAT.md §2.2); in version 1
 * those 8 bytes are reserved zeros and frames are bound to nothing. Both are
 * read (FORMAT.md §5).                                                    */
#define CM_SEG_MAGIC            0x47534D43u /* "CMSG" as LE bytes */
#define CM_SEG_VERSION          2           /* written by this build */
#define CM_SEG_VERSION_V1       1           /* oldest version still read */
#define CM_SEG_OFF_MAGIC        0
#define CM_SEG_OFF_VERSION      (CM_SEG_OFF_MAGIC + 4)
#define CM_SEG_OFF_HEADER_BYTES (CM_SEG_OFF_VERSION + 2)
#define CM_SEG_OFF_BASE         (CM_SEG_OFF_HEADER_BYTES + 2)
#define CM_SEG_OFF_CAPACITY     (CM_SEG_OFF_BASE + 8)
#define CM_SEG_OFF_CREATED      (CM_SEG_OFF_CAPACITY + 8)
#define CM_SEG_OFF_STREAM_CRC   (CM_SEG_OFF_CREATED + 8)
#define CM_SEG_OFF_STREAM_ID    (CM_SEG_OFF_STREAM_CRC + 4)  /* v2; reserved zero in v1 */
#define CM_SEG_OFF_RESERVED     (CM_SEG_OFF_STREAM_ID + 8)
#define CM_SEG_OFF_HEADER_CRC   (CM_SEG_OFF_RESERVED + 16)
#define CM_SEG_HEADER_BYTES     (CM_SEG_OFF_HEADER_CRC + 4)
_Static_assert(CM_SEG_OFF_BASE == 8, "segment base at 8");
_Static_assert(CM_SEG_OFF_STREAM_ID == 36, "stream_id in v1's reserved bytes");
_Static_assert(CM_SEG_OFF_HEADER_CRC == 60, "header crc where v1 has it");
_Static_assert(CM_SEG_HEADER_BYTES == 64, "segment header is one cache line");

/* ---- record frame, inside a segment ----------------------------------- */
/* len(4) crc(4) ts_ns(8) seqflags(4) payload(len); no padding.
 * v1 crc = crc32c over bytes [0,4) then [8, 20+len): everything but itself.
 * v2 crc = crc32c over the binding key stream_id(8) entry(8), then the same
 *          bytes (I17): a frame validates only as entry `entry` of its stream.
 * seqflags: low 28 bits = entry - segment base; high 4 bits = flags.     */
#define CM_REC_OFF_LEN          0
#define CM_REC_OFF_CRC          (CM_REC_OFF_LEN + 4)
#define CM_REC_OFF_TS           (CM_REC_OFF_CRC + 4)
#define CM_REC_OFF_SEQFLAGS     (CM_REC_OFF_TS + 8)
#define CM_REC_HEADER_BYTES     (CM_REC_OFF_SEQFLAGS + 4)
_Static_assert(CM_REC_HEADER_BYTES == 20, "record overhead is 20 bytes");
#define CM_REC_KEY_BYTES        16          /* v2 crc prefix: stream_id(8) entry(8), LE */
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
#define CM_STATE_MAGIC          0x54534D43u /* "CMST" on LE hosts: tells a page from zeros */
#define CM_STATE_VERSION        1           /* bump on any layout change (FORMAT.md §5) */
#define CM_STATE_BYTES          4096        /* one page: mmap granularity, and room to grow */
#define CM_STATE_COUNTERS       32          /* u64 slots; 14 used, the rest reserved (zero) */

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

/* chained offsets of the state page; each is pinned to the struct below */
#define CM_STATE_OFF_MAGIC       0
#define CM_STATE_OFF_VERSION     (CM_STATE_OFF_MAGIC + 4)
#define CM_STATE_OFF_FINGERPRINT (CM_STATE_OFF_VERSION + 2 + 2)       /* + reserved0(2) */
#define CM_STATE_OFF_SIZE        (CM_STATE_OFF_FINGERPRINT + 8)
#define CM_STATE_OFF_CREATED     (CM_STATE_OFF_SIZE + 4 + 4)          /* + reserved1(4) */
#define CM_STATE_OFF_BOOT_ID     (CM_STATE_OFF_CREATED + 8)
#define CM_STATE_BOOT_ID_BYTES   32   /* 128-bit boot id as 32 hex digits, no dashes, no NUL */
#define CM_STATE_OFF_LOCK        (CM_STATE_OFF_BOOT_ID + CM_STATE_BOOT_ID_BYTES)
#define CM_LOCK_LINE_BYTES       64   /* a mutex on its own cache line: no false sharing (I5) */
#define CM_STATE_OFF_COMMITTED   (CM_STATE_OFF_LOCK + CM_LOCK_LINE_BYTES)
#define CM_STATE_OFF_ACTIVE_BASE (CM_STATE_OFF_COMMITTED + 8)
#define CM_STATE_OFF_TAIL        (CM_STATE_OFF_ACTIVE_BASE + 8)
#define CM_STATE_OFF_RESERVE_END (CM_STATE_OFF_TAIL + 8)
#define CM_STATE_OFF_LAST_TS     (CM_STATE_OFF_RESERVE_END + 8)
#define CM_STATE_OFF_ALLOC_END   (CM_STATE_OFF_LAST_TS + 8)
#define CM_STATE_OFF_IDX_LAST_OFF (CM_STATE_OFF_ALLOC_END + 8)
#define CM_STATE_OFF_IDX_COUNT   (CM_STATE_OFF_IDX_LAST_OFF + 8)
#define CM_STATE_OFF_WAITERS     (CM_STATE_OFF_IDX_COUNT + 4)
#define CM_STATE_OFF_FIRST_ENTRY (CM_STATE_OFF_WAITERS + 4)
#define CM_STATE_OFF_NOTIFY_SEQ  (CM_STATE_OFF_FIRST_ENTRY + 8)
#define CM_STATE_OFF_ACTIVE_GEN  (CM_STATE_OFF_NOTIFY_SEQ + 4)
/* was padding in the first v1 builds, always zero there: 0 = no rotation pending, so
   those pages need no rebuild and the fingerprint is unchanged */
#define CM_STATE_OFF_ROTATE_PENDING (CM_STATE_OFF_ACTIVE_GEN + 4)
#define CM_STATE_OFF_COUNTERS    (CM_STATE_OFF_ROTATE_PENDING + 4 + 44) /* + pad1(44): counters on line 4 */
#define CM_STATE_OFF_RESERVED    (CM_STATE_OFF_COUNTERS + 8 * CM_STATE_COUNTERS)

_Static_assert(offsetof(cm_state, magic) == CM_STATE_OFF_MAGIC, "state magic");
_Static_assert(offsetof(cm_state, version) == CM_STATE_OFF_VERSION, "state version");
_Static_assert(offsetof(cm_state, fingerprint) == CM_STATE_OFF_FINGERPRINT, "state fingerprint");
_Static_assert(offsetof(cm_state, size) == CM_STATE_OFF_SIZE, "state size");
_Static_assert(offsetof(cm_state, created_ns) == CM_STATE_OFF_CREATED, "state created_ns");
_Static_assert(offsetof(cm_state, boot_id) == CM_STATE_OFF_BOOT_ID && CM_STATE_OFF_BOOT_ID == 32,
               "boot_id at 32");
_Static_assert(sizeof(((cm_state *)0)->boot_id) == CM_STATE_BOOT_ID_BYTES, "boot_id bytes");
_Static_assert(offsetof(cm_state, lock) == CM_STATE_OFF_LOCK && CM_STATE_OFF_LOCK == 64, "lock at 64");
_Static_assert(sizeof(pthread_mutex_t) <= CM_LOCK_LINE_BYTES, "mutex fits its line");
_Static_assert(offsetof(cm_state, committed) == CM_STATE_OFF_COMMITTED && CM_STATE_OFF_COMMITTED == 128,
               "committed at 128");
_Static_assert(offsetof(cm_state, active_base) == CM_STATE_OFF_ACTIVE_BASE, "state active_base");
_Static_assert(offsetof(cm_state, tail) == CM_STATE_OFF_TAIL && CM_STATE_OFF_TAIL == 144, "tail at 144");
_Static_assert(offsetof(cm_state, reserve_end) == CM_STATE_OFF_RESERVE_END, "state reserve_end");
_Static_assert(offsetof(cm_state, last_ts) == CM_STATE_OFF_LAST_TS, "state last_ts");
_Static_assert(offsetof(cm_state, alloc_end) == CM_STATE_OFF_ALLOC_END, "state alloc_end");
_Static_assert(offsetof(cm_state, idx_last_off) == CM_STATE_OFF_IDX_LAST_OFF, "state idx_last_off");
_Static_assert(offsetof(cm_state, idx_count) == CM_STATE_OFF_IDX_COUNT, "state idx_count");
_Static_assert(offsetof(cm_state, waiters) == CM_STATE_OFF_WAITERS, "state waiters");
_Static_assert(offsetof(cm_state, rotate_pending) == CM_STATE_OFF_ROTATE_PENDING, "state rotate_pending");
_Static_assert(offsetof(cm_state, first_entry) == CM_STATE_OFF_FIRST_ENTRY, "state first_entry");
_Static_assert(offsetof(cm_state, notify_seq) == CM_STATE_OFF_NOTIFY_SEQ && CM_STATE_OFF_NOTIFY_SEQ == 200,
               "notify_seq at 200");
_Static_assert(offsetof(cm_state, active_gen) == CM_STATE_OFF_ACTIVE_GEN, "state active_gen");
_Static_assert(offsetof(cm_state, counters) == CM_STATE_OFF_COUNTERS && CM_STATE_OFF_COUNTERS == 256,
               "counters at 256");
_Static_assert(offsetof(cm_state, reserved) == CM_STATE_OFF_RESERVED && CM_STATE_OFF_RESERVED == 512,
               "reserved from 512");
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
#define CM_CTR_SPARE_ROTATIONS  14
_Static_assert(CM_CTR_SPARE_ROTATIONS < CM_STATE_COUNTERS, "counter slots fit the table");

/* ---- consumer offsets file: DIR/consumers/offsets (native endian) ------ */
/* FORMAT.md §7. One shared mapping per data directory, fixed size, sparse:
 *
 *   [0, 4096)                       header: identity line + robust mutex
 *   [4096, +GROUP_CAP*GROUP_BYTES)  group table: one record per consumer group
 *   [.., +SLOT_CAP*SLOT_BYTES)      slot table: one record per (group, stream)
 *
 * Not derived data: the only copy of the groups' offsets, so a file with
 * another magic, version, fingerprint or size is refused, never rebuilt.
 * Only the header's high-water marks bound the scans, so untouched parts of
 * the tables stay holes on disk. Claims and deletions run under the header's
 * robust process-shared mutex (I12); acks are lock-free CAS-max on a slot's
 * `next` word (I13). Owner: native/offsets.c.
 */
#define CM_OFS_MAGIC            0x464F4D43u /* "CMOF" on LE hosts */
#define CM_OFS_VERSION          1           /* bump on any layout change; never rebuilt */
#define CM_OFS_HEADER_BYTES     4096        /* one page: the header never shares a page with records */
#define CM_OFS_GROUP_BYTES      2048        /* name (1024) + patterns (960) + 64-byte head */
#define CM_OFS_GROUP_CAP        4096        /* groups per directory: 8 MiB of table, sparse */
#define CM_OFS_SLOT_BYTES       512         /* 64-byte head + a stream name; 8 per page */
#define CM_OFS_SLOT_CAP         65536       /* (group, stream) pairs: 32 MiB of table, sparse */
#define CM_OFS_GROUPS_OFF       CM_OFS_HEADER_BYTES
#define CM_OFS_SLOTS_OFF        (CM_OFS_GROUPS_OFF + CM_OFS_GROUP_CAP * CM_OFS_GROUP_BYTES)
#define CM_OFS_FILE_BYTES       (CM_OFS_SLOTS_OFF + CM_OFS_SLOT_CAP * CM_OFS_SLOT_BYTES)
#define CM_OFS_NAME_MAX         1024  /* group name bytes */
#define CM_OFS_PATTERNS_MAX     960   /* '\n'-joined fnmatch patterns a group reads; "*" when full */
#define CM_OFS_STREAM_MAX       440   /* stream name bytes in a slot (names are <= 200) */
#define CM_OFS_UNSET            UINT64_MAX /* slot.next before the first ack */
_Static_assert(CM_OFS_SLOTS_OFF == 8392704, "slot table at 8 392 704");
_Static_assert(CM_OFS_FILE_BYTES == 41947136, "offsets file is 41 947 136 bytes");

/* record states: a record is usable only once `state` is LIVE (release store,
 * written last), so a claimer killed half-way leaves a FREE record behind */
#define CM_OFS_FREE             0u
#define CM_OFS_LIVE             1u
#define CM_OFS_DELETING         2u  /* a deleter died mid-way: repair() finishes it */

/* header: magic(4) version(2) header_bytes(2) fingerprint(8) file_bytes(8)
 *         group_cap(4) slot_cap(4) group_hwm(4) slot_hwm(4) next_group_id(8)
 *         created_ns(8) lock_recoveries(8) lock(64) reserved(3968) = 4096 */
#define CM_OFS_OFF_MAGIC        0
#define CM_OFS_OFF_VERSION      (CM_OFS_OFF_MAGIC + 4)
#define CM_OFS_OFF_HEADER_BYTES (CM_OFS_OFF_VERSION + 2)
#define CM_OFS_OFF_FINGERPRINT  (CM_OFS_OFF_HEADER_BYTES + 2)
#define CM_OFS_OFF_FILE_BYTES   (CM_OFS_OFF_FINGERPRINT + 8)
#define CM_OFS_OFF_GROUP_CAP    (CM_OFS_OFF_FILE_BYTES + 8)
#define CM_OFS_OFF_SLOT_CAP     (CM_OFS_OFF_GROUP_CAP + 4)
#define CM_OFS_OFF_GROUP_HWM    (CM_OFS_OFF_SLOT_CAP + 4)
#define CM_OFS_OFF_SLOT_HWM     (CM_OFS_OFF_GROUP_HWM + 4)
#define CM_OFS_OFF_NEXT_GROUP_ID (CM_OFS_OFF_SLOT_HWM + 4)
#define CM_OFS_OFF_CREATED      (CM_OFS_OFF_NEXT_GROUP_ID + 8)
#define CM_OFS_OFF_LOCK_RECOVERIES (CM_OFS_OFF_CREATED + 8)
#define CM_OFS_OFF_LOCK         (CM_OFS_OFF_LOCK_RECOVERIES + 8)

typedef struct cm_ofs_header {
    uint32_t magic;             /* 0   CM_OFS_MAGIC */
    uint16_t version;           /* 4   CM_OFS_VERSION */
    uint16_t header_bytes;      /* 6   CM_OFS_HEADER_BYTES */
    uint64_t fingerprint;       /* 8   cm_offsets_fingerprint(): layout + mutex ABI */
    uint64_t file_bytes;        /* 16  CM_OFS_FILE_BYTES */
    uint32_t group_cap;         /* 24 */
    uint32_t slot_cap;          /* 28 */
    uint32_t group_hwm;         /* 32  records [0, hwm) may be in use */
    uint32_t slot_hwm;          /* 36 */
    uint64_t next_group_id;     /* 40  group ids are never reused */
    int64_t  created_ns;        /* 48 */
    uint64_t lock_recoveries;   /* 56  EOWNERDEAD repairs */
    union { pthread_mutex_t mutex; uint8_t pad[CM_LOCK_LINE_BYTES]; } lock; /* 64: robust, process-shared */
    uint8_t  reserved[CM_OFS_HEADER_BYTES - 128];
} cm_ofs_header;

/* group: state(4) name_len(4) id(8) created_ns(8) active_ns(8) patterns_len(4)
 *        reserved(28) name(1024) patterns(960) = 2048 */
#define CM_OFS_G_STATE          0
#define CM_OFS_G_NAME_LEN       (CM_OFS_G_STATE + 4)
#define CM_OFS_G_ID             (CM_OFS_G_NAME_LEN + 4)
#define CM_OFS_G_CREATED        (CM_OFS_G_ID + 8)
#define CM_OFS_G_ACTIVE         (CM_OFS_G_CREATED + 8)
#define CM_OFS_G_PATTERNS_LEN   (CM_OFS_G_ACTIVE + 8)
#define CM_OFS_G_NAME           (CM_OFS_G_PATTERNS_LEN + 4 + 28)      /* + reserved(28) */
#define CM_OFS_G_PATTERNS       (CM_OFS_G_NAME + CM_OFS_NAME_MAX)

typedef struct cm_ofs_group {
    uint32_t state;             /* 0   CM_OFS_FREE / LIVE / DELETING */
    uint32_t name_len;          /* 4 */
    uint64_t id;                /* 8   unique for the file's life */
    int64_t  created_ns;        /* 16 */
    int64_t  active_ns;         /* 24  last read or ack (idle expiry) */
    uint32_t patterns_len;      /* 32 */
    uint8_t  reserved[28];      /* 36 */
    char     name[CM_OFS_NAME_MAX];          /* 64 */
    char     patterns[CM_OFS_PATTERNS_MAX];  /* 1088 */
} cm_ofs_group;

/* slot: state(4) group(4) group_id(8) next(8) resets(8) acked_ns(8)
 *       dropped(8) stream_len(4) reserved(12) stream(440) pad(8) = 512 */
#define CM_OFS_S_STATE          0
#define CM_OFS_S_GROUP          (CM_OFS_S_STATE + 4)
#define CM_OFS_S_GROUP_ID       (CM_OFS_S_GROUP + 4)
#define CM_OFS_S_NEXT           (CM_OFS_S_GROUP_ID + 8)
#define CM_OFS_S_RESETS         (CM_OFS_S_NEXT + 8)
#define CM_OFS_S_ACKED          (CM_OFS_S_RESETS + 8)
#define CM_OFS_S_DROPPED        (CM_OFS_S_ACKED + 8)
#define CM_OFS_S_STREAM_LEN     (CM_OFS_S_DROPPED + 8)
#define CM_OFS_S_STREAM         (CM_OFS_S_STREAM_LEN + 4 + 12)        /* + reserved(12) */

typedef struct cm_ofs_slot {
    uint32_t state;             /* 0 */
    uint32_t group;             /* 4   index of the owning group record */
    uint64_t group_id;          /* 8   id of the owning group (stale if it differs) */
    uint64_t next;              /* 16  first entry not acked; CM_OFS_UNSET before any ack */
    uint64_t resets;            /* 24  bumped by cm_offsets_set (offset moved by hand) */
    int64_t  acked_ns;          /* 32 */
    uint64_t dropped;           /* 40  unacked entries the hard cap deleted */
    uint32_t stream_len;        /* 48 */
    uint8_t  reserved[12];      /* 52 */
    char     stream[CM_OFS_STREAM_MAX];      /* 64 */
    uint8_t  pad[CM_OFS_SLOT_BYTES - 64 - CM_OFS_STREAM_MAX];
} cm_ofs_slot;

_Static_assert(offsetof(cm_ofs_header, magic) == CM_OFS_OFF_MAGIC, "offsets magic");
_Static_assert(offsetof(cm_ofs_header, version) == CM_OFS_OFF_VERSION, "offsets version");
_Static_assert(offsetof(cm_ofs_header, header_bytes) == CM_OFS_OFF_HEADER_BYTES, "offsets header_bytes");
_Static_assert(offsetof(cm_ofs_header, fingerprint) == CM_OFS_OFF_FINGERPRINT, "offsets fingerprint");
_Static_assert(offsetof(cm_ofs_header, file_bytes) == CM_OFS_OFF_FILE_BYTES, "offsets file_bytes");
_Static_assert(offsetof(cm_ofs_header, group_cap) == CM_OFS_OFF_GROUP_CAP, "offsets group_cap");
_Static_assert(offsetof(cm_ofs_header, slot_cap) == CM_OFS_OFF_SLOT_CAP, "offsets slot_cap");
_Static_assert(offsetof(cm_ofs_header, group_hwm) == CM_OFS_OFF_GROUP_HWM, "offsets group_hwm");
_Static_assert(offsetof(cm_ofs_header, slot_hwm) == CM_OFS_OFF_SLOT_HWM, "offsets slot_hwm");
_Static_assert(offsetof(cm_ofs_header, next_group_id) == CM_OFS_OFF_NEXT_GROUP_ID, "offsets next_group_id");
_Static_assert(offsetof(cm_ofs_header, created_ns) == CM_OFS_OFF_CREATED, "offsets created_ns");
_Static_assert(offsetof(cm_ofs_header, lock_recoveries) == CM_OFS_OFF_LOCK_RECOVERIES,
               "offsets lock_recoveries");

/* ------------------------------------------------------------------------------------
 * Consumer-group members file  DIR/consumers/members   (FORMAT.md §7.1; native endian,
 * fixed size, sparse). Written and read only by cometmp/members.py: liveness is an OFD
 * write lock each member holds on its own record (I41a), mutations happen under an OFD
 * write lock on the header byte CM_MMB_OFF_LOCK (I41b). No mutex lives in the file, so
 * the fingerprint has no ABI term; these constants exist in C so that one table
 * (cm_format_constants) checks the Python mirror.
 * ------------------------------------------------------------------------------------ */
#define CM_MMB_MAGIC            0x424D4D43u /* "CMMB" on LE hosts */
#define CM_MMB_VERSION          1           /* bump on any layout change */
#define CM_MMB_HEADER_BYTES     4096        /* one page: the lock byte never shares a record's page */
#define CM_MMB_GROUP_CAP        CM_OFS_GROUP_CAP /* one member table per offsets group index */
#define CM_MMB_MEMBER_CAP       64          /* live members per group: one more raises MembersFull */
#define CM_MMB_MEMBER_BYTES     256         /* 64-byte head + patterns; the record is its own lock range */
#define CM_MMB_PATTERNS_MAX     192         /* '\n'-joined patterns the member reads (HRW candidates) */
#define CM_MMB_CLAIM_CAP        CM_OFS_SLOT_CAP  /* one claim per offsets slot index */
#define CM_MMB_CLAIM_BYTES      32
#define CM_MMB_MEMBERS_OFF      CM_MMB_HEADER_BYTES
#define CM_MMB_TABLE_BYTES      (CM_MMB_MEMBER_CAP * CM_MMB_MEMBER_BYTES)   /* one group's table */
#define CM_MMB_CLAIMS_OFF       (CM_MMB_MEMBERS_OFF + CM_MMB_GROUP_CAP * CM_MMB_TABLE_BYTES)
#define CM_MMB_FILE_BYTES       (CM_MMB_CLAIMS_OFF + CM_MMB_CLAIM_CAP * CM_MMB_CLAIM_BYTES)
#define CM_MMB_FREE             0u
#define CM_MMB_LIVE             1u          /* stored last on join (I41a) */
_Static_assert(CM_MMB_CLAIMS_OFF == 67112960, "claims at 67 112 960");
_Static_assert(CM_MMB_FILE_BYTES == 69210112, "members file is 69 210 112 bytes");
_Static_assert(CM_MMB_MEMBER_BYTES % 64 == 0 && CM_MMB_TABLE_BYTES % 4096 == 0,
               "records are cache-line sized; a group's table is whole pages");

/* header: magic(4) version(2) header_bytes(2) fingerprint(8) file_bytes(8) group_cap(4)
 * member_cap(4) claim_cap(4) reserved(4) next_member_id(8) created_ns(8) changes(8)
 * lock byte(1) at 64 */
#define CM_MMB_OFF_MAGIC        0
#define CM_MMB_OFF_VERSION      (CM_MMB_OFF_MAGIC + 4)
#define CM_MMB_OFF_HEADER_BYTES (CM_MMB_OFF_VERSION + 2)
#define CM_MMB_OFF_FINGERPRINT  (CM_MMB_OFF_HEADER_BYTES + 2)
#define CM_MMB_OFF_FILE_BYTES   (CM_MMB_OFF_FINGERPRINT + 8)
#define CM_MMB_OFF_GROUP_CAP    (CM_MMB_OFF_FILE_BYTES + 8)
#define CM_MMB_OFF_MEMBER_CAP   (CM_MMB_OFF_GROUP_CAP + 4)
#define CM_MMB_OFF_CLAIM_CAP    (CM_MMB_OFF_MEMBER_CAP + 4)
#define CM_MMB_OFF_NEXT_ID      (CM_MMB_OFF_CLAIM_CAP + 4 + 4)   /* + reserved(4) */
#define CM_MMB_OFF_CREATED      (CM_MMB_OFF_NEXT_ID + 8)
#define CM_MMB_OFF_CHANGES      (CM_MMB_OFF_CREATED + 8)
#define CM_MMB_OFF_LOCK         (CM_MMB_OFF_CHANGES + 8)
_Static_assert(CM_MMB_OFF_LOCK == 64, "the mutation lock byte is at 64");

/* member record: state(4) pid(4) group_id(8) member_id(8) joined_ns(8) seen_ns(8)
 * patterns_len(4) reserved(20) patterns(192) */
#define CM_MMB_M_STATE          0
#define CM_MMB_M_PID            (CM_MMB_M_STATE + 4)
#define CM_MMB_M_GROUP_ID       (CM_MMB_M_PID + 4)
#define CM_MMB_M_MEMBER_ID      (CM_MMB_M_GROUP_ID + 8)
#define CM_MMB_M_JOINED         (CM_MMB_M_MEMBER_ID + 8)
#define CM_MMB_M_SEEN           (CM_MMB_M_JOINED + 8)
#define CM_MMB_M_PATTERNS_LEN   (CM_MMB_M_SEEN + 8)
#define CM_MMB_M_PATTERNS       (CM_MMB_M_PATTERNS_LEN + 4 + 20)      /* + reserved(20) */
_Static_assert(CM_MMB_M_PATTERNS + CM_MMB_PATTERNS_MAX == CM_MMB_MEMBER_BYTES, "record is full");

/* claim: group_id(8) owner(8) epoch(8) claimed_ns(8); owner 0 = released */
#define CM_MMB_C_GROUP_ID       0
#define CM_MMB_C_OWNER          (CM_MMB_C_GROUP_ID + 8)
#define CM_MMB_C_EPOCH          (CM_MMB_C_OWNER + 8)
#define CM_MMB_C_CLAIMED        (CM_MMB_C_EPOCH + 8)
_Static_assert(CM_MMB_C_CLAIMED + 8 == CM_MMB_CLAIM_BYTES, "claim is 32 bytes");
_Static_assert(offsetof(cm_ofs_header, lock) == CM_OFS_OFF_LOCK && CM_OFS_OFF_LOCK == 64,
               "offsets mutex at 64");
_Static_assert(sizeof(pthread_mutex_t) <= CM_LOCK_LINE_BYTES, "mutex fits its line");
_Static_assert(sizeof(cm_ofs_header) == CM_OFS_HEADER_BYTES, "header is one page");
_Static_assert(offsetof(cm_ofs_group, state) == CM_OFS_G_STATE, "group state");
_Static_assert(offsetof(cm_ofs_group, name_len) == CM_OFS_G_NAME_LEN, "group name_len");
_Static_assert(offsetof(cm_ofs_group, id) == CM_OFS_G_ID, "group id");
_Static_assert(offsetof(cm_ofs_group, created_ns) == CM_OFS_G_CREATED, "group created_ns");
_Static_assert(offsetof(cm_ofs_group, active_ns) == CM_OFS_G_ACTIVE, "group active_ns");
_Static_assert(offsetof(cm_ofs_group, patterns_len) == CM_OFS_G_PATTERNS_LEN, "group patterns_len");
_Static_assert(offsetof(cm_ofs_group, name) == CM_OFS_G_NAME && CM_OFS_G_NAME == 64, "group name at 64");
_Static_assert(offsetof(cm_ofs_group, patterns) == CM_OFS_G_PATTERNS && CM_OFS_G_PATTERNS == 1088,
               "group patterns at 1088");
_Static_assert(sizeof(cm_ofs_group) == CM_OFS_GROUP_BYTES, "group record size");
_Static_assert(offsetof(cm_ofs_slot, state) == CM_OFS_S_STATE, "slot state");
_Static_assert(offsetof(cm_ofs_slot, group) == CM_OFS_S_GROUP, "slot group");
_Static_assert(offsetof(cm_ofs_slot, group_id) == CM_OFS_S_GROUP_ID, "slot group_id");
_Static_assert(offsetof(cm_ofs_slot, next) == CM_OFS_S_NEXT && CM_OFS_S_NEXT == 16, "slot next at 16");
_Static_assert(offsetof(cm_ofs_slot, resets) == CM_OFS_S_RESETS, "slot resets");
_Static_assert(offsetof(cm_ofs_slot, acked_ns) == CM_OFS_S_ACKED, "slot acked_ns");
_Static_assert(offsetof(cm_ofs_slot, dropped) == CM_OFS_S_DROPPED, "slot dropped");
_Static_assert(offsetof(cm_ofs_slot, stream_len) == CM_OFS_S_STREAM_LEN, "slot stream_len");
_Static_assert(offsetof(cm_ofs_slot, stream) == CM_OFS_S_STREAM && CM_OFS_S_STREAM == 64,
               "slot stream at 64");
_Static_assert(sizeof(cm_ofs_slot) == CM_OFS_SLOT_BYTES, "slot record size");
_Static_assert(CM_OFS_STREAM_MAX >= 200, "slot holds any valid stream name");

/* ---- worker registry: POSIX shm "/cometmp-<hash>" (native endian) ------- */
/* FORMAT.md §8. Transient and rebuildable (never on disk), so native-endian
 * and not checksummed; the fingerprint (registry.c) makes builds with another
 * layout or pthread ABI refuse to share it. Owner: native/registry.c (init,
 * check, robust lock); cometmp/registry/table.py reads and writes the entries.
 *
 *   header  magic(4) version(2) header_bytes(2) fingerprint(8) size(4)
 *           max_entries(4) created_ns(8) unlinked(4) process_count(4)
 *           epoch(8) owner_uid(4) owner_gid(4) reserved(8) = 64
 *   lock    robust process-shared pthread mutex, its own 64-byte line (I20)
 *   masters 8 x { pid(4) pad(4) start_ticks(8) } = 128
 *   entries max_entries x 64 bytes, see cm_reg_entry
 */
#define CM_REG_MAGIC        0x47524D43u /* "CMRG" as LE bytes; published last by the creator */
#define CM_REG_VERSION      1           /* bump on any layout change */
#define CM_REG_MASTERS      8           /* attached masters: an old and a new one (USR2), with room */
#define CM_REG_MAX_ENTRIES  256         /* fixed (I24): 2 x the largest process count, 128 */
#define CM_REG_HEADER_BYTES 256         /* header + lock + masters: entries start on line 4 */
/* entry states (cm_reg_entry.state, written last: I23) */
#define CM_REG_FREE         0u          /* nobody; its shards are adopted by the live slots */
#define CM_REG_LIVE         1u          /* held by pid (a slot below process_count, else waiting) */
#define CM_REG_VACANT       2u          /* holder died or left: shards wait for a replacement (1 s) */

#define CM_REG_OFF_MAGIC         0
#define CM_REG_OFF_VERSION       (CM_REG_OFF_MAGIC + 4)
#define CM_REG_OFF_HEADER_BYTES  (CM_REG_OFF_VERSION + 2)
#define CM_REG_OFF_FINGERPRINT   (CM_REG_OFF_HEADER_BYTES + 2)
#define CM_REG_OFF_SIZE          (CM_REG_OFF_FINGERPRINT + 8)
#define CM_REG_OFF_MAX_ENTRIES   (CM_REG_OFF_SIZE + 4)
#define CM_REG_OFF_CREATED       (CM_REG_OFF_MAX_ENTRIES + 4)
#define CM_REG_OFF_UNLINKED      (CM_REG_OFF_CREATED + 8)
#define CM_REG_OFF_PROCESS_COUNT (CM_REG_OFF_UNLINKED + 4)
#define CM_REG_OFF_EPOCH         (CM_REG_OFF_PROCESS_COUNT + 4)
#define CM_REG_OFF_OWNER_UID     (CM_REG_OFF_EPOCH + 8)
#define CM_REG_OFF_OWNER_GID     (CM_REG_OFF_OWNER_UID + 4)
#define CM_REG_OFF_LOCK          (CM_REG_OFF_OWNER_GID + 4 + 8)   /* + reserved(8) */
#define CM_REG_OFF_MASTERS       (CM_REG_OFF_LOCK + CM_LOCK_LINE_BYTES)
#define CM_REG_MASTER_BYTES      16
#define CM_REG_OFF_ENTRIES       (CM_REG_OFF_MASTERS + CM_REG_MASTERS * CM_REG_MASTER_BYTES)
#define CM_REG_ENTRY_BYTES       64   /* one cache line: a heartbeat store touches no neighbour */
#define CM_REG_BYTES             (CM_REG_OFF_ENTRIES + CM_REG_MAX_ENTRIES * CM_REG_ENTRY_BYTES)
_Static_assert(CM_REG_OFF_ENTRIES == CM_REG_HEADER_BYTES, "entries follow the header");
_Static_assert(CM_REG_BYTES == 16640, "registry is 16 640 bytes");

/* master: pid(4) pad(4) start_ticks(8) = 16 */
#define CM_REGM_OFF_PID          0
#define CM_REGM_OFF_START        (CM_REGM_OFF_PID + 4 + 4)            /* + pad(4) */

/* entry: pid(4) state(4) start_ticks(8) epoch(8) heartbeat_ns(8) vacated_ns(8)
 *        key(8) last_pid(4) flags(4) reserved(8) = 64 */
#define CM_REGE_OFF_PID          0
#define CM_REGE_OFF_STATE        (CM_REGE_OFF_PID + 4)
#define CM_REGE_OFF_START        (CM_REGE_OFF_STATE + 4)
#define CM_REGE_OFF_EPOCH        (CM_REGE_OFF_START + 8)
#define CM_REGE_OFF_HEARTBEAT    (CM_REGE_OFF_EPOCH + 8)
#define CM_REGE_OFF_VACATED      (CM_REGE_OFF_HEARTBEAT + 8)
#define CM_REGE_OFF_KEY          (CM_REGE_OFF_VACATED + 8)
#define CM_REGE_OFF_LAST_PID     (CM_REGE_OFF_KEY + 8)
#define CM_REGE_OFF_FLAGS        (CM_REGE_OFF_LAST_PID + 4)

typedef struct cm_reg_entry {   /* one worker slot (or waiting entry), 64 bytes */
    int32_t  pid;               /* 0   0 = nobody */
    uint32_t state;             /* 4   CM_REG_FREE / LIVE / VACANT */
    uint64_t start_ticks;       /* 8   /proc/<pid>/stat field 22: pid reuse guard (I21) */
    uint64_t epoch;             /* 16  registry epoch when this holder took it */
    int64_t  heartbeat_ns;      /* 24  CLOCK_MONOTONIC, written by the holder */
    int64_t  vacated_ns;        /* 32  CLOCK_MONOTONIC when it became VACANT */
    int64_t  key;               /* 40  server's own worker id (uWSGI worker_id), -1 none */
    int32_t  last_pid;          /* 48  previous holder, for status */
    uint32_t flags;             /* 52 */
    uint8_t  pad[8];            /* 56 */
} cm_reg_entry;

typedef struct cm_reg_master {
    int32_t  pid;               /* 0   0 = unused */
    uint32_t pad;               /* 4 */
    uint64_t start_ticks;       /* 8 */
} cm_reg_master;

typedef struct cm_registry {
    uint32_t magic;             /* 0 */
    uint16_t version;           /* 4 */
    uint16_t header_bytes;      /* 6 */
    uint64_t fingerprint;       /* 8 */
    uint32_t size;              /* 16 */
    uint32_t max_entries;       /* 20 */
    int64_t  created_ns;        /* 24 */
    uint32_t unlinked;          /* 32 set under the lock before shm_unlink */
    uint32_t process_count;     /* 36 configured worker count (processCount) */
    uint64_t epoch;             /* 40 bumped on every ownership change; watched by appenders */
    uint32_t owner_uid;         /* 48 */
    uint32_t owner_gid;         /* 52 */
    uint8_t  pad0[8];           /* 56 */
    union { pthread_mutex_t mutex; uint8_t pad[CM_LOCK_LINE_BYTES]; } lock;  /* 64 */
    cm_reg_master masters[CM_REG_MASTERS];                   /* 128 */
    cm_reg_entry entries[CM_REG_MAX_ENTRIES];                /* 256 */
} cm_registry;

_Static_assert(offsetof(cm_registry, magic) == CM_REG_OFF_MAGIC, "registry magic");
_Static_assert(offsetof(cm_registry, version) == CM_REG_OFF_VERSION, "registry version");
_Static_assert(offsetof(cm_registry, header_bytes) == CM_REG_OFF_HEADER_BYTES, "registry header_bytes");
_Static_assert(offsetof(cm_registry, fingerprint) == CM_REG_OFF_FINGERPRINT, "registry fingerprint");
_Static_assert(offsetof(cm_registry, size) == CM_REG_OFF_SIZE, "registry size");
_Static_assert(offsetof(cm_registry, max_entries) == CM_REG_OFF_MAX_ENTRIES, "registry max_entries");
_Static_assert(offsetof(cm_registry, created_ns) == CM_REG_OFF_CREATED, "registry created_ns");
_Static_assert(offsetof(cm_registry, unlinked) == CM_REG_OFF_UNLINKED, "registry unlinked");
_Static_assert(offsetof(cm_registry, process_count) == CM_REG_OFF_PROCESS_COUNT, "registry process_count");
_Static_assert(offsetof(cm_registry, epoch) == CM_REG_OFF_EPOCH && CM_REG_OFF_EPOCH == 40, "epoch at 40");
_Static_assert(offsetof(cm_registry, owner_uid) == CM_REG_OFF_OWNER_UID, "registry owner_uid");
_Static_assert(offsetof(cm_registry, owner_gid) == CM_REG_OFF_OWNER_GID, "registry owner_gid");
_Static_assert(offsetof(cm_registry, lock) == CM_REG_OFF_LOCK && CM_REG_OFF_LOCK == 64, "lock at 64");
_Static_assert(sizeof(pthread_mutex_t) <= CM_LOCK_LINE_BYTES, "mutex fits its line");
_Static_assert(offsetof(cm_registry, masters) == CM_REG_OFF_MASTERS && CM_REG_OFF_MASTERS == 128,
               "masters at 128");
_Static_assert(offsetof(cm_registry, entries) == CM_REG_OFF_ENTRIES && CM_REG_OFF_ENTRIES == 256,
               "entries at 256");
_Static_assert(sizeof(cm_reg_master) == CM_REG_MASTER_BYTES, "master record size");
_Static_assert(offsetof(cm_reg_master, start_ticks) == CM_REGM_OFF_START, "master start_ticks");
_Static_assert(sizeof(cm_reg_entry) == CM_REG_ENTRY_BYTES, "a slot is one cache line");
_Static_assert(offsetof(cm_reg_entry, pid) == CM_REGE_OFF_PID, "entry pid");
_Static_assert(offsetof(cm_reg_entry, state) == CM_REGE_OFF_STATE, "entry state");
_Static_assert(offsetof(cm_reg_entry, start_ticks) == CM_REGE_OFF_START, "entry start_ticks");
_Static_assert(offsetof(cm_reg_entry, epoch) == CM_REGE_OFF_EPOCH, "entry epoch");
_Static_assert(offsetof(cm_reg_entry, heartbeat_ns) == CM_REGE_OFF_HEARTBEAT, "entry heartbeat_ns");
_Static_assert(offsetof(cm_reg_entry, vacated_ns) == CM_REGE_OFF_VACATED, "entry vacated_ns");
_Static_assert(offsetof(cm_reg_entry, key) == CM_REGE_OFF_KEY && CM_REGE_OFF_KEY == 40, "entry key at 40");
_Static_assert(offsetof(cm_reg_entry, last_pid) == CM_REGE_OFF_LAST_PID, "entry last_pid");
_Static_assert(offsetof(cm_reg_entry, flags) == CM_REGE_OFF_FLAGS, "entry flags");
_Static_assert(sizeof(cm_registry) == CM_REG_BYTES, "registry size");

/* ---- application metrics table: DIR/metrics/app (native endian) -------- */
/* FORMAT.md §10. prometheus_client values of every worker (cometmp.appmetrics,
 * native/appmetrics.c): one row per metric key (kind, mode, mmap_key JSON),
 * one 24-byte cell per (row, column); a column is a registry entry index
 * (0..CM_REG_MAX_ENTRIES-1) or CM_APM_UNSLOTTED for processes without one.
 * Fixed size, reserved whole at creation (I9), so no store into it can fault.
 * Keys are appended under an OFD write lock on byte 0 (I51); cells are
 * updated lock-free by atomic CAS adds and stores (I52).
 *
 *   header   magic(4) version(2) header_bytes(2) file_bytes(8) key_cap(4)
 *            columns(4) text_cap(4) nkeys(4) text_used(4) reserved(4)
 *            created_ns(8) reserved(16) = 64
 *   binders  columns x { pid(4) pad(4) start_ticks(8) }  who last bound each column
 *   keys     key_cap x { text_off(4) text_len(4) kind(1) mode(1) pad(6) }  at CM_APM_KEYS_OFF
 *   text     text_cap bytes of key JSON, appended                         at CM_APM_TEXT_OFF
 *   cells    key_cap x columns x { value(f64) stamp(f64) present(4) pad(4) } at CM_APM_CELLS_OFF
 */
#define CM_APM_MAGIC            0x4D504D43u /* "CMPM" on LE hosts */
#define CM_APM_VERSION          1
#define CM_APM_KEY_CAP          1024        /* rows: metric children x samples (buckets) */
#define CM_APM_COLUMNS          (CM_REG_MAX_ENTRIES + 1)
#define CM_APM_UNSLOTTED        CM_REG_MAX_ENTRIES   /* the column of slot-less processes */
#define CM_APM_TEXT_CAP         (256 * 1024)
#define CM_APM_HEADER_BYTES     64
#define CM_APM_BINDER_BYTES     16
#define CM_APM_KEY_BYTES        16
#define CM_APM_CELL_BYTES       24
#define CM_APM_ROW_BYTES        (CM_APM_COLUMNS * CM_APM_CELL_BYTES)
#define CM_APM_BINDERS_OFF      CM_APM_HEADER_BYTES
#define CM_APM_KEYS_OFF         8192        /* binders end at 64 + 257 x 16 = 4 176 */
#define CM_APM_TEXT_OFF         (CM_APM_KEYS_OFF + CM_APM_KEY_CAP * CM_APM_KEY_BYTES)
#define CM_APM_CELLS_OFF        (CM_APM_TEXT_OFF + CM_APM_TEXT_CAP)
#define CM_APM_FILE_BYTES       (CM_APM_CELLS_OFF + (uint64_t)CM_APM_KEY_CAP * CM_APM_ROW_BYTES)
#define CM_APM_KIND_COUNTER     1
#define CM_APM_KIND_GAUGE       2
#define CM_APM_KIND_HISTOGRAM   3
#define CM_APM_KIND_SUMMARY     4
#define CM_APM_OFF_MAGIC        0
#define CM_APM_OFF_VERSION      (CM_APM_OFF_MAGIC + 4)
#define CM_APM_OFF_HEADER_BYTES (CM_APM_OFF_VERSION + 2)
#define CM_APM_OFF_FILE_BYTES   (CM_APM_OFF_HEADER_BYTES + 2)
#define CM_APM_OFF_KEY_CAP      (CM_APM_OFF_FILE_BYTES + 8)
#define CM_APM_OFF_COLUMNS      (CM_APM_OFF_KEY_CAP + 4)
#define CM_APM_OFF_TEXT_CAP     (CM_APM_OFF_COLUMNS + 4)
#define CM_APM_OFF_NKEYS        (CM_APM_OFF_TEXT_CAP + 4)
#define CM_APM_OFF_TEXT_USED    (CM_APM_OFF_NKEYS + 4)
#define CM_APM_OFF_CREATED      (CM_APM_OFF_TEXT_USED + 4 + 4)          /* + reserved(4) */
#define CM_APM_B_PID            0
#define CM_APM_B_START          (CM_APM_B_PID + 4 + 4)                  /* + pad(4) */
#define CM_APM_K_TEXT_OFF       0
#define CM_APM_K_TEXT_LEN       (CM_APM_K_TEXT_OFF + 4)
#define CM_APM_K_KIND           (CM_APM_K_TEXT_LEN + 4)
#define CM_APM_K_MODE           (CM_APM_K_KIND + 1)
#define CM_APM_C_VALUE          0
#define CM_APM_C_STAMP          (CM_APM_C_VALUE + 8)
#define CM_APM_C_PRESENT        (CM_APM_C_STAMP + 8)

typedef struct cm_apm_header {
    uint32_t magic;             /* 0   CM_APM_MAGIC, stored last by the creator */
    uint16_t version;           /* 4   CM_APM_VERSION */
    uint16_t header_bytes;      /* 6   CM_APM_HEADER_BYTES */
    uint64_t file_bytes;        /* 8   CM_APM_FILE_BYTES */
    uint32_t key_cap;           /* 16 */
    uint32_t columns;           /* 20 */
    uint32_t text_cap;          /* 24 */
    uint32_t nkeys;             /* 28  rows published (release store, I51) */
    uint32_t text_used;         /* 32 */
    uint32_t reserved0;         /* 36 */
    int64_t  created_ns;        /* 40  CLOCK_REALTIME */
    uint8_t  reserved[16];      /* 48 */
} cm_apm_header;
typedef struct cm_apm_binder { int32_t pid; uint32_t pad; uint64_t start_ticks; } cm_apm_binder;
typedef struct cm_apm_key {
    uint32_t text_off; uint32_t text_len; uint8_t kind; uint8_t mode; uint8_t pad[6];
} cm_apm_key;
typedef struct cm_apm_cell { double value; double stamp; uint32_t present; uint32_t pad; } cm_apm_cell;
_Static_assert(sizeof(cm_apm_header) == CM_APM_HEADER_BYTES, "metrics header size");
_Static_assert(offsetof(cm_apm_header, file_bytes) == CM_APM_OFF_FILE_BYTES, "apm file_bytes");
_Static_assert(offsetof(cm_apm_header, key_cap) == CM_APM_OFF_KEY_CAP, "apm key_cap");
_Static_assert(offsetof(cm_apm_header, columns) == CM_APM_OFF_COLUMNS, "apm columns");
_Static_assert(offsetof(cm_apm_header, text_cap) == CM_APM_OFF_TEXT_CAP, "apm text_cap");
_Static_assert(offsetof(cm_apm_header, nkeys) == CM_APM_OFF_NKEYS, "apm nkeys");
_Static_assert(offsetof(cm_apm_header, text_used) == CM_APM_OFF_TEXT_USED, "apm text_used");
_Static_assert(offsetof(cm_apm_header, created_ns) == CM_APM_OFF_CREATED, "apm created_ns");
_Static_assert(sizeof(cm_apm_binder) == CM_APM_BINDER_BYTES, "binder size");
_Static_assert(offsetof(cm_apm_binder, start_ticks) == CM_APM_B_START, "binder start_ticks");
_Static_assert(sizeof(cm_apm_key) == CM_APM_KEY_BYTES, "key record size");
_Static_assert(offsetof(cm_apm_key, kind) == CM_APM_K_KIND, "key kind");
_Static_assert(offsetof(cm_apm_key, mode) == CM_APM_K_MODE, "key mode");
_Static_assert(sizeof(cm_apm_cell) == CM_APM_CELL_BYTES, "cell size");
_Static_assert(offsetof(cm_apm_cell, stamp) == CM_APM_C_STAMP, "cell stamp");
_Static_assert(offsetof(cm_apm_cell, present) == CM_APM_C_PRESENT, "cell present");
_Static_assert(CM_APM_BINDERS_OFF + CM_APM_COLUMNS * CM_APM_BINDER_BYTES <= CM_APM_KEYS_OFF,
               "binders fit before the key table");
_Static_assert(CM_APM_CELLS_OFF % 4096 == 0, "cells start on a page");
_Static_assert(CM_APM_FILE_BYTES == 6602752, "metrics table is 6 602 752 bytes");

#endif /* CM_FORMAT_H */
