"""A consumer's view of one stream: its read position and its state-page mapping.

Who may call: a Consumer (cometmp.consumer), which owns its cursors; not thread safe.
A cursor's ``pos`` is the next entry to deliver; with ``seg`` set, entry ``pos`` is at
(seg, off) with relative sequence ``seq``, so consecutive reads cost O(1) at any depth.
Records are collected by cometmp._reader (native/reader.c) into a Batch, only below the
stream's published ``committed`` count (I2), walking with the one walker (FORMAT.md
§2.4); damage the walker reports is skipped and counted, never delivered. The state page
is mapped read-write when the consumer may register as a futex waiter (I11).
Handle lifetime: docs/ARCHITECTURE.md §11 (L4).
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import struct

from . import failpoint, paths
from .pending import Flight
from ._ffi import ffi, lib
from .errors import ClosedError, CometError, EntryNotFound
from .format import (
    CM_SEG_HEADER_BYTES,
    CM_STATE_BYTES,
    CM_STATE_MAGIC,
    CM_STATE_OFF_COMMITTED,
    CM_STATE_OFF_FIRST_ENTRY,
    CM_STATE_OFF_NOTIFY_SEQ,
    CM_STATE_VERSION,
)
from .segment import Damage
from .shard import Reader, writer_live

log = logging.getLogger("cometmp")

_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
#: cometmp._reader's Batch.fill status
FILL_MORE, FILL_END, FILL_DAMAGED = 0, 1, 2
_DAMAGE_RESYNC = lib.CM_DAMAGE_RESYNC


class StatePage:
    """A stream's state page mapped for a consumer: committed, first_entry, notify_seq,
    and (read-write mapping only) the address cm_wait registers on. Remapped when the
    writer rebuilt the file (a new inode)."""

    __slots__ = ("path", "rw", "mm", "ptr", "ino", "live")

    def __init__(self, directory: str, rw: bool):
        self.path = os.path.join(directory, paths.STATE)
        self.rw = rw
        self.mm: mmap.mmap | None = None
        self.ptr = None
        self.ino = -1
        self.live = False       # a writer kept the page current when mapped (I27a)
        self.remap()

    def remap(self) -> bool:
        """Map the page again; False when there is none usable now. Any failure to open
        or map it (failpoints ``consume.state_open``, ``consume.state_map``) is False
        too, never an error: the consumer then takes the reader's count (I27a) and polls
        instead of sleeping on the page's futex. A planted link is refused (I30)."""
        self.close()
        try:
            failpoint.fail("consume.state_open", self.path)
            fd = paths.open_nofollow(self.path, os.O_RDWR if self.rw else os.O_RDONLY,
                                     paths.IN_STREAM)   # I30
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise
            return False
        try:
            st = os.fstat(fd)
            if st.st_size != CM_STATE_BYTES:
                return False
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.rw else 0)
            failpoint.fail("consume.state_map", self.path)
            mm = mmap.mmap(fd, CM_STATE_BYTES, mmap.MAP_SHARED, prot)
            self.live = writer_live(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        magic, version = struct.unpack_from("=IH", mm, 0)
        if magic != CM_STATE_MAGIC or version != CM_STATE_VERSION:
            mm.close()
            return False
        self.mm, self.ino = mm, st.st_ino
        if self.rw:
            self.ptr = ffi.from_buffer(mm)
        return True

    def writer_opened(self) -> bool:
        """Whether a writer holds the page now (I27a); then ``live`` stays set for this
        mapping. Three syscalls, made only while no writer was seen, so a consumer
        beside a writer that opened after it follows at once."""
        if self.mm is None:
            return False
        try:
            fd = paths.open_nofollow(self.path, os.O_RDONLY, paths.IN_STREAM)   # I30
        except OSError:
            return False
        try:
            self.live = os.fstat(fd).st_ino == self.ino and writer_live(fd)
        finally:
            os.close(fd)
        return self.live

    def stale(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self.ino
        except OSError:
            return False

    def read(self, fmt: struct.Struct, off: int) -> int:
        try:
            return fmt.unpack_from(self.mm, off)[0]
        except (TypeError, ValueError):   # closed by another thread (L4)
            raise ClosedError(f"{self.path} is closed") from None

    def close(self) -> None:
        """Wake this process's threads asleep on the page, then drop the mapping. A wait
        in flight holds ``ptr`` (a buffer export), so the page stays mapped until it
        returns and the GC unmaps it (L4); no ffi.release under a caller's feet."""
        ptr, self.ptr = self.ptr, None
        mm, self.mm = self.mm, None
        if ptr is not None:
            lib.cm_wake(ptr)
        del ptr
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass


class Cursor:
    """One stream as a consumer sees it. ``pos`` is the next entry to deliver; when
    ``seg`` is set, entry ``pos`` is at (seg, off) with relative sequence ``seq``."""

    __slots__ = ("name", "shard", "reader", "state", "pos", "slot", "resets", "seg",
                 "base", "off", "seq", "skipped", "local_next", "closed", "acked", "flight")

    def __init__(self, root: str, name: str, rw_state: bool):
        split = paths.split_shard_stream(name)
        self.name = name
        self.shard = split[1] if split else 0
        directory = paths.stream_dir(root, name)
        self.reader = Reader(directory, name, self.shard, writable_index=False)
        self.state = StatePage(directory, rw_state)
        self.pos: int | None = None
        self.slot: int | None = None
        self.resets = -1
        self.seg = None
        self.base = self.off = self.seq = 0
        self.skipped = 0            # entries lost to corruption (never delivered)
        self.local_next: int | None = None   # acks of an ephemeral (readonly) consumer
        self.acked = 0              # the group's committed offset as last seen (I43)
        self.flight = Flight()      # delivered, not acked (cometmp.pending)
        self.closed = False

    def committed(self) -> int:
        if self.closed:
            raise ClosedError(f"consumer cursor of {self.name!r} is closed")
        # I27a: the page's count only while a writer keeps it current; otherwise the
        # reader's, which the segment files decide (and which notices a writer opening)
        if (self.state.mm is None and not self.state.remap()) or \
                not (self.state.live or self.state.writer_opened()):
            return self.reader.committed()
        return self.state.read(_U64, CM_STATE_OFF_COMMITTED)

    def notify_seq(self) -> int:
        return self.state.read(_U32, CM_STATE_OFF_NOTIFY_SEQ) if self.state.mm is not None else 0

    def retained_from(self, pos: int) -> int:
        """``pos``, or the oldest retained entry when retention deleted ``pos`` (then
        ``[pos, result)`` was dropped, I15). The state page's ``first_entry`` is only a
        hint that decides whether to look: at or below ``pos`` nothing needs listing (a
        hint damaged low costs nothing: a read of a deleted segment relists, see
        Consumer._fill); above it, the segment files decide (I27)."""
        hint = self.state.read(_U64, CM_STATE_OFF_FIRST_ENTRY) if self.state.mm is not None else 0
        if hint <= pos:
            return pos
        return max(pos, self.oldest())

    def oldest(self) -> int:
        """Oldest retained entry: the oldest segment file's base (lists the directory;
        used when starting, resetting or after a read found a segment gone)."""
        return self.reader.first()

    # ---- locating and reading ------------------------------------------------------------
    def _at(self, base: int) -> None:
        """Move to the start of segment ``base``, unmapping the one we leave (a batch still
        holding it keeps it mapped): a deleted segment's disk space is freed only when
        nobody maps it any more."""
        prev = self.base if self.seg is not None else None
        self.seg = self.reader._segment(base)
        self.base, self.off, self.seq = base, CM_SEG_HEADER_BYTES, 0
        if prev is not None and prev < base:
            self.reader._drop(prev)

    def locate(self) -> None:
        """Position (seg, off, seq) at entry ``pos``: O(log n) by segment name and the
        sparse index, then a walk of at most one index interval."""
        r = self.reader
        pos = self.pos
        if not r._bases:
            r._refresh_bases()
        i = bisect.bisect_right(r._bases, pos) - 1
        if i < 0:
            raise EntryNotFound(f"{self.name}: entry {pos} is older than the oldest segment")
        # no listing here: if pos lies in a segment newer than the last one we know, the
        # fill stops at the end of this one and read_into() relists (rotation)
        base = r._bases[i]
        seg = r._segment(base)           # FileNotFoundError if retention just deleted it
        target = pos - base
        off, seq = (CM_SEG_HEADER_BYTES, 0) if target == 0 else r._index(base).floor(seg, target, False)
        self.seg, self.base = seg, base
        nb = r._next_base(base)
        limit = self.committed() if nb is None else nb
        for item in seg.walk(off, seq, max(limit - base, target), skip_to=target):
            if isinstance(item, Damage):
                continue
            self.off, self.seq = item.offset, item.seq
            if item.seq > target:    # entries lost to corruption
                self.skipped += item.seq - target
                self.pos = base + item.seq
            return
        # no record at or after target in this segment: continue in the next one
        self.seq = target
        self.off = -1

    def read_into(self, batch, sidx: int, budget: int, committed: int) -> int:
        """Append up to ``budget`` entries below ``committed`` to ``batch``."""
        r = self.reader
        total = 0
        reopened = -1
        while budget > 0 and self.pos < committed:
            if self.closed:
                raise ClosedError(f"consumer cursor of {self.name!r} is closed")
            seg = self.seg                 # one read: close() elsewhere may clear it (L4)
            if seg is None or seg.mm is None:
                self.locate()
            nb = r._next_base(self.base)
            if nb is not None and self.pos >= nb:
                self._at(nb)
                continue
            limit = committed if nb is None else min(committed, nb)
            if self.off >= 0:
                seg = self.seg
                mm = seg.mm if seg is not None else None
                if mm is None:
                    raise ClosedError(f"consumer cursor of {self.name!r} is closed")
                off, seq, added, status, lost, resume, end = batch.fill(
                    sidx, mm, self.base, self.off, self.seq, limit - self.base, budget,
                    seg.keybuf)
                self.off, self.seq = off, seq
                self.pos = self.base + seq
                total += added
                budget -= added
                if status == FILL_MORE:
                    continue
                if status == FILL_DAMAGED:
                    if end == _DAMAGE_RESYNC:
                        # corruption (FORMAT.md 2.4): the walker found the next valid record
                        self._skip(lost)
                        self.off, self.seq = resume, seq + lost
                        self.pos = self.base + self.seq
                        continue
                    # nothing valid below `limit` after (off, seq). Before calling the
                    # rest lost, rule out a stale view: a successor we did not know yet
                    # (rotation: the limit was too high), or (checked once) a mapping of an
                    # empty active segment that was replaced by a larger one, same base
                    r._refresh_bases()
                    nb = r._next_base(self.base)
                    if nb is not None and nb < limit:
                        continue
                    if nb is None and reopened != self.base:
                        reopened = self.base
                        r._drop(self.base)
                        self.seg = None
                        continue
                    self._skip(lost)
                    self.pos = self.base + seq + lost
                    self.off = -1
                    if nb is None:
                        break
                    continue
            # the segment is done below `limit`: move on to the next one
            r._refresh_bases()
            nb = r._next_base(self.base)
            if nb is None:
                if reopened == self.base:
                    break
                reopened = self.base
                r._drop(self.base)
                self.seg = None
                continue
            if nb > self.pos:
                self._skip(nb - self.pos)
            self.pos = nb
            self._at(nb)
        return total

    def _skip(self, n: int) -> None:
        self.skipped += n
        log.warning("cometmp: consumer skipped %d damaged entries of %s at %s", n, self.name,
                    self.seg.path if self.seg is not None else "?")

    def close(self) -> None:
        self.closed = True
        self.seg = None
        self.reader.close()
        self.state.close()
