"""Weighted multi-target losses and whole-set metrics over named fields.

A *term table* maps a metric kind (``rmse``, ``mae``, ``mse``) to a mapping of
field name to weight, as in Enerzyme's train.yaml::

    {"rmse": {"E": 1, "Fa": 52.917721}, "mae": {"Qa": 1}}

The value of a term is computed over *all elements* of the field in the batch
or set: the force RMSE is ``sqrt(mean over atoms and x, y, z of (F - F_ref)^2)``,
not an average of per-axis RMSEs; the energy terms compare total energies per
structure (use a per-atom field such as ``E_per_atom`` for per-atom energies;
:func:`with_per_atom_energy` adds it).  The weighted sum of the terms is the
loss (per batch) or the score (per set, e.g. the validation score for early
stopping).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..errors import ConfigError

METRIC_KINDS = ("rmse", "mae", "mse")


def _rmse(diff: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean(diff * diff))


def _mae(diff: torch.Tensor) -> torch.Tensor:
    return torch.mean(diff.abs())


def _mse(diff: torch.Tensor) -> torch.Tensor:
    return torch.mean(diff * diff)


_FUNCTIONS = {"rmse": _rmse, "mae": _mae, "mse": _mse}


def metric(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``rmse``/``mae``/``mse`` of ``pred - target`` over all elements."""
    return _FUNCTIONS[kind](pred - target.to(pred.dtype))


