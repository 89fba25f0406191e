"""Training: one loop for every model family, its parts, and the surfaces that drive it.

The aenet-style API is importable from here, as from aenet-python's
``aenet.torch_training`` (the aenet PyTorch dataset specification, with
``aenet.torch_training`` -> ``nnpflow.training``): :class:`TorchANNPotential`,
:class:`TorchTrainingConfig`, :class:`Adam`, :class:`SGD`,
:class:`TrainingMethod`, :class:`Structure` (``nnpflow.Structure``),
:class:`StructureDataset` and :func:`train_test_split` (from
:mod:`nnpflow.datasets`), and :class:`PredictionResult`.  They are loaded on
first use (module ``__getattr__``), so importing :mod:`nnpflow.training.settings`
or another light submodule does not import torch.

The one loop is :mod:`~nnpflow.training.loop` (``TrainingLoop`` and the ``Task``
protocol a family's batches plug into: :class:`~nnpflow.training.ann_trainer.ANNTrainer`
for the ANN, :class:`~nnpflow.training.message_passing.LayerStackTask` for layer
stacks); :mod:`~nnpflow.training.settings` is its one settings object and
:mod:`~nnpflow.training.optimizers` builds its optimiser.  Its parts (import the
submodule you need; nothing heavy is imported here):

- :mod:`~nnpflow.training.losses` -- weighted ``rmse``/``mae``/``mse`` losses over
  named fields and exact whole-set metric accumulation (validation score).
- :mod:`~nnpflow.training.ema` -- exponential moving average of weights.
- :mod:`~nnpflow.training.schedules` -- learning-rate schedules (constant, linear
  and cosine with warmup, reduce-on-plateau).
- :mod:`~nnpflow.training.early_stopping` -- patience on a validation score.
- :mod:`~nnpflow.training.checkpoint` -- full training state in weights-only-safe
  files, RNG capture/restore, and the resume guard.
- :mod:`~nnpflow.training.interrupt` -- SIGTERM -> finish the step, checkpoint, exit.

The Enerzyme-style trainer (Enerzyme's train.yaml, ``nnpflow train -c train.yaml -o DIR``):
:mod:`~nnpflow.training.yaml_config` (train.yaml), :mod:`~nnpflow.training.datahub`
(processed data), :mod:`~nnpflow.training.splitter` (splits),
:mod:`~nnpflow.training.modelhub` (models and architectures),
:mod:`~nnpflow.training.message_passing` (the layer-stack task of the loop),
:mod:`~nnpflow.training.predict` (``nnpflow predict``) and
:mod:`~nnpflow.training.session` (one whole ``train`` invocation).
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

#: public name -> module it lives in (imported on first access)
_EXPORTS = {
    "Adam": ".config",
    "SGD": ".config",
    "TrainingMethod": ".config",
    "TorchTrainingConfig": ".config",
    "TorchANNPotential": ".potential",
    "PredictionResult": "..models.prediction_result",
    "Structure": "..structure",
    "StructureDataset": "..datasets",
    "train_test_split": "..datasets",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
