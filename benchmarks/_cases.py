"""Models, limits and baselines of the benchmark (issue 7), each a zero-argument callable to time.

The baselines are written here independently of the package, the way a user would write them.
"""

from __future__ import annotations

import copy
import warnings
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
        for x_i, y_i in zip(x, y, strict=True):
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


class Refused(Exception):
    """A peer declines a model (or cannot be compared on it); the message is the reason, in the peer's words."""


def reason(error: BaseException, limit: int = 200) -> str:
    """A one-line reason from a peer's exception (Opacus raises one error holding a list of errors)."""
    if isinstance(error, Refused):
        return str(error)
    first = error.args[0] if error.args else ""
    if isinstance(first, list) and first:
        more = f" (+{len(first) - 1} more)" if len(first) > 1 else ""
        return reason(first[0], limit) + more
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _gram(blocks: list[Tensor]) -> Tensor:
    """``sum_p g_p g_p^T`` over per-example gradient blocks ``[N, ...]``: the Gram, without concatenating them."""
    flat = [b.flatten(1) for b in blocks]
    g = flat[0] @ flat[0].T
    for f in flat[1:]:
        g = g.addmm(f, f.T)
    return g


def _same_function(model: nn.Module, other: nn.Module, x: Tensor) -> float:
    """Largest logit difference between ``model`` and ``other`` on ``x``, relative to the largest logit."""
    with torch.no_grad():
        a, b = model(x), other(x)
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def gram_opacus(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor] | None:
    """Opacus ``GradSampleModule`` per-example gradients, then the Gram; None when Opacus is absent.

    Raises :class:`Refused` when Opacus declines the model, or when the model computes a different function in
    train mode (dropout, batch statistics): Opacus records activations only in train mode, so its gradients would
    be those of another function than ``model``'s (in eval mode, where the package and the other peers measure).
    """
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    train = copy.deepcopy(model).train()
    try:
        wrapped = GradSampleModule(train, batch_first=True, loss_reduction="sum")
    except (NotImplementedError, ValueError, TypeError) as error:
        raise Refused(reason(error)) from error
    differs = _same_function(model, copy.deepcopy(model).train(), x)
    if differs > 1e-4:
        raise Refused(
            f"records per-example gradients only in train mode, where this model computes another function "
            f"(dropout or batch statistics: logits differ by {differs:.2g} of their largest)"
        )

    def run() -> Tensor:
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y, reduction="sum").backward()
        params = [p for p in wrapped.parameters() if p.requires_grad]
        missing = [p for p in params if getattr(p, "grad_sample", None) is None]
        if missing:
            raise Refused(f"no grad_sample for {len(missing)} of {len(params)} parameters")
        return _gram([p.grad_sample for p in params])

    return run


def gram_backpack(model: nn.Module, x: Tensor, y: Tensor, use_converter: bool = False) -> Callable[[], Tensor] | None:
    """BackPACK ``BatchGrad`` per-example gradients, then the Gram; None when BackPACK is absent.

    ``use_converter``: BackPACK's ``torch.fx`` converter, which rewrites functional operations (residual ``+``,
    ``flatten``) into modules BackPACK extends. Raises :class:`Refused` when BackPACK declines the model or leaves
    parameters without per-example gradients (modules it has no extension for), naming those modules.
    """
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError:
        return None
    try:
        extended = extend(copy.deepcopy(model), use_converter=use_converter)
    except Exception as error:  # the converter fails in many ways (torch.fx tracing, its own assertions)
        raise Refused(reason(error)) from error
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    owners = {id(p): type(m).__name__ for m in extended.modules() for p in m.parameters(recurse=False)}

    def run() -> Tensor:
        extended.zero_grad(set_to_none=True)
        with backpack(BatchGrad()):
            loss_fn(extended(x), y).backward()
        params = [p for p in extended.parameters() if p.requires_grad]
        missing = [p for p in params if getattr(p, "grad_batch", None) is None]
        if missing:
            kinds = sorted({owners[id(p)] for p in missing})
            raise Refused(f"no BatchGrad for {len(missing)} of {len(params)} parameters (in {', '.join(kinds)})")
        return _gram([p.grad_batch for p in params])

    return run


