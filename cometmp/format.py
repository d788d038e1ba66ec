"""cometmp's on-disk layouts in Python: constants, checksums, header and index parsing.

docs/FORMAT.md is normative; these constants mirror native/format.h and
tests/unit/test_format_constants.py checks them against the compiled core. This module
never imports the C core (the golden files are built from it alone). It does not read
records: the one walker is native/walker.c, and its independent pure-Python copy, the
tests' oracle, is tests/oracle.py.

Segment (little-endian)::

    header  magic(4) version(2) header_bytes(2) base(8) capacity(8) created_ns(8)
            stream_crc(4) stream_id(8) reserved(16) header_crc(4)             = 64 bytes
            (version 1: stream_id is reserved zeros)
    record  len(4) crc(4) ts_ns(8) seqflags(4) payload(len)                    = 20 + len
            v1 crc = crc32c(bytes[0:4] + bytes[8:20+len])
            v2 crc = crc32c(stream_id(8) + entry(8) + bytes[0:4] + bytes[8:20+len]),
                     entry = base + seq (I17); seqflags = (flags << 28) | seq
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# ---- segment ---------------------------------------------------------------------------
CM_SEG_MAGIC = 0x47534D43  # b"CMSG"
CM_SEG_VERSION = 2  # written by this build
CM_SEG_VERSION_V1 = 1  # oldest version still read
CM_SEG_OFF_MAGIC = 0
CM_SEG_OFF_VERSION = 4
CM_SEG_OFF_HEADER_BYTES = 6
CM_SEG_OFF_BASE = 8
CM_SEG_OFF_CAPACITY = 16
CM_SEG_OFF_CREATED = 24
CM_SEG_OFF_STREAM_CRC = 32
CM_SEG_OFF_STREAM_ID = 36
CM_SEG_OFF_RESERVED = 44
CM_SEG_OFF_HEADER_CRC = 60
CM_SEG_HEADER_BYTES = 64
CM_SEG_MAX_BYTES = 1 << 32
CM_ENTRY_MAX_BYTES = 1 << 30

# ---- record ----------------------------------------------------------------------------
CM_REC_OFF_LEN = 0
CM_REC_OFF_CRC = 4
CM_REC_OFF_TS = 8
CM_REC_OFF_SEQFLAGS = 16
CM_REC_HEADER_BYTES = 20
CM_REC_KEY_BYTES = 16  # v2 crc prefix: stream_id(8) entry(8)
CM_REC_SEQ_MASK = 0x0FFFFFFF
CM_REC_FLAGS_MASK = 0xF0000000
CM_REC_FLAG_ZSTD = 0x10000000

# ---- sparse index ----------------------------------------------------------------------
CM_IDX_MAGIC = 0x58494D43  # b"CMIX"
CM_IDX_VERSION = 1
CM_IDX_OFF_MAGIC = 0
CM_IDX_OFF_VERSION = 4
CM_IDX_OFF_HEADER_BYTES = 6
CM_IDX_OFF_BASE = 8
CM_IDX_OFF_INTERVAL = 16
CM_IDX_OFF_RESERVED = 20
CM_IDX_OFF_HEADER_CRC = 28
CM_IDX_HEADER_BYTES = 32
CM_IDXE_OFF_REL = 0
CM_IDXE_OFF_OFFSET = 4
CM_IDXE_OFF_TS = 8
CM_IDX_ENTRY_BYTES = 16

# ---- state page (native endian, rebuildable) -------------------------------------------
CM_STATE_MAGIC = 0x54534D43  # b"CMST"
CM_STATE_VERSION = 1
CM_STATE_BYTES = 4096
CM_STATE_COUNTERS = 32
CM_STATE_BOOT_ID_BYTES = 32
CM_LOCK_LINE_BYTES = 64  # every shared mutex (state page, offsets file, registry) has its own line
CM_STATE_OFF_MAGIC = 0
CM_STATE_OFF_VERSION = 4
CM_STATE_OFF_FINGERPRINT = 8
CM_STATE_OFF_SIZE = 16
CM_STATE_OFF_CREATED = 24
CM_STATE_OFF_BOOT_ID = 32
CM_STATE_OFF_LOCK = 64
CM_STATE_OFF_COMMITTED = 128
CM_STATE_OFF_ACTIVE_BASE = 136
CM_STATE_OFF_TAIL = 144
CM_STATE_OFF_RESERVE_END = 152
CM_STATE_OFF_LAST_TS = 160
CM_STATE_OFF_ALLOC_END = 168
CM_STATE_OFF_IDX_LAST_OFF = 176
CM_STATE_OFF_IDX_COUNT = 184
CM_STATE_OFF_WAITERS = 188
CM_STATE_OFF_FIRST_ENTRY = 192
CM_STATE_OFF_NOTIFY_SEQ = 200
CM_STATE_OFF_ACTIVE_GEN = 204
CM_STATE_OFF_ROTATE_PENDING = 208   # was padding (zero) in the first v1 builds
CM_STATE_OFF_COUNTERS = 256
CM_STATE_OFF_RESERVED = 512

#: counter slots in the state page, by name (FORMAT.md "Counters")
COUNTERS = {
    "appends": 0,
    "bytes": 1,
    "rotations": 2,
    "recoveries": 3,
    "bytes_dropped": 4,
    "corrupt_records": 5,
    "fsyncs": 6,
    "retention_segments": 7,
    "retention_bytes": 8,
    "compressed": 9,
    "lock_recoveries": 10,
    "contended": 11,
    "clock_clamps": 12,
    "disk_full": 13,
    "spare_rotations": 14,
}
CM_CTR_APPENDS = 0
CM_CTR_BYTES = 1
CM_CTR_ROTATIONS = 2
CM_CTR_RECOVERIES = 3
CM_CTR_BYTES_DROPPED = 4
CM_CTR_CORRUPT_RECORDS = 5
CM_CTR_FSYNCS = 6
CM_CTR_RETENTION_SEGMENTS = 7
CM_CTR_RETENTION_BYTES = 8
CM_CTR_COMPRESSED = 9
CM_CTR_LOCK_RECOVERIES = 10
CM_CTR_CONTENDED = 11
CM_CTR_CLOCK_CLAMPS = 12
CM_CTR_DISK_FULL = 13
CM_CTR_SPARE_ROTATIONS = 14

_SEG_HDR = struct.Struct("<IHHQQqIQ16xI")
_REC_HDR = struct.Struct("<IIqI")
_IDX_HDR = struct.Struct("<IHHQI8xI")
_IDX_ENT = struct.Struct("<IIq")
assert _SEG_HDR.size == CM_SEG_HEADER_BYTES
assert _REC_HDR.size == CM_REC_HEADER_BYTES
assert _IDX_HDR.size == CM_IDX_HEADER_BYTES
assert _IDX_ENT.size == CM_IDX_ENTRY_BYTES


def fingerprint(version: int, *terms: int) -> int:
    """A layout fingerprint as native/state.c, offsets.c and registry.c compute it
    (FORMAT.md §4, §7, §8): ``f = version``, then ``f = f * 1000003 + x`` mod 2**64."""
    f = version
    for x in terms:
        f = (f * 1000003 + x) & 0xFFFFFFFFFFFFFFFF
    return f


def state_fingerprint(mutex_bytes: int, pointer_bytes: int) -> int:
    """cm_state_fingerprint() of a build whose pthread_mutex_t and pointers have these sizes."""
    return fingerprint(CM_STATE_VERSION, CM_STATE_OFF_BOOT_ID, CM_STATE_OFF_LOCK, mutex_bytes,
                       CM_STATE_OFF_COMMITTED, CM_STATE_OFF_NOTIFY_SEQ, CM_STATE_OFF_COUNTERS,
                       CM_STATE_COUNTERS, pointer_bytes)


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli); ``crc32c(b, crc32c(a)) == crc32c(a + b)``. Slow: an oracle."""
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in bytes(data):
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@dataclass(frozen=True)
class SegmentHeader:
    magic: int
    version: int
    header_bytes: int
    base: int
    capacity: int
    created_ns: int
    stream_crc: int
    stream_id: int  # 0 in version 1
    header_crc: int

    @property
    def valid(self) -> bool:
        if self.magic != CM_SEG_MAGIC:
            return False
        return self.version == CM_SEG_VERSION_V1 or (self.version == CM_SEG_VERSION and self.stream_id != 0)


