"""Engines for the Gram matrix of per-example loss gradients, ``G[i, j] = g_i . g_j``.

An engine returns ``(G, |g_i|^2, |g_j|^2)`` so that cosines need no second pass. Only trainable parameters
(``requires_grad=True``) count; frozen ones enter the forward pass as constants.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sensitivity.functional import _layer_gram as lg
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


def blockwise_gram(
    features: Callable[[int, slice], Any],
    cross: Callable[[Any, Any], Tensor],
    squared_norms: Callable[[Any], Tensor],
    num_rows: int,
    num_cols: int | None,
    chunk_size: int | None,
    progress: Progress | None,
    like: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` assembled block by block from per-chunk features.

    ``features(s, piece)`` computes what examples ``piece`` of set ``s`` (0 = rows, 1 = columns) contribute;
    ``num_cols=None`` means the columns are the rows (only the upper blocks are computed). With ``chunk_size`` set,
    column features are recomputed for every row chunk rather than stored, so memory is bounded by two chunks.
    """
    same = num_cols is None
    row_slices = list(chunks(num_rows, chunk_size))
    col_slices = row_slices if same else list(chunks(num_cols, chunk_size))
    gram = like.new_zeros(num_rows, num_rows if same else num_cols)
    sq1 = like.new_zeros(num_rows)
    sq2 = sq1 if same else like.new_zeros(num_cols)
    total = len(row_slices) * (len(row_slices) + 1) // 2 if same else len(row_slices) * len(col_slices)
    done = 0
    for i, rows in enumerate(row_slices):
        f_rows = features(0, rows)
        sq1[rows] = squared_norms(f_rows)
        for j, cols in enumerate(col_slices):
            if same and j < i:
                continue
            f_cols = f_rows if (same and j == i) else features(0 if same else 1, cols)
            block = cross(f_rows, f_cols)
            gram[rows, cols] = block
            if same:
                gram[cols, rows] = block.T
            elif i == 0:
                sq2[cols] = squared_norms(f_cols)
            done += 1
            report(progress, done, total)
    return gram, sq1, sq2


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
    """Blockwise Gram from explicit per-example gradients (``vmap`` over ``grad``): works for any model."""
    trainable, frozen = split_trainable(params, model)
    sets = ((x1, y1), (x2, y2))

    def features(s: int, piece: slice) -> Tensor:
        x, y = sets[s]
        return per_example_gradients(model, trainable, frozen, buffers, x[piece], y[piece], loss_fn)

    return blockwise_gram(
        features,
        lambda a, b: a @ b.T,
        lambda g: g.pow(2).sum(dim=1),
        x1.shape[0],
        None if x2 is None else x2.shape[0],
        chunk_size,
        progress,
        x1,
    )


def layerwise_gram(
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
    """Blockwise Gram from per-layer factors of one batched pass per chunk (see ``_layer_gram``).

    Before any block is assembled, the first chunk's factors are checked against explicit gradients of two of its
    examples (``vmap(grad)``): a model that mixes examples in its forward pass, keeps the batch on another
    dimension or uses a parameter where the capture cannot see it fails the check instead of giving a wrong Gram.

    Raises:
        LayerwiseUnsupported: an unsupported use of a trainable parameter, or a failed check.
    """
    trainable, frozen = split_trainable(params, model)
    sets = ((x1, y1), (x2, y2))
    reference_rows = min(max(x1.shape[0], 0 if x2 is None else x2.shape[0]), chunk_size or 1 << 62)
    checked = False

    def features(s: int, piece: slice) -> lg.Features:
        nonlocal checked
        x, y = sets[s]
        feats = lg.layer_features(model, trainable, frozen, buffers, x[piece], y[piece], loss_fn, reference_rows)
        if not checked:
            key = _check_key(trainable, x, loss_fn)
            verified = _VERIFIED.setdefault(model, set())
            if key not in verified:
                _check_against_explicit(model, trainable, frozen, buffers, x[piece], y[piece], loss_fn, feats)
                verified.add(key)
            checked = True
        return feats

    return blockwise_gram(
        features,
        lg.cross,
        lg.squared_norms,
        x1.shape[0],
        None if x2 is None else x2.shape[0],
        chunk_size,
        progress,
        x1,
    )


# Models whose layerwise factors passed the check, with what they were checked on: the check is about the model's
# structure, so a monitor measuring the same model every epoch pays for it once.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def _check_key(trainable: dict[str, Tensor], x: Tensor, loss_fn: LossFn) -> tuple:
    shapes = tuple((k, tuple(v.shape)) for k, v in trainable.items())
    return (shapes, tuple(x.shape[1:]), x.dtype, x.device, id(loss_fn))


def _check_against_explicit(model, trainable, frozen, buffers, x, y, loss_fn, feats: lg.Features) -> None:
    index = torch.tensor(sorted({0, x.shape[0] - 1}), device=x.device)
    # Plain autograd on batches of one: far less overhead than vmap for two examples.
    leaves = {k: v.detach().requires_grad_(True) for k, v in trainable.items()}
    f = as_function(model)
    rows = []
    for i in index.tolist():
        loss = loss_fn(check_logits(f({**frozen, **leaves}, buffers, x[i : i + 1])), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, leaves.values())]))
    explicit = torch.stack(rows)
    expected = explicit @ explicit.T
    picked = lg.select(feats, index)
    got = lg.cross(picked, picked)
    scale = expected.diagonal().sqrt()
    tolerance = torch.finfo(expected.dtype).eps ** 0.5 * (scale[:, None] * scale[None, :] + torch.finfo(expected.dtype).tiny)
    if not bool(((got - expected).abs() <= tolerance).all()):
        raise lg.LayerwiseUnsupported(
            "the layerwise Gram disagrees with explicit per-example gradients on a check pair (does the model mix "
            "the examples of a batch, or keep them on a dimension other than 0?)"
        )
