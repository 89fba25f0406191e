"""Layer-stack models (SchNet) of a train.yaml and of the workflow: their task of the
one training loop (:class:`LayerStackTask` for :class:`~nnpflow.training.loop.TrainingLoop`)
and :func:`train_model`, one Modelhub entry's whole training.

One :class:`ModelJob` trains one Modelhub entry into its folder
``<DIR>/<name>-<architecture>[-<suffix>]/``:

* ``model_last.pt`` -- the full training state after every epoch (and on
  SIGTERM): a checkpoint (:mod:`nnpflow.training.checkpoint`) whose ``model``
  entry is a layer-stack model file payload (live weights);
* ``model_best.pt`` -- a model file (:mod:`nnpflow.models.model_file`) with the
  averaged (EMA) weights of the epoch with the best validation score (without a
  validation part: of the last epoch);
* ``history.csv`` -- one row per epoch: learning rate, training loss, validation
  loss and score, each validation metric term, early-stopping state, time;
* ``test_metrics.json`` -- the Metrics terms and score on the test part and
  :func:`nnpflow.evaluation.metrics.energy_force_metrics` (per-atom energy and
  force errors, per species), computed with the best weights.

The Trainer's optimiser (Adam unless ``optimizer`` says otherwise,
:mod:`nnpflow.training.optimizers`) minimises the weighted loss of the entry (with
``force_fraction`` < 1, the forces of each epoch's force structures only); the
learning rate follows the Trainer's schedule per optimiser step; the EMA weights are used for validation,
test and ``model_best.pt``.  Batch order is drawn per epoch from
``default_rng([seed, epoch])`` so a resumed run (``--resume``, also after
SIGTERM mid-epoch) continues with exactly the batches, weights, optimiser, EMA,
schedule and RNG state the uninterrupted run would have had.  A folder that
already holds results is never trained on silently: ``resume`` continues it
(refused with the changed settings named when the configuration or data
changed, unless ``force``), ``force`` alone starts over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..evaluation.metrics import energy_force_metrics
from ..history import history_csv
from ..models.batch import PackedGraphs, packed_for_model
from ..models.lazy_graphs import lazy_for_model
from ..models.model_file import dtype_from_name, model_payload, save_layer_stack
from ..models.registry import read_model_file
from ..models.stack import LayerStack
from ..runtime import keep_freed_memory, resolve_device
from ..safe_write import write_json, write_text

from .checkpoint import check_resume, load_checkpoint, seed_everything
from . import distributed
from .datahub import ProcessedData
from .early_stopping import EarlyStopping
from .force_sampling import force_subset
from .interrupt import GracefulInterrupt, TrainingInterrupted
from .loop import CheckpointFiles, TrainingLoop, chunks
from .losses import MetricAccumulator, WeightedLoss, metric, term_fields
from .modelhub import build_model
from .settings import TrainingSettings

#: Trainer keys that may change when resuming (they do not change results)
RUNTIME_KEYS = ("num_workers",)
OUTPUT_FILES = ("model_last.pt", "model_best.pt", "history.csv", "test_metrics.json")


@dataclass
class ModelJob:
    """Everything needed to train one Modelhub entry.

    ``entry`` is the resolved Modelhub entry, ``trainer`` the resolved Trainer
    section, ``metrics`` the term table for the validation score and test
    metrics, ``split`` the part name -> structure indices of ``data``,
    ``out_dir`` the model's folder.  ``on_step(epoch, step)`` (0-based) is called
    after every optimiser step.
    """

    name: str
    entry: dict
    trainer: dict
    metrics: dict
    data: ProcessedData
    split: dict
    split_key: str
    out_dir: Path
    resume: bool = False
    force: bool = False
    show_progress: bool = False
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("nnpflow.train"))
    interrupt: GracefulInterrupt | None = None
    on_step: Callable[[int, int], None] | None = None
    command: str = "nnpflow train"
    #: identity entries a resume may change (``nnpflow train --resume``:
    #: :data:`RESUME_MAY_CHANGE`; the workflow's stage: none, it starts over instead)
    resume_may_change: tuple = ()

    def identity(self) -> dict:
        """What the resume guard compares."""
        return {f"Modelhub.{self.name}": {k: self.entry[k] for k in
                                          ("architecture", "build_params", "layers", "loss")},
                "Trainer": {k: v for k, v in self.trainer.items() if k not in RUNTIME_KEYS},
                "Metrics": self.metrics,
                "processed data hash (data file, mapping, transforms)": self.data.hash,
                "split key (data, parts, ratios, seed)": self.split_key}


# ------------------------------------------------------------------ batches
class _BatchList(torch.utils.data.Dataset):
    """Prepared batches for DataLoader workers (``num_workers > 0``)."""

    def __init__(self, packed: PackedGraphs, batches: list[np.ndarray], dtype: torch.dtype):
        self.packed, self.batches, self.dtype = packed, batches, dtype

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        return self.packed.batch(self.batches[k], dtype=self.dtype)


def iter_batches(packed: PackedGraphs, batches: list[np.ndarray], dtype: torch.dtype,
                 device: torch.device, num_workers: int = 0) -> Iterator[tuple[dict, dict]]:
    """``(inputs, targets)`` for each index array, built in ``num_workers`` processes."""
    if num_workers == 0:
        for b in batches:
            yield packed.batch(b, dtype=dtype, device=device)
        return
    loader = torch.utils.data.DataLoader(_BatchList(packed, batches, dtype), batch_size=None,
                                         shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    for inputs, targets in loader:
        if device.type != "cpu":
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        yield inputs, targets


# --------------------------------------------------------------- evaluation
def validation_metrics(model: LayerStack, packed: PackedGraphs, indices: np.ndarray, fields,
                       batch_size: int, dtype, device, num_workers: int = 0) -> dict[str, float]:
    """``{"<kind>_<field>": value}`` over ``indices`` (exact whole-set values)."""
    acc = MetricAccumulator(fields)
    model.eval()
    for inputs, targets in iter_batches(packed, chunks(indices, batch_size), dtype, device,
                                        num_workers):
        out = model(inputs)
        acc.add({f: out[f] for f in fields}, targets)
    return acc.compute()


def predict_set(model: LayerStack, packed: PackedGraphs, indices: np.ndarray, fields,
                batch_size: int, dtype, device) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Predictions and targets of ``fields`` over ``indices``, concatenated (CPU float64),
    with atoms per structure and atomic numbers."""
    model.eval()
    preds = {f: [] for f in fields}
    refs = {f: [] for f in fields}
    n_atoms, numbers = [], []
    for inputs, targets in iter_batches(packed, chunks(indices, batch_size), dtype, device):
        out = model(inputs)
        for f in fields:
            preds[f].append(out[f].detach().cpu().double())
            refs[f].append(targets[f].cpu().double())
        n_atoms.append(inputs["N"].cpu())
        numbers.append(inputs["Za"].cpu())
    cat = {f: torch.cat(v) for f, v in preds.items()}
    ref = {f: torch.cat(v) for f, v in refs.items()}
    return cat, ref, torch.cat(n_atoms).numpy(), torch.cat(numbers).numpy()


