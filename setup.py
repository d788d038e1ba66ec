"""Build glue only: metadata lives in pyproject.toml.

cffi_modules builds the core (cometmp._cffi) from native/; the CPython fast
paths cometmp._appender and cometmp._reader are plain extensions over the same
headers.

ABI: built on CPython >= 3.11, both extensions compile against the 3.11 limited
API (native/pyapi.h) and the wheel is tagged cp311-abi3: one wheel for 3.11,
3.12, 3.13 and later (the cffi core is abi3 already). Built on 3.10 (or on a
free-threaded build, which has no limited API) they use the full API and the
wheel is tagged for that interpreter only. Measured cost of the limited API on
the append path: docs/PERFORMANCE.md "One abi3 wheel".
"""
import sys
import sysconfig

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit("cometmp supports Linux only (robust process-shared mutexes, futexes, "
                     "MADV_POPULATE_WRITE); this is %s" % sys.platform)

# Link libc even into an extension that calls no libc function (appender.c uses only the
# C-API; gcc passes --as-needed by default on Debian/Ubuntu, which then drops it):
# auditwheel infers the wheel's libc from the first extension it inspects and refuses a
# wheel whose first extension NEEDs no libc at all ("couldn't detect libc").
LINK_LIBC = ["-Wl,--no-as-needed", "-lc", "-Wl,--as-needed"]

# 3.11: the first limited API with the buffer protocol (zero-copy non-bytes payloads)
LIMITED = sys.version_info >= (3, 11) and not sysconfig.get_config_var("Py_GIL_DISABLED")
ABI = {"py_limited_api": True, "define_macros": [("Py_LIMITED_API", "0x030B0000")]} if LIMITED else {}

setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    ext_modules=[
        Extension(
            "cometmp._appender",
            sources=["native/appender.c"],
            depends=["native/cometmp.h", "native/format.h", "native/internal.h", "native/pyapi.h"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            extra_link_args=LINK_LIBC,
            **ABI,
        ),
        Extension(  # the consumers' batch reader, over the same core table (issue 4)
            "cometmp._reader",
            sources=["native/reader.c"],
            depends=["native/cometmp.h", "native/format.h", "native/internal.h", "native/pyapi.h"],
            include_dirs=["native"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            extra_link_args=LINK_LIBC,
            **ABI,
        ),
    ],
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if LIMITED else {},
)
