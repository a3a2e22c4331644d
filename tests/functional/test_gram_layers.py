"""The layerwise Gram engine on transformer and embedding layers, against the float64 per-example loop.

``method="layerwise"`` raises instead of falling back, so every equality below is the layerwise engine's own; the
oracle (``tests/oracles.py::gram_loop``) runs the real modules one example at a time with ``torch.autograd.grad``.
"""

import pytest
import torch
import torch.nn.functional as F
from oracles import gram_loop
from torch import nn

from lightning_sensitivity.functional import gram_engine_plan, loss_gradient_gram, per_layer_gram
from lightning_sensitivity.functional.gram import layerwise_factors as capture

CLASSES = 3


def _check(model, x, y=None, two_sets=False, chunk_size=None):
    model = model.double()
    x = x.double()
    y = torch.randint(0, CLASSES, (x.shape[0],), generator=torch.Generator().manual_seed(1)) if y is None else y
    x2 = y2 = None
    if two_sets:
        x2, y2 = x[1:].flip(0), y[1:].flip(0)
    expected = gram_loop(model, x, y, x2, y2)
    got = loss_gradient_gram(model, x, y, x2, y2, method="layerwise", chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


def _tokens(n=5, length=6, vocabulary=7, seed=0):
    # Ids travel as floats (the package's inputs are floating point); the models cast them back.
    return torch.randint(0, vocabulary, (n, length), generator=torch.Generator().manual_seed(seed)).double()


class Attention(nn.Module):
    """One ``nn.MultiheadAttention`` between a projected sequence and itself or a second projected sequence."""

    def __init__(self, batch_first=True, cross=None, need_weights=False, mask=None, **options):
        super().__init__()
        self.batch_first, self.cross, self.need_weights, self.mask = batch_first, cross, need_weights, mask
        self.inp = nn.Linear(4, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=batch_first, **options)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.inp(x))  # [N, T, 6]
        q = h if self.batch_first else h.transpose(0, 1)
        k = v = q
        if self.cross == "key-is-value":
            k = v = q.flip(-1) * 0.5
        elif self.cross == "distinct":
            k, v = q.flip(-1) * 0.5, q.roll(1, dims=-1) * 2.0
        if k.shape[-1] != self.attn.kdim:
            k, v = k[..., : self.attn.kdim], v[..., : self.attn.vdim]
        mask = {}
        if self.mask == "causal":
            t = x.shape[1]
            mask["attn_mask"] = torch.ones(t, t, dtype=torch.bool).triu(1)
        elif self.mask == "padding":
            mask["key_padding_mask"] = x[..., 0] > 1.0
        out, weights = self.attn(q, k, v, need_weights=self.need_weights, **mask)
        out = out if self.batch_first else out.transpose(0, 1)
        if weights is not None:
            out = out + weights.sum(dim=-1, keepdim=True)  # the weights reach the loss too
        return self.head(out.mean(dim=1))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_first": False},
        {"cross": "key-is-value"},
        {"cross": "distinct", "need_weights": True},
        {"mask": "causal", "need_weights": True},
        {"mask": "padding"},
        {"add_bias_kv": True, "add_zero_attn": True, "mask": "causal"},
        {"cross": "distinct", "kdim": 5, "vdim": 3},
        {"bias": False},
    ],
    ids=[
        "self", "sequence-first", "key-is-value", "distinct+weights", "causal+weights", "key-padding",
        "bias-kv+zero-attn", "separate-projections", "no-bias",
    ],
)
def test_multihead_attention(options):
    torch.manual_seed(0)
    x = torch.randn(5, 4, 4)
    _check(Attention(**options), x, two_sets=True, chunk_size=3)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_in_eval_mode(norm_first):
    # Eval mode with grad-free parameters is where nn.MultiheadAttention and the encoder layer have fused fast
    # paths; under the capture they must not be taken (or the model would fall back).
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True, norm_first=norm_first)
    model = nn.Sequential(nn.Linear(3, 8), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Flatten(), nn.Linear(32, CLASSES))  # fmt: skip
    _check(model.eval(), torch.randn(5, 4, 3))


