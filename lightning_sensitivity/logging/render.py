"""Fast RGB renderings of the monitors' images (class heatmaps, per-class bars, stiffness-by-distance curves).

Matplotlib needs ~0.3 s for a 10x10 heatmap and ~1 s for a 100x100 one, which doubled the wall time of short fits.
These functions draw the same pictures with NumPy (cells, colour bar) and Pillow (text, lines) in a few
milliseconds: the parts that do not change between epochs (axis labels, colour bar, ticks) are drawn once per
layout and cached, so a call fills the cells and writes the title. Every function returns an ``[H, W, 3]`` ``uint8``
array, ready for ``SummaryWriter.add_image(..., dataformats="HWC")`` and the other loggers' image calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.logging._draw import (
    AXIS,
    BAR_GREY,
    BLACK,
    BLUE,
    MAX_ANNOTATED,
    NAN_GREY,
    PAD,
    RED,
    TITLE_SIZE,
    WHITE,
    _check_names,
    _check_title,
    _finish,
    _fmt,
    _label_step,
    _nice_ticks,
    _put,
    _text_size,
    _tick_label_width,
    _y_axis,
    colormap_lut,
)
from lightning_sensitivity.logging.plots import to_numpy

__all__ = ["render_class_matrix", "render_per_class", "render_stiffness_by_distance", "render_timings", "colormap_lut"]


# ---------------------------------------------------------------------------------------------------------- heatmap


class _MatrixFrame:
    """Everything of a heatmap but the cells, the numbers in them and the title; cached per layout."""

    def __init__(
        self, rows: int, cols: int, row_names: tuple[str, ...], col_names: tuple[str, ...], vmin: float, vmax: float
    ) -> None:
        n = max(rows, cols)
        self.cell = cell = int(min(48, max(7, 600 // n)))
        label_size = 11 if n <= 20 else 9
        line = _text_size("Ag", label_size)[1]
        mat_w, mat_h = cols * cell, rows * cell
        row_step = _label_step(rows, cell, line)
        col_widths = [_text_size(s, label_size)[0] for s in col_names]
        vertical = max(col_widths) + 4 > cell
        col_step = _label_step(cols, cell, line if vertical else max(col_widths))
        shown_rows = range(0, rows, row_step)
        shown_cols = range(0, cols, col_step)
        ylab_w = max(_text_size(row_names[i], label_size)[0] for i in shown_rows)
        xlab_h = max(_text_size(col_names[j], label_size, vertical)[1] for j in shown_cols)
        self.x0 = PAD + ylab_w + 6
        self.y0 = PAD + TITLE_SIZE + 14
        bar_h = max(mat_h, 160)
        bar_x = self.x0 + mat_w + 24
        ticks = [vmin + (vmax - vmin) * i / 4 for i in range(5)]
        tick_w = max(_text_size(_fmt(t), 10)[0] for t in ticks)
        nan_label = "NaN (no data)"
        width = max(bar_x + 18 + 6 + tick_w, bar_x + 18 + 6 + _text_size(nan_label, 10)[0]) + PAD
        height = max(self.y0 + mat_h + 4 + xlab_h, self.y0 + bar_h + 30) + PAD
        img = Image.new("RGB", (width, height), WHITE)
        draw = ImageDraw.Draw(img)
        for i in shown_rows:
            cy = self.y0 + i * cell + cell / 2
            draw.line([(self.x0 - 4, cy), (self.x0 - 1, cy)], fill=AXIS)
            _put(img, row_names[i], label_size, self.x0 - 6, cy, "rm")
        for j in shown_cols:
            cx = self.x0 + j * cell + cell / 2
            draw.line([(cx, self.y0 + mat_h), (cx, self.y0 + mat_h + 3)], fill=AXIS)
            _put(img, col_names[j], label_size, cx, self.y0 + mat_h + 4, "mt", vertical=vertical)
        # Colour bar: the LUT top (vmax) to bottom (vmin), ticks at the quarters.
        lut = colormap_lut("RdBu_r")
        arr = np.asarray(img).copy()
        rows_idx = np.linspace(255, 0, bar_h).round().astype(int)
        arr[self.y0 : self.y0 + bar_h, bar_x : bar_x + 18] = lut[rows_idx][:, None, :]
        nan_y = self.y0 + bar_h + 12
        arr[nan_y : nan_y + 12, bar_x : bar_x + 18] = NAN_GREY
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        draw.rectangle([bar_x - 1, self.y0 - 1, bar_x + 18, self.y0 + bar_h], outline=AXIS)
        draw.rectangle([bar_x - 1, nan_y - 1, bar_x + 18, nan_y + 12], outline=AXIS)
        for t in ticks:
            ty = self.y0 + (vmax - t) / (vmax - vmin) * (bar_h - 1)
            draw.line([(bar_x + 18, ty), (bar_x + 22, ty)], fill=AXIS)
            _put(img, _fmt(t), 10, bar_x + 24, ty, "lm")
        _put(img, nan_label, 10, bar_x + 24, nan_y + 6, "lm")
        self.array = np.asarray(img).copy()
        self.array.setflags(write=False)
        self.annotate = n <= MAX_ANNOTATED
        self.number_size = next((s for s in (11, 10, 9, 8, 7) if _text_size("-0.00", s)[0] + 3 <= cell), 7)


@lru_cache(maxsize=32)
def _matrix_frame(
    rows: int, cols: int, row_names: tuple[str, ...], col_names: tuple[str, ...], vmin: float, vmax: float
) -> _MatrixFrame:
    return _MatrixFrame(rows, cols, row_names, col_names, vmin, vmax)


def render_class_matrix(
    matrix: Any,
    names: Sequence[Any] | None = None,
    *,
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
    col_names: Sequence[Any] | None = None,
) -> np.ndarray:
    """Heatmap of a class-by-class matrix on a fixed colour range (``RdBu_r``), as an RGB array.

    The range is fixed, not fitted, so that heatmaps of different epochs compare in TensorBoard's image slider.
    NaN cells (no pairs) are grey, and the legend under the colour bar says so. Up to 20 classes a side, each
    cell carries its value; with many classes only every k-th class is labelled so that the labels do not overlap.

    Args:
        matrix: ``[C, C2]`` tensor or array; rows are the first set's classes, columns the second's.
        names: labels of the rows (length ``C``; a square matrix uses them on both axes). ``None``: indices.
        col_names: labels of the columns when they differ from the rows (e.g. epochs); ``None``: as above.
        title: title, e.g. ``"train_val class sign stiffness, epoch 3"``.
        vmin: value at the low (blue) end of the colour bar.
        vmax: value at the high (red) end; must be greater than ``vmin``.

    Returns:
        ``[H, W, 3]`` ``uint8`` array.

    Raises:
        ValueError: if ``matrix`` is not 2-D or empty, ``vmin >= vmax`` or the names do not match the size.
        TypeError: if ``matrix`` is not numeric or ``title`` not a str.

    Example:
        >>> image = render_class_matrix([[1.0, -0.5], [float("nan"), 0.2]], ["cat", "dog"], title="epoch 1")
        >>> image.dtype, image.ndim, image.shape[2]
        (dtype('uint8'), 3, 3)
    """
    values = to_numpy(matrix, "matrix")
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"`matrix` expected a non-empty 2-D matrix, got shape {tuple(values.shape)}")
    if (
        not isinstance(vmin, (int, float))
        or not isinstance(vmax, (int, float))
        or isinstance(vmin, bool)
        or isinstance(vmax, bool)
        or not (math.isfinite(vmin) and math.isfinite(vmax))
        or vmin >= vmax
    ):
        raise ValueError(f"`vmin` and `vmax` expected finite numbers with vmin < vmax, got vmin={vmin}, vmax={vmax}")
    _check_title(title)
    rows, cols = values.shape
    row_names = _check_names(names, rows)
    if col_names is not None:
        columns = _check_names(col_names, cols)
    else:
        columns = row_names if rows == cols else tuple(str(j) for j in range(cols))
    frame = _matrix_frame(rows, cols, row_names, columns, float(vmin), float(vmax))
    cell, x0, y0 = frame.cell, frame.x0, frame.y0

    finite = np.isfinite(values)
    index = np.clip(np.rint((np.where(finite, values, vmin) - vmin) / (vmax - vmin) * 255), 0, 255).astype(np.intp)
    colours = colormap_lut("RdBu_r")[index]
    colours[~finite] = NAN_GREY
    canvas = frame.array.copy()
    canvas[y0 : y0 + rows * cell, x0 : x0 + cols * cell] = colours.repeat(cell, axis=0).repeat(cell, axis=1)
    img = Image.fromarray(canvas)
    if frame.annotate:
        midpoint, half = (vmin + vmax) / 2, (vmax - vmin) / 2
        for i in range(rows):
            for j in range(cols):
                value = values[i, j]
                ok = bool(finite[i, j])
                # White on strongly saturated cells, black elsewhere, as in the matplotlib version.
                colour = WHITE if ok and abs(value - midpoint) > 0.6 * half else BLACK
                text = f"{value:.2f}" if ok else "–"
                _put(img, text, frame.number_size, x0 + j * cell + cell / 2, y0 + i * cell + cell / 2, "mm", colour)
    return _finish(img, title)


# ------------------------------------------------------------------------------------------------------------- bars


def render_per_class(
    values: Any, names: Sequence[Any] | None = None, *, title: str = "", ylabel: str = ""
) -> np.ndarray:
    """Bar chart of one value per class (e.g. each class's mean Jacobian norm), as an RGB array.

    Classes whose value is NaN (no probe points) get no bar (and an "n/a" where there is room). With many classes
    only every k-th bar is labelled.

    Args:
        values: ``[C]`` tensor or array.
        names: bar labels (length ``C``); ``None``: class indices.
        title: title, e.g. ``"Mean Jacobian norm per class, epoch 4"``.
        ylabel: label of the value axis.

    Returns:
        ``[H, W, 3]`` ``uint8`` array.

    Raises:
        ValueError: if ``values`` is empty or not 1-D, or the names do not match.
        TypeError: if ``values`` is not numeric or ``title``/``ylabel`` not a str.

    Example:
        >>> render_per_class([0.3, 0.5, 0.2], ["cat", "dog", "car"], title="epoch 4", ylabel="norm").shape[2]
        3
    """
    heights = to_numpy(values, "values")
    if heights.ndim != 1 or heights.size == 0:
        raise ValueError(f"`values` expected a non-empty 1-D array, got shape {tuple(heights.shape)}")
    labels = _check_names(names, heights.size)
    _check_title(title)
    _check_title(ylabel, "ylabel")
    count = heights.size
    finite = np.isfinite(heights)
    lo = min(0.0, float(heights[finite].min())) if finite.any() else 0.0
    hi = max(0.0, float(heights[finite].max())) if finite.any() else 1.0
    ticks = _nice_ticks(lo, hi)
    t_lo, t_hi = float(ticks[0]), float(ticks[-1])
    slot = int(min(48, max(6, 560 // count)))
    plot_w, plot_h = count * slot, 260
    label_size = 10
    line = _text_size("Ag", label_size)[1]
    widths = [_text_size(s, label_size)[0] for s in labels]
    vertical = max(widths) + 4 > slot
    step = _label_step(count, slot, line if vertical else max(widths))
    shown = range(0, count, step)
    xlab_h = max(_text_size(labels[i], label_size, vertical)[1] for i in shown)
    x0 = PAD + (line + 6 if ylabel else 0) + _tick_label_width(ticks) + 8
    y0 = PAD + TITLE_SIZE + 14
    width = max(x0 + plot_w + PAD + 6, 320)
    height = y0 + plot_h + 4 + xlab_h + 6 + line + PAD
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)

    def to_y(v: float) -> float:
        return y0 + (t_hi - v) / (t_hi - t_lo) * plot_h

    zero = to_y(0.0)
    for i in np.flatnonzero(finite):
        left = x0 + i * slot + 0.1 * slot
        top, bottom = sorted((to_y(float(heights[i])), zero))
        draw.rectangle([left, top, left + 0.8 * slot - 1, bottom], fill=BLUE)
    if slot >= 20:  # a missing class must not read as a zero bar
        for i in np.flatnonzero(~finite):
            _put(img, "n/a", 9, x0 + i * slot + slot / 2, zero - 2, "mb", (128, 128, 128))
    draw.line([(x0, y0), (x0, y0 + plot_h)], fill=AXIS)
    draw.line([(x0, y0 + plot_h), (x0 + plot_w, y0 + plot_h)], fill=AXIS)
    if t_lo < 0:
        draw.line([(x0, zero), (x0 + plot_w, zero)], fill=AXIS)
    _y_axis(img, ticks, to_y, x0, False, ylabel)
    for i in shown:
        cx = x0 + i * slot + slot / 2
        draw.line([(cx, y0 + plot_h), (cx, y0 + plot_h + 3)], fill=AXIS)
        _put(img, labels[i], label_size, cx, y0 + plot_h + 4, "mt", vertical=vertical)
    _put(img, "class", 11, x0 + plot_w / 2, y0 + plot_h + 6 + xlab_h, "mt")
    return _finish(img, title)


# ------------------------------------------------------------------------------------------------------------ curve


def render_stiffness_by_distance(
    bin_edges: Any, mean: Any, count: Any = None, *, critical_length: float | None = math.nan, title: str = ""
) -> np.ndarray:
    """Binned stiffness against the input distance of the pair, as an RGB array.

    The curve joins the non-empty bins (blue, left axis); the number of pairs per bin is drawn as grey bars on the
    right axis; the critical length (first zero crossing) is a dashed red line with its value in the legend.

    Args:
        bin_edges: ``[B + 1]`` distance-bin edges.
        mean: ``[B]`` mean stiffness per bin (NaN for empty bins; they are left out).
        count: optional ``[B]`` pairs per bin.
        critical_length: marked when finite; ``None`` or NaN: not marked.
        title: title.

    Returns:
        ``[H, W, 3]`` ``uint8`` array.

    Raises:
        ValueError: if the lengths of ``bin_edges``, ``mean`` and ``count`` do not match, or the edges are not
            finite and increasing.
        TypeError: if an argument is not numeric or ``title`` not a str.

    Example:
        >>> render_stiffness_by_distance([0, 1, 2], [0.5, -0.1], [10, 4], critical_length=1.6, title="e 2").ndim
        3
    """
    edges = to_numpy(bin_edges, "bin_edges").reshape(-1)
    means = to_numpy(mean, "mean").reshape(-1).copy()
    if means.size == 0 or edges.size != means.size + 1:
        raise ValueError(
            f"`bin_edges` expected one more entry than `mean` (B + 1 and B, B >= 1), got {edges.size} and {means.size}"
        )
    if not np.isfinite(edges).all() or not (np.diff(edges) > 0).all():
        raise ValueError(f"`bin_edges` expected finite, increasing edges, got {edges.tolist()}")
    counts = None
    if count is not None:
        counts = to_numpy(count, "count").reshape(-1)
        if counts.size != means.size:
            raise ValueError(f"`count` expected {means.size} entries like `mean`, got {counts.size}")
        means = np.where(counts > 0, means, np.nan)
    if isinstance(critical_length, (bool, str)):
        raise TypeError(f"`critical_length` expected a float or None, got {type(critical_length).__name__}")
    try:
        length = math.nan if critical_length is None else float(critical_length)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`critical_length` expected a float or None, got {type(critical_length).__name__}") from err
    _check_title(title)

    finite = np.isfinite(means)
    lo = min(0.0, float(means[finite].min())) if finite.any() else -1.0
    hi = max(0.0, float(means[finite].max())) if finite.any() else 1.0
    yticks = _nice_ticks(lo, hi)
    y_lo, y_hi = float(yticks[0]), float(yticks[-1])
    xticks = _nice_ticks(float(edges[0]), float(edges[-1]), 6)
    xticks = xticks[(xticks >= edges[0] - 1e-12) & (xticks <= edges[-1] + 1e-12)]
    plot_w, plot_h = 520, 300
    line = _text_size("Ag", 11)[1]
    x0 = PAD + line + 6 + _tick_label_width(yticks) + 8
    y0 = PAD + TITLE_SIZE + 14
    cticks = _nice_ticks(0.0, max(1.0, float(np.nanmax(counts)) if counts is not None else 1.0), 4)
    right_w = (8 + _tick_label_width(cticks) + 4 + line) if counts is not None else 0
    width = x0 + plot_w + right_w + PAD
    height = y0 + plot_h + 6 + line + 4 + line + PAD
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    span = float(edges[-1] - edges[0])

    def to_x(v: float) -> float:
        return x0 + (v - edges[0]) / span * plot_w

    def to_y(v: float) -> float:
        return y0 + (y_hi - v) / (y_hi - y_lo) * plot_h

    x1 = x0 + plot_w
    if counts is not None:
        c_hi = float(cticks[-1])

        def to_cy(v: float) -> float:
            return y0 + (c_hi - v) / c_hi * plot_h

        for k in range(counts.size):
            if counts[k] > 0:
                draw.rectangle(
                    [to_x(edges[k]) + 1, to_cy(float(counts[k])), to_x(edges[k + 1]) - 1, y0 + plot_h], fill=BAR_GREY
                )
        draw.line([(x1, y0), (x1, y0 + plot_h)], fill=AXIS)
        _y_axis(img, cticks, to_cy, x1, True, "pairs per bin", (115, 115, 115))
    draw.line([(x0, to_y(0.0)), (x1, to_y(0.0))], fill=(77, 77, 77))
    centres = (edges[:-1] + edges[1:]) / 2
    points = [(to_x(c), to_y(m)) for c, m, ok in zip(centres, means, finite, strict=False) if ok]
    # Empty bins break the curve, as NaN does in matplotlib.
    segment: list[tuple[float, float]] = []
    for ok, c, m in zip(finite, centres, means, strict=False):
        if ok:
            segment.append((to_x(c), to_y(m)))
        else:
            if len(segment) > 1:
                draw.line(segment, fill=BLUE, width=2)
            segment = []
    if len(segment) > 1:
        draw.line(segment, fill=BLUE, width=2)
    for px, py in points:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=BLUE)
    legend = [("mean stiffness", BLUE, False)]
    if math.isfinite(length) and edges[0] <= length <= edges[-1]:
        lx = to_x(length)
        for top in range(y0, y0 + plot_h, 10):
            draw.line([(lx, top), (lx, min(top + 6, y0 + plot_h))], fill=RED, width=2)
    if math.isfinite(length):
        legend.append((f"critical length {length:.3g}", RED, True))
    draw.rectangle([x0, y0, x1, y0 + plot_h], outline=AXIS)
    _y_axis(img, yticks, to_y, x0, False, "stiffness")
    for t in xticks:
        tx = to_x(float(t))
        draw.line([(tx, y0 + plot_h), (tx, y0 + plot_h + 4)], fill=AXIS)
        _put(img, _fmt(float(t)), 10, tx, y0 + plot_h + 6, "mt")
    _put(img, "input distance", 11, x0 + plot_w / 2, y0 + plot_h + 6 + line + 4, "mt")
    # Legend, upper right inside the axes.
    text_w = max(_text_size(text, 10)[0] for text, _, _ in legend)
    box_w, box_h = 8 + 24 + 6 + text_w + 8, 6 + 16 * len(legend)
    bx, by = x1 - 6 - box_w, y0 + 6
    draw.rectangle([bx, by, bx + box_w, by + box_h], fill=WHITE, outline=(204, 204, 204))
    for k, (text, colour, dashed) in enumerate(legend):
        ly = by + 11 + 16 * k
        if dashed:
            draw.line([(bx + 8, ly), (bx + 16, ly)], fill=colour, width=2)
            draw.line([(bx + 22, ly), (bx + 30, ly)], fill=colour, width=2)
        else:
            draw.line([(bx + 8, ly), (bx + 32, ly)], fill=colour, width=2)
            draw.ellipse([bx + 17, ly - 3, bx + 23, ly + 3], fill=colour)
        _put(img, text, 10, bx + 38, ly, "lm")
    return _finish(img, title)


# ---------------------------------------------------------------------------------------------------------- timings


def render_timings(repeats: int = 20, seed: int = 0) -> dict[str, float]:
    """Median wall time in milliseconds of each renderer over ``repeats`` calls (one warm-up call first).

    Keys: ``class_matrix_10``, ``class_matrix_100``, ``per_class_10``, ``per_class_100``, ``by_distance``. The
    title changes per call (as the epoch does in training); the layout cache is warm after the first call, which is
    how the monitors use it.
    """
    import time

    check_int(repeats, "repeats", minimum=1)
    rng = np.random.default_rng(seed)
    names100 = [f"class_{i}" for i in range(100)]
    cases = {
        "class_matrix_10": lambda t: render_class_matrix(
            rng.uniform(-1, 1, (10, 10)), [str(i) for i in range(10)], title=t
        ),
        "class_matrix_100": lambda t: render_class_matrix(rng.uniform(-1, 1, (100, 100)), names100, title=t),
        "per_class_10": lambda t: render_per_class(rng.uniform(0, 3, 10), title=t, ylabel="||d logits / dx||_F"),
        "per_class_100": lambda t: render_per_class(rng.uniform(0, 3, 100), names100, title=t, ylabel="norm"),
        "by_distance": lambda t: render_stiffness_by_distance(
            np.linspace(0, 10, 21), np.linspace(0.8, -0.3, 20), rng.integers(0, 500, 20), critical_length=7.3, title=t
        ),
    }
    result = {}
    for key, make in cases.items():
        make("warm-up, epoch 0")
        times = []
        for k in range(repeats):
            start = time.perf_counter()
            make(f"{key}, epoch {k + 1}")
            times.append(time.perf_counter() - start)
        result[key] = float(np.median(times) * 1000)
    return result
