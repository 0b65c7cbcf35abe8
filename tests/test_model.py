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


def test_residual_blocks_equal_the_formula_by_hand() -> None:
    torch.manual_seed(1)
    model = MLP(12, 3, [8], norm="layer", activation="gelu", blocks=2, expansion=3)
    x = torch.randn(5, 3, 2, 2)
    first, block1, block2, final_norm, head = (
        model.layers[1],
        model.layers[4],
        model.layers[5],
        model.layers[6],
        model.layers[7],
    )
    h = nn.functional.gelu(nn.functional.layer_norm(x.flatten(1) @ first.weight.T, (8,), *model.layers[2].parameters()))
    for block in (block1, block2):
        inner = nn.functional.layer_norm(h, (8,), block.norm.weight, block.norm.bias)
        inner = nn.functional.gelu(inner @ block.expand.weight.T + block.expand.bias)  # 8 -> 24
        h = h + inner @ block.project.weight.T + block.project.bias  # 24 -> 8, plus the skip
    out = nn.functional.layer_norm(h, (8,), final_norm.weight, final_norm.bias) @ head.weight.T + head.bias
    torch.testing.assert_close(model(x), out)
    assert block1.expand.weight.shape == (24, 8)
    # hidden layer 12*8 (no bias) + LayerNorm 16; each block 8*24+24 + 24*8+8 + LayerNorm 16; final LN 16; head 8*3+3
    assert sum(p.numel() for p in model.parameters()) == 96 + 16 + 2 * (216 + 200 + 16) + 16 + 27
    with pytest.raises(UserError, match="--blocks"):
        MLP(12, 3, [8], blocks=-1)
