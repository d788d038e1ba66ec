"""Golden files of every format version (built by the pure-Python encoder) are read by the C core.

Version 1: one golden file per file kind (tests/data/make_golden.py lists them): segments,
indexes, the state page, the directory marker, a family file, the consumer offsets file
(frozen as its non-zero byte runs, rebuilt sparse in tmp) and a registry shared-memory image.
Version 2 changed only the segment (frames bound to stream id and entry, FORMAT.md §2.2):
``format_v2`` is a stream directory of v2 segments (two of its payloads hold valid frames),
their indexes, the state page and the marker. The tests of segments run on both versions.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys

import pytest

import cometmp
from cometmp import format as fmt
from cometmp._ffi import lib
from cometmp.segment import RecordRef, Segment
from cometmp.shard import Writer

from conftest import small_config, tree_fingerprint

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
V1 = os.path.join(DATA, "format_v1")
V2 = os.path.join(DATA, "format_v2")
GOLDEN_DIRS = {"v1": V1, "v2": V2}
both_versions = pytest.mark.parametrize("version", ["v1", "v2"])


def load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(DATA, "make_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_layouts() -> dict:
    with open(os.path.join(V1, "layouts.json")) as f:
        return json.load(f)


def load_desc(version: str = "v1") -> dict:
    with open(os.path.join(GOLDEN_DIRS[version], "records.json")) as f:
        return json.load(f)


def expected_entries(desc: dict) -> list[dict]:
    return [r for seg in desc["segments"] for r in seg["records"]]


GOLDEN_V1 = {
    "cometmp.json",
    "families/events:v1.json",
    "streams/golden/00000000000000000000.seg",
    "streams/golden/00000000000000000005.seg",
    "streams/golden/00000000000000000000.idx",
    "streams/golden/00000000000000000005.idx",
    "streams/golden/state",
    "consumers/offsets.sparse.json",
    "consumers/members.sparse.json",
    "shm/registry",
    "registry.key",
}
STREAM_FILES = sorted(os.path.basename(p) for p in GOLDEN_V1 if p.startswith("streams/golden/"))
GOLDEN_V2 = {p for p in GOLDEN_V1 if p.startswith("streams/golden/")} | {"cometmp.json"}


def test_golden_files_are_what_the_python_encoder_produces():
    files = load_make_golden().build_all_v1()
    assert set(files) == GOLDEN_V1
    for rel, data in files.items():
        with open(os.path.join(V1, rel), "rb") as f:
            assert f.read() == data, f"{rel}: encoder output differs from the frozen v1 file"


def test_v2_golden_files_are_what_the_python_encoder_produces():
    files = load_make_golden().build_all_v2()
    assert set(files) == GOLDEN_V2
    for rel, data in files.items():
        with open(os.path.join(V2, rel), "rb") as f:
            assert f.read() == data, f"{rel}: encoder output differs from the frozen v2 file"
    sid = int(load_desc("v2")["stream_id"], 16)
    for rel in files:
        if rel.endswith(".seg"):
            h = fmt.parse_segment_header(files[rel])
            assert (h.version, h.stream_id) == (2, sid) and fmt.segment_header_ok(files[rel])


def test_make_golden_check_passes_on_the_committed_files():
    r = subprocess.run([sys.executable, os.path.join(DATA, "make_golden.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def reference_abi(kind: str) -> None:
    """Skip unless this build shares the golden images' ABI (their fingerprints match)."""
    from cometmp._ffi import lib

    mg = load_make_golden()
    abi = load_layouts()["abi"]
    want = {"state": fmt.state_fingerprint(abi["mutex_bytes"], abi["pointer_bytes"]),
            "offsets": mg.offsets_fingerprint(abi), "registry": mg.registry_fingerprint(abi)}[kind]
    have = {"state": lib.cm_state_fingerprint, "offsets": lib.cm_offsets_fingerprint,
            "registry": lib.cm_registry_fingerprint}[kind]()
    if have != want:
        pytest.skip(f"the golden {kind} image is of x86-64 glibc; this build's fingerprint differs")