class Tokens(nn.Module):
    """Embedding + positional embedding + class token + layer scale + RMSNorm + scaled dot-product attention."""

    def __init__(self, vocabulary=7, padding_idx=None, length=6, d=4):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, d, padding_idx=padding_idx)
        self.pos = nn.Parameter(torch.randn(1, length + 1, d))
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.scale = nn.Parameter(torch.rand(d) + 0.5)
        self.norm = nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, x):
        h = self.embed(x.long())
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        q, k, v = self.qkv(self.norm(h)).unsqueeze(1).chunk(3, dim=-1)
        h = h + self.scale * F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return self.head(torch.tanh(h[:, 0] + h[:, 1:].mean(dim=1)))


@pytest.mark.parametrize("path", ["equal-ids", "scattered"])
@pytest.mark.parametrize("padding_idx", [None, -2])
def test_embedding_tokens_and_broadcast_parameters(path, padding_idx, monkeypatch):
    # A small vocabulary against long sequences makes scattered gradients cheaper; force each path both ways.
    vocabulary, length = (5, 6) if path == "scattered" else (50, 2)
    chosen = []
    original = capture._pieces

    def spy(call, *args):
        for name, piece in original(call, *args):
            if call.kind == "embedding":
                chosen.append("equal-ids" if isinstance(piece, tuple) else "scattered")
            yield name, piece

    monkeypatch.setattr(capture, "_pieces", spy)
    torch.manual_seed(2)
    x = _tokens(6, length, vocabulary)
    if padding_idx is not None:
        x[0, 0] = vocabulary + padding_idx  # a padding token is sure to occur
    _check(Tokens(vocabulary, padding_idx, length), x, two_sets=True, chunk_size=4)
    assert set(chosen) == {path}


def test_tied_embedding_and_output_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(CLASSES, 4)

        def forward(self, x):
            return F.linear(torch.tanh(self.embed(x.long()).mean(dim=1)), self.embed.weight)

    torch.manual_seed(3)
    _check(Tied(), _tokens(5, 4, CLASSES))


def test_linear_on_tokens_prefers_explicit_gradients_at_vit_scale():
    # 64 patches + a class token at width 192: the T^2 identity costs ~20x the materialised D^T A.
    assert not capture._factor_pair_cheaper(128, 65, 193, 192)
    assert not capture._factor_pair_cheaper(128, 65, 193, 768)
    assert capture._factor_pair_cheaper(128, 1, 193, 192)


def test_torchvision_vit_takes_the_layerwise_path():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(4)
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=CLASSES
    ).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (4,))
    expected = loss_gradient_gram(model, x, y, method="per_example")
    torch.testing.assert_close(loss_gradient_gram(model, x, y, method="layerwise"), expected, rtol=1e-6, atol=1e-12)


def test_torchvision_resnet18_takes_the_layerwise_path():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=CLASSES)
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(8, 3, 16, 16))
    model = model.double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (3,))
    expected = loss_gradient_gram(model, x, y, method="per_example")
    torch.testing.assert_close(loss_gradient_gram(model, x, y, method="layerwise"), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "forward, used, match",
    [
        (lambda m, x: m.lin(x) + m.p.exp(), "p", None),  # a derived parameter: exp's Jacobian pulls it back
        (lambda m, x: m.lin(x) * m.p.expand(x.shape[0], 4)[0], "p", "disagrees with explicit"),  # caught by the check
        (lambda m, x: m.lin(x) + m.q[0], "q", None),
    ],
    ids=["function-of-parameter", "indexed-expansion", "indexed-parameter"],
)
def test_unrecognised_parameter_uses_are_refused(forward, used, match):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.p = nn.Parameter(torch.randn(4))
            self.q = nn.Parameter(torch.randn(5, 4))
            self.head = nn.Linear(4, CLASSES)

        def forward(self, x):
            return self.head(forward(self, x))

    torch.manual_seed(6)
    model = Odd().double()
    getattr(model, "q" if used == "p" else "p").requires_grad_(False)  # the oracle needs every trainable one used
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, CLASSES, (5,))
    if match is None:
        torch.testing.assert_close(loss_gradient_gram(model, x, y, method="layerwise"), gram_loop(model, x, y),
                                   rtol=1e-6, atol=1e-12)  # fmt: skip
    else:
        with pytest.raises(ValueError, match=match):
            loss_gradient_gram(model, x, y, method="layerwise")
    torch.testing.assert_close(loss_gradient_gram(model, x, y), gram_loop(model, x, y), rtol=1e-6, atol=1e-12)


