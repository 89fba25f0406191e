"""Stage ``train``: one model (one committee member) from the database and the split.

Inputs: the merged database (``database``, with persisted descriptor, features
and derivatives) and ``split`` (``split.json``; refused when it was made for
other structures than the database's, :func:`nnpflow.splitting.load_split`).
Outputs, written atomically: the model file ``model`` and the training history
``history`` (CSV, one row per epoch).

``model_cfg`` is the workflow's model block: ``architecture`` ``ann`` (with
``hidden``: ``[[nodes, activation], ...]``, the same for every species of the
database's descriptor) or ``schnet`` (with ``build_params`` and ``layers``,
trained by the layer-stack trainer of :mod:`nnpflow.training.message_passing`);
its ``committee`` (members; ``member`` must be below it) and ``active`` keys
belong to the workflow, and a ``training`` block there overrides keys of
``training_cfg``.  ``training_cfg`` holds the workflow's ``training`` keys
(defaults in :data:`TRAINING_DEFAULTS`): ``epochs``, ``batch_size``,
``learning_rate`` (Adam), ``schedule`` (per optimiser step; ``plateau`` follows
the validation loss), ``force_weight``, ``force_fraction``, ``force_sampling``,
``patience`` (0 = no early stopping), ``ema_decay`` (0 = off), ``device``
(auto/cpu/cuda), ``devices`` (processes of data-parallel training) and ``seed``
(member ``m`` trains with ``seed + m`` on the shared split).  The validation
part monitors training (early stopping, best weights); the test part is left
to the evaluate stage.

Checkpoints live in ``checkpoint`` (default: ``checkpoints/`` next to the
model file).  A rerun after SIGTERM (SLURM preemption) resumes from
``checkpoint_last.pt`` when it was written with the same settings and data;
a checkpoint of other settings, or (with ``code_version``) of other code, is set
aside (logged) and training starts over.
With ``devices > 1`` the stage starts that many processes
(:func:`nnpflow.training.distributed.launch`: gloo on CPU, NCCL on CUDA); the
result equals one process with the same global batch.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, ResumeMismatchError
from ..safe_write import atomic_path, write_text
from ..training.settings import DEFAULTS, TrainingSettings, reject_unknown

log = logging.getLogger(__name__)

#: the workflow's ``training`` keys and their defaults (config.schema.yaml): the one
#: set of :data:`nnpflow.training.settings.DEFAULTS`
TRAINING_DEFAULTS: dict[str, Any] = {
    key: DEFAULTS[key] for key in (
        "epochs", "batch_size", "learning_rate", "schedule", "force_weight", "force_fraction",
        "force_sampling", "patience", "ema_decay", "device", "devices", "seed")}
#: numbered checkpoints (checkpoint_<epoch>.pt) kept besides checkpoint_last.pt
KEEP_CHECKPOINTS = 3
MODEL_KEYS = {"ann": ("architecture", "active", "committee", "training", "hidden"),
              "schnet": ("architecture", "active", "committee", "training", "build_params",
                         "layers")}


def resolve_training(training_cfg: Mapping | None, model_cfg: Mapping) -> dict:
    """The training settings: defaults, ``training_cfg``, then the model's own
    ``training`` overrides; unknown keys and values out of range raise
    ``ConfigError``.  The trainers read it as
    :meth:`~nnpflow.training.settings.TrainingSettings.from_workflow`."""
    out = dict(TRAINING_DEFAULTS)
    blocks = (("training", training_cfg), ("models.training", model_cfg.get("training")))
    for where, block in blocks:
        if block is None:
            continue
        if not isinstance(block, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {block!r}")
        reject_unknown(block, TRAINING_DEFAULTS, where)
        out.update(block)
    if out["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"training.device: expected auto, cpu or cuda, got {out['device']!r}")
    for key in ("epochs", "batch_size", "devices"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"training.{key}: expected an integer >= 1, got {v!r}")
    for key in ("patience", "seed"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"training.{key}: expected an integer >= 0, got {v!r}")
    TrainingSettings.from_workflow(out)  # every other field's type and range
    return out


def _check_model(model_name: str, model_cfg: Mapping, member: int) -> str:
    arch = model_cfg.get("architecture")
    if arch not in MODEL_KEYS:
        raise ConfigError(f"models.{model_name}.architecture: expected ann or schnet, "
                          f"got {arch!r}")
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS[arch]))
    if unknown:
        raise ConfigError(f"models.{model_name}: key(s) {', '.join(unknown)} do not apply to "
                          f"architecture {arch}; allowed: {', '.join(MODEL_KEYS[arch])}")
    committee = model_cfg.get("committee")  # the workflow leaves it out (see run)
    if isinstance(member, bool) or not isinstance(member, int) or member < 0:
        raise ConfigError(f"member must be an integer >= 0, got {member!r}")
    if committee is not None and member >= committee:
        raise ConfigError(f"models.{model_name}: member {member} but the committee has "
                          f"{committee} member(s)")
    return arch


def ann_training_config(training: Mapping, member: int, checkpoint_dir: Path | None):
    """The :class:`~nnpflow.training.config.TorchTrainingConfig` of a workflow
    ``training`` block for committee member ``member``."""
    from ..training.config import TorchTrainingConfig
    return TorchTrainingConfig.from_settings(
        TrainingSettings.from_workflow(training, member), save_best=True,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        max_checkpoints=None if checkpoint_dir is None else KEEP_CHECKPOINTS)


def _log_files() -> list[str]:
    return [h.baseFilename for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler)]


def _after_appends_to_log_files() -> None:
    """Move this process's log files to their end: rank 0 appended to them, and a
    handler writing at its old position would overwrite those lines."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            handler.flush()
            handler.stream.seek(0, 2)


