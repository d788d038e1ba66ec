"""cometmp.logging: a ``logging.Handler`` that appends each record to a cometmp stream.

Safe in every worker of a prefork server at once. The stdlib's file handlers are not
(its cookbook says multi-process logging to one file is unsupported, and rotating
handlers lose or interleave records when several processes roll the same file). Here
every formatted record becomes one entry (UTF-8) of the stream ``stream``, written under
the stream's cross-process writer lock by the C core, so records from different
processes never interleave bytes and segments rotate without a race::

    import logging
    from cometmp.logging import CometHandler

    logging.getLogger().addHandler(CometHandler("/var/lib/myapp/log", stream="logs"))

    $ cometmp tail /var/lib/myapp/log logs -f

Guarantees:

- ``emit()`` returns only when the record is in the kernel's page cache: there is no
  background buffer, so a ``kill -9`` right after a logging call loses nothing and
  ``close()`` leaves nothing pending (``flush()`` has nothing to do).
- Records of one process keep their order (one stream, appended under its lock).
- Fork-aware (I10): a handler created before ``fork()`` (a gunicorn master with
  ``--preload`` or a ``logconfig_dict``) re-attaches in the child at its first record
  and never writes through the parent's handles.
- Thread safe without the handler lock: the append itself is thread safe, so threads do
  not queue behind each other in ``Handler.handle``.

The same handler serves the logging libraries people already use (docs/INTEGRATIONS.md,
"Logging libraries"): loguru takes it as a sink (``logger.add(CometHandler(...))``),
structlog's stdlib integration ends in it, and :class:`CometLogger` is structlog's direct
logger for it. ``format="json"`` (or :class:`JSONFormatter`) writes each record as one
JSON object of the schema ``cometmp.log/1`` (docs/FORMAT.md §9).

This module is named ``logging`` as the public API asks (``cometmp.logging``); it imports
the standard library's module as ``_stdlog``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging as _stdlog
import os
import threading
import time
from typing import Any

from . import paths

__all__ = ["SCHEMA", "CometHandler", "CometLogger", "CometLoggerFactory", "JSONFormatter"]

#: magic and version of a JSON log record (docs/FORMAT.md §9): the value of its first key,
#: ``"schema"``. One key rather than ``format`` + ``version`` because it is paid per record.
SCHEMA = "cometmp.log/1"

#: what ``CometHandler(format=...)`` accepts: None keeps logging's default formatter
#: (``%(message)s``) or the one given to ``setFormatter``
RECORD_FORMATS = (None, "json")


class CometHandler(_stdlog.Handler):
    """Append each formatted record to the cometmp stream ``stream`` in directory ``path``.

    Any process may create and use it; see the module docstring for the guarantees.

    ``client``: an open :class:`cometmp.Client` to write through (the handler then does
    not close it); by default the handler opens its own client on ``path`` with
    ``config``. ``delay=True`` opens it at the first record instead of now (like
    ``FileHandler``). ``errors`` is the UTF-8 error handler for unencodable text
    (lone surrogates); the default keeps them visible as escapes. ``format="json"``
    installs a :class:`JSONFormatter` (one JSON object per entry, docs/FORMAT.md §9);
    the default, None, leaves logging's ``%(message)s`` until ``setFormatter``.
    """

    def __init__(self, path: str | os.PathLike | None = None, stream: str = "logs",
                 level: int = _stdlog.NOTSET, *, config=None, client=None,
                 delay: bool = False, errors: str = "backslashreplace",
                 format: str | None = None):  # noqa: A002 - the name dictConfig users write
        super().__init__(level)
        if client is None and path is None:
            raise TypeError("CometHandler needs a data directory path or a client")
        if format not in RECORD_FORMATS:
            raise ValueError(f"CometHandler: unknown record format {format!r} "
                             f"(expected one of {RECORD_FORMATS})")
        if format == "json":
            self.setFormatter(JSONFormatter())
        self.stream = paths.validate_stream_name(stream)
        self.path = os.path.abspath(os.fspath(path)) if path is not None else client.path
        self.config = config
        self.errors = errors
        self._client = client
        self._own_client = client is None
        self._append = None
        if not delay:
            self._open()

    def _open(self):
        """Open the client (if ours) and the stream's append fast path. Idempotent."""
        with self.lock:  # the handler's RLock, re-initialised after fork by logging
            if self._append is None:
                if self._client is None:  # first use, or a record after close() (as
                    from .client import Client  # FileHandler does: reopen, nothing lost)

                    self._client = Client(self.path, config=self.config)
                    self._own_client = True
                split = paths.split_shard_stream(self.stream)
                # One C appender bound to the single stream: ~1 µs per record, against ~10 µs
                # through Client.append's general path. The client re-attaches it after fork.
                app = self._client._make_appender([self.stream], [split[1] if split else 0],
                                                  _single_stream_route)
                self._append = app.append
            return self._append

    @property
    def client(self):
        """The client this handler writes through (opened on first use with ``delay``)."""
        self._open()
        return self._client

    def emit(self, record: _stdlog.LogRecord) -> None:
        try:
            self._append_entry(self.format(record))
        except RecursionError:  # as the stdlib handlers do: never swallow these
            raise
        except Exception:
            self.handleError(record)

    def _append_entry(self, text: str | bytes) -> None:
        """Append ``text`` (UTF-8 encoded with ``errors``) or ``bytes`` as one entry; raises
        the cometmp.errors exception of a failed append. Any thread; used by emit() and
        CometLogger."""
        data = text.encode("utf-8", self.errors) if isinstance(text, str) else text
        append = self._append or self._open()
        append(data)

    def handle(self, record: _stdlog.LogRecord):
        """Filter, then emit without taking the handler lock: the append is thread safe
        (and the format of one record does not depend on another's)."""
        rv = self.filter(record)
        if isinstance(rv, _stdlog.LogRecord):  # Python 3.12 filters may return a record
            record = rv
        if rv:
            self.emit(record)
        return rv

    def flush(self) -> None:
        """Nothing to do: every record is in the page cache when ``emit`` returns. For
        durability across power loss use ``config.storage.durability`` or :meth:`sync`."""

    def sync(self) -> None:
        """fsync the stream (and everything else this handler's client wrote)."""
        if self._client is not None and self._append is not None:
            self._client.sync()

    def close(self) -> None:
        """Close the handler (and its client, if it opened one). Nothing is pending."""
        with self.lock:  # the handler's RLock, re-initialised after fork by logging
            self._append = None
            client, self._client = self._client, None
        if client is not None and self._own_client:
            client.close()
        super().close()

    def __repr__(self) -> str:
        level = _stdlog.getLevelName(self.level)
        return f"<CometHandler {self.path} stream={self.stream!r} ({level})>"


