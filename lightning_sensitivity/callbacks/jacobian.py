"""``JacobianNormMonitor``: input-output Jacobian norms on fixed probe sets (Novak et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from lightning_sensitivity import keys
from lightning_sensitivity._checks import check_choice, check_class_names, check_int, check_names
from lightning_sensitivity.callbacks._heads import head_kind, output_width, two_class_logits
from lightning_sensitivity.callbacks.base import Measurement, ProbeSplits, SensitivityMonitor, model_kwargs, probe_shard
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import (
    jacobian_norm,
    jacobian_norm_estimate,
    jacobian_norm_summary,
    mean_standard_error,
    predict_logits,
    train_val_ratio,
)
from lightning_sensitivity.functional.jacobian import OUTPUTS
from lightning_sensitivity.keys import TRAIN, VAL
from lightning_sensitivity.probes import ProbeSet

#: From this many classes on, the exact norm (about ``C`` reverse passes per example) is warned about once, with
#: ``num_projections=`` suggested.
MANY_CLASSES = 100
#: The number of projections the warning suggests (measured at C = 1000 in ``docs/performance.md``).
SUGGESTED_PROJECTIONS = 32


class JacobianNormMonitor(SensitivityMonitor):
    r"""Log the per-example Frobenius norm of the input-output Jacobian :math:`\|\partial f(x) / \partial x\|_F`.

    Novak et al. (2018, "Sensitivity and Generalization in Neural Networks") found that this norm, measured on
    held-out points, tracks generalization and flags likely misclassifications. The norms are computed in eval mode
    through :func:`~lightning_sensitivity.functional.jacobian_norm` on a fixed, class-balanced validation probe set
    and, when training data is reachable, a training probe set. See :class:`SensitivityMonitor` for when and where
    results are written.

    Logged scalars (at the step of Lightning's epoch-end metrics):

    - ``sensitivity/jacobian_norm/val/mean``, ``.../val/median``, ``.../val/p90``
    - ``sensitivity/jacobian_norm/train/mean``, ``.../train/median``, ``.../train/p90`` (training probe set)
    - ``sensitivity/jacobian_norm/train_val_ratio``: train mean / val mean
    - ``sensitivity/jacobian_norm/val/misclassification_auroc``: AUROC of the norm as a score for "the prediction is
      wrong" (absent when all probe predictions are right, or all wrong)
    - ``sensitivity/jacobian_norm/val/class_{c}``: mean norm of the val probe points of class ``c``
    - with ``num_projections``: ``sensitivity/jacobian_norm/{val,train}/mean_stderr``, the standard error of the
      estimated mean norm due to the random projections (``sqrt(sum_i se_i^2) / N`` over the probe points' standard
      errors ``se_i``; the probe set itself is fixed, so its sampling error is not part of it)

    TensorBoard (rank 0): histograms ``sensitivity/jacobian_norm/val`` and ``.../train``; bar chart image
    ``sensitivity/jacobian_norm/val/per_class``. Artifact ``{log_dir}/sensitivity/jacobian_norm/epoch_XXXX.npz`` with
    ``val_norms``, ``val_labels``, ``val_correct``, ``train_norms``, ``train_labels``, ``train_correct`` and the
    scalars (with ``num_projections`` also the per-example standard errors ``val_stderr``, ``train_stderr``).

    Args:
        output: differentiate the ``"softmax"`` (default, as in the paper), the ``"logits"`` or the
            ``"log_softmax"``.
        num_projections: None (default): the exact norm (:func:`~lightning_sensitivity.functional.jacobian_norm`,
            about ``C`` reverse passes per example). An int ``K >= 2``: the unbiased random-projection estimate
            :func:`~lightning_sensitivity.functional.jacobian_norm_estimate` with ``K`` reverse passes per
            example (directions seeded with ``seed``, the same at every measurement), for models with hundreds or
            thousands of classes; its standard error is logged beside the mean. With ``C >= 100`` classes and the
            exact norm the monitor warns once and suggests ``num_projections=32`` (at C = 1000 about 3 % of the
            exact cost and a few percent of error, ``docs/performance.md``).
        class_names: names for the per-class bar chart (length = number of classes); default: the data's names
            (a datamodule's ``class_names``, a dataset's ``classes``), else class indices.
        **kwargs: the common arguments of :class:`SensitivityMonitor` (``every_n_epochs``, ``epochs``,
            ``log_spaced``, ``at_init``, ``num_samples``, ``seed``, ``val_data``, ``train_data``,
            ``batch_transform``, ``forward_fn``, ``chunk_size``). With ``chunk_size=None`` the exact norms run
            in one chunk on an accelerator and, on a CPU, in chunks sized to the model's activations
            (``jacobian_norm(chunk_size="auto")``: faster there, 2.1x on the CIFAR ``SmallCNN``); an int fixes it.

    Raises:
        ValueError: ``output`` is not one of ``"softmax"``, ``"logits"``, ``"log_softmax"``; or a bad common
            argument.
        TypeError: an argument of the wrong type.

    Example::

        from lightning.pytorch import Trainer
        from lightning_sensitivity import JacobianNormMonitor

        trainer = Trainer(max_epochs=10, callbacks=[JacobianNormMonitor(num_samples=256, log_spaced=True)])
        trainer.fit(model, datamodule=dm)
    """

    quantity = "jacobian_norm"
    state_fields = ("num_samples", "seed", "output", "num_projections")

    def __init__(
        self,
        *,
        output: str = "softmax",
        class_names: Sequence[str] | None = None,
        num_projections: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.output = check_choice(output, "output", OUTPUTS)
        self._measured_output = self.output  # `output`, or "logits" for a single output (see `_output_for`)
        self.class_names = check_names(class_names, "class_names")
        self.num_projections = check_int(num_projections, "num_projections", minimum=2, allow_none=True)
        super().__init__(**kwargs)

    @override
    def probe_splits(self) -> ProbeSplits:
        return frozenset({VAL}), frozenset({TRAIN})

    @override
    def config(self) -> dict[str, Any]:
        return {**super().config(), "output": self.output, "class_names": self.class_names,
                "num_projections": self.num_projections}  # fmt: skip

    @override
    def check_classes(self, num_classes: int) -> None:
        check_class_names(self.class_names, num_classes, "class_names")

    def _norms(
        self, model: nn.Module, probe: ProbeSet, progress: ProgressFactory, split: str
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per-example norms, logits and (estimated norms only) standard errors of ``probe``."""

        def shard(index: slice | Tensor) -> dict[str, Tensor]:
            part = probe_shard(probe, index)
            kwargs = model_kwargs(part)
            out = {}
            with progress(f"{split} Jacobian norms") as bar:
                if self.num_projections is None:
                    # The logits of the pass the norms are pulled back through: no second forward for them.
                    norms, logits = jacobian_norm(
                        model, part.inputs, output=self._measured_output, chunk_size=self._chunks(part.inputs),
                        progress=bar, return_logits=True, **kwargs,
                    )  # fmt: skip
                else:
                    norms, stderr = jacobian_norm_estimate(
                        model, part.inputs, num_projections=self.num_projections, output=self._measured_output,
                        seed=self.seed + _first(index), chunk_size=self.chunk_size, progress=bar, **kwargs,
                    )  # fmt: skip
                    out["stderr"] = stderr.detach().float().cpu()
                    logits = predict_logits(model, part.inputs, self.chunk_size, **kwargs)
            if logits.shape[1] == 1 and part.class_targets:  # one binary logit z: class statistics of [0, z]
                logits = two_class_logits(logits)
            return {**out, "norms": norms.detach().float().cpu(), "logits": logits.detach().cpu()}

        out = self.sharded(shard, len(probe))  # each rank its shard of the probe set under DDP
        if self.num_projections is None and out["logits"].shape[1] >= MANY_CLASSES:
            self.warn_once(
                "many classes",
                f"{type(self).__name__}: the model has {out['logits'].shape[1]} classes, so the exact Jacobian norm "
                "costs about that many reverse passes per probe point; `num_projections="
                f"{SUGGESTED_PROJECTIONS}` estimates it (unbiased, its standard error logged as .../mean_stderr) "
                f"with {SUGGESTED_PROJECTIONS} passes.",
            )
        return out["norms"], out["logits"], out.get("stderr")

    def _chunks(self, inputs: Tensor) -> int | str | None:
        """The exact norms' chunks: ``chunk_size`` when given; else, on a CPU, sized to the model's activations
        (``jacobian_norm(chunk_size="auto")``: a chunk of cache-sized activations is faster there than one large
        pass, 2.1x on the CIFAR ``SmallCNN``); on an accelerator one chunk."""
        if self.chunk_size is not None:
            return self.chunk_size
        return "auto" if inputs.device.type == "cpu" else None

    def _split(
        self,
        result: Measurement,
        split: str,
        probe: ProbeSet,
        norms: Tensor,
        logits: Tensor,
        stderr: Tensor | None = None,
    ) -> dict[str, Any]:
        classes = probe.class_targets
        targets = probe.targets.cpu()
        summary = jacobian_norm_summary(
            norms, targets if classes else None, logits if classes else None, num_classes=self._num_classes(logits)
        )
        for stat in keys.JACOBIAN_STATS:
            result.scalars[keys.metric(keys.JACOBIAN, split, stat)] = summary[stat]
            result.arrays[keys.split_array(split, stat)] = summary[stat]
        result.histograms[keys.metric(keys.JACOBIAN, split)] = norms
        if stderr is not None:  # independent projections per example: the errors add in quadrature
            result.scalars[keys.metric(keys.JACOBIAN, split, "mean_stderr")] = mean_standard_error(stderr)
            result.arrays[keys.split_array(split, "stderr")] = stderr
        result.arrays.update({keys.split_array(split, "norms"): norms, keys.split_array(split, "labels"): targets})
        if classes:
            result.arrays[keys.split_array(split, "correct")] = logits.argmax(dim=1) == targets
        return summary

    @override
    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        val = probes[VAL]
        self._measured_output = self._output_for(output_width(model, val), val.targets)
        result = Measurement(
            meta={
                "output": self._measured_output,
                "class_names": self.class_names,
                "num_projections": self.num_projections,
            }
        )
        stats = {VAL: self._split(result, VAL, val, *self._norms(model, val, progress, VAL))}
        if TRAIN in probes:
            train = self.attempt(
                "the train Jacobian norms", lambda: self._norms(model, probes[TRAIN], progress, TRAIN), epoch
            )
            if train is not None:
                stats[TRAIN] = self._split(result, TRAIN, probes[TRAIN], *train)
        ratio = train_val_ratio(stats[TRAIN]["mean"], stats[VAL]["mean"]) if TRAIN in stats else None
        if ratio is not None:
            result.scalars[keys.metric(keys.JACOBIAN, "train_val_ratio")] = ratio
            result.arrays["train_val_ratio"] = ratio
        if not val.class_targets:
            self.warn_once(
                "not classes",
                f"{type(self).__name__}: the targets are not integer class indices [N] (got {val.targets.dtype} of "
                f"shape {tuple(val.targets.shape)}), so per-class norms and the AUROCs are not logged.",
            )
            return result
        summary = stats[VAL]
        for name in keys.JACOBIAN_AUROCS:
            if summary[name] == summary[name]:  # NaN when all predictions are right (or all wrong)
                result.scalars[keys.metric(keys.JACOBIAN, VAL, name)] = summary[name]
                result.arrays[name] = summary[name]
        per_class = summary["per_class"]
        for c in val.targets.unique().tolist():
            result.scalars[keys.metric(keys.JACOBIAN, VAL, f"class_{c}")] = float(per_class[c])
        names = self.display_names(per_class.shape[0])
        result.meta["class_names"] = names
        result.figures.append(
            (keys.metric(keys.JACOBIAN, VAL, "per_class"), lambda: self._bar_chart(per_class, names, epoch))
        )
        return result

    def _output_for(self, width: int, targets: Tensor) -> str:
        """The output differentiated: ``output``, except where it is constant or no probability (said once)."""
        head = head_kind(width, targets)
        if self.output not in ("softmax", "log_softmax") or head == "classes":
            return self.output
        if width == 1 or head == "values":
            why = (
                f"the model has a single output, whose {self.output} is constant (its Jacobian is 0)"
                if width == 1
                else f"the targets are real values (got {targets.dtype} of shape {tuple(targets.shape)}), whose "
                f"{self.output} is no probability"
            )
            self.warn_once(
                "output replaced",
                f"{type(self).__name__}: {why}; the Jacobian of the outputs themselves is measured (as "
                "`output='logits'`; pass `output='sigmoid'` for binary or multi-label logits).",
            )
            return "logits"
        self.warn_once(
            "multi-label",
            f"{type(self).__name__}: the targets are multi-label (0/1 of shape {tuple(targets.shape)}), but "
            f"`output='{self.output}'` couples the outputs as exclusive classes; pass `output='sigmoid'` to "
            "differentiate each label's probability.",
        )
        return self.output

    def _num_classes(self, logits: Tensor) -> int:
        return max(logits.shape[1], len(self.class_names or ()))

    def _bar_chart(self, per_class: Tensor, names: list[str] | None, epoch: int) -> Any:
        from lightning_sensitivity.logging.render import render_per_class

        return render_per_class(
            per_class,
            names,
            title=f"Mean Jacobian norm per class (val probe set), epoch {epoch}",
            ylabel=f"||d {self._measured_output} / dx||_F",
        )


def _first(index: slice | Tensor) -> int:
    """The first probe position of a shard: under DDP each rank's shard draws its own projections (seeded with
    ``seed`` plus this offset), not the same ones as every other rank's."""
    if isinstance(index, slice):
        return index.start or 0
    return int(index[0]) if len(index) else 0
