"""read() with the woken read and with the full iteration only (``mode``), against real
writer and member processes: both must give the same entries, none lost, none twice,
none damaged, whatever happens while a read sleeps: a close() in another thread, a
rebalancing member, a writer killed and restarted (its state page rebuilt), a fork,
129 streams, a stream created meanwhile. The woken read is cometmp._reader.wait_woken
(docs/ARCHITECTURE.md §9.2 step 7); tests/unit/test_woken_read.py holds the cases it must
hand back, one by one. Written by a review of that change; the first test failed on it
(a close() during the wait still marked the batch's entries delivered)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest

import cometmp
from cometmp import consumer as consumer_mod
from cometmp import paths
from conftest import WokenSpy, child_env, run_python, sleeping_readers, small_config, wait_until

#: the tests directory, for children that import conftest's small_config
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def append_in_child(root, stream, payloads):
    r = run_python("import sys, cometmp\n"
                   "with cometmp.Client(sys.argv[1]) as c:\n"
                   "    c.append(sys.argv[2], [p.encode() for p in sys.argv[3:]])\n",
                   root, stream, *payloads)
    assert r.returncode == 0, r.stderr


@pytest.fixture(params=["woken", "full"])
def mode(request, monkeypatch):
    if request.param == "full":
        monkeypatch.setattr(consumer_mod.Consumer, "_woken_plan", lambda self, g, zc: None)
    return request.param


def test_client_closed_under_a_blocked_read_delivers_nothing_and_marks_nothing(data_dir, mode):
    """Client.close() in another thread while a read() sleeps; then another process
    appends. The read raises ClosedError (the client is closed) and hands out nothing, so
    a successor must see those entries as never delivered (deliveries == 1). The woken
    read used to fill and mark the batch delivered (I46) before read() saw the close."""
    c = cometmp.Client(data_dir, config=small_config())
    c.append("s", [b"a0", b"a1"])
    con = cometmp.Consumer(c, "g")
    con.ack(con.read("s", timeout=0))
    out = []

    def reader():
        try:
            out.append(con.read("s", timeout=30))
        except cometmp.ClosedError as e:
            out.append(e)

    t = threading.Thread(target=reader)
    t.start()
    wait_until(lambda: sleeping_readers(c.path, "s") == 1, 30, "the reader to sleep")
    c.close()                       # the client, from another thread (not the consumer)
    append_in_child(data_dir, "s", ["b0", "b1", "b2"])
    t.join(30)
    assert not t.is_alive()
    assert len(out) == 1 and isinstance(out[0], cometmp.ClosedError), out
    con.close()
    # a successor of the group: what the dead reader never handed out is a first delivery
    with cometmp.Client(data_dir, config=small_config()) as c2:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            nxt = cometmp.Consumer(c2, "g", max_deliveries=1)
            b = nxt.read("s", timeout=0)
        got = [(m.id.entry, m.data, m.deliveries) for m in b]
        dead = [str(x.message) for x in w if issubclass(x.category, cometmp.DeadLetterWarning)]
        print(mode, "successor got", got, "dead letters", dead)
        assert dead == []
        assert got == [(2, b"b0", 1), (3, b"b1", 1), (4, b"b2", 1)]


WRITER = r"""
import os, random, sys, time, zlib, cometmp
from conftest import small_config
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gate, gate_at = (sys.argv[4], int(sys.argv[5])) if len(sys.argv) > 5 else (None, -1)
cfg = small_config()
cfg.compression.min_bytes = 2000
c = cometmp.Client(root, config=cfg)
log = c.log("ev", shards=8)
rnd = random.Random(seed)
i = 0
while i < n:
    if i >= gate_at >= 0:            # hold here until the test opens the gate
        while not os.path.exists(gate):
            time.sleep(0.005)
        gate_at = -1
    k = min(n - i, rnd.choice([1, 1, 1, 2, 5, 40]))
    for j in range(i, i + k):
        size = rnd.choice([10, 300, 3000, 9000])
        body = (b"%08d:" % j) + (bytes([j % 251]) * size if rnd.random() < 0.5 else
                                   rnd.randbytes(size))
        log.append(body + zlib.crc32(body).to_bytes(4, "little"), key=str(j))
    i += k
    if rnd.random() < 0.7:
        time.sleep(rnd.random() * 0.003)
