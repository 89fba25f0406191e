"""The ANN task of the training loop: :class:`~nnpflow.training.potential.TorchANNPotential`.

One :class:`ANNTrainer` trains the potential's networks on a training split
(and monitors a validation split) with the settings of a
:class:`~nnpflow.training.config.TorchTrainingConfig`, through the one
:class:`~nnpflow.training.loop.TrainingLoop` (epochs, steps, optimiser,
schedule, EMA, validation, early stopping, checkpoints and resume, SIGTERM,
non-finite detection, data parallelism).  What is the ANN's own, it supplies
as the loop's task:

* the batches: vectorised aenet-style batches of the dataset (assembled here or
  by DataLoader workers, :class:`BatchSource`), or energy-only batches from a
  per-species feature table (:class:`EnergyTable`);
* the force structures of each epoch from
  :mod:`~nnpflow.training.force_sampling`, applied as the dataset's force
  selection (the others give energy-view samples, so their derivatives are
  never loaded), and the warm-up of the runtime caches;
* the loss of :mod:`~nnpflow.training.ann_loss` (with its surrogate for
  several processes, :mod:`~nnpflow.training.distributed`), the history columns
  (RMSEs in eV/atom and eV/Å), the best weights kept in memory, the identity
  of the run (settings, architecture, descriptor, data).

Checkpoints (``checkpoint_last.pt`` and ``checkpoint_<epoch>.pt`` in
``checkpoint_dir``) hold the full state -- weights, optimiser, schedule, EMA,
early stopping, best weights, RNG states, position (epoch and step), running
sums and history -- as plain tensors and JSON-compatible values (loadable with
``torch.load(weights_only=True)``), plus the run's *identity* (the settings and
data that determine the result).  A resumed run continues exactly: on the CPU it
ends bit-identical to an uninterrupted one.  Resuming with a changed identity
raises :class:`~nnpflow.errors.ResumeMismatchError` naming every change unless
forced.  With a checkpoint directory, SIGTERM (what SLURM sends before the time
limit) makes the loop finish its step, write ``checkpoint_last.pt`` and raise
:class:`~nnpflow.training.interrupt.TrainingInterrupted`.

In a ``torch.distributed`` process group every rank trains on its share of each
batch and gradients are summed (:mod:`~nnpflow.training.distributed`); rank 0
writes the checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..datasets import configure_runtime_caches, feature_statistics
from ..datasets.collate import BatchView
from ..datasets.split import subset_indices
from ..errors import ConfigError
from ..runtime import keep_freed_memory, resolve_device
from . import distributed
from .ann_loss import batch_errors, rmse_loss, surrogate_loss
from .config import TorchTrainingConfig
from .force_sampling import force_subset
from .interrupt import GracefulInterrupt, TrainingInterrupted
from .loop import CheckpointFiles, TrainingLoop, chunks
from .normalization import energy_normalization

log = logging.getLogger("nnpflow.training.ann")

LAST_CHECKPOINT = "checkpoint_last.pt"


# ------------------------------------------------------------------ helpers
def dataset_identity(dataset: Any) -> dict:
    """What identifies a dataset split for the resume guard: the base dataset's
    content (database structures fingerprint or structure content hashes), its
    reference energies, and the SHA-256 of the split's indices."""
    base, idx = subset_indices(dataset)
    h = hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()
    out = {"type": type(base).__name__, "n_structures": int(len(idx)), "indices_sha256": h,
           "atomic_energies": dict(sorted(getattr(base, "atomic_energies", {}).items()))}
    if hasattr(base, "structures_fingerprint"):
        out["structures_fingerprint"] = base.structures_fingerprint
        db_index = getattr(base, "_db_index", None)
        if db_index is not None:
            out["loaded_subset_sha256"] = hashlib.sha256(
                np.asarray(db_index, dtype=np.int64).tobytes()).hexdigest()
    elif hasattr(base, "structures"):
        c = hashlib.sha256()
        for s in base.structures:
            c.update(s.content_hash().encode())
        out["content_sha256"] = c.hexdigest()
    return out


