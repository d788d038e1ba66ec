"""Real processes: a consumer whose handler fails on every batch is killed with SIGKILL
again and again while it dead-letters. Every entry ends up in the group's dead-letter
stream with its bytes (at least once: a kill between the dead letter and the ack writes
that batch again), and none is acked without being there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import cometmp
from conftest import child_env

N = 400
BATCH = 10

CONSUMER = r"""
import sys, warnings
import cometmp
warnings.simplefilter("ignore", cometmp.DeadLetterWarning)
root = sys.argv[1]
with cometmp.Client(root) as c:
    con = cometmp.Consumer(c, group="billing")
    def handler(batch):
        raise RuntimeError("handler is broken")
    def stop_when_done(batch, con=con):
        if con.lag("work") == {"work": 0}:
            raise SystemExit(0)
    # the consumer killed before this one may have acked the last batch and died before
    # its own check: then no batch ever comes, so check once before waiting for one
    stop_when_done(None)
    con.process(handler, stream="work", batch_size=%d, max_retries=1, backoff=0.001,
                on_batch=stop_when_done, poll_interval=0.01)
""" % BATCH


def test_a_consumer_killed_while_dead_lettering_never_acks_an_entry_it_did_not_dead_letter(
        tmp_path):
    seed = int(os.environ.get("COMETMP_SEED", random.randrange(1 << 30)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    root = str(tmp_path / "log")
    sent = [b"entry-%d-" % i + os.urandom(rng.randrange(0, 200)) for i in range(N)]
    with cometmp.Client(root) as c:
        c.append("work", sent)
    dead = cometmp.deadletter.stream_for("billing")
    kills = 0
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the consumer never finished"
        p = subprocess.Popen([sys.executable, "-c", CONSUMER, root], env=child_env(),
                             stderr=subprocess.PIPE)
        if kills < 3:
            # kill once it has made some progress (or at once, if it is quick)
            t0 = time.monotonic()
            wait = rng.uniform(0.2, 1.0)
            while p.poll() is None and time.monotonic() - t0 < wait:
                time.sleep(0.01)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        try:
            _out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:    # timed out (or the test is interrupted): stop it by pid
                p.kill()
                p.wait()
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err.decode()
    with cometmp.Client(root, readonly=True) as r:
        got: dict[int, bytes] = {}
        copies = 0
        for m in r.scan(dead):
            env, body = cometmp.deadletter.decode(m.data)
            assert env["stream"] == "work" and env["error"] == "RuntimeError: handler is broken"
            assert got.setdefault(env["entry"], body) == body
            copies += 1
    print(f"kills={kills} dead letters={copies} for {N} entries")
    assert sorted(got) == list(range(N)) and [got[i] for i in range(N)] == sent
    assert copies - N <= kills * BATCH      # at most one batch written twice per kill
