"""The release artifacts install and work where a user puts them (issue 8 item 6).

scripts/build.sh makes the sdist, builds the wheel from it and repairs the wheel to a
manylinux tag; these tests install that wheel into a fresh venv in a temporary directory
and use it from there, with the working directory outside the checkout so the source tree
cannot be what gets imported. The build runs without isolation (the [test] extra has the
build requirements), so the tier needs no index access beyond installing the wheel's
runtime dependencies, which pip's cache or configured index serves.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, timeout: float = 240, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env)
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, repaired wheel) from scripts/build.sh."""
    out = tmp_path_factory.mktemp("dist")
    lines = run(["bash", str(ROOT / "scripts" / "build.sh"), str(out)], cwd=ROOT,
                PYTHON=sys.executable, COMETMP_BUILD_ISOLATION="0").split()
    sdist, wheel = Path(lines[-2]), Path(lines[-1])
    assert sdist.name == "cometmp-0.1.0.tar.gz" or sdist.name.endswith(".tar.gz")
    return sdist, wheel


@pytest.fixture(scope="module")
def installed(artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the repaired wheel installed; returns its bin/."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # the test venv's pip installs into the new venv (pip --python): no ensurepip per run
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", str(artifacts[1])],
        cwd=env_dir)
    return env_dir / "bin"


