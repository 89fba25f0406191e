"""Chebyshev descriptor: aenet reference values, an independent loop-based
implementation, analytic cases, finite differences of the force contraction,
invariances, storage round trips and batching."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list
from numpy.polynomial import chebyshev as npcheb

from nnpflow import Structure
from nnpflow.descriptors import ChebyshevDescriptor, DescriptorDerivatives, typespin_values
from nnpflow.errors import ConfigError, InputError

# ---------------------------------------------------------------- helpers


def reference_features(s: Structure, species, rad_order, rad_cutoff, ang_order, ang_cutoff,
                       min_cutoff):
    """aenet's definitions with plain loops over neighbours and neighbour pairs
    (neighbours from ASE's neighbour list, Chebyshev values from numpy)."""
    spins = dict(zip(species, typespin_values(len(species))))
    atoms = s.to_ase()
    rmax = max(rad_cutoff, ang_cutoff)
    if s.is_periodic:
        i_list, j_list, d_list = ase_neighbor_list("ijD", atoms, rmax)
    else:                                   # a bounding box, no periodicity
        atoms.pbc = False
        atoms.positions -= atoms.positions.min(axis=0) - rmax
        atoms.cell = np.diag(atoms.positions.max(axis=0) + rmax)
        i_list, j_list, d_list = ase_neighbor_list("ijD", atoms, rmax)
    multi = len(species) > 1
    out = np.zeros((len(s.positions), (rad_order + ang_order + 2) * (2 if multi else 1)))

    def fc(r, rc):
        return 0.5 * (math.cos(math.pi * r / rc) + 1.0) if r < rc else 0.0

    for i in range(len(s.positions)):
        nb = [(j_list[k], d_list[k]) for k in np.nonzero(i_list == i)[0]]
        nb = [(j, v) for j, v in nb if np.linalg.norm(v) > min_cutoff]
        rad = np.zeros(rad_order + 1)
        wrad = np.zeros(rad_order + 1)
        for j, v in nb:
            r = np.linalg.norm(v)
            t = npcheb.chebvander(2 * r / rad_cutoff - 1, rad_order)[0] * fc(r, rad_cutoff)
            rad += t
            wrad += spins[s.species[j]] * t
        ang = np.zeros(ang_order + 1)
        wang = np.zeros(ang_order + 1)
        for a in range(len(nb)):
            for b in range(a + 1, len(nb)):
                (j, vj), (k, vk) = nb[a], nb[b]
                rj, rk = np.linalg.norm(vj), np.linalg.norm(vk)
                w = fc(rj, ang_cutoff) * fc(rk, ang_cutoff)
                if w == 0.0:
                    continue
                t = npcheb.chebvander(np.dot(vj, vk) / (rj * rk), ang_order)[0] * w
                ang += t
                wang += spins[s.species[j]] * spins[s.species[k]] * t
        row = [rad, ang, wrad, wang] if multi else [rad, ang]
        out[i] = np.concatenate(row)
    return out


def random_structure(rng, n, species, cell=None, spread=1.0, name="random", min_dist=0.9):
    """Random positions (normal with ``spread`` Å, or uniform in ``cell``) with
    no two atoms (or images) closer than ``min_dist`` Å."""
    from nnpflow.descriptors import neighbor_list

    for _ in range(1000):
        if cell is None:
            pos = rng.normal(size=(n, 3)) * spread
            c = None
        else:
            c = np.asarray(cell, dtype=float)
            pos = rng.uniform(0, 1, (n, 3)) @ c
        nl = neighbor_list(torch.tensor(pos), None if c is None else torch.tensor(c),
                           None, min_dist)
        if len(nl) == 0:
            return Structure(positions=pos, species=list(rng.choice(species, n)), cell=c,
                             name=name)
    raise RuntimeError("could not place atoms")


def fd_relative_error(desc: ChebyshevDescriptor, s: Structure, seed=0, h=1e-5) -> float:
    """||forces(w) - F_fd|| / ||F_fd|| with F_fd = -d(sum w G)/dR by central differences."""
    rng = np.random.default_rng(seed)
    feats, der = desc.featurize_with_derivatives(s)
    w = torch.tensor(rng.normal(size=tuple(feats.shape)))
    forces = der.forces(w).numpy()
    fd = np.zeros_like(s.positions)
    for a in range(len(s.positions)):
        for k in range(3):
            plus, minus = s.copy(), s.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            ep = float((desc.featurize(plus) * w).sum())
            em = float((desc.featurize(minus) * w).sum())
            fd[a, k] = -(ep - em) / (2 * h)
    return float(np.linalg.norm(forces - fd) / np.linalg.norm(fd))


def rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


CUAU = dict(species=["Cu", "Au"], rad_order=8, rad_cutoff=5.0, ang_order=4, ang_cutoff=3.8,
            min_cutoff=0.55)


def cuau_cell(rng, reps=(1, 1, 1), a=3.7):
    """Rattled, strained fcc Cu/Au cell; some atoms moved by lattice vectors."""
    from ase.build import bulk
    at = bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)
    n = len(at)
    sym = np.array(["Cu"] * n)
    sym[rng.permutation(n)[: n // 2]] = "Au"
    at.set_chemical_symbols(sym)
    eps = rng.uniform(-0.03, 0.03, (3, 3))
    at.set_cell(at.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
    at.positions += rng.normal(scale=0.08, size=(n, 3))
    s = Structure.from_ase(at, name="cuau")
    moved = rng.random(n) < 0.3
    s.positions[moved] += rng.integers(-1, 2, (int(moved.sum()), 3)) @ s.cell
    return s


# ------------------------------------------------------ aenet reference data

REFERENCE_SETS = [
    ("water.xyz", "water_ref.csv", ["O", "H"], 10, 4.0, 3, 1.5),
    ("lmnto_structure001.xsf", "lmnto_ref.csv", ["Li", "Mo", "Ni", "Ti", "O"], 10, 4.0, 3, 1.5),
    ("aucu.xsf", "aucu_ref.csv", ["Au", "Cu"], 5, 3.5, 5, 3.5),
]


@pytest.mark.parametrize("case", REFERENCE_SETS, ids=[c[0] for c in REFERENCE_SETS])
def test_aenet_reference_values(shared_data: Path, case):
    import ase.io

    name, ref, species, ro, rc, ao, ac = case
    folder = shared_data / "aenet-reference"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    atoms = ase.io.read(folder / name)          # positions only; no forces used
    desc = ChebyshevDescriptor(species, ro, rc, ao, ac, min_cutoff=0.55)
    got = desc.featurize(atoms).numpy()
    expected = np.loadtxt(folder / ref, delimiter=",")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


# ---------------------------------------------------- independent reference

@pytest.mark.parametrize("kind", ["cubic-small", "triclinic", "isolated", "one-species",
                                  "ang>rad", "four-species"])
def test_matches_loop_reference(kind):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))  # same every run
    settings = dict(CUAU)
    if kind == "cubic-small":
        s = cuau_cell(rng)
    elif kind == "triclinic":
        s = random_structure(rng, 9, ["Cu", "Au"], cell=[[5.0, 0.4, 0.2], [1.2, 4.6, 0.3],
                                                          [-0.6, 0.9, 5.3]])
    elif kind == "isolated":
        s = random_structure(rng, 10, ["Cu", "Au"], spread=1.6)
    elif kind == "one-species":
        settings["species"] = ["Cu"]
        s = random_structure(rng, 7, ["Cu"], cell=np.eye(3) * 4.1 + 0.3)
    elif kind == "ang>rad":
        settings.update(rad_cutoff=3.5, ang_cutoff=4.6)
        s = random_structure(rng, 8, ["Cu", "Au"], cell=[[4.5, 0, 0], [0.5, 4.2, 0], [0, 0.7, 4.8]])
    else:
        settings["species"] = ["H", "C", "N", "O"]
        s = random_structure(rng, 9, ["H", "C", "N", "O"], spread=1.4)
    desc = ChebyshevDescriptor(**settings)
    got = desc.featurize(s).numpy()
    expected = reference_features(s, **settings)
    assert got.shape == (len(s), desc.n_features)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * max(1.0, np.abs(expected).max()))