def _single_stream_route(key) -> int:
    return 0


# ---- JSON records (docs/FORMAT.md §9) ---------------------------------------------------

#: attributes every LogRecord has: not "extra" fields (computed, so a Python that adds
#: one, as 3.12 added taskName, does not leak it into extra)
_RECORD_ATTRS = frozenset(_stdlog.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
_local = threading.local()  # I50: a worker-id lookup that logs must not recurse


class JSONFormatter(_stdlog.Formatter):
    """Format a record as one JSON object of schema ``cometmp.log/1`` (docs/FORMAT.md §9).

    Any thread of any process may call ``format``; it never raises (I50): a value JSON
    cannot hold becomes its ``repr()``, a message whose arguments do not fit its format
    is kept unformatted with a ``message_error``. Keys, in this order: ``schema``,
    ``ts_ns``, ``ts``, ``level``, ``levelno``, ``logger``, ``message``, ``pid``,
    ``worker`` (the registry slot of this process, :func:`cometmp.registry.worker_id`,
    or null), ``thread``, ``thread_id``; when present ``exc_info``, ``stack_info``,
    ``message_error`` and ``extra`` (every attribute that ``extra=`` or a filter added
    to the record; a dict attribute named ``extra``, which is how loguru passes
    ``bind()`` context, is merged into it).
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True, **kw) -> None:
        # the stdlib's arguments, so dictConfig's {"class": ...} form (which passes them
        # positionally) works too; the schema is fixed, so a format string is refused
        if fmt is not None or datefmt is not None:
            raise ValueError("JSONFormatter writes the fixed schema cometmp.log/1 "
                             "(docs/FORMAT.md §9): it takes no format or datefmt")
        super().__init__()
        from .registry import worker_id  # imported here, never inside format()

        self._worker_id = worker_id
        self._encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                        separators=(",", ":"), default=_json_default).encode
        self._second = (-1, "")  # (unix second, its "YYYY-MM-DDTHH:MM:SS" prefix)

    def format(self, record: _stdlog.LogRecord) -> str:
        # LogRecord.created is a float (exact to ~0.25 µs): split it before scaling, so a
        # time that is a whole number of µs stays one (created * 1e9 would round it off)
        sec = int(record.created)
        ns = round((record.created - sec) * 1e9)
        if ns >= 1_000_000_000:
            sec, ns = sec + 1, ns - 1_000_000_000
        ts_ns = sec * 1_000_000_000 + ns
        cached = self._second
        if cached[0] != sec:
            cached = self._second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        out: dict[str, Any] = {
            "schema": SCHEMA, "ts_ns": ts_ns, "ts": f"{cached[1]}.{ns // 1000:06d}Z",
            "level": record.levelname, "levelno": record.levelno, "logger": record.name}
        try:
            out["message"] = record.getMessage()
            error = None
        except Exception as e:  # noqa: BLE001 - bad arguments must not lose the record
            out["message"] = _safe_str(record.msg)
            error = f"{type(e).__name__}: {_safe_str(e)}; args={_safe_repr(record.args)}"
        out["pid"] = record.process if record.process is not None else os.getpid()
        out["worker"] = self._worker()
        out["thread"] = record.threadName
        out["thread_id"] = record.thread
        if record.exc_info and record.exc_info[0] is not None:
            # loguru sets exc_text to "\n" (its traceback is already in the message): a
            # placeholder, so format the exception here
            text = record.exc_text
            if not text or not text.strip():
                text = self.formatException(record.exc_info)
            out["exc_info"] = text
        elif record.exc_text and record.exc_text.strip():
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        if error is not None:
            out["message_error"] = error
        extra = _extra_of(record)
        if extra:
            out["extra"] = extra
        try:
            return self._encode(out)
        except Exception:  # noqa: BLE001 - I50: never raise; degrade the offending values
            if "extra" in out:
                out["extra"] = {_safe_str(k): _json_safe(v, self._encode)
                                for k, v in out["extra"].items()}
            for k in ("message", "logger", "level", "thread", "exc_info", "stack_info"):
                if k in out:
                    out[k] = _safe_str(out[k])
            try:
                return self._encode(out)
            except Exception as e:  # noqa: BLE001 - last resort: the fields that are ours
                return self._encode({
                    "schema": SCHEMA, "ts_ns": ts_ns, "ts": out["ts"],
                    "level": _safe_str(record.levelname), "levelno": _safe_int(record.levelno),
                    "logger": _safe_str(record.name), "message": _safe_str(out["message"]),
                    "pid": os.getpid(), "worker": None, "thread": None, "thread_id": None,
                    "message_error": f"record not encodable: {type(e).__name__}: {_safe_str(e)}"})

    def _worker(self) -> int | None:
        if getattr(_local, "busy", False):  # I50: the lookup itself logged (registry error)
            return None
        _local.busy = True
        try:
            return self._worker_id()
        except Exception:  # noqa: BLE001 - no registry to ask is "unknown", not an error
            return None
        finally:
            _local.busy = False


def _extra_of(record: _stdlog.LogRecord) -> dict:
    attrs = record.__dict__
    if not attrs.keys() - _RECORD_ATTRS:  # the common case, at C speed
        return {}
    extra = {}
    for k, v in attrs.items():  # in the record's order, which the golden bytes keep
        if k in _RECORD_ATTRS:
            continue
        if k == "extra" and isinstance(v, dict):  # loguru's bind() context
            extra.update(v)
        else:
            extra[k] = v
    return extra


def _json_default(o):
    if isinstance(o, (_dt.datetime, _dt.date, _dt.time)):
        return o.isoformat()
    return _safe_repr(o)


def _json_safe(v, encode):
    """``v`` if it encodes (with the formatter's own encoder), else its repr."""
    try:
        encode(v)
        return v
    except Exception:  # noqa: BLE001 - NaN, circular, non-str keys, deep nesting
        return _safe_repr(v)


def _safe_repr(o) -> str:
    try:
        return repr(o)
    except Exception:  # noqa: BLE001
        return f"<unrepresentable {type(o).__name__}>"


def _safe_int(o) -> int | None:
    try:
        return int(o)
    except Exception:  # noqa: BLE001
        return None


def _safe_str(o) -> str:
    if isinstance(o, str):
        return o
    try:
        return str(o)
    except Exception:  # noqa: BLE001
        return _safe_repr(o)


# ---- structlog's direct path -----------------------------------------------------------

class CometLogger:
    """A structlog logger (the object at the end of structlog's processor chain) that
    appends each rendered event (``str`` or ``bytes``) as one entry of ``stream``.

    Any thread of any process may call it; it is fork-aware like :class:`CometHandler`,
    through which it writes (same arguments), and it skips the stdlib logging machinery.
    Unlike a ``logging.Handler`` it does not swallow errors: a failed append raises its
    ``cometmp.errors`` exception, as structlog's own ``BytesLogger`` raises its file's.
    """

    def __init__(self, path: str | os.PathLike | None = None, stream: str = "logs", *,
                 config=None, client=None, delay: bool = False,
                 errors: str = "backslashreplace"):
        self.handler = CometHandler(path, stream, config=config, client=client, delay=delay,
                                    errors=errors)

    def msg(self, message: str | bytes) -> None:
        """Append ``message`` as one entry."""
        self.handler._append_entry(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def close(self) -> None:
        self.handler.close()

    def __repr__(self) -> str:
        return f"<CometLogger {self.handler.path} stream={self.handler.stream!r}>"


class CometLoggerFactory:
    """structlog's ``logger_factory``: every ``structlog.get_logger()`` shares one
    :class:`CometLogger` (one client, one appender). Arguments as CometLogger's."""

    def __init__(self, path: str | os.PathLike | None = None, stream: str = "logs", **kw):
        self.logger = CometLogger(path, stream, **kw)

    def __call__(self, *args) -> CometLogger:
        return self.logger
