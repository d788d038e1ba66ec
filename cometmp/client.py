"""cometmp.Client and stream families (Log): the public single-process API.

Not fork-shared: a Client created before fork() (gunicorn --preload) detects the fork
at its next write and reopens its writer handles in the child (I10); mappings used for
reading are valid in both processes.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import resource
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Iterable, Iterator, overload

from . import ownership, paths
from ._ffi import core_path, error_for, lib
from ._appender import Appender
from ._appender import pick_shard as _pick_shard
from .compression import Compressor
from .config import Config
from .errors import (
    BadStreamName,
    ClosedError,
    CometError,
    ConfigError,
    DataDirectoryNotFound,
    FormatError,
    InvalidArgument,
    InvalidPath,
    ReadOnlyError,
    ShardCountMismatch,
    ShardNotOwned,
    StorageError,
    TooManyOpenFiles,
    os_errors,
)
from .shard import MessageID, Reader, StreamMessage, Writer

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger("cometmp")

DIR_FORMAT = "cometmp.dir"
FAMILY_FORMAT = "cometmp.family"
FORMAT_VERSION = 1
MAX_SHARDS = 65536


def pick_shard(key: str | bytes | bytearray | memoryview, shard_count: int) -> int:
    """Shard for ``key`` among ``shard_count``: MurmurHash3 x86_32 (seed 0, unsigned) of the
    key's bytes (str is UTF-8) modulo the count. Identical in every process and version.

    The rule is implemented once, in C (native/appender.c), where keyed appends use it
    without calling back into Python. Raises TypeError for other key types, ValueError for
    a shard count that is not a positive int."""
    return _pick_shard(key, shard_count)


class MessageIDs(Sequence[MessageID]):
    """The ids of one append_many: a contiguous range of entries in one stream.

    ``count`` is the number of ids (an attribute: it shadows Sequence.count).
    """

    __slots__ = ("stream", "shard", "first", "count")

    def __init__(self, stream: str, shard: int, first: int, count: int):
        self.stream, self.shard, self.first = stream, shard, first
        self.count = count  # type: ignore[assignment]  # public since v0.1; see the docstring

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, i: int) -> MessageID: ...
    @overload
    def __getitem__(self, i: slice) -> list[MessageID]: ...
    def __getitem__(self, i: int | slice) -> MessageID | list[MessageID]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError("MessageIDs index out of range")
        return MessageID(self.stream, self.shard, self.first + i)

    def __eq__(self, other) -> bool:
        if isinstance(other, MessageIDs):
            return (self.stream, self.first, self.count) == (other.stream, other.first, other.count)
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"MessageIDs(stream={self.stream!r}, first={self.first}, count={self.count})"


def _write_json_atomic(path: str, doc: dict, inside: int) -> None:
    """Crash-safe file protocol (I7), never through a link (I30), mode 0600 (I31)."""
    with os_errors(path, "write"):
        paths.write_file_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(),
                                inside)


def read_directory_marker(root: str) -> None:
    """Check the directory marker ``root/cometmp.json`` (FORMAT.md §1.1): the one reader of
    it. DataDirectoryNotFound when ``root`` is no directory or has no marker; FormatError
    for a marker of another format or version (or not JSON); StorageError (errno, path)
    when it cannot be read."""
    marker = os.path.join(root, paths.DIR_MARKER)
    with os_errors(marker, "read directory marker"):
        if not os.path.isdir(root):
            raise DataDirectoryNotFound(f"no cometmp data directory at {root} (no such directory)",
                                        errno.ENOENT, root)
        try:
            raw = paths.read_file(marker, paths.IN_ROOT, 1 << 16)   # I30
        except FileNotFoundError:
            raise DataDirectoryNotFound(
                f"{root} is not a cometmp data directory (no {paths.DIR_MARKER})",
                errno.ENOENT, marker) from None
    _json_document(marker, raw, DIR_FORMAT, "directory marker")


def _json_document(path: str, raw: bytes, form: str, what: str,
                   version: int = FORMAT_VERSION) -> dict:
    """The JSON object of a marker, family file or registry key file (FORMAT.md §1.1, §1.2,
    §8.1), or FormatError naming the file when it is not JSON or of another format or
    ``version``."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"{path}: {what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != form \
            or doc.get("version") != version:
        got = (doc.get("format"), doc.get("version")) if isinstance(doc, dict) else (doc, None)
        raise FormatError(f"{path}: format {got[0]!r} version {got[1]!r}; "
                          f"this build reads {form!r} version {version}")
    return doc


class Log:
    """A stream family: ``shards`` streams named ``f"{prefix}:shard:{n:04d}"``.

    ``append(data, key=None)`` and ``append_many(items, key=None)`` are the hot path (C).
    ``key=None`` spreads appends round robin over the shards this process owns (asked of
    cometmp.ownership, the seam a prefork runtime answers; all shards when standalone);
    a key routes by ``pick_shard(key, shards)``.
    """

    def __init__(self, client: "Client", prefix: str, shards: int):
        self.client = client
        self.prefix = prefix
        self.shards = shards
        self.streams = [paths.shard_stream(prefix, n) for n in range(shards)]
        self._dir_key = ownership.directory_key(client.path)
        self._owned: frozenset[int] | None = None   # None: standalone, every shard
        self._epoch = -1
        self._watched: tuple[object, int] | None = None
        if client.config.concurrency.strict_ownership:
            router = self._strict_shard
        else:
            router = None   # the Appender hashes keys itself (pick_shard in C)
        self._appender = client._make_appender(self.streams, list(range(shards)), router)
        self.append = self._appender.append  # C method: no Python frame per append
        ownership.track(self)
        self._reroute(watch=True)

    def append_many(self, items: "Iterable[Buffer]",
                    key: "str | bytes | bytearray | memoryview | None" = None) -> MessageIDs:
        idx, first, count = self._appender.append_many(items, key)
        return MessageIDs(self.streams[idx], idx, first, count)

    def _reroute(self, watch: bool = False) -> None:
        """Recompute the key=None route from this process's placement: the shards it owns,
        or all of them when it owns none of the family (standalone, waiting, few shards).
        With ``watch``, also (re)arm the appender's epoch watch, which calls this before
        routing an append once the shared epoch moved."""
        p = ownership.placement(self._dir_key)
        if p is None:
            self._owned, self._epoch = None, -1
            route = list(range(self.shards))
        else:
            owned = p.owned(self.shards)
            self._owned, self._epoch = frozenset(owned), p.epoch
            route = owned or list(range(self.shards))
        app = self._appender
        app.set_route(route)
        if watch:
            src = ownership.epoch_source(self._dir_key) if p is not None else None
            if src is None:
                if self._watched is not None:
                    app.set_epoch_watch(None, 0, None)
            elif self._watched is None or self._watched[0] is not src[0] \
                    or self._watched[1] != src[1]:
                app.set_epoch_watch(src[0], src[1], _epoch_callback(weakref.ref(self)))
            self._watched = src

    def _strict_shard(self, key) -> int:
        """The router under config.concurrency.strict_ownership: a key whose shard another
        worker owns raises ShardNotOwned (Comet's behaviour)."""
        s = pick_shard(key, self.shards)
        p = ownership.placement(self._dir_key)
        if p is None:
            return s
        if p.epoch != self._epoch:
            self._reroute()
        owned = self._owned  # read after the refresh
        if owned is not None and s not in owned:
            raise ShardNotOwned(
                f"{self.prefix}:shard:{s:04d} (key {key!r}) is owned by another worker; this "
                f"worker (processID {p.index}) owns shards {sorted(owned)} "
                "(config.concurrency.strict_ownership=True)")
        return s

    def __repr__(self) -> str:
        return f"Log(prefix={self.prefix!r}, shards={self.shards})"


def _epoch_callback(ref: "weakref.ref[Log]"):
    def on_epoch_change() -> None:
        """Runs inside append, before routing: must never fail the append."""
        lg = ref()
        if lg is None:
            return
        try:
            lg._reroute()
        except Exception as e:  # noqa: BLE001 - a stale route is only contention
            log.error("cometmp: re-routing %r after an ownership change failed: %s", lg, e)
    return on_epoch_change


#: file descriptors one open writer holds (native/shard.c: directory, state page with
#: its shared flock, active segment; the index is mapped without keeping its fd), the
#: two of its spare, the next segment and index made ahead (native/spare.c), and the one
#: an extension of its reservation holds on the prefault thread (native/headroom.c)
WRITER_FDS = 6


def writer_budget() -> int:
    """How many stream writers a Client keeps open: half the descriptors RLIMIT_NOFILE
    leaves after 64 for the application, at WRITER_FDS per writer (at least 8)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(8, (soft - 64) // (2 * WRITER_FDS))


def _emfile(stream: str, e: StorageError) -> StorageError:
    """E1: EMFILE that closing idle writers did not cure; ``e`` (TooManyOpenFiles, from
    errors.os_error) already names the RLIMIT_NOFILE values."""
    return TooManyOpenFiles(f"cannot open stream {stream!r}, even after closing idle "
                            f"writers: {e}", errno.EMFILE, e.filename)


class Client:
    """An embedded log in directory ``path``. Context manager; ``close()`` is idempotent.

    Thread safe for appends and reads. ``readonly=True`` never modifies any file.
    """

    def __init__(self, path: str | os.PathLike, config: Config | None = None, readonly: bool = False):
        fspath = os.fspath(path)
        if not fspath:   # os.path.abspath("") is the working directory: never meant
            raise InvalidPath("Client path is empty; pass the data directory's path")
        if "\x00" in (fspath if isinstance(fspath, str) else fspath.decode("latin-1")):
            raise InvalidPath(f"Client path {fspath!r} contains a NUL byte")
        self.path = os.path.abspath(os.fsdecode(fspath))
        if config is not None and not isinstance(config, Config):
            raise ConfigError(f"config must be a cometmp.Config, not {type(config).__name__}")
        self.config = config.validate().copy() if config is not None else Config()
        self.readonly = bool(readonly)
        self._lock = threading.RLock()
        self._closed = False
        self._pid = os.getpid()
        self._writers: dict[str, Writer] = {}      # oldest opened first (the eviction order)
        self._writer_budget = writer_budget()
        self._appenders: list[tuple[Appender, list[str]]] = []
        self._slots: dict[str, list[tuple[Appender, int]]] = {}   # stream -> appender slots
        self._stream_appenders: dict[str, Appender] = {}
        self._readers: dict[str, Reader] = {}      # bounded too, oldest first (_reader)
        self._forgotten: "weakref.WeakSet[Reader]" = weakref.WeakSet()
        self._logs: dict[str, Log] = {}
        self._compressor = Compressor(self.config.compression.level) if self.config.compression.min_bytes else None
        self._syncer: threading.Thread | None = None
        self._syncer_stop = threading.Event()
        self._open_dir()

    # ---- directory ----------------------------------------------------------------------
    def _open_dir(self) -> None:
        marker = os.path.join(self.path, paths.DIR_MARKER)
        if not self.readonly:
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                raise StorageError(f"{self.path} exists and is not a directory",
                                   errno.ENOTDIR, self.path)
            with os_errors(self.path, "create directory"):
                if not os.path.isdir(self.path):
                    os.makedirs(self.path, mode=paths.DIR_MODE, exist_ok=True)
                    os.chmod(self.path, paths.DIR_MODE)     # I31: whatever the umask
                paths.check_owner(self.path)                # I32
            for d in (paths.streams_dir(self.path), os.path.join(self.path, paths.FAMILIES)):
                with os_errors(d, "create directory"):
                    paths.mkdir_private(d)                  # I30, I31
            with os_errors(marker, "check directory marker"):
                has_marker = os.path.lexists(marker)
            if not has_marker:
                _write_json_atomic(marker, {"format": DIR_FORMAT, "version": FORMAT_VERSION},
                                   paths.IN_ROOT)
            with os_errors(self.path, "remove leftover temporary files in"):
                for p in paths.remove_dead_temp_files(self.path):  # I7
                    log.info("cometmp: removed leftover temporary file %s", p)
        read_directory_marker(self.path)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"client for {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"client for {self.path} was opened readonly=True")

    # ---- writers ------------------------------------------------------------------------
    def _writer(self, stream: str) -> Writer:
        """The open writer of ``stream``, opened if needed. Caller holds ``_lock``.

        File descriptors are bounded: at most ``_writer_budget`` writers stay open
        (``writer_budget()``, from RLIMIT_NOFILE); opening one more closes the one
        opened longest ago. Its mappings go with it; the appenders keep their slot and
        the next append through it reopens it (``_reattach``), so idle streams pin no
        descriptor. An EMFILE that closing writers cannot cure raises StorageError
        naming the limit."""
        w = self._writers.get(stream)
        if w is None:
            self._check_writable()
            self._evict_writers(len(self._writers) - self._writer_budget + 1)
            try:
                w = self._open_writer(stream)
            except StorageError as e:
                if e.errno != errno.EMFILE:
                    raise
                if not self._writers:
                    raise _emfile(stream, e) from None
                self._evict_writers((len(self._writers) + 1) // 2)
                try:
                    w = self._open_writer(stream)
                except StorageError as e2:
                    if e2.errno != errno.EMFILE:
                        raise
                    raise _emfile(stream, e2) from None
            self._writers[stream] = w
            r = self._readers.get(stream)
            if r is not None:
                r.follow_writer()   # read-your-writes from the first append (I27a)
            self._start_writer_threads()
        return w

    def _evict_writers(self, n: int) -> None:
        """Close the ``n`` writers opened longest ago (see ``_writer``). Caller holds
        ``_lock``. In the durable modes each is synced first, as ``close()`` does."""
        for name in list(self._writers)[:max(0, n)]:
            w = self._writers.pop(name)
            if self.config.storage.durability != "none":
                try:
                    w.sync()
                except CometError as e:
                    log.error("cometmp: fsync of %s before closing it failed: %s", w.directory, e)
            w.close()

    def _reattach(self, stream: str) -> None:
        """Reopen ``stream``'s writer (closed by _evict_writers, or the parent's after a
        fork) and hand it to every appender slot of that stream."""
        with self._lock:
            self._check_writable()
            w = self._writer(stream)
            for app, i in self._slots.get(stream, ()):
                app.set_handle(i, w.ref())

    def _open_writer(self, stream: str) -> Writer:
        with os_errors(paths.streams_dir(self.path), "create directory"):
            paths.mkdir_private(paths.streams_dir(self.path))   # I30, I31
        return Writer(paths.stream_dir(self.path, stream), stream, self.config)

    def _start_writer_threads(self) -> None:
        if self.config.storage.durability == "interval":
            self._start_syncer()
        from . import retention

        retention.start_background(self)  # issue 4: this process owns what it writes

    def _make_appender(self, streams: list[str], numbers: list[int], router) -> Appender:
        with self._lock:
            self._check_writable()
            comp = self._compressor if self._compressor is not None else None
            names = list(streams)
            dirs = [paths.stream_dir(self.path, s) for s in names]
            app = Appender(core_path(), names, list(numbers), router,
                           comp, self.config.compression.min_bytes or (1 << 62),
                           lambda rc, i, msg, err, n: self._on_append_error(
                               rc, i, msg, err, n, names,
                               dirs[i] if 0 <= i < len(dirs) else None))
            for i, s in enumerate(streams):
                app.set_handle(i, self._writer(s).ref())
                self._slots.setdefault(s, []).append((app, i))
            self._appenders.append((app, names))
            return app

    def _on_append_error(self, rc: int, index: int, message: str, err: int, written: int,
                         streams: list[str] | None = None, path: str | None = None) -> bool:
        if rc == lib.CM_E_FORKED:
            self._after_fork()
            if streams is not None and written == 0:
                self._reattach(streams[index])   # a writer closed before the fork
            return True
        if rc == lib.CM_E_CLOSED and self._closed:
            raise ClosedError(f"client for {self.path} is closed")
        if rc == lib.CM_E_CLOSED and streams is not None and written == 0:
            self._reattach(streams[index])       # closed to bound descriptors: reopen
            return True
        exc = error_for(rc, message, err, path)
        exc.appended = written
        raise exc

    def _after_fork(self) -> None:
        """Reopen every writer handle in this (child) process (I10), all or nothing.

        The new handles are opened first; only when every one of them opened do the
        appenders switch to them and the inherited copies close. If one cannot be opened
        (the child runs as another user: gunicorn ``--user``), nothing is switched: the
        inherited handles stay as they are, answering CM_E_FORKED, so every append
        retries this reopen and raises the same clear error (I10) - never a closed or
        freed handle, a garbage error or a hang."""
        with self._lock:
            if self._pid == os.getpid():
                return
            # the parent's membership is not ours (uWSGI forks without Python's at-fork
            # hooks): every Log routes as a single process until this process joins
            ownership.changed()
            log.debug("cometmp: fork detected (pid %d -> %d); reopening writers", self._pid, os.getpid())
            # the writers open now; one closed to bound descriptors (§11.1) is reopened by
            # its next append (CM_E_CLOSED/CM_E_FORKED -> _reattach), as in the parent
            streams = list(self._writers)
            fresh: dict[str, Writer] = {}
            try:
                for stream in streams:
                    fresh[stream] = self._open_writer(stream)
            except BaseException as e:
                for w in fresh.values():
                    w.close()
                raise self._reopen_error(stream, e) from e
            old, self._writers = self._writers, fresh
            self._syncer = None
            self._syncer_stop = threading.Event()
            self._pid = os.getpid()
            for app, names in self._appenders:
                for i, stream in enumerate(names):
                    if stream in fresh:
                        app.set_handle(i, fresh[stream].ref())
            for w in old.values():
                w.close()  # unmaps this process's copy; the parent's handle is untouched
            if fresh:
                self._start_writer_threads()

    def _reopen_error(self, stream: str, e: BaseException) -> BaseException:
        """The error of a writer that cannot be reopened after fork: a permission failure
        (the child runs as another user: gunicorn ``--user``) as a StorageError naming the
        path, the process's user and the errno; any other cometmp error as it is."""
        if isinstance(e, StorageError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where, code, why = e.filename, e.errno, str(e)
        elif isinstance(e, OSError):
            where, code, why = e.filename, e.errno or 0, e.strerror or str(e)
        else:
            return e
        where = where or paths.stream_dir(self.path, stream)
        return StorageError(
            f"{where}: {why}: this Client was opened in pid {self._pid} before fork, and "
            f"pid {os.getpid()} (uid {os.geteuid()}) cannot reopen its writer of stream "
            f"{stream!r}; open the Client after fork, or let this user write {self.path}",
            code, where)

    def log(self, prefix: str, shards: int = 16) -> Log:
        """The stream family ``prefix`` with ``shards`` shards, created if new.

        The shard count is persisted in ``families/<prefix>.json``; reopening with another
        count raises ShardCountMismatch.
        """
        paths.validate_stream_name(prefix, "family prefix")
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidArgument(f"shards must be an int between 1 and {MAX_SHARDS}, not {shards!r}")
        paths.validate_stream_name(paths.shard_stream(prefix, shards - 1))
        with self._lock:
            self._check_writable()
            existing = self._logs.get(prefix)
            if existing is not None:
                if existing.shards != shards:
                    raise ShardCountMismatch(
                        f"family {prefix!r} has {existing.shards} shards, not {shards}")
                return existing
            stored = self.family_shards(prefix)
            if stored is None:
                _write_json_atomic(paths.family_file(self.path, prefix), {
                    "format": FAMILY_FORMAT, "version": FORMAT_VERSION,
                    "prefix": prefix, "shards": shards,
                }, paths.IN_SUBDIR)
            elif stored != shards:
                raise ShardCountMismatch(
                    f"family {prefix!r} in {self.path} was created with {stored} shards; "
                    f"reopening it with {shards} would re-route keys")
            lg = Log(self, prefix, shards)
            self._logs[prefix] = lg
            return lg

    def family_shards(self, prefix: str) -> int | None:
        """The persisted shard count of family ``prefix``, or None if it does not exist."""
        fpath = paths.family_file(self.path, prefix)
        with os_errors(fpath, "read family file"):
            try:
                raw = paths.read_file(fpath, paths.IN_SUBDIR, 1 << 16)   # I30
            except FileNotFoundError:
                return None
        doc = _json_document(fpath, raw, FAMILY_FORMAT, "family file")
        shards = doc.get("shards")
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise FormatError(f"{fpath}: shard count {shards!r} is not an int in 1..{MAX_SHARDS}")
        return shards

    def append(self, stream: str, payloads) -> list[MessageID]:
        """Append to an explicit stream (Comet style), creating it if new.

        ``payloads`` is one bytes-like object or an iterable of them. Returns their ids.
        """
        paths.validate_stream_name(stream)
        if isinstance(payloads, str):
            raise InvalidArgument("payload must be bytes-like, not str (encode it, e.g. s.encode())")
        if isinstance(payloads, (bytes, bytearray, memoryview)):
            payloads = [payloads]
        with self._lock:
            app = self._stream_appenders.get(stream)
            if app is None:
                split = paths.split_shard_stream(stream)
                if split is not None:
                    count = self.family_shards(split[0])
                    if count is not None and split[1] >= count:
                        raise BadStreamName(
                            f"{stream!r}: family {split[0]!r} has {count} shards (0..{count - 1})")
                number = split[1] if split else 0
                app = self._make_appender([stream], [number], lambda key: 0)
                self._stream_appenders[stream] = app
        _idx, first, count = app.append_many(payloads)
        number = paths.split_shard_stream(stream)
        return list(MessageIDs(stream, number[1] if number else 0, first, count))

    def pick_shard_stream(self, prefix: str, key, shard_count: int) -> str:
        paths.validate_stream_name(prefix, "family prefix")
        return paths.shard_stream(prefix, pick_shard(key, shard_count))

    # ---- reading ------------------------------------------------------------------------
    def streams(self, pattern: str = "*") -> list[str]:
        """Sorted names of the streams in this directory matching an fnmatch pattern."""
        self._check_open()
        with os_errors(paths.streams_dir(self.path), "list streams in"):
            try:
                names = os.listdir(paths.streams_dir(self.path))
            except FileNotFoundError:
                return []
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern) and
                      paths.is_real_dir(paths.stream_dir(self.path, n)))   # I30

    def _reader(self, stream: str) -> Reader:
        self._check_open()
        r = self._readers.get(stream) if type(stream) is str else None
        if r is None:
            paths.validate_stream_name(stream)
            split = paths.split_shard_stream(stream)
            # Readers are bounded like writers (_writer): Python's mmap holds a descriptor
            # per mapping, so the one cached longest is forgotten, not closed: a scan still
            # iterating holds it, and its mappings (and descriptors) go when it does.
            # close() still closes it (L4).
            for name in list(self._readers)[:max(0, len(self._readers) - self._writer_budget + 1)]:
                self._forgotten.add(self._readers.pop(name))
            r = Reader(paths.stream_dir(self.path, stream), stream, split[1] if split else 0,
                       writable_index=not self.readonly)
            self._readers[stream] = r
        return r

    def read(self, stream: str, entry: int) -> StreamMessage:
        """The entry ``entry`` of ``stream``. EntryNotFound if absent, CorruptRecord if damaged."""
        with self._lock:
            return self._reader(stream).read(entry)

    def scan(self, stream: str, start: int = 0) -> Iterator[StreamMessage]:
        """Entries of ``stream`` from ``start`` in entry order; damaged records are skipped
        (and counted in stats()['streams'][stream]['corrupt_skipped'])."""
        reader = self._reader(stream)
        return reader.scan(start)

    def list_recent(self, stream: str, limit: int) -> list[StreamMessage]:
        """The last ``limit`` entries of ``stream``, oldest first."""
        if limit <= 0:
            return []
        reader = self._reader(stream)
        start = max(reader.first(), reader.committed() - limit)
        return list(reader.scan(start))

    def length(self, stream: str) -> int:
        """Next entry number of ``stream`` (entries ever appended, retention included)."""
        return self._reader(stream).committed()

    def first_entry(self, stream: str) -> int:
        """Oldest entry still retained in ``stream``."""
        return self._reader(stream).first()

    def seek_time(self, stream: str, timestamp_ns: int) -> int:
        """First entry appended at or after ``timestamp_ns`` (or the length): O(log n)."""
        return self._reader(stream).seek_time(int(timestamp_ns))

    # ---- durability, stats, lifecycle ---------------------------------------------------
    def sync(self) -> None:
        """fsync every stream this client wrote (data, state, sealed segments)."""
        with self._lock:
            self._check_open()
            if self._pid != os.getpid():
                self._after_fork()
            for w in self._writers.values():
                w.sync()

    def _start_syncer(self) -> None:
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._syncer = threading.Thread(target=self._sync_loop, name="cometmp-fsync", daemon=True)
        self._syncer.start()

    def _sync_loop(self) -> None:
        """durability="interval": fsync every N appends or T seconds, off the append path."""
        every_n = self.config.storage.fsync_every_writes
        every_t = self.config.storage.fsync_every_seconds
        poll = min(every_t, 0.005)
        synced: dict[str, tuple[int, float]] = {}
        stop = self._syncer_stop
        pid = os.getpid()
        while not stop.wait(poll):
            if os.getpid() != pid:
                return
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    return
                writers = list(self._writers.items())
            for name, w in writers:
                try:
                    snap = w.snapshot()
                except CometError:
                    continue
                n = snap["counters"]["appends"]
                last_n, last_t = synced.get(name, (0, now))
                if n != last_n and (n - last_n >= every_n or now - last_t >= every_t):
                    try:
                        w.sync()
                    except CometError as e:
                        log.error("cometmp: background fsync of %s failed: %s", name, e)
                        continue
                    synced[name] = (n, now)
                elif name not in synced:
                    synced[name] = (n, now)

    # ---- consumers and retention (cometmp.consumer, cometmp.retention) -------------------
    def run_retention(self):
        """Apply ``config.retention`` now to the streams this process owns; returns a
        cometmp.retention.RetentionReport (deleted segments, dropped ranges, expired groups)."""
        from .retention import run_retention

        return run_retention(self)

    def consumer_groups(self) -> list[dict]:
        """Every consumer group: name, patterns, and per stream acked offset, length, lag."""
        from .consumer import consumer_groups

        return consumer_groups(self)

    def delete_consumer_group(self, group: str) -> bool:
        """Delete a consumer group and its offsets; True if it existed."""
        from .consumer import delete_consumer_group

        return delete_consumer_group(self, group)

    def stats(self) -> dict:
        """Per-stream length, first entry, bytes on disk and counters (from the state pages)."""
        from .stats import directory_stats

        self._check_open()
        out = directory_stats(self.path)
        for name, r in self._readers.items():
            if name in out["streams"]:
                out["streams"][name]["corrupt_skipped"] = r.corrupt_skipped
        return out

    def close(self) -> None:
        """Close every handle. With durability "none" nothing is fsynced (data is already in
        the page cache); with "interval"/"always" a final sync runs first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._syncer_stop.set()
            if self.config.storage.durability != "none" and self._pid == os.getpid():
                for w in self._writers.values():
                    try:
                        w.sync()
                    except CometError as e:
                        log.error("cometmp: final fsync of %s failed: %s", w.directory, e)
            # detach the fast path; an append already inside the core finishes first
            # (Writer.close() waits for it) and later ones fail with ClosedError (L1, L2)
            for app, streams in self._appenders:
                for i in range(len(streams)):
                    app.set_handle(i, None)
            for w in self._writers.values():
                w.close()
            for r in list(self._readers.values()) + list(self._forgotten):
                r.close()
            self._writers.clear()
            self._readers.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.path!r}{', readonly=True' if self.readonly else ''})"
