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
#include <string.h>
#include <time.h>
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

/* What one walk of a segment did (fill_run): where it stopped and why. */
typedef struct {
    uint64_t off;
    uint32_t seq;
    Py_ssize_t added;
    int status;               /* FILL_MORE or FILL_DAMAGED */
    cm_damage d;
} fill_result;

/* fill_run: the walk behind fill() and wait_woken(): the valid records of segment mapping mm
 * (base) from (off, seq) while seq < stop (I2) and fewer than max_n were added, into b
 * as stream si, with key (NULL: the one the segment's header names). -1 with an
 * exception set, else 0 and *o says where the walk stopped. */
static int fill_run(Batch *b, Py_ssize_t si, PyObject *mm, uint64_t base, uint64_t off,
                    uint32_t seq, uint32_t stop, Py_ssize_t max_n, const cm_seg_key *key,
                    fill_result *o) {
    if (b->exports) {
        PyErr_SetString(PyExc_BufferError, "cannot grow a batch while views of it exist");
        return -1;
    }
    Py_ssize_t h = hold(b, mm);
    if (h < 0) return -1;
    const uint8_t *map = b->held[h].buf;
    uint64_t size = (uint64_t)b->held[h].len;
    if (max_n < 0) max_n = 0;
    /* room for the records that exist below stop_seq, not for the whole budget: a
     * consumer woken for one entry of read(max_messages=1000000) must not allocate
     * and clear arrays for a million (fresh pages, faulted on the wake path) */
    if ((uint64_t)max_n > (uint64_t)stop - (stop > seq ? seq : stop))
        max_n = (Py_ssize_t)(stop - (stop > seq ? seq : stop));
    if (ensure_cap(b, b->n + max_n) < 0) return -1;
    Py_ssize_t added = 0;
    cm_walk w;
    cm_record r;
    memset(o, 0, sizeof *o);
    o->status = FILL_MORE;
    api->walk_init(&w, map, size, base, off, seq, stop, stop);
    if (key) {
        w.key = *key;
        w.key.base = base;           /* always the caller's (the file name's) */
    }
    Py_ssize_t n = b->n;
    for (;;) {
        if (added >= max_n) break;
        uint64_t at = w.off;
        uint32_t at_seq = w.seq;
        int rc = api->walk_next(&w, &r, &o->d);
        if (rc == CM_WALK_DONE) break;
        if (rc == CM_WALK_DAMAGE) {
            o->status = FILL_DAMAGED;
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
    o->off = w.off;
    o->seq = w.seq;
    o->added = added;
    return 0;
}

static int key_of(PyObject *obj, cm_seg_key *key) {
    Py_buffer kb;
    if (PyObject_GetBuffer(obj, &kb, PyBUF_SIMPLE) < 0) return -1;
    int ok = kb.len == (Py_ssize_t)sizeof *key;
    if (ok) memcpy(key, kb.buf, sizeof *key);
    PyBuffer_Release(&kb);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "key must be the bytes of a cm_seg_key");
        return -1;
    }
    return 0;
}