def parse_segment_header(buf: bytes | memoryview) -> SegmentHeader:
    """Parse (not validate) a segment header; see segment_header_ok()."""
    return SegmentHeader(*_SEG_HDR.unpack_from(buf, 0))


def segment_header_ok(buf: bytes | memoryview) -> bool:
    if len(buf) < CM_SEG_HEADER_BYTES:
        return False
    h = parse_segment_header(buf)
    return h.valid and h.header_crc == crc32c(bytes(buf[:CM_SEG_OFF_HEADER_CRC]))


def encode_segment_header(base: int, capacity: int, created_ns: int, stream_crc: int,
                          stream_id: int | None = None) -> bytes:
    """A segment header as the writer produces it: version 1 without ``stream_id``, else
    version 2 naming that stream (used to build golden files and test images)."""
    # magic(4) version(2) header_bytes(2) base(8) capacity(8) created_ns(8)
    # stream_crc(4) stream_id(8) reserved(16) header_crc(4)
    version = CM_SEG_VERSION_V1 if stream_id is None else CM_SEG_VERSION
    head = struct.pack("<IHHQQqIQ16x", CM_SEG_MAGIC, version, CM_SEG_HEADER_BYTES, base,
                       capacity, created_ns, stream_crc, stream_id or 0)
    return head + struct.pack("<I", crc32c(head))


