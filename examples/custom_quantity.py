"""Add your own quantity: a ``PredictionEntropyMonitor`` written against the public extension API only.

The prediction entropy of an example is the entropy of its softmax, ``-sum_c p_c log p_c``: high where the model
hesitates between classes. The monitor logs its mean and 90th percentile on the held-out and the training probe
sets::

    python examples/custom_quantity.py             # offline 8x8 digits, MLP, well under a minute on 2 CPU cores
    python examples/custom_quantity.py --devices 2 # the same on two CPU processes (DDP, gloo): each measures half
    tensorboard --logdir lightning_logs            # scalars sensitivity/prediction_entropy/{val,train}/{mean,p90}

The three parts a quantity has, here in one file (in the package they are ``functional/<name>.py`` with the function
and the declaration, ``callbacks/<name>.py`` with the monitor, and a test):

1. the function, pure torch, built on ``functional.predict_logits`` (which leaves the model untouched);
2. the declaration (``keys.Quantity``): its tags, artifact arrays, histograms and dashboard charts, registered with
   ``keys.register`` -- the TensorBoard custom-scalars layout then charts it, ``keys.SCHEMA`` / ``keys.matches``
   check what it logs, and the offline report draws its charts and histograms
   (``PYTHONPATH=examples python -m lightning_sensitivity.report lightning_logs --import custom_quantity``);
3. the monitor: a ``SensitivityMonitor`` whose ``compute`` evaluates each probe set through ``self.sharded`` and
   ``probe_shard``, so that under DDP every rank measures its shard and all receive every result.

Everything else comes from the base class: the schedule (``every_n_epochs``, ``log_spaced``, ``epochs``), the
fixed class-balanced probe sets drawn from the trainer's data, checkpoint state, ``trainer.validate``/``test``
measurements under ``.../test/...``, logging to every logger at the right step, a warning instead of a crash when a
measurement fails, and one artifact file per epoch, ``{log_dir}/sensitivity/prediction_entropy/epoch_NNNN.npz``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_sensitivity import keys
from lightning_sensitivity.callbacks import Measurement, SensitivityMonitor, model_kwargs, probe_shard
from lightning_sensitivity.callbacks.base import ProbeSplits
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import predict_logits
from lightning_sensitivity.models import MLP, DigitsDataModule, LitClassifier
from lightning_sensitivity.probes import ProbeSet


# ---------------------------------------------------------------- 1. the function (pure torch)
def prediction_entropy(
    model: nn.Module, inputs: Tensor, chunk_size: int | None = None, *, model_kwargs: Any = None
) -> Tensor:
    """``[N]`` entropy (nats) of the softmax of the model's logits, in eval mode, the model left as it was."""
    logits = predict_logits(model, inputs, chunk_size, model_kwargs=model_kwargs).double()
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


# ---------------------------------------------------------------- 2. the declaration (names, arrays, charts)
NAME = "prediction_entropy"
STATS = ("mean", "p90")
_P = keys.prefix(NAME)
QUANTITY = keys.register(
    keys.Quantity(
        name=NAME,
        metrics=tuple(f"{_P}/{{split}}/{stat}" for stat in STATS),  # {split}: val, train (test under trainer.test)
        arrays=tuple(keys.split_array(s, n) for s in (keys.VAL, keys.TRAIN) for n in ("entropy", *STATS)),
        conditional_arrays={keys.split_array(keys.TRAIN, n): "needs training data" for n in ("entropy", *STATS)},
        histograms=(f"{_P}/{{split}}",),
        category="Prediction entropy",
        charts=(keys.Chart("Prediction entropy: {splits} (mean)", (f"{_P}/{{split}}/mean",)),),
        report_arrays={f"{_P}/{{split}}": "{split}_entropy"},  # the offline report's histogram: per-example values
    )
)


