"""Offline checks and repair of a data directory: what ``cometmp verify`` and ``cometmp
recover`` do. Runs in any process; never prints (the CLI renders the reports).

``verify_directory()`` only reads: it maps files read-only and never opens a writer, so it
is safe next to live writers (records at or above a stream's published committed count are
not judged, I2). What it checks, per stream directory (docs/FORMAT.md):

* segment headers: magic, version, header checksum, base equal to the file name, capacity
  equal to the file size (I9), stream checksum equal to the stream's name;
* every record of every segment, with the one walker (``Segment.walk`` over
  cm_walk_next, native/walker.c), whose damage findings are structured (cause, offset,
  first entry, entries lost) and become ``Problem``s; with ``oracle=True`` also with the
  tests' independent pure-Python reader (tests/oracle.py, loaded by ``load_oracle()``):
  the two must agree record for record and finding for finding;
* entry numbering: each sealed segment holds exactly the entries up to the next
  segment's base (I1), and the active segment holds every published entry (I2);
* index files: header, base, and every entry points at a valid record of its segment (I8);
* the state page: size, magic, version, and that its committed count and tail match the
  active segment;
* leftover ``*.tmp`` files (I7).

Findings are ``Problem``s. Severity ``error`` means data is damaged or inconsistent (the
CLI exits 1); ``warning`` means derived or transient data that ``recover_directory()`` or
the next writer open repairs (a missing or damaged index, a missing state page, an
unpublished torn tail, a leftover temp file).

``recover_directory()`` opens every stream for writing, so the C core validates and repairs
its tail (cm_shard_open -> recover_locked), then rebuilds every missing or damaged index of
a sealed segment, deletes leftover temp files of dead processes, and verifies again.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

from .. import paths
from ..errors import DataDirectoryNotFound, FormatError
from ..format import (
    CM_IDX_ENTRY_BYTES,
    CM_IDX_HEADER_BYTES,
    CM_SEG_HEADER_BYTES,
    CM_SEG_MAGIC,
    CM_SEG_OFF_BASE,
    CM_SEG_OFF_CAPACITY,
    CM_SEG_OFF_MAGIC,
    CM_SEG_OFF_STREAM_CRC,
    CM_SEG_OFF_STREAM_ID,
    CM_SEG_OFF_VERSION,
    CM_SEG_VERSION,
    CM_SEG_VERSION_V1,
    CM_STATE_BYTES,
    CM_STATE_MAGIC,
    CM_STATE_OFF_ACTIVE_BASE,
    CM_STATE_OFF_COMMITTED,
    CM_STATE_OFF_FINGERPRINT,
    CM_STATE_OFF_FIRST_ENTRY,
    CM_STATE_OFF_TAIL,
    CM_STATE_OFF_VERSION,
    CM_STATE_VERSION,
    parse_index,
    parse_segment_header,
    segment_header_ok,
)

__all__ = [
    "DirectoryReport",
    "NotADataDirectory",
    "OracleUnavailable",
    "Problem",
    "RecoveryReport",
    "StreamReport",
    "check_data_directory",
    "load_oracle",
    "recover_directory",
    "verify_directory",
]

ERROR = "error"
WARNING = "warning"

#: called as progress(done, total, what) while a long check runs
Progress = Callable[[int, int, str], None]


class NotADataDirectory(DataDirectoryNotFound):
    """The path does not exist or is not a cometmp data directory (CLI exit code 3)."""


class OracleUnavailable(Exception):
    """``verify --oracle`` cannot find the tests' oracle (tests/oracle.py; CLI exit 2)."""


#: environment variable naming the oracle's file when the package is not in a source tree
ORACLE_ENV = "COMETMP_ORACLE"


