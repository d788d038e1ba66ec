"""The prefault thread of ``native/prealloc.c``, seen from Python: what it did.

Who may call: anyone; ``stats`` reads this process's counts and never blocks, ``drain``
waits (GIL released) for the requests queued before it. The thread
itself is the C core's (one per process and fork generation, I10); Python never
starts, stops or feeds it.
"""

from __future__ import annotations

from ._ffi import ffi, lib

__all__ = ["drain", "stats"]

_KEYS = ("requests", "bytes_populated", "failures", "thread_cpu_ns", "extensions",
         "extension_failures")


def stats() -> dict[str, int]:
    """This process's prefault-thread counts since its thread started (populate requests
    done, bytes populated, failed populates, the thread's CPU time, and the extensions of
    streams' disk reservations it ran for their appenders, native/headroom.c, with how
    many of those failed); zeros on a core built without them (an older baseline build a
    benchmark compares against)."""
    if not hasattr(lib, "cm_prefault_stats"):
        return dict.fromkeys(_KEYS, 0)
    st = ffi.new("cm_prefault_stats_t *")
    lib.cm_prefault_stats(st)
    return {k: int(getattr(st, k)) if hasattr(st, k) else 0 for k in _KEYS}


def drain() -> None:
    """Return once every request this process queued for the thread before the call ran
    (populates, unmaps, spares, extensions of reservations): for a benchmark or test that
    measures a state no background step is still changing. A no-op on a core without it."""
    if hasattr(lib, "cm_prefault_drain"):
        lib.cm_prefault_drain()
