"""Forward a cometmp data directory to a NATS JetStream stream, exactly once per entry.

Runs in its own process (``cometmp forward DIR --nats URL --stream NAME [PATTERN]``) or
inside an application (:class:`Forwarder`); it is an ordinary consumer of the log, so it
may run anywhere the data directory is mounted and needs no registry slot.

How it works:

* It reads the streams matching PATTERN (default ``*``; streams created later are picked
  up by the consumer's discovery) as the consumer group ``forward:<NAME>``. The group
  lives in the directory's offsets file, so the group is per (DIR, NAME) and a restarted
  forwarder resumes where the previous one's last acknowledgement left it.
* Each entry is published to subject ``<subject_prefix>.<stream>`` (default prefix
  ``cometmp.<NAME>``) with the header ``Nats-Msg-Id: <source>:<stream>:<entry>`` (and,
  with ``timestamp_header=True``, ``Cometmp-Timestamp: <append time, ns>``, which costs
  ~25% of the throughput). ``source`` identifies the data directory: by default the
  creation time of the group in hex, which travels with the directory and differs
  between directories, so two hosts forwarding into one JetStream stream never
  de-duplicate each other's entries.
* The JetStream stream NAME is created if missing (subjects ``<prefix>.>``, file storage,
  ``duplicate_window`` >= 2 minutes); an existing stream gains the subject if it lacks it.
* Publishing is pipelined: a batch of up to ``batch_size`` entries is written as raw
  HPUB commands, each with its own reply subject, and the JetStream PubAcks are
  collected by one subscription; up to ``window`` batches are in flight at once. Only
  when JetStream has acknowledged a batch completely is the group's offset advanced past
  it (``Consumer.ack``); batches complete in publish order. On stop, the acknowledged
  prefix of each stream is acked and nothing after a gap.
* A redelivery (a forwarder killed between JetStream's ack and its own offset ack, a
  lost PubAck, a reconnect) re-publishes the same ``Nats-Msg-Id``; the server answers
  ``duplicate`` and stores nothing, as long as the redelivery happens within the
  stream's ``duplicate_window``.
* A broker outage pauses forwarding: the batches in flight are re-published after the
  client reconnects, nothing new is read meanwhile, and the local log keeps buffering
  (unforwarded entries stay unacknowledged, so soft retention keeps them).
* It runs until stopped (``stop()``, SIGTERM or SIGINT) and then exits within ~2 s:
  it waits briefly for the PubAcks in flight, acks what was confirmed, and closes.

Limits: an outage longer than ``duplicate_window`` during which a PubAck was lost can
store that entry twice (JetStream forgets the id); entries larger than the server's
``max_payload`` cannot be forwarded and block their stream (logged at ERROR) until the
server's limit is raised.

Uses private pieces of nats-py 2.x for speed: ``Client._send_command`` writes many HPUB
commands at once, and a ``Client`` subclass overriding ``_process_msg`` hands PubAcks to
the forwarder without building a ``Msg`` and queueing it for a callback task. Both cut
the client's CPU per entry roughly in half; when nats-py's internals differ (checked when
the first Forwarder connects) it falls back to the public ``publish``/callback API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .forwarding import BaseForwarder, ForwarderStats, group_name

__all__ = ["Forwarder", "ForwarderStats", "group_name"]

log = logging.getLogger("cometmp")

#: JetStream's own default; the issue requires at least this much
DEFAULT_DUPLICATE_WINDOW = 120.0
#: bytes of HPUB commands handed to the client per write
_SEND_CHUNK = 256 * 1024


def _subject_token(stream: str) -> str:
    # stream names are [A-Za-z0-9_.:-]; "." splits subject tokens, which is fine (and
    # useful for wildcards) except at the end, where it would leave an empty token
    return stream[:-1] + "_" if stream.endswith(".") else stream


def _client_class():
    """nats-py's Client, with a fast path for the forwarder's PubAck subscription."""
    global _CLIENT_CLASS
    if _CLIENT_CLASS is not None:
        return _CLIENT_CLASS
    import inspect

    from nats.aio.client import Client as NATS

    params = list(inspect.signature(NATS._process_msg).parameters)
    if params != ["self", "sid", "subject", "reply", "data", "headers"] \
            or not hasattr(NATS, "_send_command"):
        _CLIENT_CLASS = NATS
        return NATS

    class _ForwarderClient(NATS):
        _cometmp_fast = True
        _cometmp_ack_sid = -1
        _cometmp_on_ack = None

        async def _process_msg(self, sid, subject, reply, data, headers):
            if sid == self._cometmp_ack_sid:
                self._cometmp_on_ack(subject, data, headers)
                return
            await super()._process_msg(sid, subject, reply, data, headers)

    _CLIENT_CLASS = _ForwarderClient
    return _CLIENT_CLASS


_CLIENT_CLASS = None


class _Inflight:
    """One batch being published: which of its entries JetStream has acknowledged."""

    def __init__(self, number: int, size: int):
        self.number = number
        self.acked = bytearray(size)
        self.remaining = size
        self.done = asyncio.Event()


class _Batch:
    """A batch in the publish window: its entries, their HPUB commands and ack state."""

    __slots__ = ("msgs", "inflight", "cmds", "sizes")
    counts_as_unit = True   # the loop's ack of a whole batch ends one confirmed unit

    def __init__(self, msgs, inflight: _Inflight, cmds: list[bytes], sizes: list[int]):
        self.msgs, self.inflight, self.cmds, self.sizes = msgs, inflight, cmds, sizes

    @property
    def acked(self) -> bytearray:
        return self.inflight.acked


class Forwarder(BaseForwarder):
    """Forward the streams of ``path`` matching ``pattern`` to JetStream stream ``stream``.

    Runs in one asyncio task (``await fw.run()``) or a thread/process of its own
    (``fw.run_forever()``, which also stops on SIGTERM/SIGINT in the main thread).
    ``stop()`` may be called from any thread or a signal handler.

    ``client``: an open :class:`cometmp.Client` to read through (else one is opened on
    ``path`` with ``config``). ``connect_options`` are passed to ``nats.connect``.
    ``on_progress(stats)`` is called about every ``progress_interval`` seconds.
    ``ack_timeout``: seconds without all PubAcks of the oldest batch before the window's
    unacknowledged entries are re-published (same ids: de-duplicated). ``window``:
    batches in flight at once.
    """

    def __init__(self, path: str | os.PathLike, nats_url: str = "nats://127.0.0.1:4222",
                 stream: str = "cometmp", pattern: str = "*", *, subject_prefix: str | None = None,
                 group: str | None = None, source: str | None = None, batch_size: int = 4000,
                 window: int = 2,
                 ack_timeout: float = 3.0, duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
                 create_stream: bool = True, timestamp_header: bool = False,
                 config=None, client=None,
                 connect_options: dict | None = None, on_progress=None,
                 progress_interval: float = 1.0):
        if not stream or any(c in stream for c in " .*>/\\\t\r\n"):
            raise ValueError(f"JetStream stream name {stream!r} may not be empty or contain "
                             "spaces, '.', '*', '>' or path separators")
        if duplicate_window < DEFAULT_DUPLICATE_WINDOW:
            raise ValueError(f"duplicate_window must be >= {DEFAULT_DUPLICATE_WINDOW:.0f} s, "
                             f"not {duplicate_window!r}")
        super().__init__(path, pattern, group or group_name(stream), batch_size=batch_size,
                         window=window, config=config, client=client, on_progress=on_progress,
                         progress_interval=progress_interval)
        self.nats_url = nats_url
        self.stream = stream
        self.subject_prefix = subject_prefix or f"cometmp.{stream}"
        self.source = source
        self.ack_timeout = float(ack_timeout)
        self.duplicate_window = float(duplicate_window)
        self.create_stream = create_stream
        self.timestamp_header = bool(timestamp_header)
        self.connect_options = dict(connect_options or {})
        self._nc = None
        self._js = None
        self._inbox = ""
        self._inflight: dict[int, _Inflight] = {}
        self._batch_no = 0
        self._need_stream = True
        self._subjects: dict[str, bytes] = {}

    # ---- the sink's part of the loop (cometmp.forwarding) --------------------------------
    def describe(self) -> str:
        return f"JetStream stream {self.stream} at {self.nats_url}"

    def _claimed(self, client) -> None:
        if self.source is None:  # the first read() claimed the group
            self.source = self._default_source(client)

    async def _open(self) -> bool:
        if not await self._connect():
            return False
        await self._subscribe_acks()
        return True

    async def _close(self) -> None:
        await self._close_nats()

    def _finished(self, batch: "_Batch") -> None:
        del self._inflight[batch.inflight.number]

    def _default_source(self, client) -> str:
        """Hex creation time (ns) of this forwarder's group: stable for the directory's
        lifetime (it is stored in it), different for every directory."""
        from .consumer import consumer_groups

        for g in consumer_groups(client):
            if g["name"] == self.group:
                return f"{g['created_ns']:x}"
        raise RuntimeError(f"consumer group {self.group!r} was not created in {self.path}")

    # ---- NATS connection -----------------------------------------------------------------
    async def _connect(self) -> bool:
        """Connect (retrying forever until stop()); False if stopped first."""
        async def on_error(e):
            self.stats.last_error = f"{type(e).__name__}: {e}"
            log.debug("cometmp: forwarder NATS error: %s", self.stats.last_error)

        async def on_disconnected():
            self.stats.connected = False
            log.warning("cometmp: forwarder disconnected from %s; pausing", self.nats_url)

        async def on_reconnected():
            self.stats.connected = True
            self.stats.reconnects += 1
            self._need_stream = True
            log.warning("cometmp: forwarder reconnected to %s; resuming", self.nats_url)
            self._wake.set()

        opts = dict(name=f"cometmp-forward {self.stream}", allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.25, connect_timeout=2,
                    ping_interval=5, max_outstanding_pings=2,
                    error_cb=on_error, disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected)
        opts.update(self.connect_options)
        nc = _client_class()()
        task = asyncio.ensure_future(nc.connect(self.nats_url, **opts))
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            # stopped while connecting: a cancelled connect is given 1 s to unwind and is
            # then left behind (nats-py catches CancelledError in places), so a stop never
            # waits on the unreachable broker
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            if task.done() and not task.cancelled():
                task.exception()   # retrieved, so it is not logged as never retrieved
            return False
        task.result()
        self._nc = nc
        self._js = self._nc.jetstream()
        self.stats.connected = True
        self._inbox = self._nc.new_inbox()
        return True

    async def _close_nats(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.close(), 1.5)
        except BaseException:  # closing must never prevent exit
            pass
        self.stats.connected = False

    async def _ensure_stream(self) -> None:
        """Create the JetStream stream if missing; add our subject if it lacks it."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        wildcard = f"{self.subject_prefix}.>"
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            if not self.create_stream:
                raise RuntimeError(f"JetStream stream {self.stream!r} does not exist") from None
            await self._js.add_stream(StreamConfig(
                name=self.stream, subjects=[wildcard], storage=StorageType.FILE,
                duplicate_window=self.duplicate_window))
            log.info("cometmp: created JetStream stream %s (subjects %s, duplicate window %.0f s)",
                     self.stream, wildcard, self.duplicate_window)
        else:
            cfg = info.config
            subjects = list(cfg.subjects or [])
            if wildcard not in subjects:
                cfg.subjects = subjects + [wildcard]
                await self._js.update_stream(cfg)
            if (cfg.duplicate_window or 0) < DEFAULT_DUPLICATE_WINDOW:
                log.warning("cometmp: JetStream stream %s has a duplicate window of %.0f s; "
                            "redeliveries after that are stored twice", self.stream,
                            cfg.duplicate_window or 0)
        self._need_stream = False

    async def _connected(self) -> bool:
        """Wait until the client is connected and the stream exists; False if stopped."""
        while not self._stop.is_set():
            nc = self._nc
            if nc is not None and nc.is_connected:
                if not self._need_stream:
                    return True
                try:
                    await self._ensure_stream()
                    return True
                except (RuntimeError, ValueError):
                    raise
                except Exception as e:  # timeout / no JetStream yet: the server is starting
                    self.stats.last_error = f"{type(e).__name__}: {e}"
                    log.debug("cometmp: forwarder: JetStream not ready: %s", e)
            await self._sleep(0.1)
        return False

    # ---- publishing ----------------------------------------------------------------------
    def _subject(self, stream: str) -> bytes:
        s = self._subjects.get(stream)
        if s is None:
            s = self._subjects[stream] = f"{self.subject_prefix}.{_subject_token(stream)}".encode()
        return s

    def _commands(self, msgs, number: int) -> tuple[list[bytes], list[int]]:
        """One HPUB command per entry (reply ``<inbox>.<batch>.<i>``, header Nats-Msg-Id,
        and Cometmp-Timestamp if asked) and its message size. Built once, re-sent as is on retry."""
        reply = f"{self._inbox}.{number}.".encode()
        src = self.source.encode()
        cmds, sizes = [], []
        subject = self._subject
        with_ts = self.timestamp_header
        for i, m in enumerate(msgs):
            mid = m.id
            data = m.data
            if with_ts:
                hdr = b"NATS/1.0\r\nNats-Msg-Id: %s:%s:%d\r\nCometmp-Timestamp: %d\r\n\r\n" % (
                    src, mid.stream.encode(), mid.entry, m.timestamp_ns)
            else:
                hdr = b"NATS/1.0\r\nNats-Msg-Id: %s:%s:%d\r\n\r\n" % (
                    src, mid.stream.encode(), mid.entry)
            size = len(hdr) + len(data)
            # HPUB <subject> <reply> <#header bytes> <#total bytes>\r\n<headers><payload>\r\n
            cmds.append(b"HPUB %s %s%d %d %d\r\n%s%s\r\n" % (
                subject(mid.stream), reply, i, len(hdr), size, hdr, data))
            sizes.append(size)
        return cmds, sizes

    async def _send(self, msgs, cmds: list[bytes], sizes: list[int], inflight: _Inflight) -> None:
        nc = self._nc
        send = nc._send_command if getattr(nc, "_cometmp_fast", False) else None
        limit = nc.max_payload
        chunk: list[bytes] = []
        size = 0
        for i, cmd in enumerate(cmds):
            if inflight.acked[i]:
                continue
            if sizes[i] > limit:
                self._too_large(msgs[i], limit)
                continue
            if send is None:  # public API fallback
                m = msgs[i]
                await nc.publish(self._subject(m.id.stream).decode(), bytes(m.data),
                                 reply=f"{self._inbox}.{inflight.number}.{i}",
                                 headers={"Nats-Msg-Id": f"{self.source}:{m.id.stream}:{m.id.entry}",
                                          "Cometmp-Timestamp": str(m.timestamp_ns)})
                continue
            chunk.append(cmd)
            size += len(cmd)
            if size >= _SEND_CHUNK:
                await send(b"".join(chunk))
                await nc._flush_pending()
                chunk, size = [], 0
                if not nc.is_connected:
                    return
        if chunk:
            await send(b"".join(chunk))
            await nc._flush_pending()

    def _too_large(self, m, limit: int) -> None:
        self.stats.last_error = (f"entry {m.id.entry} of {m.id.stream} is {len(m.data)} bytes; "
                                 f"the NATS server's max_payload is {limit}")
        log.error("cometmp: forwarder cannot publish %s; raise max_payload on the server "
                  "(the stream is blocked until then)", self.stats.last_error)

    async def _start(self, msgs) -> "_Batch":
        """Build a batch's commands and publish it (once connected)."""
        self._batch_no += 1
        inflight = _Inflight(self._batch_no, len(msgs))
        cmds, sizes = self._commands(msgs, inflight.number)
        b = _Batch(msgs, inflight, cmds, sizes)
        self._inflight[inflight.number] = inflight
        if await self._connected():
            await self._send(msgs, cmds, sizes, inflight)
        return b

    async def _complete(self, window: "deque[_Batch]") -> bool:
        """Wait until JetStream acknowledged every entry of the oldest batch; re-publish
        what is unacknowledged in the whole window after ack_timeout or a reconnect.
        False if stop() came first."""
        oldest = window[0].inflight
        while oldest.remaining:
            await self._await_acks(oldest)
            if self._stop.is_set():
                return False
            if oldest.remaining:
                if not await self._connected():
                    return False
                for b in window:  # in order, so each stream's entries stay in order
                    if b.inflight.remaining:
                        self.stats.republished += b.inflight.remaining
                        await self._send(b.msgs, b.cmds, b.sizes, b.inflight)
        return True

    async def _grace(self, window: "deque[_Batch]", seconds: float = 1.0) -> None:
        deadline = time.monotonic() + seconds
        for b in window:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(b.inflight.done.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _await_acks(self, inflight: _Inflight) -> None:
        """Until every entry is acked, ack_timeout passes, the client reconnects, or stop()."""
        self._wake.clear()
        waiters = {asyncio.ensure_future(inflight.done.wait()),
                   asyncio.ensure_future(self._stop.wait()),
                   asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(waiters, timeout=self.ack_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if inflight.remaining and not self._stop.is_set() and self._nc is not None \
                and self._nc.is_connected and not self._wake.is_set():
            log.debug("cometmp: forwarder: %d PubAcks missing after %.1f s; re-publishing",
                      inflight.remaining, self.ack_timeout)

    async def _subscribe_acks(self) -> None:
        """Route PubAcks (replies to ``<inbox>.<batch>.<i>``) to _on_ack. With our client
        subclass they skip nats-py's per-message Msg object and queue entirely."""
        nc = self._nc
        prefix_len = len(self._inbox) + 1
        if getattr(nc, "_cometmp_fast", False):
            sub = await nc.subscribe(f"{self._inbox}.*.*")
            nc._cometmp_ack_sid = sub._id
            nc._cometmp_on_ack = lambda subject, data, headers: self._on_ack(
                subject, data, headers, prefix_len)
            return

        async def cb(msg):  # public API fallback
            raw = b"NATS/1.0 503\r\n" if msg.headers and msg.headers.get("Status") == "503" else None
            self._on_ack(msg.subject.encode(), msg.data, raw, prefix_len)

        await nc.subscribe(f"{self._inbox}.*.*", cb=cb)

    def _on_ack(self, subject: bytes, data: bytes, headers, prefix_len: int) -> None:
        try:
            number, i = subject[prefix_len:].split(b".")
            inflight = self._inflight.get(int(number))
            i = int(i)
        except ValueError:
            return
        if inflight is None or i >= len(inflight.acked) or inflight.acked[i]:
            return  # a late ack of an earlier attempt or batch
        if data.startswith(b'{"stream"') or (b'"seq"' in data and b'"error"' not in data):
            inflight.acked[i] = 1
            inflight.remaining -= 1
            self.stats.forwarded += 1
            if b'"duplicate"' in data:  # server writes '"duplicate": true'
                self.stats.duplicates += 1
            if not inflight.remaining:
                inflight.done.set()
            return
        self.stats.errors += 1
        if not data and headers and b" 503" in headers[:16]:
            # "no responders": the JetStream stream is gone (a server with a wiped store)
            self._need_stream = True
            self.stats.last_error = "no responders for the subject (JetStream stream missing?)"
        else:
            self.stats.last_error = data.decode("utf-8", "replace")[:300]
        if self.stats.errors < 10 or self.stats.errors % 1000 == 0:
            log.error("cometmp: forwarder: JetStream refused a message: %s", self.stats.last_error)

