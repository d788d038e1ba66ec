"""Prometheus metrics of a data directory, read from its shared state — no per-pid files.

Runs in any process, registered or not; reads only (state pages, the offsets file,
directory listings) and never writes. Every process sees the same numbers because the
counters live in each stream's state page (native/format.h ``CM_CTR_*``, docs/FORMAT.md
"Counters") and the consumer offsets in ``consumers/offsets``: the set of files read is
bounded by the number of streams, however many workers come and go. (prometheus_client's
multiprocess mode, by contrast, keeps one file per pid and a scrape reads all of them.)

Three ways to get them::

    cometmp metrics DIR                        # text exposition format 0.0.4 on stdout

    text = cometmp.metrics.collect(DIR)        # the same text, as a str

    from prometheus_client import REGISTRY     # in a gunicorn app: any worker may serve
    REGISTRY.register(cometmp.metrics.CometCollector(DIR))   # /metrics, all see everything

Application metrics (the app's own prometheus_client Counter/Gauge/Histogram/Summary,
shared by every worker through cometmp shared memory) are cometmp.prometheus, re-exported
here: ``enable_prometheus(DIR)`` before the app creates metrics, ``PrometheusCollector(DIR)``
in the scraping process.

Metrics (label ``stream``, plus ``family``/``shard`` for a family's shard streams):

- ``cometmp_<counter>_total`` for every state-page counter (``cometmp.format.COUNTERS``):
  appends, bytes, rotations, recoveries, bytes_dropped, corrupt_records, fsyncs,
  retention_segments, retention_bytes, compressed, lock_recoveries, contended,
  clock_clamps, disk_full, spare_rotations. The values are exactly ``cometmp stats``' counters.
- gauges ``cometmp_stream_length`` (next entry number), ``cometmp_stream_first_entry``,
  ``cometmp_stream_entries`` (retained), ``cometmp_stream_segments``,
  ``cometmp_stream_disk_bytes``, ``cometmp_stream_state_ok``; ``cometmp_family_shards``.
- per consumer group (labels ``group``, ``stream``): ``cometmp_consumer_lag`` (entries not
  yet acknowledged), ``cometmp_consumer_dropped_total`` (unacknowledged entries the hard
  retention cap deleted); ``cometmp_consumer_groups``.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from dataclasses import dataclass, field

from . import paths
from .format import COUNTERS

from .prometheus import PrometheusCollector, enable_prometheus

__all__ = ["CometCollector", "MetricFamily", "PrometheusCollector", "collect",
           "enable_prometheus", "families"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: HELP text of each state-page counter (docs/FORMAT.md "Counters")
COUNTER_HELP = {
    "appends": "Entries appended.",
    "bytes": "Payload bytes appended, as stored.",
    "rotations": "Segments sealed by rotation.",
    "recoveries": "Tail validations (writer opens and dead-owner repairs).",
    "bytes_dropped": "Torn-tail bytes zeroed by recovery.",
    "corrupt_records": "Records found corrupt by recovery.",
    "fsyncs": "fsyncs of the stream's files.",
    "retention_segments": "Segments deleted by retention.",
    "retention_bytes": "Bytes deleted by retention.",
    "compressed": "Entries stored zstd-compressed.",
    "lock_recoveries": "Writer-lock acquisitions that found a dead owner.",
    "contended": "Writer-lock acquisitions that had to wait.",
    "clock_clamps": "Timestamps raised because the clock stepped back.",
    "disk_full": "Segment allocations that failed with ENOSPC/EDQUOT.",
    "spare_rotations": "Rotations that took a segment made ahead of need.",
}


@dataclass
class MetricFamily:
    """One metric family: ``name`` (without ``_total`` for counters), ``type`` ("counter"
    or "gauge"), ``help`` and its samples as (labels, value) pairs."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name

    def add(self, labels: dict[str, str], value: float) -> None:
        self.samples.append((labels, value))


def _stream_labels(name: str) -> dict[str, str]:
    split = paths.split_shard_stream(name)
    if split is None:
        return {"stream": name, "family": "", "shard": ""}
    return {"stream": name, "family": split[0], "shard": str(split[1])}


def families(path: str | os.PathLike) -> list[MetricFamily]:
    """Every metric family of the data directory ``path`` (empty if it does not exist)."""
    from .stats import directory_stats

    root = os.path.abspath(os.fspath(path))
    out: list[MetricFamily] = []
    if not os.path.isdir(root):
        return out
    doc = directory_stats(root)
    streams = doc["streams"]

    for counter in COUNTERS:
        fam = MetricFamily(f"cometmp_{counter}", "counter", COUNTER_HELP.get(counter, counter))
        for name, s in streams.items():
            if counter in s["counters"]:
                fam.add(_stream_labels(name), s["counters"][counter])
        out.append(fam)

    gauges = [
        ("cometmp_stream_length", "Next entry number of the stream (entries ever appended).",
         lambda s: s["length"]),
        ("cometmp_stream_first_entry", "Oldest entry still retained.", lambda s: s["first_entry"]),
        ("cometmp_stream_entries", "Entries retained (length - first_entry).",
         lambda s: None if s["length"] is None else s["length"] - s["first_entry"]),
        ("cometmp_stream_segments", "Segment files.", lambda s: s["segments"]),
        ("cometmp_stream_disk_bytes", "Bytes allocated on disk by the stream's files.",
         lambda s: s["disk_bytes"]),
        ("cometmp_stream_state_ok", "1 if the stream's state page is present and valid.",
         lambda s: 1 if s["state"] == "ok" else 0),
    ]
    for gname, ghelp, get in gauges:
        fam = MetricFamily(gname, "gauge", ghelp)
        for name, s in streams.items():
            v = get(s)
            if v is not None:
                fam.add(_stream_labels(name), v)
        out.append(fam)

    fam = MetricFamily("cometmp_family_shards", "gauge", "Shard count of each stream family.")
    for prefix, f in doc["families"].items():
        if f.get("shards") is not None:
            fam.add({"family": prefix}, f["shards"])
    out.append(fam)

    out.extend(_consumer_families(root, streams))
    return out


