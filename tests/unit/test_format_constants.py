"""Every layout's Python mirror agrees with native/format.h, through one C table.

cm_format_constants() (native/format.c) lists every constant of the eight layouts: segment,
record, index, state page (cometmp/format.py), consumer offsets file (cometmp/offsets.py),
consumer members file (cometmp/members.py), worker registry (cometmp/registry/table.py) and
application metrics table (cometmp/appmetrics.py). Each C constant must have an equal Python
constant in the module that mirrors its layout, and each Python CM_* constant of those
modules must be known to C.
"""

from __future__ import annotations

import struct

import cometmp
from cometmp import _ffi
from cometmp import format as fmt
from cometmp import appmetrics, members, offsets
from cometmp.registry import table

#: the Python module mirroring each layout, by constant-name prefix
MIRRORS = [("CM_APM_", appmetrics), ("CM_OFS_", offsets), ("CM_MMB_", members), ("CM_REGE_", table), ("CM_REGM_", table), ("CM_REG_", table),
           ("CM_", fmt)]


def mirror_of(name: str):
    return next(mod for prefix, mod in MIRRORS if name.startswith(prefix))


def python_constants() -> dict[str, int]:
    out: dict[str, int] = {}
    for _prefix, mod in MIRRORS:
        for n, v in vars(mod).items():
            if n.startswith("CM_") and mirror_of(n) is mod:
                out[n] = v
    return out


def test_the_one_table_covers_all_eight_layouts():
    c = _ffi.format_constants()
    for prefix in ("CM_SEG_", "CM_REC_", "CM_IDX_", "CM_IDXE_", "CM_STATE_", "CM_CTR_",
                   "CM_OFS_", "CM_MMB_", "CM_REG_", "CM_REGE_", "CM_REGM_", "CM_APM_"):
        assert any(n.startswith(prefix) for n in c), prefix
    assert len(c) == len(set(c)) > 150


def test_every_c_layout_constant_has_an_equal_python_constant():
    c = _ffi.format_constants()
    missing = sorted(f"{mirror_of(n).__name__}.{n}" for n in c if not hasattr(mirror_of(n), n))
    assert not missing, f"Python mirrors lack {missing}"
    differ = {n: (getattr(mirror_of(n), n), v) for n, v in c.items() if getattr(mirror_of(n), n) != v}
    assert not differ, f"(python, C) values differ: {differ}"


def test_every_python_layout_constant_is_known_to_c():
    c = _ffi.format_constants()
    unknown = sorted(set(python_constants()) - set(c))
    assert not unknown, f"Python-only constants cannot be checked against the C layout: {unknown}"


def test_counter_names_map_to_the_c_counter_slots():
    c = _ffi.format_constants()
    for name, slot in fmt.COUNTERS.items():
        assert c["CM_CTR_" + name.upper()] == slot
    assert len(set(fmt.COUNTERS.values())) == len(fmt.COUNTERS)
    assert max(fmt.COUNTERS.values()) < fmt.CM_STATE_COUNTERS


def test_python_structs_match_the_c_offsets():
    c = _ffi.format_constants()
    # registry entry "=iIQQqqqiI8x" and master "=i4xQ"
    fields = ["PID", "STATE", "START", "EPOCH", "HEARTBEAT", "VACATED", "KEY", "LAST_PID", "FLAGS"]
    assert [c[f"CM_REGE_OFF_{f}"] for f in fields] == [0, 4, 8, 16, 24, 32, 40, 48, 52]
    assert table.ENTRY.size == c["CM_REG_ENTRY_BYTES"] == 64
    assert table.MASTER.size == c["CM_REG_MASTER_BYTES"]
    assert table.HEADER.size == c["CM_REG_OFF_OWNER_GID"] + 4
    assert c["CM_REG_BYTES"] == c["CM_REG_OFF_ENTRIES"] + 64 * c["CM_REG_MAX_ENTRIES"] == 16640
    assert lib_registry_bytes() == c["CM_REG_BYTES"]
    # offsets-file header (up to the lock), group and slot heads
    assert offsets.HEADER.size == c["CM_OFS_OFF_LOCK"]
    assert struct.calcsize("=IIQqqI") == c["CM_OFS_G_PATTERNS_LEN"] + 4
    assert struct.calcsize("=IIQQQqQI") == c["CM_OFS_S_STREAM_LEN"] + 4
    assert c["CM_OFS_FILE_BYTES"] == 41947136


def lib_registry_bytes() -> int:
    return int(_ffi.lib.cm_registry_bytes())


