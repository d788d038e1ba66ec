"""Failpoints of the Python-only steps, for the test build (issue 9 item 8).

Who may call: any module, any thread. The same ``COMETMP_FAILPOINT`` variable, parser
and counters as the C core's points (``native/failpoint.c``): ``fail(name)`` asks the
loaded core through ``cm_failpoint_eval``. They are live only when the loaded core is
the failpoint build (``tests/failpoints.py``), which ``cm_failpoints_compiled()`` says
once at import; in the default build ``fail`` returns at its first line, whatever the
environment holds. Points: docs/ARCHITECTURE.md §4.2.
"""

from __future__ import annotations

import os

from ._ffi import lib

ACTIVE = bool(lib.cm_failpoints_compiled())


def fail(name: str, path: str) -> None:
    """Raise the OSError an OS call on ``path`` would, when point ``name`` fires now."""
    if not ACTIVE:
        return
    err = lib.cm_failpoint_eval(name.encode())
    if err:
        raise OSError(err, f"{os.strerror(err)} (failpoint {name})", path)
