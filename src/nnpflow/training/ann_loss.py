"""The ANN loss: ``(1 - alpha) RMSE(E/N) + alpha RMSE(F)`` on normalised targets.

For a batch (a :class:`~nnpflow.datasets.collate.Batch`) :func:`batch_errors`
evaluates the networks on the raw features, and returns the sums of squared
errors of the normalised per-atom energies (structures with energies) and of
the normalised force components (force-view structures), with their counts.
Forces are one batched contraction of the stored descriptor derivatives::

    eps = networks(G, species)                      # (A,) normalised atomic energies
    dE/dG = autograd.grad(eps.sum(), G, create_graph=training)
    F_eps = batch.derivatives.forces(dE/dG[batch.force_atom_index])

so no per-structure Python loop runs in a step.  :func:`rmse_loss` turns the
(possibly all-reduced) sums into the loss; see
:mod:`~nnpflow.training.normalization` for the normalised units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .normalization import EnergyNormalization


@dataclass
class BatchErrors:
    """Sums of squared errors (normalised units) and counts of one batch.

    ``sse_energy`` over ``n_energy`` structures (per-atom energies), ``sse_force``
    over ``n_force`` force components; ``energy_pred`` (B,) normalised per-atom
    energies and ``forces_pred`` (A_f, 3) normalised forces when asked for.
    """

    sse_energy: torch.Tensor
    n_energy: torch.Tensor
    sse_force: torch.Tensor
    n_force: torch.Tensor
    energy_pred: torch.Tensor | None = None
    forces_pred: torch.Tensor | None = None

    def sums(self) -> torch.Tensor:
        """``[sse_energy, n_energy, sse_force, n_force]`` (float64, detached)."""
        return torch.stack([self.sse_energy.detach().double(), self.n_energy.double(),
                            self.sse_force.detach().double(), self.n_force.double()])


def batch_errors(networks: torch.nn.Module, batch, norm: EnergyNormalization,
                 device: torch.device, dtype: torch.dtype, *, with_forces: bool,
                 create_graph: bool) -> BatchErrors:
    """Errors of ``networks`` on ``batch`` (already on ``device``).

    ``with_forces``: evaluate the forces of the force-view samples (when the
    batch has any); ``create_graph``: keep the graph of dE/dG so the force error
    can be back-propagated to the weights (training).
    """
    forces_here = with_forces and batch.derivatives is not None
    inputs = getattr(batch, "inputs", None)
    if inputs is not None:           # a TableBatch: per-species normalised features
        eps = networks.forward_normalized(inputs, batch.species_groups,
                                          int(batch.atom_structure.shape[0]))
    else:
        feats = batch.features
        if feats.dtype != dtype:
            feats = feats.to(dtype)
        if forces_here:
            feats = feats.detach().requires_grad_(True)
        eps = networks(feats, batch.species_index, getattr(batch, "species_groups", None))
    b = batch.n_structures
    n_atoms = batch.n_atoms.to(dtype)
    sum_eps = eps.new_zeros(b).index_add(0, batch.atom_structure, eps)
    pred = sum_eps / n_atoms
    target = ((batch.energy - batch.reference_energy) / batch.n_atoms.double()
              - norm.shift) / norm.scale
    has = batch.has_energy
    diff = torch.where(has, pred - target.to(dtype), torch.zeros_like(pred))
    sse_e = (diff * diff).sum()
    n_e = has.sum()
    zero = eps.new_zeros(())
    if forces_here:
        (grad,) = torch.autograd.grad(eps.sum(), feats, create_graph=create_graph)
        fidx = batch.force_atom_index
        if fidx.shape[0] == grad.shape[0]:      # every atom is a force atom: no gather
            f_pred = batch.derivatives.forces(grad).to(dtype)
            f_ref = batch.forces.to(dtype) / norm.scale
        else:
            f_pred = batch.derivatives.forces(grad.index_select(0, fidx)).to(dtype)
            f_ref = batch.forces.index_select(0, fidx).to(dtype) / norm.scale
        d = f_pred - f_ref
        sse_f = (d * d).sum()
        n_f = torch.tensor(d.numel(), device=d.device)
    else:
        f_pred = None
        sse_f = zero
        n_f = torch.zeros((), dtype=torch.long, device=eps.device)
    return BatchErrors(sse_e, n_e, sse_f, n_f, pred.detach(),
                       None if f_pred is None else f_pred.detach())


def rmse_loss(sse_energy: torch.Tensor, n_energy: float, sse_force: torch.Tensor,
              n_force: float, alpha: float) -> torch.Tensor:
    """``(1 - alpha) sqrt(sse_e / n_e) + alpha sqrt(sse_f / n_f)``; a term with a
    zero count (or zero weight) is left out."""
    loss = sse_energy.new_zeros(())
    if alpha < 1.0 and n_energy > 0:
        loss = loss + (1.0 - alpha) * torch.sqrt(sse_energy / n_energy)
    if alpha > 0.0 and n_force > 0:
        loss = loss + alpha * torch.sqrt(sse_force / n_force)
    return loss


def surrogate_loss(errors: BatchErrors, totals: torch.Tensor, alpha: float) -> torch.Tensor:
    """The loss whose gradient, summed over ranks, is the gradient of
    :func:`rmse_loss` of the global ``totals`` (``[sse_e, n_e, sse_f, n_f]``
    summed over ranks): ``sum_k w_k c_k sse_k`` with
    ``c_k = 1 / (2 n_k sqrt(SSE_k / n_k))`` from the totals (see
    :mod:`nnpflow.training.distributed`)."""
    sse_e, n_e, sse_f, n_f = (float(x) for x in totals.tolist())
    loss = errors.sse_energy.new_zeros(())
    if alpha < 1.0 and n_e > 0 and sse_e > 0:
        loss = loss + (1.0 - alpha) / (2.0 * n_e * (sse_e / n_e) ** 0.5) * errors.sse_energy
    if alpha > 0.0 and n_f > 0 and sse_f > 0:
        loss = loss + alpha / (2.0 * n_f * (sse_f / n_f) ** 0.5) * errors.sse_force
    return loss
