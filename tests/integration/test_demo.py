"""`cometmp demo`, the main job, run for real: each run checks only its own entries (so the
same --dir can be reused with any --shards), bad arguments exit 2 with one line, and a
Python without gunicorn is told exactly what to install."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys

import pytest

from conftest import PACKAGE_ROOT, child_env

HAS_GUNICORN = importlib.util.find_spec("gunicorn") is not None


def demo(*args: str, env=None, python=(sys.executable,), timeout=180):
    return subprocess.run([*python, "-m", "cometmp", "demo", *args], env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not HAS_GUNICORN, reason="gunicorn not installed")
def test_two_runs_on_the_same_dir_both_pass_even_with_another_shard_count(tmp_path):
    d = str(tmp_path / "demo")
    first = demo("--seconds", "2", "--dir", d, "--shards", "8")
    assert first.returncode == 0, first.stdout + first.stderr
    second = demo("--seconds", "2", "--dir", d, "--shards", "3", "--workers", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    for out in (first.stdout, second.stdout):
        assert "0 duplicates" in out and "nothing acknowledged was lost" in out
    assert "3 live workers own 8 of 8 shards" in first.stdout
    assert "2 live workers own 3 of 3 shards" in second.stdout
    families = sorted(os.listdir(os.path.join(d, "families")))
    assert len(families) == 2  # the first run's data is kept, next to the second's


@pytest.mark.parametrize("args, says", [
    (["--seconds", "0"], "--seconds must be between 1 and 86400, not 0"),
    (["--seconds", "-3"], "--seconds must be between 1 and 86400"),
    (["--seconds", "soon"], "--seconds: invalid float value: 'soon'"),
    (["--workers", "0"], "--workers must be between 1 and 64, not 0"),
    (["--shards", "0"], "--shards must be between 1 and 65536, not 0"),
    (["--shards", "70000"], "--shards must be between 1 and 65536, not 70000"),
    (["--threads", "0"], "--threads must be between 1 and 256, not 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_one_line(args, says):
    r = demo(*args, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_a_dir_that_is_not_a_data_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = demo("--dir", str(tmp_path), timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "not empty and not a cometmp data directory" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_without_gunicorn_it_says_what_to_install(tmp_path):
    """A real environment without gunicorn: the same interpreter with no site-packages
    (-S), given a directory holding every installed package except gunicorn."""
    lib = tmp_path / "site"
    lib.mkdir()
    for sp in site.getsitepackages():
        for name in os.listdir(sp):
            if name.startswith("gunicorn") or name.endswith(".pth") or (lib / name).exists():
                continue
            os.symlink(os.path.join(sp, name), lib / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, str(lib)]))
    probe = subprocess.run([sys.executable, "-S", "-c", "import cometmp, gunicorn"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert "No module named 'gunicorn'" in probe.stderr  # the environment is what we claim
    r = demo("--seconds", "1", "--dir", str(tmp_path / "d"), env=env,
             python=(sys.executable, "-S"), timeout=60)
    assert r.returncode == 1
    assert r.stderr == "the demo needs gunicorn: pip install 'cometmp[demo]'\n"
    assert not (tmp_path / "d").exists()  # nothing created before the check