def _clear_checkpoints(folder: Path, reason: str) -> None:
    old = sorted(folder.glob("checkpoint_*.pt")) + sorted(
        p for p in (folder / "schnet").glob("*") if p.is_file())
    if old:
        log.warning("%s; starting over (removing %d old checkpoint file(s) in %s)", reason,
                    len(old), folder)
        for p in old:
            p.unlink(missing_ok=True)


def _log_to(log_files: list[str] | None) -> None:
    """Rank 0 of a process group appends its log to the caller's log files."""
    from ..training import distributed
    if distributed.rank_and_world()[0] != 0 or not log_files:
        return
    root = logging.getLogger()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        for path in log_files:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
            root.addHandler(handler)
        root.setLevel(logging.INFO)


# ----------------------------------------------------------------------- ANN
def _train_ann(database: str, split: str, model: str, history: str, model_name: str,
               model_cfg: Mapping, training: Mapping, member: int, checkpoint_dir: str,
               log_files: list[str] | None = None) -> dict:
    """Train one ANN (in this process, or as one rank of a process group)."""
    import torch
    from torch.utils.data import Subset

    from ..database import DatabaseReader
    from ..datasets import HDF5StructureDataset
    from ..splitting import load_split
    from ..training import distributed
    from ..training.ann_trainer import LAST_CHECKPOINT
    from ..training.potential import TorchANNPotential

    rank, world = distributed.rank_and_world()
    _log_to(log_files)
    cfg = ann_training_config(training, member, Path(checkpoint_dir))
    with DatabaseReader(database, cache_size=0) as reader:
        descriptor = reader.descriptor(dtype=cfg.dtype)
    dataset = HDF5StructureDataset(descriptor, database, mode="load", dtype=cfg.dtype)
    parts = load_split(split, dataset.structures_fingerprint, len(dataset))
    fit = parts.atomic_energies_fit
    if fit:
        # fitted on the training part by the split stage: used as if they had been given
        dataset.set_atomic_energies(fit["atomic_energies"])
        if rank == 0:
            log.info("%s member %d: atomic reference energies fitted on the training part "
                     "(%s): %s", model_name, member, split, ", ".join(
                         f"{k} {v:.6g} eV" for k, v in fit["atomic_energies"].items()))
    train = Subset(dataset, parts.train.tolist())
    validation = Subset(dataset, parts.validation.tolist()) if len(parts.validation) else None
    hidden = [tuple(layer) for layer in model_cfg["hidden"]]
    arch = {s: hidden for s in descriptor.species}
    if rank == 0:
        log.info("%s member %d: ANN %s per species on %d features; %d training, %d validation "
                 "structures; %s", model_name, member,
                 " -> ".join(f"{n} {a}" for n, a in hidden), descriptor.n_features, len(train),
                 0 if validation is None else len(validation),
                 f"{world} processes" if world > 1 else "1 process")
    folder = Path(checkpoint_dir)
    last = folder / LAST_CHECKPOINT
    pot = TorchANNPotential(arch, descriptor)
    resume = last if last.is_file() else None
    try:
        pot.train(train_dataset=train, test_dataset=validation, config=cfg, resume_from=resume)
    except ResumeMismatchError as exc:
        distributed.barrier()
        if rank == 0:
            _clear_checkpoints(folder, f"{last} belongs to other settings or data ({exc})")
        distributed.barrier()
        pot = TorchANNPotential(arch, descriptor)
        pot.train(train_dataset=train, test_dataset=validation, config=cfg)
    dataset.close()
    info = dict(pot.training_info)
    if fit:
        pot.atomic_energies_fit = dict(fit)
    if rank == 0:
        pot.save(model)
        write_text(history, pot.history_csv())
        last_row = pot.history[-1] if pot.history else {}
        log.info("%s member %d: %d epochs (best %s, val loss %s); wrote %s and %s", model_name,
                 member, info.get("epochs", 0), info.get("best_epoch"),
                 info.get("best_val_loss"), model, history)
        return {"architecture": "ann", "member": member, "epochs": info.get("epochs"),
                "best_epoch": info.get("best_epoch"), "best_val_loss": info.get("best_val_loss"),
                "val_energy_rmse": last_row.get("val_energy_rmse"),
                "val_force_rmse": last_row.get("val_force_rmse"),
                "n_train": len(train), "n_validation": 0 if validation is None else len(validation),
                "processes": world, "torch_threads": torch.get_num_threads()}
    return {}


