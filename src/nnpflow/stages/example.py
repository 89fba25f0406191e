"""Stage ``example``: generate the bundled EMT example data set.

Writes exactly the files ``nnpflow.example.example_files(config)`` lists, relative
to ``out_dir``, each atomically.  ``config`` is the workflow's ``example`` block
(keys and defaults in :mod:`nnpflow.example`).
"""

from __future__ import annotations

import logging

from ..example import example_files, generate_example

log = logging.getLogger(__name__)


def run(out_dir: str, config: dict) -> None:
    """Generate the example data under ``out_dir``."""
    expected = example_files(config)
    written = generate_example(out_dir, config)
    log.info("example: %d files under %s", len(written), out_dir)
    if len(written) != len(expected):  # pragma: no cover - guards the DAG contract
        raise RuntimeError(f"example wrote {len(written)} files, expected {len(expected)}")
