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

import errno
import logging
import mmap
import os
import struct
import time

from . import failpoint, paths
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


_NO_TABLE: tuple = (None, ffi.NULL, 0)


class SegmentIndex:
    """One segment's index table, mapped (or rebuilt in memory). Thread safe: threads
    scanning one stream share it, and the lookups run in C without the GIL.

    Handle lifetime (docs/ARCHITECTURE.md §11, L4): the table, its cffi export and its
    size are one immutable tuple, swapped whole (remap, rebuild, close); every lookup
    reads it into a local first and has its own output words, so neither a swap nor a
    ``close()`` in another thread can unmap a table under a lookup in flight (the GC
    unmaps it after the last holder) or mix two lookups' answers.
    """

    def __init__(self, directory: str, base: int):
        self.path = os.path.join(directory, paths.index_name(base))
        self.base = base
        self.interval = DEFAULT_INTERVAL
        self.rebuilt = False
        #: the OSError of the last rebuild's persist, None if it was persisted (or not asked)
        self.persist_error: OSError | None = None
        self._view: tuple = _NO_TABLE    # (table, cffi export, size)
        self._mapped_at = 0.0
        self._map()

    # ---- the table ----------------------------------------------------------------------
    def _map(self) -> None:
        """Map the index file if its header is valid for this segment (FORMAT.md §3.1)."""
        self._mapped_at = time.monotonic()
        try:
            failpoint.fail("read.index_open", self.path)
            fd = paths.open_nofollow(self.path, os.O_RDONLY, paths.IN_STREAM)   # I30
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise
            return      # derived data (I8): served from a rebuild in memory
        try:
            size = os.fstat(fd).st_size
            if size < CM_IDX_HEADER_BYTES:
                return
            failpoint.fail("read.index_map", self.path)
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
        self._view = (table, ffi.from_buffer(table), len(table))

    def close(self) -> None:
        """Drop the table; a lookup in flight keeps its own reference (L4)."""
        self._view = _NO_TABLE

    @staticmethod
    def _lookup(fn, view: tuple, key: int) -> tuple[int, int, int] | None:
        _table, ptr, size = view      # held for the call
        rel, off, ts = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("int64_t *")
        if fn(ptr, size, key, rel, off, ts) != 0:
            return None
        return int(rel[0]), int(off[0]), int(ts[0])

    def _floor_entry(self, rel: int) -> tuple[int, int, int] | None:
        if self._view[0] is None and not self.rebuilt and \
                time.monotonic() - self._mapped_at >= REMAP_INTERVAL:
            self._map()
        return self._lookup(lib.cm_index_floor, self._view, min(rel, 0xFFFFFFFF))

    def _floor_time_entry(self, ts_ns: int) -> tuple[int, int, int] | None:
        return self._lookup(lib.cm_index_floor_time, self._view, ts_ns)

    @staticmethod
    def _check(seg: Segment, entry: tuple[int, int, int]) -> bool:
        rel, off, _ts = entry
        return isinstance(seg.record_at(off, rel), RecordRef)

    def rebuild(self, seg: Segment, persist: bool) -> None:
        """Rebuild from the segment's records (I8); persist only for sealed segments."""
        table = bytearray(encode_index(self.base, self.interval, [], index_capacity(seg.size, self.interval)))
        count = ffi.new("uint32_t *")
        ptr, mm = seg.ptr, seg.mm     # locals: held for the call (L4)
        if ptr is not None and mm is not None:
            buf = ffi.from_buffer(table)
            try:
                lib.cm_index_build(ptr, seg.size, seg.base, self.interval, buf, len(table), count)
            finally:
                ffi.release(buf)
        self._use(table)
        self.rebuilt = True
        if persist:
            try:
                # I30, I31: temp 0600 renamed over the index, never through a link
                paths.write_file_atomic(self.path, bytes(table), paths.IN_STREAM,
                                        point="index.persist")
                log.info("cometmp: rebuilt index %s (%d entries)", self.path, count[0])
            except OSError as e:  # the in-memory index still serves; retry next open
                self.persist_error = e
                log.warning("cometmp: could not persist rebuilt index %s: %s", self.path, e)
            else:
                self.persist_error = None

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