OPACUS, BACKPACK = "Opacus GradSampleModule + matmul", "BackPACK BatchGrad + matmul"
BACKPACK_CONVERTED = "BackPACK BatchGrad (use_converter=True) + matmul"
PEER_MEMORY_BYTES = 4 * 2**30  # per-example gradients a peer may hold on the CPU (on CUDA: half the free memory)


def peer_baselines(
    model: nn.Module, x: Tensor, y: Tensor, reference: Callable[[], Tensor]
) -> tuple[dict[str, Callable[[], Tensor]], dict[str, str]]:
    """The installed peers (Opacus, BackPACK) that run on ``model``, and a reason for each one that does not.

    Each peer is set up and called once here: one that refuses the model, at setup or on its first call, is
    recorded with its reason instead of timed, and so is one whose Gram differs from ``reference()`` (the
    package's) by more than 1e-2 of its largest entry -- a different function, not rounding (in float32 the
    package's ``vmap(grad)`` engine differs from a float64 Gram by ~6e-4 of it on resnet18). The peers' warnings
    during this setup are silenced (a refusal's reason is recorded). BackPACK is tried as is, then with its
    converter. A peer that accepts the model but whose ``N x P`` per-example gradients would not fit the memory
    budget is not run (recorded as such). Returns ``(fns, refused)``, both keyed by the peer's label.
    """
    from importlib.util import find_spec

    from _timing import full_float32

    installed = [label for label, module in ((OPACUS, "opacus"), (BACKPACK, "backpack")) if find_spec(module)]
    n, num_params = len(x), sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = n * num_params * next(model.parameters()).element_size()
    budget = torch.cuda.mem_get_info(x.device)[0] // 2 if x.device.type == "cuda" else PEER_MEMORY_BYTES
    over_budget = (f"not run: N x P = {n} x {num_params} per-example gradients need {need / 2**30:.1f} GiB "
                   f"(> {budget / 2**30:.1f} GiB budget)")  # fmt: skip
    expected: list[Tensor] = []

    def attempt(make: Callable[[], Callable[[], Tensor] | None]) -> tuple[Callable[[], Tensor] | None, str]:
        try:
            with warnings.catch_warnings(), full_float32():  # TF32 would blur the comparisons
                warnings.simplefilter("ignore")
                fn = make()
                if fn is None:
                    raise Refused("not installed")
                if need > budget:  # after the setup: a peer that declines the model says so first
                    raise Refused(over_budget)
                gram = fn()
                if not expected:
                    expected.append(reference())
            error = ((gram - expected[0]).abs().max() / expected[0].abs().max()).item()
            if error > 1e-2:
                raise Refused(f"wrong Gram: differs from loss_gradient_gram by {error:.2g} of its largest entry")
        except Exception as error:  # a refusal at setup or on the first call, in the peer's own words
            return None, reason(error)
        return fn, ""

    fns: dict[str, Callable[[], Tensor]] = {}
    refused: dict[str, str] = {}
    if OPACUS in installed:
        fn, why = attempt(lambda: gram_opacus(model, x, y))
        if fn is not None:
            fns[OPACUS] = fn
        else:
            refused[OPACUS] = why
    if BACKPACK in installed:
        fn, why = attempt(lambda: gram_backpack(model, x, y))
        if fn is not None:
            fns[BACKPACK] = fn
        else:
            fn, converted = (None, "") if why == over_budget else attempt(lambda: gram_backpack(model, x, y, True))
            if fn is not None:
                fns[BACKPACK_CONVERTED] = fn
            else:
                refused[BACKPACK] = f"{why}; with use_converter=True: {converted}" if converted else why
    return fns, refused
