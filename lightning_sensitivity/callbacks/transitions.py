"""``TransitionMonitor``: linear-region and prediction transitions along ellipses through the data (Novak et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_sensitivity._checks import check_int
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import ellipse_trajectories, transition_counts
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

PREFIX = "sensitivity/transitions"
SPLITS = (VAL, TRAIN)


class TransitionMonitor(SensitivityMonitor):
    """Count how often the activation pattern and the prediction change along closed trajectories through the data.

    Each trajectory is the ellipse through three validation probe points (triples drawn with the monitor's ``seed``,
    fixed for the run; with ``splits=("val", "train")`` also through training probe points), sampled at ``num_points`` points (:func:`~lightning_sensitivity.functional.
    ellipse_trajectories`); :func:`~lightning_sensitivity.functional.transition_counts` then counts, in eval mode,
    the changes between consecutive points. Novak et al. (2018) use the number of transitions as a measure of how
    finely the network carves up the input space near the data. Models without ReLU-family units have no
    activation pattern: the monitor then warns once and logs the prediction changes only.

    Logged scalars (at ``trainer.global_step``), means over trajectories:

    - ``sensitivity/transitions/val/activation_mean``: summed Hamming distances between consecutive patterns
    - ``sensitivity/transitions/val/region_changes_mean``: consecutive pairs in different linear regions
    - ``sensitivity/transitions/val/prediction_mean``: consecutive pairs with different predicted classes
    - the same three under ``sensitivity/transitions/train/`` when ``"train"`` is in ``splits``

    TensorBoard (rank 0): histogram ``sensitivity/transitions/val/activation``. Artifact
    ``{log_dir}/sensitivity/transitions/epoch_XXXX.npz`` with per-trajectory ``activation``, ``region_changes``,
    ``prediction`` and the probe positions of the anchors ``anchor_indices`` ``[K, 3]`` (for the training split the
    same arrays prefixed ``train_``).

    Args:
        num_trajectories: number of ellipses ``K``.
        num_points: points per ellipse (at least 3; a multiple of 3 puts all anchors on the sampled points).
        splits: which probe sets the ellipses go through: ``("val",)`` (default) or ``("val", "train")`` to compare
            held-out with training points (Novak et al. find fewer transitions near training data).
        **kwargs: the common arguments of :class:`SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example::

        trainer = Trainer(callbacks=[TransitionMonitor(num_trajectories=16, num_points=128, every_n_epochs=2)])
    """

    quantity = "transitions"
    state_fields = ("num_samples", "seed", "num_trajectories", "num_points", "splits")

    def __init__(
        self, *, num_trajectories: int = 16, num_points: int = 128, splits: Sequence[str] = (VAL,), **kwargs: Any
    ) -> None:
        check_int(num_trajectories, "num_trajectories", minimum=1)
        check_int(num_points, "num_points", minimum=3)
        if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits:
            raise TypeError(f"`splits` expected a non-empty sequence out of {SPLITS}, got {splits!r}")
        if any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits) or VAL not in splits:
            raise ValueError(f"`splits` expected ('val',) or ('val', 'train'), got {tuple(splits)!r}")
        self.num_trajectories = num_trajectories
        self.num_points = num_points
        self.splits = tuple(s for s in SPLITS if s in splits)
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        # Training trajectories are required when asked for: setup then names the missing training source.
        return frozenset(self.splits), frozenset()

    @override
    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_trajectories": self.num_trajectories, "num_points": self.num_points,
                "splits": ",".join(self.splits)}  # fmt: skip

    def anchor_indices(self, num_probe: int) -> torch.Tensor:
        """``[K, 3]`` positions in a probe set of each trajectory's three anchors (seeded, distinct per row)."""
        if num_probe < 3:
            raise ValueError(f"the probe set expected at least 3 examples for ellipse anchors, got {num_probe}")
        gen = torch.Generator().manual_seed(self.seed % 2**63)
        return torch.stack([torch.randperm(num_probe, generator=gen)[:3] for _ in range(self.num_trajectories)])

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        result = Measurement(meta={"num_points": self.num_points, "splits": list(self.splits)})
        for split in self.splits:
            self._measure_split(model, split, probes[split], progress, result)
        return result

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
                model, trajectories, chunk_size=self.chunk_size, progress=bar, model_kwargs=kwargs or None
            )
        out = {"prediction": counts.prediction.cpu()}
        out["num_units"] = torch.full_like(out["prediction"], counts.num_units, dtype=torch.long)
        if counts.num_units:
            out.update(activation=counts.activation.cpu(), region_changes=counts.region_changes.cpu())
        return out

    def _measure_split(
        self, model: nn.Module, split: str, probe: ProbeSet, progress: ProgressFactory, result: Measurement
    ) -> None:
        anchors_idx = self.anchor_indices(len(probe))
        trajectories = ellipse_trajectories(probe.inputs[anchors_idx.to(probe.inputs.device)], self.num_points)
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
        prefix, array = f"{PREFIX}/{split}", "" if split == VAL else f"{split}_"
        prediction = counts["prediction"]
        result.arrays.update({f"{array}prediction": prediction, f"{array}anchor_indices": anchors_idx})
        result.scalars[f"{prefix}/prediction_mean"] = float(prediction.double().mean())
        if num_units == 0:
            self.warn_once(
                "no ReLU units",
                f"{type(self).__name__}: the model has no recognised ReLU-family unit (nn.ReLU, F.relu, LeakyReLU, "
                "ReLU6, PReLU, ...), so it has no activation pattern; only prediction changes are logged. Use "
                "JacobianNormMonitor for smooth non-linearities.",
            )
            return
        activation, region = counts["activation"], counts["region_changes"]
        result.arrays.update({f"{array}activation": activation, f"{array}region_changes": region})
        result.scalars[f"{prefix}/activation_mean"] = float(activation.double().mean())
        result.scalars[f"{prefix}/region_changes_mean"] = float(region.double().mean())
        result.histograms[f"{prefix}/activation"] = activation.double()
