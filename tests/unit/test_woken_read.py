"""The woken read (cometmp._reader.wait_woken, called by Consumer._wait): a read() woken by
new entries gets its batch from the wait's own C call. It must return exactly what
read()'s full iteration would, and must leave every other case to that iteration
untouched: a reset or an ack by another member, retention, a rotation, damage, acks
out of order, a refresh due.

The decline tests call the woken read directly, as Consumer._wait does, with a
``seen`` that is already stale so the wait returns at once, after setting up the case
with real files; then the full iteration (``read(timeout=0)``) must see the case, as it
would have without the woken read.
"""

from __future__ import annotations

import math
import random
import os
import struct
import threading

import pytest

import cometmp
from cometmp import _reader, paths
from cometmp import format as fmt
from cometmp import consumer as consumer_mod
from cometmp.window import (
    CM_WIN_ENTRIES,
    CM_WIN_HEADER_BYTES,
    CM_WIN_OFF_DELIVERED,
    CM_WIN_RECORD_BYTES,
)
from conftest import WokenSpy, sleeping_readers, small_config, wait_until


def make(data_dir, **retention):
    cfg = small_config()
    cfg.retention.check_interval = 3600
    cfg.retention.hard_min_free_ratio = 0.0
    for k, v in retention.items():
        setattr(cfg.retention, k, v)
    return cometmp.Client(data_dir, config=cfg)


def one_stream(c, entries: list[bytes], group: str = "g"):
    """Stream ``ev`` (one shard) holding ``entries``, and a consumer of ``group``."""
    log = c.log("ev", shards=1)
    log.append_many(entries)
    return log, cometmp.Consumer(c, group)


def woken(con, pattern: str, budget: int = 1000, until: float = math.inf):
    """One woken read of ``con`` over ``pattern`` as Consumer._wait makes it, woken at
    once (each ``seen`` differs from the page's notify_seq). Returns (result, batch)."""
    g = con._ensure_group(pattern)
    cursors = con._owned(g, pattern, None, con._cursors_for(pattern, None))
    seqs = [(c.notify_seq() - 1) & 0xFFFFFFFF for c in cursors]
    plan = con._woken_plan(g, False)
    assert plan is not None, "the consumer's state takes the woken read"
    batch, ofs, wmm, _until = plan
    r = _reader.wait_woken(batch, cursors, seqs, 10**9, con._rr, budget, ofs, wmm, until,
                           (con, con.client))
    if r:
        con._rr += 1          # as read() does with the batch
    return r, batch


def snapshot(con) -> dict:
    """Every cursor's position, its flight's runs and marks, and the window's
    ``delivered`` on disk: what the woken read writes back."""
    out = {}
    mm = con._windows._mm
    for name, c in con._cursors.items():
        delivered = struct.unpack_from(
            "=Q", mm, CM_WIN_HEADER_BYTES + c.slot * CM_WIN_RECORD_BYTES + CM_WIN_OFF_DELIVERED)[0]
        out[name] = (c.pos, c.base, c.off, c.seq, c.acked, c.flight.marked, delivered,
                     [(a, b) for a, b, _t in c.flight.runs])
    return out


def ids(batch) -> list[tuple[str, int]]:
    return [(m.id.stream, m.id.entry) for m in batch]


def drain(con, pattern: str) -> list[tuple[str, int]]:
    got = []
    while True:
        b = con.read(pattern, timeout=0)
        if not len(b):
            return got
        got += ids(b)
        con.ack(b)


@pytest.mark.parametrize("budget", [1000, 7, 1])
def test_a_woken_read_returns_what_the_full_iteration_returns_and_leaves_the_same_state(data_dir, budget):
    with make(data_dir) as c:
        log = c.log("ev", shards=3)
        for i in range(30):
            log.append(b"a%d" % i, key=str(i))
        woke, full = cometmp.Consumer(c, "woke"), cometmp.Consumer(c, "full")
        for con in (woke, full):
            con.ack(con.read("ev:shard:*", max_messages=20, timeout=0))
        for i in range(25):
            log.append(b"b%d" % i, key=str(i))
        r, batch = woken(woke, "ev:shard:*", budget)
        want = full.read("ev:shard:*", max_messages=budget, timeout=0)
        assert r == len(want) == min(budget, 35)
        assert ids(batch) == ids(want)
        assert batch.payloads() == want.payloads()
        assert [m.timestamp_ns for m in batch] == [m.timestamp_ns for m in want]
        assert snapshot(woke) == snapshot(full)
        # and the rest goes on from there, acks included
        woke.ack(batch)
        full.ack(want)
        assert drain(woke, "ev:shard:*") == drain(full, "ev:shard:*")
        assert woke.lag("ev:shard:*") == full.lag("ev:shard:*") == {s: 0 for s in c.streams("ev:shard:*")}


