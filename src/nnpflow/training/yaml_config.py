"""``train.yaml`` (Enerzyme's train.yaml): load, validate, fill defaults.

Sections and keys are Enerzyme's.  Every key is checked: an unknown key is a
:class:`~nnpflow.errors.ConfigError` that names its full path (``Trainer.Splitter.ratio:
unknown key (did you mean 'ratios'?)``); defaults are filled in so the resolved
configuration (written to ``config.yaml`` in the output directory) states every
setting that was used.

The whole grammar, every key with its default, unit and meaning, and how each
of Enerzyme's keys is treated, is docs/train-yaml.md.  In short:

``Datahub``
    ``data_path``, ``data_format`` (required), ``features``/``targets`` (standard
    name -> key in the file; null: the standard name, and for ``N``/``Q`` absent
    from the file: inferred from ``Za`` / 0), ``compression`` (alias
    ``compressed``), ``preload``, ``transforms`` (``atomic_energy``,
    ``negative_gradient``, ``total_energy_normalization``: false only), and
    ``neighbor_list``/``max_memory`` (accepted without effect).
``Modelhub``
    Named models, flat or under ``internal_FFs``/``external_FFs``; see
    :mod:`nnpflow.training.modelhub`.
``Trainer``
    ``Splitter`` and the settings translated into
    :class:`~nnpflow.training.settings.TrainingSettings` (:data:`TRAINER_DEFAULTS`),
    Enerzyme's ``use_ema``, ``ema_use_num_updates``, ``inference_batch_size``,
    ``max_norm`` (alias of ``max_grad_norm``), the optimiser (``optimizer``
    Adam/AdamW, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``, flat or in an
    ``Optimizer`` mapping with ``name``), ``resume`` (0/1/2, see
    :func:`nnpflow.training.session.start_plan`) and keys accepted without
    effect (:data:`TRAINER_NO_EFFECT`, logged once at INFO by ``nnpflow train``).
``Metrics`` / ``Metric``
    A metric table in either form (:func:`~nnpflow.training.losses.parse_metric_table`)
    for the validation score and the test metrics; default: each model's loss.
``Provenance``
    Written by nnpflow into ``config.yaml``; accepted and dropped on input.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..config_checks import check_finite
from ..errors import ConfigError
from ..models.fields import FEATURE_NAMES, TARGET_NAMES
from .losses import parse_metric_table
from .schedules import SCHEDULE_PARAMS, SCHEDULES
from .settings import (DEFAULTS, SURFACE_DEFAULTS, TrainingSettings, boolean, integer, number,
                       suggest)

DATA_FORMATS = ("pickle", "npz", "extxyz", "xsf", "hdf5")
#: top-level sections; ``Metric`` is Enerzyme's spelling of ``Metrics`` (resolved into it)
SECTIONS = ("Datahub", "Modelhub", "Trainer", "Metrics", "Provenance")
INPUT_SECTIONS = SECTIONS[:3] + ("Metric",) + SECTIONS[3:]
#: resolved-configuration key listing the keys accepted without effect (never dumped)
NO_EFFECT = "no_effect"

DATAHUB_DEFAULTS: dict[str, Any] = {
    "data_path": None, "data_format": None, "features": {}, "targets": {},
    "compression": False, "preload": True, "neighbor_list": None, "max_memory": None,
    "transforms": {"atomic_energy": None, "negative_gradient": False,
                   "total_energy_normalization": False},
}
SPLITTER_DEFAULTS: dict[str, Any] = {
    "method": "random", "parts": ["training", "validation", "test"], "ratios": [0.8, 0.1, 0.1],
    "seed": None, "save": True, "preload": True,
}
#: Enerzyme's optimiser names -> nnpflow's (:mod:`nnpflow.training.optimizers`)
OPTIMIZER_NAMES = {"Adam": "adam", "AdamW": "adamw"}
#: Enerzyme's optimiser keys (flat in ``Trainer``, or in ``Trainer.Optimizer`` with
#: ``name``) and nnpflow's defaults for them: Adam without AMSGrad, eps 1e-8 (torch's,
#: and what the tutorial's runs used); Enerzyme's own code defaults to
#: ``amsgrad: true``, ``eps: 1e-6``, which a file may set (docs/train-yaml.md)
OPTIMIZER_KEYS = {"optimizer": "Adam", "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.0, "amsgrad": False}
#: the Trainer keys' defaults: the one set of :data:`nnpflow.training.settings.DEFAULTS`,
#: except where Enerzyme's train.yaml documents another (``max_epochs`` 100,
#: ``schedule`` linear, ``warmup_ratio`` 0.01, ``ema_decay`` 0.99, ``patience`` 50:
#: ``SURFACE_DEFAULTS["train.yaml"]``), which are set here explicitly
_D = {**DEFAULTS, **SURFACE_DEFAULTS["train.yaml"]}
TRAINER_DEFAULTS: dict[str, Any] = {
    "Splitter": SPLITTER_DEFAULTS, "batch_size": _D["batch_size"], "cuda": False,
    "dtype": _D["precision"], "schedule": _D["schedule"], "schedule_params": {},
    "learning_rate": _D["learning_rate"], "max_epochs": _D["epochs"],
    "num_workers": _D["num_workers"], "patience": _D["patience"], "seed": _D["seed"],
    "warmup_ratio": _D["warmup_ratio"], "ema_decay": _D["ema_decay"],
    "max_grad_norm": _D["max_grad_norm"],
    # Enerzyme's further Trainer keys (docs/train-yaml.md)
    "use_ema": True, "ema_use_num_updates": _D["ema_warmup"],
    "inference_batch_size": _D["inference_batch_size"], "resume": 0,
    "otf_graph": None, "non_target_features": [], "data_in_memory": None, "Monitor": None,
    **OPTIMIZER_KEYS,
}
#: the Trainer keys the training loops read (a checkpoint's identity): Enerzyme's
#: further keys enter :func:`loop_trainer`'s mapping only where they change training
LOOP_KEYS = ("Splitter", "batch_size", "cuda", "dtype", "schedule", "schedule_params",
             "learning_rate", "max_epochs", "num_workers", "patience", "seed", "warmup_ratio",
             "ema_decay", "max_grad_norm")
#: Enerzyme's spelling of ``max_grad_norm`` (a negative value: no clipping)
TRAINER_ALIASES = {"max_norm": "max_grad_norm"}
#: Trainer keys accepted without effect, and why (logged once at INFO by nnpflow train)
TRAINER_NO_EFFECT = {
    "otf_graph": "nnpflow always makes each batch's pair lists from the positions, on the "
                 "fly, within the cutoffs the model's layers ask for",
    "data_in_memory": "nnpflow keeps small data sets in memory and reads larger ones from "
                      "the processed HDF5 batch by batch, whatever this key says",
    "Monitor": "nnpflow does not print energy-term statistics during validation",
    "non_target_features": "nnpflow train writes no per-frame predictions (nnpflow predict "
                           "does)",
}
DATAHUB_NO_EFFECT = {
    "neighbor_list": "nnpflow stores no neighbour lists; each batch's pair lists are made "
                     "from the positions within the model's cutoffs (all pairs of a molecule "
                     "for long-range layers, as Enerzyme's full list)",
    "max_memory": "nnpflow reads the processed HDF5 batch by batch with bounded memory",
}


_suggest = suggest  # the one implementation (nnpflow.training.settings)


def check_keys(mapping: Mapping, allowed, where: str) -> None:
    """Raise ``ConfigError`` for the first key of ``mapping`` not in ``allowed``."""
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key{_suggest(key, allowed)}; allowed: "
                              f"{', '.join(map(str, allowed))}")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _bool(value: Any, where: str) -> bool:
    return boolean(value, where, wording="yaml")


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    return integer(value, where, minimum, wording="yaml")


def _float(value: Any, where: str, minimum: float | None = None, maximum: float | None = None,
           exclusive_min: bool = False) -> float:
    return number(value, where, minimum=minimum, maximum=maximum, exclusive_min=exclusive_min,
                  wording="yaml")


def _choice(value: Any, choices, where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}"
                          f"{_suggest(value, choices) if isinstance(value, str) else ''}")
    return value


# ------------------------------------------------------------------ sections
def resolve_datahub(raw: Mapping, base_dir: Path) -> dict:
    where = "Datahub"
    raw = dict(raw)
    if "compressed" in raw:
        if "compression" in raw:
            raise ConfigError("Datahub: give either compression or its alias compressed, not both")
        raw["compression"] = raw.pop("compressed")
    check_keys(raw, DATAHUB_DEFAULTS, where)
    out = copy.deepcopy(DATAHUB_DEFAULTS)
    out.update({k: v for k, v in raw.items() if k != "transforms"})
    if not out["data_path"] or not isinstance(out["data_path"], (str, os.PathLike)):
        raise ConfigError(f"{where}.data_path: required (the data set file), "
                          f"got {out['data_path']!r}")
    path = Path(os.path.expanduser(os.fspath(out["data_path"])))
    out["data_path"] = str(path if path.is_absolute() else (base_dir / path).resolve())
    if out["data_format"] is None:
        raise ConfigError(f"{where}.data_format: required; one of {', '.join(DATA_FORMATS)}")
    _choice(out["data_format"], DATA_FORMATS, f"{where}.data_format")
    for section, allowed in (("features", FEATURE_NAMES), ("targets", TARGET_NAMES)):
        mapping = _mapping(out[section], f"{where}.{section}")
        check_keys(mapping, allowed, f"{where}.{section}")
        for name, key in mapping.items():
            if key is not None and not isinstance(key, (str, int)):
                raise ConfigError(f"{where}.{section}.{name}: expected a key of the data file, "
                                  f"got {key!r}")
            if out["data_format"] not in ("pickle", "npz") and key not in (None, name):
                raise ConfigError(f"{where}.{section}.{name}: renaming fields applies to pickle "
                                  f"and npz data; {out['data_format']} data carries the standard "
                                  "fields (leave the value empty)")
        # null: the standard name itself; for N and Q kept as null, which also means
        # "inferred from Za" (N) or "0" (Q) where the data file has no such field
        out[section] = {name: (name if key is None and name not in ("N", "Q") else key)
                        for name, key in mapping.items()}
    for key in ("compression", "preload"):
        _bool(out[key], f"{where}.{key}")
    if out["neighbor_list"] == "":
        out["neighbor_list"] = None  # blank: built on the fly
    if out["neighbor_list"] not in (None, "full"):
        raise ConfigError(f"{where}.neighbor_list: {out['neighbor_list']!r} is not 'full' or "
                          "blank (null: built on the fly)")
    if out["max_memory"] is not None:
        out["max_memory"] = _float(out["max_memory"], f"{where}.max_memory", 0.0,
                                   exclusive_min=True)
    transforms = _mapping(raw.get("transforms"), f"{where}.transforms")
    check_keys(transforms, DATAHUB_DEFAULTS["transforms"], f"{where}.transforms")
    out["transforms"] = {**DATAHUB_DEFAULTS["transforms"], **transforms}
    normalize = out["transforms"]["total_energy_normalization"]
    if normalize is None:
        out["transforms"]["total_energy_normalization"] = normalize = False
    _bool(normalize, f"{where}.transforms.total_energy_normalization")
    if normalize:
        raise ConfigError(
            f"{where}.transforms.total_energy_normalization: true is not supported: a model "
            "trained on (E - mean) / std would not predict energies in eV, and nnpflow's "
            "model files always do; subtract reference energies with transforms.atomic_energy "
            "and let an AtomicAffine layer learn per-element shifts and scales instead")
    ae = out["transforms"]["atomic_energy"]
    if ae is not None:
        if not isinstance(ae, (str, os.PathLike)):
            raise ConfigError(f"{where}.transforms.atomic_energy: expected a CSV path, got {ae!r}")
        ae_path = Path(os.path.expanduser(os.fspath(ae)))
        out["transforms"]["atomic_energy"] = str(ae_path if ae_path.is_absolute()
                                                 else (base_dir / ae_path).resolve())
    _bool(out["transforms"]["negative_gradient"], f"{where}.transforms.negative_gradient")
    for name in ("N", "Q"):
        if name in out["features"] and name in out["targets"] and None not in (
                out["features"][name], out["targets"][name]) and \
                out["features"][name] != out["targets"][name]:
            raise ConfigError(f"{where}: {name} is mapped to {out['features'][name]!r} in "
                              f"features and to {out['targets'][name]!r} in targets")
    return out


def resolve_splitter(raw: Mapping, trainer_seed: int) -> dict:
    where = "Trainer.Splitter"
    check_keys(raw, SPLITTER_DEFAULTS, where)
    out = copy.deepcopy(SPLITTER_DEFAULTS)
    out.update(raw)
    _choice(out["method"], ("random",), f"{where}.method")
    parts, ratios = out["parts"], out["ratios"]
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"{where}.parts: expected a list of part names, got {parts!r}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{where}.parts: names must be unique, got {parts}")
    if "training" not in parts:
        raise ConfigError(f"{where}.parts: needs a part named 'training', got {parts}")
    if not isinstance(ratios, list) or len(ratios) != len(parts):
        raise ConfigError(f"{where}.ratios: expected one ratio per part ({len(parts)}), "
                          f"got {ratios!r}")
    for k, r in enumerate(ratios):
        if r is None:
            continue
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r < 0:
            raise ConfigError(f"{where}.ratios[{k}]: expected a fraction (0..1), a count of "
                              f"structures or null (the remainder), got {r!r}")
        if isinstance(r, float) and r > 1:
            raise ConfigError(f"{where}.ratios[{k}]: {r} is neither a fraction (<= 1) nor a "
                              "whole number of structures")
    if sum(r is None for r in ratios) > 1:
        raise ConfigError(f"{where}.ratios: at most one part may take the remainder (null)")
    out["seed"] = trainer_seed if out["seed"] is None else _int(out["seed"], f"{where}.seed")
    _bool(out["save"], f"{where}.save")
    _bool(out["preload"], f"{where}.preload")
    return out


def resolve_trainer(raw: Mapping) -> dict:
    where = "Trainer"
    raw = dict(raw)
    for alias, name in TRAINER_ALIASES.items():
        if alias in raw:
            if name in raw:
                raise ConfigError(f"{where}: give either {name} or its alias {alias}, not both")
            value = raw.pop(alias)
            if value is not None:
                value = _float(value, f"{where}.{alias}")
            raw[name] = None if value is None or value <= 0 else value  # <= 0: no clipping
    _resolve_optimizer(raw, where)
    if raw.get("schedule") == "constant_with_warmup":  # Enerzyme's (transformers') name
        raw["schedule"] = "constant"
        raw.setdefault("warmup_ratio", TRAINER_DEFAULTS["warmup_ratio"])
    check_keys(raw, TRAINER_DEFAULTS, where)
    out = copy.deepcopy(TRAINER_DEFAULTS)
    out.update({k: v for k, v in raw.items() if k != "Splitter"})
    if "warmup_ratio" not in raw and out["schedule"] == "constant":
        out["warmup_ratio"] = 0.0  # a constant rate: no warmup unless one is asked for
    out["seed"] = _int(out["seed"], f"{where}.seed")
    out["Splitter"] = resolve_splitter(_mapping(raw.get("Splitter"), f"{where}.Splitter"),
                                       out["seed"])
    _int(out["batch_size"], f"{where}.batch_size", 1)
    _bool(out["cuda"], f"{where}.cuda")
    _choice(out["dtype"], ("float32", "float64"), f"{where}.dtype")
    _choice(out["schedule"], tuple(SCHEDULES), f"{where}.schedule")
    params = _mapping(out["schedule_params"], f"{where}.schedule_params")
    allowed = SCHEDULE_PARAMS[out["schedule"]]
    for key in params:
        if key not in allowed:
            raise ConfigError(f"{where}.schedule_params.{key}: not a parameter of schedule "
                              f"{out['schedule']!r} (it takes: {', '.join(allowed) or 'none'})")
    out["schedule_params"] = {**allowed, **{k: _float(v, f"{where}.schedule_params.{k}")
                                             for k, v in params.items()}}
    if "patience" in out["schedule_params"]:
        out["schedule_params"]["patience"] = int(out["schedule_params"]["patience"])
    out["learning_rate"] = _float(out["learning_rate"], f"{where}.learning_rate", 0.0,
                                  exclusive_min=True)
    _int(out["max_epochs"], f"{where}.max_epochs", 1)
    _int(out["num_workers"], f"{where}.num_workers", 0)
    if out["patience"] is not None:
        _int(out["patience"], f"{where}.patience", 1)
    out["warmup_ratio"] = _float(out["warmup_ratio"], f"{where}.warmup_ratio", 0.0, 1.0)
    if out["ema_decay"] is not None:
        out["ema_decay"] = _float(out["ema_decay"], f"{where}.ema_decay", 0.0, 1.0)
        if out["ema_decay"] >= 1.0:
            raise ConfigError(f"{where}.ema_decay: must be below 1, got {out['ema_decay']}")
    if out["max_grad_norm"] is not None:
        out["max_grad_norm"] = _float(out["max_grad_norm"], f"{where}.max_grad_norm", 0.0,
                                      exclusive_min=True)
    _bool(out["use_ema"], f"{where}.use_ema")
    _bool(out["ema_use_num_updates"], f"{where}.ema_use_num_updates")
    if out["inference_batch_size"] is not None:
        _int(out["inference_batch_size"], f"{where}.inference_batch_size", 1)
    if out["resume"] is None or out["resume"] is False:
        out["resume"] = 0
    elif out["resume"] is True:
        out["resume"] = 1
    if out["resume"] not in (0, 1, 2) or isinstance(out["resume"], float):
        raise ConfigError(f"{where}.resume: expected 0 (start from scratch, or fine-tune "
                          "pretrain_path), 1 (start from saved weights) or 2 (continue the "
                          f"saved training), got {out['resume']!r}")
    for key in ("otf_graph", "data_in_memory"):
        if out[key] is not None:
            _bool(out[key], f"{where}.{key}")
    features = out["non_target_features"]
    if features is None:
        out["non_target_features"] = features = []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ConfigError(f"{where}.non_target_features: expected a list of field names, "
                          f"got {features!r}")
    if out["Monitor"] is not None and not isinstance(out["Monitor"], Mapping):
        raise ConfigError(f"{where}.Monitor: expected a mapping of energy terms to "
                          f"statistics, got {out['Monitor']!r}")
    TrainingSettings.from_trainer(loop_trainer(out))  # the one settings object's checks
    return out


def _resolve_optimizer(raw: dict, where: str) -> None:
    """Check Enerzyme's optimiser keys of ``raw`` in place: a ``Trainer.Optimizer``
    mapping (``name`` and the keys) becomes the flat keys; the name must be one
    nnpflow has (:data:`OPTIMIZER_NAMES`)."""
    block = raw.pop("Optimizer", None)
    if block is not None:
        block = dict(_mapping(block, f"{where}.Optimizer"))
        if "name" in block:
            block["optimizer"] = block.pop("name")
        both = sorted(set(block) & set(raw))
        if both:
            raise ConfigError(f"{where}: give {', '.join(both)} either in Trainer or in "
                              "Trainer.Optimizer, not both")
        check_keys(block, [*OPTIMIZER_KEYS, "learning_rate"], f"{where}.Optimizer")
        raw.update(block)
    name = raw.get("optimizer", OPTIMIZER_KEYS["optimizer"])
    if name not in OPTIMIZER_NAMES:
        raise ConfigError(f"{where}.optimizer: {name!r} is not supported; nnpflow trains with "
                          f"{' or '.join(OPTIMIZER_NAMES)}{_suggest(name, OPTIMIZER_NAMES)}")
    betas = raw.get("betas", OPTIMIZER_KEYS["betas"])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError(f"{where}.betas: expected two numbers [beta1, beta2], got {betas!r}")
    raw["betas"] = [number(b, f"{where}.betas[{i}]", minimum=0.0, maximum=1.0,
                           exclusive_max=True) for i, b in enumerate(betas)]
    if "eps" in raw:
        raw["eps"] = number(raw["eps"], f"{where}.eps", minimum=0.0, exclusive_min=True)
    if "weight_decay" in raw:
        raw["weight_decay"] = number(raw["weight_decay"], f"{where}.weight_decay", minimum=0.0)
    if "amsgrad" in raw:
        _bool(raw["amsgrad"], f"{where}.amsgrad")


def _optimizer(trainer: Mapping) -> tuple[str, dict]:
    """``(optimizer, optimizer_params)`` of a resolved ``Trainer`` section in
    :class:`~nnpflow.training.settings.TrainingSettings`' terms: only the
    parameters that differ from torch's defaults of that optimiser."""
    from .optimizers import OPTIMIZER_PARAMS
    name = OPTIMIZER_NAMES[trainer.get("optimizer", OPTIMIZER_KEYS["optimizer"])]
    beta1, beta2 = trainer.get("betas", OPTIMIZER_KEYS["betas"])
    given = {"beta1": beta1, "beta2": beta2,
             "epsilon": trainer.get("eps", OPTIMIZER_KEYS["eps"]),
             "weight_decay": trainer.get("weight_decay", OPTIMIZER_KEYS["weight_decay"]),
             "amsgrad": trainer.get("amsgrad", OPTIMIZER_KEYS["amsgrad"])}
    return name, {k: v for k, v in given.items() if v != OPTIMIZER_PARAMS[name][k]}


