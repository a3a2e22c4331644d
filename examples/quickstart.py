"""Train a small classifier with all three sensitivity monitors and watch them in TensorBoard.

    python examples/quickstart.py                      # offline 8x8 digits, MLP, ~1 minute on 2 CPU cores
    tensorboard --logdir lightning_logs

Real datasets (``--download`` fetches them where a network is available; otherwise put the files under ``--data-dir``
in torchvision's layout, e.g. ``DATA/MNIST/raw/train-images-idx3-ubyte``)::

    python examples/quickstart.py --dataset mnist --data-dir DATA
    python examples/quickstart.py --dataset cifar10 --model cnn --data-dir DATA --download
"""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.models import (
    MLP,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    LitClassifier,
    MNISTDataModule,
    SensitivityDataModule,
    SmallCNN,
)

DATASETS = {
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,  # the spelling of experiments/ --dataset too
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits", help="default: %(default)s (offline)")
    parser.add_argument("--data-dir", default="data", help="folder holding the dataset files (not used by digits)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 10 for digits, else 5)")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many examples only")
    parser.add_argument("--random-label-fraction", type=float, default=0.0, help="fraction of random training labels")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits, probe sets and initialisation")
    parser.add_argument("--log-dir", default=".", help="logs go to LOG_DIR/lightning_logs/version_N")
    parser.add_argument("--fast", action="store_true", help="tiny smoke run: 1 epoch, few batches, small probe sets")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.fast else (10 if args.dataset == "digits" else 5)
    if args.epochs < 1:
        parser.error(f"--epochs expected a positive int, got {args.epochs}")
    return args


def build_datamodule(args: argparse.Namespace) -> SensitivityDataModule:
    options = dict(train_subset=args.train_subset, random_label_fraction=args.random_label_fraction, seed=args.seed)
    if args.dataset == "digits":
        return DigitsDataModule(batch_size=64, **options)
    return DATASETS[args.dataset](args.data_dir, download=args.download, batch_size=128, **options)


def build_model(args: argparse.Namespace, dm: SensitivityDataModule) -> LitClassifier:
    channels, height, _ = dm.input_shape
    if args.model == "cnn":
        net = SmallCNN(channels, dm.num_classes, input_size=height)
    else:
        width = 128 if args.dataset == "digits" else 512
        net = MLP(math.prod(dm.input_shape), dm.num_classes, hidden=(width, width))
    return LitClassifier(net, lr=args.lr, optimizer="sgd", momentum=0.9)


def build_monitors(args: argparse.Namespace, dm: SensitivityDataModule) -> list[pl.Callback]:
    # --fast shrinks the probe sets so that the smoke test measures in seconds; the defaults are the papers' scale
    num_samples = 32 if args.fast else 256
    groups = getattr(dm, "class_groups", None)
    return [
        JacobianNormMonitor(num_samples=num_samples, seed=args.seed),
        TransitionMonitor(num_trajectories=4 if args.fast else 16, num_points=32 if args.fast else 128, seed=args.seed),
        # stiffness is the costliest measurement (per-example gradients, several heatmaps): epochs 0, 1, 2, 4, 8, ...
        StiffnessMonitor(
            num_samples=num_samples,
            log_spaced=True,
            seed=args.seed,
            class_names=list(dm.class_names),
            class_groups=None if groups is None else list(groups),
            group_names=None if groups is None else list(dm.group_names),
        ),
    ]


def main(argv: list[str] | None = None) -> pl.Trainer:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    dm = build_datamodule(args)
    module = build_model(args, dm)
    logger = TensorBoardLogger(save_dir=args.log_dir, name="lightning_logs", default_hp_metric=False)
    limits = dict(limit_train_batches=5, limit_val_batches=2, limit_test_batches=2) if args.fast else {}
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=build_monitors(args, dm),
        log_every_n_steps=5,
        enable_checkpointing=not args.fast,
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    metrics = dict(trainer.callback_metrics)  # `test` replaces them
    (result,) = trainer.test(module, datamodule=dm, verbose=False)

    print(
        f"\nval/acc {metrics['val/acc']:.3f}   test/acc {result['test/acc']:.3f}   "
        f"generalization_gap/loss {metrics['generalization_gap/loss']:.3f}"
    )
    root = Path(args.log_dir) / "lightning_logs"
    print(f"TensorBoard logs of this run: {logger.log_dir}")
    print(f"Watch them with:\n    tensorboard --logdir {shlex.quote(str(root))}")
    return trainer


if __name__ == "__main__":
    main()
