"""Every file and directory name cometmp uses, and stream-name validation.

Layout of a data directory (docs/FORMAT.md, "Directory layout")::

    DIR/                                   mode 0700
      cometmp.json                         directory marker (format + version)
      registry.key                         the secret the registry's shm name is derived from
      families/<prefix>.json               one per stream family: its shard count
      streams/<stream>/                    one per stream (a family's shard, or a plain stream)
        state                              shared state page (lock, tail, counters)
        <20-digit base entry>.seg          segments, named by their first entry number
        <20-digit base entry>.idx          sparse index of that segment
      consumers/offsets                    consumer groups and their offsets (cometmp.offsets)
      metrics/app                          application metrics of every worker (cometmp.appmetrics)

Opening (docs/ARCHITECTURE.md I30, I31): nothing below a data directory is opened through a
symbolic link, and whatever the umask, files are created 0600 and directories 0700. In
Python every such open goes through ``open_nofollow`` / ``open_dir_nofollow`` /
``mkdir_private`` here (native/fs.c holds the same rule for the C core). ``inside`` is how
many trailing components of the path are inside the data directory (a segment
``DIR/streams/<s>/<base>.seg``: 3); those are opened relative to their parent's fd with
``O_NOFOLLOW``, the path above them is the caller's and may pass through links.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import threading

from ._ffi import lib

DIR_MARKER = "cometmp.json"
REGISTRY_KEY = "registry.key"            # cometmp/registry/key.py, FORMAT.md §8.1
FAMILIES = "families"
STREAMS = "streams"
STATE = "state"
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
TMP_SUFFIX = ".tmp"
CONSUMERS = "consumers"                  # DIR/consumers/offsets: consumer-group offsets
OFFSETS = "offsets"
MEMBERS = "members"                      # DIR/consumers/members: live group members
WINDOWS = "windows"                      # DIR/consumers/windows: per-(group, stream) ack windows
METRICS = "metrics"                      # DIR/metrics/app: application metrics (FORMAT.md §10)
APP_METRICS = "app"
BASE_DIGITS = 20
SHARD_INFIX = ":shard:"

FILE_MODE = 0o600   # I31
DIR_MODE = 0o700    # I31
#: trailing components of a path that lie inside the data directory, per file kind
IN_ROOT = 1         # cometmp.json, registry.key, families/, streams/, consumers/, metrics/
IN_SUBDIR = 2       # families/<prefix>.json, consumers/offsets, metrics/app, streams/<stream>
IN_STREAM = 3       # streams/<stream>/{state,<base>.seg,<base>.idx}

MAX_NAME_BYTES = lib.CM_NAME_MAX_BYTES   # native/names.c holds the rule
_SHARD_RE = re.compile(r"(?P<prefix>.+):shard:(?P<n>[0-9]{4,})")   # fullmatch only


def validate_stream_name(name: object, what: str = "stream name") -> str:
    """Return ``name`` if it is a valid stream (or family prefix) name, else raise BadStreamName.

    Valid (FORMAT.md §1): 1..200 bytes of ASCII letters, digits, ``_ . : -``; starts with
    a letter, digit or ``_``; no ``..``. The rule is implemented once, in C
    (``cm_stream_name_check``, native/names.c, which the offsets file also applies); this
    only words its verdict.
    """
    from .errors import BadStreamName

    if not isinstance(name, str):
        raise BadStreamName(f"{what} must be str, not {type(name).__name__}")
    raw = name.encode("utf-8", "surrogatepass")
    rule = lib.cm_stream_name_check(raw, len(raw))
    if rule == 0:
        return name
    shown = f"{name[:40]!r}..." if len(name) > 40 else repr(name)
    reason = {
        lib.CM_NAME_EMPTY: "is empty",
        lib.CM_NAME_NUL: "contains a NUL byte",
        lib.CM_NAME_SEPARATOR: "contains a path separator",
        lib.CM_NAME_DOTDOT: "contains '..'",
        lib.CM_NAME_TOO_LONG: f"is longer than {MAX_NAME_BYTES} bytes",
    }.get(rule, "may contain only letters, digits and _ . : - and must start with a "
                "letter, digit or _")
    raise BadStreamName(f"{what} {shown} {reason}" if rule != lib.CM_NAME_EMPTY
                        else f"{what} is empty")


def shard_stream(prefix: str, shard: int) -> str:
    """The stream name of shard ``shard`` of family ``prefix``: ``f"{prefix}:shard:{n:04d}"``."""
    return f"{prefix}{SHARD_INFIX}{shard:04d}"


def split_shard_stream(name: str) -> tuple[str, int] | None:
    """``("events:v1", 3)`` for ``"events:v1:shard:0003"``; None for a stream outside a family."""
    m = _SHARD_RE.fullmatch(name)
    if not m:
        return None
    return m.group("prefix"), int(m.group("n"))


def segment_name(base: int) -> str:
    return f"{base:0{BASE_DIGITS}d}{SEGMENT_SUFFIX}"


def index_name(base: int) -> str:
    return f"{base:0{BASE_DIGITS}d}{INDEX_SUFFIX}"


def parse_segment_name(filename: str) -> int | None:
    """Base entry of a segment file name, or None if the name is not a segment's."""
    if len(filename) != BASE_DIGITS + len(SEGMENT_SUFFIX) or not filename.endswith(SEGMENT_SUFFIX):
        return None
    digits = filename[:BASE_DIGITS]
    return int(digits) if digits.isdigit() else None


