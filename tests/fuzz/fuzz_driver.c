/* fuzz_driver.c - a seeded mutation fuzzer for the core's parsers (issue 9 item 7, I26).
 *
 * Runs in the test tier only: tests/fuzz/test_fuzz_parsers.py builds it with gcc
 * -fsanitize=address,undefined -fno-sanitize-recover=undefined against the core's
 * sources (native/build_ffi.py CORE_SOURCES; no clang here, so no libFuzzer) and
 * drives it. Not thread safe; one process per run.
 *
 *   fuzz_driver run TARGET SEED FIRST COUNT WORKDIR SEEDFILE...
 *       input i (FIRST <= i < FIRST+COUNT) is a mutation of one seed file, made by
 *       an RNG seeded with (SEED, i) alone, so any input replays from its number.
 *       Before running input i it is written to WORKDIR/current (the harness keeps
 *       that file as a crash-* regression when a sanitizer aborts the process).
 *       Prints "done N" at the end.
 *   fuzz_driver replay TARGET WORKDIR FILE...
 *       runs each file once, unmutated (the regression files).
 *
 * Targets, each over a private copy (a malloc'd buffer of the exact size, so ASan
 * sees a read one byte past it, or files in a fresh directory under WORKDIR):
 *
 *   segment   a segment file: header check, walks (any / published limits), resync,
 *             index build, point reads at every frame offset the walk yields
 *   index     an index file: floor / floor_time lookups at many keys over its table
 *   recovery  a stream directory bundled as len(4) state, len(4) idx, the segment:
 *             cm_shard_open (state page + recovery + index), three appends, sync, close
 *   offsets   the offsets file, compacted: header + groups 0-3, then slots 0-15
 *             (written back at their offsets into a sparse file of the real size):
 *             open, find/create groups and slots, add_pattern, ack, set, delete
 *   registry  the registry object: check, then lock/unlock when it passes
 *
 * The robust mutexes' bytes (state page, offsets header, registry header) are put
 * back to a freshly initialised mutex before each run: a damaged lock word is issue 9
 * item 2's (locks that cannot hang), not a parser's, and would only stall the loop.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cometmp.h"
#include "internal.h"

/* ------------------------------------------------------------------ rng */

