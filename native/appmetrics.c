/* appmetrics.c - the application metrics table DIR/metrics/app: its
 * initialisation, check, and the lock-free cell updates.
 *
 * Layout in native/format.h (CM_APM_*) and docs/FORMAT.md §10; the Python side
 * is cometmp/appmetrics.py, which maps the file MAP_SHARED, appends keys under
 * an OFD lock (I51) and calls these for every update of a value. Who may
 * call: any process and thread holding a mapping of the whole file; no lock
 * is needed for the cell functions (I52).
 *
 * Why CAS on a 64-bit word: a prometheus_client value is a double that many
 * threads of a process, and after a slot changes hands more than one process,
 * add to. x86-64 and aarch64 have no atomic add on doubles, so the add is a
 * compare-and-swap loop on the double's bits; an add is never lost and never
 * applied twice whatever interleaves (tests/multiprocess/test_app_metrics_mp.py
 * hammers one cell from processes and threads).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "cometmp.h"
#include "internal.h"

static int cell_bad(uint64_t size, uint64_t cell) {
    return size < CM_APM_FILE_BYTES || cell < CM_APM_CELLS_OFF ||
           cell + CM_APM_CELL_BYTES > CM_APM_FILE_BYTES ||
           (cell - CM_APM_CELLS_OFF) % CM_APM_CELL_BYTES != 0;
}

int cm_appmetrics_init(void *base, uint64_t size, int64_t now_ns) {
    if (size < CM_APM_FILE_BYTES)
        return cm_fail(CM_E_ARG, 0, "metrics table mapping of %llu bytes is below %llu",
                       (unsigned long long)size, (unsigned long long)CM_APM_FILE_BYTES);
    cm_apm_header *h = base;
    /* header magic(4) version(2) header_bytes(2) file_bytes(8) key_cap(4) columns(4) ... */
    h->version = CM_APM_VERSION;
    h->header_bytes = CM_APM_HEADER_BYTES;
    h->file_bytes = CM_APM_FILE_BYTES;
    h->key_cap = CM_APM_KEY_CAP;
    h->columns = CM_APM_COLUMNS;
    h->text_cap = CM_APM_TEXT_CAP;
    h->nkeys = 0;
    h->text_used = 0;
    h->created_ns = now_ns;
    __atomic_store_n(&h->magic, CM_APM_MAGIC, __ATOMIC_RELEASE);  /* last: the file is whole */
    return CM_OK;
}

int cm_appmetrics_check(const void *base, uint64_t size) {
    const cm_apm_header *h = base;
    if (size < CM_APM_HEADER_BYTES)
        return cm_fail(CM_E_FORMAT, 0, "%llu bytes, smaller than its header", (unsigned long long)size);
    uint32_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
    if (magic == 0)
        return cm_fail(CM_E_NOTFOUND, 0, "not initialised yet (magic 0)");
    if (magic != CM_APM_MAGIC)
        return cm_fail(CM_E_FORMAT, 0, "bad magic %#x at offset 0 (expected %#x, \"CMPM\")",
                       magic, CM_APM_MAGIC);
    if (h->version != CM_APM_VERSION)
        return cm_fail(CM_E_FORMAT, 0, "version %u at offset %d; this build reads version %d",
                       h->version, CM_APM_OFF_VERSION, CM_APM_VERSION);
    if (h->header_bytes != CM_APM_HEADER_BYTES || h->file_bytes != CM_APM_FILE_BYTES ||
        h->key_cap != CM_APM_KEY_CAP || h->columns != CM_APM_COLUMNS ||
        h->text_cap != CM_APM_TEXT_CAP || size < CM_APM_FILE_BYTES)
        return cm_fail(CM_E_FORMAT, 0, "geometry (file %llu bytes, %u keys, %u columns, text %u) "
                       "is not this build's (%llu, %d, %d, %d)",
                       (unsigned long long)size, h->key_cap, h->columns, h->text_cap,
                       (unsigned long long)CM_APM_FILE_BYTES, CM_APM_KEY_CAP, CM_APM_COLUMNS,
                       CM_APM_TEXT_CAP);
    uint32_t n = __atomic_load_n(&h->nkeys, __ATOMIC_ACQUIRE);
    if (n > CM_APM_KEY_CAP || h->text_used > CM_APM_TEXT_CAP)
        return cm_fail(CM_E_CORRUPT, 0, "nkeys %u (offset %d) or text_used %u (offset %d) "
                       "beyond the caps %d, %d", n, CM_APM_OFF_NKEYS, h->text_used,
                       CM_APM_OFF_TEXT_USED, CM_APM_KEY_CAP, CM_APM_TEXT_CAP);
    return CM_OK;
}

