"""Forces as the negative gradient of the energy."""

from __future__ import annotations

import torch

from .base import Layer


class Force(Layer):
    """``Fa = -dE/dRa`` (A, 3) in eV/Å by autograd.

    The stack makes ``Ra`` require gradients when it holds a ``Force`` layer.  In
    training mode the gradient graph is kept (``create_graph``) so that a force
    loss can be differentiated with respect to the weights.
    """

    reads = ("E", "Ra")
    writes = ("Fa",)

    def forward(self, fields):
        energy, positions = fields["E"], fields["Ra"]
        (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training,
                                      retain_graph=self.training)
        fields["Fa"] = -grad
        return fields
