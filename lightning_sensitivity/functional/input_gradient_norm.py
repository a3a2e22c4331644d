"""Input gradient norm of the loss: ``|| d loss(f(x_i), y_i) / d x_i ||_2`` for each example.

Where the Jacobian norm (:mod:`~lightning_sensitivity.functional.jacobian`) asks how much the outputs move with the
input, this asks how much the example's *loss* does: the first-order size of the loss change under a small input
perturbation, the quantity adversarial training and gradient regularisation (Drucker and LeCun 1992, "double
backpropagation"; Ross and Doshi-Velez 2018) penalise. It is the logit Jacobian's transpose applied to the loss
gradient in the logits, so it is at most the logit Jacobian's spectral norm times ``|| d loss / d z ||`` -- the
second factor vanishes as a point is fitted confidently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_choice, check_loss_fn
from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress, chunks, report
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    prepare_targets,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model
from lightning_sensitivity.functional.model import check_logits
from lightning_sensitivity.functional.summaries import jacobian_norm_summary

__all__ = ["input_gradient_norm", "input_gradient_norm_summary"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Method = Literal["batched", "per_example"]
#: The ways :func:`input_gradient_norm` organises the derivatives (both exact, see there).
METHODS = ("batched", "per_example")
#: The statistics of the norms the monitor logs per probe split: mean, median and 90th percentile.
NORM_STATS = ("mean", "median", "p90")


def input_gradient_norm(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    method: Method = "batched",
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    """``[N]`` Euclidean norm of each example's loss gradient with respect to its own input (eval mode).

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]``. Left exactly as it was.
        inputs: ``[N, *input_shape]`` floating-point; cast to the dtype and device of the model's parameters.
            Integer inputs (token ids) have no input gradient and are refused: embed them first and pass the
            embeddings (a monitor's ``embed_fn``).
        targets: ``[N, ...]``, whatever ``loss_fn`` expects (class indices ``[N]``, multi-hot labels, values).
        loss_fn: ``loss_fn(logits, targets)``, evaluated on each example as a batch of one: ``logits`` ``[1, C]``
            and ``targets`` ``[1, ...]``. It returns a scalar (the mean reduction, PyTorch's default) or
            per-example losses, which are summed -- for a batch of one both are the example's own loss (so a
            ``weight=`` of a mean-reduced cross-entropy cancels). Default ``F.cross_entropy``.
        method: ``"batched"`` (default): per chunk one forward pass and one backward pass of the sum of the
            examples' losses with respect to the whole input batch -- the cost of one training step. Row ``i`` of
            that gradient is example ``i``'s own gradient exactly when no output depends on another example's input,
            which holds in eval mode for every standard layer (BatchNorm uses its running statistics, dropout is
            off). ``"per_example"``: ``vmap(grad(...))`` over single examples, which makes no such assumption, for
            models that mix examples even in eval mode; slower where ``vmap``'s batching rules are (pooling).
        chunk_size: examples per forward and backward pass (memory: the activations of ``chunk_size`` examples);
            None: all at once.
        progress: optional ``progress(done, total)`` called after each chunk.
        model_kwargs: per-example keyword inputs of the model (``{"attention_mask": [N, T]}``), chunked with
            ``inputs``; not differentiated.

    Returns:
        ``[N]`` non-negative norms in the model's dtype, on the model's device.

    Raises:
        TypeError: an argument of the wrong type (integer ``inputs`` included; a loss class instead of an instance).
        ValueError: an unknown ``method``, ``chunk_size < 1``, ``targets`` not matching ``inputs``, or a model that
            does not return ``[N, C]`` logits.

    Example:
        >>> model = torch.nn.Linear(3, 4)
        >>> input_gradient_norm(model, torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])).shape
        torch.Size([5])
    """
    method = check_choice(method, "method", METHODS)
    loss_fn = check_loss_fn(loss_fn)
    check_chunk_size(chunk_size)
    check_progress(progress)
    model, f, params, buffers = pure_model(model)
    x = match_model(prepare_inputs(inputs), params)
    y = match_model(prepare_targets(targets, x.shape[0]), params)
    kwargs = prepare_model_kwargs(model_kwargs, x.shape[0], params)
    compute = _norms_batched if method == "batched" else _norms_per_example
    out = []
    with measurement_context(model, train_mode=False):
        for piece in chunks(x.shape[0], chunk_size):
            out.append(compute(f, params, buffers, x[piece], y[piece], loss_fn, take(kwargs, piece)).detach())
            report(progress, piece.stop, x.shape[0])
    return torch.cat(out)


def _example_loss(loss_fn: LossFn, logits: Tensor, target: Tensor) -> Tensor:
    """One example's loss from its logits ``[C]``: ``loss_fn`` on a batch of one, summed (any reduction)."""
    return loss_fn(logits.unsqueeze(0), target.unsqueeze(0)).sum()


