"""The ``cometmp`` command line (also ``python -m cometmp``). The only module that prints.

Inspection commands (stats, status, dump, tail, verify) open the directory with
``Client(readonly=True)`` or read files directly and never modify anything. With
``--json`` stdout holds exactly one JSON document. Progress goes to stderr, and only
when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from typing import Sequence

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DATA_DIR = 3

RENDER_LIMIT = 200  # characters of a payload shown per line (dump --full shows all)

EPILOG = """\
exit codes:
  0  success (verify/recover: no corruption left)
  1  corruption found, or a check failed (verify, recover, demo)
  2  usage error: bad arguments, unknown stream
  3  the data directory is missing or is not a cometmp data directory

Inspection commands (stats, status, groups, dump, tail, verify, metrics) never modify the
directory. docs/FORMAT.md describes the files.
"""


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


# ------------------------------------------------------------------------------ helpers


class Progress:
    """One self-overwriting progress line on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int, what: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        pct = f"{100 * done // total:3d}%" if total else ""
        line = f"{self.label} {pct} {done}/{total} {what}"
        width = shutil.get_terminal_size((80, 20)).columns
        sys.stderr.write("\r" + line[: width - 1].ljust(width - 1))
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            width = shutil.get_terminal_size((80, 20)).columns
            sys.stderr.write("\r" + " " * (width - 1) + "\r")
            sys.stderr.flush()
            self._shown = False


def _emit_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _data_dir(path: str) -> str:
    from .verify import check_data_directory

    root = os.path.abspath(path)
    check_data_directory(root)  # raises NotADataDirectory -> exit 3
    return root


def _open_readonly(root: str):
    from ..client import Client

    return Client(root, readonly=True)


