"""Learning-rate schedules stepped once per optimiser step.

Every schedule sets ``lr = base_lr * factor`` on all parameter groups of the
optimiser.  ``k`` counts optimiser steps from 1; the factor for step ``k`` is set
before that step runs (at construction for ``k = 1``, then by :meth:`Schedule.step`
after each optimiser step).  ``T`` is the planned number of steps, ``W`` the
number of warmup steps (``round(warmup_ratio * T)``):

``constant``  ``k / W`` during warmup, then 1.
``linear``    ``k / W`` during warmup, then ``(T - k + 1) / (T - W)``: from the full
              rate down to ``1 / (T - W)`` at the last step (Enerzyme's
              ``schedule: linear`` with ``warmup_ratio``; no step is taken at 0).
``cosine``    ``k / W`` during warmup, then
              ``m + (1 - m) (1 + cos(pi (k - W - 1) / (T - W))) / 2`` with ``m = min_lr_ratio``.
``plateau``   ``k / W`` during warmup, then a scale that is multiplied by ``factor``
              whenever the validation score (:meth:`Schedule.epoch_end`) has not
              improved by the relative ``threshold`` for more than ``patience``
              epochs, never below ``min_lr``.

Each schedule steps a :class:`torch.optim.lr_scheduler.LambdaLR` whose factor is
the closed form above (``LambdaLR`` evaluates ``base_lr * factor(step)`` afresh
every step, so a resumed run sets exactly the rates of an uninterrupted one;
torch's chainable ``LinearLR``/``CosineAnnealingLR`` update the rate recursively,
and ``ReduceLROnPlateau`` neither warms up nor reduces by less than 1e-8).
State (:meth:`state_dict`) is plain numbers, for weights-only checkpoints.
Schedules write Python floats into the parameter groups; a CUDA-graph training
step that needs a changing rate should give the optimiser a tensor ``lr`` and
copy :attr:`Schedule.lr` into it.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..errors import ConfigError


class Schedule:
    """Base class: a factor of ``base_lr`` per optimiser step ``k`` (1-based)."""

    name = "schedule"

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int,
                 warmup_steps: int = 0):
        if base_lr <= 0:
            raise ConfigError(f"learning_rate must be positive, got {base_lr!r}")
        if total_steps < 1:
            raise ConfigError(f"a schedule needs at least one step, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ConfigError(f"warmup steps {warmup_steps} must be within 0..{total_steps}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        for group in optimizer.param_groups:
            group["initial_lr"] = self.base_lr
        #: the library scheduler; its ``last_epoch`` counts the optimiser steps done
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda done: self.factor(min(done + 1, self.total_steps)))

    @property
    def steps_done(self) -> int:
        """Optimiser steps taken so far."""
        return int(self.scheduler.last_epoch)

    def factor(self, k: int) -> float:
        """Factor of ``base_lr`` for optimiser step ``k``; subclasses extend."""
        if k <= self.warmup_steps:
            return k / self.warmup_steps
        return self.after_warmup(k)

    def after_warmup(self, k: int) -> float:
        return 1.0

    @property
    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.base_lr * self.factor(min(self.steps_done + 1, self.total_steps))

    def _apply(self) -> None:
        """Set the rate of the next step after a change of plan or state."""
        lr = self.lr
        self.scheduler.base_lrs = [self.base_lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.base_lr
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self.scheduler._last_lr = [lr] * len(self.optimizer.param_groups)

    def step(self) -> None:
        """Call after each optimiser step (the factor is indexed by steps taken, so a
        schedule stepped on its own, as in tests, needs no optimiser step)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()

    def epoch_end(self, score: float | None = None) -> None:
        """Call after each epoch with the validation score (used by ``plateau``)."""

    def reconfigure(self, base_lr: float, total_steps: int, warmup_steps: int) -> None:
        """Change the plan (e.g. a forced resume with more epochs), keeping the steps done."""
        self.base_lr = float(base_lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self._apply()

    def state_dict(self) -> dict:
        return {"name": self.name, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"schedule state is for {state.get('name')!r}, not {self.name!r}")
        self.base_lr = float(state["base_lr"])
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.scheduler.last_epoch = int(state["steps_done"])
        self._apply()


class ConstantSchedule(Schedule):
    name = "constant"


class LinearSchedule(Schedule):
    name = "linear"

    def after_warmup(self, k: int) -> float:
        return (self.total_steps - k + 1) / (self.total_steps - self.warmup_steps)


class CosineSchedule(Schedule):
    name = "cosine"

    def __init__(self, optimizer, base_lr, total_steps, warmup_steps=0, min_lr_ratio: float = 0.0):
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, base_lr, total_steps, warmup_steps)

    def after_warmup(self, k: int) -> float:
        progress = (k - self.warmup_steps - 1) / (self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def state_dict(self) -> dict:
        return {**super().state_dict(), "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.min_lr_ratio = float(state["min_lr_ratio"])
        super().load_state_dict(state)


class PlateauSchedule(Schedule):
    name = "plateau"

    def __init__(self, optimizer, base_lr, total_steps, warmup_steps=0, factor: float = 0.5,
                 patience: int = 10, threshold: float = 1e-4, min_lr: float = 0.0):
        if not 0.0 < float(factor) < 1.0:
            raise ConfigError(f"plateau factor must be in (0, 1), got {factor!r}")
        if int(patience) < 0:
            raise ConfigError(f"plateau patience must be >= 0, got {patience!r}")
        self.decay_factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.min_lr = float(min_lr)
        self.scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        super().__init__(optimizer, base_lr, total_steps, warmup_steps)

    def after_warmup(self, k: int) -> float:
        return self.scale

    def epoch_end(self, score: float | None = None) -> None:
        if score is None:
            return
        score = float(score)
        if math.isfinite(score) and score < self.best * (1.0 - self.threshold if self.best > 0
                                                         else 1.0 + self.threshold):
            self.best = score
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale = max(self.scale * self.decay_factor, self.min_lr / self.base_lr)
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "factor": self.decay_factor, "patience": self.patience,
                "threshold": self.threshold, "min_lr": self.min_lr, "scale": self.scale,
                "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.decay_factor = float(state["factor"])
        self.patience = int(state["patience"])
        self.threshold = float(state["threshold"])
        self.min_lr = float(state["min_lr"])
        self.scale = float(state["scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        super().load_state_dict(state)


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": ConstantSchedule, "linear": LinearSchedule,
    "cosine": CosineSchedule, "plateau": PlateauSchedule,
}

#: extra parameters each schedule accepts, with defaults
SCHEDULE_PARAMS: dict[str, dict] = {
    "constant": {}, "linear": {},
    "cosine": {"min_lr_ratio": 0.0},
    "plateau": {"factor": 0.5, "patience": 10, "threshold": 1e-4, "min_lr": 0.0},
}


def make_schedule(name: str, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int,
                  warmup_ratio: float = 0.0, **params) -> Schedule:
    """Build schedule ``name`` with ``W = round(warmup_ratio * total_steps)`` warmup steps."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0.0 <= float(warmup_ratio) <= 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1], got {warmup_ratio!r}")
    unknown = set(params) - set(SCHEDULE_PARAMS[name])
    if unknown:
        raise ConfigError(f"schedule {name!r} takes no parameter(s) {sorted(unknown)}; "
                          f"it takes: {', '.join(SCHEDULE_PARAMS[name]) or 'none'}")
    warmup = int(round(float(warmup_ratio) * total_steps))
    return SCHEDULES[name](optimizer, base_lr, total_steps, warmup, **params)
