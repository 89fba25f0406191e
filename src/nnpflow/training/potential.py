"""``TorchANNPotential``: aenet-style atomic neural-network potentials (spec 000).

The energy of a structure is a sum of atomic energies, each from the network of
the atom's species (:class:`nnpflow.models.ann.AtomicNetworks`) on the atom's
Chebyshev descriptor features::

    E = sum_i [scale * eps_i + shift] + sum_i E_ref(species_i)          (eV)
    F = -dE/dR = scale * derivatives.forces(d(sum eps)/dG)             (eV/Å)

with ``eps_i = net_{s_i}((G_i - mean_s) / std_s)``, per-species feature
statistics and the energy ``shift``/``scale`` (eV/atom) computed on the
training split (:mod:`nnpflow.training.normalization`) and the atomic reference
energies ``E_ref`` of the training data.

Model file (``save`` / ``from_file``): one ``torch.save``'d dict of plain
tensors and JSON-compatible values, read with ``torch.load(weights_only=True)``::

    {"schema": "nnpflow.ann_potential", "schema_version": 1,
     "architecture": {species: [[n_nodes, activation], ...]},
     "descriptor": ChebyshevDescriptor.config(), "descriptor_sha256": str,
     "dtype": "float32" | "float64",
     "normalization": {"energy_shift": eV/atom, "energy_scale": eV/atom},
     "atomic_energies": {species: eV},
     "atomic_energies_fit": None | {"method", "atomic_energies", "n_structures", "rank",
                                    "rmse_per_atom"},   # when the references were fitted
     "state_dict": {...},        # nets.<t>.<layer>.weight/bias, feature_mean/feature_std (T, F)
     "history": [{epoch, lr, train_loss, ...}, ...],
     "training": {...},          # epochs, best epoch, config, data identity
     "metadata": {"created_by": "nnpflow <version>"}}

A file of another schema or a newer version raises
:class:`~nnpflow.errors.SchemaError`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..datasets.split import subset_indices
from ..errors import ConfigError, SchemaError
from ..models.ann import AtomicNetworks, architecture_json, parse_architecture
from ..models.model_file import dtype_from_name, dtype_name, read_torch_file, save_torch_file
from ..safe_write import write_json, write_text
from .normalization import EnergyNormalization

log = logging.getLogger("nnpflow.training.ann")

ANN_SCHEMA = "nnpflow.ann_potential"
ANN_SCHEMA_VERSION = 1


@dataclass
class PredictionResult:
    """Predictions for S structures (eV, Å, eV/Å).

    ``energies`` (S,) total energies; ``forces`` one (N_s, 3) array per
    structure (``None`` without force evaluation); ``n_atoms`` (S,);
    ``names`` source labels; ``species`` element symbols per structure.
    ``reference_energies`` (S,) (NaN where unknown) and ``reference_forces``
    (``None`` entries where unknown) hold the data's labels when the inputs
    had them.  Committees add ``energy_std`` (S,) and ``forces_std`` (spread
    of the members, population std) and ``member_energies`` (M, S).
    """

    energies: np.ndarray
    forces: list | None
    n_atoms: np.ndarray
    names: list[str]
    species: list[list[str]]
    reference_energies: np.ndarray | None = None
    reference_forces: list | None = None
    energy_std: np.ndarray | None = None
    forces_std: list | None = None
    member_energies: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def energies_per_atom(self) -> np.ndarray:
        return self.energies / self.n_atoms


def as_structure_list(obj: Any, descriptor: Any) -> list:
    """``Structure``s from one or many file paths, ``ase.Atoms``, ``Structure``s or
    source collections (labels need not be unique); species outside the
    descriptor raise ``InputError`` naming the structure."""
    from ase import Atoms

    from ..errors import InputError
    from ..io import read_structures
    from ..sources import SourceCollection
    from ..structure import Structure
    items = [obj] if isinstance(obj, (str, os.PathLike, Structure, Atoms, SourceCollection)) \
        else list(obj)
    out = []
    for item in items:
        if isinstance(item, Structure):
            out.append(item)
        elif isinstance(item, Atoms):
            out.append(Structure.from_ase(item))
        elif isinstance(item, (str, os.PathLike)):
            out.extend(read_structures(os.fspath(item)))
        elif isinstance(item, SourceCollection):
            out.extend(item.iter_structures())
        else:
            raise TypeError(f"cannot predict {type(item).__name__}: pass file paths, ase.Atoms "
                            "or nnpflow.Structure objects")
    allowed = set(descriptor.species)
    for s in out:
        extra = sorted(set(s.species) - allowed)
        if extra:
            raise InputError(f"species {', '.join(extra)} not in the potential's species "
                             f"{list(descriptor.species)}", source=s.name or None)
    return out


def _structure_of(base: Any, i: int):
    """Structure ``i`` of a spec-000 dataset (in-memory or HDF5)."""
    if hasattr(base, "structures") and isinstance(base.structures, list):
        return base.structures[i]
    return base.structure(i)


def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class TorchANNPotential:
    """Per-species atomic networks on a ``ChebyshevDescriptor`` (see the module doc).

    Parameters
    ----------
    arch : ``{species: [(n_nodes, activation), ...]}``, hidden layers of each
        species' network (the linear output node is implicit).
    descriptor : the ``ChebyshevDescriptor``; every species needs a network.
    """

    def __init__(self, arch: Mapping[str, Sequence], descriptor: Any):
        self.descriptor = descriptor
        self.architecture = parse_architecture(arch, descriptor.species)
        self.net = AtomicNetworks(descriptor.species, descriptor.n_features, self.architecture)
        self.energy_normalization = EnergyNormalization()
        self.atomic_energies: dict[str, float] = {}
        #: how ``atomic_energies`` were fitted (``None`` when given or absent)
        self.atomic_energies_fit: dict | None = None
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
        return list(self.descriptor.species)

    @property
    def device(self) -> torch.device:
        return self.net.feature_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.feature_mean.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "TorchANNPotential":
        """Move the networks (in place); returns ``self``."""
        self.net.to(device=device, dtype=dtype)
        return self

    def architecture_json(self) -> dict:
        return architecture_json(self.architecture)

    # ------------------------------------------------------------ the file
    def to_payload(self) -> dict:
        """The model-file dict (see the module docstring)."""
        from .. import __version__
        return {
            "schema": ANN_SCHEMA, "schema_version": ANN_SCHEMA_VERSION,
            "architecture": self.architecture_json(),
            "descriptor": self.descriptor.config(),
            "descriptor_sha256": self.descriptor.fingerprint,
            "dtype": dtype_name(self.dtype),
            "normalization": {"energy_shift": float(self.energy_normalization.shift),
                              "energy_scale": float(self.energy_normalization.scale)},
            "atomic_energies": {str(k): float(v) for k, v in self.atomic_energies.items()},
            "atomic_energies_fit": (None if self.atomic_energies_fit is None
                                    else dict(self.atomic_energies_fit)),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "history": [dict(r) for r in self.history],
            "training": dict(self.training_info),
            "metadata": {"created_by": f"nnpflow {__version__}"},
        }

    def load_payload_state(self, payload: Mapping[str, Any]) -> None:
        """Take weights, normalisation, references and history from a model-file
        dict whose architecture and descriptor equal this potential's."""
        if payload.get("architecture") != self.architecture_json():
            raise ValueError(f"architecture {payload.get('architecture')} differs from "
                             f"{self.architecture_json()}")
        if payload.get("descriptor") != self.descriptor.config():
            raise ValueError(f"descriptor {payload.get('descriptor')} differs from "
                             f"{self.descriptor.config()}")
        self.net.to(dtype=dtype_from_name(payload.get("dtype", "float64")))
        self.net.load_state_dict(payload["state_dict"])
        norm = payload["normalization"]
        self.energy_normalization = EnergyNormalization(float(norm["energy_shift"]),
                                                        float(norm["energy_scale"]))
        self.atomic_energies = {str(k): float(v) for k, v in
                                dict(payload.get("atomic_energies") or {}).items()}
        fit = payload.get("atomic_energies_fit")
        self.atomic_energies_fit = dict(fit) if fit else None
        self.history = [dict(r) for r in payload.get("history", [])]
        self.training_info = dict(payload.get("training") or {})

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], device: str | torch.device = "cpu"
                     ) -> "TorchANNPotential":
        from ..descriptors import ChebyshevDescriptor
        from ..models.model_checks import (check_ann_numbers, check_descriptor_fingerprint,
                                           check_state_dict, expected_shapes)
        try:
            # (models.model_checks: everything is checked before a weight is allocated)
            check_descriptor_fingerprint(payload)
            descriptor = ChebyshevDescriptor.from_config(payload["descriptor"], device=device)
            arch = {s: [tuple(layer) for layer in layers]
                    for s, layers in payload["architecture"].items()}
            check_state_dict(payload["state_dict"], expected_shapes(
                lambda: AtomicNetworks(descriptor.species, descriptor.n_features,
                                       parse_architecture(arch, descriptor.species))))
            check_ann_numbers(payload, list(descriptor.species))
            pot = cls(arch, descriptor)
            pot.load_payload_state(payload)
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise SchemaError(f"malformed ANN potential ({type(exc).__name__}: {exc})") from None
        return pot.to(device=device)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file (atomically); see the module docstring."""
        save_torch_file(path, self.to_payload())

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> "TorchANNPotential":
        """Load a model file written by :meth:`save` (``weights_only=True``)."""
        payload = read_torch_file(path, ANN_SCHEMA, ANN_SCHEMA_VERSION, map_location="cpu")
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
        from ..aenet import export_aenet
        return export_aenet(self, directory, structures=structures, ascii=ascii)

    @classmethod
    def from_aenet(cls, files: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
                   ) -> "TorchANNPotential":
        """A potential from aenet potential files, one per species (binary
        ``*.nn`` or ASCII); see :func:`nnpflow.aenet.potential_from_aenet`."""
        from ..aenet import potential_from_aenet
        return potential_from_aenet(list(files), device=device)

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

        Inputs, by precedence (spec 000): an explicit ``train_dataset`` (and
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
    def _reference_vector(self) -> torch.Tensor:
        """(T,) atomic reference energies in descriptor order (0 without references)."""
        if not self.atomic_energies:
            return torch.zeros(len(self.species), dtype=torch.float64)
        # a species without a reference gives NaN, reported by predict_batch when it occurs
        vals = [self.atomic_energies.get(s, float("nan")) for s in self.species]
        return torch.tensor(vals, dtype=torch.float64)

    def predict_batch(self, batch, eval_forces: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energies (B,) in eV (float64) and forces (A_f, 3) in eV/Å of the
        force-view atoms of a collated ``Batch`` (None without them)."""
        net = self.net
        device, dtype = self.device, self.dtype
        batch = batch.to(device)
        norm = self.energy_normalization
        feats = batch.features.to(dtype)
        with_forces = eval_forces and batch.derivatives is not None
        was_training = net.training
        net.eval()
        try:
            with torch.enable_grad() if with_forces else torch.no_grad():
                if with_forces:
                    feats = feats.detach().requires_grad_(True)
                eps = net(feats, batch.species_index, getattr(batch, "species_groups", None))
                forces = None
                if with_forces:
                    (grad,) = torch.autograd.grad(eps.sum(), feats)
                    forces = batch.derivatives.forces(
                        grad.index_select(0, batch.force_atom_index)).detach().double()
                    forces = forces * norm.scale
        finally:
            net.train(was_training)
        b = batch.n_structures
        sums = torch.zeros(b, dtype=torch.float64, device=device).index_add(
            0, batch.atom_structure, eps.detach().double())
        refs = self._reference_vector().to(device).index_select(0, batch.species_index)
        ref_sum = torch.zeros(b, dtype=torch.float64, device=device).index_add(
            0, batch.atom_structure, refs)
        if bool(torch.isnan(ref_sum).any()):
            missing = sorted(set(self.species) - set(self.atomic_energies))
            raise ConfigError(f"the potential has no atomic reference energy for "
                              f"{', '.join(missing)}, which occur in the structures")
        energies = norm.scale * sums + norm.shift * batch.n_atoms.double() + ref_sum
        return energies, forces

    def predict(self, structures: Any, eval_forces: bool = True, batch_size: int = 32,
                show_progress: bool = False) -> PredictionResult:
        """Energies (eV) and forces (eV/Å) of structures: file paths, ``ase.Atoms``,
        ``nnpflow.Structure`` objects or source collections (or one of them)."""
        structs = as_structure_list(structures, self.descriptor)
        return self._predict_structures(structs, eval_forces, batch_size, show_progress)

    def _predict_structures(self, structs: list, eval_forces: bool, batch_size: int,
                            show_progress: bool = False) -> PredictionResult:
        from ..datasets.base import structure_sample
        from ..datasets.collate import collate_samples
        from ..database.featurize import split_with_derivatives
        lookup = self.descriptor.species_to_idx
        energies, forces = [], []
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(structs), unit="structure", desc="predicting")
        for lo, hi in _chunks(len(structs), max(1, int(batch_size))):
            chunk = structs[lo:hi]
            if eval_forces:
                feats, ders = split_with_derivatives(
                    self.descriptor.featurize_batch_with_derivatives(chunk), len(chunk))
            else:
                feats, ders = self.descriptor.featurize_batch(chunk), [None] * len(chunk)
            samples = [structure_sample(k, s, f.detach(),
                                        np.array([lookup[x] for x in s.species]), 0.0,
                                        f.dtype, eval_forces, d)
                       for k, (s, f, d) in enumerate(zip(chunk, feats, ders))]
            e, f = self.predict_batch(collate_samples(samples), eval_forces)
            energies.append(e.cpu().numpy())
            if eval_forces:
                counts = [s.n_atoms for s in chunk]
                forces.extend(np.split(f.cpu().numpy(), np.cumsum(counts)[:-1]))
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        return PredictionResult(
            energies=np.concatenate(energies) if energies else np.zeros(0),
            forces=forces if eval_forces else None,
            n_atoms=np.array([s.n_atoms for s in structs], dtype=np.int64),
            names=[s.name for s in structs], species=[list(s.species) for s in structs],
            reference_energies=np.array([np.nan if s.energy is None else s.energy
                                         for s in structs], dtype=np.float64),
            reference_forces=[None if s.forces is None else np.array(s.forces)
                              for s in structs])

    def predict_dataset(self, dataset: Any, eval_forces: bool = True, batch_size: int = 64,
                        show_progress: bool = False) -> PredictionResult:
        """Predictions for a spec-000 dataset or ``Subset``, reusing its persisted
        or cached features (and derivatives of structures with reference forces;
        forces of other structures are featurised on the fly)."""
        base, idx = subset_indices(dataset)
        if base.descriptor.fingerprint != self.descriptor.fingerprint:
            from ..errors import DescriptorMismatchError
            raise DescriptorMismatchError(
                f"the dataset's descriptor {base.descriptor.config()} differs from the "
                f"potential's {self.descriptor.config()}")
        force_capable = getattr(base, "force_capable", True)
        energies = np.zeros(len(idx))
        forces: list = [None] * len(idx)
        ref_f: list = [None] * len(idx)
        names: list = [None] * len(idx)
        species: list = [None] * len(idx)
        symbols = np.array(self.species)
        n_atoms = np.asarray(base.n_atoms(), dtype=np.int64)[idx]
        missing: list[int] = []
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(idx), unit="structure", desc="predicting")
        for lo, hi in _chunks(len(idx), max(1, int(batch_size))):
            batch = base.get_batch(idx[lo:hi], use_forces=bool(eval_forces and force_capable))
            e, f = self.predict_batch(batch, eval_forces)
            energies[lo:hi] = e.cpu().numpy()
            counts = batch.n_atoms.tolist()
            per_atom_species = np.split(symbols[batch.species_index.numpy()],
                                        np.cumsum(counts)[:-1])
            ref_forces = np.split(batch.forces.double().numpy(), np.cumsum(counts)[:-1])
            use = batch.use_forces.tolist()
            f_parts = (np.split(f.cpu().numpy(), np.cumsum([c for c, u in zip(counts, use)
                                                            if u])[:-1])
                       if f is not None else [])
            it = iter(f_parts)
            for k in range(hi - lo):
                names[lo + k] = batch.names[k]
                species[lo + k] = per_atom_species[k].tolist()
                if bool(batch.has_forces[k]):
                    ref_f[lo + k] = ref_forces[k]
                if eval_forces:
                    if use[k]:
                        forces[lo + k] = next(it)
                    else:
                        missing.append(lo + k)
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        if missing:  # no stored view with derivatives: featurise those on the fly
            extra = self._predict_structures([_structure_of(base, int(idx[k])) for k in missing],
                                             True, batch_size)
            for k, f in zip(missing, extra.forces):
                forces[k] = f
        ref_e = np.asarray(base.energies(), dtype=np.float64)[idx]
        return PredictionResult(energies=energies, forces=forces if eval_forces else None,
                                n_atoms=n_atoms, names=names, species=species,
                                reference_energies=ref_e, reference_forces=ref_f)

    def evaluate(self, data: Any, batch_size: int = 64, eval_forces: bool = True) -> dict:
        """Errors against the data's reference labels: a dataset/``Subset``
        (persisted features reused) or structures (paths, ``ase.Atoms``,
        ``Structure``s).  See :func:`prediction_metrics` for the keys."""
        if _is_dataset(data):
            result = self.predict_dataset(data, eval_forces=eval_forces, batch_size=batch_size)
        else:
            result = self.predict(data, eval_forces=eval_forces, batch_size=batch_size)
        return prediction_metrics(result)


