"""The application metrics table ``DIR/metrics/app``: values indexed by (key, worker column).

Runs in every process of a prefork pool that updates or scrapes application metrics
(through cometmp.prometheus, the prometheus_client adapter); thread safe; fork aware.
The layout is docs/FORMAT.md §10 and native/format.h ``CM_APM_*`` (this module mirrors
the constants, tests/unit/test_format_constants.py compares them); the lock-free cell
updates are native/appmetrics.c. Invariants I51–I54 (docs/ARCHITECTURE.md §13).

Design
------
One fixed-size file per data directory, mapped MAP_SHARED by every process and reserved
whole when it is created (I9: a store into it can never fault on a full disk). A *row*
is one metric key — what prometheus_client's multiprocess mode keys a value by: kind
(counter, gauge, histogram, summary), gauge mode, and the ``mmap_key`` JSON of
(metric name, sample name, labels, help). A *column* is a worker: the registry entry
index this process holds (cometmp.registry, 0..255, the worker slot), or the one
``UNSLOTTED`` column shared by every process without a slot (the master, a script).

- rows are appended, never removed, under an OFD write lock on byte 0 of the file (I51),
  and published by a release store of ``nkeys``; ``KEY_CAP`` rows at most, a full table
  raises MetricsTableFull naming the caps. A key is the same row in every process.
- a cell is updated without a lock: add is a CAS loop on the double's 64 bits, set a
  64-bit store (I52). Counters, histograms and summaries only ever *add*, so whichever
  process adds to a column — the worker that died, the one that replaced it in the slot,
  a worker that was promoted mid-way — every increment is counted exactly once: a new
  worker continues the cumulative cells of its slot (nothing lost, nothing doubled).
- a column records who bound it last (pid and /proc start time, the registry's I21
  identity). A process binding a slot column whose previous binder is dead clears that
  column's *gauge* cells first (I53): a dead worker's gauge is not the new one's. ``live*``
  gauges skip columns whose binder is not alive (I54).

So storage is one file of ``FILE_BYTES`` whatever the worker churn, and a scrape reads
``nkeys`` rows of the columns ever bound — bounded by the registry's 256 entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import struct
import threading
import time
from typing import Any

from . import paths
from ._ffi import ffi, lib, raise_for
from .errors import ClosedError, CorruptRecord, FormatError, MetricsTableFull, ReadOnlyError, os_error

__all__ = ["GAUGE_MODES", "KINDS", "UNSLOTTED", "Key", "Table", "column_label"]

# ---- layout: mirrors native/format.h (docs/FORMAT.md §10), native endian, fixed size ------
CM_APM_MAGIC = 0x4D504D43  # b"CMPM"
CM_APM_VERSION = 1
CM_APM_KEY_CAP = 1024
CM_APM_COLUMNS = 257
CM_APM_UNSLOTTED = 256
CM_APM_TEXT_CAP = 256 * 1024
CM_APM_HEADER_BYTES = 64
CM_APM_BINDER_BYTES = 16
CM_APM_KEY_BYTES = 16
CM_APM_CELL_BYTES = 24
CM_APM_ROW_BYTES = CM_APM_COLUMNS * CM_APM_CELL_BYTES
CM_APM_BINDERS_OFF = CM_APM_HEADER_BYTES
CM_APM_KEYS_OFF = 8192
CM_APM_TEXT_OFF = CM_APM_KEYS_OFF + CM_APM_KEY_CAP * CM_APM_KEY_BYTES
CM_APM_CELLS_OFF = CM_APM_TEXT_OFF + CM_APM_TEXT_CAP
CM_APM_FILE_BYTES = CM_APM_CELLS_OFF + CM_APM_KEY_CAP * CM_APM_ROW_BYTES
CM_APM_KIND_COUNTER, CM_APM_KIND_GAUGE, CM_APM_KIND_HISTOGRAM, CM_APM_KIND_SUMMARY = 1, 2, 3, 4
CM_APM_OFF_MAGIC = 0
CM_APM_OFF_VERSION = 4
CM_APM_OFF_HEADER_BYTES = 6
CM_APM_OFF_FILE_BYTES = 8
CM_APM_OFF_KEY_CAP = 16
CM_APM_OFF_COLUMNS = 20
CM_APM_OFF_TEXT_CAP = 24
CM_APM_OFF_NKEYS = 28
CM_APM_OFF_TEXT_USED = 32
CM_APM_OFF_CREATED = 40
CM_APM_B_PID, CM_APM_B_START = 0, 8
CM_APM_K_TEXT_OFF, CM_APM_K_TEXT_LEN, CM_APM_K_KIND, CM_APM_K_MODE = 0, 4, 8, 9
CM_APM_C_VALUE, CM_APM_C_STAMP, CM_APM_C_PRESENT = 0, 8, 16

KEY_CAP = CM_APM_KEY_CAP
UNSLOTTED = CM_APM_UNSLOTTED
FILE_BYTES = CM_APM_FILE_BYTES
#: header: magic(4) version(2) header_bytes(2) file_bytes(8) key_cap(4) columns(4)
#:         text_cap(4) nkeys(4) text_used(4) reserved(4) created_ns(8) reserved(16)
HEADER = struct.Struct("=IHHQIIIIII q16x")
#: binder: pid(4) pad(4) start_ticks(8)
BINDER = struct.Struct("=i4xQ")
#: key record: text_off(4) text_len(4) kind(1) mode(1) pad(6)
KEY = struct.Struct("=IIBB6x")
#: cell: value(f64) stamp(f64) present(4) pad(4)
CELL = struct.Struct("=ddI4x")
assert HEADER.size == CM_APM_HEADER_BYTES and BINDER.size == CM_APM_BINDER_BYTES
assert KEY.size == CM_APM_KEY_BYTES and CELL.size == CM_APM_CELL_BYTES

#: kind byte of each prometheus_client value type
KINDS = {"counter": CM_APM_KIND_COUNTER, "gauge": CM_APM_KIND_GAUGE,
         "histogram": CM_APM_KIND_HISTOGRAM, "summary": CM_APM_KIND_SUMMARY}
KIND_NAMES = {v: k for k, v in KINDS.items()}
#: mode byte of a gauge (0 for the other kinds): prometheus_client's multiprocess_mode
GAUGE_MODES = ("", "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
               "mostrecent", "livemostrecent")


class Key:
    """A published row: its index, kind and mode names, and the decoded key JSON
    (metric name, sample name, labels dict, help)."""

    __slots__ = ("row", "kind", "mode", "text", "metric_name", "name", "labels", "help")

    def __init__(self, row: int, kind: str, mode: str, text: str):
        self.row, self.kind, self.mode, self.text = row, kind, mode, text
        self.metric_name, self.name, self.labels, self.help = json.loads(text)


def column_label(column: int) -> str:
    """The ``pid`` label value a column's gauge samples carry: the worker slot, or
    ``"unslotted"`` for the column of processes without one."""
    return "unslotted" if column == UNSLOTTED else str(column)


_membership: Any = None   # cometmp.registry.membership, imported at the first Table.open
_pid = os.getpid()        # this process's pid, kept by the fork hook below (no syscall per update)


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Table:
    """The mapped ``DIR/metrics/app`` of one data directory.

    Any thread of any process may call. The mapping is MAP_SHARED and stays valid in a
    forked child; the OFD lock's file description does not (a child shares its parent's),
    so each process opens its own for the lock (CONVENTIONS 10: ``pid`` records whose it
    is), and a child binds its own column at its first update (I53).
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap, writable: bool):
        self.path = path
        self.writable = writable
        self._mm: Any = mm
        self._ptr = ffi.from_buffer(mm) if writable else None
        self.size = len(mm)
        self._fd = fd
        self.pid = os.getpid()
        self._tlock = threading.Lock()
        self._closed = False
        #: (kind, mode, text) -> row, for the rows this process has seen
        self._rows: dict[tuple[int, int, str], int] = {}
        self._seen = 0
        #: rows of the values this process created (re-marked present when it binds)
        self._mine: set[int] = set()
        self._bound_col = -1
        self._bound_pid = 0
        self._bound_entry: object = -1   # the membership entry index the column came from
        self._ticks = 0

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, create: bool = True,
             writable: bool = True) -> "Table":
        """Map the table of data directory ``directory``, creating it (and DIR/metrics/)
        when ``create``. FormatError for another version or a damaged header,
        StorageError (DiskFull) when it cannot be created, FileNotFoundError-derived
        StorageError when it does not exist and ``create`` is false."""
        global _membership
        if _membership is None:
            from .registry import membership as _m
            _membership = _m
        root = os.path.abspath(os.fspath(directory))
        path = paths.app_metrics_file(root)
        if create:
            with contextlib.suppress(FileExistsError):
                paths.mkdir_private(root)
            paths.mkdir_private(os.path.join(root, paths.METRICS), paths.IN_ROOT)
            cls._create(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = paths.open_nofollow(path, flags, paths.IN_SUBDIR)
        except OSError as e:
            raise os_error(e, path, "open the metrics table") from e
        try:
            size = os.fstat(fd).st_size
            if size < CM_APM_FILE_BYTES:
                raise FormatError(f"metrics table {path} is {size} bytes; version "
                                  f"{CM_APM_VERSION} tables are {CM_APM_FILE_BYTES}")
            mm = mmap.mmap(fd, CM_APM_FILE_BYTES, mmap.MAP_SHARED,
                           mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        except BaseException:
            os.close(fd)
            raise
        table = cls(path, fd, mm, writable)
        rc = lib.cm_appmetrics_check(ffi.from_buffer(mm), CM_APM_FILE_BYTES)
        if rc < 0:
            msg = ffi.string(lib.cm_last_error()).decode()
            table.close()
            cls_ = CorruptRecord if rc == lib.CM_E_CORRUPT else FormatError
            raise cls_(f"metrics table {path}: {msg}")
        return table

    @staticmethod
    def _create(path: str) -> None:
        """Create the table unless it exists (paths.create_file_once, CONVENTIONS 8, I7):
        the header initialised (magic included) in a temp file reserved whole (I9),
        fsynced, linked to the name (EEXIST: another process won, its file is whole), the
        directory fsynced. Failpoints ``appmetrics.create/.write/.fallocate/.fsync/.link/
        .dir_fsync``."""
        if os.path.exists(path):
            return
        image = bytearray(CM_APM_FILE_BYTES)
        lib.cm_appmetrics_init(ffi.from_buffer(image), CM_APM_FILE_BYTES, time.time_ns())
        try:
            paths.create_file_once(path, bytes(image[:CM_APM_KEYS_OFF]), paths.IN_SUBDIR,
                                   size=CM_APM_FILE_BYTES, point="appmetrics", reserve=True)
        except OSError as e:
            raise os_error(e, path, f"create the metrics table ({CM_APM_FILE_BYTES} "
                           "bytes)") from e

    def close(self) -> None:
        """Unmap. Values created on this table raise ClosedError afterwards (a lock-free
        add/set/get in flight in another thread finishes on the still-exported mapping).
        Under the thread lock, so never under a row's creation or a column's bind, which
        use the mapping and the fd under it (L2, L4)."""
        if self.pid != os.getpid():
            # a forked child: the parent's lock may be held by a thread that does not
            # exist here
            self._tlock = threading.Lock()
        with self._tlock:
            self._closed = True
            self._ptr = None
            mm, self._mm = self._mm, None
            if mm is not None:
                with contextlib.suppress(BufferError):
                    mm.close()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _map(self) -> Any:
        """The mapping, or ClosedError once close() ran (never a TypeError on None)."""
        mm = self._mm
        if mm is None:
            raise self._closed_error()
        return mm

    def _unusable(self) -> Exception:
        """Why this process cannot update the table: closed, or opened read-only."""
        if not self._closed and not self.writable:
            return ReadOnlyError(f"metrics table {self.path} is open read-only: values "
                                 "cannot be updated through it")
        return self._closed_error()

    # -- the key lock (I51) ------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """Hold the key lock: this process's thread lock, then an OFD write lock on
        byte 0 through a file description of this process (released by the kernel if
        the holder dies, so a kill -9 mid-append never blocks the others)."""
        if self._closed:
            raise self._closed_error()
        if self.pid != os.getpid():
            self._after_fork()
        with self._tlock:
            if self._fd < 0:
                raise self._closed_error()
            lk = paths.FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, lk)
            try:
                yield
            finally:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK,
                            paths.FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 1, 0))

    def _after_fork(self) -> None:
        """In a child: own file description for the OFD lock, fresh thread lock."""
        fd = paths.open_nofollow(self.path, os.O_RDWR if self.writable else os.O_RDONLY,
                                 paths.IN_SUBDIR)
        old, self._fd = self._fd, fd
        with contextlib.suppress(OSError):
            os.close(old)
        self._tlock = threading.Lock()
        self.pid = os.getpid()

    # -- rows ------------------------------------------------------------------------
    def nkeys(self) -> int:
        n = struct.unpack_from("=I", self._map(), CM_APM_OFF_NKEYS)[0]
        if n > CM_APM_KEY_CAP:
            raise CorruptRecord(f"metrics table {self.path}: nkeys {n} at offset "
                                f"{CM_APM_OFF_NKEYS} above the cap {CM_APM_KEY_CAP}",
                                self.path, CM_APM_OFF_NKEYS)
        return n

    def key(self, row: int) -> tuple[int, int, str]:
        """(kind, mode, text) of a published row; CorruptRecord naming the offset if its
        record points outside the text written."""
        off = CM_APM_KEYS_OFF + row * CM_APM_KEY_BYTES
        mm = self._map()
        toff, tlen, kind, mode = KEY.unpack_from(mm, off)
        used = struct.unpack_from("=I", mm, CM_APM_OFF_TEXT_USED)[0]
        if toff + tlen > min(used, CM_APM_TEXT_CAP) or kind not in KIND_NAMES or \
                mode >= len(GAUGE_MODES):
            raise CorruptRecord(f"metrics table {self.path}: key record {row} at offset {off} "
                                f"(text {toff}+{tlen}, kind {kind}, mode {mode}) is invalid",
                                self.path, off)
        start = CM_APM_TEXT_OFF + toff
        try:
            text = bytes(mm[start:start + tlen]).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptRecord(f"metrics table {self.path}: key text of row {row} at "
                                f"offset {start} is not UTF-8", self.path, start) from None
        return kind, mode, text

    def _learn(self) -> None:
        """Index the rows published since the last look (caller holds _tlock or the key lock)."""
        n = self.nkeys()
        for row in range(self._seen, n):
            self._rows.setdefault(self.key(row), row)
        self._seen = max(self._seen, n)

    def row(self, kind: int, mode: int, text: str) -> int:
        """The row of key (kind, mode, text), appended if no process made it yet (I51).
        MetricsTableFull when the table has no room; nothing is written then."""
        k = (kind, mode, text)
        r = self._rows.get(k)
        if r is not None:
            return r
        raw = text.encode("utf-8")
        if not self.writable:   # a row is appended under the key lock, a write lock
            raise self._unusable()
        with self._locked():
            self._learn()
            r = self._rows.get(k)
            if r is not None:
                return r
            n = self.nkeys()
            used = struct.unpack_from("=I", self._mm, CM_APM_OFF_TEXT_USED)[0]
            if n >= CM_APM_KEY_CAP or used + len(raw) > CM_APM_TEXT_CAP:
                raise MetricsTableFull(
                    f"metrics table {self.path} is full: {n} of {CM_APM_KEY_CAP} keys, "
                    f"{used} of {CM_APM_TEXT_CAP} key-text bytes used; no room for "
                    f"{text[:120]} ({len(raw)} bytes). Use fewer label values or buckets")
            # I51: text, then the key record, then publish nkeys (release, in C)
            self._mm[CM_APM_TEXT_OFF + used:CM_APM_TEXT_OFF + used + len(raw)] = raw
            struct.pack_into("=I", self._mm, CM_APM_OFF_TEXT_USED, used + len(raw))
            KEY.pack_into(self._mm, CM_APM_KEYS_OFF + n * CM_APM_KEY_BYTES, used, len(raw),
                          kind, mode)
            lib.cm_appmetrics_publish(self._ptr, n + 1)
            self._rows[k] = n
            self._seen = n + 1
            return n

    # -- columns (I53) ---------------------------------------------------------------
    def column(self) -> int:
        """This process's column now: its registry entry (membership.entry_index), else
        UNSLOTTED; binds it at the first use after a change (a fork, a join, a promotion).
        On every update, so it reads two attributes and compares: no call, no syscall."""
        m = _membership._member
        idx = None if m is None else m.index
        if idx == self._bound_entry and self._bound_pid == _pid:
            return self._bound_col
        self._bind(UNSLOTTED if idx is None else idx)
        self._bound_entry = idx
        return self._bound_col

    def binder(self, column: int) -> tuple[int, int]:
        """(pid, start ticks) of the process that bound ``column`` last; (0, 0): never."""
        return BINDER.unpack_from(self._map(), CM_APM_BINDERS_OFF + column * CM_APM_BINDER_BYTES)

    def _bind(self, col: int) -> None:
        """Caller: column(), when this process's entry or pid changed (I53)."""
        from .registry.table import is_alive, start_ticks

        if not self.writable:   # a column is bound under the key lock, a write lock
            raise ReadOnlyError(f"metrics table {self.path} is open read-only: this process "
                                "has no column to update or read (the collector reads every "
                                "column: read_cell, bound_columns)")

        pid = os.getpid()
        if self._bound_pid != pid:
            self._ticks = start_ticks(pid)
        with self._locked():   # close() takes the same lock: the mapping stays while here
            self._learn()
            bpid, bticks = self.binder(col)
            if (bpid, bticks) != (pid, self._ticks):
                if col != UNSLOTTED and bpid and not is_alive(bpid, bticks):
                    # I53: the dead binder's gauges are not this process's
                    for (kind, _m, _t), row in self._rows.items():
                        if kind == CM_APM_KIND_GAUGE:
                            self._check(lib.cm_appmetrics_clear(self._ptr, self.size,
                                                                self.cell(row, col)))
                BINDER.pack_into(self._mm, CM_APM_BINDERS_OFF + col * CM_APM_BINDER_BYTES,
                                 pid, self._ticks)
            for row in self._mine:   # present in this column, as prometheus_client's file
                self._check(lib.cm_appmetrics_add(self._ptr, self.size, self.cell(row, col), 0.0))
            self._bound_col, self._bound_pid = col, pid

    # -- cells (I52) -----------------------------------------------------------------
    @staticmethod
    def cell(row: int, col: int) -> int:
        return CM_APM_CELLS_OFF + row * CM_APM_ROW_BYTES + col * CM_APM_CELL_BYTES

    @staticmethod
    def row_offset(row: int) -> int:
        """Byte offset of column 0 of ``row``: + column * CM_APM_CELL_BYTES is a cell."""
        return CM_APM_CELLS_OFF + row * CM_APM_ROW_BYTES

    def _check(self, rc: int) -> None:
        if rc < 0:
            raise_for(rc, path=self.path)

    def touch(self, row: int) -> None:
        """A value of ``row`` was created in this process: present in its column from now."""
        p = self._ptr
        if p is None:
            raise self._unusable()
        self._mine.add(row)
        self._check(lib.cm_appmetrics_add(p, self.size, self.cell(row, self.column()), 0.0))

    # After close() every call below raises ClosedError (L4): the pointer and mapping are
    # read into a local first, so a close() in another thread between the check and the
    # call leaves the mapping exported (its close fails with BufferError) until the call
    # returns, and it is unmapped after.
    def add(self, row: int, amount: float) -> None:
        p = self._ptr
        if p is None:
            raise self._unusable()
        self._check(lib.cm_appmetrics_add(p, self.size, self.cell(row, self.column()), amount))

    def set(self, row: int, value: float, stamp: float = 0.0) -> None:
        p = self._ptr
        if p is None:
            raise self._unusable()
        self._check(lib.cm_appmetrics_set(p, self.size, self.cell(row, self.column()),
                                          value, stamp))

    def get(self, row: int) -> float:
        return self.read_cell(row, self.column())[0]

    def read_cell(self, row: int, col: int) -> tuple[float, float, int]:
        """(value, stamp, present) of one cell, for readers."""
        mm = self._mm
        if mm is None:
            raise self._closed_error()
        try:
            return CELL.unpack_from(mm, self.cell(row, col))
        except ValueError:   # closed under us: mmap.close() succeeded (nothing exported)
            raise self._closed_error() from None

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"metrics table {self.path} is closed")

    def bound_columns(self) -> list[tuple[int, int, int]]:
        """(column, pid, start ticks) of every column some process ever bound."""
        out = []
        raw = memoryview(self._map())[CM_APM_BINDERS_OFF:
                                   CM_APM_BINDERS_OFF + CM_APM_COLUMNS * CM_APM_BINDER_BYTES]
        for col, (pid, ticks) in enumerate(BINDER.iter_unpack(raw)):
            if pid:
                out.append((col, pid, ticks))
        raw.release()
        return out

    def row_cells(self, row: int) -> memoryview:
        """The raw cells of ``row`` (CM_APM_ROW_BYTES bytes; the caller releases it)."""
        start = CM_APM_CELLS_OFF + row * CM_APM_ROW_BYTES
        return memoryview(self._map())[start:start + CM_APM_ROW_BYTES]