static uint64_t rng_state;
static uint64_t rnd(void) {                 /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* -------------------------------------------------------------- buffers */

typedef struct { uint8_t *p; size_t n; } buf;

static buf read_file(const char *path) {
    buf b = {0};
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b.n = (size_t)n;
    b.p = malloc(b.n ? b.n : 1);
    if (b.n && fread(b.p, 1, b.n, f) != b.n) { perror(path); exit(2); }
    fclose(f);
    return b;
}

static void write_file(const char *path, const uint8_t *p, size_t n, off_t at, off_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { perror(path); exit(2); }
    if (size && ftruncate(fd, size) != 0) { perror("ftruncate"); exit(2); }
    if (n && pwrite(fd, p, n, at) != (ssize_t)n) { perror("pwrite"); exit(2); }
    close(fd);
}

/* ------------------------------------------------------------ mutations */

static const uint64_t interesting[] = {
    0, 1, 2, 3, 7, 8, 15, 16, 19, 20, 21, 63, 64, 65, 127, 128, 255, 256, 511, 512,
    4095, 4096, 4097, 65535, 65536, 0x7fff, 0x8000, 0x7fffffff, 0x80000000u, 0xfffffffeu,
    0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull, 0xffffffffffffffffull,
};
#define N_INTERESTING (sizeof interesting / sizeof interesting[0])

/* where the data is: past the last non-zero byte mutations are mostly wasted */
static size_t data_extent(const buf *b) {
    size_t e = b->n;
    while (e > 0 && b->p[e - 1] == 0) e--;
    e += 64;
    return e < b->n ? e : b->n;
}

static void mutate(buf *b, const buf *seeds, int nseeds, const size_t *fields, int nfields) {
    int rounds = 1 + (int)below(4);
    for (int r = 0; r < rounds; r++) {
        size_t ext = data_extent(b);
        if (b->n == 0) return;
        switch (below(8)) {
        case 0: {                                   /* bit flips */
            int k = 1 + (int)below(8);
            for (int i = 0; i < k; i++) {
                size_t at = below(ext);
                b->p[at] ^= (uint8_t)(1u << below(8));
            }
            break;
        }
        case 1: {                                   /* byte sets */
            size_t at = below(ext), len = 1 + below(16);
            uint8_t v = (uint8_t)(below(3) == 0 ? 0 : below(3) == 0 ? 0xff : rnd());
            for (size_t i = at; i < at + len && i < b->n; i++) b->p[i] = v;
            break;
        }
        case 2: {                                   /* truncation */
            if (below(4) == 0) b->n = below(b->n + 1);
            else b->n = below(ext + 1) + (b->n - ext) * (below(2));
            if (b->n > 0 && below(2)) {
                size_t keep = below(b->n);          /* or a zeroed tail (a cut file re-sized) */
                memset(b->p + keep, 0, b->n - keep);
            }
            break;
        }
        case 3: {                                   /* splice from another seed */
            const buf *o = &seeds[below((uint64_t)nseeds)];
            if (!o->n) break;
            size_t from = below(o->n), to = below(ext), len = 1 + below(512);
            if (from + len > o->n) len = o->n - from;
            if (to + len > b->n) len = b->n - to;
            memmove(b->p + to, o->p + from, len);
            break;
        }
        case 4: {                                   /* copy within (frames, entries) */
            size_t from = below(ext), to = below(ext), len = 1 + below(256);
            if (from + len > b->n) len = b->n - from;
            if (to + len > b->n) len = b->n - to;
            memmove(b->p + to, b->p + from, len);
            break;
        }
        default: {                                  /* length-field edits */
            size_t at;
            if (nfields && below(2)) at = fields[below((uint64_t)nfields)];
            else at = below(ext) & ~(size_t)3;
            uint64_t v = interesting[below(N_INTERESTING)];
            if (below(4) == 0) v += below(64) - 32;
            int w = below(2) ? 4 : 8;
            if (at + (size_t)w <= b->n) memcpy(b->p + at, &v, (size_t)w);
            break;
        }
        }
    }
}

/* -------------------------------------------------------------- targets */

static char workdir[3000];

static void walk_all(const uint8_t *m, uint64_t size, uint64_t base, uint32_t stop,
                     uint32_t published) {
    cm_walk w;
    cm_record r;
    cm_damage d;
    cm_walk_init(&w, m, size, base, CM_SEG_HEADER_BYTES, 0, stop, published);
    int rc, steps = 0;
    while ((rc = cm_walk_next(&w, &r, &d)) != CM_WALK_DONE && steps++ < 100000) {
        if (rc == CM_WALK_RECORD) {
            volatile uint8_t sink = 0;
            const uint8_t *pl = m + r.offset + CM_REC_HEADER_BYTES;
            if (r.len) sink ^= pl[0] ^ pl[r.len - 1];   /* the payload lies inside */
            (void)sink;
            cm_record_at(m, size, base, r.offset, r.seq, NULL);
        }
    }
}

static void run_segment(const uint8_t *p, size_t n) {
    uint8_t *m = malloc(n ? n : 1);
    memcpy(m, p, n);
    uint64_t base = 0, cap;
    if (cm_segment_header_check(m, n, &base, &cap) != CM_OK) base = 0;
    walk_all(m, n, base, CM_SEQ_ANY, 0);
    walk_all(m, n, base, 7, 7);
    walk_all(m, n, base, CM_SEQ_ANY, 3);
    cm_walk w;
    cm_record last;
    uint64_t records = 0, lost = 0;
    cm_walk_init(&w, m, n, base, CM_SEG_HEADER_BYTES, 0, CM_SEQ_ANY, 0);
    cm_walk_count(&w, &last, &records, &lost);
    for (uint64_t off = 0; off < n && off < 4096; off += 1 + off / 8)
        cm_record_at(m, n, base, off, 0xFFFFFFFFu, NULL);
    if (n >= CM_REC_HEADER_BYTES) {
        cm_walk_init(&w, m, n, base, CM_SEG_HEADER_BYTES, 0, CM_SEQ_ANY, 0);
        cm_resync(&w, CM_SEG_HEADER_BYTES, 0);
    }
    uint64_t icap = cm_index_capacity(n, 64);
    uint8_t *idx = calloc(1, icap);
    uint32_t count;
    cm_index_build(m, n, base, 64, idx, icap, &count);
    free(idx);
    free(m);
}

static void run_index(const uint8_t *p, size_t n) {
    uint8_t *m = malloc(n ? n : 1);
    memcpy(m, p, n);
    uint32_t rel;
    uint64_t off;
    int64_t ts;
    static const uint32_t keys[] = {0, 1, 2, 5, 100, 1000, 0x7fffffff, 0xffffffffu};
    for (unsigned i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        cm_index_floor(m, n, keys[i], &rel, &off, &ts);
        cm_index_floor_time(m, n, (int64_t)((uint64_t)keys[i] << 31), &rel, &off, &ts);
    }
    cm_index_floor_time(m, n, INT64_MAX, &rel, &off, &ts);
    cm_index_floor_time(m, n, INT64_MIN, &rel, &off, &ts);
    free(m);
}

static void fresh_lock(uint8_t *lockp, int recursive) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (recursive) pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_t mu;
    pthread_mutex_init(&mu, &a);
    pthread_mutexattr_destroy(&a);
    memcpy(lockp, &mu, sizeof mu);
}

