"""Sharding detection: whether a model's parameters are split across processes (FSDP1, FSDP2, DTensor).

A sharded model is called as it is (its wrappers gather the parameters for each forward) and measured in its own
dtype; see :func:`lightning_sensitivity.functional._purity.as_function`.
"""

from __future__ import annotations

from torch import nn


def has_sharded_parameters(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters sharded across processes: modules sharded by ``fully_shard`` (FSDP2) or
    wrapped in ``FullyShardedDataParallel`` (FSDP1), ``DTensor`` parameters (tensor parallel), FSDP1's flat
    parameters.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support shards nothing
        return False
    # A root FSDP2 module keeps its parameters gathered between forwards: its class says it is sharded.
    if is_fsdp1(model) or any(isinstance(m, FSDPModule) for m in model.modules()):
        return True
    return any(is_dtensor(p) for p in model.parameters())


def is_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` is (or contains) FSDP1's ``FullyShardedDataParallel`` or holds its flat parameters, whose
    per-parameter tensors are views into one flat buffer (recognised by class name: nothing is imported)."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return True
    return any(type(p).__name__ == "FlatParameter" for p in model.parameters())


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 shard, or a tensor-parallel parameter)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(t, DTensor)
