"""Fixed, class-balanced, seeded probe sets drawn from a map-style ``Dataset``.

A probe set is read by indexing the dataset, never by iterating the user's ``DataLoader``: iterating would advance
its sampler's random stream and change the training run. A streaming ``IterableDataset`` has no index: its probe set
is the first examples of a fresh iterator over the dataset itself (for a shuffling stream, whichever come first). Random
transforms inside ``dataset[i]`` draw from the global torch/numpy/python generators; those are seeded from ``seed`` for
the read (so the probe set is reproducible and identical on every rank) and restored afterwards (so the training run's
streams are not advanced).

This module does not import Lightning.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, default_collate

from lightning_sensitivity._checks import check_int, check_model_kwargs

BatchTransform = Callable[[Any], "tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]"]

__all__ = [
    "ProbeSet",
    "class_balanced_indices",
    "dataset_labels",
    "draw_probe_set",
    "probe_set_from_tensors",
    "probe_set_from_data",
    "check_probe_data",
    "split_batch",
    "isolated_global_rng",
    "model_kwargs",
    "probe_shard",
]

# Keys tried, in order, when a batch is a dict and no ``batch_transform`` is given.
INPUT_KEYS = ("input", "inputs", "x", "image", "images", "img", "data", "features", "pixel_values")
TARGET_KEYS = ("target", "targets", "y", "label", "labels", "class", "classes")

# Without a label fast path (``dataset.targets``), labels are read by indexing; only a seeded random pool of this
# many times ``num_samples`` examples (at least ``_MIN_POOL``) is read, so large datasets stay cheap.
_POOL_FACTOR = 8
_MIN_POOL = 1024


@dataclass(frozen=True)
class ProbeSet:
    """A fixed set of examples the callbacks measure on.

    Attributes:
        inputs: ``[N, *input_shape]`` as produced by the dataset (transforms applied); floating point, or integer
            (token ids) for models measured through an ``embed_fn``.
        targets: ``[N, ...]`` targets: long class indices ``[N]`` for classification, any dtype/shape otherwise.
        indices: ``[N]`` long positions of the examples in the dataset (or in the tensors they were taken from;
            for a stream, positions in the iteration order).
        model_kwargs: per-example extra model inputs (attention masks, ...), each ``[N, ...]``.
    """

    inputs: Tensor
    targets: Tensor
    indices: Tensor
    model_kwargs: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def class_targets(self) -> bool:
        """Whether the targets are integer class indices ``[N]`` (class splits and per-class statistics apply)."""
        return is_class_targets(self.targets)

    def to(self, device: torch.device | str) -> ProbeSet:
        return ProbeSet(
            self.inputs.to(device),
            self.targets.to(device),
            self.indices,
            {k: v.to(device) for k, v in self.model_kwargs.items()},
        )

    def subset(self, index: Tensor) -> ProbeSet:
        """The examples at positions ``index`` (a ``[k]`` long tensor), in that order."""
        return ProbeSet(
            self.inputs[index.to(self.inputs.device)],
            self.targets[index.to(self.targets.device)],
            self.indices[index.to(self.indices.device)],
            {k: v[index.to(v.device)] for k, v in self.model_kwargs.items()},
        )

    def with_inputs(self, inputs: Tensor) -> ProbeSet:
        """The same probe set with other inputs (e.g. embedded token ids)."""
        return ProbeSet(inputs, self.targets, self.indices, self.model_kwargs)

    def state(self) -> dict[str, Any]:
        """A plain dict for a checkpoint (see :meth:`from_state`)."""
        return {
            "inputs": self.inputs,
            "targets": self.targets,
            "indices": self.indices,
            "model_kwargs": self.model_kwargs,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProbeSet:
        kwargs = {k: v.cpu() for k, v in (state.get("model_kwargs") or {}).items()}
        targets = state["targets"].cpu()
        return cls(state["inputs"].cpu(), targets, state["indices"].cpu().long(), kwargs)


def is_class_targets(targets: Tensor) -> bool:
    """Integer (not bool) class indices of shape ``[N]``."""
    return (
        targets.dim() == 1
        and not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
    )


def _as_label_tensor(labels: Any, name: str = "labels") -> Tensor:
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` expected a 1-D sequence of class indices, got {type(labels).__name__}") from err
    if labels.dim() != 1:
        raise ValueError(f"`{name}` expected a 1-D sequence of class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`{name}` expected integer class indices, got dtype {labels.dtype}")
    return labels.detach().to("cpu", torch.long)


def class_balanced_indices(labels: Any, num_samples: int, *, seed: int, num_classes: int | None = None) -> Tensor:
    """Seeded, class-balanced sample of positions: round-robin over the classes, each in a random order.

    The class counts of the result differ by at most one, except for classes that run out of examples. When there
    are fewer than ``num_samples`` labels, all positions are returned (the caller decides whether to warn).

    Args:
        labels: ``[N]`` integer class indices (tensor, array or sequence).
        num_samples: how many positions to return.
        seed: seed of a private ``torch.Generator``; the global random state is neither read nor advanced.
        num_classes: when given, labels must lie in ``[0, num_classes)``.

    Returns:
        Sorted long tensor of ``min(num_samples, N)`` distinct positions.

    Raises:
        TypeError: non-integer labels/arguments.
        ValueError: ``num_samples < 1``, labels out of range or negative.

    Example:
        >>> idx = class_balanced_indices([0] * 90 + [1] * 10, 10, seed=0)
        >>> torch.bincount(torch.tensor([0] * 90 + [1] * 10)[idx]).tolist()
        [5, 5]
    """
    labels = _as_label_tensor(labels)
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    seed = check_int(seed, "seed")
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", minimum=1)
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"`labels` expected non-negative class indices, got a minimum of {int(labels.min())}")
    if num_classes is not None and labels.numel() and labels.max() >= num_classes:
        raise ValueError(f"`labels` expected class indices in [0, {num_classes}), got a maximum of {int(labels.max())}")
    n = labels.shape[0]
    if num_samples >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed % 2**63)
    classes = torch.unique(labels)
    # A random class order decides, reproducibly, which classes get the one extra example.
    class_position = torch.empty(int(classes.max()) + 1, dtype=torch.long)
    class_position[classes] = torch.randperm(classes.numel(), generator=gen)
    rank = torch.empty(n, dtype=torch.long)
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        rank[members[torch.randperm(members.numel(), generator=gen)]] = torch.arange(members.numel())
    # Round r of the round-robin takes the r-th example of every class still having one, in class order.
    key = rank * classes.numel() + class_position[labels]
    return torch.sort(torch.argsort(key)[:num_samples]).values


def dataset_labels(dataset: Any) -> Tensor | None:
    """All labels of a dataset without reading its examples, or None when there is no such fast path.

    Understood: ``TensorDataset`` (its second tensor), datasets with a ``targets`` (or ``labels``) attribute of the
    dataset's length (torchvision), and ``Subset``/``ConcatDataset`` chains over them.
    """
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_labels(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        candidate: Any = dataset.tensors[1]
    else:
        candidate = getattr(dataset, "targets", None)
        if candidate is None:
            candidate = getattr(dataset, "labels", None)
    if candidate is None:
        return None
    try:
        labels = _as_label_tensor(candidate)
        length = len(dataset)
    except (TypeError, ValueError):
        return None
    return labels if labels.shape[0] == length else None


@contextlib.contextmanager
def isolated_global_rng(seed: int) -> Iterator[None]:
    """Seed the global torch (CPU), numpy and python generators from ``seed``; restore their states on exit."""
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        # Not torch.manual_seed: that would also reseed every CUDA generator, which is not restored here.
        torch.default_generator.manual_seed(seed % 2**63)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


Batch = tuple[Tensor, Tensor, dict[str, Tensor]]


def _parts(out: Any, what: str) -> Batch:
    """``(inputs, targets, model_kwargs)`` from a pair or a triple, checked for matching first dimensions."""
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 3)):
        raise TypeError(
            f"{what} expected (inputs, targets) or (inputs, targets, model_kwargs), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
        )
    x, y = out[0], out[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what} expected tensors (inputs, targets), got ({type(x).__name__}, {type(y).__name__})")
    if x.dim() < 2 or y.dim() < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{what} expected inputs [N, *input_shape] and targets [N, ...] with the same N >= 1, got inputs "
            f"{tuple(x.shape)} and targets {tuple(y.shape)}"
        )
    if len(out) == 3 and out[2] is None:
        raise TypeError(
            f"{what} expected a mapping of str -> torch.Tensor [N, ...] as its third element (model_kwargs), got "
            "None; pass (inputs, targets) for a model without keyword inputs"
        )
    kwargs = check_model_kwargs(out[2], x.shape[0], f"{what}'s model_kwargs") if len(out) == 3 else {}
    if is_class_targets(y.flatten()) and y.dim() == 2 and y.shape[1] == 1:
        y = y.flatten()  # class indices as a column
    if is_class_targets(y):
        y = y.long()
    return x, y, kwargs


def split_batch(batch: Any, batch_transform: BatchTransform | None = None) -> Batch:
    """``(inputs, targets, model_kwargs)`` of a collated batch: ``(x, y, ...)`` tuples/lists, dicts with
    input/target-like keys, or what ``batch_transform`` returns (a pair or a triple with ``model_kwargs``).

    Raises:
        TypeError: the batch has no recognisable layout (pass ``batch_transform``), or the parts are not tensors.
    """
    if batch_transform is not None:
        return _parts(batch_transform(batch), "`batch_transform`")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return _parts((batch[0], batch[1]), "a batch")
    if isinstance(batch, Mapping):
        x_key = next((k for k in INPUT_KEYS if k in batch), None)
        y_key = next((k for k in TARGET_KEYS if k in batch), None)
        if x_key is None or y_key is None:
            raise TypeError(
                f"a batch dict expected an input key (one of {INPUT_KEYS}) and a target key (one of {TARGET_KEYS}), "
                f"got keys {sorted(map(str, batch))}; pass `batch_transform=lambda batch: (inputs, targets)`"
            )
        return _parts((batch[x_key], batch[y_key]), "a batch")
    raise TypeError(
        f"a batch expected to be an (inputs, targets, ...) tuple or a dict, got {type(batch).__name__}; "
        "pass `batch_transform=lambda batch: (inputs, targets)`"
    )


def check_probe_data(data: Any, name: str) -> None:
    """Validate explicit probe data: ``(inputs, targets)`` or ``(inputs, targets, model_kwargs)``."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError(
            f"`{name}` expected (inputs, targets) or (inputs, targets, model_kwargs) or None, got {type(data).__name__}"
        )
    try:
        _parts(tuple(data), f"`{name}`")
    except (TypeError, ValueError) as err:
        raise type(err)(str(err)) from None


