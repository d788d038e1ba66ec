"""What a stream that takes a few entries costs: disk, page cache, prefault work (issue 10).

    .venv/bin/python benchmarks/many_streams.py [--streams 100] [--entries 1] [--rounds 3]
        [--baseline TREE] [--dir /var/tmp]

A server with many small streams (a family of 16 shards, a stream per tenant, the logging,
metrics and span streams of the integrations) pays each stream's headroom whether or not
data comes. Per round and variant, a fresh process opens a Client on a fresh directory
under --dir (put it on the disk, not tmpfs), appends --entries entries of 100 B to each of
--streams streams, waits until its prefault thread is idle (its request count unchanged
for 0.3 s), then measures, per stream:

* ``disk``: blocks allocated to the segment files (st_blocks), KiB;
* ``cached``: the segment files' pages in the page cache (mincore), KiB;
* ``populated``: bytes the prefault thread populated (``cometmp.prealloc.stats()``), KiB;
* ``prefault_cpu``: that thread's CPU, µs;
* ``dirtied``: pages the whole machine dirtied meanwhile (``/proc/vmstat`` nr_dirtied:
  what writeback will write to the disk, zeros included), KiB;
* ``create``: wall time of the append loop, µs.

--baseline TREE runs the same in a source tree with its extensions built in place (see
prefault_ab.py) beside this one, interleaved; medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import ctypes, json, mmap, os, sys, time
import cometmp, cometmp.prealloc as pre
root, streams, entries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
def vm(key):
    for line in open("/proc/vmstat"):
        k, v = line.split()
        if k == key:
            return int(v)
def resident(path):
    size = os.path.getsize(path)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = (size + 4095) // 4096
        vec = ctypes.create_string_buffer(pages)
        libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        return sum(b & 1 for b in vec.raw) * 4096
    finally:
        os.close(fd)
payload = b"x" * 100
d0 = vm("nr_dirtied")
with cometmp.Client(root) as c:
    t0 = time.perf_counter_ns()
    for i in range(streams):
        c.append(f"s{i:05d}", [payload] * entries)
    create = time.perf_counter_ns() - t0
    last, since = None, time.monotonic()
    while time.monotonic() - since < 0.3:   # the prefault thread is idle once its count stops
        n = pre.stats()["requests"]
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.02)
    st = pre.stats()
    disk = cached = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".seg"):
                p = os.path.join(dirpath, f)
                disk += os.stat(p).st_blocks * 512
                cached += resident(p)
d1 = vm("nr_dirtied")
print(json.dumps({"disk": disk, "cached": cached, "populated": st["bytes_populated"],
                  "prefault_cpu_ns": st["thread_cpu_ns"], "dirtied": (d1 - d0) * 4096,
                  "create_ns": create}))
"""

FIELDS = (("disk", "disk KiB", 1 / 1024), ("cached", "cached KiB", 1 / 1024),
          ("populated", "populated KiB", 1 / 1024), ("prefault_cpu_ns", "prefault CPU µs", 1e-3),
          ("dirtied", "dirtied KiB", 1 / 1024), ("create_ns", "create µs", 1e-3))


def run(tree: str, base: str, streams: int, entries: int) -> dict:
    root = tempfile.mkdtemp(prefix="cm-many-", dir=base)
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, root, str(streams), str(entries)],
                           env=dict(os.environ, PYTHONPATH=tree), capture_output=True,
                           text=True, timeout=600, cwd="/")
        if p.returncode != 0:
            raise SystemExit(f"{tree}: {p.stderr[-2000:]}")
        return json.loads(p.stdout)
    finally:
        subprocess.run(["rm", "-rf", root], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--entries", type=int, default=1, help="entries appended to each stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="source tree of a baseline build, run beside this one")
    ap.add_argument("--dir", default="/var/tmp", help="where the data directories go")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    variants = [("this tree", HERE)] + ([("baseline", os.path.abspath(a.baseline))]
                                        if a.baseline else [])
    rows: dict[str, list[dict]] = {v: [] for v, _ in variants}
    for r in range(a.rounds):
        for name, tree in (variants if r % 2 == 0 else variants[::-1]):
            rows[name].append(run(tree, a.dir, a.streams, a.entries))
    print(f"{a.streams} streams x {a.entries} entries of 100 B, medians of {a.rounds} rounds, "
          f"per stream:")
    print(f"{'variant':10} " + " ".join(f"{label:>16}" for _, label, _ in FIELDS))
    summary = {}
    for name, res in rows.items():
        med = {k: statistics.median(x[k] for x in res) / a.streams for k, _, _ in FIELDS}
        summary[name] = med
        print(f"{name:10} " + " ".join(f"{med[k] * f:16,.1f}" for k, _, f in FIELDS))
    if a.json:
        print(json.dumps({"per_stream": summary, "rounds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
