"""uWSGI integration: ``uwsgi --master --processes N --enable-threads --import cometmp.integrations.uwsgi``.

(or ``import = cometmp.integrations.uwsgi`` in the ini). The data directory is
``$COMETMP_DIR`` or ``cometmp.configure(path)`` called before the import.

uWSGI has no master-side Python hook for a worker's death, so everything happens in
the workers (docs/INTEGRATIONS.md):

- ``postfork`` (each worker, after every fork or respawn): join the registry keyed by
  ``uwsgi.worker_id()`` (stable across respawns), so worker k always returns to slot
  k-1. The first worker creates the registry with processCount = ``uwsgi.numproc``
  (the configured maximum, so cheaper scaling does not re-route keys). Mules and the
  spooler (worker_id 0) are skipped: they run standalone.
- a daemon thread in every worker (needs ``--enable-threads`` on uWSGI 2.0) sweeps
  every 200 ms: a worker killed by ``kill -9``, harakiri or OOM is seen dead from its
  /proc start time, its slot becomes VACANT, and after 1 s without a respawn (cheaper)
  it is reclaimed and its shards adopted by the live workers.
- ``uwsgi.atexit`` (graceful exit, reload, cheaper): leave; the last worker to leave
  unlinks the registry.

With ``COMETMP_PROMETHEUS=1`` (env) the import (in the master, before the app is loaded
without lazy-apps) and every ``postfork`` call cometmp.metrics.enable_prometheus on the
data directory: the app's prometheus_client metrics live in its shared table.

Works with ``lazy-apps`` on and off (imported in a worker, it joins at once). A failure
is logged and leaves that worker standalone; it never stops uWSGI. Importing this
module outside uWSGI does nothing.
"""

from __future__ import annotations

import logging
import os

from .. import registry
from ..prometheus import enable_from_environment

__all__ = ["install", "postfork", "atexit"]

log = logging.getLogger("cometmp")
_installed = False


def postfork() -> None:
    """Runs in a worker (or mule) right after fork: take this worker's slot."""
    try:
        import uwsgi

        _prometheus()
        wid = int(uwsgi.worker_id())
        if wid <= 0:  # mule, spooler, master: standalone
            return
        registry.join(key=wid - 1, create_count=int(uwsgi.numproc))
    except Exception as e:  # noqa: BLE001 - never break uWSGI
        log.error("cometmp: uWSGI postfork in pid %d failed; worker runs standalone: %r",
                  os.getpid(), e)


def _prometheus() -> None:
    """COMETMP_PROMETHEUS=1: enable_prometheus on the data directory (logged, never raised)."""
    try:
        enable_from_environment()
    except Exception as e:  # noqa: BLE001 - never break uWSGI
        log.error("cometmp: %s=1 in pid %d: %r", "COMETMP_PROMETHEUS", os.getpid(), e)


def atexit() -> None:
    """Runs in a worker at graceful exit: vacate the slot (the last one unlinks)."""
    try:
        registry.leave()
    except Exception as e:  # noqa: BLE001
        log.error("cometmp: uWSGI atexit in pid %d failed: %r", os.getpid(), e)


def install() -> None:
    """Register the hooks with uWSGI (idempotent). Called at import inside uWSGI."""
    global _installed
    import uwsgi

    if _installed:
        return
    _installed = True
    try:
        from uwsgidecorators import postfork as _postfork_decorator

        _postfork_decorator(postfork)
    except ImportError:
        prev = getattr(uwsgi, "post_fork_hook", None)

        def chained() -> None:
            if prev is not None:
                prev()
            postfork()
        uwsgi.post_fork_hook = chained
    prev_atexit = getattr(uwsgi, "atexit", None)

    def chained_atexit() -> None:
        atexit()
        if prev_atexit is not None:
            prev_atexit()
    uwsgi.atexit = chained_atexit
    _prometheus()   # in the master before the app is loaded (no lazy-apps)
    if int(uwsgi.worker_id()) > 0:  # imported inside a worker (lazy-apps): join now
        postfork()


try:
    import uwsgi as _uwsgi  # noqa: F401  (only exists inside a uWSGI process)
except ImportError:
    pass
else:
    install()
