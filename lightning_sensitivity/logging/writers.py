"""Images, histograms and text to every attached logger that can take them, behind one small interface.

:func:`image_writers` maps a trainer's ``loggers`` to one writer per logger that has an image API:

* ``TensorBoardLogger``: ``SummaryWriter.add_image(..., dataformats="HWC")``, ``add_histogram``, ``add_text``.
* ``WandbLogger``: ``logger.log_image`` (a ``wandb.Image`` captioned with the global step), histograms as
  ``wandb.Histogram`` and text as ``wandb.Html``, all logged with ``trainer/global_step = step`` like Lightning's
  own scalars.
* ``MLFlowLogger`` (MLflow >= 2.12): ``MlflowClient.log_image(run_id, image, key=tag, step=step)`` (the run's
  "images" artifact folder, shown stepwise in the MLflow UI; ``/`` in the tag becomes ``~`` in the file name), and
  the latest picture of each tag under a short name, ``latest/stiffness/val_val/class_sign_matrix.png``; a
  histogram is a small JSON artifact ``histograms/<tag>/step_<step>.json`` (``{"step", "count", "min", "max",
  "mean", "bin_edges", "counts"}``: MLflow has no histogram type, and JSON stays machine-readable); text is
  ``text/<tag>/step_<step>.md``.

Other loggers (``CSVLogger``, custom ones) get no writer: scalars already go to every logger elsewhere. Loggers are
recognised by class name along the MRO, so neither Lightning nor ``wandb``/``mlflow`` is imported here until a
writer actually writes. No writer catches an exception: failures reach the caller, whose warn-once logic reports
them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.logging._draw import to_numpy

__all__ = [
    "ImageWriter",
    "TensorBoardImageWriter",
    "WandbImageWriter",
    "MLflowImageWriter",
    "image_writers",
    "check_image",
]

_HISTOGRAM_BINS = 30


class ImageWriter(Protocol):
    """What the monitors write besides scalars, to one logger."""

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None: ...

    def write_histogram(self, tag: str, values: Any, step: int) -> None: ...

    def write_text(self, tag: str, text: str, step: int) -> None: ...


def check_image(image: Any) -> np.ndarray:
    """Validate an ``[H, W, 3]`` ``uint8`` array (what :mod:`lightning_sensitivity.logging.render` returns)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`image` expected a numpy array [H, W, 3] uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(f"`image` expected a non-empty [H, W, 3] uint8 array, got {image.shape} {image.dtype}")
    return image


def _check(tag: Any, step: Any) -> None:
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"`tag` expected a non-empty str, got {tag!r}")
    check_int(step, "step", minimum=0)


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"`text` expected a str, got {type(text).__name__}")


