"""One epoch on a small subset of the real MNIST with all monitors (skipped when the files are absent)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
from helpers import SHARED_DATA
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.models import MLP, LitClassifier, MNISTDataModule

pytestmark = [pytest.mark.data, pytest.mark.slow]


def test_mnist_subset_one_epoch_with_all_monitors(tmp_path):
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {SHARED_DATA}")
    pl.seed_everything(0)
    dm = MNISTDataModule(SHARED_DATA, train_subset=3000, val_split=1000, batch_size=64)
    module = LitClassifier(MLP(784, dm.num_classes, hidden=(128,)), lr=0.05)
    monitors = [
        JacobianNormMonitor(num_samples=64),
        TransitionMonitor(num_trajectories=4, num_points=32),
        StiffnessMonitor(num_samples=64, class_names=list(dm.class_names)),
    ]
    trainer = pl.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name="lightning_logs"),
        callbacks=monitors,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert metrics["val/acc"] > 0.8  # chance is 0.1
    expected = {"train/loss", "generalization_gap/loss", "sensitivity/jacobian_norm/val/mean",
                "sensitivity/transitions/val/activation_mean", "sensitivity/stiffness/train_val/sign"}  # fmt: skip
    assert expected <= set(metrics)
    # a binned stiffness curve that never crosses zero has no critical length (NaN by definition)
    not_finite = [k for k, v in metrics.items() if not math.isfinite(v) and not k.endswith("critical_length")]
    assert not not_finite
