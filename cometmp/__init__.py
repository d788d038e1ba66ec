"""cometmp: an embedded, segmented, append-only log for Python prefork servers.

Quick start::

    import cometmp
    with cometmp.Client("/var/lib/myapp/log") as client:
        events = client.log("events:v1", shards=16)
        mid = events.append(b"hello")            # -> MessageID(stream, shard, entry)
        print(client.read(mid.stream, mid.entry).data)

See docs/FORMAT.md (on-disk format), docs/ARCHITECTURE.md (invariants) and README.md.
"""

from .client import Client, Log, MessageIDs, pick_shard
from .consumer import Batch, Consumer, consumer_groups, delete_consumer_group
from .config import (
    CompressionConfig,
    ConcurrencyConfig,
    Config,
    IndexingConfig,
    RetentionConfig,
    StorageConfig,
)
from .errors import (
    BadGroupName,
    BadStreamName,
    ClosedError,
    CometError,
    ConfigError,
    CometWarning,
    CorruptRecord,
    DataDirectoryNotFound,
    DeadLetterWarning,
    DiskFull,
    EntriesDropped,
    EntryNotFound,
    EntryTooLarge,
    FormatError,
    InvalidArgument,
    InvalidPath,
    MembershipError,
    ReadOnlyError,
    RegistryError,
    ShardCountMismatch,
    ShardNotOwned,
    StopProcessing,
    StorageError,
    StreamNotFound,
    TooManyOpenFiles,
    UnsupportedFilesystem,
)
from .registry import configure, worker_id
from .retention import RetentionReport
from .shard import MessageID, StreamMessage
from .supervisor import Supervisor

__version__ = "0.1.0"

# The library logs through this logger and never prints: without a NullHandler, Python's
# last-resort handler would write its warnings to stderr.
import logging as _logging  # noqa: E402

_logging.getLogger("cometmp").addHandler(_logging.NullHandler())

__all__ = [
    "BadGroupName",
    "BadStreamName",
    "Batch",
    "Client",
    "ClosedError",
    "CometError",
    "CometWarning",
    "CompressionConfig",
    "ConcurrencyConfig",
    "Config",
    "ConfigError",
    "Consumer",
    "CorruptRecord",
    "DataDirectoryNotFound",
    "DeadLetterWarning",
    "DiskFull",
    "EntriesDropped",
    "EntryNotFound",
    "EntryTooLarge",
    "FormatError",
    "IndexingConfig",
    "InvalidArgument",
    "InvalidPath",
    "Log",
    "MembershipError",
    "MessageID",
    "MessageIDs",
    "ReadOnlyError",
    "RegistryError",
    "RetentionConfig",
    "RetentionReport",
    "ShardCountMismatch",
    "ShardNotOwned",
    "StopProcessing",
    "StorageConfig",
    "StorageError",
    "StreamMessage",
    "StreamNotFound",
    "Supervisor",
    "TooManyOpenFiles",
    "UnsupportedFilesystem",
    "configure",
    "consumer_groups",
    "delete_consumer_group",
    "pick_shard",
    "worker_id",
]
