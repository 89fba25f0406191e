"""Weighted losses and whole-set metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from nnpflow.errors import ConfigError
from nnpflow.training.losses import MetricAccumulator, WeightedLoss, metric, parse_terms


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_force_rmse_is_over_all_components_not_per_axis_average():
    pred = t([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ref = t([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    # all components: sqrt((1 + 9) / 6); per-axis average would be (sqrt(1/2) + 0 + sqrt(9/2)) / 3
    assert metric("rmse", pred, ref).item() == pytest.approx(math.sqrt(10 / 6))
    assert metric("mae", pred, ref).item() == pytest.approx(4 / 6)
    assert metric("mse", pred, ref).item() == pytest.approx(10 / 6)


def test_weighted_loss_hand_values():
    loss = WeightedLoss({"rmse": {"E": 1.0, "Fa": 10.0}, "mae": {"Qa": 2.0}})
    pred = {"E": t([1.0, 2.0]), "Fa": t([[0.0, 0.0, 0.3]]), "Qa": t([0.1, -0.1])}
    ref = {"E": t([0.0, 0.0]), "Fa": t([[0.0, 0.0, 0.0]]), "Qa": t([0.0, 0.0])}
    total, terms = loss(pred, ref)
    rmse_e, rmse_f, mae_q = math.sqrt(2.5), math.sqrt(0.09 / 3), 0.1
    assert terms["rmse_E"].item() == pytest.approx(rmse_e)
    assert terms["rmse_Fa"].item() == pytest.approx(rmse_f)
    assert terms["mae_Qa"].item() == pytest.approx(mae_q)
    assert total.item() == pytest.approx(rmse_e + 10 * rmse_f + 2 * mae_q)


def test_loss_is_differentiable():
    pred = t([1.0, 2.0]).requires_grad_()
    total, _ = WeightedLoss({"mse": {"E": 3.0}})({"E": pred}, {"E": t([0.0, 0.0])})
    (g,) = torch.autograd.grad(total, pred)
    torch.testing.assert_close(g, 3.0 * 2 * pred.detach() / 2)


def test_accumulator_equals_whole_set_values():
    torch.manual_seed(0)
    pred, ref = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    acc = MetricAccumulator(["Fa"])
    for lo, hi in ((0, 3), (3, 4), (4, 10)):  # uneven batches
        acc.add({"Fa": pred[lo:hi]}, {"Fa": ref[lo:hi]})
    values = acc.compute()
    assert values["rmse_Fa"] == pytest.approx(metric("rmse", pred, ref).item())
    assert values["mae_Fa"] == pytest.approx(metric("mae", pred, ref).item())
    assert MetricAccumulator.score(values, {"rmse": {"Fa": 2.0}, "mae": {"Fa": 1.0}}) == \
        pytest.approx(2 * values["rmse_Fa"] + values["mae_Fa"])


@pytest.mark.parametrize("table, message", [
    ({"rmsd": {"E": 1}}, "loss.rmsd: unknown metric"),
    ({"rmse": {"E": "x"}}, "loss.rmse.E: weight must be a number"),
    ({"rmse": {"E": -1}}, "loss.rmse.E: weight must be finite and >= 0"),
    ({"rmse": {"Ea": 1}}, "loss.rmse.Ea: unknown field"),
    ({"rmse": []}, "loss.rmse: expected a mapping"),
])
def test_term_table_errors(table, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_terms(table, "loss", ("E", "Fa", "Qa", "Q", "M2"))
