"""Build glue only: metadata lives in pyproject.toml.

cffi_modules builds the core (cometmp._cffi) from native/; the CPython fast
path cometmp._appender is a plain extension over the same headers.
"""
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit("cometmp supports Linux only (robust process-shared mutexes, futexes, "
                     "MADV_POPULATE_WRITE); this is %s" % sys.platform)

# Link libc even into an extension that calls no libc function (appender.c uses only the
# C-API; gcc passes --as-needed by default on Debian/Ubuntu, which then drops it):
# auditwheel infers the wheel's libc from the first extension it inspects and refuses a
# wheel whose first extension NEEDs no libc at all ("couldn't detect libc").
LINK_LIBC = ["-Wl,--no-as-needed", "-lc", "-Wl,--as-needed"]

setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    ext_modules=[
        Extension(
            "cometmp._appender",
            sources=["native/appender.c"],
            depends=["native/cometmp.h", "native/format.h", "native/internal.h"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            extra_link_args=LINK_LIBC,
        ),
        Extension(  # the consumers' batch reader, over the same core table (issue 4)
            "cometmp._reader",
            sources=["native/reader.c"],
            depends=["native/cometmp.h", "native/format.h", "native/internal.h"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            extra_link_args=LINK_LIBC,
        ),
    ],
)
