"""``LogitMarginMonitor``: the margin between the top two logits on the probe sets, shared between DDP ranks."""

from __future__ import annotations

from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor, model_kwargs, probe_shard
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional.logit_margin import QUANTITY, logit_margin, logit_margin_summary
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

__all__ = ["LogitMarginMonitor"]


class LogitMarginMonitor(SensitivityMonitor):
    """Log the mean, median and 10th percentile of the logit margin (top-1 minus top-2 logit) per probe set.

    Tags ``sensitivity/logit_margin/{val,train}/{mean,median,p10}`` (``test`` under ``trainer.test``), the histogram
    ``sensitivity/logit_margin/{val,train}`` and per epoch the artifact arrays ``{val,train}_margins`` (per example),
    ``{val,train}_labels`` and the statistics. The train probe set is measured when the trainer has training data.
    Forward passes only; under DDP each rank evaluates its shard of every probe set.

    Args:
        **kwargs: the common arguments of :class:`~lightning_sensitivity.callbacks.SensitivityMonitor`.

    Example::

        from lightning.pytorch import Trainer
        from lightning_sensitivity import LogitMarginMonitor

        trainer = Trainer(callbacks=[LogitMarginMonitor(num_samples=512)])
    """

    quantity = QUANTITY.name
    state_fields = ("num_samples", "seed")
    differentiates_inputs = False

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset({VAL}), frozenset({TRAIN})

    def _margins(self, model: nn.Module, probe: ProbeSet) -> Tensor:
        def shard(index: slice | Tensor) -> dict[str, Tensor]:
            part = probe_shard(probe, index)
            margins = logit_margin(model, part.inputs, chunk_size=self.chunk_size, **model_kwargs(part))
            return {"margins": margins.detach().double().cpu()}

        return self.sharded(shard, len(probe))["margins"]  # each rank its shard of the probe set under DDP

    def _split(self, result: Measurement, split: str, probe: ProbeSet, margins: Tensor) -> None:
        for stat, value in logit_margin_summary(margins).items():
            result.scalars[keys.metric(self.quantity, split, stat)] = value
            result.arrays[keys.split_array(split, stat)] = value
        result.histograms[keys.metric(self.quantity, split)] = margins
        result.arrays[keys.split_array(split, "margins")] = margins
        result.arrays[keys.split_array(split, "labels")] = probe.targets.cpu()

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        result = Measurement()
        with progress("val logit margins"):
            self._split(result, VAL, probes[VAL], self._margins(model, probes[VAL]))
        if TRAIN in probes:
            margins = self.attempt("the train logit margins", lambda: self._margins(model, probes[TRAIN]), epoch)
            if margins is not None:
                self._split(result, TRAIN, probes[TRAIN], margins)
        return result
