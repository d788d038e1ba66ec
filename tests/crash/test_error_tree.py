"""Every OS-level failure leaves cometmp as one exception of the tree (issue 9 item 6):
ENOSPC/EDQUOT anywhere -> DiskFull, EMFILE -> TooManyOpenFiles naming the limit, anything
else -> StorageError; each carries ``errno`` and ``filename`` and chains the OSError.

Real conditions only: a real tmpfs whose blocks or inodes run out, a real other user in
front of a chmod 000 directory, a real RLIMIT_NOFILE, and the failpoint build of the core
(tests/failpoints.py) for the core's calls.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

import cometmp
from cometmp.errors import OS_ERRORS, os_error
from cometmp.tools import verify

import failpoints
from conftest import child_env, small_config, use_up_blocks, use_up_inodes

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_os_level(e: BaseException, cls: type, err: int, filename: str) -> None:
    assert type(e) is cls, (type(e), e)
    assert isinstance(e, cometmp.CometError) and not isinstance(e, OSError)
    assert isinstance(e, OS_ERRORS)
    assert e.errno == err, (e.errno, e)
    assert e.filename == filename, (e.filename, filename)
    assert filename in str(e)
    assert e.os_error.errno == err


def test_full_inode_table_creating_the_data_directory_is_disk_full_naming_it(tmpfs):
    mnt = tmpfs("size=2m,nr_inodes=64")
    use_up_inodes(mnt)
    root = os.path.join(mnt, "log")
    with pytest.raises(cometmp.DiskFull) as ei:
        cometmp.Client(root, config=small_config())
    assert_os_level(ei.value, cometmp.DiskFull, errno.ENOSPC, root)
    assert isinstance(ei.value.__cause__, OSError)


def test_full_disk_writing_the_directory_marker_is_disk_full_and_leaves_no_temp_file(tmpfs):
    mnt = tmpfs("size=1m")
    root = os.path.join(mnt, "log")
    for d in ("", "streams", "families"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    use_up_blocks(mnt)
    marker = os.path.join(root, "cometmp.json")
    with pytest.raises(cometmp.DiskFull) as ei:
        cometmp.Client(root, config=small_config())
    assert_os_level(ei.value, cometmp.DiskFull, errno.ENOSPC, marker)
    assert sorted(os.listdir(root)) == ["families", "streams"]       # no temp file left


def test_full_disk_writing_a_family_file_is_disk_full(tmpfs):
    mnt = tmpfs("size=1m")
    root = os.path.join(mnt, "log")
    c = cometmp.Client(root, config=small_config())
    try:
        use_up_blocks(mnt)
        with pytest.raises(cometmp.DiskFull) as ei:
            c.log("events", shards=2)
        assert_os_level(ei.value, cometmp.DiskFull, errno.ENOSPC,
                        os.path.join(root, "families", "events.json"))
        assert os.listdir(os.path.join(root, "families")) == []
    finally:
        c.close()


def test_full_inode_table_when_the_core_opens_a_stream_is_disk_full(tmpfs):
    """The core's own calls (here: creating the state page) map ENOSPC the same way."""
    mnt = tmpfs("size=4m,nr_inodes=64")
    root = os.path.join(mnt, "log")
    cometmp.Client(root, config=small_config()).close()
    stream_dir = os.path.join(root, "streams", "other")
    os.mkdir(stream_dir)
    use_up_inodes(mnt)
    with cometmp.Client(root, config=small_config()) as c:
        with pytest.raises(cometmp.DiskFull) as ei:
            c.append("other", b"x")
        assert_os_level(ei.value, cometmp.DiskFull, errno.ENOSPC, stream_dir)


def test_full_inode_table_at_rotation_is_disk_full_and_appends_resume(tmpfs):
    mnt = tmpfs("size=8m,nr_inodes=64")
    root = os.path.join(mnt, "log")
    cfg = small_config(preallocate_bytes=64 * 1024)
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("rot", shards=1)
        lg.append(b"first")
        use_up_inodes(mnt)
        stream_dir = os.path.join(root, "streams", "rot:shard:0000")
        acked = 1
        with pytest.raises(cometmp.DiskFull) as ei:
            for _ in range(1000):   # ~4 MiB: one rotation at most (segments are 1 MiB)
                lg.append(os.urandom(4096))
                acked += 1
        assert_os_level(ei.value, cometmp.DiskFull, errno.ENOSPC, stream_dir)
        assert c.length("rot:shard:0000") == acked
        for n in range(3):           # space returns
            os.unlink(os.path.join(mnt, f"inode{n}"))
        lg.append(b"after")
        assert c.length("rot:shard:0000") == acked + 1


def test_unreadable_directory_marker_is_a_storage_error_not_a_missing_directory(tmp_path):
    root = str(tmp_path / "log")
    cometmp.Client(root, config=small_config()).close()
    marker = os.path.join(root, "cometmp.json")
    os.unlink(marker)
    os.mkdir(marker)                 # reading it fails with EISDIR, a real OS error
    for open_it in (lambda: cometmp.Client(root, config=small_config()),
                    lambda: cometmp.Client(root, readonly=True),
                    lambda: verify.check_data_directory(root)):
        with pytest.raises(cometmp.StorageError) as ei:
            open_it()
        assert_os_level(ei.value, cometmp.StorageError, errno.EISDIR, marker)
        assert not isinstance(ei.value, cometmp.DataDirectoryNotFound)


