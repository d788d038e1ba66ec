"""Live membership in one process (cometmp.members, I41a-d): each Consumer is its own
member (its own open file description, so its own OFD locks). Real files, real locks;
the multi-process behaviour (kill -9, joins under load) is in
tests/multiprocess/test_group_members.py."""

from __future__ import annotations

import os
import struct

import pytest

import cometmp
from cometmp import members
from conftest import wait_until

BOUND = 10.0


@pytest.fixture
def client(data_dir):
    with cometmp.Client(data_dir) as c:
        yield c


def _fill(client, streams=4, n=5):
    for k in range(streams):
        client.append(f"s{k}", [b"%d" % i for i in range(n)])


def _read_until(con, pred, what, pattern="s*"):
    """read() (each call refreshes when due) until ``pred()``."""
    def step():
        con.read(pattern, timeout=0.02)
        return pred()
    return wait_until(step, BOUND, what)


def _live(root):
    return [r for rs in members.group_members(root).values() for r in rs if r.live]


def test_a_second_member_gets_nothing_a_live_member_holds_until_it_released_it(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    first = a.read("s*", max_messages=100, timeout=0)      # delivered, not acked
    assert {m.id.stream for m in first} == {"s0", "s1", "s2", "s3"} == set(a.assigned())
    b = cometmp.Consumer(client, group="g")
    assert len(b.read("s*", timeout=0)) == 0                  # everything is a's (I41d)
    # a keeps reading: it stops delivering what HRW gives b but keeps it while unacked
    _read_until(a, lambda: a._membership.leaving, "a to see b and mark b's share leaving")
    gives_b = set(a._membership.leaving)
    assert len(a.read("s*", timeout=0)) == 0 and gives_b <= set(a.assigned())
    assert len(b.read("s*", timeout=0)) == 0 and b.assigned() == []
    a.ack(first)
    _read_until(a, lambda: set(a.assigned()) == {"s0", "s1", "s2", "s3"} - gives_b,
                "a to release b's share once acked")
    _read_until(b, lambda: set(b.assigned()) == gives_b, "b to claim its share", )
    got = b.read("s*", max_messages=100, timeout=0)
    assert len(got) == 0   # resumed from the acked offset: nothing is redelivered
    client.append("s0", [b"new"])
    client.append("s3", [b"new"])
    late = [m.id.stream for c in (a, b) for m in c.read("s*", timeout=0)]
    assert sorted(late) == ["s0", "s3"]                       # each to exactly one member


def test_close_leaves_and_the_other_member_takes_everything_from_the_acked_offset(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    acked = a.read("s*", max_messages=2, timeout=0)
    a.ack(acked)                                              # 2 entries acked
    a.read("s*", max_messages=3, timeout=0)                   # 3 more delivered, unacked
    b = cometmp.Consumer(client, group="g")
    assert len(b.read("s*", timeout=0)) == 0
    a.close()                                                 # releases even unacked streams
    got = []

    def step():
        got.extend((m.id.stream, m.id.entry) for m in b.read("s*", max_messages=100, timeout=0.02))
        return len(b.assigned()) == 4 and len(got) >= 18
    wait_until(step, BOUND, "b to claim every stream and read what the group had not acked")
    assert len(b.read("s*", timeout=0)) == 0
    everything = {(f"s{k}", i) for k in range(4) for i in range(5)}
    assert sorted(got) == sorted(everything - {(m.id.stream, m.id.entry) for m in acked})


def test_static_assignment_and_readonly_clients_are_not_members_and_read_their_share(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    a.read("s*", timeout=0)                                   # a live member holding all
    static = cometmp.Consumer(client, group="g")
    assert len(static.read("s*", max_messages=100, timeout=0, assignment=(0, 1))) == 20
    with cometmp.Client(client.path, readonly=True) as ro:
        view = cometmp.Consumer(ro, group="g")
        assert len(view.read("s*", max_messages=100, timeout=0)) == 20
        assert view.assigned() == ["s0", "s1", "s2", "s3"]
    assert [r.member_id for r in _live(client.path)] == [a._membership.member_id]


def test_a_stream_created_later_goes_to_exactly_one_member(client):
    _fill(client, streams=2)
    a = cometmp.Consumer(client, group="g")
    b = cometmp.Consumer(client, group="g")
    for c in (a, b):
        c.ack(c.read("s*", max_messages=100, timeout=0))
    client.append("s9", [b"late"])
    got: list = []

    def delivered():
        for c in (a, b):
            b_ = c.read("s*", timeout=0.02)
            got.extend((c, m.id.stream) for m in b_)
            c.ack(b_)
        return [x for x in got if x[1] == "s9"]

    (hit,) = wait_until(delivered, BOUND, "the new stream to be delivered")
    recs = {r.member_id: r.patterns for r in _live(client.path)}
    names = [f"s{k}" for k in range(2)] + ["s9"]
    assert hit[0]._membership.member_id == members.assign(names, recs)["s9"]


def test_the_65th_member_of_a_group_raises_membership_error_naming_file_and_group(client):
    _fill(client, streams=1)
    cons = [cometmp.Consumer(client, group="crowd") for _ in range(members.CM_MMB_MEMBER_CAP)]
    for c in cons:
        c.read("s*", timeout=0)
    extra = cometmp.Consumer(client, group="crowd")
    with pytest.raises(cometmp.MembershipError, match=r"members.*'crowd'.*64 live members"):
        extra.read("s*", timeout=0)
    cons[0].close()                                           # a free record: it can join now
    extra.read("s*", timeout=0)
    assert len(_live(client.path)) == members.CM_MMB_MEMBER_CAP


def test_a_member_record_nobody_locks_is_reaped_as_dead(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    a.read("s*", timeout=0)
    a._membership.file.close()      # what the kernel does at kill -9: the OFD lock is gone
    b = cometmp.Consumer(client, group="g")
    _read_until(b, lambda: len(b.assigned()) == 4, "b to take the dead member's streams")
    assert [r.member_id for r in _live(client.path)] == [b._membership.member_id]


def test_a_members_file_with_another_magic_or_a_damaged_record_is_a_clear_error(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    a.read("s*", timeout=0)
    path = members.members_path(client.path)
    k = a._membership.k
    gi = a._membership.group_ref.index
    with open(path, "r+b") as f:
        f.seek(members.record_offset(gi, k))
        f.write(struct.pack("=I", 7))                         # a state no writer stores
    with pytest.raises(cometmp.CorruptRecord, match=rf"{path}: member record {k} .*state 7"):
        members.group_members(client.path)
    a.close()
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    with pytest.raises(cometmp.FormatError, match=rf"{path}: magic 0x58585858"):
        cometmp.Consumer(client, group="g").read("s*", timeout=0)
    os.truncate(path, 4096)
    with pytest.raises(cometmp.FormatError, match=rf"{path}: members file is 4096 bytes"):
        cometmp.Consumer(client, group="g").read("s*", timeout=0)


def test_a_member_of_a_group_deleted_under_it_joins_the_group_claimed_again(client):
    _fill(client)
    a = cometmp.Consumer(client, group="g")
    a.ack(a.read("s*", max_messages=100, timeout=0))
    old = a._membership.group_ref
    assert client.delete_consumer_group("g") is True
    client.append("s0", [b"after"])
    got = _read_until(a, lambda: a._membership.group_ref not in (None, old) and len(a.assigned()) == 4,
                      "the member to rejoin the group claimed again")
    assert got
    recs = members.group_members(client.path)
    assert [r.member_id for r in recs.get(old.id, []) if r.live] == []   # left the old table
    assert [r.member_id for r in recs[a._membership.group_ref.id] if r.live] == [a._membership.member_id]


# ---- the assignment: rendezvous weights with bounded loads (I41c) -------------------------

SHARDS8 = [f"g:shard:{n:04d}" for n in range(8)]


def _loads(owners):
    out: dict[int, int] = {}
    for mid in owners.values():
        out[mid] = out.get(mid, 0) + 1
    return out


def test_two_members_get_four_of_eight_shards_each_where_plain_hrw_gives_one_and_seven():
    plain = {s: max((1, 2), key=lambda m: members.hrw_weight(m, s)) for s in SHARDS8}
    assert sorted(_loads(plain).values()) == [1, 7]        # why 2 members scaled 8/7, not 2
    owners = members.assign(SHARDS8, {1: ("g:*",), 2: ("g:*",)})
    assert set(owners) == set(SHARDS8) and _loads(owners) == {1: 4, 2: 4}
    three = members.assign(SHARDS8, {1: ("g:*",), 2: ("g:*",), 3: ("g:*",)})
    assert sorted(_loads(three).values()) == [2, 3, 3]
    assert members.assign(list(reversed(SHARDS8)), {2: ("g:*",), 1: ("g:*",)}) == owners


def test_the_bound_holds_within_each_set_of_members_whose_patterns_match():
    streams = [f"a{k}" for k in range(6)] + [f"b{k}" for k in range(4)] + ["zzz"]
    owners = members.assign(streams, {1: ("a*",), 2: ("*",), 3: ("a*", "b*")})
    a = _loads({s: m for s, m in owners.items() if s.startswith("a")})
    b = _loads({s: m for s, m in owners.items() if s.startswith("b")})
    assert a == {1: 2, 2: 2, 3: 2}                          # 6 streams, 3 candidates
    assert b == {2: 2, 3: 2}                                # member 1 does not match b*
    assert owners["zzz"] == 2                               # only member 2 matches it
    assert "nobody" not in members.assign(["nobody"], {1: ("a*",)})


def test_a_join_moves_the_joiners_share_and_few_more():
    streams = [f"s:shard:{n:04d}" for n in range(64)]
    four = members.assign(streams, {m: ("s:*",) for m in (1, 2, 3, 4)})
    five = members.assign(streams, {m: ("s:*",) for m in (1, 2, 3, 4, 5)})
    assert sorted(_loads(five).values()) == [12, 13, 13, 13, 13]
    moved = [s for s in streams if four[s] != five[s]]
    to_joiner = [s for s in moved if five[s] == 5]
    assert len(moved) - len(to_joiner) <= len(streams) // 8   # sticky: not a reshuffle


def test_two_consumers_of_one_family_hold_four_shards_each(client):
    lg = client.log("g", 8)   # member ids 1 and 2: plain HRW would give them 1 and 7
    for s in lg.streams:
        client.append(s, [b"x"])
    a = cometmp.Consumer(client, group="g")
    b = cometmp.Consumer(client, group="g")

    def step():
        for c in (a, b):
            c.ack(c.read("g:*", max_messages=100, timeout=0.02))
        return len(a.assigned()) == 4 and len(b.assigned()) == 4
    wait_until(step, BOUND, "the two members to hold 4 shards each")
    assert {a._membership.member_id, b._membership.member_id} == {1, 2}
    assert set(a.assigned()) | set(b.assigned()) == set(lg.streams)