def _choose(targets: Tensor, num_samples: int, seed: int) -> Tensor:
    """Class-balanced positions for class targets, a seeded uniform subset otherwise (sorted, distinct)."""
    if is_class_targets(targets):
        return class_balanced_indices(targets, num_samples, seed=seed)
    n = targets.shape[0]
    if num_samples >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed % 2**63)
    return torch.randperm(n, generator=gen)[:num_samples].sort().values


def probe_set_from_data(data: Any, num_samples: int, *, seed: int) -> ProbeSet:
    """A probe set from explicit ``(inputs, targets[, model_kwargs])``: all of it, or a class-balanced (for class
    targets; else seeded uniform) subset of ``num_samples`` when larger."""
    x, y, kwargs = _parts(tuple(data), "the probe data")
    indices = _choose(y, num_samples, seed)
    return ProbeSet(
        x.detach()[indices].cpu().clone(),
        y.detach()[indices].cpu().clone(),
        indices,
        {k: v.detach()[indices].cpu().clone() for k, v in kwargs.items()},
    )


def probe_set_from_tensors(inputs: Tensor, targets: Tensor, num_samples: int, *, seed: int) -> ProbeSet:
    """A probe set from explicit tensors: all of them, or a class-balanced subset of ``num_samples`` when larger."""
    return probe_set_from_data((inputs, targets), num_samples, seed=seed)


