"""Writing pictures, histograms, text and the dashboard layout to TensorBoard.

The functions take a ``SummaryWriter`` (what Lightning's ``TensorBoardLogger.experiment`` returns) so they work the
same inside a callback and in a plain script. Lightning is only imported inside :func:`find_tensorboard_writer`.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.logging.plots import figure_to_array, to_numpy

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["find_tensorboard_writer", "log_figure", "log_histogram", "log_text", "add_sensitivity_layout"]

DEFAULT_GROUPS = ("train_train", "train_val", "val_val")

# Groups already written into each writer's layout; weak so that closed writers are not kept alive.
_LAYOUT_GROUPS: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def find_tensorboard_writer(trainer: Any) -> SummaryWriter | None:
    """Return the ``SummaryWriter`` of the trainer's first ``TensorBoardLogger``.

    Args:
        trainer: a ``lightning.pytorch.Trainer``.

    Returns:
        The first ``TensorBoardLogger``'s ``experiment`` among ``trainer.loggers``, or ``None`` when there is none
        (e.g. only a ``CSVLogger``, or ``logger=False``). On non-zero ranks Lightning returns a dummy experiment that
        accepts and drops every call.

    Example::

        writer = find_tensorboard_writer(trainer)
        if writer is not None:
            log_figure(writer, "sensitivity/stiffness/val_val/by_distance", fig, trainer.global_step)
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _check_tag(tag: Any) -> None:
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"`tag` expected a non-empty str, got {tag!r}")


def _check_step(step: Any) -> None:
    check_int(step, "step", minimum=0)


def log_figure(writer: SummaryWriter, tag: str, fig: Figure, step: int) -> None:
    """Render a matplotlib figure and write it as an RGB image; the figure is closed afterwards.

    Args:
        writer: a ``SummaryWriter``.
        tag: image tag, e.g. ``"sensitivity/stiffness/val_val/class_sign_matrix"``.
        fig: the figure (from :mod:`lightning_sensitivity.logging.plots` or elsewhere).
        step: global step the image belongs to.

    Raises:
        TypeError: if ``tag`` is not a non-empty string or ``fig`` not a ``Figure``.
        ValueError: if ``step`` is not a non-negative int.
    """
    _check_tag(tag)
    _check_step(step)
    try:
        image = figure_to_array(fig)
        writer.add_image(tag, image, global_step=int(step), dataformats="HWC")
    finally:
        # A figure made through pyplot would otherwise stay in pyplot's registry for the whole run.
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None and isinstance(fig, Figure):
            pyplot.close(fig)


def log_histogram(writer: SummaryWriter, tag: str, values: Any, step: int) -> None:
    """Write a histogram of the finite entries of ``values``; nothing is written when there are none.

    Args:
        writer: a ``SummaryWriter``.
        tag: histogram tag, e.g. ``"sensitivity/jacobian_norm/val"``.
        values: tensor or array of any shape (flattened).
        step: global step.

    Raises:
        TypeError: if ``tag`` is not a non-empty string or ``values`` is not numeric.
        ValueError: if ``step`` is not a non-negative int.
    """
    _check_tag(tag)
    _check_step(step)
    array = to_numpy(values, "values").reshape(-1)
    # TensorBoard's histogram binning fails on NaN/inf; one diverged point must not drop the whole picture.
    array = array[np.isfinite(array)]
    if array.size == 0:
        return
    writer.add_histogram(tag, array, global_step=int(step))


def log_text(writer: SummaryWriter, tag: str, text: str, step: int = 0) -> None:
    """Write a (Markdown) text summary, e.g. a monitor's configuration.

    Args:
        writer: a ``SummaryWriter``.
        tag: text tag, e.g. ``"sensitivity/config/JacobianNormMonitor"``.
        text: Markdown text.
        step: global step (0 for once-per-run summaries).

    Raises:
        TypeError: if ``tag`` or ``text`` is not a string.
        ValueError: if ``step`` is not a non-negative int.
    """
    _check_tag(tag)
    _check_step(step)
    if not isinstance(text, str):
        raise TypeError(f"`text` expected a str, got {type(text).__name__}")
    writer.add_text(tag, text, global_step=int(step))


def _exact(tag: str) -> str:
    # Custom-scalar chart tags are regular expressions matched from the start of the tag.
    return re.escape(tag) + "$"


def _multiline(*tags: str) -> list[Any]:
    return ["Multiline", [_exact(t) for t in tags]]


