"""Idle streams pin no file descriptors (issue 9 item 6): a Client keeps at most
``writer_budget()`` writers open (from RLIMIT_NOFILE) and reopens a closed one at its
next append, so appending round robin to far more streams than the limit allows works
(and so does reading them back: cached readers are bounded the same way);
an EMFILE that closing writers cannot cure raises StorageError naming RLIMIT_NOFILE.

Each case runs in a child process with a lowered RLIMIT_NOFILE (resource.setrlimit).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import child_env

ROUND_ROBIN = r"""
import json, os, resource, sys, time
limit, streams, rounds, root = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
import cometmp
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 4096
cfg.retention.hard_min_free_ratio = 0.0
names = ["rr-%05d" % i for i in range(streams)]
t0 = time.perf_counter()
with cometmp.Client(root, config=cfg) as c:
    for r in range(rounds):
        for n in names:
            assert c.append(n, [b"%s/%d" % (n.encode(), r)])[0].entry == r
    fds = len(os.listdir("/proc/self/fd"))
    lg = c.log("fam", shards=64)          # the family fast path reopens closed writers too
    for i in range(64 * rounds):
        lg.append(b"f%d" % i)
elapsed = time.perf_counter() - t0
# read everything back under the same limit: readers are bounded too
with cometmp.Client(root, readonly=True) as ro:
    for n in names:
        assert [m.data for m in ro.scan(n)] == [b"%s/%d" % (n.encode(), r) for r in range(rounds)]
    assert sum(ro.length("fam:shard:%04d" % k) for k in range(64)) == 64 * rounds
    fds = max(fds, len(os.listdir("/proc/self/fd")))
print(json.dumps({"fds": fds, "appends": streams * rounds, "seconds": elapsed}))
"""

EMFILE = r"""
import errno, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
import cometmp
c = cometmp.Client(sys.argv[1])
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    c.append("one", [b"x"])
except cometmp.errors.TooManyOpenFiles as e:
    assert e.errno == errno.EMFILE, e
    assert "RLIMIT_NOFILE" in str(e) and "soft 128" in str(e), e
    print("ok")
"""


def run(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("limit, streams", [(128, 1250)])
def test_appending_round_robin_to_ten_times_more_streams_than_fds_allow_works(tmp_path, limit, streams):
    # 10,000 streams at 1,024 descriptors, scaled down (the soak test runs the real one)
    p = run(ROUND_ROBIN, limit, streams, 2, tmp_path / "log")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(out)
    assert out["fds"] <= limit


def test_emfile_that_closing_writers_cannot_cure_names_the_limit(tmp_path):
    p = run(EMFILE, tmp_path / "log")
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


@pytest.mark.soak
def test_ten_thousand_streams_round_robin_at_ulimit_1024(tmp_path):
    p = run(ROUND_ROBIN, 1024, 10_000, 2, tmp_path / "log", timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    print(json.loads(p.stdout.strip().splitlines()[-1]))
