"""``TorchTrainingConfig``, ``Adam`` and ``SGD``: the settings of ANN training (as in
aenet-python's PyTorch training docs).

Datasets are passive; every runtime choice of a training run lives here.
Every field does something or is rejected: unknown names, wrong types and
out-of-range values raise :class:`~nnpflow.errors.ConfigError` naming the
field, and combinations that would leave a field without effect (a cache bound
for a disabled cache, ``prefetch_factor`` without workers, ...) are rejected
too.

Fields (units eV, Å, eV/Å)
--------------------------
``iterations`` (100)
    Epochs of the run.  A resumed run continues until this many epochs are
    done (so an interrupted and resumed run equals an uninterrupted one);
    resuming a finished run with a larger value trains the further epochs.
``method`` (``Adam()``)
    ``Adam(mu, batchsize, weight_decay, beta1, beta2, epsilon)``,
    ``AdamW(...)`` (the same fields; decoupled weight decay, default 0.01) or
    ``SGD(lr, batchsize, momentum, weight_decay)``; ``batchsize`` structures
    per optimiser step (:mod:`nnpflow.training.optimizers` builds them).
``testpercent`` (10)
    Percentage of structures held out for validation when ``train(dataset=...)``
    or ``train(structures=...)`` splits the data (0 to 100; ignored with a
    warning when an explicit ``train_dataset``/``test_dataset`` is given).
``seed`` (42), ``split_seed`` (None = ``seed``)
    ``seed`` draws the initial weights, the batch order of every epoch and the
    force subsets; ``split_seed`` the validation split (committee members share
    one split and differ in ``seed``).
``force_weight`` (0.0)
    alpha in ``loss = (1 - alpha) RMSE(E/N) + alpha RMSE(F)`` (normalised
    targets); 0 trains on energies only.
``force_fraction`` (1.0), ``force_sampling`` ('random')
    Fraction of the force-labelled training structures whose forces enter the
    loss in an epoch (``round(fraction * n)``, at least 1); 'random' draws a new
    subset every epoch, 'fixed' one subset for the whole run.  Structures outside
    the subset still contribute their energies.  With ``force_weight=0`` no
    forces enter the loss, so other values are accepted (as in aenet-python)
    but have no effect; that is logged once (WARNING).
``cache_features`` (False), ``cache_feature_max_entries`` (1024; None = unbounded)
    Energy-view feature cache of the dataset (energy-only training from
    ``structures=...`` uses ``CachedStructureDataset`` instead).
``cache_force_triplets`` (False), ``cache_force_triplet_max_entries`` (256)
    Cache of on-the-fly features + descriptor derivatives of force-view samples
    (structures without persisted derivatives).
``cache_neighbors`` (False), ``cache_neighbor_max_entries`` (512)
    Accepted for aenet-python compatibility, without effect: nnpflow has no
    separate neighbour-list cache (neighbour searches happen inside
    featurisation, whose results the two caches above keep, and persisted
    features/derivatives need no search at all).  ``cache_neighbors=True`` is
    logged once (INFO) saying so; a bound without the flag is rejected like the
    other caches' bounds.
``cache_warmup`` (False)
    Fill the enabled runtime caches before the first epoch (single process; with
    ``num_workers > 0`` the workers own their caches and the warm-up is skipped
    with a log message).
``num_workers`` (0), ``prefetch_factor`` (2), ``persistent_workers`` (True)
    DataLoader worker processes for batch assembly; the last two only apply
    with workers.
``max_energy`` (None), ``atomic_energies`` (None)
    Filter threshold on the referenced energy per atom (eV/atom) and reference
    energies (eV) for datasets the trainer builds from ``structures=...``.
    Prebuilt datasets own their filtering and references: both are then
    ignored with a warning (the aenet PyTorch training docs).  ``atomic_energies="fit"`` fits the
    references by least squares on the training part only
    (:func:`nnpflow.energy_reference.fit_atomic_energies`), for built and
    prebuilt datasets alike, applies them to the training and validation data
    and stores them in the model file (``atomic_energies``, with the fit's
    details under ``atomic_energies_fit``); ``max_energy`` cannot be combined
    with it (the filter would need the references before the split).
``schedule`` (None), ``use_scheduler`` (False), ``schedule_params`` ({}),
``warmup_ratio`` (0.0)
    Learning-rate schedule per optimiser step (:mod:`nnpflow.training.schedules`):
    'constant', 'linear', 'cosine' or 'plateau' (on the validation loss).
    ``use_scheduler=True`` is aenet-python's reduce-on-plateau and means
    ``schedule='plateau'``; ``schedule=None`` means 'plateau' with
    ``use_scheduler`` and 'constant' otherwise.
``ema_decay`` (0.0)
    Exponential moving average of the weights (0 = off); the average is used
    for validation, the best model and the final weights.
``patience`` (None)
    Early stopping after this many epochs without improvement of the
    validation loss (None or 0 = off; needs a validation set).
``max_grad_norm`` (None)
    Gradient clipping by total norm.
``save_best`` (True)
    The potential ends with the weights of the epoch with the best validation
    loss (without validation: of the last epoch).
``checkpoint_dir`` (None), ``checkpoint_interval`` (1), ``max_checkpoints`` (None)
    Write the full training state to ``checkpoint_dir/checkpoint_last.pt`` (and
    ``checkpoint_<epoch>.pt`` every ``checkpoint_interval`` epochs, keeping the
    newest ``max_checkpoints``).  With a checkpoint directory, SIGTERM makes
    training write ``checkpoint_last.pt`` after the current step and raise
    :class:`~nnpflow.training.interrupt.TrainingInterrupted`.
``device`` ('auto'), ``precision`` ('float32')
    Where to train ('auto', 'cpu', 'cuda', 'cuda:N') and the floating-point
    type of the networks and of the force contraction ('float32' or
    'float64'; datasets built from ``structures=...`` use it for their
    features too).  Predictions convert the inputs to the networks' type.
``show_progress`` (False)
    Progress bar over epochs.

The training settings proper translate into
:class:`~nnpflow.training.settings.TrainingSettings` (:meth:`TorchTrainingConfig.settings`,
:meth:`TorchTrainingConfig.from_settings`); docs/training-settings.md documents them
once, with the defaults that differ between this class, the workflow and train.yaml.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from .schedules import SCHEDULE_PARAMS, SCHEDULES
from .settings import (DEFAULTS, SURFACE_DEFAULTS, TrainingSettings, boolean, integer,
                       number)

__all__ = ["Adam", "AdamW", "SGD", "TorchTrainingConfig", "TrainingMethod", "NO_EFFECT"]

log = logging.getLogger(__name__)

#: options of aenet-python's TorchTrainingConfig that nnpflow accepts but that
#: have nothing to do in its design: name -> why (logged once at INFO when set)
NO_EFFECT = {
    "cache_neighbors": (
        "nnpflow keeps no separate neighbour-list cache: neighbour searches happen "
        "inside featurisation, whose results cache_features=True (energy view) and "
        "cache_force_triplets=True (force view) keep, and an HDF5 database with "
        "persisted features/derivatives needs no search at all"),
}

#: messages already logged in this process (each is logged once)
_LOGGED: set[str] = set()


def _log_once(key: str, level: int, message: str) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.log(level, message)


_number = number  # the one implementation (nnpflow.training.settings)
_integer = integer
_boolean = boolean


def _strict_init(cls):
    """Wrap a dataclass ``__init__`` so unknown keyword names raise ``ConfigError``."""
    original = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            import difflib
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                hints.append(f"{k}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(hints)}; "
                              f"fields: {', '.join(names)}")
        if len(args) > len(names):
            raise ConfigError(f"{cls.__name__}: too many positional arguments")
        original(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@dataclass
class TrainingMethod:
    """Base class of the optimisers (``Adam``, ``AdamW``, ``SGD``)."""

    @property
    def method_name(self) -> str:
        raise NotImplementedError

    @property
    def learning_rate(self) -> float:
        raise NotImplementedError

    def _fields(self) -> dict:
        """The fields, without ``amsgrad`` when it is off (so that a run's identity
        and saved configuration read as they did before the field existed)."""
        d = dataclasses.asdict(self)
        if d.get("amsgrad") is False:
            d.pop("amsgrad")
        return d

    def to_dict(self) -> dict:
        return {"method": self.method_name, **self._fields()}

    def optimizer_settings(self) -> tuple[str, dict]:
        """``(optimizer, optimizer_params)`` of :class:`~nnpflow.training.settings.
        TrainingSettings` (the learning rate and batch size are fields of their own)."""
        params = {k: v for k, v in self._fields().items()
                  if k not in ("mu", "lr", "batchsize")}
        return self.method_name, params

    @staticmethod
    def from_settings(settings: TrainingSettings) -> "TrainingMethod":
        """The method of ``settings`` (its optimiser, learning rate and batch size)."""
        cls = {"adam": Adam, "adamw": AdamW, "sgd": SGD}[settings.optimizer]
        rate = "lr" if cls is SGD else "mu"
        return cls(**{rate: settings.learning_rate}, batchsize=settings.batch_size,
                   **dict(settings.optimizer_params))

    def make_optimizer(self, params):
        """The ``torch.optim`` optimiser (:func:`nnpflow.training.optimizers.make_optimizer`)."""
        from .optimizers import make_optimizer
        name, options = self.optimizer_settings()
        return make_optimizer(name, options, params, self.learning_rate)


@_strict_init
@dataclass
class Adam(TrainingMethod):
    """Adam: learning rate ``mu``, ``batchsize`` structures per step, L2
    ``weight_decay``, moment decays ``beta1``/``beta2``, ``epsilon``, and
    ``amsgrad`` (the AMSGrad variant; an nnpflow addition for Enerzyme's files)."""

    mu: float = DEFAULTS["learning_rate"]
    batchsize: int = DEFAULTS["batch_size"]
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self) -> None:
        w = type(self).__name__  # Adam or AdamW
        self.mu = _number(self.mu, f"{w}.mu", minimum=0.0, exclusive_min=True)
        self.batchsize = _integer(self.batchsize, f"{w}.batchsize", 1)
        self.weight_decay = _number(self.weight_decay, f"{w}.weight_decay", minimum=0.0)
        self.beta1 = _number(self.beta1, f"{w}.beta1", minimum=0.0, maximum=1.0,
                             exclusive_max=True)
        self.beta2 = _number(self.beta2, f"{w}.beta2", minimum=0.0, maximum=1.0,
                             exclusive_max=True)
        self.epsilon = _number(self.epsilon, f"{w}.epsilon", minimum=0.0, exclusive_min=True)
        self.amsgrad = boolean(self.amsgrad, f"{w}.amsgrad")

    @property
    def method_name(self) -> str:
        return "adam"

    @property
    def learning_rate(self) -> float:
        return self.mu


