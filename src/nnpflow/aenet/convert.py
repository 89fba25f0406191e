"""nnpflow ANN potentials to aenet potential files and back.

The mapping (documented for users in ``docs/aenet.md``), per species ``s``:

=====================================  =============================================
nnpflow (:class:`TorchANNPotential`)   aenet potential file of ``s``
=====================================  =============================================
descriptor species, in order           ``envtypes`` (their order fixes the typespins)
``rad_order``, ``rad_cutoff``          ``sfparam(2,1)``, ``sfparam(1,1)`` (Å)
``ang_order``, ``ang_cutoff``          ``sfparam(4,1)``, ``sfparam(3,1)`` (Å)
``min_cutoff``                         ``Rc_min`` (Å); ``Rc_max = max(cutoffs)``
hidden layers ``(n, activation)``      ``nnodes``, ``f_a``: linear 0, tanh 1,
                                       sigmoid 2, mtanh 3, twist 4; output linear
``nets[s]`` Linear weights, biases     ``W`` (column-major ``[weight | bias]``)
``feature_mean[s]``                    ``sfval_avg``
``feature_std[s]``                     ``sfval_cov = mean^2 + std^2``
``energy_normalization.scale`` (eV)    ``scale = 1 / energy scale``
``energy_normalization.shift`` (eV)    ``shift``
``atomic_energies``                    ``typeName``, ``E_atom``
=====================================  =============================================

so both codes compute the atomic energy ``scale_E * net((G - mean) / std) +
shift + E_atom`` eV.  aenet recovers the feature std as ``sqrt(cov - avg^2)``
and the energy scale as ``1 / scale``, so these two pass through aenet's
representation: the exporter writes the float64 second moment next to
``mean^2 + std^2`` for which aenet's formula gives nnpflow's std bit for bit
when one exists; for ``|mean| > ~1.4 std`` the second moment often cannot
resolve every float64 std, and the std comes back within about
``eps * (mean / std)^2`` relative (~1e-14 for Chebyshev features).  ``1 / (1 /
scale)`` is ``scale`` for about 86% of float64 values and one unit in the last
place off otherwise.  Everything else (weights, biases, means, shift, reference
energies, descriptor) survives bit for bit.  ``sfval_min``/``sfval_max``
(unused by aenet's evaluation) are written as ``mean -/+ std``.

Import reads aenet's numbers the way aenet evaluates them: ``mean = avg``,
``std = sqrt(cov - avg^2)`` (a feature aenet switches off, ``std <= 1e-10``,
keeps std 1 with its first-layer weights zeroed), energy scale ``1 / scale``.
The aenet fields nnpflow has no place for (descriptions, ``sfval_*``,
training-set summary) travel in ``training_info["aenet"]``, so an imported
potential exported again gives byte-identical files.

Everything aenet cannot represent is refused at export with
:class:`AenetExportError` naming it: an activation aenet lacks, a descriptor
other than the Chebyshev one, ``min_cutoff`` 0, missing atomic reference
energies, non-finite parameters.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .potential_file import (NSFPARAM, AenetNetwork, AenetPotential, AenetSetup,
                             AenetTrainingSetInfo, read_potential)

#: nnpflow activation name -> aenet's activation code (feedforward.f90, ff_activate)
AENET_ACTIVATIONS: dict[str, int] = {"linear": 0, "tanh": 1, "sigmoid": 2, "mtanh": 3,
                                     "twist": 4}
_ACTIVATION_NAMES = {code: name for name, code in AENET_ACTIVATIONS.items()}

#: aenet switches a feature off when sqrt(cov - avg^2) is at most this (stp_normalize)
AENET_MIN_STD = 1e-10

#: how many float64 neighbours the exporter tries for an exactly reproducing number
_ULP_SEARCH = 64


class AenetExportError(ConfigError):
    """The potential uses something aenet's files cannot represent."""


