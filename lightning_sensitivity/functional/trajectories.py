"""Closed trajectories through the data: ellipses through three points (Novak et al. 2018, Sec. 3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ellipse_trajectories(anchors: Tensor, num_points: int) -> Tensor:
    """Sample the closed ellipse through each triple of data points.

    For anchors ``p0, p1, p2`` the curve is ``x(t) = c + u cos t + v sin t`` with ``x(0) = p0``,
    ``x(2 pi / 3) = p1`` and ``x(4 pi / 3) = p2``, which gives ``c = (p0 + p1 + p2) / 3``, ``u = p0 - c`` and
    ``v = (p1 - p2) / sqrt(3)``: an ellipse (an affine image of the unit circle) in the plane of the three points.
    It is sampled at ``num_points`` equally spaced ``t = 2 pi k / num_points``; the first point is ``p0``, and when
    ``num_points`` is divisible by 3 all three anchors are sample points.

    Args:
        anchors: ``[K, 3, *input_shape]``, three data points per trajectory.
        num_points: points per trajectory, at least 3.

    Returns:
        ``[K, num_points, *input_shape]`` in the dtype and on the device of ``anchors``.

    Raises:
        TypeError: ``anchors`` is not a floating tensor or ``num_points`` is not an int.
        ValueError: ``anchors`` is not of shape ``[K, 3, ...]`` or ``num_points < 3``.

    Example:
        >>> ellipse_trajectories(torch.randn(4, 3, 1, 8, 8), 30).shape
        torch.Size([4, 30, 1, 8, 8])
    """
    if not isinstance(anchors, Tensor):
        raise TypeError(f"`anchors` expected a torch.Tensor of shape [K, 3, *input_shape], got {type(anchors).__name__}")
    if anchors.dim() < 3 or anchors.shape[1] != 3:
        raise ValueError(f"`anchors` expected shape [K, 3, *input_shape], got {tuple(anchors.shape)}")
    if not anchors.is_floating_point():
        raise TypeError(f"`anchors` expected a floating-point tensor, got dtype {anchors.dtype}")
    if isinstance(num_points, bool) or not isinstance(num_points, int):
        raise TypeError(f"`num_points` expected an int >= 3, got {type(num_points).__name__} {num_points!r}")
    if num_points < 3:
        raise ValueError(f"`num_points` expected an int >= 3, got {num_points}")
    p0, p1, p2 = anchors[:, 0], anchors[:, 1], anchors[:, 2]
    center = (p0 + p1 + p2) / 3
    u = p0 - center
    v = (p1 - p2) / math.sqrt(3.0)
    # Angles in float64 so that large num_points stay equally spaced in low-precision inputs too.
    t = torch.arange(num_points, dtype=torch.float64, device=anchors.device) * (2 * math.pi / num_points)
    shape = (1, num_points) + (1,) * (anchors.dim() - 2)
    cos = t.cos().to(anchors.dtype).reshape(shape)
    sin = t.sin().to(anchors.dtype).reshape(shape)
    return center.unsqueeze(1) + cos * u.unsqueeze(1) + sin * v.unsqueeze(1)
