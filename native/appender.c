/* appender.c - cometmp._appender: the CPython fast path for append.
 *
 * A cffi call costs ~0.2 us by itself here (measured, docs/PERFORMANCE.md),
 * more than the whole append budget, so the append entry points are a thin
 * METH_FASTCALL extension type. It holds no logic of its own beyond argument
 * handling and routing: it calls the core through the function table that
 * the cffi module exports (api.c), and every error goes back to Python's
 * single error path (the on_error callable, cometmp/_ffi.py).
 *
 * Handle lifetime (docs/ARCHITECTURE.md §11): each slot of `shards` owns one
 * reference to its cm_shard (L3), taken from the head the Writer exposes
 * (set_handle) and dropped on replace and dealloc; a call that releases the
 * GIL takes one more for its duration, so a close() or set_handle() racing it
 * cannot free the struct under it. A closed shard answers CM_E_CLOSED (L1).
 *
 * GIL rule: never wait for a shard lock while holding the GIL, and never take
 * the GIL while holding a shard lock. We try the lock without blocking; if it
 * is contended, we release the GIL and then wait.
 */
#include "pyapi.h"        /* Python.h, and what differs under the limited API */
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include "cometmp.h"
#include "internal.h"

#define BIG_BATCH_BYTES (256u * 1024u) /* above this, copy without the GIL */

/* ---- MessageID: (stream, shard, entry), immutable, tuple-like --------------
 * A small C type rather than a PyStructSequence: creating a struct sequence
 * does three dict lookups on its type (~50 ns measured), a quarter of the
 * append budget. Not GC-tracked: it only references a str and an int. */
typedef struct {
    PyObject_HEAD
    PyObject *stream;
    PyObject *shard;
    uint64_t entry;
} MessageIDObject;

static PyTypeObject *MessageIDType;   /* a heap type (PyType_FromSpec), made at import */

static PyObject *mid_new_raw(PyObject *stream, PyObject *shard, uint64_t entry) {
    MessageIDObject *m = PyObject_New(MessageIDObject, MessageIDType);  /* takes a type ref */
    if (!m) return NULL;
    m->stream = Py_NewRef(stream);
    m->shard = Py_NewRef(shard);
    m->entry = entry;
    return (PyObject *)m;
}

static PyObject *MessageID_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"stream", "shard", "entry", NULL};
    PyObject *stream, *shard;
    unsigned long long entry;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "UOK:MessageID", kwlist, &stream, &shard, &entry))
        return NULL;
    if (!PyLong_CheckExact(shard)) {
        PyErr_SetString(PyExc_TypeError, "MessageID shard must be an int");
        return NULL;
    }
    return mid_new_raw(stream, shard, entry);
}

static void MessageID_dealloc(MessageIDObject *m) {
    PyTypeObject *tp = Py_TYPE((PyObject *)m);
    Py_DECREF(m->stream);
    Py_DECREF(m->shard);
    PyObject_Free(m);   /* PyObject_New allocated it; the type is final */
    Py_DECREF(tp);      /* an instance of a heap type owns a reference to it */
}

static PyObject *mid_tuple(MessageIDObject *m) {
    PyObject *e = PyLong_FromUnsignedLongLong(m->entry);
    if (!e) return NULL;
    PyObject *t = PyTuple_Pack(3, m->stream, m->shard, e);
    Py_DECREF(e);
    return t;
}

static PyObject *MessageID_get_stream(MessageIDObject *m, void *c) { return Py_NewRef(m->stream); }
static PyObject *MessageID_get_shard(MessageIDObject *m, void *c) { return Py_NewRef(m->shard); }
static PyObject *MessageID_get_entry(MessageIDObject *m, void *c) {
    return PyLong_FromUnsignedLongLong(m->entry);
}

