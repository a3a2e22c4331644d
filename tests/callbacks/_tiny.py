"""The callback tests' shared fit: presets of the harness (``tests/helpers.py``), the non-perturbation spy and the
one seeded 2-epoch fit with all three monitors (fixture ``fitted``, imported by the per-callback test files).

Data :class:`helpers.TinyData` (10 classes, inputs [1, 8, 8]), model :class:`helpers.Classifier` around
:class:`helpers.TinyCNN` (BatchNorm and Dropout), 200 training points.

This is not a ``conftest.py``: a second module named ``conftest`` would replace ``tests/conftest.py`` in
``sys.modules`` and break the ``from conftest import ...`` of the other test packages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import Classifier, TinyData, read_events, rng_states

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

NUM_CLASSES = TinyData.num_classes
SHAPE = TinyData.shape
MAX_EPOCHS = 2

# tests/test_keys.py (edited on another branch) imports TinyModule, TinyData and read_events from here; every other
# test imports them from helpers.
TinyModule = Classifier


def small_monitors(**common: Any) -> list[pl.Callback]:
    """The three monitors with settings small enough for a test (probe sets of 40, few trajectories)."""
    common = {"num_samples": 40, **common}
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=4, num_points=24, **common),
        StiffnessMonitor(num_distance_bins=8, **common),
    ]


def make_trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    """:func:`helpers.make_trainer` with this suite's defaults: 2 epochs, a TensorBoard logger at ``tb/version_0``."""
    return helpers.make_trainer(tmp_path, callbacks, **{"logger": "tb", "max_epochs": MAX_EPOCHS, **kwargs})


def training_snapshot(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Everything a measurement must leave alone: weights, buffers, .grad, flags, optimizer state, RNG streams."""
    return {
        "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        "grad": [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()],
        "training": [m.training for m in pl_module.modules()],
        "optimizer": [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers],
        "rng": rng_states(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
    }


def snapshot_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    diffs = [f"state:{k}" for k in a["state"] if not torch.equal(a["state"][k], b["state"][k])]
    for i, (ga, gb) in enumerate(zip(a["grad"], b["grad"], strict=True)):
        if not ((ga is None and gb is None) or (ga is not None and gb is not None and torch.equal(ga, gb))):
            diffs.append(f"grad:{i}")
    if a["training"] != b["training"]:
        diffs.append("training flags")
    if not nested_equal(a["optimizer"], b["optimizer"]):
        diffs.append("optimizer")
    if not rng_equal(a["rng"], b["rng"]):
        diffs.append("rng")
    if (a["grad_enabled"], a["inference"]) != (b["grad_enabled"], b["inference"]):
        diffs.append("grad mode")
    return diffs


def nested_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def rng_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`helpers.rng_states` are the same streams at the same positions."""
    numpy_a, numpy_b = a["numpy"], b["numpy"]
    return (
        torch.equal(a["torch"], b["torch"])
        and numpy_a[0] == numpy_b[0]
        and np.array_equal(numpy_a[1], numpy_b[1])
        and numpy_a[2:] == numpy_b[2:]
        and a["python"] == b["python"]
    )


class Spy(pl.Callback):
    """Placed before and after the monitors: the "after" spy records any difference from the "before" snapshot."""

    def __init__(self, store: dict[str, Any], role: str) -> None:
        self.store, self.role = store, role

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hook: str) -> None:
        snap = training_snapshot(trainer, pl_module)
        if self.role == "before":
            self.store["before"] = snap
        else:
            self.store.setdefault("checked", []).append(hook)
            self.store.setdefault("diffs", []).extend(
                f"{hook}:{d}" for d in snapshot_differences(self.store["before"], snap)
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, "on_train_start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, f"on_train_epoch_end[{trainer.current_epoch}]")


def fit_reference(
    tmp: Path, callbacks: list[pl.Callback], **kwargs: Any
) -> tuple[pl.Trainer, Classifier, tuple[Any, ...]]:
    """The seeded reference fit used with and without monitors; returns the RNG states right after ``fit``."""
    pl.seed_everything(0, verbose=False)
    module = Classifier()
    trainer = make_trainer(tmp, callbacks, **kwargs)
    trainer.fit(module, datamodule=TinyData())
    return trainer, module, rng_states()


@dataclass
class FittedRun:
    log_dir: Path
    events: Any
    module: Classifier
    monitors: list[pl.Callback]
    trainer: pl.Trainer
    rng_after: tuple[Any, ...]
    spy: dict[str, Any]

    def monitor(self, cls: type) -> Any:
        return next(m for m in self.monitors if isinstance(m, cls))


_FITTED: list[FittedRun] = []


@pytest.fixture
def fitted(tmp_path_factory: pytest.TempPathFactory) -> FittedRun:
    """One seeded 2-epoch fit with all three monitors and a TensorBoard logger, run once per session.

    Cached in this module rather than by fixture scope: each test file imports the fixture, which gives each file its
    own fixture definition, and the fit is the expensive part.
    """
    if _FITTED:
        return _FITTED[0]
    tmp = tmp_path_factory.mktemp("fitted")
    monitors = small_monitors()
    spy: dict[str, Any] = {}
    trainer, module, rng_after = fit_reference(tmp, [Spy(spy, "before"), *monitors, Spy(spy, "after")])
    log_dir = Path(trainer.logger.log_dir)
    _FITTED.append(FittedRun(log_dir, read_events(log_dir), module, monitors, trainer, rng_after, spy))
    return _FITTED[0]