c.close()
"""


@pytest.mark.parametrize("zc", [False, True])
def test_entries_from_a_writer_process_arrive_once_and_whole_across_rotations(data_dir, mode, zc, monkeypatch, tmp_path):
    import random
    import zlib
    spy = WokenSpy()
    monkeypatch.setattr(consumer_mod, "_reader", spy)
    n = 6000
    cfg = small_config()
    c = cometmp.Client(data_dir, config=cfg)
    c.log("ev", shards=8)
    con = cometmp.Consumer(c, "g", zero_copy=zc)
    con.read("ev:shard:*", timeout=0)
    env = child_env()
    env["PYTHONPATH"] += os.pathsep + TESTS
    w = subprocess.Popen([sys.executable, "-c", WRITER, data_dir, str(n), "7"], env=env)
    seen = {}
    rnd = random.Random(1)
    views = []
    try:
        while len(seen) < n:
            b = con.read("ev:shard:*", max_messages=rnd.choice([1, 3, 1000, 10**6]), timeout=20)
            assert len(b), "no progress"
            for m in b:
                data = bytes(m.data)
                body, crc = data[:-4], data[-4:]
                assert zlib.crc32(body).to_bytes(4, "little") == crc, (m.id, data[:20])
                j = int(body[:8])
                assert j not in seen, ("duplicate", j, m.id, seen[j])
                seen[j] = m.id
                assert m.deliveries == 1
            if zc and rnd.random() < 0.05:
                views.append(b.payloads())
            con.ack(b)
    finally:
        w.wait(120)
    assert sorted(seen) == list(range(n))
    for vs in views:   # zero-copy views kept alive stay valid
        for v in vs:
            body, crc = bytes(v)[:-4], bytes(v)[-4:]
            assert zlib.crc32(body).to_bytes(4, "little") == crc
    served = sum(1 for r in spy.results if r)
    print(mode, zc, "wait_woken calls", len(spy.results), "served", served)
    if mode == "woken":
        assert served > 30
    con.close()
    c.close()


MEMBER = r"""
import os, sys, cometmp
from conftest import small_config
root, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
c = cometmp.Client(root, config=small_config())
con = cometmp.Consumer(c, "g")
with open(out, "a") as f:
    while not os.path.exists(stop):
        b = con.read("ev:shard:*", max_messages=50, timeout=0.05)
        if len(b):
            f.write("".join("%d\n" % int(bytes(m.data)[:8]) for m in b))
            f.flush()
            con.ack(b)
con.close()
c.close()
"""


def test_two_members_rebalancing_read_every_entry_exactly_once(data_dir, mode, tmp_path):
    import zlib
    n = 4000
    c = cometmp.Client(data_dir, config=small_config())
    c.log("ev", shards=8)
    con = cometmp.Consumer(c, "g")
    con.read("ev:shard:*", timeout=0)
    env = child_env()
    env["PYTHONPATH"] += os.pathsep + TESTS
    out, stop, gate = str(tmp_path / "p2.txt"), str(tmp_path / "stop"), str(tmp_path / "gate")
    open(out, "w").close()
    # the writer holds at entry n // 2 until the second member holds some of the shards,
    # so both members read what comes after the rebalance
    w = subprocess.Popen([sys.executable, "-c", WRITER, data_dir, str(n), "3", gate, str(n // 2)],
                         env=env)
    p2 = None
    mine = []
    def theirs():
        with open(out) as f:
            return [int(x) for x in f.read().split()]
    try:
        while len(mine) + len(theirs()) < n:
            if p2 is None and len(mine) >= n // 2:
                p2 = subprocess.Popen([sys.executable, "-c", MEMBER, data_dir, out, stop], env=env)
                joined_by = time.monotonic() + 60
            if p2 is not None and not os.path.exists(gate):
                if len(con.assigned()) < 8:
                    open(gate, "w").close()     # the rebalance gave the second member shards
                assert time.monotonic() < joined_by, "the second member never got a shard"
            b = con.read("ev:shard:*", max_messages=37, timeout=0.2)
            for m in b:
                data = bytes(m.data)
                assert zlib.crc32(data[:-4]).to_bytes(4, "little") == data[-4:]
                mine.append(int(data[:8]))
            con.ack(b)
    finally:
        open(stop, "w").close()
        w.wait(120)
        if p2 is not None:
            p2.wait(60)
    both = mine + theirs()
    print(mode, "mine", len(mine), "theirs", len(theirs()), "assigned", con.assigned())
    assert p2 is not None and len(theirs()) > 0
    assert sorted(both) == list(range(n)), (len(both), len(set(both)))
    con.close()
    c.close()


KILLED_WRITER = r"""
import os, signal, sys, cometmp
from conftest import small_config
root, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = cometmp.Client(root, config=small_config())
for j in range(lo, hi):
    c.append("s", [b"%08d" % j + os.urandom(3000)])
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_writer_killed_and_restarted_loses_nothing_for_a_blocked_reader(data_dir, mode, rebuild):
    c = cometmp.Client(data_dir, config=small_config())
    c.append("s", [b"%08d" % 0])
    con = cometmp.Consumer(c, "g")
    con.ack(con.read("s", timeout=0))
    con.close()
    c.close()   # no writer in this process: the state page is the children's
    c = cometmp.Client(data_dir, config=small_config())
    con2 = cometmp.Consumer(c, "g")
    got = [0]
    env = child_env()
    env["PYTHONPATH"] += os.pathsep + TESTS
    inodes = set()
    nxt = 1
    for rnd in range(6):
        p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, data_dir, str(nxt), str(nxt + 150)],
                             env=env)
        target = nxt + 150
        while len(got) < target:
            b = con2.read("s", max_messages=1000, timeout=10)
            assert len(b), ("stalled", rnd, len(got))
            got += [int(bytes(m.data)[:8]) for m in b]
            con2.ack(b)
        p.wait(60)
        if rebuild:   # a damaged page: the next writer builds a new one (new inode)
            with open(os.path.join(paths.stream_dir(data_dir, "s"), paths.STATE), "r+b") as f:
                f.write(b"\0\0\0\0")
        inodes.add(os.stat(os.path.join(paths.stream_dir(data_dir, "s"), paths.STATE)).st_ino)
        nxt = target
    print(mode, "state inodes", len(inodes), "got", len(got))
    assert got == list(range(nxt))
    con2.close()
    c.close()


