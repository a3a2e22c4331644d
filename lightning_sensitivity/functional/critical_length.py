"""Critical length of binned stiffness: the input distance beyond which gradients stop helping each other.

Fort et al. (2019) read it as the distance at which stiffness-by-distance first reaches zero. The first crossing of
a noisy binned curve jumps around from one measurement to the next; a least-squares line through the bins, weighted
by the number of pairs in each, uses every bin but assumes the curve is roughly linear. Which one is steadier depends
on the curve: on trained MNIST MLPs, whose sign curve dips to about zero and rises again at the largest distances,
the first crossing moved less under new probe draws (``docs/findings.md``). A bootstrap over probe points says how
much either estimate would change with another draw of probe examples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

METHODS = ("first_crossing", "linear_fit")
Method = Literal["first_crossing", "linear_fit"]


def _vector(values: object, name: str) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().to(torch.float64).flatten().cpu()
    try:
        return torch.as_tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"`{name}` expected a 1-D tensor or sequence of numbers, got {type(values).__name__}") from None


def _check_method(method: object) -> None:
    if method not in METHODS:
        raise ValueError(f"`method` expected one of {METHODS}, got {method!r}")


def _first_crossing(centers: list[float], values: list[float]) -> float:
    for k, (c, v) in enumerate(zip(centers, values, strict=False)):
        if v <= 0:
            if k == 0:
                return float(c)
            c0, v0 = centers[k - 1], values[k - 1]
            return float(c0 + (c - c0) * v0 / (v0 - v))
    return math.nan


def _linear_fit_zero(x: Tensor, y: Tensor, w: Tensor) -> float:
    if x.numel() < 2 or float(w.sum()) <= 0:
        return math.nan
    # Weighted least squares in closed form around the weighted means (numerically better than the normal equations).
    total = w.sum()
    x_bar, y_bar = (w * x).sum() / total, (w * y).sum() / total
    sxx = (w * (x - x_bar) ** 2).sum()
    if float(sxx) <= 0:  # all bins at one distance: no slope
        return math.nan
    slope = (w * (x - x_bar) * (y - y_bar)).sum() / sxx
    if not bool(slope < 0):
        return math.nan
    zero = float(x_bar - y_bar / slope)
    # A zero outside the measured distances is an extrapolation (negative when the curve is already below zero at
    # the smallest distance): the curve does not cross zero where it was measured.
    if not float(x.min()) <= zero <= float(x.max()):
        return math.nan
    return zero


def critical_length(
    bin_centers: Tensor,
    mean: Tensor,
    counts: Tensor | None = None,
    *,
    method: Method = "first_crossing",
) -> float:
    """The input distance at which binned stiffness reaches zero (Fort et al.'s critical length).

    Bins whose mean is NaN (empty) or whose count is 0 are skipped.

    - ``"first_crossing"``: the smallest distance at which the curve first crosses zero. Between the last positive
      bin and the first non-positive one the crossing is interpolated linearly; when the first non-empty bin is
      already non-positive its centre is returned.
    - ``"linear_fit"``: the zero of the least-squares line ``mean ~ a + b * distance`` through the bins, each bin
      weighted by its pair count (uniformly without ``counts``), when it lies within the centres of the bins used;
      a zero outside them (an extrapolation, or below 0 when stiffness is already negative at the smallest
      distances) counts as no crossing (NaN).

    Args:
        bin_centers: ``[B]`` distances of the bins.
        mean: ``[B]`` binned stiffness.
        counts: ``[B]`` non-negative pair counts per bin, or None.
        method: ``"first_crossing"`` (default) or ``"linear_fit"``.

    Returns:
        The distance; NaN when the curve never reaches zero (``"first_crossing"``), or when the fitted slope is
        ``>= 0``, its zero lies outside the measured distances or fewer than 2 bins remain (``"linear_fit"``).

    Raises:
        ValueError: lengths differ, negative counts, or an unknown ``method``.
        TypeError: an argument that is not numbers.

    Example:
        >>> critical_length(torch.tensor([0.5, 1.5, 2.5]), torch.tensor([0.6, 0.2, -0.2]))
        2.0
        >>> critical_length(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.5, 0.0]), method="linear_fit")
        2.0
    """
    _check_method(method)
    centers = _vector(bin_centers, "bin_centers")
    values = _vector(mean, "mean")
    if centers.shape != values.shape:
        raise ValueError(
            f"`bin_centers` and `mean` expected the same length, got {centers.numel()} and {values.numel()}"
        )
    if counts is None:
        weights = torch.ones_like(values)
    else:
        weights = _vector(counts, "counts")
        if weights.shape != values.shape:
            raise ValueError(f"`counts` expected length {values.numel()} like `mean`, got {weights.numel()}")
        if bool((weights < 0).any()) or not bool(weights.isfinite().all()):
            raise ValueError(f"`counts` expected finite non-negative numbers, got {weights.tolist()}")
    keep = values.isfinite() & centers.isfinite() & (weights > 0)
    if method == "first_crossing":
        return _first_crossing(centers[keep].tolist(), values[keep].tolist())
    return _linear_fit_zero(centers[keep], values[keep], weights[keep])


def _curve_length(matrix: Tensor, inputs: Tensor, num_bins: int, distance: str, method: str) -> float:
    # Imported here: stiffness.py is to re-export critical_length from this module, and a top-level import would
    # make the two modules import each other.
    from lightning_sensitivity.functional.stiffness import stiffness_by_distance

    edges, mean, count = stiffness_by_distance(matrix, inputs, num_bins=num_bins, distance=distance)
    centers = (edges[1:] + edges[:-1]) / 2
    return critical_length(centers, mean, count, method=method)


def critical_length_bootstrap(
    matrix: Tensor,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    num_bootstrap: int = 200,
    seed: int = 0,
    num_bins: int = 20,
    distance: Literal["cosine", "euclidean"] = "cosine",
    method: Method = "linear_fit",
    same_class_only: bool = False,
) -> tuple[float, float, float]:
    """Critical length of one set's stiffness with a 95 % bootstrap interval over probe points.

    Each replicate draws ``N`` probe examples with replacement, takes the pairs among them (pairs of an example with
    a copy of itself are left out, like self pairs), recomputes the binned curve with
    :func:`~lightning_sensitivity.functional.stiffness_by_distance` and its :func:`critical_length`. Resampling
    points rather than pairs keeps the dependence between the pairs that share an example.

    Args:
        matrix: ``[N, N]`` pairwise stiffness of one set with itself (e.g. :attr:`Stiffness.sign`).
        inputs: ``[N, *input_shape]`` the examples.
        targets: ``[N]`` integer classes; needed for ``same_class_only``.
        num_bootstrap: replicates (>= 1).
        seed: seeds a private generator; the global RNG is untouched.
        num_bins, distance: as in :func:`~lightning_sensitivity.functional.stiffness_by_distance`.
        method: as in :func:`critical_length` (default ``"linear_fit"``).
        same_class_only: only pairs of the same class (different-class pairs are left out).

    Returns:
        ``(estimate, low, high)``: the estimate on all probe points and the 2.5 % / 97.5 % percentiles of the
        replicates whose estimate is finite (NaN when none is).

    Raises:
        ValueError / TypeError: a bad argument, naming it.

    Example:
        >>> x = torch.randn(12, 3)
        >>> sim = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
        >>> est, low, high = critical_length_bootstrap(sim, x, num_bootstrap=20, num_bins=8)
        >>> low <= est <= high or est != est
        True
    """
    if not isinstance(matrix, Tensor):
        raise TypeError(f"`matrix` expected a torch.Tensor [N, N], got {type(matrix).__name__}")
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`matrix` expected a square [N, N] tensor of one set, got shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` expected a torch.Tensor [N, *input_shape], got {type(inputs).__name__}")
    if inputs.dim() < 1 or inputs.shape[0] != n:
        raise ValueError(f"`inputs` expected {n} examples like `matrix`, got shape {tuple(inputs.shape)}")
    for name, value in (("num_bootstrap", num_bootstrap), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` expected an int, got {type(value).__name__}")
    if num_bootstrap < 1:
        raise ValueError(f"`num_bootstrap` expected a positive int, got {num_bootstrap}")
    _check_method(method)
    values = matrix.detach().to(torch.float64).cpu()
    x = inputs.detach().cpu()
    if same_class_only:
        if not isinstance(targets, Tensor):
            raise TypeError(
                "`targets` expected a torch.Tensor [N] of classes with same_class_only=True, got "
                f"{type(targets).__name__}"
            )
        if targets.dim() != 1 or targets.shape[0] != n or targets.is_floating_point() or targets.dtype == torch.bool:
            raise ValueError(
                f"`targets` expected integer class indices of shape [{n}], got {targets.dtype} {tuple(targets.shape)}"
            )
        y = targets.detach().cpu()
        # stiffness_by_distance skips non-finite entries: NaN marks the pairs to leave out.
        values = values.masked_fill(y[:, None] != y[None, :], float("nan"))
    estimate = _curve_length(values, x, num_bins, distance, method)
    generator = torch.Generator().manual_seed(seed)
    replicates = []
    for _ in range(num_bootstrap):
        idx = torch.randint(0, n, (n,), generator=generator)
        sub = values[idx][:, idx].masked_fill(idx[:, None] == idx[None, :], float("nan"))
        replicates.append(_curve_length(sub, x[idx], num_bins, distance, method))
    reps = torch.tensor(replicates, dtype=torch.float64)
    reps = reps[reps.isfinite()]
    if reps.numel() == 0:
        return estimate, math.nan, math.nan
    low, high = torch.quantile(reps, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return estimate, float(low), float(high)
