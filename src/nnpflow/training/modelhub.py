"""Modelhub: the named models of a train.yaml and the architectures that train them.

Each model entry (``FF01: {...}``, flat or grouped under ``internal_FFs`` /
``external_FFs``) has the common keys ``architecture``, ``active`` (default true),
``suffix`` (default null; blank = null), ``loss`` (a term table,
:mod:`nnpflow.training.losses`), ``Metric`` (this model's metric table, instead of
the top-level one) and ``pretrain_path`` (a saved model of the same architecture
to start from: :func:`initial_weights`, :func:`build_model`), plus the keys of its
architecture.  Its outputs go to ``<DIR>/<name>-<architecture>[-<suffix>]/``.  An
inactive entry of an architecture nnpflow does not implement is kept as written;
an active one is refused (:data:`NOT_IMPLEMENTED`).

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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..models.cores import CORES
from ..models.fields import TARGET_NAMES
from .losses import parse_metric_table, parse_terms, term_fields
from .settings import suggest

COMMON_KEYS = ("architecture", "active", "suffix", "loss", "Metric", "pretrain_path")
#: Modelhub keys that group named models (Enerzyme's); other keys are model names
GROUPS = ("internal_FFs", "external_FFs")
#: architectures of Enerzyme's train.yaml that nnpflow does not implement: an active
#: model of one is refused before any data is processed (an inactive one is kept as is)
NOT_IMPLEMENTED = ("PhysNet", "SpookyNet", "LEFTNet", "AlphaNet", "MACE", "NequIP", "XPaiNN",
                   "DimeNet", "Equiformer", "EquiformerV2", "EquiformerV3", "eSCN", "E2Former",
                   "DPA4", "AllScAIP", "UMA", "EFA")


@dataclass(frozen=True)
class Architecture:
    """How Modelhub entries of one architecture are validated and trained."""

    resolve: str
    train: str
    #: ``check(job, with_data)``: refuse the job before anything is written (reads only;
    #: ``with_data`` False: before the data set is processed, from its hash alone)
    check: str = ""
    #: the file ``--resume`` (and ``Trainer.resume: 2``) continues from
    checkpoint: str = "model_last.pt"
    #: whether ``pretrain_path`` and ``Trainer.resume: 1`` (start from saved weights) work
    fine_tuning: bool = False

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
                            check="nnpflow.training.message_passing:check_job",
                            fine_tuning=True)

#: architecture name -> Architecture; every layer-stack core is registered
ARCHITECTURES: dict[str, Architecture] = {name: _LAYER_STACK for name in CORES}
ARCHITECTURES["ANN"] = Architecture(resolve="nnpflow.training.ann_modelhub:resolve_ann_entry",
                                    train="nnpflow.training.ann_modelhub:train_ann_job",
                                    check="nnpflow.training.ann_modelhub:check_ann_job",
                                    checkpoint="checkpoint_last.pt")


def resolve_layer_stack_entry(entry: dict, where: str) -> dict:
    """Validate ``build_params`` and ``layers`` by building the model once."""
    from ..models.stack import LayerStack

    allowed = COMMON_KEYS + ("build_params", "layers")
    for key in entry:
        if key not in allowed and key != "initial_weights":
            raise ConfigError(f"{where}.{key}: unknown key for architecture "
                              f"{entry['architecture']}{suggest(key, allowed)}; allowed: "
                              f"{', '.join(allowed)}")
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


def build_model(entry: Mapping[str, Any], where: str):
    """The layer-stack model of a resolved entry; with ``entry["initial_weights"]``
    (set by ``nnpflow train`` from ``pretrain_path`` or ``Trainer.resume: 1``, see
    :func:`initial_weights`) it starts from those weights instead of random ones."""
    from ..models.stack import LayerStack

    model = LayerStack(entry["architecture"], entry["layers"], entry["build_params"], where=where)
    initial = entry.get("initial_weights")
    if initial is not None:
        model.load_state_dict(initial["state_dict"])  # shapes checked by initial_weights
    return model


def _model_file_in(path: Path, prefer: str, where: str) -> Path:
    """The model file ``path`` names: itself, or in a folder ``model_best.pt`` /
    ``model_last.pt`` in the order ``prefer`` says (Enerzyme's rule)."""
    if path.is_file():
        return path
    if path.is_dir():
        names = ("model_best.pt", "model_last.pt")
        for name in names if prefer == "best" else names[::-1]:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"{where}: {path} holds neither model_best.pt nor model_last.pt")
    raise ConfigError(f"{where}: {path} does not exist")


