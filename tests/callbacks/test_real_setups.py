"""End to end, the setups a researcher brings, each in a real ``Trainer``.

Streaming datasets, several validation loaders, no logger, checkpointing and early stopping on a sensitivity key,
and arguments that are accepted but wrong.

Values are checked against ``tests/oracles.py`` at the final weights; training is compared bitwise with a run
without monitors (``reliability/_helpers.py``).
"""

from __future__ import annotations

import copy
import csv
import random
import warnings

import numpy as np
import pytest
import torch
from callbacks._tiny import NUM_CLASSES
from helpers import (
    Classifier,
    ReliableModule,
    TinyData,
    csv_series,
    fit,
    last_artifact,
    make_trainer,
    mlp,
    rng_states,
    sensitivity_metrics,
)
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from oracles import jacobian_norm_loop, stiffness_loop
from reliability._helpers import FitRecord, training_differences
from reliability._helpers import make_trainer as reliable_trainer
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor

JAC, STIFF = "sensitivity/jacobian_norm", "sensitivity/stiffness"


def oracle_norms(net, inputs):
    return jacobian_norm_loop(copy.deepcopy(net).double(), inputs.double())


def artifact_norms(root, split="val"):
    return torch.as_tensor(last_artifact(root, "jacobian_norm").arrays[f"{split}_norms"], dtype=torch.float64)


# ---------------------------------------------------------------- 3. streaming data
class Stream(IterableDataset):
    """Items in a fixed order with a random transform from the global torch/numpy/python generators; no index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, as_dict: bool = False) -> None:
        self.x, self.y, self.as_dict = x, y, as_dict

    def __iter__(self):
        for x, y in zip(self.x, self.y, strict=True):
            x = x + 0.05 * torch.randn_like(x)
            x = x.flip(-1) if np.random.rand() < 0.5 else x
            x = x * random.uniform(0.9, 1.1)
            yield {"pixels": x, "target": y} if self.as_dict else (x, y)


def stream_data(n: int, seed: int, **options) -> tuple[Stream, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1234))[y] + 0.7 * torch.randn(
        n, 1, 8, 8, generator=gen
    )
    return Stream(x, y, **options), x, y


def stream_fit(root, callbacks) -> FitRecord:
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    module = ReliableModule("mlp", "adam")
    train, val = stream_data(48, 1)[0], stream_data(16, 2)[0]
    tr = reliable_trainer(root, callbacks, max_epochs=2)
    fit(tr, module, DataLoader(train, batch_size=12), DataLoader(val, batch_size=8))
    return FitRecord(tr, module, rng_states(), csv_series(tr.logger.log_dir))


def first_items(stream: Stream, seed: int) -> torch.Tensor:
    """The stream's items as a fresh iterator yields them with the global generators seeded from ``seed``."""
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    return torch.stack([x for x, _ in stream])


@pytest.mark.slow
def test_streaming_datasets_probe_the_first_examples_and_leave_training_bitwise_identical(tmp_path):
    reference = stream_fit(tmp_path / "without", [])
    jac = JacobianNormMonitor(num_samples=16)
    monitors = [jac, StiffnessMonitor(num_samples=16, num_distance_bins=4), TransitionMonitor(num_samples=16,
                num_trajectories=2, num_points=6)]  # fmt: skip
    monitored = stream_fit(tmp_path / "with", monitors)
    assert training_differences(reference, monitored) == []
    assert monitored.trainer.global_step == 8  # 2 epochs x 4 batches: the streams were really consumed
    val_stream, _, val_y = stream_data(16, 2)
    train_stream, _, train_y = stream_data(48, 1)
    val, train = jac.probe_sets["val"], jac.probe_sets["train"]
    assert val.indices.tolist() == list(range(16))  # the whole (short) val stream, in order
    assert torch.equal(val.inputs, first_items(val_stream, jac.seed)) and torch.equal(val.targets, val_y)
    assert train.indices.max() < 48 and torch.bincount(train.targets).tolist() == [4, 4, 4, 4]
    assert torch.equal(train.inputs, first_items(train_stream, jac.seed)[train.indices])
    assert torch.equal(train.targets, train_y[train.indices])
    expected = oracle_norms(monitored.module, val.inputs)
    torch.testing.assert_close(artifact_norms(monitored.trainer.logger.log_dir), expected, rtol=1e-5, atol=1e-8)
    logged = sensitivity_metrics(monitored.trainer)
    assert {
        f"{JAC}/train/mean",
        f"{STIFF}/train_val/cosine",
        "sensitivity/transitions/val/activation_mean",
    } <= logged.keys()