static PyGetSetDef MessageID_getset[] = {
    {"stream", (getter)MessageID_get_stream, NULL, "full shard stream name, e.g. events:v1:shard:0003", NULL},
    {"shard", (getter)MessageID_get_shard, NULL, "shard number within its family", NULL},
    {"entry", (getter)MessageID_get_entry, NULL, "entry number within the stream (dense, from 0)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_ssize_t MessageID_len(PyObject *m) { return 3; }

static PyObject *MessageID_item(MessageIDObject *m, Py_ssize_t i) {
    switch (i) {
    case 0: return Py_NewRef(m->stream);
    case 1: return Py_NewRef(m->shard);
    case 2: return PyLong_FromUnsignedLongLong(m->entry);
    }
    PyErr_SetString(PyExc_IndexError, "MessageID index out of range");
    return NULL;
}

static Py_hash_t MessageID_hash(MessageIDObject *m) {
    PyObject *t = mid_tuple(m);
    if (!t) return -1;
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *MessageID_richcompare(PyObject *a, PyObject *b, int op) {
    if (!PyObject_TypeCheck(a, MessageIDType) || !PyObject_TypeCheck(b, MessageIDType))
        Py_RETURN_NOTIMPLEMENTED;
    MessageIDObject *x = (MessageIDObject *)a, *y = (MessageIDObject *)b;
    if (op == Py_EQ || op == Py_NE) {
        int eq = x->entry == y->entry;
        if (eq) {
            eq = PyObject_RichCompareBool(x->stream, y->stream, Py_EQ);
            if (eq < 0) return NULL;
        }
        if (eq) {
            eq = PyObject_RichCompareBool(x->shard, y->shard, Py_EQ);
            if (eq < 0) return NULL;
        }
        return PyBool_FromLong(op == Py_EQ ? eq : !eq);
    }
    PyObject *ta = mid_tuple(x), *tb = mid_tuple(y);
    PyObject *r = (ta && tb) ? PyObject_RichCompare(ta, tb, op) : NULL;
    Py_XDECREF(ta);
    Py_XDECREF(tb);
    return r;
}

static PyObject *MessageID_repr(MessageIDObject *m) {
    return PyUnicode_FromFormat("MessageID(stream=%R, shard=%R, entry=%llu)", m->stream, m->shard,
                                (unsigned long long)m->entry);
}

static PyObject *MessageID_reduce(MessageIDObject *m, PyObject *unused) {
    PyObject *t = mid_tuple(m);
    if (!t) return NULL;
    PyObject *r = Py_BuildValue("(ON)", (PyObject *)Py_TYPE((PyObject *)m), t);
    return r;
}

static PyMethodDef MessageID_methods[] = {
    {"__reduce__", (PyCFunction)MessageID_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Final (no BASETYPE) and immutable (IMMUTABLETYPE: no class attribute can be set),
 * like the static type it replaces; not GC-tracked. */
static PyType_Slot MessageID_slots[] = {
    {Py_tp_doc, "MessageID(stream, shard, entry): identity of one appended entry.\n\n"
                "Immutable and tuple-like: unpacks as (stream, shard, entry), compares and\n"
                "hashes by value, pickles."},
    {Py_tp_new, MessageID_new},
    {Py_tp_dealloc, MessageID_dealloc},
    {Py_tp_repr, MessageID_repr},
    {Py_tp_hash, MessageID_hash},
    {Py_tp_richcompare, MessageID_richcompare},
    {Py_sq_length, MessageID_len},
    {Py_sq_item, MessageID_item},
    {Py_tp_getset, MessageID_getset},
    {Py_tp_methods, MessageID_methods},
    {0, NULL},
};

static PyType_Spec MessageID_spec = {
    .name = "cometmp.MessageID",
    .basicsize = sizeof(MessageIDObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = MessageID_slots,
};

/* ---- key routing: the one implementation of cometmp.pick_shard -------------
 * shard = MurmurHash3_x86_32(key bytes, seed 0) % shard_count, the hash taken as
 * unsigned. str keys hash their UTF-8 bytes (strict: a lone surrogate raises
 * UnicodeEncodeError, as str.encode("utf-8") does); bytes, bytearray and
 * memoryview hash their bytes; any other key is a TypeError. Frozen for every
 * version: tests/data/pick_shard_v1.json. cometmp.pick_shard calls pick_shard
 * below, and the Appender hashes here without calling back into Python. */
static inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static uint32_t murmur3_x86_32(const uint8_t *p, size_t len, uint32_t seed) {
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = seed, k;
    size_t nblocks = len / 4;
    for (size_t i = 0; i < nblocks; i++, p += 4) {
        k = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        k *= c1; k = rotl32(k, 15); k *= c2;
        h ^= k; h = rotl32(h, 13); h = h * 5 + 0xe6546b64u;
    }
    k = 0;
    switch (len & 3) {
    case 3: k ^= (uint32_t)p[2] << 16; /* fall through */
    case 2: k ^= (uint32_t)p[1] << 8;  /* fall through */
    case 1: k ^= p[0];
            k *= c1; k = rotl32(k, 15); k *= c2; h ^= k;
    }
    h ^= (uint32_t)len;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}

/* The hash of a key's bytes by the pick_shard rule; -1 with an exception. */
static int key_hash(PyObject *key, uint32_t seed, uint32_t *h) {
    if (PyUnicode_CheckExact(key) || PyUnicode_Check(key)) {  /* exact: no call when limited */
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(key, &n);
        if (!s) return -1;
        *h = murmur3_x86_32((const uint8_t *)s, (size_t)n, seed);
        return 0;
    }
    if (PyBytes_Check(key)) {
        char *s;
        Py_ssize_t n;
        CM_BYTES(key, &s, &n);
        *h = murmur3_x86_32((const uint8_t *)s, (size_t)n, seed);
        return 0;
    }
    if (PyByteArray_Check(key) || PyMemoryView_Check(key)) {
        /* bytes(key): also flattens a non-contiguous memoryview */
        PyObject *b = PyBytes_FromObject(key);
        if (!b) return -1;
        char *s;
        Py_ssize_t n;
        CM_BYTES(b, &s, &n);
        *h = murmur3_x86_32((const uint8_t *)s, (size_t)n, seed);
        Py_DECREF(b);
        return 0;
    }
    cm_type_error(PyExc_TypeError, "key must be str or bytes-like, not %.100s", key);
    return -1;
}

/* pick_shard(key, shard_count) -> int: the rule above, for cometmp.pick_shard */
static PyObject *mod_pick_shard(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pick_shard(key, shard_count)");
        return NULL;
    }
    PyObject *n = args[1];
    int overflow = 0;
    long long count = 0;
    if (PyLong_Check(n) && !PyBool_Check(n)) count = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (count == -1 && PyErr_Occurred()) return NULL;
    if (!(PyLong_Check(n) && !PyBool_Check(n)) || overflow < 0 || (overflow == 0 && count <= 0)) {
        PyErr_Format(PyExc_ValueError, "shard_count must be a positive int, not %R", n);
        return NULL;
    }
    uint32_t h;
    if (key_hash(args[0], 0, &h) < 0) return NULL;
    /* a count above 2**32 - 1 leaves every hash as it is */
    return PyLong_FromUnsignedLong(overflow || (unsigned long long)count > UINT32_MAX
                                   ? h : h % (uint32_t)count);
}

/* murmur3_x86_32(data, seed=0) -> int: the bare hash (str as UTF-8), for the tests */
static PyObject *mod_murmur3(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    (void)mod;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "murmur3_x86_32(data, seed=0)");
        return NULL;
    }
    unsigned long seed = nargs == 2 ? PyLong_AsUnsignedLongMask(args[1]) : 0;
    if (PyErr_Occurred()) return NULL;
    uint32_t h;
    if (key_hash(args[0], (uint32_t)seed, &h) < 0) return NULL;
    return PyLong_FromUnsignedLong(h);
}

typedef struct {
    PyObject_HEAD
    const cm_api *api;
    uint32_t nshards;
    cm_shard **shards;
    PyObject **names;       /* stream name per shard index */
    PyObject **numbers;     /* PyLong shard number per shard index */
    uint32_t *route;        /* shard indexes used for key=None, round robin */
    uint32_t nroute;
    uint32_t rr;
    PyObject *router;       /* key -> shard index, or None: pick_shard(key, nshards) in C */
    PyObject *compress;     /* bytes -> bytes | None (None: keep verbatim) */
    Py_ssize_t compress_min;
    PyObject *on_error;     /* (rc, index, msg, errno, written) -> True to retry */
    const uint64_t *epoch_ptr; /* shared ownership epoch to watch, or NULL */
    Py_buffer epoch_view;   /* the mapping epoch_ptr points into, held (L4) */
    int has_epoch_view;
    uint64_t epoch_seen;
    PyObject *on_epoch;     /* called when *epoch_ptr changed, before routing */
} Appender;

static void Appender_dealloc(Appender *self) {
    for (uint32_t i = 0; i < self->nshards; i++) {
        if (self->shards && self->shards[i]) self->api->shard_unref(self->shards[i]);
        Py_XDECREF(self->names ? self->names[i] : NULL);
        Py_XDECREF(self->numbers ? self->numbers[i] : NULL);
    }
    PyMem_Free(self->shards);
    PyMem_Free(self->names);
    PyMem_Free(self->numbers);
    PyMem_Free(self->route);
    if (self->has_epoch_view) PyBuffer_Release(&self->epoch_view);
    Py_XDECREF(self->router);
    Py_XDECREF(self->compress);
    Py_XDECREF(self->on_error);
    Py_XDECREF(self->on_epoch);
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);      /* an instance of a heap type owns a reference to it */
}

/* Appender(core_path, names, numbers, router, compress, compress_min, on_error)
 * router: None routes a key by pick_shard(key, nshards) here (shard index ==
 * shard number); a callable key -> index is called instead (strict ownership). */
static int Appender_init(Appender *self, PyObject *args, PyObject *kw) {
    PyObject *core, *names, *numbers, *router, *compress, *on_error;
    Py_ssize_t cmin;
    if (!PyArg_ParseTuple(args, "UO!O!OOnO", &core, &PyList_Type, &names, &PyList_Type,
                          &numbers, &router, &compress, &cmin, &on_error))
        return -1;
    const cm_api *api = (const cm_api *)cm_core_api(core, CM_API_VERSION);
    if (!api) return -1;
    if (!api->shard_ref) {
        PyErr_SetString(PyExc_ImportError, "cometmp: core API table lacks shard_ref");
        return -1;
    }
    Py_ssize_t n = CM_LIST_SIZE(names);
    if (n <= 0 || n != CM_LIST_SIZE(numbers) || n > 1000000) {
        PyErr_SetString(PyExc_ValueError, "names and numbers must be equal, non-empty lists");
        return -1;
    }
    self->api = api;
    self->nshards = (uint32_t)n;
    self->shards = PyMem_Calloc((size_t)n, sizeof(cm_shard *));
    self->names = PyMem_Calloc((size_t)n, sizeof(PyObject *));
    self->numbers = PyMem_Calloc((size_t)n, sizeof(PyObject *));
    self->route = PyMem_Calloc((size_t)n, sizeof(uint32_t));
    if (!self->shards || !self->names || !self->numbers || !self->route) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->names[i] = Py_NewRef(CM_LIST_ITEM(names, i));
        self->numbers[i] = Py_NewRef(CM_LIST_ITEM(numbers, i));
        self->route[i] = (uint32_t)i;
    }
    self->nroute = (uint32_t)n;
    self->router = Py_NewRef(router);
    self->compress = Py_NewRef(compress);
    self->compress_min = cmin;
    self->on_error = Py_NewRef(on_error);
    return 0;
}

/* set_handle(index, ref): install (or replace, after a fork) a shard handle.
 * `ref` is Writer.ref(), a buffer over the head of the cm_shard (its magic);
 * the slot takes its own reference (L3). None detaches the slot: later
 * appends to it fail with CM_E_CLOSED. */
static PyObject *Appender_set_handle(Appender *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_handle(index, ref)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    if (PyErr_Occurred()) return NULL;
    if (i < 0 || (uint32_t)i >= self->nshards) {
        PyErr_SetString(PyExc_IndexError, "shard index out of range");
        return NULL;
    }
    cm_shard *sh = NULL;
    if (args[1] != Py_None) {
        Py_buffer v;
        if (PyObject_GetBuffer(args[1], &v, PyBUF_SIMPLE) < 0) return NULL;
        sh = v.len >= 8 ? self->api->shard_ref(v.buf) : NULL;
        PyBuffer_Release(&v);
        if (!sh) {
            PyErr_SetString(PyExc_TypeError, "set_handle expects Writer.ref() or None");
            return NULL;
        }
    }
    cm_shard *old = self->shards[i];
    self->shards[i] = sh;
    if (old) self->api->shard_unref(old);
    Py_RETURN_NONE;
}

/* set_route(indexes): the shards key=None appends spread over */
static PyObject *Appender_set_route(Appender *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "set_route expects a sequence of shard indexes");
    if (!seq) return NULL;
    Py_ssize_t n = CM_FAST_SIZE(seq);
    if (n <= 0 || n > (Py_ssize_t)self->nshards) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "route must name 1..nshards shard indexes");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t v = PyLong_AsSsize_t(CM_FAST_ITEM(seq, i));
        if (v < 0 || (uint32_t)v >= self->nshards) {
            Py_DECREF(seq);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "shard index out of range");
            return NULL;
        }
        self->route[i] = (uint32_t)v;
    }
    self->nroute = (uint32_t)n;
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

