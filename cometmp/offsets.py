"""Consumer-group offsets: the shared mapped file ``DIR/consumers/offsets`` (native/offsets.c).

One file per data directory, shared by every process. Layout (native/format.h,
docs/FORMAT.md §7; native endian, fixed size, sparse)::

    [0, 4096)        header  magic "CMOF"(4) version(2) header_bytes(2) fingerprint(8)
                             file_bytes(8) group_cap(4) slot_cap(4) group_hwm(4) slot_hwm(4)
                             next_group_id(8) created_ns(8) lock_recoveries(8)
                             robust mutex(64) at 64
    groups           4096 x 2048  state(4) name_len(4) id(8) created_ns(8) active_ns(8)
                                  patterns_len(4) reserved(28) name(1024) patterns(960)
    slots            65536 x 512  state(4) group(4) group_id(8) next(8) resets(8)
                                  acked_ns(8) dropped(8) stream_len(4) reserved(12)
                                  stream(440)

A *group* is claimed atomically (under the file's robust mutex, I12) the first time a
Consumer of that name reads; it records the fnmatch patterns it reads so that retention
protects matching streams even before the group has a slot there. A *slot* holds one
(group, stream) offset: ``next`` is the first entry not acknowledged (``None`` before the
first ack: the group then protects the whole stream). Acks are lock-free and only move
``next`` forward (I13). Crash safety: a record becomes visible only when its ``state``
word is stored last; a process killed inside the mutex is repaired by the next locker.

Not derived data: unlike indexes and state pages the file is never rebuilt; a file with
another magic, version or fingerprint raises FormatError.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Iterator, NoReturn

from . import paths
from ._ffi import check, ffi, lib
from .errors import ClosedError, CorruptRecord, os_errors

# Mirrors of native/format.h, offsets-file section (tests/unit/test_format_constants.py
# compares every CM_OFS_* constant here with cm_format_constants()).
CM_OFS_MAGIC = 0x464F4D43  # b"CMOF"
CM_OFS_VERSION = 1
CM_OFS_HEADER_BYTES = 4096
CM_OFS_GROUP_BYTES = 2048
CM_OFS_GROUP_CAP = 4096
CM_OFS_SLOT_BYTES = 512
CM_OFS_SLOT_CAP = 65536
CM_OFS_GROUPS_OFF = CM_OFS_HEADER_BYTES
CM_OFS_SLOTS_OFF = CM_OFS_GROUPS_OFF + CM_OFS_GROUP_CAP * CM_OFS_GROUP_BYTES
CM_OFS_FILE_BYTES = CM_OFS_SLOTS_OFF + CM_OFS_SLOT_CAP * CM_OFS_SLOT_BYTES
CM_OFS_NAME_MAX = 1024
CM_OFS_PATTERNS_MAX = 960
CM_OFS_STREAM_MAX = 440
CM_OFS_UNSET = (1 << 64) - 1
CM_OFS_FREE, CM_OFS_LIVE, CM_OFS_DELETING = 0, 1, 2
CM_OFS_OFF_MAGIC, CM_OFS_OFF_VERSION, CM_OFS_OFF_HEADER_BYTES, CM_OFS_OFF_FINGERPRINT = 0, 4, 6, 8
CM_OFS_OFF_FILE_BYTES, CM_OFS_OFF_GROUP_CAP, CM_OFS_OFF_SLOT_CAP = 16, 24, 28
CM_OFS_OFF_GROUP_HWM = 32
CM_OFS_OFF_SLOT_HWM = 36
CM_OFS_OFF_NEXT_GROUP_ID, CM_OFS_OFF_CREATED, CM_OFS_OFF_LOCK_RECOVERIES = 40, 48, 56
CM_OFS_OFF_LOCK = 64
CM_OFS_G_STATE, CM_OFS_G_NAME_LEN, CM_OFS_G_ID, CM_OFS_G_CREATED = 0, 4, 8, 16
CM_OFS_G_ACTIVE, CM_OFS_G_PATTERNS_LEN, CM_OFS_G_NAME, CM_OFS_G_PATTERNS = 24, 32, 64, 1088
CM_OFS_S_STATE, CM_OFS_S_GROUP, CM_OFS_S_GROUP_ID, CM_OFS_S_NEXT = 0, 4, 8, 16
CM_OFS_S_RESETS, CM_OFS_S_ACKED, CM_OFS_S_DROPPED = 24, 32, 40
CM_OFS_S_STREAM_LEN, CM_OFS_S_STREAM = 48, 64

#: header up to the lock: magic version header_bytes fingerprint file_bytes group_cap slot_cap
#: group_hwm slot_hwm next_group_id created_ns lock_recoveries
HEADER = struct.Struct("=IHHQQIIIIQqQ")
_GROUP_HEAD = struct.Struct("=IIQqqI")    # state name_len id created active patterns_len
_SLOT_HEAD = struct.Struct("=IIQQQqQI")   # state group group_id next resets acked dropped len
_GROUP_LIVE = struct.Struct("=IIQ")       # state name_len id
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


def offsets_path(root: str) -> str:
    return os.path.join(root, paths.CONSUMERS, paths.OFFSETS)


def validate_group_name(name: object) -> bytes:
    """The UTF-8 bytes of a valid group name (1..1024 bytes, no NUL, no newline: FORMAT.md
    §7, checked by cm_group_name_check); else BadGroupName."""
    from .errors import BadGroupName

    if not isinstance(name, str):
        raise BadGroupName(f"consumer group name must be str, not {type(name).__name__}")
    raw = name.encode("utf-8", "surrogatepass")
    if lib.cm_group_name_check(raw, len(raw)) != 0:   # the one rule: native/names.c
        raise BadGroupName(
            f"consumer group name {name[:40]!r} must be 1..{CM_OFS_NAME_MAX} UTF-8 bytes "
            "without NUL or newline")
    return raw


@dataclass(frozen=True)
class GroupRef:
    """A claimed group record: its index in the table and its never-reused id."""

    index: int
    id: int


@dataclass
class SlotInfo:
    stream: str
    next: int | None          # first entry not acknowledged; None before the first ack
    resets: int
    acked_ns: int
    dropped: int              # unacknowledged entries the hard cap deleted
    index: int = -1


@dataclass
class GroupInfo:
    """One consumer group as stored in the offsets file (see Client.consumer_groups)."""

    name: str
    id: int
    created_ns: int
    active_ns: int
    patterns: list[str]
    slots: dict[str, SlotInfo] = field(default_factory=dict)
    index: int = -1

    def protects(self, stream: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(stream, p) for p in self.patterns)


class OffsetStore:
    """Handle on the offsets file of one data directory. Thread safe (the C calls are
    atomic or take the file's mutex; cffi releases the GIL while they wait).

    ``writable=False`` maps the file read-only (a readonly Client); a missing file then
    reads as "no groups". Fork-safe: the mapping is MAP_SHARED and holds no fd.

    Handle lifetime (docs/ARCHITECTURE.md §11): ``_h`` owns a reference to the C handle
    (L3), whose ``close()`` waits for C calls in flight and fails later ones with
    ClosedError; Python-side reads go through ``_buf``, a Python mmap of the same file,
    which a close in another thread turns into ClosedError, never into unmapped bytes.
    """

    def __init__(self, root: str, writable: bool):
        self.path = offsets_path(root)
        self.writable = writable
        self._h = None
        self._buf = None
        if writable:
            with os_errors(os.path.dirname(self.path), "create directory"):
                paths.mkdir_private(os.path.dirname(self.path))   # I30, I31
        out = ffi.new("cm_offsets **")
        rc = lib.cm_offsets_open(self.path.encode(), 1 if writable else 0, out)
        if rc == lib.CM_E_NOTFOUND and not writable:
            return
        check(rc, self.path)
        self._h = ffi.gc(out[0], lib.cm_offsets_unref)   # L3
        with os_errors(self.path, "map offsets file"):
            fd = paths.open_nofollow(self.path, os.O_RDWR if writable else os.O_RDONLY,
                                     paths.IN_SUBDIR)   # I30
            try:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                self._buf = mmap.mmap(fd, CM_OFS_FILE_BYTES, mmap.MAP_SHARED, prot)
            finally:
                os.close(fd)

    def _unpack(self, fmt: struct.Struct, off: int) -> tuple:
        try:
            return fmt.unpack_from(self._buf, off)
        except (TypeError, ValueError):   # closed by another thread
            raise ClosedError(f"offsets file {self.path} is closed") from None

    @property
    def exists(self) -> bool:
        return self._h is not None

    # ---- groups -------------------------------------------------------------------------
    def group(self, name: str, create: bool) -> GroupRef | None:
        raw = validate_group_name(name)
        if self._h is None:
            return None
        idx = ffi.new("uint32_t *")
        gid = ffi.new("uint64_t *")
        rc = lib.cm_offsets_group(self._h, raw, len(raw), 1 if create and self.writable else 0,
                                  time.time_ns(), idx, gid)
        if rc == lib.CM_E_NOTFOUND:
            return None
        check(rc, self.path)
        return GroupRef(int(idx[0]), int(gid[0]))

    def group_live(self, g: GroupRef) -> bool:
        if self._buf is None:
            return False
        off = CM_OFS_GROUPS_OFF + g.index * CM_OFS_GROUP_BYTES
        state, _n, gid = self._unpack(_GROUP_LIVE, off)
        return state == CM_OFS_LIVE and gid == g.id

    def add_pattern(self, g: GroupRef, pattern: str) -> None:
        raw = pattern.encode()
        check(lib.cm_offsets_add_pattern(self._h, g.index, g.id, raw, len(raw)), self.path)

    def touch(self, g: GroupRef) -> None:
        if self.writable:
            check(lib.cm_offsets_touch(self._h, g.index, g.id, time.time_ns()), self.path)

    def delete_group(self, g: GroupRef) -> None:
        check(lib.cm_offsets_delete_group(self._h, g.index, g.id), self.path)

    # ---- slots --------------------------------------------------------------------------
    def slot(self, g: GroupRef, stream: str, create: bool) -> int | None:
        if self._h is None:
            return None
        raw = stream.encode()
        idx = ffi.new("uint32_t *")
        rc = lib.cm_offsets_slot(self._h, g.index, g.id, raw, len(raw),
                                 1 if create and self.writable else 0, idx)
        if rc == lib.CM_E_NOTFOUND and not create:
            return None
        check(rc, self.path)
        return int(idx[0])

    def next(self, slot: int) -> int | None:
        v = self._unpack(_U64, CM_OFS_SLOTS_OFF + slot * CM_OFS_SLOT_BYTES + CM_OFS_S_NEXT)[0]
        return None if v == CM_OFS_UNSET else v

    def resets(self, slot: int) -> int:
        return self._unpack(_U64, CM_OFS_SLOTS_OFF + slot * CM_OFS_SLOT_BYTES + CM_OFS_S_RESETS)[0]

    def ack(self, g: GroupRef, slot: int, next_entry: int) -> bool:
        """Cumulative ack: every entry below ``next_entry`` is processed. Never moves back."""
        return check(lib.cm_offsets_ack(self._h, slot, g.id, next_entry, time.time_ns()), self.path) == 1

    def set(self, g: GroupRef, slot: int, next_entry: int) -> None:
        """Move the offset anywhere (reset_offset); consumers elsewhere notice ``resets``."""
        check(lib.cm_offsets_set(self._h, slot, g.id, next_entry, time.time_ns()), self.path)

    def add_dropped(self, g: GroupRef, slot: int, n: int) -> None:
        lib.cm_offsets_add_dropped(self._h, slot, g.id, n)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's mutex: no group or slot is claimed, reset or deleted meanwhile
        (retention decides under it, I14). Acks still proceed; they only move forward."""
        check(lib.cm_offsets_lock(self._h), self.path)
        try:
            yield
        finally:
            lib.cm_offsets_unlock(self._h)

    # ---- inspection (reads the mapping; no lock) ----------------------------------------
    def groups(self) -> list[GroupInfo]:
        """Every live group with its slots, in table order."""
        try:
            return self._groups()
        except ValueError:   # the mapping was closed by another thread mid-walk
            raise ClosedError(f"offsets file {self.path} is closed") from None

    def _groups(self) -> list[GroupInfo]:
        if self._h is None:
            return []
        buf = self._buf
        if buf is None or buf.closed:
            raise ClosedError(f"offsets file {self.path} is closed")
        ghwm = min(_U32.unpack_from(buf, CM_OFS_OFF_GROUP_HWM)[0], CM_OFS_GROUP_CAP)
        shwm = min(_U32.unpack_from(buf, CM_OFS_OFF_SLOT_HWM)[0], CM_OFS_SLOT_CAP)
        groups: dict[int, GroupInfo] = {}
        for i in range(ghwm):
            off = CM_OFS_GROUPS_OFF + i * CM_OFS_GROUP_BYTES
            state, nlen, gid, created, active, plen = _GROUP_HEAD.unpack_from(buf, off)
            if state != CM_OFS_LIVE:
                continue
            # I26: counts read from the file are checked before use. A live group that
            # cannot be read is an error, never skipped: retention would then not see
            # what the group protects.
            if not 0 < nlen <= CM_OFS_NAME_MAX:
                self._corrupt(off + CM_OFS_G_NAME_LEN, f"group record {i}: name_len {nlen} "
                              f"outside 1..{CM_OFS_NAME_MAX}")
            if plen > CM_OFS_PATTERNS_MAX:
                self._corrupt(off + CM_OFS_G_PATTERNS_LEN, f"group record {i}: patterns_len "
                              f"{plen} exceeds {CM_OFS_PATTERNS_MAX}")
            name = bytes(buf[off + CM_OFS_G_NAME: off + CM_OFS_G_NAME + nlen]).decode("utf-8", "replace")
            pats = bytes(buf[off + CM_OFS_G_PATTERNS: off + CM_OFS_G_PATTERNS + plen]).decode("utf-8", "replace")
            groups[gid] = GroupInfo(name, gid, created, active, [p for p in pats.split("\n") if p], index=i)
        for i in range(shwm):
            off = CM_OFS_SLOTS_OFF + i * CM_OFS_SLOT_BYTES
            state, _g, gid, nxt, resets, acked, dropped, slen = _SLOT_HEAD.unpack_from(buf, off)
            if state != CM_OFS_LIVE or gid not in groups:
                continue
            if not 0 < slen <= CM_OFS_STREAM_MAX:
                self._corrupt(off + CM_OFS_S_STREAM_LEN, f"offset slot {i}: stream_len {slen} "
                              f"outside 1..{CM_OFS_STREAM_MAX}")
            try:
                stream = bytes(buf[off + CM_OFS_S_STREAM: off + CM_OFS_S_STREAM + slen]).decode()
            except UnicodeDecodeError:
                self._corrupt(off + CM_OFS_S_STREAM, f"offset slot {i}: stream name is not UTF-8")
            groups[gid].slots[stream] = SlotInfo(stream, None if nxt == CM_OFS_UNSET else nxt,
                                                 resets, acked, dropped, index=i)
        return list(groups.values())

    def _corrupt(self, off: int, what: str) -> NoReturn:
        raise CorruptRecord(f"{self.path}: {what} (offset {off})")

    def close(self) -> None:
        """Idempotent, any thread. The C handle stays referenced (``_h``) so a
        ``locked()`` block in flight can still unlock; its memory goes with this object."""
        if self._h is not None:
            lib.cm_offsets_close(self._h)
            buf, self._buf = self._buf, None
            if buf is not None:
                buf.close()
