"""Consumer groups: at-least-once, real-time reads of many streams from any process.

Who may call: any process with a Client on the data directory. A Consumer is not thread
safe (one per thread); after fork() it re-attaches (its in-process positions are dropped
and reading resumes from the group's acknowledged offsets, I10).

How a read works (docs/ARCHITECTURE.md §9):

* The group is claimed in the shared offsets file (cometmp.offsets) by the first
  ``read()``, together with the pattern it reads, so from then on it protects unread
  entries from retention, also on streams created later (I14).
* Each matched stream has a cursor (cometmp.cursor): the next entry to deliver (``pos``), the group's slot
  in the offsets file, and a (segment, offset, sequence) location so consecutive reads
  cost O(1) regardless of depth. A cursor starts at the group's acknowledged offset, or
  at the oldest retained entry for a new group.
* Records are collected by cometmp._reader (native/reader.c) into a Batch, reading only
  below each stream's published ``committed`` count (I2).
* With nothing to read, the consumer sleeps on the streams' ``notify_seq`` futex words
  (native/notify.c, I11) and wakes when any writer in any process publishes. A Consumer
  of a readonly Client cannot register as a waiter (that writes the state page), so it
  polls every ``poll_interval`` seconds instead.

Consumers of one group reading without ``assignment`` are live members that split the
matching streams (cometmp.members, docs/ARCHITECTURE.md §9.7): each reads only the
streams it has claimed, and hands one over only once what it delivered there is acked.

Delivery is at-least-once: ``ack()`` is cumulative per stream, and a consumer that dies
resumes from its group's last ack, so it redelivers at most what it read but had not
acked. Entries the hard retention cap deleted before the group acked them are reported
(EntriesDropped or ``on_drop``), never skipped silently.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from . import _reader, deadletter, members, paths, waiting
from ._ffi import check, core_path, ffi, lib
from .compression import decompress
from .cursor import Cursor
from .errors import (
    ClosedError,
    CometError,
    DeadLetterWarning,
    EntriesDropped,
    EntryNotFound,
    ReadOnlyError,
    StopProcessing,
    StreamNotFound,
    os_errors,
)
from .offsets import GroupRef, OffsetStore, validate_group_name
from .shard import MessageID, StreamMessage
# the longest single sleep (new matching streams are noticed at least this often) and
# futex_waitv's limit: one value each for the blocking wait here and cometmp.waiting's
from .waiting import DISCOVER_INTERVAL, WAITV_MAX

__all__ = ["Batch", "Consumer", "consumer_groups", "delete_consumer_group"]

log = logging.getLogger("cometmp")

_reader.configure(core_path(), StreamMessage, MessageID, decompress)

#: Entries of one read(): list-like of StreamMessage (see native/reader.c). ``len()``,
#: indexing, slicing and iteration build StreamMessages lazily; ``payloads()`` returns
#: only the data objects (the fast path); ``ack_points()`` is what acking it means.
Batch = _reader.Batch


#: how often read() re-checks the streams directory for new streams while data flows
MATCH_RECHECK = 0.02
#: how often read() checks that no state page was rebuilt under it
STALE_RECHECK = 1.0
_TOUCH_EVERY_NS = 1_000_000_000
#: I10's fork generation (native/error.c): one cffi call, not a getpid() syscall per read
_fork_generation = lib.cm_fork_generation


@dataclass
class _Drop:
    stream: str
    first: int
    end: int


def _assigned(name: str, assignment: tuple[int, int] | None) -> bool:
    """Streams split among ``n`` consumers: a family's shard ``k`` goes to ``k % n``; a
    stream outside a family by crc32 of its name. Identical in every process."""
    if assignment is None:
        return True
    i, n = assignment
    split = paths.split_shard_stream(name)
    k = split[1] if split else zlib.crc32(name.encode())
    return k % n == i


class Consumer:
    """Reads streams as consumer group ``group``; see the module docstring.

    ``zero_copy=True`` makes batches hold ``memoryview``s over the segment mappings
    (valid as long as they are referenced) instead of ``bytes``. ``on_drop(stream, first,
    end)`` is called when the hard retention cap deleted entries this group had not
    acked; without it, ``read()`` raises EntriesDropped once for them.
    """

    def __init__(self, client, group: str, *, zero_copy: bool = False,
                 on_drop: Callable[[str, int, int], Any] | None = None,
                 poll_interval: float = 0.01):
        validate_group_name(group)
        client._check_open()
        self.client = client
        self.group = group
        self.zero_copy = bool(zero_copy)
        self.on_drop = on_drop
        self.poll_interval = float(poll_interval)
        self.root = client.path
        self.ephemeral = bool(client.readonly)
        self._gen = _fork_generation()   # I10's counter: bumped in every forked child
        self._store = OffsetStore(self.root, writable=not self.ephemeral)
        self._group: GroupRef | None = None
        self._patterns: set[str] = set()
        self._cursors: dict[str, Cursor] = {}
        self._match_cache: dict[str, tuple[int, list[str]]] = {}
        self._match_checked = 0.0
        self._stale_checked = time.monotonic()
        self._streams_dir = paths.streams_dir(self.root)
        self._pending: list[_Drop] = []
        self._rr = 0
        self._touched = 0
        self._wait_cache: tuple | None = None
        self._listed: tuple | None = None   # (pattern, assignment, names, cursors)
        self._membership: members.Membership | None = None   # live membership (I41a-d)
        self._owned_cache: tuple | None = None
        self._closed = False

    # ---- group and streams ---------------------------------------------------------------
    def _check_closed(self) -> None:
        if self._closed:
            raise ClosedError(f"consumer {self.group!r} is closed")
        if self.client._closed:
            raise ClosedError(f"client for {self.root} is closed")

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"consumer {self.group!r} is closed")
        if self.client._closed:
            raise ClosedError(f"client for {self.root} is closed")
        # the core's fork generation (pthread_atfork, any kind of fork), not os.getpid():
        # one syscall less on every read() and ack() (see PERFORMANCE.md, wake-ups)
        if self._gen != _fork_generation():
            self._reattach()

    def _reattach(self) -> None:
        """In a forked child: forget in-process positions; offsets come from the file."""
        for c in self._cursors.values():
            c.close()
        self._cursors.clear()
        self._listed = None
        self._wait_cache = None
        self._owned_cache = None   # the membership itself was dropped at fork (cometmp.members)
        self._gen = _fork_generation()

    def _ensure_group(self, pattern: str | None) -> GroupRef | None:
        g = self._group
        if g is None or not self._store.group_live(g):
            if g is not None:
                # deleted (by hand or idle expiry) under a live consumer: claim it again and
                # go on from the positions this process holds; a fresh slot has resets == 0
                log.warning("cometmp: consumer group %r was deleted; claiming it again", self.group)
                for c in self._cursors.values():
                    c.slot, c.resets = None, 0
                self._patterns.clear()
            g = self._group = self._store.group(self.group, create=not self.ephemeral)
        if g is not None and pattern is not None and pattern not in self._patterns and not self.ephemeral:
            self._store.add_pattern(g, pattern)   # I14: protects matching streams from now on
            self._patterns.add(pattern)
        return g

    def _match(self, pattern: str) -> list[str]:
        """Streams matching ``pattern``; relisted only when ``streams/`` changed (its mtime,
        checked at most every MATCH_RECHECK seconds)."""
        now = time.monotonic()
        hit = self._match_cache.get(pattern)
        if hit is not None and now - self._match_checked < MATCH_RECHECK:
            return hit[1]
        self._match_checked = now
        with os_errors(self._streams_dir, "stat"):
            try:
                mtime = os.stat(self._streams_dir).st_mtime_ns
            except FileNotFoundError:
                return []
        if hit is not None and hit[0] == mtime:
            return hit[1]
        names = self.client.streams(pattern)
        if not pattern.startswith(deadletter.DEAD_LETTER_PREFIX):
            # a group's dead letters are read only by a pattern that names them
            names = [n for n in names if not deadletter.is_dead_letter(n)]
        self._match_cache[pattern] = (mtime, names)
        return names

    def _cursor(self, name: str) -> Cursor:
        c = self._cursors.get(name)
        if c is None:
            paths.validate_stream_name(name)
            c = Cursor(self.root, name, rw_state=not self.ephemeral)
            self._cursors[name] = c
            self._wait_cache = None
        return c

    def _slot(self, c: Cursor, g: GroupRef | None) -> int | None:
        if c.slot is None and g is not None:
            c.slot = self._store.slot(g, c.name, create=not self.ephemeral)
        return c.slot

    def _sync(self, c: Cursor, g: GroupRef | None) -> None:
        """Bring ``c.pos`` in line with the offsets file: start, resets from other
        processes, acks further ahead by another member of the group, retention."""
        slot = self._slot(c, g)
        acked = c.local_next
        resets = 0
        if slot is not None:
            acked = self._store.next(slot)
            if acked is None and not self.ephemeral and self._store.writable:
                # The group's starting point is made durable the first time it sees the
                # stream, so a hard-cap deletion between joining and a member's first read
                # is reported as dropped (R3) instead of skipped: retention counts an unset
                # slot as needing everything, and so must the cursor.
                self._store.ack(g, slot, c.oldest())
                acked = self._store.next(slot)
            resets = self._store.resets(slot)
            if self.ephemeral and c.local_next is not None:
                acked = max(acked or 0, c.local_next)
        if c.pos is None or resets != c.resets:
            c.resets = resets
            c.seg = None
            c.pos = acked if acked is not None else c.oldest()
        elif acked is not None and acked > c.pos:
            c.pos, c.seg = acked, None
        first = c.retained_from(c.pos)
        if c.pos < first:
            self._dropped(c, g, c.pos, first)

    def _dropped(self, c: Cursor, g: GroupRef | None, start: int, end: int) -> None:
        log.error("cometmp: consumer group %r lost entries [%d, %d) of %s to the hard "
                  "retention cap before acknowledging them", self.group, start, end, c.name)
        self._pending.append(_Drop(c.name, start, end))
        c.pos, c.seg = end, None
        if c.slot is not None and g is not None and not self.ephemeral:
            self._store.ack(g, c.slot, end)

    def _deliver_drops(self) -> None:
        drops, self._pending = self._pending, []
        if self.on_drop is not None:
            for d in drops:
                self.on_drop(d.stream, d.first, d.end)
            return
        d = drops[0]
        raise EntriesDropped(
            f"consumer group {self.group!r}: entries [{d.first}, {d.end}) of {d.stream} were "
            f"deleted by the hard retention cap before being acknowledged"
            + (f" (and {len(drops) - 1} more ranges, see .drops)" if len(drops) > 1 else ""),
            stream=d.stream, first=d.first, end=d.end,
            drops=[(x.stream, x.first, x.end) for x in drops])

    # ---- reading -------------------------------------------------------------------------
    def read(self, pattern: str = "*", max_messages: int = 1000, timeout: float | None = None,
             *, zero_copy: bool | None = None, assignment: tuple[int, int] | None = None) -> Batch:
        """Up to ``max_messages`` entries (in total) from the streams matching ``pattern``.

        ``timeout`` in seconds: None waits until something arrives, 0 never waits; an
        expired wait returns an empty batch. ``assignment=(i, n)`` reads only this
        consumer's share of the streams (see _assigned). The batch is list-like of
        StreamMessage; acknowledge it with ``ack(batch)`` or ``ack(*ids)``.
        """
        self._check()
        if not isinstance(max_messages, int) or max_messages <= 0:
            raise ValueError(f"max_messages must be a positive int, not {max_messages!r}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")
        if assignment is not None:
            i, n = assignment
            if not (isinstance(n, int) and n > 0 and isinstance(i, int) and 0 <= i < n):
                raise ValueError(f"assignment must be (index, count) with 0 <= index < count, "
                                 f"not {assignment!r}")
        zc = self.zero_copy if zero_copy is None else bool(zero_copy)
        if self._pending:
            self._deliver_drops()
        deadline = None if timeout is None else time.monotonic() + timeout
        g = self._ensure_group(pattern)
        while True:
            cursors = self._owned(g, pattern, assignment, self._cursors_for(pattern, assignment))
            self._check_stale(cursors)
            seqs = [c.notify_seq() for c in cursors]   # before reading committed (I11)
            for c in cursors:
                self._sync(c, g)
            if self._pending:      # signalled before anything is read: no batch is lost
                self._deliver_drops()
            batch = self._fill(cursors, g, max_messages, zc)
            if self._pending and not len(batch):
                self._deliver_drops()
                continue
            if len(batch) or timeout == 0:
                self._touch(g)
                return batch
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._touch(g)
                return batch
            left = DISCOVER_INTERVAL if deadline is None else min(deadline - now, DISCOVER_INTERVAL)
            left = self._member_slice(left)
            self._check_closed()
            # a consumer waiting for data is active, not idle (R4): touched before each wait
            # slice, not after it, so a wake-up goes to its batch without this step (the
            # return below touches again)
            self._touch(g)
            if not self._wait(cursors, seqs, left):
                self._check_stale(cursors, force=True)
            self._check_closed()   # woken by close() in another thread (L4)

    # ---- live membership (issue 11 item 1; the bulk is cometmp.members) -----------------
    def _owned(self, g: GroupRef | None, pattern: str, assignment, cursors: list[Cursor]) -> list[Cursor]:
        """Of ``cursors``, those of the streams this member has claimed and still reads
        (I41d), refreshing the membership every members.REFRESH seconds. A static
        ``assignment`` or a readonly client (not a member): all of them."""
        if assignment is not None or self.ephemeral or g is None:
            return cursors
        m = self._membership
        if m is None:
            m = self._membership = members.Membership(self.root, self.group)
        if m.due(time.monotonic()) or pattern not in m.patterns:
            pats = m.patterns if pattern in m.patterns else [*m.patterns, pattern]
            # I41c balances over every stream of every pattern this member reads
            names = [c.name for c in cursors] if pats == [pattern] else \
                sorted(set().union(*(self._match(p) for p in pats)))
            m.refresh(g, pattern, names,
                      slot_of=lambda name: self._store.slot(g, name, create=True),
                      unacked=lambda name: name in self._cursors and self._unacked(self._cursors[name]),
                      claimed=self._claimed)
        cache = self._owned_cache
        if cache is not None and cache[0] is cursors and cache[1] == m.version:
            return cache[2]
        out = [c for c in cursors if m.reading(c.name)]
        self._owned_cache = (cursors, m.version, out)
        return out

    def _unacked(self, c: Cursor) -> bool:
        """Whether this consumer delivered entries of ``c``'s stream that its group has not
        acknowledged: then the stream is not released to another member (I41d). The seam
        a per-message window replaces (its ``has_acquired(owner)``)."""
        if c.pos is None or c.slot is None:
            return False
        acked = self._store.next(c.slot)
        return acked is None or c.pos > acked

    def _claimed(self, name: str) -> None:
        """A stream this member just claimed restarts from the group's acked offset, so
        what a dead or departed holder had not acked is redelivered (I41d)."""
        c = self._cursors.get(name)
        if c is not None:
            c.pos, c.seg = None, None

    def _member_slice(self, left: float) -> float:
        """A member's wait slice ends at its next membership refresh (a sleeping read()
        notices joins and deaths within members.REFRESH)."""
        m = self._membership
        if m is None or m.k is None:
            return left
        return max(0.001, min(left, m.next_refresh - time.monotonic()))

    def assigned(self) -> list[str]:
        """The streams this member holds now (live membership), sorted. With a static
        ``assignment`` or a readonly client: the streams its last read() covered."""
        m = self._membership
        if m is not None and m.k is not None:
            return m.assigned()
        last = self._listed
        return sorted(c.name for c in last[3]) if last is not None else []

    def _check_stale(self, cursors: list[Cursor], force: bool = False) -> None:
        """Remap state pages a writer rebuilt (new inode) so ``committed`` keeps moving;
        checked after an idle wait slice and at least every STALE_RECHECK seconds."""
        now = time.monotonic()
        if not force and now - self._stale_checked < STALE_RECHECK:
            return
        self._stale_checked = now
        for c in cursors:
            if c.state.stale():
                c.state.remap()
                self._wait_cache = None

    def _cursors_for(self, pattern: str, assignment) -> list[Cursor]:
        names = self._match(pattern)
        last = self._listed
        # the same listing (the very list _match cached) as the last call: the same cursors,
        # without a lookup per stream on every wake-up. Kept only when every name had a
        # cursor (a stream not openable yet is tried again on the next call)
        if last is not None and last[2] is names and last[0] == pattern and last[1] == assignment:
            return last[3]
        out = []
        complete = True
        for name in names:
            if not _assigned(name, assignment):
                continue
            try:
                out.append(self._cursor(name))
            except StreamNotFound:
                complete = False
                continue
        self._listed = (pattern, assignment, names, out) if complete else None
        return out

    def _fill(self, cursors: list[Cursor], g: GroupRef | None, budget: int, zc: bool) -> Batch:
        batch = Batch(zc)
        n = len(cursors)
        start = self._rr
        self._rr += 1
        for k in range(n):
            if budget <= 0:
                break
            c = cursors[(start + k) % n]
            committed = c.committed()
            if c.pos >= committed:
                continue
            sidx = batch.add_stream(c.name, c.shard)
            try:
                budget -= c.read_into(batch, sidx, budget, committed)
            except (EntryNotFound, FileNotFoundError):
                # the segment under pos was deleted: below the oldest retained entry now
                c.seg = None
                c.reader._refresh_bases()
                first = c.oldest()
                if c.pos < first:
                    self._dropped(c, g, c.pos, first)
        return batch

    def _wait(self, cursors: list[Cursor], seqs: list[int], timeout: float) -> bool:
        """Sleep until a stream publishes past ``seqs`` or ``timeout``; True if woken."""
        if timeout <= 0:
            return False
        # the cdata buffer exports, held in locals for the whole wait: a close() in another
        # thread then cannot unmap a page this thread sleeps on (L4)
        states = [c.state.ptr for c in cursors if c.state.ptr is not None]
        if self.ephemeral or not cursors or len(states) != len(cursors):
            # a member holding nothing has nothing to poll: it sleeps to its next refresh
            idle_member = not cursors and self._membership is not None
            time.sleep(timeout if idle_member else min(timeout, self.poll_interval))
            return False
        if waiting.cooperative():   # gevent-patched: the greenlet sleeps, the hub runs on
            return waiting.wait_green(states, seqs, timeout, waiting.closed_of(self))
        if len(cursors) > WAITV_MAX:   # futex_waitv's limit: sleep on the first 128, poll the rest
            timeout = min(timeout, self.poll_interval)
            cursors, seqs, states = cursors[:WAITV_MAX], seqs[:WAITV_MAX], states[:WAITV_MAX]
        key = tuple(id(p) for p in states)
        cache = self._wait_cache
        if cache is None or cache[0] != key:
            arr = ffi.new("void *[]", states)
            seen = ffi.new("uint32_t[]", len(cursors))
            cache = self._wait_cache = (key, arr, seen, states)
        _k, arr, seen, _held = cache
        if self._closed:
            raise ClosedError(f"consumer {self.group!r} is closed")
        for i, s in enumerate(seqs):
            seen[i] = s
        rc = lib.cm_wait_many(arr, seen, len(cursors), int(timeout * 1e9))
        return check(rc) == 1

    def _touch(self, g: GroupRef | None) -> None:
        now = time.monotonic_ns()
        if g is not None and not self.ephemeral and now - self._touched > _TOUCH_EVERY_NS:
            self._touched = now
            try:
                self._store.touch(g)
            except CometError:
                pass

    # ---- acknowledging -------------------------------------------------------------------
    def ack(self, *ids) -> None:
        """Cumulative ack per stream: for each stream named, every entry up to and including
        the highest id given is processed. Takes MessageIDs, StreamMessages or whole
        Batches; ids may span several streams. No ids: no-op."""
        if not ids:
            return
        self._check()
        points: dict[str, int] = {}
        for x in ids:
            if isinstance(x, Batch):
                for s, nxt in x.ack_points().items():
                    if nxt > points.get(s, -1):
                        points[s] = nxt
                continue
            if isinstance(x, StreamMessage):
                x = x.id
            try:
                stream, entry = x.stream, x.entry
            except AttributeError:
                raise TypeError(f"ack() takes MessageIDs, StreamMessages or Batches, not "
                                f"{type(x).__name__}") from None
            if not isinstance(entry, int) or isinstance(entry, bool) or entry < 0:
                raise EntryNotFound(f"ack of entry {entry!r} of stream {stream!r}: entry "
                                    "numbers are ints from 0; nothing was acknowledged")
            if entry + 1 > points.get(stream, -1):
                points[stream] = entry + 1
        if not points:
            return
        for stream, nxt in points.items():   # E5: all or nothing, every stream checked first
            length = self._cursor(stream).committed()
            if nxt > length:
                raise EntryNotFound(
                    f"ack of entry {nxt - 1} of stream {stream!r}, which has {length} entries "
                    f"(0..{length - 1}): an ack beyond the end would skip entries not yet "
                    "appended; nothing was acknowledged")
        g = self._ensure_group(None)
        for stream, nxt in points.items():
            c = self._cursor(stream)
            if self.ephemeral:
                c.local_next = max(c.local_next or 0, nxt)
                continue
            slot = self._slot(c, g)
            self._store.ack(g, slot, nxt)
        self._touch(g)

    def commit(self, batch: Batch) -> None:  # Kafka-style alias
        self.ack(batch)

    # ---- inspection and control ----------------------------------------------------------
    def lag(self, pattern: str = "*") -> dict[str, int]:
        """{stream: entries appended but not yet acknowledged by this group}."""
        self._check()
        g = self._group
        if g is None or not self._store.group_live(g):
            g = self._store.group(self.group, create=False)   # inspecting claims nothing
        out = {}
        for name in self._match(pattern):
            c = self._cursor(name)
            slot = c.slot if c.slot is not None and g == self._group else \
                (self._store.slot(g, name, create=False) if g is not None else None)
            acked = self._store.next(slot) if slot is not None else None
            if self.ephemeral and c.local_next is not None:
                acked = max(acked or 0, c.local_next)
            if acked is None:
                acked = c.oldest()
            out[name] = max(0, c.committed() - c.retained_from(acked))
        return out

    def position(self, stream: str) -> int | None:
        """Next entry this consumer will deliver from ``stream`` (None before reading it)."""
        c = self._cursors.get(stream)
        return c.pos if c is not None else None

    def reset_offset(self, stream: str, entry: int | None = None, *,
                     timestamp_ns: int | None = None) -> dict[str, int]:
        """Move the group's offset of every stream matching ``stream`` (a name or an fnmatch
        pattern) to ``entry``, or to the first entry appended at/after ``timestamp_ns``
        (O(log n)). Clamped to [oldest retained, length]. Consumers of the group in other
        processes pick the new offset up at their next read. Returns {stream: offset}."""
        self._check()
        if (entry is None) == (timestamp_ns is None):
            raise ValueError("reset_offset takes exactly one of entry or timestamp_ns")
        if self.ephemeral:
            raise ReadOnlyError(f"client for {self.root} was opened readonly=True")
        g = self._ensure_group(stream)
        names = self._match(stream) if any(ch in stream for ch in "*?[") else [stream]
        out = {}
        for name in names:
            c = self._cursor(name)
            if timestamp_ns is not None:
                target = c.reader.seek_time(int(timestamp_ns))
            else:
                target = int(entry)
            target = min(max(target, c.oldest()), c.committed())
            slot = self._slot(c, g)
            self._store.set(g, slot, target)
            c.resets = self._store.resets(slot)
            c.pos, c.seg = target, None
            out[name] = target
        return out

    # ---- processing loops ----------------------------------------------------------------
    def process(self, handler: Callable[[Batch], Any], stream: str = "*", batch_size: int = 1000,
                poll_interval: float = 0.05, assignment: tuple[int, int] | None = None,
                max_retries: int = 3, on_error: Callable | None = None,
                on_batch: Callable | None = None, dead_letter: Callable | None = None,
                stop: threading.Event | None = None, backoff: float = 0.05,
                max_backoff: float = 5.0) -> int:
        """Call ``handler(batch)`` for batches of up to ``batch_size`` entries until ``stop``
        is set or the handler raises StopProcessing; returns the entries the handler
        processed (a dead-lettered batch is not counted).

        A batch is acked after the handler returns. On an exception the handler is retried
        ``max_retries`` times with exponential backoff (``backoff`` doubling up to
        ``max_backoff``; ``on_error(exc, batch, attempt)`` is called each time). A batch
        that still fails goes to ``dead_letter(batch, exc)`` when given; by default every
        entry of it is appended to the group's dead-letter stream
        (``cometmp.deadletter.stream_for(group)``: original stream, entry id, timestamp
        and error in a JSON envelope, then the original bytes) and a DeadLetterWarning
        is issued. Only then is the batch acked so the group moves on; if the dead letter
        cannot be written (a readonly client, a full disk) that error is raised and the
        batch stays unacknowledged. StopProcessing stops without acking the current
        batch. ``on_batch(batch)`` runs after each ack. Streams created while it runs
        are picked up within ``poll_interval`` (or sooner when their writers publish).
        """
        done = 0
        wait = max(0.0, float(poll_interval))
        while stop is None or not stop.is_set():
            batch = self.read(stream, batch_size, timeout=wait, assignment=assignment)
            if not len(batch):
                continue
            attempt = 0
            handled = True
            while True:
                try:
                    handler(batch)
                    break
                except StopProcessing:
                    return done
                except Exception as exc:  # noqa: BLE001 - the handler's failure is data here
                    attempt += 1
                    if on_error is not None:
                        on_error(exc, batch, attempt)
                    if attempt > max_retries:
                        handled = False
                        if dead_letter is not None:
                            dead_letter(batch, exc)
                        else:
                            self._dead_letter(batch, exc, attempt)
                        break
                    delay = min(max_backoff, backoff * (2 ** (attempt - 1)))
                    if stop is not None:
                        if stop.wait(delay):
                            return done
                    else:
                        time.sleep(delay)
            self.ack(batch)
            if handled:
                done += len(batch)
            if on_batch is not None:
                on_batch(batch)
        return done

    def _dead_letter(self, batch: Batch, exc: BaseException, attempts: int) -> None:
        """The default dead letter: append every entry of ``batch`` to the group's
        dead-letter stream, then warn. Raises (nothing acked) if it cannot be written."""
        target = deadletter.stream_for(self.group)
        if self.client.readonly:
            raise ReadOnlyError(
                f"consumer group {self.group!r} gave up on a batch ({_describe(batch)}) after "
                f"{attempts} attempts ({type(exc).__name__}: {exc}), and a readonly client "
                f"cannot write it to the dead-letter stream {target!r}; the batch is not "
                "acknowledged (pass dead_letter= to process() to handle it yourself)")
        payloads = [deadletter.encode(self.group, m.id.stream, m.id.entry, m.timestamp_ns,
                                      m.data, exc, attempts) for m in batch]
        ids = self.client.append(target, payloads)
        warnings.warn(DeadLetterWarning(
            f"cometmp: consumer group {self.group!r} gave up on {len(batch)} entries "
            f"({_describe(batch)}) after {attempts} attempts ({type(exc).__name__}: {exc}); "
            f"they are in the dead-letter stream {target!r} as entries "
            f"[{ids[0].entry}, {ids[-1].entry}] (read them with cometmp.deadletter.decode)"),
            stacklevel=3)

    async def read_async(self, pattern: str = "*", max_messages: int = 1000,
                         timeout: float | None = None, *, zero_copy: bool | None = None,
                         assignment: tuple[int, int] | None = None) -> Batch:
        """``await consumer.read_async(...)``: ``read()`` for asyncio. The same arguments
        and batch; the wait does not block the event loop and holds no thread of its own:
        the process's one waiter thread (cometmp.waiting) sleeps on the futex words of
        every stream being awaited and resolves the awaiting futures. Cancelling it
        leaves nothing behind; ``close()`` from another thread or task makes it raise
        ClosedError. A readonly client polls every ``poll_interval``."""
        return await waiting.read_async(self, pattern, max_messages, timeout,
                                        zero_copy=zero_copy, assignment=assignment)

    def _wait_point(self, pattern: str, assignment, idle: bool) -> tuple[list | None, list[int]]:
        """For cometmp.waiting, called just before a ``read(timeout=0)``: the state pages
        of the streams that read covers and their ``notify_seq``, sampled before it reads
        ``committed`` (I11); pages None when the consumer must poll (readonly, no stream
        yet, a page not mapped). ``idle``: the last wait timed out (remap rebuilt pages)."""
        self._check()
        g = self._ensure_group(pattern)
        # the streams read() reads: a live member's claimed ones (I41d), not all matching
        cursors = self._owned(g, pattern, assignment, self._cursors_for(pattern, assignment))
        self._check_stale(cursors, force=idle)
        seqs = [c.notify_seq() for c in cursors]
        states = [c.state.ptr for c in cursors]
        if self.ephemeral or not cursors or any(p is None for p in states):
            return None, seqs
        return states, seqs

    async def batches(self, pattern: str = "*", max_messages: int = 1000, *,
                      assignment: tuple[int, int] | None = None, zero_copy: bool | None = None,
                      wait_slice: float | None = None) -> AsyncIterator[Batch]:
        """``async for batch in consumer.batches(...)``: non-empty batches as they arrive,
        each from ``read_async`` (so no thread waits per iteration, and cancelling or
        closing behaves as there). ``wait_slice`` (seconds, default None: no limit) only
        bounds each ``read_async`` call. Ack with ``consumer.ack(batch)``."""
        while True:
            batch = await self.read_async(pattern, max_messages, wait_slice,
                                          zero_copy=zero_copy, assignment=assignment)
            if len(batch):
                yield batch

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Release mappings. Offsets stay in the file; the group stays until deleted.

        Any thread: a read() in flight elsewhere (a wait included, which this wakes)
        returns its batch or raises ClosedError; later calls raise ClosedError. Batches
        and zero-copy views already returned stay valid: they keep their mappings (L4)."""
        if self._closed:
            return
        self._closed = True
        if self._membership is not None:
            try:
                self._membership.leave()   # releases this member's streams to the others
            except CometError as e:   # its description is closed anyway: others see it dead
                log.warning("cometmp: consumer group %r: leaving the membership: %s", self.group, e)
        waiting.kick()   # an awaiting read_async / gevent read sees the close now (L4)
        for c in list(self._cursors.values()):
            c.close()
        self._cursors.clear()
        self._listed = None
        self._wait_cache = None
        self._store.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Consumer({self.root!r}, group={self.group!r})"


