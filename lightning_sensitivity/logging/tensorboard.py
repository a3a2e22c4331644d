"""Writing pictures, histograms, text and the dashboard layout to TensorBoard.

The functions take a ``SummaryWriter`` (what Lightning's ``TensorBoardLogger.experiment`` returns) so they work the
same inside a callback and in a plain script. Lightning is only imported inside :func:`find_tensorboard_writer`.
"""

from __future__ import annotations

import itertools
import re
import sys
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_int
from lightning_sensitivity.logging._draw import to_numpy
from lightning_sensitivity.logging.plots import figure_to_array

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["find_tensorboard_writer", "log_figure", "log_histogram", "log_text", "add_sensitivity_layout"]

DEFAULT_GROUPS = ("train_train", "train_val", "val_val")

# Groups already written into each writer's layout; weak so that closed writers are not kept alive.
_LAYOUT_GROUPS: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary()
)


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


_SAME_SET = ("train_train", "val_val", "test_test")
_ANY = {"layer": "[^/]+", "c": "\\d+"}  # placeholders a chart line leaves open: any layer, any class


def _line(template: str, values: Mapping[str, Sequence[str]]) -> list[str]:
    """The tag regexes of one chart line template: one per combination of its placeholders' values."""
    names = re.findall(r"\{(\w+)\}", template)
    expanded = [n for n in dict.fromkeys(names) if n not in _ANY]
    out = []
    for combo in itertools.product(*(values[n] for n in expanded)):
        tag = template
        for name, value in zip(expanded, combo, strict=True):
            tag = tag.replace(f"{{{name}}}", value)
        parts = re.split(r"\{(\w+)\}", tag)  # what is left: {layer}, {c}, matching anything in their segment
        out.append("".join(re.escape(p) if i % 2 == 0 else _ANY[p] for i, p in enumerate(parts)) + "$")
    return out


def _merge_splits(*mappings: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    merged: dict[str, tuple[str, ...]] = {}
    for mapping in mappings:
        for quantity, splits in (mapping or {}).items():
            merged[quantity] = tuple(dict.fromkeys([*merged.get(quantity, ()), *splits]))
    return merged


def _quantity_charts(quantity: Any, splits: tuple[str, ...], groups: Sequence[str],
                     extra: Mapping[str, Sequence[str]]) -> dict[str, list[Any]]:  # fmt: skip
    words = " vs ".join(quantity.split_words.get(s, s) for s in splits if s != "test")
    values: dict[str, Sequence[str]] = {
        "split": splits,
        "held_out": [s for s in ("val", "test") if s in splits],
        "group": tuple(groups),
        "same_group": [g for g in groups if g in _SAME_SET],
        "kind": ("sign", "cosine"),
    }
    charts: dict[str, list[Any]] = {}
    for chart in quantity.charts:
        each = {n: values[n] for n in chart.each}
        if chart.source is not None and chart.each:
            each[chart.each[0]] = tuple(extra.get(chart.source, ()))
        for combo in itertools.product(*each.values()):
            fixed = dict(zip(each, combo, strict=True))
            lines = [r for t in chart.lines for r in _line(t, {**values, **{k: (v,) for k, v in fixed.items()}})]
            if lines:  # a chart without lines (e.g. no held-out split) is left out
                charts[chart.title.format(splits=words, **fixed)] = ["Multiline", lines]
    return charts


def sensitivity_layout(
    groups: Sequence[str] = DEFAULT_GROUPS, splits: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout registered by :func:`add_sensitivity_layout` (category -> chart -> spec).

    Built from the charts of every declared quantity (:attr:`lightning_sensitivity.keys.Quantity.charts`), one
    category each, and a "Training" category (loss and accuracy, train vs val).

    Args:
        groups: stiffness pair groups to chart, e.g. ``("train_train", "train_val", "val_val")``.
        splits: per quantity, the probe splits its charts draw one line each for (``{"transitions": ("val",
            "random")}``; what the monitors measure); quantities not given keep their declared ``layout_splits``.
            Other keys feed a chart's ``source`` (``"stiffness/layer"``: the pair groups whose per-layer stiffness
            is charted).

    Returns:
        ``{category: {chart title: ["Multiline", [tag regex, ...]]}}`` as ``SummaryWriter.add_custom_scalars``
        takes it; a category without charts is left out.
    """
    given = {k: tuple(v) for k, v in (splits or {}).items()}
    layout: dict[str, dict[str, list[Any]]] = {}
    for quantity in keys.declarations():
        charts = _quantity_charts(quantity, given.get(quantity.name, quantity.layout_splits), groups, given)
        if charts:
            layout.setdefault(quantity.category, {}).update(charts)
    layout["Training"] = {
        "Loss: train vs val": _multiline("train/loss", "val/loss"),
        "Accuracy: train vs val": _multiline("train/acc", "val/acc"),
    }
    return layout


def add_sensitivity_layout(
    writer: SummaryWriter, groups: Sequence[str] = DEFAULT_GROUPS, splits: Mapping[str, Sequence[str]] | None = None
) -> None:
    """Register the TensorBoard custom-scalars layout of the sensitivity metrics (the "Custom Scalars" tab).

    One category per declared quantity with charts (:attr:`lightning_sensitivity.keys.Quantity.charts`), e.g.
    "Jacobian norm" (the measured splits' means on one chart, the train/held-out ratio and the generalization gap
    beside it), "Transitions" (one line per measured split, e.g. val vs random), "Stiffness" (same- vs
    different-class per group, per-layer stiffness, critical length of all groups), and "Training" (loss and
    accuracy, train vs val). Calling it again on the same writer does nothing unless new groups or splits are
    given; then the layout is written again with the union (TensorBoard shows the latest layout).

    Args:
        writer: a ``SummaryWriter``.
        groups: stiffness pair groups to chart.
        splits: per quantity, the probe splits to chart (see :func:`sensitivity_layout`).

    Raises:
        TypeError: if ``groups`` is not a sequence of non-empty strings, or ``splits`` not a mapping of such.

    Example::

        writer = find_tensorboard_writer(trainer)
        if writer is not None:
            add_sensitivity_layout(writer, groups=("train_val",), splits={"transitions": ("val", "random")})
    """
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(f"`groups` expected a sequence of str, got {type(groups).__name__}")
    for group in groups:
        if not isinstance(group, str) or not group:
            raise TypeError(f"`groups` expected non-empty str entries, got {group!r}")
    if splits is not None and not isinstance(splits, Mapping):
        raise TypeError(f"`splits` expected a mapping {{quantity: splits}}, got {type(splits).__name__}")
    for quantity, names in (splits or {}).items():
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"`splits` expected a sequence of str for {quantity!r}, got {names!r}")
    try:
        known = _LAYOUT_GROUPS.get(writer)
    except TypeError:  # an object that cannot be weakly referenced: no memory, write every time
        known = None
    known_groups, known_splits = known if known is not None else ((), {})
    merged_splits = _merge_splits(known_splits, splits)
    if known is not None and set(groups) <= set(known_groups) and merged_splits == known_splits:
        return
    merged = tuple(dict.fromkeys([*known_groups, *groups]))
    writer.add_custom_scalars(sensitivity_layout(merged, merged_splits))
    try:
        _LAYOUT_GROUPS[writer] = (merged, merged_splits)
    except TypeError:
        pass
