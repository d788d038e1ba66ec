"""The core's parsers under ASan+UBSan, fed mutated real files (issue 9 item 7, I26).

``fuzz_driver.c`` (its docstring lists the targets and mutations) is built here with gcc
``-fsanitize=address,undefined -fno-sanitize-recover=undefined`` against the core's
sources; the seed corpus is the golden files (tests/data/format_v1) plus the files of a
real run made below. Any sanitizer report, crash or hang is a failure; the input is kept
as ``tests/data/fuzz/<target>/crash-<sha1>``, and every kept file is replayed by the
default run. Seeds are printed; replay a run with

    COMETMP_FUZZ_SEED=<seed> pytest tests/fuzz -k <target>

Default run: ``BUDGET`` seconds per target (about 30 s in all). ``-m soak``: 10 minutes
per target, or ``COMETMP_FUZZ_SECONDS``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest

import cometmp
from cometmp import offsets
from conftest import small_config, stream_path

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NATIVE = ROOT / "native"
GOLDEN = ROOT / "tests" / "data" / "format_v1"
CRASHES = ROOT / "tests" / "data" / "fuzz"
TARGETS = ("segment", "index", "recovery", "offsets", "registry")
BUDGET = 5.0            # seconds per target in the default run
CHUNK = 400             # inputs per driver process (a crash loses at most the rest of one)
HANG = 60               # seconds a chunk may take before it counts as a hang
CFLAGS = ["-std=gnu11", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
          "-fno-sanitize-recover=undefined"]
ENV = {**os.environ, "ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1:allocator_may_return_null=1",
       "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def _core_sources() -> list[str]:
    sys.path.insert(0, str(NATIVE))
    try:
        import build_ffi
    finally:
        sys.path.pop(0)
    return [str(NATIVE / s) for s in build_ffi.CORE_SOURCES]


@pytest.fixture(scope="session")
def driver() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    srcs = _core_sources() + [str(HERE / "fuzz_driver.c")]
    h = hashlib.blake2b(digest_size=8)
    for s in sorted(srcs + glob.glob(str(NATIVE / "*.h"))):
        h.update(pathlib.Path(s).read_bytes())
    out = pathlib.Path(tempfile.gettempdir()) / f"cometmp-fuzz-{os.getuid()}-{h.hexdigest()}"
    if out.exists():
        return str(out)
    with tempfile.TemporaryDirectory() as d:
        probe = pathlib.Path(d) / "probe.c"
        probe.write_text("int main(void) { return 0; }\n")
        p = subprocess.run([gcc, *CFLAGS, "-o", str(probe.with_suffix("")), str(probe)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"gcc cannot build with ASan+UBSan here (libasan/libubsan missing?): "
                        f"{p.stderr.strip()[:200]}")
        exe = pathlib.Path(d) / "fuzz_driver"
        subprocess.run([gcc, *CFLAGS, f"-I{NATIVE}", "-o", str(exe), *srcs, "-lpthread"],
                       check=True, capture_output=True, text=True)
        shutil.move(str(exe), str(out))
    return str(out)


def _extent(b: bytes, header: int = 64) -> bytes:
    """A file cut after its last non-zero byte (rounded to 4 KiB): the data, without the
    zeros of its preallocated tail (mutations there are wasted)."""
    end = len(b.rstrip(b"\0"))
    end = max(header, (end + 4095) // 4096 * 4096)
    return b[:min(end, len(b))]


def _bundle(state: bytes, idx: bytes, seg: bytes) -> bytes:
    """The recovery target's input (fuzz_driver.c run_recovery)."""
    return struct.pack("<I", len(state)) + state + struct.pack("<I", len(idx)) + idx + seg


def _offsets_compact(path: str) -> bytes:
    head = offsets.CM_OFS_GROUPS_OFF + 4 * offsets.CM_OFS_GROUP_BYTES
    with open(path, "rb") as f:
        a = f.read(head)
        f.seek(offsets.CM_OFS_SLOTS_OFF)
        b = f.read(16 * offsets.CM_OFS_SLOT_BYTES)
    return a + b


