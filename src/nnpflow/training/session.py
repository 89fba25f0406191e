"""One ``nnpflow train -c train.yaml -o DIR`` invocation.

Order of work: resolve the configuration (errors before anything is written),
open ``DIR/logs/train-<YYYYmmdd-HHMMSS.mmm>.log`` (one per invocation), log the
keys accepted without effect, plan how each active model starts
(:func:`start_plan`: ``Trainer.resume``, ``pretrain_path``; saved weights are
read and checked against the model's architecture here), check every
active model for a refusal (results present without ``--resume``/``--force``, a
``--resume`` without a checkpoint or with changed settings or data: from the data
set's hash, before it is processed), process or reuse the data set
(:mod:`~nnpflow.training.datahub`), draw or reuse the split
(:mod:`~nnpflow.training.splitter`), repeat the checks that need the data (the
ANN resume guard; a refusal there removes the data and split files this run
made), write ``DIR/config.yaml`` (the resolved configuration plus a
``Provenance`` section: data hash, split sizes and key, versions, command), then
train each active Modelhub entry with its architecture's trainer
(:mod:`~nnpflow.training.modelhub`).  So a refused run changes nothing in DIR but
its own log.  A SIGTERM before training starts stops the work at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..provenance import versions
from ..safe_write import write_text
from .datahub import ProcessedData, datahub_hash, prepare_data
from .interrupt import GracefulInterrupt
from .message_passing import RESUME_MAY_CHANGE, ModelJob
from .modelhub import checker_for, model_dir_name, trainer_for
from .splitter import load_or_make_split, split_key
from .yaml_config import NO_EFFECT, dump_config, load_config, loop_trainer

LOGGER_NAME = "nnpflow.train"


def open_log(out_dir: Path) -> tuple[logging.Logger, logging.Handler, Path]:
    """A timestamped log file under ``out_dir/logs/`` attached to the ``nnpflow`` logger."""
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    path = logs / f"train-{stamp}.log"
    k = 1
    while path.exists():  # names sort in invocation order
        k += 1
        path = logs / f"train-{stamp}-{k}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("nnpflow")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return logging.getLogger(LOGGER_NAME), handler, path


def start_plan(name: str, entry: dict, model_dir: Path, mode: int, resume: bool, force: bool,
               logger: logging.Logger) -> dict:
    """How model ``name`` starts: ``{"entry", "resume", "force"}``, with the saved
    weights it starts from in ``entry["initial_weights"]`` (a copy of the entry).

    Enerzyme's ``Trainer.resume`` onto nnpflow's guarded resume:

    * ``0`` (default): a new training from random weights, or from
      ``pretrain_path`` (fine-tuning: its averaged weights; a folder: its
      ``model_best.pt`` first).  Results already in the folder are refused unless
      ``--force`` (nnpflow never continues training silently);
    * ``1``: a new training (fresh optimiser, schedule, epoch count and average)
      from saved live weights: ``pretrain_path`` (a folder: its ``model_last.pt``
      first), else the folder's own ``model_last.pt``, whose results it replaces;
      without either, from random weights;
    * ``2`` (or ``--resume``): continue the saved training exactly (weights,
      optimiser, schedule, average, epochs, early stopping) from the folder's own
      checkpoint, guarded (changed settings or data refused unless ``--force``);
      without a checkpoint, a new training (``--resume`` without one is refused).
    """
    from .modelhub import ARCHITECTURES, initial_weights

    arch = ARCHITECTURES[entry["architecture"]]
    where = f"Modelhub.{name}"
    entry = dict(entry)
    plan = {"entry": entry, "resume": resume, "force": force}
    checkpoint = model_dir / arch.checkpoint
    if resume or mode == 2:
        if not resume:
            if checkpoint.exists():
                plan["resume"] = True
                logger.info("%s: Trainer.resume 2: continuing the training saved in %s",
                            name, checkpoint)
            else:
                logger.info("%s: Trainer.resume 2: no %s yet; a new training", name, checkpoint)
        if plan["resume"] and entry.get("pretrain_path"):
            logger.info("%s: resuming %s; pretrain_path is not read", name, checkpoint.name)
        if plan["resume"] or not entry.get("pretrain_path"):
            return plan
    source, averaged = entry.get("pretrain_path"), True
    if mode == 1:
        if not arch.fine_tuning:
            raise ConfigError(f"Trainer.resume: 1 (start from saved weights) is implemented for "
                              f"layer-stack architectures, not {entry['architecture']} "
                              f"({where}); use 2 to continue a saved training")
        averaged = False
        if source is None:
            if checkpoint.exists():
                source = checkpoint
                plan["force"] = True  # its results are replaced by the new training
            else:
                logger.info("%s: Trainer.resume 1: no %s to start from; random weights",
                            name, checkpoint)
    if source is not None:
        entry["initial_weights"] = initial_weights(entry, source, where, averaged=averaged)
        logger.info("%s: starts from the %s weights of %s (%s)%s", name,
                    "averaged" if averaged else "saved", entry["initial_weights"]["source"],
                    entry["initial_weights"]["kind"],
                    "; the previous results in its folder are replaced"
                    if plan["force"] and not force else "")
    return plan


def run_train(config_path: str | os.PathLike, out_dir: str | os.PathLike, *, resume: bool = False,
              force: bool = False, show_progress: bool = False,
              interrupt: GracefulInterrupt | None = None,
              on_step: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Run a train.yaml; returns ``{model folder name: test metrics}``.

    ``resume`` continues every active model from its ``model_last.pt``; ``force``
    starts over where results exist (with ``resume``: resumes despite changed
    settings).  ``interrupt`` (a :class:`GracefulInterrupt`) stops training
    cleanly on SIGTERM; ``on_step(epoch, step)`` is called after each optimiser step.
    """
    config = load_config(config_path)
    if config["Trainer"]["cuda"] and not torch.cuda.is_available():
        raise ConfigError(f"{config_path}: Trainer.cuda is true but torch {torch.__version__} "
                          "reports no CUDA device; set cuda: false to train on the CPU")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logger, handler, log_path = open_log(out)
    command = f"nnpflow train -c {config_path} -o {out_dir}"
    results: dict[str, dict] = {}
    try:
        logger.info("%s%s%s (log %s)", command, " --resume" if resume else "",
                    " --force" if force else "", log_path.name)
        logger.info("versions: %s", ", ".join(f"{k} {v}" for k, v in versions().items()))
        for note in config.get(NO_EFFECT, []):
            logger.info("accepted without effect: %s", note)
        active = [(n, e) for n, e in config["Modelhub"].items() if e["active"]]
        for name, entry in config["Modelhub"].items():
            if not entry["active"]:
                logger.info("%s: inactive (active: false); skipped", name)
        if not active:
            logger.warning("no active model in Modelhub; nothing to train")
        splitter = config["Trainer"]["Splitter"]
        trainer = loop_trainer(config["Trainer"])
        # how each model starts (Trainer.resume, pretrain_path); saved weights are read
        # and checked here, before any data is processed
        plans = {name: start_plan(name, entry, out / model_dir_name(name, entry),
                                  config["Trainer"]["resume"], resume, force, logger)
                 for name, entry in active}

        def jobs(data, split, key) -> list[ModelJob]:
            return [ModelJob(name=name, entry=plans[name]["entry"], trainer=trainer,
                             metrics=entry.get("Metric") or config["Metrics"] or {}, data=data,
                             split=split, split_key=key,
                             out_dir=out / model_dir_name(name, entry),
                             resume=plans[name]["resume"], force=plans[name]["force"],
                             show_progress=show_progress,
                             logger=logger, interrupt=interrupt, on_step=on_step,
                             command=command, resume_may_change=RESUME_MAY_CHANGE)
                    for name, entry in active]

        before_training = (interrupt.immediate("checking and processing the data set")
                           if interrupt is not None else contextlib.nullcontext())
        with before_training:
            # every refusal before anything is written (from the data's hash alone) ...
            digest = datahub_hash(config["Datahub"])
            key = split_key(digest, splitter)
            planned = ProcessedData(out / f"processed_dataset_{digest[:16]}", digest, 0, [], [],
                                    reused=False)
            for job in jobs(planned, {}, key):
                checker_for(job.entry)(job, False)
            data_existed = planned.directory.exists()
            split_path = planned.directory / f"split_{key[:16]}.json"
            split_existed = split_path.exists()
            data = prepare_data(config["Datahub"], out, logger, show_progress)
            split, key, _ = load_or_make_split(data.directory, data.hash, data.n_structures,
                                               splitter, logger)
            # ... and those that need the data (the ANN resume guard): a refusal
            # there takes back the data and split files this run made
            try:
                for job in jobs(data, split, key):
                    checker_for(job.entry)(job, True)
            except BaseException:
                if not data_existed:
                    shutil.rmtree(data.directory, ignore_errors=True)
                elif not split_existed:
                    split_path.unlink(missing_ok=True)
                raise
        provenance = {"data_hash": data.hash, "processed_dataset": data.directory.name,
                      "n_structures": data.n_structures, "targets": data.targets,
                      "split_key": key, "split_sizes": {p: len(v) for p, v in split.items()},
                      "versions": versions(), "command": command + (" --resume" if resume else "")}
        write_text(out / "config.yaml", dump_config({**config, "Provenance": provenance}))
        for job in jobs(data, split, key):
            results[job.out_dir.name] = trainer_for(job.entry)(job)
        logger.info("done")
        return results
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        logging.getLogger("nnpflow").removeHandler(handler)
        handler.close()
