"""cometmp.Config: a typed tree of mutable dataclasses, Comet's sections.

No argument is required: ``Config()`` is the documented default. Byte limits are ints
where 0 means unlimited; durations are seconds (float) where 0 means unlimited.
``Config.validate()`` raises ConfigError (a ValueError) naming the field, or both fields
of an inconsistent combination; Client calls it.

Readers never take geometry from here: segment size, index interval and a family's
shard count are read from the files (docs/FORMAT.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = [
    "CompressionConfig",
    "ConcurrencyConfig",
    "Config",
    "IndexingConfig",
    "RetentionConfig",
    "StorageConfig",
]

MiB = 1024 * 1024
DURABILITY_MODES = ("none", "interval", "always")


@dataclass
class StorageConfig:
    #: New segments are created with this many bytes (1 MiB .. 4 GiB); the file is fixed
    #: in size, but disk blocks are allocated only ``preallocate_bytes`` ahead of the tail.
    segment_bytes: int = 64 * MiB
    #: Largest payload accepted by append (after compression). Larger raises EntryTooLarge.
    max_entry_bytes: int = 16 * MiB
    #: "none": page cache (survives kill -9, not power loss); "interval": fsync every
    #: ``fsync_every_writes`` appends or ``fsync_every_seconds`` from a background thread;
    #: "always": fsync before append returns.
    durability: str = "none"
    fsync_every_writes: int = 1000
    fsync_every_seconds: float = 1.0
    #: Disk blocks are reserved (fallocate) and prefaulted ahead of the tail, so appends
    #: never fault on a hole and a full disk is seen before any byte is written. The
    #: headroom ramps with what a stream writes: 64 KiB for a new one, doubling up to two to
    #: four chunks of this size, so a stream that takes a few entries costs 64 KiB.
    preallocate_bytes: int = 1 * MiB
    #: Prefault the reserved pages from a background thread (one per process), so an append
    #: rarely takes a page fault itself. It populates every range the appenders queue: a
    #: policy that left the pages to the appenders while no core was idle measured slower
    #: (docs/PERFORMANCE.md, "Prefault policy"). False: never prefault.
    prefault: bool = True


@dataclass
class CompressionConfig:
    #: Payloads at least this large are zstd-compressed; the compressed form is kept only
    #: when smaller. 0 disables compression.
    min_bytes: int = 4096
    level: int = 3


@dataclass
class IndexingConfig:
    #: One sparse index entry per this many bytes of records (Kafka's index.interval.bytes).
    interval_bytes: int = 4096


@dataclass
class RetentionConfig:
    #: Soft limits applied by whole segments; never delete entries a group has not acked.
    max_age: float = 0.0
    max_shard_bytes: int = 0
    max_total_bytes: int = 0
    #: Hard cap that may drop unconsumed data (and reports exactly what it dropped).
    hard_max_total_bytes: int = 0
    #: How often the owning process applies retention in the background (seconds).
    check_interval: float = 60.0
    #: Hard floor of free space on the data directory's filesystem, as a fraction of its
    #: size: below it the oldest sealed segments are deleted even if unacked (reported
    #: like the hard cap). The default keeps the filesystem from filling; 0 disables.
    hard_min_free_ratio: float = 0.01
    #: Consumer groups with no read or ack for this many seconds are deleted (so an
    #: abandoned group does not pin the disk forever). 0 keeps groups forever.
    group_idle_expiry: float = 0.0


@dataclass
class ConcurrencyConfig:
    #: Refuse appends to shards this process does not own (Comet's behaviour).
    strict_ownership: bool = False


@dataclass
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    indexing: IndexingConfig = field(default_factory=IndexingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)

    def validate(self) -> "Config":
        """Raise ConfigError for a bad field or combination (E5); returns self."""
        for name, cls in (("storage", StorageConfig), ("compression", CompressionConfig),
                          ("indexing", IndexingConfig), ("retention", RetentionConfig),
                          ("concurrency", ConcurrencyConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"Config.{name} must be a {cls.__name__}, not "
                                  f"{type(getattr(self, name)).__name__}")
        s = self.storage
        _int_range("storage.segment_bytes", s.segment_bytes, MiB, 1 << 32)
        _int_range("storage.max_entry_bytes", s.max_entry_bytes, 1, 1 << 30)
        # the core takes it as a u32 (cm_options.alloc_chunk): never narrowed
        _int_range("storage.preallocate_bytes", s.preallocate_bytes, 4096, (1 << 32) - 4096)
        if s.preallocate_bytes > s.segment_bytes:
            raise ConfigError(
                f"storage.preallocate_bytes ({s.preallocate_bytes}) is larger than "
                f"storage.segment_bytes ({s.segment_bytes}): blocks are reserved inside a segment")
        if not isinstance(s.durability, str) or s.durability not in DURABILITY_MODES:
            raise ConfigError(
                f"storage.durability must be one of {DURABILITY_MODES}, not {s.durability!r}"
            )
        _int_range("storage.fsync_every_writes", s.fsync_every_writes, 1, 1 << 62)
        _bool("storage.prefault", s.prefault)
        _num_range("storage.fsync_every_seconds", s.fsync_every_seconds, 0.001, 86400.0)
        _int_range("compression.min_bytes", self.compression.min_bytes, 0, 1 << 32)
        _int_range("compression.level", self.compression.level, -7, 22)
        _int_range("indexing.interval_bytes", self.indexing.interval_bytes, 64, 1 << 30)
        if self.indexing.interval_bytes > s.segment_bytes:
            raise ConfigError(
                f"indexing.interval_bytes ({self.indexing.interval_bytes}) is larger than "
                f"storage.segment_bytes ({s.segment_bytes}): the index would hold one entry")
        r = self.retention
        _num_range("retention.max_age", r.max_age, 0.0, float("inf"))
        for name in ("max_shard_bytes", "max_total_bytes", "hard_max_total_bytes"):
            _int_range(f"retention.{name}", getattr(r, name), 0, 1 << 62)
        _num_range("retention.check_interval", r.check_interval, 0.01, 86400.0)
        _num_range("retention.hard_min_free_ratio", r.hard_min_free_ratio, 0.0, 0.5)
        _num_range("retention.group_idle_expiry", r.group_idle_expiry, 0.0, float("inf"))
        if r.hard_max_total_bytes and r.max_total_bytes > r.hard_max_total_bytes:
            raise ConfigError(
                f"retention.max_total_bytes ({r.max_total_bytes}) is above "
                f"retention.hard_max_total_bytes ({r.hard_max_total_bytes}): the hard cap "
                "would always act first, so the soft limit could never apply")
        _bool("concurrency.strict_ownership", self.concurrency.strict_ownership)
        return self

    def copy(self) -> "Config":
        return dataclasses.replace(
            self,
            storage=dataclasses.replace(self.storage),
            compression=dataclasses.replace(self.compression),
            indexing=dataclasses.replace(self.indexing),
            retention=dataclasses.replace(self.retention),
            concurrency=dataclasses.replace(self.concurrency),
        )


def _int_range(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}")


def _num_range(name: str, value: object, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__}")
    if not lo <= value <= hi:   # also refuses NaN
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool, not {type(value).__name__}")
