"""Contexts: the same weights give the same measurement whatever Lightning's context.

Lightning calls hooks under different grad modes: ``fit`` validation under ``no_grad``, ``trainer.validate``/``test``
under ``inference_mode`` (or ``no_grad`` with ``Trainer(inference_mode=False)``), the end of a training epoch with
grad enabled and the module in train mode. A recorder placed after the monitors runs each monitor's measurement in
every one of these hooks on one set of weights (a 1-epoch fit, then validate/test without further training), checks
that it really was in the claimed context, and compares all measured arrays byte for byte.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import ReliableData, ReliableModule
from lightning.pytorch.trainer.states import TrainerFn

from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.keys import rename_split
from reliability._helpers import all_monitors, bitwise_equal, make_trainer, report_figure

pytestmark = pytest.mark.slow


class ContextRecorder(pl.Callback):
    """Measure with every monitor in each hook; record the grad context and the full result."""

    def __init__(self, monitors: list[Any]) -> None:
        self.monitors = monitors
        self.suffix = ""  # names the trainer in use
        self.records: list[tuple[str, dict[str, bool], dict[str, Any]]] = []

    def _record(self, name: str, pl_module: pl.LightningModule) -> None:
        context = {
            "grad": torch.is_grad_enabled(),
            "inference": torch.is_inference_mode_enabled(),
            "train_mode": pl_module.training,
        }
        results = {}
        for monitor in self.monitors:
            probes = {split: p.to(pl_module.device) for split, p in monitor.probe_sets.items()}
            result = monitor.compute(monitor.measured_model(pl_module), probes, progress_factory("", False), 1)
            results[type(monitor).__name__] = {"scalars": result.scalars, "arrays": result.arrays}
        # The module's own mode and the caller's grad mode are given back exactly.
        assert (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), pl_module.training) == tuple(
            context.values()
        )
        self.records.append((name, context, results))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            fn = trainer.state.fn
            name = {TrainerFn.FITTING: "fit validation", TrainerFn.VALIDATING: "validate"}[fn]
            self._record(name + self.suffix, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("test" + self.suffix, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("train epoch end", pl_module)


def as_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def test_identical_values_in_every_lightning_context(tmp_path):
    monitors = all_monitors()
    recorder = ContextRecorder(monitors)
    module, data = ReliableModule("cnn"), ReliableData()
    trainer = make_trainer(tmp_path, [*monitors, recorder], max_epochs=1)
    trainer.fit(module, datamodule=data)
    fit_logged = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("sensitivity/")}
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    (validated,) = trainer.validate(module, datamodule=data, verbose=False)
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    recorder.suffix = " (inference_mode=False)"
    no_inference = make_trainer(tmp_path, [*monitors, recorder], logger=False, inference_mode=False)
    no_inference.validate(module, datamodule=data, verbose=False)
    no_inference.test(module, datamodule=data, verbose=False)
    assert bitwise_equal(weights, module.state_dict())  # nothing trained in between: one set of weights

    contexts = {name: context for name, context, _ in recorder.records}
    assert contexts == {
        "fit validation": {"grad": False, "inference": False, "train_mode": False},
        "train epoch end": {"grad": True, "inference": False, "train_mode": True},
        "validate": {"grad": False, "inference": True, "train_mode": False},
        "test": {"grad": False, "inference": True, "train_mode": False},
        "validate (inference_mode=False)": {"grad": False, "inference": False, "train_mode": False},
        "test (inference_mode=False)": {"grad": False, "inference": False, "train_mode": False},
    }
    _, _, reference = recorder.records[0]
    compared = 0
    for name, _, results in recorder.records[1:]:
        for monitor, result in results.items():
            ref = reference[monitor]
            assert result["scalars"].keys() == ref["scalars"].keys(), (name, monitor)
            assert result["scalars"] == ref["scalars"], (name, monitor)
            assert result["arrays"].keys() == ref["arrays"].keys(), (name, monitor)
            for key, value in result["arrays"].items():
                expected, got = as_numpy(ref["arrays"][key]), as_numpy(value)
                same = bitwise_equal(expected, got) if isinstance(expected, np.ndarray) else expected == got
                assert same or (expected != expected and got != got), (name, monitor, key)
                compared += 1
    assert compared >= 5 * 50
    report_figure("contexts: arrays compared bitwise (5 contexts vs fit validation)", compared)

    # What the monitors themselves logged: at the fit's train-epoch end, and into validate/test's returned dicts.
    assert len(fit_logged) >= 25
    assert {k: v for k, v in validated.items() if k.startswith("sensitivity/")} == fit_logged
    # trainer.test measures a probe set of the test data, under .../test/... (the same keys, renamed)
    tested_keys = {k for k in tested if k.startswith("sensitivity/")}
    assert tested_keys == {rename_split(k, "val", "test") for k in fit_logged}
    assert all(math.isfinite(tested[k]) for k in tested_keys)
