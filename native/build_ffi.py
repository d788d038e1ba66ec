"""cffi builder for cometmp._cffi (out-of-line API mode).

The public header native/cometmp.h is the cdef, read verbatim. Every C
source of the core except the CPython fast path (appender.c, built as its
own extension by setup.py) is compiled into this one module.

``make_builder(failpoints=True)`` is the test build: the same core compiled
with -DCM_FAILPOINTS (native/failpoint.h), which only the tests make, into a
directory of their own (tests/failpoints.py). setup.py uses the default.
"""
import pathlib

from cffi import FFI

NATIVE = pathlib.Path(__file__).resolve().parent
CORE_SOURCES = ["api.c", "crc32c.c", "error.c", "format.c", "fs.c", "handle.c", "index.c", "lock.c", "prealloc.c", "segment.c", "shard.c", "state.c", "walker.c",
                "registry.c", "notify.c", "offsets.c", "failpoint.c", "names.c"]


def make_builder(failpoints: bool = False, absolute: bool = False, stamps: bool = False) -> FFI:
    """The cffi builder; `failpoints` compiles the test-only failpoints in,
    `absolute` names the sources by absolute path (a build outside the tree),
    `stamps` the wake-path clock stamps of benchmarks/wake_breakdown.py (native/stamps.h)."""
    root = NATIVE.parent
    name = (lambda p: str(p)) if absolute else (lambda p: str(p.relative_to(root)))
    builder = FFI()
    builder.cdef((NATIVE / "cometmp.h").read_text())
    if stamps:
        builder.cdef("extern int64_t cm_wake_stamps[8];")
    builder.set_source(
        "cometmp._cffi",
        "#include <stdint.h>\n#include <stddef.h>\n#include \"cometmp.h\"\n#include \"format.h\"\n"
        + ("#include \"stamps.h\"\n" if stamps else ""),
        sources=[name(NATIVE / src) for src in CORE_SOURCES],
        include_dirs=[name(NATIVE)],
        define_macros=([("CM_FAILPOINTS", "1")] if failpoints else [])
        + ([("CM_WAKE_STAMPS", "1")] if stamps else []),
        extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        libraries=["pthread"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
