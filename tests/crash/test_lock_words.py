"""Lock words that nobody will ever release: a copy of a live directory (or registry
object) taken while a process held its lock, a lock word naming a thread that does not
exist, and random bytes in the mutex. Every cross-process lock (state page, offsets
file, worker registry) goes through the one policy of native/lock.c (I25): opening,
`cometmp recover` and creating a consumer group succeed within a bound, or fail with a
clear cometmp error naming the file -- never an abort in glibc, never an endless wait.
A live holder that keeps the lock too long gives a timeout naming the file and its
pid/tid.

Every use of the damaged or copied directory runs in a child process with a timeout, so
an old-style hang fails the test instead of hanging the suite, and a glibc abort shows as
returncode -SIGABRT.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import cometmp
from cometmp import format as fmt
from cometmp.offsets import offsets_path
from cometmp.registry.table import CM_REG_OFF_LOCK, Registry, shm_name

from conftest import child_env, small_config

STREAM = "locks:shard:0000"
OFS_OFF_LOCK = 64          # FORMAT.md §7: the offsets header's mutex
MUTEX_BYTES = 40           # sizeof(pthread_mutex_t) on glibc x86-64 (the reference ABI)
BOUND = 30.0               # seconds a use of the copy may take, generously

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
    reason="lock words are written with the glibc x86-64 mutex layout")

# --- holders: a real process that takes the lock the way cometmp does and keeps it --------

# the C writer's lock_shard() is a pthread mutex lock on the state page's robust mutex
HOLD_STATE = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR)
mm = mmap.mmap(fd, 4096)
lock = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(mm, int(sys.argv[2]))))
assert libc.pthread_mutex_lock(lock) == 0
print("held", flush=True)
sys.stdin.read()
"""

HOLD_OFFSETS = r"""
import sys
from cometmp.offsets import OffsetStore
store = OffsetStore(sys.argv[1], writable=True)
with store.locked():
    print("held", flush=True)
    sys.stdin.read()
"""

HOLD_REGISTRY = r"""
import sys
from cometmp.registry.table import Registry
reg = Registry.attach(sys.argv[1])
with reg.locked():
    print("held", flush=True)
    sys.stdin.read()
"""

# --- users of a directory: writer open + append, a new consumer group ---------------------

USE_DIRECTORY = r"""
import sys, cometmp
from conftest import small_config
try:
    c = cometmp.Client(sys.argv[1], config=small_config())
    c.log("locks", shards=1).append(b"after")
    cometmp.Consumer(c, group=sys.argv[2]).read("*", timeout=0)
    c.close()
except cometmp.CometError as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
print("OK", flush=True)
"""

USE_REGISTRY = r"""
import sys, cometmp
from cometmp.registry import membership
try:
    print("OK", membership.join(sys.argv[1], start_thread=False), flush=True)
except cometmp.CometError as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
"""


def _env(**extra: str) -> dict:
    env = child_env()
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.pathsep + env["PYTHONPATH"]
    env.update(extra)
    return env


def run(args: list[str], **extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run a child with a bound; a hang fails here (TimeoutExpired), an abort below."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(args, env=_env(**extra), capture_output=True, text=True,
                           timeout=BOUND * 2)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[-2:]} hung for {BOUND * 2:.0f} s (an unbounded lock wait)")
    assert p.returncode != -signal.SIGABRT, f"aborted in glibc: {p.stderr[-2000:]}"
    assert p.returncode >= 0, f"killed by signal {-p.returncode}: {p.stderr[-2000:]}"
    return p, time.monotonic() - t0


def use_directory(root: str, group: str = "fresh", **env: str) -> subprocess.CompletedProcess:
    p, took = run([sys.executable, "-c", USE_DIRECTORY, root, group], **env)
    assert took < BOUND, f"took {took:.1f} s"
    return p


def recover(root: str) -> subprocess.CompletedProcess:
    p, took = run([sys.executable, "-m", "cometmp", "recover", root])
    assert took < BOUND, f"recover took {took:.1f} s"
    return p


def use_registry(root: str, **env: str) -> subprocess.CompletedProcess:
    p, took = run([sys.executable, "-c", USE_REGISTRY, root], **env)
    assert took < BOUND, f"took {took:.1f} s"
    return p