@functools.lru_cache(maxsize=None)
def load_oracle():
    """The independent pure-Python reader used by ``verify --oracle``: the test suite's
    oracle (tests/oracle.py), which is deliberately not part of the package (the package
    reads records through its one walker only). Found at ``$COMETMP_ORACLE``, or next to
    the package in a source tree (``<checkout>/tests/oracle.py``)."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get(ORACLE_ENV) or os.path.join(package_root, "tests", "oracle.py")
    if not os.path.isfile(path):
        raise OracleUnavailable(
            f"the pure-Python oracle is not installed with the package: run from a source checkout "
            f"(tests/oracle.py) or set {ORACLE_ENV} to its path (looked for {path})")
    spec = importlib.util.spec_from_file_location("cometmp_tests_oracle", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


@dataclass
class Problem:
    severity: str  # "error" | "warning"
    kind: str  # short machine-readable tag, e.g. "crc", "index", "torn-tail"
    path: str  # the file concerned
    offset: int | None  # byte offset in that file, when it applies
    message: str
    # structured damage findings (kind "corrupt-record" / "missing-entries"), else None
    cause: str | None = None  # rule the frame failed: length, flags, crc, sequence, end-of-data
    first_entry: int | None = None  # first entry the damage covers
    entries_lost: int | None = None

    def __str__(self) -> str:
        where = self.path if self.offset is None else f"{self.path}: offset {self.offset}"
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class StreamReport:
    name: str
    segments: int = 0
    records: int = 0
    corrupt_records: int = 0
    first_entry: int | None = None
    committed: int | None = None
    problems: list[Problem] = field(default_factory=list)

    def add(self, severity: str, kind: str, path: str, offset: int | None, message: str,
            **finding) -> None:
        self.problems.append(Problem(severity, kind, path, offset, message, **finding))


@dataclass
class DirectoryReport:
    path: str
    oracle: bool
    streams: dict[str, StreamReport] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # directory-level findings

    def all_problems(self) -> list[Problem]:
        out = list(self.problems)
        for s in self.streams.values():
            out.extend(s.problems)
        return out

    @property
    def errors(self) -> int:
        return sum(p.severity == ERROR for p in self.all_problems())

    @property
    def warnings(self) -> int:
        return sum(p.severity == WARNING for p in self.all_problems())

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "oracle": self.oracle,
            "errors": self.errors,
            "warnings": self.warnings,
            "records": sum(s.records for s in self.streams.values()),
            "corrupt_records": sum(s.corrupt_records for s in self.streams.values()),
            "segments": sum(s.segments for s in self.streams.values()),
            "problems": [asdict(p) for p in self.problems],
            "streams": {n: asdict(s) for n, s in self.streams.items()},
        }


@dataclass
class RecoveryReport:
    path: str
    actions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    opened: dict[str, dict] = field(default_factory=dict)  # stream -> cm_open_report
    indexes_rebuilt: list[str] = field(default_factory=list)
    temp_files_removed: list[str] = field(default_factory=list)
    verify: DirectoryReport | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": not self.failures and (self.verify is None or self.verify.ok),
            "actions": self.actions,
            "failures": self.failures,
            "streams": self.opened,
            "indexes_rebuilt": self.indexes_rebuilt,
            "temp_files_removed": self.temp_files_removed,
            "verify": self.verify.to_dict() if self.verify is not None else None,
        }


# ---------------------------------------------------------------------------- directory


def check_data_directory(root: str) -> None:
    """Raise NotADataDirectory unless ``root`` holds a cometmp directory marker.

    An unreadable marker (EIO, EACCES) is a StorageError naming it, not this: the
    directory may well be one (one reader of the marker: client.read_directory_marker)."""
    from ..client import read_directory_marker

    try:
        read_directory_marker(root)
    except DataDirectoryNotFound as e:
        raise NotADataDirectory(str(e), e.errno, e.filename) from None
    except FormatError as e:
        raise NotADataDirectory(f"not a cometmp data directory: {e}") from None


def stream_names(root: str) -> list[str]:
    try:
        names = os.listdir(paths.streams_dir(root))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if paths.is_real_dir(paths.stream_dir(root, n)))   # I30


def _check_families(root: str, report: DirectoryReport) -> None:
    from ..client import FAMILY_FORMAT, FORMAT_VERSION

    fam_dir = os.path.join(root, paths.FAMILIES)
    try:
        names = sorted(os.listdir(fam_dir))
    except FileNotFoundError:
        return
    for fn in names:
        p = os.path.join(fam_dir, fn)
        if fn.endswith(paths.TMP_SUFFIX):
            report.problems.append(Problem(WARNING, "temp-file", p, None,
                                           "leftover temporary file of an interrupted write (I7)"))
            continue
        if not fn.endswith(".json"):
            continue
        try:
            doc = json.loads(paths.read_file(p, paths.IN_SUBDIR))   # I30
            ok = (isinstance(doc, dict) and doc.get("format") == FAMILY_FORMAT
                  and doc.get("version") == FORMAT_VERSION and doc.get("prefix") == fn[:-5]
                  and isinstance(doc.get("shards"), int) and doc["shards"] >= 1)
        except (OSError, ValueError) as e:
            report.problems.append(Problem(ERROR, "family", p, None, f"unreadable family file: {e}"))
            continue
        if not ok:
            report.problems.append(Problem(ERROR, "family", p, None,
                                           "not a valid family file (format, version, prefix, shards)"))


# ------------------------------------------------------------------------- state page


class _State:
    """The fields of a state page verify cares about, or None where the page is unusable."""

    def __init__(self, directory: str, rep: StreamReport):
        self.path = os.path.join(directory, paths.STATE)
        self.valid = False
        self.committed = self.active_base = self.tail = self.first_entry = 0
        try:
            page = paths.read_file(self.path, paths.IN_STREAM, CM_STATE_BYTES + 1)   # I30
        except FileNotFoundError:
            rep.add(WARNING, "state", self.path, None,
                    "state page missing (rebuilt from the segments at the next writer open)")
            return
        if len(page) != CM_STATE_BYTES:
            rep.add(WARNING, "state", self.path, None,
                    f"state page is {len(page)} bytes, not {CM_STATE_BYTES} (rebuilt at the next writer open)")
            return
        magic = struct.unpack_from("=I", page, 0)[0]
        version = struct.unpack_from("=H", page, CM_STATE_OFF_VERSION)[0]
        if magic != CM_STATE_MAGIC or version != CM_STATE_VERSION:
            rep.add(WARNING, "state", self.path, 0,
                    f"state page magic 0x{magic:08x} version {version}; expected 0x{CM_STATE_MAGIC:08x} "
                    f"version {CM_STATE_VERSION} (rebuilt at the next writer open)")
            return
        self.fingerprint = struct.unpack_from("=Q", page, CM_STATE_OFF_FINGERPRINT)[0]
        self.first_entry = struct.unpack_from("=Q", page, CM_STATE_OFF_FIRST_ENTRY)[0]
        self._snapshot(page)
        self.valid = True

    def _snapshot(self, page: bytes) -> None:
        """(active_base, committed, tail) as of one moment, next to a live writer: read
        active_base, then committed and tail, then active_base again; equal bases mean no
        rotation in between (active_base never decreases), so committed lies in that
        segment (I2: every entry below it is complete)."""
        q = struct.Struct("=Q")
        try:
            fd = paths.open_nofollow(self.path, os.O_RDONLY, paths.IN_STREAM)   # I30
        except OSError:
            fd = -1
        try:
            for _ in range(1000):
                if fd < 0:
                    break
                a1 = q.unpack(os.pread(fd, 8, CM_STATE_OFF_ACTIVE_BASE))[0]
                committed = q.unpack(os.pread(fd, 8, CM_STATE_OFF_COMMITTED))[0]
                tail = q.unpack(os.pread(fd, 8, CM_STATE_OFF_TAIL))[0]
                a2 = q.unpack(os.pread(fd, 8, CM_STATE_OFF_ACTIVE_BASE))[0]
                if a1 == a2 and committed >= a1:
                    self.active_base, self.committed, self.tail = a1, committed, tail
                    return
            self.active_base = q.unpack_from(page, CM_STATE_OFF_ACTIVE_BASE)[0]
            self.committed = q.unpack_from(page, CM_STATE_OFF_COMMITTED)[0]
            self.tail = q.unpack_from(page, CM_STATE_OFF_TAIL)[0]
        finally:
            if fd >= 0:
                os.close(fd)


# ----------------------------------------------------------------------------- segments


def _read_header(seg_path: str, mm) -> tuple[int, int, int, int, int]:
    magic = struct.unpack_from("<I", mm, CM_SEG_OFF_MAGIC)[0]
    version = struct.unpack_from("<H", mm, CM_SEG_OFF_VERSION)[0]
    base = struct.unpack_from("<Q", mm, CM_SEG_OFF_BASE)[0]
    cap = struct.unpack_from("<Q", mm, CM_SEG_OFF_CAPACITY)[0]
    scrc = struct.unpack_from("<I", mm, CM_SEG_OFF_STREAM_CRC)[0]
    return magic, version, base, cap, scrc


def _walk_c(seg, stop_seq: int | None) -> tuple[list, list, int, int]:
    """Walk a segment with the one walker. Returns (records, damages, end_offset, next_seq):
    records as (offset, seq, ts); damages as ``segment.Damage`` findings, except a torn tail,
    which ends the walk like an end of data. ``end_offset`` is where the walk ended (the
    torn tail, the end of data, or the limit), -1 when it ended in damage that ran to the
    limit ``stop_seq``; ``next_seq`` is the first sequence after what was walked."""
    from ..segment import Damage

    records: list[tuple[int, int, int]] = []
    damages: list = []
    off, seq = CM_SEG_HEADER_BYTES, 0
    for item in seg.walk(stop_seq=stop_seq):
        if isinstance(item, Damage):
            if item.end == "torn":
                return records, damages, item.offset, item.first_seq
            damages.append(item)
            if item.end == "limit":
                return records, damages, -1, item.first_seq + item.lost
            off, seq = item.resume, item.first_seq + item.lost
            continue
        records.append((item.offset, item.seq, item.ts_ns))
        off = item.offset + item.frame_bytes
        seq = item.seq + 1
    return records, damages, off, seq


def _check_stream_identity(directory: str, bases: list[int], rep: StreamReport) -> None:
    """FORMAT.md §2.1: every version-2 segment of a stream carries the stream's id (that
    of its newest version-2 segment), and no version-1 segment follows a version-2 one
    (a stream is upgraded forwards only). A disagreeing segment is one copied in from
    another stream: its frames are bound to that stream's id (I17)."""
    headers = []
    for base in bases:
        path = os.path.join(directory, paths.segment_name(base))
        try:
            with open(path, "rb") as f:
                buf = f.read(CM_SEG_HEADER_BYTES)
        except OSError:
            continue
        if segment_header_ok(buf):
            headers.append((base, path, parse_segment_header(buf)))
    v2 = [(b, p, h) for b, p, h in headers if h.version == CM_SEG_VERSION]
    if not v2:
        return
    sid = v2[-1][2].stream_id
    for b, p, h in v2:
        if h.stream_id != sid:
            rep.add(ERROR, "segment-header", p, CM_SEG_OFF_STREAM_ID,
                    f"stream id 0x{h.stream_id:016x} differs from the stream's 0x{sid:016x} (its "
                    "newest version-2 segment): a segment of another stream; its records are not this "
                    "stream's entries (I17)")
    first_v2 = v2[0][0]
    for b, p, h in headers:
        if h.version == CM_SEG_VERSION_V1 and b > first_v2:
            rep.add(ERROR, "segment-header", p, CM_SEG_OFF_VERSION,
                    f"a version-1 segment after the version-2 segment {paths.segment_name(first_v2)} "
                    "(streams are upgraded forwards only: a segment copied in?)")