@_strict_init
@dataclass
class AdamW(Adam):
    """AdamW (Adam with decoupled weight decay, torch's ``AdamW``): the fields of
    :class:`Adam`, with ``weight_decay`` (default 0.01, torch's) shrinking the
    weights by ``lr * weight_decay`` per step instead of entering the gradient."""

    weight_decay: float = 0.01

    @property
    def method_name(self) -> str:
        return "adamw"


@_strict_init
@dataclass
class SGD(TrainingMethod):
    """Stochastic gradient descent: learning rate ``lr``, ``batchsize``,
    ``momentum``, L2 ``weight_decay``."""

    lr: float = 0.01
    batchsize: int = DEFAULTS["batch_size"]
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.lr = _number(self.lr, "SGD.lr", minimum=0.0, exclusive_min=True)
        self.batchsize = _integer(self.batchsize, "SGD.batchsize", 1)
        self.momentum = _number(self.momentum, "SGD.momentum", minimum=0.0, maximum=1.0,
                                exclusive_max=True)
        self.weight_decay = _number(self.weight_decay, "SGD.weight_decay", minimum=0.0)

    @property
    def method_name(self) -> str:
        return "sgd"

    @property
    def learning_rate(self) -> float:
        return self.lr



#: fields that change how training runs but not its result; a resume may change them
RUNTIME_FIELDS = ("cache_features", "cache_feature_max_entries", "cache_neighbors",
                  "cache_neighbor_max_entries", "cache_force_triplets",
                  "cache_force_triplet_max_entries", "cache_warmup", "num_workers",
                  "prefetch_factor", "persistent_workers", "checkpoint_dir",
                  "checkpoint_interval", "max_checkpoints", "show_progress", "device")

