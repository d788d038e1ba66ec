"""The worker of the injected-fault tier (test_injected_faults.py), on the failpoint core.

    python injected_fault_worker.py SO BASE SCENARIO CASES OUT

Loads the failpoint core SO as cometmp._cffi (tests/failpoints.py). CASES is JSON, a list
of [spec, errno name, durability]; case i runs in BASE/i: it prepares the scenario's files without
faults, sets COMETMP_FAILPOINT=spec around the scenario's steps, and checks in process
that every error is the cometmp one for the injected errno (DiskFull for ENOSPC/EDQUOT,
StorageError otherwise) and that no entry number is handed out twice. Then it clears the
failpoint and finishes the steps (all must succeed). OUT gets, per case: the entries
acknowledged {entry: [size, sha256]}, the lowest entry retention may have removed below
(``first``), the group's committed position (``acked``), how many times the point fired
(``fired``) and a failure text (``bad``, empty when the case passed).

Scenarios (the path each point is on; docs/ARCHITECTURE.md §4.2):
  write          appends of 18-90 KiB across rotations, a sync every fifth step
  open           reopen of a closed stream (files intact)
  open-rebuild   reopen after its state page and index were removed (both rebuilt)
  create         a new stream of a new family (directory, state page, first segment)
  recovery       reopen after a torn tail: junk after the tail, the file cut short
  recovery-header  reopen after a torn tail and a damaged segment header
  group          a consumer group created where no offsets file exists yet
  ack            a second consumer of an existing group (offsets file opened, mapped)
  ack-window     out-of-order acks of a new group (windows file created, copies switched)
  app-metrics    the application metrics table created (reserved whole, linked into place)
  retention      max_shard_bytes retention over five sealed segments
  marker         a new data directory: marker, family file, stream (flock)
  readonly       reads of a closed stream by a readonly client (state page, segments, indexes)
  index-persist  a writable read of a sealed segment whose index is missing (rebuilt, persisted)
  recover-index  ``cometmp recover`` rebuilding a sealed segment's missing index
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import struct
import sys
import traceback

tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, tests)
import failpoints  # noqa: E402

so, base_dir, scenario, cases_json, out = sys.argv[1:6]
failpoints.bootstrap(so)

import cometmp  # noqa: E402
from cometmp import format as fmt, paths  # noqa: E402

STREAM = "rot:shard:0000"
ERRNO = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EIO": errno.EIO}
MiB = 1024 * 1024


class Bad(Exception):
    pass


def digest(b: bytes) -> list:
    return [len(b), hashlib.sha256(b).hexdigest()]


def config(durability: str = "none", **retention) -> cometmp.Config:
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = MiB
    cfg.storage.preallocate_bytes = 64 * 1024
    cfg.storage.durability = durability
    for k, v in retention.items():
        setattr(cfg.retention, k, v)
    return cfg


class Case:
    def __init__(self, root: str, spec: str, err: str, durability: str):
        self.root, self.spec, self.err, self.durability = root, spec, ERRNO[err], durability
        self.acked: dict[int, list] = {}
        self.first = 0
        self.group_acked = None
        self.fired = 0
        self.rng = random.Random(hash(spec) & 0xFFFF)

    def injected(self, e: Exception, step: str) -> None:
        """An error while the failpoint is set: must be the cometmp one for the errno."""
        want = cometmp.DiskFull if self.err in (errno.ENOSPC, errno.EDQUOT) else cometmp.StorageError
        if type(e) is not want or getattr(e, "errno", None) != self.err:
            raise Bad(f"{step}: {type(e).__name__} errno {getattr(e, 'errno', None)} for "
                      f"injected {errno.errorcode[self.err]}: {e}") from e
        if not str(e).strip() or "/" not in str(e):
            raise Bad(f"{step}: the message names no path: {e!r}")
        self.fired += 1

    def faults(self, on: bool) -> None:
        if on:
            os.environ["COMETMP_FAILPOINT"] = self.spec
        else:
            os.environ.pop("COMETMP_FAILPOINT", None)

    def append(self, lg, c, data_list: list[bytes], step: str, faulty: bool) -> None:
        before = c.length(STREAM) if os.path.isdir(paths.stream_dir(self.root, STREAM)) else 0
        try:
            if len(data_list) == 1:
                entries = [lg.append(data_list[0]).entry]
            else:
                entries = [m.entry for m in lg.append_many(data_list)]
        except cometmp.CometError as e:
            if not faulty:
                raise Bad(f"{step}: failed with the failpoint cleared: {e!r}") from e
            self.injected(e, step)
            entries = list(range(before, before + e.appended))
            if c.length(STREAM) != before + e.appended:
                raise Bad(f"{step}: length {c.length(STREAM)} after a failure that wrote "
                          f"{e.appended} at {before}") from e
        for entry, data in zip(entries, data_list):
            if entry in self.acked:
                raise Bad(f"{step}: entry {entry} handed out twice")
            self.acked[entry] = digest(data)
            if c.read(STREAM, entry).data != data:
                raise Bad(f"{step}: entry {entry} reads back other bytes")

    def fill(self, n: int, size: int = 2000, cfg: cometmp.Config | None = None) -> None:
        with cometmp.Client(self.root, config=cfg or config()) as c:
            lg = c.log("rot", shards=1)
            for i in range(n):
                self.append(lg, c, [self.rng.randbytes(size)], f"fill {i}", False)

    def attempt(self, step: str, fn) -> bool:
        """Run fn with the failpoint set; True when it completed, False when it raised
        the injected error (checked)."""
        self.faults(True)
        try:
            fn()
            return True
        except cometmp.CometError as e:
            self.injected(e, step)
            return False
        finally:
            self.faults(False)

    def reopen_appends(self, cfg: cometmp.Config | None = None) -> None:
        with cometmp.Client(self.root, config=cfg or config()) as c:
            self.append(c.log("rot", shards=1), c, [b"after the fault"], "after", False)


# ------------------------------------------------------------------ scenarios

def s_write(case: Case) -> None:
    with cometmp.Client(case.root, config=config(case.durability)) as c:
        lg = c.log("rot", shards=1)
        case.faults(True)
        for i in range(70):
            hi = 90_000 if i % 4 else 500
            batch = [case.rng.randbytes(case.rng.randint(hi // 5, hi))
                     for _ in range(case.rng.randint(2, 4) if i % 7 == 3 else 1)]
            case.append(lg, c, batch, f"append {i}", True)
            if i % 5 == 4:
                try:
                    c.sync()
                except cometmp.CometError as e:
                    case.injected(e, f"sync {i}")
        case.faults(False)
        for i in range(5):
            case.append(lg, c, [case.rng.randbytes(50_000)], f"after {i}", False)
        c.sync()


def _open_and_append(case: Case, cfg: cometmp.Config, family: str = "rot") -> None:
    with cometmp.Client(case.root, config=cfg) as c:
        lg = c.log(family, shards=1)
        if family == "rot":
            case.append(lg, c, [b"during"], "append under the failpoint", True)
        else:
            lg.append(b"new family")


def s_open(case: Case, rebuild: bool = False) -> None:
    case.fill(30)
    if rebuild:
        d = paths.stream_dir(case.root, STREAM)
        os.unlink(os.path.join(d, "state"))
        for f in os.listdir(d):
            if f.endswith(".idx"):
                os.unlink(os.path.join(d, f))
    case.attempt("reopen", lambda: _open_and_append(case, config()))
    case.reopen_appends()


def s_create(case: Case) -> None:
    case.fill(10)
    case.attempt("create a stream", lambda: _open_and_append(case, config("interval"), "new"))
    with cometmp.Client(case.root, config=config()) as c:
        c.log("new", shards=1).append(b"new family")
        if c.length("new:shard:0000") < 1:
            raise Bad("the new stream holds nothing after a successful append")
    case.reopen_appends()


def s_recovery(case: Case, header: bool = False) -> None:
    case.fill(40, 3000)
    d = paths.stream_dir(case.root, STREAM)
    with open(os.path.join(d, "state"), "rb") as f:
        page = f.read()
    tail = struct.unpack_from("<Q", page, fmt.CM_STATE_OFF_TAIL)[0]
    seg = os.path.join(d, paths.segment_name(0))
    with open(seg, "r+b") as f:
        f.seek(tail)
        f.write(os.urandom(700))              # a torn write past the published tail
        if header:
            f.seek(fmt.CM_SEG_OFF_CREATED)
            f.write(b"\xa5" * 4)               # the header checksum no longer matches
        else:
            f.truncate((tail + 700 + 4095) // 4096 * 4096 + 4096)   # the file cut short
    case.attempt("reopen after a torn tail",
                 lambda: _open_and_append(case, config("interval")))
    case.reopen_appends(config("interval"))


def _consume(case: Case, c, expect_from: int) -> int:
    con = cometmp.Consumer(c, group="g")
    got = []
    while True:
        b = con.read("rot:shard:*", timeout=0)
        if not len(b):
            break
        got += [m.id.entry for m in b]
        con.ack(*[m.id for m in b])
    con.close()
    return got[0] if got else expect_from


def s_group(case: Case, second: bool = False) -> None:
    case.fill(20)
    with cometmp.Client(case.root, config=config()) as c:
        if second:
            con = cometmp.Consumer(c, group="g")
            b = con.read("rot:shard:*", max_messages=10, timeout=0)
            con.ack(*[m.id for m in b])
            con.close()
        case.attempt("consumer group", lambda: _consume(case, c, 0))
        start = _consume(case, c, 10 if second else 0)
        if second and start not in (10, 20):
            raise Bad(f"the group re-read from {start} after acking 10")
        con = cometmp.Consumer(c, group="g")
        if len(con.read("rot:shard:*", timeout=0)):
            raise Bad("the group's acks were lost")
        con.close()
    case.group_acked = 20
    case.reopen_appends()


#: ack-window: the acks made, in this order (out of order, so the window is written; [0]
#: and [2] then move the committed prefix)
WINDOW_ACKS = [[1, 3, 5], [7, 8], [0], [2], [10, 12, 14], [4, 6, 9], [11]]


def s_ack_window(case: Case) -> None:
    """Out-of-order acks of a new group under the point (the windows file created on the
    first read, each ack's copy written and switched, I43/I44), then a restart of the
    group: no entry whose ack returned comes back, every entry never acked does, and
    the group drains to nothing after acking them."""
    case.fill(20)
    with cometmp.Client(case.root, config=config()) as c:
        con = cometmp.Consumer(c, group="g")
        got: list = []
        if not case.attempt("first read of a group", lambda: got.extend(
                con.read("rot:shard:*", max_messages=20, timeout=0))):
            got = list(con.read("rot:shard:*", max_messages=20, timeout=0))
        ids = {m.id.entry: m.id for m in got}
        if sorted(ids) != list(range(20)):
            raise Bad(f"the first read delivered {sorted(ids)} of 0..19")
        landed = set()
        for grp in WINDOW_ACKS:
            if case.attempt(f"ack {grp}", lambda: con.ack(*[ids[e] for e in grp])):
                landed |= set(grp)
        con.close()
        con = cometmp.Consumer(c, group="g")      # the group restarted: what is durable
        again = []
        while True:
            b = con.read("rot:shard:*", timeout=0)
            if not len(b):
                break
            again += [m.id.entry for m in b]
            con.ack(b)
        con.close()
        if set(again) & landed:
            raise Bad(f"redelivered {sorted(set(again) & landed)}, whose acks returned")
        never = set(range(20)) - {e for grp in WINDOW_ACKS for e in grp}
        if not never <= set(again):
            raise Bad(f"never acked yet not redelivered: {sorted(never - set(again))}")
        if len(again) != len(set(again)):
            raise Bad(f"redelivered twice: {again}")
        con = cometmp.Consumer(c, group="g")
        if len(con.read("rot:shard:*", timeout=0)):
            raise Bad("the group's acks after the faults were lost")
        con.close()
    case.reopen_appends()


def s_app_metrics(case: Case) -> None:
    """The application metrics table created under the point (metrics/app, FORMAT §10: a
    temp file reserved whole, linked into place): the error leaves no file at the name and
    no temp file, the next open creates it, and a counter's value survives a reopen. The
    log beside it is untouched (check_reopen)."""
    from cometmp import appmetrics

    case.fill(5)
    path = paths.app_metrics_file(case.root)
    got: list = []
    if not case.attempt("create the metrics table", lambda: got.append(appmetrics.Table.open(case.root))):
        if os.path.exists(path):
            try:
                appmetrics.Table.open(case.root, create=False).close()
            except cometmp.CometError as e:
                raise Bad(f"a failed creation left a table that does not open: {e}") from e
        left = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(paths.TMP_SUFFIX)]
        if left:
            raise Bad(f"temp files left after the failed creation: {left}")
        got.append(appmetrics.Table.open(case.root))
    t = got[0]
    row = t.row(appmetrics.KINDS["counter"], 0, "requests_total\n{}")
    t.add(row, 3.0)
    t.close()
    t = appmetrics.Table.open(case.root, create=False)
    try:
        if t.get(row) != 3.0:
            raise Bad(f"the counter reads {t.get(row)} after a reopen, 3.0 was added")
    finally:
        t.close()
    case.reopen_appends()


def s_retention(case: Case) -> None:
    cfg = config(max_shard_bytes=int(1.5 * MiB))
    case.fill(60, 90_000, cfg=config())
    with cometmp.Client(case.root, config=cfg) as c:
        case.attempt("retention", c.run_retention)
        rep = c.run_retention()
        case.first = c.first_entry(STREAM)
        if case.first == 0 and not rep.deleted:
            raise Bad("retention deleted nothing")
    case.acked = {e: d for e, d in case.acked.items() if e >= case.first}
    case.reopen_appends(cfg)


def _no_temp_files(case: Case) -> None:
    for d in (case.root, os.path.join(case.root, "families")):
        left = [f for f in os.listdir(d) if f.endswith(".tmp")] if os.path.isdir(d) else []
        if left:
            raise Bad(f"temp files left in {d}: {left}")


def s_marker(case: Case) -> None:
    """A new data directory: marker, family file, stream directory (flock) under faults."""
    def first() -> None:
        with cometmp.Client(case.root, config=config()) as c:
            case.append(c.log("rot", shards=1), c, [b"first"], "first append", True)
    case.attempt("create the data directory", first)
    _no_temp_files(case)
    case.reopen_appends()
    _no_temp_files(case)


def s_readonly(case: Case) -> None:
    """Reads of a closed stream (two segments) by a readonly client: state page, segments
    and indexes opened and mapped read-only. A later read by the same client works."""
    case.fill(45, 30_000)
    acked = dict(case.acked)
    n = max(acked) + 1

    def reads() -> None:
        if ro.length(STREAM) != n:
            raise Bad(f"readonly length {ro.length(STREAM)}, acknowledged {n}")
        for e in (0, n // 3, n - 1):
            if digest(ro.read(STREAM, e).data) != acked[e]:
                raise Bad(f"readonly read of {e} returned other bytes")
        got = {m.id.entry: digest(m.data) for m in ro.scan(STREAM)}
        if got != acked:
            raise Bad("a readonly scan does not show every acknowledged entry once")

    with cometmp.Client(case.root, readonly=True) as ro:
        case.attempt("readonly reads", reads)
        reads()
    case.reopen_appends()


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _drop_sealed_index(case: Case) -> str:
    case.fill(45, 30_000)
    d = paths.stream_dir(case.root, STREAM)
    if len(paths.list_segment_bases(d)) < 2:
        raise Bad("the fill made no sealed segment")
    idx = os.path.join(d, paths.index_name(0))
    os.unlink(idx)
    return idx


def s_index_persist(case: Case) -> None:
    """A writable client's read of a sealed segment whose index is missing rebuilds it
    and persists it (temp -> rename); a failed persist is logged, the read served."""
    idx = _drop_sealed_index(case)
    logs = _Warnings()
    logging.getLogger("cometmp").addHandler(logs)
    try:
        with cometmp.Client(case.root, config=config()) as c:
            def read() -> None:
                e = 20
                if digest(c.read(STREAM, e).data) != case.acked[e]:
                    raise Bad(f"entry {e} read back other bytes under a failed index persist")
            case.attempt("read a sealed segment without its index", read)
    finally:
        logging.getLogger("cometmp").removeHandler(logs)
    if any("could not persist rebuilt index" in m and idx in m for m in logs.messages):
        case.fired += 1
    elif not os.path.exists(idx):
        raise Bad(f"{idx} neither persisted nor its failure logged: {logs.messages}")
    case.reopen_appends()


def s_recover_index(case: Case) -> None:
    """``cometmp recover`` rebuilding a sealed segment's missing index: a failed persist
    is in the report's failures, naming the index; the next recover rebuilds it."""
    from cometmp.tools.verify import recover_directory

    idx = _drop_sealed_index(case)
    rep = None

    def recover() -> None:
        nonlocal rep
        rep = recover_directory(case.root)
    logs = _Warnings()
    logging.getLogger("cometmp").addHandler(logs)
    try:
        case.attempt("recover", recover)
    finally:
        logging.getLogger("cometmp").removeHandler(logs)
    why = os.strerror(case.err)
    if rep is not None and rep.failures:
        # recover reports a stream it could not repair instead of raising: each failure
        # must name the stream's directory or file and the injected error
        if not all(why in f and (idx in f or STREAM in f) for f in rep.failures):
            raise Bad(f"recover's failures name neither the file nor the error: {rep.failures}")
        case.fired += 1
    elif any("could not persist rebuilt index" in m and idx in m for m in logs.messages):
        case.fired += 1        # the index was renamed in; its directory fsync failed
    rep = recover_directory(case.root)
    if rep.failures or not os.path.exists(idx):
        raise Bad(f"recover with the failpoint cleared: {rep.failures}")
    case.reopen_appends()


SCENARIOS = {
    "marker": s_marker, "readonly": s_readonly, "index-persist": s_index_persist,
    "recover-index": s_recover_index,
    "write": s_write, "open": s_open, "open-rebuild": lambda c: s_open(c, True),
    "create": s_create, "recovery": s_recovery,
    "recovery-header": lambda c: s_recovery(c, True),
    "group": s_group, "ack": lambda c: s_group(c, True), "retention": s_retention,
    "ack-window": s_ack_window, "app-metrics": s_app_metrics,
}


def main() -> int:
    results = []
    for i, (spec, err, durability) in enumerate(json.loads(cases_json)):
        case = Case(os.path.join(base_dir, str(i)), spec, err, durability)
        bad = ""
        try:
            SCENARIOS[scenario](case)
        except Bad as e:
            bad = str(e)
        except Exception:
            bad = "unexpected: " + traceback.format_exc()
        finally:
            case.faults(False)
        results.append({"spec": spec, "root": case.root, "acked": case.acked, "first": case.first,
                        "group_acked": case.group_acked, "fired": case.fired, "bad": bad})
    with open(out, "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