@contextlib.contextmanager
def holding(code: str, *args: str):
    """A live process holding a lock until the block ends; yields its pid."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], env=_env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and p.poll() is None:
            if select.select([p.stdout], [], [], 0.5)[0]:
                break
        line = p.stdout.readline() if p.poll() is None else ""
        assert line.strip() == "held", p.stderr.read() if p.poll() is not None else line
        yield p.pid
    finally:
        p.stdin.close()
        try:
            p.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def make_directory(root: str) -> None:
    """A directory with a stream, a few entries and a consumer group (so an offsets file)."""
    c = cometmp.Client(root, config=small_config())
    lg = c.log("locks", shards=1)
    for i in range(10):
        lg.append(b"before-%d" % i)
    con = cometmp.Consumer(c, group="old")
    con.read("*", timeout=0)
    c.close()


def lock_file(root: str, kind: str) -> tuple[str, int]:
    if kind == "state":
        return os.path.join(root, "streams", STREAM, "state"), fmt.CM_STATE_OFF_LOCK
    if kind == "offsets":
        return offsets_path(root), OFS_OFF_LOCK
    return "/dev/shm" + shm_name(root), CM_REG_OFF_LOCK


def entries(root: str) -> list[bytes]:
    c = cometmp.Client(root, readonly=True)
    try:
        return [m.data for m in c.scan(STREAM)]
    finally:
        c.close()


@pytest.fixture
def dirs(tmp_path):
    """(source, copy) data directories; registry objects of both removed afterwards."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "copy")
    make_directory(src)
    names = []
    yield src, dst, names
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/dev/shm" + n)


def dead_tid() -> int:
    """A thread id that exists nowhere: a child that has exited and been reaped."""
    while True:
        p = subprocess.Popen(["true"])
        p.wait()
        if not os.path.exists(f"/proc/{p.pid}"):
            return p.pid


def write_lock_bytes(path: str, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def assert_directory_usable(root: str) -> None:
    p = use_directory(root)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    r = recover(root)
    assert r.returncode == 0, r.stdout + r.stderr
    got = entries(root)
    assert got[:10] == [b"before-%d" % i for i in range(10)] and got[-1] == b"after", got


# --- (a) a copy of a live directory, taken while a live process holds the lock ------------

@pytest.mark.parametrize("kind", ["state", "offsets"])
def test_copy_taken_while_a_live_process_holds_the_lock_opens(dirs, kind):
    src, dst, _ = dirs
    path, off = lock_file(src, kind)
    hold = HOLD_STATE if kind == "state" else HOLD_OFFSETS
    with holding(hold, *((path, str(off)) if kind == "state" else (src,))):
        subprocess.run(["cp", "-a", src, dst], check=True)
        assert_directory_usable(dst)


def test_registry_copied_while_a_live_process_holds_its_lock_is_joinable(dirs):
    src, dst, names = dirs
    os.makedirs(dst)
    names += [shm_name(src, create=True), shm_name(dst, create=True)]   # I33a: keys first
    Registry.create(src, 2).close()
    with holding(HOLD_REGISTRY, src):
        # a restored /dev/shm image: the object's bytes under the copy's name
        subprocess.run(["cp", "-a", "/dev/shm" + shm_name(src), "/dev/shm" + shm_name(dst)],
                       check=True)
        p = use_registry(dst)
    assert p.returncode == 0 and p.stdout.startswith("OK"), p.stdout + p.stderr


# --- (b) a lock word naming a thread that does not exist -----------------------------------

@pytest.mark.parametrize("kind", ["state", "offsets", "registry"])
def test_lock_word_naming_a_thread_that_does_not_exist_is_reinitialised(dirs, kind):
    src, _, names = dirs
    if kind == "registry":
        names.append(shm_name(src, create=True))   # I33a: the key first
        Registry.create(src, 2).close()
    path, off = lock_file(src, kind)
    tid = dead_tid()
    # __lock = tid (no waiters), __owner = tid: what a holder's copy looks like
    word = tid.to_bytes(4, "little")
    write_lock_bytes(path, off, word)
    write_lock_bytes(path, off + 8, word)
    if kind == "registry":
        p = use_registry(src)
        assert p.returncode == 0 and p.stdout.startswith("OK"), p.stdout + p.stderr
    else:
        assert_directory_usable(src)


# --- a word from another boot; a damaged mutex a live process still names ---------------

@contextlib.contextmanager
def mapped_writable(path: str):
    """This (live) process maps ``path`` writable, as every locker does."""
    import mmap
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 4096)
        try:
            yield mm
        finally:
            mm.close()
    finally:
        os.close(fd)


