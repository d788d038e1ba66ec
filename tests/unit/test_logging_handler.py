"""cometmp.logging.CometHandler in one process: one UTF-8 entry per record, threads,
close(), a handler created before fork, and that ``cometmp tail`` renders the entries."""

from __future__ import annotations

import logging
import os
import signal
import threading

import cometmp
from cometmp.tools import cli
from cometmp.logging import CometHandler

from conftest import run_python, small_config


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(f"test.cometmp.{name}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg


def _entries(root: str, stream: str = "logs") -> list[str]:
    with cometmp.Client(root, readonly=True) as c:
        return [m.data.decode("utf-8") for m in c.scan(stream)]


def test_each_record_is_one_utf8_entry(data_dir):
    h = CometHandler(data_dir, config=small_config())
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    lg = _logger("utf8", h)
    lg.info("héllo wörld ✓")
    lg.warning("two\nlines stay one entry")
    lg.error("lone surrogate \udcff is escaped, not dropped")
    h.close()
    assert _entries(data_dir) == [
        "INFO héllo wörld ✓",
        "WARNING two\nlines stay one entry",
        "ERROR lone surrogate \\udcff is escaped, not dropped",
    ]


def test_stream_name_is_validated(data_dir):
    import pytest

    with pytest.raises(ValueError):
        CometHandler(data_dir, stream="../etc")


def test_threads_append_every_record_in_per_thread_order(data_dir):
    h = CometHandler(data_dir)
    lg = _logger("threads", h)
    n, threads = 2000, 4

    def work(t: int) -> None:
        for i in range(n):
            lg.info("t%d %d", t, i)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    h.close()
    seen: dict[str, list[int]] = {}
    for line in _entries(data_dir):
        tag, i = line.split()
        seen.setdefault(tag, []).append(int(i))
    assert seen == {f"t{t}": list(range(n)) for t in range(threads)}


def test_delay_opens_nothing_until_the_first_record(data_dir):
    h = CometHandler(data_dir, delay=True)
    assert not os.path.exists(data_dir)
    _logger("delay", h).info("first")
    h.close()
    assert _entries(data_dir) == ["first"]


def test_record_after_close_reopens_like_filehandler(data_dir):
    h = CometHandler(data_dir)
    lg = _logger("reopen", h)
    lg.info("before")
    h.close()
    lg.info("after")  # logging.shutdown() ran, a late atexit hook still logs
    h.close()
    assert _entries(data_dir) == ["before", "after"]


def test_shares_a_given_client_and_leaves_it_open(data_dir):
    with cometmp.Client(data_dir) as client:
        h = CometHandler(client=client, stream="app.log")
        _logger("shared", h).info("via the app's client")
        h.close()
        client.append("other", b"client still usable")
        assert client.read("app.log", 0).data == b"via the app's client"


def test_kill9_right_after_logging_loses_nothing(data_dir):
    # no background buffer: once logger.info() returned, the record is in the page cache
    code = (
        "import logging, os, signal, sys\n"
        "from cometmp.logging import CometHandler\n"
        "lg = logging.getLogger('k'); lg.addHandler(CometHandler(sys.argv[1])); lg.setLevel(10)\n"
        "for i in range(5000): lg.info('rec %d', i)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = run_python(code, data_dir)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _entries(data_dir) == [f"rec {i}" for i in range(5000)]


def test_handler_created_before_fork_reattaches_in_the_child(data_dir):
    h = CometHandler(data_dir)
    lg = _logger("fork", h)
    lg.info("parent before fork")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            for i in range(500):
                lg.info("child %d", i)
            code = 0
        finally:
            os._exit(code)
    for i in range(500):
        lg.info("parent %d", i)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    h.close()
    lines = _entries(data_dir)
    assert lines[0] == "parent before fork"
    assert [x for x in lines if x.startswith("child ")] == [f"child {i}" for i in range(500)]
    assert [x for x in lines if x.startswith("parent ") and x[7:].isdigit()] == [f"parent {i}" for i in range(500)]
    assert len(lines) == 1001


def test_cometmp_tail_renders_the_records(data_dir, capsys):
    h = CometHandler(data_dir)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    lg = _logger("tail", h)
    for i in range(3):
        lg.warning("disk at %d%% ✓", 90 + i)
    h.close()
    rc = cli.main(["tail", data_dir, "logs", "-n", "2"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert len(out) == 2
    assert out[0].endswith("#1 WARNING test.cometmp.tail: disk at 91% ✓")
    assert out[1].endswith("#2 WARNING test.cometmp.tail: disk at 92% ✓")
