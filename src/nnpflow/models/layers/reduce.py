"""Reductions of atomic quantities to structure totals."""

from __future__ import annotations

from ..fields import atomic_energy_terms, segment_sum
from .base import Layer


class EnergyReduce(Layer):
    """Total energy ``E`` (B,) in eV: the sum over atoms of ``Ea`` and every further
    atomic energy term ``E_<term>_a`` present (e.g. ``E_ele_a``)."""

    reads = ("Ea", "batch_seg", "N")
    writes = ("E",)

    def forward(self, fields):
        terms = atomic_energy_terms(fields)
        atomic = fields[terms[0]]
        for name in terms[1:]:
            atomic = atomic + fields[name]
        fields["E"] = segment_sum(atomic, fields["batch_seg"], fields["N"].shape[0])
        return fields
