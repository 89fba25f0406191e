"""One internal settings object of a training run, with one set of defaults.

Three surfaces configure training: the workflow's ``training`` block
(``workflow/schemas/config.schema.yaml``, resolved by
:func:`nnpflow.stages.train.resolve_training`), the Python API's
:class:`~nnpflow.training.config.TorchTrainingConfig`, and the ``Trainer``
section of ``nnpflow train``'s train.yaml (:mod:`nnpflow.training.yaml_config`).
Each is validated on its own terms (its key names and its error messages) and
then translated into :class:`TrainingSettings`, the one place that states what a
setting means, its unit and its default (:data:`DEFAULTS`).  Where a surface
documents a different default, the translation sets that value explicitly from
:data:`SURFACE_DEFAULTS` -- the table docs/training-settings.md shows.

The validators (:func:`number`, :func:`integer`, :func:`boolean`,
:func:`reject_unknown`, :func:`suggest`; module :mod:`nnpflow.training.validators`,
re-exported here) are the one implementation every surface uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import ConfigError
from .validators import boolean, integer, number, reject_unknown, suggest

__all__ = ["TrainingSettings", "DEFAULTS", "SURFACE_DEFAULTS", "FIELD_DOCS", "number",
           "integer", "boolean", "reject_unknown", "suggest"]


# ------------------------------------------------------------ the settings
#: every field: (unit, meaning) -- the documentation docs/training-settings.md repeats
FIELD_DOCS: dict[str, tuple[str, str]] = {
    "epochs": ("epochs", "passes over the training structures"),
    "batch_size": ("structures", "structures per optimiser step"),
    "learning_rate": ("1", "the optimiser's learning rate (the peak of a warmed-up schedule)"),
    "optimizer": ("-", "adam, adamw or sgd (nnpflow.training.optimizers)"),
    "optimizer_params": ("-", "the optimiser's own parameters: beta1, beta2, epsilon, "
                              "weight_decay (adam, adamw); momentum, weight_decay (sgd)"),
    "schedule": ("-", "learning-rate schedule per optimiser step: constant, linear, cosine, "
                      "plateau (on the validation loss)"),
    "schedule_params": ("-", "the schedule's own parameters (nnpflow.training.schedules)"),
    "warmup_ratio": ("fraction of steps", "linear warm-up from 0 over this part of the steps"),
    "ema_decay": ("1", "exponential moving average of the weights; 0 = off"),
    "patience": ("epochs", "early stopping after this many epochs without a better "
                           "validation score; 0 = off"),
    "max_grad_norm": ("1", "gradient clipping by total norm; None = off"),
    "seed": ("-", "weights, batch order and force subsets"),
    "force_weight": ("1", "alpha in (1 - alpha) RMSE(E/N) + alpha RMSE(F), normalised targets"),
    "force_fraction": ("fraction", "force-labelled training structures whose forces enter "
                                   "the loss each epoch"),
    "force_sampling": ("-", "random (new subset each epoch) or fixed (one subset)"),
    "device": ("-", "auto, cpu, cuda or cuda:N"),
    "devices": ("processes", "data-parallel processes (one per GPU or core group)"),
    "precision": ("-", "float32 or float64: networks and force contraction"),
    "num_workers": ("processes", "DataLoader worker processes"),
    "ema_warmup": ("-", "ramp the EMA decay as min(ema_decay, (1 + n) / (10 + n)) over the "
                        "first updates n (Enerzyme's ema_use_num_updates)"),
    "inference_batch_size": ("structures", "structures per batch in validation and test; "
                                           "None = batch_size"),
}


@dataclass(frozen=True)
class TrainingSettings:
    """The settings of one training run, whichever surface gave them.

    Defaults are the workflow's (config/config.yaml); the other surfaces'
    differing defaults are in :data:`SURFACE_DEFAULTS`.  Every field is checked
    on construction (:data:`FIELD_DOCS` states units and meaning); errors name
    ``where`` + the field (``training.epochs``)."""

    epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 0.001
    optimizer: str = "adam"
    optimizer_params: Mapping[str, float] = field(default_factory=dict)
    schedule: str = "plateau"
    schedule_params: Mapping[str, float] = field(default_factory=dict)
    warmup_ratio: float = 0.0
    ema_decay: float = 0.0
    patience: int = 20
    max_grad_norm: float | None = None
    seed: int = 42
    force_weight: float = 0.1
    force_fraction: float = 1.0
    force_sampling: str = "random"
    device: str = "auto"
    devices: int = 1
    precision: str = "float32"
    num_workers: int = 0
    ema_warmup: bool = True
    inference_batch_size: int | None = None
    where: str = field(default="training", compare=False, repr=False)

    def __post_init__(self) -> None:
        from .schedules import SCHEDULE_PARAMS, SCHEDULES  # torch: only when used
        w = self.where + "." if self.where else ""
        set_ = _setter(self)
        set_("epochs", integer(self.epochs, w + "epochs", 0))
        set_("batch_size", integer(self.batch_size, w + "batch_size", 1))
        set_("learning_rate", number(self.learning_rate, w + "learning_rate", minimum=0.0,
                                     exclusive_min=True))
        from .optimizers import check_optimizer
        name, params = check_optimizer(self.optimizer, self.optimizer_params, w)
        set_("optimizer_params", MappingProxyType(params))
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"{w}schedule: {self.schedule!r} is not one of "
                              f"{', '.join(SCHEDULES)}{suggest(self.schedule, SCHEDULES)}")
        if not isinstance(self.schedule_params, Mapping):
            raise ConfigError(f"{w}schedule_params: expected a mapping, "
                              f"got {self.schedule_params!r}")
        reject_unknown(self.schedule_params, SCHEDULE_PARAMS[self.schedule],
                       f"{w}schedule_params")
        for k, v in self.schedule_params.items():
            number(v, f"{w}schedule_params.{k}")  # checked; kept as given (int patience)
        set_("schedule_params", MappingProxyType(dict(self.schedule_params)))
        set_("warmup_ratio", number(self.warmup_ratio, w + "warmup_ratio", minimum=0.0,
                                    maximum=1.0))
        set_("ema_decay", number(self.ema_decay, w + "ema_decay", minimum=0.0, maximum=1.0,
                                 exclusive_max=True))
        set_("patience", integer(self.patience, w + "patience", 0))
        if self.max_grad_norm is not None:
            set_("max_grad_norm", number(self.max_grad_norm, w + "max_grad_norm", minimum=0.0,
                                         exclusive_min=True))
        set_("seed", integer(self.seed, w + "seed"))  # the surfaces bound it themselves
        set_("force_weight", number(self.force_weight, w + "force_weight", minimum=0.0,
                                    maximum=1.0))
        set_("force_fraction", number(self.force_fraction, w + "force_fraction", minimum=0.0,
                                      maximum=1.0, exclusive_min=True))
        if self.force_sampling not in ("random", "fixed"):
            raise ConfigError(f"{w}force_sampling: must be 'random' or 'fixed', "
                              f"got {self.force_sampling!r}")
        device = str(self.device)
        if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
            raise ConfigError(f"{w}device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', "
                              f"got {self.device!r}")
        set_("device", device)
        set_("devices", integer(self.devices, w + "devices", 1))
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"{w}precision: must be 'float32' or 'float64', "
                              f"got {self.precision!r}")
        set_("num_workers", integer(self.num_workers, w + "num_workers", 0))
        set_("ema_warmup", boolean(self.ema_warmup, w + "ema_warmup"))
        if self.inference_batch_size is not None:
            set_("inference_batch_size", integer(self.inference_batch_size,
                                                 w + "inference_batch_size", 1))

    # ------------------------------------------------------ from the surfaces
    @classmethod
    def from_workflow(cls, training: Mapping, member: int = 0) -> "TrainingSettings":
        """The workflow's resolved ``training`` block (:func:`nnpflow.stages.train.
        resolve_training`) for committee member ``member`` (seed ``seed + member``).
        Its keys and defaults are this object's; ``patience: 0`` and ``ema_decay: 0``
        mean off."""
        values = {k: v for k, v in training.items() if k in _FIELDS}
        values["seed"] = training["seed"] + member
        return cls(**values)

    @classmethod
    def from_trainer(cls, trainer: Mapping, **overrides) -> "TrainingSettings":
        """The training loops' mapping of a resolved train.yaml ``Trainer`` section
        (:func:`nnpflow.training.yaml_config.loop_trainer` of
        :func:`~nnpflow.training.yaml_config.resolve_trainer`, which filled in
        :data:`SURFACE_DEFAULTS` ``["train.yaml"]``; the optimiser as ``optimizer``/
        ``optimizer_params`` in nnpflow's terms).
        ``patience``/``ema_decay`` null become 0 (off), as does ``ema_decay`` with
        ``use_ema: false``; ``ema_use_num_updates`` is ``ema_warmup``; ``force_weight``
        comes from the model's loss (``overrides``)."""
        use_ema = trainer.get("use_ema", True)
        values = dict(
            epochs=trainer["max_epochs"], batch_size=trainer["batch_size"],
            learning_rate=trainer["learning_rate"], schedule=trainer["schedule"],
            schedule_params=trainer["schedule_params"], warmup_ratio=trainer["warmup_ratio"],
            ema_decay=(trainer["ema_decay"] or 0.0) if use_ema else 0.0,
            ema_warmup=trainer.get("ema_use_num_updates", True),
            inference_batch_size=trainer.get("inference_batch_size"),
            patience=trainer["patience"] or 0,
            max_grad_norm=trainer["max_grad_norm"], seed=trainer["seed"],
            device="cuda" if trainer["cuda"] else "cpu", precision=trainer["dtype"],
            num_workers=trainer["num_workers"], force_weight=0.0, where="Trainer",
            optimizer=trainer.get("optimizer", DEFAULTS["optimizer"]),
            optimizer_params=trainer.get("optimizer_params", {}),
            force_fraction=trainer.get("force_fraction", DEFAULTS["force_fraction"]),
            force_sampling=trainer.get("force_sampling", DEFAULTS["force_sampling"]))
        values.update(overrides)
        return cls(**values)

    # -------------------------------------------------------- to the trainers
    # (to TorchTrainingConfig: TorchTrainingConfig.from_settings)
    def layer_stack_trainer(self, cuda: bool) -> dict:
        """The ``Trainer`` mapping of the layer-stack trainer
        (:mod:`nnpflow.training.message_passing`); 0 (off) of ``patience`` and
        ``ema_decay`` becomes its null.  Part of a checkpoint's identity: keys and
        values must stay as they are (``ema_use_num_updates``, ``inference_batch_size``,
        the optimiser and the force subset are added only where they differ from the
        default: checkpoints written before them still resume)."""
        out = {"batch_size": self.batch_size, "cuda": bool(cuda), "dtype": self.precision,
               "schedule": self.schedule, "schedule_params": dict(self.schedule_params),
               "learning_rate": self.learning_rate, "max_epochs": self.epochs,
               "num_workers": self.num_workers, "patience": self.patience or None,
               "seed": self.seed, "warmup_ratio": self.warmup_ratio,
               "ema_decay": self.ema_decay or None, "max_grad_norm": self.max_grad_norm}
        if self.ema_decay and not self.ema_warmup:
            out["ema_use_num_updates"] = False
        if self.inference_batch_size is not None:
            out["inference_batch_size"] = self.inference_batch_size
        if self.optimizer != DEFAULTS["optimizer"] or self.optimizer_params:
            out.update(optimizer=self.optimizer, optimizer_params=dict(self.optimizer_params))
        if (self.force_fraction, self.force_sampling) != (DEFAULTS["force_fraction"],
                                                          DEFAULTS["force_sampling"]):
            out.update(force_fraction=self.force_fraction, force_sampling=self.force_sampling)
        return out

    def make_optimizer(self, parameters):
        """This run's ``torch.optim`` optimiser over ``parameters``
        (:func:`nnpflow.training.optimizers.make_optimizer`)."""
        from .optimizers import make_optimizer
        return make_optimizer(self.optimizer, self.optimizer_params, parameters,
                              self.learning_rate)


def _setter(obj):
    """A setter of a frozen dataclass's fields (for normalising in ``__post_init__``)."""
    def set_(name: str, value: Any) -> None:
        object.__setattr__(obj, name, value)
    return set_


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingSettings) if f.name != "where")

#: the one set of defaults
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
              else f.default)
     for f in dataclasses.fields(TrainingSettings) if f.name != "where"})

#: where a surface documents another default, in this object's field names; the
#: surface's translation sets these explicitly (docs/training-settings.md)
SURFACE_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # the workflow's config.schema.yaml: the defaults above
    "workflow": MappingProxyType({}),
    # aenet-python's PyTorch training: 100 epochs, constant rate, energies only,
    # no early stopping (nnpflow.training.config)
    "TorchTrainingConfig": MappingProxyType({
        "epochs": 100, "schedule": "constant", "patience": 0, "force_weight": 0.0}),
    # Enerzyme's train.yaml: linear decay with 1 % warm-up, EMA 0.99, patience 50
    "train.yaml": MappingProxyType({
        "epochs": 100, "schedule": "linear", "warmup_ratio": 0.01, "ema_decay": 0.99,
        "patience": 50}),
})