/* fill(stream_index, mapping, base, off, seq, stop_seq, max_n[, key])
 *   -> (off, seq, added, status, lost, resume, end)
 * key: the bytes of the cm_seg_key the segment is read with (Segment.keybuf: the
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
    if (nargs == 8 && key_of(args[7], &key) < 0) return NULL;
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
    fill_result o;
    if (fill_run(b, si, args[1], base, off, (uint32_t)seq, (uint32_t)stop, max_n,
                 nargs == 8 ? &key : NULL, &o) < 0)
        return NULL;
    int dmg = o.status == FILL_DAMAGED;
    return Py_BuildValue("(KKniIKi)", (unsigned long long)o.off, (unsigned long long)o.seq,
                         o.added, o.status, (unsigned int)(dmg ? o.d.lost : 0),
                         (unsigned long long)(dmg ? o.d.resume : o.off), dmg ? o.d.end : 0);
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

/* ---- the woken read ------------------------------------------------------------------
 *
 * wait_woken(batch, cursors, seen, timeout_ns, start, budget, offsets, windows, until,
 *            owners) -> None (timed out) | entries added (> 0) | 0 | a core error code (< 0)
 *
 * Consumer._wait's sleep and, when it ends because a stream published, the batch of
 * that wake-up, in one call: what Consumer.read would otherwise do after the wait in
 * a dozen Python steps, each a few us on the caches a sleeper wakes with (PERFORMANCE.md
 * "Wake-ups beside the futex floor"). The wait is the core's cm_wait_many on the
 * cursors' state pages with `seen` (their notify_seq, read before committed: I11),
 * without the GIL. The fill only recognises the case in which every step of the full
 * iteration would be the identity apart from reading new entries of the segment each
 * cursor is in; in any other it returns 0 with nothing written back to a cursor, a flight
 * or a file (the batch may hold names: the caller throws it away), and the caller runs
 * the full iteration, where every rule lives. The cases:
 *
 *   - one of `owners` (the consumer and its client) has `_closed` set: close() ran in
 *     another thread during the wait, and the full iteration raises ClosedError before
 *     it fills anything, so this must not fill (or mark delivered) either;
 *   - the clock has passed `until` (a membership refresh or a state-page check is due);
 *   and per cursor, in the order of Consumer._sync and _fill:
 *   - the cursor is closed, has no position, slot or loaded window, or its flight has
 *     something to remember (dirty, or pos below recover_hi: the window's path, I43/I46);
 *   - no writer keeps the state page current (I27a);
 *   - the offsets slot is unset, its resets moved (I12/I13: reset_offset elsewhere), or
 *     its offset is not the one the cursor last saw (acked by another member);
 *   - the first_entry hint is above pos (I15: retention may have deleted entries);
 *   - the cursor has entries below its limit, min(committed (I2), acked + the window,
 *     I45), and is not at a known place (seg mapped, off >= 0, pos = base + seq), or its
 *     walk meets damage or the end of the segment's data (a rotation, a replaced
 *     mapping: Cursor.read_into's cases).
 *
 * Otherwise the entries go into `batch` exactly as _fill puts them (round robin from
 * `start`, at most `budget` in all), and only then is anything written back: each
 * cursor's (off, seq, pos), its flight's run (p0, pos, now) and `marked`, and the
 * window's `delivered` (I46) in `windows`. The pages it sleeps on are exported
 * (PyObject_GetBuffer) across the wait, so a close() in another thread cannot unmap them
 * (L4), and close() wakes the wait (cm_wake). From the wake to the return no Python code
 * runs and no other thread either: the GIL is held, and the collector is off
 * (PyGC_Disable), since a collection could run a finalizer that lets another thread in.
 * So a close() cannot come between the `owners` check and the end of the write-back, nor
 * meet the offsets and windows exports taken after the wake (their close() would fail
 * with BufferError). A batch returned was filled while its consumer was open; read()
 * hands it over even if a close() came after (close()'s contract: a read() in flight
 * returns its batch or raises ClosedError). */
static PyTypeObject *BatchType;
static uint64_t win_entries, win_delivered0, win_stride;
static PyObject *s_pos, *s_slot, *s_resets, *s_acked, *s_closed, *s_flight, *s_state, *s_seg,
    *s_base, *s_off, *s_seq, *s_name, *s_shard, *s_loaded, *s_dirty, *s_recover_hi, *s_marked,
    *s_runs, *s_mm, *s_live, *s_keybuf, *s_append, *s_owner_closed;

typedef struct {
    PyObject *cur, *flight, *segmm;    /* owned references */
    Py_buffer state;                   /* the state page, exported for the call */
    int have_state;
    int read;                          /* has entries below its limit */
    cm_seg_key key;
    uint64_t pos, base, off, seq, slot, marked, limit;
    fill_result r;
} wk_cursor;

