"""The application metrics table (cometmp.appmetrics) and the prometheus_client adapter
(cometmp.prometheus) in one process: layout checks, full-table errors, threads, forks,
processes without a worker slot. Real processes and workers: tests/multiprocess/
test_app_metrics_mp.py; under gunicorn: tests/integration/test_app_metrics_gunicorn.py."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client import values as pc_values  # noqa: E402

from cometmp import appmetrics  # noqa: E402
from cometmp.appmetrics import Table  # noqa: E402
from cometmp.errors import CometError, CorruptRecord, FormatError, MetricsTableFull, ReadOnlyError  # noqa: E402
from cometmp.prometheus import PrometheusCollector, value_class  # noqa: E402


@pytest.fixture
def table(tmp_path, monkeypatch):
    """prometheus_client's values stored in a fresh table (the hook enable_prometheus sets;
    monkeypatch puts prometheus_client's own ValueClass back after the test)."""
    t = Table.open(tmp_path / "data")
    monkeypatch.setattr(pc_values, "ValueClass", value_class(t))
    yield t
    t.close()


def scrape(directory) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry()
    reg.register(PrometheusCollector(directory))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in reg.collect() for s in m.samples}


def root_of(t: Table) -> str:
    return os.path.dirname(os.path.dirname(t.path))


def test_table_is_one_fixed_size_file_with_magic_and_version(tmp_path):
    t = Table.open(tmp_path / "d")
    try:
        assert os.listdir(tmp_path / "d") == ["metrics"]
        assert os.listdir(tmp_path / "d" / "metrics") == ["app"]
        st = os.stat(t.path)
        assert st.st_size == appmetrics.FILE_BYTES and st.st_mode & 0o777 == 0o600
        with open(t.path, "rb") as f:
            head = f.read(8)
        assert head[:4] == b"CMPM" and struct.unpack("<H", head[4:6])[0] == 1
        assert st.st_blocks * 512 >= appmetrics.FILE_BYTES   # I9: reserved whole
    finally:
        t.close()
    again = Table.open(tmp_path / "d")       # a second open maps the same file
    assert again.nkeys() == 0
    again.close()


def test_every_kind_is_stored_and_exposed_like_prometheus_client(table):
    c = Counter("requests", "Requests.", ["path"])
    c.labels("/a").inc()
    c.labels("/a").inc(2.5)
    c.labels("/b").inc()
    g = Gauge("temperature", "T.", multiprocess_mode="livemax")
    g.set(4)
    g.inc(2)
    h = Histogram("latency", "L.", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 3):
        h.observe(v)
    s = Summary("size", "S.")
    s.observe(10)
    s.observe(5)
    got = scrape(root_of(table))
    assert got[("requests_total", (("path", "/a"),))] == 3.5
    assert got[("requests_total", (("path", "/b"),))] == 1.0
    assert got[("temperature", ())] == 6.0
    assert got[("latency_bucket", (("le", "0.1"),))] == 1.0
    assert got[("latency_bucket", (("le", "1.0"),))] == 3.0
    assert got[("latency_bucket", (("le", "+Inf"),))] == 4.0
    assert got[("latency_count", ())] == 4.0
    assert got[("latency_sum", ())] == pytest.approx(4.25)
    assert (got[("size_count", ())], got[("size_sum", ())]) == (2.0, 15.0)
    assert c.labels("/a")._value.get() == 3.5      # get() reads the shared cell


def test_a_process_without_a_slot_uses_the_unslotted_column(table):
    g = Gauge("queue", "Q.", multiprocess_mode="all")
    g.set(7)
    assert table.column() == appmetrics.UNSLOTTED
    assert scrape(root_of(table)) == {("queue", (("pid", "unslotted"),)): 7.0}
    (col, pid, _ticks), = table.bound_columns()
    assert (col, pid) == (appmetrics.UNSLOTTED, os.getpid())


def test_every_gauge_mode_aggregates_one_live_column(table):
    for mode in sorted(Gauge._MULTIPROC_MODES):
        g = Gauge(f"g_{mode}", "G.", multiprocess_mode=mode)
        g.set(3.0)
    got = scrape(root_of(table))
    for mode in Gauge._MULTIPROC_MODES:
        labels = (("pid", "unslotted"),) if mode in ("all", "liveall") else ()
        assert got[(f"g_{mode}", labels)] == 3.0, mode


def test_threads_adding_to_one_cell_lose_no_increment(table):
    c = Counter("hits", "H.")
    n, per = 8, 5000

    def work():
        for _ in range(per):
            c.inc()
    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert scrape(root_of(table))[("hits_total", ())] == n * per


