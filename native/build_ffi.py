"""cffi builder for cometmp._cffi (out-of-line API mode).

The public header native/cometmp.h is the cdef, read verbatim. Every C
source of the core except the CPython fast path (appender.c, built as its
own extension by setup.py) is compiled into this one module.
"""
import pathlib

from cffi import FFI

NATIVE = pathlib.Path(__file__).resolve().parent
CORE_SOURCES = ["api.c", "crc32c.c", "error.c", "format.c", "handle.c", "index.c", "prealloc.c", "segment.c", "shard.c", "state.c", "walker.c",
                "registry.c", "notify.c", "offsets.c"]

ffibuilder = FFI()
ffibuilder.cdef((NATIVE / "cometmp.h").read_text())
ffibuilder.set_source(
    "cometmp._cffi",
    "#include <stdint.h>\n#include <stddef.h>\n#include \"cometmp.h\"\n#include \"format.h\"\n",
    sources=[str((NATIVE / name).relative_to(NATIVE.parent)) for name in CORE_SOURCES],
    include_dirs=[str(NATIVE.relative_to(NATIVE.parent))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
