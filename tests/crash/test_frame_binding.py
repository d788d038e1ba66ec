"""A frame is accepted as entry n only if it was written as entry n of that stream (I17).

A payload may hold valid frames (a log of logs, a request body that is a segment dump).
When a bit of the record around them rots, the walker resynchronises (FORMAT.md §2.4); it
must never take an embedded frame for the damaged entry. In a version-2 segment a frame's
checksum is bound to the stream id and its entry number, so no frame from a payload,
another segment or another stream passes; in a version-1 segment (unbound) the search
starts after the damaged frame's extent when that frame still parses. Every trial checks
point reads, scans and consumers, and that the C walker and the oracle agree.
"""

from __future__ import annotations

import os
import random
import shutil
import struct

import pytest

import cometmp
from cometmp import format as fmt

from conftest import assert_walkers_agree, segment_files, small_config

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SEED = int(os.environ.get("COMETMP_SEED", random.randrange(1 << 30)))
BEFORE, AFTER = b"entry before", b"entry after"


def v1_frame(payload: bytes, seq: int, ts: int = 1767225600000000000) -> bytes:
    """A valid version-1 frame, encoded from FORMAT.md §2.2 alone (what an older cometmp,
    or any v1 dump, puts in a payload)."""
    body = struct.pack("<qI", ts, seq) + payload
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", fmt.crc32c(body, fmt.crc32c(length))) + body


def frames_of(path: str) -> list[tuple[int, bytes]]:
    """(offset, frame bytes) of the undamaged records of a segment, in order."""
    with open(path, "rb") as f:
        buf = f.read()
    out, off = [], fmt.CM_SEG_HEADER_BYTES
    while off + fmt.CM_REC_HEADER_BYTES <= len(buf) and any(buf[off:off + fmt.CM_REC_HEADER_BYTES]):
        n = int.from_bytes(buf[off:off + 4], "little")
        out.append((off, buf[off:off + fmt.CM_REC_HEADER_BYTES + n]))
        off += fmt.CM_REC_HEADER_BYTES + n
    return out


_groups = iter(range(1 << 30))


def read_everything(root: str, stream: str, n: int) -> tuple[list, list, list]:
    """(point reads, scan, consumer) of entries [0, n): payload bytes, or the exception
    type a point read raised. Each call consumes with a new group."""
    with cometmp.Client(root, readonly=True) as c:
        reads = []
        for e in range(n):
            try:
                reads.append(c.read(stream, e).data)
            except cometmp.CorruptRecord:
                reads.append(cometmp.CorruptRecord)
        scanned = [m.data for m in c.scan(stream)]
    with cometmp.Client(root, config=small_config()) as c:
        with cometmp.Consumer(c, group=f"g{next(_groups)}") as cons:
            consumed = []
            for _ in range(100):
                b = cons.read(stream, max_messages=100, timeout=0)
                if not len(b):
                    break
                consumed += [bytes(m.data) for m in b]
                cons.ack(b)
    return reads, scanned, consumed


def flip(path: str, at: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)[0]
        f.seek(at)
        f.write(bytes([b ^ (1 << bit)]))


def logs_of_logs_payload(other_stream_frame: bytes | None) -> tuple[bytes, list[bytes]]:
    """A payload holding valid frames that claim the damaged entry's sequence (1) and the
    next one (2), and the payloads those frames carry."""
    inner = [b"embedded v1 frame claiming entry 1", b"embedded v1 frame claiming entry 2"]
    body = b"log of logs: " + v1_frame(inner[0], 1) + b" and " + v1_frame(inner[1], 2)
    if other_stream_frame is not None:
        body += b" and another stream's: " + other_stream_frame
        inner.append(other_stream_frame[fmt.CM_REC_HEADER_BYTES:])
    return body + b" (end)", inner


def bit_positions(frame_bytes: int, skip_len: bool, rnd: random.Random, every: bool
                  ) -> list[tuple[int, int]]:
    """(byte offset in the frame, bit) to flip. ``every``: every bit of the 20-byte frame
    header (but the length field with ``skip_len``) and 48 seeded random payload bits;
    otherwise two seeded bits of each header field and four of the payload."""
    fields = [(0, 4), (4, 8), (8, 16), (16, 20)]       # len, crc, ts_ns, seqflags
    if skip_len:
        fields = fields[1:]
    if every:
        header = [(i, b) for lo, hi in fields for i in range(lo, hi) for b in range(8)]
        npay = 48
    else:
        header = [(rnd.randrange(lo, hi), rnd.randrange(8)) for lo, hi in fields for _ in range(2)]
        header.append((19, 4 + rnd.randrange(4)))       # a flag bit
        npay = 4
    payload = [(rnd.randrange(fmt.CM_REC_HEADER_BYTES, frame_bytes), rnd.randrange(8)) for _ in range(npay)]
    return header + payload