def _consumer_families(root: str, streams: dict) -> list[MetricFamily]:
    """Lag per (group, stream) from the offsets file, read-only (cometmp.offsets)."""
    groups_fam = MetricFamily("cometmp_consumer_groups", "gauge", "Live consumer groups.")
    lag = MetricFamily("cometmp_consumer_lag", "gauge",
                       "Entries of the stream the group has not acknowledged (still retained).")
    dropped = MetricFamily("cometmp_consumer_dropped", "counter", "Unacknowledged entries of "
                           "the group deleted by the hard retention cap.")
    try:
        from .offsets import OffsetStore, offsets_path

        if not os.path.exists(offsets_path(root)):
            groups = []
        else:
            store = OffsetStore(root, writable=False)
            try:
                groups = store.groups()
            finally:
                store.close()
    except Exception:  # an unreadable offsets file must not break the stream metrics
        logging.getLogger("cometmp").warning("cometmp.metrics: cannot read consumer offsets of %s",
                                             root, exc_info=True)
        return [groups_fam, lag, dropped]
    groups_fam.add({}, len(groups))
    from .errors import CometError
    from .window import WindowFile

    try:
        windows = WindowFile(root, writable=False) if groups else None
    except CometError as e:   # an unreadable windows file: no lag figures rather than wrong ones
        logging.getLogger("cometmp").warning("cometmp.metrics: %s", e)
        return [groups_fam, lag, dropped]
    try:
        _add_group_lags(groups, streams, windows, lag, dropped)
    finally:
        if windows is not None:
            windows.close()
    return [groups_fam, lag, dropped]


def _add_group_lags(groups, streams: dict, windows, lag: MetricFamily, dropped: MetricFamily) -> None:
    from .errors import CometError
    from .window import unacked

    for g in groups:
        names = set(g.slots) | {n for n in streams
                                if any(fnmatch.fnmatchcase(n, p) for p in g.patterns)}
        for name in sorted(names):
            s = streams.get(name)
            if s is None or s["length"] is None:
                continue
            slot = g.slots.get(name)
            start = s["first_entry"] if slot is None or slot.next is None else slot.next
            labels = {"group": g.name, "stream": name}
            try:
                st = windows.load(slot.index, g.id, slot.resets) if slot is not None else None
            except CometError as e:   # a damaged window: no lag figure rather than a wrong one
                logging.getLogger("cometmp").warning("cometmp.metrics: %s", e)
            else:
                lag.add(labels, unacked(s["length"], max(start, s["first_entry"]), st))
            if slot is not None:
                dropped.add(labels, slot.dropped)


# ------------------------------------------------------------------------ text exposition

def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(fams: list[MetricFamily]) -> str:
    """The Prometheus text exposition format (0.0.4) of ``fams``."""
    lines = []
    for fam in fams:
        sname = fam.sample_name
        lines.append(f"# HELP {sname} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {sname} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                body = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                lines.append(f"{sname}{{{body}}} {_value(value)}")
            else:
                lines.append(f"{sname} {_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def collect(path: str | os.PathLike) -> str:
    """The metrics of data directory ``path`` in Prometheus text format."""
    return render(families(path))


def to_json(fams: list[MetricFamily]) -> dict:
    """One JSON-able document of ``fams`` (``cometmp metrics --json``)."""
    return {f.sample_name: {"type": f.type, "help": f.help,
                            "samples": [{"labels": labels, "value": v} for labels, v in f.samples]}
            for f in fams}


class CometCollector:
    """A ``prometheus_client`` custom collector for data directory ``path``.

    ``REGISTRY.register(CometCollector(path))`` in any process (a gunicorn worker, the
    master, a sidecar); each scrape reads the state pages afresh. The directory need not
    exist yet at registration: it then yields no samples. Needs ``prometheus_client``
    (``pip install cometmp[prometheus]``), imported only when a scrape runs.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def describe(self):
        # registering must not scrape (the directory may not exist yet); names are
        # all prefixed cometmp_, so collisions with the app's metrics are not expected
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for fam in families(self.path):
            keys = sorted({k for labels, _ in fam.samples for k in labels})
            cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
            m = cls(fam.name, fam.help, labels=keys)
            for labels, value in fam.samples:
                m.add_metric([str(labels.get(k, "")) for k in keys], value)
            yield m