def _real_run(root: str) -> None:
    """A stream with entries of mixed sizes (some compressed), a torn-tail reopen, and a
    consumer store with groups, patterns, slots and acks."""
    cfg = small_config()
    cfg.compression.min_bytes = 500       # the 900-byte entries are stored compressed
    rng = random.Random(7)
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("fz", shards=1)
        for i in range(120):
            lg.append(rng.randbytes(rng.choice((0, 1, 20, 300, 2000))) if i % 3 else b"z" * 900)
        lg.append_many([b"a" * 50, b"b" * 70, b""])
    store = offsets.OffsetStore(root, writable=True)
    for name in ("g", "group-a", "consumers"):
        g = store.group(name, create=True)
        store.add_pattern(g, "fz:*")
        store.add_pattern(g, name + ":shard:*")
        s = store.slot(g, "fz:shard:0000", create=True)
        store.ack(g, s, 17)
        store.slot(g, "other:shard:0001", create=True)
    store.delete_group(store.group("consumers", create=False))
    store.close()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("fuzz-corpus")
    root = str(d / "log")
    _real_run(root)
    sdir = stream_path(root, "fz:shard:0000")
    seeds: dict[str, list[bytes]] = {t: [] for t in TARGETS}
    gold = GOLDEN / "streams" / "golden"
    streams = [(str(gold), sorted(gold.glob("*.seg"))), (sdir, sorted(pathlib.Path(sdir).glob("*.seg")))]
    for directory, segs in streams:
        state = pathlib.Path(directory, "state").read_bytes()
        for seg in segs:
            sb = _extent(seg.read_bytes())
            ib = seg.with_suffix(".idx").read_bytes()   # whole: a short one is rebuilt
            seeds["segment"].append(sb)
            seeds["index"].append(ib)
            seeds["recovery"].append(_bundle(state, ib, sb))
        seeds["recovery"].append(_bundle(b"", b"", _extent(segs[-1].read_bytes())))
    seeds["offsets"].append(_offsets_compact(offsets.offsets_path(root)))
    seeds["registry"].append((GOLDEN / "shm" / "registry").read_bytes())
    from cometmp.registry import table
    reg = table.Registry.create(str(d), 3)
    try:
        with reg.locked():
            reg.join_locked(os.getpid(), 1)
        seeds["registry"].append(bytes(reg._mm[:table.CM_REG_BYTES]))
    finally:
        reg.unlink_locked()
        reg.close()
    out: dict[str, list[str]] = {}
    for t, blobs in seeds.items():
        out[t] = []
        for i, b in enumerate(blobs):
            p = d / f"{t}-{i}"
            p.write_bytes(b)
            out[t].append(str(p))
    return out


