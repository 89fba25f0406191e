"""Species and overlapping-atom checks, against a brute-force image search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnpflow import ConfigError, InputError, Structure
from nnpflow.structure_checks import (StructureChecks, check_min_distance, check_species,
                                      closest_pair)


def brute_force_min_distance(s: Structure, reach: int = 4) -> float:
    """Minimum over all pairs and images with |shift| <= reach (slow, obvious)."""
    best = np.inf
    shifts = [np.zeros(3)]
    if s.is_periodic:
        ranges = [range(-reach, reach + 1) if p else range(1) for p in s.pbc]
        shifts = [np.array(t, dtype=float) @ s.cell for t in itertools.product(*ranges)]
    for i in range(s.n_atoms):
        for j in range(s.n_atoms):
            for shift in shifts:
                if i == j and not shift.any():
                    continue
                best = min(best, float(np.linalg.norm(s.positions[j] + shift - s.positions[i])))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_closest_pair_matches_brute_force_in_skewed_cells(seed):
    rng = np.random.default_rng(seed)
    # small, strongly skewed cells: images and an atom's own image matter
    cell = np.array([[2.2, 0, 0], [1.7, 2.0, 0], [0.6, -0.9, 2.1]]) * rng.uniform(0.9, 1.3)
    n = int(rng.integers(1, 5))
    pbc = [True, True, True] if seed < 4 else [True, True, False]
    s = Structure(positions=rng.uniform(-1.5, 3.5, size=(n, 3)), species=["Cu"] * n, cell=cell,
                  pbc=pbc)
    expected = brute_force_min_distance(s)
    got = closest_pair(s, expected + 1e-9)
    assert got is not None and got[0] == pytest.approx(expected, abs=1e-12)
    assert closest_pair(s, expected - 1e-9) is None


def test_isolated_structure():
    s = Structure(positions=[[0, 0, 0], [0, 0, 3.0], [0, 0.2, 3.3]], species=["H"] * 3)
    d, i, j = closest_pair(s, 1.0)
    assert {i, j} == {1, 2} and d == pytest.approx(np.hypot(0.2, 0.3))


def test_at_or_below_min_cutoff_is_rejected():
    s = Structure(positions=[[0, 0, 0], [0.5, 0, 0]], species=["Cu", "Au"],
                  cell=np.eye(3) * 10, name="x.xsf")
    with pytest.raises(InputError) as info:
        check_min_distance(s, 0.5)
    assert str(info.value) == ("x.xsf: overlapping atoms: atoms 1 (Cu) and 2 (Au) are 0.5 Å "
                               "apart, at or below min_cutoff 0.5 Å")
    check_min_distance(s, 0.4999)


def test_atom_too_close_to_its_own_image():
    s = Structure(positions=[[0, 0, 0]], species=["Cu"], cell=np.diag([0.4, 5, 5]), name="t")
    with pytest.raises(InputError, match=r"atom 1 \(Cu\) and its own periodic image are 0.4 Å"):
        check_min_distance(s, 0.5)


def test_large_structure_uses_binned_search():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(7)] * 3, indexing="ij"), -1).reshape(-1, 3) * 2.0
    positions = grid + rng.normal(size=grid.shape) * 0.01
    positions[100] = positions[5] + [0.3, 0.0, 0.0]
    s = Structure(positions=positions, species=["Cu"] * len(grid), cell=np.eye(3) * 14)
    d, i, j = closest_pair(s, 0.5)
    assert {i, j} == {5, 100} and d == pytest.approx(0.3)


def test_species_check_and_bundle():
    s = Structure(positions=[[0, 0, 0], [2, 0, 0]], species=["Cu", "Pt"], name="a.xsf")
    with pytest.raises(InputError, match=r"a.xsf: species Pt not in the species list \[Cu, Au\]"):
        check_species(s, ["Cu", "Au"])
    checks = StructureChecks(species=["Cu", "Pt"], min_cutoff=1.0)
    checks(s)
    with pytest.raises(InputError, match="overlapping"):
        StructureChecks(min_cutoff=2.5)(s)
    assert not StructureChecks()
    with pytest.raises(ConfigError):
        StructureChecks(min_cutoff=-1)
