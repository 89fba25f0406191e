"""The one training loop of every model family and every entry point.

:class:`TrainingLoop` owns what training is, whatever is trained:

* epochs of mini-batches in an order drawn from ``default_rng([seed, epoch])``
  (:func:`epoch_order`), each global batch split over the ranks of a
  ``torch.distributed`` process group (rank r takes structures r, r + R, ...);
* per step: the task's loss, back-propagated on the trainable parameters,
  gradients summed over ranks, clipped, the optimiser
  (:meth:`TrainingSettings.make_optimizer
  <nnpflow.training.settings.TrainingSettings.make_optimizer>`), the
  learning-rate schedule (:mod:`~nnpflow.training.schedules`, per step), the
  weight average (:mod:`~nnpflow.training.ema`);
* non-finite detection (every step, or once per epoch where a host
  synchronisation per step would cost: the task decides), with the task's
  error naming the structures behind it;
* per epoch: validation with the averaged weights, early stopping, the best
  weights (the task keeps them), a history row, a checkpoint, the task's
  per-epoch files and log line;
* checkpoints with the full state (optimiser, schedule, EMA, early stopping,
  RNG states, position, running sums, history, the run's identity) and the
  resume guard (:func:`~nnpflow.training.checkpoint.check_resume`); SIGTERM ->
  finish the step, checkpoint, :class:`~nnpflow.training.interrupt.TrainingInterrupted`.

A family plugs in with a *task* (:class:`Task`): how to make the batches of a
list of index arrays, the loss and running sums of a batch, validation, the
history columns, the model state in a checkpoint, the best weights, and the
messages of its surface.  Committees are several runs of this loop (one per
member, each with its own seed).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from ..errors import ResumeMismatchError
from ..provenance import versions
from . import distributed
from .checkpoint import (capture_rng_state, check_resume, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .early_stopping import EarlyStopping
from .ema import ExponentialMovingAverage
from .schedules import make_schedule
from .settings import TrainingSettings

__all__ = ["TrainingLoop", "Task", "CheckpointFiles", "Resumed", "epoch_order", "chunks"]


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``indices`` in the order of ``epoch`` (a permutation drawn from seed and epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(indices)


def chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    """``indices`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [indices[k:k + size] for k in range(0, len(indices), size)]


class Task(Protocol):
    """What a model family supplies to :class:`TrainingLoop`.

    ``module`` is the ``nn.Module`` trained (its trainable parameters are
    optimised, its weights averaged); ``log`` the logger of the surface;
    ``check_each_step`` whether a non-finite loss is looked for after every
    step (else once per epoch, on the epoch's running sums)."""

    module: torch.nn.Module
    log: logging.Logger
    check_each_step: bool

    def begin_epoch(self, epoch: int) -> None:
        """Per-epoch preparation (force subset, ...) before its batches are made."""

    def batches(self, shares: list[np.ndarray]) -> Iterable[Any]:
        """One batch (or ``None`` for an empty share) per index array, in order."""

    def zero_sums(self) -> torch.Tensor:
        """The running sums of an epoch at its start (float64, on the device)."""

    def forward(self, batch: Any) -> tuple[Any, torch.Tensor]:
        """``(work, sums)``: what :meth:`objective` needs, and this rank's sums."""

    def complete_sums(self, totals: torch.Tensor) -> torch.Tensor:
        """The global sums of a batch with what depends on all of them filled in
        (e.g. a loss that is not a sum over ranks); usually ``totals`` as given."""

    def has_loss(self, totals: torch.Tensor) -> bool:
        """Whether the global sums of a batch have a loss term to optimise."""

    def objective(self, work: Any, totals: torch.Tensor, world: int) -> torch.Tensor | None:
        """The scalar to back-propagate on this rank: summed over ranks its gradient
        is the gradient of the global batch's loss (``totals``: summed over ranks)."""

    def train_columns(self, sums: torch.Tensor) -> dict:
        """History columns of the epoch's training sums (``train_loss`` first)."""

    def validate(self) -> tuple[float, dict, Any]:
        """``(score, history columns, raw)`` on the validation part (called with the
        averaged weights in place); ``raw`` goes to :meth:`nonfinite`."""

    def progress_columns(self, stopper: EarlyStopping) -> dict:
        """Columns after ``best`` (e.g. early-stopping state)."""

    def keep_best(self, epoch: int, score: float | None) -> None:
        """Keep the current (averaged) weights as the best (epoch 1-based)."""

    def end_epoch(self, row: dict, stopper: EarlyStopping, epochs: int) -> None:
        """After the epoch's checkpoint (rank 0): the task's per-epoch files (a
        history.csv) and its log line (and the early-stopping message)."""

    def nonfinite(self, raw: Any, epoch: int, step: int | None, indices,
                  validation: bool = False) -> Exception:
        """The error of a non-finite loss (``raw``: sums or score)."""

    def interrupted(self, epoch: int, step: int, n_steps: int, signal_name: str,
                    path: Path | None) -> Exception:
        """The error after a graceful stop that wrote ``path``."""

    def checkpoint_entries(self, sums: torch.Tensor) -> tuple[dict, dict]:
        """``(entries, progress entries)`` the task adds to a checkpoint: its model
        state (``model``) and running sums in its checkpoint's own names."""

    def restore_entries(self, state: dict) -> torch.Tensor:
        """Restore the task's model state from a checkpoint; returns the running sums."""


@dataclass
class CheckpointFiles:
    """Where the loop writes: ``last`` (``None``: no checkpoints) after every
    epoch and on SIGTERM, and every ``interval`` epochs a numbered copy
    ``numbered.format(epoch=...)`` in the same folder, keeping the newest ``keep``."""

    last: Path | None
    numbered: str | None = None
    interval: int = 1
    keep: int | None = None


@dataclass
class Resumed:
    """Where a resumed run stands: 0-based epoch and step, whether the checkpoint
    was of a finished run, the identity changes a forced resume accepted, and
    the checkpoint itself."""

    epoch: int
    step: int
    finished: bool
    changes: list
    state: dict


class TrainingLoop:
    """Train ``task`` on ``train_idx`` (monitoring validation when ``has_validation``).

    ``settings`` give epochs, batch size, seed, optimiser, schedule, EMA,
    patience and gradient clipping; ``identity`` is what a checkpoint records
    and a resume compares; ``on_step(epoch, step)`` (0-based) runs after every
    optimiser step.  Build the model, move it to its device and dtype, then
    make the loop (it builds the optimiser over the module's parameters)."""

    def __init__(self, task: Task, settings: TrainingSettings, train_idx: np.ndarray, *,
                 has_validation: bool, identity: dict, files: CheckpointFiles,
                 device: torch.device, on_step=None, progress: str | None = None):
        self.task = task
        self.settings = settings
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.has_validation = bool(has_validation)
        self.identity = identity
        self.files = files
        self.device = device
        self.on_step = on_step
        self.progress = progress
        self.rank, self.world = distributed.rank_and_world()
        s = settings
        self.params = [p for p in task.module.parameters() if p.requires_grad]
        self.optimizer = s.make_optimizer(self.params)
        self.steps_per_epoch = math.ceil(len(self.train_idx) / s.batch_size)
        self.schedule = make_schedule(s.schedule, self.optimizer, s.learning_rate,
                                      self.total_steps, s.warmup_ratio, **s.schedule_params)
        self.ema = (ExponentialMovingAverage(task.module, s.ema_decay, warmup=s.ema_warmup)
                    if s.ema_decay > 0
                    else None)
        self.stopper = EarlyStopping(s.patience if (s.patience and self.has_validation)
                                     else None)
        self.history: list[dict] = []
        self.sums = task.zero_sums()
        self.epoch_lr = self.schedule.lr
        self.stopped_early = False

    @property
    def total_steps(self) -> int:
        return max(1, self.settings.epochs * self.steps_per_epoch)

    def averaged(self):
        """Context with the averaged (EMA) weights in place (no-op without EMA)."""
        return self.ema.average_parameters() if self.ema is not None else contextlib.nullcontext()

    # ------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int, finished: bool) -> dict:
        entries, progress = self.task.checkpoint_entries(self.sums)
        return {
            **entries,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": capture_rng_state(),
            "progress": {"epoch": int(epoch), "step_in_epoch": int(step),
                         "finished": bool(finished), "epoch_lr": float(self.epoch_lr),
                         "steps_per_epoch": int(self.steps_per_epoch), **progress},
            "history": list(self.history),
            "identity": self.identity,
            "versions": versions(),
        }

    def write_checkpoint(self, epoch: int, step: int, finished: bool = False,
                         numbered: bool = False) -> Path | None:
        """Write the state (rank 0, with a checkpoint path); returns the path written."""
        last = self.files.last
        if last is None or self.rank != 0:
            return None
        last = Path(last)
        last.parent.mkdir(parents=True, exist_ok=True)
        state = self.state(epoch, step, finished)
        save_checkpoint(last, state)
        if numbered and self.files.numbered:
            save_checkpoint(last.parent / self.files.numbered.format(epoch=epoch), state)
            if self.files.keep is not None:
                pattern = self.files.numbered.replace("{epoch:04d}", "[0-9][0-9][0-9][0-9]*")
                old = sorted(last.parent.glob(pattern))
                for p in old[:-self.files.keep]:
                    p.unlink(missing_ok=True)
        return last

    def restore(self, path: Path, *, force: bool = False, ignore: tuple = (),
                what: str = "the model") -> Resumed:
        """Continue from the checkpoint ``path``: refused (``ResumeMismatchError``
        naming every change) when its identity differs, unless ``force`` (or the
        change is under ``ignore``); with accepted changes the new settings win
        (schedule length and rate, patience)."""
        state = load_checkpoint(path, map_location=self.device)
        changes = check_resume(state["identity"], self.identity, force=force, ignore=ignore,
                               source=str(path))
        try:
            self.sums = self.task.restore_entries(state).to(self.device)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeMismatchError(f"cannot resume from {path}: its state does not fit "
                                      f"{what} ({str(exc).splitlines()[0]})") from None
        s = self.settings
        self.schedule.load_state_dict(state["scheduler"])
        if changes or self.total_steps != self.schedule.total_steps:
            total = self.total_steps
            self.schedule.reconfigure(s.learning_rate, total, round(s.warmup_ratio * total))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.stopper.load_state_dict(state["early_stopping"])
        if changes:
            self.stopper.patience = s.patience if (s.patience and self.has_validation) else None
        self.history = list(state["history"])
        progress = state["progress"]
        self.epoch_lr = float(progress["epoch_lr"])
        restore_rng_state(state["rng"])
        return Resumed(int(progress["epoch"]), int(progress["step_in_epoch"]),
                       bool(progress.get("finished")), changes, state)

    def already_done(self, resumed: Resumed) -> bool:
        """Whether the resumed run has nothing left to train."""
        done = resumed.finished or (resumed.step == 0 and bool(self.history))
        return (done and not resumed.changes
                and (resumed.epoch >= self.settings.epochs
                     or (self.stopper.should_stop and resumed.step == 0)))

    # ------------------------------------------------------------ steps
    def step(self, batch) -> torch.Tensor:
        """One optimiser step on this rank's share of a global batch; returns the
        batch's global sums."""
        task = self.task
        self.optimizer.zero_grad(set_to_none=True)
        if batch is not None:
            work, sums = task.forward(batch)
        else:
            work, sums = None, task.zero_sums()
        if self.world > 1:
            totals = task.complete_sums(distributed.all_reduce_sum(sums.clone()))
        else:
            totals = task.complete_sums(sums)
        if task.has_loss(totals):
            if work is not None:
                loss = task.objective(work, totals, self.world)
                if loss is not None and loss.requires_grad:
                    loss.backward(inputs=self.params)
            if self.world > 1:
                distributed.all_reduce_gradients(self.params)
            if self.settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
            self.optimizer.step()
        # (a batch without any loss term -- e.g. only energies to fit with a force
        # weight of 1 -- leaves the weights alone; the schedule still counts it)
        self.schedule.step()
        if self.ema is not None:
            self.ema.update()
        return totals

    # -------------------------------------------------------------- run
    def run(self, start_epoch: int = 0, start_step: int = 0, stop=None) -> list[dict]:
        """Train from ``start_epoch``/``start_step`` (0-based) to the last epoch or
        early stopping; ``stop`` (an entered GracefulInterrupt, or None) ends the
        run after a step with a checkpoint and the task's ``interrupted`` error.
        Writes the finished checkpoint; returns the history."""
        s, task = self.settings, self.task
        epochs: Iterable[int] = range(start_epoch, s.epochs)
        if self.progress is not None and self.rank == 0:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc=self.progress, unit="epoch", initial=start_epoch,
                          total=s.epochs)
        for epoch in epochs:
            t0 = time.perf_counter()
            task.begin_epoch(epoch)
            batches = chunks(epoch_order(self.train_idx, s.seed, epoch), s.batch_size)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                self.epoch_lr = self.schedule.lr  # the rate of the epoch's first step
            shares = [b[self.rank::self.world] for b in batches[first:]]
            task.module.train()
            for step, batch in enumerate(task.batches(shares), start=first):
                totals = self.step(batch)
                if task.check_each_step and not bool(torch.isfinite(totals).all()):
                    raise task.nonfinite(totals, epoch, step, shares[step - first])
                self.sums += totals
                if self.on_step is not None:
                    self.on_step(epoch, step)
                if stop is not None and distributed.any_rank(stop.requested, self.device):
                    path = self.write_checkpoint(epoch, step + 1)
                    raise task.interrupted(epoch, step, len(batches),
                                           stop.signal_name or "SIGTERM", path)
            if not task.check_each_step and not bool(torch.isfinite(self.sums).all()):
                raise task.nonfinite(self.sums, epoch, None, self.train_idx)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.epoch_lr,
                                   **task.train_columns(self.sums)}
            score = None
            if self.has_validation:
                with self.averaged():
                    score, columns, raw = task.validate()
                if not math.isfinite(score):
                    raise task.nonfinite(raw, epoch, None, None, validation=True)
                row.update(columns)
                improved = self.stopper.update(score, epoch + 1)
            else:
                improved = True
            row["best"] = bool(improved)
            row.update(task.progress_columns(self.stopper))
            if improved:
                with self.averaged():
                    task.keep_best(epoch + 1, score)
            self.schedule.epoch_end(score)
            row["time_s"] = round(time.perf_counter() - t0, 4)
            self.history.append(row)
            self.sums.zero_()
            numbered = (epoch + 1) % self.files.interval == 0
            self.write_checkpoint(epoch + 1, 0, numbered=numbered)
            if self.rank == 0:
                task.end_epoch(row, self.stopper, s.epochs)
            if self.stopper.should_stop:
                self.stopped_early = True
                break
        self.write_checkpoint(len(self.history), 0, finished=True)
        return self.history

