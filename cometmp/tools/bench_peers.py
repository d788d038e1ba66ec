"""Peers of ``cometmp bench`` that need packages or servers: Redis Streams and LMDB.

Runs in the bench's process; not thread safe. Benchmark-only: the ``redis`` and ``lmdb``
packages come from the ``bench`` extra (``pip install 'cometmp[bench]'``) and
``redis-server`` from the OS (Debian: ``apt-get install redis-server``). Nothing in the
library imports this module; a missing package or binary skips that peer with a note.

One function per peer, timed exactly like cometmp's side of the ratio: ``bench`` hands its
own timing helpers in as a :class:`Timing` (so this module never imports it), and runs the
peers in the same rounds as cometmp's workloads, with the same 100-byte payload:

* ``redis_ping``            one ``PING`` per call on the same connection: the loopback TCP
  round trip plus redis-py's own cost, the floor under every single-call Redis figure.
* ``redis_xadd``            one ``XADD stream * d <payload>`` per call, a loopback TCP round
  trip each; timed like ``append`` (groups of 100 + every call sampled).
* ``redis_xadd_pipelined``  1,000 ``XADD`` in one non-transactional pipeline per
  ``execute()``; timed per batch like ``append_many``.
* ``lmdb_put``              one write transaction per ``put`` (8-byte big-endian sequence key,
  ``append=True``), timed like ``append``.
* ``lmdb_put_batched``      1,000 puts (``cursor.putmulti``) per write transaction, timed per
  batch like ``append_many``.

Redis runs twice, each on its own ``redis-server`` that this module starts on 127.0.0.1 on a
free port with no config file (built-in defaults) plus ``--save ""`` (no RDB snapshots) and
either ``--appendonly no`` (in memory only: what Redis gives by default, lost on a server
crash) or ``--appendonly yes --appendfsync everysec`` (AOF written per command, fsynced once a
second by a background thread: the nearest Redis has to cometmp's "survives a process crash,
not power loss"). Both are stopped by pid when the run ends. LMDB is opened with
``sync=False`` (no fsync per commit: it survives a process crash, not an OS crash, like
cometmp's default durability) and ``map_size`` 1 GiB.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import count, repeat
from typing import Callable

__all__ = ["BATCHED", "FLOORS", "INSTALL_HINT", "Peers", "SERVER_HINT", "SINGLE", "Timing",
           "print_table", "ratios"]

INSTALL_HINT = "pip install 'cometmp[bench]' (redis, hiredis, lmdb)"
SERVER_HINT = "install redis-server from the OS (Debian: apt-get install redis-server)"

#: redis-server flags per configuration (beside --port/--bind/--dir/--save ""); see above
REDIS_CONFIGS = {
    "": ("--appendonly", "no"),
    "_aof": ("--appendonly", "yes", "--appendfsync", "everysec"),
}

#: peers timed per call, against cometmp's ``append`` (peer mean / cometmp mean)
SINGLE = ("redis_xadd", "redis_xadd_aof", "lmdb_put")
#: what bounds a peer rather than a peer, timed and compared like SINGLE; writes nothing
FLOORS = ("redis_ping",)
#: peers timed per batch of 1,000, against cometmp's ``append_many``
BATCHED = ("redis_xadd_pipelined", "redis_xadd_pipelined_aof", "lmdb_put_batched")

LABELS = {
    "redis_ping": "Redis PING (the round trip under every XADD), appendonly no",
    "redis_xadd": "Redis XADD, 1 per round trip, appendonly no",
    "redis_xadd_aof": "Redis XADD, 1 per round trip, AOF everysec",
    "redis_xadd_pipelined": "Redis XADD x1000 pipelined, appendonly no",
    "redis_xadd_pipelined_aof": "Redis XADD x1000 pipelined, AOF everysec",
    "lmdb_put": "LMDB put, 1 per txn, sync=False",
    "lmdb_put_batched": "LMDB put x1000 per txn, sync=False",
}


@dataclass(frozen=True)
class Timing:
    """cometmp bench's timing rules, handed in so both sides of a ratio use one of each."""

    payload: bytes
    batch: int  # entries per batch call
    per_call: Callable  # (fn, arg, calls, sampled, timer_ns) -> figures, like ``append``
    per_batch: Callable  # (fn, arg, entries, warmup_batches) -> figures, like ``append_many``


