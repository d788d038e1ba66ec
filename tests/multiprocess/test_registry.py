"""The registry and supervisor with real forked workers (no server): slots, ownership,
replacement, reclaim, renumbering, the membership lock under kill -9, churn, identity."""

from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest

import cometmp
from cometmp import registry
from cometmp.registry import LIVE, LOCK_TIMEOUT_MS, VACANT, Registry, is_alive, start_ticks
from cometmp.supervisor import Supervisor
from conftest import wait_until


_PARENT_FDS: set[int] = set()  # pipe ends the parent keeps: a child closes the others'


def _fork(target=None) -> int:
    """fork(); with ``target`` the child runs it and always exits (never back into pytest)."""
    pid = os.fork()
    if pid == 0 and target is not None:
        code = 1
        try:
            _child_setup()
            target()
            code = 0
        finally:
            os._exit(code)
    if pid == 0:
        _child_setup()
    return pid


def _child_setup() -> None:
    signal.alarm(30)  # a child never outlives a stuck test
    for fd in list(_PARENT_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _PARENT_FDS.clear()


class Worker:
    """A forked worker: joins, reports worker_id() and the shards its key=None appends
    used, then waits; closing its pipe makes it leave gracefully."""

    def __init__(self, data_dir: str, body=None, join: bool = True, env: dict | None = None,
                 create_count: int | None = None):
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        pid = _fork()
        if pid == 0:
            code = 0
            try:
                os.close(r1)
                os.close(w2)
                if env:
                    os.environ.update(env)
                if join:
                    registry.join(data_dir, create_count=create_count)
                out = body() if body else ""
                os.write(w1, f"{registry.worker_id()}|{out}\n".encode())
                os.read(r2, 1)  # until the parent closes the pipe
                registry.leave()
            except BaseException as e:  # report, never run the parent's pytest
                os.write(w1, f"error|{e!r}\n".encode())
                code = 1
            os._exit(code)
        os.close(w1)
        os.close(r2)
        self.pid = pid
        self._r, self._w = r1, w2
        _PARENT_FDS.update((r1, w2))
        self._line: str | None = None
        if body is None:
            self._read()  # joined: the table shows this worker from now on

    def _read(self) -> str:
        if self._line is None:
            line = b""
            while not line.endswith(b"\n"):
                chunk = os.read(self._r, 4096)
                if not chunk:
                    break
                line += chunk
            self._line = line.decode().strip()
            assert not self._line.startswith("error|"), self._line
        return self._line

    @property
    def worker_id(self) -> int | None:
        wid = self._read().partition("|")[0]
        return None if wid == "None" else int(wid)

    @property
    def out(self) -> str:
        return self._read().partition("|")[2]

    def _close(self) -> None:
        for fd in (self._w, self._r):
            os.close(fd)
            _PARENT_FDS.discard(fd)

    def stop(self) -> None:
        os.close(self._w)
        _PARENT_FDS.discard(self._w)
        os.waitpid(self.pid, 0)
        os.close(self._r)
        _PARENT_FDS.discard(self._r)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self._close()


@pytest.fixture
def sup(tmp_path):
    s = Supervisor(str(tmp_path / "log"), 3).start()
    yield s
    s.close()
    assert not os.path.exists("/dev/shm/" + registry.shm_name(s.directory).lstrip("/"))


def wait_members(directory: str, n: int, timeout: float = 30.0) -> None:
    """In a worker: wait until ``n`` workers hold slots (ownership is then final)."""
    reg = Registry.attach(directory)
    wait_until(lambda: len([e for e in reg.snapshot().entries if e.state == LIVE]) >= n,
               timeout, f"{n} workers to hold slots", interval=0.01)


def live_ids(s: Supervisor) -> dict[int, int]:
    return {e.index: e.pid for e in s.snapshot().entries if e.state == LIVE}


def test_workers_get_dense_ids_and_every_shard_exactly_one_owner(sup):
    ws = [Worker(sup.directory) for _ in range(3)]
    assert sorted(w.worker_id for w in ws) == [0, 1, 2]
    owners = sup.snapshot().owners(16)
    assert owners == [s % 3 for s in range(16)]
    for w in ws:
        w.stop()
    assert live_ids(sup) == {}


def test_key_none_appends_go_to_owned_shards_even_for_a_client_made_before_fork(sup):
    client = cometmp.Client(sup.directory)  # created in the parent: standalone here
    lg = client.log("ev", 8)

    def body():
        wait_members(sup.directory, 3)
        return ",".join(str(lg.append(b"x").shard) for _ in range(16))
    ws = [Worker(sup.directory, body) for _ in range(3)]
    outs = [(w.worker_id, w.out) for w in ws]  # every worker reports before any leaves
    for w in ws:
        w.stop()
    for wid, out in outs:
        used = {int(s) for s in out.split(",")}
        assert used == {s for s in range(8) if s % 3 == wid}, (wid, used)
    assert {lg.append(b"y").shard for _ in range(16)} == set(range(8))  # parent: standalone
    client.close()


def test_a_replacement_takes_the_dead_workers_slot_and_nobody_else_moves(sup):
    ws = [Worker(sup.directory) for _ in range(3)]
    victim = next(w for w in ws if w.worker_id == 1)
    victim.kill()
    sup.child_exited(victim.pid)
    snap = sup.snapshot()
    assert snap.entries[1].state == VACANT and snap.owners(6) == [0, -1, 2, 0, -1, 2]
    repl = Worker(sup.directory)
    assert repl.worker_id == 1
    assert live_ids(sup) == {w.worker_id: w.pid for w in ws if w is not victim} | {1: repl.pid}
    for w in [*ws, repl]:
        if w is not victim:
            w.stop()


def test_a_slot_not_replaced_within_one_second_is_reclaimed(sup):
    ws = [Worker(sup.directory) for _ in range(3)]
    victim = next(w for w in ws if w.worker_id == 0)
    victim.kill()  # no child_exited: the sweep finds the death by itself (I21)
    reg = sup._reg()   # the sweeps run on an injected clock: a stalled test machine
    t0 = time.monotonic_ns()   # cannot make "0.5 s later" come after the 1 s grace

    def sweep_at(seconds: float) -> None:
        with reg.locked():
            reg.sweep_locked(now_ns=t0 + int(seconds * 1e9))
    sweep_at(0.0)
    assert sup.snapshot().owners(6)[0] == -1
    sweep_at(0.5)
    assert sup.snapshot().owners(6)[0] == -1  # still waiting for a replacement
    sweep_at(1.1)
    owners = sup.snapshot().owners(6)
    assert -1 not in owners and set(owners) == {1, 2}
    for w in ws:
        if w is not victim:
            w.stop()


def test_members_sweep_for_each_other_without_a_master(tmp_path):
    d = str(tmp_path / "log")
    a = Worker(d, create_count=2)
    b = Worker(d, create_count=2)
    a.kill()
    reg = Registry.attach(d)
    try:
        # b's member thread: a's death seen in ~0.2 s, its slot reclaimed after 1 s; ~1.2 s
        # on an idle machine, the bound is for a loaded one
        wait_until(lambda: reg.snapshot().owners(4) == [1, 1, 1, 1], 30,
                   "b's member thread to take a's shards", interval=0.05)
    finally:
        reg.close()
    b.stop()  # the last member leaves: it unlinks the registry
    assert not os.path.exists("/dev/shm/" + registry.shm_name(d).lstrip("/"))


def test_a_shrink_renumbers_dense_and_surplus_workers_wait_but_still_write(sup):
    sup.set_process_count(4)
    client = cometmp.Client(sup.directory)
    lg = client.log("ev", 8)

    def body():
        return ",".join(str(lg.append(b"x").shard) for _ in range(8))
    ws = [Worker(sup.directory, body) for _ in range(4)]
    assert sorted(w.worker_id for w in ws) == [0, 1, 2, 3]
    sup.set_process_count(3)
    top = next(w for w in ws if w.worker_id == 3)
    assert live_ids(sup)[3] == top.pid  # LIVE at index 3 >= processCount: waiting
    assert 3 not in sup.snapshot().owners(8)
    surplus = Worker(sup.directory, body)  # beyond the count: no slot, writes everywhere
    assert surplus.worker_id is None
    assert {int(s) for s in surplus.out.split(",")} == set(range(8))
    oldest = next(w for w in ws if w.worker_id == 0)
    oldest.stop()  # like TTOU: the oldest leaves; a waiting worker is promoted into slot 0
    ids = live_ids(sup)
    assert sorted(i for i in ids if i < 3) == [0, 1, 2]
    assert ids[0] in (top.pid, surplus.pid)
    for w in ws + [surplus]:
        if w is not oldest:
            w.stop()
    client.close()


def test_strict_ownership_refuses_a_foreign_key_with_a_clear_error(sup):
    cfg = cometmp.Config()
    cfg.concurrency.strict_ownership = True
    cometmp.Client(sup.directory, cfg).log("ev", 6)  # the family exists before the workers
    keys = {cometmp.pick_shard(f"k{i}", 6): f"k{i}" for i in range(200)}

    def body():
        # the usual pattern: the worker opens its client after joining (a client inherited
        # across fork is covered by the key=None routing and fork tests)
        lg = cometmp.Client(sup.directory, cfg).log("ev", 6)
        wait_members(sup.directory, 3)
        # ownership settles once every worker has joined and promotions are done (a loaded
        # machine can stretch that); a foreign key must be refused within a bounded time
        deadline = time.monotonic() + 10
        while True:
            mine = cometmp.worker_id()
            if mine is not None:
                lg.append(b"ok", key=keys[mine])
                try:
                    lg.append(b"no", key=keys[(mine + 1) % 3])
                except cometmp.ShardNotOwned as e:
                    return str(e)
            if time.monotonic() > deadline:
                return f"not refused (worker_id {mine})"
            time.sleep(0.05)
    ws = [Worker(sup.directory, body) for _ in range(3)]
    outs = [w.out for w in ws]  # every worker reports before any leaves (wait_members)
    for w in ws:
        w.stop()
    for out in outs:
        assert "owned by another worker" in out and "strict_ownership" in out, out
    with cometmp.Client(sup.directory, cfg) as client:  # a standalone process owns everything
        client.log("ev", 6).append(b"standalone", key=keys[0])


def test_a_process_forked_inside_a_worker_is_standalone(sup):
    client = cometmp.Client(sup.directory)
    lg = client.log("ev", 6)

    def body():
        r, w = os.pipe()

        def grandchild():
            shards = {lg.append(b"g").shard for _ in range(12)}
            os.write(w, f"{cometmp.worker_id()}:{sorted(shards)}".encode())
        pid = _fork(grandchild)
        os.close(w)
        out = os.read(r, 1000).decode()
        os.waitpid(pid, 0)
        return out
    w = Worker(sup.directory, body)
    assert w.out == f"None:{list(range(6))}"
    assert live_ids(sup) == {w.worker_id: w.pid}  # the grandchild never took a slot
    w.stop()
    client.close()


def test_a_standalone_process_takes_no_slot(sup, monkeypatch):
    monkeypatch.setenv("COMETMP_DIR", sup.directory)
    with cometmp.Client(sup.directory) as c:
        lg = c.log("ev", 3)
        assert {lg.append(b"s").shard for _ in range(6)} == {0, 1, 2}
    assert cometmp.worker_id() is None
    assert live_ids(sup) == {}


def test_pid_reuse_never_makes_a_dead_worker_look_alive(sup):
    me, ticks = os.getpid(), start_ticks(os.getpid())
    assert is_alive(me, ticks) and not is_alive(me, ticks + 1) and not is_alive(me, 0)
    reg = sup.registry
    with reg.locked():  # an entry that claims our pid but an older start time
        reg._write_entry(0, me, LIVE, ticks - 1, 1, 0, 0, -1, 0)
        reg.bump_epoch_locked()
    sup.sweep()
    assert sup.snapshot().entries[0].state == VACANT


@pytest.mark.parametrize("point", ["registry.after_lock", "registry.mid_entry",
                                   "registry.mid_promote"])
def test_a_holder_killed_inside_the_membership_lock_never_wedges_it(sup, point):
    sup.set_process_count(1)
    keep = Worker(sup.directory)
    waiting = Worker(sup.directory)  # index 1 >= count: waiting
    assert waiting.worker_id is None
    pid = _fork()
    if pid == 0:  # dies inside the lock, at the named point
        os.environ["COMETMP_FAILPOINTS"] = point
        try:
            reg = Registry.attach(sup.directory)
            with reg.locked():
                if point != "registry.after_lock":
                    reg.leave_locked(keep.pid, start_ticks(keep.pid))  # vacate slot 0 -> promote
        finally:
            os._exit(3)
    _, st = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
    t0 = time.monotonic()
    snap = sup.snapshot()  # takes the lock: EOWNERDEAD -> repair
    assert time.monotonic() - t0 < LOCK_TIMEOUT_MS / 2000   # repaired, not waited out
    pids = [e.pid for e in snap.entries if e.state == LIVE]
    assert len(pids) == len(set(pids)), snap.entries[:3]  # I23: never two entries per worker
    sup.sweep()
    keep.stop()
    waiting.stop()


def test_the_membership_lock_never_admits_two_processes_even_across_kills(sup):
    from cometmp._ffi import lib

    reg = sup.registry
    scratch = registry.table.CM_REG_OFF_ENTRIES + (registry.MAX_ENTRIES - 1) * 64 + 56

    def hammer() -> None:
        mm = Registry.attach(sup.directory)
        for _ in range(400):
            rc = lib.cm_registry_lock(mm._ptr, mm.name.encode(), 5000)
            assert rc >= 0
            occupant = struct.unpack_from("=i", mm._mm, scratch)[0]
            if rc == 0 and occupant != 0:
                struct.pack_into("=i", mm._mm, scratch + 4, 1)  # violation
            struct.pack_into("=i", mm._mm, scratch, os.getpid())
            time.sleep(0.0002)
            struct.pack_into("=i", mm._mm, scratch, 0)
            lib.cm_registry_unlock(mm._ptr)
    rng = random.Random(5)
    pids = []
    for _ in range(4):
        pids.append(_fork(hammer))
    for pid in pids[:2]:
        time.sleep(rng.uniform(0.01, 0.05))
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    assert struct.unpack_from("=i", reg._mm, scratch + 4)[0] == 0
    struct.pack_into("=q", reg._mm, scratch, 0)
    with reg.locked(timeout_ms=1000):
        pass


@pytest.mark.parametrize("lifetimes", [
    600,                                             # the table's 256 entries reused twice over
    pytest.param(2000, marks=pytest.mark.soak),      # "thousands of restarts"
])
def test_worker_churn_grows_nothing(sup, lifetimes):
    """Worker lifetimes (half leave, half die and are reported), more than twice the
    registry's entries: one shm object, the same files, the same fds in the master, and
    an empty table at the end. (Only our registry's name is checked in /dev/shm: other
    test runs may share the machine.)"""
    ours = registry.shm_name(sup.directory).lstrip("/")
    files_before = sorted(os.listdir(sup.directory))
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(lifetimes):
        pid = _fork()
        if pid == 0:
            try:
                registry.join(sup.directory, start_thread=False)
                if i % 2:
                    registry.leave()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if i % 2 == 0:
            sup.child_exited(pid)
        if i % 500 == 0:
            assert [n for n in os.listdir("/dev/shm") if n == ours] == [ours]
    assert [n for n in os.listdir("/dev/shm") if ours in n] == [ours]
    assert sorted(os.listdir(sup.directory)) == files_before
    assert len(os.listdir("/proc/self/fd")) == fds_before
    used = [e for e in sup.snapshot().entries if e.state != 0]
    assert len(used) <= 3  # at most processCount VACANT slots, nothing else
    def swept_clean() -> bool:  # VACANT slots are reclaimed 1 s after they were left
        sup.sweep()
        return [e for e in sup.snapshot().entries if e.state != 0] == []

    wait_until(swept_clean, 30, "the master's sweep to reclaim the VACANT slots", interval=0.05)


def test_registry_names_follow_the_directory_identity(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "link").symlink_to(a)
    assert registry.shm_name(a, create=True) != registry.shm_name(b, create=True)
    assert registry.shm_name(tmp_path / "link") == registry.shm_name(a)


def test_a_registry_of_another_build_is_refused_naming_both_versions(sup):
    reg = sup.registry
    off = registry.table.CM_REG_OFF_VERSION
    struct.pack_into("=H", reg._mm, off, 99)
    try:
        with pytest.raises(cometmp.FormatError, match=r"version 99 .*version 1"):
            Registry.attach(sup.directory)
        with pytest.raises(cometmp.FormatError):  # in use by us: not rebuilt under us
            Supervisor(sup.directory, 3).start()
    finally:
        struct.pack_into("=H", reg._mm, off, 1)


def test_a_stale_registry_of_a_dead_master_is_rebuilt(tmp_path):
    d = str(tmp_path / "log")
    def dying_master():
        Supervisor(d, 2).start()
        os.kill(os.getpid(), signal.SIGKILL)  # no close(): the registry stays behind
    os.waitpid(_fork(dying_master), 0)
    assert os.path.exists("/dev/shm/" + registry.shm_name(d).lstrip("/"))
    s = Supervisor(d, 2).start()
    try:
        assert s.rebuilt and s.registry.created
    finally:
        s.close()


def test_a_registry_whose_members_were_all_killed_is_shown_stale_and_rebuilt_with_the_new_count(
        tmp_path):
    """uWSGI without a master hook: 3 workers (create_count=3) all kill -9ed leave the
    registry behind; `status` calls it stale, and a restart with 4 workers rebuilds it with
    processCount 4 so the 4th worker gets a slot (it used to wait forever)."""
    from cometmp.tools.status import registry_status, render_status

    d = str(tmp_path / "log")
    old = [Worker(d, create_count=3) for _ in range(3)]
    assert not registry_status(d)["stale"]
    for w in old:
        w.kill()
    doc = registry_status(d)
    assert doc["registry"] is not None and doc["stale"] and "STALE" in render_status(doc)
    new = [Worker(d, create_count=4) for _ in range(4)]
    try:
        assert sorted(w.worker_id for w in new) == [0, 1, 2, 3]
        doc = registry_status(d)
        assert doc["process_count"] == 4 and not doc["stale"]
    finally:
        for w in new:
            w.stop()
    assert not os.path.exists("/dev/shm/" + registry.shm_name(d).lstrip("/"))


def _settled(directory: str, pids: set[int]) -> dict | None:
    """The status document once every slot 0..n-1 is held by one of ``pids`` (else None)."""
    from cometmp.tools.status import registry_status

    doc = registry_status(directory)
    held = {s["process_id"]: s["pid"] for s in doc["slots"]
            if s["alive"] and s["process_id"] is not None}
    if doc["registry"] and set(held.values()) == pids and len(held) == doc["process_count"]:
        return doc
    return None


def _remove_and_wait_for_rejoin(directory: str, pids: set[int]) -> float:
    shm = "/dev/shm/" + registry.shm_name(directory).lstrip("/")
    inode = os.stat(shm).st_ino
    os.unlink(shm)   # what an admin or systemd-tmpfiles does
    t0 = time.monotonic()
    while _settled(directory, pids) is None:
        assert time.monotonic() - t0 < 15, "the members never rejoined a new registry"
        time.sleep(0.01)
    took = time.monotonic() - t0
    assert os.stat(shm).st_ino != inode
    print(f"rejoined {len(pids)} members in {took:.3f} s")
    return took


def test_a_registry_removed_while_members_run_is_recreated_and_rejoined(tmp_path):
    """No master (uWSGI): the members notice within one member period that the name no
    longer refers to their object, recreate it and take their slots again."""
    d = str(tmp_path / "log")
    ws = [Worker(d, create_count=3) for _ in range(3)]
    try:
        assert sorted(w.worker_id for w in ws) == [0, 1, 2]
        took = _remove_and_wait_for_rejoin(d, {w.pid for w in ws})
        assert took < 5   # ~0.2-0.4 s idle; the bound is for a loaded machine
        # a replacement started after the removal lands in the new registry too
        ws[0].kill()
        ws[0] = Worker(d, create_count=3)
        assert ws[0].worker_id is not None
    finally:
        for w in ws:
            w.stop()
    assert not os.path.exists("/dev/shm/" + registry.shm_name(d).lstrip("/"))


def test_a_registry_removed_under_a_supervisor_is_recreated_and_the_master_reattaches(sup):
    ws = [Worker(sup.directory) for _ in range(3)]
    try:
        _remove_and_wait_for_rejoin(sup.directory, {w.pid for w in ws})
        sup.set_process_count(2)     # the master's next hook finds and uses the new object
        pids = {w.pid for w in ws}

        def two_slots_held() -> dict | None:
            # slots 0 and 1 each held by a live one of the three workers: which two
            # depends on the order they rejoined in, so any two (a single look was a
            # flake: the third worker had taken slot 0 or 1)
            from cometmp.tools.status import registry_status

            doc = registry_status(sup.directory)
            held = {s["process_id"]: s["pid"] for s in doc["slots"]
                    if s["alive"] and s["process_id"] is not None}
            ok = doc["registry"] and doc["process_count"] == 2 and sorted(held) == [0, 1] \
                and set(held.values()) <= pids and len(set(held.values())) == 2
            return doc if ok else None

        doc = wait_until(two_slots_held, 30, "slots 0 and 1 held by two of the workers")
        assert sup.snapshot().process_count == 2
        assert any(m["alive"] for m in doc["masters"])
    finally:
        for w in ws:
            w.stop()


def test_a_second_master_shares_the_registry_and_the_last_one_unlinks(sup):
    r, w = os.pipe()
    def second_master():  # a second master (gunicorn USR2) on the same directory
        os.close(r)
        Supervisor(sup.directory, 3).start()
        os.write(w, b"x")
        while True:      # stays until the parent kills it (no fixed lifetime to outlast)
            signal.pause()
    pid = _fork(second_master)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    assert sum(1 for _i, p, _t in sup.registry.masters() if p) == 2
    os.kill(pid, signal.SIGKILL)  # it never closes: sup stays the last live master
    os.waitpid(pid, 0)
    name = "/dev/shm/" + registry.shm_name(sup.directory).lstrip("/")
    assert os.path.exists(name)  # the fixture's close() checks that it unlinks


def test_unsupported_filesystems_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.table, "_fs_type", lambda path: 0x6969)
    with pytest.raises(cometmp.UnsupportedFilesystem, match="nfs"):
        Supervisor(str(tmp_path / "log"), 2).start()
    monkeypatch.setattr(registry.table, "_fs_type", lambda path: 0x65735546)
    with pytest.raises(cometmp.UnsupportedFilesystem, match="fuse"):
        registry.join(str(tmp_path), start_thread=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_workers_that_dropped_privileges_can_join():
    import shutil
    import tempfile

    nobody = 65534
    top = tempfile.mkdtemp(prefix="cometmp-privdrop-")  # pytest's tmp_path is root-only
    os.chmod(top, 0o755)
    d = os.path.join(top, "log")
    s = Supervisor(d, 2, uid=nobody, gid=nobody).start()
    try:
        assert os.stat(d).st_uid == nobody
        pid = _fork()
        if pid == 0:
            code = 1
            try:
                os.setgid(nobody)
                os.setuid(nobody)
                code = 0 if registry.join(str(d), start_thread=False) == 0 else 2
                registry.leave()
            finally:
                os._exit(code)
        _, st = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(st) == 0
    finally:
        s.close()
        shutil.rmtree(top)


def test_a_worker_that_lost_ownership_notices_at_its_next_append(sup):
    """No member thread here: only the appender's epoch watch can notice the change."""
    client = cometmp.Client(sup.directory)
    lg = client.log("ev", 6)
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = _fork()
    if pid == 0:
        try:
            registry.join(sup.directory, start_thread=False)
            before = sorted({lg.append(b"a").shard for _ in range(12)})
            os.write(out_w, f"{before}\n".encode())
            os.read(go_r, 1)  # meanwhile the count grows: this worker now owns fewer shards
            after = sorted({lg.append(b"b").shard for _ in range(12)})
            os.write(out_w, f"{after}\n".encode())
        finally:
            os._exit(0)
    assert os.read(out_r, 100).decode().strip() == "[0, 1, 2, 3, 4, 5]"  # alone: adopts all
    sup.set_process_count(2)
    other = Worker(sup.directory)
    assert other.worker_id == 1
    os.write(go_w, b"x")
    assert os.read(out_r, 100).decode().strip() == "[0, 2, 4]"
    os.waitpid(pid, 0)
    other.stop()
    for fd in (go_r, go_w, out_r, out_w):
        os.close(fd)
    client.close()


def test_cometmp_supervise_runs_a_supervisor_until_sigterm(tmp_path):
    import subprocess
    import sys

    d = str(tmp_path / "log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(cometmp.__file__))
    proc = subprocess.Popen([sys.executable, "-m", "cometmp", "supervise", d, "--processes", "2"],
                            env=env)
    try:
        def attached():
            assert proc.poll() is None, f"cometmp supervise exited with {proc.returncode}"
            try:
                return Registry.attach(d)
            except (cometmp.RegistryError, FileNotFoundError):
                return None

        reg = wait_until(attached, 60, "cometmp supervise to create the registry", interval=0.05)
        w = Worker(d)
        assert w.worker_id == 0
        w.kill()  # nobody reports it: the supervise loop sweeps it, and reclaims after 1 s
        wait_until(lambda: reg.snapshot().entries[0].state == 0, 30,   # bound: a loaded machine
                   "the supervise loop to sweep and reclaim the killed worker's slot", interval=0.05)
        reg.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not os.path.exists("/dev/shm/" + registry.shm_name(d).lstrip("/"))
