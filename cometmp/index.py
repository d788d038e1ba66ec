"""The sparse index of one segment (<base>.idx), read side and rebuild.

Derived data (I8): not checksummed per entry; every entry is checked against the
segment before use, and a missing or damaged index is rebuilt by walking the segment.
A writable client persists the rebuilt index (temp file, rename); a read-only one keeps
it in memory. The writer side lives in native/shard.c (index_note).
"""

from __future__ import annotations

import bisect
import logging
import os

from . import paths
from .format import CM_IDX_ENTRY_BYTES, CM_IDX_HEADER_BYTES, CM_SEG_HEADER_BYTES, encode_index, parse_index
from .segment import RecordRef, Segment

log = logging.getLogger("cometmp")

DEFAULT_INTERVAL = 4096


def index_capacity(seg_capacity: int, interval: int) -> int:
    """Size of an index file for a segment of seg_capacity bytes (as cm_index_capacity)."""
    return CM_IDX_HEADER_BYTES + (seg_capacity // interval + 2) * CM_IDX_ENTRY_BYTES


class SegmentIndex:
    """Entries (rel, offset, ts) of one segment's index. Not thread safe."""

    def __init__(self, directory: str, base: int):
        self.path = os.path.join(directory, paths.index_name(base))
        self.base = base
        self.interval = DEFAULT_INTERVAL
        self.rels: list[int] = []
        self.entries: list[tuple[int, int, int]] = []
        self.rebuilt = False
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        parsed = parse_index(data) if data else None
        if parsed is None or parsed[0] != self.base:
            self.entries, self.rels = [], []
            return
        _base, self.interval, self.entries = parsed
        self.rels = [e[0] for e in self.entries]

    def _check(self, seg: Segment, i: int) -> bool:
        rel, off, _ts = self.entries[i]
        return isinstance(seg.record_at(off, rel), RecordRef)

    def rebuild(self, seg: Segment, persist: bool) -> None:
        """Rebuild from the segment's records (I8); persist only for sealed segments."""
        entries: list[tuple[int, int, int]] = []
        last = -(1 << 62)
        for rec in seg.walk():
            if isinstance(rec, str):
                continue
            if rec.offset - last >= self.interval:
                entries.append((rec.seq, rec.offset, rec.ts_ns))
                last = rec.offset
        self.entries = entries
        self.rels = [e[0] for e in entries]
        self.rebuilt = True
        if persist:
            tmp = self.path + paths.TMP_SUFFIX
            try:
                with open(tmp, "wb") as f:
                    f.write(encode_index(self.base, self.interval, entries,
                                         index_capacity(seg.size, self.interval)))
                os.replace(tmp, self.path)
                log.info("cometmp: rebuilt index %s (%d entries)", self.path, len(entries))
            except OSError as e:  # the in-memory index still serves; retry next open
                log.warning("cometmp: could not persist rebuilt index %s: %s", self.path, e)

    def floor(self, seg: Segment, target: int, persist: bool) -> tuple[int, int]:
        """(offset, seq) of a record at or before relative entry ``target``."""
        if not self.entries or target > self.rels[-1]:
            self._load()
        i = bisect.bisect_right(self.rels, target) - 1
        if i < 0:
            if not self.entries and not self.rebuilt and target > 0:
                # I8: a segment with records always has an index entry for its first
                # one, so an empty table means the file is missing or damaged
                self.rebuild(seg, persist)
                i = bisect.bisect_right(self.rels, target) - 1
            if i < 0:
                return CM_SEG_HEADER_BYTES, 0
        if not self._check(seg, i):
            log.warning("cometmp: index %s does not match its segment; rebuilding", self.path)
            self.rebuild(seg, persist)
            i = bisect.bisect_right(self.rels, target) - 1
            if i < 0:
                return CM_SEG_HEADER_BYTES, 0
        rel, off, _ = self.entries[i]
        return off, rel

    def floor_time(self, seg: Segment, ts_ns: int) -> tuple[int, int]:
        """(offset, seq) of an indexed record with timestamp < ts_ns (or the first)."""
        self._load()
        lo, hi = 0, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid][2] < ts_ns:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i < 0:
            return CM_SEG_HEADER_BYTES, 0
        if not self._check(seg, i):
            self.rebuild(seg, False)
            return CM_SEG_HEADER_BYTES, 0
        rel, off, _ = self.entries[i]
        return off, rel
