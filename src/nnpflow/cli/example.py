"""``nnpflow example OUT_DIR``: generate the bundled EMT example data set.

Writes ``OUT_DIR/xsf/example-NNNN.xsf`` files and ``OUT_DIR/archive.tar.bz2``
(see :mod:`nnpflow.example`).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("example", help="generate the bundled EMT example data",
                              description=__doc__.strip())
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write to")
    p.add_argument("--n-structures", type=int, default=None, metavar="N",
                   help="number of structures (default 240)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--archive-fraction", type=float, default=None, metavar="F",
                   help="fraction packed into archive.tar.bz2 (default 0.5)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..example import generate_example

    config = {"n_structures": args.n_structures, "seed": args.seed,
              "archive_fraction": args.archive_fraction}
    paths = generate_example(args.out_dir, config, show_progress=sys.stderr.isatty())
    print(f"wrote {len(paths)} files under {args.out_dir}")
    return 0