def broken_train_fit(tmp_path, monitors):
    """A train stream of dicts without an input-like key (the default batch split cannot read it)."""

    class DictModule(Classifier):
        def _loss(self, batch):
            x, y = (batch["pixels"], batch["target"]) if isinstance(batch, dict) else batch
            return torch.nn.functional.cross_entropy(self(x), y)

    torch.manual_seed(0)
    module = DictModule(lr=0.05)
    train = stream_data(40, 1, as_dict=True)[0]
    gen = torch.Generator().manual_seed(2)
    val = TensorDataset(torch.randn(30, 1, 8, 8, generator=gen), torch.arange(30) % NUM_CLASSES)
    messages = fit(make_trainer(tmp_path, monitors, max_epochs=2), module, DataLoader(train, batch_size=10),
                   DataLoader(val, batch_size=10))  # fmt: skip
    return module, messages


@pytest.mark.slow
def test_a_train_split_that_cannot_be_drawn_is_reported_once_and_the_val_split_still_measured(tmp_path):
    jac, stiff = JacobianNormMonitor(num_samples=12), StiffnessMonitor(num_samples=12, num_distance_bins=4)
    module, messages = broken_train_fit(tmp_path, [jac, stiff])
    for name in ("JacobianNormMonitor", "StiffnessMonitor"):
        failures = [m for m in messages if m.startswith(f"{name} could not produce the train probe set")]
        assert len(failures) == 1, messages  # three measurements, one report
        assert "input key" in failures[0]  # says what is wrong with the batch
    assert not [m for m in messages if "val probe set" in m]
    logged = sensitivity_metrics(module.trainer)
    assert f"{JAC}/val/mean" in logged and not [k for k in logged if "/train" in k and k.startswith(JAC)]
    assert logged[f"{JAC}/val/mean"] == pytest.approx(
        float(oracle_norms(module, jac.probe_sets["val"].inputs).mean()), rel=1e-5
    )


@pytest.mark.slow
def test_stiffness_still_logs_val_val_when_the_train_probe_set_cannot_be_drawn(tmp_path):
    stiff = StiffnessMonitor(num_samples=12, num_distance_bins=4)
    module, _ = broken_train_fit(tmp_path, [stiff])
    val = stiff.probe_sets["val"]
    expected = stiffness_loop(copy.deepcopy(module.net).double(), val.inputs.double(), val.targets)
    assert sensitivity_metrics(module.trainer)[f"{STIFF}/val_val/cosine"] == pytest.approx(
        expected["cosine_mean"], rel=1e-4
    )


# ---------------------------------------------------------------- 4. several validation loaders
def two_val_loaders():
    gen = torch.Generator().manual_seed(5)
    a = TensorDataset(torch.randn(20, 6, generator=gen), torch.arange(20) % 3)
    b = TensorDataset(torch.randn(24, 6, generator=gen) + 2.0, torch.arange(24) % 3)
    train = TensorDataset(torch.randn(30, 6, generator=gen), torch.arange(30) % 3)
    return DataLoader(train, batch_size=10), [DataLoader(a, batch_size=10), DataLoader(b, batch_size=12)], (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("idx", [None, 1])
def test_several_val_loaders_measure_the_chosen_one(tmp_path, idx):
    train, vals, datasets = two_val_loaders()
    torch.manual_seed(0)
    module = Classifier(mlp(6, 3), lr=0.05)
    monitor = JacobianNormMonitor(num_samples=9, **({} if idx is None else {"val_dataloader_idx": idx}))
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=1), module, train, vals)
    probe, chosen = monitor.probe_sets["val"], datasets[idx or 0]
    assert torch.equal(probe.inputs, chosen.tensors[0][probe.indices])
    assert torch.equal(probe.targets, chosen.tensors[1][probe.indices])
    notices = [m for m in messages if "the val data has" in m]
    assert len(notices) == 1 and "2 loaders" in notices[0] and f"loader {idx or 0}" in notices[0], messages
    torch.testing.assert_close(artifact_norms(tmp_path), oracle_norms(module.net, probe.inputs), rtol=1e-5, atol=1e-8)
    # the index chooses among the validation loaders only: `trainer.test` with one loader measures that loader
    test_set = TensorDataset(torch.randn(15, 6, generator=torch.Generator().manual_seed(9)), torch.arange(15) % 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = module.trainer.test(module, DataLoader(test_set, batch_size=5), verbose=False)[0]
    assert not [w for w in caught if "could not" in str(w.message)]
    test_probe = monitor.probe_sets["test"]
    assert torch.equal(test_probe.inputs, test_set.tensors[0][test_probe.indices])
    assert out[f"{JAC}/test/mean"] == pytest.approx(float(oracle_norms(module.net, test_probe.inputs).mean()), rel=1e-5)


@pytest.mark.slow
def test_a_val_loader_index_out_of_range_is_reported_once_and_training_goes_on(tmp_path):
    train, vals, _ = two_val_loaders()
    torch.manual_seed(0)
    module = Classifier(mlp(6, 3), lr=0.05)
    monitor = JacobianNormMonitor(num_samples=9, val_dataloader_idx=2)
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=2), module, train, vals)
    failures = [m for m in messages if "val_dataloader_idx" in m]
    assert len(failures) == 1, messages
    assert "is disabled for this run" in failures[0] and "val loaders (2), got 2" in failures[0]
    assert module.trainer.current_epoch == 2 and not sensitivity_metrics(module.trainer)


