"""Retention: soft limits never delete unacked data; the hard cap reports what it drops."""

from __future__ import annotations

import os
import time

import pytest

import cometmp
from cometmp import paths
from cometmp.retention import run_retention
from conftest import small_config, wait_until

PAYLOAD = b"r" * 1000        # ~1,000 entries per 1 MiB segment


def make(data_dir, **retention):
    cfg = small_config()
    cfg.retention.check_interval = 3600
    cfg.retention.hard_min_free_ratio = 0.0   # deterministic on any disk; tested below
    for k, v in retention.items():
        setattr(cfg.retention, k, v)
    return cometmp.Client(data_dir, config=cfg)


def fill(client, stream="ev:shard:0000", n=5000):
    client.append(stream, [PAYLOAD] * n)
    return paths.list_segment_bases(paths.stream_dir(client.path, stream))


def test_without_groups_soft_limit_deletes_oldest_sealed_segments(data_dir):
    with make(data_dir, max_shard_bytes=2 * 1024 * 1024) as c:
        bases = fill(c)
        assert len(bases) >= 5
        rep = c.run_retention()
        left = paths.list_segment_bases(paths.stream_dir(c.path, "ev:shard:0000"))
        assert left == bases[len(bases) - len(left):] and len(left) < len(bases)
        assert c.first_entry("ev:shard:0000") == left[0]
        assert c.length("ev:shard:0000") == 5000              # entry numbers never change
        with pytest.raises(cometmp.EntryNotFound):
            c.read("ev:shard:0000", 0)
        assert c.read("ev:shard:0000", left[0]).id.entry == left[0]
        ctr = c.stats()["streams"]["ev:shard:0000"]["counters"]
        assert ctr["retention_segments"] == len(rep.deleted) == len(bases) - len(left)
        assert ctr["retention_bytes"] == rep.bytes_freed > 0
        assert not rep.dropped


def test_soft_limit_stops_at_the_first_segment_a_group_has_not_acked(data_dir):
    with make(data_dir, max_shard_bytes=1) as c:
        bases = fill(c)
        con = cometmp.Consumer(c, group="slow")
        con.reset_offset("ev:shard:0000", bases[2] + 5)      # acked into the third segment
        rep = c.run_retention()
        assert [d.base for d in rep.deleted] == bases[:2]
        assert rep.blocked["ev:shard:0000"] > 0
        b = con.read("ev:shard:*", max_messages=1, timeout=0)
        assert b[0].id.entry == bases[2] + 5


def test_a_group_protects_everything_from_its_first_read_before_any_ack(data_dir):
    with make(data_dir, max_shard_bytes=1, max_total_bytes=1) as c:
        fill(c)
        cometmp.Consumer(c, group="g").read("ev:shard:*", max_messages=1, timeout=0)
        rep = c.run_retention()
        assert rep.deleted == []


def test_a_group_protects_matching_streams_created_after_its_first_read(data_dir):
    with make(data_dir, max_shard_bytes=1) as c:
        fill(c, "ev:shard:0000", n=10)
        cometmp.Consumer(c, group="g").read("ev:shard:*", max_messages=1, timeout=0)
        later = fill(c, "ev:shard:0001")
        other = fill(c, "other", n=3000)
        rep = c.run_retention()
        assert {d.stream for d in rep.deleted} == {"other"}
        assert paths.list_segment_bases(paths.stream_dir(c.path, "ev:shard:0001")) == later
        assert len(other) > 1


def test_max_age_deletes_segments_whose_newest_entry_is_older(data_dir):
    with make(data_dir, max_age=60.0) as c:
        bases = fill(c)
        assert run_retention(c).deleted == []                 # everything is young
        rep = run_retention(c, now_ns=time.time_ns() + 3600 * 10**9)
        assert [d.base for d in rep.deleted] == bases[:-1]    # all sealed ones, not the active
        assert {d.reason for d in rep.deleted} == {"max_age"}


def test_max_total_bytes_deletes_globally_oldest_first(data_dir):
    with make(data_dir, max_total_bytes=4 * 1024 * 1024) as c:
        a = fill(c, "a", n=3000)
        b = fill(c, "b", n=3000)
        rep = c.run_retention()
        assert rep.deleted and rep.deleted[0].stream == "a" and rep.deleted[0].base == a[0]
        assert sum(d.bytes for d in rep.deleted) > 0
        assert len(b) >= 3


