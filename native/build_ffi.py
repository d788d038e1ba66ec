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
CORE_SOURCES = ["api.c", "crc32c.c", "error.c", "format.c", "fs.c", "handle.c", "headroom.c", "index.c", "lock.c", "prealloc.c", "segment.c", "shard.c", "spare.c", "state.c", "walker.c",
                "registry.c", "notify.c", "offsets.c", "failpoint.c", "names.c", "appmetrics.c"]


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


def build_variant(kind: str) -> str:
    """Path of a variant build's ``_cffi`` shared object, built once per source hash in the
    temp directory and shared by every process: ``kind`` is "failpoints" (the test build,
    tests/failpoints.py) or "stamps" (benchmarks/wake_breakdown.py)."""
    import glob, hashlib, os, shutil, sys, tempfile

    h = hashlib.blake2b(digest_size=8)
    for p in sorted(NATIVE.iterdir()):
        if p.suffix in (".c", ".h", ".py"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(sys.version.encode())
    out = pathlib.Path(tempfile.gettempdir()) / f"cometmp-{kind}-{os.getuid()}-{h.hexdigest()}"
    found = glob.glob(str(out / "cometmp" / "_cffi*.so"))
    if found:
        return found[0]
    work = tempfile.mkdtemp(prefix=f"cometmp-{kind}build-")
    try:
        make_builder(absolute=True, **{kind: True}).compile(tmpdir=work)
        try:
            os.rename(work, out)
        except OSError:             # another process built it first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return glob.glob(str(out / "cometmp" / "_cffi*.so"))[0]


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
