"""Purity: a measurement never touches the model it measures.

Parameters are passed to :func:`torch.func.functional_call` as detached tensors (so no ``.grad`` is written and
nothing is tracked), every submodule's ``training`` flag is put back exactly as it was, activation checkpointing runs
as plain forwards, and the caller's grad mode, inference mode and autocast state are escaped for the duration of
the measurement and restored afterwards. :func:`pure_model` is the preamble of every measurement.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_sensitivity.functional._sharding import has_sharded_parameters
from lightning_sensitivity.functional.model import current_options, unwrap_model

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

_SAID: set[tuple[torch.dtype, torch.dtype]] = set()  # upcasts already announced in this process


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


@functools.lru_cache(maxsize=1)
def _autocast_device_types() -> tuple[str, ...]:
    # Cached: without a GPU, torch.cuda.is_available() loads NVML on every call (~0.2 ms per measurement call).
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


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
