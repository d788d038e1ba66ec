"""Regenerate the golden files of tests/data from their JSON descriptions.

    python tests/data/make_golden.py            # writes the files
    python tests/data/make_golden.py --check    # exits 1 if a committed file differs

Golden files are frozen: once a format version ships, its files never change. They are
built only from the Python mirrors of the layouts (cometmp/format.py, and the constants of
cometmp/offsets.py and cometmp/registry/table.py), never with the C writer, so the C core
is tested against an independent encoder (tests/unit/test_golden_files.py).

``format_vN/records.json`` describes a data directory holding one stream, ``golden``,
in two segments of 4096 bytes (smaller than a writer would create: readers take geometry
from the files). ``format_v1/layouts.json`` describes every other file kind of that
directory: the two segments' indexes, the stream's state page, the consumer offsets file,
a family file, and a worker registry image. Files written (FORMAT.md section in brackets):

    cometmp.json                                   directory marker (§1.1)
    registry.key                                   the registry key (§8.1); git keeps it
                                                   0644, so a test that uses it chmods its
                                                   copy to 0600 as cometmp writes it
    families/events:v1.json                        family file (§1.2)
    streams/golden/<base>.seg                      segments (§2)
    streams/golden/<base>.idx                      their sparse indexes (§3)
    streams/golden/state                           the state page (§4)
    consumers/offsets.sparse.json                  the offsets file (§7): it is 41 947 136
                                                   bytes and sparse, so only its non-zero
                                                   byte runs are frozen; materialize_sparse()
                                                   rebuilds the file (a test does, in tmp)
    consumers/members.sparse.json                  the members file (§7.1), 69 210 112 bytes,
                                                   sparse likewise: one live record nobody
                                                   locks (a dead member), one freed one, a
                                                   claim it holds and a released claim
    shm/registry                                   the registry's shared-memory image (§8);
                                                   it lives in /dev/shm, never in DIR

The native-endian images are those of the reference ABI (x86-64 glibc, layouts.json
"abi"): their fingerprints fold in sizeof(pthread_mutex_t) and pointer size, so on another
ABI the tests that hand them to the C core skip. ``pick_shard_v1.json`` pins
pick_shard(key, count) for all versions.

``app_metrics_v1/table.json`` describes the application metrics table (§10, version 1):
its binders, keys and cells; ``app_metrics_v1/metrics/app.sparse.json`` is the file
(6 602 752 bytes, sparse: its non-zero byte runs), built from cometmp/appmetrics.py's
constants and structs.
"""

from __future__ import annotations

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from cometmp import format as fmt  # noqa: E402
from cometmp import appmetrics as apm  # noqa: E402  (layout constants only)
from cometmp import members as mmb  # noqa: E402  (layout constants only)
from cometmp import offsets as ofs  # noqa: E402  (layout constants only)
from cometmp.registry import table as reg  # noqa: E402  (layout constants only)

V1 = os.path.join(HERE, "format_v1")
V2 = os.path.join(HERE, "format_v2")
APM_V1 = os.path.join(HERE, "app_metrics_v1")


def build_segments(desc: dict) -> dict[str, bytes]:
    """{relative path: bytes} of the golden directory described by records.json: version-1
    segments, or version-2 ones when the description names a ``stream_id`` (FORMAT.md §2)."""
    out: dict[str, bytes] = {}
    stream_crc = fmt.crc32c(desc["stream"].encode())
    sid = int(desc["stream_id"], 16) if "stream_id" in desc else None
    for seg in desc["segments"]:
        body = bytearray(fmt.encode_segment_header(seg["base"], seg["capacity"], seg["created_ns"],
                                                   stream_crc, sid))
        for seq, rec in enumerate(seg["records"]):
            flags = fmt.CM_REC_FLAG_ZSTD if rec["compressed"] else 0
            body += fmt.encode_record(bytes.fromhex(rec["stored_hex"]), rec["ts_ns"], seq, flags,
                                      stream_id=sid, base=seg["base"])
        assert len(body) <= seg["capacity"]
        body += bytes(seg["capacity"] - len(body))
        name = f"streams/{desc['stream']}/{seg['base']:020d}.seg"
        out[name] = bytes(body)
    out["cometmp.json"] = json_file({"format": "cometmp.dir", "version": 1})
    return out


def json_file(doc: dict) -> bytes:
    # as cometmp/client.py writes them: json.dump(indent=1, sort_keys=True) + newline
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _lock_line(hex_init: str) -> bytes:
    init = bytes.fromhex(hex_init)
    return init + bytes(fmt.CM_LOCK_LINE_BYTES - len(init))


