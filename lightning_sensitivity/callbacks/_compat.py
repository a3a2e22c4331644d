"""Setups a monitor cannot measure correctly, detected up front, and the eager escape from ``torch.compile``."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
import torch

# Strategies that shard or flatten the parameters: one rank cannot evaluate the whole model by `functional_call`.
# Matched by class name along the MRO, so subclasses count and the optional packages are never imported.
UNSUPPORTED_STRATEGIES = ("FSDPStrategy", "XLAFSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def unsupported_strategy(strategy: Any) -> str | None:
    """The name of the unsupported strategy class ``strategy`` is (or derives from), else None."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return next((name for name in UNSUPPORTED_STRATEGIES if name in names), None)


def unreachable_parameters(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """How many tensors the optimizers train that are not parameters of ``pl_module`` (invisible to functional_call)."""
    registered = {id(p) for p in pl_module.parameters()}
    trained = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
    return len(trained - registered)


def eager() -> contextlib.AbstractContextManager[Any]:
    """Run ``torch.compile``'d submodules eagerly: their compiled graphs cannot be differentiated through
    ``torch.func`` with swapped parameters, and the original forward is what should be measured."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
