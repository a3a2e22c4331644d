"""Faults at run time: the run finishes, each monitor warns at most once with an actionable
message, and nothing already logged is lost or overwritten.

An absent validation source is the one fault reported before training, as a ``MisconfigurationException`` from
``setup``: it costs seconds, not a day. A validation loader that turns out to be empty at run time is a
run-time fault like the others.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import AugmentedDataset, ReliableData, ReliableModule, csv_series
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.callbacks import SensitivityWarning
from reliability._helpers import make_trainer, report_figure

pytestmark = pytest.mark.slow
EPOCHS = 3
FAULTS_TRIED: list[str] = []


def monitors(**common: Any) -> list[pl.Callback]:
    common = {"num_samples": 12, **common}
    return [
        JacobianNormMonitor(**common),
        TransitionMonitor(num_trajectories=3, num_points=96, **common),
        StiffnessMonitor(groups=("val_val",), num_distance_bins=5, **common),
    ]


def run(tmp_path: Path, module: pl.LightningModule, data: Any, callbacks: list[pl.Callback]) -> tuple[Any, list[str]]:
    trainer = make_trainer(tmp_path, callbacks, max_epochs=EPOCHS)
    with pytest.warns() as record:
        trainer.fit(module, datamodule=data)
    assert trainer.current_epoch == EPOCHS and trainer.global_step > 0  # the run finished
    messages = [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)]
    # Each distinct failure at most once per monitor: a probe set that cannot be drawn counts once per split (a
    # failing train split must not hide a failing -- or a working -- val split).
    for name in ("JacobianNormMonitor", "TransitionMonitor", "StiffnessMonitor"):
        ours = [m for m in messages if m.startswith(name)]
        causes = [m.split(" at epoch")[0] for m in ours]
        assert len(causes) == len(set(causes)), messages
        assert len([c for c in causes if "probe set" not in c]) <= 1, messages
    return trainer, messages


def logged(trainer: pl.Trainer) -> dict[str, list[tuple[str, str]]]:
    return csv_series(trainer.logger.log_dir, sensitivity=True)


class Poison(pl.Callback):
    """From the end of epoch ``at`` on, the model outputs NaN; records the artifacts as they were just before."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.before: dict[str, str] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.at:
            log_dir = Path(trainer.logger.log_dir)
            self.before = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in log_dir.rglob("*.npz")}
            pl_module.poisoned = True


class PoisonableModule(ReliableModule):
    poisoned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out * float("nan") if self.poisoned else out


def test_model_turning_nan_loses_nothing_logged_before(tmp_path):
    poison = Poison(at=2)
    trainer, messages = run(tmp_path, PoisonableModule(), ReliableData(), [poison, *monitors()])
    assert any("non-finite" in m and "learning rate" in m for m in messages)
    series = logged(trainer)
    mean = series["sensitivity/jacobian_norm/val/mean"]
    # epochs 0 and 1 (at Lightning's epoch-end step), measured before the NaN; nothing after
    assert [step for step, _ in mean] == ["0", "7"]
    assert all(float(v) == float(v) for _, v in mean)
    # the artifacts written before the fault are still there, byte for byte; after it nothing is measured (no value,
    # transition counts included, is computed from NaN outputs), so no later file
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(trainer.logger.log_dir).rglob("*.npz")}
    assert len(poison.before) == 6 and {k: after[k] for k in poison.before} == poison.before
    assert after.keys() == poison.before.keys()
    assert sum("non-finite model outputs" in m for m in messages) == 3  # once per monitor
    FAULTS_TRIED.append("nan")


def test_probe_set_smaller_than_requested(tmp_path):
    trainer, messages = run(tmp_path, ReliableModule(), ReliableData(n_val=7), monitors(num_samples=40))
    assert len(messages) == 3 and all("fewer than `num_samples=40`" in m for m in messages)
    assert len(logged(trainer)["sensitivity/stiffness/val_val/sign"]) == EPOCHS + 1
    FAULTS_TRIED.append("small probe set")


class ExtraTensors(AugmentedDataset):
    def __getitem__(self, i: int) -> Any:
        x, y = super().__getitem__(i)
        return x, y, torch.tensor(i), torch.ones(2)


class ExtraTensorData(ReliableData):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.val_set = ExtraTensors(*ReliableData.make_data(self.n_val, seed=2), augment=False)


@pytest.mark.parametrize("data", [ReliableData(as_dict=True), ExtraTensorData()], ids=["dicts", "extra-tensors"])
def test_batches_as_dicts_or_with_extra_tensors_just_work(tmp_path, data):
    trainer, messages = run(tmp_path, ReliableModule(), data, monitors())
    assert messages == []
    assert len(logged(trainer)["sensitivity/transitions/val/prediction_mean"]) == EPOCHS + 1
    FAULTS_TRIED.append("batch layout")


class OddKeys(AugmentedDataset):
    def __getitem__(self, i: int) -> Any:
        x, y = super().__getitem__(i)
        return {"pixels": x, "truth": y}


class OddKeyModule(ReliableModule):
    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        return super()._step((batch["pixels"], batch["truth"]) if isinstance(batch, dict) else batch, stage)


class OddKeyData(ReliableData):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.train_set = OddKeys(*ReliableData.make_data(self.n_train, seed=1))
        self.val_set = OddKeys(*ReliableData.make_data(self.n_val, seed=2), augment=False)


