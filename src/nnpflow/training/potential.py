"""``TorchANNPotential``: the aenet-style potential's API (the aenet PyTorch training docs).

A thin facade over the shared parts:

* the model and its file: :class:`nnpflow.models.ann_model.ANNModel` (descriptor
  features + per-species networks; model-file schema ``nnpflow.ann_potential``,
  documented there; every model file loads with
  :func:`nnpflow.models.registry.load_model`);
* training: :class:`nnpflow.training.ann_trainer.ANNTrainer` with
  :class:`~nnpflow.training.config.TorchTrainingConfig`;
* predictions: :class:`~nnpflow.models.prediction_result.PredictionResult` and
  metrics :func:`nnpflow.evaluation.metrics.prediction_metrics`;
* the history file: :mod:`nnpflow.history`.

A file of another schema or a newer version raises
:class:`~nnpflow.errors.SchemaError`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError, SchemaError
from ..evaluation.metrics import prediction_metrics
from ..history import history_csv, read_history_csv
from ..models.ann_model import SCHEMA as ANN_SCHEMA
from ..models.ann_model import SCHEMA_VERSION as ANN_SCHEMA_VERSION
from ..models.ann_model import ANNModel, as_structure_list, is_feature_dataset
from ..models.model_file import save_torch_file
from ..models.prediction_result import PredictionResult
from ..safe_write import write_json, write_text

log = logging.getLogger("nnpflow.training.ann")

__all__ = ["TorchANNPotential", "PredictionResult", "ANN_SCHEMA", "ANN_SCHEMA_VERSION",
           "as_structure_list", "prediction_metrics", "history_csv", "read_history_csv"]


def _delegate(name: str, doc: str) -> property:
    def get(self):
        return getattr(self.model, name)

    def set_(self, value):
        setattr(self.model, name, value)
    return property(get, set_, doc=doc)


class TorchANNPotential:
    """Per-species atomic networks on a ``ChebyshevDescriptor`` (the aenet PyTorch training docs).

    Parameters
    ----------
    arch : ``{species: [(n_nodes, activation), ...]}``, hidden layers of each
        species' network (the linear output node is implicit).
    descriptor : the ``ChebyshevDescriptor``; every species needs a network.

    ``model`` is the :class:`~nnpflow.models.ann_model.ANNModel` (an ``nn.Module``);
    ``descriptor``, ``architecture``, ``net``, ``energy_normalization``,
    ``atomic_energies`` and ``atomic_energies_fit`` are its attributes.
    """

    descriptor = _delegate("descriptor", "the ChebyshevDescriptor")
    architecture = _delegate("architecture", "{species: [(n_nodes, activation), ...]}")
    net = _delegate("net", "the per-species AtomicNetworks")
    energy_normalization = _delegate("energy_normalization",
                                     "EnergyNormalization (shift, scale in eV/atom)")
    atomic_energies = _delegate("atomic_energies", "{species: eV} reference energies")
    atomic_energies_fit = _delegate("atomic_energies_fit",
                                    "how atomic_energies were fitted (None when given)")

    def __init__(self, arch: Mapping[str, Sequence], descriptor: Any):
        self.model = ANNModel(arch, descriptor)
        self.history: list[dict] = []
        self.training_info: dict = {}

    def __repr__(self) -> str:
        arch = ", ".join(f"{s}: {'-'.join(f'{n}{a}' for n, a in layers) or 'linear'}"
                         for s, layers in self.architecture.items())
        return (f"TorchANNPotential({arch}; {self.descriptor.n_features} features, "
                f"{self.net.n_parameters()} parameters)")

    # --------------------------------------------------------------- basics
    @property
    def species(self) -> list[str]:
        return self.model.species

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "TorchANNPotential":
        """Move the networks (in place); returns ``self``."""
        self.net.to(device=device, dtype=dtype)
        return self

    def architecture_json(self) -> dict:
        from ..models.ann import architecture_json
        return architecture_json(self.architecture)

    # ------------------------------------------------------------ the file
    def to_payload(self) -> dict:
        """The model-file dict (:mod:`nnpflow.models.ann_model`)."""
        return self.model.to_payload(self.history, self.training_info)

    def load_payload_state(self, payload: Mapping[str, Any]) -> None:
        """Take weights, normalisation, references and history from a model-file
        dict whose architecture and descriptor equal this potential's."""
        self.model.load_payload_state(payload)
        self.history = [dict(r) for r in payload.get("history", [])]
        self.training_info = dict(payload.get("training") or {})

    @classmethod
    def from_model(cls, model: ANNModel, payload: Mapping[str, Any] | None = None
                   ) -> "TorchANNPotential":
        """The facade of an :class:`ANNModel` (history and training record from
        ``payload``, a model-file dict, when given)."""
        pot = cls.__new__(cls)
        pot.model = model
        payload = payload or {}
        pot.history = [dict(r) for r in payload.get("history", [])]
        pot.training_info = dict(payload.get("training") or {})
        return pot

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], device: str | torch.device = "cpu"
                     ) -> "TorchANNPotential":
        return cls.from_model(ANNModel.from_payload(payload, device), payload)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file (atomically)."""
        save_torch_file(path, self.to_payload())

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> "TorchANNPotential":
        """Load a model file written by :meth:`save` (``weights_only=True``)."""
        from ..models.registry import read_model_file
        payload = read_model_file(path, "ann")[1]
        try:
            return cls.from_payload(payload, device)
        except SchemaError as exc:
            raise SchemaError(f"{os.fspath(path)}: {exc}") from None

    # ---------------------------------------------------------------- aenet
    def to_aenet(self, directory: str | os.PathLike, structures: Any = None,
                 ascii: bool = True) -> dict:
        """Write aenet potential files (``<S>.nn``, ``<S>.nn.ascii``) and a
        ``predict.in`` for ``structures`` into ``directory``; see
        :func:`nnpflow.aenet.export_aenet` (raises ``AenetExportError`` for what
        aenet cannot represent)."""
        from ..aenet.convert import export_aenet
        return export_aenet(self, directory, structures=structures, ascii=ascii)

    @classmethod
    def from_aenet(cls, files: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
                   ) -> "TorchANNPotential":
        """A potential from aenet potential files, one per species (binary
        ``*.nn`` or ASCII); see :func:`nnpflow.aenet.potential_from_aenet`."""
        from ..aenet.convert import model_from_aenet
        model, training_info = model_from_aenet(list(files), device=device)
        return cls.from_model(model, {"training": training_info})

    def history_csv(self) -> str:
        """The training history as CSV text (one row per epoch)."""
        return history_csv(self.history)

    def export_history(self, csv_path: str | os.PathLike | None = None,
                       json_path: str | os.PathLike | None = None) -> None:
        """Write the history as CSV and/or JSON (atomically)."""
        if csv_path is not None:
            write_text(csv_path, self.history_csv())
        if json_path is not None:
            write_json(json_path, self.history)

    # ------------------------------------------------------------ training
    def train(self, structures: Any = None, dataset: Any = None, train_dataset: Any = None,
              test_dataset: Any = None, config: Any = None,
              resume_from: str | os.PathLike | None = None, *, force_resume: bool = False,
              resume_may_change: Sequence[str] = (),
              on_step: Callable[[int, int], None] | None = None,
              interrupt: Any = None) -> list[dict]:
        """Train the networks; returns the history (one dict per epoch).

        Inputs, by precedence (the aenet PyTorch training docs): an explicit ``train_dataset`` (and
        optional ``test_dataset``, the validation set); else ``dataset``, split by
        ``config.testpercent``; else raw ``structures`` (paths, ``ase.Atoms``,
        ``Structure``s), from which a ``CachedStructureDataset`` is built when
        ``cache_features=True`` and ``force_weight=0``, else a
        ``StructureDataset`` (with ``config.max_energy`` and
        ``config.atomic_energies``).  ``resume_from``: a checkpoint to continue
        (refused when the configuration or data changed unless
        ``force_resume``; identity paths in ``resume_may_change``, e.g.
        ``"config.iterations"``, may differ).  ``on_step(epoch, step)`` runs after
        every step.  ``interrupt``: a caller's entered
        :class:`~nnpflow.training.interrupt.GracefulInterrupt` to stop on (else
        training installs its own when it writes checkpoints).
        """
        from .ann_trainer import ANNTrainer
        from .config import TorchTrainingConfig
        cfg = config if config is not None else TorchTrainingConfig()
        if not isinstance(cfg, TorchTrainingConfig):
            raise ConfigError(f"config: expected a TorchTrainingConfig, got {type(cfg).__name__}")
        train, validation = self._training_data(structures, dataset, train_dataset, test_dataset,
                                                cfg)
        if cfg.atomic_energies == "fit" and resume_from is None:
            from ..datasets import fit_reference_energies
            fit = fit_reference_energies(train, validation)
            self.atomic_energies_fit = {"method": "least squares on the training part",
                                        **fit}
            log.info("atomic_energies: fit on %d training structures (rank %d): %s; per-atom "
                     "RMSE left %.4g eV/atom", fit["n_structures"], fit["rank"],
                     ", ".join(f"{k} {v:.6g} eV" for k, v in fit["atomic_energies"].items()),
                     fit["rmse_per_atom"])
        elif cfg.atomic_energies == "fit":
            from ..datasets import fit_reference_energies
            fit_reference_energies(train, validation)   # the checkpoint's data, same fit
        trainer = ANNTrainer(self, cfg, train, validation, resume_from=resume_from,
                             force_resume=force_resume,
                             resume_may_change=tuple(resume_may_change), on_step=on_step,
                             interrupt=interrupt)
        return trainer.run()

    def _training_data(self, structures, dataset, train_dataset, test_dataset, cfg):
        from ..datasets import CachedStructureDataset, StructureDataset, train_test_split
        given = [n for n, v in (("train_dataset", train_dataset), ("dataset", dataset),
                                ("structures", structures)) if v is not None]
        if not given:
            if test_dataset is not None:
                raise ConfigError("test_dataset needs train_dataset")
            raise ConfigError("train() needs structures, dataset or train_dataset")
        if len(given) > 1:
            warnings.warn(f"train(): {given[0]} takes precedence; {', '.join(given[1:])} "
                          "ignored", stacklevel=3)
        if test_dataset is not None and train_dataset is None:
            raise ConfigError("test_dataset needs train_dataset (an explicit split)")
        prebuilt = train_dataset is not None or dataset is not None
        fit = cfg.atomic_energies == "fit"
        if prebuilt:
            ignored = [n for n, v in (("max_energy", cfg.max_energy),
                                      ("atomic_energies", None if fit else cfg.atomic_energies))
                       if v is not None]
            if ignored:
                warnings.warn(f"TorchTrainingConfig.{' and '.join(ignored)} only apply when "
                              "train() builds datasets from structures=...; prebuilt datasets "
                              "own their filtering and reference energies, so they are ignored",
                              stacklevel=3)
        if train_dataset is not None:
            if cfg.testpercent:
                log.info("explicit train/test datasets: testpercent=%g not used",
                         cfg.testpercent)
            return train_dataset, test_dataset
        if dataset is None:
            kwargs = dict(max_energy=cfg.max_energy,
                          atomic_energies=None if fit else cfg.atomic_energies, dtype=cfg.dtype)
            if cfg.cache_features and cfg.force_weight == 0:
                dataset = CachedStructureDataset(structures, self.descriptor,
                                                 show_progress=cfg.show_progress, **kwargs)
            else:
                dataset = StructureDataset(structures, self.descriptor,
                                           show_progress=cfg.show_progress, **kwargs)
            if getattr(dataset, "filtered", None):
                log.info("max_energy: %d structure(s) left out", len(dataset.filtered))
        if cfg.testpercent > 0:
            return train_test_split(dataset, cfg.testpercent / 100.0,
                                    seed=cfg.effective_split_seed)
        return dataset, None

    # ---------------------------------------------------------- prediction
    def predict_batch(self, batch, eval_forces: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energies (B,) in eV (float64) and forces (A_f, 3) in eV/Å of the
        force-view atoms of a collated ``Batch`` (None without them)."""
        out = self.model(batch, eval_forces)
        return out["E"], out.get("Fa")

    def predict(self, structures: Any, eval_forces: bool = True, batch_size: int = 32,
                show_progress: bool = False) -> PredictionResult:
        """Energies (eV) and forces (eV/Å) of structures: file paths, ``ase.Atoms``,
        ``nnpflow.Structure`` objects or source collections (or one of them)."""
        structs = as_structure_list(structures, self.descriptor)
        return self.model.predict_structures(structs, eval_forces, batch_size, show_progress)

    def predict_dataset(self, dataset: Any, eval_forces: bool = True, batch_size: int = 64,
                        show_progress: bool = False) -> PredictionResult:
        """Predictions for a aenet-style dataset or ``Subset``, reusing its persisted
        or cached features (and derivatives of structures with reference forces;
        forces of other structures are featurised on the fly)."""
        return self.model.predict_dataset(dataset, eval_forces, batch_size, show_progress)

    def evaluate(self, data: Any, batch_size: int = 64, eval_forces: bool = True) -> dict:
        """Errors against the data's reference labels: a dataset/``Subset``
        (persisted features reused) or structures (paths, ``ase.Atoms``,
        ``Structure``s).  See :func:`prediction_metrics` for the keys."""
        if is_feature_dataset(data):
            result = self.predict_dataset(data, eval_forces=eval_forces, batch_size=batch_size)
        else:
            result = self.predict(data, eval_forces=eval_forces, batch_size=batch_size)
        return prediction_metrics(result)
