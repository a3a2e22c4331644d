"""Unbiased random-projection estimate of the input-output Jacobian norm, for models with very many classes.

Hoffman, Roberts and Yaida (2019, "Robust learning with Jacobian regularization"): for ``v`` uniform on the unit
sphere of ``R^C``, ``E[v v^T] = I / C``, so ``C * ||J^T v||^2`` is an unbiased estimate of ``||J||_F^2``. Each
projection costs one reverse pass instead of the ``C`` (or ``C - 1``) of the exact :func:`jacobian_norm`, and the
spread of the projections gives the standard error. The exact function stays the default everywhere; use this one
when ``C`` is in the hundreds or thousands and a few percent of error is acceptable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress, chunks, report
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model
from lightning_sensitivity.functional.jacobian import OUTPUTS, Output
from lightning_sensitivity.functional.model import check_logits


def jacobian_norm_estimate(
    model: nn.Module,
    inputs: Tensor,
    *,
    num_projections: int = 8,
    output: Output = "softmax",
    seed: int = 0,
    squared: bool = False,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-example estimate of ``||d out(f(x_i)) / d x_i||_F`` from random projections, with its standard error.

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]``; evaluated in eval mode and left as it was.
        inputs: ``[N, *input_shape]`` floating-point (embed token ids first).
        num_projections: ``K >= 2`` random unit directions per example (one reverse pass each).
        output: ``"softmax"`` (default), ``"logits"``, ``"log_softmax"`` or ``"sigmoid"``, as in
            :func:`jacobian_norm`.
        seed: seeds a private generator (the global RNG is not touched); the directions do not depend on
            ``chunk_size``.
        squared: return the unbiased estimate of ``||J||_F^2`` and its standard error instead of the norm.
        chunk_size: examples per forward pass; None = all at once.
        progress: optional ``progress(done, total)`` called after each chunk.
        model_kwargs: per-example keyword inputs of the model (each ``[N, ...]``), chunked with ``inputs`` and
            passed as ``model(x[piece], **{k: v[piece]})``, as in :func:`jacobian_norm`.

    Returns:
        ``(estimate [N], stderr [N])``. For the norm (default) the estimate is the square root of the unbiased
        squared-norm estimate (biased low by a term of second order in the relative error) and the standard error
        is propagated to first order, ``stderr_sq / (2 * estimate)``.

    Raises:
        ValueError: unknown ``output``, ``num_projections < 2``, bad ``chunk_size`` or inputs.
        TypeError: arguments of the wrong type.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 100))
        >>> estimate, stderr = jacobian_norm_estimate(model, torch.randn(3, 5), num_projections=16)
        >>> estimate.shape, stderr.shape
        (torch.Size([3]), torch.Size([3]))
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` expected one of {OUTPUTS}, got {output!r}")
    check_int(num_projections, "num_projections", minimum=2)  # the standard error needs two
    check_int(seed, "seed")
    check_chunk_size(chunk_size)
    check_progress(progress)
    model, f, params, buffers = pure_model(model)
    x_all = match_model(prepare_inputs(inputs), params)
    kwargs = prepare_model_kwargs(model_kwargs, x_all.shape[0], params)
    generator = torch.Generator().manual_seed(seed)
    directions: Tensor | None = None
    samples = []
    with measurement_context(model):
        for piece in chunks(x_all.shape[0], chunk_size):
            x = x_all[piece].detach().requires_grad_(True)
            logits = check_logits(f(params, buffers, x, **take(kwargs, piece)))
            if directions is None:  # drawn once for all examples, so chunking does not change them
                shape = (num_projections, x_all.shape[0], logits.shape[1])
                directions = torch.randn(shape, generator=generator, dtype=torch.float64)
                directions = (directions / directions.norm(dim=2, keepdim=True)).to(logits)
            samples.append(_projections(logits, x, directions[:, piece], output).detach())
            report(progress, piece.stop, x_all.shape[0])
    sq = torch.cat(samples, dim=1)  # [K, N] unbiased samples of ||J||_F^2
    mean = sq.mean(dim=0)
    stderr = sq.std(dim=0, unbiased=True) / num_projections**0.5
    if squared:
        return mean, stderr
    norm = mean.clamp_min(0).sqrt()
    # A zero mean of non-negative samples means every sample was zero: the error is zero too.
    return norm, torch.where(norm > 0, stderr / (2 * norm.clamp_min(torch.finfo(norm.dtype).tiny)), 0.0)


def _projections(logits: Tensor, x: Tensor, directions: Tensor, output: str) -> Tensor:
    """``C * ||J_i^T v_ik||^2`` for each direction ``k`` and example ``i``: ``[K, n]``."""
    probs = logits.detach().sigmoid() if output == "sigmoid" else logits.detach().softmax(dim=-1)
    num_classes = logits.shape[1]
    out = []
    for k in range(directions.shape[0]):
        v = directions[k]
        # Cotangent on the logits: A_i^T v for the output transform's Jacobian A_i.
        if output == "softmax":
            cotangent = probs * v - probs * (probs * v).sum(dim=1, keepdim=True)
        elif output == "log_softmax":
            cotangent = v - probs * v.sum(dim=1, keepdim=True)
        elif output == "sigmoid":  # A_i = diag(s (1 - s)) is symmetric
            cotangent = probs * (1 - probs) * v
        else:
            cotangent = v
        (grad_x,) = torch.autograd.grad(logits, x, cotangent, retain_graph=k < directions.shape[0] - 1)
        out.append(num_classes * grad_x.pow(2).flatten(1).sum(dim=1))
    return torch.stack(out)
