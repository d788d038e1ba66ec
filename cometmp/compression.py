"""Per-entry zstd compression (python-zstandard).

Compression is a flag in the record header (CM_REC_FLAG_ZSTD), never guessed from the
payload; the compressed form is stored only when it is smaller than the original.
"""

from __future__ import annotations

import threading

import zstandard

from .errors import CorruptRecord

_local = threading.local()


class Compressor:
    """Callable used by the append path: bytes-like -> compressed bytes, or None to store
    the payload verbatim. One zstd context per thread (contexts are not thread safe)."""

    def __init__(self, level: int = 3):
        self.level = level

    def _ctx(self) -> zstandard.ZstdCompressor:
        ctx = getattr(_local, "c", None)
        if ctx is None or getattr(_local, "level", None) != self.level:
            ctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            _local.c, _local.level = ctx, self.level
        return ctx

    def __call__(self, data) -> bytes | None:
        out = self._ctx().compress(data)
        return out if len(out) < len(data) else None


def decompress(data: bytes, path: str = "", offset: int = -1) -> bytes:
    ctx = getattr(_local, "d", None)
    if ctx is None:
        ctx = _local.d = zstandard.ZstdDecompressor()
    try:
        return ctx.decompress(data)
    except zstandard.ZstdError as e:
        raise CorruptRecord(f"{path}: offset {offset}: compressed payload does not decode: {e}",
                            path=path, offset=offset) from None
