/* cometmp.h - public C API of the cometmp core.
 *
 * This file is read verbatim as the cffi cdef (native/build_ffi.py), so it
 * holds only declarations cffi understands: no include guards, no #if, and
 * #define only for integer constants. C sources include <stdint.h> and
 * <stddef.h> before it. Every function returns CM_OK or a negative CM_E_*;
 * cm_last_error() then describes the failure (path, offset, errno) for the
 * calling thread. cometmp/_ffi.py maps codes to exceptions in one place.
 */

#define CM_OK            0
#define CM_E_IO         -1   /* an OS call failed; cm_last_errno() has errno */
#define CM_E_NOSPACE    -2   /* ENOSPC/EDQUOT while allocating; nothing written */
#define CM_E_TOOBIG     -3   /* entry larger than max_entry_bytes */
#define CM_E_CORRUPT    -4   /* a record or header failed validation */
#define CM_E_FORMAT     -5   /* bad magic, version or layout fingerprint */
#define CM_E_READONLY   -6   /* write through a read-only handle */
#define CM_E_FORKED     -7   /* handle created in another process: reopen */
#define CM_E_NOTFOUND   -8   /* no such entry / file */
#define CM_E_CLOSED     -9   /* handle already closed */
#define CM_E_ARG        -10  /* invalid argument */

#define CM_DURABILITY_NONE      0
#define CM_DURABILITY_INTERVAL  1
#define CM_DURABILITY_ALWAYS    2

/* cm_record_at() results besides negative errors */
#define CM_REC_VALID     1
#define CM_REC_END       0

typedef struct cm_shard cm_shard;

typedef struct cm_options {
    uint64_t segment_bytes;     /* rotation size of new segments */
    uint32_t max_entry_bytes;   /* larger entries fail with CM_E_TOOBIG */
    uint32_t index_interval;    /* bytes between sparse index entries */
    uint32_t alloc_chunk;       /* bytes fallocated ahead of the tail */
    int32_t  durability;        /* CM_DURABILITY_* */
    uint32_t stream_crc;        /* crc32c of the stream name, stamped in headers */
    int32_t  create;            /* create the stream if missing */
    int32_t  prefault;          /* prefault ahead of the tail in a background thread, while a core is idle */
} cm_options;

typedef struct cm_iov {
    const void *data;
    uint32_t len;
    uint32_t flags;             /* CM_REC_FLAG_* stored in the frame */
} cm_iov;

typedef struct cm_record {
    uint64_t entry;
    int64_t  ts_ns;
    uint64_t offset;            /* of the frame inside its segment */
    uint32_t len;               /* stored payload bytes */
    uint32_t flags;
    uint32_t frame_bytes;       /* header + payload */
    uint32_t seq;               /* entry - segment base */
} cm_record;

typedef struct cm_open_report {
    uint64_t bytes_dropped;     /* torn-tail bytes zeroed at open */
    uint64_t corrupt_records;   /* CRC failures found before the tail */
    int32_t  state_rebuilt;     /* the state file was missing or invalid */
    int32_t  scanned_full;      /* the active segment was rescanned from its start */
} cm_open_report;

typedef struct cm_snapshot {
    uint64_t committed;
    uint64_t active_base;
    uint64_t tail;
    uint64_t alloc_end;
    uint64_t first_entry;
    int64_t  last_ts;
    uint64_t counters[32];
} cm_snapshot;

/* shard.c: one stream's writer/reader handle. Not shared across fork.
 * Lifetime (ARCHITECTURE.md §11): open returns one reference; close waits for
 * the calls in flight, releases fds and mappings, and makes every later call
 * return CM_E_CLOSED; the memory goes with the last cm_shard_unref. */
int  cm_shard_open(const char *dir, const cm_options *opt, cm_shard **out,
                   cm_open_report *report);
void cm_shard_close(cm_shard *s);
void cm_shard_unref(cm_shard *s);
int  cm_append(cm_shard *s, const cm_iov *iov, uint32_t n,
               uint64_t *first_entry, uint32_t *written);