/* set_epoch_watch(mapping, offset, callback): before routing each append, compare
 * the uint64 at `offset` of `mapping` (a buffer: the registry's shared mapping,
 * where the ownership epoch lives) with the last value seen, and call callback()
 * when it changed, so routing follows ownership at the next append. The Appender
 * holds a buffer export of the mapping until the watch is replaced or it dies, so
 * the word cannot be unmapped under it (L4). set_epoch_watch(None, 0, None) stops. */
static void drop_epoch_view(Appender *self) {
    self->epoch_ptr = NULL;
    if (self->has_epoch_view) {
        PyBuffer_Release(&self->epoch_view);
        self->has_epoch_view = 0;
    }
}

static PyObject *Appender_set_epoch_watch(Appender *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set_epoch_watch(mapping, offset, callback)");
        return NULL;
    }
    if (args[0] == Py_None) {
        drop_epoch_view(self);
        CM_XSETREF(self->on_epoch, NULL);
        Py_RETURN_NONE;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred()) return NULL;
    if (!PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    if (off < 0 || off % 8 || off + 8 > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "epoch offset outside the mapping or unaligned");
        return NULL;
    }
    drop_epoch_view(self);
    self->epoch_view = view;
    self->has_epoch_view = 1;
    CM_XSETREF(self->on_epoch, Py_NewRef(args[2]));
    self->epoch_ptr = (const uint64_t *)((const char *)view.buf + off);
    self->epoch_seen = __atomic_load_n(self->epoch_ptr, __ATOMIC_ACQUIRE);
    Py_RETURN_NONE;
}

