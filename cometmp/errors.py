"""The cometmp exception tree. Every error the library raises is one of these.

::

    CometError                                  base of everything below
     +-- BadStreamName        (also ValueError)  a stream or family name fails validation
     +-- BadGroupName         (also ValueError)  a consumer group name fails validation
     +-- ConfigError          (also ValueError)  a Config field or combination out of range
     +-- InvalidPath          (also ValueError)  an empty data-directory path (or one with NUL)
     +-- InvalidArgument      (also ValueError,  an argument of a call out of range or of the
     |                         TypeError)        wrong type; names the argument
     +-- ShardCountMismatch   (also ValueError)  a family reopened with another shard count
     +-- EntryTooLarge        (also ValueError)  payload above config.storage.max_entry_bytes
     +-- EntryNotFound        (also KeyError)    no such entry (never written, or retained away)
     +-- StreamNotFound       (also KeyError)    no such stream
     +-- CorruptRecord                           a record failed its checksum; names file + offset
     +-- FormatError                             bad magic / version / layout fingerprint
     +-- ReadOnlyError                           a write through Client(readonly=True)
     +-- ClosedError                             use of a closed Client
     +-- StorageError                            an OS call failed: .errno .strerror .filename,
     |    |                                      the OSError itself as __cause__ and .os_error
     |    +-- DiskFull                           ENOSPC/EDQUOT anywhere; nothing partial written
     |    +-- TooManyOpenFiles                   EMFILE/ENFILE; the message names the limit
     |    +-- DataDirectoryNotFound              readonly open of a path that is no data directory
     +-- RegistryError                           the worker registry (shm) cannot be used
     |    +-- UnsupportedFilesystem              data directory on NFS/FUSE/network fs
     +-- ShardNotOwned                           strict_ownership: a foreign shard
     +-- EntriesDropped                          the hard retention cap deleted entries a
     |                                           group had not acked; names stream + range
     +-- AckWindowFull        (also ValueError)  an ack too far past a stream's committed
     |                                           offset (the ack window); names stream + entry
     +-- MembershipError                         a group's member table is full (64 live
     |                                           members) or a member's patterns overflow
     +-- MetricsTableFull                        the application metrics table (metrics/app)
     |                                           has no room for another key; names the caps
     +-- StopProcessing                          raised by a Consumer.process() handler: stop,
                                                 leaving the current batch unacknowledged

**No cometmp error is an OSError** (E2, docs/ARCHITECTURE.md §12; issue 9 item 14). Servers treat an
``OSError`` escaping the application as a broken client socket: gunicorn's sync worker
logs "Socket error processing request" and closes the connection without a response, so
a full disk became a dropped connection instead of a 500. A ``StorageError`` therefore
derives from ``CometError`` only; it carries ``errno``, ``strerror`` and ``filename`` like
an ``OSError`` does, and chains the original ``OSError`` (``__cause__``, also ``.os_error``).
Code that used to catch these as ``OSError`` catches :data:`OS_ERRORS` instead::

    try:
        log.append(b"...")
    except cometmp.errors.OS_ERRORS as e:      # (OSError, StorageError)
        print(e.errno, e.filename)

Every OS-level failure becomes an exception through one mapping: :func:`os_error` (Python
calls, usually through the :func:`os_errors` context manager) and ``cometmp._ffi.error_for``
(the C core's ``CM_E_IO``/``CM_E_NOSPACE``, whose errno ``cm_fail`` keeps), which calls it.

Warnings (``warnings.warn``, never raised by cometmp)::

    CometWarning             (a UserWarning)     base of cometmp's warnings
     +-- DeadLetterWarning                       Consumer.process() gave up on a batch and
                                                 wrote it to the group's dead-letter stream

Messages name the path (and offset) involved. Exceptions raised while appending a
batch carry ``appended``: how many entries of the batch were written before it.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import resource
from collections.abc import Iterator

__all__ = [
    "AckWindowFull",
    "BadGroupName",
    "BadStreamName",
    "ClosedError",
    "CometError",
    "ConfigError",
    "CometWarning",
    "CorruptRecord",
    "DataDirectoryNotFound",
    "DeadLetterWarning",
    "DiskFull",
    "EntriesDropped",
    "EntryNotFound",
    "EntryTooLarge",
    "FormatError",
    "InvalidArgument",
    "InvalidPath",
    "MembershipError",
    "MetricsTableFull",
    "OS_ERRORS",
    "ReadOnlyError",
    "RegistryError",
    "ShardCountMismatch",
    "ShardNotOwned",
    "StopProcessing",
    "StorageError",
    "StreamNotFound",
    "TooManyOpenFiles",
    "UnsupportedFilesystem",
    "os_error",
    "os_errors",
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


class ReadOnlyError(CometError):
    """A write was attempted through a read-only client."""


class ClosedError(CometError):
    """The client (or log) was used after close()."""


class StorageError(CometError):
    """An operating-system call failed. ``errno``, ``strerror`` and ``filename`` as on an
    OSError (``filename`` is the file or directory involved); the OSError is ``__cause__``
    (when Python made the call) and ``os_error``. Not an OSError itself: see the module doc."""

    def __init__(self, message: str, errno: int = 0, filename: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None
        self.filename = filename

    @property
    def os_error(self) -> OSError:
        """The failure as the builtin OSError (the chained one when there is one)."""
        if isinstance(self.__cause__, OSError):
            return self.__cause__
        return OSError(self.errno, self.strerror or str(self), self.filename)


class DiskFull(StorageError):
    """ENOSPC/EDQUOT: the filesystem (or quota) is full; nothing partial was written.
    Appends resume once space returns."""


class TooManyOpenFiles(StorageError):
    """EMFILE/ENFILE: the process (or system) file-descriptor limit is reached; the message
    names the limit (RLIMIT_NOFILE, or fs.file-max)."""


class DataDirectoryNotFound(StorageError):
    """Client(path, readonly=True) on a path that is not an existing data directory (no
    directory, or no ``cometmp.json`` marker in it)."""


#: Catch these where ``except OSError`` caught cometmp's OS-level errors before.
OS_ERRORS = (OSError, StorageError)


class RegistryError(CometError):
    """The worker registry of a data directory cannot be created, attached or locked."""


class UnsupportedFilesystem(RegistryError):
    """The data directory is on a network or FUSE filesystem (NFS, SMB, FUSE, Ceph, ...)."""


class ShardNotOwned(CometError):
    """config.concurrency.strict_ownership: an append to a shard another worker owns."""


class ConfigError(CometError, ValueError):
    """A Config field, or a combination of fields, is out of range; names the field(s)."""


class InvalidArgument(CometError, ValueError, TypeError):
    """An argument of a call is out of range (a negative timeout, max_deliveries 0) or of
    the wrong type (a str where seconds or ids are expected); the message names the
    argument and the value. Both builtin bases, so ``except ValueError`` and ``except
    TypeError`` written for either kind of mistake keep catching it."""


def check_seconds(name: str, value, *, positive: bool = False, none: bool = True) -> float | None:
    """``value`` as seconds (a real number, not bool, not NaN, >= 0 or with ``positive``
    > 0; None when ``none``), else InvalidArgument naming ``name``. The one rule for every
    timeout, delay and wait of the API."""
    if value is None and none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (value > 0 if positive else value >= 0)
    if ok:
        try:
            return float(value)
        except OverflowError:   # an int beyond a float's range (10**400)
            pass
    want = "> 0" if positive else ">= 0"
    raise InvalidArgument(f"{name} must be {'None or ' if none else ''}a number of seconds "
                          f"{want}, not {value!r:.80}")


class InvalidPath(CometError, ValueError):
    """The data-directory path given to Client is empty (which would mean the working
    directory) or contains a NUL byte."""


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


class AckWindowFull(CometError, ValueError):
    """An out-of-order ack of an entry ``CM_WIN_ENTRIES`` or more past the group's
    committed offset of the stream (docs/ARCHITECTURE.md I45); nothing was acknowledged.
    ``stream``, ``entry`` and ``committed`` name it."""

    def __init__(self, message: str, stream: str = "", entry: int = 0, committed: int = 0):
        super().__init__(message)
        self.stream, self.entry, self.committed = stream, entry, committed


class MembershipError(CometError):
    """A Consumer cannot join its group's live membership (cometmp.members, FORMAT.md
    §7.1): the group already has CM_MMB_MEMBER_CAP live members, or the patterns this
    member reads do not fit its record. The message names the members file and group."""


class MetricsTableFull(CometError):
    """A new prometheus_client metric child (a name and label values, or a histogram
    bucket) does not fit the application metrics table DIR/metrics/app (cometmp.appmetrics,
    FORMAT.md §10): its CM_APM_KEY_CAP rows or its key-text area are used up. Raised where
    the child is created (``Counter(...)``, ``.labels(...)``); nothing was written. The
    message names the file and both caps."""


class StopProcessing(CometError):
    """Raised by a Consumer.process() handler: stop now, leaving the batch unacknowledged."""


def _nofile_limit(err: int) -> str:
    if err == _errno.ENFILE:
        try:
            with open("/proc/sys/fs/file-max") as f:
                return f"the system-wide limit fs.file-max ({f.read().strip()}) is reached"
        except OSError:
            return "the system-wide file limit is reached"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"the open-file limit RLIMIT_NOFILE is reached (soft {soft}, hard {hard}); "
            "raise it (ulimit -n) or open fewer streams")


def os_error(err: OSError | int, path: str | None = None, action: str = "",
             message: str | None = None) -> StorageError:
    """E1: the one mapping from an OS failure to the tree: ENOSPC/EDQUOT -> DiskFull,
    EMFILE/ENFILE -> TooManyOpenFiles (naming the limit), anything else -> StorageError;
    each carrying errno and path. ``err`` is the OSError (or its errno, for the C core);
    ``action`` is what was being done ("create", "read marker"); ``message`` replaces the
    generated "<action> <path>: <strerror>" (the C core's own message). The caller raises
    the result ``from`` the OSError."""
    if isinstance(err, OSError):
        code = err.errno or 0
        if path is None:
            path = err.filename
    else:
        code = err
    if code in (_errno.ENOSPC, _errno.EDQUOT):
        cls: type[StorageError] = DiskFull
    elif code in (_errno.EMFILE, _errno.ENFILE):
        cls = TooManyOpenFiles
    else:
        cls = StorageError
    if message is None:
        what = f"{action} {path}" if action else f"{path}"
        message = f"{what}: {os.strerror(code) if code else err}"
    if cls is TooManyOpenFiles:
        message = f"{message}: {_nofile_limit(code)}"
    return cls(message, code, os.fspath(path) if path is not None else None)


@contextlib.contextmanager
def os_errors(path: str | os.PathLike, action: str) -> Iterator[None]:
    """Run a block of OS calls on ``path``; an OSError leaves it as :func:`os_error`'s
    exception, chained to the OSError::

        with os_errors(marker, "read directory marker"):
            data = open(marker).read()
    """
    try:
        yield
    except OSError as e:
        raise os_error(e, os.fspath(path), action) from e


class CometWarning(UserWarning):
    """Base class of cometmp's warnings (shown by Python's default warning filters)."""


class DeadLetterWarning(CometWarning):
    """Consumer.process() gave up on a batch after its retries and wrote every entry of it
    to the group's dead-letter stream (cometmp.deadletter) before acknowledging it."""
