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
    BLACK,
    MAX_ANNOTATED,
    NAN_GREY,
    PAD,
    TITLE_SIZE,
    WHITE,
    _check_names,
    _check_title,
    _finish,
    _fmt,
    _label_step,
    _put,
    _text_size,
    colormap_lut,
    to_numpy,
)
from lightning_sensitivity.logging.render_charts import render_per_class, render_stiffness_by_distance

__all__ = [
    "CARD_HEIGHT",
    "CARD_WIDTH",
    "cell_text",
    "colormap_lut",
    "render_class_matrix",
    "render_per_class",
    "render_stiffness_by_distance",
    "render_timings",
]


# ---------------------------------------------------------------------------------------------------------- heatmap


#: The box TensorBoard's Time Series image card (its default dashboard) fits an image into: 372 x 215 pixels at the
#: default card width, scaled down to fit, never up. The heatmaps are laid out to fit it unscaled (10 classes).
CARD_WIDTH, CARD_HEIGHT = 372, 215
_MATRIX_HEIGHT, _MATRIX_WIDTH = 150, 230  # pixels of cells along each side, at most
_LABEL = 10  # class labels: 10 px, legible unscaled


class _MatrixFrame:
    """Everything of a heatmap but the cells, the numbers in them and the title; cached per layout.

    Landscape, for the :data:`CARD_WIDTH` x :data:`CARD_HEIGHT` box of TensorBoard's image cards: cells of at most
    150 px in height, class names on the rows; the columns carry the class indices (the rows say ``name (index)``)
    when the names would not fit across the cells; the colour bar stands at the right.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        row_names: tuple[str, ...],
        col_names: tuple[str, ...],
        vmin: float,
        vmax: float,
        has_nan: bool = False,
        xlabel: str = "",
        ylabel: str = "",
        cmap: str = "RdBu_r",
    ) -> None:
        self.cell = cell = int(min(36, max(3, min(_MATRIX_HEIGHT // rows, _MATRIX_WIDTH // cols))))
        label_size = _LABEL if cell >= 11 else 8
        line = _text_size("Ag", label_size)[1]
        mat_w, mat_h = cols * cell, rows * cell
        col_widths = [_text_size(c, label_size)[0] for c in col_names]
        if max(col_widths) + 3 > cell and row_names == col_names and len(set(row_names)) == rows:
            # Names too wide to stand across the cells: indices under the columns, "name (i)" on the rows.
            col_names = tuple(str(j) for j in range(cols))
            row_names = tuple(f"{name} ({i})" if name != str(i) else name for i, name in enumerate(row_names))
            col_widths = [_text_size(c, label_size)[0] for c in col_names]
        self.row_names, self.col_names = row_names, col_names
        vertical = max(col_widths) + 3 > cell
        row_step = _label_step(rows, cell, line)
        col_step = _label_step(cols, cell, line if vertical else max(col_widths))
        shown_rows = range(0, rows, row_step)
        shown_cols = range(0, cols, col_step)
        ylab_w = max(_text_size(row_names[i], label_size)[0] for i in shown_rows)
        xlab_h = max(_text_size(col_names[j], label_size, vertical)[1] for j in shown_cols)
        title_w = _text_size(ylabel, _LABEL)[1] + 4 if ylabel else 0
        self.x0 = PAD + title_w + ylab_w + 5
        self.y0 = PAD + TITLE_SIZE + 6
        bottom = self.y0 + mat_h + 3 + xlab_h
        if xlabel:
            xtitle_y = bottom + 1
            bottom = xtitle_y + _text_size(xlabel, _LABEL)[1]
        bar_x, bar_h = self.x0 + mat_w + 10, max(mat_h, 100)
        ticks = [vmin + (vmax - vmin) * k / 4 for k in range(5)]
        tick_w = max(_text_size(_fmt(t), 9)[0] for t in ticks)
        nan_label = "NaN (no data)"
        nan_y = self.y0 + bar_h + 6
        height = max(bottom, nan_y + 10) + PAD // 2
        # The NaN legend's room is kept without NaN too: the picture keeps its size from epoch to epoch.
        width = bar_x + 14 + max(tick_w, _text_size("-0.75", 9)[0], _text_size(nan_label, 9)[0]) + PAD // 2
        img = Image.new("RGB", (width, height), WHITE)
        draw = ImageDraw.Draw(img)
        for i in shown_rows:
            cy = self.y0 + i * cell + cell / 2
            draw.line([(self.x0 - 3, cy), (self.x0 - 1, cy)], fill=AXIS)
            _put(img, row_names[i], label_size, self.x0 - 4, cy, "rm")
        for j in shown_cols:
            cx = self.x0 + j * cell + cell / 2
            draw.line([(cx, self.y0 + mat_h), (cx, self.y0 + mat_h + 2)], fill=AXIS)
            _put(img, col_names[j], label_size, cx, self.y0 + mat_h + 3, "mt", vertical=vertical)
        if ylabel:
            _put(img, ylabel, _LABEL, PAD - 2, self.y0 + mat_h / 2, "lm", vertical=True)
        if xlabel:
            _put(img, xlabel, _LABEL, self.x0 + mat_w / 2, xtitle_y, "mt")
        # Colour bar at the right: the LUT top (vmax) to bottom (vmin), ticks at the quarters.
        lut = colormap_lut(cmap)
        arr = np.asarray(img).copy()
        rows_idx = np.linspace(255, 0, bar_h).round().astype(int)
        arr[self.y0 : self.y0 + bar_h, bar_x : bar_x + 10] = lut[rows_idx][:, None, :]
        if has_nan:
            arr[nan_y : nan_y + 10, bar_x : bar_x + 10] = NAN_GREY
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        draw.rectangle([bar_x - 1, self.y0 - 1, bar_x + 10, self.y0 + bar_h], outline=AXIS)
        for t in ticks:
            ty = self.y0 + (vmax - t) / (vmax - vmin) * (bar_h - 1)
            draw.line([(bar_x + 10, ty), (bar_x + 12, ty)], fill=AXIS)
            _put(img, _fmt(t), 9, bar_x + 14, ty, "lm")
        if has_nan:
            draw.rectangle([bar_x - 1, nan_y - 1, bar_x + 10, nan_y + 10], outline=AXIS)
            _put(img, nan_label, 9, bar_x + 14, nan_y + 5, "lm")
        self.array = np.asarray(img).copy()
        self.array.setflags(write=False)
        fits = [s for s in (11, 10, 9, 8) if _text_size("-0.00", s)[0] + 3 <= cell]
        # Numbers smaller than 8 px are not legible at the card's size: then the colours speak alone (the values
        # are in the artifacts and the offline report).
        self.annotate = rows <= MAX_ANNOTATED and cols <= MAX_ANNOTATED and bool(fits)
        self.number_size = fits[0] if fits else 8


@lru_cache(maxsize=32)
def _matrix_frame(
    rows: int,
    cols: int,
    row_names: tuple[str, ...],
    col_names: tuple[str, ...],
    vmin: float,
    vmax: float,
    has_nan: bool = False,
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "RdBu_r",
) -> _MatrixFrame:
    return _MatrixFrame(rows, cols, row_names, col_names, vmin, vmax, has_nan, xlabel, ylabel, cmap)


def _check_cmap(cmap: Any) -> None:
    from matplotlib import colormaps

    if not isinstance(cmap, str) or cmap not in colormaps:
        raise TypeError(f"`cmap` expected the name of a matplotlib colormap, got {cmap!r}")


def cell_text(value: float) -> str:
    """A cell's number: two decimals, with no minus sign on a value that rounds to zero (``-0.00`` -> ``0.00``)."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def render_class_matrix(
    matrix: Any,
    names: Sequence[Any] | None = None,
    *,
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
    col_names: Sequence[Any] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    annotate: bool | None = None,
    cmap: str = "RdBu_r",
) -> np.ndarray:
    """Heatmap of a class-by-class matrix on a fixed colour range (``RdBu_r`` by default), as an RGB array.

    The range is fixed, not fitted, so that heatmaps of different epochs compare in TensorBoard's image slider.
    NaN cells (no pairs) are grey, and a legend under the colour bar says so when there is one. Up to 20 classes a
    side, each cell carries its value when it fits legibly; with many classes only every k-th class is labelled so
    that the labels do not overlap. Up to 10 classes the picture fits the :data:`CARD_WIDTH` x :data:`CARD_HEIGHT`
    box of TensorBoard's Time Series image card unscaled, labels 10 px high; above ~6 classes the cells are too
    small for their numbers, and the colours (with the colour bar) speak alone.

    Args:
        matrix: ``[C, C2]`` tensor or array; rows are the first set's classes, columns the second's.
        names: labels of the rows (length ``C``; a square matrix uses them on both axes). ``None``: indices.
        col_names: labels of the columns when they differ from the rows (e.g. epochs); ``None``: as above.
        title: title, e.g. ``"train_val class sign stiffness, epoch 3"``.
        vmin: value at the low (blue) end of the colour bar.
        vmax: value at the high (red) end; must be greater than ``vmin``.
        xlabel: title of the column axis (e.g. ``"epoch"``); empty: none.
        ylabel: title of the row axis; empty: none.
        annotate: write each value into its cell; ``None`` (default): when the cells are large enough to hold legible
            numbers (at most 20 classes a side).
        cmap: name of a matplotlib colormap (a diverging one for signed quantities).

    Returns:
        ``[H, W, 3]`` ``uint8`` array.

    Raises:
        ValueError: if ``matrix`` is not 2-D or empty, ``vmin >= vmax`` or the names do not match the size.
        TypeError: if ``matrix`` is not numeric, ``title`` not a str or ``cmap`` not a known colormap name.

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
    _check_title(xlabel, "xlabel")
    _check_title(ylabel, "ylabel")
    _check_cmap(cmap)
    if annotate is not None and not isinstance(annotate, bool):
        raise TypeError(f"`annotate` expected a bool or None, got {type(annotate).__name__}")
    rows, cols = values.shape
    row_names = _check_names(names, rows)
    if col_names is not None:
        columns = _check_names(col_names, cols)
    else:
        columns = row_names if rows == cols else tuple(str(j) for j in range(cols))
    finite = np.isfinite(values)
    frame = _matrix_frame(
        rows, cols, row_names, columns, float(vmin), float(vmax), bool((~finite).any()), xlabel, ylabel, cmap
    )
    cell, x0, y0 = frame.cell, frame.x0, frame.y0

    index = np.clip(np.rint((np.where(finite, values, vmin) - vmin) / (vmax - vmin) * 255), 0, 255).astype(np.intp)
    colours = colormap_lut(cmap)[index]
    colours[~finite] = NAN_GREY
    canvas = frame.array.copy()
    canvas[y0 : y0 + rows * cell, x0 : x0 + cols * cell] = colours.repeat(cell, axis=0).repeat(cell, axis=1)
    img = Image.fromarray(canvas)
    if frame.annotate if annotate is None else annotate:
        midpoint, half = (vmin + vmax) / 2, (vmax - vmin) / 2
        for i in range(rows):
            for j in range(cols):
                value = values[i, j]
                ok = bool(finite[i, j])
                # White on strongly saturated cells, black elsewhere, so the numbers stay readable.
                colour = WHITE if ok and abs(value - midpoint) > 0.6 * half else BLACK
                text = cell_text(value) if ok else "–"
                _put(img, text, frame.number_size, x0 + j * cell + cell / 2, y0 + i * cell + cell / 2, "mm", colour)
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