def _describe(batch: Batch) -> str:
    if not len(batch):
        return "empty"
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for i in range(len(batch)):
        s, e = batch.entry_at(i)
        lo[s] = min(lo.get(s, e), e)
        hi[s] = max(hi.get(s, e), e)
    return ", ".join(f"{s}[{lo[s]}..{hi[s]}]" for s in sorted(lo))


# ---- groups as a whole (module-level functions; Client has thin wrappers) ------------------

def consumer_groups(client) -> list[dict]:
    """Every consumer group of the data directory: name, created/active times, patterns,
    per stream its acknowledged offset, the stream's length and the lag, and its live
    members (cometmp.members: id, pid, the streams each holds, joined and last-seen times)."""
    client._check_open()
    store = OffsetStore(client.path, writable=False)
    try:
        groups = store.groups()
    finally:
        store.close()
    member_recs = members.group_members(client.path)
    out = []
    for g in groups:
        streams = {}
        names = set(g.slots)
        for p in g.patterns:
            names.update(client.streams(p))
        for name in sorted(names):
            slot = g.slots.get(name)
            try:
                length = client.length(name)
                first = client.first_entry(name)
            except (StreamNotFound, CometError):
                continue
            acked = slot.next if slot is not None and slot.next is not None else None
            streams[name] = {
                "acked": acked,
                "length": length,
                "lag": length - max(acked if acked is not None else first, first),
                "dropped": slot.dropped if slot is not None else 0,
                "acked_ns": slot.acked_ns if slot is not None else 0,
            }
        by_slot = {si.index: name for name, si in g.slots.items()}
        out.append({"name": g.name, "id": g.id, "created_ns": g.created_ns,
                    "active_ns": g.active_ns, "patterns": g.patterns, "streams": streams,
                    "members": [
                        {"id": r.member_id, "pid": r.pid, "live": r.live,
                         "streams": sorted(by_slot[x] for x in r.claims if x in by_slot),
                         "patterns": list(r.patterns), "joined_ns": r.joined_ns,
                         "seen_ns": r.seen_ns}
                        for r in member_recs.get(g.id, [])]})
    return out


def delete_consumer_group(client, group: str) -> bool:
    """Delete ``group`` and its offsets; True if it existed. Consumers of it still running
    claim it again at their next read or ack and go on from their in-process positions;
    new consumers of the name start from the oldest retained entries."""
    validate_group_name(group)
    client._check_writable()
    store = OffsetStore(client.path, writable=True)
    try:
        g = store.group(group, create=False)
        if g is None:
            return False
        store.delete_group(g)
        log.info("cometmp: deleted consumer group %r", group)
        return True
    finally:
        store.close()
