"""Shared training infrastructure: EMA, schedules, early stopping, checkpoints,
the resume guard and the SIGTERM handler."""

from __future__ import annotations

import argparse
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from nnpflow.errors import ConfigError, ResumeMismatchError, SchemaError
from nnpflow.training.checkpoint import (capture_rng_state, check_resume, describe_changes,
                                         load_checkpoint, restore_rng_state, save_checkpoint)
from nnpflow.training.early_stopping import EarlyStopping
from nnpflow.training.ema import ExponentialMovingAverage
from nnpflow.training.interrupt import GracefulInterrupt, TrainingInterrupted
from nnpflow.training.schedules import make_schedule


# ---------------------------------------------------------------------- EMA
def test_ema_hand_values_and_swap():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ExponentialMovingAverage(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update()  # 0.5 * 1 + 0.5 * 3
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update()  # 0.5 * 2 + 0.5 * 5
    assert ema.shadow["weight"].item() == pytest.approx(3.5)
    with ema.average_parameters():
        assert model.weight.item() == pytest.approx(3.5)
    assert model.weight.item() == 5.0
    state = ema.state_dict()
    other = ExponentialMovingAverage(model, decay=0.9)
    other.load_state_dict(state)
    assert other.shadow["weight"].item() == pytest.approx(3.5) and other.num_updates == 2


def test_ema_warmup_decay():
    ema = ExponentialMovingAverage(torch.nn.Linear(1, 1), decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates = 1000
    assert ema.current_decay() == 0.99


# ---------------------------------------------------------------- schedules
def lrs(name, total, warmup_ratio, **params):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(name, opt, 2.0, total, warmup_ratio, **params)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out, sched, opt


def test_linear_schedule_hand_values():
    out, _, _ = lrs("linear", 10, 0.2)  # W = 2, T = 10
    expected = [2 * 1 / 2, 2 * 2 / 2] + [2 * (10 - k + 1) / 8 for k in range(3, 11)]
    assert out == pytest.approx(expected)
    assert out[2] == 2.0 and out[-1] == pytest.approx(2 / 8)  # full rate after warmup, never 0


def test_constant_and_cosine_schedules():
    out, _, _ = lrs("constant", 5, 0.4)
    assert out == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0])
    out, _, _ = lrs("cosine", 6, 0.0, min_lr_ratio=0.1)
    expected = [2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 6))) for k in range(1, 7)]
    assert out == pytest.approx(expected)


def test_plateau_schedule_reduces_after_patience():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule("plateau", opt, 1.0, 100, 0.0, factor=0.5, patience=1, min_lr=0.3)
    for score, lr in [(1.0, 1.0), (1.0, 1.0), (1.0, 0.5), (0.5, 0.5), (0.6, 0.5), (0.6, 0.3)]:
        sched.epoch_end(score)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)


def test_schedule_state_round_trip_and_errors():
    _, sched, opt = lrs("linear", 10, 0.2)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = make_schedule("linear", opt2, 2.0, 10, 0.2)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    with pytest.raises(ConfigError, match="unknown schedule 'step'"):
        make_schedule("step", opt, 1.0, 10)
    with pytest.raises(ConfigError, match="takes no parameter"):
        make_schedule("linear", opt, 1.0, 10, factor=0.5)


# ------------------------------------------------------------ early stopping
def test_early_stopping_patience():
    stop = EarlyStopping(patience=2)
    assert stop.update(1.0, 1) and not stop.should_stop
    assert not stop.update(1.0, 2) and not stop.should_stop  # equal is no improvement
    assert stop.update(0.5, 3) and stop.best_epoch == 3
    assert not stop.update(float("nan"), 4)
    assert not stop.update(0.7, 5) and stop.should_stop
    restored = EarlyStopping(patience=9)
    restored.load_state_dict(stop.state_dict())
    assert restored.should_stop and restored.best_score == 0.5
    assert not EarlyStopping(None).should_stop


# --------------------------------------------------------------- checkpoints
def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_checkpoint_is_weights_only_and_round_trips(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"state_dict": model.state_dict()}, "optimizer": opt.state_dict(),
                           "progress": {"epoch": 3}, "identity": {"a": 1}, "rng": capture_rng_state(),
                           "history": [{"epoch": 1, "loss": 0.5}]})
    raw = torch.load(path, weights_only=True)
    assert raw["schema"] == "nnpflow.checkpoint" and raw["schema_version"] == 1
    state = load_checkpoint(path)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(state["optimizer"])
    assert state["progress"]["epoch"] == 3 and state["history"][0]["loss"] == 0.5
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_checkpoint_schema_errors(tmp_path):
    newer = tmp_path / "newer.pt"
    torch.save({"schema": "nnpflow.checkpoint", "schema_version": 99, "optimizer": {},
                "progress": {}, "identity": {}}, newer)
    with pytest.raises(SchemaError, match="version 99 is newer than this nnpflow understands"):
        load_checkpoint(newer)
    foreign = tmp_path / "foreign.pt"
    torch.save({"schema": "nnpflow.layer_stack", "schema_version": 1}, foreign)
    with pytest.raises(SchemaError,
                       match="holds 'nnpflow.layer_stack', expected 'nnpflow.checkpoint'"):
        load_checkpoint(foreign)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(2)}, plain)
    with pytest.raises(SchemaError, match="not an nnpflow file"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(SchemaError, match="garbage.pt: not a readable nnpflow file"):
        load_checkpoint(garbage)
    code = tmp_path / "code.pt"
    torch.save({"schema": "nnpflow.checkpoint", "obj": argparse.Namespace(a=1)}, code)
    with pytest.raises(SchemaError, match="not a readable nnpflow file"):
        load_checkpoint(code)  # weights_only refuses pickled classes


def test_resume_guard_names_every_change():
    old = {"Trainer": {"learning_rate": 0.001, "batch_size": 8, "num_workers": 0},
           "Modelhub.FF01": {"layers": [{"name": "Core", "params": {"num_interactions": 3}}]},
           "data": "abc"}
    new = {"Trainer": {"learning_rate": 0.002, "batch_size": 8.0, "num_workers": 4, "seed": 1},
           "Modelhub.FF01": {"layers": [{"name": "Core", "params": {"num_interactions": 4}}]},
           "data": "abd"}
    assert check_resume(old, old) == []
    with pytest.raises(ResumeMismatchError) as info:
        check_resume(old, new, ignore=["Trainer.num_workers"])
    text = str(info.value)
    for line in ("Trainer.learning_rate: 0.001 -> 0.002", "Trainer.seed: added (1)",
                 "Modelhub.FF01.layers[0].params.num_interactions: 3 -> 4", "data: 'abc' -> 'abd'"):
        assert line in text
    assert "batch_size" not in text and "num_workers" not in text and "--force" in text
    assert len(check_resume(old, new, force=True, ignore=["Trainer.num_workers"])) == 4
    assert describe_changes({"a": [1, 2]}, {"a": [1, 2, 3]}) == ["a: [1, 2] -> [1, 2, 3]"]


# ----------------------------------------------------------------- interrupt
def test_graceful_interrupt_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulInterrupt() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
    assert TrainingInterrupted("x").exit_status == 143