def loop_trainer(trainer: Mapping) -> dict:
    """The mapping the training loops read from a resolved ``Trainer`` section.

    It holds :data:`LOOP_KEYS`; Enerzyme's further keys enter it only where they
    change training (``use_ema: false`` makes ``ema_decay`` null;
    ``ema_use_num_updates: false`` and ``inference_batch_size`` are added when
    given), so that a checkpoint's identity stays what it was for the keys it had."""
    out = {k: copy.deepcopy(trainer[k]) for k in LOOP_KEYS}
    if not trainer.get("use_ema", True):
        out["ema_decay"] = None
    if out["ema_decay"] is not None and trainer.get("ema_use_num_updates", True) is False:
        out["ema_use_num_updates"] = False
    if trainer.get("inference_batch_size") is not None:
        out["inference_batch_size"] = int(trainer["inference_batch_size"])
    name, params = _optimizer(trainer)
    if name != DEFAULTS["optimizer"] or params:
        out.update(optimizer=name, optimizer_params=params)
    return out


def no_effect_notes(config: Mapping) -> list[str]:
    """``key: why`` for every key of a resolved configuration that nnpflow accepts
    without effect (each given with a value other than its null default)."""
    notes = []
    for key, why in DATAHUB_NO_EFFECT.items():
        if config["Datahub"].get(key) is not None:
            notes.append(f"Datahub.{key} ({config['Datahub'][key]!r}): {why}")
    for key, why in TRAINER_NO_EFFECT.items():
        value = config["Trainer"].get(key)
        if value not in (None, [], {}):
            notes.append(f"Trainer.{key} ({value!r}): {why}")
    return notes