def test_a_woken_read_with_nothing_new_returns_nothing_and_changes_nothing(data_dir):
    with make(data_dir) as c:
        c.log("ev", shards=2).append_many([b"x"] * 10)
        con = cometmp.Consumer(c, "g")
        drain(con, "ev:shard:*")
        before = snapshot(con)
        r, batch = woken(con, "ev:shard:*")
        assert (r, len(batch)) == (0, 0)
        assert snapshot(con) == before


def _declined(con, pattern, **kw):
    before = snapshot(con)
    r, batch = woken(con, pattern, **kw)
    assert r == 0, "the woken read must leave this case to the full iteration"
    assert snapshot(con) == before, "a declined woken read writes nothing back"
    return batch


def test_a_reset_by_another_process_is_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"x%d" % i for i in range(10)])
        drain(con, "ev:shard:*")
        other = cometmp.Consumer(c, "g")       # another process's consumer of the group
        other.reset_offset("ev:shard:0000", 3)
        log.append(b"new")
        _declined(con, "ev:shard:*")
        b = con.read("ev:shard:*", timeout=0)
        assert [m.id.entry for m in b] == list(range(3, 11))    # I12/I13: from the reset


def test_a_reset_to_the_acked_offset_still_redelivers_what_was_not_acked(data_dir):
    # the offset does not move (10 -> 10), only the slot's resets does: the cursor,
    # which delivered [10, 12) unacked, must go back to 10 (I13)
    with make(data_dir) as c:
        log, con = one_stream(c, [b"x%d" % i for i in range(12)])
        b = con.read("ev:shard:*", timeout=0)
        con.ack(*list(b)[:10])
        cometmp.Consumer(c, "g").reset_offset("ev:shard:0000", 10)
        log.append(b"new")
        _declined(con, "ev:shard:*")
        assert [m.id.entry for m in con.read("ev:shard:*", timeout=0)] == [10, 11, 12]


def test_a_woken_read_never_goes_past_the_ack_window(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"x"] * (CM_WIN_ENTRIES + 200))
        b = con.read("ev:shard:*", max_messages=10 * CM_WIN_ENTRIES, timeout=0)
        assert len(b) == CM_WIN_ENTRIES                 # I45: the window is full
        log.append(b"new")
        _declined(con, "ev:shard:*")                    # nothing below the limit
        con.ack(*list(b)[:100])                         # the window slides by 100
        r, more = woken(con, "ev:shard:*")
        assert r == 100
        assert [m.id.entry for m in more] == list(range(CM_WIN_ENTRIES, CM_WIN_ENTRIES + 100))


def test_an_offset_moved_by_another_member_is_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"x%d" % i for i in range(10)])
        drain(con, "ev:shard:*")
        log.append_many([b"y%d" % i for i in range(5)])
        other = cometmp.Consumer(c, "g")       # a static share (no membership): all of it
        b = other.read("ev:shard:*", max_messages=3, timeout=0, assignment=(0, 1))
        assert [m.id.entry for m in b] == [10, 11, 12]
        other.ack(b)                            # the group's offset is 13 now
        _declined(con, "ev:shard:*")
        b = con.read("ev:shard:*", timeout=0)
        assert [m.id.entry for m in b] == [13, 14]              # not again what was acked


def test_entries_deleted_by_the_hard_cap_are_left_to_the_full_iteration(data_dir):
    with make(data_dir, hard_max_total_bytes=2 * 1024 * 1024) as c:
        log = c.log("ev", shards=1)
        con = cometmp.Consumer(c, "late")
        log.append_many([b"r" * 1000] * 10)
        con.ack(con.read("ev:shard:*", timeout=0))              # acked [0, 10)
        log.append_many([b"r" * 1000] * 5000)
        rep = c.run_retention()
        end = rep.deleted[-1].end
        assert end > 10
        _declined(con, "ev:shard:*")                            # I15: first_entry > pos
        with pytest.raises(cometmp.EntriesDropped) as ei:
            con.read("ev:shard:*", timeout=0)
        assert (ei.value.first, ei.value.end) == (10, end)
        assert con.read("ev:shard:*", max_messages=3, timeout=0)[0].id.entry == end


