"""The ack window's update under the failpoint core (docs/ARCHITECTURE.md I44, §4.2
points ``window.switch``, ``window.fallocate``): an update that fails before its switch
leaves the old window current, and the error is a StorageError naming the step and file."""

from __future__ import annotations

import os
import subprocess
import sys

import failpoints
from conftest import child_env

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWITCH_FAIL = r"""
import sys
sys.path.insert(0, sys.argv[2])
import failpoints
failpoints.bootstrap(sys.argv[3])
import cometmp
from cometmp import window as W
wf = W.WindowFile(sys.argv[1], writable=True)
wf.store(3, 7, 1, W.WindowState(100, {101}))              # the old state (1st evaluation passes)
try:
    wf.store(3, 7, 1, W.WindowState(102, {103, 104}))     # fails before its switch
except cometmp.StorageError as e:
    print("refused:", e)
st = wf.load(3, 7, 1)
print(st.base, sorted(st.acked))
"""


def test_an_update_stopped_before_its_switch_leaves_the_old_window(tmp_path):
    env = dict(child_env(), COMETMP_FAILPOINT="window.switch:2:EIO")
    r = subprocess.run([sys.executable, "-c", SWITCH_FAIL, str(tmp_path), TESTS, failpoints.build()],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert out[0].startswith("refused: switch window copy") and "windows" in out[0]
    assert out[1] == "100 [101]"