static void rm_dir(const char *d) {
    DIR *dd = opendir(d);
    if (!dd) return;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(dd)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", d, de->d_name);
        unlink(p);
    }
    closedir(dd);
    rmdir(d);
}

static uint32_t take_len(const uint8_t **p, size_t *n) {
    uint32_t len = 0;
    if (*n >= 4) { memcpy(&len, *p, 4); *p += 4; *n -= 4; }
    else { *p += *n; *n = 0; }
    if (len > *n) len = (uint32_t)*n;
    return len;
}

static void run_recovery(const uint8_t *p, size_t n) {
    char dir[3100], path[3200];
    snprintf(dir, sizeof dir, "%s/stream", workdir);
    rm_dir(dir);
    mkdir(dir, 0700);
    uint32_t sl = take_len(&p, &n);
    const uint8_t *state = p; p += sl; n -= sl;
    uint32_t il = take_len(&p, &n);
    const uint8_t *idx = p; p += il; n -= il;
    if (sl) {
        uint8_t *st = malloc(sl);
        memcpy(st, state, sl);
        if (sl >= CM_STATE_OFF_LOCK + sizeof(pthread_mutex_t))
            fresh_lock(st + CM_STATE_OFF_LOCK, 0);
        snprintf(path, sizeof path, "%s/state", dir);
        write_file(path, st, sl, 0, 0);
        free(st);
    }
    if (il) {
        snprintf(path, sizeof path, "%s/00000000000000000000.idx", dir);
        write_file(path, idx, il, 0, 0);
    }
    if (n) {
        snprintf(path, sizeof path, "%s/00000000000000000000.seg", dir);
        write_file(path, p, n, 0, 0);
    }
    cm_options o = {.segment_bytes = 64 * 1024, .max_entry_bytes = 1 << 20, .index_interval = 256,
                    .alloc_chunk = 16 * 1024, .durability = CM_DURABILITY_NONE,
                    .stream_crc = 0, .create = 1, .prefault = 0};
    cm_shard *s;
    cm_open_report rep;
    if (cm_shard_open(dir, &o, &s, &rep) == CM_OK) {
        static uint8_t payload[3000];
        cm_iov iov[3] = {{payload, 10, 0}, {payload, 3000, 0}, {payload, 0, 0}};
        uint64_t first;
        uint32_t written;
        for (int i = 0; i < 3; i++) cm_append(s, &iov[i], 1, &first, &written);
        cm_append(s, iov, 3, &first, &written);
        cm_sync(s);
        cm_snapshot snap;
        cm_shard_snapshot(s, &snap);
        cm_shard_close(s);
        cm_shard_unref(s);
    }
    rm_dir(dir);
}

