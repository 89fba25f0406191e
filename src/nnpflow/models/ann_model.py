"""The aenet-style ANN family: descriptor features + per-species networks.

The energy of a structure is a sum of atomic energies, each from the network of
the atom's species (:class:`nnpflow.models.ann.AtomicNetworks`) on the atom's
Chebyshev descriptor features::

    E = sum_i [scale * eps_i + shift] + sum_i E_ref(species_i)          (eV)
    F = -dE/dR = scale * derivatives.forces(d(sum eps)/dG)             (eV/Å)

with ``eps_i = net_{s_i}((G_i - mean_s) / std_s)``, per-species feature
statistics and the energy ``shift``/``scale`` (eV/atom) of the training split
(:class:`EnergyNormalization`) and the atomic reference energies ``E_ref``.

:class:`ANNModel` is an ``nn.Module`` whose forward takes a collated batch of
named fields (:class:`nnpflow.datasets.collate.Batch`: ``features``,
``species_index``, ``atom_structure``, ``n_atoms`` and, for forces, the stored
descriptor ``derivatives`` of the atoms ``force_atom_index``) and returns named
fields: ``E`` (B,) eV and ``Fa`` (A_f, 3) eV/Å.

Model file: the envelope of :mod:`nnpflow.models.model_file` (schema
``nnpflow.model``, read with ``torch.load(weights_only=True)``) with
``family: "ann"``, ``family_version: 1`` and::

    "settings": {"architecture": {species: [[n_nodes, activation], ...]},
                 "descriptor": ChebyshevDescriptor.config(), "descriptor_sha256": str,
                 "normalization": {"energy_shift": eV/atom, "energy_scale": eV/atom},
                 "atomic_energies": {species: eV},
                 "atomic_energies_fit": None | {"method", "atomic_energies", "n_structures",
                                                "rank", "rmse_per_atom"}},  # when fitted
    "state_dict": {...},   # nets.<t>.<layer>.weight/bias, feature_mean/feature_std (T, F)
    "history": [{epoch, lr, train_loss, ...}, ...],
    "training": {...}      # epochs, best epoch, config, data identity

Files of the schema ``nnpflow.ann_potential`` v1 (written before the envelope:
the same entries, the settings at the top level) are read too (:func:`upgrade`).

The module-level functions ``load_payload``, ``predict_structures`` and
``predict_database`` are this family's entry in :mod:`nnpflow.models.registry`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets.split import subset_indices
from ..errors import ConfigError, SchemaError
from .ann import AtomicNetworks, architecture_json, parse_architecture
from .model_file import (MODEL_SCHEMA, MODEL_SCHEMA_VERSION, dtype_from_name, legacy_envelope,
                         model_envelope)
from .prediction_result import PredictionResult, empty_result, result_for_structures

#: the schema this family's files are written in
SCHEMA = MODEL_SCHEMA
SCHEMA_VERSION = MODEL_SCHEMA_VERSION
KIND = "ann"
#: the version of the ``settings`` layout
VERSION = 1
#: the schema of ANN files written before the envelope
LEGACY_SCHEMA = "nnpflow.ann_potential"
#: the entries of ``settings``
SETTINGS_KEYS = ("architecture", "descriptor", "descriptor_sha256", "normalization",
                 "atomic_energies", "atomic_energies_fit")


def upgrade(payload: Mapping[str, Any]) -> dict:
    """The envelope of a ``nnpflow.ann_potential`` v1 dict (settings at its top level)."""
    return legacy_envelope(payload, KIND, {k: payload[k] for k in SETTINGS_KEYS if k in payload},
                           "float64")


def as_envelope(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payload`` as an envelope (a ``nnpflow.ann_potential`` v1 dict upgraded)."""
    return upgrade(payload) if payload.get("schema") == LEGACY_SCHEMA else payload


