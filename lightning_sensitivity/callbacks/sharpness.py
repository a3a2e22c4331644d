"""``SharpnessMonitor``: how sharp the minimum is -- the loss Hessian's top eigenvalue and trace, the Gauss-Newton
trace -- on fixed probe sets (Keskar et al. 2017; Jiang et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_bool, check_int, check_loss_fn, check_number, describe
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor, model_kwargs, probe_shard
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional.sharpness import (
    gauss_newton_trace_per_example,
    hessian_top_eigenvalue,
    hutchinson_samples,
    mean_loss,
    trace_estimate,
)
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

SPLITS = (TRAIN, VAL)


class SharpnessMonitor(SensitivityMonitor):
    r"""Log the sharpness of the mean probe-set loss :math:`L(\theta)` at the current weights.

    Sharpness-based measures ranked among the best predictors of generalization in Jiang et al. (2020, "Fantastic
    generalization measures and where to find them"); Keskar et al. (2017) tied sharp minima to large-batch
    training's generalization gap. For each probe split the monitor logs, over all trainable parameters and in eval
    mode (training is untouched, bitwise):

    - ``sensitivity/sharpness/{split}/top_eigenvalue``: the Hessian's largest eigenvalue by Lanczos on
      Hessian-vector products (:func:`~lightning_sensitivity.functional.hessian_top_eigenvalue`), with
      ``.../top_eigenvalue_residual``, the residual norm bounding its error (an estimate unless it is ~0);
    - ``sensitivity/sharpness/{split}/hessian_trace`` and ``.../hessian_trace_se``: Hutchinson's estimate of the
      trace and its standard error (an estimate);
    - ``sensitivity/sharpness/{split}/gauss_newton_trace``: the exact trace of the generalised Gauss-Newton matrix
      (for cross-entropy the Fisher information of the predictive distribution);
    - ``sensitivity/sharpness/{split}/loss``: the mean loss they are computed on.

    Cost per measurement and split, in Hessian-vector products over the probe set (each about 2-4 forward+backward
    passes, ``docs/performance.md``): up to ``num_iterations`` + ``num_vectors``, plus the Gauss-Newton trace's
    per-example Jacobians (``C`` backward passes per example). Under DDP the Hutchinson vectors and the Gauss-Newton
    examples are shared between the ranks; the Lanczos iteration is sequential, so every rank runs it whole (the
    same numbers, from the same seed). Artifact ``{log_dir}/sensitivity/sharpness/epoch_XXXX.npz``: the scalars as
    ``{split}_{stat}``, ``{split}_ritz_values``, ``{split}_hutchinson_samples`` and
    ``{split}_gauss_newton_per_example``.

    Args:
        loss_fn: ``loss_fn(logits [n, C], targets [n])`` returning the batch mean (default cross-entropy).
        splits: probe sets to measure, from ``("train", "val")`` (default the training probe set: sharpness of the
            training loss, as in the papers).
        num_iterations: most Lanczos iterations (Hessian-vector products) for the top eigenvalue.
        tol: relative residual at which Lanczos stops early.
        num_vectors: Hutchinson vectors for the trace (0: no Hessian trace).
        gauss_newton: also log the exact Gauss-Newton trace.
        **kwargs: the common arguments of :class:`SensitivityMonitor`; ``seed`` also seeds the random vectors
            (private generators).

    Raises:
        TypeError / ValueError: a bad argument, naming it.

    Example::

        trainer = Trainer(callbacks=[SharpnessMonitor(num_samples=512, log_spaced=True)])
    """

    quantity = keys.SHARPNESS
    needs_parameter_gradients = True
    state_fields = ("num_samples", "seed", "splits")
    differentiates_inputs = False

    def __init__(
        self,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        splits: Sequence[str] = (TRAIN,),
        num_iterations: int = 20,
        tol: float = 1e-3,
        num_vectors: int = 16,
        gauss_newton: bool = True,
        **kwargs: Any,
    ) -> None:
        self.loss_fn = check_loss_fn(loss_fn)
        if isinstance(splits, (str, bytes)) or not isinstance(splits, Sequence):
            raise TypeError(f"`splits` expected a sequence of names from {SPLITS}, got {describe(splits)}")
        if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
            raise ValueError(f"`splits` expected distinct names from {SPLITS}, got {list(splits)!r}")
        self.splits = tuple(splits)
        self.num_iterations = check_int(num_iterations, "num_iterations", minimum=1)
        self.tol = check_number(tol, "tol", low=0.0)
        self.num_vectors = check_int(num_vectors, "num_vectors", minimum=0)
        self.gauss_newton = check_bool(gauss_newton, "gauss_newton")
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset(self.splits), frozenset()

    @override
    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "splits": self.splits,
            "loss_fn": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            "num_iterations": self.num_iterations,
            "tol": self.tol,
            "num_vectors": self.num_vectors,
            "gauss_newton": self.gauss_newton,
        }

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        result = Measurement(meta={"splits": list(self.splits)})
        for split in self.splits:
            self._measure_split(result, model, probes[split], split, progress)
        return result

    def _measure_split(
        self, result: Measurement, model: nn.Module, probe: ProbeSet, split: str, progress: ProgressFactory
    ) -> None:
        common = {"loss_fn": self.loss_fn, "chunk_size": self.chunk_size, **model_kwargs(probe)}
        stats: dict[str, float] = {"loss": mean_loss(model, probe.inputs, probe.targets, **common)}
        with progress(f"{split} Hessian top eigenvalue") as bar:
            top = hessian_top_eigenvalue(
                model, probe.inputs, probe.targets, num_iterations=self.num_iterations, tol=self.tol,
                seed=self.seed, progress=bar, **common,
            )  # fmt: skip
        stats.update(top_eigenvalue=top.value, top_eigenvalue_residual=top.residual)
        result.arrays[keys.split_array(split, "ritz_values")] = top.ritz_values
        if self.num_vectors:

            def quadratic_forms(index: slice | Tensor) -> dict[str, Tensor]:
                # Vector k is drawn from its own generator: each rank computes its share of the same estimate.
                ids = list(range(self.num_vectors))[index] if isinstance(index, slice) else index.tolist()
                with progress(f"{split} Hessian trace") as bar:
                    samples = hutchinson_samples(
                        model, probe.inputs, probe.targets, ids, seed=self.seed, progress=bar, **common
                    )
                return {"samples": samples}

            est = trace_estimate(self.sharded(quadratic_forms, self.num_vectors)["samples"])
            stats.update(hessian_trace=est.value, hessian_trace_se=est.standard_error)
            result.arrays[keys.split_array(split, "hutchinson_samples")] = est.samples
        if self.gauss_newton:

            def gn_terms(index: slice | Tensor) -> dict[str, Tensor]:
                part = probe_shard(probe, index)
                with progress(f"{split} Gauss-Newton trace") as bar:
                    terms = gauss_newton_trace_per_example(
                        model, part.inputs, part.targets, loss_fn=self.loss_fn, chunk_size=self.chunk_size,
                        progress=bar, **model_kwargs(part),
                    )  # fmt: skip
                return {"terms": terms}

            terms = self.sharded(gn_terms, len(probe))["terms"]
            stats["gauss_newton_trace"] = float(terms.mean())
            result.arrays[keys.split_array(split, "gauss_newton_per_example")] = terms
        for stat, value in stats.items():
            if value == value:  # the standard error of a single vector is NaN: left out
                result.scalars[keys.metric(keys.SHARPNESS, split, stat)] = value
            result.arrays[keys.split_array(split, stat)] = value
