"""Appending is thread safe: concurrent appends from 8 threads all land exactly once,
each thread's entries in the order it appended them, across segment rotations."""

from __future__ import annotations

import threading

import cometmp

from conftest import small_config

THREADS = 8
PER_THREAD = 1500


def payload(t: int, i: int) -> bytes:
    head = b"t%d:%d:" % (t, i)
    return head + bytes([65 + t]) * (40 + (i * 37) % 400)


def parse(data: bytes) -> tuple[int, int]:
    t, i, _ = data.split(b":", 2)
    return int(t[1:]), int(i)


def run_threads(target) -> None:
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def wrapped(t: int) -> None:
        try:
            start.wait()
            target(t)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors


def test_eight_threads_appending_to_one_stream(tmp_path):
    root = str(tmp_path / "log")
    returned: dict[tuple[int, int], int] = {}
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("thr", shards=1)

        def work(t: int) -> None:
            i = 0
            while i < PER_THREAD:
                if i % 5 == 4:                       # mix single appends and batches
                    batch = [payload(t, i + k) for k in range(10)]
                    ids = lg.append_many(batch)
                    assert len(ids) == 10
                    for k, m in enumerate(ids):
                        returned[(t, i + k)] = m.entry
                    i += 10
                else:
                    returned[(t, i)] = lg.append(payload(t, i)).entry
                    i += 1

        run_threads(work)
        stream = lg.streams[0]
        msgs = list(c.scan(stream))
        rotations = c.stats()["streams"][stream]["counters"]["rotations"]
    assert rotations >= 2                                  # contention crossed rotations
    assert [m.id.entry for m in msgs] == list(range(len(msgs)))
    seen = [parse(m.data) for m in msgs]
    assert len(seen) == len(set(seen)) == len(returned)    # every entry exactly once
    for m, (t, i) in zip(msgs, seen):
        assert m.data == payload(t, i)                     # no torn or interleaved bytes
        assert returned[(t, i)] == m.id.entry              # the id append returned is right
    for t in range(THREADS):
        mine = [i for tt, i in seen if tt == t]
        assert mine == sorted(mine) and len(mine) >= PER_THREAD   # per-thread order kept
    ts = [m.timestamp_ns for m in msgs]
    assert ts == sorted(ts)


def test_threads_appending_round_robin_and_keyed_over_a_family(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("fam", shards=4)

        def work(t: int) -> None:
            for i in range(500):
                if t % 2:
                    lg.append(payload(t, i), key=f"thread-{t}")   # one shard per thread
                else:
                    lg.append(payload(t, i))                     # spread round robin

        run_threads(work)
        seen = []
        for s in lg.streams:
            msgs = list(c.scan(s))
            assert [m.id.entry for m in msgs] == list(range(len(msgs)))
            per_thread: dict[int, list[int]] = {}
            for m in msgs:
                t, i = parse(m.data)
                assert m.data == payload(t, i)
                per_thread.setdefault(t, []).append(i)
                seen.append((t, i))
            for t, idx in per_thread.items():
                assert idx == sorted(idx)
                if t % 2:
                    assert s == lg.streams[cometmp.pick_shard(f"thread-{t}", 4)]
        assert sorted(seen) == sorted((t, i) for t in range(THREADS) for i in range(500))