/* I52: value += amount as one CAS on the double's 64 bits; marks the cell present. */
int cm_appmetrics_add(void *base, uint64_t size, uint64_t cell, double amount) {
    if (cell_bad(size, cell))
        return cm_fail(CM_E_ARG, 0, "metrics cell offset %llu outside the table",
                       (unsigned long long)cell);
    cm_apm_cell *c = (cm_apm_cell *)((char *)base + cell);
    uint64_t *word = (uint64_t *)&c->value;
    uint64_t old = __atomic_load_n(word, __ATOMIC_RELAXED), new;
    do {
        double v;
        memcpy(&v, &old, 8);
        v += amount;
        memcpy(&new, &v, 8);
    } while (!__atomic_compare_exchange_n(word, &old, new, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    if (!__atomic_load_n(&c->present, __ATOMIC_RELAXED))
        __atomic_store_n(&c->present, 1, __ATOMIC_RELAXED);
    return CM_OK;
}

/* I52: value = v, stamp = s (a mostrecent gauge's time), each one 64-bit store. */
int cm_appmetrics_set(void *base, uint64_t size, uint64_t cell, double value, double stamp) {
    if (cell_bad(size, cell))
        return cm_fail(CM_E_ARG, 0, "metrics cell offset %llu outside the table",
                       (unsigned long long)cell);
    cm_apm_cell *c = (cm_apm_cell *)((char *)base + cell);
    uint64_t v, s;
    memcpy(&v, &value, 8);
    memcpy(&s, &stamp, 8);
    __atomic_store_n((uint64_t *)&c->value, v, __ATOMIC_RELAXED);
    __atomic_store_n((uint64_t *)&c->stamp, s, __ATOMIC_RELEASE);
    if (!__atomic_load_n(&c->present, __ATOMIC_RELAXED))
        __atomic_store_n(&c->present, 1, __ATOMIC_RELAXED);
    return CM_OK;
}

/* Clears a cell (value, stamp, present): a dead binder's gauge (I53). Caller holds the key lock. */
int cm_appmetrics_clear(void *base, uint64_t size, uint64_t cell) {
    if (cell_bad(size, cell))
        return cm_fail(CM_E_ARG, 0, "metrics cell offset %llu outside the table",
                       (unsigned long long)cell);
    cm_apm_cell *c = (cm_apm_cell *)((char *)base + cell);
    __atomic_store_n(&c->present, 0, __ATOMIC_RELAXED);
    __atomic_store_n((uint64_t *)&c->value, 0, __ATOMIC_RELAXED);
    __atomic_store_n((uint64_t *)&c->stamp, 0, __ATOMIC_RELAXED);
    return CM_OK;
}

uint32_t cm_appmetrics_nkeys(const void *base) {
    return __atomic_load_n(&((const cm_apm_header *)base)->nkeys, __ATOMIC_ACQUIRE);
}

/* I51: publish rows [0, nkeys) after their key record and text are written. Caller holds the key lock. */
void cm_appmetrics_publish(void *base, uint32_t nkeys) {
    __atomic_store_n(&((cm_apm_header *)base)->nkeys, nkeys, __ATOMIC_RELEASE);
}