#: this surface's documented defaults where they differ from the one set
_OWN = SURFACE_DEFAULTS["TorchTrainingConfig"]

_CACHE_DEFAULTS = {"cache_feature_max_entries": 1024, "cache_neighbor_max_entries": 512,
                   "cache_force_triplet_max_entries": 256}


@_strict_init
@dataclass
class TorchTrainingConfig:
    """Settings of one ANN training run; see the module docstring for every field.

    Defaults are :data:`nnpflow.training.settings.DEFAULTS`, except where
    aenet-python's PyTorch training documents another
    (``SURFACE_DEFAULTS["TorchTrainingConfig"]``: 100 epochs, energies only, a
    constant rate, no early stopping), set here explicitly from that table."""

    iterations: int = _OWN["epochs"]
    method: TrainingMethod | None = None
    testpercent: float = 10
    seed: int = DEFAULTS["seed"]
    split_seed: int | None = None
    force_weight: float = _OWN["force_weight"]
    force_fraction: float = DEFAULTS["force_fraction"]
    force_sampling: str = DEFAULTS["force_sampling"]
    cache_features: bool = False
    cache_feature_max_entries: int | None = 1024
    cache_neighbors: bool = False
    cache_neighbor_max_entries: int | None = 512
    cache_force_triplets: bool = False
    cache_force_triplet_max_entries: int | None = 256
    cache_warmup: bool = False
    num_workers: int = 0
    prefetch_factor: int = 2
    persistent_workers: bool = True
    max_energy: float | None = None
    atomic_energies: dict | str | None = None
    schedule: str | None = None
    use_scheduler: bool = False
    schedule_params: dict = field(default_factory=dict)
    warmup_ratio: float = DEFAULTS["warmup_ratio"]
    ema_decay: float = DEFAULTS["ema_decay"]
    patience: int | None = _OWN["patience"] or None  # 0 and None: off
    max_grad_norm: float | None = DEFAULTS["max_grad_norm"]
    save_best: bool = True
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 1
    max_checkpoints: int | None = None
    device: str = DEFAULTS["device"]
    precision: str = DEFAULTS["precision"]
    show_progress: bool = False

    def __post_init__(self) -> None:
        self.iterations = _integer(self.iterations, "iterations", 0)
        if self.method is None:
            self.method = Adam()
        if not isinstance(self.method, TrainingMethod):
            raise ConfigError(f"method: expected Adam(...), AdamW(...) or SGD(...), "
                              f"got {self.method!r}")
        self.testpercent = _number(self.testpercent, "testpercent", minimum=0.0, maximum=100.0)
        self.seed = _integer(self.seed, "seed", 0)
        if self.split_seed is not None:
            self.split_seed = _integer(self.split_seed, "split_seed", 0)
        self.force_weight = _number(self.force_weight, "force_weight", minimum=0.0, maximum=1.0)
        self.force_fraction = _number(self.force_fraction, "force_fraction", minimum=0.0,
                                      maximum=1.0, exclusive_min=True)
        if self.force_sampling not in ("random", "fixed"):
            raise ConfigError(f"force_sampling: must be 'random' or 'fixed', "
                              f"got {self.force_sampling!r}")
        if self.force_weight == 0.0 and (self.force_fraction != 1.0
                                         or self.force_sampling != "random"):
            _log_once("force_fraction", logging.WARNING,
                      f"TorchTrainingConfig: force_fraction={self.force_fraction:g}, "
                      f"force_sampling={self.force_sampling!r} have no effect with "
                      "force_weight=0: they select the structures whose forces enter the "
                      "loss, and with force_weight=0 no forces do (set force_weight > 0 to "
                      "train on forces)")
        for name in ("cache_features", "cache_neighbors", "cache_force_triplets", "cache_warmup",
                     "persistent_workers", "use_scheduler", "save_best", "show_progress"):
            setattr(self, name, _boolean(getattr(self, name), name))
        for name, default in _CACHE_DEFAULTS.items():
            value = getattr(self, name)
            if value is not None:
                _integer(value, name, 1)
            flag = name.replace("_max_entries", "s")
            if not getattr(self, flag) and value != default:
                raise ConfigError(f"{name}={value!r} bounds a cache that is disabled "
                                  f"({flag}=False); enable the cache or leave the bound at "
                                  "its default")
        if self.cache_neighbors:
            _log_once("cache_neighbors", logging.INFO,
                      "TorchTrainingConfig: cache_neighbors=True (and "
                      "cache_neighbor_max_entries) accepted, no effect: "
                      + NO_EFFECT["cache_neighbors"])
        if self.cache_warmup and not (self.cache_features or self.cache_force_triplets):
            raise ConfigError("cache_warmup=True needs a runtime cache to fill "
                              "(cache_features or cache_force_triplets)")
        self.num_workers = _integer(self.num_workers, "num_workers", 0)
        self.prefetch_factor = _integer(self.prefetch_factor, "prefetch_factor", 1)
        if self.num_workers == 0 and self.prefetch_factor != 2:
            raise ConfigError("prefetch_factor only applies with num_workers > 0")
        if self.max_energy is not None:
            self.max_energy = _number(self.max_energy, "max_energy")
        if self.atomic_energies == "fit":
            if self.max_energy is not None:
                raise ConfigError("atomic_energies='fit' cannot be combined with max_energy "
                                  "(the filter needs references before the split); give "
                                  "atomic_energies explicitly to filter")
        elif self.atomic_energies is not None:
            if not isinstance(self.atomic_energies, Mapping):
                raise ConfigError(f"atomic_energies: expected {{species: eV}}, "
                                  f"got {self.atomic_energies!r}")
            self.atomic_energies = {str(k): _number(v, f"atomic_energies[{k!r}]")
                                    for k, v in self.atomic_energies.items()}
        if self.schedule is None:
            self.schedule = "plateau" if self.use_scheduler else _OWN["schedule"]
        elif self.use_scheduler and self.schedule != "plateau":
            raise ConfigError(f"use_scheduler=True is the plateau schedule; it contradicts "
                              f"schedule={self.schedule!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: unknown schedule {self.schedule!r}; choose one of "
                              f"{', '.join(SCHEDULES)}")
        if not isinstance(self.schedule_params, Mapping):
            raise ConfigError(f"schedule_params: expected a mapping, got {self.schedule_params!r}")
        self.schedule_params = dict(self.schedule_params)
        for key, value in self.schedule_params.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"schedule_params.{key}: must be finite, got {value!r}")
        unknown = sorted(set(self.schedule_params) - set(SCHEDULE_PARAMS[self.schedule]))
        if unknown:
            raise ConfigError(f"schedule_params: schedule {self.schedule!r} takes no "
                              f"parameter(s) {', '.join(unknown)}; it takes: "
                              f"{', '.join(SCHEDULE_PARAMS[self.schedule]) or 'none'}")
        self.warmup_ratio = _number(self.warmup_ratio, "warmup_ratio", minimum=0.0, maximum=1.0)
        self.ema_decay = _number(self.ema_decay, "ema_decay", minimum=0.0, maximum=1.0,
                                 exclusive_max=True)
        if self.patience is not None:
            self.patience = _integer(self.patience, "patience", 0)
        if self.max_grad_norm is not None:
            self.max_grad_norm = _number(self.max_grad_norm, "max_grad_norm", minimum=0.0,
                                         exclusive_min=True)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            import os
            if not isinstance(self.checkpoint_dir, os.PathLike):
                raise ConfigError(f"checkpoint_dir: expected a path, got {self.checkpoint_dir!r}")
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        self.checkpoint_interval = _integer(self.checkpoint_interval, "checkpoint_interval", 1)
        if self.max_checkpoints is not None:
            self.max_checkpoints = _integer(self.max_checkpoints, "max_checkpoints", 1)
        if self.checkpoint_dir is None and (self.checkpoint_interval != 1
                                            or self.max_checkpoints is not None):
            raise ConfigError("checkpoint_interval/max_checkpoints need checkpoint_dir")
        if not isinstance(self.device, str):
            self.device = str(self.device)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', "
                              f"got {self.device!r}")
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"precision: must be 'float32' or 'float64', "
                              f"got {self.precision!r}")
        self.settings()  # the one settings object's checks of every field

    # -------------------------------------------------------------- helpers
    @property
    def alpha(self) -> float:
        """``force_weight`` (aenet's name)."""
        return self.force_weight

    @property
    def batch_size(self) -> int:
        return int(self.method.batchsize)

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def dtype(self):
        import torch
        return torch.float64 if self.precision == "float64" else torch.float32

    def settings(self) -> TrainingSettings:
        """These settings as the one internal object (the runtime fields --
        caches, checkpoints, progress -- and the data options stay here)."""
        return TrainingSettings(
            epochs=self.iterations, batch_size=self.batch_size,
            learning_rate=self.method.learning_rate, optimizer=self.method.method_name,
            optimizer_params=self.method.optimizer_settings()[1], schedule=self.schedule,
            schedule_params=self.schedule_params, warmup_ratio=self.warmup_ratio,
            ema_decay=self.ema_decay, patience=self.patience or 0,
            max_grad_norm=self.max_grad_norm, seed=self.seed, force_weight=self.force_weight,
            force_fraction=self.force_fraction, force_sampling=self.force_sampling,
            device=self.device, precision=self.precision, num_workers=self.num_workers,
            where="")

    @classmethod
    def from_settings(cls, settings: TrainingSettings, **runtime) -> "TorchTrainingConfig":
        """The configuration of :class:`~nnpflow.training.settings.TrainingSettings`
        (its optimiser as ``method``), with ``runtime`` fields (caches, checkpoints, progress) added and no
        validation split of its own (``testpercent=0``: the caller gives the parts).

        The surfaces that translate through here (the workflow, train.yaml) are
        nnpflow's own grammar and keep its strictness: ``force_fraction`` or
        ``force_sampling`` without force training is refused (the constructor,
        aenet-python's surface, accepts it with a warning)."""
        s = settings
        if s.force_weight == 0.0 and (s.force_fraction != 1.0 or s.force_sampling != "random"):
            w = s.where + "." if s.where else ""
            raise ConfigError(f"{w}force_fraction/{w}force_sampling select the structures whose "
                              f"forces enter the loss; with {w}force_weight=0 no forces do (set "
                              "force_weight > 0 or leave them at their defaults)")
        values = dict(
            iterations=s.epochs, method=TrainingMethod.from_settings(s),
            testpercent=0, seed=s.seed, force_weight=s.force_weight,
            force_fraction=s.force_fraction, force_sampling=s.force_sampling,
            schedule=s.schedule, schedule_params=dict(s.schedule_params),
            warmup_ratio=s.warmup_ratio, ema_decay=s.ema_decay, patience=s.patience or None,
            max_grad_norm=s.max_grad_norm, num_workers=s.num_workers, device=s.device,
            precision=s.precision)
        values.update(runtime)
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-compatible form (``method`` as ``{"method": "adam", ...}``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, TrainingMethod) else (
                dict(v) if isinstance(v, dict) else v)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TorchTrainingConfig":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        method = data.get("method")
        if isinstance(method, Mapping):
            m = dict(method)
            name = m.pop("method", "adam")
            if name == "adam":
                data["method"] = Adam(**m)
            elif name == "adamw":
                data["method"] = AdamW(**m)
            elif name == "sgd":
                data["method"] = SGD(**m)
            else:
                raise ConfigError(f"method: unknown optimiser {name!r} (adam, adamw or sgd)")
        return cls(**data)

    def identity(self) -> dict:
        """The settings that determine the training result (what a resume compares)."""
        d = self.to_dict()
        out = {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}
        if self.schedule in ("constant", "plateau") and self.warmup_ratio == 0.0:
            # the number of epochs shapes no learning-rate curve: a finished run
            # may be resumed with more epochs
            out.pop("iterations")
        return out

    def replace(self, **changes) -> "TorchTrainingConfig":
        """A copy with ``changes`` applied (validated)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(changes)
        return type(self)(**d)
