"""Where a measurement goes: scalars to every logger, images/histograms/text to TensorBoard, one artifact file.

Rank-zero decisions are the caller's; nothing here issues a collective (``trainer.log_dir`` would: it broadcasts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_sensitivity.logging import add_sensitivity_layout, log_figure, log_histogram, log_text, save_artifact


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


def write_step(
    writer: Any,
    histograms: Mapping[str, Tensor],
    figures: Iterable[tuple[str, Callable[[], Any]]],
    step: int,
) -> None:
    """Histograms and images of one measurement; figures are built lazily, so skipped ones cost nothing."""
    for tag, values in histograms.items():
        log_histogram(writer, tag, values.detach().cpu(), step)
    for tag, make_figure in figures:
        fig, _ = make_figure()
        log_figure(writer, tag, fig, step)


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
