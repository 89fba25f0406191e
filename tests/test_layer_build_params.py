"""Enerzyme's layer build_params for SchNet stacks: cutoff functions, activations,
GaussianSmearing.cuton, AtomicAffine shifts/scales, ElectrostaticEnergy flavors and
cutoff_lr, checked against analytic values, finite differences and smoothness at
the cutoff; models with these parameters survive a model-file round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnpflow.errors import ConfigError
from nnpflow.models.layers import ElectrostaticEnergy, GaussianSmearing, RangeSeparation
from nnpflow.models.layers.activation import ShiftedSoftplus, Swish, activation_module
from nnpflow.models.layers.cutoff import CUTOFF_FUNCTIONS, cutoff_values
from nnpflow.models.model_file import model_payload, save_layer_stack
from nnpflow.models.registry import load_model
from nnpflow.models.stack import LayerStack
from nnpflow.structure import Structure

F64 = torch.float64
HARTREE, BOHR = 27.211386, 0.52917721
K = HARTREE * BOHR


def t(values):
    return torch.tensor(values, dtype=F64)


def central_difference(fn, x: float, h: float = 1e-6) -> float:
    return (fn(x + h) - fn(x - h)) / (2 * h)


def grad_at(fn, x: float) -> float:
    v = t([x]).requires_grad_()
    (g,) = torch.autograd.grad(fn(v).sum(), v)
    return float(g)


# ------------------------------------------------------------------ cutoff functions
# independent closed forms on x in (0, 1) and their derivatives df/dx
ANALYTIC = {
    "cosine": (lambda x: 0.5 * (math.cos(math.pi * x) + 1),
               lambda x: -0.5 * math.pi * math.sin(math.pi * x)),
    "polynomial": (lambda x: 1 - 10 * x**3 + 15 * x**4 - 6 * x**5,
                   lambda x: -30 * x**2 * (1 - x) ** 2),
    "bump": (lambda x: math.exp(-x * x / (1 - x * x)),
             lambda x: math.exp(-x * x / (1 - x * x)) * (-2 * x / (1 - x * x) ** 2)),
    "smooth": (lambda x: math.exp(-1 / (1 - x)) / (math.exp(-1 / x) + math.exp(-1 / (1 - x))),
               None),
}


def test_every_cutoff_function_has_an_analytic_reference():
    assert set(ANALYTIC) == set(CUTOFF_FUNCTIONS) == {"cosine", "polynomial", "bump", "smooth"}


@pytest.mark.parametrize("name", sorted(ANALYTIC))
@pytest.mark.parametrize("cuton", [0.0, 1.5])
def test_cutoff_values_match_closed_forms(name, cuton):
    cutoff = 5.0
    f, _ = ANALYTIC[name]
    d = [cuton - 1.0, cuton, cuton + 0.4, cuton + 1.75, 3.9, 4.99, cutoff, 6.0]
    got = cutoff_values(name, t(d), cutoff, cuton).tolist()
    for di, gi in zip(d, got):
        x = (di - cuton) / (cutoff - cuton)
        expected = 1.0 if x <= 0 else 0.0 if x >= 1 else f(x)
        assert gi == pytest.approx(expected, rel=1e-12, abs=1e-13), (name, di)


def test_cutoff_values_at_hand_points():
    half = t([2.5])
    assert cutoff_values("cosine", t([5 / 3]), 5.0).item() == pytest.approx(0.75)
    assert cutoff_values("polynomial", half, 5.0).item() == pytest.approx(0.5)
    assert cutoff_values("smooth", half, 5.0).item() == pytest.approx(0.5)
    assert cutoff_values("bump", half, 5.0).item() == pytest.approx(math.exp(-1 / 3))
    quarter = cutoff_values("smooth", t([1.25]), 5.0).item()
    assert quarter == pytest.approx(math.exp(-4 / 3) / (math.exp(-4) + math.exp(-4 / 3)))


@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_cutoff_derivatives_match_finite_differences(name):
    cutoff, cuton = 4.0, 1.0
    f, df = ANALYTIC[name]
    for d in (1.3, 2.0, 2.5, 3.2, 3.9):
        g = grad_at(lambda v: cutoff_values(name, v, cutoff, cuton), d)
        x = (d - cuton) / (cutoff - cuton)
        fd = central_difference(lambda y: f((y - cuton) / (cutoff - cuton)), d)
        assert g == pytest.approx(fd, rel=1e-6, abs=1e-9), (name, d)
        if df is not None:
            assert g == pytest.approx(df(x) / (cutoff - cuton), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_cutoff_value_and_slope_vanish_at_the_cutoff(name):
    cutoff = 5.0
    fn = lambda v: cutoff_values(name, v, cutoff)  # noqa: E731
    for eps in (1e-3, 1e-4):
        d = cutoff - eps
        assert abs(fn(t([d])).item()) < 1e-5 and abs(grad_at(fn, d)) < 2e-2
    # at and beyond the cutoff: exactly 0 with zero gradient (no NaN from the masked branch)
    for d in (cutoff, cutoff + 0.5):
        assert fn(t([d])).item() == 0.0 and grad_at(fn, d) == 0.0
    # flat start: value 1 and slope 0 at (and before) the cut-on
    assert fn(t([0.0])).item() == 1.0 and abs(grad_at(fn, 1e-4)) < 1e-3


@pytest.mark.parametrize("name", ["cosine", "polynomial", "bump", "smooth"])
def test_cutoff_slope_goes_to_zero_continuously(name):
    fn = lambda v: cutoff_values(name, v, 1.0)  # noqa: E731
    slopes = [abs(grad_at(fn, 1 - eps)) for eps in (1e-1, 1e-2, 1e-3)]
    assert slopes[0] > slopes[1] > slopes[2] and slopes[2] < 5e-3


def test_range_separation_writes_cutoff_values():
    layer = RangeSeparation(cutoff_sr=4.0, cutoff_fn="polynomial")

    def fields():
        return {"Ra": t([[0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]),
                "idx_i": torch.tensor([0, 0, 1]), "idx_j": torch.tensor([1, 2, 2]),
                "Dij": t([1.0, 5.0, 4.0])}
    out = layer(fields())
    x = 0.25
    torch.testing.assert_close(out["cutoff_values_sr"], t([1 - 10 * x**3 + 15 * x**4 - 6 * x**5]))
    assert "cutoff_values_sr" not in RangeSeparation(cutoff_sr=4.0)(fields())
    with pytest.raises(ConfigError, match="unknown cutoff function 'cos'; choose one of "
                                          "cosine, polynomial, bump, smooth"):
        RangeSeparation(cutoff_sr=4.0, cutoff_fn="cos")


# ------------------------------------------------------------------ activations
def ssp_ref(x, a, b):
    return 0.5 * a * x if b == 0 else a / b * (math.log1p(math.exp(b * x)) - math.log(2))


def swish_ref(x, a, b):
    return a * x / (1 + math.exp(-b * x))


@pytest.mark.parametrize("name, ref, params", [
    ("shifted_softplus", ssp_ref, {}),
    ("shifted_softplus", ssp_ref, {"initial_alpha": 2.0, "initial_beta": 0.5}),
    ("shifted_softplus", ssp_ref, {"initial_alpha": 1.5, "initial_beta": 0.0}),
    ("shifted_softplus", ssp_ref, {"initial_beta": 3.0, "learnable": True}),
    ("swish", swish_ref, {}),
    ("swish", swish_ref, {"initial_alpha": 1.0, "initial_beta": 1.0, "learnable": False}),
    ("swish", swish_ref, {"initial_alpha": 0.7, "initial_beta": 2.0}),
])
def test_activation_values_and_derivatives(name, ref, params):
    act = activation_module(name, params).double()
    defaults = {"shifted_softplus": (1.0, 1.0), "swish": (1.0, 1.702)}[name]
    a = params.get("initial_alpha", defaults[0])
    b = params.get("initial_beta", defaults[1])
    if not act.plain:  # the parameters as stored (made in the default dtype, float32)
        assert (act.alpha.item(), act.beta.item()) == pytest.approx((a, b), rel=1e-7)
        a, b = act.alpha.item(), act.beta.item()
    xs = [-4.0, -0.3, 0.0, 0.8, 5.0]
    got = act(t(xs)).tolist()
    for x, g in zip(xs, got):
        assert g == pytest.approx(ref(x, a, b), rel=1e-12, abs=1e-14)
    for x in (-1.2, 0.4, 2.5):
        assert grad_at(act, x) == pytest.approx(
            central_difference(lambda y: ref(y, a, b), x), rel=1e-7, abs=1e-9)
    assert act(t([0.0])).item() == 0.0


def test_activation_defaults_and_learnable_parameters():
    ssp = activation_module("shifted_softplus")
    assert isinstance(ssp, ShiftedSoftplus) and ssp.plain and not list(ssp.parameters())
    swish = activation_module("swish")  # Enerzyme: beta 1.702, learnable by default
    assert isinstance(swish, Swish) and not swish.plain
    assert swish.beta.item() == pytest.approx(1.702) and swish.beta.requires_grad
    frozen = activation_module("shifted_softplus", {"initial_alpha": 2.0})
    assert not frozen.alpha.requires_grad
    # learnable alpha and beta receive gradients
    act = activation_module("shifted_softplus", {"initial_beta": 2.0, "learnable": True}).double()
    act(t([0.3, -1.0, 2.0])).sum().backward()
    assert act.alpha.grad is not None and act.beta.grad is not None
    # d/d alpha of alpha/beta (softplus(beta x) - log 2) is the function at alpha = 1
    expected = sum(ssp_ref(x, 1.0, 2.0) for x in (0.3, -1.0, 2.0))
    assert act.alpha.grad.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name, params, message", [
    ("relu", None, "activation_fn: unknown activation 'relu'; choose one of "
                   "shifted_softplus, swish"),
    ("swish", {"initial_gamma": 1}, "activation_params.initial_gamma: unknown key; allowed: "
                                    "dim_feature, initial_alpha, initial_beta, learnable"),
    ("swish", {"learnable": "yes"}, "activation_params.learnable: expected true or false"),
    ("swish", {"initial_beta": "x"}, "activation_params.initial_beta: expected a finite number"),
    ("swish", {"dim_feature": 64}, "activation_params.dim_feature: nnpflow takes 1"),
])
def test_activation_errors(name, params, message):
    with pytest.raises(ConfigError) as info:
        activation_module(name, params)
    assert message in str(info.value)


# ------------------------------------------------------------------ GaussianSmearing
def test_gaussian_smearing_cuton_starts_the_grid():
    layer = GaussianSmearing(num_rbf=4, cutoff_sr=5.0, cuton=2.0)  # centres 2, 3, 4, 5; w = 1
    out = layer({"Dij_sr": t([2.5])})["rbf"].double()
    expected = [math.exp(-0.5 * (2.5 - c) ** 2) for c in (2.0, 3.0, 4.0, 5.0)]
    torch.testing.assert_close(out, t([expected]), rtol=1e-6, atol=1e-7)
    same = GaussianSmearing(num_rbf=4, cutoff_sr=5.0, start=2.0)
    torch.testing.assert_close(same.centers, layer.centers)
    with pytest.raises(ConfigError, match="cuton .* and start .* both set the first centre"):
        GaussianSmearing(num_rbf=4, cutoff_sr=5.0, cuton=1.0, start=2.0)
    with pytest.raises(ConfigError, match=r"cutoff_sr \(5.0\) must exceed cuton \(6.0\)"):
        GaussianSmearing(num_rbf=4, cutoff_sr=5.0, cuton=6.0)


# ------------------------------------------------------------------ electrostatics
def pair_reference(r, q1, q2, cutoff_sr, flavor, switch_name, cutoff_lr):
    """E_ij from the PhysNet / SpookyNet formulas, written out here."""
    on, off = {"PhysNet": (0.0, 0.5), "SpookyNet": (0.25, 0.75)}[flavor]
    on, off = on * cutoff_sr, off * cutoff_sr
    f, _ = ANALYTIC[switch_name]
    x = (r - on) / (off - on)
    s = 1.0 if x <= 0 else 0.0 if x >= 1 else f(x)
    shielded, bare = 1 / math.sqrt(r * r + 1), 1 / r
    if cutoff_lr is not None:
        rc = cutoff_lr
        if r > rc:
            return 0.0
        bare += r / rc**2 - 2 / rc
        if flavor == "PhysNet":
            shielded += math.sqrt(r * r + 1) / rc**2 - 2 / rc
        else:
            shielded += r * rc / (rc * rc + 1) ** 1.5 - (2 * rc * rc + 1) / (rc * rc + 1) ** 1.5
    return K * q1 * q2 * (s * shielded + (1 - s) * bare)


def electrostatic_pair(layer, r):
    fields = {"Qa": t([0.7, -0.4]), "Dij": r, "idx_i": torch.tensor([0]),
              "idx_j": torch.tensor([1])}
    return layer(fields)["E_ele_a"].sum()


@pytest.mark.parametrize("flavor, switch", [("PhysNet", None), ("SpookyNet", None),
                                            ("PhysNet", "cosine"), ("SpookyNet", "bump")])
@pytest.mark.parametrize("cutoff_lr", [None, 9.0])
def test_electrostatics_flavors_match_formulas(flavor, switch, cutoff_lr):
    layer = ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=HARTREE, Bohr_in_R=BOHR,
                                cutoff_lr=cutoff_lr, flavor=flavor, cutoff_fn=switch)
    name = switch or {"PhysNet": "polynomial", "SpookyNet": "smooth"}[flavor]
    for r in (0.3, 0.9, 1.5, 2.2, 3.5, 8.0, 9.5):
        got = electrostatic_pair(layer, t([r])).item()
        assert got == pytest.approx(pair_reference(r, 0.7, -0.4, 4.0, flavor, name, cutoff_lr),
                                    rel=1e-12, abs=1e-14), r
        g = grad_at(lambda v: electrostatic_pair(layer, v), r)
        fd = central_difference(
            lambda y: pair_reference(y, 0.7, -0.4, 4.0, flavor, name, cutoff_lr), r)
        assert g == pytest.approx(fd, rel=1e-6, abs=1e-8), r


def test_spookynet_switch_region():
    layer = ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=1.0, Bohr_in_R=1.0,
                                flavor="SpookyNet")
    # fully shielded below cutoff_sr / 4, bare Coulomb beyond 3 cutoff_sr / 4
    assert electrostatic_pair(layer, t([0.8])).item() == pytest.approx(-0.28 / math.sqrt(1.64))
    assert electrostatic_pair(layer, t([3.2])).item() == pytest.approx(-0.28 / 3.2)
    assert electrostatic_pair(layer, t([2.0])).item() == pytest.approx(
        -0.28 * 0.5 * (1 / math.sqrt(5) + 1 / 2))  # the smooth switch is 1/2 mid-way


@pytest.mark.parametrize("flavor", ["PhysNet", "SpookyNet"])
def test_electrostatics_vanish_smoothly_at_cutoff_lr(flavor):
    rc = 7.0
    layer = ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=HARTREE, Bohr_in_R=BOHR,
                                cutoff_lr=rc, flavor=flavor)
    fn = lambda v: electrostatic_pair(layer, v)  # noqa: E731
    for eps in (1e-3, 1e-5):
        assert abs(fn(t([rc - eps])).item()) < 10 * eps ** 2
        assert abs(grad_at(fn, rc - eps)) < 10 * eps
    assert fn(t([rc + 1e-6])).item() == 0.0 and grad_at(fn, rc + 0.1) == 0.0


def test_spookynet_shielded_term_is_shifted_force_at_cutoff_lr():
    # a short cutoff_lr inside the switch region: only SpookyNet's shielded term is 0 at rc
    rc = 1.2
    layer = ElectrostaticEnergy(cutoff_sr=8.0, Hartree_in_E=1.0, Bohr_in_R=1.0, cutoff_lr=rc,
                                flavor="SpookyNet")  # fully shielded below r = 2
    fn = lambda v: electrostatic_pair(layer, v)  # noqa: E731
    assert abs(fn(t([rc - 1e-6])).item()) < 1e-10
    assert abs(grad_at(fn, rc - 1e-6)) < 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"flavor": "Ewald"}, "flavor: unknown electrostatics flavor 'Ewald'; choose one of "
                          "PhysNet, SpookyNet"),
    ({"cutoff_fn": "gauss"}, "cutoff_fn: unknown cutoff function 'gauss'; choose one of "
                             "cosine, polynomial, bump, smooth"),
    ({"cutoff_lr": -1.0}, "cutoff_lr must be a positive distance, 0 or null"),
])
def test_electrostatics_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=1.0, Bohr_in_R=1.0, **kwargs)
    assert message in str(info.value)


def test_cutoff_lr_zero_or_null_means_all_pairs():
    for value in (None, 0, 0.0):
        layer = ElectrostaticEnergy(cutoff_sr=4.0, Hartree_in_E=1.0, Bohr_in_R=1.0,
                                    cutoff_lr=value)
        assert layer.cutoff_lr is None and layer.requirements() == {"cutoff_lr": math.inf}
    assert ElectrostaticEnergy(4.0, 1.0, 1.0, cutoff_lr=12).requirements() == {"cutoff_lr": 12.0}


# ------------------------------------------------------------------ whole stacks
# the layers of Enerzyme's shipped SchNet config (example/L3-COMT-aselmdb-smoke,
# train_otf_batch_schnet.yaml), with charges and a long-range cutoff added
ENERZYME_BUILD = {"Bohr_in_R": 0.5291772108, "Hartree_in_E": HARTREE, "cutoff_sr": 4.0,
                  "dim_embedding": 8, "max_Za": 94, "num_rbf": 8, "cutoff_lr": 9.0,
                  "cutoff_fn": "polynomial"}


def enerzyme_layers(activation="shifted_softplus", params=None, flavor="SpookyNet"):
    return [
        {"name": "RangeSeparation"},
        {"name": "GaussianSmearing", "params": {"cuton": 0.5}},
        {"name": "RandomAtomEmbedding"},
        {"name": "Core", "params": {"num_interactions": 2, "hidden_channels": 8,
                                    "activation_fn": activation,
                                    "activation_params": params or {
                                        "dim_feature": 1, "initial_alpha": 1,
                                        "initial_beta": 1, "learnable": False}}},
        {"name": "AtomicAffine", "params": {
            "scales": {"Ea": {"learnable": True, "values": {"H": 0.5, "O": 2.0}},
                       "Qa": {"learnable": False, "values": 0.3}},
            "shifts": {"Ea": {"learnable": True, "values": {"H": -0.1, 8: 0.2}},
                       "Qa": {"learnable": True, "values": 0}}}},
        {"name": "ChargeConservation"},
        {"name": "AtomicCharge2Dipole"},
        {"name": "ElectrostaticEnergy", "params": {"flavor": flavor}},
        {"name": "EnergyReduce"},
        {"name": "Force"}]


def water(seed=0):
    rng = np.random.default_rng(seed)
    pos = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0],
                    [2.9, 0.1, 0.2], [3.5, 0.8, 0.0], [3.4, -0.7, 0.1]])
    return Structure(positions=pos + rng.normal(0, 0.05, pos.shape),
                     species=["O", "H", "H", "O", "H", "H"], total_charge=0.0)


def test_build_params_reach_every_layer_that_takes_them():
    stack = LayerStack("SchNet", enerzyme_layers(), ENERZYME_BUILD, where="Modelhub.FF01")
    specs = {s["name"]: s["params"] for s in stack.layer_specs}
    assert specs["RangeSeparation"]["cutoff_fn"] == "polynomial"
    assert specs["ElectrostaticEnergy"]["cutoff_fn"] == "polynomial"
    assert specs["ElectrostaticEnergy"]["cutoff_lr"] == 9.0
    assert specs["GaussianSmearing"]["cuton"] == 0.5
    assert specs["AtomicAffine"]["order"] == "shift_then_scale"
    assert stack.unused_build_params == []
    assert stack.requirements == {"cutoff_sr": 4.0, "cutoff_lr": 9.0}
    assert stack.outputs == ["E", "Fa", "Qa", "Q", "M2"]


def test_core_uses_range_separation_cutoff_values():
    """RangeSeparation's cutoff_fn replaces SchNet's cosine inside the filters."""
    from test_schnet import reference_energy  # the naive SchNet of test_schnet.py

    layers = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
              {"name": "RandomAtomEmbedding"},
              {"name": "Core", "params": {"num_interactions": 2, "hidden_channels": 8,
                                          "activation_fn": "swish",
                                          "activation_params": {"initial_beta": 1.3}}},
              {"name": "AtomicAffine"}, {"name": "EnergyReduce"}]
    build = {"dim_embedding": 8, "num_rbf": 6, "max_Za": 10, "cutoff_sr": 3.0,
             "cutoff_fn": "bump"}
    torch.manual_seed(3)
    model = LayerStack("SchNet", layers, build).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    core = [m for m in model.layers if type(m).__name__ == "SchNetCore"][0]
    acts = {("filter", t_): core.filter_act[t_] for t_ in range(2)}
    acts.update({("conv", t_): core.conv_act[t_] for t_ in range(2)})
    acts[("out", 0)] = core.out_act

    def act(v, key):
        m = acts[key]
        return m.alpha * v * torch.sigmoid(m.beta * v)

    def bump(d):
        x = d / 3.0
        return torch.exp(-x * x / (1 - x * x)) if x < 1 else torch.zeros((), dtype=F64)

    s = Structure(positions=np.array([[0, 0, 0], [1.1, 0, 0], [0.2, 1.3, 0.1], [2.0, 1.5, 0.4]]),
                  species=["C", "H", "O", "H"])
    pairs = [(i, j, torch.zeros(3, dtype=F64)) for i in range(4) for j in range(4) if i != j]
    expected = reference_energy(model, s, pairs, act=act, cut=bump)
    from nnpflow.models.batch import packed_for_model
    inputs, _ = packed_for_model([s], model).batch(np.arange(1), dtype=F64)
    torch.testing.assert_close(model.eval()(inputs)["E"][0], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation, params, flavor", [
    ("shifted_softplus", None, "SpookyNet"),
    ("shifted_softplus", {"initial_alpha": 1.2, "initial_beta": 0.8, "learnable": True},
     "PhysNet"),
    ("swish", {"learnable": True}, "SpookyNet"),
])
def test_model_file_round_trip_with_new_params(tmp_path, activation, params, flavor):
    torch.manual_seed(5)
    model = LayerStack("SchNet", enerzyme_layers(activation, params, flavor),
                       ENERZYME_BUILD).double()
    with torch.no_grad():  # trained-looking values, learnable activation parameters included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "model.pt"
    save_layer_stack(path, model)
    loaded = load_model(path)
    structures = [water(0), water(1)]
    direct = model.eval()
    from nnpflow.models.batch import packed_for_model
    inputs, _ = packed_for_model(structures, direct, total_charge=True).batch(
        np.arange(2), dtype=F64)
    want = direct(inputs)
    got = loaded.predict(structures)
    np.testing.assert_allclose(got.energies, want["E"].detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(got.forces), want["Fa"].detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    assert loaded.module.config() == model.config()


def test_models_saved_before_order_keep_scale_then_shift(tmp_path):
    """A file whose AtomicAffine params lack ``order`` (written before it existed)
    predicts what it predicted then: x * scale + shift."""
    layers = enerzyme_layers()
    for spec in layers:
        if spec["name"] == "AtomicAffine":
            spec["params"]["order"] = "scale_then_shift"
    torch.manual_seed(2)
    old = LayerStack("SchNet", layers, ENERZYME_BUILD).double()
    payload = model_payload(old)
    for spec in payload["settings"]["layers"]:
        if spec["name"] == "AtomicAffine":
            del spec["params"]["order"]  # as the older code wrote it
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    loaded = load_model(path)
    affine = [m for m in loaded.module.layers if type(m).__name__ == "AtomicAffine"][0]
    assert affine.order == "scale_then_shift"
    s = [water(3)]
    want = LayerStack("SchNet", layers, ENERZYME_BUILD).double()
    want.load_state_dict(old.state_dict())
    from nnpflow.models.batch import packed_for_model
    inputs, _ = packed_for_model(s, want, total_charge=True).batch(np.arange(1), dtype=F64)
    assert loaded.predict(s).energies[0] == pytest.approx(want.eval()(inputs)["E"][0].item(),
                                                         rel=1e-12)


@pytest.mark.parametrize("layer, params, message", [
    ("RangeSeparation", {"cutoff_fn": "gaussian"},
     "layers[0] (RangeSeparation): cutoff_fn: unknown cutoff function 'gaussian'; choose one of "
     "cosine, polynomial, bump, smooth"),
    ("Core", {"activation_fn": "tanh"},
     "layers[3] (Core): activation_fn: unknown activation 'tanh'; choose one of "
     "shifted_softplus, swish"),
    ("ElectrostaticEnergy", {"flavor": "physnet"},
     "layers[7] (ElectrostaticEnergy): flavor: unknown electrostatics flavor 'physnet'; "
     "choose one of PhysNet, SpookyNet"),
    ("AtomicAffine", {"order": "scale"},
     "layers[4] (AtomicAffine): AtomicAffine.order: unknown order 'scale'"),
])
def test_unknown_values_name_the_layer_and_the_choices(layer, params, message):
    layers = enerzyme_layers()
    for spec in layers:
        if spec["name"] == layer:
            spec.setdefault("params", {}).update(params)
    with pytest.raises(ConfigError) as info:
        LayerStack("SchNet", layers, ENERZYME_BUILD, where="Modelhub.FF01")
    assert str(info.value).startswith("Modelhub.FF01")
    assert message in str(info.value)