def test_sdist_has_every_native_source_and_the_builder(artifacts: tuple[Path, Path]) -> None:
    sdist, _ = artifacts
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    wanted = {f"native/{p.name}" for p in NATIVE.iterdir() if p.suffix in (".c", ".h", ".py")}
    wanted |= {"LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "cometmp/py.typed"}
    wanted |= {f"cometmp/{p.name}" for p in (ROOT / "cometmp").glob("*.pyi")}
    assert wanted <= names, f"missing from the sdist: {sorted(wanted - names)}"
    assert not [n for n in names if n.endswith((".so", ".o"))]


# Built on CPython >= 3.11 every extension is on the 3.11 limited API and the wheel is one
# cp311-abi3 wheel for 3.11 and later; built on 3.10 it is for 3.10 only (setup.py).
ABI3 = sys.version_info >= (3, 11)
WHEEL_TAG = "cp311-abi3" if ABI3 else "cp{0}{1}-cp{0}{1}".format(*sys.version_info[:2])


def test_wheel_is_manylinux_and_carries_stubs_and_license(artifacts: tuple[Path, Path]) -> None:
    _, wheel = artifacts
    assert re.fullmatch(rf"cometmp-0\.1\.0-{WHEEL_TAG}-manylinux_2_\d+_{platform.machine()}\.whl",
                        wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        tags = [line for line in zf.read("cometmp-0.1.0.dist-info/WHEEL").decode().splitlines()
                if line.startswith("Tag: ")]
    assert tags and all(t.startswith(f"Tag: {WHEEL_TAG}-manylinux_2_") for t in tags), tags
    for mod in ("_appender", "_reader", "_cffi"):
        assert f"cometmp/{mod}.pyi" in names
        so = r"abi3\.so" if ABI3 else r"cpython-.*\.so"
        if mod == "_cffi":
            so = r"abi3\.so"  # cffi builds its module on the limited API on every 3.x
        assert any(re.fullmatch(rf"cometmp/{mod}\.{so}", n) for n in names), (mod, sorted(names))
    assert "cometmp/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("native/", "tests/"))]


@pytest.mark.skipif(not ABI3, reason="built on 3.10: the full API, a cp310 wheel")
def test_abi3_wheel_uses_only_the_311_stable_abi(artifacts: tuple[Path, Path]) -> None:
    """abi3audit reads each extension's imported symbols: none outside the stable ABI, and
    none newer than the wheel's cp311 tag promises."""
    out = run([sys.executable, "-m", "abi3audit", "--strict", "--report", str(artifacts[1])],
              cwd=ROOT)
    results = {so["name"]: so["result"] for spec in json.loads(out)["specs"].values()
               for so in spec["wheel"]}
    assert sorted(results) == ["_appender.abi3.so", "_cffi.abi3.so", "_reader.abi3.so"]
    for name, r in results.items():
        assert r["is_abi3"] and not r["non_abi3_symbols"], (name, r)
        assert r["is_abi3_baseline_compatible"] and r["baseline"] == "3.11", (name, r)


def test_wheel_extensions_need_only_libc_and_carry_no_build_paths(
        artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    """No RPATH/RUNPATH pointing at the build machine (pyenv bakes one into LDSHARED), and
    every extension NEEDs libc (auditwheel detects the libc from them)."""
    from elftools.elf.dynamic import DynamicSection  # pyelftools: an auditwheel dependency
    from elftools.elf.elffile import ELFFile

    with zipfile.ZipFile(artifacts[1]) as zf:
        zf.extractall(tmp_path)
    sos = sorted((tmp_path / "cometmp").glob("*.so"))
    assert len(sos) == 3
    for so in sos:
        with open(so, "rb") as f:
            dyn = next(s for s in ELFFile(f).iter_sections() if isinstance(s, DynamicSection))
            tags = [(t.entry.d_tag, getattr(t, "needed", None)) for t in dyn.iter_tags()]
        assert not [t for t, _ in tags if t in ("DT_RPATH", "DT_RUNPATH")], so.name
        needed = {n for t, n in tags if t == "DT_NEEDED"}
        assert "libc.so.6" in needed and needed <= {"libc.so.6", "ld-linux-x86-64.so.2",
                                                    "libpthread.so.0"}, (so.name, needed)


SMOKE = """
import json, sys
import cometmp
assert cometmp.__file__.startswith(sys.prefix), cometmp.__file__
with cometmp.Client(sys.argv[1]) as client:
    log = client.log("events", shards=2)
    mid = log.append(b"hello", key="user-1")
    ids = log.append_many([b"a", b"b"], key="user-1")
    assert client.read(mid.stream, mid.entry).data == b"hello"
    assert [m.data for m in client.scan(mid.stream, start=0)] == [b"hello", b"a", b"b"]
    assert list(ids) == [cometmp.MessageID(mid.stream, mid.shard, 1),
                         cometmp.MessageID(mid.stream, mid.shard, 2)]
print(json.dumps({"stream": mid.stream}))
"""


def test_installed_wheel_appends_reads_and_runs_the_cli(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "cwd"  # outside the checkout: the checkout must not be importable
    work.mkdir()
    (work / "smoke.py").write_text(SMOKE)
    data = tmp_path / "data"
    stream = json.loads(run([str(installed / "python"), "smoke.py", str(data)], cwd=work))["stream"]
    stats = json.loads(run([str(installed / "cometmp"), "stats", "--json", str(data)], cwd=work))
    assert stats["streams"][stream]["length"] == 3
    assert stats["families"]["events"]["shards"] == 2


USER_CODE = """
import cometmp

with cometmp.Client("/tmp/unused") as client:
    log = client.log("events", shards=4)
    reveal_type(log.append(b"x"))
    reveal_type(log.append_many([b"a", b"b"], key="k"))
    reveal_type(log.append(b"x").entry)
    log.append("str")
    reveal_type(log.append_many([b"a"])[0])
    log.append_many(["str"])
"""


def mypy_strict(tmp_path: Path, *args: str, **env: str) -> list[str]:
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_CODE))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
           "--cache-dir", str(tmp_path / "mypy_cache"), *args, "user.py"]
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    full_env.update(env)
    p = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, f"mypy should reject log.append(str):\n{p.stdout}\n{p.stderr}"
    return p.stdout.splitlines()


EXPECTED_MYPY = [
    'user.py:6: note: Revealed type is "cometmp._appender.MessageID"',
    'user.py:7: note: Revealed type is "cometmp.client.MessageIDs"',
    'user.py:8: note: Revealed type is "builtins.int"',
    'user.py:9: error: Argument 1 has incompatible type "str"; expected "Buffer"  [arg-type]',
    'user.py:10: note: Revealed type is "cometmp._appender.MessageID"',
    'user.py:11: error: List item 0 has incompatible type "str"; expected "Buffer"  [list-item]',
]


def normalise(lines: list[str]) -> list[str]:
    return [re.sub(r'"int"', '"builtins.int"', line) for line in lines]


def test_mypy_strict_sees_the_installed_wheels_types(installed: Path, tmp_path: Path) -> None:
    """What a user's mypy sees: the wheel in site-packages (py.typed + the .pyi stubs)."""
    out = mypy_strict(tmp_path, "--python-executable", str(installed / "python"))
    assert normalise(out) == EXPECTED_MYPY
