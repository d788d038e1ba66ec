/* reader.c - cometmp._reader: the batch reader behind Consumer.read().
 *
 * Who may call: cometmp/consumer.py only; not thread safe (one Batch per
 * reading thread). Python-level work per record (a cffi call, a RecordRef, a
 * slice) costs ~1 us, twenty times the budget of a 5 M entries/s reader, so
 * the record walk and the per-entry objects live here. The record rules stay
 * the core's: records come from the one walker (walker.c: V1-V5 and FORMAT.md
 * 2.4), reached through the function table the cffi module exports (api.c), so
 * both extensions share one copy of the code.
 *
 * A Batch holds, per entry, a pointer into a segment mapping plus length,
 * flags, timestamp, entry number and stream index; it keeps every mapping it
 * points into exported (PyObject_GetBuffer) for as long as it lives, so an
 * mmap.close() elsewhere cannot unmap them (Segment.close() then leaves the
 * unmap to the GC). Entries are materialised lazily:
 *
 *   batch[i]          StreamMessage(MessageID, data, timestamp_ns, deliveries), cached
 *   batch.payloads()  list of the data objects only (the fast path)
 *
 * data is bytes (a copy) by default; with zero_copy it is a read-only
 * memoryview over the mapping (view_of) that keeps the mapping exported, so a
 * view can never outlive its bytes, whatever happens to the Batch (full API:
 * every view of one mapping shares one managed buffer; limited API: one small
 * exporter per mapping, a Span). A compressed record is always decompressed
 * into bytes.
 */
#include "pyapi.h"        /* Python.h, and what differs under the limited API */
#include <stdint.h>
#include <stddef.h>
#include "cometmp.h"
#include "internal.h"
#include "structmember.h"  /* PyMemberDef, T_PYSSIZET (3.11: not in Python.h) */

static const cm_api *api;
static PyObject *StreamMessageType;   /* cometmp.StreamMessage (a tuple subclass) */
static PyObject *MessageIDType;       /* cometmp.MessageID */
static allocfunc sm_alloc;            /* StreamMessage's tp_alloc */
static PyObject *decompress_fn;       /* bytes -> bytes */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n, cap;
    const uint8_t **ptr;
    uint32_t *len;
    uint32_t *flags;
    int64_t *ts;
    uint64_t *entry;
    uint32_t *dl;             /* deliveries of the entry (1 unless set_deliveries said) */
    uint32_t *sidx;
    uint32_t *hidx;           /* index into held/bases of the entry's mapping */
    PyObject **items;         /* cached StreamMessage per entry (lazily) */
    PyObject *names;          /* list: stream name per stream index */
    PyObject *shards;         /* list: shard number per stream index */
    Py_buffer *held;          /* exported mappings */
    PyObject **bases;         /* per held mapping, what view_of makes views from */
    Py_ssize_t nheld, capheld;
    Py_ssize_t exports;       /* live memoryviews over this batch */
    Py_ssize_t export_index;  /* entry the next getbuffer exports */
    int zero_copy;
    PyObject *weakrefs;
    PyObject *dict;
} Batch;

static int ensure_cap(Batch *b, Py_ssize_t need) {
    if (need <= b->cap) return 0;
    Py_ssize_t c = b->cap ? b->cap : 16;
    while (c < need) c *= 2;
#define GROW(f, T) do { T *p = PyMem_Realloc(b->f, (size_t)c * sizeof(T)); \
        if (!p) { PyErr_NoMemory(); return -1; } b->f = p; } while (0)
    GROW(ptr, const uint8_t *);
    GROW(len, uint32_t);
    GROW(flags, uint32_t);
    GROW(ts, int64_t);
    GROW(entry, uint64_t);
    GROW(dl, uint32_t);
    GROW(sidx, uint32_t);
    GROW(hidx, uint32_t);
    GROW(items, PyObject *);
#undef GROW
    memset(b->items + b->cap, 0, (size_t)(c - b->cap) * sizeof(PyObject *));
    b->cap = c;
    return 0;
}

