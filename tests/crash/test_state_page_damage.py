"""A damaged state-page field never hides an entry or lets retention delete data it
would otherwise keep: the state page is derived data (FORMAT.md §4), what the segment
files say wins (I27), and every deletion retention makes is in its report.

Each trial copies one stream (five 1 MiB segments, a consumer group that acked into the
third), flips one seeded random bit of one state-page field while no process has the
stream open, and then checks readers, a writer open, retention, consumers and appends
against an undamaged copy of the same stream. Seeds are printed; rerun one trial with
``COMETMP_STATE_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess

import pytest

import cometmp
from cometmp import format as fmt
from cometmp import paths
from conftest import small_config

STREAM = "sp:shard:0000"
ENTRIES = 1300               # 3.9 KB each: ~268 per 1 MiB segment

#: every field of the state page a decision could read (FORMAT.md §4), with its size;
#: the lock bytes are left out (a damaged mutex is the lock policy's case, issue 9 item 2)
FIELDS = {
    "magic": (fmt.CM_STATE_OFF_MAGIC, 4),
    "version": (fmt.CM_STATE_OFF_VERSION, 2),
    "fingerprint": (fmt.CM_STATE_OFF_FINGERPRINT, 8),
    "size": (fmt.CM_STATE_OFF_SIZE, 4),
    "created_ns": (fmt.CM_STATE_OFF_CREATED, 8),
    "boot_id": (fmt.CM_STATE_OFF_BOOT_ID, fmt.CM_STATE_BOOT_ID_BYTES),
    "committed": (fmt.CM_STATE_OFF_COMMITTED, 8),
    "active_base": (fmt.CM_STATE_OFF_ACTIVE_BASE, 8),
    "tail": (fmt.CM_STATE_OFF_TAIL, 8),
    "reserve_end": (fmt.CM_STATE_OFF_RESERVE_END, 8),
    "last_ts": (fmt.CM_STATE_OFF_LAST_TS, 8),
    "alloc_end": (fmt.CM_STATE_OFF_ALLOC_END, 8),
    "idx_last_off": (fmt.CM_STATE_OFF_IDX_LAST_OFF, 8),
    "idx_count": (fmt.CM_STATE_OFF_IDX_COUNT, 4),
    "waiters": (fmt.CM_STATE_OFF_WAITERS, 4),
    "first_entry": (fmt.CM_STATE_OFF_FIRST_ENTRY, 8),
    "notify_seq": (fmt.CM_STATE_OFF_NOTIFY_SEQ, 4),
    "active_gen": (fmt.CM_STATE_OFF_ACTIVE_GEN, 4),
    "rotate_pending": (fmt.CM_STATE_OFF_ROTATE_PENDING, 4),
    "counters": (fmt.CM_STATE_OFF_COUNTERS, 8 * fmt.CM_STATE_COUNTERS),
}
#: fields a readonly reader consults without a writer open in between
READER_FIELDS = ("first_entry", "active_base", "tail", "notify_seq", "magic", "version", "size")


def payload(i: int) -> bytes:
    return b"%08d:" % i + bytes([i % 251]) * 3891   # below compression.min_bytes


def config(**retention) -> cometmp.Config:
    cfg = small_config()
    cfg.retention.check_interval = 3600
    cfg.retention.hard_min_free_ratio = 0.0
    for k, v in retention.items():
        setattr(cfg.retention, k, v)
    return cfg


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("statepage") / "log")
    with cometmp.Client(root, config=config()) as c:
        c.append(STREAM, [payload(i) for i in range(ENTRIES)])
        bases = paths.list_segment_bases(paths.stream_dir(root, STREAM))
        assert len(bases) >= 5
        con = cometmp.Consumer(c, group="g")
        con.reset_offset(STREAM, bases[2] + 5)   # acked into the third segment
        con.close()
    return root, bases


def state_path(root: str) -> str:
    return os.path.join(paths.stream_dir(root, STREAM), paths.STATE)


def flip(root: str, field: str, rnd: random.Random, whole_byte: bool = False) -> str:
    off, size = FIELDS[field]
    with open(state_path(root), "r+b") as f:
        f.seek(off)
        raw = bytearray(f.read(size))
        i = rnd.randrange(size)
        if whole_byte:
            old = raw[i]
            raw[i] = rnd.choice([v for v in range(256) if v != old])
            what = f"byte {i} {old:#x}->{raw[i]:#x}"
        else:
            bit = rnd.randrange(8)
            raw[i] ^= 1 << bit
            what = f"byte {i} bit {bit}"
        f.seek(off)
        f.write(raw)
    return what


def outcome(root: str) -> dict:
    """What a writer open, one retention run, a scan and the group's consumer see."""
    out = {}
    with cometmp.Client(root, config=config(max_shard_bytes=1)) as c:
        rep = c.run_retention()
        out["deleted"] = sorted((d.base, d.end) for d in rep.deleted)
        out["dropped"] = rep.dropped
        out["files"] = paths.list_segment_bases(paths.stream_dir(root, STREAM))
        out["first"] = c.first_entry(STREAM)
        out["length"] = c.length(STREAM)
        out["scan"] = [(m.id.entry, m.data) for m in c.scan(STREAM)]
        con = cometmp.Consumer(c, group="g", on_drop=lambda *a: out.setdefault("drops", []).append(a))
        got = []
        while True:
            b = con.read(STREAM, max_messages=2000, timeout=0)
            if not b:
                break
            got += [(m.id.entry, m.data) for m in b]
            con.ack(b)
        con.close()
        out["consumed"] = got
        out["next"] = c.append(STREAM, [b"after"])[0].entry
    return out


