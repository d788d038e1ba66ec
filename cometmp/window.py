"""Ack windows: the shared mapped file ``DIR/consumers/windows`` (docs/FORMAT.md §7.2).

Who may call: cometmp.consumer only (one Consumer per thread; any process). The file holds
one record per offsets-file slot (the same index as cometmp.offsets' slots), so a
(group, stream) pair has its window where it has its offset. Little-endian, fixed size,
sparse; a record's pages are allocated (posix_fallocate) the first time it is written, so
a full disk is DiskFull there, never a SIGBUS later (I9).

A window says which entries of the stream the group acknowledged *beyond* its committed
offset (the contiguous acked prefix, the slot's ``next``), and how often entries were
delivered. The acknowledged set of a (group, stream) is, exactly (I43)::

    [0, max(slot.next, copy.base))  U  {copy.base + i : bit i of copy.acked}

Layout::

    [0, 4096)   header   magic "CMWN"(4) version(2) header_bytes(2) record_bytes(4)
                         record_cap(4) window_entries(4) counts_max(4) created_ns(8)
    records     65536 x 4096, record i for offsets slot i:
                head     active(4) reserved(4) delivered(8) reserved(48)
                copy 0 at 64, copy 1 at 1632, each 1568 bytes:
                         group_id(8) resets(8) base(8) crc32c(4) ncounts(2) reserved(2)
                         acked bitmap(512: WINDOW_ENTRIES bits from base)
                         counts(256 x (offset from base u16, deliveries u16))

``active`` names the current copy. An update (under the record's OFD write lock, which a
dead holder releases by dying) writes the whole *other* copy, its crc32c last, then
stores ``active`` (I44): a ``kill -9`` anywhere leaves either the old copy current or
the new one, never a mix. A copy belongs to the slot's group only while its
``group_id`` and ``resets`` match the slot's (a reused slot or a ``reset_offset`` makes
it an empty window). ``delivered`` (entries below it were delivered at least once) is
stored without the lock by the stream's one reader; a record whose copy is re-owned
resets it first.

Not derived data: a current copy whose crc32c does not match raises CorruptRecord naming
the file and offset (the window is never guessed: it would redeliver, or skip, entries).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from functools import wraps

from . import failpoint, paths
from ._ffi import lib
from .errors import ClosedError, CorruptRecord, FormatError, os_error, os_errors
from .offsets import CM_OFS_SLOT_CAP

CM_WIN_MAGIC = 0x4E574D43          # b"CMWN" little-endian
CM_WIN_VERSION = 1
CM_WIN_HEADER_BYTES = 4096
CM_WIN_RECORD_BYTES = 4096         # one page: a record's writes never share a page
CM_WIN_RECORD_CAP = CM_OFS_SLOT_CAP   # one record per offsets slot
#: entries a window covers from its base: the most a stream has delivered and not acked
#: (read() delivers nothing at or beyond base + WINDOW_ENTRIES, I45)
CM_WIN_ENTRIES = 4096
#: delivery counts kept per window (entries delivered more than once); beyond it the
#: bound of I46 (delivered >= 2 after a crash) applies
CM_WIN_COUNTS_MAX = 256
CM_WIN_OFF_ACTIVE, CM_WIN_OFF_DELIVERED = 0, 8
CM_WIN_COPY_OFF = 64
CM_WIN_COPY_BYTES = 1568
CM_WIN_C_GROUP_ID, CM_WIN_C_RESETS, CM_WIN_C_BASE, CM_WIN_C_CRC, CM_WIN_C_NCOUNTS = 0, 8, 16, 24, 28
CM_WIN_C_ACKED = 32
CM_WIN_C_COUNTS = CM_WIN_C_ACKED + CM_WIN_ENTRIES // 8
CM_WIN_FILE_BYTES = CM_WIN_HEADER_BYTES + CM_WIN_RECORD_CAP * CM_WIN_RECORD_BYTES
assert CM_WIN_C_COUNTS + 4 * CM_WIN_COUNTS_MAX == CM_WIN_COPY_BYTES
assert CM_WIN_COPY_OFF + 2 * CM_WIN_COPY_BYTES <= CM_WIN_RECORD_BYTES

#: magic version header_bytes record_bytes record_cap window_entries counts_max created_ns
HEADER = struct.Struct("<IHHIIIIq")
_COPY_HEAD = struct.Struct("<QQQIH2x")   # group_id resets base crc32c ncounts
_U32 = struct.Struct("<I")
_ZERO_COPY = bytes(CM_WIN_COPY_BYTES)
_U64 = struct.Struct("<Q")
_COUNT = struct.Struct("<HH")
#: how long an update waits for another holder of the record's lock (a window lock is
#: held for microseconds; a file that may be a copy is never waited on without a bound)
LOCK_TIMEOUT = 10.0


def windows_path(root: str) -> str:
    return os.path.join(root, paths.CONSUMERS, paths.WINDOWS)


@dataclass
class WindowState:
    """A window as read or to be written. ``acked``: entries >= base acknowledged;
    ``counts``: deliveries so far of entries >= base delivered more than once."""

    base: int
    acked: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)
    delivered: int = 0


def unacked(length: int, start: int, st: WindowState | None) -> int:
    """Entries of a stream the group has not acknowledged (its lag): ``start`` is the
    first entry it still owes by its committed offset (the slot's ``next``, or the oldest
    retained entry before its first ack; never below the oldest retained), ``length`` the
    stream's length and ``st`` its window (None: empty). The acknowledged set is I43's:
    the prefix up to ``max(start, st.base)`` and the window's bits beyond it. The one
    rule behind Consumer.lag, Client.consumer_groups and cometmp.metrics."""
    lo = start if st is None else max(start, st.base)
    beyond = 0 if st is None else sum(1 for e in st.acked if lo <= e < length)
    return max(0, length - lo - beyond)


def _pack_copy(group_id: int, resets: int, st: WindowState) -> bytes:
    body = bytearray(CM_WIN_COPY_BYTES)
    base = st.base
    for e in st.acked:
        k = e - base
        if not 0 <= k < CM_WIN_ENTRIES:
            raise ValueError(f"entry {e} outside the window from {base}")
        body[CM_WIN_C_ACKED + (k >> 3)] |= 1 << (k & 7)   # bit k: byte k/8, LSB first
    counts = sorted((e, n) for e, n in st.counts.items()
                    if 0 <= e - base < CM_WIN_ENTRIES and n > 1)[:CM_WIN_COUNTS_MAX] \
        if st.counts else ()
    _COPY_HEAD.pack_into(body, 0, group_id, resets, base, 0, len(counts))
    for i, (e, n) in enumerate(counts):
        _COUNT.pack_into(body, CM_WIN_C_COUNTS + 4 * i, e - st.base, min(n, 0xFFFF))
    crc = lib.cm_crc32c(0, bytes(body), CM_WIN_COPY_BYTES)
    _U32.pack_into(body, CM_WIN_C_CRC, crc)
    return bytes(body)



def _closed_is_closed(fn):
    """A close() in another thread unmaps the file under a load/store in flight: the
    mapping then raises ValueError; that is ClosedError, never a bare ValueError (L4)."""
    @wraps(fn)
    def call(self, *args, **kw):
        try:
            return fn(self, *args, **kw)
        except ValueError:
            if self._mm is None:
                raise ClosedError(f"windows file {self.path} is closed") from None
            raise
    return call


class WindowFile:
    """Handle on the windows file of one data directory. Not thread safe (a Consumer's).

    ``writable=False`` maps it read-only (a readonly Client; a missing file reads as
    empty windows). Fork-aware (CONVENTIONS 10): the OFD locks belong to the open file
    description, which a fork shares, so a child reopens the file (``_pid``)."""

    def __init__(self, root: str, writable: bool):
        self.path = windows_path(root)
        self.writable = writable
        self._fd = -1
        self._io = threading.Lock()   # the fd is not closed under a syscall on it (L2)
        self._mm: mmap.mmap | None = None
        self._pid = 0
        self._reserved: set[int] = set()
        self._open()

    def _open(self) -> None:
        self._pid = os.getpid()
        self._reserved = set()
        if self.writable:
            head = HEADER.pack(CM_WIN_MAGIC, CM_WIN_VERSION, CM_WIN_HEADER_BYTES,
                               CM_WIN_RECORD_BYTES, CM_WIN_RECORD_CAP, CM_WIN_ENTRIES,
                               CM_WIN_COUNTS_MAX, time.time_ns())
            with os_errors(self.path, "create windows file"):
                paths.mkdir_private(os.path.dirname(self.path))
                if not os.path.exists(self.path):
                    paths.create_file_once(self.path, head + bytes(CM_WIN_HEADER_BYTES - HEADER.size),
                                           paths.IN_SUBDIR, size=CM_WIN_FILE_BYTES, point="window")
        with os_errors(self.path, "open windows file"):
            try:
                fd = paths.open_nofollow(self.path, os.O_RDWR if self.writable else os.O_RDONLY,
                                         paths.IN_SUBDIR)
            except FileNotFoundError:
                if self.writable:
                    raise
                return
            try:
                size = os.fstat(fd).st_size
                if size != CM_WIN_FILE_BYTES:
                    raise FormatError(f"{self.path}: {size} bytes, a windows file v{CM_WIN_VERSION} "
                                      f"is {CM_WIN_FILE_BYTES}")
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
                mm = mmap.mmap(fd, CM_WIN_FILE_BYTES, mmap.MAP_SHARED, prot)
            except BaseException:
                os.close(fd)
                raise
        magic, version, hb, rb, cap, went, cmax, _c = HEADER.unpack_from(mm, 0)
        if (magic, version, hb, rb, cap, went, cmax) != (
                CM_WIN_MAGIC, CM_WIN_VERSION, CM_WIN_HEADER_BYTES, CM_WIN_RECORD_BYTES,
                CM_WIN_RECORD_CAP, CM_WIN_ENTRIES, CM_WIN_COUNTS_MAX):
            mm.close()
            os.close(fd)
            raise FormatError(f"{self.path}: not a cometmp windows file v{CM_WIN_VERSION} "
                              f"(magic {magic:#x}, version {version})")
        self._fd, self._mm = fd, mm

    def _map(self) -> mmap.mmap | None:
        if self._pid != os.getpid():   # forked: our own open file description (OFD locks)
            self.close()
            self._open()
        return self._mm

    # ---- reading ------------------------------------------------------------------------
    @_closed_is_closed
    def load(self, slot: int, group_id: int, resets: int) -> WindowState | None:
        """The current window of ``slot`` when it belongs to (group_id, resets), else None
        (an empty window). CorruptRecord if the current copy fails its crc32c.

        The first read takes no lock. A store in another process may rewrite the copy
        being read (two stores bring the writer back to it), so a copy that fails its
        crc is read again under the record's OFD read lock, which no store holds at the
        same time (I44); only a failure there is damage."""
        mm = self._map()
        if mm is None:
            return None
        rec = CM_WIN_HEADER_BYTES + slot * CM_WIN_RECORD_BYTES
        got = self._read_copy(mm, slot, rec)
        if got is None:
            try:
                self._lock(rec, fcntl.F_RDLCK)
            except OSError as e:
                raise os_error(e, self.path, "lock window record") from e
            try:
                got = self._read_copy(mm, slot, rec)
            finally:
                self._lock(rec, fcntl.F_UNLCK)
            if got is None:
                active = _U32.unpack_from(mm, rec + CM_WIN_OFF_ACTIVE)[0]
                raise CorruptRecord(f"{self.path}: window record {slot} copy {active} fails "
                                    f"its crc32c (offset "
                                    f"{rec + CM_WIN_COPY_OFF + active * CM_WIN_COPY_BYTES}); "
                                    f"its acks cannot be trusted")
        raw, delivered = got
        if raw is None:
            return None        # never written: an empty window
        gid, rs, base, crc, ncounts = _COPY_HEAD.unpack_from(raw, 0)
        if gid != group_id or rs != resets:
            return None
        mask = int.from_bytes(raw[CM_WIN_C_ACKED:CM_WIN_C_COUNTS], "little")
        acked = set()
        while mask:
            low = mask & -mask
            acked.add(base + low.bit_length() - 1)
            mask ^= low
        counts = {}
        for i in range(ncounts):
            k, n = _COUNT.unpack_from(raw, CM_WIN_C_COUNTS + 4 * i)
            counts[base + k] = n
        return WindowState(base, acked, counts, delivered)

    def _read_copy(self, mm: mmap.mmap, slot: int, rec: int):
        """``(copy, delivered)`` of the record's active copy, ``(None, delivered)`` for a
        never-written (all-zero) one, None when the copy fails its crc32c (torn by a
        concurrent store, or damaged). The crc before the owner: a flipped bit of
        group_id or resets must not pass as "another owner's window" (an empty one:
        acks beyond the offset redelivered)."""
        try:
            active = _U32.unpack_from(mm, rec + CM_WIN_OFF_ACTIVE)[0]
            if active > 1:
                raise CorruptRecord(f"{self.path}: window record {slot}: active copy {active} "
                                    f"is not 0 or 1 (offset {rec})")
            off = rec + CM_WIN_COPY_OFF + active * CM_WIN_COPY_BYTES
            raw = bytearray(mm[off:off + CM_WIN_COPY_BYTES])
            delivered = _U64.unpack_from(mm, rec + CM_WIN_OFF_DELIVERED)[0]
        except (ValueError, TypeError):
            raise ClosedError(f"windows file {self.path} is closed") from None
        if raw == _ZERO_COPY:
            return None, delivered
        crc, ncounts = _COPY_HEAD.unpack_from(raw, 0)[3:5]
        _U32.pack_into(raw, CM_WIN_C_CRC, 0)
        if lib.cm_crc32c(0, bytes(raw), CM_WIN_COPY_BYTES) != crc or ncounts > CM_WIN_COUNTS_MAX:
            return None
        _U32.pack_into(raw, CM_WIN_C_CRC, crc)
        return raw, delivered

    # ---- writing ------------------------------------------------------------------------
    def _lock(self, rec: int, kind: int) -> None:
        arg = paths.FLOCK.pack(kind, os.SEEK_SET, rec, CM_WIN_RECORD_BYTES, 0)
        if kind == fcntl.F_UNLCK:
            with self._io:
                if self._fd >= 0:       # closed meanwhile: closing the fd released it
                    fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, arg)
            return
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.0001
        while True:
            try:
                with self._io:
                    self._open_fd()
                    fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, arg)
                return
            except (BlockingIOError, PermissionError):
                if time.monotonic() > deadline:
                    raise os_error(errno.ETIMEDOUT, self.path, message=(
                        f"{self.path}: window record at offset {rec} stayed locked for "
                        f"{LOCK_TIMEOUT:.0f} s")) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    def _reserve(self, slot: int, rec: int) -> None:
        """I9: the record's blocks exist before anything is stored through the mapping."""
        if slot in self._reserved:
            return
        with self._io, os_errors(self.path, "allocate window record"):
            self._open_fd()
            failpoint.fail("window.fallocate", self.path)
            os.posix_fallocate(self._fd, rec, CM_WIN_RECORD_BYTES)
        self._reserved.add(slot)

    @_closed_is_closed
    def store(self, slot: int, group_id: int, resets: int, st: WindowState,
              reset_delivered: bool = False) -> None:
        """Make ``st`` the current window of ``slot`` (I44: other copy, crc last, then
        ``active``). ``reset_delivered``: the record changes owner; ``delivered`` is
        zeroed before the copy is switched."""
        mm = self._map()
        if mm is None or not self.writable:
            raise ClosedError(f"windows file {self.path} is not writable")
        rec = CM_WIN_HEADER_BYTES + slot * CM_WIN_RECORD_BYTES
        body = _pack_copy(group_id, resets, st)
        self._reserve(slot, rec)
        try:
            self._lock(rec, fcntl.F_WRLCK)
        except OSError as e:
            raise os_error(e, self.path, "lock window record") from e
        try:
            active = _U32.unpack_from(mm, rec + CM_WIN_OFF_ACTIVE)[0]
            other = 0 if active == 1 else 1
            off = rec + CM_WIN_COPY_OFF + other * CM_WIN_COPY_BYTES
            if reset_delivered:
                _U64.pack_into(mm, rec + CM_WIN_OFF_DELIVERED, 0)
            # the copy without its crc, then the crc: a torn copy never validates
            mm[off + CM_WIN_C_ACKED:off + CM_WIN_COPY_BYTES] = body[CM_WIN_C_ACKED:]
            mm[off:off + CM_WIN_C_CRC] = body[:CM_WIN_C_CRC]
            mm[off + CM_WIN_C_NCOUNTS:off + CM_WIN_C_ACKED] = body[CM_WIN_C_NCOUNTS:CM_WIN_C_ACKED]
            if failpoint.ACTIVE:
                with os_errors(self.path, "switch window copy"):
                    failpoint.fail("window.switch", self.path)   # the old copy stays current
            mm[off + CM_WIN_C_CRC:off + CM_WIN_C_NCOUNTS] = body[CM_WIN_C_CRC:CM_WIN_C_NCOUNTS]
            _U32.pack_into(mm, rec + CM_WIN_OFF_ACTIVE, other)   # I44: the switch, last
        finally:
            self._lock(rec, fcntl.F_UNLCK)

    def mark_delivered(self, slot: int, end: int) -> None:
        """Entries below ``end`` of ``slot`` were delivered (I46). Caller: the stream's one
        reader, after ``store(..., reset_delivered=True)`` made the record its own. The
        woken read stores the same field from C (native/reader.c ``wait_woken``; the
        layout reaches it through ``cometmp._reader.configure``)."""
        mm = self._mm
        if mm is None:
            raise ClosedError(f"windows file {self.path} is closed")
        _U64.pack_into(mm, CM_WIN_HEADER_BYTES + slot * CM_WIN_RECORD_BYTES
                       + CM_WIN_OFF_DELIVERED, end)

    def _open_fd(self) -> None:
        """Caller holds ``_io``. ClosedError once close() ran (never a syscall on a closed
        or reused descriptor)."""
        if self._fd < 0:
            raise ClosedError(f"windows file {self.path} is closed")

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        with self._io:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
