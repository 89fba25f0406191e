"""Geometry layers: pair distances and the short-range pair selection."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .base import Layer
from .cutoff import cutoff_function, cutoff_values


def pair_distance(Ra: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor,
                  offsets: torch.Tensor | None) -> torch.Tensor:
    """Distances |Ra[j] - Ra[i] + offsets| (P,) in Å, differentiable in ``Ra``."""
    vec = Ra.index_select(0, idx_j) - Ra.index_select(0, idx_i)
    if offsets is not None:
        vec = vec + offsets
    return torch.linalg.vector_norm(vec, dim=-1)


class Distance(Layer):
    """Pair distances from positions (prepended to every stack).

    Writes ``Dij`` for the long-range pair list and ``Dij_sr`` for the short-range
    one, for each list the batch holds.
    """

    reads = ("Ra",)
    optional_reads = ("idx_i", "idx_j", "offsets", "idx_i_sr", "idx_j_sr", "offsets_sr")
    writes = ("Dij", "Dij_sr")

    def forward(self, fields):
        Ra = fields["Ra"]
        for suffix in ("", "_sr"):
            if "idx_i" + suffix in fields:
                fields["Dij" + suffix] = pair_distance(
                    Ra, fields["idx_i" + suffix], fields["idx_j" + suffix],
                    fields.get("offsets" + suffix))
        return fields


class RangeSeparation(Layer):
    """Short-range pairs: those closer than ``cutoff_sr`` (Å).

    The batch builder normally supplies the short-range list directly (it knows
    the model's ``cutoff_sr`` from :meth:`requirements`); when a batch holds only
    the long-range list, this layer selects its pairs with ``Dij < cutoff_sr``
    and writes ``idx_i_sr``, ``idx_j_sr``, ``offsets_sr`` and ``Dij_sr``.

    With ``cutoff_fn`` (``cosine``, ``polynomial``, ``bump`` or ``smooth``,
    :mod:`nnpflow.models.layers.cutoff`) it also writes ``cutoff_values_sr`` (P,):
    that function of ``Dij_sr`` at ``cutoff_sr``, which the core then uses in place
    of its own cutoff (SchNet's: cosine).  Default ``null``: no values written.
    """

    reads = ("Ra",)
    optional_reads = ("idx_i", "idx_j", "offsets", "Dij", "idx_i_sr", "Dij_sr")
    writes = ("idx_i_sr", "idx_j_sr", "offsets_sr", "Dij_sr", "cutoff_values_sr")

    def __init__(self, cutoff_sr: float, cutoff_fn: str | None = None):
        super().__init__()
        if not cutoff_sr or cutoff_sr <= 0:
            raise ConfigError(f"cutoff_sr must be a positive distance in Å, got {cutoff_sr!r}")
        self.cutoff_sr = float(cutoff_sr)
        self.cutoff_fn = None if cutoff_fn is None else cutoff_function(cutoff_fn)
        if self.cutoff_fn is None:
            self.writes = ("idx_i_sr", "idx_j_sr", "offsets_sr", "Dij_sr")

    def requirements(self):
        return {"cutoff_sr": self.cutoff_sr}

    def forward(self, fields):
        if "Dij_sr" not in fields:
            self._select(fields)
        if self.cutoff_fn is not None:
            fields["cutoff_values_sr"] = cutoff_values(self.cutoff_fn, fields["Dij_sr"],
                                                       self.cutoff_sr)
        return fields

    def _select(self, fields) -> None:
        if "Dij" not in fields:
            raise ValueError("RangeSeparation needs a pair list: the batch has neither "
                             "idx_i_sr nor idx_i")
        keep = fields["Dij"] < self.cutoff_sr
        fields["idx_i_sr"] = fields["idx_i"][keep]
        fields["idx_j_sr"] = fields["idx_j"][keep]
        if fields.get("offsets") is not None:
            fields["offsets_sr"] = fields["offsets"][keep]
        fields["Dij_sr"] = fields["Dij"][keep]
