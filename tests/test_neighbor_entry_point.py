"""The package's one neighbour-list entry point, ``nnpflow.neighbors.neighbor_list``,
cross-checked pair by pair against ASE's ``ase.neighborlist.neighbor_list`` (an
independent implementation) on periodic, skewed, partly periodic and isolated
structures, cells smaller than the cutoff and atoms outside the home cell, for
every backend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nnpflow.neighbors import DENSE_LIMIT, neighbor_list


def _case(name):
    rng = np.random.default_rng(sum(map(ord, name)))     # same structure every run
    if name == "cubic":
        cell, pbc, n = np.eye(3) * 7.0, True, 20
    elif name == "skewed":
        cell, pbc, n = np.array([[5.0, 0.0, 0.0], [3.9, 4.1, 0.0], [1.7, -2.2, 4.6]]), True, 14
    elif name == "small-cell":          # cutoff well above the cell: many images per atom
        cell, pbc, n = np.array([[2.1, 0.3, 0.0], [0.0, 2.4, 0.2], [0.5, 0.0, 1.9]]), True, 3
    elif name == "one-atom":
        cell, pbc, n = np.array([[2.5, 0.0, 0.0], [1.25, 2.1, 0.0], [0.0, 0.7, 2.3]]), True, 1
    elif name == "slab":                # periodic in-plane only
        cell, pbc, n = np.array([[4.0, 0.0, 0.0], [2.0, 3.5, 0.0], [0.0, 0.0, 12.0]]), [True, True, False], 10
    elif name == "outside-home-cell":
        cell, pbc, n = np.array([[4.5, 0.2, 0.0], [0.0, 4.2, 0.0], [0.3, 0.0, 4.8]]), True, 9
    elif name == "isolated":
        cell, pbc, n = None, False, 16
    else:
        raise KeyError(name)
    box = cell if cell is not None else np.eye(3) * 5.0
    positions = rng.random((n, 3)) @ box
    if name == "outside-home-cell":
        positions += rng.integers(-3, 4, size=(n, 3)) @ box
    return positions, cell, pbc


CASES = ["cubic", "skewed", "small-cell", "one-atom", "slab", "outside-home-cell", "isolated"]


def _ase_pairs(positions, cell, pbc, cutoff):
    atoms = Atoms("H" * len(positions), positions=positions,
                  cell=cell if cell is not None else np.zeros((3, 3)), pbc=pbc)
    i, j, S, d = ase_neighbor_list("ijSd", atoms, cutoff)
    return {(int(a), int(b), *map(int, s)): float(x) for a, b, s, x in zip(i, j, S, d)}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("cutoff", [1.2, 3.7, 6.5])
def test_pairs_match_ase(name, cutoff, backend):
    positions, cell, pbc = _case(name)
    got = neighbor_list(positions, cell, pbc, cutoff, backend=backend)
    expected = _ase_pairs(positions, cell, pbc, cutoff)
    keys = [(int(a), int(b), *map(int, s)) for a, b, s in zip(got.i, got.j, got.shift)]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(expected)
    np.testing.assert_allclose(got.distance, [expected[k] for k in keys], rtol=0, atol=1e-9)
    c = np.zeros((3, 3)) if cell is None else np.asarray(cell)
    np.testing.assert_allclose(got.vector, positions[got.j] - positions[got.i] + got.shift @ c,
                               rtol=0, atol=1e-9)
    assert keys == sorted(keys)          # sorted by (i, j, shift)
    assert len(keys) > 0 or cutoff == 1.2


def test_minimum_image_path_matches_ase_for_a_short_cutoff():
    """A cutoff below half of every lattice-plane spacing takes the one-image path."""
    positions, cell, pbc = _case("skewed")
    got = neighbor_list(positions, cell, pbc, 1.9, backend="numpy")
    assert set(zip(got.i.tolist(), got.j.tolist(), map(tuple, got.shift.tolist()))) == {
        (k[0], k[1], k[2:]) for k in _ase_pairs(positions, cell, pbc, 1.9)}


def test_large_structures_use_cell_lists_with_the_same_pairs():
    rng = np.random.default_rng(7)
    n = DENSE_LIMIT + 20
    cell = np.array([[16.0, 0.0, 0.0], [1.0, 15.0, 0.0], [0.0, 2.0, 17.0]])
    positions = rng.random((n, 3)) @ cell
    got = neighbor_list(positions, cell, True, 2.5, backend="numpy")
    keys = {(int(a), int(b), *map(int, s)) for a, b, s in zip(got.i, got.j, got.shift)}
    assert keys == set(_ase_pairs(positions, cell, True, 2.5))
    torch_pairs = neighbor_list(positions, cell, True, 2.5, backend="torch")
    np.testing.assert_array_equal(torch_pairs.shift, got.shift)
    np.testing.assert_array_equal(torch_pairs.j, got.j)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="cutoff must be positive"):
        neighbor_list(np.zeros((2, 3)), None, False, 0.0)
    with pytest.raises(ValueError, match="unknown neighbour-list backend 'scipy'"):
        neighbor_list(np.zeros((2, 3)), None, False, 1.0, backend="scipy")


def test_numpy_backend_loads_neither_torch_nor_scipy():
    code = ("import sys, numpy as np; from nnpflow.neighbors import neighbor_list; "
            "p = neighbor_list(np.random.default_rng(0).random((8, 3)) * 3, np.eye(3) * 3, True, 2.0); "
            "print(len(p) > 0, 'torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]
