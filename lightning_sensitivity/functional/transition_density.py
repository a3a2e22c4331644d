"""Where along an ellipse the transitions happen: density near the three anchors vs elsewhere (Novak et al. 2018).

An ellipse from :func:`~lightning_sensitivity.functional.ellipse_trajectories` passes through its anchors at the
fractions 0, 1/3 and 2/3 of its parameter range. Novak et al. (Sec. 4.1) look at how the transition density varies
along the trajectory: a trained network is expected to be less sensitive near the data, i.e. fewer transitions
per segment close to the anchors than far from them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ANCHOR_POSITIONS = (0.0, 1.0 / 3.0, 2.0 / 3.0)
DEFAULT_HALF_WIDTH = 1.0 / 24.0


def near_anchor_mask(num_points: int, half_width: float = DEFAULT_HALF_WIDTH) -> Tensor:
    """``[P]`` bool: which segments lie within ``half_width`` (a fraction of the period) of an anchor.

    Segment ``j`` joins point ``j`` and point ``(j + 1) % P``; its position is its midpoint ``(j + 0.5) / P`` of the
    period, and it is near an anchor when the circular distance of that midpoint to 0, 1/3 or 2/3 is at most
    ``half_width``. With the default 1/24 a quarter of the ellipse counts as near.

    Example:
        >>> near_anchor_mask(12, 1 / 12).nonzero().flatten().tolist()
        [0, 3, 4, 7, 8, 11]
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int):
        raise TypeError(f"`num_points` expected an int >= 3, got {type(num_points).__name__} {num_points!r}")
    if num_points < 3:
        raise ValueError(f"`num_points` expected an int >= 3, got {num_points}")
    if isinstance(half_width, bool) or not isinstance(half_width, (int, float)):
        raise TypeError(f"`half_width` expected a float in (0, 1/6), got {type(half_width).__name__} {half_width!r}")
    if not 0 < half_width < 1 / 6:
        raise ValueError(f"`half_width` expected a float in (0, 1/6) so that near and far both exist, got {half_width}")
    mid = (torch.arange(num_points, dtype=torch.float64) + 0.5) / num_points
    anchors = torch.tensor(ANCHOR_POSITIONS, dtype=torch.float64)
    gap = (mid[:, None] - anchors[None, :]).abs()
    gap = torch.minimum(gap, 1 - gap)
    # A small tolerance so that segments whose midpoint sits exactly on the boundary count as near on every platform.
    return (gap <= half_width + 1e-12).any(dim=1)


def near_anchor_ratio(segments: Tensor, half_width: float = DEFAULT_HALF_WIDTH) -> float:
    """Mean transitions per segment near the anchors divided by the mean per segment elsewhere.

    Both means are taken over all trajectories and segments of their kind (pooled), so the ratio is that of two
    densities; below 1 means fewer transitions near the data points.

    Args:
        segments: ``[K, P]`` per-segment counts (e.g. :attr:`TransitionCounts.segments`, Hamming distances).
        half_width: half-width of the window around each anchor, as a fraction of the period (default 1/24).

    Returns:
        The ratio; NaN when there are no transitions away from the anchors (0 / 0 or x / 0).

    Raises:
        TypeError / ValueError: ``segments`` is not a real ``[K, P]`` tensor with ``P >= 3`` or has negative
            entries; a bad ``half_width``.

    Example:
        >>> seg = torch.ones(2, 24)
        >>> seg[:, near_anchor_mask(24)] = 0.5
        >>> near_anchor_ratio(seg)
        0.5
    """
    if not isinstance(segments, Tensor):
        raise TypeError(f"`segments` expected a torch.Tensor [K, P], got {type(segments).__name__}")
    if segments.dim() != 2 or segments.shape[0] < 1 or segments.shape[1] < 3:
        raise ValueError(f"`segments` expected shape [K, P] with K >= 1 and P >= 3, got {tuple(segments.shape)}")
    if segments.dtype == torch.bool or segments.is_complex():
        raise TypeError(f"`segments` expected real counts, got dtype {segments.dtype}")
    values = segments.detach().to(torch.float64).cpu()
    if bool((values < 0).any()):
        raise ValueError("`segments` expected non-negative counts, got negative entries")
    near = near_anchor_mask(segments.shape[1], half_width)
    far_density = float(values[:, ~near].mean())
    if far_density == 0:
        return math.nan
    return float(values[:, near].mean()) / far_density
