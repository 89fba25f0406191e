"""The layers of the layer stack (Enerzyme's train.yaml) and their registry.

``LAYERS`` maps the names users write in ``Modelhub.<FF>.layers[].name`` to layer
classes.  ``Core`` is not in it: the model's ``architecture`` picks the class of
its core (:data:`nnpflow.models.cores.CORES`).  To add a layer, write a
:class:`~nnpflow.models.layers.base.Layer` subclass and register it here.
"""

from __future__ import annotations

from .affine import AtomicAffine
from .base import Layer
from .electrostatics import AtomicCharge2Dipole, ChargeConservation, ElectrostaticEnergy
from .embedding import RandomAtomEmbedding
from .force import Force
from .geometry import Distance, RangeSeparation
from .rbf import GaussianSmearing
from .reduce import EnergyReduce
from .schnet import SchNetCore

LAYERS: dict[str, type[Layer]] = {
    "RangeSeparation": RangeSeparation,
    "GaussianSmearing": GaussianSmearing,
    "RandomAtomEmbedding": RandomAtomEmbedding,
    "AtomicAffine": AtomicAffine,
    "ChargeConservation": ChargeConservation,
    "AtomicCharge2Dipole": AtomicCharge2Dipole,
    "ElectrostaticEnergy": ElectrostaticEnergy,
    "EnergyReduce": EnergyReduce,
    "Force": Force,
}

__all__ = ["LAYERS", "Layer", "Distance", "SchNetCore", *LAYERS]
