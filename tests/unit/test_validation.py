"""Bad input is rejected with the documented exception and leaves the log untouched."""

from __future__ import annotations

import logging
import mmap
import os

import re

import pytest

import cometmp
from cometmp.logging import CometHandler
from cometmp.tools import verify

from conftest import small_config, tree_fingerprint

BAD_NAMES = [
    "a/b", "/abs", "a\\b", "..", "a..b", "../escape", "x/../../y", "nul\x00byte", "\x00",
    "", "x" * 201, ".hidden", "-dash", "sp ace", "tab\t", "new\nline", "ünï", "*", "a?b",
    "trailing\n", "ev:shard:0001\n", "\n", "x\r",
]
NON_STR_NAMES = [None, 7, b"bytes", 1.5, ("a",)]


@pytest.mark.parametrize("name", BAD_NAMES + NON_STR_NAMES, ids=repr)
def test_bad_stream_names_raise_bad_stream_name_and_create_nothing(tmp_path, name):
    root = str(tmp_path / "d")
    with cometmp.Client(root, config=small_config()) as c:
        before = tree_fingerprint(str(tmp_path))
        for call in (lambda: c.append(name, b"x"), lambda: c.log(name, shards=2),
                     lambda: c.read(name, 0), lambda: c.pick_shard_stream(name, "k", 4),
                     lambda: list(c.scan(name))):
            with pytest.raises(cometmp.BadStreamName) as ei:
                call()
            assert isinstance(ei.value, ValueError) and isinstance(ei.value, cometmp.CometError)
            assert str(ei.value)                       # names the problem
        assert tree_fingerprint(str(tmp_path)) == before


