"""DataModules for the experiments of the sensitivity papers: digits (offline), MNIST, Fashion-MNIST, CIFAR-10/100.

All of them share the knobs those papers vary -- training-set size, random labels, augmentation, batch size (full
batch allowed) -- and fix every random choice by ``seed``. The whole dataset is held in memory as one tensor.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_sensitivity._checks import check_bool, check_count_or_fraction, check_int, check_number
from lightning_sensitivity.models import _datamodule_parts as parts
from lightning_sensitivity.models import _labels

__all__ = [
    "SensitivityDataModule",
    "DigitsDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
]

Arrays = tuple[torch.Tensor, torch.Tensor]


class SensitivityDataModule(parts.SplitLoaders, pl.LightningDataModule):
    """Base class: seeded validation split, training subset, random labels, augmentation and loaders.

    Subclasses set the class attributes and implement :meth:`_load` returning ``(train, test)`` arrays.

    After :meth:`setup`: ``train_dataset`` (augmented when ``augment``), ``train_eval_dataset`` (the same examples
    and labels, never augmented -- for measurements), ``val_dataset``, ``test_dataset`` and ``random_label_mask``
    (bool, which ``train_dataset`` examples got a random label).

    Args:
        batch_size: examples per batch; ``None`` or ``0`` uses the whole split as one batch.
        train_subset: train on a seeded random subset of this many examples (after the validation split).
        random_label_fraction: fraction of training examples whose label is replaced, once and for all, by a
            seeded uniform random class (validation and test labels stay true).
        augment: random training augmentation (small shifts for digit-like images, crop + flip for CIFAR).
        val_split: validation examples held out from the training set: an int count or a float fraction.
        seed: seed of the split, the subset and the random labels (not of shuffling: use ``seed_everything``).
        num_workers: ``DataLoader`` worker processes.

    Raises:
        TypeError, ValueError: on invalid arguments.
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        batch_size: int | None = 128,
        train_subset: int | None = None,
        random_label_fraction: float = 0.0,
        augment: bool = False,
        val_split: int | float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int(batch_size, "batch_size", minimum=0, allow_none=True)  # 0 = full batch
        check_int(train_subset, "train_subset", minimum=1, allow_none=True)
        check_number(random_label_fraction, "random_label_fraction", low=0.0, high=1.0)
        check_bool(augment, "augment")
        check_count_or_fraction(val_split, "val_split")
        check_int(seed, "seed", minimum=0)
        check_int(num_workers, "num_workers", minimum=0)
        self.batch_size = batch_size or None
        self.train_subset = train_subset
        self.random_label_fraction = float(random_label_fraction)
        self.augment = augment
        self.val_split = val_split
        self.seed = seed
        self.num_workers = num_workers
        self.train_dataset: parts.ImageTensorDataset | None = None
        self.train_eval_dataset: parts.ImageTensorDataset | None = None
        self.val_dataset: parts.ImageTensorDataset | None = None
        self.test_dataset: parts.ImageTensorDataset | None = None
        self.random_label_mask: torch.Tensor | None = None

    def _load(self) -> tuple[Arrays, Arrays]:
        """Return ``((train_images, train_targets), (test_images, test_targets))``, images ``[N, C, H, W]``."""
        raise NotImplementedError

    def _augmentation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Small random shifts by default (digit-like images); CIFAR overrides with crop + flip."""
        return partial(parts.random_shift, max_shift=max(1, self.input_shape[-1] // 14))

    def setup(self, stage: str | None = None) -> None:
        """Load the data once and build the seeded splits; later calls (e.g. ``test`` after ``fit``) reuse them."""
        if self.train_dataset is not None:
            return
        (images, targets), (test_images, test_targets) = self._load()
        train_idx, val_idx = parts.split_off(len(targets), self.val_split, self.seed)
        train_idx = parts.take_subset(train_idx, self.train_subset, self.seed)
        train_targets, mask = parts.randomize_labels(
            targets[train_idx], self.random_label_fraction, self.num_classes, self.seed
        )
        dataset = partial(parts.ImageTensorDataset, mean=self.mean, std=self.std)
        train_images = images[train_idx]
        augment = self._augmentation() if self.augment else None
        self.train_dataset = dataset(train_images, train_targets, augment=augment)
        self.train_eval_dataset = dataset(train_images, train_targets)
        self.val_dataset = dataset(images[val_idx], targets[val_idx])
        self.test_dataset = dataset(test_images, test_targets)
        self.random_label_mask = mask

    def _loader(self, dataset: parts.ImageTensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must be called before requesting a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size or len(dataset),
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class DigitsDataModule(SensitivityDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): offline, no download, seconds per epoch.

    A fixed 20% (360 images, independent of ``seed``) is the test set; ``val_split`` is taken from the rest.

    Example::

        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.num_classes, dm.input_shape
        (10, (1, 8, 8))
        >>> dm.setup("fit"); len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)
        (1150, 287, 360)
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    class_names = _labels.DIGIT_NAMES
    mean = (0.3053,)
    std = (0.3760,)
    test_size = 360

    def __init__(
        self,
        batch_size: int | None = 64,
        train_subset: int | None = None,
        random_label_fraction: float = 0.0,
        augment: bool = False,
        val_split: int | float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, train_subset, random_label_fraction, augment, val_split, seed, num_workers)

    def _load(self) -> tuple[Arrays, Arrays]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # pixel values are 0..16
        targets = torch.from_numpy(digits.target).long()
        # the test split uses a constant seed so that test numbers are comparable across `seed`s
        train_idx, test_idx = parts.split_off(len(targets), self.test_size, seed=0, purpose=parts._TEST)
        return (images[train_idx], targets[train_idx]), (images[test_idx], targets[test_idx])


class _FileDataModule(SensitivityDataModule):
    """A datamodule reading files under ``data_dir``; ``download=True`` fetches them with torchvision."""

    folder: str
    files: tuple[str, ...]
    download_hint: str
    torchvision_dataset: str  # the torchvision.datasets class that downloads (and, for MNIST, reads) the files

    def __init__(
        self,
        data_dir: str | Path,
        download: bool = False,
        batch_size: int | None = 128,
        train_subset: int | None = None,
        random_label_fraction: float = 0.0,
        augment: bool = False,
        val_split: int | float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, train_subset, random_label_fraction, augment, val_split, seed, num_workers)
        if not isinstance(data_dir, (str, Path)):
            raise TypeError(f"`data_dir` expected a str or Path, got {type(data_dir).__name__}")
        if not isinstance(download, bool):
            raise TypeError(f"`download` expected a bool, got {type(download).__name__}")
        self.data_dir = Path(data_dir).expanduser()
        self.download = download

    @property
    def files_dir(self) -> Path:
        return self.data_dir / self.folder

    def _missing_files(self) -> list[str]:
        return [name for name in self.files if not (self.files_dir / name).is_file()]

    def _torchvision_class(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_dataset)

    def _download(self) -> None:
        self._torchvision_class()(self.data_dir, train=True, download=True)

    def prepare_data(self) -> None:
        """Download the files when ``download=True`` and they are missing (called by Lightning on one process)."""
        if self.download and self._missing_files():
            self._download()

    def _require_files(self) -> None:
        if self.download:
            self.prepare_data()
        missing = self._missing_files()
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: missing {', '.join(missing)} in {self.files_dir} (expected files: "
                f"{', '.join(self.files)}). `data_dir` must be the folder that contains `{self.folder}`. Pass "
                f"`download=True` to fetch them where a network is available, or copy them there: {self.download_hint}"
            )


class MNISTDataModule(_FileDataModule):
    """MNIST handwritten digits (60000 train + 10000 test, 28x28 grey), read with ``torchvision.datasets.MNIST``.

    Expects torchvision's layout: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Example::

        dm = MNISTDataModule("data", download=True, train_subset=5000, augment=True)
    """

    num_classes = 10
    input_shape = (1, 28, 28)
    class_names = _labels.DIGIT_NAMES
    mean = (0.1307,)
    std = (0.3081,)
    folder = "MNIST/raw"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    download_hint = "the uncompressed IDX files from https://ossci-datasets.s3.amazonaws.com/mnist/ (gunzip the .gz)."
    torchvision_dataset = "MNIST"

    def _load(self) -> tuple[Arrays, Arrays]:
        self._require_files()
        cls = self._torchvision_class()
        splits = [cls(self.data_dir, train=train, download=False) for train in (True, False)]
        return tuple((ds.data.unsqueeze(1), ds.targets.long()) for ds in splits)  # type: ignore[return-value]


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (60000 train + 10000 test, 28x28 grey clothing images), read with torchvision.

    Expects torchvision's layout: ``<data_dir>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
    """

    class_names = _labels.FASHION_MNIST_NAMES
    mean = (0.2860,)
    std = (0.3530,)
    folder = "FashionMNIST/raw"
    download_hint = "the uncompressed IDX files from https://github.com/zalandoresearch/fashion-mnist (gunzip them)."
    torchvision_dataset = "FashionMNIST"


