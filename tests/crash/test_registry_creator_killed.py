"""A worker killed while it creates the registry never wedges the workers behind it (I24a).

The creator builds and initialises the registry under a private draft name and links it
into place; the failpoint build's ``registry.publish:1:KILL`` is a real kill -9 between
the two. Before I24a the object was created at the directory's name and initialised in
place, so a creator killed there left an uninitialised object that every joiner mapped
while it waited for it to be initialised, and the scan for live mappers (in_use_or_young)
then kept finding the other waiters: seen as a uWSGI reload under a kill -9 storm whose
new workers showed "no registry" for ten seconds and more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import cometmp
from cometmp import registry

import failpoints
from conftest import child_env, wait_until

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CREATOR = f"""
import os, sys
sys.path.insert(0, {TESTS!r})
import failpoints
failpoints.bootstrap(sys.argv[1])
from cometmp import registry
os.environ["COMETMP_FAILPOINT"] = "registry.publish:1:KILL"
registry.join(sys.argv[2], key=0, create_count=2, start_thread=False)
print("published: the failpoint did not fire")
"""

JOINER = """
import sys
from cometmp import registry
wid = registry.join(sys.argv[1], key=int(sys.argv[2]), create_count=2, start_thread=False)
print(wid, registry.shm_name(sys.argv[1]), flush=True)
sys.stdin.read()           # stay a member until the test has looked
registry.leave()
"""


def drafts(name: str) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if e.startswith(name.lstrip("/") + ".")]


def test_a_creator_killed_before_publishing_leaves_nothing_at_the_name_and_joiners_proceed(tmp_path):
    d = str(tmp_path / "log")
    with cometmp.Client(d) as c:
        c.append("s", [b"a"])
    fp = failpoints.build()
    p = subprocess.run([sys.executable, "-c", CREATOR, fp, d], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)
    name = registry.shm_name(d)
    assert not os.path.exists("/dev/shm" + name), "a half-made registry is visible at the name"
    assert len(drafts(name)) == 1, drafts(name)          # what the killed creator left
    from cometmp.tools.status import registry_status, render_status

    doc = registry_status(d)                              # shown until the next start
    assert doc["registry"] is None and doc["dead_drafts"] == ["/" + drafts(name)[0]]
    assert "LEFTOVER: 1 half-made registry" in render_status(doc)
    joiners = [subprocess.Popen([sys.executable, "-c", JOINER, d, str(k)], env=child_env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for k in range(2)]
    try:
        lines = [j.stdout.readline().split() for j in joiners]   # each joined (or died)
        assert sorted(int(w) for w, _n in lines) == [0, 1], lines
        assert {n for _w, n in lines} == {name}
        assert drafts(name) == [], "the dead creator's draft was not removed"
        doc = registry_status(d)
        assert doc["dead_drafts"] == []
        assert sorted(s["pid"] for s in doc["slots"] if s["alive"]) == \
            sorted(j.pid for j in joiners)
    finally:
        for j in joiners:
            j.stdin.close()
        for j in joiners:
            j.wait(60)
    assert [j.returncode for j in joiners] == [0, 0]
    wait_until(lambda: not os.path.exists("/dev/shm" + name), 30,
               "the last joiner to leave to unlink the registry")


FAILING_CREATOR = f"""
import os, sys
sys.path.insert(0, {TESTS!r})
import failpoints
failpoints.bootstrap(sys.argv[1])
from cometmp import registry
from cometmp.errors import CometError
os.environ["COMETMP_FAILPOINT"] = "registry.publish:1:EIO"
try:
    registry.join(sys.argv[2], key=0, create_count=2, start_thread=False)
except CometError as e:
    print("ERR", type(e).__name__, e)
else:
    print("joined: the failpoint did not fire")
"""


def test_a_creator_whose_publish_fails_raises_a_cometmp_error_and_leaves_nothing(tmp_path):
    d = str(tmp_path / "log")
    with cometmp.Client(d) as c:
        c.append("s", [b"a"])
    fp = failpoints.build()
    p = subprocess.run([sys.executable, "-c", FAILING_CREATOR, fp, d], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("ERR "), (p.stdout, p.stderr)
    assert p.stdout.startswith("ERR StorageError publish the registry of ") and \
        "Input/output error" in p.stdout, p.stdout   # names the step, the path and the errno
    name = registry.shm_name(d)
    assert not os.path.exists("/dev/shm" + name)
    assert drafts(name) == [], "a failed creator left its draft behind"
