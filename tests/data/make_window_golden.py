"""Writes (or, with --check, compares) tests/data/window_v1/windows.sparse.json: the golden
ack-windows file of docs/FORMAT.md §7.2, encoded here from the spec's byte offsets with
the pure-Python CRC-32C oracle (cometmp.format.crc32c), never with cometmp.window's
encoder, so a change to either side shows up as a difference.

    python tests/data/make_window_golden.py [--check]

Contents (tests/unit/test_window_format.py reads them back):
    record 3   copy 1 current: group 7, resets 1, base 100, acked 102 105 4195,
               counts 100 -> 3 and 101 -> 2, delivered 110; copy 0 an older state
               (group 7, resets 1, base 90, nothing acked)
    record 5   copy 0 current: group 9, resets 0, base 0, acked 1, delivered 2
"""

from __future__ import annotations

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from cometmp.format import crc32c  # noqa: E402  (the oracle)
from make_golden import sparse_description  # noqa: E402

OUT = os.path.join(HERE, "window_v1", "windows.sparse.json")
# FORMAT.md §7.2, written out again on purpose
HEADER_BYTES, RECORD_BYTES, RECORD_CAP, ENTRIES, COUNTS_MAX = 4096, 4096, 65536, 4096, 256
COPY_OFF, COPY_BYTES = 64, 1568
FILE_BYTES = HEADER_BYTES + RECORD_CAP * RECORD_BYTES


def copy(gid: int, resets: int, base: int, acked, counts) -> bytes:
    body = bytearray(COPY_BYTES)
    struct.pack_into("<QQQ", body, 0, gid, resets, base)
    struct.pack_into("<H", body, 28, len(counts))
    for e in acked:
        k = e - base
        body[32 + k // 8] |= 1 << (k % 8)
    for i, (e, n) in enumerate(sorted(counts.items())):
        struct.pack_into("<HH", body, 32 + ENTRIES // 8 + 4 * i, e - base, n)
    struct.pack_into("<I", body, 24, crc32c(bytes(body)))
    return bytes(body)


def record(active: int, delivered: int, copies: list[bytes]) -> bytes:
    rec = bytearray(RECORD_BYTES)
    struct.pack_into("<I", rec, 0, active)
    struct.pack_into("<Q", rec, 8, delivered)
    for k, c in enumerate(copies):
        rec[COPY_OFF + k * COPY_BYTES:COPY_OFF + (k + 1) * COPY_BYTES] = c
    return bytes(rec)


def build() -> dict:
    head = bytearray(HEADER_BYTES)
    struct.pack_into("<IHHIIIIq", head, 0, 0x4E574D43, 1, HEADER_BYTES, RECORD_BYTES, RECORD_CAP,
                     ENTRIES, COUNTS_MAX, 1_764_000_000_000_000_000)
    chunks = {
        0: bytes(head),
        HEADER_BYTES + 3 * RECORD_BYTES: record(1, 110, [
            copy(7, 1, 90, [], {}), copy(7, 1, 100, [102, 105, 4195], {100: 3, 101: 2})]),
        HEADER_BYTES + 5 * RECORD_BYTES: record(0, 2, [copy(9, 0, 0, [1], {})]),
    }
    return sparse_description(chunks, FILE_BYTES)


def main() -> int:
    doc = build()
    text = json.dumps(doc, indent=1) + "\n"
    if "--check" in sys.argv:
        with open(OUT) as f:
            if f.read() != text:
                print(f"{OUT} differs from what make_window_golden.py builds")
                return 1
        return 0
    with open(OUT, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