@pytest.fixture(scope="module")
def baseline(template, tmp_path_factory):
    src, bases = template
    root = str(tmp_path_factory.mktemp("baseline") / "log")
    copy_tree(src, root)
    out = outcome(root)
    assert out["deleted"] == [(bases[0], bases[1]), (bases[1], bases[2])]
    return out


def copy_tree(src: str, dst: str) -> None:
    # cp keeps the 40 MiB offsets file sparse (shutil.copytree would write it out)
    subprocess.run(["cp", "-a", "--sparse=always", src, dst], check=True)


def seeds(n: int) -> list[int]:
    fixed = os.environ.get("COMETMP_STATE_SEED")
    if fixed:
        return [int(fixed)]
    return [random.SystemRandom().randrange(2**32) for _ in range(n)]


def check_trial(template, baseline, tmp_path, field: str, seed: int, whole_byte: bool = False):
    src, bases = template
    root = str(tmp_path / f"t{seed}")
    copy_tree(src, root)
    rnd = random.Random(seed)
    what = flip(root, field, rnd, whole_byte)
    ctx = f"field {field} seed {seed} ({what})"
    print(ctx)
    if field in READER_FIELDS:
        with cometmp.Client(root, config=config(), readonly=True) as ro:
            assert ro.first_entry(STREAM) == 0, ctx
            assert [m.data for m in ro.scan(STREAM)] == [payload(i) for i in range(ENTRIES)], ctx
    before = set(paths.list_segment_bases(paths.stream_dir(root, STREAM)))
    out = outcome(root)
    # retention deleted exactly what it deletes from an undamaged page, and reported it
    assert out["deleted"] == baseline["deleted"], ctx
    gone = sorted(before - set(out["files"]))
    assert gone == [b for b, _ in out["deleted"]], ctx
    assert not out["dropped"] and not out.get("drops"), ctx
    # every retained entry is seen, with its bytes, by a scan and by the group
    assert out["first"] == baseline["first"] == bases[2], ctx
    assert out["length"] == ENTRIES, ctx
    assert out["scan"] == [(i, payload(i)) for i in range(bases[2], ENTRIES)], ctx
    assert out["consumed"] == [(i, payload(i)) for i in range(bases[2] + 5, ENTRIES)], ctx
    assert out["next"] == ENTRIES, ctx          # numbering continues densely (I1)
    # only the state page was damaged: the segments need no oracle walk after the test
    shutil.rmtree(root)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_flipped_bit_in_any_state_page_field_hides_nothing_and_deletes_nothing_extra(
        template, baseline, tmp_path, field):
    for seed in seeds(3):
        check_trial(template, baseline, tmp_path, field, seed)


def test_a_flipped_first_entry_bit_does_not_hide_older_entries_or_let_retention_delete_them(
        template, baseline, tmp_path):
    # the case of issue 9: every bit of first_entry that can rise above the oldest base
    for seed in seeds(3):
        check_trial(template, baseline, tmp_path, "first_entry", seed)
    src, bases = template
    root = str(tmp_path / "high")
    copy_tree(src, root)
    with open(state_path(root), "r+b") as f:      # first_entry = the fourth segment's base
        f.seek(fmt.CM_STATE_OFF_FIRST_ENTRY)
        f.write(struct.pack("=Q", bases[3]))
    with cometmp.Client(root, config=config(), readonly=True) as ro:
        assert ro.first_entry(STREAM) == 0
        assert len(list(ro.scan(STREAM))) == ENTRIES
    out = outcome(root)
    assert out["deleted"] == baseline["deleted"]
    assert out["files"] == bases[2:]
    assert out["consumed"] == [(i, payload(i)) for i in range(bases[2] + 5, ENTRIES)]
    shutil.rmtree(root)


def test_a_damaged_rotate_pending_byte_neither_hides_nor_renumbers_entries(
        template, baseline, tmp_path):
    for seed in seeds(3):
        check_trial(template, baseline, tmp_path, "rotate_pending", seed, whole_byte=True)


@pytest.mark.soak
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_state_page_bit_flips_soak(template, baseline, tmp_path, field):
    for seed in seeds(40):
        check_trial(template, baseline, tmp_path, field, seed)


def test_a_last_ts_damaged_far_ahead_does_not_clamp_later_timestamps(template, tmp_path):
    """I6 takes the newest timestamp from the files: a state page whose last_ts was damaged
    to the year 2200 must not make every later append carry that timestamp (I6's clamp
    would otherwise hold them there), and timestamps still never decrease."""
    import time

    src, _bases = template
    root = str(tmp_path / "log")
    copy_tree(src, root)
    far = int((2200 - 1970) * 365.25 * 86400 * 1e9)
    with open(state_path(root), "r+b") as f:
        f.seek(fmt.CM_STATE_OFF_LAST_TS)
        f.write(struct.pack("=q", far))
    with cometmp.Client(root, config=config()) as c:
        last = c.read(STREAM, ENTRIES - 1).timestamp_ns
        before = time.time_ns()
        m = c.read(STREAM, c.append(STREAM, [b"after"])[0].entry)
        after = time.time_ns()
        assert last <= m.timestamp_ns <= after, (last, m.timestamp_ns, before, after)
