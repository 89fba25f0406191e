"""Architectures of layer-stack models: the class of each architecture's ``Core``.

A layer-stack model's ``architecture`` (``Modelhub.<FF>.architecture``) names the
message-passing core that its ``Core`` layer instantiates.  Entries are
``"module:Class"`` strings, imported when used.  A new message-passing
architecture adds one entry here; architectures that are not layer stacks (the
atomic-network ANN) are registered with the Modelhub instead
(:data:`nnpflow.training.modelhub.ARCHITECTURES`).
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError

CORES: dict[str, str] = {
    "SchNet": "nnpflow.models.layers.schnet:SchNetCore",
}


def core_class(architecture: str):
    """The ``Core`` layer class of ``architecture``; ``ConfigError`` when unknown."""
    try:
        target = CORES[architecture]
    except KeyError:
        raise ConfigError(f"unknown layer-stack architecture {architecture!r}; "
                          f"known: {', '.join(sorted(CORES))}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
