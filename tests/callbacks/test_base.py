"""Behaviour shared by all monitors: arguments, data sources, schedule, state, contexts, faults, non-perturbation."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import pytest
import torch
from callbacks._tiny import (  # noqa: F401 (`fitted` is a fixture)
    MAX_EPOCHS,
    fit_reference,
    fitted,
    make_trainer,
    nested_equal,
    rng_equal,
    small_monitors,
)
from helpers import Classifier, TinyData, read_events, sensitivity_metrics
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sensitivity import (
    JacobianNormMonitor,
    SensitivityMonitor,
    StiffnessMonitor,
    TransitionMonitor,
)
from lightning_sensitivity.callbacks import SensitivityWarning
from lightning_sensitivity.callbacks.progress import (
    MeasurementProgress,
    progress_factory,
)
from lightning_sensitivity.functional import jacobian_norm
from lightning_sensitivity.keys import rename_split

X, Y = TinyData.make_data(20, seed=5)

BAD_COMMON = [
    ("every_n_epochs", 0, ValueError),
    ("every_n_epochs", -3, ValueError),
    ("every_n_epochs", "1", TypeError),
    ("every_n_epochs", 1.0, TypeError),
    ("epochs", [1, -1], ValueError),
    ("epochs", "12", TypeError),
    ("epochs", 3, TypeError),
    ("epochs", [0.5], TypeError),
    ("log_spaced", "yes", TypeError),
    ("at_init", 1, TypeError),
    ("num_samples", 0, ValueError),
    ("num_samples", -5, ValueError),
    ("num_samples", 2.5, TypeError),
    ("num_samples", True, TypeError),
    ("seed", "0", TypeError),
    ("seed", 1.0, TypeError),
    ("val_data", X, TypeError),
    ("val_data", (X, Y, Y), TypeError),
    ("val_data", (X, Y[:5]), ValueError),
    ("val_data", (X, Y, {"attention_mask": Y[:5]}), ValueError),
    ("val_data", (X, Y, {"attention_mask": 3}), TypeError),
    ("val_data", (X, Y.float()[:3]), ValueError),
    ("train_data", (X[0, 0, 0], Y), ValueError),
    ("train_data", [X.numpy(), Y], TypeError),
    ("batch_transform", 3, TypeError),
    ("forward_fn", "net", TypeError),
    ("chunk_size", 0, ValueError),
    ("chunk_size", 1.5, TypeError),
    ("figures", "sometimes", ValueError),
    ("figures", 2, TypeError),
    ("figures", None, TypeError),
]
BAD_SPECIFIC = [
    (JacobianNormMonitor, "output", "probs", ValueError),
    (JacobianNormMonitor, "output", None, TypeError),  # wrong type: TypeError (one rule, _checks)
    (JacobianNormMonitor, "class_names", "abc", TypeError),
    (JacobianNormMonitor, "class_names", [1, 2], ValueError),
    (TransitionMonitor, "num_trajectories", 0, ValueError),
    (TransitionMonitor, "num_trajectories", 2.0, TypeError),
    (TransitionMonitor, "num_points", 2, ValueError),
    (TransitionMonitor, "num_points", "128", TypeError),
    (StiffnessMonitor, "loss_fn", 1, TypeError),
    (StiffnessMonitor, "groups", "val_val", TypeError),
    (StiffnessMonitor, "groups", ("val",), ValueError),
    (StiffnessMonitor, "groups", (), ValueError),
    (StiffnessMonitor, "groups", ("val_val", "val_val"), ValueError),
    (StiffnessMonitor, "class_groups", [0, -1], ValueError),
    (StiffnessMonitor, "class_groups", "ab", TypeError),
    (StiffnessMonitor, "class_groups", {1: 0}, ValueError),
    (StiffnessMonitor, "group_names", ["coarse"], ValueError),  # without class_groups
    (StiffnessMonitor, "num_distance_bins", 0, ValueError),
    (StiffnessMonitor, "num_distance_bins", 2.0, TypeError),
    (StiffnessMonitor, "distance", "l2", ValueError),
]


@pytest.mark.parametrize("cls", [JacobianNormMonitor, TransitionMonitor, StiffnessMonitor])
@pytest.mark.parametrize(("name", "value", "error"), BAD_COMMON, ids=[f"{n}={v!r:.12}" for n, v, _ in BAD_COMMON])
def test_bad_common_argument_names_it(cls, name, value, error):
    with pytest.raises(error, match=f"`{name}`") as info:
        cls(**{name: value})
    if not isinstance(value, torch.Tensor) and not isinstance(value, (tuple, list)):
        assert repr(value) in str(info.value) or str(value) in str(info.value)


@pytest.mark.parametrize(
    ("cls", "name", "value", "error"), BAD_SPECIFIC, ids=[f"{n}={v!r:.12}" for _, n, v, _ in BAD_SPECIFIC]
)
def test_bad_specific_argument_names_it(cls, name, value, error):
    with pytest.raises(error, match=f"`{name}`"):
        cls(**{name: value})


def test_inconsistent_class_groups():
    with pytest.raises(ValueError, match="`class_groups`"):
        StiffnessMonitor(class_names=["a", "b", "c"], class_groups=[0, 1])
    with pytest.raises(ValueError, match="`group_names`"):
        StiffnessMonitor(class_groups=[0, 1, 1], group_names=["x"])
    with pytest.raises(TypeError, match="every_n_epoch"):
        JacobianNormMonitor(every_n_epoch=2)  # a typo is not silently ignored


def test_state_key_distinguishes_settings():
    keys = {
        JacobianNormMonitor().state_key,
        JacobianNormMonitor(output="logits").state_key,
        JacobianNormMonitor(seed=1).state_key,
        StiffnessMonitor().state_key,
        StiffnessMonitor(groups=("val_val",)).state_key,
        TransitionMonitor().state_key,
    }
    assert len(keys) == 6
    assert all(k.split("{")[0] in ("JacobianNormMonitor", "StiffnessMonitor", "TransitionMonitor") for k in keys)


def test_fit_leaves_training_bitwise_identical(fitted, tmp_path):  # noqa: F811
    """With vs without all three monitors (every epoch): same weights, optimizer state, metrics and RNG streams."""
    trainer, module, rng_after = fit_reference(tmp_path, [])
    assert nested_equal(fitted.module.state_dict(), module.state_dict())
    assert nested_equal(fitted.trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict())
    assert rng_equal(fitted.rng_after, rng_after)
    baseline = read_events(trainer.logger.log_dir)
    for tag in ("train/loss", "val/loss"):
        with_monitors = [(e.step, e.value) for e in fitted.events.Scalars(tag)]
        assert with_monitors == [(e.step, e.value) for e in baseline.Scalars(tag)]
    # .grad, buffers, train/eval flags, optimizer state and RNG are untouched across each measuring hook
    assert fitted.spy["diffs"] == []
    assert len(fitted.spy["checked"]) == 1 + MAX_EPOCHS
    for monitor in fitted.monitors:
        assert monitor.measured_epochs == [0, 1, 2]


def test_state_dict_round_trip_through_torch_save(fitted, tmp_path):  # noqa: F811
    for monitor in fitted.monitors:
        path = tmp_path / "state.pt"
        torch.save(monitor.state_dict(), path)
        fresh = type(monitor)(num_samples=40)
        fresh.load_state_dict(torch.load(path, weights_only=True))  # what Lightning's checkpoint loading allows
        assert fresh.measured_epochs == monitor.measured_epochs
        assert fresh.probe_sets.keys() == monitor.probe_sets.keys()
        for split, probe in monitor.probe_sets.items():
            assert torch.equal(fresh.probe_sets[split].inputs, probe.inputs)
            assert torch.equal(fresh.probe_sets[split].targets, probe.targets)
            assert torch.equal(fresh.probe_sets[split].indices, probe.indices)


def csv_rows(log_dir: str) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_resume_keeps_probes_and_does_not_remeasure(tmp_path):
    key = "sensitivity/jacobian_norm/val/mean"
    first = JacobianNormMonitor(num_samples=30)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(
        tmp_path, [first, ckpt], max_epochs=1, logger=CSVLogger(tmp_path, name="a"), enable_checkpointing=True
    )
    trainer.fit(Classifier(), datamodule=TinyData())
    assert first.measured_epochs == [0, 1]

    second = JacobianNormMonitor(num_samples=30, seed=0)
    logger = CSVLogger(tmp_path, name="b")
    trainer = make_trainer(tmp_path, [second], max_epochs=3, logger=logger, enable_checkpointing=True)
    trainer.fit(Classifier(), datamodule=TinyData(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.measured_epochs == [0, 1, 2, 3]
    for split in ("val", "train"):
        assert torch.equal(second.probe_sets[split].inputs, first.probe_sets[split].inputs)
    steps = [int(r["step"]) for r in csv_rows(logger.log_dir) if r.get(key)]
    assert steps == [7, 11]  # epochs 2 and 3 only, at their epoch-end steps (4 batches per epoch); 0 and 1 were before


def test_validate_and_test_log_through_returned_dict(tmp_path):
    """Values measured in fit (train-epoch end), trainer.validate (inference mode) and trainer.test agree."""
    monitors = [
        JacobianNormMonitor(num_samples=30),
        TransitionMonitor(num_samples=30, num_trajectories=3, num_points=12),
        StiffnessMonitor(num_samples=30, groups=("val_val", "train_val")),
    ]
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, logger=CSVLogger(tmp_path))
    module, data = Classifier(), TinyData()
    trainer.fit(module, datamodule=data)
    fit_values = sensitivity_metrics(trainer)
    assert len(fit_values) >= 20
    (returned,) = trainer.validate(module, datamodule=data, verbose=False)
    for key, value in fit_values.items():
        assert returned[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # trainer.test measures a probe set drawn from the test data and logs it under .../test/...
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    expected_keys = {rename_split(k, "val", "test") for k in fit_values}
    assert expected_keys <= tested.keys() and not any("/val" in k for k in tested if k.startswith("sensitivity/"))
    probe = monitors[0].probe_sets["test"]
    assert torch.equal(probe.inputs, data.test_set.tensors[0][probe.indices])
    with torch.no_grad():
        mean = float(jacobian_norm(module, probe.inputs).mean())
    assert tested["sensitivity/jacobian_norm/test/mean"] == pytest.approx(mean, rel=1e-5)
    # fit measured 0 and 1 only; validate/test do not add to the fit schedule
    assert monitors[0].measured_epochs == [0, 1]


def test_loaders_passed_to_fit_without_sanity_check(tmp_path):
    train_x, train_y = TinyData.make_data(200, seed=1)
    val_x, val_y = TinyData.make_data(100, seed=2)
    train = DataLoader(TensorDataset(train_x, train_y), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(val_x, val_y), batch_size=50)
    monitor = JacobianNormMonitor(num_samples=20, every_n_epochs=2, at_init=True)
    trainer = make_trainer(tmp_path, [monitor], logger=False, num_sanity_val_steps=0, max_epochs=3)
    trainer.fit(Classifier(), train_dataloaders=train, val_dataloaders=val)
    assert monitor.measured_epochs == [0, 2]
    probes = monitor.probe_sets
    assert torch.equal(probes["val"].inputs, val_x[probes["val"].indices])
    assert torch.equal(probes["train"].targets, train_y[probes["train"].indices])
    assert torch.bincount(probes["val"].targets).tolist() == [2] * 10


def test_explicit_val_data_without_val_loader(tmp_path):
    val_x, val_y = TinyData.make_data(60, seed=9)
    monitor = TransitionMonitor(val_data=(val_x, val_y), num_samples=15, num_trajectories=2, num_points=9)
    train = DataLoader(TensorDataset(*TinyData.make_data(100, seed=1)), batch_size=50)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, logger=CSVLogger(tmp_path))
    trainer.fit(Classifier(), train_dataloaders=train)
    probe = monitor.probe_sets["val"]
    assert len(probe) == 15 and torch.equal(probe.inputs, val_x[probe.indices])
    assert "sensitivity/transitions/val/activation_mean" in trainer.callback_metrics


def test_missing_val_data_fails_in_setup_with_advice(tmp_path):
    train = DataLoader(TensorDataset(*TinyData.make_data(100, seed=1)), batch_size=50)
    trainer = make_trainer(tmp_path, [JacobianNormMonitor()], max_epochs=1, logger=False)
    with pytest.raises(MisconfigurationException, match=r"val_data=\(inputs, targets\)"):
        trainer.fit(Classifier(), train_dataloaders=train)


def test_missing_train_data_for_stiffness_suggests_val_only_groups(tmp_path):
    val = DataLoader(TensorDataset(*TinyData.make_data(50, seed=2)), batch_size=50)
    # trainer.validate on a fresh trainer measures the groups it has data for and names the others once
    trainer = make_trainer(tmp_path, [StiffnessMonitor(num_samples=20)], logger=False)
    with pytest.warns(SensitivityWarning, match=r"no train data.*groups train_train, train_val.*train_data="):
        (out,) = trainer.validate(Classifier(), dataloaders=val, verbose=False)
    assert -1 <= out["sensitivity/stiffness/val_val/sign"] <= 1
    assert not any("train" in k for k in out)
    # with val-only groups trainer.validate works from the given loader alone
    monitor = StiffnessMonitor(groups=("val_val",), num_samples=20)
    trainer = make_trainer(tmp_path, [monitor], logger=False)
    (out,) = trainer.validate(Classifier(), dataloaders=val, verbose=False)
    assert -1 <= out["sensitivity/stiffness/val_val/sign"] <= 1


class NanHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def test_nan_model_warns_once_and_training_completes(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10), NanHead())
    monitors = small_monitors()
    trainer = make_trainer(tmp_path, monitors, logger=CSVLogger(tmp_path))
    with pytest.warns(SensitivityWarning) as record:
        trainer.fit(Classifier(net), datamodule=TinyData())
    assert trainer.current_epoch == MAX_EPOCHS
    ours = [str(w.message) for w in record if issubclass(w.category, SensitivityWarning)]
    jacobian = [m for m in ours if m.startswith("JacobianNormMonitor")]
    assert len(jacobian) == 1 and "non-finite" in jacobian[0]
    assert len([m for m in ours if m.startswith("StiffnessMonitor")]) == 1
    # no value is computed from NaN outputs, transition counts included: each monitor names the cause once
    transitions = [m for m in ours if m.startswith("TransitionMonitor")]
    assert len(transitions) == 1 and "non-finite model outputs" in transitions[0]
    assert not any(k.startswith("sensitivity/") for k in trainer.callback_metrics)


def test_failing_forward_warns_once_with_advice(tmp_path):
    monitor = JacobianNormMonitor(num_samples=20, forward_fn=lambda module, x: module(x)[:, 0])  # wrong rank
    trainer = make_trainer(tmp_path, [monitor], logger=CSVLogger(tmp_path))
    with pytest.warns(SensitivityWarning, match="forward_fn") as record:
        trainer.fit(Classifier(), datamodule=TinyData())
    assert len([w for w in record if issubclass(w.category, SensitivityWarning)]) == 1
    assert trainer.current_epoch == MAX_EPOCHS
    assert not any(k.startswith("sensitivity/") for k in trainer.callback_metrics)


def test_csv_logger_only_scalars_and_artifacts(tmp_path):
    monitors = [JacobianNormMonitor(num_samples=20), StiffnessMonitor(num_samples=20, groups=("val_val",))]
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, logger=logger)
    trainer.fit(Classifier(), datamodule=TinyData())
    rows = csv_rows(logger.log_dir)
    for key in ("sensitivity/stiffness/val_val/sign", "sensitivity/jacobian_norm/val/mean"):
        measured = [r for r in rows if r.get(key)]
        # initialisation, then the epoch-end step of Lightning's own metrics
        assert [int(r["step"]) for r in measured] == [0, 3], key
        assert all(abs(float(r[key])) > 0 for r in measured)
    assert sorted(p.name for p in (Path(logger.log_dir) / "sensitivity" / "stiffness").iterdir()) == [
        "epoch_0000.npz",
        "epoch_0001.npz",
    ]


def test_forward_fn_and_compiled_module_are_measured_through_the_original_forward():
    module = Classifier()
    plain = JacobianNormMonitor(num_samples=20)
    wrapped = JacobianNormMonitor(num_samples=20, forward_fn=lambda m, x: m.net(x))
    assert plain.measured_model(torch.compile(module)) is module
    probes = {"val": _probe()}

    a = plain.compute(plain.measured_model(module), probes, progress_factory("t", False), 0)
    b = wrapped.compute(wrapped.measured_model(module), probes, progress_factory("t", False), 0)
    assert torch.equal(a.arrays["val_norms"], b.arrays["val_norms"])


def _probe():
    from lightning_sensitivity.probes import probe_set_from_tensors

    return probe_set_from_tensors(X, Y, 20, seed=0)


def test_progress_bar_only_for_long_measurements(capsys):
    with MeasurementProgress("quick", enabled=True) as bar:
        bar(5, 10)
        bar(10, 10)
    assert "quick" not in capsys.readouterr().err
    with MeasurementProgress("slow", enabled=True) as bar:
        bar(1, 4)
        time.sleep(2.2)
        bar(4, 4)
    assert "slow" in capsys.readouterr().err
    with MeasurementProgress("off", enabled=False) as bar:
        time.sleep(0.01)
        bar(1, 1)
    assert "off" not in capsys.readouterr().err


def test_base_class_is_exported():
    assert issubclass(JacobianNormMonitor, SensitivityMonitor)
    assert "lightning_sensitivity.callbacks" in sys.modules


def test_compiled_submodule_is_measured_eagerly():
    from lightning_sensitivity.callbacks._compat import eager as _eager

    plain = Classifier()
    compiled = Classifier(torch.compile(plain.net))
    monitor = JacobianNormMonitor(num_samples=20)
    probes = {"val": _probe()}
    expected = monitor.compute(plain, probes, progress_factory("t", False), 0).arrays["val_norms"]
    with _eager():
        result = monitor.compute(monitor.measured_model(compiled), probes, progress_factory("t", False), 0)
    got = result.arrays["val_norms"]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("figures", "drawn_counts", "validate"),
    [
        ("log_spaced", [1, 2, 4, 8, 16], True),
        (True, list(range(1, 20)), True),
        ("all", list(range(1, 20)), True),
        (False, [], False),
        ("none", [], False),
    ],
)
def test_figures_schedule_counts_measurements(figures, drawn_counts, validate):
    """Images are drawn at the 1st, 2nd, 4th, ... measurement of a fit, whatever epochs those are."""
    monitor = JacobianNormMonitor(figures=figures)
    drawn = []
    for count in range(1, 20):
        monitor._measured = set(range(0, 3 * (count - 1), 3))  # every_n_epochs=3: epochs 0, 3, 6, ... measured before
        if monitor._draw_figures(fitting=True):
            drawn.append(count)
    assert drawn == drawn_counts
    assert monitor._draw_figures(fitting=False) is validate


def test_skipped_figures_are_never_built(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_sensitivity.callbacks.base import Measurement

    class Trainer:  # the parts of a Trainer that _write_tensorboard reads
        loggers = [TensorBoardLogger(str(tmp_path))]

    def make_figure():
        raise AssertionError("a skipped figure must not be built")

    monitor = JacobianNormMonitor(figures="log_spaced")
    result = Measurement(figures=[("sensitivity/x", make_figure)])
    monitor._measured = {0, 1}  # this is the 3rd measurement: no images
    monitor._write(Trainer(), result, 3, {}, monitor._draw_figures(fitting=True))
    monitor._measured = {0, 1, 2}  # the 4th: images
    with pytest.raises(AssertionError, match="skipped figure"):
        monitor._write(Trainer(), result, 4, {}, monitor._draw_figures(fitting=True))


@pytest.mark.slow
def test_steps_line_up_with_lightnings_epoch_metrics_and_images_follow_the_measurement_count(tmp_path):
    """Sensitivity points sit at the step of Lightning's own epoch-end validation metrics; with every_n_epochs=3
    images are drawn at the 1st, 2nd and 4th measurement (epochs 0, 3, 9), and at the fit's last one (epoch 12)."""
    monitor = JacobianNormMonitor(num_samples=20, every_n_epochs=3)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=12, log_every_n_steps=1)
    trainer.fit(Classifier(), datamodule=TinyData())
    events = read_events(trainer.logger.log_dir)
    val_steps = [e.step for e in events.Scalars("val/loss")]
    sensitivity = [e.step for e in events.Scalars("sensitivity/jacobian_norm/val/mean")]
    assert sensitivity == [0] + [val_steps[e - 1] for e in (3, 6, 9, 12)]
    images = [e.step for e in events.Images("sensitivity/jacobian_norm/val/per_class")]
    assert images == [sensitivity[i] for i in (0, 1, 3, 4)]
