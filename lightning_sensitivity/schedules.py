"""When to measure: ``epoch -> bool`` predicates over the number of completed training epochs.

Epoch ``0`` is the initialisation (before the first optimizer step); epoch ``e + 1`` is the end of training epoch
``e``. The schedules are small picklable objects (not closures) so a callback holding one survives ``ddp_spawn`` and
checkpoint pickling, and their ``repr`` is readable in the configuration summary written to TensorBoard.

Example:
    >>> schedule = log_spaced()
    >>> [e for e in range(20) if schedule(e)]
    [0, 1, 2, 4, 8, 16]
    >>> [e for e in range(7) if every_n_epochs(3, at_init=False)(e)]
    [3, 6]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lightning_sensitivity._checks import check_bool, check_int

#: A schedule: called with the number of completed epochs, returns whether to measure at that point.
Schedule = Callable[[int], bool]

__all__ = ["Schedule", "every_n_epochs", "at_epochs", "log_spaced", "resolve_schedule"]


def _check_bool(value: object, name: str) -> None:
    check_bool(value, name)


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"a schedule expected an int epoch, got {type(epoch).__name__} {epoch!r}")
    return epoch


@dataclass(frozen=True)
class _EveryN:
    n: int | None
    at_init: bool

    def __call__(self, epoch: int) -> bool:
        epoch = _check_epoch(epoch)
        if epoch <= 0:
            return epoch == 0 and self.at_init
        return self.n is not None and epoch % self.n == 0

    def __repr__(self) -> str:
        return f"every_n_epochs({self.n}, at_init={self.at_init})"


@dataclass(frozen=True)
class _AtEpochs:
    epochs: frozenset[int]

    def __call__(self, epoch: int) -> bool:
        return _check_epoch(epoch) in self.epochs

    def __repr__(self) -> str:
        return f"at_epochs({sorted(self.epochs)})"


@dataclass(frozen=True)
class _LogSpaced:
    at_init: bool

    def __call__(self, epoch: int) -> bool:
        epoch = _check_epoch(epoch)
        if epoch <= 0:
            return epoch == 0 and self.at_init
        return epoch & (epoch - 1) == 0  # a power of two

    def __repr__(self) -> str:
        return f"log_spaced(at_init={self.at_init})"


def every_n_epochs(n: int | None, at_init: bool = True) -> Schedule:
    """Measure at epochs ``n, 2n, 3n, ...`` (and at ``0`` when ``at_init``); ``n=None`` only at initialisation.

    Raises:
        TypeError: ``n`` is not an int or None, ``at_init`` is not a bool.
        ValueError: ``n < 1``.
    """
    check_int(n, "every_n_epochs", minimum=1, allow_none=True)
    _check_bool(at_init, "at_init")
    return _EveryN(n, at_init)


def at_epochs(epochs: Iterable[int]) -> Schedule:
    """Measure exactly at the listed epochs (include ``0`` to measure the initialisation).

    Raises:
        TypeError: ``epochs`` is not an iterable of ints (a string or a single int is refused).
        ValueError: a negative epoch.
    """
    # A mapping would contribute its keys, a tensor or array its 0-d elements (and a 0-d one cannot be iterated):
    # refused here, with the argument's name, rather than half-accepted.
    if (
        isinstance(epochs, (str, bytes, Mapping))
        or not isinstance(epochs, Iterable)
        or hasattr(epochs, "__array__")
        or hasattr(epochs, "__dlpack__")
    ):
        raise TypeError(f"`epochs` expected a sequence of non-negative ints, got {type(epochs).__name__} {epochs!r}")
    values = list(epochs)
    for e in values:
        if isinstance(e, bool) or not isinstance(e, int):
            raise TypeError(
                f"`epochs` expected a sequence of non-negative ints, got an element {type(e).__name__} {e!r}"
            )
        if e < 0:
            raise ValueError(f"`epochs` expected a sequence of non-negative ints, got {values}")
    return _AtEpochs(frozenset(values))


def log_spaced(at_init: bool = True) -> Schedule:
    """Measure at epochs ``1, 2, 4, 8, ...`` (and at ``0`` when ``at_init``)."""
    _check_bool(at_init, "at_init")
    return _LogSpaced(at_init)


# ``resolve_schedule`` takes arguments named like the factories (the callbacks' keyword names), which shadow them.
_make_every_n_epochs = every_n_epochs


def resolve_schedule(
    every_n_epochs: int | None = 1,
    epochs: Sequence[int] | None = None,
    log_spaced: bool = False,
    at_init: bool = True,
) -> Schedule:
    """The schedule described by the callbacks' common arguments.

    Precedence: an explicit ``epochs`` list wins over everything (``at_init`` is then ignored: list ``0`` to measure
    the initialisation); ``log_spaced=True`` with a non-default ``every_n_epochs`` is refused (two schedules at once),
    and so is an empty ``epochs`` list (it would never measure).

    Raises:
        TypeError / ValueError: naming the offending argument.
    """
    _check_bool(log_spaced, "log_spaced")
    _check_bool(at_init, "at_init")
    every = _make_every_n_epochs(every_n_epochs, at_init)  # validated even when overridden below
    if log_spaced and every_n_epochs != 1 and epochs is None:
        raise ValueError(
            f"`every_n_epochs` expected to be left at its default with `log_spaced=True` (they are two schedules), "
            f"got every_n_epochs={every_n_epochs!r}"
        )
    if epochs is not None:
        schedule = at_epochs(epochs)
        if not schedule.epochs:  # type: ignore[attr-defined]
            raise ValueError(f"`epochs` expected a non-empty sequence of non-negative ints, got {list(epochs)!r}")
        return schedule
    if log_spaced:
        return _LogSpaced(at_init)
    return every
