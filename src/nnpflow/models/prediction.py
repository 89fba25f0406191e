"""Predictions of a layer-stack model for structures (for calculators and evaluation)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ..structure import Structure, as_structure
from .batch import packed_for_model
from .stack import LayerStack


def predict_structures(model: LayerStack, structures: Iterable, batch_size: int = 64,
                       device: str | torch.device | None = None) -> dict:
    """Run ``model`` on structures (``Structure`` or ``ase.Atoms``).

    Returns ``{"energies": (S,) eV, "forces": [(N_s, 3) eV/Å, ...]}`` (forces when
    the model has a ``Force`` layer) plus, for every other target the model
    predicts, ``"charges"`` ([(N_s,)] e), ``"total_charge_raw"`` ((S,) e: the sum of
    the uncorrected atomic charges) and ``"dipoles"`` ((S, 3) e·Å).  Pair lists
    are built here for each structure (molecules: all pairs; cells: periodic images).
    """
    structures = [as_structure(s) for s in structures]
    if not structures:
        return {"energies": np.zeros(0)}
    param = next(model.parameters())
    dtype, device = param.dtype, torch.device(device) if device is not None else param.device
    model = model.to(device).eval()
    packed = packed_for_model(structures, model,
                              total_charge=any(s.total_charge is not None for s in structures))
    counts = packed.n_atoms
    names = {"E": "energies", "Fa": "forces", "Qa": "charges", "Q": "total_charge_raw",
             "M2": "dipoles"}
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in model.outputs}
    for start in range(0, len(structures), batch_size):
        inputs, _ = packed.batch(np.arange(start, min(start + batch_size, len(structures))),
                                 dtype=dtype, device=device)
        out = model(inputs)
        for key in chunks:
            chunks[key].append(out[key].detach().cpu().double().numpy())
    result: dict = {}
    for key, parts in chunks.items():
        values = np.concatenate(parts)
        if key in ("Fa", "Qa"):  # per atom: one array per structure
            values = np.split(values, np.cumsum(counts)[:-1])
        result[names[key]] = values
    return result


def predict_structure(model: LayerStack, structure: Structure) -> dict:
    """:func:`predict_structures` for one structure: ``energy`` (eV) and ``forces`` (N, 3)."""
    out = predict_structures(model, [structure], batch_size=1)
    result = {"energy": float(out["energies"][0])}
    if "forces" in out:
        result["forces"] = out["forces"][0]
    return result
