"""Harness of the end-to-end server tests: start a real server by pid, load it, hurt it.

Servers run in their own session (so cleanup can signal exactly the group this test
started), bound to 127.0.0.1 on a free port, with the example app of integrations/.
Nothing here kills by name.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import cometmp
from cometmp import registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
GUNICORN = os.path.join(VENV_BIN, "gunicorn")
UWSGI = os.path.join(VENV_BIN, "uwsgi")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(data_dir: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["COMETMP_DIR"] = data_dir
    env.update(extra)
    return env


class Server:
    """A server process started by this test; stop() always leaves nothing behind."""

    def __init__(self, argv: list[str], env: dict, cwd: str, port: int, log_path: str):
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0, workers: int = 1) -> None:
        """Until the server answers and runs ``workers`` workers (a start of several
        processes: the bound is for a loaded machine)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if get(self.port, "/whoami", timeout=1.0)[0] == 200 and \
                        len(self.workers()) >= workers:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.log()}")

    def workers(self) -> list[int]:
        """Live direct children of the master (the workers, plus mules for uWSGI).

        From each process's own /proc/<pid>/stat (its parent and state), not from the
        master's task/*/children list, which the kernel documents as unreliable while
        children exit and fork: a read during a respawn can miss a live worker.
        multiprocessing's own helpers (uvicorn's supervisor starts a resource tracker)
        are not workers and are left out."""
        return [p for p in children_of(self.pid) if not _mp_helper(p)]

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 45.0) -> int | None:
        """Signal the server and wait for it to exit; after ``timeout`` (a bound above
        the servers' own grace periods: uWSGI's mercy in these tests, 15 s, and
        gunicorn's graceful_timeout, 30 s) SIGKILL its whole session."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)  # the session this test started
            self.proc.wait(5)
        else:  # reap stragglers of our own session (a worker that outlived its master)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        return self.proc.returncode

    def log(self, tail: int = 6000) -> str:
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return text[-tail:] if tail else text


def _mp_helper(pid: int) -> bool:
    """A process multiprocessing runs for itself (resource tracker, forkserver)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"multiprocessing.resource_tracker" in cmd or b"multiprocessing.forkserver" in cmd


def children_of(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent``, in pid order."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(rest) > 1 and int(rest[1]) == parent and rest[0] not in (b"Z", b"X"):
            out.append(int(d))
    return sorted(out)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Load:
    """Threads sending /append requests, each with a unique id; some keyed, some not.
    Records the ids answered 200 (and never retries, so an id is sent once). ``path``: a
    template for other apps' routes (``"/log?{rid}"``: the id only); ``count``: requests
    per thread, then the thread ends (``join()``), instead of running until ``stop()``."""

    def __init__(self, port: int, threads: int = 4, tag: str = "r", path: str | None = None,
                 count: int | None = None):
        self.port = port
        self.path, self.count = path, count
        self.ok: set[str] = set()
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(f"{tag}{i}",), daemon=True)
                         for i in range(threads)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def _run(self, tag: str) -> None:
        n = 0
        while not self._stop.is_set() and (self.count is None or n < self.count):
            rid = f"{tag}-{n}"
            if self.path is not None:
                q = self.path.format(rid=rid)
            else:
                q = f"/append?id={rid}" + (f"&key=k{n % 97}" if n % 3 == 0 else "")
            n += 1
            try:
                status, _ = get(self.port, q, timeout=5.0)
            except (OSError, http.client.HTTPException):  # worker killed mid-request
                status = 0
            with self._lock:
                self.sent += 1
                if status == 200:
                    self.ok.add(rid)
                else:
                    self.failed += 1
                    time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self.join(10)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)


def log_counts(data_dir: str, prefix: str = "requests") -> dict[str, int]:
    counts: dict[str, int] = {}
    with cometmp.Client(data_dir, readonly=True) as c:
        for stream in c.streams(f"{prefix}:shard:*"):
            for m in c.scan(stream):
                k = bytes(m.data).decode()
                counts[k] = counts.get(k, 0) + 1
    return counts


def assert_exactly_once(data_dir: str, ok: set[str]) -> dict[str, int]:
    counts = log_counts(data_dir)
    missing = [i for i in ok if counts.get(i, 0) == 0]
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} ids answered 200 are not in the log: {missing[:10]}"
    assert not dupes, f"ids written more than once: {list(dupes.items())[:10]}"
    return counts


def status(data_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "cometmp", "status", data_dir, "--json"],
                         env=server_env(data_dir), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def ownership_problems(doc: dict, live_pids: set[int]) -> list[str]:
    """Why ``doc`` does not show every shard owned by exactly one live worker and every
    live worker in a slot (or []). Both: while one worker is still joining, the workers
    that have joined can own every shard (its slot's shards are re-owned), so shard
    ownership alone settles before the table is whole (a loaded run saw a uvicorn table
    with one of its two workers)."""
    width = max(doc["families"].values(), default=0)
    problems = []
    if doc["registry"] is None:
        return ["no registry"]
    slotted = {sl["pid"] for sl in doc["slots"] if sl["alive"]}
    problems += [f"worker {pid} has no slot" for pid in sorted(live_pids - slotted)]
    for s in range(width):
        owners = [sl for sl in doc["slots"] if s in sl["shards"]]
        if len(owners) != 1:
            problems.append(f"shard {s} has {len(owners)} owners")
        elif not owners[0]["alive"] or owners[0]["pid"] not in live_pids:
            problems.append(f"shard {s} owner {owners[0]['pid']} is not a live worker")
    return problems


def wait_owned(data_dir: str, server: Server, timeout: float = 30.0) -> dict:
    """Until every shard is owned by exactly one live worker and every live worker holds a
    slot (each poll runs ``cometmp status``, a process start: the bound is for a loaded
    machine)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = status(data_dir)
        problems = ownership_problems(doc, set(server.workers()))
        if not problems:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"ownership did not settle: {problems}\n"
                                 f"{json.dumps(doc, indent=1)}\n{server.log()}")
        time.sleep(0.2)


def shm_exists(data_dir: str) -> bool:
    if registry.key.read_key(os.path.abspath(data_dir)) is None:
        return False   # no registry key yet, so no registry anyone could name (I33a)
    return os.path.exists("/dev/shm/" + registry.shm_name(data_dir).lstrip("/"))


def kill_random_worker(server: Server, rng: random.Random, exclude=()) -> int | None:
    pids = [p for p in server.workers() if p not in exclude]
    if not pids:
        return None
    pid = rng.choice(pids)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return pid
