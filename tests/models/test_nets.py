"""MLP and SmallCNN: shapes, structure and argument validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sensitivity.models import MLP, SmallCNN


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (4, 4, 4)])
def test_mlp_flattens_any_input_shape(shape):
    model = MLP(64, 10, hidden=(8, 8))
    assert model(torch.randn(3, *shape)).shape == (3, 10)


@pytest.mark.parametrize("hidden", [(), (5,), (7, 6, 5)])
def test_mlp_depth_and_parameter_count(hidden):
    model = MLP(12, 3, hidden=hidden)
    widths = [12, *hidden, 3]
    expected = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert _count(model, nn.Linear) == len(hidden) + 1
    assert _count(model, nn.ReLU) == len(hidden)


@pytest.mark.parametrize("name, kind", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("leaky_relu", nn.LeakyReLU)])
def test_mlp_activation(name, kind):
    model = MLP(4, 2, hidden=(3, 3), activation=name)
    assert _count(model, kind) == 2


def test_mlp_batch_norm_and_dropout_layers():
    model = MLP(4, 2, hidden=(3, 3), dropout=0.25, batch_norm=True)
    assert _count(model, nn.BatchNorm1d) == 2
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 and all(d.p == 0.25 for d in dropouts)
    assert _count(MLP(4, 2, hidden=(3,)), nn.Dropout) == 0
    assert _count(MLP(4, 2, hidden=(3,)), nn.BatchNorm1d) == 0


def test_mlp_matches_manual_forward():
    torch.manual_seed(0)
    model = MLP(6, 2, hidden=(4,), activation="tanh")
    x = torch.randn(5, 2, 3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    manual = torch.tanh(x.reshape(5, 6) @ linears[0].weight.T + linears[0].bias) @ linears[1].weight.T + linears[1].bias
    torch.testing.assert_close(model(x), manual)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"in_features": 0}, ValueError),
        ({"in_features": 2.5}, TypeError),
        ({"in_features": True}, TypeError),
        ({"num_classes": -1}, ValueError),
        ({"hidden": (4, 0)}, ValueError),
        ({"hidden": 4}, TypeError),
        ({"hidden": "44"}, TypeError),
        ({"activation": "sigmoid"}, ValueError),
        ({"dropout": 1.0}, ValueError),
        ({"dropout": -0.1}, ValueError),
        ({"batch_norm": 1}, TypeError),
    ],
)
def test_mlp_validation(kwargs, error):
    args = {"in_features": 4, "num_classes": 2, **kwargs}
    with pytest.raises(error, match=f"`{next(iter(kwargs))}"):
        MLP(**args)


@pytest.mark.parametrize(
    "in_channels, size, channels, expected_flat",
    [
        (1, 28, (32, 64), 64 * 7 * 7),
        (3, 32, (32, 64), 64 * 8 * 8),
        (1, 8, (32, 64), 64 * 2 * 2),
        (1, 8, (4, 4, 4), 4 * 1 * 1),
        (2, 7, (5,), 5 * 3 * 3),  # odd sizes floor like MaxPool2d does
        (1, (28, 32), (3, 6), 6 * 7 * 8),
    ],
)
def test_small_cnn_sizes(in_channels, size, channels, expected_flat):
    model = SmallCNN(in_channels, 10, channels=channels, hidden=16, input_size=size)
    assert model.flat_features == expected_flat
    h, w = (size, size) if isinstance(size, int) else size
    model.eval()  # BatchNorm1d in train mode needs more than one example per channel
    assert model(torch.randn(2, in_channels, h, w)).shape == (2, 10)
    model.train()
    assert model(torch.randn(3, in_channels, h, w)).shape == (3, 10)


def test_small_cnn_options():
    plain = SmallCNN(1, 3, channels=(4, 8), hidden=0, input_size=8, batch_norm=False, dropout=0.5)
    assert _count(plain, nn.BatchNorm2d) == 0 and _count(plain, nn.BatchNorm1d) == 0
    assert _count(plain, nn.Dropout) == 1
    assert _count(plain, nn.Linear) == 1
    assert all(conv.bias is not None for conv in plain.modules() if isinstance(conv, nn.Conv2d))
    normed = SmallCNN(1, 3, channels=(4, 8), hidden=6, input_size=8)
    assert _count(normed, nn.BatchNorm2d) == 2 and _count(normed, nn.BatchNorm1d) == 1
    assert _count(normed, nn.Linear) == 2


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        ({"in_channels": 0}, "in_channels", ValueError),
        ({"num_classes": 0}, "num_classes", ValueError),
        ({"channels": ()}, "channels", ValueError),
        ({"channels": (8, -1)}, "channels", ValueError),
        ({"channels": 8}, "channels", TypeError),
        ({"hidden": -1}, "hidden", ValueError),
        ({"input_size": 3}, "input_size", ValueError),  # two pooling blocks need >= 4
        ({"input_size": (28,)}, "input_size", ValueError),
        ({"input_size": 0}, "input_size", ValueError),
        ({"batch_norm": "yes"}, "batch_norm", TypeError),
        ({"dropout": 2}, "dropout", ValueError),
    ],
)
def test_small_cnn_validation(kwargs, name, error):
    args = {"in_channels": 1, "num_classes": 2, **kwargs}
    with pytest.raises(error, match=f"`{name}"):
        SmallCNN(**args)