static void drop_items(Batch *b) {
    if (b->items)
        for (Py_ssize_t i = 0; i < b->n; i++) Py_CLEAR(b->items[i]);
}

static void release_held(Batch *b) {
    for (Py_ssize_t i = 0; i < b->nheld; i++) {
        Py_CLEAR(b->bases[i]);
        PyBuffer_Release(&b->held[i]);
    }
    b->nheld = 0;
}

static int Batch_traverse(Batch *b, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE((PyObject *)b));   /* a heap type: its instances own a reference */
    if (b->items)
        for (Py_ssize_t i = 0; i < b->n; i++) Py_VISIT(b->items[i]);
    Py_VISIT(b->names);
    Py_VISIT(b->shards);
    Py_VISIT(b->dict);
    for (Py_ssize_t i = 0; i < b->nheld; i++) Py_VISIT(b->bases[i]);
    return 0;
}

static int Batch_clear(Batch *b) {
    drop_items(b);
    Py_CLEAR(b->names);
    Py_CLEAR(b->shards);
    Py_CLEAR(b->dict);
    return 0;
}

static void Batch_dealloc(Batch *b) {
    PyObject_GC_UnTrack(b);
    if (b->weakrefs) PyObject_ClearWeakRefs((PyObject *)b);
    Batch_clear(b);
    release_held(b);
    PyMem_Free(b->held);
    PyMem_Free(b->bases);
    PyMem_Free(b->ptr); PyMem_Free(b->len); PyMem_Free(b->flags); PyMem_Free(b->ts);
    PyMem_Free(b->entry); PyMem_Free(b->dl); PyMem_Free(b->sidx); PyMem_Free(b->hidx); PyMem_Free(b->items);
    PyTypeObject *tp = Py_TYPE((PyObject *)b);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(b);
    Py_DECREF(tp);      /* a subclass's subtype_dealloc leaves this to its heap base */
}

static PyObject *Batch_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    int zero_copy = 0;
    static char *kwlist[] = {"zero_copy", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &zero_copy)) return NULL;
    Batch *b = (Batch *)((allocfunc)PyType_GetSlot(type, Py_tp_alloc))(type, 0);
    if (!b) return NULL;
    b->zero_copy = zero_copy;
    b->names = PyList_New(0);
    b->shards = PyList_New(0);
    if (!b->names || !b->shards) { Py_DECREF(b); return NULL; }
    return (PyObject *)b;
}

static int Batch_init(PyObject *self, PyObject *args, PyObject *kw) { return 0; }

/* hold(mm) -> index of the exported buffer for mapping object mm */
static Py_ssize_t hold(Batch *b, PyObject *mm) {
    for (Py_ssize_t i = b->nheld; i-- > 0;)
        if (b->held[i].obj == mm) return i;
    if (b->nheld == b->capheld) {
        Py_ssize_t c = b->capheld ? b->capheld * 2 : 4;
        Py_buffer *p = PyMem_Realloc(b->held, (size_t)c * sizeof(Py_buffer));
        if (!p) { PyErr_NoMemory(); return -1; }
        b->held = p;
        PyObject **q = PyMem_Realloc(b->bases, (size_t)c * sizeof(PyObject *));
        if (!q) { PyErr_NoMemory(); return -1; }
        b->bases = q; b->capheld = c;
    }
    if (PyObject_GetBuffer(mm, &b->held[b->nheld], PyBUF_SIMPLE) < 0) return -1;
    b->bases[b->nheld] = NULL;
    return b->nheld++;
}

/* add_stream(name, shard) -> stream index used by fill() */
static PyObject *Batch_add_stream(Batch *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_stream(name, shard)");
        return NULL;
    }
    if (PyList_Append(b->names, args[0]) < 0 || PyList_Append(b->shards, args[1]) < 0) return NULL;
    return PyLong_FromSsize_t(CM_LIST_SIZE(b->names) - 1);
}

