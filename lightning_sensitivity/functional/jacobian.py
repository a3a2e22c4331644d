"""Input-output Jacobian norm (Novak et al. 2018, "Sensitivity and Generalization in Neural Networks").

For each example ``x_i`` the Frobenius norm ``|| d out(f(x_i)) / d x_i ||_F`` where ``out`` is the softmax (the
paper's choice), the identity (logits), the log-softmax or -- for multi-label models -- the elementwise sigmoid of
the logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, vjp, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lightning_sensitivity import keys
from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress, chunks, report
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model
from lightning_sensitivity.functional.model import check_logits

Output = Literal["softmax", "logits", "log_softmax", "sigmoid"]
Method = Literal["auto", "looped", "batched", "per_example"]
OUTPUTS = ("softmax", "logits", "log_softmax", "sigmoid")
METHODS = ("auto", "looped", "batched", "per_example")


def _transform(logits: Tensor, output: str) -> Tensor:
    if output == "softmax":
        return logits.softmax(dim=-1)
    if output == "log_softmax":
        return logits.log_softmax(dim=-1)
    if output == "sigmoid":
        return logits.sigmoid()
    return logits


def _centred_basis(num_classes: int, like: Tensor) -> Tensor:
    """``[C - 1, C]`` orthonormal rows orthogonal to the all-ones vector (Helmert contrasts)."""
    k = torch.arange(1, num_classes, dtype=torch.float64)
    basis = torch.tril(torch.ones(num_classes - 1, num_classes, dtype=torch.float64))
    basis[torch.arange(num_classes - 1), torch.arange(1, num_classes)] = -k
    basis /= torch.sqrt(k * (k + 1))[:, None]
    return basis.to(dtype=like.dtype, device=like.device)


def cotangent_rows(logits: Tensor, output: str) -> Tensor:
    """``[R, N, C]`` per-example cotangents ``M_i`` on the logits with ``M_i^T M_i = A_i^T A_i``.

    ``A_i = d out(z_i) / d z_i`` is the Jacobian of the output transform at example ``i``, so
    ``||A_i J_i||_F^2 = sum_r ||M_i[r] J_i||^2`` for the logit Jacobian ``J_i``: ``R`` reverse passes give the exact
    norm. For ``"logits"`` ``M_i = I`` (``R = C``); for ``"sigmoid"`` (elementwise, multi-label)
    ``M_i = A_i = diag(s_i (1 - s_i))`` with ``s_i`` the sigmoid of the logits (``R = C``). Softmax and
    log-softmax are invariant to adding a constant to every logit (``A_i 1 = 0``), so one direction carries
    nothing and ``R = C - 1``: with ``Q`` orthonormal rows orthogonal to ``1``, softmax (``A_i`` symmetric) takes
    ``M_i = Q A_i`` and log-softmax takes ``M_i = T_i Q`` from the QR factorisation ``A_i Q^T = O_i T_i``. One
    reverse pass in ``C`` is saved, exactly.
    """
    n, num_classes = logits.shape
    if output == "logits":
        eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
        return eye[:, None, :].expand(num_classes, n, num_classes)
    if output == "sigmoid":
        probs = logits.sigmoid()
        slope = probs * (1 - probs)  # [N, C]: d s_c / d z_c, the diagonal of A_i
        eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
        return eye[:, None, :] * slope[None, :, :]
    if num_classes == 1:  # a one-class softmax is constant: no direction moves it
        return logits.new_zeros(0, n, 1)
    basis = _centred_basis(num_classes, logits)
    probs = logits.softmax(dim=-1)
    if output == "softmax":
        jac = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
        rows = torch.einsum("rc,ncd->nrd", basis, jac)
    else:
        eye = torch.eye(num_classes, dtype=logits.dtype, device=logits.device)
        jac = eye - probs[:, None, :]  # rows: d log p_c / d z = e_c - p
        triangular = torch.linalg.qr(jac @ basis.T, mode="r").R  # [N, C - 1, C - 1]
        rows = triangular @ basis
    return rows.transpose(0, 1)


def jacobian_norm(
    model: nn.Module,
    inputs: Tensor,
    *,
    output: Output = "softmax",
    chunk_size: int | Literal["auto"] | None = None,
    method: Method = "auto",
    train_mode: bool = False,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-example Frobenius norm of the input-output Jacobian.

    Args:
        model: maps a batch ``[N, *input_shape]`` to logits ``[N, C]``. Left exactly as it was.
        inputs: ``[N, *input_shape]`` floating-point; cast to the dtype and device of the model's parameters.
            Integer inputs (token ids) are refused: embed them first and measure with respect to the embeddings.
        output: ``"softmax"`` (default, as in Novak et al. 2018), ``"logits"``, ``"log_softmax"``, or
            ``"sigmoid"`` (elementwise, for multi-label models; ``R = C`` reverse passes).
        chunk_size: examples per chunk (memory is about ``C * chunk_size * input_size`` numbers); None = one chunk;
            ``"auto"`` = sized to the model: a first chunk of :data:`AUTO_FIRST_CHUNK` examples counts the elements
            of the tensors its forward pass makes per example, ``E``, then chunks of ``ACTIVATION_BUDGET // E``
            examples (one chunk for a small MLP, ~100 CIFAR images of the reference ``SmallCNN``). On a CPU a
            chunk whose activations stay cache-sized is faster than one large pass (2.1x on that CNN, the same on
            torchvision resnet18; ``docs/performance.md``); chunking never changes which examples meet which.
        method: how the reverse passes are organised. Every method is exact. ``"looped"`` runs one batched forward pass
            and pulls ``R`` cotangents back through it one after another (``R = C`` for logits and sigmoid, ``C - 1``
            for softmax and log-softmax, see :func:`cotangent_rows`), holding one input-sized gradient at a time; when
            the input enters the model only through one narrowing ``F.linear`` the passes stop at its output and use
            ``u^T (W W^T) u``. ``"batched"`` pulls all ``R`` back at once with ``vmap`` over ``vjp`` (``R`` times the
            activation memory). Both rely on examples not interacting inside the forward pass, which holds in eval mode
            for every standard layer. ``"per_example"`` runs ``vmap(jacrev(...))`` over single examples and makes no
            such assumption. ``"auto"`` (default) picks ``"looped"``: measured on this project's benchmark
            (``benchmarks/run.py``) it was the fastest on both the MLP and the CNN, because the batching rules of
            ``vmap`` for pooling backward materialise large zero tensors.
        train_mode: evaluate the model in train mode instead of eval mode (refused for models with batch
            normalisation or dropout, whose train-mode per-example Jacobian is not defined).
        progress: optional ``progress(done, total)`` called after each chunk.
        model_kwargs: per-example keyword inputs of the model, e.g. ``{"attention_mask": mask [N, T]}``: each value
            has ``N`` entries along dimension 0, is chunked with ``inputs`` and passed as
            ``model(x[piece], **{k: v[piece]})`` (under ``method="per_example"`` each example gets its own
            ``v[i:i + 1]``). They are not differentiated.
        return_logits: also return the logits ``[N, C]`` of the forward pass the norms were pulled back through
            (detached; ``method="per_example"`` runs one extra batched forward for them), so that a caller needing
            both does not evaluate the model twice.

    Returns:
        Tensor ``[N]`` of norms, in the model's dtype, on the model's device; ``(norms, logits)`` with
        ``return_logits=True``.

    Raises:
        ValueError: for an unknown ``output``/``method``, inputs of the wrong rank, ``chunk_size < 1``, or a model
            whose output is not ``[N, C]``.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> jacobian_norm(model, torch.randn(5, 3), output="logits").shape
        torch.Size([5])
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` expected one of {OUTPUTS}, got {output!r}")
    if method not in METHODS:
        raise ValueError(f"`method` expected one of {METHODS}, got {method!r}")
    auto = check_auto_chunk_size(chunk_size)
    check_progress(progress)
    model, f, params, buffers = pure_model(model)
    x_all = match_model(prepare_inputs(inputs), params)
    kwargs = prepare_model_kwargs(model_kwargs, x_all.shape[0], params)
    if method == "per_example":  # its logits cost one more forward: only when asked for
        compute = partial(_norms_per_example, with_logits=return_logits)
    else:
        compute = {"batched": _norms_batched}.get(method, _norms_looped)
    norms, logits = [], []
    counted: list[int] = []  # chunk_size="auto": activation elements per example, once the first chunk has run
    pieces = sized_chunks(x_all.shape[0], counted) if auto else chunks(x_all.shape[0], chunk_size)  # type: ignore[arg-type]
    with measurement_context(model, train_mode=train_mode):
        for piece in pieces:
            counter = _ActivationCount(piece.stop - piece.start) if auto and not counted else None
            with counter if counter is not None else contextlib.nullcontext():
                norm, logit = compute(f, params, buffers, x_all[piece], output, take(kwargs, piece))
            if counter is not None:
                counted.append(counter.per_example())
            norms.append(norm.detach())
            if return_logits:
                logits.append(logit.detach())
            report(progress, piece.stop, x_all.shape[0])
    if return_logits:
        return torch.cat(norms), torch.cat(logits)
    return torch.cat(norms)


#: ``chunk_size="auto"``: examples of the first chunk, whose forward pass counts the activation elements ...
AUTO_FIRST_CHUNK = 32
#: ... and the activation elements (summed over the tensors a forward pass makes) of each later chunk: 2**24
#: float32 numbers, 64 MiB, e.g. ~100 CIFAR images of the reference ``SmallCNN`` or of torchvision resnet18.
ACTIVATION_BUDGET = 2**24


def check_auto_chunk_size(chunk_size: object, name: str = "chunk_size") -> bool:
    """Whether ``chunk_size`` is ``"auto"``; otherwise checks it is None or an int >= 1."""
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(f"`{name}` expected an int >= 1, None or 'auto', got {chunk_size!r}")
        return True
    check_chunk_size(chunk_size, name)  # type: ignore[arg-type]
    return False


def sized_chunks(total: int, counted: list[int]) -> Iterator[slice]:
    """``chunk_size="auto"``: :data:`AUTO_FIRST_CHUNK` examples, then ``ACTIVATION_BUDGET // E`` per chunk, where
    ``counted`` holds ``E``, the elements per example counted on the first chunk (one chunk for the rest if none
    were counted)."""
    start = 0
    while start < total:
        if not counted:
            step = AUTO_FIRST_CHUNK
        else:
            step = total if counted[0] <= 0 else max(AUTO_FIRST_CHUNK, ACTIVATION_BUDGET // counted[0])
        yield slice(start, min(start + step, total))
        start += step


class _ActivationCount(TorchFunctionMode):
    """Counts the elements of the tensors with the batch's first dimension that the functions of a forward make."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == self.batch:
            self.elements += out.numel()
        return out

    def per_example(self) -> int:
        return self.elements // max(self.batch, 1)


