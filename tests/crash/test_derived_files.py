"""Indexes and state pages are derived data: deleted or damaged, they are rebuilt from
the segments, and entry numbers never change (I1, I8)."""

from __future__ import annotations

import os
import random
import shutil

import pytest

import cometmp
from cometmp import format as fmt
from cometmp import paths

from conftest import oracle_walk, payload_for, segment_files, small_config, tree_fingerprint

STREAM = "der:shard:0000"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A stream over 4 segments (3 sealed), written once; tests work on copies."""
    root = str(tmp_path_factory.mktemp("derived") / "log")
    rnd = random.Random(5)
    payloads = []
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("der", shards=1)
        while len(segment_files(root, STREAM)) < 4:
            batch = [payload_for("der", len(payloads) + i, rnd.choice([10, 200, 3000]))
                     for i in range(rnd.randint(1, 30))]
            lg.append_many(batch)
            payloads += batch
        lg.append_many([b"tail-%d" % i for i in range(50)])
        payloads += [b"tail-%d" % i for i in range(50)]
    return root, payloads


@pytest.fixture
def log_copy(template, tmp_path):
    src, payloads = template
    root = str(tmp_path / "log")
    shutil.copytree(src, root)
    return root, list(payloads)


def sdir(root: str) -> str:
    return os.path.join(root, "streams", STREAM)


def check_index_matches_segment(root: str, base: int) -> int:
    """The .idx of ``base`` is valid and every entry names a real record; returns its size."""
    with open(os.path.join(sdir(root), paths.index_name(base)), "rb") as f:
        parsed = fmt.parse_index(f.read())
    assert parsed is not None, "index header invalid"
    ibase, interval, entries = parsed
    assert ibase == base and interval >= 64
    recs, _ = oracle_walk(os.path.join(sdir(root), paths.segment_name(base)))
    by_off = {r.offset: r for r in recs}
    for rel, off, ts in entries:
        assert off in by_off and by_off[off].seq == rel and by_off[off].ts_ns == ts
    return len(entries)


def read_everything(root: str, payloads: list[bytes], readonly: bool = False) -> None:
    with cometmp.Client(root, config=small_config(), readonly=readonly) as c:
        assert c.length(STREAM) == len(payloads)
        for e in list(range(0, len(payloads), 97)) + [len(payloads) - 1]:
            m = c.read(STREAM, e)
            assert m.id.entry == e and m.data == payloads[e]
        assert [m.data for m in c.scan(STREAM)] == payloads


def damage(path: str, how: str) -> None:
    if how == "deleted":
        os.unlink(path)
    elif how == "garbage":
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    elif how == "truncated":
        os.truncate(path, 10)
    elif how == "zeroed":
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(bytes(size))
    else:
        raise AssertionError(how)


# ---- sparse indexes ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated", "zeroed"])
def test_sealed_segment_index_is_rebuilt_and_entries_keep_their_numbers(log_copy, how):
    root, payloads = log_copy
    sealed = [b for b, _ in segment_files(root, STREAM)[:-1]]
    for b in sealed:
        damage(os.path.join(sdir(root), paths.index_name(b)), how)
    read_everything(root, payloads)
    for b in sealed:
        assert check_index_matches_segment(root, b) > 10      # rebuilt, persisted, usable


def test_index_pointing_at_wrong_offsets_is_detected_and_rebuilt(log_copy):
    root, payloads = log_copy
    base = segment_files(root, STREAM)[1][0]
    path = os.path.join(sdir(root), paths.index_name(base))
    with open(path, "rb") as f:
        b, interval, entries = fmt.parse_index(f.read())
    # valid header, plausible but wrong entries: every offset shifted by one record header
    bad = [(rel, off + fmt.CM_REC_HEADER_BYTES, ts) for rel, off, ts in entries]
    with open(path, "wb") as f:
        f.write(fmt.encode_index(b, interval, bad, os.path.getsize(path)))
    read_everything(root, payloads)
    check_index_matches_segment(root, base)


@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated"])
def test_active_segment_index_is_rebuilt_by_the_writer_at_open(log_copy, how):
    root, payloads = log_copy
    active = segment_files(root, STREAM)[-1][0]
    damage(os.path.join(sdir(root), paths.index_name(active)), how)
    with cometmp.Client(root, config=small_config()) as c:
        assert c.log("der", shards=1).append(b"next").entry == len(payloads)
        assert c.seek_time(STREAM, c.read(STREAM, len(payloads) - 1).timestamp_ns) <= len(payloads) - 1
    assert check_index_matches_segment(root, active) >= 1
    read_everything(root, payloads + [b"next"])


# ---- state pages ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated", "zeroed"])
def test_state_is_rebuilt_from_segments_without_renumbering(log_copy, how):
    root, payloads = log_copy
    damage(os.path.join(sdir(root), "state"), how)
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("der", shards=1)
        w_id = lg.append(b"after")
        assert w_id.entry == len(payloads)
        assert c.stats()["streams"][STREAM]["state"] == "ok"
    read_everything(root, payloads + [b"after"])


def test_state_rebuild_after_retention_deleted_the_oldest_segments(log_copy):
    root, payloads = log_copy
    segs = segment_files(root, STREAM)
    for b, p in segs[:2]:          # what retention does: whole segments, oldest first
        os.unlink(p)
        os.unlink(os.path.join(sdir(root), paths.index_name(b)))
    first = segs[2][0]
    damage(os.path.join(sdir(root), "state"), "deleted")
    with cometmp.Client(root, config=small_config()) as c:
        assert c.log("der", shards=1).append(b"after").entry == len(payloads)
        assert c.length(STREAM) == len(payloads) + 1
        assert c.first_entry(STREAM) == first
        for e in (0, first - 1):
            with pytest.raises(cometmp.EntryNotFound):
                c.read(STREAM, e)
        msgs = list(c.scan(STREAM))
        assert [m.id.entry for m in msgs] == list(range(first, len(payloads) + 1))
        assert [m.data for m in msgs] == payloads[first:] + [b"after"]
        assert [m.data for m in c.list_recent(STREAM, 3)] == payloads[-2:] + [b"after"]


def test_stream_whose_segments_were_all_deleted_continues_at_its_length(log_copy):
    root, payloads = log_copy
    for b, p in segment_files(root, STREAM):
        os.unlink(p)
        os.unlink(os.path.join(sdir(root), paths.index_name(b)))
    with cometmp.Client(root, config=small_config()) as c:
        assert c.log("der", shards=1).append(b"after").entry == len(payloads)
        assert [m.data for m in c.scan(STREAM)] == [b"after"]
    assert [b for b, _ in segment_files(root, STREAM)] == [len(payloads)]


def test_state_with_a_garbage_tail_line_is_not_trusted(log_copy):
    root, payloads = log_copy
    path = os.path.join(sdir(root), "state")
    with open(path, "r+b") as f:     # keep magic, fingerprint and mutex; scramble the tail line
        f.seek(fmt.CM_STATE_OFF_COMMITTED)
        f.write(os.urandom(fmt.CM_STATE_OFF_FIRST_ENTRY - fmt.CM_STATE_OFF_COMMITTED))
    with cometmp.Client(root, config=small_config()) as c:
        assert c.log("der", shards=1).append(b"after").entry == len(payloads)
    read_everything(root, payloads + [b"after"])


def test_readonly_client_reads_without_state_and_index_and_creates_neither(log_copy):
    root, payloads = log_copy
    for b, _ in segment_files(root, STREAM):
        os.unlink(os.path.join(sdir(root), paths.index_name(b)))
    os.unlink(os.path.join(sdir(root), "state"))
    before = tree_fingerprint(root)
    read_everything(root, payloads, readonly=True)
    assert tree_fingerprint(root) == before


def test_leftover_temp_files_are_deleted_at_open_and_never_read(log_copy):
    """A crash between creating a temp file and renaming it (I7) leaves *.tmp behind: it
    never becomes part of the log, and the next writer open deletes it."""
    root, payloads = log_copy
    d = sdir(root)
    n = len(payloads)
    stray_seg = os.path.join(d, paths.segment_name(n) + paths.TMP_SUFFIX)
    with open(stray_seg, "wb") as f:             # a whole, valid-looking next segment
        f.write(open(segment_files(root, STREAM)[-1][1], "rb").read())
    stray_idx = os.path.join(d, paths.index_name(n) + paths.TMP_SUFFIX)
    with open(stray_idx, "wb") as f:
        f.write(b"half an index")
    read_everything(root, payloads, readonly=True)
    assert os.path.exists(stray_seg) and os.path.exists(stray_idx)     # readers leave them
    with cometmp.Client(root, config=small_config()) as c:
        assert c.log("der", shards=1).append(b"after").entry == n
    assert not os.path.exists(stray_seg) and not os.path.exists(stray_idx)
    read_everything(root, payloads + [b"after"])