READY_TIMEOUT_S = 20.0  # a loaded machine can take seconds to start redis-server
STOP_TIMEOUT_S = 20.0


# ------------------------------------------------------------------- redis-server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A ``redis-server`` child on 127.0.0.1 with its data in ``directory``; stop() by pid."""

    def __init__(self, binary: str, directory: str, flags: tuple[str, ...]):
        import redis

        self.directory = directory
        self.flags = flags
        last = ""
        for _ in range(3):  # the free port can be taken between probe and bind: retry
            self.port = _free_port()
            log = os.path.join(directory, "redis.log")
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", directory,
                 "--save", "", "--daemonize", "no", "--logfile", log, *flags],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.pid = self.proc.pid
            self.client = redis.Redis(host="127.0.0.1", port=self.port)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    info = self.client.info("server") if self.client.ping() else {}
                    # the answer must come from our child, not from whoever took the port
                    if info.get("process_id") == self.pid:
                        self.version = info["redis_version"]
                        self.config = {**self.client.config_get("appendonly"),
                                       **self.client.config_get("appendfsync")}
                        return
                    break  # another server answers on this port: try another
                except redis.ConnectionError:
                    time.sleep(0.01)
            last = _tail(log)
            self.stop()
        raise RuntimeError(f"redis-server {flags} did not start: {last}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client of a dead server
            pass


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-400:].strip()
    except OSError:
        return "(no log)"


# -------------------------------------------------------------------------- peers


def redis_xadd(t: Timing, server: RedisServer, key: str, calls: int, sampled: int, warmup: int,
               timer_ns: float) -> dict:
    xadd = server.client.xadd
    fields = {b"d": t.payload}

    def add(f, _xadd=xadd, _key=key):
        _xadd(_key, f)

    for _ in repeat(None, warmup):
        add(fields)
    out = t.per_call(add, fields, calls, sampled, timer_ns)
    out["entries_written"] = server.client.xlen(key)
    server.client.delete(key)
    return out


def redis_ping(t: Timing, server: RedisServer, calls: int, sampled: int, warmup: int,
               timer_ns: float) -> dict:
    ping = server.client.ping
    for _ in repeat(None, warmup):
        ping()
    return t.per_call(lambda _, _ping=ping: _ping(), None, calls, sampled, timer_ns)


def redis_xadd_pipelined(t: Timing, server: RedisServer, key: str, entries: int,
                         warmup_batches: int) -> dict:
    pipe = server.client.pipeline(transaction=False)
    fields = {b"d": t.payload}
    r = range(t.batch)

    def batch(f, _pipe=pipe, _key=key, _r=r):
        xadd = _pipe.xadd
        for _i in _r:
            xadd(_key, f)
        _pipe.execute()

    out = t.per_batch(batch, fields, entries, warmup_batches)
    out["entries_written"] = server.client.xlen(key)
    server.client.delete(key)
    return out


def _lmdb_env(root: str):
    import lmdb

    d = tempfile.mkdtemp(prefix="lmdb-", dir=root)
    return d, lmdb.open(d, map_size=1 << 30, sync=False, metasync=False, max_dbs=0)


def lmdb_put(t: Timing, root: str, calls: int, sampled: int, warmup: int,
             timer_ns: float) -> dict:
    d, env = _lmdb_env(root)
    begin = env.begin
    pack = struct.Struct(">Q").pack
    seq = count().__next__

    def put(p, _begin=begin, _pack=pack, _seq=seq):
        with _begin(write=True) as txn:
            txn.put(_pack(_seq()), p, append=True)

    p = t.payload
    for _ in repeat(None, warmup):
        put(p)
    out = t.per_call(put, p, calls, sampled, timer_ns)
    out["entries_written"] = env.stat()["entries"]
    env.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


