"""The worker registry's shared-memory table: one POSIX shm object per data directory.

Used by every process of a prefork pool: workers through cometmp.registry.membership,
the master through cometmp.supervisor, ``cometmp status`` read-only. The layout is in
native/format.h (docs/FORMAT.md §8; this module mirrors its constants), the membership
lock in native/registry.c; this module reads and writes the 64-byte entries.

Design (docs/ARCHITECTURE.md "Registry", "Slot states", "Shard ownership")
--------------------------------------------------------------------------
One registry per data directory, named ``/cometmp-<blake2b(st_dev:st_ino, key=secret)>``
(shm_name; the secret is DIR/registry.key, cometmp/registry/key.py) so two directories
never collide, one directory always finds the same object, and no other user can
compute the name to create it first (I33a). The layout is in native/format.h, the membership lock in native/registry.c;
this module reads and writes the 64-byte entries.

``entries[0 .. processCount-1]`` are the *slots*: the entry at index ``p`` is
processID ``p`` and owns the shards ``s`` with ``s % processCount == p`` of
every family. A LIVE entry at an index ``>= processCount`` is a *waiting*
worker (HUP overlap, USR2's second master, a surplus after TTOU): it owns
nothing and is promoted into the first slot that empties. A slot is::

    FREE ----join()/promote()----> LIVE ----leave()/child_exited()/sweep()----> VACANT
     ^                                                                            |
     +---------------------- sweep(): vacant for >= 1 s (reclaim) ----------------+
                             (join()/promote() may also take a VACANT slot: replacement)

The shards of a VACANT slot wait (<= 1 s) for the replacement; the shards of a
FREE slot are adopted by the LIVE slots (owner = live[(shard // N) % len(live)])
so every shard has exactly one owner once the table is settled.

Every change happens under the robust membership mutex and bumps ``epoch``
(I22). An appender caches its route with the epoch it was computed at and
recomputes it before routing when the epoch moved (the epoch watch), so a
worker that lost ownership notices at its next append. Correctness never
depends on the route: every shard has its own robust writer lock (I5).

Invariants: I20 the membership lock is a robust process-shared mutex and a
holder that died inside it is repaired by the next locker (_repair_locked);
I21 an entry is alive only if its pid exists and its /proc start time matches;
I22 any change of the ownership function bumps epoch, after the slot stores;
I23 at most one LIVE entry per (pid, start time), at most one holder per slot;
I24 the registry's size is fixed: worker churn reuses entries, never adds;
I33 an object is used only if its owner is this process's euid or the data directory's
owner and it grants nothing to group or others (check_trusted);
I33a the name is keyed with a secret only the directory's owner can read (shm_name).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import signal
import struct
import threading
import time
from typing import Iterator

import posix_ipc

from .key import ForeignRegistry, key_path, load_key, read_key, stat_mode
from .. import failpoint
from .._ffi import ffi, last_error, lib
from ..errors import CometError, FormatError, RegistryError, UnsupportedFilesystem, os_error
from ..paths import pid_alive, user_name

log = logging.getLogger("cometmp")

ENV_DIR = "COMETMP_DIR"
ENV_FAILPOINTS = "COMETMP_FAILPOINTS"
SHM_PREFIX = "/cometmp-"
#: where Linux (glibc shm_open) keeps POSIX shm objects: name "/x" is SHM_DIR + "/x"
SHM_DIR = "/dev/shm"

#: A slot whose worker is gone and not replaced within this many seconds is reclaimed.
RECLAIM_GRACE = 1.0
LOCK_TIMEOUT_MS = 5000
#: Member thread period: heartbeat, epoch check, dead-worker sweep.
MEMBER_PERIOD = 0.2


# ---- layout: mirrors native/format.h (docs/FORMAT.md §8); tests/unit/test_format_constants.py
# compares every CM_REG* constant here with cm_format_constants(). Native endian, 16 640 bytes.
CM_REG_MAGIC = 0x47524D43  # b"CMRG"
CM_REG_VERSION = 1
CM_REG_MASTERS = 8
CM_REG_MAX_ENTRIES = 256
CM_REG_HEADER_BYTES = 256
CM_REG_FREE, CM_REG_LIVE, CM_REG_VACANT = 0, 1, 2
CM_REG_OFF_MAGIC = 0
CM_REG_OFF_VERSION = 4
CM_REG_OFF_HEADER_BYTES = 6
CM_REG_OFF_FINGERPRINT = 8
CM_REG_OFF_SIZE = 16
CM_REG_OFF_MAX_ENTRIES = 20
CM_REG_OFF_CREATED = 24
CM_REG_OFF_UNLINKED = 32
CM_REG_OFF_PROCESS_COUNT = 36
CM_REG_OFF_EPOCH = 40
CM_REG_OFF_OWNER_UID = 48
CM_REG_OFF_OWNER_GID = 52
CM_REG_OFF_LOCK = 64
CM_REG_OFF_MASTERS = 128
CM_REG_MASTER_BYTES = 16
CM_REG_OFF_ENTRIES = CM_REG_OFF_MASTERS + CM_REG_MASTERS * CM_REG_MASTER_BYTES
CM_REG_ENTRY_BYTES = 64
CM_REG_BYTES = CM_REG_OFF_ENTRIES + CM_REG_MAX_ENTRIES * CM_REG_ENTRY_BYTES
CM_REGM_OFF_PID, CM_REGM_OFF_START = 0, 8
CM_REGE_OFF_PID, CM_REGE_OFF_STATE, CM_REGE_OFF_START, CM_REGE_OFF_EPOCH = 0, 4, 8, 16
CM_REGE_OFF_HEARTBEAT, CM_REGE_OFF_VACATED, CM_REGE_OFF_KEY = 24, 32, 40
CM_REGE_OFF_LAST_PID, CM_REGE_OFF_FLAGS = 48, 52

FREE, LIVE, VACANT = CM_REG_FREE, CM_REG_LIVE, CM_REG_VACANT
STATE_NAMES = {FREE: "free", LIVE: "live", VACANT: "vacant"}
MAX_ENTRIES = CM_REG_MAX_ENTRIES
MAX_PROCESS_COUNT = MAX_ENTRIES // 2  # room for a whole second generation of waiting workers
REG_BYTES = CM_REG_BYTES
#: header: magic(4) version(2) header_bytes(2) fingerprint(8) size(4) max_entries(4)
#:         created_ns(8) unlinked(4) process_count(4) epoch(8) owner_uid(4) owner_gid(4)
HEADER = struct.Struct("=IHHQIIqIIQII")
#: entry: pid(4) state(4) start_ticks(8) epoch(8) heartbeat_ns(8) vacated_ns(8) key(8)
#:        last_pid(4) flags(4) pad(8) = 64, native endian
ENTRY = struct.Struct("=iIQQqqqiI8x")
MASTER = struct.Struct("=i4xQ")
assert ENTRY.size == CM_REG_ENTRY_BYTES and MASTER.size == CM_REG_MASTER_BYTES
assert HEADER.size == CM_REG_OFF_OWNER_GID + 4
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

#: statfs f_type of filesystems where shared mappings and robust futexes are unreliable
UNSUPPORTED_FS = {
    0x6969: "nfs", 0x517B: "smb", 0xFF534D42: "cifs", 0xFE534D42: "smb2",
    0x65735546: "fuse", 0x00C36400: "ceph", 0x5346414F: "afs", 0x73757245: "coda",
    0x01021997: "9p", 0x564C: "ncp", 0x0BD00BD0: "lustre", 0x01161970: "gfs2",
    0x7461636F: "ocfs2", 0x47504653: "gpfs", 0x013111A8: "ibrix", 0x19830326: "fhgfs",
}



# ---- process identity (I21) ---------------------------------------------------------

def start_ticks(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), or 0
    if the process does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return 0
    return int(rest[19])


def is_alive(pid: int, ticks: int) -> bool:
    """I21: alive means the pid exists *and* started at ``ticks``; pid reuse never revives."""
    return pid > 0 and ticks != 0 and start_ticks(pid) == ticks


# ---- naming and filesystem checks ---------------------------------------------------

def shm_name(directory: str | os.PathLike, create: bool = False) -> str:
    """The registry's POSIX shm name for ``directory``: ``/cometmp-`` + the 32-hex-digit
    blake2b-128 of ``"st_dev:st_ino"`` keyed with the directory's secret (I33a,
    cometmp/registry/key.py; FORMAT.md §8). The one function that names a registry.

    ``create``: make the key file if the directory has none (a process about to create the
    registry). Without it, a directory with no key raises RegistryError ("no registry"):
    no registry can exist under a name nobody could compute. A damaged, foreign or
    unreadable key raises FormatError, ForeignRegistry or StorageError naming the file."""
    path = os.path.abspath(os.fspath(directory))
    st = os.stat(path)
    secret = load_key(path, create)
    if secret is None:
        raise RegistryError(f"no registry for {path}: it has no registry key "
                            f"{key_path(path)} yet (made when a server first starts)")
    h = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), key=secret,
                        digest_size=16).hexdigest()
    return SHM_PREFIX + h


def check_trusted(directory: str, name: str, st: os.stat_result) -> None:
    """I33: use the shm object ``name`` (stat ``st``) only if its owner is this process's
    effective user or the data directory's owner (a root master creates it for workers
    that run as the directory's owner and fchowns it to them), and its mode grants
    nothing to group or others. Defence in depth behind I33a: anyone who learnt the key
    (a leaked copy, a wider mode in an old backup) could have pre-created the name to
    read or steer the table."""
    me = os.geteuid()
    owner = os.stat(directory).st_uid
    if st.st_uid in (me, owner) and not st.st_mode & 0o077:
        return
    raise ForeignRegistry(
        f"registry {name} of {directory} is owned by {user_name(st.st_uid)} with mode "
        f"{stat_mode(st)}; this process runs as {user_name(me)} and the directory belongs to "
        f"{user_name(owner)}, so it was not used (I33: only an object of this user or of the "
        f"directory's owner, mode 0600, is trusted; someone who knew the directory's registry "
        f"key may have pre-created the name). Remove /dev/shm/{name.lstrip('/')} as its owner or root; a master that "
        f"drops its workers' privileges creates it for their user (Supervisor(uid=...))")


def check_filesystem(directory: str | os.PathLike) -> None:
    """Raise UnsupportedFilesystem if ``directory`` is on NFS, FUSE or another network
    filesystem, where shared mappings and robust locks are not coherent across hosts."""
    path = os.fspath(directory)
    t = _fs_type(path)
    name = UNSUPPORTED_FS.get(t)
    if name is not None:
        raise UnsupportedFilesystem(
            f"{path} is on {name} (statfs f_type {int(t):#x}); cometmp needs a local filesystem "
            "because it shares mappings and robust locks between processes")


def _fs_type(path: str) -> int:
    """statfs(2) f_type of ``path`` (a seam for tests)."""
    from .._ffi import check

    return int(check(lib.cm_fs_type(os.fsencode(path))))


def _failpoint(name: str) -> None:
    """Test-only crash points: COMETMP_FAILPOINTS="registry.after_lock,..." kills the process."""
    points = os.environ.get(ENV_FAILPOINTS)
    if points and name in points.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- the shared mapping -------------------------------------------------------------

class Entry:
    """A decoded registry entry (a snapshot; writing goes through Registry)."""

    __slots__ = ("index", "pid", "state", "start", "epoch", "heartbeat_ns", "vacated_ns",
                 "key", "last_pid", "flags")

    def __init__(self, index: int, raw: tuple):
        self.index = index
        (self.pid, self.state, self.start, self.epoch, self.heartbeat_ns, self.vacated_ns,
         self.key, self.last_pid, self.flags) = raw

    def alive(self) -> bool:
        return self.state == LIVE and is_alive(self.pid, self.start)

    def __repr__(self) -> str:
        return (f"Entry({self.index}, pid={self.pid}, {STATE_NAMES.get(self.state, self.state)}, "
                f"epoch={self.epoch}, key={self.key})")


class Snapshot:
    """A consistent copy of the table: process count, epoch and entries."""

    def __init__(self, process_count: int, epoch: int, entries: list[Entry]):
        self.process_count = process_count
        self.epoch = epoch
        self.entries = entries

    def index_of(self, pid: int, start: int) -> int | None:
        for e in self.entries:
            if e.state == LIVE and e.pid == pid and e.start == start:
                return e.index
        return None

    def owners(self, shards: int) -> list[int]:
        """Slot index owning each shard of a family of ``shards`` (-1: none, a VACANT
        slot's shards waiting for its replacement). The shard-ownership function."""
        n = self.process_count
        slots = self.entries[:n]
        live = [e.index for e in slots if e.state == LIVE]
        out = []
        for s in range(shards):
            e = slots[s % n]
            if e.state == LIVE:
                out.append(e.index)
            elif e.state == VACANT or not live:
                out.append(-1)
            else:  # FREE: reclaimed, adopted by the live slots
                out.append(live[(s // n) % len(live)])
        return out

    def owned(self, index: int | None, shards: int) -> list[int]:
        if index is None or index >= self.process_count:
            return []
        return [s for s, o in enumerate(self.owners(shards)) if o == index]


class Registry:
    """The registry of one data directory, mapped in this process.

    Not fork-shared in the sense of CONVENTIONS 10: the mapping stays valid in a child
    (MAP_SHARED), and the lock is process-shared, so a child may use it; identity
    (pid, start time) is always read fresh, never cached across fork.
    """

    def __init__(self, directory: str, name: str, mm: mmap.mmap, created: bool, inode: int):
        self.directory = directory
        self.name = name
        self._mm = mm
        self._ptr = ffi.from_buffer(mm)
        self.created = created
        self.inode = inode
        #: where the shared uint64 ownership epoch lives, for Appender.set_epoch_watch:
        #: the mapping (an appender holds a buffer export of it) and the byte offset
        self.epoch_source = (mm, CM_REG_OFF_EPOCH)

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def _map(cls, directory: str, name: str, shm: "posix_ipc.SharedMemory",
             created: bool) -> "Registry":
        try:
            st = os.fstat(shm.fd)
            if created:
                # I9: /dev/shm is a tmpfs; a store into an unreserved page of a full one
                # is SIGBUS, so reserve the whole object before anything is written
                try:
                    os.posix_fallocate(shm.fd, 0, REG_BYTES)
                except OSError as e:
                    with contextlib.suppress(posix_ipc.ExistentialError):
                        shm.unlink()             # nothing was published in it yet
                    raise os_error(e, "/dev/shm" + name, f"reserve {REG_BYTES} bytes of "
                                   f"the registry of {directory} in") from e   # E1
            mm = mmap.mmap(shm.fd, REG_BYTES)
        finally:
            shm.close_fd()
        return cls(directory, name, mm, created, st.st_ino)

    @classmethod
    def attach(cls, directory: str | os.PathLike, wait: float = 1.0) -> "Registry":
        """Map the existing registry of ``directory``. RegistryError if there is none,
        FormatError (naming both versions) if another build created it."""
        directory = os.path.abspath(os.fspath(directory))
        name = shm_name(directory)
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError:
            raise RegistryError(f"no registry for {directory} ({name} in /dev/shm); "
                                "start the server's supervisor first") from None
        except posix_ipc.PermissionsError as e:
            try:
                check_trusted(directory, name, os.stat("/dev/shm/" + name.lstrip("/")))
            except FileNotFoundError:
                pass
            raise RegistryError(f"registry {name} of {directory}: {e}") from None
        try:
            check_trusted(directory, name, os.fstat(shm.fd))   # I33, before any byte is read
        except BaseException:
            shm.close_fd()
            raise
        if shm.size < 64:
            shm.close_fd()
            raise RegistryError(f"registry {name} of {directory} is being created")
        if shm.size < REG_BYTES:
            shm.close_fd()
            raise FormatError(f"registry {name} of {directory} is {shm.size} bytes; this build "
                              f"uses {REG_BYTES} (version {CM_REG_VERSION})")
        reg = cls._map(directory, name, shm, False)
        deadline = time.monotonic() + wait
        while True:
            rc = lib.cm_registry_check(reg._ptr, REG_BYTES)
            if rc == 0:
                return reg
            if rc != lib.CM_E_NOTFOUND or time.monotonic() >= deadline:
                msg = ffi.string(lib.cm_last_error()).decode()
                reg.close()
                if rc == lib.CM_E_NOTFOUND:
                    raise RegistryError(f"registry {name} of {directory} was never initialised")
                raise FormatError(f"registry {name} of {directory}: {msg}")
            time.sleep(0.005)

    @classmethod
    def create(cls, directory: str | os.PathLike, process_count: int, uid: int | None = None,
               gid: int | None = None) -> "Registry":
        """Create a fresh registry (O_EXCL). Owned by uid/gid when given, so workers that
        dropped privileges (gunicorn --user, uWSGI --uid) can map it."""
        directory = os.path.abspath(os.fspath(directory))
        _check_count(process_count)
        name = shm_name(directory, create=True)   # I33a: the first creator makes the key
        _remove_dead_drafts(name)
        # I24a: built and initialised under a private draft name, then linked into place,
        # so the directory's name only ever shows a whole registry: a creator killed half
        # way leaves a draft nobody waits for, never an uninitialised object that joiners
        # (each holding it mapped while they wait) would keep "in use" between them
        draft = f"{name}.{os.getpid()}.{threading.get_ident()}.draft"
        shm = posix_ipc.SharedMemory(draft, posix_ipc.O_CREX, mode=0o600, size=REG_BYTES)
        try:
            try:
                if (uid is not None and uid != os.geteuid()) or \
                        (gid is not None and gid != os.getegid()):
                    os.fchown(shm.fd, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError:
                shm.close_fd()
                raise
            reg = cls._map(directory, draft, shm, True)
            from .._ffi import check
            check(lib.cm_registry_init(reg._ptr, REG_BYTES, process_count))
            reg._put_u32(CM_REG_OFF_OWNER_UID, os.geteuid() if uid is None else uid)
            reg._put_u32(CM_REG_OFF_OWNER_GID, os.getegid() if gid is None else gid)
            try:
                failpoint.fail("registry.publish", SHM_DIR + name)   # as the link failing
                os.link(SHM_DIR + draft, SHM_DIR + name)   # EEXIST: another creator won
            except FileExistsError:
                reg.close()
                raise posix_ipc.ExistentialError(f"registry {name} exists") from None
            except OSError as e:
                reg.close()
                raise os_error(e, SHM_DIR + name, f"publish the registry of {directory} "
                               "as") from e
        finally:
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(draft)
        reg.name = name
        return reg

    def close(self) -> None:
        if self._mm is not None:
            self._ptr = None
            try:
                self._mm.close()
            except BufferError:  # a cffi buffer still refers to it; let GC unmap
                pass
            self._mm = None

    def same_object(self) -> bool:
        """True if the name still refers to the object this process mapped."""
        try:
            shm = posix_ipc.SharedMemory(self.name)
        except posix_ipc.Error:
            return False
        try:
            return os.fstat(shm.fd).st_ino == self.inode
        finally:
            shm.close_fd()

    def replaced(self) -> bool:
        """True if ``/dev/shm/<name>`` is no longer the object this process mapped: it was
        removed (an admin, systemd-tmpfiles, a test's cleanup) or removed and created
        again; or the directory's name is no longer ``self.name`` (I33a): its registry key
        was removed, replaced or damaged. The key is identified by its secret, through
        shm_name, never by its inode: a new key file often gets the inode of the one just
        removed (ext4 reuses freed inodes at once), and a stat taken apart from the read
        the name came from could belong to another key. One read of the key and one
        stat(2) per call; called by the member thread and the supervisor's hooks, never
        on the append path."""
        try:
            if shm_name(self.directory) != self.name:
                return True
        except (CometError, OSError):
            return True    # no key (removed), or one nobody can use: the rejoin says which
        try:
            return os.stat(SHM_DIR + self.name).st_ino != self.inode
        except FileNotFoundError:
            return True

    def leave_replaced(self, pid: int, ticks: int) -> None:
        """This process moves to the registry now at the directory's name (replaced()):
        take its master and member entries out of this old one, and remove the old name if
        nobody live is left in it, so an object nobody can name any more does not stay in
        /dev/shm. Best effort: a lock that cannot be taken leaves it to its other users."""
        if not self.same_object():
            return      # the name is gone or is someone else's object now
        with contextlib.suppress(RegistryError):
            with self.locked(timeout_ms=200):
                if self.unlinked:
                    return
                for i, mpid, mticks in self.masters():
                    if mpid == pid and mticks == ticks:
                        self._set_master(i, 0, 0)
                self.leave_locked(pid, ticks)
                if not any(mpid and is_alive(mpid, t) for _i, mpid, t in self.masters()) \
                        and not self.live_entries():
                    self.unlink_locked()

    def unlink_locked(self) -> None:
        """Mark unlinked and remove the name. Caller holds the lock."""
        self._put_u32(CM_REG_OFF_UNLINKED, 1)
        lib.cm_registry_bump_epoch(self._ptr)
        if self.same_object():
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(self.name)

    # -- raw fields ------------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return _U32.unpack_from(self._mm, off)[0]

    def _put_u32(self, off: int, v: int) -> None:
        _U32.pack_into(self._mm, off, v)

    @property
    def epoch(self) -> int:
        return _U64.unpack_from(self._mm, CM_REG_OFF_EPOCH)[0]

    @property
    def process_count(self) -> int:
        n = self._u32(CM_REG_OFF_PROCESS_COUNT)
        if not 1 <= n <= MAX_PROCESS_COUNT:   # I26: a count read from shared memory
            raise FormatError(f"registry {self.name}: process_count {n} at offset "
                              f"{CM_REG_OFF_PROCESS_COUNT} outside 1..{MAX_PROCESS_COUNT}")
        return n

    @property
    def unlinked(self) -> bool:
        return self._u32(CM_REG_OFF_UNLINKED) != 0

    @property
    def version(self) -> int:
        return struct.unpack_from("=H", self._mm, CM_REG_OFF_VERSION)[0]

    def raw_entries(self):
        """Every entry as a raw tuple, from one copy of the table (fast, racy)."""
        off = CM_REG_OFF_ENTRIES
        return ENTRY.iter_unpack(self._mm[off:off + MAX_ENTRIES * ENTRY.size])

    def entry(self, i: int) -> Entry:
        return Entry(i, ENTRY.unpack_from(self._mm, CM_REG_OFF_ENTRIES + i * ENTRY.size))

    def _write_entry(self, i: int, pid: int, state: int, start: int, epoch: int, hb: int,
                     vacated: int, key: int, last_pid: int, flags: int = 0) -> None:
        """Caller holds the lock. Order: state last, so a holder that dies here leaves
        either the old state or a LIVE entry with every field set (_repair_locked)."""
        base = CM_REG_OFF_ENTRIES + i * ENTRY.size
        raw = bytearray(ENTRY.pack(pid, FREE, start, epoch, hb, vacated, key, last_pid, flags))
        self._mm[base + 8:base + 64] = bytes(raw[8:])
        struct.pack_into("=i", self._mm, base, pid)
        _failpoint("registry.mid_entry")
        struct.pack_into("=I", self._mm, base + 4, state)

    def _clear_entry(self, i: int, state: int = FREE, vacated: int = 0, last_pid: int = 0) -> None:
        self._write_entry(i, 0, state, 0, 0, 0, vacated, -1, last_pid)

    def heartbeat(self, i: int, pid: int) -> None:
        """Set entry i's heartbeat if this pid still holds it (no lock: single writer)."""
        base = CM_REG_OFF_ENTRIES + i * ENTRY.size
        if struct.unpack_from("=i", self._mm, base)[0] == pid:
            struct.pack_into("=q", self._mm, base + CM_REGE_OFF_HEARTBEAT, time.monotonic_ns())

    def masters(self) -> list[tuple[int, int, int]]:
        off = CM_REG_OFF_MASTERS
        return [(i, *MASTER.unpack_from(self._mm, off + i * MASTER.size))
                for i in range(CM_REG_MASTERS)]

    def _set_master(self, i: int, pid: int, ticks: int) -> None:
        MASTER.pack_into(self._mm, CM_REG_OFF_MASTERS + i * MASTER.size, pid, ticks)

    def bump_epoch_locked(self) -> int:
        """I22: publish a change of the ownership function (after the slot stores)."""
        return int(lib.cm_registry_bump_epoch(self._ptr))

    def set_process_count_locked(self, n: int) -> None:
        self._put_u32(CM_REG_OFF_PROCESS_COUNT, _check_count(n))

    # -- the membership lock (I20) ---------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout_ms: int = LOCK_TIMEOUT_MS) -> Iterator["Registry"]:
        rc = lib.cm_registry_lock(self._ptr, self.name.encode(), timeout_ms)
        if rc < 0:  # I25: a live holder past the bound, or a damaged lock it still names
            raise RegistryError(f"registry {self.name} of {self.directory}: membership lock not "
                                f"acquired in {timeout_ms} ms: {last_error()}")
        try:
            _failpoint("registry.after_lock")
            if rc == 1:
                log.warning("cometmp: a process died holding the registry lock of %s; repairing",
                            self.directory)
                self._repair_locked()
            yield self
        finally:
            lib.cm_registry_unlock(self._ptr)

    def _repair_locked(self) -> None:
        """I20/I23: undo whatever a holder that died mid-update left half done."""
        seen: dict[tuple[int, int], int] = {}
        n = self.process_count
        for i in range(MAX_ENTRIES):
            e = self.entry(i)
            if e.state not in STATE_NAMES or (e.state == LIVE and (e.pid <= 0 or e.start == 0)):
                self._clear_entry(i)
            elif e.state != LIVE and e.pid != 0:
                self._clear_entry(i, e.state if i < n else FREE, e.vacated_ns, e.last_pid)
            elif e.state == LIVE:
                other = seen.get((e.pid, e.start))
                if other is not None:  # a move (promote) was cut short: keep the lower index
                    self._clear_entry(i)
                else:
                    seen[(e.pid, e.start)] = i
        self.bump_epoch_locked()

    def snapshot(self, lock: bool = True) -> Snapshot:
        """The table; under the lock unless ``lock=False`` (a racy read, for status)."""
        def read() -> Snapshot:
            n = self.process_count
            return Snapshot(n, self.epoch, [Entry(i, raw) for i, raw in
                                            enumerate(self.raw_entries())])
        if not lock:
            return read()
        with self.locked():
            return read()

    # -- transitions (caller holds the lock) -----------------------------------------
    def sweep_locked(self, now_ns: int | None = None, grace: float = RECLAIM_GRACE) -> bool:
        """Detect dead holders (LIVE -> VACANT, or FREE for a waiting entry), reclaim slots
        vacant for ``grace`` seconds (VACANT -> FREE) and promote waiting workers into
        empty slots. Returns True if anything changed (the epoch was bumped)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        n = self.process_count
        changed = False
        for i in range(MAX_ENTRIES):
            e = self.entry(i)
            if e.state == LIVE and not is_alive(e.pid, e.start):
                if i < n:
                    self._clear_entry(i, VACANT, now, e.pid)
                else:
                    self._clear_entry(i, FREE, 0, e.pid)
                changed = True
            elif e.state == VACANT and (i >= n or now - e.vacated_ns >= grace * 1e9):
                self._clear_entry(i, FREE, 0, e.last_pid)
                changed = True
        changed |= self._promote_locked()
        if changed:
            self.bump_epoch_locked()
        return changed

    def _promote_locked(self) -> bool:
        """Move waiting entries (LIVE at index >= processCount) into empty slots, lowest
        slot first: this is how processIDs stay dense after a shrink (renumbering)."""
        n = self.process_count
        waiting = [e for e in (self.entry(i) for i in range(n, MAX_ENTRIES)) if e.state == LIVE]
        if not waiting:
            return False
        changed = False
        epoch = self.epoch + 1
        for p in range(n):
            if not waiting:
                break
            e = self.entry(p)
            if e.state == LIVE:
                continue
            w = waiting.pop(0)
            self._write_entry(p, w.pid, LIVE, w.start, epoch, w.heartbeat_ns, 0, w.key, e.last_pid)
            _failpoint("registry.mid_promote")
            self._clear_entry(w.index)
            changed = True
        return changed

    def join_locked(self, pid: int, ticks: int, key: int | None = None) -> int:
        """Enter ``pid`` in the table; returns its entry index (a slot if < processCount,
        otherwise a waiting entry). Idempotent for the same (pid, start time)."""
        self.sweep_locked()
        n = self.process_count
        entries = [self.entry(i) for i in range(MAX_ENTRIES)]
        for e in entries:
            if e.state == LIVE and e.pid == pid and e.start == ticks:
                return e.index
        target = None
        if key is not None and 0 <= key < n and entries[key].state != LIVE:
            target = key  # uWSGI: worker_id k always comes back to slot k-1
        if target is None:  # a replacement takes the dead worker's slot first
            vacant = [e for e in entries[:n] if e.state == VACANT and
                      (key is None or e.key in (-1, key))]
            vacant.sort(key=lambda e: -e.vacated_ns)  # the most recent death
            if vacant:
                target = vacant[0].index
        if target is None:
            target = next((e.index for e in entries[:n] if e.state == FREE), None)
        if target is None:
            target = next((e.index for e in entries[n:] if e.state != LIVE), None)
        if target is None:
            raise RegistryError(f"registry of {self.directory} is full ({MAX_ENTRIES} entries)")
        epoch = self.epoch + 1
        self._write_entry(target, pid, LIVE, ticks, epoch, time.monotonic_ns(), 0,
                          -1 if key is None else key, entries[target].last_pid)
        self.bump_epoch_locked()
        return target

    def leave_locked(self, pid: int, ticks: int | None = None) -> int | None:
        """Remove ``pid`` (a graceful exit, or a death reported by the master): its slot
        becomes VACANT (a waiting worker is promoted into it at once). Returns its index.
        Without ``ticks`` (a reported death) an entry whose pid is alive with its recorded
        start time is left alone: the pid was reused by a live worker (I21)."""
        n = self.process_count
        found = None
        for i in range(MAX_ENTRIES):
            e = self.entry(i)
            if e.state != LIVE or e.pid != pid:
                continue
            if (e.start == ticks) if ticks is not None else not is_alive(e.pid, e.start):
                if i < n:
                    self._write_entry(i, 0, VACANT, 0, 0, 0, time.monotonic_ns(), e.key, pid)
                else:
                    self._clear_entry(i, FREE, 0, pid)
                found = i
        if found is not None:
            self._promote_locked()
            self.bump_epoch_locked()
        return found

    def live_entries(self) -> list[Entry]:
        return [e for e in (self.entry(i) for i in range(MAX_ENTRIES)) if e.alive()]

    def abandoned(self, young: float = 2.0) -> bool:
        """I24: every master and every member of this registry is dead (all kill -9ed, a
        server that died uncleanly), so nobody will ever unlink it: the next start
        rebuilds it, with its own process count. A registry nobody ever used counts only
        once it is ``young`` seconds old: its creator is about to join it. Exact under
        the lock; racy without."""
        masters = [(pid, t) for _i, pid, t in self.masters() if pid]
        if any(is_alive(pid, t) for pid, t in masters) or self.live_entries():
            return False
        used = masters or any(state != FREE for _p, state, *_r in self.raw_entries())
        created = struct.unpack_from("=q", self._mm, CM_REG_OFF_CREATED)[0]
        return bool(used) or time.time_ns() - created >= young * 1e9


def dead_drafts(name: str) -> list[str]:
    """The drafts (Registry.create, I24a) of registry ``name`` whose creator process is
    gone (a creator killed before it published leaves one behind), as /dev/shm names.
    A draft of a live creator is not listed: it may be at work."""
    prefix = name.lstrip("/") + "."
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    out = []
    for entry in sorted(entries):
        if not (entry.startswith(prefix) and entry.endswith(".draft")):
            continue
        pid = entry[len(prefix):].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            out.append("/" + entry)
    return out


def _remove_dead_drafts(name: str) -> None:
    """Remove dead_drafts(name): done by the next creator (the next server start);
    ``cometmp status`` lists them until then."""
    for draft in dead_drafts(name):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(draft)


def in_use_or_young(directory: str | os.PathLike, young: float = 2.0) -> bool:
    """Whether a registry object we cannot use (another build's, or never initialised)
    may still be someone's: created less than ``young`` s ago (a creator at work right
    now), or mapped by a live process (scan of /proc/*/maps; other users' maps are not
    readable without root, so run every process of a server as one user or as root)."""
    if read_key(os.path.abspath(os.fspath(directory))) is None:
        return False     # no key, so no registry anyone could have named
    name = shm_name(directory).lstrip("/")
    try:
        st = os.stat(f"{SHM_DIR}/{name}")
    except FileNotFoundError:
        return False
    if time.time() - st.st_mtime < young:
        return True
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps") as f:
                if name in f.read():
                    return True
        except OSError:
            continue
    return False


def _check_count(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PROCESS_COUNT:
        raise ValueError(f"process_count must be an int between 1 and {MAX_PROCESS_COUNT}, not {n!r}")
    return n