def test_state_lock_word_from_another_boot_is_reinitialised_at_writer_open(dirs):
    # a restored image of another boot whose word happens to name a thread that is alive
    # and maps the page here: only the page's boot_id (I16) tells that nobody holds it
    src, _, _ = dirs
    path, off = lock_file(src, "state")
    with mapped_writable(path) as mm:
        mm[fmt.CM_STATE_OFF_BOOT_ID:fmt.CM_STATE_OFF_BOOT_ID + 32] = b"0" * 32
        tid = threading.get_native_id().to_bytes(4, "little")
        mm[off:off + 4] = tid
        mm[off + 8:off + 12] = tid
        assert_directory_usable(src)


def test_damaged_mutex_named_by_a_live_process_is_reported_naming_the_file(dirs):
    src, _, _ = dirs
    path, off = lock_file(src, "state")
    with mapped_writable(path) as mm:
        tid = threading.get_native_id().to_bytes(4, "little")
        mm[off:off + 4] = tid
        mm[off + 16:off + 20] = (0x7F).to_bytes(4, "little")   # __kind: not a robust mutex
        p = use_directory(src, COMETMP_LOCK_TIMEOUT_MS="1000")
        assert p.returncode == 3 and "CorruptRecord" in p.stdout, p.stdout + p.stderr
        assert path in p.stdout and f"pid {os.getpid()}" in p.stdout, p.stdout
    # once nobody names it any more, the next open rebuilds it
    assert_directory_usable(src)


SELF_NAMED = r"""
import mmap, os, struct, sys, threading
from cometmp.offsets import OffsetStore
path = sys.argv[1]
fd = os.open(path, os.O_RDWR)
mm = mmap.mmap(fd, 4096)
tid = threading.get_native_id()
struct.pack_into("=i", mm, 64, tid)        # __lock: this very thread
struct.pack_into("=i", mm, 64 + 8, tid)    # __owner
store = OffsetStore(sys.argv[2], writable=True)
store.group("made-after-the-copy", create=True)
print(struct.unpack_from("=I", mm, 64)[0], struct.unpack_from("=Q", mm, 56)[0], flush=True)
"""


def test_offsets_word_naming_the_opening_thread_itself_is_stale_not_a_recursion(dirs):
    # a copy made while this very thread held the original: glibc would take the word as
    # a recursive lock this thread already holds, and its unlock would follow the copied
    # robust-list pointers; the policy rebuilds it instead (the word is free afterwards
    # and the rebuild is counted as a lock recovery)
    src, _, _ = dirs
    path, _ = lock_file(src, "offsets")
    p, took = run([sys.executable, "-c", SELF_NAMED, path, src])
    assert p.returncode == 0, p.stdout + p.stderr
    word, recoveries = (int(x) for x in p.stdout.split())
    assert (word, recoveries) == (0, 1), p.stdout


# --- a live holder that keeps the lock too long --------------------------------------------

@pytest.mark.parametrize("kind", ["state", "offsets"])
def test_a_live_holder_that_keeps_the_lock_too_long_gives_a_timeout_naming_it(dirs, kind):
    src, _, _ = dirs
    path, off = lock_file(src, kind)
    hold = HOLD_STATE if kind == "state" else HOLD_OFFSETS
    with holding(hold, *((path, str(off)) if kind == "state" else (src,))) as pid:
        os.kill(pid, signal.SIGSTOP)   # stopped while holding it: alive, never releasing
        try:
            t0 = time.monotonic()
            p = use_directory(src, COMETMP_LOCK_TIMEOUT_MS="1500")
            took = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "StorageError" in p.stdout and path in p.stdout and f"pid {pid}" in p.stdout, p.stdout
    assert 1.0 < took < BOUND, took


