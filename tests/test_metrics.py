"""energy_force_metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnpflow.evaluation.metrics import energy_force_metrics


def test_hand_computed_metrics():
    e_pred, e_ref, n = [1.0, -2.0], [0.0, 0.0], [2, 4]
    f_pred = [np.array([[1.0, 0, 0], [0, 0, 0]]), np.zeros((4, 3))]
    f_ref = [np.zeros((2, 3)), np.array([[0, 2.0, 0], [0, 0, 0], [0, 0, 0], [0, 0, -2.0]])]
    species = [["H", "O"], ["H", "H", "O", 8]]
    m = energy_force_metrics(e_pred, e_ref, n, f_pred, f_ref, species)
    assert m["n_structures"] == 2 and m["n_atoms"] == 6 and m["n_force_components"] == 18
    assert m["energy_rmse_per_atom"] == pytest.approx(math.sqrt((0.5**2 + 0.5**2) / 2))
    assert m["energy_mae_per_atom"] == pytest.approx(0.5)
    assert m["energy_rmse"] == pytest.approx(math.sqrt(2.5)) and m["energy_mae"] == pytest.approx(1.5)
    assert m["force_rmse"] == pytest.approx(math.sqrt(9 / 18))  # over all 18 components
    assert m["force_mae"] == pytest.approx(5 / 18)
    h, o = m["per_species"]["H"], m["per_species"]["O"]
    assert h["n_atoms"] == 3 and h["force_rmse"] == pytest.approx(math.sqrt(5 / 9))
    assert o["n_atoms"] == 3 and o["force_rmse"] == pytest.approx(math.sqrt(4 / 9))
    assert o["force_mae"] == pytest.approx(2 / 9)


def test_accepts_tensors_and_concatenated_forces_and_no_forces():
    e = torch.tensor([1.0, 2.0])
    m = energy_force_metrics(e, e + 0.3, torch.tensor([3, 3]))
    assert m["energy_rmse_per_atom"] == pytest.approx(0.1) and m["force_rmse"] is None
    f = torch.ones(6, 3)
    m = energy_force_metrics(e, e, [3, 3], f, f * 0, species=torch.tensor([1, 1, 8, 1, 1, 8]))
    assert m["force_rmse"] == pytest.approx(1.0) and set(m["per_species"]) == {"H", "O"}


def test_shape_errors():
    with pytest.raises(ValueError, match="one entry per structure"):
        energy_force_metrics([1.0], [1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match=r"must both be \(3, 3\)"):
        energy_force_metrics([1.0], [1.0], [3], np.zeros((2, 3)), np.zeros((2, 3)))
