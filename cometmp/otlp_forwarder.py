"""Forward OTLP entries (cometmp.otlp_entry) to an OTLP/HTTP endpoint, acking only after a 2xx.

Runs in its own process (``cometmp forward DIR --otlp http://host:4318 [PATTERN]``) or inside
an application (:class:`OtlpForwarder`); it is the loop of cometmp.forwarding with an HTTP
sink, reading the streams matching PATTERN (default ``otel:*``) as the consumer group
``forward:otlp``. Needs only the standard library (http.client).

How it ships (docs/INTEGRATIONS.md "OpenTelemetry" has the operator's view):

* It reads up to ``batch_size`` entries and turns them, in read order, into OTLP requests:
  consecutive entries of one signal are joined (``b"".join`` of their bodies is one
  ``Export*ServiceRequest``, FORMAT.md §11, OTLP entries) while the request stays within
  ``max_request_bytes``; an entry larger than that alone is one request.
* One request is in flight at a time (I57): ``POST <endpoint>/v1/traces`` or ``/v1/logs``,
  ``Content-Type: application/x-protobuf``. After a 2xx the entries of that request are
  acked at once (I55), so a ``kill -9`` of the forwarder resends at most the one request
  it had in flight (the collector answered, the ack had not been stored yet).
* A keep-alive connection the server closed while idle is reopened and the request sent
  once more at once (not a retry). 429, 502, 503, 504, a timeout or a connection error: the same request is sent again
  after an exponential backoff (``backoff_initial`` doubling to ``backoff_max``, each wait
  drawn uniformly from [½, 1] of the step) or after the server's ``Retry-After``
  (seconds, at most ``backoff_max``). Nothing is read meanwhile; the log keeps buffering.
* Any other answer (400, 401, 404, 413, 500 ...): the collector will never take that
  request, so its entries go to the group's dead-letter stream (cometmp.deadletter, with
  the status and the start of the answer as the error), are acked, and it is logged at
  ERROR. An entry that is not an OTLP entry (bad magic or version) is dead-lettered alone
  without being sent: nothing wrong is served to the collector.

Stops (``stop()``, SIGTERM, SIGINT) within about a second plus the request in flight (the
HTTP timeout bounds it); what was confirmed is acked, nothing after it.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import random
import threading
import time
import urllib.parse

from . import deadletter, otlp_entry
from .errors import FormatError
from .forwarding import BaseForwarder, group_name

__all__ = ["DEFAULT_ENDPOINT", "OtlpForwarder", "RETRYABLE"]

log = logging.getLogger("cometmp")

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
#: statuses OTLP/HTTP says to retry (the specification's "retryable response codes")
RETRYABLE = frozenset({429, 502, 503, 504})
#: the OpenTelemetry Collector's gRPC default; its HTTP receiver takes more
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
#: bytes of a refusing answer kept in the dead-letter envelope and the log line
_ANSWER_KEPT = 300


class _HttpRefused(Exception):
    """The collector's non-retryable answer (the error recorded with dead letters)."""


class _Batch:
    """A read batch: its entries and which of them are confirmed (shipped or dead-lettered)."""

    __slots__ = ("msgs", "acked")
    counts_as_unit = False   # each request was one unit already (OtlpForwarder._commit)

    def __init__(self, msgs):
        self.msgs = msgs
        self.acked = bytearray(len(msgs))


