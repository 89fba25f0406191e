"""Plots of an evaluation: parity plots (energies, forces) and learning curves.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, no
``pyplot`` and no global backend switch) and saved as PNG (Agg) atomically.
Every function returns how many points or lines it drew, so callers and tests
can check the figure without looking at it.

Parity plots show each split part in its own colour (train blue, validation
orange, test green) with its RMSE in the legend; a part with more than
``max_points`` values is drawn as a fixed random subset of them (the legend says
so; metrics elsewhere always use every value).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..safe_write import atomic_path

__all__ = ["PART_COLOURS", "parity_plot", "energy_parity_plot", "force_parity_plot",
           "learning_curve_plot"]

#: colours of the split parts (matplotlib's default cycle); other names cycle after them
PART_COLOURS = {"train": "C0", "validation": "C1", "test": "C2", "all": "C0"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _colour(part: str, k: int) -> str:
    return PART_COLOURS.get(part, f"C{(k + 3) % 10}")


def parity_plot(path: str | os.PathLike, series: Mapping[str, tuple[Any, Any]], *,
                title: str, unit: str, max_points: int = 100_000, seed: int = 0,
                marker_size: float = 8.0) -> dict[str, int]:
    """Predicted against reference values, one colour per entry of ``series``
    (``{part: (reference, predicted)}``, 1-D arrays of equal length, in ``unit``),
    with the line y = x.  Parts with more than ``max_points`` values show a random
    subset of ``max_points`` (``numpy.random.default_rng(seed)``).

    Returns ``{part: points drawn}`` (read back from the figure).
    """
    if isinstance(max_points, bool) or int(max_points) < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    drawn: dict[str, Any] = {}
    lo, hi = math.inf, -math.inf
    for k, (part, (ref, pred)) in enumerate(series.items()):
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)
        if ref.shape != pred.shape:
            raise ValueError(f"{part}: {ref.size} reference and {pred.size} predicted values")
        if ref.size == 0:
            drawn[part] = None
            continue
        rmse = math.sqrt(float(np.mean((pred - ref) ** 2)))
        label = f"{part}: RMSE {rmse:.3g} {unit}, n = {ref.size}"
        if ref.size > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(ref.size, int(max_points),
                                                              replace=False))
            ref, pred = ref[keep], pred[keep]
            label += f" ({int(max_points)} shown)"
        lo = min(lo, float(ref.min()), float(pred.min()))
        hi = max(hi, float(ref.max()), float(pred.max()))
        drawn[part] = ax.scatter(ref, pred, s=marker_size, alpha=0.6, linewidths=0,
                                 color=_colour(part, k), label=label, rasterized=True)
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.05
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=0.8, linestyle="--", zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=8, markerscale=2)
    else:
        ax.text(0.5, 0.5, "no labelled values to compare", ha="center", va="center",
                transform=ax.transAxes)
    _readable_ticks(ax)
    ax.set_xlabel(f"reference ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    _save(fig, path)
    return {part: 0 if c is None else int(len(c.get_offsets())) for part, c in drawn.items()}


def _readable_ticks(ax) -> None:
    """At most 5 ticks per axis, written in full (no offset such as "-1.604e3" to add
    in one's head), x labels slanted: absolute energies like -1604.25 eV/atom stay
    readable and never overlap."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")


def _energy_series(result) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(result.reference_energies, dtype=np.float64)
    pred = np.asarray(result.energies, dtype=np.float64)
    n = np.asarray(result.n_atoms, dtype=np.float64)
    has = np.isfinite(ref)
    return ref[has] / n[has], pred[has] / n[has]


def _force_series(result) -> tuple[np.ndarray, np.ndarray]:
    ref, pred = [], []
    if result.forces is not None and result.reference_forces is not None:
        for f_pred, f_ref in zip(result.forces, result.reference_forces):
            if f_pred is not None and f_ref is not None:
                ref.append(np.ravel(f_ref))
                pred.append(np.ravel(f_pred))
    if not ref:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ref), np.concatenate(pred)


