"""Gram matrices of per-example loss gradients, ``G[i, j] = g_i . g_j``: one dispatcher, one module per engine.

Reading a measurement top-down:

- :func:`gram_and_norms` (here) validates, enters measurement mode and picks an engine;
- :mod:`.layerwise` -- one batched forward/backward per chunk, per-layer factors from :mod:`.layerwise_factors`
  (what each recognised op contributes; which ops are recognised is :mod:`.recognised_ops`), checked once per model
  against explicit gradients;
- :mod:`.per_example` -- explicit per-example gradients with ``vmap(grad)``, else a per-example autograd loop, for
  any model torch can differentiate (and for the parameters the layerwise capture does not recognise);
- :mod:`.plan` -- which engine served which parameters and why, said once and remembered per model structure;
- :mod:`.blocks` -- what both share: trainable/frozen split and the Gram from one pass over the examples,
  ``chunk_size`` at a time (each chunk's features kept; the memory this takes is in its docstring);
- :mod:`.sketch` -- ``sketch_dim=k``: each chunk's features projected to ``[n, k]`` (the gradients never formed),
  an unbiased estimate of the Gram in ``O(N k)`` memory;
- :mod:`.distributed` -- processes sharing one Gram: each forms the rows it owns (a shard map), exchanging layer
  factors where the layerwise engine covers the model;
- :mod:`.per_layer` -- the Gram split by layer (``per_layer_gram``); :mod:`.statistics` -- statistics of a Gram
  (``gram_statistics``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from torch import Tensor, nn

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.functional._model import (
    ModelKwargs,
    Progress,
    check_chunk_size,
    check_loss_fn,
    check_progress,
    detached_state,
    has_sharded_parameters,
    is_fsdp1,
    match_model,
    measurement_context,
    prepare_inputs,
    prepare_model_kwargs,
    prepare_targets,
    unwrap_model,
)
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram.blocks import LossFn, split_trainable
from lightning_sensitivity.functional.gram.layerwise import layerwise_gram
from lightning_sensitivity.functional.gram.layerwise_factors import LayerwiseUnsupported
from lightning_sensitivity.functional.gram.per_example import per_example_gram
from lightning_sensitivity.functional.gram.plan import GramPlan, gram_engine_plan
from lightning_sensitivity.functional.gram.sketch import GradientSketch

GramMethod = Literal["auto", "layerwise", "per_example"]
GRAM_METHODS = ("auto", "layerwise", "per_example")

__all__ = ["GRAM_METHODS", "GramMethod", "GramPlan", "LayerwiseUnsupported", "LossFn", "gram_and_norms",
           "gram_engine_plan"]  # fmt: skip
T = TypeVar("T")


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
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
    *,
    sketch_dim: int | None = None,
    sketch_seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` for :func:`~lightning_sensitivity.functional.loss_gradient_gram` and
    :func:`~lightning_sensitivity.functional.stiffness`: validates the arguments, puts the model in measurement
    mode and runs the engine ``method`` names (``"auto"``: layerwise -- per-layer factors, explicit per-example
    gradients for parameters the capture does not recognise -- falling back to per-example gradients of the whole
    model; see :func:`run_engines`).

    Inputs may be integer (token ids): nothing is differentiated with respect to them. Targets may be of any dtype
    and shape ``[N, ...]``; ``model_kwargs``/``model_kwargs2`` are per-example keyword inputs of the model for the
    two sets. With ``sketch_dim=k`` the three are estimates from ``[N, k]`` sketched gradients (:mod:`.sketch`),
    with maps drawn from ``sketch_seed``."""
    check_int(sketch_dim, "sketch_dim", minimum=1, allow_none=True)
    check_int(sketch_seed, "sketch_seed", minimum=0)
    model, args, kw1, kw2 = prepare_gram_call(
        model, inputs, targets, inputs2, targets2, loss_fn, chunk_size, progress, method, model_kwargs, model_kwargs2
    )
    _, params, _, x1, y1 = args[:5]
    key = plans.structure_key(split_trainable(params, model)[0], x1, y1, kw1, loss_fn)

    def sketch() -> GradientSketch | None:  # a fresh one per engine: the same seed gives the same maps
        if sketch_dim is None:
            return None
        return GradientSketch(sketch_dim, sketch_seed, {k: v.shape[0] for k, v in params.items() if v.dim() >= 1})

    with measurement_context(model):
        gram, sq1, sq2 = run_engines(
            model,
            method,
            key,
            lambda explicit: layerwise_gram(*args, kwargs1=kw1, kwargs2=kw2, explicit=explicit, sketch=sketch()),
            lambda: per_example_gram(*args, kwargs1=kw1, kwargs2=kw2, sketch=sketch()),
        )
    return gram.detach(), sq1.detach(), sq2.detach()


