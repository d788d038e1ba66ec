"""Cost of the pieces of one append inside the C core, measured in C on this machine.

Each line is a tight C loop of N iterations (``-O2``), run ``--runs`` times; the minimum
over runs is printed (the median too, with ``--json``), because other tenants of a shared
VM only ever add time. These are the building blocks ``cm_append_ex`` pays per record:

* ``clock_gettime(CLOCK_REALTIME)`` (the record timestamp) vs ``CLOCK_REALTIME_COARSE``
  and a bare ``rdtsc``;
* a robust, process-shared ``pthread_mutex_trylock`` + ``unlock`` pair (the shard lock);
* CRC-32C (SSE4.2) of one 100-byte record's 116 covered bytes: as two calls (4 + 112 bytes,
  the frame's layout), as one pass, and three records interleaved (independent chains,
  what a batch could do);
* ``memcpy`` of 100 bytes into a hot buffer;
* the first write to a fresh 4 KiB page (what every new page of log costs someone), and the
  second write to it;
* the same for the pages of a mapped 64 MiB file: fresh (fallocated, what a new segment
  costs) and cached (written before and still in the page cache, what a recycled segment
  file would cost), by demand faults and by ``MADV_POPULATE_WRITE`` (the prefault thread).

    python benchmarks/core_costs.py [--runs 5] [--json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile

SRC = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <x86intrin.h>
static inline uint64_t now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
__attribute__((target("sse4.2"), noinline))
static uint32_t crc(uint32_t c, const uint8_t *p, size_t n) {
    uint64_t x = ~c;
    while (n >= 8) { uint64_t v; memcpy(&v, p, 8); x = __builtin_ia32_crc32di(x, v); p += 8; n -= 8; }
    uint32_t y = (uint32_t)x;
    while (n--) y = __builtin_ia32_crc32qi(y, *p++);
    return ~y;
}
__attribute__((target("sse4.2"), noinline))
static void crc3(const uint8_t *a, const uint8_t *b, const uint8_t *c, size_t n, uint32_t *o) {
    uint64_t x = ~0u, y = ~0u, z = ~0u;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t u, v, w;
        memcpy(&u, a + i, 8); memcpy(&v, b + i, 8); memcpy(&w, c + i, 8);
        x = __builtin_ia32_crc32di(x, u); y = __builtin_ia32_crc32di(y, v); z = __builtin_ia32_crc32di(z, w);
    }
    o[0] = ~(uint32_t)x; o[1] = ~(uint32_t)y; o[2] = ~(uint32_t)z;
}
int main(int argc, char **argv) {
    const long N = 10000000;
    volatile uint64_t sink = 0;
    uint64_t t0;
    struct timespec ts;
    t0 = now(); for (long i = 0; i < N; i++) { clock_gettime(CLOCK_REALTIME, &ts); sink += ts.tv_nsec; }
    printf("clock_gettime_realtime %f\n", (now() - t0) / (double)N);
    t0 = now(); for (long i = 0; i < N; i++) { clock_gettime(CLOCK_REALTIME_COARSE, &ts); sink += ts.tv_nsec; }
    printf("clock_gettime_realtime_coarse %f\n", (now() - t0) / (double)N);
    t0 = now(); for (long i = 0; i < N; i++) sink += __rdtsc();
    printf("rdtsc %f\n", (now() - t0) / (double)N);
    pthread_mutex_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    t0 = now(); for (long i = 0; i < N; i++) { pthread_mutex_trylock(m); pthread_mutex_unlock(m); }
    printf("robust_mutex_trylock_unlock %f\n", (now() - t0) / (double)N);
    uint8_t src[256], dst[1 << 16];
    for (int i = 0; i < 256; i++) src[i] = (uint8_t)i;
    t0 = now(); for (long i = 0; i < N; i++) sink += crc(crc(0, src, 4), src + 8, 112);
    printf("crc32c_record_as_4_plus_112 %f\n", (now() - t0) / (double)N);
    t0 = now(); for (long i = 0; i < N; i++) sink += crc(0, src, 116);
    printf("crc32c_record_one_pass_116 %f\n", (now() - t0) / (double)N);
    uint32_t o[3];
    t0 = now(); for (long i = 0; i < N / 3; i++) { crc3(src, src + 1, src + 2, 116, o); sink += o[0] + o[1] + o[2]; }
    printf("crc32c_record_3_interleaved %f\n", (now() - t0) / (double)(N / 3 * 3));
    t0 = now();
    for (long i = 0; i < N; i++) { memcpy(dst + ((i * 128) & 0xffff), src, 100); __asm__ volatile("" ::"r"(dst) : "memory"); }
    printf("memcpy_100 %f\n", (now() - t0) / (double)N);
    /* first write to fresh anonymous pages: page allocation + zeroing (+ the hypervisor's
       own fault when the guest gave that memory back); 64 MiB, one byte per 4 KiB page */
    size_t len = 64u << 20;
    uint8_t *big = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    t0 = now(); for (size_t off = 0; off < len; off += 4096) big[off] = 1;
    printf("first_touch_anon_page %f\n", (now() - t0) / (double)(len / 4096));
    t0 = now(); for (size_t off = 0; off < len; off += 4096) big[off] = 2;
    printf("second_touch_anon_page %f\n", (now() - t0) / (double)(len / 4096));
    munmap(big, len);
    /* pages of a mapped file (a segment): fresh (fallocated, never written: what a new
       segment costs), and cached (written before, still in the page cache: what a
       recycled segment file would cost); each by demand faults and by
       MADV_POPULATE_WRITE in 256 KiB steps (the prefault thread's way) */
    if (argc > 1) {
        char path[4096];
        snprintf(path, sizeof path, "%s/pages.dat", argv[1]);
        for (int populate = 0; populate < 2; populate++) {
            int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
            if (fd < 0 || posix_fallocate(fd, 0, (off_t)len) != 0) return 1;
            for (int cached = 0; cached < 2; cached++) {
                uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                t0 = now();
                if (populate)
                    for (size_t off = 0; off < len; off += 256u << 10)
                        madvise(m + off, 256u << 10, 23 /* MADV_POPULATE_WRITE */);
                else
                    for (size_t off = 0; off < len; off += 4096) m[off] = 1;
                printf("%s_%s_file_page %f\n", populate ? "populate" : "first_write",
                       cached ? "cached" : "fresh", (now() - t0) / (double)(len / 4096));
                munmap(m, len);    /* the pages stay in the page cache for round 2 */
            }
            close(fd);
            unlink(path);
        }
    }
    return (int)(sink & 0);
}
"""

