"""``JacobianNormMonitor``: input-output Jacobian norms on fixed probe sets (Novak et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sensitivity.callbacks._data import TRAIN, VAL
from lightning_sensitivity.callbacks._progress import ProgressFactory
from lightning_sensitivity.callbacks.base import Measurement, SensitivityMonitor, check_names
from lightning_sensitivity.functional import jacobian_norm, predict_logits
from lightning_sensitivity.probes import ProbeSet

PREFIX = "sensitivity/jacobian_norm"
OUTPUTS = ("softmax", "logits", "log_softmax")


def _summary(norms: Tensor) -> dict[str, float]:
    values = norms.detach().double().cpu()
    return {
        "mean": float(values.mean()),
        "median": float(torch.quantile(values, 0.5)),
        "p90": float(torch.quantile(values, 0.9)),
    }


class JacobianNormMonitor(SensitivityMonitor):
    r"""Log the per-example Frobenius norm of the input-output Jacobian :math:`\|\partial f(x) / \partial x\|_F`.

    Novak et al. (2018, "Sensitivity and Generalization in Neural Networks") found that this norm, measured on
    held-out points, tracks generalization and flags likely misclassifications. The norms are computed in eval mode
    through :func:`~lightning_sensitivity.functional.jacobian_norm` on a fixed, class-balanced validation probe set
    and, when training data is reachable, a training probe set. See :class:`SensitivityMonitor` for when and where
    results are written.

    Logged scalars (at ``trainer.global_step``):

    - ``sensitivity/jacobian_norm/val/mean``, ``.../val/median``, ``.../val/p90``
    - ``sensitivity/jacobian_norm/train/mean``, ``.../train/median``, ``.../train/p90`` (training probe set)
    - ``sensitivity/jacobian_norm/train_val_ratio``: train mean / val mean
    - ``sensitivity/jacobian_norm/val/misclassification_auroc``: AUROC of the norm as a score for "the prediction is
      wrong" (absent when all probe predictions are right, or all wrong)
    - ``sensitivity/jacobian_norm/val/class_{c}``: mean norm of the val probe points of class ``c``

    TensorBoard (rank 0): histograms ``sensitivity/jacobian_norm/val`` and ``.../train``; bar chart image
    ``sensitivity/jacobian_norm/val/per_class``. Artifact ``{log_dir}/sensitivity/jacobian_norm/epoch_XXXX.npz`` with
    ``val_norms``, ``val_labels``, ``val_correct``, ``train_norms``, ``train_labels``, ``train_correct`` and the
    scalars.

    Args:
        output: differentiate the ``"softmax"`` (default, as in the paper), the ``"logits"`` or the
            ``"log_softmax"``.
        class_names: names for the per-class bar chart (length = number of classes).
        **kwargs: the common arguments of :class:`SensitivityMonitor` (``every_n_epochs``, ``epochs``,
            ``log_spaced``, ``at_init``, ``num_samples``, ``seed``, ``val_data``, ``train_data``,
            ``batch_transform``, ``forward_fn``, ``chunk_size``).

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

    def __init__(self, *, output: str = "softmax", class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"`output` expected one of {OUTPUTS}, got {output!r}")
        self.output = output
        self.class_names = check_names(class_names, "class_names")
        super().__init__(**kwargs)

    def _splits(self) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset({VAL}), frozenset({TRAIN})

    def _state_key_args(self) -> dict[str, Any]:
        return {**super()._state_key_args(), "output": self.output}

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "output": self.output, "class_names": self.class_names}

    def _norms(self, model: nn.Module, probe: ProbeSet, progress: ProgressFactory, split: str) -> tuple[Tensor, Tensor]:
        with progress(f"{split} Jacobian norms") as bar:
            norms = jacobian_norm(model, probe.inputs, output=self.output, chunk_size=self.chunk_size, progress=bar)
        correct = predict_logits(model, probe.inputs, self.chunk_size).argmax(dim=1) == probe.targets
        return norms.detach().float().cpu(), correct.cpu()

    def _compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        result = Measurement(meta={"output": self.output, "class_names": self.class_names})
        val = probes[VAL]
        val_norms, val_correct = self._norms(model, val, progress, VAL)
        val_labels = val.targets.cpu()
        stats = {VAL: _summary(val_norms)}
        result.histograms[f"{PREFIX}/val"] = val_norms
        result.arrays.update(val_norms=val_norms, val_labels=val_labels, val_correct=val_correct)

        if TRAIN in probes:
            train = self._attempt(
                "the train Jacobian norms", lambda: self._norms(model, probes[TRAIN], progress, TRAIN), epoch
            )
            if train is not None:
                train_norms, train_correct = train
                stats[TRAIN] = _summary(train_norms)
                result.histograms[f"{PREFIX}/train"] = train_norms
                result.arrays.update(
                    train_norms=train_norms, train_labels=probes[TRAIN].targets.cpu(), train_correct=train_correct
                )
        for split, values in stats.items():
            for stat, value in values.items():
                result.scalars[f"{PREFIX}/{split}/{stat}"] = value
                result.arrays[f"{split}_{stat}"] = value
        if TRAIN in stats and stats[VAL]["mean"] != 0:
            ratio = stats[TRAIN]["mean"] / stats[VAL]["mean"]
            result.scalars[f"{PREFIX}/train_val_ratio"] = ratio
            result.arrays["train_val_ratio"] = ratio

        wrong = ~val_correct
        if 0 < int(wrong.sum()) < wrong.numel() and bool(val_norms.isfinite().all()):
            from torchmetrics.functional.classification import binary_auroc

            # Scaled into [0, 1] so torchmetrics does not squash the scores with a sigmoid, which would turn large
            # norms into ties at 1.0 in float32 and bias the AUROC.
            scores = val_norms.double() / val_norms.max() if val_norms.max() > 0 else val_norms.double()
            auroc = float(binary_auroc(scores, wrong.long()))
            result.scalars[f"{PREFIX}/val/misclassification_auroc"] = auroc
            result.arrays["misclassification_auroc"] = auroc

        num_classes = max(int(val_labels.max()) + 1, len(self.class_names or ()))
        per_class = torch.full((num_classes,), float("nan"), dtype=torch.float64)
        for c in val_labels.unique().tolist():
            per_class[c] = val_norms[val_labels == c].double().mean()
            result.scalars[f"{PREFIX}/val/class_{c}"] = float(per_class[c])
        names = self.class_names if self.class_names and len(self.class_names) == num_classes else None
        result.figures.append((f"{PREFIX}/val/per_class", lambda: self._bar_chart(per_class, names, epoch)))
        return result

    def _bar_chart(self, per_class: Tensor, names: list[str] | None, epoch: int) -> Any:
        from lightning_sensitivity.logging.render import render_per_class

        return render_per_class(
            per_class,
            names,
            title=f"Mean Jacobian norm per class (val probe set), epoch {epoch}",
            ylabel=f"||d {self.output} / dx||_F",
        )