def _finite(values: Any) -> np.ndarray:
    # Histogram binning fails on NaN/inf; one diverged point must not drop the whole picture.
    array = to_numpy(values, "values").reshape(-1)
    return array[np.isfinite(array)]


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class TensorBoardImageWriter:
    """Writes to a ``SummaryWriter`` (``TensorBoardLogger.experiment``)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
        _check(tag, step)
        image = check_image(image)
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if file_writer is None:  # not torch's SummaryWriter: its public API
            self.writer.add_image(tag, image, global_step=int(step), dataformats="HWC")
            return
        # The same image summary ``add_image`` writes, from the uint8 array as it is: ``add_image`` rescales through
        # float32 and encodes at zlib level 6, twice the time of a fast PNG of an image that is mostly flat colour.
        from tensorboard.compat.proto.summary_pb2 import Summary

        encoded = _png(image)
        value = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=encoded)
        file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=value)]), int(step))

    def write_histogram(self, tag: str, values: Any, step: int) -> None:
        _check(tag, step)
        array = _finite(values)
        if array.size:
            self.writer.add_histogram(tag, array, global_step=int(step))

    def write_text(self, tag: str, text: str, step: int) -> None:
        _check(tag, step)
        _check_text(text)
        self.writer.add_text(tag, text, global_step=int(step))


class WandbImageWriter:
    """Writes through a Lightning ``WandbLogger`` (its ``log_metrics`` adds ``trainer/global_step``)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
        _check(tag, step)
        image = check_image(image)
        # The media file is named after W&B's own step; the caption says the trainer's global step, which the
        # panel's slider is keyed by (Lightning defines `trainer/global_step` as the step metric).
        self.logger.log_image(key=tag, images=[image], step=int(step), caption=[f"global step {int(step)}"])

    def write_histogram(self, tag: str, values: Any, step: int) -> None:
        import wandb

        _check(tag, step)
        array = _finite(values)
        if array.size:
            self.logger.log_metrics({tag: wandb.Histogram(array, num_bins=_HISTOGRAM_BINS)}, step=int(step))

    def write_text(self, tag: str, text: str, step: int) -> None:
        import html

        import wandb

        _check(tag, step)
        _check_text(text)
        self.logger.log_metrics({tag: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=int(step))


def _mlflow_key(tag: str) -> str:
    # MLflow image keys allow only [A-Za-z0-9_-./ ].
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", tag)


def _short(tag: str) -> str:
    """``sensitivity/stiffness/val_val/class_sign_matrix`` -> ``stiffness/val_val/class_sign_matrix``."""
    parts = _mlflow_key(tag).split("/")
    return "/".join(parts[1:] if len(parts) > 1 and parts[0] == "sensitivity" else parts)


class MLflowImageWriter:
    """Writes to the run of a Lightning ``MLFlowLogger`` through its ``MlflowClient``."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
        _check(tag, step)
        image = check_image(image)
        client = self.logger.experiment
        # synchronous (MLflow >= 2.15 has the switch; older ones always are): an error surfaces here, not in a
        # background thread, and the file exists when this returns.
        extra = {"synchronous": True} if "synchronous" in inspect.signature(client.log_image).parameters else {}
        client.log_image(self.logger.run_id, image, key=_mlflow_key(tag), step=int(step), **extra)
        # The stepwise images above carry long names that differ only at their end (key, step, timestamp, id);
        # the latest picture of each tag also goes to a short, readable path that the Artifacts tab previews.
        client.log_image(self.logger.run_id, image, artifact_file=f"latest/{_short(tag)}.png")

    def write_histogram(self, tag: str, values: Any, step: int) -> None:
        _check(tag, step)
        array = _finite(values)
        if not array.size:
            return
        counts, edges = np.histogram(array, bins=_HISTOGRAM_BINS)
        summary = {
            "step": int(step),
            "count": int(array.size),
            "min": float(array.min()),
            "max": float(array.max()),
            "mean": float(array.mean()),
            "bin_edges": edges.tolist(),
            "counts": counts.tolist(),
        }
        self.logger.experiment.log_dict(
            self.logger.run_id, summary, f"histograms/{_mlflow_key(tag)}/step_{int(step):08d}.json"
        )

    def write_text(self, tag: str, text: str, step: int) -> None:
        _check(tag, step)
        _check_text(text)
        self.logger.experiment.log_text(self.logger.run_id, text, f"text/{_mlflow_key(tag)}/step_{int(step):08d}.md")


def _kind(logger: Any) -> str | None:
    names = {cls.__name__ for cls in type(logger).__mro__}
    for kind in ("TensorBoardLogger", "WandbLogger", "MLFlowLogger"):
        if kind in names:
            return kind
    return None


def image_writers(loggers: Iterable[Any] | None) -> list[ImageWriter]:
    """One writer per logger that can store images, in the order of ``loggers``.

    Args:
        loggers: ``trainer.loggers`` (Lightning loggers); ``None`` or empty: no writers.

    Returns:
        A list of :class:`ImageWriter`; ``CSVLogger`` and unknown loggers contribute none.

    Raises:
        TypeError: if ``loggers`` is not iterable.

    Example:
        >>> image_writers([])
        []
    """
    if loggers is None:
        return []
    try:
        items = list(loggers)
    except TypeError as err:
        raise TypeError(f"`loggers` expected an iterable of Lightning loggers, got {type(loggers).__name__}") from err
    writers: list[ImageWriter] = []
    for logger in items:
        kind = _kind(logger)
        if kind == "TensorBoardLogger":
            writers.append(TensorBoardImageWriter(logger.experiment))
        elif kind == "WandbLogger":
            writers.append(WandbImageWriter(logger))
        elif kind == "MLFlowLogger":
            writers.append(MLflowImageWriter(logger))
    return writers
