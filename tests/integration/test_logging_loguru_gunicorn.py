"""loguru with CometHandler inside a real gunicorn (--preload, 3 sync workers, cometmp's
gunicorn integration): the sink added once in the master logs JSON records from every
worker, each carrying its worker's registry slot; a worker kill -9'ed mid-load loses no
record of a request it answered (what loguru's own file sinks lose: loguru #1111/#1137)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys

import pytest

import cometmp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import GUNICORN, Load, Server, free_port, get, server_env  # noqa: E402
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(GUNICORN), reason="gunicorn not installed")

APP = '''
import itertools, os
from loguru import logger
from cometmp.logging import CometHandler

logger.remove()
logger.add(CometHandler(os.environ["COMETMP_DIR"], stream="logs", format="json"),
           format="{message}")                     # --preload: added in the master
served = itertools.count()                          # per worker after fork

def app(environ, start_response):
    if environ["PATH_INFO"] == "/log":
        logger.bind(n=next(served)).info("req {}", environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
'''


def test_loguru_sink_added_in_the_master_logs_every_answered_request_once(tmp_path):
    root = str(tmp_path / "data")
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    srv = Server([GUNICORN, "-c", "python:cometmp.integrations.gunicorn_conf", "--preload",
                  "-w", "3", "-k", "sync", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3",
                  "app:app"], server_env(root), str(tmp_path), port, str(tmp_path / "gunicorn.log"))
    try:
        srv.wait_ready(workers=3)
        load = Load(port, threads=3, tag="t", path="/log?{rid}", count=200).start()
        answered = load.ok
        wait_until(lambda: len(answered) >= 150, 60, "150 answered requests before the kill",
                   interval=0.005)
        first = srv.workers()
        victim = first[0]
        os.kill(victim, signal.SIGKILL)  # mid-load; gunicorn respawns it
        load.join(120)
        extra = iter(range(10_000))

        def replacement_answered() -> bool:  # one more request, until a new worker answers
            rid = f"z-{next(extra)}"
            try:
                status, body = get(port, f"/log?{rid}", timeout=5)
            except (OSError, http.client.HTTPException):
                return False
            if status == 200:
                answered.add(rid)
            return status == 200 and int(body) not in first
        wait_until(replacement_answered, 60, "the replacement worker answering")
    finally:
        srv.stop()

    with cometmp.Client(root, readonly=True) as c:
        recs = [json.loads(m.data) for m in c.scan("logs")]
    seen: dict[str, int] = {}
    per_pid: dict[int, list[dict]] = {}
    for r in recs:
        assert r["schema"] == "cometmp.log/1" and r["level"] == "INFO"
        rid = r["message"].split(" ", 1)[1]
        seen[rid] = seen.get(rid, 0) + 1
        per_pid.setdefault(r["pid"], []).append(r)
    assert len(answered) >= 450
    assert all(seen.get(rid) == 1 for rid in answered), "an answered request's record is missing"
    assert max(seen.values()) == 1  # and none is duplicated
    assert victim in per_pid and len(per_pid) >= 4  # the replacement logged too
    slots = {}
    for pid, rs in per_pid.items():
        assert [r["extra"]["n"] for r in rs] == list(range(len(rs))), pid  # each worker's order
        (slot,) = {r["worker"] for r in rs}  # joined before its first request
        assert slot in range(3), (pid, slot)
        slots.setdefault(slot, []).append(pid)
    assert sorted(slots) == [0, 1, 2]
    victim_slot = per_pid[victim][0]["worker"]
    assert len(slots[victim_slot]) == 2  # its replacement took its slot