LABELS = {
    "clock_gettime_realtime": "clock_gettime(CLOCK_REALTIME) (vDSO)",
    "clock_gettime_realtime_coarse": "clock_gettime(CLOCK_REALTIME_COARSE)",
    "rdtsc": "rdtsc",
    "robust_mutex_trylock_unlock": "robust pshared mutex trylock + unlock",
    "crc32c_record_as_4_plus_112": "CRC-32C of a 100 B record, 4 + 112 B (as framed)",
    "crc32c_record_one_pass_116": "CRC-32C of 116 B in one pass",
    "crc32c_record_3_interleaved": "CRC-32C of 116 B, 3 records interleaved, per record",
    "memcpy_100": "memcpy 100 B (hot cache)",
    "first_touch_anon_page": "first write to a fresh 4 KiB anonymous page",
    "second_touch_anon_page": "second write to the same page (already mapped)",
    "first_write_fresh_file_page": "first write to a fresh page of a mapped file",
    "first_write_cached_file_page": "first write to a cached page of a mapped file",
    "populate_fresh_file_page": "MADV_POPULATE_WRITE per fresh file page (256 KiB)",
    "populate_cached_file_page": "MADV_POPULATE_WRITE per cached file page (256 KiB)",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None,
                    help="directory for the 64 MiB file of the file-page lines (default: the "
                         "temp dir; use the log's filesystem)")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="cometmp-core-costs-")
    try:
        src = os.path.join(tmp, "costs.c")
        exe = os.path.join(tmp, "costs")
        with open(src, "w") as f:
            f.write(SRC)
        cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
        subprocess.run([cc, "-O2", "-std=gnu11", src, "-o", exe, "-lpthread"], check=True)
        runs: dict[str, list[float]] = {}
        for _ in range(args.runs):
            out = subprocess.run([exe, args.dir or tmp], check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                k, v = line.split()
                runs.setdefault(k, []).append(float(v))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {k: {"min_ns": min(v), "median_ns": statistics.median(v)} for k, v in runs.items()}
    if args.json:
        json.dump({"runs": args.runs, "results": res}, sys.stdout, indent=1)
        print()
    else:
        print(f"ns per operation, min / median of {args.runs} runs")
        for k, r in res.items():
            print(f"  {LABELS.get(k, k):54} {r['min_ns']:7.1f} {r['median_ns']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