def streams_dir(root: str) -> str:
    return os.path.join(root, STREAMS)


def stream_dir(root: str, stream: str) -> str:
    return os.path.join(root, STREAMS, stream)


def app_metrics_file(root: str) -> str:
    """DIR/metrics/app, the application metrics table (cometmp.appmetrics)."""
    return os.path.join(root, METRICS, APP_METRICS)


def family_file(root: str, prefix: str) -> str:
    return os.path.join(root, FAMILIES, prefix + ".json")


def list_segment_bases(directory: str) -> list[int]:
    """Sorted base entries of the segments in a stream directory."""
    from .errors import os_errors

    with os_errors(directory, "list segments in"):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
    bases = [b for b in map(parse_segment_name, names) if b is not None]
    bases.sort()
    return bases


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: struct flock (fcntl(2)) for the OFD locks: l_type l_whence l_start l_len l_pid
FLOCK = struct.Struct("@hhqqi4x")


def ofd_write_locked(fd: int, start: int, length: int) -> bool:
    """Whether another open file description holds a lock on any byte of [start,
    start+length) of ``fd``'s file (``length`` 0: to the end): F_OFD_GETLK, which takes
    nothing. The liveness probe of I27a (a writer's state page) and I41a (a group
    member's record). OSError as the call raises it."""
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
    return FLOCK.unpack(got)[0] != fcntl.F_UNLCK


def remove_dead_temp_files(root: str) -> list[str]:
    """Remove temp files ``<file>.<pid>.tmp`` of the JSON and offsets-file protocols whose
    writer process is gone (I7); returns the paths removed. Stream directories are cleaned
    by the C core when a writer opens them."""
    removed = []
    for d in (root, os.path.join(root, FAMILIES), os.path.join(root, CONSUMERS),
              os.path.join(root, METRICS)):
        if d != root and not is_real_dir(d):
            continue   # I30: never delete inside a planted link's target
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for fn in names:
            if not fn.endswith(TMP_SUFFIX):
                continue
            parts = fn[: -len(TMP_SUFFIX)].rsplit(".", 1)
            if len(parts) == 2 and parts[1].isdigit() and pid_alive(int(parts[1])):
                continue
            p = os.path.join(d, fn)
            try:
                os.unlink(p)
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


# ---- opening without following links (I30) and with private modes (I31) ----------------

def _refuse_link(e: OSError, dirfd: int, name: str, path: str) -> OSError:
    """The error to raise for a failed open of ``name`` below ``dirfd``: StorageError(ELOOP)
    naming the path if it is a symbolic link, else ``e`` itself."""
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            from .errors import StorageError

            return StorageError(f"{path} is a symbolic link; cometmp never follows "
                                "a link inside a data directory (I30), so it was not opened",
                                errno.ELOOP, path)
    return e