def _entries(first: int, count: int) -> str:
    return f"entry {first}" if count == 1 else f"entries {first}..{first + count - 1}"


def _check_segment(root: str, name: str, directory: str, base: int, next_base: int | None,
                   state: _State, oracle: bool, rep: StreamReport) -> None:
    from ..segment import Segment
    from ..shard import stream_crc

    seg_path = os.path.join(directory, paths.segment_name(base))
    try:
        seg = Segment.open(seg_path, base)
    except FileNotFoundError:
        return  # deleted by retention since the directory was listed
    except OSError as e:
        rep.add(ERROR, "segment", seg_path, None, f"cannot open: {e}")
        return
    try:
        if seg.size < CM_SEG_HEADER_BYTES:
            rep.add(ERROR, "segment-header", seg_path, 0,
                    f"{seg.size} bytes, shorter than the {CM_SEG_HEADER_BYTES}-byte header")
            return
        magic, version, hbase, cap, scrc = _read_header(seg_path, seg.mm)
        if not seg.header_ok:
            if magic != CM_SEG_MAGIC:
                msg = f"bad magic 0x{magic:08x} (expected 0x{CM_SEG_MAGIC:08x})"
            elif version not in (CM_SEG_VERSION_V1, CM_SEG_VERSION):
                msg = f"format version {version}, this build reads {CM_SEG_VERSION_V1} and {CM_SEG_VERSION}"
            elif version == CM_SEG_VERSION and seg.stream_id == 0:
                msg = "version 2 header without a stream id"
            else:
                msg = "header checksum mismatch"
            rep.add(ERROR, "segment-header", seg_path, 0, msg)
        else:
            if hbase != base:
                rep.add(ERROR, "segment-header", seg_path, CM_SEG_OFF_BASE,
                        f"header base {hbase} does not match the file name (I1)")
            if cap != seg.size:
                rep.add(ERROR, "segment-header", seg_path, CM_SEG_OFF_CAPACITY,
                        f"header capacity {cap} but the file has {seg.size} bytes (I9)")
            if scrc != stream_crc(name):
                rep.add(ERROR, "segment-header", seg_path, CM_SEG_OFF_STREAM_CRC,
                        f"stream checksum 0x{scrc:08x} is not that of {name!r} (segment of another stream?)")

        active = next_base is None
        stop = None
        if active and state.valid and state.committed >= base:
            stop = state.committed - base   # I2: judge only what was published
        elif not active:
            stop = max(0, next_base - base)  # sealed: the successor's base proves the count (I1)
        records, damages, end, nseq = _walk_c(seg, stop)
        rep.records += len(records)
        for d in damages:
            rep.corrupt_records += d.lost
            finding = {"cause": d.cause, "first_entry": base + d.first_seq, "entries_lost": d.lost}
            lost = _entries(base + d.first_seq, d.lost) + " lost" if d.lost else "no entry lost"
            if d.end == "resync":
                rep.add(ERROR, "corrupt-record", seg_path, d.offset, f"{d.reason}; {lost}", **finding)
            elif active:
                rep.add(ERROR, "missing-entries", seg_path, d.offset,
                        f"{_entries(base + d.first_seq, d.lost)} are published (state committed "
                        f"{state.committed}) but not readable (I2)"
                        + ("" if d.cause == "end-of-data" else f": {d.reason}"), **finding)
            elif d.cause == "end-of-data":
                rep.add(ERROR, "missing-entries", seg_path, d.offset,
                        f"{_entries(base + d.first_seq, d.lost)} missing before the next segment (I1)",
                        **finding)
            else:
                # damage at the end of a sealed segment: the next segment's base proves the
                # records existed, so this is corruption, not a torn tail
                rep.add(ERROR, "corrupt-record", seg_path, d.offset, f"{d.reason}; {lost}", **finding)

        # what follows the last valid record
        tail_item = seg.record_at(end, -1) if end >= 0 else None
        if end < 0:
            pass  # ended in damage that ran to the limit: reported above
        elif active:
            if stop is not None:
                if isinstance(tail_item, str):  # (a valid record there was published since)
                    rep.add(WARNING, "torn-tail", seg_path, end,
                            "invalid bytes after the published tail (a write in progress, or a torn tail "
                            "that the next writer open zeroes, I4)")
                if state.active_base != base:
                    rep.add(WARNING, "state", state.path, CM_STATE_OFF_ACTIVE_BASE,
                            f"active_base {state.active_base} but the newest segment is {base} "
                            "(repaired at the next writer open)")
                elif nseq == stop and state.tail != end:
                    rep.add(WARNING, "state", state.path, CM_STATE_OFF_TAIL,
                            f"tail {state.tail} but the published records end at {end}")
            else:
                rep.committed = base + nseq
                if isinstance(tail_item, str):
                    rep.add(WARNING, "torn-tail", seg_path, end,
                            f"torn tail ({tail_item}); the next writer open zeroes it")
        else:
            if isinstance(tail_item, str):
                rep.add(WARNING, "garbage", seg_path, end,
                        f"non-zero bytes after the last record of a sealed segment ({tail_item}); no entry lost")
            elif tail_item is not None:
                rep.add(ERROR, "overlap", seg_path, end,
                        f"a record with sequence {tail_item.seq} after the last one, past the next segment's base (I1)")

        if oracle:
            _check_oracle(seg, seg_path, stop, records, damages, end, rep)

        walked = ({o: (q, t) for o, q, t in records}, {d.offset: d.first_seq for d in damages})
        if end >= 0 and isinstance(tail_item, str):
            walked[1][end] = nseq  # an index entry may point at the damaged last record
        _check_index(directory, base, seg, stop, rep, walked)
    finally:
        seg.close()


