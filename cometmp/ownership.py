"""Which shards this process owns, at which epoch: the seam between the storage engine
and a prefork runtime.

Runs in any process; thread safe. The engine asks through this module — ``client.Log``
for its ``key=None`` route and for ``strict_ownership``, ``retention`` for the streams
whose retention this process runs. A runtime answers by installing a :class:`Runtime`
with :func:`install`: ``cometmp.registry`` (the worker registry of gunicorn, uWSGI and
hand-made fork pools) does so when it is imported. Nothing in the engine imports a
runtime, and no runtime touches an engine object: when this process's ownership changes
(join, leave, a fork, an epoch bump seen by the member thread) the runtime calls
:func:`changed` and every live Log re-routes itself.

Without a runtime, or in a process that is not a member of the directory's pool,
:func:`placement` returns None and the process owns every shard (standalone).

Correctness never depends on this seam: every shard has its own robust writer lock (I5),
so a stale answer costs contention, never data.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Callable, NamedTuple, Protocol

log = logging.getLogger("cometmp")

__all__ = ["Placement", "Runtime", "changed", "directory_key", "epoch_source", "install",
           "placement", "track"]

DirectoryKey = tuple  # (st_dev, st_ino) of a data directory, or () when it cannot be stat'ed


class Placement(NamedTuple):
    """This process's place in a directory's pool, as of ``epoch``.

    ``index`` is the processID (0 .. process_count-1), or None while the process waits
    for a slot (it then owns nothing). ``owned(shards)`` lists the shards of a family of
    ``shards`` shards this process owns (empty when it owns none of them).
    """

    epoch: int
    index: int | None
    process_count: int
    owned: Callable[[int], list[int]]


class Runtime(Protocol):
    """What a prefork runtime provides (cometmp.registry's membership is one)."""

    def placement(self, key: DirectoryKey) -> Placement | None:
        """This process's placement in the pool of the directory ``key``; None when it is
        not a member of that directory's pool."""

    def epoch_source(self, key: DirectoryKey) -> tuple[object, int] | None:
        """Where the pool's shared 64-bit ownership epoch lives: (a buffer over the shared
        mapping, byte offset), which the C appender holds and watches before routing; or
        None. No address travels as an int."""


_runtime: Runtime | None = None
_logs: "weakref.WeakSet" = weakref.WeakSet()
_lock = threading.Lock()


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the answerer of this process (None: standalone), then re-route."""
    global _runtime
    _runtime = runtime
    changed()


def directory_key(path: str) -> DirectoryKey:
    """The identity of a data directory as runtimes know it (same device and inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_dev, st.st_ino)


def placement(key: DirectoryKey) -> Placement | None:
    """This process's placement for directory ``key`` (see Runtime.placement)."""
    rt = _runtime
    if rt is None or not key:
        return None
    return rt.placement(key)


def epoch_source(key: DirectoryKey) -> tuple[object, int] | None:
    rt = _runtime
    if rt is None or not key:
        return None
    return rt.epoch_source(key)


def track(lg) -> None:
    """Called by a Log when it is created: it re-routes on every :func:`changed`."""
    with _lock:
        _logs.add(lg)


def changed() -> None:
    """Ownership may have changed: every live Log of this process re-routes (a Log whose
    client is closed ignores it)."""
    with _lock:
        logs = list(_logs)
    for lg in logs:
        try:
            lg._reroute(watch=True)
        except Exception as e:  # noqa: BLE001 - a stale route is only contention
            log.debug("cometmp: re-routing %r: %s", lg, e)
