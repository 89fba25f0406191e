"""The SchNet core: continuous-filter convolutions (Schütt et al., J. Chem. Phys. 148,
241722 (2018)), written for pair lists that hold each unordered pair once.

Per interaction ``t`` (of ``num_interactions``), with atom features ``x`` (A, H):

    W_ij = (ssp(rbf_ij · A1_t + a1_t) · A2_t + a2_t) · C(d_ij)     filter, (P, F)
    h    = x · B_t                                               (A, F)
    m_i  = Σ_j h_j ⊙ W_ij                                         (both directions of each pair)
    x   <- x + ssp(m · C_t + c_t) · D_t + d_t

``C(d)`` is the cutoff function at ``cutoff_sr``: the values ``cutoff_values_sr``
that ``RangeSeparation`` writes when it is given a ``cutoff_fn``, else the cosine
cutoff (SchNet's).  ``ssp`` is the activation ``activation_fn`` with
``activation_params`` (:mod:`nnpflow.models.layers.activation`; default the
shifted softplus ``softplus(x) - log 2``), used at every nonlinearity of the core
(filter network, interaction, output network), each with its own α and β when
they are parameters.  An output network ``H -> H/2 -> 2`` gives the atomic
energy ``Ea`` (eV) and the atomic charge ``Qa`` (e).  The filter networks of all
interactions share one batched matrix product per layer, and each filter is
computed once per unordered pair, which halves the dominant cost of a full pair
list.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ConfigError
from .activation import activation_module
from .base import Layer, cosine_cutoff


def _xavier(*shape: int, fan_in: int, fan_out: int) -> torch.Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(*shape).uniform_(-bound, bound)


class SchNetCore(Layer):
    """SchNet message passing; reads the embedding and radial basis, writes ``Ea``, ``Qa``.

    Parameters
    ----------
    num_interactions : number of interaction blocks.
    hidden_channels : width ``H`` of the atom features inside the interactions.
    dim_embedding : width of ``atom_embedding`` (projected to ``H`` when different).
    num_rbf : number of radial basis functions in ``rbf``.
    cutoff_sr : cosine-cutoff radius in Å.
    num_filters : width ``F`` of the filters (default ``hidden_channels``).
    activation_fn : ``shifted_softplus`` (default) or ``swish``.
    activation_params : ``initial_alpha``, ``initial_beta``, ``learnable``,
        ``dim_feature`` (Enerzyme's; see :mod:`nnpflow.models.layers.activation`).
    """

    reads = ("atom_embedding", "rbf", "Dij_sr", "idx_i_sr", "idx_j_sr")
    optional_reads = ("cutoff_values_sr",)
    writes = ("Ea", "Qa")

    def __init__(self, dim_embedding: int, num_rbf: int, cutoff_sr: float,
                 num_interactions: int = 4, hidden_channels: int = 128,
                 num_filters: int | None = None, activation_fn: str = "shifted_softplus",
                 activation_params: dict | None = None):
        super().__init__()
        T, H = int(num_interactions), int(hidden_channels)
        Fw = int(num_filters or hidden_channels)
        K, D = int(num_rbf), int(dim_embedding)
        if min(T, H, Fw, K, D) < 1 or H < 2:
            raise ConfigError("SchNet Core needs positive num_interactions, hidden_channels "
                              "(>= 2), num_filters, num_rbf and dim_embedding")
        if not cutoff_sr or float(cutoff_sr) <= 0:
            raise ConfigError(f"cutoff_sr must be a positive distance in Å, got {cutoff_sr!r}")
        self.cutoff = float(cutoff_sr)
        self.T, self.H, self.F = T, H, Fw
        self.embed_proj = (nn.Parameter(_xavier(D, H, fan_in=D, fan_out=H))
                           if D != H else None)
        self.filter_w1 = nn.Parameter(_xavier(T, K, Fw, fan_in=K, fan_out=Fw))
        self.filter_b1 = nn.Parameter(torch.zeros(T, 1, Fw))
        self.filter_w2 = nn.Parameter(_xavier(T, Fw, Fw, fan_in=Fw, fan_out=Fw))
        self.filter_b2 = nn.Parameter(torch.zeros(T, 1, Fw))
        # per-interaction atom-wise weights as separate parameters: slicing one stacked
        # tensor would cost a full-size zero fill per slice in every backward pass
        self.conv_in = nn.ParameterList(nn.Parameter(_xavier(H, Fw, fan_in=H, fan_out=Fw))
                                        for _ in range(T))
        self.conv_out = nn.ParameterList(nn.Parameter(_xavier(Fw, H, fan_in=Fw, fan_out=H))
                                         for _ in range(T))
        self.conv_out_b = nn.ParameterList(nn.Parameter(torch.zeros(H)) for _ in range(T))
        self.update_w = nn.ParameterList(nn.Parameter(_xavier(H, H, fan_in=H, fan_out=H))
                                         for _ in range(T))
        self.update_b = nn.ParameterList(nn.Parameter(torch.zeros(H)) for _ in range(T))
        self.out1 = nn.Parameter(_xavier(H, H // 2, fan_in=H, fan_out=H // 2))
        self.out1_b = nn.Parameter(torch.zeros(H // 2))
        self.out2 = nn.Parameter(_xavier(H // 2, 2, fan_in=H // 2, fan_out=2))
        self.out2_b = nn.Parameter(torch.zeros(2))

        def act():
            return activation_module(activation_fn, activation_params)
        self.filter_act = nn.ModuleList(act() for _ in range(T))
        self.conv_act = nn.ModuleList(act() for _ in range(T))
        self.out_act = act()
        #: plain activations are applied to all interactions' filters at once
        self.plain_filters = all(m.plain for m in self.filter_act)

    def requirements(self):
        return {"cutoff_sr": self.cutoff}

    def forward(self, fields):
        x = fields["atom_embedding"]
        if self.embed_proj is not None:
            x = x @ self.embed_proj
        idx_i, idx_j = fields["idx_i_sr"], fields["idx_j_sr"]
        n_atoms, n_pairs, Fw = x.shape[0], idx_i.shape[0], self.F
        # message sources and destinations for both directions of every pair
        src = torch.cat((idx_j, idx_i))
        dst = torch.cat((idx_i, idx_j))
        cut = fields.get("cutoff_values_sr")
        if cut is None:
            cut = cosine_cutoff(fields["Dij_sr"], self.cutoff)
        cut = cut.unsqueeze(-1)
        # filters of all interactions at once, laid out (T, P, F)
        rbf = fields["rbf"].expand(self.T, -1, -1)
        pre = torch.baddbmm(self.filter_b1, rbf, self.filter_w1)
        if self.plain_filters:
            hidden = self.filter_act[0](pre)
        else:
            hidden = torch.stack([self.filter_act[t](pre[t]) for t in range(self.T)])
        filters = (torch.baddbmm(self.filter_b2, hidden, self.filter_w2) * cut).unbind(0)
        for t in range(self.T):
            h = (x @ self.conv_in[t]).index_select(0, src).view(2, n_pairs, Fw)
            agg = x.new_zeros((n_atoms, Fw)).index_add_(0, dst, (h * filters[t]).view(-1, Fw))
            v = self.conv_act[t](torch.addmm(self.conv_out_b[t], agg, self.conv_out[t]))
            x = x + torch.addmm(self.update_b[t], v, self.update_w[t])
        out = self.out_act(torch.addmm(self.out1_b, x, self.out1))
        out = torch.addmm(self.out2_b, out, self.out2)
        fields["Ea"] = out[:, 0]
        fields["Qa"] = out[:, 1]
        return fields
