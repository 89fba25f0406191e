"""Energy and force error metrics shared by every trainer and the evaluate stage."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..models.prediction_result import PredictionResult
from ..structure import element_symbol


def _array(values, dtype=np.float64) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _concat(values, trailing: tuple) -> np.ndarray:
    """A (M, *trailing) array from one array or a sequence of per-structure arrays."""
    if isinstance(values, (list, tuple)):
        parts = [_array(v).reshape((-1,) + trailing) for v in values]
        return np.concatenate(parts) if parts else np.zeros((0,) + trailing)
    return _array(values).reshape((-1,) + trailing)


def _species(species) -> list[str]:
    """Element symbols from symbols or atomic numbers, flat or per structure."""
    if hasattr(species, "detach"):
        species = species.detach().cpu().numpy()
    flat = []
    for item in (species.reshape(-1).tolist() if isinstance(species, np.ndarray) else species):
        if isinstance(item, (list, tuple, np.ndarray)):
            flat.extend(np.asarray(item).reshape(-1).tolist())
        else:
            flat.append(item)
    return [element_symbol(s) for s in flat]


def energy_force_metrics(energy_pred, energy_ref, n_atoms, forces_pred=None, forces_ref=None,
                         species: Sequence | None = None) -> dict:
    """Errors of predicted energies and forces against references.

    Parameters
    ----------
    energy_pred, energy_ref : (S,) total energies in eV.
    n_atoms : (S,) atoms per structure.
    forces_pred, forces_ref : (A, 3) forces in eV/Å, concatenated over structures
        in order, or sequences of (N_s, 3) arrays; optional.
    species : (A,) element symbols or atomic numbers (or per-structure lists), for
        per-species force errors; optional.

    Returns
    -------
    dict with ``n_structures``, ``n_atoms``, ``energy_rmse_per_atom`` and
    ``energy_mae_per_atom`` (eV/atom: errors of E/N), ``energy_rmse`` and
    ``energy_mae`` (eV, total energies), ``force_rmse`` and ``force_mae`` (eV/Å over
    all 3A force components; ``None`` without forces), ``n_force_components`` and
    ``per_species`` (``{symbol: {"n_atoms", "force_rmse", "force_mae"}}``, empty
    without forces or species).  Values are plain floats and ints (JSON-ready).
    """
    e_pred, e_ref = _array(energy_pred).reshape(-1), _array(energy_ref).reshape(-1)
    n = _array(n_atoms).reshape(-1)
    if not (e_pred.shape == e_ref.shape == n.shape):
        raise ValueError(f"energy_pred {e_pred.shape}, energy_ref {e_ref.shape} and n_atoms "
                         f"{n.shape} must have one entry per structure")
    if e_pred.size == 0:
        raise ValueError("no structures to evaluate")
    diff = e_pred - e_ref
    per_atom = diff / n
    out = {
        "n_structures": int(e_pred.size),
        "n_atoms": int(n.sum()),
        "energy_rmse_per_atom": float(math.sqrt(np.mean(per_atom ** 2))),
        "energy_mae_per_atom": float(np.mean(np.abs(per_atom))),
        "energy_rmse": float(math.sqrt(np.mean(diff ** 2))),
        "energy_mae": float(np.mean(np.abs(diff))),
        "force_rmse": None, "force_mae": None, "n_force_components": 0,
        "per_species": {},
    }
    if forces_pred is None or forces_ref is None:
        return out
    f_pred, f_ref = _concat(forces_pred, (3,)), _concat(forces_ref, (3,))
    if f_pred.shape != f_ref.shape or f_pred.shape[0] != int(n.sum()):
        raise ValueError(f"forces_pred {f_pred.shape} and forces_ref {f_ref.shape} must both be "
                         f"({int(n.sum())}, 3)")
    fdiff = f_pred - f_ref
    out["force_rmse"] = float(math.sqrt(np.mean(fdiff ** 2)))
    out["force_mae"] = float(np.mean(np.abs(fdiff)))
    out["n_force_components"] = int(fdiff.size)
    if species is not None:
        symbols = np.array(_species(species))
        if symbols.shape[0] != fdiff.shape[0]:
            raise ValueError(f"species has {symbols.shape[0]} entries for {fdiff.shape[0]} atoms")
        for symbol in sorted(set(symbols.tolist())):
            sel = fdiff[symbols == symbol]
            out["per_species"][symbol] = {"n_atoms": int(sel.shape[0]),
                                          "force_rmse": float(math.sqrt(np.mean(sel ** 2))),
                                          "force_mae": float(np.mean(np.abs(sel)))}
    return out


def prediction_metrics(result: PredictionResult) -> dict:
    """Error metrics of a :class:`PredictionResult` with references.

    Keys: ``n_structures``, ``n_structures_with_energy``,
    ``n_structures_with_forces``, ``energy_rmse_per_atom``,
    ``energy_mae_per_atom`` (eV/atom), ``energy_rmse``, ``energy_mae`` (eV),
    ``force_rmse``, ``force_mae`` (eV/Å over all force components of structures
    with reference forces; None without), ``n_force_components`` and
    ``per_species`` ({symbol: {n_atoms, force_rmse, force_mae}}), from
    :func:`energy_force_metrics`.
    """
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
