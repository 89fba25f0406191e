"""Per-element affine maps of atomic quantities."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ...errors import ConfigError
from ...structure import atomic_number, element_symbol
from .base import Layer


def _affine_entry(field: str, entry, default: float, where: str) -> dict:
    """Normalise ``{values: v | {element: v}, learnable: bool}`` (or a bare value)."""
    if not isinstance(entry, Mapping):
        entry = {"values": entry}
    unknown = set(entry) - {"values", "learnable"}
    if unknown:
        raise ConfigError(f"{where}.{field}: unknown key(s) {sorted(unknown)}; "
                          "expected 'values' and 'learnable'")
    values = entry.get("values", default)
    if values is None:
        values = default
    if isinstance(values, Mapping):
        resolved = {}
        for key, value in values.items():
            try:
                if isinstance(key, bool):
                    raise ValueError(key)
                symbol = element_symbol(int(key) if isinstance(key, str) and key.isdigit()
                                        else key)
            except Exception:
                raise ConfigError(f"{where}.{field}.values: unknown element {key!r} (give an "
                                  "element symbol or an atomic number)") from None
            if symbol in resolved:
                raise ConfigError(f"{where}.{field}.values: element {symbol} given twice")
            try:
                resolved[symbol] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{field}.values.{key}: expected a number, "
                                  f"got {value!r}") from None
        values = dict(sorted(resolved.items(), key=lambda kv: atomic_number(kv[0])))
    else:
        try:
            values = float(values)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{field}.values must be a number or a mapping "
                              f"element -> number, got {values!r}") from None
    learnable = entry.get("learnable", True)
    if not isinstance(learnable, bool):
        raise ConfigError(f"{where}.{field}.learnable must be true or false, got {learnable!r}")
    return {"values": values, "learnable": learnable}


class AtomicAffine(Layer):
    """``y_a = (x_a + shift[Z_a]) * scale[Z_a]`` for atomic fields (``Ea``, ``Qa``, ...).

    ``shifts`` and ``scales`` map a field name to ``{values, learnable}`` where
    ``values`` is one number for every element or a mapping element -> number
    (element symbols or atomic numbers; elements not listed get 0 for shifts, 1
    for scales); ``learnable`` (default true) trains the table with the weights.
    Default: ``Ea`` and ``Qa`` with learnable shift 0 and scale 1.  A field may
    have a shift, a scale or both.

    ``order`` (an nnpflow addition) says which comes first: ``shift_then_scale``
    (the default, Enerzyme's ``(x + shift) * scale``: shifts are in the units of the
    core's raw output) or ``scale_then_shift`` (``x * scale + shift``: shifts in
    the field's units, eV for ``Ea`` and e for ``Qa``).  nnpflow models saved
    before ``order`` existed used ``scale_then_shift`` and load with it.
    """

    ORDERS = ("shift_then_scale", "scale_then_shift")

    def __init__(self, max_Za: int, shifts: Mapping | None = None,
                 scales: Mapping | None = None, order: str = "shift_then_scale"):
        super().__init__()
        if order not in self.ORDERS:
            raise ConfigError(f"AtomicAffine.order: unknown order {order!r}; choose one of "
                              f"{', '.join(self.ORDERS)}")
        self.order = order
        default = {"Ea": {"values": None, "learnable": True},
                   "Qa": {"values": None, "learnable": True}}
        shifts = default if shifts is None else shifts
        scales = default if scales is None else scales
        for label, table in (("shifts", shifts), ("scales", scales)):
            if not isinstance(table, Mapping):
                raise ConfigError(f"AtomicAffine.{label} must be a mapping field -> "
                                  f"{{values, learnable}}, got {table!r}")
        self.max_Za = int(max_Za)
        self.shift_spec = {f: _affine_entry(f, e, 0.0, "AtomicAffine.shifts")
                           for f, e in shifts.items()}
        self.scale_spec = {f: _affine_entry(f, e, 1.0, "AtomicAffine.scales")
                           for f, e in scales.items()}
        self.shifts = nn.ParameterDict({f: self._table(s, 0.0) for f, s in self.shift_spec.items()})
        self.scales = nn.ParameterDict({f: self._table(s, 1.0) for f, s in self.scale_spec.items()})
        self.reads = tuple(sorted(set(self.shift_spec) | set(self.scale_spec))) + ("Za",)
        self.writes = tuple(sorted(set(self.shift_spec) | set(self.scale_spec)))

    def _table(self, spec: dict, default: float) -> nn.Parameter:
        values = spec["values"]
        table = torch.full((self.max_Za + 1,), default if isinstance(values, dict) else values,
                           dtype=torch.get_default_dtype())
        if isinstance(values, dict):
            for symbol, value in values.items():
                z = atomic_number(symbol)
                if z > self.max_Za:
                    raise ConfigError(f"AtomicAffine: element {symbol} (Z={z}) is above "
                                      f"max_Za {self.max_Za}")
                table[z] = value
        return nn.Parameter(table, requires_grad=spec["learnable"])

    def forward(self, fields):
        za = fields["Za"]
        shift_first = self.order == "shift_then_scale"
        for name in self.writes:
            value = fields[name]
            if shift_first and name in self.shifts:
                value = value + self.shifts[name].index_select(0, za)
            if name in self.scales:
                value = value * self.scales[name].index_select(0, za)
            if not shift_first and name in self.shifts:
                value = value + self.shifts[name].index_select(0, za)
            fields[name] = value
        return fields