def trial_loop(root: str, stream: str, seg: str, outer_off: int, frame_bytes: int, want: list[bytes],
               inner: list[bytes], outer_entry: int, positions: list[tuple[int, int]]) -> int:
    with open(seg, "rb") as f:
        pristine = f.read()
    n = len(want)
    trials = 0
    for at, bit in positions:
        with open(seg, "r+b") as f:
            f.write(pristine)
        flip(seg, outer_off + at, bit)
        reads, scanned, consumed = read_everything(root, stream, n)
        where = f"(flip of bit {bit} of frame byte {at}, seed {SEED})"
        # the damaged entry is reported, never replaced by a frame from its payload
        assert reads[outer_entry] is cometmp.CorruptRecord, where
        assert reads[:outer_entry] + reads[outer_entry + 1:] == want[:outer_entry] + want[outer_entry + 1:], where
        expect = want[:outer_entry] + want[outer_entry + 1:]
        assert scanned == expect, where
        assert consumed == expect, where
        for got in scanned + consumed:
            assert got not in inner, where
        assert_walkers_agree(seg)
        trials += 1
    with open(seg, "r+b") as f:
        f.write(pristine)
    return trials


@pytest.mark.parametrize("every", [pytest.param(False, id="sample"),
                                   pytest.param(True, id="every-bit", marks=pytest.mark.soak)])
def test_a_flipped_bit_in_a_v2_record_never_serves_the_frames_in_its_payload(tmp_path, every):
    """Version 2: any bit of the damaged frame, its length included."""
    print(f"seed {SEED}")
    rnd = random.Random(SEED)
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append("other", [b"other-0", b"other-1", b"other-2"])
        (_, other_seg), = segment_files(root, "other")
        other_frame = frames_of(other_seg)[1][1]          # a real frame of entry 1, another stream
        payload, inner = logs_of_logs_payload(other_frame)
        c.append("w", [BEFORE, payload, AFTER])
    (_, seg), = segment_files(root, "w")
    outer_off, outer = frames_of(seg)[1]
    n = trial_loop(root, "w", seg, outer_off, len(outer), [BEFORE, payload, AFTER], inner, 1,
                   bit_positions(len(outer), skip_len=False, rnd=rnd, every=every))
    print(f"{n} single-bit flips of the outer record (v2), embedded entry served 0 times")


@pytest.mark.parametrize("every", [pytest.param(False, id="sample"),
                                   pytest.param(True, id="every-bit", marks=pytest.mark.soak)])
def test_a_flipped_bit_in_a_v1_record_never_serves_the_frames_in_its_payload(tmp_path, every):
    """Version 1 (a directory written by an older cometmp): the frame is unbound, so the
    walker skips the damaged frame's extent when it still parses. Flips of its length
    field are the one case v1 cannot tell (FORMAT.md §2.4); v2 covers them (above)."""
    print(f"seed {SEED}")
    rnd = random.Random(SEED)
    root = str(tmp_path / "v1")
    shutil.copytree(os.path.join(DATA, "format_v1"), root)
    stream = "golden"
    payload, inner = logs_of_logs_payload(None)
    with cometmp.Client(root, config=small_config()) as c:
        old = [m.data for m in c.scan(stream)]
        c.append(stream, [payload, AFTER])                # into the v1 active segment
    seg = segment_files(root, stream)[-1][1]
    with open(seg, "rb") as f:
        assert fmt.parse_segment_header(f.read(64)).version == 1
    base = segment_files(root, stream)[-1][0]
    frames = frames_of(seg)
    outer_entry = len(old)
    outer_off, outer = frames[outer_entry - base]
    # the embedded frames claim the outer record's sequence and the next: shift them to
    # the sequences they would have to claim in this segment
    seq = outer_entry - base
    payload2 = (b"log of logs: " + v1_frame(inner[0], seq) + b" and " + v1_frame(inner[1], seq + 1)
                + b" (end)")
    assert len(payload2) == len(payload)
    with open(seg, "r+b") as f:        # rewrite the outer record with those, as a valid v1 frame
        f.seek(outer_off)
        f.write(v1_frame(payload2, seq, int.from_bytes(outer[8:16], "little")))
    n = trial_loop(root, stream, seg, outer_off, len(outer), old + [payload2, AFTER], inner,
                   outer_entry, bit_positions(len(outer), skip_len=True, rnd=rnd, every=every))
    print(f"{n} single-bit flips of the outer record (v1), embedded entry served 0 times")


