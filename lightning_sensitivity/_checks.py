"""Argument checks shared by every layer; this module imports nothing of the package.

One rule for all of them: a value of the wrong *type* raises :class:`TypeError`, a value of the right type but out of
range or not among the choices raises :class:`ValueError`; every message reads "`name` expected X, got Y" so the
user sees which argument is wrong and what was passed.

Example:
    >>> check_int(3, "num_samples", minimum=1)
    3
    >>> check_int(0, "num_samples", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `num_samples` expected a positive int, got 0
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_class_groups",
    "check_class_names",
    "check_count_or_fraction",
    "check_int",
    "check_loss_fn",
    "check_model_kwargs",
    "check_names",
    "check_number",
    "describe",
]


def describe(value: Any) -> str:
    """``"<type> <repr>"`` of a value, short enough for an error message."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _int_kind(minimum: int | None, maximum: int | None, allow_none: bool) -> str:
    if minimum == 1 and maximum is None:
        kind = "a positive int"
    elif minimum is not None and maximum is not None:
        kind = f"an int in [{minimum}, {maximum}]"
    elif minimum is not None:
        kind = f"an int >= {minimum}"
    elif maximum is not None:
        kind = f"an int <= {maximum}"
    else:
        kind = "an int"
    return kind + (" or None" if allow_none else "")


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> Any:
    """An int (numpy integers too; bools refused) within ``[minimum, maximum]``; returned as a Python int."""
    if value is None and allow_none:
        return None
    kind = _int_kind(minimum, maximum, allow_none)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` expected {kind}, got {describe(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` expected {kind}, got {int(value)}")
    return int(value)


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """A real number (bools refused) in the interval given by ``low``/``high``; returned as a float."""
    if value is None and allow_none:
        return None
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f" in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    kind = "a number" + ("" if low is None and high is None else interval) + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` expected {kind}, got {describe(value)}")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high or v != v:
        raise ValueError(f"`{name}` expected {kind}, got {value!r}")
    return v


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` expected a bool, got {describe(value)}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[T]) -> T:
    """One of ``choices`` (compared with ``==``); a value of another type than every choice is a TypeError."""
    if not any(isinstance(value, type(c)) for c in choices):
        raise TypeError(f"`{name}` expected one of {tuple(choices)}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"`{name}` expected one of {tuple(choices)}, got {value!r}")
    return value


def check_callable(value: Any, name: str, signature: str, *, allow_none: bool = False) -> Any:
    """A callable (``signature`` describes what it is called with, for the message)."""
    if value is None and allow_none:
        return None
    if not callable(value):
        suffix = " or None" if allow_none else ""
        raise TypeError(f"`{name}` expected a callable {signature}{suffix}, got {describe(value)}")
    return value


def check_loss_fn(loss_fn: Any, name: str = "loss_fn") -> Callable[..., Any]:
    """A loss ``loss_fn(logits, targets) -> loss``; a loss *class* (``nn.CrossEntropyLoss``) is refused.

    Calling the class would construct a module with ``logits`` as its ``weight`` instead of computing a loss.
    """
    if isinstance(loss_fn, type):
        raise TypeError(
            f"`{name}` expected a callable (logits, targets) -> loss, got the class {loss_fn.__name__}; pass an "
            f"instance nn.{loss_fn.__name__}() or a function such as F.cross_entropy"
        )
    return check_callable(loss_fn, name, "(logits, targets) -> loss")


def check_names(value: Any, name: str) -> list[str] | None:
    """An optional non-empty sequence of display names (class or super-class names)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` expected a sequence of str or None, got {describe(value)}")
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` expected a non-empty sequence of str, got {list(value)!r}")
    return list(value)


def check_class_names(names: Sequence[str] | None, num_classes: int, name: str) -> None:
    """Display names must match the number of classes of the data (checked once the classes are known)."""
    if names is not None and len(names) != num_classes:
        raise ValueError(
            f"`{name}` expected {num_classes} names (one per class of the data), got {len(names)}: {list(names)!r}"
        )


def check_count_or_fraction(value: Any, name: str) -> None:
    """An int count (>= 1) or a float fraction in (0, 1) -- a validation split, a subset size."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` expected an int count or a float fraction, got {describe(value)}")
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` expected a fraction in (0, 1), got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"`{name}` expected a positive int, got {value!r}")


def check_class_groups(class_groups: Any, name: str = "class_groups") -> list[int] | None:
    """An optional fine class -> super-class map: a non-empty sequence (or 1-D tensor) of non-negative ints, or a
    mapping with keys ``0..C-1``; returned as a list."""
    if class_groups is None:
        return None
    if isinstance(class_groups, Mapping):
        fine = sorted(class_groups)
        if fine != list(range(len(fine))):
            raise ValueError(f"`{name}` expected a mapping with keys 0..C-1 (fine classes), got keys {fine}")
        class_groups = [class_groups[k] for k in fine]
    if hasattr(class_groups, "tolist") and not isinstance(class_groups, Sequence):  # a tensor or an array
        class_groups = class_groups.tolist()
    if isinstance(class_groups, (str, bytes)) or not isinstance(class_groups, Sequence) or not class_groups:
        raise TypeError(
            f"`{name}` expected a non-empty sequence (fine class -> super-class) or mapping of ints, got "
            f"{describe(class_groups)}"
        )
    for value in class_groups:
        check_int(value, name, minimum=0)
    return [int(v) for v in class_groups]


def check_model_kwargs(model_kwargs: Any, num: int, name: str = "model_kwargs", inputs_name: str = "inputs") -> dict:
    """Per-example keyword inputs of a model (``{"attention_mask": [N, T]}``): a mapping of str -> tensor whose
    dimension 0 runs over the ``num`` examples of ``inputs_name``; returned as a dict (None gives ``{}``)."""
    from torch import Tensor

    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"`{name}` expected a mapping of str -> torch.Tensor [N, ...] or None, got {describe(model_kwargs)}"
        )
    for key, value in model_kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"`{name}` expected str keys (the model's keyword names), got {describe(key)}")
        if not isinstance(value, Tensor):
            raise TypeError(f"`{name}[{key!r}]` expected a torch.Tensor [N, ...], got {type(value).__name__}")
        if value.dim() < 1 or value.shape[0] != num:
            raise ValueError(
                f"`{name}[{key!r}]` expected {num} entries along dimension 0 (the first dimension {num}: one per "
                f"example) to match `{inputs_name}`, got shape {tuple(value.shape)}"
            )
    return dict(model_kwargs)
