"""The cometmp exception tree. Every error the library raises is one of these.

::

    CometError                                  base of everything below
     +-- BadStreamName        (also ValueError)  a stream or family name fails validation
     +-- ShardCountMismatch   (also ValueError)  a family reopened with another shard count
     +-- EntryTooLarge        (also ValueError)  payload above config.storage.max_entry_bytes
     +-- EntryNotFound        (also KeyError)    no such entry (never written, or retained away)
     +-- StreamNotFound       (also KeyError)    no such stream
     +-- CorruptRecord                           a record failed its checksum; names file + offset
     +-- FormatError                             bad magic / version / layout fingerprint
     +-- DiskFull             (also OSError)     ENOSPC/EDQUOT while allocating; nothing was written
     +-- ReadOnlyError                           a write through Client(readonly=True)
     +-- ClosedError                             use of a closed Client
     +-- StorageError         (also OSError)     any other OS-level failure, with errno and path

Messages name the path (and offset) involved. Exceptions raised while appending a
batch carry ``appended``: how many entries of the batch were written before it.
"""

from __future__ import annotations

__all__ = [
    "BadStreamName",
    "ClosedError",
    "CometError",
    "CorruptRecord",
    "DiskFull",
    "EntryNotFound",
    "EntryTooLarge",
    "FormatError",
    "ReadOnlyError",
    "ShardCountMismatch",
    "StorageError",
    "StreamNotFound",
]


class CometError(Exception):
    """Base class of every cometmp error."""

    appended: int = 0


class BadStreamName(CometError, ValueError):
    """A stream or family name is not valid (see cometmp.paths.validate_stream_name)."""


class ShardCountMismatch(CometError, ValueError):
    """A stream family was reopened with a different shard count than it was created with."""


class EntryTooLarge(CometError, ValueError):
    """A payload is larger than config.storage.max_entry_bytes; nothing was written."""


class EntryNotFound(CometError, KeyError):
    """The entry does not exist: not yet written, or removed by retention."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StreamNotFound(CometError, KeyError):
    """The stream does not exist in this data directory."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptRecord(CometError):
    """A record failed validation (checksum, framing). Other records stay readable."""

    def __init__(self, message: str, path: str = "", offset: int = -1, entry: int = -1):
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.entry = entry


class FormatError(CometError):
    """A file or shared mapping has an unknown magic, version or layout fingerprint."""


class DiskFull(CometError, OSError):
    """The filesystem is full; nothing partial was written. Appends resume once space returns."""


class ReadOnlyError(CometError):
    """A write was attempted through a read-only client."""


class ClosedError(CometError):
    """The client (or log) was used after close()."""


class StorageError(CometError, OSError):
    """An operating-system call failed; errno and the path are in the message."""
