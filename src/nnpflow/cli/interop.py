"""``nnpflow export aenet`` and ``nnpflow import aenet``: potentials to and from aenet.

::

    nnpflow export aenet MODEL [MODEL ...] -o DIR [--structures FILE ...] [--no-ascii]
    nnpflow import aenet FILE [FILE ...] -o MODEL.pt

``export aenet`` writes, per species S of an nnpflow ANN potential (``model.pt``),
``DIR/S.nn`` (aenet's binary potential file, for ``predict.x``, aenet's library
and its LAMMPS and ASE interfaces) and ``DIR/S.nn.ascii`` (the ASCII variant),
plus ``DIR/predict.in`` (with the ``--structures`` in its FILES list: XSF
files by absolute path; other formats are converted to XSF into
``DIR/structures/``).  Run ``predict.x predict.in`` inside DIR.  Several MODEL
files are a committee: member m goes to ``DIR/member_<m>/``.  Anything aenet
cannot represent (an activation other than linear, tanh, sigmoid, mtanh and
twist; min_cutoff 0) is refused, naming it.

``import aenet`` reads one aenet potential file per species (binary or ASCII)
and writes an nnpflow model file for ``NNPCalculator``, ``nnpflow evaluate``
and the workflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _export(args) -> int:
    from ..aenet import export_aenet
    result = export_aenet(list(args.models), args.output, structures=args.structures,
                          ascii=not args.no_ascii)
    for entry in result["members"]:
        files = ", ".join(Path(p).name for p in entry["potentials"].values())
        print(f"{entry['directory']}: {files}"
              f"{' (+ ASCII)' if entry['ascii'] else ''}, predict.in")
    return 0


def _import(args) -> int:
    from ..aenet import import_aenet
    potential = import_aenet(args.files, output=args.output)
    print(f"{args.output}: {potential!r}")
    return 0


def register(subparsers) -> None:
    doc = __doc__.replace("\n::\n", "").replace("``", "")
    fmt = argparse.RawDescriptionHelpFormatter
    exp = subparsers.add_parser("export", help="export a trained potential to another code "
                                "(aenet)", description=doc, formatter_class=fmt)
    exp_sub = exp.add_subparsers(dest="format", metavar="FORMAT", required=True)
    p = exp_sub.add_parser("aenet", help="aenet potential files (*.nn, *.nn.ascii) and "
                           "predict.in", description=doc, formatter_class=fmt)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="nnpflow ANN model file(s); several are a committee")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--structures", nargs="+", metavar="FILE",
                   help="structures for predict.in's FILES list")
    p.add_argument("--no-ascii", action="store_true", help="skip the *.nn.ascii files")
    p.set_defaults(func=_export)

    imp = subparsers.add_parser("import", help="import a potential of another code (aenet)",
                                description=doc, formatter_class=fmt)
    imp_sub = imp.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = imp_sub.add_parser("aenet", help="aenet potential files, one per species",
                           description=doc, formatter_class=fmt)
    q.add_argument("files", nargs="+", metavar="FILE",
                   help="aenet potential files (binary *.nn or ASCII), one per species")
    q.add_argument("-o", "--output", required=True, metavar="MODEL.pt",
                   help="nnpflow model file to write")
    q.set_defaults(func=_import)
