"""Storage and scrape cost of application metrics stay bounded however many workers come
and go: short-lived real processes take one of two registry slots, make metrics, and exit
(a third by kill -9, the rest leaving gracefully); after many restarts the data
directory and /dev/shm list exactly what they listed after 10, the table has bound only
the two slot columns, and not one increment of a dead worker is lost.

The default run does 100 restarts (reuse of both slots, dozens of times each); the soak
variant the 1,000 of issue 12."""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402

from cometmp import registry  # noqa: E402
from cometmp.appmetrics import Table  # noqa: E402
from cometmp.prometheus import PrometheusCollector  # noqa: E402

SLOTS = 2


def worker_life(directory: str, n: int, joined: int, go: int) -> None:
    """In a forked child: the life of worker ``n``; tells ``joined`` it has a slot and waits
    for ``go`` (so both slots are held at once). Never returns."""
    code = 1
    try:
        from prometheus_client import Counter, Gauge, Histogram

        from cometmp.prometheus import enable_prometheus

        registry.join(directory, create_count=SLOTS, start_thread=False)
        os.write(joined, b"j")
        os.close(joined)
        os.read(go, 1)
        enable_prometheus(directory)
        Counter("churn_requests", "R.", ["route"], registry=None).labels("/").inc()
        Gauge("churn_live", "L.", multiprocess_mode="livesum", registry=None).set(1)
        Gauge("churn_all", "A.", multiprocess_mode="all", registry=None).set(n)
        Histogram("churn_seconds", "S.", buckets=(1.0,), registry=None).observe(0.5)
        if n % 3 == 0:
            os.kill(os.getpid(), signal.SIGKILL)    # dies without leaving: a crash
        registry.leave()    # graceful: the last member removes the registry
        code = 0
    finally:
        os._exit(code)


def churn(directory: str, start: int, count: int) -> None:
    """``count`` worker lives, two at a time: both take a slot (each a real process holding
    one of the two while the other holds the other), then live and exit one after the
    other, in order, so which exit is the last member's (and removes the registry) is the
    same in every pair."""
    for pair in range(start, start + count, SLOTS):
        joined_r, joined_w = os.pipe()
        lives = []
        for n in range(pair, min(pair + SLOTS, start + count)):
            go_r, go_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                worker_life(directory, n, joined_w, go_r)
            os.close(go_r)
            lives.append((pid, n, go_w))
        os.close(joined_w)   # EOF once every child wrote (and closed) or died: never hangs
        try:
            for _ in lives:
                assert os.read(joined_r, 1) == b"j", "a worker died before taking a slot"
        finally:
            os.close(joined_r)
        for pid, n, go_w in lives:
            os.write(go_w, b"g")
            os.close(go_w)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            assert code == (-signal.SIGKILL if n % 3 == 0 else 0), (n, code)


def listing(directory: str) -> tuple[list, list]:
    """(every file under the data directory with its size, this directory's objects in
    /dev/shm: its registry and anything named after it)."""
    files = []
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            p = os.path.join(dirpath, name)
            files.append((os.path.relpath(p, directory), os.stat(p).st_size))
    reg = registry.shm_name(directory).lstrip("/")
    shm = [n for n in os.listdir("/dev/shm") if n.startswith(reg)]
    return sorted(files), sorted(shm)


def samples(directory: str) -> dict:
    reg = CollectorRegistry()
    reg.register(PrometheusCollector(directory))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in reg.collect() for s in m.samples}


def check_bounded_after(directory: str, restarts: int) -> None:
    churn(directory, 0, 10)
    after_10 = listing(directory)
    churn(directory, 10, restarts - 10)
    assert listing(directory) == after_10, "the directory or /dev/shm grew with restarts"
    assert len(after_10[1]) <= 1, "at most the registry itself in /dev/shm"
    t = Table.open(directory, create=False, writable=False)
    try:
        assert sorted(c for c, _pid, _t in t.bound_columns()) == [0, 1], \
            "only the two slot columns were ever bound: a scrape reads two columns"
        assert t.nkeys() == 6
    finally:
        t.close()
    got = samples(directory)
    # every life's increments counted once, the killed ones' included
    assert got[("churn_requests_total", (("route", "/"),))] == restarts
    assert got[("churn_seconds_count", ())] == restarts
    assert ("churn_live", ()) not in got, "no worker is alive: live gauges show none"
    assert {dict(lb)["pid"] for (name, lb) in got if name == "churn_all"} <= {"0", "1"}
    # the last life was a kill -9 (life 99 of 100, 999 of 1,000), so nobody removed the
    # registry: the next worker to join uses it, and leaving gracefully as its only live
    # member removes it (I24), so the test leaves nothing in /dev/shm
    n = restarts if restarts % 3 else restarts + 1   # a life that leaves gracefully
    churn(directory, n, 1)
    assert listing(directory)[1] == [], "a graceful leave of the only live member " \
        "removes the registry a killed member left"


def test_100_restarts_leave_the_directory_and_shm_as_10_did(tmp_path):
    check_bounded_after(str(tmp_path / "data"), 100)


@pytest.mark.soak
def test_1000_restarts_leave_the_directory_and_shm_as_10_did(tmp_path):
    check_bounded_after(str(tmp_path / "data"), 1000)
