"""Index lookups search the mapped .idx (native/index.c), never re-parse it: every floor
matches an independent parse of the file, and entries the writer adds after the reader
mapped it are found without reopening anything."""

from __future__ import annotations

import bisect
import os

import cometmp
from cometmp import format as fmt
from cometmp import paths
from cometmp.index import SegmentIndex
from cometmp.segment import Segment

from conftest import small_config


def _floors_match(directory: str, idx: SegmentIndex, seg: Segment, upto: int) -> int:
    with open(os.path.join(directory, paths.index_name(0)), "rb") as f:
        _base, _interval, entries = fmt.parse_index(f.read())
    rels = [e[0] for e in entries]
    for target in range(upto):
        i = bisect.bisect_right(rels, target) - 1
        assert idx.floor(seg, target, False) == (entries[i][1], entries[i][0]), target
    return len(entries)


def test_floor_is_a_binary_search_of_the_live_mapping(tmp_path):
    root = str(tmp_path / "log")
    cfg = small_config()
    cfg.indexing.interval_bytes = 64
    with cometmp.Client(root, cfg) as c:
        c.append("ix", [b"a" * 50 for _ in range(100)])
        d = paths.stream_dir(root, "ix")
        seg = Segment.open(os.path.join(d, paths.segment_name(0)), 0)
        idx = SegmentIndex(d, 0)
        try:
            n1 = _floors_match(d, idx, seg, 100)
            assert n1 > 50 and not idx.rebuilt
            c.append("ix", [b"b" * 50 for _ in range(100)])      # the writer fills the table on
            n2 = _floors_match(d, idx, seg, 200)
            assert n2 > n1 and not idx.rebuilt
            assert idx.floor(seg, 10**6, False)[1] == 199           # newest: the last entry
        finally:
            idx.close()
            seg.close()
