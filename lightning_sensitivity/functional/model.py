"""How the functional layer reads a model: which module, in which dtype, which part of its output.

The public home of the options every functional entry point honours (:func:`measurement_options`), the argument
checks the monitors reuse for them (:func:`check_measure_dtype`, :func:`check_output_key`), the module behind
``torch.compile`` (:func:`unwrap_model`) and the logits in a model's output (:func:`model_output`,
:func:`check_logits`). Lightning-free; the callbacks import these names from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MeasurementOptions",
    "measurement_options",
    "current_options",
    "check_measure_dtype",
    "check_output_key",
    "unwrap_model",
    "model_output",
    "check_logits",
]


@dataclass(frozen=True)
class MeasurementOptions:
    """How every functional entry point reads a model (see :func:`measurement_options`)."""

    measure_dtype: torch.dtype | None = torch.float32
    output_key: str | int | None = None


_DEFAULT_OPTIONS = MeasurementOptions()
_OPTIONS: ContextVar[MeasurementOptions | None] = ContextVar("measurement_options", default=None)


@contextlib.contextmanager
def measurement_options(
    *, measure_dtype: torch.dtype | None = torch.float32, output_key: str | int | None = None
) -> Iterator[MeasurementOptions]:
    """Set how the functional layer reads models for the measurements made inside the ``with`` block.

    Args:
        measure_dtype: the least precise floating-point dtype a measurement runs in. Parameters, buffers and
            floating-point inputs of a less precise dtype (``bfloat16``, ``float16``: a ``precision="bf16-true"``
            model) are measured on upcast copies, so the values are those of the model's own weights computed in
            ``measure_dtype``; the model itself is never touched. Default ``torch.float32``; ``torch.float64``
            upcasts float32 models too; ``None`` measures in the model's own dtype. Integer inputs (token ids) and
            buffers keep their dtype. Models with sharded parameters (FSDP) are measured in their own dtype.
        output_key: which part of the model's output holds the logits ``[N, C]``. ``None`` (default): a tensor
            itself; a mapping or Hugging Face ``ModelOutput``: its ``"logits"``; a tuple or list (a namedtuple
            included): its first tensor; another object: its ``.logits`` attribute. A ``str`` names a key (or
            attribute), an ``int`` an index of a tuple (or of a ``ModelOutput``'s fields, as ``output[i]`` does).

    Example:
        >>> from torch import nn
        >>> from lightning_sensitivity.functional import measurement_options, predict_logits
        >>> model = nn.Linear(3, 2).to(torch.bfloat16)
        >>> with measurement_options(measure_dtype=torch.float64):
        ...     predict_logits(model, torch.randn(4, 3)).dtype
        torch.float64
    """
    options = MeasurementOptions(check_measure_dtype(measure_dtype), check_output_key(output_key))
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def current_options() -> MeasurementOptions:
    """The :class:`MeasurementOptions` in force (set by :func:`measurement_options`)."""
    return _OPTIONS.get() or _DEFAULT_OPTIONS


def check_measure_dtype(value: Any, name: str = "measure_dtype") -> torch.dtype | None:
    """``value`` if it is a floating-point ``torch.dtype`` or None, else an error naming ``name`` and the value."""
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"`{name}` expected a floating-point torch.dtype (e.g. torch.float32) or None, got {value!r}")
    if not value.is_floating_point:
        raise ValueError(f"`{name}` expected a floating-point torch.dtype (e.g. torch.float32) or None, got {value}")
    return value


def check_output_key(value: Any, name: str = "output_key") -> str | int | None:
    """``value`` if it is a str (a key or attribute), an int (a tuple index) or None, else an error naming ``name``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` expected a str (a key or attribute), an int (a tuple index) or None, got {value!r}")
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the original module behind ``torch.compile`` (its ``_orig_mod``), else ``model`` itself."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` expected a torch.nn.Module, got {type(model).__name__}")
    while hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
        model = model._orig_mod
    return model


def model_output(out: Any, key: str | int | None = None) -> Any:
    """The logits in a model's output, as :func:`measurement_options` describes (``key``: its ``output_key``).

    Anything not found is returned as it is, for :func:`check_logits` to refuse with the whole story."""
    if key is None:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, Mapping):  # a dict, or a Hugging Face ModelOutput (an OrderedDict)
            return out.get("logits", out)
        if isinstance(out, (tuple, list)):
            return next((t for t in out if isinstance(t, Tensor)), out)
        return getattr(out, "logits", out)
    if isinstance(key, int):
        parts = list(out.values()) if isinstance(out, Mapping) else out  # a ModelOutput indexes its set fields
        return parts[key] if isinstance(parts, (tuple, list)) and -len(parts) <= key < len(parts) else out
    if isinstance(out, Mapping):
        return out.get(key, out)
    return getattr(out, key, out)


def _describe_output(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"{type(out).__name__} with keys {list(out.keys())}"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {[type(t).__name__ for t in out]}"
    return type(out).__name__


def check_logits(out: Any) -> Tensor:
    """The model must map ``[N, ...]`` to logits ``[N, C]``: a tensor, or an output holding one (``"logits"`` of
    a dict or ``ModelOutput``, the first tensor of a tuple, or the part ``output_key`` names: see
    :func:`measurement_options`)."""
    key = current_options().output_key
    found = model_output(out, key)
    if not isinstance(found, Tensor):
        where = "a logits tensor [N, C] (or a dict/ModelOutput with 'logits', or a tuple whose first tensor is them)"
        if key is not None:
            where = f"logits [N, C] under `output_key={key!r}`"
        raise TypeError(
            f"the model expected to return {where}, got {_describe_output(out)}; name the part holding the logits "
            "with `output_key=` (a monitor's argument, or `lightning_sensitivity.functional.measurement_options`)"
        )
    out = found
    if out.dim() != 2:
        raise ValueError(f"the model expected to return logits of shape [N, C], got shape {tuple(out.shape)}")
    return out
