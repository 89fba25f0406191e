"""Training checkpoints: full state, weights-only-safe, atomic; and the resume guard.

A checkpoint is one file holding everything a resumed run needs to continue
exactly as if it had never stopped::

    {"schema": "nnpflow.checkpoint", "schema_version": 1,
     "model": {...},          # model description + state_dict (trainer's choice)
     "optimizer": optimizer.state_dict(),
     "scheduler": schedule.state_dict(),
     "ema": ema.state_dict() or None,
     "early_stopping": stopper.state_dict(),
     "rng": capture_rng_state(),
     "progress": {"epoch": ..., "step_in_epoch": ..., "finished": ...},
     "history": [ {per-epoch row}, ... ],
     "identity": {"config": {...}, "data": {...}},   # what the resume guard compares
     ...}                     # further entries of the trainer's choice

Only tensors, numbers, strings, lists, dicts and ``None`` are stored, so
:func:`load_checkpoint` uses ``torch.load(weights_only=True)``; a file of another
schema or a newer version raises :class:`~nnpflow.errors.SchemaError`.
:func:`check_resume` compares the stored ``identity`` with the current one and
raises :class:`~nnpflow.errors.ResumeMismatchError` listing every changed
setting (``Trainer.learning_rate: 0.001 -> 0.002``) unless forced.
"""

from __future__ import annotations

import os
import random
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import ResumeMismatchError, SchemaError
from ..models.model_file import read_torch_file, save_torch_file

CHECKPOINT_SCHEMA = "nnpflow.checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1


# ----------------------------------------------------------------- RNG state
def capture_rng_state() -> dict:
    """States of Python's, NumPy's global and torch's (CPU and CUDA) generators,
    as tensors and numbers."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------- save / load
def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (see the module docstring) atomically with the schema tags."""
    save_torch_file(path, {**state, "schema": CHECKPOINT_SCHEMA,
                           "schema_version": CHECKPOINT_SCHEMA_VERSION})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; ``SchemaError`` for foreign or newer files."""
    state = read_torch_file(path, CHECKPOINT_SCHEMA, CHECKPOINT_SCHEMA_VERSION, map_location)
    for key in ("optimizer", "progress", "identity"):
        if key not in state:
            raise SchemaError(f"{os.fspath(path)}: checkpoint lacks {key!r}")
    return state


# ---------------------------------------------------------------- the guard
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Paths that differ between two nested mappings, as ``path: old -> new`` lines."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            here = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{here}: added ({_short(new[key])})")
            elif key not in new:
                out.append(f"{here}: removed (was {_short(old[key])})")
            else:
                out.extend(describe_changes(old[key], new[key], here))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        out = []
        for k, (a, b) in enumerate(zip(old, new)):
            out.extend(describe_changes(a, b, f"{prefix}[{k}]"))
        return out
    if old != new and not (isinstance(old, (int, float)) and isinstance(new, (int, float))
                           and float(old) == float(new)):
        return [f"{prefix or '(value)'}: {_short(old)} -> {_short(new)}"]
    return []


def check_resume(stored: Mapping, current: Mapping, *, force: bool = False,
                 ignore: Iterable[str] = (), source: str = "checkpoint") -> list[str]:
    """Compare a checkpoint's ``identity`` with the current one.

    ``ignore`` lists path prefixes that may change freely (e.g. run-time options).
    Returns the list of changes; raises ``ResumeMismatchError`` naming them all
    unless ``force``.
    """
    ignore = tuple(ignore)
    changes = [c for c in describe_changes(stored, current)
               if not any(c == p or c.startswith(p + ".") or c.startswith(p + ":")
                          or c.startswith(p + "[") for p in ignore)]
    if changes and not force:
        listed = "\n  ".join(changes)
        raise ResumeMismatchError(
            f"cannot resume from {source}: the configuration or data changed since it was "
            f"written:\n  {listed}\nrestore the old settings, or pass --force to resume anyway")
    return changes
