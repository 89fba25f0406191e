"""``nnpflow train -c train.yaml -o DIR``: Enerzyme-compatible training (Enerzyme's train.yaml)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..runtime import configure_threads, keep_freed_memory


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the models of an Enerzyme-style train.yaml",
        description="Train the active Modelhub models of a train.yaml (Datahub, Modelhub, "
                    "Trainer, Metrics sections).  Outputs in DIR: config.yaml (resolved "
                    "configuration), logs/, processed_dataset_<hash>/ and one folder per model "
                    "with model_best.pt, model_last.pt, history.csv and test_metrics.json.  "
                    "SIGTERM stops after the current step with a checkpoint (exit status 143; "
                    "before training starts, e.g. while the data set is processed, at once); "
                    "continue with --resume.  A refused run (results present without --resume "
                    "or --force, a --resume with changed settings) changes nothing in DIR but "
                    "adds its log.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="the train.yaml")
    parser.add_argument("-o", "--output", default=".", help="output directory DIR")
    parser.add_argument("--resume", action="store_true",
                        help="continue each model from its model_last.pt (refused when the "
                             "configuration or data changed, unless --force; a larger "
                             "max_epochs trains the extra epochs)")
    parser.add_argument("--force", action="store_true",
                        help="start over where results exist (with --resume: resume despite "
                             "changed settings)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.interrupt import GracefulInterrupt, TrainingInterrupted
    from ..training.session import run_train

    configure_threads(args.threads)
    keep_freed_memory()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    console.setLevel(logging.INFO)
    console.addFilter(lambda record: record.levelno < logging.ERROR)  # errors: printed once below
    root = logging.getLogger("nnpflow")
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        with GracefulInterrupt() as stop:
            run_train(args.config, args.output, resume=args.resume, force=args.force,
                      show_progress=sys.stderr.isatty(), interrupt=stop)
    except TrainingInterrupted as exc:
        print(f"nnpflow train: {exc}", file=sys.stderr)
        return exc.exit_status
    finally:
        root.removeHandler(console)
    return 0