def _is_dataset(obj: Any) -> bool:
    from torch.utils.data import Dataset
    return isinstance(obj, Dataset) and hasattr(subset_indices(obj)[0], "get_batch")


def prediction_metrics(result: PredictionResult) -> dict:
    """Error metrics of a :class:`PredictionResult` with references.

    Keys: ``n_structures``, ``n_structures_with_energy``,
    ``n_structures_with_forces``, ``energy_rmse_per_atom``,
    ``energy_mae_per_atom`` (eV/atom), ``energy_rmse``, ``energy_mae`` (eV),
    ``force_rmse``, ``force_mae`` (eV/Å over all force components of structures
    with reference forces; None without), ``n_force_components`` and
    ``per_species`` ({symbol: {n_atoms, force_rmse, force_mae}}), from
    :func:`nnpflow.evaluation.metrics.energy_force_metrics`.
    """
    from ..evaluation.metrics import energy_force_metrics
    if result.reference_energies is None:
        raise ValueError("the prediction has no reference energies to compare with")
    ref_e = result.reference_energies
    has_e = np.isfinite(ref_e)
    out: dict[str, Any] = {"n_structures": len(result),
                           "n_structures_with_energy": int(has_e.sum())}
    if has_e.any():
        m = energy_force_metrics(result.energies[has_e], ref_e[has_e], result.n_atoms[has_e])
        for key in ("energy_rmse_per_atom", "energy_mae_per_atom", "energy_rmse", "energy_mae"):
            out[key] = m[key]
    else:
        out.update(energy_rmse_per_atom=None, energy_mae_per_atom=None, energy_rmse=None,
                   energy_mae=None)
    f_idx = []
    if result.forces is not None and result.reference_forces is not None:
        f_idx = [k for k in range(len(result))
                 if result.reference_forces[k] is not None and result.forces[k] is not None]
    out["n_structures_with_forces"] = len(f_idx)
    if f_idx:
        e = result.energies[f_idx]
        m = energy_force_metrics(e, e, result.n_atoms[f_idx],
                                 [result.forces[k] for k in f_idx],
                                 [result.reference_forces[k] for k in f_idx],
                                 species=[result.species[k] for k in f_idx])
        out.update(force_rmse=m["force_rmse"], force_mae=m["force_mae"],
                   n_force_components=m["n_force_components"], per_species=m["per_species"])
    else:
        out.update(force_rmse=None, force_mae=None, n_force_components=0, per_species={})
    return out


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of history rows (columns in first-seen order; empty cells for None)."""
    columns = list(dict.fromkeys(k for row in history for k in row)) or ["epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a history CSV (numbers parsed; empty cells None)."""
    out = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for k, v in row.items():
                if v == "":
                    parsed[k] = None
                elif v in ("True", "False"):
                    parsed[k] = v == "True"
                else:
                    try:
                        parsed[k] = int(v)
                    except ValueError:
                        try:
                            parsed[k] = float(v)
                        except ValueError:
                            parsed[k] = v
            out.append(parsed)
    return out