def test_embedding_with_a_frequent_token():
    # Most pairs share the id: the equal-id block switches from enumerated pairs to an equality mask.
    torch.manual_seed(7)
    x = _tokens(6, 2, 50)
    x[:, 0] = 3.0
    x[::2, 1] = 3.0
    _check(Tokens(50, None, 2), x, two_sets=True)


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(9, 4)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids).mean(dim=1)))


@pytest.mark.parametrize("method", ["layerwise", "per_example"])
def test_integer_token_ids_are_accepted_as_inputs(method):
    torch.manual_seed(8)
    model = Bag().double()
    ids = torch.randint(0, 9, (5, 4), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, CLASSES, (5,), generator=torch.Generator().manual_seed(1))
    expected = gram_loop(model, ids, y, ids[:3], y[:3])
    got = loss_gradient_gram(model, ids, y, ids[:3], y[:3], method=method)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    blocks = per_layer_gram(model, ids, y, ids[:3], y[:3], method=method)
    torch.testing.assert_close(sum(blocks.values()), expected, rtol=1e-6, atol=1e-12)
    with pytest.raises(TypeError, match="`inputs` expected a floating-point or integer tensor, got dtype torch.bool"):
        loss_gradient_gram(model, ids > 3, y)


class Positions(nn.Module):
    """Token plus position embeddings, the positions ``arange(T)`` shared by the batch (as in most text models)."""

    def __init__(self, vocabulary=9, length=12, unsqueeze=False):
        super().__init__()
        self.unsqueeze = unsqueeze
        self.tokens = nn.Embedding(vocabulary, 4, padding_idx=0)
        self.positions = nn.Embedding(length, 4)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, ids):
        pos = self.positions(torch.arange(ids.shape[1]))
        h = self.tokens(ids) + (pos.unsqueeze(0) if self.unsqueeze else pos)
        return self.head(torch.tanh(h).mean(dim=1))


@pytest.mark.parametrize("length", [4, 5], ids=["T!=N", "T==N"])
def test_position_embeddings_shared_by_the_batch(length):
    # With as many positions as examples the position ids look like a batch of ids until they are broadcast.
    torch.manual_seed(9)
    model = Positions().double()
    ids = torch.randint(0, 9, (5, length), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, CLASSES, (5,), generator=torch.Generator().manual_seed(1))
    expected = gram_loop(model, ids, y, ids[:3], y[:3])
    got = loss_gradient_gram(model, ids, y, ids[:3], y[:3], method="layerwise", chunk_size=length)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(loss_gradient_gram(model, ids, y, method="layerwise"), gram_loop(model, ids, y),
                               rtol=1e-6, atol=1e-12)  # fmt: skip


def test_position_embeddings_unsqueezed_to_one_by_t():
    # ``E[positions].unsqueeze(0)`` (1, T, H) added to (N, T, H): the ids go along the view, as (1, T) ids do.
    torch.manual_seed(10)
    model = Positions(unsqueeze=True).double()
    ids = torch.randint(0, 9, (5, 4), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, CLASSES, (5,), generator=torch.Generator().manual_seed(1))
    got = loss_gradient_gram(model, ids, y, method="layerwise")
    torch.testing.assert_close(got, gram_loop(model, ids, y), rtol=1e-6, atol=1e-12)
    assert gram_engine_plan(model).explicit == ()  # every parameter from factors


def test_the_reference_text_classifier_takes_the_layerwise_path():
    from lightning_sensitivity.models import TextClassifier

    torch.manual_seed(11)
    model = TextClassifier(vocab_size=30, num_classes=CLASSES, max_length=8).eval().double()
    ids = torch.randint(1, 30, (4, 6), generator=torch.Generator().manual_seed(0))
    ids[0, 4:] = 0  # padding
    y = torch.randint(0, CLASSES, (4,), generator=torch.Generator().manual_seed(1))
    got = loss_gradient_gram(model, ids, y, method="layerwise")
    torch.testing.assert_close(got, gram_loop(model, ids, y), rtol=1e-6, atol=1e-12)
