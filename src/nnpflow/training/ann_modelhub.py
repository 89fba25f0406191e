"""The ``ANN`` architecture of ``nnpflow train -c train.yaml`` (Modelhub glue).

A Modelhub entry ``architecture: ANN`` trains a
:class:`~nnpflow.training.potential.TorchANNPotential` on the processed data::

    FF03:
      architecture: ANN
      hidden: [[16, tanh], [16, tanh]]      # every species; or {H: [[8, tanh]], O: ...}
      descriptor: {rad_order: 10, rad_cutoff: 6.0, ang_order: 3, ang_cutoff: 4.0,
                   min_cutoff: 0.55, species: [H, C, O]}   # all optional
      loss: {rmse: {E: 1, Fa: 10}}

``descriptor.species`` defaults to the species of the data (by atomic number).
The loss must be ``rmse`` over ``E`` and/or ``Fa``; the ANN loss
``(1 - a) RMSE(E/N) + a RMSE(F)`` uses ``a = w_Fa / (w_E + w_Fa)``.  The Trainer
keys map onto :class:`~nnpflow.training.config.TorchTrainingConfig`
(``max_epochs`` -> ``iterations``, ``learning_rate``/``batch_size`` -> ``Adam``,
``schedule``, ``schedule_params``, ``warmup_ratio``, ``ema_decay`` (null = off),
``patience``, ``max_grad_norm``, ``seed``, ``cuda``, ``dtype``, ``num_workers``).
Outputs in the model's folder: ``model_best.pt`` (the model file, best
validation weights), ``history.csv``, ``test_metrics.json`` and the
checkpoints (``checkpoint_last.pt``, ...), from which ``--resume`` continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import ConfigError
from .settings import TrainingSettings, reject_unknown, suggest

ANN_KEYS = ("hidden", "descriptor")
DESCRIPTOR_DEFAULTS = {"rad_order": 10, "rad_cutoff": 6.0, "ang_order": 3, "ang_cutoff": 4.0,
                       "min_cutoff": 0.55, "species": None}
OUTPUTS = ("model_best.pt", "history.csv", "test_metrics.json", "checkpoint_last.pt")


def resolve_ann_entry(entry: dict, where: str) -> dict:
    """Validate an ``architecture: ANN`` entry and fill defaults."""
    from .modelhub import COMMON_KEYS
    for key in entry:
        if key not in COMMON_KEYS + ANN_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key for architecture ANN"
                              f"{suggest(key, COMMON_KEYS + ANN_KEYS)}; allowed: "
                              f"{', '.join(COMMON_KEYS + ANN_KEYS)}")
    hidden = entry.get("hidden")
    if hidden is None:
        raise ConfigError(f"{where}.hidden: required (e.g. [[16, tanh], [16, tanh]])")
    if not isinstance(hidden, (list, Mapping)):
        raise ConfigError(f"{where}.hidden: expected [[nodes, activation], ...] or a mapping "
                          f"species -> layers, got {hidden!r}")
    desc = dict(DESCRIPTOR_DEFAULTS)
    given = entry.get("descriptor") or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}.descriptor: expected a mapping, got {given!r}")
    reject_unknown(given, DESCRIPTOR_DEFAULTS, f"{where}.descriptor")
    desc.update(given)
    loss = entry["loss"]
    if set(loss) != {"rmse"} or not set(loss["rmse"]) <= {"E", "Fa"}:
        raise ConfigError(f"{where}.loss: the ANN loss is rmse over E and/or Fa "
                          f"(e.g. rmse: {{E: 1, Fa: 10}}), got {loss}")
    weights = loss["rmse"]
    if weights.get("E", 0.0) + weights.get("Fa", 0.0) <= 0:
        raise ConfigError(f"{where}.loss: the weights of E and Fa must not both be zero")
    out = dict(entry)
    out["descriptor"] = desc
    _architecture(out, desc["species"] or ["H"], where, check_only=desc["species"] is None)
    return out


def _architecture(entry: Mapping, species: list[str], where: str, check_only: bool = False):
    from ..models.ann import parse_architecture
    hidden = entry["hidden"]
    if isinstance(hidden, Mapping):
        if check_only:
            for s, layers in hidden.items():
                parse_architecture({s: layers}, [s], f"{where}.hidden")
            return None
        return parse_architecture(hidden, species, f"{where}.hidden")
    layers = [tuple(layer) if isinstance(layer, (list, tuple)) else layer for layer in hidden]
    return parse_architecture({s: layers for s in species}, species, f"{where}.hidden")


#: identity entries ``--resume`` may change: a larger ``max_epochs`` continues training
RESUME_MAY_CHANGE = ("config.iterations",)


def _check_outputs(job, paths: dict) -> None:
    """Refusals that need no data: results present without --resume/--force,
    --resume without a checkpoint.  Reads, never writes."""
    if job.resume:
        if not paths["checkpoint_last.pt"].is_file():
            raise ConfigError(f"--resume: {paths['checkpoint_last.pt']} does not exist, so there "
                              "is nothing to resume; run without --resume")
        return
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not job.force:
        raise ConfigError(f"{job.out_dir} already holds results ({', '.join(existing)}); nnpflow "
                          "never continues training silently: pass --resume to continue, "
                          "or --force to start over")


def _setup(job):
    """Descriptor, networks, datasets and training settings of an ANN job."""
    import numpy as np
    import torch
    from torch.utils.data import Subset

    from ..datasets import StructureDataset
    from ..descriptors import ChebyshevDescriptor
    from ..structure import atomic_number
    from .config import TorchTrainingConfig
    from .potential import TorchANNPotential

    entry, trainer = job.entry, job.trainer
    where = f"Modelhub.{job.name}"
    out = Path(job.out_dir)
    structures = job.data.structures()
    desc_cfg = dict(entry["descriptor"])
    species = desc_cfg.pop("species") or sorted({x for s in structures for x in s.species},
                                                key=atomic_number)
    dtype = trainer["dtype"]
    descriptor = ChebyshevDescriptor(species, dtype=getattr(torch, dtype), **desc_cfg)
    arch = _architecture(entry, species, where)
    weights = entry["loss"]["rmse"]
    alpha = weights.get("Fa", 0.0) / (weights.get("E", 0.0) + weights.get("Fa", 0.0))
    dataset = StructureDataset(structures, descriptor, dtype=dtype)
    train = Subset(dataset, np.asarray(job.split["training"]).tolist())
    val_idx = np.asarray(job.split.get("validation", []), dtype=np.int64)
    validation = Subset(dataset, val_idx.tolist()) if len(val_idx) else None
    config = TorchTrainingConfig.from_settings(
        TrainingSettings.from_trainer(trainer, force_weight=alpha), cache_features=True,
        cache_force_triplets=True, checkpoint_dir=str(out), show_progress=job.show_progress)
    pot = TorchANNPotential(arch, descriptor)
    return pot, config, dataset, train, validation, alpha


def check_ann_job(job, with_data: bool = True) -> None:
    """Refuse ``job`` before anything is written: :func:`_check_outputs`, and with
    ``--resume`` and ``with_data`` (the structures are needed) the resume guard
    (settings and data of ``checkpoint_last.pt``; only ``max_epochs`` may
    change).  Reads, never writes."""
    from .ann_trainer import training_identity
    from .checkpoint import check_resume, load_checkpoint
    if job.trainer.get("ema_use_num_updates") is False:
        raise ConfigError(f"Trainer.ema_use_num_updates: false is implemented for layer-stack "
                          f"architectures; the ANN ({job.name}) always ramps its EMA decay")
    if not with_data:
        if job.trainer.get("inference_batch_size") is not None:
            job.logger.info("%s: Trainer.inference_batch_size has no effect on the ANN (it "
                            "validates with its training batches)", job.name)
        if job.metrics:
            job.logger.info("%s: the Metrics/Metric table has no effect on the ANN's training "
                            "(its validation score is its loss); test_metrics.json reports "
                            "energy and force errors", job.name)
    paths = {name: Path(job.out_dir) / name for name in OUTPUTS}
    _check_outputs(job, paths)
    if job.resume and with_data:
        pot, config, _, train, validation, _ = _setup(job)
        state = load_checkpoint(paths["checkpoint_last.pt"])
        check_resume(state["identity"], training_identity(pot, config, train, validation),
                     force=job.force, ignore=RESUME_MAY_CHANGE,
                     source=str(paths["checkpoint_last.pt"]))


def train_ann_job(job) -> dict:
    """Train one ANN Modelhub entry (a :class:`~nnpflow.training.message_passing.ModelJob`);
    returns its test metrics (``{}`` without a test part)."""
    import numpy as np
    from torch.utils.data import Subset

    from ..safe_write import write_json

    log = job.logger
    out = Path(job.out_dir)
    paths = {name: out / name for name in OUTPUTS}
    _check_outputs(job, paths)
    if not job.resume:
        for p in list(paths.values()) + sorted(out.glob("checkpoint_*.pt")):
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pot, config, dataset, train, validation, alpha = _setup(job)
    descriptor = pot.descriptor
    species = list(descriptor.species)
    log.info("%s: ANN on %s (%d features), loss weight of forces %.3g", job.name, species,
             descriptor.n_features, alpha)
    pot.train(train_dataset=train, test_dataset=validation, config=config,
              resume_from=paths["checkpoint_last.pt"] if job.resume else None,
              force_resume=job.force, resume_may_change=RESUME_MAY_CHANGE, on_step=job.on_step,
              interrupt=job.interrupt)
    pot.save(paths["model_best.pt"])
    pot.export_history(csv_path=paths["history.csv"])
    test_idx = np.asarray(job.split.get("test", []), dtype=np.int64)
    if not len(test_idx):
        log.info("%s: no test structures; no test metrics", job.name)
        return {}
    report = {"model": out.name, "epochs": len(pot.history),
              "best_epoch": pot.training_info.get("best_epoch"),
              **pot.evaluate(Subset(dataset, test_idx.tolist()))}
    write_json(paths["test_metrics.json"], report)
    log.info("%s: test (%d structures): energy RMSE %.4g eV/atom, force RMSE %s eV/Å", job.name,
             report["n_structures"], report["energy_rmse_per_atom"] or float("nan"),
             report["force_rmse"])
    return report
