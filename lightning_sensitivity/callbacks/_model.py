"""The module a monitor measures: the original forward of the LightningModule, through ``forward_fn``/``embed_fn``.

The wrappers are built once per LightningModule and kept (weakly), so the functional layer sees the same module at
every measurement -- its per-model caches (the layerwise Gram engine's self-check) then hit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from lightning_sensitivity.functional.model import unwrap_model

ForwardFn = Callable[..., Tensor]  # (pl_module, x, **model_kwargs) -> logits
EmbedFn = Callable[[pl.LightningModule, Tensor], Tensor]


class ForwardFnModule(nn.Module):
    """``forward_fn(module, x, **kw)`` (after ``embed_fn(module, x)`` when given) as a module, so
    ``functional_call`` still swaps the wrapped module's parameters."""

    def __init__(self, module: nn.Module, forward_fn: ForwardFn | None, embed_fn: EmbedFn | None) -> None:
        super().__init__()
        self.module = module
        self._forward_fn = forward_fn
        self._embed_fn = embed_fn

    def forward(self, x: Tensor, **model_kwargs: Any) -> Tensor:
        if self._embed_fn is not None:
            x = self._embed_fn(self.module, x)  # type: ignore[arg-type]
        if self._forward_fn is None:
            return self.module(x, **model_kwargs)
        return self._forward_fn(self.module, x, **model_kwargs)


class ModelCache:
    """One measured module per (LightningModule, forward_fn, embed_fn)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], nn.Module]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, pl_module: pl.LightningModule, forward_fn: ForwardFn | None, embed_fn: EmbedFn | None) -> nn.Module:
        # Measure the original forward, not a torch.compile'd wrapper (its graph cannot take swapped parameters).
        module = unwrap_model(pl_module)
        if forward_fn is None and embed_fn is None:
            return module
        models = self._cache.setdefault(module, {})
        key = (id(forward_fn), id(embed_fn))
        if key not in models:
            models[key] = ForwardFnModule(module, forward_fn, embed_fn)
        return models[key]
