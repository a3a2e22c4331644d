"""The joint probe set's stiffness for :class:`~lightning_sensitivity.callbacks.StiffnessMonitor`: one Gram call
built once; under DDP the functional layer shares its rows between the ranks
(:mod:`~lightning_sensitivity.functional.gram.distributed`) over the exchange the monitor's lockstep provides."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from torch import Tensor, nn

from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import Stiffness, StiffnessSummary, stiffness_from_gram
from lightning_sensitivity.functional.gram import GramCall, build_gram_call, gram_and_norms
from lightning_sensitivity.functional.gram.distributed import Exchange, ShardMap, shared_gram
from lightning_sensitivity.functional.stiffness_rows import shared_stiffness_summaries

if TYPE_CHECKING:  # the monitor imports this module
    from lightning_sensitivity.callbacks.stiffness import StiffnessMonitor

__all__ = ["joint_stiffness", "shared_joint_summaries"]


def _gram_call(monitor: StiffnessMonitor, model: nn.Module, inputs: Tensor, targets: Tensor,
               kwargs: dict[str, Tensor], bar: Callable[[int, int], None] | None) -> GramCall:  # fmt: skip
    """The joint probe set's Gram call, with the monitor's loss, chunking and sketch."""
    return build_gram_call(
        model, inputs, targets, loss_fn=monitor.loss_fn, chunk_size=monitor.chunk_size, progress=bar,
        model_kwargs=kwargs or None, sketch_dim=monitor.sketch_dim, sketch_seed=monitor.sketch_seed,
    )  # fmt: skip


def joint_stiffness(
    monitor: StiffnessMonitor,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kwargs: dict[str, Tensor],
    progress: ProgressFactory,
) -> Stiffness:
    """Stiffness of the joint probe set; under DDP each rank forms its share of the Gram's rows."""
    shard, exchange = monitor.shard_exchange(inputs.shape[0])
    with progress("per-example gradients") as bar:
        call = _gram_call(monitor, model, inputs, targets, kwargs, bar)
        if shard.world_size == 1:  # one process: the whole Gram at once
            gram, sq, _ = gram_and_norms(call)
        else:
            gram, sq = shared_gram(call, shard, exchange)
    return stiffness_from_gram(gram, sq, sq, self_pairs=True)


class SharedJoint:
    """The joint set's whole Gram after a shared measurement; its sign and cosine stiffness formed only if asked for
    (the summaries were computed by rows)."""

    def __init__(self, gram: Tensor, sq: Tensor) -> None:
        self.gram, self._sq = gram, sq

    @cached_property
    def _stiffness(self) -> Stiffness:
        return stiffness_from_gram(self.gram, self._sq, self._sq, self_pairs=True)

    @property
    def sign(self) -> Tensor:
        return self._stiffness.sign

    @property
    def cosine(self) -> Tensor:
        return self._stiffness.cosine


def shared_joint_summaries(
    monitor: StiffnessMonitor,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kwargs: dict[str, Tensor],
    progress: ProgressFactory,
    shard: ShardMap,
    exchange: Exchange,
    pairs: dict[str, tuple[slice, slice]],
    distance_inputs: Tensor,
    num_classes: int | None,
    class_groups: Sequence[int] | Mapping[int, int] | Tensor | None,
) -> tuple[dict[str, StiffnessSummary], SharedJoint]:
    """Under DDP: ``({group: StiffnessSummary}, joint)``, each rank having formed its rows of the Gram and summed the
    summaries over them (:func:`~lightning_sensitivity.functional.stiffness_rows.shared_stiffness_summaries`)."""
    with progress("per-example gradients") as bar:
        call = _gram_call(monitor, model, inputs, targets, kwargs, bar)
        summaries, gram, sq = shared_stiffness_summaries(
            call, shard, exchange, pairs, distance_inputs, num_classes=num_classes, class_groups=class_groups,
            num_distance_bins=monitor.num_distance_bins, distance=monitor.distance,
            critical_length_method=monitor.critical_length_method,
            same_class_critical_length=monitor.critical_length_same_class and num_classes is not None,
        )  # fmt: skip
    return summaries, SharedJoint(gram, sq)
