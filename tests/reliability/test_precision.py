"""Precision: under ``bf16-mixed`` / ``16-mixed`` training the monitors measure in float32, outside
autocast, and get what a float64 loop computes from the same weights.

The tolerance (1e-5 of the largest norm) is tight enough to fail if a measurement ran under the training's
autocast: the test also computes the Jacobian norms under autocast and checks that they miss the float64 values
by far more.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import oracles
import pytest
import torch
from helpers import ReliableData, ReliableModule, sensitivity_metrics

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks import SensitivityWarning
from lightning_sensitivity.logging import load_artifacts
from reliability._helpers import make_trainer, report_figure

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# "-true": the parameters themselves are low precision; measured on float32 copies of them (never touched). fp16
# parameters are measured the same way (tests/functional/test_low_precision.py); a "16-true" fit of this model
# without a loss scaler diverges to non-finite weights, which no measurement can fix.
TRUE_DTYPES = {"bf16-true": torch.bfloat16}


class DtypeModule(ReliableModule):
    """Records the dtype of the logits seen in training, to prove that autocast was on."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_dtype = self(batch[0]).dtype
        return super().training_step(batch, batch_idx)


class WeightsSpy(pl.Callback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights[0] = copy.deepcopy(pl_module.state_dict())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights[trainer.current_epoch + 1] = copy.deepcopy(pl_module.state_dict())


def float64_net(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    module = ReliableModule("mlp")
    module.load_state_dict(weights)
    return module.net.double().eval()


def autocast_jacobian_norms(
    net: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype, true: bool = False
) -> torch.Tensor:
    """The Jacobian norms computed under autocast to ``dtype`` (or, ``true``, in ``dtype`` itself)."""
    net = copy.deepcopy(net).to(dtype if true else torch.float32).eval()
    norms = []
    with torch.autocast("cpu", dtype=dtype, enabled=not true):
        for x in inputs.to(dtype if true else torch.float32):
            jac = torch.autograd.functional.jacobian(lambda z: net(z.unsqueeze(0)).softmax(-1)[0], x)
            norms.append(jac.double().pow(2).sum().sqrt())
    return torch.stack(norms)


def precision_options(precision: str) -> dict[str, Any]:
    if precision == "16-mixed":
        # `Trainer(precision="16-mixed")` silently becomes "bf16-mixed" on CPU; the plugin runs fp16 autocast.
        from lightning.pytorch.plugins.precision import MixedPrecision

        return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    return {"precision": precision}


def scaled_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest deviation relative to the largest norm (per-point ratios blow up on near-zero softmax Jacobians)."""
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("precision", sorted(DTYPES))
def test_mixed_precision_training_is_measured_in_float32(tmp_path, precision):
    check_measured_in_float32(tmp_path, precision, "cpu")


@pytest.mark.parametrize("precision", sorted(TRUE_DTYPES))
def test_low_precision_parameters_are_measured_in_float32(tmp_path, precision):
    check_measured_in_float32(tmp_path, precision, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_mixed_training_on_a_gpu_is_measured_in_float32(tmp_path):
    check_measured_in_float32(tmp_path, "bf16-mixed", "cuda")


def check_measured_in_float32(tmp_path, precision: str, device: str) -> None:
    """A fit under ``precision`` on ``device``; its measurements against float64 loops on the CPU."""
    monitors = [
        JacobianNormMonitor(num_samples=12),
        StiffnessMonitor(num_samples=12, groups=("val_val",)),
        TransitionMonitor(num_samples=12, num_trajectories=3, num_points=96),
    ]
    spy = WeightsSpy()
    pl.seed_everything(0, verbose=False)
    module = DtypeModule("mlp")
    options = precision_options(precision) if device == "cpu" else {"precision": precision}
    if device == "cuda":  # `deterministic=True` would need CUBLAS_WORKSPACE_CONFIG; the comparison does not
        options.update(accelerator="gpu", devices=1, deterministic=False)
    try:
        trainer = make_trainer(tmp_path, [*monitors, spy], max_epochs=2, **options)
    except Exception as err:  # e.g. a Lightning/torch build without CPU autocast for this dtype
        pytest.skip(f"precision={precision!r} is not available on this CPU: {err}")
    assert trainer.precision == precision
    true = precision in TRUE_DTYPES
    dtype = (TRUE_DTYPES if true else DTYPES)[precision]
    with pytest.warns() as record:
        trainer.fit(module, datamodule=ReliableData())
    assert not [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)]
    assert module.train_dtype == dtype  # training really ran under autocast (or in the low dtype itself)
    if true:
        assert all(p.dtype == dtype for p in module.parameters())

    scalars = sensitivity_metrics(trainer)
    assert len(scalars) >= 15 and all(math.isfinite(v) for v in scalars.values())
    artifacts = {(a.quantity, a.epoch): a for a in load_artifacts(trainer.logger.log_dir)}
    probe = monitors[0].probe_sets["val"].to("cpu")
    worst, autocast_error = 0.0, float("inf")
    for epoch, weights in spy.weights.items():
        net = float64_net(weights)
        expected = oracles.jacobian_norm_loop(net, probe.inputs.double())
        got = torch.as_tensor(artifacts["jacobian_norm", epoch].arrays["val_norms"], dtype=torch.float64)
        error = scaled_error(got, expected)
        assert error < TOLERANCE, (epoch, error)
        worst = max(worst, error)
        under_autocast = autocast_jacobian_norms(net, probe.inputs, dtype, true)
        autocast_error = min(autocast_error, scaled_error(under_autocast, expected))

        stiff_probe = monitors[1].probe_sets["val"].to("cpu")
        reference = oracles.stiffness_loop(net, stiff_probe.inputs.double(), stiff_probe.targets)
        logged = artifacts["stiffness", epoch].arrays
        assert float(logged["val_val/cosine_mean"]) == pytest.approx(reference["cosine_mean"], rel=1e-4, abs=1e-6)
        assert float(logged["val_val/sign_mean"]) == pytest.approx(reference["sign_mean"], abs=1e-12)
    # the tolerance is sharp: a measurement under autocast would have failed it
    assert autocast_error > 5 * TOLERANCE
    where = "" if device == "cpu" else f" on {device}"
    report_figure(f"precision {precision}{where}: max error of Jacobian norms vs float64 (relative to the largest)",
                  worst)  # fmt: skip
    report_figure(f"precision {precision}{where}: the same error had it run under autocast"
                  + (" (in the model's own dtype)" if true else ""), autocast_error)  # fmt: skip
