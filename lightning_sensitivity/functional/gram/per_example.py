"""The generic engine: explicit per-example gradients (``vmap`` over ``grad``, else a per-example autograd loop),
for any model torch can differentiate."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sensitivity.functional._inputs import take
from lightning_sensitivity.functional._purity import as_function
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram.blocks import LossFn, blockwise_gram
from lightning_sensitivity.functional.gram.call import GramCall
from lightning_sensitivity.functional.model import check_logits


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
    """``[n, P]`` flattened gradients of each example's own loss (:func:`subset_gradients` of every parameter).

    Each example is a batch of one: the model sees ``x[i:i + 1]`` and ``{k: v[i:i + 1]}`` of ``kwargs``, and
    ``loss_fn`` gets its logits ``[1, C]`` and targets ``y[i:i + 1]`` (``[1, ...]``)."""
    grads = subset_gradients(model, trainable, frozen, buffers, x, y, loss_fn, kwargs or {}, list(trainable))
    return torch.cat([grads[k].flatten(1) for k in trainable], dim=1)


def subset_gradients(
    model: nn.Module,
    trainable: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    kwargs: dict[str, Tensor],
    names: list[str],
) -> dict[str, Tensor]:
    """``{name: [n, k]}``: per-example gradients of the trainable parameters ``names`` alone (the others held
    fixed), by ``vmap(grad)``; a forward ``vmap`` cannot batch (``.item()``, data-dependent control flow) is run
    one example at a time with ``torch.autograd.grad`` instead, and remembered per model (:mod:`.plan`)."""
    key = plans.structure_key(trainable, x, y, kwargs, loss_fn)
    if plans.vmap_refusal(model, key) is None:
        try:
            return _vmap_gradients(model, trainable, frozen, buffers, x, y, loss_fn, kwargs, names)
        except Exception as err:  # noqa: BLE001 -- whatever vmap cannot batch, the loop below runs plainly
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            plans.refuse_vmap(model, key, f"{type(err).__name__}: {first[:300]}")
    return _loop_gradients(model, trainable, frozen, buffers, x, y, loss_fn, kwargs, names)


def _vmap_gradients(model, trainable, frozen, buffers, x, y, loss_fn, kwargs, names) -> dict[str, Tensor]:
    f = as_function(model)
    fixed = {k: v for k, v in trainable.items() if k not in names}

    def loss_single(p: dict[str, Tensor], x_i: Tensor, y_i: Tensor, kwargs_i: dict[str, Tensor]) -> Tensor:
        batch_of_one = {k: v.unsqueeze(0) for k, v in kwargs_i.items()}
        logits = check_logits(f({**frozen, **fixed, **p}, buffers, x_i.unsqueeze(0), **batch_of_one))
        # Sum: a mean-reduced or an unreduced loss of a batch of one is the example's own loss either way.
        return loss_fn(logits, y_i.unsqueeze(0)).sum()

    grads = vmap(grad(loss_single), in_dims=(None, 0, 0, 0))({k: trainable[k] for k in names}, x, y, kwargs)
    return {k: g.flatten(1) for k, g in grads.items()}


def _loop_gradients(model, trainable, frozen, buffers, x, y, loss_fn, kwargs, names) -> dict[str, Tensor]:
    """Plain autograd on batches of one: works for any forward Python can run and torch can differentiate."""
    f = as_function(model)
    fixed = {k: v for k, v in trainable.items() if k not in names}
    leaves = {k: trainable[k].detach().requires_grad_(True) for k in names}
    rows = []
    for i in range(x.shape[0]):
        logits = check_logits(f({**frozen, **fixed, **leaves}, buffers, x[i : i + 1], **take(kwargs, slice(i, i + 1))))
        loss = loss_fn(logits, y[i : i + 1]).sum()
        try:
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True) if loss.requires_grad else None
        except RuntimeError as err:
            raise ValueError(
                "the model's loss could not be differentiated with respect to its trainable parameters, even one "
                f"example at a time: {err}"
            ) from err
        grads = grads or [None] * len(leaves)
        rows.append([torch.zeros_like(t) if g is None else g for t, g in zip(leaves.values(), grads, strict=True)])
    return {k: torch.stack([row[j] for row in rows]).flatten(1) for j, k in enumerate(leaves)}


def per_example_gram(call: GramCall) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise Gram of ``call`` from explicit per-example gradients (``vmap`` over ``grad``, else a per-example
    autograd loop): works for any model torch can differentiate.

    Each chunk's gradients are computed once and kept (``[N, P]``, or ``[N, k]`` sketched with ``call.sketch_dim``):
    the chunk bounds the ``vmap`` pass, not the result."""
    sets = call.sets

    def features(s: int, piece: slice) -> Tensor:
        x, y, kw = sets[s]
        return per_example_gradients(
            call.model, call.trainable, call.frozen, call.buffers, x[piece], y[piece], call.loss_fn, take(kw, piece)
        )

    return blockwise_gram(
        features,
        lambda a, b: a @ b.T,
        lambda g: g.pow(2).sum(dim=1),
        len(call.rows),
        call.num_cols,
        call.chunk_size,
        call.progress,
        sketch=call.sketch(),
    )
