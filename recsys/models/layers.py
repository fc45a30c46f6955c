"""Shared layers: MLP and factorization-machine interaction."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU}


def init_linears(init: str, *modules: nn.Module) -> None:
    """Initialise every ``nn.Linear`` in ``modules`` (in order): ``"torch"`` keeps PyTorch's
    default, ``"xavier"`` draws Xavier-normal weights and zeroes the biases (FuxiCTR's init).
    Any other name raises ``ValueError``.

    >>> lin = nn.Linear(3, 2); init_linears("xavier", lin); bool((lin.bias == 0).all())
    True
    """
    if init not in ("torch", "xavier"):
        raise ValueError(f"unknown init {init!r}; use 'xavier' or 'torch'")
    if init == "torch":
        return
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Feed-forward stack ``in_dim -> hidden[0] -> ... -> hidden[-1]`` (-> ``out_dim`` if given).

    Shapes: ``[B, in_dim] -> [B, hidden[-1]]`` (or ``[B, out_dim]``).
    ``init="torch"`` (default) keeps PyTorch's Linear init; ``init="xavier"`` uses Xavier-normal
    weights and zero biases as FuxiCTR does (no better on ml100k-ctr in our runs: 0.7048 vs
    0.7065 mean test AUC over 3 seeds for DeepFM).

    >>> MLP(8, [16, 4], out_dim=1)(torch.zeros(2, 8)).shape
    torch.Size([2, 1])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = None,
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False,
                 init: str = "torch"):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"MLP in_dim must be >= 1, got {in_dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers.append(nn.Linear(prev, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        if out_dim is not None:
            layers.append(nn.Linear(prev, out_dim))
            prev = out_dim
        self.out_dim = prev
        self.net = nn.Sequential(*layers)
        init_linears(init, self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FMInteraction(nn.Module):
    """Second-order factorization-machine term over field vectors.

    ``0.5 * sum_d((sum_f e_fd)^2 - sum_f e_fd^2)``; shapes ``[B, F, D] -> [B]``.

    >>> FMInteraction()(torch.ones(2, 3, 4))
    tensor([12., 12.])
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
