"""Gram matrices of per-example loss gradients, ``G[i, j] = g_i . g_j``: one dispatcher, one module per engine.

Reading a measurement top-down:

- :func:`~.call.build_gram_call` validates once into a :class:`~.call.GramCall` (model, parameters, the two example
  sets, loss, chunking, sketch, whether the parameters are sharded), which every engine receives;
- :func:`gram_and_norms` (here) enters measurement mode and picks an engine;
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
from typing import TypeVar

from torch import Tensor

from lightning_sensitivity.functional._purity import measurement_context
from lightning_sensitivity.functional.gram import plan as plans
from lightning_sensitivity.functional.gram.blocks import LossFn
from lightning_sensitivity.functional.gram.call import GRAM_METHODS, ExampleSet, GramCall, GramMethod, build_gram_call
from lightning_sensitivity.functional.gram.layerwise import layerwise_gram
from lightning_sensitivity.functional.gram.per_example import per_example_gram
from lightning_sensitivity.functional.gram.plan import GramPlan, gram_engine_plan
from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported

__all__ = ["GRAM_METHODS", "ExampleSet", "GramCall", "GramMethod", "GramPlan", "LayerwiseUnsupported", "LossFn",
           "build_gram_call", "gram_and_norms", "gram_engine_plan", "run_engines"]  # fmt: skip
T = TypeVar("T")


def gram_and_norms(call: GramCall) -> tuple[Tensor, Tensor, Tensor]:
    """``(G, |g_i|^2, |g_j|^2)`` of a :class:`~.call.GramCall` (:func:`~.call.build_gram_call`), for
    :func:`~lightning_sensitivity.functional.loss_gradient_gram` and
    :func:`~lightning_sensitivity.functional.stiffness`: puts the model in measurement mode and runs the engine
    ``call.method`` names (``"auto"``: layerwise -- per-layer factors, explicit per-example gradients for parameters
    the capture does not recognise -- falling back to per-example gradients of the whole model; see
    :func:`run_engines`). With ``call.sketch_dim=k`` the three are estimates from ``[N, k]`` sketched gradients
    (:mod:`.sketch`)."""
    with measurement_context(call.model):
        gram, sq1, sq2 = run_engines(
            call,
            lambda explicit: layerwise_gram(call, explicit=explicit),
            lambda: per_example_gram(call),
        )
    return gram.detach(), sq1.detach(), sq2.detach()


def run_engines(call: GramCall, layerwise: Callable[[dict[str, str]], T], per_example: Callable[[], T]) -> T:
    """Run the engine for ``call.method`` and record the :class:`GramPlan` under the call's structure key
    (:func:`.plan.structure_key`).

    ``layerwise(explicit)`` runs the layerwise engine with ``explicit`` (``{parameter: reason}``, parameters served
    by explicit per-example gradients; updated in place); ``per_example()`` the whole-model per-example engine.
    ``"auto"`` runs the layerwise engine unless a plan remembered for the key says it failed, and falls back to the
    per-example engine when it raises :class:`LayerwiseUnsupported` (exactness first); the failure is remembered,
    so no later measurement of the same structure repeats it.
    """
    model, method, key = call.model, call.method, call.structure_key()
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
        no_fallback(call, err)
        plans.remember(model, key, GramPlan("per_example", fallback=str(err)))  # remembered even if the next fails
        out = per_example()
        plans.remember(model, key, GramPlan("per_example", loop=plans.vmap_refusal(model, key), fallback=str(err)))
        return out
    loop = plans.vmap_refusal(model, key) if explicit else None
    plans.remember(model, key, GramPlan("layerwise", tuple(sorted(explicit.items())), loop=loop))
    return out


def no_fallback(call: GramCall, err: LayerwiseUnsupported) -> None:
    """Raise the ``ValueError`` for a layerwise failure that has no fallback: ``method='layerwise'`` was asked for,
    or the model is sharded (the per-example engine needs whole parameters); return when the fallback may run."""
    if call.method == "layerwise":
        raise ValueError(f"`method='layerwise'` cannot handle this model: {err}") from None
    if call.sharded:
        raise ValueError(
            "`model` is sharded (FSDP2), so only the layerwise engine can form its Gram, and it cannot handle this "
            f"model: {err}"
        ) from None
