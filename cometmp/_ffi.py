"""The only importer of the compiled core; maps C error codes to exceptions.

Every call into native/ that can fail goes through check() or raise_for(), so there is
exactly one error path (CONVENTIONS 7).
"""

from __future__ import annotations

import errno
import sys
from typing import NoReturn

if not sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError(f"cometmp supports Linux only; this platform is {sys.platform}")

from . import _cffi  # noqa: E402
from .errors import (  # noqa: E402
    ClosedError,
    CometError,
    CorruptRecord,
    DiskFull,
    EntryNotFound,
    EntryTooLarge,
    FormatError,
    ReadOnlyError,
    StorageError,
    os_error,
)

ffi = _cffi.ffi
lib = _cffi.lib

_EXC = {
    lib.CM_E_IO: StorageError,
    lib.CM_E_NOSPACE: DiskFull,
    lib.CM_E_TOOBIG: EntryTooLarge,
    lib.CM_E_CORRUPT: CorruptRecord,
    lib.CM_E_FORMAT: FormatError,
    lib.CM_E_READONLY: ReadOnlyError,
    lib.CM_E_NOTFOUND: EntryNotFound,
    lib.CM_E_CLOSED: ClosedError,
    lib.CM_E_ARG: ValueError,
}


def last_error() -> str:
    return ffi.string(lib.cm_last_error()).decode("utf-8", "replace")


def error_for(rc: int, message: str | None = None, err: int | None = None,
              path: str | None = None) -> Exception:
    """The exception for core return code ``rc`` (with the thread's last error message).

    ``path`` is the file or directory of the handle the call was made on (a stream
    directory, the offsets file); it becomes ``filename`` of an OS-level error, whose
    message (from cm_fail) names the exact file. OS errors go through the one mapping,
    cometmp.errors.os_error (ENOSPC/EDQUOT -> DiskFull, EMFILE -> TooManyOpenFiles)."""
    if message is None:
        message = last_error()
    if err is None:
        err = lib.cm_last_errno()
    cls = _EXC.get(rc, CometError)
    if cls is StorageError:
        return os_error(err or 0, path, message=message)
    if cls is DiskFull:   # CM_E_NOSPACE: also a full fixed-size table (errno 0)
        return DiskFull(message, err or 0, path)
    if cls is ValueError:
        return CometError(message)
    return cls(message)


def raise_for(rc: int, message: str | None = None, err: int | None = None,
              path: str | None = None) -> NoReturn:
    raise error_for(rc, message, err, path)


def check(rc: int, path: str | None = None) -> int:
    """``rc`` if it is not an error; else raise its exception (``path``: see error_for)."""
    if rc < 0:
        raise_for(rc, path=path)
    return rc


def core_path() -> str:
    """The file of the loaded core (cometmp._cffi): the CPython extensions look its
    function table up there (dlopen RTLD_NOLOAD), so no address travels as an int."""
    return _cffi.__file__


def format_constants() -> dict[str, int]:
    n = ffi.new("uint32_t *")
    table = lib.cm_format_constants(n)
    return {ffi.string(table[i].name).decode(): int(table[i].value) for i in range(n[0])}
