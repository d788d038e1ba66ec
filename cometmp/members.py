"""Live membership of consumer groups: the shared mapped file ``DIR/consumers/members``.

Who may call: a Consumer (cometmp.consumer) through one Membership each (thread safe: a
read() and a close() in two threads serialize on its lock); ``group_members()`` from
any process, read-only. Layout (native/format.h, docs/FORMAT.md §7.1; native endian,
fixed size 69 210 112 bytes, sparse)::

    [0, 4096)    header   magic "CMMB"(4) version(2) header_bytes(2) fingerprint(8)
                          file_bytes(8) group_cap(4) member_cap(4) claim_cap(4) reserved(4)
                          next_member_id(8) created_ns(8) changes(8); lock byte at 64
    members      4096 tables (one per offsets-file group index) x 64 records x 256 bytes:
                 state(4) pid(4) group_id(8) member_id(8) joined_ns(8) seen_ns(8)
                 patterns_len(4) reserved(20) patterns(192)
    claims       65536 x 32 (one per offsets-file slot index, i.e. per (group, stream)):
                 group_id(8) owner(8) epoch(8) claimed_ns(8); owner 0 = released

How liveness works without heartbeats (I41a): a member holds an OFD write lock
(F_OFD_SETLK) on its own record's 256-byte range for its whole life, on an open file
description no other process shares (O_CLOEXEC, and a forked child closes its copy at
once, I10). The kernel drops the lock when the process dies, ``kill -9`` included, so a
record whose state is LIVE but whose range nobody locks (F_OFD_GETLK) is a dead member:
no timeout to tune, no pid reuse to guard against.

Every mutation (join, leave, claim, release, reaping a dead record) happens under an
OFD write lock on the header's lock byte (I41b), which a killed holder also releases;
a record is written with state FREE first and stored LIVE last, so a holder killed
half-way leaves at worst a FREE record or a claim owned by a dead member, which the
next holder treats as free.

Assignment (I41c): rendezvous (HRW) weights ``blake2b(member_id, stream)`` with bounded
loads (``assign``): among the streams the same live members' patterns match, each member
gets floor(n/k) or ceil(n/k), the heavier pairs first, computed identically by every
member from the same table. It is sticky: a leave moves the leaver's streams plus the
few a changed bound displaces, a join takes its share (about 1/n) and a few more, a
stream created later is placed like any other. A member *reads only streams it has
claimed* (I41d): it claims a stream when the assignment gives it to it and the claim is
released, belongs to a dead member, or is stale (another group id); it gives up a stream
the assignment no longer gives it only once nothing it delivered there is unacknowledged (Consumer._unacked), so the new owner,
resuming from the group's acked offset, never delivers what the old owner still holds.
A dead member's streams resume from the acked offset: what it read but had not acked is
redelivered.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import hashlib
import mmap
import os
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

from . import paths
from .errors import ClosedError, CorruptRecord, FormatError, MembershipError, os_errors
from .format import fingerprint as _fingerprint

# Mirrors of native/format.h, members-file section (tests/unit/test_format_constants.py
# compares every CM_MMB_* constant here with cm_format_constants()).
CM_MMB_MAGIC = 0x424D4D43  # b"CMMB"
CM_MMB_VERSION = 1
CM_MMB_HEADER_BYTES = 4096
CM_MMB_GROUP_CAP = 4096
CM_MMB_MEMBER_CAP = 64
CM_MMB_MEMBER_BYTES = 256
CM_MMB_PATTERNS_MAX = 192
CM_MMB_CLAIM_CAP = 65536
CM_MMB_CLAIM_BYTES = 32
CM_MMB_MEMBERS_OFF = CM_MMB_HEADER_BYTES
CM_MMB_TABLE_BYTES = CM_MMB_MEMBER_CAP * CM_MMB_MEMBER_BYTES
CM_MMB_CLAIMS_OFF = CM_MMB_MEMBERS_OFF + CM_MMB_GROUP_CAP * CM_MMB_TABLE_BYTES
CM_MMB_FILE_BYTES = CM_MMB_CLAIMS_OFF + CM_MMB_CLAIM_CAP * CM_MMB_CLAIM_BYTES
CM_MMB_FREE, CM_MMB_LIVE = 0, 1
CM_MMB_OFF_MAGIC, CM_MMB_OFF_VERSION, CM_MMB_OFF_HEADER_BYTES, CM_MMB_OFF_FINGERPRINT = 0, 4, 6, 8
CM_MMB_OFF_FILE_BYTES, CM_MMB_OFF_GROUP_CAP, CM_MMB_OFF_MEMBER_CAP = 16, 24, 28
CM_MMB_OFF_CLAIM_CAP, CM_MMB_OFF_NEXT_ID, CM_MMB_OFF_CREATED, CM_MMB_OFF_CHANGES = 32, 40, 48, 56
CM_MMB_OFF_LOCK = 64
CM_MMB_M_STATE, CM_MMB_M_PID, CM_MMB_M_GROUP_ID, CM_MMB_M_MEMBER_ID = 0, 4, 8, 16
CM_MMB_M_JOINED, CM_MMB_M_SEEN, CM_MMB_M_PATTERNS_LEN, CM_MMB_M_PATTERNS = 24, 32, 40, 64
CM_MMB_C_GROUP_ID, CM_MMB_C_OWNER, CM_MMB_C_EPOCH, CM_MMB_C_CLAIMED = 0, 8, 16, 24

#: header up to the lock byte: magic version header_bytes fingerprint file_bytes group_cap
#: member_cap claim_cap (reserved) next_member_id created_ns changes
HEADER = struct.Struct("=IHHQQIII4xQqQ")
#: member head: state pid group_id member_id joined_ns seen_ns patterns_len (reserved)
MEMBER = struct.Struct("=IIQQqqI20x")
#: claim: group_id owner epoch claimed_ns
CLAIM = struct.Struct("=QQQq")
_U64 = struct.Struct("=Q")
_Q = struct.Struct("=q")

#: seconds between membership refreshes inside read(), wait slices included: a join gets
#: its share and a dead member's streams move within about two periods (issue 11: 1 s)
REFRESH = 0.25


def members_path(root: str) -> str:
    return os.path.join(root, paths.CONSUMERS, paths.MEMBERS)


def fingerprint() -> int:
    """The layout fingerprint in the header (FORMAT.md §7.1): no ABI term, the file holds
    no mutex."""
    return _fingerprint(CM_MMB_VERSION, CM_MMB_HEADER_BYTES, CM_MMB_GROUP_CAP, CM_MMB_MEMBER_CAP,
                        CM_MMB_MEMBER_BYTES, CM_MMB_CLAIM_CAP, CM_MMB_CLAIM_BYTES,
                        CM_MMB_M_PATTERNS, CM_MMB_OFF_LOCK)


def header_bytes(created_ns: int, next_member_id: int = 1, changes: int = 0) -> bytes:
    """The header page of a new members file (also what tests/data/make_golden.py writes)."""
    page = bytearray(CM_MMB_HEADER_BYTES)
    HEADER.pack_into(page, 0, CM_MMB_MAGIC, CM_MMB_VERSION, CM_MMB_HEADER_BYTES, fingerprint(),
                     CM_MMB_FILE_BYTES, CM_MMB_GROUP_CAP, CM_MMB_MEMBER_CAP, CM_MMB_CLAIM_CAP,
                     next_member_id, created_ns, changes)
    return bytes(page)


def record_offset(group_index: int, k: int) -> int:
    return CM_MMB_MEMBERS_OFF + group_index * CM_MMB_TABLE_BYTES + k * CM_MMB_MEMBER_BYTES


def claim_offset(slot: int) -> int:
    return CM_MMB_CLAIMS_OFF + slot * CM_MMB_CLAIM_BYTES


def hrw_weight(member_id: int, stream: str) -> int:
    """Rendezvous weight of ``stream`` for ``member_id`` (I41c); identical in every
    process and Python version (blake2b, not hash())."""
    h = hashlib.blake2b(stream.encode("utf-8", "surrogatepass"), digest_size=8,
                        key=member_id.to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little")


def assign(streams, members: dict[int, tuple[str, ...]],
           cache: dict | None = None) -> dict[str, int]:
    """{stream: member id} for ``streams`` among ``members`` ({id: patterns}): rendezvous
    weights with bounded loads (I41c). Streams are taken by class, a class being the
    streams matched by the same set of members (its candidates); within a class of n
    streams and k candidates every (weight, member, stream) pair is visited from the
    heaviest down and a stream goes to the first member of its pairs that holds fewer
    than ceil(n / k), so each candidate holds floor(n/k) or ceil(n/k) of the class.
    Plain HRW (each stream to its heaviest member) gives 1 and 7 of 8 shards to two
    members as easily as 4 and 4 (with member ids 1 and 2 it does, and 2 members then
    drain at 8/7 the speed of one). A stream no member matches is left out.
    Deterministic: every member computes the same answer from the same table and
    listing. ``cache`` memoizes weights ({(member id, stream): weight})."""
    classes: dict[tuple[int, ...], list[str]] = {}
    for s in streams:
        cand = tuple(sorted(mid for mid, pats in members.items()
                            if any(fnmatch.fnmatchcase(s, p) for p in pats)))
        if cand:
            classes.setdefault(cand, []).append(s)

    def weight(mid: int, s: str) -> int:
        if cache is None:
            return hrw_weight(mid, s)
        w = cache.get((mid, s))
        if w is None:
            w = cache[(mid, s)] = hrw_weight(mid, s)
        return w

    out: dict[str, int] = {}
    for cand, names in classes.items():
        cap = -(-len(names) // len(cand))
        load = dict.fromkeys(cand, 0)
        for _w, mid, s in sorted(((weight(mid, s), mid, s) for s in names for mid in cand),
                                 reverse=True):
            if s not in out and load[mid] < cap:
                out[s] = mid
                load[mid] += 1
    return out


@dataclass
class MemberRecord:
    index: int              # record number in its group's table
    member_id: int
    group_id: int
    pid: int
    joined_ns: int
    seen_ns: int
    patterns: tuple[str, ...]
    live: bool = True
    claims: list[int] = field(default_factory=list)   # offsets slot indexes it holds


class MembersFile:
    """One open file description on the members file and a MAP_SHARED mapping of it.

    The description is this object's own (never shared with another Membership, closed in
    a forked child), so the record lock taken through it is this member's liveness
    (I41a). ``writable=False`` (inspection) maps read-only; a missing file then reads as
    "no members" (``mm`` is None)."""

    def __init__(self, root: str, writable: bool):
        self.path = members_path(root)
        self.fd: int | None = None
        self.mm: mmap.mmap | None = None
        if writable:
            with os_errors(os.path.dirname(self.path), "create directory"):
                paths.mkdir_private(os.path.dirname(self.path))   # I30, I31
            try:
                os.stat(self.path)
            except FileNotFoundError:
                with os_errors(self.path, "create members file"):
                    # I7: a complete, full-size file appears under its name at once
                    paths.create_file_once(self.path, header_bytes(time.time_ns()),
                                           paths.IN_SUBDIR, size=CM_MMB_FILE_BYTES,
                                           point="members")
        with os_errors(self.path, "open members file"):
            try:
                fd = paths.open_nofollow(self.path, os.O_RDWR if writable else os.O_RDONLY,
                                         paths.IN_SUBDIR)   # I30
            except FileNotFoundError:
                if writable:
                    raise
                return
        try:
            with os_errors(self.path, "map members file"):
                size = os.fstat(fd).st_size
                if size != CM_MMB_FILE_BYTES:
                    raise FormatError(f"{self.path}: members file is {size} bytes; this build "
                                      f"expects {CM_MMB_FILE_BYTES} (FORMAT.md §7.1)")
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                mm = mmap.mmap(fd, CM_MMB_FILE_BYTES, mmap.MAP_SHARED, prot)
            head = HEADER.unpack_from(mm, 0)
            want = HEADER.unpack_from(header_bytes(0), 0)
            if head[:8] != want[:8]:
                mm.close()
                raise FormatError(
                    f"{self.path}: magic 0x{head[0]:08x} version {head[1]} fingerprint "
                    f"{head[3]:x} size {head[4]} caps {head[5:8]}; this build expects "
                    f"0x{want[0]:08x} version {want[1]} fingerprint {want[3]:x} size {want[4]} "
                    f"caps {want[5:8]} (FORMAT.md §7.1)")
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.mm = fd, mm

    # ---- locks (OFD: owned by this open file description, dropped by the kernel on death)
    def _fcntl(self, cmd: int, typ: int, start: int, length: int) -> bytes:
        if self.fd is None:
            raise ClosedError(f"members file {self.path} is closed")
        with os_errors(self.path, "lock members file"):
            return fcntl.fcntl(self.fd, cmd, paths.FLOCK.pack(typ, os.SEEK_SET, start, length, 0))

    def try_lock(self, start: int, length: int) -> bool:
        try:
            self._fcntl(fcntl.F_OFD_SETLK, fcntl.F_WRLCK, start, length)
            return True
        except Exception as e:   # StorageError(EAGAIN/EACCES): another description holds it
            if getattr(e, "errno", None) in (errno.EAGAIN, errno.EACCES):
                return False
            raise

    def unlock(self, start: int, length: int) -> None:
        self._fcntl(fcntl.F_OFD_SETLK, fcntl.F_UNLCK, start, length)

    def locked_by_other(self, start: int, length: int) -> bool:
        """Whether another open file description write-locks any byte of the range."""
        if self.fd is None:
            raise ClosedError(f"members file {self.path} is closed")
        with os_errors(self.path, "lock members file"):
            return paths.ofd_write_locked(self.fd, start, length)   # I41a

    def mutating(self):
        """Context manager: the header lock byte held (I41b). Blocks while another member
        mutates (a few struct writes); a killed holder's lock is released by the kernel."""
        return _Mutating(self)

    def reserve(self, off: int, n: int) -> None:
        """I9: give the pages under [off, off+n) disk blocks before anything is stored
        there, so a full disk is DiskFull naming the file, never SIGBUS on a store into a
        hole of the sparse mapping. Caller holds the mutation lock."""
        if self.fd is None:
            raise ClosedError(f"members file {self.path} is closed")
        with os_errors(self.path, "reserve members file pages"):
            os.posix_fallocate(self.fd, off, n)

    # ---- records
    def u64(self, off: int) -> int:
        return _U64.unpack_from(self.mm, off)[0]

    def member(self, group_index: int, k: int) -> tuple:
        off = record_offset(group_index, k)
        head = MEMBER.unpack_from(self.mm, off)
        if head[0] not in (CM_MMB_FREE, CM_MMB_LIVE) or head[6] > CM_MMB_PATTERNS_MAX:
            raise CorruptRecord(f"{self.path}: member record {k} of group table {group_index}: "
                                f"state {head[0]}, patterns_len {head[6]} (at most "
                                f"{CM_MMB_PATTERNS_MAX}) (offset {off})")
        return head

    def patterns(self, group_index: int, k: int, n: int) -> tuple[str, ...]:
        off = record_offset(group_index, k) + CM_MMB_M_PATTERNS
        raw = bytes(self.mm[off:off + n]).decode("utf-8", "surrogatepass")
        return tuple(p for p in raw.split("\n") if p)

    def claim(self, slot: int) -> tuple[int, int, int, int]:
        return CLAIM.unpack_from(self.mm, claim_offset(slot))

    def bump_changes(self) -> None:
        _U64.pack_into(self.mm, CM_MMB_OFF_CHANGES, (self.u64(CM_MMB_OFF_CHANGES) + 1) & (2**64 - 1))

    def __del__(self) -> None:
        # a Consumer dropped without close(): its member record must not stay live
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        mm, self.mm = self.mm, None
        if fd is not None:
            os.close(fd)   # drops every OFD lock of this description (it is the last fd)
        if mm is not None:
            mm.close()


