"""ignite_mlp.model: layer shapes and parameter counts against hand computation."""

import pytest
import torch
from torch import nn

from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP


def test_tutorial_mlp_shapes_and_parameter_count() -> None:
    model = MLP(3072, 10, [128])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(3072, 128), (128, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1
    # weights + biases by hand: 3072*128 + 128 + 128*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 393_216 + 128 + 1_280 + 10


def test_deeper_mlp_and_forward_equals_manual_layers() -> None:
    torch.manual_seed(0)
    model = MLP(12, 3, [8, 5])
    x = torch.randn(4, 3, 2, 2)
    l1, l2, l3 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    h = torch.relu(x.flatten(1) @ l1.weight.T + l1.bias)
    h = torch.relu(h @ l2.weight.T + l2.bias)
    torch.testing.assert_close(model(x), h @ l3.weight.T + l3.bias)
    assert sum(p.numel() for p in model.parameters()) == (12 * 8 + 8) + (8 * 5 + 5) + (5 * 3 + 3)


@pytest.mark.parametrize("hidden", [[], [0], [-4], [16, 0]])
def test_bad_hidden_sizes_are_clear_errors(hidden: list[int]) -> None:
    with pytest.raises(UserError, match="hidden"):
        MLP(10, 3, hidden)


def test_norm_and_activation_options() -> None:
    model = MLP(12, 3, [8, 4], dropout=0.2, norm="batch", activation="gelu")
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "GELU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "GELU",
        "Dropout",
        "Linear",
    ]
    hidden = [m for m in model.layers if isinstance(m, nn.Linear)][:2]
    assert all(lin.bias is None for lin in hidden)  # the norm's shift replaces the bias
    layer = MLP(12, 3, [8], norm="layer")
    assert any(isinstance(m, nn.LayerNorm) for m in layer.modules())
    with pytest.raises(UserError, match="norm must be one of"):
        MLP(12, 3, [8], norm="group")
