"""Dead-letter streams: where a consumer group puts entries it gave up on (I48).

Who may call: Consumer (writing: max_deliveries, nack, process()), anyone reading a
dead-letter stream (``decode``).

A group's dead-letter stream is an ordinary stream (FORMAT.md §1.3) named
``stream_for(group)``: ``_dead-letter.<group>`` when that is a valid stream name, else
``_dead-letter.<group with every character outside [A-Za-z0-9_:-] replaced by _, cut to 64>.<blake2b-64
hex of the group's UTF-8 bytes>``. Consumer patterns never match it unless they start with
``_dead-letter.`` (``is_dead_letter``), so a ``"*"`` consumer does not read its own dead
letters back.

Each dead-letter entry is one failed entry: a one-line JSON envelope, a newline, then the
original payload's bytes (decompressed), unchanged::

    {"attempts": 4, "entry": 17, "error": "RuntimeError: boom", "format": "cometmp.dead_letter",
     "group": "billing", "stream": "events:shard:0003", "timestamp_ns": 1764..., "version": 1}\\n<payload>

``decode(payload)`` returns ``(envelope dict, original bytes)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from . import paths
from .errors import BadStreamName, DeadLetterWarning

__all__ = ["DEAD_LETTER_PREFIX", "DeadLetterWarning", "decode", "encode", "is_dead_letter",
           "stream_for"]

DEAD_LETTER_PREFIX = "_dead-letter."
ENVELOPE_FORMAT = "cometmp.dead_letter"
ENVELOPE_VERSION = 1
#: the error text kept in an envelope (an exception's message can be arbitrarily long)
ERROR_MAX = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9_:-]")


def stream_for(group: str) -> str:
    """The dead-letter stream of consumer group ``group`` (always a valid stream name)."""
    direct = DEAD_LETTER_PREFIX + group
    try:
        return paths.validate_stream_name(direct)
    except BadStreamName:
        pass
    digest = hashlib.blake2b(group.encode("utf-8"), digest_size=8).hexdigest()
    return f"{DEAD_LETTER_PREFIX}{_UNSAFE.sub('_', group)[:64]}.{digest}"


def is_dead_letter(stream: str) -> bool:
    return stream.startswith(DEAD_LETTER_PREFIX)


def encode(group: str, stream: str, entry: int, timestamp_ns: int, data,
           error: BaseException | str, attempts: int) -> bytes:
    """One dead-letter entry: the JSON envelope line, then the original bytes. ``error``:
    the last error (an exception, or its text); ``attempts``: the entry's deliveries."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    head = json.dumps({
        "format": ENVELOPE_FORMAT, "version": ENVELOPE_VERSION, "group": group,
        "stream": stream, "entry": int(entry), "timestamp_ns": int(timestamp_ns),
        "error": text[:ERROR_MAX], "attempts": int(attempts),
    }, sort_keys=True, ensure_ascii=True)
    return head.encode("ascii") + b"\n" + bytes(data)


def decode(payload) -> tuple[dict[str, Any], bytes]:
    """(envelope, original payload) of a dead-letter entry; ValueError if it is not one."""
    raw = bytes(payload)
    head, sep, body = raw.partition(b"\n")
    doc = json.loads(head) if sep else None
    if not isinstance(doc, dict) or doc.get("format") != ENVELOPE_FORMAT:
        raise ValueError("not a cometmp dead-letter entry")
    return doc, body
