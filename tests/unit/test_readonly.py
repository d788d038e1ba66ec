"""Client(path, readonly=True) never modifies, creates or deletes any file."""

from __future__ import annotations

import os
import time

import pytest

import cometmp
from cometmp import format as fmt

from conftest import (file_clock_past, oracle_walk, payload_for, segment_files, small_config,
                      tree_fingerprint)


def build(root: str) -> list[str]:
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("ro", shards=3)
        for i in range(400):
            lg.append(payload_for("ro", i, 40_000 if i % 4 == 0 else 100), key=str(i % 7))
        c.append("plain", [b"p1", b"p2"])
        return lg.streams + ["plain"]


def exercise(root: str, streams: list[str]) -> None:
    """Every read-side call of the public API, including ones that would repair things."""
    with cometmp.Client(root, readonly=True) as c:
        assert c.streams() == sorted(streams)
        c.stats()
        for s in streams:
            n = c.length(s)
            msgs = list(c.scan(s))
            for e in range(0, n, 13):
                try:
                    c.read(s, e)
                except cometmp.CorruptRecord:
                    pass
            c.list_recent(s, 5)
            if msgs:
                c.seek_time(s, msgs[len(msgs) // 2].timestamp_ns)
            c.first_entry(s)
        with pytest.raises(cometmp.ReadOnlyError):
            c.append("plain", b"nope")
        with pytest.raises(cometmp.ReadOnlyError):
            c.log("ro", shards=3)
        with pytest.raises(cometmp.ReadOnlyError):
            c.log("brand-new", shards=1)
        c.sync()


def settle(root: str) -> None:
    file_clock_past(root)  # any write from now on is an mtime/ctime change, coarse clocks too


def test_readonly_client_modifies_nothing_in_a_clean_directory(tmp_path):
    root = str(tmp_path / "log")
    streams = build(root)
    settle(root)
    before = tree_fingerprint(root)
    exercise(root, streams)
    assert tree_fingerprint(root) == before


def test_readonly_client_modifies_nothing_in_a_damaged_directory(tmp_path):
    """The damage a writable open would repair (torn tail, missing index and state,
    a corrupt record) is read around, never fixed, by a read-only client."""
    root = str(tmp_path / "log")
    streams = build(root)
    s0, s1, s2 = streams[:3]
    segs = segment_files(root, s0)
    assert len(segs) >= 2
    # torn tail: a half-written frame after the tail of the active segment
    tail_seg = segs[-1][1]
    recs, _ = oracle_walk(tail_seg)
    end = recs[-1].offset + recs[-1].frame_bytes
    with open(tail_seg, "r+b") as f:
        f.seek(end)
        f.write(fmt.encode_record(b"half", 1, len(recs))[:15])
    # missing index of a sealed segment, missing state of another stream
    os.unlink(segs[0][1][:-4] + ".idx")
    os.unlink(os.path.join(root, "streams", s1, "state"))
    # a corrupt record in a sealed segment
    sealed = segs[0][1]
    recs, _ = oracle_walk(sealed)
    with open(sealed, "r+b") as f:
        f.seek(recs[len(recs) // 2].offset + 9)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x10]))
    settle(root)
    before = tree_fingerprint(root)
    exercise(root, streams)
    assert tree_fingerprint(root) == before


def test_readonly_client_on_a_missing_directory_raises_and_creates_nothing(tmp_path):
    root = tmp_path / "absent"
    with pytest.raises(cometmp.CometError):
        cometmp.Client(str(root), readonly=True)
    assert not root.exists()
    assert os.listdir(tmp_path) == []


def test_readonly_client_sees_appends_made_after_it_opened(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as w:
        lg = w.log("live", shards=1)
        lg.append(b"first")
        with cometmp.Client(root, readonly=True) as r:
            assert r.length(lg.streams[0]) == 1
            ids = lg.append_many([payload_for("live", i, 30_000) for i in range(60)])  # rotates
            assert r.length(lg.streams[0]) == 61
            assert r.read(ids.stream, 60).data == payload_for("live", 59, 30_000)
            assert len(list(r.scan(ids.stream))) == 61


def test_readonly_reads_without_a_state_page_cost_what_they_cost_with_one(tmp_path):
    """A copied or damaged directory may have lost a stream's state page. A readonly
    reader then counts the records of the last segment itself, once, and afterwards only
    what was added; it used to walk the whole segment at every read (here 20,000
    records per read). Timed back to back, best of 5, so a loaded machine hurts both."""
    root = str(tmp_path / "log")
    with cometmp.Client(root) as c:
        ids = c.append("s", [b"x" * 50] * 20_000)
        c.append("t", [b"x" * 50] * 20_000)
    os.unlink(os.path.join(root, "streams", "t", "state"))

    def per_read(client, stream, n=500, bound=float("inf")):
        """Best of 3 mean seconds per read; a run that exceeds ``bound`` per read is cut
        short (it cannot be the best), so the old code fails fast instead of taking minutes."""
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i, e in enumerate(range(0, 20_000, 20_000 // n)):
                client.read(stream, e)
                if time.perf_counter() - t0 > bound * n:
                    break
            else:
                best = min(best, (time.perf_counter() - t0) / n)
        return best

    with cometmp.Client(root, readonly=True) as r:
        assert r.length("t") == 20_000 and r.read("t", 19_999).data == b"x" * 50
        with_state = per_read(r, "s")
        bound = 3 * with_state + 20e-6
        without = per_read(r, "t", bound=bound)
        print(f"readonly read: {with_state * 1e6:.2f} us with a state page, "
              f"{without * 1e6:.2f} us without")
        assert without < bound, (with_state, without)
        with pytest.raises(cometmp.EntryNotFound):
            r.read("t", 20_000)
    assert len(ids) == 20_000
