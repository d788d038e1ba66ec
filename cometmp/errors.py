"""The cometmp exception tree. Every error the library raises is one of these.

::

    CometError                                  base of everything below
     +-- BadStreamName        (also ValueError)  a stream or family name fails validation
     +-- ShardCountMismatch   (also ValueError)  a family reopened with another shard count
     +-- EntryTooLarge        (also ValueError)  payload above config.storage.max_entry_bytes
     +-- EntryNotFound        (also KeyError)    no such entry (never written, or retained away)
     +-- StreamNotFound       (also KeyError)    no such stream
     +-- DataDirectoryNotFound (also FileNotFoundError) no data directory (read-only open)
     +-- CorruptRecord                           a record failed its checksum; names file + offset
     +-- FormatError                             bad magic / version / layout fingerprint
     +-- DiskFull             (also OSError)     ENOSPC/EDQUOT while allocating; nothing was written
     +-- ReadOnlyError                           a write through Client(readonly=True)
     +-- ClosedError                             use of a closed Client
     +-- StorageError         (also OSError)     any other OS-level failure, with errno and path
     +-- RegistryError                           the worker registry (shm) cannot be used
     |    +-- UnsupportedFilesystem (also OSError) data directory on NFS/FUSE/network fs
     +-- ShardNotOwned        (also PermissionError) strict_ownership: a foreign shard
     +-- BadGroupName         (also ValueError)  a consumer group name fails validation
     +-- EntriesDropped                          the hard retention cap deleted entries a
                                                 group had not acked; names stream + range
     +-- StopProcessing                          raised by a Consumer.process() handler: stop,
                                                 leaving the current batch unacknowledged

Warnings (``warnings.warn``, never raised by cometmp)::

    CometWarning             (a UserWarning)     base of cometmp's warnings
     +-- DeadLetterWarning                       Consumer.process() gave up on a batch and
                                                 wrote it to the group's dead-letter stream

Messages name the path (and offset) involved. Exceptions raised while appending a
batch carry ``appended``: how many entries of the batch were written before it.
"""

from __future__ import annotations

__all__ = [
    "BadGroupName",
    "BadStreamName",
    "ClosedError",
    "CometError",
    "CometWarning",
    "CorruptRecord",
    "DataDirectoryNotFound",
    "DeadLetterWarning",
    "DiskFull",
    "EntriesDropped",
    "EntryNotFound",
    "EntryTooLarge",
    "FormatError",
    "ReadOnlyError",
    "RegistryError",
    "ShardCountMismatch",
    "ShardNotOwned",
    "StopProcessing",
    "StorageError",
    "StreamNotFound",
    "UnsupportedFilesystem",
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


class RegistryError(CometError):
    """The worker registry of a data directory cannot be created, attached or locked."""


class UnsupportedFilesystem(RegistryError, OSError):
    """The data directory is on a network or FUSE filesystem (NFS, SMB, FUSE, Ceph, ...)."""


class ShardNotOwned(CometError, PermissionError):
    """config.concurrency.strict_ownership: an append to a shard another worker owns."""


class BadGroupName(CometError, ValueError):
    """A consumer group name is not 1..1024 UTF-8 bytes without NUL or newline."""


class EntriesDropped(CometError):
    """Retention's hard cap deleted entries ``[first, end)`` of ``stream`` that this
    consumer's group had not acknowledged. Raised once by Consumer.read() (unless the
    Consumer has an ``on_drop`` callback); the consumer has already moved past the gap,
    so the next read() continues with the oldest retained entry."""

    def __init__(self, message: str, stream: str = "", first: int = 0, end: int = 0,
                 drops: list | None = None):
        super().__init__(message)
        self.stream = stream
        self.first = first
        self.end = end
        #: every (stream, first, end) range found by the same read()
        self.drops = drops if drops is not None else [(stream, first, end)]


class StopProcessing(CometError):
    """Raised by a Consumer.process() handler: stop now, leaving the batch unacknowledged."""


class DataDirectoryNotFound(CometError, FileNotFoundError):
    """Client(path, readonly=True) on a path that is not an existing data directory."""


class CometWarning(UserWarning):
    """Base class of cometmp's warnings (shown by Python's default warning filters)."""


class DeadLetterWarning(CometWarning):
    """Consumer.process() gave up on a batch after its retries and wrote every entry of it
    to the group's dead-letter stream (cometmp.deadletter) before acknowledging it."""