def _first_of_stream(dataset: IterableDataset, size: int, seed: int) -> list[Any]:
    """The first ``size`` items of a fresh iterator over ``dataset`` (global RNG isolated, as for indexed reads)."""
    items: list[Any] = []
    with isolated_global_rng(seed):
        for item in dataset:
            items.append(item)
            if len(items) >= size:
                break
    return items


def draw_probe_set(
    dataset: Dataset,
    num_samples: int,
    *,
    seed: int,
    batch_transform: BatchTransform | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> ProbeSet:
    """Read a class-balanced probe set of ``num_samples`` examples from a dataset.

    Args:
        dataset: a map-style dataset (``len`` and ``dataset[i]``; labels come from :func:`dataset_labels` when
            possible, else by reading a seeded random pool of examples), or a streaming ``IterableDataset``: then a
            pool of its first examples (a fresh iterator over the dataset, never the user's loader) is read and the
            probe set is chosen from that pool.
        num_samples: examples wanted; fewer are returned when the dataset is smaller (check ``len(result)``).
        seed: fixes which examples are chosen and the draws of random transforms while reading them.
        batch_transform: maps a collated batch to ``(inputs, targets)`` or ``(inputs, targets, model_kwargs)``
            (see :func:`split_batch` for the default).
        collate_fn: how the examples are batched (default :func:`torch.utils.data.default_collate`).

    Returns:
        :class:`ProbeSet` on the CPU.

    Raises:
        TypeError: ``dataset`` cannot be indexed or iterated, or its batches have no recognisable layout.
        ValueError: the dataset is empty.

    Example:
        >>> ds = TensorDataset(torch.randn(100, 3), torch.arange(100) % 4)
        >>> probe = draw_probe_set(ds, 8, seed=0)
        >>> torch.bincount(probe.targets).tolist()
        [2, 2, 2, 2]
    """
    num_samples = check_int(num_samples, "num_samples", minimum=1)
    seed = check_int(seed, "seed")
    collate = default_collate if collate_fn is None else collate_fn
    if isinstance(dataset, IterableDataset):
        items = _first_of_stream(dataset, max(_POOL_FACTOR * num_samples, _MIN_POOL), seed)
        if not items:
            raise ValueError("`dataset` expected at least one example, got an empty stream")
        x, y, kwargs = split_batch(collate(items), batch_transform)
        positions = _choose(y, num_samples, seed)
        return ProbeSet(
            x[positions].detach().cpu(),
            y[positions].cpu(),
            positions,
            {k: v[positions].cpu() for k, v in kwargs.items()},
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"`dataset` expected a map-style dataset (with __len__ and __getitem__) or an IterableDataset, got "
            f"{type(dataset).__name__}"
        )
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError("`dataset` expected at least one example, got an empty dataset")
    labels = dataset_labels(dataset)
    if labels is not None:
        positions = class_balanced_indices(labels, num_samples, seed=seed)
    else:
        pool_size = min(size, max(_POOL_FACTOR * num_samples, _MIN_POOL))
        gen = torch.Generator().manual_seed(seed % 2**63)
        pool = torch.randperm(size, generator=gen)[:pool_size].sort().values
        with isolated_global_rng(seed):
            pool_targets = torch.cat([split_batch(collate([dataset[int(i)]]), batch_transform)[1] for i in pool])
        positions = pool[_choose(pool_targets, num_samples, seed)]
    with isolated_global_rng(seed):
        batch = collate([dataset[int(i)] for i in positions])
    inputs, targets, kwargs = split_batch(batch, batch_transform)
    if inputs.shape[0] != positions.shape[0]:
        raise ValueError(
            f"expected one example per dataset item, got inputs {tuple(inputs.shape)} and targets "
            f"{tuple(targets.shape)} for {positions.shape[0]} items"
        )
    return ProbeSet(inputs.detach().cpu(), targets, positions.clone(), {k: v.detach().cpu() for k, v in kwargs.items()})


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
