"""Any model a researcher brings gets an exact Gram, and an unknown layer costs only that layer.

Every value is compared with a float64 one-example-at-a-time autograd loop (``tests/oracles.py``). Recognised
here besides the plain layers: tensors derived from parameters alone (layer scale ``gamma.reshape``, ``W.T``,
``A @ B``, weight and spectral norm), ``x @ W`` and ``addmm`` (transformers' ``Conv1D``), position ids of shape
``(1, T)`` moved with ``.to``. Models ``vmap`` cannot batch (``.item()``, data-dependent branches, boolean masks)
end in the per-example autograd loop.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracles import gram_loop
from torch import nn

from lightning_sensitivity.functional import gram_engine_plan, loss_gradient_gram, per_layer_gram
from lightning_sensitivity.functional.gram import layerwise_factors as capture
from lightning_sensitivity.functional.gram import per_example

CLASSES = 3


def _close(got, expected, rtol=1e-8):
    scale = expected.abs().max()
    assert float((got - expected).abs().max()) <= rtol * float(scale), float((got - expected).abs().max() / scale)


def _labels(n, seed=1):
    return torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


class LayerScale(nn.Module):
    """timm's ConvNeXt layer scale: ``x * gamma.reshape(1, -1, 1, 1)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.randn(4))
        self.head = nn.Linear(4 * 5 * 5, CLASSES)

    def forward(self, x):
        h = self.conv(x).mul(self.gamma.reshape(1, -1, 1, 1))
        return self.head(torch.tanh(h).flatten(1))


class LoRA(nn.Module):
    """A frozen-shape base layer plus a low-rank adapter ``x @ A @ B``."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(6, 8)
        self.A = nn.Parameter(torch.randn(6, 2))
        self.B = nn.Parameter(torch.randn(2, 8))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(torch.tanh(self.base(x) + x @ self.A @ self.B))


class MergedLoRA(LoRA):
    """The adapter merged into the weight, ``W + (A @ B).T``: a derived weight of a recognised ``F.linear``."""

    def forward(self, x):
        return self.head(torch.tanh(F.linear(x, self.base.weight + (self.A @ self.B).T, self.base.bias)))


class Conv1DLike(nn.Module):
    """transformers' ``Conv1D`` on a sequence: ``addmm(b, x.view(-1, nx), W).view(...)``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 7))
        self.bias = nn.Parameter(torch.randn(7))
        self.head = nn.Linear(7, CLASSES)

    def forward(self, x):
        h = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], 7)
        return self.head(torch.tanh(h).mean(dim=1))


def _parametrized(kind, **options):
    param = torch.nn.utils.parametrizations
    wrap = param.weight_norm if kind == "weight_norm" else param.spectral_norm
    torch.manual_seed(3)
    model = nn.Sequential(wrap(nn.Linear(6, 8), **options), nn.Tanh(), wrap(nn.Conv1d(1, 2, 3), **options),
                          nn.Flatten(), nn.Linear(12, 3))  # fmt: skip
    return nn.Sequential(model[:2], nn.Unflatten(1, (1, 8)), *model[2:])


@pytest.mark.parametrize(
    "factory, shape",
    [
        (LayerScale, (2, 5, 5)),
        (LoRA, (6,)),
        (MergedLoRA, (6,)),
        (Conv1DLike, (4, 5)),
        (lambda: _parametrized("weight_norm"), (6,)),
        (lambda: _parametrized("weight_norm", dim=None), (6,)),
        (lambda: _parametrized("weight_norm", dim=1), (6,)),
        (lambda: _parametrized("spectral_norm"), (6,)),
    ],
    ids=["layer-scale", "lora", "merged-lora", "conv1d-addmm", "weight-norm", "weight-norm-whole", "weight-norm-dim1",
         "spectral-norm"],  # fmt: skip
)
def test_derived_parameters_and_matmuls_take_the_layerwise_path(factory, shape):
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.randn(5, *shape, dtype=torch.float64)
    y = _labels(5)
    expected = gram_loop(model, x, y, x[:3], y[:3])
    _close(loss_gradient_gram(model, x, y, x[:3], y[:3], method="layerwise", chunk_size=2), expected)
    plan = gram_engine_plan(model)
    assert plan.engine == "layerwise" and plan.explicit == (), plan.describe()
    blocks = per_layer_gram(model, x, y, method="layerwise")
    _close(sum(blocks.values()), gram_loop(model, x, y))


