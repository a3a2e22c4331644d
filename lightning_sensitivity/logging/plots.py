"""Matplotlib figures for the sensitivity quantities.

Every function builds a :class:`matplotlib.figure.Figure` attached to an Agg canvas and returns ``(fig, ax)``.
``pyplot`` is never imported, so the user's backend and pyplot's global figure registry stay untouched and the
figures are garbage-collected like any other object (no ``plt.close`` needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_class_matrix", "plot_stiffness_by_distance", "plot_per_class", "figure_to_array"]

# Above this many classes, per-cell numbers become unreadable.
_MAX_ANNOTATED_CLASSES = 20
# Above this many classes, only every k-th tick label is shown so they do not overlap.
_MAX_TICK_LABELS = 40
_NAN_COLOR = "#c8c8c8"


def to_numpy(values: Any, name: str) -> np.ndarray:
    """Convert a tensor, array, sequence or scalar to a float64 NumPy array (tensors are detached and moved to CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if values.dtype.is_floating_point or values.dtype.is_complex:
            values = values.double()
        values = values.numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` expected a tensor or array of numbers, got {type(values).__name__}") from err


def _new_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _check_names(class_names: Sequence[Any] | None, count: int, name: str = "class_names") -> list[str]:
    if class_names is None:
        return [str(i) for i in range(count)]
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(f"`{name}` expected a sequence of names, got {type(class_names).__name__}")
    if len(class_names) != count:
        raise ValueError(f"`{name}` expected {count} names to match the data, got {len(class_names)}")
    return [str(n) for n in class_names]


def _tick_positions(count: int) -> np.ndarray:
    step = max(1, math.ceil(count / _MAX_TICK_LABELS))
    return np.arange(0, count, step)


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

    The colour range is fixed (not fitted to the data) so that heatmaps of different epochs are comparable in
    TensorBoard's image slider. Cells without pairs (NaN) are drawn grey.

    Args:
        matrix: ``[C, C2]`` tensor or array; rows are the first set's classes, columns the second's.
        class_names: labels for the axes (length ``C``; a square matrix uses them on both axes). ``None``: indices.
        title: figure title, e.g. ``"train_val class sign stiffness, epoch 3"``.
        vmin: value mapped to the low end of the colormap.
        vmax: value mapped to the high end of the colormap; must be greater than ``vmin``.
        annotate: write each value into its cell; ``None`` annotates when both sides have at most 20 classes.
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
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"`matrix` expected a non-empty 2-D matrix, got shape {tuple(values.shape)}")
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin >= vmax:
        raise ValueError(f"`vmin` and `vmax` expected finite numbers with vmin < vmax, got vmin={vmin}, vmax={vmax}")
    if not isinstance(cmap, str) or cmap not in colormaps:
        raise TypeError(f"`cmap` expected the name of a matplotlib colormap, got {cmap!r}")
    rows, cols = values.shape
    row_names = _check_names(class_names, rows)
    col_names = row_names if rows == cols else _check_names(None, cols)
    if annotate is None:
        annotate = max(rows, cols) <= _MAX_ANNOTATED_CLASSES

    side = min(12.0, 2.5 + 0.45 * max(rows, cols))
    fig, ax = _new_figure((side + 1.2, side))
    colormap = colormaps[cmap].with_extremes(bad=_NAN_COLOR)
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=colormap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal"
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    label_size = 9 if max(rows, cols) <= 20 else 6
    yticks, xticks = _tick_positions(rows), _tick_positions(cols)
    ax.set_yticks(yticks, [row_names[i] for i in yticks], fontsize=label_size)
    ax.set_xticks(xticks, [col_names[i] for i in xticks], fontsize=label_size, rotation=90 if cols > 10 else 0)
    if annotate:
        midpoint = (vmin + vmax) / 2
        half_range = (vmax - vmin) / 2
        for i in range(rows):
            for j in range(cols):
                value = values[i, j]
                text = "–" if not math.isfinite(value) else f"{value:.2f}"
                # White text on strongly saturated cells, black elsewhere, so numbers stay readable.
                strong = math.isfinite(value) and abs(value - midpoint) > 0.6 * half_range
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if strong else "black")
    if title:
        ax.set_title(title)
    return fig, ax


def plot_stiffness_by_distance(
    bin_edges: Any,
    mean: Any,
    count: Any = None,
    *,
    critical_length: float | None = None,
    title: str = "",
) -> tuple[Figure, Axes]:
    """Binned stiffness against the input distance of the pair, with the critical length marked.

    Args:
        bin_edges: ``[B + 1]`` distance-bin edges.
        mean: ``[B]`` mean stiffness per bin (NaN for empty bins; they are left out of the curve).
        count: optional ``[B]`` number of pairs per bin, drawn as grey bars on a secondary axis.
        critical_length: distance where the stiffness first crosses zero; drawn as a dashed vertical line when
            finite.
        title: figure title.

    Returns:
        ``(fig, ax)`` where ``ax`` holds the stiffness curve.

    Raises:
        ValueError: if the lengths of ``bin_edges``, ``mean`` and ``count`` do not match.

    Example::

        edges, mean, count = stiffness_by_distance(result.sign, x, num_bins=10)
        fig, ax = plot_stiffness_by_distance(edges, mean, count, critical_length=0.7, title="epoch 2")
    """
    edges = to_numpy(bin_edges, "bin_edges").reshape(-1)
    means = to_numpy(mean, "mean").reshape(-1)
    if means.size == 0 or edges.size != means.size + 1:
        raise ValueError(
            f"`bin_edges` expected one more entry than `mean` (B + 1 and B, B >= 1), got {edges.size} and {means.size}"
        )
    counts = None
    if count is not None:
        counts = to_numpy(count, "count").reshape(-1)
        if counts.size != means.size:
            raise ValueError(f"`count` expected {means.size} entries like `mean`, got {counts.size}")
    centers = (edges[:-1] + edges[1:]) / 2
    fig, ax = _new_figure((6.4, 4.2))
    if counts is not None:
        twin = ax.twinx()
        twin.bar(centers, counts, width=np.diff(edges), color="0.85", zorder=0)
        twin.set_ylabel("pairs per bin", color="0.45")
        # The bars are context only: keep the curve's axis on top and the bars behind it.
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        if counts.size:
            means = np.where(counts > 0, means, np.nan)
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.plot(centers, means, marker="o", markersize=3, color="C0", label="mean stiffness")
    length = math.nan if critical_length is None else float(critical_length)
    if math.isfinite(length):
        ax.axvline(length, color="C3", linestyle="--", label=f"critical length {length:.3g}")
    ax.set_xlabel("input distance")
    ax.set_ylabel("stiffness")
    ax.set_xlim(edges[0], edges[-1])
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return fig, ax


def plot_per_class(
    values: Any,
    class_names: Sequence[Any] | None = None,
    *,
    title: str = "",
    ylabel: str = "",
) -> tuple[Figure, Axes]:
    """Bar chart of one value per class (e.g. the mean Jacobian norm of each class); NaN classes get no bar.

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
    if heights.ndim != 1 or heights.size == 0:
        raise ValueError(f"`values` expected a non-empty 1-D array, got shape {tuple(heights.shape)}")
    names = _check_names(class_names, heights.size)
    fig, ax = _new_figure((min(14.0, 3.0 + 0.35 * heights.size), 4.0))
    positions = np.arange(heights.size)
    ax.bar(positions, np.nan_to_num(heights, nan=0.0), color="C0")
    ticks = _tick_positions(heights.size)
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if heights.size > 10 else 0, fontsize=8)
    ax.set_xlim(-0.6, heights.size - 0.4)
    ax.set_xlabel("class")
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig, ax


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
