"""Every file and directory name cometmp uses, and stream-name validation.

Layout of a data directory (docs/FORMAT.md, "Directory layout")::

    DIR/                                   mode 0700
      cometmp.json                         directory marker (format + version)
      families/<prefix>.json               one per stream family: its shard count
      streams/<stream>/                    one per stream (a family's shard, or a plain stream)
        state                              shared state page (lock, tail, counters)
        <20-digit base entry>.seg          segments, named by their first entry number
        <20-digit base entry>.idx          sparse index of that segment
      consumers/offsets                    consumer groups and their offsets (cometmp.offsets)
"""

from __future__ import annotations

import os
import re

from ._ffi import lib

DIR_MARKER = "cometmp.json"
FAMILIES = "families"
STREAMS = "streams"
STATE = "state"
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
TMP_SUFFIX = ".tmp"
CONSUMERS = "consumers"                  # DIR/consumers/offsets: consumer-group offsets
OFFSETS = "offsets"
BASE_DIGITS = 20
SHARD_INFIX = ":shard:"

MAX_NAME_BYTES = lib.CM_NAME_MAX_BYTES   # native/names.c holds the rule
_SHARD_RE = re.compile(r"(?P<prefix>.+):shard:(?P<n>[0-9]{4,})")   # fullmatch only


def validate_stream_name(name: object, what: str = "stream name") -> str:
    """Return ``name`` if it is a valid stream (or family prefix) name, else raise BadStreamName.

    Valid (FORMAT.md §1): 1..200 bytes of ASCII letters, digits, ``_ . : -``; starts with
    a letter, digit or ``_``; no ``..``. The rule is implemented once, in C
    (``cm_stream_name_check``, native/names.c, which the offsets file also applies); this
    only words its verdict.
    """
    from .errors import BadStreamName

    if not isinstance(name, str):
        raise BadStreamName(f"{what} must be str, not {type(name).__name__}")
    raw = name.encode("utf-8", "surrogatepass")
    rule = lib.cm_stream_name_check(raw, len(raw))
    if rule == 0:
        return name
    shown = f"{name[:40]!r}..." if len(name) > 40 else repr(name)
    reason = {
        lib.CM_NAME_EMPTY: "is empty",
        lib.CM_NAME_NUL: "contains a NUL byte",
        lib.CM_NAME_SEPARATOR: "contains a path separator",
        lib.CM_NAME_DOTDOT: "contains '..'",
        lib.CM_NAME_TOO_LONG: f"is longer than {MAX_NAME_BYTES} bytes",
    }.get(rule, "may contain only letters, digits and _ . : - and must start with a "
                "letter, digit or _")
    raise BadStreamName(f"{what} {shown} {reason}" if rule != lib.CM_NAME_EMPTY
                        else f"{what} is empty")


def shard_stream(prefix: str, shard: int) -> str:
    """The stream name of shard ``shard`` of family ``prefix``: ``f"{prefix}:shard:{n:04d}"``."""
    return f"{prefix}{SHARD_INFIX}{shard:04d}"


def split_shard_stream(name: str) -> tuple[str, int] | None:
    """``("events:v1", 3)`` for ``"events:v1:shard:0003"``; None for a stream outside a family."""
    m = _SHARD_RE.fullmatch(name)
    if not m:
        return None
    return m.group("prefix"), int(m.group("n"))


def segment_name(base: int) -> str:
    return f"{base:0{BASE_DIGITS}d}{SEGMENT_SUFFIX}"


def index_name(base: int) -> str:
    return f"{base:0{BASE_DIGITS}d}{INDEX_SUFFIX}"


def parse_segment_name(filename: str) -> int | None:
    """Base entry of a segment file name, or None if the name is not a segment's."""
    if len(filename) != BASE_DIGITS + len(SEGMENT_SUFFIX) or not filename.endswith(SEGMENT_SUFFIX):
        return None
    digits = filename[:BASE_DIGITS]
    return int(digits) if digits.isdigit() else None


def streams_dir(root: str) -> str:
    return os.path.join(root, STREAMS)


def stream_dir(root: str, stream: str) -> str:
    return os.path.join(root, STREAMS, stream)


def family_file(root: str, prefix: str) -> str:
    return os.path.join(root, FAMILIES, prefix + ".json")


def list_segment_bases(directory: str) -> list[int]:
    """Sorted base entries of the segments in a stream directory."""
    from .errors import os_errors

    with os_errors(directory, "list segments in"):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
    bases = [b for b in map(parse_segment_name, names) if b is not None]
    bases.sort()
    return bases


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temp_files(root: str) -> list[str]:
    """Remove temp files ``<file>.<pid>.tmp`` of the JSON and offsets-file protocols whose
    writer process is gone (I7); returns the paths removed. Stream directories are cleaned
    by the C core when a writer opens them."""
    removed = []
    for d in (root, os.path.join(root, FAMILIES), os.path.join(root, CONSUMERS)):
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for fn in names:
            if not fn.endswith(TMP_SUFFIX):
                continue
            parts = fn[: -len(TMP_SUFFIX)].rsplit(".", 1)
            if len(parts) == 2 and parts[1].isdigit() and _pid_alive(int(parts[1])):
                continue
            p = os.path.join(d, fn)
            try:
                os.unlink(p)
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed
