import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_unchanged, state_snapshot
from oracles import by_distance_loop, class_mean_loop, gram_loop, stiffness_loop
from torch import nn

from lightning_sensitivity.functional import (
    class_stiffness,
    critical_length,
    loss_gradient_gram,
    stiffness,
    stiffness_by_distance,
)


def _data(shape, n, classes=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_gram_matches_naive_loop_float64(model_and_shape, chunk_size):
    model, shape = model_and_shape
    model = model.double()
    x, y = _data(shape, 7)
    expected = gram_loop(model, x, y)
    got = loss_gradient_gram(model, x, y, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


def test_gram_two_sets_matches_naive_loop(model_and_shape):
    model, shape = model_and_shape
    model = model.double()
    x, y = _data(shape, 5, seed=1)
    x2, y2 = _data(shape, 4, seed=2)
    expected = gram_loop(model, x, y, x2, y2)
    torch.testing.assert_close(loss_gradient_gram(model, x, y, x2, y2, chunk_size=2), expected, rtol=1e-6, atol=1e-12)


def test_gram_float32_close_to_float64(model_and_shape):
    model, shape = model_and_shape
    x, y = _data(shape, 6, dtype=torch.float32, seed=3)
    expected = gram_loop(model.double(), x.double(), y)
    got = loss_gradient_gram(model.float(), x, y)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)


def test_custom_loss_and_frozen_parameters_are_excluded():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    model[0].weight.requires_grad_(False)
    x, y = _data((5,), 5, classes=3, seed=4)

    def loss_fn(logits, targets):
        return F.cross_entropy(logits, targets, reduction="none") * 2.0  # unreduced losses are fine too

    expected = gram_loop(model, x, y, loss_fn=loss_fn)  # the oracle only differentiates requires_grad params
    torch.testing.assert_close(loss_gradient_gram(model, x, y, loss_fn=loss_fn), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("two_sets", [False, True])
def test_stiffness_matches_naive_loop(model_and_shape, two_sets):
    model, shape = model_and_shape
    model = model.double()
    x, y = _data(shape, 6, seed=5)
    x2, y2 = _data(shape, 5, seed=6) if two_sets else (None, None)
    expected = stiffness_loop(model, x, y, x2, y2)
    got = stiffness(model, x, y, x2, y2, chunk_size=4)
    torch.testing.assert_close(got.sign, expected["sign"])
    torch.testing.assert_close(got.cosine, expected["cosine"], rtol=1e-6, atol=1e-12)
    assert got.sign_mean.item() == pytest.approx(expected["sign_mean"], abs=1e-12)
    assert got.cosine_mean.item() == pytest.approx(expected["cosine_mean"], rel=1e-6)
    assert got.self_pairs is not two_sets


def test_stiffness_model_untouched_under_inference_mode():
    torch.manual_seed(7)
    from helpers import bn_dropout_cnn

    model = bn_dropout_cnn()
    model.train()
    x, y = _data((1, 6, 6), 4, dtype=torch.float32, seed=7)
    model(x).sum().backward()
    before = state_snapshot(model)
    expected = stiffness(model, x, y)
    with torch.inference_mode():
        got = stiffness(model, x.clone(), y.clone())
    assert_unchanged(model, before)
    torch.testing.assert_close(got.gram, expected.gram)


def test_zero_gradient_gives_zero_cosine_not_nan():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x = torch.randn(3, 3)
    s = stiffness(model, x, torch.zeros(3, dtype=torch.long), loss_fn=lambda lo, t: (lo * 0).sum())
    assert torch.equal(s.cosine, torch.zeros(3, 3)) and torch.equal(s.sign, torch.zeros(3, 3))


@pytest.mark.parametrize("exclude_self", [True, False])
def test_class_stiffness_matches_loop(exclude_self):
    g = torch.Generator().manual_seed(8)
    m = torch.randn(9, 9, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 0, 1, 2])
    got = class_stiffness(m, labels, num_classes=4, exclude_self=exclude_self)
    expected = torch.tensor(class_mean_loop(m, labels, num_classes=4, exclude_self=exclude_self), dtype=torch.float64)
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert torch.isnan(got[3]).all()  # class 3 has no example


def test_class_stiffness_two_sets_matches_loop():
    g = torch.Generator().manual_seed(9)
    m = torch.randn(5, 7, generator=g, dtype=torch.float64)
    l1, l2 = torch.tensor([0, 1, 2, 1, 0]), torch.tensor([2, 2, 1, 0, 0, 1, 2])
    expected = torch.tensor(class_mean_loop(m, l1, l2, num_classes=3), dtype=torch.float64)
    torch.testing.assert_close(class_stiffness(m, l1, l2, num_classes=3), expected, equal_nan=True)


def test_class_stiffness_single_example_class_has_no_same_class_pair():
    m = torch.ones(3, 3)
    got = class_stiffness(m, torch.tensor([0, 1, 1]), num_classes=2)
    assert math.isnan(got[0, 0]) and got[1, 1] == 1 and got[0, 1] == 1


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("two_sets", [False, True])
def test_by_distance_matches_loop(distance, two_sets):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(8, 2, 3, generator=g, dtype=torch.float64)
    x2 = torch.randn(6, 2, 3, generator=g, dtype=torch.float64) if two_sets else None
    m = torch.randn(8, 6 if two_sets else 8, generator=g, dtype=torch.float64)
    edges, mean, count = stiffness_by_distance(m, x, x2, num_bins=7, distance=distance)
    exp_mean, exp_count = by_distance_loop(m, x, x2, num_bins=7, distance=distance)
    assert count.tolist() == exp_count
    torch.testing.assert_close(mean, torch.tensor(exp_mean, dtype=torch.float64), equal_nan=True)
    assert edges.shape == (8,) and edges[0] == 0
    if distance == "cosine":
        assert edges[-1] == 2.0


def test_critical_length_hand_cases():
    centers = torch.tensor([0.5, 1.5, 2.5, 3.5])
    assert critical_length(centers, torch.tensor([0.6, 0.2, -0.2, -0.5])) == pytest.approx(2.0)
    assert critical_length(centers, torch.tensor([0.6, float("nan"), -0.6, 0.1])) == pytest.approx(1.5)
    assert critical_length(centers, torch.tensor([-0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.5)
    assert math.isnan(critical_length(centers, torch.tensor([0.6, 0.2, 0.1, 0.05])))
    assert critical_length(centers, torch.tensor([0.4, 0.0, -1.0, -1.0])) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x, y: loss_gradient_gram(m, x, y[:3]), ValueError, r"`targets`.*5 entries.*got 3"),
        # Any dtype and shape [N, ...] is the loss's business; a non-tensor or a 0-dim tensor is not.
        (lambda m, x, y: loss_gradient_gram(m, x, y.tolist()), TypeError, r"`targets`.*torch.Tensor"),
        (lambda m, x, y: loss_gradient_gram(m, x, y[0]), ValueError, r"`targets`.*0-dim"),
        (lambda m, x, y: loss_gradient_gram(m, x[0], y), ValueError, "`inputs`"),
        (lambda m, x, y: loss_gradient_gram(m, x, y, x), ValueError, "`inputs2` and `targets2`"),
        (lambda m, x, y: loss_gradient_gram(m, x, y, torch.randn(2, 7), y[:2]), ValueError, r"`inputs2`.*\(4,\)"),
        (lambda m, x, y: loss_gradient_gram(m, x, y, chunk_size=0), ValueError, "`chunk_size`"),
        (lambda m, x, y: loss_gradient_gram(m, x, y, loss_fn="ce"), TypeError, "`loss_fn`"),
        (lambda m, x, y: stiffness(nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (2, 2))), x, y), ValueError,
         r"\[N, C\]"),
        (lambda m, x, y: class_stiffness(torch.ones(5, 5), y, num_classes=0), ValueError, "`num_classes`"),
        (lambda m, x, y: class_stiffness(torch.ones(5, 5), y, num_classes=2), ValueError, r"`labels`.*\[0, 2\)"),
        (lambda m, x, y: class_stiffness(torch.ones(5), y, num_classes=3), ValueError, "`matrix`.*2-D"),
        (lambda m, x, y: class_stiffness(torch.ones(5, 4), y, num_classes=3), ValueError, "square"),
        (lambda m, x, y: stiffness_by_distance(torch.ones(5, 5), x, num_bins=0), ValueError, "`num_bins`"),
        (lambda m, x, y: stiffness_by_distance(torch.ones(5, 5), x, distance="l1"), ValueError, "`distance`"),
        (lambda m, x, y: stiffness_by_distance(torch.ones(4, 4), x), ValueError, r"`matrix`.*\(5, 5\)"),
        (lambda m, x, y: critical_length(torch.ones(3), torch.ones(2)), ValueError, "same length"),
    ],
)
def test_bad_inputs(call, error, match):
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 1])
    with pytest.raises(error, match=match):
        call(model, x, y)


def test_no_trainable_parameters():
    model = nn.Linear(4, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable parameters"):
        loss_gradient_gram(model, torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_non_finite_gradients_give_nan_not_zero_stiffness():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    s = stiffness(model, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert torch.isnan(s.sign).all() and torch.isnan(s.cosine).all()
    assert torch.isnan(s.sign_mean) and torch.isnan(s.cosine_mean)


@pytest.mark.parametrize(
    "matrix, inputs", [(torch.full((3, 3), float("nan")), torch.randn(3, 4)), (torch.ones(1, 1), torch.randn(1, 4))]
)
def test_by_distance_without_any_finite_pair_is_all_nan(matrix, inputs):
    edges, mean, count = stiffness_by_distance(matrix, inputs, num_bins=5)
    assert edges.shape == (6,) and torch.isnan(mean).all() and count.sum() == 0
