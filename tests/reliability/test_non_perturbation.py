"""Non-perturbation, bitwise: the monitors do not change a training run in any way.

A seeded fit (shuffled loader, augmentation drawing from the global torch/numpy/python streams, BatchNorm, Dropout,
``accumulate_grad_batches=2``, gradient clipping, StepLR) is run with and without all three monitors measuring at
initialisation and at every epoch. Final ``state_dict``, optimizer and scheduler state, every logged train/val value
and the three global random streams must agree byte for byte. The second half shows the comparison is sharp: a
callback that disturbs training in any one of the ways a careless measurement could makes it fail.
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from reliability._helpers import FitRecord, all_monitors, report_figure, seeded_fit, training_differences

pytestmark = pytest.mark.slow

_BASELINES: dict[tuple[str, bool], FitRecord] = {}


def baseline(tmp_path_factory: pytest.TempPathFactory, net: str, expose_targets: bool = True) -> FitRecord:
    """The fit without any callback, computed once per configuration."""
    key = (net, expose_targets)
    if key not in _BASELINES:
        root = tmp_path_factory.mktemp(f"baseline_{net}")
        _BASELINES[key] = seeded_fit(root, [], net=net, data={"expose_targets": expose_targets})
    return _BASELINES[key]


@pytest.mark.parametrize(
    ("net", "expose_targets"),
    [("mlp", False), ("cnn", True)],
    ids=["mlp-labels-read-through-augmentation", "cnn-labels-attribute"],
)
def test_monitors_leave_training_bitwise_identical(tmp_path, tmp_path_factory, net, expose_targets):
    reference = baseline(tmp_path_factory, net, expose_targets)
    monitors = all_monitors()
    monitored = seeded_fit(tmp_path, monitors, net=net, data={"expose_targets": expose_targets})

    assert training_differences(reference, monitored) == []
    # the comparison covered a real run: several optimizer steps, metric series, and every measurement happened
    assert monitored.trainer.global_step == 12  # 3 epochs x 8 batches / accumulation 2
    assert len(monitored.metrics["train/loss_step"]) == 12
    assert {"val/loss", "val/acc", "train/loss_epoch", "train/acc"} <= monitored.metrics.keys()
    for monitor in monitors:
        assert monitor.measured_epochs == [0, 1, 2, 3]
        splits = {"val"} if type(monitor).__name__ == "TransitionMonitor" else {"val", "train"}
        assert set(monitor.probe_sets) == splits
    logged = {k for k in monitored.trainer.callback_metrics if k.startswith("sensitivity/")}
    assert len(logged) >= 25
    report_figure(f"non-perturbation {net}: optimizer steps compared bitwise", monitored.trainer.global_step)
    report_figure(f"non-perturbation {net}: state_dict tensors", len(monitored.module.state_dict()))
    report_figure(f"non-perturbation {net}: train/val metric values", sum(map(len, monitored.metrics.values())))



def _declared() -> list[str]:
    from lightning_sensitivity import keys

    return [q.name for q in keys.declarations() if q.monitor is not None]


@pytest.mark.parametrize("quantity", _declared())
def test_every_declared_monitor_leaves_training_bitwise_identical(tmp_path, tmp_path_factory, quantity):
    """Each declared quantity's monitor, with the options under which it logs every tag, on its own: a quantity
    added by its declaration is covered here without an edit."""
    from lightning_sensitivity import callbacks, keys

    declaration = keys.declaration(quantity)
    monitor = getattr(callbacks, declaration.monitor)(**declaration.full_options)
    reference = baseline(tmp_path_factory, "mlp", False)
    monitored = seeded_fit(tmp_path, [monitor], net="mlp", data={"expose_targets": False})
    assert training_differences(reference, monitored) == []
    assert monitor.measured_epochs, f"{declaration.monitor} never measured"
    assert any(k.startswith(keys.prefix(quantity) + "/") for k in monitored.trainer.callback_metrics)


# ---------------------------------------------------------------- the comparison can fail


class Disturber(pl.Callback):
    """Does at every epoch end one thing a measurement must never do."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.kind == "torch_rand":
            torch.rand(1)
        elif self.kind == "numpy_rand":
            np.random.rand()
        elif self.kind == "python_random":
            random.random()
        elif self.kind == "iterate_train_loader":
            next(iter(trainer.train_dataloader))
        elif self.kind == "train_mode_forward":  # updates BatchNorm running statistics
            with torch.no_grad():
                pl_module(torch.zeros(4, 1, 8, 8))
        elif self.kind == "leave_eval_mode":
            pl_module.eval()


EXPECTED: dict[str, set[str]] = {
    "torch_rand": {"rng:torch", "state_dict:net.1.weight"},
    "numpy_rand": {"rng:numpy", "state_dict:net.1.weight"},
    "python_random": {"rng:python", "state_dict:net.1.weight"},
    "iterate_train_loader": {"rng:torch", "rng:numpy", "rng:python", "state_dict:net.1.weight"},
    "train_mode_forward": {"state_dict:net.2.running_mean", "state_dict:net.2.num_batches_tracked"},
    "leave_eval_mode": {"state_dict:net.2.running_mean", "metric:train/loss_step"},
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_disturbing_callback_is_detected(tmp_path, tmp_path_factory, kind):
    reference = baseline(tmp_path_factory, "mlp", False)
    disturbed = seeded_fit(tmp_path, [Disturber(kind)], net="mlp", data={"expose_targets": False})
    diffs = set(training_differences(reference, disturbed))
    assert EXPECTED[kind] <= diffs, sorted(diffs)
    report_figure(f"non-perturbation: disturber {kind} detected by", len(diffs))

