"""A Client created before os.fork() keeps working in both processes (I10): the child
reopens its own writer handles and never writes through the parent's."""

from __future__ import annotations

import os

import cometmp

from conftest import small_config

N = 10000


def payload(who: bytes, i: int) -> bytes:
    return who + b":%d:" % i + who * (i % 50)


def test_client_created_before_fork_appends_in_child_and_parent(tmp_path):
    root = str(tmp_path / "log")
    c = cometmp.Client(root, config=small_config())
    try:
        lg = c.log("fork", shards=1)
        lg.append(b"before fork")                 # the parent's writer handle is open
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                              # child: must not raise, must not corrupt
            code = 1
            try:
                os.close(r)
                entries = []
                for i in range(N):
                    entries.append(lg.append(payload(b"child", i)).entry)
                ids = lg.append_many([payload(b"child", N + k) for k in range(100)])
                entries += [m.entry for m in ids]
                os.write(w, (" ".join(map(str, entries))).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        parent_entries = [lg.append(payload(b"parent", i)).entry for i in range(N)]
        parent_entries += [m.entry for m in lg.append_many([payload(b"parent", N + k) for k in range(100)])]
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "child failed to append"
        child_entries = [int(x) for x in data.split()]
        # the parent's handle still works after the child exited
        last = lg.append(b"after child").entry
        stream = lg.streams[0]
        msgs = list(c.scan(stream))
    finally:
        c.close()
    total = 1 + 2 * (N + 100) + 1
    assert [m.id.entry for m in msgs] == list(range(total)) and last == total - 1
    assert not set(child_entries) & set(parent_entries)
    assert sorted(child_entries + parent_entries) == list(range(1, total - 1))
    for who, entries in ((b"child", child_entries), (b"parent", parent_entries)):
        assert entries == sorted(entries)                      # each process's order kept
        for i, e in enumerate(entries):
            assert msgs[e].data == payload(who, i)             # no interleaving, byte-exact
    with cometmp.Client(root, readonly=True) as ro:              # and it is all on disk
        assert ro.length(stream) == total
