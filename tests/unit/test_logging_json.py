"""JSON log records (``CometHandler(format="json")``, ``JSONFormatter``; docs/FORMAT.md §9):
the golden records, reading them back with ``client.scan`` and ``cometmp tail``, and that
emit never raises (I50) whatever the record holds."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading

import pytest

import cometmp
from cometmp import registry
from cometmp.logging import SCHEMA, CometHandler, JSONFormatter
from cometmp.tools import cli

from conftest import run_python

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                      "log_record_v1")
#: the keys every record has, in order (FORMAT.md §9)
REQUIRED = ["schema", "ts_ns", "ts", "level", "levelno", "logger", "message", "pid", "worker",
            "thread", "thread_id"]
OPTIONAL = ["exc_info", "stack_info", "message_error", "extra"]


class Recording(CometHandler):
    """A real CometHandler that also keeps what it would have reported to stderr."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.errors_seen: list[str] = []

    def handleError(self, record):  # noqa: N802 - logging's name
        self.errors_seen.append(repr(sys.exc_info()[1]))


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(f"test.cometmp.json.{name}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg


def _records(root: str, stream: str = "logs") -> list[dict]:
    with cometmp.Client(root, readonly=True) as c:
        return [json.loads(m.data) for m in c.scan(stream)]


def _check_schema(rec: dict) -> None:
    keys = list(rec)
    assert keys[:len(REQUIRED)] == REQUIRED
    assert [k for k in keys[len(REQUIRED):]] == [k for k in OPTIONAL if k in rec]
    assert rec["schema"] == SCHEMA == "cometmp.log/1"
    assert isinstance(rec["ts_ns"], int) and isinstance(rec["levelno"], int)
    assert isinstance(rec["pid"], int)
    assert rec["worker"] is None or isinstance(rec["worker"], int)
    sec, ns = divmod(rec["ts_ns"], 10**9)
    import time

    assert rec["ts"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1000:06d}Z"


def test_golden_records_are_exactly_what_the_formatter_writes():
    with open(os.path.join(GOLDEN, "records.json")) as f:
        inputs = json.load(f)["records"]
    with open(os.path.join(GOLDEN, "records.jsonl"), encoding="utf-8") as f:
        golden = f.read().splitlines()
    assert len(golden) == len(inputs) == 4
    fmt = JSONFormatter()
    for attrs, line in zip(inputs, golden):
        rec = json.loads(line)
        _check_schema(rec)
        attrs = dict(attrs, args=tuple(attrs.get("args", ())))
        assert fmt.format(logging.makeLogRecord(attrs)) == line
    g = [json.loads(x) for x in golden]
    assert g[0]["message"] == "GET /health -> 200" and g[0]["ts"] == "2026-12-02T16:43:28.250000Z"
    assert g[1]["extra"] == {"request_id": "r-17", "rows": [1, 2.5, None, True],
                             "user": {"id": 7, "roles": ["a"]}}
    assert g[1]["exc_info"].endswith("ZeroDivisionError: division by zero")
    assert g[2]["extra"] == {"req": 5, "path": "/x"}  # loguru's bind() context, merged
    assert g[3]["message"] == "bad %d" and g[3]["message_error"].startswith("TypeError")


def test_json_records_read_back_with_scan_and_cometmp_tail(data_dir, capsys):
    h = CometHandler(data_dir, format="json")
    lg = _logger("tail", h)
    lg.info("disk at %d%% ✓", 91, extra={"mount": "/var", "free_bytes": 12345})
    try:
        {}["missing"]
    except KeyError:
        lg.exception("lookup failed")
    lg.warning("with stack", stack_info=True)
    h.close()
    recs = _records(data_dir)
    for r in recs:
        _check_schema(r)
        assert r["pid"] == os.getpid() and r["worker"] == registry.worker_id()  # None: no slot
        assert r["thread"] == threading.current_thread().name
        assert r["thread_id"] == threading.get_ident()
        assert r["logger"] == "test.cometmp.json.tail"
    assert [(r["level"], r["levelno"], r["message"]) for r in recs] == [
        ("INFO", 20, "disk at 91% ✓"), ("ERROR", 40, "lookup failed"), ("WARNING", 30, "with stack")]
    assert recs[0]["extra"] == {"mount": "/var", "free_bytes": 12345}
    assert "exc_info" not in recs[0] and "extra" not in recs[1]
    assert recs[1]["exc_info"].startswith("Traceback (most recent call last):")
    assert recs[1]["exc_info"].endswith("KeyError: 'missing'")
    assert "test_json_records_read_back_with_scan_and_cometmp_tail" in recs[2]["stack_info"]
    assert recs[0]["ts_ns"] <= recs[1]["ts_ns"] <= recs[2]["ts_ns"]

    assert cli.main(["tail", data_dir, "logs", "-n", "3", "--full"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # one line per record: JSON escapes the traceback's newlines
    # "<ts> #<entry> {...}": each record as written
    assert [json.loads(line[line.index("{"):]) for line in out] == recs
    assert cli.main(["tail", data_dir, "logs", "-n", "1"]) == 0  # without --full: a prefix
    (short,) = capsys.readouterr().out.splitlines()
    assert short.endswith("...") and short.split(" ", 2)[2][:-3] in out[2]


class Unrepresentable:
    def __repr__(self):
        raise RuntimeError("no repr")

    def __str__(self):
        raise RuntimeError("no str")


def test_values_json_cannot_hold_become_reprs_and_emit_never_raises(data_dir):
    h = Recording(data_dir, format="json")
    lg = _logger("values", h)
    circular: list = []
    circular.append(circular)
    deep: list = []
    for _ in range(100_000):  # deeper than the encoder's recursion limit
        deep = [deep]
    lg.info("odd values", extra={
        "obj": object.__new__(Unrepresentable), "nan": math.nan, "inf": [math.inf],
        "circular": circular, "tuple_keys": {(1, 2): "x"}, "bytes": b"\x00\xff",
        "set": {3}, "deep": deep, "fine": {"a": [1, "b"]}})
    lg.info(Unrepresentable())  # a msg whose str() raises
    lg.info("surrogate \udcff survives")
    h.close()
    assert h.errors_seen == []
    recs = _records(data_dir)
    assert len(recs) == 3
    for r in recs:
        _check_schema(r)
    x = recs[0]["extra"]
    assert x["obj"] == "<unrepresentable Unrepresentable>"
    assert x["nan"] == "nan" and x["inf"] == "[inf]"
    assert x["circular"] == "[[...]]" and x["tuple_keys"] == "{(1, 2): 'x'}"
    assert x["bytes"] == "b'\\x00\\xff'" and x["set"] == "{3}"
    assert x["deep"].startswith("<unrepresentable") or x["deep"].startswith("[[[")
    assert x["fine"] == {"a": [1, "b"]}  # what JSON can hold stays structured
    assert recs[1]["message"] == "<unrepresentable Unrepresentable>"
    assert recs[1]["message_error"].startswith("RuntimeError: no str")
    assert recs[2]["message"] == "surrogate \udcff survives"  # a JSON \udcff escape


def test_message_with_bad_arguments_is_kept_with_message_error(data_dir):
    h = Recording(data_dir, format="json")
    _logger("badargs", h).error("%d items in %s", "many")
    h.close()
    assert h.errors_seen == []  # the plain format would have gone to handleError
    (r,) = _records(data_dir)
    assert r["message"] == "%d items in %s"
    assert r["message_error"].startswith("TypeError:") and r["message_error"].endswith("args=('many',)")


def test_unknown_record_format_is_refused(data_dir):
    with pytest.raises(ValueError, match="unknown record format 'xml'"):
        CometHandler(data_dir, format="xml")
    assert not os.path.exists(data_dir)  # refused before anything was opened


def test_a_registry_error_logged_while_looking_up_the_worker_does_not_recurse(data_dir):
    # I50: the worker field asks the registry, and a registry it cannot read logs an error
    # on the "cometmp" logger; when that logger's handler writes JSON records too, the
    # lookup is re-entered on the same thread and must answer null instead of recursing.
    # The damage is real: process_count 0 (outside 1..MAX) written into the shm object.
    code = r'''
import logging, os, struct, sys
from cometmp import registry
from cometmp.logging import CometHandler
from cometmp.registry.table import CM_REG_OFF_EPOCH, CM_REG_OFF_PROCESS_COUNT
from cometmp.supervisor import Supervisor

root = sys.argv[1]
sup = Supervisor(root, 1).start()
registry.join(root, start_thread=False)
h = CometHandler(root, format="json")
for name in ("cometmp", "app"):
    lg = logging.getLogger(name)
    lg.handlers[:] = [h]; lg.propagate = False; lg.setLevel(logging.INFO)
app = logging.getLogger("app")
app.info("before damage")
fd = os.open("/dev/shm/" + registry.shm_name(root).lstrip("/"), os.O_RDWR)
count = os.pread(fd, 4, CM_REG_OFF_PROCESS_COUNT)
epoch = struct.unpack("=Q", os.pread(fd, 8, CM_REG_OFF_EPOCH))[0]
os.pwrite(fd, struct.pack("=I", 0), CM_REG_OFF_PROCESS_COUNT)
os.pwrite(fd, struct.pack("=Q", epoch + 1), CM_REG_OFF_EPOCH)   # make members re-read
app.info("after damage")
os.pwrite(fd, count, CM_REG_OFF_PROCESS_COUNT)                   # repair, then leave cleanly
os.close(fd)
h.close()
registry.leave()
sup.close()
'''
    r = run_python(code, data_dir)
    assert r.returncode == 0, r.stderr
    assert "RecursionError" not in r.stderr and "Logging error" not in r.stderr, r.stderr
    recs = _records(data_dir)
    assert [(x["logger"], x["message"][:33], x["worker"]) for x in recs] == [
        ("app", "before damage", 0),
        ("cometmp", "cometmp: cannot read the registry", None),  # the re-entered lookup
        ("app", "after damage", 0),  # the last good snapshot's slot
    ]


def test_dictconfig_class_form_of_the_formatter_works_and_a_format_string_is_refused(data_dir):
    cfg = {"version": 1, "disable_existing_loggers": False,
           "formatters": {"j": {"class": "cometmp.logging.JSONFormatter"}},
           "handlers": {"h": {"class": "cometmp.logging.CometHandler", "path": data_dir,
                              "formatter": "j"}},
           "loggers": {"test.cometmp.json.dictcls": {"handlers": ["h"], "level": "INFO",
                                                     "propagate": False}}}
    import logging.config

    logging.config.dictConfig(cfg)
    lg = logging.getLogger("test.cometmp.json.dictcls")
    lg.info("via the class form")
    for h in lg.handlers:
        h.close()
    lg.handlers[:] = []
    (r,) = _records(data_dir)
    assert r["schema"] == SCHEMA and r["message"] == "via the class form"
    with pytest.raises(ValueError, match="fixed schema"):
        JSONFormatter("%(message)s")
