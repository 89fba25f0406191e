"""Lazy package exports: a package's public names imported on first access.

A package ``__init__`` lists ``{name: module}`` and installs the module-level
``__getattr__`` and ``__dir__`` this returns (PEP 562), so ``import package``
stays cheap (no torch, h5py, ...) while ``from package import Name`` works::

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Name": ".module"})
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_exports(package: str, namespace: dict, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose globals are ``namespace``.

    ``exports`` maps each public name to the module that defines it (relative
    to ``package`` or absolute); the first access imports that module and keeps
    the value in ``namespace``.
    """
    exports = dict(exports)

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
