/* pyapi.h - the C-API of appender.c and reader.c, under either of their two builds.
 *
 * Who includes it: the two CPython extensions only (the core is cffi's, already abi3).
 * One source compiles both ways (setup.py picks): under Py_LIMITED_API=0x030B0000 when
 * built on CPython >= 3.11 (the cp311-abi3 wheel, for 3.11 and every later 3.x), and
 * under the full API on 3.10 (its own cp310 wheel). 3.11 is the floor of the limited
 * build because the buffer protocol (Py_buffer, PyObject_GetBuffer, the bf_* type
 * slots) joined the limited API there: without it a bytearray or memoryview payload
 * could not be appended zero-copy.
 *
 * The limited API hides object layouts, so the accessors below are function calls
 * there and the usual macros in the full build; everything else the two files call is
 * in the 3.11 limited API as it is. The cost, measured: docs/PERFORMANCE.md
 * "One abi3 wheel". Both types of each module are heap types (PyType_FromSpec) in
 * both builds, so only these lines differ.
 */
#ifndef CM_PYAPI_H
#define CM_PYAPI_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(Py_LIMITED_API) && Py_LIMITED_API + 0 < 0x030B0000
#error "cometmp's extensions need the 3.11 limited API (the buffer protocol) or the full API"
#endif

/* CM_BYTES(o, &s, &n): data and size of a bytes object o. Limited: one call for the
 * data; the size is Py_SIZE, ob_size of the PyVarObject header, which the stable ABI
 * fixes and which is what PyBytes_Size returns (fewer instructions per append_many
 * entry than PyBytes_Size or PyBytes_AsStringAndSize, measured). */
#ifdef Py_LIMITED_API
#define CM_BYTES(o, s, n) (*(s) = PyBytes_AsString(o), *(n) = Py_SIZE(o))
#define CM_LIST_SIZE(o) PyList_Size(o)
#define CM_LIST_ITEM(o, i) PyList_GetItem(o, i)        /* borrowed */
#define CM_LIST_SET(o, i, v) PyList_SetItem(o, i, v)   /* steals v; a new list */
#define CM_TUPLE_SIZE(o) PyTuple_Size(o)
#define CM_TUPLE_ITEM(o, i) PyTuple_GetItem(o, i)      /* borrowed */
#define CM_TUPLE_SET(o, i, v) PyTuple_SetItem(o, i, v) /* steals v; a new tuple */
/* a PySequence_Fast result is an exact list or an exact tuple */
#define CM_FAST_SIZE(s) (PyList_CheckExact(s) ? PyList_Size(s) : PyTuple_Size(s))
#define CM_FAST_ITEM(s, i) (PyList_CheckExact(s) ? PyList_GetItem(s, i) : PyTuple_GetItem(s, i))
/* the same where is_list = PyList_CheckExact(s) was taken once, before a loop */
#define CM_FAST_ITEM_OF(s, is_list, i) ((is_list) ? PyList_GetItem(s, i) : PyTuple_GetItem(s, i))
#define CM_CALL1(f, a) PyObject_CallFunctionObjArgs(f, a, NULL)
#else
#define CM_BYTES(o, s, n) (*(s) = PyBytes_AS_STRING(o), *(n) = PyBytes_GET_SIZE(o))
#define CM_LIST_SIZE(o) PyList_GET_SIZE(o)
#define CM_LIST_ITEM(o, i) PyList_GET_ITEM(o, i)
#define CM_LIST_SET(o, i, v) PyList_SET_ITEM(o, i, v)
#define CM_TUPLE_SIZE(o) PyTuple_GET_SIZE(o)
#define CM_TUPLE_ITEM(o, i) PyTuple_GET_ITEM(o, i)
#define CM_TUPLE_SET(o, i, v) PyTuple_SET_ITEM(o, i, v)
#define CM_FAST_SIZE(s) PySequence_Fast_GET_SIZE(s)
#define CM_FAST_ITEM(s, i) PySequence_Fast_GET_ITEM(s, i)
#define CM_FAST_ITEM_OF(s, is_list, i) PySequence_Fast_GET_ITEM(s, i)
#define CM_CALL1(f, a) PyObject_CallOneArg(f, a)
#endif

/* Py_XSETREF, which the limited API does not have */
#define CM_XSETREF(dst, src) do { PyObject *cm_old_ = (PyObject *)(dst); (dst) = (src); \
                                  Py_XDECREF(cm_old_); } while (0)

/* PyErr_Format(exc, fmt, name of o's type): fmt has one %s (use %.100s), filled with
 * what tp_name holds in either build: "module.Name" for a static type outside builtins,
 * the bare name otherwise. Returns NULL. */
static inline PyObject *cm_type_error(PyObject *exc, const char *fmt, PyObject *o) {
#ifdef Py_LIMITED_API
    PyTypeObject *tp = Py_TYPE(o);
    PyObject *name = PyType_GetName(tp), *full = NULL;
    if (!name) return NULL;
    if (!(PyType_GetFlags(tp) & Py_TPFLAGS_HEAPTYPE)) {
        PyObject *mod = PyObject_GetAttrString((PyObject *)tp, "__module__");
        if (mod && PyUnicode_Check(mod) && PyUnicode_CompareWithASCIIString(mod, "builtins") != 0)
            full = PyUnicode_FromFormat("%U.%U", mod, name);
        Py_XDECREF(mod);
        PyErr_Clear();
    }
    const char *s = PyUnicode_AsUTF8AndSize(full ? full : name, NULL);
    if (s) PyErr_Format(exc, fmt, s);
    Py_XDECREF(full);
    Py_DECREF(name);
#else
    PyErr_Format(exc, fmt, Py_TYPE(o)->tp_name);
#endif
    return NULL;
}


/* cm_core_api(path): the core's function table (api.c), looked up in the cffi module
 * that is already loaded from `path` (cometmp._cffi.__file__): dlopen(RTLD_NOLOAD)
 * returns that very copy, never a second one, and no address crosses Python as an
 * int (ARCHITECTURE.md §11). NULL with an exception set when it is not loaded or its
 * table is of another version. */
#include <dlfcn.h>
struct cm_api;
static inline const struct cm_api *cm_core_api(PyObject *path, int version) {
    PyObject *b = PyUnicode_EncodeFSDefault(path);
    if (!b) return NULL;
    void *h = dlopen(PyBytes_AsString(b), RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(b);
    if (!h) {
        PyErr_Format(PyExc_ImportError, "cometmp: the core %R is not loaded", path);
        return NULL;
    }
    void *(*table)(void) = (void *(*)(void))dlsym(h, "cm_api_table");
    const int *t = table ? (const int *)table() : NULL;  /* version is the first field */
    dlclose(h);   /* the module keeps it loaded */
    if (!t || *t != version) {
        PyErr_SetString(PyExc_ImportError, "cometmp: core API table missing or of another version");
        return NULL;
    }
    return (const struct cm_api *)t;
}

#endif /* CM_PYAPI_H */