int  cm_sync(cm_shard *s);
int  cm_shard_snapshot(cm_shard *s, cm_snapshot *out);
int  cm_shard_set_first_entry(cm_shard *s, uint64_t first_entry);
int  cm_shard_add_counter(cm_shard *s, uint32_t slot, uint64_t delta);
/* this process's next segment, made ahead of need (native/spare.c) */
#define CM_SHARD_SPARE_NONE 0
#define CM_SHARD_SPARE_BUILDING 1
#define CM_SHARD_SPARE_READY 2
#define CM_SHARD_SPARE_FAILED 3
/* cm_shard_headroom(): an extension of the stream's reservation on the prefault thread */
#define CM_SHARD_HEADROOM_NONE 0
#define CM_SHARD_HEADROOM_EXTENDING 1
#define CM_SHARD_HEADROOM_DONE 2
int  cm_shard_spare(cm_shard *s);
int  cm_shard_headroom(cm_shard *s);

/* segment.c: stateless record parsing over a mapped segment (map starts at the
 * segment header, offset 0).
 * The binding of a segment's frames (FORMAT.md §2.2, I17): a v2 frame's crc is
 * seeded with stream_id(8) entry(8), entry = base + its sequence, where
 * stream_id comes from the segment's header and base from the file name (the
 * caller's `base`); a v1 frame is bound to nothing. cm_segment_key() reads it
 * once per segment. */
typedef struct cm_seg_key {
    uint64_t base;              /* entry number of sequence 0: the file name's base */
    uint64_t stream_id;         /* the header's stream_id (0 in v1) */
    uint32_t version;           /* the header's version: 1 = unbound, otherwise v2 rule */
    uint32_t id_crc;            /* cm_crc32c(0, stream_id as 8 LE bytes) */
} cm_seg_key;
void cm_segment_key(const uint8_t *map, uint64_t size, uint64_t base, cm_seg_key *key);
/* cm_frame_check: CM_REC_VALID, CM_REC_END, or -CM_DAMAGE_* (no message);
 * cm_record_at: the same with CM_E_CORRUPT and a message for cm_last_error(). */
int  cm_frame_check(const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                    uint32_t expect_seq, cm_record *out);
int  cm_frame_check_key(const uint8_t *map, uint64_t size, const cm_seg_key *key, uint64_t off,
                        uint32_t expect_seq, cm_record *out);
int  cm_record_at(const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                  uint32_t expect_seq, cm_record *out);
int  cm_segment_header_check(const uint8_t *map, uint64_t size,
                             uint64_t *base, uint64_t *capacity);

/* walker.c: the one walk over a segment's records (FORMAT.md 2.4). See the
 * comment at the top of walker.c for the rule. */
#define CM_WALK_DONE      0
#define CM_WALK_RECORD    1
#define CM_WALK_DAMAGE    2
#define CM_SEQ_ANY        0xFFFFFFFF   /* stop: no limit */

/* cm_damage.cause: the validity rule the frame at `offset` failed */
#define CM_DAMAGE_LENGTH  2   /* V2: the payload runs past the end of the file */
#define CM_DAMAGE_FLAGS   3   /* V3: unknown flag bits */
#define CM_DAMAGE_CRC     4   /* V4: checksum mismatch */
#define CM_DAMAGE_SEQ     5   /* V5: another sequence than the expected one */
#define CM_DAMAGE_END     6   /* V1 end of data below the published count: zeroed or cut */

/* cm_damage.end: how the damaged stretch ends */
#define CM_DAMAGE_RESYNC  1   /* a valid record follows at `resume`: corruption */
#define CM_DAMAGE_LIMIT   2   /* none before the limit: the published entries up to it are lost */
#define CM_DAMAGE_TORN    3   /* none, and nothing published is lost: a torn tail */

typedef struct cm_walk {
    const uint8_t *map;
    cm_seg_key key;       /* the frames' binding (cm_segment_key) */
    uint64_t size;        /* bytes of map the walk may look at */
    uint64_t off;         /* offset of the next frame */
    uint32_t seq;         /* sequence expected there */
    uint32_t stop;        /* walk only sequences below this (CM_SEQ_ANY: no limit) */
    uint32_t published;   /* sequences below this were published: an end of data before it is damage */
    int32_t  done;
} cm_walk;

