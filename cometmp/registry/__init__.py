"""The worker registry of a prefork server: slots, shard ownership, membership.

A prefork runtime, apart from the storage engine: the engine asks which shards this
process owns through cometmp.ownership, and this package answers (membership.py
installs the Runtime). Modules:

- ``table``       the shared-memory table of one data directory (native/registry.c)
- ``key``         DIR/registry.key, the secret the table's shm name is keyed with (I33a)
- ``membership``  this process's membership: join/leave/worker_id, the member thread

The master side is cometmp.supervisor; ``cometmp status`` reads the table read-only.
Everything documented as ``cometmp.registry.X`` is re-exported here.

The design essay (slot states, ownership, invariants I20–I24) heads table.py.
"""

from __future__ import annotations

from .membership import (
    configure,
    configured_directory,
    join,
    leave,
    sweep,
    worker_id,
)
from .table import (
    ENTRY,
    ENV_DIR,
    ENV_FAILPOINTS,
    FREE,
    LIVE,
    LOCK_TIMEOUT_MS,
    MAX_ENTRIES,
    MAX_PROCESS_COUNT,
    MEMBER_PERIOD,
    RECLAIM_GRACE,
    SHM_PREFIX,
    STATE_NAMES,
    VACANT,
    Entry,
    ForeignRegistry,
    Registry,
    Snapshot,
    check_filesystem,
    in_use_or_young,
    is_alive,
    shm_name,
    start_ticks,
)

__all__ = [
    "ENV_DIR", "ENV_FAILPOINTS", "FREE", "LIVE", "LOCK_TIMEOUT_MS", "MAX_ENTRIES",
    "MAX_PROCESS_COUNT", "MEMBER_PERIOD", "RECLAIM_GRACE", "SHM_PREFIX", "STATE_NAMES",
    "VACANT", "ENTRY", "Entry", "ForeignRegistry", "Registry", "Snapshot", "check_filesystem", "configure",
    "configured_directory", "in_use_or_young", "is_alive", "join", "leave", "shm_name",
    "start_ticks", "sweep", "worker_id",
]
