"""A torn tail of the active segment (cut, zeroed or overwritten at any byte of its last
records) is repaired at open: complete records survive, the torn one is dropped, appends
continue the numbering, and the repaired stream reopens cleanly.

Two cases differ. With the state page lost ("deleted"), nothing says which records were
published, so the damaged end is a torn tail and its numbers are given out again. With
this boot's state page kept ("kept"), the damaged records were published (acknowledged):
that is corruption, their numbers are kept (I1) and reads report them (I2)."""

from __future__ import annotations

import os
import random

import pytest

import cometmp
from cometmp import format as fmt

from conftest import MiB, frame_for, oracle_walk, segment_files, small_config

STREAM = "torn:shard:0000"
# the last three records: an empty one, a short one, one that spans a 4 KiB block boundary
LAST_SIZES = [0, 7, 33]


def nonzero_payload(i: int, size: int) -> bytes:
    """No zero bytes, so zeroing any byte of a record always changes it."""
    rnd = random.Random(i)
    return bytes(rnd.randrange(1, 256) for _ in range(size))


class TornLab:
    """One stream written once; each trial damages it, then restores it byte for byte."""

    def __init__(self, root: str):
        self.root = root
        self.cfg = small_config()
        sizes = [100] * 40 + [4096 - 100 * 40 % 4096 - 64 - 20 * 43 - 40] + LAST_SIZES
        self.payloads = [nonzero_payload(i, s) for i, s in enumerate(sizes)]
        with cometmp.Client(root, config=self.cfg) as c:
            lg = c.log("torn", shards=1)
            for p in self.payloads[:-3]:
                lg.append(p)
            lg.append_many(self.payloads[-3:])
        (_, self.seg), = segment_files(root, STREAM)
        self.recs, damage = oracle_walk(self.seg)
        assert not damage and len(self.recs) == len(self.payloads)
        self.tail = self.recs[-1].offset + self.recs[-1].frame_bytes
        self.start = self.recs[-3].offset
        d = os.path.dirname(self.seg)
        self.files = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
        self.pristine = self.files[os.path.basename(self.seg)]

    def restore(self) -> None:
        d = os.path.dirname(self.seg)
        for n in os.listdir(d):
            if n not in self.files:
                os.unlink(os.path.join(d, n))
        for n, data in self.files.items():
            with open(os.path.join(d, n), "wb") as f:
                f.write(data)

    def survivors(self, damaged: bytes) -> int:
        """How many leading records are byte-identical to what was written."""
        n = 0
        for r in self.recs:
            end = r.offset + r.frame_bytes
            if end > len(damaged) or damaged[r.offset:end] != self.pristine[r.offset:end]:
                break
            n += 1
        return n

    def reopen_append_reopen(self, expect: int, msg: str, state: str = "deleted") -> None:
        n = len(self.payloads) if state == "kept" else expect   # numbers handed out so far
        with cometmp.Client(self.root, config=self.cfg) as c:
            lg = c.log("torn", shards=1)
            assert c.length(STREAM) == n, msg
            assert lg.append(b"after-1").entry == n, msg
            counters = c.stats()["streams"][STREAM]["counters"]
            if expect < len(self.payloads):        # a repair happened and was counted
                assert counters["recoveries"] >= 1, msg
                if state == "kept":
                    assert counters["corrupt_records"] >= len(self.payloads) - expect, msg
        with cometmp.Client(self.root, config=self.cfg) as c:
            lg = c.log("torn", shards=1)
            assert lg.append(b"after-2").entry == n + 1, msg
            got = [m.data for m in c.scan(STREAM)]
            assert got == self.payloads[:expect] + [b"after-1", b"after-2"], msg
            for e in range(expect, n):          # kept numbers of damaged records: reported
                with pytest.raises(cometmp.CorruptRecord):
                    c.read(STREAM, e)
        assert os.path.getsize(self.seg) == 1 * MiB, msg          # I9: size never changes
        if state == "kept":
            return  # the oracle's walk stops at the damage; the reads above checked the rest
        recs, damage = oracle_walk(self.seg)
        assert not damage and len(recs) == expect + 2, msg
        with open(self.seg, "rb") as f:                           # nothing after the new tail
            buf = f.read()
        end = recs[-1].offset + recs[-1].frame_bytes
        assert buf[end:] == bytes(len(buf) - end), msg


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return TornLab(str(tmp_path_factory.mktemp("torn") / "log"))


