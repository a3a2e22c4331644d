"""A small, CLI-friendly LightningModule that trains any classifier and logs the generalization gap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_sensitivity._checks import check_choice, check_int, check_number

__all__ = ["LitClassifier"]

_OPTIMIZERS = ("sgd", "adam")


def _infer_num_classes(model: nn.Module) -> int | None:
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    last_linear = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last_linear = module
    return None if last_linear is None else last_linear.out_features


def _unpack_batch(batch: Any) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """``(inputs, targets, model_kwargs)`` of a batch.

    Accepted: ``(inputs, targets, ...)`` (extra items ignored, as before), ``(inputs, targets, {kwargs})``, and a
    dict ``{"input_ids": ..., "labels": ..., **kwargs}`` as built by text datamodules.
    """
    if isinstance(batch, Mapping):
        missing = [key for key in ("input_ids", "labels") if key not in batch]
        if missing:
            raise ValueError(f"`batch` as a dict expected keys 'input_ids' and 'labels', got {sorted(batch)}")
        kwargs = {key: value for key, value in batch.items() if key not in ("input_ids", "labels")}
        return batch["input_ids"], batch["labels"], kwargs
    kwargs = batch[2] if len(batch) > 2 and isinstance(batch[2], Mapping) else {}
    return batch[0], batch[1], dict(kwargs)


class LitClassifier(pl.LightningModule):
    """Train any classifier ``nn.Module`` (returning logits) with cross-entropy and SGD or Adam.

    Logged, all at epoch level: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``
    and the generalization gap ``generalization_gap/loss`` (``val/loss - train/loss``) and ``generalization_gap/acc``
    (``train/acc - val/acc``) -- the quantity the sensitivity metrics are meant to explain. The gap is computed at the
    end of each validation run from the training statistics accumulated so far in the current epoch (the whole epoch
    with the default ``val_check_interval=1.0``) and is not logged when no training batch preceded the validation
    (sanity check, ``trainer.validate``).

    Losses are averaged per example and accuracy is micro-averaged over all examples of the epoch, so the values do
    not depend on how the data is batched.

    Args:
        model: the classifier; any ``nn.Module`` mapping a batch of inputs to logits ``[N, num_classes]``. With
            LightningCLI it is given as ``class_path``/``init_args``. Batches are ``(inputs, targets)``,
            ``(inputs, targets, model_kwargs)`` or dicts ``{"input_ids", "labels", **model_kwargs}`` (e.g. an
            ``attention_mask`` for :class:`~lightning_sensitivity.models.TextClassifier`); ``model_kwargs`` are
            passed to the model as keyword arguments.
        lr: learning rate.
        optimizer: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty passed to the optimizer.
        num_classes: number of classes for the accuracy metric; inferred from ``model.num_classes`` or the
            ``out_features`` of the last ``nn.Linear`` when ``None``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: on a non-positive ``lr``, unknown ``optimizer``, ``momentum`` outside ``[0, 1)``, negative
            ``weight_decay``, or when ``num_classes`` is not given and cannot be inferred.

    Note:
        ``save_hyperparameters(ignore=["model"])`` keeps the network itself out of ``hparams`` (its weights are in the
        checkpoint's ``state_dict`` anyway), so pass a freshly built network of the same architecture when loading:
        ``LitClassifier.load_from_checkpoint(path, model=MLP(64, 10))``.

    Example::

        >>> from lightning_sensitivity.models import MLP
        >>> module = LitClassifier(MLP(64, 10, hidden=(32,)), lr=0.05)
        >>> module(torch.zeros(4, 64)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` expected an nn.Module, got {type(model).__name__}")
        check_number(lr, "lr", low=0.0, low_open=True)
        check_choice(optimizer, "optimizer", _OPTIMIZERS)
        check_number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        check_number(weight_decay, "weight_decay", low=0.0)
        if num_classes is None:
            num_classes = _infer_num_classes(model)
            if num_classes is None:
                raise ValueError(
                    "`num_classes` could not be inferred from the model (no `num_classes` attribute and no nn.Linear);"
                    " pass it explicitly"
                )
        check_int(num_classes, "num_classes", minimum=2)
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.num_classes = num_classes
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{kind}": MeanMetric() if kind == "loss" else MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )

    def forward(self, x: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """Return the logits of the wrapped model; ``model_kwargs`` (e.g. ``attention_mask``) are passed on."""
        return self.model(x, **model_kwargs)

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y, model_kwargs = _unpack_batch(batch)
        logits = self(x, **model_kwargs)
        loss = F.cross_entropy(logits, y)
        self.metrics[f"{stage}_loss"].update(loss.detach(), weight=y.shape[0])
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _compute(self, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        loss, acc = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        if loss.update_count == 0:
            return None
        return loss.compute(), acc.compute()

    def _log_epoch(self, name: str, value: torch.Tensor) -> None:
        # values come from already-synchronised torchmetrics states; sync_dist only silences Lightning's DDP warning
        self.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    def _log_stage(self, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        values = self._compute(stage)
        if values is not None:
            self._log_epoch(f"{stage}/loss", values[0])
            self._log_epoch(f"{stage}/acc", values[1])
        self.metrics[f"{stage}_loss"].reset()
        self.metrics[f"{stage}_acc"].reset()
        return values

    def on_validation_epoch_end(self) -> None:
        val = self._log_stage("val")
        # validation runs before `on_train_epoch_end`, so the training states still hold this epoch's statistics
        train = self._compute("train") if not self.trainer.sanity_checking else None
        if val is not None and train is not None:
            self._log_epoch("generalization_gap/loss", val[0] - train[0])
            self._log_epoch("generalization_gap/acc", train[1] - val[1])

    def on_train_epoch_end(self) -> None:
        self._log_stage("train")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