def _read_cifar(path: Path, label_key: str) -> Arrays:
    # the python-pickle batches of the CIFAR distribution; read directly (torchvision insists on the exact MD5s)
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return images, torch.as_tensor(batch[label_key], dtype=torch.long)


class CIFAR10DataModule(_FileDataModule):
    """CIFAR-10 (50000 train + 10000 test, 32x32 colour, 10 classes); ``augment`` = random crop (pad 4) + flip.

    Expects ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (the extracted
    ``cifar-10-python.tar.gz``, torchvision's layout).
    """

    num_classes = 10
    input_shape = (3, 32, 32)
    class_names = _labels.CIFAR10_NAMES
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
    download_hint = "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into `data_dir`."
    torchvision_dataset = "CIFAR10"
    _train_files: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
    _test_file, _meta_file, _label_key, _names_key = "test_batch", "batches.meta", "labels", "label_names"

    def _augmentation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(parts.random_crop_flip, padding=4)

    def _load(self) -> tuple[Arrays, Arrays]:
        self._require_files()
        with open(self.files_dir / self._meta_file, "rb") as f:
            names = tuple(pickle.load(f, encoding="latin1")[self._names_key])
        if names != self.class_names:
            # a different label order would silently scramble class names and super-class groups
            raise ValueError(f"{self.files_dir / self._meta_file} lists classes {names}, expected {self.class_names}")
        parts = [_read_cifar(self.files_dir / name, self._label_key) for name in self._train_files]
        train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return train, _read_cifar(self.files_dir / self._test_file, self._label_key)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50000 train + 10000 test, 32x32 colour, 100 fine classes in 20 super-classes).

    ``class_groups`` maps each fine class to its super-class (100 ints in 0..19) and ``group_names`` names the 20
    super-classes, ready for ``StiffnessMonitor(class_groups=dm.class_groups, group_names=dm.group_names)``.
    Expects ``<data_dir>/cifar-100-python/{train,test,meta}`` (the extracted ``cifar-100-python.tar.gz``).
    """

    num_classes = 100
    class_names = _labels.CIFAR100_NAMES
    class_groups: tuple[int, ...] = _labels.CIFAR100_CLASS_GROUPS
    group_names: tuple[str, ...] = _labels.CIFAR100_GROUP_NAMES
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    files = ("train", "test", "meta")
    download_hint = "extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into `data_dir`."
    torchvision_dataset = "CIFAR100"
    _train_files = ("train",)
    _test_file, _meta_file, _label_key, _names_key = "test", "meta", "fine_labels", "fine_label_names"
