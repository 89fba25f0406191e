"""The optimisers of training, built from the settings for every model family.

:class:`~nnpflow.training.settings.TrainingSettings` names the optimiser
(``optimizer``: ``adam``, ``adamw`` or ``sgd``) and its own parameters
(``optimizer_params``, :data:`OPTIMIZER_PARAMS`); the learning rate is the
settings' ``learning_rate`` (the peak of a warmed-up schedule).  These are the
parameters aenet-python's ``Adam(...)``/``SGD(...)`` methods take
(:mod:`nnpflow.training.config`), under torch's meanings:

* ``adam``/``adamw``: ``beta1``, ``beta2`` (moment decays), ``epsilon``,
  ``weight_decay`` (Adam: L2 added to the gradient; AdamW: decoupled decay of
  the weights, ``w -= lr * weight_decay * w``), ``amsgrad`` (true: the AMSGrad
  variant, the running maximum of the second moment; Enerzyme's default);
* ``sgd``: ``momentum``, ``weight_decay`` (L2 added to the gradient).

:func:`make_optimizer` is the one place a training loop gets its
``torch.optim.Optimizer`` from.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from .validators import boolean, number, reject_unknown, suggest

__all__ = ["OPTIMIZERS", "OPTIMIZER_PARAMS", "check_optimizer", "make_optimizer"]

#: every optimiser's parameters and their defaults (torch's)
OPTIMIZER_PARAMS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "adam": MappingProxyType({"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                              "weight_decay": 0.0, "amsgrad": False}),
    "adamw": MappingProxyType({"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                               "weight_decay": 0.01, "amsgrad": False}),
    "sgd": MappingProxyType({"momentum": 0.0, "weight_decay": 0.0}),
})
OPTIMIZERS = tuple(OPTIMIZER_PARAMS)

#: (minimum, maximum, exclusive minimum, exclusive maximum) of each parameter
_BOUNDS = {"beta1": (0.0, 1.0, False, True), "beta2": (0.0, 1.0, False, True),
           "epsilon": (0.0, None, True, False), "weight_decay": (0.0, None, False, False),
           "momentum": (0.0, 1.0, False, True)}


def check_optimizer(name: Any, params: Any, where: str = "") -> tuple[str, dict]:
    """``(name, params)`` checked: a known optimiser and only its own finite
    parameters within their bounds; ``ConfigError`` naming ``where`` + the key."""
    if name not in OPTIMIZER_PARAMS:
        raise ConfigError(f"{where}optimizer: {name!r} is not one of "
                          f"{', '.join(OPTIMIZERS)}{suggest(name, OPTIMIZERS)}")
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}optimizer_params: expected a mapping, got {params!r}")
    reject_unknown(params, OPTIMIZER_PARAMS[name], f"{where}optimizer_params ({name})")
    out = {}
    for key, value in params.items():
        if key == "amsgrad":
            out[key] = boolean(value, f"{where}optimizer_params.{key}")
            continue
        lo, hi, ex_lo, ex_hi = _BOUNDS[key]
        out[key] = number(value, f"{where}optimizer_params.{key}", minimum=lo, maximum=hi,
                          exclusive_min=ex_lo, exclusive_max=ex_hi)
    return name, out


def make_optimizer(name: str, params: Mapping[str, float], parameters: Iterable,
                   learning_rate: float):
    """The ``torch.optim`` optimiser ``name`` over ``parameters`` with learning
    rate ``learning_rate`` and ``params`` (missing ones: :data:`OPTIMIZER_PARAMS`).
    Adam and AdamW are fused into one kernel per step where torch supports it for
    the parameters' device and dtype (the same update, less overhead)."""
    import torch
    name, params = check_optimizer(name, params)
    p = {**OPTIMIZER_PARAMS[name], **params}
    parameters = list(parameters)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=p["momentum"],
                               weight_decay=p["weight_decay"])
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    kwargs = dict(lr=learning_rate, betas=(p["beta1"], p["beta2"]), eps=p["epsilon"],
                  weight_decay=p["weight_decay"], amsgrad=p["amsgrad"])
    try:
        return cls(parameters, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(parameters, **kwargs)
