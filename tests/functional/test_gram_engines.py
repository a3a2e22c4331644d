"""The layerwise Gram engine against the float64 per-example loop, layer by layer and in its corner cases.

``method="layerwise"`` raises instead of falling back, so every equality below is the layerwise engine's own.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop
from torch import nn

from lightning_sensitivity.functional import loss_gradient_gram, stiffness
from lightning_sensitivity.functional.gram import layerwise_factors as _layer_gram


def _data(shape, n, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _assert_layerwise_exact(model, shape, n=5, classes=4, chunk_size=None, two_sets=False, loss_fn=None, seed=0):
    model = model.double()
    x, y = _data(shape, n, classes, seed)
    x2, y2 = _data(shape, n - 1, classes, seed + 1) if two_sets else (None, None)
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    expected = gram_loop(model, x, y, x2, y2, **kwargs)
    got = loss_gradient_gram(model, x, y, x2, y2, method="layerwise", chunk_size=chunk_size, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


class Seq(nn.Module):
    """A linear layer over a sequence: positions share the weight."""

    def __init__(self, d=5, hidden=6, classes=4):
        super().__init__()
        self.inp = nn.Linear(d, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.inp(x)))).mean(dim=1)


class Shared(nn.Module):
    """The same layer applied twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.a(torch.tanh(self.a(x))))


def mnist_mlp():
    layers = (nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(*layers)


def mnist_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("two_sets", [False, True])
def test_conftest_models(model_and_shape, chunk_size, two_sets):
    model, shape = model_and_shape
    _assert_layerwise_exact(model, shape, n=6, chunk_size=chunk_size, two_sets=two_sets)


@pytest.mark.parametrize("factory", [mnist_mlp, mnist_cnn])
def test_issue_mnist_shapes(factory):
    torch.manual_seed(0)
    _assert_layerwise_exact(factory(), (1, 28, 28), n=3, classes=10)


@pytest.mark.parametrize("identity", [True, False], ids=["factor-pairs", "explicit"])
@pytest.mark.parametrize(
    "factory, shape",
    [
        (lambda: Seq(), (4, 5)),
        (lambda: nn.Sequential(nn.Conv1d(3, 4, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(12, 4)),
         (3, 6)),
        (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=2, dilation=2, bias=False), nn.GroupNorm(1, 3), nn.Tanh(),
                               nn.Flatten(), nn.Linear(75, 4)), (2, 5, 5)),  # fmt: skip
        (lambda: nn.Sequential(nn.Conv2d(2, 4, 2, stride=2, padding_mode="reflect", padding=1), nn.BatchNorm2d(4),
                               nn.ReLU(), nn.Flatten(), nn.Linear(36, 4)), (2, 4, 4)),  # fmt: skip
    ],
    ids=["sequence-linear+layernorm", "conv1d-stride", "conv2d-dilation+groupnorm", "conv2d-reflect+batchnorm"],
)
def test_position_sharing_layers_both_paths(factory, shape, identity, monkeypatch):
    # Both ways to form a shared-position layer's Gram must agree with the loop; force each one.
    monkeypatch.setattr(_layer_gram, "_factor_pair_cheaper", lambda *args: identity)
    torch.manual_seed(1)
    model = factory()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        with torch.no_grad():
            model.train()(torch.randn(8, *shape))
    _assert_layerwise_exact(model, shape, chunk_size=3, two_sets=True)


def test_grouped_convolution():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(24, 4))
    _assert_layerwise_exact(model, (4, 4, 4), chunk_size=2)


def test_weight_sharing_and_inplace_relu():
    torch.manual_seed(3)
    _assert_layerwise_exact(Shared(), (6,), classes=3)
    inplace = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 4))
    _assert_layerwise_exact(inplace, (5,))


def test_frozen_parameters():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    model[0].requires_grad_(False)
    model[2].bias.requires_grad_(False)
    model[4].weight.requires_grad_(False)
    _assert_layerwise_exact(model, (5,), classes=3, two_sets=True)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lo, t: F.cross_entropy(lo, t, reduction="none") * 2.0,
        lambda lo, t: F.nll_loss(F.log_softmax(lo, -1), t, reduction="sum") + lo.pow(2).mean(),
        lambda lo, t: F.cross_entropy(lo, t) * (1.0 + float(lo.detach().sum().item() > 0)),  # not vmappable
    ],
    ids=["unreduced", "mean-and-penalty", "python-control-flow"],
)
def test_custom_losses_are_per_example(loss_fn):
    torch.manual_seed(5)
    _assert_layerwise_exact(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)), (5,), loss_fn=loss_fn)


class MixesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 4)

    def forward(self, x):
        return self.lin(x - x.mean(dim=0, keepdim=True))


@pytest.mark.parametrize(
    "factory, match",
    [
        (MixesBatch, "disagrees with explicit per-example gradients"),
        (
            lambda: nn.Sequential(
                nn.Unflatten(1, (1, 5)), nn.BatchNorm1d(1, track_running_stats=False), nn.Flatten(), nn.Linear(5, 4)
            ),
            "batch statistics",
        ),
    ],
    ids=["examples-interact", "batchnorm-without-running-stats"],
)
def test_unsupported_models_fall_back_exactly(factory, match):
    torch.manual_seed(6)
    model = factory().double()
    x, y = _data((5,), 5)
    with pytest.raises(ValueError, match=match):
        loss_gradient_gram(model, x, y, method="layerwise")
    expected = gram_loop(model, x, y)
    torch.testing.assert_close(loss_gradient_gram(model, x, y), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_model_untouched_under_grad_free_contexts(context):
    torch.manual_seed(7)
    model = mnist_cnn()
    model.train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    before = state_snapshot(model)
    expected = loss_gradient_gram(model, x, y, method="per_example")
    with context():
        got = stiffness(model, x.clone(), y.clone(), method="layerwise").gram
    assert_unchanged(model, before)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_float32_agrees_with_float64():
    torch.manual_seed(8)
    model = mnist_mlp()
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    expected = gram_loop(model.double(), x.double(), y)
    got = loss_gradient_gram(model.float(), x, y, method="layerwise")
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"`method`.*'fast'"):
        loss_gradient_gram(nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), method="fast")