def initial_weights(entry: Mapping[str, Any], path: str | os.PathLike, where: str,
                    averaged: bool) -> dict:
    """The weights a model starts from: ``{"state_dict", "source", "kind"}``.

    ``path`` is an nnpflow model file (``model_best.pt``: averaged weights), a
    training checkpoint (``model_last.pt``: live weights and their average) or a
    model folder holding them (``model_best.pt`` first when ``averaged``, else
    ``model_last.pt`` first).  ``averaged`` takes a checkpoint's averaged (EMA)
    weights where it has them (Enerzyme's fine-tuning start), else its live ones
    (Enerzyme's ``resume: 1``).  The saved model must have the entry's architecture:
    the same core, the same layers in the same order and weights of the same names
    and shapes; anything else is a :class:`~nnpflow.errors.ConfigError` naming the
    difference.  Read before any data is processed."""
    import torch

    from ..errors import SchemaError
    from ..models.model_file import model_from_payload
    from ..models.registry import load_model
    from ..models.stack import LayerStack
    from .checkpoint import CHECKPOINT_SCHEMA, load_checkpoint

    file = _model_file_in(Path(path), "best" if averaged else "last", where)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise ConfigError(f"{where}: {file} is not an nnpflow model file or training "
                          f"checkpoint ({type(exc).__name__})") from None
    kind = "model file"
    try:
        if isinstance(raw, Mapping) and raw.get("schema") == CHECKPOINT_SCHEMA:
            state = load_checkpoint(file)
            payload = state.get("model")
            if (not isinstance(payload, Mapping) or "schema" not in payload
                    or payload.get("family", "layer_stack") != "layer_stack"):
                raise ConfigError(f"{where}: the checkpoint {file} holds no model of the layer-"
                                  "stack family (an ANN checkpoint? use its model_best.pt)")
            # the envelope, or the nnpflow.layer_stack v1 dict of an older checkpoint
            module = model_from_payload(dict(payload), "cpu")
            weights = {k: v.clone() for k, v in module.state_dict().items()}
            kind = "checkpoint (live weights)"
            ema = state.get("ema")
            if averaged and isinstance(ema, Mapping) and ema.get("shadow"):
                weights.update({k: v.clone() for k, v in ema["shadow"].items() if k in weights})
                kind = "checkpoint (averaged weights)"
        else:
            loaded = load_model(file)
            if loaded.kind != "layer_stack":
                raise ConfigError(f"{where}: {file} holds an {loaded.kind} model; "
                                  f"{entry['architecture']} needs a saved "
                                  f"{entry['architecture']} model of the same layers")
            module = loaded.module
            weights = {k: v.clone() for k, v in module.state_dict().items()}
    except SchemaError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    problems = []
    if getattr(module, "architecture", None) != entry["architecture"]:
        problems.append(f"architecture {getattr(module, 'architecture', '?')}, not "
                        f"{entry['architecture']}")
    saved_layers = [s["name"] for s in getattr(module, "layer_specs", [])]
    layers = [s["name"] if isinstance(s, Mapping) else s for s in entry["layers"]]
    if saved_layers != layers:
        problems.append(f"layers {saved_layers}, not {layers}")
    if not problems:
        fresh = LayerStack(entry["architecture"], entry["layers"], entry["build_params"],
                           where=where).state_dict()
        missing = sorted(set(fresh) - set(weights))
        extra = sorted(set(weights) - set(fresh))
        shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in fresh.items()
                  if k in weights and weights[k].shape != v.shape]
        for label, items in (("lacks weights", missing), ("has extra weights", extra),
                             ("has weights of other shapes", shapes)):
            if items:
                problems.append(f"{label}: {', '.join(items[:4])}"
                                + (f" (+{len(items) - 4} more)" if len(items) > 4 else ""))
    if problems:
        raise ConfigError(f"{where}: the saved model {file} is not of this model's "
                          f"architecture ({'; '.join(problems)}); fine-tuning starts from a "
                          "model with the same core, layers and sizes")
    return {"state_dict": weights, "source": str(file), "kind": kind}


def model_dir_name(name: str, entry: Mapping[str, Any]) -> str:
    """``<name>-<architecture>[-<suffix>]``."""
    suffix = entry.get("suffix")
    return f"{name}-{entry['architecture']}" + (f"-{suffix}" if suffix not in (None, "") else "")