def held_out_report(model, packed, indices, terms, batch_size, dtype, device) -> dict:
    """Metrics terms, score and energy/force metrics on ``indices``."""
    fields = sorted(set(term_fields(terms)) | ({"E", "Fa"} & set(packed.targets)
                                              & set(model.outputs)))
    pred, ref, n_atoms, numbers = predict_set(model, packed, indices, fields, batch_size, dtype,
                                              device)
    values = {f"{kind}_{f}": float(metric(kind, pred[f], ref[f]))
              for kind, weights in terms.items() for f in weights}
    report = {"n_structures": int(len(indices)), "score": MetricAccumulator.score(values, terms),
              "terms": values}
    if "E" in pred:
        report.update(energy_force_metrics(
            pred["E"], ref["E"], n_atoms,
            pred.get("Fa"), ref.get("Fa"), species=numbers if "Fa" in pred else None))
    return report


# -------------------------------------------------------------------- files
def _write_history(path: Path, history: list[dict]) -> None:
    if history:
        write_text(path, history_csv(history))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.6g}"


# --------------------------------------------------------------------- train
def _check_targets(job: ModelJob, model: LayerStack, terms: dict, where: str) -> None:
    for kind, weights in terms.items():
        for f in weights:
            if f not in job.data.targets:
                present = ", ".join(job.data.targets) or "none"
                raise ConfigError(f"{where}.{kind}.{f}: the data set has no {f} target "
                                  f"(Datahub targets present: {present})")
            if f not in model.outputs:
                raise ConfigError(f"{where}.{kind}.{f}: model {job.name} does not predict {f} "
                                  f"(it predicts {', '.join(model.outputs)})")