def index_file(seg: dict, interval: int) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The .idx of a segment as the writer keeps it (index_note in native/shard.c): an
    entry for the first record, then for the first record at least ``interval`` bytes
    after the previous entry's record; the file has its fixed size, zeros past the table."""
    head = struct.pack("<IHHQI8x", fmt.CM_IDX_MAGIC, fmt.CM_IDX_VERSION, fmt.CM_IDX_HEADER_BYTES,
                       seg["base"], interval)
    body = bytearray(head + struct.pack("<I", fmt.crc32c(head)))
    entries: list[tuple[int, int, int]] = []
    off = fmt.CM_SEG_HEADER_BYTES
    for seq, rec in enumerate(seg["records"]):
        if not entries or off - entries[-1][1] >= interval:
            entries.append((seq, off, rec["ts_ns"]))
            body += struct.pack("<IIq", seq, off, rec["ts_ns"])   # rel(4) offset(4) ts_ns(8)
        off += fmt.CM_REC_HEADER_BYTES + len(rec["stored_hex"]) // 2
    size = fmt.CM_IDX_HEADER_BYTES + (seg["capacity"] // interval + 2) * fmt.CM_IDX_ENTRY_BYTES
    return bytes(body) + bytes(size - len(body)), entries


def segment_tail(seg: dict) -> int:
    return fmt.CM_SEG_HEADER_BYTES + sum(fmt.CM_REC_HEADER_BYTES + len(r["stored_hex"]) // 2
                                         for r in seg["records"])


def state_page(desc: dict, lay: dict, active_idx: list[tuple[int, int, int]]) -> bytes:
    """The state page a writer leaves after appending the golden records (FORMAT.md §4)."""
    st, abi = lay["state"], lay["abi"]
    segs = desc["segments"]
    active = segs[-1]
    records = [r for s in segs for r in s["records"]]
    page = bytearray(fmt.CM_STATE_BYTES)
    # magic(4) version(2) reserved(2) fingerprint(8) size(4) reserved(4) created_ns(8)
    struct.pack_into("=IH2xQI4xq", page, fmt.CM_STATE_OFF_MAGIC, fmt.CM_STATE_MAGIC,
                     fmt.CM_STATE_VERSION, fmt.state_fingerprint(abi["mutex_bytes"], abi["pointer_bytes"]),
                     fmt.CM_STATE_BYTES, st["created_ns"])
    boot = st["boot_id"].encode()
    assert len(boot) == fmt.CM_STATE_BOOT_ID_BYTES
    page[fmt.CM_STATE_OFF_BOOT_ID:fmt.CM_STATE_OFF_BOOT_ID + len(boot)] = boot
    page[fmt.CM_STATE_OFF_LOCK:fmt.CM_STATE_OFF_LOCK + fmt.CM_LOCK_LINE_BYTES] = _lock_line(st["lock_init_hex"])
    tail = segment_tail(active)
    # committed active_base tail reserve_end last_ts alloc_end idx_last_off
    struct.pack_into("=QQQQqQQ", page, fmt.CM_STATE_OFF_COMMITTED, active["base"] + len(active["records"]),
                     active["base"], tail, tail, records[-1]["ts_ns"], st["alloc_end"], active_idx[-1][1])
    # idx_count waiters first_entry notify_seq active_gen
    struct.pack_into("=IIQII", page, fmt.CM_STATE_OFF_IDX_COUNT, len(active_idx), 0, segs[0]["base"],
                     st["notify_seq"], st["active_gen"])
    counters = {"appends": len(records),
                "bytes": sum(len(r["stored_hex"]) // 2 for r in records),
                "rotations": len(segs) - 1,
                "compressed": sum(1 for r in records if r["compressed"])}
    for name, value in counters.items():
        struct.pack_into("=Q", page, fmt.CM_STATE_OFF_COUNTERS + 8 * fmt.COUNTERS[name], value)
    return bytes(page)


def offsets_fingerprint(abi: dict) -> int:
    return fmt.fingerprint(ofs.CM_OFS_VERSION, ofs.CM_OFS_OFF_LOCK, abi["mutex_bytes"],
                           ofs.CM_OFS_GROUP_BYTES, ofs.CM_OFS_GROUP_CAP, ofs.CM_OFS_SLOT_BYTES,
                           ofs.CM_OFS_SLOT_CAP, ofs.CM_OFS_S_NEXT, abi["pointer_bytes"])


def members_fingerprint() -> int:
    return fmt.fingerprint(mmb.CM_MMB_VERSION, mmb.CM_MMB_HEADER_BYTES, mmb.CM_MMB_GROUP_CAP,
                           mmb.CM_MMB_MEMBER_CAP, mmb.CM_MMB_MEMBER_BYTES, mmb.CM_MMB_CLAIM_CAP,
                           mmb.CM_MMB_CLAIM_BYTES, mmb.CM_MMB_M_PATTERNS, mmb.CM_MMB_OFF_LOCK)


_MMB_STATES = {"live": mmb.CM_MMB_LIVE, "free": mmb.CM_MMB_FREE}


def members_chunks(lay: dict) -> dict[int, bytes]:
    """{file offset: bytes} of the members file's written parts (FORMAT.md §7.1)."""
    m = lay["members"]
    header = bytearray(mmb.CM_MMB_HEADER_BYTES)
    # magic(4) version(2) header_bytes(2) fingerprint(8) file_bytes(8) group_cap(4)
    # member_cap(4) claim_cap(4) reserved(4) next_member_id(8) created_ns(8) changes(8)
    struct.pack_into("=IHHQQIII4xQqQ", header, 0, mmb.CM_MMB_MAGIC, mmb.CM_MMB_VERSION,
                     mmb.CM_MMB_HEADER_BYTES, members_fingerprint(), mmb.CM_MMB_FILE_BYTES,
                     mmb.CM_MMB_GROUP_CAP, mmb.CM_MMB_MEMBER_CAP, mmb.CM_MMB_CLAIM_CAP,
                     m["next_member_id"], m["created_ns"], m["changes"])
    chunks = {0: bytes(header)}
    for r in m["records"]:
        pats = "\n".join(r["patterns"]).encode()
        rec = bytearray(mmb.CM_MMB_MEMBER_BYTES)
        # state(4) pid(4) group_id(8) member_id(8) joined_ns(8) seen_ns(8) patterns_len(4)
        # reserved(20) patterns(192)
        struct.pack_into("=IIQQqqI20x", rec, 0, _MMB_STATES[r["state"]], r["pid"], r["group_id"],
                         r["member_id"], r["joined_ns"], r["seen_ns"], len(pats))
        rec[mmb.CM_MMB_M_PATTERNS:mmb.CM_MMB_M_PATTERNS + len(pats)] = pats
        off = (mmb.CM_MMB_MEMBERS_OFF + r["group_index"] * mmb.CM_MMB_TABLE_BYTES
               + r["k"] * mmb.CM_MMB_MEMBER_BYTES)
        chunks[off] = bytes(rec)
    for c in m["claims"]:
        chunks[mmb.CM_MMB_CLAIMS_OFF + c["slot"] * mmb.CM_MMB_CLAIM_BYTES] = struct.pack(
            "=QQQq", c["group_id"], c["owner"], c["epoch"], c["claimed_ns"])
    return chunks


def registry_fingerprint(abi: dict) -> int:
    return fmt.fingerprint(reg.CM_REG_VERSION, abi["mutex_bytes"], reg.CM_REG_OFF_EPOCH,
                           reg.CM_REG_OFF_MASTERS, reg.CM_REG_OFF_ENTRIES, reg.CM_REG_ENTRY_BYTES,
                           reg.CM_REGE_OFF_KEY, reg.CM_REG_MAX_ENTRIES, abi["pointer_bytes"])


_OFS_STATES = {"live": ofs.CM_OFS_LIVE, "deleting": ofs.CM_OFS_DELETING}


def offsets_chunks(lay: dict) -> dict[int, bytes]:
    """{file offset: bytes} of the offsets file's written parts (the rest is holes)."""
    o, abi = lay["offsets"], lay["abi"]
    header = bytearray(ofs.CM_OFS_HEADER_BYTES)
    ofs.HEADER.pack_into(header, 0, ofs.CM_OFS_MAGIC, ofs.CM_OFS_VERSION, ofs.CM_OFS_HEADER_BYTES,
                         offsets_fingerprint(abi), ofs.CM_OFS_FILE_BYTES, ofs.CM_OFS_GROUP_CAP,
                         ofs.CM_OFS_SLOT_CAP, len(o["groups"]), len(o["slots"]),
                         len(o["groups"]) + 1, o["created_ns"], 0)
    header[ofs.CM_OFS_OFF_LOCK:ofs.CM_OFS_OFF_LOCK + fmt.CM_LOCK_LINE_BYTES] = _lock_line(o["lock_init_hex"])
    chunks = {0: bytes(header)}
    index = {}
    for i, g in enumerate(o["groups"]):
        name = g["name"].encode()
        pats = "\n".join(g["patterns"]).encode()
        rec = bytearray(ofs.CM_OFS_GROUP_BYTES)
        # state(4) name_len(4) id(8) created_ns(8) active_ns(8) patterns_len(4)
        struct.pack_into("=IIQqqI", rec, ofs.CM_OFS_G_STATE, _OFS_STATES[g.get("state", "live")],
                         len(name), i + 1, g["created_ns"], g["active_ns"], len(pats))
        rec[ofs.CM_OFS_G_NAME:ofs.CM_OFS_G_NAME + len(name)] = name
        rec[ofs.CM_OFS_G_PATTERNS:ofs.CM_OFS_G_PATTERNS + len(pats)] = pats
        chunks[ofs.CM_OFS_GROUPS_OFF + i * ofs.CM_OFS_GROUP_BYTES] = bytes(rec)
        index[g["name"]] = i
    for i, sl in enumerate(o["slots"]):
        gi = index[sl["group"]]
        stream = sl["stream"].encode()
        rec = bytearray(ofs.CM_OFS_SLOT_BYTES)
        # state(4) group(4) group_id(8) next(8) resets(8) acked_ns(8) dropped(8) stream_len(4)
        struct.pack_into("=IIQQQqQI", rec, ofs.CM_OFS_S_STATE, ofs.CM_OFS_LIVE, gi, gi + 1,
                         ofs.CM_OFS_UNSET if sl["next"] is None else sl["next"], sl["resets"],
                         sl["acked_ns"], sl["dropped"], len(stream))
        rec[ofs.CM_OFS_S_STREAM:ofs.CM_OFS_S_STREAM + len(stream)] = stream
        chunks[ofs.CM_OFS_SLOTS_OFF + i * ofs.CM_OFS_SLOT_BYTES] = bytes(rec)
    return chunks


def sparse_description(chunks: dict[int, bytes], size: int) -> dict:
    """The non-zero byte runs of a sparse file: {"file_bytes": n, "runs": [[off, hex], ...]}."""
    runs = []
    for base, data in sorted(chunks.items()):
        i = 0
        while i < len(data):
            if data[i] == 0:
                i += 1
                continue
            j = i
            while j < len(data) and any(data[j:j + 8]):   # runs split at 8 zero bytes
                j += 1
            runs.append([base + i, data[i:j].hex()])
            i = j
    return {"format": "cometmp.sparse-image", "file_bytes": size, "runs": runs}


def materialize_sparse(desc: dict, path: str) -> None:
    """Write the file a sparse description stands for (ftruncate, then the runs)."""
    with open(path, "wb") as f:
        f.truncate(desc["file_bytes"])
        for off, hexdata in desc["runs"]:
            f.seek(off)
            f.write(bytes.fromhex(hexdata))


_REG_STATES = {"free": reg.CM_REG_FREE, "live": reg.CM_REG_LIVE, "vacant": reg.CM_REG_VACANT}


def registry_image(lay: dict) -> bytes:
    """The registry's shared memory as cm_registry_init and then the table left it (§8)."""
    r, abi = lay["registry"], lay["abi"]
    img = bytearray(reg.CM_REG_BYTES)
    reg.HEADER.pack_into(img, 0, reg.CM_REG_MAGIC, reg.CM_REG_VERSION, reg.CM_REG_HEADER_BYTES,
                         registry_fingerprint(abi), reg.CM_REG_BYTES, reg.CM_REG_MAX_ENTRIES,
                         r["created_ns"], 0, r["process_count"], r["epoch"], r["owner_uid"],
                         r["owner_gid"])
    img[reg.CM_REG_OFF_LOCK:reg.CM_REG_OFF_LOCK + fmt.CM_LOCK_LINE_BYTES] = _lock_line(r["lock_init_hex"])
    for i, m in enumerate(r["masters"]):
        reg.MASTER.pack_into(img, reg.CM_REG_OFF_MASTERS + i * reg.CM_REG_MASTER_BYTES,
                             m["pid"], m["start_ticks"])
    entries = r["entries"] + [{}] * (reg.CM_REG_MAX_ENTRIES - len(r["entries"]))
    for i, e in enumerate(entries):
        reg.ENTRY.pack_into(img, reg.CM_REG_OFF_ENTRIES + i * reg.CM_REG_ENTRY_BYTES,
                            e.get("pid", 0), _REG_STATES[e.get("state", "free")],
                            e.get("start_ticks", 0), e.get("epoch", 0), e.get("heartbeat_ns", 0),
                            e.get("vacated_ns", 0), e.get("key", -1), e.get("last_pid", 0), 0)
    return bytes(img)


def build_layouts_v1(desc: dict, lay: dict) -> dict[str, bytes]:
    """{relative path: bytes} of every golden file besides the segments and the marker."""
    out: dict[str, bytes] = {}
    interval = lay["index"]["interval"]
    stream_dir = f"streams/{desc['stream']}"
    idx_entries: list = []
    for seg in desc["segments"]:
        data, idx_entries = index_file(seg, interval)
        out[f"{stream_dir}/{seg['base']:020d}.idx"] = data
    out[f"{stream_dir}/state"] = state_page(desc, lay, idx_entries)
    sparse = sparse_description(offsets_chunks(lay), ofs.CM_OFS_FILE_BYTES)
    out["consumers/offsets.sparse.json"] = json_file(sparse)
    out["consumers/members.sparse.json"] = json_file(
        sparse_description(members_chunks(lay), mmb.CM_MMB_FILE_BYTES))
    out["shm/registry"] = registry_image(lay)
    out["registry.key"] = json_file({"format": "cometmp.registry_key",
                                     "key": lay["registry_key"]["key_hex"], "version": 1})
    for fam in lay["families"]:
        out[f"families/{fam['prefix']}.json"] = json_file(
            {"format": "cometmp.family", "prefix": fam["prefix"], "shards": fam["shards"], "version": 1})
    return out


def build_all_v1() -> dict[str, bytes]:
    with open(os.path.join(V1, "records.json")) as f:
        desc = json.load(f)
    with open(os.path.join(V1, "layouts.json")) as f:
        lay = json.load(f)
    return {**build_segments(desc), **build_layouts_v1(desc, lay)}


def build_all_v2() -> dict[str, bytes]:
    """Version 2 changed only the segment (FORMAT.md §5): ``format_v2`` holds a complete
    stream directory - v2 segments, their indexes and the state page, built from
    ``format_v2/records.json`` with the unchanged layouts of ``format_v1/layouts.json`` -
    and the marker. The other file kinds are unchanged; their golden files are v1's."""
    with open(os.path.join(V2, "records.json")) as f:
        desc = json.load(f)
    with open(os.path.join(V1, "layouts.json")) as f:
        lay = json.load(f)
    layouts = build_layouts_v1(desc, lay)
    stream_dir = f"streams/{desc['stream']}/"
    return {**build_segments(desc), **{k: v for k, v in layouts.items() if k.startswith(stream_dir)}}


def app_metrics_chunks(desc: dict) -> dict[int, bytes]:
    """{offset: bytes} of the metrics table described by ``desc`` (FORMAT.md §10)."""
    chunks: dict[int, bytes] = {}
    text = bytearray()
    keys = bytearray()
    for k in desc["keys"]:
        raw = json.dumps(k["key"], sort_keys=True).encode()
        keys += apm.KEY.pack(len(text), len(raw), apm.KINDS[k["kind"]], apm.GAUGE_MODES.index(k["mode"]))
        text += raw
        row = len(keys) // apm.CM_APM_KEY_BYTES - 1
        for col, (value, stamp) in k["cells"].items():
            chunks[apm.Table.cell(row, int(col))] = apm.CELL.pack(value, stamp, 1)
    chunks[0] = apm.HEADER.pack(apm.CM_APM_MAGIC, apm.CM_APM_VERSION, apm.CM_APM_HEADER_BYTES,
                                apm.CM_APM_FILE_BYTES, apm.CM_APM_KEY_CAP, apm.CM_APM_COLUMNS,
                                apm.CM_APM_TEXT_CAP, len(desc["keys"]), len(text), 0,
                                desc["created_ns"])
    for b in desc["binders"]:
        chunks[apm.CM_APM_BINDERS_OFF + b["column"] * apm.CM_APM_BINDER_BYTES] = apm.BINDER.pack(
            b["pid"], b["start_ticks"])
    chunks[apm.CM_APM_KEYS_OFF] = bytes(keys)
    chunks[apm.CM_APM_TEXT_OFF] = bytes(text)
    return chunks


def build_app_metrics_v1() -> dict[str, bytes]:
    with open(os.path.join(APM_V1, "table.json")) as f:
        desc = json.load(f)
    return {"metrics/app.sparse.json": json_file(
        sparse_description(app_metrics_chunks(desc), apm.CM_APM_FILE_BYTES))}


def main() -> int:
    files = {os.path.join(V1, rel): data for rel, data in build_all_v1().items()}
    files.update({os.path.join(V2, rel): data for rel, data in build_all_v2().items()})
    files.update({os.path.join(APM_V1, rel): data for rel, data in build_app_metrics_v1().items()})
    check = "--check" in sys.argv
    bad = 0
    for path, data in files.items():
        if check:
            if not os.path.exists(path):
                print(f"{path} is missing", file=sys.stderr)
                bad = 1
                continue
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
