"""The generic engine: explicit per-example gradients (``vmap`` over ``grad``), for any model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sensitivity.functional._model import Progress, as_function, check_logits, take
from lightning_sensitivity.functional.gram.blocks import LossFn, blockwise_gram, split_trainable


def per_example_gradients(
    model: nn.Module,
    trainable: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    kwargs: dict[str, Tensor] | None = None,
) -> Tensor:
    """``[n, P]`` flattened gradients of each example's own loss (``vmap`` over ``grad``).

    Each example is a batch of one: the model sees ``x[i:i + 1]`` and ``{k: v[i:i + 1]}`` of ``kwargs``, and
    ``loss_fn`` gets its logits ``[1, C]`` and targets ``y[i:i + 1]`` (``[1, ...]``)."""
    f = as_function(model)

    def loss_single(p: dict[str, Tensor], x_i: Tensor, y_i: Tensor, kwargs_i: dict[str, Tensor]) -> Tensor:
        batch_of_one = {k: v.unsqueeze(0) for k, v in kwargs_i.items()}
        logits = check_logits(f({**frozen, **p}, buffers, x_i.unsqueeze(0), **batch_of_one))
        # Sum: a mean-reduced or an unreduced loss of a batch of one is the example's own loss either way.
        return loss_fn(logits, y_i.unsqueeze(0)).sum()

    grads = vmap(grad(loss_single), in_dims=(None, 0, 0, 0))(trainable, x, y, kwargs or {})
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def per_example_gram(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x1: Tensor,
    y1: Tensor,
    x2: Tensor | None,
    y2: Tensor | None,
    loss_fn: LossFn,
    chunk_size: int | None,
    progress: Progress | None,
    *,
    kwargs1: dict[str, Tensor] | None = None,
    kwargs2: dict[str, Tensor] | None = None,
    sketch=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise Gram from explicit per-example gradients (``vmap`` over ``grad``): works for any model.

    ``kwargs1``/``kwargs2`` are the per-example keyword inputs of the two sets (values ``[N, ...]``/``[M, ...]``);
    ``sketch`` (a :class:`~.sketch.GradientSketch`) keeps sketched gradients instead. Each chunk's gradients are
    computed once and kept (``[N, P]``, or ``[N, k]`` sketched): the chunk bounds the ``vmap`` pass, not the result."""
    trainable, frozen = split_trainable(params, model)
    sets = ((x1, y1, kwargs1 or {}), (x2, y2, kwargs2 or {}))

    def features(s: int, piece: slice) -> Tensor:
        x, y, kw = sets[s]
        return per_example_gradients(model, trainable, frozen, buffers, x[piece], y[piece], loss_fn, take(kw, piece))

    return blockwise_gram(
        features,
        lambda a, b: a @ b.T,
        lambda g: g.pow(2).sum(dim=1),
        x1.shape[0],
        None if x2 is None else x2.shape[0],
        chunk_size,
        progress,
        sketch=sketch,
    )