def test_unhashable_stream_name_raises_bad_stream_name_on_read(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        with pytest.raises(cometmp.BadStreamName):
            c.read(["a"], 0)


def test_stream_name_length_limit_is_inclusive(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        ok = "s" * 200
        assert c.append(ok, b"x")[0].entry == 0
        with pytest.raises(cometmp.BadStreamName):
            c.append("s" * 201, b"x")
        # a family whose shard names would exceed the limit is refused up front
        with pytest.raises(cometmp.BadStreamName):
            c.log("f" * 195, shards=2)


def test_family_and_plain_streams_are_namespaced_by_prefix(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        a = c.log("events:v1", shards=4).append(b"A", key="k")
        b = c.log("logs", shards=4).append(b"B", key="k")
        assert a.stream == f"events:v1:shard:{a.shard:04d}" and b.stream == f"logs:shard:{b.shard:04d}"
        assert a.shard == b.shard and a.stream != b.stream
        assert c.read(a.stream, 0).data == b"A" and c.read(b.stream, 0).data == b"B"
        assert c.streams("events:v1:shard:*") == [f"events:v1:shard:{n:04d}" for n in range(4)]
        assert len(c.streams()) == 8


@pytest.mark.parametrize("bad", ["text", 12, None, 3.5, object(), ["a"], [b"a"]], ids=repr)
def test_non_bytes_payloads_raise_type_error_and_write_nothing(tmp_path, bad):
    root = str(tmp_path / "d")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("t", shards=1)
        lg.append(b"first")
        s = lg.streams[0]
        with pytest.raises(TypeError):
            lg.append(bad)
        with pytest.raises(TypeError):
            c.append(s, bad if not isinstance(bad, list) else [bad])
        assert c.length(s) == 1
        assert [m.data for m in c.scan(s)] == [b"first"]


def test_append_many_with_one_bad_item_writes_nothing(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        lg = c.log("t", shards=1)
        with pytest.raises(TypeError):
            lg.append_many([b"ok", b"ok", "not bytes", b"ok"])
        assert c.length(lg.streams[0]) == 0
        assert lg.append(b"next").entry == 0


def test_oversized_entry_raises_entry_too_large_and_writes_nothing(tmp_path):
    cfg = small_config(max_entry_bytes=1000)
    root = str(tmp_path / "d")
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("big", shards=1)
        lg.append(b"kept")
        s = lg.streams[0]
    before = tree_fingerprint(root)
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("big", shards=1)
        noise = os.urandom(1001)                         # incompressible: stays 1001 bytes
        for call in (lambda: lg.append(noise), lambda: lg.append_many([b"ok", noise]),
                     lambda: c.append(s, [b"ok", noise])):
            with pytest.raises(cometmp.EntryTooLarge) as ei:
                call()
            assert isinstance(ei.value, ValueError)
            assert "1001" in str(ei.value) and "1000" in str(ei.value)
        assert c.length(s) == 1
        assert lg.append(os.urandom(1000)).entry == 1   # the limit itself is allowed
    after = tree_fingerprint(root)
    seg = [p for p in before if p.endswith(".seg")]
    assert len(seg) == 1 and before[seg[0]][1] == after[seg[0]][1]   # segment never changes size


def test_entry_larger_than_a_segment_gets_its_own_segment(tmp_path):
    cfg = small_config(max_entry_bytes=3 << 20)
    root = str(tmp_path / "d")
    big = os.urandom((2 << 20) + 17)
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("huge", shards=1)
        ids = list(lg.append_many([b"a", big, b"b"]))
        assert [i.entry for i in ids] == [0, 1, 2]
        assert [m.data for m in c.scan(lg.streams[0])] == [b"a", big, b"b"]
    segs = sorted(os.listdir(os.path.join(root, "streams", "huge:shard:0000")))
    sizes = {n: os.path.getsize(os.path.join(root, "streams", "huge:shard:0000", n))
             for n in segs if n.endswith(".seg")}
    assert sizes[f"{1:020d}.seg"] >= len(big) + 20 + 64 and sizes[f"{1:020d}.seg"] % 4096 == 0
    assert sizes[f"{0:020d}.seg"] == 1 << 20


def test_family_reopened_with_another_shard_count_raises(tmp_path):
    root = str(tmp_path / "d")
    with cometmp.Client(root, config=small_config()) as c:
        c.log("fam", shards=4).append(b"x", key="k")
        with pytest.raises(cometmp.ShardCountMismatch) as ei:
            c.log("fam", shards=8)
        assert isinstance(ei.value, ValueError) and "4" in str(ei.value)
        assert c.log("fam", shards=4).shards == 4
    before = tree_fingerprint(root)
    with cometmp.Client(root, config=small_config()) as c:
        for n in (1, 3, 5, 16):
            with pytest.raises(cometmp.ShardCountMismatch):
                c.log("fam", shards=n)
        assert c.family_shards("fam") == 4
        # writing beyond the family's shards through the explicit-stream API is refused too
        with pytest.raises(cometmp.BadStreamName):
            c.append("fam:shard:0004", b"x")
    after = tree_fingerprint(root)
    assert {p for p in after} == {p for p in before}   # no new shard directories


@pytest.mark.parametrize("bad", [0, -1, 65537, 2.0, True, "4", None])
def test_log_rejects_bad_shard_counts(tmp_path, bad):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        with pytest.raises(ValueError):
            c.log("fam", shards=bad)


def test_closed_client_raises_closed_error(tmp_path):
    c = cometmp.Client(str(tmp_path / "d"), config=small_config())
    lg = c.log("x", shards=1)
    lg.append(b"a")
    c.close()
    c.close()                                            # idempotent
    with pytest.raises(cometmp.ClosedError):
        lg.append(b"b")
    with pytest.raises(cometmp.ClosedError):
        c.read("x:shard:0000", 0)


def test_data_directory_is_created_private(tmp_path):
    root = str(tmp_path / "new" / "d")
    with cometmp.Client(root, config=small_config()) as c:
        c.log("p", shards=1).append(b"x")
    assert os.stat(root).st_mode & 0o777 == 0o700


def test_append_many_of_a_generator_that_fails_writes_nothing(tmp_path):
    def items():
        yield b"a"
        yield b"b"
        raise RuntimeError("producer failed")

    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        lg = c.log("g", shards=1)
        with pytest.raises(RuntimeError):
            lg.append_many(items())
        assert c.length(lg.streams[0]) == 0
        assert len(lg.append_many([])) == 0 and c.append(lg.streams[0], []) == []
        assert lg.append_many(iter([b"x", b"y"])).first == 0


def test_unknown_stream_raises_stream_not_found(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        for call in (lambda: c.read("nope", 0), lambda: list(c.scan("nope")), lambda: c.length("nope")):
            with pytest.raises(cometmp.StreamNotFound) as ei:
                call()
            assert isinstance(ei.value, KeyError) and "nope" in str(ei.value)


@pytest.mark.parametrize("group", ["g\n", "", "nul\x00", "x" * 1025])
def test_bad_group_names_are_refused_naming_the_rule(tmp_path, group):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        with pytest.raises(cometmp.BadGroupName) as ei:
            cometmp.Consumer(c, group=group)
        assert "group name" in str(ei.value)


def test_ack_beyond_the_stream_length_is_refused_and_skips_nothing(tmp_path):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        lg = c.log("ev", shards=1)
        ids = lg.append_many([b"e%d" % i for i in range(5)])
        con = cometmp.Consumer(c, group="g")
        batch = con.read("ev:shard:*", max_messages=2, timeout=0)
        con.ack(batch)
        far = cometmp.MessageID(ids.stream, 0, 10**6)
        for bad in (far, cometmp.MessageID(ids.stream, 0, 5)):
            with pytest.raises(cometmp.EntryNotFound) as ei:
                con.ack(bad)
            assert ids.stream in str(ei.value) and "5 entries" in str(ei.value)
        assert con.lag() == {ids.stream: 3}                 # nothing was acknowledged
        lg.append_many([b"later%d" % i for i in range(3)])
        got = [m.data for m in con.read("ev:shard:*", max_messages=100, timeout=0)]
        assert got == [b"e2", b"e3", b"e4", b"later0", b"later1", b"later2"]
        con.close()


@pytest.mark.parametrize("path", ["", b""])
def test_an_empty_client_path_is_refused_not_taken_as_the_working_directory(
        tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    for readonly in (False, True):
        with pytest.raises(cometmp.InvalidPath) as ei:
            cometmp.Client(path, readonly=readonly)
        assert isinstance(ei.value, ValueError) and "empty" in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_readonly_open_of_a_directory_without_marker_is_data_directory_not_found(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "streams").mkdir()
    before = tree_fingerprint(str(tmp_path))
    for open_it in (lambda: cometmp.Client(str(plain), readonly=True),
                    lambda: verify.check_data_directory(str(plain))):
        with pytest.raises(cometmp.DataDirectoryNotFound) as ei:
            open_it()
        assert "cometmp.json" in str(ei.value) and str(plain) in str(ei.value)
    with pytest.raises(cometmp.DataDirectoryNotFound):
        cometmp.Client(str(tmp_path / "missing"), readonly=True)
    assert tree_fingerprint(str(tmp_path)) == before


@pytest.mark.parametrize("changes, names", [
    ({"storage.segment_bytes": 1 << 20, "storage.preallocate_bytes": 2 << 20},
     ("storage.preallocate_bytes", "storage.segment_bytes")),
    ({"storage.segment_bytes": 1 << 32, "storage.preallocate_bytes": 1 << 32},
     ("storage.preallocate_bytes",)),
    ({"storage.segment_bytes": 1 << 20, "indexing.interval_bytes": 2 << 20},
     ("indexing.interval_bytes", "storage.segment_bytes")),
    ({"retention.max_total_bytes": 10 << 20, "retention.hard_max_total_bytes": 5 << 20},
     ("retention.max_total_bytes", "retention.hard_max_total_bytes")),
    ({"concurrency.strict_ownership": "yes"}, ("concurrency.strict_ownership",)),
    ({"storage.durability": ["none"]}, ("storage.durability",)),
    ({"storage.fsync_every_seconds": float("nan")}, ("storage.fsync_every_seconds",)),
    ({"retention.hard_min_free_ratio": 0.9}, ("retention.hard_min_free_ratio",)),
    ({"compression.level": 99}, ("compression.level",)),
    ({"storage": None}, ("Config.storage",)),
])
def test_out_of_range_config_combinations_are_refused_naming_the_fields(tmp_path, changes,
                                                                         names):
    cfg = cometmp.Config()
    for dotted, value in changes.items():
        if "." in dotted:
            section, field = dotted.split(".")
            setattr(getattr(cfg, section), field, value)
        else:
            setattr(cfg, dotted, value)
    with pytest.raises(cometmp.ConfigError) as ei:
        cometmp.Client(str(tmp_path / "d"), config=cfg)
    assert isinstance(ei.value, ValueError)
    for n in names:
        assert n in str(ei.value), (n, str(ei.value))
    assert not (tmp_path / "d").exists()


def test_oversized_record_through_the_logging_handler_is_entry_too_large(tmp_path):
    cfg = small_config(max_entry_bytes=1000)
    seen = []

    class Recording(CometHandler):
        def handleError(self, record):   # noqa: N802 - logging's name
            import sys
            seen.append(sys.exc_info()[1])

    h = Recording(str(tmp_path / "d"), stream="logs", config=cfg)
    logger = logging.getLogger("cometmp-test-oversized")
    logger.propagate = False
    logger.addHandler(h)
    try:
        logger.error("%s", os.urandom(800).hex())        # 1600 bytes of text, incompressible
        logger.error("small")
    finally:
        logger.removeHandler(h)
        h.close()
    assert len(seen) == 1 and isinstance(seen[0], cometmp.EntryTooLarge), seen
    with cometmp.Client(str(tmp_path / "d"), readonly=True) as c:
        assert [m.data for m in c.scan("logs")] == [b"small"]


@pytest.fixture
def view_over_4gib(tmp_path):
    """A memoryview of 4 GiB + 5 bytes over a sparse file: no RAM, no disk blocks."""
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate((1 << 32) + 5)
    fd = os.open(p, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    mv = memoryview(mm)
    yield mv
    mv.release()
    mm.close()


def assert_every_append_path_refuses(c, lg, big) -> None:
    s = lg.streams[0]
    before = (c.length(s), c.length("plain") if "plain" in c.streams() else 0)
    for call in (lambda: lg.append(big), lambda: lg.append_many([b"ok", big]),
                 lambda: c.append("plain", big), lambda: c.append("plain", [b"ok", big])):
        with pytest.raises(cometmp.EntryTooLarge) as ei:
            call()
        assert str((1 << 32) + 5) in str(ei.value) or str(len(big)) in str(ei.value)
        assert "nothing was written" in str(ei.value)
    assert (c.length(s), c.length("plain") if "plain" in c.streams() else 0) == before


def test_payload_over_4_gib_is_refused_not_narrowed_to_its_low_32_bits(tmp_path, view_over_4gib):
    cfg = small_config(max_entry_bytes=1 << 30)
    with cometmp.Client(str(tmp_path / "d"), config=cfg) as c:
        lg = c.log("huge", shards=1)
        c.append("plain", b"first")
        assert_every_append_path_refuses(c, lg, view_over_4gib)


def test_bytes_payload_over_4_gib_is_refused_not_narrowed(tmp_path):
    """bytes(n) is calloc'ed: glibc maps zero pages lazily, so this costs no RAM."""
    cfg = small_config(max_entry_bytes=1 << 30)
    big = bytes((1 << 32) + 5)      # low 32 bits: 5 bytes, which the old code stored
    with cometmp.Client(str(tmp_path / "d"), config=cfg) as c:
        lg = c.log("huge", shards=1)
        c.append("plain", b"first")
        assert_every_append_path_refuses(c, lg, big)
    del big


def test_the_one_name_rule_matches_format_section_1_on_random_names():
    """cm_stream_name_check (native/names.c) is the rule; FORMAT.md §1 is written here
    independently as a regex and the two must agree on every name."""
    import random
    import re

    from cometmp import paths

    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    alphabet = "aZ09_.:-/\\\x00\n\r\t ü*"
    spec = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*")
    for _ in range(20000):
        n = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 2, 3, 8, 199, 200, 201))))
        want = bool(spec.fullmatch(n)) and ".." not in n and len(n.encode()) <= 200
        try:
            paths.validate_stream_name(n)
            got = True
        except cometmp.BadStreamName:
            got = False
        assert got == want, (seed, n)


def test_the_offsets_file_itself_refuses_names_python_refuses(tmp_path):
    """The C side applies the same rule (CM_E_ARG), whoever calls it."""
    from cometmp._ffi import ffi, lib
    from cometmp.offsets import OffsetStore

    with cometmp.Client(str(tmp_path / "d"), config=small_config()):
        pass
    store = OffsetStore(str(tmp_path / "d"), writable=True)
    idx, gid = ffi.new("uint32_t *"), ffi.new("uint64_t *")
    assert lib.cm_offsets_group(store._h, b"g\n", 2, 1, 0, idx, gid) == lib.CM_E_ARG
    assert lib.cm_offsets_group(store._h, b"", 0, 1, 0, idx, gid) == lib.CM_E_ARG
    assert lib.cm_offsets_group(store._h, b"good", 4, 1, 0, idx, gid) == 0
    slot = ffi.new("uint32_t *")
    for bad in (b"s\n", b"../x", b"a/b", b""):
        assert lib.cm_offsets_slot(store._h, idx[0], gid[0], bad, len(bad), 1, slot) == lib.CM_E_ARG
    assert lib.cm_offsets_slot(store._h, idx[0], gid[0], b"ok", 2, 1, slot) == 0
    store.close()


@pytest.mark.parametrize("call, name", [
    (lambda c, con, b: cometmp.Consumer(c, "g2", max_deliveries=0), "max_deliveries"),
    (lambda c, con, b: cometmp.Consumer(c, "g2", max_deliveries="3"), "max_deliveries"),
    (lambda c, con, b: cometmp.Consumer(c, "g2", ack_wait="1"), "ack_wait"),
    (lambda c, con, b: cometmp.Consumer(c, "g2", ack_wait=float("nan")), "ack_wait"),
    (lambda c, con, b: cometmp.Consumer(c, "g2", ack_wait=True), "ack_wait"),
    (lambda c, con, b: cometmp.Consumer(c, "g2", poll_interval=0), "poll_interval"),
    (lambda c, con, b: con.process(print, "t:*", poll_interval=-1), "poll_interval"),
    (lambda c, con, b: con.process(print, "t:*", max_retries=-1), "max_retries"),
    (lambda c, con, b: con.process(print, "t:*", backoff="x"), "backoff"),
    (lambda c, con, b: con.read("t:*", timeout="1"), "timeout"),
    (lambda c, con, b: con.read("t:*", timeout=float("nan")), "timeout"),
    (lambda c, con, b: con.read("t:*", timeout=-0.5), "timeout"),
    (lambda c, con, b: con.read("t:*", timeout=10 ** 400), "timeout"),   # beyond a float
    (lambda c, con, b: con.read("t:*", max_messages=0), "max_messages"),
    (lambda c, con, b: con.read("t:*", assignment=3), "assignment"),
    (lambda c, con, b: con.read("t:*", assignment=(1, 1)), "assignment"),
    (lambda c, con, b: con.nack(b[0], delay="1"), "delay"),
    (lambda c, con, b: con.nack(b[0], delay=float("nan")), "delay"),
    (lambda c, con, b: con.nack(b[0], delay=-1), "delay"),
    (lambda c, con, b: con.nack(delay=-1), "delay"),     # checked with no ids too
    (lambda c, con, b: con.ack("not an id"), "ack()"),
    (lambda c, con, b: con.nack(7), "nack()"),
    (lambda c, con, b: c.log("f", shards=0), "shards"),
    (lambda c, con, b: c.append("s", "text"), "payload"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_call_arguments_raise_invalid_argument_naming_the_argument(tmp_path, call, name):
    with cometmp.Client(str(tmp_path / "d"), config=small_config()) as c:
        c.log("t", shards=1).append_many([b"a", b"b"])
        con = cometmp.Consumer(c, "g")
        b = con.read("t:*", timeout=0)
        with pytest.raises(cometmp.InvalidArgument, match=re.escape(name)) as ei:
            call(c, con, b)
        assert isinstance(ei.value, ValueError) and isinstance(ei.value, TypeError)
        assert [m.id.entry for m in con.read("t:*", timeout=0)] == []   # nothing changed
        con.ack(b)
        con.close()
