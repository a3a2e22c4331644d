"""Setups a monitor cannot measure correctly, detected up front, and the eager escape from ``torch.compile``."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
import torch

# Strategies whose model no rank can evaluate on its own (DeepSpeed's ZeRO partitions and flattens the parameters
# behind its own engine; XLA's FSDP wraps them for XLA devices). Matched by class name along the MRO, so subclasses
# count and the optional packages are never imported.
UNSUPPORTED_STRATEGIES = ("XLAFSDPStrategy", "DeepSpeedStrategy")
# Strategies that shard the parameters across ranks (FSDP1, FSDP2 / tensor parallel through `ModelParallelStrategy`):
# the model is still callable on every rank -- its wrappers gather the parameters -- so every quantity is measured
# through it (loss-gradient Grams only under FSDP2, by the layerwise engine).
SHARDING_STRATEGIES = ("FSDPStrategy", "ModelParallelStrategy")


def _first_match(strategy: Any, names: tuple[str, ...]) -> str | None:
    found = {cls.__name__ for cls in type(strategy).__mro__}
    return next((name for name in names if name in found), None)


def unsupported_strategy(strategy: Any) -> str | None:
    """The name of the unsupported strategy class ``strategy`` is (or derives from), else None."""
    return _first_match(strategy, UNSUPPORTED_STRATEGIES)


def sharding_strategy(strategy: Any) -> str | None:
    """The name of the parameter-sharding strategy class ``strategy`` is (or derives from), else None."""
    return _first_match(strategy, SHARDING_STRATEGIES)


def fsdp_root(trainer: Any, pl_module: Any) -> Any:
    """The ``FullyShardedDataParallel`` wrapper Lightning's ``FSDPStrategy`` put around ``pl_module``, else None.

    Its forward gathers the parameters and calls ``pl_module.forward``; calling ``pl_module`` itself would bypass it
    and see only this rank's flat shard.
    """
    model = getattr(getattr(trainer, "strategy", None), "model", None)
    if type(model).__name__ == "FullyShardedDataParallel" and getattr(model, "module", None) is pl_module:
        return model
    return None


@contextlib.contextmanager
def outer_groups_gathered(pl_module: Any, measured: torch.nn.Module):
    """Gather the parameters of the outermost FSDP2 modules of ``pl_module`` (``unshard``) inside the block: at its
    start and again before every forward of ``measured``, the module the measurement calls.

    FSDP2 gathers a module's parameters when its ``forward`` is called. A ``forward_fn``/``embed_fn`` calls other
    methods or submodules (``m.model.embed(ids)``), which would meet the bare shards of the outermost group (the
    embeddings, the head); nested FSDP modules still gather their own when their forward runs. FSDP reshards every
    group at the end of each backward, hence the gather before each forward (a no-op when still gathered).
    ``unshard`` is a collective: every rank enters the block and runs the forwards at the same points. Nothing is
    done without FSDP2 modules.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        yield
        return
    prefixes = [name for name, m in pl_module.named_modules() if isinstance(m, FSDPModule)]
    outer = [
        m
        for name, m in pl_module.named_modules()
        if isinstance(m, FSDPModule) and not any(p != name and (p == "" or name.startswith(p + ".")) for p in prefixes)
    ]

    def gather(*_: Any) -> None:
        for module in outer:
            module.unshard()

    gather()
    handle = measured.register_forward_pre_hook(gather, prepend=True) if outer else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for module in outer:
            module.reshard()


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
