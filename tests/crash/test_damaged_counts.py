"""Every count, offset or length read from a file or shared memory is checked before use
(issue 9 item 7; ARCHITECTURE.md I26): a damaged one is a cometmp error naming the file
and offset (or, for derived data, is ignored and rebuilt), never an out-of-bounds read.

Each case damages one count in real files written by a real run, then uses them in a
child process, so a crash of the old code (SIGSEGV, SIGBUS) fails the test instead of
killing the test run. The fuzz tier (tests/fuzz) searches for more of these.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct

import cometmp
from cometmp import format as fmt
from cometmp import offsets
from conftest import run_python, small_config, stream_path
from test_disk_full import small_fs  # noqa: F401  (fixture)

STREAM = "dmg:shard:0000"


def poke(path: str, off: int, pack: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(pack, value))


def ran_cleanly(p) -> str:
    assert p.returncode >= 0, f"child died of {signal.Signals(-p.returncode).name}\n{p.stderr}"
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def write_entries(root: str, n: int, size: int = 300, **storage) -> list[str]:
    digests = []
    with cometmp.Client(root, config=small_config(**storage)) as c:
        lg = c.log("dmg", shards=1)
        for i in range(n):
            data = hashlib.sha256(str(i).encode()).digest() * (size // 32)
            lg.append(data)
            digests.append(hashlib.sha256(data).hexdigest())
    return digests


REOPEN = r"""
import hashlib, sys, cometmp
from conftest import small_config
root, n = sys.argv[1], int(sys.argv[2])
with cometmp.Client(root, config=small_config()) as c:
    got = [hashlib.sha256(m.data).hexdigest() for m in c.scan("dmg:shard:0000")]
    assert len(got) == n, (len(got), n)
    assert c.log("dmg", shards=1).append(b"after").entry == n
    print("\n".join(got))
"""


def test_a_damaged_index_count_in_the_state_page_is_ignored_at_recovery(data_dir):
    """idx_count (state page offset 184) beyond the index's table: recovery walks from
    the segment start instead of reading entries past the mapping (recover_locked)."""
    digests = write_entries(data_dir, 500)
    state = os.path.join(stream_path(data_dir, STREAM), "state")
    for bad in (0xFFFFFFF0, 0x7FFFFFFF, 100_000):
        poke(state, fmt.CM_STATE_OFF_IDX_COUNT, "<I", bad)
        out = ran_cleanly(run_python("import sys; sys.path.insert(0, 'tests')\n" + REOPEN,
                                     data_dir, str(len(digests)), cwd=_repo()))
        assert out.split() == digests
        digests.append(hashlib.sha256(b"after").hexdigest())


def test_a_damaged_alloc_end_never_skips_reserving_blocks_on_a_full_disk(small_fs):  # noqa: F811
    """alloc_end (offset 168) claiming the whole segment is reserved: on a full disk the
    next append must still reserve its blocks (DiskFull), not store into a hole (SIGBUS)."""
    root = os.path.join(small_fs, "log")
    digests = write_entries(root, 3, preallocate_bytes=64 * 1024)
    state = os.path.join(stream_path(root, STREAM), "state")
    poke(state, fmt.CM_STATE_OFF_ALLOC_END, "<Q", 1024 * 1024)
    st = os.statvfs(small_fs)
    with open(os.path.join(small_fs, "filler"), "wb") as f:
        f.write(b"\xff" * (st.f_bavail * st.f_frsize))
    code = r"""
import os, sys, cometmp
from conftest import small_config
with cometmp.Client(sys.argv[1], config=small_config(preallocate_bytes=64 * 1024)) as c:
    lg = c.log("dmg", shards=1)
    for i in range(40):
        try:
            lg.append(os.urandom(20_000))
        except cometmp.DiskFull as e:
            print("DiskFull:", e)
            break
    else:
        sys.exit("the full filesystem took 800 KB")
