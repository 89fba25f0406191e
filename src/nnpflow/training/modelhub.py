"""Modelhub: the named models of a train.yaml and the architectures that train them.

Each model entry (``FF01: {...}``, optionally grouped under ``internal_FFs``) has
the common keys ``architecture``, ``active`` (default true), ``suffix`` (default
null) and ``loss`` (a term table, :mod:`nnpflow.training.losses`), plus the keys
of its architecture.  Its outputs go to ``<DIR>/<name>-<architecture>[-<suffix>]/``.

:data:`ARCHITECTURES` maps an architecture name to an :class:`Architecture`:
``resolve(entry, where) -> entry`` validates the architecture's keys and fills
defaults, ``train(job) -> dict`` trains one model (a
:class:`~nnpflow.training.message_passing.ModelJob`) and returns its test
metrics.  Both are ``"module:function"`` strings, imported when used.  Layer
stacks (every architecture in :data:`nnpflow.models.cores.CORES`, e.g. SchNet)
take ``build_params`` and ``layers``.  To add a trainer of another kind (the
atomic-network ANN), add an entry here with its own resolve and train functions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..models.cores import CORES
from ..models.fields import TARGET_NAMES
from .losses import parse_terms, term_fields

COMMON_KEYS = ("architecture", "active", "suffix", "loss")


@dataclass(frozen=True)
class Architecture:
    """How Modelhub entries of one architecture are validated and trained."""

    resolve: str
    train: str
    #: ``check(job, with_data)``: refuse the job before anything is written (reads only;
    #: ``with_data`` False: before the data set is processed, from its hash alone)
    check: str = ""

    @staticmethod
    def _load(target: str) -> Callable:
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)

    def resolve_entry(self, entry: dict, where: str) -> dict:
        return self._load(self.resolve)(entry, where)

    def trainer(self) -> Callable:
        return self._load(self.train)

    def checker(self) -> Callable:
        return self._load(self.check) if self.check else (lambda job, with_data: None)


_LAYER_STACK = Architecture(resolve="nnpflow.training.modelhub:resolve_layer_stack_entry",
                            train="nnpflow.training.message_passing:train_model",
                            check="nnpflow.training.message_passing:check_job")

#: architecture name -> Architecture; every layer-stack core is registered
ARCHITECTURES: dict[str, Architecture] = {name: _LAYER_STACK for name in CORES}
ARCHITECTURES["ANN"] = Architecture(resolve="nnpflow.training.ann_modelhub:resolve_ann_entry",
                                    train="nnpflow.training.ann_modelhub:train_ann_job",
                                    check="nnpflow.training.ann_modelhub:check_ann_job")


def resolve_layer_stack_entry(entry: dict, where: str) -> dict:
    """Validate ``build_params`` and ``layers`` by building the model once."""
    from ..models.stack import LayerStack

    for key in entry:
        if key not in COMMON_KEYS + ("build_params", "layers"):
            raise ConfigError(f"{where}.{key}: unknown key for architecture "
                              f"{entry['architecture']}; allowed: "
                              f"{', '.join(COMMON_KEYS + ('build_params', 'layers'))}")
    if "layers" not in entry:
        raise ConfigError(f"{where}.layers: required (the list of layers)")
    build = entry.get("build_params") or {}
    if not isinstance(build, Mapping):
        raise ConfigError(f"{where}.build_params: expected a mapping, got {build!r}")
    stack = LayerStack(entry["architecture"], entry["layers"], build, where=where)
    missing = [f for f in term_fields(entry["loss"]) if f not in stack.outputs]
    if missing:
        raise ConfigError(f"{where}.loss: the model does not predict {', '.join(missing)} "
                          f"(its layers write {', '.join(stack.outputs) or 'no target'})")
    out = dict(entry)
    out["build_params"] = dict(build)
    out["layers"] = stack.config()["layers"]
    return out


def model_dir_name(name: str, entry: Mapping[str, Any]) -> str:
    """``<name>-<architecture>[-<suffix>]``."""
    suffix = entry.get("suffix")
    return f"{name}-{entry['architecture']}" + (f"-{suffix}" if suffix not in (None, "") else "")


def resolve_modelhub(raw: Mapping) -> dict[str, dict]:
    """Validate the Modelhub section: ``{name: resolved entry}`` (inactive ones included)."""
    models: dict[str, tuple[str, Any]] = {}
    for key, value in raw.items():
        if key == "internal_FFs":
            if not isinstance(value, Mapping):
                raise ConfigError("Modelhub.internal_FFs: expected a mapping of named models")
            for name, entry in value.items():
                if name in models:
                    raise ConfigError(f"Modelhub.internal_FFs.{name}: model name used twice")
                models[name] = (f"Modelhub.internal_FFs.{name}", entry)
        else:
            if key in models:
                raise ConfigError(f"Modelhub.{key}: model name used twice")
            models[key] = (f"Modelhub.{key}", value)
    if not models:
        raise ConfigError("Modelhub: no models")
    out = {}
    for name, (where, entry) in models.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping with architecture, layers, loss, ...")
        entry = dict(entry)
        arch = entry.get("architecture")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{where}.architecture: unknown architecture {arch!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
        entry.setdefault("active", True)
        entry.setdefault("suffix", None)
        if not isinstance(entry["active"], bool):
            raise ConfigError(f"{where}.active: expected true or false, got {entry['active']!r}")
        if entry["suffix"] is not None and not isinstance(entry["suffix"], (str, int)):
            raise ConfigError(f"{where}.suffix: expected a name, got {entry['suffix']!r}")
        if entry["suffix"] is not None:
            entry["suffix"] = str(entry["suffix"])
            if "/" in entry["suffix"] or entry["suffix"].startswith("."):
                raise ConfigError(f"{where}.suffix: {entry['suffix']!r} is not a valid part of a "
                                  "folder name")
        if "loss" not in entry:
            raise ConfigError(f"{where}.loss: required (e.g. rmse: {{E: 1, Fa: 10}})")
        entry["loss"] = parse_terms(entry["loss"], f"{where}.loss", TARGET_NAMES)
        if not entry["loss"]:
            raise ConfigError(f"{where}.loss: needs at least one weighted term")
        out[name] = ARCHITECTURES[arch].resolve_entry(entry, where)
    return out


def trainer_for(entry: Mapping[str, Any]) -> Callable:
    """The ``train(job)`` function of a resolved entry's architecture."""
    return ARCHITECTURES[entry["architecture"]].trainer()


def checker_for(entry: Mapping[str, Any]) -> Callable:
    """The ``check(job, with_data)`` function of a resolved entry's architecture."""
    return ARCHITECTURES[entry["architecture"]].checker()