#define WK_SLOW 1   /* not the identity case: the caller runs the full iteration */
/* the helpers below return 0, WK_SLOW, or -1 with a Python exception set */

/* an int attribute >= 0 into *out; WK_SLOW for None, a negative or a non-int */
static int attr_u64(PyObject *o, PyObject *name, uint64_t *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    int rc = WK_SLOW;
    if (PyLong_Check(v)) {
        unsigned long long x = PyLong_AsUnsignedLongLong(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) PyErr_Clear();
        else { *out = x; rc = 0; }
    }
    Py_DECREF(v);
    return rc;
}

/* 1 / 0: the attribute's truth; -1: an exception */
static int attr_true(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v) return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

static int set_u64(PyObject *o, PyObject *name, uint64_t x) {
    PyObject *v = PyLong_FromUnsignedLongLong(x);
    if (!v) return -1;
    int rc = PyObject_SetAttr(o, name, v);
    Py_DECREF(v);
    return rc;
}

static uint64_t load64(const uint8_t *p, uint64_t off) {
    return __atomic_load_n((const uint64_t *)(p + off), __ATOMIC_ACQUIRE);
}

/* The cursor's state page, exported into k->state, writable: the wait counts itself
 * in its `waiters` (I11). WK_SLOW: not mapped, or closed under us. */
static int woken_state(wk_cursor *k) {
    PyObject *state = PyObject_GetAttr(k->cur, s_state);
    if (!state) return -1;
    PyObject *mm = PyObject_GetAttr(state, s_mm);
    Py_DECREF(state);
    if (!mm) return -1;
    int rc = mm == Py_None ? WK_SLOW : PyObject_GetBuffer(mm, &k->state, PyBUF_WRITABLE);
    Py_DECREF(mm);
    if (rc < 0) { PyErr_Clear(); return WK_SLOW; }
    if (rc == WK_SLOW) return WK_SLOW;
    k->have_state = 1;
    return k->state.len < CM_STATE_BYTES ? WK_SLOW : 0;
}