# -------------------------------------------------------------------- SchNet
def _train_schnet(database: str, split: str, model: str, history: str, model_name: str,
                  model_cfg: Mapping, training: Mapping, member: int, checkpoint_dir: str,
                  log_files: list[str] | None = None) -> dict:
    """Train a layer-stack (SchNet) model with the trainer of ``nnpflow train`` (in this
    process, or as one rank of a process group: rank 0 writes the files)."""
    import numpy as np

    from ..database import DatabaseReader
    from ..models.registry import read_model_file
    from ..runtime import resolve_device
    from ..splitting import load_split
    from ..training.datahub import ProcessedData
    from ..training.interrupt import GracefulInterrupt
    from ..training.losses import parse_terms
    from ..training.message_passing import ModelJob, train_model
    from ..training.modelhub import resolve_layer_stack_entry

    from ..training import distributed

    _log_to(log_files)
    with DatabaseReader(database) as reader:
        parts = load_split(split, reader.structures_fingerprint, len(reader))
        n_structures = len(reader)
        fingerprint = reader.structures_fingerprint
        all_forces = bool(np.all(reader.has_forces))
        all_energies = bool(np.all(np.isfinite(reader.energies)))
    if parts.atomic_energies_fit:
        log.info("%s: the split holds fitted atomic reference energies; SchNet models learn "
                 "their own per-element energy shift (AtomicAffine), so they are not applied",
                 model_name)
    alpha = float(training["force_weight"])
    if alpha == 0 and (training["force_fraction"] != 1.0
                       or training["force_sampling"] != "random"):
        raise ConfigError(f"models.{model_name}: force_fraction/force_sampling select the "
                          "structures whose forces enter the loss; with force_weight=0 no "
                          "forces do (set force_weight > 0 or leave them at their defaults)")
    if not all_energies:
        raise ConfigError(f"models.{model_name}: the SchNet trainer needs an energy for every "
                          "structure")
    if alpha > 0 and not all_forces:
        raise ConfigError(f"models.{model_name}: force_weight > 0 but not every structure has "
                          "forces (the SchNet trainer needs them all); set force_weight: 0")
    terms = {"E": 1.0 - alpha} if alpha < 1 else {}
    if alpha > 0:
        terms["Fa"] = alpha
    where = f"models.{model_name}"
    entry = resolve_layer_stack_entry(
        {"architecture": "SchNet", "build_params": dict(model_cfg.get("build_params") or {}),
         "layers": list(model_cfg["layers"]), "loss": parse_terms({"rmse": terms}, where),
         "active": True, "suffix": None}, where)
    device = resolve_device(training["device"])
    trainer = TrainingSettings.from_workflow(training, member).layer_stack_trainer(
        cuda=device.type == "cuda")
    split_key = hashlib.sha256(Path(split).read_bytes()).hexdigest()
    data = ProcessedData(directory=Path(database).parent, hash=fingerprint,
                         n_structures=n_structures,
                         targets=["E"] + (["Fa"] if all_forces else []),
                         features=["N", "Ra", "Za"], reused=True,
                         database_file=Path(database))
    out_dir = Path(checkpoint_dir) / "schnet"
    resume = (out_dir / "model_last.pt").is_file()

    def job(resume_now: bool, interrupt) -> ModelJob:
        return ModelJob(name=model_name, entry=entry, trainer=trainer, metrics={}, data=data,
                        split={"training": parts.train, "validation": parts.validation,
                               "test": np.zeros(0, dtype=np.int64)},
                        split_key=split_key, out_dir=out_dir, resume=resume_now,
                        force=not resume_now, logger=log, interrupt=interrupt,
                        command="snakemake (rerun the train job)")

    with GracefulInterrupt() as stop:
        try:
            train_model(job(resume, stop))
        except ResumeMismatchError as exc:
            log.warning("%s belongs to other settings or data (%s); starting over",
                        out_dir / "model_last.pt", exc)
            train_model(job(False, stop))
    if distributed.rank_and_world()[0] != 0:
        return {}
    best = read_model_file(out_dir / "model_best.pt", "layer_stack")[1]
    with atomic_path(model) as tmp:
        shutil.copyfile(out_dir / "model_best.pt", tmp)
    write_text(history, (out_dir / "history.csv").read_text(encoding="utf-8"))
    return {"architecture": "schnet", "member": member,
            "best_epoch": best["metadata"].get("epoch"),
            "best_val_loss": best["metadata"].get("val_score"),
            "n_train": int(len(parts.train)), "n_validation": int(len(parts.validation))}


