"""The aenet conversions that hand back the spec API's ``TorchANNPotential``.

:func:`potential_from_aenet` and :func:`import_aenet` wrap
:func:`nnpflow.aenet.convert.model_from_aenet` (which builds the
:class:`~nnpflow.models.ann_model.ANNModel`) in the facade, so that the
conversion itself depends on the models only.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from .convert import model_from_aenet
from .potential_file import AenetPotential


def potential_from_aenet(potentials: Sequence[AenetPotential | str | os.PathLike],
                         device: str | torch.device = "cpu") -> Any:
    """A :class:`~nnpflow.training.potential.TorchANNPotential` (float64) from one
    aenet potential per species (objects or file paths, binary or ASCII); see
    :func:`nnpflow.aenet.convert.model_from_aenet` for what the files must agree on."""
    from ..training.potential import TorchANNPotential
    model, training_info = model_from_aenet(potentials, device=device)
    return TorchANNPotential.from_model(model, {"training": training_info})


def import_aenet(files: Sequence[str | os.PathLike], output: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> Any:
    """A ``TorchANNPotential`` from aenet potential files (one per species,
    binary or ASCII); saved to ``output`` (an nnpflow model file) when given."""
    potential = potential_from_aenet([os.fspath(f) for f in files], device=device)
    if output is not None:
        potential.save(output)
    return potential