/* The checks of one cursor after the wake-up (the list above); 0: the identity case. */
static int woken_check(wk_cursor *k, const Py_buffer *ofs, const Py_buffer *win) {
    PyObject *c = k->cur;
    uint64_t resets, acked, recover_hi;
    int t, rc;
    if ((t = attr_true(c, s_closed)) != 0) return t < 0 ? -1 : WK_SLOW;
    if ((rc = attr_u64(c, s_pos, &k->pos)) != 0 || (rc = attr_u64(c, s_slot, &k->slot)) != 0 ||
        (rc = attr_u64(c, s_resets, &resets)) != 0 || (rc = attr_u64(c, s_acked, &acked)) != 0)
        return rc;
    if (!(k->flight = PyObject_GetAttr(c, s_flight))) return -1;
    if ((t = attr_true(k->flight, s_loaded)) != 1) return t < 0 ? -1 : WK_SLOW;
    if ((t = attr_true(k->flight, s_dirty)) != 0) return t < 0 ? -1 : WK_SLOW;
    if ((rc = attr_u64(k->flight, s_recover_hi, &recover_hi)) != 0 ||
        (rc = attr_u64(k->flight, s_marked, &k->marked)) != 0)
        return rc;
    if (k->pos < recover_hi) return WK_SLOW;
    PyObject *state = PyObject_GetAttr(c, s_state);    /* kept current by a writer (I27a) */
    if (!state) return -1;
    t = attr_true(state, s_live);
    Py_DECREF(state);
    if (t != 1) return t < 0 ? -1 : WK_SLOW;
    const uint8_t *sp = k->state.buf;
    /* the offsets slot: what _sync would take (I12, I13) */
    uint64_t at = CM_OFS_SLOTS_OFF + k->slot * (uint64_t)CM_OFS_SLOT_BYTES;
    if (k->slot >= CM_OFS_SLOT_CAP || at + CM_OFS_SLOT_BYTES > (uint64_t)ofs->len) return WK_SLOW;
    uint64_t next = load64(ofs->buf, at + CM_OFS_S_NEXT);
    if (next == CM_OFS_UNSET || next != acked || next > k->pos ||
        load64(ofs->buf, at + CM_OFS_S_RESETS) != resets)
        return WK_SLOW;
    if (win_delivered0 + k->slot * win_stride + 8 > (uint64_t)win->len) return WK_SLOW;
    /* retention (I15): the hint at or below pos means nothing to list */
    if (load64(sp, CM_STATE_OFF_FIRST_ENTRY) > k->pos) return WK_SLOW;
    uint64_t committed = load64(sp, CM_STATE_OFF_COMMITTED);        /* I2 */
    k->limit = committed < acked + win_entries ? committed : acked + win_entries;   /* I45 */
    if (k->pos >= k->limit) return 0;
    /* it has entries to read: at a known place of a mapped segment (a walk past that
     * segment's end, into a successor, meets the end of its data: declined below) */
    k->read = 1;
    if ((rc = attr_u64(c, s_base, &k->base)) != 0 || (rc = attr_u64(c, s_off, &k->off)) != 0 ||
        (rc = attr_u64(c, s_seq, &k->seq)) != 0)
        return rc;
    if (k->pos != k->base + k->seq || k->seq > CM_REC_SEQ_MASK ||
        k->limit - k->base > CM_REC_SEQ_MASK + 1ull)
        return WK_SLOW;
    PyObject *seg = PyObject_GetAttr(c, s_seg);
    if (!seg) return -1;
    if (seg == Py_None) { Py_DECREF(seg); return WK_SLOW; }
    k->segmm = PyObject_GetAttr(seg, s_mm);
    PyObject *kb = k->segmm && k->segmm != Py_None ? PyObject_GetAttr(seg, s_keybuf) : NULL;
    Py_DECREF(seg);
    if (!k->segmm) return -1;
    if (k->segmm == Py_None) return WK_SLOW;
    if (!kb) return -1;
    rc = key_of(kb, &k->key);
    Py_DECREF(kb);
    if (rc < 0) { PyErr_Clear(); return WK_SLOW; }
    return 0;
}

/* The fill and write-back of a wake-up (every check passed before anything is read). */
static int woken_fill(Batch *b, wk_cursor *ks, Py_ssize_t n, Py_ssize_t start,
                      Py_ssize_t budget, Py_buffer *win, double now, Py_ssize_t *total) {
    for (Py_ssize_t j = 0; j < n && budget > 0; j++) {   /* _fill's round robin */
        wk_cursor *k = &ks[(start + j) % n];
        if (!k->read) continue;
        PyObject *name = PyObject_GetAttr(k->cur, s_name);
        PyObject *shard = name ? PyObject_GetAttr(k->cur, s_shard) : NULL;
        int bad = !shard || PyList_Append(b->names, name) < 0 || PyList_Append(b->shards, shard) < 0;
        Py_XDECREF(name);
        Py_XDECREF(shard);
        if (bad) return -1;
        Py_ssize_t si = CM_LIST_SIZE(b->names) - 1;
        if (fill_run(b, si, k->segmm, k->base, k->off, (uint32_t)k->seq,
                     (uint32_t)(k->limit - k->base), budget, &k->key, &k->r) < 0)
            return -1;
        if (k->r.status != FILL_MORE) return WK_SLOW;
        budget -= k->r.added;
        *total += k->r.added;
    }
    if (*total == 0) return WK_SLOW;
    PyObject *when = PyFloat_FromDouble(now);
    if (!when) return -1;
    int rc = 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {   /* write back: no WK_SLOW after this */
        wk_cursor *k = &ks[i];
        if (!k->read || k->r.added == 0) continue;
        uint64_t pos = k->base + k->r.seq;
        PyObject *p0 = PyLong_FromUnsignedLongLong(k->pos);
        PyObject *p1 = PyLong_FromUnsignedLongLong(pos);
        PyObject *run = p0 && p1 ? PyTuple_Pack(3, p0, p1, when) : NULL;
        PyObject *runs = run ? PyObject_GetAttr(k->flight, s_runs) : NULL;   /* a deque */
        PyObject *ok = runs ? PyObject_CallMethodObjArgs(runs, s_append, run, NULL) : NULL;
        if (!ok || set_u64(k->cur, s_off, k->r.off) < 0 || set_u64(k->cur, s_seq, k->r.seq) < 0 ||
            PyObject_SetAttr(k->cur, s_pos, p1) < 0)
            rc = -1;
        Py_XDECREF(p0); Py_XDECREF(p1); Py_XDECREF(run); Py_XDECREF(runs); Py_XDECREF(ok);
        if (rc == 0 && pos > k->marked) {   /* I46: the window's delivered follows this reader */
            if (set_u64(k->flight, s_marked, pos) < 0) rc = -1;
            else __atomic_store_n((uint64_t *)((uint8_t *)win->buf + win_delivered0 +
                                               k->slot * win_stride), pos, __ATOMIC_RELAXED);
        }
    }
    Py_DECREF(when);
    return rc;
}

