"""The prefault thread of ``native/prealloc.c``, seen from Python: what it did.

Who may call: anyone; it reads this process's counts and never blocks. The thread
itself is the C core's (one per process and fork generation, I10); Python never
starts, stops or feeds it.
"""

from __future__ import annotations

from ._ffi import ffi, lib

__all__ = ["stats"]

_KEYS = ("requests", "bytes_populated", "failures", "thread_cpu_ns")


def stats() -> dict[str, int]:
    """This process's prefault-thread counts since its thread started (requests done,
    bytes populated, failed populates, the thread's CPU time); zeros on a core built
    without them (an older baseline build a benchmark compares against)."""
    if not hasattr(lib, "cm_prefault_stats"):
        return dict.fromkeys(_KEYS, 0)
    st = ffi.new("cm_prefault_stats_t *")
    lib.cm_prefault_stats(st)
    return {k: int(getattr(st, k)) for k in _KEYS}