typedef struct cm_damage {
    uint64_t offset;          /* of the invalid frame, where `first_seq` was expected */
    uint64_t resume;          /* offset of the next valid record (RESYNC), else = offset */
    uint32_t first_seq;       /* first sequence of the damaged stretch */
    uint32_t lost;            /* entries lost: found - first_seq, limit - first_seq, or 0 (torn) */
    int32_t  cause;           /* CM_DAMAGE_LENGTH .. CM_DAMAGE_END */
    int32_t  end;             /* CM_DAMAGE_RESYNC, _LIMIT or _TORN */
    uint32_t frame_len;       /* raw len and seqflags of the invalid frame (0 at an end of data) */
    uint32_t frame_seqflags;
} cm_damage;

void cm_walk_init(cm_walk *w, const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                  uint32_t seq, uint32_t stop, uint32_t published);
int  cm_walk_next(cm_walk *w, cm_record *rec, cm_damage *dmg);
/* cm_walk_next until a record with seq >= target, damage, or the end */
int  cm_walk_seek(cm_walk *w, uint32_t target, cm_record *rec, cm_damage *dmg);
/* walk to the end: count records and lost entries; *last = the last record */
int  cm_walk_count(cm_walk *w, cm_record *last, uint64_t *records, uint64_t *lost);
int64_t cm_resync(const cm_walk *w, uint64_t from, uint32_t min_seq);
/* text of a damage cause for messages (never parsed back) */
const char *cm_damage_reason(int32_t cause, uint32_t len, uint32_t seqflags, uint32_t expect_seq);

/* index.c: lookups in a mapped index file (header + entries, FORMAT.md 3), by
 * binary search; no entry is trusted: callers check the record it names (I8).
 * CM_OK with the entry, CM_E_NOTFOUND when no entry is at or before the key. */
int  cm_index_floor(const uint8_t *idx, uint64_t idx_bytes, uint32_t rel,
                    uint32_t *entry_rel, uint64_t *entry_off, int64_t *entry_ts);
int  cm_index_floor_time(const uint8_t *idx, uint64_t idx_bytes, int64_t ts_ns,
                         uint32_t *entry_rel, uint64_t *entry_off, int64_t *entry_ts);
/* the entries of a segment's index, built by walking it (I8): writes up to
 * `cap` entries at idx + 32 (the caller provides the header), *count = entries */
int  cm_index_build(const uint8_t *seg, uint64_t seg_size, uint64_t base, uint32_t interval,
                    uint8_t *idx, uint64_t idx_bytes, uint32_t *count);

/* crc32c.c */
uint32_t cm_crc32c(uint32_t crc, const void *buf, size_t len);

/* error.c */
const char *cm_last_error(void);
int  cm_last_errno(void);
uint64_t cm_fork_generation(void);

/* prealloc.c: what this process's prefault thread did (docs/PERFORMANCE.md,
 * "Prefault policy"): requests served, bytes it populated, populates that
 * failed, and the thread's CPU time (CLOCK_THREAD_CPUTIME_ID) */
typedef struct cm_prefault_stats_t {
    uint64_t requests;
    uint64_t bytes_populated;
    uint64_t failures;
    uint64_t thread_cpu_ns;
    uint64_t extensions;        /* headroom fallocates run for appenders (headroom.c) */
    uint64_t extension_failures;
} cm_prefault_stats_t;
void cm_prefault_stats(cm_prefault_stats_t *out);
void cm_prefault_drain(void);

/* api.c: function table handed to the CPython fast path (_appender) */
void *cm_api_table(void);

/* format.c: every layout constant of native/format.h (segment, record, index,
 * state page, offsets file, registry), for the test that compares them with
 * the Python mirrors (tests/unit/test_format_constants.py) */
typedef struct cm_constant { const char *name; uint64_t value; } cm_constant;
const cm_constant *cm_format_constants(uint32_t *count);

/* the layout fingerprints of the three shared mappings (state.c, offsets.c,
 * registry.c): version, layout and pthread ABI, FORMAT.md §4, §7, §8 */
uint64_t cm_state_fingerprint(void);

/* registry.c: the worker registry in POSIX shm (cometmp/registry/table.py).
 * The caller maps the object; these own its init, check and robust lock
 * (layout in native/format.h). */
uint64_t cm_registry_bytes(void);
uint64_t cm_registry_fingerprint(void);
int  cm_registry_init(void *base, uint64_t size, uint32_t process_count);
int  cm_registry_check(const void *base, uint64_t size);
int  cm_registry_lock(void *base, const char *name, int32_t timeout_ms);
void cm_registry_unlock(void *base);
uint64_t cm_registry_bump_epoch(void *base);
int64_t cm_fs_type(const char *path);

