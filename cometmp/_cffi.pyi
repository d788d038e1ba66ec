"""Type stubs for cometmp._cffi, the cffi module native/build_ffi.py builds from native/cometmp.h.

The integer constants (#define in cometmp.h) are declared one by one; a test checks
the list against the header. The cm_* functions take and return cffi objects
(cdata pointers, structs), which have no static types, so they are Any.
"""

from typing import Any

class _Lib:
    CM_OK: int
    CM_E_IO: int
    CM_E_NOSPACE: int
    CM_E_TOOBIG: int
    CM_E_CORRUPT: int
    CM_E_FORMAT: int
    CM_E_READONLY: int
    CM_E_FORKED: int
    CM_E_NOTFOUND: int
    CM_E_CLOSED: int
    CM_E_ARG: int
    CM_DURABILITY_NONE: int
    CM_DURABILITY_INTERVAL: int
    CM_DURABILITY_ALWAYS: int
    CM_SHARD_SPARE_NONE: int
    CM_SHARD_SPARE_BUILDING: int
    CM_SHARD_SPARE_READY: int
    CM_SHARD_SPARE_FAILED: int
    CM_SHARD_HEADROOM_NONE: int
    CM_SHARD_HEADROOM_EXTENDING: int
    CM_SHARD_HEADROOM_DONE: int
    CM_REC_VALID: int
    CM_REC_END: int
    CM_WALK_DONE: int
    CM_WALK_RECORD: int
    CM_WALK_DAMAGE: int
    CM_SEQ_ANY: int
    CM_DAMAGE_LENGTH: int
    CM_DAMAGE_FLAGS: int
    CM_DAMAGE_CRC: int
    CM_DAMAGE_SEQ: int
    CM_DAMAGE_END: int
    CM_DAMAGE_RESYNC: int
    CM_DAMAGE_LIMIT: int
    CM_DAMAGE_TORN: int
    CM_NAME_MAX_BYTES: int
    CM_NAME_EMPTY: int
    CM_NAME_TOO_LONG: int
    CM_NAME_NUL: int
    CM_NAME_SEPARATOR: int
    CM_NAME_DOTDOT: int
    CM_NAME_CHARS: int
    def __getattr__(self, name: str) -> Any: ...  # the cm_* functions of cometmp.h

ffi: Any  # a cffi.FFI instance (cffi ships no type information)
lib: _Lib