#define OFS_COMPACT_HEAD (CM_OFS_GROUPS_OFF + 4 * CM_OFS_GROUP_BYTES)
#define OFS_COMPACT_SLOTS (16 * CM_OFS_SLOT_BYTES)

static void run_offsets(const uint8_t *p, size_t n) {
    char path[3200];
    snprintf(path, sizeof path, "%s/offsets", workdir);
    uint8_t *c = calloc(1, OFS_COMPACT_HEAD + OFS_COMPACT_SLOTS);
    memcpy(c, p, n < OFS_COMPACT_HEAD + OFS_COMPACT_SLOTS ? n : OFS_COMPACT_HEAD + OFS_COMPACT_SLOTS);
    if (n >= CM_OFS_OFF_LOCK + sizeof(pthread_mutex_t)) fresh_lock(c + CM_OFS_OFF_LOCK, 1);
    if (n < OFS_COMPACT_HEAD) {
        write_file(path, c, n, 0, 0);                    /* a cut file: the size check */
    } else {
        write_file(path, c, OFS_COMPACT_HEAD, 0, (off_t)CM_OFS_FILE_BYTES);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        size_t sn = n - OFS_COMPACT_HEAD;
        if (sn > OFS_COMPACT_SLOTS) sn = OFS_COMPACT_SLOTS;
        if (sn && pwrite(fd, c + OFS_COMPACT_HEAD, sn, CM_OFS_SLOTS_OFF) != (ssize_t)sn) exit(2);
        close(fd);
    }
    free(c);
    cm_offsets *o;
    for (int create = 0; create < 2; create++) {
        if (cm_offsets_open(path, create, &o) != CM_OK) continue;
        static const char *names[] = {"g", "group-a", "consumers", "x"};
        for (unsigned i = 0; i < 4; i++) {
            uint32_t gi, si;
            uint64_t id;
            if (cm_offsets_group(o, names[i], (uint32_t)strlen(names[i]), create, 1, &gi, &id) != CM_OK)
                continue;
            cm_offsets_add_pattern(o, gi, id, "s:*", 3);
            cm_offsets_touch(o, gi, id, 2);
            if (cm_offsets_slot(o, gi, id, "s:shard:0000", 12, create, &si) == CM_OK) {
                cm_offsets_ack(o, si, id, 5, 3);
                cm_offsets_set(o, si, id, 2, 4);
                cm_offsets_add_dropped(o, si, id, 1);
            }
            if (create && i == 3) cm_offsets_delete_group(o, gi, id);
        }
        if (create && cm_offsets_lock(o) == CM_OK) cm_offsets_unlock(o);
        cm_offsets_close(o);
        cm_offsets_unref(o);
    }
    unlink(path);
}

static void run_registry(const uint8_t *p, size_t n) {
    size_t size = n > cm_registry_bytes() ? n : cm_registry_bytes();
    uint8_t *m = aligned_alloc(64, (size + 63) / 64 * 64);
    memset(m, 0, size);
    memcpy(m, p, n);
    if (n >= CM_REG_OFF_LOCK + sizeof(pthread_mutex_t)) fresh_lock(m + CM_REG_OFF_LOCK, 0);
    if (cm_registry_check(m, n) == CM_OK) {
        if (cm_registry_lock(m, "fuzz registry", 10) >= 0) {
            cm_registry_bump_epoch(m);
            cm_registry_unlock(m);
        }
    }
    free(m);
}

typedef struct {
    const char *name;
    void (*run)(const uint8_t *, size_t);
    size_t fields[24];          /* offsets of counts/lengths, for length-field edits */
    int nfields;
} target;