CODE_VERSION_FILE = "code_version.txt"


def _check_code_version(folder: Path, code_version: str) -> None:
    """Set aside checkpoints written by other code (a rerun after a code change must
    train again, not resume a finished run); then record ``code_version``."""
    marker = folder / CODE_VERSION_FILE
    if marker.is_file():
        old = marker.read_text(encoding="utf-8").strip()
        if old != code_version:
            _clear_checkpoints(folder, f"the checkpoints in {folder} were written by other "
                                       f"code (version {old}, now {code_version})")
    write_text(marker, code_version + "\n")


# ------------------------------------------------------------------- the stage
def run(database: str, split: str, model: str, history: str, model_name: str,
        model_cfg: Mapping, training_cfg: Mapping | None, member: int = 0, threads: int = 1,
        checkpoint: str | None = None, code_version: str | None = None) -> dict:
    """Train model ``model_name`` (committee member ``member``); write ``model``
    and ``history``.  Returns a summary (epochs, best epoch, validation loss, sizes).

    ``model_cfg`` without ``committee`` skips the member-range check (the workflow
    leaves ``committee`` out so that a larger committee does not retrain the
    existing members).  ``code_version`` (the workflow's code fingerprint): when
    the checkpoint folder was written by another version, its checkpoints are set
    aside instead of resumed, so a rerun after a code change trains again."""
    from ..runtime import configure_threads, resolve_device
    arch = _check_model(model_name, model_cfg, member)
    training = resolve_training(training_cfg, model_cfg)
    folder = Path(checkpoint) if checkpoint is not None else Path(model).parent / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if code_version is not None:
        _check_code_version(folder, str(code_version))
    if arch == "ann" and (not isinstance(model_cfg.get("hidden"), list)
                          or not model_cfg["hidden"]):
        raise ConfigError(f"models.{model_name}.hidden: expected [[nodes, activation], ...], "
                          f"got {model_cfg.get('hidden')!r}")
    args = (database, split, model, history, model_name, dict(model_cfg), dict(training),
            member, str(folder))
    devices = int(training["devices"])
    if devices == 1:
        configure_threads(threads)
        return _train_schnet(*args) if arch == "schnet" else _train_ann(*args)
    from ..training.distributed import launch
    device = resolve_device(training["device"])
    per_process = max(1, int(threads or 1) // devices)
    log.info("%s member %d: data-parallel training in %d %s processes (%d thread(s) each)",
             model_name, member, devices, device.type, per_process)
    try:
        launch(f"nnpflow.stages.train:_train_{arch}", list(args) + [_log_files()], devices,
               device_type=device.type, threads=per_process,
               rendezvous_dir=folder.resolve())  # absolute: file:// of a relative path hangs
    finally:
        _after_appends_to_log_files()
    if arch == "schnet":
        from ..models.registry import read_model_file
        meta = read_model_file(model, "layer_stack")[1]["metadata"]
        return {"architecture": "schnet", "member": member, "best_epoch": meta.get("epoch"),
                "best_val_loss": meta.get("val_score"), "processes": devices}
    from ..training.potential import TorchANNPotential
    info = TorchANNPotential.from_file(model).training_info
    return {"architecture": "ann", "member": member, "epochs": info.get("epochs"),
            "best_epoch": info.get("best_epoch"), "best_val_loss": info.get("best_val_loss"),
            "n_train": info.get("n_train"), "n_validation": info.get("n_validation"),
            "processes": devices}
