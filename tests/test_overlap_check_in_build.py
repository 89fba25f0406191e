"""The build's overlap check, read off the descriptor's own neighbour search.

A database build rejects structures with two atoms (periodic images included) at
or below the descriptor's ``min_cutoff``.  The check is no separate search: the
descriptor reports the pairs it leaves out as it featurises (``close_pairs``).
These tests hold that report against an all-pairs, all-images search, and the
build's behaviour (first bad input raises, in input order even across a block;
``skip`` lists the structure and writes the others exactly as without it; paths
that do not featurise a structure still check it).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.database import DatabaseReader
from nnpflow.database.build import build_sharded
from nnpflow.database.writer import write_database
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.sources import RecordSourceCollection

MIN_CUTOFF = 0.9  # Å


def descriptor(**kw) -> ChebyshevDescriptor:
    return ChebyshevDescriptor(species=["Cu", "Au"], rad_order=3, rad_cutoff=3.2, ang_order=2,
                               ang_cutoff=2.6, min_cutoff=MIN_CUTOFF, **kw)


def closest_by_brute_force(s: Structure, reach: int = 3) -> tuple[float, set]:
    """Smallest distance over all pairs and images |shift| <= reach, and the
    atom pairs {i, j} (0-based) at that distance."""
    shifts = [np.zeros(3)]
    if s.is_periodic:
        ranges = [range(-reach, reach + 1) if p else range(1) for p in s.pbc]
        shifts = [np.array(t, dtype=float) @ s.cell for t in itertools.product(*ranges)]
    best, pairs = np.inf, set()
    for i in range(s.n_atoms):
        for j in range(s.n_atoms):
            for shift in shifts:
                if i == j and not shift.any():
                    continue
                d = float(np.linalg.norm(s.positions[j] + shift - s.positions[i]))
                if d < best - 1e-9:
                    best, pairs = d, {frozenset((i, j))}
                elif abs(d - best) <= 1e-9:
                    pairs.add(frozenset((i, j)))
    return best, pairs


def random_structure(rng, k: int) -> Structure:
    """Skewed periodic (3 or 2 directions) or isolated, with atoms outside the
    home cell; some with a pair pushed close together, some with a small cell
    vector so that an atom meets its own image."""
    n = int(rng.integers(1, 9))
    kind = k % 4
    if kind == 3:   # isolated
        pos = rng.uniform(0.0, 4.0, (n, 3))
        cell, pbc = None, False
    else:
        cell = np.diag(rng.uniform(3.0, 4.5, 3)) + np.triu(rng.uniform(-1.0, 1.0, (3, 3)), 1)
        if kind == 2:
            cell[0] = [rng.uniform(0.6, 1.2), 0.0, 0.0]  # own image within min_cutoff or near
        pos = rng.uniform(-0.5, 1.5, (n, 3)) @ cell
        pbc = [True, True, kind != 1]
    if n > 1 and rng.random() < 0.7:
        pos[1] = pos[0] + rng.normal(size=3) * 0.4
    species = rng.choice(["Cu", "Au"], n).tolist()
    return Structure(positions=pos, species=species, cell=cell, pbc=pbc, energy=-1.0 * n,
                     name=f"s{k}")


@pytest.mark.parametrize("seed", range(4))
def test_close_pairs_match_an_all_images_search(seed):
    rng = np.random.default_rng(seed)
    structures = [random_structure(rng, k) for k in range(24)]
    d = descriptor(dtype=__import__("torch").float64)
    close: list = []
    feats = d.featurize_batch(structures, close_pairs=close)
    assert len(feats) == len(structures)
    found = {c.index: c for c in close}
    assert [c.index for c in close] == sorted(found)          # input order, one each
    n_close = 0
    for k, s in enumerate(structures):
        best, pairs = closest_by_brute_force(s)
        if best <= MIN_CUTOFF - 1e-9:
            n_close += 1
            c = found[k]
            assert c.distance == pytest.approx(best, abs=1e-9)
            assert frozenset((c.i, c.j)) in pairs
        elif best > MIN_CUTOFF + 1e-9:
            assert k not in found, (k, best)
    assert n_close >= 4   # the random set does exercise the check
    # the derivative path reports the same pairs
    close_d: list = []
    d.featurize_batch_with_derivatives(structures, close_pairs=close_d)
    assert close_d == close


def test_close_pairs_of_a_large_structure_come_from_the_binned_search():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*[np.arange(11)] * 3, indexing="ij"), -1).reshape(-1, 3) * 2.2
    positions = grid + rng.normal(size=grid.shape) * 0.02
    positions[700] = positions[40] + [0.0, 0.35, 0.0]
    s = Structure(positions=positions, species=["Cu"] * len(grid), cell=np.eye(3) * 24.2,
                  name="big")
    assert s.n_atoms > 1024   # above the dense search's limit
    close: list = []
    descriptor().featurize_batch([s], close_pairs=close)
    (c,) = close
    assert {c.i, c.j} == {40, 700} and c.distance == pytest.approx(0.35, abs=1e-9)


def cells(n: int, seed: int = 0, forces: bool = True) -> list[Structure]:
    """``n`` 4-atom rattled fcc cells (no overlaps) with energies and forces."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * 3.7
    out = []
    for k in range(n):
        pos = base + rng.normal(scale=0.05, size=base.shape)
        out.append(Structure(positions=pos, species=rng.choice(["Cu", "Au"], 4).tolist(),
                             cell=np.eye(3) * 3.7, energy=float(rng.normal() - 14),
                             forces=rng.normal(size=(4, 3)) if forces else None,
                             name=f"cell_{k:03d}"))
    return out


