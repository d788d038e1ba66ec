"""Retention: delete whole sealed segments by age and size, never unread data under the
soft limits; a hard cap that may, and then says exactly what it dropped.

Runs in the process that owns the streams (a standalone Client owns all of them; a
prefork worker owns what cometmp.ownership says it owns), in a background thread
every ``config.retention.check_interval`` seconds, and on demand via
``Client.run_retention()``. Never inside an append. Several standalone writing
processes on one directory therefore each retain every stream, and a run on a stream
that another process writes takes that stream's lock through a writer handle of its
own: that process's appends wait for it (7 ms caught once, docs/PERFORMANCE.md "The
prefault thread yields between steps"). Give each process its own streams through a
registry, or configure retention in one of them.

Rules (docs/ARCHITECTURE.md §9.4):

* R1 Only sealed segments are deleted, oldest first within a stream; the active one never.
* R2 Soft limits (``max_age``, ``max_shard_bytes``, ``max_total_bytes``) delete a segment
  ``[base, end)`` only when every consumer group protecting the stream has acked ``end``:
  a group protects the streams it has a slot on and those matching a pattern it read;
  a group with no ack on a stream protects all of it.
* R3 The hard limits (``hard_max_total_bytes``; ``hard_min_free_ratio`` of the
  filesystem) delete oldest-first regardless of groups, and for each group that had not
  acked ``end`` record the dropped range ``[max(acked, base), end)``: logged at ERROR,
  added to the group's ``dropped`` counter in the offsets file and returned in the
  report; consumers of the group see EntriesDropped (or ``on_drop``). A member makes the
  group's start on a stream durable (acks the oldest entry) the first time it sees it, so
  a drop between joining and the first read is reported too.
* R4 Idle groups (no read or ack for ``group_idle_expiry`` seconds) are deleted first.
* R5 Deletion protocol: with the offsets file locked (no claim or reset can interleave,
  I14), raise the stream's ``first_entry`` hint past the segment
  (cm_shard_set_first_entry, I15), then rename ``<base>.seg`` to a temp name (the
  deletion's commit point: the segment leaves the set of names) and unlink its index;
  once the lock is released, unlink the temp files of the run, yielding the CPU between
  two (each unlink frees a segment's page cache in one call, milliseconds of CPU: no
  claim waits for it, nor an appender on this CPU for more than one). A reader that has
  the segment mapped keeps reading it (unlinking keeps mappings valid); a crash between
  steps leaves either the segment, which the next run judges again by these rules like
  any other, or a ``.tmp`` (removed by the next writer open, I7). Entry numbers never
  change.
* R6 Decisions read only the segment files and the offsets file, never the state page
  (I27): a segment is sealed when a newer segment file exists (I1), the oldest retained
  entry is the oldest file's base. Every segment retention removes is in the report.

Sizes are allocated bytes (st_blocks), so sparse preallocation is counted as what it
costs on disk; each stream's state page and indexes are counted too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

from . import failpoint, ownership, paths
from ._ffi import check, lib
from .errors import CometError, os_errors
from .format import CM_CTR_RETENTION_BYTES, CM_CTR_RETENTION_SEGMENTS
from .offsets import GroupInfo, GroupRef, OffsetStore
from .segment import Segment

__all__ = ["DroppedRange", "RetentionReport", "run_retention", "start_background"]

log = logging.getLogger("cometmp")


@dataclass(frozen=True)
class DeletedSegment:
    stream: str
    base: int
    end: int            # first entry of the next segment
    bytes: int
    reason: str         # "max_age" | "max_shard_bytes" | "max_total_bytes" | "hard_cap"


@dataclass(frozen=True)
class DroppedRange:
    """Entries ``[first, end)`` of ``stream`` deleted before ``group`` acked them."""

    stream: str
    group: str
    first: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.first


@dataclass
class RetentionReport:
    deleted: list[DeletedSegment] = field(default_factory=list)
    dropped: list[DroppedRange] = field(default_factory=list)
    expired_groups: list[str] = field(default_factory=list)
    blocked: dict[str, int] = field(default_factory=dict)   # stream -> bytes kept for groups

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.deleted)


@dataclass
class _Seg:
    stream: str
    base: int
    end: int
    bytes: int
    newest_ts: int | None      # upper bound of its records' timestamps (next segment's first)


def _alloc(path: str) -> int:
    with os_errors(path, "stat"):
        try:
            return os.stat(path).st_blocks * 512
        except FileNotFoundError:
            return 0


def _dir_alloc(directory: str) -> int:
    total = 0
    with os_errors(directory, "measure"):
        try:
            with os.scandir(directory) as it:
                for e in it:
                    try:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
    return total


def _first_ts(directory: str, base: int) -> int | None:
    try:
        seg = Segment.open(os.path.join(directory, paths.segment_name(base)), base)
    except OSError:
        return None
    try:
        return seg.first_ts()
    finally:
        seg.close()


class _Stream:
    def __init__(self, client, name: str):
        self.name = name
        self.dir = paths.stream_dir(client.path, name)
        with client._lock:
            self.writer = client._writer(name)
        # R6/I27: the files decide, never the state page's first_entry or active_base:
        # every segment with a newer one after it is sealed (I1), the newest is active
        bases = paths.list_segment_bases(self.dir)
        self.total = _dir_alloc(self.dir)
        self.sealed: list[_Seg] = []
        for b, nb in zip(bases, bases[1:]):
            size = _alloc(os.path.join(self.dir, paths.segment_name(b))) + \
                _alloc(os.path.join(self.dir, paths.index_name(b)))
            self.sealed.append(_Seg(name, b, nb, size, None))
        self._ts_loaded = False

    def load_ts(self) -> None:
        if self._ts_loaded:
            return
        for s in self.sealed:
            s.newest_ts = _first_ts(self.dir, s.end)
        self._ts_loaded = True

    def protected_below(self, groups: list[GroupInfo]) -> int | None:
        """Smallest offset any group still needs (R2); None when no group protects it."""
        need = None
        for g in groups:
            slot = g.slots.get(self.name)
            if slot is None and not g.protects(self.name):
                continue
            n = slot.next if slot is not None and slot.next is not None else 0
            need = n if need is None else min(need, n)
        return need


def _delete(client, st: _Stream, seg: _Seg, reason: str, report: RetentionReport,
            temps: list[tuple[str, str]]) -> None:
    """R5. Caller holds the offsets file's lock; the temp file is added to `temps`, for
    _unlink_temps once the lock is released."""
    with client._lock:
        w = client._writer(st.name)    # st.writer may have been closed to bound fds since
    check(lib.cm_shard_set_first_entry(w.handle, seg.end), st.dir)   # I15: the hint, before any unlink
    _unlink_segment(st.dir, seg.base, temps)
    lib.cm_shard_add_counter(w.handle, CM_CTR_RETENTION_SEGMENTS, 1)
    lib.cm_shard_add_counter(w.handle, CM_CTR_RETENTION_BYTES, seg.bytes)
    st.total -= seg.bytes
    report.deleted.append(DeletedSegment(st.name, seg.base, seg.end, seg.bytes, reason))
    log.info("cometmp: retention (%s) deleted %s entries [%d, %d), %d bytes", reason, st.name,
             seg.base, seg.end, seg.bytes)


def _unlink_segment(directory: str, base: int, temps: list[tuple[str, str]]) -> None:
    """Delete by rename then unlink (CONVENTIONS 8): the segment first leaves the set of
    segment names, so no process lists it again; mappings of it stay valid. The temp
    file's unlink is left to _unlink_temps (added to `temps`). Relative to the stream
    directory's fd, which is not reached through a link (I30). An OS error is a cometmp
    one (DiskFull / StorageError naming the path, E1); a step that failed is finished by
    the next run (a ``.seg.tmp`` is removed at writer open, I7; an index left without its
    segment is inert)."""
    seg = paths.segment_name(base)
    tmp = seg + paths.TMP_SUFFIX
    idx = paths.index_name(base)
    with os_errors(os.path.join(directory, seg), "retention: delete segment"):
        dfd = paths.open_dir_nofollow(directory, paths.IN_SUBDIR)
        try:
            try:
                failpoint.fail("retention.rename", os.path.join(directory, seg))
                os.rename(seg, tmp, src_dir_fd=dfd, dst_dir_fd=dfd)
                temps.append((directory, tmp))   # renamed: unlinked even if a step below fails
            except FileNotFoundError:
                pass
            try:
                failpoint.fail("retention.unlink_index", os.path.join(directory, idx))
                os.unlink(idx, dir_fd=dfd)
            except FileNotFoundError:
                pass
        finally:
            os.close(dfd)


def _unlink_temps(temps: list[tuple[str, str]]) -> None:
    """R5's last step, with no lock held: unlink each renamed segment. The unlink frees
    the file's page cache in one call (1.5-2.3 ms of CPU per 8 MiB here,
    benchmarks/release_costs.py), so the CPU is yielded between two: an appender woken on
    this CPU waits for one, not for the scheduler's tick (docs/PERFORMANCE.md "The
    prefault thread yields between steps"). Every one is tried; the first error is
    raised after the rest (a temp file left is removed by the next writer open, I7; one
    already gone was removed by such an open)."""
    first = None
    for i, (directory, tmp) in enumerate(temps):
        if i:
            os.sched_yield()
        path = os.path.join(directory, tmp)
        try:
            with os_errors(path, "retention: delete segment"):
                dfd = paths.open_dir_nofollow(directory, paths.IN_SUBDIR)
                try:
                    failpoint.fail("retention.unlink_segment", path)
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(dfd)
        except CometError as e:
            first = first or e
    if first is not None:
        raise first


def _owned_streams(client) -> list[str]:
    """The streams whose retention this process runs: ``client._retention_streams()`` when
    set; in a registered worker the family shards it owns (plus streams outside families
    in worker 0); standalone, all of them. Running retention of a stream in two processes
    is safe (decisions are serialised by the offsets lock, deletions are idempotent), only
    wasted work."""
    hook = getattr(client, "_retention_streams", None)
    if callable(hook):
        return list(hook())
    names = client.streams("*")
    try:
        p = ownership.placement(ownership.directory_key(client.path))
    except Exception as e:  # noqa: BLE001 - ownership is an optimisation; fall back to all
        log.debug("cometmp: retention cannot read shard ownership (%s); covering all streams", e)
        return names
    if p is None:
        return names                                # standalone: every stream
    idx = p.index
    if idx is None:
        return []                                   # a waiting worker owns nothing
    owned: dict[str, set[int]] = {}
    out = []
    for n in names:
        split = paths.split_shard_stream(n)
        count = client.family_shards(split[0]) if split else None
        if split is None or count is None:
            if idx == 0:
                out.append(n)
            continue
        if split[0] not in owned:
            owned[split[0]] = set(p.owned(count))
        if split[1] in owned[split[0]]:
            out.append(n)
    return out


def run_retention(client, now_ns: int | None = None) -> RetentionReport:
    """Apply ``client.config.retention`` once to the streams this process owns."""
    client._check_writable()
    cfg = client.config.retention
    now_ns = time.time_ns() if now_ns is None else now_ns
    report = RetentionReport()
    if not (cfg.max_age or cfg.max_shard_bytes or cfg.max_total_bytes or cfg.hard_max_total_bytes
            or getattr(cfg, "group_idle_expiry", 0.0)) and \
            _free_shortfall(client.path, getattr(cfg, "hard_min_free_ratio", 0.0)) <= 0:
        return report          # the default config on a roomy disk: touch nothing
    store = OffsetStore(client.path, writable=True)
    try:
        idle = getattr(cfg, "group_idle_expiry", 0.0)
        if idle:
            for g in store.groups():
                if now_ns - max(g.active_ns, g.created_ns) > idle * 1e9:
                    ref = store.group(g.name, create=False)
                    if ref is not None and ref.id == g.id:
                        store.delete_group(ref)
                        report.expired_groups.append(g.name)
                        log.warning("cometmp: retention expired consumer group %r (idle for "
                                    "%.0f s)", g.name, (now_ns - g.active_ns) / 1e9)
        temps: list[tuple[str, str]] = []
        try:
            with store.locked():
                _apply(client, cfg, store, now_ns, report, temps)
        except BaseException:
            try:
                _unlink_temps(temps)
            except CometError as e:   # the first failure is the one raised
                log.warning("cometmp: retention left a renamed segment: %s", e)
            raise
        _unlink_temps(temps)
    finally:
        store.close()
    return report


def _apply(client, cfg, store: OffsetStore, now_ns: int, report: RetentionReport,
           temps: list[tuple[str, str]]) -> None:
    groups = store.groups()
    streams: list[_Stream] = []
    for name in _owned_streams(client):
        try:
            streams.append(_Stream(client, name))
        except (CometError, OSError) as e:
            log.warning("cometmp: retention skipped %s: %s", name, e)
    need = {st.name: st.protected_below(groups) for st in streams}

    def soft_ok(st: _Stream, seg: _Seg) -> bool:
        n = need[st.name]
        if n is not None and n < seg.end:
            report.blocked[st.name] = report.blocked.get(st.name, 0) + seg.bytes
            return False
        return True

    # max_age and max_shard_bytes: per stream, oldest first, stop at the first keeper
    for st in streams:
        if cfg.max_age:
            st.load_ts()
            cutoff = now_ns - int(cfg.max_age * 1e9)
            while st.sealed and st.sealed[0].newest_ts is not None and st.sealed[0].newest_ts < cutoff:
                if not soft_ok(st, st.sealed[0]):
                    break
                _delete(client, st, st.sealed.pop(0), "max_age", report, temps)
        if cfg.max_shard_bytes:
            while st.sealed and st.total > cfg.max_shard_bytes and soft_ok(st, st.sealed[0]):
                _delete(client, st, st.sealed.pop(0), "max_shard_bytes", report, temps)

    shared = _alloc(store.path)    # the offsets file is metadata of every stream: counted too

    def total() -> int:
        return shared + sum(st.total for st in streams)

    def oldest(candidates: list[_Stream]) -> _Stream | None:
        best, best_ts = None, None
        for st in candidates:
            if not st.sealed:
                continue
            st.load_ts()
            ts = st.sealed[0].newest_ts or 0
            if best is None or ts < best_ts:
                best, best_ts = st, ts
        return best

    if cfg.max_total_bytes:
        open_ = [st for st in streams]
        while total() > cfg.max_total_bytes:
            st = oldest(open_)
            if st is None:
                break
            if not soft_ok(st, st.sealed[0]):
                open_.remove(st)
                continue
            _delete(client, st, st.sealed.pop(0), "max_total_bytes", report, temps)

    # the hard limits (R3)
    hard = cfg.hard_max_total_bytes
    ratio = getattr(cfg, "hard_min_free_ratio", 0.0)
    short = _free_shortfall(client.path, ratio)
    while (hard and total() > hard) or short > 0:
        st = oldest(streams)
        if st is None:
            if short > 0:
                log.error("cometmp: filesystem of %s is below %.1f%% free and no sealed "
                          "segment is left to delete", client.path, ratio * 100)
            break
        seg = st.sealed.pop(0)
        _record_drops(store, groups, st, seg, report)
        _delete(client, st, seg, "hard_cap", report, temps)
        short -= seg.bytes


def _free_shortfall(path: str, ratio: float) -> int:
    if not ratio:
        return 0
    try:
        vfs = os.statvfs(path)
    except OSError:
        return 0
    want = int(vfs.f_blocks * vfs.f_frsize * ratio)
    return want - vfs.f_bavail * vfs.f_frsize


def _record_drops(store: OffsetStore, groups: list[GroupInfo], st: _Stream, seg: _Seg,
                  report: RetentionReport) -> None:
    for g in groups:
        slot = g.slots.get(st.name)
        if slot is None and not g.protects(st.name):
            continue
        acked = slot.next if slot is not None and slot.next is not None else seg.base
        if acked >= seg.end:
            continue
        first = max(acked, seg.base)
        d = DroppedRange(st.name, g.name, first, seg.end)
        report.dropped.append(d)
        log.error("cometmp: retention hard cap dropped entries [%d, %d) of %s (%d entries) "
                  "before consumer group %r acked them", d.first, d.end, d.stream, d.count, g.name)
        if slot is not None and slot.index >= 0:
            store.add_dropped(GroupRef(g.index, g.id), slot.index, d.count)


# ---- background thread ----------------------------------------------------------------------

_threads: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()


def configured(cfg) -> bool:
    return bool(cfg.max_age or cfg.max_shard_bytes or cfg.max_total_bytes or
                cfg.hard_max_total_bytes or getattr(cfg, "hard_min_free_ratio", 0.0) or
                getattr(cfg, "group_idle_expiry", 0.0))


def start_background(client) -> None:
    """Start this process's retention thread for ``client`` (idempotent; a forked child
    starts its own). Runs every ``check_interval`` seconds until the client closes."""
    if client.readonly or not configured(client.config.retention):
        return
    with _threads_lock:
        t = _threads.get(client)
        if t is not None and t.is_alive() and getattr(t, "pid", None) == os.getpid():
            return
        ref = weakref.ref(client)
        t = threading.Thread(target=_loop, args=(ref, os.getpid()), name="cometmp-retention",
                             daemon=True)
        t.pid = os.getpid()  # type: ignore[attr-defined]
        _threads[client] = t
        t.start()


def _loop(ref, pid: int) -> None:
    while True:
        client = ref()
        if client is None or client._closed or os.getpid() != pid:
            return
        interval = client.config.retention.check_interval
        stop = getattr(client, "_syncer_stop", None)
        del client
        if stop is not None and stop.wait(interval):
            return
        if stop is None:
            time.sleep(interval)
        client = ref()
        if client is None or client._closed or os.getpid() != pid:
            return
        try:
            run_retention(client)
        except Exception as e:  # noqa: BLE001 - keep the thread alive; report and retry
            if client._closed:
                return   # closed by its owner while this run was in flight: nothing failed
            log.error("cometmp: background retention of %s failed: %s", client.path, e)
        del client
