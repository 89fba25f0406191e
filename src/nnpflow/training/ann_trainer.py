"""The training loop of :class:`~nnpflow.training.potential.TorchANNPotential`.

One :class:`ANNTrainer` trains the potential's networks on a training split
(and monitors a validation split) with the settings of a
:class:`~nnpflow.training.config.TorchTrainingConfig`:

* epochs of mini-batches in an order drawn from ``default_rng([seed, epoch])``;
  the force structures of each epoch from
  :mod:`~nnpflow.training.force_sampling`, applied as the dataset's force
  selection (the others give energy-view samples, so their derivatives are
  never loaded);
* per step: one vectorised batch, the loss of :mod:`~nnpflow.training.ann_loss`,
  gradient clipping, the optimiser, the learning-rate schedule (per step), the
  weight average (EMA);
* per epoch: validation loss (EMA weights), early stopping, best weights, a
  history row, a checkpoint.

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
from ..errors import ConfigError, ResumeMismatchError
from ..provenance import versions
from ..runtime import keep_freed_memory, resolve_device
from . import distributed
from .ann_loss import batch_errors, rmse_loss, surrogate_loss
from .checkpoint import (capture_rng_state, check_resume, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .config import TorchTrainingConfig
from .early_stopping import EarlyStopping
from .ema import ExponentialMovingAverage
from .force_sampling import force_subset
from .interrupt import GracefulInterrupt, TrainingInterrupted
from .normalization import energy_normalization
from .schedules import make_schedule

log = logging.getLogger("nnpflow.training.ann")

LAST_CHECKPOINT = "checkpoint_last.pt"


# ------------------------------------------------------------------ helpers
def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``indices`` in the order of ``epoch`` (a permutation from seed and epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(indices)


def chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[k:k + size] for k in range(0, len(indices), size)]


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
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = cfg.method.make_optimizer(self.params)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / cfg.batch_size)
        total = max(1, cfg.iterations * self.steps_per_epoch)
        self.schedule = make_schedule(cfg.schedule, self.optimizer, cfg.method.learning_rate,
                                      total, cfg.warmup_ratio, **cfg.schedule_params)
        self.ema = (ExponentialMovingAverage(net, cfg.ema_decay) if cfg.ema_decay > 0 else None)
        has_val = self.val_set is not None
        self.stopper = EarlyStopping(cfg.patience if (cfg.patience and has_val) else None)
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
        # energy-only steps from a per-species feature table (built in _loop,
        # after a resume has restored the feature normalisation)
        self.use_table = (not self.train_forces
                          and EnergyTable.usable(self.train_base, self.train_idx, cfg))
        self.table: EnergyTable | None = None
        if has_val:
            self.val_batches = BatchSource(self.val_base, self.val_forces, cfg)
        self.identity = training_identity(pot, cfg, self.train_set, self.val_set)

    # ------------------------------------------------------ checkpoints
    def _state(self, epoch: int, step: int, finished: bool) -> dict:
        return {
            "model": self.potential.to_payload(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "best": self.best,
            "rng": capture_rng_state(),
            "progress": {"epoch": int(epoch), "step_in_epoch": int(step),
                         "finished": bool(finished), "epoch_lr": float(self.epoch_lr),
                         "steps_per_epoch": int(self.steps_per_epoch)},
            "epoch_sums": self.epoch_sums.detach().cpu().clone(),
            "history": list(self.history),
            "identity": self.identity,
            "versions": versions(),
        }

    def _write_checkpoint(self, epoch: int, step: int, finished: bool = False,
                          numbered: bool = False) -> Path | None:
        folder = self.config.checkpoint_dir
        if folder is None or self.rank != 0:
            return None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._state(epoch, step, finished)
        save_checkpoint(folder / LAST_CHECKPOINT, state)
        if numbered:
            save_checkpoint(folder / f"checkpoint_{epoch:04d}.pt", state)
            keep = self.config.max_checkpoints
            if keep is not None:
                old = sorted(folder.glob("checkpoint_[0-9][0-9][0-9][0-9]*.pt"))
                for p in old[:-keep]:
                    p.unlink(missing_ok=True)
        return folder / LAST_CHECKPOINT

    def _restore(self) -> dict:
        path = self.resume_from
        if not path.is_file():
            raise ConfigError(f"resume_from: {path} does not exist")
        state = load_checkpoint(path, map_location=self.device)
        changes = check_resume(state["identity"], self.identity, force=self.force_resume,
                               ignore=self.resume_may_change, source=str(path))
        if changes:
            log.warning("resuming from %s despite changes (forced): %s", path, "; ".join(changes))
        pot = self.potential
        try:
            pot.load_payload_state(state["model"])
            pot.net.to(device=self.device, dtype=self.dtype)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeMismatchError(f"cannot resume from {path}: its state does not fit the "
                                      f"potential ({str(exc).splitlines()[0]})") from None
        self.schedule.load_state_dict(state["scheduler"])
        total = max(1, self.config.iterations * self.steps_per_epoch)
        if total != self.schedule.total_steps:
            self.schedule.reconfigure(self.config.method.learning_rate, total,
                                      round(self.config.warmup_ratio * total))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.best = state.get("best")
        if self.best is not None:
            self.best = {**self.best, "state_dict": {k: v.to(self.device) for k, v in
                                                     self.best["state_dict"].items()}}
        self.history = list(state["history"])
        self.epoch_sums = state["epoch_sums"].to(self.device)
        self.epoch_lr = float(state["progress"]["epoch_lr"])
        restore_rng_state(state["rng"])
        return state["progress"]

    # ------------------------------------------------------------- steps
    def _step(self, batch) -> torch.Tensor:
        """One optimiser step on this rank's share of a global batch; returns
        the global sums ``[sse_e, n_e, sse_f, n_f]``."""
        net, cfg = self.potential.net, self.config
        norm = self.potential.energy_normalization
        self.optimizer.zero_grad(set_to_none=True)
        if batch is not None:
            batch = self._to_device(batch)
            err = batch_errors(net, batch, norm, self.device, self.dtype,
                               with_forces=self.train_forces, create_graph=True)
            sums = err.sums()
        else:
            err = None
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        totals = distributed.all_reduce_sum(sums.clone()) if self.world > 1 else sums
        n_e, n_f = float(totals[1]), float(totals[3])
        if (self.alpha < 1.0 and n_e > 0) or (self.alpha > 0.0 and n_f > 0):
            if self.world > 1:
                if err is not None:
                    loss = surrogate_loss(err, totals, self.alpha)
                    if loss.requires_grad:
                        loss.backward(inputs=self.params)
                distributed.all_reduce_gradients(self.params)
            else:
                rmse_loss(err.sse_energy, n_e, err.sse_force, n_f,
                          self.alpha).backward(inputs=self.params)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
        # (a batch without any loss term -- e.g. force_weight=1 and no force
        # structure in it -- leaves the weights alone; the schedule still counts it)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update()
        return totals

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

    def _averaged(self):
        return self.ema.average_parameters() if self.ema is not None else contextlib.nullcontext()

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
        self.history: list[dict] = []
        self.best: dict | None = None
        self.epoch_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.epoch_lr = self.schedule.lr
        start_epoch, start_step = 0, 0
        finished = False
        if self.resume_from is not None:
            progress = self._restore()
            start_epoch, start_step = int(progress["epoch"]), int(progress["step_in_epoch"])
            finished = bool(progress["finished"]) and start_epoch >= cfg.iterations
            log.info("resumed from %s at epoch %d, step %d", self.resume_from, start_epoch + 1,
                     start_step)
        if finished or (self.stopper.should_stop and start_step == 0 and self.history):
            log.info("training had already finished; nothing to do")
            self._finish(len(self.history))
            return self.history
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
                self._loop(start_epoch, start_step, stop if use_interrupt else None)
        finally:  # leave the caller's dataset as it was given
            self.train_base.set_force_selection(selection)
        return self.history

    def _loop(self, start_epoch: int, start_step: int, stop) -> None:
        cfg = self.config
        net = self.potential.net
        scale = self.potential.energy_normalization.scale
        epochs = range(start_epoch, cfg.iterations)
        if cfg.show_progress and self.rank == 0:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc="training", unit="epoch", initial=start_epoch,
                          total=cfg.iterations)
        net.train()
        stopped_early = False
        for epoch in epochs:
            t0 = time.perf_counter()
            n_force = self._set_force_selection(epoch)
            batches = chunks(epoch_order(self.train_idx, cfg.seed, epoch), cfg.batch_size)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                self.epoch_lr = self.schedule.lr
            shares = [b[self.rank::self.world] for b in batches[first:]]
            if self.use_table:
                if self.table is None:
                    self.table = EnergyTable(self.train_base, self.train_idx, net, self.device,
                                             self.dtype)
                source = (self.table.batch(b) for b in shares)
            else:
                source = self.train_batches(shares)
            for step, batch in enumerate(source, start=first):
                totals = self._step(batch)
                if not bool(torch.isfinite(totals).all()):
                    raise self._nonfinite(totals.tolist(), epoch, step, shares[step - first])
                self.epoch_sums += totals
                if self.on_step is not None:
                    self.on_step(epoch, step)
                if stop is not None and distributed.any_rank(stop.requested, self.device):
                    path = self._write_checkpoint(epoch, step + 1)
                    raise TrainingInterrupted(
                        f"training stopped by {stop.signal_name or 'SIGTERM'} at epoch "
                        f"{epoch + 1}, step {step + 1}/{len(batches)}; the training state is in "
                        f"{path or Path(cfg.checkpoint_dir) / LAST_CHECKPOINT}; resume with "
                        f"resume_from=<that file>", stop.signal_name or "SIGTERM",
                        [p for p in [path] if p is not None])
            s = self.epoch_sums.tolist()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "lr": self.epoch_lr,
                "train_loss": _loss_value(s, self.alpha),
                "train_energy_rmse": (math.sqrt(s[0] / s[1]) * scale) if s[1] else None,
                "train_force_rmse": (math.sqrt(s[2] / s[3]) * scale) if s[3] else None,
                "force_structures": n_force,
            }
            score = None
            if self.val_set is not None:
                with self._averaged():
                    v = self._validate().tolist()
                score = _loss_value(v, self.alpha)
                if not math.isfinite(score):
                    raise self._nonfinite(v, epoch, None, self.val_idx, validation=True)
                row.update(val_loss=score,
                           val_energy_rmse=(math.sqrt(v[0] / v[1]) * scale) if v[1] else None,
                           val_force_rmse=(math.sqrt(v[2] / v[3]) * scale) if v[3] else None)
                improved = self.stopper.update(score, epoch + 1)
            else:
                improved = True
            row["best"] = bool(improved)
            if improved:
                with self._averaged():
                    self.best = {"epoch": epoch + 1, "score": score,
                                 "state_dict": {k: v.detach().clone()
                                                for k, v in net.state_dict().items()}}
            self.schedule.epoch_end(score)
            row["time_s"] = round(time.perf_counter() - t0, 4)
            self.history.append(row)
            self.epoch_sums.zero_()
            numbered = (epoch + 1) % cfg.checkpoint_interval == 0
            self._write_checkpoint(epoch + 1, 0, numbered=numbered)
            if self.rank == 0:
                log.info("epoch %d/%d: train loss %s (E %s eV/atom, F %s eV/Å), val loss %s "
                         "(E %s, F %s); lr %.3g; %d force structures; %.2f s", epoch + 1,
                         cfg.iterations, _fmt(row["train_loss"]), _fmt(row["train_energy_rmse"]),
                         _fmt(row["train_force_rmse"]), _fmt(row.get("val_loss")),
                         _fmt(row.get("val_energy_rmse")), _fmt(row.get("val_force_rmse")),
                         row["lr"], n_force, row["time_s"])
            if self.stopper.should_stop:
                log.info("early stopping after epoch %d: %s", epoch + 1, self.stopper.describe())
                stopped_early = True
                break
        self._finish(len(self.history), stopped_early)

    def _nonfinite(self, sums: list, epoch: int, step: int | None, indices,
                   validation: bool = False) -> Exception:
        """The error for a non-finite loss (sums ``[sse_e, n_e, sse_f, n_f]``) at
        ``epoch``/``step`` (0-based): names the structures of ``indices`` (this
        rank's share of the batch, or the validation split) with non-finite inputs,
        else of the whole training split when the feature normalisation is not
        finite (one structure's NaN features poison it for every batch)."""
        from .finite import nonfinite_inputs, nonfinite_loss_error
        base = self.val_base if validation else self.train_base
        culprits = nonfinite_inputs(base, indices)
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
        """Last checkpoint (live weights), then the final weights into the
        potential (best, averaged or last; see ``save_best``) and its history."""
        cfg = self.config
        net = self.potential.net
        self._write_checkpoint(epochs_done, 0, finished=True)
        use_best = cfg.save_best and self.val_set is not None and self.best is not None
        if use_best:
            net.load_state_dict(self.best["state_dict"])
        elif self.ema is not None:
            self.ema.copy_to()
        self.potential.history = list(self.history)
        self.potential.training_info = {
            "epochs": epochs_done, "stopped_early": bool(stopped_early),
            "best_epoch": None if self.best is None else self.best["epoch"],
            "best_val_loss": None if self.best is None else self.best["score"],
            "final_weights": "best" if use_best else ("ema" if self.ema is not None else "last"),
            "config": cfg.to_dict(), "world_size": self.world,
            "n_train": int(len(self.train_idx)), "n_validation": int(len(self.val_idx)),
            "data": self.identity["data"],
        }
