"""A full disk raises DiskFull, leaves no partial record, and appends resume once space
returns. Runs on a real 4 MiB tmpfs (needs root, as in CI)."""

from __future__ import annotations

import errno
import os

import pytest

import cometmp

from conftest import oracle_walk, segment_files, small_config

STREAM = "full:shard:0000"


@pytest.fixture
def small_fs(tmpfs):
    return tmpfs("size=4m")


def fill_until_full(lg, acked: list[bytes], size: int, batch: int = 1) -> cometmp.DiskFull:
    for i in range(100_000):
        items = [os.urandom(size) for _ in range(batch)]   # incompressible
        try:
            if batch == 1:
                lg.append(items[0])
            else:
                lg.append_many(items)
        except cometmp.DiskFull as e:
            acked += items[:e.appended]
            return e
        acked += items
    raise AssertionError("the 4 MiB filesystem never filled up")


def check_clean(root: str, acked: list[bytes]) -> None:
    """No partial record anywhere: the oracle finds exactly the acknowledged entries."""
    got = []
    for _base, path in segment_files(root, STREAM):
        recs, damage = oracle_walk(path)
        assert not damage, f"{path}: {damage}"
        got += [r.payload for r in recs]
    assert got == acked
    leftovers = [n for n in os.listdir(os.path.join(root, "streams", STREAM)) if n.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("size,batch", [(16 * 1024, 1), (3000, 40)])
def test_disk_full_raises_writes_nothing_partial_and_appends_resume(small_fs, size, batch):
    root = os.path.join(small_fs, "log")
    filler = os.path.join(small_fs, "filler")
    with open(filler, "wb") as f:
        f.write(os.urandom(1536 * 1024))
    cfg = small_config(preallocate_bytes=64 * 1024)
    acked: list[bytes] = []
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("full", shards=1)
        e = fill_until_full(lg, acked, size, batch)
        assert isinstance(e, cometmp.DiskFull) and e.errno == errno.ENOSPC, e
        assert small_fs in str(e)                        # the message names the path
        assert c.length(STREAM) == len(acked)
        # still full: retrying fails the same way and still writes nothing
        with pytest.raises(cometmp.DiskFull):
            for _ in range(3):
                lg.append(os.urandom(size * batch))
        assert c.length(STREAM) == len(acked)
        assert c.stats()["streams"][STREAM]["counters"]["disk_full"] >= 1
        check_clean(root, acked)
        assert [m.data for m in c.scan(STREAM)] == acked
        # space returns: appends resume, with the next entry number (no gap, no reuse)
        os.unlink(filler)
        more = [os.urandom(size) for _ in range(20)]
        ids = [lg.append(p).entry for p in more]
        assert ids == list(range(len(acked), len(acked) + 20))
        acked += more
    check_clean(root, acked)
    with cometmp.Client(root, config=cfg) as c:             # and it all survives a reopen
        assert [m.data for m in c.scan(STREAM)] == acked
        assert c.log("full", shards=1).append(b"last").entry == len(acked)
