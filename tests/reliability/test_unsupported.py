"""Unsupported setups: a clear warning, the monitor disables itself, training completes; frozen
parameters are left out of stiffness. Under FSDP only stiffness (per-example parameter gradients) is disabled; the
real sharded runs are ``test_sharded.py``.

FSDP and DeepSpeed cannot run on this CPU-only machine (Lightning refuses FSDP without a GPU, DeepSpeed is not
installed), so a full run uses stand-in strategies with the same class names (the detection goes by the class names
along the MRO, never importing the optional packages), and the detection is also checked on a real ``FSDPStrategy``
instance.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import oracles
import pytest
import torch
from helpers import ReliableData, ReliableModule
from lightning.pytorch.strategies import FSDPStrategy as RealFSDPStrategy
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from lightning_sensitivity import StiffnessMonitor
from lightning_sensitivity.callbacks import SensitivityWarning
from lightning_sensitivity.logging import load_artifacts
from reliability._helpers import all_monitors, make_trainer, report_figure


class FSDPStrategy(SingleDeviceStrategy):
    """Stands in for Lightning's FSDPStrategy (which needs GPUs here): only the class name matters."""


class DeepSpeedStrategy(SingleDeviceStrategy):
    """Stands in for Lightning's DeepSpeedStrategy (DeepSpeed is not installed)."""


class MyFSDP(FSDPStrategy):
    """A user's subclass is recognised too."""


def sensitivity_warnings(record: Any) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)]


def assert_disabled_and_trained(trainer: Any, module: Any, monitors: list[Any], log_dir: Path, record: Any) -> None:
    assert trainer.current_epoch == trainer.max_epochs and trainer.global_step > 0
    assert not [k for k in trainer.callback_metrics if k.startswith("sensitivity/")]
    assert load_artifacts(log_dir) == []
    messages = sensitivity_warnings(record)
    for monitor in monitors:
        ours = [m for m in messages if m.startswith(type(monitor).__name__)]
        assert len(ours) == 1, ours  # once per monitor, not once per epoch
        assert "disabled" in ours[0] and "Training continues" in ours[0]
        assert monitor.measured_epochs == []


@pytest.mark.slow
@pytest.mark.parametrize("strategy_cls", [DeepSpeedStrategy])
def test_sharding_strategy_disables_the_monitors_with_a_warning(tmp_path, strategy_cls):
    monitors = all_monitors(num_samples=12)
    module = ReliableModule("mlp")
    trainer = make_trainer(tmp_path, monitors, max_epochs=2, strategy=strategy_cls(device=torch.device("cpu")))
    with pytest.warns(SensitivityWarning) as record:
        trainer.fit(module, datamodule=ReliableData())
    assert_disabled_and_trained(trainer, module, monitors, Path(trainer.logger.log_dir), record)
    message = sensitivity_warnings(record)[0]
    assert strategy_cls.__name__ in message and "strategy='ddp'" in message
    # validate/test on such a trainer stay quiet and measure nothing as well
    (out,) = trainer.validate(module, datamodule=ReliableData(), verbose=False)
    assert not [k for k in out if k.startswith("sensitivity/")]
    report_figure(f"unsupported: {strategy_cls.__name__} run completed, monitors disabled", True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, MyFSDP])
def test_fsdp_disables_only_stiffness_and_the_input_gradient_monitors_measure(tmp_path, strategy_cls):
    monitors = all_monitors(num_samples=12)
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, strategy=strategy_cls(device=torch.device("cpu")))
    with pytest.warns(SensitivityWarning) as record:
        trainer.fit(ReliableModule("mlp"), datamodule=ReliableData())
    messages = [m for m in sensitivity_warnings(record) if "disabled" in m]
    assert len(messages) == 1 and messages[0].startswith("StiffnessMonitor") and "FSDPStrategy" in messages[0]
    measured = {k.split("/")[1] for k in trainer.callback_metrics if k.startswith("sensitivity/")}
    assert measured == {"jacobian_norm", "transitions"}
    assert {type(m).__name__: m.measured_epochs for m in monitors} == {
        "JacobianNormMonitor": [0, 1], "TransitionMonitor": [0, 1], "StiffnessMonitor": []
    }


def test_a_real_fsdp_strategy_is_detected():
    monitor = StiffnessMonitor()
    trainer = SimpleNamespace(strategy=RealFSDPStrategy(), world_size=1)
    with pytest.warns(SensitivityWarning, match=r"FSDPStrategy.*strategy='ddp'"):
        monitor.setup(trainer, ReliableModule("mlp"), "fit")  # no data source needed: it stops before checking
    assert monitor._disabled is not None


class HiddenScale(ReliableModule):
    """Trains a scale kept in a plain list: not registered, so functional_call cannot swap it."""

    def __init__(self) -> None:
        super().__init__("mlp")
        self.hidden = [nn.Parameter(torch.ones(()))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.hidden[0]

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([*self.parameters(), *self.hidden], lr=0.05)


@pytest.mark.slow
def test_parameters_functional_call_cannot_reach_disable_the_monitors(tmp_path):
    monitors = all_monitors(num_samples=12)
    module = HiddenScale()
    trainer = make_trainer(tmp_path, monitors, max_epochs=2)
    with pytest.warns(SensitivityWarning, match="not registered") as record:
        trainer.fit(module, datamodule=ReliableData())
    assert_disabled_and_trained(trainer, module, monitors, Path(trainer.logger.log_dir), record)
    assert module.hidden[0].item() != 1.0  # the hidden parameter did train
    assert "1 parameter tensor(s)" in sensitivity_warnings(record)[0]


class FrozenFirstLayer(ReliableModule):
    def __init__(self) -> None:
        super().__init__("mlp")
        self.net[1].requires_grad_(False)


@pytest.mark.slow
def test_stiffness_uses_trainable_parameters_only(tmp_path):
    monitor = StiffnessMonitor(num_samples=12, groups=("val_val",), at_init=False)
    module = FrozenFirstLayer()
    frozen_before = module.net[1].weight.detach().clone()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(module, datamodule=ReliableData())
    assert torch.equal(module.net[1].weight, frozen_before)  # it stayed frozen

    (artifact,) = load_artifacts(trainer.logger.log_dir, "stiffness")
    probe = monitor.probe_sets["val"]
    net = module.net.double()
    trainable = oracles.stiffness_loop(net, probe.inputs.double(), probe.targets)
    everything = copy_with_all_trainable(net)
    all_params = oracles.stiffness_loop(everything, probe.inputs.double(), probe.targets)
    logged = float(artifact.arrays["val_val/cosine_mean"])
    assert logged == pytest.approx(trainable["cosine_mean"], rel=1e-4, abs=1e-6)
    # the two definitions differ by far more than the tolerance: the test tells them apart
    assert abs(all_params["cosine_mean"] - trainable["cosine_mean"]) > 1e-3
    report_figure(
        "frozen parameters: |stiffness(all params) - stiffness(trainable)|",
        abs(all_params["cosine_mean"] - trainable["cosine_mean"]),
    )


def copy_with_all_trainable(net: nn.Module) -> nn.Module:
    clone = copy.deepcopy(net)
    clone.requires_grad_(True)
    return clone
