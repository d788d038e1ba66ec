"""Random bit flips in sealed segments are detected (C core and Python oracle), never
returned as data, and cost only the damaged record(s)."""

from __future__ import annotations

import json
import os
import random

import pytest

import cometmp
from cometmp import format as fmt
from cometmp.segment import Damage, RecordRef, Segment
from cometmp.tools.verify import verify_directory

from conftest import oracle_walk, payload_for, run_python, segment_files, small_config


def seeded_rng() -> random.Random:
    """This trial's random source; its seed is printed (shown when the test fails) and
    COMETMP_TEST_SEED replays it."""
    seed = int(os.environ.get("COMETMP_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed {seed} (replay: COMETMP_TEST_SEED={seed})")
    return random.Random(seed)


STREAM = "flip:shard:0000"


@pytest.fixture(scope="module")
def flipped_log(tmp_path_factory):
    """A stream of ~1,500 incompressible records over >= 3 sealed 1 MiB segments.
    Returns (root, {entry: payload}, [(base, path, [oracle records])] of sealed segments)."""
    root = str(tmp_path_factory.mktemp("flips") / "log")
    rnd = random.Random(1234)
    payloads = {}
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("flip", shards=1)
        n = 0
        while len(segment_files(root, STREAM)) < 4:
            batch = [payload_for("flip", n + i, rnd.choice([0, 1, 20, 300, 2000, 5000]))
                     for i in range(rnd.randint(1, 20))]
            ids = lg.append_many(batch)
            for i, p in zip(ids, batch):
                payloads[i.entry] = p
            n += len(batch)
    sealed = []
    for base, path in segment_files(root, STREAM)[:-1]:
        recs, damage = oracle_walk(path)
        assert not damage
        sealed.append((base, path, recs))
    return root, payloads, sealed


def flip_bit(path: str, offset: int, bit: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)[0]
        os.pwrite(fd, bytes([b ^ (1 << bit)]), offset)
    finally:
        os.close(fd)


def c_walk(path: str, base: int) -> tuple[list[int], int]:
    """(valid sequence numbers, number of corruption findings) seen by the C core (a torn
    tail, which ends the walk, is not counted)."""
    seg = Segment.open(path, base)
    try:
        items = list(seg.walk())
    finally:
        seg.close()
    return ([r.seq for r in items if isinstance(r, RecordRef)],
            sum(isinstance(r, Damage) and r.end != "torn" for r in items))


def check_only_lost(root: str, payloads: dict, lost: set[int]) -> None:
    """Every entry but ``lost`` reads back exactly; each lost one raises CorruptRecord; a
    scan skips exactly the lost ones and counts them."""
    with cometmp.Client(root, readonly=True) as c:
        got = list(c.scan(STREAM))
        assert [m.id.entry for m in got] == [e for e in sorted(payloads) if e not in lost]
        assert all(m.data == payloads[m.id.entry] for m in got)
        assert c.stats()["streams"][STREAM]["corrupt_skipped"] == len(lost)
        for e in lost:
            with pytest.raises(cometmp.CorruptRecord) as ei:
                c.read(STREAM, e)
            assert ei.value.path.endswith(".seg") and str(e) in str(ei.value)
            for near in (e - 1, e + 1):
                if near in payloads and near not in lost:
                    assert c.read(STREAM, near).data == payloads[near]


def test_single_bit_flip_costs_exactly_the_damaged_record(flipped_log):
    root, payloads, sealed = flipped_log
    rnd = seeded_rng()
    for trial in range(12):
        base, path, recs = rnd.choice(sealed)
        k = rnd.randrange(len(recs)) if trial % 4 else rnd.choice([0, len(recs) - 1])
        rec = recs[k]
        where = rec.offset + rnd.randrange(rec.frame_bytes)
        bit = rnd.randrange(8)
        flip_bit(path, where, bit)
        try:
            msg = f"trial {trial}: {path} byte {where} bit {bit} (record seq {k} at {rec.offset})"
            # the Python oracle sees one damaged stretch at exactly that record
            good, damage = oracle_walk(path)
            assert [r.seq for r in good] == [r.seq for r in recs if r.seq != k], msg
            assert len(damage) == 1 and damage[0].offset == rec.offset, msg
            assert damage[0].torn_tail == (k == len(recs) - 1), msg
            # the C core agrees
            seqs, reports = c_walk(path, base)
            assert seqs == [r.seq for r in good] and reports == (k != len(recs) - 1), msg
            # and so does `cometmp verify` (C core; with the oracle on some trials)
            rep = verify_directory(root, oracle=trial == 0)
            errors = [p for p in rep.all_problems() if p.severity == "error"]
            assert errors and all(p.path == path for p in errors), (msg, errors)
            assert any(p.offset == rec.offset for p in errors), (msg, errors)
            assert rep.streams[STREAM].corrupt_records == 1, msg
            check_only_lost(root, payloads, {base + k})
        finally:
            flip_bit(path, where, bit)
    check_only_lost(root, payloads, set())


def test_verify_cli_exits_1_and_names_file_and_offset_of_a_flip(flipped_log):
    root, payloads, sealed = flipped_log
    base, path, recs = sealed[1]
    rec = recs[len(recs) // 2]
    flip_bit(path, rec.offset + fmt.CM_REC_HEADER_BYTES + len(rec.payload) // 2, 0)
    try:
        p = run_python("import sys, cometmp.tools.cli; sys.exit(cometmp.tools.cli.main())", "verify", root, "--json")
        assert p.returncode == 1, p.stderr
        doc = json.loads(p.stdout)
        found = [q for q in doc["streams"][STREAM]["problems"] if q["severity"] == "error"]
        assert [(q["path"], q["offset"]) for q in found] == [(path, rec.offset)]
    finally:
        flip_bit(path, rec.offset + fmt.CM_REC_HEADER_BYTES + len(rec.payload) // 2, 0)
    p = run_python("import sys, cometmp.tools.cli; sys.exit(cometmp.tools.cli.main())", "verify", root, "--json")
    assert p.returncode == 0, p.stdout


def test_flips_in_several_records_cost_only_those_records(flipped_log):
    root, payloads, sealed = flipped_log
    rnd = random.Random(99)
    flips = []
    for base, path, recs in sealed[:2]:
        for k in rnd.sample(range(1, len(recs) - 1, 3), 3):   # not adjacent: every third
            rec = recs[k]
            flips.append((path, rec.offset + rnd.randrange(rec.frame_bytes), rnd.randrange(8), base + k))
    for path, where, bit, _ in flips:
        flip_bit(path, where, bit)
    try:
        check_only_lost(root, payloads, {e for *_, e in flips})
        for base, path, recs in sealed[:2]:
            _good, damage = oracle_walk(path)
            assert len(damage) == 3 and all(d.lost == 1 and not d.torn_tail for d in damage)
    finally:
        for path, where, bit, _ in flips:
            flip_bit(path, where, bit)
    check_only_lost(root, payloads, set())


def test_damaged_compressed_payload_raises_corrupt_record_not_garbage(tmp_path):
    root = str(tmp_path / "log")
    big = b"compress me " * 2000
    with cometmp.Client(root, config=small_config()) as c:
        ids = c.log("z", shards=1).append_many([b"before", big, b"after"])
    (base, path), = segment_files(root, ids.stream)
    recs, _ = oracle_walk(path)
    assert recs[1].compressed
    flip_bit(path, recs[1].offset + fmt.CM_REC_HEADER_BYTES + len(recs[1].payload) // 2, 3)
    with cometmp.Client(root, readonly=True) as c:
        with pytest.raises(cometmp.CorruptRecord):
            c.read(ids.stream, 1)
        assert [m.data for m in c.scan(ids.stream)] == [b"before", b"after"]


def test_corrupt_record_in_active_segment_is_kept_out_and_numbering_continues(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("a", shards=1)
        payloads = [payload_for("a", i, 50) for i in range(40)]
        lg.append_many(payloads)
    (base, path), = segment_files(root, lg.streams[0])
    recs, _ = oracle_walk(path)
    victim = recs[-3]                      # after the last sparse index point: recovery sees it
    flip_bit(path, victim.offset + fmt.CM_REC_OFF_TS + 2, 5)
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("a", shards=1)
        assert lg.append(b"new").entry == 40       # not renumbered, no gap
        s = lg.streams[0]
        assert c.stats()["streams"][s]["counters"]["corrupt_records"] == 1
        with pytest.raises(cometmp.CorruptRecord):
            c.read(s, 37)
        assert [m.data for m in c.scan(s)] == payloads[:37] + payloads[38:] + [b"new"]
    good, damage = oracle_walk(path)
    assert len(damage) == 1 and damage[0].lost == 1 and len(good) == 40
