"""Neighbour lists and aenet's Chebyshev descriptor with analytic derivatives.

Public names (see docs/architecture.md, "Descriptor"):

* :func:`neighbor_list`, :class:`NeighborList` (and :func:`batch_neighbor_list`)
* :class:`ChebyshevDescriptor`
* :class:`DescriptorDerivatives`

``aenet.torch_featurize`` of the aenet PyTorch dataset specification maps to this
package.  The names are imported on first use (module ``__getattr__``): importing
a submodule such as :mod:`nnpflow.descriptors.neighbors` does not load the others.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

#: public name -> module it lives in (imported on first access)
_EXPORTS = {
    "neighbor_list": ".neighbors",
    "batch_neighbor_list": ".neighbors",
    "NeighborList": ".neighbors",
    "ChebyshevDescriptor": ".chebyshev",
    "typespin_values": ".chebyshev",
    "DescriptorDerivatives": ".derivatives",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
