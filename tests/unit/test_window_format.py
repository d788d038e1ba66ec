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


def test_a_copy_torn_by_a_store_in_flight_is_read_again_under_the_lock_not_reported_corrupt(
        tmp_path):
    # A lock-free load (cometmp groups, the lag metric, a new owner) can read the copy a
    # store in another process is rewriting. Here the store in flight is made by hand: the
    # record's OFD write lock held through another open file description, the current
    # copy half rewritten (its crc no longer matches), then finished and unlocked. The
    # load must wait for the lock and return the finished window, never CorruptRecord.
    import fcntl
    import threading

    from cometmp import paths

    root = str(tmp_path)
    path = _materialize(root)
    rec3 = W.CM_WIN_HEADER_BYTES + 3 * W.CM_WIN_RECORD_BYTES
    off = rec3 + W.CM_WIN_COPY_OFF + W.CM_WIN_COPY_BYTES   # record 3's current copy (1)
    new = W._pack_copy(7, 1, W.WindowState(100, {101, 102, 105, 4195}, {100: 3, 101: 2}))
    writer = os.open(path, os.O_RDWR)
    lock = paths.FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, rec3, W.CM_WIN_RECORD_BYTES, 0)
    fcntl.fcntl(writer, fcntl.F_OFD_SETLK, lock)
    os.pwrite(writer, new[W.CM_WIN_C_ACKED:], off + W.CM_WIN_C_ACKED)   # the body, not the crc
    wf = W.WindowFile(root, writable=False)
    asking = threading.Event()
    real_lock = wf._lock

    def observed_lock(rec, kind):     # the real lock, and a signal that it was asked for
        if kind == fcntl.F_RDLCK:
            asking.set()
        return real_lock(rec, kind)

    wf._lock = observed_lock
    got: list = []
    reader = threading.Thread(target=lambda: got.append(_load_or_error(wf, 3, 7, 1)))
    try:
        reader.start()
        # the reader has read the torn copy once it asks for the record's read lock
        assert asking.wait(30) or not reader.is_alive(), "the load never asked for the lock"
        assert asking.is_set(), f"the load did not wait for the store: {got}"
        os.pwrite(writer, new[:W.CM_WIN_C_ACKED], off)                  # the head and crc last
        fcntl.fcntl(writer, fcntl.F_OFD_SETLK,
                    paths.FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, rec3, W.CM_WIN_RECORD_BYTES, 0))
        reader.join(30)
        assert not reader.is_alive()
        st = got[0]
        assert not isinstance(st, Exception), st
        assert (st.base, st.acked) == (100, {101, 102, 105, 4195})
    finally:
        os.close(writer)
        reader.join(30)
        wf.close()


def _load_or_error(wf, *args):
    try:
        return wf.load(*args)
    except Exception as e:  # noqa: BLE001 - handed to the test thread
        return e


def test_a_torn_copy_whose_store_never_finishes_is_a_storage_error_after_the_bound(
        tmp_path, monkeypatch):
    # The read lock of the re-read is bounded like a store's (LOCK_TIMEOUT): a copy that
    # fails its crc while another description holds the record's write lock and never
    # lets go is StorageError naming the file, not a hang and not CorruptRecord.
    import fcntl

    from cometmp import paths

    monkeypatch.setattr(W, "LOCK_TIMEOUT", 0.2)
    root = str(tmp_path)
    path = _materialize(root)
    rec3 = W.CM_WIN_HEADER_BYTES + 3 * W.CM_WIN_RECORD_BYTES
    off = rec3 + W.CM_WIN_COPY_OFF + W.CM_WIN_COPY_BYTES
    holder = os.open(path, os.O_RDWR)
    fcntl.fcntl(holder, fcntl.F_OFD_SETLK,
                paths.FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, rec3, W.CM_WIN_RECORD_BYTES, 0))
    os.pwrite(holder, b"\xff" * 16, off + W.CM_WIN_C_ACKED)     # a store half done
    wf = W.WindowFile(root, writable=False)
    try:
        with pytest.raises(cometmp.StorageError, match=rf"{path}.*stayed locked") as ei:
            wf.load(3, 7, 1)
        assert not isinstance(ei.value, cometmp.CorruptRecord)
    finally:
        wf.close()
        os.close(holder)