static int pick(Appender *self, PyObject *key, uint32_t *idx) {
    if (self->epoch_ptr) {
        uint64_t e = __atomic_load_n(self->epoch_ptr, __ATOMIC_ACQUIRE);
        if (e != self->epoch_seen) {
            self->epoch_seen = e;
            PyObject *r = PyObject_CallNoArgs(self->on_epoch);
            if (!r) return -1;
            Py_DECREF(r);
        }
    }
    if (key == NULL || key == Py_None) {
        *idx = self->route[self->rr++ % self->nroute];
        return 0;
    }
    if (self->router == Py_None) {
        uint32_t h;
        if (key_hash(key, 0, &h) < 0) return -1;
        *idx = h % self->nshards;
        return 0;
    }
    PyObject *r = CM_CALL1(self->router, key);
    if (!r) return -1;
    Py_ssize_t v = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || (uint32_t)v >= self->nshards) {
        PyErr_SetString(PyExc_IndexError, "router returned a shard index out of range");
        return -1;
    }
    *idx = (uint32_t)v;
    return 0;
}

/* Report a core error through Python; returns 1 to retry, -1 with an exception. */
static int report(Appender *self, int rc, uint32_t idx, uint32_t written) {
    PyObject *r = PyObject_CallFunction(self->on_error, "iIsiI", rc, idx,
                                        self->api->last_error(), self->api->last_errno(),
                                        written);
    if (!r) return -1;
    int retry = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (retry == 1) return 1;
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "cometmp: append failed with code %d", rc);
    return -1;
}

