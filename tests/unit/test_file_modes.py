"""I31: whatever the umask, every file cometmp creates is 0600 and every directory 0700.

Each test runs the whole life of a data directory under one umask: the directory and its
marker, a family file, streams crossing rotations (segments, indexes and state pages come
from temp files renamed in), a consumer group (the offsets file), an index rebuilt by a
reader and persisted, a state page rebuilt by a writer, and the registry key made when a
registry is first created.
"""

from __future__ import annotations

import os
import stat

import pytest

import cometmp
from cometmp import paths

from conftest import segment_files, small_config


def modes(root: str) -> dict[str, int]:
    out = {root: stat.S_IMODE(os.lstat(root).st_mode)}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[p] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


@pytest.fixture(params=[0o000, 0o022, 0o077, 0o277], ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_every_file_is_0600_and_every_directory_0700_whatever_the_umask(tmp_path, umask):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("fam", shards=2)
        for i in range(300):
            lg.append(os.urandom(8000), key=str(i))           # ~1.2 MiB per shard: rotations
        c.append("plain", [b"p"] * 10)
        con = cometmp.Consumer(c, group="g")
        con.ack(con.read("fam:shard:*", timeout=0))
    stream = paths.shard_stream("fam", 0)
    sealed = segment_files(root, stream)
    assert len(sealed) >= 2
    os.unlink(sealed[0][1][:-4] + paths.INDEX_SUFFIX)        # a reader rebuilds and persists it
    os.unlink(os.path.join(paths.stream_dir(root, "plain"), paths.STATE))   # a writer rebuilds it
    with cometmp.Client(root, config=small_config()) as c:
        c.read(stream, sealed[1][0] - 1)
        c.append("plain", [b"q"])
    assert os.path.exists(sealed[0][1][:-4] + paths.INDEX_SUFFIX)
    from cometmp.registry import shm_name

    shm_name(root, create=True)                              # the registry key (I33a)
    found = modes(root)
    kinds = {os.path.basename(p).rsplit(".", 1)[-1] for p in found}
    assert {"seg", "idx", "json", "state", "offsets", "key"} <= kinds
    wrong = {p: f"{m:04o}" for p, m in found.items()
             if m != (0o700 if os.path.isdir(p) else 0o600)}
    assert not wrong, f"umask {umask:03o}: {wrong}"