def test_hard_cap_drops_unacked_data_and_reports_exact_ranges(data_dir):
    with make(data_dir, hard_max_total_bytes=2 * 1024 * 1024) as c:
        bases = fill(c)
        con = cometmp.Consumer(c, group="late")
        con.ack(con.read("ev:shard:*", max_messages=10, timeout=0))   # acked [0, 10)
        rep = c.run_retention()
        deleted = [d.base for d in rep.deleted]
        assert deleted == bases[:len(deleted)] and deleted
        end = rep.deleted[-1].end
        # one range per deleted segment, together exactly [10, end)
        spans = [(d.first, d.end) for d in rep.dropped]
        assert all(d.group == "late" and d.stream == "ev:shard:0000" for d in rep.dropped)
        assert spans[0][0] == 10 and spans[-1][1] == end
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
        g = c.consumer_groups()[0]
        assert g["streams"]["ev:shard:0000"]["dropped"] == end - 10
        with pytest.raises(cometmp.EntriesDropped) as ei:
            con.read("ev:shard:*", max_messages=5, timeout=0)
        assert (ei.value.stream, ei.value.first, ei.value.end) == ("ev:shard:0000", 10, end)
        b = con.read("ev:shard:*", max_messages=5, timeout=0)
        assert [m.id.entry for m in b] == list(range(end, end + 5))


def test_hard_cap_before_a_groups_first_read_after_joining_is_reported(data_dir):
    # the group joins (its slot exists, nothing acked), the hard cap deletes, and only
    # then does a member read for the first time: the loss is reported, not skipped
    with make(data_dir, hard_max_total_bytes=2 * 1024 * 1024) as c:
        c.log("ev", shards=1)
        cometmp.Consumer(c, group="g").read("ev:shard:*", timeout=0)   # joins at entry 0
        fill(c)
        rep = c.run_retention()
        end = rep.deleted[-1].end
        assert [(d.first, d.end) for d in rep.dropped][0][0] == 0
        seen = []
        late = cometmp.Consumer(c, group="g", on_drop=lambda s, a, b: seen.append((s, a, b)))
        b = late.read("ev:shard:*", max_messages=1, timeout=0)
        assert seen == [("ev:shard:0000", 0, end)]
        assert b[0].id.entry == end


def test_on_drop_callback_replaces_the_exception(data_dir):
    with make(data_dir, hard_max_total_bytes=1) as c:
        fill(c)
        seen = []
        con = cometmp.Consumer(c, group="cb", on_drop=lambda s, a, b: seen.append((s, a, b)))
        con.read("ev:shard:*", max_messages=1, timeout=0)      # position 1, nothing acked
        c.run_retention()
        b = con.read("ev:shard:*", max_messages=1, timeout=0)
        first = c.first_entry("ev:shard:0000")
        assert seen == [("ev:shard:0000", 1, first)]
        assert b[0].id.entry == first


def test_deleting_a_segment_a_reader_has_mapped_does_not_break_it(data_dir):
    with make(data_dir, hard_max_total_bytes=1) as c:
        fill(c)
        con = cometmp.Consumer(c, group="z", zero_copy=True, on_drop=lambda *a: None)
        held = con.read("ev:shard:*", max_messages=500, timeout=0)
        views = held.payloads()
        rep = c.run_retention()
        assert rep.deleted and rep.deleted[0].base == 0
        assert not os.path.exists(os.path.join(paths.stream_dir(c.path, "ev:shard:0000"),
                                               paths.segment_name(0)))
        assert all(bytes(v) == PAYLOAD for v in views)         # still mapped, still valid
        b = con.read("ev:shard:*", max_messages=10, timeout=0)
        assert len(b) == 10 and b[0].id.entry >= rep.deleted[-1].end


def test_idle_groups_expire_and_stop_protecting(data_dir):
    with make(data_dir, max_shard_bytes=1, group_idle_expiry=0.2) as c:
        fill(c)
        cometmp.Consumer(c, group="abandoned").read("ev:shard:*", max_messages=1, timeout=0)
        assert c.run_retention().deleted == []
        rep = wait_until(lambda: (r := c.run_retention()).expired_groups and r, 30,
                         "the idle group to expire (after 0.2 s)")
        assert rep.expired_groups == ["abandoned"] and rep.deleted
        assert c.consumer_groups() == []


def test_a_group_blocked_in_read_for_longer_than_the_idle_expiry_is_not_expired(data_dir):
    # R4: a consumer waiting for data is active: read() touches its group once per wait
    # slice (before it sleeps), so an idle expiry shorter than the wait spares it
    import threading

    with make(data_dir, max_shard_bytes=1, group_idle_expiry=2.5) as c:
        fill(c)
        con = cometmp.Consumer(c, group="waiting")
        while len(b := con.read("ev:shard:*", max_messages=10**6, timeout=0)):
            con.ack(b)    # a read delivers at most the ack window's 4,096 per stream (I45)
        done = threading.Event()
        t = threading.Thread(target=lambda: (con.read("ev:shard:*", timeout=6.0), done.set()))
        t.start()
        try:
            time.sleep(4.0)   # longer than the expiry, while the read is blocked
            assert not done.is_set()
            assert c.run_retention().expired_groups == []
            assert [g["name"] for g in c.consumer_groups()] == ["waiting"]
        finally:
            t.join(30)
        con.close()


