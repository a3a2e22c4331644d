"""A 2-process DDP fit (CPU, gloo) with all three monitors: :func:`main`, run by ``test_ddp.py`` through
``tests/_ddp.py`` (``launcher="lightning"``: ``strategy="ddp"`` starts rank 1).

Each rank writes, after every measurement, what it saw (its sensitivity values in ``callback_metrics``, its probe
sets, the weights) to ``OUT/rank{r}_epoch{e}.pt``; the TensorBoard log and the artifacts go to ``OUT/tb/version_0``.
The test compares all of it with a single-process computation.
"""

from __future__ import annotations

from pathlib import Path

NUM_SAMPLES = 16
MAX_EPOCHS = 2
NET = "mlp"


def main(out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from helpers import ReliableData, ReliableModule, sensitivity_metrics

    from lightning_sensitivity.callbacks._output import log_step
    from reliability._helpers import all_monitors, make_trainer

    class RankRecorder(pl.Callback):
        """Placed after the monitors: saves this rank's view of each measurement."""

        def __init__(self, monitors: list[pl.Callback]) -> None:
            self.monitors = monitors

        def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
            record = {
                "epoch": epoch,
                # the step the monitors logged this measurement at: Lightning's epoch-end step (0 at initialisation)
                "step": log_step(trainer, epoch_end=epoch > 0),
                "world_size": trainer.world_size,
                "backend": dist.get_backend() if dist.is_initialized() else None,
                "metrics": sensitivity_metrics(trainer),
                "probes": {
                    type(m).__name__: {s: (p.indices, p.inputs, p.targets) for s, p in m.probe_sets.items()}
                    for m in self.monitors
                },
                "state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            }
            torch.save(record, out / f"rank{trainer.global_rank}_epoch{epoch}.pt")

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._save(trainer, pl_module, 0)

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._save(trainer, pl_module, trainer.current_epoch + 1)

    pl.seed_everything(0, verbose=False)
    monitors = all_monitors(num_samples=NUM_SAMPLES)
    trainer = make_trainer(
        out,
        [*monitors, RankRecorder(monitors)],
        logger="tb",
        max_epochs=MAX_EPOCHS,
        devices=2,
        strategy="ddp",
    )
    trainer.fit(ReliableModule(NET), datamodule=ReliableData())
