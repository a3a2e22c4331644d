"""Small helpers around probe sets for the monitors: model keyword inputs, shards, and the number of classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_sensitivity.probes import ProbeSet

__all__ = ["dataset_class_names", "known_class_names", "known_num_classes", "model_kwargs", "probe_shard"]


def model_kwargs(probe: ProbeSet) -> dict[str, Any]:
    """Keyword arguments for a functional call on ``probe``: its per-example model inputs, when it has any."""
    return {"model_kwargs": probe.model_kwargs or None}


def probe_shard(probe: ProbeSet, index: slice | Tensor) -> ProbeSet:
    """The examples of ``probe`` at ``index`` (a slice or positions), model inputs included."""
    if isinstance(index, slice) and index == slice(0, len(probe)):
        return probe
    kwargs = {k: v[index] for k, v in probe.model_kwargs.items()}
    positions = index.cpu() if isinstance(index, Tensor) else index  # the dataset positions stay on the CPU
    return ProbeSet(probe.inputs[index], probe.targets[index], probe.indices[positions], kwargs)


def known_num_classes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int | None:
    """The number of classes, when the datamodule or the module states it (``num_classes``), else None."""
    for holder in (trainer.datamodule, pl_module, getattr(pl_module, "hparams", None)):
        value = getattr(holder, "num_classes", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _names(value: Any) -> list[str] | None:
    if isinstance(value, Mapping):  # e.g. {index: name}
        value = [value[k] for k in sorted(value)] if all(isinstance(k, int) for k in value) else None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def known_class_names(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str] | None:
    """Display names of the classes, when the datamodule or the module states them (``class_names``, else
    ``classes`` as torchvision datasets call them), else None."""
    for holder in (trainer.datamodule, pl_module, getattr(pl_module, "hparams", None)):
        for attribute in ("class_names", "classes"):
            try:
                names = _names(getattr(holder, attribute, None))
            except Exception:  # a property of a foreign object must not break setup
                names = None
            if names is not None:
                return names
    return None


def dataset_class_names(dataset: Any) -> list[str] | None:
    """``classes`` (or ``class_names``) of a dataset, looking through ``Subset``-like wrappers (``.dataset``)."""
    for _ in range(4):
        if dataset is None:
            return None
        for attribute in ("class_names", "classes"):
            names = _names(getattr(dataset, attribute, None))
            if names is not None:
                return names
        dataset = getattr(dataset, "dataset", None)
    return None