#: identity entries ``nnpflow train --resume`` may change: a larger ``max_epochs``
#: continues training (the learning-rate schedule is stretched to the new length)
RESUME_MAY_CHANGE = ("Trainer.max_epochs",)


def check_job(job: ModelJob, with_data: bool = True) -> None:
    """Refuse ``job`` before anything is written (``nnpflow train`` checks every active
    model first, so that a refused run changes nothing in DIR but its log): results
    present without ``--resume``/``--force``, ``--resume`` without ``model_last.pt``,
    or ``--resume`` with changed settings or data (:func:`check_resume`; the
    entries of ``job.resume_may_change`` may differ).  Reads, never writes; needs
    the data's hash only (``with_data`` is for the interface of
    :mod:`~nnpflow.training.modelhub`)."""
    paths = {name: job.out_dir / name for name in OUTPUT_FILES}
    if job.resume:
        if not paths["model_last.pt"].exists():
            raise ConfigError(f"--resume: {paths['model_last.pt']} does not exist, so there is "
                              "nothing to resume; run without --resume")
        state = load_checkpoint(paths["model_last.pt"])
        check_resume(state["identity"], job.identity(), force=job.force,
                     ignore=job.resume_may_change, source=str(paths["model_last.pt"]))
        return
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not job.force:
        raise ConfigError(
            f"{job.out_dir} already holds results ({', '.join(existing)}); nnpflow never "
            "continues training silently: pass --resume to continue from model_last.pt, "
            "or --force to start over (the old files are replaced)")


def _prepare_output(job: ModelJob) -> dict[str, Path]:
    paths = {name: job.out_dir / name for name in OUTPUT_FILES}
    check_job(job)
    if job.resume:
        return paths
    if distributed.rank_and_world()[0] != 0:  # rank 0 clears the folder
        distributed.barrier()
        return paths
    existing = [p.name for p in paths.values() if p.exists()]
    if existing:
        for name in existing:
            paths[name].unlink()
        job.logger.info("%s: --force: removed the previous %s", job.name, ", ".join(existing))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    return paths


def graphs_for_model(data, model: LayerStack, fields, show_progress: bool = False):
    """The batch source of a training: structures given in memory are packed
    (:class:`PackedGraphs`, every pair list made at once); a data set on disk is
    read per batch (:class:`LazyGraphs`: bounded memory, whatever its size)."""
    total_charge = "Q" in data.features
    if data.in_memory:
        return packed_for_model(data.structures(), model, targets=fields,
                                total_charge=total_charge, show_progress=show_progress)
    return lazy_for_model(data.database, model, targets=fields, total_charge=total_charge)


