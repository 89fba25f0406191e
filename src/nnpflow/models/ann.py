"""aenet-style atomic neural networks: one feed-forward network per species.

An atom of species ``s`` with raw descriptor features ``G`` (F values) gets the
atomic output ``eps = net_s((G - mean_s) / std_s)``, a dimensionless number in
the potential's normalised energy units (see
:class:`nnpflow.training.potential.TorchANNPotential` for the conversion to eV).
Each network has the hidden layers of its species' architecture and one linear
output node, as in aenet.

Architecture: ``{species: [(n_nodes, activation), ...]}``, hidden layers from
input to output (the output layer is implicit); activations are those of
:mod:`nnpflow.models.activations`.  Every species of the descriptor needs an
entry.  ``[]`` is allowed (a linear model of the normalised features).

Weights start uniform with standard deviation ``1/sqrt(n_in + 1)`` (biases
too), aenet's initialisation, drawn from a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .activations import ACTIVATIONS, activation

#: minimum feature standard deviation used for normalisation (constant features
#: would otherwise divide by zero)
MIN_FEATURE_STD = 1e-6

Architecture = dict[str, list[tuple[int, str]]]


def parse_architecture(arch: Any, species: Sequence[str], where: str = "arch") -> Architecture:
    """Validate ``arch`` against the descriptor's ``species``; returns
    ``{species: [(n_nodes, activation), ...]}`` in descriptor order.

    Raises :class:`ConfigError` naming the species and layer at fault.
    """
    if not isinstance(arch, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{species: [(n_nodes, activation), ...]}}, "
                          f"got {type(arch).__name__}")
    species = [str(s) for s in species]
    extra = sorted(set(map(str, arch)) - set(species))
    if extra:
        raise ConfigError(f"{where}: species {', '.join(extra)} not in the descriptor's species "
                          f"{species}")
    missing = [s for s in species if s not in arch]
    if missing:
        raise ConfigError(f"{where}: no network for species {', '.join(missing)} (every "
                          f"descriptor species {species} needs one)")
    out: Architecture = {}
    for s in species:
        layers = arch[s]
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
            raise ConfigError(f"{where}[{s!r}]: expected a list of (n_nodes, activation), "
                              f"got {layers!r}")
        parsed = []
        for k, layer in enumerate(layers):
            here = f"{where}[{s!r}][{k}]"
            if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence) \
                    or len(layer) != 2:
                raise ConfigError(f"{here}: expected (n_nodes, activation), got {layer!r}")
            n, act = layer
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"{here}: number of nodes must be a positive integer, "
                                  f"got {n!r}")
            if str(act).lower() not in ACTIVATIONS:
                raise ConfigError(f"{here}: unknown activation {act!r}; choose one of "
                                  f"{', '.join(ACTIVATIONS)}")
            parsed.append((int(n), str(act).lower()))
        out[s] = parsed
    return out


def architecture_json(arch: Architecture) -> dict[str, list[list]]:
    """JSON form ``{species: [[n, activation], ...]}``."""
    return {s: [[int(n), str(a)] for n, a in layers] for s, layers in arch.items()}


class AtomicNetworks(nn.Module):
    """Per-species networks on normalised features.

    Parameters
    ----------
    species : descriptor species, in descriptor order (species index t = position).
    n_features : F, the descriptor's number of features.
    architecture : see :func:`parse_architecture`.

    Buffers ``feature_mean`` and ``feature_std`` (T, F) hold the per-species
    normalisation (set with :meth:`set_feature_statistics`).
    """

    def __init__(self, species: Sequence[str], n_features: int, architecture: Any):
        super().__init__()
        self.species = [str(s) for s in species]
        self.n_features = int(n_features)
        self.architecture = parse_architecture(architecture, self.species)
        nets = []
        for s in self.species:
            layers: list[nn.Module] = []
            n_in = self.n_features
            for n, act in self.architecture[s]:
                layers += [nn.Linear(n_in, n), activation(act)]
                n_in = n
            layers.append(nn.Linear(n_in, 1))
            nets.append(nn.Sequential(*layers))
        self.nets = nn.ModuleList(nets)
        t = len(self.species)
        self.register_buffer("feature_mean", torch.zeros(t, self.n_features, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(t, self.n_features, dtype=torch.float64))
        self.to(torch.float64)

    # -------------------------------------------------------------- set-up
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """aenet's initialisation: uniform, std ``1/sqrt(n_in + 1)``, from ``generator``."""
        for net in self.nets:
            for layer in net:
                if isinstance(layer, nn.Linear):
                    half = math.sqrt(3.0) / math.sqrt(layer.in_features + 1)
                    for p in (layer.weight, layer.bias):
                        u = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                        p.copy_((u * 2.0 - 1.0) * half)

    @torch.no_grad()
    def set_feature_statistics(self, statistics: Mapping[str, Mapping[str, Any]]) -> None:
        """Per-species mean and std ``{species: {"mean" (F,), "std" (F,), "count"}}``
        (e.g. :func:`nnpflow.datasets.feature_statistics` of the training split).
        Species without atoms keep mean 0 and std 1; stds below
        :data:`MIN_FEATURE_STD` are raised to it."""
        for t, s in enumerate(self.species):
            st = statistics.get(s)
            if st is None or not int(st.get("count", 0)):
                self.feature_mean[t].zero_()
                self.feature_std[t].fill_(1.0)
                continue
            mean = torch.as_tensor(st["mean"], dtype=torch.float64).reshape(-1)
            std = torch.as_tensor(st["std"], dtype=torch.float64).reshape(-1)
            if mean.shape[0] != self.n_features or std.shape[0] != self.n_features:
                raise ValueError(f"feature statistics of {s} have {mean.shape[0]} values, "
                                 f"expected {self.n_features}")
            self.feature_mean[t].copy_(mean)
            self.feature_std[t].copy_(torch.clamp(std, min=MIN_FEATURE_STD))

    # ------------------------------------------------------------- forward
    def forward(self, features: torch.Tensor, species_index: torch.Tensor,
                groups: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised atomic outputs (A,) for raw ``features`` (A, F) of atoms
        with descriptor species indices ``species_index`` (A,).  ``groups``
        (optional) are the atoms of each species, ``nonzero(species_index == t)``."""
        x = self.cast(features)
        if len(self.nets) == 1:
            return self.nets[0](self.normalize(x, 0)).squeeze(1)
        groups = self.species_groups(species_index, groups)
        return self.forward_normalized([self.normalize(x, t, idx) for t, idx in enumerate(groups)],
                                       groups, x.shape[0])

    def forward_normalized(self, inputs: Sequence[torch.Tensor], groups: Sequence[torch.Tensor],
                           n_atoms: int) -> torch.Tensor:
        """Atomic outputs (A,) from each species' normalised inputs ``inputs[t]``
        (A_t, F) (see :meth:`normalize`) of the atoms ``groups[t]`` (A_t,)."""
        out = None
        for t, (xt, idx) in enumerate(zip(inputs, groups)):
            if out is None:
                out = xt.new_zeros(int(n_atoms))
            if idx.numel():
                out = out.index_copy(0, idx, self.nets[t](xt).squeeze(1))
        if out is None:
            out = self.feature_mean.new_zeros(int(n_atoms))
        return out

    def cast(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` in the networks' dtype."""
        dtype = self.feature_mean.dtype
        return features if features.dtype == dtype else features.to(dtype)

    def species_groups(self, species_index: torch.Tensor,
                       groups: Sequence[torch.Tensor] | None = None) -> Sequence[torch.Tensor]:
        """Atoms of each species (``groups`` checked when given)."""
        if groups is not None:
            if len(groups) != len(self.nets):
                raise ValueError(f"{len(groups)} species groups for {len(self.nets)} species")
            return groups
        return [torch.nonzero(species_index == t).squeeze(1) for t in range(len(self.nets))]

    def normalize(self, x: torch.Tensor, t: int, idx: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """``(x[idx] - mean_t) / std_t``: the inputs of species ``t``'s network
        for the atoms ``idx`` (all when ``None``) of ``x`` (already :meth:`cast`)."""
        if idx is None:
            return (x - self.feature_mean[t]) / self.feature_std[t]
        # (in place: none of these ops needs its input for the backward pass)
        return x.index_select(0, idx).sub_(self.feature_mean[t]).div_(self.feature_std[t])

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
