"""Energies and forces of ANN potentials along a trajectory: MD without per-step set-up.

In molecular dynamics the same few structures are predicted again and again with
atoms that move a little each step.  :class:`ANNTrajectory` predicts them for one
ANN potential or a committee of ANN potentials sharing one descriptor
(:class:`~nnpflow.models.ann_model.ANNModel`), keeping what does not change:

* a Verlet neighbour list: pairs within ``cutoff + skin`` (Å) with their image
  offsets, searched once (:func:`nnpflow.descriptors.neighbors.batch_neighbor_list`)
  and searched again only when an atom has moved more than ``skin / 2`` since;
  each step recomputes the pair vectors ``r_j - r_i + S @ cell`` and keeps the
  pairs with ``min_cutoff < r <= cutoff``, exactly the pairs a fresh search
  gives;
* the species indices, species groups and structure of each atom;
* the features and the descriptor derivatives' geometry of a step, shared by
  every member of the committee.

The arithmetic per step is the descriptor's own
(:meth:`~nnpflow.descriptors.ChebyshevDescriptor.features_from_edges`,
:class:`~nnpflow.descriptors.derivatives.DescriptorDerivatives`) and the
model's (:meth:`~nnpflow.models.ann_model.ANNModel.energies_and_forces`), so the
numbers equal those of ``ANNModel.predict_structures`` to rounding (the order
in which a centre's neighbours are summed may differ).  Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["ANNTrajectory", "TrajectoryStep", "DEFAULT_SKIN"]

#: Verlet skin (Å): the list holds pairs up to cutoff + skin and is searched again
#: when an atom has moved more than half of it
DEFAULT_SKIN = 1.0


class TrajectoryStep:
    """Predictions of one step: ``energies`` (M, B) eV of the M members for the B
    structures, ``forces`` (M, A, 3) eV/Å over the concatenated atoms, and
    ``closest`` (B,) Å, each structure's smallest interatomic distance (periodic
    images included) when below the descriptor's neighbour cutoff, else ``inf``."""

    def __init__(self, energies: np.ndarray, forces: np.ndarray, closest: np.ndarray,
                 counts: Sequence[int]):
        self.energies, self.forces, self.closest = energies, forces, closest
        self.offsets = np.concatenate(([0], np.cumsum(counts)))

    def member_forces(self, k: int) -> np.ndarray:
        """(M, N_k, 3) forces of every member on structure ``k`` (eV/Å)."""
        return self.forces[:, self.offsets[k]:self.offsets[k + 1]]


