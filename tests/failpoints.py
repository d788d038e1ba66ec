"""The failpoint build of the core, for the crash tier (CONVENTIONS 12, issue 9 item 8).

The default build (``pip install``) has no failpoints: ``native/failpoint.h`` compiles
``CM_FAILPOINT(name)`` to the constant 0. The tests build a second copy of
``cometmp._cffi`` with ``-DCM_FAILPOINTS`` (``native/build_ffi.py``
``make_builder(failpoints=True)``) into a cache directory of their own, keyed by a hash of
``native/`` so an edited core is rebuilt, and load it in a child process *as*
``cometmp._cffi`` before ``cometmp`` is imported (``bootstrap``). The package's other
extensions (``_appender``, ``_reader``) reach the core through its function table, so they
go through the failpoint copy too. Nothing in the installed package changes.

In that child ``COMETMP_FAILPOINT="rotate.map:3:ENOSPC"`` (comma-separated, an optional
fourth field = how many consecutive evaluations fail) makes the 3rd evaluation of the point
fail with that errno; counters restart whenever the variable changes. The Python-only
steps (retention's deletions, read-only opens and maps, paths.write_file_atomic) have points too (cometmp/failpoint.py), live only when this
core is the one loaded. The points: docs/ARCHITECTURE.md §4.1 (rotation, tested by
crash/test_rotation_faults.py) and §4.2 (every other path, crash/test_injected_faults.py).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

NATIVE = pathlib.Path(__file__).resolve().parent.parent / "native"

#: every failpoint of the rotation path (native/shard.c rotate_locked, remove_new_segment)
ROTATION_POINTS = ("rotate.seal_fsync", "rotate.index_create", "rotate.segment_create", "rotate.map",
                   "rotate.rename", "rotate.fsync", "rotate.after_segment_create", "rotate.remove")

#: the spare's points (native/spare.c, shard.c take_spare): they take the spare away, so the
#: rotation creates its files itself; never an error (crash/test_rotation_faults.py)
SPARE_POINTS = ("spare.create", "rotate.spare")
#: a spec part that takes every spare away, and the points only a rotation without one
#: reaches (it creates its files: cm_index_create, cm_segment_create_tmp, the mmaps); a
#: case of one of these points adds the part, so its rotations really go that way
SYNC_ROTATION = "rotate.spare:1:EIO:1000000000"
SYNC_ROTATION_POINTS = frozenset({
    "rotate.map", "segment.create", "segment.truncate", "segment.fallocate", "segment.write",
    "segment.fsync", "index.create", "index.fallocate", "index.write", "index.fsync",
    "index.rename"})


def on_sync_rotation(spec: str) -> str:
    """`spec`, plus SYNC_ROTATION when its point is only on that path."""
    return f"{spec},{SYNC_ROTATION}" if spec.split(":")[0] in SYNC_ROTATION_POINTS else spec

#: the steps of paths.write_file_atomic, each a point under the caller's prefix
PERSIST_STEPS = ("create", "write", "fsync", "rename", "dir_fsync")

#: every other failpoint (docs/ARCHITECTURE.md §4.2), by the scenario of
#: crash/injected_fault_worker.py that reaches it, with the durability mode it needs
PATH_POINTS = {
    "write": [("append.alloc", "none"), ("append.syncfs", "none"), ("append.fsync", "always"),
              ("segment.create", "none"), ("segment.truncate", "none"),
              ("segment.fallocate", "none"), ("segment.write", "none"),
              ("segment.fsync", "always"), ("index.create", "none"),
              ("index.fallocate", "none"), ("index.write", "none"), ("index.fsync", "always"),
              ("index.rename", "none")],
    "open": [("open.mkdir", "none"), ("open.dir", "none"), ("open.flock", "none"), ("open.state", "none"),
             ("open.state_read", "none"), ("open.state_map", "none"), ("open.segment", "none"),
             ("open.segment_map", "none"), ("open.index", "none"), ("open.index_map", "none")],
    "open-rebuild": [("open.state_create", "none"), ("open.state_write", "none"),
                     ("open.state_rename", "none"), ("index.create", "none"),
                     ("index.fallocate", "none"), ("index.write", "none"),
                     ("index.rename", "none")],
    "create": [("json.create", "none"), ("json.write", "none"), ("json.fsync", "none"),
               ("json.rename", "none"), ("json.dir_fsync", "none"),
               ("open.mkdir", "none"), ("open.state_create", "none"), ("segment.create", "none"),
               ("segment.truncate", "none"), ("segment.fallocate", "none"),
               ("segment.write", "none"), ("segment.fsync", "none"), ("segment.rename", "none"),
               ("segment.dir_fsync", "none")],
    "recovery": [("open.flock", "none"), ("recover.restore_size", "none"), ("recover.fsync", "none")],
    "recovery-header": [("recover.header_repair", "none")],
    "group": [("offsets.create", "none"), ("offsets.truncate", "none"), ("offsets.write", "none"),
              ("offsets.fsync", "none"), ("offsets.rename", "none"),
              ("members.create", "none"), ("members.write", "none"), ("members.fsync", "none"),
              ("members.link", "none"), ("members.dir_fsync", "none")],
    "ack": [("offsets.open", "none"), ("offsets.map", "none")],
    "app-metrics": [(f"appmetrics.{step}", "none") for step in
                    ("create", "write", "fallocate", "fsync", "link", "dir_fsync")],
    "ack-window": [(f"window.{step}", "none") for step in
                   ("create", "write", "fsync", "link", "dir_fsync", "fallocate", "switch")],
    "retention": [("retention.rename", "none"), ("retention.unlink_index", "none"),
                  ("retention.unlink_segment", "none")],
    "marker": [("json.create", "none"), ("json.write", "none"), ("json.fsync", "none"),
               ("json.rename", "none"), ("json.dir_fsync", "none"), ("open.flock", "none")],
    "readonly": [("read.state_open", "none"), ("read.state_map", "none"),
                 ("read.segment_open", "none"), ("read.segment_map", "none"),
                 ("read.index_open", "none"), ("read.index_map", "none")],
    "index-persist": [(f"index.persist.{step}", "none") for step in PERSIST_STEPS],
    "recover-index": [("open.flock", "none")] +
                     [(f"index.persist.{step}", "none") for step in PERSIST_STEPS],
}
#: the prefault thread's points (crash/test_prefault_faults.py), never an error: a failed
#: populate (native/prealloc.c) leaves the pages to the appender; a failed extension of a
#: stream's reservation (native/headroom.c) leaves the next one to the appender
PREFAULT_POINTS = ("prefault.populate", "headroom.alloc")
#: points whose failure the engine absorbs without an error: a derived file is rebuilt
ABSORBED = {"open.index", "read.index_open", "read.index_map"}
#: consecutive failures a case needs before the API sees one: append.alloc reserves
#: headroom ahead of the tail, and a failed headroom reservation is retried silently
RUN_LENGTH = {"append.alloc": 6}


def build() -> str:
    """Path of the failpoint build's ``_cffi`` shared object (built once per source hash)."""
    spec = importlib.util.spec_from_file_location("_cometmp_build_ffi", NATIVE / "build_ffi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_variant("failpoints")


def bootstrap(so_path: str) -> None:
    """In a fresh process, before ``import cometmp``: use the failpoint core."""
    assert "cometmp" not in sys.modules, "bootstrap must run before cometmp is imported"
    spec = importlib.util.spec_from_file_location("cometmp._cffi", so_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["cometmp._cffi"] = mod
