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
from .config import (
    CompressionConfig,
    ConcurrencyConfig,
    Config,
    IndexingConfig,
    RetentionConfig,
    StorageConfig,
)
from .errors import (
    BadStreamName,
    ClosedError,
    CometError,
    CorruptRecord,
    DiskFull,
    EntryNotFound,
    EntryTooLarge,
    FormatError,
    ReadOnlyError,
    ShardCountMismatch,
    StorageError,
    StreamNotFound,
)
from .shard import MessageID, StreamMessage

__version__ = "0.1.0"

__all__ = [
    "BadStreamName",
    "Client",
    "ClosedError",
    "CometError",
    "CompressionConfig",
    "ConcurrencyConfig",
    "Config",
    "CorruptRecord",
    "DiskFull",
    "EntryNotFound",
    "EntryTooLarge",
    "FormatError",
    "IndexingConfig",
    "Log",
    "MessageID",
    "MessageIDs",
    "ReadOnlyError",
    "RetentionConfig",
    "ShardCountMismatch",
    "StorageConfig",
    "StorageError",
    "StreamMessage",
    "StreamNotFound",
    "pick_shard",
]
