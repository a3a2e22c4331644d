"""``InputGradientNormMonitor``: the norm of each probe example's loss gradient with respect to its input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_choice, check_loss_fn
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor, model_kwargs, probe_shard
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import train_val_ratio
from lightning_sensitivity.functional.input_gradient_norm import (
    METHODS,
    NORM_STATS,
    QUANTITY,
    input_gradient_norm,
    input_gradient_norm_summary,
)
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

__all__ = ["InputGradientNormMonitor"]


class InputGradientNormMonitor(SensitivityMonitor):
    r"""Log the per-example input gradient norm of the loss :math:`\|\partial \ell(f(x_i), y_i) / \partial x_i\|_2`.

    Computed in eval mode by :func:`~lightning_sensitivity.functional.input_gradient_norm` on the val probe set and,
    when the trainer has training data, a train probe set. Under DDP each rank evaluates its shard of every probe set.
    With ``embed_fn`` (token ids) the gradient is taken with respect to the embedding output; integer inputs without
    one are refused (they have no gradient), as :class:`JacobianNormMonitor` does.

    Tags ``sensitivity/input_gradient_norm/{val,train}/{mean,median,p90}`` (``test`` under ``trainer.test``),
    ``.../{val,train}/class_{c}`` (mean norm per class, for integer class targets) and ``.../train_val_ratio`` (train
    mean / val mean); histograms ``sensitivity/input_gradient_norm/{val,train}``; per epoch the artifact arrays
    ``{val,train}_norms`` (per example), ``{val,train}_labels``, the statistics and ``train_val_ratio``.

    Args:
        loss_fn: ``loss_fn(logits, targets)``, the loss differentiated (default cross-entropy), evaluated on each
            example as a batch of one.
        method: ``"batched"`` (default, one backward pass per chunk; exact for models whose examples do not interact
            in eval mode) or ``"per_example"`` (``vmap(grad)``, no such assumption); see the function.
        **kwargs: the common arguments of :class:`~lightning_sensitivity.callbacks.SensitivityMonitor`.

    Raises:
        TypeError / ValueError: a bad argument, naming it and the value got.

    Example::

        from lightning.pytorch import Trainer
        from lightning_sensitivity import InputGradientNormMonitor

        trainer = Trainer(callbacks=[InputGradientNormMonitor(num_samples=512)])
    """

    quantity = QUANTITY.name
    state_fields = ("num_samples", "seed", "loss_fn")

    def __init__(
        self,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        method: str = "batched",
        **kwargs: Any,
    ) -> None:
        self.loss_fn = check_loss_fn(loss_fn)
        self.method = check_choice(method, "method", METHODS)
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset({VAL}), frozenset({TRAIN})

    @override
    def config(self) -> dict[str, Any]:
        loss = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return {**super().config(), "loss_fn": loss, "method": self.method}

    def _norms(self, model: nn.Module, probe: ProbeSet, progress: ProgressFactory, split: str) -> Tensor:
        def shard(index: slice | Tensor) -> dict[str, Tensor]:
            part = probe_shard(probe, index)
            with progress(f"{split} input gradient norms") as bar:
                norms = input_gradient_norm(
                    model, part.inputs, part.targets, loss_fn=self.loss_fn, method=self.method,
                    chunk_size=self.chunk_size, progress=bar, **model_kwargs(part),
                )  # fmt: skip
            return {"norms": norms.detach().double().cpu()}

        return self.sharded(shard, len(probe))["norms"]  # each rank its shard of the probe set under DDP

    def _split(self, result: Measurement, split: str, probe: ProbeSet, norms: Tensor) -> float:
        classes = probe.class_targets
        targets = probe.targets.cpu()
        summary = input_gradient_norm_summary(norms, targets if classes else None)
        for stat in NORM_STATS:
            result.scalars[keys.metric(self.quantity, split, stat)] = summary[stat]
            result.arrays[keys.split_array(split, stat)] = summary[stat]
        if classes:
            per_class = summary["per_class"]
            for c in targets.unique().tolist():
                result.scalars[keys.metric(self.quantity, split, f"class_{c}")] = float(per_class[c])
        result.histograms[keys.metric(self.quantity, split)] = norms
        result.arrays[keys.split_array(split, "norms")] = norms
        result.arrays[keys.split_array(split, "labels")] = targets
        return summary["mean"]

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        result = Measurement(meta={"loss_fn": self.config()["loss_fn"], "method": self.method})
        val_mean = self._split(result, VAL, probes[VAL], self._norms(model, probes[VAL], progress, VAL))
        if not probes[VAL].class_targets:
            self.warn_once(
                "not classes",
                f"{type(self).__name__}: the targets are not integer class indices [N] (got {probes[VAL].targets.dtype}"
                f" of shape {tuple(probes[VAL].targets.shape)}), so per-class norms are not logged.",
            )
        if TRAIN in probes:
            train = self.attempt(
                "the train input gradient norms", lambda: self._norms(model, probes[TRAIN], progress, TRAIN), epoch
            )
            if train is not None:
                ratio = train_val_ratio(self._split(result, TRAIN, probes[TRAIN], train), val_mean)
                if ratio is not None:
                    result.scalars[keys.metric(self.quantity, "train_val_ratio")] = ratio
                    result.arrays["train_val_ratio"] = ratio
        return result