static int call_core(Appender *self, uint32_t idx, cm_iov *iov, uint32_t n, uint64_t total,
                     uint64_t *first, uint32_t *written) {
    cm_shard *sh = self->shards[idx];
    int rc;
    if (total < BIG_BATCH_BYTES) {
        rc = self->api->append(sh, iov, n, first, written, 1);
        if (rc != CM_E_BUSY) return rc;
    }
    if (!sh) return self->api->append(sh, iov, n, first, written, 0);   /* CM_E_CLOSED */
    /* L3: without the GIL, set_handle() may drop the slot's reference meanwhile */
    self->api->shard_ref(sh);
    Py_BEGIN_ALLOW_THREADS
    rc = self->api->append(sh, iov, n, first, written, 0);
    Py_END_ALLOW_THREADS
    self->api->shard_unref(sh);
    return rc;
}

/* E4: a record's length is a u32 (FORMAT.md §2.2): a longer payload is refused as
 * EntryTooLarge (through on_error, the one error path), never narrowed to
 * len % 2^32. Every place that stores a Python length into cm_iov.len checks
 * it with fits_frame() first. Returns -1 with the exception set. */
static inline int fits_frame(Py_ssize_t len) { return (uint64_t)len <= UINT32_MAX; }

static int refuse_too_big(Appender *self, Py_ssize_t item, Py_ssize_t len) {
    char msg[256];
    snprintf(msg, sizeof msg, "payload #%zd of the call is %zd bytes, more than the 4 GiB - 1 "
             "a record can hold (and than max_entry_bytes, at most 1 GiB); nothing was written",
             item, len);
    PyObject *r = PyObject_CallFunction(self->on_error, "iIsiI", CM_E_TOOBIG, UINT32_MAX, msg,
                                        0, 0u);
    Py_XDECREF(r);
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, msg);
    return -1;
}

