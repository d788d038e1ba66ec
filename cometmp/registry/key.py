"""The registry key file ``DIR/registry.key``: the secret the registry's shm name is derived from.

Who calls: ``table.shm_name`` only (every process that names the registry goes through it:
join, leave, the supervisor, ``cometmp status``, stale-registry reclaim, ``replaced()``).

Why (docs/ARCHITECTURE.md §10.2, I33a): POSIX shm names are one flat namespace every local
user can create names in. A name computed from public facts (the directory's st_dev and
st_ino) can be created first by another user, and refusing that object (I33) still denies
the server's start. The name is therefore a keyed hash of (st_dev, st_ino) under a secret
only the directory's owner can read (a 0600 file in the 0700 directory): nobody else can
compute it. (st_dev, st_ino) stays in the hash, so a copy of the directory (a backup,
``cp -a``, which copies the key too) still gets a registry of its own.

Format (docs/FORMAT.md §8.1), written like the marker (sorted keys, indent 1, newline)::

    {"format": "cometmp.registry_key", "key": "<64 lowercase hex digits>", "version": 1}

Lifecycle: created once, by the first process that creates a registry for the directory
(a master's ``Supervisor.start()``, a worker's ``join(create_count=N)``), with
``paths.create_file_once`` (temp -> fsync -> link-if-absent), so processes racing to create
it agree on the one that was linked first. It is never rewritten. A damaged key is refused,
never regenerated: a server still running under the old name would be split in two
registries (two processID spaces) by a process that silently made a new key. Its owner
stops the server and removes the file; the next start makes a new one. A key *removed*
while a server runs is followed instead: ``Registry.replaced()`` recomputes the name from
the key (the secret identifies a key, not its inode, which a new file may reuse), the
first member to notice makes a new one and every process moves to the new registry.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from .. import paths
from ..errors import FormatError, RegistryError, os_error

KEY_FORMAT = "cometmp.registry_key"
KEY_VERSION = 1
KEY_BYTES = 32
#: a key file is ~100 bytes; anything longer than this is not one
MAX_FILE_BYTES = 4096

_RECOVER = ("it is not regenerated automatically, because a server that still uses the "
            "registry name derived from it would be split in two: stop every process "
            "using this data directory, remove the file, and start again (a new key is made)")


class ForeignRegistry(RegistryError):
    """The registry cannot be trusted (I33, I33a): its name is held by an object another
    local user created or that is open to others, or the registry key is not the
    directory owner's private file. (Defined here, below table.py, which re-exports it.)"""


def stat_mode(st: os.stat_result) -> str:
    return f"{st.st_mode & 0o7777:04o}"


def key_path(directory: str) -> str:
    return os.path.join(directory, paths.REGISTRY_KEY)


def encode(secret: bytes) -> bytes:
    """The bytes of a key file holding ``secret`` (also the golden file's encoder)."""
    doc = {"format": KEY_FORMAT, "key": secret.hex(), "version": KEY_VERSION}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def read_key(directory: str) -> bytes | None:
    """The secret of ``directory``, or None if it has no key file yet.

    Raises ForeignRegistry when the file is not a regular file owned by this process's
    euid or the directory's owner with a mode granting nothing to group or others (I33a:
    someone else could know or have chosen the key); FormatError when its content is not a
    version-1 key; StorageError (errno, path) when it cannot be read (another user's
    directory: run ``cometmp status`` as its owner or root). Each message names the path.
    """
    path = key_path(directory)
    try:
        # O_NONBLOCK: a FIFO planted at the name must not hang the open
        fd = paths.open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK, paths.IN_ROOT)
    except FileNotFoundError:
        return None
    except PermissionError as e:
        raise os_error(e, path, message=(
            f"read the registry key {path}: {e.strerror}; only the data directory's owner "
            f"({_owner_name(directory)}) or root can read it, and so find the directory's "
            f"registry: run this as that user")) from e
    except OSError as e:
        raise os_error(e, path, "read the registry key") from e
    try:
        st = os.fstat(fd)
        _check_trusted(directory, path, st)
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise os_error(e, path, "read the registry key") from e
    finally:
        os.close(fd)
    return _decode(path, raw)


def load_key(directory: str, create: bool) -> bytes | None:
    """The secret of ``directory``; when it has none and ``create``, make it first
    (link-if-absent: of racing creators, every one returns the winner's key). None when
    it has none and not ``create``."""
    secret = read_key(directory)
    if secret is not None or not create:
        return secret
    path = key_path(directory)
    try:
        paths.create_file_once(path, encode(os.urandom(KEY_BYTES)), paths.IN_ROOT)
    except OSError as e:
        raise os_error(e, path, "create the registry key") from e
    secret = read_key(directory)
    if secret is None:   # removed between our link and our read: someone is cleaning up
        raise os_error(errno.ENOENT, path, "read the registry key just created")
    return secret


def _owner_name(directory: str) -> str:
    try:
        return paths.user_name(os.stat(directory).st_uid)
    except OSError:
        return "unknown"


def _check_trusted(directory: str, path: str, st: os.stat_result) -> None:
    """I33a: a key anyone but the directory's owner (or this euid) wrote, or anyone else
    may read, does not keep the name secret."""
    me = os.geteuid()
    owner = os.stat(directory).st_uid
    if stat.S_ISREG(st.st_mode) and st.st_uid in (me, owner) and not st.st_mode & 0o077:
        return
    kind = "a regular file" if stat.S_ISREG(st.st_mode) else "not a regular file"
    raise ForeignRegistry(
        f"{path}: the registry key is {kind} owned by {paths.user_name(st.st_uid)} with mode "
        f"{stat_mode(st)}; a key is trusted only if it is a regular file of mode 0600 owned "
        f"by {paths.user_name(owner)} (the directory's owner) or by this process's user, "
        f"because anyone else may know it (I33a); {_RECOVER}")


def _decode(path: str, raw: bytes) -> bytes:
    from ..client import _json_document   # the one reader of cometmp's JSON files

    if len(raw) > MAX_FILE_BYTES:
        raise FormatError(f"{path}: registry key file is longer than {MAX_FILE_BYTES} bytes; "
                          f"{_RECOVER}")
    try:
        doc = _json_document(path, raw, KEY_FORMAT, "registry key", KEY_VERSION)
    except FormatError as e:
        raise FormatError(f"{e}; {_RECOVER}") from None
    key = doc.get("key")
    if not isinstance(key, str) or len(key) != 2 * KEY_BYTES \
            or key.strip("0123456789abcdef"):
        raise FormatError(f"{path}: registry key field 'key' is not {2 * KEY_BYTES} lowercase "
                          f"hex digits; {_RECOVER}")
    return bytes.fromhex(key)