def test_a_value_created_before_fork_is_added_to_by_the_child(table):
    c = Counter("forked", "F.")
    c.inc(1)
    pid = os.fork()
    if pid == 0:   # the child: unslotted too, adding through the inherited mapping
        try:
            c.inc(10)
            Gauge("child_only", "C.").set(1)    # a key made in the child, under its own lock
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    c.inc(100)
    got = scrape(root_of(table))
    assert got[("forked_total", ())] == 111.0
    assert got[("child_only", (("pid", "unslotted"),))] == 1.0


def test_a_full_key_table_raises_metrics_table_full_and_writes_nothing(table):
    c = Counter("wide", "W.", ["n"])
    for i in range(appmetrics.KEY_CAP):
        c.labels(str(i)).inc()
    before = table.nkeys()
    with pytest.raises(MetricsTableFull, match=r"full: 1024 of 1024 keys") as e:
        c.labels("one-too-many")
    assert table.path in str(e.value) and isinstance(e.value, CometError)
    assert table.nkeys() == before == appmetrics.KEY_CAP
    c.labels("0").inc()                         # existing values keep working
    assert scrape(root_of(table))[("wide_total", (("n", "0"),))] == 2.0


def test_a_full_key_text_area_raises_metrics_table_full(table):
    big = "x" * 60000
    c = Counter("long", "L.", ["v"])
    made = 0
    with pytest.raises(MetricsTableFull, match="key-text bytes used"):
        for i in range(10):
            c.labels(f"{i}{big}")
            made += 1
    assert 0 < made < 10 and table.nkeys() == made


def test_info_and_enum_keep_their_in_process_values(table):
    Info("build", "B.").info({"version": "1"})
    Enum("state", "S.", states=["a", "b"]).state("b")
    assert table.nkeys() == 0                   # no value class: nothing in the table


def test_another_version_is_refused_with_format_error(tmp_path):
    t = Table.open(tmp_path / "d")
    path = t.path
    t.close()
    with open(path, "r+b") as f:
        f.seek(appmetrics.CM_APM_OFF_VERSION)
        f.write(struct.pack("=H", 9))
    with pytest.raises(FormatError, match=r"version 9 at offset 4; this build reads version 1"):
        Table.open(tmp_path / "d")


def test_a_bad_magic_and_a_short_file_are_refused(tmp_path):
    t = Table.open(tmp_path / "d")
    path = t.path
    t.close()
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    with pytest.raises(FormatError, match="bad magic"):
        Table.open(tmp_path / "d")
    os.truncate(path, 4096)
    with pytest.raises(FormatError, match="is 4096 bytes"):
        Table.open(tmp_path / "d")


def test_a_damaged_key_count_or_key_record_is_corrupt_record(tmp_path, monkeypatch):
    t = Table.open(tmp_path / "d")
    monkeypatch.setattr(pc_values, "ValueClass", value_class(t))
    Counter("ok", "O.").inc()
    t.close()
    path = os.path.join(tmp_path, "d", "metrics", "app")
    with open(path, "r+b") as f:
        f.seek(appmetrics.CM_APM_KEYS_OFF)
        f.write(struct.pack("=II", 10**6, 5))   # key record 0 points past the text
    with pytest.raises(CorruptRecord, match=r"key record 0 at offset 8192"):
        PrometheusCollector(tmp_path / "d").samples()
    with open(path, "r+b") as f:
        f.seek(appmetrics.CM_APM_OFF_NKEYS)
        f.write(struct.pack("=I", appmetrics.KEY_CAP + 1))
    with pytest.raises(CorruptRecord, match="nkeys 1025"):
        Table.open(tmp_path / "d")


def test_a_directory_without_a_table_scrapes_empty(tmp_path):
    assert scrape(tmp_path) == {}


