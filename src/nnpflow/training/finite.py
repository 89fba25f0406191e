"""Non-finite numbers in training: find the structures behind a NaN loss.

Both trainers check the loss of every optimiser step (the layer-stack trainer on
the GPU once per epoch, to keep steps free of host synchronisation) and stop at the
first non-finite one with :class:`~nnpflow.errors.NonFiniteError` naming the epoch
and step, and the structures with non-finite inputs (features, forces, energies,
positions) where there are any; without such a structure the weights diverged,
and the message says so (a learning rate too large is the usual cause).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import NonFiniteError

#: structures named in an error message at most
MAX_NAMED = 5


def _bad_atoms_per_structure(values: torch.Tensor, owner: torch.Tensor, n: int) -> np.ndarray:
    """(n,) bool: structure b has a non-finite row among ``values`` (rows owned by
    ``owner``)."""
    if values is None or values.numel() == 0:
        return np.zeros(n, dtype=bool)
    bad_rows = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    out = np.zeros(n, dtype=bool)
    out[owner[bad_rows].cpu().numpy()] = True
    return out


def nonfinite_inputs(dataset: Any, indices: Sequence[int], chunk: int = 64) -> list[str]:
    """``"<name>: non-finite features"``-style descriptions of the structures among
    ``dataset[indices]`` (a aenet-style dataset with ``get_batch``) whose features,
    reference forces or energy (±inf; NaN means "no energy") are not finite."""
    found: list[str] = []
    indices = np.asarray(list(indices), dtype=np.int64)
    for lo in range(0, len(indices), chunk):
        batch = dataset.get_batch(indices[lo:lo + chunk], use_forces=False)
        n = batch.n_structures
        owner = batch.atom_structure
        kinds = {"features": _bad_atoms_per_structure(batch.features, owner, n),
                 "forces": _bad_atoms_per_structure(batch.forces, owner, n),
                 "energy": np.isinf(batch.energy.cpu().numpy())}
        for b in range(n):
            what = [k for k, bad in kinds.items() if bad[b]]
            if what:
                found.append(f"{batch.names[b]} (non-finite {', '.join(what)})")
                if len(found) >= MAX_NAMED:
                    return found
    return found


def nonfinite_structures(structures: Iterable[Any], names: Sequence[str] | None = None
                         ) -> list[str]:
    """The same for :class:`~nnpflow.Structure` records (positions, cell, energy ±inf,
    forces)."""
    found = []
    for k, s in enumerate(structures):
        what = []
        if not np.isfinite(np.asarray(s.positions, dtype=float)).all():
            what.append("positions")
        if s.cell is not None and not np.isfinite(np.asarray(s.cell, dtype=float)).all():
            what.append("cell")
        if s.energy is not None and np.isinf(s.energy):
            what.append("energy")
        if s.forces is not None and not np.isfinite(np.asarray(s.forces, dtype=float)).all():
            what.append("forces")
        if what:
            name = names[k] if names is not None else (s.name or f"structure {k}")
            found.append(f"{name} (non-finite {', '.join(what)})")
            if len(found) >= MAX_NAMED:
                break
    return found


def nonfinite_loss_error(value: float, epoch: int, step: int | None, culprits: list[str],
                         where: str = "training", searched: str = "the batch") -> NonFiniteError:
    """The error for a non-finite loss ``value`` at ``epoch`` (1-based) and ``step``
    (1-based; None: the epoch as a whole)."""
    at = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    if culprits:
        cause = ("structure(s) with non-finite inputs: " + "; ".join(culprits)
                 + " (remove them from the sources, or fix the database)")
    else:
        cause = (f"no structure of {searched} has a non-finite input, so the weights "
                 "diverged: lower the learning rate (or clip gradients)")
    return NonFiniteError(f"{where}: the loss became {value} at {at}; training stopped "
                          f"(no model written). {cause}")
