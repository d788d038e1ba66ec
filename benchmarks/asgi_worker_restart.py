"""kill -9 of an ASGI worker → its slot re-owned: gunicorn + UvicornWorker vs uvicorn --workers.

Each server runs examples/fastapi_app.py with 2 workers. ``--kills`` times, one worker
(alternating slots) is kill -9'ed, and the registry is polled in this process (a
read-only snapshot every 2 ms) for two moments:

- ``vacated``: the slot is no longer LIVE (gunicorn: the master's ``child_exit``;
  uvicorn: a survivor's member thread, 200 ms period);
- ``reowned``: a new live worker holds the same slot (gunicorn forks the replacement at
  once; uvicorn notices the death within 0.5 s and spawns a whole new interpreter, or,
  when the kill lands while its supervisor waits for that worker's health-check pong,
  after ``--timeout-worker-healthcheck``, 5 s by default: the max shows it).

It prints, per server, the median and max of each over the kills, and the ratio of the
medians (uvicorn / gunicorn). Absolute times depend on the machine's load (it prints
``os.getloadavg()``); compare the two servers within one run.

    .venv/bin/python benchmarks/asgi_worker_restart.py                # 5 kills per server
    .venv/bin/python benchmarks/asgi_worker_restart.py --kills 9 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, ".venv", "bin")
sys.path.insert(0, REPO)

from cometmp.registry import LIVE, Registry, is_alive  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: str, data_dir: str, port: int, logf) -> subprocess.Popen:
    env = dict(os.environ, COMETMP_DIR=data_dir, PYTHONPATH=REPO)
    if server == "gunicorn":
        argv = [os.path.join(BIN, "gunicorn"), "-c", "python:cometmp.integrations.gunicorn_conf",
                "-k", "uvicorn_worker.UvicornWorker", "-w", "2", "-b", f"127.0.0.1:{port}",
                "--log-level", "warning", "fastapi_app:app"]
    else:
        argv = [os.path.join(BIN, "uvicorn"), "--workers", "2", "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning",
                "fastapi_app:app"]   # uvicorn's default health-check timeout, 5 s
    return subprocess.Popen(argv, env=env, cwd=os.path.join(REPO, "examples"), stdout=logf,
                            stderr=subprocess.STDOUT, start_new_session=True)


def live_slots(reg: Registry, check_pid: bool = True) -> dict[int, int]:
    """slot -> pid of the workers holding slots, as the table says (LIVE) and, with
    ``check_pid``, whose process is alive too."""
    snap = reg.snapshot(lock=False)
    return {e.index: e.pid for e in snap.entries[:snap.process_count]
            if e.state == LIVE and (not check_pid or is_alive(e.pid, e.start))}


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen in {timeout} s")
        time.sleep(0.002)


def run_server(server: str, kills: int) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"cometmp-asgi-{server}-")
    data_dir = os.path.join(tmp, "data")
    port = free_port()
    with open(os.path.join(tmp, "server.log"), "wb") as logf:
        proc = start(server, data_dir, port, logf)
        try:
            def attached():
                try:
                    reg = Registry.attach(data_dir)
                except Exception:  # noqa: BLE001 - not created yet
                    return None
                return reg if len(live_slots(reg)) == 2 else None
            reg = wait_for(attached, 120, f"{server}: 2 registered workers")
            vacated, reowned = [], []
            for k in range(kills):
                slot = k % 2
                victim = live_slots(reg)[slot]
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: live_slots(reg, check_pid=False).get(slot) != victim, 60,
                         "vacated")
                vacated.append(time.monotonic() - t0)
                wait_for(lambda: live_slots(reg).get(slot) not in (None, victim)
                         and len(live_slots(reg)) == 2, 120, "re-owned")
                reowned.append(time.monotonic() - t0)
            reg.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {"vacated_s": vacated, "reowned_s": reowned,
            "vacated_median_s": statistics.median(vacated), "vacated_max_s": max(vacated),
            "reowned_median_s": statistics.median(reowned), "reowned_max_s": max(reowned)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    out = {"kills": args.kills, "loadavg_before": load_before,
           "gunicorn_uvicornworker": run_server("gunicorn", args.kills),
           "uvicorn_workers": run_server("uvicorn", args.kills)}
    out["loadavg_after"] = os.getloadavg()
    g, u = out["gunicorn_uvicornworker"], out["uvicorn_workers"]
    out["ratio_reowned_median_uvicorn_over_gunicorn"] = u["reowned_median_s"] / g["reowned_median_s"]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"loadavg {load_before[0]:.2f} -> {out['loadavg_after'][0]:.2f}; {args.kills} kills per server")
    for name, r in (("gunicorn -k UvicornWorker", g), ("uvicorn --workers 2", u)):
        print(f"{name:26s} vacated median {r['vacated_median_s'] * 1e3:7.1f} ms  max "
              f"{r['vacated_max_s'] * 1e3:7.1f} ms   re-owned median "
              f"{r['reowned_median_s'] * 1e3:7.1f} ms  max {r['reowned_max_s'] * 1e3:7.1f} ms")
    print(f"re-owned median, uvicorn / gunicorn: "
          f"{out['ratio_reowned_median_uvicorn_over_gunicorn']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
