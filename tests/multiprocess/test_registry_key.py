"""I33a: the registry's shm name is keyed with DIR/registry.key (FORMAT.md §8.1).

Real forked processes race to create the key; real `cp -a` copies a directory; the real
`cometmp status` command reads it; damaged keys are real files on disk. A key is made once
and never regenerated: a damaged one stops the server with an error naming the file.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

import cometmp
from cometmp import registry
from cometmp.registry import Registry
from cometmp.supervisor import Supervisor


def key_file(d: str) -> str:
    return os.path.join(d, "registry.key")


def status(d: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cometmp", "status", "--json", d],
                          capture_output=True, text=True, timeout=60)


def data_directory(path: str) -> str:
    """A data directory written by a Client (as an older build leaves it: no key)."""
    with cometmp.Client(path) as c:
        c.append("s", [b"a"])
    return path


def test_a_directory_without_a_key_gets_one_when_a_server_first_starts(tmp_path):
    d = data_directory(str(tmp_path / "log"))
    assert not os.path.exists(key_file(d))
    p = status(d)                       # readonly: no registry, and no key made
    assert p.returncode == 0 and json.loads(p.stdout)["registry"] is None, p.stderr
    assert not os.path.exists(key_file(d))
    sup = Supervisor(d, 2).start()
    try:
        st = os.stat(key_file(d))
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.stat(d).st_uid
        assert sup.registry.name == registry.shm_name(d)
        p = status(d)                   # the owner's status finds it
        assert p.returncode == 0 and json.loads(p.stdout)["registry"] == sup.registry.name
    finally:
        sup.close()
    assert not os.path.exists("/dev/shm" + registry.shm_name(d))
    assert os.path.exists(key_file(d))   # kept: the next start uses the same name


def _racer(d: str, go_r: int, out_w: int, stay_r: int) -> None:
    os.read(go_r, 1)                     # every racer is released by one close()
    wid = registry.join(d, create_count=2, start_thread=False)
    os.write(out_w, f"{registry.shm_name(d)} {wid}\n".encode())
    os.read(stay_r, 1)                   # stay a member until the parent has looked
    registry.leave()


@pytest.mark.parametrize("trial", range(4))
def test_processes_racing_to_create_the_first_registry_agree_on_one_key_and_name(tmp_path,
                                                                                 trial):
    racers = 6
    d = str(tmp_path / "log")
    os.mkdir(d, 0o700)
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    stay_r, stay_w = os.pipe()
    pids = []
    for _ in range(racers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(30)
                for fd in (go_w, out_r, stay_w):
                    os.close(fd)
                _racer(d, go_r, out_w, stay_r)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for fd in (go_r, out_w, stay_r):
        os.close(fd)
    os.close(go_w)                       # go
    lines = []
    with os.fdopen(out_r) as f:
        for _ in range(racers):
            lines.append(f.readline().split())
    try:
        names = {name for name, _wid in lines}
        assert len(names) == 1, lines
        reg = Registry.attach(d)
        try:
            assert reg.name == names.pop() == registry.shm_name(d)
            assert len(reg.live_entries()) == racers      # one registry holds them all
        finally:
            reg.close()
        assert sorted(os.listdir(d)) == ["registry.key"]  # one key, no temp file left
    finally:
        os.close(stay_w)
        for pid in pids:
            _, st = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(st) == 0


def test_a_copied_directory_gets_a_registry_of_its_own(tmp_path):
    src = data_directory(str(tmp_path / "src"))
    dst = str(tmp_path / "dst")
    a = Supervisor(src, 2).start()
    try:
        subprocess.run(["cp", "-a", src, dst], check=True)   # a backup, key included
        with open(key_file(src), "rb") as f1, open(key_file(dst), "rb") as f2:
            assert f1.read() == f2.read()
        assert registry.shm_name(dst) != registry.shm_name(src)
        b = Supervisor(dst, 3).start()
        try:
            assert b.registry.created and not b.rebuilt
            assert b.registry.name != a.registry.name
            assert (a.snapshot().process_count, b.snapshot().process_count) == (2, 3)
        finally:
            b.close()
        assert a.snapshot().process_count == 2 and not a.registry.replaced()
    finally:
        a.close()


GOOD = json.dumps({"format": "cometmp.registry_key", "key": "ab" * 32, "version": 1})

DAMAGE = {
    # name: (how to damage DIR/registry.key, error class, words the message must hold)
    "garbage": (lambda p: _write(p, b"\x00\xff" * 40), cometmp.FormatError, "not valid JSON"),
    "truncated": (lambda p: _write(p, GOOD[:30].encode()), cometmp.FormatError,
                  "not valid JSON"),
    "empty": (lambda p: _write(p, b""), cometmp.FormatError, "not valid JSON"),
    "other format": (lambda p: _write(p, GOOD.replace("registry_key", "dir").encode()),
                     cometmp.FormatError, "'cometmp.dir'"),
    "version 2": (lambda p: _write(p, GOOD.replace('"version": 1', '"version": 2').encode()),
                  cometmp.FormatError, "version 2"),
    "short key": (lambda p: _write(p, GOOD.replace("ab" * 32, "ab" * 16).encode()),
                  cometmp.FormatError, "64 lowercase hex"),
    "too long": (lambda p: _write(p, GOOD.encode() + b" " * 5000), cometmp.FormatError,
                 "longer than"),
    "mode 0644": (lambda p: (_write(p, GOOD.encode()), os.chmod(p, 0o644)),
                  registry.ForeignRegistry, "mode 0644"),
    "fifo": (lambda p: os.mkfifo(p, 0o600), registry.ForeignRegistry, "not a regular file"),
    "symlink": (lambda p: (_write(p + ".real", GOOD.encode()), os.symlink(p + ".real", p)),
                cometmp.StorageError, "symbolic link"),
}


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)


def _identity(path: str) -> tuple:
    st = os.lstat(path)
    body = b""
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            body = f.read()
    return st.st_ino, st.st_mode, st.st_mtime_ns, body


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_registry_key_is_refused_naming_the_file_and_never_replaced(tmp_path, damage):
    d = data_directory(str(tmp_path / "log"))
    make, cls, words = DAMAGE[damage]
    make(key_file(d))
    before = _identity(key_file(d))
    for start in (lambda: Supervisor(d, 2).start(),
                  lambda: registry.join(d, create_count=2, start_thread=False)):
        with pytest.raises(cls) as ei:
            start()
        assert key_file(d) in str(ei.value) and words in str(ei.value), ei.value
        if cls is not cometmp.StorageError:
            assert "remove the file" in str(ei.value), ei.value   # says what to do
    p = status(d)
    assert p.returncode == 1 and key_file(d) in p.stderr and words in p.stderr, p.stderr
    assert _identity(key_file(d)) == before        # not regenerated, not touched


@pytest.mark.parametrize("full", ["blocks", "inodes"])
def test_a_full_disk_when_the_key_is_first_made_is_diskfull_naming_it_and_leaves_nothing(
        tmpfs, full):
    from conftest import use_up_blocks, use_up_inodes

    mnt = tmpfs("size=2m,nr_inodes=64")
    d = data_directory(os.path.join(mnt, "log"))
    filler = os.path.join(mnt, "filler")
    os.mkdir(filler)
    (use_up_blocks if full == "blocks" else use_up_inodes)(filler)
    with pytest.raises(cometmp.DiskFull) as ei:
        Supervisor(d, 2).start()
    assert key_file(d) in str(ei.value), ei.value
    assert not [n for n in os.listdir(d) if n.startswith("registry.key")]   # no temp left
    import shutil

    shutil.rmtree(filler)                # space returns: the start succeeds
    sup = Supervisor(d, 2).start()
    try:
        assert os.path.exists(key_file(d)) and sup.registry.name == registry.shm_name(d)
    finally:
        sup.close()


def test_a_key_removed_while_a_server_runs_is_remade_and_every_process_moves_to_one_registry(
        tmp_path):
    """I33a with I24: the members notice within a member period (replaced() watches the
    key too), one of them makes the new key, all join the registry under the new name, the
    master follows at its next hook, and the old name, which nobody can compute any more,
    is removed by the last process to leave it."""
    import time

    d = data_directory(str(tmp_path / "log"))
    sup = Supervisor(d, 2).start()
    old_name = sup.registry.name
    stay_r, stay_w = os.pipe()
    up_r, up_w = os.pipe()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(60)
                os.close(stay_w)
                os.close(up_r)
                registry.join(d)               # with the member thread
                os.write(up_w, b"+")
                os.read(stay_r, 1)
                registry.leave()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(stay_r)
    os.close(up_w)
    try:
        assert os.read(up_r, 1) == b"+" and os.read(up_r, 1) == b"+"
        os.unlink(key_file(d))
        deadline = time.monotonic() + 30
        while True:                           # poll for the condition, generously bounded
            try:
                reg = Registry.attach(d)
                try:
                    live = sorted(e.pid for e in reg.live_entries())
                finally:
                    reg.close()
                if reg.name != old_name and live == sorted(pids):
                    break
            except cometmp.RegistryError:
                pass                          # no key yet, or its registry being made
            assert time.monotonic() < deadline, "the members did not move to the new registry"
            time.sleep(0.02)
        new_name = registry.shm_name(d)
        assert os.path.exists("/dev/shm" + old_name)       # the master is still in it
        sup.sweep()                                        # a master hook: it follows
        assert sup.registry.name == new_name
        assert not os.path.exists("/dev/shm" + old_name)   # nobody left in it: removed
        assert sup.snapshot().owners(4).count(-1) == 0
    finally:
        os.close(stay_w)
        for pid in pids:
            _, st = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(st) == 0
        sup.close()
    assert not os.path.exists("/dev/shm" + registry.shm_name(d))


def test_a_new_key_on_the_old_keys_inode_is_noticed(tmp_path):
    """A key is identified by its secret, not its inode: a new key file often gets the
    inode of the one just removed (ext4 reuses it at once). Here the new secret is written
    into the same inode, so only a check of the secret can notice it."""
    d = data_directory(str(tmp_path / "log"))
    sup = Supervisor(d, 2).start()
    try:
        old_name = sup.registry.name
        assert not sup.registry.replaced()
        ino = os.stat(key_file(d)).st_ino
        _write(key_file(d), GOOD.encode())                # O_TRUNC: same inode, new secret
        assert os.stat(key_file(d)).st_ino == ino
        assert sup.registry.replaced()
        sup.sweep()                                       # a master hook: it follows
        assert sup.registry.name == registry.shm_name(d) != old_name
        assert not sup.registry.replaced()
        assert not os.path.exists("/dev/shm" + old_name)  # nobody left in it: removed
    finally:
        sup.close()