def frame_key(stream_id: int, entry: int) -> bytes:
    """The 16 bytes a version-2 frame's crc starts with (FORMAT.md §2.2, I17)."""
    return struct.pack("<QQ", stream_id, entry)


def encode_record(payload: bytes, ts_ns: int, seq: int, flags: int = 0, *,
                  stream_id: int | None = None, base: int = 0) -> bytes:
    """The frame the writer produces for ``payload`` (used to build golden files): a
    version-1 frame without ``stream_id``, else the version-2 frame of entry
    ``base + seq`` of that stream."""
    body = struct.pack("<qI", ts_ns, seq | flags) + payload
    length = struct.pack("<I", len(payload))
    seed = 0 if stream_id is None else crc32c(frame_key(stream_id, base + seq))
    return length + struct.pack("<I", crc32c(body, crc32c(length, seed))) + body


def parse_index(buf: bytes | memoryview) -> tuple[int, int, list[tuple[int, int, int]]] | None:
    """(base, interval, [(rel, offset, ts_ns), ...]) of an index file, or None if its
    header is invalid. Entries stop at the first zero offset or non-increasing entry."""
    if len(buf) < CM_IDX_HEADER_BYTES:
        return None
    magic, version, _hb, base, interval, hcrc = _IDX_HDR.unpack_from(buf, 0)
    if magic != CM_IDX_MAGIC or version != CM_IDX_VERSION:
        return None
    if hcrc != crc32c(bytes(buf[:CM_IDX_OFF_HEADER_CRC])):
        return None
    entries: list[tuple[int, int, int]] = []
    pos = CM_IDX_HEADER_BYTES
    while pos + CM_IDX_ENTRY_BYTES <= len(buf):
        rel, off, ts = _IDX_ENT.unpack_from(buf, pos)
        if off == 0:
            break
        if entries and (rel <= entries[-1][0] or off <= entries[-1][1]):
            break
        entries.append((rel, off, ts))
        pos += CM_IDX_ENTRY_BYTES
    return base, interval, entries


def encode_index(base: int, interval: int, entries: list[tuple[int, int, int]], capacity: int) -> bytes:
    head = bytearray(_IDX_HDR.pack(CM_IDX_MAGIC, CM_IDX_VERSION, CM_IDX_HEADER_BYTES, base, interval, 0))
    struct.pack_into("<I", head, CM_IDX_OFF_HEADER_CRC, crc32c(bytes(head[:CM_IDX_OFF_HEADER_CRC])))
    body = b"".join(_IDX_ENT.pack(*e) for e in entries)
    out = bytes(head) + body
    return out + bytes(max(0, capacity - len(out)))
