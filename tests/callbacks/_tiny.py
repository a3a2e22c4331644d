"""A tiny classifier and datamodule, trainer factories and TensorBoard readers for the callback tests.

10 classes, inputs [1, 8, 8] (class prototype + noise), a CNN with BatchNorm and Dropout, 200 training points.
One fit with all three monitors is shared by the per-callback test files (fixture ``fitted``, imported by them).

This is not a ``conftest.py``: a second module named ``conftest`` would replace ``tests/conftest.py`` in
``sys.modules`` and break the ``from conftest import ...`` of the other test packages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import prototype_data, rng_states  # noqa: F401 (rng_states: re-exported for the tests here)
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

NUM_CLASSES = 10
SHAPE = (1, 8, 8)
MAX_EPOCHS = 2


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of ``NUM_CLASSES`` classes around fixed prototypes (see :func:`helpers.prototype_data`)."""
    return prototype_data(n, seed, num_classes=NUM_CLASSES, shape=SHAPE, noise=0.8)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyModule(pl.LightningModule):
    def __init__(self, net: nn.Module | None = None, lr: float = 0.1) -> None:
        super().__init__()
        self.net = net if net is not None else TinyCNN()
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyData(pl.LightningDataModule):
    def __init__(self, n_train: int = 200, n_val: int = 100, batch_size: int = 50) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    def setup(self, stage: str) -> None:
        self.train_set = TensorDataset(*make_data(self.n_train, seed=1))
        self.val_set = TensorDataset(*make_data(self.n_val, seed=2))
        self.test_set = TensorDataset(*make_data(self.n_val, seed=3))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


def small_monitors(**common: Any) -> list[pl.Callback]:
    """The three monitors with settings small enough for a test (probe sets of 40, few trajectories)."""
    common = {"num_samples": 40, **common}
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=4, num_points=24, **common),
        StiffnessMonitor(num_distance_bins=8, **common),
    ]


def make_trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": MAX_EPOCHS,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": TensorBoardLogger(str(tmp_path), name="tb", version=0, default_hp_metric=False),
        "deterministic": True,
        "default_root_dir": str(tmp_path),
    }
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


def read_events(log_dir: str | Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


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
) -> tuple[pl.Trainer, TinyModule, tuple[Any, ...]]:
    """The seeded reference fit used with and without monitors; returns the RNG states right after ``fit``."""
    pl.seed_everything(0, verbose=False)
    module = TinyModule()
    trainer = make_trainer(tmp, callbacks, **kwargs)
    trainer.fit(module, datamodule=TinyData())
    return trainer, module, rng_states()


@dataclass
class FittedRun:
    log_dir: Path
    events: Any
    module: TinyModule
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
