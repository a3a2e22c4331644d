"""Shared test helpers: small seeded models the oracles are run on, and model-state snapshots.

A module of its own (not ``conftest``): several ``conftest.py`` files share that module name, so importing helpers
from one of them would pick up whichever was loaded last.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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


def rng_states() -> dict:
    """The global torch, numpy and python random states (what a measurement must leave as it found them)."""
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def prototype_data(
    n: int, seed: int, *, num_classes: int, shape: tuple[int, ...], noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of ``num_classes`` balanced classes: a fixed prototype per class (seed 1234) plus Gaussian noise,
    shuffled by ``seed``; private generators only, so drawing data never moves the global random streams."""
    prototypes = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    return prototypes[y] + noise * torch.randn(n, *shape, generator=gen), y
