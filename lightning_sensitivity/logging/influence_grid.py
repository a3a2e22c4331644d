"""The influence picture: each held-out example beside its most helpful and most harmful training examples.

One row per held-out example: its input, then the ``k`` training inputs of largest TracIn influence on it (green
frames, strongest first), then the ``k`` of most negative influence (red frames). Labels above the cells give the
example's label and, for the training examples, their influence. Drawn with NumPy and Pillow like
:mod:`lightning_sensitivity.logging.render`; returns an ``[H, W, 3]`` ``uint8`` array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lightning_sensitivity.logging._draw import BLACK, PAD, TITLE_SIZE, WHITE, _check_title, _finish, _put, to_numpy

__all__ = ["is_image_batch", "render_influence_grid"]

GREEN = (44, 160, 44)
RED = (214, 39, 40)
_CELL = 56
_LABEL = 10


def is_image_batch(shape: Sequence[int]) -> bool:
    """Whether a batch of this shape is images: ``[N, C, H, W]`` with 1 or 3 channels, or ``[N, H, W]``, sides >= 4."""
    shape = tuple(shape)
    if len(shape) == 4:
        return shape[1] in (1, 3) and min(shape[2:]) >= 4
    return len(shape) == 3 and min(shape[1:]) >= 4


def _to_rgb(image: np.ndarray) -> Image.Image:
    """One image ``[C, H, W]`` or ``[H, W]`` scaled to its own range, upscaled to the cell size."""
    a = image.astype(np.float64)
    a = a[None] if a.ndim == 2 else a
    lo, hi = np.nanmin(a), np.nanmax(a)
    a = np.zeros_like(a) if not hi > lo else (a - lo) / (hi - lo)
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
    rgb = (np.transpose(a, (1, 2, 0)) * 255).round().astype(np.uint8)
    return Image.fromarray(rgb).resize((_CELL, _CELL), Image.Resampling.NEAREST)


def render_influence_grid(
    val_inputs: object,
    val_labels: Sequence[int],
    train_inputs: object,
    train_labels: Sequence[int],
    helpful: object,
    helpful_values: object,
    harmful: object,
    harmful_values: object,
    *,
    title: str = "",
) -> np.ndarray:
    """Rows of held-out images with their ``k`` most helpful and ``k`` most harmful training images.

    Args:
        val_inputs: ``[R, C, H, W]`` or ``[R, H, W]`` the held-out examples shown (one row each).
        val_labels: ``[R]`` their labels.
        train_inputs: ``[N, ...]`` the training probe inputs the indices point into (same image layout).
        train_labels: ``[N]`` their labels.
        helpful, harmful: ``[R, k]`` row indices into ``train_inputs``.
        helpful_values, harmful_values: ``[R, k]`` their influences.
        title: written above the grid.

    Raises:
        ValueError: shapes that do not fit together, or inputs that are not images.
    """
    title = _check_title(title)
    val = to_numpy(val_inputs, "val_inputs")
    train = to_numpy(train_inputs, "train_inputs")
    good, bad = to_numpy(helpful, "helpful").astype(np.int64), to_numpy(harmful, "harmful").astype(np.int64)
    good_v, bad_v = to_numpy(helpful_values, "helpful_values"), to_numpy(harmful_values, "harmful_values")
    if not (is_image_batch(val.shape) and is_image_batch(train.shape)) or val.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"`val_inputs`/`train_inputs` expected image batches of one layout, got {val.shape} and {train.shape}"
        )
    rows = val.shape[0]
    if not (good.shape == bad.shape == good_v.shape == bad_v.shape) or good.ndim != 2 or good.shape[0] != rows:
        raise ValueError(f"`helpful`/`harmful` and their values expected shape [{rows}, k], got {good.shape}")
    if len(val_labels) != rows or len(train_labels) != train.shape[0]:
        raise ValueError("`val_labels`/`train_labels` expected one label per example")
    if good.size and (good.min() < 0 or max(good.max(), bad.max()) >= train.shape[0] or bad.min() < 0):
        raise ValueError(f"`helpful`/`harmful` expected indices in [0, {train.shape[0]}), got out-of-range ones")
    k = good.shape[1]
    slot_w, slot_h = _CELL + 6, _CELL + _LABEL + 10
    gap = 14  # between the held-out column and the training columns, and between helpful and harmful
    top = PAD + TITLE_SIZE + 8 + _LABEL + 6
    width = PAD * 2 + slot_w * (1 + 2 * k) + 2 * gap
    img = Image.new("RGB", (width, top + rows * slot_h + PAD), WHITE)
    x_good, x_bad = PAD + slot_w + gap, PAD + slot_w * (1 + k) + 2 * gap
    _put(img, "held-out", _LABEL, PAD + slot_w / 2, top - 4, "mb")
    _put(img, f"most helpful (top {k})", _LABEL, x_good + k * slot_w / 2, top - 4, "mb", GREEN)
    _put(img, f"most harmful (top {k})", _LABEL, x_bad + k * slot_w / 2, top - 4, "mb", RED)

    def cell(image: np.ndarray, x: int, y: int, label: str, frame: tuple[int, int, int]) -> None:
        img.paste(frame, (x, y + _LABEL + 2, x + _CELL + 4, y + _LABEL + 6 + _CELL))
        img.paste(_to_rgb(image), (x + 2, y + _LABEL + 4))
        _put(img, label, _LABEL - 1, x + _CELL / 2 + 2, y, "mt")

    for r in range(rows):
        y = top + r * slot_h
        cell(val[r], PAD, y, f"y={int(val_labels[r])}", BLACK)
        for j in range(k):
            i = int(good[r, j])
            cell(train[i], x_good + j * slot_w, y, f"y={int(train_labels[i])} {good_v[r, j]:+.2g}", GREEN)
            i = int(bad[r, j])
            cell(train[i], x_bad + j * slot_w, y, f"y={int(train_labels[i])} {bad_v[r, j]:+.2g}", RED)
    return _finish(img, title)