def test_analytic_dimer_and_min_cutoff():
    desc = ChebyshevDescriptor(["H"], 4, 3.0, 2, 3.0, min_cutoff=0.8)
    d = 1.1
    s = Structure(positions=[[0, 0, 0], [d, 0, 0]], species=["H", "H"])
    g = desc.featurize(s).numpy()
    fc = 0.5 * (math.cos(math.pi * d / 3.0) + 1)
    expected_rad = npcheb.chebvander(2 * d / 3.0 - 1, 4)[0] * fc
    np.testing.assert_allclose(g[:, :5], np.tile(expected_rad, (2, 1)), atol=1e-14)
    np.testing.assert_allclose(g[:, 5:], 0.0, atol=1e-14)      # one neighbour: no pairs
    close = Structure(positions=[[0, 0, 0], [0.8, 0, 0]], species=["H", "H"])
    np.testing.assert_array_equal(desc.featurize(close).numpy(), 0.0)   # at min_cutoff: dropped


def test_analytic_trimer_angular():
    """Angular terms of a bent H-O-H: one pair at the O atom."""
    desc = ChebyshevDescriptor(["O", "H"], 2, 3.0, 3, 2.5, min_cutoff=0.5)
    theta = math.radians(104.5)
    r = 0.96
    pos = [[0, 0, 0], [r, 0, 0], [r * math.cos(theta), r * math.sin(theta), 0]]
    g = desc.featurize(Structure(positions=pos, species=["O", "H", "H"])).numpy()
    fc = 0.5 * (math.cos(math.pi * r / 2.5) + 1)
    tn = npcheb.chebvander(math.cos(theta), 3)[0]
    np.testing.assert_allclose(g[0, 3:7], tn * fc * fc, atol=1e-14)          # angular
    np.testing.assert_allclose(g[0, 10:14], (+1) * (+1) * tn * fc * fc, atol=1e-14)  # H, H spins


