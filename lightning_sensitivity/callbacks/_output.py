"""Where a measurement goes: scalars to every logger, images and histograms to every logger with an image API
(TensorBoard, W&B, MLflow), the run summary to TensorBoard, one artifact file.

Rank-zero decisions are the caller's; nothing here issues a collective (``trainer.log_dir`` would: it broadcasts).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_sensitivity import keys
from lightning_sensitivity.callbacks.measurement import Measurement
from lightning_sensitivity.logging import add_sensitivity_layout, log_text
from lightning_sensitivity.logging.plots import figure_to_array
from lightning_sensitivity.logging.writers import image_writers


def log_step(trainer: pl.Trainer, epoch_end: bool = False) -> int:
    """The step Lightning writes its own metrics at, so sensitivity points line up with them: the loop's
    ``_batches_that_stepped`` (``global_step`` counts optimizer steps, several per batch with multiple optimizers),
    minus one at the end of a training epoch, as Lightning does for its epoch-end metrics (the counter has already
    moved past the last batch there)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    if not isinstance(step, int):
        return int(trainer.global_step)
    return max(step - 1, 0) if epoch_end else step


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


def write_run_summary(
    writer: Any,
    name: str,
    config: Mapping[str, Any],
    layout_groups: tuple[str, ...],
    layout_splits: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Once per run and writer: the custom-scalars layout and a Markdown table of the monitor's configuration."""
    add_sensitivity_layout(writer, groups=layout_groups, splits=layout_splits)
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    log_text(writer, keys.config_tag(name), f"| setting | value |\n|---|---|\n{rows}", 0)


def write_notes(trainer: pl.Trainer, name: str, notes: list[str], step: int) -> None:
    """A measurement's notes (e.g. saturated transition counts) as text beside its charts, to every logger that
    takes text: TensorBoard's text tab ``sensitivity/notes/<monitor>``, W&B, MLflow."""
    if not notes:
        return
    text = "\n".join(f"- {note}" for note in notes)
    for writer in image_writers(trainer.loggers):
        writer.write_text(keys.notes_tag(name), text, step)


def write_histograms(trainer: pl.Trainer, result: Measurement, step: int) -> None:
    """Histograms of one measurement to every logger that takes them."""
    writers = image_writers(trainer.loggers)
    for tag, values in result.histograms.items():
        cpu = values.detach().cpu()
        for writer in writers:
            writer.write_histogram(tag, cpu, step)


def _as_image(made: Any) -> np.ndarray:
    """A figure callable's result as RGB: an array as is; a matplotlib ``Figure`` or ``(fig, ax)`` rendered (and
    closed), so figure callables written for the matplotlib plots keep working."""
    if isinstance(made, np.ndarray):
        return made
    fig = made[0] if isinstance(made, tuple) else made
    try:
        return figure_to_array(fig)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)


def write_figures(trainer: pl.Trainer, result: Measurement, step: int) -> None:
    """Images of one measurement to every logger that takes them; built lazily here (and only when some logger
    takes images), so skipped ones cost nothing."""
    writers = image_writers(trainer.loggers)
    if not writers:
        return
    for tag, make in result.figures:
        image = _as_image(make())
        for writer in writers:
            writer.write_image(tag, image, step)


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


def monitored_keys(trainer: pl.Trainer, quantity: str) -> list[str]:
    """The keys of ``quantity`` (``keys.prefix(quantity)/...``) that other callbacks (ModelCheckpoint, EarlyStopping)
    monitor."""
    wanted = []
    for callback in getattr(trainer, "callbacks", []):
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith(keys.prefix(quantity) + "/"):
            wanted.append(monitor)
    return wanted
