"""CometHandler behind the logging libraries people already use, in one process: as a
loguru sink (what loguru hands a ``logging.Handler``: level, message, exception, bound
context), under structlog (its stdlib integration two ways, and the direct CometLogger),
and the documented ``dictConfig`` example. Several processes: tests/multiprocess/
test_logging_sinks_mp.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import logging.config
import os
import re
import sys

import pytest
import structlog
from loguru import logger

import cometmp
from cometmp.logging import CometHandler, CometLogger, CometLoggerFactory

from conftest import small_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _entries(root: str, stream: str = "logs") -> list[str]:
    with cometmp.Client(root, readonly=True) as c:
        return [m.data.decode("utf-8") for m in c.scan(stream)]


def _json(root: str, stream: str = "logs") -> list[dict]:
    return [json.loads(x) for x in _entries(root, stream)]


@pytest.fixture
def loguru_logger():
    logger.remove()  # loguru's default stderr sink
    yield logger
    logger.remove()
    logger.add(sys.stderr)


@pytest.fixture
def structlog_reset():
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# ---- loguru ---------------------------------------------------------------------------

def test_loguru_sink_stores_each_message_once_with_loguru_levels(data_dir, loguru_logger):
    h = CometHandler(data_dir, config=small_config())
    h.setFormatter(logging.Formatter("%(levelname)s %(levelno)d %(name)s %(message)s"))
    logger.add(h, format="{message}", level="TRACE")
    logger.trace("t {}", 1)
    logger.info("héllo ✓ {name}", name="wörld")
    logger.success("done")
    logger.opt(lazy=True).debug("lazy {}", lambda: 42)
    assert _entries(data_dir) == [
        f"TRACE 5 {__name__} t 1",
        f"INFO 20 {__name__} héllo ✓ wörld",
        f"SUCCESS 25 {__name__} done",
        f"DEBUG 10 {__name__} lazy 42",
    ]


def test_loguru_level_filter_and_its_own_format_apply_before_the_handler(data_dir, loguru_logger):
    h = CometHandler(data_dir)
    logger.add(h, level="WARNING", format="{level} | {function}:{line} - {message}")
    logger.info("dropped by loguru")
    logger.warning("kept")
    (entry,) = _entries(data_dir)
    assert re.fullmatch(r"WARNING \| test_loguru_level_filter_[a-z_]+:\d+ - kept", entry), entry


def test_loguru_exception_lands_in_the_entry_and_in_json_exc_info(data_dir, loguru_logger):
    plain = CometHandler(data_dir, stream="plain")
    as_json = CometHandler(data_dir, stream="json", format="json")
    logger.add(plain, format="{message}", backtrace=False, diagnose=False)
    # a callable format is not given loguru's "{exception}" suffix: the traceback then
    # travels only as the record's exc_info, which the JSON record renders
    logger.add(as_json, format=lambda record: "{message}")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("boom {}", 7)
    (text,) = _entries(data_dir, "plain")
    assert text.startswith("boom 7\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in text
    (rec,) = _json(data_dir, "json")
    assert rec["message"] == "boom 7" and rec["level"] == "ERROR"
    assert rec["exc_info"].startswith("Traceback (most recent call last):")
    assert rec["exc_info"].endswith("ZeroDivisionError: division by zero")


def test_loguru_bind_and_contextualize_become_json_extra(data_dir, loguru_logger):
    logger.add(CometHandler(data_dir, format="json"), format="{message}")
    log = logger.bind(request_id="r-1", user={"id": 7})
    with logger.contextualize(tenant="acme"):
        log.info("served {}", "/x")
    log.info("no tenant")
    a, b = _json(data_dir)
    assert a["message"] == "served /x" and a["logger"] == __name__
    assert a["extra"] == {"tenant": "acme", "request_id": "r-1", "user": {"id": 7}}
    assert b["extra"] == {"request_id": "r-1", "user": {"id": 7}}
    assert a["pid"] == os.getpid()


def test_loguru_remove_closes_the_handler_and_nothing_is_pending(data_dir, loguru_logger):
    h = CometHandler(data_dir)
    sink_id = logger.add(h, format="{message}")
    logger.info("before remove")
    logger.remove(sink_id)  # loguru calls Handler.close()
    assert h._client is None
    assert _entries(data_dir) == ["before remove"]


# ---- structlog ------------------------------------------------------------------------

def _stdlib_logger(name: str, handler: logging.Handler) -> None:
    lg = logging.getLogger(name)
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)


def test_structlog_stdlib_processor_formatter_renders_json_into_the_stream(data_dir, structlog_reset):
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger)
    h = CometHandler(data_dir)
    h.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]))
    _stdlib_logger("sl.pf", h)
    log = structlog.get_logger("sl.pf").bind(request_id="r-2")
    log.info("user logged in", user="alice")
    try:
        {}["k"]
    except KeyError:
        log.exception("lookup failed")
    logging.getLogger("sl.pf").warning("plain stdlib %s", "record")  # foreign_pre_chain-less
    a, b, c = _json(data_dir)
    assert {k: a[k] for k in ("event", "user", "request_id", "level", "logger")} == {
        "event": "user logged in", "user": "alice", "request_id": "r-2", "level": "info",
        "logger": "sl.pf"}
    assert a["timestamp"].endswith("Z")
    assert b["event"] == "lookup failed" and "KeyError: 'k'" in b["exception"]
    assert c["event"] == "plain stdlib record"


def test_structlog_render_to_log_kwargs_fills_the_json_record_extra(data_dir, structlog_reset):
    # structlog hands the stdlib a message and extra=; CometHandler(format="json") writes
    # them into cometmp.log/1 records with the registry's worker id and pid
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger)
    _stdlib_logger("sl.kw", CometHandler(data_dir, format="json"))
    structlog.get_logger("sl.kw").bind(order=12).warning("payment declined", amount=9.5)
    (rec,) = _json(data_dir)
    assert rec["schema"] == "cometmp.log/1"
    assert (rec["level"], rec["logger"], rec["message"]) == ("WARNING", "sl.kw", "payment declined")
    assert rec["extra"] == {"order": 12, "amount": 9.5}


def test_structlog_direct_comet_logger_appends_each_rendered_event(data_dir, structlog_reset):
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=CometLoggerFactory(data_dir, stream="events", config=small_config()),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True)
    log = structlog.get_logger()
    log.debug("filtered out")
    for i in range(3):
        log.info("tick", i=i)
    log.error("bad", code=5)
    assert _json(data_dir, "events") == [
        *({"i": i, "event": "tick", "level": "info"} for i in range(3)),
        {"code": 5, "event": "bad", "level": "error"}]


def test_comet_logger_takes_bytes_from_a_bytes_renderer_and_raises_storage_errors(data_dir):
    sink = CometLogger(data_dir, stream="raw")
    sink.info(b'{"event":"bytes as they are"}')
    sink.msg("text ✓")
    sink.close()
    assert _entries(data_dir, "raw") == ['{"event":"bytes as they are"}', "text ✓"]
    small = CometLogger(data_dir, stream="raw", config=small_config(max_entry_bytes=64))
    with pytest.raises(cometmp.errors.EntryTooLarge):  # not swallowed as a Handler would
        small.msg(os.urandom(65))
    small.msg(b"fits")
    small.close()
    assert _entries(data_dir, "raw")[2:] == ["fits"]


# ---- dictConfig -----------------------------------------------------------------------

def _example():
    path = os.path.join(REPO, "examples", "logging_dictconfig.py")
    spec = importlib.util.spec_from_file_location("logging_dictconfig_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def test_dictconfig_example_is_the_documented_dict_and_logs_json(data_dir, monkeypatch):
    monkeypatch.setenv("COMETMP_DIR", data_dir)
    path, mod = _example()
    with open(path) as f:
        src = f.read()
    snippet = src.split("# --8<-- [start:logging]\n")[1].split("# --8<-- [end:logging]\n")[0]
    with open(os.path.join(REPO, "docs", "INTEGRATIONS.md")) as f:
        assert snippet in f.read(), "docs/INTEGRATIONS.md must show examples/logging_dictconfig.py's LOGGING"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(mod.LOGGING)
        logging.getLogger("app").info("started", extra={"version": "1.2.3"})
        logging.getLogger("app.audit").info("below the audit handler's level")
        logging.getLogger("app.audit").warning("admin %s logged in", "alice")
    finally:
        for h in root.handlers:
            if isinstance(h, CometHandler):
                h.close()
        for h in logging.getLogger("app.audit").handlers:
            h.close()
        logging.getLogger("app.audit").handlers[:] = []
        root.handlers[:], level = saved
        root.setLevel(level)
    recs = _json(data_dir, "logs")
    assert [(r["logger"], r["message"]) for r in recs] == [
        ("app", "started"), ("app.audit", "below the audit handler's level"),
        ("app.audit", "admin alice logged in")]
    assert recs[0]["extra"] == {"version": "1.2.3"}
    assert _entries(data_dir, "audit") == ["WARNING app.audit: admin alice logged in"]