enum { FILL_MORE = 0, FILL_END = 1, FILL_DAMAGED = 2 };

/* fill(stream_index, mapping, base, off, seq, stop_seq, max_n[, key])
 *   -> (off, seq, added, status, lost, resume, end)
 * key: the bytes of the cm_seg_key the segment is read with (Segment.key: the
 * stream's identity, I17); without it, the one the segment's header names.
 * Appends the valid records of one segment from (off, seq) while seq <
 * stop_seq (I2: never past the published count, which is also the count below
 * which an end of data is damage) and added < max_n, walking with the core's
 * one walker (walker.c, through the api.c table).
 * status: 0 stopped at a limit (max_n or stop_seq); 2 damage at (off, seq),
 * not consumed (1, the end of the segment's data, no longer occurs: below
 * stop_seq an end of data is damage): `lost` entries are lost, and with end ==
 * CM_DAMAGE_RESYNC the walk continues at (resume, seq + lost); with
 * CM_DAMAGE_LIMIT nothing valid follows below stop_seq. The caller decides
 * (a stale mapping of a replaced segment looks like damage, consumer.py). */
static PyObject *Batch_fill(Batch *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "fill(stream_index, mapping, base, off, seq, stop_seq, max_n[, key])");
        return NULL;
    }
    cm_seg_key key;
    int have_key = 0;
    if (nargs == 8) {
        Py_buffer kb;
        if (PyObject_GetBuffer(args[7], &kb, PyBUF_SIMPLE) < 0) return NULL;
        have_key = kb.len == (Py_ssize_t)sizeof key;
        if (have_key) memcpy(&key, kb.buf, sizeof key);
        PyBuffer_Release(&kb);
        if (!have_key) {
            PyErr_SetString(PyExc_ValueError, "key must be the bytes of a cm_seg_key");
            return NULL;
        }
    }
    Py_ssize_t si = PyLong_AsSsize_t(args[0]);
    unsigned long long base = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long off = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[4]);
    unsigned long long stop = PyLong_AsUnsignedLongLong(args[5]);
    Py_ssize_t max_n = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (si < 0 || si >= CM_LIST_SIZE(b->names)) {
        PyErr_SetString(PyExc_IndexError, "stream index out of range");
        return NULL;
    }
    if (seq > CM_REC_SEQ_MASK || stop > CM_REC_SEQ_MASK + 1ull) {
        PyErr_SetString(PyExc_ValueError, "sequence out of range");
        return NULL;
    }
    if (b->exports) {
        PyErr_SetString(PyExc_BufferError, "cannot grow a batch while views of it exist");
        return NULL;
    }
    Py_ssize_t h = hold(b, args[1]);
    if (h < 0) return NULL;
    const uint8_t *map = b->held[h].buf;
    uint64_t size = (uint64_t)b->held[h].len;
    if (max_n < 0) max_n = 0;
    /* room for the records that exist below stop_seq, not for the whole budget: a
     * consumer woken for one entry of read(max_messages=1000000) must not allocate
     * and clear arrays for a million (fresh pages, faulted on the wake path) */
    if ((unsigned long long)max_n > stop - (stop > seq ? seq : stop))
        max_n = (Py_ssize_t)(stop - (stop > seq ? seq : stop));
    if (ensure_cap(b, b->n + max_n) < 0) return NULL;
    Py_ssize_t added = 0;
    int status = FILL_MORE;
    cm_walk w;
    cm_record r;
    cm_damage d = {0};
    api->walk_init(&w, map, size, base, off, (uint32_t)seq, (uint32_t)stop, (uint32_t)stop);
    if (have_key) {
        key.base = base;             /* always the caller's (the file name's) */
        w.key = key;
    }
    Py_ssize_t n = b->n;
    for (;;) {
        if (added >= max_n) break;
        uint64_t at = w.off;
        uint32_t at_seq = w.seq;
        int rc = api->walk_next(&w, &r, &d);
        if (rc == CM_WALK_DONE) break;
        if (rc == CM_WALK_DAMAGE) {
            status = FILL_DAMAGED;
            w.off = at;              /* report the damage where it starts */
            w.seq = at_seq;
            break;
        }
        b->ptr[n] = map + r.offset + CM_REC_HEADER_BYTES;
        b->len[n] = r.len;
        b->flags[n] = r.flags;
        b->ts[n] = r.ts_ns;
        b->entry[n] = base + r.seq;
        b->dl[n] = 1;
        b->sidx[n] = (uint32_t)si;
        b->hidx[n] = (uint32_t)h;
        n++;
        added++;
    }
    b->n = n;
    return Py_BuildValue("(KKniIKi)", (unsigned long long)w.off, (unsigned long long)w.seq, added,
                         status, (unsigned int)(status == FILL_DAMAGED ? d.lost : 0),
                         (unsigned long long)(status == FILL_DAMAGED ? d.resume : w.off),
                         status == FILL_DAMAGED ? d.end : 0);
}

