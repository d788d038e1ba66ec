"""One stream on disk: its writer handle (native/shard.c) and its reader.

A *stream* is one directory of segments (a family's shard, or a plain stream). The
writer is the C core; the reader here maps segments read-only, finds entries through the
sparse index (cometmp.index) and validates every record it returns (cometmp.segment).
Reading never modifies a file, except that a writable client rewrites a missing or
damaged index of a sealed segment (I8).
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import struct
import time
from typing import Iterator, NamedTuple

from . import failpoint, paths
from ._ffi import check, ffi, lib, raise_for
from .compression import decompress
from .errors import (
    ClosedError,
    CorruptRecord,
    EntryNotFound,
    EntryTooLarge,
    StreamNotFound,
    os_errors,
)
from .format import (
    CM_REC_FLAG_ZSTD,
    CM_SEG_HEADER_BYTES,
    CM_SEG_VERSION,
    CM_STATE_BYTES,
    CM_STATE_MAGIC,
    CM_STATE_OFF_ACTIVE_BASE,
    CM_STATE_OFF_COMMITTED,
    CM_STATE_VERSION,
    COUNTERS,
    parse_segment_header,
    segment_header_ok,
)
from .index import SegmentIndex
from .segment import Damage, Segment

log = logging.getLogger("cometmp")

DURABILITY = {"none": 0, "interval": 1, "always": 2}


from ._appender import MessageID  # the C type appends return (native/appender.c)


class StreamMessage(NamedTuple):
    """One entry as read back: its id, payload, append timestamp (ns since the epoch) and,
    from a Consumer, which delivery to its group this is (1 the first time; more after a
    nack, an ack_wait expiry or its reader's death: docs/ARCHITECTURE.md I46)."""

    id: MessageID
    data: bytes
    timestamp_ns: int
    deliveries: int = 1


def stream_crc(name: str) -> int:
    return lib.cm_crc32c(0, name.encode(), len(name.encode()))


class Writer:
    """The C writer handle of one stream. Owned by the process that opened it.

    Handle lifetime (docs/ARCHITECTURE.md §11): ``handle`` owns one reference to the
    cm_shard (freed by cffi's GC hook); ``close()`` waits for calls in flight in other
    threads and makes every later call raise ClosedError (L1-L3).
    """

    def __init__(self, directory: str, name: str, config, create: bool = True):
        opts = ffi.new("cm_options *")
        opts.segment_bytes = config.storage.segment_bytes
        opts.max_entry_bytes = config.storage.max_entry_bytes
        opts.index_interval = config.indexing.interval_bytes
        opts.alloc_chunk = config.storage.preallocate_bytes
        opts.durability = DURABILITY[config.storage.durability]
        opts.stream_crc = stream_crc(name)
        opts.create = 1 if create else 0
        opts.prefault = 1 if config.storage.prefault else 0
        out = ffi.new("cm_shard **")
        report = ffi.new("cm_open_report *")
        check(lib.cm_shard_open(directory.encode(), opts, out, report), directory)
        self.handle = ffi.gc(out[0], lib.cm_shard_unref)   # L3: our reference
        self.name = name
        self.directory = directory
        self.pid = os.getpid()
        self.open_report = {
            "bytes_dropped": report.bytes_dropped,
            "corrupt_records": report.corrupt_records,
            "state_rebuilt": bool(report.state_rebuilt),
            "scanned_full": bool(report.scanned_full),
        }
        if report.bytes_dropped or report.corrupt_records:
            log.warning(
                "cometmp: recovered stream %s: dropped %d torn-tail bytes, found %d corrupt records",
                directory, report.bytes_dropped, report.corrupt_records,
            )
        self._iov = ffi.new("cm_iov[1]")
        self._first = ffi.new("uint64_t *")
        self._written = ffi.new("uint32_t *")

    def append_raw(self, payload: bytes, flags: int = 0) -> int:
        """Append one already-encoded payload through cffi (slow path); returns its entry."""
        if len(payload) > 0xFFFFFFFF:   # E4: never narrowed (cffi would raise OverflowError)
            raise EntryTooLarge(f"payload of {len(payload)} bytes is more than a record can "
                                f"hold; nothing was written to {self.directory}")
        buf = ffi.from_buffer(payload)
        self._iov[0].data = buf
        self._iov[0].len = len(payload)
        self._iov[0].flags = flags
        rc = lib.cm_append(self.handle, self._iov, 1, self._first, self._written)
        if rc < 0:
            raise_for(rc, path=self.directory)
        return int(self._first[0])

    def sync(self) -> None:
        check(lib.cm_sync(self.handle), self.directory)

    def snapshot(self) -> dict:
        snap = ffi.new("cm_snapshot *")
        check(lib.cm_shard_snapshot(self.handle, snap), self.directory)
        out = {
            "committed": snap.committed,
            "active_base": snap.active_base,
            "tail": snap.tail,
            "first_entry": snap.first_entry,
            "last_ts": snap.last_ts,
        }
        out["counters"] = {k: int(snap.counters[v]) for k, v in COUNTERS.items()}
        return out

    def spare(self) -> str:
        """This process's next segment for the stream, made ahead of need by its prefault
        thread (native/spare.c): "none" (not asked for yet, or taken by a rotation),
        "building", "ready" or "failed" (the next rotation creates its files itself)."""
        rc = lib.cm_shard_spare(self.handle)
        if rc < 0:
            raise_for(rc, path=self.directory)
        return ("none", "building", "ready", "failed")[rc]

    def headroom(self) -> str:
        """This process's extension of the stream's disk reservation on its prefault thread
        (native/headroom.c): "none", "extending" (its fallocate has not returned) or "done"
        (the next append that needs it takes it)."""
        rc = lib.cm_shard_headroom(self.handle)
        if rc < 0:
            raise_for(rc, path=self.directory)
        return ("none", "extending", "done")[rc]

    def ref(self):
        """What Appender.set_handle takes: a buffer over the head (magic) of the cm_shard;
        the appender takes its own reference from it (L3). No address is a Python int."""
        return ffi.buffer(ffi.cast("char *", self.handle), 8)

    def close(self) -> None:
        """Idempotent; waits (GIL released) for calls in flight in other threads (L2)."""
        lib.cm_shard_close(self.handle)


def writer_live(fd: int) -> bool:
    """Whether a writer holds the state page open on ``fd``'s file: it takes a read
    lock on the whole page after its open recovered the page from the segment files
    (I27a, ``announce_writer`` in native/shard.c), so then ``committed``/``tail`` are
    current. F_OFD_GETLK only tests (readers never contend). Any error: not live, so
    the caller checks the page against the files (never wrong, only slower; failpoint
    ``read.writer_probe``)."""
    try:
        failpoint.fail("read.writer_probe", f"/proc/self/fd/{fd}")
        return paths.ofd_write_locked(fd, 0, 0)
    except OSError:
        return False


class StateView:
    """Read-only view of a stream's state page: the published tail, counters.

    ``live``: a writer held the page when it was mapped (``writer_live``), so its
    ``committed`` is current; otherwise it is a hint the reader checks against the
    segment files (I27a, ``Reader.committed``)."""

    RECHECK = 0.1

    def __init__(self, directory: str):
        self.path = os.path.join(directory, paths.STATE)
        self.mm: mmap.mmap | None = None
        self.live = False
        with os_errors(self.path, "open state page"):
            try:
                failpoint.fail("read.state_open", self.path)
                fd = paths.open_nofollow(self.path, os.O_RDONLY, paths.IN_STREAM)   # I30
            except FileNotFoundError:
                return
        self.inode = -1
        self.checked = time.monotonic()
        try:
            with os_errors(self.path, "map state page"):
                st = os.fstat(fd)
                if st.st_size != CM_STATE_BYTES:
                    return
                self.inode = st.st_ino
                failpoint.fail("read.state_map", self.path)
                mm = mmap.mmap(fd, CM_STATE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
            live = writer_live(fd)
        finally:
            os.close(fd)
        magic, version = struct.unpack_from("=IH", mm, 0)
        if magic != CM_STATE_MAGIC or version != CM_STATE_VERSION:
            mm.close()
            return
        self.mm, self.live = mm, live

    @property
    def valid(self) -> bool:
        return self.mm is not None

    def replaced(self) -> bool:
        """True if the state file was rebuilt (renamed over) since we mapped it; checked
        at most every RECHECK seconds so hot read paths stay syscall-free."""
        now = time.monotonic()
        if now - self.checked < self.RECHECK:
            return False
        self.checked = now
        try:
            return os.stat(self.path).st_ino != self.inode
        except FileNotFoundError:
            return True

    def _unpack(self, fmt: str, off: int) -> tuple:
        # a close() in another thread leaves None or a closed mmap, never unmapped bytes
        try:
            return struct.unpack_from(fmt, self.mm, off)
        except (TypeError, ValueError):
            raise ClosedError(f"{self.path} is closed") from None

    def committed(self) -> int:
        return self._unpack("=Q", CM_STATE_OFF_COMMITTED)[0]

    def tail(self) -> tuple[int, int]:
        """(active_base, tail) as the page says."""
        return self._unpack("=QQ", CM_STATE_OFF_ACTIVE_BASE)

    def counters(self) -> dict[str, int]:
        from .format import CM_STATE_OFF_COUNTERS

        vals = self._unpack("=32Q", CM_STATE_OFF_COUNTERS)
        return {k: vals[v] for k, v in COUNTERS.items()}

    def close(self) -> None:
        mm, self.mm = self.mm, None
        self.live = False
        if mm is not None:
            mm.close()


class Reader:
    """Reads one stream. Never writes a segment; see the module docstring for indexes.

    After ``close()`` (from any thread) every method, and every ``scan()`` iterator,
    raises ClosedError; a call in flight keeps the mapping it uses (L4).
    """

    MAX_MAPPED = 64

    def __init__(self, directory: str, name: str, shard: int, writable_index: bool):
        if not os.path.isdir(directory):
            raise StreamNotFound(f"no stream {name!r} (no directory {directory})")
        self.directory = directory
        self.name = name
        self.shard = shard
        self.writable_index = writable_index
        self.state = StateView(directory)
        self._bases: list[int] = []
        self._segments: dict[int, Segment] = {}
        self._indexes: dict[int, SegmentIndex] = {}
        #: without a state page: (checked at, committed, (base, offset, seq, count) walked)
        self._fallback_committed: tuple | None = None
        self.corrupt_skipped = 0
        self._closed = False
        self._refresh_bases()

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"reader of {self.name!r} is closed")

    # ---- geometry ---------------------------------------------------------------------
    def _refresh_bases(self) -> None:
        self._bases = paths.list_segment_bases(self.directory)

    def committed(self) -> int:
        """Next entry number: every entry below it is complete and readable (I2).

        I27a: the state page's count is taken as it is only while a writer holds the
        page (``StateView.live``: that writer's open recovered it from the segment files
        and keeps it current). Otherwise (a readonly client on a stopped server's
        directory, a backup, a copy, no page at all) the files decide: the newest
        segment is walked once and then only what was added (``_files_committed``),
        and the page, if any, is looked at again at most every StateView.RECHECK s,
        so a writer that opens meanwhile is followed."""
        self._check()
        if self.state.live and not self.state.replaced():
            return self.state.committed()
        fallback = self._fallback_committed
        if self.state.live or fallback is None or \
                time.monotonic() - fallback[0] >= StateView.RECHECK:
            self.state.close()
            self.state = StateView(self.directory)
            if self.state.live:
                self._fallback_committed = None
                return self.state.committed()
            return self._files_committed()
        return fallback[1]

    def follow_writer(self) -> None:
        """A writer of this stream was just opened in this process: its open recovered
        the page (or rebuilt it under a new inode) and now keeps it current, so map it
        again at once instead of at the next recheck: what this process appends is
        readable as soon as append() returns (I27a). The old view is left to the garbage
        collector, not closed: a scan in another thread may still be reading it (L4)."""
        self._check()
        self.state = StateView(self.directory)
        self._fallback_committed = None

    def _files_committed(self) -> int:
        """No writer keeps the state page current (I27a): count the valid records of
        the newest segment, the page's ``committed``/``tail`` only a second opinion.
        They are kept against the walk only when they contradict it both, in the same
        segment, as recovery does (I27): the walk ends before the page's tail and below
        its count (acked records zeroed or cut, whose numbers stay taken, I1, and which
        reads report as damage), or past both (complete records of a writer killed
        before it published them: recovery zeroes them, so they are never entries); when the walk ends where one of them says,
        the other was damaged and the files win. The walk starts at the last indexed
        record; its count and end are kept, so a later call walks only what was added, and calls within StateView.RECHECK s
        reuse the result: a read costs what it costs with a trusted page, not a walk
        of the segment."""
        now = time.monotonic()
        self._refresh_bases()
        if not self._bases:
            self._fallback_committed = (now, 0, None)
            return 0
        base = self._bases[-1]
        prev = self._fallback_committed
        seg = self._segment(base)
        if prev is not None and prev[2] is not None and prev[2][0] == base:
            _b, off, seq, count = prev[2]
        else:
            # start at the segment's last indexed record (each index entry is checked
            # against its record before use, I8; a damaged index is rebuilt in memory),
            # so the first count walks one index interval, not the segment. A probe of
            # its own: the read path's index object is left as it is
            probe = SegmentIndex(self.directory, base)
            try:
                off, seq = probe.floor(seg, 0xFFFFFFFF, False)
            finally:
                probe.close()
            count = seq
        for rec in seg.walk(off, seq):
            if not isinstance(rec, Damage):
                count = rec.seq + 1
                off, seq = rec.offset + rec.frame_bytes, rec.seq + 1
        n = base + count
        if self.state.valid:
            page_committed = self.state.committed()
            page_base, page_tail = self.state.tail()
            if page_base == base and page_tail != off and page_committed != n and \
                    page_committed >= base:
                # both contradict the walk: acked records zeroed or cut (reads report
                # them damaged), or complete records a killed writer never published
                # (the next writer open zeroes them, so they are not entries)
                n = page_committed
        self._fallback_committed = (now, n, (base, off, seq, count))
        return n

    def first(self) -> int:
        """Oldest retained entry: the base of the oldest segment file. The state page's
        ``first_entry`` is never consulted: it is derived data, and a damaged copy must
        not hide an entry the files still hold (I27)."""
        self._check()
        self._refresh_bases()
        return self._bases[0] if self._bases else self.committed()

    def _segment(self, base: int) -> Segment:
        seg = self._segments.get(base)
        if seg is None:
            self._check()
            if len(self._segments) >= self.MAX_MAPPED:
                self._drop(next(iter(self._segments)))
            seg = Segment.open(os.path.join(self.directory, paths.segment_name(base)), base)
            self._bind(seg)
            self._segments[base] = seg
        return seg

    def _identity(self) -> tuple[int, int] | None:
        """(stream id, base of the oldest v2 segment) of this stream (FORMAT.md §2.1): the
        id in the header of its newest valid version-2 segment; None while it has none."""
        ident, first_v2 = None, None
        for base in reversed(self._bases):
            try:
                with open(os.path.join(self.directory, paths.segment_name(base)), "rb") as f:
                    buf = f.read(CM_SEG_HEADER_BYTES)
            except OSError:
                continue
            if not segment_header_ok(buf):
                continue
            h = parse_segment_header(buf)
            if h.version != CM_SEG_VERSION:
                break               # v1 segments only precede v2 ones
            if ident is None:
                ident = h.stream_id
            first_v2 = base
        return None if ident is None else (ident, first_v2)

    def _bind(self, seg: Segment) -> None:
        """A segment is read as this stream's only if its header says so: the stream's
        name checksum, the stream's id (v2), and no v1 segment after a v2 one (I17). One
        copied in from another stream has its frames checked against this stream's id,
        so they all fail and its entries read as damaged (Segment.bind)."""
        if seg.mm is None or not seg.header_ok:
            return
        h = parse_segment_header(seg.mm[:CM_SEG_HEADER_BYTES])
        ident = self._identity()
        sid, first_v2 = ident if ident is not None else (0, None)
        if h.stream_crc != stream_crc(self.name):
            seg.bind(sid, f"its header names another stream (stream_crc 0x{h.stream_crc:08x})")
        elif h.version == CM_SEG_VERSION and h.stream_id != sid:
            seg.bind(sid, f"stream id 0x{h.stream_id:016x}, the stream's is 0x{sid:016x}")
        elif h.version != CM_SEG_VERSION and first_v2 is not None and seg.base > first_v2:
            seg.bind(sid, "a version-1 segment after the stream's first version-2 segment")

    def _drop(self, base: int) -> None:
        seg = self._segments.pop(base, None)
        if seg is not None:
            seg.close()
        idx = self._indexes.pop(base, None)
        if idx is not None:
            idx.close()

    def _index(self, base: int) -> SegmentIndex:
        idx = self._indexes.get(base)
        if idx is None:
            idx = SegmentIndex(self.directory, base)
            self._indexes[base] = idx
        return idx

    def _base_for(self, entry: int) -> int:
        i = bisect.bisect_right(self._bases, entry) - 1
        if i < 0 or i == len(self._bases) - 1:
            self._refresh_bases()
            i = bisect.bisect_right(self._bases, entry) - 1
        if i < 0:
            raise EntryNotFound(f"{self.name}: entry {entry} is older than the oldest segment")
        return self._bases[i]

    # ---- point reads -------------------------------------------------------------------
    def _locate(self, entry: int):
        """(segment, record) for entry; raises EntryNotFound or CorruptRecord."""
        committed = self.committed()
        if entry < 0 or entry >= committed:
            raise EntryNotFound(f"{self.name}: no entry {entry} (length {committed})")
        base = self._base_for(entry)
        target = entry - base
        lost = None
        for attempt in (0, 1):
            if attempt:  # an empty active segment may have been replaced: remap once
                self._drop(base)
            try:
                seg = self._segment(base)
            except FileNotFoundError:
                raise EntryNotFound(f"{self.name}: entry {entry} was removed by retention") from None
            idx = self._index(base)
            off, seq = idx.floor(seg, target, self.writable_index and base != self._bases[-1])
            nb = self._next_base(base)
            # I2: walk only published entries; the successor's base or the committed
            # count is also the count below which an end of data is damage (FORMAT.md 2.4)
            for item in seg.walk(off, seq, min(committed, nb if nb is not None else committed) - base,
                                 skip_to=target):
                if isinstance(item, Damage):
                    if item.first_seq <= target < item.first_seq + item.lost:
                        lost = item
                        break
                    continue
                if item.seq == target:
                    return seg, item
                break
            if seg.record_at(CM_SEG_HEADER_BYTES, 0) is not None:
                break
        if base < self._bases[-1] or entry < committed:
            first = self.first()
            if entry < first:
                raise EntryNotFound(f"{self.name}: entry {entry} was removed by retention")
            raise CorruptRecord(
                f"{seg.path}: entry {entry} is damaged ({lost.reason if lost else 'failed its checksum'})",
                path=seg.path, offset=lost.offset if lost else off, entry=entry,
            )
        raise EntryNotFound(f"{self.name}: no entry {entry}")

    def read(self, entry: int) -> StreamMessage:
        seg, rec = self._locate(entry)
        return self._message(seg, rec)

    def _message(self, seg: Segment, rec) -> StreamMessage:
        data = seg.payload(rec)
        if rec.flags & CM_REC_FLAG_ZSTD:
            data = decompress(data, seg.path, rec.offset)
        return StreamMessage(MessageID(self.name, self.shard, seg.base + rec.seq), data, rec.ts_ns)

    # ---- iteration ---------------------------------------------------------------------
    def scan(self, start: int = 0) -> Iterator[StreamMessage]:
        """Entries from ``start`` in order, up to the length at each step. A record that
        fails its checksum is skipped and counted in ``corrupt_skipped``."""
        entry = max(start, self.first())
        remapped = -1
        while True:
            committed = self.committed()   # ClosedError once closed
            if entry >= committed:
                return
            try:
                base = self._base_for(entry)
                seg = self._segment(base)
            except (EntryNotFound, FileNotFoundError):
                # retention removed the segment since we listed: the files decide (I27)
                first = self.first()
                if first <= entry:
                    raise EntryNotFound(f"{self.name}: no segment holds entry {entry}") from None
                entry = first
                continue
            idx = self._index(base)
            off, seq = idx.floor(seg, entry - base, False)
            progressed = False
            next_base = self._next_base(base)
            stop = (next_base if next_base is not None else committed) - base
            for item in seg.walk(off, seq, stop, skip_to=entry - base):
                self._check()
                if isinstance(item, Damage):
                    continue  # the entries it cost are counted from the gap below
                e = base + item.seq
                if e < entry:
                    continue
                if e >= committed or (next_base is not None and e >= next_base):
                    break
                if e > entry:  # entries lost to corruption: skip them
                    self.corrupt_skipped += e - entry
                yield self._message(seg, item)
                entry = e + 1
                progressed = True
            if not progressed:
                nb = self._next_base(base)
                if nb is None:
                    self._refresh_bases()
                    nb = self._next_base(base)
                if nb is None and remapped != base:
                    # committed says there is more: an empty active segment may have
                    # been replaced by a larger one with the same base (rotate())
                    remapped = base
                    self._drop(base)
                    continue
                if nb is None:
                    # published entries that no valid record holds: damaged (I2)
                    self.corrupt_skipped += max(0, committed - entry)
                    return
                if nb > entry:
                    self.corrupt_skipped += nb - entry
                entry = nb

    def _next_base(self, base: int) -> int | None:
        i = bisect.bisect_right(self._bases, base)
        return self._bases[i] if i < len(self._bases) else None

    def seek_time(self, ts_ns: int) -> int:
        """First entry with timestamp >= ts_ns (or the length): O(log n) via first-record
        timestamps of segments, then the segment's sparse index."""
        self._refresh_bases()
        committed = self.committed()
        bases = [b for b in self._bases if b < committed]
        if not bases:
            return committed
        lo, hi = 0, len(bases) - 1
        # find the last segment whose first record's ts < ts_ns
        first_ts = lambda b: self._segment(b).first_ts()  # noqa: E731
        if first_ts(bases[0]) is not None and first_ts(bases[0]) >= ts_ns:
            return max(bases[0], self.first())
        while lo < hi:
            mid = (lo + hi + 1) // 2
            t = first_ts(bases[mid])
            if t is not None and t < ts_ns:
                lo = mid
            else:
                hi = mid - 1
        base = bases[lo]
        seg = self._segment(base)
        off, seq = self._index(base).floor_time(seg, ts_ns)
        nb = self._next_base(base)
        for item in seg.walk(off, seq, min(committed, nb if nb is not None else committed) - base):
            if isinstance(item, Damage):
                continue
            if base + item.seq >= committed:
                break
            if item.ts_ns >= ts_ns:
                return base + item.seq
        nb = self._next_base(base)
        return min(nb, committed) if nb is not None else committed

    def close(self) -> None:
        """Idempotent; any thread. Later calls raise ClosedError (L4)."""
        self._closed = True
        for seg in list(self._segments.values()):
            seg.close()
        for idx in self._indexes.values():
            idx.close()
        self._segments.clear()
        self._indexes.clear()
        self.state.close()