LOCK_REGISTRY_BRIEFLY = r"""
import sys, cometmp
from cometmp.registry.table import Registry
try:
    with Registry.attach(sys.argv[1]).locked(timeout_ms=1000):
        pass
except cometmp.CometError as e:
    print("ERROR", type(e).__name__, e, flush=True)
    sys.exit(3)
"""


def test_a_live_holder_of_the_registry_lock_is_named_in_the_timeout(dirs):
    src, _, names = dirs
    names.append(shm_name(src, create=True))   # I33a: the key first
    Registry.create(src, 2).close()
    with holding(HOLD_REGISTRY, src) as pid:
        os.kill(pid, signal.SIGSTOP)
        try:
            p, _ = run([sys.executable, "-c", LOCK_REGISTRY_BRIEFLY, src])
        finally:
            os.kill(pid, signal.SIGCONT)
    assert p.returncode == 3 and "RegistryError" in p.stdout, p.stdout + p.stderr
    assert shm_name(src) in p.stdout and f"pid {pid}" in p.stdout, p.stdout


# --- (c) random bytes in the mutex ------------------------------------------------------------

def outcome(args: list[str]) -> tuple[str, str]:
    """("ok" | "error" | "abort" | "signal" | "hang", output) of one use of a damaged copy."""
    try:
        p = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=BOUND)
    except subprocess.TimeoutExpired:
        return "hang", ""
    if p.returncode == -signal.SIGABRT:
        return "abort", p.stderr[-500:]
    if p.returncode < 0:
        return "signal", p.stderr[-500:]
    return ("ok" if p.returncode == 0 else "error"), p.stdout + p.stderr[-500:]


def damage_trials(dirs, kind: str, trials: int) -> None:
    """Random bytes over a random stretch of the mutex of a copy nobody else uses: the
    lock is rebuilt (nobody live can hold it), so every use succeeds -- never an abort,
    a hang, or an error that leaves the directory unusable."""
    src, dst, names = dirs
    seed = int(os.environ.get("COMETMP_TEST_SEED", random.randrange(2**32)))
    print(f"seed {seed} ({kind}, {trials} trials)")
    rng = random.Random(seed)
    if kind == "registry":
        os.makedirs(dst)
        names += [shm_name(src, create=True), shm_name(dst, create=True)]   # I33a: keys first
        Registry.create(src, 2).close()
    counts: dict[str, int] = {}
    bad = []
    for t in range(trials):
        if kind == "registry":
            shutil.copyfile("/dev/shm" + shm_name(src), "/dev/shm" + shm_name(dst))
            os.chmod("/dev/shm" + shm_name(dst), 0o600)   # as its owner made it (I33)
        else:
            shutil.rmtree(dst, ignore_errors=True)
            subprocess.run(["cp", "-a", src, dst], check=True)   # keeps the files sparse
        path, off = lock_file(dst, kind)
        a = rng.randrange(MUTEX_BYTES)
        b = rng.randrange(a + 1, MUTEX_BYTES + 1)
        write_lock_bytes(path, off + a, rng.randbytes(b - a))
        script = USE_REGISTRY if kind == "registry" else USE_DIRECTORY
        what, out = outcome([sys.executable, "-c", script, dst, "fresh"])
        counts[what] = counts.get(what, 0) + 1
        if what != "ok":
            bad.append(f"trial {t} bytes [{a},{b}): {what} {out.strip()[:300]}")
    print(f"{kind}: {counts}")
    assert not bad, f"seed {seed}: " + "\n".join(bad)


@pytest.mark.parametrize("kind", ["state", "offsets", "registry"])
def test_random_bytes_in_the_mutex_never_abort_or_hang(dirs, kind):
    damage_trials(dirs, kind, 3)


@pytest.mark.soak
@pytest.mark.parametrize("kind", ["state", "offsets", "registry"])
def test_random_bytes_in_the_mutex_never_abort_or_hang_soak(dirs, kind):
    damage_trials(dirs, kind, int(os.environ.get("COMETMP_SOAK_TRIALS", 150)))
