"""The read → ship → ack-after-confirm loop every forwarder of cometmp runs.

Who may call: the sinks (cometmp.forwarder for NATS JetStream, cometmp.otlp_forwarder for
OTLP/HTTP) subclass :class:`BaseForwarder`; applications use those subclasses.

A forwarder is an ordinary consumer of the log in the group ``forward:<name>`` (kept in
the data directory's offsets file, so a restarted forwarder resumes at the last ack). The
loop below is the only place that reads, advances offsets and stops:

* it reads up to ``batch_size`` entries of the streams matching ``pattern`` (streams
  created later are found by the consumer's discovery) and hands them to the sink
  (``_start``), keeping up to ``window`` batches in flight;
* it waits until the sink confirmed the oldest batch (``_complete``: the broker's PubAcks,
  the collector's 2xx) and only then acks, per stream, the confirmed prefix of the batch
  (I55: an offset never passes an entry its sink did not confirm). A sink may also ack
  part of a batch earlier (``_ack_confirmed``: the OTLP sink acks after every request);
* a stop (``stop()``, SIGTERM/SIGINT under ``run_forever``) gives the batches in flight a
  moment (``_grace``), acks what was confirmed and nothing after a gap, and closes.

Everything a sink adds is its connection (``_open``/``_close``) and how it ships and
confirms (``_start``, ``_complete``); see those methods for the contract.

Named crash point for tests: ``COMETMP_FAILPOINT=forward.before_offset_ack:<n>`` kills the
process with SIGKILL once the sink confirmed its n-th unit (a JetStream batch, an OTLP
request) and before the group's offsets move.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["BaseForwarder", "ForwarderStats", "group_name"]

log = logging.getLogger("cometmp")

_FAILPOINT = int(os.environ.get("COMETMP_FAILPOINT", "").partition("forward.before_offset_ack:")[2] or 0)


def group_name(name: str) -> str:
    """The consumer group a forwarder named ``name`` reads as (the JetStream stream for
    NATS, ``otlp`` for OTLP). It lives in the data directory's offsets file, so it is
    per (directory, name)."""
    return f"forward:{name}"


@dataclass
class ForwarderStats:
    """Counters of one forwarder (read them from any thread; updated by its loop)."""

    forwarded: int = 0          # entries the sink confirmed (stored or duplicate)
    duplicates: int = 0         # NATS: of which JetStream reported as duplicates
    republished: int = 0        # entries sent again (a timeout, a reconnect, a retry)
    batches: int = 0            # units confirmed (JetStream batches, OTLP requests)
    errors: int = 0             # refusals by the sink (JetStream errors, HTTP 4xx/5xx)
    retries: int = 0            # OTLP: requests retried after a 429/5xx/connection error
    dead_lettered: int = 0      # OTLP: entries put in the dead-letter stream (4xx, not OTLP)
    dropped: int = 0            # entries the hard retention cap deleted before forwarding
    reconnects: int = 0
    connected: bool = False
    started: float = field(default_factory=time.monotonic)
    last_error: str | None = None

    def rate(self) -> float:
        return self.forwarded / max(1e-9, time.monotonic() - self.started)


class BaseForwarder:
    """The loop of module docstring; subclasses provide the sink.

    Runs in one asyncio task (``await fw.run()``) or a thread/process of its own
    (``fw.run_forever()``, which also stops on SIGTERM/SIGINT in the main thread).
    ``stop()`` may be called from any thread or a signal handler.

    ``client``: an open :class:`cometmp.Client` to read through (else one is opened on
    ``path`` with ``config``). ``on_progress(stats)`` is called about every
    ``progress_interval`` seconds. ``window``: batches in flight at once.
    """

    #: what the sink is called in log lines
    sink_name = "sink"

    def __init__(self, path, pattern: str, group: str, *, batch_size: int, window: int = 1,
                 config=None, client=None, on_progress=None, progress_interval: float = 1.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size!r}")
        self.path = os.path.abspath(os.fspath(path)) if path is not None else client.path
        self.pattern = pattern
        self.group = group
        self.batch_size = int(batch_size)
        self.window = max(1, int(window))
        self.config = config
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.stats = ForwarderStats()
        self._client = client
        self._consumer = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._wake: asyncio.Event | None = None
        self._last_progress = 0.0

    # ---- control -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the forwarder to stop; safe from any thread and from signal handlers."""
        self._stop_requested = True
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # loop already closed
                pass

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def run_forever(self) -> None:
        """Run until stop() or SIGTERM/SIGINT (signal handlers only in the main thread)."""
        asyncio.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (ValueError, RuntimeError):  # not the main thread
                pass
        try:
            await self.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        """Forward until stop() is called. Raises only on bad configuration."""
        from .client import Client
        from .consumer import Consumer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self.stats.started = time.monotonic()
        own_client = self._client is None
        client = self._client if self._client is not None else Client(self.path, config=self.config)
        if client.readonly:
            raise ValueError("the forwarder acknowledges offsets: it needs a writable Client")
        consumer = self._consumer = Consumer(client, group=self.group, on_drop=self._on_drop)
        try:
            if not await self._open():
                return
            log.info("cometmp: forwarding %s (%r) to %s as group %r", self.path, self.pattern,
                     self.describe(), self.group)
            window: deque = deque()  # batches handed to the sink, oldest first
            while not self._stop.is_set():
                if len(window) < self.window:
                    batch = consumer.read(self.pattern, self.batch_size, timeout=0)
                    self._claimed(client)
                    if not len(batch) and not window:
                        self._progress()
                        # block in a thread so the loop keeps serving the connection; a
                        # short timeout bounds the delay of stop()
                        batch = await asyncio.to_thread(consumer.read, self.pattern,
                                                        self.batch_size, 0.2)
                    if len(batch):
                        window.append(await self._start(list(batch)))
                        if len(window) < self.window:
                            continue
                if not window or not await self._complete(window):
                    continue
                done = window.popleft()
                self._finished(done)
                self._ack_confirmed(done, unit_done=done.counts_as_unit)
                self._progress()
            if window:  # stopping: confirmations on their way get a moment, then ack those
                await self._grace(window)
                ids = self._acked_prefixes(window)
                if ids:
                    consumer.ack(*ids)
        finally:
            await self._close()
            self._consumer = None
            consumer.close()
            if own_client:
                client.close()
            self._progress(force=True)

    def _ack_confirmed(self, batch, unit_done: bool = True) -> None:
        """Ack, per stream, the confirmed prefix of ``batch``; the sink calls this after
        each confirmed unit (I55), the loop once more when the whole batch is confirmed.
        ``unit_done``: this call ends a confirmed unit (counted; the failpoint's clock)."""
        if unit_done:
            self.stats.batches += 1
            if _FAILPOINT and self.stats.batches >= _FAILPOINT:
                os.kill(os.getpid(), signal.SIGKILL)  # tests: the sink confirmed, offsets not
        ids = self._acked_prefixes([batch])
        if ids:
            self._consumer.ack(*ids)

    @staticmethod
    def _acked_prefixes(batches) -> list:
        """Per stream, the ids of the confirmed prefix (batches in the order they were
        read): every entry up to the first one not confirmed. Acks are per entry (I43), so
        each is given; nothing after a gap, which is shipped again. A batch has ``msgs``
        and ``acked`` (one byte per entry, nonzero once confirmed)."""
        ids: list = []
        blocked: set[str] = set()
        for b in batches:
            acked = b.acked
            for i, m in enumerate(b.msgs):
                s = m.id.stream
                if s in blocked:
                    continue
                if acked[i]:
                    ids.append(m.id)
                else:
                    blocked.add(s)
        return ids

    def _on_drop(self, stream: str, first: int, end: int) -> None:
        """The hard retention cap deleted entries before they were forwarded: say which."""
        self.stats.dropped += end - first
        log.error("cometmp: forwarder: entries [%d, %d) of %s were deleted by the hard "
                  "retention cap before they could be forwarded to %s", first, end, stream,
                  self.describe())

    def _progress(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= self.progress_interval:
            self._last_progress = now
            try:
                self.on_progress(self.stats)
            except Exception:  # a progress display must never stop forwarding
                log.exception("cometmp: forwarder progress callback failed")

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; returns early on stop()."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # ---- what a sink provides ------------------------------------------------------------
    def describe(self) -> str:
        """Where this forwards to, for log lines."""
        return self.sink_name

    def _claimed(self, client) -> None:
        """Called after each read (the first one created the group)."""

    async def _open(self) -> bool:
        """Connect to the sink (retrying until stop()); False if stopped first."""
        return True

    async def _close(self) -> None:
        """Close the sink's connection; must never raise."""

    async def _start(self, msgs):
        """Hand a read batch to the sink; returns the batch object (``msgs``, ``acked``,
        ``counts_as_unit``) the loop keeps in its window."""
        raise NotImplementedError

    async def _complete(self, window) -> bool:
        """Wait until the oldest batch of ``window`` is wholly confirmed (True), or
        stop() came first (False)."""
        raise NotImplementedError

    def _finished(self, batch) -> None:
        """The oldest batch was confirmed and leaves the window."""

    async def _grace(self, window, seconds: float = 1.0) -> None:
        """Stopping: let confirmations already on their way arrive."""