def open_dir_nofollow(path: str, inside: int = IN_ROOT, create: bool = False) -> int:
    """An O_DIRECTORY fd of ``path``, whose last ``inside`` components are not followed
    (and are created 0700 first when ``create``). Raises StorageError(ELOOP) for a link,
    the OSError of the open otherwise. The caller closes the fd."""
    parts = []
    top = os.path.abspath(path)
    for _ in range(inside):
        top, leaf = os.path.split(top)
        parts.append(leaf)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    here = top
    try:
        for leaf in reversed(parts):
            here = os.path.join(here, leaf)
            created = False
            if create:
                try:
                    os.mkdir(leaf, DIR_MODE, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
            try:
                nfd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError as e:
                raise _refuse_link(e, fd, leaf, here) from None
            if created:
                os.fchmod(nfd, DIR_MODE)   # I31: whatever the umask
                adopt(fd, nfd)             # I32
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def mkdir_private(path: str, inside: int = IN_ROOT) -> None:
    """Create directory ``path`` (0700, I31) unless it exists; never through a link (I30)."""
    os.close(open_dir_nofollow(path, inside, create=True))


def open_nofollow(path: str, flags: int, inside: int = IN_ROOT, mode: int = FILE_MODE) -> int:
    """``os.open(path, flags)`` without following a link in the last ``inside`` components
    (I30); a file opened with O_CREAT is given ``mode`` whatever the umask (I31). Raises
    StorageError(ELOOP) naming the path for a link, the OSError of the open otherwise."""
    parent, name = os.path.split(os.path.abspath(path))
    if inside > 1:
        dfd = open_dir_nofollow(parent, inside - 1)
    else:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as e:
            raise _refuse_link(e, dfd, name, path) from None
        if flags & os.O_CREAT:
            try:
                os.fchmod(fd, mode)   # I31
                adopt(dfd, fd)        # I32
            except BaseException:
                os.close(fd)
                raise
        return fd
    finally:
        os.close(dfd)


def read_file(path: str, inside: int = IN_ROOT, limit: int = -1) -> bytes:
    """A small file (marker, family file), or its first ``limit`` bytes, read without
    following a link (I30)."""
    fd = open_nofollow(path, os.O_RDONLY, inside)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _parent_fd(path: str, inside: int) -> tuple[int, str, str]:
    """(fd of the parent directory, parent path, leaf name) of ``path``, the parent opened
    without following its last ``inside - 1`` components (I30)."""
    parent, name = os.path.split(os.path.abspath(path))
    dfd = open_dir_nofollow(parent, inside - 1) if inside > 1 else \
        os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return dfd, parent, name


#: the temp name is per process (``<file>.<pid>.tmp``, which remove_dead_temp_files
#: judges by its pid), so one thread of the process at a time writes and names a temp
#: file: two threads sharing one would link or rename each other's half-written file
_temp_lock = threading.Lock()


def _new_temp_lock() -> None:
    global _temp_lock
    _temp_lock = threading.Lock()   # a child of fork() holds no thread's lock


os.register_at_fork(after_in_child=_new_temp_lock)


def _write_temp(dfd: int, parent: str, name: str, data: bytes, point: str,
                size: int | None = None, reserve: bool = False) -> str:
    """Write ``data`` to the temp file ``<name>.<pid>.tmp`` below ``dfd`` (0600, I31; owned
    as I32 says; never through a link, I30) and fsync it; a failure unlinks it. Returns
    the temp file's name. ``point``: the failpoint prefix (``.create``, ``.write``,
    ``.fsync``)."""
    from . import failpoint

    tmp = f"{name}.{os.getpid()}{TMP_SUFFIX}"
    tmp_path = os.path.join(parent, tmp)
    try:
        failpoint.fail(point + ".create", tmp_path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE, dir_fd=dfd)
    except OSError as e:
        raise _refuse_link(e, dfd, tmp, tmp_path) from None
    try:
        os.fchmod(fd, FILE_MODE)   # I31
        adopt(dfd, fd)             # I32
        failpoint.fail(point + ".write", tmp_path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if size is not None and reserve:   # I9: every block exists before it is mapped
            failpoint.fail(point + ".fallocate", tmp_path)
            os.posix_fallocate(fd, 0, size)
        elif size is not None:
            os.ftruncate(fd, size)   # a fixed-size sparse file, complete before it has a name
        failpoint.fail(point + ".fsync", tmp_path)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        raise
    os.close(fd)
    return tmp


def write_file_atomic(path: str, data: bytes, inside: int = IN_ROOT, point: str = "json") -> None:
    """Crash-safe file protocol (CONVENTIONS 8, I7): temp (0600, I31) -> fsync -> rename ->
    fsync the directory; no step follows a link (I30; rename replaces a link, never its
    target). A failure before the rename unlinks the temp file. ``point`` names the
    failpoints of the steps in the test build (``<point>.create``, ``.write``, ``.fsync``,
    ``.rename``, ``.dir_fsync``; docs/ARCHITECTURE.md §4.2)."""
    from . import failpoint

    dfd, parent, name = _parent_fd(path, inside)
    try:
        with _temp_lock:
            tmp = _write_temp(dfd, parent, name, data, point)
            try:
                failpoint.fail(point + ".rename", path)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                os.unlink(tmp, dir_fd=dfd)
                raise
        failpoint.fail(point + ".dir_fsync", parent)
        os.fsync(dfd)
    finally:
        os.close(dfd)


def create_file_once(path: str, data: bytes, inside: int = IN_ROOT,
                     size: int | None = None, point: str = "json", reserve: bool = False) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    Crash-safe and race-free (CONVENTIONS 8, I7): temp (0600, I31) -> fsync -> link(2) to
    the name -> unlink the temp -> fsync the directory. ``link`` fails with EEXIST when the
    name exists, so of several processes creating the file at once exactly one wins and
    every other one reads the winner's complete file; nobody ever sees a partial one, and
    an existing file (or a link planted at the name, I30) is never replaced. ``size``:
    extend the file to that many bytes before it gets its name: holes, or with
    ``reserve`` every block allocated (``posix_fallocate``, I9; failpoint
    ``<point>.fallocate``)."""
    from . import failpoint

    dfd, parent, name = _parent_fd(path, inside)
    try:
        with _temp_lock:
            tmp = _write_temp(dfd, parent, name, data, point, size, reserve)
            try:
                failpoint.fail(point + ".link", path)
                os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                created = True
            except FileExistsError:
                created = False
            finally:
                os.unlink(tmp, dir_fd=dfd)
        failpoint.fail(point + ".dir_fsync", parent)
        os.fsync(dfd)
        return created
    finally:
        os.close(dfd)


def is_real_dir(path: str) -> bool:
    """True if ``path`` is a directory and not a link to one (I30: links are not streams)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def adopt(dirfd: int, fd: int) -> None:
    """I32: what root creates inside another user's data directory is given to the owner
    of the directory it is created in (``native/fs.c`` ``adopt`` is the same rule)."""
    if os.geteuid() != 0:
        return
    ds = os.fstat(dirfd)
    if ds.st_uid or ds.st_gid:
        os.fchown(fd, ds.st_uid, ds.st_gid)


def check_owner(path: str) -> None:
    """Refuse a data directory this process's effective uid does not own (writer opens,
    I32): another user's directory is theirs to change, and files we created there would
    be ours, not theirs. Root may (a root master before its workers drop to the
    directory's user): what it creates there is given to the directory's owner (adopt).
    Raises StorageError(EPERM) naming the owner."""
    st = os.stat(path)
    me = os.geteuid()
    if st.st_uid != me and me != 0:
        from .errors import StorageError

        raise StorageError(f"{path} is owned by {user_name(st.st_uid)}, not by "
                           f"{user_name(me)} (this process's effective user); cometmp writes "
                           "only into a data directory its own user owns (I32). Open it "
                           "readonly=True, or as its owner", errno.EPERM, path)


def user_name(uid: int) -> str:
    """``"uid 1001 (alice)"`` (the name when the user database has one)."""
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"
