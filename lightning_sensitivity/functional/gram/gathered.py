"""The gathered parameters of a model sharded by FSDP2 (``fully_shard``), named while it runs.

Between forwards such a model holds each parameter as a ``DTensor`` shard; for each forward its FSDP hooks gather
the whole tensor and put it in the module's parameter slot, then free it again. The layerwise Gram engine needs to
recognise those whole tensors when an op receives one. :class:`GatheredParameters` registers a forward pre-hook on
every module (run after FSDP's own, which is prepended): when a module is entered it records, for the trainable
slots of the module and of its descendants, which tensor each holds now and under which canonical name. Nothing is
swapped in or copied, so the forwards, the gathers (collectives) and the parameters' ``.grad`` are FSDP's own.

The activations and output gradients the layerwise engine builds its Gram from do not depend on how the parameters
are sharded, so the Gram of a sharded model equals that of the same weights held whole.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_sensitivity.functional._purity import state_slots
from lightning_sensitivity.functional._sharding import is_dtensor
from lightning_sensitivity.functional.gram.recognised_ops import LayerwiseUnsupported

__all__ = ["GatheredParameters"]


class GatheredParameters:
    """Context manager naming the whole parameter tensors a sharded ``model`` uses during forwards run inside it.

    Attributes:
        names: ``{id(tensor): canonical name}`` of the gathered trainable tensors seen so far; pass it to the
            layerwise capture so it recognises them.
        tensors: ``{canonical name: tensor}``, the same tensors (for explicit gradients with respect to them).

    Raises (from inside the forward):
        LayerwiseUnsupported: a module runs its forward with a trainable parameter still a ``DTensor`` (tensor
            parallelism, or a parameter FSDP did not gather): its per-example gradients cannot be formed here.
    """

    def __init__(self, model: nn.Module, trainable: set[str]) -> None:
        self.names: dict[int, str] = {}
        self.tensors: dict[str, Tensor] = {}
        slots = state_slots(model)  # slot path -> canonical name
        self._entries: dict[nn.Module, tuple[list[tuple[nn.Module, str, str]], list[tuple[str, str]]]] = {}
        for prefix, module in model.named_modules():
            below, own = [], []
            for sub_prefix, sub in module.named_modules(prefix=prefix):
                for attr in sub._parameters:
                    name = slots.get(f"{sub_prefix}.{attr}" if sub_prefix else attr)
                    if name in trainable:
                        below.append((sub, attr, name))
                        if sub is module:
                            own.append((attr, name))
            if below:
                self._entries[module] = (below, own)
        self._handles: list = []

    def _hook(self, module: nn.Module, args: object) -> None:
        below, own = self._entries[module]
        for attr, name in own:
            if is_dtensor(module._parameters.get(attr)):
                raise LayerwiseUnsupported(
                    f"trainable parameter {name!r} is a DTensor shard during its module's forward: FSDP gathers a "
                    "group's parameters when the group's own module is called (not when a submodule or another "
                    "method is called directly -- `unshard()` that module first), and tensor parallelism never does"
                )
        for owner, attr, name in below:
            t = owner._parameters.get(attr)
            if t is not None and not is_dtensor(t):  # a descendant FSDP has not gathered yet stays a shard
                self.names[id(t)] = name
                self.tensors[name] = t

    def __enter__(self) -> GatheredParameters:
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self._entries]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
