"""close() racing every other call never crashes (docs/ARCHITECTURE.md §11, handle lifetime).

Each race (close_race_driver.py) runs many iterations in a subprocess, so a SIGSEGV shows
up as a failed test that names the seed of the iteration that crashed; rerun one with
``python tests/multiprocess/close_race_driver.py RACE SEED 1 DIR`` after dividing the
printed seed by 100000 (the iteration is the remainder). Every racing call must succeed
or raise ClosedError; later calls must raise ClosedError.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

import cometmp

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "close_race_driver.py")

#: iterations per race in the default run (~500 in all: about a minute on 2 busy cores;
#: the soak variant runs 20 times as many)
RACES = {
    "acks": 40,
    "append": 40,
    "scan_after_close": 100,
    "scan": 80,
    "consumer": 60,
    "batches": 50,
    "retention": 50,
    "handler": 60,
    "views": 60,
}


def run_race(race: str, iterations: int, tmp_path, timeout: float) -> None:
    seed = int(os.environ.get("COMETMP_RACE_SEED", random.randrange(1, 1 << 30)))
    print(f"seed={seed}")
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, DRIVER, race, str(seed), str(iterations), str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = proc.stdout.splitlines()
    last = next((ln for ln in reversed(lines) if ln.startswith("seed=")), "seed=?")
    if proc.returncode < 0:
        pytest.fail(f"{race}: killed by {signal.Signals(-proc.returncode).name} at {last} "
                    f"(run seed={seed})\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"{race} at {last}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert lines[-1] == f"ok {iterations}"


@pytest.mark.parametrize("race", sorted(RACES))
def test_close_race_never_crashes(race, tmp_path):
    run_race(race, RACES[race], tmp_path, timeout=120)


@pytest.mark.soak
@pytest.mark.parametrize("race", sorted(RACES))
def test_close_race_soak(race, tmp_path):
    run_race(race, RACES[race] * 20, tmp_path, timeout=3600)