class OtlpForwarder(BaseForwarder):
    """Forward the OTLP entries of ``path`` to the OTLP/HTTP ``endpoint`` (scheme, host,
    port and an optional path prefix; ``/v1/traces`` and ``/v1/logs`` are appended).

    Runs like every forwarder (cometmp.forwarding): ``await fw.run()``, or
    ``fw.run_forever()`` in a thread/process of its own; ``stop()`` from anywhere.
    ``headers``: extra HTTP headers (an ``Authorization``, say). ``timeout``: seconds for
    one request. ``group`` defaults to ``forward:otlp``.
    """

    sink_name = "OTLP/HTTP"

    def __init__(self, path, endpoint: str = DEFAULT_ENDPOINT, pattern: str = otlp_entry.PATTERN,
                 *, group: str | None = None, batch_size: int = 512,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, timeout: float = 10.0,
                 headers: dict[str, str] | None = None, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, config=None, client=None, on_progress=None,
                 progress_interval: float = 1.0):
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OTLP endpoint must be http://host[:port][/prefix] or https://..., "
                             f"not {endpoint!r}")
        if max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, not {max_request_bytes!r}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"need 0 < backoff_initial <= backoff_max, not {backoff_initial!r}, "
                             f"{backoff_max!r}")
        super().__init__(path, pattern, group or group_name("otlp"), batch_size=batch_size,
                         window=1, config=config, client=client, on_progress=on_progress,
                         progress_interval=progress_interval)
        self.endpoint = endpoint
        self._url = url
        self._prefix = url.path.rstrip("/")
        self.max_request_bytes = int(max_request_bytes)
        self.timeout = float(timeout)
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._conn: http.client.HTTPConnection | None = None

    def describe(self) -> str:
        return f"OTLP/HTTP endpoint {self.endpoint}"

    # ---- the sink's part of the loop (cometmp.forwarding) --------------------------------
    async def _start(self, msgs) -> _Batch:
        return _Batch(msgs)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing must never prevent exit
                pass
        self.stats.connected = False

    async def _complete(self, window) -> bool:
        """Ship the oldest batch request by request (one in flight, I57), committing each
        after its 2xx. False if stop() came first (the confirmed prefix stays acked)."""
        batch = window[0]
        pending: list[int] = []          # indexes of the request being built
        signal, size = 0, 0
        for i, m in enumerate(batch.msgs):
            if batch.acked[i]:
                continue
            try:
                sig, body = otlp_entry.decode(m.data)
            except FormatError as e:     # never sent: dead-lettered alone, in order
                if pending and not await self._ship(batch, pending, signal):
                    return False
                pending, size = [], 0
                self._dead_letter(batch, [i], e)
                continue
            if pending and (sig != signal or size + len(body) > self.max_request_bytes):
                if not await self._ship(batch, pending, signal):
                    return False
                pending, size = [], 0
            pending.append(i)
            signal, size = sig, size + len(body)
        if pending and not await self._ship(batch, pending, signal):
            return False
        return True

    # ---- one request ---------------------------------------------------------------------
    async def _ship(self, batch: _Batch, idx: list[int], signal: int) -> bool:
        """POST the entries ``idx`` of ``batch`` as one request until it is answered for
        good; commit them. False if stop() came first (nothing committed)."""
        body = b"".join(otlp_entry.decode(batch.msgs[i].data)[1] for i in idx)
        path = self._prefix + otlp_entry.SIGNALS[signal]
        step = self.backoff_initial
        first = True
        while not self._stop.is_set():
            if not first:
                self.stats.republished += len(idx)
            first = False
            answer = await self._post(path, body)
            if answer is None:       # stopped while the request was in flight
                return False
            status, retry_after, text = answer
            if 200 <= status < 300:
                self.stats.connected = True
                self.stats.forwarded += len(idx)
                self._commit(batch, idx)
                return True
            if status and status not in RETRYABLE:
                self.stats.errors += 1
                self.stats.connected = True
                err = _HttpRefused(f"HTTP {status} from {self.endpoint}{path}: {text}")
                self._dead_letter(batch, idx, err)
                return True
            if status:
                self.stats.errors += 1
            self.stats.retries += 1
            wait = step * random.uniform(0.5, 1.0)
            if retry_after is not None:
                wait = min(max(retry_after, 0.0), self.backoff_max)
            if self.stats.retries <= 3 or self.stats.retries % 100 == 0:
                log.warning("cometmp: OTLP forwarder: %s; retrying in %.1f s (retry %d)",
                            self.stats.last_error, wait, self.stats.retries)
            await self._sleep(wait)
            step = min(step * 2, self.backoff_max)
        return False

    def _commit(self, batch: _Batch, idx: list[int]) -> None:
        for i in idx:
            batch.acked[i] = 1
        self._ack_confirmed(batch)   # I55: the entries of this request, now

    def _dead_letter(self, batch: _Batch, idx: list[int], error: BaseException) -> None:
        """Put entries the collector will never take in the group's dead-letter stream,
        then commit them. Raises (nothing committed) if that stream cannot be written."""
        target = deadletter.stream_for(self.group)
        client = self._consumer.client
        client.append(target, [deadletter.encode(self.group, m.id.stream, m.id.entry,
                                                 m.timestamp_ns, m.data, error, 1)
                               for m in (batch.msgs[i] for i in idx)])
        self.stats.dead_lettered += len(idx)
        self.stats.last_error = str(error)
        first = batch.msgs[idx[0]].id
        log.error("cometmp: OTLP forwarder: %d entries from %s entry %d on are in the "
                  "dead-letter stream %r: %s", len(idx), first.stream, first.entry, target, error)
        self._commit(batch, idx)

    async def _post(self, path: str, body: bytes):
        """(status, Retry-After seconds or None, start of the answer) of one POST; status 0
        for a connection error or timeout. None if stop() came first: the request is
        left to its (daemon) thread, bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def post() -> None:
            try:
                result = self._post_blocking(path, body)
            except BaseException as e:  # noqa: BLE001 - handed to the loop
                result = e
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        threading.Thread(target=post, name="cometmp-otlp-post", daemon=True).start()
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not done.done():
            self._conn = None        # in use by the abandoned thread
            return None
        result = done.result()
        if isinstance(result, BaseException):
            self._conn = None
            self.stats.connected = False
            self.stats.last_error = f"{type(result).__name__}: {result} ({self.endpoint})"
            return 0, None, ""
        return result

    def _post_blocking(self, path: str, body: bytes):
        """Runs in the request's thread; the loop does not touch ``self._conn`` meanwhile."""
        reused = self._conn is not None
        while True:
            conn = self._conn
            if conn is None:
                cls = http.client.HTTPSConnection if self._url.scheme == "https" \
                    else http.client.HTTPConnection
                conn = self._conn = cls(self._url.hostname or "", self._url.port,
                                        timeout=self.timeout)
            try:
                conn.request("POST", path, body=body, headers=self.headers)
                resp = conn.getresponse()
                text = resp.read(64 << 10)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._conn = None
                if not reused:
                    raise
                reused = False   # the server closed an idle keep-alive connection: once more now
            except BaseException:
                conn.close()
                raise
        if resp.will_close:
            conn.close()
            self._conn = None
        status = resp.status
        if not 200 <= status < 300:
            self.stats.last_error = f"HTTP {status} from {self.endpoint}{path}"
        return status, _retry_after(resp.getheader("Retry-After")), \
            text[:_ANSWER_KEPT].decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

