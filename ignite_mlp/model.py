"""The multi-layer perceptron: flatten, then Linear + ReLU per hidden layer, then the output layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ignite_mlp.config.choices import ACTIVATIONS, NORMS
from ignite_mlp.config.validation import check_model_size
from ignite_mlp.errors import UserError


def make_activation(name: str) -> nn.Module:
    """The activation layer ``--activation`` names (``gelu`` or ``relu``)."""
    return nn.GELU() if name == "gelu" else nn.ReLU()


class ResidualBlock(nn.Module):
    """An inverted-bottleneck residual block, as in "Scaling MLPs" (Bachmann et al. 2023):
    ``x + W2 act(W1 LayerNorm(x))``, with ``W1`` widening by ``expansion`` and ``W2`` narrowing back.

    >>> block = ResidualBlock(8, expansion=4)
    >>> block.expand.weight.shape, block(torch.zeros(2, 8)).shape
    (torch.Size([32, 8]), torch.Size([2, 8]))
    """

    def __init__(self, width: int, expansion: int = 4, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, width * expansion)
        self.activation = make_activation(activation)
        self.project = nn.Linear(width * expansion, width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.project(self.activation(self.expand(self.norm(x)))))


class MLP(nn.Module):
    """A plain MLP over flattened images; each hidden layer is Linear, optional BatchNorm or
    LayerNorm, ReLU or GELU, optional dropout. ``blocks`` residual blocks (:class:`ResidualBlock`)
    at the last hidden width may follow, then a LayerNorm before the output layer.

    The tutorial's network is ``MLP(3072, 10, [128])``: 3072 -> 128 -> 10 with ReLU.

    >>> model = MLP(3072, 10, [128])
    >>> sum(p.numel() for p in model.parameters())  # 3072*128 + 128 + 128*10 + 10
    394634
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: Sequence[int] = (128,),
        dropout: float = 0.0,
        norm: str = "none",
        activation: str = "relu",
        blocks: int = 0,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise UserError("an MLP needs at least one hidden layer; pass e.g. --hidden-sizes 128")
        if in_features < 1 or num_classes < 2 or any(int(h) < 1 for h in hidden_sizes):
            raise UserError(
                f"MLP sizes must be positive with >= 2 classes (in={in_features}, classes={num_classes}, "
                f"hidden={list(hidden_sizes)}); check --hidden-sizes and the data"
            )
        if norm not in NORMS or activation not in ACTIVATIONS:
            raise UserError(f"norm must be one of {NORMS} and activation one of {ACTIVATIONS}")
        if blocks < 0 or expansion < 1:
            raise UserError(f"--blocks must be >= 0 and --expansion >= 1 (got {blocks}, {expansion})")
        # Before any layer is allocated: a run's configuration file may ask for any size.
        check_model_size(in_features, list(hidden_sizes), num_classes, blocks, expansion)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden_sizes:
            # Linear -> norm -> activation -> dropout; a norm layer makes the Linear's bias redundant.
            layers.append(nn.Linear(width, int(h), bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(int(h)))
            elif norm == "layer":
                layers.append(nn.LayerNorm(int(h)))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        if blocks:
            # Pre-norm residual blocks leave the sum unnormalised: normalise it for the output layer.
            layers += [ResidualBlock(width, expansion, activation, dropout) for _ in range(blocks)]
            layers.append(nn.LayerNorm(width))
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, config: Any, in_features: int, num_classes: int) -> MLP:
        """The MLP a run's config describes (its hidden sizes, dropout, norm, activation, blocks),
        for ``in_features`` inputs and ``num_classes`` outputs: training, evaluate, the learning-rate
        finder and predict all build it here."""
        return cls(
            in_features,
            num_classes,
            config.hidden_sizes,
            config.dropout,
            config.norm,
            config.activation,
            config.blocks,
            config.expansion,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
