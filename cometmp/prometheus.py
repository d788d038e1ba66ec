"""prometheus_client's multiprocess values, kept in cometmp shared memory by worker slot.

Runs in every process of the pool that creates or scrapes application metrics. The app
keeps using ``Counter``, ``Gauge`` (every ``multiprocess_mode``), ``Histogram`` and
``Summary`` unchanged; one call before any metric is created switches where their values
live::

    cometmp.metrics.enable_prometheus(DIR)       # gunicorn/uWSGI: COMETMP_PROMETHEUS=1

    registry = CollectorRegistry()               # in the /metrics view, any process
    registry.register(cometmp.metrics.PrometheusCollector(DIR))
    generate_latest(registry)

Values are cells of ``DIR/metrics/app`` (cometmp.appmetrics, FORMAT.md §10) indexed by
(metric key, worker column) instead of one ``<type>_<pid>.db`` file per process, so the
directory and /dev/shm hold the same after 1,000 worker restarts as after 10, and a
scrape reads one mapping. The collector aggregates exactly like prometheus_client's
``MultiProcessCollector`` (its ``_accumulate_metrics``; tests/multiprocess/
test_app_metrics_mp.py compares the two on one workload), with one difference by design:
the ``pid`` label of ``all``/``liveall`` gauges carries the worker *slot* ("0", "1", …,
``"unslotted"`` for processes without one), stable across restarts, not the pid.

prometheus_client is imported only by :func:`enable_prometheus` and a scrape
(``pip install cometmp[prometheus]``); nothing in the core imports this module's callers.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict

from . import appmetrics, paths
from .appmetrics import (
    CM_APM_CELL_BYTES,
    CM_APM_KIND_GAUGE,
    GAUGE_MODES,
    KINDS,
    Table,
    column_label,
)
from ._ffi import lib, raise_for
from .errors import CometError

__all__ = ["ENV_PROMETHEUS", "PrometheusCollector", "enable_from_environment",
           "enable_prometheus", "enabled_directory", "value_class"]

#: set to "1" to have the gunicorn and uWSGI integrations call enable_prometheus
ENV_PROMETHEUS = "COMETMP_PROMETHEUS"

_lock = threading.Lock()
_table: Table | None = None
_MODE_BYTE = {m: i for i, m in enumerate(GAUGE_MODES)}


def _mmap_key(metric_name, name, labelnames, labelvalues, help_text) -> str:
    """prometheus_client.mmap_dict.mmap_key, the key its multiprocess files use."""
    return json.dumps([metric_name, name, dict(zip(labelnames, labelvalues)), help_text],
                      sort_keys=True)


def value_class(table: Table) -> type:
    """A prometheus_client ``ValueClass`` storing every value in ``table``. Used by
    enable_prometheus; tests make one per table."""

    add, store = lib.cm_appmetrics_add, lib.cm_appmetrics_set
    ptr, size, column = table._ptr, table.size, table.column

    class CometValue:
        """One prometheus_client value: a row of the table, in this process's column.
        Thread safe (atomic cell updates, I52); fork safe (a child binds its own column).
        The update methods are the hot path: one column lookup and one C call."""

        _multiprocess = True

        __slots__ = ("_row", "_base")

        def __init__(self, typ, metric_name, name, labelnames, labelvalues, help_text,
                     multiprocess_mode="", **kwargs):
            kind = KINDS.get(typ)
            if kind is None:
                raise CometError(f"cometmp.metrics: prometheus_client value type {typ!r} of "
                                 f"{metric_name} is not stored in shared memory")
            mode = _MODE_BYTE.get(multiprocess_mode, 0) if kind == CM_APM_KIND_GAUGE else 0
            self._row = table.row(kind, mode, _mmap_key(metric_name, name, labelnames,
                                                        labelvalues, help_text))
            self._base = table.row_offset(self._row)
            table.touch(self._row)

        def inc(self, amount):
            rc = add(ptr, size, self._base + column() * CM_APM_CELL_BYTES, amount)
            if rc:
                raise_for(rc, path=table.path)

        def set(self, value, timestamp=None):
            rc = store(ptr, size, self._base + column() * CM_APM_CELL_BYTES, value,
                       timestamp or 0.0)
            if rc:
                raise_for(rc, path=table.path)

        def set_exemplar(self, exemplar):
            return   # as prometheus_client's multiprocess mode: no exemplars

        def get(self):
            return table.get(self._row)

        def get_exemplar(self):
            return None

    return CometValue


def enable_prometheus(directory: str | os.PathLike) -> None:
    """Store every prometheus_client value created from now on in ``directory``'s
    metrics table (created if missing). Call once per process before metrics are created
    (the gunicorn and uWSGI integrations do when ``COMETMP_PROMETHEUS=1``); calling it
    again with the same directory does nothing, with another one raises CometError.
    Metrics created before the call keep prometheus_client's in-process values."""
    global _table
    from prometheus_client import values

    root = os.path.abspath(os.fspath(directory))
    with _lock:
        if _table is not None:
            if os.path.dirname(os.path.dirname(_table.path)) == root:
                return
            raise CometError(f"cometmp.metrics.enable_prometheus: this process already stores "
                             f"prometheus_client values in {_table.path}, not {root}")
        table = Table.open(root, create=True)
        values.ValueClass = value_class(table)
        _table = table


