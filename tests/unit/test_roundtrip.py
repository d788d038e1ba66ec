"""Payloads come back byte-exact, across segment rotation, reopen and compression."""

from __future__ import annotations

import os

import zstandard

import cometmp
from cometmp import format as fmt

from conftest import MiB, oracle_walk, payload_for, segment_files, small_config

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def edge_payloads() -> list[bytes]:
    return [
        b"",
        b"\x00",
        b"x",
        payload_for("big", 0, 1 * MiB),                  # larger than a 1 MiB segment's room
        ZSTD_MAGIC,                                      # only the magic
        ZSTD_MAGIC + b"not a zstd frame",                # looks compressed, is not
        zstandard.ZstdCompressor().compress(b"hello" * 100),  # a real zstd frame, stored verbatim
        b"\x00" * 19,                                    # shorter than a frame header, all zero
        b"\x00" * 4096,                                  # zeros, compressible
        payload_for("mid", 1, 300 * 1024),
        b"",
    ]


def test_edge_payloads_round_trip_byte_exact_across_rotation_and_reopen(data_dir):
    cfg = small_config()
    payloads = edge_payloads() * 3  # three 1 MiB payloads force several rotations
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("rt", shards=1)
        ids = [lg.append(p) for p in payloads[:12]]
        ids += list(lg.append_many(payloads[12:]))
        stream = ids[0].stream
        assert [i.entry for i in ids] == list(range(len(payloads)))
        for i, p in zip(ids, payloads):                  # before reopen
            assert c.read(stream, i.entry).data == p
    assert len(segment_files(data_dir, stream)) >= 4     # rotation really happened
    for readonly in (True, False):
        with cometmp.Client(data_dir, config=cfg, readonly=readonly) as c:
            got = list(c.scan(stream))
            assert [m.data for m in got] == payloads
            assert [m.id.entry for m in got] == list(range(len(payloads)))
            for i, p in zip(ids, payloads):
                m = c.read(stream, i.entry)
                assert m.data == p and type(m.data) is bytes
                assert m.id == i
            assert c.length(stream) == len(payloads)
    # appends after reopen continue the numbering and round-trip too
    with cometmp.Client(data_dir, config=cfg) as c:
        more = c.log("rt", shards=1).append_many(payloads[:4])
        assert [m.entry for m in more] == list(range(len(payloads), len(payloads) + 4))
    with cometmp.Client(data_dir, readonly=True) as c:
        assert [m.data for m in c.scan(stream)] == payloads + payloads[:4]


def test_zstd_magic_payload_is_stored_verbatim_without_compression_flag(data_dir):
    cfg = small_config()
    cfg.compression.min_bytes = 1  # every payload is a compression candidate
    frame = zstandard.ZstdCompressor().compress(os.urandom(64))  # incompressible frame
    with cometmp.Client(data_dir, config=cfg) as c:
        mid = c.log("z", shards=1).append(frame)
        assert c.read(mid.stream, mid.entry).data == frame
    (recs, damage), = [oracle_walk(p) for _, p in segment_files(data_dir, mid.stream)]
    assert not damage
    assert recs[0].payload == frame and not recs[0].compressed


def test_compressible_payload_is_stored_compressed_and_round_trips(data_dir):
    cfg = small_config()
    cfg.compression.min_bytes = 4096
    big = b"cometmp " * 8192           # 64 KiB, very compressible
    small = b"a" * 4095                # below the threshold: verbatim
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("c", shards=1)
        ids = [lg.append(big), lg.append(small)] + list(lg.append_many([big, small]))
        stream = ids[0].stream
        assert [c.read(stream, i.entry).data for i in ids] == [big, small, big, small]
    with cometmp.Client(data_dir, readonly=True) as c:
        assert [m.data for m in c.scan(stream)] == [big, small, big, small]
    (recs, damage), = [oracle_walk(p) for _, p in segment_files(data_dir, stream)]
    assert not damage
    assert [r.compressed for r in recs] == [True, False, True, False]
    assert len(recs[0].payload) < len(big)
    assert zstandard.ZstdDecompressor().decompress(recs[0].payload) == big
    assert recs[1].payload == small