def test_typespins_follow_aenet():
    assert typespin_values(1) == [0.0]
    assert typespin_values(2) == [-1.0, 1.0]
    assert typespin_values(3) == [-1.0, 0.0, 1.0]
    assert typespin_values(4) == [-2.0, -1.0, 1.0, 2.0]
    assert typespin_values(5) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert typespin_values(6) == [-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]


def test_feature_counts():
    assert ChebyshevDescriptor(["Cu"], 10, 6.0, 3, 4.0).n_features == 15
    two = ChebyshevDescriptor(["Cu", "Au"], 10, 6.0, 3, 4.0)
    assert two.n_features == 30
    assert two.feature_slices()["weighted_angular"] == slice(26, 30)


# --------------------------------------------------------- derivatives (FD)

FD_CASES = {
    "periodic-small-cell": lambda rng: (CUAU, cuau_cell(rng)),
    "triclinic-small": lambda rng: (dict(CUAU, rad_cutoff=4.5, ang_cutoff=3.6), random_structure(
        rng, 5, ["Cu", "Au"], cell=[[3.0, 0.2, 0.1], [0.5, 3.3, -0.2], [0.3, -0.4, 2.9]])),
    "triclinic-large": lambda rng: (dict(CUAU, rad_cutoff=3.2, ang_cutoff=2.9), random_structure(
        rng, 12, ["Cu", "Au"], cell=[[7.0, 0.5, 0.3], [1.1, 6.8, -0.4], [0.6, -0.7, 7.2]])),
    "isolated-4-species": lambda rng: (dict(CUAU, species=["H", "C", "N", "O"]), random_structure(
        rng, 6, ["H", "C", "N", "O"], spread=1.5)),
    "one-species": lambda rng: (dict(CUAU, species=["Cu"]), random_structure(
        rng, 5, ["Cu"], cell=[[3.4, 0.0, 0.2], [0.3, 3.6, 0.0], [0.0, 0.4, 3.5]])),
    "ang>rad": lambda rng: (dict(CUAU, rad_cutoff=3.0, ang_cutoff=4.0), random_structure(
        rng, 5, ["Cu", "Au"], cell=[[3.6, 0.2, 0.0], [0.0, 3.9, 0.3], [0.4, 0.0, 3.7]])),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_forces_match_finite_differences(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # same every run
    settings, s = FD_CASES[case](rng)
    desc = ChebyshevDescriptor(**settings)
    assert fd_relative_error(desc, s) < 1e-6


def test_forces_differentiable_in_dE_dG():
    rng = np.random.default_rng(2)
    s = random_structure(rng, 4, ["Cu", "Au"], cell=np.eye(3) * 3.3)
    desc = ChebyshevDescriptor(["Cu", "Au"], 3, 3.0, 2, 2.8)
    feats, der = desc.featurize_with_derivatives(s)
    w = torch.randn(tuple(feats.shape), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(der.forces, (w,))
    # second order through the contraction: d/dw of a force loss
    loss = der.forces(w).pow(2).sum()
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    assert g.requires_grad and torch.isfinite(g).all()


# -------------------------------------------------------------- invariance

def features_and_forces(desc, s, w):
    f, d = desc.featurize_with_derivatives(s)
    return f, d.forces(w)


def test_translation_rotation_permutation_invariance():
    rng = np.random.default_rng(4)
    desc = ChebyshevDescriptor(**CUAU)
    for s in (cuau_cell(rng), random_structure(rng, 8, ["Cu", "Au"], spread=1.5)):
        w = torch.tensor(rng.normal(size=(len(s), desc.n_features)))
        f0, F0 = features_and_forces(desc, s, w)
        shifted = s.copy(positions=s.positions + rng.normal(size=3) * 3.0)
        f1, F1 = features_and_forces(desc, shifted, w)
        torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F1, F0, rtol=1e-10, atol=1e-10)
        rot = rotation(rng)
        turned = s.copy(positions=s.positions @ rot.T,
                        cell=None if s.cell is None else s.cell @ rot.T)
        f2, F2 = features_and_forces(desc, turned, w)
        torch.testing.assert_close(f2, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F2, F0 @ torch.tensor(rot.T), rtol=1e-10, atol=1e-10)
        perm = rng.permutation(len(s))
        permuted = s.copy(positions=s.positions[perm], species=[s.species[i] for i in perm])
        f3, F3 = features_and_forces(desc, permuted, w[perm])
        torch.testing.assert_close(f3, f0[perm], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F3, F0[perm], rtol=1e-10, atol=1e-10)


def test_lattice_moves_and_wrapping_do_not_change_anything():
    rng = np.random.default_rng(6)
    desc = ChebyshevDescriptor(**CUAU)
    s = cuau_cell(rng)
    w = torch.tensor(rng.normal(size=(len(s), desc.n_features)))
    f0, F0 = features_and_forces(desc, s.wrapped(), w)
    for _ in range(3):
        moved = s.copy(positions=s.positions + rng.integers(-3, 4, (len(s), 3)) @ s.cell)
        f1, F1 = features_and_forces(desc, moved, w)
        torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F1, F0, rtol=1e-10, atol=1e-10)


def test_supercell_repeats_features():
    """Each atom of a 2x1x2 supercell sees exactly the environment of its original."""
    rng = np.random.default_rng(9)
    desc = ChebyshevDescriptor(**CUAU)
    s = cuau_cell(rng)
    at = s.to_ase().repeat((2, 1, 2))
    sup = Structure.from_ase(at)
    f = desc.featurize(s)
    fs = desc.featurize(sup)
    torch.testing.assert_close(fs, f.repeat(4, 1), rtol=1e-11, atol=1e-11)


def tio2_structures(shared_data: Path):
    from nnpflow.io.xsf import read_xsf

    folder = shared_data / "xsf-TiO2"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    out = []
    for path in sorted(folder.glob("*.xsf")):
        out.extend(read_xsf(path))
    return out


def test_tio2_atoms_outside_home_cell(shared_data: Path):
    structures = tio2_structures(shared_data)
    outside = []
    for s in structures:
        frac = np.linalg.solve(s.cell.T, s.positions.T).T
        if np.any((frac < 0) | (frac >= 1)):
            outside.append(s)
    assert len(outside) == 5
    desc = ChebyshevDescriptor(["Ti", "O"], 10, 6.0, 3, 3.5, min_cutoff=0.5)
    rng = np.random.default_rng(0)
    for s in outside:
        w = torch.tensor(rng.normal(size=(len(s), desc.n_features)))
        f0, F0 = features_and_forces(desc, s.wrapped(), w)
        f1, F1 = features_and_forces(desc, s, w)
        torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F1, F0, rtol=1e-10, atol=1e-10)
    # and the whole set agrees with the loop reference on a few structures
    for s in structures[:3]:
        expected = reference_features(s, ["Ti", "O"], 10, 6.0, 3, 3.5, 0.5)
        np.testing.assert_allclose(desc.featurize(s).numpy(), expected, rtol=0, atol=1e-10)