def resolve_modelhub(raw: Mapping, base_dir: str | os.PathLike = ".") -> dict[str, dict]:
    """Validate the Modelhub section: ``{name: resolved entry}`` (inactive ones included).

    Models are named entries, flat or grouped under ``internal_FFs`` /
    ``external_FFs`` (Enerzyme's; both groups are read the same way).  An inactive
    model is kept as written (its architecture need not be one nnpflow implements);
    an active one of an architecture nnpflow does not implement is refused naming it
    and the supported ones.  ``pretrain_path`` is resolved against ``base_dir``."""
    models: dict[str, tuple[str, Any]] = {}
    for key, value in raw.items():
        if key in GROUPS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"Modelhub.{key}: expected a mapping of named models")
            for name, entry in value.items():
                if name in models:
                    raise ConfigError(f"Modelhub.{key}.{name}: model name used twice")
                models[name] = (f"Modelhub.{key}.{name}", entry)
        else:
            if key in models:
                raise ConfigError(f"Modelhub.{key}: model name used twice")
            models[key] = (f"Modelhub.{key}", value)
    if not models:
        raise ConfigError("Modelhub: no models")
    # every active model of an architecture nnpflow does not implement, in one error
    unsupported = [(where, entry["architecture"]) for where, entry in models.values()
                   if isinstance(entry, Mapping) and entry.get("active", True) is not False
                   and isinstance(entry.get("architecture"), str)
                   and entry["architecture"] in NOT_IMPLEMENTED
                   and entry["architecture"] not in ARCHITECTURES]
    if unsupported:
        supported = ", ".join(sorted(ARCHITECTURES))
        if len(unsupported) == 1:
            (where, arch), = unsupported
            raise ConfigError(f"{where}.architecture: {arch} is an Enerzyme architecture that "
                              f"nnpflow does not implement; supported: {supported} (set "
                              "active: false to keep the model in the file)")
        listed = ", ".join(f"{where} ({arch})" for where, arch in unsupported)
        raise ConfigError(f"Modelhub: active models of Enerzyme architectures that nnpflow "
                          f"does not implement: {listed}; supported: {supported} (set "
                          "active: false to keep them in the file)")
    out = {}
    for name, (where, entry) in models.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping with architecture, layers, loss, ...")
        entry = dict(entry)
        arch = entry.get("architecture")
        entry.setdefault("active", True)
        entry.setdefault("suffix", None)
        if not isinstance(entry["active"], bool):
            raise ConfigError(f"{where}.active: expected true or false, got {entry['active']!r}")
        if entry["suffix"] == "":
            entry["suffix"] = None  # blank: no suffix
        if not entry["active"] and arch not in ARCHITECTURES:
            out[name] = entry  # kept as written: nothing of it is used
            continue
        if arch not in ARCHITECTURES:
            supported = ", ".join(sorted(ARCHITECTURES))
            raise ConfigError(f"{where}.architecture: unknown architecture {arch!r}"
                              f"{suggest(arch, list(ARCHITECTURES) + list(NOT_IMPLEMENTED))}; "
                              f"supported: {supported}")
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
        if "Metric" in entry:  # this model's metrics, instead of the top-level ones
            entry["Metric"] = parse_metric_table(entry["Metric"], f"{where}.Metric") or None
        path = entry.get("pretrain_path")
        if path in ("", None):
            entry.pop("pretrain_path", None)
        else:
            if not isinstance(path, (str, os.PathLike)):
                raise ConfigError(f"{where}.pretrain_path: expected a path to a saved model "
                                  f"or its folder, got {path!r}")
            if not ARCHITECTURES[arch].fine_tuning:
                raise ConfigError(f"{where}.pretrain_path: starting from a saved model is "
                                  f"implemented for layer-stack architectures "
                                  f"({', '.join(sorted(CORES))}), not {arch}")
            p = Path(os.path.expanduser(os.fspath(path)))
            entry["pretrain_path"] = str(p if p.is_absolute() else (Path(base_dir) / p).resolve())
        out[name] = ARCHITECTURES[arch].resolve_entry(entry, where)
    return out


def trainer_for(entry: Mapping[str, Any]) -> Callable:
    """The ``train(job)`` function of a resolved entry's architecture."""
    return ARCHITECTURES[entry["architecture"]].trainer()


def checker_for(entry: Mapping[str, Any]) -> Callable:
    """The ``check(job, with_data)`` function of a resolved entry's architecture."""
    return ARCHITECTURES[entry["architecture"]].checker()