#ifdef Py_LIMITED_API
/* The limited API hides a memoryview's fields, so the full build's narrowing below is
 * not possible, and slicing a base view costs 3.5 times the view (a slice object and two
 * ints per entry, measured). Instead each held mapping gets a Span: a small exporter that
 * keeps the mapping exported for its own life and exports the one range it is told,
 * read-only. A view of entry i is a memoryview of the Span, so the view keeps the mapping
 * (not the Batch: no cycle through cached messages) exported, mmap.close() elsewhere
 * fails, and the GC unmaps once the last view is gone. */
typedef struct {
    PyObject_HEAD
    Py_buffer map;            /* the mapping, exported while the Span lives */
    const uint8_t *next;      /* the range the next getbuffer exports (then NULL) */
    Py_ssize_t next_len;
} Span;

static PyTypeObject *SpanType;

static int Span_getbuffer(Span *sp, Py_buffer *view, int flags) {
    const uint8_t *p = sp->next;
    sp->next = NULL;
    if (!p) {
        PyErr_SetString(PyExc_BufferError, "a Batch exports its entries only through payloads()");
        view->obj = NULL;
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)sp, (void *)p, sp->next_len, 1, flags);
}

static void Span_dealloc(Span *sp) {
    PyTypeObject *tp = Py_TYPE((PyObject *)sp);
    if (sp->map.obj) PyBuffer_Release(&sp->map);
    PyObject_Free(sp);
    Py_DECREF(tp);
}

static PyType_Slot Span_slots[] = {
    {Py_tp_dealloc, Span_dealloc},
    {Py_bf_getbuffer, Span_getbuffer},
    {0, NULL},
};

static PyType_Spec Span_spec = {
    .name = "cometmp._reader._Span",
    .basicsize = sizeof(Span),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Span_slots,
};

static PyObject *view_of(Batch *b, Py_ssize_t i) {
    uint32_t h = b->hidx[i];
    Span *sp = (Span *)b->bases[h];
    if (!sp) {
        sp = PyObject_New(Span, SpanType);
        if (!sp) return NULL;
        sp->map.obj = NULL;
        sp->next = NULL;
        if (PyObject_GetBuffer(b->held[h].obj, &sp->map, PyBUF_SIMPLE) < 0) {
            Py_DECREF(sp);
            return NULL;
        }
        if (sp->map.buf != b->held[h].buf) {     /* an exporter that moves: the slow path */
            Py_DECREF(sp);
            b->export_index = i;
            return PyMemoryView_FromObject((PyObject *)b);
        }
        b->bases[h] = (PyObject *)sp;
    }
    sp->next = b->ptr[i];
    sp->next_len = (Py_ssize_t)b->len[i];
    return PyMemoryView_FromObject((PyObject *)sp);
}
#else
/* A read-only memoryview of entry i that shares one managed buffer per mapping:
 * PyMemoryView_FromObject(view) registers a new view on the base view's managed
 * buffer (one object, where a view of a fresh exporter costs two), then we narrow it
 * to the entry exactly as a 1-D slice would (buf, len, shape; strides and flags of
 * a contiguous byte view do not change). The view keeps the mapping exported, so an
 * mmap.close() elsewhere fails and the GC unmaps once the last view is gone. */
