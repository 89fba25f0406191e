"""The ``nnpflow`` command line: ``nnpflow <command> ...``.

Each command lives in its own module of this package and defines
``register(subparsers)``, which adds its parser and sets ``func`` (called with the
parsed arguments; its return value is the exit status).  Errors of type
:class:`nnpflow.errors.NNPFlowError` and operating-system errors (a missing file, a full
disk) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import NNPFlowError, os_error_text

#: command modules, in the order ``nnpflow --help`` lists them
COMMAND_MODULES = ("ingest", "db", "train", "predict", "evaluate", "example", "interop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnpflow",
        description="Train and evaluate machine-learned interatomic potentials.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"nnpflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        status = args.func(args)
    except NNPFlowError as exc:
        print(f"nnpflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing file, a full disk: one line, no traceback
        print(f"nnpflow {args.command}: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnpflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