/* appmetrics.c: the application metrics table DIR/metrics/app (layout in
 * native/format.h CM_APM_*, FORMAT.md §10; cometmp/appmetrics.py). The caller
 * maps the whole file; `cell` is a byte offset of a cell inside it. */
int  cm_appmetrics_init(void *base, uint64_t size, int64_t now_ns);
int  cm_appmetrics_check(const void *base, uint64_t size);
int  cm_appmetrics_add(void *base, uint64_t size, uint64_t cell, double amount);
int  cm_appmetrics_set(void *base, uint64_t size, uint64_t cell, double value, double stamp);
int  cm_appmetrics_clear(void *base, uint64_t size, uint64_t cell);
uint32_t cm_appmetrics_nkeys(const void *base);
void cm_appmetrics_publish(void *base, uint32_t nkeys);

/* notify.c: sleep until a writer publishes (issue 4). `state` is a stream's
 * state page mapped read-write (the waiter counts itself in `waiters`).
 * 1: the sequence moved (or a signal: re-check); 0: timed out; < 0: error.
 * timeout_ns < 0 waits without limit. */
int  cm_wait(void *state, uint32_t seen, int64_t timeout_ns);
int  cm_wait_many(void *const *states, const uint32_t *seen, uint32_t n, int64_t timeout_ns);
/* wake every thread of this process sleeping on `state` (a closing consumer) */
int  cm_wake(void *state);

/* names.c: the one name rule (FORMAT.md §1, §7). CM_OK or the rule broken. */
#define CM_NAME_MAX_BYTES   200
#define CM_NAME_EMPTY       1   /* no bytes */
#define CM_NAME_TOO_LONG    2   /* above CM_NAME_MAX_BYTES (groups: CM_OFS_NAME_MAX) */
#define CM_NAME_NUL         3   /* a NUL byte */
#define CM_NAME_SEPARATOR   4   /* '/' or '\\' */
#define CM_NAME_DOTDOT      5   /* ".." */
#define CM_NAME_CHARS       6   /* another byte (groups: a newline); or a bad first byte */
int  cm_stream_name_check(const char *name, size_t len);
int  cm_group_name_check(const char *name, size_t len);

/* offsets.c: the consumer-offsets file (layout in native/format.h, cometmp/offsets.py) */
typedef struct cm_offsets cm_offsets;
/* lifetime as cm_shard: close waits for calls in flight, later calls return
 * CM_E_CLOSED (unlock excepted); the mapping goes with the last unref */
int  cm_offsets_open(const char *path, int create, cm_offsets **out);
void cm_offsets_close(cm_offsets *o);
void cm_offsets_unref(cm_offsets *o);
void *cm_offsets_base(cm_offsets *o);
uint64_t cm_offsets_fingerprint(void);
int  cm_offsets_lock(cm_offsets *o);
int  cm_offsets_unlock(cm_offsets *o);
int  cm_offsets_group(cm_offsets *o, const char *name, uint32_t len, int create, int64_t now_ns,
                      uint32_t *index, uint64_t *id);
int  cm_offsets_add_pattern(cm_offsets *o, uint32_t group, uint64_t id, const char *pat, uint32_t len);
int  cm_offsets_touch(cm_offsets *o, uint32_t group, uint64_t id, int64_t now_ns);
int  cm_offsets_delete_group(cm_offsets *o, uint32_t group, uint64_t id);
int  cm_offsets_slot(cm_offsets *o, uint32_t group, uint64_t id, const char *stream, uint32_t len,
                     int create, uint32_t *index);
int  cm_offsets_ack(cm_offsets *o, uint32_t slot, uint64_t id, uint64_t next, int64_t now_ns);
int  cm_offsets_set(cm_offsets *o, uint32_t slot, uint64_t id, uint64_t next, int64_t now_ns);
int  cm_offsets_add_dropped(cm_offsets *o, uint32_t slot, uint64_t id, uint64_t n);

/* failpoint.c: the test build's failpoints (failpoint.h), for cometmp/failpoint.py.
 * cm_failpoints_compiled: 1 in the failpoint build, else 0; cm_failpoint_eval: 0,
 * or the errno the named point fails with now (always 0 in the default build). */
int  cm_failpoints_compiled(void);
int  cm_failpoint_eval(const char *name);