# ------------------------------------------------------- storage, batching

def test_arrays_round_trip_float32():
    rng = np.random.default_rng(12)
    desc = ChebyshevDescriptor(**CUAU)
    s = cuau_cell(rng)
    feats, der = desc.featurize_with_derivatives(s)
    arrays = der.to_arrays(np.float32)
    assert set(arrays) == {"edge_center", "edge_neighbor", "edge_vector"}
    e = der.n_edges
    assert arrays["edge_center"].dtype == np.int32 and arrays["edge_center"].shape == (e,)
    assert arrays["edge_neighbor"].dtype == np.int32 and arrays["edge_neighbor"].shape == (e,)
    assert arrays["edge_vector"].dtype == np.float32 and arrays["edge_vector"].shape == (e, 3)
    species_index = np.array([desc.species_to_idx[x] for x in s.species], dtype=np.int32)
    back = DescriptorDerivatives.from_arrays(arrays, species_index, desc)
    assert back.n_atoms == len(s)
    w = torch.tensor(rng.normal(size=tuple(feats.shape)))
    ref = der.forces(w)
    got = back.forces(w)
    assert float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref)) < 1e-5
    with pytest.raises(ValueError, match="missing"):
        DescriptorDerivatives.from_arrays({"edge_center": arrays["edge_center"]},
                                          species_index, desc)
    bad = dict(arrays, edge_neighbor=arrays["edge_neighbor"] + len(s))
    with pytest.raises(ValueError, match="outside"):
        DescriptorDerivatives.from_arrays(bad, species_index, desc)


