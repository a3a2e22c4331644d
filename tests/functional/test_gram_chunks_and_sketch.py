"""Chunked Grams cost one pass over the examples, and sketched Grams are unbiased with a ``1 / sqrt(k)`` error.

Every exact value is compared with the float64 per-example loop (``oracles.gram_loop``); the sketch's mean over
seeds is compared with that loop's Gram within its own standard error.
"""

import math

import pytest
import torch
from oracles import gram_loop
from torch import nn

from lightning_sensitivity import StiffnessMonitor, keys
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.functional import loss_gradient_gram, stiffness
from lightning_sensitivity.functional.gram import sketch as sketch_module
from lightning_sensitivity.probes import probe_set_from_tensors

METHODS = ("layerwise", "per_example")


class Tokens(nn.Module):
    """Embedding (token-id factor pairs), a per-position linear layer (factor pairs over T > 1 positions), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.mix = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))).mean(dim=1))


def cnn() -> nn.Module:
    # A convolution (explicit gradients or unfold factor pairs), a linear head (one-position factor pairs).
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).double()


def tokens() -> nn.Module:
    torch.manual_seed(0)
    return Tokens().double()


def data(model_name: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if model_name == "tokens":
        x = torch.randint(0, 11, (n, 4), generator=g)
    else:
        x = torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


MODELS = {"cnn": cnn, "tokens": tokens}


# ---------------------------------------------------------------- chunked: exact, and one pass
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
def test_chunked_gram_equals_the_loop(method, name, chunk_size):
    model = MODELS[name]()
    x, y = data(name, 7)
    x2, y2 = data(name, 5, seed=1)
    torch.testing.assert_close(
        loss_gradient_gram(model, x, y, method=method, chunk_size=chunk_size), gram_loop(model, x, y), rtol=1e-9,
        atol=1e-12,
    )  # fmt: skip
    torch.testing.assert_close(
        loss_gradient_gram(model, x, y, x2, y2, method=method, chunk_size=chunk_size),
        gram_loop(model, x, y, x2, y2), rtol=1e-9, atol=1e-12,
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("two_sets", [False, True])
def test_chunked_gram_runs_one_forward_per_chunk(method, two_sets):
    """K chunks, K forward passes (the old assembly recomputed the columns: K (K + 1) / 2)."""
    model = cnn()
    x, y = data("cnn", 10)
    x2, y2 = data("cnn", 7, seed=1) if two_sets else (None, None)
    loss_gradient_gram(model, x, y, method=method)  # the layerwise self-check runs once per model: not counted
    calls = []
    handle = model[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        done = []
        loss_gradient_gram(model, x, y, x2, y2, method=method, chunk_size=3, progress=lambda d, t: done.append((d, t)))
    finally:
        handle.remove()
    chunks = 4 + (3 if two_sets else 0)
    assert len(calls) == chunks
    assert done[-1][0] == done[-1][1] and [d for d, _ in done] == list(range(1, len(done) + 1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("two_sets", [False, True])
def test_features_over_the_memory_budget_are_recomputed_exactly_and_said(method, two_sets, monkeypatch):
    """Kept features that would exceed ``STORE_BUDGET_BYTES`` are not kept: column chunks are recomputed (the old
    K (K + 1) / 2 passes, two chunks of memory), with the same Gram and one warning."""
    from lightning_sensitivity.functional.gram import blocks

    monkeypatch.setattr(blocks, "STORE_BUDGET_BYTES", 0)
    monkeypatch.setattr(blocks, "_SAID_RECOMPUTE", set())
    model = cnn()
    x, y = data("cnn", 7)
    x2, y2 = data("cnn", 5, seed=1) if two_sets else (None, None)
    with pytest.warns(UserWarning, match="recomputed"):
        got = loss_gradient_gram(model, x, y, x2, y2, method=method, chunk_size=3)
    torch.testing.assert_close(got, gram_loop(model, x, y, x2, y2), rtol=1e-9, atol=1e-12)
    got = stiffness(model, x, y, x2, y2, method=method, chunk_size=2).gram
    torch.testing.assert_close(got, gram_loop(model, x, y, x2, y2), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- sketched
@pytest.mark.parametrize(
    ("method", "name", "dense"),
    [
        ("layerwise", "cnn", True),
        ("layerwise", "tokens", True),
        ("per_example", "cnn", True),
        # Explicit gradients viewed as zero-padded matrices and projected row-wise Kronecker (large layers).
        ("layerwise", "cnn", False),
        ("per_example", "tokens", False),
    ],
)
def test_sketch_is_unbiased_over_seeds(method, name, dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(sketch_module, "DENSE_ENTRIES", 0)
    model = MODELS[name]()
    x, y = data(name, 5)
    exact = gram_loop(model, x, y)
    draws = torch.stack([
        loss_gradient_gram(model, x, y, method=method, sketch_dim=4, sketch_seed=seed, chunk_size=2)
        for seed in range(250)
    ])  # fmt: skip
    mean, error = draws.mean(dim=0), draws.std(dim=0) / math.sqrt(draws.shape[0])
    # 25 entries, each within 4.5 standard errors of the exact Gram (a false alarm about once in 10^4 runs)
    assert ((mean - exact).abs() <= 4.5 * error + 1e-12).all(), (mean - exact) / error
    # ... and the sketch is not the exact Gram: the test can fail
    assert float((draws[0] - exact).abs().max()) > 1e-3 * float(exact.abs().max())


@pytest.mark.parametrize("method", METHODS)
def test_sketch_error_shrinks_like_one_over_sqrt_k(method):
    model = cnn()
    x, y = data("cnn", 6)
    exact = gram_loop(model, x, y)
    scale = exact.diagonal().sqrt()
    scale = scale[:, None] * scale[None, :]

    def error(k: int) -> float:  # RMS of (estimate - G) / (|g_i| |g_j|) over entries and 20 seeds
        draws = torch.stack([loss_gradient_gram(model, x, y, method=method, sketch_dim=k, sketch_seed=s)
                             for s in range(20)])  # fmt: skip
        return float((((draws - exact) / scale) ** 2).mean().sqrt())

    errors = {k: error(k) for k in (16, 64, 256, 1024)}
    for k in (64, 256, 1024):
        assert 1.5 <= errors[k // 4] / errors[k] <= 2.7, errors  # 2 for 1 / sqrt(k)
    assert 0.3 <= errors[1024] * math.sqrt(1024) <= 3.0, errors  # about sqrt(1 + cos^2) for Gaussian-like sketches


def test_sketch_is_seeded_chunk_independent_and_leaves_the_global_rng_alone():
    model = tokens()
    x, y = data("tokens", 6)
    x2, y2 = data("tokens", 4, seed=1)
    state = torch.random.get_rng_state()
    a = loss_gradient_gram(model, x, y, sketch_dim=32, sketch_seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(loss_gradient_gram(model, x, y, sketch_dim=32, sketch_seed=3, chunk_size=4), a)
    assert not torch.allclose(loss_gradient_gram(model, x, y, sketch_dim=32, sketch_seed=4), a)
    # Both sets go through the same maps: the two-set sketch is a block of the joint set's sketch.
    joint = loss_gradient_gram(model, torch.cat([x, x2]), torch.cat([y, y2]), sketch_dim=32, sketch_seed=3)
    torch.testing.assert_close(loss_gradient_gram(model, x, y, x2, y2, sketch_dim=32, sketch_seed=3), joint[:6, 6:])
    s = stiffness(model, x, y, sketch_dim=32, sketch_seed=3)
    torch.testing.assert_close(s.gram, a)
    assert float(s.cosine.abs().max()) <= 1 + 1e-12  # the sketched diagonal gives the norms


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sketch_dim": 0}, ValueError, "`sketch_dim` expected"),
        ({"sketch_dim": 2.0}, TypeError, "`sketch_dim` expected"),
        ({"sketch_dim": True}, TypeError, "`sketch_dim` expected"),
        ({"sketch_dim": 4, "sketch_seed": -1}, ValueError, "`sketch_seed` expected"),
        ({"sketch_dim": 4, "sketch_seed": "0"}, TypeError, "`sketch_seed` expected"),
    ],
)
def test_sketch_arguments_are_checked(kwargs, error, match):
    model = cnn()
    x, y = data("cnn", 3)
    with pytest.raises(error, match=match):
        loss_gradient_gram(model, x, y, **kwargs)
    with pytest.raises(error, match=match):
        StiffnessMonitor(**kwargs)


def test_monitor_refuses_a_sketch_with_per_layer_blocks():
    with pytest.raises(ValueError, match="`sketch_dim` expected None with `per_layer=True`"):
        StiffnessMonitor(sketch_dim=8, per_layer=True)


def test_monitor_marks_sketched_values():
    model = cnn().float()
    x, y = data("cnn", 12)
    probes = {"val": probe_set_from_tensors(x.float(), y, 12, seed=0)}
    sketched = StiffnessMonitor(groups=("val_val",), sketch_dim=64, sketch_seed=1)
    result = sketched.compute(model, probes, progress_factory("", False), 0)
    assert result.scalars[keys.STIFFNESS_SKETCH_DIM] == 64
    assert sketched.config()["sketch_dim"] == 64 and sketched.config()["sketch_seed"] == 1
    exact = StiffnessMonitor(groups=("val_val",)).compute(model, probes, progress_factory("", False), 0)
    assert keys.STIFFNESS_SKETCH_DIM not in exact.scalars
    sign = keys.metric(keys.STIFFNESS, "val_val", "cosine")
    assert result.scalars[sign] != exact.scalars[sign]  # an estimate, not the exact value
