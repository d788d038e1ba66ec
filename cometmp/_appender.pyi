"""Type stubs for cometmp._appender (native/appender.c): the CPython append fast path.

Log.append is this module's Appender.append (bound in Log.__init__), so these
signatures are what a user's type checker sees for the hot path.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, SupportsIndex, final, overload

from typing_extensions import Buffer, Self, TypeAlias

#: what a router accepts: pick_shard's key types, or None for round robin
_Key: TypeAlias = str | bytes | bytearray | memoryview | None

@final
class MessageID:
    """MessageID(stream, shard, entry): identity of one appended entry.

    Immutable and tuple-like: unpacks as (stream, shard, entry), compares and
    hashes by value, pickles.
    """

    def __new__(cls, stream: str, shard: int, entry: int) -> Self: ...
    @property
    def stream(self) -> str: ...
    @property
    def shard(self) -> int: ...
    @property
    def entry(self) -> int: ...
    def __len__(self) -> Literal[3]: ...
    @overload
    def __getitem__(self, i: Literal[0]) -> str: ...
    @overload
    def __getitem__(self, i: Literal[1, 2]) -> int: ...
    @overload
    def __getitem__(self, i: SupportsIndex) -> str | int: ...
    def __iter__(self) -> Iterator[str | int]: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __lt__(self, other: MessageID) -> bool: ...
    def __le__(self, other: MessageID) -> bool: ...
    def __gt__(self, other: MessageID) -> bool: ...
    def __ge__(self, other: MessageID) -> bool: ...
    def __reduce__(self) -> tuple[type[MessageID], tuple[str, int, int]]: ...

def pick_shard(key: str | bytes | bytearray | memoryview, shard_count: int, /) -> int:
    """murmur3 x86_32 (seed 0) of the key's bytes (str as UTF-8) % shard_count"""
def murmur3_x86_32(data: str | bytes | bytearray | memoryview, seed: int = 0, /) -> int:
    """the bare hash, unsigned (str hashed as UTF-8); for the tests"""

@final
class Appender:
    """Fast append path over a set of shard handles. Internal: built by Client._make_appender."""

    def __init__(
        self,
        core_path: str,
        names: list[str],
        numbers: list[int],
        router: Callable[[Any], int] | None,
        compress: Callable[[memoryview], bytes | None] | None,
        compress_min: int,
        on_error: Callable[[int, int, str, int, int], bool],
        /,
    ) -> None: ...
    def append(self, data: Buffer, /, key: _Key = None) -> MessageID:
        """append(data, key=None) -> MessageID"""
    def append_many(self, items: Iterable[Buffer], /, key: _Key = None) -> tuple[int, int, int]:
        """append_many(items, key=None) -> (shard index, first entry, count)"""
    def set_handle(self, index: int, ref: Buffer | None, /) -> None:
        """set_handle(index, ref): install Writer.ref() (a buffer over the handle) or None"""
    def set_route(self, indexes: Iterable[int], /) -> None: ...
    def set_epoch_watch(self, mapping: Buffer | None, offset: int,
                        callback: Callable[[], object] | None, /) -> None: ...
