"""The temp-file protocols (paths.create_file_once, paths.write_file_atomic; CONVENTIONS 8,
I7) from several threads of one process at once: the temp name is per process
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