def _check_oracle(seg, seg_path: str, stop: int | None, records: list, damages: list, end: int,
                  rep: StreamReport) -> None:
    """Walk the segment again with the independent pure-Python reader (the tests' oracle,
    tests/oracle.py) under the same limits; records and findings must agree."""
    oracle = load_oracle()
    buf = memoryview(seg.mm)
    o_records: list[tuple[int, int, int]] = []
    o_damages: list[tuple[int, int, int, str]] = []
    try:
        walk = oracle.walk_segment(buf, stop=stop, published=stop or 0, base=seg.base)
        for item in walk:
            if isinstance(item, oracle.Damage):
                if not item.torn_tail:
                    o_damages.append((item.offset, item.first_seq, item.lost, item.end))
            else:
                o_records.append((item.offset, item.seq, item.ts_ns))
    finally:
        buf.release()
    if o_records != records:
        diff = next((i for i, (a, b) in enumerate(zip(o_records, records)) if a != b),
                    min(len(o_records), len(records)))
        where = (o_records[diff][0] if diff < len(o_records) else
                 records[diff][0] if diff < len(records) else end)
        rep.add(ERROR, "oracle", seg_path, where,
                f"the C core and the Python oracle disagree: {len(records)} vs {len(o_records)} valid records, "
                f"first difference at record {diff}")
        return
    c_damages = [(d.offset, d.first_seq, d.lost, d.end) for d in damages]
    if o_damages != c_damages:
        rep.add(ERROR, "oracle", seg_path, None,
                f"the C core and the Python oracle disagree on damaged stretches (offset, seq, lost, end): "
                f"{c_damages} vs {o_damages}")


