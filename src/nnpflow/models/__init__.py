"""Machine-learned potentials: the modular layer stack (SchNet) and atomic networks.

Submodules (imported on demand, so ``import nnpflow.models`` stays cheap):

- :mod:`nnpflow.models.fields` -- the named fields layers read and write (N, Ra,
  Za, E, Fa, Qa, Q, M2 and internal ones such as pair lists and distances).
- :mod:`nnpflow.models.layers` -- the layers of spec 004 (``RangeSeparation``,
  ``GaussianSmearing``, ``RandomAtomEmbedding``, the SchNet ``Core``,
  ``AtomicAffine``, ``ChargeConservation``, ``AtomicCharge2Dipole``,
  ``ElectrostaticEnergy``, ``EnergyReduce``, ``Force``) and their registry.
- :mod:`nnpflow.models.stack` -- :class:`LayerStack`, a model built from a list of
  layer specifications and ``build_params``; :mod:`nnpflow.models.cores` maps an
  architecture name (``SchNet``) to the class of its ``Core`` layer.
- :mod:`nnpflow.models.pairs` -- pair lists (all pairs for molecules, periodic
  images for cells) and batch assembly for layer-stack models.
- :mod:`nnpflow.models.model_file` -- saving and loading layer-stack models
  (``torch.load(weights_only=True)`` safe).
- :mod:`nnpflow.models.prediction` -- energies, forces (and charges, dipoles) of
  a layer-stack model for structures or ``ase.Atoms``.

The atomic-network (ANN) potential lives in :mod:`nnpflow.models.ann`.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "LayerStack": "nnpflow.models.stack",
    "build_layer_stack": "nnpflow.models.stack",
    "LAYERS": "nnpflow.models.layers",
    "CORES": "nnpflow.models.cores",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nnpflow.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
