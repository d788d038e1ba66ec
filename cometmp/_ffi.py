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


def error_for(rc: int, message: str | None = None, err: int | None = None) -> Exception:
    """The exception for core return code ``rc`` (with the thread's last error message)."""
    if message is None:
        message = last_error()
    if err is None:
        err = lib.cm_last_errno()
    cls = _EXC.get(rc, CometError)
    if cls in (StorageError, DiskFull):
        exc = cls(err or 0, message)
        exc.args = (err or 0, message)
        return exc
    if cls is ValueError:
        return CometError(message)
    return cls(message)


def raise_for(rc: int, message: str | None = None, err: int | None = None) -> NoReturn:
    raise error_for(rc, message, err)


def error_for_os(e: OSError, what: str) -> Exception:
    """The cometmp exception for an OSError of a Python-side file step (DiskFull for
    ENOSPC/EDQUOT, else StorageError), keeping errno and naming the path."""
    cls = DiskFull if e.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    msg = f"{what} {e.filename or ''}: {e.strerror or e}"
    exc = cls(e.errno or 0, msg)
    exc.args = (e.errno or 0, msg)
    exc.filename = e.filename
    return exc


def check(rc: int) -> int:
    if rc < 0:
        raise_for(rc)
    return rc


def core_path() -> str:
    """The file of the loaded core (cometmp._cffi): the CPython extensions look its
    function table up there (dlopen RTLD_NOLOAD), so no address travels as an int."""
    return _cffi.__file__


def format_constants() -> dict[str, int]:
    n = ffi.new("uint32_t *")
    table = lib.cm_format_constants(n)
    return {ffi.string(table[i].name).decode(): int(table[i].value) for i in range(n[0])}
