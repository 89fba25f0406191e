"""Layers of the layer stack against hand-computed values, and stack validation."""

from __future__ import annotations

import math

import pytest
import torch

from nnpflow.errors import ConfigError
from nnpflow.models.layers import (AtomicAffine, AtomicCharge2Dipole, ChargeConservation,
                                   ElectrostaticEnergy, EnergyReduce, Force, GaussianSmearing,
                                   RangeSeparation)
from nnpflow.models.layers.base import cosine_cutoff, shifted_softplus, smooth_step_down
from nnpflow.models.stack import LayerStack

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def test_gaussian_smearing_hand_values():
    layer = GaussianSmearing(num_rbf=3, cutoff_sr=2.0)  # centres 0, 1, 2; width 1
    out = layer({"Dij_sr": t([0.5, 2.0])})["rbf"]
    expected = [[math.exp(-0.125), math.exp(-0.125), math.exp(-1.125)],
                [math.exp(-2.0), math.exp(-0.5), 1.0]]
    torch.testing.assert_close(out.double(), t(expected), rtol=1e-6, atol=1e-7)


def test_cosine_cutoff_hand_values():
    d = t([0.0, 1.25, 2.5, 5.0, 6.0])
    expected = t([1.0, 0.5 * (math.cos(math.pi / 4) + 1), 0.5, 0.0, 0.0])
    torch.testing.assert_close(cosine_cutoff(d, 5.0), expected)


def test_shifted_softplus_values_and_derivatives():
    x = t([-30.0, -1.0, 0.0, 2.0, 40.0]).requires_grad_()
    y = shifted_softplus(x)
    expected = [math.log1p(math.exp(v)) - math.log(2) if v < 30 else v - math.log(2)
                for v in x.tolist()]
    torch.testing.assert_close(y, t(expected))
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(g, torch.sigmoid(x.detach()))
    (gg,) = torch.autograd.grad(g.sum(), x)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(gg, s * (1 - s))


def test_charge_conservation_spreads_excess_equally():
    fields = {"Qa": t([0.3, 0.1, -0.2, 0.5, 0.5]), "Q": t([1.0, 0.0]),
              "batch_seg": torch.tensor([0, 0, 0, 1, 1]), "N": torch.tensor([3, 2])}
    out = ChargeConservation()(fields)
    excess = (1.0 - 0.2) / 3
    torch.testing.assert_close(out["Qa"], t([0.3 + excess, 0.1 + excess, -0.2 + excess, 0.0, 0.0]))
    torch.testing.assert_close(out["Q"], t([0.2, 1.0]))  # raw sums are the Q prediction


def test_charge_conservation_defaults_to_neutral():
    fields = {"Qa": t([0.4, 0.2]), "batch_seg": torch.tensor([0, 0]), "N": torch.tensor([2])}
    out = ChargeConservation()(fields)
    torch.testing.assert_close(out["Qa"], t([0.1, -0.1]))


def test_dipole_of_two_charges():
    fields = {"Qa": t([1.0, -1.0, 0.5, -0.5]), "Ra": t([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]]),
              "batch_seg": torch.tensor([0, 0, 1, 1]), "N": torch.tensor([2, 2])}
    out = AtomicCharge2Dipole()(fields)
    torch.testing.assert_close(out["M2"], t([[-1.0, 0, 0], [0, 1.0, -1.5]]))


def test_smooth_step_values():
    torch.testing.assert_close(smooth_step_down(t([0.0, 0.5, 1.0, 2.0])), t([1.0, 0.5, 0.0, 0.0]))


@pytest.mark.parametrize("r, cutoff_lr", [(3.0, None), (1.0, None), (0.4, None), (3.0, 5.0),
                                          (6.0, 5.0)])
def test_electrostatics_two_charges(r, cutoff_lr):
    hartree, bohr = 27.211386, 0.52917721
    layer = ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=hartree, Bohr_in_R=bohr,
                                cutoff_lr=cutoff_lr)
    q1, q2 = 0.7, -0.4
    fields = {"Qa": t([q1, q2]), "Dij": t([r]), "idx_i": torch.tensor([0]),
              "idx_j": torch.tensor([1])}
    out = layer(fields)["E_ele_a"]
    k = hartree * bohr  # 14.3996 eV Å
    x = r / 2.0  # switch region ends at cutoff_sr / 2 = 2 Å
    s = 0.0 if x >= 1 else 1 - 10 * x**3 + 15 * x**4 - 6 * x**5
    shielded, bare = 1 / math.sqrt(r * r + 1), 1 / r
    if cutoff_lr is not None:
        shielded += math.sqrt(r * r + 1) / cutoff_lr**2 - 2 / cutoff_lr
        bare += r / cutoff_lr**2 - 2 / cutoff_lr
    pair = k * q1 * q2 * (s * shielded + (1 - s) * bare)
    if cutoff_lr is not None and r > cutoff_lr:
        pair = 0.0
    torch.testing.assert_close(out, t([pair / 2, pair / 2]))
    if r == 3.0 and cutoff_lr is None:  # beyond cutoff_sr / 2: the bare Coulomb law
        assert abs(out.sum().item() - k * q1 * q2 / r) < 1e-12


