"""Chunking and progress: a measurement works through its examples ``chunk_size`` at a time.

Memory is bounded by the chunk; ``progress(done, total)`` is called after each piece.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from lightning_sensitivity._checks import check_int

Progress = Callable[[int, int], None]


def check_chunk_size(chunk_size: int | None, name: str = "chunk_size") -> None:
    check_int(chunk_size, name, minimum=1, allow_none=True)


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
