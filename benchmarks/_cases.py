"""Models, limits and baselines of the benchmark (issue 7), each a zero-argument callable to time.

The baselines are written here independently of the package, the way a user would write them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

NUM_CLASSES = 10


def mnist_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, NUM_CLASSES)
    )


def mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES),
    )  # fmt: skip


MODELS = {"MLP 784-256-256-10": mnist_mlp, "CNN conv32-conv64-pool-fc128": mnist_cnn}


def data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


# ------------------------------------------------------------------------------------------------ limits
def forward(model: nn.Module, x: Tensor) -> Callable[[], object]:
    """One batched forward pass without autograd (the unit of limit_J)."""

    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def forward_backward(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], object]:
    """One batched forward and backward pass of the mean loss into parameter gradients (limit_G)."""
    copy_ = copy.deepcopy(model)

    def run() -> object:
        copy_.zero_grad(set_to_none=True)
        F.cross_entropy(copy_(x), y).backward()
        return None

    return run


# ------------------------------------------------------------------------------------------------ baselines
def jacobian_loop(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    """Per-example loop: ``torch.autograd.functional.jacobian`` of the softmax, one example at a time."""

    def run() -> Tensor:
        norms = []
        for x_i in x:
            jac = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).softmax(-1)[0], x_i)
            norms.append(jac.pow(2).sum().sqrt())
        return torch.stack(norms)

    return run


def gram_loop(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    """Per-example loop: ``torch.autograd.grad`` of each example's loss, then one matmul."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> Tensor:
        rows = []
        for x_i, y_i in zip(x, y):
            grads = torch.autograd.grad(F.cross_entropy(model(x_i[None]), y_i[None]), params)
            rows.append(torch.cat([g.flatten() for g in grads]))
        g = torch.stack(rows)
        return g @ g.T

    return run


def gram_vmap(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    """``vmap(grad)`` per-example gradients (torch.func), then one matmul."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, Tensor], x_i: Tensor, y_i: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x_i[None],)), y_i[None])

    def run() -> Tensor:
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
        g = torch.cat([v.flatten(1) for v in grads.values()], dim=1)
        return g @ g.T

    return run


def gram_opacus(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor] | None:
    """Opacus ``GradSampleModule`` per-example gradients, then one matmul; None when Opacus is absent."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    # Opacus records activations only in train mode; these models have no dropout or batch norm, so the two agree.
    wrapped = GradSampleModule(copy.deepcopy(model).train(), batch_first=True, loss_reduction="sum")

    def run() -> Tensor:
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y, reduction="sum").backward()
        g = torch.cat([p.grad_sample.flatten(1) for p in wrapped.parameters() if p.requires_grad], dim=1)
        return g @ g.T

    return run


def gram_backpack(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor] | None:
    """BackPACK ``BatchGrad`` per-example gradients, then one matmul; None when BackPACK is absent."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError:
        return None
    extended = extend(copy.deepcopy(model))
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))

    def run() -> Tensor:
        extended.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            loss_fn(extended(x), y).backward()
        g = torch.cat([p.grad_batch.flatten(1) for p in extended.parameters() if p.requires_grad], dim=1)
        return g @ g.T

    return run
