"""The consumer-offsets file: layout, atomic claims across processes, robust-lock repair."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import cometmp
from cometmp import offsets
from cometmp.offsets import OffsetStore
from conftest import child_env


def test_file_starts_with_magic_version_and_is_sparse(data_dir):
    os.makedirs(data_dir)
    store = OffsetStore(data_dir, writable=True)
    g = store.group("g", create=True)
    store.slot(g, "s", create=True)
    store.close()
    path = offsets.offsets_path(data_dir)
    with open(path, "rb") as f:
        head = f.read(8)
    assert int.from_bytes(head[:4], "little") == offsets.CM_OFS_MAGIC
    assert int.from_bytes(head[4:6], "little") == offsets.CM_OFS_VERSION
    st = os.stat(path)
    assert st.st_size == offsets.CM_OFS_FILE_BYTES
    assert st.st_blocks * 512 < 256 * 1024          # only touched pages are allocated


def test_other_magic_is_a_format_error_naming_the_path(data_dir):
    path = offsets.offsets_path(data_dir)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"\0" * offsets.CM_OFS_FILE_BYTES)
    with pytest.raises(cometmp.FormatError, match="offsets"):
        OffsetStore(data_dir, writable=True)


def test_ack_is_a_forward_only_cas_and_set_moves_anywhere(data_dir):
    os.makedirs(data_dir)
    store = OffsetStore(data_dir, writable=True)
    g = store.group("g", create=True)
    s = store.slot(g, "stream", create=True)
    assert store.next(s) is None
    assert store.ack(g, s, 10) is True
    assert store.ack(g, s, 4) is False and store.next(s) == 10
    r = store.resets(s)
    store.set(g, s, 2)
    assert store.next(s) == 2 and store.resets(s) == r + 1


def test_deleted_group_ids_are_never_reused(data_dir):
    os.makedirs(data_dir)
    store = OffsetStore(data_dir, writable=True)
    g1 = store.group("g", create=True)
    store.delete_group(g1)
    g2 = store.group("g", create=True)
    assert g2.id != g1.id and not store.group_live(g1)
    s = store.slot(g2, "x", create=True)
    with pytest.raises(cometmp.EntryNotFound):
        store.ack(g1, s, 5)                  # a stale handle cannot ack the new owner's slot


CLAIM = r"""
import sys, time
from cometmp.offsets import OffsetStore
root, go = sys.argv[1], float(sys.argv[2])
store = OffsetStore(root, writable=True)
while time.time() < go:
    pass
out = []
for i in range(20):
    g = store.group("group-%d" % i + "-" + "n" * 300, create=True)
    s = store.slot(g, "stream-%d" % (i % 3), create=True)
    out.append("%d:%d" % (g.id, s))
print(" ".join(out))
"""


def test_concurrent_processes_claim_each_group_and_slot_exactly_once(data_dir):
    import time

    os.makedirs(data_dir)
    go = time.time() + 0.5
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, data_dir, str(go)], env=child_env(),
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(o == outs[0] for o in outs)        # every process got the same ids and slots
    store = OffsetStore(data_dir, writable=False)
    groups = store.groups()
    assert len(groups) == 20 and all(len(g.slots) == 1 for g in groups)


DIE_HOLDING_LOCK = r"""
import os, signal, sys
from cometmp._ffi import lib
from cometmp.offsets import OffsetStore
store = OffsetStore(sys.argv[1], writable=True)
g = store.group("victim", create=True)
lib.cm_offsets_lock(store._h)
# a deletion left half done: DELETING, slots still live
import struct
from cometmp import offsets as o
struct.pack_into("=I", store._buf, o.CM_OFS_GROUPS_OFF + g.index * o.CM_OFS_GROUP_BYTES, o.CM_OFS_DELETING)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_holder_killed_inside_the_lock_is_repaired_by_the_next_locker(data_dir):
    os.makedirs(data_dir)
    store = OffsetStore(data_dir, writable=True)
    g = store.group("victim", create=True)
    store.slot(g, "s", create=True)
    p = subprocess.run([sys.executable, "-c", DIE_HOLDING_LOCK, data_dir], env=child_env(), timeout=60)
    assert p.returncode == -signal.SIGKILL
    g2 = store.group("other", create=True)        # takes the lock: EOWNERDEAD -> repair
    assert g2 is not None
    names = [x.name for x in store.groups()]
    assert names == ["other"]                      # the half-deleted group was finished
    assert store.slot(g, "s", create=False) is None
