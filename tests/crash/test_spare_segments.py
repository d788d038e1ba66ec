"""The next segment made ahead of need (native/spare.c; ARCHITECTURE.md §4.1, issue 10 item 2).

A writer whose active segment is half full has its prefault thread build the next
segment's files as unnamed files (O_TMPFILE); the rotation names them. These tests check
what a user can break: the log reads back whole across rotations that took spares, a
spare never leaves a file or an allocated block behind (close, kill -9, fork), and a
closed client keeps nothing open on its filesystem, which therefore unmounts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cometmp

from conftest import (check_entries, child_env, fds_under, fork_closing_inherited, segment_files,
                      small_config)

STREAM = "sp:shard:0000"
ENTRY = b"s" * 1000


def wait_spare(writer, want: str, timeout: float = 60.0) -> None:
    """Poll the writer's spare state (a condition: the prefault thread builds it off the
    append path) until it is `want`."""
    deadline = time.monotonic() + timeout
    while (state := writer.spare()) != want:
        assert state != "failed", "the spare failed to build"
        assert time.monotonic() < deadline, f"spare still {state!r} after {timeout} s"
        time.sleep(0.0005)


def fill_past_half(c: cometmp.Client, lg) -> None:
    """Append until this process has asked for a spare (the active segment is half full)."""
    w = c._writer(STREAM)
    for _ in range(10_000):
        lg.append(ENTRY)
        if w.spare() != "none":
            return
    raise AssertionError("no spare was asked for in 10,000 appends of 1 KB to 1 MiB segments")


def rotate_once(c: cometmp.Client, lg) -> None:
    before = c.stats()["streams"][STREAM]["counters"]["rotations"]
    while c.stats()["streams"][STREAM]["counters"]["rotations"] == before:
        lg.append(ENTRY)


def unnamed_files_open(directory: str) -> list[str]:
    """This process's fds on unnamed (deleted or O_TMPFILE) files under `directory`."""
    return [t for t in fds_under(directory) if t.endswith("(deleted)")]


def check_log(root: str, n: int) -> None:
    check_entries(root, STREAM, ENTRY, n, small_config())
    d = os.path.dirname(segment_files(root, STREAM)[0][1])
    extra = [f for f in os.listdir(d) if not (f.endswith((".seg", ".idx")) or f == "state")]
    assert not extra, extra


def test_rotations_take_the_spare_made_ahead_and_the_log_reads_back_whole(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("sp", shards=1)
        w = c._writer(STREAM)
        for i in range(6):
            fill_past_half(c, lg)
            wait_spare(w, "ready")
            rotate_once(c, lg)
            assert w.spare() == "none"        # taken by the rotation
            counters = c.stats()["streams"][STREAM]["counters"]
            assert counters["spare_rotations"] == i + 1, counters
        n = c.length(STREAM)
    check_log(root, n)


def test_closing_with_a_spare_built_or_building_keeps_nothing_open_and_the_filesystem_unmounts(
        tmpfs):
    for want in ("building", "ready"):
        mnt = tmpfs("size=64m")
        root = os.path.join(mnt, "log")
        with cometmp.Client(root, config=small_config()) as c:
            lg = c.log("sp", shards=1)
            fill_past_half(c, lg)
            if want == "ready":
                wait_spare(c._writer(STREAM), "ready")
            assert c._writer(STREAM).spare() in (want, "ready")
            n = c.length(STREAM)
        assert unnamed_files_open(mnt) == []
        check_log(root, n)
        p = subprocess.run(["umount", mnt], capture_output=True, text=True)
        assert p.returncode == 0, f"umount after close ({want}): {p.stderr}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)


#: a child's start: open ROOT (argv[1]) with CONFIG, append until a spare is asked for,
#: wait until it is built (`c`, `lg`, `w` for what follows; argv[2] is tests/)
SPARE_READY = r"""
import os, sys, time, cometmp
sys.path.insert(0, sys.argv[2])
from conftest import small_config
c = cometmp.Client(sys.argv[1], config=CONFIG)
lg = c.log("sp", shards=1)
w = c._writer("sp:shard:0000")
while w.spare() == "none":
    lg.append(b"s" * 1000)
while w.spare() != "ready":
    time.sleep(0.0005)
"""

KILLED_WRITER = SPARE_READY.replace("CONFIG", "small_config()") + r"""
print(c.length("sp:shard:0000"), flush=True)
time.sleep(600)
"""


def test_a_writer_killed_holding_a_spare_leaves_no_file_and_no_allocated_block(tmpfs):
    mnt = tmpfs("size=64m")
    root = os.path.join(mnt, "log")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, root, tests], env=child_env(),
                         stdout=subprocess.PIPE, text=True)
    try:
        n = int(p.stdout.readline())
        st = os.statvfs(mnt)
        held = (st.f_blocks - st.f_bfree) * st.f_frsize
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    st = os.statvfs(mnt)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    files = sum(os.stat(os.path.join(dp, f)).st_blocks * 512
                for dp, _, fs in os.walk(mnt) for f in fs)
    # the spare's blocks (its first MiB and its index) went with the process
    assert held - used >= 256 * 1024, (held, used)
    assert used == files, f"{used - files} bytes allocated that no file holds"
    check_log(root, n)


