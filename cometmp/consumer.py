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

Delivery is at-least-once, acks are per message (docs/ARCHITECTURE.md §9.9): ``ack()``
takes ids in any order; a stream's committed offset is its contiguous acked prefix, and
what is acked beyond it is kept in the group's durable ack window (cometmp.window, I43),
so a consumer that dies is succeeded by one that redelivers exactly what was delivered
and not acked, each with ``deliveries`` >= 2 (I46). ``nack()`` and ``ack_wait`` deliver
entries again from inside ``read()``; ``max_deliveries`` sends an entry that keeps coming
back to the group's dead-letter stream (``dead_letter_stream``) and acks it. Entries the hard retention cap deleted before the group acked them are reported
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
from typing import Any, AsyncIterator, Callable, NamedTuple

from . import _reader, deadletter, members, paths, waiting, window
from ._ffi import check, core_path, ffi, lib
from .compression import decompress
from .cursor import Cursor
from .errors import (
    AckWindowFull,
    ClosedError,
    CometError,
    DeadLetterWarning,
    EntriesDropped,
    EntryNotFound,
    InvalidArgument,
    ReadOnlyError,
    StopProcessing,
    StreamNotFound,
    check_seconds,
    os_errors,
)
from .offsets import GroupRef, OffsetStore, validate_group_name
from .pending import Flight
from .shard import MessageID, StreamMessage
from .window import (
    CM_WIN_ENTRIES,
    CM_WIN_HEADER_BYTES,
    CM_WIN_OFF_DELIVERED,
    CM_WIN_RECORD_BYTES,
    WindowFile,
    WindowState,
)
# the longest single sleep (new matching streams are noticed at least this often) and
# futex_waitv's limit: one value each for the blocking wait here and cometmp.waiting's
from .waiting import DISCOVER_INTERVAL, WAITV_MAX

__all__ = ["Batch", "Consumer", "PendingEntry", "consumer_groups", "delete_consumer_group"]

log = logging.getLogger("cometmp")

_reader.configure(core_path(), StreamMessage, MessageID, decompress, CM_WIN_ENTRIES,
                  CM_WIN_HEADER_BYTES + CM_WIN_OFF_DELIVERED, CM_WIN_RECORD_BYTES)

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


