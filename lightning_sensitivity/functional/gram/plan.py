"""Which Gram engine serves which parameters of a model, said once and remembered per model structure.

Each trainable parameter is served by the cheapest exact engine that covers its use: per-layer factors (the layerwise
engine), explicit per-example gradients of that parameter alone (a use the capture does not recognise), or, when the
layerwise engine cannot be used at all, explicit per-example gradients of the whole model. Explicit gradients come
from ``vmap(grad)``, else from a per-example autograd loop (a forward that ``vmap`` cannot batch: ``.item()``,
data-dependent control flow, masks built from the inputs).

A :class:`GramPlan` records what ran and why; it is kept per model and structure key (parameter shapes, input shape
and dtype, keyword inputs, loss), so a later measurement of the same model goes straight to the engine that worked
and never repeats a failed attempt. :func:`gram_engine_plan` returns the plan of a model's latest Gram.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from torch import Tensor, nn

from lightning_sensitivity.functional.model import unwrap_model

__all__ = ["GramPlan", "gram_engine_plan"]


@dataclass(frozen=True)
class GramPlan:
    """What formed a model's Gram.

    Attributes:
        engine: ``"layerwise"`` (per-layer factors; ``explicit`` parameters by explicit per-example gradients) or
            ``"per_example"`` (explicit per-example gradients of every parameter).
        explicit: ``((parameter, reason), ...)``: parameters the layerwise engine serves by explicit gradients.
        loop: why ``vmap`` could not batch the explicit gradients (a per-example autograd loop ran), or None.
        fallback: why the layerwise engine was not used (``engine == "per_example"``), or None.
    """

    engine: str
    explicit: tuple[tuple[str, str], ...] = ()
    loop: str | None = None
    fallback: str | None = None

    @property
    def slower(self) -> bool:
        """Whether some parameter is not served by per-layer factors."""
        return self.engine != "layerwise" or bool(self.explicit)

    def describe(self, limit: int = 8) -> str:
        """One paragraph naming the engine and, where a slower path was taken, the parameters and the reasons."""
        how = (
            f"a per-example autograd loop (vmap could not batch the forward: {self.loop})"
            if self.loop
            else "vmap(grad)"
        )
        if self.engine == "per_example":
            why = f" because the layerwise engine could not be used: {self.fallback}" if self.fallback else ""
            return f"Gram engine: explicit per-example gradients of every parameter by {how}{why}."
        if not self.explicit:
            return "Gram engine: layerwise (every trainable parameter from per-layer factors)."
        listed = "; ".join(f"{name!r} ({reason})" for name, reason in self.explicit[:limit])
        more = f"; and {len(self.explicit) - limit} more" if len(self.explicit) > limit else ""
        return (
            f"Gram engine: layerwise, with explicit per-example gradients by {how} for {len(self.explicit)} "
            f"parameter(s) the capture does not recognise: {listed}{more}. Every other parameter is from per-layer "
            "factors."
        )


def structure_key(trainable: dict[str, Tensor], x: Tensor, y: Tensor, kwargs: dict[str, Tensor], loss_fn) -> tuple:
    """What decides the engine for a model beside its code: parameter shapes, inputs, keyword inputs, loss."""
    shapes = tuple((k, tuple(v.shape)) for k, v in trainable.items())
    # Keyword inputs and targets can steer the forward pass and the loss (a mask, another kind of label).
    extra = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(kwargs.items()))
    return (shapes, tuple(x.shape[1:]), x.dtype, x.device, tuple(y.shape[1:]), y.dtype, extra, id(loss_fn))


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, GramPlan]] = weakref.WeakKeyDictionary()
_LATEST: weakref.WeakKeyDictionary[nn.Module, GramPlan] = weakref.WeakKeyDictionary()
# Models (and structure keys) whose forward vmap could not batch, with the reason: explicit gradients then go
# straight to the per-example loop.
_NO_VMAP: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()


def remembered(model: nn.Module, key: tuple) -> GramPlan | None:
    return _PLANS.get(model, {}).get(key)


def remember(model: nn.Module, key: tuple, plan: GramPlan) -> GramPlan:
    _PLANS.setdefault(model, {})[key] = plan
    _LATEST[model] = plan
    return plan


def vmap_refusal(model: nn.Module, key: tuple) -> str | None:
    return _NO_VMAP.get(model, {}).get(key)


def refuse_vmap(model: nn.Module, key: tuple, reason: str) -> None:
    _NO_VMAP.setdefault(model, {})[key] = reason


def gram_engine_plan(model: nn.Module) -> GramPlan | None:
    """The :class:`GramPlan` of the latest loss-gradient Gram formed for ``model`` (any function of this package
    that forms one: ``loss_gradient_gram``, ``stiffness``, ``per_layer_gram``), or None before the first.

    Example:
        >>> import torch
        >>> from lightning_sensitivity.functional import loss_gradient_gram
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> _ = loss_gradient_gram(model, torch.randn(5, 4), torch.randint(0, 3, (5,)))
        >>> gram_engine_plan(model).engine
        'layerwise'
    """
    return _LATEST.get(unwrap_model(model))