def test_unrecognised_batch_layout_warns_once_and_batch_transform_fixes_it(tmp_path):
    trainer, messages = run(tmp_path / "a", OddKeyModule(), OddKeyData(), monitors())
    # once per monitor and split: the Jacobian monitor reads val and train, the other two val only
    assert len(messages) == 4 and all("batch_transform" in m for m in messages)
    assert logged(trainer) == {}
    fixed = monitors(batch_transform=lambda b: (b["pixels"], b["truth"]))
    trainer, messages = run(tmp_path / "b", OddKeyModule(), OddKeyData(), fixed)
    assert messages == [] and len(logged(trainer)["sensitivity/jacobian_norm/val/mean"]) == EPOCHS + 1
    FAULTS_TRIED.append("unrecognised batch")


class NoValData(ReliableData):
    val_dataloader = None  # type: ignore[assignment]


def test_absent_validation_source_is_refused_before_training(tmp_path):
    module = ReliableModule()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = make_trainer(tmp_path, monitors(), max_epochs=EPOCHS)
    with pytest.raises(MisconfigurationException, match=r"val_data=\(inputs, targets\)"):
        trainer.fit(module, datamodule=NoValData())
    assert trainer.global_step == 0 and all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    FAULTS_TRIED.append("no val source")


class EmptyValData(ReliableData):
    def val_dataloader(self) -> list:
        return []


def test_validation_loader_absent_at_run_time(tmp_path):
    trainer, messages = run(tmp_path, ReliableModule(), EmptyValData(), monitors())
    assert len(messages) == 3 and all("val_data=(inputs, targets)" in m for m in messages)
    FAULTS_TRIED.append("empty val loader")


class TupleForward(ReliableModule):
    """``forward`` returns (logits, features), as many real models do; training uses the logits."""

    def forward(self, x: torch.Tensor) -> Any:
        return self.net(x), x.flatten(1)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x)[0], y)
        self.log(f"{stage}/loss", loss)
        return loss


class WrongRank(ReliableModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :, None]

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(self(batch[0])[:, :, 0], batch[1])
        self.log(f"{stage}/loss", loss)
        return loss


class ScoresForward(ReliableModule):
    """``forward`` returns a dict without ``"logits"``: nothing says which entry holds them."""

    def forward(self, x: torch.Tensor) -> Any:
        return {"scores": self.net(x), "features": x.flatten(1)}

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x)["scores"], y)
        self.log(f"{stage}/loss", loss)
        return loss


def test_a_tuple_output_is_read_by_its_first_tensor(tmp_path):
    # (logits, features), as many real models return: the logits are found without forward_fn, and measured.
    trainer, messages = run(tmp_path, TupleForward(), ReliableData(), monitors())
    assert messages == [] and len(logged(trainer)["sensitivity/stiffness/val_val/sign"]) == EPOCHS + 1
    FAULTS_TRIED.append("TupleForward")


@pytest.mark.parametrize("module_cls", [ScoresForward, WrongRank])
def test_model_output_of_the_wrong_kind_warns_once_naming_forward_fn(tmp_path, module_cls):
    trainer, messages = run(tmp_path / "a", module_cls(), ReliableData(), monitors())
    assert len(messages) == 3 and all("forward_fn" in m for m in messages), messages
    assert logged(trainer) == {}
    fixed = monitors(forward_fn=lambda module, x: module.net(x))
    trainer, messages = run(tmp_path / "b", module_cls(), ReliableData(), fixed)
    assert messages == [] and len(logged(trainer)["sensitivity/stiffness/val_val/sign"]) == EPOCHS + 1
    FAULTS_TRIED.append(module_cls.__name__)


def test_probe_batch_on_the_wrong_device(tmp_path):
    on_meta = monitors(batch_transform=lambda b: (b[0].to("meta"), b[1]))
    trainer, messages = run(tmp_path, ReliableModule(), ReliableData(), on_meta)
    assert len(messages) == 4 and all("probe set" in m for m in messages), messages  # per monitor and split
    FAULTS_TRIED.append("wrong device")


def test_validate_and_test_after_fit_with_other_weights_overwrite_nothing(tmp_path):
    trainer, _ = run(tmp_path, ReliableModule(), ReliableData(), monitors())
    module, log_dir = trainer.lightning_module, Path(trainer.logger.log_dir)
    fit_files = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in log_dir.rglob("*.npz")}
    with torch.no_grad():  # as if `ckpt_path="best"` had loaded other weights
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    trainer.validate(module, datamodule=ReliableData(), verbose=False)
    trainer.test(module, datamodule=ReliableData(), verbose=False)
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in log_dir.rglob("*.npz")}
    assert {k: after[k] for k in fit_files} == fit_files
    added = sorted(str(Path(p).relative_to(log_dir / "sensitivity")) for p in after.keys() - fit_files.keys())
    stages = ("validate", "test")
    quantities = ("jacobian_norm", "stiffness", "transitions")
    expected = [f"{q}.{s}/epoch_{EPOCHS:04d}.npz" for q in quantities for s in stages]
    assert added == sorted(expected)
    FAULTS_TRIED.append("validate/test after fit")


def test_zz_report_faults():
    report_figure("faults: fault scenarios tried, each finishing with <= 1 warning per monitor", len(FAULTS_TRIED))