@both_versions
def test_c_record_parser_reads_every_golden_record(version):
    desc = load_desc(version)
    for seg in desc["segments"]:
        path = os.path.join(GOLDEN_DIRS[version], "streams", desc["stream"], f"{seg['base']:020d}.seg")
        s = Segment.open(path, seg["base"])
        try:
            assert s.header_ok
            got = list(s.walk())
        finally:
            s.close()
        assert all(isinstance(r, RecordRef) for r in got)
        assert [(r.seq, r.ts_ns, bool(r.flags & fmt.CM_REC_FLAG_ZSTD), r.length) for r in got] == [
            (i, r["ts_ns"], r["compressed"], len(r["stored_hex"]) // 2) for i, r in enumerate(seg["records"])]


@both_versions
def test_client_reads_golden_stream_readonly_without_modifying_it(tmp_path, version):
    root = str(tmp_path / version)
    shutil.copytree(GOLDEN_DIRS[version], root)
    desc = load_desc(version)
    exp = expected_entries(desc)
    before = tree_fingerprint(root)
    with cometmp.Client(root, readonly=True) as c:
        assert c.streams() == [desc["stream"]]
        assert c.length(desc["stream"]) == len(exp)
        msgs = list(c.scan(desc["stream"]))
        assert [m.data.hex() for m in msgs] == [r["data_hex"] for r in exp]
        assert [m.timestamp_ns for m in msgs] == [r["ts_ns"] for r in exp]
        assert [m.id.entry for m in msgs] == list(range(len(exp)))
        for i, r in enumerate(exp):
            assert c.read(desc["stream"], i).data == bytes.fromhex(r["data_hex"])
        assert c.seek_time(desc["stream"], exp[2]["ts_ns"]) == 2
    assert sorted(os.listdir(os.path.join(root, "streams", desc["stream"]))) == STREAM_FILES
    assert tree_fingerprint(root) == before


@both_versions
def test_c_writer_adopts_golden_stream_and_continues_its_numbering(tmp_path, version):
    """The upgrade story (FORMAT.md §5): a v1 stream keeps its v1 segments, the segment a
    rotation creates is v2 with a new stream id; a v2 stream's new segment keeps its id."""
    root = str(tmp_path / version)
    shutil.copytree(GOLDEN_DIRS[version], root)
    desc = load_desc(version)
    exp = expected_entries(desc)
    stream = desc["stream"]
    noise = os.urandom(5000)  # incompressible, larger than the segment's free room
    w = Writer(os.path.join(root, "streams", stream), stream, small_config(), create=False)
    # the golden state page is valid format-wise, so it is adopted (not rebuilt); it was
    # written in another boot (boot_id), so recovery does not trust its tail and rescans
    # the active segment (I16), finding the same end: nothing dropped, nothing corrupt
    if lib.cm_state_fingerprint() == fmt.state_fingerprint(40, 8):
        assert w.open_report == {"bytes_dropped": 0, "corrupt_records": 0,
                                 "state_rebuilt": False, "scanned_full": True}
        snap = w.snapshot()
        assert snap["counters"]["appends"] == len(exp)   # the golden page's counters survive
    w.close()
    with cometmp.Client(root, config=small_config()) as c:
        ids = c.append(stream, [b"new-1", noise])
        assert [i.entry for i in ids] == [len(exp), len(exp) + 1]
        # the 4096-byte active segment is full: the writer rotated into a 1 MiB one
    bases = sorted(int(n[:20]) for n in os.listdir(os.path.join(root, "streams", stream)) if n.endswith(".seg"))
    assert bases[:2] == [0, 5] and len(bases) == 3 and bases[2] in (len(exp), len(exp) + 1)
    with cometmp.Client(root, readonly=True) as c:
        assert [m.data.hex() for m in c.scan(stream)] == [r["data_hex"] for r in exp] + [
            b"new-1".hex(), noise.hex()]
        new = [b"new-1", noise]
        for i in range(len(exp) + 2):
            want = bytes.fromhex(exp[i]["data_hex"]) if i < len(exp) else new[i - len(exp)]
            assert c.read(stream, i).data == want
    headers = []
    for b in bases:
        with open(os.path.join(root, "streams", stream, f"{b:020d}.seg"), "rb") as f:
            headers.append(fmt.parse_segment_header(f.read(fmt.CM_SEG_HEADER_BYTES)))
    if version == "v1":
        assert [h.version for h in headers] == [1, 1, 2]
        assert headers[2].stream_id != 0
    else:
        sid = int(desc["stream_id"], 16)
        assert [(h.version, h.stream_id) for h in headers] == [(2, sid)] * 3
    r = subprocess.run([sys.executable, "-m", "cometmp", "verify", root, "--oracle", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@both_versions
def test_golden_indexes_are_what_the_c_indexer_builds_and_serve_lookups(version):
    from cometmp._ffi import ffi

    desc = load_desc(version)
    d = os.path.join(GOLDEN_DIRS[version], "streams", desc["stream"])
    for seg in desc["segments"]:
        with open(os.path.join(d, f"{seg['base']:020d}.seg"), "rb") as f:
            data = f.read()
        with open(os.path.join(d, f"{seg['base']:020d}.idx"), "rb") as f:
            idx = f.read()
        base, interval, entries = fmt.parse_index(idx)
        assert (base, interval) == (seg["base"], load_layouts()["index"]["interval"])
        built = ffi.new("uint8_t[]", len(idx))
        count = ffi.new("uint32_t *")
        assert lib.cm_index_build(data, len(data), seg["base"], interval, built, len(idx), count) == 0
        assert count[0] == len(entries) and bytes(ffi.buffer(built))[32:] == idx[32:]
        rel, off, ts = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("int64_t *")
        last = len(seg["records"]) - 1
        assert lib.cm_index_floor(idx, len(idx), last, rel, off, ts) == 0
        assert (rel[0], off[0], ts[0]) == entries[-1]
        assert lib.cm_index_floor_time(idx, len(idx), entries[-1][2] + 1, rel, off, ts) == 0
        assert (rel[0], off[0], ts[0]) == entries[-1]


@both_versions
def test_golden_state_page_decodes_and_verify_accepts_the_whole_directory(tmp_path, version):
    reference_abi("state")
    desc = load_desc(version)
    with open(os.path.join(GOLDEN_DIRS[version], "streams", desc["stream"], "state"), "rb") as f:
        page = f.read()
    q = struct.Struct("=Q")
    assert struct.unpack_from("=I", page, fmt.CM_STATE_OFF_MAGIC)[0] == fmt.CM_STATE_MAGIC
    assert q.unpack_from(page, fmt.CM_STATE_OFF_FINGERPRINT)[0] == lib.cm_state_fingerprint()
    assert q.unpack_from(page, fmt.CM_STATE_OFF_COMMITTED)[0] == len(expected_entries(desc))
    assert q.unpack_from(page, fmt.CM_STATE_OFF_ACTIVE_BASE)[0] == desc["segments"][-1]["base"]
    root = str(tmp_path / version)
    shutil.copytree(GOLDEN_DIRS[version], root)
    before = tree_fingerprint(root)
    r = subprocess.run([sys.executable, "-m", "cometmp", "verify", root, "--oracle", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert not [p for p in report.get("problems", []) if p.get("severity") == "error"], report
    assert tree_fingerprint(root) == before


def test_golden_offsets_file_is_read_by_offsets_and_cometmp_groups(tmp_path):
    reference_abi("offsets")
    from cometmp.offsets import CM_OFS_FILE_BYTES, OffsetStore

    mg = load_make_golden()
    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    with open(os.path.join(V1, "consumers", "offsets.sparse.json")) as f:
        sparse = json.load(f)
    path = os.path.join(root, "consumers", "offsets")
    mg.materialize_sparse(sparse, path)
    assert os.path.getsize(path) == CM_OFS_FILE_BYTES
    store = OffsetStore(root, writable=False)
    try:
        groups = {g.name: g for g in store.groups()}
    finally:
        store.close()
    assert sorted(groups) == ["audit-été", "billing"]          # "gone" is DELETING: not listed
    billing = groups["billing"]
    assert billing.patterns == ["golden", "events:v1:shard:*"] and billing.id == 1
    assert {s: (i.next, i.resets, i.dropped) for s, i in billing.slots.items()} == {
        "golden": (5, 1, 0), "events:v1:shard:0003": (None, 0, 0)}
    assert groups["audit-été"].slots["golden"].next == 7
    assert groups["audit-été"].slots["golden"].dropped == 2
    r = subprocess.run([sys.executable, "-m", "cometmp", "groups", root, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert sorted(g["name"] for g in doc["groups"]) == ["audit-été", "billing"]
    assert "golden" in json.dumps(doc)


def test_golden_members_file_is_read_and_a_new_member_takes_the_dead_members_claim(tmp_path):
    reference_abi("offsets")
    from cometmp import members

    mg = load_make_golden()
    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    for name in ("offsets", "members"):
        with open(os.path.join(V1, "consumers", f"{name}.sparse.json")) as f:
            mg.materialize_sparse(json.load(f), os.path.join(root, "consumers", name))
    assert os.path.getsize(members.members_path(root)) == members.CM_MMB_FILE_BYTES
    (rec,) = members.group_members(root)[1]           # billing; the freed record is not listed
    assert (rec.member_id, rec.pid, rec.patterns, rec.claims) == (7, 4242, ("golden", "events:v1:shard:*"), [0])
    assert rec.live is False                          # nobody holds its lock: a dead member
    r = subprocess.run([sys.executable, "-m", "cometmp", "groups", root, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    billing = next(g for g in json.loads(r.stdout)["groups"] if g["name"] == "billing")
    assert billing["members"] == [{"id": 7, "pid": 4242, "live": False, "streams": ["golden"],
                                   "patterns": ["golden", "events:v1:shard:*"],
                                   "joined_ns": 1767225600000001000, "seen_ns": 1767225600000005000}]
    os.chmod(os.path.join(root, "registry.key"), 0o600)
    with cometmp.Client(root) as c:
        con = cometmp.Consumer(c, group="billing")
        got = con.read("golden", max_messages=100, timeout=0)
        assert con.assigned() == ["golden"] and got[0].id.entry == 5   # from the acked offset
        assert [(m.member_id, m.live) for m in members.group_members(root)[1]] == [(8, True)]
        con.close()


def test_golden_registry_image_is_accepted_by_c_and_parsed_by_the_table():
    reference_abi("registry")
    from cometmp._ffi import ffi
    from cometmp.registry import table

    with open(os.path.join(V1, "shm", "registry"), "rb") as f:
        image = f.read()
    assert len(image) == table.REG_BYTES == lib.cm_registry_bytes()
    mm = mmap.mmap(-1, table.REG_BYTES)      # a private stand-in for the /dev/shm object
    mm[:] = image
    reg = table.Registry("/golden", "/cometmp-golden-test", mm, False, 0)
    try:
        assert lib.cm_registry_check(reg._ptr, table.REG_BYTES) == 0
        assert (reg.version, reg.process_count, reg.epoch, reg.unlinked) == (1, 3, 9, False)
        for snap in (reg.snapshot(lock=False), reg.snapshot(lock=True)):
            states = [(e.index, table.STATE_NAMES[e.state], e.pid, e.key) for e in snap.entries[:5]]
            assert states == [(0, "live", 4101, -1), (1, "vacant", 0, -1), (2, "live", 4103, 2),
                              (3, "live", 4104, -1), (4, "free", 0, -1)]
            assert all(e.key == -1 and e.state == table.FREE for e in snap.entries[4:])
            assert snap.owners(6) == [0, -1, 2, 0, -1, 2]     # slot 1 is vacant: its shards wait
            assert snap.index_of(4104, 804) == 3                # a waiting worker (index >= N)
        assert reg.masters()[0] == (0, 4100, 777)
        # the header and lock line are what cm_registry_init writes (time and table aside)
        fresh = bytearray(table.REG_BYTES)
        assert lib.cm_registry_init(ffi.from_buffer(fresh), len(fresh), 3) == 0
        same = [(0, table.CM_REG_OFF_CREATED), (table.CM_REG_OFF_UNLINKED, table.CM_REG_OFF_EPOCH),
                (table.CM_REG_OFF_LOCK, table.CM_REG_OFF_MASTERS)]
        for a, b in same:
            assert fresh[a:b] == image[a:b], (a, b)
    finally:
        reg.close()


def test_golden_family_file_gives_the_shard_count(tmp_path):
    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    with cometmp.Client(root, readonly=True) as c:
        assert c.family_shards("events:v1") == 16
        assert c.family_shards("absent") is None
    with cometmp.Client(root) as c:      # a writer reopening the family keeps its count
        assert c.log("events:v1", shards=16) is not None
        with pytest.raises(cometmp.ShardCountMismatch):
            c.log("events:v1", shards=8)


def test_golden_registry_key_names_the_registry_and_is_what_the_writer_writes(tmp_path):
    """FORMAT.md §8.1: the v1 key file is read by shm_name, whose name is the keyed
    blake2b-128 of the copy's own (st_dev, st_ino); the key writer encodes the same bytes."""
    import hashlib

    from cometmp.registry import key, table

    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    os.chmod(os.path.join(root, "registry.key"), 0o600)   # git keeps files 0644 (I33a)
    secret = bytes.fromhex(load_layouts()["registry_key"]["key_hex"])
    st = os.stat(root)
    want = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), key=secret,
                           digest_size=16).hexdigest()
    assert table.shm_name(root) == "/cometmp-" + want
    assert key.read_key(root) == secret
    with open(os.path.join(V1, "registry.key"), "rb") as f:
        assert key.encode(secret) == f.read()


def test_golden_app_metrics_table_is_accepted_by_c_and_scraped_as_described(tmp_path):
    """FORMAT.md §10 version 1: the frozen table passes cm_appmetrics_check, its keys decode,
    PrometheusCollector aggregates it to the described samples (every binder is dead: the
    livesum gauge is dropped, I54), and the C cell add continues a golden cell."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from cometmp.appmetrics import Table
    from cometmp.prometheus import PrometheusCollector

    mg = load_make_golden()
    with open(os.path.join(DATA, "app_metrics_v1", "table.json")) as f:
        desc = json.load(f)
    with open(os.path.join(DATA, "app_metrics_v1", "metrics", "app.sparse.json")) as f:
        sparse = json.load(f)
    assert sparse == json.loads(mg.build_app_metrics_v1()["metrics/app.sparse.json"])
    root = tmp_path / "data"
    os.makedirs(root / "metrics", mode=0o700)
    mg.materialize_sparse(sparse, str(root / "metrics" / "app"))
    os.chmod(root / "metrics" / "app", 0o600)

    t = Table.open(root, create=False)
    try:
        assert t.nkeys() == len(desc["keys"])
        for row, k in enumerate(desc["keys"]):
            kind, mode, text = t.key(row)
            assert text == json.dumps(k["key"], sort_keys=True) and mode == \
                ("", "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
                 "mostrecent", "livemostrecent").index(k["mode"])
        assert [(c, pid) for c, pid, _t in t.bound_columns()] == [
            (b["column"], b["pid"]) for b in desc["binders"]]
        reg = CollectorRegistry()
        reg.register(PrometheusCollector(root))
        got = sorted((s.name, sorted(s.labels.items()), s.value)
                     for m in reg.collect() for s in m.samples)
        assert got == sorted((n, sorted(lb.items()), v) for n, lb, v in desc["expect"])
        # the C core adds to a golden cell in place (row 0, column 1: 4.5)
        assert lib.cm_appmetrics_add(t._ptr, t.size, t.cell(0, 1), 0.5) == 0
        assert t.read_cell(0, 1) == (5.0, 0.0, 1)
    finally:
        t.close()
