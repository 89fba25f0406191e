"""nnpflow: from raw atomistic reference data to trained, evaluated potentials.

The package map (one job per module) is in ``docs/architecture.md``.  The names
most users need are importable from here lazily, so ``import nnpflow`` stays
cheap.
"""

from __future__ import annotations

from .errors import (ConfigError, DescriptorMismatchError, InputError, NNPFlowError,
                     ResumeMismatchError, SchemaError)
from .structure import Structure

__version__ = "0.1.0"

__all__ = ["Structure", "InputError", "ConfigError", "DescriptorMismatchError",
           "SchemaError", "ResumeMismatchError", "NNPFlowError", "__version__"]