def sensitivity_layout(groups: Sequence[str] = DEFAULT_GROUPS) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout registered by :func:`add_sensitivity_layout` (category -> chart -> spec).

    Args:
        groups: stiffness pair groups to chart, e.g. ``("train_train", "train_val", "val_val")``.

    Returns:
        ``{category: {chart title: ["Multiline", [tag regex, ...]]}}`` as ``SummaryWriter.add_custom_scalars``
        takes it.
    """
    jac = "sensitivity/jacobian_norm"
    trans = "sensitivity/transitions"
    stiff = "sensitivity/stiffness"
    layout: dict[str, dict[str, list[Any]]] = {
        "Jacobian norm": {
            "Jacobian norm: train vs val (mean)": _multiline(f"{jac}/train/mean", f"{jac}/val/mean"),
            "Jacobian norm: train / val ratio": _multiline(f"{jac}/train_val_ratio"),
            "Generalization gap: val loss - train loss": _multiline("generalization_gap/loss"),
            "Generalization gap: train acc - val acc": _multiline("generalization_gap/acc"),
            "Jacobian norm: val mean, median, p90": _multiline(
                f"{jac}/val/mean", f"{jac}/val/median", f"{jac}/val/p90"
            ),
            "Jacobian norm as misclassification predictor (val AUROC)": _multiline(
                f"{jac}/val/misclassification_auroc"
            ),
        },
        "Transitions": {
            # val and train (TransitionMonitor(splits=("val", "train"))) on one chart each
            "Activation-pattern transitions per trajectory": _multiline(
                f"{trans}/val/activation_mean", f"{trans}/train/activation_mean"
            ),
            "Linear-region changes per trajectory": _multiline(
                f"{trans}/val/region_changes_mean", f"{trans}/train/region_changes_mean"
            ),
            "Prediction changes per trajectory": _multiline(
                f"{trans}/val/prediction_mean", f"{trans}/train/prediction_mean"
            ),
        },
        "Stiffness": {},
        "Training": {
            "Loss: train vs val": _multiline("train/loss", "val/loss"),
            "Accuracy: train vs val": _multiline("train/acc", "val/acc"),
        },
    }
    for group in groups:
        prefix = f"{stiff}/{group}"
        charts = layout["Stiffness"]
        for kind in ("sign", "cosine"):
            charts[f"{group}: {kind} stiffness, same vs different class"] = _multiline(
                f"{prefix}/same_class_{kind}", f"{prefix}/different_class_{kind}", f"{prefix}/{kind}"
            )
    if groups:
        layout["Stiffness"]["Critical length (all groups)"] = _multiline(
            *(f"{stiff}/{g}/critical_length" for g in groups)
        )
    else:
        del layout["Stiffness"]
    return layout


def add_sensitivity_layout(writer: SummaryWriter, groups: Sequence[str] = DEFAULT_GROUPS) -> None:
    """Register the TensorBoard custom-scalars layout of the sensitivity metrics (the "Custom Scalars" tab).

    Categories: "Jacobian norm" (train vs val mean on one chart, the train/val ratio and the generalization gap
    beside it), "Transitions", "Stiffness" (same- vs different-class per group, critical length of all groups) and
    "Training" (loss and accuracy, train vs val). Calling it again on the same writer does nothing unless new groups
    are given; then the layout is written again with the union of groups (TensorBoard shows the latest layout).

    Args:
        writer: a ``SummaryWriter``.
        groups: stiffness pair groups to chart.

    Raises:
        TypeError: if ``groups`` is not a sequence of non-empty strings.

    Example::

        writer = find_tensorboard_writer(trainer)
        if writer is not None:
            add_sensitivity_layout(writer, groups=("train_val",))
    """
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(f"`groups` expected a sequence of str, got {type(groups).__name__}")
    for group in groups:
        if not isinstance(group, str) or not group:
            raise TypeError(f"`groups` expected non-empty str entries, got {group!r}")
    try:
        known = _LAYOUT_GROUPS.get(writer)
    except TypeError:  # an object that cannot be weakly referenced: no memory, write every time
        known = None
    if known is not None and set(groups) <= set(known):
        return
    merged = tuple(dict.fromkeys([*(known or ()), *groups]))
    writer.add_custom_scalars(sensitivity_layout(merged))
    try:
        _LAYOUT_GROUPS[writer] = merged
    except TypeError:
        pass
