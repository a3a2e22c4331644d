"""Torch.compile: a compiled LightningModule or compiled submodule is measured through its original
(uncompiled) forward, and the values equal those of the uncompiled model with the same weights.

Backends: a counting backend (dynamo captures the graph, which is then run as is and counted) and ``aot_eager``
(adds AOTAutograd, whose compiled backward cannot serve ``torch.func`` transforms). Neither generates code, so the
tests cost seconds rather than the minutes inductor's C++ build takes on this machine, yet they exercise exactly
what matters to a monitor: Lightning's compiled ``forward`` and ``torch._dynamo.OptimizedModule`` wrappers. The
counting backend proves the route: compiled graphs run during training but not once during a measurement.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import ReliableData, ReliableModule

from lightning_sensitivity.callbacks import SensitivityWarning
from lightning_sensitivity.callbacks.progress import progress_factory
from lightning_sensitivity.logging import load_artifacts
from reliability._helpers import all_monitors, make_trainer, report_figure

pytestmark = pytest.mark.slow


class CountingBackend:
    """``torch.compile`` backend running dynamo's captured graph unchanged, counting how often a graph is run."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        def run(*args: Any) -> Any:
            self.runs += 1
            return gm.forward(*args)

        return run


class GraphRunSpy(pl.Callback):
    """Placed before and after the monitors: the compiled-graph runs in between are the measurements' own."""

    def __init__(self, backend: CountingBackend | None, store: dict[str, Any], role: str) -> None:
        self.backend, self.store, self.role = backend, store, role

    def _at(self, key: Any, pl_module: pl.LightningModule) -> None:
        if self.role == "before":
            self.store["start"] = self.backend.runs if self.backend else 0
            return
        if self.backend is not None:
            self.store.setdefault("measurement_runs", []).append(self.backend.runs - self.store["start"])
        weights = {k.replace("_orig_mod.", ""): v for k, v in copy.deepcopy(pl_module.state_dict()).items()}
        self.store.setdefault("weights", {})[key] = weights

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at(0, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._at(trainer.current_epoch + 1, pl_module)


@pytest.mark.parametrize(
    ("what", "backend_name"),
    [("lightning_module", "counting"), ("submodule", "counting"), ("submodule", "aot_eager")],
)
def test_compiled_model_is_measured_through_the_original_forward(tmp_path, what, backend_name):
    torch._dynamo.reset()
    pl.seed_everything(0, verbose=False)
    counting = CountingBackend() if backend_name == "counting" else None
    backend = counting if counting is not None else backend_name
    module = ReliableModule("mlp")
    if what == "submodule":
        module.net = torch.compile(module.net, backend=backend)
        to_fit: Any = module
    else:
        to_fit = torch.compile(module, backend=backend)  # Lightning unwraps it and compiles forward/steps
    monitors = all_monitors(num_samples=12)
    store: dict[str, Any] = {}
    callbacks = [GraphRunSpy(counting, store, "before"), *monitors, GraphRunSpy(counting, store, "after")]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2)
    with pytest.warns() as record:
        trainer.fit(to_fit, datamodule=ReliableData())
    assert not [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)]
    if counting is not None:
        assert counting.runs > 0  # training did run through compiled graphs ...
        assert store["measurement_runs"] == [0, 0, 0]  # ... the measurements never did

    artifacts = {(a.quantity, a.epoch): a for a in load_artifacts(trainer.logger.log_dir)}
    compared = 0
    for epoch, weights in store["weights"].items():
        plain = ReliableModule("mlp")
        plain.load_state_dict(weights)
        for monitor, fresh in zip(monitors, all_monitors(num_samples=12), strict=True):
            result = fresh.compute(fresh.measured_model(plain), monitor.probe_sets, progress_factory("", False), epoch)
            logged = artifacts[monitor.quantity, epoch].arrays
            for key, value in result.arrays.items():
                expected = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
                np.testing.assert_array_equal(logged[key], expected, err_msg=f"{what} {monitor.quantity} {key}")
                compared += expected.size
    report_figure(f"compile {what}/{backend_name}: values equal to the uncompiled model (bitwise)", compared)