def resolve_config(raw: Mapping, base_dir: str | os.PathLike = ".") -> dict:
    """Validate a parsed train.yaml and fill defaults (see the module docstring).

    Relative paths are resolved against ``base_dir`` (the working directory).
    Returns ``{"Datahub", "Modelhub", "Trainer", "Metrics"}``; Modelhub entries are
    resolved by :func:`nnpflow.training.modelhub.resolve_modelhub`.
    """
    from .modelhub import resolve_modelhub

    if not isinstance(raw, Mapping):
        raise ConfigError(f"train.yaml: expected a mapping of sections ({', '.join(SECTIONS[:4])})")
    check_keys(raw, INPUT_SECTIONS, "train.yaml")
    check_finite({k: v for k, v in raw.items() if k != "Provenance"})
    for section in ("Datahub", "Modelhub"):
        if section not in raw:
            raise ConfigError(f"train.yaml: missing section {section}")
    if "Metric" in raw and "Metrics" in raw:
        raise ConfigError("train.yaml: give either Metrics or Enerzyme's spelling Metric, "
                          "not both")
    metric_key = "Metric" if "Metric" in raw else "Metrics"
    base = Path(base_dir).resolve()
    config = {
        "Datahub": resolve_datahub(_mapping(raw["Datahub"], "Datahub"), base),
        "Modelhub": resolve_modelhub(_mapping(raw["Modelhub"], "Modelhub"), base),
        "Trainer": resolve_trainer(_mapping(raw.get("Trainer"), "Trainer")),
        "Metrics": parse_metric_table(raw.get(metric_key), metric_key) or None,
    }
    config[NO_EFFECT] = no_effect_notes(config)
    return config


def parse_yaml(text: str, path: str | os.PathLike) -> Any:
    """The YAML document ``text`` read from ``path``; invalid YAML is a
    ``ConfigError`` naming the file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{path}{line}: not valid YAML ({problem})") from None


def load_config(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> dict:
    """Read and resolve a train.yaml; YAML errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    raw = parse_yaml(text, path)
    if raw is None:
        raise ConfigError(f"{path}: empty configuration")
    try:
        return resolve_config(raw, Path.cwd() if base_dir is None else base_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def dump_config(config: Mapping) -> str:
    """YAML text of a resolved configuration (sections in spec order)."""
    ordered = {k: config[k] for k in SECTIONS if k in config and config[k] is not None}
    return yaml.safe_dump(_plain(ordered), sort_keys=False, default_flow_style=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
