"""Regenerate the golden files of tests/data from their JSON descriptions.

    python tests/data/make_golden.py            # writes the files
    python tests/data/make_golden.py --check    # exits 1 if a committed file differs

Golden files are frozen: once a format version ships, its files never change. They are
built only with cometmp.format (the pure-Python oracle), never with the C writer, so the
C reader is tested against an independent encoder (tests/unit/test_golden_files.py).

``format_v1/records.json`` describes a data directory holding one stream, ``golden``,
in two segments of 4096 bytes (smaller than a writer would create: readers take geometry
from the files). ``pick_shard_v1.json`` pins pick_shard(key, count) for all versions.
"""

from __future__ import annotations

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from cometmp import format as fmt  # noqa: E402

V1 = os.path.join(HERE, "format_v1")


def segment_header(base: int, capacity: int, created_ns: int, stream_crc: int) -> bytes:
    # magic(4) version(2) header_bytes(2) base(8) capacity(8) created_ns(8)
    # stream_crc(4) reserved(24) header_crc(4)
    head = struct.pack("<IHHQQqI24x", fmt.CM_SEG_MAGIC, fmt.CM_SEG_VERSION,
                       fmt.CM_SEG_HEADER_BYTES, base, capacity, created_ns, stream_crc)
    return head + struct.pack("<I", fmt.crc32c(head))


def build_v1(desc: dict) -> dict[str, bytes]:
    """{relative path: bytes} of the golden directory described by records.json."""
    out: dict[str, bytes] = {}
    stream_crc = fmt.crc32c(desc["stream"].encode())
    for seg in desc["segments"]:
        body = bytearray(segment_header(seg["base"], seg["capacity"], seg["created_ns"], stream_crc))
        for seq, rec in enumerate(seg["records"]):
            flags = fmt.CM_REC_FLAG_ZSTD if rec["compressed"] else 0
            body += fmt.encode_record(bytes.fromhex(rec["stored_hex"]), rec["ts_ns"], seq, flags)
        assert len(body) <= seg["capacity"]
        body += bytes(seg["capacity"] - len(body))
        name = f"streams/{desc['stream']}/{seg['base']:020d}.seg"
        out[name] = bytes(body)
    out["cometmp.json"] = (json.dumps({"format": "cometmp.dir", "version": 1}, indent=1,
                                      sort_keys=True) + "\n").encode()
    return out


def main() -> int:
    with open(os.path.join(V1, "records.json")) as f:
        desc = json.load(f)
    files = build_v1(desc)
    check = "--check" in sys.argv
    bad = 0
    for rel, data in files.items():
        path = os.path.join(V1, rel)
        if check:
            with open(path, "rb") as f:
                if f.read() != data:
                    print(f"{path} differs from its description", file=sys.stderr)
                    bad = 1
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    return bad


if __name__ == "__main__":
    sys.exit(main())
