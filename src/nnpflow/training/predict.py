"""``nnpflow predict -c predict.yaml -m MODEL_DIR [-o OUT]``: evaluate the models of a
``nnpflow train`` run (Enerzyme's ``enerzyme predict``).

``MODEL_DIR`` is the output directory of ``nnpflow train``: its ``config.yaml``
(the resolved configuration with the ``Provenance`` section), one folder per
model (``<name>-<architecture>[-<suffix>]/model_best.pt``) and the processed
data (``processed_dataset_<hash>/dataset.h5`` with the saved splits).

predict.yaml (every section optional; an empty file is allowed)::

    Datahub:            # the data to evaluate; without it: the run's test part
      data_path: new.pkl
      data_format: pickle
      features: {Ra: coord, Za: atom_type}
      targets: {E: energy, Fa: grad}
    Metric:             # terms of metric.csv (Enerzyme's form, or Metrics: {rmse: {E: 1}})
      E: {rmse: 1}
      Fa: {rmse: 1}
    Trainer:
      inference_batch_size: 64      # structures per prediction batch
      dtype: float64                # default: the run's Trainer.dtype
      cuda: false                   # default false

Without a ``Datahub`` the structures of the run's ``test`` part are evaluated
(its saved split, or the same split drawn again from the run's Splitter settings
when it was not saved).  With one, every frame of that data is evaluated: its
keys replace the run's Datahub keys they name, except ``transforms`` and
``neighbor_list``, which stay the run's (Enerzyme's rule: energies are referenced
as in training).  The one exception is ``transforms.negative_gradient``, a
property of the data file: predict.yaml's when given, else the run's for data of
the run's ``data_format``, else false; likewise data of another format does not
inherit the run's ``features``/``targets`` mapping.  The data is processed into
``OUT/processed_dataset_<hash>/`` (reused with ``preload``).  Relative paths are
relative to the working directory.

Every active model of the run is evaluated with its ``model_best.pt`` through
the model registry (:func:`nnpflow.models.registry.load_model`, the prediction
path of ``nnpflow evaluate`` and the ASE calculator).  Outputs in ``OUT``
(default ``MODEL_DIR``), each written atomically:

* ``metric.csv`` -- one row per model: ``model``, ``data``, ``n_frames``,
  ``score`` (the weighted sum of the terms), one column ``<kind>_<field>`` per
  metric term (e.g. ``rmse_E``), and ``energy_rmse``, ``energy_mae``,
  ``energy_rmse_per_atom``, ``energy_mae_per_atom``, ``force_rmse``,
  ``force_mae`` where the model predicts energies (forces) and the data has them;
* ``<model folder>-prediction.csv`` -- one row per frame: ``frame`` (index in the
  evaluated data set), ``name``, ``n_atoms``, the reference and predicted values
  of the per-frame fields (``E``, ``predict_E``, ``Q``, ``predict_Q``, ``M2_x``,
  ``predict_M2_x``, ...; empty where the data has no reference) and
  ``Fa_rmse`` (the frame's force RMSE);
* ``<model folder>-prediction.npz`` -- the same per-frame values plus the
  per-atom ones: ``frame`` (S,), ``n_atoms`` (S,), ``atom_offsets`` (S+1,) (atoms
  of frame s are ``atom_offsets[s]:atom_offsets[s+1]``), ``Za`` (A,), and for each
  field the model predicts ``predict_<field>`` and, where the data has it,
  ``<field>`` (NaN where a frame lacks it): ``E`` (S,), ``Fa`` (A, 3), ``Qa`` (A,),
  ``Q`` (S,), ``M2`` (S, 3).

Values are in the units of the processed data (energies after the run's
``atomic_energy`` reference is subtracted, as in training); ``Q`` predicted is
the sum of the uncorrected atomic charges (what a ``Q`` loss term compares).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConfigError, InputError, SchemaError
from ..safe_write import atomic_path, write_text
from .losses import MetricAccumulator, metric, parse_metric_table
from .yaml_config import check_keys, load_config, parse_yaml, resolve_datahub

LOGGER_NAME = "nnpflow.predict"

PREDICT_SECTIONS = ("Datahub", "Metric", "Metrics", "Trainer")
PREDICT_TRAINER_KEYS = ("inference_batch_size", "batch_size", "dtype", "cuda",
                        "non_target_features")
#: Datahub keys of predict.yaml that do not simply replace the run's (see new_data)
KEPT_FROM_RUN = ("transforms", "neighbor_list")
#: per-frame fields and their number of components
FRAME_FIELDS = {"E": 1, "Q": 1, "M2": 3}
ATOM_FIELDS = {"Fa": 3, "Qa": 1}
ENERGY_FORCE_KEYS = ("energy_rmse", "energy_mae", "energy_rmse_per_atom", "energy_mae_per_atom",
                     "force_rmse", "force_mae")


@dataclass
class EvaluationData:
    """The structures to evaluate: a database, the indices in it, and a label."""

    database: Path
    indices: np.ndarray
    label: str
    targets: list[str]


# ------------------------------------------------------------------ configuration
def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such {what}", source=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", source=str(path)) from None
    return parse_yaml(text, path)


def read_predict_config(path: str | os.PathLike) -> dict:
    """Validate predict.yaml: ``{"Datahub": dict | None, "Metric": terms | None,
    "Trainer": dict}``."""
    path = Path(path)
    raw = _read_yaml(path, "predict configuration")
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections "
                          f"({', '.join(PREDICT_SECTIONS)})")
    try:
        check_keys(raw, PREDICT_SECTIONS, "predict.yaml")
        if "Metric" in raw and "Metrics" in raw:
            raise ConfigError("predict.yaml: give either Metric or Metrics, not both")
        key = "Metric" if "Metric" in raw else "Metrics"
        terms = parse_metric_table(raw.get(key), key) or None
        datahub = raw.get("Datahub") or None
        if datahub is not None and not isinstance(datahub, Mapping):
            raise ConfigError(f"Datahub: expected a mapping, got {datahub!r}")
        trainer = raw.get("Trainer") or {}
        if not isinstance(trainer, Mapping):
            raise ConfigError(f"Trainer: expected a mapping, got {trainer!r}")
        check_keys(trainer, PREDICT_TRAINER_KEYS, "Trainer")
        extra = trainer.get("non_target_features")
        if extra:  # Enerzyme's committee variances (E_var, Qa_var, ...)
            raise ConfigError(f"Trainer.non_target_features: {extra!r}: the models nnpflow "
                              "trains from a train.yaml are single models, without the "
                              "committee variances (E_var, ...) this saves in Enerzyme; "
                              "remove the key or leave it empty")
        if "inference_batch_size" in trainer and "batch_size" in trainer:
            raise ConfigError("Trainer: give either inference_batch_size or batch_size")
        batch = trainer.get("inference_batch_size", trainer.get("batch_size"))
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise ConfigError(f"Trainer.inference_batch_size: expected a positive integer, "
                              f"got {batch!r}")
        if trainer.get("dtype", "float32") not in ("float32", "float64"):
            raise ConfigError(f"Trainer.dtype: {trainer['dtype']!r} is not one of "
                              "float32, float64")
        if not isinstance(trainer.get("cuda", False), bool):
            raise ConfigError(f"Trainer.cuda: expected true or false, got {trainer['cuda']!r}")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return {"Datahub": dict(datahub) if datahub else None, "Metric": terms,
            "Trainer": {"batch_size": batch, "dtype": trainer.get("dtype"),
                        "cuda": bool(trainer.get("cuda", False))}}


def read_run(model_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(resolved configuration, provenance)`` of a ``nnpflow train`` output directory."""

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("no such model directory (the output directory of nnpflow train)",
                         source=str(model_dir))
    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise InputError("not an output directory of nnpflow train: it has no config.yaml",
                         source=str(model_dir))
    raw = _read_yaml(config_path, "configuration")
    provenance = raw.get("Provenance") if isinstance(raw, Mapping) else None
    config = load_config(config_path, base_dir=model_dir)
    return config, dict(provenance or {})


