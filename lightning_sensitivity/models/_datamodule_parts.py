"""Seeded dataset plumbing shared by the reference datamodules (``datamodules.py``, ``text_data.py``).

Validation split, training subset, random labels, augmentations, image tensors, loaders. Not used by the callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# each random decision draws from its own stream, so e.g. changing `train_subset` leaves the validation split alone
_SPLIT, _SUBSET, _LABELS, _TEST = range(4)


def seeded_generator(seed: int, purpose: int) -> torch.Generator:
    """A CPU generator for one purpose; distinct ``(seed, purpose)`` pairs give independent streams."""
    state = np.random.SeedSequence([seed, purpose]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def resolve_count(name: str, value: int | float, total: int) -> int:
    """Turn a count (int) or a fraction of ``total`` (float in (0, 1)) into a count in ``[1, total - 1]``."""
    count = int(round(value * total)) if isinstance(value, float) else value
    if not 1 <= count <= total - 1:
        raise ValueError(f"`{name}`={value!r} leaves {count} of {total} examples; expected between 1 and {total - 1}")
    return count


def split_off(num_examples: int, held_out: int | float, seed: int, purpose: int = _SPLIT, name: str = "val_split"):
    """Seeded split of ``range(num_examples)`` into ``(kept, held_out)`` index tensors, each sorted."""
    count = resolve_count(name, held_out, num_examples)
    perm = torch.randperm(num_examples, generator=seeded_generator(seed, purpose))
    return perm[count:].sort().values, perm[:count].sort().values


def take_subset(indices: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """A seeded random subset of ``size`` of ``indices`` (all of them when ``size`` is None), sorted."""
    if size is None:
        return indices
    if size > len(indices):
        raise ValueError(f"`train_subset`={size} exceeds the {len(indices)} training examples left after `val_split`")
    perm = torch.randperm(len(indices), generator=seeded_generator(seed, _SUBSET))
    return indices[perm[:size].sort().values]


def randomize_labels(
    targets: torch.Tensor, fraction: float, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the labels of ``round(fraction * N)`` seeded examples by uniformly drawn classes.

    As in Zhang et al. (2017), a replaced label may by chance equal the true one.

    Returns:
        ``(new_targets, mask)``: a new label tensor and the boolean mask of the examples whose label was redrawn.
    """
    n = len(targets)
    count = int(round(fraction * n))
    g = seeded_generator(seed, _LABELS)
    chosen = torch.randperm(n, generator=g)[:count]
    new_targets = targets.clone()
    new_targets[chosen] = torch.randint(0, num_classes, (count,), generator=g, dtype=targets.dtype)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    return new_targets, mask


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift a ``[C, H, W]`` image by up to ``max_shift`` pixels per axis, filling with zeros (global RNG)."""
    padded = F.pad(images, (max_shift,) * 4)
    i, j = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
    return padded[:, i : i + images.shape[1], j : j + images.shape[2]]


def random_crop_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """``RandomCrop(size, padding)`` followed by ``RandomHorizontalFlip()`` on a ``[C, H, W]`` tensor."""
    images = random_shift(images, padding)
    return images.flip(-1) if torch.rand(()) < 0.5 else images


class ImageTensorDataset(Dataset):
    """Images held in memory as one tensor, returned as normalised ``float32`` ``(image, label)`` pairs.

    Args:
        images: ``[N, C, H, W]`` ``uint8`` (scaled by 1/255) or floats already in ``[0, 1]``.
        targets: ``[N]`` integer labels.
        mean: per-channel mean subtracted after augmentation.
        std: per-channel standard deviation divided by after augmentation.
        augment: optional random transform of one ``[C, H, W]`` image in ``[0, 1]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(f"expected images [N, C, H, W] and targets [N], got {tuple(images.shape)}, {len(targets)}")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        image = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        if self.augment is not None:
            image = self.augment(image)
        return (image - self.mean) / self.std, self.targets[index]


class SplitLoaders:
    """``train/val/test_dataloader`` of a datamodule from its ``_loader(dataset, shuffle)`` and three datasets."""

    def train_dataloader(self) -> Any:
        return self._loader(self.train_dataset, shuffle=True)  # type: ignore[attr-defined]

    def val_dataloader(self) -> Any:
        return self._loader(self.val_dataset, shuffle=False)  # type: ignore[attr-defined]

    def test_dataloader(self) -> Any:
        return self._loader(self.test_dataset, shuffle=False)  # type: ignore[attr-defined]
