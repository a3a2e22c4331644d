r"""TracIn checkpoint influence from loss-gradient Grams (Pruthi et al. 2020, "Estimating training data influence by
tracing gradient descent").

The first-order effect of a gradient step of size :math:`\eta` on training example :math:`i` on the loss at another
example :math:`j` is :math:`-\eta\, g_i \cdot g_j`. Summed over checkpoints :math:`t` of a run,

.. math:: \mathrm{TracInCP}(i, j) = \sum_t \eta_t\, g_i(t) \cdot g_j(t),

positive for a *proponent* (steps on :math:`i` lowered the loss at :math:`j`: helpful) and negative for an
*opponent* (harmful). Its diagonal :math:`\sum_t \eta_t |g_i(t)|^2` is the self-influence, high for mislabelled or
atypical examples. The Grams :math:`g_i(t) \cdot g_j(t)` are what
:func:`~lightning_sensitivity.functional.loss_gradient_gram` (and the stiffness monitor at every measurement)
computes, so the influence costs no extra pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_sensitivity._checks import check_int, describe

__all__ = ["tracin_influence", "influence_top_k", "InfluenceTopK"]


def _learning_rates(learning_rates: Sequence[float] | Tensor, num: int) -> Tensor:
    if isinstance(learning_rates, Tensor):
        lrs = learning_rates.detach().double().cpu().reshape(-1) if learning_rates.dim() <= 1 else None
        if lrs is None:
            raise ValueError(
                f"`learning_rates` expected a 1-D tensor of {num} values, got shape {tuple(learning_rates.shape)}"
            )
    elif isinstance(learning_rates, Sequence) and not isinstance(learning_rates, (str, bytes)):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in learning_rates):
            raise TypeError(f"`learning_rates` expected a sequence of floats, got {describe(learning_rates)}")
        lrs = torch.tensor([float(v) for v in learning_rates], dtype=torch.float64)
    else:
        raise TypeError(
            f"`learning_rates` expected a sequence of floats or a 1-D tensor, got {describe(learning_rates)}"
        )
    if lrs.numel() != num:
        raise ValueError(f"`learning_rates` expected {num} values (one per Gram), got {lrs.numel()}")
    if not bool(torch.isfinite(lrs).all()) or bool((lrs < 0).any()):
        raise ValueError(f"`learning_rates` expected finite values >= 0, got {lrs.tolist()}")
    return lrs


def tracin_influence(grams: Sequence[Tensor] | Tensor, learning_rates: Sequence[float] | Tensor) -> Tensor:
    r"""TracInCP influence :math:`\sum_t \eta_t G_t` of checkpoint Grams :math:`G_t[i, j] = g_i(t) \cdot g_j(t)`.

    Args:
        grams: one Gram per checkpoint, ``[N, M]`` each (training examples ``i`` in the rows, the examples
            influenced in the columns; ``[N, N]`` of the training set with itself for self-influence on the
            diagonal), as a sequence or one ``[T, N, M]`` tensor. Vectors ``[N]`` (squared gradient norms, a Gram's
            diagonal) work alike and give the self-influence.
        learning_rates: ``[T]`` the step size :math:`\eta_t` in force at each checkpoint, ``>= 0``.

    Returns:
        ``[N, M]`` (or ``[N]``) in float64 on the Grams' device: positive entries are proponents (helpful),
        negative ones opponents (harmful).

    Raises:
        TypeError: ``grams`` not tensors, or ``learning_rates`` not numbers.
        ValueError: no Gram, Grams of different shapes or non-real dtype, or ``learning_rates`` of the wrong
            length, negative or non-finite.

    Example:
        >>> g1 = torch.tensor([[4.0, -1.0], [2.0, 1.0]])
        >>> tracin_influence([g1, 2 * g1], [0.1, 0.05])
        tensor([[ 0.8000, -0.2000],
                [ 0.4000,  0.2000]], dtype=torch.float64)
    """
    if isinstance(grams, Tensor):
        if grams.dim() not in (2, 3):
            raise ValueError(f"`grams` expected a [T, N, M] (or [T, N]) tensor, got shape {tuple(grams.shape)}")
        items = list(grams.unbind(0))
    elif isinstance(grams, Sequence) and not isinstance(grams, (str, bytes)):
        items = list(grams)
        if any(not isinstance(g, Tensor) for g in items):
            raise TypeError(f"`grams` expected a sequence of tensors, got {describe(grams)}")
    else:
        raise TypeError(f"`grams` expected a sequence of [N, M] tensors or a [T, N, M] tensor, got {describe(grams)}")
    if not items:
        raise ValueError("`grams` expected at least one Gram, got none")
    shape = items[0].shape
    for g in items:
        if g.shape != shape or g.dim() not in (1, 2):
            raise ValueError(
                f"`grams` expected Grams of one shape [N, M] (or [N]), got shapes {[tuple(g.shape) for g in items]}"
            )
        if not g.is_floating_point():
            raise ValueError(f"`grams` expected floating-point tensors, got dtype {g.dtype}")
    lrs = _learning_rates(learning_rates, len(items))
    out = torch.zeros(shape, dtype=torch.float64, device=items[0].device)
    for lr, g in zip(lrs.tolist(), items, strict=True):
        out.add_(g.detach().double(), alpha=lr)
    return out


class InfluenceTopK(NamedTuple):
    """The ``k`` strongest proponents and opponents of each influenced example (a column of the influence).

    Attributes:
        helpful: ``[M, k]`` long row indices (training examples) of the largest influences, strongest first.
        helpful_values: ``[M, k]`` their influences.
        harmful: ``[M, k]`` row indices of the most negative influences, most negative first.
        harmful_values: ``[M, k]`` their influences.
    """

    helpful: Tensor
    helpful_values: Tensor
    harmful: Tensor
    harmful_values: Tensor


def influence_top_k(influence: Tensor, k: int) -> InfluenceTopK:
    """Per column of an influence matrix ``[N, M]``, the ``k`` most helpful and the ``k`` most harmful rows.

    Ties are broken by the lower row index (a stable sort), so the result does not depend on the device.

    Args:
        influence: ``[N, M]`` (training examples x influenced examples), e.g. from :func:`tracin_influence`.
        k: how many of each; ``min(k, N)`` are returned.

    Raises:
        TypeError: ``influence`` not a tensor, ``k`` not an int.
        ValueError: ``influence`` not 2-D floating point, ``k < 1``.

    Example:
        >>> top = influence_top_k(torch.tensor([[0.5, -2.0], [-1.0, 3.0], [0.2, 0.0]]), 1)
        >>> top.helpful.tolist(), top.harmful.tolist()
        ([[0], [1]], [[1], [0]])
    """
    if not isinstance(influence, Tensor):
        raise TypeError(f"`influence` expected a torch.Tensor [N, M], got {describe(influence)}")
    if influence.dim() != 2 or not influence.is_floating_point() or influence.shape[0] == 0:
        raise ValueError(
            f"`influence` expected a floating-point [N, M] tensor with N >= 1, got {influence.dtype} of shape "
            f"{tuple(influence.shape)}"
        )
    k = min(check_int(k, "k", minimum=1), influence.shape[0])
    cols = influence.detach().T.cpu()
    down = torch.sort(cols, dim=1, descending=True, stable=True).indices[:, :k]
    up = torch.sort(cols, dim=1, stable=True).indices[:, :k]
    return InfluenceTopK(down, cols.gather(1, down), up, cols.gather(1, up))
