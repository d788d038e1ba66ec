"""This process's membership in a directory's worker registry (the worker side).

Runs in worker processes: ``join()`` after fork (gunicorn's ``post_fork``, uWSGI's
``postfork``, the child of a hand-made pool), ``leave()`` at a graceful exit,
``worker_id()`` for the app. A member thread heartbeats, sweeps dead workers (so the
duty survives any single process's ``kill -9``) and follows the ownership epoch.

This module is the prefork runtime's answer to the engine's seam, cometmp.ownership: it
installs a Runtime that tells a Log which shards this process owns at which epoch, and
calls ``ownership.changed()`` when that may have moved. It never touches a Log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import posix_ipc

from .. import ownership
from ..errors import CometError, RegistryError
from .table import (
    ENV_DIR,
    LIVE,
    MAX_ENTRIES,
    MEMBER_PERIOD,
    RECLAIM_GRACE,
    VACANT,
    ForeignRegistry,
    Registry,
    Snapshot,
    check_filesystem,
    in_use_or_young,
    is_alive,
    shm_name,
    start_ticks,
)

log = logging.getLogger("cometmp")

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

    def __init__(self, registry: Registry, pid: int, ticks: int, key: int | None, dir_id,
                 directory: str):
        self.registry = registry
        self.directory = directory
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


def entry_index() -> int | None:
    """The registry entry this process holds (its slot, or a waiting entry >= processCount),
    as of the member thread's last look; None when it is not a member. No lock, no lookup,
    no system call: cometmp.appmetrics calls it on every metric update to pick its column.
    A fork clears the membership in the child (_at_fork_child), so a child never reports
    its parent's entry."""
    m = _member
    return None if m is None else m.index


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
        reg = _join_registry(directory, create_count, pid, ticks, key)
        m = _Membership(reg, pid, ticks, key, _dir_id(directory), directory)
        _member = m
        _pinned.append(reg)
        m.refresh()
        ownership.changed()   # Logs created before the fork re-route to owned shards
        if start_thread:
            threading.Thread(target=_member_loop, args=(m,), name="cometmp-member",
                             daemon=True).start()
        log.debug("cometmp: pid %d joined %s as entry %s", pid, directory, m.index)
    return worker_id()


def _join_registry(directory: str, create_count: int | None, pid: int, ticks: int,
                   key: int | None) -> Registry:
    """Open (or create) the registry of ``directory`` and take an entry in it."""
    for _attempt in range(20):
        reg = _open_for_join(directory, create_count)
        with reg.locked():
            if not reg.unlinked:  # checked under the same lock as the join itself
                reg.join_locked(pid, ticks, key)
                return reg
        reg.close()
    raise RegistryError(f"could not join the registry of {directory}")


def _rejoin_if_replaced(m: _Membership) -> bool:
    """I24: the object at the registry's name is no longer the one this member mapped
    (removed from /dev/shm while the server runs): join the one there now, creating it
    with the old processCount if there is none, and re-route every Log. Member thread."""
    old = m.registry
    if not old.replaced():
        return False
    with _lock:
        if _member is not m or os.getpid() != m.pid:
            return False
        count = old.process_count
        log.warning("cometmp: the registry %s of %s (or its key) was removed while pid %d "
                    "used it; rejoining a new one (processCount %d)", old.name, m.directory,
                    m.pid, count)
        reg = _join_registry(m.directory, count, m.pid, m.ticks, m.key)
        old.leave_replaced(m.pid, m.ticks)   # I33a: an old name nobody can compute any more
        _pinned.append(reg)   # the old mapping stays pinned too: epoch watches point into it
        m.registry, m.snap, m.epoch = reg, None, -1
        m.refresh()
    ownership.changed()   # Logs re-arm their epoch watch on the new mapping
    return True


def _open_for_join(directory: str, create_count: int | None) -> Registry:
    for _ in range(50):
        try:
            reg = Registry.attach(directory)
        except ForeignRegistry:
            raise   # I33
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
                if create_count is None or not reg.abandoned():
                    return reg
                # I24: left by a server whose every process died (kill -9, a crash):
                # nobody else will remove it, and its process count is not ours
                log.warning("cometmp: registry %s of %s was left by dead processes "
                            "(processCount %d); rebuilding it with processCount %d",
                            reg.name, directory, reg.process_count, create_count)
                reg.unlink_locked()
        reg.close()  # removed (by the last member, or just now): open or create the new one
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
        ownership.changed()   # every Log routes as a single process again


def _unlink_if_last_locked(reg: Registry, me: int) -> None:
    """The last process attached (no live master, no other live entry) removes the name."""
    if any(pid and is_alive(pid, t) for _i, pid, t in reg.masters()):
        return
    if any(e.alive() and e.pid != me for e in (reg.entry(i) for i in range(MAX_ENTRIES))):
        return
    reg.unlink_locked()


def _member_loop(m: _Membership) -> None:
    """Heartbeat, follow the epoch (re-route Logs), sweep dead workers and rejoin a
    registry removed from /dev/shm (I24), every 200 ms. Every worker runs it, so the duty
    survives any single process's kill -9."""
    while not m.stop.wait(MEMBER_PERIOD):
        if os.getpid() != m.pid or _member is not m:
            return
        try:
            _rejoin_if_replaced(m)
            reg = m.registry
            if m.index is not None:
                reg.heartbeat(m.index, m.pid)
            if _needs_sweep(reg):
                with reg.locked():
                    reg.sweep_locked()
            if reg.epoch != m.epoch:
                m.refresh()
                ownership.changed()
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



# ---- the engine's seam (cometmp.ownership) --------------------------------------------

class _RegistryRuntime:
    """cometmp.ownership.Runtime over this process's membership."""

    def placement(self, key: ownership.DirectoryKey) -> ownership.Placement | None:
        m = _current()
        if m is None or m.dir_id != key:
            return None
        snap = m.refresh()
        index = m.index if m.index is not None and m.index < snap.process_count else None
        return ownership.Placement(snap.epoch, index, snap.process_count,
                                   lambda shards: snap.owned(index, shards))

    def epoch_source(self, key: ownership.DirectoryKey) -> tuple[object, int] | None:
        m = _current()
        if m is None or m.dir_id != key:
            return None
        return m.registry.epoch_source


ownership.install(_RegistryRuntime())


# ---- fork ----------------------------------------------------------------------------

def _forget_parent() -> None:
    """In a forked child of a worker: the membership is the parent's. Route standalone."""
    global _member
    _member = None
    ownership.changed()


def _at_fork_child() -> None:
    global _lock
    _lock = threading.RLock()  # the parent's holder thread does not exist here
    if _member is not None and _member.pid != os.getpid():
        _forget_parent()


os.register_at_fork(after_in_child=_at_fork_child)
