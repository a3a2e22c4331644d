"""Tiny MNIST/CIFAR files in the original formats (torchvision's layout), for tests that must never download.

Pixel values encode the label (``20 * (label % 12) + 5``; ``% 12`` only matters for CIFAR-100), so each
(image, label) pair can be checked after any split.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from lightning_sensitivity.models import CIFAR10DataModule, CIFAR100DataModule


def _labels_of(n: int, num_classes: int, offset: int = 0) -> np.ndarray:
    return (np.arange(n) * 7 + offset) % num_classes


def _write_idx(folder: Path, prefix: str, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    images = np.repeat((20 * labels + 5).astype(np.uint8), 28 * 28).reshape(n, 28, 28)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.tobytes())
    label_bytes = labels.astype(np.uint8).tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + label_bytes)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 50, n_test: int = 20) -> None:
    raw = root / folder / "raw"
    _write_idx(raw, "train", _labels_of(n_train, 10))
    _write_idx(raw, "t10k", _labels_of(n_test, 10, offset=3))


def _cifar_batch(labels: np.ndarray, label_key: str) -> dict:
    data = np.repeat((20 * (labels % 12) + 5).astype(np.uint8), 3 * 32 * 32).reshape(len(labels), 3 * 32 * 32)
    return {"data": data, label_key: labels.tolist()}


def dump_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 8) -> None:
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        dump_pickle(folder / f"data_batch_{i}", _cifar_batch(_labels_of(per_batch, 10, offset=i), "labels"))
    dump_pickle(folder / "test_batch", _cifar_batch(_labels_of(n_test, 10), "labels"))
    dump_pickle(folder / "batches.meta", {"label_names": list(CIFAR10DataModule.class_names)})


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> None:
    folder = root / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        dump_pickle(folder / name, {**_cifar_batch(_labels_of(n, 100), "fine_labels"), "coarse_labels": [0] * n})
    meta = {"fine_label_names": list(CIFAR100DataModule.class_names), "coarse_label_names": list("x" * 20)}
    dump_pickle(folder / "meta", meta)