class _Mutating:
    def __init__(self, f: MembersFile):
        self.f = f

    def __enter__(self) -> MembersFile:
        self.f._fcntl(fcntl.F_OFD_SETLKW, fcntl.F_WRLCK, CM_MMB_OFF_LOCK, 1)   # I41b
        return self.f

    def __exit__(self, *exc) -> None:
        if self.f.fd is not None:
            self.f.unlock(CM_MMB_OFF_LOCK, 1)


#: every Membership of this process, so a forked child drops its inherited ones (I10)
_memberships: "weakref.WeakSet[Membership]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for m in list(_memberships):
        m._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Membership:
    """One Consumer's membership of its group: its record, its claims, its view of the
    other members. Joins at the first ``refresh()``; ``leave()`` releases everything.

    ``held`` maps each claimed stream to (offsets slot, claim epoch); ``leaving`` holds
    the claimed streams the assignment now gives another member (delivered-but-unacked entries keep
    them here). ``version`` changes whenever the set of streams to read changes."""

    def __init__(self, root: str, group: str):
        self.root = root
        self.group_name = group
        self.file: MembersFile | None = None
        self.group_ref = None            # offsets GroupRef (index, id) joined under
        self.k: int | None = None        # record number in the group's table
        self.member_id = 0
        self.patterns: list[str] = []
        self.held: dict[str, tuple[int, int]] = {}
        self.leaving: set[str] = set()
        self.version = 0
        self.next_refresh = 0.0
        self.live: dict[int, tuple[str, ...]] = {}
        self._weights: dict = {}
        self._owners: tuple | None = None   # ((names, live), assign() of them)
        self._slots: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        _memberships.add(self)

    # ---- lifecycle
    def _forget(self) -> None:
        """In a forked child: close the inherited description (the parent's locks stay
        with the parent, I10) and start over; the child joins anew at its first read."""
        f, self.file = self.file, None
        if f is not None:
            fd, f.fd = f.fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._reset()
        self._lock = threading.Lock()

    def _reset(self) -> None:
        self.k, self.member_id, self.group_ref = None, 0, None
        self.held.clear()
        self.leaving.clear()
        self.live = {}
        self._slots.clear()
        self.version += 1
        self.next_refresh = 0.0

    def reading(self, name: str) -> bool:
        return name in self.held and name not in self.leaving

    def _join(self, f: MembersFile, g) -> None:
        """Caller holds the mutation lock. Take a FREE record (or a dead one, or one of a
        deleted group) of ``g``'s table, lock its range (I41a), fill it, store LIVE last."""
        # I9: the whole table has blocks before it is read or written through the mapping
        # (on tmpfs even a read fault on a hole allocates, and SIGBUSes on a full disk)
        f.reserve(record_offset(g.index, 0), CM_MMB_TABLE_BYTES)
        for k in range(CM_MMB_MEMBER_CAP):
            state, _pid, gid, _mid, _j, _s, _n = f.member(g.index, k)
            off = record_offset(g.index, k)
            if state == CM_MMB_LIVE and f.locked_by_other(off, CM_MMB_MEMBER_BYTES):
                continue   # a live member (of this group, or a stale one of a deleted group)
            if not f.try_lock(off, CM_MMB_MEMBER_BYTES):
                continue   # taken by a joiner that is not through yet (cannot happen under I41b)
            mid = f.u64(CM_MMB_OFF_NEXT_ID)
            _U64.pack_into(f.mm, CM_MMB_OFF_NEXT_ID, mid + 1)   # never reused
            now = time.time_ns()
            MEMBER.pack_into(f.mm, off, CM_MMB_FREE, os.getpid(), g.id, mid, now, now, 0)
            self.k, self.member_id, self.group_ref = k, mid, g
            self._write_patterns(f)
            struct.pack_into("=I", f.mm, off + CM_MMB_M_STATE, CM_MMB_LIVE)   # I41a: LIVE last
            f.bump_changes()
            return
        raise MembershipError(
            f"{f.path}: consumer group {self.group_name!r} already has {CM_MMB_MEMBER_CAP} "
            f"live members, the most one group can have (FORMAT.md §7.1); close a member or "
            f"give this one a static assignment=(i, n)")

    def _write_patterns(self, f: MembersFile) -> None:
        raw = "\n".join(self.patterns).encode("utf-8", "surrogatepass")
        if len(raw) > CM_MMB_PATTERNS_MAX:
            raise MembershipError(
                f"{f.path}: a member of consumer group {self.group_name!r} reads patterns "
                f"{self.patterns!r}: {len(raw)} bytes joined, its record holds "
                f"{CM_MMB_PATTERNS_MAX} (FORMAT.md §7.1); read through fewer or shorter patterns")
        off = record_offset(self.group_ref.index, self.k)
        f.mm[off + CM_MMB_M_PATTERNS:off + CM_MMB_M_PATTERNS + len(raw)] = raw
        struct.pack_into("=I", f.mm, off + CM_MMB_M_PATTERNS_LEN, len(raw))

    def leave(self) -> None:
        """Release every claim, free the record, close the description. Idempotent."""
        with self._lock:
            self._closed = True
            f = self.file
            if f is None:
                return
            try:
                if self.k is not None and f.fd is not None:
                    with f.mutating():
                        self._release_all(f)
            finally:
                self.file = None
                f.close()
                self._reset()

    def _release_all(self, f: MembersFile) -> None:
        """Caller holds the mutation lock."""
        g = self.group_ref
        for _name, (slot, epoch) in self.held.items():
            if f.claim(slot)[:3] == (g.id, self.member_id, epoch):
                CLAIM.pack_into(f.mm, claim_offset(slot), g.id, 0, epoch + 1, time.time_ns())
        off = record_offset(g.index, self.k)
        # not f.member(): a leave frees its own record whatever else a damage did to it
        mid = _U64.unpack_from(f.mm, off + CM_MMB_M_MEMBER_ID)[0]
        if mid == self.member_id:
            struct.pack_into("=I", f.mm, off + CM_MMB_M_STATE, CM_MMB_FREE)
        f.bump_changes()
        f.unlock(off, CM_MMB_MEMBER_BYTES)

    # ---- the periodic step
    def due(self, now: float) -> bool:
        return now >= self.next_refresh

    def refresh(self, g, pattern: str, names: list[str], slot_of: Callable[[str], int],
                unacked: Callable[[str], bool], claimed: Callable[[str], None]) -> None:
        """Join if needed, reap dead members, claim what ``assign`` gives this member and
        is free, release what it no longer gives once ``unacked(name)`` is False.
        ``names`` are every stream matching this member's patterns (all of them, so the
        bounded loads of I41c are counted over the same streams by every member).
        ``claimed(name)`` is called for each new claim: the caller restarts that stream
        from the acked offset. Caller: Consumer.read(), at most every REFRESH seconds."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"consumer {self.group_name!r} is closed")
            f = self.file
            if f is None:
                f = self.file = MembersFile(self.root, writable=True)
            if self.k is not None and self.group_ref != g:
                # the group was deleted and claimed again elsewhere: a new member of it
                with f.mutating():
                    self._release_all(f)
                self._reset()
            with f.mutating():
                if self.k is None:
                    if pattern not in self.patterns:
                        self.patterns.append(pattern)
                    self._join(f, g)
                elif pattern not in self.patterns:
                    self.patterns.append(pattern)
                    self._write_patterns(f)
                changed = self._step(f, g, names, slot_of, unacked, claimed)
                if changed:
                    f.bump_changes()
            self.next_refresh = time.monotonic() + REFRESH

    def _step(self, f: MembersFile, g, names, slot_of, unacked, claimed) -> bool:
        """Caller holds the mutation lock (I41b)."""
        me = self.member_id
        live: dict[int, tuple[str, ...]] = {}
        mine_ok = False
        for k in range(CM_MMB_MEMBER_CAP):
            state, _pid, gid, mid, _j, _s, plen = f.member(g.index, k)
            if state != CM_MMB_LIVE:
                continue
            off = record_offset(g.index, k)
            if k == self.k:
                mine_ok = gid == g.id and mid == me
                if mine_ok:
                    live[mid] = self.patterns_tuple()
                    _Q.pack_into(f.mm, off + CM_MMB_M_SEEN, time.time_ns())
                continue
            if not f.locked_by_other(off, CM_MMB_MEMBER_BYTES):
                # I41a: LIVE but unlocked: its process is gone; reap the record
                struct.pack_into("=I", f.mm, off + CM_MMB_M_STATE, CM_MMB_FREE)
                continue
            if gid == g.id:
                live[mid] = f.patterns(g.index, k, plen)
        changed = False
        if not mine_ok:
            # this record is no longer ours (the file was replaced under us): start over
            f.unlock(record_offset(g.index, self.k), CM_MMB_MEMBER_BYTES)
            self._reset()
            self._join(f, g)
            return True
        if live.keys() != self.live.keys():
            self._weights.clear()
        self.live = live
        key = (tuple(names), tuple(sorted(live.items())))
        if self._owners is None or self._owners[0] != key:   # I41c, recomputed on change
            self._owners = (key, assign(names, live, self._weights))
        owners = self._owners[1]
        now = time.time_ns()
        for name in list(self.held):
            slot, epoch = self.held[name]
            if f.claim(slot)[:3] != (g.id, me, epoch):
                del self.held[name]          # lost (its slot was reused): never read it again
                self.leaving.discard(name)
                changed = True
                continue
            if owners.get(name) == me:
                if name in self.leaving:
                    self.leaving.discard(name)
                    changed = True
                continue
            if unacked(name):
                if name not in self.leaving:   # I41d: deliver nothing new, keep until acked
                    self.leaving.add(name)
                    changed = True
                continue
            CLAIM.pack_into(f.mm, claim_offset(slot), g.id, 0, epoch + 1, now)
            del self.held[name]
            self.leaving.discard(name)
            changed = True
        for name in names:
            if name in self.held or owners.get(name) != me:
                continue
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = slot_of(name)
                f.reserve(claim_offset(slot), CM_MMB_CLAIM_BYTES)   # I9, before the read too
            cgid, owner, epoch, _t = f.claim(slot)
            if cgid == g.id and owner != 0 and owner != me and owner in live:
                continue   # its holder still has unacked entries there (I41d)
            epoch = epoch + 1 if cgid == g.id else 1
            CLAIM.pack_into(f.mm, claim_offset(slot), g.id, me, epoch, now)
            self.held[name] = (slot, epoch)
            claimed(name)
            changed = True
        if changed:
            self.version += 1
        return changed

    def patterns_tuple(self) -> tuple[str, ...]:
        return tuple(self.patterns)

    def assigned(self) -> list[str]:
        return sorted(self.held)


# ---- inspection (any process; reads the mapping without the lock) ------------------------

def group_members(root: str) -> dict[int, list[MemberRecord]]:
    """{group id: its member records}, each with ``live`` (its lock is held: I41a) and the
    offsets slot indexes it claims. Empty if the directory has no members file."""
    f = MembersFile(root, writable=False)
    try:
        if f.mm is None:
            return {}
        return _group_members(f)
    finally:
        f.close()


def _data_ranges(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The [from, to) extents of ``fd`` holding data (SEEK_DATA/SEEK_HOLE) within
    [start, end): the tables and claims nobody ever wrote are holes and are skipped."""
    out, off = [], start
    while off < end:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:   # ENXIO: no data after off
            break
        if d >= end:
            break
        h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
        out.append((d, h))
        off = h
    return out


