"""uvicorn integration: the workers of ``uvicorn --workers N`` join the registry.

One line in the app module (it runs in each worker, where uvicorn imports the app)::

    import cometmp.integrations.uvicorn  # noqa: F401  (uvicorn --workers N: join the registry)

or call :func:`join` yourself (in a ``--factory``, or with ``workers=N`` for another
server that *spawns* its workers). The data directory is ``$COMETMP_DIR`` or
``cometmp.configure(path)`` called before the import.

Why uvicorn needs its own integration (docs/INTEGRATIONS.md "uvicorn"): its supervisor
(uvicorn/supervisors/multiprocess.py) starts each worker with multiprocessing's *spawn*
method, so a worker is a fresh interpreter, not a fork of a process that created the
registry, and the supervisor runs no hook of ours, neither at start nor when a worker
dies. So, as for uWSGI, everything happens in the workers:

- at the app's import, in a worker spawned by uvicorn's supervisor: ``registry.join(
  create_count=N)``. N is ``config.workers`` of the uvicorn Config the supervisor sent
  to this worker (multiprocessing hands it over as the process's target arguments), so
  every worker agrees on processCount without parsing the command line; the first
  worker creates the registry (or rebuilds one left by a server whose processes all
  died, I24). A worker takes the slot of the most recent dead worker first, else the
  first free one, so the survivors' ids never move and a restarted worker (uvicorn
  restarts dead workers, checking every 0.5 s) gets the id of the one it replaces.
- every worker's member thread (registry.membership) notices a dead peer (``kill -9``,
  OOM) from its /proc start time within 200 ms: its slot becomes VACANT, and after 1 s
  without a replacement its shards are adopted by the live workers.
- at a graceful exit (SIGTERM, SIGINT, a HUP restart, TTOU): uvicorn ends a worker
  stopped by a signal by re-raising that signal with its default action once the server
  has shut down (uvicorn/server.py ``capture_signals``), so no exit hook of Python runs
  there. Two ways to leave:

  * :class:`LeaveAtShutdown`, an ASGI middleware (``app.add_middleware(LeaveAtShutdown)``
    in FastAPI/Starlette, or ``app = LeaveAtShutdown(app)``): ``registry.leave()`` when
    the server's lifespan shutdown completes, after the last request; the last worker to
    leave unlinks the registry.
  * without it, the exit is seen as a death: the survivors' member threads vacate the
    slot within 200 ms (the replacement of a HUP restart takes it at once), and at
    shutdown the registry is left behind, shown stale by ``cometmp status`` and rebuilt
    at the next start (I24). Correct either way.

  A worker that ends without a signal (``sys.exit``) leaves from ``atexit``.

Anywhere else (the supervisor, a single ``uvicorn app:app`` process, a gunicorn worker
whose ``post_fork`` hook already joined, a script importing the app) the import does
nothing: a single process owns every shard anyway. (``--reload``'s one spawned child
joins, and owns every shard.) uvicorn is never imported here.
A failure is logged and leaves that worker standalone, which is still correct.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys

from .. import registry

__all__ = ["LeaveAtShutdown", "join", "spawned_worker_count"]

log = logging.getLogger("cometmp")

_atexit_registered = False


def spawned_worker_count() -> int | None:
    """The worker count of the uvicorn supervisor that spawned this process, or None if
    this process is not a worker spawned by uvicorn's multiprocess supervisor.

    Read from the uvicorn ``Config`` the supervisor passed to this child (uvicorn's
    ``_subprocess.get_subprocess``: ``spawn.Process(target=subprocess_started,
    kwargs={"config": config, ...})``), which multiprocessing keeps as the current
    process's arguments."""
    config_module = sys.modules.get("uvicorn.config")
    if config_module is None or multiprocessing.parent_process() is None:
        return None   # not a multiprocessing child of a process running uvicorn
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None) or {}
    config = kwargs.get("config")
    if not isinstance(config, config_module.Config):
        return None
    return int(config.workers)


def join(directory: str | os.PathLike | None = None, workers: int | None = None) -> int | None:
    """Join ``directory``'s registry (default: configured_directory()) as a worker of a
    server that spawns its workers; returns ``cometmp.worker_id()``.

    ``workers`` is processCount; by default it is the count of the uvicorn supervisor that
    spawned this process, and outside such a worker (no ``workers`` given) this does
    nothing and returns None. Never raises: a failure is logged and this worker runs
    standalone. Idempotent."""
    global _atexit_registered
    try:
        count = workers if workers is not None else spawned_worker_count()
        if count is None:
            return None
        wid = registry.join(directory, create_count=int(count))
        if not _atexit_registered:
            _atexit_registered = True
            atexit.register(_leave)
        return wid
    except Exception as e:  # noqa: BLE001 - never stop the server from starting
        log.error("cometmp: uvicorn worker pid %d could not join the registry; it runs "
                  "standalone: %r", os.getpid(), e)
        return None


class LeaveAtShutdown:
    """ASGI middleware: this worker leaves the registry when the server's lifespan
    shutdown completes (after its last request). Passes everything else through.
    Runs in the worker's event loop; leave() takes the membership lock (microseconds)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "lifespan":
            return await self.app(scope, receive, send)

        async def send_and_leave(message):
            if message.get("type") == "lifespan.shutdown.complete":
                _leave()
            await send(message)
        return await self.app(scope, receive, send_and_leave)


def _leave() -> None:
    try:
        registry.leave()
    except Exception as e:  # noqa: BLE001
        log.error("cometmp: uvicorn worker pid %d could not leave the registry: %r",
                  os.getpid(), e)


join()
