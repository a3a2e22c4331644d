"""Transitions along closed trajectories (Novak et al. 2018): linear-region and prediction changes.

The activation pattern of a point is the sign of the pre-activation of every ReLU-family unit. Units are found at
the operator level with a :class:`~torch.overrides.TorchFunctionMode`, so ReLUs written as modules
(``nn.ReLU``, ``nn.LeakyReLU``, ``nn.ReLU6``, ``nn.PReLU``) and as calls (``F.relu``, ``torch.relu``,
``x.relu()``, their in-place forms, ``F.leaky_relu``, ``F.relu6``, ``F.prelu``, ``F.hardtanh`` with
``min_val=0``) are all recognised. The pattern bit of a unit is ``pre_activation > 0`` (for ReLU6 the upper kink
at 6 is not part of the pattern). Smooth non-linearities (tanh, GELU, ...) have no pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_choice, check_int
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
from lightning_sensitivity.functional.transition_density import DEFAULT_HALF_WIDTH, near_anchor_ratio

#: What a point's prediction is (see :func:`transition_counts`).
PREDICTIONS = ("argmax", "labels")

_RELU_FAMILY: frozenset[Callable[..., Any]] = frozenset(
    {
        F.relu,
        F.relu_,
        torch.relu,
        torch.relu_,
        Tensor.relu,
        Tensor.relu_,
        F.leaky_relu,
        F.leaky_relu_,
        F.relu6,
        F.prelu,
        torch.prelu,
    }
)


def _hardtanh_min(args: tuple, kwargs: dict) -> float:
    if len(args) > 1:
        return float(args[1])
    return float(kwargs.get("min_val", -1.0))


class _ActivationRecorder(TorchFunctionMode):
    """Records ``pre_activation > 0`` (flattened per example) for each ReLU-family call during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns: list[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recognised = func in _RELU_FAMILY or (func is F.hardtanh and _hardtanh_min(args, kwargs) == 0.0)
        if recognised:
            pre = args[0] if args else kwargs["input"]
            # Taken before the call: in-place variants overwrite their input.
            self.patterns.append((pre > 0).flatten(1))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class TransitionCounts:
    """Per-trajectory transition counts along closed trajectories of ``num_points`` points.

    Attributes:
        prediction: ``[K]`` number of consecutive pairs (last to first included) whose arg-max class differs.
        num_units: number of ReLU-family units in the activation pattern (0 when none was recognised).
        num_points: points per trajectory.
        segment_prediction: ``[K, P]`` bool, whether the prediction changes along segment ``j`` (from point ``j``
            to point ``j + 1``, the last segment closing the loop from point ``P - 1`` to point 0).
    """

    _activation: Tensor = field(repr=False)
    _region_changes: Tensor = field(repr=False)
    prediction: Tensor
    num_units: int
    num_points: int
    _segments: Tensor = field(repr=False, default=None)  # type: ignore[assignment]
    segment_prediction: Tensor = field(repr=False, default=None)  # type: ignore[assignment]

    def _require_units(self, name: str) -> None:
        if self.num_units == 0:
            raise ValueError(
                f"`{name}` needs ReLU-family units, got a model with none recognised (nn.ReLU/LeakyReLU/ReLU6/PReLU, "
                "F.relu, torch.relu, x.relu(), F.leaky_relu, F.relu6, F.prelu, F.hardtanh(min_val=0)); "
                "`prediction` counts are still available"
            )

    @property
    def activation(self) -> Tensor:
        """``[K]`` Novak's transition count: summed Hamming distances between consecutive activation patterns."""
        self._require_units("activation")
        return self._activation

    @property
    def region_changes(self) -> Tensor:
        """``[K]`` number of consecutive pairs whose activation pattern differs at all (linear-region changes)."""
        self._require_units("region_changes")
        return self._region_changes

    @property
    def segments(self) -> Tensor:
        """``[K, P]`` Hamming distance of the activation patterns at the two ends of each segment.

        Segment ``j`` joins point ``j`` and point ``(j + 1) % P``, so ``segments.sum(1) == activation``.
        """
        self._require_units("segments")
        return self._segments


def transition_counts(
    model: nn.Module,
    trajectories: Tensor,
    *,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    model_kwargs: ModelKwargs | None = None,
    prediction: str = "argmax",
) -> TransitionCounts:
    """Count activation-pattern and prediction changes along closed trajectories.

    The ``K * P`` points are evaluated in chunks of ``chunk_size`` points (in eval mode, no autograd), so memory is
    bounded by the chunk; consecutive points are compared within a trajectory, and its last point with its first.

    The counts are defined on the sampled points: every one of the ``K * P`` points is evaluated, and a segment's
    count is the Hamming distance of its two ends. No point is skipped by adaptive refinement: equal patterns at
    two points do not imply equal patterns at the sampled points between them (the ellipse is curved, so it can
    leave a convex linear region and come back; with max-pooling or smooth layers the regions are not even convex),
    so a refinement that only bisects segments with different ends would undercount.

    Args:
        model: maps ``[N, *input_shape]`` to logits ``[N, C]``. Left exactly as it was.
        trajectories: ``[K, P, *input_shape]`` with ``P >= 2`` (e.g. from :func:`ellipse_trajectories`),
            floating-point (a trajectory through token ids is not defined: embed them first).
        chunk_size: points per forward pass; None (default) = sized to the model: a first chunk of
            :data:`FIRST_CHUNK` points finds the number of units ``U``, then chunks of ``POINT_BUDGET // U`` points
            (at least ``FIRST_CHUNK``), so the chunk's patterns and activations stay a few megabytes. The points are
            independent, so the chunking never changes the counts; it is faster than one pass over all points
            (measured on the CIFAR ``SmallCNN``: 16 x 960 points at once cost 4x the forward passes, chunks of 64
            points 1.0x, ``docs/performance.md``).
        progress: optional ``progress(done, total)`` called after each chunk.
        model_kwargs: per-trajectory keyword inputs of the model, e.g. ``{"attention_mask": mask [K, T]}``: each
            value has ``K`` entries along dimension 0 (one per trajectory, not per point), is repeated for the
            trajectory's ``P`` points and passed as ``model(points, **{k: v_of_each_point})``.
        prediction: what a point's prediction is: ``"argmax"`` (default), the class of the largest logit;
            ``"labels"``, the set of outputs above 0 (a multi-label sigmoid head, or a single binary logit ``[N, 1]``,
            whose arg-max never changes): a prediction change is then any label switching on or off.

    Returns:
        :class:`TransitionCounts` with long tensors ``[K]`` and the per-segment ``[K, P]`` counts they sum.

    Raises:
        ValueError: ``trajectories`` has fewer than 3 dimensions or fewer than 2 points, ``chunk_size < 1``, or the
            model output is not ``[N, C]``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> counts = transition_counts(model, torch.randn(4, 50, 2))
        >>> counts.activation.shape, counts.prediction.shape, counts.segments.shape
        (torch.Size([4]), torch.Size([4]), torch.Size([4, 50]))
        >>> bool((counts.segments.sum(1) == counts.activation).all())
        True
    """
    check_chunk_size(chunk_size)
    check_progress(progress)
    check_choice(prediction, "prediction", PREDICTIONS)
    traj = prepare_inputs(trajectories, name="trajectories", min_dim=3)
    num_traj, num_points = traj.shape[:2]
    if num_points < 2:
        raise ValueError(f"`trajectories` expected at least 2 points per trajectory, got shape {tuple(traj.shape)}")
    model, f, params, buffers = pure_model(model)
    points = match_model(traj.reshape(num_traj * num_points, *traj.shape[2:]), params)
    per_trajectory = prepare_model_kwargs(model_kwargs, num_traj, params, inputs_name="trajectories")
    kwargs = {k: v.repeat_interleave(num_points, dim=0) for k, v in per_trajectory.items()}  # [K * P, ...]
    total = points.shape[0]
    device = points.device
    sized: list[int] = []  # the number of units, once the first chunk has been evaluated
    first_pattern: Tensor | None = None  # [K, U] pattern of each trajectory's first point
    prev_pattern: Tensor | None = None  # pattern / prediction of the point before the current chunk
    prev_pred: Tensor | None = None
    num_units = 0
    # Counters are made inside the context: under inference_mode they would be inference tensors.
    with measurement_context(model, grad=False):
        # Flat [K * P]: entry k * P + j is segment j of trajectory k (point j to point j + 1, closing at j = P - 1).
        segments = torch.zeros(total, dtype=torch.long, device=device)
        seg_pred = torch.zeros(total, dtype=torch.bool, device=device)
        first_pred: Tensor | None = None  # [K, width] prediction of each trajectory's first point
        pieces = chunks(total, chunk_size) if chunk_size is not None else _sized_chunks(total, sized)
        for piece in pieces:
            recorder = _ActivationRecorder()
            with recorder:
                logits = check_logits(f(params, buffers, points[piece], **take(kwargs, piece)))
            # [n, width]: one column (the arg-max class) or one per output (the labels on)
            pred = logits.argmax(dim=1, keepdim=True) if prediction == "argmax" else logits > 0
            if first_pred is None:
                first_pred = torch.zeros(num_traj, pred.shape[1], dtype=pred.dtype, device=device)
            if recorder.patterns:
                pattern = torch.cat(recorder.patterns, dim=1)
            else:
                pattern = torch.zeros(pred.shape[0], 0, dtype=torch.bool, device=device)
            num_units = pattern.shape[1]
            sized[:] = [num_units]
            if first_pattern is None:
                first_pattern = torch.zeros(num_traj, num_units, dtype=torch.bool, device=device)
            flat = torch.arange(piece.start, piece.stop, device=device)
            traj_id, pos = flat // num_points, flat % num_points
            is_first = pos == 0
            first_pattern[traj_id[is_first]] = pattern[is_first]
            first_pred[traj_id[is_first]] = pred[is_first]
            # Changes of every point against its predecessor, as one vector per chunk: neighbouring rows are
            # compared in place (no gathered copies of the [points, units] patterns), and the first row against
            # the last row of the previous chunk. The change into point i is segment i - 1; rows starting a
            # trajectory have no predecessor on it and are dropped.
            if prev_pattern is None:
                head = torch.zeros(1, dtype=torch.long, device=device)
                head_pred = torch.zeros(1, dtype=torch.bool, device=device)
            else:
                head = _count_true(pattern[:1] != prev_pattern)
                head_pred = (pred[:1] != prev_pred).any(dim=1)
            hamming = torch.cat([head, _count_true(pattern[1:] != pattern[:-1])])
            changed = torch.cat([head_pred, (pred[1:] != pred[:-1]).any(dim=1)])
            keep = ~is_first
            segments[flat[keep] - 1] = hamming[keep]
            seg_pred[flat[keep] - 1] = changed[keep]
            is_last = pos == num_points - 1  # closes the loop: last point against the first
            closing = traj_id[is_last]
            segments[flat[is_last]] = _count_true(pattern[is_last] != first_pattern[closing])
            seg_pred[flat[is_last]] = (pred[is_last] != first_pred[closing]).any(dim=1)
            prev_pattern, prev_pred = pattern[-1:], pred[-1:]
            report(progress, piece.stop, total)
        segments = segments.reshape(num_traj, num_points)
        seg_pred = seg_pred.reshape(num_traj, num_points)
        activation = segments.sum(dim=1)
        region = (segments > 0).sum(dim=1)
        prediction = seg_pred.sum(dim=1)
    return TransitionCounts(activation, region, prediction, num_units, num_points, segments, seg_pred)


#: Points of the first chunk when ``chunk_size`` is None (it finds the number of units).
FIRST_CHUNK = 64
#: Points x units per chunk when ``chunk_size`` is None: 2**22 pattern bits, e.g. 85 CIFAR points of the
#: ``SmallCNN`` (49 280 units) or 8192 points of a 512-unit MLP; the activations of such a chunk fit in a cache-sized
#: working set, where one chunk of all points spills to memory.
POINT_BUDGET = 2**22


def _sized_chunks(total: int, sized: list[int]) -> Iterator[slice]:
    """Chunks of :data:`FIRST_CHUNK` points, then of ``POINT_BUDGET // units`` points (``sized`` holds the units
    found by the first chunk's forward pass)."""
    start = 0
    while start < total:
        step = FIRST_CHUNK if not sized else max(FIRST_CHUNK, POINT_BUDGET // max(sized[0], 1))
        yield slice(start, min(start + step, total))
        start += step


def _count_true(mask: Tensor) -> Tensor:
    """Row sums of a bool matrix. Summing bools (or count_nonzero) first copies them to int64; a uint8 view reduced
    with an int32 accumulator reads the bytes once (2-3x faster on [points, units] patterns)."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def transition_summary(
    *,
    num_points: int,
    prediction: Tensor | None = None,
    activation: Tensor | None = None,
    region_changes: Tensor | None = None,
    segments: Tensor | None = None,
    near_anchor_fraction: float = DEFAULT_HALF_WIDTH,
) -> dict[str, float]:
    """The statistics ``TransitionMonitor`` logs of one split's counts (the fields of :class:`TransitionCounts`,
    gathered over the trajectories), in float64.

    - with ``prediction`` (``[K]``): ``"prediction_mean"``;
    - with ``activation``, ``region_changes`` (``[K]``) and ``segments`` (``[K, P]``, given together; a model without
      ReLU-family units has none): ``"activation_mean"``, ``"region_changes_mean"``, ``"region_changes_fraction"``
      (the mean region changes over the ``num_points`` segments of a closed ellipse: 1 = every segment changes) and
      ``"near_anchor_ratio"`` (:func:`~lightning_sensitivity.functional.near_anchor_ratio` with half-width
      ``near_anchor_fraction``; NaN when no segment away from the anchors changes).

    Example:
        >>> out = transition_summary(num_points=4, prediction=torch.tensor([2, 0]), activation=torch.tensor([6, 2]),
        ...                          region_changes=torch.tensor([3, 1]), segments=torch.ones(2, 4))
        >>> out["prediction_mean"], out["activation_mean"], out["region_changes_fraction"]
        (1.0, 4.0, 0.5)
    """
    check_int(num_points, "num_points", minimum=1)
    pattern = (activation, region_changes, segments)
    if any(t is None for t in pattern) and not all(t is None for t in pattern):
        raise ValueError(
            "`activation`, `region_changes` and `segments` expected to be given together, got "
            + ", ".join(f"{name}={'None' if t is None else 'a tensor'}"
                        for name, t in zip(("activation", "region_changes", "segments"), pattern, strict=True))
        )  # fmt: skip
    out: dict[str, float] = {}
    if prediction is not None:
        out["prediction_mean"] = float(prediction.detach().double().mean())
    if activation is not None and region_changes is not None and segments is not None:
        region_mean = float(region_changes.detach().double().mean())
        out["activation_mean"] = float(activation.detach().double().mean())
        out["region_changes_mean"] = region_mean
        out["region_changes_fraction"] = region_mean / num_points
        out["near_anchor_ratio"] = near_anchor_ratio(segments, near_anchor_fraction)
    return out


# ---------------------------------------------------------------- the declaration (keys, arrays, charts)
_T = keys.prefix(keys.TRANSITIONS)
_R = keys.TRANSITION_RANDOM
_RELU = "needs ReLU-family units (a model without them has no activation pattern)"
_RANDOM = 'only with "random" in `splits`'
_PER_SPLIT = (*(f"{stat}_mean" for stat in keys.TRANSITION_STATS), "region_changes_fraction", "near_anchor_ratio")
#: What ``TransitionMonitor`` logs and writes (see :class:`lightning_sensitivity.keys.Quantity`); the off-data
#: ellipses through shuffled anchors are the split ``random``.
QUANTITY = keys.Quantity(
    name=keys.TRANSITIONS,
    monitor="TransitionMonitor",
    metrics=(*(f"{_T}/{{split}}/{name}" for name in _PER_SPLIT), *(f"{_T}/{_R}/{name}" for name in _PER_SPLIT)),
    conditional={
        f"{_T}/{{split}}/activation_mean": _RELU,
        f"{_T}/{{split}}/region_changes_mean": "needs ReLU-family units",
        f"{_T}/{{split}}/prediction_mean": "needs a predicted class (not logged for real-valued, regression targets)",
        f"{_T}/{{split}}/region_changes_fraction": "needs ReLU-family units",
        f"{_T}/{{split}}/near_anchor_ratio": "NaN (so not logged) when no segment away from the anchors changes",
        **{f"{_T}/{_R}/{name}": _RANDOM for name in _PER_SPLIT},
    },
    arrays=tuple(
        keys.transition_array(s, n)
        for s in (keys.VAL, keys.TRAIN, _R)
        for n in (*keys.TRANSITION_STATS, "anchor_indices", "segments")  # segments: [K, P] per-segment distances
    ),
    conditional_arrays={
        keys.transition_array(_R, n): _RANDOM for n in (*keys.TRANSITION_STATS, "anchor_indices", "segments")
    },
    histograms=(f"{_T}/{{split}}/activation", f"{_T}/{_R}/activation"),
    category="Transitions",
    charts=(
        # One line per measured split; the region changes as a fraction of the segments, so that a saturated count
        # reads as "1.0 = every segment changes" instead of a flat line at the number of points.
        keys.Chart(
            "Linear-region changes, fraction of segments (1 = saturated): {splits}",
            (f"{_T}/{{split}}/region_changes_fraction",),
        ),
        keys.Chart("Activation-pattern transitions per trajectory: {splits}", (f"{_T}/{{split}}/activation_mean",)),
        keys.Chart("Linear-region changes per trajectory: {splits}", (f"{_T}/{{split}}/region_changes_mean",)),
        keys.Chart("Prediction changes per trajectory: {splits}", (f"{_T}/{{split}}/prediction_mean",)),
        keys.Chart("Transitions near the anchors / elsewhere: {splits}", (f"{_T}/{{split}}/near_anchor_ratio",)),
    ),
    layout_splits=(keys.VAL, keys.TRAIN, keys.TEST),
    split_words={_R: "random (off-data)"},
    full_options={"num_trajectories": 4, "num_points": 24, "num_samples": 40, "splits": ("val", "train")},
    report_arrays={  # the val arrays have bare names (keys.transition_array)
        f"{_T}/{keys.VAL}/activation": "activation",
        f"{_T}/{{split}}/activation": "{split}_activation",
        f"{_T}/{_R}/activation": keys.transition_array(_R, "activation"),
    },
    # its own figure draws the declared charts from the per-trajectory counts (the counts' means are not stored)
    report_figures=("transitions", "histograms"),
)