static double monotonic_s(void) {   /* time.monotonic()'s clock */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *wait_woken(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !BatchType || !PyObject_TypeCheck(args[0], BatchType) ||
        !PyList_Check(args[1]) || !PyList_Check(args[2]) || !PyTuple_Check(args[9]) ||
        CM_LIST_SIZE(args[1]) != CM_LIST_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError, "wait_woken(batch, cursors: list, seen: list, timeout_ns, "
                                         "start, budget, offsets, windows, until, owners: tuple)");
        return NULL;
    }
    Batch *b = (Batch *)args[0];
    PyObject *list = args[1];
    long long timeout_ns = PyLong_AsLongLong(args[3]);
    Py_ssize_t start = PyLong_AsSsize_t(args[4]);
    Py_ssize_t budget = PyLong_AsSsize_t(args[5]);
    double until = PyFloat_AsDouble(args[8]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n = CM_LIST_SIZE(list);
    if (n <= 0 || n > CM_WAITV_MAX || start < 0 || budget <= 0) {
        PyErr_SetString(PyExc_ValueError, "wait_woken: 1 to CM_WAITV_MAX cursors, start >= 0, "
                                          "budget > 0");
        return NULL;
    }
    Py_buffer ofs, win;
    int have_ofs = 0, have_win = 0, core_rc = 0, woke = 0, rc = 0, gc_was = 0;
    wk_cursor *ks = PyMem_Calloc((size_t)n, sizeof *ks);
    void **pages = PyMem_Calloc((size_t)n, sizeof *pages);
    uint32_t *seen = PyMem_Calloc((size_t)n, sizeof *seen);
    Py_ssize_t total = 0, i;
    if (!ks || !pages || !seen) { PyErr_NoMemory(); rc = -1; goto out; }
    for (i = 0; i < n; i++) {
        ks[i].cur = Py_NewRef(CM_LIST_ITEM(list, i));
        seen[i] = (uint32_t)PyLong_AsUnsignedLongMask(CM_LIST_ITEM(args[2], i));
        if (PyErr_Occurred()) { rc = -1; goto out; }
        if ((rc = woken_state(&ks[i])) != 0) goto out;   /* closed under us: no sleep */
        pages[i] = ks[i].state.buf;
    }
    int w;
    Py_BEGIN_ALLOW_THREADS
    w = api->wait_many(pages, seen, (uint32_t)n, timeout_ns);
    Py_END_ALLOW_THREADS
    if (w < 0) { core_rc = w; goto out; }
    if (!(woke = w == 1)) goto out;
    gc_was = PyGC_Disable();          /* no Python code from here to the return (above) */
    for (i = 0; i < CM_TUPLE_SIZE(args[9]); i++) {
        int t = attr_true(CM_TUPLE_ITEM(args[9], i), s_owner_closed);
        if (t != 0) { rc = t < 0 ? -1 : WK_SLOW; goto out; }
    }
    double now = monotonic_s();
    if (now >= until) { rc = WK_SLOW; goto out; }
    if (PyObject_GetBuffer(args[6], &ofs, PyBUF_SIMPLE) < 0) { PyErr_Clear(); rc = WK_SLOW; goto out; }
    have_ofs = 1;
    if (PyObject_GetBuffer(args[7], &win, PyBUF_WRITABLE) < 0) { PyErr_Clear(); rc = WK_SLOW; goto out; }
    have_win = 1;
    for (i = 0; i < n; i++)           /* every check before anything is read (_sync's order) */
        if ((rc = woken_check(&ks[i], &ofs, &win)) != 0) goto out;
    rc = woken_fill(b, ks, n, start, budget, &win, now, &total);
out:
    for (i = 0; ks && i < n; i++) {
        Py_XDECREF(ks[i].cur);
        Py_XDECREF(ks[i].flight);
        Py_XDECREF(ks[i].segmm);
        if (ks[i].have_state) PyBuffer_Release(&ks[i].state);
    }
    PyMem_Free(ks);
    PyMem_Free(pages);
    PyMem_Free(seen);
    if (have_win) PyBuffer_Release(&win);
    if (have_ofs) PyBuffer_Release(&ofs);
    if (gc_was) PyGC_Enable();
    if (rc < 0) return NULL;
    if (core_rc) return PyLong_FromLong(core_rc);
    if (rc == WK_SLOW) return PyLong_FromLong(0);
    if (!woke) Py_RETURN_NONE;
    return PyLong_FromSsize_t(total);
}

