"""Application metrics across real worker processes (cometmp.prometheus): the collector
aggregates exactly as prometheus_client's MultiProcessCollector on the same workload, a
kill -9'ed worker's counters stay counted once and its live gauges go, its replacement
continues the slot without double counting, concurrent processes and threads lose no
add, and a process killed while holding the key lock blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402

from cometmp import registry  # noqa: E402
from cometmp.appmetrics import Table  # noqa: E402
from cometmp.prometheus import PrometheusCollector  # noqa: E402
from conftest import child_env, wait_until  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "app_metrics_worker.py")
N = 3


class Worker:
    """One app_metrics_worker.py process, started and waited for until it is ready."""

    def __init__(self, kind: str, directory: str, index: int, workers: int = N):
        self.index = index
        self.proc = subprocess.Popen([sys.executable, WORKER, kind, directory, str(index),
                                      str(workers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=child_env(), text=True)
        line = self.proc.stdout.readline()    # bounded by the worker's own work; see stop()
        assert line.startswith("ready "), f"worker {index} did not start: {line!r}"
        _, pid, slot = line.split()
        self.pid = int(pid)
        self.slot = slot

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def start_pool(kind: str, directory: str, n: int = N) -> list[Worker]:
    """``n`` workers started one after another (so mostrecent timestamps keep one order)."""
    return [Worker(kind, directory, i) for i in range(n)]


def exposed(collector, label_of: dict[str, str]) -> set:
    """Every sample of ``collector`` as (family, type, sample name, labels, value), the
    ``pid`` label of all/liveall gauges renamed to the worker index via ``label_of``."""
    reg = CollectorRegistry()
    reg.register(collector)
    out = set()
    for m in reg.collect():
        for s in m.samples:
            labels = dict(s.labels)
            if "pid" in labels:
                labels["pid"] = label_of.get(labels["pid"], "?" + labels["pid"])
            out.add((m.name, m.type, s.name, tuple(sorted(labels.items())), s.value))
    return out


def only(samples: set, name: str) -> dict:
    return {(s[2], s[3]): s[4] for s in samples if s[0] == name}


@pytest.fixture
def pools(tmp_path):
    """(cometmp data dir, prometheus_client dir, the two pools); every worker stopped after."""
    cdir, pdir = str(tmp_path / "data"), str(tmp_path / "prom")
    os.makedirs(pdir)
    made: list[Worker] = []
    yield cdir, pdir, made
    for w in made:
        w.stop()
    for w in made:
        if w.proc.poll() is None:
            w.kill9()
    # the last worker to leave removed the registry (a graceful exit leaves, I24)
    assert not os.path.exists(shm_path(cdir)), "the registry outlived its workers"


def shm_path(directory: str) -> str:
    return "/dev/shm/" + registry.shm_name(directory).lstrip("/")


def test_collector_matches_multiprocess_collector_on_the_same_workload_and_after_a_kill9(pools):
    cdir, pdir, made = pools
    ours = start_pool("cometmp", cdir)
    made += ours
    theirs = start_pool("pc", pdir)
    made += theirs
    assert sorted(w.slot for w in ours) == ["0", "1", "2"]
    ours_label = {w.slot: str(w.index) for w in ours}
    theirs_label = {str(w.pid): str(w.index) for w in theirs}

    ours_seen = exposed(PrometheusCollector(cdir), ours_label)
    theirs_seen = exposed(MultiProcessCollector(None, path=pdir), theirs_label)
    assert ours_seen == theirs_seen
    assert len(ours_seen) >= 37       # every mode, labels, buckets: the comparison is wide

    # kill -9 worker 1 in both pools; prometheus_client needs mark_process_dead for live*
    ours[1].kill9()
    theirs[1].kill9()
    mark_process_dead(theirs[1].pid, pdir)
    after_ours = exposed(PrometheusCollector(cdir), ours_label)
    assert after_ours == exposed(MultiProcessCollector(None, path=pdir), theirs_label)
    # and the kill changed what live gauges show, not the counters
    assert only(after_ours, "app_requests") == only(ours_seen, "app_requests")
    assert only(after_ours, "app_g_liveall") != only(ours_seen, "app_g_liveall")
    assert not any(dict(lb).get("pid") == "1" for (_n, lb) in only(after_ours, "app_g_liveall"))


def test_a_replacement_continues_the_killed_workers_slot_without_loss_or_double_count(pools):
    cdir, _pdir, made = pools
    ours = start_pool("cometmp", cdir)
    made += ours
    victim = next(w for w in ours if w.slot == "1")
    victim.kill9()
    # the replacement joins (the dead slot is VACANT now: it takes it) and runs workload(1)
    # again: its counters add on top of the dead worker's cumulative cells
    repl = Worker("cometmp", cdir, victim.index)
    made.append(repl)
    assert repl.slot == "1", "a replacement takes the dead worker's slot"
    got = exposed(PrometheusCollector(cdir), {w.slot: w.slot for w in ours})
    by_index = {w.index: w for w in ours}
    runs = [0, 1, 2, victim.index]            # workload(1) ran twice: both count
    requests = only(got, "app_requests")
    assert requests[("app_requests_total", (("path", "/a"),))] == sum(i + 1 for i in runs)
    assert requests[("app_requests_total", (("path", "/b"),))] == 0.25 * sum(
        1 for i in runs if i % 2 == 0)
    lat = only(got, "app_latency")
    assert lat[("app_latency_count", (("route", "r"),))] == 4 * len(runs)
    assert lat[("app_latency_sum", (("route", "r"),))] == sum(
        0.125 + 0.5 * (i + 1) + 3.0 + 8.0 * i for i in runs)
    assert only(got, "app_size")[("app_size_count", ())] == len(runs)
    # gauges: slot 1 shows the replacement's value, once (the dead worker's was cleared, I53)
    g = only(got, "app_g_all")
    assert g[("app_g_all", (("kind", "x"), ("pid", "1")))] == 10 * victim.index + 0.25
    assert sum(1 for (_n, lb) in g if dict(lb)["kind"] == "x") == 3
    assert only(got, "app_inflight") == {("app_inflight", (("pid", s),)): 1.0
                                         for s in ("0", "1", "2")}
    assert only(got, "app_g_livesum")[("app_g_livesum", (("kind", "x"),))] == sum(
        10 * i + 7 + 0.25 for i in by_index)


def test_processes_and_threads_adding_to_one_counter_lose_no_increment(tmp_path):
    directory = str(tmp_path / "data")
    code = """