def test_new_entries_in_the_next_segment_are_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"first"])
        drain(con, "ev:shard:*")
        stream_dir = paths.stream_dir(c.path, "ev:shard:0000")
        n = 1
        while len(paths.list_segment_bases(stream_dir)) < 2:   # until a rotation
            log.append(os.urandom(4000))
            n += 1
        _declined(con, "ev:shard:*")      # the walk meets the end of the segment it is in
        assert [e for _s, e in drain(con, "ev:shard:*")] == list(range(1, n))


def test_a_damaged_new_entry_is_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"first"])
        drain(con, "ev:shard:*")
        for i in range(3):
            log.append(b"payload-%d" % i)
        c.sync()
        seg = os.path.join(paths.stream_dir(c.path, "ev:shard:0000"),
                           paths.segment_name(paths.list_segment_bases(
                               paths.stream_dir(c.path, "ev:shard:0000"))[0]))
        with open(seg, "r+b") as f:                  # flip a bit of entry 2's payload
            data = f.read()
            at = data.index(b"payload-1")
            f.seek(at)
            f.write(bytes([data[at] ^ 0x01]))
        _declined(con, "ev:shard:*")
        got = drain(con, "ev:shard:*")
        assert [e for _s, e in got] == [1, 3]        # damage skipped, never delivered
        assert con._cursors["ev:shard:0000"].skipped == 1


@pytest.mark.parametrize("field", ["committed", "first_entry"])
def test_a_damaged_count_on_the_state_page_is_left_to_the_full_iteration(data_dir, field):
    # the woken read trusts the page only as the full iteration does: a committed count
    # past the records makes its walk meet the end of the data, a first_entry hint far
    # above pos means retention may have deleted entries; either way it hands back
    off = {"committed": fmt.CM_STATE_OFF_COMMITTED, "first_entry": fmt.CM_STATE_OFF_FIRST_ENTRY}[field]
    with make(data_dir) as c:
        log, con = one_stream(c, [b"a", b"b"])
        drain(con, "ev:shard:*")
        log.append(b"new")
        page = os.path.join(paths.stream_dir(c.path, "ev:shard:0000"), paths.STATE)
        with open(page, "r+b") as f:
            f.seek(off)
            good = f.read(8)
            f.seek(off)
            f.write(struct.pack("<Q", struct.unpack("<Q", good)[0] + (1 << 20)))
        try:
            _declined(con, "ev:shard:*")
        finally:
            with open(page, "r+b") as f:
                f.seek(off)
                f.write(good)
        assert [m.id.entry for m in con.read("ev:shard:*", timeout=0)] == [2]


def test_acks_out_of_order_are_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"x%d" % i for i in range(5)])
        b = con.read("ev:shard:*", timeout=0)
        con.ack(b[3])                                  # the window holds an ack (I43)
        log.append(b"new")
        _declined(con, "ev:shard:*")
        assert [m.id.entry for m in con.read("ev:shard:*", timeout=0)] == [5]


def test_a_membership_refresh_or_state_check_due_is_left_to_the_full_iteration(data_dir):
    with make(data_dir) as c:
        log, con = one_stream(c, [b"a"])
        drain(con, "ev:shard:*")
        log.append(b"b")
        _declined(con, "ev:shard:*", until=0.0)        # the clock is past `until`
        assert [m.id.entry for m in con.read("ev:shard:*", timeout=0)] == [1]


def test_a_consumer_that_redelivers_or_drops_never_takes_the_woken_read(data_dir):
    with make(data_dir) as c:
        c.log("ev", shards=1).append(b"a")
        timed = cometmp.Consumer(c, "t", ack_wait=30.0)
        timed.read("ev:shard:*", timeout=0)
        assert timed._woken_plan(timed._group, False) is None      # I47 needs the full iteration
        con = cometmp.Consumer(c, "g")
        b = con.read("ev:shard:*", timeout=0)
        con.nack(b, delay=60)                                        # due later: _due holds it
        assert con._woken_plan(con._group, False) is None


