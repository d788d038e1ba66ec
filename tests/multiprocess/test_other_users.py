"""I32, I33: another local user gets nothing from a data directory or its registry.

A real second user is made with useradd (a unique name per run, removed with userdel -r
afterwards). Its processes are real forks that dropped to that uid: they own a data
directory, or pre-create /dev/shm names the way an attacker would. The registry's name is
keyed with a secret in the 0700 directory (I33a), so the names an attacker can compute
(the old predictable one, guesses) do not deny the start; an object at the real name (a
leaked key) is refused clearly, naming the owner, never waited out, never unlinked (I33).
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
    """I33, defence in depth behind I33a: someone who knows the key squats the real name."""
    name, uid, gid = other_user
    root = os.path.join(top, "log")
    cometmp.Client(root).close()
    path = "/dev/shm" + registry.shm_name(root, create=True)   # as if the key had leaked
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


def _guessable_names(directory: str) -> list[str]:
    """The /dev/shm names another user can compute for ``directory`` without its key: the
    name earlier builds used (unkeyed blake2b-64 of "st_dev:st_ino") and a few guesses."""
    import hashlib

    st = os.stat(directory)
    ident = f"{st.st_dev}:{st.st_ino}".encode()
    return ["/dev/shm/cometmp-" + h for h in (
        hashlib.blake2b(ident, digest_size=8).hexdigest(),            # the old name
        hashlib.blake2b(ident, digest_size=16).hexdigest(),
        hashlib.blake2b(ident, key=bytes(32), digest_size=16).hexdigest(),
        hashlib.blake2b(ident, key=bytes(32), digest_size=8).hexdigest(),
        hashlib.blake2b(f"{st.st_ino}".encode(), digest_size=16).hexdigest(),
    )]


@pytest.mark.parametrize("keyed_before", [False, True], ids=["old-directory", "keyed"])
def test_another_user_cannot_compute_the_registry_name_so_squatting_does_not_deny_start(
        top, other_user, keyed_before):
    """I33a. On builds with the predictable name this start raised ForeignRegistry."""
    _name, uid, gid = other_user
    root = os.path.join(top, "log")
    with cometmp.Client(root) as c:
        c.log("fam", shards=4).append(b"x")
    os.chmod(root, 0o711)   # the attacker may stat it (st_dev, st_ino), not read it
    if keyed_before:
        Supervisor(root, 2).start().close()   # a key exists from an earlier start
    guesses = _guessable_names(root)

    def squat_all() -> None:
        assert os.listdir("/dev/shm") is not None     # the attacker sees /dev/shm
        try:
            open(os.path.join(root, "registry.key"), "rb")
        except FileNotFoundError:
            assert not keyed_before
        except PermissionError:
            pass                                      # the key is not theirs to read
        else:
            raise AssertionError("another user read the registry key")
        for g in guesses:
            squat(g, 0o666)

    as_user(uid, gid, squat_all)
    squatted = {g: os.stat(g) for g in guesses}
    try:
        sup = Supervisor(root, 2).start()   # not denied
        assert "/dev/shm" + sup.registry.name not in guesses
        assert os.stat("/dev/shm" + sup.registry.name).st_uid == 0
        pids, reads, stay = _members(root, 2)
        try:
            ids = sorted(int(os.read(r, 16)) for r in reads)
            assert ids == [0, 1]                               # ownership settles
            owners = sup.snapshot().owners(4)
            assert -1 not in owners and sorted(set(owners)) == [0, 1]
        finally:
            os.close(stay)
            for r in reads:
                os.close(r)
            for pid in pids:
                _, st = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(st) == 0
            sup.close()
        for g, st in squatted.items():     # the squatted objects were left alone
            now = os.stat(g)
            assert (now.st_ino, now.st_uid, now.st_mtime_ns) == (st.st_ino, st.st_uid,
                                                                 st.st_mtime_ns)
    finally:
        for g in guesses:
            try:
                os.unlink(g)
            except FileNotFoundError:
                pass


def _members(root: str, n: int) -> tuple[list[int], list[int], int]:
    """``n`` forked workers that join ``root``, each writing its worker_id to its own pipe
    and staying a member until the one returned write end is closed: (pids, reads, stay)."""
    import signal

    stay_r, stay_w = os.pipe()
    pids, reads = [], []
    for _ in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(30)
                os.close(stay_w)
                os.write(w, str(registry.join(root, start_thread=False)).encode())
                os.read(stay_r, 1)
                registry.leave()
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        pids.append(pid)
        reads.append(r)
    os.close(stay_r)
    return pids, reads, stay_w


def test_a_registry_key_of_another_user_is_refused_and_they_cannot_read_ours(top, other_user):
    """I33a: a key file someone else owns may be known to them; status as another user
    fails naming the key, status as its owner works."""
    from cometmp.tools.status import registry_status

    name, uid, gid = other_user
    root = os.path.join(top, "log")
    cometmp.Client(root).close()
    os.chmod(root, 0o755)   # as an older build left it: readable by others
    sup = Supervisor(root, 2).start()
    try:
        def status_refused() -> None:
            try:
                registry_status(root)
            except cometmp.StorageError as e:
                assert e.errno == errno.EACCES and os.path.join(root, "registry.key") in str(e)
                assert "run this as that user" in str(e) and "uid 0 (root)" in str(e), e
            else:
                raise AssertionError("another user's status read the registry")

        as_user(uid, gid, status_refused)
        assert registry_status(root)["registry"] == sup.registry.name   # the owner's works
    finally:
        sup.close()
    os.chown(os.path.join(root, "registry.key"), uid, gid)
    with pytest.raises(registry.ForeignRegistry, match=f"owned by uid {uid} \\({name}\\)") as ei:
        Supervisor(root, 2).start()
    assert os.path.join(root, "registry.key") in str(ei.value)
