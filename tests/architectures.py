"""Small models of the kinds researchers bring, with the structures that break naive parameter swapping.

Each factory returns a module mapping ``[N, 1, 8, 8]`` to logits ``[N, 4]``:

- ``aliased_head``: one submodule registered under two names (``self.head = self.net[2]``);
- ``wrapper_frozen_backbone``: ``self.net = nn.Sequential(self.backbone, self.head)`` with the backbone frozen, so
  every parameter has two paths and only some are trainable;
- ``tied_weights``: two layers sharing one weight tensor (``b.weight = a.weight``, as GPT ties its embedding and head);
- ``compiled_submodule``: a ``torch.compile``'d submodule (``OptimizedModule`` wrapper, ``aot_eager`` backend);
- ``shared_block``: one block applied twice in the forward pass (weight sharing across depth).
"""

from __future__ import annotations

import torch
from torch import nn

IN_SHAPE = (1, 8, 8)
NUM_CLASSES = 4


class AliasedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
        self.head = self.net[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WrapperFrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
        self.net = nn.Sequential(self.backbone, self.head)
        self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TiedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.out = nn.Linear(16, NUM_CLASSES)
        self.act = nn.ReLU()  # one module, called three times: the oracle's hooks see every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x.flatten(1)))
        h = self.act(self.a(h))
        return self.out(self.act(self.b(h)))


class CompiledSubmodule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.compile(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()), backend="aot_eager")
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.out = nn.Linear(16, NUM_CLASSES)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x.flatten(1)))
        return self.out(self.block(self.block(h)))


ARCHITECTURES = {
    "aliased_head": AliasedHead,
    "wrapper_frozen_backbone": WrapperFrozenBackbone,
    "tied_weights": TiedWeights,
    "compiled_submodule": CompiledSubmodule,
    "shared_block": SharedBlock,
}


def parameter_identity(model: nn.Module) -> list[tuple[str, int, type, bool]]:
    """Every (path, object id, type, requires_grad) of every parameter slot, aliases included."""
    return [
        (name, id(p), type(p), p.requires_grad) for name, p in model.named_parameters(remove_duplicate=False)
    ]