/* Fill one iov from a bytes-like object; *view is used for non-bytes. `item` is
 * its position in the call (for messages). */
static int get_payload(Appender *self, Py_ssize_t item, PyObject *o, cm_iov *iov,
                       Py_buffer *view, int *has_view) {
    *has_view = 0;
    if (PyBytes_CheckExact(o)) {
        char *s;
        Py_ssize_t n;
        CM_BYTES(o, &s, &n);
        iov->data = s;
        if (!fits_frame(n)) return refuse_too_big(self, item, n);
        iov->len = (uint32_t)n;
        iov->flags = 0;
        return 0;
    }
    if (PyUnicode_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "payload must be bytes-like, not str (encode it, e.g. s.encode())");
        return -1;
    }
    if (!PyObject_CheckBuffer(o)) {
        cm_type_error(PyExc_TypeError, "payload must be bytes-like, not %.100s", o);
        return -1;
    }
    if (PyObject_GetBuffer(o, view, PyBUF_SIMPLE) != 0) return -1;
    *has_view = 1;
    if (!fits_frame(view->len)) return refuse_too_big(self, item, view->len);
    iov->data = view->buf;
    iov->len = (uint32_t)view->len;
    iov->flags = 0;
    return 0;
}

/* Compress when configured and worthwhile; *keep holds the compressed bytes. */
static int maybe_compress(Appender *self, PyObject *o, cm_iov *iov, PyObject **keep) {
    *keep = NULL;
    if (self->compress == Py_None || (Py_ssize_t)iov->len < self->compress_min)
        return 0;
    PyObject *mv = PyMemoryView_FromMemory((char *)iov->data, iov->len, PyBUF_READ);
    if (!mv) return -1;
    PyObject *c = CM_CALL1(self->compress, mv);
    Py_DECREF(mv);
    (void)o;
    if (!c) return -1;
    if (c == Py_None) { Py_DECREF(c); return 0; }
    if (!PyBytes_Check(c)) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_TypeError, "compressor must return bytes or None");
        return -1;
    }
    char *s;
    Py_ssize_t len;
    CM_BYTES(c, &s, &len);
    if (!fits_frame(len)) {   /* cannot happen for zstd output smaller than its input */
        Py_DECREF(c);
        return refuse_too_big(self, 0, len);
    }
    iov->data = s;
    iov->len = (uint32_t)len;
    iov->flags = CM_REC_FLAG_ZSTD;
    *keep = c;
    return 0;
}

static PyObject *make_id(Appender *self, uint32_t idx, uint64_t entry) {
    return mid_new_raw(self->names[idx], self->numbers[idx], entry);
}

static int parse_key(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     const char *fname, PyObject **data, PyObject **key) {
    *key = NULL;
    Py_ssize_t nkw = kwnames ? CM_TUPLE_SIZE(kwnames) : 0;
    if (nargs < 1 || nargs > 2 || nargs + nkw > 2) {
        PyErr_Format(PyExc_TypeError, "%s(data, key=None)", fname);
        return -1;
    }
    *data = args[0];
    if (nargs == 2) *key = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = CM_TUPLE_ITEM(kwnames, i);
        if (!PyUnicode_Check(k) || PyUnicode_CompareWithASCIIString(k, "key") != 0 || *key) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname, k);
            return -1;
        }
        *key = args[nargs + i];
    }
    return 0;
}

