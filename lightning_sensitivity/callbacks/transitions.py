"""``TransitionMonitor``: linear-region and prediction transitions along ellipses through the data (Novak et al.)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_sensitivity.callbacks._data import VAL
from lightning_sensitivity.callbacks._progress import ProgressFactory
from lightning_sensitivity.callbacks.base import Measurement, SensitivityMonitor
from lightning_sensitivity.functional import ellipse_trajectories, transition_counts
from lightning_sensitivity.probes import ProbeSet

PREFIX = "sensitivity/transitions/val"


class TransitionMonitor(SensitivityMonitor):
    """Count how often the activation pattern and the prediction change along closed trajectories through the data.

    Each trajectory is the ellipse through three validation probe points (triples drawn with the monitor's ``seed``,
    fixed for the run), sampled at ``num_points`` points (:func:`~lightning_sensitivity.functional.
    ellipse_trajectories`); :func:`~lightning_sensitivity.functional.transition_counts` then counts, in eval mode,
    the changes between consecutive points. Novak et al. (2018) use the number of transitions as a measure of how
    finely the network carves up the input space near the data. Models without ReLU-family units have no
    activation pattern: the monitor then warns once and logs the prediction changes only.

    Logged scalars (at ``trainer.global_step``), means over trajectories:

    - ``sensitivity/transitions/val/activation_mean``: summed Hamming distances between consecutive patterns
    - ``sensitivity/transitions/val/region_changes_mean``: consecutive pairs in different linear regions
    - ``sensitivity/transitions/val/prediction_mean``: consecutive pairs with different predicted classes

    TensorBoard (rank 0): histogram ``sensitivity/transitions/val/activation``. Artifact
    ``{log_dir}/sensitivity/transitions/epoch_XXXX.npz`` with per-trajectory ``activation``, ``region_changes``,
    ``prediction`` and the probe positions of the anchors ``anchor_indices`` ``[K, 3]``.

    Args:
        num_trajectories: number of ellipses ``K``.
        num_points: points per ellipse (at least 3; a multiple of 3 puts all anchors on the sampled points).
        **kwargs: the common arguments of :class:`SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example::

        trainer = Trainer(callbacks=[TransitionMonitor(num_trajectories=16, num_points=128, every_n_epochs=2)])
    """

    quantity = "transitions"

    def __init__(self, *, num_trajectories: int = 16, num_points: int = 128, **kwargs: Any) -> None:
        for name, value, minimum in (("num_trajectories", num_trajectories, 1), ("num_points", num_points, 3)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` expected an int >= {minimum}, got {type(value).__name__} {value!r}")
            if value < minimum:
                raise ValueError(f"`{name}` expected an int >= {minimum}, got {value}")
        self.num_trajectories = num_trajectories
        self.num_points = num_points
        super().__init__(**kwargs)

    def _state_key_args(self) -> dict[str, Any]:
        return {**super()._state_key_args(), "num_trajectories": self.num_trajectories, "num_points": self.num_points}

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "num_trajectories": self.num_trajectories, "num_points": self.num_points}

    def anchor_indices(self, num_probe: int) -> torch.Tensor:
        """``[K, 3]`` positions in the val probe set of each trajectory's three anchors (seeded, distinct per row)."""
        if num_probe < 3:
            raise ValueError(f"the val probe set expected at least 3 examples for ellipse anchors, got {num_probe}")
        gen = torch.Generator().manual_seed(self.seed % 2**63)
        return torch.stack([torch.randperm(num_probe, generator=gen)[:3] for _ in range(self.num_trajectories)])

    def _compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        val = probes[VAL]
        anchors_idx = self.anchor_indices(len(val))
        trajectories = ellipse_trajectories(val.inputs[anchors_idx.to(val.inputs.device)], self.num_points)
        with progress("transitions") as bar:
            counts = transition_counts(model, trajectories, chunk_size=self.chunk_size, progress=bar)
        result = Measurement(meta={"num_points": self.num_points, "num_units": counts.num_units})
        prediction = counts.prediction.cpu()
        result.arrays.update(prediction=prediction, anchor_indices=anchors_idx)
        result.scalars[f"{PREFIX}/prediction_mean"] = float(prediction.double().mean())
        if counts.num_units == 0:
            self._warn_once(
                "no ReLU units",
                f"{type(self).__name__}: the model has no recognised ReLU-family unit (nn.ReLU, F.relu, LeakyReLU, "
                "ReLU6, PReLU, ...), so it has no activation pattern; only prediction changes are logged. Use "
                "JacobianNormMonitor for smooth non-linearities.",
            )
            return result
        activation, region = counts.activation.cpu(), counts.region_changes.cpu()
        result.arrays.update(activation=activation, region_changes=region)
        result.scalars[f"{PREFIX}/activation_mean"] = float(activation.double().mean())
        result.scalars[f"{PREFIX}/region_changes_mean"] = float(region.double().mean())
        result.histograms[f"{PREFIX}/activation"] = activation.double()
        return result
