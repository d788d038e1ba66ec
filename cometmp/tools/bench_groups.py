"""``cometmp bench --scenario groups``: a consumer group of member processes, cometmp's live
membership (cometmp.members) beside Redis Streams consumer groups, on the same work.

Runs in the calling process, which is the producer and the referee; every member is its
own ``python`` child (``member_main`` below), started and stopped by this module (by pid).
Redis runs on its own ``redis-server`` on 127.0.0.1 started by ``bench_peers.RedisServer``
(``--appendonly no``: Redis's default persistence) and stopped when the run ends; without
the ``redis`` package or the binary the Redis side is skipped with a note.

The work (the same on both sides, every run in a fresh data directory / stream key):

* the producer appends ``--entries`` payloads of 100 bytes, ``seq(8, little endian)`` +
  a fixed filler, in batches of 100 (cometmp: ``Log.append_many`` over a family of
  ``SHARDS`` shards, round robin; Redis: 100 ``XADD`` per pipeline to one stream);
* each member loops: read a batch of up to 100 (cometmp: ``Consumer.read(max_messages=
  100, timeout=0.05)``, no ``assignment``: a live member; Redis: ``XREADGROUP ... COUNT
  100 BLOCK 50 STREAMS key >``), check every payload against its seq, record ``D``
  (delivered), run the handler (nothing, or sleep ``work`` seconds per batch), record
  ``P`` (processed), ack (``Consumer.ack(batch)`` / ``XACK`` of the batch's ids), record
  ``A``. Records go to the member's own file, one ``write`` each (they survive kill -9);
* Redis members also run ``XAUTOCLAIM key group me <min-idle> <cursor> COUNT 100`` every
  ``CLAIM_INTERVAL_S`` (continuing while the cursor is not ``0-0``) and process what it
  returns first: that is how Redis redelivers a dead consumer's pending entries.

The members are started, the group settles (cometmp: every shard held by the member the
assignment gives it; Redis: every member has returned from its first XREADGROUP), then
the producer starts; time runs from the producer's first append (backlog runs: from the
moment the paused members are let go) to the moment every entry has been acked (the
earliest ``A`` of each seq, the latest over seqs). Per run the members' time on a CPU and
waiting for one (/proc/PID/schedstat) is reported per batch: on this shared machine the
run queue, not the queue under test, often bounds the figures.

Runs, in each of ``--rounds`` rounds (order alternated per round):

* ``throughput``  2 members, no handler work: entries/s end to end, cometmp and Redis,
  ratio cometmp / Redis per round.
* ``drain``       the same with the members paused (still members) while the producer
  appends everything, then let go: the group's own rate, and the producer's alone.
* ``io``          a handler that sleeps 1 ms per batch (I/O-bound work), 1 member and 2
  members, both systems, draining a backlog like ``drain``: 2 / 1 per round (issue 11
  item 5 targets >= 1.8x for cometmp). Beside them a ``control``: the same handler and
  bookkeeping in 1 and 2 processes with no queue at all (each builds its own batches),
  whose 2 / 1 is what the shared machine allowed at that moment.
* ``kill``        2 members with the 1 ms handler, draining a backlog; once ``KILL_AT`` of
  the entries are processed one member is told (a ``.hold`` file) to stop right after its
  next delivery; it records ``K`` there, holding a delivered, unprocessed, unacked batch,
  and is ``kill -9``ed: time from the kill until the first and the last entry it held are
  delivered again to the survivor. (An earlier version froze the member at a poll and
  killed it only if its last record was a ``D``, and under load could miss every time.)

Accounting, per run, from every record of every member (exactly once means both 0):
``lost`` = seqs never processed, ``duplicated`` = processings beyond the first of a seq,
``wrong`` = payloads that did not match their seq. Processing is recorded before the ack,
so a member killed between the two is redelivered what it had processed: that is the
at-least-once duplicate both systems share, and it is counted.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array

SHARDS = 8                 # the cometmp family; 2 members hold 4 each (I41c)
PREFIX = "bench-groups"
PATTERN = f"{PREFIX}:shard:*"
GROUP = "bench"
BATCH = 100
PAYLOAD_BYTES = 100
FILLER = b"f" * (PAYLOAD_BYTES - 8)
WORK_S = 0.001             # the I/O-bound handler: 1 ms per batch of 100
KILL_AT = 0.4              # kill -9 once this share of the entries is processed
CLAIM_INTERVAL_S = 0.25    # Redis members' XAUTOCLAIM period (= cometmp's members.REFRESH)
#: XAUTOCLAIM's min-idle-time: what Redis takes as "its consumer is dead". It must exceed
#: the longest a live consumer may hold a batch (1 ms of work plus preemption on a loaded
#: machine: tens to hundreds of ms here), or live consumers' entries are stolen and
#: processed twice. 1 s is short by Redis users' standards (the XAUTOCLAIM docs use an
#: hour; 30-60 s is common), i.e. favourable to Redis's redelivery time.
MIN_IDLE_MS = 1000
TARGET_IO_SCALING = 1.8    # issue 11 item 5: 2 members vs 1, I/O-bound handler
SETTLE_TIMEOUT_S = 60.0
POLL_S = 0.005

_REC = struct.Struct("<cdI")   # kind, CLOCK_MONOTONIC seconds, count; then count x u64 seq

INSTALL_HINT = "pip install 'cometmp[bench]' (redis, hiredis)"
SERVER_HINT = "install redis-server from the OS (Debian: apt-get install redis-server)"


# ------------------------------------------------------------------------- members

def _check(payloads) -> tuple[array, int]:
    seqs = array("Q", [int.from_bytes(p[:8], "little") for p in payloads])
    wrong = sum(1 for p in payloads if len(p) != PAYLOAD_BYTES or p[8:] != FILLER)
    return seqs, wrong


def member_main(argv: list[str] | None = None) -> None:
    """A member process: ``KIND TARGET NAME LOG WORK_S MIN_IDLE_MS``; runs until LOG.stop
    exists, reads nothing while LOG.pause exists. Runs as its own process (started by
    ``_Run``), never in the bench's."""
    kind, target, name, log, work, min_idle = (argv or sys.argv[1:])[:6]
    work_s = float(work)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stop = log + ".stop"

    def rec(k: bytes, seqs=()) -> None:
        os.write(fd, _REC.pack(k, time.monotonic(), len(seqs)) + bytes(seqs))

    hold = log + ".hold"

    def handle(payloads) -> array:
        seqs, wrong = _check(payloads)
        rec(b"D", seqs)
        if os.path.exists(hold):
            # the bench's kill target: it now holds a delivered, unprocessed, unacked
            # batch, says so (K) and waits here for its kill -9
            rec(b"K")
            while True:
                time.sleep(1)
        if wrong:
            rec(b"W", array("Q", [wrong]))
        if work_s:
            time.sleep(work_s)
        rec(b"P", seqs)
        return seqs

    pause, held = log + ".pause", [False]

    def paused() -> bool:
        """While LOG.pause exists the member reads nothing (it stays a member: liveness
        is its lock, not its reads); ``H`` is recorded once per pause."""
        if not os.path.exists(pause):
            held[0] = False
            return False
        if not held[0]:
            rec(b"H")
            held[0] = True
        time.sleep(0.001)
        return True

    if kind == "control":
        # no queue: batches i, i+k, ... of TARGET "n:k" built here, handled and recorded
        # like the others' (the payload building stands in for a read); acked by nobody
        n, k = map(int, target.split(":"))
        i = int(name.rsplit("/", 1)[1])
        rec(b"R")
        todo = iter(range(i * BATCH, n, k * BATCH))
        while not os.path.exists(stop):
            if paused():
                continue
            first = next(todo, None)
            if first is None:
                time.sleep(0.01)
                continue
            seqs = handle([s.to_bytes(8, "little") + FILLER
                           for s in range(first, min(n, first + BATCH))])
            rec(b"A", seqs)
        return
    if kind == "cometmp":
        import cometmp

        with cometmp.Client(target) as c:
            con = cometmp.Consumer(c, group=GROUP)
            ready = False
            while not os.path.exists(stop):
                if paused():
                    continue
                b = con.read(PATTERN, max_messages=BATCH, timeout=0.05)
                if not ready:
                    rec(b"R")
                    ready = True
                if not len(b):
                    continue
                seqs = handle(b.payloads())
                con.ack(b)
                rec(b"A", seqs)
            con.close()
        return
    import redis

    r = redis.Redis(host="127.0.0.1", port=int(target))
    key = name.split("/")[0]
    me = name
    next_claim, cursor, ready = 0.0, "0-0", False
    while not os.path.exists(stop):
        if paused():
            continue
        entries = None
        now = time.monotonic()
        if now >= next_claim:
            got = r.xautoclaim(key, GROUP, me, int(min_idle), start_id=cursor, count=BATCH)
            cursor = got[0].decode() if isinstance(got[0], bytes) else got[0]
            if cursor == "0-0":
                next_claim = now + CLAIM_INTERVAL_S
            entries = [e for e in got[1] if e[1]]   # (id, None): deleted meanwhile
        if not entries:
            resp = r.xreadgroup(GROUP, me, {key: ">"}, count=BATCH, block=50)
            if not ready:
                rec(b"R")
                ready = True
            if not resp:
                continue
            entries = resp[0][1]
        seqs = handle([f[b"d"] for _id, f in entries])
        r.xack(key, GROUP, *[i for i, _f in entries])
        rec(b"A", seqs)
    r.close()