class _InputLayer(TorchFunctionMode):
    """Finds whether the input reaches the model only through one ``F.linear`` (after reshapes that keep the batch).

    Such a first layer ``h = W x + b`` need not be differentiated through: ``||W^T u||^2 = u^T (W W^T) u``, so the
    reverse passes stop at ``h`` and one ``W W^T`` serves every cotangent -- cheaper whenever ``h`` is narrower
    than the input (784 -> 256 on MNIST). The output is redirected through a zero leaf whose gradient is ``u``.
    """

    _VIEWS = frozenset({Tensor.flatten, Tensor.view, Tensor.reshape, torch.flatten, torch.reshape})

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.batch = x.shape[0]
        self.derived = {id(x): x}  # the input and reshapes of it (kept alive so ids stay unique)
        self.leaf: Tensor | None = None
        self.gram: Tensor | None = None  # W W^T of that first layer
        self.other_use = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        used = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor) and id(a) in self.derived]
        if not used or not any(isinstance(o, Tensor) for o in tree_flatten(out)[0]):
            return out  # queries such as .shape or .dim() carry no derivative
        if func in self._VIEWS and isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == self.batch:
            self.derived[id(out)] = out
            return out
        inp = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        first_linear = func is F.linear and self.leaf is None and len(used) == 1 and inp is used[0]
        if first_linear and inp.dim() == 2 and isinstance(weight, Tensor) and weight.shape[0] < weight.shape[1]:
            self.leaf = torch.zeros_like(out, requires_grad=True)
            # Formed now: a sharded model (FSDP) frees the gathered weight once its forward is done.
            self.gram = weight.detach() @ weight.detach().T
            return out.detach() + self.leaf
        self.other_use = True
        return out