def test_concatenate_equals_per_structure():
    rng = np.random.default_rng(13)
    desc = ChebyshevDescriptor(**CUAU)
    structures = [cuau_cell(rng), random_structure(rng, 6, ["Cu", "Au"], spread=1.4),
                  Structure(positions=[[0.0, 0.0, 0.0]], species=["Au"]),
                  random_structure(rng, 5, ["Cu", "Au"], cell=np.eye(3) * 3.2)]
    feats, ders = desc.featurize_batch_with_derivatives(structures)
    ws = [torch.tensor(rng.normal(size=tuple(f.shape))) for f in feats]
    separate = torch.cat([d.forces(w) for d, w in zip(ders, ws)])     # caches now built
    cached = DescriptorDerivatives.concatenate(ders)
    torch.testing.assert_close(cached.forces(torch.cat(ws)), separate, rtol=1e-12, atol=1e-12)
    _, fresh = desc.featurize_batch_with_derivatives(structures)
    batch = DescriptorDerivatives.concatenate(fresh)
    assert batch.atom_counts == [len(s) for s in structures]
    torch.testing.assert_close(batch.forces(torch.cat(ws)), separate, rtol=1e-12, atol=1e-12)


def test_batch_equals_single_and_chunking(monkeypatch):
    import nnpflow.descriptors.neighbors as nb

    monkeypatch.setattr(nb, "DENSE_MAX_ATOMS", 200)    # exercise the cell lists too
    rng = np.random.default_rng(14)
    desc = ChebyshevDescriptor(**dict(CUAU, rad_cutoff=4.0, ang_cutoff=3.5))
    big = cuau_cell(rng, reps=(4, 4, 6))            # > DENSE_MAX_ATOMS atoms: cell lists
    assert len(big) > nb.DENSE_MAX_ATOMS
    structures = [cuau_cell(rng), random_structure(rng, 7, ["Cu", "Au"], spread=1.5), big,
                  cuau_cell(rng), random_structure(rng, 3, ["Au"], cell=np.eye(3) * 2.9)]
    singles = [desc.featurize(s) for s in structures]
    for chunk_pairs in (None, 10):                  # 10: one structure per pass
        batch = desc.featurize_batch(structures, chunk_pairs=chunk_pairs)
        for a, b in zip(batch, singles):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    feats, ders = desc.featurize_batch_with_derivatives(structures, chunk_pairs=10)
    for s, f, d in zip(structures, feats, ders):
        f1, d1 = desc.featurize_with_derivatives(s)
        torch.testing.assert_close(f, f1, rtol=1e-12, atol=1e-12)
        w = torch.randn(tuple(f.shape), dtype=torch.float64)
        torch.testing.assert_close(d.forces(w), d1.forces(w), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="chunk_pairs"):
        desc.featurize_batch(structures[:1], chunk_pairs=0)
    # big structure against the loop reference
    expected = reference_features(big, **dict(CUAU, rad_cutoff=4.0, ang_cutoff=3.5))
    np.testing.assert_allclose(singles[2].numpy(), expected, rtol=0, atol=1e-10)