def test_a_forked_child_neither_takes_nor_frees_its_parents_spare(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("sp", shards=1)
        w = c._writer(STREAM)
        fill_past_half(c, lg)
        wait_spare(w, "ready")
        pid = os.fork()
        if pid == 0:   # the child closes everything it inherited, then leaves
            code = 1
            try:
                c.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert w.spare() == "ready"
        rotate_once(c, lg)
        assert c.stats()["streams"][STREAM]["counters"]["spare_rotations"] == 1
        n = c.length(STREAM)
    check_log(root, n)


# 64 KiB chunks: the spare allocates its header page and at most 4 chunks of headroom
FULL_AFTER_SPARE = SPARE_READY.replace("CONFIG", "small_config(preallocate_bytes=64 * 1024)") + r"""
mnt = sys.argv[3]
st = os.statvfs(mnt)
with open(os.path.join(mnt, "filler"), "wb") as f:
    f.write(b"\xff" * max(0, st.f_bavail * st.f_frsize - 128 * 1024))
big = os.urandom(600 * 1024)   # does not fit the active segment, nor the spare's first blocks
try:
    lg.append(big)
    print("appended")
except cometmp.DiskFull as e:
    print("DiskFull", e.errno)
os.unlink(os.path.join(mnt, "filler"))
print(lg.append(big).entry == c.length("sp:shard:0000") - 1, flush=True)
"""


def test_a_rotation_into_a_spare_reserves_the_rest_of_a_big_entry_before_storing_it(tmpfs):
    """The spare allocated only its first blocks (its stream's headroom, here at most 260 KiB);
    an entry larger than those, written as the first of the new segment on a full
    filesystem, must be DiskFull, never a SIGBUS (I9)."""
    mnt = tmpfs("size=8m")
    root = os.path.join(mnt, "log")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", FULL_AFTER_SPARE, root, tests, mnt], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    assert p.stdout.split("\n")[:2] == ["DiskFull 28", "True"], p.stdout


def test_a_child_forked_while_the_spare_is_built_closes_its_copy_without_waiting(tmp_path):
    """Fork right after the parent asked for a spare (its build still in the parent's
    thread): the child, whose own prefault thread runs with tickets of its own, closes the
    inherited writer at once and keeps no fd of the parent's unnamed files."""
    root = str(tmp_path / "log")
    other = str(tmp_path / "child")
    forks = 0
    with cometmp.Client(root, config=small_config()) as c:
        lg = c.log("sp", shards=1)
        w = c._writer(STREAM)
        for _ in range(20):
            fill_past_half(c, lg)
            forks += w.spare() == "building"
            streams = os.path.join(root, "streams")
            assert fork_closing_inherited(c, other, lambda: unnamed_files_open(streams)) == 0
            wait_spare(w, "ready")
            rotate_once(c, lg)
        assert c.stats()["streams"][STREAM]["counters"]["spare_rotations"] == 20
        n = c.length(STREAM)
    print(f"{forks} of 20 forks saw the spare still being built")
    check_log(root, n)


def test_on_a_full_filesystem_the_spare_gives_its_blocks_back_to_the_append(tmpfs):
    """A ready spare holds blocks ahead of need; when the active segment's own allocation
    meets ENOSPC the writer drops the spare and retries, so the append succeeds on the
    freed blocks instead of raising DiskFull while the stream itself holds free space."""
    mnt = tmpfs("size=8m")
    root = os.path.join(mnt, "log")
    with cometmp.Client(root, config=small_config(preallocate_bytes=64 * 1024)) as c:
        lg = c.log("sp", shards=1)
        w = c._writer(STREAM)
        fill_past_half(c, lg)
        wait_spare(w, "ready")
        st = os.statvfs(mnt)
        with open(os.path.join(mnt, "filler"), "wb") as f:
            f.write(b"\xff" * (st.f_bavail * st.f_frsize))
        assert os.statvfs(mnt).f_bavail == 0
        appended = 0
        while w.spare() == "ready":
            lg.append(ENTRY)        # a DiskFull here fails the test
            appended += 1
            assert appended < 5_000, "the headroom never ran out"
        assert w.spare() == "none"
        lg.append(ENTRY)
        n = c.length(STREAM)
        os.unlink(os.path.join(mnt, "filler"))
    check_log(root, n)
