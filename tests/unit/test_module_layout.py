"""The package's shape: no import cycles, and the storage engine imports nothing of the
prefork runtime or the tools (docs/ARCHITECTURE.md §1). Read from the source with ast,
so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import os

import cometmp

PKG = os.path.dirname(os.path.abspath(cometmp.__file__))

#: the storage engine: streams, segments, indexes, groups, retention and the seam
ENGINE = {"cometmp._ffi", "cometmp.errors", "cometmp.config", "cometmp.paths",
          "cometmp.compression", "cometmp.format", "cometmp.segment", "cometmp.index",
          "cometmp.shard", "cometmp.client", "cometmp.offsets", "cometmp.members", "cometmp.window",
          "cometmp.pending", "cometmp.consumer",
          "cometmp.deadletter", "cometmp.retention", "cometmp.ownership", "cometmp.stats",
          "cometmp.cursor", "cometmp.failpoint", "cometmp.waiting", "cometmp.prealloc"}
#: the prefork runtime and the tools, which the engine must not know
RUNTIME_PREFIXES = ("cometmp.registry", "cometmp.supervisor", "cometmp.integrations")
TOOL_PREFIXES = ("cometmp.tools", "cometmp.metrics", "cometmp.forwarder", "cometmp.logging",
                 "cometmp.appmetrics", "cometmp.prometheus",
                 "cometmp.forwarding", "cometmp.otel", "cometmp.otlp_entry", "cometmp.otlp_forwarder")


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(PKG))
            name = rel[:-3].replace(os.sep, ".")
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            out[name] = os.path.join(dirpath, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """cometmp modules that ``name`` imports, anywhere in its source."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "cometmp":
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, known) for n, p in mods.items()}


def test_the_package_has_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_engine_imports_nothing_of_the_runtime_or_the_tools():
    graph = _graph()
    assert ENGINE <= set(graph), ENGINE - set(graph)
    bad = {(n, m) for n in ENGINE for m in graph[n]
           if m.startswith(RUNTIME_PREFIXES) or m.startswith(TOOL_PREFIXES)}
    assert not bad, sorted(bad)


def test_every_module_is_placed_in_a_layer():
    graph = _graph()
    unplaced = {n for n in graph if n not in ENGINE and n not in ("cometmp", "cometmp.__main__")
                and not n.startswith(RUNTIME_PREFIXES + TOOL_PREFIXES)}
    assert not unplaced, f"place these in ENGINE or a prefix (and in ARCHITECTURE §1): {unplaced}"
