"""Gram matrices of per-example loss gradients, ``G[i, j] = g_i . g_j``: one dispatcher, one module per engine.

Reading a measurement top-down:

- :func:`gram_and_norms` (here) validates, enters measurement mode and picks an engine;
- :mod:`.layerwise` -- one batched forward/backward per chunk, per-layer factors from :mod:`.capture` (which ops
  are recognised and what each contributes), checked once per model against explicit gradients;
- :mod:`.per_example` -- explicit per-example gradients with ``vmap(grad)``, for any model;
- :mod:`.blocks` -- what both share: trainable/frozen split and block-by-block assembly bounded by ``chunk_size``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from lightning_sensitivity.functional._model import (
    Progress,
    check_chunk_size,
    check_progress,
    detached_state,
    match_model,
    measurement_context,
    prepare_inputs,
    prepare_targets,
    unwrap_model,
)
from lightning_sensitivity.functional.gram.blocks import LossFn
from lightning_sensitivity.functional.gram.capture import LayerwiseUnsupported
from lightning_sensitivity.functional.gram.layerwise import layerwise_gram
from lightning_sensitivity.functional.gram.per_example import per_example_gram

GramMethod = Literal["auto", "layerwise", "per_example"]
GRAM_METHODS = ("auto", "layerwise", "per_example")

__all__ = ["GRAM_METHODS", "GramMethod", "LayerwiseUnsupported", "LossFn", "gram_and_norms"]


def gram_and_norms(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None,
    targets2: Tensor | None,
    loss_fn: LossFn,
    chunk_size: int | None,
    progress: Progress | None,
    method: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` for :func:`~lightning_sensitivity.functional.loss_gradient_gram` and
    :func:`~lightning_sensitivity.functional.stiffness`: validates the arguments, puts the model in measurement
    mode and runs the engine ``method`` names (``"auto"``: layerwise, falling back to per-example gradients)."""
    model, args = prepare_gram_call(model, inputs, targets, inputs2, targets2, loss_fn, chunk_size, progress, method)
    with measurement_context(model):
        if method == "per_example":
            gram, sq1, sq2 = per_example_gram(*args)
        else:
            try:
                gram, sq1, sq2 = layerwise_gram(*args)
            except LayerwiseUnsupported as err:
                if method == "layerwise":
                    raise ValueError(f"`method='layerwise'` cannot handle this model: {err}") from None
                # Exactness first: the generic engine handles any model, at the cost of per-example gradients.
                gram, sq1, sq2 = per_example_gram(*args)
    return gram.detach(), sq1.detach(), sq2.detach()


def prepare_gram_call(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    inputs2: Tensor | None,
    targets2: Tensor | None,
    loss_fn: LossFn,
    chunk_size: int | None,
    progress: Progress | None,
    method: str,
) -> tuple[nn.Module, tuple]:
    """Validate a Gram call; ``(module, engine arguments)`` with the module behind ``torch.compile`` and the engine
    arguments ``(model, params, buffers, x1, y1, x2, y2, loss_fn, chunk_size, progress)``."""
    if method not in GRAM_METHODS:
        raise ValueError(f"`method` expected one of {GRAM_METHODS}, got {method!r}")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` expected a callable (logits, targets) -> loss, got {type(loss_fn).__name__}")
    check_chunk_size(chunk_size)
    check_progress(progress)
    if (inputs2 is None) != (targets2 is None):
        raise ValueError(
            "`inputs2` and `targets2` expected to be given together, got "
            f"inputs2={'None' if inputs2 is None else 'a tensor'} and targets2={'None' if targets2 is None else 'a tensor'}"
        )
    model = unwrap_model(model)
    x1 = prepare_inputs(inputs, integer=True)  # token ids for a model that starts with an embedding
    y1 = prepare_targets(targets, x1.shape[0])
    params, buffers = detached_state(model)
    x1 = match_model(x1, params)
    y1 = y1.to(x1.device)
    x2 = y2 = None
    if inputs2 is not None:
        x2 = prepare_inputs(inputs2, name="inputs2", integer=True)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"`inputs2` expected examples of shape {tuple(x1.shape[1:])} like `inputs`, got {tuple(x2.shape[1:])}"
            )
        y2 = prepare_targets(targets2, x2.shape[0], name="targets2", inputs_name="inputs2")
        x2 = match_model(x2, params)
        y2 = y2.to(x2.device)
    return model, (model, params, buffers, x1, y1, x2, y2, loss_fn, chunk_size, progress)
