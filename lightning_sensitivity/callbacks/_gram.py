"""The joint probe set's stiffness for :class:`~lightning_sensitivity.callbacks.StiffnessMonitor`: one Gram in a
single process; under DDP each rank computes its share of the Gram's rows (exchanging layer factors when the
layerwise engine covers the model, else two-set Gram rows bounded by ``chunk_size``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_sensitivity.callbacks._distributed import PeerFailure
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import stiffness, stiffness_from_gram
from lightning_sensitivity.functional.gram import LayerwiseUnsupported, gram_and_norms
from lightning_sensitivity.functional.gram.distributed import gram_factors, gram_rows

__all__ = ["joint_stiffness"]


def joint_stiffness(
    monitor: Any,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    kwargs: dict[str, Tensor],
    progress: ProgressFactory,
) -> Any:
    """Stiffness of the joint probe set; under DDP each rank computes its share of the Gram's rows."""
    sketch = {"sketch_dim": getattr(monitor, "sketch_dim", None), "sketch_seed": getattr(monitor, "sketch_seed", 0)}
    if getattr(monitor, "_lockstep", None) is None:  # one process: the whole Gram at once
        with progress("per-example gradients") as bar:
            return stiffness(
                model, inputs, targets, loss_fn=monitor.loss_fn, chunk_size=monitor.chunk_size, progress=bar,
                model_kwargs=kwargs or None, **sketch,
            )  # fmt: skip

    n = inputs.shape[0]
    out = None
    # Sketched: each rank sketches its rows and all columns with the same seeded maps (the factors are exact).
    if monitor.chunk_size is None and not kwargs and sketch["sketch_dim"] is None:
        # Each rank the layer factors of its examples, exchanged; then each its block of rows from all factors.
        def factors_of(index: Tensor) -> dict[str, Tensor]:
            return gram_factors(model, inputs[index], targets[index], reference_rows=n, loss_fn=monitor.loss_fn)

        def rows_of(index: Tensor) -> dict[str, Tensor]:
            gram, sq = gram_rows(factors, index)
            return {"gram": gram, "sq": sq}

        try:
            factors = monitor.sharded(factors_of, n)
        except (LayerwiseUnsupported, PeerFailure):
            # The layerwise engine does not cover the model on some rank (each rank learns it at the same
            # agreement): every rank goes on to the two-set Gram below, still in lockstep. A rank that left the
            # measurement instead broke the lockstep, and the next agreement raises on every rank.
            factors = None
        if factors is not None:
            out = monitor.sharded(rows_of, n)
    if out is None:

        def rows(index: Tensor) -> dict[str, Tensor]:
            # A rank's block of Gram rows against every example (memory bounded by `chunk_size`).
            with progress("per-example gradients") as bar:
                gram, sq_rows, _ = gram_and_norms(
                    model, inputs[index], targets[index], inputs, targets, monitor.loss_fn, monitor.chunk_size, bar,
                    model_kwargs={k: v[index] for k, v in kwargs.items()} or None, model_kwargs2=kwargs or None,
                    **sketch,
                )  # fmt: skip
            return {"gram": gram, "sq": sq_rows}

        out = monitor.sharded(rows, n)
    return stiffness_from_gram(out["gram"], out["sq"], out["sq"], self_pairs=True)
