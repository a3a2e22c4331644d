"""The joint probe set's stiffness for :class:`~lightning_sensitivity.callbacks.StiffnessMonitor`: one Gram call
built once; under DDP the functional layer shares its rows between the ranks
(:mod:`~lightning_sensitivity.functional.gram.distributed`) over the exchange the monitor's lockstep provides."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import stiffness_from_gram
from lightning_sensitivity.functional.gram import build_gram_call, gram_and_norms
from lightning_sensitivity.functional.gram.distributed import shared_gram

__all__ = ["joint_stiffness"]


def joint_stiffness(
    monitor: Any,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kwargs: dict[str, Tensor],
    progress: ProgressFactory,
) -> Any:
    """Stiffness of the joint probe set; under DDP each rank forms its share of the Gram's rows."""
    shard, exchange = monitor.shard_exchange(inputs.shape[0])
    with progress("per-example gradients") as bar:
        call = build_gram_call(
            model, inputs, targets, loss_fn=monitor.loss_fn, chunk_size=monitor.chunk_size, progress=bar,
            model_kwargs=kwargs or None, sketch_dim=monitor.sketch_dim, sketch_seed=monitor.sketch_seed,
        )  # fmt: skip
        if shard.world_size == 1:  # one process: the whole Gram at once
            gram, sq, _ = gram_and_norms(call)
        else:
            gram, sq = shared_gram(call, shard, exchange)
    return stiffness_from_gram(gram, sq, sq, self_pairs=True)
