"""cometmp demo: the main job, end to end on real processes.

Starts a real gunicorn (the one next to the running Python) with several workers that
append through cometmp (app: cometmp.tools._demo_app), drives HTTP load at it from threads in
this process, runs a consumer group in a separate process, ``kill -9``s a worker on the
way (gunicorn respawns it; its shards are re-owned), and shows live progress. At the end
it checks that every request answered 200 has its entry in the log, byte for byte and
exactly once, and that the consumer group processed every entry; it stops everything it
started (by pid) and exits 0 only if every check passed. Runs in the CLI process only;
the library never prints.

Every run is its own: it writes a fresh family ``demo:<run id>:requests`` (its own shard
count), tags every payload with the run id, uses its own consumer group and checks only
what it wrote. So the same ``--dir`` can be reused, with any ``--shards``, and earlier
runs stay in it for inspection.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

FAMILY = "demo:{run}:requests"  # one family per run: see the module docstring
GROUP = "demo-consumer-{run}"
MAX_WORKERS = 64
MAX_THREADS = 256
NEEDS_GUNICORN = "the demo needs gunicorn: pip install 'cometmp[demo]'"

CONSUMER_CODE = r"""
import json, signal, sys, threading, cometmp
root, pattern, group = sys.argv[1], sys.argv[2], sys.argv[3]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
seen, delivered = set(), 0
client = cometmp.Client(root)
consumer = cometmp.Consumer(client, group=group)
last = 0.0
import time
while not stop.is_set():
    batch = consumer.read(pattern, max_messages=2000, timeout=0.2)
    for m in batch:
        seen.add((m.id.stream, m.id.entry))
    delivered += len(batch)
    if len(batch):
        consumer.ack(*[m.id for m in batch])
    now = time.monotonic()
    if now - last > 0.2:
        print(json.dumps({"distinct": len(seen), "delivered": delivered}), flush=True)
        last = now
print(json.dumps({"distinct": len(seen), "delivered": delivered, "final": True}), flush=True)
client.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return sorted(set(out))


def _gunicorn() -> list[str] | None:
    """The gunicorn of the running Python (the workers import cometmp from it), or None."""
    if importlib.util.find_spec("gunicorn") is None:
        return None
    exe = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "gunicorn"]


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"


class Load:
    """HTTP load from threads; remembers every acknowledged (id -> shard, entry)."""

    def __init__(self, port: int, threads: int, run: str):
        self.port = port
        self.run = run
        self.acked: dict[str, tuple[int, int]] = {}
        self.errors = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            rid = f"{self.run}/t{n}-{i}"  # the payload: this run's id, then the request's
            # every third request is keyed: keyed requests route by pick_shard in every worker
            path = f"/append?id={rid}" + (f"&key=user-{i % 97}" if i % 3 == 0 else "")
            i += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    shard, entry = body.split()
                    with self.lock:
                        self.acked[rid] = (int(shard), int(entry))
                    continue
            except (OSError, http.client.HTTPException, ValueError):
                pass
            with self.lock:
                self.errors += 1  # not acknowledged: the client would retry; not counted as lost
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