def _check_index(directory: str, base: int, seg, stop: int | None, rep: StreamReport,
                 walked: tuple[dict, dict] | None = None) -> None:
    """I8: the index is derived data; a bad one is a warning that `recover` repairs.

    ``walked``: ({offset: (seq, ts)} of the valid records, {offset: first_seq} of damaged
    stretches) from a walk of the segment; without it each entry is checked directly."""
    from ..segment import RecordRef

    idx_path = os.path.join(directory, paths.index_name(base))
    try:
        data = paths.read_file(idx_path, paths.IN_STREAM)   # I30
    except FileNotFoundError:
        rep.add(WARNING, "index", idx_path, None, "index missing (rebuilt from the segment, I8)")
        return
    parsed = parse_index(data)
    if parsed is None:
        rep.add(WARNING, "index", idx_path, 0, "index header invalid (rebuilt from the segment, I8)")
        return
    ibase, interval, entries = parsed
    if ibase != base:
        rep.add(WARNING, "index", idx_path, 8, f"index header base {ibase} does not match the file name")
        return
    if interval < 64:
        rep.add(WARNING, "index", idx_path, 16, f"index interval {interval} is below 64")
        return
    for i, (rel, off, ts) in enumerate(entries):
        if stop is not None and rel >= stop:
            break  # written by a writer whose record is not published yet
        pos = CM_IDX_HEADER_BYTES + i * CM_IDX_ENTRY_BYTES
        if walked is not None:
            records, damaged = walked
            if records.get(off) == (rel, ts) or damaged.get(off) == rel:
                continue  # points at the record (a damaged record is reported as such)
            why = "no such record" if off not in records else "sequence or timestamp differs"
        else:
            r = seg.record_at(off, rel)
            if isinstance(r, RecordRef) and r.ts_ns == ts:
                continue
            why = r if isinstance(r, str) else ("no record there" if r is None else "timestamp differs")
        rep.add(WARNING, "index", idx_path, pos,
                f"entry {i} (entry {base + rel} at segment offset {off}) does not match the segment: {why}")
        return
    # bytes after the table's end marker must be zero, or the table was cut short by garbage
    pos = CM_IDX_HEADER_BYTES + len(entries) * CM_IDX_ENTRY_BYTES
    if pos + CM_IDX_ENTRY_BYTES <= len(data):
        nxt = data[pos:pos + CM_IDX_ENTRY_BYTES]
        if nxt[4:8] != b"\0\0\0\0":
            rep.add(WARNING, "index", idx_path, pos,
                    f"entry {len(entries)} is out of order (damaged index table)")