def run_as(user, fn) -> dict:
    """Run ``fn()`` in a forked child with ``user``'s uid/gid (no exec: this interpreter
    lives under /root, which the user cannot read); returns what it returned (a dict)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            out = fn()
        except BaseException as e:  # noqa: BLE001
            out = {"unexpected": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def describe(call) -> dict:
    try:
        call()
    except BaseException as e:  # noqa: BLE001
        return {"cls": type(e).__name__, "errno": getattr(e, "errno", None),
                "filename": getattr(e, "filename", None), "msg": str(e),
                "os": isinstance(e, OSError), "comet": isinstance(e, cometmp.CometError)}
    return {"cls": None}


def test_permission_denied_is_a_storage_error_with_errno_and_path(other_user):
    base = tempfile.mkdtemp(prefix="cometmp-perm-")
    try:
        os.chmod(base, 0o755)
        locked = os.path.join(base, "locked")
        os.mkdir(locked, 0o000)
        root = os.path.join(locked, "log")
        readable = os.path.join(base, "data")
        cometmp.Client(readable, config=small_config()).close()
        os.chmod(readable, 0o755)
        os.chmod(os.path.join(readable, "cometmp.json"), 0o000)
        cfg = small_config()
        got = run_as(pwd.getpwnam(other_user[0]), lambda: {
            "create": describe(lambda: cometmp.Client(root, config=cfg)),
            "marker": describe(lambda: cometmp.Client(readable, readonly=True)),
        })
    finally:
        os.chmod(os.path.join(base, "locked"), 0o700)
        shutil.rmtree(base)
    assert got["create"]["cls"] == "StorageError", got
    assert got["create"]["errno"] == errno.EACCES and got["create"]["filename"] == root, got
    assert got["create"]["comet"] and not got["create"]["os"], got
    assert got["marker"]["cls"] == "StorageError", got
    assert got["marker"]["errno"] == errno.EACCES, got
    assert got["marker"]["filename"] == os.path.join(readable, "cometmp.json"), got


LIMIT_CHILD = r"""
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
import cometmp
c = cometmp.Client(sys.argv[1])
c.append("s", b"x")
held = []   # the application holds every other descriptor: closing idle writers cannot help
while True:
    try:
        held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
out = {"cls": None}
for i in range(300):
    try:
        c.append(f"s{i}", b"x")
    except BaseException as e:
        out = {"cls": type(e).__name__, "errno": getattr(e, "errno", None),
               "filename": getattr(e, "filename", None), "msg": str(e), "streams": i}
        break
print(json.dumps(out))
"""


def test_open_file_limit_is_too_many_open_files_naming_the_limit(tmp_path):
    root = str(tmp_path / "log")
    p = subprocess.run([sys.executable, "-c", LIMIT_CHILD, root], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["cls"] == "TooManyOpenFiles", got
    assert got["errno"] == errno.EMFILE, got
    assert "RLIMIT_NOFILE" in got["msg"] and "soft 48" in got["msg"], got
    assert got["filename"] and got["filename"].startswith(root), got


FAILPOINT_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import failpoints
failpoints.bootstrap(sys.argv[2])
import cometmp
root, spec = sys.argv[3], sys.argv[4]
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 64 * 1024
with cometmp.Client(root, config=cfg) as c:
    lg = c.log("fp", shards=1)
    lg.append(b"x")
    os.environ["COMETMP_FAILPOINT"] = spec
    out = {"cls": None}
    try:
        for _ in range(400):
            lg.append(os.urandom(8192))
    except BaseException as e:
        out = {"cls": type(e).__name__, "errno": getattr(e, "errno", None),
               "filename": getattr(e, "filename", None), "msg": str(e),
               "os": isinstance(e, OSError)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def failpoint_core():
    return failpoints.build()


@pytest.mark.parametrize("point,err,cls", [
    ("rotate.index_create", "EIO", "StorageError"),
    ("rotate.index_create", "EDQUOT", "DiskFull"),
    ("rotate.rename", "ENOSPC", "DiskFull"),
    ("rotate.map", "EIO", "StorageError"),
])
def test_injected_core_failures_carry_class_errno_and_stream_path(tmp_path, failpoint_core,
                                                                  point, err, cls):
    root = str(tmp_path / "log")
    p = subprocess.run([sys.executable, "-c", FAILPOINT_CHILD, TESTS, failpoint_core, root,
                        failpoints.on_sync_rotation(f"{point}:1:{err}")], env=child_env(),
                       capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["cls"] == cls, got
    assert got["errno"] == getattr(errno, err), got
    assert got["filename"] == os.path.join(root, "streams", "fp:shard:0000"), got
    assert not got["os"], got


@pytest.mark.parametrize("err,cls", [
    (errno.ENOSPC, cometmp.DiskFull), (errno.EDQUOT, cometmp.DiskFull),
    (errno.EMFILE, cometmp.TooManyOpenFiles), (errno.ENFILE, cometmp.TooManyOpenFiles),
    (errno.EIO, cometmp.StorageError), (errno.EACCES, cometmp.StorageError),
])
def test_one_mapping_from_errno_to_the_tree(err, cls):
    e = os_error(OSError(err, os.strerror(err), "/some/path"), action="open")
    assert type(e) is cls and e.errno == err and e.filename == "/some/path"
    assert str(e).startswith("open /some/path: ")
