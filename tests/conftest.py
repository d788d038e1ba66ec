"""Shared fixtures and helpers of cometmp's test tiers (unit/, crash/, ...).

Everything here works on real files under ``tmp_path`` and real processes: no mocks.
``tests/oracle.py`` (the pure-Python reader) is the oracle the tests check the C core's
one walker against.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
import uuid

import pytest

import cometmp
from cometmp import format as fmt
from cometmp import paths

import oracle

MiB = 1024 * 1024

#: the directory that holds the ``cometmp`` package the tests import (a source tree
#: with the extensions built in place, or site-packages after ``pip install .``)
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(cometmp.__file__)))


def wait_until(cond, timeout: float, what: str, interval: float = 0.02):
    """Poll ``cond()`` until it returns a true value and return that value; after
    ``timeout`` seconds raise AssertionError saying ``what`` did not happen (and the last
    value seen). The one wait helper of the tests: every wait is for a condition, with a
    bound that is generous (>= 10x the expected time) because the machine may be loaded;
    ``interval`` only paces the polling."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} "
                                 f"(last seen: {got!r})")
        time.sleep(interval)


def small_config(**storage) -> cometmp.Config:
    """Config with 1 MiB segments (the smallest allowed) so tests cross rotations cheaply."""
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1 * MiB
    cfg.storage.preallocate_bytes = 256 * 1024
    for k, v in storage.items():
        setattr(cfg.storage, k, v)
    return cfg


@pytest.fixture
def cfg() -> cometmp.Config:
    return small_config()


@pytest.fixture
def data_dir(tmp_path) -> str:
    return str(tmp_path / "log")


def child_env() -> dict:
    """Environment for a Python child process that must import the same cometmp."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def sleeping_readers(root: str, stream: str) -> int:
    """The state page's count of readers asleep on ``stream``'s futex (FORMAT.md): the
    condition a test waits for before it wakes a blocked read()."""
    with open(os.path.join(paths.stream_dir(root, stream), paths.STATE), "rb") as f:
        return struct.unpack_from("=I", f.read(fmt.CM_STATE_OFF_WAITERS + 4),
                                  fmt.CM_STATE_OFF_WAITERS)[0]


class WokenSpy:
    """Stands in for cometmp.consumer's ``_reader`` (monkeypatch) and records what each
    ``wait_woken`` returned: None (timed out), 0 (handed to the full iteration), or the
    entries the woken read delivered."""

    def __init__(self):
        from cometmp import _reader
        self._real = _reader
        self.results: list = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def wait_woken(self, *args):
        r = self._real.wait_woken(*args)
        self.results.append(r)
        return r


def run_python(code: str, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(), timeout=timeout,
                          capture_output=True, text=True, **kw)


def stream_path(root: str, stream: str) -> str:
    return paths.stream_dir(root, stream)


def segment_files(root: str, stream: str) -> list[tuple[int, str]]:
    """(base, path) of the segments of a stream, oldest first."""
    d = stream_path(root, stream)
    return [(b, os.path.join(d, paths.segment_name(b))) for b in paths.list_segment_bases(d)]


def frame_for(path: str, payload: bytes, ts_ns: int, seq: int, flags: int = 0) -> bytes:
    """A frame that is valid as sequence ``seq`` of the segment file ``path``: bound to its
    stream id and entry number in a version-2 segment (FORMAT.md §2.2), unbound in v1.
    What the damage suites plant to play a well-formed stale or ghost record."""
    with open(path, "rb") as f:
        h = fmt.parse_segment_header(f.read(fmt.CM_SEG_HEADER_BYTES))
    sid = h.stream_id if h.version == fmt.CM_SEG_VERSION else None
    return fmt.encode_record(payload, ts_ns, seq, flags, stream_id=sid,
                             base=int(os.path.basename(path)[:20]))


def oracle_chain(root: str, stream: str) -> int:
    """Walk every segment of `stream` with the pure-Python reader: each undamaged and
    starting where the one before ends (I1). Returns the entry number after the last."""
    expect = 0
    for base, path in segment_files(root, stream):
        recs, damage = oracle_walk(path)
        assert not damage, f"{path}: {damage}"
        assert base == expect, f"segment {base} does not start where the one before ends ({expect})"
        expect = base + len(recs)
    return expect


def fds_under(directory: str) -> list[str]:
    """What this process's open descriptors on files under `directory` point at (an unnamed
    or deleted file's target ends in "(deleted)")."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory):
            out.append(target)
    return out