def test_ase_atoms_input_and_float32():
    rng = np.random.default_rng(15)
    s = cuau_cell(rng)
    desc = ChebyshevDescriptor(**CUAU)
    f64 = desc.featurize(s)
    torch.testing.assert_close(desc.featurize(s.to_ase()), f64, rtol=0, atol=0)
    d32 = ChebyshevDescriptor(**CUAU, dtype=torch.float32)
    f32, der32 = d32.featurize_with_derivatives(s)
    assert f32.dtype == torch.float32
    assert float((f32.double() - f64).abs().max() / f64.abs().max()) < 1e-5
    w = torch.tensor(rng.normal(size=tuple(f64.shape)))
    _, der64 = desc.featurize_with_derivatives(s)
    F64 = der64.forces(w)
    F32 = der32.forces(w.float())
    assert F32.dtype == torch.float32
    assert float(torch.linalg.vector_norm(F32.double() - F64) / torch.linalg.vector_norm(F64)) < 1e-4


def test_unknown_species_is_a_clear_input_error():
    desc = ChebyshevDescriptor(["Cu", "Au"], 4, 4.0, 2, 3.0)
    s = Structure(positions=[[0, 0, 0], [1.5, 0, 0]], species=["Cu", "Ag"], name="data/x.xsf")
    with pytest.raises(InputError) as err:
        desc.featurize_batch([Structure(positions=[[0, 0, 0]], species=["Cu"]), s])
    assert "data/x.xsf" in str(err.value) and "Ag" in str(err.value)


