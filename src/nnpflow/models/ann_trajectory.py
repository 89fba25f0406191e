"""Energies and forces of ANN potentials along a trajectory: MD without per-step set-up.

In molecular dynamics the same few structures are predicted again and again with
atoms that move a little each step.  :class:`ANNTrajectory` predicts them for one
ANN potential or a committee of ANN potentials sharing one descriptor
(:class:`~nnpflow.models.ann_model.ANNModel`), keeping what does not change:

* a Verlet neighbour list: pairs within ``cutoff + skin`` (Å) with their image
  offsets, searched once (:func:`nnpflow.descriptors.neighbors.batch_neighbor_list`)
  and searched again only when an atom has moved more than ``skin / 2`` since;
* laid out per centre atom in fixed slots (one padded row of neighbours per
  atom, for the radial terms pairs within ``rad_cutoff + skin``, for the angular
  ones within ``ang_cutoff + skin``), so that a step is a few dense tensor
  operations: the pair vectors ``r_j - r_i + S @ cell``, the cutoff functions
  (zero beyond the cutoffs and at or below ``min_cutoff``: exactly the pairs a
  fresh search gives), the radial Chebyshev sums and the angular sums through
  the harmonic sums of the Legendre addition theorem (:mod:`nnpflow.descriptors.angular`);
* the species of each atom and of each neighbour (typespins);
* each member's per-species networks as one stack of per-atom weights (when
  their shapes agree).

The features are those of :class:`~nnpflow.descriptors.ChebyshevDescriptor`
(the same definitions and the same numbers to rounding; the order in which a
centre's neighbours are summed may differ), computed by
:class:`nnpflow.descriptors.slot_features.SlotFeatures`; every member's network
runs on them and gives dE/dG (autograd, in the network's dtype, as
``ANNModel.energies_and_forces``); the forces are minus dE/dG carried back to
the slot vectors (``SlotFeatures.vector_gradients``) and folded onto their atoms
(once for the committee's mean, once per member for the members' own).  The
networks' weights are read when the trajectory is made.  Units: Å, eV, eV/Å.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["ANNTrajectory", "TrajectoryStep", "DEFAULT_SKIN"]

#: Verlet skin (Å): the list holds pairs up to cutoff + skin and is searched again
#: when an atom has moved more than half of it
DEFAULT_SKIN = 0.5


class TrajectoryStep:
    """Predictions of one step: ``energies`` (M, B) eV of the M members for the B
    structures; ``mean_forces`` (A, 3) eV/Å, the committee's mean over the
    concatenated atoms; ``forces`` (M, A, 3) eV/Å, every member's, when asked for
    (else ``None``); and ``closest`` (B,) Å, each structure's smallest
    interatomic distance (periodic images included) when below the descriptor's
    neighbour cutoff, else ``inf``."""

    def __init__(self, energies: np.ndarray, forces: np.ndarray | None,
                 mean_forces: np.ndarray, closest: np.ndarray, counts: Sequence[int]):
        self.energies, self.forces, self.closest = energies, forces, closest
        self.mean_forces = mean_forces
        self.offsets = np.concatenate(([0], np.cumsum(counts)))

    def member_forces(self, k: int) -> np.ndarray:
        """(M, N_k, 3) forces of every member on structure ``k`` (eV/Å); needs
        ``member_forces=True`` in :meth:`ANNTrajectory.predict`."""
        if self.forces is None:
            raise ValueError("the members' forces were not computed (member_forces=False)")
        return self.forces[:, self.offsets[k]:self.offsets[k + 1]]

    def structure_forces(self, k: int) -> np.ndarray:
        """(N_k, 3) mean forces on structure ``k`` (eV/Å)."""
        return self.mean_forces[self.offsets[k]:self.offsets[k + 1]]


class _Slots:
    """Pairs of a Verlet list laid out per centre atom: ``neighbor`` (N, K) atom
    indices and ``image`` (N, K, 3) offsets ``S @ cell`` (Å); empty slots point
    at the centre itself with an offset of length ``pad`` (beyond every cutoff)."""

    def __init__(self, center: torch.Tensor, neighbor: torch.Tensor, image: torch.Tensor,
                 n_atoms: int, pad: float):
        dev = center.device
        degree = torch.bincount(center, minlength=n_atoms)
        k = max(int(degree.max()) if n_atoms and center.numel() else 0, 1)
        first = torch.cumsum(degree, 0) - degree
        slot = torch.arange(center.shape[0], device=dev) - first.index_select(0, center)
        flat = center * k + slot
        nbr = torch.arange(n_atoms, device=dev).repeat_interleave(k)
        nbr[flat] = neighbor
        img = torch.zeros(n_atoms * k, 3, dtype=image.dtype, device=dev)
        img[:, 0] = pad
        img[flat] = image
        self.k, self.neighbor = k, nbr
        self.image = img.view(n_atoms, k, 3)

    def vectors(self, pos: torch.Tensor) -> torch.Tensor:
        """Pair vectors (N, K, 3) Å for positions (N, 3)."""
        n = pos.shape[0]
        vec = pos.index_select(0, self.neighbor).view(n, self.k, 3) - pos.unsqueeze(1)
        return vec + self.image


class _AtomNetworks:
    """A potential's per-species networks as one stack of per-atom weights for
    fixed atoms: each layer one batched product over the atoms instead of one
    product per species (a step's network and its backward pass in a dozen
    operations).  :meth:`of` gives ``None`` (use ``ANNModel.net``) when the
    species' networks differ in shape or activations, or are large."""

    #: most weights (atoms x weights per network) held for the stack
    MAX_WEIGHTS = 4_000_000

    def __init__(self, layers, activations, mean, std, dtype):
        self.layers, self.activations = layers, activations
        self.mean, self.std, self.dtype = mean, std, dtype

    @classmethod
    def of(cls, model, species: torch.Tensor) -> "_AtomNetworks | None":
        net = model.net
        arch = [net.architecture[s] for s in net.species]
        if any(a != arch[0] for a in arch) or len(net.nets) != len(arch):
            return None
        n_atoms = int(species.shape[0])
        per_net = sum(p.numel() for p in net.nets[0].parameters())
        if n_atoms * per_net > cls.MAX_WEIGHTS:
            return None
        layers, activations = [], []
        with torch.no_grad():
            for k in range(len(arch[0]) + 1):
                lin = [seq[2 * k] for seq in net.nets]
                weight = torch.stack([m.weight for m in lin]).index_select(0, species)
                bias = torch.stack([m.bias for m in lin]).index_select(0, species)
                layers.append((weight.detach().clone(), bias.detach().unsqueeze(2).clone()))
                activations.append(net.nets[0][2 * k + 1] if k < len(arch[0]) else None)
            mean = net.feature_mean.index_select(0, species).clone()
            std = net.feature_std.index_select(0, species).clone()
        return cls(layers, activations, mean, std, net.feature_mean.dtype)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Atomic outputs (A,) of raw ``features`` (A, F), as ``AtomicNetworks``."""
        x = ((features.to(self.dtype) - self.mean) / self.std).unsqueeze(2)     # (A, F, 1)
        for (weight, bias), act in zip(self.layers, self.activations):
            x = torch.baddbmm(bias, weight, x)
            if act is not None:
                x = act(x)
        return x.view(-1)


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
        from ..errors import ConfigError
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
        # per member: the reference energies (eV) of each structure's atoms
        self.reference = []
        for model in models:
            refs = model.reference_vector().to(dev).index_select(0, self.species)
            ref_sum = torch.zeros(len(self.counts), dtype=torch.float64, device=dev).index_add(
                0, self.atom_structure, refs)
            if bool(torch.isnan(ref_sum).any()):
                missing = sorted(set(model.species) - set(model.atomic_energies))
                raise ConfigError(f"the potential has no atomic reference energy for "
                                  f"{', '.join(missing)}, which occur in the structures")
            self.reference.append(ref_sum)
        self.nets = [_AtomNetworks.of(model, self.species) for model in models]
        self.n_searches = 0
        self._ref: torch.Tensor | None = None

    # ----------------------------------------------------------- neighbours
    def _search(self, pos: torch.Tensor) -> None:
        from ..descriptors.neighbors import batch_neighbor_list
        desc = self.descriptor
        nl = batch_neighbor_list(pos, self.cells, self.pbcs, self.counts_t,
                                 self.cutoff + self.skin)
        # S @ cell of each pair's structure (Å)
        cell = self.cells.index_select(0, self.atom_structure.index_select(0, nl.center))
        image = torch.bmm(nl.shift.to(pos.dtype).unsqueeze(1), cell).squeeze(1)
        n, pad = pos.shape[0], 2.0 * self.cutoff + self.skin
        self.slots = []
        for rc in (desc.rad_cutoff, desc.ang_cutoff):
            keep = torch.nonzero(nl.distance <= rc + self.skin).squeeze(1)
            self.slots.append(_Slots(nl.center.index_select(0, keep),
                                     nl.neighbor.index_select(0, keep),
                                     image.index_select(0, keep), n, pad))
        if desc.multi:
            spin = desc.typespin.index_select(0, self.species)
            self.spins = [spin.index_select(0, sl.neighbor).view(n, sl.k) for sl in self.slots]
        self._ref = pos.clone()
        self.n_searches += 1

    def _features(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, F) of positions (N, 3), differentiable with respect to
        them, and each atom's nearest neighbour distance (N,) Å."""
        from ..descriptors.slot_features import slot_features
        with torch.no_grad():
            self._update(pos.detach())
        rad, ang = (sl.vectors(pos) for sl in self.slots)
        spins = self.spins if self.descriptor.multi else (None, None)
        return slot_features(self.descriptor, rad, ang, *spins)

    def _update(self, pos: torch.Tensor) -> None:
        """Search again when an atom has moved more than half the skin (or the
        positions are not finite)."""
        if self._ref is None or self._ref.shape != pos.shape:
            self._search(pos)
            return
        moved = (pos - self._ref).square().sum(dim=1).max()
        if not bool(moved <= (0.5 * self.skin) ** 2):      # NaN also searches again
            self._search(pos)

    # ------------------------------------------------------------ features
    def _slots(self, pos: torch.Tensor):
        """:class:`~nnpflow.descriptors.slot_features.SlotFeatures` of positions
        (N, 3) Å (searching the Verlet list again when needed)."""
        from ..descriptors.slot_features import SlotFeatures
        self._update(pos)
        rad, ang = (sl.vectors(pos) for sl in self.slots)
        spins = self.spins if self.descriptor.multi else (None, None)
        return SlotFeatures(self.descriptor, rad, ang, *spins)

    def _position_gradient(self, slots, de_dg: torch.Tensor) -> torch.Tensor:
        """dE/dR (N, 3) eV/Å from dE/dG (N, F): each slot vector's gradient on
        its neighbour, minus on its centre."""
        out = None
        for layout, grad in zip(self.slots, slots.vector_gradients(de_dg)):
            part = torch.zeros_like(grad[:, 0]).index_add_(0, layout.neighbor,
                                                            grad.view(-1, 3))
            part -= grad.sum(1)
            out = part if out is None else out + part
        return out

    # ------------------------------------------------------------ predictions
    @torch.no_grad()
    def predict(self, positions: np.ndarray, member_forces: bool = True) -> TrajectoryStep:
        """Energies and forces of every member for ``positions`` (A, 3) Å, the
        structures' atoms concatenated in order (``member_forces=False``: the
        committee's mean forces only)."""
        desc = self.descriptor
        pos = torch.as_tensor(np.asarray(positions, dtype=np.float64)).to(
            device=desc.device, dtype=desc.dtype)
        b = len(self.counts)
        slots = self._slots(pos)
        feats = slots.features
        leaf = feats.detach().requires_grad_(True)
        energies, de_dg = [], []
        for model, ref, atom_nets in zip(self.models, self.reference, self.nets):
            net, norm = model.net, model.energy_normalization
            if net.training:
                net.eval()
            with torch.enable_grad():
                eps = (atom_nets(leaf) if atom_nets is not None
                       else net(leaf, self.species, self.groups))
                # dE/dG in the network's dtype (as ANNModel.energies_and_forces)
                (grad,) = torch.autograd.grad(eps.sum(), leaf)
            de_dg.append(grad.to(feats.dtype) * norm.scale)                # eV
            sums = torch.zeros(b, dtype=torch.float64, device=pos.device).index_add(
                0, self.atom_structure, eps.detach().double())
            energies.append(norm.scale * sums + norm.shift * self.n_atoms.double() + ref)
        m = len(self.models)
        forces = None
        if member_forces and m > 1:
            forces = np.stack([-self._position_gradient(slots, g).double().cpu().numpy()
                               for g in de_dg])
            mean = forces.mean(axis=0)
        else:
            w = de_dg[0] if m == 1 else torch.stack(de_dg).mean(0)
            mean = -self._position_gradient(slots, w).double().cpu().numpy()
            if member_forces:
                forces = mean[None]
        closest = slots.closest
        energy = torch.stack(energies)                                   # (M, B)
        closest = torch.full((b,), float("inf"), dtype=closest.dtype, device=closest.device
                             ).scatter_reduce_(0, self.atom_structure, closest, reduce="amin")
        closest = closest.cpu().numpy()
        return TrajectoryStep(energy.detach().cpu().numpy(), forces, mean,
                              np.where(closest <= self.cutoff, closest, np.inf), self.counts)
