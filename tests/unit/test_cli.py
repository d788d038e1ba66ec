"""The ``cometmp`` command line: every subcommand, --json documents, exit codes, and
that inspection commands never modify the data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

import cometmp
import cometmp.tools
from cometmp import paths
from cometmp.tools import cli
from cometmp import format as fmt

import oracle
from conftest import file_clock_past, tree_fingerprint

MiB = 1024 * 1024
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))


def small_config() -> cometmp.Config:
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1 * MiB  # the smallest allowed: rotations are cheap
    return cfg


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *args: str) -> tuple[int, dict]:
    rc, out, _err = run(capsys, *args, "--json")
    return rc, json.loads(out)  # exactly one JSON document, or this raises


def payload(i: int) -> bytes:
    return f"entry {i} ".encode() * (1 + i % 7)


@pytest.fixture
def data_dir(tmp_path):
    """A closed data directory: family "ev" (2 shards, three+ segments in one) and a
    plain stream "logs" holding text."""
    d = str(tmp_path / "data")
    with cometmp.Client(d, config=small_config()) as c:
        ev = c.log("ev", shards=2)
        for _ in range(2):  # nearly a segment each: the "big" shard gets 3+ segments
            ev.append(os.urandom(MiB - 200), key="big")
        for i in range(3000):
            ev.append(payload(i), key=str(i % 5))
        ev.append_many([b"\x00\xff binary", b""], key="0")
        c.append("logs", [f"line {i}".encode() for i in range(20)])
    return d


def sealed_segment(d: str, stream: str) -> str:
    directory = paths.stream_dir(d, stream)
    bases = paths.list_segment_bases(directory)
    assert len(bases) >= 2, "fixture should have rotated"
    return os.path.join(directory, paths.segment_name(bases[0]))


def records_of(seg_path: str) -> list[oracle.Record]:
    with open(seg_path, "rb") as f:
        buf = f.read()
    return [r for r in oracle.walk_segment(buf) if isinstance(r, oracle.Record)]


def flip_byte(path: str, offset: int, mask: int = 0x20) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def big_stream(d: str) -> str:
    return paths.shard_stream("ev", cometmp.pick_shard("big", 2))


# ----------------------------------------------------------------------------- parser


def test_help_lists_every_command_and_the_exit_codes(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for cmd in ("stats", "status", "dump", "tail", "verify", "recover", "demo", "bench"):
        assert cmd in out
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert f"  {code}" in out


def test_no_command_is_a_usage_error(capsys):
    rc, out, err = run(capsys)
    assert rc == cli.EXIT_USAGE and out == "" and "usage:" in err


def test_unknown_option_is_a_usage_error(capsys):
    rc, _, err = run(capsys, "stats", "/nonexistent", "--bogus")
    assert rc == cli.EXIT_USAGE and "--bogus" in err


@pytest.mark.parametrize("cmd", [["stats"], ["status"], ["dump", "--", "x"], ["tail"], ["verify"],
                                 ["recover"]])
def test_missing_data_directory_exits_3(capsys, tmp_path, cmd):
    args = [cmd[0], str(tmp_path / "nope")] + cmd[1:]
    rc, out, err = run(capsys, *args)
    assert rc == cli.EXIT_NO_DATA_DIR and out == "" and "no such directory" in err


def test_directory_without_marker_exits_3(capsys, tmp_path):
    (tmp_path / "streams").mkdir()
    rc, _, err = run(capsys, "verify", str(tmp_path))
    assert rc == cli.EXIT_NO_DATA_DIR and "not a cometmp data directory" in err


def test_python_dash_m_cometmp_runs_the_same_cli():
    r = subprocess.run([sys.executable, "-m", "cometmp", "--version"], capture_output=True,
                       text=True, cwd=PACKAGE_ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"cometmp {cometmp.__version__}"


# ------------------------------------------------------------------------------ stats


def test_stats_json_agrees_with_the_client(capsys, data_dir):
    rc, doc = run_json(capsys, "stats", data_dir)
    assert rc == 0
    with cometmp.Client(data_dir, readonly=True) as c:
        names = c.streams()
        assert sorted(doc["streams"]) == names
        for n in names:
            assert doc["streams"][n]["length"] == c.length(n)
    assert doc["families"] == {"ev": {"shards": 2}}
    assert doc["totals"]["entries"] == 3000 + 4 + 20


def test_status_without_a_running_server_says_so(capsys, data_dir):
    rc, doc = run_json(capsys, "status", data_dir)
    assert rc == 0 and doc["registry"] is None and doc["families"] == {"ev": 2}
    rc, out, _ = run(capsys, "status", data_dir)
    assert rc == 0 and "no registry" in out


def test_stats_human_names_every_stream(capsys, data_dir):
    rc, out, _ = run(capsys, "stats", data_dir)
    assert rc == 0
    assert "ev:shard:0000" in out and "ev:shard:0001" in out and "logs" in out
    assert "family ev: 2 shards" in out


# ------------------------------------------------------------------------------- dump


def test_dump_prints_entries_in_order_with_count_and_from(capsys, data_dir):
    rc, out, _ = run(capsys, "dump", data_dir, "logs", "--from", "5", "--count", "3")
    assert rc == 0
    lines = out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["5", "6", "7"]
    assert lines[0].endswith("line 5")


def test_dump_json_round_trips_binary_payloads(capsys, data_dir):
    stream = paths.shard_stream("ev", cometmp.pick_shard("0", 2))
    rc, doc = run_json(capsys, "dump", data_dir, stream, "--from", "-2")
    assert rc == 0
    assert doc["count"] == 2 and doc["entries"][-1]["entry"] == doc["length"] - 1
    import base64

    first, last = doc["entries"]
    assert first["encoding"] == "base64" and base64.b64decode(first["data"]) == b"\x00\xff binary"
    assert last["encoding"] == "utf-8" and last["data"] == "" and last["length"] == 0


def test_dump_unknown_stream_is_a_usage_error(capsys, data_dir):
    rc, out, err = run(capsys, "dump", data_dir, "no-such-stream")
    assert rc == cli.EXIT_USAGE and out == "" and "no-such-stream" in err


# ------------------------------------------------------------------------------- tail


def test_tail_prints_the_last_n_entries_of_matching_streams(capsys, data_dir):
    rc, out, _ = run(capsys, "tail", data_dir, "logs", "-n", "3")
    assert rc == 0
    assert [ln.split(" ", 2)[2] for ln in out.splitlines()] == ["line 17", "line 18", "line 19"]
    rc, out, _ = run(capsys, "tail", data_dir, "ev:*", "-n", "4")
    assert rc == 0 and len(out.splitlines()) == 4 and "ev:shard:" in out


def test_tail_of_no_matching_stream_is_a_usage_error(capsys, data_dir):
    rc, _, err = run(capsys, "tail", data_dir, "nothing*")
    assert rc == cli.EXIT_USAGE and "nothing*" in err


def test_tail_follow_prints_entries_appended_later(data_dir):
    import queue
    import threading

    import tempfile

    err = tempfile.TemporaryFile()
    # -X faulthandler: if it does not stop at SIGINT, SIGABRT prints where every thread is
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "cometmp", "tail", data_dir, "logs", "-n",
         "1", "-f", "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=err, text=True, cwd=PACKAGE_ROOT,
        # a test run started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python then keeps it ignored: Ctrl-C is what this test sends, so
        # the child gets the disposition a terminal user's tail has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=60).rstrip().endswith("line 19")
        with cometmp.Client(data_dir) as c:
            c.append("logs", [b"followed 1", b"followed 2"])
        assert lines.get(timeout=60).rstrip().endswith("followed 1")
        assert lines.get(timeout=60).rstrip().endswith("followed 2")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            err.seek(0)
            raise AssertionError("tail -f did not stop at SIGINT within 30 s; its threads:\n"
                                 + err.read().decode(errors="replace")[-6000:]) from None
    assert rc == 0


# ----------------------------------------------------------------------------- verify


def test_verify_clean_directory_exits_0_with_both_walkers(capsys, data_dir):
    rc, out, err = run(capsys, "verify", data_dir, "--oracle")
    assert rc == 0, out
    assert "OK: no corruption found" in out
    assert err == ""  # progress only on a terminal
    rc, doc = run_json(capsys, "verify", data_dir, "--oracle")
    assert rc == 0 and doc["ok"] and doc["errors"] == 0 and doc["warnings"] == 0
    assert doc["records"] == 3000 + 4 + 20


def test_verify_flipped_payload_byte_exits_1_naming_file_and_offset(capsys, data_dir):
    seg = sealed_segment(data_dir, big_stream(data_dir))
    victim = records_of(seg)[0]  # the big record: its payload byte 100 goes bad
    flip_byte(seg, victim.offset + fmt.CM_REC_HEADER_BYTES + 100)
    rc, out, _ = run(capsys, "verify", data_dir)
    assert rc == cli.EXIT_CHECK_FAILED
    assert f"{seg}: offset {victim.offset}: crc mismatch" in out
    rc, doc = run_json(capsys, "verify", data_dir, "--oracle")
    assert rc == cli.EXIT_CHECK_FAILED and not doc["ok"]
    crc = [p for p in doc["streams"][big_stream(data_dir)]["problems"] if p["kind"] == "corrupt-record"]
    assert [(p["path"], p["offset"]) for p in crc] == [(seg, victim.offset)]
    assert not [p for p in doc["streams"][big_stream(data_dir)]["problems"] if p["kind"] == "oracle"]


def test_verify_finds_a_flipped_byte_in_the_middle_of_a_segment(capsys, data_dir):
    stream = paths.shard_stream("ev", 1 - cometmp.pick_shard("big", 2))
    directory = paths.stream_dir(data_dir, stream)
    seg = os.path.join(directory, paths.segment_name(paths.list_segment_bases(directory)[-1]))
    recs = records_of(seg)
    victim = recs[len(recs) // 2]
    flip_byte(seg, victim.offset + 10)  # inside the timestamp: only the CRC can tell
    rc, doc = run_json(capsys, "verify", data_dir, "--oracle")
    assert rc == 1
    problems = doc["streams"][stream]["problems"]
    assert [(p["kind"], p["offset"]) for p in problems if p["severity"] == "error"] == \
        [("corrupt-record", victim.offset)]
    assert doc["corrupt_records"] == 1


def test_verify_bad_segment_header_is_an_error(capsys, data_dir):
    seg = sealed_segment(data_dir, big_stream(data_dir))
    flip_byte(seg, fmt.CM_SEG_OFF_CREATED)
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 1
    kinds = {(p["kind"], p["offset"]) for p in doc["streams"][big_stream(data_dir)]["problems"]}
    assert ("segment-header", 0) in kinds


def test_verify_damaged_index_is_a_warning_that_recover_repairs(capsys, data_dir):
    stream = big_stream(data_dir)
    directory = paths.stream_dir(data_dir, stream)
    bases = paths.list_segment_bases(directory)
    idx = os.path.join(directory, paths.index_name(bases[-2]))  # a sealed segment's index
    os.unlink(os.path.join(directory, paths.index_name(bases[0])))
    with open(idx, "r+b") as f:
        f.seek(fmt.CM_IDX_HEADER_BYTES)
        f.write(b"\xab" * 64)
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 0 and doc["warnings"] >= 2
    assert {p["kind"] for p in doc["streams"][stream]["problems"]} == {"index"}
    rc, out, _ = run(capsys, "recover", data_dir)
    assert rc == 0, out
    assert "rebuilt index" in out
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 0 and doc["warnings"] == 0


def test_recover_zeroes_a_torn_tail_and_reports_it(capsys, data_dir):
    directory = paths.stream_dir(data_dir, "logs")
    seg = os.path.join(directory, paths.segment_name(paths.list_segment_bases(directory)[-1]))
    end = records_of(seg)[-1]
    tail = end.offset + end.frame_bytes
    torn = fmt.encode_record(b"half written record", 1, len(records_of(seg)))[:30]
    with open(seg, "r+b") as f:  # a write that died before it was published (I4)
        f.seek(tail)
        f.write(torn)
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 0
    assert [(p["kind"], p["offset"]) for p in doc["streams"]["logs"]["problems"]] == [("torn-tail", tail)]
    rc, doc = run_json(capsys, "recover", data_dir)
    assert rc == 0 and doc["ok"]
    assert doc["streams"]["logs"]["bytes_dropped"] == len(torn)
    assert doc["verify"]["warnings"] == 0
    with open(seg, "rb") as f:
        f.seek(tail)
        assert f.read(64) == bytes(64)


def test_recover_rebuilds_a_missing_state_page(capsys, data_dir):
    os.unlink(os.path.join(paths.stream_dir(data_dir, "logs"), paths.STATE))
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 0 and [p["kind"] for p in doc["streams"]["logs"]["problems"]] == ["state"]
    rc, out, _ = run(capsys, "recover", data_dir)
    assert rc == 0 and "logs: rebuilt the state page" in out
    with cometmp.Client(data_dir, readonly=True) as c:
        assert c.length("logs") == 20


def test_recover_removes_temp_files_of_dead_writers_only(capsys, data_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = os.path.join(data_dir, paths.FAMILIES, f"ev.json.{dead.pid}.tmp")
    live = os.path.join(data_dir, paths.FAMILIES, f"ev.json.{os.getpid()}.tmp")
    for p in (stale, live):
        open(p, "w").close()
    rc, doc = run_json(capsys, "verify", data_dir)
    assert rc == 0 and sorted(p["path"] for p in doc["problems"]) == sorted([stale, live])
    rc, doc = run_json(capsys, "recover", data_dir)
    assert rc == 0 and doc["temp_files_removed"] == [stale]
    assert os.path.exists(live) and not os.path.exists(stale)


def test_recover_exits_1_while_corruption_remains(capsys, data_dir):
    seg = sealed_segment(data_dir, big_stream(data_dir))
    flip_byte(seg, records_of(seg)[0].offset + 30)
    rc, doc = run_json(capsys, "recover", data_dir)
    assert rc == 1 and not doc["ok"] and doc["verify"]["errors"] == 1


def test_dump_skips_a_corrupt_record_and_exits_1(capsys, data_dir):
    directory = paths.stream_dir(data_dir, "logs")
    seg = os.path.join(directory, paths.segment_name(paths.list_segment_bases(directory)[-1]))
    flip_byte(seg, records_of(seg)[3].offset + fmt.CM_REC_HEADER_BYTES)
    rc, doc = run_json(capsys, "dump", data_dir, "logs")
    assert rc == 1
    assert [e["entry"] for e in doc["entries"]] == [i for i in range(20) if i != 3]
    assert doc["corrupt_skipped"] == 1


def test_verify_next_to_a_live_writer_reports_no_corruption(capsys, tmp_path):
    import threading

    d = str(tmp_path / "live")
    stop = threading.Event()
    with cometmp.Client(d, config=small_config()) as c:
        lg = c.log("live", shards=1)
        lg.append(b"first")

        def writer():  # bounded: ~300 MiB at most, a rotation every ~25 batches
            blob = os.urandom(4000)  # incompressible
            for n in range(8000):
                if stop.is_set():
                    return
                lg.append_many([blob[: 100 + i * 200] for i in range(20)])
                if n % 8 == 0:
                    time.sleep(0.0005)  # let verify run between bursts

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(5):
                rc, doc = run_json(capsys, "verify", d)
                assert rc == 0 and doc["errors"] == 0, [p for s in doc["streams"].values() for p in s["problems"]]
                assert doc["records"] > 0
        finally:
            stop.set()
            t.join()


# ------------------------------------------------------------------- read-only promise


def test_inspection_commands_never_modify_the_directory(capsys, data_dir):
    stream = big_stream(data_dir)
    directory = paths.stream_dir(data_dir, stream)
    bases = paths.list_segment_bases(directory)
    with open(os.path.join(directory, paths.index_name(bases[0])), "r+b") as f:
        f.seek(fmt.CM_IDX_HEADER_BYTES)  # damaged index: readers must not rewrite it
        f.write(b"\x11" * 48)
    file_clock_past(data_dir)   # any write from now on moves an mtime/ctime, coarse clocks too
    before = tree_fingerprint(data_dir)
    for args in (["stats", data_dir], ["stats", data_dir, "--json"],
                 ["dump", data_dir, stream], ["dump", data_dir, stream, "--json"],
                 ["tail", data_dir, "-n", "50"], ["verify", data_dir, "--oracle"],
                 ["verify", data_dir, "--json"]):
        rc, _, _ = run(capsys, *args)
        assert rc in (0, 1), args
    assert tree_fingerprint(data_dir) == before


# ------------------------------------------------------------------------ demo, bench


def test_demo_delegates_to_cometmp_demo_main(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("cometmp.tools.demo")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "cometmp.tools.demo", fake)
    monkeypatch.setattr(cometmp.tools, "demo", fake, raising=False)
    assert cli.main(["demo", "--seconds", "3", "--dir", "/tmp/x"]) == 0
    assert calls == [["--seconds", "3", "--dir", "/tmp/x"]]
    fake.main = lambda argv: 1  # a failed check is the CLI's exit 1
    assert cli.main(["demo"]) == cli.EXIT_CHECK_FAILED


def test_bench_delegates_to_cometmp_bench_main(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("cometmp.tools.bench")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "cometmp.tools.bench", fake)
    monkeypatch.setattr(cometmp.tools, "bench", fake, raising=False)
    assert cli.main(["bench", "--quick", "-n", "5"]) == 0
    assert calls == [["--quick", "-n", "5"]]


# ------------------------------------------------------------------- docs/FORMAT.md


def _format_doc_example() -> tuple[bytes, bytes]:
    """The segment and index bytes of docs/FORMAT.md's worked example (its xxd dumps)."""
    doc = open(os.path.join(PACKAGE_ROOT, "docs", "FORMAT.md")).read()
    dumps = []
    for block in doc.split("```")[1::2]:
        if block.lstrip().startswith("$ xxd"):
            hexes = [ln[9:49] for ln in block.splitlines() if ln[:8].isalnum() and ln[8:9] == ":"]
            dumps.append(bytes.fromhex("".join(h.replace(" ", "") for h in hexes)))
    assert len(dumps) == 2, "FORMAT.md should show the example segment and index"
    return dumps[0], dumps[1]