def verify_stream(root: str, name: str, oracle: bool = False,
                  progress: Progress | None = None) -> StreamReport:
    directory = paths.stream_dir(root, name)
    rep = StreamReport(name)
    try:
        files = sorted(os.listdir(directory))
    except OSError as e:
        rep.add(ERROR, "stream", directory, None, f"cannot list: {e}")
        return rep
    for fn in files:
        if fn.endswith(paths.TMP_SUFFIX):
            rep.add(WARNING, "temp-file", os.path.join(directory, fn), None,
                    "leftover temporary file (deleted at the next writer open, I7)")
    # next to a live writer: take the state first, then list; a segment created after the
    # state snapshot (base above its active_base) is newer than what we check, and skipped
    state = _State(directory, rep)
    bases = paths.list_segment_bases(directory)
    if state.valid and state.active_base in bases:
        bases = [b for b in bases if b <= state.active_base]
    rep.segments = len(bases)
    if state.valid:
        rep.committed = state.committed
        rep.first_entry = state.first_entry
    if bases:
        rep.first_entry = bases[0]      # the oldest file, whatever the state page says (I27)
        if state.valid and state.committed < bases[-1]:
            rep.add(ERROR, "state", state.path, CM_STATE_OFF_COMMITTED,
                    f"committed {state.committed} is below the newest segment's base {bases[-1]}")
    elif state.valid and state.committed:
        rep.add(WARNING, "stream", directory, None,
                f"no segments, but {state.committed} entries were committed (all removed?)")
    _check_stream_identity(directory, bases, rep)
    for i, base in enumerate(bases):
        nb = bases[i + 1] if i + 1 < len(bases) else None
        _check_segment(root, name, directory, base, nb, state, oracle, rep)
        if progress is not None:
            progress(i + 1, len(bases), f"{name} {paths.segment_name(base)}")
    return rep