class UsedTwice(nn.Module):
    """``lin.weight`` and ``g`` each used directly AND inside a derived weight: every term explicit, then summed."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 5)
        self.g = nn.Parameter(torch.randn(5))
        self.head = nn.Linear(5, CLASSES)

    def forward(self, x):
        h = self.lin(x) + F.linear(x, self.lin.weight * self.g[:, None])
        return self.head(torch.tanh(h * self.g))


def test_a_parameter_used_directly_and_through_a_derived_tensor():
    torch.manual_seed(8)
    model = UsedTwice().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), _labels(6)
    _close(loss_gradient_gram(model, x, y, x[:2], y[:2], method="layerwise", chunk_size=4),
           gram_loop(model, x, y, x[:2], y[:2]))  # fmt: skip
    _close(sum(per_layer_gram(model, x, y, method="layerwise").values()), gram_loop(model, x, y))


class Einsum(nn.Module):
    """``w`` is used by an op the capture does not know (einsum); ``lin.weight`` by a linear layer AND by einsum."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.w = nn.Parameter(torch.randn(5, 4))
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x):
        h = torch.tanh(self.lin(x)) + torch.einsum("ni,ji->nj", x, self.lin.weight)
        return self.head(torch.tanh(torch.einsum("ni,ij->nj", h, self.w)))


def test_an_unknown_layer_costs_only_its_parameters(monkeypatch):
    torch.manual_seed(1)
    model = Einsum().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), _labels(6)
    explicit = []
    original = per_example.subset_gradients

    def spy(*args):
        explicit.append(list(args[-1]))
        return original(*args)

    monkeypatch.setattr(per_example, "subset_gradients", spy)
    got = loss_gradient_gram(model, x, y, x[:4], y[:4], method="layerwise")
    _close(got, gram_loop(model, x, y, x[:4], y[:4]))
    # Only the two parameters einsum touches get explicit gradients; lin.bias and head come from factors.
    assert explicit and all(names == ["lin.weight", "w"] for names in explicit)
    plan = gram_engine_plan(model)
    assert plan.engine == "layerwise" and [name for name, _ in plan.explicit] == ["lin.weight", "w"]
    assert "einsum" in plan.describe() and "'w'" in plan.describe()


class ItemScaled(nn.Module):
    """Normalises by a batch-wide ``.item()``: the batched pass mixes the examples, and vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x) / x.abs().max().item()))


class Branches(nn.Module):
    """A Python branch on the batch's data and a boolean-mask assignment."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 6)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x):
        h = self.a(x) + 0.5 * self.b(x) if x.sum() > 0 else self.b(x) - self.a(x)
        h = h.clone()
        h[h < 0] = 0.0
        return self.head(h)


def test_data_dependent_forwards_end_in_the_per_example_loop():
    torch.manual_seed(2)
    x = torch.randn(6, 4, dtype=torch.float64)
    x[0] -= 3.0  # the batch sums to more than 0, the first example alone to less: the batched branch differs
    x[1:] += 1.0
    y = _labels(6)
    for factory in (ItemScaled, Branches):
        model = factory().double()
        expected = gram_loop(model, x, y)
        _close(loss_gradient_gram(model, x, y), expected)
        plan = gram_engine_plan(model)
        assert plan.engine == "per_example" and plan.loop is not None and plan.fallback is not None, plan.describe()
        assert "autograd loop" in plan.describe()
        _close(loss_gradient_gram(model, x, y, method="per_example", chunk_size=4), expected)
        _close(sum(per_layer_gram(model, x, y).values()), expected)


def test_a_remembered_refusal_is_not_repeated(monkeypatch):
    torch.manual_seed(3)
    model = ItemScaled().double()
    x, y = torch.randn(5, 4, dtype=torch.float64) + torch.arange(5.0)[:, None], _labels(5)
    loss_gradient_gram(model, x, y)
    calls = []
    original = capture.layer_features
    monkeypatch.setattr(capture, "layer_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    _close(loss_gradient_gram(model, x, y), gram_loop(model, x, y))
    assert calls == []  # straight to the per-example engine
    with pytest.raises(ValueError, match="`method='layerwise'` cannot handle this model"):
        loss_gradient_gram(model, x, y, method="layerwise")  # asked for explicitly: tried, and refused


class NoDerivative(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, CLASSES)

    def forward(self, x):
        h = self.lin(x)
        return torch.special.zeta(h.exp() + 1.0, torch.tensor(2.0, dtype=h.dtype))


def test_a_model_that_cannot_be_differentiated_says_why():
    model = NoDerivative().double()
    x, y = torch.randn(4, 4, dtype=torch.float64), _labels(4)
    with pytest.raises(ValueError, match="could not be differentiated.*zeta"):
        loss_gradient_gram(model, x, y)


@pytest.mark.slow
def test_the_self_check_accepts_a_correct_float32_gram_of_millions_of_parameters():
    # timm vit_tiny (5.4 M parameters) in float32: a float32 reference g @ g.T is itself off by ~6e-4 of
    # |g_i||g_j|, above the check's tolerance sqrt(eps) = 3.5e-4 (refused before); the check's reference is now
    # formed in float64, and the layerwise result is accurate to float32 rounding.
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32)
    assert sum(p.numel() for p in model.parameters()) > 5_000_000
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    got = loss_gradient_gram(model, x, y, method="layerwise").double()
    expected = gram_loop(model.double(), x.double(), y)
    scale = expected.diagonal().sqrt()
    assert float(((got - expected).abs() / (scale[:, None] * scale[None, :])).max()) < 1e-5


