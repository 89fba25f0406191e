"""Checks of a configuration that a JSON schema cannot express, run before any job.

The workflow validates ``config/config.yaml`` against
``workflow/schemas/config.schema.yaml`` first (types, ranges, unknown keys); the
checks here come right after, in ``workflow/rules/common.smk``, so each of these
mistakes stops the run at once with one line naming the key, instead of failing
late (in the first build job, after hours of training) or vaguely:

* a NaN or infinite number anywhere (YAML ``.nan``/``.inf``; a schema's
  ``minimum``/``maximum`` let NaN through, since every comparison with NaN is
  false) -- :func:`nonfinite_paths` also serves ``train.yaml``;
* ``descriptor.min_cutoff`` not below both cutoffs;
* a species or ``atomic_energies`` key that is not an element (``Xx``);
* ``training.devices`` (or a model's) larger than the cores Snakemake may use;
* ``results`` that is the file system root, or a folder inside a source folder
  (its outputs would be read back as sources).

Every function raises :class:`~nnpflow.errors.ConfigError` whose text starts with
the key's path (``training.learning_rate: ...``).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping
from typing import Any, Iterator

from .errors import ConfigError, InputError

__all__ = ["nonfinite_paths", "check_finite", "check_workflow_config"]


def nonfinite_paths(obj: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """``(key path, value)`` of every NaN or infinite number in nested mappings
    and lists (``training.learning_rate``, ``models.ann.hidden[0][0]``); strings
    (``"fit"``, ``"1e-3"``) are not numbers and are left alone."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield path or "(value)", obj
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from nonfinite_paths(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            yield from nonfinite_paths(value, f"{path}[{k}]")


def check_finite(obj: Any, prefix: str = "") -> None:
    """Raise ``ConfigError`` naming the first NaN or infinite number in ``obj``."""
    for where, value in nonfinite_paths(obj, prefix):
        raise ConfigError(f"{where}: {value} is not a finite number (NaN and infinity are "
                          "not settings)")


def _element(symbol: Any, where: str) -> None:
    from .structure import element_symbol

    try:
        ok = isinstance(symbol, str) and element_symbol(symbol) == symbol
    except (InputError, ValueError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(f"{where}: {symbol!r} is not a chemical element symbol "
                          "(e.g. Ti, O, Cu)")


def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _source_folder(raw: str, base_dir: str) -> str | None:
    """The folder a source entry reads recursively: a directory, or the part of a
    glob before its first wildcard; ``None`` for a single file."""
    full = raw if os.path.isabs(raw) else os.path.join(base_dir, raw)
    if glob.has_magic(raw):
        parts = []
        for part in full.split(os.sep):
            if glob.has_magic(part):
                break
            parts.append(part)
        return os.sep.join(parts) or os.sep
    return full if os.path.isdir(full) else None


def check_workflow_config(config: Mapping, *, cores: int | None = None,
                          base_dir: str | os.PathLike = ".") -> None:
    """The workflow configuration's cross-checks (see the module docstring).

    ``config``: validated and filled by the schema.  ``cores``: the cores
    Snakemake may use for one job (``--cores`` locally; ``max-threads`` on a
    cluster), or ``None`` when unknown (then ``devices`` is not checked).
    ``base_dir``: the working folder relative paths refer to.
    """
    base_dir = os.fspath(base_dir)
    check_finite(config)
    d = config.get("descriptor") or {}
    if "min_cutoff" in d:
        for key in ("rad_cutoff", "ang_cutoff"):
            if key in d and not d["min_cutoff"] < d[key]:
                raise ConfigError(
                    f"descriptor.min_cutoff: {d['min_cutoff']} Å must be below "
                    f"descriptor.{key} ({d[key]} Å): min_cutoff is the shortest allowed "
                    "distance between two atoms, the cutoffs the range of the descriptor")
    for k, symbol in enumerate(config.get("species") or []):
        _element(symbol, f"species[{k}]")
    refs = config.get("atomic_energies")
    for symbol in refs if isinstance(refs, dict) else {}:  # or "fit"
        _element(symbol, f"atomic_energies.{symbol}")
    if cores is not None:
        base = (config.get("training") or {}).get("devices", 1)
        for name, model in (config.get("models") or {}).items():
            if not model.get("active", True):
                continue
            override = (model.get("training") or {}).get("devices")
            devices = int(override if override is not None else base)
            if devices > cores:
                key = (f"models.{name}.training.devices" if override is not None
                       else "training.devices")
                raise ConfigError(
                    f"{key}: {devices} training processes (model {name}) need {devices} "
                    f"cores, but Snakemake may use {cores} (--cores, or max-threads on a "
                    f"cluster); lower devices or give more cores")
    results = str(config.get("results", "results"))
    full = results if os.path.isabs(results) else os.path.join(base_dir, results)
    if os.path.realpath(full) == os.path.realpath(os.sep):
        raise ConfigError(f"results: {results!r} is the file system root; name a folder "
                          "for the outputs, e.g. results")
    for n, entry in enumerate(config.get("sources") or [], start=1):
        raw = entry if isinstance(entry, str) else (entry or {}).get("path")
        if not raw:
            continue
        folder = _source_folder(os.fspath(raw), base_dir)
        if folder is not None and _inside(full, folder):
            raise ConfigError(
                f"results: the results folder {results!r} is inside the folder "
                f"{os.path.relpath(folder, base_dir)!r} that source entry {n} ({raw}) reads: "
                "nnpflow would read its own outputs back as sources; put results outside "
                "the data folders")