class ANNTrajectory:
    """Predict fixed structures (species, cell, periodicity) for new positions.

    Parameters
    ----------
    models : ANN potentials (``ANNModel``) with one descriptor (equal settings).
    species : per structure, its element symbols (N_k,).
    cells : per structure, its (3, 3) cell (Å) or ``None`` for an isolated one.
    pbcs : per structure, its (3,) periodicity.
    skin : the Verlet skin (Å, > 0).
    """

    def __init__(self, models: Sequence, species: Sequence[Sequence[str]],
                 cells: Sequence, pbcs: Sequence, skin: float = DEFAULT_SKIN):
        from ..descriptors.batching import collate
        models = list(models)
        if not models:
            raise ValueError("ANNTrajectory needs at least one model")
        desc = models[0].descriptor
        for m in models[1:]:
            if m.descriptor.fingerprint != desc.fingerprint:
                raise ValueError("the models of an ANNTrajectory must share their descriptor")
        if not skin > 0:
            raise ValueError(f"skin must be positive, got {skin}")
        self.models, self.descriptor, self.skin = models, desc, float(skin)
        self.cutoff = float(desc.neighbor_cutoff)
        self.counts = [len(s) for s in species]
        items = [(np.zeros((n, 3)), None if not np.any(p) else np.asarray(c, dtype=np.float64),
                  np.asarray(p, dtype=bool), list(s), f"structure #{k}")
                 for k, (n, s, c, p) in enumerate(zip(self.counts, species, cells, pbcs))]
        batch = collate(items, desc.species_to_idx, desc.device, desc.dtype)
        self.cells, self.pbcs, self.counts_t = batch.cells, batch.pbcs, batch.counts
        self.species = batch.species
        dev = desc.device
        self.atom_structure = torch.repeat_interleave(
            torch.arange(len(self.counts), device=dev), batch.counts)
        self.n_atoms = batch.counts
        self.groups = [torch.nonzero(self.species == t).squeeze(1)
                       for t in range(len(desc.species))]
        self.n_searches = 0
        self._ref: torch.Tensor | None = None

    # ----------------------------------------------------------- neighbours
    def _search(self, pos: torch.Tensor) -> None:
        from ..descriptors.neighbors import batch_neighbor_list
        nl = batch_neighbor_list(pos, self.cells, self.pbcs, self.counts_t,
                                 self.cutoff + self.skin)
        self.ci, self.cj = nl.center, nl.neighbor
        # S @ cell of each pair's structure (Å)
        cell = self.cells.index_select(0, self.atom_structure.index_select(0, nl.center))
        image = torch.bmm(nl.shift.to(pos.dtype).unsqueeze(1), cell).squeeze(1)
        self.image = [image[:, a].contiguous() for a in range(3)]
        self.pair_structure = self.atom_structure.index_select(0, nl.center)
        self._ref = pos.clone()
        self.n_searches += 1

    def _pairs(self, pos: torch.Tensor):
        if self._ref is None or self._ref.shape != pos.shape:
            self._search(pos)
        else:
            moved = (pos - self._ref).square().sum(dim=1).max()
            if not bool(moved <= (0.5 * self.skin) ** 2):      # NaN also searches again
                self._search(pos)
        vec = []
        for a in range(3):
            pa = pos[:, a].contiguous()
            vec.append(pa.index_select(0, self.cj) - pa.index_select(0, self.ci)
                       + self.image[a])
        r = vec[0] * vec[0]
        r.addcmul_(vec[1], vec[1]).addcmul_(vec[2], vec[2]).sqrt_()
        return vec, r

    # ------------------------------------------------------------ predictions
    @torch.no_grad()
    def _geometry(self, positions: np.ndarray):
        from ..descriptors.derivatives import DescriptorDerivatives
        desc = self.descriptor
        pos = torch.as_tensor(np.asarray(positions, dtype=np.float64)).to(
            device=desc.device, dtype=desc.dtype)
        vec, r = self._pairs(pos)
        closest = torch.full((len(self.counts),), float("inf"), dtype=r.dtype, device=r.device)
        if r.shape[0]:
            closest.scatter_reduce_(0, self.pair_structure, r, reduce="amin")
        keep = torch.nonzero((r > desc.min_cutoff) & (r <= self.cutoff)).squeeze(1)
        ci, cj = self.ci.index_select(0, keep), self.cj.index_select(0, keep)
        vec = [v.index_select(0, keep) for v in vec]
        r = r.index_select(0, keep)
        feats = desc.features_from_edges(self.species, ci, cj, vec, r)
        ders = DescriptorDerivatives(desc, self.species, ci, cj, torch.stack(vec, dim=1),
                                     self.counts)
        closest = closest.cpu().numpy()
        return feats, ders, np.where(closest <= self.cutoff, closest, np.inf)

    def predict(self, positions: np.ndarray) -> TrajectoryStep:
        """Energies and forces of every member for ``positions`` (A, 3) Å, the
        structures' atoms concatenated in order."""
        feats, ders, closest = self._geometry(positions)
        energies, forces = [], []
        for model in self.models:
            out = model.energies_and_forces(feats, self.species, self.atom_structure,
                                            self.n_atoms, ders, None, self.groups)
            energies.append(out["E"].cpu().numpy())
            forces.append(out["Fa"].cpu().numpy())
        return TrajectoryStep(np.stack(energies), np.stack(forces), closest, self.counts)
