"""What one call from Python into C costs: cffi vs a METH_FASTCALL C-API function vs cometmp.

Why cometmp's append hot path is a CPython C-API type (native/appender.c) while everything
else is bound with cffi: this script measures, side by side in one run,

* an empty call: cffi ``noop()`` vs C-API ``noop()`` (METH_FASTCALL);
* the same 100-byte copy, ``copy_in(data)``: cffi with a ``bytes`` argument
  (``const char *`` + ``size_t``) vs C-API METH_FASTCALL (``PyBytes_AsStringAndSize``);
* cometmp itself through both doors into the same core: ``Writer.append_raw`` (cffi
  ``cm_append``, as a cffi-only design would do it) vs ``Log.append`` (the C-API type);
* ``lib.cm_crc32c(0, payload, 100)``: a real core function through cffi with bytes;
* the two steps a cffi append must take in Python before calling: ``ffi.from_buffer`` of
  the payload and a store into a ``cm_iov`` cdata field.

The two throwaway modules are compiled into a temporary directory with the same flags as
cometmp's (-O2), so a C compiler is needed. Timing: ``timeit.repeat`` of 200,000 calls,
9 repeats; min and median ns per call (they include ~10 ns of timeit loop, shown as
"empty statement").

    python benchmarks/call_overhead.py [--json] [--number N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

CFFI_CDEF = """
void noop(void);
size_t copy_in(const char *data, size_t n);
"""

C_BODY = r"""
#include <string.h>
#include <stddef.h>
static char sink[1 << 16];
static size_t pos;
void noop(void) {}
size_t copy_in(const char *data, size_t n) {
    if (pos + n > sizeof sink) pos = 0;
    memcpy(sink + pos, data, n);
    pos += n;
    return n;
}
"""

CAPI_SRC = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
static char sink[1 << 16];
static size_t pos;
static PyObject *noop(PyObject *m, PyObject *const *args, Py_ssize_t nargs) { Py_RETURN_NONE; }
static PyObject *copy_in(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    char *p; Py_ssize_t n;
    if (nargs != 1 || PyBytes_AsStringAndSize(args[0], &p, &n) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "copy_in(bytes)");
        return NULL;
    }
    if (pos + (size_t)n > sizeof sink) pos = 0;
    memcpy(sink + pos, p, (size_t)n);
    pos += (size_t)n;
    return PyLong_FromSsize_t(n);
}
static PyObject *copy_in_o(PyObject *m, PyObject *arg) {
    char *p; Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &p, &n) < 0) return NULL;
    if (pos + (size_t)n > sizeof sink) pos = 0;
    memcpy(sink + pos, p, (size_t)n);
    pos += (size_t)n;
    return PyLong_FromSsize_t(n);
}
static PyMethodDef methods[] = {
    {"noop", (PyCFunction)(void (*)(void))noop, METH_FASTCALL, NULL},
    {"copy_in", (PyCFunction)(void (*)(void))copy_in, METH_FASTCALL, NULL},
    {"copy_in_o", (PyCFunction)copy_in_o, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_co_capi", NULL, -1, methods};
PyMODINIT_FUNC PyInit__co_capi(void) { return PyModule_Create(&mod); }
"""


def build(tmp: str):
    """Compile the throwaway cffi and C-API modules into ``tmp``; return (cffi lib, capi)."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CFFI_CDEF)
    ffi.set_source("_co_cffi", C_BODY, extra_compile_args=["-O2"])
    ffi.compile(tmpdir=tmp, verbose=False)
    src = os.path.join(tmp, "_co_capi.c")
    with open(src, "w") as f:
        f.write(CAPI_SRC)
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    out = os.path.join(tmp, "_co_capi" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(cc + ["-O2", "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}",
                         src, "-o", out], check=True)
    sys.path.insert(0, tmp)
    import _co_capi  # noqa: E402
    import _co_cffi  # noqa: E402

    return _co_cffi.lib, _co_capi


def measure(stmt: str, env: dict, number: int, repeat: int) -> dict:
    times = timeit.repeat(stmt, globals=env, number=number, repeat=repeat)
    per = sorted(t / number * 1e9 for t in times)
    return {"min_ns": per[0], "median_ns": statistics.median(per)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--number", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args(argv)

    import cometmp
    from cometmp._ffi import ffi as ffi_core
    from cometmp._ffi import lib as core
    from cometmp.shard import Writer

    tmp = tempfile.mkdtemp(prefix="cometmp-calls-")
    try:
        clib, capi = build(tmp)
        payload = bytes(range(100))
        n = len(payload)
        client = cometmp.Client(os.path.join(tmp, "log"))
        lg = client.log("calls", shards=1)
        writer = Writer(os.path.join(tmp, "raw-stream"), "raw", client.config)
        cdata_iov = ffi_core.new("cm_iov[1]")
        env = {
            "ffi": ffi_core, "iov": cdata_iov,
            "payload": payload, "n": n, "cffi_noop": clib.noop, "cffi_copy": clib.copy_in,
            "capi_noop": capi.noop, "capi_copy": capi.copy_in, "capi_copy_o": capi.copy_in_o,
            "append": lg.append, "append_raw": writer.append_raw, "crc": core.cm_crc32c,
            "append_many": lg.append_many, "batch": [payload] * 1000,
        }
        rows = [
            ("empty statement (timeit loop)", "pass"),
            ("cffi noop()", "cffi_noop()"),
            ("C-API noop() METH_FASTCALL", "capi_noop()"),
            ("cffi copy_in(bytes, n): 100 B memcpy", "cffi_copy(payload, n)"),
            ("C-API copy_in(bytes) METH_FASTCALL: 100 B memcpy", "capi_copy(payload)"),
            ("C-API copy_in(bytes) METH_O: 100 B memcpy", "capi_copy_o(payload)"),
            ("cffi cm_crc32c(0, bytes, 100) (core function)", "crc(0, payload, n)"),
            ("cffi ffi.from_buffer(bytes) (pointer to a payload)", "ffi.from_buffer(payload)"),
            ("cffi cdata struct field store (iov[0].len = n)", "iov[0].len = n"),
            ("cometmp append via cffi (Writer.append_raw -> cm_append)", "append_raw(payload)"),
            ("cometmp Log.append (C-API type -> cm_append_ex)", "append(payload)"),
        ]
        results = {}
        for _label, stmt in rows:  # warm every path once before timing
            exec(stmt, env)
        for label, stmt in rows:
            results[label] = measure(stmt, env, args.number, args.repeat)
        per_batch = measure("append_many(batch)", env, max(1, args.number // 1000), args.repeat)
        results["cometmp Log.append_many, per entry of a 1,000 batch"] = {
            k: v / 1000 for k, v in per_batch.items()}
        writer.close()
        client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        json.dump({"number": args.number, "repeat": args.repeat, "results": results},
                  sys.stdout, indent=1)
        print()
    else:
        print(f"ns per call, timeit {args.number} x {args.repeat}: min / median")
        for label, r in results.items():
            print(f"  {label:58} {r['min_ns']:8.1f} {r['median_ns']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
