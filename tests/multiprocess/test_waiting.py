"""Waiting that fits the caller (cometmp/waiting.py): ``read_async`` / ``batches()`` under
asyncio share one waiter thread per process, survive cancellation and close(), and a
gevent-patched ``read()`` lets other greenlets run while it waits.

Writers are other processes (a real append wakes the real futex); gevent runs in a
subprocess so its monkey-patching never reaches the pytest process. No wake-up latency is
asserted (``benchmarks/bench_async.py`` measures it); a wake-up well before the timeout is.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cometmp
from cometmp import waiting
from cometmp.errors import ClosedError

from conftest import child_env, run_python, wait_until

#: a read_async that should be woken is given this long: far beyond any wake-up, so a
#: return before it is a wake-up and not the timeout
LONG = 60.0

WRITER = textwrap.dedent("""
    import sys, cometmp
    c = cometmp.Client(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        stream, n = line.split()
        c.append(stream, [b"w%d" % i for i in range(int(n))])
        print("ok", flush=True)
""")


class Writer:
    """A process that appends to the stream named on each line of its stdin."""

    def __init__(self, root: str):
        self.p = subprocess.Popen([sys.executable, "-c", WRITER, root], env=child_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def append(self, stream: str, n: int = 1) -> None:
        self.p.stdin.write(f"{stream} {n}\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(30)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def until(cond, what: str, timeout: float = LONG, tasks=()) -> None:
    """wait_until for a coroutine: poll ``cond()`` without blocking the loop; a task of
    ``tasks`` that ended meanwhile is a failure (its exception, if any, is raised)."""
    deadline = time.monotonic() + timeout
    while not cond():
        for t in tasks:
            if t.done():
                t.result()
                raise AssertionError(f"a task ended while waiting for {what}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def asleep(n: int):
    return lambda: waiting.stats()["registrations"] >= n


def waiter_idle() -> bool:
    s = waiting.stats()
    return s["registrations"] == 0 and not s["running"]


@pytest.fixture
def setup(data_dir):
    c = cometmp.Client(data_dir)
    w = Writer(data_dir)
    # no waiter thread of an earlier test: baselines below are this test's
    wait_until(waiter_idle, 30, "the waiter thread of an earlier test to exit")
    yield c, w
    w.close()
    c.close()


def drained(client, group: str, pattern: str) -> cometmp.Consumer:
    con = cometmp.Consumer(client, group)
    con.ack(con.read(pattern, 10_000, 0))
    return con


def test_concurrent_read_async_on_many_streams_share_one_waiter_thread(setup):
    c, w = setup
    n = 40
    names = [f"many{i}" for i in range(n)]
    for s in names:
        c.append(s, b"seed")
    cons = [drained(c, f"g{i}", s) for i, s in enumerate(names)]
    base = os_threads()
    started = waiting.stats()["threads_started"]

    async def main():
        tasks = [asyncio.create_task(con.read_async(s, 10, timeout=LONG))
                 for con, s in zip(cons, names)]
        await asyncio.sleep(0)
        await until(asleep(n), f"{n} calls asleep in the waiter", tasks=tasks)
        during = os_threads()
        for s in names:
            w.append(s)
        t0 = time.monotonic()
        got = await asyncio.gather(*tasks)
        return during, time.monotonic() - t0, got

    during, took, got = asyncio.run(main())
    assert during == base + 1, f"{n} waiting calls ran {during - base} extra threads"
    assert [[m.data for m in b] for b in got] == [[b"w0"]] * n
    assert took < LONG / 2, "woken by the timeout, not by the appends"
    assert waiting.stats()["threads_started"] == started + 1


def test_concurrent_batches_iterators_use_no_thread_per_wait(setup):
    c, w = setup
    n = 12     # more than the default executor's threads on this machine
    names = [f"it{i}" for i in range(n)]
    for s in names:
        c.append(s, b"seed")
    cons = [drained(c, f"g{i}", s) for i, s in enumerate(names)]
    base = os_threads()

    async def first(con, s):
        async for b in con.batches(s, 10):
            return [m.data for m in b]

    async def main():
        tasks = [asyncio.create_task(first(con, s)) for con, s in zip(cons, names)]
        await until(asleep(n), f"{n} calls asleep in the waiter", tasks=tasks)
        during = os_threads()
        for s in names:
            w.append(s)
        return during, await asyncio.wait_for(asyncio.gather(*tasks), LONG)

    during, got = asyncio.run(main())
    assert during <= base + 1
    assert got == [[b"w0"]] * n


def test_read_async_wakes_on_an_append_in_another_process_before_its_timeout(setup):
    c, w = setup
    c.append("one", b"seed")
    con = drained(c, "g", "one")

    async def main():
        task = asyncio.create_task(con.read_async("one", 10, timeout=LONG))
        await until(asleep(1), "the call asleep in the waiter", tasks=[task])
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, w.append, "one", 3)
        b = await task
        return time.monotonic() - t0, [m.data for m in b]

    took, data = asyncio.run(main())
    assert data == [b"w0", b"w1", b"w2"]
    assert took < LONG / 2


def test_the_event_loop_keeps_running_while_read_async_waits(setup):
    c, _w = setup
    c.append("tick", b"seed")
    con = drained(c, "g", "tick")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async def main():
        t = asyncio.create_task(ticker())
        waited = asyncio.create_task(con.read_async("tick", 10, timeout=LONG))
        # the condition that ends the wait is the ticker's own progress: with a blocked
        # loop it never ticks and the read returns empty only at LONG
        while ticks < 50 and not waited.done():
            await asyncio.sleep(0.005)
        assert not waited.done(), "read_async returned while nothing was appended"
        c.append("tick", b"late")      # this process's own append wakes it as well
        b = await waited
        t.cancel()
        return [m.data for m in b]

    assert asyncio.run(main()) == [b"late"]
    assert ticks >= 50


def test_a_read_async_cancelled_mid_wait_leaves_no_registration_or_thread(setup):
    c, w = setup
    c.append("cx", b"seed")
    con = drained(c, "g", "cx")
    base = os_threads()

    async def main():
        for _ in range(5):
            task = asyncio.create_task(con.read_async("cx", 10))
            await until(asleep(1), "the call asleep in the waiter", tasks=[task])
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert waiting.stats()["registrations"] == 0
        # the consumer is still usable after the cancellations, and nothing was lost
        w.append("cx", 2)
        return await con.read_async("cx", 10, timeout=LONG)

    b = asyncio.run(main())
    assert [m.data for m in b] == [b"w0", b"w1"]
    wait_until(lambda: os_threads() == base, 30, "the waiter thread to exit after its linger")
    assert waiter_idle()


@pytest.mark.parametrize("closer", ["thread", "task"])
def test_close_during_read_async_raises_closed_error(setup, closer):
    c, _w = setup
    c.append("cl", b"seed")
    con = drained(c, "g", "cl")

    async def main():
        task = asyncio.create_task(con.read_async("cl", 10, timeout=LONG))
        await until(asleep(1), "the call asleep in the waiter", tasks=[task])
        t0 = time.monotonic()
        if closer == "thread":
            th = threading.Thread(target=con.close)
            th.start()
        else:
            asyncio.get_running_loop().call_soon(con.close)
        with pytest.raises(ClosedError):
            await task
        if closer == "thread":
            th.join()
        took = time.monotonic() - t0
        with pytest.raises(ClosedError):
            await con.read_async("cl", 10, timeout=0)
        return took

    assert asyncio.run(main()) < LONG / 2
    assert waiting.stats()["registrations"] == 0


def test_a_readonly_consumer_polls_and_wakes_before_its_timeout(setup, data_dir):
    c, w = setup
    c.append("ro", b"seed")
    ro = cometmp.Client(data_dir, readonly=True)
    try:
        con = cometmp.Consumer(ro, "g", poll_interval=0.01)
        assert len(con.read("ro", 10, 0)) == 1
        started = waiting.stats()["threads_started"]

        async def main():
            task = asyncio.create_task(con.read_async("ro", 10, timeout=LONG))
            await asyncio.sleep(0.05)
            assert not task.done()
            await asyncio.get_running_loop().run_in_executor(None, w.append, "ro", 1)
            t0 = time.monotonic()
            b = await task
            return time.monotonic() - t0, [m.data for m in b]

        took, data = asyncio.run(main())
        assert data == [b"w0"]
        assert took < LONG / 2
        assert waiting.stats()["threads_started"] == started, "a readonly consumer needs no waiter"
    finally:
        ro.close()


def test_read_async_over_more_streams_than_futex_waitv_takes_wakes_on_the_last(setup):
    c, w = setup
    n = waiting.WAITV_MAX + 5
    for i in range(n):
        c.append(f"wide{i:03d}", b"seed")
    con = drained(c, "g", "wide*")

    async def main():
        task = asyncio.create_task(con.read_async("wide*", 10, timeout=LONG))
        await until(asleep(1), "the call asleep in the waiter", tasks=[task])
        await asyncio.get_running_loop().run_in_executor(None, w.append, f"wide{n - 1:03d}", 1)
        t0 = time.monotonic()
        b = await task
        return time.monotonic() - t0, [(m.id.stream, m.data) for m in b]

    took, got = asyncio.run(main())
    assert got == [(f"wide{n - 1:03d}", b"w0")]
    assert took < LONG / 2


def test_read_async_in_a_forked_child_starts_its_own_waiter(setup, data_dir):
    c, _w = setup
    c.append("fk", b"seed")
    con = drained(c, "g", "fk")
    parked = threading.Event()
    stop = threading.Event()

    def parent_loop():          # the parent's waiter thread is running and asleep
        async def park():
            task = asyncio.create_task(con.read_async("fk", 10, timeout=LONG))
            await until(asleep(1), "the call asleep in the waiter", tasks=[task])
            parked.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
        asyncio.run(park())

    th = threading.Thread(target=parent_loop)
    th.start()
    try:
        assert parked.wait(LONG)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child = cometmp.Client(data_dir)
                ccon = cometmp.Consumer(child, "child")
                assert len(ccon.read("fk", 10, 0)) == 1
                ccon.ack(ccon.read("fk", 10, 0))

                async def wait_append():
                    task = asyncio.create_task(ccon.read_async("fk", 10, timeout=LONG))
                    await until(asleep(1), "the call asleep in the waiter", tasks=[task])
                    child.append("fk", b"from-child")
                    return await task
                b = asyncio.run(wait_append())
                code = 0 if [m.data for m in b] == [b"from-child"] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        stop.set()
        th.join(LONG)
    assert os.waitstatus_to_exitcode(status) == 0


GEVENT_CHILD = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys, time
    import gevent
    import cometmp
    from cometmp import waiting
    c = cometmp.Client(sys.argv[1])
    c.append("gv", b"seed")
    con = cometmp.Consumer(c, "g")
    con.ack(con.read("gv", 10, 0))
    ticks = [0]
    def ticker():
        while True:
            ticks[0] += 1
            gevent.sleep(0.005)
    gevent.spawn(ticker)
    out = {}
    # 1. an empty read with a timeout: the ticker runs throughout
    before = ticks[0]
    b = con.read("gv", 10, timeout=0.5)
    out["empty"] = len(b)
    out["ticks_during_wait"] = ticks[0] - before
    # 2. another greenlet appends: the read wakes before its timeout
    def later():
        start = ticks[0]
        while ticks[0] < start + 20:
            gevent.sleep(0.005)
        c.append("gv", b"late")
    gevent.spawn(later)
    t0 = time.monotonic()
    b = con.read("gv", 10, timeout=20)
    out["woken"] = [m.data.decode() for m in b]
    out["woken_after"] = time.monotonic() - t0
    con.ack(b)
    # 3. a greenlet killed mid-wait leaves nothing registered
    g = gevent.spawn(con.read, "gv", 10, 20)
    deadline = time.monotonic() + 20
    while waiting.stats()["registrations"] < 1 and time.monotonic() < deadline:
        gevent.sleep(0.005)
    g.kill()
    out["registrations_after_kill"] = waiting.stats()["registrations"]
    # 4. close() from another greenlet during a wait: ClosedError
    def closer():
        deadline = time.monotonic() + 20
        while waiting.stats()["registrations"] < 1 and time.monotonic() < deadline:
            gevent.sleep(0.005)
        con.close()
    gevent.spawn(closer)
    try:
        con.read("gv", 10, timeout=20)
        out["closed"] = "returned"
    except cometmp.errors.ClosedError:
        out["closed"] = "ClosedError"
    print(json.dumps(out))
""")