def test_a_frame_spliced_in_from_another_stream_or_segment_is_not_an_entry(tmp_path):
    """Frames copied over a record of the same size: from another stream at the same entry
    number, and from another segment of the same stream at the same sequence. Each is
    reported as damage, never served (v1 served both)."""
    root = str(tmp_path / "log")
    big = random.Random(SEED).randbytes(1024 * 1024 - 64)   # incompressible, does not fit: rotates
    with cometmp.Client(root, config=small_config()) as c:
        c.append("a", [b"a-%d" % i for i in range(4)])
        c.append("b", [b"b-%d" % i for i in range(4)])
        c.append("a", [big])                              # rotates a
        c.append("a", [b"a-%d" % i for i in range(5, 9)])
    (_, a0), (a1_base, a1) = segment_files(root, "a")[:2]
    (_, b0), = segment_files(root, "b")
    # 1. entry 2 of stream b over entry 2 of stream a (same entry number, same length)
    with open(a0, "r+b") as f:
        off, _ = frames_of(a0)[2]
        f.seek(off)
        f.write(frames_of(b0)[2][1])
    # 2. sequence 1 of a's first segment (entry 1) over sequence 1 of its second
    with open(a1, "r+b") as f:
        off, _ = frames_of(a1)[1]
        f.seek(off)
        f.write(frames_of(a0)[1][1])
    reads, scanned, consumed = read_everything(root, "a", 9)
    assert reads[2] is cometmp.CorruptRecord
    assert reads[a1_base + 1] is cometmp.CorruptRecord
    good = [r for i, r in enumerate(reads) if i not in (2, a1_base + 1)]
    assert b"b-2" not in scanned + consumed and scanned.count(b"a-1") == 1
    assert scanned == consumed == good
    for _, p in segment_files(root, "a"):
        assert_walkers_agree(p)


def test_a_whole_segment_copied_from_another_stream_is_not_read_as_this_one(tmp_path):
    """FORMAT.md §2.1: a segment file of another stream (here: a same-named stream of
    another data directory, so even the name checksum matches) put in place of one of
    this stream's segments. Its frames are valid for their own stream id; readers check
    them against this stream's and report its entries as damaged; verify names the file."""
    from cometmp.tools.verify import verify_directory

    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    big = random.Random(SEED).randbytes(1024 * 1024 - 64)   # incompressible, does not fit: rotates
    for root, tag in ((here, b"here"), (there, b"there")):
        with cometmp.Client(root, config=small_config()) as c:
            c.append("s", [tag + b"-%d" % i for i in range(3)] + [big, tag + b"-4"])
    assert [b for b, _ in segment_files(here, "s")] == [b for b, _ in segment_files(there, "s")]
    (_, here0), _ = segment_files(here, "s")
    (_, there0), _ = segment_files(there, "s")
    shutil.copyfile(there0, here0)
    reads, scanned, consumed = read_everything(here, "s", 5)
    assert reads == [cometmp.CorruptRecord] * 3 + [big, b"here-4"]
    assert scanned == consumed == [big, b"here-4"]
    rep = verify_directory(here, oracle=True)
    bad = [p for p in rep.all_problems() if p.kind == "segment-header"]
    assert bad and bad[0].path == here0 and "stream id" in bad[0].message, rep.all_problems()


