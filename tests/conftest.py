"""Shared fixtures and helpers of cometmp's test tiers (unit/, crash/, ...).

Everything here works on real files under ``tmp_path`` and real processes: no mocks.
``cometmp.format`` (the pure-Python reader) is the oracle the tests check the C core
against.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import sys

import pytest

import cometmp
from cometmp import format as fmt
from cometmp import paths

MiB = 1024 * 1024

#: the directory that holds the ``cometmp`` package the tests import (a source tree
#: with the extensions built in place, or site-packages after ``pip install .``)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))


def small_config(**storage) -> cometmp.Config:
    """Config with 1 MiB segments (the smallest allowed) so tests cross rotations cheaply."""
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1 * MiB
    cfg.storage.preallocate_bytes = 256 * 1024
    for k, v in storage.items():
        setattr(cfg.storage, k, v)
    return cfg


@pytest.fixture
def cfg() -> cometmp.Config:
    return small_config()


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "log")


def child_env() -> dict:
    """Environment for a Python child process that must import the same cometmp."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_python(code: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(), timeout=timeout,
                          capture_output=True, text=True, **kw)


def stream_path(root: str, stream: str) -> str:
    return paths.stream_dir(root, stream)


def segment_files(root: str, stream: str) -> list[tuple[int, str]]:
    """(base, path) of the segments of a stream, oldest first."""
    d = stream_path(root, stream)
    return [(b, os.path.join(d, paths.segment_name(b))) for b in paths.list_segment_bases(d)]


def oracle_walk(path: str) -> tuple[list[fmt.Record], list[fmt.Damage]]:
    """All records and damage of a segment file, according to the pure-Python reader."""
    with open(path, "rb") as f:
        buf = f.read()
    assert fmt.segment_header_ok(buf), f"{path}: bad segment header"
    recs, damage = [], []
    for item in fmt.walk_segment(buf):
        (recs if isinstance(item, fmt.Record) else damage).append(item)
    return recs, damage


def tree_fingerprint(root: str) -> dict[str, tuple]:
    """Every file and directory under root with its content hash, size, mode, mtime and
    ctime: equal before/after proves nothing was modified, created or deleted."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            out[os.path.relpath(p, root)] = (digest, st.st_size, st.st_mode, st.st_mtime_ns,
                                             st.st_ctime_ns)
    return out


def payload_for(tag: str, n: int, size: int) -> bytes:
    """A deterministic payload of ``size`` bytes that names its writer and sequence."""
    head = f"{tag}:{n}:".encode()
    if size <= len(head):
        return head[:size] if size else b""
    rnd = random.Random(f"{tag}:{n}")
    return head + rnd.randbytes(size - len(head))
