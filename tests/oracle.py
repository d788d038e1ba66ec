"""The tests' independent oracle: a pure-Python reader of segment records (FORMAT.md
§2.3-2.4), written from the document and never importing the C core.

The package reads records only through its one walker (native/walker.c); this is the
second, independent implementation the tests check it against (tests/crash/
test_walker_oracle.py), and what ``cometmp verify --oracle`` loads (cometmp/tools/verify.py
finds it next to the package in a source tree, or by ``$COMETMP_ORACLE``).

``walk_segment(buf, stop, published, base)`` yields every valid record and a ``Damage``
per invalid stretch:

* a frame's checksum is CRC32C over ``len`` and bytes 8..20+len; in a version-2 segment
  (header bytes 4..6) it is first seeded with ``stream_id`` (header bytes 36..44) and the
  entry number ``base + seq`` as two little-endian u64 (FORMAT.md §2.2), ``base`` being
  the file name's (by default the header's);

* frames are walked from offset 64 with expected sequence 0, advancing by 20 + len and
  seq + 1, while seq < ``stop``;
* an all-zero header or the end of the buffer is the end of data (V1) — except below
  ``published`` (the stream's committed count, the successor segment's base), where it is
  damage like an invalid frame (V2-V5);
* after damage, the first later offset with a frame of seq >= the expected one, only known
  flags, a length that fits, a non-zero timestamp, valid with its own sequence, resumes
  the walk if its seq < ``stop`` (end "resync", seq' - seq entries lost); otherwise the
  published entries up to min(stop, published) are lost (end "limit") or, with nothing
  published lost, it is a torn tail (end "torn");
* where that search starts: the next byte, except in a version-1 segment when the invalid
  frame still parses (its length fits, and its sequence is the expected one or right after
  it lies the expected next record or the end of data): then after the invalid frame's
  extent, so no frame inside its payload is taken (FORMAT.md §2.4).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Iterator

from cometmp.format import (  # constants only: the layout, not the reading rule
    CM_REC_FLAG_ZSTD,
    CM_REC_FLAGS_MASK,
    CM_REC_HEADER_BYTES,
    CM_REC_SEQ_MASK,
    CM_SEG_HEADER_BYTES,
    crc32c,
)

SEQ_ANY = 0xFFFFFFFF
_REC_HDR = struct.Struct("<IIqI")


@dataclass(frozen=True)
class Binding:
    """What a segment's frames are bound to: nothing (version 1), or a stream id and the
    entry number of sequence 0."""

    version: int
    stream_id: int
    base: int

    @classmethod
    def of(cls, buf, base: int | None = None) -> "Binding":
        if len(buf) < CM_SEG_HEADER_BYTES:
            return cls(1, 0, base or 0)
        version = int.from_bytes(bytes(buf[4:6]), "little")
        hbase = int.from_bytes(bytes(buf[8:16]), "little")
        sid = int.from_bytes(bytes(buf[36:44]), "little")
        return cls(version, 0 if version == 1 else sid, hbase if base is None else base)

    def seed(self, seq: int) -> int:
        if self.version == 1:
            return 0
        return crc32c(struct.pack("<QQ", self.stream_id, self.base + seq))


_UNBOUND = Binding(1, 0, 0)


@dataclass(frozen=True)
class Record:
    offset: int
    seq: int
    flags: int
    ts_ns: int
    payload: bytes

    @property
    def frame_bytes(self) -> int:
        return CM_REC_HEADER_BYTES + len(self.payload)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & CM_REC_FLAG_ZSTD)


@dataclass(frozen=True)
class Damage:
    offset: int
    reason: str  # "length" | "flags" | "crc" | "sequence" | "end-of-data"
    first_seq: int  # first sequence number the damage covers
    lost: int  # entries lost (0 for a torn tail)
    torn_tail: bool
    end: str = "resync"  # "resync" | "limit" | "torn"
    resume: int = -1  # offset of the record the walk resumes at ("resync")


def record_at(buf, off: int, expect_seq: int | None = None, binding: Binding | None = None
              ) -> Record | None | str:
    """The record at ``off``: a Record, None at the end of data (all-zero header or end of
    buffer), or the name of the validity rule (V2-V5) the frame fails. ``binding``:
    ``Binding.of(buf, base)`` (default: the header's, as a v1 frame if there is none)."""
    if binding is None:
        binding = Binding.of(buf) if off >= CM_SEG_HEADER_BYTES else _UNBOUND
    if off + CM_REC_HEADER_BYTES > len(buf):
        return None
    head = bytes(buf[off : off + CM_REC_HEADER_BYTES])
    if head == bytes(CM_REC_HEADER_BYTES):
        return None
    length, crc, ts, seqflags = _REC_HDR.unpack(head)
    if length > len(buf) - off - CM_REC_HEADER_BYTES:
        return "length"
    flags = seqflags & CM_REC_FLAGS_MASK
    if flags & ~CM_REC_FLAG_ZSTD & 0xFFFFFFFF:
        return "flags"
    payload = bytes(buf[off + CM_REC_HEADER_BYTES : off + CM_REC_HEADER_BYTES + length])
    seq = seqflags & CM_REC_SEQ_MASK
    if crc32c(head[8:] + payload, crc32c(head[:4], binding.seed(seq))) != crc:
        return "crc"
    if expect_seq is not None and seq != expect_seq:
        return "sequence"
    return Record(off, seq, flags, ts, payload)


_NONZERO = re.compile(rb"[^\x00]")


def _search_start(buf, off: int, seq: int, binding: Binding) -> int:
    """Where the search for the next valid frame after an invalid one at ``off`` starts."""
    if binding.version != 1 or off + CM_REC_HEADER_BYTES > len(buf):
        return off + 1
    length, _crc, _ts, seqflags = _REC_HDR.unpack(bytes(buf[off : off + CM_REC_HEADER_BYTES]))
    if length > len(buf) - off - CM_REC_HEADER_BYTES:
        return off + 1
    after = off + CM_REC_HEADER_BYTES + length
    if seqflags & CM_REC_SEQ_MASK == seq:
        return after  # the invalid frame still encloses everything before `after`
    nxt = record_at(buf, after, seq + 1, binding)
    return after if nxt is None or isinstance(nxt, Record) else off + 1


def _resync(buf, start: int, min_seq: int, binding: Binding) -> Record | None:
    end = len(buf)
    data = bytes(buf) if not isinstance(buf, bytes) else buf
    off = start
    while off <= end - CM_REC_HEADER_BYTES:
        # a candidate has a non-zero timestamp (bytes 8..16): skip runs of zeros
        m = _NONZERO.search(data, off + 8)
        if m is None:
            return None
        if m.start() >= off + 16:
            off = max(off + 1, m.start() - 15)
            continue
        length, _crc, ts, seqflags = _REC_HDR.unpack_from(data, off)
        seq = seqflags & CM_REC_SEQ_MASK
        if (seq < min_seq or ts == 0 or length > end - off - CM_REC_HEADER_BYTES
                or seqflags & CM_REC_FLAGS_MASK & ~CM_REC_FLAG_ZSTD & 0xFFFFFFFF):
            off += 1
            continue
        r = record_at(buf, off, seq, binding)
        if isinstance(r, Record):
            return r
        off += 1
    return None


def walk_segment(buf, limit: int | None = None, *, stop: int | None = None,
                 published: int = 0, off: int = CM_SEG_HEADER_BYTES, seq: int = 0,
                 base: int | None = None) -> Iterator[Record | Damage]:
    """Every valid record of a segment and a Damage per invalid stretch (module docstring).
    ``limit``: look only at the first ``limit`` bytes; ``base``: the file name's base
    (default: the header's)."""
    if limit is not None:
        buf = memoryview(buf)[:limit]
    binding = Binding.of(buf, base)
    stop = SEQ_ANY if stop is None else stop
    while seq < stop:
        r = record_at(buf, off, seq, binding)
        if isinstance(r, Record):
            yield r
            off += r.frame_bytes
            seq += 1
            continue
        if r is None:
            if seq >= published:
                return  # the end of data
            r = "end-of-data"  # zeroed or cut bytes below the published count
        nxt = _resync(buf, _search_start(buf, off, seq, binding) if r != "end-of-data" else off + 1,
                      seq, binding)
        if nxt is not None and nxt.seq < stop:
            yield Damage(off, r, seq, nxt.seq - seq, False, "resync", nxt.offset)
            off, seq = nxt.offset, nxt.seq
            continue
        if seq < published:
            yield Damage(off, r, seq, min(stop, published) - seq, False, "limit", off)
        else:
            yield Damage(off, r, seq, 0, True, "torn", off)
        return
