"""Requests/s of a real gunicorn (or uWSGI) with one cometmp append per request vs none.

The server runs the example app of integrations/<server>/ with the cometmp hooks. Two
paths of the same app are loaded alternately: ``/noop?id=...`` parses the request the same
way and answers without touching cometmp, ``/append?id=...`` also appends the id as one entry (key=None, so each worker writes its own
shards). Rounds interleave the two, in a random order per round, so drift on this noisy
VM hits both alike. The result is the median over rounds of (append rps / noop rps).
Target (issue 3): >= 0.98.

    python benchmarks/bench_gunicorn.py                       # gunicorn, 2 sync workers
    python benchmarks/bench_gunicorn.py --server uwsgi --rounds 9 --seconds 2 --json

The load generator is `--clients` processes sending HTTP/1.0 requests over raw sockets.
They share the machine's 2 cores with the server, so absolute numbers are low. The
ratio is what the benchmark is for.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, ".venv", "bin")


def _client(port: int, path: str, seconds: float, tag: str, out) -> None:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        p = path.replace("{id}", f"{tag}-{n}")
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET {p} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        s.close()
        if buf.startswith(b"HTTP/1.") and b" 200 " in buf[:16]:
            n += 1
    out.put(n)


def server_cpu_ticks(master: int) -> int:
    """utime+stime (clock ticks) of the server master and its live workers."""
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = [master] + [int(p) for p in f.read().split()]
    except OSError:
        pids = [master]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total


def measure(port: int, path: str, seconds: float, clients: int, tag: str,
            master: int = 0) -> tuple[float, float]:
    """(requests/s, server CPU µs per request). The CPU figure does not depend on what
    else runs on the machine, so it is the steadier of the two on a shared VM."""
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(port, path, seconds, f"{tag}{i}", q))
             for i in range(clients)]
    c0 = server_cpu_ticks(master) if master else 0
    t0 = time.monotonic()
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    rps = total / (time.monotonic() - t0)
    cpu = (server_cpu_ticks(master) - c0) / os.sysconf("SC_CLK_TCK") if master else 0.0
    return rps, (cpu / total * 1e6 if total else 0.0)


def start_server(server: str, workers: int, data_dir: str, port: int, logf):
    env = dict(os.environ, COMETMP_DIR=data_dir, PYTHONPATH=REPO)
    if server == "gunicorn":
        argv = [os.path.join(BIN, "gunicorn"), "-c", "gunicorn.conf.py", "-w", str(workers),
                "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:app"]
        cwd = os.path.join(REPO, "integrations", "gunicorn")
    else:
        argv = [os.path.join(BIN, "uwsgi"), "--ini", "uwsgi.ini", "--http-socket",
                f"127.0.0.1:{port}", "--processes", str(workers), "--disable-logging",
                "--virtualenv", os.path.join(REPO, ".venv")]
        cwd = os.path.join(REPO, "integrations", "uwsgi")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /noop HTTP/1.0\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1."):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{server} did not start")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", choices=("gunicorn", "uwsgi"), default="gunicorn")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="cometmp-bench-gunicorn-")
    data_dir = os.path.join(tmp, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logf = open(os.path.join(tmp, "server.log"), "wb")
    proc = start_server(args.server, args.workers, data_dir, port, logf)
    rng = random.Random(1)
    rows = []
    try:
        measure(port, "/noop?id={id}", 1.0, args.clients, "warm")  # warm up both paths
        # (rps, cpu) pairs below; "ratio" = append rps / noop rps
        measure(port, "/append?id={id}", 1.0, args.clients, "warm")
        for r in range(args.rounds):
            order = ["noop", "append"]
            rng.shuffle(order)
            got, cpu = {}, {}
            for which in order:
                path = "/noop?id={id}" if which == "noop" else "/append?id={id}"
                got[which], cpu[which] = measure(port, path, args.seconds, args.clients,
                                                 f"r{r}{which}", proc.pid)
            rows.append({"round": r, **got, "ratio": got["append"] / got["noop"],
                         "noop_cpu_us": cpu["noop"], "append_cpu_us": cpu["append"],
                         "cpu_ratio": cpu["noop"] / cpu["append"] if cpu["append"] else 0.0})
            if not args.json:
                print(f"round {r}: noop {got['noop']:6.0f} req/s {cpu['noop']:6.0f} us cpu/req   "
                      f"append {got['append']:6.0f} req/s {cpu['append']:6.0f} us cpu/req   "
                      f"ratio {rows[-1]['ratio']:.3f} (cpu {rows[-1]['cpu_ratio']:.3f})",
                      flush=True)
    finally:
        os.kill(proc.pid, signal.SIGTERM if args.server == "gunicorn" else signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()
    result = {
        "server": args.server, "workers": args.workers, "clients": args.clients,
        "rounds": rows,
        "noop_rps_median": statistics.median(r["noop"] for r in rows),
        "append_rps_median": statistics.median(r["append"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "noop_cpu_us_median": statistics.median(r["noop_cpu_us"] for r in rows),
        "append_cpu_us_median": statistics.median(r["append_cpu_us"] for r in rows),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rows),
        "target": 0.98,
    }
    result["meets_target"] = result["ratio_median"] >= 0.98
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(f"median: noop {result['noop_rps_median']:.0f} req/s, append "
              f"{result['append_rps_median']:.0f} req/s, ratio {result['ratio_median']:.3f} "
              f"(target >= 0.98: {'met' if result['meets_target'] else 'NOT met'}); server CPU per "
              f"request: noop {result['noop_cpu_us_median']:.0f} us, append "
              f"{result['append_cpu_us_median']:.0f} us, ratio {result['cpu_ratio_median']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
