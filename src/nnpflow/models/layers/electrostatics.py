"""Charge layers: charge conservation, dipole moment and electrostatic energy."""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ..fields import segment_sum
from .base import Layer, smooth_step_down
from .cutoff import cutoff_function, cutoff_values


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

        E_ij = k q_i q_j [ s(r) χ_shielded(r) + (1 - s(r)) χ_bare(r) ]

    with ``k = Hartree_in_E · Bohr_in_R``, ``χ_shielded = 1/sqrt(r^2 + 1)`` and
    ``χ_bare = 1/r``.  The switch ``s(r)`` is the cutoff function ``cutoff_fn``
    (:mod:`nnpflow.models.layers.cutoff`) going from 1 to 0 between ``r_on`` and
    ``r_off``, set by ``flavor``:

    ============  =====================  ==================  ==================
    flavor        r_on                   r_off               default cutoff_fn
    ============  =====================  ==================  ==================
    ``PhysNet``   0                      cutoff_sr / 2       ``polynomial``
    ``SpookyNet`` cutoff_sr / 4          3 cutoff_sr / 4     ``smooth``
    ============  =====================  ==================  ==================

    so beyond ``r_off`` the interaction is the bare Coulomb law ``k q_i q_j / r`` in
    the units of ``E``.  With ``cutoff_lr`` (> 0) pairs beyond it are dropped and
    both terms are shifted so that the bare term vanishes with zero slope at
    ``cutoff_lr`` (``1/r -> 1/r + r/rc^2 - 2/rc``); the shielded term is shifted the
    same way applied to ``sqrt(r^2 + 1)`` (``PhysNet``) or by its own value and
    slope at ``rc`` (``SpookyNet``, so it too vanishes with zero slope there).  A
    long-range cutoff is required for periodic cells.  ``cutoff_lr`` null (or 0):
    the sum runs over all pairs of each (molecular) structure.  Half of each pair
    energy goes to each atom: writes ``E_ele_a`` (A,).

    These are the definitions of PhysNet (Unke & Meuwly, J. Chem. Theory Comput.
    15, 3678 (2019)) and SpookyNet (Unke et al., Nat. Commun. 12, 7273 (2021)) and
    the names of Enerzyme's ``ElectrostaticEnergy``, whose default flavor is
    ``SpookyNet``; nnpflow's is ``PhysNet``, what nnpflow models saved before
    ``flavor`` existed hold.
    """

    reads = ("Qa", "Dij", "idx_i", "idx_j")
    writes = ("E_ele_a",)

    #: flavor -> (r_on / cutoff_sr, r_off / cutoff_sr, default switch)
    FLAVORS = {"PhysNet": (0.0, 0.5, "polynomial"), "SpookyNet": (0.25, 0.75, "smooth")}

    def __init__(self, cutoff_sr: float, Hartree_in_E: float, Bohr_in_R: float,
                 cutoff_lr: float | None = None, flavor: str = "PhysNet",
                 cutoff_fn: str | None = None):
        super().__init__()
        if not cutoff_sr or float(cutoff_sr) <= 0:
            raise ConfigError(f"cutoff_sr must be a positive distance, got {cutoff_sr!r}")
        if cutoff_lr is not None:
            if isinstance(cutoff_lr, bool) or not isinstance(cutoff_lr, (int, float)) \
                    or cutoff_lr < 0 or math.isnan(cutoff_lr):
                raise ConfigError(f"cutoff_lr must be a positive distance, 0 or null (no "
                                  f"long-range cutoff), got {cutoff_lr!r}")
            if cutoff_lr == 0 or math.isinf(cutoff_lr):
                cutoff_lr = None
        if flavor not in self.FLAVORS:
            raise ConfigError(f"flavor: unknown electrostatics flavor {flavor!r}; choose one of "
                              f"{', '.join(self.FLAVORS)}")
        on, off, default_switch = self.FLAVORS[flavor]
        self.flavor = flavor
        self.switch_fn = default_switch if cutoff_fn is None else cutoff_function(cutoff_fn)
        self.cutoff_sr = float(cutoff_sr)
        self.switch_on, self.switch_off = on * self.cutoff_sr, off * self.cutoff_sr
        self.cutoff_lr = None if cutoff_lr is None else float(cutoff_lr)
        self.ke = float(Hartree_in_E) * float(Bohr_in_R)

    def requirements(self):
        return {"cutoff_lr": math.inf if self.cutoff_lr is None else self.cutoff_lr}

    def switch(self, r: torch.Tensor) -> torch.Tensor:
        """``s(r)`` (1 at short range, 0 from ``r_off`` on)."""
        if self.flavor == "PhysNet" and self.switch_fn == "polynomial":
            return smooth_step_down(r * (1.0 / self.switch_off))
        return cutoff_values(self.switch_fn, r, self.switch_off, self.switch_on)

    def pair_energy(self, r: torch.Tensor, qq: torch.Tensor) -> torch.Tensor:
        """Energy ``E_ij`` (P,) for distances ``r`` and charge products ``qq``."""
        switch = self.switch(r)
        r_shielded = torch.sqrt(r * r + 1.0)
        shielded = 1.0 / r_shielded
        bare = 1.0 / r
        if self.cutoff_lr is not None:
            rc = self.cutoff_lr
            bare = bare + r / (rc * rc) - 2.0 / rc
            if self.flavor == "PhysNet":
                shielded = shielded + r_shielded / (rc * rc) - 2.0 / rc
            else:
                denom = (rc * rc + 1.0) ** 1.5
                shielded = shielded + r * (rc / denom) - (2.0 * rc * rc + 1.0) / denom
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
