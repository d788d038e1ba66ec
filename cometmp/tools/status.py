"""``cometmp status DIR``: the registry of a data directory, as a document.

Read-only and never registers (nor creates the registry key: a directory without one has
no registry; one it cannot read — another user's — fails with StorageError naming the key): it maps the registry, reads the table (under the
membership lock for at most 1 s, else racily) and checks each holder's liveness from
/proc (pid + start time, I21), so a killed worker shows ``alive: false`` at once,
before any sweep. cometmp/tools/cli.py prints it.

Document: ``directory``, ``registry`` (shm name or null), ``version``, ``process_count``,
``epoch``, ``families`` ({prefix: shard count}), ``slots`` (one item per slot
0..process_count-1, then waiting workers: ``pid``, ``process_id`` (null when waiting),
``state``, ``alive``, ``heartbeat_age_s``, ``shards``), ``unowned_shards``, ``masters``
(``master_pid``, ``alive``), ``stale`` (true when every master and worker of the
registry is dead: left over by a server that died uncleanly, rebuilt at the next start,
I24), ``dead_drafts`` (/dev/shm names of half-made registries whose creator died before
publishing, I24a; removed at the next start). Only ``slots`` items carry a ``pid`` key. ``shards`` are
shard numbers: a worker owns shard ``s`` of every family that has more than ``s`` shards
(the ownership function does not depend on the family's size).
"""

from __future__ import annotations

import json
import os
import time

from .. import paths
from ..errors import CometError, RegistryError
from ..registry import LIVE, STATE_NAMES, VACANT, ForeignRegistry, Registry, is_alive


def _families(directory: str) -> dict[str, int]:
    out = {}
    try:
        names = os.listdir(os.path.join(directory, paths.FAMILIES))
    except OSError:
        return out
    for n in sorted(names):
        if not n.endswith(".json"):
            continue
        try:
            doc = json.loads(paths.read_file(os.path.join(directory, paths.FAMILIES, n),
                                             paths.IN_SUBDIR))
            out[str(doc["prefix"])] = int(doc["shards"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def registry_status(directory: str | os.PathLike) -> dict:
    """The status document of ``directory``'s registry (see the module docstring)."""
    directory = os.path.abspath(os.fspath(directory))
    families = _families(directory)
    doc: dict = {"directory": directory, "registry": None, "version": None, "process_count": 0,
                 "epoch": None, "families": families, "slots": [], "unowned_shards": [],
                 "masters": [], "stale": False, "dead_drafts": []}
    try:
        reg = Registry.attach(directory)
    except ForeignRegistry:
        raise   # I33, I33a: a key or object someone else may control is reported, not hidden
    except RegistryError:
        doc["dead_drafts"] = _dead_drafts(directory)
        return doc
    try:
        try:
            snap = reg.snapshot(lock=True)
        except CometError:
            snap = reg.snapshot(lock=False)
        n = snap.process_count
        width = max(families.values(), default=n)
        owners = snap.owners(width)
        alive = {e.index: e.alive() for e in snap.entries}
        now = time.monotonic_ns()
        slots = []
        for e in snap.entries:
            if e.index >= n and e.state != LIVE:
                continue
            pid = e.pid if e.state == LIVE else (e.last_pid or None)
            slots.append({
                "pid": pid,
                "process_id": e.index if e.index < n else None,
                "state": STATE_NAMES.get(e.state, str(e.state)) if e.index < n or e.state != LIVE
                else "waiting",
                "alive": bool(alive[e.index]),
                "heartbeat_age_s": round((now - e.heartbeat_ns) / 1e9, 3)
                if e.state == LIVE and e.heartbeat_ns else None,
                "vacant_for_s": round((now - e.vacated_ns) / 1e9, 3) if e.state == VACANT else None,
                "shards": [s for s, o in enumerate(owners) if o == e.index and e.state == LIVE],
            })
        doc.update({
            "registry": reg.name, "version": reg.version, "process_count": n,
            "epoch": snap.epoch, "slots": slots,
            "unowned_shards": [s for s, o in enumerate(owners) if o < 0],
            "masters": [{"master_pid": pid, "alive": is_alive(pid, t)}
                        for _i, pid, t in reg.masters() if pid],
            "stale": reg.abandoned(),
            "dead_drafts": _dead_drafts(directory),
        })
        return doc
    finally:
        reg.close()


def _dead_drafts(directory: str) -> list[str]:
    from ..registry.key import read_key
    from ..registry.table import dead_drafts, shm_name

    if read_key(directory) is None:
        return []        # no key, so no registry name anyone could have drafted
    return dead_drafts(shm_name(directory))


def _drafts_line(doc: dict) -> str:
    d = doc.get("dead_drafts") or []
    return (f"  LEFTOVER: {len(d)} half-made registr{'y' if len(d) == 1 else 'ies'} of a creator "
            f"that died before publishing ({', '.join(d)}); the next start removes "
            f"{'it' if len(d) == 1 else 'them'}\n") if d else ""


def render_status(doc: dict) -> str:
    """Human-readable form of registry_status()."""
    if doc["registry"] is None:
        return f"{doc['directory']}: no registry (no server running)\n" + _drafts_line(doc)
    lines = [f"{doc['directory']}: registry {doc['registry']} v{doc['version']}, "
             f"processCount {doc['process_count']}, epoch {doc['epoch']}"]
    for s in doc["slots"]:
        pid = "-" if s["pid"] is None else s["pid"]
        who = "waiting" if s["process_id"] is None else f"slot {s['process_id']}"
        lines.append(f"  {who:>8}  pid {pid!s:>7}  {s['state']:<7} "
                     f"{'alive' if s['alive'] else 'gone ':<5}  shards {s['shards']}")
    if doc["unowned_shards"]:
        lines.append(f"  unowned shards (waiting for a replacement): {doc['unowned_shards']}")
    for m in doc["masters"]:
        lines.append(f"  master pid {m['master_pid']} {'alive' if m['alive'] else 'gone'}")
    if doc.get("stale"):
        lines.append("  STALE: every master and worker of this registry is dead (a server that "
                     "died uncleanly); the next start rebuilds it")
    return "\n".join(lines) + "\n" + _drafts_line(doc)
