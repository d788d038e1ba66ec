"""Readers beside a live writer whose liveness signal failed count exactly what it published (I27a).

A writer announces that its state page is current with an OFD read lock on the page
(``announce_writer`` in native/shard.c); readers probe it (``writer_live``) and a
consumer maps the page to sleep on it (``StatePage.remap``). Each of the three can fail:
the failpoint build's ``open.announce`` (the lock is not taken), ``read.writer_probe``
(the probe errs) and ``consume.state_open``/``consume.state_map`` (the consumer gets no
mapping). None of them is an error for anyone; the reader then counts the segment files,
which must give exactly the published entries, never a record the writer wrote but has
not published.

To look at that window the writer is frozen in it: ``append.publish:K:STOP`` stops it
(SIGSTOP, alive, its locks held) after its K-th append wrote its record and before it
published it. Then a reader process on the failpoint core, with the reader-side fault
set, must see exactly K-1 entries with their bytes, through a readonly client, a
writable client and a consumer group; after SIGCONT it must see the K-th within the
recheck bound, and after the writer's kill -9 and a reopen every entry is there once.
The control case (no fault) shows the lock really is missing when ``open.announce``
fires, so the test discriminates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import cometmp
from cometmp import paths

import failpoints
from conftest import child_env, wait_until

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAM = "s"
K = 41          # the append frozen between its record and its publication (entry 40)

WRITER = f"""
import os, sys
sys.path.insert(0, {TESTS!r})
import failpoints
failpoints.bootstrap(sys.argv[1])
import cometmp
os.environ["COMETMP_FAILPOINT"] = sys.argv[3]
with cometmp.Client(sys.argv[2]) as c:
    for i in range(60):
        c.append({STREAM!r}, [b"entry %d " % i * (i % 7 + 1)])
        print(i, flush=True)
    sys.stdin.read()          # stay open until the test has looked
"""

READER = f"""
import json, os, sys
sys.path.insert(0, {TESTS!r})
import failpoints
failpoints.bootstrap(sys.argv[1])
import cometmp
from cometmp import paths
os.environ["COMETMP_FAILPOINT"] = sys.argv[3]
want = int(sys.argv[4])
out = {{}}
with cometmp.Client(sys.argv[2], readonly=True) as ro:
    out["readonly_length"] = ro.length({STREAM!r})
    out["readonly_scan"] = [m.data.decode() for m in ro.scan({STREAM!r})]
    try:
        ro.read({STREAM!r}, want)
        out["readonly_read_next"] = "served"
    except cometmp.EntryNotFound:
        out["readonly_read_next"] = "EntryNotFound"
with cometmp.Client(sys.argv[2]) as c:
    out["length"] = c.length({STREAM!r})
    con = cometmp.Consumer(c, group="g")
    got = []
    while True:
        b = con.read({STREAM!r}, timeout=0)
        if not len(b):
            break
        got += [m.data.decode() for m in b]
        con.ack(*[m.id for m in b])
    out["consumer"] = got
    out["consumer_mapped"] = all(cur.state.mm is not None for cur in con._cursors.values())
    con.close()
print(json.dumps(out))
"""


def payload(i: int) -> str:
    return ("entry %d " % i) * (i % 7 + 1)


def announced(root: str) -> bool:
    fd = os.open(os.path.join(paths.stream_dir(root, STREAM), paths.STATE), os.O_RDONLY)
    try:
        return paths.ofd_write_locked(fd, 0, 0)
    finally:
        os.close(fd)


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def read_as(fp: str, root: str, fault: str, want: int) -> dict:
    p = subprocess.run([sys.executable, "-c", READER, fp, root, fault, str(want)], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


@pytest.mark.parametrize("writer_fault, reader_fault", [
    ("", ""),
    ("open.announce:1:EIO:1000000", ""),
    ("", "read.writer_probe:1:EIO:1000000"),
    ("", "consume.state_open:1:EIO:1000000"),
    ("", "consume.state_map:1:ENOMEM:1000000"),
    ("open.announce:1:EIO:1000000", "consume.state_map:1:ENOMEM:1000000"),
], ids=["control", "announce-failed", "probe-failed", "state-open-failed", "state-map-failed",
        "announce-and-map-failed"])
def test_readers_count_exactly_what_a_live_writer_published_when_its_liveness_signal_fails(
        fp_core, tmp_path, writer_fault, reader_fault):
    root = str(tmp_path / "log")
    spec = ",".join(x for x in (writer_fault, f"append.publish:{K}:STOP") if x)
    w = subprocess.Popen([sys.executable, "-c", WRITER, fp_core, root, spec], env=child_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: stopped(w.pid), 60, "the writer frozen before publishing entry 40")
        assert announced(root) == (not writer_fault), "open.announce did not decide the lock"
        got = read_as(fp_core, root, reader_fault, K - 1)
        acked = [payload(i) for i in range(K - 1)]
        assert got["readonly_length"] == K - 1, "a readonly client counted an unpublished record"
        assert got["readonly_scan"] == acked
        assert got["readonly_read_next"] == "EntryNotFound"
        assert got["length"] == K - 1
        assert got["consumer"] == acked, "the group was served other than the published entries"
        assert got["consumer_mapped"] is not reader_fault.startswith("consume."), \
            "the consumer's state-page fault did not decide its mapping"

        os.kill(w.pid, signal.SIGCONT)
        assert [int(w.stdout.readline()) for _ in range(K - 1)] == list(range(K - 1))
        wait_until(lambda: w.stdout.readline().strip() == "59", 60, "the writer's last append")
        after = read_as(fp_core, root, reader_fault, 60)
        assert after["readonly_scan"] == [payload(i) for i in range(60)]
        assert after["consumer"] == [payload(i) for i in range(K - 1, 60)]
    finally:
        if w.poll() is None:
            os.kill(w.pid, signal.SIGKILL)
        w.wait(60)
    with cometmp.Client(root) as c:      # after the writer's kill -9: every entry once
        assert [m.data.decode() for m in c.scan(STREAM)] == [payload(i) for i in range(60)]
        assert c.append(STREAM, [b"resumed"])[0].entry == 60
