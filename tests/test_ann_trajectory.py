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


def test_trajectory_matches_fresh_predictions_across_new_searches(trained):
    from ase.neighborlist import neighbor_list

    from nnpflow.database import DatabaseReader
    from nnpflow.models.ann_trajectory import ANNTrajectory
    from nnpflow.structure import Structure
    models = _members(trained["models"])
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
            np.testing.assert_allclose(got.energies[m], want.energies, rtol=0, atol=1e-10)
            for k in range(len(atoms)):
                np.testing.assert_allclose(got.member_forces(k)[m], want.forces[k],
                                           rtol=0, atol=1e-10)
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
