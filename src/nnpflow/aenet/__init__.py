"""Interoperability with aenet (atomisticnet/aenet, version 2.x).

* :mod:`.potential_file`: aenet's per-species potential files, in the binary
  form ``train.x`` writes and ``predict.x`` and aenet's library read
  (``*.nn``), and the ASCII variant (``*.nn.ascii``) of aenet-python and the
  LAMMPS interface; read and written by our own code from the format defined by
  aenet's Fortran source (``feedforward.f90``, ``sfsetup.f90``,
  ``trainset.f90``, ``potential.f90``).
* :mod:`.convert`: an nnpflow :class:`~nnpflow.training.potential.TorchANNPotential`
  (or its :class:`~nnpflow.models.ann_model.ANNModel`) to aenet potential files
  and back (the mapping is documented in ``docs/aenet.md``), ``export_aenet``;
  :mod:`.facade`: ``potential_from_aenet`` and ``import_aenet``, which return
  the ``TorchANNPotential`` facade.
* :mod:`.predict`: ``predict.in`` for aenet's ``predict.x`` and a reader of its
  output.
"""

from .convert import (AENET_ACTIVATIONS, AenetExportError, export_aenet, model_from_aenet,
                      potential_to_aenet)
from .facade import import_aenet, potential_from_aenet
from .potential_file import (AenetNetwork, AenetPotential, AenetSetup, AenetTrainingSetInfo,
                             read_potential)
from .predict import format_predict_input, read_predict_output

__all__ = [
    "AENET_ACTIVATIONS", "AenetExportError", "AenetNetwork", "AenetPotential", "AenetSetup",
    "AenetTrainingSetInfo", "export_aenet", "format_predict_input", "import_aenet",
    "model_from_aenet",
    "potential_from_aenet", "potential_to_aenet", "read_potential", "read_predict_output",
]