# ------------------------------------------------------------------ data
def run_test_data(model_dir: Path, config: Mapping, provenance: Mapping,
                  log: logging.Logger) -> EvaluationData:
    """The ``test`` part of the run's split (its saved file, else drawn again)."""
    from .datahub import DATASET_FILE, INFO_FILE
    from .splitter import random_split, split_key

    splitter = config["Trainer"]["Splitter"]
    if "test" not in splitter["parts"]:
        raise ConfigError(f"{model_dir}: the training run's split has no 'test' part (parts "
                          f"{splitter['parts']}); give a Datahub in predict.yaml to evaluate "
                          "other data")
    folder = provenance.get("processed_dataset")
    if not folder:
        from .datahub import datahub_hash
        folder = f"processed_dataset_{datahub_hash(config['Datahub'])[:16]}"
    directory = model_dir / folder
    database = directory / DATASET_FILE
    info_path = directory / INFO_FILE
    if not database.is_file() or not info_path.is_file():
        raise InputError(f"the run's processed data is missing ({folder}/{DATASET_FILE}); "
                         "rerun nnpflow train, or give a Datahub in predict.yaml",
                         source=str(model_dir))
    import json
    info = json.loads(info_path.read_text(encoding="utf-8"))
    key = provenance.get("split_key") or split_key(info["hash"], splitter)
    if key != split_key(info["hash"], splitter):
        raise SchemaError(f"{model_dir}/config.yaml: its Provenance.split_key does not match "
                          "its Splitter settings and data; the file was edited")
    path = directory / f"split_{key[:16]}.json"
    n = int(info["n_structures"])
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") != key:
            raise SchemaError(f"{path}: saved split does not match its key; delete the file")
        indices = np.asarray(saved["indices"]["test"], dtype=np.int64)
        how = f"saved split {path.name}"
    else:  # Splitter.save was false: the split is a pure function of its settings
        indices = random_split(n, list(splitter["parts"]), list(splitter["ratios"]),
                               int(splitter["seed"]))["test"]
        how = f"split drawn again with seed {splitter['seed']}"
    if not len(indices):
        raise ConfigError(f"{model_dir}: the training run's test part is empty; give a "
                          "Datahub in predict.yaml to evaluate other data")
    if indices.min() < 0 or indices.max() >= n:
        raise SchemaError(f"{path}: test indices beyond the {n} structures")
    log.info("data: test part of %s (%d of %d structures, %s)", model_dir, len(indices), n, how)
    return EvaluationData(database, indices, f"test part of {model_dir.name}",
                          list(info.get("targets", [])))


