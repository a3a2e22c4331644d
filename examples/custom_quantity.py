"""Add your own quantity: a ``LogitMarginMonitor`` written against the public ``SensitivityMonitor`` API only.

The logit margin of an example is its largest logit minus its second largest: small margins mark points near a
decision boundary. The monitor logs its mean and 10th percentile on the held-out and the training probe sets::

    python examples/custom_quantity.py             # offline 8x8 digits, MLP, well under a minute on 2 CPU cores
    tensorboard --logdir lightning_logs            # scalars sensitivity/logit_margin/{val,train}/{mean,p10}

Everything the base class does comes for free: the schedule (``every_n_epochs``, ``log_spaced``, ``epochs``), the
fixed class-balanced probe sets drawn from the trainer's data, checkpoint state, ``trainer.validate``/``test``
measurements under ``.../test/...``, logging to every logger at the right step, a warning instead of a crash when a
measurement fails, and one artifact file per epoch, ``{log_dir}/sensitivity/logit_margin/epoch_NNNN.npz``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_sensitivity import SensitivityMonitor, keys
from lightning_sensitivity.callbacks import Measurement
from lightning_sensitivity.callbacks.base import ProbeSplits, model_kwargs
from lightning_sensitivity.callbacks.progress import ProgressFactory
from lightning_sensitivity.functional import predict_logits
from lightning_sensitivity.models import MLP, DigitsDataModule, LitClassifier
from lightning_sensitivity.probes import ProbeSet


def logit_margin(logits: Tensor) -> Tensor:
    """``[N]`` top-1 minus top-2 logit of ``[N, C]`` logits (``C >= 2``)."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


class LogitMarginMonitor(SensitivityMonitor):
    """Log the mean and a low quantile of the logit margin on the val and train probe sets.

    Args:
        quantile: the low quantile logged beside the mean (default 0.1, logged as ``p10``).
        **kwargs: the common arguments of :class:`~lightning_sensitivity.SensitivityMonitor`.
    """

    #: The metric prefix ``sensitivity/logit_margin/...`` and the artifact folder.
    quantity = "logit_margin"
    #: The configuration entries that tell two such monitors apart in a checkpoint.
    state_fields = ("num_samples", "seed", "quantile")
    #: Only logits are needed; with ``embed_fn`` the model is then called on the raw inputs.
    differentiates_inputs = False

    def __init__(self, *, quantile: float = 0.1, **kwargs: Any) -> None:
        # Own arguments first (clear errors name the argument), then the common ones.
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)):
            raise TypeError(f"`quantile` expected a float in (0, 1), got {type(quantile).__name__}")
        if not 0 < quantile < 1:
            raise ValueError(f"`quantile` expected a float in (0, 1), got {quantile!r}")
        self.quantile = float(quantile)
        super().__init__(**kwargs)

    def probe_splits(self) -> ProbeSplits:
        # (required, optional): setup fails without val data; train is measured when the trainer has it.
        return frozenset({keys.VAL}), frozenset({keys.TRAIN})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "quantile": self.quantile}

    @property
    def stat_name(self) -> str:
        """``p10`` for ``quantile=0.1``."""
        return f"p{round(100 * self.quantile):g}"

    def compute(
        self, model: nn.Module, probes: dict[str, ProbeSet], progress: ProgressFactory, epoch: int
    ) -> Measurement:
        # `model` maps probe inputs to logits and is left untouched by the functional layer; `probes` are on its
        # device. Under trainer.test the held-out set still comes as "val": the base class renames the tags to test.
        result = Measurement(meta={"quantile": self.quantile})
        for split, probe in probes.items():
            logits = predict_logits(model, probe.inputs, self.chunk_size, **model_kwargs(probe))
            margins = logit_margin(logits).double().cpu()
            stats = {"mean": float(margins.mean()), self.stat_name: float(torch.quantile(margins, self.quantile))}
            for stat, value in stats.items():
                result.scalars[keys.metric(self.quantity, split, stat)] = value
                result.arrays[keys.split_array(split, stat)] = value
            result.histograms[keys.metric(self.quantity, split)] = margins
            result.arrays[keys.split_array(split, "margins")] = margins
        return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits, probe sets and initialisation")
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
    dm = DigitsDataModule(batch_size=64, seed=args.seed)
    module = LitClassifier(MLP(math.prod(dm.input_shape), dm.num_classes, hidden=(64, 64)), lr=0.05)
    monitor = LogitMarginMonitor(num_samples=64 if args.fast else 256, seed=args.seed)
    limits = dict(limit_train_batches=5, limit_val_batches=2) if args.fast else {}
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(save_dir=args.log_dir, name="lightning_logs", default_hp_metric=False),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=not args.fast,
        log_every_n_steps=5,
        **limits,
    )
    trainer.fit(module, datamodule=dm)
    for split in (keys.VAL, keys.TRAIN):
        values = {s: float(trainer.callback_metrics[keys.metric(monitor.quantity, split, s)]) for s in ("mean", "p10")}
        print(f"{split} logit margin: mean {values['mean']:.3f}, p10 {values['p10']:.3f}")
    print(f"TensorBoard logs of this run: {trainer.logger.log_dir}")
    return trainer


if __name__ == "__main__":
    main()