class LayerStackTask:
    """The layer-stack family's task of the training loop
    (:class:`~nnpflow.training.loop.TrainingLoop`): batches of named fields
    (``(inputs, targets)`` from :class:`PackedGraphs` or :class:`LazyGraphs`),
    the entry's weighted loss, the Metrics score on the validation part, the
    best (averaged) weights written to ``model_best.pt``, history.csv after
    every epoch, and checkpoints in ``model_last.pt``.  Running sums: the
    batch losses weighted by their structures, and the structures.

    With a force subset (``settings.force_fraction < 1``, the ``Fa`` terms of
    an epoch over the atoms of its force structures only,
    :mod:`~nnpflow.training.force_sampling`) or several processes, the loss
    is assembled from per-term sums (squared or absolute errors and element
    counts, summed over ranks), so that R processes compute the gradient of
    the one global batch's loss; otherwise it is :class:`WeightedLoss` of the
    batch."""

    def __init__(self, job: ModelJob, model: LayerStack, packed, fields, metric_terms: dict,
                 val_idx: np.ndarray, paths: dict, dtype: torch.dtype, device: torch.device,
                 settings: TrainingSettings | None = None, train_idx=None):
        self.job, self.module, self.packed, self.fields = job, model, packed, fields
        self.metric_terms, self.val_idx, self.paths = metric_terms, val_idx, paths
        self.dtype, self.device = dtype, device
        self.log = job.logger
        self.loss_fn = WeightedLoss(job.entry["loss"])
        self.batch_size = int(job.trainer["batch_size"])
        # validation and test batches (Trainer.inference_batch_size, else batch_size)
        self.inference_batch_size = int(job.trainer.get("inference_batch_size") or self.batch_size)
        self.workers = int(job.trainer["num_workers"])
        # a non-finite loss stops training: every step is checked on the CPU (free); on
        # a GPU once per epoch, so that steps need no host synchronisation
        self.check_each_step = device.type == "cpu"
        self.history: list[dict] = []
        self.rank, self.world = distributed.rank_and_world()
        self.settings = settings
        self.train_idx = np.zeros(0, np.int64) if train_idx is None else train_idx
        self.force_subset = (settings is not None and settings.force_fraction < 1.0
                             and "Fa" in self.loss_fn.fields)
        self.terms = [(kind, f, float(w)) for kind, weights in self.loss_fn.terms.items()
                      for f, w in weights.items()]
        self.by_terms = self.force_subset or self.world > 1
        self.force_mask: np.ndarray | None = None
        self.n_force = 0

    def begin_epoch(self, epoch: int) -> None:
        if not self.force_subset:
            return
        s = self.settings
        chosen = force_subset(self.train_idx, s.force_fraction, s.force_sampling, s.seed, epoch)
        self.force_mask = np.zeros(int(self.train_idx.max()) + 1, dtype=bool)
        self.force_mask[chosen] = True
        self.n_force = int(len(chosen))

    def batches(self, shares: list[np.ndarray]):
        made = iter_batches(self.packed, shares, self.dtype, self.device, self.workers)
        if not self.by_terms:
            return made
        return (((b, *batch)) for b, batch in zip(shares, made))

    def zero_sums(self) -> torch.Tensor:
        """``[sum of batch loss x structures, structures]`` (and with per-term sums:
        each term's error sum and element count)."""
        n = 2 + (2 * len(self.terms) if self.by_terms else 0)
        return torch.zeros(n, dtype=torch.float64, device=self.device)

    def forward(self, batch):
        if self.by_terms:
            return self._term_sums(*batch)
        inputs, targets = batch
        loss, _ = self.loss_fn(self.module(inputs), targets)
        sums = self.zero_sums()
        sums[0] = loss.detach().double() * int(inputs["N"].shape[0])
        sums[1] = int(inputs["N"].shape[0])
        return loss, sums

    def _term_sums(self, indices: np.ndarray, inputs: dict, targets: dict):
        """This rank's error sums per term (with gradients) and the sums vector."""
        out = self.module(inputs)
        rows = None
        if self.force_mask is not None:
            n_atoms = inputs["N"].cpu().numpy()
            rows = torch.from_numpy(np.flatnonzero(
                np.repeat(self.force_mask[np.asarray(indices)], n_atoms))).to(self.device)
        sums = self.zero_sums()
        sums[1] = len(indices)
        work = []
        for k, (kind, f, _) in enumerate(self.terms):
            pred, ref = out[f], targets[f]
            if f == "Fa" and rows is not None:
                pred, ref = pred.index_select(0, rows), ref.index_select(0, rows)
            diff = pred - ref.to(pred.dtype)
            err = (diff.abs() if kind == "mae" else diff * diff).sum().double()
            work.append(err)
            sums[2 + 2 * k] = err.detach()
            sums[3 + 2 * k] = diff.numel()
        return work, sums

    def _term_factors(self, totals: torch.Tensor) -> list[float]:
        """d loss / d (error sum) of each term at the global sums ``totals``
        (0 for a term without elements)."""
        t = totals.tolist()
        out = []
        for k, (kind, _, w) in enumerate(self.terms):
            err, n = t[2 + 2 * k], t[3 + 2 * k]
            if n == 0 or w == 0:
                out.append(0.0)
            elif kind == "rmse":
                out.append(w / (2.0 * math.sqrt(err * n)) if err > 0 else 0.0)
            else:  # mse, mae: err / n
                out.append(w / n)
        return out

    def complete_sums(self, totals: torch.Tensor) -> torch.Tensor:
        """The global batch's loss x structures into ``totals[0]`` (per-term sums)."""
        if not self.by_terms:
            return totals
        t = totals.tolist()
        loss = 0.0
        for k, (kind, _, w) in enumerate(self.terms):
            err, n = t[2 + 2 * k], t[3 + 2 * k]
            if n:
                loss += w * (math.sqrt(err / n) if kind == "rmse" else err / n)
        totals[0] = loss * t[1]
        return totals

    def has_loss(self, totals: torch.Tensor) -> bool:
        if not self.by_terms:
            return True
        t = totals.tolist()
        return any(w > 0 and t[3 + 2 * k] > 0 for k, (_, _, w) in enumerate(self.terms))

    def objective(self, work, totals: torch.Tensor, world: int) -> torch.Tensor:
        if not self.by_terms:
            return work
        # sum over ranks of c_k * err_k,r: the gradient of the global batch's loss
        factors = self._term_factors(totals)
        return sum(c * err for c, err in zip(factors, work))

    def train_columns(self, sums: torch.Tensor) -> dict:
        row = {"train_loss": float(sums[0]) / max(int(sums[1]), 1)}
        if self.force_subset:
            row["force_structures"] = self.n_force
        return row

    def validate(self) -> tuple[float, dict, float]:
        values = validation_metrics(self.module, self.packed, self.val_idx, self.fields,
                                    self.inference_batch_size, self.dtype, self.device, self.workers)
        score = MetricAccumulator.score(values, self.metric_terms)
        columns = {"val_loss": MetricAccumulator.score(values, self.job.entry["loss"]),
                   "val_score": score}
        for kind, weights in self.metric_terms.items():
            for f in weights:
                columns[f"val_{kind}_{f}"] = values[f"{kind}_{f}"]
        return score, columns, score

    def progress_columns(self, stopper: EarlyStopping) -> dict:
        return {"epochs_without_improvement": stopper.bad_epochs}

    def keep_best(self, epoch: int, score: float | None) -> None:
        job = self.job
        if self.rank != 0:
            return
        save_layer_stack(self.paths["model_best.pt"], self.module, {
            "name": job.name, "epoch": epoch, "val_score": score,
            "targets": list(self.module.outputs), "data_hash": job.data.hash})

    def end_epoch(self, row: dict, stopper: EarlyStopping, epochs: int) -> None:
        job = self.job
        self.history.append(row)
        _write_history(self.paths["history.csv"], self.history)
        terms = ", ".join(f"{k[4:]} {_fmt(v)}" for k, v in row.items()
                          if k.startswith("val_") and k not in ("val_loss", "val_score"))
        score = row.get("val_score")
        self.log.info("%s epoch %d/%d: train loss %s, val loss %s, score %s%s; lr %.3g; %s; "
                      "%.1f s", job.name, row["epoch"], epochs, _fmt(row["train_loss"]),
                      _fmt(row.get("val_loss")), _fmt(score), f" ({terms})" if terms else "",
                      row["lr"], stopper.describe() if len(self.val_idx) else "no validation",
                      row["time_s"])
        if stopper.should_stop:
            self.log.info("%s: early stopping after epoch %d: %s", job.name, row["epoch"],
                          stopper.describe())

    def nonfinite(self, raw, epoch: int, step: int | None, indices,
                  validation: bool = False) -> Exception:
        if isinstance(raw, torch.Tensor):  # the running sums of a batch or an epoch
            raw = float(raw[0]) / max(float(raw[1]), 1.0)
        if validation:
            return _nonfinite(self.job, raw, epoch, None, self.val_idx, "validation")
        return _nonfinite(self.job, raw, epoch, step, indices)

    def interrupted(self, epoch: int, step: int, n_steps: int, signal_name: str,
                    path: Path | None) -> Exception:
        job = self.job
        return TrainingInterrupted(
            f"{job.name}: stopped by {signal_name} at epoch {epoch + 1}, step {step + 1}/"
            f"{n_steps}; the training state is in {self.paths['model_last.pt']}; continue "
            f"with: {job.command} --resume", signal_name, [self.paths["model_last.pt"]])

    def checkpoint_entries(self, sums: torch.Tensor) -> tuple[dict, dict]:
        return ({"model": model_payload(self.module, {"name": self.job.name}),
                 "epoch_loss": sums[0].detach().cpu().clone()},
                {"epoch_count": int(sums[1])})

    def restore_entries(self, state: dict) -> torch.Tensor:
        self.module.load_state_dict(state["model"]["state_dict"])
        self.history = list(state["history"])
        sums = self.zero_sums()  # (per-term sums: of the batch, not carried across steps)
        sums[0] = state["epoch_loss"].to(self.device, torch.float64)
        sums[1] = int(state["progress"]["epoch_count"])
        return sums