/* configure(core_path, StreamMessage, MessageID, decompress, window_entries,
 *           window_delivered_offset, window_record_bytes): once, by cometmp.consumer */
static PyObject *configure(PyObject *m, PyObject *args) {
    PyObject *core, *sm, *mid, *dec;
    unsigned long long we, wd, ws;
    if (!PyArg_ParseTuple(args, "UOOOKKK", &core, &sm, &mid, &dec, &we, &wd, &ws)) return NULL;
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
    win_entries = we;           /* the windows file's layout (cometmp/window.py) */
    win_delivered0 = wd;
    win_stride = ws;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(core_path, StreamMessage, MessageID, decompress, window_entries, "
     "window_delivered_offset, window_record_bytes): called once by cometmp.consumer"},
    {"wait_woken", (PyCFunction)(void (*)(void))wait_woken, METH_FASTCALL,
     "wait_woken(batch, cursors, seen, timeout_ns, start, budget, offsets, windows, until) "
     "-> None (timed out), entries added, 0 (woken, not the identity case) or a core error "
     "code (Consumer._wait)"},
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
    static const char *names[] = {"pos", "slot", "resets", "acked", "closed", "flight", "state",
        "seg", "base", "off", "seq", "name", "shard", "loaded", "dirty", "recover_hi", "marked",
        "runs", "mm", "live", "keybuf", "append", "_closed"};
    PyObject **slots[] = {&s_pos, &s_slot, &s_resets, &s_acked, &s_closed, &s_flight, &s_state,
        &s_seg, &s_base, &s_off, &s_seq, &s_name, &s_shard, &s_loaded, &s_dirty, &s_recover_hi,
        &s_marked, &s_runs, &s_mm, &s_live, &s_keybuf, &s_append, &s_owner_closed};
    for (size_t i = 0; batch && i < sizeof names / sizeof *names; i++)
        if (!*slots[i] && !(*slots[i] = PyUnicode_InternFromString(names[i]))) Py_CLEAR(batch);
    if (batch && !BatchType) BatchType = (PyTypeObject *)Py_NewRef(batch);   /* kept for good */
    if (!batch || PyModule_AddObjectRef(m, "Batch", batch) < 0) {
        Py_XDECREF(batch);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(batch);
    return m;
}
