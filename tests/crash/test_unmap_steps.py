"""A sealed segment's mapping is unmapped by the prefault thread in steps, yielding its CPU
between them (native/prealloc.c unmap_in_steps), and a fork between two steps leaves the
child nothing of it: the child's fork handler unmaps what the parent had still mapped. The
thread is paused there by the failpoint build's `prefault.unmap:1:PAUSE` (tests/failpoints.py)
in a child process; tests/crash/unmap_fork_writer.py is the writer. A step that fails
(an errno at the same point, as a partial munmap fails with ENOMEM at vm.max_map_count)
leaves nothing mapped either: the rest goes in one call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cometmp

import failpoints
from conftest import child_env, oracle_chain

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unmap_fork_writer.py")
SEGMENT = 8 << 20
STREAM = "um:shard:0000"


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


def run_writer(fp_core: str, tmp_path, *spec: str) -> tuple[str, dict]:
    root, resume, out = str(tmp_path / "log"), str(tmp_path / "resume"), str(tmp_path / "res.json")
    args = [fp_core, root, resume, out, *spec]
    print("replay:", sys.executable, WRITER, *args)
    p = subprocess.run([sys.executable, WRITER, *args], env=child_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out) as f:
        return root, json.load(f)


def check_log(root: str, entries: int) -> None:
    """The log reads back whole by the default build and the pure-Python reader."""
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = SEGMENT
    with cometmp.Client(root, config=cfg) as c:
        data = [m.data for m in c.scan(STREAM)]
    assert data == [b"first"] + [b"u" * 1000] * (entries - 1)
    assert oracle_chain(root, STREAM) == entries


def test_a_child_forked_between_two_unmap_steps_keeps_no_mapping_of_the_sealed_segment(fp_core, tmp_path):
    root, res = run_writer(fp_core, tmp_path)
    assert res["mapped_before"] == SEGMENT          # the active segment, mapped whole
    assert 0 < res["mapped_paused"] < SEGMENT       # paused after a step: part still mapped
    assert res["child_exit"] == 0, "the forked child kept a mapping of the sealed segment"
    assert res["mapped_after"] == 0                 # the steps after the pause finished it
    check_log(root, res["entries"])


@pytest.mark.parametrize("err", ["EIO", "ENOMEM"])
def test_a_failed_unmap_step_still_leaves_nothing_of_the_sealed_segment_mapped(fp_core, tmp_path, err):
    root, res = run_writer(fp_core, tmp_path, f"prefault.unmap:1:{err}")
    assert res["mapped_before"] == SEGMENT
    assert res["mapped_after"] == 0
    check_log(root, res["entries"])
