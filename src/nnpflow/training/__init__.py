"""Training: shared infrastructure and the trainers.

Shared by every trainer (import the submodule you need; nothing heavy is
imported here):

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
:mod:`~nnpflow.training.message_passing` (the loop for layer-stack models) and
:mod:`~nnpflow.training.session` (one whole ``train`` invocation).
"""
