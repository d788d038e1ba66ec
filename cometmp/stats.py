"""Read-only statistics of a data directory, from files and state pages only.

Runs in any process (inspection commands never register anywhere and never write).
"""

from __future__ import annotations

import json
import os

from . import paths
from .errors import os_errors
from .shard import Reader, StateView


def _dir_bytes(directory: str) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, segment count) of a stream directory."""
    apparent = allocated = segments = 0
    with os_errors(directory, "list"):
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0, 0, 0
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        apparent += st.st_size
        allocated += st.st_blocks * 512
        if paths.parse_segment_name(e.name) is not None:
            segments += 1
    return apparent, allocated, segments


def stream_stats(root: str, name: str) -> dict:
    d = paths.stream_dir(root, name)
    state = StateView(d)
    apparent, allocated, segments = _dir_bytes(d)
    bases = paths.list_segment_bases(d)
    out = {
        "segments": segments,
        "file_bytes": apparent,
        "disk_bytes": allocated,
        "first_entry": bases[0] if bases else 0,      # the files decide (I27)
        "length": None,
        "state": "ok" if state.valid else "missing-or-invalid",
        "counters": {},
    }
    if state.valid:
        out["counters"] = state.counters()
    if state.live:
        out["length"] = state.committed()
    elif bases:
        # I27a: no writer keeps the page current (a stopped server, a copy): the files
        # decide, as for any reader (one walk of the newest segment)
        reader = Reader(d, name, 0, writable_index=False)
        try:
            out["length"] = reader.committed()
        finally:
            reader.close()
    state.close()
    return out


def directory_stats(root: str) -> dict:
    streams_root = paths.streams_dir(root)
    with os_errors(streams_root, "list streams in"):
        try:
            names = sorted(n for n in os.listdir(streams_root)
                           if paths.is_real_dir(os.path.join(streams_root, n)))   # I30
        except FileNotFoundError:
            names = []
    families = {}
    fam_dir = os.path.join(root, paths.FAMILIES)
    if os.path.isdir(fam_dir):
        for fn in sorted(os.listdir(fam_dir)):
            if fn.endswith(".json"):
                try:
                    doc = json.loads(paths.read_file(os.path.join(fam_dir, fn), paths.IN_SUBDIR))
                    families[doc["prefix"]] = {"shards": doc["shards"]}
                except (OSError, ValueError, KeyError):
                    families[fn[:-5]] = {"shards": None, "error": "unreadable family file"}
    streams = {n: stream_stats(root, n) for n in names}
    totals = {
        "streams": len(streams),
        "entries": sum((s["length"] or 0) - s["first_entry"] for s in streams.values()),
        "disk_bytes": sum(s["disk_bytes"] for s in streams.values()),
        "file_bytes": sum(s["file_bytes"] for s in streams.values()),
        "segments": sum(s["segments"] for s in streams.values()),
    }
    return {"path": root, "families": families, "streams": streams, "totals": totals}
