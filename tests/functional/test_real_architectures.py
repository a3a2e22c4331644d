"""Every functional entry point leaves models with aliased, shared, tied, frozen and compiled parts exactly as they
were -- the same parameter objects, still ``nn.Parameter``, same values, no ``.grad`` -- and measures them correctly
(equal to the float64 one-example-at-a-time oracles)."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, IN_SHAPE, NUM_CLASSES, parameter_identity
from helpers import assert_unchanged, state_snapshot
from oracles import gram_loop, jacobian_norm_loop, transitions_loop
from torch import nn

from lightning_sensitivity.functional import (
    ellipse_trajectories,
    jacobian_norm,
    jacobian_norm_estimate,
    loss_gradient_gram,
    predict_logits,
    stiffness,
    transition_counts,
)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES[name]().double()


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, *IN_SHAPE, generator=gen, dtype=torch.float64), torch.arange(n) % NUM_CLASSES


CALLS = {
    "jacobian_norm": lambda m, x, y: jacobian_norm(m, x),
    "jacobian_norm_batched": lambda m, x, y: jacobian_norm(m, x, method="batched"),
    "jacobian_norm_per_example": lambda m, x, y: jacobian_norm(m, x, method="per_example"),
    "jacobian_norm_estimate": lambda m, x, y: jacobian_norm_estimate(m, x, num_projections=2),
    "predict_logits": lambda m, x, y: predict_logits(m, x),
    "stiffness": lambda m, x, y: stiffness(m, x, y, chunk_size=4),
    "gram_per_example": lambda m, x, y: loss_gradient_gram(m, x, y, method="per_example"),
    "gram_cross": lambda m, x, y: loss_gradient_gram(m, x[:3], y[:3], x[3:], y[3:]),
    "transitions": lambda m, x, y: transition_counts(m, ellipse_trajectories(x[:6].reshape(2, 3, *IN_SHAPE), 9)),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_entry_point_leaves_parameter_objects_in_place(arch, call):
    model = _model(arch)
    x, y = _data()
    before_ids = parameter_identity(model)
    before = state_snapshot(model)
    CALLS[call](model, x, y)
    assert parameter_identity(model) == before_ids
    assert all(isinstance(p, nn.Parameter) for _, p in model.named_parameters(remove_duplicate=False))
    assert_unchanged(model, before)
    # and the model still trains: every trainable parameter receives a gradient from a plain backward pass
    torch.nn.functional.cross_entropy(model(x), y).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_jacobian_norm_equals_the_loop_oracle(arch):
    model = _model(arch)
    x, _ = _data()
    torch.testing.assert_close(jacobian_norm(model, x), jacobian_norm_loop(model, x), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "per_example"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_gram_equals_the_loop_oracle(arch, method):
    """Tied and shared weights sum their uses' gradients; frozen parameters are left out."""
    model = _model(arch)
    x, y = _data()
    got = loss_gradient_gram(model, x, y, method=method, chunk_size=4)
    torch.testing.assert_close(got, gram_loop(model, x, y), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_transitions_equal_the_loop_oracle(arch):
    model = _model(arch)
    x, _ = _data()
    trajectories = ellipse_trajectories(x.reshape(2, 3, *IN_SHAPE), 12)
    counts = transition_counts(model, trajectories)
    expected = transitions_loop(model, trajectories)
    assert counts.activation.tolist() == expected["activation"]
    assert counts.prediction.tolist() == expected["prediction"]


def test_a_model_whose_forward_is_assigned_on_the_instance():
    """The issue's reproduction: ``m.forward`` is an instance attribute calling an aliased submodule."""
    m = nn.Module()
    m.net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    m.head = m.net[2]
    m.forward = lambda x: m.net(x)
    jacobian_norm(m, torch.randn(5, 4))
    assert type(m.head.weight) is nn.Parameter and m.head.weight is m.net[2].weight
