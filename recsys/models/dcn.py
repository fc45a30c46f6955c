"""DCN-v2 (Wang et al., WWW 2021, "DCN V2: Improved Deep & Cross Network and Practical Lessons
for Web-scale Learning to Rank Systems").

Notation: B = batch, F = number of fields (pooled id fields + numeric fields), D = embedding
width, d = F * D (the cross network's width), L = cross layers, K = experts, r = low rank.

The input is the flattened field embeddings ``x_0 = flatten(E)`` ``[B, d]`` (numeric fields
embedded as ``x * v``, list fields pooled, as in DeepFM). A **cross layer** is::

    x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                          W_l [d, d] (full rank)

and its **low-rank mixture** (``low_rank=r``, the paper's DCN-Mix) replaces ``W_l x_l`` by ``K``
experts ``U_l^i g(C_l^i g(V_l^i⊤ x_l))`` (``V, U [d, r]``, ``C [r, r]``, ``g = tanh``) mixed by a
softmax gate over ``G_l^i x_l``::

    E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i⊤ x_l)) + b_l)                 [B, d]
    x_{l+1}  = Σ_i softmax_i(G x_l) E_i(x_l) + x_l

Structures (``structure``):

* ``stacked``: ``logit = w⊤ DNN(Cross(x_0))`` (the deep network on top of the cross network);
* ``parallel``: ``logit = w⊤ [Cross(x_0), DNN(x_0)]`` (both on ``x_0``, outputs concatenated);
* ``cross_only``: ``logit = w⊤ Cross(x_0)``.

>>> from recsys.data import CTRDataModule
>>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
>>> batch = next(iter(dm.train_dataloader()))
>>> model = DCNv2(dm.features, embedding_dim=4, cross_layers=2, hidden_units=[8])
>>> model(batch).logits.shape
torch.Size([8])
>>> mix = DCNv2(dm.features, embedding_dim=4, low_rank=3, n_experts=2, structure="stacked", hidden_units=[8])
>>> mix(batch).logits.shape
torch.Size([8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsys.data.preprocess import FeatureEncoder
from recsys.models.base import ModelOutput, RankingModel
from recsys.models.embedding import FeatureEmbedding
from recsys.models.layers import MLP, init_linears

__all__ = ["CrossNetwork", "CrossNetworkMix", "DCNv2"]

STRUCTURES = ("stacked", "parallel", "cross_only")


class CrossNetwork(nn.Module):
    """``L`` full-rank cross layers ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l``.
    Shapes ``[B, d] -> [B, d]``.

    >>> net = CrossNetwork(3, 2)
    >>> with torch.no_grad():
    ...     for lin in net.layers:
    ...         _ = lin.weight.copy_(torch.eye(3)); _ = lin.bias.zero_()
    >>> net(torch.tensor([[1.0, 2.0, -1.0]])).tolist()  # x1 = x0*x0 + x0; x2 = x0*x1 + x1
    [[4.0, 18.0, 0.0]]
    """

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class CrossNetworkMix(nn.Module):
    """``L`` cross layers, each a softmax-gated mixture of ``K`` low-rank experts (DCN-Mix).
    Shapes ``[B, d] -> [B, d]``; per layer ``V, U [K, d, r]``, ``C [K, r, r]``, gate ``[d, K]``,
    bias ``[d]``. With ``K = 1`` and ``r = d`` it has the capacity of a full-rank layer (through
    ``tanh`` nonlinearities in the low-rank space, as the paper's mixture).

    >>> CrossNetworkMix(6, 2, rank=2, n_experts=3)(torch.randn(4, 6)).shape
    torch.Size([4, 6])
    """

    def __init__(self, dim: int, n_layers: int, rank: int, n_experts: int):
        super().__init__()
        self.V = nn.ParameterList(nn.Parameter(torch.empty(n_experts, dim, rank)) for _ in range(n_layers))
        self.U = nn.ParameterList(nn.Parameter(torch.empty(n_experts, dim, rank)) for _ in range(n_layers))
        self.C = nn.ParameterList(nn.Parameter(torch.empty(n_experts, rank, rank)) for _ in range(n_layers))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(n_layers))
        self.gates = nn.ModuleList(nn.Linear(dim, n_experts, bias=False) for _ in range(n_layers))
        for group in (self.V, self.U, self.C):
            for p in group:
                nn.init.xavier_normal_(p)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for V, U, C, b, gate in zip(self.V, self.U, self.C, self.bias, self.gates):
            v = torch.tanh(torch.einsum("bd,kdr->bkr", x, V))              # [B, K, r]
            v = torch.tanh(torch.einsum("bkr,ksr->bks", v, C))             # [B, K, r]
            u = torch.einsum("bkr,kdr->bkd", v, U)                         # [B, K, d]
            experts = x0.unsqueeze(1) * (u + b)                            # [B, K, d]
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)               # [B, K, 1]
            x = (g * experts).sum(dim=1) + x
        return x


class DCNv2(RankingModel):
    """DCN-v2: a cross network (full-rank or low-rank mixture) and a DNN on the shared field
    embeddings, stacked or in parallel (see the module docstring for the formulas).

    Shapes: field embeddings ``E [B, F, D]`` -> ``x_0 [B, F*D]`` -> cross ``[B, F*D]``;
    DNN ``[B, F*D] -> [B, H]``; output ``logits [B]``.

    Args:
        features: fitted FeatureEncoder.
        embedding_dim: D (other table widths in ``dims`` are projected to D).
        structure: ``parallel`` (default), ``stacked`` or ``cross_only``.
        cross_layers: L >= 1.
        low_rank: 0 (default): full-rank cross layers; r >= 1: the mixture of low-rank experts.
        n_experts: K, experts per low-rank layer (only with ``low_rank``).
        hidden_units: DNN widths (not used by ``cross_only``; must be non-empty otherwise).
        dropout, batch_norm: of the DNN.
        mlp_init: ``xavier`` (default) or ``torch``: the DNN's, the output layer's and the
            full-rank cross layers' Linear init (FuxiCTR initialises every Linear Xavier-normal).
            Xavier is the default by a hair (valid AUC, 3 seeds: -0.0001 on ml100k-ctr, +0.0003
            on Adult; ``experiments/bench/init_defaults.py``), and it is FuxiCTR's.
        dims: table -> width overrides (projected to D).
        init_std: std of the N(0, std^2) embedding init.
        numeric_init: the numeric fields' vectors ``v`` (``x * v``): ``xavier`` (default)
            Xavier-normal as a ``Linear(1, D)``, std ``sqrt(2 / (1 + D))`` (FuxiCTR embeds a numeric
            field with ``nn.Linear(1, D)``, which its ``reset_parameters`` draws Xavier-normal like
            every Linear); ``embedding`` draws them as the id tables, N(0, init_std^2). Chosen on
            valid AUC (``init_defaults.py --option numeric_init --max-epochs 30``, 3 seeds): Xavier
            +0.0004 on Adult, +0.0019 on the wide table.
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, structure: str = "parallel",
                 cross_layers: int = 3, low_rank: int = 0, n_experts: int = 4,
                 hidden_units: Sequence[int] = (256, 128), dropout: float = 0.0, batch_norm: bool = False,
                 mlp_init: str = "xavier", dims: dict[str, int] | None = None, init_std: float = 1e-4,
                 numeric_init: str = "xavier"):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        if cross_layers < 1:
            raise ValueError(f"cross_layers must be >= 1, got {cross_layers}")
        if low_rank < 0:
            raise ValueError(f"low_rank must be >= 0 (0: full-rank cross layers), got {low_rank}")
        if low_rank and n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if structure != "cross_only" and not hidden_units:
            raise ValueError(f"structure {structure!r} needs a DNN: hidden_units must name at least one layer "
                             "(or use structure='cross_only')")
        if mlp_init not in ("torch", "xavier"):
            raise ValueError(f"unknown mlp_init {mlp_init!r}; use 'xavier' or 'torch'")
        self.structure = structure
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims,
                                          project_to=embedding_dim, init_std=init_std, embed_numeric=True,
                                          numeric_init=numeric_init)
        dim = len(self.embedding.field_names) * embedding_dim
        self.cross = (CrossNetworkMix(dim, cross_layers, low_rank, n_experts) if low_rank
                      else CrossNetwork(dim, cross_layers))
        self.dnn = None
        out_in = dim
        if structure != "cross_only":
            self.dnn = MLP(dim, list(hidden_units), dropout=dropout, batch_norm=batch_norm, init=mlp_init)
            out_in = hidden_units[-1] + (dim if structure == "parallel" else 0)
        self.out = nn.Linear(out_in, 1)
        init_linears(mlp_init, self.out, *([] if low_rank else [self.cross]))

    def field_embeddings(self, batch) -> torch.Tensor:
        """``E [B, F, D]``: id fields (schema order) then numeric fields."""
        return self.embedding(batch).stack()

    def forward(self, batch) -> ModelOutput:
        x0 = self.field_embeddings(batch).flatten(1)                      # [B, d]
        if self.structure == "stacked":
            h = self.dnn(self.cross(x0))                                  # [B, H]
        elif self.structure == "parallel":
            h = torch.cat([self.cross(x0), self.dnn(x0)], dim=1)          # [B, d + H]
        else:
            h = self.cross(x0)                                            # [B, d]
        return ModelOutput(logits=self.out(h).squeeze(-1))
