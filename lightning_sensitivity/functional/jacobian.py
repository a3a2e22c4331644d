"""Input-output Jacobian norm (Novak et al. 2018, "Sensitivity and Generalization in Neural Networks").

For each example ``x_i`` the Frobenius norm ``|| d out(f(x_i)) / d x_i ||_F`` where ``out`` is the softmax (the
paper's choice), the identity (logits) or the log-softmax of the logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import jacrev, vjp, vmap

from lightning_sensitivity.functional._model import (
    Progress,
    as_function,
    check_chunk_size,
    check_logits,
    check_progress,
    chunks,
    detached_state,
    match_model,
    measurement_context,
    prepare_inputs,
    report,
    unwrap_model,
)

Output = Literal["softmax", "logits", "log_softmax"]
Method = Literal["auto", "batched", "per_example"]
OUTPUTS = ("softmax", "logits", "log_softmax")
METHODS = ("auto", "batched", "per_example")


def _transform(logits: Tensor, output: str) -> Tensor:
    if output == "softmax":
        return logits.softmax(dim=-1)
    if output == "log_softmax":
        return logits.log_softmax(dim=-1)
    return logits


def jacobian_norm(
    model: nn.Module,
    inputs: Tensor,
    *,
    output: Output = "softmax",
    chunk_size: int | None = None,
    method: Method = "auto",
    train_mode: bool = False,
    progress: Progress | None = None,
) -> Tensor:
    """Per-example Frobenius norm of the input-output Jacobian.

    Args:
        model: maps a batch ``[N, *input_shape]`` to logits ``[N, C]``. Left exactly as it was.
        inputs: ``[N, *input_shape]``; cast to the dtype and device of the model's parameters.
        output: ``"softmax"`` (default, as in Novak et al. 2018), ``"logits"`` or ``"log_softmax"``.
        chunk_size: examples per chunk (memory is about ``C * chunk_size * input_size`` numbers); None = one chunk.
        method: ``"batched"`` pulls all ``C`` one-hot cotangents back through one batched forward pass with
            ``vmap`` over ``vjp`` -- the cost limit of ``1 + C`` forward-sized passes. It relies on examples not
            interacting inside the forward pass, which holds in eval mode for every standard layer.
            ``"per_example"`` runs ``vmap(jacrev(...))`` over single examples and makes no such assumption.
            ``"auto"`` (default) picks ``"batched"``.
        train_mode: evaluate the model in train mode instead of eval mode (refused for models with batch
            normalisation or dropout, whose train-mode per-example Jacobian is not defined).
        progress: optional ``progress(done, total)`` called after each chunk.

    Returns:
        Tensor ``[N]`` of norms, in the model's dtype, on the model's device.

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
    check_chunk_size(chunk_size)
    check_progress(progress)
    model = unwrap_model(model)
    x_all = prepare_inputs(inputs)
    params, buffers = detached_state(model)
    x_all = match_model(x_all, params)
    f = as_function(model)
    compute = _norms_per_example if method == "per_example" else _norms_batched
    results = []
    with measurement_context(model, train_mode=train_mode):
        for piece in chunks(x_all.shape[0], chunk_size):
            results.append(compute(f, params, buffers, x_all[piece], output).detach())
            report(progress, piece.stop, x_all.shape[0])
    return torch.cat(results)


def _norms_batched(f, params, buffers, x: Tensor, output: str) -> Tensor:
    def out_fn(x_: Tensor) -> Tensor:
        return _transform(check_logits(f(params, buffers, x_)), output)

    out, pullback = vjp(out_fn, x)
    n, num_classes = out.shape
    eye = torch.eye(num_classes, dtype=out.dtype, device=out.device)
    # Row c of the batched Jacobian: the gradient of sum_i out_i[c] w.r.t. every x_i, which is d out_i[c] / d x_i
    # because examples do not interact.
    (rows,) = vmap(pullback)(eye[:, None, :].expand(num_classes, n, num_classes))
    return rows.pow(2).flatten(2).sum(dim=(0, 2)).sqrt()


def _norms_per_example(f, params, buffers, x: Tensor, output: str) -> Tensor:
    def single(x_i: Tensor) -> Tensor:
        return _transform(check_logits(f(params, buffers, x_i.unsqueeze(0))), output).squeeze(0)

    jac = vmap(jacrev(single))(x)  # [n, C, *input_shape]
    return jac.pow(2).flatten(1).sum(dim=1).sqrt()
