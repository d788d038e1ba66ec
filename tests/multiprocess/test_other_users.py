"""I32, I33: another local user gets nothing from a data directory or its registry.

A real second user is made with useradd (a unique name per run, removed with userdel -r
afterwards). Its processes are real forks that dropped to that uid: they own a data
directory, or pre-create the registry's predictable /dev/shm name the way an attacker
would. The server refuses each clearly (naming the owner), never waits it out, never
unlinks it, and starts once the owner removed it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile

import pytest

import cometmp
from cometmp import registry
from cometmp.supervisor import Supervisor

from conftest import small_config, tree_fingerprint

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd to make another user")


@pytest.fixture
def top():
    """A directory other users can traverse (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="cometmp-users-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_user(uid: int, gid: int, fn) -> None:
    """Run ``fn()`` in a forked child that dropped to uid/gid; raise if it failed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()   # the child's failure, in the test's output
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def shm_path(directory: str) -> str:
    return "/dev/shm/" + registry.shm_name(directory).lstrip("/")


def squat(path: str, mode: int) -> None:
    """What an attacker does: create the registry's name first (shm_open is an open of
    /dev/shm/<name>), full size, so it looks like a registry."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)
    os.ftruncate(fd, registry.table.REG_BYTES)
    os.close(fd)


def _give_tree(root: str, uid: int, gid: int) -> None:
    for d, _dirs, files in os.walk(root):
        for n in [d] + [os.path.join(d, f) for f in files]:
            os.chown(n, uid, gid)


def test_a_data_directory_owned_by_another_user_is_refused_for_writing(top, other_user):
    import pwd

    name, uid, gid = other_user
    nobody = pwd.getpwnam("nobody")
    root = os.path.join(top, "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append("s", [b"a", b"b"])
    _give_tree(root, uid, gid)
    os.chmod(root, 0o755)   # nobody may look, not write
    before = tree_fingerprint(root)

    def refused() -> None:
        try:
            cometmp.Client(root, config=small_config())
        except cometmp.StorageError as e:
            assert e.errno == errno.EPERM and f"owned by uid {uid} ({name})" in str(e), e
            assert root in str(e), e
        else:
            raise AssertionError("a writer opened another user's data directory")

    as_user(nobody.pw_uid, nobody.pw_gid, refused)
    with cometmp.Client(root, readonly=True) as c:   # readonly reads what it can read
        assert [m.data for m in c.scan("s")] == [b"a", b"b"]
    assert tree_fingerprint(root) == before


def test_root_may_write_another_users_data_directory_and_gives_it_what_it_creates(
        top, other_user):
    """A root master (gunicorn --preload, before its workers drop to the directory's
    user) opens the workers' directory: everything it creates there is the owner's."""
    _name, uid, gid = other_user
    root = os.path.join(top, "log")
    os.mkdir(root, 0o700)
    os.chown(root, uid, gid)   # the supervisor's kit does this for its workers' user
    as_user(uid, gid, lambda: cometmp.Client(root, config=small_config()).close())
    with cometmp.Client(root, config=small_config()) as c:   # root
        c.log("fam", shards=2).append(b"from root")
        c.append("s", [b"a"])
    from cometmp.consumer import Consumer

    with cometmp.Client(root, config=small_config()) as c, Consumer(c, group="g") as cons:
        cons.read("s", 10)
    not_theirs = [p for d, dirs, files in os.walk(root)
                  for p in [os.path.join(d, n) for n in dirs + files]
                  if os.lstat(p).st_uid != uid or os.lstat(p).st_gid != gid]
    assert not not_theirs, not_theirs

    def owner_appends() -> None:   # the owner's processes go on using all of it
        with cometmp.Client(root, config=small_config()) as c:
            c.append("s", [b"b"])
            assert [m.data for m in c.scan("s")] == [b"a", b"b"]

    as_user(uid, gid, owner_appends)


@pytest.mark.parametrize("mode", [0o600, 0o666], ids=["0600", "0666"])
def test_a_registry_name_precreated_by_another_user_is_refused_naming_the_owner(top, other_user,
                                                                               mode):
    name, uid, gid = other_user
    root = os.path.join(top, "log")
    cometmp.Client(root).close()
    path = shm_path(root)
    as_user(uid, gid, lambda: squat(path, mode))
    before = os.stat(path)
    with pytest.raises(cometmp.RegistryError, match=f"owned by uid {uid} \\({name}\\)") as ei:
        Supervisor(root, 2).start()
    assert type(ei.value).__name__ == "ForeignRegistry" and path in str(ei.value)
    with pytest.raises(cometmp.RegistryError, match=f"owned by uid {uid}"):
        registry.join(root, create_count=2, start_thread=False)   # a worker-created registry
    after = os.stat(path)
    assert (after.st_ino, after.st_uid, after.st_mtime_ns) == \
        (before.st_ino, before.st_uid, before.st_mtime_ns)     # not unlinked, not written
    # once its owner removes it, the server starts
    as_user(uid, gid, lambda: os.unlink(path))
    sup = Supervisor(root, 2).start()
    try:
        assert os.stat(path).st_uid == 0
    finally:
        sup.close()
    assert not os.path.exists(path)


def test_a_registry_created_for_workers_that_dropped_privileges_is_trusted(top, other_user):
    """The root master fchowns the object to the workers' user, who own the directory."""
    name, uid, gid = other_user
    root = os.path.join(top, "log")
    sup = Supervisor(root, 2, uid=uid, gid=gid).start()
    try:
        assert os.stat(shm_path(root)).st_uid == uid == os.stat(root).st_uid
        as_user(uid, gid, lambda: (registry.join(root, start_thread=False), registry.leave()))
        second = Supervisor(root, 2, uid=uid, gid=gid).start()   # a second master attaches
        second.close()
    finally:
        sup.close()
