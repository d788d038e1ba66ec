"""The package's one walker (native/walker.c) and the tests' independent oracle
(tests/oracle.py) agree on every damaged segment: records, findings (offset, first
sequence, entries lost, how the stretch ends, which rule failed), under every limit a
reader uses. The damage suites check the same on their own fixtures (oracle_walk and the
autouse check in conftest.py); this module adds damage shapes they do not make."""

from __future__ import annotations

import os

import pytest

import cometmp
from cometmp import format as fmt
from cometmp.tools.verify import verify_directory

from conftest import (assert_walkers_agree, c_walk_items, oracle_items, published_limits, segment_files,
                      small_config)

N = 50
PAYLOAD = b"record-%03d"
FRAME = fmt.CM_REC_HEADER_BYTES + len(PAYLOAD % 0)


def frame_offset(k: int) -> int:
    return fmt.CM_SEG_HEADER_BYTES + k * FRAME


def make_log(root: str, sealed: bool = False) -> tuple[str, str]:
    """N equal-size records in one segment (the active one, or with ``sealed`` a sealed one
    followed by an active segment). Returns (stream, path of that segment)."""
    cfg = small_config()
    with cometmp.Client(root, cfg) as c:
        for i in range(N):
            c.append("w", [PAYLOAD % i])
        if sealed:
            c.append("w", [b"x" * (1024 * 1024 - 100)])   # does not fit: rotates
            c.append("w", [b"after"])
    (_, path), *_ = segment_files(root, "w")
    return "w", path