def energy_parity_plot(path: str | os.PathLike, results: Mapping[str, Any], *,
                       title: str = "Energy per atom", max_points: int = 100_000
                       ) -> dict[str, int]:
    """Parity plot of the energies per atom (eV/atom) of ``results`` (``{part:
    PredictionResult}``; structures without an energy label are left out).
    Returns the points drawn per part."""
    return parity_plot(path, {p: _energy_series(r) for p, r in results.items()},
                       title=title, unit="eV/atom", max_points=max_points, marker_size=10.0)


def force_parity_plot(path: str | os.PathLike, results: Mapping[str, Any], *,
                      title: str = "Force components", max_points: int = 100_000
                      ) -> dict[str, int]:
    """Parity plot of the force components (eV/Å; three per atom) of ``results``
    (structures without force labels or predicted forces are left out).  Returns
    the points drawn per part."""
    return parity_plot(path, {p: _force_series(r) for p, r in results.items()},
                       title=title, unit="eV/Å", max_points=max_points, marker_size=3.0)


#: learning-curve columns with known units (validation errors of the ANN trainer)
_UNITS = {"val_energy_rmse": "eV/atom", "val_force_rmse": "eV/Å"}


def _column(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    epochs, values = [], []
    for k, row in enumerate(history):
        value = row.get(key)
        if value is None or value == "":
            continue
        value = float(value)
        if math.isfinite(value):
            epochs.append(float(row.get("epoch", k + 1)))
            values.append(value)
    return np.array(epochs), np.array(values)


def _validation_error_columns(histories: Sequence[Sequence[Mapping]]) -> list[str]:
    """Validation error columns (RMSEs) found in the histories, in first-seen order."""
    seen = dict.fromkeys(k for h in histories for row in h for k in row)
    return [k for k in seen if k.startswith("val_") and "rmse" in k]


def learning_curve_plot(path: str | os.PathLike, histories: Sequence[Sequence[Mapping]],
                        labels: Sequence[str] | None = None, *, title: str = "Learning curve"
                        ) -> dict[str, int]:
    """Training histories (one list of per-epoch rows per committee member, as in
    ``history.csv``): the training and validation loss per epoch (left) and the
    validation RMSEs, e.g. energy (eV/atom) and force (eV/Å) RMSE (right), on
    logarithmic axes; a dotted line marks each member's epoch of lowest
    validation loss.  Returns ``{"loss": lines, "validation": lines}`` (the
    curves, not counting the markers)."""
    histories = [list(h) for h in histories]
    labels = list(labels) if labels is not None else (
        [f"member {m}" for m in range(len(histories))] if len(histories) > 1 else [""])
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories")
    fig = _figure(10.0, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    counts = {"loss": 0, "validation": 0}
    columns = _validation_error_columns(histories)
    best_epochs = []
    for m, (history, label) in enumerate(zip(histories, labels)):
        colour = f"C{m % 10}"
        prefix = f"{label} " if label else ""
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            x, y = _column(history, key)
            if len(x):
                ax_loss.plot(x, y, style, color=colour, linewidth=1.2,
                             label=f"{prefix}{key.replace('_', ' ')}")
                counts["loss"] += 1
                if key == "val_loss":
                    best_epochs.append((float(x[int(np.argmin(y))]), colour))
        for c, key in enumerate(columns):
            x, y = _column(history, key)
            if len(x):
                unit = f" ({_UNITS[key]})" if key in _UNITS else ""
                ax_val.plot(x, y, ("-", "--", ":", "-.")[c % 4], color=colour, linewidth=1.2,
                            label=f"{prefix}{key}{unit}")
                counts["validation"] += 1
    for ax, what in ((ax_loss, "loss"), (ax_val, "validation")):
        ax.set_xlabel("epoch")
        ax.grid(True, linewidth=0.3)
        if counts[what]:
            if all(line.get_ydata().min() > 0 for line in ax.get_lines()):
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {what} values in the history", ha="center", va="center",
                    transform=ax.transAxes)
        for k, (epoch, colour) in enumerate(best_epochs):  # the weights that were kept
            ax.axvline(epoch, color=colour, linestyle=":", linewidth=0.9, alpha=0.8,
                       label="lowest validation loss" if k == 0 and what == "loss" else None)
    if best_epochs:
        ax_loss.legend(fontsize=8)
    ax_loss.set_ylabel("loss (normalised)")
    ax_val.set_ylabel("validation RMSE")
    fig.suptitle(title)
    _save(fig, path)
    return counts