def lmdb_put_batched(t: Timing, root: str, entries: int, warmup_batches: int) -> dict:
    d, env = _lmdb_env(root)
    begin = env.begin
    pack = struct.Struct(">Q").pack
    nxt = count(0, t.batch).__next__

    def batch(p, _begin=begin, _pack=pack, _n=t.batch, _nxt=nxt):
        base = _nxt()
        with _begin(write=True) as txn:
            txn.cursor().putmulti(zip(map(_pack, range(base, base + _n)), repeat(p, _n)),
                                  append=True)

    out = t.per_batch(batch, t.payload, entries, warmup_batches)
    out["entries_written"] = env.stat()["entries"]
    env.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


# ---------------------------------------------------------------------- the run


class Peers:
    """The peers of one ``cometmp bench`` run: ``with Peers(root) as peers:`` finds the
    packages and binaries, starts the redis-servers; ``peers.round(...)`` runs every
    available peer once; leaving the block stops the servers. ``skipped`` maps each peer
    that cannot run to the reason, with what to install."""

    def __init__(self, root: str, timing: Timing):
        self.root = root
        self.t = timing
        self.skipped: dict[str, str] = {}
        self.servers: dict[str, RedisServer] = {}
        self.rounds = 0
        self.available: list[str] = []

    def __enter__(self) -> "Peers":
        self._find()
        for why, names in _by_reason(self.skipped).items():  # stderr: --json keeps stdout
            print(f"cometmp bench: skipping {', '.join(names)}: {why}", file=sys.stderr)
        return self

    def _find(self) -> None:
        try:
            import lmdb  # noqa: F401

            self.available += ["lmdb_put", "lmdb_put_batched"]
        except ImportError:
            for k in ("lmdb_put", "lmdb_put_batched"):
                self.skipped[k] = f"the lmdb package is not installed: {INSTALL_HINT}"
        redis_peers = [k for k in FLOORS + SINGLE + BATCHED if k.startswith("redis")]
        try:
            import redis  # noqa: F401
        except ImportError:
            for k in redis_peers:
                self.skipped[k] = f"the redis package is not installed: {INSTALL_HINT}"
            return
        binary = shutil.which("redis-server")
        if binary is None:
            for k in redis_peers:
                self.skipped[k] = f"redis-server is not on PATH: {SERVER_HINT}"
            return
        try:
            for suffix, flags in REDIS_CONFIGS.items():
                d = tempfile.mkdtemp(prefix=f"redis{suffix}-", dir=self.root)
                self.servers[suffix] = RedisServer(binary, d, flags)
                self.available += [f"redis_xadd{suffix}", f"redis_xadd_pipelined{suffix}"]
            self.available.append("redis_ping")
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        for s in self.servers.values():
            s.stop()
        self.servers.clear()

    def describe(self) -> dict:
        """What ran and how, for the JSON document."""
        out: dict = {"available": sorted(self.available), "skipped": dict(self.skipped),
                     "lmdb": None, "redis": {}}
        if any(k.startswith("lmdb") for k in self.available):
            import lmdb

            out["lmdb"] = {"package": lmdb.__version__, "library": ".".join(
                map(str, lmdb.version())), "sync": False, "map_size": 1 << 30}
        for suffix, s in self.servers.items():
            out["redis"][f"redis_xadd{suffix}"] = {
                "server": s.version, "flags": ["--save", "", *s.flags],
                "config": {k: v for k, v in sorted(s.config.items())}, "port": s.port,
                "pid": s.pid}
        return out

    def round(self, calls: int, sampled: int, batch_entries: int, warmup: int,
              timer_ns: float) -> dict:
        """Run every available peer once; returns ``{peer: figures}``."""
        self.rounds += 1
        t = self.t
        wb = max(2, warmup // t.batch)
        out = {}
        if "" in self.servers:
            out["redis_ping"] = redis_ping(t, self.servers[""], calls, sampled, warmup, timer_ns)
        for suffix, s in self.servers.items():
            key = f"bench:round{self.rounds}"
            out[f"redis_xadd{suffix}"] = redis_xadd(t, s, key, calls, sampled, warmup, timer_ns)
            out[f"redis_xadd_pipelined{suffix}"] = redis_xadd_pipelined(t, s, key, batch_entries,
                                                                        wb)
        if "lmdb_put" in self.available:
            out["lmdb_put"] = lmdb_put(t, self.root, calls, sampled, warmup, timer_ns)
            out["lmdb_put_batched"] = lmdb_put_batched(t, self.root, batch_entries, wb)
        return out


def ratios(peers: dict, append: dict, append_many: dict) -> dict:
    """Same-round "times faster than the peer": peer mean / ``append`` mean for the peers
    timed per call, ``append_many`` rate / peer rate for the batched ones."""
    out = {}
    for k, v in peers.items():
        if k in SINGLE or k in FLOORS:
            out[f"vs_{k}"] = v["mean_ns"] / append["mean_ns"]
        else:
            out[f"vs_{k}"] = append_many["entries_per_s"] / v["entries_per_s"]
    return out


# ------------------------------------------------------------------------ report


def print_table(doc: dict, fmt_ns: Callable[[float], str]) -> None:
    """The comparison as Markdown table rows (docs/PERFORMANCE.md "Peers side by side")."""
    r, q = doc["results"], doc["ratios"]
    peers = r.get("peers", {})
    ref = doc["comet_reference"]
    a, b = r["append"], r["append_many"]
    print("  peers side by side (Markdown rows; cometmp is Nx faster = same-round ratio, median):")
    print("  | workload | per entry | entries/s | cometmp is |")
    print("  |---|---:|---:|---:|")

    def row(label, ns, ratio):
        print(f"  | {label} | {fmt_ns(ns)} | {1e9 / ns / 1e6:.3g} M | {ratio} |")

    row("cometmp `append`", a["mean_ns"], "1")
    row("cometmp `append_many` x1000", b["ns_per_entry"], "1")
    row("SQLite WAL NORMAL, 1 INSERT/txn", r["sqlite"]["mean_ns"], f"{q['vs_sqlite']:.1f}x faster")
    row("logging.FileHandler", r["filehandler"]["mean_ns"], f"{q['vs_filehandler']:.1f}x faster")
    for k in FLOORS + SINGLE + BATCHED:
        if k in peers:
            x = peers[k]
            one = k not in BATCHED
            ns = x["mean_ns"] if one else x["ns_per_entry"]
            vs = "append" if one else "append_many"
            row(LABELS[k], ns, f"{q['vs_' + k]:.1f}x faster (vs {vs})")
    print(f"  | Comet `Append`, reference: {ref['file']}, not measured in this run | "
          f"{fmt_ns(ref['append_ns'])} | {1e3 / ref['append_ns']:.3g} M | "
          f"{q['vs_comet_append']:.1f}x faster (vs append) |")
    print(f"  | Comet `Append` x1000, reference (same file) | "
          f"{fmt_ns(1e9 / ref['append_many_entries_per_s'])} | "
          f"{ref['append_many_entries_per_s'] / 1e6:.3g} M | "
          f"{q['vs_comet_append_many']:.1f}x faster (vs append_many) |")
    for why, names in _by_reason(doc.get("peers_skipped", {})).items():
        print(f"  (skipped {', '.join(names)}: {why})")


def _by_reason(skipped: dict) -> dict:
    out: dict[str, list[str]] = {}
    for k, why in skipped.items():
        out.setdefault(why, []).append(k)
    return out