def fork_closing_inherited(c: cometmp.Client, other: str, kept) -> int:
    """Fork; the child starts its own prefault thread (a client of its own on `other`),
    closes `c`, which it inherited, and exits 2 when `kept()` (what it still holds of the
    parent's files) is non-empty, -14 when something hangs. The child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(30)
            with cometmp.Client(other) as mine:
                mine.log("own", shards=1).append(b"starts this child's thread")
                c.close()
                code = 2 if kept() else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def check_entries(root: str, stream: str, entry: bytes, n: int, config: cometmp.Config) -> None:
    """After a reopen: `stream` holds exactly `n` entries, each `entry`, and every segment
    is clean by the pure-Python reader and chained (I1)."""
    with cometmp.Client(root, config=config) as c:
        assert c.length(stream) == n
        assert sum(1 for m in c.scan(stream) if m.data == entry) == n
    assert oracle_chain(root, stream) == n


def oracle_walk(path: str) -> tuple[list[oracle.Record], list[oracle.Damage]]:
    """All records and damage of a segment file, according to the pure-Python reader; on
    the way, assert that the package's one walker (native/walker.c) agrees with it."""
    with open(path, "rb") as f:
        buf = f.read()
    assert fmt.segment_header_ok(buf), f"{path}: bad segment header"
    recs, damage = [], []
    for item in oracle.walk_segment(buf):
        (recs if isinstance(item, oracle.Record) else damage).append(item)
    assert_walkers_agree(path, buf)
    return recs, damage


def published_limits(path: str) -> list[int | None]:
    """The limits readers walk a segment with: none, and the published count below which
    an end of data is damage (the successor's base of a sealed segment, the state page's
    committed count for the active one, FORMAT.md §2.4)."""
    directory = os.path.dirname(path)
    base = int(os.path.basename(path)[:20])
    bases = paths.list_segment_bases(directory)
    limits: list[int | None] = [None]
    later = [b for b in bases if b > base]
    if later:
        limits.append(later[0] - base)
    else:
        try:
            with open(os.path.join(directory, paths.STATE), "rb") as f:
                page = f.read(fmt.CM_STATE_BYTES)
        except OSError:
            page = b""
        if len(page) == fmt.CM_STATE_BYTES and int.from_bytes(page[:4], sys.byteorder) == fmt.CM_STATE_MAGIC:
            committed = int.from_bytes(page[fmt.CM_STATE_OFF_COMMITTED:fmt.CM_STATE_OFF_COMMITTED + 8],
                                       sys.byteorder)
            if committed >= base:
                limits.append(committed - base)
    return limits


def c_walk_items(path: str, stop: int | None) -> list[tuple]:
    """The C walker's view (Segment.walk): records and damage findings as plain tuples."""
    from cometmp.segment import Damage, Segment

    seg = Segment.open(path, int(os.path.basename(path)[:20]))
    try:
        return [("damage", i.offset, i.first_seq, i.lost, i.end, i.cause) if isinstance(i, Damage)
                else ("record", i.offset, i.seq, i.flags, i.ts_ns, i.length)
                for i in seg.walk(stop_seq=stop)]
    finally:
        seg.close()


def oracle_items(buf: bytes, stop: int | None, base: int | None = None) -> list[tuple]:
    """The oracle's view of the same walk, as the same tuples (``base``: the file name's)."""
    return [("damage", i.offset, i.first_seq, i.lost, i.end, i.reason) if isinstance(i, oracle.Damage)
            else ("record", i.offset, i.seq, i.flags, i.ts_ns, len(i.payload))
            for i in oracle.walk_segment(buf, stop=stop, published=stop or 0, base=base)]


def assert_walkers_agree(path: str, buf: bytes | None = None) -> int:
    """The C walker and the oracle agree on every record and every finding of a segment,
    under every limit a reader uses (published_limits). Returns the number of findings."""
    if buf is None:
        with open(path, "rb") as f:
            buf = f.read()
    findings = 0
    for stop in published_limits(path):
        c, o = c_walk_items(path, stop), oracle_items(buf, stop, int(os.path.basename(path)[:20]))
        if c != o:
            diff = next((i for i, (a, b) in enumerate(zip(c, o)) if a != b), min(len(c), len(o)))
            raise AssertionError(f"{path} (limit {stop}): the C walker and the oracle disagree at item "
                                 f"{diff}: {c[diff:diff + 2]} vs {o[diff:diff + 2]} "
                                 f"({len(c)} vs {len(o)} items)")
        findings += sum(item[0] == "damage" for item in c)
    return findings