def test_format_doc_worked_example_is_a_segment_verify_accepts(capsys, tmp_path):
    seg, idx = _format_doc_example()
    d = str(tmp_path / "doc")
    with cometmp.Client(d):
        pass  # writes the directory marker
    directory = paths.stream_dir(d, "example")
    os.makedirs(directory)
    with open(os.path.join(directory, paths.segment_name(0)), "wb") as f:
        f.write(seg + bytes(4096 - len(seg)))
    with open(os.path.join(directory, paths.index_name(0)), "wb") as f:
        f.write(idx + bytes(1088 - len(idx)))
    rc, doc = run_json(capsys, "verify", d, "--oracle")
    assert rc == 0 and doc["records"] == 3
    assert [p["kind"] for p in doc["streams"]["example"]["problems"]] == ["state"]  # no state page
    recs = [r for r in oracle.walk_segment(seg + bytes(4096 - len(seg))) if isinstance(r, oracle.Record)]
    assert [r.payload for r in recs] == [b"hi", b"", b"hello, cometmp"]


def test_groups_lists_acked_offsets_and_lag_then_deletes(capsys, data_dir):
    with cometmp.Client(data_dir) as c:
        consumer = cometmp.Consumer(c, group="proc")
        batch = consumer.read("logs", max_messages=5, timeout=0)
        consumer.ack(*batch)
    rc, doc = run_json(capsys, "groups", data_dir)
    assert rc == 0
    (g,) = doc["groups"]
    assert g["name"] == "proc" and g["streams"]["logs"]["acked"] == 5
    assert g["streams"]["logs"]["lag"] == 15
    rc, out, _ = run(capsys, "groups", data_dir)
    assert rc == 0 and "group proc" in out and "lag 15" in out
    rc, out, _ = run(capsys, "groups", data_dir, "--delete", "proc")
    assert rc == 0 and "deleted" in out
    rc, doc = run_json(capsys, "groups", data_dir)
    assert doc["groups"] == []
    rc, out, err = run(capsys, "groups", data_dir, "--delete", "proc")
    assert rc == 2 and "no consumer group 'proc'" in err and out == ""


def test_groups_shows_live_members_with_pid_streams_and_last_seen(capsys, data_dir):
    with cometmp.Client(data_dir) as c:
        consumer = cometmp.Consumer(c, group="proc")
        consumer.ack(consumer.read("logs", max_messages=5, timeout=0))
        rc, doc = run_json(capsys, "groups", data_dir)
        (m,) = doc["groups"][0]["members"]
        assert rc == 0 and m["pid"] == os.getpid() and m["streams"] == ["logs"] and m["live"]
        assert m["patterns"] == ["logs"] and m["seen_ns"] >= m["joined_ns"] > 0
        rc, out, _ = run(capsys, "groups", data_dir)
        assert f"member {m['id']} pid {os.getpid()}: 1 streams (logs), last seen" in out
        consumer.close()                 # leaving frees the record and the claim
        rc, doc = run_json(capsys, "groups", data_dir)
        assert doc["groups"][0]["members"] == []
