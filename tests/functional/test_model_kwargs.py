"""Per-example keyword inputs of the model (an attention mask) through every functional entry point.

Each quantity is compared with a float64 oracle that calls the model one example at a time with that example's own
mask, at several chunk sizes.
"""

import pytest
import torch
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop, jacobian_norm_loop, predict_loop, stiffness_loop, transitions_loop
from torch import nn

from lightning_sensitivity.functional import (
    jacobian_norm,
    jacobian_norm_estimate,
    loss_gradient_gram,
    predict_logits,
    stiffness,
    transition_counts,
)

T, D = 4, 3


class MaskedPool(nn.Module):
    """A per-position MLP over ``[N, T, d]``, mean-pooled over the positions ``attention_mask`` keeps."""

    def __init__(self, classes=4, act=nn.Tanh):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(D, 8), act(), nn.Linear(8, classes))

    def forward(self, x, attention_mask):
        h = self.mlp(x)
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(dim=1) / m.sum(dim=1)


def _mask(lengths):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _model(classes=4, act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    return MaskedPool(classes, act).double()


def _batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, D, generator=g, dtype=torch.float64)
    lengths = [4, 2, 3, 1, 4, 2, 3][:n]
    return x, {"attention_mask": _mask(lengths)}


@pytest.mark.parametrize("chunk_size", [None, 2, 3])
@pytest.mark.parametrize("output", ["softmax", "logits", "log_softmax", "sigmoid"])
@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
def test_jacobian_norm_equals_the_masked_loop(method, output, chunk_size):
    model = _model()
    x, kw = _batch()
    before = state_snapshot(model)
    got = jacobian_norm(model, x, output=output, method=method, chunk_size=chunk_size, model_kwargs=kw)
    assert_unchanged(model, before)
    torch.testing.assert_close(got, jacobian_norm_loop(model, x, output, kw), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
def test_padded_positions_do_not_change_the_jacobian_norm(method):
    model = _model()
    x, kw = _batch()
    lengths = kw["attention_mask"].sum(dim=1).tolist()
    got = jacobian_norm(model, x, method=method, model_kwargs=kw)
    # Padding gets exactly zero input gradient: new padding values give bitwise the same norms ...
    padded = ~kw["attention_mask"]
    other = x.masked_fill(padded[:, :, None], 7.5)
    assert torch.equal(jacobian_norm(model, other, method=method, model_kwargs=kw), got)
    # ... and each norm is that of the example cut to its own length.
    for i, length in enumerate(lengths):
        alone = jacobian_norm(model, x[i : i + 1, :length], method=method,
                              model_kwargs={"attention_mask": torch.ones(1, length, dtype=torch.bool)})
        torch.testing.assert_close(got[i : i + 1], alone, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("output", ["logits", "sigmoid"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_jacobian_norm_estimate_is_exact_for_one_output(output, chunk_size):
    # With C = 1 every unit direction is +-1, so C ||J^T v||^2 = ||J||^2 exactly: the estimate must equal the loop.
    model = _model(classes=1)
    x, kw = _batch()
    est, se = jacobian_norm_estimate(model, x, output=output, chunk_size=chunk_size, model_kwargs=kw)
    torch.testing.assert_close(est, jacobian_norm_loop(model, x, output, kw), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(se, torch.zeros_like(se), rtol=0, atol=1e-10)


def test_jacobian_norm_estimate_with_a_mask_is_chunk_independent():
    model = _model(classes=6)
    x, kw = _batch()
    a = jacobian_norm_estimate(model, x, seed=2, model_kwargs=kw)
    b = jacobian_norm_estimate(model, x, seed=2, chunk_size=2, model_kwargs=kw)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 2, 4])
def test_predict_logits_equals_the_masked_loop(chunk_size):
    model = _model()
    x, kw = _batch()
    torch.testing.assert_close(predict_logits(model, x, chunk_size, model_kwargs=kw), predict_loop(model, x, kw))


@pytest.mark.parametrize("chunk_size", [None, 3, 7])
def test_transition_counts_take_one_mask_per_trajectory(chunk_size):
    model = _model(act=nn.ReLU)
    g = torch.Generator().manual_seed(1)
    trajectories = torch.randn(3, 6, T, D, generator=g, dtype=torch.float64)
    kw = {"attention_mask": _mask([4, 1, 2])}  # [K, T]: shared by the trajectory's points
    got = transition_counts(model, trajectories, chunk_size=chunk_size, model_kwargs=kw)
    expected = transitions_loop(model, trajectories, kw)
    assert got.activation.tolist() == expected["activation"]
    assert got.region_changes.tolist() == expected["region_changes"]
    assert got.prediction.tolist() == expected["prediction"]
    assert sum(expected["activation"]) > 0  # the trajectories do cross regions
    with pytest.raises(ValueError, match=r"`model_kwargs\['attention_mask'\]` expected 3 entries .*`trajectories`"):
        transition_counts(model, trajectories, model_kwargs={"attention_mask": kw["attention_mask"].repeat(6, 1)})


@pytest.mark.parametrize("two_sets", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("method", ["layerwise", "per_example", "auto"])
def test_gram_and_stiffness_equal_the_masked_loop(method, chunk_size, two_sets):
    model = _model()
    x, kw = _batch()
    y = torch.tensor([0, 3, 1, 2, 1])
    x2 = y2 = kw2 = None
    if two_sets:
        x2, kw2 = _batch(n=4, seed=1)
        y2 = torch.tensor([2, 0, 0, 3])
    before = state_snapshot(model)
    got = loss_gradient_gram(model, x, y, x2, y2, method=method, chunk_size=chunk_size,
                             model_kwargs=kw, model_kwargs2=kw2)  # fmt: skip
    assert_unchanged(model, before)
    torch.testing.assert_close(got, gram_loop(model, x, y, x2, y2, None, kw, kw2), rtol=1e-6, atol=1e-12)
    s = stiffness(model, x, y, x2, y2, method=method, chunk_size=chunk_size, model_kwargs=kw, model_kwargs2=kw2)
    expected = stiffness_loop(model, x, y, x2, y2, None, kw, kw2)
    torch.testing.assert_close(s.cosine, expected["cosine"], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(s.sign, expected["sign"])
    assert float(s.sign_mean) == pytest.approx(expected["sign_mean"])
    assert float(s.cosine_mean) == pytest.approx(expected["cosine_mean"], rel=1e-6)


def test_a_mask_changes_the_gram():
    # Guards the tests above against a mask that is silently dropped.
    model = _model()
    x, kw = _batch()
    y = torch.tensor([0, 3, 1, 2, 1])
    full = {"attention_mask": torch.ones(5, T, dtype=torch.bool)}
    assert not torch.allclose(loss_gradient_gram(model, x, y, model_kwargs=kw),
                              loss_gradient_gram(model, x, y, model_kwargs=full))  # fmt: skip


def test_bad_model_kwargs():
    model = _model()
    x, kw = _batch()
    y = torch.tensor([0, 3, 1, 2, 1])
    mask = kw["attention_mask"]
    with pytest.raises(TypeError, match="`model_kwargs` expected a mapping"):
        jacobian_norm(model, x, model_kwargs=[mask])
    with pytest.raises(TypeError, match="`model_kwargs` expected str keys"):
        predict_logits(model, x, model_kwargs={0: mask})
    with pytest.raises(TypeError, match=r"`model_kwargs\['attention_mask'\]` expected a torch.Tensor"):
        jacobian_norm_estimate(model, x, model_kwargs={"attention_mask": mask.tolist()})
    with pytest.raises(ValueError, match=r"`model_kwargs\['attention_mask'\]` expected 5 entries .*shape \(4, 4\)"):
        loss_gradient_gram(model, x, y, model_kwargs={"attention_mask": mask[:4]})
    x2, _ = _batch(n=4, seed=1)
    y2 = y[:4]
    with pytest.raises(ValueError, match=r"`model_kwargs2\['attention_mask'\]` expected 4 entries .*`inputs2`"):
        stiffness(model, x, y, x2, y2, model_kwargs=kw, model_kwargs2=kw)
    with pytest.raises(ValueError, match="`model_kwargs2` expected the second set's keyword inputs"):
        loss_gradient_gram(model, x, y, x2, y2, model_kwargs=kw)
    with pytest.raises(ValueError, match="`model_kwargs2` expected None when `inputs2` is None"):
        loss_gradient_gram(model, x, y, model_kwargs=kw, model_kwargs2=kw)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
def test_under_inference_mode_inputs_and_masks_are_cast_to_the_model(method, mask_dtype):
    # float32 inputs and masks into a float64 model: casts made under inference mode must still be differentiable.
    model = _model()
    x, kw = _batch()
    expected = jacobian_norm_loop(model, x, "softmax", kw)
    kw32 = {"attention_mask": kw["attention_mask"].to(mask_dtype)}
    with torch.inference_mode():
        got = jacobian_norm(model, x.float(), method=method, model_kwargs=kw32)
        gram = loss_gradient_gram(model, x.float(), torch.tensor([0, 3, 1, 2, 1]), model_kwargs=kw32)
    assert got.dtype == gram.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)  # the inputs were rounded to float32
    assert not gram.is_inference()


class ScaledHead(nn.Module):
    """Flat inputs through a narrowing first layer (the looped method's ``W W^T`` path), logits scaled per example."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, x, scale):
        return self.net(x) * scale[:, None]


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("method", ["looped", "batched", "per_example"])
def test_float_keyword_inputs_reach_the_narrowing_first_layer_path(method, chunk_size):
    torch.manual_seed(3)
    model = ScaledHead().double()
    x = torch.randn(5, 12, dtype=torch.float64)
    kw = {"scale": torch.tensor([0.5, 2.0, -1.0, 3.0, 1.0], dtype=torch.float32)}  # cast to the model's dtype
    got = jacobian_norm(model, x, output="logits", method=method, chunk_size=chunk_size, model_kwargs=kw)
    expected = jacobian_norm_loop(model, x, "logits", {"scale": kw["scale"].double()})
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    # Logits scale linearly with ``scale``: a check that does not depend on the oracle.
    unit = jacobian_norm(model, x, output="logits", method=method, model_kwargs={"scale": torch.ones(5)})
    torch.testing.assert_close(got, unit * kw["scale"].double().abs(), rtol=1e-6, atol=1e-12)
