"""The model as a pure function of its inputs, and the argument checks shared by every quantity.

Everything here exists so that a measurement can never touch the model it measures: parameters are passed to
:func:`torch.func.functional_call` as detached tensors (so no ``.grad`` is written and nothing is tracked), every
submodule's ``training`` flag is put back exactly as it was, and the caller's grad mode, inference mode and
autocast state are escaped for the duration of the measurement and restored afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_sensitivity._checks import (  # noqa: F401 (check_loss_fn: shared here)
    check_int,
    check_loss_fn,
    check_model_kwargs,
)

# Layers whose train-mode forward mixes examples (batch statistics) or draws random numbers. Inside
# ``torch.func.vmap`` they fail with obscure errors, and their per-example derivatives are not defined, so
# ``train_mode=True`` is refused for models that contain one.
_TRAIN_MODE_UNSUPPORTED = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MeasurementOptions:
    """How every functional entry point reads a model (see :func:`measurement_options`)."""

    measure_dtype: torch.dtype | None = torch.float32
    output_key: str | int | None = None


_DEFAULT_OPTIONS = MeasurementOptions()
_OPTIONS: ContextVar[MeasurementOptions | None] = ContextVar("measurement_options", default=None)
_SAID: set[tuple[torch.dtype, torch.dtype]] = set()  # upcasts already announced in this process


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
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"`{name}` expected a floating-point torch.dtype (e.g. torch.float32) or None, got {value!r}")
    if not value.is_floating_point:
        raise ValueError(f"`{name}` expected a floating-point torch.dtype (e.g. torch.float32) or None, got {value}")
    return value


def check_output_key(value: Any, name: str = "output_key") -> str | int | None:
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


@contextlib.contextmanager
def measurement_context(model: nn.Module, *, train_mode: bool = False, grad: bool = True) -> Iterator[None]:
    """Put ``model`` in the mode a measurement needs and restore everything on exit.

    Escapes ``torch.inference_mode`` and ``torch.no_grad`` (Lightning validates under one of them), switches autocast
    off (measurements are made in the model's own dtype, not under AMP), and sets eval mode (or train mode) on every
    submodule, restoring each submodule's own flag afterwards -- ``model.train(flag)`` would not restore a mixture.
    """
    if train_mode:
        offending = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _TRAIN_MODE_UNSUPPORTED)})
        if offending:
            raise ValueError(
                "`train_mode=True` expected a model without batch-statistics or random layers, got a model with "
                f"{', '.join(offending)}; per-example derivatives are not defined for them in train mode. "
                "Use train_mode=False (eval mode, the default)."
            )
    flags = [(m, m.training) for m in model.modules()]
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad() if grad else torch.no_grad())
        stack.enter_context(checkpointing_off(model))
        for device_type in _autocast_device_types():
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        try:
            for m, _ in flags:
                m.training = train_mode
            yield
        finally:
            for m, flag in flags:
                m.training = flag


@contextlib.contextmanager
def checkpointing_off(model: nn.Module) -> Iterator[None]:
    """Run activation-checkpointed regions of ``model`` as plain forwards for the duration of a measurement.

    ``torch.utils.checkpoint`` recomputes a region during the backward pass. A measurement evaluates the model through
    :func:`torch.func.functional_call`, which puts the module's own parameters back once the forward returns, so the
    recompute would run on other tensors than the forward did (non-reentrant: ``CheckpointError`` "Recomputed values
    ... different metadata"; reentrant: refused under ``torch.autograd.grad``). A checkpointed region computes the same
    function as the plain one, and a measurement's chunks are small: the regions simply run once, keeping their
    activations. Covers ``torch.utils.checkpoint.checkpoint`` however it is reached (direct calls,
    ``checkpoint_sequential``, ``checkpoint_wrapper`` of Lightning's / FSDP's activation-checkpointing helpers, Hugging
    Face gradient checkpointing) and the composable ``torch.distributed._composable.checkpoint`` on submodules of
    ``model``.
    """
    import torch.utils.checkpoint as checkpoint_module

    global _CHECKPOINT_DEPTH
    composable = [(state, state.enable_hook) for state in _composable_checkpoint_states(model)]
    # The module-level patch is shared by every thread (DDP ranks as threads, a measurement in a worker): the first
    # measurement to enter patches, the last to leave restores, so overlapping ones never "restore" a patched state.
    with _CHECKPOINT_LOCK:
        if _CHECKPOINT_DEPTH == 0:
            patches = _PLAIN_CHECKPOINT if hasattr(checkpoint_module, "_checkpoint_impl") else _PLAIN_CHECKPOINT_OLD
            _CHECKPOINT_ORIGINALS.update({name: getattr(checkpoint_module, name) for name in patches})
            for name, plain in patches.items():
                setattr(checkpoint_module, name, plain)
        _CHECKPOINT_DEPTH += 1
    for state, _ in composable:
        state.enable_hook = False
    try:
        yield
    finally:
        with _CHECKPOINT_LOCK:
            _CHECKPOINT_DEPTH -= 1
            if _CHECKPOINT_DEPTH == 0:
                for name, original in _CHECKPOINT_ORIGINALS.items():
                    setattr(checkpoint_module, name, original)
                _CHECKPOINT_ORIGINALS.clear()
        for state, flag in composable:
            state.enable_hook = flag


_CHECKPOINT_LOCK = threading.Lock()
_CHECKPOINT_DEPTH = 0  # measurements inside checkpointing_off, over all threads
_CHECKPOINT_ORIGINALS: dict[str, Any] = {}


def _plain_checkpoint(function: Callable[..., Any], args: Any, kwargs: Any, **_: Any) -> Any:
    return function(*args, **kwargs)


class _PlainCheckpointFunction:
    @staticmethod
    def apply(function: Callable[..., Any], preserve_rng_state: bool, *args: Any) -> Any:
        return function(*args)


def _plain_generator(*_: Any, **__: Any) -> Iterator[None]:
    yield


# torch >= 2.9 routes every checkpoint call through `_checkpoint_impl`; older releases inline it in `checkpoint`,
# which then reaches the reentrant autograd Function and the non-reentrant generator by their module names.
_PLAIN_CHECKPOINT = {"_checkpoint_impl": _plain_checkpoint}
_PLAIN_CHECKPOINT_OLD = {"CheckpointFunction": _PlainCheckpointFunction,
                         "_checkpoint_without_reentrant_generator": _plain_generator}  # fmt: skip


def _composable_checkpoint_states(model: nn.Module) -> list[Any]:
    """The states of the composable ``checkpoint(module)`` applied to submodules of ``model`` (read without adding
    one to any other module)."""
    try:
        from torch.distributed._composable.checkpoint_activation import checkpoint
        from torch.distributed._composable.contract import _get_registry
    except ImportError:  # a torch built without distributed support
        return []
    return [checkpoint.state(m) for m in model.modules() if "checkpoint" in (_get_registry(m) or {})]


def _autocast_device_types() -> list[str]:
    types = ["cpu"]
    if torch.cuda.is_available():
        types.append("cuda")
    return types


def detached_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Detached parameters and buffers of ``model``, keyed as :func:`functional_call` expects.

    Detaching shares storage (no copy) but cuts the graph, so nothing computed from them reaches the model's
    ``.grad``. Inference tensors (a model built under ``inference_mode``) are cloned into normal tensors.
    Floating-point tensors less precise than the ``measure_dtype`` of :func:`measurement_options` (bf16/fp16,
    default float32) are upcast copies, so every measurement runs in at least that precision (said once per dtype).
    """
    dtype = None if has_sharded_parameters(model) else current_options().measure_dtype
    with torch.inference_mode(False):
        params = {name: _normal(p.detach(), dtype) for name, p in model.named_parameters()}
        buffers = {name: _normal(b.detach(), dtype) for name, b in model.named_buffers()}
    if dtype is not None:
        _say_upcast(model, dtype)
    return params, buffers


def _less_precise(t: Tensor, dtype: torch.dtype | None) -> bool:
    return dtype is not None and t.is_floating_point() and torch.finfo(t.dtype).eps > torch.finfo(dtype).eps


def _normal(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    if _less_precise(t, dtype):
        return t.to(dtype)  # a copy: the model's own tensor is never written
    return t.clone() if t.is_inference() else t


def _say_upcast(model: nn.Module, dtype: torch.dtype) -> None:
    originals = {t.dtype for t in (*model.parameters(), *model.buffers()) if _less_precise(t, dtype)}
    for low in sorted(originals, key=str):
        if (low, dtype) not in _SAID:
            _SAID.add((low, dtype))
            warnings.warn(
                f"the model holds {low} parameters or buffers: measured in {dtype} on upcast copies (the model is "
                f"untouched); `measurement_options(measure_dtype=None)` (or a monitor's `measure_dtype=None`) "
                f"measures in {low} instead.",
                stacklevel=3,
            )


def match_model(x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Move a batch to the device of the model's first floating-point parameter and, if the batch is floating-point,
    cast it to that parameter's dtype. Integer and bool batches (token ids, masks) keep their dtype."""
    for p in params.values():
        if p.is_floating_point():
            # Outside inference mode: a cast made under it would be an inference tensor autograd cannot use.
            with torch.inference_mode(False):
                return x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
    return x


def model_dtype(params: dict[str, Tensor]) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (the default dtype for a model without one)."""
    return next((p.dtype for p in params.values() if p.is_floating_point()), torch.get_default_dtype())


def state_slots(model: nn.Module) -> dict[str, str]:
    """Every place a parameter or buffer is stored, ``"path.attr"``, mapped to its name in :func:`detached_state`.

    A slot is one entry of one module's ``_parameters``/``_buffers``, each module counted once however many names it
    is registered under. Aliased modules (``self.head = self.net[2]``) have one slot under two paths; tied weights
    (``dec.weight = enc.weight``) are one tensor in two slots. :func:`functional_call` swaps and restores by path, so
    an aliased module would be swapped twice and "restored" to the swapped-in tensor -- leaving plain tensors where
    ``nn.Parameter`` objects were. Swapping every slot exactly once, with ``tie_weights=False``, restores each exactly.
    """
    canonical = {id(t): name for name, t in reversed(list(model.named_parameters()))}
    canonical.update({id(t): name for name, t in reversed(list(model.named_buffers()))})
    slots: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for attr, tensor in (*module._parameters.items(), *module._buffers.items()):
            if tensor is not None and id(tensor) in canonical:
                slots[f"{prefix}.{attr}" if prefix else attr] = canonical[id(tensor)]
    return slots


def has_sharded_parameters(model: nn.Module) -> bool:
    """Whether ``model`` holds parameters sharded across processes: modules sharded by ``fully_shard`` (FSDP2) or
    wrapped in ``FullyShardedDataParallel`` (FSDP1), ``DTensor`` parameters (tensor parallel), FSDP1's flat
    parameters.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support shards nothing
        return False
    # A root FSDP2 module keeps its parameters gathered between forwards: its class says it is sharded.
    if is_fsdp1(model) or any(isinstance(m, FSDPModule) for m in model.modules()):
        return True
    return any(is_dtensor(p) for p in model.parameters())


def is_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` is (or contains) FSDP1's ``FullyShardedDataParallel`` or holds its flat parameters, whose
    per-parameter tensors are views into one flat buffer (recognised by class name: nothing is imported)."""
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return True
    return any(type(p).__name__ == "FlatParameter" for p in model.parameters())


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 shard, or a tensor-parallel parameter)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(t, DTensor)


def as_function(model: nn.Module) -> Callable[..., Tensor]:
    """``f(params, buffers, x, **kwargs) -> logits``: ``model`` as a pure function of its state and a batch.

    ``params``/``buffers`` are keyed by the de-duplicated names of :func:`detached_state`; every slot holding one of
    them (aliases and tied copies included) receives the same tensor, and every slot is put back as it was.

    A model with sharded parameters (:func:`has_sharded_parameters`) is called as it is instead: its wrappers gather
    the parameters for each forward, which swapped-in tensors would defeat. Measurements that differentiate only
    with respect to the inputs (``torch.autograd.grad(out, inputs)``) stay exact and leave the parameters' ``.grad``
    alone; every process must then run the same forwards (the gathers are collectives).
    """
    if has_sharded_parameters(model):

        def direct(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, **kwargs: Any) -> Tensor:
            return model(x, **kwargs)

        return direct
    slots = state_slots(model)

    def f(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, **kwargs: Any) -> Tensor:
        state = {**buffers, **params}
        swapped = {slot: state[name] for slot, name in slots.items() if name in state}
        return functional_call(model, swapped, (x,), kwargs or None, tie_weights=False, strict=False)

    return f


def pure_model(model: nn.Module) -> tuple[nn.Module, Callable[..., Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """``(module, f, params, buffers)``: the original module (behind ``torch.compile``), ``f(params, buffers, x,
    **kwargs)`` and its detached state -- the preamble of every measurement."""
    model = unwrap_model(model)
    params, buffers = detached_state(model)
    return model, as_function(model), params, buffers


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


ModelKwargs = Mapping[str, Tensor]


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


def check_chunk_size(chunk_size: int | None, name: str = "chunk_size") -> None:
    check_int(chunk_size, name, minimum=1, allow_none=True)


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


def chunks(num: int, chunk_size: int | None) -> Iterator[slice]:
    """Consecutive slices of ``range(num)`` of length ``chunk_size`` (one slice when ``chunk_size`` is None)."""
    step = num if chunk_size is None else chunk_size
    for start in range(0, num, max(step, 1)):
        yield slice(start, min(start + step, num))


def report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def check_progress(progress: Any) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"`progress` expected a callable (done, total) -> None or None, got {type(progress).__name__}")


def predict_logits(
    model: nn.Module,
    inputs: Tensor,
    chunk_size: int | None = None,
    *,
    model_kwargs: ModelKwargs | None = None,
) -> Tensor:
    """Eval-mode logits ``[N, C]`` of ``inputs``, leaving the model exactly as it was (no grad, flags restored).

    ``inputs`` may be floating-point or integer (token ids ``[N, T]``); ``model_kwargs`` are per-example keyword
    inputs of the model (each ``[N, ...]``, sliced with the inputs: ``model(x[piece], **{k: v[piece]})``).

    Example:
        >>> predict_logits(torch.nn.Linear(3, 2), torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """
    check_chunk_size(chunk_size)
    model, f, params, buffers = pure_model(model)
    x = match_model(prepare_inputs(inputs, allow_integer=True), params)
    kwargs = prepare_model_kwargs(model_kwargs, x.shape[0], params)
    with measurement_context(model, grad=False):
        pieces = chunks(x.shape[0], chunk_size)
        return torch.cat([check_logits(f(params, buffers, x[piece], **take(kwargs, piece))) for piece in pieces])