def test_fingerprints_follow_the_documented_formula():
    # FORMAT.md §4: the Python fold over the documented terms gives the C value for some
    # (mutex, pointer) size; on the reference ABI (x86-64 glibc: 40, 8) exactly that one.
    ours = int(_ffi.lib.cm_state_fingerprint())
    candidates = {(m, p) for m in range(24, 65, 4) for p in (4, 8)
                  if fmt.state_fingerprint(m, p) == ours}
    assert len(candidates) == 1


def test_crc32c_is_castagnoli_in_python_and_c():
    check = b"123456789"
    assert fmt.crc32c(check) == 0xE3069283              # the CRC-32C check value
    assert _ffi.lib.cm_crc32c(0, check, len(check)) == 0xE3069283
    data = bytes(range(256)) * 37 + b"odd tail"
    for cut in (0, 1, 7, 8, 63, 64, 1000, len(data)):
        whole = _ffi.lib.cm_crc32c(0, data, len(data))
        assert fmt.crc32c(data) == whole
        assert fmt.crc32c(data[cut:], fmt.crc32c(data[:cut])) == whole
        assert _ffi.lib.cm_crc32c(_ffi.lib.cm_crc32c(0, data[:cut], cut), data[cut:],
                                  len(data) - cut) == whole


def _segment_image(frame: bytes, stream_id: int | None, base: int) -> bytes:
    head = fmt.encode_segment_header(base, 4096, 1, fmt.crc32c(b"s"), stream_id)
    return head + frame + bytes(4096 - len(head) - len(frame))


def test_python_encoded_record_is_valid_for_the_c_validator():
    for sid in (None, 0x0123456789ABCDEF):          # a v1 frame in a v1 segment, v2 in v2
        frame = fmt.encode_record(b"payload", 1234, 5, fmt.CM_REC_FLAG_ZSTD, stream_id=sid, base=70)
        img = _segment_image(frame, sid, 70)
        buf = _ffi.ffi.new("uint8_t[]", img)
        rec = _ffi.ffi.new("cm_record *")
        at = fmt.CM_SEG_HEADER_BYTES
        assert _ffi.lib.cm_record_at(buf, len(img), 70, at, 5, rec) == _ffi.lib.CM_REC_VALID
        assert (rec.len, rec.seq, rec.ts_ns, rec.flags) == (7, 5, 1234, fmt.CM_REC_FLAG_ZSTD)
        assert rec.frame_bytes == fmt.CM_REC_HEADER_BYTES + 7
        # V5: a frame with another sequence number is rejected when one is expected
        assert _ffi.lib.cm_record_at(buf, len(img), 70, at, 6, rec) == _ffi.lib.CM_E_CORRUPT
        # all-zero header: end of data
        assert _ffi.lib.cm_record_at(buf, len(img), 70, at + len(frame), 0, rec) == _ffi.lib.CM_REC_END


def test_v2_frame_crc_binds_stream_id_and_entry_number():
    """FORMAT.md §2.2 (I17): the v2 crc covers stream_id(8) entry(8) before the frame."""
    sid = 0x0123456789ABCDEF
    frame = fmt.encode_record(b"payload", 1234, 5, stream_id=sid, base=70)
    body = frame[:4] + frame[8:]
    assert int.from_bytes(frame[4:8], "little") == fmt.crc32c(fmt.frame_key(sid, 75) + body)
    assert fmt.CM_REC_KEY_BYTES == len(fmt.frame_key(sid, 75)) == 16
    rec = _ffi.ffi.new("cm_record *")
    at = fmt.CM_SEG_HEADER_BYTES
    for other_sid, base in ((sid, 71), (sid ^ 1, 70), (None, 70)):   # other entry, stream, v1
        img = _segment_image(frame, other_sid, base)
        assert _ffi.lib.cm_record_at(_ffi.ffi.new("uint8_t[]", img), len(img), base, at, 5, rec) \
            == _ffi.lib.CM_E_CORRUPT, (other_sid, base)
    # the base is the caller's (the file name's), not the header's
    img = _segment_image(frame, sid, 70)
    assert _ffi.lib.cm_record_at(_ffi.ffi.new("uint8_t[]", img), len(img), 71, at, 5, rec) \
        == _ffi.lib.CM_E_CORRUPT


def test_record_overhead_is_twenty_bytes():
    assert len(fmt.encode_record(b"", 1, 0)) == 20 == fmt.CM_REC_HEADER_BYTES
    assert cometmp is not None


def test_members_structs_match_the_c_offsets():
    c = _ffi.format_constants()
    assert members.HEADER.size == c["CM_MMB_OFF_LOCK"]
    assert members.MEMBER.size == c["CM_MMB_M_PATTERNS"]
    assert members.CLAIM.size == c["CM_MMB_CLAIM_BYTES"]
    assert len(members.header_bytes(0)) == c["CM_MMB_HEADER_BYTES"]
