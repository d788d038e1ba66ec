"""cometmp bench --scenario async runs end to end (a writer process, asyncio readers, a
gevent child) and reports figures consistent with each other and with its own verdicts.

Speed is never asserted (the machine is shared): only the report's shape, that
percentiles are ordered, ratios are the quotients of the figures they name, verdicts
are the comparisons they state, and that no child process is left behind.
"""

import json
import math

from cometmp.tools import bench

from test_bench_wakeup import _children


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_async_scenario_reports_wakeups_loop_stall_threads_and_gevent(capsys, tmp_path):
    before = set(_children())
    rc = bench.main(["--scenario", "async", "--quick", "--json", "--samples", "30",
                     "--readers", "8", "--seed", "7", "--dir", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["scenario"] == "async" and doc["settings"]["seed"] == 7
    w = doc["wake"]
    for v in ("read", "read_async"):
        x = w[v]
        assert x["n"] == 30
        assert 0 < x["p50_us"] <= x["p99_us"] <= x["max_us"]
    assert math.isclose(w["ratio_p50"], w["read_async"]["p50_us"] / w["read"]["p50_us"])
    assert math.isclose(w["ratio_p99"], w["read_async"]["p99_us"] / w["read"]["p99_us"])
    for key, readers in (("stall", 1), ("stall_many", 8)):
        st = doc[key]
        assert st["readers"] == readers and st["read_async_calls"] > 0
        for t in ("ticker_alone", "ticker_beside_readers"):
            assert st[t]["n"] > 0 and st[t]["p50_ms"] <= st[t]["p99_ms"] <= st[t]["max_ms"]
        for t in ("step_wall_us", "step_cpu_us"):
            assert 0 <= st[t]["p50"] <= st[t]["p99"] <= st[t]["max"]
        assert math.isclose(st["extra_max_lateness_ms"], st["ticker_beside_readers"]["max_ms"]
                            - st["ticker_alone"]["max_ms"], abs_tol=1e-9)
        # the GC's share: never more than the step, the longest steps sorted and in the max
        less_gc = st["step_cpu_less_gc_us"]["max"]
        assert 0 <= less_gc <= st["step_cpu_us"]["max"]
        longest = st["longest_steps_us"]
        assert longest and longest == sorted(longest, reverse=True)
        assert longest[0][0] == st["step_cpu_us"]["max"]
        assert 0 <= st["steps_over_1ms_with_gc"] <= st["steps_over_1ms"]
        pf = st["prefault_before"]
        assert pf["waited_s"] >= 0.2 and pf["requests"] >= 0 and pf["populated_mb"] >= 0
    th = doc["threads"]
    assert th["readers"] == 8 and th["read_async_extra_threads"] == 1
    assert th["executor_extra_threads"] >= 1
    g = doc["gevent"]
    if g is not None:
        for k in ("read_timeout", "blocking_futex"):
            assert _finite(g[k]["wait_s"]) and g[k]["ticks"] >= 0
    for t in doc["targets"]:
        assert t["result"] in ("PASS", "MISS") and _finite(t["measured"])
    stall = doc["targets"][0]
    assert stall["measured"] == max(doc[k]["step_cpu_less_gc_us"]["max"]
                                    for k in ("stall", "stall_many")) / 1e3
    assert (stall["result"] == "PASS") == (stall["measured"] <= 1.0)
    assert set(_children()) <= before