@pytest.mark.parametrize("nstreams", [128, 129])
def test_a_blocked_read_over_128_or_129_streams_wakes_on_any(data_dir, mode, nstreams, monkeypatch):
    spy = WokenSpy()
    monkeypatch.setattr(consumer_mod, "_reader", spy)
    with cometmp.Client(data_dir, config=small_config(preallocate_bytes=4096)) as c:
        names = ["m%03d" % i for i in range(nstreams)]
        for nm in names:
            c.append(nm, [b"0"])
        con = cometmp.Consumer(c, "g")
        got = []
        while len(got) < nstreams:
            b = con.read("m*", timeout=0)
            got += [m.id.stream for m in b]
            con.ack(b)
        out = []
        def reader():
            b = con.read("m*", timeout=30)
            out.append([(m.id.stream, m.id.entry) for m in b])
        t = threading.Thread(target=reader)
        t.start()
        wait_until(lambda: sleeping_readers(c.path, names[0]) == 1, 30, "sleep")
        append_in_child(data_dir, names[-1] if nstreams == 128 else names[5], ["x"])
        t.join(30)
        assert not t.is_alive()
        print(mode, nstreams, out, spy.results)
        assert out == [[(names[-1] if nstreams == 128 else names[5], 1)]]
        con.close()


def test_a_forked_child_reattaches_and_wakes_on_new_entries(data_dir, mode, tmp_path):
    c = cometmp.Client(data_dir, config=small_config())
    c.append("s", [b"a0", b"a1"])
    con = cometmp.Consumer(c, "g")
    con.ack(con.read("s", timeout=0, assignment=(0, 1)))
    c.append("s", [b"a2"])
    con.read("s", timeout=0, assignment=(0, 1))          # delivered in the parent, not acked
    res = str(tmp_path / "res")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            got = []
            while len(got) < 3:
                b = con.read("s", timeout=10, assignment=(0, 1))
                if not len(b):
                    break
                got += [(m.id.entry, bytes(m.data), m.deliveries) for m in b]
                con.ack(b)
            with open(res, "w") as f:
                json.dump([[e, d.decode(), n] for e, d, n in got], f)
            code = 0
        finally:
            os._exit(code)
    # the child re-attaches: entries from the acked offset (2), then what we append
    wait_until(lambda: sleeping_readers(c.path, "s") >= 1, 30, "the child to sleep")
    c.append("s", [b"a3", b"a4"])
    _, st = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(st) == 0
    with open(res) as f:
        got = [(e, d.encode(), n) for e, d, n in json.load(f)]
    print(mode, got)
    assert [g[:2] for g in got] == [(2, b"a2"), (3, b"a3"), (4, b"a4")]
    con.close()
    c.close()


def test_a_stream_created_while_a_read_sleeps_is_read_later(data_dir, mode):
    """A stream matching the pattern created while read() sleeps, then a wake-up from an
    old stream: the full iteration relists (MATCH_RECHECK) and reads the new one too."""
    c = cometmp.Client(data_dir, config=small_config())
    c.append("p1", [b"a"])
    con = cometmp.Consumer(c, "g")
    con.ack(con.read("p*", timeout=0))
    out = []
    t = threading.Thread(target=lambda: out.append(con.read("p*", timeout=30)))
    t.start()
    wait_until(lambda: sleeping_readers(c.path, "p1") == 1, 30, "sleep")
    r = run_python("import sys, cometmp\n"          # a new matching stream, then a wake-up,
                   "with cometmp.Client(sys.argv[1]) as c:\n"   # within a millisecond
                   "    c.append('p2', [b'n0', b'n1'])\n"
                   "    c.append('p1', [b'b'])\n", data_dir)
    assert r.returncode == 0, r.stderr
    t.join(30)
    first = sorted((m.id.stream, m.id.entry) for m in out[0])
    con.ack(out[0])
    later = []
    while len(first) + len(later) < 3:
        b = con.read("p*", timeout=10)
        assert b, (first, later)
        later += sorted((m.id.stream, m.id.entry) for m in b)
        con.ack(b)
    print(mode, first, later)
    # both modes: the wake-up's entry comes with that read; the new stream is claimed
    # (membership) and read then or by a later read(), each entry once (whether the
    # relist of the woken read already finds it is timing: the writer made both within
    # a millisecond)
    assert ("p1", 1) in first
    assert sorted(first + later) == [("p1", 1), ("p2", 0), ("p2", 1)]
    con.close()
    c.close()