/* append(data, key=None) -> MessageID */
static PyObject *Appender_append(Appender *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    PyObject *data, *key;
    if (parse_key(args, nargs, kwnames, "append", &data, &key) < 0) return NULL;
    cm_iov iov;
    Py_buffer view;
    int has_view;
    if (get_payload(self, 0, data, &iov, &view, &has_view) < 0) {
        if (has_view) PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *keep = NULL, *result = NULL;
    uint32_t idx;
    if (pick(self, key, &idx) < 0) goto done;
    if (maybe_compress(self, data, &iov, &keep) < 0) goto done;
    for (;;) {
        uint64_t first;
        uint32_t written;
        int rc = call_core(self, idx, &iov, 1, iov.len, &first, &written);
        if (rc == CM_OK) {
            result = make_id(self, idx, first);
            break;
        }
        if (report(self, rc, idx, written) < 0) break;
    }
done:
    Py_XDECREF(keep);
    if (has_view) PyBuffer_Release(&view);
    return result;
}

/* Fill iov from the leading items of seq (a PySequence_Fast result) that are bytes
 * shorter than verbatim_below; returns the index of the first other item. A loop of its
 * own, specialised for a list and a tuple, so that under the limited API (a call per
 * item access) it keeps few live values and no per-item type test of seq. */
static inline __attribute__((always_inline)) Py_ssize_t
fill_verbatim(PyObject *seq, const int is_list, Py_ssize_t n, Py_ssize_t verbatim_below,
              cm_iov *iov, uint64_t *total) {
    uint64_t t = 0;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        PyObject *o = CM_FAST_ITEM_OF(seq, is_list, i);
        if (!PyBytes_CheckExact(o)) break;
        char *s;
        Py_ssize_t len;
        CM_BYTES(o, &s, &len);
        if (len >= verbatim_below || !fits_frame(len)) break;   /* the general loop refuses it */
        iov[i].data = s;
        iov[i].len = (uint32_t)len;
        iov[i].flags = 0;
        t += (uint32_t)len;
    }
    *total = t;
    return i;
}

/* append_many(items, key=None) -> (shard_index, first_entry, count) */
static PyObject *Appender_append_many(Appender *self, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames) {
    PyObject *items, *key;
    if (parse_key(args, nargs, kwnames, "append_many", &items, &key) < 0) return NULL;
    if (PyBytes_Check(items) || PyUnicode_Check(items) || PyByteArray_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "append_many expects an iterable of bytes-like payloads");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items, "append_many expects an iterable of bytes-like payloads");
    if (!seq) return NULL;
    Py_ssize_t n = CM_FAST_SIZE(seq);
    PyObject *result = NULL;
    cm_iov stack_iov[64];
    cm_iov *iov = stack_iov;
    Py_buffer *views = NULL;
    PyObject **keeps = NULL;
    Py_ssize_t nviews = 0;
    uint32_t idx;
    if (n > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many entries in one call");
        goto done;
    }
    if (pick(self, key, &idx) < 0) goto done;
    if (n == 0) {
        result = Py_BuildValue("IKI", idx, (unsigned long long)0, 0u);
        goto done;
    }
    if (n > 64) {
        iov = PyMem_Malloc(sizeof(cm_iov) * (size_t)n);
        if (!iov) { PyErr_NoMemory(); goto done; }
    }
    uint64_t total = 0;
    int need_keeps = self->compress != Py_None;
    Py_ssize_t i;
    /* the common case first: leading bytes payloads that stay verbatim */
    const Py_ssize_t verbatim_below = need_keeps ? self->compress_min : PY_SSIZE_T_MAX;
    if (PyList_CheckExact(seq))
        i = fill_verbatim(seq, 1, n, verbatim_below, iov, &total);
    else
        i = fill_verbatim(seq, 0, n, verbatim_below, iov, &total);
    for (; i < n; i++) {
        PyObject *o = CM_FAST_ITEM(seq, i);
        if (PyBytes_CheckExact(o)) {
            char *s;
            Py_ssize_t len;
            CM_BYTES(o, &s, &len);
            if (!fits_frame(len)) { refuse_too_big(self, i, len); goto done; }
            iov[i].data = s;
            iov[i].len = (uint32_t)len;
            iov[i].flags = 0;
        } else {
            if (!views) {
                views = PyMem_Calloc((size_t)n, sizeof(Py_buffer));
                if (!views) { PyErr_NoMemory(); goto done; }
            }
            int hv;
            int rc = get_payload(self, i, o, &iov[i], &views[nviews], &hv);
            if (hv) nviews++;   /* released at done, also when it was refused */
            if (rc < 0) goto done;
        }
        if (need_keeps && (Py_ssize_t)iov[i].len >= self->compress_min) {
            if (!keeps) {
                keeps = PyMem_Calloc((size_t)n, sizeof(PyObject *));
                if (!keeps) { PyErr_NoMemory(); goto done; }
            }
            if (maybe_compress(self, o, &iov[i], &keeps[i]) < 0) goto done;
        }
        total += iov[i].len;
    }
    uint32_t done_n = 0;
    uint64_t first_all = 0;
    for (;;) {
        uint64_t first;
        uint32_t written;
        int rc = call_core(self, idx, iov + done_n, (uint32_t)n - done_n, total, &first, &written);
        if (done_n == 0) first_all = first;
        done_n += written;
        if (rc == CM_OK) {
            result = Py_BuildValue("IKI", idx, (unsigned long long)first_all, done_n);
            break;
        }
        if (report(self, rc, idx, done_n) < 0) break;
        if (done_n == 0) continue;
        /* a retry after partial progress (e.g. reopened after fork) must keep
           the batch contiguous: report what landed instead */
        PyErr_Format(PyExc_RuntimeError, "append_many interrupted after %u entries", done_n);
        break;
    }
