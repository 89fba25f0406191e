"""The training history file: one row per epoch (``epoch``, ``lr``, losses,
validation metrics), written by every trainer as ``history.csv`` and read by
the evaluation's learning curves."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Mapping, Sequence

__all__ = ["history_csv", "read_history_csv"]


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of history rows (columns in first-seen order; empty cells for None)."""
    columns = list(dict.fromkeys(k for row in history for k in row)) or ["epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def read_history_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a history CSV (numbers parsed; empty cells None)."""
    out = []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for k, v in row.items():
                if v == "":
                    parsed[k] = None
                elif v in ("True", "False"):
                    parsed[k] = v == "True"
                else:
                    try:
                        parsed[k] = int(v)
                    except ValueError:
                        try:
                            parsed[k] = float(v)
                        except ValueError:
                            parsed[k] = v
            out.append(parsed)
    return out

