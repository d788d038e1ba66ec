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
from .errors import ClosedError
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
    """Read-only mapping of one segment. Not thread safe; one per reader.

    Handle lifetime (docs/ARCHITECTURE.md §11, L4): ``ptr`` (what the C calls get) is a
    cffi buffer export of ``mm``; every call reads it into a local first, so a
    ``close()`` in another thread cannot unmap the bytes under a call in flight (the
    export makes ``mm.close()`` fail and the GC unmaps later). After close every
    access raises ClosedError.
    """

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
        ptr = self.ptr
        if ptr is None:
            raise ClosedError(f"{self.path} is closed")
        if self.mm is None and ptr == ffi.NULL:
            return None
        # take the scratch record (threads scanning one stream share this Segment, and
        # the call runs without the GIL): a second concurrent caller gets its own
        r, self._rec = self._rec, None
        if r is None:
            r = ffi.new("cm_record *")
        rc = lib.cm_record_at(ptr, self.size, off, seq & 0xFFFFFFFF, r)
        if rc == 1:
            ref = RecordRef(off, r.seq, r.flags, r.ts_ns, r.len)
            self._rec = r      # handed back only after its fields are read
            return ref
        self._rec = r
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
            nxt = self.resync(off + 1, seq)
            if nxt < 0:
                return
            yield f"{self.path}: offset {off}: {r}"
            r2 = self.record_at(nxt, -1)
            if not isinstance(r2, RecordRef):  # pragma: no cover - resync validated it
                return
            off, seq = nxt, r2.seq

    def resync(self, off: int, min_seq: int) -> int:
        """cm_resync from ``off``: the offset of the next valid frame, or < 0."""
        ptr = self.ptr
        if ptr is None:
            raise ClosedError(f"{self.path} is closed")
        return lib.cm_resync(ptr, self.size, off, min_seq) if ptr != ffi.NULL else -1

    def _mapping(self) -> mmap.mmap:
        mm = self.mm
        if mm is None:
            raise ClosedError(f"{self.path} is closed")
        return mm

    def payload(self, rec: RecordRef) -> bytes:
        start = rec.offset + CM_REC_HEADER_BYTES
        try:
            return self._mapping()[start : start + rec.length]
        except ValueError:   # closed by another thread between the two lines
            raise ClosedError(f"{self.path} is closed") from None

    def view(self, rec: RecordRef) -> memoryview:
        start = rec.offset + CM_REC_HEADER_BYTES
        try:
            return memoryview(self._mapping())[start : start + rec.length]
        except ValueError:
            raise ClosedError(f"{self.path} is closed") from None

    def first_ts(self) -> int | None:
        r = self.record_at(CM_SEG_HEADER_BYTES, 0)
        return r.ts_ns if isinstance(r, RecordRef) else None

    def close(self) -> None:
        """Idempotent. A call in flight elsewhere, a Batch or a zero-copy view still
        holding the mapping keeps it mapped; the GC unmaps it after them (L4)."""
        self.ptr = None
        mm, self.mm = self.mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
