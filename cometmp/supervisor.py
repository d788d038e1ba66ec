"""The supervisor (master side): creates the registry, reports deaths, sets the count.

Runs in the master process of a prefork server (gunicorn's arbiter through hooks), in
the parent of a custom ``os.fork`` pool, or as ``cometmp supervise DIR``. Workers use
cometmp.registry.join()/leave(). The public protocol for any prefork server::

    sup = Supervisor(directory, process_count=4)    # parent, before forking
    sup.start()
    pid = os.fork()
    if pid == 0:
        cometmp.registry.join(directory)               # child, after fork
        ...
    ...
    sup.child_exited(pid)                              # parent, after waitpid()
    sup.close()                                        # parent, at exit (last master unlinks)

Not thread safe per instance (the registry lock serialises processes, not threads of one
Supervisor); ``start_thread()`` runs the periodic sweep in a daemon thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import posix_ipc

from .errors import FormatError, RegistryError, os_errors
from .registry import (
    MAX_ENTRIES,
    RECLAIM_GRACE,
    ForeignRegistry,
    Registry,
    check_filesystem,
    in_use_or_young,
    is_alive,
    shm_name,
    start_ticks,
)

log = logging.getLogger("cometmp")


class Supervisor:
    """Master-side owner of a data directory's registry. Runs in the master process."""

    def __init__(self, directory: str | os.PathLike, process_count: int,
                 uid: int | None = None, gid: int | None = None):
        self.directory = os.path.abspath(os.fspath(directory))
        self.process_count = process_count
        self.uid = uid
        self.gid = gid
        self.registry: Registry | None = None
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rebuilt = False

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "Supervisor":
        """Create the registry, or attach to a live one (a second master during USR2), or
        rebuild a stale one (left by a kill -9'ed master). Registers this master."""
        self._ensure_directory()
        check_filesystem(self.directory)
        self.registry = self._create_or_attach()
        self._register()
        return self

    def _register(self) -> None:
        """Take a master entry in ``self.registry`` and apply this master's count."""
        reg = self.registry
        pid, ticks = os.getpid(), start_ticks(os.getpid())
        with reg.locked():
            free = None
            for i, mpid, mticks in reg.masters():
                if mpid == pid and mticks == ticks:
                    free = i
                    break
                if free is None and not is_alive(mpid, mticks):
                    free = i
            if free is None:
                raise RegistryError(f"registry of {self.directory}: too many masters")
            reg._set_master(free, pid, ticks)
            if reg.process_count != self.process_count:
                reg.set_process_count_locked(self.process_count)
            reg.sweep_locked()
            reg.bump_epoch_locked()

    def _ensure_directory(self) -> None:
        if not os.path.isdir(self.directory):
            with os_errors(self.directory, "create data directory"):
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                os.chmod(self.directory, 0o700)   # I31: whatever the umask
                if self.uid is not None or self.gid is not None:  # workers drop to this user
                    os.chown(self.directory, -1 if self.uid is None else self.uid,
                             -1 if self.gid is None else self.gid)

    def _create_or_attach(self) -> Registry:
        for _ in range(20):
            try:
                return Registry.create(self.directory, self.process_count, self.uid, self.gid)
            except posix_ipc.ExistentialError:
                pass
            try:
                reg = Registry.attach(self.directory)
            except ForeignRegistry:
                raise   # I33: never unlinked or waited out; its owner must remove it
            except FormatError as e:
                if self._in_use_or_young():
                    raise
                log.warning("cometmp: rebuilding the registry of %s: %s", self.directory, e)
                self._unlink_stale()
                continue
            except RegistryError:
                # never initialised (its creator died) or vanished: rebuild if unused
                if not self._in_use_or_young():
                    self._unlink_stale()
                time.sleep(0.01)
                continue
            with reg.locked():
                if reg.unlinked:
                    stale = False
                else:
                    stale = reg.abandoned()
                    if stale:
                        log.warning("cometmp: registry %s of %s was left by a dead master; "
                                    "rebuilding it", reg.name, self.directory)
                        reg.unlink_locked()
            if not stale and not reg.unlinked:
                return reg
            reg.close()
            self.rebuilt = True
        raise RegistryError(f"could not create or attach the registry of {self.directory}")

    def _in_use_or_young(self) -> bool:
        return in_use_or_young(self.directory)

    def _unlink_stale(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(shm_name(self.directory))
        except posix_ipc.ExistentialError:
            pass
        self.rebuilt = True

    def close(self) -> None:
        """Deregister this master; the last master unlinks the registry (I24)."""
        self.stop_thread()
        if self.registry is None or os.getpid() != self.pid:
            return
        try:
            reg = self._reg()   # the object at the name now, if it was replaced
        except RegistryError:
            reg = self.registry
        self.registry = None
        try:
            pid, ticks = os.getpid(), start_ticks(os.getpid())
            with reg.locked():
                others = False
                for i, mpid, mticks in reg.masters():
                    if mpid == pid and mticks == ticks:
                        reg._set_master(i, 0, 0)
                    elif mpid and is_alive(mpid, mticks):
                        others = True
                if not others and not reg.unlinked:
                    reg.unlink_locked()
        finally:
            reg.close()

    # -- what the master reports ------------------------------------------------------
    def set_process_count(self, n: int) -> None:
        """The configured worker count changed (gunicorn TTIN/TTOU, HUP). Waiting workers
        fill empty slots; a shrink leaves the top slots' workers waiting until lower slots
        free, so processIDs stay dense."""
        self.process_count = n
        reg = self._reg()
        with reg.locked():
            reg.set_process_count_locked(n)
            reg.sweep_locked()
            reg.bump_epoch_locked()

    def child_exited(self, pid: int) -> None:
        """A worker process ended (reaped by the master): its slot becomes VACANT now,
        without waiting for a sweep; its replacement takes it, or it is reclaimed in 1 s."""
        reg = self._reg()
        with reg.locked():
            reg.leave_locked(pid)

    def sweep(self) -> bool:
        reg = self._reg()
        with reg.locked():
            return reg.sweep_locked()

    def snapshot(self):
        return self._reg().snapshot()

    def _reg(self) -> Registry:
        if self.registry is None:
            raise RegistryError(f"supervisor of {self.directory} is not started")
        if os.getpid() != self.pid:
            raise RegistryError("a Supervisor belongs to the process that created it")
        if self.registry.replaced():
            # I24: removed from /dev/shm while the server runs: use (or create) the one
            # there now, and register in it; the old mapping is left to the GC
            log.warning("cometmp: the registry %s of %s (or its key) was removed while the "
                        "master used it; attaching to a new one", self.registry.name,
                        self.directory)
            old = self.registry
            self.registry = self._create_or_attach()
            self._register()
            old.leave_replaced(os.getpid(), start_ticks(os.getpid()))   # I33a
        return self.registry

    # -- periodic sweep ---------------------------------------------------------------
    def start_thread(self, period: float = 0.2) -> None:
        """Sweep every ``period`` s in a daemon thread (for servers without death hooks)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(period,),
                                        name="cometmp-supervisor", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2)
        self._thread = None

    def run(self, period: float = 0.2) -> None:
        """Sweep until stop: detect dead workers, reclaim slots after RECLAIM_GRACE."""
        while not self._stop.wait(period):
            if os.getpid() != self.pid:
                return
            try:
                self.sweep()
            except Exception as e:
                log.error("cometmp: supervisor sweep of %s: %s", self.directory, e)


__all__ = ["MAX_ENTRIES", "RECLAIM_GRACE", "Supervisor"]