def test_compressed_form_is_kept_only_when_smaller(data_dir):
    cfg = small_config()
    cfg.compression.min_bytes = 16
    noise = os.urandom(64 * 1024)      # zstd output would be larger than the input
    with cometmp.Client(data_dir, config=cfg) as c:
        mid = c.log("n", shards=1).append(noise)
        assert c.read(mid.stream, mid.entry).data == noise
    (recs, _), = [oracle_walk(p) for _, p in segment_files(data_dir, mid.stream)]
    assert not recs[0].compressed and recs[0].payload == noise


def test_compression_disabled_stores_everything_verbatim(data_dir):
    cfg = small_config()
    cfg.compression.min_bytes = 0
    big = b"z" * 100_000
    with cometmp.Client(data_dir, config=cfg) as c:
        mid = c.log("v", shards=1).append(big)
        assert c.read(mid.stream, mid.entry).data == big
    (recs, _), = [oracle_walk(p) for _, p in segment_files(data_dir, mid.stream)]
    assert not recs[0].compressed and recs[0].payload == big


def test_bytes_like_payloads_are_accepted_and_copied(data_dir, cfg):
    buf = bytearray(b"mutable")
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("b", shards=1)
        ids = [lg.append(buf), lg.append(memoryview(b"view")), lg.append(memoryview(b"xsliced")[1:])]
        buf[:] = b"changed"                # the log holds a copy, not a reference
        assert [c.read(i.stream, i.entry).data for i in ids] == [b"mutable", b"view", b"sliced"]


