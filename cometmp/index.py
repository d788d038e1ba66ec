"""The sparse index of one segment (<base>.idx): lookups in its memory map, and rebuild.

Who may call: a Reader (cometmp.shard) and verify/recover; not thread safe (one per reader).

Lookups follow Kafka's OffsetIndex: the file is mapped read-only and searched in place by
binary search (cm_index_floor / cm_index_floor_time in native/index.c); it is never
re-read or parsed in Python, so the newest entry of the active segment costs what an old
one does, and entries the writer adds (index_note in native/shard.c, under the stream
lock, ``offset`` stored last) are visible through the shared mapping at once.

Derived data (I8): not checksummed per entry; every entry a lookup returns is checked
against the segment before use, and a missing or damaged index is rebuilt by walking the
segment (cm_index_build, the one walker). A writable client persists the rebuilt index
of a sealed segment (temp file, rename, I7); a read-only one keeps it in memory and
searches that copy the same way.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time

from . import paths
from ._ffi import ffi, lib
from .format import (
    CM_IDX_ENTRY_BYTES,
    CM_IDX_HEADER_BYTES,
    CM_IDX_MAGIC,
    CM_IDX_OFF_HEADER_CRC,
    CM_IDX_VERSION,
    CM_SEG_HEADER_BYTES,
    encode_index,
)
from .segment import RecordRef, Segment

log = logging.getLogger("cometmp")

DEFAULT_INTERVAL = 4096
_HDR = struct.Struct("<IHHQI8xI")
#: how often a reader without a usable index file looks for one again (seconds)
REMAP_INTERVAL = 1.0


def index_capacity(seg_capacity: int, interval: int) -> int:
    """Size of an index file for a segment of seg_capacity bytes (as cm_index_capacity)."""
    return CM_IDX_HEADER_BYTES + (seg_capacity // interval + 2) * CM_IDX_ENTRY_BYTES


class SegmentIndex:
    """One segment's index table, mapped (or rebuilt in memory). Not thread safe."""

    def __init__(self, directory: str, base: int):
        self.path = os.path.join(directory, paths.index_name(base))
        self.base = base
        self.interval = DEFAULT_INTERVAL
        self.rebuilt = False
        self._table: mmap.mmap | bytearray | None = None
        self._ptr = ffi.NULL
        self._size = 0
        self._mapped_at = 0.0
        self._out = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("int64_t *")
        self._map()

    # ---- the table ----------------------------------------------------------------------
    def _map(self) -> None:
        """Map the index file if its header is valid for this segment (FORMAT.md §3.1)."""
        self._mapped_at = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            if size < CM_IDX_HEADER_BYTES:
                return
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            return
        finally:
            os.close(fd)
        magic, version, _hb, base, interval, hcrc = _HDR.unpack_from(mm, 0)
        if (magic != CM_IDX_MAGIC or version != CM_IDX_VERSION or base != self.base or interval < 64
                or hcrc != lib.cm_crc32c(0, mm[:CM_IDX_OFF_HEADER_CRC], CM_IDX_OFF_HEADER_CRC)):
            mm.close()
            return
        self.interval = interval
        self._use(mm)

    def _use(self, table) -> None:
        self._release()
        self._table = table
        self._ptr = ffi.from_buffer(table)
        self._size = len(table)

    def _release(self) -> None:
        if self._ptr != ffi.NULL:
            ffi.release(self._ptr)
            self._ptr = ffi.NULL
        if isinstance(self._table, mmap.mmap):
            self._table.close()
        self._table = None
        self._size = 0

    def close(self) -> None:
        self._release()

    def _hit(self, rc: int) -> tuple[int, int, int] | None:
        rel, off, ts = self._out
        return (int(rel[0]), int(off[0]), int(ts[0])) if rc == 0 else None

    def _floor_entry(self, rel: int) -> tuple[int, int, int] | None:
        if self._table is None and not self.rebuilt and time.monotonic() - self._mapped_at >= REMAP_INTERVAL:
            self._map()
        return self._hit(lib.cm_index_floor(self._ptr, self._size, min(rel, 0xFFFFFFFF), *self._out))

    def _floor_time_entry(self, ts_ns: int) -> tuple[int, int, int] | None:
        return self._hit(lib.cm_index_floor_time(self._ptr, self._size, ts_ns, *self._out))

    @staticmethod
    def _check(seg: Segment, entry: tuple[int, int, int]) -> bool:
        rel, off, _ts = entry
        return isinstance(seg.record_at(off, rel), RecordRef)

    def rebuild(self, seg: Segment, persist: bool) -> None:
        """Rebuild from the segment's records (I8); persist only for sealed segments."""
        table = bytearray(encode_index(self.base, self.interval, [], index_capacity(seg.size, self.interval)))
        count = ffi.new("uint32_t *")
        if seg.mm is not None:
            buf = ffi.from_buffer(table)
            try:
                lib.cm_index_build(seg.ptr, seg.size, self.interval, buf, len(table), count)
            finally:
                ffi.release(buf)
        self._use(table)
        self.rebuilt = True
        if persist:
            tmp = self.path + paths.TMP_SUFFIX
            try:
                with open(tmp, "wb") as f:
                    f.write(table)
                os.replace(tmp, self.path)
                log.info("cometmp: rebuilt index %s (%d entries)", self.path, count[0])
            except OSError as e:  # the in-memory index still serves; retry next open
                log.warning("cometmp: could not persist rebuilt index %s: %s", self.path, e)

    # ---- lookups ------------------------------------------------------------------------
    def floor(self, seg: Segment, target: int, persist: bool) -> tuple[int, int]:
        """(offset, seq) of a record at or before relative entry ``target``."""
        hit = self._floor_entry(target)
        if hit is None:
            if not self.rebuilt and target > 0 and self._floor_entry(0xFFFFFFFF) is None:
                # I8: a segment with records always has an index entry for its first
                # one, so an empty table means the file is missing or damaged
                self.rebuild(seg, persist)
                hit = self._floor_entry(target)
            if hit is None:
                return CM_SEG_HEADER_BYTES, 0
        if not self._check(seg, hit):
            log.warning("cometmp: index %s does not match its segment; rebuilding", self.path)
            self.rebuild(seg, persist)
            hit = self._floor_entry(target)
            if hit is None or not self._check(seg, hit):
                return CM_SEG_HEADER_BYTES, 0
        rel, off, _ = hit
        return off, rel

    def floor_time(self, seg: Segment, ts_ns: int) -> tuple[int, int]:
        """(offset, seq) of an indexed record with timestamp < ts_ns (or the first)."""
        hit = self._floor_time_entry(ts_ns)
        if hit is None:
            return CM_SEG_HEADER_BYTES, 0
        if not self._check(seg, hit):
            self.rebuild(seg, False)
            return CM_SEG_HEADER_BYTES, 0
        rel, off, _ = hit
        return off, rel