def new_data(datahub: Mapping, config: Mapping, out: Path, log: logging.Logger,
             show_progress: bool) -> EvaluationData:
    """Every frame of predict.yaml's Datahub (merged over the run's)."""
    from .datahub import prepare_data

    run = config["Datahub"]
    merged = dict(run)
    for key, value in datahub.items():
        if key in KEPT_FROM_RUN:
            continue
        merged[key] = value
    same_format = merged["data_format"] == run["data_format"]
    if not same_format:  # the run's field mapping and sign convention describe its file
        for key in ("features", "targets"):
            if key not in datahub:
                merged[key] = {}
    # the transforms that define the models' energies stay the run's; the sign of the
    # forces is a property of the data file: predict.yaml's, else the run's for data of
    # the run's format, else false
    given = datahub.get("transforms") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"predict.yaml: Datahub.transforms: expected a mapping, got {given!r}")
    transforms = dict(run.get("transforms") or {})
    transforms["negative_gradient"] = given.get(
        "negative_gradient", transforms.get("negative_gradient", False) if same_format else False)
    merged["transforms"] = transforms
    for key in given:
        if key != "negative_gradient":
            log.info("Datahub.transforms.%s: the training run's is used (it defines the "
                     "energies the models were trained on)", key)
    if "neighbor_list" in datahub:
        log.info("Datahub.neighbor_list: the training run's is used")
    if "compressed" in datahub:
        merged.pop("compression", None)
    try:
        resolved = resolve_datahub(merged, Path.cwd())
    except ConfigError as exc:
        raise ConfigError(f"predict.yaml: {exc}") from None
    data = prepare_data(resolved, out, log, show_progress)
    return EvaluationData(data.database, np.arange(data.n_structures, dtype=np.int64),
                          resolved["data_path"], list(data.targets))


# ------------------------------------------------------------------ evaluation
def _stack(arrays, width: int) -> np.ndarray:
    if not len(arrays):
        return np.zeros((0, width) if width > 1 else (0,))
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, width) if width > 1
                           else np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def _references(structures, n_atoms: np.ndarray) -> dict[str, np.ndarray]:
    """Reference arrays with NaN where a structure has no value."""
    def per_frame(attr, width):
        rows = []
        for s in structures:
            v = getattr(s, attr)
            rows.append(np.full(width, np.nan) if v is None
                        else np.asarray(v, dtype=np.float64).reshape(width))
        return np.stack(rows) if width > 1 else np.concatenate(rows)

    def per_atom(attr, width, n):
        rows = []
        for s, k in zip(structures, n):
            v = getattr(s, attr)
            shape = (int(k), width) if width > 1 else (int(k),)
            rows.append(np.full(shape, np.nan) if v is None
                        else np.asarray(v, dtype=np.float64).reshape(shape))
        return _stack(rows, width)

    return {"E": per_frame("energy", 1), "Q": per_frame("total_charge", 1),
            "M2": per_frame("dipole", 3), "Fa": per_atom("forces", 3, n_atoms),
            "Qa": per_atom("charges", 1, n_atoms)}


