"""A readonly reader with no writer open takes the stream's length from the segment files,
not from the state page (I27a): a flipped bit in the page's ``committed`` (or ``tail``,
``active_base``) of a stopped server's directory neither hides an acknowledged entry nor
announces one that does not exist. Beside a live writer the page is current by
construction (the writer's open recovered it) and the reader follows new appends.

Each trial copies one closed stream (four+ 1 MiB segments), flips one seeded random bit of
one field while no process has it open, and checks a readonly client's length, reads,
scan, consumer and ``cometmp stats`` against what was acknowledged. Seeds are printed; rerun one with
``COMETMP_RO_SEED=<seed>``.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import time

import pytest

import cometmp
from cometmp import format as fmt
from cometmp import paths
from cometmp.stats import directory_stats
from conftest import child_env, small_config

STREAM = "ro:shard:0000"
ENTRIES = 1100                   # ~268 per 1 MiB segment: five segments
FIELDS = {"committed": fmt.CM_STATE_OFF_COMMITTED, "tail": fmt.CM_STATE_OFF_TAIL,
          "active_base": fmt.CM_STATE_OFF_ACTIVE_BASE}


def payload(i: int) -> bytes:
    return b"%08d:" % i + bytes([i % 251]) * 3891   # below compression.min_bytes


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rostate") / "log")
    with cometmp.Client(root, config=small_config()) as c:
        c.append(STREAM, [payload(i) for i in range(ENTRIES)])
    assert len(paths.list_segment_bases(paths.stream_dir(root, STREAM))) >= 4
    return root


def seeds(n: int) -> list[int]:
    fixed = os.environ.get("COMETMP_RO_SEED")
    if fixed:
        return [int(fixed)]
    return [random.SystemRandom().randrange(2**32) for _ in range(n)]


def flip(root: str, field: str, seed: int, bit: int | None = None) -> str:
    rnd = random.Random(seed)
    bit = rnd.randrange(64) if bit is None else bit
    path = os.path.join(paths.stream_dir(root, STREAM), paths.STATE)
    with open(path, "r+b") as f:
        f.seek(FIELDS[field])
        old = struct.unpack("=Q", f.read(8))[0]
        f.seek(FIELDS[field])
        f.write(struct.pack("=Q", old ^ (1 << bit)))
    return f"{field} bit {bit}: {old} -> {old ^ (1 << bit)}"


def check_readonly_sees_exactly_the_acked_entries(root: str, ctx: str) -> None:
    assert directory_stats(root)["streams"][STREAM]["length"] == ENTRIES, ctx   # cometmp stats
    with cometmp.Client(root, readonly=True) as ro:
        assert ro.length(STREAM) == ENTRIES, ctx
        assert ro.read(STREAM, ENTRIES - 1).data == payload(ENTRIES - 1), ctx
        with pytest.raises(cometmp.EntryNotFound):
            ro.read(STREAM, ENTRIES)
        got = [(m.id.entry, m.data) for m in ro.scan(STREAM)]
        assert got == [(i, payload(i)) for i in range(ENTRIES)], ctx
        con = cometmp.Consumer(ro, group="g")
        seen = []
        while True:
            b = con.read(STREAM, max_messages=500, timeout=0)
            if not len(b):
                break
            seen += [m.id.entry for m in b]
            con.ack(b)
        con.close()
        assert seen == list(range(ENTRIES)), ctx


def flip_trials(template, tmp_path, field: str, trials: list) -> None:
    for seed, bit in trials:
        root = str(tmp_path / f"t{seed}-{bit}")
        subprocess.run(["cp", "-a", "--sparse=always", template, root], check=True)
        what = flip(root, field, seed or 0, bit)
        ctx = f"seed {seed} {what}"
        print(ctx)
        check_readonly_sees_exactly_the_acked_entries(root, ctx)
        # only the state page was damaged: the segments need no oracle walk afterwards
        shutil.rmtree(root)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_flipped_bit_in_a_stopped_streams_page_neither_hides_nor_invents_entries(
        template, tmp_path, field):
    # the low bits and the high bits of committed: a count just below / above the truth
    # and one far off; plus seeded random bits of each field
    trials = [(None, b) for b in ((0, 1, 9, 40) if field == "committed" else ())]
    flip_trials(template, tmp_path, field, trials + [(s, None) for s in seeds(3)])


@pytest.mark.soak
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_bit_of_a_stopped_streams_page_fields_hides_and_invents_nothing(
        template, tmp_path, field):
    flip_trials(template, tmp_path, field, [(None, b) for b in range(64)])


def test_a_record_a_killed_writer_never_published_is_not_announced(template, tmp_path):
    # the state of a writer killed after it wrote entry ENTRIES's frame, before it
    # published it: the record is complete in the segment, the page says ENTRIES
    root = str(tmp_path / "unpublished")
    subprocess.run(["cp", "-a", "--sparse=always", template, root], check=True)
    state = os.path.join(paths.stream_dir(root, STREAM), paths.STATE)
    with open(state, "rb") as f:
        page = f.read()
    with cometmp.Client(root, config=small_config()) as w:
        assert w.append(STREAM, [b"never acknowledged"])[0].entry == ENTRIES
    with open(state, "r+b") as f:
        f.write(page)
    with cometmp.Client(root, readonly=True) as ro:
        assert ro.length(STREAM) == ENTRIES
        with pytest.raises(cometmp.EntryNotFound):
            ro.read(STREAM, ENTRIES)
        assert [m.id.entry for m in ro.scan(STREAM, ENTRIES - 2)] == [ENTRIES - 2, ENTRIES - 1]
    # and the writer's recovery agrees: the number goes to the next acknowledged entry
    with cometmp.Client(root, config=small_config()) as w:
        assert w.length(STREAM) == ENTRIES
        assert w.append(STREAM, [b"acknowledged"])[0].entry == ENTRIES
    with cometmp.Client(root, readonly=True) as ro:
        assert ro.read(STREAM, ENTRIES).data == b"acknowledged"


WRITER = r"""
import sys, cometmp
root, n = sys.argv[1], int(sys.argv[2])
with cometmp.Client(root) as c:
    c.append("ro:shard:0000", [b"live-%d" % i for i in range(n)])
    print("appended", flush=True)
    sys.stdin.readline()              # stay open until the test says so