def test_timestamps_never_decrease_within_a_stream(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("t", shards=1)
        for i in range(300):
            if i % 3:
                lg.append(b"%d" % i)
            else:
                lg.append_many([b"a", b"b", b"c"])
        stream = lg.streams[0]
    with cometmp.Client(data_dir, config=cfg) as c:   # and across a reopen
        c.log("t", shards=1).append(b"after")
        ts = [m.timestamp_ns for m in c.scan(stream)]
    assert len(ts) == 200 * 1 + 100 * 3 + 1
    assert all(a <= b for a, b in zip(ts, ts[1:]))
    assert ts[0] > 1_600_000_000 * 10**9                # wall-clock nanoseconds


def test_timestamps_of_one_append_many_are_equal_and_the_oracle_agrees(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        ids = c.log("t", shards=1).append_many([b"1", b"2", b"3"])
        msgs = [c.read(ids.stream, i.entry) for i in ids]
    (recs, _), = [oracle_walk(p) for _, p in segment_files(data_dir, ids.stream)]
    assert [r.ts_ns for r in recs] == [m.timestamp_ns for m in msgs]
    assert len({m.timestamp_ns for m in msgs}) == 1


def test_entries_are_dense_from_zero_and_segments_are_named_by_first_entry(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("d", shards=1)
        n = 0
        for k in range(40):
            ids = lg.append_many([payload_for("d", n + j, 9000) for j in range(10)])
            assert ids.first == n and len(ids) == 10
            n += 10
        stream = lg.streams[0]
    segs = segment_files(data_dir, stream)
    assert len(segs) >= 3
    expect_seq_start = 0
    for base, path in segs:
        recs, damage = oracle_walk(path)
        assert not damage
        assert base == expect_seq_start                 # named by the first entry it holds
        assert [r.seq for r in recs] == list(range(len(recs)))
        with open(path, "rb") as f:
            h = fmt.parse_segment_header(f.read(fmt.CM_SEG_HEADER_BYTES))
        assert h.base == base and h.capacity == os.path.getsize(path)
        expect_seq_start += len(recs)
    assert expect_seq_start == n


def test_list_recent_and_seek_time(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("r", shards=1)
        for i in range(50):
            lg.append(b"%d" % i)
        s = lg.streams[0]
        recent = c.list_recent(s, 5)
        assert [m.data for m in recent] == [b"%d" % i for i in range(45, 50)]
        assert c.list_recent(s, 0) == []
        msgs = list(c.scan(s))
        for m in msgs[::7]:
            e = c.seek_time(s, m.timestamp_ns)
            assert msgs[e].timestamp_ns == m.timestamp_ns and e <= m.id.entry
        assert c.seek_time(s, msgs[-1].timestamp_ns + 1) == 50
        assert c.seek_time(s, 0) == 0


def test_reading_a_missing_entry_raises_entry_not_found(data_dir, cfg):
    with cometmp.Client(data_dir, config=cfg) as c:
        mid = c.log("m", shards=1).append(b"x")
        for bad in (1, 2, 10**12, -1):
            try:
                c.read(mid.stream, bad)
            except cometmp.EntryNotFound as e:
                assert isinstance(e, KeyError) and isinstance(e, cometmp.CometError)
            else:
                raise AssertionError(f"read of entry {bad} did not raise")


def test_timestamps_are_clamped_when_the_clock_is_behind_the_last_record(data_dir, cfg):
    """A wall clock stepped back (simulated: the last record was written while the clock
    was an hour ahead: its frame is rewritten with that time, a valid frame) never makes
    timestamps go backwards across a restart (I6: the files' last record sets the floor);
    the clamp is counted."""
    import time

    from oracle import Binding, walk_segment

    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("clk", shards=1)
        lg.append(b"a")
        lg.append(b"a2")
        stream = lg.streams[0]
    future = time.time_ns() + 3600 * 10**9
    (base, path), = segment_files(data_dir, stream)
    with open(path, "r+b") as f:
        buf = f.read()
        last = [r for r in walk_segment(buf) if not hasattr(r, "reason")][-1]
        b = Binding.of(buf)
        frame = fmt.encode_record(last.payload, future, last.seq, last.flags,
                                  stream_id=b.stream_id if b.version > 1 else None, base=base)
        assert len(frame) == last.frame_bytes
        f.seek(last.offset)
        f.write(frame)
    with cometmp.Client(data_dir, config=cfg) as c:
        lg = c.log("clk", shards=1)
        lg.append(b"b")
        lg.append_many([b"c", b"d"])
        ts = [m.timestamp_ns for m in c.scan(stream)]
        assert ts[1:] == [future] * 4 and ts[0] < future
        assert c.stats()["streams"][stream]["counters"]["clock_clamps"] >= 2


def test_durability_modes_round_trip_and_sync(data_dir):
    for mode in ("none", "interval", "always"):
        cfg = small_config(durability=mode)
        root = os.path.join(data_dir, mode)
        with cometmp.Client(root, config=cfg) as c:
            lg = c.log("dur", shards=1)
            ids = [lg.append(b"%d" % i) for i in range(20)]
            c.sync()
            fsyncs = c.stats()["streams"][lg.streams[0]]["counters"]["fsyncs"]
            assert fsyncs >= (20 if mode == "always" else 1), (mode, fsyncs)
        with cometmp.Client(root, readonly=True) as c:
            assert [m.data for m in c.scan(ids[0].stream)] == [b"%d" % i for i in range(20)]


def test_an_entry_is_readable_as_soon_as_append_returns_after_reading_a_stopped_stream(tmp_path):
    """A Client that reads a stream no writer holds (the files decide its length, I27a)
    and then appends to it reads what it appended at once, not one recheck later."""
    root = str(tmp_path / "log")
    with cometmp.Client(root) as c:
        c.append("s", [b"%d" % i for i in range(100)])
    with cometmp.Client(root) as c:
        assert c.read("s", 99).data == b"99"          # no writer here yet: the files
        assert c.length("s") == 100
        for i in range(100, 110):
            e = c.append("s", [b"%d" % i])[0].entry
            assert e == i and c.read("s", e).data == b"%d" % i and c.length("s") == i + 1
