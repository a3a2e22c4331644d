"""Drawing primitives of :mod:`lightning_sensitivity.logging.render`: colours, cached text masks, ticks, axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
AXIS = (60, 60, 60)
NAN_GREY = (200, 200, 200)  # the same neutral grey as the matplotlib heatmaps
BLUE = (31, 119, 180)  # matplotlib's C0
RED = (214, 39, 40)  # matplotlib's C3
BAR_GREY = (217, 217, 217)
PAD = 10
TITLE_SIZE = 14
# Above this many classes per side the per-cell numbers are left out (they would not fit in the cells).
MAX_ANNOTATED = 20


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


@lru_cache(maxsize=8)
def colormap_lut(name: str = "RdBu_r") -> np.ndarray:
    """A matplotlib colormap sampled once at 256 points: ``[256, 3]`` ``uint8`` (entry 0 = low end)."""
    from matplotlib import colormaps

    if not isinstance(name, str) or name not in colormaps:
        raise TypeError(f"`name` expected the name of a matplotlib colormap, got {name!r}")
    lut = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


@lru_cache(maxsize=8192)
def _text_mask(text: str, size: int, vertical: bool = False) -> Image.Image:
    """The text as an 8-bit coverage mask, one line high (ascent + descent), rotated to read upwards if vertical."""
    font = _font(size)
    ascent, descent = font.getmetrics()
    width = max(1, math.ceil(font.getlength(text)))
    mask = Image.new("L", (width, ascent + descent), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=255)
    return mask.transpose(Image.Transpose.ROTATE_90) if vertical else mask


def _text_size(text: str, size: int, vertical: bool = False) -> tuple[int, int]:
    return _text_mask(text, size, vertical).size


def _put(
    img: Image.Image,
    text: str,
    size: int,
    x: float,
    y: float,
    anchor: str = "lt",
    color: tuple = BLACK,
    vertical: bool = False,
) -> None:
    """Paste text with ``anchor`` = horizontal (l/m/r) + vertical (t/m/b) point at ``(x, y)``."""
    mask = _text_mask(text, size, vertical)
    w, h = mask.size
    left = int(round(x - {"l": 0, "m": w / 2, "r": w}[anchor[0]]))
    top = int(round(y - {"t": 0, "m": h / 2, "b": h}[anchor[1]]))
    img.paste(color, (left, top, left + w, top + h), mask)


def _check_title(title: Any, name: str = "title") -> str:
    if not isinstance(title, str):
        raise TypeError(f"`{name}` expected a str, got {type(title).__name__}")
    return title


def _check_names(names: Sequence[Any] | None, count: int, name: str = "names") -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(count))
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"`{name}` expected a sequence of names, got {type(names).__name__}")
    if len(names) != count:
        raise ValueError(f"`{name}` expected {count} names to match the data, got {len(names)}")
    return tuple(str(n) for n in names)


def _label_step(count: int, slot: float, extent: int) -> int:
    """Label every k-th class so that labels ``extent`` pixels tall (across the axis) do not overlap."""
    return max(1, math.ceil((extent + 2) / max(slot, 1e-9)), math.ceil(count / 50))


def _fmt(value: float) -> str:
    return f"{value:.4g}" if value != 0 else "0"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """Round tick values (1, 2, 5 x 10^k apart) covering ``[lo, hi]``."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step


def _finish(img: Image.Image, title: str) -> np.ndarray:
    """Write the title centred in the top band (widening the picture if it does not fit) and return the array."""
    if title:
        # A long title is set smaller (down to 11 px) before the picture is widened for it: widening would make
        # TensorBoard's ~400 px card scale every other label down.
        size = next((s for s in range(TITLE_SIZE, 10, -1) if _font(s).getlength(title) + 2 * PAD <= img.width), 11)
        width = _font(size).getlength(title)
        if width + 2 * PAD > img.width:
            wider = Image.new("RGB", (math.ceil(width) + 2 * PAD, img.height), WHITE)
            wider.paste(img, ((wider.width - img.width) // 2, 0))
            img = wider
        ImageDraw.Draw(img).text((img.width / 2, PAD), title, font=_font(size), fill=BLACK, anchor="mt")
    return np.asarray(img).copy()


def _y_axis(
    img: Image.Image, ticks: np.ndarray, to_y: Any, x: int, right: bool, label: str, colour: tuple = AXIS
) -> None:
    draw = ImageDraw.Draw(img)
    for t in ticks:
        ty = to_y(t)
        if right:
            draw.line([(x, ty), (x + 4, ty)], fill=colour)
            _put(img, _fmt(float(t)), 10, x + 6, ty, "lm", colour)
        else:
            draw.line([(x - 4, ty), (x, ty)], fill=colour)
            _put(img, _fmt(float(t)), 10, x - 6, ty, "rm", colour)
    if label:
        width = max(_text_size(_fmt(float(t)), 10)[0] for t in ticks)
        mid = (to_y(ticks[0]) + to_y(ticks[-1])) / 2
        if right:
            _put(img, label, 11, x + 8 + width + 4, mid, "lm", colour, vertical=True)
        else:
            _put(img, label, 11, x - 8 - width - 4, mid, "rm", colour, vertical=True)


def _tick_label_width(ticks: np.ndarray) -> int:
    return max(_text_size(_fmt(float(t)), 10)[0] for t in ticks)
