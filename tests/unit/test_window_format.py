"""The ack-windows file (docs/FORMAT.md §7.2): the golden image is what the spec's
offsets give (tests/data/make_window_golden.py) and what cometmp.window writes and reads;
a damaged current copy is CorruptRecord naming the file and offset. (An update stopped
before its switch: tests/crash/test_ack_window_faults.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cometmp
from cometmp import window as W

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
GOLDEN = os.path.join(DATA, "window_v1", "windows.sparse.json")
sys.path.insert(0, DATA)

import make_golden  # noqa: E402
import make_window_golden  # noqa: E402


def _materialize(root: str) -> str:
    path = W.windows_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(GOLDEN) as f:
        make_golden.materialize_sparse(json.load(f), path)
    return path


def test_the_golden_windows_file_is_what_the_spec_gives():
    assert subprocess.run([sys.executable, os.path.join(DATA, "make_window_golden.py"), "--check"],
                          timeout=120).returncode == 0
    assert (W.CM_WIN_MAGIC, W.CM_WIN_VERSION, W.CM_WIN_HEADER_BYTES, W.CM_WIN_RECORD_BYTES,
            W.CM_WIN_RECORD_CAP, W.CM_WIN_ENTRIES, W.CM_WIN_COUNTS_MAX, W.CM_WIN_COPY_OFF,
            W.CM_WIN_COPY_BYTES) == (0x4E574D43, 1, make_window_golden.HEADER_BYTES,
                                     make_window_golden.RECORD_BYTES, make_window_golden.RECORD_CAP,
                                     make_window_golden.ENTRIES, make_window_golden.COUNTS_MAX,
                                     make_window_golden.COPY_OFF, make_window_golden.COPY_BYTES)


def test_the_golden_windows_file_reads_back_and_the_encoder_writes_its_bytes(tmp_path):
    root = str(tmp_path)
    _materialize(root)
    wf = W.WindowFile(root, writable=False)
    try:
        st = wf.load(3, 7, 1)
        assert (st.base, st.acked, st.counts, st.delivered) == (
            100, {102, 105, 4195}, {100: 3, 101: 2}, 110)
        assert wf.load(3, 7, 2) is None and wf.load(3, 8, 1) is None   # not this owner's
        st5 = wf.load(5, 9, 0)
        assert (st5.base, st5.acked, st5.delivered) == (0, {1}, 2)
        assert wf.load(4, 7, 1) is None                              # never written
    finally:
        wf.close()
    ref = make_window_golden.copy(7, 1, 100, [102, 105, 4195], {100: 3, 101: 2})
    assert W._pack_copy(7, 1, W.WindowState(100, {102, 105, 4195}, {100: 3, 101: 2})) == ref


def test_a_damaged_current_copy_is_a_corrupt_record_naming_file_and_offset(tmp_path):
    root = str(tmp_path)
    path = _materialize(root)
    rec3 = W.CM_WIN_HEADER_BYTES + 3 * W.CM_WIN_RECORD_BYTES
    off = rec3 + W.CM_WIN_COPY_OFF + W.CM_WIN_COPY_BYTES + W.CM_WIN_C_ACKED + 7
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x80")
    wf = W.WindowFile(root, writable=False)
    try:
        with pytest.raises(cometmp.CorruptRecord, match=rf"{path}: window record 3 copy 1 .*offset "
                                                         rf"{rec3 + W.CM_WIN_COPY_OFF + W.CM_WIN_COPY_BYTES}"):
            wf.load(3, 7, 1)
    finally:
        wf.close()


def test_a_file_of_another_size_or_magic_is_a_format_error(tmp_path):
    root = str(tmp_path)
    path = _materialize(root)
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    with pytest.raises(cometmp.FormatError, match="not a cometmp windows file"):
        W.WindowFile(root, writable=False)
    os.truncate(path, 4096)
    with pytest.raises(cometmp.FormatError, match="4096 bytes"):
        W.WindowFile(root, writable=False)
