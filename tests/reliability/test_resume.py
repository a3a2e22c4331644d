"""Resume: fit k epochs, checkpoint, resume to n; the sensitivity series equals an uninterrupted run.

Lightning checkpoints do not hold the global random streams, so both runs reseed at every epoch start (Dropout),
shuffle with an epoch-seeded sampler and do not augment: the resumed run then trains bit for bit like the
uninterrupted one (checked), and any difference in the sensitivity series is the monitors' doing. The resumed run
writes into the same log directory, as a user resuming a run would, so a re-measured epoch would show up as a
duplicate step or a rewritten artifact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import ReliableData, ReliableModule, read_events
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Sampler

from lightning_sensitivity.logging import load_artifacts
from reliability._helpers import all_monitors, bitwise_equal, make_trainer, report_figure

pytestmark = pytest.mark.slow

K, N = 1, 3


class EpochSampler(Sampler[int]):
    """A shuffle that depends on the epoch only (Lightning calls ``set_epoch``), so a resumed run shuffles alike."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.size, generator=torch.Generator().manual_seed(self.epoch)).tolist())

    def __len__(self) -> int:
        return self.size


class ResumableData(ReliableData):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Lightning fetches the first batch of an epoch before `on_train_epoch_start`, so augmentation draws there
        # would come from different random states in the two runs.
        self.train_set.augment = False

    def train_dataloader(self) -> DataLoader:
        # A private generator: creating a loader iterator draws a base seed, from the global stream by default, and a
        # resumed run creates its first iterator at a different point relative to `on_train_epoch_start`.
        sampler, generator = EpochSampler(len(self.train_set)), torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, generator=generator)


class ReseedEachEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(100 + trainer.current_epoch, verbose=False)  # Dropout and augmentation draws


def fit(root: Path, max_epochs: int, ckpt_path: str | None = None, checkpoint: bool = False) -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    monitors = all_monitors(num_samples=16)
    callbacks: list[pl.Callback] = [ReseedEachEpoch(), *monitors]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_last=True))
    trainer = make_trainer(
        root, callbacks, logger="tb", max_epochs=max_epochs, enable_checkpointing=checkpoint, num_sanity_val_steps=0
    )
    module = ReliableModule("cnn")
    trainer.fit(module, datamodule=ResumableData(), ckpt_path=ckpt_path)
    return {"trainer": trainer, "module": module, "monitors": monitors, "log_dir": Path(trainer.logger.log_dir)}


def sensitivity_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = read_events(log_dir)
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
        if tag.startswith("sensitivity/")
    }


def artifact_files(log_dir: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(log_dir)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted((log_dir / "sensitivity").rglob("*.npz"))
    }


def test_resumed_series_equals_uninterrupted_run(tmp_path):
    whole = fit(tmp_path / "whole", N)
    first = fit(tmp_path / "resumed", K, checkpoint=True)
    before_resume = artifact_files(first["log_dir"])
    resumed = fit(tmp_path / "resumed", N, ckpt_path=str(tmp_path / "resumed" / "ckpt" / "last.ckpt"), checkpoint=True)
    assert resumed["log_dir"] == first["log_dir"]

    # precondition: the resumed run trained exactly like the uninterrupted one
    assert bitwise_equal(whole["module"].state_dict(), resumed["module"].state_dict())

    for old, new, ref in zip(first["monitors"], resumed["monitors"], whole["monitors"], strict=True):
        assert old.measured_epochs == list(range(K + 1))
        assert new.measured_epochs == ref.measured_epochs == list(range(N + 1))
        assert new.probe_sets.keys() == ref.probe_sets.keys()
        for split, probe in ref.probe_sets.items():
            assert bitwise_equal(new.probe_sets[split].indices, probe.indices)
            assert bitwise_equal(new.probe_sets[split].inputs, probe.inputs)

    expected = sensitivity_series(whole["log_dir"])
    got = sensitivity_series(resumed["log_dir"])
    assert len(expected) >= 25
    assert got == expected  # every tag: the same steps, once each, with the same values
    assert all(len({step for step, _ in series}) == len(series) for series in got.values())  # no step twice
    assert len(got["sensitivity/jacobian_norm/val/mean"]) == N + 1

    # every artifact once; those written before the checkpoint are left untouched by the resumed run
    after_resume = artifact_files(resumed["log_dir"])
    assert sorted(after_resume) == sorted(artifact_files(whole["log_dir"]))
    assert len(after_resume) == 3 * (N + 1)
    assert {k: after_resume[k] for k in before_resume} == before_resume
    reference = {(a.quantity, a.epoch): a for a in load_artifacts(whole["log_dir"])}
    compared = 0
    for artifact in load_artifacts(resumed["log_dir"]):
        ref = reference[artifact.quantity, artifact.epoch]
        assert artifact.step == ref.step
        assert artifact.arrays.keys() == ref.arrays.keys()
        for key, value in artifact.arrays.items():
            np.testing.assert_array_equal(value, ref.arrays[key], err_msg=f"{artifact.path} {key}")
            compared += 1
    events = sum(map(len, got.values()))
    report_figure(f"resume: k={K} -> n={N}, sensitivity scalar events equal to the uninterrupted run", events)
    report_figure("resume: artifact arrays equal to the uninterrupted run", compared)
