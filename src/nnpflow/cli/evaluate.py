"""``nnpflow evaluate``: errors of trained models on a training database.

::

    nnpflow evaluate MODEL [MODEL ...] --database DB [--split SPLIT.json]
        [--parts train validation test] -o DIR [--name NAME] [--worst 20]
        [--max-points 100000] [--no-plots] [--history CSV ...] [--batch-size 64]
        [--threads N]

Several MODEL files are a committee (its mean prediction is evaluated, with the
members' spread).  With ``--split`` (a ``split.json`` of the workflow, made for
the database's structures) the parts ``--parts`` are evaluated; without it all
structures of the database form one part, ``all``.  DIR receives the files of
the workflow's evaluate stage: ``metrics.json``, ``per_species.csv``,
``worst_structures.csv`` and, unless ``--no-plots``, ``parity_energy.png``,
``parity_forces.png`` and ``learning_curve.png`` (from ``--history`` files, or
the ``history.csv`` next to each model file when every model has one).  Plots of
an earlier evaluation in DIR that this one does not write (``--no-plots``, no
histories) are removed, so no stale plot sits next to new metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PARTS = ("train", "validation", "test")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help; the description as written."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="errors, tables and parity plots of trained models on a database",
        description=__doc__.replace("\n::\n", "").replace("``", ""),
        formatter_class=_HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model file(s) (model.pt of the workflow, or any saved nnpflow model); "
                        "several are a committee")
    p.add_argument("--database", required=True, metavar="DB",
                   help="training database (HDF5) with the structures and, for ANN models, "
                        "their persisted features")
    p.add_argument("--split", default=None, metavar="SPLIT",
                   help="split.json whose parts are evaluated (default: every structure, "
                        "as part 'all')")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                   help="parts of --split to evaluate")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", default=None, help="model name in titles and metrics.json "
                                                "(default: the first model's folder name)")
    p.add_argument("--worst", type=int, default=20,
                   help="rows per ranking in worst_structures.csv")
    p.add_argument("--max-points", type=int, default=100_000,
                   help="points per part drawn in a parity plot")
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument("--history", nargs="+", default=None, metavar="CSV",
                   help="training histories for the learning curve, one per model "
                        "(default: history.csv next to each model file)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per prediction batch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, InputError
    from ..runtime import configure_threads

    configure_threads(args.threads)
    for path in [*args.models, args.database, *([args.split] if args.split else []),
                 *(args.history or [])]:
        if not Path(path).is_file():
            raise InputError("no such file", source=path)
    for flag, value in (("--worst", args.worst), ("--max-points", args.max_points),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.history is not None and len(args.history) != len(args.models):
        raise ConfigError(f"--history: {len(args.history)} files for {len(args.models)} models")

    from ..database import DatabaseReader
    from ..evaluation.model_evaluation import (PLOT_FILES, evaluate_models, remove_stale_plots,
                                              write_evaluation)
    from ..splitting import load_split

    with DatabaseReader(args.database, cache_size=0) as reader:
        n = len(reader)
        split = (load_split(args.split, reader, n_structures=n) if args.split else None)
    parts = ({p: split.indices[p] for p in dict.fromkeys(args.parts)} if split is not None
             else {"all": list(range(n))})
    name = args.name or Path(args.models[0]).resolve().parent.name
    evaluation = evaluate_models(args.models, args.database, parts, name=name,
                                 batch_size=args.batch_size, show_progress=sys.stderr.isatty())
    if split is not None:
        evaluation.metrics["split"] = {"path": args.split, "seed": split.seed,
                                       "counts": split.counts, "settings": split.settings}

    out = Path(args.output)
    histories = args.history
    if histories is None:
        found = [Path(m).parent / "history.csv" for m in args.models]
        histories = [str(h) for h in found] if all(h.is_file() for h in found) else None
    plots = not args.no_plots
    files = {"parity_energy": str(out / PLOT_FILES["parity_energy"]) if plots else None,
             "parity_forces": str(out / PLOT_FILES["parity_forces"]) if plots else None,
             "learning_curve": (str(out / PLOT_FILES["learning_curve"])
                                if plots and histories else None)}
    write_evaluation(
        evaluation, metrics=str(out / "metrics.json"), per_species=str(out / "per_species.csv"),
        worst_structures_csv=str(out / "worst_structures.csv"), **files,
        histories=histories, worst=args.worst, max_points=args.max_points)
    for path in remove_stale_plots(out, list(files.values())):
        print(f"removed {path} (a plot of an earlier evaluation)", file=sys.stderr)

    print(f"{'part':<12}{'structures':>11}{'E RMSE eV/atom':>16}{'E MAE eV/atom':>15}"
          f"{'F RMSE eV/Å':>13}{'F MAE eV/Å':>12}")
    for part in parts:
        m = evaluation.metrics[part]
        print(f"{part:<12}{m['n_structures']:>11}{_fmt(m['energy_rmse_per_atom']):>16}"
              f"{_fmt(m['energy_mae_per_atom']):>15}{_fmt(m['force_rmse']):>13}"
              f"{_fmt(m['force_mae']):>12}")
    if plots and not histories:
        print("no learning curve: not every model file has a history.csv next to it "
              "(pass --history)", file=sys.stderr)
    print(f"wrote {out}/")
    return 0
