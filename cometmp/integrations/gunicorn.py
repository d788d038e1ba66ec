"""gunicorn integration: plain hook functions, callable from your own hooks.

Use wholesale in ``gunicorn.conf.py``::

    from cometmp.integrations.gunicorn import *   # noqa: F401,F403

or call them from your own hooks (each takes gunicorn's own arguments), or run
``gunicorn -c python:cometmp.integrations.gunicorn_conf -w 4 app:app``. The data
directory is ``$COMETMP_DIR`` or ``cometmp.configure(path)`` (call it in the config).

Which process each hook runs in (docs/INTEGRATIONS.md):

=====================  ==========  =================================================
hook                   process     what cometmp does
=====================  ==========  =================================================
``nworkers_changed``   master      start the Supervisor (first call, old=None); set
                                   processCount on TTIN/TTOU/HUP; COMETMP_PROMETHEUS=1:
                                   enable_prometheus (before a --preload app loads)
``on_starting``        master      start the Supervisor if nworkers_changed did not
``post_fork``          worker      join the registry: take a slot (or wait for one);
                                   COMETMP_PROMETHEUS=1: enable_prometheus
``worker_exit``        worker      leave: the slot becomes VACANT for the replacement
                       (master)    (if gunicorn calls it in the master: report death)
``child_exit``         master      report the death (also SIGKILL/OOM/timeout)
``on_exit``            master      deregister; the last master unlinks the registry
=====================  ==========  =================================================

Every hook catches its own errors: a failure is logged and degrades that worker to
standalone (it still writes correctly); it never raises into gunicorn, where an
exception in ``post_fork`` would halt the whole server. gunicorn is never imported.
"""

from __future__ import annotations

import functools
import logging
import os

from .. import registry
from ..prometheus import enable_from_environment
from ..supervisor import Supervisor

__all__ = ["child_exit", "nworkers_changed", "on_exit", "on_starting", "post_fork", "worker_exit"]

log = logging.getLogger("cometmp")

_supervisor: Supervisor | None = None


def _guard(fn):
    """Log and swallow any exception: a hook must never stop gunicorn."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - by design
            msg = f"cometmp: gunicorn hook {fn.__name__} failed in pid {os.getpid()}: {e!r}"
            server = args[0] if args else None
            glog = getattr(server, "log", None)
            try:
                (glog.error if glog is not None else log.error)(msg)
            except Exception:
                log.error(msg)
            return None
    return wrapper


def _master_supervisor(server, count: int | None = None) -> Supervisor | None:
    global _supervisor
    sup = _supervisor
    if sup is not None and sup.pid == os.getpid():
        return sup
    directory = registry.configured_directory()
    if directory is None:
        log.warning("cometmp: COMETMP_DIR is not set and cometmp.configure() was not called; "
                    "workers run standalone")
        return None
    cfg = getattr(server, "cfg", None)
    if count is None:
        count = getattr(server, "num_workers", None) or getattr(cfg, "workers", 1)
    uid = getattr(cfg, "uid", None)
    gid = getattr(cfg, "gid", None)
    _supervisor = Supervisor(directory, int(count), uid=uid, gid=gid).start()
    return _supervisor


@_guard
def _prometheus(server):
    """COMETMP_PROMETHEUS=1: prometheus_client values into the data directory (either
    process; its own guard, so a failure here never stops the registry's hooks)."""
    enable_from_environment()


@_guard
def nworkers_changed(server, new_value, old_value):
    """Master: gunicorn's worker count changed (startup: old_value None; TTIN/TTOU).
    At startup it runs before a --preload app is imported: metrics enabled here."""
    if old_value is None:
        _prometheus(server)
    sup = _master_supervisor(server, new_value)
    if sup is not None and old_value is not None and new_value:
        sup.set_process_count(int(new_value))


@_guard
def on_starting(server):
    """Master: before listeners; creates (or rebuilds a stale) registry."""
    _prometheus(server)
    _master_supervisor(server)


@_guard
def post_fork(server, worker):
    """Worker, right after fork: take a slot. Failure: this worker runs standalone."""
    _prometheus(server)
    registry.join()


@_guard
def worker_exit(server, worker):
    """Worker (graceful exit): vacate the slot. In the master (gunicorn's ESRCH path):
    report the death instead."""
    if getattr(worker, "pid", None) == os.getpid() or _supervisor is None or \
            _supervisor.pid != os.getpid():
        registry.leave()
    else:
        _supervisor.child_exited(worker.pid)


@_guard
def child_exit(server, worker):
    """Master, after waitpid (SIGKILL and OOM included): the slot becomes VACANT now."""
    sup = _supervisor
    if sup is not None and sup.pid == os.getpid():
        sup.child_exited(worker.pid)


@_guard
def on_exit(server):
    """Master, at shutdown: the last master unlinks the registry."""
    global _supervisor
    sup = _supervisor
    if sup is not None and sup.pid == os.getpid():
        _supervisor = None
        sup.close()
