"""Stage ``import_aenet``: a ``models:`` entry with ``architecture: aenet``.

Inputs: ``files``, the model's aenet potential files (one per species, binary
``*.nn`` or ASCII).  Outputs: ``model`` (an nnpflow model file, from
:func:`nnpflow.aenet.import_aenet`) and ``history`` (a history CSV without
rows: aenet's training happened elsewhere), which the evaluate stage takes like
a trained member's files.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..errors import ConfigError

log = logging.getLogger(__name__)


def run(files: Sequence[str], model: str, history: str, model_name: str) -> None:
    """Import ``files`` into ``model``; write an empty ``history``."""
    from ..aenet import import_aenet
    from ..safe_write import write_text
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise ConfigError(f"models.{model_name}.files: no aenet potential files")
    potential = import_aenet(files, output=model)
    write_text(history, "epoch\n")
    log.info("%s: imported %s from aenet files %s", model_name, potential, ", ".join(files))
