"""What one measurement produces, and the warning a failed one raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Measurement", "SensitivityWarning"]


class SensitivityWarning(UserWarning):
    """A measurement failed or produced non-finite values; training goes on."""


@dataclass
class Measurement:
    """What one measurement produced. Keys of ``scalars``/``histograms``/``figures`` are full tags
    (build them with :mod:`lightning_sensitivity.keys`).

    Attributes:
        scalars: tag -> value, logged to every logger and ``trainer.callback_metrics``.
        histograms: tag -> values, written by rank 0 to every logger that takes histograms.
        figures: ``(tag, make)`` pairs; ``make()`` returns an RGB array ``[H, W, 3]`` (or a matplotlib figure) and
            is only called when the schedule draws images, on rank 0.
        arrays: artifact arrays (NPZ keys) of this measurement.
        meta: JSON-able facts stored beside the arrays (class names, options).
    """

    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    figures: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def renamed(self, rename: Callable[[str], str]) -> Measurement:
        """The same measurement with every tag passed through ``rename`` (e.g. ``val`` -> ``test``)."""
        return Measurement(
            scalars={rename(k): v for k, v in self.scalars.items()},
            histograms={rename(k): v for k, v in self.histograms.items()},
            figures=[(rename(tag), make) for tag, make in self.figures],
            arrays=self.arrays,
            meta=self.meta,
        )
