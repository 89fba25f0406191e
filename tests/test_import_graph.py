"""No import cycles in src/ (issue 14): a static scan of every ``import`` and
``from ... import`` statement, including those inside functions (a deferred
import is still a dependency), over the modules of ``nnpflow``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: cycles other work owns; each must still exist (remove it here when it is fixed)
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every module of the ``nnpflow`` package
    (packages under their own name; edges only to nnpflow modules)."""
    files = {}
    for path in (src / "nnpflow").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        files[".".join(parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # ``from pkg import submodule`` depends on the submodule; ``pkg`` itself
                # only when a name of its own namespace is imported
                subs = [f"{target}.{a.name}" for a in node.names
                        if f"{target}.{a.name}" in files]
                candidates = subs + ([target] if len(subs) < len(node.names) else [])
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in candidates if c in files and c != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_finds_a_cycle_it_is_shown(tmp_path):
    pkg = tmp_path / "nnpflow"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from .y import g\n")
    (pkg / "a" / "y.py").write_text("from ..b import h\n")
    (pkg / "b.py").write_text("import nnpflow.a.x\n")
    assert cycles(module_graph(tmp_path)) == [frozenset({"nnpflow.a.x", "nnpflow.a.y",
                                                         "nnpflow.b"})]


def test_no_import_cycles_in_src():
    found = set(cycles(module_graph()))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"import cycles in src/: {new}"
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not gone, f"known cycles no longer exist; remove them from KNOWN_CYCLES: {gone}"


def test_layers_point_down():
    """evaluation and models do not depend on training; nothing imports stages or cli."""
    graph = module_graph()
    for name, deps in graph.items():
        for d in deps:
            if name.startswith(("nnpflow.evaluation", "nnpflow.models", "nnpflow.calculator")):
                assert not d.startswith("nnpflow.training"), f"{name} imports {d}"
            if not name.startswith(("nnpflow.stages", "nnpflow.cli")):
                assert not d.startswith(("nnpflow.stages", "nnpflow.cli")), f"{name} imports {d}"


def test_the_scan_sees_submodule_imports():
    """``from .derivatives import X`` and ``from . import neighbors`` are edges to the
    submodules (not to the package, which every submodule's import runs anyway)."""
    deps = module_graph()["nnpflow.descriptors.chebyshev"]
    assert {"nnpflow.descriptors.derivatives", "nnpflow.descriptors.neighbors"} <= deps
    assert "nnpflow.descriptors" not in deps
