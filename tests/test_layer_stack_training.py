"""Layer-stack (SchNet) models through the one training loop: force subsets
(``force_fraction`` < 1) put only the forces of the epoch's force structures in
the loss, checked against the loss and gradient written out by hand, and the
workflow's train stage trains SchNet with a force subset."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnpflow.database import DatabaseReader, write_database
from nnpflow.models.batch import packed_for_model
from nnpflow.models.stack import LayerStack
from nnpflow.splitting import make_split, write_split
from nnpflow.stages.train import run
from nnpflow.training.force_sampling import force_count, force_subset
from nnpflow.training.message_passing import LayerStackTask
from nnpflow.training.potential import read_history_csv
from nnpflow.training.settings import TrainingSettings

from test_ann_data import emt_cells, small_descriptor
from test_gpu import SCHNET
from test_train_stage import TRAINING

LOSS = {"rmse": {"E": 0.7, "Fa": 0.3}}


def make_task(structures, settings, train_idx, loss=LOSS):
    torch.manual_seed(0)
    model = LayerStack("SchNet", SCHNET["layers"], SCHNET["build_params"]).double()
    packed = packed_for_model(structures, model, targets=["E", "Fa"])
    job = SimpleNamespace(entry={"loss": loss}, trainer={"batch_size": 4, "num_workers": 0},
                          logger=logging.getLogger("test"), name="m",
                          data=SimpleNamespace(hash="h"))
    return LayerStackTask(job, model, packed, ["E", "Fa"], loss, np.zeros(0, np.int64), {},
                          torch.float64, torch.device("cpu"), settings, train_idx)


def grad(value, params):
    """d value / d params (zeros for a parameter the value does not use)."""
    gs = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


def loss_and_grads(task, batch_idx):
    """The task's objective and its gradient for one batch (one process)."""
    batch = next(iter(task.batches([batch_idx])))
    work, sums = task.forward(batch)
    totals = task.complete_sums(sums)
    objective = task.objective(work, totals, 1)
    params = [p for p in task.module.parameters() if p.requires_grad]
    return float(totals[0] / totals[1]), grad(objective, params)


def test_schnet_force_subset_puts_only_the_subsets_forces_in_the_loss():
    structures = emt_cells(10, seed=11)
    train_idx = np.arange(10)
    settings = TrainingSettings(force_fraction=0.3, force_sampling="random", seed=5)
    task = make_task(structures, settings, train_idx)
    assert task.force_subset
    task.begin_epoch(2)
    chosen = force_subset(train_idx, 0.3, "random", 5, 2)
    assert task.n_force == len(chosen) == force_count(10, 0.3) == 3
    batch_idx = np.array([0, 2, 3, 5, 7, 9])
    loss, grads = loss_and_grads(task, batch_idx)

    # the loss by hand: energy RMSE over every structure, force RMSE over the atoms
    # of the batch's force structures only
    model = task.module
    inputs, targets = task.packed.batch(batch_idx, dtype=torch.float64)
    out = model(inputs)
    selected = np.isin(batch_idx, chosen)
    assert 0 < selected.sum() < len(batch_idx)
    atoms = torch.from_numpy(np.repeat(selected, inputs["N"].numpy()))
    e_rmse = torch.sqrt(torch.mean((out["E"] - targets["E"]) ** 2))
    f_rmse = torch.sqrt(torch.mean((out["Fa"][atoms] - targets["Fa"][atoms]) ** 2))
    by_hand = 0.7 * e_rmse + 0.3 * f_rmse
    params = [p for p in model.parameters() if p.requires_grad]
    expected = grad(by_hand, params)
    assert loss == pytest.approx(float(by_hand), rel=1e-12)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)

    # the forces of a structure outside the subset do not matter; of one inside, they do
    outside = int(batch_idx[~selected][0])
    inside = int(batch_idx[selected][0])
    for index, matters in ((outside, False), (inside, True)):
        changed = list(structures)
        s = changed[index]
        changed[index] = type(s)(**{**s.__dict__, "forces": s.forces + 1.0})
        other = make_task(changed, settings, train_idx)
        other.begin_epoch(2)
        _, g2 = loss_and_grads(other, batch_idx)
        same = all(torch.equal(a, b) for a, b in zip(grads, g2))
        assert same is not matters, index


def test_without_a_subset_the_term_sums_give_the_weighted_loss():
    """With every force (no subset) the per-term path (used for several processes)
    and the batch's WeightedLoss give the same loss and gradient."""
    structures = emt_cells(6, seed=3)
    direct = make_task(structures, TrainingSettings(), np.arange(6))
    assert not direct.by_terms
    by_terms = make_task(structures, TrainingSettings(), np.arange(6))
    by_terms.by_terms = True
    idx = np.array([1, 2, 4])
    l1, g1 = loss_and_grads(direct, idx)
    l2, g2 = loss_and_grads(by_terms, idx)
    assert l2 == pytest.approx(l1, rel=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def forces_everywhere(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schnet_forces")
    db = folder / "database.h5"
    write_database(db, emt_cells(14, seed=8), descriptor=small_descriptor())
    with DatabaseReader(db) as reader:
        split = make_split(len(reader), 0.2, 0.0, 3, reader.structures_fingerprint)
    write_split(folder / "split.json", split)
    return db, folder / "split.json"


def test_the_train_stage_trains_schnet_with_a_force_subset(forces_everywhere, tmp_path):
    db, split = forces_everywhere
    training = {**TRAINING, "force_weight": 0.3, "force_fraction": 0.5,
                "force_sampling": "fixed", "epochs": 3}
    summary = run(str(db), str(split), str(tmp_path / "model.pt"),
                  str(tmp_path / "history.csv"), "schnet", SCHNET, training, 0)
    assert summary["architecture"] == "schnet"
    history = read_history_csv(tmp_path / "history.csv")
    assert len(history) == 3
    n_train = summary["n_train"]
    assert {row["force_structures"] for row in history} == {force_count(n_train, 0.5)}
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_a_force_subset_without_forces_in_the_loss_is_refused(forces_everywhere, tmp_path):
    from nnpflow.errors import ConfigError
    db, split = forces_everywhere
    with pytest.raises(ConfigError, match=r"models\.schnet: force_fraction/force_sampling "
                                          r"select .*with force_weight=0"):
        run(str(db), str(split), str(tmp_path / "model.pt"), str(tmp_path / "history.csv"),
            "schnet", SCHNET, {**TRAINING, "force_weight": 0.0, "force_fraction": 0.5}, 0)
    assert not (tmp_path / "model.pt").exists()
