"""per_layer_gram: blocks per layer against a one-example-at-a-time float64 loop, and their sum against the Gram."""

import pytest
import torch
from oracles import per_layer_gram_loop
from torch import nn

from lightning_sensitivity.functional import loss_gradient_gram, per_layer_gram


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(6) + 0.5)  # a parameter of the root module
        self.body = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.LayerNorm(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.scale * self.body(x))


class Matmul(nn.Module):
    """``x @ W.T`` (a derived weight) after a layer whose input mixes the batch: the layerwise check fails and the
    per-example fallback serves the whole model."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.w = nn.Parameter(torch.randn(3, 6))

    def forward(self, x):
        return torch.tanh(self.inp(x - x.mean(dim=0, keepdim=True))) @ self.w.T


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


DEFAULT_LAYERS = {"scale": "scale", "body.0.weight": "body.0", "body.0.bias": "body.0", "body.2.weight": "body.2",
                  "body.2.bias": "body.2", "head.weight": "head", "head.bias": "head"}  # fmt: skip


@pytest.mark.parametrize("method", ["layerwise", "per_example"])
@pytest.mark.parametrize("two_sets", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_default_layers_match_the_loop_and_sum_to_the_gram(method, two_sets, chunk_size):
    torch.manual_seed(0)
    model = Net().double()
    x, y = _data(5)
    x2, y2 = _data(4, seed=1) if two_sets else (None, None)
    got = per_layer_gram(model, x, y, x2, y2, chunk_size=chunk_size, method=method)
    expected = per_layer_gram_loop(model, x, y, DEFAULT_LAYERS.__getitem__, x2, y2)
    assert list(got) == ["scale", "body.0", "body.2", "head"]
    for layer, block in expected.items():
        torch.testing.assert_close(got[layer], block, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(sum(got.values()), loss_gradient_gram(model, x, y, x2, y2), rtol=1e-6, atol=1e-12)


def test_layer_groups_longest_prefix_and_frozen_groups():
    torch.manual_seed(1)
    model = Net().double()
    model.body[2].requires_grad_(False)
    groups = {"norm": ["body.2"], "body": ["body"], "rest": [""]}
    got = per_layer_gram(model, *_data(4), layer_groups=groups, method="layerwise")
    layer_of = {"body.0.weight": "body", "body.0.bias": "body"}
    expected = per_layer_gram_loop(model, *_data(4), lambda name: layer_of.get(name, "rest"))
    assert set(got) == {"norm", "body", "rest"}
    torch.testing.assert_close(got["norm"], torch.zeros(4, 4, dtype=torch.float64))  # frozen only
    for layer in ("body", "rest"):
        torch.testing.assert_close(got[layer], expected[layer], rtol=1e-6, atol=1e-12)


def test_unsupported_model_falls_back_to_per_example_gradients():
    torch.manual_seed(2)
    model = Matmul().double()
    x, y = _data(5)
    with pytest.raises(ValueError, match="cannot handle this model"):
        per_layer_gram(model, x, y, method="layerwise")
    got = per_layer_gram(model, x, y, chunk_size=3)
    expected = per_layer_gram_loop(model, x, y, lambda name: name.rpartition(".")[0] or name)
    assert list(got) == ["w", "inp"]  # named_parameters() order: own parameters first
    for layer, block in expected.items():
        torch.testing.assert_close(got[layer], block, rtol=1e-6, atol=1e-12)


def test_torchvision_vit_blocks_sum_to_the_gram():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
    ).double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    got = per_layer_gram(model, x, y, method="layerwise")
    assert "encoder.layers.encoder_layer_0.self_attention" in got and "class_token" in got
    torch.testing.assert_close(sum(got.values()), loss_gradient_gram(model, x, y, method="per_example"),
                               rtol=1e-6, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    "layer_groups, error, match",
    [
        ([("a", ["head"])], TypeError, "`layer_groups` expected a mapping"),
        ({"a": "head"}, TypeError, "list of module prefixes"),
        ({"a": [3]}, TypeError, r"`layer_groups\['a'\]` expected module prefixes"),
        ({"a": ["hea"]}, ValueError, "expected prefixes of parameter names, got 'hea'"),
        ({"a": ["head"], "b": ["head"]}, ValueError, "each prefix in one group"),
        ({"a": ["head"]}, ValueError, "cover every trainable parameter.*scale"),
    ],
)
def test_bad_layer_groups(layer_groups, error, match):
    with pytest.raises(error, match=match):
        per_layer_gram(Net(), torch.randn(3, 5), torch.zeros(3, dtype=torch.long), layer_groups=layer_groups)
