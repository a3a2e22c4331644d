"""Progress of long measurements: a ``tqdm`` bar that only appears when a measurement takes more than ~2 s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

Progress = Callable[[int, int], None]
#: ``factory(part) -> progress`` (a context manager called as ``progress(done, total)``) handed to :meth:`compute`.
ProgressFactory = Callable[[str], "MeasurementProgress"]

# Seconds before a bar is shown: short measurements stay silent, long ones are visibly alive.
DELAY = 2.0


class MeasurementProgress:
    """``progress(done, total)`` for the functional layer, drawing a delayed ``tqdm`` bar; use as a context manager.

    The bar is created when the context is entered, so the delay counts from the start of the computation, and it is
    removed when the context exits (``leave=False``) so it does not clutter the trainer's own progress bar.
    """

    def __init__(self, description: str, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> MeasurementProgress:
        if self.enabled:
            self._bar = tqdm(total=None, desc=self.description, delay=DELAY, leave=False, dynamic_ncols=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)


def progress_factory(prefix: str, enabled: bool) -> ProgressFactory:
    """``factory(part) -> MeasurementProgress`` labelled ``"{prefix}: {part}"``."""

    def factory(part: str) -> MeasurementProgress:
        return MeasurementProgress(f"{prefix}: {part}", enabled)

    return factory