@pytest.mark.parametrize("seed", range(6))
def test_random_appends_budgets_and_acks_give_the_same_batches_as_the_full_iteration(data_dir, seed):
    """Two groups over the same streams, one through the woken read (the full iteration
    when it declines), one through the full iteration only: batches and state equal."""
    rnd = random.Random(seed)
    cfg = small_config()
    cfg.compression.min_bytes = 1000
    cfg.retention.check_interval = 3600
    with cometmp.Client(data_dir, config=cfg) as c:
        log = c.log("ev", shards=5)
        a, b = cometmp.Consumer(c, "wk", zero_copy=True), cometmp.Consumer(c, "fl")
        for con in (a, b):
            con.read("ev:shard:*", timeout=0)
        served = declined = 0
        pend_a, pend_b = [], []
        for step in range(400):
            for _ in range(rnd.choice([0, 1, 3, 20])):
                size = rnd.choice([5, 50, 2000, 2000, 40000])
                log.append(rnd.randbytes(8) + b"x" * size, key=str(rnd.randrange(1000)))
            budget = rnd.choice([1, 2, 7, 1000])
            r, wb = woken(a, "ev:shard:*", budget)
            if r == 0:
                declined += 1
                wb = a.read("ev:shard:*", max_messages=budget, timeout=0)
            else:
                served += 1
            fb = b.read("ev:shard:*", max_messages=budget, timeout=0)
            assert ids(wb) == ids(fb), step
            assert [bytes(p) for p in wb.payloads()] == fb.payloads(), step
            sa, sb = snapshot(a), snapshot(b)
            assert {k: v[:1] + v[4:] for k, v in sa.items()} == \
                   {k: v[:1] + v[4:] for k, v in sb.items()}, step
            pend_a.append(wb); pend_b.append(fb)
            choice = rnd.random()
            if choice < 0.5:
                for x in pend_a: a.ack(x)
                for x in pend_b: b.ack(x)
                pend_a.clear(); pend_b.clear()
            elif choice < 0.7:
                # out of order: newest batch first, then the rest
                for x in reversed(pend_a): a.ack(x)
                for x in reversed(pend_b): b.ack(x)
                pend_a.clear(); pend_b.clear()
            # else: left unacked for now (the window fills, I45)
        print("served", served, "declined", declined)
        assert served > 30


def test_a_read_blocked_until_an_append_is_served_by_the_woken_read_across_rotations(data_dir, monkeypatch):
    spy = WokenSpy()
    monkeypatch.setattr(consumer_mod, "_reader", spy)
    n = 400
    with make(data_dir) as c:
        log = c.log("ev", shards=1)
        con = cometmp.Consumer(c, "g")
        con.read("ev:shard:*", timeout=0)
        got: list[bytes] = []
        errors: list[BaseException] = []

        def consume():
            try:
                while len(got) < n:
                    b = con.read("ev:shard:*", timeout=30)
                    got.extend(b.payloads())
                    con.ack(b)
            except BaseException as e:   # noqa: BLE001 - reported by the main thread
                errors.append(e)

        t = threading.Thread(target=consume)
        t.start()
        for i in range(n):
            # each entry once the reader sleeps again: every one is a wake-up
            wait_until(lambda: (len(got) == i and sleeping_readers(c.path, "ev:shard:0000") == 1)
                       or not t.is_alive(), 30, f"the reader to hold {i} entries and sleep again")
            log.append(b"%05d" % i + os.urandom(5000))   # ~200 per 1 MiB segment
        t.join(60)
        assert not errors and not t.is_alive()
        assert [p[:5] for p in got] == [b"%05d" % i for i in range(n)]
        assert len(paths.list_segment_bases(paths.stream_dir(c.path, "ev:shard:0000"))) >= 2
        served = sum(1 for r in spy.results if r)
        declined = sum(1 for r in spy.results if r == 0)
        # every wake-up but the few at a rotation, a refresh or a state check is served
        print("woken reads served", served, "declined", declined, "of", len(spy.results))
        assert served >= n * 0.8, (served, declined, len(spy.results))
        assert declined >= 1            # the rotation's: the full iteration moved on


def test_close_wakes_a_read_asleep_in_the_woken_read_with_closed_error(data_dir):
    with make(data_dir) as c:
        c.log("ev", shards=2)
        con = cometmp.Consumer(c, "g")
        con.read("ev:shard:*", timeout=0)
        out: list = []

        def reader():
            try:
                con.read("ev:shard:*", timeout=60)
                out.append("returned")
            except cometmp.ClosedError as e:
                out.append(e)

        t = threading.Thread(target=reader)
        t.start()
        wait_until(lambda: all(sleeping_readers(c.path, s) == 1 for s in c.streams("ev:shard:*")),
                   30, "the reader to sleep")
        con.close()
        t.join(30)
        assert not t.is_alive()
        assert len(out) == 1 and isinstance(out[0], cometmp.ClosedError)
