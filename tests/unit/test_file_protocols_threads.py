"""The temp-file protocols (paths.create_file_once, paths.write_file_atomic, and the C
core's creation of the offsets file, native/offsets.c; CONVENTIONS 8, I7) from several
threads of one process at once: the temp name is per process
(``<file>.<pid>.tmp``), so the threads must not share one temp file: each call succeeds,
exactly one creator wins, and the file is always whole."""

from __future__ import annotations

import os
import threading

from cometmp import paths

THREADS = 8
SIZE = 4 << 20        # big enough that the writes of two threads overlap


def run_together(fn, n=THREADS):
    start = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as e:   # noqa: BLE001 - every failure is the finding
            errors.append(repr(e))

    ts = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return results, errors


def test_threads_creating_one_file_at_once_all_succeed_and_exactly_one_wins(tmp_path):
    for trial in range(20):
        d = tmp_path / str(trial)
        d.mkdir(mode=0o700)
        path = str(d / "f")
        data = [bytes([65 + i]) * 4096 for i in range(THREADS)]
        results, errors = run_together(
            lambda i: paths.create_file_once(path, data[i], paths.IN_ROOT, size=SIZE, reserve=True))
        assert not errors, f"trial {trial}: {errors}"
        assert results.count(True) == 1, f"trial {trial}: {results}"
        with open(path, "rb") as f:
            body = f.read()
        assert len(body) == SIZE and body[:4096] in data and body[4096:] == bytes(SIZE - 4096)
        assert os.listdir(d) == ["f"], "a temp file was left"


def test_threads_replacing_one_file_at_once_all_succeed_and_it_is_one_of_theirs(tmp_path):
    for trial in range(20):
        d = tmp_path / str(trial)
        d.mkdir(mode=0o700)
        path = str(d / "f.json")
        data = [bytes([65 + i]) * (256 << 10) for i in range(THREADS)]
        _results, errors = run_together(lambda i: paths.write_file_atomic(path, data[i]))
        assert not errors, f"trial {trial}: {errors}"
        with open(path, "rb") as f:
            assert f.read() in data
        assert os.listdir(d) == ["f.json"], "a temp file was left"


def test_threads_opening_a_fresh_offsets_file_at_once_all_succeed_and_share_one_file(tmp_path):
    # what happens when several threads each make their first Consumer of a new data
    # directory: the C core creates consumers/offsets under offsets.<pid>.tmp; before it
    # serialised that per process, 295 of 300 such trials failed (ENOENT from the rename)
    from cometmp.offsets import OffsetStore

    for trial in range(30):
        root = tmp_path / str(trial)
        (root / paths.CONSUMERS).mkdir(parents=True, mode=0o700)
        results, errors = run_together(lambda i: OffsetStore(str(root), True), n=6)
        try:
            assert not errors, f"trial {trial}: {errors}"
            # one file: a group made through one store is the same group through the others
            g = results[0].group("g", create=True)
            assert {r.group("g", create=False).id for r in results} == {g.id}
            assert os.listdir(root / paths.CONSUMERS) == ["offsets"], "a temp file was left"
        finally:
            for s in results:
                if s is not None:
                    s.close()