class RelativeBias(nn.Module):
    """T5's relative position bias: an embedding of (T, T) buckets permuted to (1, heads, T, T) and used by
    ``torch.where`` with a per-example mask -- each example gets its own copy, recorded as an embedding."""

    def __init__(self, heads=2, width=4):
        super().__init__()
        self.bias = nn.Embedding(5, heads)
        self.q = nn.Linear(width, width)
        self.head = nn.Linear(width, CLASSES)
        self.heads = heads

    def forward(self, x, keep):
        n, t, w = x.shape
        buckets = (torch.arange(t)[None, :] - torch.arange(t)[:, None]).clamp(-2, 2) + 2
        values = self.bias(buckets).permute([2, 0, 1]).unsqueeze(0)  # (1, heads, T, T)
        q = self.q(x).reshape(n, t, self.heads, -1).transpose(1, 2)
        scores = q @ q.transpose(-1, -2) + torch.where(keep[:, None, None, :], values, -1e9)
        h = (scores.softmax(-1) @ q).transpose(1, 2).reshape(n, t, w)
        return self.head(h.mean(dim=1))


def test_a_shared_embedding_permuted_and_used_with_the_batch():
    torch.manual_seed(7)
    model = RelativeBias().double()
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    keep = torch.ones(5, 6, dtype=torch.bool)
    keep[1, 4:] = False
    y = _labels(5)
    kw = {"keep": keep}
    expected = gram_loop(model, x, y, model_kwargs=kw)
    _close(loss_gradient_gram(model, x, y, model_kwargs=kw, method="layerwise"), expected)
    assert gram_engine_plan(model).explicit == ()


class _Logits(nn.Module):
    """A Hugging Face classifier as a module returning logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, attention_mask=None):
        out = self.model(input_ids=ids, attention_mask=attention_mask)
        return out.logits if hasattr(out, "logits") else self.head(out.last_hidden_state.mean(dim=1))


def _text_model(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                         num_labels=CLASSES, pad_token_id=0, bos_token_id=1,
                                         eos_token_id=1)  # fmt: skip
        return transformers.GPT2ForSequenceClassification(config)
    if name == "distilbert":
        config = transformers.DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64, vocab_size=100,
                                               max_position_embeddings=32, num_labels=CLASSES)  # fmt: skip
        return transformers.DistilBertForSequenceClassification(config)
    if name == "llama":
        config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=64, vocab_size=100,
                                          max_position_embeddings=32,
                                          num_labels=CLASSES, pad_token_id=0)  # fmt: skip
        return transformers.LlamaForSequenceClassification(config)
    if name == "t5-encoder":
        config = transformers.T5Config(num_layers=2, d_model=32, d_kv=16, num_heads=2, d_ff=64, vocab_size=100)
        return transformers.T5EncoderModel(config)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=32, num_labels=CLASSES)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "distilbert", "bert", "llama", "t5-encoder"])
def test_hugging_face_text_classifiers_with_a_padded_mask(name):
    model = _Logits(_text_model(name))
    if name == "t5-encoder":  # no classification head of its own
        model.head = nn.Linear(32, CLASSES)
    model = model.double()
    ids = torch.randint(1, 100, (6, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[4, 4:] = 0
    ids[mask == 0] = 0
    y = _labels(6)
    kw = {"attention_mask": mask}
    expected = gram_loop(model, ids, y, model_kwargs=kw)
    _close(loss_gradient_gram(model, ids, y, model_kwargs=kw), expected)
    plan = gram_engine_plan(model)
    assert plan.engine == "layerwise" and plan.explicit == (), plan.describe()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
def test_timm_models_take_the_layerwise_path(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(6)
    extra = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **extra).double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = _labels(3)
    _close(loss_gradient_gram(model, x, y), gram_loop(model, x, y))
    plan = gram_engine_plan(model)
    assert plan.engine == "layerwise" and plan.explicit == (), plan.describe()
