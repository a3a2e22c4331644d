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
        raise TypeError(
            f"`anchors` expected a torch.Tensor of shape [K, 3, *input_shape], got {type(anchors).__name__}"
        )
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
    # One product [P, 3] x [3, D] per trajectory writes each point once; the broadcast form
    # `center + cos * u + sin * v` made two full-size temporaries first (3-4x slower for 16 x 960 MNIST points).
    basis = torch.stack([torch.ones_like(t), t.cos(), t.sin()], dim=1).to(anchors.dtype)  # [P, 3]
    coefficients = torch.stack([center, u, v], dim=1).flatten(2)  # [K, 3, D]
    return torch.matmul(basis, coefficients).reshape(anchors.shape[0], num_points, *anchors.shape[2:])


def shuffled_anchors(inputs: Tensor, seed: int = 0) -> Tensor:
    """Off-manifold stand-ins for data points: every example's features permuted at random, on its own.

    Each example keeps its own multiset of values (for images: the intensity histogram, so the same norm and
    marginal distribution of pixel values) but loses all spatial structure, so it lies far from the data manifold.
    A private generator seeded with ``seed`` draws one permutation per example; the global RNG is untouched.

    Args:
        inputs: ``[N, *input_shape]`` floating-point examples.
        seed: seed of the private generator.

    Returns:
        ``[N, *input_shape]`` on the device and in the dtype of ``inputs``.

    Raises:
        TypeError: ``inputs`` is not a floating tensor or ``seed`` is not an int.
        ValueError: ``inputs`` has fewer than 2 dimensions.

    Example:
        >>> x = torch.arange(6.0).reshape(2, 3)
        >>> y = shuffled_anchors(x, seed=1)
        >>> torch.equal(y.sort(dim=1).values, x)
        True
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` expected a torch.Tensor [N, *input_shape], got {type(inputs).__name__}")
    if inputs.dim() < 2:
        raise ValueError(f"`inputs` expected shape [N, *input_shape], got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"`inputs` expected a floating-point tensor, got dtype {inputs.dtype}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` expected an int, got {type(seed).__name__} {seed!r}")
    flat = inputs.reshape(inputs.shape[0], -1)
    gen = torch.Generator().manual_seed(seed % 2**63)
    order = torch.stack([torch.randperm(flat.shape[1], generator=gen) for _ in range(flat.shape[0])])
    return flat.gather(1, order.to(flat.device)).reshape(inputs.shape)
