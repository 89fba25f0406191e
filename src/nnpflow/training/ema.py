"""Exponential moving average (EMA) of model weights, on ``torch.optim.swa_utils``.

``shadow <- d * shadow + (1 - d) * weight`` after every optimiser step, with
``d = min(decay, (1 + n) / (10 + n))`` during the first updates when ``warmup``
is on (``n`` = updates so far), so the average is not dominated by the random
initial weights.  Validation and test use the averaged weights::

    ema = ExponentialMovingAverage(model, decay=0.99)
    ...
    optimizer.step(); ema.update()
    with ema.average_parameters():
        validate(model)

The average is a :class:`torch.optim.swa_utils.AveragedModel` whose
``multi_avg_fn`` is the warm-up EMA above (one ``torch._foreach_lerp_`` per
device and dtype); it starts from the module's weights at construction.  Only
parameters that require gradients are swapped in and saved; the state
(``state_dict``) is plain tensors and numbers, so it fits in weights-only
checkpoints, and it is the format checkpoints held before (``decay``,
``warmup``, ``num_updates``, ``shadow``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, num_updates: int) -> float:
    """The decay of update ``num_updates + 1`` with warm-up (Enerzyme's
    ``ema_use_num_updates``): ``min(decay, (1 + n) / (10 + n))`` with ``n`` the
    updates made so far, so the first updates follow the weights closely.
    (torch_ema, which Enerzyme uses, counts the update being made, so its ramp is
    one update ahead: 2/11 at the first update where this gives 1/10.)"""
    return min(float(decay), (1.0 + num_updates) / (10.0 + num_updates))


class ExponentialMovingAverage:
    """EMA of the trainable parameters of ``module``.

    Parameters
    ----------
    module : the model whose parameters are averaged.
    decay : the decay ``d`` in [0, 1); 0 keeps the latest weights.
    warmup : ramp the decay as ``(1 + n) / (10 + n)`` while that is smaller
        (:func:`warmup_decay`; train.yaml's ``ema_use_num_updates``); off: the
        constant ``decay`` from the first update.
    """

    def __init__(self, module: nn.Module, decay: float = 0.99, warmup: bool = True):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.module = module
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self._names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.averaged = AveragedModel(module, multi_avg_fn=self._average)
        self.averaged.update_parameters(module)   # n_averaged 0 -> 1: a copy of the weights

    def _average(self, averages: list[torch.Tensor], current: list[torch.Tensor],
                 n_averaged: torch.Tensor) -> None:
        torch._foreach_lerp_(averages, current, 1.0 - self.current_decay())

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """``{parameter name: averaged tensor}`` of the trainable parameters."""
        params = dict(self.averaged.module.named_parameters())
        return {n: params[n].detach() for n in self._names}

    def _params(self) -> list[torch.Tensor]:
        params = dict(self.module.named_parameters())
        return [params[n] for n in self._names]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        return warmup_decay(self.decay, self.num_updates) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights."""
        self.averaged.update_parameters(self.module)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module | None = None) -> None:
        """Overwrite the weights of ``module`` (default: the tracked one) with the average."""
        params = dict((module or self.module).named_parameters())
        for n, t in self.shadow.items():
            params[n].copy_(t)

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Swap the averaged weights in for the block; restore the live ones after."""
        params = self._params()
        backup = [p.detach().clone() for p in params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self._names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks parameters {sorted(missing)}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_(state["shadow"][n])
