"""Where the monitors' data comes from on the Lightning side.

The dataset a probe set is drawn from, the number of classes and their display names are found on the trainer, its
datamodule and the LightningModule, never by iterating a loader. (A probe set itself is drawn by
:mod:`lightning_sensitivity.probes`, which does not import Lightning.)

Datasets: public trainer attributes are tried first (``trainer.train_dataloader`` / ``trainer.val_dataloaders``, set
once Lightning has loaded them). Before that -- e.g. at ``on_train_start`` with ``num_sanity_val_steps=0`` -- the loops'
``_data_source`` is the only place that knows the datamodule, the module's ``*_dataloader`` hook or the loaders passed
to ``fit``/``validate``/``test``; it is read defensively so that a future Lightning without it degrades to the
datamodule and module hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset

from lightning_sensitivity.keys import TEST, TRAIN, VAL


class Found(NamedTuple):
    """The dataset a probe set is drawn from, with how it is batched and which of how many loaders it is."""

    dataset: Dataset
    collate_fn: Callable[[list[Any]], Any] | None
    index: int
    num_loaders: int


class _HookSource:
    """Stand-in for Lightning's ``_DataLoaderSource`` built from public objects only."""

    def __init__(self, instance: Any, name: str) -> None:
        self.instance = instance
        self.name = name

    def is_defined(self) -> bool:
        return self.instance is not None and is_overridden(self.name, self.instance)

    def dataloader(self) -> Any:
        return getattr(self.instance, self.name)()


def _loop_source(loop: Any) -> Any:
    source = getattr(loop, "_data_source", None)
    if source is None or getattr(source, "instance", None) is None or not hasattr(source, "is_defined"):
        return None
    return source


def _sources(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> list[Any]:
    """Candidate sources of ``split`` data, most specific first, for the function the trainer is running."""
    fn = getattr(trainer.state, "fn", None)
    fit_loop = getattr(trainer, "fit_loop", None)
    val_loop = getattr(getattr(fit_loop, "epoch_loop", None), "val_loop", None)
    candidates: list[Any] = []
    if split == TRAIN:
        candidates.append(_loop_source(fit_loop))
        hook = "train_dataloader"
    elif split == TEST:
        candidates.append(_loop_source(getattr(trainer, "test_loop", None)))
        hook = "test_dataloader"
    else:
        if fn == TrainerFn.VALIDATING:
            candidates.append(_loop_source(getattr(trainer, "validate_loop", None)))
        candidates.append(_loop_source(val_loop))
        hook = "val_dataloader"
    # Public fall-backs (also what the loop sources resolve to when given a datamodule or module).
    candidates.append(_HookSource(trainer.datamodule, hook))
    candidates.append(_HookSource(pl_module, hook))
    if split == VAL and fn == TrainerFn.TESTING:
        # `trainer.test(model, dataloaders=...)` without any validation data: the test data is the held-out set.
        candidates.append(_loop_source(getattr(trainer, "test_loop", None)))
        candidates.append(_HookSource(trainer.datamodule, "test_dataloader"))
        candidates.append(_HookSource(pl_module, "test_dataloader"))
    return [c for c in candidates if c is not None]


def _loaded(trainer: pl.Trainer, split: str) -> Any:
    return {TRAIN: trainer.train_dataloader, VAL: trainer.val_dataloaders, TEST: trainer.test_dataloaders}[split]


def has_source(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> bool:
    """Whether some data for ``split`` is reachable (without instantiating any loader)."""
    if _loaded(trainer, split) is not None:
        return True
    for source in _sources(trainer, pl_module, split):
        try:
            if source.is_defined():
                return True
        except Exception:  # a foreign source object must not break setup
            continue
    return False


def _loaders(value: Any) -> Iterator[Any]:
    """Flatten a (collection of) loader(s) as Lightning accepts them, in order."""
    if value is None:
        return
    iterables = getattr(value, "iterables", None)  # CombinedLoader
    if iterables is not None and not isinstance(value, DataLoader):
        yield from _loaders(iterables)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _loaders(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _loaders(item)
    else:
        yield value


def find_dataset(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, index: int = 0) -> Found | None:
    """The dataset of the ``index``-th ``split`` loader found (the first one for the training data), or None when
    there is no source at all.

    Raises:
        TypeError: a source exists but yields no ``torch.utils.data.DataLoader`` over a dataset.
        ValueError: ``index`` is beyond the number of loaders.
    """
    if split == TRAIN:
        # A datamodule may expose the training examples without augmentation; a probe set should not be augmented.
        clean = getattr(trainer.datamodule, "train_eval_dataset", None)
        if isinstance(clean, Dataset):
            return Found(clean, None, 0, 1)
        index = 0
    loaded = _loaded(trainer, split)
    found: list[Any] = [] if loaded is None else [loaded]
    if not found:
        for source in _sources(trainer, pl_module, split):
            if source.is_defined():
                found.append(source.dataloader())
                break
    if not found:
        return None
    loaders = [
        (loader.dataset, loader.collate_fn) if isinstance(loader, DataLoader) else (loader, None)
        for loader in _loaders(found[0])
        if isinstance(loader, (DataLoader, Dataset))  # a dataset passed where a loader is expected still has items
    ]
    if not loaders:
        raise TypeError(
            f"the {split} data expected a torch.utils.data.DataLoader over a dataset, got {type(found[0]).__name__}"
        )
    if index >= len(loaders):
        raise ValueError(
            f"`val_dataloader_idx` expected an index below the number of {split} loaders ({len(loaders)}), got {index}"
        )
    dataset, collate_fn = loaders[index]
    return Found(dataset, collate_fn, index, len(loaders))


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