done:
    if (keeps) {
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(keeps[i]);
        PyMem_Free(keeps);
    }
    for (Py_ssize_t i = 0; i < nviews; i++) PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    if (iov != stack_iov) PyMem_Free(iov);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef Appender_methods[] = {
    {"append", (PyCFunction)(void (*)(void))Appender_append, METH_FASTCALL | METH_KEYWORDS,
     "append(data, key=None) -> MessageID"},
    {"append_many", (PyCFunction)(void (*)(void))Appender_append_many,
     METH_FASTCALL | METH_KEYWORDS, "append_many(items, key=None) -> (index, first, count)"},
    {"set_handle", (PyCFunction)(void (*)(void))Appender_set_handle, METH_FASTCALL,
     "set_handle(index, ref)"},
    {"set_route", (PyCFunction)Appender_set_route, METH_O, "set_route(indexes)"},
    {"set_epoch_watch", (PyCFunction)(void (*)(void))Appender_set_epoch_watch, METH_FASTCALL,
     "set_epoch_watch(mapping, offset, callback)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Appender_slots[] = {
    {Py_tp_doc, "Fast append path over a set of shard handles. Internal."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Appender_init},
    {Py_tp_dealloc, Appender_dealloc},
    {Py_tp_methods, Appender_methods},
    {0, NULL},
};

static PyType_Spec Appender_spec = {
    .name = "cometmp._appender.Appender",
    .basicsize = sizeof(Appender),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Appender_slots,
};

static PyMethodDef module_methods[] = {
    {"pick_shard", (PyCFunction)(void (*)(void))mod_pick_shard, METH_FASTCALL,
     "pick_shard(key, shard_count) -> int: murmur3 x86_32 (seed 0) of the key's bytes % count"},
    {"murmur3_x86_32", (PyCFunction)(void (*)(void))mod_murmur3, METH_FASTCALL,
     "murmur3_x86_32(data, seed=0) -> int (unsigned; str hashed as UTF-8)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "cometmp._appender",
    "CPython fast path for cometmp appends (see native/appender.c).", -1, module_methods,
};

/* Single-phase init: the module, and so both types, live until the process ends;
 * MessageIDType keeps one reference of its own for mid_new_raw. */
PyMODINIT_FUNC PyInit__appender(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyObject *app = PyType_FromSpec(&Appender_spec);
    if (!MessageIDType) MessageIDType = (PyTypeObject *)PyType_FromSpec(&MessageID_spec);
    if (!app || !MessageIDType || PyModule_AddObjectRef(m, "Appender", app) < 0 ||
        PyModule_AddObjectRef(m, "MessageID", (PyObject *)MessageIDType) < 0) {
        Py_XDECREF(app);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(app);
    return m;
}