def test_a_gevent_patched_read_with_a_timeout_lets_other_greenlets_run(data_dir):
    pytest.importorskip("gevent")
    r = run_python(GEVENT_CHILD, data_dir, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["empty"] == 0
    # a 0.5 s wait with a 5 ms ticker: a blocked hub gives 0 (or 1); any real progress
    # is well above 5 even on a loaded machine
    assert out["ticks_during_wait"] >= 5, out
    assert out["woken"] == ["late"], out
    assert out["woken_after"] < 10, out
    assert out["registrations_after_kill"] == 0, out
    assert out["closed"] == "ClosedError", out


def test_event_loops_in_two_threads_share_the_one_waiter_thread(setup):
    c, w = setup
    for s in ("left", "right"):
        c.append(s, b"seed")
    cons = {s: drained(c, f"g-{s}", s) for s in ("left", "right")}
    base = os_threads()
    got: dict[str, list] = {}

    def run(s):
        got[s] = [m.data for m in asyncio.run(cons[s].read_async(s, 10, timeout=LONG))]

    ths = [threading.Thread(target=run, args=(s,)) for s in cons]
    for t in ths:
        t.start()
    wait_until(lambda: waiting.stats()["registrations"] == 2, LONG, "both loops asleep")
    during = os_threads()
    w.append("left")
    w.append("right")
    for t in ths:
        t.join(LONG)
    assert got == {"left": [b"w0"], "right": [b"w0"]}
    assert during == base + 2 + 1, "two loop threads and one waiter"


def _random_trial(setup, seed: int, rounds: int) -> None:
    """Tasks on several streams read_async in loops while entries arrive from another
    process and tasks are cancelled at random moments and restarted: every entry is
    delivered (at-least-once: a cancelled call never consumed its batch), none twice
    beyond what an unacked cancel redelivers, and the waiter ends with nothing."""
    import random
    print(f"seed {seed}")
    rng = random.Random(seed)
    c, w = setup
    names = [f"rnd{seed}.{i}" for i in range(6)]     # fresh streams for every trial
    for s in names:
        c.append(s, b"seed")
    cons = {s: drained(c, f"g-{s}", s) for s in names}
    sent = {s: 0 for s in names}
    seen: dict[str, list] = {s: [] for s in names}

    async def reader(s):
        con = cons[s]
        while True:
            b = await con.read_async(s, 50, timeout=rng.choice([None, 0.05, 0.5]))
            seen[s].extend(m.id.entry for m in b)
            con.ack(b)

    async def main():
        loop = asyncio.get_running_loop()
        tasks = {s: asyncio.create_task(reader(s)) for s in names}
        for _ in range(rounds):
            s = rng.choice(names)
            if rng.random() < 0.3:
                tasks[s].cancel()
                await asyncio.gather(tasks[s], return_exceptions=True)
                tasks[s] = asyncio.create_task(reader(s))
            n = rng.randint(1, 5)
            await loop.run_in_executor(None, w.append, s, n)
            sent[s] += n
            await asyncio.sleep(rng.uniform(0, 0.005))
        await until(lambda: all(len(set(seen[s])) == sent[s] for s in names),
                    "every entry delivered")
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    asyncio.run(main())
    for s in names:
        assert sorted(set(seen[s])) == list(range(1, sent[s] + 1)), s
        assert len(seen[s]) == sent[s], f"{s}: a batch delivered twice"
    assert waiting.stats()["registrations"] == 0
    wait_until(waiter_idle, 30, "the waiter thread to exit")


def test_random_appends_and_cancellations_lose_nothing(setup):
    import random
    _random_trial(setup, random.randrange(1 << 30), 60)


@pytest.mark.soak
def test_random_appends_and_cancellations_lose_nothing_soak(setup):
    import random
    for _ in range(20):
        _random_trial(setup, random.randrange(1 << 30), 300)
