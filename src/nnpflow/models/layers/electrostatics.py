"""Charge layers: charge conservation, dipole moment and electrostatic energy."""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ..fields import segment_sum
from .base import Layer, smooth_step_down


class ChargeConservation(Layer):
    """Spread each structure's charge excess equally over its atoms.

    ``q_i <- q_i + (Q - sum_j q_j) / N`` so that the atomic charges ``Qa`` (e) sum
    to the total charge ``Q`` (0 when the batch has no ``Q``).  Writes the
    corrected ``Qa`` and, as ``Q``, the sum of the uncorrected charges (the
    prediction a ``Q`` loss term compares with the reference total charge).
    """

    reads = ("Qa", "batch_seg", "N")
    optional_reads = ("Q",)
    writes = ("Qa", "Q")

    def forward(self, fields):
        qa, seg, n = fields["Qa"], fields["batch_seg"], fields["N"]
        raw = segment_sum(qa, seg, n.shape[0])
        total = fields.get("Q")
        total = torch.zeros_like(raw) if total is None else total.to(raw.dtype)
        fields["Qa"] = qa + ((total - raw) / n.to(raw.dtype)).index_select(0, seg)
        fields["Q"] = raw
        return fields


class AtomicCharge2Dipole(Layer):
    """Dipole moment ``M2 = sum_i q_i R_i`` (e·Å) per structure from ``Qa`` and ``Ra``.

    With charges that sum to the total charge (after ``ChargeConservation``) of a
    neutral structure the dipole does not depend on the origin.
    """

    reads = ("Qa", "Ra", "batch_seg", "N")
    writes = ("M2",)

    def forward(self, fields):
        fields["M2"] = segment_sum(fields["Qa"].unsqueeze(-1) * fields["Ra"],
                                   fields["batch_seg"], fields["N"].shape[0])
        return fields


class ElectrostaticEnergy(Layer):
    """Coulomb energy of the atomic charges, shielded at short range.

    For a pair at distance ``r`` (units of ``Ra``) with charges ``q_i, q_j`` (e):

        E_ij = k q_i q_j [ s(r) / sqrt(r^2 + 1) + (1 - s(r)) / r ],   k = Hartree_in_E · Bohr_in_R

    ``s(r)`` is a smooth step from 1 at ``r = 0`` to 0 at ``r = cutoff_sr / 2``
    (``1 - 10x^3 + 15x^4 - 6x^5``, ``x = 2r / cutoff_sr``), so beyond half the
    short-range cutoff the interaction is the bare Coulomb law ``k q_i q_j / r`` in
    the units of ``E``.  With ``cutoff_lr`` both terms are shifted to vanish with
    zero slope at ``cutoff_lr`` (``1/r -> 1/r + r/rc^2 - 2/rc``) and pairs beyond it
    are dropped; this is required for periodic cells.  Without ``cutoff_lr`` the
    sum runs over all pairs of each (molecular) structure.  Half of each pair
    energy goes to each atom: writes ``E_ele_a`` (A,).
    """

    reads = ("Qa", "Dij", "idx_i", "idx_j")
    writes = ("E_ele_a",)

    def __init__(self, cutoff_sr: float, Hartree_in_E: float, Bohr_in_R: float,
                 cutoff_lr: float | None = None):
        super().__init__()
        if not cutoff_sr or float(cutoff_sr) <= 0:
            raise ConfigError(f"cutoff_sr must be a positive distance, got {cutoff_sr!r}")
        if cutoff_lr is not None and float(cutoff_lr) <= 0:
            raise ConfigError(f"cutoff_lr must be positive or null, got {cutoff_lr!r}")
        self.cutoff_sr = float(cutoff_sr)
        self.cutoff_lr = None if cutoff_lr is None else float(cutoff_lr)
        self.ke = float(Hartree_in_E) * float(Bohr_in_R)

    def requirements(self):
        return {"cutoff_lr": math.inf if self.cutoff_lr is None else self.cutoff_lr}

    def pair_energy(self, r: torch.Tensor, qq: torch.Tensor) -> torch.Tensor:
        """Energy ``E_ij`` (P,) for distances ``r`` and charge products ``qq``."""
        switch = smooth_step_down(r * (2.0 / self.cutoff_sr))
        r_shielded = torch.sqrt(r * r + 1.0)
        shielded = 1.0 / r_shielded
        bare = 1.0 / r
        if self.cutoff_lr is not None:
            rc = self.cutoff_lr
            shielded = shielded + r_shielded / (rc * rc) - 2.0 / rc
            bare = bare + r / (rc * rc) - 2.0 / rc
        energy = self.ke * qq * (switch * shielded + (1.0 - switch) * bare)
        if self.cutoff_lr is not None:
            energy = energy * (r <= self.cutoff_lr).to(energy.dtype)
        return energy

    def forward(self, fields):
        qa, i, j = fields["Qa"], fields["idx_i"], fields["idx_j"]
        half = 0.5 * self.pair_energy(fields["Dij"], qa.index_select(0, i) * qa.index_select(0, j))
        out = qa.new_zeros(qa.shape).index_add_(0, i, half).index_add_(0, j, half)
        fields["E_ele_a"] = out
        return fields