def run_engines(
    model: nn.Module,
    method: str,
    key: tuple,
    layerwise: Callable[[dict[str, str]], T],
    per_example: Callable[[], T],
) -> T:
    """Run the engine for ``method`` and record the :class:`GramPlan` under ``key`` (:func:`.plan.structure_key`).

    ``layerwise(explicit)`` runs the layerwise engine with ``explicit`` (``{parameter: reason}``, parameters served
    by explicit per-example gradients; updated in place); ``per_example()`` the whole-model per-example engine.
    ``"auto"`` runs the layerwise engine unless a plan remembered for ``key`` says it failed, and falls back to the
    per-example engine when it raises :class:`LayerwiseUnsupported` (exactness first); the failure is remembered,
    so no later measurement of the same structure repeats it.
    """
    remembered = plans.remembered(model, key)
    if method == "per_example" or (method == "auto" and remembered is not None and remembered.engine == "per_example"):
        out = per_example()
        fallback = remembered.fallback if method == "auto" else None
        plans.remember(model, key, GramPlan("per_example", loop=plans.vmap_refusal(model, key), fallback=fallback))
        return out
    explicit = dict(remembered.explicit) if remembered is not None else {}
    try:
        out = layerwise(explicit)
    except LayerwiseUnsupported as err:
        no_fallback(model, method, err)
        plans.remember(model, key, GramPlan("per_example", fallback=str(err)))  # remembered even if the next fails
        out = per_example()
        plans.remember(model, key, GramPlan("per_example", loop=plans.vmap_refusal(model, key), fallback=str(err)))
        return out
    loop = plans.vmap_refusal(model, key) if explicit else None
    plans.remember(model, key, GramPlan("layerwise", tuple(sorted(explicit.items())), loop=loop))
    return out


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
    model_kwargs: ModelKwargs | None = None,
    model_kwargs2: ModelKwargs | None = None,
) -> tuple[nn.Module, tuple, dict[str, Tensor], dict[str, Tensor] | None]:
    """Validate a Gram call: ``(module, engine arguments, kwargs1, kwargs2)`` with the module behind
    ``torch.compile``, the engine arguments ``(model, params, buffers, x1, y1, x2, y2, loss_fn, chunk_size,
    progress)`` and the two sets' per-example keyword inputs."""
    if method not in GRAM_METHODS:
        raise ValueError(f"`method` expected one of {GRAM_METHODS}, got {method!r}")
    check_loss_fn(loss_fn)
    check_chunk_size(chunk_size)
    check_progress(progress)
    if (inputs2 is None) != (targets2 is None):
        raise ValueError(
            "`inputs2` and `targets2` expected to be given together, got "
            f"inputs2={'None' if inputs2 is None else 'a tensor'} and "
            f"targets2={'None' if targets2 is None else 'a tensor'}"
        )
    if inputs2 is None and model_kwargs2 is not None:
        raise ValueError("`model_kwargs2` expected None when `inputs2` is None (one set), got a mapping")
    if inputs2 is not None and model_kwargs and model_kwargs2 is None:
        # A second set silently run without the first set's keyword inputs (a mask) would measure another model.
        raise ValueError(
            f"`model_kwargs2` expected the second set's keyword inputs {sorted(model_kwargs)} since `model_kwargs` "
            "and `inputs2` are given, got None"
        )
    model = unwrap_model(model)
    if has_sharded_parameters(model):
        if is_fsdp1(model):
            raise ValueError(
                "`model` expected parameters held whole by this process or sharded by FSDP2 (`fully_shard`), got "
                "FSDP1 flat parameters (`FullyShardedDataParallel`): no per-parameter tensor can be named in them"
            )
        if method == "per_example":
            raise ValueError(
                "`method='per_example'` expected a model holding its parameters whole, got one sharded by FSDP2: "
                "explicit per-example gradients need every parameter on every process (use 'auto' or 'layerwise')"
            )
    x1 = prepare_inputs(inputs, allow_integer=True)
    y1 = prepare_targets(targets, x1.shape[0])
    params, buffers = detached_state(model)
    x1 = match_model(x1, params)
    y1 = y1.to(x1.device)
    kw1 = prepare_model_kwargs(model_kwargs, x1.shape[0], params)
    x2 = y2 = kw2 = None
    if inputs2 is not None:
        x2 = prepare_inputs(inputs2, name="inputs2", allow_integer=True)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(
                f"`inputs2` expected examples of shape {tuple(x1.shape[1:])} like `inputs`, got {tuple(x2.shape[1:])}"
            )
        y2 = prepare_targets(targets2, x2.shape[0], name="targets2", inputs_name="inputs2")
        x2 = match_model(x2, params)
        y2 = y2.to(x2.device)
        kw2 = prepare_model_kwargs(model_kwargs2, x2.shape[0], params, name="model_kwargs2", inputs_name="inputs2")
    return model, (model, params, buffers, x1, y1, x2, y2, loss_fn, chunk_size, progress), kw1, kw2


def no_fallback(model: nn.Module, method: str, err: LayerwiseUnsupported) -> None:
    """Raise the ``ValueError`` for a layerwise failure that has no fallback: ``method='layerwise'`` was asked for,
    or the model is sharded (the per-example engine needs whole parameters); return when the fallback may run."""
    if method == "layerwise":
        raise ValueError(f"`method='layerwise'` cannot handle this model: {err}") from None
    if has_sharded_parameters(model):
        raise ValueError(
            "`model` is sharded (FSDP2), so only the layerwise engine can form its Gram, and it cannot handle this "
            f"model: {err}"
        ) from None