def _group_members(f: MembersFile) -> dict[int, list[MemberRecord]]:
    """Reads with pread, never through the mapping: a read fault on a hole of a tmpfs
    file allocates a page, which on a full disk is SIGBUS (I9); pread of a hole is zeros."""
    out: dict[int, list[MemberRecord]] = {}
    by_id: dict[int, MemberRecord] = {}
    with os_errors(f.path, "read members file"):
        tables = _data_ranges(f.fd, CM_MMB_MEMBERS_OFF, CM_MMB_CLAIMS_OFF)
        claims = _data_ranges(f.fd, CM_MMB_CLAIMS_OFF, CM_MMB_FILE_BYTES)
    seen: set[int] = set()
    for lo, hi in tables:
        for gi in range((lo - CM_MMB_MEMBERS_OFF) // CM_MMB_TABLE_BYTES,
                        (hi - 1 - CM_MMB_MEMBERS_OFF) // CM_MMB_TABLE_BYTES + 1):
            if gi in seen:
                continue
            seen.add(gi)
            base = record_offset(gi, 0)
            with os_errors(f.path, "read members file"):
                table = os.pread(f.fd, CM_MMB_TABLE_BYTES, base)
            for k in range(CM_MMB_MEMBER_CAP):
                off = k * CM_MMB_MEMBER_BYTES
                state, pid, gid, mid, joined, seen_ns, plen = MEMBER.unpack_from(table, off)
                if state == CM_MMB_FREE:
                    continue
                if state != CM_MMB_LIVE or plen > CM_MMB_PATTERNS_MAX:
                    raise CorruptRecord(
                        f"{f.path}: member record {k} of group table {gi}: state {state}, "
                        f"patterns_len {plen} (at most {CM_MMB_PATTERNS_MAX}) (offset {base + off})")
                raw = table[off + CM_MMB_M_PATTERNS:off + CM_MMB_M_PATTERNS + plen]
                pats = tuple(p for p in raw.decode("utf-8", "surrogatepass").split("\n") if p)
                live = f.locked_by_other(base + off, CM_MMB_MEMBER_BYTES)
                rec = MemberRecord(k, mid, gid, pid, joined, seen_ns, pats, live)
                out.setdefault(gid, []).append(rec)
                by_id[mid] = rec
    if by_id:
        for lo, hi in claims:
            with os_errors(f.path, "read members file"):
                buf = os.pread(f.fd, hi - lo, lo)
            first = (lo - CM_MMB_CLAIMS_OFF + CM_MMB_CLAIM_BYTES - 1) // CM_MMB_CLAIM_BYTES
            for slot in range(first, (hi - CM_MMB_CLAIMS_OFF) // CM_MMB_CLAIM_BYTES):
                gid, owner, _e, _t = CLAIM.unpack_from(buf, claim_offset(slot) - lo)
                rec = by_id.get(owner)
                if rec is not None and rec.group_id == gid:
                    rec.claims.append(slot)
    return out
