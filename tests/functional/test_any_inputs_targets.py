"""Inputs and targets of models nobody here wrote: token ids into an ``nn.Embedding``, multi-label and regression
targets with their own losses, all against float64 one-example-at-a-time oracles."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, state_snapshot, tanh_mlp
from oracles import gram_loop, predict_loop, stiffness_loop
from torch import nn

from lightning_sensitivity.functional import (
    jacobian_norm,
    jacobian_norm_estimate,
    loss_gradient_gram,
    predict_logits,
    stiffness,
    transition_counts,
)
from lightning_sensitivity.functional._inputs import check_loss_fn, match_model

VOCAB, T = 11, 5


class TokenModel(nn.Module):
    """Embedding, mean-pool over the kept positions, linear head: a model whose inputs are token ids ``[N, T]``."""

    def __init__(self, classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4, classes)

    def forward(self, ids, attention_mask=None):
        e = self.embed(ids)
        if attention_mask is None:
            return self.head(e.mean(dim=1))
        m = attention_mask.to(e.dtype).unsqueeze(-1)
        return self.head((e * m).sum(dim=1) / m.sum(dim=1))


def _tokens(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, T), generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    return ids, {"attention_mask": torch.arange(T)[None, :] < lengths[:, None]}, torch.randint(0, 3, (n,), generator=g)


def _token_model(frozen_embedding=False):
    torch.manual_seed(0)
    model = TokenModel().double()
    model.embed.weight.requires_grad_(not frozen_embedding)
    return model


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_predict_logits_takes_token_ids(chunk_size, with_mask):
    model = _token_model()
    ids, kw, _ = _tokens()
    kw = kw if with_mask else None
    got = predict_logits(model, ids, chunk_size, model_kwargs=kw)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, predict_loop(model, ids, kw))


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("method", ["per_example", "auto"])
def test_gram_of_a_token_model_equals_the_loop(method, chunk_size, with_mask):
    model = _token_model()
    ids, kw, y = _tokens()
    ids2, kw2, y2 = _tokens(n=4, seed=1)
    kw, kw2 = (kw, kw2) if with_mask else (None, None)
    before = state_snapshot(model)
    got = loss_gradient_gram(model, ids, y, method=method, chunk_size=chunk_size, model_kwargs=kw)
    assert_unchanged(model, before)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, gram_loop(model, ids, y, model_kwargs=kw), rtol=1e-6, atol=1e-12)
    cross = loss_gradient_gram(model, ids, y, ids2, y2, method=method, chunk_size=chunk_size, model_kwargs=kw,
                               model_kwargs2=kw2)  # fmt: skip
    torch.testing.assert_close(cross, gram_loop(model, ids, y, ids2, y2, None, kw, kw2), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_layerwise_takes_token_ids_when_the_embedding_is_frozen(chunk_size):
    # A frozen embedding is a constant lookup, so the layerwise engine itself (no fallback) sees integer inputs.
    model = _token_model(frozen_embedding=True)
    ids, kw, y = _tokens()
    got = loss_gradient_gram(model, ids, y, method="layerwise", chunk_size=chunk_size, model_kwargs=kw)
    torch.testing.assert_close(got, gram_loop(model, ids, y, model_kwargs=kw), rtol=1e-6, atol=1e-12)


def test_derivatives_with_respect_to_token_ids_are_refused_with_a_hint():
    model = _token_model()
    ids, _, _ = _tokens()
    for call in (
        lambda: jacobian_norm(model, ids),
        lambda: jacobian_norm_estimate(model, ids),
        lambda: transition_counts(model, ids.reshape(2, 3, T)),
    ):
        with pytest.raises(TypeError, match=r"expected a floating-point tensor, got dtype torch.int64.*embed them"):
            call()


def test_match_model_keeps_integer_inputs():
    params = {"w": torch.zeros(2, dtype=torch.float64)}
    assert match_model(torch.arange(3), params).dtype == torch.int64
    assert match_model(torch.ones(3, dtype=torch.bool), params).dtype == torch.bool
    assert match_model(torch.ones(3, dtype=torch.float32), params).dtype == torch.float64


def _multi_label(n, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, generator=g, dtype=torch.float64)
    return x, (torch.rand(n, k, generator=g) < 0.4).double()


LOSSES = {
    # name: (loss_fn, number of model outputs, targets of n examples)
    "bce_multi_hot": (F.binary_cross_entropy_with_logits, 4, lambda n, s: _multi_label(n, 4, s)[1]),
    "bce_module": (nn.BCEWithLogitsLoss(), 4, lambda n, s: _multi_label(n, 4, s)[1]),
    "mse_vector": (F.mse_loss, 4, lambda n, s: torch.randn(n, 4, generator=torch.Generator().manual_seed(s),
                                                           dtype=torch.float64)),
    "mse_scalar": (lambda out, t: F.mse_loss(out.squeeze(-1), t), 1,
                   lambda n, s: torch.randn(n, generator=torch.Generator().manual_seed(s), dtype=torch.float64)),
    "soft_labels_ce": (F.cross_entropy, 4, lambda n, s: torch.rand(n, 4, generator=torch.Generator().manual_seed(s),
                                                                   dtype=torch.float64).softmax(dim=1)),
    "unreduced_ce": (nn.CrossEntropyLoss(reduction="none"), 4, lambda n, s: torch.arange(n) % 4),
}  # fmt: skip


@pytest.mark.parametrize("two_sets", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("method", ["layerwise", "per_example"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_any_loss_and_targets_equal_the_loop(loss, method, chunk_size, two_sets):
    loss_fn, outputs, make_targets = LOSSES[loss]
    torch.manual_seed(0)
    model = tanh_mlp(12, outputs).double()
    x, _ = _multi_label(5)
    y = make_targets(5, 0)
    x2, y2 = (_multi_label(4, seed=1)[0], make_targets(4, 1)) if two_sets else (None, None)
    before = state_snapshot(model)
    got = loss_gradient_gram(model, x, y, x2, y2, loss_fn=loss_fn, method=method, chunk_size=chunk_size)
    assert_unchanged(model, before)
    expected = gram_loop(model, x, y, x2, y2, loss_fn)
    assert expected.abs().max() > 1e-6  # a real measurement, not zeros on both sides
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    s = stiffness(model, x, y, x2, y2, loss_fn=loss_fn, method=method, chunk_size=chunk_size)
    oracle = stiffness_loop(model, x, y, x2, y2, loss_fn)
    torch.testing.assert_close(s.cosine, oracle["cosine"], rtol=1e-6, atol=1e-12)
    assert float(s.sign_mean) == pytest.approx(oracle["sign_mean"])


def test_targets_are_checked_for_type_and_length_only():
    model = tanh_mlp(12, 4)
    x = torch.randn(5, 12)
    with pytest.raises(TypeError, match="`targets` expected a torch.Tensor of shape"):
        loss_gradient_gram(model, x, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"`targets` expected 5 entries along dimension 0 to match `inputs`, got 4"):
        loss_gradient_gram(model, x, torch.zeros(4, 4), loss_fn=F.binary_cross_entropy_with_logits)
    with pytest.raises(ValueError, match="`targets` expected a tensor of shape"):
        loss_gradient_gram(model, x, torch.tensor(1))
    with pytest.raises(ValueError, match=r"`targets2` expected 3 entries .*`inputs2`"):
        stiffness(model, x, torch.zeros(5, dtype=torch.long), torch.randn(3, 12), torch.zeros(2, dtype=torch.long))


def test_a_loss_class_is_refused_by_name():
    model = tanh_mlp(12, 4)
    x, y = torch.randn(3, 12), torch.tensor([0, 1, 2])
    message = r"`loss_fn` expected .* got the class CrossEntropyLoss; pass an instance nn.CrossEntropyLoss\(\)"
    with pytest.raises(TypeError, match=message):
        loss_gradient_gram(model, x, y, loss_fn=nn.CrossEntropyLoss)
    with pytest.raises(TypeError, match=message):
        check_loss_fn(nn.CrossEntropyLoss)
    with pytest.raises(TypeError, match="`criterion` expected a callable"):
        check_loss_fn("mse", name="criterion")
    check_loss_fn(nn.CrossEntropyLoss())
    check_loss_fn(F.cross_entropy)
