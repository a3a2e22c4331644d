"""Matplotlib figures: the monitors' pictures as figures, and the Agg figure factory of the report and compare pages.

There is one drawing of each picture: :mod:`lightning_sensitivity.logging.render` (NumPy + Pillow), which the
monitors log to TensorBoard/W&B/MLflow. :func:`plot_class_matrix`, :func:`plot_per_class` and
:func:`plot_stiffness_by_distance` return that same picture as a matplotlib figure (``(fig, ax)``, the image shown
pixel for pixel), for scripts and notebooks that save or compose figures. :func:`new_figure` builds the figures of
the charts the renderer does not draw (the offline report's curves over epochs, the comparison page's scatter plots).

``pyplot`` is never imported, so the user's backend and pyplot's global figure registry stay untouched and the
figures are garbage-collected like any other object (no ``plt.close`` needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_sensitivity.logging._draw import _check_names, to_numpy
from lightning_sensitivity.logging.render import render_class_matrix, render_per_class, render_stiffness_by_distance

__all__ = [
    "plot_class_matrix",
    "plot_stiffness_by_distance",
    "plot_per_class",
    "figure_to_array",
    "image_figure",
    "new_figure",
    "legend",
]

_DPI = 100


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` panels side by side, each ``width`` x ``height`` inches at 100 dpi, on an Agg canvas.

    Example:
        >>> fig, (left, right) = new_figure(2, 4.0, 3.0)
        >>> figure_to_array(fig).shape
        (300, 800, 3)
    """
    fig = Figure(figsize=(width * ncols, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def legend(ax: Axes, **kwargs: Any) -> None:
    """``ax.legend(**kwargs)`` when something on ``ax`` has a label (an empty legend box otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def image_figure(image: np.ndarray) -> tuple[Figure, Axes]:
    """An RGB image ``[H, W, 3]`` as a figure of exactly ``W`` x ``H`` pixels showing it (``figure_to_array`` gives
    the image back).

    Example:
        >>> image = render_per_class([0.3, 0.5], ["cat", "dog"])
        >>> fig, ax = image_figure(image)
        >>> bool((figure_to_array(fig) == image).all())
        True
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"`image` expected an [H, W, 3] array, got {getattr(image, 'shape', type(image).__name__)}")
    height, width = image.shape[:2]
    # A hair over the size so that the canvas rounds to W x H pixels, not one fewer.
    fig = Figure(figsize=((width + 1e-3) / _DPI, (height + 1e-3) / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return fig, ax


def plot_class_matrix(
    matrix: Any,
    class_names: Sequence[Any] | None = None,
    *,
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
    annotate: bool | None = None,
    cmap: str = "RdBu_r",
) -> tuple[Figure, Axes]:
    """Heatmap of a class-by-class matrix (e.g. class stiffness) on a fixed, zero-centred colour range.

    The picture of :func:`~lightning_sensitivity.logging.render.render_class_matrix` (the one the monitors log) as a
    figure. The colour range is fixed (not fitted to the data) so that heatmaps of different epochs are comparable
    in TensorBoard's image slider. Cells without pairs (NaN) are drawn grey.

    Args:
        matrix: ``[C, C2]`` tensor or array; rows are the first set's classes, columns the second's.
        class_names: labels for the axes (length ``C``; a square matrix uses them on both axes). ``None``: indices.
        title: figure title, e.g. ``"train_val class sign stiffness, epoch 3"``.
        vmin: value mapped to the low end of the colormap.
        vmax: value mapped to the high end of the colormap; must be greater than ``vmin``.
        annotate: write each value into its cell; ``None``: when the cells hold legible numbers (at most 20 classes).
        cmap: name of a matplotlib colormap (a diverging one for signed quantities).

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: if ``matrix`` is not 2-D or empty, if ``vmin >= vmax`` or if the names do not match the size.
        TypeError: if ``matrix`` is not numeric or ``cmap`` is not a known colormap name.

    Example::

        fig, ax = plot_class_matrix(torch.eye(3) * 2 - 1, ["cat", "dog", "car"], title="epoch 1")
        image = figure_to_array(fig)  # [H, W, 3] uint8
    """
    values = to_numpy(matrix, "matrix")
    if values.ndim == 2 and values.size:
        _check_names(class_names, values.shape[0], "class_names")
    image = render_class_matrix(values, class_names, title=title, vmin=vmin, vmax=vmax, annotate=annotate, cmap=cmap)
    return image_figure(image)


def plot_stiffness_by_distance(
    bin_edges: Any,
    mean: Any,
    count: Any = None,
    *,
    critical_length: float | None = None,
    title: str = "",
) -> tuple[Figure, Axes]:
    """Binned stiffness against the input distance of the pair, with the critical length marked.

    The picture of :func:`~lightning_sensitivity.logging.render.render_stiffness_by_distance` as a figure.

    Args:
        bin_edges: ``[B + 1]`` distance-bin edges.
        mean: ``[B]`` mean stiffness per bin (NaN for empty bins; they are left out of the curve).
        count: optional ``[B]`` number of pairs per bin, drawn as grey bars on a secondary axis.
        critical_length: distance where the stiffness first crosses zero; drawn as a dashed vertical line when
            finite.
        title: figure title.

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: if the lengths of ``bin_edges``, ``mean`` and ``count`` do not match.

    Example::

        edges, mean, count = stiffness_by_distance(result.sign, x, num_bins=10)
        fig, ax = plot_stiffness_by_distance(edges, mean, count, critical_length=0.7, title="epoch 2")
    """
    length = math.nan if critical_length is None else critical_length
    return image_figure(render_stiffness_by_distance(bin_edges, mean, count, critical_length=length, title=title))


def plot_per_class(
    values: Any,
    class_names: Sequence[Any] | None = None,
    *,
    title: str = "",
    ylabel: str = "",
) -> tuple[Figure, Axes]:
    """Bar chart of one value per class (e.g. the mean Jacobian norm of each class); NaN classes get no bar.

    The picture of :func:`~lightning_sensitivity.logging.render.render_per_class` as a figure.

    Args:
        values: ``[C]`` tensor or array.
        class_names: bar labels (length ``C``); ``None``: class indices.
        title: figure title.
        ylabel: label of the value axis.

    Returns:
        ``(fig, ax)``.

    Raises:
        ValueError: if ``values`` is empty or not 1-D, or the names do not match.

    Example::

        fig, ax = plot_per_class([0.3, 0.5, 0.2], ["cat", "dog", "car"], ylabel="Jacobian norm", title="epoch 4")
    """
    heights = to_numpy(values, "values")
    if heights.ndim == 1 and heights.size:
        _check_names(class_names, heights.size, "class_names")
    return image_figure(render_per_class(heights, class_names, title=title, ylabel=ylabel))


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an RGB image.

    Args:
        fig: a matplotlib figure (from these functions or anywhere else; one without an Agg canvas gets one).

    Returns:
        ``[H, W, 3]`` ``uint8`` array, ready for ``SummaryWriter.add_image(..., dataformats="HWC")``.

    Raises:
        TypeError: if ``fig`` is not a matplotlib ``Figure``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"`fig` expected a matplotlib Figure, got {type(fig).__name__}")
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]
