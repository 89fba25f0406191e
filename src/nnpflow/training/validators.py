"""The validators of training settings: the one implementation every surface uses.

:func:`number`, :func:`integer`, :func:`boolean`, :func:`reject_unknown` and
:func:`suggest` check one value of a configuration and raise
:class:`~nnpflow.errors.ConfigError` naming its key; a surface chooses the wording
of its messages (``python`` for keyword arguments, ``yaml`` for YAML keys, which
also reads YAML's ``"1e-3"`` strings as numbers).  NaN and infinity are refused
naming the key.  :mod:`nnpflow.training.settings` re-exports them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

from ..errors import ConfigError

__all__ = ["number", "integer", "boolean", "reject_unknown", "suggest"]


def suggest(key: Any, choices) -> str:
    """`` (did you mean 'x'?)`` for a close match of ``key`` among ``choices``, else ``''``."""
    close = difflib.get_close_matches(str(key), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def number(value: Any, where: str, *, minimum: float | None = None,
           maximum: float | None = None, exclusive_min: bool = False,
           exclusive_max: bool = False, wording: str = "python") -> float:
    """``value`` as a finite float within the bounds; else ``ConfigError`` naming ``where``.

    ``wording="yaml"`` also accepts numeric strings (YAML 1.1 reads ``1e-3`` as a
    string) and words its messages for YAML files."""
    yaml = wording == "yaml"
    if isinstance(value, str) and yaml:
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    v = float(value)
    shown = str(v) if yaml else repr(value)
    if not math.isfinite(v):
        raise ConfigError(f"{where}: {v} is not a finite number" if yaml
                          else f"{where}: must be finite, got {value!r}")
    if minimum is not None and (v < minimum or (exclusive_min and v == minimum)):
        raise ConfigError(f"{where}: must be {'>' if exclusive_min else '>='} {minimum}, "
                          f"got {shown}")
    if maximum is not None and (v > maximum or (exclusive_max and v == maximum)):
        raise ConfigError(f"{where}: must be {'<' if exclusive_max else '<='} {maximum}, "
                          f"got {shown}")
    return v


def integer(value: Any, where: str, minimum: int | None = None,
            wording: str = "python") -> int:
    """``value`` as an int (not a bool) of at least ``minimum``; else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        relation = "at least" if wording == "yaml" else ">="
        raise ConfigError(f"{where}: must be {relation} {minimum}, got {value}")
    return int(value)


def boolean(value: Any, where: str, wording: str = "python") -> bool:
    """``value`` if it is a bool; else ``ConfigError``."""
    if not isinstance(value, bool):
        words = "true or false" if wording == "yaml" else "True or False"
        raise ConfigError(f"{where}: expected {words}, got {value!r}")
    return value


def reject_unknown(block: Mapping, allowed, where: str) -> None:
    """``ConfigError`` listing every key of ``block`` not in ``allowed`` (sorted)."""
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(allowed)}")