def damage_file(path: str, data: bytes, at: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, at)
    finally:
        os.close(fd)


def drop_state(lab: TornLab) -> None:
    os.unlink(os.path.join(os.path.dirname(lab.seg), "state"))


@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_tail_zeroed_from_every_offset_of_the_last_records(lab, state):
    assert lab.tail - lab.start == sum(20 + s for s in LAST_SIZES)
    for cut in range(lab.start, lab.tail):
        lab.restore()
        damage_file(lab.seg, bytes(lab.tail - cut), cut)
        if state == "deleted":
            drop_state(lab)
        damaged = lab.pristine[:cut] + bytes(lab.tail - cut) + lab.pristine[lab.tail:]
        expect = lab.survivors(damaged)  # zeroing bytes that were zero leaves a record whole
        assert len(lab.payloads) - 3 <= expect <= len(lab.payloads)
        lab.reopen_append_reopen(expect, f"zeroed from {cut}, state {state}", state)
    lab.restore()


@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_tail_overwritten_with_garbage_from_every_offset_of_the_last_records(lab, state):
    rnd = random.Random(7)
    for cut in range(lab.start, lab.tail):
        lab.restore()
        junk = bytes(b ^ rnd.randrange(1, 256) for b in lab.pristine[cut:lab.tail])
        damage_file(lab.seg, junk, cut)
        if state == "deleted":
            drop_state(lab)
        expect = len(lab.payloads) - 3 + sum(r.offset + r.frame_bytes <= cut for r in lab.recs[-3:])
        lab.reopen_append_reopen(expect, f"garbage from {cut}, state {state}", state)
    lab.restore()


@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_segment_file_cut_short_at_every_offset_of_the_last_records(lab, state):
    """The file itself is truncated (e.g. a copy cut off): the missing bytes are a torn
    tail, and the file is restored to its fixed size (I9)."""
    for cut in range(lab.start, lab.tail + 1):
        lab.restore()
        os.truncate(lab.seg, cut)
        if state == "deleted":
            drop_state(lab)
        expect = lab.survivors(lab.pristine[:cut] + bytes(len(lab.pristine) - cut))
        lab.reopen_append_reopen(expect, f"cut at {cut}, state {state}", state)
    lab.restore()


@pytest.mark.parametrize("gap", [0, 1, 19, 20, 4096, 70_000])
def test_garbage_after_the_tail_is_zeroed_before_appending(lab, gap):
    """Unpublished bytes after the published tail (a killed writer's half-written record),
    possibly after a stretch of zeros, are dropped and reported, never read as entries."""
    for junk_kind in ("random", "valid-frames"):
        lab.restore()
        if junk_kind == "random":
            junk = os.urandom(300) + b"\x01"
        else:  # stale but well-formed frames of later sequence numbers: the worst case
            n = len(lab.payloads)
            junk = b"".join(frame_for(lab.seg, b"ghost%d" % i, 1, n + i + (gap > 0)) for i in range(5))
        damage_file(lab.seg, junk, lab.tail + gap)
        n = len(lab.payloads)
        with cometmp.Client(lab.root, config=lab.cfg) as c:
            lg = c.log("torn", shards=1)
            assert c.length(STREAM) == n
            assert c.stats()["streams"][STREAM]["counters"]["bytes_dropped"] >= gap + len(junk) - 1 \
                or junk_kind == "valid-frames" and gap == 0
            # the first new record is short: whatever lies beyond it must already be gone
            assert lg.append(b"x").entry == n
        with open(lab.seg, "rb") as f:
            buf = f.read()
        end = lab.tail + 21
        assert buf[end:] == bytes(len(buf) - end), f"{junk_kind} after a {gap}-byte gap survived"
        # a later full rescan (state lost) finds exactly the real entries
        drop_state(lab)
        with cometmp.Client(lab.root, config=lab.cfg) as c:
            assert c.log("torn", shards=1).append(b"y").entry == n + 1
            assert [m.data for m in c.scan(STREAM)] == lab.payloads + [b"x", b"y"]
    lab.restore()
