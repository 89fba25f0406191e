"""One training-settings object with one set of defaults (issue 14, configuration):
every surface translates into ``TrainingSettings``; a surface's own documented
defaults come from one table; docs/training-settings.md documents every field."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from nnpflow.errors import ConfigError
from nnpflow.stages.train import TRAINING_DEFAULTS, ann_training_config, resolve_training
from nnpflow.training.config import Adam, TorchTrainingConfig
from nnpflow.training.settings import (DEFAULTS, FIELD_DOCS, SURFACE_DEFAULTS,
                                       TrainingSettings)
from nnpflow.training.yaml_config import TRAINER_DEFAULTS, loop_trainer, resolve_trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "training-settings.md"


def test_the_workflow_defaults_are_the_one_set():
    assert TRAINING_DEFAULTS == {k: DEFAULTS[k] for k in TRAINING_DEFAULTS}
    assert SURFACE_DEFAULTS["workflow"] == {}


def test_train_yaml_sets_enerzymes_differing_defaults_explicitly():
    trainer = resolve_trainer({})
    assert (trainer["schedule"], trainer["ema_decay"], trainer["patience"],
            trainer["max_epochs"], trainer["warmup_ratio"]) == ("linear", 0.99, 50, 100, 0.01)
    s = TrainingSettings.from_trainer(loop_trainer(trainer))  # the loops' mapping
    own = SURFACE_DEFAULTS["train.yaml"]
    for name, value in DEFAULTS.items():
        if name in ("device", "devices", "force_weight"):
            continue  # cuda: false is cpu; one process; force weight from the loss
        assert getattr(s, name) == own.get(name, value), name
    assert TRAINER_DEFAULTS["batch_size"] == DEFAULTS["batch_size"]


def test_torch_training_config_sets_aenets_differing_defaults_explicitly():
    c = TorchTrainingConfig()
    own = SURFACE_DEFAULTS["TorchTrainingConfig"]
    assert (c.iterations, c.schedule, c.patience, c.force_weight) == (
        own["epochs"], own["schedule"], None, own["force_weight"]) == (100, "constant", None, 0.0)
    assert (c.method.mu, c.method.batchsize, c.seed, c.ema_decay, c.precision) == (
        DEFAULTS["learning_rate"], DEFAULTS["batch_size"], DEFAULTS["seed"],
        DEFAULTS["ema_decay"], DEFAULTS["precision"])


def test_workflow_translation_to_the_ann_trainer(tmp_path):
    training = resolve_training({"epochs": 7, "patience": 0, "ema_decay": 0.9,
                                 "schedule": "cosine"}, {"training": {"force_weight": 0.3}})
    cfg = ann_training_config(training, 2, tmp_path)
    expected = TorchTrainingConfig(
        iterations=7, method=Adam(mu=0.001, batchsize=32), testpercent=0, seed=44,
        force_weight=0.3, schedule="cosine", ema_decay=0.9, patience=None,
        checkpoint_dir=str(tmp_path), max_checkpoints=3, device="auto")
    assert cfg == expected


def test_workflow_translation_to_the_layer_stack_trainer():
    s = TrainingSettings.from_workflow(resolve_training({"patience": 0}, {}), member=1)
    assert s.layer_stack_trainer(cuda=False) == {
        "batch_size": 32, "cuda": False, "dtype": "float32", "schedule": "plateau",
        "schedule_params": {}, "learning_rate": 0.001, "max_epochs": 200, "num_workers": 0,
        "patience": None, "seed": 43, "warmup_ratio": 0.0, "ema_decay": None,
        "max_grad_norm": None}


@pytest.mark.parametrize("key, value, message", [
    ("learning_rate", math.nan, r"^training\.learning_rate: must be finite, got nan"),
    ("force_weight", math.inf, r"^training\.force_weight: must be finite"),
    ("force_weight", 1.5, r"^training\.force_weight: must be <= 1\.0"),
    ("learning_rate", 0.0, r"^training\.learning_rate: must be > 0\.0"),
    ("schedule", "linaer", r"^training\.schedule: 'linaer' is not one of .*'linear'"),
    ("force_sampling", "all", r"^training\.force_sampling: must be 'random' or 'fixed'"),
    ("ema_decay", 1.0, r"^training\.ema_decay: must be < 1\.0"),
])
def test_workflow_values_are_checked_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve_training({key: value}, {})


def test_settings_are_frozen_and_name_their_surface():
    s = TrainingSettings()
    with pytest.raises(AttributeError):
        s.epochs = 3
    with pytest.raises(ConfigError, match=r"^Trainer\.schedule_params: unknown key\(s\) gamma"):
        TrainingSettings(schedule="linear", schedule_params={"gamma": 1.0}, where="Trainer")


def test_the_page_documents_every_field_with_its_default():
    rows = {}
    text = DOC.read_text(encoding="utf-8")
    fields_section = text.split("## Fields", 1)[1].split("##", 1)[0]
    for line in fields_section.splitlines():
        m = re.match(r"\| `(\w+)` \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    assert set(rows) == set(DEFAULTS) == set(FIELD_DOCS)
    for name, value in DEFAULTS.items():
        shown = "{}" if value == {} else str(value)
        assert rows[name] == shown, name
    differing = text.split("## Where a surface documents another default", 1)[1]
    for surface, values in SURFACE_DEFAULTS.items():
        for name in values:
            assert f"| `{name}` |" in differing, (surface, name)


def test_torch_training_config_round_trips_through_the_settings():
    c = TorchTrainingConfig(iterations=5, method=Adam(mu=0.01, batchsize=4), seed=3,
                            force_weight=0.5, force_fraction=0.5, force_sampling="fixed",
                            schedule="cosine", warmup_ratio=0.1, ema_decay=0.9, patience=4,
                            max_grad_norm=2.0, precision="float64", testpercent=0)
    s = c.settings()
    assert (s.epochs, s.batch_size, s.learning_rate, s.patience, s.precision) == (
        5, 4, 0.01, 4, "float64")
    assert TorchTrainingConfig.from_settings(s) == c


# ------------------------------------------------------------------ optimiser
def test_sgd_and_adamw_survive_the_round_trip_through_the_settings():
    from nnpflow.training.config import SGD, AdamW
    c = TorchTrainingConfig(method=SGD(lr=0.05, batchsize=3, momentum=0.5, weight_decay=0.1),
                            testpercent=0)
    s = c.settings()
    assert (s.optimizer, dict(s.optimizer_params), s.learning_rate, s.batch_size) == (
        "sgd", {"momentum": 0.5, "weight_decay": 0.1}, 0.05, 3)
    back = TorchTrainingConfig.from_settings(s)
    assert back == c and isinstance(back.method, SGD)
    w = TorchTrainingConfig(method=AdamW(mu=0.002, beta2=0.99), testpercent=0)
    assert TorchTrainingConfig.from_settings(w.settings()) == w
    assert w.settings().optimizer == "adamw"


def test_optimiser_settings_are_checked_naming_the_key():
    with pytest.raises(ConfigError, match=r"^Trainer\.optimizer: 'sgdd' is not one of "
                                          r"adam, adamw, sgd \(did you mean 'sgd'\?\)"):
        TrainingSettings(optimizer="sgdd", where="Trainer")
    with pytest.raises(ConfigError, match=r"optimizer_params \(sgd\): unknown key\(s\) beta1"):
        TrainingSettings(optimizer="sgd", optimizer_params={"beta1": 0.9})
    with pytest.raises(ConfigError, match=r"optimizer_params\.momentum: must be < 1\.0"):
        TrainingSettings(optimizer="sgd", optimizer_params={"momentum": 1.0})


def test_the_layer_stack_trainer_carries_a_non_default_optimiser_only():
    s = TrainingSettings(optimizer="sgd", optimizer_params={"momentum": 0.9})
    t = s.layer_stack_trainer(cuda=False)
    assert (t["optimizer"], t["optimizer_params"]) == ("sgd", {"momentum": 0.9})
    assert "optimizer" not in TrainingSettings().layer_stack_trainer(cuda=False)


@pytest.mark.parametrize("surface", ["settings", "method"])
def test_sgd_and_adam_make_their_own_analytic_first_step(surface):
    """One step on loss = sum(c * w) (gradient c): SGD moves w by -lr * c (plus
    momentum-free L2 ``weight_decay * w`` in the gradient), Adam by -lr * c/(|c| + eps)
    (its bias-corrected first step), AdamW also shrinks w by lr * weight_decay * w."""
    import torch
    from nnpflow.training.config import SGD, AdamW
    c = torch.tensor([0.5, -2.0, 3e-3], dtype=torch.float64)
    w0 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    lr, wd = 0.1, 0.2
    cases = {
        "sgd": (TrainingSettings(optimizer="sgd", learning_rate=lr,
                                 optimizer_params={"weight_decay": wd}),
                SGD(lr=lr, weight_decay=wd), w0 - lr * (c + wd * w0)),
        "adam": (TrainingSettings(optimizer="adam", learning_rate=lr),
                 Adam(mu=lr), w0 - lr * c / (c.abs() + 1e-8)),
        "adamw": (TrainingSettings(optimizer="adamw", learning_rate=lr,
                                   optimizer_params={"weight_decay": wd}),
                  AdamW(mu=lr, weight_decay=wd), w0 * (1 - lr * wd) - lr * c / (c.abs() + 1e-8)),
    }
    moved = {}
    for name, (settings, method, expected) in cases.items():
        w = torch.nn.Parameter(w0.clone())
        opt = settings.make_optimizer([w]) if surface == "settings" else \
            method.make_optimizer([w])
        assert type(opt).__name__ == {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[name]
        (c * w).sum().backward()
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
        moved[name] = w.detach()
    assert not torch.allclose(moved["sgd"], moved["adam"])