def verify_directory(root: str, oracle: bool = False, progress: Progress | None = None) -> DirectoryReport:
    """Check every stream of data directory ``root``. Read-only. Raises NotADataDirectory."""
    root = os.path.abspath(root)
    check_data_directory(root)
    if oracle:
        load_oracle()  # OracleUnavailable before any work
    report = DirectoryReport(root, oracle)
    _check_families(root, report)
    for d in (root, os.path.join(root, paths.CONSUMERS)):
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        for fn in names:
            if fn.endswith(paths.TMP_SUFFIX):
                report.problems.append(Problem(WARNING, "temp-file", os.path.join(d, fn), None,
                                               "leftover temporary file of an interrupted write (I7)"))
    for name in stream_names(root):
        report.streams[name] = verify_stream(root, name, oracle, progress)
    return report


# ----------------------------------------------------------------------------- recovery


def _segment_geometry(directory: str) -> tuple[int | None, int | None]:
    """(capacity of the newest segment, index interval of its index) from the files."""
    bases = paths.list_segment_bases(directory)
    if not bases:
        return None, None
    cap = interval = None
    try:
        head = paths.read_file(os.path.join(directory, paths.segment_name(bases[-1])),
                               paths.IN_STREAM, CM_SEG_HEADER_BYTES)   # I30
        cap = struct.unpack_from("<Q", head, CM_SEG_OFF_CAPACITY)[0]
    except (OSError, struct.error):
        pass
    try:
        parsed = parse_index(paths.read_file(os.path.join(directory, paths.index_name(bases[-1])),
                                             paths.IN_STREAM, CM_IDX_HEADER_BYTES))   # I30
        if parsed is not None:
            interval = parsed[1]
    except OSError:
        pass
    return cap, interval


def _remove_dead_temp_files(root: str, report: RecoveryReport) -> None:
    """Remove leftover temp files of dead writers (I7; paths.remove_dead_temp_files)."""
    for p in paths.remove_dead_temp_files(root):
        report.temp_files_removed.append(p)
        report.actions.append(f"removed leftover temporary file {p}")


