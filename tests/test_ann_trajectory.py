"""ANN predictions along a trajectory (nnpflow.models.ann_trajectory).

The Verlet-list path must give what a fresh prediction gives
(``ANNModel.predict_structures``: a new neighbour search, featurisation and
derivatives per call) at every step of a random walk that moves atoms far enough
to force new searches, for periodic and isolated structures and for every
member of a committee; its smallest distances must equal ASE's neighbour list.
"""

from __future__ import annotations

import numpy as np
import pytest

from test_evaluation_stage import trained  # noqa: F401  (module fixture)


def _members(paths):
    from nnpflow.models.registry import load_model
    return [load_model(p).module for p in paths]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trajectory_matches_fresh_predictions_across_new_searches(trained, dtype):
    """The trained members as saved (float32 networks: the networks' sums are
    taken in another order, so equal to float32 rounding) and converted to
    float64 (equal to 1e-10 eV, eV/Å)."""
    import torch
    from ase.neighborlist import neighbor_list

    from nnpflow.database import DatabaseReader
    from nnpflow.models.ann_trajectory import ANNTrajectory
    from nnpflow.structure import Structure
    models = _members(trained["models"])
    for model in models:
        model.net.to(getattr(torch, dtype))
    tol = dict(rtol=0, atol=1e-10) if dtype == "float64" else dict(rtol=1e-6, atol=1e-6)
    with DatabaseReader(trained["db"]) as reader:
        atoms = [reader.structure(i).to_ase() for i in (0, 3, 7)]
    atoms[2].pbc = False                                 # an isolated cluster too
    traj = ANNTrajectory(models, [a.get_chemical_symbols() for a in atoms],
                         [a.cell[:] for a in atoms], [a.pbc for a in atoms], skin=0.3)
    rng = np.random.default_rng(0)
    steps = 12
    for step in range(steps):
        for a in atoms:                                  # 0.06 Å per step and direction
            a.positions += rng.normal(scale=0.06, size=a.positions.shape)
        got = traj.predict(np.concatenate([a.positions for a in atoms]))
        structs = [Structure.from_ase(a) for a in atoms]
        for m, model in enumerate(models):
            want = model.predict_structures(structs)
            np.testing.assert_allclose(got.energies[m], want.energies, **tol)
            for k in range(len(atoms)):
                np.testing.assert_allclose(got.member_forces(k)[m], want.forces[k], **tol)
        for k, a in enumerate(atoms):
            d = neighbor_list("d", a, traj.cutoff, self_interaction=False)
            want_d = d.min() if len(d) else np.inf
            assert got.closest[k] == pytest.approx(want_d, abs=1e-12)
    # the list was searched again as atoms moved beyond half the skin, not every step
    assert 1 < traj.n_searches < steps


def test_trajectory_refuses_mixed_descriptors(trained):
    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.models.ann_model import ANNModel
    from nnpflow.models.ann_trajectory import ANNTrajectory
    (model,) = _members(trained["models"][:1])
    cfg = dict(model.descriptor.config(), rad_cutoff=model.descriptor.rad_cutoff + 0.5)
    other = ANNModel({s: [(4, "tanh")] for s in model.species},
                     ChebyshevDescriptor.from_config(cfg))
    with pytest.raises(ValueError, match="share their descriptor"):
        ANNTrajectory([model, other], [["Cu"]], [None], [[False] * 3])
    with pytest.raises(ValueError, match="skin"):
        ANNTrajectory([model], [["Cu"]], [None], [[False] * 3], skin=0.0)


def test_slot_features_drop_close_pairs_and_differing_networks_fall_back(trained):
    """The slot layout's features equal the descriptor's own (featurize_batch),
    also with a pair at or below min_cutoff (which both leave out) and a pair
    beyond the cutoffs; per-species networks of different shapes run through
    ANNModel.net (no stacked weights) with the same energies and forces; the
    committee's mean forces (one backward pass) equal the members' mean."""
    import torch
    from ase import Atoms

    from nnpflow.descriptors import ChebyshevDescriptor
    from nnpflow.models.ann_model import ANNModel
    from nnpflow.models.ann_trajectory import ANNTrajectory
    from nnpflow.structure import Structure
    desc = ChebyshevDescriptor(["Cu", "Au"], 5, 4.0, 3, 3.0, min_cutoff=0.6)
    rng = np.random.default_rng(3)
    cell = np.eye(3) * 4.2 + rng.normal(scale=0.2, size=(3, 3))
    bulk = Atoms("Cu3Au2", cell=cell, pbc=True, scaled_positions=rng.random((5, 3)))
    bulk.positions[1] = bulk.positions[0] + [0.5, 0.1, 0.0]       # 0.51 Å: left out
    cluster = Atoms("CuAuCu", positions=[[0, 0, 0], [2.1, 0.3, 0], [9.0, 0, 0]])  # one far
    atoms = [bulk, cluster]
    uniform = ANNModel({"Cu": [(5, "tanh"), (3, "mtanh")], "Au": [(5, "tanh"), (3, "mtanh")]},
                       desc)
    mixed = ANNModel({"Cu": [(4, "twist")], "Au": [(6, "softplus"), (2, "silu")]}, desc)
    for k, model in enumerate((uniform, mixed)):
        model.net.init_weights(torch.Generator().manual_seed(k))
    traj = ANNTrajectory([uniform, mixed], [a.get_chemical_symbols() for a in atoms],
                         [a.cell[:] for a in atoms], [a.pbc for a in atoms])
    assert traj.nets[0] is not None and traj.nets[1] is None
    pos = np.concatenate([a.positions for a in atoms])
    got, _ = traj._features(torch.as_tensor(pos))
    want = torch.cat(desc.featurize_batch(atoms))
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=0, atol=1e-12)
    step = traj.predict(pos)
    structs = [Structure.from_ase(a) for a in atoms]
    for m, model in enumerate((uniform, mixed)):
        ref = model.predict_structures(structs)
        np.testing.assert_allclose(step.energies[m], ref.energies, rtol=0, atol=1e-10)
        for k in range(2):
            np.testing.assert_allclose(step.member_forces(k)[m], ref.forces[k], rtol=0,
                                       atol=1e-10)
    mean = traj.predict(pos, member_forces=False)
    assert mean.forces is None
    np.testing.assert_allclose(mean.mean_forces, step.forces.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean.structure_forces(1), step.member_forces(1).mean(axis=0),
                               rtol=0, atol=1e-12)
    assert step.closest[0] == pytest.approx(0.51, abs=1e-2)
