"""Format version 1 golden files (built by the pure-Python encoder) are read by the C core."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import cometmp
from cometmp import format as fmt
from cometmp.segment import RecordRef, Segment

from conftest import small_config, tree_fingerprint

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
V1 = os.path.join(DATA, "format_v1")


def load_desc() -> dict:
    with open(os.path.join(V1, "records.json")) as f:
        return json.load(f)


def expected_entries(desc: dict) -> list[dict]:
    return [r for seg in desc["segments"] for r in seg["records"]]


def test_golden_files_are_what_the_python_encoder_produces():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(DATA, "make_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.build_v1(load_desc())
    assert len(files) == 3
    for rel, data in files.items():
        with open(os.path.join(V1, rel), "rb") as f:
            assert f.read() == data, f"{rel}: encoder output differs from the frozen v1 file"


def test_c_record_parser_reads_every_golden_record():
    desc = load_desc()
    for seg in desc["segments"]:
        path = os.path.join(V1, "streams", desc["stream"], f"{seg['base']:020d}.seg")
        s = Segment.open(path, seg["base"])
        try:
            assert s.header_ok
            got = list(s.walk())
        finally:
            s.close()
        assert all(isinstance(r, RecordRef) for r in got)
        assert [(r.seq, r.ts_ns, bool(r.flags & fmt.CM_REC_FLAG_ZSTD), r.length) for r in got] == [
            (i, r["ts_ns"], r["compressed"], len(r["stored_hex"]) // 2) for i, r in enumerate(seg["records"])]


def test_client_reads_golden_stream_readonly_without_modifying_it(tmp_path):
    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    desc = load_desc()
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
    assert sorted(os.listdir(os.path.join(root, "streams", desc["stream"]))) == sorted(
        f"{s['base']:020d}.seg" for s in desc["segments"])
    assert tree_fingerprint(root) == before


def test_c_writer_adopts_golden_stream_and_continues_its_numbering(tmp_path):
    root = str(tmp_path / "v1")
    shutil.copytree(V1, root)
    desc = load_desc()
    exp = expected_entries(desc)
    stream = desc["stream"]
    noise = os.urandom(5000)  # incompressible, larger than the segment's free room
    with cometmp.Client(root, config=small_config()) as c:
        ids = c.append(stream, [b"new-1", noise])
        assert [i.entry for i in ids] == [len(exp), len(exp) + 1]
        # the 4096-byte active segment is full: the writer rotated into a 1 MiB one
    bases = sorted(int(n[:20]) for n in os.listdir(os.path.join(root, "streams", stream)) if n.endswith(".seg"))
    assert bases[:2] == [0, 5] and len(bases) == 3 and bases[2] in (len(exp), len(exp) + 1)
    with cometmp.Client(root, readonly=True) as c:
        assert [m.data.hex() for m in c.scan(stream)] == [r["data_hex"] for r in exp] + [
            b"new-1".hex(), noise.hex()]
