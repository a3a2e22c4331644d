"""Where a measurement goes: scalars to every logger, images/histograms/text to the loggers that take them, one
artifact file.

Rank-zero decisions are the caller's; nothing here issues a collective (``trainer.log_dir`` would: it broadcasts).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_sensitivity import keys
from lightning_sensitivity.callbacks.measurement import Measurement
from lightning_sensitivity.logging import (
    add_sensitivity_layout,
    find_tensorboard_writer,
    log_figure,
    log_histogram,
    log_text,
    save_artifact,
)


def log_step(trainer: pl.Trainer) -> int:
    """The step Lightning writes its own epoch-end metrics at (``_batches_that_stepped``, which lags
    ``global_step`` under manual optimisation and at some epoch ends), so sensitivity points line up with them."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return int(step) if isinstance(step, int) else int(trainer.global_step)


def log_scalars(
    trainer: pl.Trainer, pl_module: pl.LightningModule, scalars: Mapping[str, float], step: int, fitting: bool
) -> None:
    """During ``fit``: every logger at ``step`` and ``trainer.callback_metrics`` (for checkpoint/early-stopping
    monitors); under ``validate``/``test``: ``pl_module.log``, so the values are in the dict those calls return."""
    if not scalars:
        return
    if fitting:
        for logger in trainer.loggers:
            logger.log_metrics(dict(scalars), step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
    else:
        # The values are identical on every rank (gathered, and logged only when every rank agreed on success), so
        # under several ranks a "max" sync returns them exactly and keeps Lightning from warning that epoch-level
        # values are not synced; every rank logs the same keys, so its collectives match. One rank: no sync at all.
        distributed = int(getattr(trainer, "world_size", 1) or 1) > 1
        for key, value in scalars.items():
            if distributed:
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
            else:
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)


def tensorboard_writer(trainer: pl.Trainer) -> Any:
    return find_tensorboard_writer(trainer)


def write_run_summary(writer: Any, name: str, config: Mapping[str, Any], layout_groups: tuple[str, ...]) -> None:
    """Once per run and writer: the custom-scalars layout and a Markdown table of the monitor's configuration."""
    add_sensitivity_layout(writer, groups=layout_groups)
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    log_text(writer, keys.config_tag(name), f"| setting | value |\n|---|---|\n{rows}", 0)


def write_histograms(trainer: pl.Trainer, result: Measurement, step: int) -> None:
    writer = find_tensorboard_writer(trainer)
    if writer is None:
        return
    for tag, values in result.histograms.items():
        log_histogram(writer, tag, values.detach().cpu(), step)


def write_figures(trainer: pl.Trainer, result: Measurement, step: int) -> None:
    """Images of one measurement; figures are built lazily here, so skipped ones cost nothing."""
    writer = find_tensorboard_writer(trainer)
    if writer is None:
        return
    for tag, make in result.figures:
        image = make()
        if isinstance(image, np.ndarray):
            writer.add_image(tag, image, global_step=step, dataformats="HWC")
        else:
            fig = image[0] if isinstance(image, tuple) else image
            log_figure(writer, tag, fig, step)


class ArtifactRoot(NamedTuple):
    path: str
    fallback: bool  # True when no logger has a directory and `trainer.default_root_dir` is used


def artifact_root(trainer: pl.Trainer) -> ArtifactRoot:
    """The directory artifacts go under: the first logger's ``log_dir`` (or ``save_dir``) that has one, else
    ``trainer.default_root_dir``."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if log_dir is not None:
            return ArtifactRoot(str(log_dir), False)
    return ArtifactRoot(str(Path(trainer.default_root_dir)), True)


def write_artifact(root: str, quantity: str, epoch: int, step: int, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Save one NPZ under ``{root}/sensitivity/{quantity}/``."""
    save_artifact(root, quantity, epoch, step, arrays, meta)