@dataclass(frozen=True)
class EnergyNormalization:
    """``shift`` (eV/atom) and ``scale`` (eV/atom) of the normalised atomic energies."""

    shift: float = 0.0
    scale: float = 1.0

    def to_dict(self) -> dict:
        return {"shift": float(self.shift), "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "EnergyNormalization":
        return cls(float(d["shift"]), float(d["scale"]))


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


def is_feature_dataset(obj: Any) -> bool:
    """Whether ``obj`` is an aenet-style dataset (or ``Subset`` of one) with batches of
    features, as opposed to structures to featurise."""
    from torch.utils.data import Dataset
    return isinstance(obj, Dataset) and hasattr(subset_indices(obj)[0], "get_batch")


def _structure_of(base: Any, i: int):
    """Structure ``i`` of an aenet-style dataset (in-memory or HDF5)."""
    if hasattr(base, "structures") and isinstance(base.structures, list):
        return base.structures[i]
    return base.structure(i)


def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class ANNModel(nn.Module):
    """Per-species atomic networks on a ``ChebyshevDescriptor`` (see the module doc).

    Parameters
    ----------
    arch : ``{species: [(n_nodes, activation), ...]}``, hidden layers of each
        species' network (the linear output node is implicit).
    descriptor : the ``ChebyshevDescriptor``; every species needs a network.
    """

    outputs = ("E", "Fa")

    def __init__(self, arch: Mapping[str, Sequence], descriptor: Any):
        super().__init__()
        self.descriptor = descriptor
        self.architecture = parse_architecture(arch, descriptor.species)
        self.net = AtomicNetworks(descriptor.species, descriptor.n_features, self.architecture)
        self.energy_normalization = EnergyNormalization()
        self.atomic_energies: dict[str, float] = {}
        #: how ``atomic_energies`` were fitted (``None`` when given or absent)
        self.atomic_energies_fit: dict | None = None

    @property
    def species(self) -> list[str]:
        return list(self.descriptor.species)

    @property
    def device(self) -> torch.device:
        return self.net.feature_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.feature_mean.dtype

    # ------------------------------------------------------------ the file
    def to_payload(self, history: Sequence[Mapping] = (), training: Mapping | None = None,
                   metadata: Mapping | None = None) -> dict:
        """The model-file dict (the envelope; see the module docstring)."""
        settings = {
            "architecture": architecture_json(self.architecture),
            "descriptor": self.descriptor.config(),
            "descriptor_sha256": self.descriptor.fingerprint,
            "normalization": {"energy_shift": float(self.energy_normalization.shift),
                              "energy_scale": float(self.energy_normalization.scale)},
            "atomic_energies": {str(k): float(v) for k, v in self.atomic_energies.items()},
            "atomic_energies_fit": (None if self.atomic_energies_fit is None
                                    else dict(self.atomic_energies_fit)),
        }
        return model_envelope(KIND, VERSION, settings, self.net.state_dict(), self.dtype,
                              metadata=metadata, history=history, training=training)

    def load_payload_state(self, payload: Mapping[str, Any]) -> None:
        """Take weights, normalisation and references from a model-file dict (the
        envelope, or ``nnpflow.ann_potential`` v1) whose architecture and descriptor
        equal this model's."""
        payload = as_envelope(payload)
        settings = payload["settings"]
        if settings.get("architecture") != architecture_json(self.architecture):
            raise ValueError(f"architecture {settings.get('architecture')} differs from "
                             f"{architecture_json(self.architecture)}")
        if settings.get("descriptor") != self.descriptor.config():
            raise ValueError(f"descriptor {settings.get('descriptor')} differs from "
                             f"{self.descriptor.config()}")
        self.net.to(dtype=dtype_from_name(payload.get("dtype", "float64")))
        self.net.load_state_dict(payload["state_dict"])
        norm = settings["normalization"]
        self.energy_normalization = EnergyNormalization(float(norm["energy_shift"]),
                                                        float(norm["energy_scale"]))
        self.atomic_energies = {str(k): float(v) for k, v in
                                dict(settings.get("atomic_energies") or {}).items()}
        fit = settings.get("atomic_energies_fit")
        self.atomic_energies_fit = dict(fit) if fit else None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], device: str | torch.device = "cpu"
                     ) -> "ANNModel":
        """The model of a model-file dict (the envelope, or ``nnpflow.ann_potential``
        v1), checked (:mod:`nnpflow.models.model_checks`) before a weight is
        allocated; a malformed dict raises ``SchemaError``."""
        from ..descriptors import ChebyshevDescriptor
        from .model_checks import (check_ann_numbers, check_descriptor_fingerprint,
                                   check_state_dict, expected_shapes)
        try:
            payload = as_envelope(payload)
            settings = payload["settings"]
            check_descriptor_fingerprint(settings)
            descriptor = ChebyshevDescriptor.from_config(settings["descriptor"], device=device)
            arch = {s: [tuple(layer) for layer in layers]
                    for s, layers in settings["architecture"].items()}
            check_state_dict(payload["state_dict"], expected_shapes(
                lambda: AtomicNetworks(descriptor.species, descriptor.n_features,
                                       parse_architecture(arch, descriptor.species))))
            check_ann_numbers(settings, payload["state_dict"], list(descriptor.species))
            model = cls(arch, descriptor)
            model.load_payload_state(payload)
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise SchemaError(f"malformed ANN potential ({type(exc).__name__}: {exc})") from None
        return model.to(device=device)

    # ------------------------------------------------------------ forward
    def reference_vector(self) -> torch.Tensor:
        """(T,) atomic reference energies in descriptor order (0 without references)."""
        if not self.atomic_energies:
            return torch.zeros(len(self.species), dtype=torch.float64)
        # a species without a reference gives NaN, reported by forward when it occurs
        vals = [self.atomic_energies.get(s, float("nan")) for s in self.species]
        return torch.tensor(vals, dtype=torch.float64)

    def forward(self, batch, eval_forces: bool = True) -> dict[str, torch.Tensor]:
        """``{"E": (B,) eV (float64), "Fa": (A_f, 3) eV/Å}`` of a collated ``Batch``;
        ``Fa`` holds the force-view atoms (``batch.force_atom_index``) and is
        absent without them or with ``eval_forces=False``.  Runs the networks in
        eval mode and detaches the results."""
        batch = batch.to(self.device)
        with_forces = eval_forces and batch.derivatives is not None
        return self.energies_and_forces(
            batch.features, batch.species_index, batch.atom_structure, batch.n_atoms,
            batch.derivatives if with_forces else None, batch.force_atom_index,
            getattr(batch, "species_groups", None))

    def energies_and_forces(self, features: torch.Tensor, species_index: torch.Tensor,
                            atom_structure: torch.Tensor, n_atoms: torch.Tensor,
                            derivatives: Any = None, force_atom_index: torch.Tensor | None = None,
                            species_groups: Sequence[torch.Tensor] | None = None
                            ) -> dict[str, torch.Tensor]:
        """The work of :meth:`forward` on plain tensors (on the model's device):
        raw ``features`` (A, F), ``species_index`` (A,), ``atom_structure`` (A,)
        and ``n_atoms`` (B,) of B structures; forces (eV/Å) of the atoms
        ``force_atom_index`` (all when ``None``) when ``derivatives`` (their
        ``DescriptorDerivatives``) are given.  ``species_groups``: the atoms of each
        species, when known.  Returns ``{"E": (B,) eV float64, "Fa": (A_f, 3)}``."""
        net = self.net
        device, dtype = self.device, self.dtype
        norm = self.energy_normalization
        feats = features.to(dtype)
        with_forces = derivatives is not None
        was_training = net.training
        if was_training:                # (a no-op toggle costs ~0.3 ms per call)
            net.eval()
        try:
            with torch.enable_grad() if with_forces else torch.no_grad():
                if with_forces:
                    feats = feats.detach().requires_grad_(True)
                eps = net(feats, species_index, species_groups)
                forces = None
                if with_forces:
                    (grad,) = torch.autograd.grad(eps.sum(), feats)
                    if force_atom_index is not None:
                        grad = grad.index_select(0, force_atom_index)
                    forces = derivatives.forces(grad).detach().double()
                    forces = forces * norm.scale
        finally:
            if was_training:
                net.train(True)
        b = int(n_atoms.shape[0])
        sums = torch.zeros(b, dtype=torch.float64, device=device).index_add(
            0, atom_structure, eps.detach().double())
        refs = self.reference_vector().to(device).index_select(0, species_index)
        ref_sum = torch.zeros(b, dtype=torch.float64, device=device).index_add(
            0, atom_structure, refs)
        if bool(torch.isnan(ref_sum).any()):
            missing = sorted(set(self.species) - set(self.atomic_energies))
            raise ConfigError(f"the potential has no atomic reference energy for "
                              f"{', '.join(missing)}, which occur in the structures")
        out = {"E": norm.scale * sums + norm.shift * n_atoms.double() + ref_sum}
        if forces is not None:
            out["Fa"] = forces
        return out

    # ---------------------------------------------------------- prediction
    def predict_structures(self, structs: list, eval_forces: bool = True, batch_size: int = 32,
                           show_progress: bool = False) -> PredictionResult:
        """Energies (eV) and forces (eV/Å) of ``Structure``s, featurised here."""
        from ..database.featurize import split_with_derivatives
        from ..datasets.base import structure_sample
        from ..datasets.collate import collate_samples
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
            out = self(collate_samples(samples), eval_forces)
            energies.append(out["E"].cpu().numpy())
            if eval_forces:
                counts = [s.n_atoms for s in chunk]
                forces.extend(np.split(out["Fa"].cpu().numpy(), np.cumsum(counts)[:-1]))
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        return result_for_structures(
            structs, np.concatenate(energies) if energies else np.zeros(0),
            forces if eval_forces else None)

    def predict_dataset(self, dataset: Any, eval_forces: bool = True, batch_size: int = 64,
                        show_progress: bool = False) -> PredictionResult:
        """Predictions for an aenet-style dataset or ``Subset``, reusing its persisted
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
            out = self(batch, eval_forces)
            energies[lo:hi] = out["E"].cpu().numpy()
            f = out.get("Fa")
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
            extra = self.predict_structures([_structure_of(base, int(idx[k])) for k in missing],
                                            True, batch_size)
            for k, f in zip(missing, extra.forces):
                forces[k] = f
        ref_e = np.asarray(base.energies(), dtype=np.float64)[idx]
        return PredictionResult(energies=energies, forces=forces if eval_forces else None,
                                n_atoms=n_atoms, names=names, species=species,
                                reference_energies=ref_e, reference_forces=ref_f)


# ----------------------------------------------- the family's registry entry
MODEL_TYPE = ANNModel


def envelope(model: ANNModel, metadata: Mapping[str, Any] | None = None,
             history: Sequence[Mapping] = (), training: Mapping[str, Any] | None = None
             ) -> dict:
    """The model-file dict of ``model``."""
    return model.to_payload(history, training, metadata)


def load_payload(payload: Mapping[str, Any], device: str | torch.device = "cpu") -> ANNModel:
    """The model of a checked model-file dict of this family."""
    return ANNModel.from_payload(payload, device)


def has_forces(model: ANNModel) -> bool:
    return True


def predict_structures(model: ANNModel, structures: Sequence, eval_forces: bool = True,
                       batch_size: int = 32, show_progress: bool = False) -> PredictionResult:
    """Energies (eV) and forces (eV/Å) of ``Structure``s."""
    return model.predict_structures(list(structures), eval_forces, batch_size, show_progress)


def predict_database(model: ANNModel, database: str | os.PathLike, indices: np.ndarray,
                     batch_size: int = 64, show_progress: bool = False) -> PredictionResult:
    """Predictions (with forces) for the structures ``indices`` of a database,
    reusing its persisted features and derivatives when it carries the model's
    descriptor; a model of another descriptor (such as imported aenet potential
    files) featurises the database's structures itself."""
    from torch.utils.data import Subset

    from ..database import DatabaseReader
    from ..datasets import HDF5StructureDataset
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not indices:
        return empty_result()
    with DatabaseReader(database, cache_size=0) as reader:
        if reader.descriptor_sha256 != model.descriptor.fingerprint:
            structures = reader.structures(indices)
            return model.predict_structures(as_structure_list(structures, model.descriptor),
                                            True, batch_size, show_progress)
    dataset = HDF5StructureDataset(None, database, mode="load", dtype=model.dtype)
    try:
        return model.predict_dataset(Subset(dataset, indices), eval_forces=True,
                                     batch_size=batch_size, show_progress=show_progress)
    finally:
        dataset.close()
