"""The tests' independent oracle: a pure-Python reader of segment records (FORMAT.md
§2.3-2.4), written from the document and never importing the C core.

The package reads records only through its one walker (native/walker.c); this is the
second, independent implementation the tests check it against (tests/crash/
test_walker_oracle.py), and what ``cometmp verify --oracle`` loads (cometmp/tools/verify.py
finds it next to the package in a source tree, or by ``$COMETMP_ORACLE``).

``walk_segment(buf, stop, published)`` yields every valid record and a ``Damage`` per
invalid stretch:

* frames are walked from offset 64 with expected sequence 0, advancing by 20 + len and
  seq + 1, while seq < ``stop``;
* an all-zero header or the end of the buffer is the end of data (V1) — except below
  ``published`` (the stream's committed count, the successor segment's base), where it is
  damage like an invalid frame (V2-V5);
* after damage, the first later offset with a frame of seq >= the expected one, only known
  flags, a length that fits, a non-zero timestamp, valid with its own sequence, resumes
  the walk if its seq < ``stop`` (end "resync", seq' - seq entries lost); otherwise the
  published entries up to min(stop, published) are lost (end "limit") or, with nothing
  published lost, it is a torn tail (end "torn").
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


def record_at(buf, off: int, expect_seq: int | None = None) -> Record | None | str:
    """The record at ``off``: a Record, None at the end of data (all-zero header or end of
    buffer), or the name of the validity rule (V2-V5) the frame fails."""
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
    if crc32c(head[8:] + payload, crc32c(head[:4])) != crc:
        return "crc"
    seq = seqflags & CM_REC_SEQ_MASK
    if expect_seq is not None and seq != expect_seq:
        return "sequence"
    return Record(off, seq, flags, ts, payload)


_NONZERO = re.compile(rb"[^\x00]")


def _resync(buf, start: int, min_seq: int) -> Record | None:
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
        r = record_at(buf, off, seq)
        if isinstance(r, Record):
            return r
        off += 1
    return None


def walk_segment(buf, limit: int | None = None, *, stop: int | None = None,
                 published: int = 0, off: int = CM_SEG_HEADER_BYTES, seq: int = 0
                 ) -> Iterator[Record | Damage]:
    """Every valid record of a segment and a Damage per invalid stretch (module docstring).
    ``limit``: look only at the first ``limit`` bytes."""
    if limit is not None:
        buf = memoryview(buf)[:limit]
    stop = SEQ_ANY if stop is None else stop
    while seq < stop:
        r = record_at(buf, off, seq)
        if isinstance(r, Record):
            yield r
            off += r.frame_bytes
            seq += 1
            continue
        if r is None:
            if seq >= published:
                return  # the end of data
            r = "end-of-data"  # zeroed or cut bytes below the published count
        nxt = _resync(buf, off + 1, seq)
        if nxt is not None and nxt.seq < stop:
            yield Damage(off, r, seq, nxt.seq - seq, False, "resync", nxt.offset)
            off, seq = nxt.offset, nxt.seq
            continue
        if seq < published:
            yield Damage(off, r, seq, min(stop, published) - seq, False, "limit", off)
        else:
            yield Damage(off, r, seq, 0, True, "torn", off)
        return