def train_model(job: ModelJob) -> dict:
    """Train one layer-stack model; returns its test metrics (``{}`` without a test part)."""
    log, cfg, entry = job.logger, job.trainer, job.entry
    where = f"Modelhub.{job.name}"
    paths = _prepare_output(job)
    device = resolve_device("cuda" if cfg["cuda"] else "cpu")
    dtype = dtype_from_name(cfg["dtype"])
    if device.type == "cpu":
        keep_freed_memory()
    seed_everything(cfg["seed"])
    model = build_model(entry, where)  # with pretrain_path / resume: 1, the saved weights
    model = model.to(device=device, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("%s: built %s with %d layers, %d trainable parameters, on %s in %s; pair cutoffs %s",
             job.name, entry["architecture"], len(entry["layers"]), sum(p.numel() for p in params),
             device, cfg["dtype"], model.requirements)
    if model.unused_build_params:
        log.info("%s: build_params not taken by any layer: %s", job.name,
                 ", ".join(model.unused_build_params))
    metric_terms = job.metrics or entry["loss"]
    _check_targets(job, model, entry["loss"], f"{where}.loss")
    _check_targets(job, model, metric_terms, "Metrics" if job.metrics else f"{where}.loss")
    fields = sorted(set(term_fields(entry["loss"])) | set(term_fields(metric_terms))
                    | ({"E", "Fa"} & set(job.data.targets) & set(model.outputs)))
    t0 = time.perf_counter()
    # SIGTERM while the pair lists are made stops at once: there is nothing to save yet
    with (job.interrupt.immediate("making pair lists") if job.interrupt is not None
          else contextlib.nullcontext()):
        packed = graphs_for_model(job.data, model, fields, job.show_progress)
    if isinstance(packed, PackedGraphs):
        log.info("%s: pair lists for %d structures in %.1f s (%s pairs)", job.name, len(packed),
                 time.perf_counter() - t0, packed.n_pairs)
    else:
        log.info("%s: %s", job.name, packed.describe())

    train_idx = np.asarray(job.split["training"], dtype=np.int64)
    val_idx = np.asarray(job.split.get("validation", []), dtype=np.int64)
    test_idx = np.asarray(job.split.get("test", []), dtype=np.int64)
    settings = TrainingSettings.from_trainer(cfg)
    task = LayerStackTask(job, model, packed, fields, metric_terms, val_idx, paths, dtype,
                          device, settings, train_idx)
    loop = TrainingLoop(task, settings, train_idx,
                        has_validation=len(val_idx) > 0, identity=job.identity(),
                        files=CheckpointFiles(paths["model_last.pt"]), device=device,
                        on_step=job.on_step, progress=job.name if job.show_progress else None)
    if task.force_subset:
        log.info("%s: forces of %g of the training structures per epoch (%s subsets)",
                 job.name, settings.force_fraction, settings.force_sampling)
    if not len(val_idx):
        log.info("%s: no validation structures: no early stopping; model_best.pt holds the "
                 "weights of the last epoch", job.name)
    start_epoch, start_step = 0, 0
    if job.resume:
        resumed = loop.restore(paths["model_last.pt"], force=job.force,
                               ignore=job.resume_may_change, what="the model")
        old_epochs = resumed.state["identity"].get("Trainer", {}).get("max_epochs")
        if resumed.changes:
            log.warning("%s: resuming despite changes (--force): %s", job.name,
                        "; ".join(resumed.changes))
        if old_epochs is not None and old_epochs != cfg["max_epochs"]:
            log.info("%s: max_epochs %s -> %s: training continues to epoch %d%s", job.name,
                     old_epochs, cfg["max_epochs"], cfg["max_epochs"],
                     "" if cfg["schedule"] in ("constant", "plateau") and not cfg["warmup_ratio"]
                     else f" (the {cfg['schedule']} schedule is stretched to the new length)")
        start_epoch, start_step = resumed.epoch, resumed.step
        log.info("%s: resumed from %s at epoch %d, step %d", job.name, paths["model_last.pt"].name,
                 start_epoch + 1, start_step)
        if loop.already_done(resumed):
            log.info("%s: training had already finished; nothing to do", job.name)
            if paths["test_metrics.json"].exists():
                return json.loads(paths["test_metrics.json"].read_text(encoding="utf-8"))
            return _finish(job, model, packed, test_idx, metric_terms, paths, dtype, device,
                           loop.history)
    loop.run(start_epoch, start_step, job.interrupt)
    if loop.rank != 0:  # rank 0 writes the results
        return {}
    return _finish(job, model, packed, test_idx, metric_terms, paths, dtype, device,
                   loop.history)


def _nonfinite(job: ModelJob, value: float, epoch: int, step: int | None, indices,
               where: str = "training") -> Exception:
    """The error for a non-finite loss at ``epoch``/``step`` (0-based), naming the
    structures among ``indices`` with non-finite inputs."""
    from .finite import nonfinite_loss_error, nonfinite_structures
    culprits = nonfinite_structures(job.data.structures_at(indices))
    searched = "the batch" if step is not None else f"the {where} split"
    return nonfinite_loss_error(value, epoch + 1, None if step is None else step + 1, culprits,
                                f"{job.name} ({where})", searched)


def _finish(job, model, packed, test_idx, terms, paths, dtype, device, history) -> dict:
    """Load the best weights, evaluate the test part, write test_metrics.json."""
    # through the registry: a model_best.pt of a run started by an older nnpflow too
    best = read_model_file(paths["model_best.pt"], "layer_stack")[1]
    model.load_state_dict(best["state_dict"])
    if not len(test_idx):
        job.logger.info("%s: no test structures; no test metrics", job.name)
        return {}
    report = held_out_report(model, packed, test_idx, terms,
                             int(job.trainer.get("inference_batch_size")
                                 or job.trainer["batch_size"]), dtype, device)
    report = {"model": job.out_dir.name, "epochs": len(history),
              "best_epoch": best["metadata"].get("epoch"), **report}
    write_json(paths["test_metrics.json"], report)
    parts = [f"{k} {_fmt(v)}" for k, v in report["terms"].items()]
    for key in ("energy_rmse_per_atom", "energy_rmse", "force_rmse"):
        if report.get(key) is not None:
            parts.append(f"{key} {_fmt(report[key])}")
    job.logger.info("%s: test (%d structures, best epoch %s): score %s; %s", job.name,
                    report["n_structures"], report["best_epoch"], _fmt(report["score"]),
                    ", ".join(parts))
    return report