static PyObject *view_of(Batch *b, Py_ssize_t i) {
    uint32_t h = b->hidx[i];
    if (!b->bases[h]) {
        PyObject *base = PyMemoryView_FromObject(b->held[h].obj);
        if (!base) return NULL;
        PyMemoryViewObject *bm = (PyMemoryViewObject *)base;
        if (bm->view.ndim != 1 || bm->view.itemsize != 1 || bm->view.strides[0] != 1) {
            Py_DECREF(base);
            b->export_index = i;                 /* unusual exporter: the slow path */
            return PyMemoryView_FromObject((PyObject *)b);
        }
        b->bases[h] = base;
    }
    PyObject *v = PyMemoryView_FromObject(b->bases[h]);
    if (!v) return NULL;
    PyMemoryViewObject *m = (PyMemoryViewObject *)v;
    m->view.buf = (void *)b->ptr[i];
    m->view.len = (Py_ssize_t)b->len[i];
    m->view.shape[0] = (Py_ssize_t)b->len[i];
    m->view.readonly = 1;
    return v;
}
#endif

static PyObject *payload(Batch *b, Py_ssize_t i) {
    if (b->flags[i] & CM_REC_FLAG_ZSTD) {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)b->ptr[i], b->len[i]);
        if (!raw) return NULL;
        PyObject *out = CM_CALL1(decompress_fn, raw);
        Py_DECREF(raw);
        return out;
    }
    if (!b->zero_copy)
        return PyBytes_FromStringAndSize((const char *)b->ptr[i], b->len[i]);
    return view_of(b, i);
}

static PyObject *message(Batch *b, Py_ssize_t i) {
    if (b->items[i]) return Py_NewRef(b->items[i]);
    PyObject *data = payload(b, i);
    if (!data) return NULL;
    PyObject *entry = PyLong_FromUnsignedLongLong(b->entry[i]);
    PyObject *ts = PyLong_FromLongLong(b->ts[i]);
    PyObject *dl = PyLong_FromUnsignedLong(b->dl[i]);
    PyObject *id = NULL, *msg = NULL;
    if (entry && ts && dl) {
        PyObject *a[3] = {CM_LIST_ITEM(b->names, b->sidx[i]),
                          CM_LIST_ITEM(b->shards, b->sidx[i]), entry};
        /* MessageID(stream, shard, entry); it has no vectorcall, so both build a tuple */
#ifdef Py_LIMITED_API
        id = PyObject_CallFunctionObjArgs(MessageIDType, a[0], a[1], a[2], NULL);
#else
        id = PyObject_Vectorcall(MessageIDType, a, 3, NULL);
#endif
    }
    if (id) {
        /* StreamMessage is a NamedTuple: build the tuple subclass directly */
        msg = sm_alloc((PyTypeObject *)StreamMessageType, 4);
        if (msg) {
            CM_TUPLE_SET(msg, 0, id);
            CM_TUPLE_SET(msg, 1, data);
            CM_TUPLE_SET(msg, 2, ts);
            CM_TUPLE_SET(msg, 3, dl);
            id = data = ts = dl = NULL;
        }
    }
    Py_XDECREF(id); Py_XDECREF(data); Py_XDECREF(ts); Py_XDECREF(dl); Py_XDECREF(entry);
    if (msg) b->items[i] = Py_NewRef(msg);
    return msg;
}

static Py_ssize_t Batch_len(Batch *b) { return b->n; }

static PyObject *Batch_item(Batch *b, Py_ssize_t i) {
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_IndexError, "batch index out of range");
        return NULL;
    }
    return message(b, i);
}