def _norms_batched(f, params, buffers, x: Tensor, y: Tensor, loss_fn: LossFn, kwargs: dict[str, Tensor]) -> Tensor:
    x = x.detach().requires_grad_(True)
    logits = check_logits(f(params, buffers, x, **kwargs))
    # Per-example losses through the batch-of-one convention (vmap over the loss only: the model ran batched).
    losses = vmap(lambda z, t: _example_loss(loss_fn, z, t))(logits, y)
    (grads,) = torch.autograd.grad(losses.sum(), x)
    return torch.linalg.vector_norm(grads.flatten(1), dim=1)


def _norms_per_example(f, params, buffers, x: Tensor, y: Tensor, loss_fn: LossFn, kwargs: dict[str, Tensor]) -> Tensor:
    def single(x_i: Tensor, y_i: Tensor, kwargs_i: dict[str, Tensor]) -> Tensor:
        batch_of_one = {k: v.unsqueeze(0) for k, v in kwargs_i.items()}
        logits = check_logits(f(params, buffers, x_i.unsqueeze(0), **batch_of_one))
        return _example_loss(loss_fn, logits[0], y_i)

    grads = vmap(grad(single))(x.detach(), y, kwargs)  # [n, *input_shape]: each example with its own target
    return torch.linalg.vector_norm(grads.flatten(1), dim=1)


def input_gradient_norm_summary(
    norms: Tensor, targets: Tensor | None = None, *, num_classes: int | None = None
) -> dict[str, float | Tensor]:
    """The :data:`NORM_STATS` of ``[N]`` norms and, with class targets, their mean per class (float64).

    Args:
        norms: ``[N]`` per-example norms (from :func:`input_gradient_norm`).
        targets: ``[N]`` integer class indices; adds ``"per_class"``.
        num_classes: length of ``per_class``; default ``targets.max() + 1``.

    Returns:
        ``{"mean", "median", "p90"}`` as Python floats (``torch.quantile``, linear interpolation) and, with
        ``targets``, ``"per_class"``: a ``[num_classes]`` float64 tensor of mean norms, NaN for a class without
        examples.

    Raises:
        TypeError / ValueError: a bad argument, naming it (an empty or 2-d ``norms``, float ``targets``, a class index
            ``>= num_classes``).

    Example:
        >>> out = input_gradient_norm_summary(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]))
        >>> out["mean"], out["median"], out["per_class"].tolist()
        (2.5, 2.5, [1.5, 3.5])
    """
    return jacobian_norm_summary(norms, targets, num_classes=num_classes)


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
NAME = "input_gradient_norm"
_G = keys.prefix(NAME)
_CLASSES = "needs integer class targets"
_RATIO = "needs the train probe set and a non-zero val mean norm"
#: What ``InputGradientNormMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`).
QUANTITY = keys.Quantity(
    name=NAME,
    monitor="InputGradientNormMonitor",
    metrics=(
        *(f"{_G}/{{split}}/{stat}" for stat in NORM_STATS),
        f"{_G}/{{split}}/class_{{c}}",
        f"{_G}/train_{{held_out}}_ratio",
    ),
    conditional={f"{_G}/{{split}}/class_{{c}}": _CLASSES, f"{_G}/train_{{held_out}}_ratio": _RATIO},
    arrays=(
        *(keys.split_array(s, n) for s in (keys.VAL, keys.TRAIN) for n in ("norms", "labels", *NORM_STATS)),
        "train_val_ratio",
    ),
    conditional_arrays={"train_val_ratio": _RATIO},
    histograms=(f"{_G}/{{split}}",),
    category="Input gradient norm",
    charts=(
        keys.Chart("Input gradient norm: {splits} (mean)", (f"{_G}/{{split}}/mean",)),
        keys.Chart("Input gradient norm: train / held-out ratio", (f"{_G}/train_{{held_out}}_ratio",)),
        keys.Chart(
            "Input gradient norm: {held_out} mean, median, p90",
            tuple(f"{_G}/{{held_out}}/{stat}" for stat in NORM_STATS),
            each=("held_out",),
        ),
    ),
    report_arrays={f"{_G}/{{split}}": keys.split_array("{split}", "norms")},
    full_options={"num_samples": 40},
)