# ---------------------------------------------------------------- 3. the monitor
class PredictionEntropyMonitor(SensitivityMonitor):
    """Log the mean and 90th percentile of the prediction entropy on the val and train probe sets.

    Args:
        **kwargs: the common arguments of :class:`~lightning_sensitivity.SensitivityMonitor`.
    """

    #: The metric prefix ``sensitivity/prediction_entropy/...`` and the artifact folder.
    quantity = QUANTITY.name
    #: The configuration entries that tell two such monitors apart in a checkpoint.
    state_fields = ("num_samples", "seed")
    #: Only logits are needed; with ``embed_fn`` the model is then called on the raw inputs.
    differentiates_inputs = False

    def probe_splits(self) -> ProbeSplits:
        # (required, optional): setup fails without val data; train is measured when the trainer has it.
        return frozenset({keys.VAL}), frozenset({keys.TRAIN})

    def _entropy(self, model: nn.Module, probe: ProbeSet) -> Tensor:
        def shard(index: slice | Tensor) -> dict[str, Tensor]:
            # the examples at `index` only: one rank's part under DDP, the whole set in one process
            part = probe_shard(probe, index)
            return {"entropy": prediction_entropy(model, part.inputs, self.chunk_size, **model_kwargs(part))}

        return self.sharded(shard, len(probe))["entropy"]  # every rank receives all len(probe) results, in order

    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        # `model` maps probe inputs to logits and is left untouched by the functional layer; `probes` are on its
        # device. Under trainer.test the held-out set still comes as "val": the base class renames the tags to test.
        # Call `self.sharded` the same way on every rank (the ranks meet in it).
        result = Measurement()
        for split in (s for s in (keys.VAL, keys.TRAIN) if s in probes):
            entropy = self._entropy(model, probes[split]).cpu()
            stats = {"mean": float(entropy.mean()), "p90": float(torch.quantile(entropy, 0.9))}
            for stat, value in stats.items():
                result.scalars[keys.metric(self.quantity, split, stat)] = value
                result.arrays[keys.split_array(split, stat)] = value
            result.histograms[keys.metric(self.quantity, split)] = entropy
            result.arrays[keys.split_array(split, "entropy")] = entropy
        return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits, probe sets and initialisation")
    parser.add_argument("--log-dir", default=".", help="logs go to LOG_DIR/lightning_logs/version_N")
    parser.add_argument("--fast", action="store_true", help="tiny smoke run: 1 epoch, few batches, small probe sets")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes; above 1: DDP (gloo), shared probes")
    args = parser.parse_args(argv)
    if args.fast:
        args.max_epochs = 1
    if args.devices < 1:
        parser.error(f"--devices expected a positive int, got {args.devices}")
    if args.max_epochs < 1:
        parser.error(f"--max-epochs expected a positive int, got {args.max_epochs}")
    return args


def main(argv: list[str] | None = None) -> pl.Trainer:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    dm = DigitsDataModule(batch_size=64, seed=args.seed)
    module = LitClassifier(MLP(math.prod(dm.input_shape), dm.num_classes, hidden=(64, 64)), lr=0.05)
    monitor = PredictionEntropyMonitor(num_samples=64 if args.fast else 256, seed=args.seed)
    limits = dict(limit_train_batches=5, limit_val_batches=2) if args.fast else {}
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=TensorBoardLogger(save_dir=args.log_dir, name="lightning_logs", default_hp_metric=False),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=not args.fast,
        log_every_n_steps=5,
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    if not trainer.is_global_zero:
        return trainer
    for split in (keys.VAL, keys.TRAIN):
        values = {s: float(trainer.callback_metrics[keys.metric(monitor.quantity, split, s)]) for s in STATS}
        print(f"{split} prediction entropy: mean {values['mean']:.3f}, p90 {values['p90']:.3f}")
    print(f"TensorBoard logs of this run: {trainer.logger.log_dir}")
    return trainer


if __name__ == "__main__":
    main()
