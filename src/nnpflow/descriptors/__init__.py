"""Neighbour lists and aenet's Chebyshev descriptor with analytic derivatives.

Public names (see docs/architecture.md, "Descriptor"):

* :func:`neighbor_list`, :class:`NeighborList` (and :func:`batch_neighbor_list`)
* :class:`ChebyshevDescriptor`
* :class:`DescriptorDerivatives`
"""

from __future__ import annotations

from .chebyshev import ChebyshevDescriptor, typespin_values
from .derivatives import DescriptorDerivatives
from .neighbors import NeighborList, batch_neighbor_list, neighbor_list

__all__ = ["neighbor_list", "batch_neighbor_list", "NeighborList", "ChebyshevDescriptor",
           "DescriptorDerivatives", "typespin_values"]