def patch(path: str, off: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def damage_at(path: str, how: str, k: int) -> None:
    off = frame_offset(k)
    if how == "zero-frame":
        patch(path, off, bytes(FRAME))
    elif how == "zero-header":
        patch(path, off, bytes(fmt.CM_REC_HEADER_BYTES))
    elif how == "zero-to-end":
        patch(path, off, bytes(frame_offset(N) - off))
    elif how in ("flip-len", "flip-crc", "flip-ts", "flip-seq", "flip-flags", "flip-payload"):
        at = off + {"flip-len": 1, "flip-crc": 5, "flip-ts": 12, "flip-seq": 16,
                    "flip-flags": 19, "flip-payload": 22}[how]
        with open(path, "r+b") as f:
            f.seek(at)
            b = f.read(1)[0]
        patch(path, at, bytes([b ^ (0x40 if how == "flip-flags" else 0x04)]))
    elif how == "duplicate-seq":
        # the frame of k copied over k + 1: the same sequence resurfaces after damage
        with open(path, "rb") as f:
            f.seek(off)
            frame = f.read(FRAME)
        patch(path, off + FRAME, frame)
        patch(path, off + 3, b"\xff")
    elif how == "two-stretches":
        patch(path, off, bytes(FRAME))
        patch(path, frame_offset(k + 3) + 5, b"\x00\x00")
    else:  # pragma: no cover
        raise AssertionError(how)


HOWS = ["zero-frame", "zero-header", "zero-to-end", "flip-len", "flip-crc", "flip-ts", "flip-seq",
        "flip-flags", "flip-payload", "duplicate-seq", "two-stretches"]


@pytest.mark.parametrize("sealed", [False, True], ids=["active", "sealed"])
def test_zeroing_one_published_frame_costs_one_entry_for_every_reader(tmp_path, sealed):
    """The case that made `verify --oracle` report "49 vs 20 valid records": below the
    published count an end of data is damage, for the C walker and the oracle alike."""
    root = str(tmp_path / "log")
    stream, path = make_log(root, sealed)
    damage_at(path, "zero-frame", 20)
    assert assert_walkers_agree(path) >= 1
    limited = c_walk_items(path, N if not sealed else N)
    assert [i for i in limited if i[0] == "damage"] == [("damage", frame_offset(20), 20, 1, "resync", "end-of-data")]
    rep = verify_directory(root, oracle=True)
    problems = rep.all_problems()
    assert not [p for p in problems if p.kind == "oracle"], problems
    (bad,) = [p for p in problems if p.severity == "error"]
    assert (bad.kind, bad.offset, bad.first_entry, bad.entries_lost, bad.cause) == \
        ("corrupt-record", frame_offset(20), 20, 1, "end-of-data")
    assert rep.streams[stream].corrupt_records == 1
    with cometmp.Client(root, readonly=True) as c:
        assert [m.data for m in c.scan(stream)][:N - 1] == [PAYLOAD % i for i in range(N) if i != 20]
        with pytest.raises(cometmp.CorruptRecord):
            c.read(stream, 20)
        assert c.read(stream, 21).data == PAYLOAD % 21
    # a writer open (recovery) keeps every number and loses only the zeroed entry
    with cometmp.Client(root, small_config()) as c:
        nxt = c.append(stream, [b"new"])[0].entry
        assert nxt == (N if not sealed else N + 2)
        with cometmp.Consumer(c, group="g") as cons:
            got = []
            while True:
                b = cons.read(stream, max_messages=1000, timeout=0)
                if not len(b):
                    break
                got += [m.id.entry for m in b]
                cons.ack(b)
        assert got == [e for e in range(nxt + 1) if e != 20]
    assert assert_walkers_agree(path) >= 1


@pytest.mark.parametrize("sealed", [False, True], ids=["active", "sealed"])
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("k", [0, 1, 25, N - 1])
def test_c_walker_and_oracle_agree_on_damage(tmp_path, how, k, sealed):
    if how in ("duplicate-seq", "two-stretches") and k > N - 4:
        pytest.skip("needs records after the damaged one")
    root = str(tmp_path / "log")
    _stream, path = make_log(root, sealed)
    damage_at(path, how, k)
    assert assert_walkers_agree(path) >= 1
    with open(path, "rb") as f:
        buf = f.read()
    published = published_limits(path)[-1]          # what readers walk with
    damage = [i for i in oracle_items(buf, published) if i[0] == "damage"]
    assert damage and damage[0][1] == frame_offset(k), damage
    rep = verify_directory(root, oracle=k == 25 and not sealed)   # (the oracle is slow)
    assert not [p for p in rep.all_problems() if p.kind == "oracle"], rep.all_problems()
    assert not rep.ok


def test_cut_file_and_garbage_after_the_tail_agree(tmp_path):
    root = str(tmp_path / "log")
    _stream, path = make_log(root)
    size = os.path.getsize(path)
    patch(path, frame_offset(N) + 7, b"\x13\x37" * 20)          # garbage after the published tail
    assert assert_walkers_agree(path) >= 1
    os.truncate(path, frame_offset(N - 3) + 9)                  # and the file cut inside a record
    assert assert_walkers_agree(path) >= 1
    os.truncate(path, size)


def rewrite_as_v1(path: str) -> None:
    """Turn a segment into the version-1 segment an older cometmp would have written with
    the same records: v1 header (no stream id), unbound frame checksums (FORMAT.md §5)."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    h = fmt.parse_segment_header(buf)
    buf[:fmt.CM_SEG_HEADER_BYTES] = fmt.encode_segment_header(h.base, h.capacity, h.created_ns, h.stream_crc)
    off = fmt.CM_SEG_HEADER_BYTES
    while any(buf[off:off + fmt.CM_REC_HEADER_BYTES]):
        n = int.from_bytes(buf[off:off + 4], "little")
        ts = int.from_bytes(buf[off + 8:off + 16], "little", signed=True)
        sf = int.from_bytes(buf[off + 16:off + 20], "little")
        payload = bytes(buf[off + 20:off + 20 + n])
        buf[off:off + 20 + n] = fmt.encode_record(payload, ts, sf & fmt.CM_REC_SEQ_MASK, sf & fmt.CM_REC_FLAGS_MASK)
        off += 20 + n
    with open(path, "r+b") as f:
        f.write(buf)


@pytest.mark.parametrize("sealed", [False, True], ids=["active", "sealed"])
@pytest.mark.parametrize("how", HOWS)
def test_c_walker_and_oracle_agree_on_damage_in_a_v1_segment(tmp_path, how, sealed):
    """The same damage in a version-1 segment (unbound frames, the extent rule of
    FORMAT.md §2.4): both walkers agree, and every record but the damaged ones reads."""
    root = str(tmp_path / "log")
    stream, path = make_log(root, sealed)
    rewrite_as_v1(path)
    assert assert_walkers_agree(path) == 0
    damage_at(path, how, 25)
    assert assert_walkers_agree(path) >= 1
    with cometmp.Client(root, readonly=True) as c:
        got = [m.data for m in c.scan(stream)]
    mine = [g for g in got if g.startswith(b"record-")]
    assert set(mine) <= {PAYLOAD % i for i in range(N)} and len(mine) < N
    assert [PAYLOAD % i for i in range(25)] == mine[:25]
    assert got[len(mine):] in ([], [b"after"], got[-2:])    # never anything but what was written
