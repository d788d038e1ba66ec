"""Per-message acks in one process (issue 11 item 2): acks in any order, the ack window's
bound, nack with a delay, delivery counts, max_deliveries and the dead-letter stream,
pending(), ack_wait redelivery inside read(), process() retries through nack.
Crashes are in tests/multiprocess/test_consumer_acks_kill9.py."""

from __future__ import annotations

import random
import threading
import time
import warnings

import pytest

import cometmp
from cometmp.window import CM_WIN_ENTRIES

S = "t:shard:0000"


@pytest.fixture
def client(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        yield c


def fill(client, n):
    log = client.log("t", shards=1)
    log.append_many([b"m%d" % i for i in range(n)])
    return log


def entries(batch):
    return [m.id.entry for m in batch]


def read_until(con, want, timeout=10.0, **kw):
    """read() until ``want`` entries came back (or the bound passed): the batches."""
    got, deadline = [], time.monotonic() + timeout
    while sum(len(b) for b in got) < want and time.monotonic() < deadline:
        b = con.read("t:*", timeout=0.2, **kw)
        if len(b):
            got.append(b)
    return [m for b in got for m in b]


def test_acks_in_random_order_commit_the_contiguous_prefix_and_the_rest_is_not_redelivered(client):
    seed = random.randrange(1 << 30)
    print("seed", seed)
    rng = random.Random(seed)
    fill(client, 300)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", max_messages=300, timeout=0)
    assert entries(b) == list(range(300)) and {m.deliveries for m in b} == {1}
    order = list(range(300))
    rng.shuffle(order)
    acked = set(order[:170])
    for k in range(0, 170, 17):          # several calls, several ids each, any order
        con.ack(*[b[i] for i in order[k:k + 17]])
    prefix = next(i for i in range(301) if i not in acked)
    groups = {g["name"]: g for g in client.consumer_groups()}
    assert groups["g"]["streams"][S]["acked"] == prefix       # the committed offset
    assert con.lag("t:*") == {S: 300 - 170}
    con.close()
    con2 = cometmp.Consumer(client, group="g")
    again = read_until(con2, 300 - 170, timeout=5)
    assert entries(again) == sorted(set(range(300)) - acked)   # exactly the unacked ones


def test_every_lag_report_counts_acks_beyond_the_committed_offset(client, data_dir):
    """Consumer.lag, consumer_groups() (what `cometmp groups` prints) and the
    cometmp_consumer_lag metric all apply I43: entries acked out of order are not lag."""
    from cometmp import metrics

    fill(client, 100)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", max_messages=100, timeout=0)
    con.ack(*[m for m in b if m.id.entry % 3])       # 66 acked, the committed prefix is 0
    want = 100 - 66
    assert con.lag("t:*") == {S: want}
    (g,) = client.consumer_groups()
    assert g["streams"][S]["acked"] == 0 and g["streams"][S]["lag"] == want
    lag = [v for fam in metrics.families(data_dir) if fam.name == "cometmp_consumer_lag"
           for _labels, v in fam.samples]
    assert lag == [want]
    con.close()
    with cometmp.Client(data_dir, readonly=True) as ro:   # a readonly inspector sees the same
        assert ro.consumer_groups()[0]["streams"][S]["lag"] == want


def test_nack_with_a_delay_redelivers_after_the_delay_with_deliveries_2(client):
    fill(client, 5)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", timeout=0)
    con.ack(b[0], b[1], b[3], b[4])
    t = time.monotonic()
    con.nack(b[2], delay=0.3)
    assert len(con.read("t:*", timeout=0)) == 0              # not before the delay
    got = con.read("t:*", timeout=5)
    assert time.monotonic() - t >= 0.3
    assert [(m.id.entry, m.data, m.deliveries) for m in got] == [(2, b"m2", 2)]
    con.ack(got)
    assert con.lag("t:*") == {S: 0} and con.pending("t:*") == []


def test_max_deliveries_dead_letters_with_the_original_id_payload_and_error_then_acks(client):
    fill(client, 3)
    con = cometmp.Consumer(client, group="g", max_deliveries=2)
    assert con.dead_letter_stream == "_dead-letter.g"
    b = con.read("t:*", timeout=0)
    con.ack(b[0], b[2])
    con.nack(b[1], error=ValueError("bad row"))
    again = con.read("t:*", timeout=5)
    assert [(m.id.entry, m.deliveries) for m in again] == [(1, 2)]
    with pytest.warns(cometmp.DeadLetterWarning, match="_dead-letter.g"):
        con.nack(again[0], error="still bad")                  # the 2nd delivery failed too
    assert con.lag("t:*") == {S: 0}                            # given up on: acked
    [dl] = list(client.scan(con.dead_letter_stream))
    env, body = cometmp.deadletter.decode(dl.data)
    assert body == b"m1"
    assert (env["stream"], env["entry"], env["error"], env["attempts"]) == (S, 1, "still bad", 2)
    assert len(con.read("t:*", timeout=0.2)) == 0


def test_pending_lists_delivered_unacked_entries_with_deliveries_idle_time_and_error(client):
    fill(client, 6)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", max_messages=4, timeout=0)
    con.ack(b[1])
    time.sleep(0.05)   # idle time to measure (not a wait for a condition)
    con.nack(b[3], error="later")
    p = con.pending("t:*")
    assert [(x.id.entry, x.deliveries) for x in p] == [(0, 1), (2, 1), (3, 1)]
    assert all(0.05 <= x.idle < 5 for x in p)
    assert [x.error for x in p] == [None, None, "later"]
    assert con.pending("other:*") == []


def test_ack_wait_redelivers_idle_entries_from_inside_read(client):
    fill(client, 4)
    con = cometmp.Consumer(client, group="g", ack_wait=0.3)
    b = con.read("t:*", timeout=0)
    con.ack(b[0], b[1], b[3])
    t = time.monotonic()
    got = con.read("t:*", timeout=5)            # nothing new: the wait ends when 2 is due
    assert time.monotonic() - t >= 0.25
    assert [(m.id.entry, m.deliveries) for m in got] == [(2, 2)]
    assert con.pending("t:*")[0].error.startswith("not acknowledged within ack_wait")
    con.ack(got)
    assert con.lag("t:*") == {S: 0}


def test_ack_wait_and_max_deliveries_dead_letter_an_entry_nobody_acks(client):
    fill(client, 1)
    con = cometmp.Consumer(client, group="g", ack_wait=0.1, max_deliveries=3)
    seen = read_until(con, 3)
    assert [m.deliveries for m in seen] == [1, 2, 3]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        deadline = time.monotonic() + 10
        while con.lag("t:*")[S] and time.monotonic() < deadline:
            assert len(con.read("t:*", timeout=0.2)) == 0   # never a 4th delivery
    assert con.lag("t:*") == {S: 0}
    assert any(issubclass(x.category, cometmp.DeadLetterWarning) for x in w)
    env, body = cometmp.deadletter.decode(next(iter(client.scan("_dead-letter.g"))).data)
    assert body == b"m0" and env["attempts"] == 3 and "ack_wait" in env["error"]


def test_the_window_bounds_what_is_delivered_and_acks_beyond_it_are_refused(client):
    fill(client, CM_WIN_ENTRIES + 50)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", max_messages=CM_WIN_ENTRIES + 50, timeout=0)
    assert len(b) == CM_WIN_ENTRIES                          # I45: offset 0 + the window
    assert len(con.read("t:*", timeout=0)) == 0              # full until entry 0 is acked
    con.ack(*b[1:])
    assert len(con.read("t:*", timeout=0)) == 0
    con.ack(b[0])
    more = con.read("t:*", max_messages=100, timeout=0)
    assert entries(more) == list(range(CM_WIN_ENTRIES, CM_WIN_ENTRIES + 50))
    far = cometmp.MessageID(S, 0, CM_WIN_ENTRIES + 49)
    con2 = cometmp.Consumer(client, group="h")
    con2.read("t:*", max_messages=1, timeout=0)
    with pytest.raises(cometmp.errors.AckWindowFull, match=r"entry 4145 .*committed offset there is 0"):
        con2.ack(cometmp.MessageID(S, 0, 3), far)
    assert con2.lag("t:*") == {S: CM_WIN_ENTRIES + 50}       # all or nothing (E5)


def test_process_retries_come_back_through_nack_with_rising_deliveries(client):
    fill(client, 3)
    con = cometmp.Consumer(client, group="g")
    seen, stop = [], threading.Event()

    def handler(batch):
        seen.append([(m.id.entry, m.deliveries) for m in batch])
        if len(seen) < 3:
            raise RuntimeError("flaky")
        stop.set()

    assert con.process(handler, "t:*", batch_size=10, max_retries=5, backoff=0.001,
                       stop=stop, poll_interval=0.01) == 3
    assert seen == [[(e, d) for e in range(3)] for d in (1, 2, 3)]
    assert con.lag("t:*") == {S: 0}


def test_reset_offset_empties_the_window(client):
    fill(client, 10)
    con = cometmp.Consumer(client, group="g")
    b = con.read("t:*", timeout=0)
    con.ack(b[5], b[7])
    con.reset_offset(S, 0)
    assert entries(con.read("t:*", timeout=0)) == list(range(10))   # 5 and 7 again


def test_entries_a_departed_reader_left_unacked_come_back_counted_or_dead_lettered(client):
    fill(client, 6)
    first = cometmp.Consumer(client, group="g")
    b = first.read("t:*", max_messages=4, timeout=0)        # delivers 0..3
    first.ack(b[1])
    first.close()                                           # leaves 0, 2, 3 unacked
    nxt = cometmp.Consumer(client, group="g")
    got = nxt.read("t:*", timeout=0)
    assert [(m.id.entry, m.deliveries) for m in got] == [(0, 2), (2, 2), (3, 2), (4, 1), (5, 1)]
    nxt.close()                                             # still nothing acked but 1
    strict = cometmp.Consumer(client, group="g", max_deliveries=2)
    with pytest.warns(cometmp.DeadLetterWarning):
        got = strict.read("t:*", timeout=0)                 # 0, 2, 3 were delivered twice
    assert [(m.id.entry, m.deliveries) for m in got] == [(4, 2), (5, 2)]
    dl = [cometmp.deadletter.decode(m.data) for m in client.scan(strict.dead_letter_stream)]
    assert [(env["entry"], env["attempts"], body) for env, body in dl] == [
        (0, 2, b"m0"), (2, 2, b"m2"), (3, 2, b"m3")]
    strict.ack(got)
    assert strict.lag("t:*") == {S: 0}


def test_a_nack_that_a_close_in_another_thread_overtakes_raises_closed_error(client):
    # The interleaving the close race found (tests/multiprocess/test_close_races.py,
    # "acks"): close() lands after nack() passed its closed check and before it looks its
    # entries up, so the cursors are gone. That is ClosedError (L4), not EntryNotFound
    # ("not delivered"), which would tell the caller its own ids were wrong.
    fill(client, 10)
    con = cometmp.Consumer(client, "g")
    b = con.read("t:*", 10, timeout=0)
    assert len(b) == 10
    real_check = con._check
    calls = []

    def check_then_closed_elsewhere():
        real_check()
        if not calls:
            calls.append(1)
            con.close()          # what another thread's close() does at this instant

    con._check = check_then_closed_elsewhere
    with pytest.raises(cometmp.ClosedError):
        con.nack(*list(b)[5:])


def test_a_cursor_made_while_a_close_runs_is_closed_not_left_mapped(client):
    # close() sets the closed flag, then closes and clears the cursors; a call in another
    # thread that had passed its own check may still be making a cursor. That cursor is
    # closed and ClosedError raised, so no state page stays mapped after close (L4).
    fill(client, 3)
    con = cometmp.Consumer(client, "g")
    con.close()
    with pytest.raises(cometmp.ClosedError):
        con._cursor(S)          # what that call in the other thread does next
    assert con._cursors == {}
