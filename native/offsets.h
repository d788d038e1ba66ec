/* offsets.h - byte layout of the consumer-offsets file DIR/consumers/offsets.
 *
 * docs/FORMAT.md §7 ("Consumer offsets file") is normative; cometmp/offsets.py mirrors
 * these constants and tests/unit/test_offsets.py compares them with the ones
 * the compiled core reports (cm_offsets_layout()).
 *
 * One native-endian shared mapping per data directory, fixed size, sparse:
 *
 *   [0, 4096)                       header: identity line + robust mutex
 *   [4096, +GROUP_CAP*GROUP_BYTES)  group table: one record per consumer group
 *   [.., +SLOT_CAP*SLOT_BYTES)      slot table: one record per (group, stream)
 *
 * Only the header's high-water marks bound the scans, so untouched parts of
 * the tables stay holes on disk. Claims and deletions run under the header's
 * robust process-shared mutex (I12); acks are lock-free CAS-max on a slot's
 * `next` word (I13).
 */
#include <stdint.h>
#include <stddef.h>
#include <pthread.h>

#define CM_OFS_MAGIC            0x464F4D43u /* "CMOF" */
#define CM_OFS_VERSION          1
#define CM_OFS_HEADER_BYTES     4096
#define CM_OFS_GROUP_BYTES      2048
#define CM_OFS_GROUP_CAP        4096
#define CM_OFS_SLOT_BYTES       512
#define CM_OFS_SLOT_CAP         65536
#define CM_OFS_GROUPS_OFF       CM_OFS_HEADER_BYTES
#define CM_OFS_SLOTS_OFF        (CM_OFS_GROUPS_OFF + CM_OFS_GROUP_CAP * CM_OFS_GROUP_BYTES)
#define CM_OFS_FILE_BYTES       (CM_OFS_SLOTS_OFF + CM_OFS_SLOT_CAP * CM_OFS_SLOT_BYTES)
#define CM_OFS_NAME_MAX         1024  /* group name bytes */
#define CM_OFS_PATTERNS_MAX     960   /* '\n'-joined fnmatch patterns a group reads */
#define CM_OFS_STREAM_MAX       440   /* stream name bytes in a slot */
#define CM_OFS_UNSET            UINT64_MAX /* slot.next before the first ack */

/* record states: a record is usable only once `state` is LIVE (release store,
 * written last), so a claimer killed half-way leaves a FREE record behind */
#define CM_OFS_FREE             0u
#define CM_OFS_LIVE             1u
#define CM_OFS_DELETING         2u

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
    union { pthread_mutex_t mutex; uint8_t pad[64]; } lock; /* 64: robust, process-shared */
    uint8_t  reserved[CM_OFS_HEADER_BYTES - 128];
} cm_ofs_header;

/* group: state(4) name_len(4) id(8) created_ns(8) active_ns(8) patterns_len(4)
 *        reserved(28) name(1024) patterns(960) = 2048 */
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
 *       dropped(8) stream_len(4) reserved(20) stream(440) = 512 */
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

_Static_assert(offsetof(cm_ofs_header, lock) == 64, "offsets mutex at 64");
_Static_assert(sizeof(pthread_mutex_t) <= 64, "mutex fits its line");
_Static_assert(sizeof(cm_ofs_header) == CM_OFS_HEADER_BYTES, "header is one page");
_Static_assert(offsetof(cm_ofs_group, name) == 64, "group name at 64");
_Static_assert(offsetof(cm_ofs_group, patterns) == 1088, "group patterns at 1088");
_Static_assert(sizeof(cm_ofs_group) == CM_OFS_GROUP_BYTES, "group record size");
_Static_assert(offsetof(cm_ofs_slot, next) == 16, "slot next at 16");
_Static_assert(offsetof(cm_ofs_slot, stream) == 64, "slot stream at 64");
_Static_assert(sizeof(cm_ofs_slot) == CM_OFS_SLOT_BYTES, "slot record size");
_Static_assert(CM_OFS_STREAM_MAX >= 200, "slot holds any valid stream name");