def training_identity(potential: Any, config: TorchTrainingConfig, train: Any,
                      validation: Any) -> dict:
    """What a checkpoint of training ``potential`` on ``train`` (monitoring
    ``validation``) with ``config`` records as its identity, and a resume compares."""
    has_val = validation is not None and len(validation) > 0
    return {"config": config.identity(), "architecture": potential.architecture_json(),
            "descriptor": potential.descriptor.config(),
            "data": {"training": dataset_identity(train),
                     "validation": dataset_identity(validation) if has_val else None}}


def _identity_collate(item):
    return item


class _LocalBatches(torch.utils.data.Dataset):
    """Batches of base-dataset indices -> ``Batch`` (``None`` for an empty share)."""

    def __init__(self, base: Any, use_forces: bool | None):
        self.view = BatchView(base, use_forces)

    def __len__(self) -> int:  # pragma: no cover - sampler-driven
        return len(self.view)

    def __getitem__(self, indices):
        if len(indices) == 0:
            return None
        return self.view[indices]


class _Schedule(torch.utils.data.Sampler):
    """A sampler whose list of index arrays is replaced before each pass."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class BatchSource:
    """Batches of a base dataset for lists of index arrays: assembled in this
    process (``num_workers=0``) or by a persistent ``DataLoader`` of workers.

    ``use_forces``: ``None`` follows the dataset's force selection.
    """

    def __init__(self, base: Any, use_forces: bool | None, config: TorchTrainingConfig):
        self.base = base
        self.use_forces = use_forces
        self.items = _LocalBatches(base, use_forces)
        self.loader = None
        if config.num_workers > 0:
            self.sampler = _Schedule()
            self.loader = torch.utils.data.DataLoader(
                self.items, sampler=self.sampler, batch_size=None,
                collate_fn=_identity_collate, num_workers=config.num_workers,
                prefetch_factor=config.prefetch_factor,
                persistent_workers=config.persistent_workers)

    def __call__(self, batches: list[np.ndarray]):
        if self.loader is None:
            return (self.items[b] for b in batches)
        self.sampler.batches = list(batches)
        return iter(self.loader)


@dataclass
class TableBatch:
    """An energy-only batch from an :class:`EnergyTable` (what
    :func:`~nnpflow.training.ann_loss.batch_errors` needs of a ``Batch``):
    ``inputs[t]`` (A_t, F) the normalised features of the batch's atoms of
    species t, ``species_groups[t]`` their positions in the batch (A_t,), and
    per structure ``n_atoms``, ``energy``, ``reference_energy`` (eV),
    ``has_energy``; ``atom_structure`` (A,)."""

    inputs: list
    species_groups: list
    n_atoms: torch.Tensor
    atom_structure: torch.Tensor
    energy: torch.Tensor
    reference_energy: torch.Tensor
    has_energy: torch.Tensor
    derivatives: Any = None

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])


class EnergyTable:
    """A training split's features, normalised per species once, for
    energy-only steps without assembling batches from the dataset.

    Built from the dataset's own batches (``get_batch``: the same features a
    step would read) with the networks' feature normalisation, which stays
    fixed during training; each species' rows are laid out structure by
    structure.  A step then gathers each species' rows with one
    ``index_select`` and runs exactly the operations of the dataset path on
    the same numbers, so training is bit-identical to it.  Memory: the split's
    features once, in the training dtype.
    """

    def __init__(self, base: Any, indices: np.ndarray, networks, device: torch.device,
                 dtype: torch.dtype, chunk: int = 256):
        n = len(indices)
        n_species = len(networks.nets)
        self.position = np.full(len(base), -1, dtype=np.int64)
        self.position[indices] = np.arange(n)
        self.device = device
        self.n_atoms = np.zeros(n, dtype=np.int64)
        self.energy = np.zeros(n)
        self.reference_energy = np.zeros(n)
        counts = np.zeros((n_species, n), dtype=np.int64)
        rows: list[list] = [[] for _ in range(n_species)]
        local: list[list] = [[] for _ in range(n_species)]
        for lo in range(0, n, chunk):
            batch = base.get_batch(indices[lo:lo + chunk], use_forces=False)
            hi = lo + batch.n_structures
            self.n_atoms[lo:hi] = batch.n_atoms.numpy()
            self.energy[lo:hi] = batch.energy.numpy()
            self.reference_energy[lo:hi] = batch.reference_energy.numpy()
            x = networks.cast(batch.features.to(device))
            species = batch.species_index.numpy()
            owner = batch.atom_structure.numpy()
            first = np.cumsum(self.n_atoms[lo:hi]) - self.n_atoms[lo:hi]
            for t in range(n_species):
                sel = np.flatnonzero(species == t)
                counts[t, lo:hi] = np.bincount(owner[sel], minlength=hi - lo)
                local[t].append(sel - first[owner[sel]])
                with torch.no_grad():
                    rows[t].append(networks.normalize(
                        x, t, torch.from_numpy(sel).to(device)).detach())
        self.counts = counts
        self.starts = np.cumsum(counts, axis=1) - counts
        self.local = [np.concatenate(v) if v else np.zeros(0, np.int64) for v in local]
        self.inputs = [torch.cat(v) if v else torch.zeros(0, networks.n_features, dtype=dtype,
                                                             device=device) for v in rows]

    @staticmethod
    def usable(base: Any, indices: np.ndarray, config: TorchTrainingConfig) -> bool:
        """Whether energy-only training on ``base[indices]`` reads persisted
        features held in memory (an ``HDF5StructureDataset`` whose split fits
        its ``in_memory_cache_size``, no runtime feature cache) in this process."""
        return (config.num_workers == 0 and bool(getattr(base, "has_persisted_features", False))
                and len(indices) <= int(getattr(base, "in_memory_cache_size", 0))
                and getattr(getattr(base, "runtime_caches", None), "features", 1) is None
                and len(np.unique(indices)) == len(indices))

    def batch(self, indices: np.ndarray) -> TableBatch | None:
        """The :class:`TableBatch` of dataset indices (``None`` when empty)."""
        if len(indices) == 0:
            return None
        pos = self.position[np.asarray(indices, dtype=np.int64)]
        n_atoms = self.n_atoms[pos]
        first = np.cumsum(n_atoms) - n_atoms
        inputs, groups = [], []
        for t, table in enumerate(self.inputs):
            count = self.counts[t, pos]
            total = int(count.sum())
            within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
            rows = np.repeat(self.starts[t, pos], count) + within
            groups.append(torch.from_numpy(self.local[t][rows]
                                           + np.repeat(first, count)).to(self.device))
            inputs.append(table.index_select(0, torch.from_numpy(rows).to(self.device)))
        n_t = torch.from_numpy(n_atoms).to(self.device)
        energy = self.energy[pos]
        return TableBatch(
            inputs=inputs, species_groups=groups, n_atoms=n_t,
            atom_structure=torch.repeat_interleave(
                torch.arange(len(pos), device=self.device), n_t, output_size=int(n_atoms.sum())),
            energy=torch.from_numpy(energy).to(self.device),
            reference_energy=torch.from_numpy(self.reference_energy[pos]).to(self.device),
            has_energy=torch.from_numpy(np.isfinite(energy)).to(self.device))


def _loss_value(sums: list, alpha: float) -> float:
    """The loss of summed ``[sse_e, n_e, sse_f, n_f]``."""
    t = torch.tensor(sums, dtype=torch.float64)
    return float(rmse_loss(t[0], float(t[1]), t[2], float(t[3]), alpha))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.6g}"


# -------------------------------------------------------------------- trainer
class ANNTrainer:
    """Trains ``potential`` on ``train`` (monitoring ``validation``, may be None).

    ``train``/``validation`` are datasets or ``Subset``s of the aenet-style
    datasets; ``resume_from`` a checkpoint; ``force_resume`` resumes despite a
    changed identity; ``on_step(epoch, step)`` (0-based) runs after every
    optimiser step.
    """

    def __init__(self, potential, config: TorchTrainingConfig, train: Any, validation: Any,
                 *, resume_from: str | Path | None = None, force_resume: bool = False,
                 resume_may_change: tuple[str, ...] = (),
                 on_step: Callable[[int, int], None] | None = None,
                 interrupt: GracefulInterrupt | None = None):
        self.potential = potential
        self.config = config
        self.train_set = train
        self.val_set = validation if validation is not None and len(validation) else None
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.force_resume = force_resume
        self.resume_may_change = tuple(resume_may_change)
        self.interrupt = interrupt
        self.on_step = on_step
        self.rank, self.world = distributed.rank_and_world()
        self.train_base, self.train_idx = subset_indices(train)
        if self.val_set is not None:
            self.val_base, self.val_idx = subset_indices(self.val_set)
        else:
            self.val_base, self.val_idx = None, np.zeros(0, dtype=np.int64)
        self._check_inputs()

    # ----------------------------------------------------------- checks
    def _check_inputs(self) -> None:
        cfg = self.config
        if len(self.train_idx) == 0:
            raise ConfigError("the training set is empty")
        fp = self.potential.descriptor.fingerprint
        for name, base in (("training", self.train_base), ("validation", self.val_base)):
            if base is None:
                continue
            desc = getattr(base, "descriptor", None)
            if desc is None or desc.fingerprint != fp:
                from ..errors import DescriptorMismatchError
                raise DescriptorMismatchError(
                    f"the {name} dataset's descriptor {getattr(desc, 'config', lambda: None)()} "
                    f"differs from the potential's {self.potential.descriptor.config()}")
        if cfg.force_weight > 0 and not getattr(self.train_base, "force_capable", True):
            raise ConfigError(f"force_weight={cfg.force_weight}: the training dataset "
                              f"({type(self.train_base).__name__}) is energy-only; use a "
                              "StructureDataset or HDF5StructureDataset for force training")
        has_e = np.isfinite(self.train_base.energies()[self.train_idx])
        if cfg.force_weight < 1.0 and not has_e.any():
            raise ConfigError("no training structure has an energy")

    # ------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg = self.config
        pot = self.potential
        self.device = distributed.local_device(resolve_device(cfg.device))
        self.dtype = cfg.dtype
        if self.device.type == "cpu":
            keep_freed_memory()   # a training step frees and reallocates the same blocks
        net = pot.net
        if self.resume_from is None:
            gen = torch.Generator().manual_seed(cfg.seed)
            net.to(device="cpu", dtype=torch.float64)
            net.init_weights(gen)
            net.set_feature_statistics(feature_statistics(self.train_set))
            pot.energy_normalization = energy_normalization(self.train_set)
            pot.atomic_energies = dict(getattr(self.train_base, "atomic_energies", {}) or {})
        net.to(device=self.device, dtype=self.dtype)
        has_val = self.val_set is not None
        if not has_val:
            unused = [n for n, on in (("patience", bool(cfg.patience)),
                                      ("plateau schedule", cfg.schedule == "plateau"))
                      if on]
            if unused:
                log.warning("no validation structures: %s inactive (they follow the "
                            "validation loss); the final weights are those of the last epoch",
                            " and ".join(unused))
        # force training
        self.alpha = cfg.force_weight
        tb = self.train_base
        has_f = np.asarray(tb.has_forces(), dtype=bool)
        self.force_candidates = self.train_idx[has_f[self.train_idx]]
        self.train_forces = self.alpha > 0 and len(self.force_candidates) > 0
        if self.alpha > 0 and not self.train_forces:
            log.warning("force_weight=%g but no training structure has reference forces: "
                        "training on energies only", self.alpha)
        self.val_forces = False
        if has_val and self.alpha > 0:
            vf = np.asarray(self.val_base.has_forces(), dtype=bool)[self.val_idx]
            self.val_forces = bool(vf.any())
        # runtime caches (trainer-owned, the aenet PyTorch training docs)
        for base in {id(b): b for b in (self.train_base, self.val_base) if b is not None}.values():
            if hasattr(base, "runtime_caches"):
                configure_runtime_caches(
                    base, cache_features=cfg.cache_features,
                    cache_feature_max_entries=(cfg.cache_feature_max_entries
                                               if cfg.cache_features else None),
                    cache_force_triplets=cfg.cache_force_triplets,
                    cache_force_triplet_max_entries=(cfg.cache_force_triplet_max_entries
                                                     if cfg.cache_force_triplets else None))
        self.train_batches = BatchSource(self.train_base, None, cfg)
        # energy-only steps from a per-species feature table (built at the first
        # epoch, after a resume has restored the feature normalisation)
        self.use_table = (not self.train_forces
                          and EnergyTable.usable(self.train_base, self.train_idx, cfg))
        self.table: EnergyTable | None = None
        if has_val:
            self.val_batches = BatchSource(self.val_base, self.val_forces, cfg)
        self.identity = training_identity(pot, cfg, self.train_set, self.val_set)
        self.best: dict | None = None
        self.n_force = 0
        folder = cfg.checkpoint_dir
        self.loop = TrainingLoop(
            self, cfg.settings(), self.train_idx, has_validation=has_val,
            identity=self.identity, device=self.device, on_step=self.on_step,
            progress="training" if cfg.show_progress else None,
            files=CheckpointFiles(None if folder is None else Path(folder) / LAST_CHECKPOINT,
                                  "checkpoint_{epoch:04d}.pt", cfg.checkpoint_interval,
                                  cfg.max_checkpoints))

    # ------------------------------------------- the task of the training loop
    @property
    def module(self) -> torch.nn.Module:
        return self.potential.net

    log = log
    check_each_step = True  # the sums are all-reduced per step anyway

    def begin_epoch(self, epoch: int) -> None:
        self.n_force = self._set_force_selection(epoch)

    def batches(self, shares: list[np.ndarray]):
        if self.use_table:
            if self.table is None:
                self.table = EnergyTable(self.train_base, self.train_idx, self.potential.net,
                                         self.device, self.dtype)
            return (self.table.batch(b) for b in shares)
        return self.train_batches(shares)

    def zero_sums(self) -> torch.Tensor:
        """``[sse_e, n_e, sse_f, n_f]`` (normalised units)."""
        return torch.zeros(4, dtype=torch.float64, device=self.device)

    def forward(self, batch):
        batch = self._to_device(batch)
        err = batch_errors(self.potential.net, batch, self.potential.energy_normalization,
                           self.device, self.dtype, with_forces=self.train_forces,
                           create_graph=True)
        return err, err.sums()

    def complete_sums(self, totals: torch.Tensor) -> torch.Tensor:
        return totals

    def has_loss(self, totals: torch.Tensor) -> bool:
        # the counts read once per step (has_loss precedes objective in the loop's step)
        _, n_e, _, n_f = self._counts = totals.tolist()
        return (self.alpha < 1.0 and n_e > 0) or (self.alpha > 0.0 and n_f > 0)

    def objective(self, err, totals: torch.Tensor, world: int) -> torch.Tensor:
        if world > 1:  # c * SSE_r, c from the global sums (training.distributed)
            return surrogate_loss(err, totals, self.alpha)
        _, n_e, _, n_f = self._counts
        return rmse_loss(err.sse_energy, n_e, err.sse_force, n_f, self.alpha)

    def train_columns(self, sums: torch.Tensor) -> dict:
        s = sums.tolist()
        scale = self.potential.energy_normalization.scale
        return {"train_loss": _loss_value(s, self.alpha),
                "train_energy_rmse": (math.sqrt(s[0] / s[1]) * scale) if s[1] else None,
                "train_force_rmse": (math.sqrt(s[2] / s[3]) * scale) if s[3] else None,
                "force_structures": self.n_force}

    def validate(self) -> tuple[float, dict, list]:
        v = self._validate().tolist()
        score = _loss_value(v, self.alpha)
        scale = self.potential.energy_normalization.scale
        return score, {"val_loss": score,
                       "val_energy_rmse": (math.sqrt(v[0] / v[1]) * scale) if v[1] else None,
                       "val_force_rmse": (math.sqrt(v[2] / v[3]) * scale) if v[3] else None}, v

    def progress_columns(self, stopper) -> dict:
        return {}

    def keep_best(self, epoch: int, score: float | None) -> None:
        self.best = {"epoch": epoch, "score": score,
                     "state_dict": {k: v.detach().clone()
                                    for k, v in self.potential.net.state_dict().items()}}

    def end_epoch(self, row: dict, stopper, epochs: int) -> None:
        log.info("epoch %d/%d: train loss %s (E %s eV/atom, F %s eV/Å), val loss %s "
                 "(E %s, F %s); lr %.3g; %d force structures; %.2f s", row["epoch"],
                 epochs, _fmt(row["train_loss"]), _fmt(row["train_energy_rmse"]),
                 _fmt(row["train_force_rmse"]), _fmt(row.get("val_loss")),
                 _fmt(row.get("val_energy_rmse")), _fmt(row.get("val_force_rmse")),
                 row["lr"], row["force_structures"], row["time_s"])
        if stopper.should_stop:
            log.info("early stopping after epoch %d: %s", row["epoch"], stopper.describe())

    def interrupted(self, epoch: int, step: int, n_steps: int, signal_name: str,
                    path: Path | None) -> Exception:
        where = path or Path(self.config.checkpoint_dir) / LAST_CHECKPOINT
        return TrainingInterrupted(
            f"training stopped by {signal_name} at epoch {epoch + 1}, step {step + 1}/"
            f"{n_steps}; the training state is in {where}; resume with "
            f"resume_from=<that file>", signal_name, [p for p in [path] if p is not None])

    def checkpoint_entries(self, sums: torch.Tensor) -> tuple[dict, dict]:
        return {"model": self.potential.to_payload(), "best": self.best,
                "epoch_sums": sums.detach().cpu().clone()}, {}

    def restore_entries(self, state: dict) -> torch.Tensor:
        pot = self.potential
        pot.load_payload_state(state["model"])
        pot.net.to(device=self.device, dtype=self.dtype)
        self.best = state.get("best")
        if self.best is not None:
            self.best = {**self.best, "state_dict": {k: v.to(self.device) for k, v in
                                                     self.best["state_dict"].items()}}
        return state["epoch_sums"]

    # ------------------------------------------------------------- steps
    def _to_device(self, batch):
        """The batch on the training device, with derivatives in the training dtype
        (the force contraction runs in the networks' precision)."""
        if isinstance(batch, TableBatch):
            return batch
        ders = batch.derivatives
        if self.device.type != "cpu":
            batch = batch.to(self.device, non_blocking=True)
        if ders is not None and batch.derivatives.dtype != self.dtype:
            from dataclasses import replace
            batch = replace(batch, derivatives=batch.derivatives.to(dtype=self.dtype))
        return batch

    def _validate(self) -> torch.Tensor:
        """Global sums over the validation split (averaged weights)."""
        cfg = self.config
        net = self.potential.net
        norm = self.potential.energy_normalization
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        batches = [b[self.rank::self.world] for b in chunks(self.val_idx, cfg.batch_size)]
        net.eval()
        for batch in self.val_batches(batches):
            if batch is None:
                continue
            batch = self._to_device(batch)
            err = batch_errors(net, batch, norm, self.device, self.dtype,
                               with_forces=self.val_forces, create_graph=False)
            sums += err.sums()
        net.train()
        return distributed.all_reduce_sum(sums)

    def _set_force_selection(self, epoch: int) -> int:
        cfg = self.config
        base = self.train_base
        if not self.train_forces:
            base.set_force_selection(False)
            return 0
        chosen = force_subset(self.force_candidates, cfg.force_fraction, cfg.force_sampling,
                              cfg.seed, epoch)
        mask = np.zeros(len(base), dtype=bool)
        mask[chosen] = True
        base.set_force_selection(mask)
        return int(len(chosen))

    def _warm_caches(self, epoch: int) -> None:
        cfg = self.config
        if not cfg.cache_warmup:
            return
        if cfg.num_workers > 0:
            log.info("cache_warmup skipped: with num_workers=%d each DataLoader worker fills "
                     "its own caches", cfg.num_workers)
            return
        t0 = time.perf_counter()
        self._set_force_selection(epoch)
        for idx in chunks(self.train_idx, 64):
            self.train_base.samples(idx.tolist())
        if self.val_set is not None:
            for idx in chunks(self.val_idx, 64):
                self.val_base.samples(idx.tolist(), use_forces=self.val_forces)
        log.info("runtime caches warmed in %.1f s", time.perf_counter() - t0)

    # --------------------------------------------------------------- run
    def run(self) -> list[dict]:
        """Train; returns the history (one dict per epoch).  The potential ends
        with its final weights (see ``save_best``)."""
        cfg = self.config
        self._setup()
        loop = self.loop
        start_epoch, start_step = 0, 0
        if self.resume_from is not None:
            if not self.resume_from.is_file():
                raise ConfigError(f"resume_from: {self.resume_from} does not exist")
            resumed = loop.restore(self.resume_from, force=self.force_resume,
                                   ignore=self.resume_may_change, what="the potential")
            if resumed.changes:
                log.warning("resuming from %s despite changes (forced): %s", self.resume_from,
                            "; ".join(resumed.changes))
            start_epoch, start_step = resumed.epoch, resumed.step
            log.info("resumed from %s at epoch %d, step %d", self.resume_from, start_epoch + 1,
                     start_step)
            if loop.already_done(resumed):
                log.info("training had already finished; nothing to do")
                loop.write_checkpoint(len(loop.history), 0, finished=True)
                self._finish(len(loop.history))
                return loop.history
        use_interrupt = cfg.checkpoint_dir is not None
        if self.interrupt is not None:  # the caller's, already listening (nnpflow train)
            interrupt = contextlib.nullcontext(self.interrupt)
        else:
            interrupt = GracefulInterrupt() if use_interrupt else contextlib.nullcontext()
        if self.resume_from is None:
            # a signal while the caches are filled (minutes for large sets) stops at once
            with (self.interrupt.immediate("computing the features") if self.interrupt
                  is not None else contextlib.nullcontext()):
                self._warm_caches(0)
        selection = self.train_base.force_selection
        try:
            with interrupt as stop:
                loop.run(start_epoch, start_step, stop if use_interrupt else None)
        finally:  # leave the caller's dataset as it was given
            self.train_base.set_force_selection(selection)
        self._finish(len(loop.history), loop.stopped_early)
        return loop.history

    def nonfinite(self, sums, epoch: int, step: int | None, indices,
                  validation: bool = False) -> Exception:
        """The error for a non-finite loss (sums ``[sse_e, n_e, sse_f, n_f]``) at
        ``epoch``/``step`` (0-based): names the structures of ``indices`` (this
        rank's share of the batch; the validation split when ``validation``) with
        non-finite inputs, else of the whole training split when the feature
        normalisation is not finite (one structure's NaN features poison it for
        every batch)."""
        from .finite import nonfinite_inputs, nonfinite_loss_error
        sums = sums.tolist() if isinstance(sums, torch.Tensor) else list(sums)
        base = self.val_base if validation else self.train_base
        culprits = nonfinite_inputs(base, self.val_idx if validation else indices)
        searched = "the validation split" if validation else "the batch"
        net = self.potential.net
        stats = list(getattr(net, "feature_mean", [])) + list(getattr(net, "feature_std", []))
        if not culprits and any(not bool(torch.isfinite(t).all()) for t in stats):
            culprits = nonfinite_inputs(self.train_base, self.train_idx)
            searched = "the training split"
        where = "validation" if validation else "training"
        return nonfinite_loss_error(_loss_value(sums, self.alpha), epoch + 1,
                                    None if step is None else step + 1, culprits, where,
                                    searched)

    def _finish(self, epochs_done: int, stopped_early: bool = False) -> None:
        """The final weights into the potential (best, averaged or last; see
        ``save_best``) and its history (the loop wrote the last checkpoint)."""
        cfg = self.config
        net = self.potential.net
        ema = self.loop.ema
        use_best = cfg.save_best and self.val_set is not None and self.best is not None
        if use_best:
            net.load_state_dict(self.best["state_dict"])
        elif ema is not None:
            ema.copy_to()
        self.potential.history = list(self.loop.history)
        self.potential.training_info = {
            "epochs": epochs_done, "stopped_early": bool(stopped_early),
            "best_epoch": None if self.best is None else self.best["epoch"],
            "best_val_loss": None if self.best is None else self.best["score"],
            "final_weights": "best" if use_best else ("ema" if ema is not None else "last"),
            "config": cfg.to_dict(), "world_size": self.world,
            "n_train": int(len(self.train_idx)), "n_validation": int(len(self.val_idx)),
            "data": self.identity["data"],
        }
