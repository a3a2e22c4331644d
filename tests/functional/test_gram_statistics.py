"""gram_statistics against statistics computed directly from explicit per-example gradient vectors (float64)."""

import math

import pytest
import torch
from torch import nn

from lightning_sensitivity.functional import gram_statistics


def _per_example_gradients(n=9, classes=3, seed=0):
    """Oracle input: one `torch.autograd.grad` call per example of a tiny float64 MLP, flattened."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, classes)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    params = list(model.parameters())
    grads = []
    for i in range(n):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads.append(torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, params)]))
    return torch.stack(grads), y


def _gram(gs):
    return torch.tensor([[float(a @ b) for b in gs] for a in gs], dtype=torch.float64)


def _oracle(gs, y, classes, batch):
    m = gs.shape[0]
    mean = gs.mean(dim=0)
    sq_norms = torch.tensor([float(g @ g) for g in gs], dtype=torch.float64)
    mean_sq = float(mean @ mean)
    out = {
        "coherence": mean_sq / float(sq_norms.mean()),
        "gradient_diversity": float(sq_norms.sum()) / float(gs.sum(0) @ gs.sum(0)),
        "fisher_trace": float(sq_norms.mean()),
    }
    out["m_coherence"] = m * out["coherence"]
    # Kernel-target alignment as a double loop over pairs of gradient vectors.
    inner = g_sq = y_sq = 0.0
    for i in range(m):
        for j in range(m):
            k = float(gs[i] @ gs[j])
            t = 1.0 if y[i] == y[j] else -1.0 / (classes - 1)
            inner, g_sq, y_sq = inner + k * t, g_sq + k * k, y_sq + t * t
    out["label_alignment"] = inner / math.sqrt(g_sq * y_sq)
    # Byrd et al. norm test: sum over coordinates of the sample variance of the gradient vectors.
    var_l1 = float(gs.var(dim=0, unbiased=True).sum())
    out["norm_test"] = math.sqrt(var_l1 / (batch * mean_sq))
    # Bollapragada et al. inner-product test: sample variance of the projections g_i . ḡ.
    proj = torch.tensor([float(g @ mean) for g in gs], dtype=torch.float64)
    out["inner_product_test"] = math.sqrt(float(proj.var(unbiased=True)) / (batch * mean_sq**2))
    # Orthogonality test: sample variance of the components orthogonal to ḡ.
    ortho = torch.stack([g - float(g @ mean) / mean_sq * mean for g in gs])
    out["orthogonality_test"] = math.sqrt(float(ortho.var(dim=0, unbiased=True).sum()) / (batch * mean_sq))
    return out


def _cockpit_style(gs):
    """Cockpit's own expressions, on BackPACK-style individual gradients g_i / B of a mean loss (B = m)."""
    b = gs.shape[0]
    scaled = gs / b
    batch_dot = scaled @ scaled.T
    batch_l2 = batch_dot.diag()
    grad_l2 = float(gs.mean(0) @ gs.mean(0))
    var_l1 = (b**2 * batch_l2.sum() - b * grad_l2) / (b - 1)
    projections = b * batch_dot.sum(1)
    var_proj = ((projections**2).sum() - b * grad_l2**2) / (b - 1)
    var_orth = (b**2 * batch_l2.sum() - (projections**2 / grad_l2).sum()) / (b - 1)
    return {
        "norm_test": float((var_l1 / b / grad_l2).sqrt()),
        "inner_product_test": float((var_proj / b / grad_l2**2).sqrt()),
        "orthogonality_test": float((var_orth / b / grad_l2).sqrt()),
    }


@pytest.mark.parametrize("batch_size", [None, 64])
def test_statistics_match_per_example_gradient_oracle(batch_size):
    gs, y = _per_example_gradients()
    got = gram_statistics(_gram(gs), y, num_classes=3, batch_size=batch_size)
    expected = _oracle(gs, y.tolist(), 3, batch_size or gs.shape[0])
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_tests_match_cockpits_definitions():
    gs, y = _per_example_gradients(n=7, seed=1)
    got = gram_statistics(_gram(gs))
    for key, value in _cockpit_style(gs).items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_hand_cases():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # two equal gradients: coherent, no noise
    stats = gram_statistics(same @ same.T)
    assert stats["coherence"] == pytest.approx(1.0) and stats["m_coherence"] == pytest.approx(2.0)
    assert stats["gradient_diversity"] == pytest.approx(0.5) and stats["fisher_trace"] == pytest.approx(5.0)
    assert stats["norm_test"] == 0.0 and stats["inner_product_test"] == 0.0 and stats["orthogonality_test"] == 0.0
    ortho = torch.eye(4)  # orthogonal unit gradients: coherence 1/m
    stats = gram_statistics(ortho, torch.tensor([0, 1, 2, 3]))
    assert stats["coherence"] == pytest.approx(0.25) and stats["gradient_diversity"] == pytest.approx(1.0)
    # <I, Y> = trace(Y) = 4; ||I|| = 2; ||Y||^2 = 4 + 12 / 9.
    assert stats["label_alignment"] == pytest.approx(4 / (2 * math.sqrt(4 + 12 / 9)))


def test_nan_cases():
    gs, y = _per_example_gradients(n=4)
    gram = _gram(gs)
    assert math.isnan(gram_statistics(gram, y.double())["label_alignment"])  # regression-like targets
    assert math.isnan(gram_statistics(gram)["label_alignment"])
    assert math.isnan(gram_statistics(gram, torch.zeros(4, dtype=torch.long))["label_alignment"])  # C = 1
    one = gram_statistics(gram[:1, :1])
    assert math.isnan(one["norm_test"]) and one["coherence"] == pytest.approx(1.0)
    zero = gram_statistics(torch.zeros(3, 3))
    assert all(math.isnan(zero[k]) for k in ("coherence", "gradient_diversity", "norm_test", "orthogonality_test"))
    assert zero["fisher_trace"] == 0.0
    nan = gram_statistics(torch.full((3, 3), float("nan")))
    assert math.isnan(nan["coherence"]) and math.isnan(nan["norm_test"])


def test_gram_statistics_bad_input():
    gram = torch.eye(3)
    with pytest.raises(TypeError, match="`gram`"):
        gram_statistics([[1.0]])
    with pytest.raises(ValueError, match="`gram`"):
        gram_statistics(torch.ones(3, 2))
    with pytest.raises(ValueError, match="`gram`"):
        gram_statistics(torch.ones(0, 0))
    with pytest.raises(ValueError, match="`batch_size`"):
        gram_statistics(gram, batch_size=0)
    with pytest.raises(TypeError, match="`batch_size`"):
        gram_statistics(gram, batch_size=2.0)
    with pytest.raises(ValueError, match="`targets`"):
        gram_statistics(gram, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`targets`"):
        gram_statistics(gram, torch.tensor([0, 1, 5]), num_classes=3)
    with pytest.raises(ValueError, match="`num_classes`"):
        gram_statistics(gram, num_classes=0)
