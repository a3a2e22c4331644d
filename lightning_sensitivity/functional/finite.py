"""Which examples of a batch are non-finite: in their inputs, their targets, or the model's outputs on them.

A NaN or infinite input reaches every quantity computed from it (a Jacobian, a Gram entry, an activation pattern
compared with ``>``), usually as NaN, sometimes as a finite but wrong number; a measurement leaves such examples out
and names them instead (see :func:`nonfinite_examples`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_sensitivity.functional._chunks import check_chunk_size, chunks
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    take,
)
from lightning_sensitivity.functional._purity import measurement_context, pure_model

__all__ = ["NonFinite", "nonfinite_examples"]


@dataclass(frozen=True)
class NonFinite:
    """Per-example masks ``[N]`` (bool, on the CPU): which examples hold a NaN or an infinity where.

    Attributes:
        inputs: in the input tensor (or a floating-point keyword input).
        targets: in floating-point targets (regression values, soft labels).
        outputs: in the model's output on an example whose inputs are finite.
    """

    inputs: Tensor
    targets: Tensor
    outputs: Tensor

    @property
    def any(self) -> Tensor:
        """Examples that are non-finite anywhere."""
        return self.inputs | self.targets | self.outputs


def _per_example(t: Tensor) -> Tensor:
    """``[N]``: whether row ``i`` of ``t`` holds a non-finite value (integer and bool tensors never do)."""
    if not (t.is_floating_point() or t.is_complex()):
        return torch.zeros(t.shape[0], dtype=torch.bool)
    return (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).cpu()


def nonfinite_examples(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    chunk_size: int | None = None,
    *,
    model_kwargs: ModelKwargs | None = None,
) -> NonFinite:
    """Which of ``inputs`` ``[N, ...]`` are non-finite in their inputs, targets or the model's outputs.

    The outputs are evaluated like every measurement evaluates the model (eval mode, no grad, the model left as it
    was) on the examples with finite inputs only; any tensor output ``[N, ...]`` is checked (logits, a regression
    value), other outputs are not (the measurement then reports what it cannot use).

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [2.0, 3.0]])
        >>> found = nonfinite_examples(torch.nn.Linear(2, 1), x, targets=torch.tensor([1.0, 0.0, float("inf")]))
        >>> found.inputs.tolist(), found.targets.tolist(), found.any.tolist()
        ([False, True, False], [False, False, True], [False, True, True])
    """
    check_chunk_size(chunk_size)
    x = prepare_inputs(inputs, allow_integer=True, min_dim=1)
    bad_inputs = _per_example(x)
    kwargs_given = model_kwargs or {}
    for value in kwargs_given.values():
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == x.shape[0]:
            bad_inputs |= _per_example(value)
    bad_targets = torch.zeros_like(bad_inputs)
    if targets is not None and isinstance(targets, Tensor) and targets.dim() >= 1:
        bad_targets = _per_example(targets)
    bad_outputs = torch.zeros_like(bad_inputs)
    finite = (~bad_inputs).nonzero().flatten()
    if len(finite):
        model, f, params, buffers = pure_model(model)
        xs = match_model(x[finite.to(x.device)], params)
        kwargs = prepare_model_kwargs({k: v[finite.to(v.device)] for k, v in kwargs_given.items()}, len(xs), params)
        rows = []
        with measurement_context(model, grad=False):
            for piece in chunks(len(xs), chunk_size):
                out = f(params, buffers, xs[piece], **take(kwargs, piece))
                if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != len(xs[piece]):
                    rows = []
                    break
                rows.append(_per_example(out.detach()))
        if rows:
            bad_outputs[finite] = torch.cat(rows)
    return NonFinite(inputs=bad_inputs, targets=bad_targets, outputs=bad_outputs)
