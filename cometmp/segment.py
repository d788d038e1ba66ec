"""A segment file mapped read-only, and the walk over its records (native/segment.c,
native/walker.c).

Record validity (V1-V5) and "the next valid record" after damage (FORMAT.md §2.4) are
implemented once, in the C walker (cm_walk_next); this module only maps files and turns
its results into Python: a ``RecordRef`` per record and a structured ``Damage`` finding
per damaged stretch. Segment files never change size after creation (I9), so one mapping
serves for life.
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Iterator, NamedTuple

from . import failpoint, paths
from ._ffi import ffi, lib
from .errors import ClosedError, os_error, os_errors
from .format import CM_REC_HEADER_BYTES, CM_SEG_HEADER_BYTES

log = logging.getLogger("cometmp")

SEQ_ANY = 0xFFFFFFFF

#: cm_damage.cause -> Damage.cause
CAUSES = {
    lib.CM_DAMAGE_LENGTH: "length",
    lib.CM_DAMAGE_FLAGS: "flags",
    lib.CM_DAMAGE_CRC: "crc",
    lib.CM_DAMAGE_SEQ: "sequence",
    lib.CM_DAMAGE_END: "end-of-data",
}
#: cm_damage.end -> Damage.end
ENDS = {lib.CM_DAMAGE_RESYNC: "resync", lib.CM_DAMAGE_LIMIT: "limit", lib.CM_DAMAGE_TORN: "torn"}


class RecordRef(NamedTuple):
    offset: int
    seq: int
    flags: int
    ts_ns: int
    length: int

    @property
    def frame_bytes(self) -> int:
        return CM_REC_HEADER_BYTES + self.length


class Damage(NamedTuple):
    """A damaged stretch found by the walker (FORMAT.md §2.4), as data, never as a message.

    ``end``: ``"resync"`` corruption, a valid record follows at ``resume`` and ``lost``
    entries are gone; ``"limit"`` no valid record follows below the walk's published
    limit, whose last ``lost`` entries are gone; ``"torn"`` a torn tail, nothing published
    lost. ``cause``: the rule the frame at ``offset`` failed (``"end-of-data"``: zeros or a
    cut file below the published count)."""

    offset: int
    first_seq: int
    lost: int
    cause: str
    end: str
    resume: int
    reason: str  # human-readable text of cause (for messages only)

    @classmethod
    def from_c(cls, d) -> "Damage":
        reason = ffi.string(lib.cm_damage_reason(d.cause, d.frame_len, d.frame_seqflags, d.first_seq)).decode()
        return cls(d.offset, d.first_seq, d.lost, CAUSES.get(d.cause, "invalid"), ENDS[d.end], d.resume, reason)


class Segment:
    """Read-only mapping of one segment. Not thread safe; one per reader.

    Handle lifetime (docs/ARCHITECTURE.md §11, L4): ``ptr`` (what the C calls get) is a
    cffi buffer export of ``mm``; every call reads it into a local first, so a
    ``close()`` in another thread cannot unmap the bytes under a call in flight (the
    export makes ``mm.close()`` fail and the GC unmaps later). After close every
    access raises ClosedError.
    """

    __slots__ = ("path", "base", "size", "mm", "ptr", "header_ok", "key", "keybuf", "foreign",
                 "_rec")

    def __init__(self, path: str, base: int, mm: mmap.mmap | None, size: int):
        self.path = path
        self.base = base
        self.size = size
        self.mm = mm
        self.ptr = ffi.from_buffer(mm) if mm is not None else ffi.NULL
        self._rec = ffi.new("cm_record *")
        # the frames' binding (I17): v2 frames validate only as entry base + seq of the
        # stream named in the header; base is the file name's, never the header's
        self.key = ffi.new("cm_seg_key *")
        lib.cm_segment_key(self.ptr, size if mm is not None else 0, base, self.key)
        self.keybuf = ffi.buffer(self.key)   # its bytes, as cometmp._reader reads them (live)
        self.foreign: str | None = None   # why bind() found the file not to be the stream's
        self.header_ok = mm is not None and lib.cm_segment_header_check(self.ptr, size, ffi.NULL, ffi.NULL) == 0
        if mm is not None and not self.header_ok:
            from ._ffi import last_error

            log.warning("cometmp: %s: %s (reading records anyway)", path, last_error())

    @classmethod
    def open(cls, path: str, base: int) -> "Segment":
        """Map ``DIR/streams/<stream>/<base>.seg`` read-only, never through a link (I30).
        FileNotFoundError stays itself (retention deleted the segment after it was listed:
        callers treat it as that race); every other OS failure is the cometmp error of
        errors.os_error."""
        try:
            failpoint.fail("read.segment_open", path)
            fd = paths.open_nofollow(path, os.O_RDONLY, paths.IN_STREAM)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise os_error(e, path, "open segment") from e
        try:
            with os_errors(path, "map segment"):
                size = os.fstat(fd).st_size
                failpoint.fail("read.segment_map", path)
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        return cls(path, base, mm, size)

    def record_at(self, off: int, seq: int) -> RecordRef | None | str:
        """The record at off (expected sequence seq, -1 for any); None at end of data;
        the text of the rule it fails when the frame is invalid (for messages)."""
        ptr, mm = self.ptr, self.mm    # locals: a close() elsewhere cannot unmap them (L4)
        if ptr is None:
            raise ClosedError(f"{self.path} is closed")
        if mm is None or ptr == ffi.NULL:
            return None
        # take the scratch record (threads scanning one stream share this Segment, and
        # the call runs without the GIL): a second concurrent caller gets its own
        r, self._rec = self._rec, None
        if r is None:
            r = ffi.new("cm_record *")
        rc = lib.cm_frame_check_key(ptr, self.size, self.key, off, seq & 0xFFFFFFFF, r)
        if rc == 1:
            ref = RecordRef(off, r.seq, r.flags, r.ts_ns, r.len)
            self._rec = r      # handed back only after its fields are read
            return ref
        self._rec = r
        if rc == 0:
            return None
        head = mm[off : off + CM_REC_HEADER_BYTES]
        ln = int.from_bytes(head[0:4], "little")
        sf = int.from_bytes(head[16:20], "little")
        return ffi.string(lib.cm_damage_reason(-rc, ln, sf, seq & 0xFFFFFFFF)).decode()

    def walk(self, off: int = CM_SEG_HEADER_BYTES, seq: int = 0, stop_seq: int | None = None,
             skip_to: int = 0) -> Iterator[RecordRef | Damage]:
        """Records from (off, seq) in order, and a ``Damage`` per damaged stretch (the walk
        resumes after it at the next valid record; a torn tail or damage running to the
        limit ends it). With ``stop_seq`` (a published limit: the stream's committed count
        or the next segment's base) the walk stops before it, so a reader never looks at
        unpublished records (I2), and an end of data before it is damage. Records below
        ``skip_to`` are stepped over in C (a point read's walk from an index entry)."""
        ptr, mm = self.ptr, self.mm    # held by this generator for as long as it walks (L4)
        if ptr is None:
            raise ClosedError(f"{self.path} is closed")
        if mm is None or ptr == ffi.NULL:
            return
        # per walk, not per segment: a paused scan and a point read may walk one segment
        w, rec, dmg = ffi.new("cm_walk *"), ffi.new("cm_record *"), ffi.new("cm_damage *")
        if stop_seq is None:
            stop, published = SEQ_ANY, 0
        else:
            stop = published = max(0, min(stop_seq, SEQ_ANY))
        lib.cm_walk_init(w, ptr, self.size, self.base, off, seq, stop, published)
        w.key = self.key[0]            # the binding this segment is read with (bind())
        step, seek = lib.cm_walk_next, lib.cm_walk_seek
        while True:
            rc = seek(w, skip_to, rec, dmg) if skip_to else step(w, rec, dmg)
            if rc == 1:
                yield RecordRef(rec.offset, rec.seq, rec.flags, rec.ts_ns, rec.len)
            elif rc == 2:
                yield Damage.from_c(dmg)
            else:
                return

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

    def bind(self, stream_id: int, why: str) -> None:
        """Check frames against the stream's identity, not the one this file's header names
        (FORMAT.md §2.1, I17): called by a reader that found the header to disagree with
        the stream (a segment file copied in from another stream). Every frame of such a
        file then fails V4, so readers report its entries as damaged and never serve them."""
        self.foreign = why
        self.key.version = 2
        self.key.stream_id = stream_id
        self.key.id_crc = lib.cm_crc32c(0, stream_id.to_bytes(8, "little"), 8)
        log.warning("cometmp: %s: %s; its records are not read as this stream's entries", self.path, why)

    @property
    def version(self) -> int:
        """The header's format version (1 or 2; what the frames' crcs are checked by)."""
        return int(self.key.version)

    @property
    def stream_id(self) -> int:
        """The stream id of a version-2 segment (FORMAT.md §2.1); 0 in version 1."""
        return int(self.key.stream_id)

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