"""


def test_a_readonly_reader_beside_a_live_writer_follows_new_appends(template, tmp_path):
    root = str(tmp_path / "live")
    subprocess.run(["cp", "-a", "--sparse=always", template, root], check=True)
    with cometmp.Client(root, readonly=True) as ro:
        assert ro.length(STREAM) == ENTRIES
        for round_, n in enumerate((3, 5)):
            # a writer in another process (its open recovers the page, then holds it)
            p = subprocess.Popen([sys.executable, "-c", WRITER, root, str(n)], env=child_env(),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert p.stdout.readline().strip() == "appended"
                want = ENTRIES + (3 if round_ else 0) + n
                deadline = time.monotonic() + 30
                while ro.length(STREAM) < want and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert ro.length(STREAM) == want
                assert ro.read(STREAM, want - 1).data == b"live-%d" % (n - 1)
                with pytest.raises(cometmp.EntryNotFound):
                    ro.read(STREAM, want)
            finally:
                p.stdin.close()
                assert p.wait(60) == 0
        # the writer closed: the files and the page agree, nothing vanishes
        assert ro.length(STREAM) == ENTRIES + 8
        assert [m.id.entry for m in ro.scan(STREAM, ENTRIES)] == list(range(ENTRIES, ENTRIES + 8))


def test_a_readonly_reader_trusts_the_page_of_a_live_writer_in_this_process(template, tmp_path):
    root = str(tmp_path / "same")
    subprocess.run(["cp", "-a", "--sparse=always", template, root], check=True)
    with cometmp.Client(root, config=small_config()) as w, \
            cometmp.Client(root, readonly=True) as ro:
        w.append(STREAM, [b"x"])
        assert ro.length(STREAM) == ENTRIES + 1
        w.append(STREAM, [b"y"])
        assert ro.read(STREAM, ENTRIES + 1).data == b"y"