def _payload_doc(data: bytes) -> dict:
    try:
        return {"encoding": "utf-8", "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(data).decode("ascii")}


def _render(data: bytes, limit: int = 0) -> str:
    """Text of a payload for humans: UTF-8 text as is, anything else as a bytes repr."""
    try:
        text = data.decode("utf-8")
        if not any(ch < " " and ch not in "\t" for ch in text):
            out = text
        else:
            out = text.encode("unicode_escape").decode("ascii")
    except UnicodeDecodeError:
        out = repr(data)
    if limit and len(out) > limit:
        out = out[: limit - 3] + "..."
    return out


def _fmt_ts(ts_ns: int) -> str:
    t = time.gmtime(ts_ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(ts_ns % 1_000_000_000) // 1000:06d}Z"


def _message_doc(m) -> dict:
    doc = {"stream": m.id.stream, "entry": m.id.entry, "timestamp_ns": m.timestamp_ns,
           "length": len(m.data)}
    doc.update(_payload_doc(bytes(m.data)))
    return doc


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


# ------------------------------------------------------------------------------ commands


def cmd_stats(args) -> int:
    from ..stats import directory_stats

    root = _data_dir(args.dir)
    doc = directory_stats(root)
    if args.json:
        _emit_json(doc)
        return EXIT_OK
    t = doc["totals"]
    print(f"{root}: {t['streams']} streams, {t['entries']} entries, {t['segments']} segments, "
          f"{_human_bytes(t['disk_bytes'])} on disk")
    for prefix, fam in doc["families"].items():
        print(f"  family {prefix}: {fam['shards']} shards")
    if doc["streams"]:
        print(f"  {'stream':<32} {'first':>10} {'length':>10} {'segs':>5} {'disk':>10}  counters")
    for name, s in doc["streams"].items():
        length = "?" if s["length"] is None else str(s["length"])
        c = s["counters"]
        notable = ", ".join(f"{k}={v}" for k, v in c.items()
                            if v and k not in ("appends", "bytes"))
        if s["state"] != "ok":
            notable = f"state {s['state']}" + (f", {notable}" if notable else "")
        print(f"  {name:<32} {s['first_entry']:>10} {length:>10} {s['segments']:>5} "
              f"{_human_bytes(s['disk_bytes']):>10}  {notable}")
    return EXIT_OK


def cmd_groups(args) -> int:
    """List consumer groups with their per-stream acked offset and lag and their live
    members (pid, streams held, last seen); --delete NAME."""
    from ..client import Client

    root = _data_dir(args.dir)
    if args.delete:
        with Client(root) as client:
            existed = client.delete_consumer_group(args.delete)
        if not existed:
            raise UsageError(f"no consumer group {args.delete!r} in {root}")
        if args.json:
            _emit_json({"deleted": args.delete, "existed": existed})
        else:
            print(f"consumer group {args.delete!r} deleted")
        return EXIT_OK
    with Client(root, readonly=True) as client:
        groups = client.consumer_groups()
    if args.json:
        _emit_json({"groups": groups})
        return EXIT_OK
    if not groups:
        print(f"{root}: no consumer groups")
    for g in groups:
        total = sum(s["lag"] for s in g["streams"].values())
        print(f"group {g['name']}: patterns {', '.join(g['patterns']) or '-'}; lag {total}")
        for name, s in g["streams"].items():
            acked = "-" if s["acked"] is None else s["acked"]
            dropped = f"  dropped {s['dropped']}" if s["dropped"] else ""
            print(f"  {name:<32} acked {acked:>10}  length {s['length']:>10}  lag {s['lag']:>10}{dropped}")
        now = time.time_ns()
        for m in g.get("members", []):
            seen = f"{max(0, now - m['seen_ns']) / 1e9:.1f} s ago"
            state = "" if m["live"] else "  (dead: reaped at the next member's refresh)"
            held = ", ".join(m["streams"]) or "-"
            print(f"  member {m['id']} pid {m['pid']}: {len(m['streams'])} streams ({held}), "
                  f"last seen {seen}{state}")
    return EXIT_OK


def cmd_status(args) -> int:
    from .status import registry_status, render_status  # lazily: needs posix_ipc

    root = _data_dir(args.dir)
    doc = registry_status(root)
    if args.json:
        _emit_json(doc)
    else:
        sys.stdout.write(render_status(doc))
    return EXIT_OK


def cmd_dump(args) -> int:
    from ..errors import StreamNotFound

    root = _data_dir(args.dir)
    if args.count is not None and args.count < 0:
        raise UsageError("--count must be >= 0")
    with _open_readonly(root) as client:
        if args.stream not in client.streams(args.stream):
            raise StreamNotFound(f"no stream {args.stream!r} in {root}")
        start = args.from_entry
        if start < 0:  # from the end, like a negative index
            start = max(0, client.length(args.stream) + start)
        messages = []
        shown = 0
        for m in client.scan(args.stream, start):
            if args.count is not None and shown >= args.count:
                break
            shown += 1
            if args.json:
                messages.append(_message_doc(m))
            else:
                print(f"{m.id.entry}\t{_fmt_ts(m.timestamp_ns)}\t{len(m.data)}\t"
                      f"{_render(bytes(m.data), 0 if args.full else RENDER_LIMIT)}")
        skipped = client.stats()["streams"].get(args.stream, {}).get("corrupt_skipped", 0)
        if args.json:
            _emit_json({"stream": args.stream, "from": start, "count": shown,
                        "length": client.length(args.stream), "corrupt_skipped": skipped,
                        "entries": messages})
        elif skipped:
            print(f"cometmp: {skipped} damaged entries skipped (run `cometmp verify {args.dir}`)",
                  file=sys.stderr)
    return EXIT_CHECK_FAILED if skipped else EXIT_OK


def cmd_tail(args) -> int:
    root = _data_dir(args.dir)
    if args.n < 0:
        raise UsageError("-n must be >= 0")
    with _open_readonly(root) as client:
        names = client.streams(args.pattern)
        if not names and not args.follow:
            raise UsageError(f"no stream matches {args.pattern!r} in {root}")
        recent = []
        positions: dict[str, int] = {}
        for name in names:
            recent.extend(client.list_recent(name, args.n) if args.n else [])
            positions[name] = client.length(name)
        recent.sort(key=lambda m: (m.timestamp_ns, m.id.stream, m.id.entry))
        limit = 0 if args.full else RENDER_LIMIT
        for m in recent[-args.n:] if args.n else []:
            _print_tail_line(m, len(names) > 1, limit)
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        try:
            while True:
                time.sleep(args.interval)
                for name in client.streams(args.pattern):
                    start = positions.get(name, 0)
                    if client.length(name) <= start:
                        positions.setdefault(name, start)
                        continue
                    for m in client.scan(name, start):
                        _print_tail_line(m, True, limit)
                        positions[name] = m.id.entry + 1
                sys.stdout.flush()
        except KeyboardInterrupt:
            return EXIT_OK


def _print_tail_line(m, with_stream: bool, limit: int) -> None:
    prefix = f"{m.id.stream}#{m.id.entry} " if with_stream else f"#{m.id.entry} "
    print(f"{_fmt_ts(m.timestamp_ns)} {prefix}{_render(bytes(m.data), limit)}")


def _print_problems(problems, limit: int | None = None) -> None:
    shown = problems if limit is None else problems[:limit]
    for p in shown:
        print(f"  {p}")
    if limit is not None and len(problems) > limit:
        print(f"  ... and {len(problems) - limit} more (use --json for all)")


def cmd_verify(args) -> int:
    from .verify import OracleUnavailable, verify_directory

    root = _data_dir(args.dir)
    progress = Progress("verify")
    try:
        report = verify_directory(root, oracle=args.oracle, progress=progress)
    except OracleUnavailable as e:
        print(f"cometmp verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        progress.done()
    if args.json:
        _emit_json(report.to_dict())
    else:
        d = report.to_dict()
        how = "C core and Python oracle" if args.oracle else "C core"
        print(f"{root}: {len(report.streams)} streams, {d['segments']} segments, {d['records']} records "
              f"checked ({how})")
        problems = report.all_problems()
        if problems:
            _print_problems(problems)
        if report.ok:
            tail = f", {report.warnings} warnings (repairable: `cometmp recover`)" if report.warnings else ""
            print(f"OK: no corruption found{tail}")
        else:
            print(f"CORRUPT: {report.errors} errors, {d['corrupt_records']} records lost")
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def cmd_recover(args) -> int:
    from .verify import recover_directory

    root = _data_dir(args.dir)
    progress = Progress("recover")
    try:
        report = recover_directory(root, progress=progress)
    finally:
        progress.done()
    doc = report.to_dict()
    if args.json:
        _emit_json(doc)
    else:
        print(f"{root}: opened {len(report.opened)} streams for writing (every tail validated)")
        for a in report.actions:
            print(f"  {a}")
        if not report.actions:
            print("  nothing to repair")
        for f in report.failures:
            print(f"FAILED: {f}")
        v = report.verify
        remaining = [p for p in v.all_problems()] if v is not None else []
        if remaining:
            print("after recovery:")
            _print_problems(remaining)
        if doc["ok"]:
            print(f"OK: {len(report.opened)} streams recovered, {len(report.indexes_rebuilt)} indexes rebuilt")
        else:
            print("NOT OK: damage remains (corrupt records cannot be repaired; readers skip them)")
    return EXIT_OK if doc["ok"] else EXIT_CHECK_FAILED


def cmd_demo(argv: Sequence[str]) -> int:
    from . import demo  # lazily: the end-to-end demo drives gunicorn and a consumer process

    return int(demo.main(list(argv)) or 0)


def cmd_metrics(args) -> int:
    from .. import metrics

    root = _data_dir(args.dir)
    fams = metrics.families(root)
    if args.json:
        _emit_json(metrics.to_json(fams))
    else:
        sys.stdout.write(metrics.render(fams))
    return EXIT_OK


def cmd_forward(args) -> int:
    """Runs until SIGTERM/SIGINT (exit 0); progress on stderr when it is a terminal."""
    if (args.nats is None) == (args.otlp is None):
        raise UsageError("forward needs exactly one sink: --nats URL --stream NAME, or --otlp URL")
    if args.otlp is not None:
        return _forward_otlp(args)
    if args.stream is None:
        raise UsageError("forward --nats needs --stream NAME (the JetStream stream)")
    try:
        import nats  # noqa: F401
    except ImportError:
        raise UsageError("forwarding needs nats-py: pip install 'cometmp[nats]'") from None
    from ..forwarder import Forwarder

    root = _data_dir(args.dir)
    tty = sys.stderr.isatty()

    def show(st) -> None:
        if tty:
            state = "connected" if st.connected else "PAUSED (broker unreachable)"
            sys.stderr.write(f"\rforward: {st.forwarded} entries ({st.rate():,.0f}/s), "
                             f"{st.duplicates} duplicates absorbed, {state}   ")
            sys.stderr.flush()

    try:
        fw = Forwarder(root, args.nats, args.stream, args.pattern or "*",
                       batch_size=args.batch_size or 4000,
                       subject_prefix=args.subject_prefix, duplicate_window=args.duplicate_window,
                       timestamp_header=args.timestamp_header, on_progress=show)
    except ValueError as e:
        raise UsageError(str(e)) from None
    fw.run_forever()
    if tty:
        sys.stderr.write("\n")
    st = fw.stats
    doc = {"forwarded": st.forwarded, "duplicates": st.duplicates, "republished": st.republished,
           "errors": st.errors, "reconnects": st.reconnects, "dropped": st.dropped,
           "group": fw.group,
           "stream": fw.stream, "source": fw.source}
    if args.json:
        _emit_json(doc)
    else:
        print(f"forwarded {st.forwarded} entries to JetStream stream {fw.stream} "
              f"({st.duplicates} duplicates absorbed, {st.republished} re-published, "
              f"{st.reconnects} reconnects) as group {fw.group!r}")
    return EXIT_OK


def _forward_otlp(args) -> int:
    """``forward DIR --otlp URL``: the OTLP/HTTP sink (stdlib only)."""
    from .. import otlp_entry
    from ..otlp_forwarder import OtlpForwarder

    root = _data_dir(args.dir)
    tty = sys.stderr.isatty()

    def show(st) -> None:
        if tty:
            state = "connected" if st.connected else "RETRYING (collector unreachable)"
            sys.stderr.write(f"\rforward: {st.forwarded} entries ({st.rate():,.0f}/s), "
                             f"{st.batches} requests, {st.retries} retries, {state}   ")
            sys.stderr.flush()

    try:
        fw = OtlpForwarder(root, args.otlp, args.pattern or otlp_entry.PATTERN,
                           batch_size=args.batch_size or 512,
                           max_request_bytes=args.max_request_bytes, on_progress=show)
    except ValueError as e:
        raise UsageError(str(e)) from None
    fw.run_forever()
    if tty:
        sys.stderr.write("\n")
    st = fw.stats
    doc = {"forwarded": st.forwarded, "requests": st.batches, "retries": st.retries,
           "republished": st.republished, "errors": st.errors,
           "dead_lettered": st.dead_lettered, "dropped": st.dropped, "group": fw.group,
           "endpoint": fw.endpoint}
    if args.json:
        _emit_json(doc)
    else:
        print(f"forwarded {st.forwarded} entries in {st.batches} requests to {fw.endpoint} "
              f"({st.retries} retries, {st.dead_lettered} dead-lettered) as group {fw.group!r}")
    return EXIT_OK


def cmd_bench(argv: Sequence[str]) -> int:
    from . import bench  # lazily: it imports peers (sqlite3, logging) and is optional

    rc = bench.main(list(argv))
    return int(rc or 0)


# ------------------------------------------------------------------------------- parser


def cmd_supervise(args) -> int:
    from ..supervisor import Supervisor

    import signal

    sup = Supervisor(args.dir, args.processes).start()
    signal.signal(signal.SIGTERM, lambda *_: sup._stop.set())  # stop, close, unlink if last
    try:
        sup.run()
    finally:
        sup.close()
    return EXIT_OK


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; a command column wide enough for every name."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=28)

    def add_argument(self, action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):  # argparse under-counts their indent
            self._action_max_length += 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cometmp",
        description="cometmp, an embedded append-only log for Python prefork servers:\n"
                    "inspect, verify and repair a data directory (DIR), run the demo and the\n"
                    "benchmarks. `cometmp COMMAND --help` describes each command.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"cometmp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, help: str, **kw) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, epilog=EPILOG,
                            formatter_class=_Formatter, **kw)
        return sp

    sp = add("stats", "per-stream length, bytes on disk and counters (read-only)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_stats)

    sp = add("status", "the worker registry of a running server: slots, owned shards, "
                       "liveness (read-only)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_status)

    sp = add("groups", "consumer groups: acked offset and lag per stream, live members "
                       "(pid, streams, last seen) (read-only "
                       "unless --delete)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.add_argument("--delete", metavar="NAME", help="delete consumer group NAME and its offsets")
    sp.set_defaults(func=cmd_groups)

    sp = add("dump", "print the entries of one stream (read-only)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("stream", metavar="STREAM", help="stream name, e.g. events:v1:shard:0003")
    sp.add_argument("--from", dest="from_entry", type=int, default=0, metavar="N",
                    help="first entry (negative: counted from the end; default 0)")
    sp.add_argument("--count", type=int, default=None, metavar="K", help="at most K entries")
    sp.add_argument("--full", action="store_true",
                    help=f"print whole payloads (default: the first {RENDER_LIMIT} characters)")
    sp.add_argument("--json", action="store_true",
                    help="print one JSON document (whole payloads, as UTF-8 text or base64)")
    sp.set_defaults(func=cmd_dump)

    sp = add("tail", "print the last entries of the streams matching PATTERN (read-only)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("pattern", metavar="PATTERN", nargs="?", default="*",
                    help='fnmatch pattern of stream names (default "*")')
    sp.add_argument("-n", type=int, default=10, metavar="N", help="entries to show (default 10)")
    sp.add_argument("-f", "--follow", action="store_true",
                    help="keep printing new entries (and new streams) until interrupted")
    sp.add_argument("--full", action="store_true",
                    help=f"whole payloads (default: the first {RENDER_LIMIT} characters), "
                         "e.g. JSON log records")
    sp.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_tail)

    sp = add("verify", "check every record's CRC, segment headers, indexes and state pages "
                       "(read-only); exit 1 on corruption")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.add_argument("--oracle", action="store_true",
                    help="also walk every segment with the pure-Python reader (slow) and "
                         "require it to agree with the C core")
    sp.set_defaults(func=cmd_verify)

    sp = add("recover", "repair torn tails, rebuild state pages and damaged indexes, then verify")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_recover)

    add("demo", "end-to-end demo on gunicorn (kill -9 included); exit 0 only if nothing "
                "acknowledged was lost", add_help=False)

    sp = add("supervise", "run a registry supervisor for a custom prefork pool until killed")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--processes", type=int, required=True, metavar="N",
                    help="configured worker count (processCount)")
    sp.set_defaults(func=cmd_supervise)

    sp = add("metrics", "per-stream counters and consumer lag in Prometheus text format "
                        "(read-only)")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("--json", action="store_true", help="print one JSON document")
    sp.set_defaults(func=cmd_metrics)

    sp = add("forward", "forward every entry to a NATS JetStream stream (exactly once) or OTLP "
                        "entries to an OTLP/HTTP collector, until SIGTERM/SIGINT")
    sp.add_argument("dir", metavar="DIR", help="data directory")
    sp.add_argument("pattern", metavar="PATTERN", nargs="?", default=None,
                    help='fnmatch pattern of streams to forward, also streams created later '
                         '(default "*", with --otlp "otel:*")')
    sp.add_argument("--nats", default=None, metavar="URL", help="NATS server, e.g. nats://127.0.0.1:4222")
    sp.add_argument("--stream", default=None, metavar="NAME",
                    help="with --nats: JetStream stream (created if missing); the consumer group "
                         "is forward:NAME")
    sp.add_argument("--otlp", default=None, metavar="URL",
                    help="OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 (POSTs to /v1/traces "
                         "and /v1/logs); the consumer group is forward:otlp")
    sp.add_argument("--max-request-bytes", type=int, default=4 << 20, metavar="B",
                    help="with --otlp: largest request body built from several entries "
                         "(default 4 MiB)")
    sp.add_argument("--subject-prefix", default=None, metavar="P",
                    help="entries go to subject P.<stream> (default cometmp.NAME)")
    sp.add_argument("--batch-size", type=int, default=None, metavar="K",
                    help="entries read per batch (default 4000 for NATS, pipelined; 512 for OTLP)")
    sp.add_argument("--duplicate-window", type=float, default=120.0, metavar="S",
                    help="duplicate window of a stream this creates, seconds (>= 120)")
    sp.add_argument("--timestamp-header", action="store_true",
                    help="add a Cometmp-Timestamp header (append time, ns) to each message")
    sp.add_argument("--json", action="store_true", help="print a JSON summary at exit")
    sp.set_defaults(func=cmd_forward)

    add("bench", "run the benchmarks (cometmp bench --help for options)", add_help=False)
    return p


def _log_to_stderr() -> None:
    """The library logs (never prints); the CLI shows its warnings on stderr."""
    import logging

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever sys.stderr is at the time (tests swap it)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, _value) -> None:
            pass

    logger = logging.getLogger("cometmp")
    if not any(getattr(h, "_cometmp_cli", False) for h in logger.handlers):
        h = StderrHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        h._cometmp_cli = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import BadStreamName, CometError, StreamNotFound
    from .verify import NotADataDirectory

    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    if argv and argv[0] == "demo":
        return cmd_demo(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except NotADataDirectory as e:
        print(f"cometmp {args.command}: {e}", file=sys.stderr)
        return EXIT_NO_DATA_DIR
    except (UsageError, StreamNotFound, BadStreamName) as e:
        print(f"cometmp {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CometError as e:
        print(f"cometmp {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except BrokenPipeError:  # e.g. `cometmp dump ... | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
