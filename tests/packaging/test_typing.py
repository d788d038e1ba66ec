"""The compiled modules' type stubs match them, and make the append path typed.

mypy --strict on a user's file must infer MessageID / MessageIDs from Log.append /
Log.append_many and reject a str payload; without cometmp/_appender.pyi both are Any.
This runs against the package the tests import (the checkout); test_release.py repeats
the mypy check against the installed wheel.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import cometmp

from test_release import EXPECTED_MYPY, mypy_strict, normalise

pytestmark = pytest.mark.packaging

PKG = Path(cometmp.__file__).resolve().parent
NATIVE = Path(__file__).resolve().parents[2] / "native"


def stub_names(tree: ast.Module) -> dict[str, set[str]]:
    """Top-level names of a stub, and for each class the names defined in its body."""
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[""].add(node.name)
            out[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            out[node.name] |= {n.target.id for n in node.body
                               if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        elif isinstance(node, ast.FunctionDef):
            out[""].add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[""].add(node.target.id)
    return out


@pytest.mark.parametrize("mod", ["_appender", "_reader", "_cffi"])
def test_every_public_name_of_a_compiled_module_is_in_its_stub(mod: str) -> None:
    runtime = importlib.import_module(f"cometmp.{mod}")
    stub = stub_names(ast.parse((PKG / f"{mod}.pyi").read_text()))
    public = {n for n in dir(runtime) if not n.startswith("_")}
    assert public <= stub[""], f"{mod}.pyi lacks {sorted(public - stub[''])}"
    for cls in public & stub.keys():
        names = {n for n in vars(getattr(runtime, cls)) if not n.startswith("_")}
        assert names <= stub[cls], f"{mod}.pyi {cls} lacks {sorted(names - stub[cls])}"


def test_cffi_stub_declares_every_constant_of_the_header() -> None:
    header = re.findall(r"^#define\s+(CM_\w+)", (NATIVE / "cometmp.h").read_text(), re.M)
    stub = stub_names(ast.parse((PKG / "_cffi.pyi").read_text()))["_Lib"]
    assert header and set(header) <= stub, sorted(set(header) - stub)


def test_mypy_strict_infers_message_ids_and_rejects_str_payloads(tmp_path: Path) -> None:
    # follow-imports=silent: only the user's file is reported, as for an installed package
    out = mypy_strict(tmp_path, "--follow-imports=silent", MYPYPATH=str(PKG.parent))
    assert normalise(out) == EXPECTED_MYPY