# ------------------------------------------------------------ numerics
def aenet_feature_normalization(avg: np.ndarray, cov: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, std, off)`` of aenet's stored feature statistics as aenet
    evaluates them: ``std = sqrt(cov - avg^2)``; ``off`` marks features aenet
    multiplies by zero (``std <= 1e-10``), whose std is reported as 1."""
    avg = np.asarray(avg, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        std = np.sqrt(cov - avg * avg)
    off = std <= AENET_MIN_STD
    return avg.copy(), np.where(off, 1.0, std), off


def second_moment_for(mean: float, std: float) -> float:
    """A float64 ``cov`` with ``sqrt(cov - mean^2) == std`` exactly when one
    exists near ``mean^2 + std^2``; else the nearest to it."""
    mean, std = float(mean), float(std)
    a2 = mean * mean
    start = a2 + std * std
    for direction in (math.inf, -math.inf):
        c = start
        for _ in range(_ULP_SEARCH + 1):
            if c >= a2 and math.sqrt(c - a2) == std:
                return c
            c = math.nextafter(c, direction)
    return start


def inverse_for(value: float) -> float:
    """A float64 ``t`` with ``1 / t == value`` exactly when one exists near
    ``1 / value``; else ``1 / value``."""
    start = 1.0 / float(value)
    for direction in (math.inf, -math.inf):
        t = start
        for _ in range(_ULP_SEARCH + 1):
            if 1.0 / t == value:
                return t
            t = math.nextafter(t, direction)
    return start


# ------------------------------------------------------------- export
def _linear_layers(seq: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


def _check_finite(what: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise AenetExportError(f"{what} has non-finite values; aenet cannot evaluate it")


def potential_to_aenet(potential: Any, source: str | None = None,
                       training_info: Mapping | None = None) -> dict[str, AenetPotential]:
    """aenet potentials ``{species: AenetPotential}`` of a ``TorchANNPotential`` (or
    its :class:`~nnpflow.models.ann_model.ANNModel`).

    ``source`` (a label, e.g. the model file) goes into the files' descriptions;
    ``training_info`` (default: the potential's) may carry the aenet fields of an
    imported potential.  Raises :class:`AenetExportError` for anything aenet
    cannot represent."""
    from ..models.ann_model import ANNModel
    if training_info is None:
        training_info = getattr(potential, "training_info", None)
    if not isinstance(getattr(potential, "model", potential), ANNModel):
        raise TypeError(f"expected a TorchANNPotential, got {type(potential).__name__} "
                        "(only aenet-style ANN potentials can be exported to aenet)")
    desc = potential.descriptor
    cfg = desc.config()
    if cfg.get("type") != "aenet-chebyshev":
        raise AenetExportError(f"descriptor type {cfg.get('type')!r}: aenet's files hold its "
                               "Chebyshev basis only")
    if not desc.min_cutoff > 0:
        raise AenetExportError(f"descriptor min_cutoff {desc.min_cutoff} Å: aenet sizes its "
                               "neighbour arrays from Rc_min, which must be positive")
    for s, layers in potential.architecture.items():
        for k, (_, act) in enumerate(layers):
            if act not in AENET_ACTIVATIONS:
                raise AenetExportError(
                    f"species {s}, hidden layer {k + 1}: activation {act!r} has no aenet "
                    f"equivalent (aenet has {', '.join(AENET_ACTIVATIONS)})")
    norm = potential.energy_normalization
    e_scale, e_shift = float(norm.scale), float(norm.shift)
    if not (math.isfinite(e_scale) and e_scale != 0 and math.isfinite(e_shift)):
        raise AenetExportError(f"energy normalisation scale {e_scale}, shift {e_shift}: aenet "
                               "stores 1/scale and needs finite, non-zero values")
    species = list(desc.species)
    refs = dict(potential.atomic_energies)
    if refs:
        missing = [s for s in species if s not in refs]
        if missing:
            raise AenetExportError(f"no atomic reference energy for {', '.join(missing)}; "
                                   "aenet's files need one per species (or none at all)")
    e_atom = np.array([float(refs.get(s, 0.0)) for s in species], dtype=np.float64)
    _check_finite("the atomic reference energies", e_atom)
    mean_all = potential.net.feature_mean.detach().cpu().double().numpy()
    std_all = potential.net.feature_std.detach().cpu().double().numpy()
    label = source or "a TorchANNPotential"
    from .. import __version__
    provenance = (training_info or {}).get("aenet") or {}
    trainset = AenetTrainingSetInfo(
        file=f"nnpflow export of {label}"[:1024], normalized=True,
        scale=inverse_for(e_scale), shift=e_shift, type_names=species, e_atom=e_atom,
        n_atoms_total=0, n_structures=0, e_min=0.0, e_max=0.0, e_av=0.0)
    out: dict[str, AenetPotential] = {}
    for t, s in enumerate(species):
        linears = _linear_layers(potential.net.nets[t])
        weights = [m.weight.detach().cpu().double().numpy().copy() for m in linears]
        biases = [m.bias.detach().cpu().double().numpy().copy() for m in linears]
        for k, (w, b) in enumerate(zip(weights, biases)):
            _check_finite(f"species {s}, layer {k + 1} weights", w)
            _check_finite(f"species {s}, layer {k + 1} biases", b)
        sizes = [desc.n_features] + [w.shape[0] for w in weights]
        codes = [AENET_ACTIVATIONS[a] for _, a in potential.architecture[s]] + [0]
        network = AenetNetwork(sizes, codes, weights, biases)
        mean, std = mean_all[t], std_all[t]
        _check_finite(f"species {s} feature means", mean)
        _check_finite(f"species {s} feature stds", std)
        if np.any(std <= AENET_MIN_STD):
            k = int(np.argmax(std <= AENET_MIN_STD))
            raise AenetExportError(f"species {s}, feature {k}: std {std[k]} <= 1e-10, "
                                   "which aenet treats as a feature to switch off")
        sfparam = np.zeros((NSFPARAM, desc.n_features), dtype=np.float64)
        sfparam[:, 0] = [desc.rad_cutoff, float(desc.rad_order), desc.ang_cutoff,
                         float(desc.ang_order)]
        setup = AenetSetup(
            description=(f"nnpflow {__version__} export of {label}: species {s}, "
                         f"aenet Chebyshev basis")[:1024],
            atomtype=s, envtypes=species, rc_min=desc.min_cutoff,
            rc_max=max(desc.rad_cutoff, desc.ang_cutoff), sftype="Chebyshev",
            sf=np.zeros(desc.n_features, dtype=np.int64), sfparam=sfparam,
            sfenv=np.zeros((2, desc.n_features), dtype=np.int64), neval=0,
            sfval_min=mean - std, sfval_max=mean + std, sfval_avg=mean.copy(),
            sfval_cov=np.array([second_moment_for(m, d) for m, d in zip(mean, std)]))
        fresh = AenetPotential(network, setup, trainset)
        kept = _from_provenance(provenance.get(s), network)
        out[s] = kept if kept is not None and _same_model(kept, fresh) else fresh
    return out


def _same_model(a: AenetPotential, b: AenetPotential) -> bool:
    """Whether two aenet potentials of one species evaluate identically in nnpflow
    (same descriptor, network, normalisation and reference energy)."""
    try:
        da, db = _descriptor_settings(a), _descriptor_settings(b)
    except InputError:
        return False
    if da != db or a.network.layer_sizes != b.network.layer_sizes \
            or a.network.activations != b.network.activations:
        return False
    if not all(np.array_equal(x, y) for x, y in zip(a.network.weights, b.network.weights)):
        return False
    if not all(np.array_equal(x, y) for x, y in zip(a.network.biases, b.network.biases)):
        return False
    ma, sa, _ = aenet_feature_normalization(a.setup.sfval_avg, a.setup.sfval_cov)
    mb, sb, _ = aenet_feature_normalization(b.setup.sfval_avg, b.setup.sfval_cov)
    # (a feature aenet switches off has std 1 here and zero weights in both)
    if not (np.array_equal(ma, mb) and np.array_equal(sa, sb)):
        return False
    return (1.0 / a.trainset.scale == 1.0 / b.trainset.scale
            and a.trainset.shift == b.trainset.shift and a.atomic_energy == b.atomic_energy)


# ----------------------------------------------------------- provenance
def _provenance(pot: AenetPotential) -> dict:
    """The aenet fields nnpflow keeps for a faithful re-export (JSON-ready)."""
    stp, ts = pot.setup, pot.trainset
    return {
        "setup": {"description": stp.description, "rc_min": stp.rc_min,
                  "rc_max": stp.rc_max, "sftype": stp.sftype, "sf": stp.sf.tolist(),
                  "sfparam": stp.sfparam.tolist(), "sfenv": stp.sfenv.tolist(),
                  "neval": int(stp.neval), "sfval_min": stp.sfval_min.tolist(),
                  "sfval_max": stp.sfval_max.tolist(), "sfval_avg": stp.sfval_avg.tolist(),
                  "sfval_cov": stp.sfval_cov.tolist(), "envtypes": list(stp.envtypes),
                  "atomtype": stp.atomtype},
        "trainset": {"file": ts.file, "normalized": bool(ts.normalized), "scale": ts.scale,
                     "shift": ts.shift, "type_names": list(ts.type_names),
                     "e_atom": ts.e_atom.tolist(), "n_atoms_total": int(ts.n_atoms_total),
                     "n_structures": int(ts.n_structures), "e_min": ts.e_min,
                     "e_max": ts.e_max, "e_av": ts.e_av},
        "file": pot.path,
    }


def _from_provenance(entry: Mapping | None, network: AenetNetwork) -> AenetPotential | None:
    if not entry:
        return None
    try:
        s, t = entry["setup"], entry["trainset"]
        setup = AenetSetup(
            description=str(s["description"]), atomtype=str(s["atomtype"]),
            envtypes=[str(x) for x in s["envtypes"]], rc_min=float(s["rc_min"]),
            rc_max=float(s["rc_max"]), sftype=str(s["sftype"]),
            sf=np.asarray(s["sf"], dtype=np.int64),
            sfparam=np.asarray(s["sfparam"], dtype=np.float64),
            sfenv=np.asarray(s["sfenv"], dtype=np.int64), neval=int(s["neval"]),
            **{k: np.asarray(s[k], dtype=np.float64)
               for k in ("sfval_min", "sfval_max", "sfval_avg", "sfval_cov")})
        trainset = AenetTrainingSetInfo(
            file=str(t["file"]), normalized=bool(t["normalized"]), scale=float(t["scale"]),
            shift=float(t["shift"]), type_names=[str(x) for x in t["type_names"]],
            e_atom=np.asarray(t["e_atom"], dtype=np.float64),
            n_atoms_total=int(t["n_atoms_total"]), n_structures=int(t["n_structures"]),
            e_min=float(t["e_min"]), e_max=float(t["e_max"]), e_av=float(t["e_av"]))
    except (KeyError, TypeError, ValueError):
        return None
    if setup.sfparam.ndim != 2 or setup.nsf != network.layer_sizes[0]:
        return None
    return AenetPotential(network, setup, trainset)


# ------------------------------------------------------------- import
def _descriptor_settings(pot: AenetPotential) -> dict:
    stp = pot.setup
    if not stp.is_chebyshev:
        raise InputError(f"fingerprint basis {stp.sftype!r}: nnpflow implements aenet's "
                         "Chebyshev basis only (not Behler symmetry functions)",
                         source=pot.path)
    if stp.sfparam.shape[0] < 4:
        raise InputError(f"Chebyshev setup with {stp.sfparam.shape[0]} parameters, "
                         "expected 4", source=pot.path)
    return {"species": [t.strip() for t in stp.envtypes], **stp.chebyshev_parameters(),
            "min_cutoff": float(stp.rc_min)}


def model_from_aenet(potentials: Sequence[AenetPotential | str | os.PathLike],
                     device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """``(ANNModel (float64), training_info)`` from one aenet potential per species
    (objects or file paths, binary or ASCII); ``training_info`` records the files
    and the aenet fields nnpflow has no place for.

    The files must describe one potential: the same environment species (in
    the same order), Chebyshev settings, ``Rc_min`` and energy scaling; every
    environment species needs exactly one file.  Violations raise
    :class:`~nnpflow.errors.InputError` naming the file."""
    from ..descriptors import ChebyshevDescriptor
    from ..models.ann_model import ANNModel, EnergyNormalization
    pots = [p if isinstance(p, AenetPotential) else read_potential(p) for p in potentials]
    if not pots:
        raise InputError("no aenet potential files given")
    by_species: dict[str, AenetPotential] = {}
    for p in pots:
        if p.species in by_species:
            raise InputError(f"second potential for species {p.species} (first: "
                             f"{by_species[p.species].path})", source=p.path)
        by_species[p.species] = p
    first = pots[0]
    settings = _descriptor_settings(first)
    for p in pots[1:]:
        other = _descriptor_settings(p)
        if other != settings:
            diff = sorted(k for k in settings if settings[k] != other[k])
            raise InputError(f"descriptor settings {', '.join(diff)} ({other}) differ from "
                             f"those of {first.path} ({settings}); nnpflow needs one "
                             "descriptor for all species", source=p.path)
        if (p.trainset.scale, p.trainset.shift) != (first.trainset.scale,
                                                    first.trainset.shift):
            raise InputError(f"energy scaling (scale {p.trainset.scale}, shift "
                             f"{p.trainset.shift}) differs from that of {first.path} "
                             f"({first.trainset.scale}, {first.trainset.shift}); the files "
                             "come from different trainings", source=p.path)
    species = settings["species"]
    missing = [s for s in species if s not in by_species]
    if missing:
        raise InputError(f"the potentials' environment has species {species} but no "
                         f"potential file for {', '.join(missing)}", source=first.path)
    extra = [s for s in by_species if s not in species]
    if extra:
        raise InputError(f"potential for {', '.join(extra)}, which is not among the "
                         f"environment species {species}", source=by_species[extra[0]].path)
    try:
        descriptor = ChebyshevDescriptor(species, settings["rad_order"], settings["rad_cutoff"],
                                         settings["ang_order"], settings["ang_cutoff"],
                                         min_cutoff=settings["min_cutoff"], device=device)
    except ConfigError as exc:
        raise InputError(f"descriptor settings {settings}: {exc}", source=first.path) from None
    arch = {}
    for s in species:
        p = by_species[s]
        net = p.network
        if net.layer_sizes[0] != descriptor.n_features:
            raise InputError(f"network of {s} has {net.layer_sizes[0]} inputs; the Chebyshev "
                             f"settings give {descriptor.n_features} features", source=p.path)
        if net.layer_sizes[-1] != 1 or net.activations[-1] != 0:
            raise InputError(f"network of {s} ends in {net.layer_sizes[-1]} node(s) with "
                             f"activation {net.activations[-1]}; an energy network ends in "
                             "one linear node", source=p.path)
        unknown = [a for a in net.activations if a not in _ACTIVATION_NAMES]
        if unknown:
            raise InputError(f"network of {s}: unknown aenet activation code(s) {unknown}",
                             source=p.path)
        arch[s] = [(n, _ACTIVATION_NAMES[a])
                   for n, a in zip(net.layer_sizes[1:-1], net.activations[:-1])]
    potential = ANNModel(arch, descriptor)
    with torch.no_grad():
        for t, s in enumerate(species):
            p = by_species[s]
            mean, std, off = aenet_feature_normalization(p.setup.sfval_avg, p.setup.sfval_cov)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
                k = int(np.argmax(~(np.isfinite(mean) & np.isfinite(std))))
                raise InputError(f"species {s}, feature {k}: statistics avg "
                                 f"{p.setup.sfval_avg[k]}, second moment "
                                 f"{p.setup.sfval_cov[k]} give no finite std", source=p.path)
            linears = _linear_layers(potential.net.nets[t])
            for k, (layer, w, b) in enumerate(zip(linears, p.network.weights,
                                                  p.network.biases)):
                w = w.copy()
                if k == 0 and off.any():
                    w[:, off] = 0.0  # aenet multiplies these features by zero
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(b))
            potential.net.feature_mean[t].copy_(torch.from_numpy(mean))
            potential.net.feature_std[t].copy_(torch.from_numpy(std))
    scales = first.trainset.scale
    if not (math.isfinite(scales) and scales != 0):
        raise InputError(f"energy scale factor {scales} cannot be inverted", source=first.path)
    potential.energy_normalization = EnergyNormalization(float(first.trainset.shift),
                                                         1.0 / float(scales))
    potential.atomic_energies = {s: by_species[s].atomic_energy for s in species}
    training_info = {
        "imported_from": "aenet",
        "files": [p.path for p in pots],
        "aenet": {s: _provenance(by_species[s]) for s in species},
    }
    return potential.to(device=device), training_info


# ----------------------------------------------------------- files on disk
def _models(model: Any) -> list:
    """The potentials to export: one ``TorchANNPotential`` (or model file), or
    several (a committee: files, objects or an ``ANNCommittee``)."""
    members = getattr(model, "members", None)   # an ANNCommittee
    if members is not None:
        return list(members)
    if isinstance(model, (str, os.PathLike)) or hasattr(model, "descriptor"):
        return [model]
    return list(model)


def _model_file(path: str | os.PathLike) -> tuple[Any, dict]:
    """``(ANNModel, training_info)`` of an ANN model file."""
    from ..errors import SchemaError
    from ..models.ann_model import ANNModel
    from ..models.registry import read_model_file
    payload = read_model_file(path, "ann")[1]
    try:
        return ANNModel.from_payload(payload), dict(payload.get("training") or {})
    except SchemaError as exc:
        raise SchemaError(f"{os.fspath(path)}: {exc}") from None


def export_aenet(model: Any, directory: str | os.PathLike, *,
                 structures: Any = None,
                 ascii: bool = True, forces: bool = True) -> dict:
    """Write aenet potential files for ``model`` into ``directory``.

    ``model``: a ``TorchANNPotential``, a model file, or several of them (a
    committee), each member then into ``directory/member_<m>/``.  Per species
    ``<S>.nn`` (binary, for ``predict.x`` and aenet's library) and, with
    ``ascii``, ``<S>.nn.ascii``; plus ``predict.in`` naming them, with a
    ``FILES`` list of ``structures`` (XSF files, listed by absolute path; other
    formats are converted into ``structures/`` first) when given.  Run
    ``predict.x predict.in`` (or ``predict.x predict.in STRUCTURE.xsf``) in the
    folder.  Returns ``{"members": [{"directory", "potentials": {S: path},
    "ascii": {S: path}, "predict_in": path}]}``.
    """
    from .predict import format_predict_input, xsf_inputs
    from ..safe_write import write_text
    members = _models(model)
    if not members:
        raise ConfigError("nothing to export: no model given")
    root = Path(directory)
    if structures is not None and not isinstance(structures, (list, tuple)):
        structures = [structures]
    converted = []  # every member first: a refusal writes nothing
    for m, item in enumerate(members):
        label = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None
        pot, info = _model_file(item) if label is not None else (item, None)
        if label is None and len(members) > 1:
            label = f"committee member {m}"
        try:
            converted.append(potential_to_aenet(pot, source=label, training_info=info))
        except AenetExportError as exc:
            raise AenetExportError(f"{label}: {exc}" if label else str(exc)) from None
    root.mkdir(parents=True, exist_ok=True)
    xsf_files = xsf_inputs(structures, root / "structures") if structures else []
    written = []
    for m, pots in enumerate(converted):
        folder = root if len(members) == 1 else root / f"member_{m}"
        folder.mkdir(parents=True, exist_ok=True)
        entry: dict = {"directory": str(folder), "potentials": {}, "ascii": {}}
        for s, p in pots.items():
            path = folder / f"{s}.nn"
            p.write(path)
            entry["potentials"][s] = str(path)
            if ascii:
                apath = folder / f"{s}.nn.ascii"
                p.write(apath, ascii=True)
                entry["ascii"][s] = str(apath)
        predict_in = folder / "predict.in"
        write_text(predict_in, format_predict_input(
            {s: f"{s}.nn" for s in pots}, xsf_files, forces=forces))
        entry["predict_in"] = str(predict_in)
        written.append(entry)
    return {"members": written}