def parse_terms(table: Mapping | None, where: str,
                allowed_fields=None) -> dict[str, dict[str, float]]:
    """Validate a term table; errors name ``where`` and the offending key."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a mapping of metric kind ({', '.join(METRIC_KINDS)}) "
                          f"to {{field: weight}}, got {table!r}")
    out: dict[str, dict[str, float]] = {}
    for kind, weights in table.items():
        if kind not in _FUNCTIONS:
            raise ConfigError(f"{where}.{kind}: unknown metric; use one of "
                              f"{', '.join(METRIC_KINDS)}")
        if not isinstance(weights, Mapping) or not weights:
            raise ConfigError(f"{where}.{kind}: expected a mapping field -> weight")
        out[kind] = {}
        for field, weight in weights.items():
            if allowed_fields is not None and field not in allowed_fields:
                raise ConfigError(f"{where}.{kind}.{field}: unknown field; use one of "
                                  f"{', '.join(allowed_fields)}")
            try:
                value = float(weight)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{kind}.{field}: weight must be a number, "
                                  f"got {weight!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}.{kind}.{field}: weight must be finite and >= 0, "
                                  f"got {weight!r}")
            out[kind][str(field)] = value
    return out


def parse_metric_table(table: Mapping | None, where: str,
                       allowed_fields=None) -> dict[str, dict[str, float]]:
    """A term table from either of train.yaml's two spellings, as :func:`parse_terms`.

    ``{rmse: {E: 1, Fa: 10}}`` (metric kind first: the tutorial's ``Metrics``) or
    ``{E: {rmse: 1}, Fa: {rmse: 10}}`` (field first: Enerzyme's own ``Metric``);
    the form is told by the keys (metric kinds or field names), whichever section
    name is used.  A table mixing the two forms is refused naming the key."""
    from ..models.fields import TARGET_NAMES

    allowed_fields = TARGET_NAMES if allowed_fields is None else allowed_fields
    if table is None or not isinstance(table, Mapping) or not table:
        return parse_terms(table, where, allowed_fields)
    kinds = [k for k in table if k in _FUNCTIONS]
    if len(kinds) == len(table):
        return parse_terms(table, where, allowed_fields)
    if kinds:
        other = next(k for k in table if k not in _FUNCTIONS)
        raise ConfigError(f"{where}: mixes metric kinds ({', '.join(map(str, kinds))}) and "
                          f"fields ({other}) as keys; write either {{rmse: {{E: 1}}}} or "
                          "{E: {rmse: 1}}")
    flipped: dict[str, dict[str, Any]] = {}
    for field, weights in table.items():
        if field not in allowed_fields:
            raise ConfigError(f"{where}.{field}: unknown field or metric; fields: "
                              f"{', '.join(allowed_fields)}; metrics: {', '.join(METRIC_KINDS)}")
        if not isinstance(weights, Mapping) or not weights:
            raise ConfigError(f"{where}.{field}: expected a mapping metric -> weight "
                              f"(e.g. rmse: 1), got {weights!r}")
        for kind, weight in weights.items():
            if kind not in _FUNCTIONS:
                raise ConfigError(f"{where}.{field}.{kind}: unknown metric; use one of "
                                  f"{', '.join(METRIC_KINDS)}")
            flipped.setdefault(kind, {})[field] = weight
    try:
        return parse_terms(flipped, where, allowed_fields)
    except ConfigError as exc:  # name the key as it was written (field first)
        text = str(exc)
        for kind, weights in flipped.items():
            for field in weights:
                text = text.replace(f"{where}.{kind}.{field}", f"{where}.{field}.{kind}")
        raise ConfigError(text) from None


def term_fields(terms: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Field names a term table uses, in first-seen order."""
    seen: dict[str, None] = {}
    for weights in terms.values():
        for field in weights:
            seen[field] = None
    return list(seen)


def with_per_atom_energy(fields: Mapping[str, torch.Tensor], n_atoms: torch.Tensor) -> dict:
    """A copy of ``fields`` with ``E_per_atom = E / N`` (eV/atom) added when ``E`` is present."""
    out = dict(fields)
    if "E" in out:
        out["E_per_atom"] = out["E"] / n_atoms.to(out["E"].dtype)
    return out


class WeightedLoss:
    """``loss = sum_kind sum_field weight * kind(pred[field], target[field])`` per batch.

    Calling it returns ``(loss, terms)`` where ``terms`` maps ``"<kind>_<field>"``
    (e.g. ``"rmse_Fa"``) to the unweighted value (tensors, not synchronised).
    """

    def __init__(self, terms: Mapping[str, Mapping[str, float]]):
        self.terms = {k: dict(v) for k, v in terms.items()}
        if not any(self.terms.values()):
            raise ConfigError("a loss needs at least one weighted term")
        self.fields = term_fields(self.terms)

    def __call__(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]):
        total = None
        values = {}
        for kind, weights in self.terms.items():
            for field, weight in weights.items():
                value = metric(kind, pred[field], target[field])
                values[f"{kind}_{field}"] = value
                total = value * weight if total is None else total + value * weight
        return total, values


class MetricAccumulator:
    """Exact ``rmse``/``mae``/``mse`` of fields over a whole set, batch by batch.

    ``add(pred, target)`` accumulates squared and absolute error sums and element
    counts on the tensors' device (no host synchronisation); ``compute()``
    returns ``{"<kind>_<field>": float}`` and ``score(terms)`` the weighted sum.
    """

    def __init__(self, fields):
        self.fields = list(fields)
        self._sq: dict[str, torch.Tensor] = {}
        self._abs: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    @torch.no_grad()
    def add(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
        for field in self.fields:
            diff = (pred[field].detach() - target[field].to(pred[field].dtype)).to(torch.float64)
            sq, ab = (diff * diff).sum(), diff.abs().sum()
            if field in self._sq:
                self._sq[field] += sq
                self._abs[field] += ab
            else:
                self._sq[field], self._abs[field] = sq, ab
            self._count[field] = self._count.get(field, 0) + diff.numel()

    def compute(self) -> dict[str, float]:
        out = {}
        for field in self.fields:
            n = self._count.get(field, 0)
            if n == 0:
                continue
            mse = float(self._sq[field]) / n
            out[f"mse_{field}"] = mse
            out[f"rmse_{field}"] = math.sqrt(mse)
            out[f"mae_{field}"] = float(self._abs[field]) / n
        return out

    @staticmethod
    def score(values: Mapping[str, float], terms: Mapping[str, Mapping[str, float]]) -> float:
        """Weighted sum of ``values`` (from :meth:`compute`) with a term table."""
        return float(sum(w * values[f"{kind}_{field}"]
                         for kind, weights in terms.items() for field, w in weights.items()))
