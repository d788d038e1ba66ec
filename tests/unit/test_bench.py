"""cometmp bench runs end to end and reports a well-formed JSON document.

Speed is never asserted here (the machine is shared and noisy); only that every workload
ran, every figure is a positive number, and every target carries a PASS/MISS verdict.
"""

import json
import math

import pytest

from cometmp.tools import bench


def _run(capsys, *argv):
    rc = bench.main(["--quick", "--json", *argv])
    out = capsys.readouterr().out
    return rc, json.loads(out)  # stdout holds exactly one JSON document


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_single_scenario_reports_every_workload_with_positive_figures(capsys, tmp_path):
    rc, doc = _run(capsys, "--entries", "2000", "--sampled", "2000", "--dir", str(tmp_path))
    assert rc == 0
    assert doc["scenario"] == "single"
    assert doc["machine"]["dir"].startswith(str(tmp_path))
    res = doc["results"]
    for key in ("append", "sqlite", "filehandler"):
        r = res[key]
        for field in ("mean_ns", "calls_per_s", "p50_batch100_ns", "p99_batch100_ns",
                      "p50_sampled_ns", "p99_sampled_ns", "calls"):
            assert _positive(r[field]), (key, field, r[field])
        assert r["p99_batch100_ns"] >= r["p50_batch100_ns"]
        assert len(r["rounds"]) == 1
    assert res["append"]["entries_written"] >= res["append"]["calls"]
    assert res["sqlite"]["rows"] >= res["sqlite"]["calls"]
    keyed = res["keyed"]
    for field in ("keyed_mean_ns", "unkeyed_mean_ns", "keyed_vs_unkeyed", "calls"):
        assert _positive(keyed[field]), field
    many = res["append_many"]
    assert many["batch_size"] == 1000 and many["entries"] >= 1000
    assert _positive(many["entries_per_s"]) and _positive(many["ns_per_entry"])
    for key in ("cometmp_always", "sqlite_full"):
        assert _positive(res["durable"][key]["mean_ns"])
    for name, value in doc["ratios"].items():
        assert _positive(value), name
    assert {t["result"] for t in doc["targets"]} <= {"PASS", "MISS"}
    assert len(doc["targets"]) == 4
    assert list(tmp_path.iterdir()) == []  # temporary logs and databases removed


def test_multiproc_scenario_reports_scaling_of_two_processes(capsys, tmp_path):
    rc, doc = _run(capsys, "--scenario", "multiproc", "--entries", "2000", "--dir",
                   str(tmp_path))
    assert rc == 0
    for mode in ("single", "batch"):
        per = doc["results"][mode]
        assert set(per) == {"1", "2"}
        for procs, r in per.items():
            assert r["procs"] == int(procs)
            assert _positive(r["entries_per_s"])
            assert len(r["per_process_entries_per_s"]) == int(procs)
        assert _positive(doc["ratios"][f"{mode}_scaling_2_vs_1"])
    assert doc["targets"][0]["result"] in ("PASS", "MISS")


def test_multiproc_reports_what_each_entry_cost_the_appender_and_the_prefault_thread(
        capsys, tmp_path):
    # 30,000 entries of 120-byte frames touch ~900 fresh pages per process: each one is
    # prefaulted by the thread or, when the thread is behind (a loaded machine), faulted in
    # by the appender itself, which then shows as the appender's faults
    rc, doc = _run(capsys, "--scenario", "multiproc", "--modes", "single", "--entries",
                   "30000", "--rounds", "1", "--dir", str(tmp_path))
    assert rc == 0 and set(doc["results"]) == {"single"}
    for procs, r in doc["results"]["single"].items():
        assert _positive(r["appender_cpu_ns_per_entry"])
        assert r["process_cpu_ns_per_entry"] >= r["appender_cpu_ns_per_entry"] > 0
        assert r["prefault_failures"] == 0
        touched = int(procs) * 30000 * 120 // 4096
        assert 0 <= r["prefault_pages_populated"] <= 2 * touched + 4096, r
        if r["prefault_pages_populated"] < touched // 2:
            assert r["appender_minflt_per_1k_entries"] > 0, r


def test_multiproc_modes_must_be_known(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--scenario", "multiproc", "--modes", "single,bogus"])
    assert e.value.code == 2


def test_check_flag_turns_a_missed_target_into_exit_status_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.TARGETS, "append_mean_ns_max", 0.0)  # impossible to meet
    rc, doc = _run(capsys, "--entries", "1000", "--sampled", "1000", "--no-durable", "--check",
                   "--dir", str(tmp_path))
    assert rc == 1
    assert doc["targets"][0]["result"] == "MISS"


def test_bad_arguments_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--entries", "10"])
    assert e.value.code == 2


def test_sustained_scenario_times_every_append_across_rotations_and_retention(capsys, tmp_path):
    rc, doc = _run(capsys, "--scenario", "sustained", "--seconds", "2", "--rate", "2e6",
                   "--probe-mb", "8", "--segment-mb", "1", "--retain-segments", "1",
                   "--retention-interval", "0.1", "--workers", "2", "--seed", "5",
                   "--dir", str(tmp_path))
    assert rc == 0 and doc["scenario"] == "sustained" and doc["mode"] == "latency"
    assert _positive(doc["writeback"]["bytes_per_s"])
    assert doc["calls"] == sum(w["calls"] for w in doc["per_worker"]) > 0
    assert 0 <= doc["p50_ns"] <= doc["p99_ns"] <= doc["p999_ns"] <= doc["max_ns"]
    assert doc["rotations"] >= 1 and doc["seed"] == 5
    assert doc["slowest"][0]["ns"] == doc["max_ns"]
    assert {t["result"] for t in doc["targets"]} <= {"PASS", "MISS"} and len(doc["targets"]) == 2


def test_sustained_volume_mode_gives_a_curve_with_and_without_retention(capsys, tmp_path):
    rc, doc = _run(capsys, "--scenario", "sustained", "--volume", "6M", "--volume-step", "2M",
                   "--segment-mb", "1", "--retain-segments", "1", "--dir", str(tmp_path))
    assert rc == 0 and doc["mode"] == "volume"
    assert [r["retention"] for r in doc["runs"]] == [False, True]
    for r in doc["runs"]:
        assert len(r["curve"]) >= 2
        assert all(_positive(c["entries_per_s"]) for c in r["curve"])
