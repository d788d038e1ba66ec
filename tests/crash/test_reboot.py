"""After a reboot the state page may be older than the segment bytes on disk (it is
never fsynced): recovery must not trust it (I16) and must keep every complete record."""

from __future__ import annotations

import os
import shutil

import cometmp
from cometmp import format as fmt
from cometmp.shard import Writer

from conftest import small_config


def _stream_dir(root: str) -> str:
    return os.path.join(root, "streams", "r:shard:0000")


def test_stale_state_page_from_before_a_reboot_loses_no_complete_record(tmp_path):
    root = str(tmp_path / "log")
    cfg = small_config()
    with cometmp.Client(root, cfg) as c:
        log = c.log("r", shards=1)
        first = [log.append(b"early-%d" % i) for i in range(50)]
        shutil.copy(os.path.join(_stream_dir(root), "state"), str(tmp_path / "stale"))
        later = [log.append(b"late-%d" % i) for i in range(50)]
    # the machine "crashed": the state page on disk is the old copy, from another boot
    stale = bytearray(open(tmp_path / "stale", "rb").read())
    stale[fmt.CM_STATE_OFF_BOOT_ID:fmt.CM_STATE_OFF_BOOT_ID + 32] = b"0" * 32
    with open(os.path.join(_stream_dir(root), "state"), "wb") as f:
        f.write(stale)
    w = Writer(_stream_dir(root), "r:shard:0000", cfg)
    try:
        assert w.open_report["scanned_full"], "a state page from another boot was trusted"
        assert w.snapshot()["committed"] == 100
    finally:
        w.close()
    with cometmp.Client(root, readonly=True) as c:
        data = [m.data for m in c.scan("r:shard:0000")]
    assert data == [b"early-%d" % i for i in range(50)] + [b"late-%d" % i for i in range(50)]
    assert [m.entry for m in first + later] == list(range(100))


def test_same_boot_reopen_trusts_the_state_page(tmp_path):
    root = str(tmp_path / "log")
    cfg = small_config()
    with cometmp.Client(root, cfg) as c:
        log = c.log("r", shards=1)
        for i in range(10):
            log.append(b"x%d" % i)
    w = Writer(_stream_dir(root), "r:shard:0000", cfg)
    try:
        assert not w.open_report["scanned_full"]
        assert w.snapshot()["committed"] == 10
    finally:
        w.close()
