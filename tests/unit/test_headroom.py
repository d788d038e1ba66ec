"""The headroom an appender keeps reserved ahead of its tail ramps with what the stream
writes (ensure_alloc in native/shard.c, I9): a stream that takes a few entries reserves
64 KiB, a busy one two to four ``preallocate_bytes`` chunks, and every store still lands in
blocks reserved before it (the full-disk tests in tests/crash check that side)."""

from __future__ import annotations

import os
import struct

import cometmp
from cometmp import format as fmt
from cometmp import paths, prealloc
from conftest import wait_until

MiB = 1 << 20
KiB = 1 << 10


def state_field(root: str, stream: str, off: int) -> int:
    with open(os.path.join(paths.stream_dir(root, stream), paths.STATE), "rb") as f:
        f.seek(off)
        return struct.unpack("<Q", f.read(8))[0]


def segment_blocks(root: str, stream: str) -> dict[int, int]:
    d = paths.stream_dir(root, stream)
    return {b: os.stat(os.path.join(d, paths.segment_name(b))).st_blocks * 512
            for b in paths.list_segment_bases(d)}


def settle(log) -> None:
    """Let the extensions of the reservation queued on the prefault thread finish and be
    taken: the state page's alloc_end moves only at the append after one is done
    (native/headroom.c), and that append may queue the next (its bytes were counted from
    the tail when the first was asked for); the second is counted from the tail now."""
    for _ in range(2):
        prealloc.drain()
        log.append(b"")


def test_a_stream_that_takes_one_entry_reserves_64_kib_not_four_chunks(tmp_path):
    root = str(tmp_path / "log")
    with cometmp.Client(root) as c:   # every setting at its default
        for i in range(16):
            c.append(f"small:{i}", [b"x" * 100])
        for i in range(16):
            [(_, used)] = segment_blocks(root, f"small:{i}").items()
            assert used <= 64 * KiB, used
            assert state_field(root, f"small:{i}", fmt.CM_STATE_OFF_ALLOC_END) == 64 * KiB


def test_a_busy_stream_keeps_two_to_four_chunks_reserved_ahead_of_its_tail(tmp_path):
    root = str(tmp_path / "log")
    chunk = cometmp.Config().storage.preallocate_bytes
    with cometmp.Client(root) as c:
        log = c.log("busy", shards=1)
        payload = b"y" * 1000
        ahead_seen = []
        for _ in range(12):
            log.append_many([payload] * 500)    # ~0.5 MiB per step, 6 MiB in all
            settle(log)
            tail = state_field(root, "busy:shard:0000", fmt.CM_STATE_OFF_TAIL)
            alloc = state_field(root, "busy:shard:0000", fmt.CM_STATE_OFF_ALLOC_END)
            assert alloc >= tail          # I9: nothing stored past the reservation
            ahead_seen.append(alloc - tail)
        # the ramp reached full headroom, and it never exceeds four chunks
        assert 2 * chunk - 4096 <= ahead_seen[-1] <= 4 * chunk + 4096, ahead_seen
        assert max(ahead_seen) <= 4 * chunk + 4096, ahead_seen
        assert ahead_seen[0] < 2 * chunk, ahead_seen  # it started small
        # what the bytes on disk say agrees with the state page
        [(_, used)] = segment_blocks(root, "busy:shard:0000").items()
        assert used >= alloc - 4096


def test_a_segment_a_busy_stream_rotates_into_starts_with_a_chunk_reserved(tmp_path):
    root = str(tmp_path / "log")
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 4 * MiB
    cfg.storage.preallocate_bytes = 256 * KiB
    with cometmp.Client(root, config=cfg) as c:
        log = c.log("rot", shards=1)
        for _ in range(20):
            log.append_many([b"z" * 1000] * 500)   # ~10 MiB: two rotations
        settle(log)
        blocks = segment_blocks(root, "rot:shard:0000")
        assert len(blocks) >= 3, blocks
        newest = max(blocks)
        tail = state_field(root, "rot:shard:0000", fmt.CM_STATE_OFF_TAIL)
        alloc = state_field(root, "rot:shard:0000", fmt.CM_STATE_OFF_ALLOC_END)
        assert alloc >= tail and alloc - tail >= 256 * KiB - 4096, (tail, alloc)
        assert blocks[newest] >= alloc - 4096
        # every entry is still there, in order
        n = c.length("rot:shard:0000")
        assert n == 20 * 500 + 2        # and the two settle() appended
        assert [m.id.entry for m in c.scan("rot:shard:0000", start=n - 3)] == [n - 3, n - 2, n - 1]