def squeezed(s: Structure, name: str, gap: float = 0.3) -> Structure:
    pos = s.positions.copy()
    pos[3] = pos[2] + [gap, 0.0, 0.0]
    return s.copy(positions=pos, name=name)


def test_skip_rejects_the_overlap_and_writes_the_rest_as_without_it(tmp_path):
    good = cells(20)
    bad = squeezed(good[5], "bad_a")
    bad2 = squeezed(good[9], "bad_b", gap=0.1)
    mixed = good[:7] + [bad] + good[7:15] + [bad2] + good[15:]
    result = build_sharded(RecordSourceCollection(mixed), tmp_path / "mixed.h5", descriptor(),
                           on_error="skip", block_structures=8)
    assert [r.label for r in result.rejected] == ["bad_a", "bad_b"]
    assert result.rejected[0].reason == (
        "bad_a: overlapping atoms: atoms 3 ({0}) and 4 ({1}) are 0.3 Å apart, at or below "
        "min_cutoff 0.9 Å".format(*bad.species[2:4]))
    assert "are 0.1 Å apart" in result.rejected[1].reason
    build_sharded(RecordSourceCollection(good), tmp_path / "good.h5", descriptor(),
                  block_structures=8)
    with DatabaseReader(tmp_path / "mixed.h5") as a, DatabaseReader(tmp_path / "good.h5") as b:
        assert a.names() == b.names() == [s.name for s in good]
        assert a.structures_fingerprint == b.structures_fingerprint
        assert a.statistics == b.statistics
        for k in range(len(good)):
            np.testing.assert_array_equal(a.features(k), b.features(k))
            for key, value in b.derivative_arrays(k).items():
                np.testing.assert_array_equal(a.derivative_arrays(k)[key], value)


def test_raise_names_the_first_bad_input_even_across_a_block(tmp_path):
    """An overlap read before an unreadable source in the same block is the
    error (the overlap is found when the block is featurised, after the read)."""
    good = cells(6)
    bad = squeezed(good[1], "overlap")

    unreadable = good[4].copy(name="unreadable")
    unreadable.positions[0, 0] = np.nan     # fails validation while the sources are read
    first = RecordSourceCollection([good[0], bad, good[2], unreadable, good[5]])
    with pytest.raises(InputError, match=r"^overlap: overlapping atoms"):
        build_sharded(first, tmp_path / "db.h5", descriptor(), block_structures=16)
    second = RecordSourceCollection([good[0], unreadable, good[2], bad, good[5]])
    with pytest.raises(InputError, match=r"^unreadable: ") as info:
        build_sharded(second, tmp_path / "db.h5", descriptor(), block_structures=16)
    assert "overlapping" not in str(info.value)
    assert not (tmp_path / "db.h5").exists()


def test_structures_the_build_does_not_featurise_are_checked_too(tmp_path):
    """Derivatives only (no features): a structure without forces is not
    featurised; nothing persisted at all: none is.  Both still reject overlaps."""
    good = cells(5)
    no_forces = squeezed(good[2], "no_forces").copy(forces=None)
    records = [good[0], good[1], no_forces, good[3]]
    with pytest.raises(InputError, match=r"^no_forces: overlapping atoms: atoms 3 .* 0\.3 Å"):
        write_database(tmp_path / "a.h5", records, descriptor=descriptor(),
                       persist_features=False, persist_force_derivatives=True,
                       check_overlaps=True)
    with pytest.raises(InputError, match=r"^no_forces: overlapping atoms"):
        write_database(tmp_path / "b.h5", records, descriptor=descriptor(),
                       check_overlaps=True)
    rejected: list = []
    write_database(tmp_path / "c.h5", records, descriptor=descriptor(), check_overlaps=True,
                   on_reject=lambda s, e: rejected.append((s.name, str(e))))
    assert [r[0] for r in rejected] == ["no_forces"]
    with DatabaseReader(tmp_path / "c.h5") as db:
        assert db.names() == ["cell_000", "cell_001", "cell_003"]
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_without_the_check_the_overlap_is_written(tmp_path):
    good = cells(3)
    records = [good[0], squeezed(good[1], "close"), good[2]]
    result = build_sharded(RecordSourceCollection(records), tmp_path / "db.h5", descriptor(),
                           check_overlaps=False)
    assert result.n_structures == 3 and result.rejected == []
