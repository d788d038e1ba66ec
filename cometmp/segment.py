"""A segment file mapped read-only, and the walk over its records (native/segment.c).

Record validity (V1-V5) and resynchronisation after damage are the C core's
(cm_record_at, cm_resync); this module only maps files and turns results into Python.
Segment files never change size after creation (I9), so one mapping serves for life.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Iterator, NamedTuple

from ._ffi import ffi, last_error, lib
from .format import CM_REC_HEADER_BYTES, CM_SEG_HEADER_BYTES

log = logging.getLogger("cometmp")


class RecordRef(NamedTuple):
    offset: int
    seq: int
    flags: int
    ts_ns: int
    length: int

    @property
    def frame_bytes(self) -> int:
        return CM_REC_HEADER_BYTES + self.length


class Segment:
    """Read-only mapping of one segment. Not thread safe; one per reader."""

    __slots__ = ("path", "base", "size", "mm", "ptr", "header_ok", "_rec")

    def __init__(self, path: str, base: int, mm: mmap.mmap | None, size: int):
        self.path = path
        self.base = base
        self.size = size
        self.mm = mm
        self.ptr = ffi.from_buffer(mm) if mm is not None else ffi.NULL
        self._rec = ffi.new("cm_record *")
        self.header_ok = mm is not None and lib.cm_segment_header_check(self.ptr, size, ffi.NULL, ffi.NULL) == 0
        if mm is not None and not self.header_ok:
            log.warning("cometmp: %s: %s (reading records anyway)", path, last_error())

    @classmethod
    def open(cls, path: str, base: int) -> "Segment":
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        return cls(path, base, mm, size)

    def record_at(self, off: int, seq: int) -> RecordRef | None | str:
        """The record at off (expected sequence seq, -1 for any); None at end of data;
        a reason string when the frame is invalid."""
        if self.mm is None:
            return None
        rc = lib.cm_record_at(self.ptr, self.size, off, seq & 0xFFFFFFFF, self._rec)
        if rc == 1:
            r = self._rec
            return RecordRef(off, r.seq, r.flags, r.ts_ns, r.len)
        if rc == 0:
            return None
        return last_error()

    def walk(self, off: int = CM_SEG_HEADER_BYTES, seq: int = 0, stop_seq: int | None = None
             ) -> Iterator[RecordRef | str]:
        """Records from (off, seq) in order. A damaged stretch yields one reason string and
        the walk resumes at the next valid record; a torn tail ends it. Stops before
        ``stop_seq`` (exclusive) so a reader never looks at unpublished bytes; with
        ``stop_seq`` given, an end of data before it is damage too."""
        while stop_seq is None or seq < stop_seq:
            r = self.record_at(off, seq)
            if r is None:
                if stop_seq is None:
                    return
                # end of data before the published count: the missing records were
                # zeroed or cut (damage, I2), so look for the published ones after them
                r = "end of data before the published count (zeroed or missing bytes)"
            if isinstance(r, RecordRef):
                yield r
                off += r.frame_bytes
                seq += 1
                continue
            nxt = lib.cm_resync(self.ptr, self.size, off + 1, seq)
            if nxt < 0:
                return
            yield f"{self.path}: offset {off}: {r}"
            r2 = self.record_at(nxt, -1)
            if not isinstance(r2, RecordRef):  # pragma: no cover - resync validated it
                return
            off, seq = nxt, r2.seq

    def payload(self, rec: RecordRef) -> bytes:
        start = rec.offset + CM_REC_HEADER_BYTES
        return self.mm[start : start + rec.length]

    def view(self, rec: RecordRef) -> memoryview:
        start = rec.offset + CM_REC_HEADER_BYTES
        return memoryview(self.mm)[start : start + rec.length]

    def first_ts(self) -> int | None:
        r = self.record_at(CM_SEG_HEADER_BYTES, 0)
        return r.ts_ns if isinstance(r, RecordRef) else None

    def close(self) -> None:
        self.ptr = ffi.NULL
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a caller still holds a zero-copy view; let GC unmap
                pass
            self.mm = None