def _norms_looped(f, params, buffers, x: Tensor, output: str, kwargs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    finder = _InputLayer(x)
    with finder:
        logits = check_logits(f(params, buffers, x, **kwargs))
    rows = cotangent_rows(logits.detach(), output)
    total = x.new_zeros(x.shape[0])
    if finder.leaf is not None and not finder.other_use:
        gram = finder.gram
        for r in range(rows.shape[0]):
            (u,) = torch.autograd.grad(logits, finder.leaf, rows[r], retain_graph=r < rows.shape[0] - 1)
            total += ((u @ gram) * u).sum(dim=1)
        return total.clamp_min(0).sqrt(), logits.detach()
    if finder.leaf is not None:  # the input is used elsewhere too: differentiate w.r.t. it the plain way
        logits = check_logits(f(params, buffers, x, **kwargs))
    for r in range(rows.shape[0]):
        (grad_x,) = torch.autograd.grad(logits, x, rows[r], retain_graph=r < rows.shape[0] - 1)
        total += grad_x.pow(2).flatten(1).sum(dim=1)
    return total.sqrt(), logits.detach()


def _norms_batched(f, params, buffers, x: Tensor, output: str, kwargs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    def logits_fn(x_: Tensor) -> Tensor:
        return check_logits(f(params, buffers, x_, **kwargs))

    logits, pullback = vjp(logits_fn, x)
    rows = cotangent_rows(logits.detach(), output)
    if rows.shape[0] == 0:
        return x.new_zeros(x.shape[0]), logits.detach()
    # Row r of the batched Jacobian: the gradient of sum_i M_i[r] . z_i w.r.t. every x_i, which is M_i[r] J_i
    # because examples do not interact.
    (grads,) = vmap(pullback)(rows)
    return grads.pow(2).flatten(2).sum(dim=(0, 2)).sqrt(), logits.detach()


def _norms_per_example(
    f, params, buffers, x: Tensor, output: str, kwargs: dict[str, Tensor], *, with_logits: bool = True
) -> tuple[Tensor, Tensor | None]:
    def single(x_i: Tensor, kwargs_i: dict[str, Tensor]) -> Tensor:
        batch_of_one = {k: v.unsqueeze(0) for k, v in kwargs_i.items()}
        return _transform(check_logits(f(params, buffers, x_i.unsqueeze(0), **batch_of_one)), output).squeeze(0)

    jac = vmap(jacrev(single))(x, kwargs)  # [n, C, *input_shape]; each example with its own keyword inputs
    logits = None
    if with_logits:
        with torch.no_grad():
            logits = check_logits(f(params, buffers, x, **kwargs))
    return jac.pow(2).flatten(1).sum(dim=1).sqrt(), logits


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
_J = keys.prefix(keys.JACOBIAN)
_CLASSES = "needs integer class targets"
#: What ``JacobianNormMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`).
QUANTITY = keys.Quantity(
    name=keys.JACOBIAN,
    monitor="JacobianNormMonitor",
    metrics=(
        *(f"{_J}/{{split}}/{stat}" for stat in keys.JACOBIAN_STATS),
        f"{_J}/train_{{held_out}}_ratio",
        *(f"{_J}/{{split}}/{name}" for name in keys.JACOBIAN_AUROCS),
        f"{_J}/{{split}}/class_{{c}}",
        f"{_J}/{{split}}/mean_stderr",  # num_projections=K: the standard error of the estimated mean norm
    ),
    conditional={
        f"{_J}/train_{{held_out}}_ratio": "needs the train probe set and a non-zero val mean norm",
        **{
            f"{_J}/{{split}}/{name}": f"{_CLASSES} and both right and wrong predictions on the probe set"
            for name in keys.JACOBIAN_AUROCS
        },
        f"{_J}/{{split}}/class_{{c}}": _CLASSES,
        f"{_J}/{{split}}/mean_stderr": "only with `num_projections=` (the estimated norm)",
    },
    arrays=(
        *(
            keys.split_array(s, n)
            for s in (keys.VAL, keys.TRAIN)
            for n in ("norms", "labels", "correct", *keys.JACOBIAN_STATS)
        ),
        *(keys.split_array(s, "stderr") for s in (keys.VAL, keys.TRAIN)),  # num_projections: per-example errors
        "train_val_ratio",
        *keys.JACOBIAN_AUROCS,
    ),
    conditional_arrays={
        **{name: "needs both right and wrong predictions" for name in keys.JACOBIAN_AUROCS},
        "train_val_ratio": "needs the train probe set and a non-zero val mean norm",
        **{keys.split_array(s, "stderr"): "only with `num_projections=`" for s in (keys.VAL, keys.TRAIN)},
    },
    histograms=(f"{_J}/{{split}}",),
    images=(f"{_J}/{{split}}/per_class",),
    category="Jacobian norm",
    charts=(
        keys.Chart("Jacobian norm: {splits} (mean)", (f"{_J}/{{split}}/mean",)),
        keys.Chart("Jacobian norm: train / held-out ratio", (f"{_J}/train_{{held_out}}_ratio",)),
        keys.Chart("Generalization gap: val loss - train loss", ("generalization_gap/loss",)),
        keys.Chart("Generalization gap: train acc - val acc", ("generalization_gap/acc",)),
        keys.Chart(
            "Jacobian norm: {held_out} mean, median, p90",
            tuple(f"{_J}/{{held_out}}/{stat}" for stat in keys.JACOBIAN_STATS),
            each=("held_out",),
        ),
        keys.Chart(
            "Jacobian norm as misclassification predictor (held-out AUROC)",
            (f"{_J}/{{held_out}}/misclassification_auroc",),
        ),
    ),
    layout_splits=(keys.TRAIN, keys.VAL, keys.TEST),
    full_options={"num_samples": 40},
    report_arrays={f"{_J}/{{split}}": "{split}_norms"},
    # its own figures draw the declared charts and the val histogram (split into right and wrong predictions)
    report_figures=("jacobian_norm",),
)
