"""Machine-learned potentials: every model family behind one interface.

A family is an ``nn.Module`` whose forward takes a batch of named fields and
returns named fields (``E``, ``Fa``, and ``Qa``, ``M2``, ... where the model makes
them), its content of the one model file (the ``nnpflow.model`` envelope,
``torch.load(weights_only=True)`` safe, versioned) and a line in
:mod:`nnpflow.models.registry`, which writes
(:func:`~nnpflow.models.registry.save_model`) and loads
(:func:`~nnpflow.models.registry.load_model`) any model file and predicts with the family's
own path (:class:`~nnpflow.models.prediction_result.PredictionResult`,
:func:`~nnpflow.models.prediction_result.committee_mean`).  Families:
:mod:`nnpflow.models.ann_model` (descriptor features + per-species networks)
and :mod:`nnpflow.models.stack_family` (layer stacks such as SchNet).

Submodules (imported on demand, so ``import nnpflow.models`` stays cheap):

- :mod:`nnpflow.models.fields` -- the named fields layers read and write (N, Ra,
  Za, E, Fa, Qa, Q, M2 and internal ones such as pair lists and distances).
- :mod:`nnpflow.models.layers` -- the layers of Enerzyme's layer stack (``RangeSeparation``,
  ``GaussianSmearing``, ``RandomAtomEmbedding``, the SchNet ``Core``,
  ``AtomicAffine``, ``ChargeConservation``, ``AtomicCharge2Dipole``,
  ``ElectrostaticEnergy``, ``EnergyReduce``, ``Force``) and their registry.
- :mod:`nnpflow.models.stack` -- :class:`LayerStack`, a model built from a list of
  layer specifications and ``build_params``; :mod:`nnpflow.models.cores` maps an
  architecture name (``SchNet``) to the class of its ``Core`` layer.
- :mod:`nnpflow.models.pairs` -- pair lists (all pairs for molecules, periodic
  images for cells) and batch assembly for layer-stack models.
- :mod:`nnpflow.models.model_file` -- the one model file: the versioned,
  weights-only ``nnpflow.model`` envelope every family writes (``family``,
  ``settings``, ``state_dict``, ...), and the layer-stack family's part of it.
- :mod:`nnpflow.models.prediction` -- energies, forces (and charges, dipoles) of
  a layer-stack model for structures or ``ase.Atoms``.

The atomic networks of the ANN family live in :mod:`nnpflow.models.ann`.
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
