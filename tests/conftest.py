"""Shared fixtures: small seeded models of the three kinds the oracles are run on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import oracles`

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def relu_mlp(in_features: int = 12, num_classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, num_classes)
    )


def tanh_mlp(in_features: int = 12, num_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 10), nn.Tanh(), nn.Linear(10, num_classes))


def bn_dropout_cnn(num_classes: int = 4) -> nn.Module:
    """Conv + BatchNorm + ReLU + Dropout on [1, 6, 6] inputs; BN has non-trivial running stats."""
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(27, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, num_classes),
    )
    with torch.no_grad():  # give BatchNorm running statistics that are not the identity
        model.train()
        for _ in range(3):
            model(torch.randn(16, 1, 6, 6))
        model.eval()
    return model


MODEL_FACTORIES = {
    "relu_mlp": (relu_mlp, (12,)),
    "tanh_mlp": (tanh_mlp, (3, 4)),
    "bn_dropout_cnn": (bn_dropout_cnn, (1, 6, 6)),
}


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_and_shape(request):
    torch.manual_seed(0)
    factory, shape = MODEL_FACTORIES[request.param]
    return factory(), shape


def state_snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = state_snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    for a, b in zip(before["grad"], after["grad"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["training"] == after["training"]
    assert torch.equal(before["rng"], after["rng"])
