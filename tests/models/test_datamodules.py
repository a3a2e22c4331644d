"""DataModules: seeded splits, subsets, random labels, augmentation, loaders and the torchvision-layout readers.

The MNIST/CIFAR readers run on tiny files written here in the original formats; pixel values encode the label
(``20 * label + 5``), so every (image, label) pair can be checked after the splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA
from models._synthetic import dump_pickle, write_cifar10, write_cifar100, write_mnist

from lightning_sensitivity.models import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from lightning_sensitivity.models import _datamodule_parts as parts

ALL = [DigitsDataModule, MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule, CIFAR100DataModule]


def _make(cls, path: Path | None = None, **kwargs):
    return cls(**kwargs) if cls is DigitsDataModule else cls(path if path is not None else "unused", **kwargs)


def _raw_pixels(dm, dataset) -> torch.Tensor:
    """Undo the normalisation of every example: ``[N, C, H, W]`` values in 0..255."""
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    return torch.stack([(dataset[i][0] * std + mean) * 255 for i in range(len(dataset))])


def _check_pairs(dm, dataset, num_label_values: int) -> None:
    pixels = _raw_pixels(dm, dataset)
    expected = 20 * (dataset.targets % num_label_values) + 5
    torch.testing.assert_close(pixels, expected.view(-1, 1, 1, 1).float().expand_as(pixels), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- attributes and validation


@pytest.mark.parametrize("cls", ALL)
def test_attributes_available_after_init(cls):
    dm = _make(cls)
    assert isinstance(dm.num_classes, int) and len(dm.class_names) == dm.num_classes
    assert len(set(dm.class_names)) == dm.num_classes
    assert len(dm.input_shape) == 3 and len(dm.mean) == len(dm.std) == dm.input_shape[0]


@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        ({"batch_size": -1}, "batch_size", ValueError),
        ({"batch_size": 2.0}, "batch_size", TypeError),
        ({"train_subset": 0}, "train_subset", ValueError),
        ({"random_label_fraction": 1.5}, "random_label_fraction", ValueError),
        ({"random_label_fraction": "0.1"}, "random_label_fraction", TypeError),
        ({"augment": 1}, "augment", TypeError),
        ({"val_split": 1.0}, "val_split", ValueError),
        ({"val_split": 0}, "val_split", ValueError),
        ({"val_split": "10"}, "val_split", TypeError),
        ({"seed": -1}, "seed", ValueError),
        ({"num_workers": -2}, "num_workers", ValueError),
    ],
)
def test_validation(kwargs, name, error):
    with pytest.raises(error, match=f"`{name}`"):
        DigitsDataModule(**kwargs)


def test_file_datamodule_validation():
    with pytest.raises(TypeError, match="`data_dir`"):
        MNISTDataModule(None)
    with pytest.raises(TypeError, match="`download`"):
        CIFAR10DataModule("x", download="yes")


def test_dataloader_before_setup_raises():
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


# ---------------------------------------------------------------- digits and the shared split logic


def test_digits_sizes_and_content():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(seed=3)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1150, 287, 360)
    assert dm.train_dataset[0][0].shape == dm.input_shape and dm.train_dataset[0][0].dtype == torch.float32
    # every example is an original image with its original label
    digits = load_digits()
    originals = {(bytes(img.astype(np.uint8)), int(t)) for img, t in zip(digits.images, digits.target, strict=True)}
    for dataset in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        pixels = (_raw_pixels(dm, dataset) * 16 / 255).round().to(torch.uint8).numpy()
        for img, t in zip(pixels, dataset.targets.tolist(), strict=True):
            assert (bytes(img[0]), t) in originals
    # the three splits partition the 1797 images (multiset of raw images is preserved)
    all_pixels = torch.cat([_raw_pixels(dm, d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)])
    ours = sorted(bytes((p[0] * 16 / 255).round().to(torch.uint8).numpy()) for p in all_pixels)
    assert ours == sorted(bytes(img.astype(np.uint8)) for img in digits.images)


def test_digits_splits_seeded():
    a, b, c = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)
    assert not torch.equal(a.val_dataset.images, c.val_dataset.images)
    # the test split does not depend on the seed
    assert torch.equal(a.test_dataset.images, c.test_dataset.images)
    # the normalisation constants are the statistics of the data
    train = a.train_eval_dataset.images
    assert train.mean().item() == pytest.approx(a.mean[0], abs=0.02)
    assert train.std().item() == pytest.approx(a.std[0], abs=0.02)


def test_split_helpers_partition():
    kept, held = parts.split_off(100, 0.25, seed=5)
    assert len(held) == 25 and len(kept) == 75
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))
    kept2, held2 = parts.split_off(100, 25, seed=5)
    assert torch.equal(held, held2) and torch.equal(kept, kept2)
    with pytest.raises(ValueError, match="`val_split`"):
        parts.split_off(10, 10, seed=0)
    subset = parts.take_subset(kept, 10, seed=1)
    assert len(set(subset.tolist())) == 10 and set(subset.tolist()) <= set(kept.tolist())


def test_train_subset():
    full = DigitsDataModule(seed=2)
    sub = DigitsDataModule(seed=2, train_subset=100)
    full.setup()
    sub.setup()
    assert len(sub.train_dataset) == 100
    # drawn from the training pool only; the validation split is unaffected by the subset
    assert torch.equal(full.val_dataset.images, sub.val_dataset.images)
    pool = {bytes(img.numpy()) for img in full.train_dataset.images}
    assert all(bytes(img.numpy()) in pool for img in sub.train_dataset.images)
    with pytest.raises(ValueError, match="`train_subset`"):
        DigitsDataModule(train_subset=1151).setup()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_random_labels(fraction):
    clean = DigitsDataModule(seed=4)
    noisy = DigitsDataModule(seed=4, random_label_fraction=fraction)
    clean.setup()
    noisy.setup()
    n = len(clean.train_dataset)
    mask = noisy.random_label_mask
    assert int(mask.sum()) == round(fraction * n)
    assert torch.equal(noisy.train_dataset.images, clean.train_dataset.images)
    assert torch.equal(noisy.train_dataset.targets[~mask], clean.train_dataset.targets[~mask])
    assert torch.equal(noisy.train_eval_dataset.targets, noisy.train_dataset.targets)
    assert torch.equal(noisy.val_dataset.targets, clean.val_dataset.targets)
    if fraction == 1.0:
        # uniform labels agree with the truth about 1 time in 10
        agree = (noisy.train_dataset.targets == clean.train_dataset.targets).float().mean().item()
        assert 0.05 < agree < 0.16
        assert set(noisy.train_dataset.targets.tolist()) == set(range(10))
    # fixed per dataset instance: the same labels every epoch and after another setup() call
    first = torch.cat([y for _, y in noisy.train_dataloader()]).sort().values
    noisy.setup("test")
    second = torch.cat([y for _, y in noisy.train_dataloader()]).sort().values
    assert torch.equal(first, second)
    again = DigitsDataModule(seed=4, random_label_fraction=fraction)
    again.setup()
    assert torch.equal(again.train_dataset.targets, noisy.train_dataset.targets)


def test_batch_size_full_batch():
    for batch_size in (None, 0):
        dm = DigitsDataModule(batch_size=batch_size, train_subset=50)
        dm.setup()
        batches = list(dm.train_dataloader())
        assert len(batches) == 1 and batches[0][0].shape == (50, 1, 8, 8)
        assert len(list(dm.val_dataloader())) == 1
    dm = DigitsDataModule(batch_size=16, train_subset=50)
    dm.setup()
    assert [len(y) for _, y in dm.train_dataloader()] == [16, 16, 16, 2]


# ---------------------------------------------------------------- augmentation


def _matching_shifts(original: torch.Tensor, out: torch.Tensor, k: int, flips: bool) -> list:
    """Every (di, dj, flipped) for which ``out`` is ``original`` shifted by (di, dj), zero-filled (maybe flipped)."""
    _, h, w = original.shape
    found = []
    for flipped in (False, True) if flips else (False,):
        src = original.flip(-1) if flipped else original
        for di in range(-k, k + 1):
            for dj in range(-k, k + 1):
                expected = torch.zeros_like(src)
                expected[:, max(di, 0) : h + min(di, 0), max(dj, 0) : w + min(dj, 0)] = src[
                    :, max(-di, 0) : h + min(-di, 0), max(-dj, 0) : w + min(-dj, 0)
                ]
                if torch.equal(out, expected):
                    found.append((di, dj, flipped))
    return found


def test_random_shift_and_crop_flip_are_shifts():
    torch.manual_seed(0)
    image = torch.rand(3, 9, 9) + 0.1  # no zeros: each shift is identifiable
    seen = set()
    for _ in range(60):
        shifts = _matching_shifts(image, parts.random_shift(image, 2), 2, flips=False)
        assert len(shifts) == 1
        seen.add(shifts[0])
    assert len(seen) > 10  # offsets vary
    flips = set()
    for _ in range(40):
        shifts = _matching_shifts(image, parts.random_crop_flip(image, padding=4), 4, flips=True)
        assert len(shifts) == 1
        flips.add(shifts[0][2])
    assert flips == {False, True}


def test_augment_only_on_training_set():
    dm = DigitsDataModule(augment=True, train_subset=20)
    dm.setup()
    torch.manual_seed(0)
    reads = [dm.train_dataset[0][0] for _ in range(10)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])
    assert torch.equal(dm.train_eval_dataset[0][0], dm.train_eval_dataset[0][0])
    assert dm.val_dataset.augment is None and dm.test_dataset.augment is None


# ---------------------------------------------------------------- torchvision layouts


@pytest.mark.parametrize("cls, folder", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_mnist_layout(tmp_path, cls, folder):
    write_mnist(tmp_path, folder)
    dm = cls(tmp_path, val_split=10, batch_size=8, augment=True)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (40, 10, 20)
    for dataset in (dm.train_eval_dataset, dm.val_dataset, dm.test_dataset):
        _check_pairs(dm, dataset, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, *dm.input_shape) and y.dtype == torch.long


@pytest.mark.parametrize("cls, writer, sizes", [
    (CIFAR10DataModule, write_cifar10, (27, 3, 8)),
    (CIFAR100DataModule, write_cifar100, (27, 3, 10)),
])  # fmt: skip
def test_cifar_layout(tmp_path, cls, writer, sizes):
    writer(tmp_path)
    dm = cls(tmp_path, val_split=0.1, batch_size=4, augment=True)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == sizes
    for dataset in (dm.train_eval_dataset, dm.val_dataset, dm.test_dataset):
        _check_pairs(dm, dataset, 12)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_cifar_meta_with_other_class_order_is_rejected(tmp_path):
    write_cifar10(tmp_path)
    reversed_names = list(CIFAR10DataModule.class_names)[::-1]
    dump_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": reversed_names})
    with pytest.raises(ValueError, match="lists classes"):
        CIFAR10DataModule(tmp_path).setup()


@pytest.mark.parametrize("cls, writer, victim", [
    (MNISTDataModule, write_mnist, "MNIST/raw/t10k-labels-idx1-ubyte"),
    (CIFAR10DataModule, write_cifar10, "cifar-10-batches-py/data_batch_3"),
    (CIFAR100DataModule, write_cifar100, "cifar-100-python/meta"),
])  # fmt: skip
def test_missing_files_error(tmp_path, cls, writer, victim):
    with pytest.raises(FileNotFoundError) as info:
        cls(tmp_path).setup()
    message = str(info.value)
    assert "download=True" in message and str(tmp_path) in message
    assert all(name in message for name in cls.files)
    writer(tmp_path)
    (tmp_path / victim).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {Path(victim).name} in"):
        cls(tmp_path).setup()


# ---------------------------------------------------------------- CIFAR-100 super-classes

# the super-class table of https://www.cs.toronto.edu/~kriz/cifar.html, by name
SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def test_cifar100_class_groups():
    dm = CIFAR100DataModule("unused")
    groups, names = dm.class_groups, dm.class_names
    assert len(groups) == 100 and all(isinstance(g, int) and 0 <= g < 20 for g in groups)
    assert np.bincount(groups, minlength=20).tolist() == [5] * 20
    assert list(dm.group_names) == sorted(SUPERCLASSES)  # coarse label indices are alphabetical
    assert list(names) == sorted(names)  # fine label indices are alphabetical too
    for fine, coarse in enumerate(groups):
        assert names[fine] in SUPERCLASSES[dm.group_names[coarse]].split(), (fine, names[fine])


def test_digits_trains_with_lit_classifier(tmp_path):
    import lightning.pytorch as pl

    from lightning_sensitivity.models import MLP, LitClassifier

    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=32)
    module = LitClassifier(MLP(64, dm.num_classes, hidden=(64,)), lr=0.05)
    trainer = pl.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.callback_metrics["val/acc"].item() > 0.9
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    assert result["test/acc"] > 0.9


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_mnist_shapes():
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found under {SHARED_DATA}")
    dm = MNISTDataModule(SHARED_DATA, train_subset=500, batch_size=100)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (500, 6000, 10000)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 28, 28) and dm.num_classes == 10
    assert set(dm.test_dataset.targets.tolist()) == set(range(10))
    assert abs(dm.val_dataset[0][0].mean().item()) < 3