def recover_directory(root: str, progress: Progress | None = None) -> RecoveryReport:
    """Repair what can be repaired in data directory ``root``; raises NotADataDirectory.

    For each stream: open a writer (the C core zeroes a torn tail, rescans after a lost
    state page, counts corrupt records), close it, then rebuild every missing or damaged
    index of a sealed segment. The active segment's index belongs to the writer, which
    checks and rebuilds it at open. Finally verifies the directory (C core only).
    Corrupt records cannot be repaired: they stay reported by the final verify.
    """
    from ..config import Config
    from ..errors import CometError
    from ..index import SegmentIndex
    from ..segment import Segment
    from ..shard import Writer

    root = os.path.abspath(root)
    check_data_directory(root)
    report = RecoveryReport(root)
    _remove_dead_temp_files(root, report)
    names = stream_names(root)
    for n, name in enumerate(names):
        directory = paths.stream_dir(root, name)
        before = set(os.listdir(directory))
        cap, interval = _segment_geometry(directory)
        cfg = Config()
        if cap is not None and cap >= 1 << 20:
            cfg.storage.segment_bytes = cap
        if interval is not None and interval >= 64:
            cfg.indexing.interval_bytes = interval
        try:
            w = Writer(directory, name, cfg, create=False)
        except (CometError, OSError) as e:
            report.failures.append(f"{name}: cannot open for writing: {e}")
            continue
        try:
            r = dict(w.open_report)
            snap = w.snapshot()
            if r["bytes_dropped"] or r["state_rebuilt"]:
                w.sync()  # make the repair itself durable, whatever the writers' mode
        except (CometError, OSError) as e:
            report.failures.append(f"{name}: {e}")
            continue
        finally:
            w.close()
        r["committed"] = snap["committed"]
        report.opened[name] = r
        for fn in sorted(before):
            if fn.endswith(paths.TMP_SUFFIX) and not os.path.exists(os.path.join(directory, fn)):
                report.temp_files_removed.append(os.path.join(directory, fn))
                report.actions.append(f"{name}: removed leftover temporary file {fn}")
        if r["state_rebuilt"]:
            report.actions.append(f"{name}: rebuilt the state page from the segments")
        if r["bytes_dropped"]:
            report.actions.append(f"{name}: zeroed a torn tail of {r['bytes_dropped']} bytes")
        if r["corrupt_records"]:
            report.actions.append(f"{name}: found {r['corrupt_records']} corrupt records in the active "
                                  "segment (skipped by readers; not repairable)")
        if r["scanned_full"] and not r["state_rebuilt"]:
            report.actions.append(f"{name}: rescanned the active segment (the state did not match it)")

        # sealed segments' indexes (the active one was checked by the writer at open)
        bases = paths.list_segment_bases(directory)
        for base in bases[:-1]:
            seg_path = os.path.join(directory, paths.segment_name(base))
            probe = StreamReport(name)
            try:
                seg = Segment.open(seg_path, base)
            except OSError as e:
                report.failures.append(f"{seg_path}: cannot open: {e}")
                continue
            try:
                nb = bases[bases.index(base) + 1]
                records, damages, _end, _nseq = _walk_c(seg, nb - base)
                walked = ({o: (q, t) for o, q, t in records}, {d.offset: d.first_seq for d in damages})
                _check_index(directory, base, seg, None, probe, walked)
                if probe.problems:
                    idx = SegmentIndex(directory, base)
                    if interval is not None and interval >= 64:
                        idx.interval = interval
                    idx.rebuild(seg, persist=True)
                    again = StreamReport(name)
                    _check_index(directory, base, seg, None, again, walked)
                    if idx.persist_error is not None:
                        e = idx.persist_error
                        report.failures.append(f"{idx.path}: could not persist the rebuilt index: "
                                               f"{e.strerror or e} (errno {e.errno})")
                    elif again.problems:
                        report.failures.append(f"{idx.path}: could not rebuild: {again.problems[0].message}")
                    else:
                        report.indexes_rebuilt.append(idx.path)
                        report.actions.append(f"{name}: rebuilt index {paths.index_name(base)} "
                                              f"({probe.problems[0].message})")
            finally:
                seg.close()
        if progress is not None:
            progress(n + 1, len(names), name)
    report.verify = verify_directory(root)
    return report