def enable_from_environment() -> str | None:
    """The integrations' call (gunicorn's nworkers_changed/on_starting/post_fork, uWSGI's
    import and postfork): with ``COMETMP_PROMETHEUS=1`` and a configured data directory
    (cometmp.configure or ``COMETMP_DIR``), enable_prometheus on it and return it; else
    None. Runs in the master before a preloaded app creates its metrics, and again in
    each worker (idempotent)."""
    if os.environ.get(ENV_PROMETHEUS, "") != "1":
        return None
    from .registry import configured_directory

    directory = configured_directory()
    if directory is None:
        raise CometError(f"{ENV_PROMETHEUS}=1 but no data directory: set COMETMP_DIR or "
                         "call cometmp.configure()")
    enable_prometheus(directory)
    return directory


def enabled_directory() -> str | None:
    """The data directory enable_prometheus() was called with in this process, or None."""
    t = _table
    return None if t is None else os.path.dirname(os.path.dirname(t.path))


class PrometheusCollector:
    """A prometheus_client collector of every worker's application metrics in ``directory``.

    ``CollectorRegistry().register(PrometheusCollector(DIR))`` in any process (a worker,
    the master, a sidecar; enabled or not): each scrape reads the table afresh and
    aggregates per kind and gauge mode as ``MultiProcessCollector`` does. Counters,
    histograms and summaries sum over every column ever bound (dead workers included: their
    increments are never lost); ``live*`` gauges skip columns whose last binder is dead
    (I54). A directory without a table yields nothing.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        self._table: Table | None = None
        self._keys: list[appmetrics.Key] = []

    def describe(self):
        return []

    def _open(self) -> Table | None:
        t = self._table
        if t is None:
            if not os.path.exists(paths.app_metrics_file(self.directory)):
                return None
            t = self._table = Table.open(self.directory, create=False, writable=False)
        return t

    def samples(self) -> list[tuple[appmetrics.Key, str, float, float]]:
        """(key, pid label, value, stamp) of every present cell, as MultiProcessCollector's
        ``_read_metrics`` would see them: a gauge cell of a dead binder is left out for
        ``live*`` modes (I54)."""
        from .registry.table import is_alive

        t = self._open()
        if t is None:
            return []
        n = t.nkeys()
        while len(self._keys) < n:   # rows are append-only (I51): parse each once
            row = len(self._keys)
            kind, mode, text = t.key(row)
            self._keys.append(appmetrics.Key(row, appmetrics.KIND_NAMES[kind],
                                             GAUGE_MODES[mode], text))
        cols = t.bound_columns()
        alive = {c: is_alive(pid, ticks) for c, pid, ticks in cols}
        out = []
        for key in self._keys[:n]:
            live_only = key.kind == "gauge" and key.mode.startswith("live")
            cells = t.row_cells(key.row)
            try:
                for c, _pid, _ticks in cols:
                    if live_only and not alive[c]:
                        continue
                    value, stamp, present = appmetrics.CELL.unpack_from(cells,
                                                                        c * CM_APM_CELL_BYTES)
                    if present:
                        out.append((key, column_label(c), value, stamp))
            finally:
                cells.release()
        return out

    def collect(self):
        from prometheus_client.metrics_core import Metric
        from prometheus_client.samples import Sample
        from prometheus_client.utils import floatToGoString

        metrics: dict[str, Metric] = {}
        modes: dict[str, str] = {}
        for key, pid, value, stamp in self.samples():
            metric = metrics.get(key.metric_name)
            if metric is None:
                metric = metrics[key.metric_name] = Metric(key.metric_name, key.help, key.kind)
            labels = tuple(sorted(key.labels.items()))
            if key.kind == "gauge":
                modes[key.metric_name] = key.mode
                metric.add_sample(key.name, labels + (("pid", pid),), value, stamp)
            else:
                metric.add_sample(key.name, labels, value)
        return _accumulate(metrics, modes, Sample, floatToGoString)


def _accumulate(metrics, modes, Sample, floatToGoString):
    """MultiProcessCollector._accumulate_metrics(metrics, accumulate=True), restated (its
    rules, not its private API): per gauge mode min/max/sum/mostrecent drop the pid
    label; histogram buckets are summed per ``le`` then made cumulative, with ``_count``
    the last bucket; counters and summaries are summed."""
    for metric in metrics.values():
        mode = modes.get(metric.name, "")
        samples = defaultdict(lambda: defaultdict(float))
        stamps = defaultdict(lambda: defaultdict(float))
        buckets = defaultdict(lambda: defaultdict(float))
        for s in metric.samples:
            name, labels, value, timestamp = s.name, s.labels, s.value, s.timestamp
            if metric.type == "gauge":
                if mode not in ("all", "liveall"):
                    labels = tuple(lb for lb in labels if lb[0] != "pid")
                if mode in ("min", "livemin"):
                    cur = samples[labels].setdefault((name, labels), value)
                    if value < cur:
                        samples[labels][(name, labels)] = value
                elif mode in ("max", "livemax"):
                    cur = samples[labels].setdefault((name, labels), value)
                    if value > cur:
                        samples[labels][(name, labels)] = value
                elif mode in ("sum", "livesum"):
                    samples[labels][(name, labels)] += value
                elif mode in ("mostrecent", "livemostrecent"):
                    ts = float(timestamp or 0)
                    if stamps[labels][name] < ts:
                        samples[labels][(name, labels)] = value
                        stamps[labels][name] = ts
                else:
                    samples[labels][(name, labels)] = value
            elif metric.type == "histogram":
                le = next((lb for lb in labels if lb[0] == "le"), None)
                if le is not None:
                    without = tuple(lb for lb in labels if lb[0] != "le")
                    buckets[without][float(le[1])] += value
                else:
                    samples[labels][(name, labels)] += value
            else:
                samples[labels][(name, labels)] += value
        if metric.type == "histogram":
            for labels, values in buckets.items():
                acc = 0.0
                for bound, value in sorted(values.items()):
                    acc += value
                    samples[labels][(metric.name + "_bucket",
                                     labels + (("le", floatToGoString(bound)),))] = acc
                samples[labels][(metric.name + "_count", labels)] = acc
        metric.samples = [Sample(n, dict(lb), v) for by_labels in samples.values()
                          for (n, lb), v in by_labels.items()]
    return metrics.values()

