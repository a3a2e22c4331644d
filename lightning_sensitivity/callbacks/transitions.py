"""``TransitionMonitor``: linear-region and prediction transitions along ellipses through the data (Novak et al.)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_int
from lightning_sensitivity.callbacks._heads import head_kind, output_width
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import (
    ellipse_trajectories,
    shuffled_anchors,
    transition_counts,
    transition_summary,
)
from lightning_sensitivity.functional.transition_density import DEFAULT_HALF_WIDTH
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

RANDOM = "random"
SPLITS = (VAL, TRAIN, RANDOM)
# A count this close to the number of segments (every pair of neighbours differs) no longer resolves anything.
SATURATION = 0.95
#: ``num_trajectories=None``: the most trajectories (the reference MLP gets these) ...
MAX_TRAJECTORIES = 16
#: ... and the fewest (models with very many ReLU units) ...
MIN_TRAJECTORIES = 4
#: ... between which ``K = UNIT_BUDGET // (num_points * units)``: about ``2**28`` unit evaluations per measurement,
#: which gives 5 trajectories of 960 points for the CIFAR ``SmallCNN`` (49 280 units; its forward passes cost 3.2x
#: fewer than with 16, ``docs/performance.md``).
UNIT_BUDGET = 2**28
#: ... and, in a fit, at most as many as keep the points of all its measurements within this share of the fit's
#: training work (a training example counted as 3 forward passes, one forward and a backward of about two): a
#: measurement's forward passes cost what the training's do per example, so this bounds the monitor's share of the
#: fit whatever the model. 3 epochs of 60 000 examples measured 4 times give 4 trajectories of 960 points; 100
#: epochs measured log-spaced give 16.
RUN_SHARE = 0.03


def sized_trajectories(num_points: int, num_units: int, run_points: int | None = None) -> int:
    """The default number of trajectories for a model with ``num_units`` ReLU-family units (see
    :data:`UNIT_BUDGET`; :data:`MAX_TRAJECTORIES` for a model without any), at most ``run_points // num_points``
    when a fit allows a measurement ``run_points`` points (:func:`run_points`); never fewer than
    :data:`MIN_TRAJECTORIES`."""
    count = MAX_TRAJECTORIES if num_units <= 0 else UNIT_BUDGET // (num_points * num_units)
    if run_points is not None:
        count = min(count, run_points // num_points)
    return max(MIN_TRAJECTORIES, min(MAX_TRAJECTORIES, count))


def run_points(
    examples_per_epoch: int | None, max_epochs: int | None, measurements: int, share: float | None = None
) -> int | None:
    """The points one measurement may evaluate so that the fit's ``measurements`` stay within :data:`RUN_SHARE`
    of its training forward passes (``3 * examples_per_epoch * max_epochs``); None when the fit's length is not
    known (an iterable dataset, ``max_epochs=-1``)."""
    if not examples_per_epoch or not max_epochs or max_epochs < 0 or measurements < 1:
        return None
    return int((RUN_SHARE if share is None else share) * 3 * examples_per_epoch * max_epochs / measurements)


class TransitionMonitor(SensitivityMonitor):
    """Count how often the activation pattern and the prediction change along closed trajectories through the data.

    Each trajectory is the ellipse through three validation probe points (triples drawn with the monitor's ``seed``,
    fixed for the run; with ``"train"`` in ``splits`` also through training probe points), sampled at
    ``num_points`` points (:func:`~lightning_sensitivity.functional.ellipse_trajectories`);
    :func:`~lightning_sensitivity.functional.transition_counts` then counts, in eval mode, the changes between
    consecutive points. With ``"random"`` in ``splits`` the same validation triples are used with each anchor's
    pixels (features) shuffled within the example by a generator seeded with ``seed``
    (:func:`~lightning_sensitivity.functional.shuffled_anchors`): the anchors keep their intensity histograms but
    leave the data manifold, which is Novak et al.'s "away from the data" comparison (Sec. 4.1). Novak et al. (2018)
    use the number of transitions as a measure of how finely the network carves up the input space near the data. Models
    without ReLU-family units have no activation pattern: the monitor then warns once and logs the prediction changes
    only.

    Logged scalars (at the step of Lightning's epoch-end metrics), means over trajectories:

    - ``sensitivity/transitions/val/activation_mean``: summed Hamming distances between consecutive patterns
    - ``sensitivity/transitions/val/region_changes_mean``: consecutive pairs in different linear regions
    - ``sensitivity/transitions/val/prediction_mean``: consecutive pairs with different predicted classes (the
      arg-max; for a single logit ``[N, 1]`` or a multi-label head with 0/1 targets, any output crossing 0; not
      logged for real-valued targets, where there is no predicted class)
    - ``sensitivity/transitions/val/near_anchor_ratio``: mean Hamming distance per segment within
      ``near_anchor_fraction`` of the period around the three anchors, divided by the mean elsewhere
      (:func:`~lightning_sensitivity.functional.near_anchor_ratio`; < 1: fewer transitions near the data)
    - the same under ``sensitivity/transitions/train/`` and ``sensitivity/transitions/random/`` for those splits

    When, on average, at least 95 % of a split's segments change linear region, the count is saturated (the
    ellipses are sampled too coarsely for this network to resolve its regions): the monitor warns once, suggesting
    more ``num_points``.

    TensorBoard (rank 0): histogram ``sensitivity/transitions/val/activation``. Artifact
    ``{log_dir}/sensitivity/transitions/epoch_XXXX.npz`` with per-trajectory ``activation``, ``region_changes``,
    ``prediction``, the per-segment Hamming distances ``segments`` ``[K, P]`` (segment ``j`` joins point ``j`` and
    ``j + 1``; anchors at points 0, P/3, 2P/3) and the probe positions of the anchors ``anchor_indices`` ``[K, 3]``
    (for the other splits the same arrays prefixed ``train_`` / ``random_``).

    Args:
        num_trajectories: number of ellipses ``K``; None (default): sized to the model and the fit at the first
            measurement and kept for the run, ``K = 2**28 // (num_points * units)`` (``units``: the model's
            ReLU-family units, counted on one probe point: 16 for the reference MLP, 5 for the CIFAR ``SmallCNN``,
            4 for larger CNNs), in a fit at most as many as keep the points of all its measurements within 3 % of
            its training forward passes (:data:`RUN_SHARE`; 4 for a 3-epoch fit of 60 000 examples measured 4
            times, 16 for 100 epochs measured log-spaced), clamped to ``[4, 16]``. The counts are a mean over
            trajectories, so fewer trajectories widen its spread, not its expectation; pass an int to fix it.
        num_points: points per ellipse (at least 3; a multiple of 3 puts all anchors on the sampled points). The
            default 960 resolves the linear regions of a trained MNIST MLP with two hidden layers of 256 units
            (about half the segments change region); 128 points saturate there.
        splits: which anchors the ellipses go through, out of ``"val"`` (always), ``"train"`` (training probe
            points: Novak et al. find fewer transitions near training data) and ``"random"`` (shuffled validation
            anchors, off the data manifold).
        near_anchor_fraction: half-width, as a fraction of the ellipse's period, of the window around each anchor
            for ``near_anchor_ratio`` (default 1/24: a quarter of the ellipse is "near").
        **kwargs: the common arguments of :class:`SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example::

        monitor = TransitionMonitor(num_trajectories=16, every_n_epochs=2, splits=("val", "random"))
        trainer = Trainer(callbacks=[monitor])
    """

    quantity = "transitions"
    state_fields = ("num_samples", "seed", "num_trajectories", "num_points", "splits")

    def __init__(
        self,
        *,
        num_trajectories: int | None = None,
        num_points: int = 960,
        splits: Sequence[str] = (VAL,),
        near_anchor_fraction: float = DEFAULT_HALF_WIDTH,
        **kwargs: Any,
    ) -> None:
        check_int(num_trajectories, "num_trajectories", minimum=1, allow_none=True)
        check_int(num_points, "num_points", minimum=3)
        if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits:
            raise TypeError(f"`splits` expected a non-empty sequence out of {SPLITS}, got {splits!r}")
        if any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits) or VAL not in splits:
            raise ValueError(f"`splits` expected distinct names out of {SPLITS} including 'val', got {tuple(splits)!r}")
        if isinstance(near_anchor_fraction, bool) or not isinstance(near_anchor_fraction, (int, float)):
            raise TypeError(f"`near_anchor_fraction` expected a float, got {type(near_anchor_fraction).__name__}")
        if not 0 < near_anchor_fraction < 1 / 6:
            raise ValueError(f"`near_anchor_fraction` expected a float in (0, 1/6), got {near_anchor_fraction}")
        self.num_trajectories = num_trajectories
        self._sized: int | None = None  # num_trajectories=None: the value sized to the model, fixed for the run
        self._run_points: int | None = None  # the points a measurement of this fit may take (see `run_points`)
        self.num_points = num_points
        self.splits = tuple(s for s in SPLITS if s in splits)
        self.near_anchor_fraction = float(near_anchor_fraction)
        self._prediction: str | None = "argmax"  # how the last measurement read predictions (see compute)
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        # Training trajectories are required when asked for: setup then names the missing training source. The
        # random anchors are made from the validation probe set.
        return frozenset(s for s in self.splits if s != RANDOM), frozenset()

    @override
    def measurable(self, probes: dict[str, ProbeSet]) -> bool:
        # Under validate/test without training data the val (and random) ellipses are still measured.
        return VAL in probes

    @override
    def skipped_for(self, missing: set[str]) -> str:
        return f"the {', '.join(sorted(missing))} ellipses"

    @override
    def layout_splits(self) -> dict[str, tuple[str, ...]]:
        return {self.quantity: (*self.splits, "test")}

    @override
    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_trajectories": self.num_trajectories, "num_points": self.num_points,
                "splits": ",".join(self.splits), "near_anchor_fraction": self.near_anchor_fraction}  # fmt: skip

    def anchor_indices(self, num_probe: int, num_trajectories: int | None = None) -> torch.Tensor:
        """``[K, 3]`` positions in a probe set of each trajectory's three anchors (seeded, distinct per row).

        ``K`` is ``num_trajectories``, else the monitor's (given or sized to the model; 16 before it is sized)."""
        if num_probe < 3:
            raise ValueError(f"the probe set expected at least 3 examples for ellipse anchors, got {num_probe}")
        count = num_trajectories or self.num_trajectories or self._sized or MAX_TRAJECTORIES
        gen = torch.Generator().manual_seed(self.seed % 2**63)
        return torch.stack([torch.randperm(num_probe, generator=gen)[:3] for _ in range(count)])

    def trajectories_for(self, model: nn.Module, probe: ProbeSet) -> int:
        """The number of trajectories: the given one, or sized to ``model`` once (two forward passes of the first
        probe point count its units) and kept for the run."""
        if self.num_trajectories is not None:
            return self.num_trajectories
        if self._sized is None:
            point = probe.inputs[:1].unsqueeze(1).expand(1, 2, *probe.inputs.shape[1:])
            kwargs = {k: v[:1] for k, v in probe.model_kwargs.items()} or None
            units = transition_counts(model, point, model_kwargs=kwargs).num_units
            self._sized = sized_trajectories(self.num_points, units, self._run_points)
        return self._sized

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the measurement at initialisation, which fixes the number of trajectories for the run.
        self._run_points = self._fit_points(trainer)
        super().on_train_start(trainer, pl_module)

    def _fit_points(self, trainer: pl.Trainer) -> int | None:
        """:func:`run_points` of this fit: its training examples per epoch (all ranks) and its measurements."""
        batches = getattr(trainer, "num_training_batches", None)
        loader = getattr(trainer, "train_dataloader", None)
        batch_size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None),
                                                                    "batch_size", None)  # fmt: skip
        max_epochs = getattr(trainer, "max_epochs", None)
        if not isinstance(batches, int) or not isinstance(batch_size, int) or not isinstance(max_epochs, int):
            return None
        measurements = sum(1 for epoch in range(max(max_epochs, 0) + 1) if self._schedule(epoch))
        examples = batches * batch_size * max(int(getattr(trainer, "world_size", 1) or 1), 1)
        return run_points(examples, max_epochs, measurements)

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        num_trajectories = self.trajectories_for(model, probes[VAL])
        result = Measurement(
            meta={"num_points": self.num_points, "num_trajectories": num_trajectories, "splits": list(self.splits)}
        )
        head = head_kind(output_width(model, probes[VAL]), probes[VAL].targets)
        self._prediction = self._prediction_rule(head, probes[VAL].targets)
        result.meta["prediction"] = self._prediction
        for split in (s for s in self.splits if (VAL if s == RANDOM else s) in probes):
            probe = probes[VAL if split == RANDOM else split]
            self._measure_split(model, split, probe, progress, result, num_trajectories)
        return result

    def _prediction_rule(self, head: str, targets: torch.Tensor) -> str | None:
        """How a point's prediction is read for this output head (None: the head predicts no class), said once."""
        if head == "classes":
            return "argmax"
        if head == "values":
            self.warn_once(
                "no predicted class",
                f"{type(self).__name__}: the targets are real values (got {targets.dtype} of shape "
                f"{tuple(targets.shape)}), so the model predicts no class and prediction changes are not logged; "
                "activation and region changes are.",
            )
            return None
        self.warn_once(
            "label predictions",
            f"{type(self).__name__}: the model has {'one output' if head == 'binary' else 'multi-label outputs'} "
            f"(targets {targets.dtype} of shape {tuple(targets.shape)}): a prediction change is an output crossing 0 "
            "(a label switching on or off), not a change of the arg-max class.",
        )
        return "labels"

    def _counts(
        self,
        model: nn.Module,
        trajectories: torch.Tensor,
        split: str,
        progress: ProgressFactory,
        kwargs: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Per-trajectory counts of ``trajectories`` (a shard of them under DDP), with the unit count per row."""
        with progress(f"transitions ({split})") as bar:
            counts = transition_counts(
                model, trajectories, chunk_size=self.chunk_size, progress=bar, model_kwargs=kwargs or None,
                prediction=self._prediction or "argmax",
            )  # fmt: skip
        out = {"prediction": counts.prediction.cpu()}
        out["num_units"] = torch.full_like(out["prediction"], counts.num_units, dtype=torch.long)
        if counts.num_units:
            out.update(
                activation=counts.activation.cpu(),
                region_changes=counts.region_changes.cpu(),
                segments=counts.segments.cpu(),  # [K, P]: sharded and gathered by trajectory like the rest
            )
        return out

    def _measure_split(
        self,
        model: nn.Module,
        split: str,
        probe: ProbeSet,
        progress: ProgressFactory,
        result: Measurement,
        num_trajectories: int,
    ) -> None:
        anchors_idx = self.anchor_indices(len(probe), num_trajectories)
        inputs = probe.inputs
        if split == RANDOM:
            # Seeded apart from the triples (which are the validation ones), fixed for the run like them.
            inputs = shuffled_anchors(inputs, seed=self.seed + 1)
        trajectories = ellipse_trajectories(inputs[anchors_idx.to(inputs.device)], self.num_points)
        # Per-example model inputs (an attention mask) of a trajectory: the union of its three anchors' (elementwise
        # max), so that every position real in one anchor is attended to along the ellipse.
        kwargs = {k: v[anchors_idx.to(v.device)].amax(dim=1) for k, v in probe.model_kwargs.items()}
        counts = self.sharded(
            lambda index: self._counts(
                model, trajectories[index], split, progress, {k: v[index] for k, v in kwargs.items()}
            ),
            len(anchors_idx),
        )
        num_units = int(counts["num_units"][0])
        result.meta["num_units"] = num_units
        tag, array = partial(keys.metric, keys.TRANSITIONS, split), partial(keys.transition_array, split)
        result.arrays[array("anchor_indices")] = anchors_idx
        prediction = counts["prediction"] if self._prediction is not None else None
        if prediction is not None:
            result.arrays[array("prediction")] = prediction
        pattern = {} if num_units == 0 else {
            "activation": counts["activation"], "region_changes": counts["region_changes"],
            "segments": counts["segments"],
        }  # fmt: skip
        summary = transition_summary(
            num_points=self.num_points, prediction=prediction, near_anchor_fraction=self.near_anchor_fraction,
            **pattern,
        )  # fmt: skip
        ratio = summary.pop("near_anchor_ratio", math.nan)
        result.scalars.update({tag(stat): value for stat, value in summary.items()})
        if ratio == ratio:  # NaN: no transitions away from the anchors, nothing to compare with
            result.scalars[tag("near_anchor_ratio")] = ratio
        if num_units == 0:
            self.warn_once(
                "no ReLU units",
                f"{type(self).__name__}: the model has no recognised ReLU-family unit (nn.ReLU, F.relu, LeakyReLU, "
                "ReLU6, PReLU, ...), so it has no activation pattern; only prediction changes are logged. Use "
                "JacobianNormMonitor for smooth non-linearities.",
            )
            return
        activation, region, segments = pattern["activation"], pattern["region_changes"], pattern["segments"]
        result.arrays.update({array("activation"): activation, array("region_changes"): region,
                              array("segments"): segments.to(torch.int32)})  # fmt: skip
        result.histograms[tag("activation")] = activation.double()
        fraction = summary["region_changes_fraction"]
        if fraction >= SATURATION:
            # Beside the chart too: the run's text summary and the report say it where the counts are shown.
            result.meta.setdefault("notes", []).append(
                f"Saturated: on average {fraction:.0%} of the {self.num_points} segments of the {split!r} ellipses "
                "change linear region, so the count measures little; increase `num_points`."
            )
            self.warn_once(
                "saturated",
                f"{type(self).__name__}: on average {fraction:.0%} of the segments of the {split!r} ellipses change "
                f"linear region (num_points={self.num_points}): the counts are saturated and measure little; "
                "increase `num_points`.",
            )