def resident_bytes(path: str) -> int:
    """Bytes of ``path`` in the page cache (mincore over a read-only mapping, which
    faults nothing in)."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vec = ctypes.create_string_buffer((size + 4095) // 4096)
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        libc.munmap(addr, size)
        return sum(b & 1 for b in vec.raw) * 4096
    finally:
        os.close(fd)


def test_appends_bring_no_read_around_of_the_empty_pages_past_the_tail_into_the_page_cache(tmp_path):
    """A store into a page not in the page cache used to read around it (read_ahead_kb:
    8 MiB on this machine's disk), allocating megabytes of zero pages past the tail in
    the faulting call (1.5-2.8 ms for the first store into a new segment). The writer's
    mapping advises MADV_RANDOM past the tail (advise_appends in native/shard.c), so only
    the pages written, reserved or prefaulted are cached."""
    root = str(tmp_path / "log")
    cfg = cometmp.Config()
    cfg.storage.prefault = False        # every page faulted by the appender itself
    with cometmp.Client(root, config=cfg) as c:
        c.append("few", [b"x" * 100] * 1000)      # ~116 KiB of records
        [(base, _)] = segment_blocks(root, "few").items()
        seg = os.path.join(paths.stream_dir(root, "few"), paths.segment_name(base))
        tail = state_field(root, "few", fmt.CM_STATE_OFF_TAIL)
        assert resident_bytes(seg) <= tail + 64 * KiB, (resident_bytes(seg), tail)



def _extensions(root: str, stream: str, log, upto: int) -> list[tuple[int, int]]:
    """(tail, alloc_end) after each append that moved alloc_end, until the tail passes
    ``upto``; 100 B entries one by one, as a slow stream writes."""
    out: list[tuple[int, int]] = []
    while state_field(root, stream, fmt.CM_STATE_OFF_TAIL) < upto:
        log.append(b"z" * 100)
        a = state_field(root, stream, fmt.CM_STATE_OFF_ALLOC_END)
        if not out or a != out[-1][1]:
            out.append((state_field(root, stream, fmt.CM_STATE_OFF_TAIL), a))
    return out


def test_the_ramp_extends_once_per_half_step_not_once_per_page(tmp_path):
    # each extension allocates the new step, so the next comes after half of it is used.
    # Extending by the old step put the tail past the new half-mark at once, and a
    # ramping stream ran one posix_fallocate per page (docs/PERFORMANCE.md "The woken
    # read, and the writer's first pages")
    root = str(tmp_path / "log")
    with cometmp.Client(root) as c:              # a new stream: 64 KiB, then 128, 256, 512
        ext = _extensions(root, "new:shard:0000", c.log("new", shards=1), 256 * KiB)
    assert len(ext) <= 4, ext
    assert all(b[0] - a[0] >= 28 * KiB for a, b in zip(ext, ext[1:])), ext
    with cometmp.Client(root) as c:              # reopened: the ramp starts again
        c.log("again", shards=1)
    with cometmp.Client(root) as c:
        ext = _extensions(root, "again:shard:0000", c.log("again", shards=1), 256 * KiB)
    assert len(ext) <= 4, ext
    assert all(b[0] - a[0] >= 28 * KiB for a, b in zip(ext, ext[1:])), ext


def test_a_new_streams_first_headroom_is_queued_for_the_prefault_thread(tmp_path):
    # the appender's first store into each page of a new stream's first 64 KiB was a
    # write fault (~50 us on ext4 here); the prefault thread takes them when the stream
    # is created, with the index's first page
    root = str(tmp_path / "log")
    before = prealloc.stats()["bytes_populated"]
    with cometmp.Client(root) as c:
        c.log("fresh", shards=1)
        wait_until(lambda: prealloc.stats()["bytes_populated"] - before >= 64 * KiB + 4096,
                   30, "the prefault thread to populate the first 64 KiB and an index page")
        assert state_field(root, "fresh:shard:0000", fmt.CM_STATE_OFF_ALLOC_END) == 64 * KiB
