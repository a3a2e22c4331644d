r"""Statistics of one set's per-example loss gradients that need only their Gram matrix ``G_ij = g_i . g_j``.

With ``m`` examples, per-example gradients ``g_i`` and their mean ``ḡ = (1/m) Σ_i g_i``, every statistic below is a
function of three reductions of ``G``: ``‖g_i‖² = G_ii``, ``g_i . ḡ = (1/m) Σ_j G_ij`` and
``‖ḡ‖² = (1/m²) Σ_ij G_ij``, so the Gram matrix that stiffness is computed from gives them for free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sensitivity._checks import check_int


def _ratio(num: Tensor | float, den: Tensor | float) -> float:
    num, den = float(num), float(den)
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return math.nan
    return num / den


def _sqrt_ratio(num: Tensor | float, den: Tensor | float) -> float:
    value = _ratio(num, den)
    # A sample variance rounded just below zero means a variance of zero, not a failed test.
    return math.sqrt(max(value, 0.0)) if not math.isnan(value) else math.nan


def gram_statistics(
    gram: Tensor,
    targets: Tensor | None = None,
    *,
    num_classes: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    r"""Coherence, diversity, Fisher trace, label alignment and gradient-noise tests from a Gram matrix.

    ``G`` is the ``[m, m]`` Gram matrix of the per-example loss gradients of ONE set (e.g.
    :func:`~lightning_sensitivity.functional.loss_gradient_gram` with one set). Writing ``S = Σ_ij G_ij``
    (``= ‖Σ_i g_i‖²``), ``T = Σ_i G_ii`` (``= Σ_i ‖g_i‖²``) and ``p_i = (1/m) Σ_j G_ij`` (``= g_i . ḡ``):

    - ``coherence`` ``α = ‖ḡ‖² / mean_i ‖g_i‖² = S / (m T)`` (Chatterjee & Zielinski, "Coherent gradients"):
      1 when all gradients are equal, ``1/m`` when they are orthogonal with equal norms;
      ``m_coherence = m α = S / T``.
    - ``gradient_diversity`` ``Σ_i ‖g_i‖² / ‖Σ_i g_i‖² = T / S`` (Yin et al. 2018).
    - ``fisher_trace`` ``mean_i ‖g_i‖² = T / m`` (trace of the empirical Fisher for a log-likelihood loss).
    - ``label_alignment`` kernel-target alignment ``⟨G, Y⟩_F / (‖G‖_F ‖Y‖_F)`` with ``Y_ij = 1`` for pairs of the
      same class and ``-1/(C-1)`` otherwise, diagonal included; NaN without integer ``targets`` or with ``C < 2``.
    - Tests of the mini-batch gradient ``ḡ`` as an estimate of the expected gradient, as Cockpit defines its
      ``NormTest``, ``InnerTest`` and ``OrthoTest`` (Byrd et al. 2012, eq. 3.9; Bollapragada et al. 2017, eqs. 2.6
      and 3.3): the largest θ (ν) for which the test would pass, from sample variances over the ``m`` examples
      (divisor ``m - 1``) and a batch of ``B`` examples:

      - ``norm_test`` ``sqrt( Σ_i ‖g_i - ḡ‖² / (m-1) / (B ‖ḡ‖²) )``, with ``Σ_i ‖g_i - ḡ‖² = T - m ‖ḡ‖²``;
      - ``inner_product_test`` ``sqrt( Σ_i (g_i . ḡ - ‖ḡ‖²)² / (m-1) / (B ‖ḡ‖⁴) )``, with
        ``Σ_i (g_i . ḡ - ‖ḡ‖²)² = Σ_i p_i² - m ‖ḡ‖⁴``;
      - ``orthogonality_test`` ``sqrt( Σ_i ‖g_i - (g_i . ḡ / ‖ḡ‖²) ḡ‖² / (m-1) / (B ‖ḡ‖²) )``, with
        ``Σ_i ‖g_i - (g_i . ḡ / ‖ḡ‖²) ḡ‖² = T - Σ_i p_i² / ‖ḡ‖²``.

      ``B`` is ``batch_size``, by default ``m`` (the probe set taken as the batch, as Cockpit does with the
      training batch); a larger ``B`` asks whether a batch of that size would give a precise enough gradient.
      Cockpit works with BackPACK's ``1/B``-scaled individual gradients; the formulas above are the same quantities
      written with unscaled ``g_i``.

    Args:
        gram: ``[m, m]`` symmetric Gram matrix of one set.
        targets: ``[m]`` integer class indices (for ``label_alignment``); other targets give NaN there.
        num_classes: ``C``; default ``targets.max() + 1``.
        batch_size: ``B`` of the gradient-noise tests (default ``m``).

    Returns:
        A dict of floats with the keys ``coherence``, ``m_coherence``, ``gradient_diversity``, ``fisher_trace``,
        ``label_alignment``, ``norm_test``, ``inner_product_test``, ``orthogonality_test``. A ratio with a zero or
        non-finite denominator is NaN (e.g. all gradients zero); the tests are NaN for ``m < 2``.

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # three gradient vectors
        >>> stats = gram_statistics(g @ g.T, torch.tensor([0, 0, 1]))
        >>> round(stats["coherence"], 4), round(stats["gradient_diversity"], 4), round(stats["label_alignment"], 4)
        (0.5556, 0.6, 0.7454)
    """
    if not isinstance(gram, Tensor):
        raise TypeError(f"`gram` expected a torch.Tensor [m, m], got {type(gram).__name__}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` expected a non-empty square [m, m] tensor, got shape {tuple(gram.shape)}")
    m = gram.shape[0]
    if batch_size is None:
        batch_size = m
    check_int(batch_size, "batch_size", minimum=1)
    check_int(num_classes, "num_classes", minimum=1, allow_none=True)
    G = gram.detach().to(torch.float64).cpu()
    B = batch_size
    total = G.sum()  # S = ‖Σ g_i‖²
    trace = G.diagonal().sum()  # T = Σ ‖g_i‖²
    proj = G.sum(dim=1) / m  # p_i = g_i . ḡ
    mean_sq = total / m**2  # ‖ḡ‖²
    out = {
        "coherence": _ratio(total, m * trace),
        "m_coherence": _ratio(total, trace),
        "gradient_diversity": _ratio(trace, total),
        "fisher_trace": float(trace / m),
        "label_alignment": _label_alignment(G, targets, num_classes),
    }
    if m < 2:
        out.update(norm_test=math.nan, inner_product_test=math.nan, orthogonality_test=math.nan)
        return out
    var_norm = (trace - m * mean_sq) / (m - 1)
    var_inner = ((proj**2).sum() - m * mean_sq**2) / (m - 1)
    var_ortho = (float(trace) - _ratio((proj**2).sum(), mean_sq)) / (m - 1)
    out["norm_test"] = _sqrt_ratio(var_norm, B * mean_sq)
    out["inner_product_test"] = _sqrt_ratio(var_inner, B * mean_sq**2)
    out["orthogonality_test"] = _sqrt_ratio(var_ortho, B * mean_sq)
    return out


def _label_alignment(G: Tensor, targets: Tensor | None, num_classes: int | None) -> float:
    if targets is None:
        return math.nan
    if not isinstance(targets, Tensor):
        raise TypeError(f"`targets` expected a torch.Tensor or None, got {type(targets).__name__}")
    m = G.shape[0]
    if targets.shape[0:1] != (m,):
        raise ValueError(f"`targets` expected {m} entries to match `gram`, got shape {tuple(targets.shape)}")
    if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        return math.nan  # not class indices: no class kernel to align with
    y = targets.detach().cpu().long()
    if int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes):
        raise ValueError(
            f"`targets` expected class indices in [0, {num_classes or 'C'}), got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    c = num_classes if num_classes is not None else int(y.max()) + 1
    if c < 2:
        return math.nan
    same = y[:, None] == y[None, :]
    Y = torch.where(same, torch.ones_like(G), torch.full_like(G, -1.0 / (c - 1)))
    return _ratio((G * Y).sum(), torch.linalg.matrix_norm(G) * torch.linalg.matrix_norm(Y))