def _records(path: str):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return
    off = 0
    while off + _REC.size <= len(raw):
        k, t, n = _REC.unpack_from(raw, off)
        end = off + _REC.size + 8 * n
        if end > len(raw):
            return   # a member killed inside its write (never seen: one write per record)
        yield k, t, array("Q", raw[off + _REC.size:end])
        off = end


class _Tail:
    """Incremental reader of one member's record file (the referee's progress view)."""

    def __init__(self, path: str):
        self.path, self.off, self.buf = path, 0, b""

    def new(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.off += len(chunk)
        self.buf += chunk
        off = 0
        while off + _REC.size <= len(self.buf):
            k, t, n = _REC.unpack_from(self.buf, off)
            end = off + _REC.size + 8 * n
            if end > len(self.buf):
                break
            yield k, t, array("Q", self.buf[off + _REC.size:end])
            off = end
        self.buf = self.buf[off:]


# ------------------------------------------------------------------------- one run

def _schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of ``pid``'s main thread so far
    (/proc/PID/schedstat); None once it is gone or without schedstats."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on, wait, _slices = f.read().split()
        return int(on), int(wait)
    except (OSError, ValueError):
        return None


def _child_env() -> dict:
    import cometmp

    top = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = top + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


_MEMBER_CODE = "from cometmp.tools.bench_groups import member_main; member_main()"


def _wait(cond, what: str, bound: float):
    end = time.monotonic() + bound
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            raise RuntimeError(f"cometmp bench groups: {what} did not happen within {bound:.0f} s")
        time.sleep(POLL_S)


class _Run:
    """One run: members started, settled, fed, refereed, stopped; ``result()`` accounts."""

    def __init__(self, system: str, base: str, tag: str, members: int, work_s: float,
                 payloads: list[bytes], server=None, kill: bool = False, backlog: bool = False):
        self.system, self.members, self.work_s = system, members, work_s
        self.payloads, self.server, self.kill, self.backlog = payloads, server, kill, backlog
        self.n = len(payloads)
        self.dir = tempfile.mkdtemp(prefix=f"{system}-{tag}-", dir=base)
        self.logs = [os.path.join(self.dir, f"member{i}.rec") for i in range(members)]
        self.procs: list[subprocess.Popen] = []
        self.key = f"bench:{tag}"
        self.t_kill: float | None = None
        self.victim: int | None = None
        self.timed_out = False

    # -- setup
    def _start(self) -> None:
        if self.system == "cometmp":
            import cometmp

            self.client = cometmp.Client(os.path.join(self.dir, "data"))
            self.log = self.client.log(PREFIX, SHARDS)   # creates every shard, empty
            target = self.client.path
        elif self.system == "redis":
            self.redis = self.server.client
            self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
            target = str(self.server.port)
        else:
            target = f"{self.n}:{self.members}"
        env = _child_env()
        for i, log in enumerate(self.logs):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", _MEMBER_CODE, self.system, target, f"{self.key}/{i}", log,
                 repr(self.work_s), str(MIN_IDLE_MS)],
                env=env, stdin=subprocess.DEVNULL))

    def _settled(self) -> bool:
        if any(p.poll() is not None for p in self.procs):
            raise RuntimeError(f"cometmp bench groups: a {self.system} member exited during "
                               f"setup (codes {[p.poll() for p in self.procs]})")
        for log in self.logs:
            if not any(k == b"R" for k, _t, _s in _records(log)):
                return False
        if self.system != "cometmp":
            return True
        import cometmp
        from cometmp import members

        g = next((x for x in cometmp.consumer_groups(self.client) if x["name"] == GROUP), None)
        live = [m for m in (g["members"] if g else []) if m["live"]]
        if len(live) != self.members:
            return False
        held = {s: m["id"] for m in live for s in m["streams"]}
        want = members.assign(self.log.streams, {m["id"]: tuple(m["patterns"]) for m in live})
        return held == want

    # -- the run
    def run(self) -> "_Run":
        try:
            self._start()
            _wait(self._settled, f"the {self.system} group of {self.members} to settle",
                  SETTLE_TIMEOUT_S)
            self._produce_and_referee()
        finally:
            self._stop()
        return self

    def _held(self) -> bool:
        return all(any(k == b"H" for k, _t, _s in _records(log)) for log in self.logs)

    def _produce_and_referee(self) -> None:
        p, n = self.payloads, self.n
        if self.backlog:   # members paused (still members), everything appended, then go
            for log in self.logs:
                open(log + ".pause", "w").close()
            _wait(self._held, f"the {self.system} members to pause", SETTLE_TIMEOUT_S)
        self.t0 = self.t_start = time.monotonic()
        if not self.backlog:
            self.sched0 = [_schedstat(p.pid) for p in self.procs]
        if self.system == "cometmp":
            append_many = self.log.append_many
            for i in range(0, n, BATCH):
                append_many(p[i:i + BATCH])
        elif self.system == "redis":
            pipe = self.redis.pipeline(transaction=False)
            for i in range(0, n, BATCH):
                for x in p[i:i + BATCH]:
                    pipe.xadd(self.key, {b"d": x})
                pipe.execute()
        self.t_produced = time.monotonic()
        if self.backlog:
            self.sched0 = [_schedstat(p.pid) for p in self.procs]
            self.t0 = time.monotonic()
            for log in self.logs:
                os.unlink(log + ".pause")
        tails = [_Tail(log) for log in self.logs]
        seen = bytearray(n)
        done = 0
        victim_last = None

        def absorb(i: int) -> None:
            nonlocal done, victim_last
            for k, _t, seqs in tails[i].new():
                if i == 0:
                    victim_last = k
                if k == b"P":
                    for s in seqs:
                        if s < n and not seen[s]:
                            seen[s] = 1
                            done += 1

        # generous: the slowest run here (1 member, 1 ms per 100) is ~1/100 ms per entry
        deadline = time.monotonic() + 60.0 + n / 500
        while done < n:
            for i in range(len(tails)):
                absorb(i)
            if self.kill and self.t_kill is None and done >= KILL_AT * n and \
                    not os.path.exists(self.logs[0] + ".hold"):
                # ask member 0 to stop right after its next delivery: it then holds a
                # delivered, unprocessed, unacked batch and records K (member_main)
                open(self.logs[0] + ".hold", "w").close()
            if self.kill and self.t_kill is None and victim_last == b"K":
                os.kill(self.procs[0].pid, signal.SIGKILL)   # kill -9 while it holds it
                self.t_kill = time.monotonic()
                self.victim = 0
                self.procs[0].wait()
            if time.monotonic() > deadline:
                self.timed_out = True
                break
            time.sleep(POLL_S)
        self.sched1 = [_schedstat(p.pid) for p in self.procs]
        # every processing recorded: wait for the last acks to land in the group
        try:
            _wait(self._all_acked, "the last acks", 30.0)
        except RuntimeError:
            self.timed_out = True

    def _all_acked(self) -> bool:
        if self.system == "control":
            return True
        if self.system == "cometmp":
            import cometmp

            g = next(x for x in cometmp.consumer_groups(self.client) if x["name"] == GROUP)
            return all(s["lag"] == 0 for s in g["streams"].values()) and \
                sum(s["length"] for s in g["streams"].values()) == self.n
        info = self.redis.xpending(self.key, GROUP)
        return info["pending"] == 0 and any(
            g["name"] in (GROUP, GROUP.encode()) and g.get("lag", 0) == 0
            for g in self.redis.xinfo_groups(self.key))

    def _stop(self) -> None:
        for log in self.logs:
            open(log + ".stop", "w").close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.system == "cometmp":
            if getattr(self, "client", None) is not None:
                self.client.close()
        elif self.system == "redis" and self.server is not None:
            self.server.client.delete(self.key)

    # -- accounting
    def result(self) -> dict:
        n = self.n
        counts = array("I", bytes(4 * n))
        first_ack = array("d", [float("inf")]) * n
        wrong = 0
        per_member = []
        recs = [list(_records(log)) for log in self.logs]
        for i, rs in enumerate(recs):
            proc = 0
            for k, t, seqs in rs:
                if k == b"P":
                    proc += len(seqs)
                    for s in seqs:
                        if s < n:
                            counts[s] += 1
                        else:
                            wrong += 1
                elif k == b"A":
                    for s in seqs:
                        if s < n and t < first_ack[s]:
                            first_ack[s] = t
                elif k == b"W":
                    wrong += seqs[0]
            per_member.append(proc)
        distinct = sum(1 for c in counts if c)
        processed = sum(counts)
        ends = [t for t in first_ack if t != float("inf")]
        t_end = max(ends) if ends else float("nan")
        out = {"system": self.system, "members": self.members, "work_s_per_batch": self.work_s,
               "entries": n, "backlog": self.backlog, "processed_per_member": per_member,
               "seconds": t_end - self.t0, "entries_per_s": n / (t_end - self.t0),
               "producer_seconds": self.t_produced - self.t_start,
               "lost": n - distinct, "duplicated": processed - distinct, "wrong": wrong,
               "timed_out": self.timed_out}
        # where the members' time went while the entries flowed: on a CPU, waiting for one
        # (the shared machine's run queue), the rest asleep (the handler's work, waits)
        on = wait = 0
        for a, b in zip(self.sched0, self.sched1):
            if a is not None and b is not None:
                on += b[0] - a[0]
                wait += b[1] - a[1]
        batches = -(-n // BATCH)
        out["members_cpu_ms_per_batch"] = on / 1e6 / batches
        out["members_runqueue_ms_per_batch"] = wait / 1e6 / batches
        if self.kill:
            out.update(self._redelivery(recs))
        return out

    def _redelivery(self, recs) -> dict:
        """The victim's delivered-but-not-acked seqs, and when the survivor got them."""
        v, tk = self.victim, self.t_kill
        if v is None:
            return {"killed": False}
        delivered, acked, last_d = set(), set(), None
        for k, t, seqs in recs[v]:
            if k == b"D":
                delivered.update(seqs)
                last_d = t
            elif k == b"A":
                acked.update(seqs)
        unacked = delivered - acked
        again: dict[int, float] = {}
        for i, rs in enumerate(recs):
            if i == v:
                continue
            for k, t, seqs in rs:
                if k == b"D" and t >= tk:
                    for s in seqs:
                        if s in unacked and s not in again:
                            again[s] = t
        times = sorted(again.values())
        return {"killed": True, "unacked_at_kill": len(unacked), "redelivered": len(again),
                "last_delivery_to_kill_s": tk - last_d if last_d is not None else None,
                # acked by the victim but never redelivered (a kill between the ack and its
                # "A" record; the victim is killed only while it waits after a "D", so 0)
                "acked_unrecorded": len(unacked) - len(again),
                "kill_to_first_redelivered_s": times[0] - tk if times else None,
                "kill_to_all_redelivered_s": times[-1] - tk if times else None}


# ------------------------------------------------------------------------- the scenario

def _redis_server(root: str):
    """A started RedisServer, or (None, reason)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return None, f"the redis package is not installed: {INSTALL_HINT}"
    binary = shutil.which("redis-server")
    if binary is None:
        return None, f"redis-server is not on PATH: {SERVER_HINT}"
    from .bench_peers import REDIS_CONFIGS, RedisServer

    d = tempfile.mkdtemp(prefix="redis-groups-", dir=root)
    return RedisServer(binary, d, REDIS_CONFIGS[""]), None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run(args, root: str, out=None) -> dict:
    """The scenario; ``args``: entries, rounds (bench.py's parser). Returns the document."""
    out = out or sys.stderr
    n = args.entries
    rounds = args.rounds
    payloads = [s.to_bytes(8, "little") + FILLER for s in range(n)]
    server, skipped = _redis_server(root)
    if skipped:
        print(f"cometmp bench groups: skipping Redis Streams: {skipped}", file=out)
    systems = ["cometmp"] + (["redis"] if server is not None else [])
    runs: dict[str, list[dict]] = {}
    tag = iter(range(1 << 30))
    try:
        for r in range(rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            plan = [(s, "throughput", 2, 0.0, False, False) for s in order]
            plan += [(s, "drain", 2, 0.0, False, True) for s in order]
            sizes = (1, 2) if r % 2 == 0 else (2, 1)
            plan += [(s, f"io_{m}", m, WORK_S, False, True) for s in [*order, "control"]
                     for m in sizes]
            plan += [(s, "kill", 2, WORK_S, True, True) for s in order]
            for system, what, m, work, kill, backlog in plan:
                res = _Run(system, root, f"{what}-{r}-{next(tag)}", m, work, payloads,
                           server if system == "redis" else None, kill, backlog).run().result()
                res["round"] = r
                runs.setdefault(f"{system}_{what}", []).append(res)
                print(f"cometmp bench groups: round {r} {system} {what}: "
                      f"{res['entries_per_s']:,.0f} entries/s, lost {res['lost']}, "
                      f"duplicated {res['duplicated']}", file=out, flush=True)
        redis_desc = None
        if server is not None:
            redis_desc = {"server": server.version, "port": server.port, "pid": server.pid,
                          "flags": ["--save", "", *server.flags], "config": server.config,
                          "xautoclaim_min_idle_ms": MIN_IDLE_MS,
                          "xautoclaim_every_s": CLAIM_INTERVAL_S}
    finally:
        if server is not None:
            server.stop()
    return _summarize(runs, [*systems, "control"], n, rounds, redis_desc, skipped)


def _summarize(runs, systems, n, rounds, redis_desc, skipped) -> dict:
    def med(key, field):
        return _median([x.get(field) for x in runs.get(key, [])])   # None: not killed

    def same_round(a, b, field="entries_per_s"):
        pa = {x["round"]: x[field] for x in runs.get(a, [])}
        pb = {x["round"]: x[field] for x in runs.get(b, [])}
        rs = [pa[r] / pb[r] for r in sorted(pa) if r in pb]
        return {"median": _median(rs), "rounds": rs}

    summary: dict = {}
    for s in systems:
        summary[s] = {
            "throughput_entries_per_s": med(f"{s}_throughput", "entries_per_s"),
            "drain_entries_per_s": med(f"{s}_drain", "entries_per_s"),
            "producer_entries_per_s": _median([n / x["producer_seconds"]
                                               for x in runs.get(f"{s}_drain", [])]),
            "io_1_member_entries_per_s": med(f"{s}_io_1", "entries_per_s"),
            "io_2_members_entries_per_s": med(f"{s}_io_2", "entries_per_s"),
            "io_scaling_2_over_1": same_round(f"{s}_io_2", f"{s}_io_1"),
            "io_cpu_ms_per_batch": med(f"{s}_io_2", "members_cpu_ms_per_batch"),
            "io_runqueue_ms_per_batch": med(f"{s}_io_2", "members_runqueue_ms_per_batch"),
            "kill_to_first_redelivered_s": med(f"{s}_kill", "kill_to_first_redelivered_s"),
            "kill_to_all_redelivered_s": med(f"{s}_kill", "kill_to_all_redelivered_s"),
            "kill_to_all_redelivered_s_max": max(
                (x["kill_to_all_redelivered_s"] for x in runs.get(f"{s}_kill", [])
                 if x.get("kill_to_all_redelivered_s") is not None), default=None),
            "lost": sum(x["lost"] for k, v in runs.items() if k.startswith(s + "_") for x in v),
            "duplicated": sum(x["duplicated"] for k, v in runs.items()
                              if k.startswith(s + "_") for x in v),
            "wrong": sum(x["wrong"] for k, v in runs.items() if k.startswith(s + "_") for x in v),
        }
    ratios = {}
    sc = {s: {x["round"]: x for x in runs.get(f"{s}_io_2", [])} for s in systems}
    s1 = {s: {x["round"]: x for x in runs.get(f"{s}_io_1", [])} for s in systems}
    rs = [(sc["cometmp"][r]["entries_per_s"] / s1["cometmp"][r]["entries_per_s"])
          / (sc["control"][r]["entries_per_s"] / s1["control"][r]["entries_per_s"])
          for r in sorted(sc["cometmp"]) if r in s1["cometmp"] and r in sc["control"]
          and r in s1["control"]]
    # what the machine allowed: the same handler and bookkeeping with no queue at all
    ratios["io_scaling_cometmp_over_control"] = {"median": _median(rs), "rounds": rs}
    if "redis" in systems:
        ratios["throughput_cometmp_over_redis"] = same_round("cometmp_throughput",
                                                             "redis_throughput")
        ratios["drain_cometmp_over_redis"] = same_round("cometmp_drain", "redis_drain")
    io = summary["cometmp"]["io_scaling_2_over_1"]["median"]
    targets = [{"name": "2 members vs 1, 1 ms per batch of 100 (cometmp)",
                "target": f">= {TARGET_IO_SCALING}x", "measured": io, "unit": "x",
                "result": "PASS" if io is not None and io >= TARGET_IO_SCALING else "MISS"},
               {"name": "entries lost (cometmp, every run)", "target": "0",
                "measured": summary["cometmp"]["lost"], "unit": "entries",
                "result": "PASS" if summary["cometmp"]["lost"] == 0 else "MISS"}]
    return {"settings": {"entries": n, "rounds": rounds, "payload_bytes": PAYLOAD_BYTES,
                         "batch": BATCH, "shards": SHARDS, "work_s": WORK_S, "kill_at": KILL_AT},
            "redis": redis_desc, "redis_skipped": skipped, "runs": runs, "summary": summary,
            "ratios": ratios, "targets": targets}


def print_report(doc: dict) -> None:
    s = doc["settings"]
    print(f"cometmp bench --scenario groups ({s['entries']:,} entries of {s['payload_bytes']} B, "
          f"batches of {s['batch']}, {s['rounds']} round(s); cometmp: {s['shards']} shards)")
    if doc["redis_skipped"]:
        print(f"  (Redis Streams skipped: {doc['redis_skipped']})")
    else:
        r = doc["redis"]
        print(f"  Redis {r['server']} {' '.join(r['flags'])}; XAUTOCLAIM min-idle "
              f"{r['xautoclaim_min_idle_ms']} ms every {r['xautoclaim_every_s']} s")
    print("  | figure | " + " | ".join(doc["summary"]) + " |")
    print("  |---|" + "---:|" * len(doc["summary"]))

    def row(label, key, fmt):
        cells = []
        for v in doc["summary"].values():
            x = v[key]
            if isinstance(x, dict):
                x = x["median"]
            cells.append("—" if x is None else fmt(x))
        print(f"  | {label} | " + " | ".join(cells) + " |")

    row("2 members, no work: entries/s end to end", "throughput_entries_per_s", "{:,.0f}".format)
    row("  the producer alone (appends in batches of 100): entries/s", "producer_entries_per_s",
        "{:,.0f}".format)
    row("  the group alone, draining a backlog: entries/s", "drain_entries_per_s",
        "{:,.0f}".format)
    row("1 ms per batch, 1 member: entries/s", "io_1_member_entries_per_s", "{:,.0f}".format)
    row("1 ms per batch, 2 members: entries/s", "io_2_members_entries_per_s", "{:,.0f}".format)
    row("2 members / 1 (same-round median)", "io_scaling_2_over_1", "{:.2f}x".format)
    row("  members' CPU per batch (2 members)", "io_cpu_ms_per_batch", "{:.2f} ms".format)
    row("  members' run-queue wait per batch (2 members)", "io_runqueue_ms_per_batch",
        "{:.2f} ms".format)
    row("kill -9 → first unacked entry redelivered", "kill_to_first_redelivered_s",
        "{:.3f} s".format)
    row("kill -9 → all unacked entries redelivered", "kill_to_all_redelivered_s",
        "{:.3f} s".format)
    row("same, max over rounds", "kill_to_all_redelivered_s_max", "{:.3f} s".format)
    row("lost (all runs)", "lost", "{:d}".format)
    row("duplicated (all runs)", "duplicated", "{:d}".format)
    row("wrong payloads (all runs)", "wrong", "{:d}".format)
    for k, v in doc["ratios"].items():
        rs = ", ".join(f"{x:.2f}" for x in v["rounds"])
        print(f"  {k}: {v['median']:.2f}x (rounds: {rs})")