def test_config_fingerprint_round_trip():
    a = ChebyshevDescriptor(["Ti", "O"], 10, 6, 3, 3.5, min_cutoff=0.5)
    b = ChebyshevDescriptor(["Ti", "O"], 10, 6.0, 3, 3.5, min_cutoff=0.5, dtype=torch.float32)
    assert a.config() == b.config() and a.fingerprint == b.fingerprint
    assert a.config()["type"] == "aenet-chebyshev" and a.config()["version"] == 1
    assert len(a.fingerprint) == 64
    c = ChebyshevDescriptor.from_config(a.config())
    assert c.config() == a.config()
    assert ChebyshevDescriptor(["O", "Ti"], 10, 6, 3, 3.5, 0.5).fingerprint != a.fingerprint
    with pytest.raises(ConfigError, match="unknown"):
        ChebyshevDescriptor.from_config(dict(a.config(), radial_order=3))
    with pytest.raises(ConfigError, match="version"):
        ChebyshevDescriptor.from_config(dict(a.config(), version=99))
    for bad in (dict(species=[]), dict(species=["Xx"]), dict(species=["O", "O"]),
                dict(rad_order=-1), dict(rad_order=2.5), dict(rad_cutoff=0.4),
                dict(ang_cutoff=float("nan"))):
        kwargs = dict(species=["O"], rad_order=2, rad_cutoff=4.0, ang_order=2, ang_cutoff=3.0,
                      min_cutoff=0.5)
        kwargs.update(bad)
        with pytest.raises(ConfigError):
            ChebyshevDescriptor(**kwargs)


def test_derivatives_to_dtype_and_cache_reuse():
    rng = np.random.default_rng(16)
    desc = ChebyshevDescriptor(**CUAU)
    s = cuau_cell(rng)
    feats, der = desc.featurize_with_derivatives(s)
    w = torch.tensor(rng.normal(size=tuple(feats.shape)))
    ref = der.forces(w)
    assert der.cache_nbytes() > 0
    again = der.forces(w)                             # cached coefficients
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    der.clear_cache()
    assert der.cache_nbytes() == 0
    low = der.to(dtype=torch.float32)
    assert low.vector.dtype == torch.float32 and low.descriptor.dtype == torch.float32
    f32 = low.forces(w.float())
    assert float(torch.linalg.vector_norm(f32.double() - ref) / torch.linalg.vector_norm(ref)) < 1e-4
    with pytest.raises(ValueError, match="shape"):
        der.forces(w[:, :-1])


@pytest.mark.gpu
def test_cuda_matches_cpu_features_and_forces():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(17)
    structures = [cuau_cell(rng), random_structure(rng, 9, ["Cu", "Au"], spread=1.5),
                  cuau_cell(rng, reps=(4, 4, 6))]
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        cpu = ChebyshevDescriptor(**CUAU, dtype=dtype)
        gpu = ChebyshevDescriptor(**CUAU, device="cuda", dtype=dtype)
        fc, dc = cpu.featurize_batch_with_derivatives(structures)
        fg, dg = gpu.featurize_batch_with_derivatives(structures)
        for a, b in zip(fc, fg):
            assert float((a - b.cpu()).abs().max() / a.abs().max()) < tol
        w = torch.randn(sum(len(s) for s in structures), cpu.n_features, dtype=dtype)
        Fc = DescriptorDerivatives.concatenate(dc).forces(w)
        wg = w.cuda().requires_grad_(True)
        Fg = DescriptorDerivatives.concatenate(dg).forces(wg)
        Fg.pow(2).sum().backward()
        assert float(torch.linalg.vector_norm(Fc - Fg.detach().cpu())
                     / torch.linalg.vector_norm(Fc)) < tol
        assert wg.grad is not None and torch.isfinite(wg.grad).all()