def predictions_of(result) -> dict[str, np.ndarray]:
    """Prediction arrays of a :class:`PredictionResult` by field name."""
    out = {"E": np.asarray(result.energies, dtype=np.float64)}
    if result.forces is not None:
        out["Fa"] = _stack(result.forces, 3)
    extra = result.extra or {}
    if "Qa" in extra:
        out["Qa"] = _stack(extra["Qa"], 1)
    if "Q" in extra:
        out["Q"] = np.asarray(extra["Q"], dtype=np.float64).reshape(-1)
    if "M2" in extra:
        out["M2"] = np.asarray(extra["M2"], dtype=np.float64).reshape(-1, 3)
    return out


def evaluate_terms(pred: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                   terms: Mapping[str, Mapping[str, float]], where: str) -> dict:
    """``{"terms": {"<kind>_<field>": value}, "score": weighted sum}`` over all
    elements (the definitions of training's metrics)."""
    values = {}
    for kind, weights in terms.items():
        for field in weights:
            if field not in pred:
                raise ConfigError(f"{where}.{kind}.{field}: the model does not predict {field}")
            if np.isnan(ref[field]).any():
                raise ConfigError(f"{where}.{kind}.{field}: the data has no reference {field} "
                                  "for every frame")
            values[f"{kind}_{field}"] = float(metric(kind, torch.from_numpy(pred[field]),
                                                     torch.from_numpy(ref[field])))
    return {"terms": values, "score": MetricAccumulator.score(values, terms)}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def frame_table(frames: np.ndarray, names, n_atoms, pred, ref) -> str:
    """CSV text of the per-frame values (see the module docstring)."""
    columns: list[tuple[str, np.ndarray]] = []
    for field, width in FRAME_FIELDS.items():
        if field not in pred:
            continue
        axes = ("",) if width == 1 else ("_x", "_y", "_z")
        for k, axis in enumerate(axes):
            r = ref[field] if width == 1 else ref[field][:, k]
            p = pred[field] if width == 1 else pred[field][:, k]
            columns.append((f"{field}{axis}", r))
            columns.append((f"predict_{field}{axis}", p))
    if "Fa" in pred:
        offsets = np.concatenate([[0], np.cumsum(n_atoms)])
        diff = pred["Fa"] - ref["Fa"]
        columns.append(("Fa_rmse", np.array([
            math.sqrt(float(np.mean(diff[a:b] ** 2))) if b > a else float("nan")
            for a, b in zip(offsets[:-1], offsets[1:])])))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["frame", "name", "n_atoms", *[c for c, _ in columns]])
    for s in range(len(frames)):
        writer.writerow([int(frames[s]), names[s], int(n_atoms[s]),
                         *[_cell(float(v[s])) for _, v in columns]])
    return buf.getvalue()


