"""After Client.close() returns, no thread of cometmp touches the closed streams' files:
the background prefault (MADV_POPULATE_WRITE dirties pages and so moves a file's mtime)
is cancelled for their mappings, not left to run behind the close."""

from __future__ import annotations

import os

import cometmp
from conftest import small_config


def times(root: str) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, ctime) of every file: a page dirtied through a mapping moves mtime."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def prefault_thread_drained(root: str) -> None:
    """Returns once this process's prefault thread has run (or dropped) every request
    queued before the call: a stream opened and closed here queues its munmap behind them
    (one FIFO queue, native/prealloc.c) and its close waits for that munmap. So a prefault
    left queued behind an earlier close has run, and dirtied its file, by then."""
    with cometmp.Client(root, config=small_config(prefault=True)) as c:
        c.log("barrier", shards=1).append(b"x")


def test_no_file_changes_after_close_returns(tmp_path):
    root = str(tmp_path / "log")
    for round_ in range(3):
        # 6 shards x 16 MiB of prefault queued: ~60 ms of page zeroing for the thread
        cfg = small_config(prefault=True, segment_bytes=64 * 1024 * 1024,
                           preallocate_bytes=16 * 1024 * 1024)
        c = cometmp.Client(root, config=cfg)
        lg = c.log("q", shards=6)
        for k in range(6):   # every shard queues a prefault of its next chunk
            lg.append_many([b"p" * 200] * 20, key=f"k{k}-{round_}")
        c.close()
        before = times(root)
        prefault_thread_drained(str(tmp_path / "barrier"))   # anything queued would have run
        assert times(root) == before, f"round {round_}: a file changed after close"
