"""Consumer groups in one process: reads, acks, offsets, zero-copy batches, process()."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import pytest

import cometmp
from conftest import small_config, tree_fingerprint, wait_until


@pytest.fixture
def client(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        yield c


def fill(client, prefix="events:v1", shards=4, n=100):
    log = client.log(prefix, shards=shards)
    for i in range(n):
        log.append(b"m%d" % i, key=str(i))
    return log


def contents(root):
    """Paths with content hash, size and mode. (Timestamps are left out: the kernel may
    still update a closed writer's mmap-written files' mtime at writeback.)"""
    return {k: v[:3] for k, v in tree_fingerprint(root).items()}


def entries(batch):
    return [(m.id.stream, m.id.entry) for m in batch]


def test_read_returns_every_entry_once_in_entry_order_per_stream(client):
    fill(client, n=200)
    con = cometmp.Consumer(client, group="g")
    got = []
    while True:
        b = con.read("events:v1:shard:*", max_messages=37, timeout=0)
        if not len(b):
            break
        assert len(b) <= 37
        got += entries(b)
        con.ack(b)
    assert len(got) == 200 and len(set(got)) == 200
    for s in client.streams("events:v1:shard:*"):
        mine = [e for st, e in got if st == s]
        assert mine == list(range(client.length(s)))


def test_payloads_are_bytes_by_default_and_round_trip(client):
    log = client.log("p", shards=1)
    data = [b"", b"x", os.urandom(5000), b"\x28\xb5\x2f\xfd" + b"zz" * 3000]
    for d in data:
        log.append(d)
    b = cometmp.Consumer(client, group="g").read("p:shard:*", timeout=0)
    assert [m.data for m in b] == data
    assert all(type(m.data) is bytes for m in b)
    assert all(m.timestamp_ns > 0 for m in b)


def test_timeout_zero_never_waits_and_expired_wait_returns_empty(client):
    fill(client, n=1)
    con = cometmp.Consumer(client, group="g")
    con.ack(con.read("events:v1:shard:*", timeout=0))
    t = time.monotonic()
    assert len(con.read("events:v1:shard:*", timeout=0)) == 0
    assert time.monotonic() - t < 0.05
    t = time.monotonic()
    assert len(con.read("events:v1:shard:*", timeout=0.2)) == 0
    assert 0.19 <= time.monotonic() - t < 1.0


def test_blocking_read_wakes_when_another_thread_appends(client):
    log = fill(client, shards=2, n=0)
    con = cometmp.Consumer(client, group="g")
    assert len(con.read("events:v1:shard:*", timeout=0)) == 0
    threading.Timer(0.2, lambda: log.append(b"late")).start()
    t = time.monotonic()
    b = con.read("events:v1:shard:*", timeout=None)
    assert [m.data for m in b] == [b"late"]
    assert time.monotonic() - t < 2.0


def test_new_consumer_resumes_after_the_acked_entries(client):
    fill(client, shards=1, n=50)
    con = cometmp.Consumer(client, group="g")
    b = con.read("*", max_messages=30, timeout=0)
    con.ack(*b[:10])                     # entries 0..9 are done
    con.ack(b[12].id)                    # and 12, beyond the committed offset (I43)
    con.close()                          # a live member would keep its streams (I41d)
    con2 = cometmp.Consumer(client, group="g")
    b2 = con2.read("*", max_messages=100, timeout=0)
    assert [m.id.entry for m in b2] == [10, 11] + list(range(13, 50))


def test_ack_accepts_ids_from_several_shards_messages_and_batches_and_no_ids(client):
    fill(client, n=40)
    con = cometmp.Consumer(client, group="g")
    con.ack()                            # no-op
    b = con.read("events:v1:shard:*", max_messages=100, timeout=0)
    ids = [m.id for m in b]
    con.ack(*ids[:5], b[5], b[6])
    lag_partial = con.lag("events:v1:shard:*")
    assert sum(lag_partial.values()) < 40
    con.ack(b)
    assert set(con.lag("events:v1:shard:*").values()) == {0}


def test_acks_in_any_order_count_each_entry_once_and_never_move_the_offset_back(client):
    fill(client, shards=1, n=20)
    con = cometmp.Consumer(client, group="g")
    b = con.read("*", timeout=0)
    con.ack(b[15].id)
    con.ack(b[3].id, b[15].id)
    assert con.lag("*") == {"events:v1:shard:0000": 18}
    con.ack(*b[:16])
    con.ack(b[2].id)
    assert con.lag("*") == {"events:v1:shard:0000": 4}


def test_max_messages_bounds_the_total_across_streams(client):
    fill(client, shards=8, n=400)
    con = cometmp.Consumer(client, group="g")
    assert len(con.read("events:v1:shard:*", max_messages=10, timeout=0)) == 10


def test_group_names_up_to_1024_bytes_and_bad_names_are_rejected(client):
    fill(client, n=3)
    for name in ["x" * 255, "é" * 300, "y" * 1024]:
        con = cometmp.Consumer(client, group=name)
        assert len(con.read("*", timeout=0)) == 3
    names = {g["name"] for g in client.consumer_groups()}
    assert {"x" * 255, "é" * 300, "y" * 1024} <= names
    for bad in ["", "z" * 1025, "a\x00b", 7]:
        with pytest.raises(cometmp.BadGroupName):
            cometmp.Consumer(client, group=bad)
    assert issubclass(cometmp.BadGroupName, ValueError)


def test_group_exists_from_first_read_before_any_ack(client):
    fill(client, n=5)
    con = cometmp.Consumer(client, group="early")
    assert client.consumer_groups() == []
    con.read("events:v1:shard:*", max_messages=1, timeout=0)
    (g,) = client.consumer_groups()
    assert g["name"] == "early" and g["patterns"] == ["events:v1:shard:*"]
    assert sum(s["lag"] for s in g["streams"].values()) == 5


def test_streams_created_after_the_first_read_are_discovered(client):
    fill(client, prefix="a", shards=1, n=2)
    con = cometmp.Consumer(client, group="g")
    assert len(con.read("*", timeout=0)) == 2
    client.append("b", [b"new1", b"new2"])
    b = con.read("*", timeout=30)   # returns once found; the bound is for a loaded machine
    assert [m.data for m in b] == [b"new1", b"new2"]


def test_lag_counts_unacked_entries_per_stream(client):
    fill(client, shards=2, n=10)
    con = cometmp.Consumer(client, group="g")
    lag = con.lag("events:v1:shard:*")
    assert set(lag) == {"events:v1:shard:0000", "events:v1:shard:0001"}
    assert sum(lag.values()) == 10
    b = con.read("events:v1:shard:*", max_messages=3, timeout=0)
    con.ack(b)
    assert sum(con.lag("events:v1:shard:*").values()) == 7


def test_reset_offset_by_entry_and_by_time_reaches_other_consumers(client):
    log = client.log("t", shards=1)
    for i in range(10):
        log.append(b"%d" % i)
    last_ns = list(client.scan("t:shard:0000"))[-1].timestamp_ns
    wait_until(lambda: time.time_ns() > last_ns, 10, "the clock to pass entry 9's timestamp",
               interval=0.0005)
    mid_ns = time.time_ns()   # after entry 9, before entry 10
    for i in range(10, 20):
        log.append(b"%d" % i)
    a = cometmp.Consumer(client, group="g")
    b = cometmp.Consumer(client, group="g")
    a.ack(a.read("t:shard:*", max_messages=100, timeout=0))
    # b reads by a static assignment (no membership), so a's live membership does not
    # keep the stream from it
    assert len(b.read("t:shard:*", timeout=0, assignment=(0, 1))) == 0   # a's acks moved the group on
    assert a.reset_offset("t:shard:0000", 5) == {"t:shard:0000": 5}
    assert [m.id.entry for m in b.read("t:shard:*", max_messages=100, timeout=0,
                                       assignment=(0, 1))][0] == 5
    assert a.reset_offset("t:shard:*", timestamp_ns=mid_ns) == {"t:shard:0000": 10}
    assert [m.data for m in a.read("t:shard:*", max_messages=1, timeout=0)] == [b"10"]
    assert a.reset_offset("t:shard:0000", 10**9) == {"t:shard:0000": 20}   # clamped


def test_delete_group_forgets_offsets_and_lists_no_more(client):
    fill(client, n=4)
    con = cometmp.Consumer(client, group="gone")
    con.ack(con.read("*", timeout=0))
    assert client.delete_consumer_group("gone") is True
    assert client.delete_consumer_group("gone") is False
    assert client.consumer_groups() == []
    assert len(cometmp.Consumer(client, group="gone").read("*", timeout=0)) == 4


def test_zero_copy_views_stay_valid_while_referenced(client):
    log = client.log("z", shards=1)
    payloads = [os.urandom(100) for _ in range(50)]
    log.append_many(payloads)
    con = cometmp.Consumer(client, group="g", zero_copy=True)
    b = con.read("z:shard:*", timeout=0)
    views = b.payloads()
    assert all(isinstance(v, memoryview) and v.readonly for v in views)
    assert [bytes(v) for v in views] == payloads
    assert views[3][1:5].tobytes() == payloads[3][1:5] and views[3][-1] == payloads[3][-1]
    assert len(views[0]) == views[0].nbytes == 100 and views[0].contiguous
    first, kept = b[0].data, views[9]
    b.release()
    del b, views
    gc.collect()
    con.close()          # unmaps what it can; the views keep their mapping alive
    assert bytes(first) == payloads[0] and kept.tobytes() == payloads[9]
    assert hash(kept) == hash(payloads[9])


def test_batch_is_list_like(client):
    fill(client, shards=1, n=10)
    b = cometmp.Consumer(client, group="g").read("*", timeout=0)
    assert len(b) == 10 and b[-1].id.entry == 9 and [m.id.entry for m in b[2:5]] == [2, 3, 4]
    assert [m.id.entry for m in b] == list(range(10))
    assert b.ack_points() == {"events:v1:shard:0000": 10}
    with pytest.raises(IndexError):
        b[10]


def test_reading_never_modifies_segments_or_indexes(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as writer:   # closed: no writer thread runs
        fill(writer, n=300)
    before = {k: v for k, v in contents(data_dir).items() if k.endswith((".seg", ".idx"))}
    with cometmp.Client(data_dir, config=cfg) as client:
        con = cometmp.Consumer(client, group="g")
        while len(con.read("*", timeout=0.05)):
            pass
    after = {k: v for k, v in contents(data_dir).items() if k.endswith((".seg", ".idx"))}
    assert before == after


def test_readonly_client_consumer_polls_and_modifies_no_file(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as writer:
        fill(writer, n=30)
    before = contents(data_dir)
    with cometmp.Client(data_dir, readonly=True) as ro:
        con = cometmp.Consumer(ro, group="g")
        b = con.read("*", max_messages=100, timeout=0.05)
        assert len(b) == 30
        con.ack(b)
        assert len(con.read("*", timeout=0.05)) == 0
        con.close()
    assert contents(data_dir) == before


def test_process_retries_then_dead_letters_and_acks(client):
    fill(client, shards=1, n=6)
    con = cometmp.Consumer(client, group="g")
    calls, dead, errors = [], [], []
    stop = threading.Event()

    def handler(batch):
        calls.append(len(batch))
        raise RuntimeError("boom")

    def on_dead(batch, exc):
        dead.append([m.id.entry for m in batch])
        stop.set()

    con.process(handler, stream="*", batch_size=10, max_retries=2, backoff=0.001,
                on_error=lambda e, b, n: errors.append(n), dead_letter=on_dead, stop=stop,
                poll_interval=0.01)
    assert calls == [6, 6, 6] and errors == [1, 2, 3] and dead == [list(range(6))]
    assert con.lag("*") == {"events:v1:shard:0000": 0}


def test_a_batch_that_keeps_failing_goes_to_the_dead_letter_stream_with_a_warning(client):
    log = client.log("events:v1", shards=1)
    sent = [b"m%d" % i for i in range(6)] + [os.urandom(300)]
    ids = [log.append(d) for d in sent]
    con = cometmp.Consumer(client, group="billing")
    stop = threading.Event()

    def handler(batch):
        raise RuntimeError("boom")

    with pytest.warns(cometmp.DeadLetterWarning, match=r"billing.*_dead-letter\.billing"):
        handled = con.process(handler, stream="*", batch_size=10, max_retries=1, backoff=0.001,
                              on_batch=lambda b: stop.set(), stop=stop, poll_interval=0.01)
    assert handled == 0                      # only what the handler handled
    assert con.lag("*") == {"events:v1:shard:0000": 0}   # acked only after the dead letter
    dead = cometmp.deadletter.stream_for("billing")
    assert dead == "_dead-letter.billing" and client.length(dead) == len(sent)
    for mid, data, m in zip(ids, sent, client.scan(dead)):
        env, body = cometmp.deadletter.decode(m.data)
        assert body == data
        assert (env["group"], env["stream"], env["entry"]) == ("billing", mid.stream, mid.entry)
        assert env["error"] == "RuntimeError: boom" and env["attempts"] == 2
    # a "*" consumer does not read dead letters back; a pattern naming them does
    assert cometmp.Consumer(client, group="other").read("*", 100, timeout=0).payloads() == sent
    assert len(cometmp.Consumer(client, group="dl").read("_dead-letter.*", 100, timeout=0)) == 7


def test_process_counts_only_batches_the_handler_handled(client):
    fill(client, shards=1, n=4)
    con = cometmp.Consumer(client, group="g")
    seen = []
    stop = threading.Event()

    def handler(batch):
        seen.append(len(batch))
        if len(seen) == 1:
            raise ValueError("first batch is bad")
        stop.set()

    client.log("events:v1", shards=1)
    with pytest.warns(cometmp.DeadLetterWarning):
        n = con.process(handler, stream="events:*", batch_size=2, max_retries=0, stop=stop,
                        poll_interval=0.01)
    assert n == 2 and seen == [2, 2]
    assert client.length(cometmp.deadletter.stream_for("g")) == 2


def test_dead_letter_names_are_valid_streams_for_any_group_name():
    from cometmp import paths

    for g in ["g", "a.b", "x" * 1024, "spaces and / slashes", "..", "ünï", "\t"]:
        name = cometmp.deadletter.stream_for(g)
        assert paths.validate_stream_name(name) == name and cometmp.deadletter.is_dead_letter(name)
    assert cometmp.deadletter.stream_for("a b") != cometmp.deadletter.stream_for("a/b")


def test_a_readonly_consumer_that_cannot_dead_letter_raises_and_does_not_ack(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as w:
        fill(w, shards=1, n=3)
    with cometmp.Client(data_dir, readonly=True) as ro:
        con = cometmp.Consumer(ro, group="g")

        def handler(batch):
            raise RuntimeError("boom")

        with pytest.raises(cometmp.ReadOnlyError, match="dead-letter stream '_dead-letter.g'"):
            con.process(handler, stream="*", batch_size=10, max_retries=0)
        assert con.lag("*") == {"events:v1:shard:0000": 3}


def test_process_stops_on_stop_processing_without_acking(client):
    fill(client, shards=1, n=5)
    con = cometmp.Consumer(client, group="g")

    def handler(batch):
        raise cometmp.StopProcessing()

    assert con.process(handler, stream="*", batch_size=10) == 0
    assert con.lag("*") == {"events:v1:shard:0000": 5}


def test_process_assignment_splits_shards_without_overlap(client):
    fill(client, shards=6, n=120)
    seen = []
    for i in range(3):
        con = cometmp.Consumer(client, group="split")
        stop = threading.Event()
        mine = []

        def handler(batch, mine=mine, stop=stop):
            mine.extend(entries(batch))

        def on_batch(batch, con=con, stop=stop, i=i):
            if sum(con.lag("events:v1:shard:*")[s] for s in con.lag("events:v1:shard:*")
                   if int(s[-4:]) % 3 == i) == 0:
                stop.set()

        con.process(handler, stream="events:v1:shard:*", batch_size=7, assignment=(i, 3),
                    on_batch=on_batch, stop=stop, poll_interval=0.01)
        assert {int(s[-4:]) % 3 for s, _ in mine} == {i}
        seen += mine
    assert len(seen) == len(set(seen)) == 120


def test_async_batches_yield_as_entries_arrive(client):
    log = client.log("aio", shards=2)
    con = cometmp.Consumer(client, group="g")

    async def main():
        out = []
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: log.append_many([b"a", b"b", b"c"]))
        async for batch in con.batches("aio:shard:*", max_messages=10, wait_slice=0.05):
            out += [m.data for m in batch]
            con.ack(batch)
            if len(out) >= 3:
                return out

    assert sorted(asyncio.run(asyncio.wait_for(main(), 5))) == [b"a", b"b", b"c"]


def test_consumer_rotates_through_many_segments(data_dir):
    cfg = small_config()
    with cometmp.Client(data_dir, config=cfg) as c:
        log = c.log("r", shards=1)
        payload = os.urandom(2000)
        log.append_many([payload] * 2000)             # ~4 MiB: several 1 MiB segments
        con = cometmp.Consumer(c, group="g", zero_copy=True)
        n = 0
        while True:
            b = con.read("r:shard:*", max_messages=333, timeout=0)
            if not len(b):
                break
            assert all(bytes(v) == payload for v in b.payloads())
            n += len(b)
            con.ack(b)
        assert n == 2000


def test_closed_consumer_and_client_raise(client):
    fill(client, n=1)
    con = cometmp.Consumer(client, group="g")
    con.close()
    with pytest.raises(cometmp.ClosedError):
        con.read("*", timeout=0)


def test_a_forked_child_reattaches_and_resumes_from_the_group_offsets(client):
    # a static assignment: parent and child both read the stream (with live membership
    # the child is a new member, tests/multiprocess/test_group_members.py)
    one = (0, 1)
    fill(client, shards=1, n=10)
    con = cometmp.Consumer(client, group="g")
    con.ack(con.read("*", max_messages=4, timeout=0, assignment=one))     # acked [0, 4)
    con.read("*", max_messages=3, timeout=0, assignment=one)   # delivered 4..6, not acked
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            b = con.read("*", max_messages=100, timeout=0, assignment=one)
            os.write(w, b",".join(b"%d" % m.id.entry for m in b))
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1000)
    os.waitpid(pid, 0)
    assert got == b",".join(b"%d" % i for i in range(4, 10))
    assert [m.id.entry for m in con.read("*", max_messages=100, timeout=0, assignment=one)] == [7, 8, 9]


def test_lag_of_a_group_that_never_read_claims_nothing(client):
    fill(client, shards=1, n=7)
    con = cometmp.Consumer(client, group="observer")
    assert con.lag("*") == {"events:v1:shard:0000": 7}
    assert client.consumer_groups() == []       # inspecting does not create (or pin) a group


def test_a_running_consumer_survives_deletion_of_its_group_without_rewinding(client):
    fill(client, shards=1, n=20)
    con = cometmp.Consumer(client, group="g")
    con.ack(con.read("*", max_messages=12, timeout=0))
    assert client.delete_consumer_group("g")
    b = con.read("*", max_messages=100, timeout=0)
    assert [m.id.entry for m in b] == list(range(12, 20))   # claimed again, no rewind
    con.ack(b)
    assert [g["name"] for g in client.consumer_groups()] == ["g"]
    assert con.lag("*") == {"events:v1:shard:0000": 0}


def test_a_damaged_record_costs_only_itself_and_is_counted(data_dir, cfg):
    from conftest import oracle_walk, segment_files

    with cometmp.Client(data_dir, config=cfg) as c:
        c.append("d", [b"entry-%03d" % i + b"." * 50 for i in range(100)])
    (_base, path), = segment_files(data_dir, "d")
    recs, _ = oracle_walk(path)
    victim = recs[40]
    with open(path, "r+b") as f:                       # flip one payload byte of entry 40
        f.seek(victim.offset + 25)
        byte = f.read(1)
        f.seek(victim.offset + 25)
        f.write(bytes([byte[0] ^ 0xFF]))
    with cometmp.Client(data_dir, readonly=True) as ro:
        con = cometmp.Consumer(ro, group="g")
        got = [m.id.entry for m in con.read("d", max_messages=1000, timeout=0)]
        assert got == [e for e in range(100) if e != 40]
        assert con._cursors["d"].skipped == 1


def test_entries_larger_than_a_segment_are_read_across_rotations(data_dir):
    cfg = small_config()
    cfg.compression.min_bytes = 0
    with cometmp.Client(data_dir, config=cfg) as c:
        con = cometmp.Consumer(c, group="g", zero_copy=True)
        big = os.urandom(3 * 1024 * 1024)
        expect = []
        for i in range(4):
            small = b"small-%d" % i
            c.append("o", [small, big])
            expect += [small, big]
            got = []
            while True:
                b = con.read("o", max_messages=1, timeout=0)
                if not len(b):
                    break
                got += [bytes(v) for v in b.payloads()]
                con.ack(b)
            assert got == expect[-2:]


def test_a_read_with_a_huge_budget_costs_what_it_delivers_not_the_budget(client):
    # A batch reserves room for the entries that exist below committed, not for
    # max_messages: read(max_messages=10**6) of one new entry used to allocate and clear
    # arrays for a million entries (tens of MB of fresh pages, faulted in on the wake
    # path of every read). Minor faults are counted, not time.
    import resource

    log = client.log("budget", shards=1)
    con = cometmp.Consumer(client, group="g")
    con.read("budget:*", timeout=0)
    faults = []
    for i in range(5):
        log.append(b"e%d" % i)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        b = con.read("budget:*", max_messages=1_000_000, timeout=0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        assert [m.data for m in b] == [b"e%d" % i]
        con.ack(b)
        del b
    # a million entries' arrays are ~44 MB (>10,000 pages); one entry's fit in a few
    assert min(faults) < 64, faults


def test_a_blocked_read_discovers_a_stream_created_while_it_waits(client):
    # a wake-up returns to the streams it slept on without relisting; an idle wait slice
    # relists, so a stream that appears mid-wait (and never wakes us) is still found
    fill(client, prefix="a", shards=1, n=1)
    con = cometmp.Consumer(client, group="g")
    assert len(con.read("*", timeout=0)) == 1
    got = []
    t = threading.Thread(target=lambda: got.append(con.read("*", timeout=30.0)))
    t.start()
    client.append("b", [b"late"])
    t.join(60)
    assert not t.is_alive()
    assert [m.data for m in got[0]] == [b"late"]
