"""No SIGBUS, ever (issue 9 item 5, I9): every mapped file has its blocks reserved before
its pages are stored to, so on a real, full tmpfs creating consumer groups and slots,
creating streams, rotating and recovering raise DiskFull (never a signal), and after
space is freed everything works and every acknowledged entry is intact.

The work runs in a child process, so a SIGBUS shows as its return code instead of
killing the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import child_env

CHILD = r"""
import json, os, sys
import cometmp
from cometmp import paths

mnt = sys.argv[1]
root = os.path.join(mnt, "log")
filler = os.path.join(mnt, "filler")
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 64 * 1024
cfg.retention.hard_min_free_ratio = 0.0
STREAMS = ["s%02d" % i for i in range(24)]
acked = {s: [] for s in STREAMS}
out = {"full": {}, "after": {}}

def payload(s, i):
    return ("%s-%06d-" % (s, i)).encode() * 20

def fill():
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            try:
                os.write(fd, b"\xff" * 4096)
            except OSError:
                return
    finally:
        os.close(fd)

def attempt(table, name, fn, full=True):
    if full:
        fill()     # what an earlier failure gave back is taken again: full for every step
    try:
        fn()
        table[name] = "ok"
    except cometmp.DiskFull as e:
        table[name] = "DiskFull" if mnt in str(e) else "DiskFull without path: %s" % e
    except Exception as e:
        table[name] = "%s: %s" % (type(e).__name__, e)

c = cometmp.Client(root, config=cfg)
for s in STREAMS:
    items = [payload(s, i) for i in range(40)]
    c.append(s, items)
    acked[s] += items
con = cometmp.Consumer(c, group="g0")
con.read("s00", max_messages=10, timeout=0)
con.close()
fill()

def new_groups():
    for k in range(1, 20):     # group records share pages: keep claiming until one needs a new one
        g = cometmp.Consumer(c, group="full-%d" % k)
        try:
            g.read("s*", max_messages=1, timeout=0)
        finally:
            g.close()

def rotate():
    s = "s01"
    for i in range(5000):
        item = os.urandom(3000)          # incompressible
        c.append(s, [item])
        acked[s].append(item)

attempt(out["full"], "groups and slots", new_groups)
attempt(out["full"], "new stream", lambda: c.append("brand-new", [b"x"]))
attempt(out["full"], "rotation", rotate)
c.close()
# recovery: a lost state page and a lost index of the active segment must be rebuilt
d = paths.stream_dir(root, "s02")
os.unlink(os.path.join(d, paths.STATE))
base = paths.list_segment_bases(d)[-1]
os.unlink(os.path.join(d, paths.index_name(base)))
def recover():
    with cometmp.Client(root, config=cfg) as c2:
        c2.append("s02", [b"after-recovery"])
        acked["s02"].append(b"after-recovery")
attempt(out["full"], "recovery", recover)

os.unlink(filler)
def everything():
    with cometmp.Client(root, config=cfg) as c3:
        for k in range(1, 4):
            g = cometmp.Consumer(c3, group="later-%d" % k)
            g.read("s*", max_messages=5, timeout=0)
            g.close()
        c3.append("brand-new", [b"y"])
        for s in STREAMS:
            got = [m.data for m in c3.scan(s)]
            assert got == acked[s], (s, len(got), len(acked[s]))
        c3.append("s02", [b"z"])
attempt(out["after"], "everything", everything, full=False)
print(json.dumps(out))
"""


@pytest.fixture
def full_fs(tmpfs):
    return tmpfs("size=8m")


def test_a_full_filesystem_raises_disk_full_for_groups_slots_streams_rotation_and_recovery(full_fs):
    p = subprocess.run([sys.executable, "-c", CHILD, full_fs], env=child_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"child died (signal {-p.returncode})" if p.returncode < 0 else p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["full"] == {"groups and slots": "DiskFull", "new stream": "DiskFull",
                           "rotation": "DiskFull", "recovery": "DiskFull"}, out
    assert out["after"] == {"everything": "ok"}, out
