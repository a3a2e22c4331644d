"""Engines for the Gram matrix of per-example loss gradients, ``G[i, j] = g_i . g_j``.

An engine returns ``(G, |g_i|^2, |g_j|^2)`` so that cosines need no second pass. Only trainable parameters
(``requires_grad=True``) count; frozen ones enter the forward pass as constants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sensitivity.functional._model import Progress, as_function, check_logits, chunks, report

LossFn = Callable[[Tensor, Tensor], Tensor]


def split_trainable(params: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split detached parameters into trainable and frozen ones, by the ``requires_grad`` of the originals."""
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    if not trainable_names:
        raise ValueError("the model expected to have trainable parameters (requires_grad=True), got none")
    trainable = {k: v for k, v in params.items() if k in trainable_names}
    frozen = {k: v for k, v in params.items() if k not in trainable_names}
    return trainable, frozen


def per_example_gradients(
    model: nn.Module,
    trainable: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
) -> Tensor:
    """``[n, P]`` flattened gradients of each example's own loss (``vmap`` over ``grad``)."""
    f = as_function(model)

    def loss_single(p: dict[str, Tensor], x_i: Tensor, y_i: Tensor) -> Tensor:
        logits = check_logits(f({**frozen, **p}, buffers, x_i.unsqueeze(0)))
        # Sum: a mean-reduced or an unreduced loss of a batch of one is the example's own loss either way.
        return loss_fn(logits, y_i.unsqueeze(0)).sum()

    grads = vmap(grad(loss_single), in_dims=(None, 0, 0))(trainable, x, y)
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
) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise Gram from per-example gradients; memory is bounded by two chunks of gradients.

    With ``chunk_size`` set, gradients of column chunks are recomputed for every row chunk rather than stored
    (``N * P`` numbers would not be bounded by the chunk); with ``chunk_size=None`` everything is one block.
    """
    trainable, frozen = split_trainable(params, model)
    same = x2 is None

    def grads(x: Tensor, y: Tensor, piece: slice) -> Tensor:
        return per_example_gradients(model, trainable, frozen, buffers, x[piece], y[piece], loss_fn)

    cols_x, cols_y = (x1, y1) if same else (x2, y2)
    rows_slices = list(chunks(x1.shape[0], chunk_size))
    col_slices = list(chunks(cols_x.shape[0], chunk_size))
    gram = x1.new_zeros(x1.shape[0], cols_x.shape[0])
    sq1 = x1.new_zeros(x1.shape[0])
    sq2 = x1.new_zeros(cols_x.shape[0])
    total = len(rows_slices) * (len(rows_slices) + 1) // 2 if same else len(rows_slices) * len(col_slices)
    done = 0
    for i, rows in enumerate(rows_slices):
        g_rows = grads(x1, y1, rows)
        sq1[rows] = g_rows.pow(2).sum(dim=1)
        for j, cols in enumerate(col_slices):
            if same and j < i:
                continue
            g_cols = g_rows if (same and j == i) else grads(cols_x, cols_y, cols)
            block = g_rows @ g_cols.T
            gram[rows, cols] = block
            if same:
                gram[cols, rows] = block.T
            elif i == 0:
                sq2[cols] = g_cols.pow(2).sum(dim=1)
            done += 1
            report(progress, done, total)
    if same:
        sq2 = sq1
    return gram, sq1, sq2