static PyObject *Batch_subscript(Batch *b, PyObject *key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return NULL;
        if (i < 0) i += b->n;
        return Batch_item(b, i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0) return NULL;
        Py_ssize_t len = PySlice_AdjustIndices(b->n, &start, &stop, step);
        PyObject *out = PyList_New(len);
        if (!out) return NULL;
        for (Py_ssize_t k = 0, i = start; k < len; k++, i += step) {
            PyObject *m = message(b, i);
            if (!m) { Py_DECREF(out); return NULL; }
            CM_LIST_SET(out, k, m);
        }
        return out;
    }
    return cm_type_error(PyExc_TypeError, "batch indices must be integers or slices, not %.100s", key);
}

/* payloads() -> list of the entries' data (bytes, or memoryviews with zero_copy) */
static PyObject *Batch_payloads(Batch *b, PyObject *unused) {
    PyObject *out = PyList_New(b->n);
    if (!out) return NULL;
#if PY_VERSION_HEX >= 0x030A0000
    /* Each memoryview is two GC-tracked objects that all survive the loop: letting the
     * collector run every 700 of them costs more than the views (measured 2x). Defer
     * it to one pass after the loop; no Python code runs in between except decompress. */
    int gc_was = b->zero_copy ? PyGC_Disable() : 0;
#endif
    Py_ssize_t i;
    for (i = 0; i < b->n; i++) {
        PyObject *d = b->items[i] ? Py_NewRef(CM_TUPLE_ITEM(b->items[i], 1)) : payload(b, i);
        if (!d) break;
        CM_LIST_SET(out, i, d);
    }
#if PY_VERSION_HEX >= 0x030A0000
    if (gc_was) PyGC_Enable();
#endif
    if (i < b->n) { Py_DECREF(out); return NULL; }
    return out;
}

/* ack_points() -> {stream_index: last entry + 1}: what acking this batch means */
static PyObject *Batch_ack_points(Batch *b, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    Py_ssize_t ns = CM_LIST_SIZE(b->names);
    uint64_t *hi = PyMem_Calloc((size_t)(ns ? ns : 1), sizeof(uint64_t));
    if (!hi) { Py_DECREF(out); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < b->n; i++)
        if (b->entry[i] + 1 > hi[b->sidx[i]]) hi[b->sidx[i]] = b->entry[i] + 1;
    for (Py_ssize_t s = 0; s < ns; s++) {
        if (!hi[s]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(hi[s]);
        if (!v || PyDict_SetItem(out, CM_LIST_ITEM(b->names, s), v) < 0) {
            Py_XDECREF(v); Py_DECREF(out); PyMem_Free(hi); return NULL;
        }
        Py_DECREF(v);
    }
    PyMem_Free(hi);
    return out;
}

/* ack_ranges() -> {stream: (lowest entry, highest entry + 1, count)}: what acking this
 * batch means; count == high - low says the stream's entries are one contiguous run
 * (the consumer's in-order fast path, docs/ARCHITECTURE.md I43) */
static PyObject *Batch_ack_ranges(Batch *b, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    Py_ssize_t ns = CM_LIST_SIZE(b->names);
    uint64_t *v = PyMem_Calloc((size_t)(ns ? ns : 1) * 3, sizeof(uint64_t));
    if (!v) { Py_DECREF(out); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < b->n; i++) {
        uint64_t *r = v + 3 * b->sidx[i], e = b->entry[i];
        if (!r[2] || e < r[0]) r[0] = e;
        if (e + 1 > r[1]) r[1] = e + 1;
        r[2]++;
    }
    for (Py_ssize_t s = 0; s < ns; s++) {
        uint64_t *r = v + 3 * s;
        if (!r[2]) continue;
        PyObject *t = Py_BuildValue("(KKK)", (unsigned long long)r[0], (unsigned long long)r[1],
                                    (unsigned long long)r[2]);
        if (!t || PyDict_SetItem(out, CM_LIST_ITEM(b->names, s), t) < 0) {
            Py_XDECREF(t); Py_DECREF(out); PyMem_Free(v); return NULL;
        }
        Py_DECREF(t);
    }
    PyMem_Free(v);
    return out;
}

/* set_deliveries(i, n): entry i is the n-th delivery of its entry (before it is built) */
static PyObject *Batch_set_deliveries(Batch *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_deliveries(i, n)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    unsigned long n = PyLong_AsUnsignedLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (i < 0 || i >= b->n || n == 0 || n > UINT32_MAX || b->items[i]) {
        PyErr_SetString(PyExc_IndexError, "set_deliveries: no such unbuilt entry, or n out of range");
        return NULL;
    }
    b->dl[i] = (uint32_t)n;
    Py_RETURN_NONE;
}

/* entry_at(i) -> (stream, entry) without building a message */
static PyObject *Batch_entry_at(Batch *b, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0) i += b->n;
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_IndexError, "batch index out of range");
        return NULL;
    }
    return Py_BuildValue("(OK)", CM_LIST_ITEM(b->names, b->sidx[i]),
                         (unsigned long long)b->entry[i]);
}