def test_the_core_never_imports_prometheus_client():
    code = textwrap.dedent("""
        import sys, cometmp, cometmp.metrics, cometmp.appmetrics, cometmp.prometheus
        import cometmp.integrations.gunicorn, cometmp.integrations.uwsgi
        assert "prometheus_client" not in sys.modules, "imported"
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_enable_prometheus_is_idempotent_and_refuses_a_second_directory(tmp_path):
    code = textwrap.dedent(f"""
        import cometmp.metrics as m
        from cometmp.errors import CometError
        m.enable_prometheus({str(tmp_path / 'a')!r})
        m.enable_prometheus({str(tmp_path / 'a')!r})
        from prometheus_client import Counter
        Counter("made_after", "M.").inc(3)
        try:
            m.enable_prometheus({str(tmp_path / 'b')!r})
        except CometError as e:
            print("refused:", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "already stores" in r.stdout
    assert scrape(tmp_path / "a") == {("made_after_total", ()): 3.0}
    assert not os.path.exists(tmp_path / "b")


def test_a_read_only_table_refuses_this_process_column_with_read_only_error(tmp_path):
    t = Table.open(tmp_path / "data")
    row = t.row(appmetrics.KINDS["counter"], 0, "c\n{}")
    t.add(row, 2.0)
    t.close()
    ro = Table.open(tmp_path / "data", create=False, writable=False)
    try:
        with pytest.raises(ReadOnlyError, match="read-only"):
            ro.get(row)
        assert sum(ro.read_cell(row, col)[0] for col, _pid, _t in ro.bound_columns()) == 2.0
    finally:
        ro.close()


def _close_under(t, ops) -> tuple[list, int]:
    """Each op in a loop on its own thread, then ``t.close()`` from this one: returns the
    exceptions other than ClosedError (the findings) and how many threads stopped with
    ClosedError."""
    from cometmp.errors import ClosedError

    go, errors, done = threading.Barrier(len(ops) + 1), [], []

    def hammer(op):
        go.wait()
        try:
            while True:
                op()
        except ClosedError:
            done.append(op)
        except Exception as e:   # noqa: BLE001 - anything else is the finding
            errors.append(repr(e))

    ts = [threading.Thread(target=hammer, args=(op,)) for op in ops]
    for th in ts:
        th.start()
    go.wait()
    t.close()
    for th in ts:
        th.join(30)
    return errors, len(done)


def test_close_racing_updates_in_other_threads_gives_closed_error_never_a_crash(tmp_path):
    from cometmp.errors import ClosedError

    for trial in range(20):
        t = Table.open(tmp_path / f"d{trial}")
        row = t.row(appmetrics.KINDS["counter"], 0, "c\n{}")
        t.add(row, 1.0)
        errors, stopped = _close_under(t, [lambda: t.add(row, 1.0), lambda: t.get(row)])
        assert not errors, f"trial {trial}: {errors}"
        assert stopped == 2, f"trial {trial}: a thread did not stop with ClosedError"
    for op in (lambda: t.add(row, 1.0), lambda: t.set(row, 2.0), lambda: t.get(row)):
        with pytest.raises(ClosedError, match="is closed"):
            op()


def test_close_racing_new_metrics_and_readers_gives_closed_error_never_a_crash(tmp_path):
    # Creating a metric's row (the key lock, then stores into the mapping), marking it
    # present (touch), and the collector's readers (nkeys, key, bound_columns, row_cells)
    # against close() in another thread: ClosedError, never TypeError/ValueError on a
    # mapping that close() set to None or unmapped.
    from cometmp.errors import ClosedError

    kind = appmetrics.KINDS["counter"]
    for trial in range(20):
        t = Table.open(tmp_path / f"d{trial}")
        t.add(t.row(kind, 0, "seed\n{}"), 1.0)
        names = iter(range(10 ** 9))

        def new_metric():
            r = t.row(kind, 0, f"m{next(names) % 900}\n{{}}")
            t.touch(r)

        def readers():
            for r in range(t.nkeys()):
                t.key(r)
                t.row_cells(r).release()
            t.bound_columns()

        errors, stopped = _close_under(t, [new_metric, readers, lambda: t.add(0, 1.0)])
        assert not errors, f"trial {trial}: {errors}"
        assert stopped == 3, f"trial {trial}: a thread did not stop with ClosedError"
    for op in (lambda: t.row(kind, 0, "late\n{}"), lambda: t.touch(0), t.nkeys,
               lambda: t.key(0), t.bound_columns, lambda: t.row_cells(0), lambda: t.binder(0)):
        with pytest.raises(ClosedError, match="is closed"):
            op()


def test_updates_through_a_read_only_table_raise_read_only_error_not_closed(tmp_path):
    from cometmp.errors import ReadOnlyError

    t = Table.open(tmp_path)
    row = t.row(appmetrics.KINDS["counter"], 0, "c\n{}")
    t.add(row, 1.0)
    ro = Table.open(tmp_path, create=False, writable=False)
    try:
        for op in (lambda: ro.add(row, 1.0), lambda: ro.set(row, 2.0), lambda: ro.touch(row),
                   lambda: ro.row(appmetrics.KINDS["counter"], 0, "new\n{}")):
            with pytest.raises(ReadOnlyError, match="read-only"):
                op()
        assert ro.nkeys() == 1          # nothing was written through it
    finally:
        ro.close()
        t.close()