def _workdir():
    return tempfile.TemporaryDirectory(prefix="cometmp-fuzz-",
                                       dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def fuzz(driver: str, target: str, seeds: list[str], seconds: float) -> tuple[int, list[str]]:
    """Run `target` for `seconds`; returns (inputs run, crash files kept)."""
    seed = int(os.environ.get("COMETMP_FUZZ_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"fuzz {target}: seed {seed}, {len(seeds)} seed files")
    done, crashes = 0, []
    deadline = time.monotonic() + seconds
    with _workdir() as w:
        while time.monotonic() < deadline:
            try:
                p = subprocess.run([driver, "run", target, str(seed), str(done), str(CHUNK), w, *seeds],
                                   capture_output=True, text=True, env=ENV, timeout=HANG)
                failed = p.returncode != 0
                report = p.stderr
            except subprocess.TimeoutExpired as e:
                failed, report = True, f"hang: a chunk ran over {HANG} s\n{e.stderr or ''}"
            if failed:
                blob = pathlib.Path(w, "current").read_bytes()
                dest = CRASHES / target / f"crash-{hashlib.sha1(blob).hexdigest()[:16]}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(blob)
                crashes.append(str(dest))
                print(f"fuzz {target}: input in chunk at {done} (seed {seed}) -> {dest}\n"
                      f"{report[-3000:]}")
            done += CHUNK
    print(f"fuzz {target}: {done} inputs, {len(crashes)} crashes")
    return done, crashes


@pytest.mark.parametrize("target", TARGETS)
def test_parser_survives_mutated_files_under_sanitizers(driver, corpus, target):
    n, crashes = fuzz(driver, target, corpus[target], BUDGET)
    assert n > 0
    assert not crashes, f"{target}: kept as regressions: {crashes}"


@pytest.mark.soak
@pytest.mark.parametrize("target", TARGETS)
def test_parser_survives_a_long_fuzz_run(driver, corpus, target):
    n, crashes = fuzz(driver, target, corpus[target],
                      float(os.environ.get("COMETMP_FUZZ_SECONDS", 600)))
    assert not crashes, f"{target}: kept as regressions: {crashes}"


@pytest.mark.parametrize("target", TARGETS)
def test_kept_crash_inputs_replay_cleanly(driver, target):
    files = sorted(glob.glob(str(CRASHES / target / "crash-*")))
    if not files:
        pytest.skip(f"no kept crash inputs for {target}")
    with _workdir() as w:
        p = subprocess.run([driver, "replay", target, w, *files], capture_output=True, text=True,
                           env=ENV, timeout=HANG)
    assert p.returncode == 0, f"{target}: {len(files)} regression files\n{p.stderr[-3000:]}"


def _mutate(rng: random.Random, b: bytearray, fields: list[int]) -> None:
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.5:
            at = rng.choice(fields)
            v = rng.choice((0, 1, 2, 63, 64, 65, 255, 1024, 1025, 4096, 0x7FFFFFFF, 0xFFFFFFFF))
            struct.pack_into("=I", b, at, v)
        else:
            at = rng.randrange(len(b))
            b[at] ^= 1 << rng.randrange(8)


@pytest.mark.parametrize("reader", ["offsets", "registry"])
def test_python_readers_raise_only_cometmp_errors_on_mutated_files(tmp_path, reader):
    """The Python mirrors of the layouts (OffsetStore.groups(), Registry snapshots and
    attach) on mutated real bytes: a result or a cometmp error, never IndexError,
    ZeroDivisionError, UnicodeDecodeError or struct.error."""
    from cometmp.registry import table
    seed = int(os.environ.get("COMETMP_FUZZ_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"python {reader}: seed {seed}")
    rng = random.Random(seed)
    root = str(tmp_path / "log")
    _real_run(root)
    errors = 0
    n = 400
    if reader == "offsets":
        path = offsets.offsets_path(root)
        pristine = _offsets_compact(path)
        head = offsets.CM_OFS_GROUPS_OFF + 4 * offsets.CM_OFS_GROUP_BYTES
        fields = [offsets.CM_OFS_OFF_GROUP_HWM, offsets.CM_OFS_OFF_SLOT_HWM]
        for g in range(4):
            o = offsets.CM_OFS_GROUPS_OFF + g * offsets.CM_OFS_GROUP_BYTES
            fields += [o + offsets.CM_OFS_G_STATE, o + offsets.CM_OFS_G_NAME_LEN,
                       o + offsets.CM_OFS_G_PATTERNS_LEN, o + offsets.CM_OFS_G_NAME]
        for s in range(16):
            o = head + s * offsets.CM_OFS_SLOT_BYTES
            fields += [o + offsets.CM_OFS_S_STATE, o + offsets.CM_OFS_S_GROUP,
                       o + offsets.CM_OFS_S_STREAM_LEN, o + offsets.CM_OFS_S_STREAM]
        for _ in range(n):
            b = bytearray(pristine)
            _mutate(rng, b, fields)
            b[offsets.CM_OFS_OFF_LOCK:offsets.CM_OFS_OFF_LOCK + 64] = \
                pristine[offsets.CM_OFS_OFF_LOCK:offsets.CM_OFS_OFF_LOCK + 64]
            with open(path, "r+b") as f:
                f.write(b[:head])
                f.seek(offsets.CM_OFS_SLOTS_OFF)
                f.write(b[head:])
            try:
                store = offsets.OffsetStore(root, writable=False)
                try:
                    store.groups()
                finally:
                    store.close()
            except cometmp.CometError:
                errors += 1
    else:
        reg = table.Registry.create(str(tmp_path), 3)
        try:
            with reg.locked():
                reg.join_locked(os.getpid(), 1)
            pristine = bytes(reg._mm[:table.CM_REG_BYTES])
            fields = [table.CM_REG_OFF_SIZE, table.CM_REG_OFF_MAX_ENTRIES,
                      table.CM_REG_OFF_PROCESS_COUNT, table.CM_REG_OFF_HEADER_BYTES]
            fields += [table.CM_REG_OFF_ENTRIES + i * table.CM_REG_ENTRY_BYTES + f
                       for i in range(8) for f in (table.CM_REGE_OFF_PID, table.CM_REGE_OFF_STATE,
                                                   table.CM_REGE_OFF_KEY)]
            lock = slice(table.CM_REG_OFF_LOCK, table.CM_REG_OFF_LOCK + 64)
            for _ in range(n):
                b = bytearray(pristine)
                _mutate(rng, b, fields)
                b[lock] = pristine[lock]
                reg._mm[:table.CM_REG_BYTES] = bytes(b)
                try:
                    snap = reg.snapshot(lock=False)
                    snap.owners(8)
                    snap.owned(0, 8)
                    table.Registry.attach(str(tmp_path), wait=0).close()
                except cometmp.CometError:
                    errors += 1
            reg._mm[:table.CM_REG_BYTES] = pristine
        finally:
            reg.unlink_locked()
            reg.close()
    print(f"python {reader}: {n} inputs, {errors} cometmp errors, no other exception")
