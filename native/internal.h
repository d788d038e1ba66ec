/* internal.h - declarations shared by the C core's modules (not public). */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>
#include "format.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cometmp writes little-endian files through memcpy; big-endian hosts are unsupported"
#endif

#define CM_E_BUSY (-11) /* internal: the shard lock is contended (nonblocking append) */

int cm_fail(int code, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* handle.c: the lifetime of a native object a binding may close while another
 * thread is inside a call on it (ARCHITECTURE.md §11, L1-L4) */
typedef struct cm_life {
    uint32_t word;              /* 2 * calls in flight | closed (bit 0) */
    uint32_t refs;              /* owners of the struct's memory */
    uint64_t gen;               /* fork generation at init (I10) */
} cm_life;

void cm_life_init(cm_life *l);
void cm_life_wake(cm_life *l);
int  cm_life_close(cm_life *l);     /* 1: this call closed it and no call is in flight */
void cm_life_ref(cm_life *l);
int  cm_life_unref(cm_life *l);     /* 1: the last reference is gone: free the struct */
int  cm_closed_error(const char *what);

/* L1: every call on a handle is bracketed by these; CM_E_CLOSED once closed */
static inline int cm_enter(cm_life *l, const char *what) {
    if (__builtin_expect(__atomic_add_fetch(&l->word, 2u, __ATOMIC_SEQ_CST) & 1u, 0)) {
        if (__atomic_sub_fetch(&l->word, 2u, __ATOMIC_SEQ_CST) == 1u) cm_life_wake(l);
        return cm_closed_error(what);
    }
    return 0;
}

static inline void cm_leave(cm_life *l) {
    if (__builtin_expect(__atomic_sub_fetch(&l->word, 2u, __ATOMIC_SEQ_CST) == 1u, 0))
        cm_life_wake(l);
}

static inline void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int64_t cm_now_ns(void);
void cm_crc32c_x3(const uint8_t *p[3], const size_t n[3], uint32_t out[3]);

/* segment.c */
void cm_segment_header_init(uint8_t *h, uint64_t base, uint64_t capacity,
                            uint32_t stream_crc, uint64_t stream_id);
uint32_t cm_frame_head_crc(const cm_seg_key *key, uint32_t seq, const uint8_t *frame);
uint64_t cm_frame_solve_stream_id(const uint8_t *map, uint64_t size, uint64_t base);
uint64_t cm_new_stream_id(void);
void cm_record_fill(uint8_t *p, const void *data, uint32_t len, int64_t ts, uint32_t seqflags);
void cm_record_seal(uint8_t *const frames[], const uint32_t lens[], const uint32_t heads[], int k);
int  cm_segment_create(int dirfd, const char *dir, uint64_t base, uint64_t capacity,
                       uint64_t prealloc, uint32_t stream_crc, uint64_t stream_id, int durable,
                       int *fd_out);
int  cm_segment_create_tmp(int dirfd, const char *dir, uint64_t base, uint64_t capacity,
                           uint64_t prealloc, uint32_t stream_crc, uint64_t stream_id,
                           int durable, int *fd_out);
void cm_segment_name(char *buf, size_t n, uint64_t base, const char *suffix);
uint64_t cm_zero_range(uint8_t *map, uint64_t from, uint64_t to);

/* fs.c: every open below a data directory (I30 no symbolic links, I31 modes) */
int  cm_fs_openat(int dirfd, const char *name, int flags, mode_t mode);
int  cm_fs_fail(int err, int dirfd, const char *dir, const char *name, const char *verb);
int  cm_fs_open_dir(const char *dir, int inside, int create);
int  cm_fs_tmpfile(int dirfd);
int  cm_fs_link_tmpfile(int fd, int dirfd, const char *name);

/* index.c */
void cm_index_header_init(uint8_t *h, uint64_t base, uint32_t interval);
uint64_t cm_index_capacity(uint64_t seg_capacity, uint32_t interval);
int  cm_index_create(int dirfd, const char *dir, uint64_t base, uint64_t seg_capacity,
                     uint32_t interval, int durable, int *fd_out);

/* prealloc.c */
/* A request a shard hands the prefault thread (a spare, an extension of the reservation)
 * and lets go of before the thread is done with it: listed under the thread's lock until
 * the thread frees it, so a forked child, whose copy nobody else holds, frees that copy
 * (the lifetime rule in prealloc.c). */
typedef struct cm_orphan {
    struct cm_orphan *next;
    void (*destroy)(struct cm_orphan *);   /* close, unmap, free */
} cm_orphan;
void cm_prealloc_lock(void);
void cm_prealloc_unlock(void);
void cm_prealloc_orphan_add(cm_orphan *o);      /* caller holds the lock */
void cm_prealloc_orphan_free(cm_orphan *o);     /* caller holds the lock */
uint64_t cm_prealloc_call_locked(void (*fn)(void *), void *arg);
void cm_prealloc_populate(uint8_t *addr, size_t len);
uint64_t cm_prealloc_unmap(uint8_t **addr, size_t len);
void cm_prealloc_wait(uint64_t ticket);
uint64_t cm_prealloc_call(void (*fn)(void *), void *arg);
size_t cm_prealloc_populate_here(uint8_t *addr, size_t len);
void cm_prealloc_count_populate(size_t done, size_t len);
void cm_prealloc_count_extension(int failed);
void cm_prealloc_close(int *fd);

/* headroom.c: a stream's headroom extended on the prefault thread */
enum { CM_HEADROOM_PENDING = 0, CM_HEADROOM_DONE = 1, CM_HEADROOM_ABANDONED = 2 };
typedef struct cm_headroom {
    cm_orphan orphan;           /* first: the list node once abandoned */
    int state;                  /* CM_HEADROOM_*, atomic (the lifetime rule in headroom.c) */
    int fd;                     /* a dup of the segment's, closed by the thread */
    int error;                  /* fallocate's errno, 0 = [from, to) is allocated */
    int populate;
    uint64_t from, to;          /* segment offsets, page-aligned */
    uint8_t *map;               /* the mapping at `from` */
    uint64_t gen;               /* fork generation that asked (I10) */
} cm_headroom;
int  cm_headroom_request(cm_headroom **slot, int seg_fd, uint8_t *seg_map, uint64_t from,
                         uint64_t to, int populate);
int  cm_headroom_state(const cm_headroom *h);
void cm_headroom_drop(cm_headroom **slot);

/* spare.c: the next segment's files, made ahead on the prefault thread */
enum { CM_SPARE_PENDING = 0, CM_SPARE_READY = 1, CM_SPARE_FAILED = 2, CM_SPARE_ABANDONED = 3 };
typedef struct cm_spare {
    cm_orphan orphan;           /* first: the list node once abandoned */
    int state;                  /* CM_SPARE_*, atomic (the lifetime rule in spare.c) */
    int dirfd;                  /* a dup of the stream directory's */
    uint64_t cap, icap, pre;    /* segment size, index size, blocks preallocated */
    int populate, durable;
    int fd, ifd;                /* unnamed (O_TMPFILE) segment and index */
    uint8_t *map, *imap;
    uint64_t ticket;            /* the build's, for cm_prealloc_wait() */
    uint64_t gen;               /* fork generation that asked for it (I10) */
} cm_spare;
void cm_spare_request(cm_spare **slot, int dirfd, uint64_t cap, uint64_t icap, uint64_t pre,
                      int populate, int durable);
int  cm_spare_state(const cm_spare *sp);
uint64_t cm_spare_drop(cm_spare **slot);
void cm_spare_taken(cm_spare *sp);

/* notify.c: futex_waitv's limit (FUTEX_WAITV_MAX); cm_wait_many sleeps on at most this
   many pages, and reader.c's wait_woken takes at most this many cursors */
#define CM_WAITV_MAX 128

/* state.c */
int  cm_state_init(cm_state *st);

/* the function table handed to the CPython fast path (api.c, appender.c) */
#define CM_API_VERSION 4   /* 3: record_at and walk_init take the segment base (I17);
                              4: wait_many, for the woken read (reader.c) */
typedef struct cm_api {
    int version;
    int (*append)(struct cm_shard *s, const struct cm_iov *iov, uint32_t n,
                  uint64_t *first_entry, uint32_t *written, int nonblock);
    const char *(*last_error)(void);
    int (*last_errno)(void);
    /* appended for cometmp._reader (native/reader.c); keep new fields last */
    int (*record_at)(const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                     uint32_t expect_seq, struct cm_record *out);
    /* version 2: owned shard references for the Appender (L3); shard_ref
       returns NULL unless p is the head of a live cm_shard */
    struct cm_shard *(*shard_ref)(void *p);
    void (*shard_unref)(struct cm_shard *s);
    /* appended for the one walker (native/walker.c) */
    void (*walk_init)(struct cm_walk *w, const uint8_t *map, uint64_t size, uint64_t base,
                      uint64_t off, uint32_t seq, uint32_t stop, uint32_t published);
    int (*walk_next)(struct cm_walk *w, struct cm_record *rec, struct cm_damage *dmg);
    /* version 4: the wait of the woken read (reader.c's wait_woken) */
    int (*wait_many)(void *const *states, const uint32_t *seen, uint32_t n, int64_t timeout_ns);
} cm_api;

struct cm_shard *cm_shard_ref_raw(void *p);
int cm_append_ex(struct cm_shard *s, const struct cm_iov *iov, uint32_t n,
                 uint64_t *first_entry, uint32_t *written, int nonblock);
