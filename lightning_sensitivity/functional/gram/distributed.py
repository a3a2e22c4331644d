"""The layerwise Gram factors of some examples as plain tensors, for processes that share a Gram.

Each process computes the factors of its own examples, the factors are exchanged, and each process forms its block
of Gram rows against all examples.

:func:`gram_factors` is one batched forward and backward pass over the examples given (the layerwise engine's, with
its self-check against explicit gradients); :func:`gram_rows` forms ``G[index, :]`` and ``|g_index|^2`` from the
factors of all examples. Together they give the rows of :func:`~lightning_sensitivity.functional.loss_gradient_gram`
(for models the layerwise engine covers) at half the per-example work per process when two share it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sensitivity.functional._model import (
    ModelKwargs,
    measurement_context,
)
from lightning_sensitivity.functional.gram import layerwise_factors as lg
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram import prepare_gram_call
from lightning_sensitivity.functional.gram.blocks import LossFn, split_trainable
from lightning_sensitivity.functional.gram.layerwise import verify

__all__ = ["gram_factors", "gram_rows"]


def gram_factors(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    reference_rows: int,
    loss_fn: LossFn = F.cross_entropy,
    model_kwargs: ModelKwargs | None = None,
) -> dict[str, Tensor]:
    """Layerwise Gram factors of ``inputs`` as a dict of tensors with first dimension ``N``.

    Args:
        model: maps ``[N, *input_shape]`` to outputs ``[N, C]``, as in
            :func:`~lightning_sensitivity.functional.loss_gradient_gram`.
        inputs: ``[N, *input_shape]`` (floating point or token ids).
        targets: ``[N, ...]``, whatever ``loss_fn`` expects.
        loss_fn: ``loss_fn(logits, targets)``, as in :func:`~lightning_sensitivity.functional.loss_gradient_gram`.
        model_kwargs: per-example keyword inputs of the model (``[N, ...]`` each).
        reference_rows: the number of rows the factors will be multiplied at (the number of all examples); it
            decides, alike for every caller, which layers are kept as factor pairs. Factors of different example
            sets fit together only when made with the same ``reference_rows``.

    Returns:
        ``{"flat:<param>": [N, k], "kron.<i>.a:<param>": [N, T, p], "kron.<i>.d:<param>": [N, T, q], ...}``;
        concatenating the dicts of
        several example sets along dimension 0 gives the factors of their union.

    Raises:
        LayerwiseUnsupported: the layerwise engine does not cover the model (use the per-example engine).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
        >>> factors = gram_factors(model, x, y, reference_rows=6)
        >>> from lightning_sensitivity.functional import loss_gradient_gram
        >>> torch.allclose(gram_rows(factors, torch.arange(6))[0], loss_gradient_gram(model, x, y), atol=1e-6)
        True
    """
    model, (_, params, buffers, x, y, *_), kw, _ = prepare_gram_call(
        model, inputs, targets, None, None, loss_fn, None, None, "layerwise", model_kwargs
    )
    trainable, frozen = split_trainable(params, model)
    key = plans.structure_key(trainable, x, y, kw, loss_fn)
    remembered = plans.remembered(model, key)
    explicit = dict(remembered.explicit) if remembered is not None else {}
    with measurement_context(model):
        info: dict = {}
        feats = lg.layer_features(
            model, trainable, frozen, buffers, x, y, loss_fn, reference_rows, model_kwargs=kw, explicit=explicit,
            info=info,
        )  # fmt: skip
        remember = info.get("host_read") is None  # a forward reading batch values is checked at every call
        failure = verify(model, trainable, frozen, buffers, x, y, kw, loss_fn, feats, remember=remember)
        if failure is not None:
            raise failure
    loop = plans.vmap_refusal(model, key) if explicit else None
    plans.remember(model, key, plans.GramPlan("layerwise", tuple(sorted(explicit.items())), loop=loop))
    out = {f"flat:{name}": g.detach() for name, g in feats.flat.items()}
    for i, (name, a, d) in enumerate(feats.kron):
        out[f"kron.{i:04d}.a:{name}"], out[f"kron.{i:04d}.d:{name}"] = a.detach(), d.detach()
    return out


def _features(factors: dict[str, Tensor]) -> lg.Features:
    flat = {key.split(":", 1)[1]: t for key, t in factors.items() if key.startswith("flat:")}
    pairs = sorted(key for key in factors if key.startswith("kron.") and ".a:" in key)
    kron = [(key.split(":", 1)[1], factors[key], factors[key.replace(".a:", ".d:", 1)]) for key in pairs]
    return lg.Features(dict(sorted(flat.items())), kron)


def gram_rows(factors: dict[str, Tensor], index: Tensor | slice) -> tuple[Tensor, Tensor]:
    """``(G[index, :], |g_index|^2)`` from the :func:`gram_factors` of all ``N`` examples: ``[s, N]`` and ``[s]``."""
    feats = _features(factors)
    rows = lg.Features(
        {k: g[index] for k, g in feats.flat.items()}, [(k, a[index], d[index]) for k, a, d in feats.kron]
    )
    with torch.no_grad():
        return lg.cross(rows, feats), lg.squared_norms(rows)
