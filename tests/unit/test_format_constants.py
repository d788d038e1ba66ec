"""cometmp/format.py (the pure-Python oracle) agrees with native/format.h."""

from __future__ import annotations

import cometmp
from cometmp import _ffi
from cometmp import format as fmt


def test_every_c_layout_constant_has_an_equal_python_constant():
    c = _ffi.format_constants()
    assert len(c) > 40
    missing = sorted(n for n in c if not hasattr(fmt, n))
    assert not missing, f"cometmp/format.py lacks {missing}"
    differ = {n: (getattr(fmt, n), v) for n, v in c.items() if getattr(fmt, n) != v}
    assert not differ, f"(python, C) values differ: {differ}"


def test_every_python_layout_constant_is_known_to_c():
    c = _ffi.format_constants()
    py = {n for n in vars(fmt) if n.startswith("CM_")}
    assert py - set(c) == set(), "Python-only constants cannot be checked against the C layout"


def test_counter_names_map_to_the_c_counter_slots():
    c = _ffi.format_constants()
    for name, slot in fmt.COUNTERS.items():
        assert c["CM_CTR_" + name.upper()] == slot
    assert len(set(fmt.COUNTERS.values())) == len(fmt.COUNTERS)
    assert max(fmt.COUNTERS.values()) < fmt.CM_STATE_COUNTERS


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


def test_python_encoded_record_is_valid_for_the_c_validator():
    frame = fmt.encode_record(b"payload", 1234, 5, fmt.CM_REC_FLAG_ZSTD)
    buf = _ffi.ffi.new("uint8_t[]", frame + bytes(20))
    rec = _ffi.ffi.new("cm_record *")
    assert _ffi.lib.cm_record_at(buf, len(frame) + 20, 0, 5, rec) == _ffi.lib.CM_REC_VALID
    assert (rec.len, rec.seq, rec.ts_ns, rec.flags) == (7, 5, 1234, fmt.CM_REC_FLAG_ZSTD)
    assert rec.frame_bytes == fmt.CM_REC_HEADER_BYTES + 7
    # V5: a frame with another sequence number is rejected when one is expected
    assert _ffi.lib.cm_record_at(buf, len(frame) + 20, 0, 6, rec) == _ffi.lib.CM_E_CORRUPT
    # all-zero header: end of data
    assert _ffi.lib.cm_record_at(buf, len(frame) + 20, len(frame), 0, rec) == _ffi.lib.CM_REC_END


def test_record_overhead_is_twenty_bytes():
    assert len(fmt.encode_record(b"", 1, 0)) == 20 == fmt.CM_REC_HEADER_BYTES
    assert cometmp is not None
