"""Predictions: the eval-mode logits of a batch, leaving the model exactly as it was."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_sensitivity.functional._chunks import check_chunk_size, chunks
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model
from lightning_sensitivity.functional.model import check_logits

__all__ = ["predict_logits"]


def predict_logits(
    model: nn.Module,
    inputs: Tensor,
    chunk_size: int | None = None,
    *,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    """Eval-mode logits ``[N, C]`` of ``inputs``, leaving the model exactly as it was (no grad, flags restored).

    ``inputs`` may be floating-point or integer (token ids ``[N, T]``); ``model_kwargs`` are per-example keyword
    inputs of the model (each ``[N, ...]``, sliced with the inputs: ``model(x[piece], **{k: v[piece]})``).

    Example:
        >>> predict_logits(torch.nn.Linear(3, 2), torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """
    check_chunk_size(chunk_size)
    model, f, params, buffers = pure_model(model)
    x = match_model(prepare_inputs(inputs, allow_integer=True), params)
    kwargs = prepare_model_kwargs(model_kwargs, x.shape[0], params)
    with measurement_context(model, grad=False):
        pieces = chunks(x.shape[0], chunk_size)
        return torch.cat([check_logits(f(params, buffers, x[piece], **take(kwargs, piece))) for piece in pieces])