# ------------------------------------------------------- contraction layout

def test_row_layout_covers_every_edge_once_and_splits_long_rows():
    from nnpflow.descriptors.derivatives import _row_width, _Rows

    # a few atoms with many edges among many with few: rows of width k < max degree
    degree = np.array([60, 0, 3, 2, 61] + [4] * 30)
    k = _row_width(degree)
    assert k < degree.max()
    owner = torch.repeat_interleave(torch.arange(len(degree)), torch.as_tensor(degree))
    rows = _Rows(owner, len(degree))
    assert rows.k == k and rows.owner is not None
    src = rows.src.view(rows.n_rows, rows.k)
    real = ~rows.pad.view(rows.n_rows, rows.k)
    # every edge exactly once, each in a row of its own atom, in order
    assert torch.equal(src[real], torch.arange(len(owner)))
    assert torch.equal(owner[src[real]], rows.owner.unsqueeze(1).expand_as(src)[real])
    assert torch.equal(torch.bincount(rows.owner, minlength=len(degree)),
                       torch.as_tensor(-(-degree // k)))
    # uniform degrees: one row per atom, no padding
    flat = _Rows(torch.arange(5).repeat_interleave(7), 5)
    assert flat.owner is None and flat.pad is None and flat.k == 7


def test_forces_with_split_rows_match_single_structures_and_finite_differences():
    """A batch whose degrees differ widely (a tiny periodic cell with many image
    neighbours, a sparse cluster, an isolated atom) uses split rows; forces and
    their adjoint equal those of the structures alone."""
    rng = np.random.default_rng(21)
    desc = ChebyshevDescriptor(**CUAU)
    dense = random_structure(rng, 2, ["Cu", "Au"], cell=np.eye(3) * 2.6, min_dist=1.5)
    sparse = random_structure(rng, 24, ["Cu", "Au"], spread=3.0, min_dist=1.2)
    lone = Structure(positions=[[0.0, 0.0, 0.0]], species=["Cu"])
    structures = [dense, sparse, lone]
    feats, ders = desc.featurize_batch_with_derivatives(structures)
    batch = DescriptorDerivatives.concatenate(ders).precompute()
    assert batch._cache.rad.owner is not None            # rows were split
    ws = [torch.tensor(rng.normal(size=tuple(f.shape)), requires_grad=True) for f in feats]
    w = torch.cat(ws)
    got = batch.forces(w)
    alone = torch.cat([d.forces(x) for d, x in zip(ders, ws)])
    torch.testing.assert_close(got, alone, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    a = torch.autograd.grad(got, ws, g)
    b = torch.autograd.grad(alone, ws, g)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    assert fd_relative_error(desc, sparse, seed=3) < 1e-6
    # the adjoint (dE/dG of a force loss) is differentiable too: its derivative
    # with respect to the force gradient is the contraction again
    v = torch.randn(tuple(got.shape), dtype=torch.float64, requires_grad=True)

    def adjoint(gf):
        return torch.autograd.grad(batch.forces(w), w, gf, create_graph=True)[0]

    assert torch.autograd.gradcheck(adjoint, (v,))


def test_structures_without_edges_give_zero_forces():
    desc = ChebyshevDescriptor(**CUAU)
    far = Structure(positions=[[0.0, 0.0, 0.0], [9.0, 0.0, 0.0]], species=["Cu", "Au"])
    feats, der = desc.featurize_with_derivatives(far)
    assert der.n_edges == 0
    w = torch.randn(tuple(feats.shape), dtype=torch.float64, requires_grad=True)
    f = der.forces(w)
    assert torch.equal(f, torch.zeros(2, 3, dtype=torch.float64))
    (g,) = torch.autograd.grad(f.sum(), w)
    assert torch.equal(g, torch.zeros_like(w))