class PendingEntry(NamedTuple):
    """One entry ``Consumer.pending()`` lists: delivered by this consumer, not acked."""

    id: MessageID
    deliveries: int          # deliveries so far (1: delivered once)
    idle: float              # seconds since its last delivery
    error: str | None        # the last error given for it (nack(error=), process()), if any


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

    ``max_deliveries=N``: an entry delivered N times without an ack (nacked, or not acked
    within ``ack_wait``, or held by a consumer that died) is appended to
    ``dead_letter_stream`` and acked instead of being delivered again (I48).
    ``ack_wait`` (seconds): an entry delivered that long ago and not acked is delivered
    again by a later ``read()`` (I47); None: only nack() and a holder's death redeliver.
    """

    def __init__(self, client, group: str, *, zero_copy: bool = False,
                 on_drop: Callable[[str, int, int], Any] | None = None,
                 poll_interval: float = 0.01, max_deliveries: int | None = None,
                 ack_wait: float | None = None):
        validate_group_name(group)
        client._check_open()
        if max_deliveries is not None and (not isinstance(max_deliveries, int)
                                           or isinstance(max_deliveries, bool) or max_deliveries < 1):
            raise InvalidArgument(f"max_deliveries must be None or an int >= 1, not {max_deliveries!r}")
        self.max_deliveries = max_deliveries
        self.ack_wait = check_seconds("ack_wait", ack_wait, positive=True)
        self._windows: WindowFile | None = None
        self._due: set[Cursor] = set()   # cursors with entries to deliver again (nack, ack_wait)
        self.client = client
        self.group = group
        self.zero_copy = bool(zero_copy)
        self.on_drop = on_drop
        self.poll_interval = check_seconds("poll_interval", poll_interval, positive=True, none=False)
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
        self._due.clear()
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
                    c.flight.loaded = False   # the new slot's window is made from this one
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
            if self._closed:
                # close() in another thread set _closed before it cleared the cursors:
                # either it closed this one or it is ours to close (idempotent); never a
                # mapping left open after close (L4)
                self._cursors.pop(name, None)
                c.close()
                self._check()
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
                # (a group claimed again after its deletion goes on from this process's
                # committed offset, c.acked; a fresh cursor's is 0)
                self._store.ack(g, slot, max(c.oldest(), c.acked))
                acked = self._store.next(slot)
            resets = self._store.resets(slot)
            if self.ephemeral and c.local_next is not None:
                acked = max(acked or 0, c.local_next)
        if c.pos is None or resets != c.resets:
            c.resets = resets
            c.seg = None
            c.pos = acked if acked is not None else c.oldest()
            c.flight = Flight()   # nothing delivered from the new position yet
            self._due.discard(c)
        elif acked is not None and acked > c.pos:
            c.pos, c.seg = acked, None
        c.acked = acked if acked is not None else c.pos
        if not c.flight.loaded:
            self._load_window(c, g)
        first = c.retained_from(c.pos)
        if c.pos < first:
            self._dropped(c, g, c.pos, first)

    # ---- the ack window (cometmp.window, cometmp.pending; docs/ARCHITECTURE.md §9.9) -----
    def _window_file(self) -> WindowFile:
        w = self._windows
        if w is None:
            w = self._windows = WindowFile(self.root, writable=not self.ephemeral)
        return w

    def _load_window(self, c: Cursor, g: GroupRef | None) -> None:
        """Take the stream's durable window into ``c.flight`` (a stream just claimed, a
        start, a reset): acks beyond the offset are not delivered again, the counts and
        ``delivered`` of a dead holder carry over (I46). A writable consumer then owns the
        record (an empty window for a new owner, ``delivered`` zeroed)."""
        f = c.flight
        if c.slot is None or g is None:
            f.loaded = True
            return
        win = self._window_file()
        st = win.load(c.slot, g.id, c.resets)
        if st is not None:
            prefix = max(c.acked, st.base)
            if st.base > c.acked and not self.ephemeral:
                self._store.ack(g, c.slot, st.base)   # I43: a crash between the two stores
            if self.ephemeral:
                c.local_next = max(c.local_next or 0, prefix)
            if c.pos < prefix:
                c.pos, c.seg = prefix, None
            c.acked = prefix
            f.acked = {e for e in st.acked if e >= prefix}
            f.counts = {e: n for e, n in st.counts.items() if e >= prefix}
            f.recover_hi = st.delivered
            f.marked = st.delivered
            f.dirty = bool(f.acked or f.counts)
        elif not self.ephemeral:
            f.acked = {e for e in f.acked if e >= c.acked}
            f.counts = {e: n for e, n in f.counts.items() if e >= c.acked}
            f.dirty = bool(f.acked or f.counts)
            win.store(c.slot, g.id, c.resets, WindowState(c.acked, f.acked, f.counts),
                      reset_delivered=True)
            f.marked = 0
        # only now: a load that raised (the windows file not created, a record not
        # allocated, its switch failed) is done again by the next read, never skipped
        f.loaded = True

    def _store_window(self, c: Cursor, g: GroupRef | None) -> None:
        """Make ``c.flight``'s acks beyond the offset and counts durable (I44), before
        the ack returns or the redelivered batch is handed out."""
        f = c.flight
        f.dirty = bool(f.acked or f.counts)
        if self.ephemeral or c.slot is None or g is None:
            return
        self._window_file().store(c.slot, g.id, c.resets, WindowState(c.acked, f.acked, f.counts))

    def _dropped(self, c: Cursor, g: GroupRef | None, start: int, end: int) -> None:
        log.error("cometmp: consumer group %r lost entries [%d, %d) of %s to the hard "
                  "retention cap before acknowledging them", self.group, start, end, c.name)
        self._pending.append(_Drop(c.name, start, end))
        c.pos, c.seg = end, None
        if c.slot is not None and g is not None and not self.ephemeral:
            self._store.ack(g, c.slot, end)
        c.acked = max(c.acked, end)
        c.flight.trim(end)

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
            raise InvalidArgument(f"max_messages must be a positive int, not {max_messages!r}")
        check_seconds("timeout", timeout)
        if assignment is not None:
            i, n = assignment if isinstance(assignment, (tuple, list)) and len(assignment) == 2 else (-1, 0)
            if not (isinstance(n, int) and n > 0 and isinstance(i, int) and 0 <= i < n):
                raise InvalidArgument(f"assignment must be (index, count) with 0 <= index < count, "
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
            batch = Batch(zc)
            budget = max_messages
            if self._due or self.ack_wait is not None:
                budget -= self._redeliver(cursors, g, batch, budget)
            self._fill(cursors, g, batch, budget)
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
            if self._due or self.ack_wait is not None:
                left = max(0.0005, min(left, self._next_due(cursors) - now))
            self._check_closed()
            # a consumer waiting for data is active, not idle (R4): touched before each wait
            # slice, not after it, so a wake-up goes to its batch without this step (the
            # return below touches again)
            self._touch(g)
            woke = self._wait(cursors, seqs, left, (g, zc, max_messages))
            if isinstance(woke, Batch):
                # the woken read's batch (_woken_plan), filled while this consumer was
                # open (wait_woken checks): delivered, so handed over even if a close()
                # came since, as a batch the full iteration had filled would be
                self._rr += 1      # _fill's round robin
                self._touch(g)
                return woke
            if not woke:
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
                      unacked=self._unacked_of,
                      claimed=self._claimed)
        cache = self._owned_cache
        if cache is not None and cache[0] is cursors and cache[1] == m.version:
            return cache[2]
        out = [c for c in cursors if m.reading(c.name)]
        self._owned_cache = (cursors, m.version, out)
        return out

    def _unacked(self, c: Cursor) -> bool:
        """Whether this consumer delivered entries of ``c``'s stream that its group has not
        acknowledged, nacked ones included: then the stream is not released to another
        member (I41d). In terms of the window (I43): everything below ``pos`` is in the
        acked set exactly when the committed offset reached ``pos`` (an ack that
        completes the prefix advances it), so the test stays the offset's."""
        if c.pos is None or c.slot is None:
            return False
        acked = self._store.next(c.slot)
        return acked is None or c.pos > acked or bool(c.flight.due)

    def _claimed(self, name: str) -> None:
        """A stream this member just claimed restarts from the group's acked offset, so
        what a dead or departed holder had not acked is redelivered (I41d)."""
        c = self._cursors.get(name)
        if c is not None:
            c.pos, c.seg = None, None
            c.flight = Flight()   # its window is read again: what the last holder left
            self._due.discard(c)

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

    def _fill(self, cursors: list[Cursor], g: GroupRef | None, batch: Batch, budget: int) -> None:
        """New entries into ``batch``: round robin over ``cursors``, each stream only
        below its committed offset + CM_WIN_ENTRIES (I45)."""
        n = len(cursors)
        start = self._rr
        self._rr += 1
        now = time.monotonic()
        again = len(batch) > 0   # redelivered entries went in first: their streams have an index
        for k in range(n):
            if budget <= 0:
                break
            c = cursors[(start + k) % n]
            committed = c.committed()
            limit = min(committed, c.acked + CM_WIN_ENTRIES)   # I45
            if c.pos >= limit:
                continue
            sidx = self._sidx(batch, c) if again else batch.add_stream(c.name, c.shard)
            f = c.flight
            p0 = c.pos
            try:
                if f.dirty or p0 < f.recover_hi:
                    got = self._fill_window(c, g, batch, sidx, budget, limit, now)
                else:
                    got = c.read_into(batch, sidx, budget, limit)
                    if got:
                        f.runs.append((p0, c.pos, now))
            except (EntryNotFound, FileNotFoundError):
                # the segment under pos was deleted: below the oldest retained entry now
                c.seg = None
                c.reader._refresh_bases()
                first = c.oldest()
                if c.pos < first:
                    self._dropped(c, g, c.pos, first)
                continue
            budget -= got
            if c.pos > f.marked and c.slot is not None and not self.ephemeral:
                f.marked = c.pos   # I46: the window's ``delivered`` follows this reader
                self._window_file().mark_delivered(c.slot, c.pos)

    @staticmethod
    def _sidx(batch: Batch, c: Cursor) -> int:
        """The stream's index in ``batch`` (one per stream: ack_ranges is per name)."""
        try:
            return batch.streams.index(c.name)
        except ValueError:
            return batch.add_stream(c.name, c.shard)

    def _fill_window(self, c: Cursor, g: GroupRef | None, batch: Batch, sidx: int, budget: int,
                     limit: int, now: float) -> int:
        """The window's path of _fill: skip entries acked beyond the offset (I43), and give
        entries a dead holder delivered their next delivery number, remembered before the
        batch is returned (I46), or the dead-letter stream (I48)."""
        f = c.flight
        total = 0
        counted = False
        give: list[tuple[int, int]] = []
        while budget > 0 and c.pos < limit:
            e = c.pos
            if e in f.acked:
                c.pos, c.seg = e + 1, None
                continue
            if e < f.recover_hi:
                d = f.deliveries(e) + 1
                if self.max_deliveries is not None and d > self.max_deliveries:
                    give.append((e, d - 1))
                    c.pos, c.seg = e + 1, None
                    continue
                i = len(batch)
                if c.read_into(batch, sidx, 1, e + 1):
                    batch.set_deliveries(i, d)
                    f.counts[e] = d
                    counted = True
                    f.runs.append((e, e + 1, now))
                    total += 1
                    budget -= 1
                elif c.pos == e:
                    break
                continue
            stop = limit
            for a in f.acked:
                if e < a < stop:
                    stop = a
            got = c.read_into(batch, sidx, budget, stop)
            if got:
                f.runs.append((e, c.pos, now))
            elif c.pos == e:
                break
            total += got
            budget -= got
        if counted:
            self._store_window(c, g)
        if give:
            self._give_up(c, g, [(e, n, f.errors.get(e) or f"delivered {n} times without an "
                                  "ack (its reader stopped or died)") for e, n in give])
        return total

    def _redeliver(self, cursors: list[Cursor], g: GroupRef | None, batch: Batch, budget: int) -> int:
        """Entries due again (nack, I47's ack_wait) into ``batch``, each with its next
        delivery number made durable first (I46), or to the dead-letter stream once
        ``max_deliveries`` were made (I48). Returns how many were added."""
        now = time.monotonic()
        total = 0
        for c in cursors:
            f = c.flight
            if self.ack_wait is not None and f.runs and f.runs[0][2] + self.ack_wait <= now:
                f.expire(c.acked, now, self.ack_wait)
            if not f.due:
                self._due.discard(c)
                continue
            self._due.add(c)
            ready = sorted(e for e, t in f.due.items() if t <= now)
            if not ready or budget <= 0:
                continue
            give: list[tuple[int, int, str]] = []
            got = []
            for e in ready:
                if budget <= 0:
                    break
                del f.due[e]
                if e < c.acked or e in f.acked:
                    continue
                d = max(1, f.deliveries(e)) + 1
                if self.max_deliveries is not None and d > self.max_deliveries:
                    give.append((e, d - 1, f.errors.get(e) or f"delivered {d - 1} times without an ack"))
                    continue
                got.append((e, d))
                budget -= 1
            if got:
                for e, d in got:
                    f.counts[e] = d
                self._store_window(c, g)   # I46: the count is durable before the delivery
                sidx = self._sidx(batch, c)
                for e, d in got:
                    i = len(batch)
                    if self._read_at(c, batch, sidx, e):
                        batch.set_deliveries(i, d)
                        f.last[e] = now
                        f.runs.append((e, e + 1, now))
                        total += 1
            if give:
                self._give_up(c, g, give)
            if not f.due:
                self._due.discard(c)
        return total

    def _next_due(self, cursors: list[Cursor]) -> float:
        """The monotonic time the next nacked or ack_wait entry falls due (inf: none)."""
        t = float("inf")
        for c in cursors:
            f = c.flight
            if f.due:
                t = min(t, min(f.due.values()))
            if self.ack_wait is not None and f.runs:
                t = min(t, f.runs[0][2] + self.ack_wait)
        return t

    @staticmethod
    def _read_at(c: Cursor, batch: Batch, sidx: int, e: int) -> int:
        """Entry ``e`` of ``c``'s stream into ``batch`` (a redelivery), leaving the cursor
        where it was. Returns 1, or 0 when the entry is gone (damaged)."""
        saved = (c.pos, c.seg, c.base, c.off, c.seq)
        try:
            c.pos, c.seg = e, None
            return c.read_into(batch, sidx, 1, e + 1) if c.pos == e else 0
        finally:
            c.pos, c.seg, c.base, c.off, c.seq = saved

    def _give_up(self, c: Cursor, g: GroupRef | None, entries: list[tuple[int, int, str]],
                 exc: BaseException | None = None, custom: Callable | None = None,
                 batch=None) -> None:
        """I48, the one rule (read(), nack() and process() all come here): entries of
        ``c``'s stream delivered ``n`` times without an ack go to the group's dead-letter
        stream (original id, payload, last error, deliveries), or to ``custom(batch,
        exc)`` for process(); then they are acked. Raises (nothing acked) when the dead
        letter cannot be written."""
        scratch = Batch(False)
        sidx = scratch.add_stream(c.name, c.shard)
        for e, _n, _err in entries:
            self._read_at(c, scratch, sidx, e)
        msgs = list(scratch)
        if custom is not None:
            custom(batch if batch is not None else msgs, exc)
        else:
            by_entry = {m.id.entry: m for m in msgs}
            todo = [(by_entry[e], n, err) for e, n, err in entries if e in by_entry]
            self._dead_letter(todo, exc)
        self.ack(*[MessageID(c.name, c.shard, e) for e, _n, _err in entries])

    def _woken_plan(self, g: GroupRef | None, zc: bool) -> tuple | None:
        """What the woken read (cometmp._reader.wait_woken) needs besides the cursors: a
        batch, the offsets and windows mappings, and when it must leave a wake-up to the
        full iteration (a membership refresh or a state-page check due); None when any
        wake-up must: entries to deliver again or to drop, a readonly consumer."""
        if self._pending or self._due or self.ack_wait is not None or self.ephemeral or g is None:
            return None
        ofs, win = self._store._buf, self._windows
        wmm = win._mm if win is not None else None
        if ofs is None or wmm is None:
            return None
        until = self._stale_checked + STALE_RECHECK
        m = self._membership
        if m is not None:
            until = min(until, m.next_refresh)
        return Batch(zc), ofs, wmm, until

    def _wait(self, cursors: list[Cursor], seqs: list[int], timeout: float,
              fill: tuple | None = None) -> bool | Batch:
        """Sleep until a stream publishes past ``seqs`` or ``timeout``; True if woken.
        With ``fill`` = (group, zero_copy, budget), a wake-up that brought nothing but new
        entries returns their Batch instead, filled in the same C call as the wait
        (cometmp._reader.wait_woken; PERFORMANCE.md "Wake-ups beside the futex floor"):
        it is what read()'s next iteration would return, and the caller returns it."""
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
        if self._closed:
            raise ClosedError(f"consumer {self.group!r} is closed")
        if fill is not None and len(cursors) <= WAITV_MAX:
            plan = self._woken_plan(fill[0], fill[1])
            if plan is not None:
                batch, ofs, wmm, until = plan
                r = _reader.wait_woken(batch, cursors, seqs, int(timeout * 1e9), self._rr,
                                       fill[2], ofs, wmm, until, (self, self.client))
                if r is None:
                    return False
                return batch if check(r) > 0 else True
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
        """Acknowledge exactly the entries given, in any order: MessageIDs, StreamMessages
        or whole Batches; ids may span several streams. No ids: no-op. Each stream's
        committed offset becomes its contiguous acked prefix; entries acked beyond it are
        kept in the group's ack window (I43) and never delivered again. All or nothing
        (E5): an id past the stream's end (EntryNotFound) or CM_WIN_ENTRIES or more past
        the offset (AckWindowFull) acks nothing."""
        self._check()     # ClosedError once closed, also for no ids (L4)
        if not ids:
            return
        if len(ids) == 1 and type(ids[0]) is Batch and not self.ephemeral and self._ack_batch(ids[0]):
            return
        runs: dict[str, tuple[int, int]] = {}    # stream -> one contiguous [lo, hi)
        sets: dict[str, set[int]] = {}           # stream -> entries (anything else)
        for x in ids:
            if isinstance(x, Batch):
                for s, (lo, hi, n) in x.ack_ranges().items():
                    if n == hi - lo and s not in runs and s not in sets:
                        runs[s] = (lo, hi)
                        continue
                    got = sets.setdefault(s, set())
                    if s in runs:
                        got.update(range(*runs.pop(s)))
                    if n == hi - lo:
                        got.update(range(lo, hi))
                    else:
                        for i in range(len(x)):
                            st, e = x.entry_at(i)
                            if st == s:
                                got.add(e)
                continue
            if isinstance(x, StreamMessage):
                x = x.id
            try:
                stream, entry = x.stream, x.entry
            except AttributeError:
                raise InvalidArgument(f"ack() takes MessageIDs, StreamMessages or Batches, not "
                                f"{type(x).__name__}") from None
            if not isinstance(entry, int) or isinstance(entry, bool) or entry < 0:
                raise EntryNotFound(f"ack of entry {entry!r} of stream {stream!r}: entry "
                                    "numbers are ints from 0; nothing was acknowledged")
            got = sets.setdefault(stream, set())
            if stream in runs:
                got.update(range(*runs.pop(stream)))
            got.add(entry)
        g = self._ensure_group(None)
        plan = []
        for stream in list(runs) + list(sets):   # E5: every stream checked before any ack
            r = runs.get(stream)
            hi = r[1] if r is not None else max(sets[stream]) + 1
            c = self._cursor(stream)
            length = c.committed()
            if hi > length:
                raise EntryNotFound(
                    f"ack of entry {hi - 1} of stream {stream!r}, which has {length} entries "
                    f"(0..{length - 1}): an ack beyond the end would skip entries not yet "
                    "appended; nothing was acknowledged")
            prefix = self._prefix(c, g)
            if r is not None and r[0] <= prefix and not c.flight.dirty:
                plan.append((c, prefix, r, None))   # I43's fast path: the cumulative ack
                continue
            entries = sets[stream] if r is None else set(range(*r))
            if hi > prefix + CM_WIN_ENTRIES:
                far = min(e for e in entries if e >= prefix + CM_WIN_ENTRIES)
                raise AckWindowFull(
                    f"ack of entry {far} of stream {stream!r}: the group's committed offset "
                    f"there is {prefix}, and acks out of order reach at most "
                    f"{CM_WIN_ENTRIES} entries past it (the ack window, I45); ack or nack "
                    f"entry {prefix} first. Nothing was acknowledged",
                    stream=stream, entry=far, committed=prefix)
            plan.append((c, prefix, None, entries))
        for c, prefix, r, entries in plan:
            f = c.flight
            if entries is None:
                hi = r[1]
                if hi > prefix:
                    self._commit(c, g, hi)
                runs_ = f.runs
                while runs_ and runs_[0][1] <= hi:
                    runs_.popleft()
                if f.due or f.errors or f.last:
                    f.trim(hi)
                continue
            f.acked.update(e for e in entries if e >= prefix)
            p = prefix
            while p in f.acked:
                f.acked.discard(p)
                p += 1
            c.acked = p
            f.trim(p)
            self._store_window(c, g)     # I43: the window first, then the offset
            if p > prefix:
                self._commit(c, g, p)
        self._touch(g)

    def _ack_batch(self, batch: Batch) -> bool:
        """I43's fast path, the way process() and most callers ack: one batch whose
        entries of each stream are one run starting at or below the committed offset,
        with nothing in the stream's window: the plain cumulative ack of main, the window
        untouched. False (nothing done) when any stream of it needs the window. (A
        batch's entries were all below ``committed`` when read: E5's check holds.)"""
        g = self._ensure_group(None)
        todo = []
        for s, (lo, hi, n) in batch.ack_ranges().items():
            c = self._cursors.get(s)
            if c is None or n != hi - lo or lo > c.acked or c.slot is None or c.flight.dirty:
                return False
            todo.append((c, hi))
        for c, hi in todo:
            if hi > c.acked:
                self._store.ack(g, c.slot, hi)
                c.acked = hi
            f = c.flight
            runs = f.runs
            while runs and runs[0][1] <= hi:
                runs.popleft()
            if f.due or f.errors or f.last:
                f.trim(hi)
        self._touch(g)
        return True

    def _prefix(self, c: Cursor, g: GroupRef | None) -> int:
        """The group's committed offset of ``c``'s stream (the contiguous acked prefix)."""
        if self.ephemeral:
            p = c.local_next
        else:
            if c.pos is None and not c.flight.loaded and c.slot is None:
                self._sync(c, g)   # first touch of the stream: its window, its start
            slot = self._slot(c, g)
            p = self._store.next(slot) if slot is not None else None
        p = max(p if p is not None else c.oldest(), c.acked)
        c.acked = p
        return p

    def _commit(self, c: Cursor, g: GroupRef | None, nxt: int) -> None:
        c.acked = max(c.acked, nxt)
        if self.ephemeral:
            c.local_next = max(c.local_next or 0, nxt)
            return
        self._store.ack(g, self._slot(c, g), nxt)

    def nack(self, *ids, delay: float = 0.0, error: BaseException | str | None = None) -> None:
        """Deliver these entries again, from a ``read()`` at least ``delay`` seconds from
        now (MessageIDs, StreamMessages or Batches this consumer delivered). ``error`` is
        kept as the entry's last error (the dead-letter envelope's). An entry already
        delivered ``max_deliveries`` times goes to the dead-letter stream now and is
        acked (I48). Acked entries are ignored. The delay is this process's: an entry
        whose consumer dies is delivered again by the next holder without waiting."""
        self._check()
        delay = check_seconds("delay", delay, none=False)
        if not ids:
            return
        text = None if error is None else (
            error if isinstance(error, str) else f"{type(error).__name__}: {error}")
        due = time.monotonic() + float(delay)
        by_stream: dict[str, set[int]] = {}
        for x in ids:
            if isinstance(x, Batch):
                for i in range(len(x)):
                    s, e = x.entry_at(i)
                    by_stream.setdefault(s, set()).add(e)
                continue
            if isinstance(x, StreamMessage):
                x = x.id
            try:
                by_stream.setdefault(x.stream, set()).add(x.entry)
            except AttributeError:
                raise InvalidArgument(f"nack() takes MessageIDs, StreamMessages or Batches, not "
                                f"{type(x).__name__}") from None
        cursors = {}
        for stream, entries in by_stream.items():   # checked before anything changes
            c = self._cursors.get(stream)
            if c is None or c.pos is None or max(entries) >= c.pos:
                self._check()   # a close() in another thread cleared the cursors: ClosedError
                raise EntryNotFound(f"nack of entry {max(entries)} of stream {stream!r}, which "
                                    "this consumer has not delivered; nothing was nacked")
            cursors[stream] = c
        g = self._ensure_group(None)
        for stream, entries in by_stream.items():
            c = cursors[stream]
            f = c.flight
            give = []
            for e in sorted(entries):
                if e < c.acked or e in f.acked:
                    continue
                if text is not None:
                    f.errors[e] = text
                n = max(1, f.deliveries(e))
                if self.max_deliveries is not None and n >= self.max_deliveries:
                    give.append((e, n, f.errors.get(e) or f"nacked after {n} deliveries"))
                    f.due.pop(e, None)
                    continue
                f.due[e] = due
            if f.due:
                self._due.add(c)
            if give:
                self._give_up(c, g, give)

    def pending(self, pattern: str = "*") -> list[PendingEntry]:
        """The entries of streams matching ``pattern`` this consumer delivered and its
        group has not acked (nacked ones included), oldest delivery first: id, deliveries
        so far, seconds since the last delivery, last error. This process's deliveries
        only; a dead member's entries are listed once their new holder delivers them."""
        self._check()
        now = time.monotonic()
        out = []
        for name in self._match(pattern):
            c = self._cursors.get(name)
            if c is None or c.pos is None:
                continue
            f = c.flight
            for e, t in f.unacked(c.acked):
                out.append((t, PendingEntry(MessageID(c.name, c.shard, e),
                                            max(1, f.deliveries(e)), max(0.0, now - t),
                                            f.errors.get(e))))
        out.sort(key=lambda x: (x[0], x[1].id.stream, x[1].id.entry))
        return [p for _t, p in out]

    @property
    def dead_letter_stream(self) -> str:
        """Where this group's given-up entries go (cometmp.deadletter.stream_for)."""
        return deadletter.stream_for(self.group)

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
            st = None
            if slot is not None and g is not None and (self.ephemeral or c.flight.loaded or
                                                       os.path.exists(window.windows_path(self.root))):
                st = self._window_file().load(slot, g.id, self._store.resets(slot))
            if acked is None:
                acked = c.oldest()
            out[name] = window.unacked(c.committed(), c.retained_from(acked), st)
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
            raise InvalidArgument("reset_offset takes exactly one of entry or timestamp_ns")
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
            c.acked = target
            c.flight = Flight()   # a reset empties the window (its copy's resets differ)
            self._due.discard(c)
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
        processed (dead-lettered entries are not counted).

        A batch is acked after the handler returns. On an exception ``on_error(exc, batch,
        attempt)`` is called (``attempt``: the batch's highest ``deliveries``) and the
        batch is retried through the consumer's own mechanism: it is nacked with a delay
        of ``backoff`` doubling per delivery up to ``max_backoff`` and comes back from a
        later read with ``deliveries`` one higher (so a retry survives this process's
        death, I46). An entry that failed on its ``max_retries + 1``-th delivery is given
        up on by the one rule of I48: ``dead_letter(batch, exc)`` when given (the batch,
        or the list of the entries given up on when only some were), else the group's
        dead-letter stream (``dead_letter_stream``: original stream, entry id, timestamp,
        error and deliveries in a JSON envelope, then the original bytes) with a
        DeadLetterWarning; then it is acked. If the dead letter cannot be written (a
        readonly client, a full disk) that error is raised and nothing is acked.
        StopProcessing stops without acking the current batch. ``on_batch(batch)`` runs
        after each ack. Streams created while it runs are picked up within
        ``poll_interval`` (or sooner when their writers publish).
        """
        wait = check_seconds("poll_interval", poll_interval, none=False)
        check_seconds("backoff", backoff, none=False)
        check_seconds("max_backoff", max_backoff, none=False)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise InvalidArgument(f"max_retries must be an int >= 0, not {max_retries!r}")
        done = 0
        limit = max_retries + 1
        while stop is None or not stop.is_set():
            batch = self.read(stream, batch_size, timeout=wait, assignment=assignment)
            if not len(batch):
                continue
            try:
                handler(batch)
            except StopProcessing:
                return done
            except Exception as exc:  # noqa: BLE001 - the handler's failure is data here
                msgs = list(batch)
                attempt = max(m.deliveries for m in msgs)
                if on_error is not None:
                    on_error(exc, batch, attempt)
                give = [m for m in msgs if m.deliveries >= limit]
                again = [m for m in msgs if m.deliveries < limit]
                if give:
                    by_stream: dict[str, list] = {}
                    for m in give:
                        by_stream.setdefault(m.id.stream, []).append(m)
                    g = self._ensure_group(None)
                    for name, ms in by_stream.items():
                        self._give_up(self._cursor(name), g,
                                      [(m.id.entry, m.deliveries, f"{type(exc).__name__}: {exc}")
                                       for m in ms], exc,
                                      custom=dead_letter, batch=batch if not again else give)
                if again:
                    self.nack(*again, error=exc,
                              delay=min(max_backoff, backoff * (2 ** (attempt - 1))))
                if give and on_batch is not None:
                    on_batch(batch)
                continue
            self.ack(batch)
            done += len(batch)
            if on_batch is not None:
                on_batch(batch)
        return done

    def _dead_letter(self, todo: list[tuple[StreamMessage, int, str]],
                     exc: BaseException | None) -> None:
        """The default dead letter (I48): append each (message, deliveries, error) to the
        group's dead-letter stream, then warn. Raises (nothing acked) if it cannot be
        written."""
        target = self.dead_letter_stream
        if not todo:
            return
        what = _describe([m for m, _n, _e in todo])
        err = todo[-1][2]
        attempts = max(n for _m, n, _e in todo)
        if self.client.readonly:
            raise ReadOnlyError(
                f"consumer group {self.group!r} gave up on {what} after {attempts} "
                f"deliveries ({err}), and a readonly client cannot write it to the "
                f"dead-letter stream {target!r}; nothing is acknowledged (pass "
                "dead_letter= to process() to handle it yourself)")
        payloads = [deadletter.encode(self.group, m.id.stream, m.id.entry, m.timestamp_ns,
                                      m.data, e, n) for m, n, e in todo]
        ids = self.client.append(target, payloads)
        warnings.warn(DeadLetterWarning(
            f"cometmp: consumer group {self.group!r} gave up on {len(todo)} entries "
            f"({what}) after {attempts} deliveries ({err}); "
            f"they are in the dead-letter stream {target!r} as entries "
            f"[{ids[0].entry}, {ids[-1].entry}] (read them with cometmp.deadletter.decode)"),
            stacklevel=4)

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
    def _unacked_of(self, name: str) -> bool:
        c = self._cursors.get(name)    # one lookup: a close() elsewhere may clear the dict
        return c is not None and self._unacked(c)

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
        if self._windows is not None:
            self._windows.close()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Consumer({self.root!r}, group={self.group!r})"


def _describe(batch) -> str:
    if not len(batch):
        return "empty"
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for m in batch:
        s, e = m.id.stream, m.id.entry
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
    windows = WindowFile(client.path, writable=False) if groups else None
    try:
        return [_group_summary(client, g, windows, member_recs.get(g.id, [])) for g in groups]
    finally:
        if windows is not None:
            windows.close()


def _group_summary(client, g, windows: WindowFile | None, member_recs: list) -> dict:
    """consumer_groups' entry for one group (the lag rule: cometmp.window.unacked)."""
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
        st = windows.load(slot.index, g.id, slot.resets) \
            if slot is not None and windows is not None else None
        streams[name] = {
            "acked": acked,
            "length": length,
            "lag": window.unacked(length, max(acked if acked is not None else first, first), st),
            "dropped": slot.dropped if slot is not None else 0,
            "acked_ns": slot.acked_ns if slot is not None else 0,
        }
    by_slot = {si.index: name for name, si in g.slots.items()}
    return {"name": g.name, "id": g.id, "created_ns": g.created_ns,
            "active_ns": g.active_ns, "patterns": g.patterns, "streams": streams,
            "members": [
                {"id": r.member_id, "pid": r.pid, "live": r.live,
                 "streams": sorted(by_slot[x] for x in r.claims if x in by_slot),
                 "patterns": list(r.patterns), "joined_ns": r.joined_ns,
                 "seen_ns": r.seen_ns}
                for r in member_recs]}


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
