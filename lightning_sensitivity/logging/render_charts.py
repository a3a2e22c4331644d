"""Bar charts and curves as RGB arrays (per-class Jacobian norms, stiffness by input distance), drawn like the
heatmaps of :mod:`lightning_sensitivity.logging.render` with NumPy and Pillow."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lightning_sensitivity.logging._draw import (
    AXIS,
    BAR_GREY,
    BLUE,
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
    to_numpy,
)

__all__ = ["render_per_class", "render_stiffness_by_distance"]


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
    # Laid out for the 372 x 215 box of TensorBoard's image card (shown there unscaled): ~250 x 95 px of bars.
    slot = int(min(36, max(3, 250 // count)))
    plot_w, plot_h = count * slot, 95
    label_size = 10
    line = _text_size("Ag", label_size)[1]
    widths = [_text_size(s, label_size)[0] for s in labels]
    vertical = max(widths) + 4 > slot
    step = _label_step(count, slot, line if vertical else max(widths))
    shown = range(0, count, step)
    xlab_h = max(_text_size(labels[i], label_size, vertical)[1] for i in shown)
    x0 = PAD + (line + 6 if ylabel else 0) + _tick_label_width(ticks) + 8
    y0 = PAD + TITLE_SIZE + 6
    width = max(x0 + plot_w + PAD + 6, 260)
    height = y0 + plot_h + 4 + xlab_h + 2 + line + PAD // 2
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
    _put(img, "class", 10, x0 + plot_w / 2, y0 + plot_h + 4 + xlab_h, "mt")
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
    plot_w, plot_h = 230, 130  # the whole picture fits TensorBoard's 372 x 215 image box unscaled
    line = _text_size("Ag", 11)[1]
    x0 = PAD + line + 6 + _tick_label_width(yticks) + 8
    y0 = PAD + TITLE_SIZE + 6
    cticks = _nice_ticks(0.0, max(1.0, float(np.nanmax(counts)) if counts is not None else 1.0), 4)
    right_w = (8 + _tick_label_width(cticks) + 4 + line) if counts is not None else 0
    width = x0 + plot_w + right_w + PAD
    height = y0 + plot_h + 4 + line + 2 + line + PAD // 2
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
        _put(img, _fmt(float(t)), 10, tx, y0 + plot_h + 4, "mt")
    _put(img, "input distance", 10, x0 + plot_w / 2, y0 + plot_h + 4 + line + 2, "mt")
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