@pytest.mark.parametrize("damage", ["created-ns-bit", "stream-id-bit", "zeroed-header"])
def test_a_damaged_active_header_is_rewritten_with_the_id_its_records_are_bound_to(tmp_path, damage):
    """A writer open rewrites a damaged active-segment header (ARCHITECTURE.md §5). The
    frames behind it are bound to the stream id, so the new header must carry the same
    id: the header's own field, that field with the flipped bit undone, or (header zeroed)
    the id of the stream's other segments (FORMAT.md §2.1). Nothing is lost."""
    root = str(tmp_path / "log")
    big = random.Random(SEED).randbytes(1024 * 1024 - 64)
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"old-0", big, b"new-0", b"new-1"])      # segments 0, 1 and 2
    (_, active) = segment_files(root, "s")[-1]
    with open(active, "rb") as f:
        sid = fmt.parse_segment_header(f.read(64)).stream_id
    if damage == "zeroed-header":
        with open(active, "r+b") as f:
            f.write(bytes(fmt.CM_SEG_HEADER_BYTES))
    else:
        flip(active, fmt.CM_SEG_OFF_CREATED + 2 if damage == "created-ns-bit" else fmt.CM_SEG_OFF_STREAM_ID + 5, 3)
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"new-2"])
        assert [m.data for m in c.scan("s")] == [b"old-0", big, b"new-0", b"new-1", b"new-2"]
    with open(active, "rb") as f:
        h = fmt.parse_segment_header(f.read(64))
    assert fmt.segment_header_ok(h and open(active, "rb").read(64)) and (h.version, h.stream_id) == (2, sid)


def test_an_active_header_whose_stream_id_cannot_be_recovered_is_refused(tmp_path):
    """The only segment's header zeroed: no id its records validate under can be found, so
    the writer open fails with CorruptRecord naming the file, rather than rebinding the
    records to a new id (which would make every acknowledged entry unreadable)."""
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"e0", b"e1"])
    (_, active), = segment_files(root, "s")
    with open(active, "r+b") as f:
        f.write(bytes(fmt.CM_SEG_HEADER_BYTES))
    with cometmp.Client(root, config=small_config()) as c:
        with pytest.raises(cometmp.CorruptRecord, match="stream id"):
            c.append("s", [b"e2"])
    with open(active, "rb") as f:
        assert f.read(fmt.CM_SEG_HEADER_BYTES) == bytes(fmt.CM_SEG_HEADER_BYTES)   # untouched


@pytest.mark.parametrize("records", [4, 50])
def test_the_only_segments_zeroed_header_is_rebuilt_with_the_id_solved_from_its_records(tmp_path, records):
    """The only segment's header zeroed and no other segment to take the id from: the
    frames' CRCs are affine in the id's bits, so the writer open solves the id from the
    first frames, confirms it with two more, rewrites the header with it, and every
    acknowledged entry stays readable with its bytes (ARCHITECTURE.md §5 step 3)."""
    root = str(tmp_path / "log")
    rng = random.Random(SEED + records)
    data = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(records)]
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", data)
    (_, active), = segment_files(root, "s")
    with open(active, "rb") as f:
        sid = fmt.parse_segment_header(f.read(64)).stream_id
    with open(active, "r+b") as f:
        f.write(bytes(fmt.CM_SEG_HEADER_BYTES))
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"after"])
        assert [m.data for m in c.scan("s")] == data + [b"after"]
    with open(active, "rb") as f:
        raw = f.read(64)
    h = fmt.parse_segment_header(raw)
    # frames are sealed under the id's CRC-32C only, so that is what is recovered: the
    # new id is another 64-bit value with the same crc, the same key for every frame
    assert fmt.segment_header_ok(raw) and h.version == 2 and h.stream_id not in (0, 1)
    assert fmt.crc32c(h.stream_id.to_bytes(8, "little")) == fmt.crc32c(sid.to_bytes(8, "little"))


def test_an_id_solved_from_one_frame_and_confirmed_by_none_is_refused(tmp_path):
    """The solve must be confirmed by frames it did not use: with the header zeroed and
    every record but the first damaged, the id solved from the first is not confirmed, so
    no id is accepted and the open is refused, the file untouched — never a header
    rebuilt on the word of a single frame."""
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"entry %d" % i for i in range(8)])
    (_, active), = segment_files(root, "s")
    with open(active, "rb") as f:
        buf = bytearray(f.read(4096))
    buf[:fmt.CM_SEG_HEADER_BYTES] = bytes(fmt.CM_SEG_HEADER_BYTES)
    off = fmt.CM_SEG_HEADER_BYTES
    for i in range(8):                      # flip one payload bit of records 1..7
        n = int.from_bytes(buf[off:off + 4], "little")
        if i >= 1:
            buf[off + fmt.CM_REC_HEADER_BYTES] ^= 0x01
        off += fmt.CM_REC_HEADER_BYTES + n
    with open(active, "r+b") as f:
        f.write(bytes(buf))
    before = open(active, "rb").read()
    with cometmp.Client(root, config=small_config()) as c:
        with pytest.raises(cometmp.CorruptRecord, match="stream id"):
            c.append("s", [b"more"])
    assert open(active, "rb").read() == before
