"""Every constructor argument of the three monitors, fuzzed with hypothesis.

Each argument has a validity rule written here from the documented signature (not from the implementation). Values
are drawn from a wide universe (None, bools, ints, floats incl. NaN/inf, strings, lists, dicts, tensors of random
shapes and dtypes, callables, arbitrary objects): a valid value must be accepted, an invalid one must raise
``TypeError`` or ``ValueError`` whose message names the argument in backticks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_sensitivity import JacobianNormMonitor, SharpnessMonitor, StiffnessMonitor, TransitionMonitor
from reliability._helpers import report_figure

MONITORS = (JacobianNormMonitor, TransitionMonitor, StiffnessMonitor, SharpnessMonitor)
GROUPS = ("train_train", "train_val", "val_val")
TRIED: dict[str, int] = {"invalid": 0, "valid": 0}

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.bool, torch.uint8]
tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple),
    st.sampled_from(DTYPES),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=3),
    st.just(object()),
    st.just(len),
    tensors,
)
UNIVERSE = st.one_of(
    scalars,
    st.sampled_from(["softmax", "logits", "log_softmax", "cosine", "euclidean", *GROUPS]),
    st.lists(st.integers(-3, 30), max_size=4),
    st.lists(st.sampled_from([*GROUPS, "val", "train", "x"]), max_size=4),
    st.lists(st.text(max_size=3), max_size=4),
    st.tuples(st.sampled_from(GROUPS), st.sampled_from(GROUPS)),
    st.dictionaries(st.integers(-1, 4), st.integers(-1, 4), max_size=4),
    st.sets(st.integers(0, 10), max_size=3),
    st.tuples(tensors, tensors),
    st.lists(tensors, min_size=2, max_size=2),
    st.lists(scalars, max_size=3),
)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_seq(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def valid_data(v: Any) -> bool:
    """(inputs [N, ...] with >= 2 dims, targets [N, ...] of any dtype) or a triple with a dict of [N, ...] tensors."""
    if v is None:
        return True
    if not (isinstance(v, (tuple, list)) and len(v) in (2, 3) and all(isinstance(t, torch.Tensor) for t in v[:2])):
        return False
    x, y = v[0], v[1]
    if len(v) == 3 and not (
        isinstance(v[2], dict)
        and all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == x.shape[0] for t in v[2].values())
    ):
        return False
    return x.dim() >= 2 and x.shape[0] > 0 and y.dim() >= 1 and y.shape[0] == x.shape[0]


def valid_names(v: Any) -> bool:
    return v is None or (is_seq(v) and len(v) > 0 and all(isinstance(s, str) for s in v))


def valid_class_groups(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, torch.Tensor):  # documented convenience: a 1-D tensor of super-class indices
        v = v.tolist() if v.dim() == 1 else v
    if isinstance(v, Mapping):
        if sorted(v) != list(range(len(v))):
            return False
        v = [v[k] for k in range(len(v))]
    return is_seq(v) and len(v) > 0 and all(is_int(g) and g >= 0 for g in v)


COMMON: dict[str, Callable[[Any], bool]] = {
    "every_n_epochs": lambda v: v is None or (is_int(v) and v >= 1),
    "epochs": lambda v: v is None
    or ((is_seq(v) or isinstance(v, AbstractSet)) and len(v) > 0 and all(is_int(e) and e >= 0 for e in v)),
    "log_spaced": lambda v: isinstance(v, bool),
    "at_init": lambda v: isinstance(v, bool),
    "num_samples": lambda v: is_int(v) and v >= 1,
    "seed": is_int,
    "val_data": valid_data,
    "train_data": valid_data,
    "batch_transform": lambda v: v is None or callable(v),
    "forward_fn": lambda v: v is None or callable(v),
    "chunk_size": lambda v: v is None or (is_int(v) and v >= 1),
}
SPECIFIC: dict[type, dict[str, Callable[[Any], bool]]] = {
    JacobianNormMonitor: {
        "output": lambda v: isinstance(v, str) and v in ("softmax", "logits", "log_softmax"),
        "class_names": valid_names,
        "num_projections": lambda v: v is None or (is_int(v) and v >= 2),
    },
    TransitionMonitor: {
        "num_trajectories": lambda v: v is None or (is_int(v) and v >= 1),
        "num_points": lambda v: is_int(v) and v >= 3,
    },
    StiffnessMonitor: {
        "loss_fn": lambda v: callable(v) and not isinstance(v, type),
        "groups": lambda v: is_seq(v)
        and 0 < len(v) == len(set(v))
        and all(isinstance(g, str) and g in GROUPS for g in v),
        "class_names": valid_names,
        "class_groups": valid_class_groups,
        "group_names": lambda v: v is None,  # alone, without class_groups, only None is consistent
        "num_distance_bins": lambda v: is_int(v) and v >= 1,
        "distance": lambda v: isinstance(v, str) and v in ("cosine", "euclidean"),
        "influence": lambda v: isinstance(v, bool),
        "influence_top_k": lambda v: is_int(v) and v >= 1,
        "flipped_labels": lambda v: v is None,  # alone, without influence=True, only None is consistent
        "sketch_dim": lambda v: v is None or (is_int(v) and v >= 1),
        "sketch_seed": lambda v: is_int(v) and v >= 0,
    },
    SharpnessMonitor: {
        "loss_fn": lambda v: callable(v) and not isinstance(v, type),
        "splits": lambda v: (
            is_seq(v)
            and 0 < len(v)
            and all(isinstance(g, str) and g in ("train", "val") for g in v)
            and len(v) == len(set(v))
        ),
        "num_iterations": lambda v: is_int(v) and v >= 1,
        "tol": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
        "num_vectors": lambda v: is_int(v) and v >= 0,
        "gauss_newton": lambda v: isinstance(v, bool),
    },
}
CASES = [(cls, name, rule) for cls in MONITORS for name, rule in {**COMMON, **SPECIFIC[cls]}.items()]


def hashable_eq(v: Any) -> str:
    return f"{type(v).__name__} {v!r:.60}"


@pytest.mark.parametrize(("cls", "name", "rule"), CASES, ids=[f"{c.__name__}-{n}" for c, n, _ in CASES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=UNIVERSE)
def test_every_argument_is_validated_and_named(cls, name, rule, value):
    if isinstance(value, float) and math.isnan(value) and rule(value):
        pytest.fail(f"rule accepts NaN for {name}")
    if rule(value):
        TRIED["valid"] += 1
        cls(**{name: value})  # accepted without complaint
        return
    TRIED["invalid"] += 1
    with pytest.raises((TypeError, ValueError), match=f"`{name}`"):
        cls(**{name: value})
        pytest.fail(f"{cls.__name__}({name}={hashable_eq(value)}) was accepted")


def test_zz_report_fuzz_counts():
    """Runs after the fuzz tests in file order: writes how many values were tried."""
    if TRIED["invalid"]:
        report_figure("fuzz: constructor arguments covered (monitor x argument)", len(CASES))
        report_figure("fuzz: invalid values tried, each rejected naming the argument", TRIED["invalid"])
        report_figure("fuzz: valid values tried, each accepted", TRIED["valid"])


def test_a_data_triple_with_none_for_model_kwargs_is_refused_naming_the_argument():
    # Found by the fuzz test above: (inputs, targets, None) was accepted as (inputs, targets).
    from lightning_sensitivity import TransitionMonitor

    with pytest.raises(TypeError, match=r"`val_data` expected a mapping .* third element \(model_kwargs\), got None"):
        TransitionMonitor(val_data=(torch.zeros(2, 3), torch.zeros(2), None))