static const target targets[] = {
    {"segment", run_segment, {CM_SEG_OFF_VERSION, CM_SEG_OFF_BASE, CM_SEG_OFF_CAPACITY, 64, 84,
                              80, 100, 104, 120}, 9},
    {"index", run_index, {CM_IDX_OFF_INTERVAL, CM_IDX_OFF_BASE, 32, 36, 48, 52, 64, 68}, 8},
    {"recovery", run_recovery, {0, 4 + CM_STATE_OFF_COMMITTED, 4 + CM_STATE_OFF_ACTIVE_BASE,
                                4 + CM_STATE_OFF_TAIL, 4 + CM_STATE_OFF_RESERVE_END,
                                4 + CM_STATE_OFF_ALLOC_END, 4 + CM_STATE_OFF_IDX_LAST_OFF,
                                4 + CM_STATE_OFF_IDX_COUNT, 4 + CM_STATE_OFF_FIRST_ENTRY,
                                4 + CM_STATE_OFF_ACTIVE_GEN, 4 + CM_STATE_OFF_ROTATE_PENDING,
                                4 + CM_STATE_OFF_VERSION}, 12},
    {"offsets", run_offsets, {CM_OFS_OFF_GROUP_HWM, CM_OFS_OFF_SLOT_HWM, CM_OFS_OFF_FILE_BYTES,
                              CM_OFS_GROUPS_OFF + CM_OFS_G_NAME_LEN,
                              CM_OFS_GROUPS_OFF + CM_OFS_G_PATTERNS_LEN,
                              CM_OFS_GROUPS_OFF + CM_OFS_G_STATE,
                              CM_OFS_GROUPS_OFF + CM_OFS_GROUP_BYTES + CM_OFS_G_PATTERNS_LEN,
                              OFS_COMPACT_HEAD + CM_OFS_S_GROUP, OFS_COMPACT_HEAD + CM_OFS_S_STREAM_LEN,
                              OFS_COMPACT_HEAD + CM_OFS_S_STATE, OFS_COMPACT_HEAD + CM_OFS_S_NEXT}, 11},
    {"registry", run_registry, {CM_REG_OFF_SIZE, CM_REG_OFF_MAX_ENTRIES, CM_REG_OFF_PROCESS_COUNT,
                                CM_REG_OFF_HEADER_BYTES, CM_REG_OFF_EPOCH}, 5},
};

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s run TARGET SEED FIRST COUNT WORKDIR SEEDFILE...\n"
                        "       %s replay TARGET WORKDIR FILE...\n", argv[0], argv[0]);
        return 2;
    }
    const target *t = NULL;
    for (unsigned i = 0; i < sizeof targets / sizeof targets[0]; i++)
        if (!strcmp(targets[i].name, argv[2])) t = &targets[i];
    if (!t) { fprintf(stderr, "unknown target %s\n", argv[2]); return 2; }
    if (!strcmp(argv[1], "replay")) {
        snprintf(workdir, sizeof workdir, "%s", argv[3]);
        for (int i = 4; i < argc; i++) {
            buf b = read_file(argv[i]);
            t->run(b.p, b.n);
            free(b.p);
        }
        printf("replayed %d\n", argc - 4);
        return 0;
    }
    if (argc < 8) return 2;
    uint64_t seed = strtoull(argv[3], NULL, 10);
    uint64_t first = strtoull(argv[4], NULL, 10), count = strtoull(argv[5], NULL, 10);
    snprintf(workdir, sizeof workdir, "%s", argv[6]);
    int nseeds = argc - 7;
    buf *seeds = calloc((size_t)nseeds, sizeof *seeds);
    size_t maxn = 0;
    for (int i = 0; i < nseeds; i++) {
        seeds[i] = read_file(argv[7 + i]);
        if (seeds[i].n > maxn) maxn = seeds[i].n;
    }
    char cur[3100];
    snprintf(cur, sizeof cur, "%s/current", workdir);
    uint8_t *work = malloc(maxn ? maxn : 1);
    for (uint64_t i = first; i < first + count; i++) {
        rng_state = seed * 0x100000001b3ull ^ (i * 0x9e3779b97f4a7c15ull);
        rnd();
        const buf *s = &seeds[below((uint64_t)nseeds)];
        buf b = {work, s->n};
        memcpy(work, s->p, s->n);
        if (below(16) != 0) mutate(&b, seeds, nseeds, t->fields, t->nfields);
        write_file(cur, b.p, b.n, 0, 0);
        t->run(b.p, b.n);
    }
    for (int i = 0; i < nseeds; i++) free(seeds[i].p);
    free(seeds);
    free(work);
    printf("done %llu\n", (unsigned long long)count);
    return 0;
}