@pytest.mark.parametrize("order", ["shift_then_scale", "scale_then_shift"])
def test_atomic_affine_per_element(order):
    # element keys as symbols and as atomic numbers (Enerzyme takes both)
    layer = AtomicAffine(max_Za=10, shifts={"Ea": {"values": {"H": 1.0, 8: -2.0}}},
                         scales={"Ea": {"values": 2.0, "learnable": False}}, order=order)
    layer.double()
    out = layer({"Ea": t([0.5, 0.5, 1.0]), "Za": torch.tensor([1, 8, 6])})["Ea"]
    if order == "shift_then_scale":  # Enerzyme's (x + shift) * scale
        expected = [(0.5 + 1.0) * 2, (0.5 - 2.0) * 2, (1.0 + 0.0) * 2]
    else:
        expected = [2 * 0.5 + 1.0, 2 * 0.5 - 2.0, 2 * 1.0 + 0.0]
    torch.testing.assert_close(out, t(expected))
    assert layer.shifts["Ea"].requires_grad and not layer.scales["Ea"].requires_grad


def test_atomic_affine_rejects_bad_tables():
    with pytest.raises(ConfigError, match="unknown element"):
        AtomicAffine(max_Za=10, shifts={"Ea": {"values": {"Xx": 1.0}}})
    with pytest.raises(ConfigError, match="unknown key"):
        AtomicAffine(max_Za=10, shifts={"Ea": {"value": 1.0}})
    with pytest.raises(ConfigError, match="above max_Za"):
        AtomicAffine(max_Za=5, shifts={"Ea": {"values": {"O": 1.0}}})
    with pytest.raises(ConfigError, match="element H given twice"):
        AtomicAffine(max_Za=5, shifts={"Ea": {"values": {"H": 1.0, 1: 2.0}}})
    with pytest.raises(ConfigError, match="unknown order 'scale_first'; choose one of "
                                          "shift_then_scale, scale_then_shift"):
        AtomicAffine(max_Za=5, order="scale_first")


def test_energy_reduce_sums_all_atomic_terms():
    fields = {"Ea": t([1.0, 2.0, 3.0]), "E_ele_a": t([0.5, 0.25, 0.0]),
              "batch_seg": torch.tensor([0, 0, 1]), "N": torch.tensor([2, 1])}
    torch.testing.assert_close(EnergyReduce()(fields)["E"], t([3.75, 3.0]))


def test_force_is_negative_gradient():
    ra = t([[0.0, 0, 0], [1.0, 2.0, 0]]).requires_grad_()
    energy = (ra ** 2).sum(dim=1).sum().reshape(1)
    layer = Force().eval()
    out = layer({"E": energy, "Ra": ra})["Fa"]
    torch.testing.assert_close(out, -2 * ra.detach())


def test_range_separation_selects_short_pairs():
    layer = RangeSeparation(cutoff_sr=2.0)
    fields = {"Ra": t([[0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]]),
              "idx_i": torch.tensor([0, 0, 1]), "idx_j": torch.tensor([1, 2, 2]),
              "Dij": t([1.5, 3.0, 1.5])}
    out = layer(fields)
    assert out["idx_i_sr"].tolist() == [0, 1] and out["idx_j_sr"].tolist() == [1, 2]
    torch.testing.assert_close(out["Dij_sr"], t([1.5, 1.5]))


BUILD = {"dim_embedding": 16, "num_rbf": 8, "max_Za": 10, "cutoff_sr": 4.0,
         "Hartree_in_E": 27.211386, "Bohr_in_R": 0.52917721}


def test_build_params_are_injected_and_params_win():
    stack = LayerStack("SchNet", [
        {"name": "RangeSeparation"},
        {"name": "GaussianSmearing", "params": {"num_rbf": 5}},
        {"name": "RandomAtomEmbedding"},
        {"name": "Core", "params": {"num_interactions": 2, "hidden_channels": 8, "num_rbf": 5}},
        {"name": "EnergyReduce"}], BUILD)
    specs = {s["name"]: s["params"] for s in stack.layer_specs}
    assert specs["GaussianSmearing"]["num_rbf"] == 5
    assert specs["GaussianSmearing"]["cutoff_sr"] == 4.0
    assert specs["RandomAtomEmbedding"] == {"dim_embedding": 16, "max_Za": 10}
    assert specs["Core"]["dim_embedding"] == 16 and specs["Core"]["hidden_channels"] == 8
    assert stack.unused_build_params == ["Bohr_in_R", "Hartree_in_E"]
    assert stack.requirements == {"cutoff_sr": 4.0, "cutoff_lr": None}
    assert stack.outputs == ["E", "Qa"]


@pytest.mark.parametrize("layers, build, message", [
    ([{"name": "RangeSeparatoin"}], BUILD,
     "unknown layer 'RangeSeparatoin' (did you mean 'RangeSeparation'?)"),
    ([{"name": "RangeSeparation", "params": {"cutof_sr": 3}}], BUILD,
     "layers[0] (RangeSeparation).params.cutof_sr: unknown parameter"),
    ([{"name": "RangeSeparation"}], {**BUILD, "num_rfb": 3}, "build_params.num_rfb: no layer takes"),
    ([{"name": "RangeSeparation"}], {},
     "layers[0] (RangeSeparation): missing parameter 'cutoff_sr'"),
    ([{"name": "GaussianSmearing"}], BUILD, "reads Dij_sr, which no earlier layer writes"),
    ([{"name": "RangeSeparation", "size": 3}], BUILD, "layers[0].size: unknown key"),
])
def test_stack_errors_name_the_layer(layers, build, message):
    with pytest.raises(ConfigError) as info:
        LayerStack("SchNet", layers, build, where="Modelhub.FF01")
    assert message in str(info.value)
    assert str(info.value).startswith("Modelhub.FF01")


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown layer-stack architecture 'PaiNN'"):
        LayerStack("PaiNN", [{"name": "RangeSeparation"}], BUILD)
