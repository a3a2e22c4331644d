"""Validation and preparation of a measurement's arguments: inputs, targets, per-example keyword inputs.

Each is checked with an error naming the argument and the value, made a normal (non-inference) tensor and placed
like the model (:func:`match_model`). ``check_loss_fn`` is re-exported for the quantities that take a loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_sensitivity._checks import check_loss_fn, check_model_kwargs

__all__ = [
    "ModelKwargs",
    "check_loss_fn",
    "match_model",
    "prepare_inputs",
    "prepare_targets",
    "prepare_model_kwargs",
    "take",
]

ModelKwargs = Mapping[str, Tensor]


def match_model(x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Move a batch to the device of the model's first floating-point parameter and, if the batch is floating-point,
    cast it to that parameter's dtype. Integer and bool batches (token ids, masks) keep their dtype."""
    for p in params.values():
        if p.is_floating_point():
            # Outside inference mode: a cast made under it would be an inference tensor autograd cannot use.
            with torch.inference_mode(False):
                return x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
    return x


def prepare_inputs(inputs: Tensor, name: str = "inputs", min_dim: int = 2, allow_integer: bool = False) -> Tensor:
    """Validate a batch ``[N, *input_shape]`` and make it a normal (non-inference) tensor.

    Floating-point inputs are required unless ``allow_integer`` (quantities that never differentiate with respect to
    the inputs, such as the loss-gradient Gram or predictions, take token ids ``[N, T]`` directly).
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`{name}` expected a torch.Tensor of shape [N, *input_shape], got {type(inputs).__name__}")
    if inputs.dim() < min_dim:
        raise ValueError(
            f"`{name}` expected a tensor with at least {min_dim} dimensions ([N, *input_shape]), "
            f"got shape {tuple(inputs.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"`{name}` expected at least one example, got shape {tuple(inputs.shape)}")
    integer = not inputs.is_floating_point() and not inputs.is_complex() and inputs.dtype != torch.bool
    if not inputs.is_floating_point() and not (allow_integer and integer):
        hint = (
            ""
            if allow_integer or not integer
            else (
                "; integer inputs (e.g. token ids) have no derivative and no path between them -- embed them first and "
                "pass the embeddings (the callbacks take an `embed_fn`)"
            )
        )
        kind = "a floating-point or integer tensor" if allow_integer else "a floating-point tensor"
        raise TypeError(f"`{name}` expected {kind}, got dtype {inputs.dtype}{hint}")
    # A clone made outside inference mode is a normal tensor autograd can save; cheap next to any measurement.
    with torch.inference_mode(False):
        return inputs.clone() if inputs.is_inference() else inputs


def prepare_targets(targets: Tensor, num: int, name: str = "targets", inputs_name: str = "inputs") -> Tensor:
    """Validate targets ``[N, ...]`` of any dtype (class indices, multi-hot labels, regression values) matching
    ``num`` examples; the loss function decides what they mean."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"`{name}` expected a torch.Tensor of shape [N, ...], got {type(targets).__name__}")
    if targets.dim() < 1:
        raise ValueError(f"`{name}` expected a tensor of shape [N, ...], got a 0-dim tensor")
    if targets.shape[0] != num:
        raise ValueError(
            f"`{name}` expected {num} entries along dimension 0 to match `{inputs_name}`, got {targets.shape[0]} "
            f"(shape {tuple(targets.shape)})"
        )
    with torch.inference_mode(False):
        return targets.clone() if targets.is_inference() else targets


def prepare_model_kwargs(
    model_kwargs: ModelKwargs | None,
    num: int,
    params: dict[str, Tensor],
    name: str = "model_kwargs",
    inputs_name: str = "inputs",
) -> dict[str, Tensor]:
    """Validate per-example keyword inputs of the model (``{"attention_mask": [N, T]}``) and place them like the model.

    Every value is a tensor whose dimension 0 runs over the ``num`` examples of ``inputs_name``; it is sliced with
    the inputs and passed as ``model(x[piece], **{k: v[piece]})``. Floating-point values are cast to the model's
    dtype (like the inputs), others keep theirs; all are moved to the model's device.
    """
    out: dict[str, Tensor] = {}
    for key, value in check_model_kwargs(model_kwargs, num, name, inputs_name).items():
        with torch.inference_mode(False):
            value = value.clone() if value.is_inference() else value
        out[key] = match_model(value.detach(), params)
    return out


def take(kwargs: dict[str, Tensor], piece: slice | Tensor) -> dict[str, Tensor]:
    """The per-example keyword inputs of the examples ``piece``."""
    return {k: v[piece] for k, v in kwargs.items()}
