"""Small EMT data sets and descriptors shared by the ANN tests (this module has no tests).

Structures are 8-atom fcc Cu/Au cells (and optionally a few isolated clusters)
with random occupation and displacements, labelled with ASE's EMT energies (eV)
and forces (eV/Å); every ``no_forces_every``-th one has no forces.
"""

from __future__ import annotations

import numpy as np
import torch

from nnpflow import Structure
from nnpflow.descriptors import ChebyshevDescriptor

ARCH = {"Cu": [(6, "tanh"), (6, "tanh")], "Au": [(6, "tanh"), (6, "tanh")]}


def small_descriptor(dtype=torch.float64) -> ChebyshevDescriptor:
    return ChebyshevDescriptor(["Cu", "Au"], rad_order=4, rad_cutoff=4.5, ang_order=2,
                               ang_cutoff=3.5, min_cutoff=0.55, dtype=dtype)


def emt_cells(n: int, seed: int = 0, no_forces_every: int = 0, cluster_every: int = 0
              ) -> list[Structure]:
    """``n`` EMT-labelled Cu/Au structures (see the module docstring)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=rng.uniform(3.65, 3.85), cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(np.where(rng.random(8) < 0.5, "Au", "Cu").tolist())
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        if cluster_every and i % cluster_every == cluster_every - 1:
            atoms.pbc = False
            atoms.cell = [0, 0, 0]
        atoms.calc = EMT()
        atoms.get_forces()
        s = Structure.from_ase(atoms, name=f"emt/s{i:03d}.xsf")
        if no_forces_every and i % no_forces_every == no_forces_every - 1:
            s = s.copy(forces=None)
        out.append(s)
    return out
