"""Summaries of per-example Jacobian norms: quantiles, how well they flag misclassifications, per-class means.

Novak et al. (2018) found that the input-output Jacobian norm of a test point is larger where the prediction is wrong;
the AUROC of the norm as a score for "the prediction is wrong" measures that, next to the AUROC of two baselines
computed from the same logits (one minus the top softmax probability, and the softmax entropy).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sensitivity._checks import check_int


def _check_vector(values: object, name: str, num: int | None = None) -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError(f"`{name}` expected a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1 or (num is not None and values.shape[0] != num):
        want = "a 1-D tensor" if num is None else f"shape [{num}]"
        raise ValueError(f"`{name}` expected {want}, got shape {tuple(values.shape)}")
    return values.detach().cpu()


def binary_auroc(scores: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` from the rest.

    The probability that a random positive scores higher than a random negative, ties counted half (the
    Mann-Whitney U statistic over ``n_pos * n_neg``), computed from average ranks in ``O(N log N)``. The scores are
    used as they are: no sigmoid, no rescaling.

    Args:
        scores: ``[N]`` real scores; ``inf`` is ranked like any other value.
        positives: ``[N]`` bool, or integers 0 / 1.

    Returns:
        The AUROC in ``[0, 1]``; NaN when one class is absent or a score is NaN.

    Raises:
        TypeError: a non-tensor, or non-real scores.
        ValueError: shapes that differ or are not 1-D, or ``positives`` that are not 0 / 1.

    Example:
        >>> binary_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
        >>> binary_auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False]))
        0.5
    """
    s = _check_vector(scores, "scores")
    p = _check_vector(positives, "positives", s.shape[0])
    if s.is_complex() or s.dtype == torch.bool:
        raise TypeError(f"`scores` expected real numbers, got dtype {s.dtype}")
    if p.dtype != torch.bool:
        if p.is_floating_point() or p.is_complex():
            raise TypeError(f"`positives` expected a bool or integer tensor, got dtype {p.dtype}")
        if p.numel() and not bool(((p == 0) | (p == 1)).all()):
            raise ValueError(f"`positives` expected values 0 / 1, got {sorted(set(p.unique().tolist()))}")
        p = p.bool()
    s = s.to(torch.float64)
    n_pos = int(p.sum())
    n_neg = p.numel() - n_pos
    if n_pos == 0 or n_neg == 0 or bool(s.isnan().any()):
        return math.nan
    order = torch.argsort(s)
    sorted_scores = s[order]
    _, inverse, group_sizes = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    # A tie group occupying ranks a+1..a+k gets their average rank a + (k+1)/2.
    ends = torch.cumsum(group_sizes, 0).to(torch.float64)
    average_rank = ends - (group_sizes.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = average_rank[inverse]
    u = float(ranks[p].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _check_targets(targets: object, n: int) -> Tensor:
    y = _check_vector(targets, "targets", n)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"`targets` expected an integer tensor of class indices, got dtype {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"`targets` expected non-negative class indices, got a minimum of {int(y.min())}")
    return y.long()


def jacobian_norm_summary(
    norms: Tensor,
    targets: Tensor | None = None,
    logits: Tensor | None = None,
    *,
    num_classes: int | None = None,
) -> dict[str, float | Tensor]:
    """Summary statistics of per-example Jacobian norms of one probe set.

    Args:
        norms: ``[N]`` per-example norms (e.g. from :func:`~lightning_sensitivity.functional.jacobian_norm`).
        targets: ``[N]`` integer class indices; adds ``per_class`` (and, with ``logits``, the AUROCs).
        logits: ``[N, C]`` the model's logits on the same examples (needs ``targets``); a prediction is wrong when
            ``logits.argmax(1) != targets``.
        num_classes: length of ``per_class``; default the largest of ``targets.max() + 1`` and ``C``.

    Returns:
        A dict of Python floats, computed in float64:

        - ``"mean"``, ``"median"``, ``"p90"`` (``torch.quantile``'s linear interpolation) of the norms;
        - with ``targets``: ``"per_class"``, a ``[num_classes]`` float64 tensor of the mean norm per class, NaN for a
          class without examples;
        - with ``targets`` and ``logits``: ``"misclassification_auroc"`` (the norm as a score for "the prediction is
          wrong"; NaN when some norm is not finite), ``"confidence_auroc"`` (score ``1 - max softmax``) and
          ``"entropy_auroc"`` (score: the softmax entropy), each by :func:`binary_auroc` (NaN when all predictions
          are right, or all wrong).

    Raises:
        TypeError / ValueError: a bad argument, naming it (e.g. ``logits`` without ``targets``, a class index
            ``>= num_classes``).

    Example:
        >>> out = jacobian_norm_summary(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]),
        ...                             torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
        >>> out["mean"], out["misclassification_auroc"], out["per_class"].tolist()
        (2.5, 0.75, [1.5, 3.5])
    """
    values = _check_vector(norms, "norms")
    if values.numel() == 0:
        raise ValueError("`norms` expected at least one value, got an empty tensor")
    if not values.is_floating_point():
        raise TypeError(f"`norms` expected a floating-point tensor, got dtype {values.dtype}")
    values = values.to(torch.float64)
    n = values.shape[0]
    out: dict[str, float | Tensor] = {
        "mean": float(values.mean()),
        "median": float(torch.quantile(values, 0.5)),
        "p90": float(torch.quantile(values, 0.9)),
    }
    if logits is not None and targets is None:
        raise ValueError("`logits` expected `targets` to be given too, got targets=None")
    check_int(num_classes, "num_classes", minimum=1, allow_none=True)
    if targets is None:
        return out
    y = _check_targets(targets, n)
    probs = None
    if logits is not None:
        if not isinstance(logits, Tensor):
            raise TypeError(f"`logits` expected a torch.Tensor [N, C], got {type(logits).__name__}")
        if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 1:
            raise ValueError(f"`logits` expected shape [{n}, C] like `norms`, got {tuple(logits.shape)}")
        probs = logits.detach().cpu().to(torch.float64).softmax(dim=1)
    inferred = max(int(y.max()) + 1, probs.shape[1] if probs is not None else 0)
    if num_classes is None:
        num_classes = inferred
    elif int(y.max()) >= num_classes:
        raise ValueError(f"`targets` expected class indices in [0, {num_classes}), got a maximum of {int(y.max())}")
    per_class = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    totals = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, values)
    counts = torch.bincount(y, minlength=num_classes)
    present = counts > 0
    per_class[present] = totals[present] / counts[present]
    out["per_class"] = per_class
    if probs is not None:
        wrong = probs.argmax(dim=1) != y
        finite = bool(values.isfinite().all())
        out["misclassification_auroc"] = binary_auroc(values, wrong) if finite else math.nan
        out["confidence_auroc"] = binary_auroc(1.0 - probs.max(dim=1).values, wrong)
        out["entropy_auroc"] = binary_auroc(-torch.special.xlogy(probs, probs).sum(dim=1), wrong)
    return out


def train_val_ratio(train_mean: float, val_mean: float) -> float | None:
    """The train / held-out ratio of a per-example quantity's means (e.g. the Jacobian norm's, Novak et al.'s
    generalisation signal): ``train_mean / val_mean``, or None when ``val_mean`` is 0 (no ratio to log).

    Example:
        >>> train_val_ratio(1.5, 2.0), train_val_ratio(1.0, 0.0)
        (0.75, None)
    """
    return None if val_mean == 0 else float(train_mean) / float(val_mean)


def mean_standard_error(standard_errors: Tensor) -> float:
    """Standard error of the mean of ``N`` independent estimates with standard errors ``se_i`` (e.g. the random
    projections of :func:`~lightning_sensitivity.functional.jacobian_norm_estimate`, drawn afresh per example):
    ``sqrt(sum_i se_i^2) / N``, in float64; 0 for no estimates.

    Example:
        >>> mean_standard_error(torch.tensor([0.3, 0.4], dtype=torch.float64))
        0.25
    """
    se = _check_vector(standard_errors, "standard_errors").to(torch.float64)
    return float(se.pow(2).sum().sqrt() / max(se.numel(), 1))