/* release(): drop cached messages and, once no view is exported, the mappings */
static PyObject *Batch_release(Batch *b, PyObject *unused) {
    drop_items(b);
    if (b->exports == 0) {
        release_held(b);
        b->n = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *Batch_enter(PyObject *self, PyObject *unused) { return Py_NewRef(self); }

static PyObject *Batch_exit(Batch *b, PyObject *args) {
    return Batch_release(b, NULL);
}

static PyObject *Batch_get_streams(Batch *b, void *c) { return PyList_AsTuple(b->names); }
static PyObject *Batch_get_zero_copy(Batch *b, void *c) { return PyBool_FromLong(b->zero_copy); }

static int Batch_getbuffer(Batch *b, Py_buffer *view, int flags) {
    Py_ssize_t i = b->export_index;
    if (i < 0 || i >= b->n) {
        PyErr_SetString(PyExc_BufferError, "a Batch exports its entries only through payloads()");
        view->obj = NULL;
        return -1;
    }
    b->export_index = -1;
    if (PyBuffer_FillInfo(view, (PyObject *)b, (void *)b->ptr[i], (Py_ssize_t)b->len[i], 1, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void Batch_releasebuffer(Batch *b, Py_buffer *view) { b->exports--; }

static PyMethodDef Batch_methods[] = {
    {"add_stream", (PyCFunction)(void (*)(void))Batch_add_stream, METH_FASTCALL,
     "add_stream(name, shard) -> stream index"},
    {"fill", (PyCFunction)(void (*)(void))Batch_fill, METH_FASTCALL,
     "fill(stream_index, mapping, base, off, seq, stop_seq, max_n[, key]) -> (off, seq, added, status, lost, resume, end)"},
    {"payloads", (PyCFunction)Batch_payloads, METH_NOARGS,
     "payloads() -> list of the entries' data (bytes, or memoryviews with zero_copy)"},
    {"ack_points", (PyCFunction)Batch_ack_points, METH_NOARGS,
     "ack_points() -> {stream: last entry + 1}"},
    {"ack_ranges", (PyCFunction)Batch_ack_ranges, METH_NOARGS,
     "ack_ranges() -> {stream: (low, high + 1, count)}"},
    {"set_deliveries", (PyCFunction)(void (*)(void))Batch_set_deliveries, METH_FASTCALL,
     "set_deliveries(i, n): entry i is a delivery number n"},
    {"entry_at", (PyCFunction)Batch_entry_at, METH_O, "entry_at(i) -> (stream, entry)"},
    {"release", (PyCFunction)Batch_release, METH_NOARGS,
     "release(): drop cached messages and the mappings (once no view is held)"},
    {"__enter__", (PyCFunction)Batch_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Batch_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"streams", (getter)Batch_get_streams, NULL, "stream names this batch may hold", NULL},
    {"zero_copy", (getter)Batch_get_zero_copy, NULL, "data are memoryviews over the mapping", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *Batch_repr(Batch *b) {
    Py_ssize_t nstreams = b->names ? CM_LIST_SIZE(b->names) : 0;
    if (b->n == 0)
        return PyUnicode_FromString("<cometmp Batch: empty>");
    /* name the streams the entries came from, up to three */
    PyObject *seen = PySet_New(NULL);
    if (!seen) return NULL;
    for (Py_ssize_t i = 0; i < b->n && i < 100000; i++) {
        if ((Py_ssize_t)b->sidx[i] < nstreams &&
            PySet_Add(seen, CM_LIST_ITEM(b->names, b->sidx[i])) < 0) {
            Py_DECREF(seen);
            return NULL;
        }
    }
    PyObject *r = PyUnicode_FromFormat("<cometmp Batch: %zd entries from %zd stream(s)>", b->n,
                                       PySet_Size(seen));
    Py_DECREF(seen);
    return r;
}

/* the offsets a heap type takes as members (PyType_FromSpec, 3.9+) */
static PyMemberDef Batch_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Batch, weakrefs), READONLY, NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(Batch, dict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* Subclassable, with a __dict__ and weak references, like the static type it replaces;
 * IMMUTABLETYPE: no class attribute can be set. */
static PyType_Slot Batch_slots[] = {
    {Py_tp_doc, "Entries read by Consumer.read(): list-like of StreamMessage (see reader.c)."},
    {Py_tp_repr, Batch_repr},
    {Py_tp_new, Batch_new},
    {Py_tp_init, Batch_init},
    {Py_tp_dealloc, Batch_dealloc},
    {Py_tp_traverse, Batch_traverse},
    {Py_tp_clear, Batch_clear},
    {Py_sq_length, Batch_len},
    {Py_sq_item, Batch_item},
    {Py_mp_length, Batch_len},
    {Py_mp_subscript, Batch_subscript},
    {Py_bf_getbuffer, Batch_getbuffer},     /* the limited API has these from 3.11 */
    {Py_bf_releasebuffer, Batch_releasebuffer},
    {Py_tp_methods, Batch_methods},
    {Py_tp_getset, Batch_getset},
    {Py_tp_members, Batch_members},
    {0, NULL},
};

static PyType_Spec Batch_spec = {
    .name = "cometmp._reader.Batch",
    .basicsize = sizeof(Batch),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Batch_slots,
};

/* configure(core_path, StreamMessage, MessageID, decompress) */
static PyObject *configure(PyObject *m, PyObject *args) {
    PyObject *core, *sm, *mid, *dec;
    if (!PyArg_ParseTuple(args, "UOOO", &core, &sm, &mid, &dec)) return NULL;
    const cm_api *t = (const cm_api *)cm_core_api(core, CM_API_VERSION);
    if (!t) return NULL;
    if (!t->record_at || !t->walk_next) {
        PyErr_SetString(PyExc_ImportError, "cometmp: core API table lacks the walker");
        return NULL;
    }
    if (!PyType_Check(sm) || !PyType_IsSubtype((PyTypeObject *)sm, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "StreamMessage must be a tuple subclass");
        return NULL;
    }
    api = t;
    sm_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)sm, Py_tp_alloc);
    CM_XSETREF(StreamMessageType, Py_NewRef(sm));
    CM_XSETREF(MessageIDType, Py_NewRef(mid));
    CM_XSETREF(decompress_fn, Py_NewRef(dec));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(core_path, StreamMessage, MessageID, decompress): called once by cometmp.consumer"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "cometmp._reader",
    "Batch reader for cometmp consumers (native/reader.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__reader(void) {
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyObject *batch = PyType_FromSpec(&Batch_spec);
#ifdef Py_LIMITED_API
    if (!SpanType) SpanType = (PyTypeObject *)PyType_FromSpec(&Span_spec);  /* kept for good */
    if (!SpanType) Py_CLEAR(batch);
#endif
    if (!batch || PyModule_AddObjectRef(m, "Batch", batch) < 0) {
        Py_XDECREF(batch);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(batch);
    return m;
}
