"""cometmp.metrics: Prometheus text that prometheus_client parses, agreeing with
``cometmp stats`` (directory_stats), consumer lag as Consumer.lag() reports it, a
collector for prometheus_client registries, and a file set that does not grow with the
number of processes that wrote."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import cometmp
from cometmp import metrics
from cometmp.tools import cli
from cometmp.format import COUNTERS
from cometmp.stats import directory_stats

from conftest import small_config, tree_fingerprint


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of an exposition text (parsed by
    prometheus_client's own parser, which raises on malformed input)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _stream_key(name: str, stream: str) -> tuple[str, tuple]:
    labels = metrics._stream_labels(stream)
    return name, tuple(sorted(labels.items()))


@pytest.fixture
def populated(data_dir):
    with cometmp.Client(data_dir, config=small_config()) as c:
        ev = c.log("events:v1", shards=4)
        for i in range(3000):
            ev.append(b"%d" % i + b"x" * 2000, key=str(i))  # ~1.5 MiB per shard: rotations
        c.append("plain", [b"a", b"b", b"c"])
        c.sync()
    return data_dir


def test_text_parses_and_agrees_with_stats(populated, capsys):
    text = metrics.collect(populated)
    got = _samples(text)
    rc = cli.main(["stats", populated, "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert stats["streams"] == directory_stats(populated)["streams"]
    assert len(stats["streams"]) == 5
    for stream, s in stats["streams"].items():
        for counter in COUNTERS:
            assert got[_stream_key(f"cometmp_{counter}_total", stream)] == s["counters"][counter]
        assert got[_stream_key("cometmp_stream_length", stream)] == s["length"]
        assert got[_stream_key("cometmp_stream_first_entry", stream)] == s["first_entry"]
        assert got[_stream_key("cometmp_stream_segments", stream)] == s["segments"]
        assert got[_stream_key("cometmp_stream_disk_bytes", stream)] == s["disk_bytes"]
    assert sum(v for (n, _), v in got.items() if n == "cometmp_appends_total") == 3003
    assert sum(v for (n, _), v in got.items() if n == "cometmp_rotations_total") >= 1
    assert sum(v for (n, _), v in got.items() if n == "cometmp_fsyncs_total") >= 1
    assert got[("cometmp_family_shards", (("family", "events:v1"),))] == 4


def test_cli_metrics_prints_the_same_text_and_never_writes(populated, capsys):
    before = tree_fingerprint(populated)
    assert cli.main(["metrics", populated]) == 0
    out = capsys.readouterr().out
    assert _samples(out) == _samples(metrics.collect(populated))
    assert cli.main(["metrics", populated, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cometmp_appends_total"]["type"] == "counter"
    assert tree_fingerprint(populated) == before


def test_cli_metrics_on_a_missing_directory_exits_3(tmp_path, capsys):
    assert cli.main(["metrics", str(tmp_path / "nope")]) == 3


def test_collector_in_a_prometheus_client_registry(populated):
    reg = CollectorRegistry()
    reg.register(metrics.CometCollector(populated))
    assert _samples(generate_latest(reg).decode()) == _samples(metrics.collect(populated))


def test_collector_registers_before_the_directory_exists(tmp_path):
    reg = CollectorRegistry()
    col = metrics.CometCollector(tmp_path / "later")
    reg.register(col)
    assert _samples(generate_latest(reg).decode()) == {}
    with cometmp.Client(tmp_path / "later") as c:
        c.append("s", b"x")
    assert _samples(generate_latest(reg).decode())[_stream_key("cometmp_appends_total", "s")] == 1


def test_consumer_lag_matches_consumer_lag(populated):
    with cometmp.Client(populated) as c:
        from cometmp.consumer import Consumer

        cons = Consumer(c, group='billing "eu"')  # a label value that needs escaping
        batch = cons.read("events:v1:shard:*", max_messages=500, timeout=0)
        cons.ack(*[m.id for m in list(batch)[:200]])
        expected = cons.lag("events:v1:shard:*")
        cons.close()
    got = _samples(metrics.collect(populated))
    lag = {dict(k)["stream"]: v for (n, k), v in got.items() if n == "cometmp_consumer_lag"}
    assert lag == expected
    assert sum(expected.values()) > 0
    assert got[("cometmp_consumer_groups", ())] == 1


def _child_append(root: str, i: int) -> None:
    with cometmp.Client(root, config=small_config()) as c:
        c.log("events:v1", shards=4).append_many([b"child %d" % i] * 10, key=str(i))


def test_file_set_is_bounded_however_many_processes_wrote(populated):
    def files() -> set[str]:
        return {os.path.relpath(os.path.join(d, f), populated)
                for d, _, fs in os.walk(populated) for f in fs}

    before = files()
    ctx = mp.get_context("fork")
    for batch in range(4):  # 40 short-lived writer processes, 10 at a time
        procs = [ctx.Process(target=_child_append, args=(populated, batch * 10 + i)) for i in range(10)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    assert files() == before  # no per-pid files: the counters live in the state pages
    got = _samples(metrics.collect(populated))
    assert sum(v for (n, _), v in got.items() if n == "cometmp_appends_total") == 3003 + 400
