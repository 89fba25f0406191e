"""Atom-type embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ConfigError
from .base import Layer


class RandomAtomEmbedding(Layer):
    """A learned vector per element, randomly initialised (uniform in ±√3).

    Reads ``Za`` (A,), writes ``atom_embedding`` (A, dim_embedding).  Atomic
    numbers above ``max_Za`` are rejected by the batch builder.
    """

    reads = ("Za",)
    writes = ("atom_embedding",)

    def __init__(self, dim_embedding: int, max_Za: int):
        super().__init__()
        if int(dim_embedding) < 1 or int(max_Za) < 1:
            raise ConfigError("dim_embedding and max_Za must be positive integers, "
                              f"got {dim_embedding!r} and {max_Za!r}")
        self.max_Za = int(max_Za)
        self.embedding = nn.Embedding(self.max_Za + 1, int(dim_embedding))
        with torch.no_grad():
            self.embedding.weight.uniform_(-math.sqrt(3.0), math.sqrt(3.0))

    def forward(self, fields):
        fields["atom_embedding"] = self.embedding(fields["Za"])
        return fields