def write_npz(path: Path, frames, n_atoms, numbers, pred, ref) -> None:
    arrays = {"frame": np.asarray(frames, dtype=np.int64),
              "n_atoms": np.asarray(n_atoms, dtype=np.int64),
              "atom_offsets": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
              "Za": np.asarray(numbers, dtype=np.int64)}
    for field, values in pred.items():
        arrays[f"predict_{field}"] = values
        if not np.isnan(ref[field]).all():
            arrays[field] = ref[field]
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def metric_csv(rows: list[dict]) -> str:
    columns: list[str] = ["model", "data", "n_frames", "score"]
    for row in rows:
        for key in row["terms"]:
            if key not in columns:
                columns.append(key)
    columns += [k for k in ENERGY_FORCE_KEYS if any(row.get(k) is not None for row in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        flat = {**row, **row["terms"]}
        writer.writerow([_cell(flat.get(c)) for c in columns])
    return buf.getvalue()


# ------------------------------------------------------------------ the command
def run_predict(config_path: str | os.PathLike, model_dir: str | os.PathLike,
                out_dir: str | os.PathLike | None = None, *,
                show_progress: bool = False) -> list[dict]:
    """Evaluate every active model of the run in ``model_dir``; returns the rows of
    ``metric.csv`` (dicts with ``model``, ``n_frames``, ``score``, ``terms``, ...)."""
    from ..database import DatabaseReader
    from ..evaluation.metrics import energy_force_metrics
    from ..models.model_file import dtype_from_name
    from ..models.registry import load_model
    from ..runtime import resolve_device
    from .modelhub import model_dir_name

    log = logging.getLogger(LOGGER_NAME)
    settings = read_predict_config(config_path)
    model_dir = Path(model_dir)
    config, provenance = read_run(model_dir)
    out = Path(out_dir) if out_dir is not None else model_dir
    active = [(name, entry) for name, entry in config["Modelhub"].items() if entry["active"]]
    if not active:
        raise ConfigError(f"{model_dir}/config.yaml: no active model in Modelhub")
    models = []
    for name, entry in active:
        path = model_dir / model_dir_name(name, entry) / "model_best.pt"
        if not path.is_file():
            raise InputError(f"model {name} has no model_best.pt (was its training finished?)",
                             source=str(path))
        models.append((name, entry, path))
    if settings["Trainer"]["cuda"] and not torch.cuda.is_available():
        raise ConfigError(f"{config_path}: Trainer.cuda is true but torch reports no CUDA "
                          "device")
    device = resolve_device("cuda" if settings["Trainer"]["cuda"] else "cpu")
    dtype = dtype_from_name(settings["Trainer"]["dtype"] or config["Trainer"]["dtype"])
    batch_size = int(settings["Trainer"]["batch_size"] or config["Trainer"]["batch_size"])

    # every model loaded and its metric terms checked before any data is processed
    loaded = []
    for name, entry, path in models:
        model = load_model(path, device=device, dtype=dtype)
        outputs = list(getattr(model.module, "outputs", None)
                       or (["E", "Fa"] if model.has_forces else ["E"]))
        # predict.yaml's Metric, else the run's: the model's own Metric, the top-level
        # one, or the model's loss terms (what training's test metrics used)
        where = "Metric" if settings["Metric"] else f"{model_dir}/config.yaml metrics of {name}"
        terms = settings["Metric"] or parse_metric_table(
            entry.get("Metric") or config.get("Metrics") or config.get("Metric")
            or entry["loss"], where)
        for kind, weights in terms.items():
            for field in weights:
                if field not in outputs:
                    raise ConfigError(f"{where}.{kind}.{field}: model {name} does not predict "
                                      f"{field} (it predicts {', '.join(outputs)})")
        loaded.append((name, path.parent.name, model, terms, where))

    if settings["Datahub"] is None:
        data = run_test_data(model_dir, config, provenance, log)
    else:
        data = new_data(settings["Datahub"], config, out, log, show_progress)
    with DatabaseReader(data.database, cache_size=0) as reader:
        structures = reader.structures([int(i) for i in data.indices])
    n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
    numbers = np.concatenate([s.atomic_numbers for s in structures])
    ref = _references(structures, n_atoms)
    for name, _, _, terms, where in loaded:
        for kind, weights in terms.items():
            for field in weights:
                missing = int(np.isnan(ref[field]).any(axis=-1).sum() if ref[field].ndim > 1
                              else np.isnan(ref[field]).sum())
                if missing:
                    raise ConfigError(f"{where}.{kind}.{field}: the data ({data.label}) has no "
                                      f"reference {field} for {missing} "
                                      f"{'atoms' if field in ATOM_FIELDS else 'frames'}")

    rows, tables = [], []
    for name, folder, model, terms, where in loaded:
        log.info("%s: predicting %d structures with %s (%s)", name, len(structures),
                 model.path, model.kind)
        result = model.predict(structures, eval_forces=model.has_forces, batch_size=batch_size,
                               show_progress=show_progress)
        pred = predictions_of(result)
        row = {"model": folder, "data": data.label, "n_frames": len(structures),
               **evaluate_terms(pred, ref, terms, where)}
        if "E" in pred and not np.isnan(ref["E"]).any():
            with_forces = "Fa" in pred and not np.isnan(ref["Fa"]).any()
            ef = energy_force_metrics(pred["E"], ref["E"], n_atoms,
                                      pred["Fa"] if with_forces else None,
                                      ref["Fa"] if with_forces else None)
            row.update({k: ef[k] for k in ENERGY_FORCE_KEYS})
        rows.append(row)
        tables.append((folder, result.names, pred))
        log.info("%s: score %.6g; %s", name, row["score"],
                 ", ".join(f"{k} {v:.6g}" for k, v in row["terms"].items()))
    for folder, names, pred in tables:
        write_text(out / f"{folder}-prediction.csv",
                   frame_table(data.indices, names, n_atoms, pred, ref))
        write_npz(out / f"{folder}-prediction.npz", data.indices, n_atoms, numbers, pred, ref)
    write_text(out / "metric.csv", metric_csv(rows))
    log.info("wrote %s and per-frame predictions to %s", out / "metric.csv", out)
    return rows
