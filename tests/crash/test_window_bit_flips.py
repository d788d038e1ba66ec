"""Every single-bit flip of an ack-window record (docs/FORMAT.md §7.2) on the golden
windows file: the window read afterwards never claims an entry acknowledged that was not
(that would skip it: loss). A flip inside the current copy (owner, base, bits, counts,
crc) is CorruptRecord naming the file; a flip of ``active`` selects the previous copy
(acks only grow, so an older subset: redelivery, never loss) or is CorruptRecord; a flip
of ``delivered`` or a reserved field changes no acknowledged entry; a flip of the other
copy changes nothing."""

from __future__ import annotations

import json
import mmap
import os
import sys

import cometmp
from cometmp import window as W

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
sys.path.insert(0, DATA)

import make_golden  # noqa: E402

SLOT, GROUP, RESETS = 3, 7, 1                 # the golden record: base 100, acks beyond
TRUE_BEYOND = {102, 105, 4195}


def acked_set(st: W.WindowState | None, committed: int = 100) -> tuple[int, set[int]]:
    """(prefix, bits) of I43 for a slot whose committed offset is ``committed``."""
    if st is None:
        return committed, set()
    return max(committed, st.base), set(st.acked)


def test_no_single_bit_flip_of_a_window_record_acknowledges_an_entry_that_was_not(tmp_path):
    root = str(tmp_path)
    path = W.windows_path(root)
    os.makedirs(os.path.dirname(path))
    with open(os.path.join(DATA, "window_v1", "windows.sparse.json")) as f:
        make_golden.materialize_sparse(json.load(f), path)
    rec = W.CM_WIN_HEADER_BYTES + SLOT * W.CM_WIN_RECORD_BYTES
    wf = W.WindowFile(root, writable=False)
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, W.CM_WIN_FILE_BYTES)
    try:
        truth = wf.load(SLOT, GROUP, RESETS)
        assert (truth.base, truth.acked) == (100, TRUE_BEYOND)
        active = int.from_bytes(mm[rec:rec + 4], "little")
        current = rec + W.CM_WIN_COPY_OFF + active * W.CM_WIN_COPY_BYTES
        outcomes = {"corrupt": 0, "same": 0, "older": 0}
        for byte in range(rec, rec + W.CM_WIN_RECORD_BYTES):
            for bit in range(8):
                mm[byte] ^= 1 << bit
                try:
                    st = wf.load(SLOT, GROUP, RESETS)
                except cometmp.CorruptRecord as e:
                    assert path in str(e)
                    outcomes["corrupt"] += 1
                    continue
                finally:
                    mm[byte] ^= 1 << bit
                where = f"bit {bit} of byte {byte - rec} of record {SLOT}"
                prefix, bits = acked_set(st)
                assert prefix <= 100 and bits <= TRUE_BEYOND, \
                    f"{where}: the window claims acks never made: prefix {prefix}, {sorted(bits)}"
                assert not current <= byte < current + W.CM_WIN_COPY_BYTES, \
                    f"{where}: a flip inside the current copy was read as a window"
                outcomes["same" if (prefix, bits) == (100, TRUE_BEYOND) else "older"] += 1
        assert outcomes["corrupt"] >= W.CM_WIN_COPY_BYTES * 8, outcomes
        print(outcomes)
    finally:
        mm.close()
        os.close(fd)
        wf.close()
