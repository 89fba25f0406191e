"""Provenance: fingerprints of the package code a stage runs, and software versions.

Snakemake sees edits to a rule's own code but not to the modules it imports.  A
rule therefore passes ``code_fingerprint("nnpflow.stages.build")`` as a param:
the SHA-256 over the source of that module and every ``nnpflow`` module it
imports, transitively (found by reading import statements, not by importing).
Editing the code of any of them changes the fingerprint and reruns the rule;
editing an unrelated module, or only comments and docstrings, does not: the
fingerprint hashes each module's syntax tree with docstrings removed (comments
never reach the tree), not its bytes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import platform
from functools import lru_cache
from pathlib import Path

PACKAGE = "nnpflow"
_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    rel = name.split(".")[1:]
    base = _ROOT.joinpath(*rel)
    if base.is_dir() and (base / "__init__.py").exists():
        return base / "__init__.py"
    file = base.with_suffix(".py")
    return file if file.exists() else None


def _imports(name: str, file: Path) -> set[str]:
    """nnpflow modules imported by the module ``name`` stored in ``file``."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_pkg = file.name == "__init__.py"
    parts = name.split(".")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = parts if is_pkg else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            found.add(base)
            for alias in node.names:  # "from .io import xsf" imports a submodule
                found.add(f"{base}.{alias.name}")
    # every package on the way is imported too (its __init__ runs)
    closure = set()
    for mod in found:
        bits = mod.split(".")
        closure.update(".".join(bits[:i]) for i in range(1, len(bits) + 1))
    return closure


@lru_cache(maxsize=None)
def module_closure(name: str) -> tuple[str, ...]:
    """Sorted names of ``name`` and all nnpflow modules it imports, transitively."""
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        file = _module_file(mod)
        if file is None:
            continue  # an attribute imported with "from x import y", not a module
        seen[mod] = file
        todo.extend(_imports(mod, file) - seen.keys())
    if name not in seen:
        raise ModuleNotFoundError(f"no module {name!r} in the nnpflow package")
    return tuple(sorted(seen))


def code_fingerprint(*modules: str, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 (hex, 16 chars) of the source of ``modules`` and their nnpflow imports.

    ``exclude`` names modules (and, with them, their submodules) left out: those a
    stage imports but never runs, so that editing them does not rerun it.
    """
    h = hashlib.sha256()
    names = sorted(m for mod in modules for m in set(module_closure(mod))
                   if not any(m == x or m.startswith(x + ".") for x in exclude))
    names = sorted(set(names))
    for mod in names:
        h.update(mod.encode() + b"\0")
        h.update(code_text(_module_file(mod)).encode())
    return h.hexdigest()[:16]


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def code_text(file: Path) -> str:
    """The code of a Python file without comments and docstrings, as a canonical string.

    The file's syntax tree (which holds no comments) with every module, class and
    function docstring removed, dumped by :func:`ast.dump` without line numbers:
    two files that differ only in comments, docstrings or layout give the same text.
    """
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    for node in ast.walk(tree):
        if isinstance(node, _DOCUMENTED) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour affects results."""
    out = {"python": platform.python_version()}
    for dist in ("nnpflow", "torch", "numpy", "h5py", "ase", "snakemake"):
        try:
            from importlib.metadata import version
            out[dist] = version(dist)
        except Exception:  # pragma: no cover - not installed
            spec = importlib.util.find_spec(dist)
            out[dist] = "unknown" if spec else "not installed"
    return out
