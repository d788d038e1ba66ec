"""Every failpoint compiled into the core or asked for by Python is documented (§4.1/§4.2).

A point nobody documents is a fault class nobody knows is covered: the catalogue in
docs/ARCHITECTURE.md is where the crash tier's reader finds what each point guards and
what its failure does. Points are found in the sources as the literal names passed to
``CM_FAILPOINT``/``CM_FAILPOINT_ERRNO`` (native/) and ``failpoint.fail`` (cometmp/);
names built at run time (``f"{prefix}.{step}"``) are covered by their prefix's row.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
C_POINT = re.compile(r'CM_FAILPOINT(?:_ERRNO)?\("([a-z_.]+)"\)')
PY_POINT = re.compile(r'failpoint\.fail\("([a-z_.]+)"')


def points() -> set[str]:
    found = set()
    for f in (ROOT / "native").glob("*.c"):
        found |= set(C_POINT.findall(f.read_text()))
    for f in (ROOT / "cometmp").rglob("*.py"):
        found |= set(PY_POINT.findall(f.read_text()))
    return found


def test_every_failpoint_in_the_sources_is_in_the_architecture_catalogue():
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    found = points()
    assert len(found) > 40, f"the scan found only {sorted(found)}: the patterns no longer match"
    missing = sorted(p for p in found if f"`{p}`" not in doc)
    assert not missing, f"failpoints not documented in docs/ARCHITECTURE.md §4.1/§4.2: {missing}"
