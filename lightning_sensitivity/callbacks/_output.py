"""Where a measurement goes: scalars to every logger, images and histograms to every logger with an image API
(TensorBoard, W&B, MLflow), the run summary text to TensorBoard, one artifact file.

Rank-zero decisions are the caller's; nothing here issues a collective (``trainer.log_dir`` would: it broadcasts).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from lightning_sensitivity.logging import add_sensitivity_layout, log_text, save_artifact
from lightning_sensitivity.logging.plots import figure_to_array
from lightning_sensitivity.logging.writers import ImageWriter, TensorBoardImageWriter, image_writers


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
        # Identical on every rank (same probe set, same weights): no sync, hence no collective that could hang.
        for key, value in scalars.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)


def write_run_summary(writer: Any, name: str, config: Mapping[str, Any], layout_groups: tuple[str, ...]) -> None:
    """Once per run and writer: the custom-scalars layout and a Markdown table of the monitor's configuration."""
    add_sensitivity_layout(writer, groups=layout_groups)
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    log_text(writer, f"sensitivity/config/{name}", f"| setting | value |\n|---|---|\n{rows}", 0)


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


def _writers(target: Any) -> list[ImageWriter]:
    if hasattr(target, "add_image"):  # a SummaryWriter, as before loggers other than TensorBoard were written to
        return [TensorBoardImageWriter(target)]
    return image_writers(target)


def write_step(
    target: Any,
    histograms: Mapping[str, Tensor],
    figures: Iterable[tuple[str, Callable[[], Any]]],
    step: int,
) -> None:
    """Histograms and images of one measurement to every writer; images are built lazily and only when some logger
    takes them, so skipped ones cost nothing.

    ``target`` is ``trainer.loggers`` (every TensorBoard / W&B / MLflow logger among them is written to) or a bare
    ``SummaryWriter``. A figure callable returns an ``[H, W, 3]`` ``uint8`` array (``logging.render``) or a matplotlib
    figure (``logging.plots``).
    """
    writers = _writers(target)
    if not writers:
        return
    for tag, values in histograms.items():
        cpu = values.detach().cpu()
        for writer in writers:
            writer.write_histogram(tag, cpu, step)
    for tag, make_figure in figures:
        image = _as_image(make_figure())
        for writer in writers:
            writer.write_image(tag, image, step)


def write_artifact(
    trainer: pl.Trainer, quantity: str, epoch: int, step: int, arrays: Mapping[str, Any], meta: Mapping[str, Any]
) -> None:
    """Save one NPZ under the first logger's directory; nothing without a logger."""
    if not trainer.loggers:
        return
    logger = trainer.loggers[0]
    log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if log_dir is None:
        return
    save_artifact(log_dir, quantity, epoch, step, arrays, meta)
