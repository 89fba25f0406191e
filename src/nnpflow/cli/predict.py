"""``nnpflow predict -c predict.yaml -m MODEL_DIR [-o OUT]``: evaluate the models of a
``nnpflow train`` run on its test part or on new data (Enerzyme's ``enerzyme predict``;
see :mod:`nnpflow.training.predict` and docs/predict.md)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..runtime import configure_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="evaluate the models of a nnpflow train run (test part or new data)",
        description="Evaluate every active model of the nnpflow train output directory "
                    "MODEL_DIR with its model_best.pt.  Without a Datahub section in "
                    "predict.yaml the run's test part is evaluated; with one, every frame of "
                    "that data (processed with the run's transforms).  Writes metric.csv (one "
                    "row per model) and, per model, <model folder>-prediction.csv and .npz "
                    "(per-frame and per-atom predictions next to the references) into OUT.  "
                    "See docs/predict.md.")
    parser.add_argument("-c", "--config", required=True,
                        help="predict.yaml (Datahub, Metric and Trainer sections, all optional)")
    parser.add_argument("-m", "--model-dir", required=True, metavar="MODEL_DIR",
                        help="output directory of nnpflow train (holds config.yaml)")
    parser.add_argument("-o", "--output", default=None, metavar="OUT",
                        help="output directory (default: MODEL_DIR)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.predict import run_predict

    configure_threads(args.threads)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    console.setLevel(logging.INFO)
    console.addFilter(lambda record: record.levelno < logging.ERROR)  # errors: printed once
    root = logging.getLogger("nnpflow")
    root.addHandler(console)
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        rows = run_predict(args.config, args.model_dir, args.output,
                           show_progress=sys.stderr.isatty())
    finally:
        root.removeHandler(console)
        root.setLevel(previous)
    for row in rows:
        terms = ", ".join(f"{k} {v:.6g}" for k, v in row["terms"].items())
        print(f"{row['model']}: {row['n_frames']} frames, score {row['score']:.6g} ({terms})")
    print(f"wrote {args.output or args.model_dir}/metric.csv")
    return 0
