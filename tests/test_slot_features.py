"""Slot features (nnpflow.descriptors.slot_features): the descriptor's features
from per-centre neighbour slots, differentiable with respect to the vectors.

Values against the descriptor's own featurisation of the same neighbours
(ChebyshevDescriptor.features_from_edges); derivatives against finite
differences (torch.autograd.gradcheck) for one and for three species, with
slots beyond the cutoffs and below min_cutoff (which weigh zero).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.descriptors.slot_features import slot_features


def _slots(rng, n, k, lo, hi):
    """Random slot vectors (n, k, 3) with lengths in [lo, hi] Å."""
    v = rng.normal(size=(n, k, 3))
    v *= (rng.uniform(lo, hi, size=(n, k)) / np.linalg.norm(v, axis=2))[..., None]
    return torch.tensor(v)


@pytest.mark.parametrize("species", [["Cu"], ["Cu", "Au", "Pt"]])
def test_values_equal_the_descriptors_and_gradients_finite_differences(species):
    desc = ChebyshevDescriptor(species, 5, 4.0, 3, 3.0, min_cutoff=0.6)
    rng = np.random.default_rng(1)
    n, k = 3, 7
    vec = _slots(rng, n, k, 0.7, 4.6)                  # some beyond both cutoffs
    vec[0, 0] *= 0.5 / float(vec[0, 0].norm())          # one below min_cutoff
    atom_species = torch.tensor(rng.integers(0, len(species), n))
    neighbor = torch.tensor(rng.integers(0, n, (n, k)))
    spin = desc.typespin.index_select(0, atom_species.index_select(0, neighbor.view(-1))
                                      ).view(n, k) if desc.multi else None
    feats, closest = slot_features(desc, vec, vec, spin, spin)
    # the same neighbours as edges (kept: min_cutoff < r <= the larger cutoff)
    r = vec.norm(dim=2)
    keep = (r > desc.min_cutoff) & (r <= desc.neighbor_cutoff)
    center = torch.arange(n).unsqueeze(1).expand(n, k)[keep]
    want = desc.features_from_edges(atom_species, center, neighbor[keep], vec[keep], r[keep])
    np.testing.assert_allclose(feats.numpy(), want.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(closest.numpy(), r.min(dim=1).values.numpy(), rtol=0, atol=0)
    # derivatives: finite differences of every feature with respect to every vector
    vec_ok = _slots(rng, 2, 5, 0.8, 3.9)
    small_spin = spin[:2, :5] if spin is not None else None
    assert torch.autograd.gradcheck(
        lambda v: slot_features(desc, v, v, small_spin, small_spin)[0],
        (vec_ok.clone().requires_grad_(True),), eps=1e-6, atol=1e-7)
