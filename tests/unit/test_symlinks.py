"""I30: nothing inside a data directory is opened through a symbolic link.

Each test builds a real data directory, replaces one file or directory of it with a link
to a decoy outside it, and runs the calls that open that file. The call raises
StorageError (errno ELOOP) naming the path and "is a symbolic link", and the decoy keeps
its bytes, size and mtime.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

import cometmp
from cometmp import paths

from conftest import segment_files, small_config

STREAM = "plain"
DECOY_BYTES = bytes(range(80))   # the 80-byte decoy of the attack run


def build(root: str) -> None:
    with cometmp.Client(root, config=small_config()) as c:
        c.append(STREAM, [b"entry-%d" % i for i in range(50)])
        c.log("fam", shards=2).append(b"x", key="k")
        con = cometmp.Consumer(c, group="g")
        con.ack(con.read(STREAM, timeout=0))


def decoy_file(tmp_path) -> str:
    p = str(tmp_path / "decoy")
    with open(p, "wb") as f:
        f.write(DECOY_BYTES)
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    return p


def fingerprint(path: str) -> dict:
    """Bytes, size and mtime of a file, or of every file below a directory."""
    out = {}
    if os.path.isdir(path):
        for d, _dirs, files in os.walk(path):
            for fn in files:
                out.update(fingerprint(os.path.join(d, fn)))
        out[path] = sorted(os.listdir(path))
        return out
    st = os.stat(path)
    with open(path, "rb") as f:
        out[path] = (f.read(), st.st_size, st.st_mtime_ns)
    return out


def plant(link: str, target: str) -> None:
    """Replace ``link`` (a file or directory of the data directory) with a symlink."""
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    elif os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


def active_segment(root: str) -> str:
    return segment_files(root, STREAM)[-1][1]


# (kind, path of the planted link, what opens it)
def _append(root):
    with cometmp.Client(root, config=small_config()) as c:
        c.append(STREAM, [b"more"])


def _log(root):
    with cometmp.Client(root, config=small_config()) as c:
        c.log("fam", shards=2)


def _consumer(root):
    with cometmp.Client(root, config=small_config()) as c:
        cometmp.Consumer(c, group="g").read(STREAM, timeout=0)


def _open(root):
    cometmp.Client(root, config=small_config()).close()


def _read_only(root):
    with cometmp.Client(root, readonly=True) as c:
        list(c.scan(STREAM))


KINDS = {
    "active segment": (active_segment, _append),
    "active segment, read": (active_segment, _read_only),
    "index": (lambda r: active_segment(r)[:-4] + paths.INDEX_SUFFIX, _append),
    "state page": (lambda r: os.path.join(paths.stream_dir(r, STREAM), paths.STATE), _append),
    "offsets file": (lambda r: os.path.join(r, paths.CONSUMERS, paths.OFFSETS), _consumer),
    "marker": (lambda r: os.path.join(r, paths.DIR_MARKER), _open),
    "family file": (lambda r: paths.family_file(r, "fam"), _log),
    "state temp file": (lambda r: os.path.join(paths.stream_dir(r, STREAM), "state.tmp"), None),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_planted_file_link_is_refused_and_its_target_untouched(tmp_path, kind):
    root = str(tmp_path / "log")
    build(root)
    where, call = KINDS[kind]
    link = where(root)
    if call is None:   # the state page's temp file: planted when the page must be rebuilt
        os.unlink(os.path.join(os.path.dirname(link), paths.STATE))
        call = _append
    decoy = decoy_file(tmp_path)
    before = fingerprint(decoy)
    plant(link, decoy)
    with pytest.raises(cometmp.StorageError, match="is a symbolic link") as ei:
        call(root)
    assert ei.value.errno == errno.ELOOP
    assert os.path.basename(link) in str(ei.value)
    assert fingerprint(decoy) == before


DIRS = {
    "stream directory": (lambda r: paths.stream_dir(r, STREAM), _append),
    "streams/": (lambda r: paths.streams_dir(r), _append),
    "families/": (lambda r: os.path.join(r, paths.FAMILIES), _log),
    "consumers/": (lambda r: os.path.join(r, paths.CONSUMERS), _consumer),
}


@pytest.mark.parametrize("kind", sorted(DIRS))
def test_a_planted_directory_link_is_refused_and_its_target_untouched(tmp_path, kind):
    root = str(tmp_path / "log")
    build(root)
    where, call = DIRS[kind]
    link = where(root)
    decoy = str(tmp_path / "decoy-dir")
    shutil.copytree(link, decoy, symlinks=True)   # a copy: what a writer would change
    with open(os.path.join(decoy, "x.99999999.tmp"), "wb") as f:   # a dead writer's temp
        f.write(b"not ours to delete")
    before = fingerprint(decoy)
    plant(link, decoy)
    with pytest.raises(cometmp.StorageError, match="is a symbolic link") as ei:
        call(root)
    assert ei.value.errno == errno.ELOOP
    assert fingerprint(decoy) == before


def test_a_planted_stream_directory_link_is_not_listed_as_a_stream(tmp_path):
    root = str(tmp_path / "log")
    build(root)
    os.mkdir(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", paths.stream_dir(root, "planted"))
    with cometmp.Client(root, readonly=True) as c:
        assert "planted" not in c.streams()
        assert STREAM in c.streams()


def test_the_data_directory_itself_may_be_reached_through_a_link(tmp_path):
    """Only what is inside the directory is never followed; the path to it is the user's."""
    root = str(tmp_path / "log")
    build(root)
    os.symlink(root, tmp_path / "alias")
    with cometmp.Client(str(tmp_path / "alias"), config=small_config()) as c:
        c.append(STREAM, [b"via the alias"])
        assert c.length(STREAM) == 51
