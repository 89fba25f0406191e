"""SchNet layer stack: independent reference, finite-difference forces, invariances,
molecules and periodic cells, model files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnpflow.models.batch import packed_for_model
from nnpflow.models.model_file import load_layer_stack, save_layer_stack
from nnpflow.models.stack import LayerStack
from nnpflow.structure import Structure

F64 = torch.float64
BUILD = {"dim_embedding": 12, "num_rbf": 10, "max_Za": 94, "cutoff_sr": 3.5,
         "Hartree_in_E": 27.211386, "Bohr_in_R": 0.52917721}
CORE = {"name": "Core", "params": {"num_interactions": 2, "hidden_channels": 16}}
BASE = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"}, {"name": "RandomAtomEmbedding"},
        CORE]
ENERGY_FORCE = BASE + [{"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]
WITH_CHARGES = BASE + [{"name": "AtomicAffine"}, {"name": "ChargeConservation"},
                       {"name": "AtomicCharge2Dipole"}, {"name": "ElectrostaticEnergy"},
                       {"name": "EnergyReduce"}, {"name": "Force"}]


def make_model(layers, seed=0, **build):
    torch.manual_seed(seed)
    model = LayerStack("SchNet", layers, {**BUILD, **build}).double()
    with torch.no_grad():  # non-trivial affine maps and biases, so every term matters
        for p in model.parameters():
            if p.dim() <= 2 and p.shape[-1] != BUILD["dim_embedding"]:
                p.add_(0.1 * torch.randn_like(p))
    return model


def molecule(seed=0, n=5):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 2.6, size=(n, 3))
    while True:  # keep atoms apart
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n) * 9
        if d.min() > 0.9:
            break
        pos = rng.uniform(0, 2.6, size=(n, 3))
    species = ["C", "H", "O", "H", "N", "H", "C"][:n]
    return Structure(positions=pos, species=species, total_charge=1.0 if seed % 2 else 0.0)


def crystal(seed=0):
    rng = np.random.default_rng(seed)
    cell = np.array([[3.0, 0.2, 0.0], [0.1, 3.2, 0.3], [0.0, 0.4, 2.9]])
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.1], [0.5, 0.1, 0.5], [0.1, 0.5, 0.5]])
    pos = frac @ cell + rng.normal(0, 0.05, size=(4, 3))
    return Structure(positions=pos, species=["Cu", "Au", "Cu", "O"], cell=cell)


def predict(model, structures):
    data = packed_for_model(structures, model, total_charge=True)
    inputs, _ = data.batch(np.arange(len(structures)), dtype=F64)
    return model.eval()(inputs)


# ------------------------------------------------------------------ reference
def reference_energy(model, s: Structure, directed_pairs, act=None, cut=None):
    """Naive SchNet energy from an explicit list of ordered pairs (i, j, offset);
    ``act(v, k)`` is the k-th activation of the core (default the shifted softplus),
    ``cut(d)`` the filter cutoff (default the cosine cutoff)."""
    layers = {type(m).__name__: m for m in model.layers}
    core, emb, affine = layers["SchNetCore"], layers["RandomAtomEmbedding"], layers["AtomicAffine"]
    gs = layers["GaussianSmearing"]
    R = torch.tensor(s.positions, dtype=F64)
    Z = torch.tensor(s.atomic_numbers)
    x = emb.embedding.weight[Z]
    if core.embed_proj is not None:
        x = x @ core.embed_proj

    def ssp(v, k=None):
        return F.softplus(v) - math.log(2)

    act = act or ssp
    cut = cut or (lambda d: 0.5 * (torch.cos(d * math.pi / core.cutoff) + 1))
    for t in range(core.T):
        h = x @ core.conv_in[t]
        agg = torch.zeros(len(s), core.F, dtype=F64)
        for i, j, off in directed_pairs:
            d = torch.linalg.vector_norm(R[j] - R[i] + off)
            if d >= core.cutoff:
                continue
            rbf = torch.exp(-0.5 * ((d - gs.centers) / gs.width) ** 2)
            w = act(rbf @ core.filter_w1[t] + core.filter_b1[t, 0], ("filter", t))
            w = w @ core.filter_w2[t] + core.filter_b2[t, 0]
            w = w * cut(d)
            agg[i] += h[j] * w
        v = act(agg @ core.conv_out[t] + core.conv_out_b[t], ("conv", t))
        x = x + v @ core.update_w[t] + core.update_b[t]
    out = act(x @ core.out1 + core.out1_b, ("out", 0)) @ core.out2 + core.out2_b
    ea = (out[:, 0] + affine.shifts["Ea"][Z]) * affine.scales["Ea"][Z]  # Enerzyme's order
    return ea.sum()


def test_molecule_energy_matches_naive_reference():
    model = make_model(ENERGY_FORCE)
    s = molecule(0, n=6)
    pairs = [(i, j, torch.zeros(3, dtype=F64))
             for i in range(len(s)) for j in range(len(s)) if i != j]
    expected = reference_energy(model, s, pairs)
    got = predict(model, [s])["E"][0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_periodic_energy_matches_naive_reference_on_full_neighbour_list():
    from nnpflow.descriptors.neighbors import neighbor_list

    model = make_model(ENERGY_FORCE)
    s = crystal(1)
    nl = neighbor_list(torch.tensor(s.positions), torch.tensor(s.cell), torch.tensor(s.pbc), 3.5)
    cell = torch.tensor(s.cell)
    pairs = [(int(i), int(j), sh.to(F64) @ cell)
             for i, j, sh in zip(nl.center, nl.neighbor, nl.shift)]
    assert any(i == j for i, j, _ in pairs)  # the cell is small enough for self images
    expected = reference_energy(model, s, pairs)
    got = predict(model, [s])["E"][0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def finite_difference_forces(model, s, h=1e-5):
    fd = np.zeros_like(s.positions)
    for a in range(len(s)):
        for k in range(3):
            e = []
            for sign in (1, -1):
                pos = s.positions.copy()
                pos[a, k] += sign * h
                e.append(predict(model, [s.copy(positions=pos)])["E"][0].item())
            fd[a, k] = -(e[0] - e[1]) / (2 * h)
    return fd


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_forces_equal_finite_differences(kind):
    if kind == "molecule":
        model, s = make_model(WITH_CHARGES), molecule(1, n=5)
    else:
        model, s = make_model(WITH_CHARGES, cutoff_lr=5.0), crystal(2)
        assert model.requirements["cutoff_lr"] == 5.0
    forces = predict(model, [s])["Fa"].detach().numpy()
    np.testing.assert_allclose(forces, finite_difference_forces(model, s), atol=2e-7, rtol=1e-6)
    assert np.abs(forces).max() > 1e-3  # not trivially zero


def test_charge_outputs_are_consistent():
    model = make_model(WITH_CHARGES)
    structures = [molecule(1, n=5), molecule(2, n=4)]
    out = predict(model, structures)
    seg = np.repeat([0, 1], [5, 4])
    qa = out["Qa"].detach().numpy()
    np.testing.assert_allclose([qa[seg == 0].sum(), qa[seg == 1].sum()], [1.0, 0.0], atol=1e-12)
    pos = np.concatenate([s.positions for s in structures])
    dip = np.stack([(qa[seg == k, None] * pos[seg == k]).sum(0) for k in (0, 1)])
    np.testing.assert_allclose(out["M2"].detach().numpy(), dip, atol=1e-12)


def rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_periodic_invariances():
    model = make_model(ENERGY_FORCE)
    s = crystal(3)
    out = predict(model, [s])
    e0, f0 = out["E"].item(), out["Fa"].detach().numpy()
    # move atoms by lattice vectors
    moved = s.positions + np.array([[1, 0, 0], [0, -1, 2], [0, 0, 0], [3, 1, -1]]) @ s.cell
    out = predict(model, [s.copy(positions=moved)])
    assert out["E"].item() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(out["Fa"].detach().numpy(), f0, atol=1e-10)
    # rotate atoms and cell together
    rot = rotation(0)
    out = predict(model, [s.copy(positions=s.positions @ rot.T, cell=s.cell @ rot.T)])
    assert out["E"].item() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(out["Fa"].detach().numpy(), f0 @ rot.T, atol=1e-10)
    # permute atoms
    perm = [2, 0, 3, 1]
    out = predict(model, [s.copy(positions=s.positions[perm], species=[s.species[k] for k in perm])])
    assert out["E"].item() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(out["Fa"].detach().numpy(), f0[perm], atol=1e-10)


def test_molecule_invariances_and_batching():
    model = make_model(WITH_CHARGES)
    a, b = molecule(0, n=6), molecule(3, n=4)
    together = predict(model, [a, b])
    alone = [predict(model, [s]) for s in (a, b)]
    torch.testing.assert_close(together["E"], torch.cat([o["E"] for o in alone]))
    torch.testing.assert_close(together["Fa"], torch.cat([o["Fa"] for o in alone]))
    rot = rotation(1)
    moved = a.copy(positions=a.positions @ rot.T + np.array([1.0, -2.0, 0.5]))
    out = predict(model, [moved])
    assert out["E"].item() == pytest.approx(alone[0]["E"].item(), abs=1e-10)
    np.testing.assert_allclose(out["Fa"].detach().numpy(), alone[0]["Fa"].detach().numpy() @ rot.T,
                               atol=1e-10)


def test_electrostatics_on_periodic_cell_needs_cutoff_lr():
    from nnpflow.errors import ConfigError

    model = make_model(WITH_CHARGES)
    with pytest.raises(ConfigError, match="needs a finite pair cutoff; set cutoff_lr"):
        packed_for_model([crystal(0)], model)


def test_model_file_round_trip(tmp_path):
    model = make_model(WITH_CHARGES)
    path = tmp_path / "model.pt"
    save_layer_stack(path, model, metadata={"note": "test"})
    payload = torch.load(path, weights_only=True)  # no pickled code
    assert payload["schema"] == "nnpflow.model" and payload["family"] == "layer_stack"
    assert payload["settings"] == model.config()
    loaded, meta = load_layer_stack(path)
    assert meta == {"note": "test"}
    s = [molecule(1, n=5)]
    torch.testing.assert_close(predict(loaded, s)["E"], predict(model, s)["E"], rtol=0, atol=0)


def test_predict_structures_matches_batched_forward():
    from nnpflow.models.prediction import predict_structure, predict_structures

    model = make_model(WITH_CHARGES)
    structures = [molecule(1, n=5), molecule(2, n=4), molecule(3, n=6)]
    out = predict_structures(model, structures, batch_size=2)
    direct = predict(model, structures)
    np.testing.assert_allclose(out["energies"], direct["E"].detach().numpy(), rtol=0, atol=1e-12)
    assert [f.shape for f in out["forces"]] == [(5, 3), (4, 3), (6, 3)]
    np.testing.assert_allclose(np.concatenate(out["forces"]), direct["Fa"].detach().numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(out["dipoles"], direct["M2"].detach().numpy(), atol=1e-12)
    one = predict_structure(model, structures[1].to_ase())
    assert one["energy"] == pytest.approx(out["energies"][1], abs=1e-12)