def test_background_thread_applies_retention_in_the_owning_process(data_dir):
    with make(data_dir, max_shard_bytes=1) as c:
        c.config.retention.check_interval = 0.05
        c.close()
    with make(data_dir, max_shard_bytes=1, check_interval=0.05) as c:
        bases = fill(c)
        wait_until(lambda: paths.list_segment_bases(paths.stream_dir(c.path, "ev:shard:0000"))
                   == bases[-1:], 30, "the background thread to delete the sealed segments",
                   interval=0.05)


def test_free_space_floor_deletes_oldest_sealed_segments_and_reports_drops(data_dir):
    vfs = os.statvfs(os.path.dirname(data_dir))
    free = vfs.f_bavail / vfs.f_blocks
    if free > 0.49:
        pytest.skip("the floor cannot be set above the current free fraction here")
    with make(data_dir) as c:
        bases = fill(c)
        con = cometmp.Consumer(c, group="g")
        con.read("ev:shard:*", max_messages=1, timeout=0)
        c.config.retention.hard_min_free_ratio = min(0.5, free + 0.01)   # always short of it
        rep = c.run_retention()
        assert [d.base for d in rep.deleted] == bases[:-1]
        assert {d.reason for d in rep.deleted} == {"hard_cap"}
        assert rep.dropped[0].first == 0 and rep.dropped[-1].end == bases[-1]


def test_config_knobs_are_validated():
    cfg = cometmp.Config()
    assert cfg.retention.hard_min_free_ratio > 0 and cfg.retention.group_idle_expiry == 0
    cfg.retention.hard_min_free_ratio = 0.9
    with pytest.raises(ValueError, match="hard_min_free_ratio"):
        cfg.validate()



def test_closing_a_client_during_a_background_run_is_not_reported_as_a_failure(data_dir, caplog):
    """The Client is closed by its owner while its retention thread is inside a run (held
    at the offsets file's mutex, which this test holds): the run ends quietly, nothing is
    logged as a failed retention, and the thread exits."""
    import logging
    import sys

    from cometmp import retention
    from cometmp.offsets import OffsetStore

    with make(data_dir, max_shard_bytes=1) as c:
        c.append("ev:shard:0000", [b"x"] * 10)
    caplog.set_level(logging.ERROR, logger="cometmp")
    store = OffsetStore(data_dir, writable=True)
    try:
        with store.locked():
            c = make(data_dir, max_shard_bytes=1, check_interval=0.01)
            c.append("ev:shard:0000", [b"y"])   # this process writes: its thread starts
            thread = retention._threads[c]

            def inside_run():
                frame = sys._current_frames().get(thread.ident)
                while frame is not None:
                    if frame.f_code.co_name == "run_retention":
                        return True
                    frame = frame.f_back
                return False

            wait_until(inside_run, 30, "the retention thread to be inside a run")
            c.close()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        store.close()
    failed = [r.getMessage() for r in caplog.records if "background retention" in r.getMessage()]
    assert failed == []


def _offsets_lock_free(root: str) -> bool:
    """Whether another thread can take the offsets file's lock within 10 s."""
    import threading

    from cometmp.offsets import OffsetStore

    got = threading.Event()

    def take():
        s = OffsetStore(root, writable=True)
        try:
            with s.locked():
                got.set()
        finally:
            s.close()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(10)
    return got.is_set()


def test_renamed_segments_are_unlinked_with_the_offsets_lock_released_and_a_failed_one_stops_none_of_the_others(
        data_dir, monkeypatch):
    import errno

    from cometmp import retention

    stream = "ev:shard:0000"
    with make(data_dir, max_shard_bytes=2 * 1024 * 1024) as c:
        bases = fill(c)
        sdir = paths.stream_dir(c.path, stream)
        real, seen = os.unlink, []

        def unlink(name, *args, **kw):
            if str(name).endswith(".seg" + paths.TMP_SUFFIX):
                seen.append(_offsets_lock_free(c.path))
                if len(seen) == 1:
                    raise PermissionError(errno.EACCES, "injected", name)
            return real(name, *args, **kw)

        monkeypatch.setattr(retention.os, "unlink", unlink)
        with pytest.raises(cometmp.CometError, match="injected|ermission"):
            c.run_retention()
        monkeypatch.undo()
        kept = paths.list_segment_bases(sdir)
        assert len(seen) == len(bases) - len(kept) >= 2      # every renamed one was tried
        assert all(seen), "a temp file was unlinked with the offsets lock held"
        left = [n for n in os.listdir(sdir) if n.endswith(paths.TMP_SUFFIX)]
        assert len(left) == 1                                 # only the one that failed
        assert c.first_entry(stream) == kept[0]
    with make(data_dir) as c:                                 # a writer open removes it (I7)
        c.append(stream, [PAYLOAD])
        assert not [n for n in os.listdir(sdir) if n.endswith(paths.TMP_SUFFIX)]
