"""The worker registry (worker side): slots, shard ownership, join/leave, routing.

Runs in worker processes; the master side (create, rebuild, child deaths, the
worker count, unlink) is cometmp/supervisor.py. Both share :class:`Registry`,
the POSIX shared-memory object of one data directory.

Design (docs/ARCHITECTURE.md "Registry", "Slot states", "Shard ownership")
--------------------------------------------------------------------------
One registry per data directory, named ``/cometmp-<blake2b(st_dev:st_ino)>``
so two directories never collide and one directory always finds the same
object. Layout and the membership lock live in native/registry.c; this module
reads and writes the 64-byte entries with the offsets C exports.

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
I24 the registry's size is fixed: worker churn reuses entries, never adds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import signal
import struct
import threading
import time
import weakref
from typing import Iterator

import posix_ipc

from ._ffi import ffi, lib
from .errors import CometError, FormatError, RegistryError, ShardNotOwned, UnsupportedFilesystem

log = logging.getLogger("cometmp")

ENV_DIR = "COMETMP_DIR"
ENV_FAILPOINTS = "COMETMP_FAILPOINTS"
SHM_PREFIX = "/cometmp-"

FREE, LIVE, VACANT = 0, 1, 2
STATE_NAMES = {FREE: "free", LIVE: "live", VACANT: "vacant"}
#: A slot whose worker is gone and not replaced within this many seconds is reclaimed.
RECLAIM_GRACE = 1.0
LOCK_TIMEOUT_MS = 5000
#: Member thread period: heartbeat, epoch check, dead-worker sweep.
MEMBER_PERIOD = 0.2


def _constants() -> dict[str, int]:
    n = ffi.new("uint32_t *")
    table = lib.cm_registry_constants(n)
    return {ffi.string(table[i].name).decode(): int(table[i].value) for i in range(n[0])}


C = _constants()
MAX_ENTRIES = C["CM_REG_MAX_ENTRIES"]
MAX_PROCESS_COUNT = MAX_ENTRIES // 2  # room for a whole second generation of waiting workers
REG_BYTES = C["CM_REG_BYTES"]
#: entry: pid(4) state(4) start_ticks(8) epoch(8) heartbeat_ns(8) vacated_ns(8) key(8)
#:        last_pid(4) flags(4) pad(8) = 64, native endian
ENTRY = struct.Struct("=iIQQqqqiI8x")
MASTER = struct.Struct("=i4xQ")
assert ENTRY.size == C["CM_REG_ENTRY_BYTES"] and MASTER.size == C["CM_REG_MASTER_BYTES"]
assert C["CM_REGE_OFF_KEY"] == 40 and C["CM_REGE_OFF_LAST_PID"] == 48
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

def shm_name(directory: str | os.PathLike) -> str:
    """The registry's POSIX shm name for ``directory``: a hash of its (st_dev, st_ino)."""
    st = os.stat(directory)
    h = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), digest_size=8).hexdigest()
    return SHM_PREFIX + h


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
    from ._ffi import check

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
        self.address = int(ffi.cast("uintptr_t", self._ptr))
        #: address of the shared uint64 ownership epoch (for Appender.set_epoch_watch)
        self.epoch_address = self.address + C["CM_REG_OFF_EPOCH"]

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def _map(cls, directory: str, name: str, shm: "posix_ipc.SharedMemory",
             created: bool) -> "Registry":
        try:
            st = os.fstat(shm.fd)
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
            raise RegistryError(f"registry {name} of {directory}: {e}") from None
        if shm.size < 64:
            shm.close_fd()
            raise RegistryError(f"registry {name} of {directory} is being created")
        if shm.size < REG_BYTES:
            shm.close_fd()
            raise FormatError(f"registry {name} of {directory} is {shm.size} bytes; this build "
                              f"uses {REG_BYTES} (version {C['CM_REG_VERSION']})")
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
        name = shm_name(directory)
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=REG_BYTES)
        try:
            if (uid is not None and uid != os.geteuid()) or (gid is not None and gid != os.getegid()):
                os.fchown(shm.fd, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        reg = cls._map(directory, name, shm, True)
        from ._ffi import check
        check(lib.cm_registry_init(reg._ptr, REG_BYTES, _check_count(process_count)))
        reg._put_u32(C["CM_REG_OFF_OWNER_UID"], os.geteuid() if uid is None else uid)
        reg._put_u32(C["CM_REG_OFF_OWNER_GID"], os.getegid() if gid is None else gid)
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

    def unlink_locked(self) -> None:
        """Mark unlinked and remove the name. Caller holds the lock."""
        self._put_u32(C["CM_REG_OFF_UNLINKED"], 1)
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
        return _U64.unpack_from(self._mm, C["CM_REG_OFF_EPOCH"])[0]

    @property
    def process_count(self) -> int:
        return self._u32(C["CM_REG_OFF_PROCESS_COUNT"])

    @property
    def unlinked(self) -> bool:
        return self._u32(C["CM_REG_OFF_UNLINKED"]) != 0

    @property
    def version(self) -> int:
        return struct.unpack_from("=H", self._mm, C["CM_REG_OFF_VERSION"])[0]

    def raw_entries(self):
        """Every entry as a raw tuple, from one copy of the table (fast, racy)."""
        off = C["CM_REG_OFF_ENTRIES"]
        return ENTRY.iter_unpack(self._mm[off:off + MAX_ENTRIES * ENTRY.size])

    def entry(self, i: int) -> Entry:
        return Entry(i, ENTRY.unpack_from(self._mm, C["CM_REG_OFF_ENTRIES"] + i * ENTRY.size))

    def _write_entry(self, i: int, pid: int, state: int, start: int, epoch: int, hb: int,
                     vacated: int, key: int, last_pid: int, flags: int = 0) -> None:
        """Caller holds the lock. Order: state last, so a holder that dies here leaves
        either the old state or a LIVE entry with every field set (_repair_locked)."""
        base = C["CM_REG_OFF_ENTRIES"] + i * ENTRY.size
        raw = bytearray(ENTRY.pack(pid, FREE, start, epoch, hb, vacated, key, last_pid, flags))
        self._mm[base + 8:base + 64] = bytes(raw[8:])
        struct.pack_into("=i", self._mm, base, pid)
        _failpoint("registry.mid_entry")
        struct.pack_into("=I", self._mm, base + 4, state)

    def _clear_entry(self, i: int, state: int = FREE, vacated: int = 0, last_pid: int = 0) -> None:
        self._write_entry(i, 0, state, 0, 0, 0, vacated, -1, last_pid)

    def heartbeat(self, i: int, pid: int) -> None:
        """Set entry i's heartbeat if this pid still holds it (no lock: single writer)."""
        base = C["CM_REG_OFF_ENTRIES"] + i * ENTRY.size
        if struct.unpack_from("=i", self._mm, base)[0] == pid:
            struct.pack_into("=q", self._mm, base + C["CM_REGE_OFF_HEARTBEAT"], time.monotonic_ns())

    def masters(self) -> list[tuple[int, int, int]]:
        off = C["CM_REG_OFF_MASTERS"]
        return [(i, *MASTER.unpack_from(self._mm, off + i * MASTER.size))
                for i in range(C["CM_REG_MASTERS"])]

    def _set_master(self, i: int, pid: int, ticks: int) -> None:
        MASTER.pack_into(self._mm, C["CM_REG_OFF_MASTERS"] + i * MASTER.size, pid, ticks)

    def bump_epoch_locked(self) -> int:
        """I22: publish a change of the ownership function (after the slot stores)."""
        return int(lib.cm_registry_bump_epoch(self._ptr))

    def set_process_count_locked(self, n: int) -> None:
        self._put_u32(C["CM_REG_OFF_PROCESS_COUNT"], _check_count(n))

    # -- the membership lock (I20) ---------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout_ms: int = LOCK_TIMEOUT_MS) -> Iterator["Registry"]:
        rc = lib.cm_registry_lock(self._ptr, timeout_ms)
        if rc < 0:
            raise RegistryError(f"registry {self.name} of {self.directory}: membership lock not "
                                f"acquired in {timeout_ms} ms")
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


def in_use_or_young(directory: str | os.PathLike, young: float = 2.0) -> bool:
    """Whether a registry object we cannot use (another build's, or never initialised)
    may still be someone's: created less than ``young`` s ago (a creator at work right
    now), or mapped by a live process (scan of /proc/*/maps; other users' maps are not
    readable without root, so run every process of a server as one user or as root)."""
    name = shm_name(directory).lstrip("/")
    try:
        st = os.stat("/dev/shm/" + name)  # Linux keeps POSIX shm objects here
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


# ---- configuration ------------------------------------------------------------------

_configured_dir: str | None = None


def configure(directory: str | os.PathLike | None) -> None:
    """Set the data directory the server integrations use (overrides ``COMETMP_DIR``)."""
    global _configured_dir
    _configured_dir = None if directory is None else os.path.abspath(os.fspath(directory))


def configured_directory() -> str | None:
    """The integrations' data directory: configure()'s, else ``$COMETMP_DIR``, else None."""
    if _configured_dir is not None:
        return _configured_dir
    env = os.environ.get(ENV_DIR)
    return os.path.abspath(env) if env else None


# ---- this process's membership ------------------------------------------------------

class _Membership:
    """This worker's registration. Records the pid that created it (CONVENTIONS 10)."""

    def __init__(self, registry: Registry, pid: int, ticks: int, key: int | None, dir_id):
        self.registry = registry
        self.pid = pid
        self.ticks = ticks
        self.key = key
        self.dir_id = dir_id
        self.epoch = -1
        self.snap: Snapshot | None = None
        self.index: int | None = None
        self.stop = threading.Event()

    def refresh(self) -> Snapshot:
        """Re-read the table if the epoch moved (cheap otherwise)."""
        if self.snap is None or self.registry.epoch != self.epoch:
            try:
                snap = self.registry.snapshot()
            except CometError as e:
                log.error("cometmp: cannot read the registry of %s: %s", self.registry.directory, e)
                if self.snap is None:
                    raise
                return self.snap
            self.snap = snap
            self.epoch = snap.epoch
            self.index = snap.index_of(self.pid, self.ticks)
        return self.snap


_lock = threading.RLock()
_member: _Membership | None = None
_logs: "weakref.WeakSet" = weakref.WeakSet()
#: registries this process joined: never unmapped, because an appender's epoch watch may
#: still point into the mapping (a forked child inherits both). One per join, so bounded.
_pinned: list[Registry] = []


def _dir_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _current() -> _Membership | None:
    m = _member
    if m is None or m.pid != os.getpid():
        return None
    return m


def worker_id() -> int | None:
    """This worker's stable slot number (processID, 0..processCount-1), or None if this
    process is standalone, not yet registered, or waiting for a slot."""
    m = _current()
    if m is None:
        return None
    m.refresh()
    if m.index is None or m.snap is None or m.index >= m.snap.process_count:
        return None
    return m.index


def join(directory: str | os.PathLike | None = None, key: int | None = None,
         create_count: int | None = None, start_thread: bool = True) -> int | None:
    """Register this process as a worker of ``directory`` (default: configured_directory()).

    Runs in the worker, after fork (never before). ``key`` is the server's own stable worker
    number, 0-based (uWSGI's worker_id() - 1): the worker returns to that slot. With
    ``create_count`` a missing registry is created with that processCount (servers without a
    master-side hook). Existing Logs of this process re-route to the shards it owns.
    Returns worker_id().
    """
    global _member
    directory = directory if directory is not None else configured_directory()
    if directory is None:
        raise RegistryError(f"no data directory: set ${ENV_DIR} or call cometmp.configure()")
    directory = os.path.abspath(os.fspath(directory))
    pid = os.getpid()
    ticks = start_ticks(pid)
    with _lock:
        m = _current()
        if m is not None and m.dir_id == _dir_id(directory):
            return worker_id()
        if m is None and _member is not None:
            _forget_parent()
        if create_count is not None:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        check_filesystem(directory)
        for _attempt in range(20):
            reg = _open_for_join(directory, create_count)
            with reg.locked():
                if not reg.unlinked:  # checked under the same lock as the join itself
                    reg.join_locked(pid, ticks, key)
                    break
            reg.close()
        else:
            raise RegistryError(f"could not join the registry of {directory}")
        m = _Membership(reg, pid, ticks, key, _dir_id(directory))
        _member = m
        _pinned.append(reg)
        m.refresh()
        for lg in list(_logs):
            _install(lg, m)
        if start_thread:
            threading.Thread(target=_member_loop, args=(m,), name="cometmp-member",
                             daemon=True).start()
        log.debug("cometmp: pid %d joined %s as entry %s", pid, directory, m.index)
    return worker_id()


def _open_for_join(directory: str, create_count: int | None) -> Registry:
    for _ in range(50):
        try:
            reg = Registry.attach(directory)
        except RegistryError as e:
            if create_count is None:
                raise
            if "never initialised" in str(e) and not in_use_or_young(directory):
                # its creator died before publishing it: rebuild (I24)
                with contextlib.suppress(posix_ipc.ExistentialError):
                    posix_ipc.unlink_shared_memory(shm_name(directory))
            os.makedirs(directory, mode=0o700, exist_ok=True)
            try:
                reg = Registry.create(directory, create_count)
                return reg
            except posix_ipc.ExistentialError:
                time.sleep(0.01)  # another worker is creating it: attach on the next turn
                continue
        with reg.locked():
            if not reg.unlinked:
                return reg
        reg.close()  # the last member just removed it: open or create the new one
        time.sleep(0.001)
    raise RegistryError(f"could not attach to the registry of {directory}")


def leave() -> None:
    """Deregister this worker (graceful exit). Its slot becomes VACANT for its replacement.
    With ``create_count`` registries (no master), the last member to leave unlinks it."""
    global _member
    with _lock:
        m = _current()
        if m is None:
            return
        m.stop.set()
        reg = m.registry
        with reg.locked():
            reg.leave_locked(m.pid, m.ticks)
            _unlink_if_last_locked(reg, m.pid)
        _member = None
        _standalone_all()


def _standalone_all() -> None:
    """Every Log of this process routes as a single process again (watch removed)."""
    for lg in list(_logs):
        app = lg._appender
        if hasattr(app, "set_epoch_watch"):
            try:
                app.set_epoch_watch(0, None)
            except Exception as e:
                log.debug("cometmp: set_epoch_watch on %r: %s", lg, e)
        _set_route(lg, list(range(lg.shards)))
        route = getattr(lg, "_cometmp_route", None)
        if route is not None:
            route.owned = None


def _unlink_if_last_locked(reg: Registry, me: int) -> None:
    """The last process attached (no live master, no other live entry) removes the name."""
    if any(pid and is_alive(pid, t) for _i, pid, t in reg.masters()):
        return
    if any(e.alive() and e.pid != me for e in (reg.entry(i) for i in range(MAX_ENTRIES))):
        return
    reg.unlink_locked()


def _member_loop(m: _Membership) -> None:
    """Heartbeat, follow the epoch (re-route Logs) and sweep dead workers, every 200 ms.
    Every worker runs it, so the duty survives any single process's kill -9."""
    reg = m.registry
    while not m.stop.wait(MEMBER_PERIOD):
        if os.getpid() != m.pid or _member is not m:
            return
        try:
            if m.index is not None:
                reg.heartbeat(m.index, m.pid)
            if _needs_sweep(reg):
                with reg.locked():
                    reg.sweep_locked()
            if reg.epoch != m.epoch:
                m.refresh()
                for lg in list(_logs):
                    _refresh_log(lg)
        except Exception as e:  # never let the thread die silently mid-run
            log.error("cometmp: registry member loop: %s", e)


def _needs_sweep(reg: Registry) -> bool:
    """Racy pre-check so the lock is taken only when something changed."""
    n = reg.process_count
    now = time.monotonic_ns()
    grace = RECLAIM_GRACE * 1e9
    waiting = False
    empty_slot = False
    for i, (pid, state, start, _ep, _hb, vacated, _k, _lp, _f) in enumerate(reg.raw_entries()):
        if state == LIVE:
            if not is_alive(pid, start):
                return True
            if i >= n:
                waiting = True
        elif state == VACANT and (i >= n or now - vacated >= grace):
            return True
        elif i < n:
            empty_slot = True
    return waiting and empty_slot


def sweep(directory: str | os.PathLike) -> bool:
    """One sweep of ``directory``'s registry from any process (see Registry.sweep_locked)."""
    reg = Registry.attach(directory)
    try:
        with reg.locked():
            return reg.sweep_locked()
    finally:
        reg.close()


# ---- routing of Logs ----------------------------------------------------------------

def _set_route(lg, route: list[int]) -> None:
    try:
        lg._appender.set_route(route)
    except Exception as e:  # a closed client: nothing to route
        log.debug("cometmp: set_route on %r: %s", lg, e)


def _refresh_log(lg) -> None:
    """Recompute ``lg``'s key=None route from the registry: its owned shards, or all of
    them when this process owns none of the family (standalone, waiting, or few shards)."""
    m = _current()
    route = getattr(lg, "_cometmp_route", None)
    if m is None or route is None or route.dir_id != m.dir_id:
        _set_route(lg, list(range(lg.shards)))
        if route is not None:
            route.owned = None
        return
    snap = m.refresh()
    owned = snap.owned(m.index, lg.shards)
    route.owned = frozenset(owned)
    route.epoch = snap.epoch
    _set_route(lg, owned or list(range(lg.shards)))


class _Route:
    __slots__ = ("dir_id", "owned", "epoch", "__weakref__")

    def __init__(self, dir_id):
        self.dir_id = dir_id
        self.owned: frozenset | None = None
        self.epoch = -1


def _install(lg, m: _Membership) -> None:
    route = getattr(lg, "_cometmp_route", None)
    if route is None:
        return
    app = lg._appender
    if route.dir_id == m.dir_id and hasattr(app, "set_epoch_watch"):
        ref = weakref.ref(lg)

        def on_epoch_change() -> None:
            """Runs inside append, before routing: must never fail the append."""
            target = ref()
            if target is None:
                return
            try:
                _refresh_log(target)
            except Exception as e:  # noqa: BLE001 - a stale route is only contention
                log.error("cometmp: re-routing %r after an ownership change failed: %s",
                          target, e)
        app.set_epoch_watch(m.registry.epoch_address, on_epoch_change)
    _refresh_log(lg)


def track_log(lg) -> None:
    """Called by Log.__init__: route ``lg`` by this process's membership (if any)."""
    lg._cometmp_route = _Route(_dir_id(lg.client.path))
    _logs.add(lg)
    m = _current()
    if m is not None:
        _install(lg, m)


def make_router(client, prefix: str, shards: int):
    """The key -> shard router of a Log: None (the Appender routes by pick_shard in C,
    no Python call per append) unless config.concurrency.strict_ownership, where a key
    whose shard this worker does not own raises ShardNotOwned (Comet's behaviour)."""
    from .client import pick_shard

    if not client.config.concurrency.strict_ownership:
        return None
    holder: dict = {}

    def strict_router(key):
        s = pick_shard(key, shards)
        lg = holder.get("log")
        lg = lg() if lg is not None else None
        m = _current()
        if lg is None or m is None:
            return s
        if lg._cometmp_route.epoch != m.registry.epoch:
            _refresh_log(lg)
        route = lg._cometmp_route  # read after the refresh: it may be a new object
        if route.owned is not None and s not in route.owned:
            raise ShardNotOwned(
                f"{prefix}:shard:{s:04d} (key {key!r}) is owned by another worker; this worker "
                f"(processID {worker_id()}) owns shards {sorted(route.owned)} "
                "(config.concurrency.strict_ownership=True)")
        return s
    strict_router.holder = holder  # type: ignore[attr-defined]
    return strict_router


def bind_router(router, lg) -> None:
    holder = getattr(router, "holder", None)
    if holder is not None:
        holder["log"] = weakref.ref(lg)


def _forget_parent() -> None:
    """In a forked child of a worker: the membership is the parent's. Route standalone."""
    global _member
    _member = None
    _standalone_all()


def on_client_fork() -> None:
    """Called by Client._after_fork (and os.register_at_fork) in a child process."""
    with _lock:
        if _member is not None and _member.pid != os.getpid():
            _forget_parent()


def _at_fork_child() -> None:
    global _lock
    _lock = threading.RLock()  # the parent's holder thread does not exist here
    if _member is not None and _member.pid != os.getpid():
        _forget_parent()


os.register_at_fork(after_in_child=_at_fork_child)
