"""cometmp bench --scenario wakeup runs real processes end to end and reports, per row and
variant, percentiles and ratios that are computed from its own samples.

Speed is never asserted (the machine is shared): only the shape of the report, that each
figure is consistent with the others (p50 <= p99 <= p99.9 <= max, every ratio equal to the
quotient of the figures it names, every verdict the comparison it states), and that the
bench leaves no process and no file behind.
"""

import json
import math
import os

import pytest

from cometmp.tools import bench, bench_wakeup


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _children():
    me = str(os.getpid())
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.append(int(pid))
            except OSError:
                pass
    return out


def test_wakeup_scenario_reports_floor_consumer_and_raw_wait_idle_and_loaded(capsys, tmp_path):
    before = set(_children())
    rc = bench.main(["--scenario", "wakeup", "--quick", "--json", "--samples", "60",
                     "--load", "1", "--dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0
    doc = json.loads(captured.out)           # stdout holds exactly one JSON document
    st = doc["settings"]
    assert "seed" in captured.err and str(st["seed"]) in captured.err   # printed for reruns
    assert st["rows"] == ["idle", "loaded"] and st["load_processes"] == 1
    assert doc["scenario"] == "wakeup"
    if st["floor_note"]:
        pytest.skip(st["floor_note"])      # no C compiler on this machine
    assert st["variants"] == list(bench_wakeup.VARIANTS)
    for row in st["rows"]:
        for v in st["variants"]:
            x = doc["results"][row][v]
            assert x["samples"] == 60 * st["rounds"]
            assert _positive(x["p50_us"])
            assert x["p50_us"] <= x["p99_us"] <= x["p999_us"] <= x["max_us"]
            assert x["run_delay_p50_us"] <= x["run_delay_p99_us"]
            assert x["off_cpu_excluded_p50_us"] <= x["off_cpu_excluded_p99_us"]
            assert 0.0 <= x["tail_run_delay_share"] <= 1.0
            assert 0 <= x["samples_with_minflt"] <= x["samples"]
            assert len(doc["per_round"][row][v]) == st["rounds"]
        f = doc["results"][row]["floor"]
        for v in ("consumer", "raw"):
            for q in ("p50", "p99", "p999"):
                r = doc["ratios"][f"{row}_{v}_{q}_vs_floor"]
                assert r == pytest.approx(doc["results"][row][v][f"{q}_us"] / f[f"{q}_us"])
    for t in doc["targets"]:
        want = float(t["target"].split()[1].rstrip("x"))
        assert t["result"] == ("PASS" if t["measured"] <= want else "MISS")
    assert {t["name"] for t in doc["targets"]} == {"idle consumer p50 vs floor",
                                                    "idle consumer p99 vs floor"}
    assert set(_children()) <= before      # the load and every waiter/waker were reaped
    assert list(tmp_path.iterdir()) == []  # streams, floor program and samples removed


def test_summary_percentiles_and_tail_share_come_from_the_samples():
    # 100 samples: latency i+1 us, run delay half of it, page faults on every tenth
    samples = [((i + 1) * 1000, (i + 1) * 500, 1 if i % 10 == 0 else 0) for i in range(100)]
    s = bench_wakeup.summarize(samples)
    lat = sorted(x[0] for x in samples)
    assert s["p50_us"] == lat[50] / 1e3 and s["p99_us"] == lat[99] / 1e3
    assert s["max_us"] == max(lat) / 1e3
    assert s["off_cpu_excluded_p50_us"] == pytest.approx(s["p50_us"] / 2, abs=0.5)
    assert s["tail_run_delay_share"] == pytest.approx(0.5)
    assert s["samples_with_minflt"] == sum(1 for x in samples if x[2])
