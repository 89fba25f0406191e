"""Neighbour lists against a brute-force reference (explicit loop over images)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nnpflow.descriptors import NeighborList, batch_neighbor_list, neighbor_list


def brute_force_pairs(pos, cell, pbc, cutoff):
    """{(i, j, s0, s1, s2)} by looping over every image offset that can matter."""
    pos = np.asarray(pos, dtype=float)
    if cell is None or not np.any(pbc):
        ranges = [[0], [0], [0]]
        cell = np.zeros((3, 3))
    else:
        cell = np.asarray(cell, dtype=float)
        heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
        frac = pos @ np.linalg.inv(cell)
        spread = frac.max(axis=0) - frac.min(axis=0)
        ranges = [range(-int(np.ceil(cutoff / heights[a] + spread[a])) - 1,
                        int(np.ceil(cutoff / heights[a] + spread[a])) + 2) if pbc[a] else [0]
                  for a in range(3)]
    out = set()
    for s in itertools.product(*ranges):
        d = pos[None, :, :] - pos[:, None, :] + np.array(s) @ cell
        ii, jj = np.nonzero(np.linalg.norm(d, axis=2) <= cutoff)
        for i, j in zip(ii, jj):
            if i != j or any(s):
                out.add((int(i), int(j)) + tuple(int(x) for x in s))
    return out


def as_set(nl: NeighborList):
    return {(int(i), int(j)) + tuple(int(x) for x in s)
            for i, j, s in zip(nl.center, nl.neighbor, nl.shift)}


def check_list(nl: NeighborList, pos, cell):
    pos = torch.as_tensor(np.asarray(pos, dtype=float))
    assert nl.center.dtype == torch.int64 and nl.neighbor.dtype == torch.int64
    assert nl.shift.dtype == torch.int64 and nl.shift.shape == (len(nl), 3)
    assert torch.all(nl.center[1:] >= nl.center[:-1]), "edges not grouped by centre"
    assert len(as_set(nl)) == len(nl), "duplicate edges"
    c = torch.zeros(3, 3, dtype=torch.float64) if cell is None else torch.as_tensor(
        np.asarray(cell, dtype=float))
    expect = pos[nl.neighbor] - pos[nl.center] + nl.shift.to(torch.float64) @ c
    torch.testing.assert_close(nl.vector, expect, rtol=0, atol=1e-11)
    torch.testing.assert_close(nl.distance, torch.linalg.vector_norm(expect, dim=1),
                               rtol=0, atol=1e-11)


def random_case(rng, kind):
    n = int(rng.integers(1, 30))
    if kind == "isolated":
        return rng.normal(size=(n, 3)) * 3.0, None, np.zeros(3, bool)
    while True:
        cell = np.diag(rng.uniform(1.2, 11.0, 3)) + rng.normal(size=(3, 3)) * rng.uniform(0, 2.5)
        if abs(np.linalg.det(cell)) > 1.0:
            break
    pbc = rng.random(3) < 0.7 if kind == "partial" else np.ones(3, bool)
    frac = rng.uniform(-1.5, 2.5, (n, 3))            # many atoms outside the home cell
    return frac @ cell, cell, pbc


@pytest.mark.parametrize("method", ["dense", "binned", "auto"])
def test_random_cells_match_brute_force(method):
    rng = np.random.default_rng(11)
    for trial in range(45):
        kind = ("periodic", "partial", "isolated")[trial % 3]
        pos, cell, pbc = random_case(rng, kind)
        cutoff = float(rng.uniform(1.0, 6.0))
        counts = torch.tensor([len(pos)])
        cells = torch.eye(3, dtype=torch.float64)[None] if cell is None else torch.tensor(cell)[None]
        nl = batch_neighbor_list(torch.tensor(pos), cells, torch.tensor(pbc)[None], counts,
                                 cutoff, method=method)
        check_list(nl, pos, cell)
        assert as_set(nl) == brute_force_pairs(pos, cell, pbc, cutoff), (trial, kind, cutoff)


def test_tiny_cell_own_images():
    """One atom in a 2 Å cubic cell: its own images are its neighbours."""
    nl = neighbor_list(torch.zeros(1, 3, dtype=torch.float64), torch.eye(3) * 2.0,
                       torch.ones(3, dtype=torch.bool), 3.0)
    d = nl.distance.numpy()
    assert len(nl) == 6 + 12                         # 6 at 2 Å, 12 at 2.83 Å, corners 3.46 Å
    assert np.allclose(sorted(d)[:6], 2.0) and np.allclose(sorted(d)[6:], np.sqrt(8.0))
    assert torch.all(nl.center == 0) and torch.all(nl.neighbor == 0)


def test_isolated_has_no_images_and_cutoff_inclusive():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]], dtype=torch.float64)
    nl = neighbor_list(pos, None, None, 1.0)
    assert as_set(nl) == {(0, 1, 0, 0, 0), (1, 0, 0, 0, 0)}
    assert torch.all(nl.shift == 0)
    single = neighbor_list(pos[:1], None, None, 4.0)
    assert len(single) == 0 and single.vector.shape == (0, 3)


def test_outside_home_cell_same_as_wrapped():
    rng = np.random.default_rng(3)
    cell = np.array([[4.0, 0.3, 0.1], [0.4, 3.7, -0.2], [0.2, -0.5, 4.2]])
    frac = rng.uniform(0, 1, (12, 3))
    wrapped = frac @ cell
    moved = wrapped + rng.integers(-3, 4, (12, 3)) @ cell
    a = neighbor_list(torch.tensor(wrapped), torch.tensor(cell), torch.ones(3, dtype=bool), 5.0)
    b = neighbor_list(torch.tensor(moved), torch.tensor(cell), torch.ones(3, dtype=bool), 5.0)
    assert len(a) == len(b)
    key = lambda nl: sorted(zip(nl.center.tolist(), nl.neighbor.tolist(),
                                nl.vector.round(decimals=9).tolist()))
    for (ia, ja, va), (ib, jb, vb) in zip(key(a), key(b)):
        assert (ia, ja) == (ib, jb)
        assert np.allclose(va, vb, atol=1e-9)
    check_list(b, moved, cell)


def test_batch_equals_individual_lists():
    rng = np.random.default_rng(5)
    cases = [random_case(rng, kind) for kind in ("periodic", "isolated", "partial", "periodic")]
    cases.append(random_case(rng, "periodic"))
    cutoff = 3.5
    pos = torch.tensor(np.concatenate([c[0] for c in cases]))
    cells = torch.stack([torch.eye(3, dtype=torch.float64) if c[1] is None else torch.tensor(c[1])
                         for c in cases])
    pbcs = torch.tensor(np.stack([c[2] for c in cases]))
    counts = torch.tensor([len(c[0]) for c in cases])
    nl = batch_neighbor_list(pos, cells, pbcs, counts, cutoff)
    offset = 0
    got = as_set(nl)
    expected = set()
    for p, cell, pbc in cases:
        for (i, j, *s) in brute_force_pairs(p, cell, pbc, cutoff):
            expected.add((i + offset, j + offset, *s))
        offset += len(p)
    assert got == expected
    assert torch.all(nl.center[1:] >= nl.center[:-1])


def test_large_cell_uses_cell_lists(monkeypatch):
    """More atoms than the dense path takes: cell lists, still exact."""
    import nnpflow.descriptors.neighbors as nb

    monkeypatch.setattr(nb, "DENSE_MAX_ATOMS", 200)
    rng = np.random.default_rng(8)
    n = nb.DENSE_MAX_ATOMS + 80
    cell = np.array([[17.0, 0.0, 0.0], [2.0, 16.0, 0.0], [1.0, -1.5, 15.5]])
    pos = rng.uniform(-0.2, 1.2, (n, 3)) @ cell
    nl = neighbor_list(torch.tensor(pos), torch.tensor(cell), torch.ones(3, dtype=bool), 4.0)
    check_list(nl, pos, cell)
    # brute force over the 27 (enough) nearest images, vectorised
    inv = np.linalg.inv(cell)
    expected = set()
    for s in itertools.product(range(-2, 3), repeat=3):
        d = pos[None] - pos[:, None] + np.array(s) @ cell
        ii, jj = np.nonzero(np.einsum("ijk,ijk->ij", d, d) <= 16.0)
        expected |= {(int(i), int(j), *s) for i, j in zip(ii, jj) if i != j or any(s)}
    assert np.abs(pos @ inv).max() < 2.0
    assert as_set(nl) == expected


def test_bad_cutoff():
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(torch.zeros(2, 3), None, None, 0.0)


def test_large_isolated_cluster_cell_lists(monkeypatch):
    import nnpflow.descriptors.neighbors as nb

    monkeypatch.setattr(nb, "DENSE_MAX_ATOMS", 200)
    rng = np.random.default_rng(21)
    n = nb.DENSE_MAX_ATOMS + 40
    pos = rng.uniform(0.0, 18.0, (n, 3))
    pos[: n // 2, 0] += 30.0                          # two lumps: empty bins in between
    nl = neighbor_list(torch.tensor(pos), None, None, 3.0)
    check_list(nl, pos, None)
    d = np.linalg.norm(pos[None] - pos[:, None], axis=2)
    ii, jj = np.nonzero((d <= 3.0) & ~np.eye(n, dtype=bool))
    assert as_set(nl) == {(int(i), int(j), 0, 0, 0) for i, j in zip(ii, jj)}


def test_singular_periodic_cell_is_rejected():
    cell = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="singular"):
        neighbor_list(torch.zeros(2, 3, dtype=torch.float64), cell, torch.ones(3, dtype=bool), 2.0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(4)
    for kind in ("periodic", "partial", "isolated", "periodic"):
        pos, cell, pbc = random_case(rng, kind)
        cpu = neighbor_list(torch.tensor(pos), None if cell is None else torch.tensor(cell),
                            torch.tensor(pbc), 4.0)
        gpu = neighbor_list(torch.tensor(pos).cuda(), None if cell is None else
                            torch.tensor(cell).cuda(), torch.tensor(pbc).cuda(), 4.0)
        assert as_set(cpu) == {(int(i), int(j)) + tuple(int(x) for x in s) for i, j, s in
                               zip(gpu.center.cpu(), gpu.neighbor.cpu(), gpu.shift.cpu())}