import sys, threading
import cometmp.metrics
cometmp.metrics.enable_prometheus(sys.argv[1])
from prometheus_client import Counter, Histogram
c = Counter("hammered", "H.")
h = Histogram("hammered_h", "H.", buckets=(1.0,))
def work():
    for _ in range(int(sys.argv[2])):
        c.inc(0.5)
        h.observe(0.5)
ts = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in ts]
[t.join() for t in ts]
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, directory, "4000"], env=child_env())
             for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    got = exposed(PrometheusCollector(directory), {})
    assert only(got, "hammered")[("hammered_total", ())] == 4 * 3 * 4000 * 0.5
    assert only(got, "hammered_h")[("hammered_h_count", ())] == 4 * 3 * 4000


def test_a_process_killed_holding_the_key_lock_blocks_no_other_process(tmp_path):
    directory = str(tmp_path / "data")
    Table.open(directory).close()
    holder = subprocess.Popen([sys.executable, "-c", """
import sys, time
from cometmp.appmetrics import Table
t = Table.open(sys.argv[1])
with t._locked():
    print("holding", flush=True)
    time.sleep(600)
""", directory], stdout=subprocess.PIPE, env=child_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        t = Table.open(directory)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        # the kernel dropped the dead holder's OFD lock: a new key appends at once
        assert t.row(1, 0, '["x", "x_total", {}, "X."]') == 0
        assert t.nkeys() == 1
        t.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=60)


def test_live_gauges_of_a_slot_less_process_drop_when_it_dies(tmp_path):
    directory = str(tmp_path / "data")
    code = """
import sys
import cometmp.metrics
cometmp.metrics.enable_prometheus(sys.argv[1])
from prometheus_client import Gauge
Gauge("master_live", "M.", multiprocess_mode="liveall").set(5)
Gauge("master_all", "M.", multiprocess_mode="all").set(6)
print("set", flush=True)
sys.stdin.readline()
"""
    p = subprocess.Popen([sys.executable, "-c", code, directory], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=child_env(), text=True)
    try:
        assert p.stdout.readline().strip() == "set"
        got = exposed(PrometheusCollector(directory), {})
        assert only(got, "master_live") == {("master_live", (("pid", "?unslotted"),)): 5.0}
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        got = wait_until(lambda: exposed(PrometheusCollector(directory), {}), 30, "a scrape")
        assert only(got, "master_live") == {}
        assert only(got, "master_all") == {("master_all", (("pid", "?unslotted"),)): 6.0}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=60)
