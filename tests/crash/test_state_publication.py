"""A rebuilt state page becomes visible only once recovery filled it in (I28): a writer
open killed (kill -9) or failing while it recovers a stream whose state page was lost
never shows readers ``committed = 0``; every acknowledged entry stays readable, and the
next writer open completes the page.

The writer runs on the failpoint build of the core (tests/failpoints.py); the point
``recover.fresh_state`` is evaluated at the start of recovery with a fresh page, and
``KILL`` makes it SIGKILL the process right there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cometmp
from cometmp import paths

import failpoints
from conftest import child_env, small_config

STREAM = "pub:shard:0000"
ENTRIES = 134

CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import failpoints
failpoints.bootstrap({so!r})
import os
os.environ["COMETMP_FAILPOINT"] = {spec!r}
import cometmp
cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
c = cometmp.Client({root!r}, config=cfg)
try:
    c.append({stream!r}, [b"never"])
except cometmp.CometError as e:
    print("refused:", type(e).__name__, e)
    sys.exit(3)
sys.exit(0)
"""


@pytest.fixture(scope="module")
def fp_core() -> str:
    return failpoints.build()


def payload(i: int) -> bytes:
    return b"pub-%06d-" % i + b"p" * (i % 300)


def assert_all_readable(root: str) -> None:
    with cometmp.Client(root, readonly=True) as ro:
        assert ro.length(STREAM) == ENTRIES
        assert [ro.read(STREAM, i).data for i in (0, ENTRIES // 2, ENTRIES - 1)] == \
            [payload(0), payload(ENTRIES // 2), payload(ENTRIES - 1)]
        assert [m.data for m in ro.scan(STREAM)] == [payload(i) for i in range(ENTRIES)]


@pytest.mark.parametrize("action, returncode", [("KILL", -9), ("EIO", 3), ("ENOSPC", 3)])
def test_a_writer_open_interrupted_while_rebuilding_a_lost_state_page_hides_no_entry(
        tmp_path, fp_core, action, returncode):
    root = str(tmp_path / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append(STREAM, [payload(i) for i in range(ENTRIES)])
    os.unlink(os.path.join(paths.stream_dir(root, STREAM), paths.STATE))   # the page is lost

    code = CHILD.format(tests=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        so=fp_core, spec=f"recover.fresh_state:1:{action}", root=root,
                        stream=STREAM)
    p = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == returncode, (p.stdout, p.stderr)

    # the interrupted open published nothing: readers count the segments themselves
    assert_all_readable(root)
    with cometmp.Client(root, readonly=True) as ro:
        con = cometmp.Consumer(ro, group="late")
        got = []
        while True:
            b = con.read(STREAM, max_messages=100, timeout=0)
            if not b:
                break
            got += [m.data for m in b]
        con.close()
        assert got == [payload(i) for i in range(ENTRIES)]

    # the next writer open completes the page; numbering continues (I1)
    with cometmp.Client(root, config=small_config()) as c:
        assert c.append(STREAM, [b"next"])[0].entry == ENTRIES
        assert c.length(STREAM) == ENTRIES + 1
    assert not [n for n in os.listdir(paths.stream_dir(root, STREAM)) if n.endswith(".tmp")]