class Display:
    """A redrawn block on a terminal, plain lines otherwise."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.tty = out.isatty()
        self.lines = 0

    def show(self, lines: list[str]) -> None:
        if self.tty:
            if self.lines:
                self.out.write(f"\x1b[{self.lines}F")
            for ln in lines:
                self.out.write("\x1b[2K" + ln + "\n")
            self.lines = len(lines)
        else:
            self.out.write(" | ".join(lines) + "\n")
        self.out.flush()


def _ownership(root: str) -> dict:
    from .status import registry_status as status_document

    try:
        return status_document(root)
    except Exception as e:  # noqa: BLE001 - progress display only
        return {"error": str(e), "slots": []}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (usage errors, README "Exit codes")
        print(f"cometmp demo: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse(argv) -> argparse.Namespace:
    from ..client import MAX_SHARDS, DIR_FORMAT

    ap = _Parser(prog="cometmp demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="how long to drive load, >= 1 (default 12)")
    ap.add_argument("--dir", help="data directory to use and keep; may hold earlier runs "
                    "(default: a temp dir, removed)")
    ap.add_argument("--workers", type=int, default=3, help=f"gunicorn workers, 1..{MAX_WORKERS} (default 3)")
    ap.add_argument("--shards", type=int, default=8,
                    help=f"shards of this run's family, 1..{MAX_SHARDS} (default 8)")
    ap.add_argument("--threads", type=int, default=6,
                    help=f"load-generator threads, 1..{MAX_THREADS} (default 6)")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 24 * 3600:
        ap.error(f"--seconds must be between 1 and 86400, not {args.seconds:g}")
    for name, top in (("workers", MAX_WORKERS), ("shards", MAX_SHARDS), ("threads", MAX_THREADS)):
        if not 1 <= getattr(args, name) <= top:
            ap.error(f"--{name} must be between 1 and {top}, not {getattr(args, name)}")
    if args.dir is not None:
        d = os.path.abspath(args.dir)
        if os.path.exists(d) and not os.path.isdir(d):
            ap.error(f"--dir {d}: exists and is not a directory")
        if os.path.isdir(d) and os.listdir(d):
            try:
                with open(os.path.join(d, "cometmp.json")) as f:
                    is_data_dir = json.load(f).get("format") == DIR_FORMAT
            except (OSError, ValueError, AttributeError):
                is_data_dir = False
            if not is_data_dir:
                ap.error(f"--dir {d}: not empty and not a cometmp data directory")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    gunicorn = _gunicorn()
    if gunicorn is None:
        print(NEEDS_GUNICORN, file=sys.stderr)
        return 1

    import cometmp

    run = _run_id()
    family, group = FAMILY.format(run=run), GROUP.format(run=run)
    keep = args.dir is not None
    root = os.path.abspath(args.dir) if keep else tempfile.mkdtemp(prefix="cometmp-demo-")
    os.makedirs(root, exist_ok=True)
    server_log = os.path.join(root, "gunicorn.log") if keep else os.path.join(
        tempfile.gettempdir(), f"cometmp-demo-gunicorn-{os.getpid()}.log")
    port = _free_port()
    env = dict(os.environ, COMETMP_DIR=root, COMETMP_DEMO_SHARDS=str(args.shards),
               COMETMP_DEMO_FAMILY=family)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__))) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"cometmp demo: run {run}, data in {root}")
    print(f"  gunicorn: {args.workers} sync workers on 127.0.0.1:{port}, family {family!r} "
          f"with {args.shards} shards; consumer group {group!r} in its own process")
    # create the family up front so the consumer's pattern matches from the start
    with cometmp.Client(root) as c:
        c.log(family, shards=args.shards)

    procs: list[subprocess.Popen] = []
    checks: list[tuple[str, bool, str]] = []
    load = None
    consumer_state = {"distinct": 0, "delivered": 0}
    try:
        with open(server_log, "ab") as logf:
            master = subprocess.Popen(
                gunicorn + ["-c", "python:cometmp.integrations.gunicorn_conf",
                               "-w", str(args.workers), "-b", f"127.0.0.1:{port}",
                               "--graceful-timeout", "5", "--log-level", "warning",
                               "cometmp.tools._demo_app:app"],
                env=env, stdout=logf, stderr=logf, start_new_session=True)
        procs.append(master)
        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER_CODE, root, f"{family}:shard:*", group],
                                    env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(consumer)

        def read_consumer():
            for line in consumer.stdout:
                try:
                    consumer_state.update(json.loads(line))
                except ValueError:
                    pass
        threading.Thread(target=read_consumer, daemon=True).start()

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok and len(_children(master.pid)) >= args.workers:
                    break
            except OSError:
                pass
            if master.poll() is not None or time.monotonic() > deadline:
                how = (f"exited with code {master.returncode}" if master.poll() is not None
                       else "did not answer within 30 s")
                print(f"gunicorn {how}; its log is {server_log}:")
                with open(server_log, errors="replace") as f:
                    for line in f.read().splitlines()[-10:]:
                        print(f"  {line}")
                return 1
            time.sleep(0.1)

        load = Load(port, args.threads, run)
        start = time.monotonic()
        load.start()
        display = Display()
        killed: list[int] = []
        before_kill: list[int] = []
        kill_at = start + args.seconds * 0.4
        tick = 0
        last_n, last_t = 0, start
        while time.monotonic() - start < args.seconds:
            time.sleep(0.5)
            now = time.monotonic()
            if not killed and now >= kill_at:
                workers = _children(master.pid)
                if workers:
                    before_kill = workers
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
            with load.lock:
                n = len(load.acked)
            rate = (n - last_n) / (now - last_t)
            last_n, last_t = n, now
            doc = _ownership(root)
            owned = ", ".join(
                f"pid {s['pid']}{'' if s.get('alive') else ' (dead)'}: {len(s.get('shards') or [])} shards"
                for s in doc.get("slots", []) if s.get("pid"))
            lines = [
                f"t={now - start:5.1f}s  acknowledged {n:7d}  {rate:8.0f} appends/s  unanswered {load.errors}",
                f"consumer group {group}: processed {consumer_state['distinct']}  lag {max(0, n - consumer_state['distinct'])}",
                f"workers: {owned or '-'}",
            ]
            if killed:
                fresh = sorted(set(_children(master.pid)) - set(before_kill))
                lines.append(f"kill -9 sent to worker pid {killed[0]}; " +
                             (f"replacement pid {fresh[0]}" if fresh else "waiting for its replacement"))
            tick += 1
            if display.tty or tick % 2 == 0:
                display.show(lines)
        load.finish()

        # let the consumer drain, then stop everything we started
        total_log = None
        drain_deadline = time.monotonic() + 20
        with cometmp.Client(root, readonly=True) as ro:
            streams = ro.streams(f"{family}:shard:*")
            total_log = sum(ro.length(s) - ro.first_entry(s) for s in streams)
            while consumer_state["distinct"] < total_log and time.monotonic() < drain_deadline:
                time.sleep(0.1)
            status_doc = _ownership(root)
            # the checks
            with load.lock:
                acked = dict(load.acked)
            present: Counter = Counter()
            by_pos: dict[tuple[int, int], bytes] = {}
            for s in streams:
                shard = int(s.rsplit(":", 1)[1])
                for m in ro.scan(s):
                    present[m.data] += 1
                    by_pos[(shard, m.id.entry)] = m.data
        missing = [rid for rid, pos in acked.items() if by_pos.get(pos) != rid.encode()]
        dupes = [d for d, k in present.items() if k > 1]
        checks.append(("every acknowledged append is in the log at its (shard, entry)",
                       not missing, f"{len(acked)} acknowledged, {len(missing)} missing"))
        checks.append(("no entry is stored twice", not dupes, f"{len(dupes)} duplicates"))
        checks.append(("the consumer group processed every entry (at least once)",
                       consumer_state["distinct"] == total_log,
                       f"{consumer_state['distinct']} of {total_log} entries, "
                       f"{consumer_state['delivered']} deliveries"))
        live = [s for s in status_doc.get("slots", []) if s.get("alive") and s.get("process_id") is not None]
        # the registry reports shards up to the widest family in the directory (earlier runs)
        owners = Counter(sh for s in live for sh in (s.get("shards") or []) if sh < args.shards)
        owned_ok = sorted(owners) == list(range(args.shards)) and all(v == 1 for v in owners.values())
        checks.append(("every shard is owned by exactly one live worker", owned_ok,
                       f"{len(live)} live workers own {len(owners)} of {args.shards} shards"))
        checks.append(("a worker was killed with kill -9 and replaced", bool(killed) and
                       len(_children(master.pid)) >= args.workers,
                       f"killed pid {killed[0] if killed else '-'}"))
    finally:
        if load is not None:
            load.finish()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)

    elapsed = args.seconds
    print()
    print("summary")
    failed = load.errors if load else 0
    print(f"  {len(acked)} requests acknowledged in {elapsed:.0f} s ({len(acked) / elapsed:.0f}/s)"
          + (f"; {failed} request(s) failed without an answer (in flight to the killed worker:"
             f" never acknowledged, so not expected in the log)" if failed else ""))
    ok = True
    for name, passed, detail in checks:
        ok &= passed
        print(f"  [{'ok' if passed else 'FAIL'}] {name}: {detail}")
    print("nothing acknowledged was lost" if ok else "CHECK FAILED: see above")
    if not ok and os.path.exists(server_log):
        print(f"gunicorn log: {server_log}")
    elif os.path.exists(server_log) and not keep:
        os.unlink(server_log)
    return 0 if ok else 1
