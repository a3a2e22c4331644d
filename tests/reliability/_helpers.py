"""Shared pieces of the reliability tests: data that consumes every global random stream, two small nets with
BatchNorm and Dropout, a LightningModule with an LR scheduler, seeded fits and bitwise comparisons of their outcome.

The data is built so that any disturbance of training shows: the training loader shuffles (a sampler seeded from the
global torch generator), every item is augmented with draws from the global torch, numpy *and* python generators,
and Dropout draws from the torch generator during training.
"""

from __future__ import annotations

import copy
import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from helpers import prototype_data, rng_states  # noqa: F401 (rng_states: re-exported for the tests here)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

NUM_CLASSES = 4
SHAPE = (1, 8, 8)
SENSITIVITY = "sensitivity/"


def make_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points of ``NUM_CLASSES`` classes around fixed prototypes (see :func:`helpers.prototype_data`)."""
    return prototype_data(n, seed, num_classes=NUM_CLASSES, shape=SHAPE, noise=0.7)


class AugmentedDataset(Dataset):
    """``(x, y)`` items, randomly augmented from the *global* torch, numpy and python generators.

    Args:
        expose_targets: give the dataset a ``targets`` attribute (the probe draw's label fast path); without it the
            monitors must read items -- and so run the augmentation -- to find the labels.
        as_dict: yield ``{"image": x, "label": y}`` instead of a tuple.
    """

    def __init__(
        self, x: Tensor, y: Tensor, *, augment: bool = True, expose_targets: bool = True, as_dict: bool = False
    ) -> None:
        self.x, self.y, self.augment, self.as_dict = x, y, augment, as_dict
        if expose_targets:
            self.targets = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Any:
        x = self.x[i]
        if self.augment:
            x = x + 0.05 * torch.randn_like(x)
            if np.random.rand() < 0.5:
                x = x.flip(-1)
            x = x * random.uniform(0.9, 1.1)
        return {"image": x, "label": self.y[i]} if self.as_dict else (x, self.y[i])


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, NUM_CLASSES)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, NUM_CLASSES),
    )


NETS = {"mlp": mlp, "cnn": cnn}


def split(batch: Any) -> tuple[Tensor, Tensor]:
    return (batch["image"], batch["label"]) if isinstance(batch, dict) else (batch[0], batch[1])


class ReliableModule(pl.LightningModule):
    """A classifier with per-step and per-epoch metrics, Adam or SGD, and a StepLR schedule."""

    def __init__(self, net: str | nn.Module = "mlp", optimizer: str = "adam", lr: float = 0.02) -> None:
        super().__init__()
        self.net = NETS[net]() if isinstance(net, str) else net
        self.optimizer, self.lr = optimizer, lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = split(batch)
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)}


class ReliableData(pl.LightningDataModule):
    def __init__(
        self,
        n_train: int = 96,
        n_val: int = 48,
        batch_size: int = 12,
        *,
        expose_targets: bool = True,
        as_dict: bool = False,
    ) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.options = {"expose_targets": expose_targets, "as_dict": as_dict}

    def setup(self, stage: str) -> None:
        self.train_set = AugmentedDataset(*make_data(self.n_train, seed=1), **self.options)
        self.val_set = AugmentedDataset(*make_data(self.n_val, seed=2), augment=False, **self.options)
        self.test_set = AugmentedDataset(*make_data(self.n_val, seed=3), augment=False, **self.options)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


def all_monitors(num_samples: int = 24, **common: Any) -> list[pl.Callback]:
    """The three monitors, every epoch and at initialisation, with every stiffness group, sized for tests."""
    common = {"num_samples": num_samples, **common}
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=3, num_points=96, **common),
        StiffnessMonitor(num_distance_bins=6, **common),
    ]


def make_trainer(root: Path, callbacks: list[pl.Callback], *, logger: str | Any = "csv", **kwargs: Any) -> pl.Trainer:
    if logger == "csv":
        logger = CSVLogger(str(root), name="csv", version=0)
    elif logger == "tb":
        logger = TensorBoardLogger(str(root), name="tb", version=0, default_hp_metric=False)
    options: dict[str, Any] = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
        "log_every_n_steps": 1,
        "logger": logger,
        "default_root_dir": str(root),
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def csv_series(log_dir: str | Path, *, sensitivity: bool = False) -> dict[str, list[tuple[str, str]]]:
    """``key -> [(step, value as written)]`` from a CSVLogger's metrics.csv (only sensitivity keys, or only others)."""
    series: dict[str, list[tuple[str, str]]] = {}
    with open(Path(log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "" and key.startswith(SENSITIVITY) == sensitivity:
                    series.setdefault(key, []).append((row["step"], value))
    return series


@dataclass
class FitRecord:
    trainer: pl.Trainer
    module: pl.LightningModule
    rng: dict[str, Any]
    metrics: dict[str, list[tuple[str, str]]]


def seeded_fit(
    root: Path,
    callbacks: list[pl.Callback],
    *,
    net: str = "mlp",
    optimizer: str = "adam",
    data: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> FitRecord:
    """The seeded reference fit: ``accumulate_grad_batches=2``, gradient clipping, StepLR, shuffled augmented data."""
    pl.seed_everything(0, verbose=False)
    module = ReliableModule(net, optimizer)
    options = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5, **trainer_kwargs}
    trainer = make_trainer(root, callbacks, **options)
    trainer.fit(module, datamodule=ReliableData(**(data or {})))
    rng = rng_states()
    return FitRecord(trainer, module, rng, csv_series(trainer.logger.log_dir))


def bitwise_equal(a: Any, b: Any) -> bool:
    """Equality of nested containers of tensors/arrays, comparing tensors byte for byte (so -0.0 != 0.0, NaN == NaN)."""
    if isinstance(a, Tensor):
        return (
            isinstance(b, Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.detach().cpu().contiguous().numpy().tobytes() == b.detach().cpu().contiguous().numpy().tobytes()
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def training_differences(a: FitRecord, b: FitRecord) -> list[str]:
    """Everything in which two fits differ, outside the sensitivity metrics; ``[]`` when bitwise identical."""
    diffs = []
    state_a, state_b = a.module.state_dict(), b.module.state_dict()
    if state_a.keys() != state_b.keys():
        diffs.append("state_dict keys")
    diffs += [f"state_dict:{k}" for k in state_a if k in state_b and not bitwise_equal(state_a[k], state_b[k])]
    for i, (opt_a, opt_b) in enumerate(zip(a.trainer.optimizers, b.trainer.optimizers, strict=True)):
        if not bitwise_equal(copy.deepcopy(opt_a.state_dict()), copy.deepcopy(opt_b.state_dict())):
            diffs.append(f"optimizer:{i}")
    sched_a = [c.scheduler.state_dict() for c in a.trainer.lr_scheduler_configs]
    sched_b = [c.scheduler.state_dict() for c in b.trainer.lr_scheduler_configs]
    if not bitwise_equal(sched_a, sched_b):
        diffs.append("lr_scheduler")
    for key in sorted(a.metrics.keys() | b.metrics.keys()):
        if a.metrics.get(key) != b.metrics.get(key):
            diffs.append(f"metric:{key}")
    cm_a = {k: v for k, v in a.trainer.callback_metrics.items() if not k.startswith(SENSITIVITY)}
    cm_b = {k: v for k, v in b.trainer.callback_metrics.items() if not k.startswith(SENSITIVITY)}
    if not bitwise_equal(cm_a, cm_b):
        diffs.append("callback_metrics")
    if a.trainer.global_step != b.trainer.global_step:
        diffs.append("global_step")
    diffs += [f"rng:{name}" for name in ("torch", "numpy", "python") if not bitwise_equal(a.rng[name], b.rng[name])]
    return diffs


def sensitivity_keys(trainer: pl.Trainer) -> set[str]:
    return {k for k in trainer.callback_metrics if k.startswith(SENSITIVITY)}


def report_figure(name: str, value: Any) -> None:
    """Record a figure a test establishes (for ``docs/reliability.md``).

    Printed (visible with ``pytest -s``) and, when ``RELIABILITY_FIGURES`` names a file, merged into that JSON file.
    """
    import json
    import os

    print(f"[reliability] {name} = {value}")
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        figures = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        figures[name] = value
        Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True))
