"""Named fields that flow through a layer-stack model.

A batch of ``B`` structures with ``A`` atoms in all is a ``dict[str, Tensor]``.
Layers read some fields and write others; the names follow Enerzyme's
conventions (capital letter = physical quantity, suffix ``a`` = per atom).

Standard fields (inputs and targets), units as everywhere in nnpflow:

=========  ===========  ========  =========================================
name       shape        dtype     meaning
=========  ===========  ========  =========================================
``N``      (B,)         int64     number of atoms per structure
``Ra``     (A, 3)       float     positions, Å
``Za``     (A,)         int64     atomic numbers
``E``      (B,)         float     total energy, eV
``Fa``     (A, 3)       float     forces, eV/Å
``Qa``     (A,)         float     atomic charges, e
``Q``      (B,)         float     total charge, e
``M2``     (B, 3)       float     dipole moment, e·Å
=========  ===========  ========  =========================================

Internal fields (written by the batch builder or by layers):

- ``batch_seg`` (A,) int64: index of the structure each atom belongs to.
- Pair lists hold every *unordered* pair once: ``idx_i``, ``idx_j`` (P,) int64
  atom indices into the batch and ``offsets`` (P, 3) Cartesian image offsets in
  Å, so that the pair vector is ``Ra[idx_j] - Ra[idx_i] + offsets``.  The plain
  names are the long-range list (all pairs of a molecule, or all pairs within
  ``cutoff_lr`` of a cell); the ``_sr`` names (``idx_i_sr``, ``idx_j_sr``,
  ``offsets_sr``) the short-range list within ``cutoff_sr``.  A periodic atom
  seeing its own image appears once per pair of opposite image offsets.
  Layers that pass messages along pairs send them both ways.
- ``Dij``, ``Dij_sr`` (P,): pair distances in Å, computed from ``Ra`` so that
  autograd reaches the positions.
- ``rbf`` (P_sr, K): radial basis values of ``Dij_sr``.
- ``atom_embedding`` (A, F): learned per-element features.
- ``Ea`` (A,): atomic energies, eV; ``E_<term>_a`` (A,): further atomic energy
  terms (``E_ele_a``: electrostatics) summed by ``EnergyReduce``.
"""

from __future__ import annotations

import torch

#: per-structure standard fields and their trailing shape
STRUCTURE_FIELDS = {"N": (), "E": (), "Q": (), "M2": (3,)}
#: per-atom standard fields and their trailing shape
ATOM_FIELDS = {"Ra": (3,), "Za": (), "Fa": (3,), "Qa": ()}
#: names a Datahub may map in ``features``
FEATURE_NAMES = ("N", "Ra", "Za", "Q")
#: names a Datahub may map in ``targets`` (and losses and metrics may weight)
TARGET_NAMES = ("E", "Fa", "Qa", "Q", "M2")
#: integer fields
INTEGER_FIELDS = frozenset({"N", "Za", "batch_seg", "idx_i", "idx_j", "idx_i_sr", "idx_j_sr"})


def segment_sum(values: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Sum rows of ``values`` (M, ...) into ``n_segments`` bins given by ``segments`` (M,)."""
    out = values.new_zeros((n_segments,) + tuple(values.shape[1:]))
    return out.index_add_(0, segments, values)


def atomic_energy_terms(fields: dict) -> list[str]:
    """Names of the atomic energy fields present: ``Ea`` and every ``E_<term>_a``."""
    return [k for k in fields if k == "Ea" or (k.startswith("E_") and k.endswith("_a"))]