# ---------------------------------------------------------------- 5. no logger
@pytest.mark.slow
def test_without_a_logger_artifacts_go_under_default_root_dir_with_one_notice(tmp_path):
    torch.manual_seed(0)
    module = Classifier()
    monitor = JacobianNormMonitor(num_samples=20)
    messages = fit(make_trainer(tmp_path, [monitor], max_epochs=2, logger=False), module, datamodule=TinyData())
    files = sorted(p.name for p in (tmp_path / "sensitivity" / "jacobian_norm").iterdir())
    assert files == ["epoch_0000.npz", "epoch_0001.npz", "epoch_0002.npz"]
    notices = [m for m in messages if "no logger" in m]
    assert len(notices) == 1 and str(tmp_path) in notices[0], messages
    torch.testing.assert_close(artifact_norms(tmp_path), oracle_norms(module.net, monitor.probe_sets["val"].inputs),
                               rtol=1e-5, atol=1e-7)  # fmt: skip


# ---------------------------------------------------------------- 6. checkpointing on a sensitivity key
@pytest.mark.slow
def test_checkpoint_and_early_stopping_on_a_sensitivity_key_before_the_first_measurement(tmp_path):
    key = f"{JAC}/val/mean"
    torch.manual_seed(0)
    module = Classifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode="min")
    stopping = EarlyStopping(monitor=key, patience=10, mode="min")
    monitor = JacobianNormMonitor(num_samples=20, at_init=False)
    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    tr = make_trainer(tmp_path, [monitor, checkpoint, stopping], max_epochs=2, val_check_interval=0.5, logger=logger,
                 enable_checkpointing=True)  # fmt: skip
    fit(tr, module, datamodule=TinyData())
    assert tr.current_epoch == 2 and not tr.should_stop  # the run was not ended for lack of the key
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        logged = [float(row[key]) for row in csv.DictReader(file) if row.get(key)]
    assert len(logged) >= 3  # bridged mid-epoch measurements and the scheduled ones
    best = float(checkpoint.best_model_score)
    assert best == pytest.approx(min(logged), rel=1e-6) and any(v == pytest.approx(best, rel=1e-6) for v in logged)


# ---------------------------------------------------------------- 7. arguments accepted but wrong
@pytest.mark.parametrize("cls", [JacobianNormMonitor, StiffnessMonitor, TransitionMonitor])
def test_wrong_schedules_and_unknown_keywords_are_refused(cls):
    with pytest.raises(ValueError, match="`epochs`"):
        cls(epochs=[])
    with pytest.raises(ValueError, match="every_n_epochs.*log_spaced|log_spaced.*every_n_epochs"):
        cls(every_n_epochs=3, log_spaced=True)
    with pytest.raises(TypeError, match=f"^{cls.__name__} got an unexpected keyword argument 'num_sample'"):
        cls(num_sample=3)


class NamedTinyData(TinyData):
    num_classes = NUM_CLASSES


@pytest.mark.slow
@pytest.mark.parametrize("cls", [JacobianNormMonitor, StiffnessMonitor])
def test_class_names_of_the_wrong_length_are_refused_in_setup(tmp_path, cls):
    monitor = cls(num_samples=10, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="`class_names`.*10.*3|`class_names`.*3.*10"):
        make_trainer(tmp_path, [monitor], max_epochs=1).fit(Classifier(), datamodule=NamedTinyData())