"""
    out = ran_cleanly(run_python("import sys; sys.path.insert(0, 'tests')\n" + code, root,
                                 cwd=_repo()))
    assert "DiskFull" in out
    os.unlink(os.path.join(small_fs, "filler"))
    with cometmp.Client(root, config=small_config(preallocate_bytes=64 * 1024)) as c:
        got = [hashlib.sha256(m.data).hexdigest() for m in c.scan(STREAM)]
    assert got[:3] == digests


def test_a_damaged_pattern_length_is_a_corrupt_record_naming_file_and_offset(data_dir):
    """patterns_len of a group record beyond its 3 KiB field: CorruptRecord, not a scan
    of gigabytes past the mapping (cm_offsets_add_pattern), and groups() says so too."""
    os.makedirs(data_dir)
    store = offsets.OffsetStore(data_dir, writable=True)
    g = store.group("g", create=True)
    store.add_pattern(g, "dmg:*")
    store.close()
    path = offsets.offsets_path(data_dir)
    off = offsets.CM_OFS_GROUPS_OFF + g.index * offsets.CM_OFS_GROUP_BYTES + offsets.CM_OFS_G_PATTERNS_LEN
    poke(path, off, "=I", 0xFFFFFFFF)
    code = r"""
import sys, cometmp
from cometmp import offsets
store = offsets.OffsetStore(sys.argv[1], writable=True)
g = store.group("g", create=False)
for what, call in (("add_pattern", lambda: store.add_pattern(g, "other:*")),
                   ("groups", store.groups)):
    try:
        call()
    except cometmp.CorruptRecord as e:
        print(what, "CorruptRecord:", e)
    else:
        sys.exit(what + " accepted patterns_len 0xffffffff")
"""
    out = ran_cleanly(run_python(code, data_dir))
    assert out.count("CorruptRecord") == 2 and f"offset {off}" in out and path in out


def test_a_live_group_with_a_damaged_name_length_is_reported_not_skipped(data_dir):
    """A live group that groups() skipped would protect nothing from retention."""
    os.makedirs(data_dir)
    store = offsets.OffsetStore(data_dir, writable=True)
    g = store.group("g", create=True)
    s = store.slot(g, "dmg:shard:0000", create=True)
    store.close()
    path = offsets.offsets_path(data_dir)
    for off, value in ((offsets.CM_OFS_GROUPS_OFF + offsets.CM_OFS_G_NAME_LEN, 5000),
                       (offsets.CM_OFS_SLOTS_OFF + s * offsets.CM_OFS_SLOT_BYTES
                        + offsets.CM_OFS_S_STREAM_LEN, 0)):
        with open(path, "rb") as f:
            good = f.read()
        poke(path, off, "=I", value)
        store = offsets.OffsetStore(data_dir, writable=False)
        try:
            store.groups()
            raise AssertionError(f"groups() accepted {value} at offset {off}")
        except cometmp.CorruptRecord as e:
            assert path in str(e) and f"offset {off}" in str(e)
        finally:
            store.close()
        with open(path, "wb") as f:
            f.write(good)


def test_a_registry_with_a_damaged_process_count_is_a_format_error(tmp_path):
    """process_count (registry offset 36) of 0 or above the table: FormatError at attach
    and on every read, never a division by zero or an index past the table."""
    from cometmp.registry import table
    code = r"""
import struct, sys, cometmp
from cometmp.registry import table
reg = table.Registry.create(sys.argv[1], 2)
try:
    for bad in (0, 1000, 0xFFFFFFFF):
        struct.pack_into("=I", reg._mm, table.CM_REG_OFF_PROCESS_COUNT, bad)
        for what, call in (("snapshot", lambda: reg.snapshot(lock=False).owners(4)),
                           ("attach", lambda: table.Registry.attach(sys.argv[1], wait=0))):
            try:
                call()
            except cometmp.FormatError as e:
                print(what, bad, "FormatError:", e)
            else:
                sys.exit(f"{what} accepted process_count {bad}")
finally:
    reg.unlink_locked()
"""
    d = tmp_path / "reg"
    d.mkdir()
    out = ran_cleanly(run_python(code, str(d)))
    assert out.count("FormatError") == 6 and "process_count" in out
    assert table  # imported for the constants the child uses


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