def tree_fingerprint(root: str) -> dict[str, tuple]:
    """Every file and directory under root with its content hash, size, mode, mtime and
    ctime: equal before/after proves nothing was modified, created or deleted."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            out[os.path.relpath(p, root)] = (digest, st.st_size, st.st_mode, st.st_mtime_ns,
                                             st.st_ctime_ns)
    return out


def file_clock_past(root: str) -> None:
    """Returns once the file-timestamp clock of ``root``'s filesystem has moved past every
    mtime/ctime under ``root`` (a probe file beside ``root`` is stamped until it is newer):
    from then on any write under ``root`` changes its tree_fingerprint, even on a
    filesystem whose timestamps are coarse (jiffies)."""
    newest = max((max(st.st_mtime_ns, st.st_ctime_ns) for st in
                  (os.lstat(os.path.join(d, n)) for d, ds, fs in os.walk(root) for n in ds + fs)),
                 default=0)
    probe = os.path.join(os.path.dirname(os.path.abspath(root)), ".clock-probe")

    def stamped_later() -> bool:
        with open(probe, "w"):
            pass
        return os.lstat(probe).st_mtime_ns > newest

    try:
        wait_until(stamped_later, 10, f"file timestamps to pass those under {root}", interval=0.001)
    finally:
        os.unlink(probe)


def payload_for(tag: str, n: int, size: int) -> bytes:
    """A deterministic payload of ``size`` bytes that names its writer and sequence."""
    head = f"{tag}:{n}:".encode()
    if size <= len(head):
        return head[:size] if size else b""
    rnd = random.Random(f"{tag}:{n}")
    return head + rnd.randbytes(size - len(head))


@pytest.fixture(autouse=True)
def _damage_suites_walkers_agree(request):
    """After every test of the damage suites (tests/crash) that worked in ``tmp_path``:
    every segment it left, damaged or not, reads the same with the C walker and the
    oracle (assert_walkers_agree). Fixtures shared by a module are checked where their
    tests call oracle_walk()."""
    if "tmp_path" not in request.fixturenames or os.sep + "crash" + os.sep not in str(request.path):
        yield
        return
    root = str(request.getfixturevalue("tmp_path"))
    yield
    for dirpath, _dirs, files in os.walk(root):
        for fn in sorted(files):
            if fn.endswith(paths.SEGMENT_SUFFIX) and len(fn) == 20 + len(paths.SEGMENT_SUFFIX):
                path = os.path.join(dirpath, fn)
                with open(path, "rb") as f:
                    buf = f.read()
                if fmt.segment_header_ok(buf):
                    assert_walkers_agree(path, buf)


#: registry objects a test's directories left in /dev/shm (nodeid, name), removed by
#: _no_registry_left_behind and listed at the end of the run
REGISTRIES_LEFT: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _no_registry_left_behind(request):
    """After every test that used ``tmp_path``: a registry shm object belonging to a data
    directory under it (one with a registry key) is removed, so a test that kills a whole
    server on purpose (a stale registry is the product's documented leftover, I24) does not
    leave 16 KiB in /dev/shm per run; each one is listed in the run's summary."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    root = str(request.getfixturevalue("tmp_path"))
    yield
    from cometmp import registry
    for dirpath, dirs, files in os.walk(root):
        if paths.REGISTRY_KEY in files:
            try:
                name = registry.shm_name(dirpath)
            except (cometmp.CometError, OSError):
                continue
            shm = "/dev/shm/" + name.lstrip("/")
            if os.path.exists(shm):
                REGISTRIES_LEFT.append((request.node.nodeid, name))
                try:
                    os.unlink(shm)
                except OSError:
                    pass


def pytest_terminal_summary(terminalreporter):
    if REGISTRIES_LEFT:
        terminalreporter.write_line(f"registry objects left in /dev/shm by tests (removed): "
                                    f"{len(REGISTRIES_LEFT)}")
        for nodeid, name in REGISTRIES_LEFT:
            terminalreporter.write_line(f"  {nodeid}: {name}")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs; ``tmpfs(opts)`` returns its path. Unmounted afterwards."""
    mounted = []

    def mount(opts: str) -> str:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")
        mounted.append(str(mnt))
        return str(mnt)

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", m], check=True)


def use_up_inodes(directory: str) -> int:
    """Create empty files until the filesystem has no inode left; returns how many."""
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"inode{n}"), os.O_CREAT | os.O_WRONLY))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return n
        n += 1


def use_up_blocks(directory: str) -> None:
    """Write a filler file until the filesystem has no block left."""
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        chunk = b"\xa5" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return


@pytest.fixture
def other_user():
    """(name, uid, gid) of a fresh local user made with useradd, deleted afterwards."""
    import pwd

    name = "cmt" + uuid.uuid4().hex[:12]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield name, pw.pw_uid, pw.pw_gid
    finally:
        r = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
        assert r.returncode in (0, 12), r.stderr   # 12: no home directory to remove
