"""Exponential moving average (EMA) of model weights.

``shadow <- d * shadow + (1 - d) * weight`` after every optimiser step, with
``d = min(decay, (1 + n) / (10 + n))`` during the first updates when ``warmup``
is on (``n`` = updates so far), so the average is not dominated by the random
initial weights.  Validation and test use the averaged weights::

    ema = ExponentialMovingAverage(model, decay=0.99)
    ...
    optimizer.step(); ema.update()
    with ema.average_parameters():
        validate(model)

Only parameters that require gradients are averaged; the state (``state_dict``)
is plain tensors and numbers, so it fits in weights-only checkpoints.  Updates
are in-place device operations with no host synchronisation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class ExponentialMovingAverage:
    """EMA of the trainable parameters of ``module``.

    Parameters
    ----------
    module : the model whose parameters are averaged.
    decay : the decay ``d`` in [0, 1); 0 keeps the latest weights.
    warmup : ramp the decay as ``(1 + n) / (10 + n)`` while that is smaller.
    """

    def __init__(self, module: nn.Module, decay: float = 0.99, warmup: bool = True):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.module = module
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self._names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        self.shadow = {n: params[n].detach().clone() for n in self._names}

    def _params(self) -> list[torch.Tensor]:
        params = dict(self.module.named_parameters())
        return [params[n] for n in self._names]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights."""
        weight = 1.0 - self.current_decay()
        shadows = [self.shadow[n] for n in self._names]
        torch._foreach_lerp_(shadows, [p.detach() for p in self._params()], weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module | None = None) -> None:
        """Overwrite the weights of ``module`` (default: the tracked one) with the average."""
        params = dict((module or self.module).named_parameters())
        for n in self._names:
            params[n].copy_(self.shadow[n])

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
                "shadow": {n: t.detach().clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self._names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks parameters {sorted(missing)}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for n in self._names:
                self.shadow[n].copy_(state["shadow"][n])
